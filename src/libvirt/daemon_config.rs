//! The configuration files vmpod writes for libvirtd, qemu and virtlogd:
//! container-friendly settings (no cgroup controllers, no namespaces, qemu's
//! stdio through virtlogd, logs on stderr so vmpod can carry them), and TCP
//! listening only when `consoles.libvirt` asks for it.

use std::fmt;
use std::path::PathBuf;

use crate::config::VmConfig;

/// One file vmpod writes before starting the daemons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub contents: String,
    /// Unix permission bits.
    pub mode: u32,
}

impl fmt::Display for ConfigFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# {} (mode {:o})", self.path.display(), self.mode)?;
        write!(f, "{}", self.contents)
    }
}

pub const LIBVIRTD_CONF: &str = "/etc/libvirt/libvirtd.conf";
pub const QEMU_CONF: &str = "/etc/libvirt/qemu.conf";
pub const VIRTLOGD_CONF: &str = "/etc/libvirt/virtlogd.conf";
pub const SASL_CONF: &str = "/etc/sasl2/libvirt.conf";
pub const SASL_DB: &str = "/etc/libvirt/passwd.db";

/// A libvirt config file is `key = value` lines; values are typed.
enum Value<'a> {
    Int(i64),
    Str(&'a str),
    List(&'a [&'a str]),
}

fn render(settings: &[(&str, Value<'_>, &str)]) -> String {
    let mut out = String::from("# Written by vmpod at start; edits are overwritten.\n");
    for (key, value, why) in settings {
        if !why.is_empty() {
            out.push_str(&format!("# {why}\n"));
        }
        let value = match value {
            Value::Int(n) => n.to_string(),
            Value::Str(s) => quote(s),
            Value::List(items) => format!(
                "[ {} ]",
                items
                    .iter()
                    .map(|s| quote(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        out.push_str(&format!("{key} = {value}\n"));
    }
    out
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub fn files(config: &VmConfig) -> Vec<ConfigFile> {
    let tcp = config.consoles.libvirt.as_ref();
    let port = tcp.map(|l| l.port.to_string()).unwrap_or_default();
    let mut libvirtd = vec![
        (
            "listen_tls",
            Value::Int(0),
            "no TLS certificates in the pod; remote access is TCP + SASL when enabled",
        ),
        (
            "listen_tcp",
            Value::Int(i64::from(tcp.is_some())),
            "TCP only when consoles.libvirt is configured",
        ),
    ];
    if tcp.is_some() {
        libvirtd.extend([
            ("tcp_port", Value::Str(&port), ""),
            (
                "auth_tcp",
                Value::Str("sasl"),
                "every TCP client must authenticate",
            ),
        ]);
    }
    libvirtd.extend([
        (
            "log_outputs",
            Value::Str("3:stderr"),
            "warnings and errors to stderr, which vmpod logs with component=libvirtd",
        ),
        (
            "admin_max_workers",
            Value::Int(2),
            "the admin socket is unused; keep it small",
        ),
    ]);
    let qemu = [
        (
            "cgroup_controllers",
            Value::List(&[]),
            "the container runtime owns the pod's cgroups",
        ),
        (
            "namespaces",
            Value::List(&[]),
            "qemu stays in the pod's mount namespace (private /dev needs CAP_SYS_ADMIN)",
        ),
        (
            "stdio_handler",
            Value::Str("logd"),
            "qemu's output goes through virtlogd, so a libvirtd restart loses nothing",
        ),
        (
            "security_driver",
            Value::Str("none"),
            "no AppArmor/SELinux labelling inside a container",
        ),
        (
            "remember_owner",
            Value::Int(0),
            "no xattrs on the image files",
        ),
    ];
    let virtlogd = [(
        "log_outputs",
        Value::Str("3:stderr"),
        "warnings and errors to stderr, which vmpod logs with component=virtlogd",
    )];
    let mut out = vec![
        ConfigFile {
            path: LIBVIRTD_CONF.into(),
            contents: render(&libvirtd),
            mode: 0o644,
        },
        ConfigFile {
            path: QEMU_CONF.into(),
            contents: render(&qemu),
            mode: 0o644,
        },
        ConfigFile {
            path: VIRTLOGD_CONF.into(),
            contents: render(&virtlogd),
            mode: 0o644,
        },
    ];
    if tcp.is_some() {
        out.push(ConfigFile {
            path: SASL_CONF.into(),
            contents: format!(
                "# Written by vmpod: libvirt's SASL users come from consoles.libvirt.credentials_file.\n\
                 # On TCP without TLS libvirtd accepts only mechanisms that also encrypt the\n\
                 # session (SSF >= 56): DIGEST-MD5 or GSSAPI. SCRAM offers no security layer.\n\
                 mech_list: digest-md5\nsasldb_path: {SASL_DB}\n"
            ),
            mode: 0o644,
        });
    }
    out
}
