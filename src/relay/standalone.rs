//! One relay on its own, outside a pod: `vmpod relay ingress|egress`. It
//! runs the production accept loop (`proxy::serve`) and byte pump with the
//! same destinations as `vmpod run`, so a user or a benchmark can measure
//! the relay alone. The rules that feed an egress listener (TPROXY or
//! REDIRECT) are the caller's.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use super::copy::Timeouts;
use super::drain::{self, Drainer};
use super::egress::EgressDestination;
use super::ingress::IngressDestination;
use super::proxy::{self, Destination, ProxySettings};
use super::running::log_drain;
use super::socket::{self, Keepalive};
use super::stats::RelayStats;
use super::udp_egress::{self, UdpEgressSettings, UdpEgressStats};
use crate::config::{Egress, EgressMode};

/// Which relay to run, and where.
#[derive(Clone, Debug)]
pub enum Standalone {
    /// Forwards every connection accepted on `listen` to `to`.
    Ingress { listen: SocketAddr, to: SocketAddr },
    /// Relays connections diverted to `listen` to their original
    /// destination (`mode` is `Tproxy` or `Redirect`).
    Egress {
        listen: SocketAddr,
        mode: EgressMode,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("the egress relay runs in mode tproxy or redirect; kernel mode has no relay")]
    KernelMode,
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot watch SIGTERM/SIGINT: {0}")]
    Signals(std::io::Error),
}

/// Settings as `vmpod run` has them by default, with `max_connections`;
/// `vmpod relay` flags override each field.
pub fn default_settings(max_connections: u32) -> ProxySettings {
    let defaults = Egress::default();
    ProxySettings {
        connect_timeout: defaults.connect_timeout.0,
        timeouts: Timeouts {
            idle: defaults.idle_timeout.0,
            half_closed: defaults.half_close_timeout.0,
        },
        max_connections,
        proxy_protocol: None,
        keepalive: Some(Keepalive::DEFAULT),
        accel: false,
    }
}

/// Runs `relay` with `settings` until SIGTERM or SIGINT, then drains for up
/// to `drain_timeout`; its counters at the end.
pub fn run(
    relay: Standalone,
    settings: ProxySettings,
    drain_timeout: Duration,
) -> Result<Arc<RelayStats>, StandaloneError> {
    // The runtime `vmpod run` has. Measured on 2 cores, a current-thread
    // runtime, or one per core with SO_REUSEPORT listeners, moved neither
    // throughput nor connection rate: the time is in the kernel's TCP.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(StandaloneError::Runtime)?;
    runtime.block_on(serve(relay, settings, drain_timeout))
}

async fn serve(
    relay: Standalone,
    settings: ProxySettings,
    drain_timeout: Duration,
) -> Result<Arc<RelayStats>, StandaloneError> {
    let (name, listen, transparent, dest): (&'static str, _, _, Arc<dyn Destination>) = match relay
    {
        Standalone::Ingress { listen, to } => (
            "ingress",
            listen,
            false,
            Arc::new(IngressDestination { guest: to }),
        ),
        Standalone::Egress {
            mode: EgressMode::Kernel,
            ..
        } => {
            return Err(StandaloneError::KernelMode);
        }
        Standalone::Egress { listen, mode } => (
            "egress",
            listen,
            mode == EgressMode::Tproxy,
            Arc::new(EgressDestination {
                mode,
                listen,
                guarded_ports: BTreeSet::new(),
                // The standalone relay has no config: no deny list.
                deny: Vec::new(),
            }),
        ),
    };
    let listener =
        socket::tcp_listener(listen, transparent).map_err(|source| StandaloneError::Listen {
            addr: listen,
            source,
        })?;
    let mut term = signal(SignalKind::terminate()).map_err(StandaloneError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(StandaloneError::Signals)?;
    let stats = Arc::new(RelayStats::default());
    let (drainer, drain) = Drainer::new();
    tracing::info!(relay = name, addr = %listen, config = ?relay, ?settings, "listening");
    let accepting = tokio::spawn(proxy::serve(
        name,
        listener,
        dest,
        settings,
        settings.limit(),
        stats.clone(),
        drain,
    ));
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let report = drain::drain(
        &drainer,
        vec![accepting],
        std::slice::from_ref(&stats),
        drain_timeout,
    )
    .await;
    log_drain(&report, drain_timeout);
    Ok(stats)
}

/// Runs the UDP egress relay on `listen` (fed by the caller's TPROXY rule
/// and policy route) until SIGTERM or SIGINT; its counters at the end.
pub fn run_udp_egress(
    listen: SocketAddr,
    settings: UdpEgressSettings,
) -> Result<Arc<UdpEgressStats>, StandaloneError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(StandaloneError::Runtime)?;
    runtime.block_on(async move {
        let listener =
            socket::udp_transparent_listener(listen).map_err(|source| StandaloneError::Listen {
                addr: listen,
                source,
            })?;
        let mut term = signal(SignalKind::terminate()).map_err(StandaloneError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(StandaloneError::Signals)?;
        let stats = Arc::new(UdpEgressStats::default());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tracing::info!(relay = "udp-egress", addr = %listen, ?settings, "listening");
        let serving = tokio::spawn(udp_egress::serve(
            listener,
            settings,
            stats.clone(),
            stopped,
        ));
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = stop.send(true);
        let _ = serving.await;
        Ok(stats)
    })
}
