//! The regression gate: a run whose achieved RTO is more than `ratio` × the median of the same
//! scenario and target's last `window` runs at the same dataset sizes is a regression, even when it meets the objective, so
//! a creeping restore time is caught before it breaks the target. Fewer than [`Gate::MIN_RUNS`]
//! earlier measurements give no verdict, and say so.

use serde::Serialize;

use super::RunRecord;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gate {
    pub ratio: f64,
    pub window: usize,
}

impl Gate {
    /// Earlier runs a median needs before it is a baseline.
    pub const MIN_RUNS: usize = 3;
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            ratio: 1.25,
            window: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub scenario: String,
    pub target: String,
    pub run_id: String,
    pub achieved_ms: Option<i64>,
    /// Median achieved RTO of the earlier runs in the window, when there are enough.
    pub baseline_ms: Option<i64>,
    /// Earlier runs with a measured RTO that the baseline is the median of.
    pub baseline_runs: usize,
    /// `achieved / baseline`.
    pub ratio: Option<f64>,
    pub regressed: bool,
    /// Why there is no verdict, when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn median(values: &mut [i64]) -> Option<i64> {
    values.sort_unstable();
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2),
    }
}

/// One verdict per target of `run`, against the runs in `history` of the same scenario at the
/// same dataset sizes that started before it (`run` itself, if recorded, is left out).
pub fn judge(run: &RunRecord, history: &[RunRecord], gate: Gate) -> Vec<Verdict> {
    let mut earlier: Vec<&RunRecord> = history
        .iter()
        .filter(|r| {
            r.comparable_with(run) && r.run_id != run.run_id && r.started_at <= run.started_at
        })
        .collect();
    earlier.sort_by(|a, b| (&a.started_at, &a.run_id).cmp(&(&b.started_at, &b.run_id)));
    run.targets
        .iter()
        .map(|t| {
            let mut window: Vec<i64> = earlier
                .iter()
                .filter_map(|r| {
                    r.targets
                        .iter()
                        .find(|x| x.target == t.target)
                        .and_then(|x| x.rto_achieved_ms)
                })
                .collect();
            window = window.split_off(window.len().saturating_sub(gate.window));
            let baseline_runs = window.len();
            let baseline_ms = if baseline_runs >= Gate::MIN_RUNS.min(gate.window.max(1)) {
                median(&mut window)
            } else {
                None
            };
            let ratio = match (t.rto_achieved_ms, baseline_ms) {
                (Some(a), Some(b)) if b > 0 => Some(a as f64 / b as f64),
                _ => None,
            };
            let note = match (t.rto_achieved_ms, baseline_ms) {
                (None, _) => Some("no RTO achieved: nothing to compare".to_string()),
                (_, None) => Some(format!(
                    "no baseline yet: {baseline_runs} earlier run(s) with a measured RTO, {} needed",
                    Gate::MIN_RUNS.min(gate.window.max(1))
                )),
                _ => None,
            };
            Verdict {
                scenario: run.scenario.clone(),
                target: t.target.clone(),
                run_id: run.run_id.clone(),
                achieved_ms: t.rto_achieved_ms,
                baseline_ms,
                baseline_runs,
                ratio,
                regressed: ratio.is_some_and(|r| r > gate.ratio),
                note,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::tests::sample_run;

    fn runs(rtos: &[i64]) -> Vec<RunRecord> {
        rtos.iter()
            .enumerate()
            .map(|(i, &rto)| {
                sample_run(
                    &format!("r{i}"),
                    "pg-kill",
                    &format!("2026-11-{:02}T10:00:00Z", i + 1),
                    rto,
                )
            })
            .collect()
    }

    #[test]
    fn a_creeping_rto_fails_although_the_objective_is_met() {
        // Objective 60 s; earlier runs took about 10 s; this one takes 13 s.
        let history = runs(&[10_000, 9_000, 11_000, 10_000, 13_000]);
        let v = &judge(&history[4], &history, Gate::default())[0];
        assert!(history[4].targets[0].rto_met);
        assert_eq!(v.baseline_ms, Some(10_000));
        assert_eq!(v.baseline_runs, 4);
        assert!(v.regressed, "{v:?}");
    }

    #[test]
    fn noise_within_the_ratio_passes() {
        let history = runs(&[10_000, 9_000, 11_000, 10_000, 12_000]);
        let v = &judge(&history[4], &history, Gate::default())[0];
        assert_eq!(v.ratio, Some(1.2));
        assert!(!v.regressed, "{v:?}");
    }

    #[test]
    fn only_the_last_window_of_earlier_runs_counts() {
        // Old runs were slow; the last three are fast: 13 s is a regression against them.
        let history = runs(&[30_000, 30_000, 30_000, 10_000, 10_000, 10_000, 13_000]);
        let gate = Gate {
            ratio: 1.25,
            window: 3,
        };
        let v = &judge(&history[6], &history, gate)[0];
        assert_eq!((v.baseline_ms, v.baseline_runs), (Some(10_000), 3));
        assert!(v.regressed);
        // Later runs never form the baseline of an earlier one.
        let v = &judge(&history[3], &history, gate)[0];
        assert_eq!(v.baseline_ms, Some(30_000));
        assert!(!v.regressed);
    }

    #[test]
    fn too_little_history_gives_no_verdict_and_says_so() {
        let history = runs(&[10_000, 50_000]);
        let v = &judge(&history[1], &history, Gate::default())[0];
        assert!(!v.regressed);
        assert_eq!(v.baseline_ms, None);
        assert!(v.note.as_deref().unwrap().contains("no baseline yet"));
    }

    #[test]
    fn other_scenarios_are_not_a_baseline() {
        let mut history = runs(&[1_000, 1_000, 1_000]);
        let mut mine = sample_run("x", "pg-corruption", "2026-12-01T10:00:00Z", 9_000);
        mine.targets[0].rto_achieved_ms = Some(9_000);
        history.push(mine.clone());
        let v = &judge(&mine, &history, Gate::default())[0];
        assert_eq!(v.baseline_runs, 0);
        assert!(!v.regressed);
    }

    #[test]
    fn other_dataset_sizes_of_the_scenario_are_not_a_baseline() {
        // A projection's small sizes restore fast; its large size must not be judged by them.
        let mut history = runs(&[1_000, 1_000, 1_000]);
        let mut large = sample_run("big", "pg-kill", "2026-12-01T10:00:00Z", 30_000);
        large.targets[0].dataset_rows = Some(300_000);
        history.push(large.clone());
        let v = &judge(&large, &history, Gate::default())[0];
        assert_eq!(v.baseline_runs, 0, "{v:?}");
        assert!(!v.regressed);
        // The same size does make a baseline.
        let mut earlier = Vec::new();
        for i in 0..3 {
            let mut r = sample_run(
                &format!("b{i}"),
                "pg-kill",
                &format!("2026-11-2{i}T10:00:00Z"),
                10_000,
            );
            r.targets[0].dataset_rows = Some(300_000);
            earlier.push(r);
        }
        history.extend(earlier);
        let v = &judge(&large, &history, Gate::default())[0];
        assert_eq!((v.baseline_runs, v.baseline_ms), (3, Some(10_000)), "{v:?}");
        assert!(v.regressed);
        // The latest run of each size is its own row.
        let latest = crate::history::latest_per_scenario(&history);
        let sizes: Vec<_> = latest.iter().map(|r| r.targets[0].dataset_rows).collect();
        assert_eq!(sizes, [Some(10_000), Some(300_000)]);
    }
}
