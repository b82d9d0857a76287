//! The libvirt connection. libvirt calls block, so one dedicated thread owns
//! the connection and runs jobs sent to it; async code awaits the answers.
//! A call that finds the connection dead drops it, and the next call
//! reconnects: a libvirtd restart costs one failed call, not the supervisor.

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use virt::connect::Connect;

pub const SYSTEM_URI: &str = "qemu:///system";

/// How long a caller waits for one libvirt call. A hung libvirtd must not
/// stall the supervisor forever; the call itself finishes, or not, on the
/// libvirt thread. Generous: libvirtd's first define probes qemu, which
/// takes seconds on a loaded machine. Polling uses a short one.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    #[error("libvirt: {0}")]
    Call(#[from] virt::error::Error),
    #[error("cannot connect to libvirt at {uri} within {waited:?}: {last}")]
    Connect {
        uri: String,
        waited: Duration,
        last: String,
    },
    #[error("the libvirt worker thread is gone")]
    WorkerGone,
    #[error("cannot start the libvirt thread: {0}")]
    Thread(std::io::Error),
    #[error("libvirt did not answer within {0:?}; is libvirtd hung?")]
    Timeout(Duration),
    #[error(transparent)]
    DomainXml(#[from] super::domain::DomainError),
}

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// A handle to the libvirt thread; cheap to clone.
#[derive(Clone)]
pub struct Libvirt {
    jobs: std_mpsc::Sender<Job>,
}

struct Worker {
    uri: String,
    conn: Option<Connect>,
}

impl Worker {
    fn connection(&mut self) -> Result<&Connect, virt::error::Error> {
        if let Some(c) = &self.conn
            && !c.is_alive().unwrap_or(false)
        {
            tracing::warn!("libvirt connection lost; reconnecting");
            if let Some(mut c) = self.conn.take() {
                let _ = c.close();
            }
        }
        if self.conn.is_none() {
            self.conn = Some(Connect::open(Some(&self.uri))?);
            tracing::debug!(uri = %self.uri, "connected to libvirt");
        }
        Ok(self.conn.as_ref().expect("just connected"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut c) = self.conn.take() {
            let _ = c.close();
        }
    }
}

impl Libvirt {
    /// Starts the thread. Nothing connects until the first call. Fails
    /// only when the OS refuses a thread (out of memory or thread limit).
    pub fn spawn(uri: &str) -> Result<Libvirt, LibvirtError> {
        let (jobs, rx) = std_mpsc::channel::<Job>();
        let uri = uri.to_string();
        std::thread::Builder::new()
            .name("libvirt".into())
            .spawn(move || {
                // Errors are returned to callers; libvirt's own default
                // handler would print them to stderr a second time.
                virt::error::clear_error_callback();
                let mut worker = Worker { uri, conn: None };
                while let Ok(job) = rx.recv() {
                    job(&mut worker);
                }
            })
            .map_err(LibvirtError::Thread)?;
        Ok(Libvirt { jobs })
    }

    /// Runs `f` with a live connection on the libvirt thread.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connect) -> Result<T, virt::error::Error> + Send + 'static,
    ) -> Result<T, LibvirtError> {
        self.call_within(CALL_TIMEOUT, f).await
    }

    /// Like `call`, giving up waiting after `timeout`.
    pub async fn call_within<T: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&Connect) -> Result<T, virt::error::Error> + Send + 'static,
    ) -> Result<T, LibvirtError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |worker: &mut Worker| {
            let result = worker.connection().and_then(f);
            if result.is_err() {
                // A failed call may mean a dead connection: check next time.
                if let Some(c) = &worker.conn
                    && !c.is_alive().unwrap_or(false)
                {
                    worker.conn = None;
                }
            }
            let _ = tx.send(result);
        });
        self.jobs.send(job).map_err(|_| LibvirtError::WorkerGone)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(answer) => Ok(answer.map_err(|_| LibvirtError::WorkerGone)??),
            Err(_) => Err(LibvirtError::Timeout(timeout)),
        }
    }

    /// Retries connecting until it works or `timeout` passes.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), LibvirtError> {
        let start = Instant::now();
        loop {
            match self.call(|conn| conn.get_lib_version()).await {
                Ok(_) => return Ok(()),
                Err(LibvirtError::Call(e)) if start.elapsed() < timeout => {
                    tracing::debug!(error = %e, "libvirt not reachable yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(LibvirtError::Call(e)) => {
                    return Err(LibvirtError::Connect {
                        uri: SYSTEM_URI.into(),
                        waited: timeout,
                        last: e.to_string(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }
}
