//! Golden files: rendered output compared with files under tests/golden/.
//! Run with `UPDATE_GOLDEN=1` to rewrite them deliberately, then review the diff.

use std::path::PathBuf;

pub fn assert_golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {} is missing ({e}); create it with UPDATE_GOLDEN=1 cargo test",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "{} differs from the rendered output.\n--- expected\n{expected}\n--- actual\n{actual}\nIf the change is intended: UPDATE_GOLDEN=1 cargo test, then review git diff tests/golden",
            path.display()
        );
    }
}

/// The configs rendered by the golden tests, by name.
pub fn golden_configs() -> Vec<(&'static str, vmpod::config::VmConfig)> {
    ["example", "disk", "redirect"]
        .into_iter()
        .map(|name| {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(format!("tests/configs/{name}.yaml"));
            let loaded = vmpod::config::load_file(&path, vmpod::config::FileChecks::Warn)
                .unwrap_or_else(|e| panic!("{e}"));
            (name, loaded.config)
        })
        .collect()
}
