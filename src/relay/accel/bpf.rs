//! The few bpf(2) commands the accelerated path needs, through libc: a
//! SOCKHASH, one program loaded and attached to it, and element updates.
//! No crate and no compiler: the program is a dozen hand-encoded
//! instructions (`program`), and these calls are all there is to load it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
/// `enum bpf_map_type`.
const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
/// `enum bpf_prog_type`.
const BPF_PROG_TYPE_SK_SKB: u32 = 14;
/// `enum bpf_attach_type`.
const BPF_SK_SKB_STREAM_VERDICT: u32 = 5;
/// Update flag: the key must not exist yet.
const BPF_NOEXIST: u64 = 1;

/// `union bpf_attr`, as raw bytes: each command reads its own fields at
/// fixed offsets, and the kernel refuses non-zero bytes past the ones it
/// knows, so everything else stays zero.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }
    fn u32(&mut self, at: usize, v: u32) -> &mut Self {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, at: usize, v: u64) -> &mut Self {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zeroed, 8-aligned bpf_attr of the size passed;
    // the pointers inside it point at live buffers the caller holds for
    // the duration of the call.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    #[allow(unsafe_code)]
    unsafe {
        OwnedFd::from_raw_fd(fd as RawFd)
    }
}

/// A SOCKHASH whose values are socket fds (4 bytes) under `key_size`-byte
/// keys. Elements are allocated as sockets are added; only the bucket
/// array is sized by `max_entries`.
pub fn sockhash(key_size: u32, max_entries: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, BPF_MAP_TYPE_SOCKHASH)
        .u32(4, key_size)
        .u32(8, 4)
        .u32(12, max_entries);
    bpf(BPF_MAP_CREATE, &mut a).map(owned)
}

/// Loads an SK_SKB program; on refusal the error carries the verifier's
/// log, which names the instruction it did not accept.
pub fn load_sk_skb(insns: &[u64]) -> io::Result<OwnedFd> {
    // The program declares no GPL-only helper: bpf_sk_redirect_hash is
    // open to any license.
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 64 * 1024];
    let mut a = Attr::new();
    a.u32(0, BPF_PROG_TYPE_SK_SKB)
        .u32(4, insns.len() as u32)
        .u64(8, insns.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(24, 1)
        .u32(28, log.len() as u32)
        .u64(32, log.as_mut_ptr() as u64);
    a.0[48..48 + 11].copy_from_slice(b"vmpod_relay");
    match bpf(BPF_PROG_LOAD, &mut a) {
        Ok(fd) => Ok(owned(fd)),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let last: Vec<&str> = text.lines().rev().take(3).collect();
            Err(io::Error::new(
                e.kind(),
                format!(
                    "{e}{}",
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(" (verifier: {})", last.join(" / "))
                    }
                ),
            ))
        }
    }
}

/// Attaches `prog` as the stream verdict of every socket in `map`.
pub fn attach_verdict(map: &OwnedFd, prog: &OwnedFd) -> io::Result<()> {
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32)
        .u32(4, prog.as_raw_fd() as u32)
        .u32(8, BPF_SK_SKB_STREAM_VERDICT);
    bpf(BPF_PROG_ATTACH, &mut a).map(drop)
}

/// Adds `sock` under `key`; fails if the key is taken or the socket cannot
/// join (not established, or another layer owns its protocol hooks).
pub fn insert(map: &OwnedFd, key: &[u8], sock: RawFd) -> io::Result<()> {
    let value = sock as u32;
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32)
        .u64(8, key.as_ptr() as u64)
        .u64(16, (&value as *const u32) as u64)
        .u64(24, BPF_NOEXIST);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(drop)
}

pub fn delete(map: &OwnedFd, key: &[u8]) -> io::Result<()> {
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32).u64(8, key.as_ptr() as u64);
    bpf(BPF_MAP_DELETE_ELEM, &mut a).map(drop)
}
