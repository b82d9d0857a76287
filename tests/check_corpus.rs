//! `vmpod check` on a corpus of broken configs (tests/configs/bad): each must
//! exit 2 and report, for every `# expect: LINE:COL FIELD words` header line,
//! a diagnostic `FILE:LINE:COL: FIELD: ...` containing the words. A `# strict`
//! header runs `check --strict`. Nothing may panic, and checking the whole
//! corpus changes nothing: not the network namespace it runs in, not its
//! working or temporary directory.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

struct Expectation {
    location: String,
    field: String,
    words: String,
}

fn expectations(text: &str) -> (Vec<Expectation>, bool) {
    let strict = text.lines().any(|l| l.trim() == "# strict");
    let list = text
        .lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(|rest| {
            let mut parts = rest.splitn(3, ' ');
            let location = parts.next().unwrap_or_default().to_string();
            let field = parts.next().unwrap_or_default().to_string();
            let words = parts.next().unwrap_or_default().trim().to_string();
            Expectation {
                location,
                field,
                words,
            }
        })
        .collect();
    (list, strict)
}

/// The broken configs, sorted.
fn corpus() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/configs/bad");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/configs/bad")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn check(path: &Path, strict: bool) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmpod"));
    cmd.arg("check").arg(path);
    if strict {
        cmd.arg("--strict");
    }
    let out = cmd.output().expect("run vmpod check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_broken_config_is_rejected_with_its_field_and_line() {
    let files = corpus();
    assert!(
        files.len() >= 65,
        "the corpus must hold at least 65 broken configs, has {}",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read config");
        let (expected, strict) = expectations(&text);
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            file.display()
        );
        let (code, _stdout, stderr) = check(file, strict);
        if code != 2 {
            failures.push(format!(
                "{}: exit {code}, expected 2\n{stderr}",
                file.display()
            ));
            continue;
        }
        if stderr.contains("panicked") {
            failures.push(format!("{}: panicked\n{stderr}", file.display()));
        }
        if stderr.contains('\x1b') {
            failures.push(format!(
                "{}: colour codes on a stderr that is not a terminal\n{stderr:?}",
                file.display()
            ));
        }
        for e in &expected {
            let prefix = if e.field == "-" {
                format!("{}:{}: ", file.display(), e.location)
            } else {
                format!("{}:{}: {}: ", file.display(), e.location, e.field)
            };
            let found = stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(&e.words));
            if !found {
                failures.push(format!(
                    "{}: no line starting with `{prefix}` and containing `{}`; got:\n{stderr}",
                    file.display(),
                    e.words
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_embedded_example_and_the_golden_configs_are_valid() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let (code, stdout, stderr) = check(Path::new("-"), false);
    assert_eq!(code, 2, "`-` is not a file: {stdout}{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_vmpod"))
        .arg("check")
        .output()
        .expect("run vmpod check");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["example", "disk", "redirect"] {
        let (code, _, stderr) = check(&root.join(format!("tests/configs/{name}.yaml")), false);
        assert_eq!(code, 0, "{name}: {stderr}");
    }
}

/// What `vmpod check` could change in a network namespace, as the kernel
/// reports it.
const NETWORK_STATE: &str = r#"
nft list ruleset
ip -d link show
ip rule show; ip -6 rule show
ip route show table all; ip -6 route show table all
for k in net.ipv4.ip_forward net.ipv4.conf.all.rp_filter net.ipv6.conf.all.forwarding \
         net.bridge.bridge-nf-call-iptables; do
    printf '%s=' "$k"; cat "/proc/sys/$(echo "$k" | tr . /)" 2>/dev/null || echo absent
done
"#;

/// Runs `vmpod check` (and `--strict`) on every broken config inside a new,
/// empty network namespace, with a new empty directory as working and
/// temporary directory, and compares the namespace's nft ruleset, links,
/// rules, routes and the sysctls vmpod sets before and after, and the
/// directory's contents. What this does not see: files written elsewhere
/// on the machine (the check opens no file for writing; nothing here proves
/// it for every path) and other namespaces.
#[test]
fn checking_the_corpus_changes_nothing() {
    support::sandbox::require(&[
        ("unshare", "util-linux"),
        ("ip", "iproute2"),
        ("nft", "nftables"),
    ]);
    let work =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("check_corpus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let cwd = work.join("cwd");
    std::fs::create_dir_all(&cwd).expect("create the working directory");
    let script = format!(
        "set -u\n{{ {NETWORK_STATE} }} > \"$OUT/before\" 2>&1\n\
         for f in \"$@\"; do \"$VMPOD\" check \"$f\" >/dev/null 2>&1; \"$VMPOD\" check --strict \"$f\" >/dev/null 2>&1; done\n\
         {{ {NETWORK_STATE} }} > \"$OUT/after\" 2>&1\n"
    );
    let out = Command::new("unshare")
        .args(["--net", "sh", "-c", &script, "sh"])
        .args(corpus())
        .current_dir(&cwd)
        .env("OUT", &work)
        .env("TMPDIR", &cwd)
        .env("VMPOD", env!("CARGO_BIN_EXE_vmpod"))
        .stdin(Stdio::null())
        .output()
        .expect("run unshare");
    assert!(
        out.status.success(),
        "unshare --net failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |name: &str| std::fs::read_to_string(work.join(name)).expect("state file");
    let (before, after) = (read("before"), read("after"));
    assert!(
        before.contains("lo:"),
        "the state listing failed:\n{before}"
    );
    assert_eq!(before, after, "vmpod check changed the network namespace");
    let left: Vec<_> = std::fs::read_dir(&cwd)
        .expect("read the working directory")
        .map(|e| e.expect("dir entry").file_name())
        .collect();
    assert!(left.is_empty(), "vmpod check left files behind: {left:?}");
    std::fs::remove_dir_all(&work).expect("remove the scratch directory");
}
