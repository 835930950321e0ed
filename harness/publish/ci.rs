//! What CI reads about a set of runs: JUnit XML (a test case per drill, per target objective and
//! per check, failures saying achieved vs target), a Markdown summary for a job summary page, and
//! an OpenMetrics text file for Prometheus and Grafana.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};

use crate::history::RunRecord;
use crate::history::regression::Verdict;
use crate::measure::projection::Projection;
use crate::report::TargetOutcome;

fn secs(ms: i64) -> String {
    crate::util::seconds(ms.max(0) as u64)
}

fn achieved(ms: Option<i64>) -> String {
    ms.map_or_else(|| "none".into(), secs)
}

fn failure(message: String) -> TestCaseStatus {
    let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
    status.set_message(message);
    status
}

/// The objective test cases of one target: RTO and RPO, achieved vs target.
fn objective_cases(scenario: &str, t: &TargetOutcome) -> Vec<TestCase> {
    let case = |objective: &str, achieved_ms: Option<i64>, target_ms: i64, met: bool| {
        let status = if met {
            TestCaseStatus::success()
        } else {
            failure(missed_because(objective, achieved_ms, target_ms, t))
        };
        let mut case = TestCase::new(
            format!("{}: {objective} ≤ {}", t.target, secs(target_ms)),
            status,
        );
        case.set_classname(scenario);
        if let Some(ms) = achieved_ms {
            case.set_time(Duration::from_millis(ms.max(0) as u64));
        }
        case
    };
    vec![
        case("RTO", t.rto_achieved_ms, t.rto_target_ms, t.rto_met),
        case("RPO", t.rpo_achieved_ms, t.rpo_target_ms, t.rpo_met),
    ]
}

/// Why an objective was missed, in words that are true: an RPO within its time can still miss
/// on the acknowledged writes lost (`max_lost_writes`).
fn missed_because(
    objective: &str,
    achieved_ms: Option<i64>,
    target_ms: i64,
    t: &TargetOutcome,
) -> String {
    match achieved_ms {
        Some(a) if a <= target_ms && objective == "RPO" => format!(
            "RPO achieved {} within target {}, but {} acknowledged writes lost: more than max_lost_writes allows",
            secs(a),
            secs(target_ms),
            t.lost_writes_text()
        ),
        _ => format!(
            "{objective} achieved {} > target {}",
            achieved(achieved_ms),
            secs(target_ms)
        ),
    }
}

/// JUnit XML: one suite per run, a `drill` case that fails when the drill could not run to its
/// end, a case per target objective and one per check; unknown checks fail (they did not pass).
/// Each RTO projection adds a case that fails on a projected miss.
pub fn junit(runs: &[RunRecord], projections: &[Projection]) -> String {
    let mut report = quick_junit::Report::new("drillrig");
    for run in runs {
        let mut suite = TestSuite::new(run.scenario.as_str());
        suite.set_time(Duration::from_millis(run.duration_ms.max(0) as u64));
        let drill = match run.outcome.as_str() {
            "error" | "interrupted" => {
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
                status.set_message(format!(
                    "{}: {}",
                    run.outcome,
                    run.error.as_deref().unwrap_or("no cause recorded")
                ));
                status
            }
            _ => TestCaseStatus::success(),
        };
        let mut case = TestCase::new("drill ran to its end", drill);
        case.set_classname(run.scenario.as_str());
        suite.add_test_case(case);
        for t in &run.targets {
            suite.add_test_cases(objective_cases(&run.scenario, t));
            for c in &t.checks {
                let status = match c.status.as_str() {
                    "passed" => TestCaseStatus::success(),
                    other => failure(format!("{other}: {}", c.detail)),
                };
                let mut case = TestCase::new(format!("{}: check {}", t.target, c.name), status);
                case.set_classname(run.scenario.as_str());
                suite.add_test_case(case);
            }
        }
        report.add_test_suite(suite);
    }
    for p in projections {
        let mut suite = TestSuite::new(format!("{} (projection)", p.scenario));
        let status = if p.projected_miss {
            failure(format!(
                "RTO projected to {} at {} rows > target {} (fit error: rms {}, worst {:.0}%)",
                secs(p.projected_ms),
                p.production_rows,
                secs(p.objective_ms),
                secs(p.rms_error_ms.round() as i64),
                p.max_error_ratio * 100.0
            ))
        } else {
            TestCaseStatus::success()
        };
        let mut case = TestCase::new(
            format!(
                "{}: projected RTO at {} rows ≤ {}",
                p.target,
                p.production_rows,
                secs(p.objective_ms)
            ),
            status,
        );
        case.set_classname(p.scenario.as_str());
        suite.add_test_case(case);
        report.add_test_suite(suite);
    }
    report
        .to_string()
        .expect("serializing JUnit XML to a String cannot fail")
}

