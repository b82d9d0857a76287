//! The pod network namespace as vmpod shapes it: the nftables table it owns
//! (and, in sibling modules, the bridge, sysctls and policy routes).
//!
//! Rendering is separate from applying: each module turns the config into a
//! plan that can be printed and golden-tested without root.

pub mod firewall;
pub mod heal;
pub mod link;
pub mod nft;
pub mod repair;
pub mod route;
pub mod setup;
pub mod sysctl;
