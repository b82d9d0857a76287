//! Reading a config file with bounds: only a regular file, and only up to
//! [`MAX_CONFIG_BYTES`]. A FIFO, `/dev/stdin` or a device would hang or
//! stream forever, and a huge file would be parsed before any message.
//! Every check is made on the open file (fstat), so the file checked is
//! the file read.

use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest config file read. Real configs are a few KiB.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// What kind of file `meta` is, for a message: "a directory", "a FIFO
/// (named pipe)", ...; `None` for a regular file.
pub fn not_regular(meta: &Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    }
}

/// Reads `path` as UTF-8 text; the error is the message to print after
/// the file's name.
pub fn read_bounded(path: &Path) -> Result<String, String> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
    // writer. Reads of a regular file ignore the flag.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "the config file does not exist".to_string(),
            _ => format!("cannot open the config file: {e}"),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot inspect the config file: {e}"))?;
    if let Some(kind) = not_regular(&meta) {
        return Err(format!(
            "is {kind}, not a regular file: the config must be a regular file"
        ));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_large(meta.len()));
    }
    // The file may grow after fstat: read one byte past the cap to know.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the config file: {e}"))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "the config file is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

fn too_large(len: u64) -> String {
    format!(
        "the config file is too large ({len} bytes or more); the limit is {MAX_CONFIG_BYTES} bytes (1 MiB)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_files_are_refused_before_reading() {
        let dir = std::env::temp_dir().join(format!("vmpod-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let cases = [
            (Path::new("/dev/zero"), "a character device"),
            (&fifo, "a FIFO"),
            (Path::new("/etc"), "a directory"),
            (Path::new("/nonexistent/vm.yaml"), "does not exist"),
        ];
        for (path, why) in cases {
            let err = read_bounded(path).unwrap_err();
            assert!(err.contains(why), "{}: {err}", path.display());
        }
        let big = dir.join("big.yaml");
        std::fs::write(&big, vec![b'#'; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        let err = read_bounded(&big).unwrap_err();
        assert!(err.contains("too large") && err.contains("1 MiB"), "{err}");
        let ok = dir.join("ok.yaml");
        std::fs::write(&ok, "name: vm\n").unwrap();
        assert_eq!(read_bounded(&ok).unwrap(), "name: vm\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
