//! Typed values of the config that other modules render: an interface name,
//! a MAC address and a packet mark. Each is checked once, when serde reads
//! it, so a bad value is an error located at its line and column, and the
//! renderers (nft, sysctl, rtnetlink, the domain XML) never parse or check
//! a string again.
//!
//! A value that fails here stops deserialization: serde reports the first
//! such value only. The checks that must report every problem at once
//! (names, ports, addresses) stay in `validate`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// A network interface name that Linux accepts and every vmpod renderer can
/// write without quoting trouble.
///
/// Linux allows 1 to 15 bytes, not `.` or `..`, without `/`, `:`,
/// whitespace or NUL (`dev_valid_name`). vmpod is stricter and allows ASCII
/// letters, digits, `_` and `-` only: a dot would split a sysctl key
/// (`net.ipv4.conf.br0.100.rp_filter` is ambiguous to `sysctl(8)` and to
/// anyone reading it), a quote or backslash would need escaping in nft, and
/// non-ASCII bytes are shown differently by every tool (`ip`, `nft`,
/// libvirt). A name outside this set is rejected with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

/// The Linux limit: IFNAMSIZ (16) less the terminating NUL.
pub const IFNAME_MAX_BYTES: usize = 15;

impl IfName {
    pub fn new(name: &str) -> Result<Self, String> {
        let shown = name.escape_debug();
        if name.is_empty() {
            return Err("an interface name must not be empty".into());
        }
        if name.len() > IFNAME_MAX_BYTES {
            return Err(format!(
                "`{shown}` is {} bytes long: Linux allows at most {IFNAME_MAX_BYTES}",
                name.len()
            ));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            let why = match c {
                '.' => "a dot would split the interface's sysctl keys",
                '/' | ':' => "Linux does not allow it in interface names",
                c if c.is_whitespace() || c == '\0' => "Linux does not allow it in interface names",
                c if !c.is_ascii() => "vmpod allows ASCII only",
                _ => "it would need quoting in nft and sysctl output",
            };
            return Err(format!(
                "`{shown}` is not a valid interface name: {:?} is not allowed ({why}); use 1 to {IFNAME_MAX_BYTES} characters from A-Z, a-z, 0-9, `_` and `-`",
                c
            ));
        }
        Ok(IfName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for IfName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for IfName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for IfName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for IfName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for IfName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        IfName::new(s)
    }
}

impl<'de> Deserialize<'de> for IfName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        IfName::new(&text).map_err(serde::de::Error::custom)
    }
}

/// A unicast Ethernet address for the guest's NIC: not multicast (which
/// includes broadcast) and not all zeros, since neither can be a NIC's own
/// address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr([u8; 6]);

/// As written in the config: the effective config is logged with `Debug`.
impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl MacAddr {
    /// Checks the octets; the error says why they cannot be a guest's address.
    pub fn new(octets: [u8; 6]) -> Result<Self, String> {
        let mac = MacAddr(octets);
        if octets == [0xff; 6] {
            return Err(format!(
                "`{mac}` is the broadcast address: a NIC needs a unicast address, e.g. 52:54:00:12:34:56"
            ));
        }
        if octets[0] & 1 == 1 {
            return Err(format!(
                "`{mac}` is a multicast address: the first octet must be even, e.g. 52:54:00:12:34:56"
            ));
        }
        if octets == [0; 6] {
            return Err(format!(
                "`{mac}` is the all-zero address, which no NIC may use: e.g. 52:54:00:12:34:56"
            ));
        }
        Ok(mac)
    }

    pub fn octets(self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let not_a_mac = || {
            format!(
                "`{}` is not a MAC address: write six hex octets separated by `:`, e.g. 52:54:00:12:34:56",
                s.escape_debug()
            )
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for slot in &mut out {
            let part = parts.next().ok_or_else(not_a_mac)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(not_a_mac());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| not_a_mac())?;
        }
        if parts.next().is_some() {
            return Err(not_a_mac());
        }
        MacAddr::new(out)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Marks Istio sets on packets (0x539 = 1337, 0x111, 0x53a = 1338).
pub const ISTIO_MARKS: &[u32] = &[0x539, 0x111, 0x53a];

/// The packet mark of the TPROXY policy route, `MARK/MASK` as `ip rule`
/// writes it. The policy rule matches packets whose mark ANDed with the mask
/// equals the mark; nft sets the mark's bits after clearing the mask's.
///
/// Written in the config as a number (`0x4000`: the mask is the mark) or as
/// `"0x4000/0xc000"`. Neither may share a bit with Istio's marks: the rule
/// would then route (or fail to route) packets depending on the sidecar's
/// bits, and setting ours would corrupt them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fwmark {
    mark: u32,
    mask: u32,
}

impl Fwmark {
    /// vmpod's default: 0x4000/0x4000, clear of every Istio mark.
    pub const DEFAULT: Fwmark = Fwmark {
        mark: 0x4000,
        mask: 0x4000,
    };

    pub fn new(mark: u32, mask: u32) -> Result<Self, String> {
        if mark == 0 {
            return Err("the mark must not be 0: every unmarked packet would match".into());
        }
        if mark & !mask != 0 {
            return Err(format!(
                "mark {mark:#x} has bits outside its mask {mask:#x}: no packet could match; use a mask that covers the mark, e.g. {mark:#x}/{mark:#x}"
            ));
        }
        for (what, value) in [("mark", mark), ("mask", mask)] {
            if let Some(istio) = ISTIO_MARKS.iter().find(|m| *m & value != 0) {
                return Err(format!(
                    "{what} {value:#x} shares bits with Istio's mark {istio:#x}: the policy rule would capture the sidecar's packets; use e.g. 0x4000"
                ));
            }
        }
        Ok(Fwmark { mark, mask })
    }

    pub fn mark(self) -> u32 {
        self.mark
    }

    pub fn mask(self) -> u32 {
        self.mask
    }
}

/// In hex, as marks are written: the effective config is logged with `Debug`.
impl fmt::Debug for Fwmark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fwmark({self})")
    }
}

