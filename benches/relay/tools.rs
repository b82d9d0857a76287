//! The clients and the server the benchmark runs inside the namespaces.
//! Clients print one JSON object on stdout.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A connection whose first byte is this gets one answer of
/// `CPS_REQUEST` bytes, then the server closes (as an HTTP/1.0 server
/// would), so the client keeps no TIME_WAIT and never runs out of ports.
pub const CPS_MARK: u8 = b'C';
pub const CPS_REQUEST: usize = 64;

pub fn serve(listen: &[SocketAddr]) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        for addr in listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind {addr}"))?;
            tokio::spawn(async move {
                loop {
                    if let Ok((s, _)) = listener.accept().await {
                        tokio::spawn(echo(s));
                    }
                }
            });
        }
        // Until the benchmark kills it.
        std::future::pending::<Result<()>>().await
    })
}

async fn echo(mut s: tokio::net::TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 4096];
    let Ok(n @ 1..) = s.read(&mut buf).await else {
        return;
    };
    if buf[0] == CPS_MARK {
        let mut got = n;
        while got < CPS_REQUEST {
            match s.read(&mut buf[got..CPS_REQUEST]).await {
                Ok(0) | Err(_) => return,
                Ok(m) => got += m,
            }
        }
        let _ = s.write_all(&buf[..CPS_REQUEST]).await;
        return;
    }
    let mut n = n;
    loop {
        if s.write_all(&buf[..n]).await.is_err() {
            return;
        }
        n = match s.read(&mut buf).await {
            Ok(0) => {
                let _ = s.shutdown().await;
                return;
            }
            Ok(n) => n,
            Err(_) => return,
        };
    }
}

fn connect(to: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .with_context(|| format!("connect {to}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// Round trips of `size` bytes to every target, interleaved: `block`
/// round trips to one, then the next, and so on, so a change in the
/// machine's load (two cores, a noisy neighbour) lands on every target
/// alike instead of on whichever ran at that moment. Every sample is kept,
/// so the percentiles are exact. Prints one JSON object per target, in
/// order, as a JSON array.
pub fn rr(targets: &[SocketAddr], size: usize, count: usize, block: usize) -> Result<()> {
    let mut conns: Vec<TcpStream> = targets.iter().map(|t| connect(*t)).collect::<Result<_>>()?;
    let msg = vec![b'E'; size];
    let mut back = vec![0u8; size];
    let mut round_trip = |s: &mut TcpStream| -> Result<f64> {
        let t = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
        Ok(t.elapsed().as_nanos() as f64 / 1000.0)
    };
    let warmup = (count / 10).max(100);
    for (s, to) in conns.iter_mut().zip(targets) {
        for _ in 0..warmup {
            round_trip(s).with_context(|| format!("round trip to {to}"))?;
        }
    }
    let block = block.clamp(1, count.max(1));
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(count); targets.len()];
    let mut round = 0;
    while samples.iter().any(|s| s.len() < count) {
        // Rotated each round: no target always runs right after another.
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            let want = block.min(count - samples[i].len());
            for _ in 0..want {
                let us = round_trip(&mut conns[i])
                    .with_context(|| format!("round trip to {}", targets[i]))?;
                samples[i].push(us);
            }
        }
        round += 1;
    }
    let out: Vec<serde_json::Value> = targets
        .iter()
        .zip(&mut samples)
        .map(|(to, s)| {
            s.sort_by(f64::total_cmp);
            let pct = |p: f64| s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
            let mean = s.iter().sum::<f64>() / s.len() as f64;
            serde_json::json!({
                "to": to.to_string(),
                "p50_us": pct(0.50), "p99_us": pct(0.99), "p999_us": pct(0.999),
                "mean_us": mean, "samples": s.len(),
            })
        })
        .collect();
    println!("{}", serde_json::Value::Array(out));
    Ok(())
}

pub fn cps(to: SocketAddr, secs: f64, concurrency: usize) -> Result<()> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (done, failed) = (done.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut request = [b'r'; CPS_REQUEST];
                request[0] = CPS_MARK;
                let mut answer = Vec::with_capacity(CPS_REQUEST);
                while Instant::now() < deadline {
                    let ok = (|| -> Result<bool> {
                        let mut s = connect(to)?;
                        s.write_all(&request)?;
                        answer.clear();
                        s.read_to_end(&mut answer)?;
                        Ok(answer.len() == CPS_REQUEST)
                    })();
                    match ok {
                        Ok(true) => done.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let done = done.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({ "cps": done as f64 / elapsed, "done": done, "failed": failed })
    );
    Ok(())
}

pub fn hold(to: SocketAddr, count: usize) -> Result<()> {
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let mut s = connect(to).with_context(|| format!("connection {i} of {count}"))?;
        s.write_all(b"h")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .with_context(|| format!("echo on connection {i} of {count}"))?;
        if b[0] != b'h' {
            bail!("connection {i}: echo {:?}", b[0]);
        }
        held.push(s);
    }
    println!("ready {count}");
    std::io::stdout().flush()?;
    // Until the benchmark closes our stdin.
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    drop(held);
    Ok(())
}

/// A DNS query for `name` (type A, class IN, RD set) with id `id`.
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend(id.to_be_bytes());
    q.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    q
}

