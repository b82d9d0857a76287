//! The DHCPv4 state machine over the guest's one lease: pure and
//! synchronous (no sockets, the time passed in), so every exchange of
//! RFC 2131 is unit-tested without root. The socket layer (`socket.rs`)
//! feeds it packets and sends what it returns.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use tokio::sync::watch;

use super::config::{DhcpConfig, DhcpConfigError, dns_name, format_mac};
use super::stats::{DhcpStats, bump};

/// The RFC 2131 magic cookie that starts the options.
pub(crate) const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// The fixed BOOTP header plus the cookie.
pub(crate) const MIN_LEN: usize = 240;
/// What every DHCP client must accept (RFC 2131 2): replies stay below it.
const MIN_MAX_MESSAGE: usize = 576;
/// After a DECLINE (the guest found its address in use), offers pause
/// this long, about what a client waits before it starts over (RFC 2131 3.1.5).
pub const DECLINE_HOLDOFF: Duration = Duration::from_secs(10);
/// Foreign MACs remembered for "logged once"; beyond, they are counted only.
const FOREIGN_MACS_LOGGED: usize = 64;

/// The guest's lease, as last granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    pub granted: Instant,
    pub expires: Instant,
}

/// Where a reply goes (port 68 on the bridge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// 255.255.255.255: a client without an address takes it, with or without
    /// the broadcast flag. Without raw sockets the server cannot unicast to an
    /// address the guest does not hold yet, and RFC 2131 4.1 allows the
    /// broadcast instead.
    Broadcast,
    /// The address the client already has (INFORM).
    Unicast(Ipv4Addr),
}

/// One reply to send.
#[derive(Debug, Clone)]
pub struct Reply {
    pub kind: MessageType,
    pub message: Message,
    pub to: Destination,
}

impl Reply {
    pub fn to_bytes(&self) -> Result<Vec<u8>, dhcproto::error::EncodeError> {
        self.message.to_vec()
    }
}

/// The server's state: the one lease, what was declined, who was ignored.
pub struct LeaseServer {
    config: DhcpConfig,
    /// Options sent in OFFER, ACK and INFORM answers, built once.
    options: Vec<DhcpOption>,
    lease: Option<Lease>,
    declined_until: Option<Instant>,
    foreign: ForeignMacs,
    stats: Arc<DhcpStats>,
    lease_tx: watch::Sender<Option<Lease>>,
}

impl LeaseServer {
    pub fn new(config: DhcpConfig) -> Result<LeaseServer, DhcpConfigError> {
        config.validate()?;
        let options = configured_options(&config)?;
        let (lease_tx, _) = watch::channel(None);
        let server = LeaseServer {
            config,
            options,
            lease: None,
            declined_until: None,
            foreign: ForeignMacs::default(),
            stats: Arc::new(DhcpStats::default()),
            lease_tx,
        };
        // The largest reply, an ACK with every option, must fit.
        let probe = server.reply(&server.probe_request(), MessageType::Ack, true);
        let len = probe.to_vec().map(|b| b.len()).unwrap_or(usize::MAX);
        if len > MIN_MAX_MESSAGE - 28 {
            return Err(DhcpConfigError::TooLarge(len));
        }
        Ok(server)
    }

    pub fn config(&self) -> &DhcpConfig {
        &self.config
    }

    pub fn stats(&self) -> Arc<DhcpStats> {
        self.stats.clone()
    }

    /// The lease as it changes: `Some` once the guest is ACKed, `None` again
    /// after RELEASE, DECLINE or expiry.
    pub fn lease_watch(&self) -> watch::Receiver<Option<Lease>> {
        self.lease_tx.subscribe()
    }

    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// One datagram received on port 67: the reply to send, if any.
    /// Anything that is not a well-formed DHCP request is counted as
    /// malformed and dropped.
    pub fn handle_packet(&mut self, bytes: &[u8], now: Instant) -> Option<Reply> {
        let msg = match parse_request(bytes) {
            Some(msg) => msg,
            None => {
                bump(&self.stats.malformed);
                return None;
            }
        };
        self.handle(&msg, now)
    }

