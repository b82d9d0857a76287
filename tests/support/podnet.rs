//! A pod without a VM, for namespace tests that drive vmpod's network code
//! in-process: the sandbox's "pod" and "cluster" namespaces, plus a "guest"
//! namespace joined to the pod by a veth whose pod end stands in for the
//! tap (it joins the bridge the way libvirt's tap does).
//!
//! Each namespace gets a tokio runtime whose worker threads were started
//! inside it (a thread `setns`es, then builds the runtime), so every socket,
//! netlink connection and `nft` child created by a task of that runtime
//! lives in that namespace. `Ns::run` checks this on every call.
//!
//! Included with `#[path]` by the tests that use it (it needs `sha2`, a
//! dev-dependency, and the tests' own `support` module).
#![allow(dead_code)]

use std::fs::File;
use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use vmpod::config::{FileChecks, VmConfig};
use vmpod::net::setup::NetworkSetup;
use vmpod::relay::running::Relays;

use crate::support::sandbox::{Sandbox, netns_command, require, run_ok};
use crate::support::vm::example_config;

pub const GUEST_IP: &str = "10.0.1.2";
pub const GATEWAY_IP: &str = "10.0.1.1";
/// The guest's and the gateway's IPv6 addresses in a dual-stack pod: `::2`
/// and `::1` of the ULA /64 vmpod derives from the example's name (pinned
/// in src/ipv6/config.rs).
pub const GUEST_IP6: &str = "fdea:e3b6:3e27::2";
pub const GATEWAY_IP6: &str = "fdea:e3b6:3e27::1";
/// The pod end of the guest's veth: the tap's stand-in.
pub const TAP: &str = "vguest";

/// A network namespace with a runtime living in it.
pub struct Ns {
    pub name: String,
    runtime: Option<Runtime>,
}

