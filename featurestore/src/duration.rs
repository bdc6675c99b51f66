//! Human durations as the project file writes them: `500ms`, `30s`, `10m`, `1h`, `7d`.
//!
//! Window names in feature names use the same spelling (`amount_sum_1h`), so parsing and
//! formatting live together and round-trip.

use std::fmt;

/// A duration in whole milliseconds, as written in `fathom.yaml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub i64);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration (use a positive whole number with ms, s, m, h or d, e.g. 10m)")]
pub struct SpanError(pub String);

const UNITS: [(&str, i64); 5] = [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

impl Span {
    /// Parses `10m`, `1h`, `7d`, `30s`, `250ms`.
    pub fn parse(text: &str) -> Result<Span, SpanError> {
        let err = || SpanError(text.to_string());
        let trimmed = text.trim();
        let split = trimmed.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        let (digits, unit) = trimmed.split_at(split);
        let n: i64 = digits.parse().map_err(|_| err())?;
        let (_, factor) = UNITS.iter().find(|(u, _)| *u == unit).ok_or_else(err)?;
        if n <= 0 {
            return Err(err());
        }
        n.checked_mul(*factor).map(Span).ok_or_else(err)
    }

    /// Milliseconds.
    pub fn millis(self) -> i64 {
        self.0
    }
}

/// Formats with the largest unit that divides evenly: `3600000` → `1h`, `90000` → `90s`.
impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, factor) in UNITS {
            if self.0 % factor == 0 {
                return write!(f, "{}{unit}", self.0 / factor);
            }
        }
        write!(f, "{}ms", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_round_trips() {
        for (text, ms) in [("250ms", 250), ("30s", 30_000), ("10m", 600_000), ("1h", 3_600_000), ("7d", 604_800_000)] {
            let span = Span::parse(text).unwrap();
            assert_eq!(span.millis(), ms);
            assert_eq!(span.to_string(), text);
        }
        assert_eq!(Span(90_000).to_string(), "90s");
        assert_eq!(Span(7_200_000).to_string(), "2h");
    }

    #[test]
    fn refuses_bad_spellings() {
        for bad in ["24x", "", "h", "0m", "-1h", "1.5h", "10 m m"] {
            assert!(Span::parse(bad).is_err(), "{bad} should not parse");
        }
    }
}
