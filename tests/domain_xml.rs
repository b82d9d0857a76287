//! The libvirt domain XML for each golden config: compared with
//! tests/golden/NAME.domain.xml, and validated against libvirt's own RelaxNG
//! schema with `virt-xml-validate`.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::golden::{assert_golden, golden_configs};
use vmpod::host::HostFacts;
use vmpod::libvirt::domain;

fn rendered() -> Vec<(&'static str, String)> {
    golden_configs()
        .into_iter()
        .map(|(name, config)| {
            let xml = domain::render(&config, &HostFacts::fixed(), None)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, xml)
        })
        .collect()
}

#[test]
fn domain_xml_matches_golden_files() {
    for (name, xml) in rendered() {
        assert_golden(&format!("{name}.domain.xml"), &xml);
    }
}

#[test]
fn domain_xml_passes_libvirt_schema() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("domain_xml");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    for (name, xml) in rendered() {
        let file = dir.join(format!("{name}.domain.xml"));
        std::fs::write(&file, &xml).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        let out = match Command::new("virt-xml-validate")
            .arg(&file)
            .arg("domain")
            .output()
        {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "virt-xml-validate is not installed: install the packages libvirt-clients and libxml2-utils (Debian/Ubuntu) to validate the domain XML"
            ),
            Err(e) => panic!("cannot run virt-xml-validate: {e}"),
        };
        assert!(
            out.status.success(),
            "virt-xml-validate rejected {name} ({}):\n{}{}\n--- XML\n{xml}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
}