impl Ns {
    /// A runtime whose threads live in the namespace `/run/netns/NAME`.
    pub fn enter(name: &str) -> Ns {
        let path = format!("/run/netns/{name}");
        let thread_name = name.to_string();
        let runtime = std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            // Worker threads are spawned here, so they inherit the namespace.
            // The name marks their log lines, so a test finds its own.
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(thread_name)
                .enable_all()
                .build()
                .expect("tokio runtime")
        })
        .join()
        .expect("runtime thread");
        Ns {
            name: name.to_string(),
            runtime: Some(runtime),
        }
    }

    fn rt(&self) -> &Runtime {
        self.runtime.as_ref().expect("runtime")
    }

    /// Runs `fut` on a thread of this namespace and waits for it; a panic
    /// in it is resumed here.
    pub fn run<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let task = self.spawn(fut);
        match self.rt().block_on(task) {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("task in {}: {e}", self.name),
        }
    }

    /// Starts `fut` on a thread of this namespace.
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let name = self.name.clone();
        self.rt().spawn(async move {
            assert_in_netns(&name);
            fut.await
        })
    }

    /// Waits for a task spawned here.
    pub fn join<T>(&self, task: JoinHandle<T>) -> T {
        match self.rt().block_on(task) {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("task in {}: {e}", self.name),
        }
    }

    /// `argv` run in this namespace.
    pub fn command(&self, argv: &[&str]) -> Command {
        netns_command(&self.name, argv)
    }

    /// `argv` run in this namespace; its stdout; panics on failure.
    pub fn sh(&self, argv: &[&str]) -> String {
        run_ok(&mut self.command(argv))
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

fn assert_in_netns(name: &str) {
    let here = std::fs::metadata("/proc/thread-self/ns/net")
        .expect("stat own netns")
        .ino();
    let want = std::fs::metadata(format!("/run/netns/{name}"))
        .expect("stat netns")
        .ino();
    assert_eq!(here, want, "a task meant for netns {name} runs elsewhere");
}

/// Pod, cluster and guest namespaces of one test.
pub struct PodNet {
    // Runtimes go first: dropped before their namespaces are deleted.
    pub pod: Ns,
    pub cluster: Ns,
    pub guest: Ns,
    pub sandbox: Sandbox,
    guest_ns: String,
}

impl PodNet {
    /// Creates the namespaces, with the guest at 10.0.1.2/24 (default route
    /// via 10.0.1.1) behind a veth whose pod end, `vguest`, is up but on no
    /// bridge yet.
    pub fn new(test: &str) -> PodNet {
        PodNet::in_sandbox(Sandbox::new(test))
    }

    /// As [`PodNet::new`] in a dual-stack sandbox
    /// ([`Sandbox::new_dual_stack`]), the guest also at [`GUEST_IP6`]/64
    /// with its IPv6 default route via [`GATEWAY_IP6`], which vmpod puts on
    /// the bridge (a config with `network.ipv6: on`).
    pub fn new_dual_stack(test: &str) -> PodNet {
        let net = PodNet::in_sandbox(Sandbox::new_dual_stack(test));
        let g = &net.guest;
        g.sh(&["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0"]);
        let addr = format!("{GUEST_IP6}/64");
        g.sh(&["ip", "addr", "add", &addr, "dev", "eth0", "nodad"]);
        g.sh(&["ip", "-6", "route", "add", "default", "via", GATEWAY_IP6]);
        net
    }

    fn in_sandbox(sandbox: Sandbox) -> PodNet {
        require(&[("ip", "iproute2"), ("nft", "nftables")]);
        init_logs();
        let pod_ns = sandbox.pod_ns();
        let guest_ns = format!("{}-g", sandbox.name);
        run_ok(Command::new("ip").args(["netns", "add", &guest_ns]));
        let net = PodNet {
            pod: Ns::enter(&pod_ns),
            cluster: Ns::enter(&sandbox.cluster_ns()),
            guest: Ns::enter(&guest_ns),
            sandbox,
            guest_ns: guest_ns.clone(),
        };
        run_ok(Command::new("ip").args([
            "link", "add", TAP, "netns", &pod_ns, "type", "veth", "peer", "name", "eth0", "netns",
            &guest_ns,
        ]));
        net.pod.sh(&["ip", "link", "set", TAP, "up"]);
        let g = &net.guest;
        g.sh(&["ip", "link", "set", "lo", "up"]);
        g.sh(&[
            "ip",
            "addr",
            "add",
            &format!("{GUEST_IP}/24"),
            "dev",
            "eth0",
        ]);
        g.sh(&["ip", "link", "set", "eth0", "up"]);
        g.sh(&["ip", "route", "add", "default", "via", GATEWAY_IP]);
        net
    }

    /// What vmpod would do once the guest's tap is there: the bridge, the
    /// tap joining it (here: the veth), per-tap setup, the relays, and a
    /// reconcile pass every second as the supervisor runs it.
    pub fn start_vmpod(&self, config: VmConfig) -> Vmpod {
        let plan = plan_of(&config);
        let network = plan.network.clone();
        let setup = self.pod.run(async move {
            let mut setup = NetworkSetup::new(network).expect("rtnetlink");
            setup.bridge().await.expect("bridge");
            setup
        });
        self.pod
            .sh(&["ip", "link", "set", TAP, "master", &config.network.bridge]);
        let (setup, relays) = self.pod.run(async move {
            let mut setup = setup;
            let tap = setup
                .wait_for_tap(None, Duration::from_secs(5))
                .await
                .expect("the veth joins the bridge");
            assert_eq!(tap.name, TAP);
            setup.per_tap(&tap.name).await.expect("per-tap setup");
            let relays = Relays::start(&plan.relays).expect("relays");
            (setup, relays)
        });
        let setup = Arc::new(tokio::sync::Mutex::new(setup));
        let s = setup.clone();
        let reconciler = self.pod.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                s.lock().await.reconcile().await;
            }
        });
        Vmpod {
            config,
            setup,
            relays: Some(relays),
            reconciler: Some(reconciler),
        }
    }

    /// Stops the relays (a drain of at most 1 s) and tears the network
    /// down; the teardown's errors.
    pub fn stop_vmpod(&self, vmpod: Vmpod) -> Vec<String> {
        self.stop_vmpod_draining(vmpod, Duration::from_secs(1)).0
    }

    /// Stops the relays, draining for up to `drain_timeout`, and tears the
    /// network down: the teardown's errors and what the drain did.
    #[allow(dead_code)] // not every test binary drains
    pub fn stop_vmpod_draining(
        &self,
        mut vmpod: Vmpod,
        drain_timeout: Duration,
    ) -> (Vec<String>, vmpod::relay::drain::DrainReport) {
        if let Some(r) = vmpod.reconciler.take() {
            r.abort();
        }
        let relays = vmpod.relays.take();
        let setup = vmpod.setup.clone();
        self.pod.run(async move {
            let report = match relays {
                Some(r) => r.stop(drain_timeout).await,
                None => Default::default(),
            };
            let errors = setup.lock().await.teardown().await;
            (errors.0.iter().map(ToString::to_string).collect(), report)
        })
    }

    /// One reconcile pass now, as the supervisor's tick runs it (the tick
    /// runs too): what it restored. A test that wants a pass to have run
    /// asks for one instead of sleeping past the next tick.
    pub fn reconcile_now(&self, vmpod: &Vmpod) -> vmpod::net::setup::Restored {
        let setup = vmpod.setup.clone();
        self.pod
            .run(async move { setup.lock().await.reconcile().await })
    }

    /// Kernel state that teardown must leave as it found it.
    pub fn pod_state(&self) -> String {
        format!(
            "--- nft list ruleset\n{}--- ip rule\n{}--- ip -4 route show table all\n{}",
            self.pod.sh(&["nft", "list", "ruleset"]),
            self.pod.sh(&["ip", "rule"]),
            self.pod.sh(&["ip", "-4", "route", "show", "table", "all"]),
        )
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.guest_ns])
            .status();
    }
}

