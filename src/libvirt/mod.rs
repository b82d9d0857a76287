//! Everything vmpod says to libvirt: the domain XML it defines (`domain`),
//! and, next to it, the daemons and the connection.

pub mod agent;
pub mod conn;
pub mod daemon;
pub mod daemon_config;
pub mod domain;
pub mod guest;