    /// One decoded message: the reply to send, if any.
    pub fn handle(&mut self, msg: &Message, now: Instant) -> Option<Reply> {
        // chaddr() slices by hlen: check it first (a decoded hlen may be 255).
        if msg.opcode() != Opcode::BootRequest || msg.htype() != HType::Eth || msg.hlen() != 6 {
            bump(&self.stats.malformed);
            return None;
        }
        let Some(kind) = msg.opts().msg_type() else {
            bump(&self.stats.malformed);
            return None;
        };
        let mut mac = [0u8; 6];
        mac.copy_from_slice(msg.chaddr());
        if mac != self.config.guest_mac {
            bump(&self.stats.foreign_mac);
            if self.foreign.first_time(mac) {
                tracing::info!(
                    mac = %format_mac(&mac),
                    bridge = %self.config.bridge,
                    "dhcp: ignoring a client that is not the guest (logged once per MAC)"
                );
            }
            return None;
        }
        self.stats.received(kind);
        if !msg.giaddr().is_unspecified() {
            // The bridge has no relay agent: a relayed message is not the guest's.
            tracing::debug!(giaddr = %msg.giaddr(), "dhcp: ignoring a relayed message");
            return None;
        }
        self.expire(now);
        let reply = match kind {
            MessageType::Discover => self.discover(msg, now),
            MessageType::Request => self.request(msg, now),
            MessageType::Release => {
                self.release(msg);
                None
            }
            MessageType::Decline => {
                self.decline(msg, now);
                None
            }
            MessageType::Inform => Some(self.reply(msg, MessageType::Ack, false)),
            _ => None,
        }?;
        let kind = reply.opts().msg_type().unwrap_or(MessageType::Ack);
        self.stats.sent(kind);
        let to = destination(msg, kind);
        Some(Reply {
            kind,
            message: reply,
            to,
        })
    }

    /// Drops the lease once it has expired; when the next expiry is due.
    pub fn expire(&mut self, now: Instant) -> Option<Instant> {
        if let Some(lease) = &self.lease
            && lease.expires <= now
        {
            tracing::info!(ip = %lease.ip, "dhcp: the guest's lease expired");
            self.set_lease(None);
        }
        self.lease.as_ref().map(|l| l.expires)
    }

    fn discover(&mut self, msg: &Message, now: Instant) -> Option<Message> {
        if self.declined(now) {
            return None;
        }
        Some(self.reply(msg, MessageType::Offer, true))
    }

    fn request(&mut self, msg: &Message, now: Instant) -> Option<Message> {
        let server_id = server_id(msg);
        let requested = requested_ip(msg);
        let ciaddr = msg.ciaddr();
        let guest = self.config.guest_ip;
        let acceptable = match (server_id, requested) {
            // SELECTING, answering another server's offer: that server's business.
            (Some(id), _) if id != self.config.server => return None,
            // SELECTING our offer (some clients put the address in ciaddr).
            (Some(_), Some(ip)) => ip == guest,
            (Some(_), None) => ciaddr == guest,
            // INIT-REBOOT: the client asks to keep the address it remembers.
            (None, Some(ip)) if ciaddr.is_unspecified() => ip == guest,
            // RENEWING (unicast) or REBINDING (broadcast): the address is in ciaddr.
            (None, _) if !ciaddr.is_unspecified() => ciaddr == guest,
            (None, _) => {
                tracing::debug!("dhcp: ignoring a REQUEST without any address");
                return None;
            }
        };
        if !acceptable || self.declined(now) {
            tracing::info!(
                requested = %requested.unwrap_or(ciaddr),
                offered = %guest,
                "dhcp: NAK: the guest asked for an address other than its own"
            );
            return Some(self.nak(msg));
        }
        let reply = self.reply(msg, MessageType::Ack, true);
        let was = self.lease.is_some();
        self.set_lease(Some(Lease {
            ip: guest,
            mac: self.config.guest_mac,
            granted: now,
            expires: now + self.config.lease,
        }));
        bump(&self.stats.leases_granted);
        if was {
            tracing::debug!(ip = %guest, "dhcp: lease renewed");
        } else {
            tracing::info!(
                ip = %guest,
                mac = %format_mac(&self.config.guest_mac),
                lease_secs = self.config.lease.as_secs(),
                "dhcp: the guest has its lease"
            );
        }
        Some(reply)
    }

