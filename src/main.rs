//! The `vmpod` command line: parses arguments, dispatches into the library,
//! prints errors and maps them to exit codes (0 ok, 1 runtime failure,
//! 2 usage or config error).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use vmpod::config::{self, ConfigError, FileChecks, Loaded};
use vmpod::host::HostFacts;
use vmpod::plan::Plan;

#[derive(Parser)]
#[command(
    name = "vmpod",
    version,
    about = "Run one VM as a first-class member of a pod's service mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a VM config; prints every problem found.
    Check {
        /// The config file (default: the embedded domains/example.yaml).
        file: Option<PathBuf>,
        /// Treat missing kernel, disk and secret files as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Print what `run` would apply, without root and without touching the system.
    Render {
        /// The config file (default: the embedded domains/example.yaml).
        file: Option<PathBuf>,
        /// Which part to print.
        #[arg(long, value_enum, default_value_t = What::Plan)]
        what: What,
    },
    /// Boot and supervise the VM (the container's entry point). As PID 1 it
    /// also reaps zombies and forwards signals.
    Run {
        /// The config file (default: the embedded domains/example.yaml).
        #[arg(long, env = "VMPOD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Ask a running vmpod's health endpoint: state, uptime, restarts and
    /// failing readiness checks. Exits 0 when ready, 1 when not or unreachable.
    Status {
        /// The endpoint's HOST:PORT.
        #[arg(long, default_value = vmpod::health::client::DEFAULT_ADDR)]
        addr: String,
    },
    /// Attach this terminal to the guest's serial console (through libvirt;
    /// in a pod: `kubectl exec -it POD -- vmpod console`). Ctrl-] detaches.
    Console {
        /// The domain (default: the only one running).
        #[arg(long)]
        domain: Option<String>,
        /// Take the console from another session that holds it.
        #[arg(long)]
        force: bool,
    },
    /// Run one relay on its own, with the same code as `run`, until SIGTERM
    /// or SIGINT: to measure it, or to use it without a VM.
    Relay {
        #[command(subcommand)]
        relay: RelayCommand,
    },
    /// The supervisor that `run` starts under its init; not for direct use.
    #[command(hide = true)]
    Supervise {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RelayCommand {
    /// Forward every connection accepted on --listen to --to.
    Ingress {
        #[arg(long, value_name = "ADDR:PORT")]
        listen: std::net::SocketAddr,
        #[arg(long, value_name = "ADDR:PORT")]
        to: std::net::SocketAddr,
        #[command(flatten)]
        tuning: RelayTuning,
    },
    /// Relay connections that nftables rules (set up by the caller) divert
    /// to --listen to their original destination.
    Egress {
        #[arg(long, value_name = "ADDR:PORT")]
        listen: std::net::SocketAddr,
        #[arg(long, value_enum)]
        mode: RelayMode,
        #[command(flatten)]
        tuning: RelayTuning,
    },
    /// Relay UDP that a TPROXY rule and policy route (set up by the caller)
    /// divert to --listen to its original destination, a session per
    /// sender and destination, as `network.egress.udp: relay` does.
    UdpEgress {
        #[arg(long, value_name = "ADDR:PORT")]
        listen: std::net::SocketAddr,
        /// Sessions at once; datagrams that would open more are dropped.
        #[arg(long, default_value_t = 4096)]
        max_sessions: u32,
        /// A session with datagrams one way only ends after this long idle.
        #[arg(long, value_name = "DURATION", default_value = "30s")]
        idle_timeout: config::HumanDuration,
        /// A session with datagrams both ways ends after this long idle.
        #[arg(long, value_name = "DURATION", default_value = "120s")]
        stream_timeout: config::HumanDuration,
    },
}

/// Limits and timeouts of a standalone relay; the defaults are `vmpod run`'s.
/// Durations as in the config: `90s`, `5m`, `1h`, `250ms`.
#[derive(clap::Args)]
struct RelayTuning {
    /// Connections relayed at once; more are refused with a RST.
    #[arg(long, default_value_t = 10_000)]
    max_connections: u32,
    /// A connection with no data either way for this long is reset.
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    idle_timeout: config::HumanDuration,
    /// Time to connect to the upstream before the client is reset.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    connect_timeout: config::HumanDuration,
    /// Once one direction has closed, the other gets this much longer.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    half_close_timeout: config::HumanDuration,
    /// TCP keepalive: idle time before the first probe.
    #[arg(long, value_name = "DURATION", default_value = "300s")]
    keepalive_idle: config::HumanDuration,
    /// TCP keepalive: time between probes.
    #[arg(long, value_name = "DURATION", default_value = "75s")]
    keepalive_interval: config::HumanDuration,
    /// TCP keepalive: unanswered probes before the connection is dropped.
    #[arg(long, value_name = "N", default_value_t = 9, value_parser = clap::value_parser!(u32).range(1..=127))]
    keepalive_count: u32,
    /// At SIGTERM/SIGINT, connections in flight get this long to finish
    /// before they are reset.
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    drain_timeout: config::HumanDuration,
    /// `auto`: the kernel moves established connections' bytes (eBPF
    /// sockmap, needs CAP_BPF and CAP_NET_ADMIN) when it allows, as
    /// `network.relay.accel` does.
    #[arg(long, value_name = "auto|off", default_value = "off", value_parser = ["auto", "off"])]
    accel: String,
}

impl RelayTuning {
    fn settings(&self) -> vmpod::relay::proxy::ProxySettings {
        use vmpod::relay::copy::Timeouts;
        use vmpod::relay::socket::Keepalive;
        vmpod::relay::proxy::ProxySettings {
            connect_timeout: self.connect_timeout.0,
            timeouts: Timeouts {
                idle: self.idle_timeout.0,
                half_closed: self.half_close_timeout.0,
            },
            keepalive: Some(Keepalive {
                idle: self.keepalive_idle.0,
                interval: self.keepalive_interval.0,
                count: self.keepalive_count,
            }),
            accel: self.accel == "auto",
            ..vmpod::relay::standalone::default_settings(self.max_connections)
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum RelayMode {
    /// TPROXY: the original destination is the accepted socket's local address.
    Tproxy,
    /// REDIRECT: the original destination comes from SO_ORIGINAL_DST.
    Redirect,
}

#[derive(Clone, Copy, ValueEnum)]
enum What {
    /// The libvirt domain XML.
    Domain,
    /// The nft script for the table vmpod owns.
    Firewall,
    /// Everything: sysctls, policy routing, listeners, libvirt config files, and the above.
    Plan,
    /// The pod annotations an Istio sidecar needs beside this VM, with the reasons.
    Sidecar,
    /// The whole plan as one JSON document, for tools.
    Json,
}

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    vmpod::logging::init();
    match cli.command {
        Command::Check { file, strict } => check(file, strict),
        Command::Render { file, what } => render(file, what),
        Command::Run { config } => run(config),
        Command::Status { addr } => status(&addr),
        Command::Console { domain, force } => console(domain.as_deref(), force),
        Command::Relay { relay } => relay_standalone(relay),
        Command::Supervise { config } => supervise(config),
    }
}

/// Every command checks the config against this host's memory and CPU limits.
fn load(file: Option<&std::path::Path>, files: FileChecks) -> Result<Loaded, ConfigError> {
    let limits = vmpod::host::HostLimits::detect();
    match file {
        Some(path) => config::load_file_on_host(path, files, &limits),
        None => config::load_on_host(
            config::EMBEDDED_EXAMPLE_NAME,
            config::EMBEDDED_EXAMPLE,
            files,
            &limits,
        ),
    }
}

fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(EXIT_CONFIG)
}

fn check(file: Option<PathBuf>, strict: bool) -> ExitCode {
    let files = if strict {
        FileChecks::Required
    } else {
        FileChecks::Warn
    };
    match load(file.as_deref(), files) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            println!("{}: ok", loaded.config.name);
            ExitCode::SUCCESS
        }
        Err(e) => config_failure(&e),
    }
}

fn render(file: Option<PathBuf>, what: What) -> ExitCode {
    let loaded = match load(file.as_deref(), FileChecks::Warn) {
        Ok(loaded) => loaded,
        Err(e) => return config_failure(&e),
    };
    for w in &loaded.warnings {
        eprintln!("{w}");
    }
    // The password stays out of everything render prints.
    let plan = match Plan::build(&loaded.config, &HostFacts::detect(), None) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("vmpod: cannot render {}: {e}", loaded.config.name);
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let text = match what {
        What::Domain => plan.domain_xml.clone(),
        What::Firewall => plan.firewall_script(),
        What::Plan => plan.to_string(),
        What::Sidecar => vmpod::sidecar::plan(&loaded.config).to_string(),
        What::Json => format!("{:#}\n", plan.to_json()),
    };
    emit(&text)
}

/// Writes `text` to stdout. A reader that went away (`| head`) ends the
/// output quietly, as it does for any Unix filter; print! would panic.
fn emit(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmpod: cannot write to stdout: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// PID 1: validate first (exit 2 before anything changes), then run the
/// supervisor under the init that reaps and forwards signals.
fn run(config: Option<PathBuf>) -> ExitCode {
    match load(config.as_deref(), FileChecks::Warn) {
        Err(e) => {
            report(&e.to_string());
            return ExitCode::from(EXIT_CONFIG);
        }
        // A file the config names but the pod lacks is a runtime fault (the
        // volume is missing), not a config error.
        Ok(loaded) if !loaded.warnings.is_empty() => {
            for w in &loaded.warnings {
                report(&w.to_string().replacen(": warning: ", ": ", 1));
            }
            return ExitCode::from(EXIT_RUNTIME);
        }
        Ok(_) => {}
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            report(&format!("vmpod: cannot find its own executable: {e}"));
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let mut args: Vec<OsString> = vec!["supervise".into()];
    if let Some(path) = config {
        args.push("--config".into());
        args.push(path.into());
    }
    match vmpod::init::run(exe.into(), args) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(EXIT_RUNTIME)),
        Err(e) => {
            tracing::error!(error = %e, "init failed");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn console(domain: Option<&str>, force: bool) -> ExitCode {
    use vmpod::serial_console::{Ended, attach};
    match attach(vmpod::libvirt::conn::SYSTEM_URI, domain, force) {
        Ok(Ended::Detached) => ExitCode::SUCCESS,
        Ok(Ended::Closed) => {
            eprintln!("the console closed (the guest stopped, or another session took it)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmpod console: {e}");
            ExitCode::from(1)
        }
    }
}

fn status(addr: &str) -> ExitCode {
    match vmpod::health::client::status(addr) {
        Ok(summary) => {
            let _ = emit(&summary.text);
            if summary.ready {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_RUNTIME)
            }
        }
        Err(e) => {
            eprintln!("vmpod status: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// A failure of `run` or `supervise` before logging has anything else to
/// say: one error event per line with `LOG_FORMAT=json`, so the container's
/// log stays JSON; plain lines otherwise.
fn report(text: &str) {
    if vmpod::logging::json_requested() {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            tracing::error!("{line}");
        }
    } else {
        eprintln!("{text}");
    }
}

fn relay_standalone(command: RelayCommand) -> ExitCode {
    use vmpod::config::EgressMode;
    use vmpod::relay::standalone::{self, Standalone};
    let (relay, tuning) = match command {
        RelayCommand::UdpEgress {
            listen,
            max_sessions,
            idle_timeout,
            stream_timeout,
        } => return relay_udp_egress(listen, max_sessions, idle_timeout, stream_timeout),
        RelayCommand::Ingress { listen, to, tuning } => {
            (Standalone::Ingress { listen, to }, tuning)
        }
        RelayCommand::Egress {
            listen,
            mode,
            tuning,
        } => {
            let mode = match mode {
                RelayMode::Tproxy => EgressMode::Tproxy,
                RelayMode::Redirect => EgressMode::Redirect,
            };
            (Standalone::Egress { listen, mode }, tuning)
        }
    };
    vmpod::fdlimit::raise_nofile_or_warn();
    vmpod::fdlimit::warn_if_over_budget(&[vmpod::fdlimit::Need {
        what: format!("max_connections {} × 2", tuning.max_connections),
        fds: 2 * u64::from(tuning.max_connections),
    }]);
    match standalone::run(relay, tuning.settings(), tuning.drain_timeout.0) {
        Ok(stats) => {
            tracing::info!(?stats, "relay stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmpod relay: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn relay_udp_egress(
    listen: std::net::SocketAddr,
    max_sessions: u32,
    idle: config::HumanDuration,
    stream: config::HumanDuration,
) -> ExitCode {
    use vmpod::relay::udp_egress::UdpEgressSettings;
    vmpod::fdlimit::raise_nofile_or_warn();
    let settings = UdpEgressSettings {
        idle: idle.0,
        stream: stream.0,
        max_sessions: max_sessions.max(1),
    };
    match vmpod::relay::standalone::run_udp_egress(listen, settings) {
        Ok(stats) => {
            tracing::info!(?stats, "relay stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmpod relay: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn supervise(config: Option<PathBuf>) -> ExitCode {
    // Again here: `supervise` may run without `run`'s init.
    vmpod::fdlimit::raise_nofile_or_warn();
    let loaded = match load(config.as_deref(), FileChecks::Required) {
        Ok(loaded) => loaded,
        Err(e) => {
            report(&e.to_string());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vmpod: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let result = runtime.block_on(vmpod::supervisor::run(loaded.config, HostFacts::detect()));
    // Blocking libvirt calls may still sit on their thread; do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(EXIT_RUNTIME)),
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
