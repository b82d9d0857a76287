//! `/metrics`: everything [`Health`] knows, the relays' counters and the
//! process's standard metrics, encoded by prometheus-client in the
//! Prometheus text format (or OpenMetrics when the scraper asks for it).
//!
//! Values are read at scrape time from the atomics the supervisor and the
//! relays already keep, so nothing is counted twice and a scrape never
//! waits on the supervisor.

use std::fmt;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::guest_probe::Verdict;
use super::procfs::{self, ProcessStats};
use super::readiness::{STATE_NAMES, state_name};
use super::{Health, ProbeRecord, RelayHandle, ServiceHandles, lock};
use crate::dhcp::DhcpStats;
use crate::dns::DnsStats;
use crate::ipv6::stats::{self as v6stats, Dhcpv6Stats, RaStats};
use crate::libvirt::agent::GuestInfo;
use crate::relay::stats::RelayStats;
use crate::relay::udp_egress::{DropReason, UdpEgressStats};
use std::sync::Arc;

/// The content type of the Prometheus text format 0.0.4.
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// The content type of OpenMetrics text 1.0.0.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Encodes the current metrics; `openmetrics` picks the format.
pub fn encode(health: &Health, openmetrics: bool) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot::take(health)));
    let mut out = String::new();
    let result = if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, &registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
    };
    if let Err(e) = result {
        // Writing to a String cannot fail; a collector bug could.
        tracing::error!(error = %e, "cannot encode metrics");
    }
    out
}

