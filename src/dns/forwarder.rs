//! The guest's DNS server: listens on the gateway (UDP and TCP port 53) and
//! forwards each query, byte for byte, to the pod's resolvers as an
//! ordinary socket of the pod (source: the pod's address, never the
//! gateway), so the cluster DNS, and a mesh's DNS capture, see a query of
//! the pod.
//!
//! Bounds: each upstream gets `attempt_timeout`, then the next one is tried;
//! when none answers, the guest gets SERVFAIL, so a guest query ends within
//! `attempt_timeout * upstreams` (plus the idle wait on TCP). At most
//! `max_in_flight` queries are forwarded at once (UDP beyond is dropped, the
//! client retries; a TCP connection beyond is closed). Queries larger than
//! `MAX_QUERY` are dropped. A truncated UDP answer is passed through as is,
//! so the client retries over TCP.
//!
//! Each UDP attempt uses a fresh socket bound to port 0 and connected to
//! the upstream: the kernel picks a random source port, only the upstream's
//! address can answer it, and the answer must carry the query's ID.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use super::message::{Header, answers, servfail};
use super::stats::{DnsStats, bump};

/// Queries above this size are dropped (a query is a question, maybe
/// with EDNS; 4 KiB is far beyond any real one).
pub const MAX_QUERY: usize = 4096;
/// The largest DNS message on the wire (TCP's 2-byte length).
const MAX_MESSAGE: usize = 65535;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwarderConfig {
    /// Where the guest sends its queries: the gateway, port 53.
    pub listen: SocketAddr,
    /// The pod's resolvers, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// How long one upstream gets before the next is tried.
    pub attempt_timeout: Duration,
    /// Queries (UDP and TCP) forwarded at once.
    pub max_in_flight: usize,
    /// Open TCP connections from the guest.
    pub max_tcp_connections: usize,
    /// A guest TCP connection without a query for this long is closed.
    pub tcp_idle_timeout: Duration,
}

impl ForwarderConfig {
    /// Defaults in line with glibc's resolver (a 2 s try where glibc waits 5:
    /// the pod's resolver is one hop away).
    pub fn new(listen: SocketAddr, upstreams: Vec<SocketAddr>) -> ForwarderConfig {
        ForwarderConfig {
            listen,
            upstreams,
            attempt_timeout: Duration::from_secs(2),
            max_in_flight: 256,
            max_tcp_connections: 64,
            tcp_idle_timeout: Duration::from_secs(10),
        }
    }

