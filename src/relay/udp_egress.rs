//! The UDP egress relay (`network.egress.udp: relay`): the guest's
//! datagrams leave the pod as datagrams of a vmpod socket, so whatever looks
//! at pod processes (a mesh, a NetworkPolicy engine that hooks sockets) sees
//! them as the pod's.
//!
//! TPROXY hands the guest's UDP to one transparent listener, which reads
//! each datagram's original destination (IP_RECVORIGDSTADDR). A session is
//! one (guest address, original destination) pair with two sockets: an
//! ordinary socket of the pod connected to the destination, and a reply
//! socket bound transparently to the destination and connected to the
//! guest, from which the answers leave with the source the guest expects.
//! Being connected, the reply socket is also the one TPROXY finds for the
//! session's later datagrams, so after the first they bypass the listener
//! and the table. A session ends after `idle` without a datagram, or
//! `stream` once it has carried datagrams both ways (conntrack's two UDP
//! timeouts). At `max_sessions`, datagrams that would open another session
//! are dropped and counted; existing sessions carry on.
//!
//! Memory is bounded: the table holds at most `max_sessions`, and datagrams
//! are copied through one buffer per worker thread, never held across an
//! await. A datagram that cannot be sent at once is dropped, as UDP may.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::MsgFlags;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

use super::socket;

/// The largest UDP payload, plus one byte to tell a truncated datagram.
const BUFFER: usize = 65_536;

thread_local! {
    /// The copy buffer of this worker thread: taken only by synchronous
    /// code between a receive and a send.
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; BUFFER]);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpEgressSettings {
    /// A session that has carried datagrams one way only ends after this.
    pub idle: Duration,
    /// A session that has carried datagrams both ways ends after this.
    pub stream: Duration,
    pub max_sessions: u32,
}

/// The UDP egress listener and its limits.
#[derive(Clone, Debug)]
pub struct UdpEgressSpec {
    pub addr: SocketAddr,
    /// The IPv6 listener of a dual-stack guest (`network.ipv6`), beside
    /// `addr`; each family keeps its own session table and limit.
    pub addr6: Option<SocketAddr>,
    pub settings: UdpEgressSettings,
}

/// Why a datagram was not relayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// It would have opened a session past `max_sessions`.
    SessionLimit,
    /// A session's sockets could not be made (out of descriptors, or the
    /// destination address and port are vmpod's own listener's).
    Socket,
    /// To vmpod itself, or to no unicast address.
    Destination,
    /// The kernel did not say where it was going.
    NoDestination,
    /// Longer than any UDP payload.
    Truncated,
    /// The socket's send buffer was full, or the peer's port is closed.
    Send,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::SessionLimit,
        DropReason::Socket,
        DropReason::Destination,
        DropReason::NoDestination,
        DropReason::Truncated,
        DropReason::Send,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::SessionLimit => "session_limit",
            DropReason::Socket => "socket",
            DropReason::Destination => "destination",
            DropReason::NoDestination => "no_destination",
            DropReason::Truncated => "truncated",
            DropReason::Send => "send",
        }
    }
}

/// The relay's counters, read by `/metrics`. `out` is guest → destination.
#[derive(Debug, Default)]
pub struct UdpEgressStats {
    pub sessions_active: AtomicU64,
    pub sessions_opened: AtomicU64,
    /// Sessions ended by their idle timeout.
    pub sessions_evicted: AtomicU64,
    pub datagrams_out: AtomicU64,
    pub datagrams_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
    drops: [AtomicU64; 6],
}

