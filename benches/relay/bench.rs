//! The competitors, the processes they run, and the measurements, taken
//! interleaved: every repetition measures every competitor once per metric,
//! in an order rotated from one repetition to the next.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::RunOpts;
use crate::report::{self, Results};
use crate::topology::{self as topo, CLUSTER, CLUSTER_IP, GUEST, GUEST_IP, POD, POD_IP, Topology};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    /// The guest connects out to the cluster.
    Egress,
    /// The cluster connects in to the pod's address.
    Ingress,
}

#[derive(Clone, Copy, Debug)]
enum Relay {
    Kernel,
    /// `accel`: with `--accel auto` (the eBPF sockmap path).
    VmpodTproxy {
        accel: bool,
    },
    VmpodRedirect,
    VmpodIngress {
        accel: bool,
    },
    Haproxy {
        splice: bool,
    },
    Socat,
    /// passt's `pasta`, in the pod, attached to its own guest namespace.
    Pasta,
}

#[derive(Clone, Copy, Debug)]
pub struct Competitor {
    pub key: &'static str,
    pub label: &'static str,
    pub side: Side,
    /// (iperf3, echo) ports the client connects to.
    ports: (u16, u16),
    relay: Relay,
}

pub const KERNEL_EGRESS: &str = "kernel-egress";
pub const KERNEL_INGRESS: &str = "kernel-ingress";
pub const HAPROXY: &str = "haproxy";
pub const PASTA_EGRESS: &str = "pasta-egress";
pub const PASTA_INGRESS: &str = "pasta-ingress";

pub const COMPETITORS: [Competitor; 12] = [
    Competitor {
        key: KERNEL_EGRESS,
        label: "kernel forward+masquerade (egress)",
        side: Side::Egress,
        ports: topo::EGRESS_KERNEL,
        relay: Relay::Kernel,
    },
    Competitor {
        key: "vmpod-tproxy",
        label: "vmpod egress tproxy",
        side: Side::Egress,
        ports: topo::EGRESS_TPROXY,
        relay: Relay::VmpodTproxy { accel: false },
    },
    Competitor {
        key: "vmpod-accel",
        label: "vmpod egress tproxy, accel: auto (eBPF sockmap)",
        side: Side::Egress,
        ports: topo::EGRESS_ACCEL,
        relay: Relay::VmpodTproxy { accel: true },
    },
    Competitor {
        key: "vmpod-redirect",
        label: "vmpod egress redirect",
        side: Side::Egress,
        ports: topo::EGRESS_REDIRECT,
        relay: Relay::VmpodRedirect,
    },
    Competitor {
        key: PASTA_EGRESS,
        label: "passt's pasta (egress)",
        side: Side::Egress,
        ports: topo::EGRESS_PASTA,
        relay: Relay::Pasta,
    },
    Competitor {
        key: KERNEL_INGRESS,
        label: "kernel DNAT (ingress)",
        side: Side::Ingress,
        ports: topo::INGRESS_KERNEL,
        relay: Relay::Kernel,
    },
    Competitor {
        key: "vmpod-ingress",
        label: "vmpod ingress",
        side: Side::Ingress,
        ports: topo::INGRESS_VMPOD,
        relay: Relay::VmpodIngress { accel: false },
    },
    Competitor {
        key: "vmpod-accel-ingress",
        label: "vmpod ingress, accel: auto (eBPF sockmap)",
        side: Side::Ingress,
        ports: topo::INGRESS_ACCEL,
        relay: Relay::VmpodIngress { accel: true },
    },
    Competitor {
        key: PASTA_INGRESS,
        label: "passt's pasta, port forwarding (ingress)",
        side: Side::Ingress,
        ports: topo::INGRESS_PASTA,
        relay: Relay::Pasta,
    },
    Competitor {
        key: HAPROXY,
        label: "haproxy mode tcp",
        side: Side::Ingress,
        ports: topo::INGRESS_HAPROXY,
        relay: Relay::Haproxy { splice: false },
    },
    Competitor {
        key: "haproxy-splice",
        label: "haproxy mode tcp + splice-auto",
        side: Side::Ingress,
        ports: topo::INGRESS_HAPROXY_SPLICE,
        relay: Relay::Haproxy { splice: true },
    },
    Competitor {
        key: "socat",
        label: "socat (fork)",
        side: Side::Ingress,
        ports: topo::INGRESS_SOCAT,
        relay: Relay::Socat,
    },
];

