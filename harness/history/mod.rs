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

use crate::report::{CheckOutcome, Report, TargetOutcome};
use backend::{Backend, Kind};

/// A schema step: the same SQL for both stores, or each store's own where their dialects part.
enum Step {
    Both(&'static str),
    Each {
        sqlite: &'static str,
        postgres: &'static str,
    },
}

/// Schema steps, oldest first; the schema's version is the number of steps applied. Never edit a
/// step that has shipped: add one.
const MIGRATIONS: &[Step] = &[
    // 1: runs, their targets, and phase durations.
    Step::Both(
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
    ),
    // 2: checks, and the dataset size RTO projections need.
    Step::Both(
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
    ),
    // 3: what a check measured (a restore test's query value, a backup's size), which the next
    // run's `drift` and `backup-size` compare with.
    Step::Both("ALTER TABLE checks ADD COLUMN value TEXT;"),
    // 4: a restore test's fetched backup size, which its restore time is fitted against.
    Step::Both("ALTER TABLE targets ADD COLUMN backup_bytes BIGINT;"),
    // 5: a loss that could not be counted is NULL, not 0, with why. SQLite cannot drop a NOT
    // NULL: its targets table is built again, and with it the two tables that refer to it
    // (dropping a parent first would cascade to their rows); the new tables keep every row.
    Step::Each {
        sqlite: "CREATE TABLE targets_v5 (
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
            lost_writes BIGINT,
            dataset_rows BIGINT,
            backup_bytes BIGINT,
            lost_writes_unknown TEXT,
            PRIMARY KEY (run_id, target)
        );
        INSERT INTO targets_v5 (run_id, target, kind, image, rto_achieved_ms, rto_target_ms,
            rto_met, rpo_achieved_ms, rpo_target_ms, rpo_met, acked_writes, lost_writes,
            dataset_rows, backup_bytes)
            SELECT run_id, target, kind, image, rto_achieved_ms, rto_target_ms, rto_met,
            rpo_achieved_ms, rpo_target_ms, rpo_met, acked_writes, lost_writes, dataset_rows,
            backup_bytes FROM targets;
        CREATE TABLE phases_v5 (
            run_id TEXT NOT NULL,
            target TEXT NOT NULL,
            position BIGINT NOT NULL,
            phase TEXT NOT NULL,
            duration_ms BIGINT NOT NULL,
            PRIMARY KEY (run_id, target, phase),
            FOREIGN KEY (run_id, target) REFERENCES targets_v5 (run_id, target) ON DELETE CASCADE
        );
        INSERT INTO phases_v5 SELECT run_id, target, position, phase, duration_ms FROM phases;
        CREATE TABLE checks_v5 (
            run_id TEXT NOT NULL,
            target TEXT NOT NULL,
            position BIGINT NOT NULL,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            detail TEXT NOT NULL,
            value TEXT,
            PRIMARY KEY (run_id, target, name),
            FOREIGN KEY (run_id, target) REFERENCES targets_v5 (run_id, target) ON DELETE CASCADE
        );
        INSERT INTO checks_v5 SELECT run_id, target, position, name, status, detail, value
            FROM checks;
        DROP TABLE checks;
        DROP TABLE phases;
        DROP TABLE targets;
        ALTER TABLE targets_v5 RENAME TO targets;
        ALTER TABLE phases_v5 RENAME TO phases;
        ALTER TABLE checks_v5 RENAME TO checks;",
        postgres: "ALTER TABLE targets ALTER COLUMN lost_writes DROP NOT NULL;
        ALTER TABLE targets ADD COLUMN lost_writes_unknown TEXT;",
    },
    // 6: a failover in short lines (the lag at the fault, who was judged down and who serves
    // now, what became of the old nodes, what a deposed primary acknowledged alone).
    Step::Both("ALTER TABLE targets ADD COLUMN failover TEXT;"),
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
    pub targets: Vec<TargetOutcome>,
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
        RunRecord {
            run_id: report.run_id.clone(),
            scenario: report.scenario.clone(),
            scenario_file: report.scenario_file.clone(),
            started_at: report.started_at.clone(),
            duration_ms: report.duration_ms as i64,
            outcome: report.outcome.as_str().into(),
            error: report.error.clone(),
            drillrig_version: report.drillrig_version.clone(),
            git_revision,
            report_dir: report_dir.map(|d| d.display().to_string()),
            targets: report.outcomes(),
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
                let sql = match (&MIGRATIONS[version as usize], self.postgres) {
                    (Step::Both(sql), _) => sql,
                    (Step::Each { postgres, .. }, true) => postgres,
                    (Step::Each { sqlite, .. }, false) => sqlite,
                };
                self.backend.batch(sql).await?;
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
                     rpo_met, acked_writes, lost_writes, backup_bytes, lost_writes_unknown, \
                     failover) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                     $16)",
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
                        t.lost_writes_unknown.clone().into(),
                        t.failover.clone().into(),
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
        let mut targets: HashMap<(String, String), TargetOutcome> = HashMap::new();
        let mut order: HashMap<String, Vec<String>> = HashMap::new();
        for r in self
            .backend
            .query(
                "SELECT run_id, target, kind, image, dataset_rows, rto_achieved_ms, \
                 rto_target_ms, rto_met, rpo_achieved_ms, rpo_target_ms, rpo_met, acked_writes, \
                 lost_writes, backup_bytes, lost_writes_unknown, failover FROM targets \
                 ORDER BY run_id, target",
                &[],
                &[
                    Text, Text, Text, Text, Int, Int, Int, Bool, Int, Int, Bool, Int, Int, Int,
                    Text, Text,
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
                TargetOutcome {
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
                    lost_writes: r[12].int(),
                    lost_writes_unknown: r[14].text(),
                    failover: r[15].text(),
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
                t.checks.push(CheckOutcome {
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
