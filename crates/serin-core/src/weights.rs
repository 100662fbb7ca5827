//! Weight stepping, as Flagger's `maxWeight()` and `nextStepWeight()`
//! (docs/flagger-contract.md §3.4).

/// The weight at which the canary strategy stops stepping: with `stepWeights` the last step
/// (at most 100), otherwise `maxWeight`, where 0 means unset (100).
pub fn max_weight(max_weight: u32, step_weights: &[u32]) -> u32 {
    match step_weights.last() {
        Some(&last) => last.min(100),
        None if max_weight == 0 => 100,
        None => max_weight.min(100),
    }
}

/// How much the canary weight grows from `weight` on the next step.
pub fn next_step_weight(weight: u32, step_weight: u32, step_weights: &[u32]) -> u32 {
    if step_weight > 0 || step_weights.is_empty() {
        return step_weight;
    }
    let room = 100u32.saturating_sub(weight);
    if weight == 0 {
        return room.min(step_weights[0]);
    }
    for pair in step_weights.windows(2) {
        if pair[0] == weight {
            return pair[1].saturating_sub(weight).min(room);
        }
    }
    if room == 0 { 1 } else { room }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_weight_table() {
        let cases: &[(u32, &[u32], u32)] = &[
            (0, &[], 100),
            (50, &[], 50),
            (150, &[], 100),
            (50, &[1, 5, 20], 20),
            (0, &[10, 200], 100),
        ];
        for (max, steps, want) in cases {
            assert_eq!(max_weight(*max, steps), *want, "max={max} steps={steps:?}");
        }
    }

    #[test]
    fn next_step_table() {
        let cases: &[(u32, u32, &[u32], u32)] = &[
            (0, 10, &[], 10),
            (30, 10, &[], 10),
            (0, 0, &[1, 5, 20, 50], 1),
            (1, 0, &[1, 5, 20, 50], 4),
            (5, 0, &[1, 5, 20, 50], 15),
            (20, 0, &[1, 5, 20, 50], 30),
            // A weight that is not one of the steps jumps to full traffic, as in Flagger.
            (7, 0, &[1, 5, 20, 50], 93),
            (0, 0, &[], 0),
        ];
        for (w, step, steps, want) in cases {
            assert_eq!(
                next_step_weight(*w, *step, steps),
                *want,
                "w={w} step={step} steps={steps:?}"
            );
        }
    }
}
