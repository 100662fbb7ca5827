//! The `serin.dev/simulate` pod-template annotation: how a simulated revision answers.

use std::fmt;

/// Pod-template annotation describing a revision's simulated behaviour.
pub const SIMULATE_ANNOTATION: &str = "serin.dev/simulate";

/// Response time of a workload without a `latency` setting: fast, but inside Istio's second
/// bucket, so a p99 query gives a value rather than the bottom edge.
pub const DEFAULT_LATENCY_MS: f64 = 5.0;

/// How a workload answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Behaviour {
    /// Share of requests answered with 500, in percent (0..=100).
    pub error_percent: f64,
    /// Response time of every request, in milliseconds.
    pub latency_ms: f64,
    /// Share of the requests routed to the workload that reach it, in percent (0..=100):
    /// `traffic=0%` is a workload nobody calls although routes point at it, so its queries find
    /// no values (the `onNoData` cases).
    pub traffic_percent: f64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            error_percent: 0.0,
            latency_ms: DEFAULT_LATENCY_MS,
            traffic_percent: 100.0,
        }
    }
}

/// Why an annotation value was refused; the message names the bad part and the expected form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSimulate {
    /// The whole annotation value.
    pub value: String,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for InvalidSimulate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "annotation {SIMULATE_ANNOTATION}={:?} is invalid: {}; expected comma-separated \
             errors=P%, latency=Dms and traffic=P%, e.g. \"errors=10%,latency=300ms\"",
            self.value, self.problem
        )
    }
}

impl std::error::Error for InvalidSimulate {}

/// Parses the annotation value. `None` (absent) is healthy and fast. Anything not understood is
/// refused as a whole: a half-applied behaviour would make a test pass for the wrong reason.
pub fn parse(value: Option<&str>) -> Result<Behaviour, InvalidSimulate> {
    let mut out = Behaviour::default();
    let Some(value) = value else {
        return Ok(out);
    };
    let bad = |problem: String| InvalidSimulate {
        value: value.to_string(),
        problem,
    };
    if value.trim().is_empty() {
        return Err(bad(
            "the value is empty (remove the annotation for a healthy workload)".into(),
        ));
    }
    let (mut seen_errors, mut seen_latency, mut seen_traffic) = (false, false, false);
    for item in value.split(',') {
        let item = item.trim();
        let Some((key, val)) = item.split_once('=') else {
            return Err(bad(format!("{item:?} is not key=value")));
        };
        let (key, val) = (key.trim(), val.trim());
        match key {
            "errors" => {
                if std::mem::replace(&mut seen_errors, true) {
                    return Err(bad("errors is given twice".into()));
                }
                out.error_percent = number_with_unit(val, "%")
                    .filter(|p| *p <= 100.0)
                    .ok_or_else(|| {
                        bad(format!(
                            "errors={val:?} is not a percentage between 0% and 100%"
                        ))
                    })?;
            }
            "latency" => {
                if std::mem::replace(&mut seen_latency, true) {
                    return Err(bad("latency is given twice".into()));
                }
                out.latency_ms = number_with_unit(val, "ms").ok_or_else(|| {
                    bad(format!(
                        "latency={val:?} is not a duration in milliseconds like 250ms"
                    ))
                })?;
            }
            "traffic" => {
                if std::mem::replace(&mut seen_traffic, true) {
                    return Err(bad("traffic is given twice".into()));
                }
                out.traffic_percent = number_with_unit(val, "%")
                    .filter(|p| *p <= 100.0)
                    .ok_or_else(|| {
                        bad(format!(
                            "traffic={val:?} is not a percentage between 0% and 100%"
                        ))
                    })?;
            }
            other => {
                return Err(bad(format!(
                    "unknown key {other:?} (known: errors, latency, traffic)"
                )));
            }
        }
    }
    Ok(out)
}

