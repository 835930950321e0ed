//! What becomes of a suite's finished runs: each recorded in the history as it ends; then, once
//! every drill has ended, judged against the earlier runs of its scenario (the regression
//! gate), the RTO projections fitted, the files asked for written (JUnit, the summary,
//! OpenMetrics, the HTML report), and the notification sent. The command prints what this
//! returns; it decides nothing itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::checks::Previous;
use crate::exit::Exit;
use crate::history::regression::{self, Gate, Verdict};
use crate::history::{self, History, RunRecord};
use crate::measure::projection::Projection;
use crate::notify;
use crate::publish;
use crate::report::Report;
use crate::spec::Scenario;
use crate::suite::{self, Projected};
use crate::util;

/// Where a suite's outputs go beyond each run's folder.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// Root of the reports folder.
    pub reports: PathBuf,
    /// The history: a SQLite file, a `postgres://` URL, or `None` to record nothing.
    pub history: Option<String>,
    pub junit: Option<PathBuf>,
    pub summary: Option<PathBuf>,
    pub metrics: Option<PathBuf>,
    pub html: Option<PathBuf>,
}

/// Something that went wrong around the drills, and the exit it costs the suite.
#[derive(Debug)]
pub struct Problem {
    pub exit: Exit,
    pub message: String,
}

impl Problem {
    fn new(exit: Exit, message: impl Into<String>) -> Problem {
        Problem {
            exit,
            message: message.into(),
        }
    }
}

impl Outputs {
    /// Opens the history, migrated to this drillrig's schema (`None` for no history).
    pub async fn open_history(&self) -> Result<Option<History>> {
        match &self.history {
            None => Ok(None),
            Some(location) => History::open(location)
                .await
                .map(Some)
                .with_context(|| format!("history {location}")),
        }
    }

    /// Writes the files asked for: JUnit, the summary and metrics about `runs`, the HTML report
    /// about `all` the runs in the history.
    pub fn write(
        &self,
        runs: &[RunRecord],
        verdicts: &[Verdict],
        projections: &[Projection],
        all: &[RunRecord],
    ) -> Result<()> {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let files: [(&Option<PathBuf>, &dyn Fn() -> String); 4] = [
            (&self.junit, &|| publish::ci::junit(runs, projections)),
            (&self.summary, &|| {
                publish::ci::summary(runs, verdicts, projections)
            }),
            (&self.metrics, &|| publish::ci::openmetrics(runs)),
            (&self.html, &|| publish::html::html(all, &now)),
        ];
        for (path, text) in files {
            if let Some(path) = path {
                util::write_atomically(path, text().as_bytes())?;
            }
        }
        Ok(())
    }
}

/// A suite's runs as they end, and what to judge them against.
pub struct SuiteEnd {
    outputs: Outputs,
    history: Option<History>,
    records: Vec<RunRecord>,
    problems: Vec<Problem>,
}

/// What the end of a suite found, for the command to print.
pub struct Ended {
    /// The suite's runs, by scenario and start.
    pub records: Vec<RunRecord>,
    /// Each run's RTO against the recent runs of its scenario.
    pub verdicts: Vec<Verdict>,
    pub projected: Vec<Projected>,
    /// What went wrong around the drills.
    pub problems: Vec<Problem>,
}

impl Ended {
    /// The suite's exit: the worst of its drills' and of everything around them.
    pub fn exit(&self, drills: impl IntoIterator<Item = Exit>) -> Exit {
        Exit::worst(
            drills
                .into_iter()
                .chain(self.problems.iter().map(|p| p.exit)),
        )
    }
}

impl SuiteEnd {
    /// Opens the history the suite records into.
    pub async fn open(outputs: Outputs) -> Result<SuiteEnd> {
        let history = outputs.open_history().await?;
        Ok(SuiteEnd {
            outputs,
            history,
            records: Vec::new(),
            problems: Vec::new(),
        })
    }

    /// What earlier runs of each scenario measured (restore tests' `drift` and `backup-size`).
    pub async fn previous(
        &self,
        scenarios: &[(PathBuf, Scenario)],
    ) -> Result<HashMap<String, Previous>> {
        let mut previous = HashMap::new();
        if let Some(h) = &self.history {
            for (_, s) in scenarios {
                let p = h.previous(&s.name).await.context("read the history")?;
                previous.insert(s.name.clone(), p);
            }
        }
        Ok(previous)
    }

