use super::*;

pub(crate) fn sample_run(run_id: &str, scenario: &str, started_at: &str, rto_ms: i64) -> RunRecord {
    RunRecord {
        run_id: run_id.into(),
        scenario: scenario.into(),
        scenario_file: format!("scenarios/{scenario}.toml"),
        started_at: started_at.into(),
        duration_ms: 31_000,
        outcome: "met".into(),
        error: None,
        drillrig_version: "0.1.0".into(),
        git_revision: Some("0123abcd".into()),
        report_dir: Some(format!("reports/{scenario}/{run_id}")),
        targets: vec![TargetOutcome {
            target: "db".into(),
            kind: "postgres".into(),
            image: Some("drillrig/postgres:15-bookworm".into()),
            dataset_rows: Some(10_000),
            backup_bytes: None,
            rto_achieved_ms: Some(rto_ms),
            rto_target_ms: 60_000,
            rto_met: rto_ms <= 60_000,
            rpo_achieved_ms: Some(2_000),
            rpo_target_ms: 10_000,
            rpo_met: true,
            acked_writes: 1_500,
            lost_writes: Some(12),
            lost_writes_unknown: None,
            failover: Some(
                "failover: db-primary judged down (its container stopped); db-standby-1 serves now"
                    .into(),
            ),
            phases: vec![
                ("detect".into(), 100),
                ("provision".into(), 800),
                ("restore".into(), rto_ms - 1_400),
                ("verify".into(), 500),
            ],
            checks: vec![
                CheckOutcome {
                    name: "ledger".into(),
                    status: "passed".into(),
                    detail: "all there".into(),
                    value: Some("7".into()),
                },
                CheckOutcome {
                    name: "fk-integrity".into(),
                    status: "failed".into(),
                    detail: "3 orphans".into(),
                    value: Some("7".into()),
                },
            ],
        }],
    }
}

fn location(dir: &tempfile::TempDir) -> String {
    dir.path()
        .join("reports/history.sqlite")
        .display()
        .to_string()
}

#[tokio::test]
async fn runs_come_back_as_recorded_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut history = History::open(&location(&dir)).await.unwrap();
    assert_eq!(history.schema_version().await.unwrap(), SCHEMA_VERSION);
    let newer = sample_run("r2", "pg-kill", "2026-11-22T10:00:00Z", 4_000);
    let older = sample_run("r1", "pg-kill", "2026-11-21T10:00:00Z", 3_000);
    history.record(&newer).await.unwrap();
    history.record(&older).await.unwrap();
    assert_eq!(history.runs().await.unwrap(), vec![older, newer.clone()]);
    // A run recorded twice is refused whole: nothing half-written.
    assert!(history.record(&newer).await.is_err());
    assert_eq!(history.runs().await.unwrap().len(), 2);
}

#[tokio::test]
async fn an_old_history_is_migrated_and_keeps_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let old = History::open_at(&location(&dir), 1).await.unwrap();
    assert_eq!(old.schema_version().await.unwrap(), 1);
    // A run as version 1 stored it: no dataset size, no checks.
    old.backend
        .batch(
            "INSERT INTO runs VALUES ('r1', 'pg-kill', 'pg-kill.toml', '2026-01-01T00:00:00Z', \
             9000, 'met', NULL, '0.0.1', NULL, NULL);
             INSERT INTO targets VALUES ('r1', 'db', 'postgres', NULL, 1200, 60000, TRUE, 0, \
             10000, TRUE, 100, 0);
             INSERT INTO phases VALUES ('r1', 'db', 0, 'detect', 200);",
        )
        .await
        .unwrap();
    drop(old);

    let mut history = History::open(&location(&dir)).await.unwrap();
    assert_eq!(history.schema_version().await.unwrap(), SCHEMA_VERSION);
    let runs = history.runs().await.unwrap();
    assert_eq!(runs.len(), 1);
    let t = &runs[0].targets[0];
    assert_eq!(
        (t.rto_achieved_ms, t.dataset_rows, t.checks.len()),
        (Some(1200), None, 0)
    );
    assert_eq!(t.phases, vec![("detect".to_string(), 200)]);
    history
        .record(&sample_run("r2", "pg-kill", "2026-11-22T10:00:00Z", 4_000))
        .await
        .unwrap();
    assert_eq!(history.runs().await.unwrap().len(), 2);
    // Opening again changes nothing.
    drop(history);
    let again = History::open(&location(&dir)).await.unwrap();
    assert_eq!(again.schema_version().await.unwrap(), SCHEMA_VERSION);
}

#[tokio::test]
async fn a_history_from_a_newer_drillrig_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let history = History::open(&location(&dir)).await.unwrap();
    history
        .backend
        .batch("UPDATE schema_version SET version = 99")
        .await
        .unwrap();
    drop(history);
    let err = History::open(&location(&dir)).await.err().unwrap();
    assert!(
        format!("{err:#}").contains("newer than this drillrig"),
        "{err:#}"
    );
}

#[tokio::test]
async fn schema_5_rebuilds_the_targets_table_keeping_every_row_and_cascade() {
    let dir = tempfile::tempdir().unwrap();
    let old = History::open_at(&location(&dir), 4).await.unwrap();
    // Version 4 wrote every run with a count of lost writes, and knew no failover.
    let mut run = sample_run("r1", "pg-kill", "2026-11-21T10:00:00Z", 3_000);
    run.targets[0].failover = None;
    old.backend
        .batch(
            "INSERT INTO runs VALUES ('r1', 'pg-kill', 'scenarios/pg-kill.toml', \
             '2026-11-21T10:00:00Z', 31000, 'met', NULL, '0.1.0', '0123abcd', \
             'reports/pg-kill/r1');
             INSERT INTO targets (run_id, target, kind, image, rto_achieved_ms, rto_target_ms, \
             rto_met, rpo_achieved_ms, rpo_target_ms, rpo_met, acked_writes, lost_writes, \
             dataset_rows, backup_bytes) VALUES ('r1', 'db', 'postgres', \
             'drillrig/postgres:15-bookworm', 3000, 60000, TRUE, 2000, 10000, TRUE, 1500, 12, \
             10000, NULL);
             INSERT INTO phases VALUES ('r1', 'db', 0, 'detect', 100), ('r1', 'db', 1, \
             'provision', 800), ('r1', 'db', 2, 'restore', 1600), ('r1', 'db', 3, 'verify', 500);
             INSERT INTO checks VALUES ('r1', 'db', 0, 'ledger', 'passed', 'all there', '7'), \
             ('r1', 'db', 1, 'fk-integrity', 'failed', '3 orphans', '7');",
        )
        .await
        .unwrap();
    drop(old);

    let history = History::open(&location(&dir)).await.unwrap();
    assert_eq!(history.schema_version().await.unwrap(), SCHEMA_VERSION);
    let runs = history.runs().await.unwrap();
    assert_eq!(
        runs,
        vec![run],
        "version 4's run reads back as it was written"
    );
    // The rebuilt tables still cascade from their run.
    history
        .backend
        .batch("DELETE FROM runs WHERE run_id = 'r1'")
        .await
        .unwrap();
    let left = history
        .backend
        .query(
            "SELECT count(*) FROM checks WHERE run_id = 'r1'",
            &[],
            &[backend::Kind::Int],
        )
        .await
        .unwrap();
    assert_eq!(left[0][0].int(), Some(0));
}
