//! A minimal ISO 9660 writer with Joliet names: a handful of regular files
//! in the root directory, nothing else (the shape of a NoCloud seed).
//!
//! Why Joliet: cloud-init opens `user-data`, `meta-data` and
//! `network-config` by name, and ISO 9660 level 1 names are upper-case
//! 8.3 (`USER_DAT.;1`). A reader with Joliet support (Linux isofs, blkid,
//! libblkid in cloud-init's ds-identify, isoinfo -J) reads the names from
//! the Joliet supplementary volume descriptor instead, as UCS-2. The
//! primary tree carries the 8.3 names for readers without Joliet. Rock
//! Ridge is not needed: the files need no owner or mode (isofs gives them
//! 0444 to everyone).
//!
//! Layout (2048-byte sectors), all fixed for at most a few files:
//! 0-15 system area (zeros), 16 primary volume descriptor, 17 Joliet
//! supplementary volume descriptor, 18 terminator, 19/20 the primary
//! L/M path tables, 21/22 the Joliet ones, 23 primary root directory,
//! 24 Joliet root directory, 25.. file contents, each from a sector start.
//! Same input, same bytes: no timestamps ("not specified" dates).

use thiserror::Error;

const SECTOR: usize = 2048;
const PVD_SECTOR: u32 = 16;
const PATH_TABLE_L: u32 = 19;
const PATH_TABLE_M: u32 = 20;
const JOLIET_PATH_TABLE_L: u32 = 21;
const JOLIET_PATH_TABLE_M: u32 = 22;
const ROOT_DIR: u32 = 23;
const JOLIET_ROOT_DIR: u32 = 24;
const FIRST_FILE: u32 = 25;
/// The root directory of each tree is one sector: "." and ".." (34 bytes
/// each) leave room for 12 file records of the longest Joliet name (162
/// bytes each; records may not cross a sector boundary).
const MAX_FILES: usize = 12;
/// Joliet allows 64 UCS-2 characters per name.
const MAX_NAME: usize = 64;
/// The root's path table record: 8 bytes, a one-byte identifier, a pad.
const PATH_TABLE_SIZE: u32 = 10;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IsoError {
    #[error("ISO 9660 volume label `{0}`: use 1 to 16 characters of A-Z, a-z, 0-9, _ and -")]
    BadLabel(String),
    #[error("file name `{0}`: use 1 to {MAX_NAME} characters of a-z, A-Z, 0-9, -, _ and .")]
    BadName(String),
    #[error("file name `{0}` is given twice")]
    DuplicateName(String),
    #[error("{0} files: this writer keeps at most {MAX_FILES} in the root directory")]
    TooManyFiles(usize),
    #[error("file `{0}` is larger than 4 GiB")]
    TooLarge(String),
}

/// One file of the root directory.
pub struct IsoFile<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
}

/// Builds the whole image in memory (seeds are kilobytes).
pub fn build_iso(label: &str, files: &[IsoFile<'_>]) -> Result<Vec<u8>, IsoError> {
    if label.is_empty()
        || label.len() > 16
        || !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(IsoError::BadLabel(label.to_string()));
    }
    if files.len() > MAX_FILES {
        return Err(IsoError::TooManyFiles(files.len()));
    }
    let mut entries = Vec::with_capacity(files.len());
    for f in files {
        if f.name.is_empty()
            || f.name.len() > MAX_NAME
            || !f
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            || f.name.starts_with('.')
        {
            return Err(IsoError::BadName(f.name.to_string()));
        }
        if entries.iter().any(|e: &Entry| e.name == f.name) {
            return Err(IsoError::DuplicateName(f.name.to_string()));
        }
        let size = u32::try_from(f.data.len()).map_err(|_| IsoError::TooLarge(f.name.into()))?;
        entries.push(Entry {
            name: f.name,
            short: String::new(),
            data: f.data,
            size,
            sector: 0,
        });
    }
    assign_short_names(&mut entries);
    let mut next = FIRST_FILE;
    for e in &mut entries {
        e.sector = next;
        next += sectors(e.data.len());
    }
    let total = next;

    let mut img = vec![0u8; total as usize * SECTOR];
    let pvd = volume_descriptor(VolumeKind::Primary, label, total);
    put(&mut img, PVD_SECTOR, &pvd);
    let svd = volume_descriptor(VolumeKind::Joliet, label, total);
    put(&mut img, PVD_SECTOR + 1, &svd);
    put(&mut img, PVD_SECTOR + 2, &terminator());
    put(&mut img, PATH_TABLE_L, &root_path_table(ROOT_DIR, false));
    put(&mut img, PATH_TABLE_M, &root_path_table(ROOT_DIR, true));
    put(
        &mut img,
        JOLIET_PATH_TABLE_L,
        &root_path_table(JOLIET_ROOT_DIR, false),
    );
    put(
        &mut img,
        JOLIET_PATH_TABLE_M,
        &root_path_table(JOLIET_ROOT_DIR, true),
    );
    put(
        &mut img,
        ROOT_DIR,
        &root_directory(&entries, ROOT_DIR, false),
    );
    put(
        &mut img,
        JOLIET_ROOT_DIR,
        &root_directory(&entries, JOLIET_ROOT_DIR, true),
    );
    for e in &entries {
        put(&mut img, e.sector, e.data);
    }
    Ok(img)
}

