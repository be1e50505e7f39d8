//! Durations written the way people write them: `"5s"`, `"250ms"`, `"1m30s"`, `"1.5s"`.
//!
//! [`HumanDuration`] is the field type for config structs; [`human_duration`] is the same
//! format for plain `Duration` fields via `#[serde(with = "svc::human_duration")]`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::Invalid;

/// What a duration should look like, for error messages.
const EXPECTED: &str = r#"a duration like "5s" or "250ms""#;

/// A [`Duration`] read from and written as text like `"5s"`, `"250ms"`, `"1m30s"` or `"1.5s"`.
///
/// Parsed by [`humantime::parse_duration`]: units `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`, `d`
/// (and humantime's longer spellings, `sec`, `min`, `hours`, …, `w`, `M` for months, `y`);
/// components add up (`"1h30m"`, `"1h 30m"`), a component may have a decimal fraction (`"1.5s"`),
/// and `"0"` alone is zero. Display writes the shortest form that parses back to the same value
/// (`"1m30s"`, without humantime's spaces, as the config docs write it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Zero.
    pub const ZERO: HumanDuration = HumanDuration(Duration::ZERO);

    /// Wraps a [`Duration`].
    pub const fn new(duration: Duration) -> Self {
        HumanDuration(duration)
    }

    /// Whole seconds, for defaults written as constants.
    pub const fn from_secs(secs: u64) -> Self {
        HumanDuration(Duration::from_secs(secs))
    }

    /// Milliseconds, for defaults written as constants.
    pub const fn from_millis(millis: u64) -> Self {
        HumanDuration(Duration::from_millis(millis))
    }

    /// The wrapped [`Duration`].
    pub const fn get(self) -> Duration {
        self.0
    }

    /// For [`Validate`](crate::Validate): rejects zero, as intervals and timeouts must be.
    ///
    /// The problem reads `<key>: expected a duration like "5s" or "250ms", found "0s" (must
    /// be > 0)`.
    pub fn require_positive(self, key: &str) -> Result<(), Invalid> {
        if self.0.is_zero() {
            return Err(Invalid::new(
                key,
                EXPECTED,
                format!("\"{self}\" (must be > 0)"),
            ));
        }
        Ok(())
    }
}

impl From<Duration> for HumanDuration {
    fn from(duration: Duration) -> Self {
        HumanDuration(duration)
    }
}

impl From<HumanDuration> for Duration {
    fn from(duration: HumanDuration) -> Self {
        duration.0
    }
}

/// Why a text is not a duration; displays as `expected a duration like "5s" or "250ms",
/// found "5x" (unknown unit "x" …)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {EXPECTED}, found {found:?} ({reason})")]
pub struct ParseDurationError {
    found: String,
    reason: String,
}

impl ParseDurationError {
    fn new(found: &str, reason: impl Into<String>) -> Self {
        ParseDurationError {
            found: found.to_owned(),
            reason: reason.into(),
        }
    }
}

impl FromStr for HumanDuration {
    type Err = ParseDurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse(text).map(HumanDuration)
    }
}

/// Parses one duration text with `humantime`; see [`HumanDuration`] for the grammar. Empty and
/// negative texts get reasons of their own; humantime's reasons are one line too.
fn parse(text: &str) -> Result<Duration, ParseDurationError> {
    let fail = |reason: String| ParseDurationError::new(text, reason);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(fail("it is empty".into()));
    }
    if trimmed.starts_with('-') {
        return Err(fail("negative durations are not allowed".into()));
    }
    humantime::parse_duration(trimmed).map_err(|e| fail(e.to_string()))
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, nanos) = (self.0.as_secs(), self.0.subsec_nanos());
        if secs == 0 {
            // Below a second, the largest unit that keeps the number whole.
            return match nanos {
                0 => f.write_str("0s"),
                n if n % 1_000_000 == 0 => write!(f, "{}ms", n / 1_000_000),
                n if n % 1_000 == 0 => write!(f, "{}us", n / 1_000),
                n => write!(f, "{n}ns"),
            };
        }
        let (hours, minutes, seconds) = (secs / 3600, secs / 60 % 60, secs % 60);
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        if seconds > 0 || nanos > 0 {
            write!(f, "{seconds}")?;
            if nanos > 0 {
                let digits = format!("{nanos:09}");
                write!(f, ".{}", digits.trim_end_matches('0'))?;
            }
            f.write_str("s")?;
        }
        Ok(())
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }
}

struct DurationVisitor;

impl DurationVisitor {
    fn bare_number<E: de::Error>(number: impl fmt::Display) -> E {
        E::custom(format!(
            "expected {EXPECTED}, found the number {number} (a unit is required, e.g. \"{number}s\")"
        ))
    }
}

