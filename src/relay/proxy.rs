//! The accept loop both relays share: a connection limit, a destination
//! chosen per connection, an upstream connect with a timeout, then the
//! byte pump. One connection's failure never touches another's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::copy::{self, Timeouts};
use super::proxy_protocol;
use super::socket;
use super::stats::{ActiveGuard, RelayStats};
use crate::config::ProxyProtocol;

#[derive(Clone, Copy, Debug)]
pub struct ProxySettings {
    pub connect_timeout: Duration,
    pub timeouts: Timeouts,
    pub max_connections: u32,
    /// A header for the upstream before the client's first byte.
    pub proxy_protocol: Option<ProxyProtocol>,
}

impl ProxySettings {
    /// The connection limit; listeners sharing it share one budget.
    pub fn limit(&self) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(self.max_connections as usize))
    }
}

/// Decides where an accepted connection goes, or refuses it (with why).
pub trait Destination: Send + Sync + 'static {
    fn destination(&self, client: &TcpStream) -> Result<SocketAddr, String>;
}

/// Serves `listener` until `shutdown` turns true, with at most `limit`
/// connections at once. Connections in flight are left to finish on their
/// own tasks.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    dest: Arc<dyn Destination>,
    settings: ProxySettings,
    limit: Arc<Semaphore>,
    stats: Arc<RelayStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (client, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(relay = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
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
        let stats = stats.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _active = ActiveGuard::new(&stats);
            handle(name, client, peer, target, settings, &stats).await;
        });
    }
}

async fn handle(
    name: &'static str,
    client: TcpStream,
    peer: SocketAddr,
    target: SocketAddr,
    settings: ProxySettings,
    stats: &RelayStats,
) {
    let mut upstream =
        match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(target)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                upstream_failed(name, stats, peer, target, &e.to_string());
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
        && let Err(e) = send_proxy_header(version, &client, peer, &mut upstream).await
    {
        RelayStats::add(&stats.upstream_failed, 1);
        tracing::debug!(relay = name, %peer, %target, error = %e, "cannot send the PROXY protocol header");
        socket::abort(client);
        socket::abort(upstream);
        return;
    }
    tracing::debug!(relay = name, %peer, %target, "relaying");
    let ended = copy::relay(
        client,
        upstream,
        settings.timeouts,
        &stats.bytes_out,
        &stats.bytes_in,
    )
    .await;
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
    match stats.upstream_log.admit(std::time::Instant::now()) {
        Some(held_back) => tracing::warn!(
            relay = name,
            %peer,
            %target,
            port = target.port(),
            reason = why,
            similar_not_logged = held_back,
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
