//! The userspace data paths: the egress transparent proxy and the ingress
//! forwarder, over one accept loop (`proxy`) and one byte pump (`copy`);
//! UDP ingress has its own session table (`udp`).

pub mod copy;
pub mod egress;
pub mod ingress;
pub mod proxy;
pub mod proxy_protocol;
pub mod running;
pub mod socket;
pub mod standalone;
pub mod stats;
pub mod udp;
