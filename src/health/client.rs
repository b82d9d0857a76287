//! `vmpod status`: asks a running vmpod's health endpoint and summarizes
//! for a person. Plain blocking std I/O with timeouts: one short request
//! per path, nothing to share with the supervisor's runtime.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::metrics::parse_samples;

pub const DEFAULT_ADDR: &str = "127.0.0.1:8181";
const TIMEOUT: Duration = Duration::from_secs(3);
const MAX_RESPONSE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("`{addr}` is not HOST:PORT: {why}")]
    Address { addr: String, why: String },
    #[error(
        "cannot reach vmpod's health endpoint at {addr}: {source}; is vmpod running, and is health.port {port}?"
    )]
    Unreachable {
        addr: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("the health endpoint at {addr} sent a malformed answer to GET {path}")]
    Malformed { addr: String, path: &'static str },
}

/// What `vmpod status` prints, and whether the pod is ready.
#[derive(Debug, PartialEq)]
pub struct Summary {
    pub ready: bool,
    pub text: String,
}

/// One GET; returns the status code and the body.
fn get(addr: SocketAddr, shown: &str, path: &'static str) -> Result<(u16, String), StatusError> {
    let unreachable = |source| StatusError::Unreachable {
        addr: shown.to_string(),
        port: addr.port(),
        source,
    };
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(unreachable)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: vmpod-status\r\nConnection: close\r\n\r\n"
    )
    .map_err(unreachable)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(unreachable)?;
    let malformed = || StatusError::Malformed {
        addr: shown.to_string(),
        path,
    };
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(malformed)?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(malformed)?;
    Ok((code, body.to_string()))
}

/// Resolves `HOST:PORT` (an `http://` prefix and a trailing `/` are allowed).
pub fn resolve(addr: &str) -> Result<SocketAddr, StatusError> {
    let trimmed = addr.trim_start_matches("http://").trim_end_matches('/');
    let err = |why: String| StatusError::Address {
        addr: addr.to_string(),
        why,
    };
    trimmed
        .to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("it resolves to no address".into()))
}

/// Asks the endpoint at `addr` and builds the summary.
pub fn status(addr: &str) -> Result<Summary, StatusError> {
    let sock = resolve(addr)?;
    let (ready_code, ready_body) = get(sock, addr, "/readyz")?;
    let (metrics_code, metrics) = get(sock, addr, "/metrics")?;
    if metrics_code != 200 {
        return Err(StatusError::Malformed {
            addr: addr.to_string(),
            path: "/metrics",
        });
    }
    Ok(summarize(ready_code == 200, &ready_body, &metrics))
}

