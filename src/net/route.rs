//! Policy routing for TPROXY: packets carrying vmpod's mark are looked up in
//! a table of vmpod's own whose default route is `local`, so the kernel
//! delivers the guest's connections to the transparent listener.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteScope, RouteType};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{IpVersion, RouteMessageBuilder};

use crate::config::{EgressMode, Fwmark, VmConfig};
use crate::net::link::{LinkError, Netlink, describe, errno};

/// Priority of vmpod's rule: before `main` (32766), after `local` (0), and
/// clear of Istio's (32764/32765 in ambient mode).
pub const RULE_PRIORITY: u32 = 32000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyRoute {
    /// Mark and mask of the rule (`fwmark M/K`).
    pub fwmark: Fwmark,
    pub table: u32,
    pub priority: u32,
    pub ipv6: bool,
}

/// The policy route `config` needs: only tproxy mode has one.
pub fn plan(config: &VmConfig) -> Option<PolicyRoute> {
    let egress = &config.network.egress;
    (egress.mode == EgressMode::Tproxy).then(|| PolicyRoute {
        fwmark: egress.fwmark,
        table: egress.route_table,
        priority: RULE_PRIORITY,
        ipv6: config.network.gateway.addr().is_ipv6(),
    })
}

/// The IPv6 twin of [`plan`]'s route beside an IPv4 guest network whose
/// guest also has IPv6 (`network.ipv6`): the same mark and table, IPv6's
/// own rule and `local ::/0` route.
pub fn plan_ipv6(config: &VmConfig) -> Option<PolicyRoute> {
    plan(config)
        .filter(|r| !r.ipv6)
        .map(|r| PolicyRoute { ipv6: true, ..r })
}

impl fmt::Display for PolicyRoute {
    /// The `ip` commands an operator would type for the same state.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (family, default) = if self.ipv6 {
            ("-6 ", "::/0")
        } else {
            ("", "0.0.0.0/0")
        };
        writeln!(
            f,
            "ip {family}rule add fwmark {} lookup {} priority {}",
            self.fwmark, self.table, self.priority
        )?;
        write!(
            f,
            "ip {family}route add local {default} dev lo table {}",
            self.table
        )
    }
}

/// What went wrong applying, removing or checking a [`PolicyRoute`], naming
/// the rule or route as `ip` would print it.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("cannot {op} policy rule `{rule}`: {}", describe(.source))]
    Rule {
        op: &'static str,
        rule: String,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("cannot {op} route `{route}`: {}", describe(.source))]
    Route {
        op: &'static str,
        route: String,
        #[source]
        source: rtnetlink::Error,
    },

    #[error(
        "cannot delete policy rule `{rule}` alone: a rule at the same priority with the \
         same mark and table but more selectors comes first, and the kernel would delete \
         that one instead (see `ip rule show`); delete that rule first"
    )]
    AmbiguousRule { rule: String },

    #[error("no loopback device `lo` in this network namespace for route `{route}`")]
    NoLoopback { route: String },

    #[error(transparent)]
    Link(#[from] LinkError),
}

