//! The engine on the fake target, in paused tokio time: scheduling, restore selection, RPO
//! arithmetic, every step's timeout and an interrupt at every phase, in milliseconds of real
//! time. What the fake did ([`Record`]) is the independent fact each test checks against.

use std::path::Path;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::fake::{Behaviour, FakeSite, Record};
use super::*;
use crate::backup::Backup;
use crate::spec::{BackupMethod, RestorePoint};

/// A scenario with one target `db`: `target` adds keys to it, `rest` adds tables after it.
fn scenario(target: &str, rest: &str) -> Scenario {
    let text = format!(
        r#"schema = 1
name = "fake"

[timeouts]
provision = "5s"
seed = "5s"
backup = "5s"
fault = "5s"
detect = "5s"
restore = "5s"
check = "5s"

[targets.db]
kind = "postgres"
dataset = {{ fixture = "orders", rows = 10 }}
workload = {{ rate = 100 }}
objectives = {{ rto = "60s", rpo = "10s" }}
{target}
{rest}"#
    );
    crate::scenario::parse(Path::new("fake.toml"), &text).expect("a valid scenario")
}

/// Kill at 2 s, crash recovery in place, the ledger checked.
fn kill_and_restart() -> Scenario {
    scenario(
        r#"restore = { from = "restart" }
checks = ["ledger"]"#,
        r#"[[faults]]
target = "db"
kind = "kill"
at = "2s""#,
    )
}

/// Backups every second, a volume loss at 3.5 s, the latest backup restored.
fn volume_loss_and_restore() -> Scenario {
    scenario(
        r#"backup = { method = "pg-dump", every = "1s" }
restore = { from = "latest" }
checks = ["ledger", "row-counts", "backup-integrity"]"#,
        r#"[[faults]]
target = "db"
kind = "volume-loss"
at = "3500ms""#,
    )
}

struct Ran {
    result: RunResult,
    record: Record,
    report: Value,
    _dir: tempfile::TempDir,
}

impl Ran {
    fn target(&self) -> &Value {
        &self.report["targets"][0]
    }

    /// The target called `name`.
    fn target_named(&self, name: &str) -> &Value {
        self.report["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no target {name}"))
    }

    /// The first target's check `name`.
    fn check(&self, name: &str) -> &Value {
        self.target()["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {:#}", self.target()["checks"]))
    }

    /// The phases of the timeline, in order.
    fn phases(&self) -> Vec<String> {
        self.report["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["phase"].as_str().unwrap().to_string())
            .collect()
    }

    /// The last phase begun before teardown that never ended: where the run was stopped.
    fn open_phase(&self) -> Option<String> {
        self.report["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["phase"] != "teardown" && p["ended_ms"].is_null())
            .map(|p| p["phase"].as_str().unwrap().to_string())
            .next_back()
    }
}

async fn drill(s: &Scenario, behaviour: Behaviour, cancel: CancellationToken) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        out_dir: Some(dir.path().join("run")),
        reports_root: dir.path().into(),
        ..RunOptions::default()
    };
    let (site, record) = FakeSite::new(behaviour);
    let result = run_on(s, &opts, cancel, move |_| site.opened())
        .await
        .expect("the run folder can be written");
    let report: Value =
        serde_json::from_slice(&std::fs::read(result.dir.join("report.json")).unwrap()).unwrap();
    let record = record.lock().unwrap().clone();
    Ran {
        result,
        record,
        report,
        _dir: dir,
    }
}

async fn drill_plain(s: &Scenario, behaviour: Behaviour) -> Ran {
    drill(s, behaviour, CancellationToken::new()).await
}

#[tokio::test(start_paused = true)]
async fn a_clean_kill_and_restart_is_met_and_every_phase_is_on_the_timeline() {
    let ran = drill_plain(&kill_and_restart(), Behaviour::default()).await;
    assert_eq!(ran.result.exit, Exit::Met, "{:#}", ran.report);
    assert_eq!(ran.report["outcome"], "met");
    assert_eq!(
        ran.phases(),
        [
            "provision",
            "seed",
            "workload",
            "fault kill",
            "detect",
            "restore",
            "verify",
            "teardown"
        ]
    );
    assert_eq!(
        ran.record.steps,
        [
            "provision",
            "seed",
            "kill",
            "fault",
            "restart",
            "read-back",
            "round-trip"
        ]
    );
    assert!(ran.record.torn_down);
    assert_eq!(ran.target()["rpo"]["lost_writes"], 0);
    // The fault is at 2 s of the workload: 200 writes at 100/s were acknowledged before it.
    let fault_at = ran.target()["rto"]["fault_at_ms"].as_u64().unwrap();
    let started = ran.target()["workload"]["started_ms"].as_u64().unwrap();
    assert_eq!(fault_at - started, 2000);
}

