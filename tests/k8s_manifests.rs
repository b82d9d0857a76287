//! The Kubernetes manifests under deploy/k8s, offline: every kustomization builds
//! (`kubectl kustomize`), and its output validates against Kubernetes' OpenAPI schemas (strict:
//! unknown fields fail) and Istio's CRD schemas (deploy/k8s/tools/validate.py). Deliberately
//! broken manifests fail the same validation. And the manifests agree with vmpod itself: the
//! ConfigMap's config passes vmpod's validation, the grace period covers its shutdown_grace,
//! the probes reach its health port, the Istio overlay carries the annotations
//! `vmpod render --what sidecar` prints, and the pod asks for no privilege it does not need.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use support::sandbox::repo_root;

const KUSTOMIZATIONS: &[&str] = &[
    "deploy/k8s/base",
    "deploy/k8s/overlays/istio",
    "deploy/k8s/overlays/ingress",
    "deploy/k8s/overlays/smarter-devices",
];

/// Where deploy/local/install-deps.sh puts the validators.
fn tools_dir() -> PathBuf {
    std::env::var_os("VMPOD_K8S_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/vmpod-tools"))
}

fn venv_python() -> PathBuf {
    tools_dir().join("venv/bin/python")
}

/// Fails naming what is missing; never skips.
fn require_tools() {
    let mut missing = Vec::new();
    if Command::new("kubectl")
        .args(["kustomize", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        missing.push("kubectl with kustomize (kubectl kustomize)".to_string());
    }
    if Command::new("node")
        .arg("--version")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        missing.push("node (Debian package nodejs)".to_string());
    }
    let python = venv_python();
    if !python.is_file() {
        missing.push(format!(
            "{} (the kubernetes-validate venv)",
            python.display()
        ));
    }
    let istio = tools_dir().join("node/node_modules/@kubernetes-models/istio");
    if !istio.is_dir() {
        missing.push(format!(
            "{} (npm @kubernetes-models/istio)",
            istio.display()
        ));
    }
    assert!(
        missing.is_empty(),
        "this test needs: {}; run deploy/local/install-deps.sh",
        missing.join(", ")
    );
}

/// `kubectl kustomize DIR`: the objects a user would apply.
fn build(dir: &Path) -> String {
    require_tools();
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 manifests")
}

/// Runs the offline validator on a YAML stream; (passed, report).
fn validate(yaml: &str) -> (bool, String) {
    require_tools();
    let mut child = Command::new(venv_python())
        .arg(repo_root().join("deploy/k8s/tools/validate.py"))
        .arg("-")
        .env("VMPOD_K8S_TOOLS", tools_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run validate.py");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write manifests");
    let out = child.wait_with_output().expect("wait for validate.py");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

#[test]
fn every_kustomization_builds_and_validates_against_the_schemas() {
    for dir in KUSTOMIZATIONS {
        let yaml = build(&repo_root().join(dir));
        let (ok, report) = validate(&yaml);
        assert!(ok, "{dir} does not validate:\n{report}");
        let objects = yaml.matches("\nkind: ").count() + usize::from(yaml.starts_with("kind: "));
        let checked = report.lines().filter(|l| l.starts_with("ok ")).count();
        assert_eq!(
            checked, objects,
            "{dir}: every object must be checked against a schema:\n{report}"
        );
    }
}

/// The base's objects with one text edit applied; panics if `from` is not there.
fn broken_base(from: &str, to: &str) -> String {
    let yaml = build(&repo_root().join("deploy/k8s/base"));
    assert!(yaml.contains(from), "the base no longer contains {from:?}");
    yaml.replacen(from, to, 1)
}

fn assert_rejected(yaml: &str, expect: &[&str]) {
    let (ok, report) = validate(yaml);
    assert!(!ok, "a broken manifest passed validation:\n{report}");
    let fail: Vec<&str> = report.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        fail.iter()
            .any(|l| expect.iter().all(|needle| l.contains(needle))),
        "no FAIL line names {expect:?}:\n{report}"
    );
}

