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
//! structs read like the XML they produce.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{Boot, Disk, DiskBus, DisplayKind, MacAddr, VmConfig};
use crate::host::{HostFacts, ResolvedAccel};

/// Written in place of the display password when the caller passes none.
pub const REDACTED: &str = "REDACTED";

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
    let accel = facts.accel(config);
    let mac = guest_mac(config).to_string();
    let serial_log = serial_log_path(config);
    let serial_log = utf8("serial log", &serial_log)?.to_string();

    let disks = config
        .disks
        .iter()
        .zip(device_names(&config.disks))
        .enumerate()
        .map(|(i, (disk, dev))| disk_xml(i, disk, dev))
        .collect::<Result<Vec<_>, _>>()?;
    let controller = config
        .disks
        .iter()
        .any(|d| d.bus == DiskBus::Scsi)
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
            disk: disks,
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

/// Guest device names in config order: `vda, vdb, ...` for virtio, and
/// `sda, sdb, ...` shared by sata and scsi (both use the `sd` prefix).
fn device_names(disks: &[Disk]) -> Vec<String> {
    let mut vd = 0;
    let mut sd = 0;
    disks
        .iter()
        .map(|disk| {
            let prefix = disk.bus.device_prefix();
            let counter = if prefix == "vd" { &mut vd } else { &mut sd };
            let name = format!("{prefix}{}", drive_suffix(*counter));
            *counter += 1;
            name
        })
        .collect()
}

/// 0 → a, 25 → z, 26 → aa, 27 → ab: the kernel's and libvirt's scheme.
fn drive_suffix(mut index: usize) -> String {
    let mut letters = Vec::new();
    loop {
        letters.push(b'a' + (index % 26) as u8);
        if index < 26 {
            break;
        }
        index = index / 26 - 1;
    }
    letters.iter().rev().map(|&b| char::from(b)).collect()
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

fn disk_xml(index: usize, disk: &Disk, dev: String) -> Result<DiskXml<'_>, DomainError> {
    Ok(DiskXml {
        kind: "file",
        device: "disk",
        driver: Driver {
            name: "qemu",
            kind: disk.format.as_str(),
        },
        source: FileSource {
            file: utf8(&format!("disks[{index}].path"), &disk.path)?,
        },
        target: Target {
            dev,
            bus: disk.bus.as_str(),
        },
        readonly: disk.readonly.then_some(()),
    })
}

// The XML, element by element. Field order is element order.

#[derive(Serialize)]
struct Domain<'a> {
    #[serde(rename = "@type")]
    kind: &'static str,
    name: &'a str,
    memory: Memory,
    vcpu: u32,
    os: Os<'a>,
    features: Features,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<Cpu>,
    on_poweroff: &'static str,
    on_reboot: &'static str,
    on_crash: &'static str,
    devices: Devices<'a>,
}

#[derive(Serialize)]
struct Memory {
    #[serde(rename = "@unit")]
    unit: &'static str,
    #[serde(rename = "$text")]
    value: u64,
}

#[derive(Serialize)]
struct Os<'a> {
    #[serde(rename = "type")]
    os_type: OsType,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    initrd: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmdline: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    boot: Option<BootDev>,
}

#[derive(Serialize)]
struct OsType {
    #[serde(rename = "@arch")]
    arch: &'static str,
    #[serde(rename = "@machine")]
    machine: &'static str,
    #[serde(rename = "$text")]
    value: &'static str,
}

#[derive(Serialize)]
struct BootDev {
    #[serde(rename = "@dev")]
    dev: &'static str,
}

/// ACPI is required: graceful shutdown presses the ACPI power button.
#[derive(Serialize)]
struct Features {
    acpi: (),
}

#[derive(Serialize)]
struct Cpu {
    #[serde(rename = "@mode")]
    mode: &'static str,
}

