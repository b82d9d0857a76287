//! The relay benchmark behind `deploy/bench/relay.sh`: vmpod's relays side
//! by side with the kernel path, haproxy and socat, in namespaces this
//! program builds (guest ⇄ pod bridge ⇄ cluster over veth, MTU 1500, no VM).
//!
//! Without a subcommand it runs the whole benchmark (root). The subcommands
//! are the small clients and servers it starts inside the namespaces.
//! `cargo bench` passes `--bench`; it is ignored.

mod bench;
mod chart;
mod report;
mod tools;
mod topology;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "relay-bench", about = "vmpod relay benchmark")]
struct Cli {
    #[command(subcommand)]
    tool: Option<Tool>,
    #[command(flatten)]
    run: RunOpts,
}

#[derive(Args, Clone, Debug)]
pub struct RunOpts {
    /// One repetition with short durations, for development.
    #[arg(long)]
    pub quick: bool,
    /// Repetitions of every measurement (default 5; 1 with --quick).
    #[arg(long)]
    pub reps: Option<usize>,
    /// Only these competitors (comma-separated keys, e.g. kernel-egress,vmpod-tproxy);
    /// the kernel and haproxy references are always added.
    #[arg(long)]
    pub only: Option<String>,
    /// Only these measurements (comma-separated: tput,latency,cps,dns,memory).
    #[arg(long)]
    pub measure: Option<String>,
    /// The vmpod binary to measure.
    #[arg(long, default_value = "target/release/vmpod")]
    pub vmpod: PathBuf,
    /// Where the Markdown and JSON reports go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Extra arguments for every `vmpod relay` (e.g. for experiments).
    #[arg(long, allow_hyphen_values = true)]
    pub vmpod_args: Option<String>,
}

#[derive(Subcommand)]
enum Tool {
    /// Echo server on each address (a connection starting with `C` gets one
    /// 64-byte answer, then the server closes).
    Serve {
        #[arg(long, value_delimiter = ',', required = true)]
        listen: Vec<SocketAddr>,
    },
    /// Request/response latency over one connection per target, the
    /// targets interleaved in blocks; prints a JSON array.
    Rr {
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<SocketAddr>,
        #[arg(long)]
        size: usize,
        #[arg(long)]
        count: usize,
        /// Round trips to one target before the next one's turn.
        #[arg(long, default_value_t = 100)]
        block: usize,
    },
    /// New connections per second (connect, one request, close); prints JSON.
    Cps {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        secs: f64,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// Creates the namespaces and rules and leaves them (for profiling by
    /// hand); `--down` removes them.
    Topology {
        #[arg(long)]
        down: bool,
    },
    /// A DNS server answering every query with one A record.
    DnsServe {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// vmpod's DNS forwarder on --listen, forwarding to --upstream.
    DnsForward {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
    },
    /// Sequential DNS queries over UDP; prints JSON latency percentiles.
    DnsRr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: usize,
    },
    /// Opens COUNT connections, one exchange each, prints `ready`, holds
    /// them until stdin closes.
    Hold {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: usize,
    },
}

fn main() -> ExitCode {
    let args = std::env::args().filter(|a| a != "--bench");
    let cli = Cli::parse_from(args);
    let result = match cli.tool {
        Some(Tool::Serve { listen }) => tools::serve(&listen),
        Some(Tool::Rr {
            to,
            size,
            count,
            block,
        }) => tools::rr(&to, size, count, block),
        Some(Tool::Cps {
            to,
            secs,
            concurrency,
        }) => tools::cps(to, secs, concurrency),
        Some(Tool::Hold { to, count }) => tools::hold(to, count),
        Some(Tool::DnsServe { listen }) => tools::dns_serve(listen),
        Some(Tool::DnsForward { listen, upstream }) => tools::dns_forward(listen, upstream),
        Some(Tool::DnsRr { to, count }) => tools::dns_rr(to, count),
        Some(Tool::Topology { down: true }) => {
            topology::remove();
            Ok(())
        }
        Some(Tool::Topology { down: false }) => topology::Topology::create().map(std::mem::forget),
        None => bench::run(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
