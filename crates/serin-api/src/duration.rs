//! Go's `time.ParseDuration`, because Flagger users write intervals and timeouts in Go syntax.

use std::time::Duration;

/// A string that is no Go duration; the text quotes it and says what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {why}")]
pub struct InvalidDuration {
    pub input: String,
    pub why: Why,
}

/// What is wrong with a duration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Why {
    #[error("negative durations are not allowed")]
    Negative,
    #[error("empty")]
    Empty,
    #[error("expected a number")]
    ExpectedNumber,
    #[error("missing unit (use ns, us, ms, s, m or h)")]
    MissingUnit,
    #[error("unknown unit {0:?}")]
    UnknownUnit(String),
    #[error("number too large")]
    TooLarge,
    #[error("bad fraction")]
    BadFraction,
    #[error("overflow")]
    Overflow,
}

/// Parses a Go duration ("1m30s", "500ms", "1.5h", "0"). Negative durations are refused: every
/// duration in the Flagger API is a period or a timeout.
pub fn parse_go_duration(input: &str) -> Result<Duration, InvalidDuration> {
    let err = |why: Why| InvalidDuration {
        input: input.to_string(),
        why,
    };
    let mut s = input;
    if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    } else if let Some(rest) = s.strip_prefix('-') {
        // Go accepts "-0" but nothing in this API wants a negative duration.
        if !rest.is_empty() && rest.chars().all(|c| c == '0') {
            return Ok(Duration::ZERO);
        }
        return Err(err(Why::Negative));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err(Why::Empty));
    }
    let mut total: u128 = 0; // nanoseconds
    while !s.is_empty() {
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &s[..int_len];
        s = &s[int_len..];
        let mut frac_part = "";
        if let Some(rest) = s.strip_prefix('.') {
            let frac_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &rest[..frac_len];
            s = &rest[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(err(Why::ExpectedNumber));
        }
        let unit_len = s
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map(|(i, _)| i)
            .unwrap_or(s.len());
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(err(Why::MissingUnit)),
            other => return Err(err(Why::UnknownUnit(other.to_string()))),
        };
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| err(Why::TooLarge))?
        };
        let mut value = int
            .checked_mul(unit_nanos)
            .ok_or_else(|| err(Why::Overflow))?;
        if !frac_part.is_empty() {
            // Digits beyond nanosecond precision cannot matter; cap them to keep the maths exact.
            let digits = &frac_part[..frac_part.len().min(30)];
            let frac: u128 = digits.parse().map_err(|_| err(Why::BadFraction))?;
            let scale = 10u128.pow(digits.len() as u32);
            value = value
                .checked_add(frac.saturating_mul(unit_nanos) / scale)
                .ok_or_else(|| err(Why::Overflow))?;
        }
        total = total.checked_add(value).ok_or_else(|| err(Why::Overflow))?;
        // Go's limit: the value must fit an int64 of nanoseconds.
        if total > i64::MAX as u128 {
            return Err(err(Why::Overflow));
        }
    }
    let secs = (total / 1_000_000_000) as u64;
    let nanos = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        let ok: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("-0", Duration::ZERO),
            ("+5s", Duration::from_secs(5)),
            ("1s", Duration::from_secs(1)),
            ("10s", Duration::from_secs(10)),
            ("1m", Duration::from_secs(60)),
            ("1m30s", Duration::from_secs(90)),
            ("1h", Duration::from_secs(3600)),
            ("1h2m3s", Duration::from_secs(3723)),
            ("500ms", Duration::from_millis(500)),
            ("1.5h", Duration::from_secs(5400)),
            (".5s", Duration::from_millis(500)),
            ("1.s", Duration::from_secs(1)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("10μs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("1h1h", Duration::from_secs(7200)),
            ("0.000000001s", Duration::from_nanos(1)),
            ("2562047h", Duration::from_secs(2562047 * 3600)),
        ];
        for (input, want) in ok {
            assert_eq!(parse_go_duration(input).as_ref(), Ok(want), "{input}");
        }
        let bad = [
            "",
            "s",
            "1",
            "10",
            "1x",
            "1 s",
            "-1s",
            "1m-1s",
            "1.2.3s",
            ".s",
            "1d",
            "10sx",
            "2562048h",
            "99999999999999999999999s",
        ];
        for input in bad {
            let res = parse_go_duration(input);
            assert!(res.is_err(), "{input:?} parsed as {res:?}");
            assert!(
                res.unwrap_err().to_string().contains(input),
                "error names the input"
            );
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,12}") {
            let _ = parse_go_duration(&s);
        }

        #[test]
        fn seconds_and_minutes_compose(m in 0u64..10_000, s in 0u64..10_000) {
            let parsed = parse_go_duration(&format!("{m}m{s}s")).unwrap();
            prop_assert_eq!(parsed, Duration::from_secs(m * 60 + s));
        }
    }
}
