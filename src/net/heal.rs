//! Self-repair of the pieces of the pod network vmpod owns besides its nft
//! table and policy route: the bridge (present, up, MTU, gateway
//! addresses), the tap's membership of the bridge and its up state, the
//! sysctls, and the pod's own `main`/`default` policy rules when they went
//! with vmpod's (an `ip rule flush`).
//!
//! The checks talk to the kernel only through [`Kernel`], so that what is
//! repaired, and how it is described, is tested without root against a
//! fake; [`Netlink`] is the real one. Each repair comes back as a
//! [`Repair`] that the caller logs at warn and counts.

use std::fmt;
use std::future::Future;
use std::path::Path;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkFlags;
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{IpVersion, LinkUnspec};

use super::link::{LinkError, Netlink, describe, errno};
use super::setup::BridgeSpec;
use super::sysctl::{self, Sysctl, SysctlError};

/// The pieces vmpod owns, as the `piece` label of `vmpod_repairs_total`
/// and the log field of a repair name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Piece {
    Bridge,
    Tap,
    Sysctl,
    Rule,
    Route,
    Table,
    Listener,
}

impl Piece {
    pub const ALL: [Piece; 7] = [
        Piece::Bridge,
        Piece::Tap,
        Piece::Sysctl,
        Piece::Rule,
        Piece::Route,
        Piece::Table,
        Piece::Listener,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Piece::Bridge => "bridge",
            Piece::Tap => "tap",
            Piece::Sysctl => "sysctl",
            Piece::Rule => "rule",
            Piece::Route => "route",
            Piece::Table => "table",
            Piece::Listener => "listener",
        }
    }
}

impl fmt::Display for Piece {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One repair: what was found wrong and what was done about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    pub piece: Piece,
    /// The object, as `ip` or `sysctl` names it (`virbr0`, a sysctl key).
    pub object: String,
    pub found: String,
    pub done: String,
}

impl Repair {
    pub fn new(
        piece: Piece,
        object: &str,
        found: impl Into<String>,
        done: impl Into<String>,
    ) -> Self {
        Repair {
            piece,
            object: object.to_owned(),
            found: found.into(),
            done: done.into(),
        }
    }

    /// The one warn line of a repair. Its shape, `repaired PIECE OBJECT:
    /// found ...; did ...`, is what the reliability scorecard greps for.
    pub fn log(&self) {
        tracing::warn!(
            piece = self.piece.as_str(),
            object = %self.object,
            found = %self.found,
            done = %self.done,
            "repaired {} {}: found {}; did {}",
            self.piece,
            self.object,
            self.found,
            self.done
        );
    }
}

/// What a check could not look at or could not change.
#[derive(Debug, thiserror::Error)]
pub enum HealError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error("{what}: {}", describe(.source))]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// A fake's fault, in the unit tests.
    #[error("{0}")]
    Other(String),
}

fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> HealError {
    let what = what.into();
    move |source| HealError::Netlink { what, source }
}

/// A link as the checks need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub up: bool,
    pub mtu: u32,
    /// The ifindex of the bridge it is a port of.
    pub master: Option<u32>,
}

/// A policy rule without selectors: `priority: from all lookup table`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlainRule {
    pub priority: u32,
    pub table: u32,
}

/// The routing tables the kernel's own rules look up.
pub const TABLE_MAIN: u32 = 254;
pub const TABLE_DEFAULT: u32 = 253;

/// The rules every namespace starts with besides `local` (which a flush
/// keeps): IPv4 has `main` and `default`, IPv6 `main` only.
pub fn pod_rules(ipv6: bool) -> &'static [PlainRule] {
    const V4: [PlainRule; 2] = [
        PlainRule {
            priority: 32766,
            table: TABLE_MAIN,
        },
        PlainRule {
            priority: 32767,
            table: TABLE_DEFAULT,
        },
    ];
    if ipv6 { &V4[..1] } else { &V4 }
}

/// The kernel operations the repairs use: links, addresses, sysctls, rules.
pub trait Kernel: Sync {
    fn link(&self, name: &str)
    -> impl Future<Output = Result<Option<LinkState>, HealError>> + Send;
    fn create_bridge(
        &self,
        spec: &BridgeSpec,
    ) -> impl Future<Output = Result<(), HealError>> + Send;
    fn addresses(&self, index: u32) -> impl Future<Output = Result<Vec<IpNet>, HealError>> + Send;
    fn add_address(
        &self,
        name: &str,
        index: u32,
        addr: IpNet,
    ) -> impl Future<Output = Result<(), HealError>> + Send;
    fn set_up(&self, index: u32) -> impl Future<Output = Result<(), HealError>> + Send;
    fn set_mtu(&self, index: u32, mtu: u32) -> impl Future<Output = Result<(), HealError>> + Send;
    fn set_master(
        &self,
        index: u32,
        master: u32,
    ) -> impl Future<Output = Result<(), HealError>> + Send;
    /// Writes `s` when it differs; the value it had when it did.
    fn apply_sysctl(&self, s: &Sysctl) -> Result<Option<String>, HealError>;
    /// The selector-less `lookup` rules of a family.
    fn plain_rules(
        &self,
        ipv6: bool,
    ) -> impl Future<Output = Result<Vec<PlainRule>, HealError>> + Send;
    fn add_rule(
        &self,
        ipv6: bool,
        rule: PlainRule,
    ) -> impl Future<Output = Result<(), HealError>> + Send;
}

