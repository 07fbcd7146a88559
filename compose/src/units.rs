//! The value formats compose files borrow from Go and Docker: durations
//! (`1m30s`), memory sizes (`512M`, 1024-based), file modes (`0440`).

use std::time::Duration;

/// Go's `time.ParseDuration`: a sequence of decimal numbers with units
/// ns, us (µs), ms, s, m, h; `0` alone is allowed. Negative durations are
/// refused: no compose field means anything by them.
pub fn duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("invalid duration {s:?} (write it like 10s, 1m30s or 500ms)");
    if t.is_empty() || t.starts_with('-') {
        return Err(bad());
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    let mut nanos: f64 = 0.0;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let num: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        nanos += num * scale;
    }
    // Ten years is beyond any timeout or grace period anyone means.
    if !nanos.is_finite() || nanos > 10.0 * 365.0 * 86400e9 {
        return Err(format!("duration {s:?} is too long"));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// Docker's `RAMInBytes`: a number with an optional b, k, m, g, t or p
/// suffix (1024-based, an `i`/`b` after it is allowed).
pub fn bytes(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {s:?} (write it like 512M, 1G or 1048576)");
    let t = s.trim();
    let num_len = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let num: f64 = t[..num_len].parse().map_err(|_| bad())?;
    let unit = t[num_len..].trim_start().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let scale: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0f64.powi(3),
        "t" => 1024.0f64.powi(4),
        "p" => 1024.0f64.powi(5),
        _ => return Err(bad()),
    };
    let v = num * scale;
    if !v.is_finite() || v >= u64::MAX as f64 {
        return Err(format!("size {s:?} is too large"));
    }
    Ok(v as u64)
}

/// A file mode as YAML 1.1 reads it (Docker's parser): a leading `0` or
/// `0o` means octal (`0440`), otherwise decimal (`288`). At most 0o777:
/// setuid bits on a mounted secret mean nothing useful.
pub fn file_mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let parsed = if let Some(o) = t.strip_prefix("0o").or_else(|| t.strip_prefix("0O")) {
        u32::from_str_radix(o, 8)
    } else if t.len() > 1 && t.starts_with('0') {
        u32::from_str_radix(&t[1..], 8)
    } else {
        t.parse::<u32>()
    };
    match parsed {
        Ok(m) if m <= 0o777 => Ok(m),
        Ok(_) => Err(format!("file mode {s:?} is above 0777")),
        Err(_) => Err(format!("invalid file mode {s:?} (write it like 0440)")),
    }
}

/// CPUs as Docker reads `--cpus`/`cpus:`: a positive decimal, kept as
/// billionths of a CPU.
pub fn nano_cpus(s: &str) -> Result<u64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 && f <= 1e6 => Ok((f * 1e9).round() as u64),
        _ => Err(format!(
            "invalid cpus {s:?} (a positive number like 0.5 or 2)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        for bad in ["", "10", "-1s", "1x", "s", "1.2.3s", "99999999h"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn docker_sizes_are_1024_based() {
        assert_eq!(bytes("512M"), Ok(512 << 20));
        assert_eq!(bytes("1g"), Ok(1 << 30));
        assert_eq!(bytes("1GiB"), Ok(1 << 30));
        assert_eq!(bytes("100kb"), Ok(100 << 10));
        assert_eq!(bytes("1048576"), Ok(1 << 20));
        assert!(bytes("12Q").is_err());
        assert!(bytes("1e30p").is_err());
    }

    #[test]
    fn modes_are_octal_with_a_leading_zero() {
        assert_eq!(file_mode("0440"), Ok(0o440));
        assert_eq!(file_mode("0o440"), Ok(0o440));
        assert_eq!(file_mode("288"), Ok(0o440));
        assert_eq!(file_mode("0"), Ok(0));
        assert!(file_mode("0999").is_err());
        assert!(file_mode("04755").is_err());
    }
}
