//! `vmpod console`: the guest's serial console on this terminal, through
//! libvirt (virDomainOpenConsole), as `virsh console` and `virtctl console`
//! give it. Ctrl-] detaches, as in virsh. On a terminal the input is put in
//! raw mode (keys go to the guest as typed, Ctrl-C included) and restored on
//! the way out, however the session ends.
//!
//! Two threads: this one reads the terminal and sends to the console
//! stream; another receives from the stream and writes to the terminal.
//! libvirt's client serves calls from several threads on one connection.

use std::io::{Read, Write};
use std::os::fd::AsFd;

use nix::sys::termios::{self, SetArg, Termios};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::stream::Stream;

/// Ctrl-]: the detach key of virsh and telnet.
pub const DETACH: u8 = 0x1d;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot connect to libvirt at {uri}: {source}; is vmpod running in this container?")]
    Connect {
        uri: String,
        source: virt::error::Error,
    },
    #[error("cannot list libvirt's domains: {0}")]
    List(virt::error::Error),
    #[error("no domain is running here: is the guest up yet? (`vmpod status`)")]
    NoDomain,
    #[error("more than one domain runs here ({0}): name one with --domain")]
    Ambiguous(String),
    #[error("cannot find domain `{name}`: {source}")]
    Lookup {
        name: String,
        source: virt::error::Error,
    },
    #[error("cannot open the serial console of `{name}`: {source}")]
    Open {
        name: String,
        source: virt::error::Error,
    },
    #[error("cannot set the terminal to raw mode: {0}")]
    Terminal(nix::Error),
}

/// How the session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Ctrl-] (or the end of the input).
    Detached,
    /// The console closed: the guest stopped or someone took the console.
    Closed,
}

/// Puts the terminal on stdin in raw mode until dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> Result<Option<RawMode>, ConsoleError> {
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else {
            // Not a terminal (a pipe, `kubectl exec` without -t): bytes pass as they are.
            return Ok(None);
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSAFLUSH, &raw)
            .map_err(ConsoleError::Terminal)?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSAFLUSH, &self.saved);
    }
}

/// The domain to attach to: `name`, or the only one running.
fn pick(conn: &Connect, name: Option<&str>) -> Result<Domain, ConsoleError> {
    if let Some(name) = name {
        return Domain::lookup_by_name(conn, name).map_err(|source| ConsoleError::Lookup {
            name: name.to_string(),
            source,
        });
    }
    let mut domains = conn
        .list_all_domains(virt::sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        .map_err(ConsoleError::List)?;
    match domains.len() {
        0 => Err(ConsoleError::NoDomain),
        1 => Ok(domains.remove(0)),
        _ => Err(ConsoleError::Ambiguous(
            domains
                .iter()
                .filter_map(|d| d.get_name().ok())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// Attaches until Ctrl-] or the console closes. `force` takes the console
/// from another session that holds it.
pub fn attach(uri: &str, domain: Option<&str>, force: bool) -> Result<Ended, ConsoleError> {
    // Errors are returned; libvirt's default handler would print them too.
    virt::error::clear_error_callback();
    let conn = Connect::open(Some(uri)).map_err(|source| ConsoleError::Connect {
        uri: uri.to_string(),
        source,
    })?;
    let dom = pick(&conn, domain)?;
    let name = dom.get_name().unwrap_or_default();
    let stream = Stream::new(&conn, 0).map_err(|source| ConsoleError::Open {
        name: name.clone(),
        source,
    })?;
    let flags = if force {
        virt::sys::VIR_DOMAIN_CONSOLE_FORCE
    } else {
        0
    };
    dom.open_console(None, &stream, flags)
        .map_err(|source| ConsoleError::Open {
            name: name.clone(),
            source,
        })?;
    eprint!("Connected to the serial console of {name}\r\nEscape character is ^] (Ctrl + ])\r\n");
    let raw = RawMode::enter()?;
    let ended = pump(&stream);
    drop(raw);
    let _ = stream.abort();
    eprintln!();
    Ok(ended)
}

fn pump(stream: &Stream) -> Ended {
    let (closed_tx, closed_rx) = std::sync::mpsc::channel::<()>();
    let out = stream.clone();
    // Ends at the console's end of stream or error; at a detach the process
    // goes on without it.
    let _ = std::thread::Builder::new()
        .name("console out".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdout = std::io::stdout();
            while let Ok(n) = out.recv(&mut buf) {
                if n == 0 || stdout.write_all(&buf[..n]).is_err() || stdout.flush().is_err() {
                    break;
                }
            }
            let _ = closed_tx.send(());
        });
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 1024];
    loop {
        if closed_rx.try_recv().is_ok() {
            return Ended::Closed;
        }
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => return Ended::Detached,
            Ok(n) => n,
        };
        let (keys, detach) = split_at_detach(&buf[..n]);
        if !keys.is_empty() && stream.send(keys).is_err() {
            return Ended::Closed;
        }
        if detach {
            return Ended::Detached;
        }
    }
}

/// The bytes to send, and whether the detach key came (bytes after it are
/// not sent).
fn split_at_detach(input: &[u8]) -> (&[u8], bool) {
    match input.iter().position(|b| *b == DETACH) {
        Some(i) => (&input[..i], true),
        None => (input, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_detach_key_ends_the_input_and_is_not_sent() {
        assert_eq!(split_at_detach(b"ls\r"), (&b"ls\r"[..], false));
        assert_eq!(split_at_detach(b"ls\x1dmore"), (&b"ls"[..], true));
        assert_eq!(split_at_detach(b"\x1d"), (&b""[..], true));
        // Ctrl-C and other control keys go to the guest.
        assert_eq!(split_at_detach(b"\x03\x04"), (&b"\x03\x04"[..], false));
    }

    #[test]
    fn no_libvirt_is_a_clear_error() {
        let e = attach("qemu+unix:///system?socket=/nonexistent/sock", None, false).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("cannot connect to libvirt at"), "{text}");
    }

    #[test]
    fn a_driver_with_one_domain_is_picked_without_a_name() {
        // libvirt's built-in test driver: one running domain, "test".
        let conn = Connect::open(Some("test:///default")).unwrap();
        assert_eq!(pick(&conn, None).unwrap().get_name().unwrap(), "test");
        let e = pick(&conn, Some("other")).err().unwrap();
        assert!(
            e.to_string().starts_with("cannot find domain `other`"),
            "{e}"
        );
    }
}