/// Add `r`'s rule and route unless they are already there. Idempotent: an
/// identical rule or route is neither an error nor duplicated.
pub async fn apply(nl: &Netlink, r: &PolicyRoute) -> Result<(), RouteError> {
    if find_rules(nl, r).await?.is_empty() {
        let mut add = nl.handle().rule().add();
        *add.message_mut() = rule_message(r);
        match add.execute().await {
            Ok(()) => tracing::info!(rule = rule_text(r), "added policy rule"),
            // The kernel refuses an identical rule: someone added it meanwhile.
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            Err(source) => {
                return Err(RouteError::Rule {
                    op: "add",
                    rule: rule_text(r),
                    source,
                });
            }
        }
    }

    let lo = loopback(nl, r).await?;
    if find_routes(nl, r, lo).await?.is_empty() {
        match nl
            .handle()
            .route()
            .add(route_message(r, lo))
            .execute()
            .await
        {
            Ok(()) => tracing::info!(route = route_text(r), "added route"),
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            Err(source) => {
                return Err(RouteError::Route {
                    op: "add",
                    route: route_text(r),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Delete `r`'s rule and route (every copy of them, and nothing else).
/// Absent is fine. Both are attempted even when the first fails; the first
/// error is returned.
pub async fn remove(nl: &Netlink, r: &PolicyRoute) -> Result<(), RouteError> {
    let rules = remove_rules(nl, r).await;
    let routes = remove_routes(nl, r).await;
    rules.and(routes)
}

/// Whether both `r`'s rule and its route are in the kernel.
pub async fn is_present(nl: &Netlink, r: &PolicyRoute) -> Result<bool, RouteError> {
    Ok(rule_present(nl, r).await? && route_present(nl, r).await?)
}

/// Whether `r`'s rule is in the kernel.
pub async fn rule_present(nl: &Netlink, r: &PolicyRoute) -> Result<bool, RouteError> {
    Ok(!find_rules(nl, r).await?.is_empty())
}

/// Whether `r`'s `local` default route is in its table.
pub async fn route_present(nl: &Netlink, r: &PolicyRoute) -> Result<bool, RouteError> {
    let lo = loopback(nl, r).await?;
    Ok(!find_routes(nl, r, lo).await?.is_empty())
}

/// The kernel deletes the first rule that matches the fields a delete request
/// gives, ignoring the selectors it does not give: a rule at the same
/// priority with the same mark and table plus, say, `iif lo`, listed before
/// vmpod's, would be deleted instead. So the delete is only sent when the
/// first rule it matches is vmpod's.
async fn remove_rules(nl: &Netlink, r: &PolicyRoute) -> Result<(), RouteError> {
    // Each round deletes one copy; a bound keeps a racing writer from
    // keeping us here.
    for _ in 0..16 {
        let rules = list_rules(nl, r).await?;
        let Some(first) = rules.iter().find(|rule| matches_delete(rule, r)) else {
            return Ok(());
        };
        if !is_our_rule(first, r) {
            if rules.iter().any(|rule| is_our_rule(rule, r)) {
                return Err(RouteError::AmbiguousRule { rule: rule_text(r) });
            }
            return Ok(());
        }
        match nl.handle().rule().del(rule_message(r)).execute().await {
            Ok(()) => tracing::info!(rule = rule_text(r), "deleted policy rule"),
            Err(e) if errno(&e) == Some(libc::ENOENT) => {}
            Err(source) => {
                return Err(RouteError::Rule {
                    op: "delete",
                    rule: rule_text(r),
                    source,
                });
            }
        }
    }
    Ok(())
}

async fn remove_routes(nl: &Netlink, r: &PolicyRoute) -> Result<(), RouteError> {
    // Without `lo` there is no route through it either.
    let Some(lo) = nl.link_index("lo").await? else {
        return Ok(());
    };
    for mut route in find_routes(nl, r, lo).await? {
        // Delete by what identifies the route, not by the dump's statistics.
        route.attributes.retain(|a| {
            matches!(
                a,
                RouteAttribute::Table(_)
                    | RouteAttribute::Oif(_)
                    | RouteAttribute::Priority(_)
                    | RouteAttribute::Destination(_)
            )
        });
        match nl.handle().route().del(route).execute().await {
            Ok(()) => tracing::info!(route = route_text(r), "deleted route"),
            Err(e) if errno(&e) == Some(libc::ESRCH) => {}
            Err(source) => {
                return Err(RouteError::Route {
                    op: "delete",
                    route: route_text(r),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The kernel's rules of `r`'s family, in the kernel's order.
async fn list_rules(nl: &Netlink, r: &PolicyRoute) -> Result<Vec<RuleMessage>, RouteError> {
    let version = if r.ipv6 { IpVersion::V6 } else { IpVersion::V4 };
    nl.handle()
        .rule()
        .get(version)
        .execute()
        .try_collect()
        .await
        .map_err(|source| RouteError::Rule {
            op: "list rules to find",
            rule: rule_text(r),
            source,
        })
}

/// The kernel's rules that are exactly `r`'s: the same family, mark, mask,
/// table and priority, and no other selector.
async fn find_rules(nl: &Netlink, r: &PolicyRoute) -> Result<Vec<RuleMessage>, RouteError> {
    let mut rules = list_rules(nl, r).await?;
    rules.retain(|rule| is_our_rule(rule, r));
    Ok(rules)
}

/// The rule vmpod adds, and deletes with.
fn rule_message(r: &PolicyRoute) -> RuleMessage {
    let mut message = RuleMessage::default();
    message.header.family = family(r);
    message.header.action = RuleAction::ToTable;
    // As `ip rule` does: a table above 255 only in the attribute.
    message.header.table = u8::try_from(r.table).unwrap_or(0);
    message.attributes = vec![
        RuleAttribute::Table(r.table),
        RuleAttribute::Priority(r.priority),
        RuleAttribute::FwMark(r.fwmark.mark()),
        RuleAttribute::FwMask(r.fwmark.mask()),
    ];
    message
}

/// The table, priority, mark and mask of a dumped rule.
fn rule_keys(rule: &RuleMessage) -> (u32, u32, u32, u32) {
    let mut keys = (u32::from(rule.header.table), 0, 0, 0);
    for attr in &rule.attributes {
        match attr {
            RuleAttribute::Table(t) => keys.0 = *t,
            RuleAttribute::Priority(p) => keys.1 = *p,
            RuleAttribute::FwMark(m) => keys.2 = *m,
            RuleAttribute::FwMask(m) => keys.3 = *m,
            _ => {}
        }
    }
    keys
}

/// Whether the kernel would take `rule` for a delete of [`rule_message`].
fn matches_delete(rule: &RuleMessage, r: &PolicyRoute) -> bool {
    rule.header.family == family(r)
        && rule.header.action == RuleAction::ToTable
        && rule_keys(rule) == (r.table, r.priority, r.fwmark.mark(), r.fwmark.mask())
}

fn is_our_rule(rule: &RuleMessage, r: &PolicyRoute) -> bool {
    let h = &rule.header;
    matches_delete(rule, r)
        && h.src_len == 0
        && h.dst_len == 0
        && h.tos == 0
        && rule.attributes.iter().all(|attr| match attr {
            RuleAttribute::Table(_)
            | RuleAttribute::Priority(_)
            | RuleAttribute::FwMark(_)
            | RuleAttribute::FwMask(_) => true,
            // What the kernel reports for a rule that does not use them.
            RuleAttribute::SuppressPrefixLen(u32::MAX)
            | RuleAttribute::SuppressIfGroup(u32::MAX)
            | RuleAttribute::L3MDev(false)
            | RuleAttribute::Protocol(_)
            | RuleAttribute::Other(_) => true,
            // Any other selector or modifier makes it someone else's rule.
            _ => false,
        })
}

/// The kernel's routes that are exactly `r`'s: `local` default via `lo` in
/// `r.table`.
async fn find_routes(
    nl: &Netlink,
    r: &PolicyRoute,
    lo: u32,
) -> Result<Vec<RouteMessage>, RouteError> {
    let query = if r.ipv6 {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    };
    let routes: Vec<RouteMessage> = nl
        .handle()
        .route()
        .get(query)
        .execute()
        .try_collect()
        .await
        .map_err(|source| RouteError::Route {
            op: "list routes to find",
            route: route_text(r),
            source,
        })?;
    Ok(routes
        .into_iter()
        .filter(|route| is_our_route(route, r, lo))
        .collect())
}

fn is_our_route(route: &RouteMessage, r: &PolicyRoute, lo: u32) -> bool {
    let h = &route.header;
    if h.address_family != family(r)
        || h.kind != RouteType::Local
        || h.destination_prefix_length != 0
        || h.source_prefix_length != 0
        || h.tos != 0
    {
        return false;
    }
    let mut table = u32::from(h.table);
    let mut oif = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(_) | RouteAttribute::MultiPath(_) | RouteAttribute::Via(_) => {
                return false;
            }
            _ => {}
        }
    }
    table == r.table && oif == Some(lo)
}

fn route_message(r: &PolicyRoute, lo: u32) -> RouteMessage {
    fn local_via<T>(b: RouteMessageBuilder<T>, r: &PolicyRoute, lo: u32) -> RouteMessage {
        b.kind(RouteType::Local)
            .scope(RouteScope::Host)
            .output_interface(lo)
            .table_id(r.table)
            .build()
    }
    if r.ipv6 {
        local_via(RouteMessageBuilder::<Ipv6Addr>::new(), r, lo)
    } else {
        local_via(RouteMessageBuilder::<Ipv4Addr>::new(), r, lo)
    }
}

async fn loopback(nl: &Netlink, r: &PolicyRoute) -> Result<u32, RouteError> {
    nl.link_index("lo")
        .await?
        .ok_or_else(|| RouteError::NoLoopback {
            route: route_text(r),
        })
}

fn family(r: &PolicyRoute) -> AddressFamily {
    if r.ipv6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

/// The rule as `ip rule` would print it.
pub fn rule_text(r: &PolicyRoute) -> String {
    format!(
        "{}fwmark {} lookup {} priority {}",
        if r.ipv6 { "-6 " } else { "" },
        r.fwmark,
        r.table,
        r.priority
    )
}

/// The route as `ip route` would print it.
pub fn route_text(r: &PolicyRoute) -> String {
    let default = if r.ipv6 { "::/0" } else { "0.0.0.0/0" };
    format!("local {default} dev lo table {}", r.table)
}
