//! Rendering tests: the config in, domain XML out.

use super::*;
use crate::config::{FileChecks, load};
use crate::disks::drive_suffix;

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
    let names: Vec<_> = crate::disks::DiskPlan::build(&c, None)
        .disks
        .into_iter()
        .map(|d| d.dev)
        .collect();
    assert_eq!(names, ["vda", "sda", "vdb", "sdb"]);
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
    let with_file =
        config("name: vm1\nboot:\n  kernel: /k\nconsoles:\n  display:\n    password_file: /pw\n");
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
    c.disks[0].path = Some(nasty.into());
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

#[test]
fn a_redefinition_carries_the_existing_uuid_and_nothing_else_changes() {
    let c = config(MINIMAL);
    let xml = render(&c, &HostFacts::fixed(), None).unwrap();
    assert!(!xml.contains("<uuid>"), "render writes no UUID: {xml}");
    let u = uuid::Uuid::parse_str("0b6e2a4c-1d3f-4e5a-9b7c-8d9e0f1a2b3c").unwrap();
    let with = with_uuid(&xml, u).unwrap();
    // The UUID is the root's first child; every other line is render's.
    let mut lines: Vec<&str> = with.lines().collect();
    assert_eq!(
        lines[1],
        "  <uuid>0b6e2a4c-1d3f-4e5a-9b7c-8d9e0f1a2b3c</uuid>"
    );
    lines.remove(1);
    assert_eq!(lines.join("\n") + "\n", xml);
    // What libvirt reads: one top-level <uuid>, the name untouched.
    #[derive(serde::Deserialize)]
    struct Parsed {
        uuid: Vec<String>,
        name: String,
    }
    let parsed: Parsed = quick_xml::de::from_str(&with).unwrap();
    assert_eq!(parsed.uuid, vec![u.to_string()]);
    assert_eq!(parsed.name, "vm1");
}

#[test]
fn a_uuid_already_in_the_xml_is_replaced_not_doubled() {
    let xml = render(&config(MINIMAL), &HostFacts::fixed(), None).unwrap();
    let first = uuid::Uuid::from_u128(1);
    let second = uuid::Uuid::from_u128(0xfeed);
    let twice = with_uuid(&with_uuid(&xml, first).unwrap(), second).unwrap();
    assert_eq!(twice.matches("<uuid>").count(), 1, "{twice}");
    assert!(twice.contains(&format!("<uuid>{second}</uuid>")), "{twice}");
    assert!(!twice.contains(&first.to_string()), "{twice}");
    // A <uuid/> deeper in the document (none today) is not the domain's.
    let nested = xml.replace("<devices>", "<devices>\n    <uuid>keep</uuid>");
    let out = with_uuid(&nested, second).unwrap();
    assert!(out.contains("<uuid>keep</uuid>"), "{out}");
}

#[test]
fn a_uuid_needs_a_domain_to_go_into() {
    let u = uuid::Uuid::from_u128(7);
    assert!(matches!(with_uuid("", u), Err(DomainError::NoRoot)));
    assert!(matches!(
        with_uuid("<domain><name>x</domain>", u),
        Err(DomainError::Reparse(_))
    ));
}
