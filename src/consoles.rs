//! The consoles' secrets: the display password and the SASL users libvirtd
//! checks remote clients against.
//!
//! A secret is read here and carried as a [`Secret`], whose `Debug` prints
//! nothing of it. Every error names the file and the line, never the text in
//! it: a malformed line may well be a password.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Cyrus SASL tool that adds a user to a sasldb (Debian: sasl2-bin).
pub const SASLPASSWD2: &str = "saslpasswd2";
/// libvirtd's SASL application name; its users are stored under it.
const SASL_APP: &str = "libvirt";
/// qemu's VNC authentication is DES with an 8-byte key: it compares only
/// the first 8 characters of a longer password.
pub const VNC_PASSWORD_MAX: usize = 8;

/// A password. Neither `Debug` nor anything else here prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The password itself, for the one place that must hand it on.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn char_count(&self) -> usize {
        self.0.chars().count()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(REDACTED)")
    }
}

/// One line of `consoles.libvirt.credentials_file`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaslUser {
    pub name: String,
    pub password: Secret,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is empty; put the password in it", path.display())]
    EmptyPassword { path: PathBuf },
    #[error("{} holds no `user:password` line; add at least one user", path.display())]
    NoUsers { path: PathBuf },
    #[error(
        "{}:{line}: not a `user:password` line (the line is not shown: it may hold a password)",
        path.display()
    )]
    Malformed { path: PathBuf, line: usize },
    #[error(
        "{}:{line}: the user name before `:` is empty or has characters other than letters, digits, `.`, `_` and `-`",
        path.display()
    )]
    BadUserName { path: PathBuf, line: usize },
    #[error("{}:{line}: user `{user}` has no password; write `{user}:PASSWORD`", path.display())]
    NoPassword {
        path: PathBuf,
        line: usize,
        user: String,
    },
    #[error("{}:{line}: user `{user}` is already listed on line {first}", path.display())]
    DuplicateUser {
        path: PathBuf,
        line: usize,
        first: usize,
        user: String,
    },
    #[error("cannot run {SASLPASSWD2} (Debian package sasl2-bin): {0}")]
    Spawn(std::io::Error),
    #[error("{SASLPASSWD2} failed to add user `{user}` ({status}): {stderr}")]
    SaslPasswd {
        user: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("cannot write the SASL user database {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn read(path: &Path) -> Result<String, ConsoleError> {
    std::fs::read_to_string(path).map_err(|source| ConsoleError::Unreadable {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a password file: the whole file but its trailing line ending.
pub fn read_password(path: &Path) -> Result<Secret, ConsoleError> {
    let text = read(path)?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(ConsoleError::EmptyPassword {
            path: path.to_path_buf(),
        });
    }
    Ok(Secret(password.to_string()))
}

/// Reads `consoles.libvirt.credentials_file`.
pub fn read_credentials(path: &Path) -> Result<Vec<SaslUser>, ConsoleError> {
    parse_credentials(path, &read(path)?)
}

/// `user:password` lines; blank lines and lines starting with `#` are
/// skipped. The password is everything after the first `:`, so it may hold
/// `:` and spaces; only the line ending is removed.
pub fn parse_credentials(path: &Path, text: &str) -> Result<Vec<SaslUser>, ConsoleError> {
    let mut users: Vec<(usize, SaslUser)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.trim_end_matches('\r');
        let trimmed = content.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let at = |line| (path.to_path_buf(), line);
        let Some((name, password)) = content.split_once(':') else {
            let (path, line) = at(line);
            return Err(ConsoleError::Malformed { path, line });
        };
        if !is_user_name(name) {
            let (path, line) = at(line);
            return Err(ConsoleError::BadUserName { path, line });
        }
        if password.is_empty() {
            let (path, line) = at(line);
            return Err(ConsoleError::NoPassword {
                path,
                line,
                user: name.to_string(),
            });
        }
        if let Some((first, _)) = users.iter().find(|(_, u)| u.name == name) {
            let (path, line) = at(line);
            return Err(ConsoleError::DuplicateUser {
                path,
                line,
                first: *first,
                user: name.to_string(),
            });
        }
        users.push((
            line,
            SaslUser {
                name: name.to_string(),
                password: Secret(password.to_string()),
            },
        ));
    }
    if users.is_empty() {
        return Err(ConsoleError::NoUsers {
            path: path.to_path_buf(),
        });
    }
    Ok(users.into_iter().map(|(_, u)| u).collect())
}

/// SASL user names end up in a command line and in libvirt's logs: keep
/// them to characters that need no quoting anywhere.
fn is_user_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether Cyrus SASL's DIGEST-MD5 plugin (Debian: libsasl2-modules) is
/// installed: without it libvirtd offers no mechanism and every client fails.
pub fn digest_md5_available() -> bool {
    let multiarch = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("sasl2"));
    ["/usr/lib/sasl2", "/usr/lib64/sasl2"]
        .into_iter()
        .map(PathBuf::from)
        .chain(multiarch)
        .any(|dir| dir.join("libdigestmd5.so.2").exists() || dir.join("libdigestmd5.so").exists())
}

/// Writes a new sasldb at `db` holding exactly `users`, replacing any old
/// one, so a user removed from the credentials file loses access at the next
/// start.
///
/// saslpasswd2 creates its database group-readable, so it is built in a
/// private (0700) directory beside `db`, restricted to 0600, and only then
/// renamed into place: the database is never readable by others, and
/// libvirtd never sees half of it. Passwords go to saslpasswd2 on stdin,
/// never on its command line.
pub fn build_sasldb(users: &[SaslUser], db: &Path) -> Result<(), ConsoleError> {
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ConsoleError::Write { path, source }
    };
    let parent = db.parent().unwrap_or(Path::new("/"));
    let file_name = db.file_name().unwrap_or(db.as_os_str());
    let staging = parent.join(format!(".{}.vmpod-new", file_name.to_string_lossy()));
    // Left over from an interrupted start: it holds nothing we need.
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(parent).map_err(write_err(parent))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(write_err(&staging))?;
    let result = (|| {
        let new = staging.join(file_name);
        for user in users {
            add_sasl_user(&new, user)?;
        }
        std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o600))
            .map_err(write_err(&new))?;
        std::fs::rename(&new, db).map_err(write_err(db))
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn add_sasl_user(db: &Path, user: &SaslUser) -> Result<(), ConsoleError> {
    let mut child = Command::new(SASLPASSWD2)
        // -p: password from stdin, no prompt; -c: create the user.
        .args(["-p", "-c", "-a", SASL_APP, "-f"])
        .arg(db)
        .arg(&user.name)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(ConsoleError::Spawn)?;
    // No trailing newline: saslpasswd2 -p takes what it reads as the password.
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(user.password.expose().as_bytes()),
        None => Ok(()),
    };
    let out = child.wait_with_output().map_err(ConsoleError::Spawn)?;
    if !out.status.success() {
        return Err(ConsoleError::SaslPasswd {
            user: user.name.clone(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    // It exited well but did not take the whole password: do not trust the entry.
    written.map_err(ConsoleError::Spawn)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<SaslUser>, ConsoleError> {
        parse_credentials(Path::new("/s/creds"), text)
    }

    #[test]
    fn users_comments_and_blank_lines() {
        let users =
            parse("# admins\n\nalice:s3cret\r\n  # indented comment\nbob:a:b c \n").unwrap();
        let got: Vec<_> = users
            .iter()
            .map(|u| (u.name.as_str(), u.password.expose()))
            .collect();
        assert_eq!(got, [("alice", "s3cret"), ("bob", "a:b c ")]);
    }

    #[test]
    fn errors_name_file_and_line_but_never_the_password() {
        let cases = [
            (
                "alice:ok\nhunter2\n",
                "/s/creds:2: not a `user:password` line",
            ),
            ("alice:\n", "/s/creds:1: user `alice` has no password"),
            (
                "# c\nal ice:hunter2\n",
                "/s/creds:2: the user name before `:` is empty",
            ),
            (":hunter2\n", "/s/creds:1: the user name"),
            (
                "alice:hunter2\n\nalice:hunter2\n",
                "/s/creds:3: user `alice` is already listed on line 1",
            ),
            ("", "/s/creds holds no `user:password` line"),
            (
                "# only a comment\n\n",
                "/s/creds holds no `user:password` line",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with(want), "{text:?}: {e}");
            assert!(!e.contains("hunter2"), "{text:?}: {e}");
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let users = parse("alice:hunter2\n").unwrap();
        let shown = format!("{users:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("alice"), "{shown}");
    }

    #[test]
    fn password_file_keeps_inner_text_and_drops_the_line_ending() {
        let dir = std::env::temp_dir().join(format!("vmpod-consoles-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, " a b\n").unwrap();
        assert_eq!(read_password(&file).unwrap().expose(), " a b");
        std::fs::write(&file, "\n").unwrap();
        let e = read_password(&file).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        let e = read_password(&dir.join("missing")).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read ") && e.contains("missing"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