    /// A readable summary for `vmpod render`.
    pub fn render(&self) -> String {
        let ups: Vec<String> = self.upstreams.iter().map(|u| u.to_string()).collect();
        format!(
            "dns forwarder on {} (udp, tcp) to {} ({} s per server, {} in flight, {} tcp connections)",
            self.listen,
            if ups.is_empty() {
                "-".to_string()
            } else {
                ups.join(", ")
            },
            self.attempt_timeout.as_secs_f32(),
            self.max_in_flight,
            self.max_tcp_connections
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("dns: no upstream resolver (the pod's resolv.conf lists no usable nameserver)")]
    NoUpstream,
    #[error(
        "dns: cannot listen on {proto} {addr}: {source} (port 53 needs CAP_NET_BIND_SERVICE; \
         the gateway address must be on the bridge)"
    )]
    Listen {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// A bound forwarder, ready to run.
pub struct DnsForwarder {
    udp: UdpSocket,
    tcp: TcpListener,
    shared: Arc<Shared>,
}

struct Shared {
    config: ForwarderConfig,
    stats: Arc<DnsStats>,
    in_flight: Arc<Semaphore>,
    tcp_slots: Arc<Semaphore>,
}

impl DnsForwarder {
    /// Binds UDP and TCP on `config.listen`. Call it in a tokio runtime whose
    /// threads live in the pod's network namespace.
    pub fn bind(config: ForwarderConfig) -> Result<DnsForwarder, DnsError> {
        Self::bind_counting(config, Arc::new(DnsStats::default()))
    }

    /// As [`DnsForwarder::bind`], counting into `stats`: the guest's IPv4
    /// and IPv6 forwarders share one set of counters.
    pub fn bind_counting(
        config: ForwarderConfig,
        stats: Arc<DnsStats>,
    ) -> Result<DnsForwarder, DnsError> {
        if config.upstreams.is_empty() {
            return Err(DnsError::NoUpstream);
        }
        let addr = config.listen;
        let listen_err = |proto| {
            move |source| DnsError::Listen {
                proto,
                addr,
                source,
            }
        };
        let udp = std::net::UdpSocket::bind(addr)
            .and_then(|s| {
                s.set_nonblocking(true)?;
                UdpSocket::from_std(s)
            })
            .map_err(listen_err("udp"))?;
        let tcp = std::net::TcpListener::bind(addr)
            .and_then(|s| {
                s.set_nonblocking(true)?;
                TcpListener::from_std(s)
            })
            .map_err(listen_err("tcp"))?;
        let shared = Arc::new(Shared {
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            tcp_slots: Arc::new(Semaphore::new(config.max_tcp_connections)),
            stats,
            config,
        });
        Ok(DnsForwarder { udp, tcp, shared })
    }

    pub fn stats(&self) -> Arc<DnsStats> {
        self.shared.stats.clone()
    }

    /// Serves until the task is dropped or aborted.
    pub async fn run(self) {
        tracing::info!(
            listen = %self.shared.config.listen,
            upstreams = ?self.shared.config.upstreams,
            "dns: forwarding"
        );
        let udp = Arc::new(self.udp);
        tokio::join!(
            serve_udp(udp, self.shared.clone()),
            serve_tcp(self.tcp, self.shared)
        );
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (len, client) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "dns: udp receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let stats = &shared.stats;
        bump(&stats.udp_queries);
        let Some(header) = query_header(&buf[..len]) else {
            bump(&stats.malformed);
            continue;
        };
        let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
            bump(&stats.dropped_busy);
            continue;
        };
        let query = buf[..len].to_vec();
        let socket = socket.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = forward(&shared, &query, header, Transport::Udp).await;
            if let Some(answer) = answer
                && let Err(e) = socket.send_to(&answer, client).await
            {
                tracing::debug!(error = %e, %client, "dns: cannot answer the guest");
            }
            shared.stats.latency.observe(started.elapsed());
            drop(permit);
        });
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: back off rather than spin.
                tracing::warn!(error = %e, "dns: tcp accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = shared.tcp_slots.clone().try_acquire_owned() else {
            bump(&shared.stats.tcp_rejected);
            continue; // dropping the stream closes it
        };
        bump(&shared.stats.tcp_connections);
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_tcp_connection(stream, &shared).await {
                tracing::debug!(error = %e, %client, "dns: tcp connection ended");
            }
            drop(slot);
        });
    }
}

/// Queries on one guest connection, answered in order.
async fn serve_tcp_connection(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    let idle = shared.config.tcp_idle_timeout;
    loop {
        let query = match tokio::time::timeout(idle, read_framed(&mut stream)).await {
            Err(_) => return Ok(()), // idle: close
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(r) => r?,
        };
        let stats = &shared.stats;
        bump(&stats.tcp_queries);
        let Some(header) = query_header(&query) else {
            bump(&stats.malformed);
            return Ok(());
        };
        let Ok(_permit) = shared.in_flight.try_acquire() else {
            bump(&stats.dropped_busy);
            return Ok(());
        };
        let started = Instant::now();
        if let Some(answer) = forward(shared, &query, header, Transport::Tcp).await {
            write_framed(&mut stream, &answer).await?;
        }
        stats.latency.observe(started.elapsed());
    }
}

#[derive(Debug, Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
}

/// The query's header, if it is a query of acceptable size.
pub(crate) fn query_header(query: &[u8]) -> Option<Header> {
    if query.len() > MAX_QUERY {
        return None;
    }
    Header::parse(query).filter(|h| !h.is_response())
}

