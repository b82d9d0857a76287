//! The libvirt domain XML, rendered from typed structs with serde and
//! quick-xml, never from string templates: the serializer escapes every name
//! and path, so a disk path with `&` or `'` still gives well-formed XML.
//!
//! Rendering is pure: the host facts it depends on (KVM or TCG, the uplink's
//! MTU) come in as `HostFacts`, and the display password is passed in by the
//! caller. `vmpod render` passes no password and gets [`REDACTED`] in its
//! place, so the password never appears in printed output.
//!
//! The struct and field names below follow libvirt's element and attribute
//! names (`@` marks an attribute, `$text` the element's text) so that the
//! structs read like the XML they produce. They live in [`xml`]; this file
//! maps the config onto them.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{Boot, DisplayKind, MacAddr, VmConfig};
use crate::disks::{DiskPlan, PlannedDisk};
use crate::host::{HostFacts, ResolvedAccel};

mod xml;
use xml::*;

/// Written in place of the display password when the caller passes none.
pub const REDACTED: &str = "REDACTED";

/// The virtio-serial port name qemu-guest-agent listens on in the guest.
pub const GUEST_AGENT_CHANNEL: &str = "org.qemu.guest_agent.0";

/// Where the guest's first serial port (ttyS0) is logged.
const SERIAL_LOG_DIR: &str = "/var/log/libvirt/qemu";

