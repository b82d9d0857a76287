//! A bounded fuzz-style test: seeded random and mutated packets into the
//! parser and the state machine for about two seconds (VMPOD_FUZZ_SECONDS
//! for longer; deploy/bench/reliability.sh runs it so). No panic, and
//! dhcproto itself never panics behind `options_well_formed` (its decoder
//! is called here without the server's catch_unwind net).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType};
use dhcproto::{Decodable, Encodable};

use super::{LeaseServer, MAGIC, MIN_LEN, options_well_formed};
use crate::dhcp::config::tests::example;

/// xorshift64*: reproducible from the seed printed on failure.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    pub fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// How long a fuzz test runs: `default` inside `cargo test`, or
/// VMPOD_FUZZ_SECONDS (the reliability scorecard's long run).
pub(crate) fn budget(default: Duration) -> Duration {
    std::env::var("VMPOD_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(default, Duration::from_secs_f64)
}

/// A new seed each run (printed, to replay a failure), or VMPOD_FUZZ_SEED.
pub(crate) fn seed() -> u64 {
    std::env::var("VMPOD_FUZZ_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// Valid requests of every kind, for the guest's MAC and another.
fn corpus() -> Vec<Vec<u8>> {
    let guest = example().guest_mac;
    let mut out = Vec::new();
    for mac in [guest, [2, 0, 0, 0, 0, 9]] {
        for kind in [
            MessageType::Discover,
            MessageType::Request,
            MessageType::Decline,
            MessageType::Release,
            MessageType::Inform,
        ] {
            let mut m = Message::default();
            m.set_chaddr(&mac)
                .set_flags(Flags::default().set_broadcast());
            let o = m.opts_mut();
            o.insert(DhcpOption::MessageType(kind));
            o.insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 1, 2)));
            o.insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 1, 1)));
            o.insert(DhcpOption::Hostname("guest".into()));
            o.insert(DhcpOption::ClientIdentifier(vec![1, 2, 3, 4, 5, 6, 7]));
            o.insert(DhcpOption::MaxMessageSize(1500));
            out.push(m.to_vec().expect("encode"));
        }
    }
    out
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut p = seed.to_vec();
    for _ in 0..=rng.below(6) {
        match rng.below(7) {
            0 if !p.is_empty() => {
                let i = rng.below(p.len());
                p[i] = rng.byte();
            }
            1 => {
                let i = rng.below(p.len() + 1);
                p.insert(i, rng.byte());
            }
            2 if !p.is_empty() => {
                let i = rng.below(p.len());
                p.remove(i);
            }
            3 => p.truncate(rng.below(p.len() + 1)),
            // An option: a random code with a random length, inside the options.
            4 if p.len() > MIN_LEN + 2 => {
                let i = MIN_LEN + rng.below(p.len() - MIN_LEN - 1);
                p[i] = rng.byte();
                p[i + 1] = rng.below(8) as u8;
            }
            5 => p.extend((0..rng.below(64)).map(|_| rng.byte())),
            _ => {
                // hlen, htype and op: the header fields dhcproto slices by.
                if p.len() > 3 {
                    let i = rng.below(3);
                    p[i] = rng.byte();
                }
            }
        }
    }
    p
}

#[test]
fn random_and_mutated_packets_never_panic() {
    let seed = seed();
    let mut rng = Rng(seed | 1);
    let corpus = corpus();
    let mut server = LeaseServer::new(example()).expect("config");
    let budget = budget(Duration::from_secs(2));
    let started = Instant::now();
    let mut n = 0u64;
    let mut decoded = 0u64;
    while started.elapsed() < budget {
        let packet = if rng.below(4) == 0 {
            let mut p: Vec<u8> = (0..rng.below(700)).map(|_| rng.byte()).collect();
            if p.len() >= MIN_LEN && rng.below(2) == 0 {
                p[236..240].copy_from_slice(&MAGIC);
            }
            p
        } else {
            let i = rng.below(corpus.len());
            mutate(&mut rng, &corpus[i])
        };
        // What the server would hand dhcproto, without its safety net.
        if packet.len() >= MIN_LEN
            && packet[236..240] == MAGIC
            && options_well_formed(&packet[MIN_LEN..])
            && Message::from_bytes(&packet).is_ok()
        {
            decoded += 1;
        }
        let now = started + Duration::from_secs(n);
        if let Some(reply) = server.handle_packet(&packet, now) {
            reply.to_bytes().expect("a reply always encodes");
        }
        n += 1;
    }
    let stats = server.stats();
    println!(
        "dhcp fuzz (VMPOD_FUZZ_SEED={seed:x}): {n} packets, {decoded} decoded, {} malformed",
        crate::dhcp::DhcpStats::get(&stats.malformed)
    );
    assert!(n > 10_000, "too few iterations to mean anything: {n}");
    assert!(decoded > 0, "the mutations never produced a valid packet");
}
