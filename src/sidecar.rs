//! What the pod's Istio sidecar must be told so that vmpod's data paths
//! work beside it: pod annotations, each with the reason, for
//! `vmpod render --what sidecar`.
//!
//! Istio's init container (or CNI plugin) installs nat rules in the pod's
//! namespace: PREROUTING sends every inbound TCP connection to Envoy's
//! port 15006, OUTPUT sends every outbound one to 15001. Guest packets
//! enter through the bridge, so PREROUTING would treat the guest's egress as
//! inbound traffic; and vmpod's ingress forwarder connects to the guest, so
//! OUTPUT would treat ingress as an outbound call. vmpod's table cannot
//! prevent either (an `accept` in one nft table does not stop another
//! table's chain on the same hook): the exclusions belong to the sidecar.
//! tests/sidecar_interop.rs turns these annotations into Istio's rules and
//! checks each data path against a stand-in for Envoy.

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
        let capture = if net.egress.mode == EgressMode::Tproxy {
            "rewrites the destination of the guest's TCP after TPROXY chose vmpod's \
             listener, and the guest's connections are reset in the handshake"
        } else {
            "sends the guest's TCP to Envoy's inbound port 15006 instead of vmpod's egress \
             proxy whenever Istio's nat chain runs before vmpod's (same hook, same \
             priority: the order is an accident of which was installed last)"
        };
        annotations.push(Annotation {
            key: EXCLUDE_INTERFACES,
            value: bridge.to_string(),
            why: format!(
                "Guest packets enter the pod on {bridge}; vmpod's egress proxy hands the \
                 guest's TCP to Envoy's outbound port 15001 as connections of the pod. \
                 Without this, Istio's PREROUTING capture {capture}; and Istio's OUTPUT \
                 capture takes vmpod's ingress connections to the guest for outbound calls \
                 of the pod."
            ),
        });
    } else {
        annotations.push(Annotation {
            key: REROUTE_VIRTUAL_INTERFACES,
            value: bridge.to_string(),
            why: format!(
                "Kernel egress mode has no proxy hop that Istio's OUTPUT capture would see: \
                 this makes Istio send TCP entering on {bridge} to Envoy's outbound port \
                 15001 (before Istio 1.25 the annotation is \
                 traffic.sidecar.istio.io/kubevirtInterfaces)."
            ),
        });
        annotations.push(Annotation {
            key: EXCLUDE_OUTBOUND_IP_RANGES,
            value: net.gateway.trunc().to_string(),
            why: "vmpod's ingress forwarder connects to the guest; without this, Istio's \
                  OUTPUT capture takes those connections for outbound calls of the pod."
                .into(),
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
            "# Put them under the pod template's metadata.annotations."
        )?;
        for a in &self.annotations {
            writeln!(f)?;
            write!(f, "{}", comment(&a.why, 78))?;
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
    fn kernel_mode_reroutes_the_bridge_and_excludes_the_guest_subnet() {
        let p = plan(&config("kernel", ""));
        assert_eq!(p.get(REROUTE_VIRTUAL_INTERFACES), Some("virbr0"));
        assert_eq!(p.get(EXCLUDE_OUTBOUND_IP_RANGES), Some("10.0.1.0/24"));
        assert_eq!(p.get(EXCLUDE_INTERFACES), None);
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