struct Entry<'a> {
    name: &'a str,
    /// The level 1 name of the primary tree, e.g. `USER_DAT.;1`.
    short: String,
    data: &'a [u8],
    size: u32,
    sector: u32,
}

fn sectors(len: usize) -> u32 {
    // Zero-length files still get an extent number; they take no sector.
    len.div_ceil(SECTOR) as u32
}

fn put(img: &mut [u8], sector: u32, bytes: &[u8]) {
    let at = sector as usize * SECTOR;
    img[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Level 1 names: up to 8 d-characters, a dot, up to 3, `;1`. Clashes get
/// a numeric tail (`NETWORK1`), as genisoimage does.
fn assign_short_names(entries: &mut [Entry<'_>]) {
    let d = |s: &str, n: usize| -> String {
        s.chars()
            .map(|c| match c.to_ascii_uppercase() {
                c @ ('A'..='Z' | '0'..='9') => c,
                _ => '_',
            })
            .take(n)
            .collect()
    };
    let mut taken: Vec<String> = Vec::new();
    for e in entries.iter_mut() {
        let (stem, ext) = match e.name.rsplit_once('.') {
            Some((s, x)) if !s.is_empty() => (s, x),
            _ => (e.name, ""),
        };
        let (stem, ext) = (d(stem, 8), d(ext, 3));
        let mut candidate = format!("{stem}.{ext};1");
        let mut n = 1u32;
        while taken.contains(&candidate) {
            let tail = n.to_string();
            let keep = 8usize.saturating_sub(tail.len()).min(stem.len());
            candidate = format!("{}{tail}.{ext};1", &stem[..keep]);
            n += 1;
        }
        taken.push(candidate.clone());
        e.short = candidate;
    }
}

#[derive(Clone, Copy)]
enum VolumeKind {
    Primary,
    Joliet,
}

fn both_u16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

fn both_u32(v: u32) -> [u8; 8] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], l[2], l[3], b[0], b[1], b[2], b[3]]
}

