//! IPv6 for the guest, as a cloud gives it: Router Advertisements make the
//! gateway the guest's default router and announce the on-link /64, the
//! MTU and DNS (RDNSS, DNSSL); a stateful DHCPv6 server hands the guest its
//! one configured address and the DNS servers. Both serve only the bridge.
//!
//! - `config`: what is handed out (`Ipv6Config`), defaults, `render()`.
//! - `ra`: RA/RS packets as bytes and back (pure).
//! - `advertiser`: the RA server (`RouterAdvertiser`).
//! - `dhcpv6`: the DHCPv6 logic (`Dhcpv6Core`, pure) and the lease.
//! - `dhcpv6_server`: its socket loop (`Dhcpv6Server`).
//! - `socket`: the bridge's state and every socket option used.
//! - `stats`: counters.
//!
//! Running them: build an `Ipv6Config` (`Ipv6Config::new(vm_name, bridge,
//! guest_mac, mtu)` gives the defaults), then, on a tokio runtime whose
//! threads are in the pod's network namespace and once the bridge exists
//! and is up, `RouterAdvertiser::start(&config)` and
//! `Dhcpv6Server::start(&config)`. Both check the bridge first (exists, up,
//! has a MAC, IPv6 not disabled) and fail with a message that says what to
//! fix. The RA server waits by itself for the bridge's link-local address,
//! which appears only once the guest's tap is up. `RouterAdvertiser::stop`
//! withdraws the default route from the guest; `Dhcpv6Server::lease()` is
//! a watch of the guest's lease (readiness). Privileges: CAP_NET_RAW (raw
//! ICMPv6 socket) and CAP_NET_BIND_SERVICE (UDP 547). Both sockets are bound
//! to the bridge's ifindex: a bridge deleted and created again needs the
//! servers restarted.

pub mod advertiser;
pub mod config;
pub mod dhcpv6;
pub mod dhcpv6_server;
pub mod ra;
pub mod socket;
pub mod stats;

pub use advertiser::RouterAdvertiser;
pub use config::{Ipv6Config, Lifetimes, Mac, RaSchedule, ula_prefix};
pub use dhcpv6::{Dhcpv6Core, Lease};
pub use dhcpv6_server::Dhcpv6Server;
pub use stats::{Dhcpv6Stats, RaStats};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Ipv6Error {
    #[error("IPv6 config: {0}")]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Socket(#[from] socket::SocketError),
    #[error("router advertisement: {0}")]
    Encode(#[from] ra::EncodeError),
}

/// Seeded random bytes and mutations for the parsers' fuzz-style tests.
#[cfg(test)]
pub(crate) mod fuzz {
    pub struct XorShift(pub u64);

    impl XorShift {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Flips, overwrites, inserts, removes or truncates a few bytes.
    pub fn mutate(p: &mut Vec<u8>, rng: &mut XorShift) {
        for _ in 0..(rng.next() % 4) {
            let at = if p.is_empty() {
                0
            } else {
                (rng.next() as usize) % p.len()
            };
            match rng.next() % 5 {
                0 if !p.is_empty() => p[at] ^= 1 << (rng.next() % 8),
                1 if !p.is_empty() => p[at] = rng.next() as u8,
                2 => p.insert(at, rng.next() as u8),
                3 if !p.is_empty() => {
                    p.remove(at);
                }
                4 => p.truncate(at),
                _ => {}
            }
        }
    }
}
