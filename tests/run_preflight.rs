//! `vmpod run` refuses, before it changes anything, a disk that qemu's user
//! (`libvirt-qemu`) cannot reach: exit 1, naming the field, the file, the
//! user, the directory and the fix. Runs in a fresh network namespace
//! (`unshare --net`) so that nothing it might do reaches the machine's.
//! Needs root, `unshare`, and the programs `run` checks for first
//! (libvirtd, virtlogd, nft); no VM is started.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn a_disk_in_a_directory_qemu_cannot_search_fails_run_with_exit_1() {
    support::sandbox::require(&[
        ("unshare", "util-linux"),
        ("libvirtd", "libvirt-daemon-system"),
        ("virtlogd", "libvirt-daemon-system"),
        ("nft", "nftables"),
    ]);
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("run_preflight-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let locked = base.join("locked");
    std::fs::create_dir_all(&locked).expect("create the directory");
    let disk = locked.join("disk.qcow2");
    std::fs::write(&disk, b"QFI\xfb").expect("write the disk");
    // Every directory above is searchable (0755 up to CARGO_TARGET_TMPDIR
    // in this checkout); only `locked` is not.
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let config = base.join("vm.yaml");
    std::fs::write(
        &config,
        format!("name: vm\ndisks:\n  - path: {}\n", disk.display()),
    )
    .expect("write the config");

    let out = Command::new("unshare")
        .args(["--net", env!("CARGO_BIN_EXE_vmpod"), "run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .expect("run unshare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let want = format!(
        "disks[0].path: qemu runs as libvirt-qemu (uid 64055, gid 64055) and cannot search {d}, so it cannot open {f}; fix: chmod o+x {d}",
        d = locked.display(),
        f = disk.display()
    );
    // uid and gid as Debian creates them; any other must still name the user.
    let found = stderr.contains(&want)
        || (stderr.contains("disks[0].path: qemu runs as libvirt-qemu")
            && stderr.contains(&format!("cannot search {}", locked.display()))
            && stderr.contains(&format!("chmod o+x {}", locked.display())));
    assert!(found, "no line `{want}` in:\n{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "colour codes in a piped log: {stderr:?}"
    );
    std::fs::remove_dir_all(&base).expect("remove the scratch directory");
}
