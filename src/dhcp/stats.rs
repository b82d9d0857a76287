//! The server's counters, plain atomics the lead exports to Prometheus.

use std::sync::atomic::{AtomicU64, Ordering};

use dhcproto::v4::MessageType;

/// Counters of one DHCPv4 server. All monotonic.
#[derive(Debug, Default)]
pub struct DhcpStats {
    /// Messages received from the guest, by type.
    pub discover: AtomicU64,
    pub request: AtomicU64,
    pub decline: AtomicU64,
    pub release: AtomicU64,
    pub inform: AtomicU64,
    /// Well-formed messages of a type a server does not take (OFFER, ACK, ...).
    pub other_type: AtomicU64,
    /// Replies sent, by type.
    pub offer: AtomicU64,
    pub ack: AtomicU64,
    pub nak: AtomicU64,
    /// Packets dropped because they do not parse as a DHCP request.
    pub malformed: AtomicU64,
    /// ACKs that granted or extended the lease (INFORM answers are not leases).
    pub leases_granted: AtomicU64,
    /// Packets from a MAC other than the guest's.
    pub foreign_mac: AtomicU64,
    /// Replies the socket failed to send.
    pub send_errors: AtomicU64,
}

impl DhcpStats {
    pub(crate) fn received(&self, kind: MessageType) {
        let counter = match kind {
            MessageType::Discover => &self.discover,
            MessageType::Request => &self.request,
            MessageType::Decline => &self.decline,
            MessageType::Release => &self.release,
            MessageType::Inform => &self.inform,
            _ => &self.other_type,
        };
        bump(counter);
    }

    pub(crate) fn sent(&self, kind: MessageType) {
        match kind {
            MessageType::Offer => bump(&self.offer),
            MessageType::Ack => bump(&self.ack),
            MessageType::Nak => bump(&self.nak),
            _ => {}
        }
    }

    /// `counter`'s current value; a shorthand for tests and exporters.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