pub struct Vmpod {
    pub config: VmConfig,
    setup: Arc<tokio::sync::Mutex<NetworkSetup>>,
    relays: Option<Relays>,
    reconciler: Option<JoinHandle<()>>,
}

impl Vmpod {
    pub fn relays(&self) -> &Relays {
        self.relays.as_ref().expect("relays running")
    }
}

impl Drop for Vmpod {
    fn drop(&mut self) {
        if let Some(r) = self.reconciler.take() {
            r.abort();
        }
    }
}

/// The example config in `mode`, with `edit` applied to its text.
pub fn config(mode: &str, edit: impl FnOnce(String) -> String) -> VmConfig {
    let text = example_config(|t| edit(t.replace("mode: tproxy", &format!("mode: {mode}"))));
    let text = if vmpod::relay::accel::test_mode() {
        with_accel(text)
    } else {
        text
    };
    assert!(text.contains(&format!("mode: {mode}")), "{text}");
    vmpod::config::load("example.yaml", &text, FileChecks::Warn)
        .unwrap_or_else(|e| panic!("{e}"))
        .config
}

/// The config text with `network.relay.accel: auto`.
#[allow(dead_code)]
pub fn with_accel(text: String) -> String {
    if text.contains("\n  relay:\n    accel: auto\n") {
        return text;
    }
    let out = text.replacen("\nnetwork:\n", "\nnetwork:\n  relay:\n    accel: auto\n", 1);
    assert_ne!(out, text, "the config has no network section: {text}");
    out
}

// ---- logs ---------------------------------------------------------------

fn log_buffer() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| Mutex::new(Vec::new()))
}

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        log_buffer().lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// vmpod's log lines go to a buffer, each with the name of the thread
/// (hence the namespace) that wrote it.
fn init_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("vmpod=debug")
            .with_thread_names(true)
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

/// vmpod's log lines written from namespace `ns`.
pub fn logs_of(ns: &Ns) -> String {
    let all = log_buffer().lock().unwrap();
    String::from_utf8_lossy(&all)
        .lines()
        .filter(|l| l.contains(&ns.name))
        .map(|l| format!("{l}\n"))
        .collect()
}

// ---- fds ----------------------------------------------------------------

/// Open file descriptors of this process (the relays run in it).
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

/// Lets the test process hold a few thousand sockets.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
}

