//! One relayed connection on the accelerated path.
//!
//! Lifecycle: measure both sockets' counters, join the maps (`peers`, then
//! `joined`), then kick each joined socket (SO_RCVLOWAT runs the receive
//! callback at once, so bytes that arrived before joining go through the
//! verdict too instead of waiting for the next segment). From then on the
//! kernel moves the bytes and userspace waits for each socket to become
//! readable, which happens at EOF, on an error, or if a verdict found no
//! peer (SK_PASS: those bytes are copied by hand).
//!
//! Half-close: userspace learns of a FIN as on any socket (poll reports
//! it, recv returns 0). Bytes redirected before it may still sit in the
//! peer's psock queue, not yet in its send queue, so the FIN is passed on
//! (shutdown(SHUT_WR)) only once the peer has taken every byte: the peer's
//! write sequence (bytes acked + SIOCOUTQ) has advanced by as much as the
//! reading socket's receive sequence (TCP_INFO bytes_received, which
//! counts the FIN as one) since the start. The same figures are the byte
//! counters. Both sockets leave the maps when the connection ends.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Accel, Key};
use crate::relay::copy::{self, Ended, Timeouts};

/// How often the byte counters are brought up to date while the kernel
/// moves the bytes (and the idle timer is checked at the latest).
const REFRESH: Duration = Duration::from_secs(5);

/// TCP_INFO's u64 counters (struct tcp_info, include/uapi/linux/tcp.h).
const TCPI_BYTES_ACKED: usize = 120;
const TCPI_BYTES_RECEIVED: usize = 128;

fn tcp_info(fd: RawFd) -> io::Result<(u64, u64)> {
    let mut buf = [0u8; 232];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: a buffer of `len` bytes for the kernel to fill.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < TCPI_BYTES_RECEIVED + 8 {
        return Err(io::Error::other("TCP_INFO too short: no byte counters"));
    }
    let at = |o: usize| u64::from_ne_bytes(buf[o..o + 8].try_into().unwrap_or([0; 8]));
    Ok((at(TCPI_BYTES_ACKED), at(TCPI_BYTES_RECEIVED)))
}

fn ioctl_int(fd: RawFd, req: libc::Ioctl) -> io::Result<u64> {
    let mut v: libc::c_int = 0;
    // SAFETY: SIOCINQ/SIOCOUTQ write one int.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::ioctl(fd, req, &mut v) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v.max(0) as u64)
}

/// Bytes ever written into the socket's send queue (by anyone): acked +
/// still queued, read until the acked count is the same before and after
/// the queue length, so the two agree.
fn written(fd: RawFd) -> io::Result<u64> {
    for _ in 0..100 {
        let (a1, _) = tcp_info(fd)?;
        let q = ioctl_int(fd, libc::TIOCOUTQ)?;
        let (a2, _) = tcp_info(fd)?;
        if a1 == a2 {
            return Ok(a1 + q);
        }
    }
    Err(io::Error::other("the send counters would not settle"))
}

/// Bytes the socket received and someone already took: received minus
/// still queued, likewise settled. Only meaningful before joining (a
/// joined socket's SIOCINQ counts its psock queue instead).
fn consumed(fd: RawFd) -> io::Result<u64> {
    for _ in 0..100 {
        let (_, r1) = tcp_info(fd)?;
        let q = ioctl_int(fd, libc::FIONREAD)?;
        let (_, r2) = tcp_info(fd)?;
        if r1 == r2 {
            return Ok(r1.saturating_sub(q));
        }
    }
    Err(io::Error::other("the receive counters would not settle"))
}

