//! The canary judged against the primary: a one-sided Mann-Whitney U test of "the canary is worse
//! than the primary by more than the allowed degradation", on two samples of the same query.
//!
//! Why a rank test: metric samples are skewed and heavy-tailed (latency, error bursts), so a test
//! on means would be driven by a few spikes; ranks only ask which side tends to be worse. Why the
//! allowed degradation is built into the test rather than checked beside it: with hundreds of
//! samples a 0.1 % shift is "significant" and would fail releases nobody can tell apart. Testing
//! `canary − allowed` against the primary fails only when the data show, at the chosen confidence,
//! that the canary is worse by more than what the user accepts; it is the same as asking whether
//! the lower end of the one-sided confidence interval of the shift lies beyond the allowed amount
//! (Kayenta compares a confidence interval with a tolerance band in the same spirit).
//!
//! Pure and deterministic: the shell fetches the two series and calls [`judge`].

use std::cmp::Ordering;

/// Which way a metric gets worse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Error rates, latencies: a higher canary is worse.
    HigherIsWorse,
    /// Success rates, throughput: a lower canary is worse.
    LowerIsWorse,
}

/// How strict the judgement is.
#[derive(Clone, Debug, PartialEq)]
pub struct Criteria {
    pub direction: Direction,
    /// Allowed degradation as a fraction of the primary's median (0.1: 10 % worse is accepted).
    pub max_degradation: f64,
    /// Allowed degradation in the metric's unit; the larger of the two allowances applies. It
    /// matters when the primary's median is 0 (no errors at all), where any relative allowance is 0.
    pub tolerance: f64,
    /// One-sided significance level: 0.02 for 98 % confidence.
    pub alpha: f64,
    /// Fewer finite values than this on either side: [`Verdict::NotEnoughData`].
    pub min_samples: usize,
}

/// The outcome of [`judge`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// No evidence that the canary is worse by more than allowed.
    Pass,
    /// Too few values on one side to judge; the caller applies the metric's `onNoData`.
    NotEnoughData,
    /// The canary is worse by more than allowed, at the chosen confidence.
    Fail,
}

/// One side's sample after filtering.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleSummary {
    /// Finite values used.
    pub count: usize,
    /// Values left out because they were NaN or infinite (Prometheus' 0/0 without traffic).
    pub dropped: usize,
    /// Median of the values used; `None` without values.
    pub median: Option<f64>,
}

/// Everything a person needs to see why a metric passed or failed.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub canary: SampleSummary,
    pub primary: SampleSummary,
    /// Allowed degradation in the metric's unit (the larger of the relative and absolute
    /// allowances); 0 without primary values.
    pub allowed: f64,
    /// Hodges-Lehmann estimate of the shift, canary − primary, in the metric's unit (positive:
    /// the canary is higher). `None` without values.
    pub shift: Option<f64>,
    /// The shift towards "worse", relative to the primary's median, in percent (positive: worse).
    /// `None` when the median is 0 or there are no values.
    pub degradation_percent: Option<f64>,
    /// U statistic of the canary (after removing the allowance): pairs in which the canary is
    /// worse, ties counting one half. Ranges over 0..=n·m.
    pub u: f64,
    /// One-sided p-value of "worse by more than allowed"; 1 when not tested.
    pub p_value: f64,
    /// Whether `p_value` comes from the exact distribution (small samples without ties) or the
    /// normal approximation with tie and continuity corrections.
    pub exact: bool,
}

/// Largest n·m for which the exact null distribution is computed (no ties only); its table has
/// (n+1)·(n·m+1) entries.
const EXACT_MAX_PAIRS: usize = 2500;

/// Keeps the finite values and counts the others.
pub fn finite(values: &[f64]) -> (Vec<f64>, usize) {
    let kept: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let dropped = values.len() - kept.len();
    (kept, dropped)
}

/// The median of `values` (unsorted); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Judges the canary's values against the primary's. NaN and infinite values are left out
/// (and counted); with fewer than `min_samples` values on a side the verdict is
/// [`Verdict::NotEnoughData`].
pub fn judge(canary: &[f64], primary: &[f64], c: &Criteria) -> Judgement {
    let (x, x_dropped) = finite(canary);
    let (y, y_dropped) = finite(primary);
    let primary_median = median(&y);
    let relative = c.max_degradation.max(0.0) * primary_median.map_or(0.0, f64::abs);
    let allowed = relative.max(c.tolerance.max(0.0));
    let allowed = if allowed.is_finite() { allowed } else { 0.0 };
    let shift = hodges_lehmann(&x, &y);
    let worse_sign = match c.direction {
        Direction::HigherIsWorse => 1.0,
        Direction::LowerIsWorse => -1.0,
    };
    let degradation_percent = match (shift, primary_median) {
        (Some(s), Some(m)) if m != 0.0 => Some(worse_sign * s / m.abs() * 100.0),
        _ => None,
    };
    let mut j = Judgement {
        verdict: Verdict::NotEnoughData,
        canary: SampleSummary {
            count: x.len(),
            dropped: x_dropped,
            median: median(&x),
        },
        primary: SampleSummary {
            count: y.len(),
            dropped: y_dropped,
            median: primary_median,
        },
        allowed,
        shift,
        degradation_percent,
        u: 0.0,
        p_value: 1.0,
        exact: false,
    };
    let min = c.min_samples.max(1);
    if x.len() < min || y.len() < min {
        return j;
    }
    // Orient both samples so that larger is worse, then take the allowance off the canary.
    let x: Vec<f64> = x.iter().map(|v| worse_sign * v - allowed).collect();
    let y: Vec<f64> = y.iter().map(|v| worse_sign * v).collect();
    let test = mann_whitney_greater(&x, &y);
    j.u = test.u;
    j.p_value = test.p_value;
    j.exact = test.exact;
    j.verdict = if test.p_value < c.alpha {
        Verdict::Fail
    } else {
        Verdict::Pass
    };
    j
}

