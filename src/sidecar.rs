//! What the pod's Istio sidecar may be told about vmpod: pod annotations,
//! each with the reason and whether it is needed, for
//! `vmpod render --what sidecar`.
//!
//! Istio's init container (or CNI plugin) installs nat rules in the pod's
//! namespace: PREROUTING sends every inbound TCP connection to Envoy's
//! port 15006, OUTPUT sends every outbound one to 15001. Guest packets
//! enter through the bridge, so PREROUTING would treat the guest's egress as
//! inbound traffic; and vmpod's ingress forwarder connects to the guest, so
//! OUTPUT would treat ingress as an outbound call. vmpod's table prevents
//! both by binding the NAT of those connections in nat chains that run
//! before Istio's (see `net::firewall`), so the bridge annotations are
//! optional: they keep Istio's chains off the bridge altogether. Only the
//! console ports need one, and only under STRICT mTLS.
//! tests/sidecar_interop.rs turns these annotations into Istio's rules and
//! checks each data path with and without them against a stand-in for
//! Envoy; tests/mesh_matrix.rs does it for every mesh with none at all.

use std::fmt;

use crate::config::{EgressMode, VmConfig};

pub const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
pub const REROUTE_VIRTUAL_INTERFACES: &str = "istio.io/reroute-virtual-interfaces";
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";

/// One pod annotation and why vmpod needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Annotation {
    pub key: &'static str,
    pub value: String,
    pub why: String,
    /// Whether a data path breaks without it.
    pub needed: bool,
}

/// The annotations for one VM's pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarPlan {
    pub vm: String,
    pub mode: EgressMode,
    pub annotations: Vec<Annotation>,
}

impl SidecarPlan {
    /// The value of annotation `key`, if the plan has it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|a| a.key == key)
            .map(|a| a.value.as_str())
    }
}

/// The annotations `config` needs.
pub fn plan(config: &VmConfig) -> SidecarPlan {
    let net = &config.network;
    let bridge = &net.bridge;
    let mut annotations = Vec::new();
    if net.egress.mode.uses_proxy() {
        annotations.push(Annotation {
            key: EXCLUDE_INTERFACES,
            value: bridge.to_string(),
            why: format!(
                "Guest packets enter the pod on {bridge}; vmpod's egress proxy hands the \
                 guest's TCP to Envoy's outbound port 15001 as connections of the pod. vmpod's \
                 table already binds the guest's connections (and its own to the guest) \
                 before Istio's nat chains run, so Istio's capture never takes them; this \
                 keeps Istio's chains off {bridge} altogether."
            ),
            needed: false,
        });
    } else {
        annotations.push(Annotation {
            key: EXCLUDE_OUTBOUND_IP_RANGES,
            value: net.gateway.trunc().to_string(),
            why: format!(
                "Kernel egress mode forwards the guest's packets, and they bypass the mesh \
                 (vmpod's table binds their NAT before Istio's REDIRECT, so \
                 {REROUTE_VIRTUAL_INTERFACES} has no effect): use egress mode tproxy or \
                 redirect for the mesh to see the guest. vmpod's ingress forwarder connects \
                 to the guest; vmpod's table keeps Istio's OUTPUT capture off those \
                 connections already, this keeps Istio's chains off them altogether."
            ),
            needed: false,
        });
    }
    let mut console_ports = Vec::new();
    if let Some(d) = &config.consoles.display {
        console_ports.push(d.port);
    }
    if let Some(l) = &config.consoles.libvirt {
        console_ports.push(l.port);
    }
    if !console_ports.is_empty() {
        annotations.push(Annotation {
            key: EXCLUDE_INBOUND_PORTS,
            value: console_ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(","),
            why: "Console clients (virt-viewer, virt-manager) are outside the mesh and \
                  authenticate to the console itself (password, SASL); under STRICT mTLS \
                  Envoy would refuse their plain TCP."
                .into(),
            needed: true,
        });
    }
    SidecarPlan {
        vm: config.name.clone(),
        mode: net.egress.mode,
        annotations,
    }
}

/// `# ` comment lines of at most `width` columns.
fn comment(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > width && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

impl fmt::Display for SidecarPlan {
    /// YAML to paste under the pod template's `metadata.annotations`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "# Istio sidecar annotations for VM `{}` (network.egress.mode: {}).",
            self.vm,
            self.mode.as_str()
        )?;
        writeln!(
            f,
            "# vmpod's data paths need no annotation in any mesh; those marked optional"
        )?;
        writeln!(
            f,
            "# only keep Istio's rules off vmpod's bridge. Put the ones you want under the"
        )?;
        writeln!(f, "# pod template's metadata.annotations.")?;
        for a in &self.annotations {
            writeln!(f)?;
            let status = if a.needed { "Needed" } else { "Optional" };
            write!(f, "{}", comment(&format!("{status}. {}", a.why), 78))?;
            writeln!(f, "{}: \"{}\"", a.key, a.value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mode: &str, extra: &str) -> VmConfig {
        let text =
            crate::config::EMBEDDED_EXAMPLE.replace("mode: tproxy", &format!("mode: {mode}"));
        let text = format!("{text}{extra}");
        crate::config::load("example.yaml", &text, crate::config::FileChecks::Warn)
            .unwrap_or_else(|e| panic!("{e}"))
            .config
    }

    #[test]
    fn proxy_modes_exclude_the_bridge_and_nothing_else() {
        for mode in ["tproxy", "redirect"] {
            let p = plan(&config(mode, ""));
            let keys: Vec<_> = p.annotations.iter().map(|a| a.key).collect();
            assert_eq!(keys, [EXCLUDE_INTERFACES], "{mode}");
            assert_eq!(p.get(EXCLUDE_INTERFACES), Some("virbr0"));
        }
    }

    #[test]
    fn kernel_mode_excludes_the_guest_subnet_and_reroutes_nothing() {
        let p = plan(&config("kernel", ""));
        assert_eq!(p.get(REROUTE_VIRTUAL_INTERFACES), None);
        assert_eq!(p.get(EXCLUDE_OUTBOUND_IP_RANGES), Some("10.0.1.0/24"));
        assert_eq!(p.get(EXCLUDE_INTERFACES), None);
    }

    #[test]
    fn only_the_console_ports_are_needed() {
        let p = plan(&config(
            "kernel",
            "consoles:\n  display:\n    port: 5901\n    insecure: true\n",
        ));
        let needed: Vec<_> = p
            .annotations
            .iter()
            .filter(|a| a.needed)
            .map(|a| a.key)
            .collect();
        assert_eq!(needed, [EXCLUDE_INBOUND_PORTS]);
        for mode in ["tproxy", "redirect"] {
            assert!(
                plan(&config(mode, ""))
                    .annotations
                    .iter()
                    .all(|a| !a.needed)
            );
        }
    }

    #[test]
    fn console_ports_are_excluded_from_inbound_capture() {
        let p = plan(&config(
            "tproxy",
            "consoles:\n  display:\n    port: 5901\n    insecure: true\n  libvirt:\n    port: 16510\n    credentials_file: /nonexistent\n",
        ));
        assert_eq!(p.get(EXCLUDE_INBOUND_PORTS), Some("5901,16510"));
    }

    #[test]
    fn comments_wrap_at_the_width() {
        let text = comment(&"word ".repeat(40), 20);
        assert!(
            text.lines().all(|l| l.len() <= 20 && l.starts_with("# ")),
            "{text}"
        );
    }
}
