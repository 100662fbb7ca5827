use super::*;
use crate::relative::resolve_files;

fn canary(analysis: &str) -> Canary {
    let text = format!(
        "apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {{name: podinfo, namespace: test}}
spec:
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: podinfo}}
  service: {{port: 9898}}
  analysis:
{analysis}"
    );
    serde_yaml_ng::from_str(&text).unwrap()
}

fn t0() -> Time {
    DateTime::<Utc>::from_timestamp(1_900_000_000, 0).unwrap()
}

/// One value per second from `t0() − 10m` to `t0() + 1h`, given by `f(seconds after t0)`.
fn series(f: impl Fn(i64) -> f64) -> Vec<Sample> {
    (-600..3600)
        .map(|s| ((t0().timestamp() + s) as f64, f(s)))
        .collect()
}

/// Replays `c` with per-metric (fixed, canary compare, primary compare) value functions.
fn replay_with(c: &Canary, values: Vec<[&dyn Fn(i64) -> f64; 3]>) -> Backtest {
    let a = c.spec.analysis().unwrap();
    let metrics: Vec<ReplayMetric> = a
        .metrics
        .iter()
        .enumerate()
        .zip(values)
        .map(|((i, m), [fixed, cc, cp])| ReplayMetric {
            metric: resolve_files(c, i, m, &[]).unwrap(),
            window: m.compare.as_ref().map(|c| c.window()).unwrap_or_default(),
            series: MetricSeries {
                canary: series(fixed),
                compare_canary: series(cc),
                compare_primary: series(cp),
            },
        })
        .collect();
    let settings = crate::controller::state::settings(c);
    replay(
        &settings,
        &metrics,
        t0(),
        t0() + chrono::Duration::minutes(30),
        Duration::from_secs(1),
    )
}

const PROGRESSIVE: &str = "    interval: 10s
    threshold: 2
    maxWeight: 50
    stepWeight: 25
";

#[test]
fn a_good_release_is_promoted_and_a_faulty_one_rolled_back() {
    let c = canary(&format!(
        "{PROGRESSIVE}    metrics:
      - {{name: request-success-rate, interval: 30s, thresholdRange: {{min: 99}}}}
"
    ));
    let nan = |_| f64::NAN;
    let good = replay_with(&c, vec![[&|_| 100.0, &nan, &nan]]);
    assert_eq!(good.outcome, "promoted", "{}", table(&good));
    assert_eq!(good.outcome_at, Some(t0() + chrono::Duration::seconds(23)));
    let weights: Vec<(i64, u32, &str)> = good
        .steps
        .iter()
        .map(|s| (s.at_seconds, s.canary_weight, s.result))
        .collect();
    assert_eq!(weights, vec![(10, 25, "pass"), (20, 50, "pass")]);
    assert_eq!(good.steps[0].metrics[0].value, Some(100.0));

    // The canary breaks 15 s into the run: the checks at 20 s and 30 s fail, threshold 2.
    let faulty = replay_with(
        &c,
        vec![[&|s| if s < 15 { 100.0 } else { 50.0 }, &nan, &nan]],
    );
    assert_eq!(faulty.outcome, "rolledBack", "{}", table(&faulty));
    assert_eq!(
        faulty.outcome_at,
        Some(t0() + chrono::Duration::seconds(30))
    );
    assert_eq!(faulty.final_canary_weight, 50);
    let last = faulty.steps.last().unwrap();
    assert_eq!((last.result, last.failed_checks), ("fail", 2));
    assert_eq!(
        last.metrics[0].message.as_deref(),
        Some("Halt podinfo.test advancement success rate 50.00% < 99%")
    );
    let text = table(&faulty);
    assert!(
        text.contains("ROLLED BACK at +30s (canary weight 50"),
        "{text}"
    );
}

