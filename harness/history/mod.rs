//! The run history: every run's scenario, targets, images, achieved and target RTO and RPO, phase
//! durations, checks, lost writes, outcome and git revision, in SQLite (`reports/history.sqlite`
//! by default) or a shared PostgreSQL (`--history postgres://…`). Both hold the same schema,
//! versioned in `schema_version` and migrated forward on open, one transaction per step.

mod backend;
pub mod regression;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::report::Report;
use backend::{Backend, Kind};

/// Schema steps, oldest first; the schema's version is the number of steps applied. Never edit a
/// step that has shipped: add one.
const MIGRATIONS: &[&str] = &[
    // 1: runs, their targets, and phase durations.
    "CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        scenario TEXT NOT NULL,
        scenario_file TEXT NOT NULL,
        started_at TEXT NOT NULL,
        duration_ms BIGINT NOT NULL,
        outcome TEXT NOT NULL,
        error TEXT,
        drillrig_version TEXT NOT NULL,
        git_revision TEXT,
        report_dir TEXT
    );
    CREATE INDEX runs_by_scenario ON runs (scenario, started_at);
    CREATE TABLE targets (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        target TEXT NOT NULL,
        kind TEXT NOT NULL,
        image TEXT,
        rto_achieved_ms BIGINT,
        rto_target_ms BIGINT NOT NULL,
        rto_met BOOLEAN NOT NULL,
        rpo_achieved_ms BIGINT,
        rpo_target_ms BIGINT NOT NULL,
        rpo_met BOOLEAN NOT NULL,
        acked_writes BIGINT NOT NULL,
        lost_writes BIGINT NOT NULL,
        PRIMARY KEY (run_id, target)
    );
    CREATE TABLE phases (
        run_id TEXT NOT NULL,
        target TEXT NOT NULL,
        position BIGINT NOT NULL,
        phase TEXT NOT NULL,
        duration_ms BIGINT NOT NULL,
        PRIMARY KEY (run_id, target, phase),
        FOREIGN KEY (run_id, target) REFERENCES targets (run_id, target) ON DELETE CASCADE
    );",
    // 2: checks, and the dataset size RTO projections need.
    "ALTER TABLE targets ADD COLUMN dataset_rows BIGINT;
    CREATE TABLE checks (
        run_id TEXT NOT NULL,
                target TEXT NOT NULL,
        position BIGINT NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        detail TEXT NOT NULL,
        PRIMARY KEY (run_id, target, name),
        FOREIGN KEY (run_id, target) REFERENCES targets (run_id, target) ON DELETE CASCADE
    );",
    // 3: what a check measured (a restore test's query value, a backup's size), which the next
    // run's `drift` and `backup-size` compare with.
    "ALTER TABLE checks ADD COLUMN value TEXT;",
    // 4: a restore test's fetched backup size, which its restore time is fitted against.
    "ALTER TABLE targets ADD COLUMN backup_bytes BIGINT;",
];

