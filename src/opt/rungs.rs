//! How the models learn from trials told below the full budget (a multi-fidelity study's
//! rungs): with the budget as one more input, or from one point per configuration, its score at
//! the highest budget it reached moved onto the full budget's scale.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How the cost and constraint models learn from trials told below the full budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RungModel {
    /// Every told trial is one observation with its budget as one more input of the model; the
    /// acquisition sees the model at the full budget.
    BudgetInput,
    /// One observation per configuration, without a budget input: its score at the highest
    /// budget it was told at, plus the mean change the configurations told at both budgets
    /// showed from that budget to the next one up, summed up to the highest budget told; EI's
    /// incumbent is the best corrected score. The change is measured on the same
    /// configurations, so it is what the budget does, not the selection of promoted ones.
    Corrected,
}

/// The told trials a model learns from (indices into the history): every one, or under
/// [`RungModel::Corrected`] the one at the highest budget of each configuration (the latest
/// told of those), in the order told.
pub(super) fn highest_rungs(keys: &[u64], budgets: &[f64]) -> Vec<usize> {
    let mut highest: BTreeMap<u64, usize> = BTreeMap::new();
    for (i, (&key, &budget)) in keys.iter().zip(budgets).enumerate() {
        let slot = highest.entry(key).or_insert(i);
        if budget >= budgets[*slot] {
            *slot = i;
        }
    }
    let mut rows: Vec<usize> = highest.into_values().collect();
    rows.sort_unstable();
    rows
}

/// What to add to each told trial's value to move it onto the scale of the highest budget
/// told, from `values[i]` (of told trial `i`, configuration `keys[i]`, budget `budgets[i]`;
/// `None` where missing or not to be trusted, such as a failure's stand-in): for consecutive
/// budgets `b < b'`, `d(b)` is the mean of `v(b') − v(b)` over the configurations told at both
/// (a promotion), and a value at `b` is raised by the sum of `d` from `b` up (no pairs: no
/// change). The change is measured on the same configurations, so it is what the extra budget
/// does, not the selection of the promoted ones (which a model with the budget as an input may
/// take for it). Trials at a budget with no usable value get 0.
pub(super) fn offsets(keys: &[u64], budgets: &[f64], values: &[Option<f64>]) -> Vec<f64> {
    let usable = |v: &Option<f64>| v.filter(|v| v.is_finite());
    let mut levels: Vec<f64> = budgets
        .iter()
        .zip(values)
        .filter(|(_, v)| usable(v).is_some())
        .map(|(&b, _)| b)
        .collect();
    levels.sort_by(f64::total_cmp);
    levels.dedup();
    let level = |budget: f64| levels.iter().position(|&l| l == budget);
    // The latest usable value of each configuration at each level, in a fixed order, so the
    // sums below (and the asks after them) are the same in every process.
    let mut at: BTreeMap<(u64, usize), f64> = BTreeMap::new();
    for ((&key, &budget), value) in keys.iter().zip(budgets).zip(values) {
        if let (Some(k), Some(v)) = (level(budget), usable(value)) {
            at.insert((key, k), v);
        }
    }
    let mut changes = vec![(0.0, 0usize); levels.len()];
    for (&(key, k), &low) in &at {
        if let Some(&high) = at.get(&(key, k + 1)) {
            changes[k].0 += high - low;
            changes[k].1 += 1;
        }
    }
    let mut raise = vec![0.0; levels.len()];
    for k in (0..levels.len().saturating_sub(1)).rev() {
        let (sum, count) = changes[k];
        let mean = if count > 0 { sum / count as f64 } else { 0.0 };
        raise[k] = raise[k + 1] + mean;
    }
    budgets
        .iter()
        .map(|&budget| level(budget).map_or(0.0, |k| raise[k]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_rungs_keep_each_configurations_top_budget() {
        // Configuration 7 told at 0, ½ and 1; 8 at 0 twice (the later counts); 9 at ½.
        let keys = [7, 8, 7, 9, 8, 7];
        let budgets = [0.0, 0.0, 0.5, 0.5, 0.0, 1.0];
        assert_eq!(highest_rungs(&keys, &budgets), vec![3, 4, 5]);
    }

    #[test]
    fn offsets_add_the_paired_change_up_to_the_top_budget() {
        // Budgets 0, ½, 1. Pairs 0 → ½: configuration 1 (+2) and 2 (+4), mean +3; ½ → 1:
        // configuration 1 (−1). Every value at 0 is raised by 3 − 1 = 2, at ½ by −1, at 1 by
        // nothing; configuration 5 is not paired (its value at ½ is missing) but is raised by
        // its budget's offset, and a trial at a budget with no usable value (0.25) by nothing.
        let keys = [1, 2, 3, 1, 2, 4, 1, 5, 5, 6];
        let budgets = [0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 1.0, 0.0, 0.5, 0.25];
        let values = [
            Some(10.0),
            Some(20.0),
            Some(30.0),
            Some(12.0),
            Some(24.0),
            Some(40.0),
            Some(11.0),
            Some(0.0),
            None,
            None,
        ];
        let got = offsets(&keys, &budgets, &values);
        assert_eq!(got, [2.0, 2.0, 2.0, -1.0, -1.0, -1.0, 0.0, 2.0, -1.0, 0.0]);
    }

    #[test]
    fn offsets_leave_a_single_budget_alone() {
        let values = [Some(1.0), Some(-2.0), Some(5.0)];
        assert_eq!(offsets(&[1, 2, 3], &[1.0; 3], &values), [0.0; 3]);
    }
}
