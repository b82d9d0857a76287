//! Graceful stop of the TCP relays, as ztunnel and Envoy drain: stop
//! accepting, let connections in flight end on their own for a drain
//! timeout, then reset (RST) what is left. The accept loops and every
//! connection task watch one [`DrainWatch`]; [`drain`] drives it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::stats::RelayStats;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Listeners closed; connections in flight go on.
    Draining,
    /// The drain timeout passed: connections left are cut.
    Cutting,
}

/// What accept loops and connections watch.
#[derive(Clone)]
pub struct DrainWatch(watch::Receiver<Phase>);

/// The sending side, held by whoever stops the relays.
pub struct Drainer(watch::Sender<Phase>);

impl Drainer {
    pub fn new() -> (Drainer, DrainWatch) {
        let (tx, rx) = watch::channel(Phase::Serving);
        (Drainer(tx), DrainWatch(rx))
    }

    /// Accept loops return (closing their listeners).
    pub fn stop_accepting(&self) {
        self.0.send_if_modified(|p| {
            let serving = *p == Phase::Serving;
            if serving {
                *p = Phase::Draining;
            }
            serving
        });
    }

    /// Connections left are cut with a RST.
    pub fn cut(&self) {
        let _ = self.0.send(Phase::Cutting);
    }
}

impl DrainWatch {
    /// Completes when the accept loops must stop.
    pub async fn stopped_accepting(&mut self) {
        let _ = self.0.wait_for(|p| *p != Phase::Serving).await;
    }

    /// Completes when connections must be cut. A dropped [`Drainer`] cuts
    /// nothing: without anyone stopping, connections run on.
    pub async fn cut(mut self) {
        if self.0.wait_for(|p| *p == Phase::Cutting).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What a stop did to the connections in flight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// TCP connections open when accepting stopped.
    pub in_flight: u64,
    /// Of those, how many ended on their own within the drain timeout.
    pub drained: u64,
    /// Of those, how many were cut (RST) at the timeout.
    pub reset: u64,
    pub took: Duration,
}

/// How often the count of connections in flight is looked at while draining.
const POLL: Duration = Duration::from_millis(10);
/// How long cut connections get to be torn down (an abortive close is one
/// system call per socket).
const CUT_GRACE: Duration = Duration::from_secs(1);

/// Stops `accept_loops`, waits up to `timeout` for the connections counted
/// in `relays` (their `active`) to end, then cuts the rest.
pub async fn drain(
    drainer: &Drainer,
    accept_loops: Vec<JoinHandle<()>>,
    relays: &[Arc<RelayStats>],
    timeout: Duration,
) -> DrainReport {
    let start = Instant::now();
    drainer.stop_accepting();
    for task in accept_loops {
        let _ = task.await;
    }
    let active = || -> u64 { relays.iter().map(|s| RelayStats::get(&s.active)).sum() };
    let in_flight = active();
    let deadline = start + timeout;
    while active() > 0 && Instant::now() < deadline {
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    let left = active();
    if left > 0 {
        drainer.cut();
        let cut_by = Instant::now() + CUT_GRACE;
        while active() > 0 && Instant::now() < cut_by {
            tokio::time::sleep(POLL).await;
        }
    }
    DrainReport {
        in_flight,
        drained: in_flight.saturating_sub(left),
        reset: left,
        took: start.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::ingress::IngressDestination;
    use crate::relay::proxy::{self, ProxySettings};
    use crate::relay::socket::Keepalive;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// An echo server: each connection gets its bytes back, then a FIN.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        addr
    }

    fn settings() -> ProxySettings {
        ProxySettings {
            connect_timeout: Duration::from_secs(5),
            timeouts: crate::relay::copy::Timeouts {
                idle: Duration::from_secs(3600),
                half_closed: Duration::from_secs(60),
            },
            max_connections: 100,
            proxy_protocol: None,
            keepalive: Some(Keepalive::DEFAULT),
            accel: false,
        }
    }

    /// Issue 16, drain on shutdown: a connection that ends within the drain
    /// timeout completes with all its bytes; one that does not is reset at
    /// the timeout; the listener accepts nothing once the stop began.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_drains_what_ends_in_time_and_resets_the_rest() {
        let upstream = echo().await;
        let listener =
            crate::relay::socket::tcp_listener("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let relay = listener.local_addr().unwrap();
        let stats = Arc::new(RelayStats::default());
        let (drainer, watch) = Drainer::new();
        let s = settings();
        let accepting = tokio::spawn(proxy::serve(
            "ingress",
            listener,
            Arc::new(IngressDestination { guest: upstream }),
            s,
            s.limit(),
            stats.clone(),
            watch,
        ));
        let mut finishing = TcpStream::connect(relay).await.unwrap();
        let mut lingering = TcpStream::connect(relay).await.unwrap();
        for c in [&mut finishing, &mut lingering] {
            c.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"ping");
        }
        const TIMEOUT: Duration = Duration::from_millis(800);
        let t = Instant::now();
        let stopping = tokio::spawn({
            let stats = stats.clone();
            async move { drain(&drainer, vec![accepting], &[stats], TIMEOUT).await }
        });
        // In flight during the stop: more bytes, then an orderly end.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            TcpStream::connect(relay).await.is_err(),
            "the listener is closed once the stop began"
        );
        finishing.write_all(b"last words").await.unwrap();
        finishing.shutdown().await.unwrap();
        let mut rest = Vec::new();
        finishing.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"last words", "the draining connection completes");
        let mut b = [0u8; 1];
        let cut = tokio::time::timeout(Duration::from_secs(3), lingering.read(&mut b))
            .await
            .expect("the lingering connection is cut, not left open");
        let cut_after = t.elapsed();
        assert_eq!(
            cut.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset),
            "cut with a RST"
        );
        assert!(
            cut_after >= TIMEOUT && cut_after < TIMEOUT + Duration::from_millis(500),
            "cut at the timeout: {cut_after:?}"
        );
        let report = stopping.await.unwrap();
        assert_eq!(
            (report.in_flight, report.drained, report.reset),
            (2, 1, 1),
            "{report:?}"
        );
        assert_eq!(RelayStats::get(&stats.active), 0);
    }

    #[tokio::test]
    async fn a_drain_with_nothing_in_flight_returns_at_once() {
        let (drainer, _watch) = Drainer::new();
        let stats = Arc::new(RelayStats::default());
        let report = drain(&drainer, Vec::new(), &[stats], Duration::from_secs(5)).await;
        assert_eq!((report.in_flight, report.reset), (0, 0));
        assert!(report.took < Duration::from_secs(1));
    }
}
