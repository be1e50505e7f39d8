//! A number between 0 and 1 inclusive, such as the jitter applied to an interval.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const EXPECTED: &str = r#"a fraction from 0 to 1, like 0.1 or "10%""#;

/// An `f64` known to lie in `0.0..=1.0`.
///
/// Reads a number (`0.1`), or text holding a number or a percentage (`"0.1"`, `"10%"`);
/// writes a number.
#[derive(Debug, Clone, Copy, Default, PartialEq, PartialOrd)]
pub struct Fraction(f64);

impl Fraction {
    /// 0.
    pub const ZERO: Fraction = Fraction(0.0);
    /// 1.
    pub const ONE: Fraction = Fraction(1.0);

    /// `value`, if it lies in `0.0..=1.0`.
    pub fn new(value: f64) -> Result<Self, ParseFractionError> {
        if (0.0..=1.0).contains(&value) {
            Ok(Fraction(value))
        } else {
            Err(ParseFractionError {
                found: value.to_string(),
            })
        }
    }

    /// `value` moved into `0.0..=1.0` (NaN becomes 0); `const`, for defaults written as
    /// constants, where [`Fraction::new`]'s `Result` cannot be unwrapped.
    pub const fn clamped(value: f64) -> Self {
        if value.is_nan() || value < 0.0 {
            Fraction(0.0)
        } else if value > 1.0 {
            Fraction(1.0)
        } else {
            Fraction(value)
        }
    }

    /// The value, in `0.0..=1.0`.
    pub const fn get(self) -> f64 {
        self.0
    }
}

impl fmt::Display for Fraction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a value is not a fraction: `expected a fraction from 0 to 1, …, found 1.5`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {EXPECTED}, found {found}")]
pub struct ParseFractionError {
    // Already formatted: a number as written, text in quotes.
    found: String,
}

impl FromStr for Fraction {
    type Err = ParseFractionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = || ParseFractionError {
            found: format!("{text:?}"),
        };
        let trimmed = text.trim();
        let value = match trimmed.strip_suffix('%') {
            Some(percent) => percent.trim().parse::<f64>().map_err(|_| fail())? / 100.0,
            None => trimmed.parse::<f64>().map_err(|_| fail())?,
        };
        Fraction::new(value).map_err(|_| fail())
    }
}

impl Serialize for Fraction {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.0)
    }
}

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FractionVisitor)
    }
}

struct FractionVisitor;

impl Visitor<'_> for FractionVisitor {
    type Value = Fraction;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Fraction, E> {
        Fraction::new(value).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Fraction, E> {
        match value {
            0 => Ok(Fraction::ZERO),
            1 => Ok(Fraction::ONE),
            _ => Err(E::custom(ParseFractionError {
                found: value.to_string(),
            })),
        }
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Fraction, E> {
        self.visit_i64(i64::try_from(value).unwrap_or(i64::MAX))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Fraction, E> {
        text.parse().map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_numbers_and_percentages_in_range() {
        assert_eq!("0.1".parse::<Fraction>().unwrap().get(), 0.1);
        assert_eq!("10%".parse::<Fraction>().unwrap().get(), 0.1);
        assert_eq!("1".parse::<Fraction>().unwrap(), Fraction::ONE);
        assert_eq!(Fraction::new(0.0).unwrap(), Fraction::ZERO);
        assert_eq!(Fraction::clamped(2.0), Fraction::ONE);
        assert_eq!(Fraction::clamped(f64::NAN), Fraction::ZERO);
        assert_eq!(Fraction::clamped(0.25).get(), 0.25);
    }

    #[test]
    fn out_of_range_says_expected_and_found() {
        let err = Fraction::new(1.5).unwrap_err().to_string();
        assert_eq!(
            err,
            r#"expected a fraction from 0 to 1, like 0.1 or "10%", found 1.5"#
        );
        let err = "lots".parse::<Fraction>().unwrap_err().to_string();
        assert!(err.ends_with(r#"found "lots""#), "{err}");
        assert!("NaN".parse::<Fraction>().is_err());
        assert!("-0.1".parse::<Fraction>().is_err());
    }

    #[test]
    fn serde_round_trip() {
        #[derive(Deserialize, Serialize, Debug, PartialEq)]
        struct Jitter {
            jitter: Fraction,
        }
        let read: Jitter = toml::from_str("jitter = 0.1").unwrap();
        assert_eq!(read.jitter.get(), 0.1);
        assert_eq!(toml::to_string(&read).unwrap(), "jitter = 0.1\n");
        let read: Jitter = toml::from_str("jitter = \"25%\"").unwrap();
        assert_eq!(read.jitter.get(), 0.25);
        let read: Jitter = toml::from_str("jitter = 1").unwrap();
        assert_eq!(read.jitter, Fraction::ONE);
        let err = toml::from_str::<Jitter>("jitter = 2").unwrap_err();
        assert!(err.message().ends_with("found 2"), "{err}");
    }
}
