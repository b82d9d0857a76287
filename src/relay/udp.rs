//! The UDP ingress forwarder: datagrams to a pod port go to the guest, and
//! the guest's answers go back to the client that caused them.
//!
//! Each client address is a session with its own upstream socket connected
//! to the guest, so the guest tells clients apart by the source port and its
//! answers arrive on the session they belong to. An answer leaves from the
//! pod address the client sent to (IP_PKTINFO), as a client with a connected
//! socket expects. A session ends after `idle` without a datagram either
//! way; past `max_sessions`, datagrams of new clients are dropped (and
//! counted), while existing sessions carry on.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

use super::socket;
use super::stats::{ActiveGuard, RelayStats};

/// The largest UDP payload.
const DATAGRAM: usize = 65_535;

#[derive(Clone, Copy, Debug)]
pub struct UdpSettings {
    pub guest: SocketAddr,
    pub idle: Duration,
    pub max_sessions: u32,
}

/// Sessions by client address, shared by the IPv4 and IPv6 sockets of one port.
struct Table {
    sessions: Mutex<HashMap<SocketAddr, Arc<Session>>>,
    /// The origin of `Session::last`.
    epoch: Instant,
}

struct Session {
    upstream: UdpSocket,
    /// Milliseconds since the table's epoch of the last datagram either way.
    last: AtomicU64,
}

impl Table {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Session>>> {
        // A panic elsewhere must not take the port down.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client's session, marked active now; looked up and touched under
    /// the lock, so an expiry check cannot remove a session in between.
    fn touch(&self, client: SocketAddr) -> Option<Arc<Session>> {
        let sessions = self.lock();
        let s = sessions.get(&client)?;
        s.last.store(self.now(), Ordering::Relaxed);
        Some(s.clone())
    }

    /// Removes the session if it has been idle for `idle`; false when a
    /// datagram came in meanwhile.
    fn expire(&self, client: SocketAddr, session: &Arc<Session>, idle: Duration) -> bool {
        let mut sessions = self.lock();
        let idle_for = self
            .now()
            .saturating_sub(session.last.load(Ordering::Relaxed));
        if Duration::from_millis(idle_for) < idle {
            return false;
        }
        if sessions
            .get(&client)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            sessions.remove(&client);
        }
        true
    }
}

