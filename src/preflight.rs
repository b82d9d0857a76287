//! Checks made before `run` changes anything, so that a fault a user can fix
//! fails in one clear line and leaves nothing behind.

use std::net::{TcpListener, UdpSocket};
use std::path::Path;

use crate::config::{Protocol, VmConfig};
use crate::consoles::{self, SaslUser, Secret};
use crate::net::setup::NetworkPlan;
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
        "port {port}/{protocol} for {field} is already in use in the pod: {source}; change {field} or stop what holds it"
    )]
    PortInUse {
        port: u16,
        protocol: &'static str,
        field: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sysctl(#[from] crate::net::sysctl::SysctlError),
    #[error("{field}: {source}")]
    Secret {
        field: &'static str,
        source: crate::consoles::ConsoleError,
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

/// Every TCP and UDP port vmpod will listen on must be free now. IPv6-only
/// listeners count only when the pod has IPv6, as when they are opened.
pub fn ports(listeners: &[Listener]) -> Result<(), PreflightError> {
    let ipv6 = crate::relay::ingress::pod_has_ipv6();
    for l in listeners.iter().filter(|l| ipv6 || !l.only_with_pod_ipv6) {
        let bound = match l.protocol {
            Protocol::Tcp => TcpListener::bind(l.addr).map(drop),
            Protocol::Udp => UdpSocket::bind(l.addr).map(drop),
        };
        if let Err(source) = bound {
            return Err(PreflightError::PortInUse {
                port: l.addr.port(),
                protocol: l.protocol.as_str(),
                field: l.field.clone(),
                source,
            });
        }
    }
    Ok(())
}

/// Reads the display password (see [`consoles::read_password`]). An
/// `insecure` display without a password file starts with a warning.
pub fn display_password(config: &VmConfig) -> Result<Option<Secret>, PreflightError> {
    let Some(console) = config.consoles.display.as_ref() else {
        return Ok(None);
    };
    let Some(path) = console.password_file.as_ref() else {
        tracing::warn!(
            port = console.port,
            "consoles.display has no password_file and insecure: true: anyone who reaches the port can take over the guest's screen and keyboard"
        );
        return Ok(None);
    };
    consoles::read_password(path)
        .map(Some)
        .map_err(|source| PreflightError::Secret {
            field: "consoles.display.password_file",
            source,
        })
}

/// The SASL users for libvirt's TCP console, and the tool that stores them.
pub fn libvirt_credentials(config: &VmConfig) -> Result<Option<Vec<SaslUser>>, PreflightError> {
    let Some(console) = config.consoles.libvirt.as_ref() else {
        return Ok(None);
    };
    if !on_path(consoles::SASLPASSWD2) {
        return Err(PreflightError::MissingProgram {
            program: consoles::SASLPASSWD2,
            package: "sasl2-bin",
            why: "store the users of consoles.libvirt",
        });
    }
    if !consoles::digest_md5_available() {
        return Err(PreflightError::MissingProgram {
            program: "the SASL DIGEST-MD5 plugin (libdigestmd5.so)",
            package: "libsasl2-modules",
            why: "authenticate the users of consoles.libvirt",
        });
    }
    consoles::read_credentials(&console.credentials_file)
        .map(Some)
        .map_err(|source| PreflightError::Secret {
            field: "consoles.libvirt.credentials_file",
            source,
        })
}

/// The namespace-wide sysctls must hold their value or be settable; the
/// per-interface ones are checked when their interface exists.
pub fn sysctls(network: &NetworkPlan) -> Result<(), PreflightError> {
    let bridge = format!(".{}.", network.bridge.name);
    let tap = format!(".{}.", crate::net::sysctl::TAP_PLACEHOLDER);
    for s in &network.sysctls {
        if s.key.contains(&tap) || s.key.contains(&bridge) {
            continue;
        }
        crate::net::sysctl::check_settable(Path::new("/"), s)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileChecks, load};

    #[test]
    fn a_display_password_read_at_start_names_field_and_file() {
        let dir = std::env::temp_dir().join(format!("vmpod-preflight-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let yaml = format!(
            "name: t\nboot:\n  kernel: /k\nconsoles:\n  display:\n    password_file: {}\n",
            file.display()
        );
        let config = load("<test>", &yaml, FileChecks::Warn).unwrap().config;
        let password = display_password(&config).unwrap().unwrap();
        assert_eq!(password.expose(), "s3cret");
        // Emptied between validation and start.
        std::fs::write(&file, "").unwrap();
        let e = display_password(&config).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "consoles.display.password_file: {} is empty; put the password in it",
                file.display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