#[test]
fn on_no_data_fail_hold_pass() {
    let with = |policy: &str| {
        canary(&format!(
            "{PROGRESSIVE}    metrics:
      - {{name: request-success-rate, thresholdRange: {{min: 99}}, onNoData: {policy}}}
"
        ))
    };
    let nan = |_| f64::NAN;
    let no_traffic = |_| f64::NAN;
    let fail = replay_with(&with("fail"), vec![[&no_traffic, &nan, &nan]]);
    assert_eq!(fail.outcome, "rolledBack");
    assert!(
        fail.steps[0].metrics[0]
            .message
            .as_deref()
            .unwrap()
            .starts_with("Halt advancement no values found for istio metric request-success-rate")
    );
    let pass = replay_with(&with("pass"), vec![[&no_traffic, &nan, &nan]]);
    assert_eq!(pass.outcome, "promoted");
    // hold: neither advance nor fail until the progress deadline (600 s), then roll back.
    let hold = replay_with(&with("hold"), vec![[&no_traffic, &nan, &nan]]);
    assert_eq!(hold.outcome, "rolledBack", "{}", table(&hold));
    assert!(
        hold.steps
            .iter()
            .all(|s| s.canary_weight == 25 && s.failed_checks == 0)
    );
    assert_eq!(hold.outcome_at, Some(t0() + chrono::Duration::seconds(610)));
    // Traffic arrives after a minute: the held run goes on and is promoted.
    let late = |s: i64| if s < 60 { f64::NAN } else { 100.0 };
    let hold = replay_with(&with("hold"), vec![[&late, &nan, &nan]]);
    assert_eq!(hold.outcome, "promoted", "{}", table(&hold));
    assert!(hold.steps.iter().take(5).all(|s| s.result == "hold"));
}

#[test]
fn relative_judgement_against_the_primary() {
    // Both sides degraded equally (a bad hour for a dependency): the fixed floor rolls back, the
    // comparison with the primary does not.
    let both_bad = |s: i64| 90.0 + (s % 7) as f64 * 0.3;
    let fixed = canary(&format!(
        "{PROGRESSIVE}    metrics:
      - {{name: request-success-rate, thresholdRange: {{min: 99}}}}
"
    ));
    let nan = |_| f64::NAN;
    assert_eq!(
        replay_with(&fixed, vec![[&both_bad, &nan, &nan]]).outcome,
        "rolledBack"
    );
    let relative = canary(&format!(
        "{PROGRESSIVE}    metrics:
      - name: request-success-rate
        compare: {{window: 1m, step: 2s, minSamples: 10, maxDegradation: 1}}
"
    ));
    let r = replay_with(&relative, vec![[&both_bad, &both_bad, &both_bad]]);
    assert_eq!(r.outcome, "promoted", "{}", table(&r));
    assert!(
        r.steps[0].metrics[0]
            .comparison
            .as_deref()
            .unwrap()
            .contains("vs primary")
    );

    // Latency doubles under a generous fixed limit: the fixed check passes, the relative one fails.
    let primary = |s: i64| 100.0 + (s % 5) as f64;
    let doubled = |s: i64| 2.0 * (100.0 + (s % 5) as f64);
    let generous = canary(&format!(
        "{PROGRESSIVE}    metrics:
      - {{name: request-duration, thresholdRange: {{max: 1000}}}}
"
    ));
    assert_eq!(
        replay_with(&generous, vec![[&doubled, &nan, &nan]]).outcome,
        "promoted"
    );
    let both = canary(&format!(
        "{PROGRESSIVE}    metrics:
      - name: request-duration
        thresholdRange: {{max: 1000}}
        compare: {{window: 1m, step: 2s, minSamples: 5}}
"
    ));
    let r = replay_with(&both, vec![[&doubled, &doubled, &primary]]);
    assert_eq!(r.outcome, "rolledBack", "{}", table(&r));
    let m = &r.steps[0].metrics[0];
    assert_eq!(m.verdict, "fail");
    assert!(
        m.message.as_deref().unwrap().starts_with(
            "Halt podinfo.test advancement request-duration is worse than the primary: canary "
        ),
        "{m:?}"
    );
    assert!(
        m.comparison
            .as_deref()
            .unwrap()
            .contains("p < 0.0001 < 0.02"),
        "{m:?}"
    );
}

#[test]
fn times_on_the_command_line() {
    let now = t0();
    assert_eq!(parse_time("now", now), Ok(now));
    assert_eq!(
        parse_time("now-1h", now),
        Ok(now - chrono::Duration::hours(1))
    );
    assert_eq!(
        parse_time("-90m", now),
        Ok(now - chrono::Duration::minutes(90))
    );
    assert_eq!(
        parse_time("2026-01-02T15:04:05Z", now).map(|t| t.timestamp()),
        Ok(1767366245)
    );
    assert!(
        parse_time("yesterday", now)
            .unwrap_err()
            .to_string()
            .contains("RFC 3339")
    );
    assert_eq!(
        resolution(now, now + chrono::Duration::hours(1)),
        Duration::from_secs(1)
    );
    assert_eq!(
        resolution(now, now + chrono::Duration::days(1)),
        Duration::from_secs(9)
    );
}