#[derive(Serialize)]
struct Devices<'a> {
    disk: Vec<DiskXml<'a>>,
    controller: Vec<Controller>,
    interface: Interface<'a>,
    serial: Serial,
    console: Console,
    #[serde(skip_serializing_if = "Option::is_none")]
    graphics: Option<Graphics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    video: Option<Video>,
    memballoon: ModelAttr,
    rng: Rng,
}

#[derive(Serialize)]
struct DiskXml<'a> {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@device")]
    device: &'static str,
    driver: Driver,
    source: FileSource<'a>,
    target: Target,
    #[serde(skip_serializing_if = "Option::is_none")]
    readonly: Option<()>,
}

#[derive(Serialize)]
struct Driver {
    #[serde(rename = "@name")]
    name: &'static str,
    #[serde(rename = "@type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct FileSource<'a> {
    #[serde(rename = "@file")]
    file: &'a str,
}

#[derive(Serialize)]
struct Target {
    #[serde(rename = "@dev")]
    dev: String,
    #[serde(rename = "@bus")]
    bus: &'static str,
}

#[derive(Serialize)]
struct Controller {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@model")]
    model: &'static str,
}

/// A tap on vmpod's bridge. No `<target dev>`: libvirt names taps `vnetN`
/// itself and ignores a requested name.
#[derive(Serialize)]
struct Interface<'a> {
    #[serde(rename = "@type")]
    kind: &'static str,
    source: BridgeSource<'a>,
    mac: MacAddress,
    model: TypeAttr,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<Mtu>,
}

#[derive(Serialize)]
struct BridgeSource<'a> {
    #[serde(rename = "@bridge")]
    bridge: &'a str,
}

#[derive(Serialize)]
struct MacAddress {
    #[serde(rename = "@address")]
    address: String,
}

#[derive(Serialize)]
struct Mtu {
    #[serde(rename = "@size")]
    size: u32,
}

#[derive(Serialize)]
struct TypeAttr {
    #[serde(rename = "@type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct ModelAttr {
    #[serde(rename = "@model")]
    model: &'static str,
}

#[derive(Serialize)]
struct Serial {
    #[serde(rename = "@type")]
    kind: &'static str,
    log: Log,
    target: SerialTarget,
}

#[derive(Serialize)]
struct SerialTarget {
    #[serde(rename = "@port")]
    port: u32,
}

/// The console is the same device as the first serial port (libvirt merges
/// a serial-type console with serial port 0).
#[derive(Serialize)]
struct Console {
    #[serde(rename = "@type")]
    kind: &'static str,
    log: Log,
    target: ConsoleTarget,
}

#[derive(Serialize)]
struct ConsoleTarget {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@port")]
    port: u32,
}

#[derive(Serialize)]
struct Log {
    #[serde(rename = "@file")]
    file: String,
    #[serde(rename = "@append")]
    append: &'static str,
}

#[derive(Serialize)]
struct Graphics {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@port")]
    port: u16,
    #[serde(rename = "@autoport")]
    autoport: &'static str,
    #[serde(rename = "@passwd", skip_serializing_if = "Option::is_none")]
    passwd: Option<String>,
    listen: Listen,
}

#[derive(Serialize)]
struct Listen {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@address")]
    address: &'static str,
}

#[derive(Serialize)]
struct Video {
    model: TypeAttr,
}

#[derive(Serialize)]
struct Rng {
    #[serde(rename = "@model")]
    model: &'static str,
    backend: RngBackend,
}

