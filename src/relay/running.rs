//! Starting the relays a config asks for, and stopping them together.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::copy::Timeouts;
use super::egress::EgressDestination;
use super::ingress::IngressDestination;
use super::proxy::{self, ProxySettings};
use super::socket;
use super::stats::RelayStats;
use crate::config::{EgressMode, Protocol, VmConfig};

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for {field}: {source}")]
pub struct ListenError {
    pub addr: SocketAddr,
    pub field: String,
    pub source: std::io::Error,
}

pub struct Relays {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    pub egress: Arc<RelayStats>,
    pub ingress: Vec<(String, Arc<RelayStats>)>,
}

fn settings(config: &VmConfig) -> ProxySettings {
    let e = &config.network.egress;
    ProxySettings {
        connect_timeout: e.connect_timeout.0,
        timeouts: Timeouts {
            idle: e.idle_timeout.0,
            half_closed: e.half_close_timeout.0,
        },
        max_connections: e.max_connections,
    }
}

impl Relays {
    /// Opens every listener first, so a busy port fails before any relay runs.
    pub fn start(config: &VmConfig) -> Result<Relays, ListenError> {
        let (stop, stop_rx) = watch::channel(false);
        let v6 = config.network.gateway.addr().is_ipv6();
        let any: IpAddr = if v6 {
            [0u16; 8].into()
        } else {
            [0u8; 4].into()
        };
        let net = &config.network;
        let mut tasks = Vec::new();
        let egress = Arc::new(RelayStats::default());
        let mut pending = Vec::new();
        if net.egress.mode != EgressMode::Kernel {
            let addr = SocketAddr::new(any, net.egress.listen_port);
            let listener = socket::tcp_listener(addr, net.egress.mode == EgressMode::Tproxy)
                .map_err(|source| ListenError {
                    addr,
                    field: "network.egress.listen_port".into(),
                    source,
                })?;
            let mut guarded: HashSet<u16> = net.ingress.iter().map(|i| i.port).collect();
            guarded.insert(config.health.port);
            let dest = Arc::new(EgressDestination {
                mode: net.egress.mode,
                listen: addr,
                guarded_ports: guarded,
            });
            pending.push((
                "egress",
                listener,
                dest as Arc<dyn proxy::Destination>,
                egress.clone(),
            ));
        }
        let mut ingress = Vec::new();
        for (i, ing) in net.ingress.iter().enumerate() {
            if ing.protocol != Protocol::Tcp {
                tracing::warn!(
                    port = ing.port,
                    "UDP ingress is not implemented yet; skipping"
                );
                continue;
            }
            let addr = SocketAddr::new(any, ing.port);
            let listener = socket::tcp_listener(addr, false).map_err(|source| ListenError {
                addr,
                field: format!("network.ingress[{i}].port"),
                source,
            })?;
            let stats = Arc::new(RelayStats::default());
            ingress.push((ing.name.clone(), stats.clone()));
            let dest = Arc::new(IngressDestination {
                guest: SocketAddr::new(net.guest_ip, ing.guest_port()),
            });
            pending.push((
                "ingress",
                listener,
                dest as Arc<dyn proxy::Destination>,
                stats,
            ));
        }
        let settings = settings(config);
        for (name, listener, dest, stats) in pending {
            tracing::info!(relay = name, addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "listening");
            tasks.push(tokio::spawn(proxy::serve(
                name,
                listener,
                dest,
                settings,
                stats,
                stop_rx.clone(),
            )));
        }
        Ok(Relays {
            stop,
            tasks,
            egress,
            ingress,
        })
    }

    /// Closes the listeners; connections in flight end with the process.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
