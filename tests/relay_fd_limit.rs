//! Issue 16, file descriptors: a relay whose RLIMIT_NOFILE (soft and hard)
//! is far below its max_connections must reset every client it has no
//! descriptors for, promptly, and leave none hanging; it says so at start
//! and while it happens. The relay runs as `vmpod relay ingress` under
//! `prlimit --nofile=64:64`, so the limit is the child's alone.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CLIENTS: usize = 150;
const NOFILE: u32 = 64;

/// Holds and echoes every connection until the test ends.
fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut b = [0u8; 64];
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 || s.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Relayed,
    Reset(Duration),
    Hung,
}

fn try_client(relay: SocketAddr, kept: &mut Vec<TcpStream>) -> Outcome {
    let t = Instant::now();
    let Ok(mut s) = TcpStream::connect_timeout(&relay, Duration::from_secs(3)) else {
        return Outcome::Reset(t.elapsed());
    };
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    if s.write_all(b"x").is_err() {
        return Outcome::Reset(t.elapsed());
    }
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(1) => {
            kept.push(s);
            Outcome::Relayed
        }
        Ok(_) => Outcome::Reset(t.elapsed()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Outcome::Hung,
        Err(_) => Outcome::Reset(t.elapsed()),
    }
}

#[test]
fn clients_past_the_fd_limit_are_reset_promptly_and_none_hangs() {
    let upstream = echo_server();
    let relay: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = std::env::temp_dir().join(format!("vmpod-fd-limit-{}.log", std::process::id()));
    let mut child = Command::new("prlimit")
        .arg(format!("--nofile={NOFILE}:{NOFILE}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_vmpod"))
        .args(["relay", "ingress", "--listen", &relay.to_string()])
        .args(["--to", &upstream.to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("prlimit (util-linux) is needed to run the relay under a low fd limit");
    let t = Instant::now();
    while TcpStream::connect(relay).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the relay never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut kept = Vec::new();
    let outcomes: Vec<Outcome> = (0..CLIENTS).map(|_| try_client(relay, &mut kept)).collect();
    let relayed = outcomes.iter().filter(|o| **o == Outcome::Relayed).count();
    let hung = outcomes.iter().filter(|o| **o == Outcome::Hung).count();
    let resets: Vec<Duration> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Reset(d) => Some(*d),
            _ => None,
        })
        .collect();
    let slowest_reset = resets.iter().max().copied().unwrap_or_default();
    // The relay still serves once descriptors are free again.
    drop(kept);
    std::thread::sleep(Duration::from_millis(300));
    let mut after = Vec::new();
    let recovered = try_client(relay, &mut after);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    eprintln!(
        "nofile {NOFILE}, {CLIENTS} clients: {relayed} relayed, {} reset (slowest {slowest_reset:?}), {hung} hung",
        resets.len()
    );
    assert_eq!(hung, 0, "clients left hanging; relay log:\n{stderr}");
    assert!(relayed > 5, "only {relayed} relayed; relay log:\n{stderr}");
    assert!(resets.len() > CLIENTS / 2, "{outcomes:?}");
    assert!(
        slowest_reset < Duration::from_secs(1),
        "a reset took {slowest_reset:?}"
    );
    assert_eq!(recovered, Outcome::Relayed, "the relay recovers");
    assert!(
        stderr.contains("RLIMIT_NOFILE is 64")
            && stderr.contains("max_connections 10000 × 2 = 20000"),
        "the start-up warning names the numbers:\n{stderr}"
    );
    assert!(
        stderr.contains("out of file descriptors"),
        "the resets are logged:\n{stderr}"
    );
}
