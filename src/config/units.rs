//! Human-friendly quantities used in the config: memory sizes (`256Mi`) and
//! durations (`30s`). Both deserialize from strings and keep their original
//! spelling out of the way: the rest of vmpod sees bytes and `Duration`s.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A memory size written with a binary suffix (`Ki`, `Mi`, `Gi`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn mebibytes(n: u64) -> Self {
        ByteSize(n << 20)
    }

    pub fn kibibytes(self) -> u64 {
        self.0 >> 10
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (digits, shift) = if let Some(n) = text.strip_suffix("Ki") {
            (n, 10)
        } else if let Some(n) = text.strip_suffix("Mi") {
            (n, 20)
        } else if let Some(n) = text.strip_suffix("Gi") {
            (n, 30)
        } else {
            return Err(format!(
                "`{text}` needs a unit: a whole number followed by Ki, Mi or Gi (e.g. 256Mi)"
            ));
        };
        let n: u64 = digits
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not a whole number followed by Ki, Mi or Gi"))?;
        n.checked_mul(1 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b != 0 && b.is_multiple_of(1 << 30) {
            write!(f, "{}Gi", b >> 30)
        } else if b != 0 && b.is_multiple_of(1 << 20) {
            write!(f, "{}Mi", b >> 20)
        } else {
            write!(f, "{}Ki", b >> 10)
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A duration written as a number with a unit: `500ms`, `30s`, `5m`, `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl std::str::FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let n: u64 = digits.parse().map_err(|_| {
            format!("`{text}` is not a duration: write a whole number and a unit (ms, s, m, h), e.g. 30s")
        })?;
        let millis_per_unit = match unit.trim() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => {
                return Err(format!(
                    "`{text}` has no valid unit: use ms, s, m or h, e.g. 30s"
                ));
            }
        };
        n.checked_mul(millis_per_unit)
            .map(|ms| HumanDuration(Duration::from_millis(ms)))
            .ok_or_else(|| format!("`{text}` is too long"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_binary_suffixes() {
        assert_eq!("256Mi".parse::<ByteSize>().unwrap().0, 256 << 20);
        assert_eq!("1Gi".parse::<ByteSize>().unwrap().0, 1 << 30);
        assert_eq!("512Ki".parse::<ByteSize>().unwrap().kibibytes(), 512);
        assert!("256".parse::<ByteSize>().is_err());
        assert!("256MB".parse::<ByteSize>().is_err());
        assert!("xMi".parse::<ByteSize>().is_err());
        assert!("99999999999999Gi".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize::mebibytes(256).to_string(), "256Mi");
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(
            "30s".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(30)
        );
        assert_eq!(
            "500ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!(
            "2m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(120)
        );
        assert!("30".parse::<HumanDuration>().is_err());
        assert!("s".parse::<HumanDuration>().is_err());
        assert!("3 days".parse::<HumanDuration>().is_err());
    }
}