/// The bridge as planned: recreated if deleted, brought up, its MTU and
/// its gateway addresses restored. Up comes before the addresses: taking
/// a link down drops its IPv6 addresses.
pub async fn bridge<K: Kernel>(k: &K, spec: &BridgeSpec) -> Result<Vec<Repair>, HealError> {
    let name = spec.name.as_str();
    let mut done = Vec::new();
    let link = match k.link(name).await? {
        Some(link) => link,
        None => {
            k.create_bridge(spec).await?;
            done.push(Repair::new(
                Piece::Bridge,
                name,
                "the bridge deleted",
                "created it again",
            ));
            k.link(name).await?.ok_or_else(|| {
                HealError::Link(LinkError::NoBridge {
                    bridge: name.into(),
                })
            })?
        }
    };
    if let Some(mtu) = spec.mtu
        && link.mtu != mtu
    {
        k.set_mtu(link.index, mtu).await?;
        done.push(Repair::new(
            Piece::Bridge,
            name,
            format!("MTU {}", link.mtu),
            format!("set MTU {mtu}"),
        ));
    }
    if !link.up {
        k.set_up(link.index).await?;
        done.push(Repair::new(Piece::Bridge, name, "link down", "set it up"));
    }
    let have = k.addresses(link.index).await?;
    for want in std::iter::once(spec.gateway).chain(spec.gateway6) {
        if !have.contains(&want) {
            k.add_address(name, link.index, want).await?;
            done.push(Repair::new(
                Piece::Bridge,
                name,
                format!("address {want} missing"),
                format!("added {want}"),
            ));
        }
    }
    Ok(done)
}

/// What became of the guest's tap.
#[derive(Debug, PartialEq, Eq)]
pub enum TapCheck {
    /// It exists, is up and a port of the bridge (perhaps after repairs).
    Attached(Vec<Repair>),
    /// It no longer exists: only a new NIC (or guest) brings one back.
    Gone,
}

/// The tap back on the bridge and up, when it still exists.
pub async fn tap<K: Kernel>(k: &K, bridge: &str, tap: &str) -> Result<TapCheck, HealError> {
    let Some(link) = k.link(tap).await? else {
        return Ok(TapCheck::Gone);
    };
    let Some(master) = k.link(bridge).await? else {
        return Err(HealError::Link(LinkError::NoBridge {
            bridge: bridge.into(),
        }));
    };
    let mut done = Vec::new();
    if link.master != Some(master.index) {
        k.set_master(link.index, master.index).await?;
        let found = if link.master.is_some() {
            format!(
                "a port of another link (ifindex {})",
                link.master.unwrap_or(0)
            )
        } else {
            format!("not a port of {bridge}")
        };
        done.push(Repair::new(
            Piece::Tap,
            tap,
            found,
            format!("attached it to {bridge}"),
        ));
    }
    if !link.up {
        k.set_up(link.index).await?;
        done.push(Repair::new(Piece::Tap, tap, "link down", "set it up"));
    }
    Ok(TapCheck::Attached(done))
}

/// Every planned sysctl, `<tap>` replaced by the tap, back to its value.
pub fn sysctls<K: Kernel>(k: &K, planned: &[Sysctl], tap: &str) -> Result<Vec<Repair>, HealError> {
    let mut done = Vec::new();
    for s in sysctl::for_tap(planned, tap) {
        if let Some(from) = k.apply_sysctl(&s)? {
            done.push(Repair::new(
                Piece::Sysctl,
                &s.key,
                format!("{} = {from}", s.key),
                format!("set {} = {}", s.key, s.value),
            ));
        }
    }
    Ok(done)
}

/// The pod's `main` (and, for IPv4, `default`) rule, added back when they
/// are missing. Called only when vmpod's own rule went too: the sign of a
/// flush, which vmpod, the only process watching, undoes. Missing alone,
/// they are someone's choice, and left alone.
pub async fn pod_rules_back<K: Kernel>(k: &K, ipv6: bool) -> Result<Vec<Repair>, HealError> {
    let have = k.plain_rules(ipv6).await?;
    let mut done = Vec::new();
    for want in pod_rules(ipv6) {
        if !have.contains(want) {
            k.add_rule(ipv6, *want).await?;
            let text = rule_text(ipv6, *want);
            done.push(Repair::new(
                Piece::Rule,
                &text,
                format!("`{text}` missing along with vmpod's rule"),
                format!("added `{text}`"),
            ));
        }
    }
    Ok(done)
}