fn mark(ok: bool) -> &'static str {
    if ok { "✅" } else { "❌" }
}

/// A Markdown summary: one row per target of each run, the regression gate's verdicts, and the
/// RTO projections.
pub fn summary(runs: &[RunRecord], verdicts: &[Verdict], projections: &[Projection]) -> String {
    let mut md = String::from("## drillrig\n\n");
    let met = runs.iter().filter(|r| r.outcome == "met").count();
    md.push_str(&format!(
        "{met} of {} drill(s) met every objective.\n\n",
        runs.len()
    ));
    md.push_str(
        "| scenario | outcome | target | RTO achieved / target | RPO achieved / target | lost writes | checks failed |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for run in runs {
        if run.targets.is_empty() {
            md.push_str(&format!(
                "| {} | {} {} | — | — | — | — | — |\n",
                run.scenario,
                mark(false),
                run.outcome
            ));
        }
        for t in &run.targets {
            let failed: Vec<&str> = t
                .checks
                .iter()
                .filter(|c| c.status != "passed")
                .map(|c| c.name.as_str())
                .collect();
            md.push_str(&format!(
                "| {} | {} {} | {} | {} {} / {} | {} {} / {} | {} | {} |\n",
                run.scenario,
                mark(run.outcome == "met"),
                run.outcome,
                t.target,
                mark(t.rto_met),
                achieved(t.rto_achieved_ms),
                secs(t.rto_target_ms),
                mark(t.rpo_met),
                achieved(t.rpo_achieved_ms),
                secs(t.rpo_target_ms),
                t.lost_writes_text(),
                if failed.is_empty() {
                    "—".to_string()
                } else {
                    failed.join(", ")
                },
            ));
        }
        if let Some(e) = &run.error {
            md.push_str(&format!(
                "\n> {}: {}\n\n",
                run.scenario,
                e.replace('\n', " ")
            ));
        }
    }
    if !verdicts.is_empty() {
        md.push_str("\n### RTO against recent runs\n\n| scenario | target | RTO | median of earlier runs | ratio | verdict |\n|---|---|---|---|---|---|\n");
        for v in verdicts {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                v.scenario,
                v.target,
                achieved(v.achieved_ms),
                v.baseline_ms.map_or_else(
                    || "—".into(),
                    |b| format!("{} ({} runs)", secs(b), v.baseline_runs)
                ),
                v.ratio.map_or_else(|| "—".into(), |r| format!("{r:.2}")),
                if v.regressed {
                    "❌ regression".to_string()
                } else {
                    v.note.clone().unwrap_or_else(|| "✅ within bounds".into())
                },
            ));
        }
    }
    if !projections.is_empty() {
        md.push_str("\n### RTO projected to production size\n\n| scenario | target | measured (rows: RTO) | production rows | projected RTO / target | fit error (rms, worst) |\n|---|---|---|---|---|---|\n");
        for p in projections {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} {} / {} | {}, {:.0}% |\n",
                p.scenario,
                p.target,
                p.points
                    .iter()
                    .map(|(rows, ms)| format!("{rows}: {}", secs(*ms)))
                    .collect::<Vec<_>>()
                    .join(", "),
                p.production_rows,
                mark(!p.projected_miss),
                secs(p.projected_ms),
                secs(p.objective_ms),
                secs(p.rms_error_ms.round() as i64),
                p.max_error_ratio * 100.0
            ));
        }
    }
    md
}