fn ucs2(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// A text field padded with spaces (UCS-2 spaces for Joliet).
fn text_field(buf: &mut [u8], s: &str, kind: VolumeKind) {
    match kind {
        VolumeKind::Primary => {
            buf.fill(b' ');
            buf[..s.len()].copy_from_slice(s.as_bytes());
        }
        VolumeKind::Joliet => {
            for pair in buf.chunks_mut(2) {
                pair.copy_from_slice(&[0, b' '][..pair.len()]);
            }
            let u = ucs2(s);
            buf[..u.len()].copy_from_slice(&u);
        }
    }
}

/// "Not specified" in the 17-byte volume descriptor date format.
fn unspecified_date(buf: &mut [u8]) {
    buf[..16].fill(b'0');
    buf[16] = 0;
}

fn volume_descriptor(kind: VolumeKind, label: &str, total: u32) -> Vec<u8> {
    let mut v = vec![0u8; SECTOR];
    v[0] = match kind {
        VolumeKind::Primary => 1,
        VolumeKind::Joliet => 2,
    };
    v[1..6].copy_from_slice(b"CD001");
    v[6] = 1;
    text_field(&mut v[8..40], "LINUX", kind);
    // Joliet: 16 UCS-2 characters fit in the 32-byte field; the primary
    // label keeps its case too (blkid and cloud-init match `cidata`
    // case-insensitively; genisoimage -V cidata writes it so).
    text_field(&mut v[40..72], label, kind);
    v[80..88].copy_from_slice(&both_u32(total));
    if let VolumeKind::Joliet = kind {
        // UCS-2 level 3.
        v[88..91].copy_from_slice(b"%/E");
    }
    v[120..124].copy_from_slice(&both_u16(1)); // volume set size
    v[124..128].copy_from_slice(&both_u16(1)); // volume sequence number
    v[128..132].copy_from_slice(&both_u16(SECTOR as u16));
    v[132..140].copy_from_slice(&both_u32(PATH_TABLE_SIZE));
    let (l, m, root) = match kind {
        VolumeKind::Primary => (PATH_TABLE_L, PATH_TABLE_M, ROOT_DIR),
        VolumeKind::Joliet => (JOLIET_PATH_TABLE_L, JOLIET_PATH_TABLE_M, JOLIET_ROOT_DIR),
    };
    v[140..144].copy_from_slice(&l.to_le_bytes());
    v[148..152].copy_from_slice(&m.to_be_bytes());
    let rec = dir_record(root, SECTOR as u32, true, &[0]);
    v[156..156 + rec.len()].copy_from_slice(&rec);
    for (from, to) in [(190, 318), (318, 446), (446, 574), (574, 702)] {
        text_field(&mut v[from..to], "", kind);
    }
    for (from, to) in [(702, 739), (739, 776), (776, 813)] {
        // 37 bytes: for Joliet, 18 UCS-2 spaces and one byte.
        text_field(&mut v[from..to - 1], "", kind);
        v[to - 1] = match kind {
            VolumeKind::Primary => b' ',
            VolumeKind::Joliet => 0,
        };
    }
    for at in [813, 830, 847, 864] {
        unspecified_date(&mut v[at..at + 17]);
    }
    v[881] = 1; // file structure version
    v
}

fn terminator() -> Vec<u8> {
    let mut v = vec![0u8; 7];
    v[0] = 255;
    v[1..6].copy_from_slice(b"CD001");
    v[6] = 1;
    v
}

fn root_path_table(root: u32, big_endian: bool) -> Vec<u8> {
    let mut t = vec![1u8, 0];
    t.extend_from_slice(&if big_endian {
        root.to_be_bytes()
    } else {
        root.to_le_bytes()
    });
    t.extend_from_slice(&if big_endian {
        1u16.to_be_bytes()
    } else {
        1u16.to_le_bytes()
    });
    t.extend_from_slice(&[0, 0]); // identifier 0x00 (the root), then the pad byte
    debug_assert_eq!(t.len(), PATH_TABLE_SIZE as usize);
    t
}

/// ECMA-119 9.1. The recording date is 1970-01-01 00:00 UTC, fixed.
fn dir_record(extent: u32, size: u32, dir: bool, ident: &[u8]) -> Vec<u8> {
    let pad = usize::from(ident.len().is_multiple_of(2));
    let len = 33 + ident.len() + pad;
    let mut r = vec![0u8; len];
    r[0] = len as u8;
    r[2..10].copy_from_slice(&both_u32(extent));
    r[10..18].copy_from_slice(&both_u32(size));
    r[18..25].copy_from_slice(&[70, 1, 1, 0, 0, 0, 0]);
    r[25] = if dir { 2 } else { 0 };
    r[28..32].copy_from_slice(&both_u16(1));
    r[32] = ident.len() as u8;
    r[33..33 + ident.len()].copy_from_slice(ident);
    r
}

fn root_directory(entries: &[Entry<'_>], root: u32, joliet: bool) -> Vec<u8> {
    let mut d = Vec::with_capacity(SECTOR);
    d.extend(dir_record(root, SECTOR as u32, true, &[0]));
    d.extend(dir_record(root, SECTOR as u32, true, &[1]));
    // Records are sorted by their identifier bytes (ECMA-119 9.3).
    let mut named: Vec<(Vec<u8>, &Entry<'_>)> = entries
        .iter()
        .map(|e| {
            let ident = if joliet {
                ucs2(e.name)
            } else {
                e.short.clone().into_bytes()
            };
            (ident, e)
        })
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    for (ident, e) in named {
        d.extend(dir_record(e.sector, e.size, false, &ident));
    }
    debug_assert!(d.len() <= SECTOR, "MAX_FILES keeps the root in one sector");
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_le(img: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(img[at..at + 4].try_into().unwrap())
    }

    /// Reads the root directory a volume descriptor points to, like a
    /// reader does: (identifier, extent, size) of each file record.
    fn read_root(img: &[u8], vd_sector: usize) -> Vec<(Vec<u8>, u32, u32)> {
        let vd = &img[vd_sector * SECTOR..];
        let root = &vd[156..190];
        let (extent, size) = (u32_le(root, 2), u32_le(root, 10));
        let dir = &img[extent as usize * SECTOR..extent as usize * SECTOR + size as usize];
        let mut out = Vec::new();
        let mut at = 0;
        while at < dir.len() && dir[at] != 0 {
            let r = &dir[at..at + dir[at] as usize];
            let ident = r[33..33 + r[32] as usize].to_vec();
            if r[25] & 2 == 0 {
                out.push((ident, u32_le(r, 2), u32_le(r, 10)));
            }
            at += r[0] as usize;
        }
        out
    }

    #[test]
    fn joliet_and_primary_trees_point_at_the_same_contents() {
        let files = [
            IsoFile {
                name: "user-data",
                data: b"#cloud-config\n",
            },
            IsoFile {
                name: "meta-data",
                data: &[b'x'; 5000],
            },
            IsoFile {
                name: "network-config",
                data: b"",
            },
        ];
        let img = build_iso("cidata", &files).unwrap();
        assert_eq!(img.len() % SECTOR, 0);
        assert_eq!(&img[16 * SECTOR + 1..16 * SECTOR + 6], b"CD001");
        assert_eq!(&img[16 * SECTOR + 40..16 * SECTOR + 46], b"cidata");
        assert_eq!(
            &img[17 * SECTOR + 40..17 * SECTOR + 52],
            &ucs2("cidata")[..]
        );
        assert_eq!(img[18 * SECTOR], 255);
        assert_eq!(u32_le(&img, 16 * SECTOR + 80) as usize * SECTOR, img.len());

        let joliet = read_root(&img, 17);
        let names: Vec<String> = joliet
            .iter()
            .map(|(n, _, _)| {
                String::from_utf16(
                    &n.chunks(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect::<Vec<_>>(),
                )
                .unwrap()
            })
            .collect();
        assert_eq!(names, ["meta-data", "network-config", "user-data"]);
        let primary = read_root(&img, 16);
        let short: Vec<&[u8]> = primary.iter().map(|(n, _, _)| &n[..]).collect();
        assert_eq!(short, [&b"META_DAT.;1"[..], b"NETWORK_.;1", b"USER_DAT.;1"]);
        for ((_, je, js), (_, pe, ps)) in joliet.iter().zip(&primary) {
            assert_eq!((je, js), (pe, ps));
        }
        let (_, extent, size) = &joliet[0];
        let at = *extent as usize * SECTOR;
        assert_eq!(&img[at..at + *size as usize], &[b'x'; 5000][..]);
    }

    #[test]
    fn same_input_same_bytes() {
        let files = [IsoFile {
            name: "user-data",
            data: b"a",
        }];
        assert_eq!(build_iso("cidata", &files), build_iso("cidata", &files));
    }

    #[test]
    fn short_names_that_clash_get_a_number() {
        let files = [
            IsoFile {
                name: "network-config",
                data: b"",
            },
            IsoFile {
                name: "network-config2",
                data: b"",
            },
        ];
        let img = build_iso("cidata", &files).unwrap();
        let short: Vec<Vec<u8>> = read_root(&img, 16).into_iter().map(|(n, _, _)| n).collect();
        assert_eq!(short, [b"NETWORK1.;1".to_vec(), b"NETWORK_.;1".to_vec()]);
    }

    #[test]
    fn rejects_what_it_cannot_write() {
        let one = |name| [IsoFile { name, data: b"" }];
        assert_eq!(
            build_iso("", &one("a")),
            Err(IsoError::BadLabel(String::new()))
        );
        assert_eq!(
            build_iso("ci data", &one("a")),
            Err(IsoError::BadLabel("ci data".into()))
        );
        assert_eq!(
            build_iso("cidata", &one("a/b")),
            Err(IsoError::BadName("a/b".into()))
        );
        assert_eq!(
            build_iso("cidata", &one("")),
            Err(IsoError::BadName(String::new()))
        );
        let twice = [
            IsoFile {
                name: "a",
                data: b"",
            },
            IsoFile {
                name: "a",
                data: b"",
            },
        ];
        assert_eq!(
            build_iso("cidata", &twice),
            Err(IsoError::DuplicateName("a".into()))
        );
        let many: Vec<IsoFile<'_>> = (0..13)
            .map(|_| IsoFile {
                name: "a",
                data: b"",
            })
            .collect();
        assert_eq!(build_iso("cidata", &many), Err(IsoError::TooManyFiles(13)));
    }
}