fn rule_text(ipv6: bool, r: PlainRule) -> String {
    let table = match r.table {
        TABLE_MAIN => "main".to_string(),
        TABLE_DEFAULT => "default".to_string(),
        t => t.to_string(),
    };
    format!(
        "ip {}rule {}: from all lookup {table}",
        if ipv6 { "-6 " } else { "" },
        r.priority
    )
}

impl Kernel for Netlink {
    async fn link(&self, name: &str) -> Result<Option<LinkState>, HealError> {
        Ok(self.get_link(name).await?.map(|link| LinkState {
            index: link.header.index,
            up: link.header.flags.contains(LinkFlags::Up),
            mtu: super::link::link_mtu(&link).unwrap_or(0),
            master: super::link::master_of(&link),
        }))
    }

    async fn create_bridge(&self, spec: &BridgeSpec) -> Result<(), HealError> {
        self.ensure_bridge(&spec.name, spec.gateway, spec.mtu)
            .await?;
        Ok(())
    }

    async fn addresses(&self, index: u32) -> Result<Vec<IpNet>, HealError> {
        let messages: Vec<_> = self
            .handle()
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(netlink(format!("list the addresses of ifindex {index}")))?;
        Ok(messages
            .iter()
            .filter_map(|a| {
                a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Local(ip) => IpNet::new(*ip, a.header.prefix_len).ok(),
                    AddressAttribute::Address(ip) => IpNet::new(*ip, a.header.prefix_len).ok(),
                    _ => None,
                })
            })
            .collect())
    }

    async fn add_address(&self, name: &str, index: u32, addr: IpNet) -> Result<(), HealError> {
        self.ensure_address(name, index, addr).await?;
        Ok(())
    }

    async fn set_up(&self, index: u32) -> Result<(), HealError> {
        self.handle()
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(netlink(format!("set ifindex {index} up")))
    }

    async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), HealError> {
        self.handle()
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(netlink(format!("set MTU {mtu} on ifindex {index}")))
    }

    async fn set_master(&self, index: u32, master: u32) -> Result<(), HealError> {
        self.handle()
            .link()
            .set(LinkUnspec::new_with_index(index).controller(master).build())
            .execute()
            .await
            .map_err(netlink(format!(
                "attach ifindex {index} to the bridge (ifindex {master})"
            )))
    }

    fn apply_sysctl(&self, s: &Sysctl) -> Result<Option<String>, HealError> {
        Ok(match sysctl::apply_one(Path::new("/"), s)? {
            sysctl::Applied::AlreadySet => None,
            sysctl::Applied::Changed { from } => Some(from),
        })
    }

    async fn plain_rules(&self, ipv6: bool) -> Result<Vec<PlainRule>, HealError> {
        let version = if ipv6 { IpVersion::V6 } else { IpVersion::V4 };
        let rules: Vec<RuleMessage> = self
            .handle()
            .rule()
            .get(version)
            .execute()
            .try_collect()
            .await
            .map_err(netlink("list the policy rules"))?;
        Ok(rules.iter().filter_map(plain_rule).collect())
    }

    async fn add_rule(&self, ipv6: bool, rule: PlainRule) -> Result<(), HealError> {
        let mut message = RuleMessage::default();
        message.header.family = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        message.header.action = RuleAction::ToTable;
        message.header.table = u8::try_from(rule.table).unwrap_or(0);
        message.attributes = vec![
            RuleAttribute::Table(rule.table),
            RuleAttribute::Priority(rule.priority),
        ];
        let mut add = self.handle().rule().add();
        *add.message_mut() = message;
        match add.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(netlink(format!("add `{}`", rule_text(ipv6, rule)))(e)),
        }
    }
}

/// A dumped rule as a [`PlainRule`] when it is a `lookup` with no selector.
fn plain_rule(rule: &RuleMessage) -> Option<PlainRule> {
    let h = &rule.header;
    if h.action != RuleAction::ToTable || h.src_len != 0 || h.dst_len != 0 || h.tos != 0 {
        return None;
    }
    let mut r = PlainRule {
        priority: 0,
        table: u32::from(h.table),
    };
    for attr in &rule.attributes {
        match attr {
            RuleAttribute::Table(t) => r.table = *t,
            RuleAttribute::Priority(p) => r.priority = *p,
            RuleAttribute::SuppressPrefixLen(u32::MAX)
            | RuleAttribute::SuppressIfGroup(u32::MAX)
            | RuleAttribute::L3MDev(false)
            | RuleAttribute::Protocol(_)
            | RuleAttribute::Other(_) => {}
            _ => return None,
        }
    }
    Some(r)
}

#[cfg(test)]
mod tests;
