//! Links in the pod's network namespace, through rtnetlink: the bridge vmpod
//! owns (created with the gateway address) and the discovery of the tap
//! libvirt attaches to it.
//!
//! No `ip` command is run: every change is one netlink request, and every
//! "ensure" reads the kernel first so that running it again changes nothing.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAttribute, NeighbourMessage};
use rtnetlink::{LinkBridge, LinkUnspec, MulticastGroup};
use tokio::task::JoinHandle;

/// What went wrong with a link, naming the link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(#[source] std::io::Error),

    #[error("Netlink::connect must be called inside a tokio runtime")]
    NoRuntime,

    #[error("cannot subscribe to link events (RTNLGRP_LINK): {0}")]
    Subscribe(#[source] std::io::Error),

    /// A netlink request failed; `what` says which, on which object.
    #[error("{what}: {}", describe(.source))]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },

    #[error(
        "link `{name}` exists but is {kind}, not a bridge; \
         choose another `network.bridge` name or remove that link"
    )]
    NotABridge { name: String, kind: String },

    #[error("bridge `{bridge}` does not exist in this network namespace")]
    NoBridge { bridge: String },

    #[error("bridge `{bridge}` was deleted while waiting for the VM's tap to join it")]
    BridgeDeleted { bridge: String },

    #[error(
        "no tap joined bridge `{bridge}` (as an up port) within {timeout:?}; \
         check that the domain's <interface type='bridge'> names `{bridge}` \
         and look for errors from libvirtd/qemu in the log"
    )]
    PortTimeout { bridge: String, timeout: Duration },

    #[error("the link event subscription closed while waiting for a port of bridge `{bridge}`")]
    SubscriptionClosed { bridge: String },
}

impl LinkError {
    fn netlink(what: impl Into<String>, source: rtnetlink::Error) -> Self {
        LinkError::Netlink {
            what: what.into(),
            source,
        }
    }
}

/// The errno of a netlink NACK (positive), if `e` is one.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

/// The kernel's answer in words, with what to do when it is a permission
/// problem.
pub(crate) fn describe(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(msg) if errno(e) == Some(libc::EPERM) => format!(
            "{} (vmpod needs CAP_NET_ADMIN in the pod's network namespace)",
            msg.to_io()
        ),
        rtnetlink::Error::NetlinkError(msg) => msg.to_io().to_string(),
        other => other.to_string(),
    }
}

/// A port of a bridge: a link whose master is the bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    pub index: u32,
}

/// A tokio task that is aborted when this guard goes away, so a connection
/// never outlives its user (also when the user's future is cancelled).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An rtnetlink connection, driven by a task on the tokio runtime it was
/// created on; the task ends when this value is dropped.
pub struct Netlink {
    handle: rtnetlink::Handle,
    _conn: AbortOnDrop,
}

