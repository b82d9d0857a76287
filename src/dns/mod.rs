//! DNS for the guest: the gateway answers on port 53 by forwarding to the
//! pod's own resolvers, read from the pod's /etc/resolv.conf.
//!
//! ```ignore
//! let conf = dns::resolv::parse(&std::fs::read_to_string("/etc/resolv.conf")?);
//! let upstreams = conf.server_addrs(53, dns::resolv::interface_index);
//! let fwd = DnsForwarder::bind(ForwarderConfig::new(gateway_53, upstreams))?;
//! let stats = fwd.stats();                    // Arc<DnsStats>
//! tokio::spawn(fwd.run());                    // until the task is aborted
//! ```

pub mod forwarder;
pub mod message;
pub mod resolv;
pub mod stats;

pub use forwarder::{DnsError, DnsForwarder, ForwarderConfig};
pub use resolv::ResolvConf;
pub use stats::DnsStats;

#[cfg(test)]
mod fuzz_tests;