/// The values of one scrape, copied out of [`Health`] so that encoding
/// holds no lock.
#[derive(Debug)]
struct Snapshot {
    domain: String,
    egress_mode: &'static str,
    state: &'static str,
    ready: bool,
    ready_after_seconds: Option<f64>,
    uptime_seconds: f64,
    heartbeat_age_seconds: f64,
    guest_restarts: u64,
    daemon_restarts: Vec<(String, u64)>,
    repairs: Vec<(&'static str, u64)>,
    drained: u64,
    drain_reset: u64,
    relays: Vec<RelayHandle>,
    udp_egress: Option<Arc<UdpEgressStats>>,
    services: Option<ServiceHandles>,
    process: ProcessStats,
    probes: Vec<ProbeRecord>,
    liveness_failures: u64,
    agent: Option<GuestInfo>,
}

impl Snapshot {
    fn take(h: &Health) -> Snapshot {
        let ready = h.readiness().is_empty();
        let guest = lock(&h.reported).guest;
        Snapshot {
            domain: h.domain.clone(),
            egress_mode: h.egress_mode.as_str(),
            state: guest.map_or("unknown", state_name),
            ready,
            ready_after_seconds: h.ready_after.get().map(|d| d.as_secs_f64()),
            uptime_seconds: h.started.elapsed().as_secs_f64(),
            heartbeat_age_seconds: h.heartbeat_age().as_secs_f64(),
            guest_restarts: h.guest_restarts.load(Ordering::Relaxed),
            daemon_restarts: lock(&h.daemon_restarts)
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            repairs: lock(&h.repairs)
                .iter()
                .map(|(piece, n)| (piece.as_str(), *n))
                .collect(),
            drained: h.drained.load(Ordering::Relaxed),
            drain_reset: h.drain_reset.load(Ordering::Relaxed),
            relays: lock(&h.relays).clone(),
            udp_egress: lock(&h.udp_egress).clone(),
            services: lock(&h.services).clone(),
            process: procfs::process_stats(),
            probes: lock(&h.guest_probes).values().cloned().collect(),
            liveness_failures: h.liveness_restarts.load(Ordering::Relaxed),
            agent: lock(&h.agent).clone(),
        }
    }
}

type Labels = Vec<(&'static str, String)>;

/// Writes one metric family: a descriptor and its samples.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), fmt::Error> {
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge<N>(enc: &mut DescriptorEncoder, name: &str, help: &str, value: N) -> Result<(), fmt::Error>
where
    ConstGauge<N>: EncodeMetric,
{
    family(
        enc,
        name,
        help,
        MetricType::Gauge,
        [(Labels::new(), ConstGauge::new(value))],
    )
}

fn counter<N>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: N,
) -> Result<(), fmt::Error>
where
    ConstCounter<N>: EncodeMetric,
{
    family(
        enc,
        name,
        help,
        MetricType::Counter,
        [(Labels::new(), ConstCounter::new(value))],
    )
}

fn relay_labels(r: &RelayHandle) -> Labels {
    vec![
        ("relay", r.kind.to_string()),
        ("name", r.name.clone()),
        ("port", r.port.to_string()),
    ]
}

impl Snapshot {
    fn relay_counter(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: impl Fn(&RelayStats) -> u64,
    ) -> Result<(), fmt::Error> {
        family(
            enc,
            name,
            help,
            MetricType::Counter,
            self.relays
                .iter()
                .map(|r| (relay_labels(r), ConstCounter::new(value(&r.stats)))),
        )
    }
}

impl Snapshot {
    /// The guest probes: results, time spent, verdict; and the restarts a
    /// failing liveness probe caused.
    fn probe_metrics(&self, e: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
        let probe = |r: &ProbeRecord| ("probe", r.spec.kind.as_str().to_string());
        family(
            e,
            "vmpod_guest_probe_results",
            "Guest probe checks by probe (readiness, liveness) and result (pass, miss).",
            MetricType::Counter,
            self.probes.iter().flat_map(|r| {
                [("pass", r.passes), ("miss", r.misses)].map(|(result, n)| {
                    (
                        vec![probe(r), ("result", result.to_string())],
                        ConstCounter::new(n),
                    )
                })
            }),
        )?;
        family(
            e,
            "vmpod_guest_probe_seconds",
            "Time spent in guest probe checks (divide by the results for the mean latency).",
            MetricType::Counter,
            self.probes
                .iter()
                .map(|r| (vec![probe(r)], ConstCounter::new(r.seconds_total))),
        )?;
        family(
            e,
            "vmpod_guest_probe_last_seconds",
            "How long the last guest probe check took.",
            MetricType::Gauge,
            self.probes
                .iter()
                .map(|r| (vec![probe(r)], ConstGauge::new(r.last_seconds))),
        )?;
        family(
            e,
            "vmpod_guest_probe_passing",
            "1 while the guest probe passes (its success threshold reached, not failed since).",
            MetricType::Gauge,
            self.probes.iter().map(|r| {
                (
                    vec![probe(r)],
                    ConstGauge::new(i64::from(r.state.verdict == Verdict::Passing)),
                )
            }),
        )?;
        counter(
            e,
            "vmpod_guest_liveness_failures",
            "Times the guest's liveness probe failed and the guest was destroyed for it.",
            self.liveness_failures,
        )
    }