/// The cluster's DNS server: every query gets one A record (10.1.2.3),
/// answered at once from one thread, so what is measured is the path.
pub fn dns_serve(listen: SocketAddr) -> Result<()> {
    let s = std::net::UdpSocket::bind(listen).with_context(|| format!("bind udp {listen}"))?;
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, from)) = s.recv_from(&mut buf) else {
            continue;
        };
        if n < 12 || n + 16 > buf.len() {
            continue;
        }
        // QR, opcode 0, RD copied, RA; one answer: a pointer to the
        // question's name, A IN, TTL 60, 4 bytes.
        buf[2] = 0x80 | (buf[2] & 0x01);
        buf[3] = 0x80;
        buf[6..8].copy_from_slice(&1u16.to_be_bytes());
        let answer = [0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 1, 2, 3];
        buf[n..n + answer.len()].copy_from_slice(&answer);
        let _ = s.send_to(&buf[..n + answer.len()], from);
    }
}

/// vmpod's DNS forwarder (the library's, as `vmpod run` starts it, on a
/// multi-thread runtime) on `listen`, forwarding to `upstream`.
pub fn dns_forward(listen: SocketAddr, upstream: SocketAddr) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let fwd = vmpod::dns::DnsForwarder::bind(vmpod::dns::ForwarderConfig::new(
            listen,
            vec![upstream],
        ))?;
        fwd.run().await;
        Ok(())
    })
}

/// Sequential UDP queries to `to`; every sample kept, exact percentiles.
pub fn dns_rr(to: SocketAddr, count: usize) -> Result<()> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    s.connect(to)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let warmup = (count / 10).max(100);
    let mut samples = Vec::with_capacity(count);
    let mut back = [0u8; 1500];
    let mut lost = 0u64;
    for i in 0..warmup + count {
        let id = i as u16;
        let q = dns_query(id, "web.default.svc.cluster.local");
        let t = Instant::now();
        s.send(&q)?;
        let ok = loop {
            match s.recv(&mut back) {
                Ok(n) if n >= 2 && back[..2] == id.to_be_bytes() => break true,
                Ok(_) => continue,
                Err(_) => break false,
            }
        };
        if !ok {
            lost += 1;
            if lost > 100 {
                bail!("more than 100 queries to {to} unanswered");
            }
            continue;
        }
        if i >= warmup {
            samples.push(t.elapsed().as_nanos() as f64 / 1000.0);
        }
    }
    samples.sort_by(f64::total_cmp);
    let pct =
        |p: f64| samples[((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    println!(
        "{}",
        serde_json::json!({
            "p50_us": pct(0.50), "p99_us": pct(0.99), "p999_us": pct(0.999),
            "samples": samples.len(), "lost": lost,
        })
    );
    Ok(())
}
