//! vmpod: the PID 1 of a pod that runs one virtual machine, making the VM a
//! first-class member of the pod's service mesh.

pub mod addressing;
pub mod cloudinit;
pub mod config;
pub mod consoles;
pub mod dhcp;
pub mod disks;
pub mod dns;
pub mod fdlimit;
pub mod health;
pub mod host;
pub mod init;
pub mod ipv6;
pub mod libvirt;
pub mod logging;
pub mod logtail;
pub mod net;
pub mod plan;
pub mod preflight;
pub mod ratelimit;
pub mod relay;
pub mod serial_console;
pub mod sidecar;
pub mod supervisor;
pub mod termtext;