/// Serves `sockets` (one per address family, all of one pod port) until
/// `shutdown` turns true; every session ends with it.
pub async fn serve(
    name: String,
    sockets: Vec<UdpSocket>,
    settings: UdpSettings,
    stats: Arc<RelayStats>,
    shutdown: watch::Receiver<bool>,
) {
    let table = Arc::new(Table {
        sessions: Mutex::new(HashMap::new()),
        epoch: Instant::now(),
    });
    let loops: Vec<_> = sockets
        .into_iter()
        .map(|s| {
            tokio::spawn(receive_loop(
                name.clone(),
                Arc::new(s),
                table.clone(),
                settings,
                stats.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    for l in loops {
        let _ = l.await;
    }
}

/// Client → guest for one socket: finds or opens the client's session and
/// passes the datagram on.
async fn receive_loop(
    name: String,
    listener: Arc<UdpSocket>,
    table: Arc<Table>,
    settings: UdpSettings,
    stats: Arc<RelayStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; DATAGRAM];
    let fd = listener.as_raw_fd();
    loop {
        let got = tokio::select! {
            r = listener.async_io(Interest::READABLE, || socket::recv_with_destination(fd, &mut buf)) => r,
            _ = shutdown.changed() => return,
        };
        let got = match got {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!(relay = "ingress", name, error = %e, "UDP receive failed");
                continue;
            }
        };
        let session = match table.touch(got.from) {
            Some(s) => s,
            None => match open(&name, &listener, &table, got, settings, &stats, &shutdown) {
                Some(s) => s,
                None => continue,
            },
        };
        let data = &buf[..got.len];
        // Not tokio's try_send: it reports WouldBlock until the new socket's
        // first readiness event; a plain non-blocking send drops only when
        // the socket buffer is really full.
        let sent = nix::sys::socket::send(
            session.upstream.as_raw_fd(),
            data,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        );
        match sent {
            Ok(_) => RelayStats::add(&stats.bytes_out, got.len as u64),
            // The guest said its port is closed (ICMP), or the socket's
            // buffer is full: UDP drops, the session stays.
            Err(e) => {
                RelayStats::add(&stats.upstream_failed, 1);
                tracing::debug!(relay = "ingress", name, client = %got.from, error = %e, "datagram to the guest dropped");
            }
        }
    }
}

/// A new session for `got.from`, or None when the limit is reached or no
/// upstream socket can be made (the datagram is dropped and counted).
fn open(
    name: &str,
    listener: &Arc<UdpSocket>,
    table: &Arc<Table>,
    got: socket::Received,
    settings: UdpSettings,
    stats: &Arc<RelayStats>,
    shutdown: &watch::Receiver<bool>,
) -> Option<Arc<Session>> {
    let mut sessions = table.lock();
    if sessions.len() >= settings.max_sessions as usize {
        drop(sessions);
        RelayStats::add(&stats.refused, 1);
        tracing::debug!(relay = "ingress", name, client = %got.from, limit = settings.max_sessions, "UDP session limit reached: datagram dropped");
        return None;
    }
    let upstream = match upstream_socket(settings.guest) {
        Ok(u) => u,
        Err(e) => {
            drop(sessions);
            RelayStats::add(&stats.upstream_failed, 1);
            tracing::warn!(relay = "ingress", name, guest = %settings.guest, error = %e, "cannot open a UDP socket to the guest");
            return None;
        }
    };
    let session = Arc::new(Session {
        upstream,
        last: AtomicU64::new(table.now()),
    });
    sessions.insert(got.from, session.clone());
    drop(sessions);
    RelayStats::add(&stats.accepted, 1);
    tracing::debug!(relay = "ingress", name, client = %got.from, to = ?got.to, "UDP session opened");
    tokio::spawn(answer_loop(
        name.to_string(),
        listener.clone(),
        table.clone(),
        session.clone(),
        Reply {
            client: got.from,
            from: got.to,
        },
        settings.idle,
        stats.clone(),
        shutdown.clone(),
    ));
    Some(session)
}

/// A connected socket to the guest from an ephemeral port of the pod.
fn upstream_socket(guest: SocketAddr) -> io::Result<UdpSocket> {
    let any: IpAddr = if guest.is_ipv4() {
        [0u8; 4].into()
    } else {
        [0u16; 8].into()
    };
    let s = std::net::UdpSocket::bind(SocketAddr::new(any, 0))?;
    s.connect(guest)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

/// Where a session's answers go, and from which local address.
#[derive(Clone, Copy)]
struct Reply {
    client: SocketAddr,
    from: Option<IpAddr>,
}

/// Guest → client for one session, until it idles out or the port closes.
#[allow(clippy::too_many_arguments)]
async fn answer_loop(
    name: String,
    listener: Arc<UdpSocket>,
    table: Arc<Table>,
    session: Arc<Session>,
    reply: Reply,
    idle: Duration,
    stats: Arc<RelayStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let active = ActiveGuard::new(&stats);
    let fd = listener.as_raw_fd();
    loop {
        let last = session.last.load(Ordering::Relaxed);
        let deadline = table.epoch + Duration::from_millis(last) + idle;
        tokio::select! {
            r = session.upstream.readable() => {
                if r.is_err() {
                    break;
                }
                // Allocated per datagram: an idle session holds no buffer.
                let mut buf = Vec::with_capacity(DATAGRAM);
                let n = match session.upstream.try_recv_buf(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => {
                        // ECONNREFUSED: an earlier datagram met a closed port.
                        RelayStats::add(&stats.upstream_failed, 1);
                        tracing::debug!(relay = "ingress", name, client = %reply.client, error = %e, "guest socket error");
                        continue;
                    }
                };
                session.last.store(table.now(), Ordering::Relaxed);
                let sent = listener
                    .async_io(Interest::WRITABLE, || {
                        socket::send_from(fd, &buf[..n], reply.client, reply.from)
                    })
                    .await;
                match sent {
                    Ok(_) => RelayStats::add(&stats.bytes_in, n as u64),
                    Err(e) => tracing::debug!(relay = "ingress", name, client = %reply.client, error = %e, "answer to the client dropped"),
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if table.expire(reply.client, &session, idle) {
                    // Not active before counted as expired: a reader of the
                    // counters never sees a session as both.
                    drop(active);
                    RelayStats::add(&stats.expired, 1);
                    tracing::debug!(relay = "ingress", name, client = %reply.client, "UDP session expired");
                    return;
                }
            }
            _ = shutdown.changed() => break,
        }
    }
}