impl Netlink {
    /// Open a netlink socket in the calling thread's network namespace and
    /// spawn its connection on the current tokio runtime.
    pub fn connect() -> Result<Netlink, LinkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| LinkError::NoRuntime)?;
        let (conn, handle, _) = rtnetlink::new_connection().map_err(LinkError::Connect)?;
        Ok(Netlink {
            handle,
            _conn: AbortOnDrop(runtime.spawn(conn)),
        })
    }

    pub(crate) fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// Create bridge `name` if it is missing, give it `gateway` (address and
    /// prefix) if it lacks it, set its MTU when `mtu` is given, and bring it
    /// up. Idempotent: what is already right is left alone. Returns the
    /// bridge's ifindex.
    ///
    /// The MTU is set with a separate request after creation, never in the
    /// create message: only an MTU set that way is kept by the kernel when a
    /// port with a larger MTU joins (otherwise the bridge follows its
    /// smallest port). An IPv6 gateway is added with `nodad`: the bridge has
    /// no carrier until the tap joins, and a tentative address cannot be
    /// bound.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        gateway: IpNet,
        mtu: Option<u32>,
    ) -> Result<u32, LinkError> {
        let link = match self.get_link(name).await? {
            Some(link) => link,
            None => {
                let created = self
                    .handle
                    .link()
                    .add(LinkBridge::new(name).build())
                    .execute()
                    .await;
                match created {
                    Ok(()) => tracing::info!(bridge = name, "created bridge"),
                    // Someone created it between our look-up and our request.
                    Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                    Err(e) => return Err(LinkError::netlink(format!("create bridge `{name}`"), e)),
                }
                self.get_link(name)
                    .await?
                    .ok_or_else(|| LinkError::NoBridge {
                        bridge: name.to_owned(),
                    })?
            }
        };
        ensure_is_bridge(name, &link)?;
        let index = link.header.index;

        if let Some(mtu) = mtu
            && link_mtu(&link) != Some(mtu)
        {
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
                .execute()
                .await
                .map_err(|e| LinkError::netlink(format!("set MTU {mtu} on bridge `{name}`"), e))?;
            tracing::info!(bridge = name, mtu, "set bridge MTU");
        }

        self.ensure_address(name, index, gateway).await?;

        if !link.header.flags.contains(LinkFlags::Up) {
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(|e| LinkError::netlink(format!("bring bridge `{name}` up"), e))?;
            tracing::info!(bridge = name, "bridge up");
        }
        Ok(index)
    }

    /// Give the bridge `name` (ifindex `index`) the address `gateway` unless
    /// it has it; an IPv6 one with `nodad` (see [`Netlink::ensure_bridge`]).
    pub async fn ensure_address(
        &self,
        name: &str,
        index: u32,
        gateway: IpNet,
    ) -> Result<(), LinkError> {
        if !self
            .has_address(index, gateway)
            .await
            .map_err(|e| LinkError::netlink(format!("list the addresses of bridge `{name}`"), e))?
        {
            let mut add = self
                .handle
                .address()
                .add(index, gateway.addr(), gateway.prefix_len());
            if gateway.addr().is_ipv6() {
                add.message_mut().header.flags |= AddressHeaderFlags::Nodad;
            }
            match add.execute().await {
                Ok(()) => {
                    tracing::info!(bridge = name, address = %gateway, "added gateway address")
                }
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => {
                    return Err(LinkError::netlink(
                        format!("add address {gateway} to bridge `{name}`"),
                        e,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Forget every neighbour entry on link `name`. Run as a (re)started
    /// guest's tap joins: an entry left from its previous boot would tell
    /// readiness that the guest answers before it does.
    pub async fn flush_neighbours(&self, name: &str) -> Result<usize, LinkError> {
        let Some(index) = self.link_index(name).await? else {
            return Ok(0);
        };
        let entries: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| LinkError::netlink(format!("list the neighbours on `{name}`"), e))?;
        let mut forgotten = 0;
        for mut entry in entries.into_iter().filter(|n| n.header.ifindex == index) {
            entry
                .attributes
                .retain(|a| matches!(a, NeighbourAttribute::Destination(_)));
            match self.handle.neighbours().del(entry).execute().await {
                Ok(()) => forgotten += 1,
                Err(e) if errno(&e) == Some(libc::ENOENT) => {}
                Err(e) => {
                    return Err(LinkError::netlink(
                        format!("delete a neighbour entry on `{name}`"),
                        e,
                    ));
                }
            }
        }
        Ok(forgotten)
    }

    /// Delete bridge `name` if it is present; absent is not an error. A link
    /// of that name that is not a bridge is refused, not deleted.
    pub async fn delete_bridge(&self, name: &str) -> Result<(), LinkError> {
        let Some(link) = self.get_link(name).await? else {
            return Ok(());
        };
        ensure_is_bridge(name, &link)?;
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => {
                tracing::info!(bridge = name, "deleted bridge");
                Ok(())
            }
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(LinkError::netlink(format!("delete bridge `{name}`"), e)),
        }
    }

    /// Wait until a port of `bridge` that is up exists, other than `exclude`
    /// (a tap known to be stale, e.g. from the domain's previous run), and
    /// return it.
    ///
    /// A port is accepted when its master is the bridge and it has IFF_UP.
    /// Its operstate is not looked at: a tap stays UNKNOWN (or DOWN until
    /// qemu opens it). libvirt enslaves the tap first and sets it up last, so
    /// IFF_UP means libvirt has finished with it. When several ports qualify
    /// at once, the one with the highest ifindex (the newest) is returned.
    ///
    /// The link multicast group is subscribed to before the current links are
    /// listed, so a port that joins between the two is seen as an event
    /// rather than lost. A socket overrun (lost events) triggers a new
    /// listing. Fails after `timeout` with an error naming the bridge, or at
    /// once if the bridge is missing or deleted meanwhile.
    pub async fn wait_for_port_except(
        &self,
        bridge: &str,
        exclude: Option<&str>,
        timeout: Duration,
    ) -> Result<Port, LinkError> {
        // Subscribe first: the socket is bound to the group when this returns.
        let (conn, _handle, mut events) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
                .map_err(LinkError::Subscribe)?;
        let _conn = AbortOnDrop(tokio::spawn(conn));

        let search = async {
            let master = self
                .link_index(bridge)
                .await?
                .ok_or_else(|| LinkError::NoBridge {
                    bridge: bridge.to_owned(),
                })?;
            if let Some(port) = self.find_up_port(bridge, master, exclude).await? {
                return Ok(port);
            }
            while let Some((message, _)) = events.next().await {
                match message.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                        if let Some(port) = up_port(&link, master, exclude) {
                            return Ok(port);
                        }
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link))
                        if link.header.index == master =>
                    {
                        return Err(LinkError::BridgeDeleted {
                            bridge: bridge.to_owned(),
                        });
                    }
                    NetlinkPayload::Overrun(_) => {
                        tracing::warn!(bridge, "link events were lost; listing the links again");
                        if let Some(port) = self.find_up_port(bridge, master, exclude).await? {
                            return Ok(port);
                        }
                    }
                    _ => {}
                }
            }
            Err(LinkError::SubscriptionClosed {
                bridge: bridge.to_owned(),
            })
        };
        let port =
            tokio::time::timeout(timeout, search)
                .await
                .map_err(|_| LinkError::PortTimeout {
                    bridge: bridge.to_owned(),
                    timeout,
                })??;
        tracing::info!(
            bridge,
            port = port.name,
            index = port.index,
            "port joined bridge"
        );
        Ok(port)
    }

    /// The current ports of `bridge` (links whose master it is), up or not,
    /// in ifindex order.
    pub async fn ports(&self, bridge: &str) -> Result<Vec<Port>, LinkError> {
        let master = self
            .link_index(bridge)
            .await?
            .ok_or_else(|| LinkError::NoBridge {
                bridge: bridge.to_owned(),
            })?;
        let links = self.links(bridge).await?;
        let mut ports: Vec<Port> = links
            .iter()
            .filter(|link| master_of(link) == Some(master))
            .filter_map(port_of)
            .collect();
        ports.sort_by_key(|p| p.index);
        Ok(ports)
    }

    /// The ifindex of link `name`, or None when there is no such link.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, LinkError> {
        Ok(self.get_link(name).await?.map(|link| link.header.index))
    }

    pub(crate) async fn get_link(&self, name: &str) -> Result<Option<LinkMessage>, LinkError> {
        let mut answers = self.handle.link().get().match_name(name).execute();
        match answers.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(LinkError::netlink(format!("look up link `{name}`"), e)),
        }
    }

    /// Every link in the namespace; `bridge` only names the purpose in errors.
    async fn links(&self, bridge: &str) -> Result<Vec<LinkMessage>, LinkError> {
        self.handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| {
                LinkError::netlink(
                    format!("list links to find the ports of bridge `{bridge}`"),
                    e,
                )
            })
    }

    async fn find_up_port(
        &self,
        bridge: &str,
        master: u32,
        exclude: Option<&str>,
    ) -> Result<Option<Port>, LinkError> {
        let links = self.links(bridge).await?;
        Ok(links
            .iter()
            .filter_map(|link| up_port(link, master, exclude))
            .max_by_key(|p| p.index))
    }

    async fn has_address(&self, index: u32, net: IpNet) -> Result<bool, rtnetlink::Error> {
        let addresses: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await?;
        Ok(addresses.iter().any(|a| {
            a.header.prefix_len == net.prefix_len()
                && a.attributes.iter().any(|attr| {
                    matches!(attr, AddressAttribute::Address(ip) | AddressAttribute::Local(ip)
                        if *ip == net.addr())
                })
        }))
    }
}