#[test]
fn a_misspelt_field_fails_validation() {
    assert_rejected(
        &broken_base("readinessProbe:", "readinesProbe:"),
        &["StatefulSet/vmpod", "readinesProbe"],
    );
}

#[test]
fn a_value_of_the_wrong_type_fails_validation() {
    assert_rejected(
        &broken_base("replicas: 1", "replicas: one"),
        &["StatefulSet/vmpod", "replicas", "'one'"],
    );
}

#[test]
fn a_missing_required_field_fails_validation() {
    // A Service port without its number.
    assert_rejected(
        &broken_base(
            "- name: http-metrics\n    port: 8181\n",
            "- name: http-metrics\n",
        ),
        &["Service/vmpod-metrics", "'port' is a required property"],
    );
}

#[test]
fn the_research_removed_api_versions_fail_validation() {
    // The research's Ingress: extensions/v1beta1, removed in Kubernetes 1.22.
    let research = "apiVersion: extensions/v1beta1\nkind: Ingress\nmetadata:\n  name: vm\n  annotations:\n    kubernetes.io/ingress.class: istio\nspec:\n  rules:\n  - http:\n      paths:\n      - path: /\n        backend:\n          serviceName: vm\n          servicePort: 80\n";
    assert_rejected(research, &["extensions/v1beta1 Ingress/vm", "no schema"]);
}

#[test]
fn a_broken_istio_object_fails_validation() {
    let yaml = build(&repo_root().join("deploy/k8s/overlays/istio"));
    assert!(yaml.contains("number: 8080"));
    assert_rejected(
        &yaml.replacen("number: 8080", "number: eighty", 1),
        &["VirtualService/vmpod", "must be integer"],
    );
    assert_rejected(
        &yaml.replacen("protocol: HTTP", "protocol: 17", 1),
        &["Gateway/vmpod", "must be string"],
    );
}

