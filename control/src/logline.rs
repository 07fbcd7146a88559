//! A line of a task's output as nodes keep and serve it: when it was
//! written (UTC, RFC 3339 with nanoseconds at a fixed width — Docker's
//! `--timestamps` format, which Docker Engine also gives), a space, then
//! the line. Output kept before lines were stamped passes through as it is.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `2026-12-08T00:40:00.123456789Z`
pub const STAMP_LEN: usize = 30;

/// The stamp for `t`.
pub fn stamp(t: SystemTime) -> String {
    let ns = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as i128;
    let d = time::OffsetDateTime::from_unix_timestamp_nanos(ns)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute(),
        d.second(),
        d.nanosecond()
    )
}

/// Nanoseconds since the epoch of a stamp, if `s` is exactly one.
pub fn parse(s: &[u8]) -> Option<i128> {
    if s.len() != STAMP_LEN {
        return None;
    }
    let layout = b"dddd-dd-ddTdd:dd:dd.dddddddddZ";
    let fits = s.iter().zip(layout).all(|(c, l)| match l {
        b'd' => c.is_ascii_digit(),
        _ => c == l,
    });
    if !fits {
        return None;
    }
    let n = |a: usize, b: usize| -> u32 {
        s[a..b]
            .iter()
            .fold(0, |acc, c| acc * 10 + u32::from(c - b'0'))
    };
    let month = time::Month::try_from(n(5, 7) as u8).ok()?;
    let date = time::Date::from_calendar_date(n(0, 4) as i32, month, n(8, 10) as u8).ok()?;
    let t = time::Time::from_hms_nano(n(11, 13) as u8, n(14, 16) as u8, n(17, 19) as u8, n(20, 29))
        .ok()?;
    Some(
        time::PrimitiveDateTime::new(date, t)
            .assume_utc()
            .unix_timestamp_nanos(),
    )
}

/// A stored line as (its time, if stamped; the line as the task wrote it).
pub fn split(line: &[u8]) -> (Option<i128>, &[u8]) {
    match line.get(..STAMP_LEN).and_then(parse) {
        Some(ns) if line.get(STAMP_LEN) == Some(&b' ') => (Some(ns), &line[STAMP_LEN + 1..]),
        _ => (None, line),
    }
}

/// Stored output as the task wrote it: every line's stamp taken off.
pub fn strip(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|l| String::from_utf8_lossy(split(l.as_bytes()).1).into_owned())
        .collect()
}

/// Docker's `since` (`SECONDS[.NANOS]` since the epoch, as the CLI sends
/// it) in nanoseconds.
pub fn parse_since(s: &str) -> Option<i128> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty()
        || !secs.bytes().all(|c| c.is_ascii_digit())
        || secs.len() > 12
        || frac.len() > 9
        || !frac.bytes().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let nanos: i128 = format!("{frac:0<9}").parse().ok()?;
    Some(secs.parse::<i128>().ok()? * 1_000_000_000 + nanos)
}

/// Whether a line stamped `t` is shown from `since` on (unstamped lines
/// always are: nothing says they are older).
pub fn shown_since(t: Option<i128>, since: Option<i128>) -> bool {
    match (t, since) {
        (Some(t), Some(s)) => t >= s,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_read_back_and_anything_else_passes_through() {
        let t = UNIX_EPOCH + Duration::new(1_796_688_000, 123_456_789);
        let s = stamp(t);
        assert_eq!(s, "2026-12-08T00:00:00.123456789Z");
        let line = format!("{s} hello world\n");
        let (at, rest) = split(line.as_bytes());
        assert_eq!(at, Some(1_796_688_000_123_456_789));
        assert_eq!(rest, b"hello world\n");
        assert_eq!(
            strip(&format!("{line}{s} two\nthree")),
            "hello world\ntwo\nthree"
        );
        for plain in [
            "hello\n",
            "",
            "2026-12-08T00:00:00.123456789Zhello",
            "2026-13-08T00:00:00.123456789Z month 13",
            "2026-12-08T00:00:00.12345678Z short",
            "2026-12-08 00:00:00.123456789Z space",
        ] {
            assert_eq!(
                split(plain.as_bytes()),
                (None, plain.as_bytes()),
                "{plain:?}"
            );
        }
    }

    #[test]
    fn since_as_the_docker_cli_sends_it() {
        assert_eq!(parse_since("1796688000"), Some(1_796_688_000_000_000_000));
        assert_eq!(parse_since("1796688000.5"), Some(1_796_688_000_500_000_000));
        assert_eq!(
            parse_since("1796688000.000000001"),
            Some(1_796_688_000_000_000_001)
        );
        for bad in [
            "",
            "x",
            "-1",
            "1.2.3",
            "1.0000000001",
            "9999999999999",
            "1e9",
        ] {
            assert_eq!(parse_since(bad), None, "{bad:?}");
        }
        assert!(shown_since(Some(5), Some(5)) && !shown_since(Some(4), Some(5)));
        assert!(shown_since(None, Some(5)) && shown_since(Some(1), None));
    }
}
