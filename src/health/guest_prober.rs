//! Runs the guest probes of the plan: from vmpod to the guest's address on
//! the bridge (TCP, HTTP) or through libvirt to the guest agent, every
//! `period`, each check bounded by `timeout`. Results go to [`Health`]
//! (readiness and metrics); a liveness probe that fails tells the
//! supervisor, which restarts the guest, and stops. The supervisor starts
//! the probers each time the guest (re)starts, so `initial_delay` and the
//! counts run from the guest's start.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::Health;
use super::guest_probe::{GuestProbePlan, ProbeAction, ProbeKind, ProbeSpec, ProbeState, Verdict};
use crate::libvirt::guest::Guest;

/// How the checks reach the guest; faked in the supervisor's tests.
pub trait Checker: Clone + Send + Sync + 'static {
    /// Ok when the guest answers as the action wants; why not otherwise.
    /// The caller bounds it by `timeout` too.
    fn check(
        &self,
        action: &ProbeAction,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// The real checks: sockets from the pod namespace, the agent via libvirt.
#[derive(Clone)]
pub struct GuestChecker {
    pub guest: Arc<Guest>,
}

impl Checker for GuestChecker {
    async fn check(&self, action: &ProbeAction, timeout: Duration) -> Result<(), String> {
        match action {
            ProbeAction::Tcp(addr) => TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            ProbeAction::Http { addr, path } => http_get(*addr, path).await,
            ProbeAction::Agent => self
                .guest
                .agent_ping(timeout)
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

/// `GET path`; any status from 200 to 399 passes, as in Kubernetes.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: vmpod-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    // The status line is all a probe reads.
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("cannot read the answer: {e}")),
        }
    }
    status_verdict(&head)
}

fn status_verdict(head: &[u8]) -> Result<(), String> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end();
    let mut words = line.split(' ');
    let code = match (words.next(), words.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code.parse::<u16>().ok(),
        _ => None,
    };
    match code {
        Some(200..=399) => Ok(()),
        Some(_) => Err(format!("answered `{}`", line.escape_debug())),
        None if line.is_empty() => Err("closed the connection without an answer".into()),
        None => Err(format!(
            "answered something that is not HTTP: `{}`",
            line.chars().take(80).collect::<String>().escape_debug()
        )),
    }
}

/// The running probers; dropping this stops them.
#[derive(Default)]
pub struct GuestProbers {
    tasks: Vec<JoinHandle<()>>,
}

impl GuestProbers {
    /// Stops `task` with the probers.
    pub fn also_stop(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }
}

impl Drop for GuestProbers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts one task per probe of `plan`. A failing liveness probe sends its
/// reason on `unhealthy` and stops.
pub fn start<C: Checker>(
    plan: &GuestProbePlan,
    checker: &C,
    health: &Arc<Health>,
    unhealthy: &mpsc::Sender<String>,
) -> GuestProbers {
    health.probes_restarted();
    GuestProbers {
        tasks: plan
            .iter()
            .map(|spec| {
                tokio::spawn(run(
                    spec.clone(),
                    checker.clone(),
                    health.clone(),
                    unhealthy.clone(),
                ))
            })
            .collect(),
    }
}

async fn run<C: Checker>(
    spec: ProbeSpec,
    checker: C,
    health: Arc<Health>,
    unhealthy: mpsc::Sender<String>,
) {
    tokio::time::sleep(spec.initial_delay).await;
    let mut state = ProbeState::default();
    let mut tick = tokio::time::interval(spec.period);
    // A slow check delays the next one rather than bunching them up.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let probe = spec.kind.as_str();
    let target = spec.action.to_string();
    loop {
        tick.tick().await;
        let t = tokio::time::Instant::now();
        let result =
            match tokio::time::timeout(spec.timeout, checker.check(&spec.action, spec.timeout))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {:?}", spec.timeout)),
            };
        let ok = result.is_ok();
        let changed = state.record(&spec, result);
        health.probe_result(spec.kind, &state, ok, t.elapsed());
        match changed {
            Some(Verdict::Passing) => tracing::info!(probe, %target, "guest probe passes"),
            Some(Verdict::Failing) => {
                let why = state.last_error.clone().unwrap_or_default();
                tracing::warn!(
                    probe,
                    %target,
                    misses = state.misses,
                    error = %why,
                    "guest probe fails"
                );
                if spec.kind == ProbeKind::Liveness {
                    let reason =
                        format!("{target} failed {} time(s) in a row: {why}", state.misses);
                    let _ = unhealthy.send(reason).await;
                    return;
                }
            }
            Some(Verdict::Pending) | None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_as_kubernetes_reads_them() {
        assert_eq!(status_verdict(b"HTTP/1.1 200 OK\r\nServer: x\r\n"), Ok(()));
        assert_eq!(status_verdict(b"HTTP/1.0 302 Found\r\n"), Ok(()));
        assert_eq!(
            status_verdict(b"HTTP/1.1 404 Not Found\r\n"),
            Err("answered `HTTP/1.1 404 Not Found`".into())
        );
        assert_eq!(
            status_verdict(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Err("answered `HTTP/1.1 503 Service Unavailable`".into())
        );
        assert_eq!(
            status_verdict(b""),
            Err("closed the connection without an answer".into())
        );
        assert!(status_verdict(b"SSH-2.0-OpenSSH_9.2\r\n").is_err());
    }

    #[tokio::test]
    async fn http_and_tcp_checks_against_real_sockets() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for answer in [
                "HTTP/1.1 204 No Content\r\n\r\n",
                "HTTP/1.1 500 Oops\r\n\r\n",
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut req = vec![0u8; 1024];
                let n = s.read(&mut req).await.unwrap();
                let req = String::from_utf8_lossy(&req[..n]).into_owned();
                assert!(req.starts_with("GET /healthz?x=1 HTTP/1.1\r\n"), "{req}");
                s.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        assert_eq!(http_get(addr, "/healthz?x=1").await, Ok(()));
        assert_eq!(
            http_get(addr, "/healthz?x=1").await,
            Err("answered `HTTP/1.1 500 Oops`".into())
        );
        server.await.unwrap();
        // Nothing listens there any more.
        let refused = http_get(addr, "/").await.unwrap_err();
        assert!(refused.contains("refused"), "{refused}");
    }

    #[tokio::test]
    async fn the_real_checker_connects_and_asks_libvirt_for_the_agent() {
        let libvirt = crate::libvirt::conn::Libvirt::spawn("test:///default").unwrap();
        let checker = GuestChecker {
            guest: Arc::new(Guest::new(libvirt, "test")),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let second = Duration::from_secs(1);
        assert_eq!(checker.check(&ProbeAction::Tcp(addr), second).await, Ok(()));
        drop(listener);
        assert!(
            checker
                .check(&ProbeAction::Tcp(addr), second)
                .await
                .is_err()
        );
        // libvirt's test driver has a domain "test" and no guest agent: the
        // call is made and its failure is the probe's miss.
        let e = checker
            .check(&ProbeAction::Agent, second)
            .await
            .unwrap_err();
        assert!(e.starts_with("libvirt: "), "{e}");
    }
}