impl Competitor {
    pub fn kernel_ref(&self) -> &'static str {
        match self.side {
            Side::Egress => KERNEL_EGRESS,
            Side::Ingress => KERNEL_INGRESS,
        }
    }

    /// passt on the same side: vmpod ÷ passt is one of the ratios.
    pub fn pasta_ref(&self) -> &'static str {
        match self.side {
            Side::Egress => PASTA_EGRESS,
            Side::Ingress => PASTA_INGRESS,
        }
    }

    pub fn is_vmpod(&self) -> bool {
        self.key.starts_with("vmpod")
    }

    fn client_ns(&self) -> &'static str {
        match (self.side, self.relay) {
            (Side::Egress, Relay::Pasta) => topo::PASTA_EGRESS_NS,
            (Side::Egress, _) => GUEST,
            (Side::Ingress, _) => CLUSTER,
        }
    }

    fn target(&self, port: u16) -> String {
        match self.side {
            Side::Egress => format!("{CLUSTER_IP}:{port}"),
            Side::Ingress => format!("{POD_IP}:{port}"),
        }
    }

    fn listen_ports(&self) -> Vec<u16> {
        match self.relay {
            Relay::Kernel => vec![],
            Relay::VmpodTproxy { accel: false } => vec![topo::TPROXY_LISTEN],
            Relay::VmpodTproxy { accel: true } => vec![topo::ACCEL_LISTEN],
            Relay::VmpodRedirect => vec![topo::REDIRECT_LISTEN],
            Relay::Pasta if self.side == Side::Egress => vec![],
            _ => vec![self.ports.0, self.ports.1],
        }
    }
}

/// Durations and counts of one run.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Plan {
    pub reps: usize,
    pub iperf_secs: u32,
    pub rr_count: usize,
    pub cps_secs: f64,
    pub cps_concurrency: usize,
    pub idle_connections: usize,
    /// socat forks a process per connection: fewer of them.
    pub idle_connections_socat: usize,
    /// RLIMIT_NOFILE of every process of the run.
    pub nofile: u64,
}

impl Plan {
    /// At most (hard limit - 400) / 2 idle connections.
    fn within_fd_limit(self, hard: u64) -> Plan {
        let most = (hard.saturating_sub(400) / 2) as usize;
        Plan {
            idle_connections: self.idle_connections.min(most),
            idle_connections_socat: self.idle_connections_socat.min(most),
            nofile: hard,
            ..self
        }
    }

    /// haproxy refuses a maxconn that needs more fds than the hard limit.
    fn haproxy_maxconn(&self) -> usize {
        self.idle_connections + 100
    }

    fn new(opts: &RunOpts) -> Plan {
        let quick = opts.quick;
        Plan {
            reps: opts.reps.unwrap_or(if quick { 1 } else { 5 }),
            iperf_secs: if quick { 1 } else { 3 },
            rr_count: if quick { 3_000 } else { 30_000 },
            cps_secs: if quick { 1.0 } else { 2.0 },
            cps_concurrency: 4,
            idle_connections: if quick { 2_000 } else { 10_000 },
            idle_connections_socat: if quick { 300 } else { 1_000 },
            nofile: 0,
        }
    }
}

/// A process this benchmark started; killed on drop.
struct Proc {
    what: String,
    child: Child,
}

