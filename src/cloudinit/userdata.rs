//! SSH keys into the user-data without rewriting the user's document.
//!
//! The rule: with no keys the user-data goes into the seed byte for byte.
//! With keys, it becomes a MIME multipart (cloud-init's own format for
//! several parts): first the user's user-data unchanged (base64, typed
//! `text/plain` so cloud-init detects its kind from the first line as it
//! does for a plain user-data: `#cloud-config`, `#!` script, `## template:
//! jinja`, gzip, ...), then a `#cloud-config` part with the keys under
//! `ssh_authorized_keys` (the default user's keys) and a `Merge-Type`
//! header that appends them to a list the user's cloud-config already has
//! instead of replacing it. An empty user-data gives just that `#cloud-config`. A
//! user-data that is MIME already is nested as is (its headers head the
//! part).
//!
//! Why not parse and re-emit the user's YAML: that would drop comments,
//! anchors and templates and could change meanings (PyYAML reads YAML
//! 1.1, where `yes` and `on` are booleans).

use sha2::{Digest, Sha256};

use super::SeedError;
use super::yaml::quote;

/// How the keys part merges into the user's cloud-config: its list is
/// appended to an `ssh_authorized_keys` the user-data has, nothing else
/// is replaced. A MIME header rather than a `merge_how` key: Debian 12's
/// cloud-init (22.4) reads both, but its schema has no `merge_how`, and
/// the merged config is what it validates.
pub const KEYS_MERGE: &str = "dict(no_replace,recurse_list)+list(append)";

/// The kind cloud-init would see, for `describe` (never the contents).
pub fn kind(user_data: &[u8]) -> &'static str {
    let starts = |p: &str| user_data.starts_with(p.as_bytes());
    let lower_start: Vec<u8> = user_data
        .iter()
        .take(40)
        .map(u8::to_ascii_lowercase)
        .collect();
    if user_data.is_empty() {
        "empty"
    } else if user_data.starts_with(&[0x1f, 0x8b]) {
        "gzip"
    } else if lower_start.starts_with(b"content-type:") || lower_start.starts_with(b"mime-version:")
    {
        "MIME multipart"
    } else if starts("#cloud-config-archive") {
        "cloud-config-archive"
    } else if starts("#cloud-config") {
        "cloud-config"
    } else if starts("## template: jinja") {
        "jinja template"
    } else if starts("#cloud-boothook") {
        "boothook"
    } else if starts("#include") {
        "include"
    } else if starts("#!") {
        "script"
    } else {
        "unknown (cloud-init ignores it)"
    }
}

