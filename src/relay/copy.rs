//! The byte pump between two TCP connections.
//!
//! Each direction reads and writes on its own; a FIN read on one side is
//! passed on as a write shutdown on the other while the opposite direction
//! keeps flowing. A connection idle for `idle` is aborted; once one
//! direction has finished, the other gets at most `half_closed` more.
//!
//! How bytes move adapts to the flow, as haproxy's splice-auto and istio's
//! ztunnel do. Small messages are copied through a buffer that starts at
//! 1 KiB and grows to 16 KiB when a read fills it; a read that fills 16 KiB
//! marks a bulk flow, which from then on moves with splice(2) through a
//! pooled pipe (`splice`), never entering userspace. A buffer or pipe is
//! held only while bytes are in flight: an idle connection holds neither.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::socket::MsgFlags;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::splice::{self, Outcome};

/// Buffer sizes of the copy path, smallest first; past the last, a flow
/// is spliced.
const SIZES: [usize; 2] = [1024, 16 * 1024];
/// Where copying goes when splice(2) is unavailable.
const LARGEST: usize = 256 * 1024;

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
    /// Cut by the caller (the drain deadline at shutdown): both sides are
    /// aborted.
    Cut,
}

/// When data last moved, in milliseconds since the relay started: one
/// atomic store per chunk instead of a timer reset per chunk.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
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
    relay_until(
        client,
        upstream,
        timeouts,
        bytes_out,
        bytes_in,
        std::future::pending(),
    )
    .await
}

/// [`relay`], cut with a RST on both sides ([`Ended::Cut`]) when `cut`
/// completes first.
pub async fn relay_until(
    client: TcpStream,
    upstream: TcpStream,
    timeouts: Timeouts,
    bytes_out: &AtomicU64,
    bytes_in: &AtomicU64,
    cut: impl std::future::Future<Output = ()>,
) -> Ended {
    // Requests and answers go out as soon as they are written; bulk flows
    // write large chunks, which TCP_NODELAY does not split.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let ended = tokio::select! {
        ended = pump_both(&client, &upstream, timeouts, &activity, bytes_out, bytes_in) => ended,
        () = cut => Ended::Cut,
    };
    if !matches!(ended, Ended::Closed { .. }) {
        // Tell both peers the connection failed: RST, not FIN.
        super::socket::abort(client);
        super::socket::abort(upstream);
    }
    ended
}

async fn pump_both(
    client: &TcpStream,
    upstream: &TcpStream,
    timeouts: Timeouts,
    activity: &Activity,
    bytes_out: &AtomicU64,
    bytes_in: &AtomicU64,
) -> Ended {
    let up = pump(client, upstream, activity, bytes_out);
    let down = pump(upstream, client, activity, bytes_in);
    tokio::pin!(up, down);
    let mut up_done: Option<u64> = None;
    let mut down_done: Option<u64> = None;
    let mut half_closed_at: Option<Instant> = None;
    // One timer per connection, re-armed only when it fires or a direction
    // ends: idle connections cost no wake-ups.
    let timer = tokio::time::sleep(timeouts.idle);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            r = &mut up, if up_done.is_none() => match r {
                Ok(n) => up_done = Some(n),
                Err(e) => return Ended::Failed(e.kind()),
            },
            r = &mut down, if down_done.is_none() => match r {
                Ok(n) => down_done = Some(n),
                Err(e) => return Ended::Failed(e.kind()),
            },
            () = &mut timer => {
                let now = Instant::now();
                if now >= activity.last() + timeouts.idle {
                    return Ended::IdleTimeout;
                }
                if half_closed_at.is_some_and(|t| now >= t) {
                    return Ended::HalfClosedTimeout;
                }
            }
        }
        if let (Some(to_upstream), Some(to_client)) = (up_done, down_done) {
            return Ended::Closed {
                to_upstream,
                to_client,
            };
        }
        if up_done.is_some() || down_done.is_some() {
            half_closed_at.get_or_insert_with(|| Instant::now() + timeouts.half_closed);
        }
        let idle_at = activity.last() + timeouts.idle;
        let next = half_closed_at.map_or(idle_at, |t| t.min(idle_at));
        if timer.deadline() != next {
            timer.as_mut().reset(next);
        }
    }
}

