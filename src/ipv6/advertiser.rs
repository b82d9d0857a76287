//! The Router Advertisement server: advertises the gateway as the guest's
//! default router on the bridge, with the prefix, MTU, M/O flags, RDNSS and
//! DNSSL of the config; unsolicited (a fast few at start, then at random
//! RFC 4861 intervals) and in answer to Router Solicitations.
//!
//! RAs come from the bridge's link-local address, which the kernel picks as
//! the source for a link-scope destination on the bound device. That
//! address exists only once the bridge has carrier (a port is up) and has
//! passed duplicate address detection, so the server waits for it before
//! each send rather than failing: the initial burst starts when it is ready.

use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use super::Ipv6Error;
use super::config::{Ipv6Config, Mac};
use super::ra::{self, NdOption, PrefixInfo, RouterAdvert, RouterDiscovery};
use super::socket::{
    ALL_NODES, BridgeInfo, IcmpSocket, LinkLocal, bridge_info, current_mac, index_of, link_local,
    pod_accepts_ra,
};
use super::stats::{RaStats, bump};

/// Solicited RAs closer together than this are dropped (an RS flood must
/// not become an RA flood); hosts resend their solicitations.
const MIN_SOLICITED_GAP: Duration = Duration::from_millis(200);
/// How often to look again for the bridge's link-local address.
const LINK_LOCAL_POLL: Duration = Duration::from_millis(250);

/// The RA the config asks for, with `router_lifetime` (0 in the final RA
/// that withdraws the router).
pub fn advert(config: &Ipv6Config, bridge_mac: Mac, router_lifetime: u16) -> RouterAdvert {
    let l = &config.lifetimes;
    let mut options = vec![
        NdOption::SourceLinkLayer(bridge_mac.to_vec()),
        NdOption::Mtu(config.mtu),
        NdOption::Prefix(PrefixInfo {
            prefix: config.prefix.network(),
            prefix_len: config.prefix.prefix_len(),
            on_link: true,
            autonomous: config.autonomous,
            valid_lifetime: l.prefix_valid,
            preferred_lifetime: l.prefix_preferred,
        }),
    ];
    if !config.dns.is_empty() {
        options.push(NdOption::Rdnss {
            lifetime: l.dns,
            servers: config.dns.clone(),
        });
    }
    if !config.search.is_empty() {
        options.push(NdOption::Dnssl {
            lifetime: l.dns,
            domains: config.search.clone(),
        });
    }
    RouterAdvert {
        // 64, as Linux hosts default to; 0 would leave it to the guest.
        cur_hop_limit: 64,
        managed: config.managed,
        other: config.other_config,
        router_lifetime,
        reachable_time: 0,
        retrans_timer: 0,
        options,
    }
}

/// A running RA server.
pub struct RouterAdvertiser {
    stats: Arc<RaStats>,
    socket: Arc<IcmpSocket>,
    config: Ipv6Config,
    start_mac: Mac,
    task: JoinHandle<()>,
}

impl RouterAdvertiser {
    /// Checks the config and the bridge (exists, up, has a MAC, IPv6 on),
    /// opens the socket and starts advertising on the current tokio
    /// runtime, whose threads must be in the bridge's network namespace.
    /// Needs CAP_NET_RAW.
    pub fn start(config: &Ipv6Config) -> Result<RouterAdvertiser, Ipv6Error> {
        config.validate()?;
        let bridge = bridge_info(&config.bridge)?;
        let mac = config.bridge_mac.unwrap_or(bridge.mac);
        // Encoded once here so an unencodable config fails at start.
        advert(config, mac, config.lifetimes.router).encode()?;
        let socket = Arc::new(IcmpSocket::open(&bridge)?);
        if pod_accepts_ra(&bridge.name) {
            warn!(
                bridge = %bridge.name,
                "the pod's kernel accepts router advertisements on the bridge: one sent by the \
                 guest could route the pod through it; set net.ipv6.conf.{}.accept_ra=0",
                bridge.name
            );
        }
        let stats = Arc::new(RaStats::default());
        info!(
            bridge = %bridge.name,
            prefix = %config.prefix,
            managed = config.managed,
            other = config.other_config,
            autonomous = config.autonomous,
            "IPv6 router advertisements on"
        );
        let task = tokio::spawn(advertise(
            bridge,
            config.clone(),
            socket.clone(),
            stats.clone(),
        ));
        Ok(RouterAdvertiser {
            stats,
            socket,
            config: config.clone(),
            start_mac: mac,
            task,
        })
    }