/// The schema version this drillrig writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// One run as the history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    pub run_id: String,
    pub scenario: String,
    pub scenario_file: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub duration_ms: i64,
    /// `met`, `missed`, `error` or `interrupted`.
    pub outcome: String,
    pub error: Option<String>,
    pub drillrig_version: String,
    pub git_revision: Option<String>,
    pub report_dir: Option<String>,
    pub targets: Vec<TargetRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetRecord {
    pub target: String,
    pub kind: String,
    pub image: Option<String>,
    pub dataset_rows: Option<i64>,
    /// A restore test's backup, bytes fetched.
    pub backup_bytes: Option<i64>,
    pub rto_achieved_ms: Option<i64>,
    pub rto_target_ms: i64,
    pub rto_met: bool,
    pub rpo_achieved_ms: Option<i64>,
    pub rpo_target_ms: i64,
    pub rpo_met: bool,
    pub acked_writes: i64,
    pub lost_writes: i64,
    /// `(phase, ms)` in recovery order; they add up to the RTO.
    pub phases: Vec<(String, i64)>,
    pub checks: Vec<CheckRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckRecord {
    /// The check's kind, or `query: NAME` for a user query.
    pub name: String,
    /// `passed`, `failed` or `unknown`.
    pub status: String,
    pub detail: String,
    /// What it measured, for the next run to compare with.
    pub value: Option<String>,
}

fn json_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

impl RunRecord {
    /// Each target's dataset size, in target order: runs compare only at the same sizes.
    pub fn dataset_sizes(&self) -> Vec<Option<i64>> {
        self.targets.iter().map(|t| t.dataset_rows).collect()
    }

    /// Whether `other` is a run of the same drill: the same scenario at the same dataset sizes
    /// (a projection runs one scenario at several sizes, whose RTOs must not be mixed).
    pub fn comparable_with(&self, other: &RunRecord) -> bool {
        self.scenario == other.scenario && self.dataset_sizes() == other.dataset_sizes()
    }

    pub fn from_report(
        report: &Report,
        git_revision: Option<String>,
        report_dir: Option<&Path>,
    ) -> RunRecord {
        let ms = |v: u64| v as i64;
        RunRecord {
            run_id: report.run_id.clone(),
            scenario: report.scenario.clone(),
            scenario_file: report.scenario_file.clone(),
            started_at: report.started_at.clone(),
            duration_ms: ms(report.duration_ms),
            outcome: report.outcome.as_str().into(),
            error: report.error.clone(),
            drillrig_version: report.drillrig_version.clone(),
            git_revision,
            report_dir: report_dir.map(|d| d.display().to_string()),
            targets: report
                .targets
                .iter()
                .map(|t| TargetRecord {
                    target: t.name.clone(),
                    kind: json_name(&t.kind),
                    image: t.image.as_ref().map(|i| i.image.clone()),
                    dataset_rows: Some(ms(t.dataset_rows)),
                    backup_bytes: t.source.as_ref().map(|s| ms(s.fetched.bytes)),
                    rto_achieved_ms: t.rto.achieved_ms.map(ms),
                    rto_target_ms: ms(t.rto.target_ms),
                    rto_met: t.rto.met,
                    rpo_achieved_ms: t.rpo.achieved_ms.map(ms),
                    rpo_target_ms: ms(t.rpo.target_ms),
                    rpo_met: t.rpo.met,
                    acked_writes: ms(t.rpo.acked_writes),
                    lost_writes: ms(t.rpo.lost_writes),
                    phases: t
                        .rto
                        .phases
                        .entries()
                        .into_iter()
                        .map(|(p, d)| (p.to_string(), ms(d)))
                        .collect(),
                    // An outage no fault caused is recorded as a failed check, so JUnit, the
                    // summary and the HTML report show it where they show failed checks.
                    checks: t
                        .checks
                        .iter()
                        .map(|c| CheckRecord {
                            name: c.title(),
                            status: json_name(&c.status),
                            detail: c.detail.clone(),
                            value: c.value.clone(),
                        })
                        .chain(t.unasked_outages.iter().map(|o| CheckRecord {
                            name: "no-unasked-outage".into(),
                            status: "failed".into(),
                            detail: o.clone(),
                            value: None,
                        }))
                        // So is the write_p99 objective, with its achieved p99 as the value.
                        .chain(
                            t.write_latency
                                .as_ref()
                                .and_then(|w| w.objective.as_ref())
                                .map(|o| CheckRecord {
                                    name: "objective write_p99".into(),
                                    status: if o.met { "passed" } else { "failed" }.into(),
                                    detail: match o.achieved_ms {
                                        Some(p) => format!(
                                            "p99 {p:.1} ms during the latency fault (objective {} ms)",
                                            o.target_ms
                                        ),
                                        None => format!(
                                            "more than 1 % of the writes during the latency fault were never acknowledged (objective {} ms)",
                                            o.target_ms
                                        ),
                                    },
                                    value: o.achieved_ms.map(|p| format!("{p:.1}")),
                                }),
                        )
                        .collect(),
                })
                .chain(report.platform.as_ref().map(|p| TargetRecord {
                    target: crate::spec::PLATFORM.into(),
                    kind: crate::spec::PLATFORM.into(),
                    image: None,
                    dataset_rows: None,
                    backup_bytes: None,
                    rto_achieved_ms: p.rto.achieved_ms.map(ms),
                    rto_target_ms: ms(p.rto.target_ms),
                    rto_met: p.rto.met,
                    rpo_achieved_ms: p.rpo.achieved_ms.map(ms),
                    rpo_target_ms: ms(p.rpo.target_ms),
                    rpo_met: p.rpo.met,
                    acked_writes: report.targets.iter().map(|t| ms(t.rpo.acked_writes)).sum(),
                    lost_writes: ms(p.rpo.lost_writes),
                    phases: Vec::new(),
                    checks: p
                        .cross_store
                        .iter()
                        .map(|c| CheckRecord {
                            name: "cross-store".into(),
                            status: if c.passed { "passed" } else { "failed" }.into(),
                            detail: c.summary(),
                            value: None,
                        })
                        .collect(),
                }))
                .collect(),
        }
    }
}

/// The revision of the git work tree holding `scenario_file`: CI's own variable when set
/// (`GITHUB_SHA`, `CI_COMMIT_SHA`), else `git rev-parse HEAD`; `None` outside a repository.
pub fn git_revision(scenario_file: &Path) -> Option<String> {
    for var in ["GITHUB_SHA", "CI_COMMIT_SHA"] {
        if let Ok(sha) = std::env::var(var).map(|s| s.trim().to_string())
            && !sha.is_empty()
        {
            return Some(sha);
        }
    }
    let dir = scenario_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let sha = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !sha.is_empty()).then_some(sha)
}