    /// What the qemu guest agent reports, from the guest: its values are
    /// bounded and stripped of control characters when parsed.
    fn encode_agent(&self, e: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
        gauge(
            e,
            "vmpod_guest_agent_up",
            "1 when the qemu guest agent answered the last poll.",
            i64::from(self.agent.is_some()),
        )?;
        let Some(agent) = &self.agent else {
            return Ok(());
        };
        family(
            e,
            "vmpod_guest_info",
            "The guest's host name, OS and kernel as its guest agent reports them.",
            MetricType::Gauge,
            [(
                vec![
                    ("hostname", agent.hostname.clone()),
                    ("os", agent.os.clone()),
                    ("kernel", agent.kernel.clone()),
                ],
                ConstGauge::new(1i64),
            )],
        )?;
        family(
            e,
            "vmpod_guest_address",
            "An address of the guest's interfaces as its guest agent reports it.",
            MetricType::Gauge,
            agent.addresses.iter().map(|a| {
                (
                    vec![
                        ("interface", a.interface.clone()),
                        ("address", a.ip.to_string()),
                        ("prefix", a.prefix.to_string()),
                    ],
                    ConstGauge::new(1i64),
                )
            }),
        )
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let e = &mut enc;
        let info =
            e.encode_descriptor("vmpod", "The VM this vmpod runs.", None, MetricType::Info)?;
        Info::new(vec![
            ("domain", self.domain.clone()),
            ("egress_mode", self.egress_mode.to_string()),
            ("version", env!("CARGO_PKG_VERSION").to_string()),
        ])
        .encode(info)?;
        family(
            e,
            "vmpod_domain_state",
            "The guest's libvirt state: 1 for the current state, 0 for the others.",
            MetricType::Gauge,
            STATE_NAMES.iter().map(|s| {
                (
                    vec![("state", s.to_string())],
                    ConstGauge::new(i64::from(*s == self.state)),
                )
            }),
        )?;
        self.encode_agent(e)?;
        gauge(
            e,
            "vmpod_ready",
            "1 when every readiness check passes.",
            i64::from(self.ready),
        )?;
        if let Some(s) = self.ready_after_seconds {
            gauge(
                e,
                "vmpod_start_to_ready_seconds",
                "Seconds from the supervisor's start to the first time every readiness check passed.",
                s,
            )?;
        }
        gauge(
            e,
            "vmpod_uptime_seconds",
            "Seconds since the supervisor started.",
            self.uptime_seconds,
        )?;
        gauge(
            e,
            "vmpod_heartbeat_age_seconds",
            "Seconds since the watch loop last ran; liveness fails past 30.",
            self.heartbeat_age_seconds,
        )?;
        counter(
            e,
            "vmpod_guest_restarts",
            "Times the guest was restarted after it stopped.",
            self.guest_restarts,
        )?;
        self.probe_metrics(e)?;
        family(
            e,
            "vmpod_daemon_restarts",
            "Times a supervised daemon was restarted after it died.",
            MetricType::Counter,
            self.daemon_restarts
                .iter()
                .map(|(c, n)| (vec![("component", c.clone())], ConstCounter::new(*n))),
        )?;
        family(
            e,
            "vmpod_repairs",
            "Repairs of a piece vmpod owns after someone changed or removed it (one per change undone).",
            MetricType::Counter,
            self.repairs
                .iter()
                .map(|(p, n)| (vec![("piece", p.to_string())], ConstCounter::new(*n))),
        )?;
        counter(
            e,
            "vmpod_relay_drained",
            "Relayed connections that ended on their own within lifecycle.drain_timeout at shutdown.",
            self.drained,
        )?;
        counter(
            e,
            "vmpod_relay_reset_at_shutdown",
            "Relayed connections still open at the end of the drain, reset.",
            self.drain_reset,
        )?;
        self.relay_counter(
            e,
            "vmpod_relay_connections_accepted",
            "Connections the relay accepted.",
            |s| RelayStats::get(&s.accepted),
        )?;
        family(
            e,
            "vmpod_relay_connections_active",
            "Connections the relay carries now.",
            MetricType::Gauge,
            self.relays.iter().map(|r| {
                (
                    relay_labels(r),
                    ConstGauge::new(RelayStats::get(&r.stats.active) as i64),
                )
            }),
        )?;
        self.relay_counter(
            e,
            "vmpod_relay_connections_refused",
            "Connections the relay reset without relaying (limit reached, loop guard, no destination).",
            |s| RelayStats::get(&s.refused),
        )?;
        self.relay_counter(
            e,
            "vmpod_relay_upstream_failures",
            "Connections whose upstream could not be reached.",
            |s| RelayStats::get(&s.upstream_failed),
        )?;
        self.relay_counter(
            e,
            "vmpod_relay_sessions_expired",
            "UDP sessions ended by their idle timeout (always 0 for TCP relays).",
            |s| RelayStats::get(&s.expired),
        )?;
        family(
            e,
            "vmpod_relay_bytes",
            "Bytes relayed: client_to_upstream is from the side that connected (the guest for egress, the peer for ingress).",
            MetricType::Counter,
            self.relays.iter().flat_map(|r| {
                [
                    ("client_to_upstream", RelayStats::get(&r.stats.bytes_out)),
                    ("upstream_to_client", RelayStats::get(&r.stats.bytes_in)),
                ]
                .map(|(direction, n)| {
                    let mut labels = relay_labels(r);
                    labels.push(("direction", direction.to_string()));
                    (labels, ConstCounter::new(n))
                })
            }),
        )?;
        if let Some(u) = &self.udp_egress {
            udp_egress_metrics(e, u)?;
        }
        if let Some(services) = &self.services {
            if let Some(d) = &services.dhcp {
                dhcp_metrics(e, d)?;
            }
            if let Some(d) = &services.dns {
                dns_metrics(e, d)?;
            }
            if let Some(d) = &services.dhcpv6 {
                dhcpv6_metrics(e, d)?;
            }
            if let Some(r) = &services.ra {
                ra_metrics(e, r)?;
            }
        }
        let p = &self.process;
        gauge(
            e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            p.resident_bytes as i64,
        )?;
        gauge(
            e,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            p.virtual_bytes as i64,
        )?;
        gauge(
            e,
            "process_open_fds",
            "Number of open file descriptors.",
            p.open_fds as i64,
        )?;
        gauge(
            e,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            p.max_fds as i64,
        )?;
        gauge(
            e,
            "process_threads",
            "Number of OS threads.",
            p.threads as i64,
        )?;
        counter(
            e,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        )?;
        gauge(
            e,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        )?;
        Ok(())
    }
}

fn labelled(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    samples: &[(&str, u64)],
) -> Result<(), fmt::Error> {
    family(
        enc,
        name,
        help,
        MetricType::Counter,
        samples
            .iter()
            .map(|(v, n)| (vec![(label, v.to_string())], ConstCounter::new(*n))),
    )
}

fn udp_egress_metrics(e: &mut DescriptorEncoder, u: &UdpEgressStats) -> Result<(), fmt::Error> {
    let get = UdpEgressStats::get;
    gauge(
        e,
        "vmpod_udp_egress_sessions_active",
        "UDP egress sessions (guest address, original destination) open now.",
        get(&u.sessions_active) as i64,
    )?;
    counter(
        e,
        "vmpod_udp_egress_sessions_opened",
        "UDP egress sessions opened.",
        get(&u.sessions_opened),
    )?;
    counter(
        e,
        "vmpod_udp_egress_sessions_evicted",
        "UDP egress sessions ended by their idle timeout.",
        get(&u.sessions_evicted),
    )?;
    labelled(
        e,
        "vmpod_udp_egress_datagrams",
        "Datagrams relayed: out is from the guest, in is the answers to it.",
        "direction",
        &[("out", get(&u.datagrams_out)), ("in", get(&u.datagrams_in))],
    )?;
    labelled(
        e,
        "vmpod_udp_egress_bytes",
        "UDP payload bytes relayed: out is from the guest, in is the answers to it.",
        "direction",
        &[("out", get(&u.bytes_out)), ("in", get(&u.bytes_in))],
    )?;
    let drops: Vec<(&str, u64)> = DropReason::ALL
        .iter()
        .map(|r| (r.as_str(), u.dropped(*r)))
        .collect();
    labelled(
        e,
        "vmpod_udp_egress_dropped",
        "Datagrams of the guest or its peers not relayed, by reason.",
        "reason",
        &drops,
    )
}

fn dhcp_metrics(e: &mut DescriptorEncoder, d: &DhcpStats) -> Result<(), fmt::Error> {
    let get = DhcpStats::get;
    family(
        e,
        "vmpod_dhcp_packets",
        "DHCPv4 messages, by direction and type.",
        MetricType::Counter,
        [
            ("received", "discover", get(&d.discover)),
            ("received", "request", get(&d.request)),
            ("received", "decline", get(&d.decline)),
            ("received", "release", get(&d.release)),
            ("received", "inform", get(&d.inform)),
            ("received", "other", get(&d.other_type)),
            ("sent", "offer", get(&d.offer)),
            ("sent", "ack", get(&d.ack)),
            ("sent", "nak", get(&d.nak)),
        ]
        .map(|(dir, kind, n)| {
            (
                vec![("direction", dir.to_string()), ("type", kind.to_string())],
                ConstCounter::new(n),
            )
        }),
    )?;
    counter(
        e,
        "vmpod_dhcp_leases_granted",
        "DHCPv4 ACKs that granted or renewed the guest's lease.",
        get(&d.leases_granted),
    )?;
    labelled(
        e,
        "vmpod_dhcp_dropped",
        "DHCPv4 packets not answered, by reason.",
        "reason",
        &[
            ("malformed", get(&d.malformed)),
            ("foreign_mac", get(&d.foreign_mac)),
            ("send_error", get(&d.send_errors)),
        ],
    )
}

fn dhcpv6_metrics(e: &mut DescriptorEncoder, d: &Dhcpv6Stats) -> Result<(), fmt::Error> {
    let get = v6stats::get;
    family(
        e,
        "vmpod_dhcpv6_packets",
        "DHCPv6 messages, by direction and type.",
        MetricType::Counter,
        [
            ("received", "solicit", get(&d.solicit)),
            ("received", "request", get(&d.request)),
            ("received", "confirm", get(&d.confirm)),
            ("received", "renew", get(&d.renew)),
            ("received", "rebind", get(&d.rebind)),
            ("received", "release", get(&d.release)),
            ("received", "decline", get(&d.decline)),
            (
                "received",
                "information_request",
                get(&d.information_request),
            ),
            ("received", "other", get(&d.other_type)),
            ("sent", "advertise", get(&d.advertise_sent)),
            ("sent", "reply", get(&d.reply_sent)),
        ]
        .map(|(dir, kind, n)| {
            (
                vec![("direction", dir.to_string()), ("type", kind.to_string())],
                ConstCounter::new(n),
            )
        }),
    )?;
    counter(
        e,
        "vmpod_dhcpv6_leases_granted",
        "DHCPv6 REPLYs that bound or renewed the guest's IPv6 address.",
        get(&d.leases_granted),
    )?;
    labelled(
        e,
        "vmpod_dhcpv6_dropped",
        "DHCPv6 messages not answered, by reason.",
        "reason",
        &[
            ("malformed", get(&d.malformed)),
            ("other_client", get(&d.other_client)),
            ("other_server", get(&d.other_server)),
            ("send_error", get(&d.send_errors)),
        ],
    )
}

fn ra_metrics(e: &mut DescriptorEncoder, r: &RaStats) -> Result<(), fmt::Error> {
    let get = v6stats::get;
    labelled(
        e,
        "vmpod_ra_sent",
        "IPv6 Router Advertisements sent on the bridge, solicited or not.",
        "kind",
        &[
            (
                "solicited",
                get(&r.adverts_sent).saturating_sub(get(&r.unsolicited_sent)),
            ),
            ("unsolicited", get(&r.unsolicited_sent)),
        ],
    )?;
    counter(
        e,
        "vmpod_ra_solicitations",
        "Router Solicitations received from the guest.",
        get(&r.solicits_received),
    )?;
    labelled(
        e,
        "vmpod_ra_dropped",
        "Router Solicitations not answered, or RAs not sent, by reason.",
        "reason",
        &[
            ("malformed", get(&r.malformed)),
            ("rate_limited", get(&r.solicits_rate_limited)),
            ("send_error", get(&r.send_errors)),
        ],
    )
}

/// A histogram read from the forwarder's own buckets.
struct LatencyHistogram<'a>(&'a crate::dns::stats::LatencyHistogram);