/// Polls `check` every 50 ms until it returns Some or `timeout` passes.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- the cluster's exchange server and the guest's client ---------------
//
// Protocol: the client sends an 8-byte big-endian count N, then any number
// of bytes, then FIN. The server sends N pattern bytes while it reads, and
// once it has read the client's FIN (and only then) a trailer line
// `done LEN SHA_RECEIVED SHA_SENT`, then FIN. A trailer that arrives proves
// the client's FIN went through while the other direction stayed open.

/// A deterministic byte stream: `len` bytes from `seed`.
pub struct Pattern {
    state: u64,
    left: u64,
}

impl Pattern {
    pub fn new(seed: u64, len: u64) -> Pattern {
        Pattern {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            left: len,
        }
    }

    /// Fills up to `buf.len()` bytes; 0 at the end.
    pub fn fill(&mut self, buf: &mut [u8]) -> usize {
        let n = (buf.len() as u64).min(self.left) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            // xorshift64
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            chunk.copy_from_slice(&self.state.to_le_bytes()[..chunk.len()]);
        }
        self.left -= n as u64;
        n
    }

    pub fn sha256(seed: u64, len: u64) -> String {
        let mut p = Pattern::new(seed, len);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = p.fill(&mut buf);
            if n == 0 {
                return hex(&h.finalize());
            }
            h.update(&buf[..n]);
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const SERVER_SEED: u64 = 2;
const CLIENT_SEED: u64 = 1;

/// The cluster's servers, and the peers they saw.
pub struct Servers {
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub const EXCHANGE_PORT: u16 = 7000;
pub const ECHO_PORT: u16 = 7001;
/// Nothing listens here.
pub const CLOSED_PORT: u16 = 7999;

impl Servers {
    /// Starts the exchange server and an echo server on `ip` (either
    /// family) in `ns`.
    pub fn start(ns: &Ns, ip: &str) -> Servers {
        let mut s = Servers::start_exchange_on(ns, ip, EXCHANGE_PORT);
        let echo = SocketAddr::new(ip.parse().unwrap(), ECHO_PORT);
        s.tasks
            .push(accept_loop(ns, echo, s.peers.clone(), |s| async move {
                let (mut r, mut w) = s.into_split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            }));
        s
    }

    /// Starts only the exchange server, on `ip`:`port` in `ns`.
    pub fn start_exchange_on(ns: &Ns, ip: &str, port: u16) -> Servers {
        let peers = Arc::new(Mutex::new(Vec::new()));
        let addr = SocketAddr::new(ip.parse().unwrap(), port);
        let task = accept_loop(ns, addr, peers.clone(), |s| async move {
            let _ = serve_exchange(s).await;
        });
        Servers {
            peers,
            tasks: vec![task],
        }
    }

    pub fn peer_ips(&self) -> Vec<String> {
        self.peers
            .lock()
            .unwrap()
            .iter()
            .map(|p| p.ip().to_string())
            .collect()
    }
}

/// Listens on `addr` in `ns` (bound before this returns) and serves each
/// connection with `serve` on a task of its own, recording its peer.
fn accept_loop<F, Fut>(
    ns: &Ns,
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    serve: F,
) -> JoinHandle<()>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    serve_each(ns, addr, move |s, peer| {
        peers.lock().unwrap().push(peer);
        serve(s)
    })
}

/// Listens on `addr` in `ns` (bound before this returns) and serves each
/// connection with `serve`, given the client's address, on a task of its
/// own.
pub fn serve_each<F, Fut>(ns: &Ns, addr: SocketAddr, serve: F) -> JoinHandle<()>
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = ns.run(async move {
        TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"))
    });
    ns.spawn(async move {
        loop {
            let Ok((s, peer)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve(s, peer));
        }
    })
}

