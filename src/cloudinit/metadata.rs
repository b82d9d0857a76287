//! The seed's `meta-data`: the instance id (cloud-init runs its
//! per-instance steps again when it changes) and the host name.

use sha2::{Digest, Sha256};

use super::yaml::quote;

/// `iid-NAME-HASH`: NAME is the domain's host name form, HASH the first
/// 16 hex digits of the SHA-256 of `inputs` (length-prefixed, so the
/// boundaries count). A changed user-data, key list or network config is
/// a new instance to cloud-init, which then applies it again, even on a
/// persistent overlay.
pub fn derive_instance_id(domain: &str, inputs: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    h.update(b"vmpod instance-id v1\0");
    h.update(domain.as_bytes());
    for i in inputs {
        h.update((i.len() as u64).to_be_bytes());
        h.update(i);
    }
    let hex: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("iid-{}-{hex}", hostname_from(domain))
}

/// A valid host name label from a domain name: lower case, letters,
/// digits and `-`, no leading or trailing `-`, at most 63 characters;
/// `vmpod` when nothing is left.
pub fn hostname_from(domain: &str) -> String {
    let mapped: String = domain
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    let mut s = mapped.trim_matches('-').to_string();
    s.truncate(63);
    let s = s.trim_end_matches('-').to_string();
    if s.is_empty() { "vmpod".into() } else { s }
}

pub fn render(instance_id: &str, hostname: &str) -> Vec<u8> {
    format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        quote(instance_id),
        quote(hostname)
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_valid_labels() {
        assert_eq!(hostname_from("web-1"), "web-1");
        assert_eq!(hostname_from("My_VM.prod"), "my-vm-prod");
        assert_eq!(hostname_from("--"), "vmpod");
        assert_eq!(hostname_from(&"a".repeat(70)).len(), 63);
        assert_eq!(
            hostname_from(&format!("{}-b", "a".repeat(62))),
            "a".repeat(62)
        );
    }

    #[test]
    fn instance_id_follows_the_inputs() {
        let a = derive_instance_id("web", &[b"x", b"y"]);
        assert!(
            a.starts_with("iid-web-") && a.len() == "iid-web-".len() + 16,
            "{a}"
        );
        assert_eq!(a, derive_instance_id("web", &[b"x", b"y"]));
        assert_ne!(a, derive_instance_id("web", &[b"xy"]));
        assert_ne!(a, derive_instance_id("web2", &[b"x", b"y"]));
    }

    #[test]
    fn meta_data_is_quoted_yaml() {
        assert_eq!(
            render("iid-a-1", "a"),
            b"instance-id: \"iid-a-1\"\nlocal-hostname: \"a\"\n"
        );
    }
}