    pub fn stats(&self) -> Arc<RaStats> {
        self.stats.clone()
    }

    /// Stops, after a final RA with router lifetime 0 so the guest drops
    /// the default route at once (RFC 4861 section 6.2.5) instead of
    /// keeping a dead router for up to the router lifetime.
    pub async fn stop(self) {
        self.task.abort();
        let mac = self
            .config
            .bridge_mac
            .or_else(|| current_mac(&self.config.bridge))
            .unwrap_or(self.start_mac);
        let Ok(last) = advert(&self.config, mac, 0).encode() else {
            return;
        };
        let send = self.socket.send_to(&last, ALL_NODES);
        match tokio::time::timeout(Duration::from_secs(1), send).await {
            Ok(Ok(_)) => debug!("final router advertisement sent"),
            Ok(Err(e)) => debug!("final router advertisement not sent: {e}"),
            Err(_) => debug!("final router advertisement timed out"),
        }
    }
}

impl Drop for RouterAdvertiser {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A small xorshift generator for the random intervals RFC 4861 asks for;
/// unpredictability does not matter here, only spread.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Jitter((t ^ u64::from(std::process::id())) | 1)
    }

    /// Uniform in [min, max].
    fn between(&mut self, min: Duration, max: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let span = max.saturating_sub(min).as_millis() as u64;
        min + Duration::from_millis(if span == 0 { 0 } else { self.0 % (span + 1) })
    }
}

/// The RA packet, rebuilt when the bridge's MAC changes (unless the config
/// fixes the MAC): the source link-layer option must name the MAC that
/// frames for the router are delivered to.
struct Packet {
    fixed_mac: Option<Mac>,
    mac: Mac,
    bytes: Vec<u8>,
}

impl Packet {
    fn current(&mut self, bridge: &BridgeInfo, config: &Ipv6Config) -> &[u8] {
        if self.fixed_mac.is_none()
            && let Some(mac) = current_mac(&bridge.name)
            && mac != self.mac
        {
            match advert(config, mac, config.lifetimes.router).encode() {
                Ok(bytes) => {
                    info!(bridge = %bridge.name, "the bridge's MAC changed; advertising the new one");
                    self.mac = mac;
                    self.bytes = bytes;
                }
                Err(e) => warn!("cannot encode the router advertisement: {e}"),
            }
        }
        &self.bytes
    }
}

async fn advertise(
    bridge: BridgeInfo,
    config: Ipv6Config,
    socket: Arc<IcmpSocket>,
    stats: Arc<RaStats>,
) {
    let mac = config.bridge_mac.unwrap_or(bridge.mac);
    let mut packet = Packet {
        fixed_mac: config.bridge_mac,
        mac,
        bytes: advert(&config, mac, config.lifetimes.router)
            .encode()
            .unwrap_or_default(),
    };
    let schedule = &config.schedule;
    let mut jitter = Jitter::new();
    let mut initial_left = schedule.initial_count;
    let mut next_unsolicited = tokio::time::Instant::now();
    let mut last_solicited: Option<Instant> = None;
    let mut logged_waiting = false;
    let mut logged_gone = false;
    let mut buf = vec![0u8; 1500];
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_unsolicited) => {
                if index_of(&bridge.name) != Some(bridge.index) {
                    if !logged_gone {
                        logged_gone = true;
                        error!(
                            bridge = %bridge.name,
                            "the bridge this RA server was bound to is gone (deleted, or \
                             created again); restart the IPv6 servers"
                        );
                    }
                    next_unsolicited += Duration::from_secs(1);
                    continue;
                }
                let source = match link_local(bridge.index) {
                    LinkLocal::Ready(a) => a,
                    state => {
                        if !logged_waiting {
                            logged_waiting = true;
                            info!(
                                bridge = %bridge.name, ?state,
                                "waiting for the bridge's IPv6 link-local address (it comes \
                                 when a port is up and duplicate address detection is done)"
                            );
                        }
                        next_unsolicited += LINK_LOCAL_POLL;
                        continue;
                    }
                };
                if logged_waiting {
                    logged_waiting = false;
                    info!(bridge = %bridge.name, %source, "advertising from the link-local address");
                }
                if send(&socket, packet.current(&bridge, &config), ALL_NODES, &stats).await {
                    bump(&stats.unsolicited_sent);
                }
                let wait = if initial_left > 1 {
                    initial_left -= 1;
                    schedule.initial_interval
                } else {
                    initial_left = 0;
                    jitter.between(schedule.min_interval, schedule.max_interval)
                };
                next_unsolicited = tokio::time::Instant::now() + wait;
            }
            got = socket.recv(&mut buf) => {
                let got = match got {
                    Ok(g) => g,
                    Err(e) => {
                        warn!("reading router solicitations: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(to) = solicitation_reply_to(&buf[..got.len], *got.from.ip(), got.hop_limit) else {
                    bump(&stats.malformed);
                    continue;
                };
                bump(&stats.solicits_received);
                let now = Instant::now();
                if last_solicited.is_some_and(|t| now.duration_since(t) < MIN_SOLICITED_GAP) {
                    bump(&stats.solicits_rate_limited);
                    continue;
                }
                if !matches!(link_local(bridge.index), LinkLocal::Ready(_)) {
                    // No source address yet; the host solicits again.
                    continue;
                }
                last_solicited = Some(now);
                send(&socket, packet.current(&bridge, &config), to, &stats).await;
            }
        }
    }
}