async fn serve_exchange(s: TcpStream) -> io::Result<()> {
    let (mut r, mut w) = s.into_split();
    let want = r.read_u64().await?;
    let send = async {
        let mut p = Pattern::new(SERVER_SEED, want);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = p.fill(&mut buf);
            if n == 0 {
                return Ok::<_, io::Error>(hex(&h.finalize()));
            }
            h.update(&buf[..n]);
            w.write_all(&buf[..n]).await?;
        }
    };
    let receive = async {
        let mut h = Sha256::new();
        let mut len = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, io::Error>((len, hex(&h.finalize())));
            }
            len += n as u64;
            h.update(&buf[..n]);
        }
    };
    let (sent_sha, (len, received_sha)) = tokio::try_join!(send, receive)?;
    w.write_all(format!("done {len} {received_sha} {sent_sha}\n").as_bytes())
        .await?;
    w.shutdown().await
}

/// What the guest saw of one exchange.
#[derive(Debug)]
pub struct Exchanged {
    /// SHA-256 of the N bytes received before the trailer.
    pub received_sha: String,
    pub trailer: String,
}

impl Exchanged {
    /// Both directions arrived intact: `sent` bytes from the guest,
    /// `received` from the server.
    pub fn assert_intact(&self, sent: u64, received: u64) {
        let expected = format!(
            "done {sent} {} {}",
            Pattern::sha256(CLIENT_SEED, sent),
            Pattern::sha256(SERVER_SEED, received)
        );
        assert_eq!(
            self.trailer.trim_end(),
            expected,
            "the server's view (trailer) differs"
        );
        assert_eq!(
            self.received_sha,
            Pattern::sha256(SERVER_SEED, received),
            "the guest received other bytes than the server sent"
        );
    }
}

/// One exchange from the guest: sends `send` pattern bytes and FIN, asks
/// for `want` bytes, reads them and the trailer up to the server's FIN.
pub async fn exchange(server: SocketAddr, send: u64, want: u64) -> io::Result<Exchanged> {
    Opened::open(server, want).await?.finish(send).await
}

/// An exchange whose request (the count) is sent: the server has the
/// connection even when SYN cookies were used for it (a cookie connection
/// exists on the server only once the client's first data arrives).
pub struct Opened {
    stream: TcpStream,
    want: u64,
}

impl Opened {
    pub async fn open(server: SocketAddr, want: u64) -> io::Result<Opened> {
        let mut stream = TcpStream::connect(server).await?;
        stream.write_u64(want).await?;
        Ok(Opened { stream, want })
    }

    /// Sends `send` bytes and FIN and reads the answer; fails after 60 s
    /// rather than hang.
    pub async fn finish(self, send: u64) -> io::Result<Exchanged> {
        tokio::time::timeout(
            Duration::from_secs(60),
            finish_unbounded(self.stream, send, self.want),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "exchange timed out"))?
    }
}

async fn finish_unbounded(s: TcpStream, send: u64, want: u64) -> io::Result<Exchanged> {
    let (mut r, mut w) = s.into_split();
    let sending = async {
        let mut p = Pattern::new(CLIENT_SEED, send);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = p.fill(&mut buf);
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n]).await?;
        }
        w.shutdown().await
    };
    let receiving = async {
        let mut h = Sha256::new();
        let mut left = want;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = r.read(&mut buf[..(left.min(64 * 1024) as usize)]).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF with {left} of {want} bytes missing"),
                ));
            }
            h.update(&buf[..n]);
            left -= n as u64;
        }
        let mut trailer = String::new();
        r.read_to_string(&mut trailer).await?;
        Ok(Exchanged {
            received_sha: hex(&h.finalize()),
            trailer,
        })
    };
    let ((), got) = tokio::try_join!(sending, receiving)?;
    Ok(got)
}

/// Connects and reads until EOF or an error; what a refused or reset
/// connection looks like to the guest.
pub async fn connect_and_read(addr: SocketAddr) -> io::Result<Vec<u8>> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "read timed out"))??;
    Ok(got)
}

/// The plan `run` would build for `config` on a host whose uplink MTU is
/// unknown (the bridge keeps the kernel's default), as the namespace tests
/// need it.
pub fn plan_of(config: &VmConfig) -> vmpod::plan::Plan {
    let facts = vmpod::host::HostFacts {
        kvm_usable: false,
        uplink_mtu: None,
        ..vmpod::host::HostFacts::fixed()
    };
    vmpod::plan::Plan::build(config, &facts, None).expect("plan")
}