    fn release(&mut self, msg: &Message) {
        if server_id(msg).is_some_and(|id| id != self.config.server) {
            return;
        }
        if msg.ciaddr() == self.config.guest_ip && self.lease.is_some() {
            tracing::info!(ip = %msg.ciaddr(), "dhcp: the guest released its lease");
            self.set_lease(None);
        }
    }

    fn decline(&mut self, msg: &Message, now: Instant) {
        if server_id(msg).is_some_and(|id| id != self.config.server) {
            return;
        }
        if requested_ip(msg) == Some(self.config.guest_ip) {
            tracing::warn!(
                ip = %self.config.guest_ip,
                bridge = %self.config.bridge,
                "dhcp: the guest declined its address: another host on the bridge answers ARP for it"
            );
            self.set_lease(None);
            self.declined_until = Some(now + DECLINE_HOLDOFF);
        }
    }

    fn declined(&self, now: Instant) -> bool {
        self.declined_until.is_some_and(|until| now < until)
    }

    fn set_lease(&mut self, lease: Option<Lease>) {
        self.lease = lease.clone();
        self.lease_tx.send_replace(lease);
    }

    /// An OFFER or ACK (`with_lease`) or an INFORM's ACK (without).
    fn reply(&self, req: &Message, kind: MessageType, with_lease: bool) -> Message {
        let mut m = self.header(req);
        if with_lease {
            m.set_yiaddr(self.config.guest_ip);
        }
        let opts = m.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(self.config.server));
        if with_lease {
            let secs = self.config.lease.as_secs() as u32;
            opts.insert(DhcpOption::AddressLeaseTime(secs));
            opts.insert(DhcpOption::Renewal(secs / 2));
            opts.insert(DhcpOption::Rebinding((secs / 8).saturating_mul(7)));
        }
        for o in &self.options {
            opts.insert(o.clone());
        }
        m
    }

    fn nak(&self, req: &Message) -> Message {
        let mut m = self.header(req);
        m.set_ciaddr(Ipv4Addr::UNSPECIFIED);
        let opts = m.opts_mut();
        opts.insert(DhcpOption::MessageType(MessageType::Nak));
        opts.insert(DhcpOption::ServerIdentifier(self.config.server));
        opts.insert(DhcpOption::Message(format!(
            "this server leases only {}",
            self.config.guest_ip
        )));
        m
    }

    /// A BOOTREPLY header answering `req` (RFC 2131 table 3).
    fn header(&self, req: &Message) -> Message {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootReply)
            .set_htype(HType::Eth)
            .set_xid(req.xid())
            .set_flags(req.flags())
            .set_ciaddr(req.ciaddr())
            .set_giaddr(req.giaddr())
            .set_chaddr(&self.config.guest_mac);
        m
    }

    fn probe_request(&self) -> Message {
        let mut m = Message::default();
        m.set_chaddr(&self.config.guest_mac);
        m
    }
}

/// The configured options, in the order the RFCs number them.
fn configured_options(c: &DhcpConfig) -> Result<Vec<DhcpOption>, DhcpConfigError> {
    let subnet = c.subnet()?;
    let mut o = vec![
        DhcpOption::SubnetMask(subnet.netmask()),
        DhcpOption::BroadcastAddr(subnet.broadcast()),
    ];
    if let Some(r) = c.router {
        o.push(DhcpOption::Router(vec![r]));
    }
    if !c.dns.is_empty() {
        o.push(DhcpOption::DomainNameServer(c.dns.clone()));
    }
    if let Some(h) = &c.hostname {
        o.push(DhcpOption::Hostname(h.clone()));
    }
    if let Some(d) = &c.domain {
        o.push(DhcpOption::DomainName(d.trim_end_matches('.').to_string()));
    }
    if let Some(mtu) = c.mtu {
        o.push(DhcpOption::InterfaceMtu(mtu));
    }
    if !c.search.is_empty() {
        let names = c
            .search
            .iter()
            .map(|s| dns_name("search domain", s))
            .collect::<Result<Vec<_>, _>>()?;
        o.push(DhcpOption::DomainSearch(names));
    }
    let routes = c.routes_sent();
    if !routes.is_empty() {
        o.push(DhcpOption::ClasslessStaticRoute(routes));
    }
    Ok(o)
}