// ---- the manifests against vmpod ----

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Object {
    api_version: String,
    kind: String,
    metadata: Meta,
    spec: Spec,
    data: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Meta {
    name: String,
    annotations: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Spec {
    // StatefulSet
    template: Option<PodTemplate>,
    service_name: Option<String>,
    volume_claim_templates: Vec<ClaimTemplate>,
    // Service
    ports: Vec<ServicePort>,
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ClaimTemplate {
    metadata: Meta,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ServicePort {
    name: String,
    port: u16,
    target_port: Option<IntOrString>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(u64),
    String(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PodTemplate {
    metadata: Meta,
    spec: PodSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct PodSpec {
    termination_grace_period_seconds: Option<u64>,
    host_network: bool,
    host_pid: bool,
    security_context: PodSecurity,
    containers: Vec<Container>,
    volumes: Vec<Volume>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PodSecurity {
    sysctls: Vec<Sysctl>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Sysctl {
    name: String,
    value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Container {
    name: String,
    ports: Vec<ContainerPort>,
    liveness_probe: Option<Probe>,
    readiness_probe: Option<Probe>,
    resources: Resources,
    security_context: ContainerSecurity,
    volume_mounts: Vec<VolumeMount>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ContainerPort {
    name: String,
    container_port: u16,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Probe {
    http_get: Option<HttpGet>,
}

#[derive(Debug, Deserialize)]
struct HttpGet {
    path: String,
    port: IntOrString,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Resources {
    limits: BTreeMap<String, IntOrString>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ContainerSecurity {
    privileged: Option<bool>,
    allow_privilege_escalation: Option<bool>,
    capabilities: Capabilities,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Capabilities {
    add: Vec<String>,
    drop: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct VolumeMount {
    name: String,
    mount_path: String,
    sub_path: Option<String>,
    read_only: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Volume {
    name: String,
    host_path: Option<HostPath>,
    config_map: Option<NamedRef>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HostPath {
    path: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NamedRef {
    name: String,
}

fn objects(dir: &str) -> Vec<Object> {
    let yaml = build(&repo_root().join(dir));
    serde_saphyr::from_multiple(&yaml).unwrap_or_else(|e| panic!("parse {dir}: {e}"))
}

fn one<'a>(objects: &'a [Object], kind: &str, name_prefix: &str) -> &'a Object {
    let found: Vec<&Object> = objects
        .iter()
        .filter(|o| o.kind == kind && o.metadata.name.starts_with(name_prefix))
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind} {name_prefix}*");
    found[0]
}

fn pod(objects: &[Object]) -> &PodTemplate {
    one(objects, "StatefulSet", "vmpod")
        .spec
        .template
        .as_ref()
        .expect("the StatefulSet has a pod template")
}

fn vmpod_container(objects: &[Object]) -> &Container {
    pod(objects)
        .spec
        .containers
        .iter()
        .find(|c| c.name == "vmpod")
        .expect("a container named vmpod")
}

/// The VM config the ConfigMap carries, through vmpod's own validation.
fn vm_config(objects: &[Object]) -> vmpod::config::VmConfig {
    let pod = pod(objects);
    let volume = pod
        .spec
        .volumes
        .iter()
        .find(|v| v.name == "config")
        .and_then(|v| v.config_map.as_ref())
        .expect("a configMap volume named config");
    let mount = vmpod_container(objects)
        .volume_mounts
        .iter()
        .find(|m| m.name == "config")
        .expect("the config volume is mounted");
    assert_eq!(
        (mount.mount_path.as_str(), mount.sub_path.as_deref()),
        ("/etc/vmpod/vm.yaml", Some("vm.yaml")),
        "the config must land where the image's CMD reads it"
    );
    let map = one(objects, "ConfigMap", &volume.name);
    let text = map.data.get("vm.yaml").expect("ConfigMap key vm.yaml");
    vmpod::config::load("ConfigMap vm.yaml", text, vmpod::config::FileChecks::Warn)
        .unwrap_or_else(|e| panic!("the ConfigMap's config does not pass vmpod check:\n{e}"))
        .config
}

fn port_number(container: &Container, port: &IntOrString) -> u16 {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).expect("port fits u16"),
        IntOrString::String(name) => {
            container
                .ports
                .iter()
                .find(|p| &p.name == name)
                .unwrap_or_else(|| panic!("no container port named {name}"))
                .container_port
        }
    }
}

#[test]
fn the_grace_period_covers_vmpods_shutdown_grace() {
    for dir in KUSTOMIZATIONS {
        let objects = objects(dir);
        let config = vm_config(&objects);
        let grace = pod(&objects)
            .spec
            .termination_grace_period_seconds
            .expect("terminationGracePeriodSeconds is set");
        let needed = config.shutdown_grace().as_secs() + 30;
        assert!(
            grace >= needed,
            "{dir}: terminationGracePeriodSeconds {grace} < shutdown_grace + 30 s = {needed}"
        );
    }
}

#[test]
fn probes_and_ports_match_the_vms_config() {
    let objects = objects("deploy/k8s/base");
    let config = vm_config(&objects);
    let container = vmpod_container(&objects);
    for (probe, path) in [
        (&container.liveness_probe, "/healthz"),
        (&container.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("an httpGet probe on {path}"));
        assert_eq!(get.path, path);
        assert_eq!(port_number(container, &get.port), config.health.port);
    }
    let container_ports: Vec<u16> = container.ports.iter().map(|p| p.container_port).collect();
    let mut wanted: Vec<u16> = config.network.ingress.iter().map(|i| i.port).collect();
    wanted.extend(config.consoles.display.as_ref().map(|d| d.port));
    wanted.extend(config.consoles.libvirt.as_ref().map(|l| l.port));
    wanted.push(config.health.port);
    for port in &wanted {
        assert!(
            container_ports.contains(port),
            "port {port} of the VM config is not a containerPort: {container_ports:?}"
        );
    }
    // Every Service port reaches a port vmpod listens on.
    let services: Vec<&Object> = objects.iter().filter(|o| o.kind == "Service").collect();
    assert!(
        services.len() >= 3,
        "application, console and metrics Services"
    );
    for service in services {
        for port in &service.spec.ports {
            let target = port
                .target_port
                .clone()
                .unwrap_or(IntOrString::Int(u64::from(port.port)));
            let n = port_number(container, &target);
            assert!(
                wanted.contains(&n),
                "Service {} port {} targets {n}, where vmpod does not listen",
                service.metadata.name,
                port.name
            );
        }
    }
    let statefulset = one(&objects, "StatefulSet", "vmpod");
    let governing = statefulset
        .spec
        .service_name
        .as_deref()
        .expect("serviceName");
    assert_eq!(
        one(&objects, "Service", governing)
            .spec
            .cluster_ip
            .as_deref(),
        Some("None"),
        "the StatefulSet's governing Service is headless"
    );
    assert!(
        statefulset
            .spec
            .volume_claim_templates
            .iter()
            .any(|c| c.metadata.name == "disks"),
        "the disk is a PersistentVolumeClaim (why this is a StatefulSet)"
    );
    // What the guest writes lives on the claim (a persistent overlay, or a
    // disk without overlay) or in vmpod's state directory (an ephemeral
    // overlay); an image under an overlay is mounted read-only.
    let mount_of = |path: &std::path::Path| {
        container
            .volume_mounts
            .iter()
            .filter(|m| path.starts_with(&m.mount_path))
            .max_by_key(|m| m.mount_path.len())
    };
    for (i, disk) in config.disks.iter().enumerate() {
        let written = match (&disk.overlay, &disk.overlay_path, &disk.path) {
            (Some(_), Some(overlay), _) => Some(overlay),
            (None, _, Some(path)) if !disk.readonly && !disk.cdrom => Some(path),
            _ => None,
        };
        if let Some(written) = written {
            assert!(
                mount_of(written).is_some_and(|m| m.name == "disks"),
                "disks[{i}]: {} is not on the disks claim",
                written.display()
            );
        }
        if let (Some(_), Some(base)) = (&disk.overlay, &disk.path) {
            let m = mount_of(base).unwrap_or_else(|| {
                panic!("disks[{i}]: the image {} is on no volume", base.display())
            });
            assert!(
                m.read_only == Some(true),
                "disks[{i}]: the image under the overlay is on volume {}, which is not mounted read-only",
                m.name
            );
        }
    }
}

/// The capability set the container test proves sufficient (tests/container_image.rs runs
/// the image with exactly the StatefulSet's list).
const MINIMAL_CAPABILITIES: &[&str] = &[
    "NET_ADMIN",
    "SETUID",
    "SETGID",
    "SETPCAP",
    "CHOWN",
    "FOWNER",
    "DAC_OVERRIDE",
    "KILL",
    "NET_BIND_SERVICE",
    "NET_RAW",
];

#[test]
fn no_privilege_beyond_the_minimal_set() {
    for dir in KUSTOMIZATIONS {
        let objects = objects(dir);
        let pod = pod(&objects);
        assert!(!pod.spec.host_network && !pod.spec.host_pid, "{dir}");
        for v in &pod.spec.volumes {
            assert!(
                v.host_path.is_none(),
                "{dir}: volume {} is a hostPath ({})",
                v.name,
                v.host_path.as_ref().map(|h| h.path.as_str()).unwrap_or("")
            );
        }
        let c = vmpod_container(&objects);
        let sc = &c.security_context;
        assert_eq!(
            sc.privileged,
            Some(false),
            "{dir}: privileged must be false"
        );
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{dir}");
        assert_eq!(sc.capabilities.drop, ["ALL"], "{dir}");
        let mut add = sc.capabilities.add.clone();
        add.sort();
        let mut minimal: Vec<String> = MINIMAL_CAPABILITIES.iter().map(|s| s.to_string()).collect();
        minimal.sort();
        assert_eq!(add, minimal, "{dir}: the capability set");
        let devices: Vec<&String> = c
            .resources
            .limits
            .keys()
            .filter(|k| k.contains('/'))
            .collect();
        let expected = if dir.ends_with("smarter-devices") {
            ["smarter-devices/kvm", "smarter-devices/net_tun"]
        } else {
            ["devices.kubevirt.io/kvm", "devices.kubevirt.io/tun"]
        };
        assert_eq!(devices, expected, "{dir}: devices from a device plugin");
    }
}

#[test]
fn the_pod_sysctls_are_the_ones_vmpod_needs() {
    // vmpod cannot write a container's read-only /proc/sys: whatever its plan needs at pod
    // level must come from the pod spec. Per-interface settings inherit `default`.
    let objects = objects("deploy/k8s/base");
    let sysctls: BTreeMap<&str, &str> = pod(&objects)
        .spec
        .security_context
        .sysctls
        .iter()
        .map(|s| (s.name.as_str(), s.value.as_str()))
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_vmpod"))
        .args(["render", "--what", "plan"])
        .arg(repo_root().join("deploy/k8s/base/vm.yaml"))
        .output()
        .expect("run vmpod render");
    assert!(out.status.success(), "vmpod render failed");
    let plan = String::from_utf8_lossy(&out.stdout);
    let mut checked = 0;
    for line in plan.lines().filter(|l| l.starts_with("net.")) {
        let (key, rest) = line.split_once(" = ").expect("sysctl line");
        let value = rest.split_whitespace().next().expect("value");
        let pod_key = if key.starts_with("net.ipv4.conf.") && !key.starts_with("net.ipv4.conf.all.")
        {
            "net.ipv4.conf.default.rp_filter".to_string()
        } else if let Some(rest) = key.strip_prefix("net.ipv6.conf.")
            && !rest.starts_with("all.")
        {
            // The bridge's IPv6 keys (printed when this host has IPv6, so that
            // `network.ipv6: auto` turns it on) inherit `default` too.
            let setting = rest.rsplit('.').next().expect("a setting");
            format!("net.ipv6.conf.default.{setting}")
        } else {
            key.to_string()
        };
        assert_eq!(
            sysctls.get(pod_key.as_str()).copied(),
            Some(value),
            "vmpod's plan needs {key} = {value}; the pod sets {sysctls:?}"
        );
        checked += 1;
    }
    assert!(checked >= 4, "the plan printed no sysctls:\n{plan}");
}

#[test]
fn the_istio_overlay_carries_the_annotations_vmpod_renders() {
    let objects = objects("deploy/k8s/overlays/istio");
    let config = vm_config(&objects);
    let annotations = &pod(&objects).metadata.annotations;
    let plan = vmpod::sidecar::plan(&config);
    assert!(!plan.annotations.is_empty());
    for a in &plan.annotations {
        assert_eq!(
            annotations.get(a.key).map(String::as_str),
            Some(a.value.as_str()),
            "annotation {} ({})",
            a.key,
            a.why
        );
    }
    assert_eq!(
        pod(&objects)
            .metadata
            .labels
            .get("sidecar.istio.io/inject")
            .map(String::as_str),
        Some("true")
    );
    let gateway = one(&objects, "Gateway", "vmpod");
    assert!(gateway.api_version.starts_with("networking.istio.io/"));
    one(&objects, "VirtualService", "vmpod");
    assert!(
        !objects.iter().any(|o| o.kind == "Ingress"),
        "the Istio overlay publishes through a Gateway, not an Ingress"
    );
    let plain = objects_of_kind("deploy/k8s/overlays/ingress", "Ingress");
    assert_eq!(plain, ["networking.k8s.io/v1"]);
}

fn objects_of_kind(dir: &str, kind: &str) -> Vec<String> {
    objects(dir)
        .into_iter()
        .filter(|o| o.kind == kind)
        .map(|o| o.api_version)
        .collect()
}