fn human_duration(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    let (d, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

/// The summary from a `/readyz` answer and a `/metrics` exposition.
pub fn summarize(ready: bool, readyz_body: &str, metrics: &str) -> Summary {
    let samples = parse_samples(metrics);
    let value = |name: &str| {
        samples
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| *v)
    };
    let label = |labels: &str, key: &str| -> Option<String> {
        let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
        let rest = &labels[start..];
        Some(rest[..rest.find('"')?].to_string())
    };
    let domain = samples
        .iter()
        .find(|(n, _, _)| n == "vmpod_info")
        .and_then(|(_, l, _)| label(l, "domain"))
        .unwrap_or_else(|| "?".into());
    let state = samples
        .iter()
        .find(|(n, _, v)| n == "vmpod_domain_state" && *v == 1.0)
        .and_then(|(_, l, _)| label(l, "state"))
        .unwrap_or_else(|| "unknown".into());
    let daemons: Vec<String> = samples
        .iter()
        .filter(|(n, _, _)| n == "vmpod_daemon_restarts_total")
        .filter_map(|(_, l, v)| Some(format!("{} {v}", label(l, "component")?)))
        .collect();

    let mut text = format!("{domain}: {}\n", if ready { "ready" } else { "NOT READY" });
    text.push_str(&format!("  guest state:     {state}\n"));
    if let Some(up) = value("vmpod_uptime_seconds") {
        text.push_str(&format!("  uptime:          {}\n", human_duration(up)));
    }
    if let Some(r) = value("vmpod_start_to_ready_seconds") {
        text.push_str(&format!("  start to ready:  {r:.1}s\n"));
    }
    if let Some(n) = value("vmpod_guest_restarts_total") {
        text.push_str(&format!("  guest restarts:  {n}\n"));
    }
    if !daemons.is_empty() {
        text.push_str(&format!("  daemon restarts: {}\n", daemons.join(", ")));
    }
    if value("vmpod_guest_agent_up") == Some(1.0) {
        let info = samples.iter().find(|(n, _, _)| n == "vmpod_guest_info");
        let field = |key| {
            info.and_then(|(_, l, _)| label(l, key))
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "?".into())
        };
        text.push_str(&format!(
            "  guest agent:     host {}, {}\n",
            field("hostname"),
            field("os")
        ));
        let addresses: Vec<String> = samples
            .iter()
            .filter(|(n, _, _)| n == "vmpod_guest_address")
            .filter_map(|(_, l, _)| {
                Some(format!(
                    "{} {}/{}",
                    label(l, "interface")?,
                    label(l, "address")?,
                    label(l, "prefix")?
                ))
            })
            .collect();
        if !addresses.is_empty() {
            text.push_str(&format!("  guest addresses: {}\n", addresses.join(", ")));
        }
    } else if value("vmpod_guest_agent_up") == Some(0.0) {
        text.push_str("  guest agent:     not answering\n");
    }
    if !ready {
        text.push_str("failing checks:\n");
        let checks: Vec<&str> = readyz_body
            .lines()
            .filter(|l| !l.trim().is_empty() && *l != "not ready")
            .collect();
        if checks.is_empty() {
            text.push_str("  (the endpoint named none)\n");
        }
        for c in checks {
            text.push_str(&format!("  - {c}\n"));
        }
    }
    Summary { ready, text }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# HELP vmpod_info The VM.\n# TYPE vmpod_info gauge\n\
        vmpod_info{domain=\"web\",egress_mode=\"tproxy\",version=\"0.1.0\"} 1\n\
        vmpod_domain_state{state=\"unknown\"} 0\nvmpod_domain_state{state=\"crashed\"} 1\n\
        vmpod_uptime_seconds 3725.5\nvmpod_guest_restarts_total 2\n\
        vmpod_daemon_restarts_total{component=\"libvirtd\"} 1\n\
        vmpod_daemon_restarts_total{component=\"virtlogd\"} 0\n";

    #[test]
    fn a_pod_that_is_not_ready_names_its_failing_checks() {
        let s = summarize(
            false,
            "not ready\nguest: not running (state: crashed)\ntap: vnet0 is not a port of bridge virbr0\n",
            METRICS,
        );
        assert!(!s.ready);
        assert_eq!(
            s.text,
            "web: NOT READY\n  guest state:     crashed\n  uptime:          1h 2m 5s\n  guest restarts:  2\n  daemon restarts: libvirtd 1, virtlogd 0\nfailing checks:\n  - guest: not running (state: crashed)\n  - tap: vnet0 is not a port of bridge virbr0\n"
        );
    }

    #[test]
    fn a_ready_pod_has_no_failing_checks() {
        let metrics = format!("{METRICS}vmpod_start_to_ready_seconds 12.34\n")
            .replace("state=\"crashed\"} 1", "state=\"running\"} 1");
        let s = summarize(true, "ready\n", &metrics);
        assert!(s.ready);
        assert!(
            s.text
                .starts_with("web: ready\n  guest state:     running\n"),
            "{}",
            s.text
        );
        assert!(s.text.contains("  start to ready:  12.3s\n"), "{}", s.text);
        let with_agent = format!(
            "{metrics}vmpod_guest_agent_up 1\nvmpod_guest_info{{hostname=\"web\",os=\"Debian GNU/Linux 12 (bookworm)\",kernel=\"6.1\"}} 1\n\
             vmpod_guest_address{{interface=\"eth0\",address=\"10.0.1.2\",prefix=\"24\"}} 1\n"
        );
        let s = summarize(true, "ready\n", &with_agent);
        assert!(
            s.text.contains("  guest agent:     host web, Debian GNU/Linux 12 (bookworm)\n  guest addresses: eth0 10.0.1.2/24\n"),
            "{}",
            s.text
        );
        assert!(!s.text.contains("failing"), "{}", s.text);
    }

    #[test]
    fn addresses_may_carry_a_scheme() {
        assert_eq!(
            resolve("http://127.0.0.1:8181/").unwrap(),
            "127.0.0.1:8181".parse().unwrap()
        );
        assert!(matches!(
            resolve("127.0.0.1"),
            Err(StatusError::Address { .. })
        ));
    }

    #[test]
    fn nothing_listening_is_a_clear_error() {
        // Bind and drop: the port is free, and nothing answers on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = status(&format!("127.0.0.1:{port}")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "cannot reach vmpod's health endpoint at 127.0.0.1:{port}"
            )),
            "{msg}"
        );
    }

    #[test]
    fn durations_read_like_uptime() {
        assert_eq!(human_duration(5.9), "5s");
        assert_eq!(human_duration(65.0), "1m 5s");
        assert_eq!(human_duration(90061.0), "1d 1h 1m");
    }
}
