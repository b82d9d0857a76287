//! A bounded fuzz-style test: seeded random and mutated DNS messages into
//! everything the forwarder parses, and random text into the resolv.conf
//! parser, for about two seconds (VMPOD_FUZZ_SECONDS for longer). No
//! panic, and the invariants hold.

use std::time::{Duration, Instant};

use super::forwarder::query_header;
use super::message::tests::query;
use super::message::{Header, answers, servfail};
use super::resolv;
use crate::dhcp::lease_server::fuzz_tests::{Rng, budget, seed};

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut p = seed.to_vec();
    for _ in 0..=rng.below(6) {
        match rng.below(5) {
            0 if !p.is_empty() => {
                let i = rng.below(p.len());
                p[i] = rng.byte();
            }
            1 => {
                let i = rng.below(p.len() + 1);
                p.insert(i, rng.byte());
            }
            2 => p.truncate(rng.below(p.len() + 1)),
            // A label length byte: pointers (0xC0) and the reserved 0x40/0x80.
            3 if p.len() > 12 => {
                let i = 12 + rng.below(p.len() - 12);
                p[i] = [0xC0, 0x40, 0x80, 63, 0][rng.below(5)];
            }
            _ => p.extend((0..rng.below(32)).map(|_| rng.byte())),
        }
    }
    p
}

#[test]
fn random_and_mutated_dns_messages_never_panic() {
    let seed = seed();
    let mut rng = Rng(seed | 1);
    let corpus = [
        query(1, "web.default.svc.cluster.local", 1),
        query(2, "a.b", 28),
        query(3, "x", 33),
    ];
    let budget = budget(Duration::from_secs(1));
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < budget {
        let msg = if rng.below(3) == 0 {
            (0..rng.below(300)).map(|_| rng.byte()).collect()
        } else {
            let i = rng.below(corpus.len());
            mutate(&mut rng, &corpus[i])
        };
        let header = Header::parse(&msg);
        let _ = query_header(&msg);
        match servfail(&msg) {
            Some(a) => {
                let h = header.expect("SERVFAIL only for a message with a header");
                assert!(
                    answers(&h, &a),
                    "seed {seed:x}: SERVFAIL must answer its query"
                );
                assert!(
                    a.len() <= msg.len().max(12),
                    "seed {seed:x}: it never grows"
                );
            }
            None => assert!(header.is_none()),
        }
        if let Some(h) = header {
            let _ = answers(&h, &msg);
        }
        n += 1;
    }
    println!("dns fuzz (VMPOD_FUZZ_SEED={seed:x}): {n} messages");
    assert!(n > 10_000, "{n}");
}

#[test]
fn random_resolv_conf_text_never_panics() {
    let seed = seed();
    let mut rng = Rng(seed | 1);
    let words = [
        "nameserver",
        "search",
        "domain",
        "options",
        "ndots:",
        "timeout:",
        "attempts:",
        "rotate",
        "fe80::1%",
        "eth0",
        "10.0.0.1",
        "::",
        "#",
        ";",
        " ",
        "\t",
        "\n",
        ":",
        "%",
        ".",
        "999999999999",
        "\u{0}",
        "é",
        "a.test.",
    ];
    let budget = budget(Duration::from_secs(1));
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < budget {
        let text: String = (0..rng.below(40))
            .map(|_| words[rng.below(words.len())])
            .collect();
        let conf = resolv::parse(&text);
        let _ = conf.server_addrs(53, |_| Some(1));
        n += 1;
    }
    println!("resolv.conf fuzz (VMPOD_FUZZ_SEED={seed:x}): {n} texts");
}
