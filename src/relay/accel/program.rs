//! The stream verdict program, hand-encoded: it builds the key of the
//! socket an skb arrived on from the skb's own fields and redirects the
//! skb to the egress of the socket stored under that key (the pair's other
//! socket), as Cilium's and Merbridge's sockmap programs do. When no
//! socket is stored there it returns SK_PASS, so the bytes stay readable
//! by userspace instead of being dropped.
//!
//! The key, 44 bytes, 11 native-endian u32 words (see [`super::Key`]):
//! family, local port (host order, as `__sk_buff.local_port` gives it),
//! remote port (the network-order u16 read as a native number), local
//! address, remote address (IPv4 in the first word, the rest zero).

/// Offsets in `struct __sk_buff` (include/uapi/linux/bpf.h).
const LEN: i16 = 0;
const FAMILY: i16 = 88;
const REMOTE_IP4: i16 = 92;
const LOCAL_IP4: i16 = 96;
const REMOTE_IP6: i16 = 100;
const LOCAL_IP6: i16 = 116;
const REMOTE_PORT: i16 = 132;
const LOCAL_PORT: i16 = 136;
/// BPF_FUNC_sk_redirect_hash.
const SK_REDIRECT_HASH: i32 = 72;
const AF_INET: i32 = 2;
const SK_DROP: i32 = 0;
const SK_PASS: i32 = 1;
/// The key's place on the stack, below the frame pointer r10.
const KEY: i16 = -48;

pub const KEY_LEN: usize = 44;

// Registers.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R10: u8 = 10;

/// One `struct bpf_insn`: code, dst/src nibbles, 16-bit offset, 32-bit imm.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let regs = (dst & 0xf) | (src << 4);
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = regs;
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    u64::from_le_bytes(b)
}

fn mov_reg(dst: u8, src: u8) -> u64 {
    insn(0xbf, dst, src, 0, 0) // BPF_ALU64 | BPF_MOV | BPF_X
}
fn mov_imm(dst: u8, imm: i32) -> u64 {
    insn(0xb7, dst, 0, 0, imm) // BPF_ALU64 | BPF_MOV | BPF_K
}
fn add_imm(dst: u8, imm: i32) -> u64 {
    insn(0x07, dst, 0, 0, imm) // BPF_ALU64 | BPF_ADD | BPF_K
}
fn rsh32_imm(dst: u8, imm: i32) -> u64 {
    insn(0x74, dst, 0, 0, imm) // BPF_ALU | BPF_RSH | BPF_K
}
fn load32(dst: u8, src: u8, off: i16) -> u64 {
    insn(0x61, dst, src, off, 0) // BPF_LDX | BPF_MEM | BPF_W
}
fn store32(dst: u8, off: i16, src: u8) -> u64 {
    insn(0x63, dst, src, off, 0) // BPF_STX | BPF_MEM | BPF_W
}
fn store32_imm(dst: u8, off: i16, imm: i32) -> u64 {
    insn(0x62, dst, 0, off, imm) // BPF_ST | BPF_MEM | BPF_W
}
fn jne_imm(dst: u8, imm: i32, skip: i16) -> u64 {
    insn(0x55, dst, 0, skip, imm) // BPF_JMP | BPF_JNE | BPF_K
}
fn ja(skip: i16) -> u64 {
    insn(0x05, 0, 0, skip, 0) // BPF_JMP | BPF_JA
}
fn call(helper: i32) -> u64 {
    insn(0x85, 0, 0, 0, helper)
}
fn exit() -> u64 {
    insn(0x95, 0, 0, 0, 0)
}
/// `r = map` (BPF_LD | BPF_IMM | BPF_DW with BPF_PSEUDO_MAP_FD): two slots.
fn ld_map_fd(dst: u8, fd: i32) -> [u64; 2] {
    [insn(0x18, dst, 1, 0, fd), insn(0, 0, 0, 0, 0)]
}

/// Copies a ctx word to the key.
fn copy(p: &mut Vec<u64>, ctx_off: i16, key_word: i16) {
    p.push(load32(R2, R6, ctx_off));
    p.push(store32(R10, KEY + 4 * key_word, R2));
}

/// The program for the SOCKHASH `map_fd`.
pub fn verdict(map_fd: i32) -> Vec<u64> {
    let mut p = vec![mov_reg(R6, R1)];
    // A bare FIN reaches the verdict as an skb without bytes. Redirected or
    // passed into a psock's queue, it makes the psock's worker "send" 0
    // bytes, which the kernel takes for a broken pipe: EPIPE on that socket
    // and its psock stops (net/core/skmsg.c, sk_psock_backlog). Dropping it
    // loses nothing: the FIN itself is already recorded on the socket
    // (RCV_SHUTDOWN), and userspace passes it on once the bytes before it
    // are through (pair.rs).
    p.push(load32(R2, R6, LEN));
    p.push(jne_imm(R2, 0, 2));
    p.push(mov_imm(R0, SK_DROP));
    p.push(exit());
    copy(&mut p, FAMILY, 0);
    copy(&mut p, LOCAL_PORT, 1);
    // remote_port: the kernel puts the network-order u16 in the upper half
    // on little-endian machines (and in the lower half on big-endian ones);
    // userspace builds the key the same way (Key::new), and the probe
    // proves the two agree before anything is accelerated.
    p.push(load32(R2, R6, REMOTE_PORT));
    if cfg!(target_endian = "little") {
        p.push(rsh32_imm(R2, 16));
    }
    p.push(store32(R10, KEY + 8, R2));
    p.push(load32(R3, R6, FAMILY));
    // IPv4: 10 instructions, then skip the IPv6 block.
    let v4 = {
        let mut b = Vec::new();
        copy(&mut b, LOCAL_IP4, 3);
        for w in 4..7 {
            b.push(store32_imm(R10, KEY + 4 * w, 0));
        }
        copy(&mut b, REMOTE_IP4, 7);
        for w in 8..11 {
            b.push(store32_imm(R10, KEY + 4 * w, 0));
        }
        b
    };
    let v6 = {
        let mut b = Vec::new();
        for i in 0..4 {
            copy(&mut b, LOCAL_IP6 + 4 * i, 3 + i);
        }
        for i in 0..4 {
            copy(&mut b, REMOTE_IP6 + 4 * i, 7 + i);
        }
        b
    };
    // Jump over the IPv4 block and its final jump when not AF_INET.
    p.push(jne_imm(R3, AF_INET, v4.len() as i16 + 1));
    p.extend(v4);
    p.push(ja(v6.len() as i16));
    p.extend(v6);
    p.push(mov_reg(R1, R6));
    p.extend(ld_map_fd(R2, map_fd));
    p.push(mov_reg(R3, R10));
    p.push(add_imm(R3, KEY as i32));
    p.push(mov_imm(R4, 0)); // flags 0: the egress of the other socket
    p.push(call(SK_REDIRECT_HASH));
    // SK_PASS either way: redirected when the helper found the peer, kept
    // for userspace when it did not.
    p.push(mov_imm(R0, SK_PASS));
    p.push(exit());
    p
}
