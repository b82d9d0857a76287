//! The repairs against an in-memory kernel: what each removal leads to,
//! in which order, and how it is described.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;
use crate::config::IfName;

#[derive(Default)]
struct World {
    links: BTreeMap<String, LinkState>,
    addresses: BTreeMap<u32, Vec<IpNet>>,
    sysctls: BTreeMap<String, String>,
    rules: BTreeMap<bool, Vec<PlainRule>>,
    /// Operations that fail, by name.
    refuse: Vec<&'static str>,
    calls: Vec<String>,
    next_index: u32,
}

#[derive(Default)]
struct Fake(Mutex<World>);

impl Fake {
    fn healthy() -> Fake {
        let f = Fake::default();
        {
            let mut w = f.0.lock().unwrap();
            w.next_index = 10;
            w.links.extend([
                bridge_link(2),
                (
                    "vnet0".into(),
                    LinkState {
                        index: 3,
                        up: true,
                        mtu: 1500,
                        master: Some(2),
                    },
                ),
            ]);
            w.addresses.insert(2, vec![gw(), gw6()]);
            w.rules.insert(false, pod_rules(false).to_vec());
            w.rules.insert(true, pod_rules(true).to_vec());
            for s in sysctl::for_tap(&planned(), "vnet0") {
                w.sysctls.insert(s.key.clone(), s.value.to_string());
            }
        }
        f
    }
    fn with<T>(&self, f: impl FnOnce(&mut World) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
    fn call(&self, what: &'static str, detail: String) -> Result<(), HealError> {
        let mut w = self.0.lock().unwrap();
        w.calls.push(format!("{what} {detail}"));
        if w.refuse.contains(&what) {
            return Err(HealError::Other(format!("{what}: operation not permitted")));
        }
        Ok(())
    }
}

fn bridge_link(index: u32) -> (String, LinkState) {
    (
        "virbr0".into(),
        LinkState {
            index,
            up: true,
            mtu: 1400,
            master: None,
        },
    )
}

fn gw() -> IpNet {
    "10.0.1.1/24".parse().unwrap()
}
fn gw6() -> IpNet {
    "fd00:1::1/64".parse().unwrap()
}

fn spec() -> BridgeSpec {
    BridgeSpec {
        name: IfName::new("virbr0").unwrap(),
        gateway: gw(),
        gateway6: Some(gw6()),
        mtu: Some(1400),
    }
}

fn planned() -> Vec<Sysctl> {
    let yaml = "name: t\nboot: {kernel: /k}\n";
    let config = crate::config::load("<t>", yaml, crate::config::FileChecks::Warn)
        .unwrap()
        .config;
    sysctl::plan(&config, None)
}

impl Kernel for Fake {
    async fn link(&self, name: &str) -> Result<Option<LinkState>, HealError> {
        self.with(|w| Ok(w.links.get(name).cloned()))
    }
    async fn create_bridge(&self, spec: &BridgeSpec) -> Result<(), HealError> {
        self.call("create_bridge", spec.name.to_string())?;
        self.with(|w| {
            let index = w.next_index;
            w.next_index += 1;
            w.links.insert(
                spec.name.to_string(),
                LinkState {
                    index,
                    up: true,
                    mtu: 1400,
                    master: None,
                },
            );
            w.addresses.insert(index, vec![spec.gateway]);
        });
        Ok(())
    }
    async fn addresses(&self, index: u32) -> Result<Vec<IpNet>, HealError> {
        self.with(|w| Ok(w.addresses.get(&index).cloned().unwrap_or_default()))
    }
    async fn add_address(&self, _name: &str, index: u32, addr: IpNet) -> Result<(), HealError> {
        self.call("add_address", format!("{index} {addr}"))?;
        self.with(|w| w.addresses.entry(index).or_default().push(addr));
        Ok(())
    }
    async fn set_up(&self, index: u32) -> Result<(), HealError> {
        self.call("set_up", index.to_string())?;
        self.with(|w| {
            w.links
                .values_mut()
                .filter(|l| l.index == index)
                .for_each(|l| l.up = true)
        });
        Ok(())
    }
    async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), HealError> {
        self.call("set_mtu", format!("{index} {mtu}"))?;
        self.with(|w| {
            w.links
                .values_mut()
                .filter(|l| l.index == index)
                .for_each(|l| l.mtu = mtu)
        });
        Ok(())
    }
    async fn set_master(&self, index: u32, master: u32) -> Result<(), HealError> {
        self.call("set_master", format!("{index} {master}"))?;
        self.with(|w| {
            w.links
                .values_mut()
                .filter(|l| l.index == index)
                .for_each(|l| l.master = Some(master))
        });
        Ok(())
    }
    fn apply_sysctl(&self, s: &Sysctl) -> Result<Option<String>, HealError> {
        let current = self.with(|w| w.sysctls.get(&s.key).cloned());
        match current {
            Some(v) if v == s.value => Ok(None),
            other => {
                self.call("apply_sysctl", s.key.clone())?;
                self.with(|w| w.sysctls.insert(s.key.clone(), s.value.to_string()));
                Ok(Some(other.unwrap_or_else(|| "unset".into())))
            }
        }
    }
    async fn plain_rules(&self, ipv6: bool) -> Result<Vec<PlainRule>, HealError> {
        self.with(|w| Ok(w.rules.get(&ipv6).cloned().unwrap_or_default()))
    }
    async fn add_rule(&self, ipv6: bool, rule: PlainRule) -> Result<(), HealError> {
        self.call("add_rule", format!("{ipv6} {}", rule.priority))?;
        self.with(|w| w.rules.entry(ipv6).or_default().push(rule));
        Ok(())
    }
}

