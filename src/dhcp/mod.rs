//! The guest's DHCPv4 server: one lease, for the guest's MAC only, on the
//! bridge only. `lease_server` is the pure state machine, `socket` the tokio
//! layer that binds port 67 on the bridge and sends the replies.
//!
//! ```ignore
//! let server = DhcpServer::bind(config)?;      // in a tokio runtime, in the pod's netns
//! let stats = server.stats();                 // Arc<DhcpStats>
//! let lease = server.lease_watch();           // watch::Receiver<Option<Lease>>
//! tokio::spawn(server.run());                 // until the task is aborted
//! ```

pub mod config;
pub mod lease_server;
pub mod socket;
pub mod stats;

pub use config::{DhcpConfig, DhcpConfigError};
pub use lease_server::{Destination, Lease, LeaseServer, Reply};
pub use socket::{DhcpError, DhcpServer};
pub use stats::DhcpStats;
