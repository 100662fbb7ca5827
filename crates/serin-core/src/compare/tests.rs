//! Known values come from SciPy 1.17.1 (`scipy.stats.mannwhitneyu(x, y, alternative="greater",
//! method=...)`, and `numpy.median` of the pairwise differences for the Hodges-Lehmann shift),
//! computed independently of this code. SciPy's "exact" ignores ties, so tied cases are compared
//! with its "asymptotic" method, which applies the same tie and continuity corrections.

use super::*;
use proptest::prelude::*;

fn close(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol * want.abs().max(1e-300)
}

fn criteria(direction: Direction) -> Criteria {
    Criteria {
        direction,
        max_degradation: 0.0,
        tolerance: 0.0,
        alpha: 0.05,
        min_samples: 3,
    }
}

#[test]
fn known_u_and_p_values() {
    // (name, x, y, U, p, exact)
    type Case = (&'static str, Vec<f64>, Vec<f64>, f64, f64, bool);
    let f = |v: &[i32]| v.iter().map(|x| *x as f64).collect::<Vec<_>>();
    let cases: Vec<Case> = vec![
        (
            "no ties, exact",
            vec![1.1, 3.4, 5.2, 7.8, 9.0],
            vec![0.5, 2.2, 2.9, 4.1],
            16.0,
            0.0952380952380952,
            true,
        ),
        (
            "ties, normal approximation",
            f(&[19, 22, 16, 29, 24, 20]),
            f(&[20, 11, 17, 12, 16]),
            26.0,
            0.0270645142898666,
            false,
        ),
        (
            "many ties, normal approximation",
            f(&[1, 2, 2, 3, 3, 3, 4, 4, 5, 6, 7, 7, 8, 9, 9, 10]),
            f(&[0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7]),
            156.5,
            0.0327181006314257,
            false,
        ),
        (
            "completely separated, exact",
            (10..20).map(f64::from).collect(),
            (0..10).map(f64::from).collect(),
            100.0,
            5.41254411223451e-06,
            true,
        ),
        (
            "interleaved, exact",
            f(&[1, 3, 5, 7, 9, 11, 13, 15]),
            f(&[2, 4, 6, 8, 10, 12, 14, 16]),
            28.0,
            0.677311577311577,
            true,
        ),
    ];
    for (name, x, y, u, p, exact) in cases {
        let t = mann_whitney_greater(&x, &y);
        assert_eq!(t.u, u, "{name}: U");
        assert_eq!(t.exact, exact, "{name}: method");
        assert!(
            close(t.p_value, p, 1e-9),
            "{name}: p {} want {p}",
            t.p_value
        );
    }
}

#[test]
fn hodges_lehmann_known_values() {
    // numpy.median(numpy.subtract.outer(x, y)).
    let hl = hodges_lehmann(&[1.1, 3.4, 5.2, 7.8, 9.0], &[0.5, 2.2, 2.9, 4.1]).unwrap();
    assert!(close(hl, 2.95, 1e-12), "{hl}");
    let hl = hodges_lehmann(&[19., 22., 16., 29., 24., 20.], &[20., 11., 17., 12., 16.]).unwrap();
    assert_eq!(hl, 6.5);
    let hl = hodges_lehmann(
        &[1., 3., 5., 7., 9., 11., 13., 15.],
        &[2., 4., 6., 8., 10., 12., 14., 16.],
    )
    .unwrap();
    assert_eq!(hl, -1.0);
    assert_eq!(hodges_lehmann(&[], &[1.0]), None);
}

#[test]
fn all_equal_samples_pass() {
    let t = mann_whitney_greater(&[5.0; 4], &[5.0; 4]);
    // SciPy: U = 8, asymptotic p = 1.
    assert_eq!((t.u, t.p_value, t.exact), (8.0, 1.0, false));
    let j = judge(&[5.0; 12], &[5.0; 12], &criteria(Direction::HigherIsWorse));
    assert_eq!(j.verdict, Verdict::Pass);
    assert_eq!(j.shift, Some(0.0));
    assert_eq!(j.degradation_percent, Some(0.0));
}

#[test]
fn constant_but_different_samples_are_judged() {
    // Each side constant (heavy ties): the tie correction keeps the variance positive.
    let j = judge(&[7.0; 10], &[5.0; 10], &criteria(Direction::HigherIsWorse));
    assert_eq!(j.verdict, Verdict::Fail, "{j:?}");
    assert!(!j.exact);
    assert_eq!(j.u, 100.0);
    // The same canary is fine when lower is worse.
    let j = judge(&[7.0; 10], &[5.0; 10], &criteria(Direction::LowerIsWorse));
    assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
    assert_eq!(j.u, 0.0);
}

#[test]
fn tiny_samples_cannot_reach_high_confidence() {
    // n = m = 3, fully separated: the smallest exact p is 1/C(6,3) = 0.05.
    let t = mann_whitney_greater(&[4.0, 5.0, 6.0], &[1.0, 2.0, 3.0]);
    assert!(t.exact);
    assert!(close(t.p_value, 0.05, 1e-12), "{t:?}");
    let mut c = criteria(Direction::HigherIsWorse);
    c.alpha = 0.02;
    let j = judge(&[4.0, 5.0, 6.0], &[1.0, 2.0, 3.0], &c);
    assert_eq!(
        j.verdict,
        Verdict::Pass,
        "3 against 3 can never be 98 % sure"
    );
    // One value each: U is 1, p = 1/2.
    let t = mann_whitney_greater(&[2.0], &[1.0]);
    assert_eq!((t.u, t.p_value), (1.0, 0.5));
}

#[test]
fn nan_and_empty_series() {
    let c = criteria(Direction::HigherIsWorse);
    let j = judge(&[], &[1.0, 2.0, 3.0], &c);
    assert_eq!(j.verdict, Verdict::NotEnoughData);
    assert_eq!(
        (j.canary.count, j.canary.dropped, j.canary.median),
        (0, 0, None)
    );
    assert_eq!(j.primary.median, Some(2.0));
    assert_eq!(j.shift, None);

    let nan = f64::NAN;
    let j = judge(&[nan, nan, 1.0, 2.0], &[1.0, 2.0, 3.0, f64::INFINITY], &c);
    assert_eq!(
        j.verdict,
        Verdict::NotEnoughData,
        "2 finite canary values < 3"
    );
    assert_eq!((j.canary.count, j.canary.dropped), (2, 2));
    assert_eq!((j.primary.count, j.primary.dropped), (3, 1));

    let j = judge(&[nan, 9.0, 9.5, 10.0], &[1.0, 2.0, 3.0], &c);
    assert_eq!(j.canary.count, 3);
    assert_eq!(j.verdict, Verdict::Pass, "p = 0.05 is not < 0.05: {j:?}");
    let j = judge(&[nan; 5], &[nan; 5], &c);
    assert_eq!(j.verdict, Verdict::NotEnoughData);
    assert_eq!((j.canary.dropped, j.primary.dropped), (5, 5));
}

#[test]
fn allowed_degradation_absorbs_small_but_significant_shifts() {
    // The canary's latency is 5 % higher, on every one of 40 samples: clearly significant.
    let primary: Vec<f64> = (0..40).map(|i| 100.0 + (i % 10) as f64).collect();
    let canary: Vec<f64> = primary.iter().map(|v| v * 1.05).collect();
    let strict = Criteria {
        direction: Direction::HigherIsWorse,
        max_degradation: 0.0,
        tolerance: 0.0,
        alpha: 0.02,
        min_samples: 10,
    };
    let j = judge(&canary, &primary, &strict);
    assert_eq!(j.verdict, Verdict::Fail, "{j:?}");
    let lenient = Criteria {
        max_degradation: 0.10,
        ..strict.clone()
    };
    let j = judge(&canary, &primary, &lenient);
    assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
    assert!(close(j.allowed, 10.45, 1e-12), "10 % of the median 104.5");
    let d = j.degradation_percent.unwrap();
    assert!((4.0..6.0).contains(&d), "{d}");
    // Doubled latency fails even with 10 % allowed.
    let doubled: Vec<f64> = primary.iter().map(|v| v * 2.0).collect();
    let j = judge(&doubled, &primary, &lenient);
    assert_eq!(j.verdict, Verdict::Fail, "{j:?}");
    // The absolute tolerance wins when larger (a primary with no errors at all).
    let zeros = [0.0; 20];
    let few: Vec<f64> = (0..20)
        .map(|i| if i % 2 == 0 { 0.2 } else { 0.0 })
        .collect();
    let j = judge(&few, &zeros, &strict);
    assert_eq!(j.verdict, Verdict::Fail, "any increase over 0 fails: {j:?}");
    assert_eq!(j.degradation_percent, None, "relative to a zero median");
    let j = judge(
        &few,
        &zeros,
        &Criteria {
            tolerance: 0.5,
            ..strict
        },
    );
    assert_eq!(j.verdict, Verdict::Pass, "{j:?}");
}

#[test]
fn lower_is_worse_direction() {
    let primary: Vec<f64> = (0..20).map(|i| 99.5 + (i % 5) as f64 * 0.1).collect();
    let canary: Vec<f64> = primary.iter().map(|v| v - 5.0).collect();
    let c = Criteria {
        direction: Direction::LowerIsWorse,
        max_degradation: 0.01,
        tolerance: 0.0,
        alpha: 0.02,
        min_samples: 10,
    };
    let j = judge(&canary, &primary, &c);
    assert_eq!(j.verdict, Verdict::Fail, "{j:?}");
    assert!(j.shift.unwrap() < 0.0);
    assert!(j.degradation_percent.unwrap() > 4.0);
    // A better (higher) success rate passes.
    let better: Vec<f64> = primary.iter().map(|v| v + 0.3).collect();
    assert_eq!(judge(&better, &primary, &c).verdict, Verdict::Pass);
}

#[test]
fn normal_tail() {
    assert!(close(normal_sf(0.0), 0.5, 1e-15));
    // scipy.stats.norm.sf(1.96), norm.sf(-1).
    assert!(close(normal_sf(1.96), 0.024997895148220435, 1e-12));
    assert!(close(normal_sf(-1.0), 0.8413447460685429, 1e-12));
}

/// Values whose canary and primary sides can never tie, even after a whole-number shift or
/// tolerance: canary values end in .25, primary values in .75.
fn tie_free() -> impl Strategy<Value = (Vec<f64>, Vec<f64>)> {
    (
        prop::collection::vec(-50i32..50, 1..30),
        prop::collection::vec(-50i32..50, 1..30),
    )
        .prop_map(|(x, y)| {
            (
                x.into_iter().map(|v| v as f64 + 0.25).collect(),
                y.into_iter().map(|v| v as f64 + 0.75).collect(),
            )
        })
}

proptest! {
    #[test]
    fn swapping_the_samples_mirrors_u(x in prop::collection::vec(-100.0f64..100.0, 1..40),
                                      y in prop::collection::vec(-100.0f64..100.0, 1..40)) {
        let a = mann_whitney_greater(&x, &y);
        let b = mann_whitney_greater(&y, &x);
        let nm = (x.len() * y.len()) as f64;
        prop_assert!((a.u + b.u - nm).abs() < 1e-9, "{} + {} != {}", a.u, b.u, nm);
        prop_assert!((0.0..=1.0).contains(&a.p_value));
    }

    #[test]
    fn u_counts_worse_pairs(x in prop::collection::vec(-5i32..5, 1..20),
                            y in prop::collection::vec(-5i32..5, 1..20)) {
        let (x, y): (Vec<f64>, Vec<f64>) =
            (x.iter().map(|v| *v as f64).collect(), y.iter().map(|v| *v as f64).collect());
        let mut want = 0.0;
        for a in &x {
            for b in &y {
                want += match a.partial_cmp(b) {
                    Some(Ordering::Greater) => 1.0,
                    Some(Ordering::Equal) => 0.5,
                    _ => 0.0,
                };
            }
        }
        prop_assert_eq!(mann_whitney_greater(&x, &y).u, want);
    }

    #[test]
    fn shifting_the_canary_worse_never_improves_the_verdict(
        (x, y) in tie_free(),
        shift in 0i32..40,
        tolerance in 0i32..5,
        higher in any::<bool>(),
        alpha in prop::sample::select(vec![0.01, 0.02, 0.05, 0.1]),
    ) {
        let direction = if higher { Direction::HigherIsWorse } else { Direction::LowerIsWorse };
        let c = Criteria { direction, max_degradation: 0.0, tolerance: tolerance as f64, alpha, min_samples: 1 };
        let sign = if higher { 1.0 } else { -1.0 };
        let worse: Vec<f64> = x.iter().map(|v| v + sign * shift as f64).collect();
        let before = judge(&x, &y, &c);
        let after = judge(&worse, &y, &c);
        prop_assert!(after.u >= before.u, "U {} -> {}", before.u, after.u);
        prop_assert!(after.p_value <= before.p_value + 1e-12, "p {} -> {}", before.p_value, after.p_value);
        prop_assert!(after.verdict >= before.verdict, "{:?} -> {:?}", before.verdict, after.verdict);
    }

    #[test]
    fn never_panics_and_counts_what_it_drops(
        x in prop::collection::vec(prop_oneof![Just(f64::NAN), Just(f64::INFINITY), -1e6f64..1e6], 0..30),
        y in prop::collection::vec(prop_oneof![Just(f64::NAN), -1e6f64..1e6], 0..30),
        min in 0usize..10,
    ) {
        let c = Criteria { direction: Direction::HigherIsWorse, max_degradation: 0.1, tolerance: 0.0, alpha: 0.02, min_samples: min };
        let j = judge(&x, &y, &c);
        prop_assert_eq!(j.canary.count + j.canary.dropped, x.len());
        prop_assert_eq!(j.primary.count + j.primary.dropped, y.len());
        let enough = j.canary.count >= min.max(1) && j.primary.count >= min.max(1);
        prop_assert_eq!(j.verdict == Verdict::NotEnoughData, !enough);
        prop_assert!(j.allowed.is_finite() && j.allowed >= 0.0);
    }
}