    /// Records a run that ended, from `file`, with its folder `dir`.
    pub async fn record(&mut self, report: &Report, file: &Path, dir: &Path) {
        let record = RunRecord::from_report(report, history::git_revision(file), Some(dir));
        if let Some(h) = self.history.as_mut()
            && let Err(e) = h.record(&record).await
        {
            self.problems
                .push(Problem::new(Exit::Environment, format!("{e:#}")));
        }
        self.records.push(record);
    }

    /// After the last drill: judges every run against the history, fits the projections of
    /// `scenarios` and writes the outputs. A regression costs exit 1 with
    /// `fail_on_regression`, a projected miss always.
    pub async fn finish(
        mut self,
        scenarios: &[(PathBuf, Scenario)],
        gate: Gate,
        fail_on_regression: bool,
    ) -> Ended {
        self.records
            .sort_by(|a, b| (&a.scenario, &a.started_at).cmp(&(&b.scenario, &b.started_at)));
        let all = match &self.history {
            Some(h) => h.runs().await.unwrap_or_else(|e| {
                let message = format!("read the history: {e:#}");
                self.problems.push(Problem::new(Exit::Environment, message));
                Vec::new()
            }),
            None => self.records.clone(),
        };
        let verdicts: Vec<Verdict> = self
            .records
            .iter()
            .flat_map(|r| regression::judge(r, &all, gate))
            .collect();
        if fail_on_regression && verdicts.iter().any(|v| v.regressed) {
            let message = "RTO regression (--fail-on-regression)";
            self.problems.push(Problem::new(Exit::Missed, message));
        }
        let projected = suite::project(scenarios, &self.records, &self.outputs.reports)
            .unwrap_or_else(|e| {
                let message = format!("write a projection: {e:#}");
                self.problems.push(Problem::new(Exit::Environment, message));
                Vec::new()
            });
        let fitted: Vec<Projection> = projected
            .iter()
            .filter_map(|p| match p {
                Projected::Fitted(p) => Some(p.clone()),
                Projected::TooFewPoints { .. } => None,
            })
            .collect();
        if fitted.iter().any(|p| p.projected_miss) {
            self.problems.push(Problem::new(
                Exit::Missed,
                "an RTO projection misses its objective",
            ));
        }
        if let Err(e) = self.outputs.write(&self.records, &verdicts, &fitted, &all) {
            self.problems
                .push(Problem::new(Exit::Environment, format!("{e:#}")));
        }
        Ended {
            records: self.records,
            verdicts,
            projected,
            problems: self.problems,
        }
    }
}

/// `drillrig compare`: the latest run of each of `names` (every scenario when empty) judged
/// against the history, with the outputs written. `Err` names a scenario the history lacks.
pub fn compare(
    names: &[String],
    all: &[RunRecord],
    gate: Gate,
    outputs: &Outputs,
) -> Result<Vec<Verdict>, String> {
    let latest = history::latest_per_scenario(all);
    if let Some(name) = names
        .iter()
        .find(|name| !latest.iter().any(|r| &r.scenario == *name))
    {
        return Err(format!("the history has no run of scenario {name:?}"));
    }
    let judged: Vec<RunRecord> = latest
        .into_iter()
        .filter(|r| names.is_empty() || names.contains(&r.scenario))
        .collect();
    let verdicts: Vec<Verdict> = judged
        .iter()
        .flat_map(|r| regression::judge(r, all, gate))
        .collect();
    outputs
        .write(&judged, &verdicts, &[], all)
        .map_err(|e| format!("{e:#}"))?;
    Ok(verdicts)
}

/// `drillrig report`: the outputs written from the history alone, the latest run of each
/// scenario judged with the default gate. Returns how many scenarios it holds.
pub fn report(all: &[RunRecord], outputs: &Outputs) -> Result<usize> {
    let latest = history::latest_per_scenario(all);
    let verdicts: Vec<Verdict> = latest
        .iter()
        .flat_map(|r| regression::judge(r, all, Gate::default()))
        .collect();
    outputs.write(&latest, &verdicts, &[], all)?;
    Ok(latest.len())
}

/// Sends the suite's notification when `when` asks for it after `exit`, and records how it
/// went in each run's folder: the delivery (`None` when nothing was due) and what could not be
/// recorded. The suite's exit stays as it is, whatever happens.
pub async fn notify(
    webhook: &notify::Webhook,
    when: notify::When,
    records: &[RunRecord],
    exit: Exit,
) -> Option<(notify::Delivery, Vec<anyhow::Error>)> {
    let delivery = notify::notify(webhook, when, records, exit).await?;
    let unrecorded = notify::record(&delivery, records);
    Some((delivery, unrecorded))
}
