//! The file descriptor budget. vmpod raises its soft `RLIMIT_NOFILE` to the
//! hard limit at start (a container's soft limit is often 1024, far below
//! what `max_connections: 10000` needs), and says at start when the relays'
//! limits cannot fit: each relayed TCP connection holds two descriptors,
//! each UDP ingress session one, each UDP egress session two.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::relay::spec::{IngressRelay, RelayPlan};

/// Descriptors vmpod needs besides the relayed connections: the health
/// endpoint's connections (256), listeners, netlink, libvirt, logs.
pub const OWN_FDS: u64 = 512;

/// The limit before and after [`raise_nofile`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoFile {
    pub was: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and logs the change.
pub fn raise_nofile() -> Result<NoFile, nix::Error> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
        tracing::info!(
            from = soft,
            to = hard,
            "raised the soft RLIMIT_NOFILE to the hard limit"
        );
    }
    Ok(NoFile {
        was: soft,
        soft: soft.max(hard),
        hard,
    })
}

/// [`raise_nofile`], logging a failure instead of returning it: vmpod runs
/// on with the limit it has.
pub fn raise_nofile_or_warn() -> Option<NoFile> {
    match raise_nofile() {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the soft RLIMIT_NOFILE; running with the current limit");
            None
        }
    }
}

/// One relay's share of the budget, for the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    pub what: String,
    pub fds: u64,
}

/// What the relays of `plan` need at their limits.
pub fn needs(plan: &RelayPlan) -> Vec<Need> {
    let mut out = Vec::new();
    if let Some(e) = &plan.egress {
        out.push(Need {
            what: format!("egress max_connections {} × 2", e.settings.max_connections),
            fds: 2 * u64::from(e.settings.max_connections),
        });
    }
    if let Some(u) = &plan.udp_egress {
        out.push(Need {
            what: format!("egress udp_max_sessions {} × 2", u.settings.max_sessions),
            fds: 2 * u64::from(u.settings.max_sessions),
        });
    }
    for i in &plan.ingress {
        out.push(match &i.relay {
            IngressRelay::Tcp(s) => Need {
                what: format!(
                    "ingress `{}` max_connections {} × 2",
                    i.name, s.max_connections
                ),
                fds: 2 * u64::from(s.max_connections),
            },
            IngressRelay::Udp(u) => Need {
                what: format!("ingress `{}` max_sessions {}", i.name, u.max_sessions),
                fds: u64::from(u.max_sessions),
            },
        });
    }
    out
}

/// The warning to log when `needs` plus [`OWN_FDS`] exceed `soft`.
pub fn budget_warning(needs: &[Need], soft: u64) -> Option<String> {
    let relays: u64 = needs.iter().map(|n| n.fds).sum();
    let total = relays + OWN_FDS;
    if total <= soft {
        return None;
    }
    let parts: Vec<String> = needs
        .iter()
        .map(|n| format!("{} = {}", n.what, n.fds))
        .collect();
    Some(format!(
        "the relays' limits need {total} file descriptors ({}, + {OWN_FDS} for vmpod itself) but RLIMIT_NOFILE is {soft}: past about {} relayed connections new ones are reset. Raise the container's nofile limit or lower max_connections",
        parts.join(", "),
        soft.saturating_sub(OWN_FDS) / 2
    ))
}

/// Logs [`budget_warning`] for `needs` against the current soft limit.
pub fn warn_if_over_budget(needs: &[Need]) {
    let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if let Some(w) = budget_warning(needs, soft) {
        tracing::warn!(soft_limit = soft, "{w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warning_names_every_relay_and_the_limit() {
        let needs = vec![
            Need {
                what: "egress max_connections 10000 × 2".into(),
                fds: 20_000,
            },
            Need {
                what: "ingress `http` max_connections 100 × 2".into(),
                fds: 200,
            },
        ];
        assert_eq!(budget_warning(&needs, 1_000_000), None);
        let w = budget_warning(&needs, 20_000).unwrap();
        assert!(w.contains("need 20712 file descriptors"), "{w}");
        assert!(
            w.contains("egress max_connections 10000 × 2 = 20000"),
            "{w}"
        );
        assert!(
            w.contains("ingress `http` max_connections 100 × 2 = 200"),
            "{w}"
        );
        assert!(w.contains("RLIMIT_NOFILE is 20000"), "{w}");
    }

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_one() {
        let n = raise_nofile().unwrap();
        assert_eq!(n.soft, n.hard);
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap().0, n.hard);
    }
}