/// One direction: moves bytes until EOF, then shuts down the write side so
/// the peer sees the FIN. The total moved.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    activity: &Activity,
    counter: &AtomicU64,
) -> io::Result<u64> {
    let mut total = 0u64;
    let mut moved = |n: usize| {
        total += n as u64;
        counter.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
    };
    let mut size = SIZES[0];
    let mut bulk = false;
    let mut can_splice = true;
    loop {
        read_ready(from).await?;
        if bulk && can_splice {
            // Boxed, as the copy burst below: an idle connection's task then
            // holds neither burst's state, only a pointer while one runs.
            match Box::pin(splice::burst(from, to, &mut moved)).await? {
                Outcome::Drained => continue,
                Outcome::Eof => break,
                Outcome::Unsupported => {
                    can_splice = false;
                    size = LARGEST;
                }
            }
        }
        match Box::pin(copy_burst(from, to, size, &mut moved)).await? {
            Copied::Drained => {}
            Copied::Eof => break,
            Copied::Filled => match SIZES.iter().position(|s| *s == size) {
                Some(i) if i + 1 < SIZES.len() => size = SIZES[i + 1],
                _ => bulk = true,
            },
        }
    }
    nix::sys::socket::shutdown(to.as_raw_fd(), nix::sys::socket::Shutdown::Write)?;
    Ok(total)
}

enum Copied {
    Drained,
    Eof,
    /// A read filled the buffer: the flow outgrows it.
    Filled,
}

/// Copies through a buffer of `size` bytes until `from` has nothing more
/// (or a read fills the buffer). The buffer lives only for the burst.
async fn copy_burst(
    from: &TcpStream,
    to: &TcpStream,
    size: usize,
    moved: &mut impl FnMut(usize),
) -> io::Result<Copied> {
    let mut buf = SpareBuffer::take(size);
    loop {
        let n = match read(from, &mut buf) {
            Ok(0) => return Ok(Copied::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Copied::Drained),
            Err(e) => return Err(e),
        };
        write_all(to, &buf[..n]).await?;
        moved(n);
        if n == size && size < LARGEST {
            return Ok(Copied::Filled);
        }
    }
}

/// How many buffers of each size a thread keeps between bursts.
const SPARES_PER_SIZE: usize = 4;

thread_local! {
    /// Buffers of the bursts that ended on this thread, by size: a burst
    /// per message (request/response traffic) would otherwise allocate and
    /// zero a buffer each time (2-3 % of the relay's CPU per round trip,
    /// measured with perf). A few per thread, so idle connections still
    /// hold none.
    static SPARES: std::cell::RefCell<[Vec<Box<[u8]>>; SIZES.len()]> = const {
        std::cell::RefCell::new([Vec::new(), Vec::new()])
    };
}

/// A copy buffer taken from this thread's spares (or allocated), given
/// back to the spares of the thread it is dropped on.
struct SpareBuffer(Box<[u8]>);

impl SpareBuffer {
    fn slot(size: usize) -> Option<usize> {
        // Not `LARGEST`: a quarter MiB per spare is too much to keep.
        SIZES.iter().position(|s| *s == size)
    }

    fn take(size: usize) -> SpareBuffer {
        let spare = Self::slot(size)
            .and_then(|i| SPARES.try_with(|s| s.borrow_mut()[i].pop()).ok().flatten());
        SpareBuffer(spare.unwrap_or_else(|| vec![0u8; size].into_boxed_slice()))
    }
}

impl std::ops::Deref for SpareBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::DerefMut for SpareBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl Drop for SpareBuffer {
    fn drop(&mut self) {
        let Some(i) = Self::slot(self.0.len()) else {
            return;
        };
        let buf = std::mem::take(&mut self.0);
        // A thread being torn down has no spares left to give to.
        let _ = SPARES.try_with(|s| {
            let mut s = s.borrow_mut();
            if s[i].len() < SPARES_PER_SIZE {
                s[i].push(buf);
            }
        });
    }
}