/// The first three octets of every derived MAC: the QEMU/KVM OUI, a unicast
/// address that libvirt and qemu use for guests.
const MAC_PREFIX: [u8; 3] = [0x52, 0x54, 0x00];

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("{field}: `{}` is not valid UTF-8, which libvirt's XML cannot carry", path.display())]
    NonUtf8Path { field: String, path: PathBuf },
    #[error("cannot serialize the domain XML: {0}")]
    Xml(#[from] quick_xml::SeError),
    #[error("cannot read the domain XML back to set its UUID: {0}")]
    Reparse(#[from] quick_xml::Error),
    #[error("the domain XML has no <domain> root element to give a UUID")]
    NoRoot,
}

/// The domain XML for `config` on a host described by `facts`.
///
/// `display_password` is written into the display's `passwd` attribute. With
/// `None` a display that has a `password_file` gets [`REDACTED`]; an
/// `insecure` display without a password file gets no `passwd` at all.
pub fn render(
    config: &VmConfig,
    facts: &HostFacts,
    display_password: Option<&str>,
) -> Result<String, DomainError> {
    render_with_disks(
        config,
        facts,
        &DiskPlan::build(config, None),
        display_password,
    )
}

/// The domain XML with the disks of `disks` (files, overlays, the seed):
/// what [`crate::plan::Plan`] renders.
pub fn render_with_disks(
    config: &VmConfig,
    facts: &HostFacts,
    disks: &DiskPlan,
    display_password: Option<&str>,
) -> Result<String, DomainError> {
    let accel = facts.accel(config);
    let mac = guest_mac(config).to_string();
    let serial_log = serial_log_path(config);
    let serial_log = utf8("serial log", &serial_log)?.to_string();

    let disk_xml = disks
        .disks
        .iter()
        .map(disk_xml)
        .collect::<Result<Vec<_>, _>>()?;
    let controller = disks
        .needs_scsi()
        .then_some(Controller {
            kind: "scsi",
            model: "virtio-scsi",
        })
        .into_iter()
        .collect();

    let (graphics, video) = match &config.consoles.display {
        None => (None, None),
        Some(display) => {
            let passwd = match (display_password, &display.password_file) {
                (Some(p), _) => Some(p.to_string()),
                (None, Some(_)) => Some(REDACTED.to_string()),
                (None, None) => None,
            };
            let graphics = Graphics {
                kind: match display.kind {
                    DisplayKind::Spice => "spice",
                    DisplayKind::Vnc => "vnc",
                },
                port: display.port,
                autoport: "no",
                passwd,
                // The pod's address: the pod network is the boundary.
                listen: Listen {
                    kind: "address",
                    address: "0.0.0.0",
                },
            };
            let video = Video {
                model: TypeAttr { kind: "virtio" },
            };
            (Some(graphics), Some(video))
        }
    };

    let domain = Domain {
        kind: accel.domain_type(),
        name: &config.name,
        memory: Memory {
            unit: "KiB",
            value: config.memory.kibibytes(),
        },
        vcpu: config.cpus,
        os: os_xml(config.boot.as_ref())?,
        features: Features { acpi: () },
        cpu: match accel {
            // host-passthrough breaks on nested hosts; host-model works there.
            ResolvedAccel::Kvm => Some(Cpu { mode: "host-model" }),
            // TCG emulates its default CPU model; no element needed.
            ResolvedAccel::Tcg => None,
        },
        on_poweroff: "destroy",
        on_reboot: "restart",
        on_crash: "destroy",
        devices: Devices {
            disk: disk_xml,
            controller,
            interface: Interface {
                kind: "bridge",
                source: BridgeSource {
                    bridge: &config.network.bridge,
                },
                mac: MacAddress { address: mac },
                model: TypeAttr { kind: "virtio" },
                mtu: facts.mtu(config).map(|size| Mtu { size }),
            },
            serial: Serial {
                kind: "pty",
                log: Log {
                    file: serial_log.clone(),
                    append: "off",
                },
                target: SerialTarget { port: 0 },
            },
            console: Console {
                kind: "pty",
                log: Log {
                    file: serial_log,
                    append: "off",
                },
                target: ConsoleTarget {
                    kind: "serial",
                    port: 0,
                },
            },
            // The qemu guest agent's channel: a guest that runs the agent
            // reports its addresses and can be shut down through it when it
            // ignores the ACPI button. A guest without the agent ignores it.
            channel: Channel {
                kind: "unix",
                target: ChannelTarget {
                    kind: "virtio",
                    name: GUEST_AGENT_CHANNEL,
                },
            },
            graphics,
            video,
            memballoon: ModelAttr { model: "none" },
            rng: Rng {
                model: "virtio",
                backend: RngBackend {
                    model: "random",
                    device: "/dev/urandom",
                },
            },
        },
    };

    let mut xml = String::new();
    let mut ser = quick_xml::se::Serializer::with_root(&mut xml, Some("domain"))?;
    ser.indent(' ', 2);
    domain.serialize(ser)?;
    xml.push('\n');
    Ok(xml)
}

/// `xml` (a domain XML as [`render`] makes it) with `uuid` as its top-level
/// `<uuid>`, right after the root's start tag; a `<uuid>` already there is
/// replaced.
///
/// Why: `render` writes no UUID, and libvirt gives a definition without one
/// a random UUID. When a domain of the same name is already defined (vmpod
/// restarted in the same pod, a libvirt state directory that survived),
/// libvirt refuses that: "domain 'NAME' already exists with uuid ...". A
/// redefinition must carry the existing domain's UUID. The XML is edited as
/// XML events, never as text, so the rest of the document stays byte for
/// byte what `render` produced.
pub fn with_uuid(xml: &str, uuid: uuid::Uuid) -> Result<String, DomainError> {
    use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};

    let mut reader = quick_xml::Reader::from_str(xml);
    let mut writer = quick_xml::Writer::new(Vec::with_capacity(xml.len() + 64));
    // The io::Error of writing into a Vec cannot happen; it is carried as
    // quick-xml's own error all the same.
    let io = |e: std::io::Error| DomainError::Reparse(e.into());
    let uuid = uuid.hyphenated().to_string();
    let mut depth = 0usize;
    let mut placed = false;
    // Depth of an old top-level <uuid> being dropped.
    let mut dropping = false;
    loop {
        let event = reader.read_event()?;
        match &event {
            Event::Eof => break,
            Event::Start(e) => {
                depth += 1;
                if dropping || (depth == 2 && e.name().as_ref() == "uuid") {
                    dropping = true;
                    continue;
                }
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if dropping {
                    dropping = depth >= 2;
                    continue;
                }
            }
            Event::Empty(e) if depth == 1 && e.name().as_ref() == "uuid" => continue,
            _ if dropping => continue,
            _ => {}
        }
        let root_start = depth == 1 && matches!(event, Event::Start(_)) && !placed;
        writer.write_event(event).map_err(io)?;
        if root_start {
            placed = true;
            writer
                .write_event(Event::Text(BytesText::new("\n  ")))
                .map_err(io)?;
            writer
                .write_event(Event::Start(BytesStart::new("uuid")))
                .map_err(io)?;
            writer
                .write_event(Event::Text(BytesText::new(&uuid)))
                .map_err(io)?;
            writer
                .write_event(Event::End(BytesEnd::new("uuid")))
                .map_err(io)?;
        }
    }
    if !placed {
        return Err(DomainError::NoRoot);
    }
    // Only UTF-8 went in (a &str and a UUID's hex digits).
    String::from_utf8(writer.into_inner())
        .map_err(|e| DomainError::Reparse(quick_xml::Error::Encoding(e.utf8_error().into())))
}