/// A finite, non-negative decimal followed by exactly `unit`.
fn number_with_unit(s: &str, unit: &str) -> Option<f64> {
    let digits = s.strip_suffix(unit)?;
    // Only plain decimals: f64::from_str would also take "inf", "NaN" and "1e3".
    if digits.is_empty()
        || digits.starts_with('.')
        || digits.ends_with('.')
        || !digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        || digits.matches('.').count() > 1
    {
        return None;
    }
    digits.parse::<f64>().ok().filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(error_percent: f64, latency_ms: f64) -> Result<Behaviour, String> {
        Ok(Behaviour {
            error_percent,
            latency_ms,
            ..Default::default()
        })
    }

    #[test]
    fn table() {
        let d = DEFAULT_LATENCY_MS;
        let cases: &[(Option<&str>, Result<Behaviour, String>)] = &[
            (None, ok(0.0, d)),
            (Some("errors=5%"), ok(5.0, d)),
            (Some("latency=250ms"), ok(0.0, 250.0)),
            (Some("errors=10%,latency=300ms"), ok(10.0, 300.0)),
            (Some("latency=300ms, errors=10%"), ok(10.0, 300.0)),
            (Some(" errors = 2.5% "), ok(2.5, d)),
            (Some("errors=0%"), ok(0.0, d)),
            (Some("errors=100%"), ok(100.0, d)),
            (Some("latency=0ms"), ok(0.0, 0.0)),
            (
                Some("traffic=0%"),
                Ok(Behaviour {
                    traffic_percent: 0.0,
                    ..Default::default()
                }),
            ),
            (
                Some("errors=1%,traffic=25%"),
                Ok(Behaviour {
                    error_percent: 1.0,
                    traffic_percent: 25.0,
                    ..Default::default()
                }),
            ),
            (Some("traffic=101%"), Err("traffic=\"101%\"".into())),
            (
                Some("traffic=0%,traffic=1%"),
                Err("traffic is given twice".into()),
            ),
            (Some(""), Err("the value is empty".into())),
            (Some("errors=abc"), Err("errors=\"abc\"".into())),
            (Some("errors=5"), Err("errors=\"5\"".into())),
            (Some("errors=101%"), Err("errors=\"101%\"".into())),
            (Some("errors=-1%"), Err("errors=\"-1%\"".into())),
            (Some("errors=NaN%"), Err("errors=\"NaN%\"".into())),
            (Some("errors=%"), Err("errors=\"%\"".into())),
            (Some("latency=3"), Err("latency=\"3\"".into())),
            (Some("latency=3s"), Err("latency=\"3s\"".into())),
            (Some("latency=infms"), Err("latency=\"infms\"".into())),
            (Some("latency=1e3ms"), Err("latency=\"1e3ms\"".into())),
            (Some("latency=1.ms"), Err("latency=\"1.ms\"".into())),
            (Some("speed=fast"), Err("unknown key \"speed\"".into())),
            (Some("errors=5%,"), Err("\"\" is not key=value".into())),
            (Some("errors"), Err("\"errors\" is not key=value".into())),
            (
                Some("errors=5%,errors=6%"),
                Err("errors is given twice".into()),
            ),
            (
                Some("latency=5ms,latency=6ms"),
                Err("latency is given twice".into()),
            ),
        ];
        for (input, want) in cases {
            let got = parse(*input);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "input {input:?}"),
                (Err(fragment), Err(e)) => {
                    assert!(
                        e.problem.contains(fragment.as_str()),
                        "input {input:?}: problem {:?} lacks {fragment:?}",
                        e.problem
                    );
                    assert_eq!(Some(e.value.as_str()), *input);
                    let shown = e.to_string();
                    assert!(shown.contains(SIMULATE_ANNOTATION), "{shown}");
                }
                _ => panic!("input {input:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn message_names_the_value_and_the_fix() {
        let e = parse(Some("errors=abc")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "annotation serin.dev/simulate=\"errors=abc\" is invalid: errors=\"abc\" is not a \
             percentage between 0% and 100%; expected comma-separated errors=P%, latency=Dms and \
             traffic=P%, e.g. \"errors=10%,latency=300ms\""
        );
    }
}