impl Proc {
    fn spawn(what: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let log = std::fs::File::create(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {what}"))?;
        Ok(Proc {
            what: what.to_string(),
            child,
        })
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited: {status}", self.what);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pid());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A competitor's processes: the one carrying iperf3 traffic and the one
/// carrying the echo traffic (the same process for most).
struct Running {
    procs: Vec<Proc>,
    iperf: Option<usize>,
    echo: Option<usize>,
}

impl Running {
    fn iperf_pid(&self) -> Option<i32> {
        self.iperf.map(|i| self.procs[i].pid())
    }
    fn echo_pid(&self) -> Option<i32> {
        self.echo.map(|i| self.procs[i].pid())
    }
}

struct Env {
    plan: Plan,
    vmpod: PathBuf,
    vmpod_args: Vec<String>,
    logs: PathBuf,
    me: PathBuf,
}

fn start(c: &Competitor, env: &Env) -> Result<Running> {
    let log = |name: &str| env.logs.join(format!("{}-{name}.log", c.key));
    let vmpod = |args: &[String]| {
        let mut argv: Vec<String> = vec![env.vmpod.display().to_string(), "relay".into()];
        argv.extend(args.iter().cloned());
        argv.extend(env.vmpod_args.iter().cloned());
        argv.extend([
            "--max-connections".into(),
            env.plan.haproxy_maxconn().to_string(),
        ]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut cmd = topo::in_ns(POD, &argv);
        cmd.env("RUST_LOG", "warn");
        cmd
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (iperf_to, echo_to) = (
        format!("{GUEST_IP}:{}", topo::GUEST_IPERF),
        format!("{GUEST_IP}:{}", topo::GUEST_ECHO),
    );
    let running = match c.relay {
        Relay::Kernel => Running {
            procs: vec![],
            iperf: None,
            echo: None,
        },
        Relay::VmpodTproxy { .. } | Relay::VmpodRedirect => {
            let (port, mode, accel) = match c.relay {
                Relay::VmpodTproxy { accel: false } => (topo::TPROXY_LISTEN, "tproxy", "off"),
                Relay::VmpodTproxy { accel: true } => (topo::ACCEL_LISTEN, "tproxy", "auto"),
                _ => (topo::REDIRECT_LISTEN, "redirect", "off"),
            };
            let cmd = vmpod(&s(&[
                "egress",
                "--listen",
                &format!("0.0.0.0:{port}"),
                "--mode",
                mode,
                "--accel",
                accel,
            ]));
            Running {
                procs: vec![Proc::spawn(c.key, cmd, &log("relay"))?],
                iperf: Some(0),
                echo: Some(0),
            }
        }
        Relay::VmpodIngress { accel } => {
            let one = |port: u16, to: &str, name: &str| {
                let cmd = vmpod(&s(&[
                    "ingress",
                    "--listen",
                    &format!("{POD_IP}:{port}"),
                    "--to",
                    to,
                    "--accel",
                    if accel { "auto" } else { "off" },
                ]));
                Proc::spawn(c.key, cmd, &log(name))
            };
            Running {
                procs: vec![
                    one(c.ports.0, &iperf_to, "iperf")?,
                    one(c.ports.1, &echo_to, "echo")?,
                ],
                iperf: Some(0),
                echo: Some(1),
            }
        }
        Relay::Haproxy { splice } => {
            let cfg = env.logs.join(format!("{}.cfg", c.key));
            std::fs::write(
                &cfg,
                haproxy_config(
                    c.ports,
                    &iperf_to,
                    &echo_to,
                    splice,
                    env.plan.haproxy_maxconn(),
                ),
            )?;
            let cmd = topo::in_ns(POD, &["haproxy", "-db", "-f", &cfg.display().to_string()]);
            Running {
                procs: vec![Proc::spawn(c.key, cmd, &log("haproxy"))?],
                iperf: Some(0),
                echo: Some(0),
            }
        }
        Relay::Socat => {
            let one = |port: u16, to: &str, name: &str| {
                let listen = format!("TCP-LISTEN:{port},bind={POD_IP},reuseaddr,fork,backlog=4096");
                let cmd = topo::in_ns(POD, &["socat", &listen, &format!("TCP:{to}")]);
                Proc::spawn(c.key, cmd, &log(name))
            };
            Running {
                procs: vec![
                    one(c.ports.0, &iperf_to, "iperf")?,
                    one(c.ports.1, &echo_to, "echo")?,
                ],
                iperf: Some(0),
                echo: Some(1),
            }
        }
        Relay::Pasta => {
            // As the issue and MACHINE-NOTES run it: root in the pod, the
            // gateway not mapped to the pod's loopback (or connections to
            // the cluster's address are refused), IPv4 only (the pod has
            // no IPv6 route), no automatic forwarding.
            let (ns, forward) = match c.side {
                Side::Egress => (topo::PASTA_EGRESS_NS, "none".to_string()),
                Side::Ingress => (
                    topo::PASTA_INGRESS_NS,
                    format!(
                        "{}:{},{}:{}",
                        c.ports.0,
                        topo::GUEST_IPERF,
                        c.ports.1,
                        topo::GUEST_ECHO
                    ),
                ),
            };
            let cmd = topo::in_ns(
                POD,
                &[
                    "pasta",
                    "--runas",
                    "0",
                    "--config-net",
                    "--no-map-gw",
                    "-4",
                    "--netns",
                    ns,
                    "-f",
                    "-t",
                    &forward,
                    "-u",
                    "none",
                    "-T",
                    "none",
                    "-U",
                    "none",
                ],
            );
            let running = Running {
                procs: vec![Proc::spawn(c.key, cmd, &log("pasta"))?],
                iperf: Some(0),
                echo: Some(0),
            };
            wait_configured(ns)?;
            running
        }
    };
    for port in c.listen_ports() {
        wait_listening(POD, port)?;
    }
    Ok(running)
}

/// `maxpipes`: haproxy reserves two fds per pipe it may use (maxconn/4 by
/// default) and refuses to start past the hard fd limit; 64 pipes are
/// plenty for the few bulk connections of the throughput tests.
fn haproxy_config(
    ports: (u16, u16),
    iperf_to: &str,
    echo_to: &str,
    splice: bool,
    maxconn: usize,
) -> String {
    let splice = if splice {
        "    option splice-auto\n"
    } else {
        ""
    };
    format!(
        "global\n    maxconn {maxconn}\n    maxpipes 64\n\ndefaults\n    mode tcp\n    maxconn {maxconn}\n{splice}    timeout connect 10s\n    timeout client 1h\n    timeout server 1h\n\n\
         listen iperf\n    bind {POD_IP}:{}\n    server guest {iperf_to}\n\n\
         listen echo\n    bind {POD_IP}:{}\n    server guest {echo_to}\n",
        ports.0, ports.1
    )
}

fn wait_listening(ns: &str, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = topo::sh(Some(ns), &["ss", "-Hltn", &format!("sport = :{port}")])?;
        if !out.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on port {port} in {ns} after 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Until pasta has given namespace `ns` the pod's address and default route.
fn wait_configured(ns: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let addr = topo::sh(Some(ns), &["ip", "-4", "-o", "addr"])?;
        let route = topo::sh(Some(ns), &["ip", "-4", "route", "show", "default"])?;
        if addr.contains(POD_IP) && !route.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("pasta did not configure {ns} within 10 s: {addr} {route}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The cluster's and the guest's servers.
fn start_servers(env: &Env) -> Result<Vec<Proc>> {
    let mut procs = Vec::new();
    let me = env.me.display().to_string();
    let iperf = |ns: &str, port: u16| -> Result<Proc> {
        let cmd = topo::in_ns(ns, &["iperf3", "-s", "-p", &port.to_string()]);
        Proc::spawn(
            "iperf3 -s",
            cmd,
            &env.logs.join(format!("iperf3-{ns}-{port}.log")),
        )
    };
    let egress = [
        topo::EGRESS_KERNEL,
        topo::EGRESS_TPROXY,
        topo::EGRESS_REDIRECT,
        topo::EGRESS_PASTA,
        topo::EGRESS_ACCEL,
    ];
    for (p, _) in egress {
        procs.push(iperf(CLUSTER, p)?);
    }
    let echo_ports: Vec<String> = egress
        .iter()
        .map(|(_, e)| format!("{CLUSTER_IP}:{e}"))
        .collect();
    procs.push(Proc::spawn(
        "echo server (cluster)",
        topo::in_ns(CLUSTER, &[&me, "serve", "--listen", &echo_ports.join(",")]),
        &env.logs.join("echo-cluster.log"),
    )?);
    procs.push(iperf(GUEST, topo::GUEST_IPERF)?);
    procs.push(Proc::spawn(
        "echo server (guest)",
        topo::in_ns(
            GUEST,
            &[
                &me,
                "serve",
                "--listen",
                &format!("{GUEST_IP}:{}", topo::GUEST_ECHO),
            ],
        ),
        &env.logs.join("echo-guest.log"),
    )?);
    // pasta's ingress guest: the same servers on any address (pasta gives
    // the namespace the pod's address when it starts).
    procs.push(iperf(topo::PASTA_INGRESS_NS, topo::GUEST_IPERF)?);
    procs.push(Proc::spawn(
        "echo server (pasta guest)",
        topo::in_ns(
            topo::PASTA_INGRESS_NS,
            &[
                &me,
                "serve",
                "--listen",
                &format!("0.0.0.0:{}", topo::GUEST_ECHO),
            ],
        ),
        &env.logs.join("echo-pasta-guest.log"),
    )?);
    // DNS: the cluster's server, and vmpod's forwarder on the gateway.
    procs.push(Proc::spawn(
        "dns server (cluster)",
        topo::in_ns(
            CLUSTER,
            &[&me, "dns-serve", "--listen", &format!("{CLUSTER_IP}:53")],
        ),
        &env.logs.join("dns-cluster.log"),
    )?);
    procs.push(Proc::spawn(
        "vmpod dns forwarder",
        topo::in_ns(
            POD,
            &[
                &me,
                "dns-forward",
                "--listen",
                &format!("{}:53", topo::GATEWAY_IP),
                "--upstream",
                &format!("{CLUSTER_IP}:53"),
            ],
        ),
        &env.logs.join("dns-forwarder.log"),
    )?);
    for (ns, port) in egress
        .iter()
        .flat_map(|(a, b)| [(CLUSTER, *a), (CLUSTER, *b)])
        .chain([(GUEST, topo::GUEST_IPERF), (GUEST, topo::GUEST_ECHO)])
        .chain([
            (topo::PASTA_INGRESS_NS, topo::GUEST_IPERF),
            (topo::PASTA_INGRESS_NS, topo::GUEST_ECHO),
        ])
    {
        wait_listening(ns, port)?;
    }
    Ok(procs)
}

/// Runs `cmd` with stdout to a string; killed after `timeout`.
fn run_capture(mut cmd: Command, timeout: Duration) -> Result<(bool, String)> {
    let out = tempfile_path();
    let file = std::fs::File::create(&out)?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {timeout:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    let text = std::fs::read_to_string(&out)?;
    let _ = std::fs::remove_file(&out);
    if !status.success() && text.trim().is_empty() {
        bail!("{cmd:?} failed ({status}): {}", err.trim());
    }
    Ok((status.success(), text))
}

fn tempfile_path() -> PathBuf {
    std::env::temp_dir().join(format!("vmpod-relay-bench-{}.out", std::process::id()))
}

/// utime+stime(+children) of a process, in seconds.
fn cpu_seconds(pid: i32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("/proc/PID/stat")? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11..15]
        .iter()
        .map(|x| x.parse::<u64>().unwrap_or(0))
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok(ticks as f64 / hz)
}

/// The process's and its descendants' proportional set size, in bytes:
/// socat's forked children count, and pages they share count once.
fn tree_pss(pid: i32) -> Result<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("read /proc/{pid}/smaps_rollup"))?;
    let mut pss = rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no Pss in smaps_rollup")?
        * 1024;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let children = std::fs::read_to_string(task?.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            pss += tree_pss(child).unwrap_or(0);
        }
    }
    Ok(pss)
}

struct Iperf {
    gbps: f64,
    bytes: f64,
    cpu: Option<f64>,
}

fn iperf(c: &Competitor, r: &Running, plan: &Plan, streams: u32, reverse: bool) -> Result<Iperf> {
    let target = c.target(c.ports.0);
    let (ip, port) = target.split_once(':').unwrap();
    let secs = plan.iperf_secs.to_string();
    let streams_s = streams.to_string();
    let mut argv = vec![
        "iperf3", "-c", ip, "-p", port, "-t", &secs, "-P", &streams_s, "-J",
    ];
    if reverse {
        argv.push("-R");
    }
    let pid = r.iperf_pid();
    for attempt in 0.. {
        let before = pid.map(cpu_seconds).transpose()?;
        let (ok, out) = run_capture(
            topo::in_ns(c.client_ns(), &argv),
            Duration::from_secs(plan.iperf_secs as u64 + 20),
        )?;
        // socat's children are reaped (and counted) once they exited.
        std::thread::sleep(Duration::from_millis(200));
        let after = pid.map(cpu_seconds).transpose()?;
        let json: Value =
            serde_json::from_str(&out).with_context(|| format!("iperf3 output: {out}"))?;
        if !ok || json.get("error").is_some() {
            let err = json.get("error").cloned().unwrap_or_default();
            // A server still finishing the previous test answers "busy".
            if attempt < 3 && err.to_string().contains("busy") {
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            bail!("iperf3 to {target} ({}): {err}", c.key);
        }
        let sum = &json["end"]["sum_received"];
        return Ok(Iperf {
            gbps: sum["bits_per_second"].as_f64().context("bits_per_second")? / 1e9,
            bytes: sum["bytes"].as_f64().context("bytes")?,
            cpu: before.zip(after).map(|(b, a)| a - b),
        });
    }
    unreachable!()
}

fn tool(c: &Competitor, env: &Env, args: &[&str], timeout: Duration) -> Result<Value> {
    let me = env.me.display().to_string();
    let mut argv = vec![me.as_str()];
    argv.extend_from_slice(args);
    let (ok, out) = run_capture(topo::in_ns(c.client_ns(), &argv), timeout)?;
    if !ok {
        bail!("{} via {}: {out}", args[0], c.key);
    }
    serde_json::from_str(out.trim()).with_context(|| format!("{} output: {out}", args[0]))
}

/// Latency of every competitor in `group` (one client namespace), measured
/// in one interleaved run (see `tools::rr`): p50, p99 and p99.9 each.
fn latency(group: &[&Competitor], env: &Env, plan: &Plan, size: usize) -> Result<Vec<[f64; 3]>> {
    let to: Vec<String> = group.iter().map(|c| c.target(c.ports.1)).collect();
    let to = to.join(",");
    let budget = Duration::from_secs(60 + (plan.rr_count * group.len() / 2_000) as u64);
    let v = tool(
        group[0],
        env,
        &[
            "rr",
            "--to",
            &to,
            "--size",
            &size.to_string(),
            "--count",
            &plan.rr_count.to_string(),
        ],
        budget,
    )?;
    let rows = v.as_array().with_context(|| format!("rr output: {v}"))?;
    if rows.len() != group.len() {
        bail!("rr answered {} targets of {}", rows.len(), group.len());
    }
    rows.iter()
        .map(|r| {
            let get = |k: &str| r[k].as_f64().with_context(|| format!("{k} in {r}"));
            Ok([get("p50_us")?, get("p99_us")?, get("p999_us")?])
        })
        .collect()
}

/// `order`'s competitors grouped by the namespace their client runs in,
/// each group in `order`'s order.
fn by_client_ns(order: &[usize], wanted: &[&Competitor]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for &i in order {
        let ns = wanted[i].client_ns();
        match groups.iter_mut().find(|(n, _)| *n == ns) {
            Some((_, g)) => g.push(i),
            None => groups.push((ns, vec![i])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

fn cps(c: &Competitor, env: &Env, plan: &Plan) -> Result<f64> {
    let to = c.target(c.ports.1);
    let v = tool(
        c,
        env,
        &[
            "cps",
            "--to",
            &to,
            "--secs",
            &plan.cps_secs.to_string(),
            "--concurrency",
            &plan.cps_concurrency.to_string(),
        ],
        Duration::from_secs(60),
    )?;
    let failed = v["failed"].as_u64().unwrap_or(0);
    if failed > 0 {
        eprintln!(
            "relay-bench: {}: {failed} connections failed during the cps test",
            c.key
        );
    }
    v["cps"].as_f64().context("cps")
}

/// The DNS paths: the guest asks the cluster's server directly (kernel
/// forwarding + masquerade), or vmpod's forwarder on the gateway.
pub const DNS_PATHS: [(&str, &str); 2] =
    [("dns-direct", CLUSTER_IP), ("dns-vmpod", topo::GATEWAY_IP)];

fn dns_latency(env: &Env, plan: &Plan, ip: &str) -> Result<[f64; 3]> {
    let me = env.me.display().to_string();
    let to = format!("{ip}:53");
    let count = plan.rr_count.to_string();
    let (ok, out) = run_capture(
        topo::in_ns(GUEST, &[&me, "dns-rr", "--to", &to, "--count", &count]),
        Duration::from_secs(120),
    )?;
    if !ok {
        bail!("dns-rr to {to}: {out}");
    }
    let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("dns-rr: {out}"))?;
    let get = |k: &str| v[k].as_f64().with_context(|| format!("{k} in {v}"));
    Ok([get("p50_us")?, get("p99_us")?, get("p999_us")?])
}

/// Queries per second from dnsperf (100 queries outstanding, its default).
fn dns_qps(env: &Env, plan: &Plan, ip: &str) -> Result<f64> {
    let input = env.logs.join("dnsperf-queries.txt");
    std::fs::write(&input, "web.default.svc.cluster.local A\n")?;
    let secs = plan.cps_secs.max(1.0).to_string();
    let (_, out) = run_capture(
        topo::in_ns(
            GUEST,
            &[
                "dnsperf",
                "-s",
                ip,
                "-d",
                &input.display().to_string(),
                "-l",
                &secs,
            ],
        ),
        Duration::from_secs(60),
    )?;
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Queries per second:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no \"Queries per second\" in dnsperf's output: {out}"))
}

/// Bytes per idle relayed connection, from a fresh relay process.
fn idle_memory(
    c: &Competitor,
    env: &Env,
    plan: &Plan,
    running: &mut Running,
) -> Result<Option<f64>> {
    if running.echo.is_none() {
        return Ok(None);
    }
    // A fresh process: pools and heaps left by earlier tests would hide
    // what connections cost.
    *running = {
        running.procs.clear();
        start(c, env)?
    };
    let pid = running.echo_pid().context("echo process")?;
    let count = if matches!(c.relay, Relay::Socat) {
        plan.idle_connections_socat
    } else {
        plan.idle_connections
    };
    // Warm up, so lazily allocated state is in the baseline.
    latency(
        &[c],
        env,
        &Plan {
            rr_count: 200,
            ..*plan
        },
        64,
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let before = tree_pss(pid)?;
    let me = env.me.display().to_string();
    let to = c.target(c.ports.1);
    let mut hold = topo::in_ns(
        c.client_ns(),
        &[&me, "hold", "--to", &to, "--count", &count.to_string()],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()?;
    let mut line = String::new();
    BufReader::new(hold.stdout.take().context("hold stdout")?).read_line(&mut line)?;
    if !line.starts_with("ready") {
        let _ = hold.kill();
        let _ = hold.wait();
        bail!("{}: {count} idle connections could not be opened", c.key);
    }
    std::thread::sleep(Duration::from_secs(1));
    let after = tree_pss(pid)?;
    drop(hold.stdin.take());
    hold.wait()?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(Some((after as f64 - before as f64) / count as f64))
}

pub fn run(opts: RunOpts) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("needs root: it creates network namespaces");
    }
    for (prog, pkg) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("ss", "iproute2"),
        ("iperf3", "iperf3"),
        ("haproxy", "haproxy"),
        ("socat", "socat"),
        ("pasta", "passt"),
        ("dnsperf", "dnsperf"),
    ] {
        if which(prog).is_none() {
            bail!("{prog} is missing: install {pkg} (deploy/local/install-deps.sh)");
        }
    }
    let vmpod = std::fs::canonicalize(&opts.vmpod).with_context(|| {
        format!(
            "the vmpod binary {} (build it: cargo build --release)",
            opts.vmpod.display()
        )
    })?;
    let plan = Plan::new(&opts);
    let measures: Vec<String> = opts
        .measure
        .as_deref()
        .unwrap_or("tput,latency,cps,dns,memory")
        .split(',')
        .map(str::to_string)
        .collect();
    let wanted: Vec<&Competitor> = match &opts.only {
        None => COMPETITORS.iter().collect(),
        Some(only) => COMPETITORS
            .iter()
            .filter(|c| {
                only.split(',').any(|o| o == c.key)
                    || [
                        KERNEL_EGRESS,
                        KERNEL_INGRESS,
                        HAPROXY,
                        PASTA_EGRESS,
                        PASTA_INGRESS,
                    ]
                    .contains(&c.key)
            })
            .collect(),
    };
    // Idle connections need two fds each in a relay: as many as the hard
    // limit allows (raising it needs CAP_SYS_RESOURCE, which a container
    // may lack).
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raise RLIMIT_NOFILE")?;
    let plan = plan.within_fd_limit(hard);
    std::fs::create_dir_all(&opts.out)?;
    let logs = opts.out.join("relay-logs");
    std::fs::create_dir_all(&logs)?;
    let env = Env {
        plan,
        vmpod,
        vmpod_args: opts
            .vmpod_args
            .as_deref()
            .map(|a| a.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        logs: std::fs::canonicalize(&logs)?,
        me: std::env::current_exe()?,
    };
    let started = Instant::now();
    let context = report::Context::now(&plan, &opts);
    eprintln!("relay-bench: {plan:?}; load {}", context.load_before);
    let topology = Topology::create()?;
    let servers = start_servers(&env)?;
    let mut running: Vec<Running> = wanted
        .iter()
        .map(|c| start(c, &env))
        .collect::<Result<_>>()?;
    let mut results = Results::default();
    let mut incidents: Vec<String> = Vec::new();
    for rep in 0..plan.reps {
        let order: Vec<usize> = (0..wanted.len())
            .map(|i| (i + rep) % wanted.len())
            .collect();
        let each = |results: &mut Results,
                    running: &mut Vec<Running>,
                    what: &str,
                    f: &mut dyn FnMut(&Competitor, &mut Running, &mut Results) -> Result<()>|
         -> Result<()> {
            for &i in &order {
                let c = wanted[i];
                for p in &mut running[i].procs {
                    p.check_alive()?;
                }
                f(c, &mut running[i], results).with_context(|| format!("{what} via {}", c.key))?;
            }
            Ok(())
        };
        if measures.iter().any(|m| m == "tput") {
            let mut cpu: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
            for (streams, reverse) in [(1, false), (1, true), (4, false), (4, true)] {
                let key = format!("tput{streams}_{}", if reverse { "down" } else { "up" });
                each(&mut results, &mut running, &key, &mut |c, r, results| {
                    let got = iperf(c, r, &plan, streams, reverse)?;
                    eprintln!("rep {rep} {key:<11} {:<16} {:6.2} Gbit/s", c.key, got.gbps);
                    results.add(&key, c.key, rep, got.gbps);
                    if let Some(cpu_s) = got.cpu {
                        let e = cpu.entry(c.key).or_default();
                        e.0 += cpu_s;
                        e.1 += got.bytes;
                    }
                    Ok(())
                })?;
            }
            for (key, (cpu_s, bytes)) in cpu {
                results.add("cpu", key, rep, cpu_s / (bytes / 1e9));
            }
        }
        if measures.iter().any(|m| m == "latency") {
            for (size, name) in [(64, "lat64"), (1024, "lat1k")] {
                for group in by_client_ns(&order, &wanted) {
                    for &i in &group {
                        for p in &mut running[i].procs {
                            p.check_alive()?;
                        }
                    }
                    let comps: Vec<&Competitor> = group.iter().map(|&i| wanted[i]).collect();
                    let keys: Vec<&str> = comps.iter().map(|c| c.key).collect();
                    let got = latency(&comps, &env, &plan, size)
                        .with_context(|| format!("{name} via {}", keys.join(", ")))?;
                    for (c, [p50, p99, p999]) in comps.iter().zip(got) {
                        eprintln!(
                            "rep {rep} {name:<11} {:<16} p50 {p50:.1} p99 {p99:.1} p99.9 {p999:.1} µs",
                            c.key
                        );
                        results.add(&format!("{name}_p50"), c.key, rep, p50);
                        results.add(&format!("{name}_p99"), c.key, rep, p99);
                        results.add(&format!("{name}_p999"), c.key, rep, p999);
                    }
                }
            }
        }
        if measures.iter().any(|m| m == "cps") {
            each(&mut results, &mut running, "cps", &mut |c, _, results| {
                let v = cps(c, &env, &plan)?;
                eprintln!("rep {rep} cps         {:<16} {v:8.0} conn/s", c.key);
                results.add("cps", c.key, rep, v);
                Ok(())
            })?;
        }
        if measures.iter().any(|m| m == "dns") {
            for k in 0..DNS_PATHS.len() {
                let (key, ip) = DNS_PATHS[(k + rep) % DNS_PATHS.len()];
                let [p50, p99, p999] =
                    dns_latency(&env, &plan, ip).with_context(|| format!("dns via {key}"))?;
                let qps = dns_qps(&env, &plan, ip).with_context(|| format!("dns via {key}"))?;
                eprintln!(
                    "rep {rep} dns         {key:<16} {qps:8.0} q/s, p50 {p50:.1} p99 {p99:.1} p99.9 {p999:.1} µs"
                );
                results.add("dns_qps", key, rep, qps);
                results.add("dns_p50", key, rep, p50);
                results.add("dns_p99", key, rep, p99);
                results.add("dns_p999", key, rep, p999);
            }
        }
        if measures.iter().any(|m| m == "memory") {
            each(
                &mut results,
                &mut running,
                "memory",
                &mut |c, r, results| {
                    match idle_memory(c, &env, &plan, r) {
                        Ok(Some(bytes)) => {
                            eprintln!("rep {rep} memory      {:<16} {bytes:8.0} B/conn", c.key);
                            results.add("mem", c.key, rep, bytes / 1024.0);
                        }
                        Ok(None) => {}
                        // A competitor that cannot hold the connections is a
                        // finding about it, reported, not the end of the run
                        // (whose other figures would be lost with it).
                        Err(e) => {
                            let why = format!("rep {rep}: memory via {}: {e:#}", c.key);
                            eprintln!("relay-bench: {why}");
                            incidents.push(why);
                            r.procs.clear();
                            *r = start(c, &env)?;
                        }
                    }
                    Ok(())
                },
            )?;
        }
    }
    drop(running);
    drop(servers);
    drop(topology);
    let context = context.finish(started.elapsed());
    let keys: Vec<&Competitor> = wanted.clone();
    let (mut md, json) = report::render(&context, &keys, &results);
    if !incidents.is_empty() {
        md += "\n## Incidents\n\nMeasurements a competitor failed (left out of its figures):\n\n";
        for i in &incidents {
            md += &format!("- {i}\n");
        }
    }
    let md_path = opts.out.join("relay.md");
    let json_path = opts.out.join("relay.json");
    let charts = crate::chart::write_all(&json, &opts.out).context("write the charts")?;
    if !charts.is_empty() {
        md += "\n## Charts\n\n";
        for c in &charts {
            let name = c.file_name().unwrap_or_default().to_string_lossy();
            md += &format!("![{name}]({name})\n");
        }
    }
    std::fs::write(&md_path, &md)?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)?;
    println!("{md}");
    eprintln!(
        "relay-bench: wrote {} and {}",
        md_path.display(),
        json_path.display()
    );
    Ok(())
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}