#[tokio::test(start_paused = true)]
async fn a_pause_heals_after_its_span_and_the_rto_covers_the_freeze() {
    let s = scenario(
        r#"restore = { from = "in-place" }
checks = ["ledger"]"#,
        r#"[[faults]]
target = "db"
kind = "pause"
at = "2s"
for = "3s""#,
    );
    let ran = drill_plain(&s, Behaviour::default()).await;
    assert_eq!(ran.result.exit, Exit::Met, "{:#}", ran.report);
    let steps = &ran.record.steps;
    let at = |step: &str| steps.iter().position(|s| s == step).unwrap();
    assert!(at("pause") < at("heal pause") && at("heal pause") < at("serve-again"));
    assert!(!steps.iter().any(|s| s == "restart" || s == "restore"));
    let fault = &ran.report["faults"][0];
    let injected = fault["injected_at_ms"].as_u64().unwrap();
    assert_eq!(fault["heal_started_ms"].as_u64().unwrap() - injected, 3000);
    assert_eq!(fault["details"]["heal"]["paused"], false);
    let t = ran.target();
    // Writes during the freeze failed; none was lost; the RTO spans the freeze.
    assert!(t["workload"]["fail"].as_u64().unwrap() > 0);
    assert_eq!(t["rpo"]["lost_writes"], 0);
    assert!(t["rto"]["achieved_ms"].as_u64().unwrap() >= 3000);
    assert_eq!(
        t["restore"]["recovery_target"],
        "none: the fault healed and the service serves again by itself"
    );
    assert!(ran.phases().contains(&"heal pause".to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_total_loss_reaches_back_to_the_seed_and_misses_any_rpo() {
    // A generous objective: a drill of a few seconds can never span it by time alone.
    let s = scenario(
        r#"restore = { from = "restart" }
checks = ["ledger"]"#,
        r#"[[faults]]
target = "db"
kind = "kill"
at = "2s""#,
    );
    let mut s = s;
    s.targets[0].objectives.rpo = Duration::from_secs(3600);
    let behaviour = Behaviour {
        wipe_on_kill: true,
        step_time: Duration::from_millis(500),
        ..Behaviour::default()
    };
    let ran = drill_plain(&s, behaviour).await;
    assert_eq!(ran.result.exit, Exit::Missed, "{:#}", ran.report);
    let t = ran.target();
    let rpo = &t["rpo"];
    assert_eq!(rpo["total_loss"], true, "{rpo:#}");
    assert_eq!(rpo["met"], false);
    // From the seed's start to the last write acknowledged before the kill: past the workload.
    let seeded = t["seed"]["started_ms"].as_u64().unwrap();
    let workload = t["workload"]["started_ms"].as_u64().unwrap();
    assert!(seeded < workload);
    // Writes every 10 ms from the workload's start, the kill 2 s in.
    assert!(rpo["achieved_ms"].as_u64().unwrap() >= workload - seeded + 1980);
    assert!(rpo["note"].as_str().unwrap().starts_with("total loss"));
    assert_eq!(ran.check("seed")["status"], "failed");
    assert_eq!(t["seed"]["datasets"]["customers"]["rows"], 10);
}

#[tokio::test(start_paused = true)]
async fn the_rto_runs_from_the_start_of_a_slow_injection() {
    let behaviour = Behaviour {
        fault_time: Duration::from_millis(300),
        ..Behaviour::default()
    };
    let ran = drill_plain(&kill_and_restart(), behaviour).await;
    let fault = &ran.report["faults"][0];
    let (started, returned) = (
        fault["started_ms"].as_u64().unwrap(),
        fault["injected_at_ms"].as_u64().unwrap(),
    );
    assert_eq!(returned - started, 300);
    let rto = &ran.target()["rto"];
    assert_eq!(rto["fault_at_ms"].as_u64().unwrap(), started);
    assert_eq!(
        rto["achieved_ms"].as_u64().unwrap(),
        rto["recovered_at_ms"].as_u64().unwrap() - started
    );
    // The service was down from the start: the 300 ms of injection are in the detect phase.
    assert!(rto["phases"]["detect"].as_u64().unwrap() >= 300);
}

#[tokio::test(start_paused = true)]
async fn writes_the_fake_dropped_are_the_lost_ones_and_the_rpo_spans_them() {
    let behaviour = Behaviour {
        lose_on_kill: 3,
        ..Behaviour::default()
    };
    let ran = drill_plain(&kill_and_restart(), behaviour).await;
    assert_eq!(ran.record.lost.len(), 3);
    let rpo = &ran.target()["rpo"];
    assert_eq!(rpo["lost_writes"], 3);
    assert_eq!(rpo["first_lost_seq"], ran.record.lost[0]);
    // Writes are 10 ms apart at 100/s: three lost writes span 30 ms back to the last survivor.
    assert_eq!(rpo["achieved_ms"], 30);
    // A consistent prefix lost within the 10 s objective: the ledger check passes, the RPO is
    // met.
    assert_eq!(ran.target()["rpo"]["met"], true);
    assert_eq!(ran.result.exit, Exit::Met);
}

#[tokio::test(start_paused = true)]
async fn a_failover_promotes_and_reconnects_in_phases_and_counts_what_the_standby_lacked() {
    let s = scenario(
        r#"replication = { standbys = 1 }
restore = { from = "failover" }
checks = ["ledger"]"#,
        r#"[[faults]]
target = "db"
kind = "kill"
at = "2s""#,
    );
    let behaviour = Behaviour {
        lose_on_kill: 4,
        step_time: Duration::from_millis(500),
        fault_time: Duration::from_millis(100),
        ..Behaviour::default()
    };
    let ran = drill_plain(&s, behaviour).await;
    assert_eq!(ran.result.exit, Exit::Met, "{:#}", ran.report);
    let t = ran.target();
    // The standby's lag, read before the kill, is in the report.
    assert_eq!(t["replication"]["standbys"][0]["behind_writes"], 4);
    assert_eq!(t["restore"]["from"], "failover");
    assert_eq!(t["restore"]["failover"]["promoted"], "standby-1");
    // Detect (the 100 ms kill), promote and reconnect (500 ms each), verify: they add up to
    // the RTO.
    let phases = &t["rto"]["phases"];
    assert_eq!(phases["detect"], 100);
    assert_eq!(phases["promote"], 500);
    assert_eq!(phases["reconnect"], 500);
    let sum: u64 = ["detect", "promote", "reconnect", "verify"]
        .iter()
        .map(|p| phases[p].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(t["rto"]["achieved_ms"], sum);
    // What the standby lacked is lost, counted from the ledger.
    assert_eq!(t["rpo"]["lost_writes"], 4);
    assert_eq!(t["rpo"]["first_lost_seq"], ran.record.lost[0]);
    let steps: Vec<&str> = ran.record.steps.iter().map(String::as_str).collect();
    assert_eq!(
        steps,
        [
            "provision",
            "seed",
            "kill",
            "fault",
            "fail-over",
            "read-back",
            "round-trip"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn backups_run_on_schedule_until_the_fault_and_the_latest_is_restored() {
    let ran = drill_plain(&volume_loss_and_restore(), Behaviour::default()).await;
    assert_eq!(ran.result.exit, Exit::Met, "{:#}", ran.report);
    let started = ran.target()["workload"]["started_ms"].as_u64().unwrap();
    let began: Vec<u64> = ran.target()["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["began_ms"].as_u64().unwrap() - started)
        .collect();
    // Every second from the workload's start, none at or after the fault at 3.5 s.
    assert_eq!(began, [0, 1000, 2000, 3000]);
    assert_eq!(
        ran.record.steps.iter().filter(|s| *s == "backup").count(),
        4
    );
    assert_eq!(ran.target()["restore"]["backup_id"], 4);
    // Backup 4 was taken at 3 s: the writes of the last 0.5 s before the volume loss are lost.
    let lost = ran.target()["rpo"]["lost_writes"].as_u64().unwrap();
    assert!((49..=51).contains(&lost), "{lost}");
}

#[tokio::test(start_paused = true)]
async fn only_the_restored_backup_has_its_contents_read_and_every_snapshot_is_let_go_first() {
    let ran = drill_plain(&volume_loss_and_restore(), Behaviour::default()).await;
    assert_eq!(ran.result.exit, Exit::Met, "{:#}", ran.report);
    let steps = &ran.record.steps;
    let count = |step: &str| steps.iter().filter(|s| *s == step).count();
    // Four backups, one read (the one restored), and each snapshot released before the fault.
    assert_eq!(
        (count("backup"), count("describe"), count("release")),
        (4, 1, 4)
    );
    let fault = steps.iter().position(|s| s == "volume-loss").unwrap();
    assert!(steps[fault..].iter().all(|s| s != "release"), "{steps:?}");
    let described = steps.iter().position(|s| s == "describe").unwrap();
    assert_eq!(
        steps[..described].iter().filter(|s| *s == "backup").count(),
        4,
        "read after the last backup: {steps:?}"
    );
    assert_eq!(ran.check("row-counts")["status"], "passed");
    assert!(ran.phases().contains(&"describe-backup".to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_restore_to_a_time_keeps_the_snapshot_of_the_backup_it_will_use_not_the_newest() {
    // Backups at 0, 1, 2 and 3 s; the restore point lies between the third and the fourth.
    let when = std::time::SystemTime::now() + Duration::from_millis(2500);
    let s = scenario(
        &format!(
            r#"backup = {{ method = "pg-dump", every = "1s" }}
restore = {{ from = "{}" }}
checks = ["ledger", "row-counts"]"#,
            humantime::format_rfc3339_millis(when)
        ),
        r#"[[faults]]
target = "db"
kind = "volume-loss"
at = "3500ms""#,
    );
    let ran = drill_plain(&s, Behaviour::default()).await;
    assert_eq!(ran.target()["restore"]["backup_id"], 3, "{:#}", ran.report);
    let row_counts = ran.check("row-counts");
    assert_eq!(row_counts["status"], "passed", "{row_counts}");
    let steps = &ran.record.steps;
    assert_eq!(
        steps.iter().filter(|s| *s == "describe").count(),
        1,
        "{steps:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_backup_whose_contents_cannot_be_read_leaves_its_comparisons_unknown() {
    let behaviour = Behaviour {
        fail: Some("describe"),
        ..Behaviour::default()
    };
    let ran = drill_plain(&volume_loss_and_restore(), behaviour).await;
    let check = ran.check("row-counts");
    assert_eq!(check["status"], "unknown", "{check}");
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains("backup 4's contents are unknown") && detail.contains("the fake fails"),
        "{detail}"
    );
    assert_ne!(ran.result.exit, Exit::Met);
}

/// A second fake target, `cache`, restoring after `db`.
const CACHE_AFTER_DB: &str = r#"[targets.cache]
kind = "postgres"
dataset = { fixture = "orders", rows = 10 }
workload = { rate = 100 }
backup = { method = "pg-dump", every = "1s" }
restore = { from = "latest", after = ["db"] }
checks = ["ledger"]
objectives = { rto = "60s", rpo = "10s" }
"#;

/// `db` and `cache` lose their volumes at 3.5 s; `cache` restores after `db`; the platform's
/// objectives are `platform_rto` and 10 s.
fn two_targets_in_order(platform_rto: &str) -> Scenario {
    scenario(
        r#"backup = { method = "pg-dump", every = "1s" }
restore = { from = "latest" }
checks = ["ledger", "row-counts"]"#,
        &format!(
            r#"{CACHE_AFTER_DB}
[platform]
rto = "{platform_rto}"
rpo = "10s"

[[faults]]
target = "db"
kind = "volume-loss"
at = "3500ms"

[[faults]]
target = "cache"
kind = "volume-loss"
at = "3500ms""#
        ),
    )
}

fn span<'r>(report: &'r Value, phase: &str, target: &str) -> &'r Value {
    report["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == phase && p["target"] == target)
        .unwrap_or_else(|| panic!("no {phase} of {target}: {:#}", report["timeline"]))
}

#[tokio::test(start_paused = true)]
async fn a_restore_after_another_waits_for_its_recovery_and_the_platform_spans_both() {
    let behaviour = Behaviour {
        step_time: Duration::from_millis(300),
        ..Behaviour::default()
    };
    let ran = drill_plain(&two_targets_in_order("60s"), behaviour).await;
    assert_eq!(ran.result.exit, Exit::Met, "{:#}", ran.report);
    let r = &ran.report;
    let target = |name: &str| ran.target_named(name);
    // The cache's restore begins only once the database's drill has ended (its verify).
    let db_verified = span(r, "verify", "db")["ended_ms"].as_u64().unwrap();
    let waited = span(r, "wait db", "cache");
    let cache_restore = span(r, "restore", "cache")["started_ms"].as_u64().unwrap();
    assert!(cache_restore >= db_verified, "{:#}", r["timeline"]);
    assert!(waited["ended_ms"].as_u64().unwrap() >= db_verified);
    let wait_ms = target("cache")["rto"]["phases"]["wait"].as_u64().unwrap();
    assert!(
        wait_ms >= 300,
        "the wait is part of the cache's RTO: {wait_ms}"
    );
    assert!(target("db")["rto"]["phases"].get("wait").is_none());

    // The platform: from the first fault to the last recovery, and the worst RPO.
    let p = &r["platform"];
    let first = ["db", "cache"]
        .iter()
        .map(|t| target(t)["rto"]["fault_at_ms"].as_u64().unwrap())
        .min()
        .unwrap();
    let last = target("cache")["rto"]["recovered_at_ms"].as_u64().unwrap();
    assert!(last > target("db")["rto"]["recovered_at_ms"].as_u64().unwrap());
    assert_eq!(p["rto"]["achieved_ms"].as_u64().unwrap(), last - first);
    assert_eq!(p["rto"]["last_target"], "cache");
    let worst = ["db", "cache"]
        .iter()
        .map(|t| target(t)["rpo"]["achieved_ms"].as_u64().unwrap())
        .max()
        .unwrap();
    assert_eq!(p["rpo"]["achieved_ms"].as_u64().unwrap(), worst);
    assert_eq!(p["met"], true);
}

#[tokio::test(start_paused = true)]
async fn a_platform_slower_than_its_objective_misses_though_every_target_meets_its_own() {
    let behaviour = Behaviour {
        step_time: Duration::from_millis(300),
        ..Behaviour::default()
    };
    let ran = drill_plain(&two_targets_in_order("500ms"), behaviour).await;
    let r = &ran.report;
    assert!(
        r["targets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["rto"]["met"] == true),
        "{:#}",
        r["targets"]
    );
    assert_eq!(r["platform"]["rto"]["met"], false, "{:#}", r["platform"]);
    assert_eq!(r["outcome"], "missed");
    assert_eq!(ran.result.exit, Exit::Missed);
    let record = crate::history::RunRecord::from_report(&ran.result.report, None, None);
    let row = record
        .targets
        .iter()
        .find(|t| t.target == "platform")
        .expect("the history has the platform's row");
    assert_eq!(
        row.rto_achieved_ms,
        r["platform"]["rto"]["achieved_ms"].as_i64()
    );
    assert!(!row.rto_met);
}

/// `db` and `cache` ship their dumps (every second) offsite to `dir`, encrypted to a fresh age
/// key, and lose the site at 3.5 s; the DR site's identity file is written when `key` is true.
fn site_loss(dir: &Path, key: bool) -> Scenario {
    let identity = age::x25519::Identity::generate();
    let key_file = dir.join("dr-site.key");
    if key {
        use age::secrecy::ExposeSecret;
        std::fs::write(&key_file, identity.to_string().expose_secret()).unwrap();
    }
    scenario(
        r#"backup = { method = "pg-dump", every = "1s" }
restore = { from = "latest" }
checks = ["ledger", "row-counts", "backup-integrity"]"#,
        &format!(
            r#"{CACHE_AFTER_DB}
[offsite]
path = "{offsite}"
every = "700ms"
recipient = "{recipient}"
identity = "{key_file}"

[[faults]]
kind = "site-loss"
at = "3500ms""#,
            offsite = dir.join("offsite").display(),
            recipient = identity.to_public(),
            key_file = key_file.display(),
        ),
    )
}

#[tokio::test(start_paused = true)]
async fn a_site_loss_leaves_only_what_landed_offsite_and_the_dr_site_restores_from_it() {
    let keys = tempfile::tempdir().unwrap();
    let ran = drill_plain(&site_loss(keys.path(), true), Behaviour::default()).await;
    assert_eq!(ran.result.exit, Exit::Met, "{:#}", ran.report);
    let steps = &ran.record.steps;
    assert_eq!(
        steps.iter().filter(|s| *s == "site-loss").count(),
        1,
        "{steps:?}"
    );
    // The site's own repository is gone; the DR site's holds only what it fetched.
    let run = &ran.result.dir;
    assert!(
        !run.join("backups").exists(),
        "the local repository survived: {:?}",
        crate::util::tree_size(&run.join("backups"))
    );
    for t in ran.report["targets"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let fault = ran.report["faults"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["target"] == name)
            .unwrap();
        assert_eq!(fault["kind"], "site-loss");
        assert!(fault["details"]["deleted"]["files"].as_u64().unwrap() > 0);
        let stopped = fault["details"]["shipping_stopped_ms"].as_u64().unwrap();
        let shipped = t["offsite"]["shipped"].as_array().unwrap();
        assert!(!shipped.is_empty(), "{name}: nothing shipped");
        for s in shipped {
            assert_eq!(
                s["lag_ms"].as_u64().unwrap(),
                s["landed_ms"].as_u64().unwrap() - s["taken_ms"].as_u64().unwrap()
            );
            assert!(s["landed_ms"].as_u64().unwrap() <= stopped);
            assert_eq!(s["files"], 1, "the fake's backup is one file");
        }
        // The newest backup that landed before the loss is the one restored, fetched from
        // offsite into the DR site's folder; newer ones taken on the site were lost with it.
        let newest_landed = shipped
            .iter()
            .map(|s| s["backup_id"].as_u64().unwrap())
            .max();
        assert_eq!(t["restore"]["backup_id"].as_u64(), newest_landed, "{name}");
        assert_eq!(t["offsite"]["fetched"]["backup_id"].as_u64(), newest_landed);
        let taken = t["backups"].as_array().unwrap().len() as u64;
        assert!(newest_landed.unwrap() <= taken);
        let dr = run.join("dr-site/backups").join(name);
        let folders: Vec<_> = std::fs::read_dir(&dr).unwrap().collect();
        assert_eq!(
            folders.len(),
            1,
            "{name}: only the restored backup is fetched"
        );
    }
    let cache_restore = span(&ran.report, "restore", "cache")["started_ms"]
        .as_u64()
        .unwrap();
    assert!(
        cache_restore
            >= span(&ran.report, "verify", "db")["ended_ms"]
                .as_u64()
                .unwrap()
    );
}

#[tokio::test(start_paused = true)]
async fn a_dr_site_without_the_key_cannot_restore_and_the_drill_names_the_key() {
    let keys = tempfile::tempdir().unwrap();
    let s = site_loss(keys.path(), false);
    let recipient = s.offsite.as_ref().unwrap().recipient.clone();
    let ran = drill_plain(&s, Behaviour::default()).await;
    assert_eq!(ran.result.exit, Exit::Missed, "{:#}", ran.report);
    for t in ran.report["targets"].as_array().unwrap() {
        let error = t["restore"]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&recipient) && error.contains("dr-site.key"),
            "the error names the key and the missing identity: {error}"
        );
    }
}

/// The platform workload through `db` (orders), `cache` and `mq` (events), whose backups run
/// every 1.3 s, 0.7 s and 1 s; each loses its volume at 3.5 s and restores its latest backup.
fn three_stores() -> Scenario {
    let target = |name: &str, kind: &str, fixture: &str, method: &str, every: &str| {
        format!(
            r#"[targets.{name}]
kind = "{kind}"
dataset = {{ fixture = "{fixture}", rows = 10 }}
backup = {{ method = "{method}", every = "{every}" }}
restore = {{ from = "latest" }}
checks = ["ledger"]
objectives = {{ rto = "60s", rpo = "10s" }}

[[faults]]
target = "{name}"
kind = "volume-loss"
at = "3500ms"
"#
        )
    };
    let text = format!(
        r#"schema = 1
name = "chain"

[platform]
rto = "60s"
rpo = "10s"
workload = {{ rate = 100, order = "db", cache = "cache", event = "mq" }}

{}{}{}"#,
        target("db", "postgres", "orders", "pg-dump", "1300ms"),
        target("cache", "redis", "items", "redis-rdb", "700ms"),
        target("mq", "rabbitmq", "orders", "rabbitmq-export", "1s"),
    );
    crate::scenario::parse(Path::new("chain.toml"), &text).expect("a valid scenario")
}

#[tokio::test(start_paused = true)]
async fn the_platform_workload_writes_each_seq_through_every_store_and_the_stores_are_compared() {
    let ran = drill_plain(&three_stores(), Behaviour::default()).await;
    let r = &ran.report;
    let t = |name: &str| ran.target_named(name);
    // One application: every store's ledger holds the same seqs, written in order.
    let attempted = t("db")["workload"]["attempted"].as_u64().unwrap();
    assert!(attempted > 300, "{attempted}");
    for name in ["cache", "mq"] {
        assert_eq!(
            t(name)["workload"]["attempted"].as_u64().unwrap(),
            attempted
        );
    }
    // Each store came back to its own backup; what one holds and another lacks is explained by
    // the recovery points (every write was acknowledged by all three before the fault).
    let r_star = |name: &str| t(name)["rpo"]["recovered_prefix_seq"].as_u64().unwrap();
    let (db, cache, mq) = (r_star("db"), r_star("cache"), r_star("mq"));
    let c = &r["platform"]["cross_store"];
    assert_eq!(
        c["phantom_events"].as_u64().unwrap(),
        mq.saturating_sub(db),
        "{c:#}"
    );
    assert_eq!(
        c["orphan_cache_entries"].as_u64().unwrap(),
        cache.saturating_sub(db)
    );
    assert_eq!(
        c["orders_without_event"].as_u64().unwrap(),
        db.saturating_sub(mq)
    );
    assert!(
        db != cache || db != mq,
        "the backups were meant to differ: {db} {cache} {mq}"
    );
    assert_eq!(c["passed"], true, "{c:#}");
    assert!(
        c["consistent_at_seq"].is_null(),
        "no consistency point while they differ"
    );
    for e in c["explained"].as_array().unwrap() {
        assert!(
            e["cause"].as_str().unwrap().contains("recovery point"),
            "{e}"
        );
    }
    assert_eq!(r["platform"]["met"], true, "{:#}", r["platform"]);
    let record = crate::history::RunRecord::from_report(&ran.result.report, None, None);
    let platform = record
        .targets
        .iter()
        .find(|t| t.target == "platform")
        .unwrap();
    assert_eq!(platform.checks[0].name, "cross-store");
    assert_eq!(platform.checks[0].status, "passed");
}

#[tokio::test(start_paused = true)]
async fn a_restore_that_fails_to_load_is_a_finding_not_a_stop() {
    let behaviour = Behaviour {
        fail: Some("restore"),
        ..Behaviour::default()
    };
    let ran = drill_plain(&volume_loss_and_restore(), behaviour).await;
    assert_eq!(ran.report["outcome"], "missed");
    assert!(
        ran.target()["restore"]["error"]
            .as_str()
            .unwrap()
            .contains("fails restore")
    );
    assert!(ran.target()["rto"]["achieved_ms"].is_null());
}

#[tokio::test(start_paused = true)]
async fn an_outage_no_fault_caused_fails_a_drill_that_met_everything_else() {
    let behaviour = Behaviour {
        unasked_outage: true,
        ..Behaviour::default()
    };
    let ran = drill_plain(&kill_and_restart(), behaviour).await;
    assert_eq!(ran.target()["rto"]["met"], true);
    assert_eq!(ran.target()["rpo"]["met"], true);
    assert_eq!(
        ran.target()["unasked_outages"],
        serde_json::json!(["db: restarted on its own"])
    );
    assert_eq!(ran.report["outcome"], "missed");
    assert_eq!(ran.result.exit, Exit::Missed);
}

#[tokio::test(start_paused = true)]
async fn an_environment_failure_at_open_is_exit_3_with_a_report() {
    let behaviour = Behaviour {
        fail: Some("open"),
        ..Behaviour::default()
    };
    let ran = drill_plain(&kill_and_restart(), behaviour).await;
    assert_eq!(ran.result.exit, Exit::Environment);
    assert_eq!(ran.report["outcome"], "error");
    assert!(ran.result.fix.is_some());
    assert!(ran.record.steps.is_empty());
}

/// Every step that can hang, the setting that bounds it, and the words of the error.
const HANGS: &[(&str, &str, &str)] = &[
    ("provision", "timeouts.provision", "provision db"),
    ("seed", "timeouts.seed", "seed db"),
    ("backup", "timeouts.backup", "backup 1 of db"),
    (
        "describe",
        "timeouts.backup",
        "reading the contents of backup 4 of db",
    ),
    ("fault", "timeouts.fault", "inject volume-loss into db"),
    ("restore", "timeouts.restore", "restore db"),
    (
        "read-back",
        "timeouts.check",
        "reading the workload back of db",
    ),
    (
        "round-trip",
        "timeouts.check",
        "the fresh write and read-back of db",
    ),
];

#[tokio::test(start_paused = true)]
async fn every_step_that_overruns_its_timeout_ends_the_drill_as_error_naming_it() {
    for &(step, setting, words) in HANGS {
        let behaviour = Behaviour {
            hang: Some(step),
            ..Behaviour::default()
        };
        let started = tokio::time::Instant::now();
        let ran = drill_plain(&volume_loss_and_restore(), behaviour).await;
        let error = ran.report["error"].as_str().unwrap_or_default();
        assert_eq!(ran.report["outcome"], "error", "{step}: {error}");
        assert_eq!(ran.result.exit, Exit::Missed, "{step}");
        assert!(
            error.contains(words)
                && error.contains("did not finish within 5s")
                && error.contains(setting),
            "{step}: {error}"
        );
        assert!(started.elapsed() >= Duration::from_secs(5), "{step}");
        assert!(ran.record.torn_down, "{step}");
        assert_eq!(ran.record.last_step(), Some(step), "{step}");
    }
}

/// Where an interrupt lands (the fake's step) and the phase the report must show open.
const INTERRUPTS: &[(&str, &str)] = &[
    ("provision", "provision"),
    ("seed", "seed"),
    ("backup", "workload"),
    ("describe", "describe-backup"),
    ("fault", "fault volume-loss"),
    ("restore", "restore"),
    ("read-back", "verify"),
    ("round-trip", "verify"),
];

#[tokio::test(start_paused = true)]
async fn an_interrupt_at_every_phase_tears_down_and_reports_how_far_it_got() {
    for &(step, phase) in INTERRUPTS {
        let cancel = CancellationToken::new();
        let behaviour = Behaviour {
            interrupt_at: Some((step, cancel.clone())),
            hang: Some(step),
            ..Behaviour::default()
        };
        let ran = drill(&volume_loss_and_restore(), behaviour, cancel).await;
        assert_eq!(ran.report["outcome"], "interrupted", "{step}");
        assert_eq!(ran.result.exit, Exit::Interrupted, "{step}");
        assert_eq!(ran.open_phase().as_deref(), Some(phase), "{step}");
        assert!(ran.record.torn_down, "{step}");
        // The partial report keeps what happened before the interrupt, and nothing after it.
        let after_backups =
            ["describe", "fault", "restore", "read-back", "round-trip"].contains(&step);
        let backups = ran.target()["backups"].as_array().unwrap().len();
        assert_eq!(backups, if after_backups { 4 } else { 0 }, "{step}");
        let after_fault = ["restore", "read-back", "round-trip"].contains(&step);
        let faults = ran.report["faults"].as_array().unwrap();
        assert_eq!(faults.len(), usize::from(after_fault), "{step}");
        assert!(ran.target()["rto"]["achieved_ms"].is_null(), "{step}");
        assert_eq!(ran.phases().last().map(String::as_str), Some("teardown"));
        assert_eq!(ran.record.last_step(), Some(step), "{step}");
    }
}

#[tokio::test(start_paused = true)]
async fn fifty_interrupts_at_random_times_each_leave_a_whole_report_and_a_teardown() {
    let seed = std::env::var("DRILLRIG_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let behaviour = Behaviour {
        step_time: Duration::from_millis(300),
        ..Behaviour::default()
    };
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..50 {
        let cancel = CancellationToken::new();
        let at = Duration::from_millis(rng.random_range(0..7_000));
        let timer = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(at).await;
                cancel.cancel();
            })
        };
        let ran = drill(&volume_loss_and_restore(), behaviour.clone(), cancel).await;
        timer.abort();
        let outcome = ran.report["outcome"].as_str().unwrap().to_string();
        let context = format!("seed {seed}, run {i}, interrupt at {at:?}: {outcome}");
        match outcome.as_str() {
            "interrupted" => assert_eq!(ran.result.exit, Exit::Interrupted, "{context}"),
            "met" => assert_eq!(ran.result.exit, Exit::Met, "{context}"),
            other => panic!("{context}: unexpected outcome {other}"),
        }
        assert!(ran.record.torn_down, "{context}");
        assert_eq!(
            ran.phases().last().map(String::as_str),
            Some("teardown"),
            "{context}"
        );
        *outcomes
            .entry(ran.open_phase().unwrap_or("none".into()))
            .or_default() += 1;
    }
    // The interrupts spread over the drill: more than one phase was hit.
    assert!(outcomes.len() > 2, "seed {seed}: {outcomes:?}");
}

fn backup(id: u32, finished_ms: u64) -> Backup {
    Backup {
        target: "db".into(),
        id,
        method: BackupMethod::PgDump,
        dir: PathBuf::new(),
        began_ms: finished_ms - 100,
        consistent_at_us: (finished_ms - 100) * 1000,
        finished_ms,
        artefacts: Vec::new(),
        contents: Default::default(),
        contents_unread: None,
        max_seq: None,
        details: Value::Null,
    }
}

#[test]
fn restore_selection_picks_the_backup_each_point_names() {
    let clock = Clock::start();
    let catalog = [backup(1, 1_000), backup(2, 2_000), backup(3, 3_000)];
    let id = |point, t_fault_ms: u64| {
        choose_backup(&catalog, point, t_fault_ms * 1000, &clock).map(|b| b.id)
    };
    assert_eq!(id(RestorePoint::Latest, 0), Some(3));
    assert_eq!(id(RestorePoint::Restart, 5_000), None);
    assert_eq!(id(RestorePoint::BeforeFault, 2_500), Some(2));
    assert_eq!(id(RestorePoint::BeforeFault, 2_000), Some(2));
    assert_eq!(id(RestorePoint::BeforeFault, 999), None);
    let at = |ms: u64| RestorePoint::At(clock.wall_at(ms * 1000));
    assert_eq!(id(at(2_999), 0), Some(2));
    assert_eq!(id(at(3_000), 0), Some(3));
    assert_eq!(id(at(10), 0), None);
    assert_eq!(
        choose_backup(&[], RestorePoint::Latest, 0, &clock).map(|b| b.id),
        None
    );
}

/// Every output of `ran`, rendered as its readers see it: the terminal, report.md, and from
/// the outcome the history keeps, JUnit, the CI summary, OpenMetrics and the HTML report.
fn every_output(ran: &Ran) -> Vec<(&'static str, String)> {
    use crate::publish;
    let record = crate::history::RunRecord::from_report(&ran.result.report, None, None);
    let runs = std::slice::from_ref(&record);
    vec![
        ("terminal", crate::report::terminal(&ran.result.report)),
        ("report.md", crate::report::markdown(&ran.result.report)),
        ("junit", publish::ci::junit(runs, &[])),
        ("summary", publish::ci::summary(runs, &[], &[])),
        ("html", publish::html::html(runs, "now")),
        ("suite table", publish::terminal_suite(runs)),
    ]
}

#[tokio::test(start_paused = true)]
async fn a_failed_restore_reads_nothing_back_and_no_output_counts_its_loss() {
    let behaviour = Behaviour {
        fail: Some("restore"),
        ..Behaviour::default()
    };
    let ran = drill_plain(&two_targets_in_order("60s"), behaviour).await;
    assert_eq!(ran.result.exit, Exit::Missed, "{:#}", ran.report);
    // Nothing read the lost services: no read-back, no fresh write.
    assert!(
        !ran.record
            .steps
            .iter()
            .any(|s| s == "read-back" || s == "round-trip"),
        "{:?}",
        ran.record.steps
    );
    for name in ["db", "cache"] {
        let t = ran.target_named(name);
        assert!(t["restore"]["error"].is_string(), "{t:#}");
        let rpo = &t["rpo"];
        for count in [
            "lost_writes",
            "holes",
            "unacked_present",
            "unexpected",
            "mismatched",
            "failed_present",
            "duplicates",
        ] {
            assert!(rpo[count].is_null(), "{name}: {count} is {}", rpo[count]);
        }
        assert_eq!(rpo["unknown"], "the restore failed");
        assert!(rpo["achieved_ms"].is_null());
        let check = |c: &str| {
            t["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["name"] == c)
                .unwrap_or_else(|| panic!("no check {c}"))
                .clone()
        };
        let service_checks: &[&str] = if name == "db" {
            &["ledger", "row-counts", "seed"]
        } else {
            &["ledger", "seed"]
        };
        for &c in service_checks {
            assert_eq!(check(c)["status"], "unknown", "{c}");
            assert_eq!(check(c)["detail"], "not run: the restore failed", "{c}");
        }
    }
    assert!(ran.report["platform"]["rpo"]["lost_writes"].is_null());

    for (output, text) in every_output(&ran) {
        assert!(
            text.contains("unknown (the restore failed)") || output == "junit",
            "{output} does not say the loss is unknown:\n{text}"
        );
        assert!(
            !text.contains("│ 0 of ") && !text.contains("| 0 of ") && !text.contains("lost: 0"),
            "{output} counts a loss:\n{text}"
        );
    }
    let record = crate::history::RunRecord::from_report(&ran.result.report, None, None);
    let junit = crate::publish::ci::junit(std::slice::from_ref(&record), &[]);
    assert!(
        junit.contains("not run: the restore failed"),
        "JUnit's ledger case fails with the reason:\n{junit}"
    );
    let metrics = crate::publish::ci::openmetrics(std::slice::from_ref(&record));
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("drillrig_lost_writes{")),
        "no lost-writes sample for an unknown loss:\n{metrics}"
    );
    assert!(
        metrics.contains("drillrig_acknowledged_writes{"),
        "{metrics}"
    );

    // The history stores NULL and reads back unknown, with why.
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("history.sqlite").display().to_string();
    let mut history = crate::history::History::open(&location).await.unwrap();
    history.record(&record).await.unwrap();
    let back = history.runs().await.unwrap();
    for t in &back[0].targets {
        assert_eq!(t.lost_writes, None, "{}", t.target);
        assert!(t.lost_writes_unknown.is_some(), "{}", t.target);
    }
    assert_eq!(back[0], record);
}

#[tokio::test(start_paused = true)]
async fn a_read_back_that_fails_leaves_the_loss_unknown_and_says_why() {
    let behaviour = Behaviour {
        fail: Some("read-back"),
        ..Behaviour::default()
    };
    let ran = drill_plain(&volume_loss_and_restore(), behaviour).await;
    let rpo = &ran.target()["rpo"];
    assert!(rpo["lost_writes"].is_null(), "{rpo:#}");
    assert_eq!(rpo["unknown"], "the writes could not be read back");
    assert_eq!(ran.check("ledger")["status"], "unknown");
    let terminal = crate::report::terminal(&ran.result.report);
    assert!(
        terminal.contains("unknown (the writes could not be read back)"),
        "{terminal}"
    );
}
