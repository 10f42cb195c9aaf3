//! Byte sizes as users write them: `4GiB`, `512 MiB`, `1.5GB`, `unlimited`.

use crate::{Error, Result};

/// Parses a byte size: a plain number of bytes, or with a suffix KiB/MiB/GiB/TiB (powers
/// of 1024) or KB/MB/GB/TB (powers of 1000), case-insensitive; `unlimited` for no limit.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") {
        return Ok(u64::MAX);
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        other => return Err(Error::Invalid(format!("size {s:?}: unknown unit {other:?} (use bytes, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"))),
    };
    let v: f64 = num.parse().map_err(|_| Error::Invalid(format!("size {s:?} is not a number with an optional unit")))?;
    let bytes = v * mult;
    if !(bytes.is_finite() && (0.0..1.8e19).contains(&bytes)) {
        return Err(Error::Invalid(format!("size {s:?} is out of range")));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5kb").unwrap(), 1500);
        assert_eq!(parse_size("unlimited").unwrap(), u64::MAX);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("-3GiB").is_err());
        assert!(parse_size("").is_err());
    }
}
