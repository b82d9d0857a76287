//! The disk plan from configs, and qemu-img making and removing overlays.

use super::*;
use crate::config::{FileChecks, load};

fn config(yaml: &str) -> VmConfig {
    load("test.yaml", yaml, FileChecks::Warn)
        .unwrap_or_else(|e| panic!("{e}"))
        .config
}

#[test]
fn plain_overlay_blank_and_cdrom_disks_get_their_files_and_names() {
    let c = config(
        "name: vm1\nstate_dir: /s\ndisks:\n  - path: /img/base.qcow2\n    overlay: ephemeral\n    size: 4Gi\n  - path: /img/data.raw\n    format: raw\n  - empty: 1Gi\n  - path: /img/tools.iso\n    cdrom: true\n  - path: /img/b.qcow2\n    overlay: persistent\n    overlay_path: /pvc/b.qcow2\n",
    );
    let plan = DiskPlan::build(&c, None);
    let got: Vec<_> = plan
        .disks
        .iter()
        .map(|d| {
            (
                d.file.display().to_string(),
                d.format.as_str(),
                d.device,
                d.dev.as_str(),
                d.readonly,
                d.is_ephemeral(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "/s/vm1-disk0.qcow2".into(),
                "qcow2",
                Device::Disk,
                "vda",
                false,
                true
            ),
            (
                "/img/data.raw".into(),
                "raw",
                Device::Disk,
                "vdb",
                false,
                false
            ),
            (
                "/s/vm1-disk2.qcow2".into(),
                "qcow2",
                Device::Disk,
                "vdc",
                false,
                true
            ),
            (
                "/img/tools.iso".into(),
                "raw",
                Device::Cdrom,
                "sda",
                true,
                false
            ),
            (
                "/pvc/b.qcow2".into(),
                "qcow2",
                Device::Disk,
                "vdd",
                false,
                false
            ),
        ]
    );
    assert_eq!(
        plan.disks[0].make,
        Some(Make::Overlay {
            base: "/img/base.qcow2".into(),
            base_format: DiskFormat::Qcow2,
            size: Some(ByteSize(4 << 30)),
            keep: false
        })
    );
    assert!(plan.needs_scsi());
    let shown = plan.to_string();
    assert!(
        shown.contains("ephemeral: made at every start, removed at stop"),
        "{shown}"
    );
    assert!(
        shown.contains("persistent: made when missing, kept at stop"),
        "{shown}"
    );
}

#[test]
fn the_seed_is_a_scsi_cdrom_after_the_disks_and_render_hides_its_secrets() {
    let dir = std::env::temp_dir().join(format!("vmpod-diskplan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ud = dir.join("user-data");
    std::fs::write(&ud, "#cloud-config\npassword: hunter2-secret\n").unwrap();
    let keys = dir.join("keys");
    std::fs::write(&keys, "ssh-ed25519 AAAAC3Nza alice@example\n").unwrap();
    let c = config(&format!(
        "name: vm1\ndisks:\n  - path: /img/base.qcow2\n    overlay: ephemeral\ncloud_init:\n  user_data_file: {}\n  ssh_authorized_keys_files: [{}]\n  network_config: static\nnetwork:\n  dhcp: false\n  dns: [10.96.0.10]\n",
        ud.display(),
        keys.display()
    ));
    let facts = crate::host::HostFacts::fixed();
    let addressing = AddressingPlan::build(&c, &facts, Some(1400)).unwrap();
    let seed = load_seed(&c, &addressing, Some(1400)).unwrap().unwrap();
    let NetworkConfig::Static(st) = &seed.network else {
        panic!("{:?}", seed.network)
    };
    assert_eq!(
        st.addresses,
        ["10.0.1.2/24".parse::<ipnet::IpNet>().unwrap()]
    );
    assert_eq!(
        st.nameservers,
        ["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]
    );
    let plan = DiskPlan::build(&c, Some(seed));
    let last = plan.disks.last().unwrap();
    assert_eq!(
        (
            last.field.as_str(),
            last.device,
            last.bus,
            last.dev.as_str()
        ),
        ("cloud_init", Device::Cdrom, DiskBus::Scsi, "sda")
    );
    assert_eq!(
        last.file,
        Path::new("/var/lib/libvirt/vmpod/vm1-cidata.iso")
    );
    let shown = format!("{plan}{}", plan.to_json());
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("AAAAC3Nza"), "{shown}");
    assert!(shown.contains("1 SSH key(s) (ssh-ed25519)"), "{shown}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn have_qemu_img() -> bool {
    std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// qemu-img really makes the overlay over the base, at the larger size; the
/// base is untouched; remove takes the ephemeral files and keeps the
/// persistent one; a persistent overlay over another base is refused.
#[tokio::test]
async fn prepare_makes_overlays_and_remove_undoes_the_ephemeral_ones() {
    assert!(
        have_qemu_img(),
        "this test needs qemu-img (Debian package qemu-utils at the installed qemu's version)"
    );
    let dir = std::env::temp_dir().join(format!("vmpod-prepare-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("base.qcow2");
    let ok = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("64M")
        .status()
        .unwrap();
    assert!(ok.success());
    let before = std::fs::read(&base).unwrap();
    let yaml = format!(
        "name: vm1\nstate_dir: {d}/state\ndisks:\n  - path: {b}\n    overlay: ephemeral\n    size: 128Mi\n  - empty: 16Mi\n  - path: {b}\n    overlay: persistent\n    overlay_path: {d}/keep.qcow2\n",
        d = dir.display(),
        b = base.display()
    );
    let plan = DiskPlan::build(&config(&yaml), None);
    let mut prepared = prepare(&plan).await.unwrap_or_else(|e| panic!("{e}"));
    let info = |p: &Path| -> serde_json::Value {
        let out = std::process::Command::new("qemu-img")
            .args(["info", "--output=json", "-U"])
            .arg(p)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let overlay = info(&plan.disks[0].file);
    assert_eq!(overlay["virtual-size"], 128 << 20);
    assert_eq!(overlay["backing-filename"], base.display().to_string());
    assert_eq!(info(&plan.disks[1].file)["virtual-size"], 16 << 20);
    assert_eq!(info(&plan.disks[2].file)["virtual-size"], 64 << 20);
    assert_eq!(prepared.files().len(), 2);
    assert!(prepared.remove().is_empty());
    assert!(!plan.disks[0].file.exists() && !plan.disks[1].file.exists());
    assert!(plan.disks[2].file.exists(), "the persistent overlay stays");
    // A second start keeps the persistent overlay as it is.
    let mut again = prepare(&plan).await.unwrap();
    assert!(again.remove().is_empty());
    assert_eq!(
        std::fs::read(&base).unwrap(),
        before,
        "the base is unchanged"
    );

    let other = dir.join("other.qcow2");
    std::fs::copy(&base, &other).unwrap();
    let yaml = format!(
        "name: vm1\nstate_dir: {d}/state\ndisks:\n  - path: {o}\n    overlay: persistent\n    overlay_path: {d}/keep.qcow2\n",
        d = dir.display(),
        o = other.display()
    );
    let e = prepare(&DiskPlan::build(&config(&yaml), None))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("is an overlay of") && e.contains("base.qcow2"),
        "{e}"
    );
    // Shrinking is refused, and the missing image named.
    let yaml = format!(
        "name: vm1\nstate_dir: {d}/state\ndisks:\n  - path: {b}\n    overlay: ephemeral\n    size: 32Mi\n",
        d = dir.display(),
        b = base.display()
    );
    let e = prepare(&DiskPlan::build(&config(&yaml), None))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("disks[0].size: 32Mi is smaller than the image"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