fn lines(repairs: &[Repair]) -> Vec<String> {
    repairs
        .iter()
        .map(|r| {
            format!(
                "repaired {} {}: found {}; did {}",
                r.piece, r.object, r.found, r.done
            )
        })
        .collect()
}

#[tokio::test]
async fn a_healthy_pod_needs_no_repair_and_no_write() {
    let k = Fake::healthy();
    assert_eq!(bridge(&k, &spec()).await.unwrap(), []);
    assert_eq!(
        tap(&k, "virbr0", "vnet0").await.unwrap(),
        TapCheck::Attached(vec![])
    );
    assert_eq!(sysctls(&k, &planned(), "vnet0").unwrap(), []);
    assert_eq!(pod_rules_back(&k, false).await.unwrap(), []);
    assert_eq!(pod_rules_back(&k, true).await.unwrap(), []);
    assert_eq!(k.with(|w| w.calls.clone()), Vec::<String>::new());
}

#[tokio::test]
async fn a_bridge_set_down_comes_up_with_its_ipv6_gateway_again() {
    let k = Fake::healthy();
    // What `ip link set virbr0 down` does: down, and its IPv6 addresses gone.
    k.with(|w| {
        w.links.get_mut("virbr0").unwrap().up = false;
        w.addresses
            .get_mut(&2)
            .unwrap()
            .retain(|a| a.addr().is_ipv4());
    });
    let done = bridge(&k, &spec()).await.unwrap();
    assert_eq!(
        lines(&done),
        [
            "repaired bridge virbr0: found link down; did set it up",
            "repaired bridge virbr0: found address fd00:1::1/64 missing; did added fd00:1::1/64",
        ]
    );
    assert_eq!(bridge(&k, &spec()).await.unwrap(), [], "repaired for good");
}

#[tokio::test]
async fn a_changed_mtu_and_a_removed_address_are_put_back() {
    let k = Fake::healthy();
    k.with(|w| {
        w.links.get_mut("virbr0").unwrap().mtu = 9000;
        w.addresses
            .get_mut(&2)
            .unwrap()
            .retain(|a| a.addr().is_ipv6());
    });
    let done = bridge(&k, &spec()).await.unwrap();
    assert_eq!(
        lines(&done),
        [
            "repaired bridge virbr0: found MTU 9000; did set MTU 1400",
            "repaired bridge virbr0: found address 10.0.1.1/24 missing; did added 10.0.1.1/24",
        ]
    );
}

