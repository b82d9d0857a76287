//! The accept loop both relays share: a connection limit, a destination
//! chosen per connection, an upstream connect with a timeout, then the
//! byte pump. One connection's failure never touches another's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::copy::{self, Timeouts};
use super::drain::DrainWatch;
use super::proxy_protocol;
use super::socket;
use super::stats::{ActiveGuard, RelayStats};
use crate::config::ProxyProtocol;
use crate::ratelimit::RateLimited;

#[derive(Clone, Copy, Debug)]
pub struct ProxySettings {
    pub connect_timeout: Duration,
    pub timeouts: Timeouts,
    pub max_connections: u32,
    /// A header for the upstream before the client's first byte.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// TCP keepalive on both sockets of every relayed connection (the
    /// config's `network.egress.keepalive`); `None`: off.
    pub keepalive: Option<socket::Keepalive>,
    /// `network.relay.accel: auto`: established connections are moved by
    /// the kernel (eBPF sockmap) when it allows; see [`super::accel`].
    pub accel: bool,
}

impl ProxySettings {
    /// The connection limit; listeners sharing it share one budget.
    pub fn limit(&self) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(self.max_connections as usize))
    }
}

/// How often "out of file descriptors" may be logged, with a count.
static ACCEPT_OUT_OF_FDS: RateLimited = RateLimited::new(Duration::from_secs(10));

/// Decides where an accepted connection goes, or refuses it (with why).
pub trait Destination: Send + Sync + 'static {
    fn destination(&self, client: &TcpStream) -> Result<SocketAddr, String>;
}