#[derive(Serialize)]
struct RngBackend {
    #[serde(rename = "@model")]
    model: &'static str,
    #[serde(rename = "$text")]
    device: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileChecks, load};

    fn config(yaml: &str) -> VmConfig {
        load("test.yaml", yaml, FileChecks::Warn)
            .unwrap_or_else(|e| panic!("{e}"))
            .config
    }

    const MINIMAL: &str = "name: vm1\nboot:\n  kernel: /k\n";

    #[test]
    fn derived_mac_is_stable_and_a_qemu_unicast_address() {
        let a = guest_mac(&config(MINIMAL));
        assert_eq!(a, guest_mac(&config(MINIMAL)));
        assert_eq!(a.octets()[..3], [0x52, 0x54, 0x00]);
        assert_eq!(a.octets()[0] & 1, 0, "unicast");
        let b = guest_mac(&config("name: vm2\nboot:\n  kernel: /k\n"));
        assert_ne!(a, b, "different names give different addresses");
        // Pinned: changing the derivation would change every guest's MAC.
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(
            derived_mac("a").octets(),
            [0x52, 0x54, 0x00, 0x0c, 0x29, 0x2c]
        );
    }

    #[test]
    fn explicit_mac_is_used() {
        let c = config("name: vm1\nboot:\n  kernel: /k\nnetwork:\n  mac: \"52:54:00:AA:bb:01\"\n");
        assert_eq!(guest_mac(&c).octets(), [0x52, 0x54, 0x00, 0xaa, 0xbb, 0x01]);
        let xml = render(&c, &HostFacts::fixed(), None).unwrap();
        assert!(
            xml.contains(r#"<mac address="52:54:00:aa:bb:01"/>"#),
            "{xml}"
        );
    }

    #[test]
    fn an_unusable_mac_never_reaches_the_renderer() {
        // The type is checked when the config is read: a bad MAC is a
        // located config error, so render has no error case for it.
        for bad in ["52:54:00:aa:bb", "zz:54:00:aa:bb:cc", "01:00:5e:00:00:01"] {
            let yaml = format!("{MINIMAL}network:\n  mac: \"{bad}\"\n");
            let e = crate::config::load("<test>", &yaml, FileChecks::Warn).unwrap_err();
            assert!(e.to_string().contains("network.mac"), "{e}");
        }
    }

    #[test]
    fn device_names_count_per_prefix() {
        let c = config(
            "name: vm1\ndisks:\n  - path: /a\n  - path: /b\n    bus: sata\n  - path: /c\n  - path: /d\n    bus: scsi\n",
        );
        assert_eq!(device_names(&c.disks), ["vda", "sda", "vdb", "sdb"]);
        let xml = render(&c, &HostFacts::fixed(), None).unwrap();
        assert!(xml.contains(r#"<target dev="sdb" bus="scsi"/>"#), "{xml}");
        assert_eq!(
            xml.matches(r#"<controller type="scsi" model="virtio-scsi"/>"#)
                .count(),
            1
        );
        assert!(xml.contains(r#"<boot dev="hd"/>"#), "{xml}");
        assert_eq!(drive_suffix(25), "z");
        assert_eq!(drive_suffix(26), "aa");
        assert_eq!(drive_suffix(27), "ab");
        assert_eq!(drive_suffix(26 + 26 * 26), "aaa");
    }

    #[test]
    fn display_password_handling() {
        let with_file = config(
            "name: vm1\nboot:\n  kernel: /k\nconsoles:\n  display:\n    password_file: /pw\n",
        );
        let xml = render(&with_file, &HostFacts::fixed(), Some("s3cr&t")).unwrap();
        assert!(xml.contains(r#"passwd="s3cr&amp;t""#), "{xml}");
        assert!(
            xml.contains(r#"<graphics type="spice" port="5900" autoport="no""#),
            "{xml}"
        );
        assert!(xml.contains(r#"<model type="virtio"/>"#));

        let xml = render(&with_file, &HostFacts::fixed(), None).unwrap();
        assert!(xml.contains(r#"passwd="REDACTED""#), "{xml}");
        assert!(!xml.contains("s3cr"), "{xml}");

        let insecure = config(
            "name: vm1\nboot:\n  kernel: /k\nconsoles:\n  display:\n    type: vnc\n    insecure: true\n",
        );
        let xml = render(&insecure, &HostFacts::fixed(), None).unwrap();
        assert!(
            xml.contains(r#"<graphics type="vnc" port="5900" autoport="no">"#),
            "{xml}"
        );
        assert!(!xml.contains("passwd"), "{xml}");

        let none = render(&config(MINIMAL), &HostFacts::fixed(), None).unwrap();
        assert!(!none.contains("<graphics"), "{none}");
        assert!(!none.contains("<video"), "{none}");
    }

    #[test]
    fn kvm_gets_host_model_and_tcg_no_cpu() {
        let c = config(MINIMAL);
        let tcg = render(&c, &HostFacts::fixed(), None).unwrap();
        assert!(tcg.starts_with(r#"<domain type="qemu">"#), "{tcg}");
        assert!(!tcg.contains("<cpu"), "{tcg}");
        let kvm_host = HostFacts {
            kvm_usable: true,
            uplink_mtu: None,
            ..HostFacts::fixed()
        };
        let kvm = render(&c, &kvm_host, None).unwrap();
        assert!(kvm.starts_with(r#"<domain type="kvm">"#), "{kvm}");
        assert!(kvm.contains(r#"<cpu mode="host-model"/>"#), "{kvm}");
        assert!(!kvm.contains("<mtu"), "no MTU known: {kvm}");
        assert!(kvm.ends_with("</domain>\n"));
    }

    #[test]
    fn paths_are_escaped_and_survive_a_round_trip() {
        #[derive(serde::Deserialize)]
        struct Parsed {
            name: String,
            os: ParsedOs,
            devices: ParsedDevices,
        }
        #[derive(serde::Deserialize)]
        struct ParsedOs {
            kernel: String,
            cmdline: String,
        }
        #[derive(serde::Deserialize)]
        struct ParsedDevices {
            disk: Vec<ParsedDisk>,
        }
        #[derive(serde::Deserialize)]
        struct ParsedDisk {
            source: ParsedSource,
        }
        #[derive(serde::Deserialize)]
        struct ParsedSource {
            #[serde(rename = "@file")]
            file: String,
        }

        let nasty = r#"/var/lib/vm/a & b's "disk" <1>.img"#;
        let mut c = config("name: vm1\ndisks:\n  - path: /a\n");
        c.name = "a&b<'\"".into();
        c.disks[0].path = nasty.into();
        c.boot = Some(Boot {
            kernel: "/k&'".into(),
            initrd: None,
            cmdline: "console=ttyS0 a=<&> b=\"'\"".into(),
        });
        let xml = render(&c, &HostFacts::fixed(), None).unwrap();

        // Well-formed: the reader checks every tag and attribute.
        let mut reader = quick_xml::Reader::from_str(&xml);
        loop {
            match reader.read_event() {
                Ok(quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e)) => {
                    for a in e.attributes() {
                        a.unwrap_or_else(|err| panic!("{err} in {xml}"));
                    }
                }
                Ok(quick_xml::events::Event::Eof) => break,
                Ok(_) => {}
                Err(err) => panic!("{err} in {xml}"),
            }
        }

        let parsed: Parsed = quick_xml::de::from_str(&xml).unwrap_or_else(|e| panic!("{e}: {xml}"));
        assert_eq!(parsed.name, "a&b<'\"");
        assert_eq!(parsed.os.kernel, "/k&'");
        assert_eq!(parsed.os.cmdline, "console=ttyS0 a=<&> b=\"'\"");
        assert_eq!(parsed.devices.disk[0].source.file, nasty);
    }

    #[test]
    fn serial_log_path_is_per_domain() {
        let c = config(MINIMAL);
        assert_eq!(
            serial_log_path(&c),
            Path::new("/var/log/libvirt/qemu/vm1-serial.log")
        );
        let xml = render(&c, &HostFacts::fixed(), None).unwrap();
        assert_eq!(
            xml.matches(r#"<log file="/var/log/libvirt/qemu/vm1-serial.log" append="off"/>"#)
                .count(),
            2,
            "{xml}"
        );
    }
}