fn kick(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid fd and an int option.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The send buffer a joined socket gets (the kernel doubles it): twice
/// what autotuning reaches by default (tcp_wmem's 4 MiB).
///
/// The kernel's psock worker sends redirected bytes into the peer's send
/// queue; when that is full it retries a jiffy later (4 ms at HZ=250)
/// rather than when space frees up (net/core/skmsg.c, sk_psock_backlog:
/// write space cannot bring forward the delayed work already queued), so
/// one stream stalls whenever the queue fills. A larger, fixed buffer
/// makes that rarer: one iperf3 stream through `vmpod relay ingress
/// --accel auto` on loopback went from 5.9 to 7.9 Gbit/s (means of 10
/// interleaved pairs). It is a limit, not an allocation: an idle
/// connection holds nothing more.
const JOINED_SNDBUF: usize = 4 << 20;

/// SO_SNDBUFFORCE, since plain SO_SNDBUF is capped at net.core.wmem_max
/// (208 KiB unless raised, less than autotuning's own ceiling); it needs
/// CAP_NET_ADMIN, which the maps need anyway. Only speed depends on it.
fn widen_send_buffer(fd: BorrowedFd<'_>) {
    let forced = setsockopt(&fd, sockopt::SndBufForce, &JOINED_SNDBUF);
    if let Err(e) = forced {
        tracing::debug!(error = %e, "relay acceleration: the send buffer keeps its autotuned size");
    }
}

/// One side of a joined pair: its key, fd, and counters at the start.
struct Side {
    key: Key,
    fd: RawFd,
    consumed0: u64,
    written0: u64,
    /// In `joined`: the kernel moves what this socket receives.
    verdict: bool,
}

impl Side {
    fn new(fd: RawFd, key: Key) -> io::Result<Side> {
        Ok(Side {
            key,
            fd,
            consumed0: consumed(fd)?,
            written0: written(fd)?,
            verdict: false,
        })
    }
}

struct Joined {
    a: Side,
    b: Side,
}

/// Joins the pair (a = client side, b = upstream side); on an error
/// nothing has changed for either socket but its send buffer's size: the
/// caller copies as usual.
fn join(accel: &Accel, a: (BorrowedFd<'_>, Key), b: (BorrowedFd<'_>, Key)) -> io::Result<Joined> {
    widen_send_buffer(a.0);
    widen_send_buffer(b.0);
    let mut a = Side::new(a.0.as_raw_fd(), a.1)?;
    let mut b = Side::new(b.0.as_raw_fd(), b.1)?;
    Accel::insert(&accel.peers, &a.key, b.fd)?;
    if let Err(e) = Accel::insert(&accel.peers, &b.key, a.fd) {
        Accel::remove(&accel.peers, &a.key);
        return Err(e);
    }
    // No verdict has run yet: leaving `peers` loses nothing.
    if let Err(e) = Accel::insert(&accel.joined, &a.key, a.fd) {
        Accel::remove(&accel.peers, &a.key);
        Accel::remove(&accel.peers, &b.key);
        return Err(e);
    }
    a.verdict = true;
    // From here on a's bytes go to b in the kernel. If b cannot join (a FIN
    // or RST from upstream arrived meanwhile), b's bytes keep going
    // through userspace, which is still correct.
    b.verdict = Accel::insert(&accel.joined, &b.key, b.fd).is_ok();
    kick(a.fd)?;
    if b.verdict {
        kick(b.fd)?;
    }
    super::JOINED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(Joined { a, b })
}

impl Joined {
    fn leave(&self, accel: &Accel) {
        for s in [&self.a, &self.b] {
            if s.verdict {
                Accel::remove(&accel.joined, &s.key);
            }
            Accel::remove(&accel.peers, &s.key);
        }
    }
}

/// The bytes moved from `from` to `to` so far, and whether all of them
/// are through once `from` has seen its FIN (`eof`).
fn moved(from: &Side, to: &Side, eof: bool) -> io::Result<(u64, bool)> {
    let (_, received) = tcp_info(from.fd)?;
    let want = received
        .saturating_sub(from.consumed0)
        .saturating_sub(u64::from(eof));
    let got = written(to.fd)?.saturating_sub(to.written0);
    Ok((got.min(want), eof && got >= want))
}

/// [`copy::relay_until`] on the accelerated path, or that itself when the
/// pair cannot join.
pub async fn relay_until(
    accel: &Accel,
    client: TcpStream,
    upstream: TcpStream,
    timeouts: Timeouts,
    bytes_out: &AtomicU64,
    bytes_in: &AtomicU64,
    cut: impl std::future::Future<Output = ()>,
) -> Ended {
    let keys = Key::of(&client).and_then(|c| Ok((c, Key::of(&upstream)?)));
    let joined =
        keys.and_then(|(kc, ku)| join(accel, (client.as_fd(), kc), (upstream.as_fd(), ku)));
    let joined = match joined {
        Ok(j) => j,
        Err(e) => {
            tracing::debug!(error = %e, "relay acceleration: this connection is copied in userspace");
            return copy::relay_until(client, upstream, timeouts, bytes_out, bytes_in, cut).await;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let ended = tokio::select! {
        e = watch(&client, &upstream, &joined, timeouts, bytes_out, bytes_in) => e,
        () = cut => Ended::Cut,
    };
    joined.leave(accel);
    if !matches!(ended, Ended::Closed { .. }) {
        crate::relay::socket::abort(client);
        crate::relay::socket::abort(upstream);
    }
    ended
}

/// What has been added to the shared counters, per direction.
struct Published {
    out: u64,
    inn: u64,
}

fn publish(
    j: &Joined,
    p: &mut Published,
    done: (&AtomicBool, &AtomicBool),
    bytes_out: &AtomicU64,
    bytes_in: &AtomicU64,
) {
    if let Ok((n, _)) = moved(&j.a, &j.b, done.0.load(Ordering::Relaxed)) {
        bytes_out.fetch_add(n.saturating_sub(p.out), Ordering::Relaxed);
        p.out = p.out.max(n);
    }
    if let Ok((n, _)) = moved(&j.b, &j.a, done.1.load(Ordering::Relaxed)) {
        bytes_in.fetch_add(n.saturating_sub(p.inn), Ordering::Relaxed);
        p.inn = p.inn.max(n);
    }
}

fn progress(j: &Joined) -> u64 {
    let r = |fd| tcp_info(fd).map_or(0, |(_, r)| r);
    r(j.a.fd) + r(j.b.fd)
}

async fn watch(
    client: &TcpStream,
    upstream: &TcpStream,
    j: &Joined,
    timeouts: Timeouts,
    bytes_out: &AtomicU64,
    bytes_in: &AtomicU64,
) -> Ended {
    let (up_eof, down_eof) = (AtomicBool::new(false), AtomicBool::new(false));
    let up = direction(client, upstream, &j.a, &j.b, &up_eof);
    let down = direction(upstream, client, &j.b, &j.a, &down_eof);
    tokio::pin!(up, down);
    let mut up_done: Option<u64> = None;
    let mut down_done: Option<u64> = None;
    let mut half_closed_at: Option<Instant> = None;
    let mut published = Published { out: 0, inn: 0 };
    let mut last_progress = progress(j);
    let mut active_at = Instant::now();
    let next_tick = |active_at: Instant, half: Option<Instant>| {
        let t = (active_at + timeouts.idle).min(Instant::now() + REFRESH);
        half.map_or(t, |h| h.min(t))
    };
    let timer = tokio::time::sleep_until(next_tick(active_at, None));
    tokio::pin!(timer);
    let flags = (&up_eof, &down_eof);
    loop {
        tokio::select! {
            r = &mut up, if up_done.is_none() => match r {
                Ok(n) => up_done = Some(n),
                Err(e) => {
                    publish(j, &mut published, flags, bytes_out, bytes_in);
                    return Ended::Failed(e.kind());
                }
            },
            r = &mut down, if down_done.is_none() => match r {
                Ok(n) => down_done = Some(n),
                Err(e) => {
                    publish(j, &mut published, flags, bytes_out, bytes_in);
                    return Ended::Failed(e.kind());
                }
            },
            () = &mut timer => {
                publish(j, &mut published, flags, bytes_out, bytes_in);
                let now = Instant::now();
                let p = progress(j);
                if p != last_progress {
                    last_progress = p;
                    active_at = now;
                }
                if now >= active_at + timeouts.idle {
                    return Ended::IdleTimeout;
                }
                if half_closed_at.is_some_and(|t| now >= t) {
                    return Ended::HalfClosedTimeout;
                }
            }
        }
        if let (Some(to_upstream), Some(to_client)) = (up_done, down_done) {
            bytes_out.fetch_add(to_upstream.saturating_sub(published.out), Ordering::Relaxed);
            bytes_in.fetch_add(to_client.saturating_sub(published.inn), Ordering::Relaxed);
            return Ended::Closed {
                to_upstream,
                to_client,
            };
        }
        if up_done.is_some() || down_done.is_some() {
            if half_closed_at.is_none() {
                // Data moved up to the FIN counts as activity.
                active_at = Instant::now();
                last_progress = progress(j);
            }
            half_closed_at.get_or_insert_with(|| Instant::now() + timeouts.half_closed);
        }
        timer.as_mut().reset(next_tick(active_at, half_closed_at));
    }
}

/// One direction: waits for `from`'s EOF (copying by hand whatever the
/// kernel left to userspace), waits until `to` has taken every byte, then
/// passes the FIN on. The bytes moved.
async fn direction(
    from: &TcpStream,
    to: &TcpStream,
    from_side: &Side,
    to_side: &Side,
    eof: &AtomicBool,
) -> io::Result<u64> {
    loop {
        from.readable().await?;
        let mut buf = vec![0u8; 16 * 1024];
        let got = from.try_io(Interest::READABLE, || {
            nix::sys::socket::recv(
                from.as_raw_fd(),
                &mut buf,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            )
            .map_err(io::Error::from)
        });
        match got {
            Ok(0) => break,
            Ok(n) => write_all(to, &buf[..n]).await?,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    let mut wait = Duration::from_micros(200);
    let total = loop {
        let (n, through) = moved(from_side, to_side, true)?;
        if through {
            break n;
        }
        if let Some(e) = to.take_error()? {
            return Err(e);
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(20));
    };
    eof.store(true, Ordering::Relaxed);
    nix::sys::socket::shutdown(to.as_raw_fd(), nix::sys::socket::Shutdown::Write)?;
    Ok(total)
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match to.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The self-test `auto` runs once: a loopback pair of pairs joined as a
/// relay would join them, with a byte each way, one of them sent before
/// joining. Proves the kernel takes the program, the keys match what the
/// program builds, and redirected bytes arrive.
pub fn probe(accel: &Accel) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let err = |what: &str, e: io::Error| format!("{what}: {e}");
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| err("bind", e))?;
    let addr = l.local_addr().map_err(|e| err("bind", e))?;
    let mut client = TcpStream::connect(addr).map_err(|e| err("connect", e))?;
    let (relay_client, _) = l.accept().map_err(|e| err("accept", e))?;
    let relay_upstream = TcpStream::connect(addr).map_err(|e| err("connect", e))?;
    let (mut server, _) = l.accept().map_err(|e| err("accept", e))?;
    client.write_all(b"early").map_err(|e| err("write", e))?;
    // Let "early" land in relay_client's receive queue before joining.
    std::thread::sleep(Duration::from_millis(20));
    let key = |s: &TcpStream| -> io::Result<Key> { Ok(Key::new(s.local_addr()?, s.peer_addr()?)) };
    let kc = key(&relay_client).map_err(|e| err("addresses", e))?;
    let ku = key(&relay_upstream).map_err(|e| err("addresses", e))?;
    let j = join(
        accel,
        (relay_client.as_fd(), kc),
        (relay_upstream.as_fd(), ku),
    )
    .map_err(|e| err("joining the maps", e))?;
    let result = (|| {
        for s in [&client, &server] {
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .map_err(|e| err("timeout", e))?;
        }
        let mut got = [0u8; 5];
        server
            .read_exact(&mut got)
            .map_err(|e| err("no redirected bytes upstream", e))?;
        if &got != b"early" {
            return Err(format!("upstream got {got:?}"));
        }
        if !j.b.verdict {
            return Err("the upstream socket could not join".into());
        }
        server.write_all(b"late").map_err(|e| err("write", e))?;
        let mut got = [0u8; 4];
        client
            .read_exact(&mut got)
            .map_err(|e| err("no redirected bytes back", e))?;
        if &got != b"late" {
            return Err(format!("the client got {got:?}"));
        }
        Ok(())
    })();
    j.leave(accel);
    result
}
