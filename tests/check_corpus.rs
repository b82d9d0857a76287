//! `vmpod check` on a corpus of broken configs (tests/configs/bad): each must
//! exit 2 and report, for every `# expect: LINE:COL FIELD words` header line,
//! a diagnostic `FILE:LINE:COL: FIELD: ...` containing the words. A `# strict`
//! header runs `check --strict`. Nothing may panic.

use std::path::{Path, PathBuf};
use std::process::Command;

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
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/configs/bad");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/configs/bad")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 15,
        "the corpus must hold at least 15 broken configs"
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
