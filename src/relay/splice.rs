//! The bulk path of the byte pump: socket → pipe → socket with splice(2).
//! The kernel hands the received pages to the pipe and the pipe's pages to
//! the other socket; no byte is copied into or out of userspace.
//!
//! The pipe is always drained before the next splice from the socket, so a
//! splice from the socket that would block means the socket is empty, never
//! that the pipe is full: only then may tokio's readiness be cleared.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use nix::fcntl::SpliceFFlags;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::pipe_pool::{self, PIPE_SIZE};

/// Why a burst ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The source has nothing more for now.
    Drained,
    /// The source sent its FIN; everything before it was passed on.
    Eof,
    /// splice(2) is not available for these sockets (or no pipe could be
    /// had): nothing was moved, the caller copies instead.
    Unsupported,
}

fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    Ok(nix::fcntl::splice(from, None, to, None, len, flags)?)
}

/// Moves what `from` has (and what arrives while moving) to `to`, calling
/// `moved` with the size of every chunk passed on.
pub async fn burst(
    from: &TcpStream,
    to: &TcpStream,
    mut moved: impl FnMut(usize),
) -> io::Result<Outcome> {
    let Ok(pipe) = pipe_pool::take() else {
        // Out of fds, usually: copying still works.
        return Ok(Outcome::Unsupported);
    };
    loop {
        let got = from.try_io(Interest::READABLE, || {
            splice(from.as_fd(), pipe.write_end(), PIPE_SIZE)
        });
        let n = match got {
            Ok(0) => {
                pipe_pool::give(pipe);
                return Ok(Outcome::Eof);
            }
            Ok(n) => n,
            Err(e) => {
                // The pipe is empty: it can go back.
                pipe_pool::give(pipe);
                return match e.raw_os_error() {
                    _ if e.kind() == io::ErrorKind::WouldBlock => Ok(Outcome::Drained),
                    Some(libc::EINVAL | libc::ENOSYS) => Ok(Outcome::Unsupported),
                    _ => Err(e),
                };
            }
        };
        let mut left = n;
        while left > 0 {
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe.read_end(), to.as_fd(), left)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    super::copy::write_ready(to).await?
                }
                // The pipe still holds bytes: it is closed, not pooled.
                Err(e) => return Err(e),
            }
        }
        moved(n);
    }
}