type Gauges = Family<Vec<(String, String)>, Gauge<f64, AtomicU64>>;

/// OpenMetrics text: achieved and target RTO and RPO in seconds, acknowledged and lost writes per
/// target, and the outcome of each run as a 0/1 gauge per possible outcome. A value not measured
/// (no RTO achieved) has no sample rather than a made-up one.
pub fn openmetrics(runs: &[RunRecord]) -> String {
    let mut registry = Registry::default();
    let gauge = |registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>| {
        let family = Gauges::default();
        match unit {
            Some(unit) => registry.register_with_unit(name, help, unit, family.clone()),
            None => registry.register(name, help, family.clone()),
        }
        family
    };
    let rto = gauge(
        &mut registry,
        "drillrig_rto",
        "Achieved RTO",
        Some(Unit::Seconds),
    );
    let rto_target = gauge(
        &mut registry,
        "drillrig_rto_objective",
        "RTO objective",
        Some(Unit::Seconds),
    );
    let rpo = gauge(
        &mut registry,
        "drillrig_rpo",
        "Achieved RPO",
        Some(Unit::Seconds),
    );
    let rpo_target = gauge(
        &mut registry,
        "drillrig_rpo_objective",
        "RPO objective",
        Some(Unit::Seconds),
    );
    let acked = gauge(
        &mut registry,
        "drillrig_acknowledged_writes",
        "Writes the workload saw acknowledged",
        None,
    );
    let lost = gauge(
        &mut registry,
        "drillrig_lost_writes",
        "Acknowledged writes missing after the restore",
        None,
    );
    let outcome = gauge(
        &mut registry,
        "drillrig_outcome",
        "1 for the run's outcome, 0 for the others",
        None,
    );
    let started = gauge(
        &mut registry,
        "drillrig_run_started",
        "When the run started, Unix time",
        Some(Unit::Seconds),
    );
    let s = |ms: i64| ms as f64 / 1000.0;
    for run in runs {
        let labels = |target: &str| {
            vec![
                ("scenario".to_string(), run.scenario.clone()),
                ("target".to_string(), target.to_string()),
            ]
        };
        for t in &run.targets {
            let l = labels(&t.target);
            if let Some(ms) = t.rto_achieved_ms {
                rto.get_or_create(&l).set(s(ms));
            }
            rto_target.get_or_create(&l).set(s(t.rto_target_ms));
            if let Some(ms) = t.rpo_achieved_ms {
                rpo.get_or_create(&l).set(s(ms));
            }
            rpo_target.get_or_create(&l).set(s(t.rpo_target_ms));
            acked.get_or_create(&l).set(t.acked_writes as f64);
            // A loss that could not be counted has no sample: never a 0.
            if let Some(n) = t.lost_writes {
                lost.get_or_create(&l).set(n as f64);
            }
        }
        for o in ["met", "missed", "error", "interrupted"] {
            let l = vec![
                ("scenario".to_string(), run.scenario.clone()),
                ("outcome".to_string(), o.to_string()),
            ];
            outcome
                .get_or_create(&l)
                .set(if run.outcome == o { 1.0 } else { 0.0 });
        }
        if let Ok(t) = humantime::parse_rfc3339(&run.started_at)
            && let Ok(since) = t.duration_since(std::time::UNIX_EPOCH)
        {
            started
                .get_or_create(&vec![("scenario".to_string(), run.scenario.clone())])
                .set(since.as_secs() as f64);
        }
    }
    let mut encoded = String::new();
    encode(&mut encoded, &registry).expect("encoding into a String cannot fail");
    // Samples come out in hash order: sort them within each family, so the file diffs cleanly.
    let mut out = String::new();
    let mut samples: Vec<&str> = Vec::new();
    for line in encoded.lines() {
        if line.starts_with('#') {
            samples.sort_unstable();
            for s in samples.drain(..) {
                out.push_str(s);
                out.push('\n');
            }
            out.push_str(line);
            out.push('\n');
        } else {
            samples.push(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::regression::{Gate, judge};
    use crate::history::tests::sample_run;

    /// Three runs: a met one, one whose RTO and a check failed, and one that errored.
    fn runs() -> Vec<RunRecord> {
        let met = sample_run("r1", "pg-kill", "2026-11-20T10:00:00Z", 3_000);
        let mut met = met;
        met.targets[0].checks.truncate(1);
        let mut missed = sample_run("r2", "pg-corruption", "2026-11-21T10:00:00Z", 75_500);
        missed.outcome = "missed".into();
        let mut error = sample_run("r3", "redis-flushall", "2026-11-22T10:00:00Z", 1_000);
        error.outcome = "error".into();
        error.error = Some("restore of cache: did not finish within 5m".into());
        error.targets[0].rto_achieved_ms = None;
        error.targets[0].rto_met = false;
        vec![met, missed, error]
    }

    #[test]
    fn junit_has_a_case_per_objective_and_check() {
        insta::assert_snapshot!(junit(&runs(), &[]));
    }

    #[test]
    fn an_rpo_missed_on_lost_writes_says_so_and_not_that_time_exceeded_it() {
        let mut run = sample_run("r4", "redis-kill-always", "2026-11-23T10:00:00Z", 2_000);
        let t = &mut run.targets[0];
        t.rpo_achieved_ms = Some(0);
        t.rpo_target_ms = 0;
        t.rpo_met = false;
        t.lost_writes = Some(3);
        t.acked_writes = 900;
        let xml = junit(&[run], &[]);
        assert!(
            xml.contains(
                "RPO achieved 0.000s within target 0.000s, but 3 of 900 acknowledged writes lost"
            ),
            "{xml}"
        );
        assert!(!xml.contains("&gt; target 0.000s"), "{xml}");
    }

    #[test]
    fn the_summary_reads_as_a_table() {
        let runs = runs();
        let verdicts = judge(&runs[1], &runs, Gate::default());
        insta::assert_snapshot!(summary(&runs, &verdicts, &[]));
    }

    #[test]
    fn a_projected_miss_fails_its_junit_case_and_shows_in_the_summary() {
        let p = crate::measure::projection::project(
            "pg-restore-projection",
            "pg",
            &[(10_000, 3_000), (100_000, 12_000)],
            50_000_000,
            3_600_000,
        )
        .unwrap();
        assert!(p.projected_miss, "{p:?}");
        let xml = junit(&[], std::slice::from_ref(&p));
        assert!(
            xml.contains("pg: projected RTO at 50000000 rows ≤ 3600.000s"),
            "{xml}"
        );
        assert!(
            xml.contains("RTO projected to 5002.000s at 50000000 rows &gt; target 3600.000s"),
            "{xml}"
        );
        assert!(xml.contains("failures=\"1\""), "{xml}");
        let md = summary(&[], &[], &[p]);
        assert!(
            md.contains(
                "| pg-restore-projection | pg | 10000: 3.000s, 100000: 12.000s | 50000000 | ❌"
            ),
            "{md}"
        );
    }

    #[test]
    fn openmetrics_leaves_out_what_was_not_measured() {
        let text = openmetrics(&runs());
        assert!(text.ends_with("# EOF\n"));
        assert!(!text.contains("drillrig_rto_seconds{scenario=\"redis-flushall\""));
        insta::assert_snapshot!(text);
    }
}