#[tokio::test]
async fn a_deleted_bridge_is_made_again_and_the_tap_rejoins_it() {
    let k = Fake::healthy();
    k.with(|w| {
        w.links.remove("virbr0");
        w.links.get_mut("vnet0").unwrap().master = None;
    });
    let done = bridge(&k, &spec()).await.unwrap();
    assert_eq!(
        lines(&done),
        [
            "repaired bridge virbr0: found the bridge deleted; did created it again",
            "repaired bridge virbr0: found address fd00:1::1/64 missing; did added fd00:1::1/64",
        ]
    );
    let TapCheck::Attached(done) = tap(&k, "virbr0", "vnet0").await.unwrap() else {
        panic!("the tap is there")
    };
    assert_eq!(
        lines(&done),
        ["repaired tap vnet0: found not a port of virbr0; did attached it to virbr0"]
    );
    assert_eq!(k.with(|w| w.links["vnet0"].master), Some(10));
}

#[tokio::test]
async fn a_tap_taken_off_the_bridge_and_down_is_reattached_and_up() {
    let k = Fake::healthy();
    k.with(|w| {
        let t = w.links.get_mut("vnet0").unwrap();
        t.master = None;
        t.up = false;
    });
    let TapCheck::Attached(done) = tap(&k, "virbr0", "vnet0").await.unwrap() else {
        panic!("the tap is there")
    };
    assert_eq!(
        lines(&done),
        [
            "repaired tap vnet0: found not a port of virbr0; did attached it to virbr0",
            "repaired tap vnet0: found link down; did set it up",
        ]
    );
}

#[tokio::test]
async fn a_deleted_tap_is_reported_gone_for_the_supervisor() {
    let k = Fake::healthy();
    k.with(|w| w.links.remove("vnet0"));
    assert_eq!(tap(&k, "virbr0", "vnet0").await.unwrap(), TapCheck::Gone);
}

#[tokio::test]
async fn changed_sysctls_are_set_back_with_the_tap_in_their_keys() {
    let k = Fake::healthy();
    k.with(|w| {
        w.sysctls
            .insert("net.ipv4.conf.vnet0.rp_filter".into(), "1".into());
        w.sysctls.insert("net.ipv4.ip_forward".into(), "0".into());
    });
    let done = sysctls(&k, &planned(), "vnet0").unwrap();
    assert_eq!(
        lines(&done),
        [
            "repaired sysctl net.ipv4.ip_forward: found net.ipv4.ip_forward = 0; did set net.ipv4.ip_forward = 1",
            "repaired sysctl net.ipv4.conf.vnet0.rp_filter: found net.ipv4.conf.vnet0.rp_filter = 1; did set net.ipv4.conf.vnet0.rp_filter = 0",
        ]
    );
}

#[tokio::test]
async fn after_a_rule_flush_main_and_default_come_back_in_both_families() {
    let k = Fake::healthy();
    k.with(|w| w.rules.clear());
    let mut done = pod_rules_back(&k, false).await.unwrap();
    done.extend(pod_rules_back(&k, true).await.unwrap());
    assert_eq!(
        lines(&done),
        [
            "repaired rule ip rule 32766: from all lookup main: found `ip rule 32766: from all lookup main` missing along with vmpod's rule; did added `ip rule 32766: from all lookup main`",
            "repaired rule ip rule 32767: from all lookup default: found `ip rule 32767: from all lookup default` missing along with vmpod's rule; did added `ip rule 32767: from all lookup default`",
            "repaired rule ip -6 rule 32766: from all lookup main: found `ip -6 rule 32766: from all lookup main` missing along with vmpod's rule; did added `ip -6 rule 32766: from all lookup main`",
        ]
    );
    assert_eq!(pod_rules_back(&k, false).await.unwrap(), []);
}

#[tokio::test]
async fn a_repair_the_kernel_refuses_is_an_error_naming_it() {
    let k = Fake::healthy();
    k.with(|w| {
        w.links.get_mut("virbr0").unwrap().up = false;
        w.refuse.push("set_up");
    });
    let e = bridge(&k, &spec()).await.unwrap_err();
    assert_eq!(e.to_string(), "set_up: operation not permitted");
    // A failure of one sysctl stops the pass with its error, too.
    k.with(|w| {
        w.sysctls.insert("net.ipv4.ip_forward".into(), "0".into());
        w.refuse.push("apply_sysctl");
    });
    assert!(sysctls(&k, &planned(), "vnet0").is_err());
}