/// The file that receives everything the guest writes to its first serial
/// port (ttyS0): `/var/log/libvirt/qemu/NAME-serial.log`.
///
/// The serial port is a pty (so `virsh console` works over the libvirt
/// console) with a `<log>` file. libvirt truncates the file whenever the
/// domain starts (`append='off'`), so a watcher that follows it must expect
/// it to shrink; virtlogd may also rotate it to `NAME-serial.log.0` when it
/// grows past its size limit.
pub fn serial_log_path(config: &VmConfig) -> PathBuf {
    Path::new(SERIAL_LOG_DIR).join(format!("{}-serial.log", config.name))
}

/// The guest's MAC address: `network.mac` when it is set, else a stable
/// address derived from the domain name: 52:54:00 followed by the low three
/// bytes of the name's 32-bit FNV-1a hash.
///
/// libvirt gives the host side of the guest's tap the same address with the
/// first octet replaced by 0xfe.
pub fn guest_mac(config: &VmConfig) -> MacAddr {
    config
        .network
        .mac
        .unwrap_or_else(|| derived_mac(&config.name))
}

fn derived_mac(name: &str) -> MacAddr {
    let [_, a, b, c] = fnv1a32(name.as_bytes()).to_be_bytes();
    let [p0, p1, p2] = MAC_PREFIX;
    MacAddr::new([p0, p1, p2, a, b, c]).expect("52:54:00 is a unicast prefix")
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(PRIME)
    })
}

fn utf8<'a>(field: &str, path: &'a Path) -> Result<&'a str, DomainError> {
    path.to_str().ok_or_else(|| DomainError::NonUtf8Path {
        field: field.to_string(),
        path: path.to_path_buf(),
    })
}

fn os_xml(boot: Option<&Boot>) -> Result<Os<'_>, DomainError> {
    let os_type = OsType {
        arch: "x86_64",
        machine: "q35",
        value: "hvm",
    };
    Ok(match boot {
        Some(b) => Os {
            os_type,
            kernel: Some(utf8("boot.kernel", &b.kernel)?),
            initrd: b
                .initrd
                .as_deref()
                .map(|p| utf8("boot.initrd", p))
                .transpose()?,
            cmdline: (!b.cmdline.is_empty()).then_some(b.cmdline.as_str()),
            boot: None,
        },
        None => Os {
            os_type,
            kernel: None,
            initrd: None,
            cmdline: None,
            boot: Some(BootDev { dev: "hd" }),
        },
    })
}

fn disk_xml(disk: &PlannedDisk) -> Result<DiskXml<'_>, DomainError> {
    Ok(DiskXml {
        kind: "file",
        device: disk.device.as_str(),
        driver: Driver {
            name: "qemu",
            kind: disk.format.as_str(),
        },
        source: FileSource {
            file: utf8(&format!("{}.path", disk.field), &disk.file)?,
        },
        target: Target {
            dev: disk.dev.clone(),
            bus: disk.bus.as_str(),
        },
        readonly: disk.readonly.then_some(()),
    })
}

#[cfg(test)]
mod tests;
