//! The byte pump between two TCP connections.
//!
//! Each direction reads and writes on its own; a FIN read on one side is
//! passed on as a write shutdown on the other while the opposite direction
//! keeps flowing. A connection idle for `idle` is aborted; once one
//! direction has finished, the other gets at most `half_closed` more.
//! Buffers are allocated on first data, so an idle connection costs none.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const BUFFER: usize = 64 * 1024;

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub idle: Duration,
    pub half_closed: Duration,
}

/// How a relayed connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Both sides closed in order.
    Closed {
        to_upstream: u64,
        to_client: u64,
    },
    IdleTimeout,
    HalfClosedTimeout,
    /// A read or write failed (a reset, usually): both sides are aborted.
    Failed(io::ErrorKind),
}

/// Relays between `client` and `upstream` until both directions are done.
/// `bytes_out`/`bytes_in` are bumped as data moves.
pub async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    timeouts: Timeouts,
    bytes_out: &AtomicU64,
    bytes_in: &AtomicU64,
) -> Ended {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let ended = pump_both(
        &mut cr, &mut cw, &mut ur, &mut uw, timeouts, &last, start, bytes_out, bytes_in,
    )
    .await;
    if !matches!(ended, Ended::Closed { .. }) {
        // Tell both peers the connection failed: RST, not FIN.
        if let (Ok(c), Ok(u)) = (cr.reunite(cw), ur.reunite(uw)) {
            super::socket::abort(c);
            super::socket::abort(u);
        }
    }
    ended
}

#[allow(clippy::too_many_arguments)]
async fn pump_both(
    cr: &mut OwnedReadHalf,
    cw: &mut OwnedWriteHalf,
    ur: &mut OwnedReadHalf,
    uw: &mut OwnedWriteHalf,
    timeouts: Timeouts,
    last: &AtomicU64,
    start: Instant,
    bytes_out: &AtomicU64,
    bytes_in: &AtomicU64,
) -> Ended {
    let up = pump(cr, uw, last, start, bytes_out);
    let down = pump(ur, cw, last, start, bytes_in);
    tokio::pin!(up, down);
    let mut up_done: Option<io::Result<u64>> = None;
    let mut down_done: Option<io::Result<u64>> = None;
    let mut half_closed_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500).min(timeouts.idle));
    loop {
        tokio::select! {
            r = &mut up, if up_done.is_none() => {
                if let Err(e) = &r { return Ended::Failed(e.kind()) }
                up_done = Some(r);
                half_closed_since.get_or_insert_with(Instant::now);
            }
            r = &mut down, if down_done.is_none() => {
                if let Err(e) = &r { return Ended::Failed(e.kind()) }
                down_done = Some(r);
                half_closed_since.get_or_insert_with(Instant::now);
            }
            _ = tick.tick() => {
                let idle_for = start.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if idle_for >= timeouts.idle {
                    return Ended::IdleTimeout;
                }
                if half_closed_since.is_some_and(|t| t.elapsed() >= timeouts.half_closed) {
                    return Ended::HalfClosedTimeout;
                }
            }
        }
        if let (Some(Ok(out)), Some(Ok(inn))) = (&up_done, &down_done) {
            return Ended::Closed {
                to_upstream: *out,
                to_client: *inn,
            };
        }
    }
}

/// One direction: read until EOF, write everything, then shut down the
/// write side so the peer sees the FIN.
async fn pump(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    last: &AtomicU64,
    start: Instant,
    counter: &AtomicU64,
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        from.readable().await?;
        if buf.is_empty() {
            buf = vec![0u8; BUFFER];
        }
        let n = match from.read(&mut buf).await {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            to.shutdown().await?;
            return Ok(total);
        }
        to.write_all(&buf[..n]).await?;
        total += n as u64;
        counter.fetch_add(n as u64, Ordering::Relaxed);
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}