/// `0x4000/0x4000`, as `ip rule` prints it.
impl fmt::Display for Fwmark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}/{:#x}", self.mark, self.mask)
    }
}

fn parse_u32(text: &str) -> Option<u32> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

impl FromStr for Fwmark {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{}` is not a mark: write a number such as 0x4000, or MARK/MASK such as \"0x4000/0xc000\"",
                s.escape_debug()
            )
        };
        let (mark, mask) = match s.split_once('/') {
            Some((mark, mask)) => (
                parse_u32(mark).ok_or_else(bad)?,
                parse_u32(mask).ok_or_else(bad)?,
            ),
            None => {
                let mark = parse_u32(s).ok_or_else(bad)?;
                (mark, mark)
            }
        };
        Fwmark::new(mark, mask)
    }
}

impl<'de> Deserialize<'de> for Fwmark {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => u32::try_from(n)
                .map_err(|_| format!("{n:#x} does not fit in 32 bits"))
                .and_then(|mark| Fwmark::new(mark, mark)),
            Raw::Text(t) => t.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_linux_and_vmpod_rules() {
        for good in ["virbr0", "br-vm_1", "a", "fifteen-bytes-x"] {
            assert!(IfName::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "br0.100",
            "br\"x",
            "br/x",
            "br:x",
            "br x",
            "br\0",
            "sixteen-bytes-xx",
            "brü",
        ] {
            assert!(IfName::new(bad).is_err(), "{bad:?}");
        }
        assert!(IfName::new("br0.100").unwrap_err().contains("sysctl"));
        assert!(
            IfName::new("sixteen-bytes-xx")
                .unwrap_err()
                .contains("16 bytes")
        );
    }

    #[test]
    fn macs_are_six_octets_of_unicast() {
        let mac: MacAddr = "52:54:00:AA:bb:01".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:aa:bb:01");
        assert_eq!(mac.octets(), [0x52, 0x54, 0x00, 0xaa, 0xbb, 0x01]);
        for (bad, why) in [
            ("52:54:00:aa:bb", "not a MAC"),
            ("52:54:00:aa:bb:cc:dd", "not a MAC"),
            ("zz:54:00:aa:bb:cc", "not a MAC"),
            ("+2:54:00:aa:bb:cc", "not a MAC"),
            ("525400aabbcc", "not a MAC"),
            ("01:00:5e:00:00:01", "multicast"),
            ("ff:ff:ff:ff:ff:ff", "broadcast"),
            ("00:00:00:00:00:00", "all-zero"),
        ] {
            let e = bad.parse::<MacAddr>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn fwmarks_keep_clear_of_istio() {
        let m: Fwmark = "0x4000".parse().unwrap();
        assert_eq!(m, Fwmark::DEFAULT);
        assert_eq!(m.to_string(), "0x4000/0x4000");
        let m: Fwmark = "0x4000/0xc000".parse().unwrap();
        assert_eq!((m.mark(), m.mask()), (0x4000, 0xc000));
        assert!("0".parse::<Fwmark>().unwrap_err().contains("not be 0"));
        assert!("0x539".parse::<Fwmark>().unwrap_err().contains("Istio"));
        assert!(
            "0x4000/0x4fff"
                .parse::<Fwmark>()
                .unwrap_err()
                .contains("mask 0x4fff")
        );
        assert!(
            "0xc000/0x4000"
                .parse::<Fwmark>()
                .unwrap_err()
                .contains("outside")
        );
        assert!("lots".parse::<Fwmark>().unwrap_err().contains("not a mark"));
    }
}
