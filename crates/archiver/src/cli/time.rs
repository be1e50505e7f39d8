//! Points in time on the command line and in output: RFC 3339 (UTC or with an offset),
//! nanoseconds since the Unix epoch (as `query` prints them), `now`, or `now` minus a duration
//! (`-1h`, `-30m`).

use std::str::FromStr;

use svc::HumanDuration;

const NS_PER_SEC: i64 = 1_000_000_000;

/// What a time argument should look like, for error messages.
pub const EXPECTED: &str = "an RFC 3339 time (2026-11-21T10:00:00Z), nanoseconds since the \
                            Unix epoch, \"now\" or a duration ago (\"-1h\")";

/// Parses a time argument into nanoseconds since the Unix epoch; `now_ns` anchors `now` and
/// relative times.
pub fn parse(text: &str, now_ns: i64) -> Result<i64, String> {
    let t = text.trim();
    let bad = || format!("expected {EXPECTED}, found {text:?}");
    if t == "now" {
        return Ok(now_ns);
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<i64>().map_err(|_| bad());
    }
    if let Some(ago) = t.strip_prefix('-') {
        let d = HumanDuration::from_str(ago).map_err(|_| bad())?;
        let ns = i64::try_from(d.get().as_nanos()).map_err(|_| bad())?;
        return Ok(now_ns.saturating_sub(ns));
    }
    rfc3339(t).ok_or_else(bad)
}

/// `YYYY-MM-DD[(T| )HH:MM[:SS[.fraction]]][Z|±HH:MM]`; without an offset, UTC.
fn rfc3339(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    let num = |s: &[u8]| -> Option<i64> {
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (year, month, day) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    if !(1..=12).contains(&month) || !(1..=days_in_month(year, month)).contains(&day) {
        return None;
    }
    let mut secs = days_from_civil(year, month, day) * 86_400;
    let mut nanos = 0i64;
    let mut rest = &b[10..];
    if !rest.is_empty() {
        if !matches!(rest[0], b'T' | b't' | b' ') || rest.len() < 6 || rest[3] != b':' {
            return None;
        }
        let (h, m) = (num(&rest[1..3])?, num(&rest[4..6])?);
        rest = &rest[6..];
        let mut s = 0;
        if rest.first() == Some(&b':') {
            s = num(rest.get(1..3)?)?;
            rest = &rest[3..];
            if rest.first() == Some(&b'.') {
                let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
                if digits == 0 || digits > 9 {
                    return None;
                }
                nanos = num(&rest[1..=digits])? * 10i64.pow(9 - digits as u32);
                rest = &rest[1 + digits..];
            }
        }
        if h > 23 || m > 59 || s > 60 {
            return None;
        }
        secs += h * 3600 + m * 60 + s;
        match rest {
            [] | [b'Z' | b'z'] => {}
            [sign @ (b'+' | b'-'), oh1, oh2, b':', om1, om2] => {
                let off = num(&[*oh1, *oh2])? * 3600 + num(&[*om1, *om2])? * 60;
                secs -= if *sign == b'+' { off } else { -off };
            }
            _ => return None,
        }
    }
    secs.checked_mul(NS_PER_SEC)?.checked_add(nanos)
}

/// Formats nanoseconds since the epoch as RFC 3339 UTC with nanoseconds.
pub fn format(ns: i64) -> String {
    let secs = ns.div_euclid(NS_PER_SEC);
    let nanos = ns.rem_euclid(NS_PER_SEC);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_accepted_forms() {
        let now = 1_700_000_000 * NS_PER_SEC;
        assert_eq!(parse("now", now), Ok(now));
        assert_eq!(parse("-1h", now), Ok(now - 3600 * NS_PER_SEC));
        assert_eq!(parse("123", now), Ok(123));
        assert_eq!(parse("1970-01-01", now), Ok(0));
        assert_eq!(parse("2023-11-14T22:13:20Z", now), Ok(now));
        assert_eq!(parse("2023-11-14T23:13:20+01:00", now), Ok(now));
        assert_eq!(
            parse("2023-11-14 22:13:20.5", now),
            Ok(now + NS_PER_SEC / 2)
        );
        for bad in [
            "",
            "yesterday",
            "2023-13-01",
            "2023-02-30",
            "2023-11-14T25:00",
            "-x",
            "é",
        ] {
            assert!(parse(bad, now).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn format_round_trips() {
        for ns in [
            0,
            1,
            1_700_000_000_123_456_789,
            -1,
            951_782_400 * NS_PER_SEC,
        ] {
            assert_eq!(parse(&format(ns), 0), Ok(ns), "{}", format(ns));
        }
        assert_eq!(format(0), "1970-01-01T00:00:00.000000000Z");
    }
}