/// A DHCP request, or None for anything else.
fn parse_request(bytes: &[u8]) -> Option<Message> {
    if bytes.len() < MIN_LEN || bytes[236..240] != MAGIC || !options_well_formed(&bytes[MIN_LEN..])
    {
        return None;
    }
    // dhcproto 0.15 asserts on some option lengths (debug builds) and
    // subtracts from others; `options_well_formed` rules those out, and
    // this catches whatever a future version adds: a packet must never
    // take the server down.
    std::panic::catch_unwind(|| Message::from_bytes(bytes).ok()).unwrap_or_else(|_| {
        tracing::warn!("dhcp: the DHCP parser panicked on a packet; dropped as malformed");
        None
    })
}

/// Every option fits in the packet, and the ones with a fixed size have it.
pub(crate) fn options_well_formed(mut opts: &[u8]) -> bool {
    loop {
        match opts {
            [] | [255, ..] => return true,
            [0, rest @ ..] => opts = rest,
            [code, len, rest @ ..] => {
                let len = *len as usize;
                if rest.len() < len || !option_length_ok(*code, len) {
                    return false;
                }
                opts = &rest[len..];
            }
            [_] => return false,
        }
    }
}

fn option_length_ok(code: u8, len: usize) -> bool {
    match code {
        // message type, overload
        53 | 52 => len == 1,
        // max message size, MTU
        57 | 26 => len == 2,
        // requested address, server identifier, lease time, T1, T2
        50 | 54 | 51 | 58 | 59 => len == 4,
        // rapid commit; client network interface; client FQDN
        80 => len == 0,
        94 => len == 3,
        81 => len >= 3,
        // bulk leasequery status code and times
        151 => len >= 1,
        152..=155 => len == 4,
        _ => true,
    }
}

fn server_id(msg: &Message) -> Option<Ipv4Addr> {
    match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

fn requested_ip(msg: &Message) -> Option<Ipv4Addr> {
    match msg.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    }
}

/// Where a reply goes. RFC 2131 4.1 would unicast to ciaddr when the
/// client has one; on the bridge only the guest listens, so a broadcast
/// costs nothing, and it is what every client takes:
/// - a client without an address gets a broadcast whatever its broadcast
///   flag says (see `Destination::Broadcast`);
/// - a renewing or rebinding client gets a broadcast too: busybox udhcpc
///   (1.35) sends its unicast renew from a short-lived socket bound to
///   ciaddr:68, which the kernel prefers for a unicast answer, so a quick
///   unicast ACK is lost when that socket closes and udhcpc only recovers by
///   rebinding seconds later (seen in tests/dhcp_ns.rs); dhclient takes both;
/// - an INFORM's answer goes unicast to ciaddr: that client waits on the
///   socket it sent from, bound to its address, which a broadcast misses;
/// - a NAK is always broadcast.
fn destination(req: &Message, kind: MessageType) -> Destination {
    let ciaddr = req.ciaddr();
    let inform = req.opts().msg_type() == Some(MessageType::Inform);
    if inform && kind == MessageType::Ack && !ciaddr.is_unspecified() && !ciaddr.is_broadcast() {
        Destination::Unicast(ciaddr)
    } else {
        Destination::Broadcast
    }
}

/// The foreign MACs already logged, bounded.
#[derive(Default)]
struct ForeignMacs {
    seen: HashSet<[u8; 6]>,
    overflow_logged: bool,
}

impl ForeignMacs {
    /// True the first time `mac` is seen (and while there is room to remember it).
    fn first_time(&mut self, mac: [u8; 6]) -> bool {
        if self.seen.contains(&mac) {
            return false;
        }
        if self.seen.len() >= FOREIGN_MACS_LOGGED {
            if !self.overflow_logged {
                self.overflow_logged = true;
                tracing::warn!(
                    "dhcp: more than {FOREIGN_MACS_LOGGED} foreign MACs on the bridge; \
                     no longer logging new ones (still counted)"
                );
            }
            return false;
        }
        self.seen.insert(mac);
        true
    }
}

#[cfg(test)]
#[path = "lease_server_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "fuzz_tests.rs"]
pub(crate) mod fuzz_tests;
