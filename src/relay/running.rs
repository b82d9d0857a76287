//! Starting the relays a config asks for, and stopping them together.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::drain::{self, DrainReport, Drainer};
use super::egress::EgressDestination;
use super::ingress::{self, IngressDestination};
use super::proxy;
use super::socket;
use super::spec::{IngressRelay, RelayPlan};
use super::stats::RelayStats;
use super::udp;
use super::udp_egress::{self, UdpEgressStats};
use crate::config::EgressMode;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for {field}: {source}")]
pub struct ListenError {
    pub addr: SocketAddr,
    pub field: String,
    pub source: std::io::Error,
}

pub struct Relays {
    drainer: Drainer,
    /// Ends the UDP relays (their sessions have nothing to drain).
    stop_udp: watch::Sender<bool>,
    accept_loops: Vec<JoinHandle<()>>,
    udp_tasks: Vec<JoinHandle<()>>,
    /// The counters of every TCP relay: what a drain waits on.
    tcp: Vec<Arc<RelayStats>>,
    pub egress: Arc<RelayStats>,
    /// The UDP egress relay's counters, when it runs (`udp: relay`).
    pub udp_egress: Option<Arc<UdpEgressStats>>,
    /// One per ingress port vmpod forwards itself (`mode: proxy`), TCP and
    /// UDP, by name; `dnat` ports are the kernel's and have no counters here.
    pub ingress: Vec<(String, Arc<RelayStats>)>,
}

