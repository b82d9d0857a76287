//! Starting the relays a config asks for, and stopping them together.

use std::collections::HashSet;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::copy::Timeouts;
use super::egress::EgressDestination;
use super::ingress::{self, IngressDestination};
use super::proxy::{self, ProxySettings};
use super::socket;
use super::stats::RelayStats;
use super::udp::{self, UdpSettings};
use crate::config::{EgressMode, Ingress, Protocol, VmConfig};

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
    /// One per ingress port vmpod forwards itself (`mode: proxy`), TCP and
    /// UDP, by name; `dnat` ports are the kernel's and have no counters here.
    pub ingress: Vec<(String, Arc<RelayStats>)>,
}

/// A relay whose sockets are open, to be started once all of them are.
type Pending = Pin<Box<dyn Future<Output = ()> + Send>>;

fn settings(config: &VmConfig) -> ProxySettings {
    let e = &config.network.egress;
    ProxySettings {
        connect_timeout: e.connect_timeout.0,
        timeouts: Timeouts {
            idle: e.idle_timeout.0,
            half_closed: e.half_close_timeout.0,
        },
        max_connections: e.max_connections,
        proxy_protocol: None,
    }
}

/// An ingress port's own limit and PROXY header; timeouts as egress.
fn ingress_settings(egress: ProxySettings, ing: &Ingress) -> ProxySettings {
    ProxySettings {
        max_connections: ing.max_connections(),
        proxy_protocol: ing.proxy_protocol,
        ..egress
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
        let mut pending: Vec<Pending> = Vec::new();
        let settings = settings(config);
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
            tracing::info!(relay = "egress", %addr, "listening");
            pending.push(Box::pin(proxy::serve(
                "egress",
                listener,
                dest,
                settings,
                settings.limit(),
                egress.clone(),
                stop_rx.clone(),
            )));
        }
        let mut ingress = Vec::new();
        let ips = ingress::listen_ips();
        for (i, ing) in net.ingress.iter().enumerate() {
            if !ing.is_proxied() {
                continue;
            }
            let stats = Arc::new(RelayStats::default());
            ingress.push((ing.name.clone(), stats.clone()));
            let field = format!("network.ingress[{i}].port");
            let guest = SocketAddr::new(net.guest_ip, ing.guest_port());
            match ing.protocol {
                Protocol::Tcp => {
                    let settings = ingress_settings(settings, ing);
                    // One budget for the port, whichever family a client uses.
                    let limit = settings.limit();
                    let dest: Arc<dyn proxy::Destination> = Arc::new(IngressDestination { guest });
                    for ip in &ips {
                        let addr = SocketAddr::new(*ip, ing.port);
                        let listener =
                            socket::tcp_listener(addr, false).map_err(|source| ListenError {
                                addr,
                                field: field.clone(),
                                source,
                            })?;
                        tracing::info!(relay = "ingress", name = %ing.name, %addr, %guest, proxy_protocol = ?ing.proxy_protocol, "listening");
                        pending.push(Box::pin(proxy::serve(
                            "ingress",
                            listener,
                            dest.clone(),
                            settings,
                            limit.clone(),
                            stats.clone(),
                            stop_rx.clone(),
                        )));
                    }
                }
                Protocol::Udp => {
                    let mut sockets = Vec::new();
                    for ip in &ips {
                        let addr = SocketAddr::new(*ip, ing.port);
                        sockets.push(socket::udp_socket(addr).map_err(|source| ListenError {
                            addr,
                            field: field.clone(),
                            source,
                        })?);
                        tracing::info!(relay = "ingress", name = %ing.name, %addr, %guest, protocol = "udp", "listening");
                    }
                    let settings = UdpSettings {
                        guest,
                        idle: ing.udp_idle_timeout(),
                        max_sessions: ing.max_sessions(),
                    };
                    pending.push(Box::pin(udp::serve(
                        ing.name.clone(),
                        sockets,
                        settings,
                        stats,
                        stop_rx.clone(),
                    )));
                }
            }
        }
        tasks.extend(pending.into_iter().map(tokio::spawn));
        Ok(Relays {
            stop,
            tasks,
            egress,
            ingress,
        })
    }

    /// Closes the listeners and ends UDP sessions; TCP connections in flight
    /// end with the process.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
