//! Points in time on the command line and in output: RFC 3339 with `Z` or an offset (parsed and
//! printed by `jiff`), nanoseconds since the Unix epoch (as `query` prints them), `now`, or
//! `now` minus a duration (`-1h`, `-30m`).

use std::str::FromStr;

use jiff::Timestamp;
use jiff::civil::DateTime;
use svc::HumanDuration;

/// What a time argument should look like, for error messages.
pub const EXPECTED: &str = "an RFC 3339 time with an offset (2026-11-21T10:00:00Z, \
                            2026-11-21T11:00:00+01:00), nanoseconds since the Unix epoch, \
                            \"now\" or a duration ago (\"-1h\")";

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
    match t.parse::<Timestamp>() {
        Ok(ts) => i64::try_from(ts.as_nanosecond()).map_err(|_| {
            format!("{text:?} is outside the years 1677 to 2262 that the archive can hold")
        }),
        Err(err) => Err(without_offset(t).unwrap_or_else(|| format!("{}: {err}", bad()))),
    }
}

/// The error for a date and time without an offset, which could be any of 27 hours: how to
/// write it in UTC. `None` when `t` is not a civil date and time either.
fn without_offset(t: &str) -> Option<String> {
    let civil = t.parse::<DateTime>().ok().or_else(|| {
        t.parse::<jiff::civil::Date>()
            .ok()
            .map(|d| d.at(0, 0, 0, 0))
    })?;
    Some(format!(
        "{t:?} has no UTC offset, so it names no single point in time: write {civil}Z for UTC \
         or add the offset, like {civil}+01:00"
    ))
}

/// Formats nanoseconds since the epoch as RFC 3339 UTC with nanoseconds.
pub fn format(ns: i64) -> String {
    // Every i64 of nanoseconds is within jiff's range (years -9999 to 9999).
    let ts = Timestamp::from_nanosecond(i128::from(ns)).expect("i64 nanoseconds fit a Timestamp");
    ts.strftime("%Y-%m-%dT%H:%M:%S.%9fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS_PER_SEC: i64 = 1_000_000_000;

    #[test]
    fn parses_the_accepted_forms() {
        let now = 1_700_000_000 * NS_PER_SEC;
        assert_eq!(parse("now", now), Ok(now));
        assert_eq!(parse("-1h", now), Ok(now - 3600 * NS_PER_SEC));
        assert_eq!(parse("123", now), Ok(123));
        assert_eq!(parse("1970-01-01T00:00:00Z", now), Ok(0));
        assert_eq!(parse("2023-11-14T22:13:20Z", now), Ok(now));
        assert_eq!(parse("2023-11-14T23:13:20+01:00", now), Ok(now));
        assert_eq!(parse("2023-11-14T20:13:20-02:00", now), Ok(now));
        assert_eq!(
            parse("2023-11-14 22:13:20.5Z", now),
            Ok(now + NS_PER_SEC / 2)
        );
        for bad in [
            "",
            "yesterday",
            "2023-13-01T00:00:00Z",
            "2023-02-30T00:00:00Z",
            "2023-11-14T25:00Z",
            "-x",
            "é",
        ] {
            let err = parse(bad, now).unwrap_err();
            assert!(
                err.starts_with("expected an RFC 3339 time"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn an_impossible_offset_is_refused() {
        for bad in ["2026-01-01T00:00:00+99:99", "2026-01-01T00:00:00+24:60"] {
            let err = parse(bad, 0).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn a_time_without_offset_says_how_to_write_it() {
        assert_eq!(
            parse("2026-01-01T10:00:00", 0).unwrap_err(),
            "\"2026-01-01T10:00:00\" has no UTC offset, so it names no single point in time: write \
             2026-01-01T10:00:00Z for UTC or add the offset, like 2026-01-01T10:00:00+01:00"
        );
        let err = parse("2026-01-01", 0).unwrap_err();
        assert!(err.contains("write 2026-01-01T00:00:00Z for UTC"), "{err}");
        assert!(!err.contains('\n'));
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