impl UdpEgressStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn dropped(&self, why: DropReason) -> u64 {
        Self::get(&self.drops[why as usize])
    }

    fn count_drop(&self, why: DropReason) {
        self.drops[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn out(&self, n: usize) {
        self.datagrams_out.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn back(&self, n: usize) {
        self.datagrams_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// (guest address, original destination).
type Key = (SocketAddr, SocketAddr);

struct Table {
    sessions: Mutex<HashMap<Key, Arc<Session>>>,
    /// The origin of `Session::last`.
    epoch: Instant,
}

struct Session {
    /// The pod's socket, connected to the destination.
    upstream: UdpSocket,
    /// Bound transparently to the destination, connected to the guest.
    reply: UdpSocket,
    /// Milliseconds since the table's epoch of the last datagram either way.
    last: AtomicU64,
    sent: AtomicBool,
    answered: AtomicBool,
}

impl Session {
    fn timeout(&self, s: &UdpEgressSettings) -> Duration {
        if self.sent.load(Ordering::Relaxed) && self.answered.load(Ordering::Relaxed) {
            s.stream
        } else {
            s.idle
        }
    }
}

impl Table {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Session>>> {
        // A panic elsewhere must not take the relay down.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn touch(&self, key: &Key) -> Option<Arc<Session>> {
        let sessions = self.lock();
        let s = sessions.get(key)?;
        s.last.store(self.now(), Ordering::Relaxed);
        Some(s.clone())
    }

    /// Removes the session if it has been idle for its timeout; false when
    /// a datagram came in meanwhile.
    fn expire(&self, key: &Key, session: &Arc<Session>, settings: &UdpEgressSettings) -> bool {
        let mut sessions = self.lock();
        let idle_for = self
            .now()
            .saturating_sub(session.last.load(Ordering::Relaxed));
        if Duration::from_millis(idle_for) < session.timeout(settings) {
            return false;
        }
        if sessions.get(key).is_some_and(|s| Arc::ptr_eq(s, session)) {
            sessions.remove(key);
        }
        true
    }
}

/// Serves `listener` until `shutdown` turns true; every session ends with it.
pub async fn serve(
    listener: UdpSocket,
    settings: UdpEgressSettings,
    stats: Arc<UdpEgressStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let table = Arc::new(Table {
        sessions: Mutex::new(HashMap::new()),
        epoch: Instant::now(),
    });
    let listen_port = listener.local_addr().map_or(0, |a| a.port());
    let fd = listener.as_raw_fd();
    let mut buf = vec![0u8; BUFFER];
    loop {
        if *shutdown.borrow() {
            return;
        }
        let got = tokio::select! {
            r = listener.async_io(Interest::READABLE, || socket::recv_with_original_dst(fd, &mut buf)) => r,
            _ = shutdown.changed() => return,
        };
        let got = match got {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!(relay = "udp-egress", error = %e, "UDP receive failed");
                continue;
            }
        };
        if got.truncated {
            stats.count_drop(DropReason::Truncated);
            continue;
        }
        let Some(dst) = got.original_dst else {
            stats.count_drop(DropReason::NoDestination);
            continue;
        };
        let key = (got.from, dst);
        let session = match table.touch(&key) {
            Some(s) => s,
            None => match open(&table, key, listen_port, settings, &stats, &shutdown) {
                Some(s) => s,
                None => continue,
            },
        };
        // A datagram of the session that the listener got before the
        // session's reply socket existed: relayed here.
        let data = &buf[..got.len];
        session.sent.store(true, Ordering::Relaxed);
        match send(session.upstream.as_raw_fd(), data) {
            Ok(()) => stats.out(data.len()),
            Err(_) => stats.count_drop(DropReason::Send),
        }
    }
}

/// A non-blocking send on a connected socket. Not tokio's try_send: it
/// says WouldBlock until the socket's first readiness event.
fn send(fd: RawFd, data: &[u8]) -> nix::Result<()> {
    nix::sys::socket::send(fd, data, MsgFlags::MSG_DONTWAIT).map(|_| ())
}

/// Whether a datagram to `dst` may be relayed: a unicast address that is
/// not the listener itself (TPROXY's rule already leaves the pod's own
/// addresses out; this guards the relay run on its own).
fn relayable(dst: SocketAddr, listen_port: u16) -> bool {
    let ip = dst.ip();
    let unicast = match ip {
        IpAddr::V4(v4) => !v4.is_broadcast() && !v4.is_multicast() && !v4.is_unspecified(),
        IpAddr::V6(v6) => !v6.is_multicast() && !v6.is_unspecified(),
    };
    unicast && !(dst.port() == listen_port && ip.is_loopback()) && dst.port() != 0
}

/// A new session for `key`, or None (the datagram dropped and counted).
fn open(
    table: &Arc<Table>,
    key: Key,
    listen_port: u16,
    settings: UdpEgressSettings,
    stats: &Arc<UdpEgressStats>,
    shutdown: &watch::Receiver<bool>,
) -> Option<Arc<Session>> {
    let (guest, dst) = key;
    if !relayable(dst, listen_port) {
        stats.count_drop(DropReason::Destination);
        return None;
    }
    let mut sessions = table.lock();
    if sessions.len() >= settings.max_sessions as usize {
        drop(sessions);
        stats.count_drop(DropReason::SessionLimit);
        tracing::debug!(relay = "udp-egress", %guest, %dst, limit = settings.max_sessions, "UDP session limit reached: datagram dropped");
        return None;
    }
    let sockets = socket::udp_connected(dst)
        .and_then(|upstream| socket::udp_reply_socket(dst, guest).map(|reply| (upstream, reply)));
    let (upstream, reply) = match sockets {
        Ok(s) => s,
        Err(e) => {
            drop(sessions);
            stats.count_drop(DropReason::Socket);
            tracing::debug!(relay = "udp-egress", %guest, %dst, error = %e, "cannot open the session's sockets: datagram dropped");
            return None;
        }
    };
    let session = Arc::new(Session {
        upstream,
        reply,
        last: AtomicU64::new(table.now()),
        sent: AtomicBool::new(false),
        answered: AtomicBool::new(false),
    });
    sessions.insert(key, session.clone());
    drop(sessions);
    stats.sessions_opened.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(relay = "udp-egress", %guest, %dst, "UDP session opened");
    tokio::spawn(run_session(
        table.clone(),
        key,
        session.clone(),
        settings,
        stats.clone(),
        shutdown.clone(),
    ));
    Some(session)
}

/// Receives one datagram from `from` and sends it on `to`, through this
/// thread's buffer; the length sent, or which way it failed.
fn pass(from: &UdpSocket, to: RawFd) -> Result<usize, Pass> {
    BUF.with(|b| {
        let mut buf = b.borrow_mut();
        let n = match from.try_recv(&mut buf[..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(Pass::Empty),
            // ECONNREFUSED: an earlier datagram met a closed port.
            Err(_) => return Err(Pass::Empty),
        };
        if n >= BUFFER {
            return Err(Pass::Dropped(DropReason::Truncated));
        }
        send(to, &buf[..n]).map_err(|_| Pass::Dropped(DropReason::Send))?;
        Ok(n)
    })
}

enum Pass {
    /// Nothing to read after all.
    Empty,
    Dropped(DropReason),
}

/// Both directions of one session, until it idles out or the relay stops.
async fn run_session(
    table: Arc<Table>,
    key: Key,
    session: Arc<Session>,
    settings: UdpEgressSettings,
    stats: Arc<UdpEgressStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    stats.sessions_active.fetch_add(1, Ordering::Relaxed);
    let s = &*session;
    loop {
        let last = s.last.load(Ordering::Relaxed);
        let deadline = table.epoch + Duration::from_millis(last) + s.timeout(&settings);
        tokio::select! {
            r = s.reply.readable() => {
                if r.is_err() {
                    break;
                }
                match pass(&s.reply, s.upstream.as_raw_fd()) {
                    Ok(n) => {
                        s.sent.store(true, Ordering::Relaxed);
                        s.last.store(table.now(), Ordering::Relaxed);
                        stats.out(n);
                    }
                    Err(Pass::Dropped(why)) => stats.count_drop(why),
                    Err(Pass::Empty) => {}
                }
            }
            r = s.upstream.readable() => {
                if r.is_err() {
                    break;
                }
                match pass(&s.upstream, s.reply.as_raw_fd()) {
                    Ok(n) => {
                        s.answered.store(true, Ordering::Relaxed);
                        s.last.store(table.now(), Ordering::Relaxed);
                        stats.back(n);
                    }
                    Err(Pass::Dropped(why)) => stats.count_drop(why),
                    Err(Pass::Empty) => {}
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if table.expire(&key, &session, &settings) {
                    stats.sessions_active.fetch_sub(1, Ordering::Relaxed);
                    stats.sessions_evicted.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(relay = "udp-egress", guest = %key.0, dst = %key.1, "UDP session expired");
                    return;
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    let mut sessions = table.lock();
    if sessions.get(&key).is_some_and(|x| Arc::ptr_eq(x, &session)) {
        sessions.remove(&key);
    }
    drop(sessions);
    stats.sessions_active.fetch_sub(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unicast_destinations_other_than_the_listener_are_relayed() {
        let ok = |s: &str| relayable(s.parse().unwrap(), 9401);
        assert!(ok("10.96.0.10:7"));
        assert!(ok("[2001:db8::1]:123"));
        assert!(!ok("255.255.255.255:67"));
        assert!(!ok("224.0.0.251:5353"));
        assert!(!ok("[ff02::fb]:5353"));
        assert!(!ok("0.0.0.0:7"));
        assert!(!ok("127.0.0.1:9401"));
        assert!(!ok("10.96.0.10:0"));
    }

    #[test]
    fn every_drop_reason_has_its_own_counter() {
        let s = UdpEgressStats::default();
        for (i, why) in DropReason::ALL.into_iter().enumerate() {
            assert_eq!(why as usize, i);
            s.count_drop(why);
            s.count_drop(why);
            assert_eq!(s.dropped(why), 2, "{}", why.as_str());
        }
    }
}