fn link_kind(link: &LinkMessage) -> Option<InfoKind> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
            LinkInfo::Kind(kind) => Some(kind.clone()),
            _ => None,
        }),
        _ => None,
    })
}

fn ensure_is_bridge(name: &str, link: &LinkMessage) -> Result<(), LinkError> {
    match link_kind(link) {
        Some(InfoKind::Bridge) => Ok(()),
        kind => Err(LinkError::NotABridge {
            name: name.to_owned(),
            kind: kind.map_or_else(
                || "a device without a kind".to_owned(),
                |k| format!("a {k}"),
            ),
        }),
    }
}

pub(crate) fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

pub(crate) fn master_of(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Controller(index) => Some(*index),
        _ => None,
    })
}

fn port_of(link: &LinkMessage) -> Option<Port> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfName(name) => Some(Port {
            name: name.clone(),
            index: link.header.index,
        }),
        _ => None,
    })
}

/// `link` as a port of `master` that vmpod accepts: enslaved, IFF_UP, and
/// not the excluded name.
fn up_port(link: &LinkMessage, master: u32, exclude: Option<&str>) -> Option<Port> {
    if master_of(link) != Some(master) || !link.header.flags.contains(LinkFlags::Up) {
        return None;
    }
    port_of(link).filter(|port| Some(port.name.as_str()) != exclude)
}
