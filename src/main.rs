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
    /// The supervisor that `run` starts under its init; not for direct use.
    #[command(hide = true)]
    Supervise {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum What {
    /// The libvirt domain XML.
    Domain,
    /// The nft script for the table vmpod owns.
    Firewall,
    /// Everything: sysctls, policy routing, listeners, libvirt config files, and the above.
    Plan,
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
        Command::Supervise { config } => supervise(config),
    }
}

fn load(file: Option<&std::path::Path>, files: FileChecks) -> Result<Loaded, ConfigError> {
    match file {
        Some(path) => config::load_file(path, files),
        None => config::load(
            config::EMBEDDED_EXAMPLE_NAME,
            config::EMBEDDED_EXAMPLE,
            files,
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
    match what {
        What::Domain => print!("{}", plan.domain_xml),
        What::Firewall => print!("{}", plan.firewall_script),
        What::Plan => print!("{plan}"),
    }
    ExitCode::SUCCESS
}

/// PID 1: validate first (exit 2 before anything changes), then run the
/// supervisor under the init that reaps and forwards signals.
fn run(config: Option<PathBuf>) -> ExitCode {
    match load(config.as_deref(), FileChecks::Warn) {
        Err(e) => return config_failure(&e),
        // A file the config names but the pod lacks is a runtime fault (the
        // volume is missing), not a config error.
        Ok(loaded) if !loaded.warnings.is_empty() => {
            for w in &loaded.warnings {
                eprintln!("{}", w.to_string().replacen(": warning: ", ": ", 1));
            }
            return ExitCode::from(EXIT_RUNTIME);
        }
        Ok(_) => {}
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("vmpod: cannot find its own executable: {e}");
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

fn supervise(config: Option<PathBuf>) -> ExitCode {
    let loaded = match load(config.as_deref(), FileChecks::Required) {
        Ok(loaded) => loaded,
        Err(e) => return config_failure(&e),
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
