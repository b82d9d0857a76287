//! The NoCloud seed written by vmpod::cloudinit, read back with real tools:
//! blkid sees an iso9660 volume labelled `cidata` (what cloud-init's
//! ds-identify and NoCloud look for), isoinfo lists and extracts the files
//! by their Joliet names byte for byte, and Python's email parser (the one
//! cloud-init uses) splits the merged user-data into the user's part and
//! the SSH keys part. Needs root only because the harness's `require` does.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::sandbox::{require, run_ok};
use vmpod::cloudinit::{
    NetworkConfig, SeedSpec, StaticNetwork, read_ssh_keys, seed_files, write_seed,
};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x0c, 0x10, 0x01];

struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("vmpod-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tools() {
    require(&[
        ("blkid", "util-linux"),
        ("isoinfo", "genisoimage"),
        ("python3", "python3"),
    ]);
}

fn blkid(path: &Path, tag: &str) -> String {
    run_ok(
        Command::new("blkid")
            .args(["-p", "-o", "value", "-s", tag])
            .arg(path),
    )
    .trim()
    .to_string()
}

fn isoinfo_extract(path: &Path, name: &str) -> Vec<u8> {
    let out = Command::new("isoinfo")
        .args(["-J", "-i"])
        .arg(path)
        .args(["-x", &format!("/{name}")])
        .output()
        .expect("run isoinfo");
    assert!(
        out.status.success(),
        "isoinfo -x /{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn spec_with_everything() -> SeedSpec {
    let keys = read_ssh_keys(
        "# the operator's key\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBvmpodtestkeyAAAAAAAAAAAAAAAAAAAAAAAAAAAA op@example\n",
    );
    SeedSpec::for_domain(
        "seed-test",
        b"#cloud-config\npassword: not-in-any-log\nssh_authorized_keys:\n  - ssh-rsa AAAAB3Nza user@example\n"
            .to_vec(),
        keys,
        NetworkConfig::Static(StaticNetwork {
            mac: MAC,
            addresses: vec!["10.0.1.2/24".parse().unwrap()],
            gateways: vec!["10.0.1.1".parse().unwrap()],
            nameservers: vec!["10.0.1.1".parse().unwrap()],
            search: vec![],
            mtu: None,
        }),
    )
}

#[test]
fn seed_reads_back_with_blkid_and_isoinfo() {
    tools();
    let dir = TempDir::new("cloudinit-seed-readback");
    let path = dir.0.join("seed.iso");
    let spec = spec_with_everything();
    write_seed(&spec, &path).expect("write the seed");

    assert_eq!(blkid(&path, "LABEL"), "cidata");
    assert_eq!(blkid(&path, "TYPE"), "iso9660");

    let info = run_ok(Command::new("isoinfo").args(["-d", "-i"]).arg(&path));
    assert!(
        info.contains("Joliet with UCS level 3 found"),
        "isoinfo -d:\n{info}"
    );
    let listing = run_ok(Command::new("isoinfo").args(["-J", "-l", "-i"]).arg(&path));
    for name in ["user-data", "meta-data", "network-config"] {
        assert!(
            listing.contains(name),
            "isoinfo -J -l has no {name}:\n{listing}"
        );
    }
    for file in seed_files(&spec).unwrap() {
        assert_eq!(
            isoinfo_extract(&path, file.name),
            file.data,
            "{} differs",
            file.name
        );
    }
}

#[test]
fn seed_without_network_config_has_two_files() {
    tools();
    let dir = TempDir::new("cloudinit-seed-nonet");
    let path = dir.0.join("seed.iso");
    let mut spec = spec_with_everything();
    spec.network = NetworkConfig::None;
    spec.ssh_keys.clear();
    write_seed(&spec, &path).expect("write the seed");
    let listing = run_ok(Command::new("isoinfo").args(["-J", "-l", "-i"]).arg(&path));
    assert!(!listing.contains("network-config"), "{listing}");
    // Without keys the user-data is the user's file, unchanged.
    assert_eq!(isoinfo_extract(&path, "user-data"), spec.user_data);
}

/// cloud-init reads a multipart user-data with Python's email module and
/// decodes each part (util.fully_decoded_payload); do the same.
#[test]
fn merged_user_data_parses_as_cloud_init_reads_it() {
    tools();
    let dir = TempDir::new("cloudinit-seed-mime");
    let spec = spec_with_everything();
    let files = seed_files(&spec).unwrap();
    let ud = dir.0.join("user-data");
    std::fs::write(&ud, &files[0].data).unwrap();
    let script = r#"
import email, sys
msg = email.message_from_binary_file(open(sys.argv[1], 'rb'))
assert msg.is_multipart(), 'not multipart'
for part in msg.walk():
    if part.get_content_maintype() == 'multipart':
        continue
    print('PART', part.get_content_type(), part.get_filename(), part.get('Merge-Type'))
    print(part.get_payload(decode=True).decode('utf-8'), end='')
    print('END')
"#;
    let out = run_ok(Command::new("python3").arg("-c").arg(script).arg(&ud));
    let expected_user = String::from_utf8(spec.user_data.clone()).unwrap();
    assert!(
        out.starts_with(&format!(
            "PART text/plain user-data None\n{expected_user}END\n"
        )),
        "python's view:\n{out}"
    );
    let keys_part = out
        .split("PART text/cloud-config vmpod-ssh-keys dict(no_replace,recurse_list)+list(append)\n")
        .nth(1)
        .expect("keys part");
    assert!(keys_part.starts_with("#cloud-config\n"), "{keys_part}");
    assert!(
        keys_part.contains(&format!("  - \"{}\"\n", spec.ssh_keys[0])),
        "{keys_part}"
    );
}
