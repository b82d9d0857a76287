//! Checks made before `run` changes anything, so that a fault a user can fix
//! fails in one clear line and leaves nothing behind.

use std::net::TcpListener;
use std::path::Path;

use crate::config::VmConfig;
use crate::plan::Listener;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("{program} is not installed ({package}); vmpod needs it to {why}")]
    MissingProgram {
        program: &'static str,
        package: &'static str,
        why: &'static str,
    },
    #[error(
        "port {port} for {field} is already in use in the pod: {source}; change {field} or stop what holds it"
    )]
    PortInUse {
        port: u16,
        field: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sysctl(#[from] crate::net::sysctl::SysctlError),
    #[error("{field}: {path} is empty; put the password in it")]
    EmptySecret { field: &'static str, path: String },
    #[error("{field}: cannot read {path}: {source}")]
    UnreadableSecret {
        field: &'static str,
        path: String,
        source: std::io::Error,
    },
}

const PROGRAMS: &[(&str, &str, &str)] = &[
    ("libvirtd", "libvirt-daemon-system", "run the guest"),
    ("virtlogd", "libvirt-daemon-system", "log qemu's output"),
    ("nft", "nftables", "steer the guest's traffic"),
];

pub fn programs() -> Result<(), PreflightError> {
    for (program, package, why) in PROGRAMS {
        if !on_path(program) {
            return Err(PreflightError::MissingProgram {
                program,
                package,
                why,
            });
        }
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| Path::new(&dir).join(program).is_file())
}

/// Every TCP port vmpod will listen on must be free now.
pub fn ports(listeners: &[Listener], config: &VmConfig) -> Result<(), PreflightError> {
    for l in listeners {
        if l.protocol != crate::config::Protocol::Tcp {
            continue;
        }
        if let Err(source) = TcpListener::bind(l.addr) {
            return Err(PreflightError::PortInUse {
                port: l.addr.port(),
                field: field_of(&l.name, config),
                source,
            });
        }
    }
    Ok(())
}

/// The config field a listener comes from, for error messages.
fn field_of(listener: &str, config: &VmConfig) -> String {
    if let Some(name) = listener.strip_prefix("ingress/")
        && let Some(i) = config.network.ingress.iter().position(|i| i.name == name)
    {
        return format!("network.ingress[{i}].port");
    }
    match listener {
        "egress" => "network.egress.listen_port",
        "console/display" => "consoles.display.port",
        "console/libvirt" => "consoles.libvirt.port",
        "health" => "health.port",
        other => other,
    }
    .to_string()
}

/// Reads the display password: trailing newlines are dropped, empty is an error.
pub fn display_password(config: &VmConfig) -> Result<Option<String>, PreflightError> {
    let Some(path) = config
        .consoles
        .display
        .as_ref()
        .and_then(|d| d.password_file.as_ref())
    else {
        return Ok(None);
    };
    let field = "consoles.display.password_file";
    let text =
        std::fs::read_to_string(path).map_err(|source| PreflightError::UnreadableSecret {
            field,
            path: path.display().to_string(),
            source,
        })?;
    let password = text.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(PreflightError::EmptySecret {
            field,
            path: path.display().to_string(),
        });
    }
    Ok(Some(password))
}

/// The namespace-wide sysctls must hold their value or be settable; the
/// per-interface ones are checked when their interface exists.
pub fn sysctls(config: &VmConfig) -> Result<(), PreflightError> {
    let bridge = format!(".{}.", config.network.bridge);
    for s in crate::net::sysctl::plan(config, None) {
        if s.key.contains("<tap>") || s.key.contains(&bridge) {
            continue;
        }
        crate::net::sysctl::check_settable(Path::new("/"), &s)?;
    }
    Ok(())
}
