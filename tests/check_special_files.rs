//! `vmpod check` on files that are not configs (issue 16, "inputs without
//! bounds"): a device that streams forever, a FIFO and a pipe on stdin that
//! never end, a directory, a 100 MB file. Each must be refused quickly,
//! before reading, with exit 2 and a message naming the file and why.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `vmpod check PATH` with `stdin`, killing it after 5 s: (exit code,
/// stderr, how long it took).
fn check(path: &Path, stdin: Stdio) -> (Option<i32>, String, Duration) {
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmpod"))
        .arg("check")
        .arg(path)
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vmpod check");
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if t.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t.elapsed(),
    )
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn files_that_are_not_configs_are_refused_quickly_with_the_reason() {
    let dir = TempDir(std::env::temp_dir().join(format!("vmpod-special-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let fifo = dir.0.join("fifo.yaml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let huge = dir.0.join("huge.yaml");
    // Sparse: 100 MB on paper, nothing on disk.
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(100_000_000)
        .unwrap();
    let cases: Vec<(PathBuf, Stdio, &str)> = vec![
        ("/dev/zero".into(), Stdio::null(), "is a character device"),
        (fifo.clone(), Stdio::null(), "is a FIFO"),
        // A pipe whose writer (this test) never writes nor closes.
        ("/dev/stdin".into(), Stdio::piped(), "is a FIFO"),
        ("/etc".into(), Stdio::null(), "is a directory"),
        (huge.clone(), Stdio::null(), "too large (100000000 bytes"),
        (dir.0.join("absent.yaml"), Stdio::null(), "does not exist"),
    ];
    let mut failures = Vec::new();
    for (path, stdin, why) in cases {
        let (code, stderr, took) = check(&path, stdin);
        let named = stderr.contains(&path.display().to_string());
        if code != Some(2) || !named || !stderr.contains(why) || took > Duration::from_secs(2) {
            failures.push(format!(
                "{}: exit {code:?} after {took:?}, want 2 within 2 s naming the file and `{why}`: {stderr}",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
