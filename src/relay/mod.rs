//! The userspace data paths: the egress transparent proxy and the ingress
//! forwarder, over one accept loop (`proxy`) and one byte pump (`copy`).

pub mod copy;
pub mod egress;
pub mod ingress;
pub mod proxy;
pub mod running;
pub mod socket;
pub mod stats;