impl Visitor<'_> for DurationVisitor {
    type Value = HumanDuration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        text.parse().map_err(E::custom)
    }

    // A bare number is the likeliest mistake ("interval = 5"); say what to write instead of
    // serde's generic "invalid type".
    fn visit_i64<E: de::Error>(self, number: i64) -> Result<Self::Value, E> {
        Err(Self::bare_number(number))
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<Self::Value, E> {
        Err(Self::bare_number(number))
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<Self::Value, E> {
        Err(Self::bare_number(number))
    }
}

/// Serde helpers to read and write a plain [`Duration`] field in [`HumanDuration`]'s format:
/// `#[serde(with = "svc::human_duration")] interval: Duration`.
pub mod human_duration {
    use super::*;

    /// Writes the duration as text like `"1m30s"`.
    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        HumanDuration(*duration).serialize(serializer)
    }

    /// Reads text like `"250ms"` into a duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        HumanDuration::deserialize(deserializer).map(HumanDuration::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Duration {
        text.parse::<HumanDuration>().unwrap().get()
    }

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(d("5s"), Duration::from_secs(5));
        assert_eq!(d("250ms"), Duration::from_millis(250));
        assert_eq!(d("1m"), Duration::from_secs(60));
        assert_eq!(d("1h"), Duration::from_secs(3600));
        assert_eq!(d("1m30s"), Duration::from_secs(90));
        assert_eq!(d("1.5s"), Duration::from_millis(1500));
        assert_eq!(d("100us"), Duration::from_micros(100));
        assert_eq!(d("100µs"), Duration::from_micros(100));
        assert_eq!(d("7ns"), Duration::from_nanos(7));
        assert_eq!(d("0.5m"), Duration::from_secs(30));
        assert_eq!(d("1d"), Duration::from_secs(86_400));
        assert_eq!(d(" 1h 2m "), Duration::from_secs(3720));
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("0s"), Duration::ZERO);
        assert_eq!(d("0.000000001s"), Duration::from_nanos(1));
    }

    #[test]
    fn bad_input_says_what_was_expected_and_found() {
        let err = |text: &str| text.parse::<HumanDuration>().unwrap_err().to_string();
        assert_eq!(
            err("5"),
            r#"expected a duration like "5s" or "250ms", found "5" (time unit needed, for example 5sec or 5ms)"#
        );
        assert!(
            err("5x").starts_with(
                r#"expected a duration like "5s" or "250ms", found "5x" (unknown time unit "x", supported units: ns, us/µs, ms, sec, min, hours, days"#
            ),
            "{}",
            err("5x")
        );
        assert!(err("").ends_with("found \"\" (it is empty)"));
        assert!(err("-1s").ends_with("(negative durations are not allowed)"));
        assert!(err("s").ends_with("(expected number at 0)"), "{}", err("s"));
        assert!(
            err("1.2.3s").contains("found \"1.2.3s\" ("),
            "{}",
            err("1.2.3s")
        );
        assert!(
            err("99999999999999999999999h").contains("(number is too large"),
            "{}",
            err("99999999999999999999999h")
        );
        for text in [
            "5",
            "5x",
            "",
            "-1s",
            "s",
            "1.2.3s",
            "99999999999999999999999h",
        ] {
            assert!(!err(text).contains('\n'), "one line: {}", err(text));
        }
    }

    #[test]
    fn display_is_short_and_round_trips() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_micros(100), "100us"),
            (Duration::from_nanos(1_500), "1500ns"),
            (Duration::from_millis(1_500), "1.5s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h"),
            (Duration::new(3600, 500_000_000), "1h0.5s"),
            (Duration::new(5, 1), "5.000000001s"),
            (Duration::from_secs(100 * 3600 + 1), "100h1s"),
        ];
        for (duration, text) in cases {
            assert_eq!(HumanDuration(duration).to_string(), text);
            assert_eq!(d(text), duration, "{text} round-trips");
        }
        let max = HumanDuration(Duration::MAX);
        assert_eq!(d(&max.to_string()), Duration::MAX);
    }

    #[test]
    fn require_positive_reports_zero() {
        assert!(HumanDuration::from_secs(1).require_positive("a").is_ok());
        let err = HumanDuration::ZERO
            .require_positive("announce.interval")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"announce.interval: expected a duration like "5s" or "250ms", found "0s" (must be > 0)"#
        );
    }

    #[test]
    fn serde_reads_strings_and_rejects_bare_numbers() {
        #[derive(Deserialize, Serialize, Debug, PartialEq)]
        struct Timing {
            every: HumanDuration,
            #[serde(with = "human_duration")]
            plain: Duration,
        }
        let timing: Timing = toml::from_str("every = \"1m30s\"\nplain = \"250ms\"").unwrap();
        assert_eq!(timing.every, HumanDuration::from_secs(90));
        assert_eq!(timing.plain, Duration::from_millis(250));
        let text = toml::to_string(&timing).unwrap();
        assert_eq!(text, "every = \"1m30s\"\nplain = \"250ms\"\n");
        let err = toml::from_str::<Timing>("every = 5\nplain = \"1s\"").unwrap_err();
        assert!(
            err.message()
                .contains(r#"found the number 5 (a unit is required, e.g. "5s")"#),
            "{err}"
        );
    }
}