/// The newest run of each scenario and dataset size in `runs` (oldest first), ordered by
/// scenario: a projection's sizes are different drills, each with its own latest run.
pub fn latest_per_scenario(runs: &[RunRecord]) -> Vec<RunRecord> {
    let mut latest: std::collections::BTreeMap<(&str, Vec<Option<i64>>), &RunRecord> =
        Default::default();
    for r in runs {
        latest.insert((&r.scenario, r.dataset_sizes()), r);
    }
    latest.into_values().cloned().collect()
}

pub struct History {
    backend: Backend,
    postgres: bool,
}

impl History {
    /// Opens `location` (`postgres://…` / `postgresql://…`, or a SQLite file path, created with
    /// its folder when missing) and migrates it to [`SCHEMA_VERSION`].
    pub async fn open(location: &str) -> Result<History> {
        Self::open_at(location, SCHEMA_VERSION).await
    }

    /// Opens `location` migrated to `version` at most: how the tests build an old history.
    pub async fn open_at(location: &str, version: i64) -> Result<History> {
        let postgres = location.starts_with("postgres://") || location.starts_with("postgresql://");
        let backend = if postgres {
            Backend::postgres(location).await?
        } else {
            let path = Path::new(location);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("create the history folder {}", dir.display()))?;
            }
            Backend::sqlite(path)?
        };
        let history = History { backend, postgres };
        history.migrate(version).await.with_context(|| {
            format!("migrate the history {location} to schema version {version}")
        })?;
        Ok(history)
    }

    pub async fn schema_version(&self) -> Result<i64> {
        let rows = self
            .backend
            .query("SELECT version FROM schema_version", &[], &[Kind::Int])
            .await?;
        Ok(rows.first().and_then(|r| r[0].int()).unwrap_or(0))
    }

    async fn migrate(&self, to: i64) -> Result<()> {
        self.backend
            .batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            .await?;
        loop {
            // Each step re-reads the version under a write lock: shards of a suite opening one
            // history at once apply every step exactly once.
            self.begin().await?;
            let step = async {
                let version = self.schema_version().await?;
                if version > SCHEMA_VERSION {
                    bail!(
                        "the history is at schema version {version}, newer than this drillrig's \
                         {SCHEMA_VERSION}: upgrade drillrig"
                    );
                }
                if version >= to {
                    return Ok(false);
                }
                self.backend.batch(MIGRATIONS[version as usize]).await?;
                self.backend.batch("DELETE FROM schema_version").await?;
                self.backend
                    .execute(
                        "INSERT INTO schema_version (version) VALUES ($1)",
                        &[(version + 1).into()],
                    )
                    .await?;
                Ok(true)
            }
            .await;
            match step {
                Ok(applied) => {
                    self.backend.batch("COMMIT").await?;
                    if !applied {
                        return Ok(());
                    }
                }
                Err(e) => {
                    let _ = self.backend.batch("ROLLBACK").await;
                    return Err(e);
                }
            }
        }
    }

    async fn begin(&self) -> Result<()> {
        if self.postgres {
            self.backend
                .batch("BEGIN; LOCK TABLE schema_version IN EXCLUSIVE MODE")
                .await
        } else {
            self.backend.batch("BEGIN IMMEDIATE").await
        }
    }

    /// Records `run` in one transaction.
    pub async fn record(&mut self, run: &RunRecord) -> Result<()> {
        self.begin().await?;
        let inserted = self.insert(run).await;
        match inserted {
            Ok(()) => self.backend.batch("COMMIT").await,
            Err(e) => {
                let _ = self.backend.batch("ROLLBACK").await;
                Err(e).with_context(|| format!("record run {} in the history", run.run_id))
            }
        }
    }

    async fn insert(&self, run: &RunRecord) -> Result<()> {
        self.backend
            .execute(
                "INSERT INTO runs (run_id, scenario, scenario_file, started_at, duration_ms, \
                 outcome, error, drillrig_version, git_revision, report_dir) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                &[
                    run.run_id.as_str().into(),
                    run.scenario.as_str().into(),
                    run.scenario_file.as_str().into(),
                    run.started_at.as_str().into(),
                    run.duration_ms.into(),
                    run.outcome.as_str().into(),
                    run.error.clone().into(),
                    run.drillrig_version.as_str().into(),
                    run.git_revision.clone().into(),
                    run.report_dir.clone().into(),
                ],
            )
            .await?;
        for t in &run.targets {
            self.backend
                .execute(
                    "INSERT INTO targets (run_id, target, kind, image, dataset_rows, \
                     rto_achieved_ms, rto_target_ms, rto_met, rpo_achieved_ms, rpo_target_ms, \
                     rpo_met, acked_writes, lost_writes, backup_bytes) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                    &[
                        run.run_id.as_str().into(),
                        t.target.as_str().into(),
                        t.kind.as_str().into(),
                        t.image.clone().into(),
                        t.dataset_rows.into(),
                        t.rto_achieved_ms.into(),
                        t.rto_target_ms.into(),
                        t.rto_met.into(),
                        t.rpo_achieved_ms.into(),
                        t.rpo_target_ms.into(),
                        t.rpo_met.into(),
                        t.acked_writes.into(),
                        t.lost_writes.into(),
                        t.backup_bytes.into(),
                    ],
                )
                .await?;
            for (position, (phase, ms)) in t.phases.iter().enumerate() {
                self.backend
                    .execute(
                        "INSERT INTO phases (run_id, target, position, phase, duration_ms) \
                         VALUES ($1, $2, $3, $4, $5)",
                        &[
                            run.run_id.as_str().into(),
                            t.target.as_str().into(),
                            (position as i64).into(),
                            phase.as_str().into(),
                            (*ms).into(),
                        ],
                    )
                    .await?;
            }
            for (position, c) in t.checks.iter().enumerate() {
                self.backend
                    .execute(
                        "INSERT INTO checks (run_id, target, position, name, status, detail, value) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        &[
                            run.run_id.as_str().into(),
                            t.target.as_str().into(),
                            (position as i64).into(),
                            c.name.as_str().into(),
                            c.status.as_str().into(),
                            c.detail.as_str().into(),
                            c.value.clone().into(),
                        ],
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// What earlier runs of `scenario` measured: per target and check, the newest value
    /// recorded, for the next run's `drift` and `backup-size`, and each restore test's backup
    /// sizes and restore times (empty when it never ran).
    pub async fn previous(&self, scenario: &str) -> Result<crate::checks::Previous> {
        use Kind::Text;
        let rows = self
            .backend
            .query(
                "SELECT r.run_id, c.target, c.name, c.value FROM checks c \
                 JOIN runs r ON r.run_id = c.run_id \
                 WHERE r.scenario = $1 AND c.value IS NOT NULL \
                 ORDER BY r.started_at, r.run_id",
                &[scenario.into()],
                &[Text, Text, Text, Text],
            )
            .await?;
        let mut previous = crate::checks::Previous::default();
        let restores = self
            .backend
            .query(
                "SELECT t.target, t.backup_bytes, t.rto_achieved_ms FROM targets t \
                 JOIN runs r ON r.run_id = t.run_id \
                 WHERE r.scenario = $1 AND t.backup_bytes IS NOT NULL \
                 AND t.rto_achieved_ms IS NOT NULL ORDER BY r.started_at, r.run_id",
                &[scenario.into()],
                &[Text, Kind::Int, Kind::Int],
            )
            .await?;
        for r in restores {
            if let (Some(target), Some(bytes), Some(rto)) = (r[0].text(), r[1].int(), r[2].int()) {
                previous
                    .restores
                    .entry(target)
                    .or_default()
                    .push((bytes as u64, rto));
            }
        }
        for r in rows {
            previous.values.insert(
                (
                    r[1].text().unwrap_or_default(),
                    r[2].text().unwrap_or_default(),
                ),
                (
                    r[0].text().unwrap_or_default(),
                    r[3].text().unwrap_or_default(),
                ),
            );
        }
        Ok(previous)
    }

    /// Every recorded run, oldest first.
    pub async fn runs(&self) -> Result<Vec<RunRecord>> {
        use Kind::{Bool, Int, Text};
        let mut runs: Vec<RunRecord> = self
            .backend
            .query(
                "SELECT run_id, scenario, scenario_file, started_at, duration_ms, outcome, error, \
                 drillrig_version, git_revision, report_dir FROM runs ORDER BY started_at, run_id",
                &[],
                &[Text, Text, Text, Text, Int, Text, Text, Text, Text, Text],
            )
            .await?
            .into_iter()
            .map(|r| RunRecord {
                run_id: r[0].text().unwrap_or_default(),
                scenario: r[1].text().unwrap_or_default(),
                scenario_file: r[2].text().unwrap_or_default(),
                started_at: r[3].text().unwrap_or_default(),
                duration_ms: r[4].int().unwrap_or(0),
                outcome: r[5].text().unwrap_or_default(),
                error: r[6].text(),
                drillrig_version: r[7].text().unwrap_or_default(),
                git_revision: r[8].text(),
                report_dir: r[9].text(),
                targets: Vec::new(),
            })
            .collect();
        let mut targets: HashMap<(String, String), TargetRecord> = HashMap::new();
        let mut order: HashMap<String, Vec<String>> = HashMap::new();
        for r in self
            .backend
            .query(
                "SELECT run_id, target, kind, image, dataset_rows, rto_achieved_ms, \
                 rto_target_ms, rto_met, rpo_achieved_ms, rpo_target_ms, rpo_met, acked_writes, \
                 lost_writes, backup_bytes FROM targets ORDER BY run_id, target",
                &[],
                &[
                    Text, Text, Text, Text, Int, Int, Int, Bool, Int, Int, Bool, Int, Int, Int,
                ],
            )
            .await?
        {
            let (run, target) = (
                r[0].text().unwrap_or_default(),
                r[1].text().unwrap_or_default(),
            );
            order.entry(run.clone()).or_default().push(target.clone());
            targets.insert(
                (run, target.clone()),
                TargetRecord {
                    target,
                    kind: r[2].text().unwrap_or_default(),
                    image: r[3].text(),
                    dataset_rows: r[4].int(),
                    backup_bytes: r[13].int(),
                    rto_achieved_ms: r[5].int(),
                    rto_target_ms: r[6].int().unwrap_or(0),
                    rto_met: r[7].boolean(),
                    rpo_achieved_ms: r[8].int(),
                    rpo_target_ms: r[9].int().unwrap_or(0),
                    rpo_met: r[10].boolean(),
                    acked_writes: r[11].int().unwrap_or(0),
                    lost_writes: r[12].int().unwrap_or(0),
                    phases: Vec::new(),
                    checks: Vec::new(),
                },
            );
        }
        for r in self
            .backend
            .query(
                "SELECT run_id, target, phase, duration_ms FROM phases \
                 ORDER BY run_id, target, position",
                &[],
                &[Text, Text, Text, Int],
            )
            .await?
        {
            let key = (
                r[0].text().unwrap_or_default(),
                r[1].text().unwrap_or_default(),
            );
            if let Some(t) = targets.get_mut(&key) {
                t.phases
                    .push((r[2].text().unwrap_or_default(), r[3].int().unwrap_or(0)));
            }
        }
        for r in self
            .backend
            .query(
                "SELECT run_id, target, name, status, detail, value FROM checks \
                 ORDER BY run_id, target, position",
                &[],
                &[Text, Text, Text, Text, Text, Text],
            )
            .await?
        {
            let key = (
                r[0].text().unwrap_or_default(),
                r[1].text().unwrap_or_default(),
            );
            if let Some(t) = targets.get_mut(&key) {
                t.checks.push(CheckRecord {
                    name: r[2].text().unwrap_or_default(),
                    status: r[3].text().unwrap_or_default(),
                    detail: r[4].text().unwrap_or_default(),
                    value: r[5].text(),
                });
            }
        }
        for run in &mut runs {
            for target in order.remove(&run.run_id).unwrap_or_default() {
                if let Some(t) = targets.remove(&(run.run_id.clone(), target)) {
                    run.targets.push(t);
                }
            }
        }
        Ok(runs)
    }
}

#[cfg(test)]
pub(crate) mod tests;
