//! Pipes for splice(2), kept in a small pool so a bulk flow does not pay
//! pipe2 + fcntl + two closes every time its socket runs dry. A direction
//! holds a pipe only while it moves data: an idle connection holds none.
//!
//! A pipe goes back to the pool only empty; one that may still hold bytes
//! (a transfer cut short by an error) is closed instead, so no connection
//! ever reads another's data.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// Bytes a pipe holds: enough for what one splice from a busy socket
/// brings. The kernel caps it at fs.pipe-max-size (1 MiB by default) for
/// processes without CAP_SYS_RESOURCE; a refusal keeps the 64 KiB default.
pub const PIPE_SIZE: usize = 1 << 20;

/// Idle pipes kept; beyond, returned pipes are closed. Two fds each.
const POOL_SIZE: usize = 16;

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

/// A pipe, non-blocking at both ends.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let _ = fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as libc::c_int));
        Ok(Pipe { read, write })
    }

    pub fn read_end(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    pub fn write_end(&self) -> BorrowedFd<'_> {
        self.write.as_fd()
    }
}

/// An empty pipe from the pool, or a new one.
pub fn take() -> io::Result<Pipe> {
    let pooled = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
    match pooled {
        Some(p) => Ok(p),
        None => Pipe::new(),
    }
}

/// Returns a pipe that is known to be empty.
pub fn give(pipe: Pipe) {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < POOL_SIZE {
        pool.push(pipe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn pipes_carry_bytes_and_are_enlarged() {
        let p = take().unwrap();
        let mut w = std::fs::File::from(p.write.try_clone().unwrap());
        let mut r = std::fs::File::from(p.read.try_clone().unwrap());
        w.write_all(b"abc").unwrap();
        let mut got = [0u8; 3];
        r.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abc");
        let size = fcntl(&p.write, FcntlArg::F_GETPIPE_SZ).unwrap();
        assert!(size >= 64 * 1024, "pipe size {size}");
        give(p);
    }
}