/// A read without waiting (`WouldBlock` when there is nothing). A short
/// read took everything the socket had, so it also clears the readiness,
/// as tokio's own `poll_read` does: the next read waits for the next event
/// instead of costing a syscall that finds nothing, which matters for
/// request/response traffic. The readiness cleared is the one seen before
/// the read, so bytes that arrive meanwhile still wake the reader.
fn read(from: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = None;
    let result = from.try_io(Interest::READABLE, || {
        let n = nix::sys::socket::recv(from.as_raw_fd(), buf, MsgFlags::empty())?;
        got = Some(n);
        if n > 0 && n < buf.len() {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match got {
        Some(n) => Ok(n),
        None => result,
    }
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match to.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => write_ready(to).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Waits until `s` may be readable. `readable()` would do, but its future
/// holds a waiter node (about 150 bytes) in every idle connection's task;
/// `poll_read_ready` keeps the one waker in the socket's own slot. That is
/// enough here: each socket is read by one direction only, and written by
/// the other only ([`write_ready`]).
pub(super) async fn read_ready(s: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| s.poll_read_ready(cx)).await
}

/// [`read_ready`] for writing.
pub(super) async fn write_ready(s: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| s.poll_write_ready(cx)).await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::*;

    const LONG: Timeouts = Timeouts {
        idle: Duration::from_secs(30),
        half_closed: Duration::from_secs(30),
    };

    /// A connected pair: what the relay's client and upstream see.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    struct Relayed {
        client: TcpStream,
        server: TcpStream,
        ended: JoinHandle<Ended>,
        bytes: Arc<(AtomicU64, AtomicU64)>,
    }

    /// A client and a server with the relay between them.
    async fn relayed(timeouts: Timeouts) -> Relayed {
        let (client, relay_client) = pair().await;
        let (relay_upstream, server) = pair().await;
        let bytes = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let b = bytes.clone();
        // The same tests run on the accelerated path when asked (`.ci/run`).
        let accel = crate::relay::accel::test_mode()
            .then(crate::relay::accel::Accel::shared)
            .flatten();
        let ended = tokio::spawn(async move {
            match accel {
                Some(a) => {
                    let never = std::future::pending();
                    crate::relay::accel::relay_until(
                        &a,
                        relay_client,
                        relay_upstream,
                        timeouts,
                        &b.0,
                        &b.1,
                        never,
                    )
                    .await
                }
                None => relay(relay_client, relay_upstream, timeouts, &b.0, &b.1).await,
            }
        });
        Relayed {
            client,
            server,
            ended,
            bytes,
        }
    }

    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Sends `data` in `chunk`-sized writes, then FIN; reads everything the
    /// other way until FIN. The SHA-256 of what was read.
    async fn exchange(
        s: TcpStream,
        data: Vec<u8>,
        chunk: usize,
    ) -> std::io::Result<(String, usize)> {
        let (mut r, mut w) = s.into_split();
        let send = async move {
            for c in data.chunks(chunk) {
                w.write_all(c).await?;
            }
            w.shutdown().await
        };
        let receive = async move {
            let mut h = Sha256::new();
            let mut len = 0;
            let mut buf = vec![0u8; 100_000];
            loop {
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>((hex(&h.finalize()), len));
                }
                h.update(&buf[..n]);
                len += n;
            }
        };
        let ((), got) = tokio::try_join!(send, receive)?;
        Ok(got)
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn sha(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    #[test]
    fn copy_buffers_are_reused_and_few_are_kept() {
        let first = SpareBuffer::take(SIZES[0]);
        let at = first.as_ptr();
        drop(first);
        let again = SpareBuffer::take(SIZES[0]);
        assert_eq!(again.as_ptr(), at, "the spare is taken again");
        assert_eq!(again.len(), SIZES[0]);
        drop(again);
        let many: Vec<SpareBuffer> = (0..10).map(|_| SpareBuffer::take(SIZES[1])).collect();
        drop(many);
        let kept = SPARES.with(|s| s.borrow()[1].len());
        assert_eq!(
            kept, SPARES_PER_SIZE,
            "at most {SPARES_PER_SIZE} spares per size"
        );
        let big = SpareBuffer::take(LARGEST);
        assert_eq!(big.len(), LARGEST);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_both_ways_arrives_intact() {
        // Large writes make it a bulk flow (spliced); the odd sizes cross
        // the buffer sizes of the copy path on the way.
        const LEN: usize = 24 * 1024 * 1024 + 7;
        let r = relayed(LONG).await;
        let (up, down) = (pattern(1, LEN), pattern(2, LEN + 1));
        let (want_up, want_down) = (sha(&up), sha(&down));
        let client = tokio::spawn(exchange(r.client, up, 200_003));
        let server = tokio::spawn(exchange(r.server, down, 65_537));
        assert_eq!(client.await.unwrap().unwrap(), (want_down, LEN + 1));
        assert_eq!(server.await.unwrap().unwrap(), (want_up, LEN));
        assert_eq!(
            r.ended.await.unwrap(),
            Ended::Closed {
                to_upstream: LEN as u64,
                to_client: LEN as u64 + 1,
            }
        );
        assert_eq!(r.bytes.0.load(Ordering::Relaxed), LEN as u64);
        assert_eq!(r.bytes.1.load(Ordering::Relaxed), LEN as u64 + 1);
    }

    #[tokio::test]
    async fn small_messages_after_a_bulk_flow_still_go_through_at_once() {
        let mut r = relayed(LONG).await;
        let bulk = pattern(3, 4 * 1024 * 1024);
        let (mut sr, _sw) = r.server.split();
        let reading = async {
            let mut got = vec![0u8; bulk.len()];
            sr.read_exact(&mut got).await.unwrap();
            got
        };
        let (_, got) = tokio::join!(r.client.write_all(&bulk), reading);
        assert!(got == bulk, "bulk bytes differ");
        // The direction is spliced now; a lone small message must not wait
        // for more to come.
        for i in 0..50u8 {
            r.client.write_all(&[i; 10]).await.unwrap();
            let mut b = [0u8; 10];
            tokio::time::timeout(Duration::from_secs(2), r.server.read_exact(&mut b))
                .await
                .expect("a small message stuck behind the bulk flow")
                .unwrap();
            assert_eq!(b, [i; 10]);
            r.server.write_all(&b).await.unwrap();
            tokio::time::timeout(Duration::from_secs(2), r.client.read_exact(&mut b))
                .await
                .expect("an answer stuck")
                .unwrap();
        }
    }

    #[tokio::test]
    async fn half_close_passes_the_fin_and_keeps_the_answer() {
        let mut r = relayed(LONG).await;
        r.client.write_all(b"question").await.unwrap();
        r.client.shutdown().await.unwrap();
        let mut asked = Vec::new();
        r.server.read_to_end(&mut asked).await.unwrap();
        assert_eq!(
            asked, b"question",
            "the server reads the FIN after the data"
        );
        r.server.write_all(b"answer after your FIN").await.unwrap();
        r.server.shutdown().await.unwrap();
        let mut answer = Vec::new();
        r.client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer after your FIN");
        assert_eq!(
            r.ended.await.unwrap(),
            Ended::Closed {
                to_upstream: 8,
                to_client: 21
            }
        );
    }

    #[tokio::test]
    async fn a_reset_upstream_resets_the_client() {
        let mut r = relayed(LONG).await;
        r.client.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        r.server.read_exact(&mut b).await.unwrap();
        crate::relay::socket::abort(r.server);
        let err = r.client.read(&mut b).await.expect_err("a RST, not a FIN");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(matches!(r.ended.await.unwrap(), Ended::Failed(_)));
    }

    #[tokio::test]
    async fn a_reset_in_a_spliced_flow_resets_the_other_side() {
        let mut r = relayed(LONG).await;
        let bulk = pattern(4, 1024 * 1024);
        let (mut sr, _sw) = r.server.split();
        let mut got = vec![0u8; bulk.len()];
        let (w, rd) = tokio::join!(r.client.write_all(&bulk), sr.read_exact(&mut got));
        w.unwrap();
        rd.unwrap();
        crate::relay::socket::abort(r.client);
        let mut b = [0u8; 1];
        let err = r.server.read(&mut b).await.expect_err("a RST, not a FIN");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(matches!(r.ended.await.unwrap(), Ended::Failed(_)));
    }

    #[tokio::test]
    async fn an_idle_connection_is_aborted_after_the_idle_timeout() {
        let timeouts = Timeouts {
            idle: Duration::from_millis(300),
            half_closed: Duration::from_secs(30),
        };
        let mut r = relayed(timeouts).await;
        // Traffic keeps it alive past one idle period.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            r.client.write_all(b"k").await.unwrap();
            let mut b = [0u8; 1];
            r.server.read_exact(&mut b).await.unwrap();
        }
        let started = Instant::now();
        let mut b = [0u8; 1];
        let err = r.client.read(&mut b).await.expect_err("a RST once idle");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
            "aborted after {waited:?}"
        );
        assert_eq!(r.ended.await.unwrap(), Ended::IdleTimeout);
    }

    #[tokio::test]
    async fn a_half_closed_connection_gets_only_the_half_closed_timeout() {
        let timeouts = Timeouts {
            idle: Duration::from_secs(30),
            half_closed: Duration::from_millis(300),
        };
        let mut r = relayed(timeouts).await;
        r.client.shutdown().await.unwrap();
        let mut b = [0u8; 1];
        assert_eq!(r.server.read(&mut b).await.unwrap(), 0, "the FIN arrives");
        // The open direction stays usable until the timeout.
        r.server.write_all(b"late").await.unwrap();
        let mut late = [0u8; 4];
        r.client.read_exact(&mut late).await.unwrap();
        assert_eq!(r.ended.await.unwrap(), Ended::HalfClosedTimeout);
    }
}