/// Tries each upstream in turn; the first answer, else SERVFAIL.
async fn forward(
    shared: &Shared,
    query: &[u8],
    header: Header,
    transport: Transport,
) -> Option<Vec<u8>> {
    let stats = &shared.stats;
    let timeout = shared.config.attempt_timeout;
    for &upstream in &shared.config.upstreams {
        let attempt = async {
            match transport {
                Transport::Udp => ask_udp(upstream, query, header, stats).await,
                Transport::Tcp => ask_tcp(upstream, query, header).await,
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(answer)) => {
                bump(&stats.answers);
                if Header::parse(&answer).is_some_and(|h| h.is_truncated()) {
                    bump(&stats.truncated);
                }
                return Some(answer);
            }
            Ok(Err(e)) => {
                bump(&stats.upstream_errors);
                tracing::debug!(error = %e, %upstream, ?transport, "dns: upstream failed");
            }
            Err(_) => {
                bump(&stats.timeouts);
                tracing::debug!(%upstream, ?transport, "dns: upstream timed out");
            }
        }
    }
    bump(&stats.failures);
    servfail(query)
}

/// The pod-side address to bind for `upstream`: any, port 0 (random).
fn pod_side(upstream: SocketAddr) -> SocketAddr {
    let any = match upstream.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(any, 0)
}

async fn ask_udp(
    upstream: SocketAddr,
    query: &[u8],
    header: Header,
    stats: &DnsStats,
) -> io::Result<Vec<u8>> {
    let socket = UdpSocket::bind(pod_side(upstream)).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    // Not zeroed: a 64 KiB memset per query is wasted on answers of a few
    // hundred bytes.
    let mut buf = Vec::with_capacity(MAX_MESSAGE);
    loop {
        buf.clear();
        socket.recv_buf(&mut buf).await?;
        if answers(&header, &buf) {
            return Ok(buf);
        }
        bump(&stats.mismatched);
    }
}

async fn ask_tcp(upstream: SocketAddr, query: &[u8], header: Header) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    write_framed(&mut stream, query).await?;
    let answer = read_framed(&mut stream).await?;
    if answers(&header, &answer) {
        Ok(answer)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the upstream's answer has another ID",
        ))
    }
}

async fn read_framed(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = stream.read_u16().await? as usize;
    let mut msg = vec![0u8; len];
    stream.read_exact(&mut msg).await?;
    Ok(msg)
}

async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message over 64 KiB"))?;
    let mut framed = Vec::with_capacity(2 + msg.len());
    framed.extend(len.to_be_bytes());
    framed.extend(msg);
    stream.write_all(&framed).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::message::tests::query;

    #[test]
    fn only_queries_of_acceptable_size_are_forwarded() {
        let q = query(1, "a.test", 1);
        assert!(query_header(&q).is_some());
        assert!(query_header(&q[..5]).is_none());
        let mut response = q.clone();
        response[2] |= 0x80;
        assert!(query_header(&response).is_none());
        let mut big = q;
        big.resize(MAX_QUERY + 1, 0);
        assert!(query_header(&big).is_none());
    }

    #[test]
    fn upstream_sockets_are_bound_to_any_address_never_the_gateway() {
        let v4 = pod_side("10.96.0.10:53".parse().unwrap());
        assert_eq!(v4, "0.0.0.0:0".parse().unwrap());
        let v6 = pod_side("[fd00::10]:53".parse().unwrap());
        assert_eq!(v6, "[::]:0".parse().unwrap());
    }

    #[test]
    fn render_names_listen_and_upstreams() {
        let c = ForwarderConfig::new(
            "10.0.1.1:53".parse().unwrap(),
            vec!["10.96.0.10:53".parse().unwrap()],
        );
        let r = c.render();
        assert!(
            r.contains("10.0.1.1:53") && r.contains("10.96.0.10:53"),
            "{r}"
        );
    }
}
