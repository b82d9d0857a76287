//! A bounded fuzz-style test of the config reader: seeded random bytes and
//! mutations of every config in the repository (tests/configs, its bad/
//! corpus, domains/) into `load`, for about two seconds (VMPOD_FUZZ_SECONDS
//! for longer, VMPOD_FUZZ_SEED to replay; deploy/bench/reliability.sh runs
//! it long). No panic, and every error names the file with a line and a
//! column, so that a user can find what to fix.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{FileChecks, load};
use crate::dhcp::lease_server::fuzz_tests::{Rng, budget, seed};

const FILE: &str = "fuzz.yaml";

/// Tokens that YAML, serde and the validators treat specially.
const WORDS: &[&str] = &[
    ":",
    ": ",
    "- ",
    "-",
    "{",
    "}",
    "[",
    "]",
    ",",
    "\n",
    "\n  ",
    "\t",
    "#",
    "&a ",
    "*a",
    "<<: *a",
    "!!str ",
    "!!binary ",
    "!!map ",
    "? ",
    "|",
    ">",
    "'",
    "\"",
    "~",
    "null",
    "true",
    "no",
    "0x",
    "1e999",
    "-1",
    "0",
    "4294967296",
    "18446744073709551616",
    ".inf",
    ".nan",
    "1.5",
    "10s",
    "0s",
    "999999h",
    "1Gi",
    "16Ei",
    "10.0.1.1/24",
    "::/0",
    "fe80::1%eth0",
    "300.1.1.1",
    "/",
    "..",
    "\u{0}",
    "\u{feff}",
    "é",
    "\u{202e}",
    "---",
    "...",
    "%YAML 1.2\n",
    "name",
    "network",
    "ingress",
    "egress",
    "port",
    "mode",
    "tproxy",
    "disks",
    "boot",
    "health",
    "lifecycle",
];

/// Every config file in the repository, as the mutation seeds.
fn corpus() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["tests/configs", "tests/configs/bad", "domains"] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("read {dir}: {e}"))
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        found.sort();
        files.extend(found);
    }
    let mut texts: Vec<String> = files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect();
    // An alias bomb: the reader's alias limits must stop it.
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
    for (i, c) in ('b'..='k').enumerate() {
        let prev = (b'a' + i as u8) as char;
        bomb.push_str(&format!("{c}: &{c} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
    }
    bomb.push_str("name: *k\n");
    texts.push(bomb);
    assert!(texts.len() > 100, "the corpus is missing: {}", texts.len());
    texts
}

fn mutate(rng: &mut Rng, seed: &str) -> String {
    let mut lines: Vec<String> = seed.lines().map(str::to_owned).collect();
    let mut bytes_mode = false;
    for _ in 0..=rng.below(5) {
        match rng.below(8) {
            // Whole lines: removed, duplicated, swapped (structure).
            0 if !lines.is_empty() => {
                lines.remove(rng.below(lines.len()));
            }
            1 if !lines.is_empty() => {
                let i = rng.below(lines.len());
                let l = lines[i].clone();
                lines.insert(rng.below(lines.len() + 1), l);
            }
            2 if lines.len() > 1 => {
                let (i, j) = (rng.below(lines.len()), rng.below(lines.len()));
                lines.swap(i, j);
            }
            // Indentation changed.
            3 if !lines.is_empty() => {
                let i = rng.below(lines.len());
                let l = lines[i].trim_start().to_owned();
                lines[i] = format!("{}{l}", " ".repeat(rng.below(9)));
            }
            // A special token inserted inside a line.
            4 | 5 if !lines.is_empty() => {
                let i = rng.below(lines.len());
                let mut at = rng.below(lines[i].len() + 1);
                while !lines[i].is_char_boundary(at) {
                    at -= 1;
                }
                lines[i].insert_str(at, WORDS[rng.below(WORDS.len())]);
            }
            // A value replaced by a token.
            6 if !lines.is_empty() => {
                let i = rng.below(lines.len());
                if let Some((k, _)) = lines[i].split_once(": ") {
                    lines[i] = format!("{k}: {}", WORDS[rng.below(WORDS.len())]);
                }
            }
            _ => bytes_mode = true,
        }
    }
    let mut text = lines.join("\n");
    if bytes_mode {
        // Raw bytes flipped, read back as the (lossy) text a file would give.
        let mut b = text.into_bytes();
        for _ in 0..=rng.below(4) {
            if !b.is_empty() {
                let i = rng.below(b.len());
                b[i] = rng.byte();
            }
        }
        text = String::from_utf8_lossy(&b).into_owned();
    }
    text
}

#[test]
fn random_and_mutated_configs_never_panic() {
    let seed = seed();
    let mut rng = Rng(seed | 1);
    let corpus = corpus();
    let budget = budget(Duration::from_secs(2));
    let started = Instant::now();
    let (mut n, mut accepted, mut refused) = (0u64, 0u64, 0u64);
    let mut unlocated = Vec::new();
    while started.elapsed() < budget {
        let text = if rng.below(8) == 0 {
            let b: Vec<u8> = (0..rng.below(400)).map(|_| rng.byte()).collect();
            String::from_utf8_lossy(&b).into_owned()
        } else {
            let i = rng.below(corpus.len());
            mutate(&mut rng, &corpus[i])
        };
        match load(FILE, &text, FileChecks::Warn) {
            Ok(_) => accepted += 1,
            Err(e) => {
                refused += 1;
                assert!(
                    !e.diagnostics.is_empty(),
                    "seed {seed:x}: an error without a diagnostic"
                );
                for d in &e.diagnostics {
                    assert_eq!(d.file, FILE, "seed {seed:x}: {d}");
                    if d.position.is_none() && unlocated.len() < 20 {
                        unlocated.push(format!("{d}\n--- from ---\n{text}\n---"));
                    }
                }
            }
        }
        n += 1;
    }
    println!(
        "config fuzz (VMPOD_FUZZ_SEED={seed:x}): {n} configs, {accepted} accepted, {refused} refused"
    );
    assert!(
        unlocated.is_empty(),
        "seed {seed:x}: errors without FILE:LINE:COL:\n{}",
        unlocated.join("\n")
    );
    assert!(n > 200, "too few iterations to mean anything: {n}");
    assert!(
        accepted > 0 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
}
