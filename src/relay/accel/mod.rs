//! The accelerated data path (`network.relay.accel: auto`): once both
//! sockets of a relayed TCP connection are established, the kernel moves
//! the bytes between them itself with an eBPF sockmap, and userspace only
//! watches for the ends (FIN, RST, timeouts, the drain).
//!
//! Two SOCKHASHes per process ([`Accel`]):
//! - `peers` (no program): under the key of each socket, as the verdict
//!   program sees it from that socket's skbs, the pair's other socket.
//! - `joined` (the stream verdict attached): each socket under its own
//!   key. Joining it is what turns the redirect on for that socket.
//!
//! A pair joins `peers` first and `joined` second, so a socket's verdict
//! never runs before its peer can be found: a direction is moved either
//! by the kernel from its first byte or by userspace throughout, never by
//! both (which could reorder bytes). See `pair` for the lifecycle.

mod bpf;
mod pair;
mod program;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, OnceLock};

pub use pair::relay_until;

/// Set (to `auto`) by the test suites' second run: the relay correctness
/// tests then run with `network.relay.accel: auto` (see `.ci/run`).
pub const TEST_ENV: &str = "VMPOD_TEST_RELAY_ACCEL";

/// Whether a test run asked for the accelerated path; then it must be
/// there, or the test fails naming what is missing.
pub fn test_mode() -> bool {
    if std::env::var(TEST_ENV).as_deref() != Ok("auto") {
        return false;
    }
    assert!(
        Accel::shared().is_some(),
        "{TEST_ENV}=auto but the eBPF sockmap path is unavailable (needs root: CAP_BPF, CAP_NET_ADMIN); see the log line above"
    );
    true
}

static JOINED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Pairs that joined the maps since the process started: tests prove with
/// it that the kernel path carried their connections.
pub fn joined_total() -> u64 {
    JOINED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Sockets each map can hold: two per connection. Only the bucket array
/// (16 bytes a slot) is allocated up front; elements come and go with
/// the sockets.
const MAX_SOCKETS: u32 = 1 << 17;

#[derive(Debug, thiserror::Error)]
pub enum AccelError {
    #[error("cannot create the SOCKHASH (needs CAP_BPF and CAP_NET_ADMIN, or CAP_SYS_ADMIN): {0}")]
    Map(io::Error),
    #[error("the kernel refuses the sk_skb verdict program: {0}")]
    Load(io::Error),
    #[error("cannot attach the stream verdict to the SOCKHASH: {0}")]
    Attach(io::Error),
    #[error("the self-test on a loopback pair failed: {0}")]
    Probe(String),
}

/// The 44-byte map key of one socket: what the verdict program builds from
/// an skb received on it (see `program`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Key([u8; program::KEY_LEN]);

impl Key {
    /// From the socket's own view: local address first.
    pub fn new(local: SocketAddr, remote: SocketAddr) -> Key {
        let mut w = [0u32; 11];
        w[0] = if local.is_ipv4() {
            libc::AF_INET as u32
        } else {
            libc::AF_INET6 as u32
        };
        w[1] = u32::from(local.port());
        // The network-order u16 read as a native number, as the program
        // stores it.
        w[2] = u32::from(u16::from_ne_bytes(remote.port().to_be_bytes()));
        let mut ip = |at: usize, a: SocketAddr| match a {
            SocketAddr::V4(a) => w[at] = u32::from_ne_bytes(a.ip().octets()),
            SocketAddr::V6(a) => {
                let o = a.ip().octets();
                for i in 0..4 {
                    w[at + i] =
                        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
                }
            }
        };
        ip(3, local);
        ip(7, remote);
        let mut k = [0u8; program::KEY_LEN];
        for (i, v) in w.iter().enumerate() {
            k[4 * i..4 * i + 4].copy_from_slice(&v.to_ne_bytes());
        }
        Key(k)
    }

    pub fn of(s: &tokio::net::TcpStream) -> io::Result<Key> {
        Ok(Key::new(s.local_addr()?, s.peer_addr()?))
    }
}

/// The process's maps and program. The program stays attached as long as
/// `joined` lives (the maps hold it), so this lives for the process.
pub struct Accel {
    peers: OwnedFd,
    joined: OwnedFd,
    _prog: OwnedFd,
}

impl Accel {
    pub fn new() -> Result<Accel, AccelError> {
        let peers = bpf::sockhash(program::KEY_LEN as u32, MAX_SOCKETS).map_err(AccelError::Map)?;
        let joined =
            bpf::sockhash(program::KEY_LEN as u32, MAX_SOCKETS).map_err(AccelError::Map)?;
        let prog =
            bpf::load_sk_skb(&program::verdict(peers.as_raw_fd())).map_err(AccelError::Load)?;
        bpf::attach_verdict(&joined, &prog).map_err(AccelError::Attach)?;
        Ok(Accel {
            peers,
            joined,
            _prog: prog,
        })
    }

    /// The process-wide instance, made and self-tested on first use; the
    /// reason it is unavailable is logged once, here, and kept.
    pub fn shared() -> Option<Arc<Accel>> {
        static SHARED: OnceLock<Result<Arc<Accel>, String>> = OnceLock::new();
        let got = SHARED.get_or_init(|| {
            let made = Accel::new()
                .map_err(|e| e.to_string())
                .and_then(|a| pair::probe(&a).map(|()| a).map_err(|e| AccelError::Probe(e).to_string()));
            match made {
                Ok(a) => {
                    tracing::info!("relay acceleration on: established TCP connections are moved by an eBPF sockmap");
                    Ok(Arc::new(a))
                }
                Err(why) => {
                    tracing::warn!(reason = %why, "network.relay.accel is auto but the kernel path is unavailable: relays copy in userspace");
                    Err(why)
                }
            }
        });
        got.as_ref().ok().cloned()
    }

    fn insert(map: &OwnedFd, key: &Key, sock: RawFd) -> io::Result<()> {
        bpf::insert(map, &key.0, sock)
    }

    fn remove(map: &OwnedFd, key: &Key) {
        let _ = bpf::delete(map, &key.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_well_formed() {
        let p = program::verdict(3);
        // The last instruction is exit, the jumps land inside.
        assert_eq!(p.last().map(|i| (i & 0xff) as u8), Some(0x95));
        assert!(p.len() < 64);
    }

    #[test]
    fn keys_differ_by_direction_and_family() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        assert_ne!(Key::new(a, b), Key::new(b, a));
        let a6: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        let b6: SocketAddr = "[::ffff:10.0.0.2]:4000".parse().unwrap();
        assert_ne!(Key::new(a, b), Key::new(a6, b6));
    }
}

#[cfg(test)]
mod kernel_tests {
    use super::*;

    /// Needs root (CAP_BPF + CAP_NET_ADMIN): on this project's machines the
    /// tests run as root, so a refusal is a failure, with the kernel's word.
    #[test]
    fn the_kernel_takes_the_program_and_redirects_a_pair() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root: the eBPF sockmap needs CAP_BPF and CAP_NET_ADMIN"
        );
        let accel = Accel::new().unwrap_or_else(|e| panic!("{e}"));
        pair::probe(&accel).unwrap_or_else(|e| panic!("{e}"));
        // The maps are left empty: a second pair joins the same way.
        pair::probe(&accel).unwrap_or_else(|e| panic!("{e}"));
    }
}
