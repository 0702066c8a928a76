//! The one memory limit: no single allocation whose size comes from a file (a header's dimensions, a
//! resampled grid, a checkpoint's tensor shapes, a datalist) may exceed it. Set in a config as
//! `memory_limit = "8 GiB"` and on the command line as `--memory-limit 8GiB`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Bytes. Parsed from "8 GiB", "512MiB", "2G" (= GiB), "3GB" (10^9), or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemoryLimit(u64);

impl MemoryLimit {
    /// 8 GiB: one volume or tensor of this size fits a 24 GB machine beside the model and a copy or two.
    pub const DEFAULT: Self = Self(8 << 30);
    /// Below this nothing useful runs (a 64^3 f32 volume is 1 MiB).
    pub const MIN: u64 = 1 << 20;

    pub fn from_bytes(bytes: u64) -> Result<Self, String> {
        if bytes < Self::MIN {
            return Err(format!("{bytes} bytes is below the smallest memory limit, 1 MiB"));
        }
        Ok(Self(bytes))
    }
    pub fn bytes(self) -> u64 {
        self.0
    }
    /// As a `usize` for in-memory sizes (saturating on 32-bit targets).
    pub fn bytes_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl Default for MemoryLimit {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl FromStr for MemoryLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = (t[..split].trim(), t[split..].trim());
        let v: f64 = num.parse().map_err(|_| format!("memory limit {s:?}: expected a size such as \"8 GiB\", \"512MiB\" or a number of bytes"))?;
        let mult: f64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kib" => 1024.0,
            "m" | "mib" => 1024f64.powi(2),
            "g" | "gib" => 1024f64.powi(3),
            "t" | "tib" => 1024f64.powi(4),
            "kb" => 1e3,
            "mb" => 1e6,
            "gb" => 1e9,
            "tb" => 1e12,
            _ => return Err(format!("memory limit {s:?}: unknown unit {unit:?} (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")),
        };
        let bytes = v * mult;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(format!("memory limit {s:?} is out of range"));
        }
        Self::from_bytes(bytes as u64).map_err(|e| format!("memory limit {s:?}: {e}"))
    }
}

impl fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if b >= 1 << shift && b % (1 << shift) == 0 {
                return write!(f, "{} {unit}", b >> shift);
            }
        }
        if b >= 1 << 30 {
            return write!(f, "{:.2} GiB", b as f64 / (1u64 << 30) as f64);
        }
        write!(f, "{b} B")
    }
}

impl Serialize for MemoryLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MemoryLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum V {
            Bytes(u64),
            Text(String),
        }
        match V::deserialize(d)? {
            V::Bytes(b) => Self::from_bytes(b),
            V::Text(t) => t.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryLimit;

    #[test]
    fn sizes_parse_and_print() {
        for (text, bytes) in [("8 GiB", 8u64 << 30), ("512MiB", 512 << 20), ("2G", 2 << 30), ("3GB", 3_000_000_000), ("1048576", 1 << 20), ("1.5 GiB", 3 << 29)] {
            assert_eq!(text.parse::<MemoryLimit>().unwrap().bytes(), bytes, "{text}");
        }
        for bad in ["", "lots", "8 XB", "-1 GiB", "100", "1e30 TB"] {
            assert!(bad.parse::<MemoryLimit>().is_err(), "{bad}");
        }
        assert_eq!(MemoryLimit::default().to_string(), "8 GiB");
        let back: MemoryLimit = MemoryLimit::default().to_string().parse().unwrap();
        assert_eq!(back, MemoryLimit::default());
    }
}
