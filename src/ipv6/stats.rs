//! Counters of the RA and DHCPv6 servers: plain atomics, read by the
//! metrics exporter and the tests.

use std::sync::atomic::{AtomicU64, Ordering};

/// Router Advertisement server counters.
#[derive(Debug, Default)]
pub struct RaStats {
    pub solicits_received: AtomicU64,
    /// Not a valid solicitation (bad length, hop limit not 255, options).
    pub malformed: AtomicU64,
    /// Solicitations dropped because one was answered just before.
    pub solicits_rate_limited: AtomicU64,
    pub adverts_sent: AtomicU64,
    pub unsolicited_sent: AtomicU64,
    pub send_errors: AtomicU64,
}

/// DHCPv6 server counters.
#[derive(Debug, Default)]
pub struct Dhcpv6Stats {
    pub received: AtomicU64,
    /// Undecodable, or breaking RFC 8415's rules for its message type.
    pub malformed: AtomicU64,
    /// A client whose DUID carries another MAC than the guest's.
    pub other_client: AtomicU64,
    /// Addressed to another server (its Server Identifier is not ours).
    pub other_server: AtomicU64,
    pub solicit: AtomicU64,
    pub request: AtomicU64,
    pub confirm: AtomicU64,
    pub renew: AtomicU64,
    pub rebind: AtomicU64,
    pub release: AtomicU64,
    pub decline: AtomicU64,
    pub information_request: AtomicU64,
    /// Message types a server does not answer (server and relay types).
    pub other_type: AtomicU64,
    pub advertise_sent: AtomicU64,
    pub reply_sent: AtomicU64,
    /// REPLYs that bound the guest's address (REQUEST, RENEW, REBIND, or a
    /// rapid-commit SOLICIT).
    pub leases_granted: AtomicU64,
    pub send_errors: AtomicU64,
}

/// Adds one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A counter's value.
pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