/// Where to answer a solicitation, or None when it is not a valid one
/// (RFC 4861 section 6.1.1): hop limit 255, a decodable RS, and no
/// source link-layer option when sent from the unspecified address. A
/// host with an address is answered directly (section 6.2.6 allows it),
/// one without by multicast.
fn solicitation_reply_to(
    packet: &[u8],
    from: Ipv6Addr,
    hop_limit: Option<i32>,
) -> Option<Ipv6Addr> {
    if hop_limit != Some(255) {
        return None;
    }
    let RouterDiscovery::Solicit(rs) = ra::decode(packet).ok()? else {
        return None;
    };
    if from.is_unspecified() {
        if rs.source_link_layer().is_some() {
            return None;
        }
        return Some(ALL_NODES);
    }
    Some(from)
}

async fn send(socket: &IcmpSocket, packet: &[u8], to: Ipv6Addr, stats: &RaStats) -> bool {
    match socket.send_to(packet, to).await {
        Ok(_) => {
            bump(&stats.adverts_sent);
            true
        }
        Err(e) => {
            bump(&stats.send_errors);
            warn!(%to, "sending a router advertisement: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv6::ra::RouterSolicit;

    #[test]
    fn the_advert_carries_what_the_config_says() {
        let mut c = Ipv6Config::new("example", "virbr0", [2, 0, 0, 0, 0, 2], 1450);
        c.search = vec!["svc.cluster.local".into()];
        let ra = advert(&c, [2, 0, 0, 0, 0, 1], 1800);
        assert!(ra.managed && ra.other);
        assert_eq!(ra.router_lifetime, 1800);
        assert!(ra.options.contains(&NdOption::Mtu(1450)));
        assert!(ra.options.iter().any(|o| matches!(o,
            NdOption::Prefix(p) if p.on_link && !p.autonomous && p.prefix_len == 64)));
        assert!(ra.options.contains(&NdOption::Rdnss {
            lifetime: 1800,
            servers: vec![c.gateway]
        }));
        assert!(
            ra.options
                .iter()
                .any(|o| matches!(o, NdOption::Dnssl { .. }))
        );
        assert!(ra.encode().is_ok());
    }

    #[test]
    fn solicitations_are_checked_before_they_are_answered() {
        let rs = RouterSolicit::default().encode().unwrap();
        let with_sll = RouterSolicit {
            options: vec![NdOption::SourceLinkLayer(vec![2, 0, 0, 0, 0, 2])],
        }
        .encode()
        .unwrap();
        let host: Ipv6Addr = "fe80::2".parse().unwrap();
        let none = Ipv6Addr::UNSPECIFIED;
        assert_eq!(
            solicitation_reply_to(&with_sll, host, Some(255)),
            Some(host)
        );
        assert_eq!(solicitation_reply_to(&rs, none, Some(255)), Some(ALL_NODES));
        assert_eq!(solicitation_reply_to(&with_sll, none, Some(255)), None);
        assert_eq!(solicitation_reply_to(&rs, host, Some(64)), None);
        assert_eq!(solicitation_reply_to(&rs, host, None), None);
        assert_eq!(solicitation_reply_to(&rs[..4], host, Some(255)), None);
    }

    #[test]
    fn jitter_stays_in_its_interval() {
        let mut j = Jitter::new();
        for _ in 0..1000 {
            let d = j.between(Duration::from_secs(198), Duration::from_secs(600));
            assert!(d >= Duration::from_secs(198) && d <= Duration::from_secs(600));
        }
    }
}