impl EncodeMetric for LatencyHistogram<'_> {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), fmt::Error> {
        let h = self.0;
        let buckets: Vec<(f64, u64)> = h
            .cumulative()
            .into_iter()
            .map(|(ms, n)| (ms.map_or(f64::INFINITY, |ms| ms as f64 / 1000.0), n))
            .collect();
        let count = h.count.load(Ordering::Relaxed);
        encoder.encode_histogram::<Vec<(String, String)>>(h.sum_seconds(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn dns_metrics(e: &mut DescriptorEncoder, d: &DnsStats) -> Result<(), fmt::Error> {
    let get = crate::dns::stats::get;
    labelled(
        e,
        "vmpod_dns_queries",
        "DNS queries from the guest, by protocol.",
        "protocol",
        &[("udp", get(&d.udp_queries)), ("tcp", get(&d.tcp_queries))],
    )?;
    labelled(
        e,
        "vmpod_dns_answers",
        "Answers the guest got: from an upstream (truncated ones counted apart), or SERVFAIL when none answered.",
        "result",
        &[
            ("answer", get(&d.answers)),
            ("truncated", get(&d.truncated)),
            ("servfail", get(&d.failures)),
        ],
    )?;
    labelled(
        e,
        "vmpod_dns_failures",
        "Upstream attempts and guest queries that failed, by reason.",
        "reason",
        &[
            ("upstream_timeout", get(&d.timeouts)),
            ("upstream_error", get(&d.upstream_errors)),
            ("wrong_id", get(&d.mismatched)),
            ("busy", get(&d.dropped_busy)),
            ("malformed", get(&d.malformed)),
            ("tcp_rejected", get(&d.tcp_rejected)),
        ],
    )?;
    family(
        e,
        "vmpod_dns_query_duration_seconds",
        "Time from the guest's query to its answer (SERVFAIL included).",
        MetricType::Histogram,
        [(Labels::new(), LatencyHistogram(&d.latency))],
    )
}

/// Samples of a Prometheus text exposition: `(name, labels, value)`, where
/// `labels` is the text between the braces. Comments and malformed lines
/// are skipped.
pub fn parse_samples(text: &str) -> Vec<(String, String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            Some((name.to_string(), labels.to_string(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileChecks, load};
    use crate::libvirt::guest::GuestState;
    use std::sync::Arc;
    use std::time::Instant;

    fn health() -> Arc<Health> {
        let yaml = "name: m1\nboot:\n  kernel: /k\nnetwork:\n  ingress:\n    - name: http\n      port: 9080\n    - name: admin\n      port: 9443\n      guest_port: 443\n";
        let config = load("<test>", yaml, FileChecks::Warn).unwrap().config;
        Health::new(
            &crate::plan::Plan::build(&config, &crate::host::HostFacts::fixed(), None).unwrap(),
            Instant::now(),
        )
    }

    fn value(text: &str, name: &str, labels: &str) -> Option<f64> {
        parse_samples(text)
            .into_iter()
            .find(|(n, l, _)| n == name && l == labels)
            .map(|(_, _, v)| v)
    }

    #[test]
    fn supervisor_counters_and_state_are_exported() {
        let h = health();
        h.guest_state(GuestState::ShutOffFailed);
        h.guest_restarted();
        h.daemon_restarted("libvirtd");
        h.daemon_restarted("libvirtd");
        h.reconciled(&crate::net::setup::Restored {
            repairs: vec![crate::net::heal::Repair::new(
                crate::net::heal::Piece::Table,
                "inet vmpod",
                "the table missing",
                "applied it again",
            )],
            ..Default::default()
        });
        let text = encode(&h, false);
        assert_eq!(
            value(&text, "vmpod_guest_restarts_total", ""),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                "vmpod_daemon_restarts_total",
                "component=\"libvirtd\""
            ),
            Some(2.0)
        );
        assert_eq!(
            value(
                &text,
                "vmpod_daemon_restarts_total",
                "component=\"virtlogd\""
            ),
            Some(0.0)
        );
        assert_eq!(
            value(&text, "vmpod_repairs_total", "piece=\"table\""),
            Some(1.0)
        );
        for piece in crate::net::heal::Piece::ALL {
            assert!(
                value(&text, "vmpod_repairs_total", &format!("piece=\"{piece}\"")).is_some(),
                "{piece} listed from the start: {text}"
            );
        }
        assert_eq!(
            value(&text, "vmpod_domain_state", "state=\"crashed\""),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "vmpod_domain_state", "state=\"running\""),
            Some(0.0)
        );
        assert_eq!(value(&text, "vmpod_ready", ""), Some(0.0));
        assert_eq!(
            value(&text, "vmpod_start_to_ready_seconds", ""),
            None,
            "not ready yet: {text}"
        );
        assert!(
            text.contains("vmpod_info{domain=\"m1\",egress_mode=\"tproxy\",version=\""),
            "{text}"
        );
        assert!(value(&text, "process_resident_memory_bytes", "").unwrap() > 0.0);
        assert!(value(&text, "process_open_fds", "").unwrap() > 0.0);
        assert!(
            text.contains("# TYPE vmpod_guest_restarts_total counter"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "Prometheus text has no EOF marker");
    }

    #[test]
    fn openmetrics_has_its_eof_marker() {
        let text = encode(&health(), true);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("# TYPE vmpod_guest_restarts counter"),
            "{text}"
        );
    }

    #[test]
    fn udp_egress_counters_appear_only_with_the_relay() {
        let h = health();
        let text = encode(&h, false);
        assert!(!text.contains("vmpod_udp_egress"), "{text}");
        let u = Arc::new(UdpEgressStats::default());
        u.sessions_active.store(2, Ordering::Relaxed);
        u.datagrams_out.store(7, Ordering::Relaxed);
        u.bytes_in.store(300, Ordering::Relaxed);
        *lock(&h.udp_egress) = Some(u);
        let text = encode(&h, false);
        assert_eq!(
            value(&text, "vmpod_udp_egress_sessions_active", ""),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                "vmpod_udp_egress_datagrams_total",
                "direction=\"out\""
            ),
            Some(7.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "vmpod_udp_egress_bytes_total", "direction=\"in\""),
            Some(300.0),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                "vmpod_udp_egress_dropped_total",
                "reason=\"session_limit\""
            ),
            Some(0.0),
            "{text}"
        );
    }

    #[test]
    fn relay_counters_are_read_at_scrape_time() {
        let h = health();
        let ingress = Arc::new(RelayStats::default());
        let egress = Arc::new(RelayStats::default());
        *lock(&h.relays) = vec![
            RelayHandle {
                kind: "egress",
                name: "egress".into(),
                port: 9401,
                stats: egress.clone(),
            },
            RelayHandle {
                kind: "ingress",
                name: "http".into(),
                port: 9080,
                stats: ingress.clone(),
            },
        ];
        RelayStats::add(&ingress.accepted, 3);
        RelayStats::add(&ingress.active, 1);
        RelayStats::add(&ingress.bytes_out, 100);
        RelayStats::add(&ingress.bytes_in, 2000);
        RelayStats::add(&egress.refused, 2);
        RelayStats::add(&egress.upstream_failed, 1);
        RelayStats::add(&ingress.expired, 4);
        let text = encode(&h, false);
        let http = "relay=\"ingress\",name=\"http\",port=\"9080\"";
        assert_eq!(
            value(&text, "vmpod_relay_sessions_expired_total", http),
            Some(4.0),
            "{text}"
        );
        let eg = "relay=\"egress\",name=\"egress\",port=\"9401\"";
        assert_eq!(
            value(&text, "vmpod_relay_connections_accepted_total", http),
            Some(3.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "vmpod_relay_connections_active", http),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                "vmpod_relay_bytes_total",
                &format!("{http},direction=\"client_to_upstream\"")
            ),
            Some(100.0)
        );
        assert_eq!(
            value(
                &text,
                "vmpod_relay_bytes_total",
                &format!("{http},direction=\"upstream_to_client\"")
            ),
            Some(2000.0)
        );
        assert_eq!(
            value(&text, "vmpod_relay_connections_refused_total", eg),
            Some(2.0)
        );
        assert_eq!(
            value(&text, "vmpod_relay_upstream_failures_total", eg),
            Some(1.0)
        );
        RelayStats::add(&ingress.accepted, 1);
        let text = encode(&h, false);
        assert_eq!(
            value(&text, "vmpod_relay_connections_accepted_total", http),
            Some(4.0)
        );
    }

    #[test]
    fn samples_parse_with_and_without_labels() {
        let text = "# HELP a x\n# TYPE a counter\na_total 3\nb{c=\"d e\",f=\"g\"} 1.5\nbad\n";
        assert_eq!(
            parse_samples(text),
            [
                ("a_total".to_string(), String::new(), 3.0),
                ("b".to_string(), "c=\"d e\",f=\"g\"".to_string(), 1.5)
            ]
        );
    }
}