/// Result of [`mann_whitney_greater`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UTest {
    pub u: f64,
    pub p_value: f64,
    pub exact: bool,
}

/// One-sided Mann-Whitney U test of "x tends to be larger than y" (scipy's
/// `mannwhitneyu(x, y, alternative="greater")`). Exact when there are no ties and n·m ≤ 2500,
/// else the normal approximation with tie correction and continuity correction. Both samples
/// must be finite; an empty side gives p = 1.
pub fn mann_whitney_greater(x: &[f64], y: &[f64]) -> UTest {
    let (n, m) = (x.len(), y.len());
    if n == 0 || m == 0 {
        return UTest {
            u: 0.0,
            p_value: 1.0,
            exact: false,
        };
    }
    // Pool, sort, and give tied values their average rank.
    let mut pooled: Vec<(f64, bool)> = x
        .iter()
        .map(|v| (*v, true))
        .chain(y.iter().map(|v| (*v, false)))
        .collect();
    pooled.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = pooled.len();
    let mut rank_sum_x = 0.0;
    let mut tie_term = 0.0; // Σ (t³ − t) over tie groups
    let mut i = 0;
    while i < total {
        let mut k = i;
        while k + 1 < total && pooled[k + 1].0 == pooled[i].0 {
            k += 1;
        }
        let t = (k - i + 1) as f64;
        let rank = (i + k) as f64 / 2.0 + 1.0;
        for item in &pooled[i..=k] {
            if item.1 {
                rank_sum_x += rank;
            }
        }
        tie_term += t * t * t - t;
        i = k + 1;
    }
    let (nf, mf) = (n as f64, m as f64);
    let u = rank_sum_x - nf * (nf + 1.0) / 2.0;
    if tie_term == 0.0 && n * m <= EXACT_MAX_PAIRS {
        return UTest {
            u,
            p_value: exact_upper_tail(n, m, u.round() as usize),
            exact: true,
        };
    }
    let nn = nf + mf;
    let mu = nf * mf / 2.0;
    let var = nf * mf / 12.0 * ((nn + 1.0) - tie_term / (nn * (nn - 1.0)));
    let p_value = if var <= 0.0 {
        // Every value is the same: nothing to tell the samples apart.
        1.0
    } else {
        let z = (u - mu - 0.5) / var.sqrt();
        normal_sf(z)
    };
    UTest {
        u,
        p_value: p_value.clamp(0.0, 1.0),
        exact: false,
    }
}

/// P(Z > z) for a standard normal Z.
pub fn normal_sf(z: f64) -> f64 {
    0.5 * libm::erfc(z / std::f64::consts::SQRT_2)
}

/// P(U ≥ u) under the null hypothesis without ties: the share of the C(n+m, n) orderings whose U
/// is at least `u`. Counts come from the recurrence c(i, j, k) = c(i−1, j, k−j) + c(i, j−1, k)
/// (the largest value belongs to x and beats all j values of y, or it belongs to y).
fn exact_upper_tail(n: usize, m: usize, u: usize) -> f64 {
    // row[i] holds the counts c(i, j, ·) for the current j.
    let mut row: Vec<Vec<f64>> = (0..=n).map(|_| vec![1.0]).collect();
    for j in 1..=m {
        let mut next: Vec<Vec<f64>> = Vec::with_capacity(n + 1);
        next.push(vec![1.0]);
        for i in 1..=n {
            let mut counts = vec![0.0; i * j + 1];
            // Largest is y: c(i, j−1, k).
            for (k, c) in row[i].iter().enumerate() {
                counts[k] += c;
            }
            // Largest is x: c(i−1, j, k−j).
            for (k, c) in next[i - 1].iter().enumerate() {
                counts[k + j] += c;
            }
            next.push(counts);
        }
        row = next;
    }
    let counts = &row[n];
    let all: f64 = counts.iter().sum();
    let upper: f64 = counts.iter().skip(u).sum();
    if all > 0.0 { upper / all } else { 1.0 }
}

/// Median of all pairwise differences x − y: the shift estimate that goes with the rank test.
pub fn hodges_lehmann(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.is_empty() || y.is_empty() {
        return None;
    }
    let mut d: Vec<f64> = Vec::with_capacity(x.len() * y.len());
    for a in x {
        for b in y {
            d.push(a - b);
        }
    }
    let n = d.len();
    let cmp = |a: &f64, b: &f64| a.partial_cmp(b).unwrap_or(Ordering::Equal);
    let (_, hi, _) = d.select_nth_unstable_by(n / 2, cmp);
    let hi = *hi;
    if n % 2 == 1 {
        return Some(hi);
    }
    // The lower middle is the largest of the lower half.
    let lo = d[..n / 2].iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((lo + hi) / 2.0)
}

#[cfg(test)]
mod tests;
