//! The small test guest (images/test-guest): built once per test process
//! (the builder caches across processes), and a bound on how many guests
//! boot at once: under TCG on two cores, parallel boots slow each other.

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::sandbox::repo_root;

/// Guests allowed to run at once across all test processes.
const VM_SLOTS: usize = 2;

pub fn images_dir() -> PathBuf {
    repo_root().join("target/test-guest")
}

/// Builds the test guest if its inputs changed; returns the output directory.
pub fn ensure_built() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = images_dir();
            let out = Command::new(repo_root().join("images/test-guest/build.sh"))
                .arg(&dir)
                .output()
                .expect("run images/test-guest/build.sh");
            assert!(
                out.status.success(),
                "building the test guest failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(dir.join("vmlinuz").is_file() && dir.join("initrd.gz").is_file());
            dir
        })
        .clone()
}

/// Held while a guest runs; dropping it frees the slot.
pub struct VmSlot {
    _file: nix::fcntl::Flock<File>,
}

/// Blocks until one of the machine-wide guest slots is free.
pub fn vm_slot() -> VmSlot {
    loop {
        for i in 0..VM_SLOTS {
            let path = std::env::temp_dir().join(format!("vmpod-test-vm-slot-{i}.lock"));
            let file = File::create(&path).expect("create slot lock file");
            if let Ok(lock) =
                nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            {
                return VmSlot { _file: lock };
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
