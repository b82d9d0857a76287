//! An alternative home for relayed connections: one current-thread tokio
//! runtime per core, each on its own thread, a connection pinned to one of
//! them for its whole life (round robin at accept). Off unless asked for
//! (`vmpod relay --runtime workers`): on this 2-core development machine,
//! loaded by other builds (load average 14-16), it measured the same
//! request/response latency as the multi-thread runtime, and whether it
//! helps on a quiet machine is still to be measured.
//!
//! Why it might: on a multi-thread runtime, a readiness event that wakes a
//! connection's task may also wake an idle worker to look for work to
//! steal (a futex wake, and on a VM an idle vCPU woken by an IPI), which a
//! request/response exchange pays per message; a connection that lives on
//! one current-thread runtime with its own epoll never crosses threads.
//! One runtime per core keeps many connections spread over every core.
//!
//! The accepting task runs wherever the caller's runtime put it; a socket
//! it accepted is registered with that runtime's driver, so it is moved to
//! the worker's driver (`into_std`, `from_std`) before it is used there.

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};

struct Pool {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

static POOL: OnceLock<Pool> = OnceLock::new();

/// On: connections run on the workers; off (the default): on the
/// accepting runtime.
static ENABLED: AtomicBool = AtomicBool::new(false);

pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// How many worker threads: the cores this process may use (the cgroup's
/// CPU quota and affinity count), at least one.
fn size() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let mut handles = Vec::new();
        for i in 0..size() {
            match start_worker(i) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    tracing::warn!(error = %e, worker = i, "cannot start a relay worker thread")
                }
            }
        }
        Pool {
            handles,
            next: AtomicUsize::new(0),
        }
    })
}

/// A thread driving a current-thread runtime until the process exits.
fn start_worker(i: usize) -> std::io::Result<Handle> {
    let rt = Builder::new_current_thread().enable_all().build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name(format!("vmpod-relay-{i}"))
        .spawn(move || rt.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

/// Runs `task` on the next worker; on the caller's runtime when no worker
/// thread could be started.
pub fn spawn<F>(task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    if !ENABLED.load(Ordering::Relaxed) {
        tokio::spawn(task);
        return;
    }
    let pool = pool();
    if pool.handles.is_empty() {
        tokio::spawn(task);
        return;
    }
    let i = pool.next.fetch_add(1, Ordering::Relaxed) % pool.handles.len();
    pool.handles[i].spawn(task);
}

/// Moves an accepted socket to the runtime of the task that calls this
/// (its readiness then comes from that runtime's epoll); a no-op when the
/// workers are off.
pub fn adopt(stream: tokio::net::TcpStream) -> std::io::Result<tokio::net::TcpStream> {
    if !ENABLED.load(Ordering::Relaxed) {
        return Ok(stream);
    }
    let std = stream.into_std()?;
    tokio::net::TcpStream::from_std(std)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_runs_on_a_worker_thread_with_its_adopted_socket() {
        // Process-wide; no other test of this binary turns it off.
        set_enabled(true);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            b
        });
        let (accepted, _) = l.accept().await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let name = std::thread::current().name().map(str::to_string);
            let mut s = adopt(accepted).unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&b).await.unwrap();
            let _ = tx.send(name);
        });
        assert_eq!(&client.await.unwrap(), b"ping");
        let name = rx.await.unwrap().unwrap_or_default();
        assert!(name.starts_with("vmpod-relay-"), "ran on {name}");
    }
}