/// Key lines from an authorized_keys-style file: blank lines and `#`
/// comments are left out.
pub fn read_ssh_keys(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

pub fn check_ssh_key(index: usize, key: &str) -> Result<(), SeedError> {
    let reason = if key.trim().is_empty() {
        Some("it is empty")
    } else if key.chars().any(char::is_control) {
        Some("it holds a control character (one key per line)")
    } else if !key
        .split_whitespace()
        .any(|w| w.starts_with("ssh-") || w.starts_with("ecdsa-") || w.starts_with("sk-"))
    {
        Some("no key type (ssh-ed25519, ssh-rsa, ecdsa-sha2-..., sk-...) in it")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(SeedError::BadSshKey { index, reason }),
        None => Ok(()),
    }
}

/// The user-data of the seed (see the module's rule).
pub fn with_ssh_keys(user_data: &[u8], keys: &[String]) -> Result<Vec<u8>, SeedError> {
    for (i, k) in keys.iter().enumerate() {
        check_ssh_key(i, k)?;
    }
    if keys.is_empty() {
        return Ok(user_data.to_vec());
    }
    let keys_part = keys_cloud_config(keys);
    if user_data.is_empty() {
        return Ok(keys_part.into_bytes());
    }
    let boundary = boundary(user_data, &keys_part);
    let mut out = Vec::with_capacity(user_data.len() * 4 / 3 + keys_part.len() + 512);
    out.extend_from_slice(
        format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n")
            .as_bytes(),
    );
    out.extend_from_slice(format!("--{boundary}\n").as_bytes());
    if kind(user_data) == "MIME multipart" {
        out.extend_from_slice(user_data);
        if !user_data.ends_with(b"\n") {
            out.push(b'\n');
        }
    } else {
        let ctype = if kind(user_data) == "gzip" {
            "application/x-gzip"
        } else {
            "text/plain; charset=\"utf-8\""
        };
        out.extend_from_slice(
            format!(
                "Content-Type: {ctype}\nMIME-Version: 1.0\nContent-Transfer-Encoding: base64\n\
                 Content-Disposition: attachment; filename=\"user-data\"\n\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(base64_lines(user_data).as_bytes());
    }
    out.extend_from_slice(
        format!(
            // The line break before a boundary belongs to the boundary
            // (RFC 2046): the blank line keeps the part's last newline.
            "--{boundary}\nContent-Type: text/cloud-config; charset=\"utf-8\"\nMIME-Version: 1.0\n\
             Content-Transfer-Encoding: 8bit\nMerge-Type: {KEYS_MERGE}\n\
             Content-Disposition: attachment; filename=\"vmpod-ssh-keys\"\n\n{keys_part}\n--{boundary}--\n"
        )
        .as_bytes(),
    );
    Ok(out)
}

fn keys_cloud_config(keys: &[String]) -> String {
    let mut s = String::from(
        "#cloud-config\n# vmpod: cloud_init.ssh_authorized_keys_files, for the default user.\n\
         ssh_authorized_keys:\n",
    );
    for k in keys {
        s.push_str("  - ");
        s.push_str(&quote(k.trim()));
        s.push('\n');
    }
    s
}

/// A boundary that occurs in neither part: derived from their hash, so
/// the same inputs give the same bytes.
fn boundary(user_data: &[u8], keys_part: &str) -> String {
    let mut salt = 0u32;
    loop {
        let mut h = Sha256::new();
        h.update(salt.to_be_bytes());
        h.update(user_data);
        h.update(keys_part.as_bytes());
        let hex: String = h.finalize()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let b = format!("==vmpod-{hex}==");
        let clash = user_data.windows(b.len()).any(|w| w == b.as_bytes()) || keys_part.contains(&b);
        if !clash {
            return b;
        }
        salt += 1;
    }
}

/// Base64 (RFC 2045), 76 characters a line.
fn base64_lines(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut flat = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                flat.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                flat.push('=');
            }
        }
    }
    let mut out = String::with_capacity(flat.len() + flat.len() / 76 + 1);
    for line in flat.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq5x0 alice@example";

    #[test]
    fn without_keys_the_user_data_is_untouched() {
        let ud = b"#!/bin/sh\necho hi\n";
        assert_eq!(with_ssh_keys(ud, &[]).unwrap(), ud);
    }

    #[test]
    fn empty_user_data_becomes_the_keys_cloud_config() {
        let got = String::from_utf8(with_ssh_keys(b"", &[KEY.into()]).unwrap()).unwrap();
        assert!(got.starts_with("#cloud-config\n"));
        assert!(
            got.ends_with(&format!("ssh_authorized_keys:\n  - \"{KEY}\"\n")),
            "{got}"
        );
    }

    #[test]
    fn with_keys_a_multipart_carries_both_parts() {
        let ud = b"#cloud-config\nssh_authorized_keys: [\"ssh-rsa AAAA bob\"]\npackages: [nginx]\n";
        let got = String::from_utf8(with_ssh_keys(ud, &[KEY.into()]).unwrap()).unwrap();
        let boundary = got
            .split("boundary=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let parts: Vec<&str> = got.split(&format!("--{boundary}")).collect();
        // preamble, user part, keys part, closing "--\n"
        assert_eq!(parts.len(), 4, "{got}");
        assert!(parts[0].starts_with("Content-Type: multipart/mixed;"));
        let (head, body) = parts[1].split_once("\n\n").unwrap();
        assert!(head.contains("Content-Transfer-Encoding: base64"));
        assert_eq!(decode_base64(body), ud);
        assert!(parts[2].contains("Content-Type: text/cloud-config"));
        assert!(parts[2].contains("\nMerge-Type: dict(no_replace,recurse_list)+list(append)\n"));
        assert!(parts[2].contains(&format!("  - \"{KEY}\"\n")));
        assert_eq!(parts[3], "--\n");
    }

    #[test]
    fn mime_user_data_is_nested_as_is() {
        let ud = b"Content-Type: multipart/mixed; boundary=\"x\"\nMIME-Version: 1.0\n\n--x\n\
                   Content-Type: text/x-shellscript\n\n#!/bin/sh\n--x--";
        let got = with_ssh_keys(ud, &[KEY.into()]).unwrap();
        let s = String::from_utf8(got).unwrap();
        assert!(s.contains(&format!("{}\n--==vmpod-", std::str::from_utf8(ud).unwrap())));
    }

    #[test]
    fn bad_keys_are_refused_by_position() {
        assert!(matches!(
            with_ssh_keys(b"", &["not a key".into()]),
            Err(SeedError::BadSshKey { index: 0, .. })
        ));
        let two = [KEY.to_string(), format!("{KEY}\nssh-rsa AAAA")];
        assert!(matches!(
            with_ssh_keys(b"", &two),
            Err(SeedError::BadSshKey { index: 1, .. })
        ));
        // Options before the type are allowed (authorized_keys format).
        assert!(check_ssh_key(0, &format!("no-pty,from=\"10.0.0.0/8\" {KEY}")).is_ok());
    }

    #[test]
    fn key_files_skip_comments_and_blank_lines() {
        let text = format!("# mine\n\n  {KEY}  \nssh-rsa AAAA b\n");
        assert_eq!(
            read_ssh_keys(&text),
            vec![KEY.to_string(), "ssh-rsa AAAA b".to_string()]
        );
    }

    #[test]
    fn kinds_follow_cloud_inits_first_line_rules() {
        assert_eq!(kind(b"#cloud-config\n"), "cloud-config");
        assert_eq!(kind(b"#cloud-config-archive\n"), "cloud-config-archive");
        assert_eq!(kind(b"#!/bin/bash\n"), "script");
        assert_eq!(kind(&[0x1f, 0x8b, 8]), "gzip");
        assert_eq!(kind(b"MIME-Version: 1.0\n"), "MIME multipart");
        assert_eq!(kind(b"hello"), "unknown (cloud-init ignores it)");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_lines(i.as_bytes()).trim_end(), o);
        }
        assert!(base64_lines(&[0u8; 100]).lines().all(|l| l.len() <= 76));
    }

    fn decode_base64(s: &str) -> Vec<u8> {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let vals: Vec<u32> = s
            .bytes()
            .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
            .map(|b| A.iter().position(|a| *a == b).unwrap() as u32)
            .collect();
        let mut out = Vec::new();
        for c in vals.chunks(4) {
            let n = c
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, v)| n | (v << (18 - 6 * i)));
            out.extend_from_slice(&n.to_be_bytes()[1..c.len()]);
        }
        out
    }
}