/// Serves `listener` until `drain` stops accepting, with at most `limit`
/// connections at once. Connections in flight go on, on their own tasks,
/// until they end or `drain` cuts them.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    dest: Arc<dyn Destination>,
    settings: ProxySettings,
    limit: Arc<Semaphore>,
    stats: Arc<RelayStats>,
    drain: DrainWatch,
) {
    let mut stopping = drain.clone();
    let mut spare = socket::SpareFd::new();
    let shared = Arc::new(Shared {
        name,
        settings,
        stats: stats.clone(),
        drain,
    });
    loop {
        let (client, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) if socket::out_of_fds(&e) => {
                    // Reset the pending connection rather than leave it to
                    // hang in the backlog.
                    let shed = spare.shed(&listener);
                    if shed {
                        RelayStats::add(&stats.refused, 1);
                    }
                    if let Some(n) = ACCEPT_OUT_OF_FDS.hit() {
                        tracing::warn!(relay = name, error = %e, reset = n, "out of file descriptors: new connections are reset (raise RLIMIT_NOFILE or lower max_connections)");
                    }
                    if !shed {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    continue;
                }
                Err(e) => {
                    // Other accept errors: back off instead of spinning.
                    tracing::warn!(relay = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopping.stopped_accepting() => return,
        };
        RelayStats::add(&stats.accepted, 1);
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            RelayStats::add(&stats.refused, 1);
            tracing::debug!(relay = name, %peer, "connection limit reached: refused");
            socket::abort(client);
            continue;
        };
        let target = match dest.destination(&client) {
            Ok(t) => t,
            Err(why) => {
                RelayStats::add(&stats.refused, 1);
                tracing::warn!(relay = name, %peer, reason = %why, "connection refused");
                socket::abort(client);
                continue;
            }
        };
        tokio::spawn(connection(client, peer, target, shared.clone(), permit));
    }
}

/// What every connection of one listener shares: one pointer in each
/// connection's task instead of a copy of each.
struct Shared {
    name: &'static str,
    settings: ProxySettings,
    stats: Arc<RelayStats>,
    drain: DrainWatch,
}

/// One relayed connection's task. Its future is what an idle connection
/// costs in memory (tokio boxes it with the task header), so it is one
/// async fn with few arguments (each level of async fn keeps its own copy
/// of its arguments for the whole task), and its size is bounded by a test.
async fn connection(
    client: TcpStream,
    peer: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    let Shared {
        name,
        settings,
        ref stats,
        ref drain,
    } = *shared;
    let _active = ActiveGuard::new(stats);
    let mut cut = std::pin::pin!(drain.clone().cut());
    if let Some(Err(e)) = settings
        .keepalive
        .map(|k| socket::set_keepalive(&client, &k))
    {
        tracing::debug!(relay = name, %peer, error = %e, "cannot set TCP keepalive on the client socket");
    }
    let connect = tokio::time::timeout(settings.connect_timeout, TcpStream::connect(target));
    let connected = tokio::select! {
        r = connect => r,
        () = &mut cut => {
            socket::abort(client);
            return;
        }
    };
    let mut upstream = match connected {
        Ok(Ok(s)) => {
            if let Some(Err(e)) = settings.keepalive.map(|k| socket::set_keepalive(&s, &k)) {
                tracing::debug!(relay = name, %peer, %target, error = %e, "cannot set TCP keepalive on the upstream socket");
            }
            s
        }
        Ok(Err(e)) => {
            let why = if socket::out_of_fds(&e) {
                format!(
                    "{e}: vmpod is out of file descriptors (raise RLIMIT_NOFILE or lower max_connections)"
                )
            } else {
                e.to_string()
            };
            upstream_failed(name, stats, peer, target, &why);
            socket::abort(client);
            return;
        }
        Err(_) => {
            let why = format!("no answer within {:?}", settings.connect_timeout);
            upstream_failed(name, stats, peer, target, &why);
            socket::abort(client);
            return;
        }
    };
    if let Some(version) = settings.proxy_protocol
        && let Err(e) = Box::pin(send_proxy_header(version, &client, peer, &mut upstream)).await
    {
        RelayStats::add(&stats.upstream_failed, 1);
        tracing::debug!(relay = name, %peer, %target, error = %e, "cannot send the PROXY protocol header");
        socket::abort(client);
        socket::abort(upstream);
        return;
    }
    tracing::debug!(relay = name, %peer, %target, "relaying");
    let (timeouts, out, inn) = (settings.timeouts, &stats.bytes_out, &stats.bytes_in);
    let ended = match settings.accel.then(super::accel::Accel::shared).flatten() {
        // Boxed: the accelerated pump's state is large and rare, and an idle
        // connection's future must stay small on the common path.
        Some(a) => {
            Box::pin(super::accel::relay_until(
                &a, client, upstream, timeouts, out, inn, cut,
            ))
            .await
        }
        None => copy::relay_until(client, upstream, timeouts, out, inn, cut).await,
    };
    tracing::debug!(relay = name, %peer, %target, ?ended, "connection ended");
}

/// Counts a connection whose upstream (the guest, for ingress) refused or
/// did not answer, and says so in the log, at most once per interval: a
/// guest whose service is down shows as one line, not one per client.
fn upstream_failed(
    name: &'static str,
    stats: &RelayStats,
    peer: SocketAddr,
    target: SocketAddr,
    why: &str,
) {
    RelayStats::add(&stats.upstream_failed, 1);
    match stats.upstream_log.hit() {
        Some(since_last_line) => tracing::warn!(
            relay = name,
            %peer,
            %target,
            port = target.port(),
            reason = why,
            since_last_line,
            "cannot connect upstream: the client is reset"
        ),
        None => {
            tracing::debug!(relay = name, %peer, %target, reason = why, "upstream connect failed")
        }
    }
}

/// The header goes out alone, before the pump forwards any client byte.
async fn send_proxy_header(
    version: ProxyProtocol,
    client: &TcpStream,
    peer: SocketAddr,
    upstream: &mut TcpStream,
) -> std::io::Result<()> {
    let local = client.local_addr()?;
    upstream
        .write_all(&proxy_protocol::header(version, peer, local))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle relayed connection costs is mostly this future (plus
    /// tokio's task header and two socket registrations): issue 17's
    /// target is 3 KiB per connection in all, measured by
    /// `deploy/bench/relay.sh --measure memory`. The bound is for a debug
    /// build, whose futures are the larger.
    #[tokio::test]
    async fn an_idle_connection_task_stays_small() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let settings = crate::relay::standalone::default_settings(10);
        let (_drainer, drain) = super::super::drain::Drainer::new();
        let shared = Arc::new(Shared {
            name: "test",
            settings,
            stats: Arc::new(RelayStats::default()),
            drain,
        });
        let permit = settings.limit().try_acquire_owned().unwrap();
        let task = connection(client, addr, addr, shared, permit);
        let size = std::mem::size_of_val(&task);
        eprintln!("connection future: {size} bytes");
        assert!(size <= 1600, "a connection's future is {size} bytes");
    }
}
