//! The userspace data paths: the egress transparent proxy and the ingress
//! forwarder, over one accept loop (`proxy`) and one byte pump (`copy`,
//! which splices bulk flows through pooled pipes: `splice`, `pipe_pool`);
//! UDP ingress has its own session table (`udp`), UDP egress another
//! (`udp_egress`). `standalone` runs one relay alone (`vmpod relay`).

pub mod accel;
pub mod copy;
pub mod drain;
pub mod egress;
pub mod ingress;
pub mod pipe_pool;
pub mod proxy;
pub mod proxy_protocol;
pub mod running;
pub mod socket;
pub mod spec;
pub mod splice;
pub mod standalone;
pub mod stats;
pub mod udp;
pub mod udp_egress;