/// A relay whose sockets are open, to be started once all of them are.
type Pending = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Relays {
    /// Opens every listener of `plan` first, so a busy port fails before
    /// any relay runs. An ingress port's IPv6 address is skipped when the
    /// pod has no IPv6.
    pub fn start(plan: &RelayPlan) -> Result<Relays, ListenError> {
        crate::fdlimit::warn_if_over_budget(&crate::fdlimit::needs(plan));
        let (stop_udp, stop_rx) = watch::channel(false);
        let (drainer, drain) = Drainer::new();
        let egress = Arc::new(RelayStats::default());
        let mut tcp = vec![egress.clone()];
        let mut pending: Vec<Pending> = Vec::new();
        let mut pending_udp: Vec<Pending> = Vec::new();
        if let Some(spec) = &plan.egress {
            // One budget, whichever family the guest uses.
            let limit = spec.settings.limit();
            for addr in std::iter::once(spec.addr).chain(spec.addr6) {
                let listener = socket::tcp_listener(addr, spec.mode == EgressMode::Tproxy)
                    .map_err(|source| ListenError {
                        addr,
                        field: "network.egress.listen_port".into(),
                        source,
                    })?;
                let dest = Arc::new(EgressDestination {
                    mode: spec.mode,
                    listen: addr,
                    guarded_ports: spec.guarded_ports.clone(),
                    deny: spec.deny.clone(),
                });
                tracing::info!(relay = "egress", %addr, "listening");
                pending.push(Box::pin(proxy::serve(
                    "egress",
                    listener,
                    dest,
                    spec.settings,
                    limit.clone(),
                    egress.clone(),
                    drain.clone(),
                )));
            }
        }
        let mut udp_egress = None;
        if let Some(spec) = &plan.udp_egress {
            // One set of counters for both families.
            let stats = Arc::new(UdpEgressStats::default());
            udp_egress = Some(stats.clone());
            for addr in std::iter::once(spec.addr).chain(spec.addr6) {
                let listener =
                    socket::udp_transparent_listener(addr).map_err(|source| ListenError {
                        addr,
                        field: "network.egress.listen_port".into(),
                        source,
                    })?;
                tracing::info!(relay = "egress", %addr, protocol = "udp", "listening");
                pending_udp.push(Box::pin(udp_egress::serve(
                    listener,
                    spec.settings,
                    stats.clone(),
                    stop_rx.clone(),
                )));
            }
        }
        let mut ingress = Vec::new();
        let ipv6 = ingress::pod_has_ipv6();
        for spec in &plan.ingress {
            let stats = Arc::new(RelayStats::default());
            ingress.push((spec.name.clone(), stats.clone()));
            let addrs = spec.addrs.iter().filter(|a| ipv6 || a.is_ipv4());
            let listen_error = |addr, source| ListenError {
                addr,
                field: spec.field.clone(),
                source,
            };
            let guest = spec.guest;
            match &spec.relay {
                IngressRelay::Tcp(settings) => {
                    tcp.push(stats.clone());
                    // One budget for the port, whichever family a client uses.
                    let limit = settings.limit();
                    let dest: Arc<dyn proxy::Destination> = Arc::new(IngressDestination { guest });
                    for &addr in addrs {
                        let listener = socket::tcp_listener(addr, false)
                            .map_err(|source| listen_error(addr, source))?;
                        tracing::info!(relay = "ingress", name = %spec.name, %addr, %guest, proxy_protocol = ?settings.proxy_protocol, "listening");
                        pending.push(Box::pin(proxy::serve(
                            "ingress",
                            listener,
                            dest.clone(),
                            *settings,
                            limit.clone(),
                            stats.clone(),
                            drain.clone(),
                        )));
                    }
                }
                IngressRelay::Udp(settings) => {
                    let mut sockets = Vec::new();
                    for &addr in addrs {
                        sockets.push(
                            socket::udp_socket(addr)
                                .map_err(|source| listen_error(addr, source))?,
                        );
                        tracing::info!(relay = "ingress", name = %spec.name, %addr, %guest, protocol = "udp", "listening");
                    }
                    pending_udp.push(Box::pin(udp::serve(
                        spec.name.clone(),
                        sockets,
                        *settings,
                        stats,
                        stop_rx.clone(),
                    )));
                }
            }
        }
        Ok(Relays {
            drainer,
            stop_udp,
            accept_loops: pending.into_iter().map(tokio::spawn).collect(),
            udp_tasks: pending_udp.into_iter().map(tokio::spawn).collect(),
            tcp,
            egress,
            udp_egress,
            ingress,
        })
    }

    /// How many of the relays' tasks have ended (a panic, say): each is a
    /// listener that no longer accepts, which the supervisor repairs.
    pub fn ended(&self) -> usize {
        self.accept_loops
            .iter()
            .chain(&self.udp_tasks)
            .filter(|t| t.is_finished())
            .count()
    }

    /// Ends one relay's task, as a panic in it would.
    #[cfg(test)]
    pub(crate) fn kill_one(&self) {
        if let Some(t) = self.accept_loops.first().or(self.udp_tasks.first()) {
            t.abort();
        }
    }

    /// Stops accepting (listeners close), ends UDP sessions, lets TCP
    /// connections in flight finish for up to `drain_timeout`, then resets
    /// (RST) those left. Logs and returns how many drained and were reset.
    pub async fn stop(self, drain_timeout: Duration) -> DrainReport {
        let _ = self.stop_udp.send(true);
        let report = drain::drain(&self.drainer, self.accept_loops, &self.tcp, drain_timeout).await;
        for t in self.udp_tasks {
            let _ = t.await;
        }
        log_drain(&report, drain_timeout);
        report
    }
}

/// One line at the end of a drain: warn when connections had to be reset.
pub fn log_drain(report: &DrainReport, timeout: Duration) {
    let ms = report.took.as_millis() as u64;
    if report.reset > 0 {
        tracing::warn!(
            in_flight = report.in_flight,
            drained = report.drained,
            reset = report.reset,
            ms,
            timeout_ms = timeout.as_millis() as u64,
            "relays stopped: connections still open at the drain timeout were reset"
        );
    } else {
        tracing::info!(
            in_flight = report.in_flight,
            drained = report.drained,
            reset = 0,
            ms,
            "relays stopped: every connection in flight drained"
        );
    }
}
