//! An in-process site and target for the engine's tests, like Jepsen's no-op database: a
//! store of `seq → digest` that writes land in while the target is up, backups that copy the
//! store to a file, and faults that take the target down and can lose its newest writes. What
//! it did is kept in its own [`Record`], independent of the report the engine writes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::backup::{Backup, Contents, DatasetDigest, FreshBackup, HeldSnapshot, sha256_file};
use crate::checks::{CheckResult, Evidence};
use crate::clock::Clock;
use crate::docker::EnvironmentError;
use crate::docker::image::ImageChoice;
use crate::measure::{Phase, Prober, RecoveryPhases};
use crate::spec::{BackupMethod, CheckKind, FaultKind, FaultSpec, TargetSpec};
use crate::targets::{Outages, RestoreRequest, Restored, RunContext, Site, Target};
use crate::workload::{ReadBack, WriteOutcome, Writer, mix};

/// How the fake behaves.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// On `kill`, this many of the newest writes are lost (an unsynced tail).
    pub lose_on_kill: usize,
    /// A step that never finishes: `open`, `provision`, `seed`, `backup`, `describe` (a
    /// backup's contents read), `fault`, `restore`, `read-back`, `round-trip`.
    pub hang: Option<&'static str>,
    /// A step that fails at once (same names).
    pub fail: Option<&'static str>,
    /// How long provision, seed, a backup and a restore take.
    pub step_time: Duration,
    /// How long a fault's injection takes after it took the service down (a kill's wait for
    /// the container to die).
    pub fault_time: Duration,
    /// Cancelled when the fake enters the named step (an interrupt at that phase).
    pub interrupt_at: Option<(&'static str, CancellationToken)>,
    /// The fake's "log" shows a restart no fault caused.
    pub unasked_outage: bool,
    /// On `kill`, every row goes, the seed's too (a restart then finds nothing).
    pub wipe_on_kill: bool,
}

/// What the fake did, as it saw it.
#[derive(Debug, Default, Clone)]
pub struct Record {
    /// Steps in the order they began: `provision`, `seed`, `backup`, `kill`, `restore`, …,
    /// and `release` when a backup's held snapshot is let go.
    pub steps: Vec<String>,
    /// Seqs the fake dropped when killed.
    pub lost: Vec<u64>,
    pub torn_down: bool,
    pub kept: bool,
}

impl Record {
    /// The last step begun, leaving out snapshot releases (they follow whatever dropped them).
    pub fn last_step(&self) -> Option<&str> {
        self.steps
            .iter()
            .rev()
            .map(String::as_str)
            .find(|s| *s != "release")
    }
}

/// The fake site: hands out fake targets and records its teardown.
pub struct FakeSite {
    behaviour: Behaviour,
    record: Arc<Mutex<Record>>,
    /// Every target's store, for a site loss.
    stores: Mutex<Vec<Arc<Mutex<Store>>>>,
}

impl FakeSite {
    pub fn new(behaviour: Behaviour) -> (Arc<FakeSite>, Arc<Mutex<Record>>) {
        let record = Arc::new(Mutex::new(Record::default()));
        let site = Arc::new(FakeSite {
            behaviour,
            record: record.clone(),
            stores: Mutex::new(Vec::new()),
        });
        (site, record)
    }

    /// `drill::run_on`'s opener for this site (an environment error if `open` is to fail).
    pub async fn opened(self: Arc<Self>) -> Result<Arc<dyn Site>, EnvironmentError> {
        if self.behaviour.fail == Some("open") {
            return Err(EnvironmentError {
                cause: "the fake engine does not answer".into(),
                fix: "none: it is a test".into(),
            });
        }
        Ok(self)
    }
}

struct FakeState {
    behaviour: Behaviour,
    record: Arc<Mutex<Record>>,
}

impl FakeState {
    /// Enters `step`: records it, fires an interrupt aimed at it, then hangs, fails or takes
    /// the step's time as the behaviour says.
    async fn step(&self, step: &str) -> Result<()> {
        self.record
            .lock()
            .expect("not poisoned")
            .steps
            .push(step.into());
        if let Some((at, token)) = &self.behaviour.interrupt_at
            && *at == step
        {
            token.cancel();
        }
        if self.behaviour.hang == Some(step) {
            std::future::pending::<()>().await;
        }
        if self.behaviour.fail == Some(step) {
            bail!("the fake fails {step} as told");
        }
        Ok(())
    }
}

#[async_trait]
impl Site for FakeSite {
    async fn open(&self) -> Result<()> {
        Ok(())
    }

    async fn target(
        &self,
        spec: &TargetSpec,
        run: &RunContext,
    ) -> Result<(Box<dyn Target>, Option<ImageChoice>)> {
        let target = FakeTarget {
            name: spec.name.clone(),
            shared: Arc::new(FakeState {
                behaviour: self.behaviour.clone(),
                record: self.record.clone(),
            }),
            store: Arc::new(Mutex::new(Store::default())),
            seed: run.seed,
            clock: run.clock,
            replicated: spec.restore == crate::spec::RestorePoint::Failover,
        };
        self.stores
            .lock()
            .expect("not poisoned")
            .push(target.store.clone());
        Ok((Box::new(target), None))
    }

    async fn save_logs(&self) {}

    async fn lose(&self) -> Result<serde_json::Value> {
        self.record
            .lock()
            .expect("not poisoned")
            .steps
            .push("site-loss".into());
        let stores = self.stores.lock().expect("not poisoned").clone();
        for store in &stores {
            let mut store = store.lock().expect("not poisoned");
            store.rows.clear();
            store.seeded = false;
            store.up = false;
        }
        Ok(serde_json::json!({ "stores": stores.len() }))
    }

    fn keep(&self) {
        self.record.lock().expect("not poisoned").kept = true;
    }

    async fn teardown(&self) -> Result<String> {
        self.record.lock().expect("not poisoned").torn_down = true;
        Ok("the fake target".into())
    }
}

#[derive(Default)]
struct Store {
    rows: BTreeMap<u64, u64>,
    up: bool,
    /// The seed's rows are there (every backup holds them: all are taken after the seed).
    seeded: bool,
}

impl Store {
    fn contents(&self) -> Contents {
        let digest = self
            .rows
            .iter()
            .fold(0u64, |acc, (&seq, &d)| mix(acc, seq ^ d));
        Contents::from([(
            "orders".to_string(),
            DatasetDigest {
                rows: self.rows.len() as u64,
                digest: format!("{digest:016x}"),
            },
        )])
    }
}

/// A backup's contents as the store held them, read on demand like a held database snapshot;
/// `describe` when read, `release` when dropped.
struct FakeSnapshot {
    contents: Contents,
    shared: Arc<FakeState>,
}

#[async_trait]
impl HeldSnapshot for FakeSnapshot {
    async fn contents(self: Box<Self>) -> Result<Contents> {
        self.shared.step("describe").await?;
        Ok(self.contents.clone())
    }
}

impl Drop for FakeSnapshot {
    fn drop(&mut self) {
        if let Ok(mut record) = self.shared.record.lock() {
            record.steps.push("release".into());
        }
    }
}

struct FakeTarget {
    name: String,
    shared: Arc<FakeState>,
    store: Arc<Mutex<Store>>,
    seed: u64,
    clock: Clock,
    /// Has a standby to fail over to (`restore.from = "failover"`).
    replicated: bool,
}

impl FakeTarget {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().expect("not poisoned")
    }
}

struct FakeWriter {
    store: Arc<Mutex<Store>>,
    seed: u64,
}

#[async_trait]
impl Writer for FakeWriter {
    fn digest(&self, seq: u64) -> u64 {
        mix(self.seed, seq)
    }

    async fn write(&mut self, seq: u64) -> WriteOutcome {
        let mut store = self.store.lock().expect("not poisoned");
        if store.up {
            store.rows.insert(seq, mix(self.seed, seq));
            WriteOutcome::Ok
        } else {
            WriteOutcome::Fail
        }
    }
}

struct FakeProber {
    store: Arc<Mutex<Store>>,
}

#[async_trait]
impl Prober for FakeProber {
    async fn probe(&mut self) -> Result<(), String> {
        if self.store.lock().expect("not poisoned").up {
            Ok(())
        } else {
            Err("the fake target is down".into())
        }
    }
}

/// The fake's faults are all outages: a kill that drops the newest writes, a volume loss, a
/// pause.
#[async_trait]
impl Outages for FakeTarget {
    async fn inject(&mut self, fault: &FaultSpec) -> Result<serde_json::Value> {
        self.shared.step(fault.kind.as_str()).await?;
        self.shared.step("fault").await?;
        self.store().up = false;
        tokio::time::sleep(self.shared.behaviour.fault_time).await;
        let mut store = self.store();
        match fault.kind {
            FaultKind::Kill if self.shared.behaviour.wipe_on_kill => {
                store.rows.clear();
                store.seeded = false;
                Ok(serde_json::json!({ "wiped": true }))
            }
            FaultKind::Kill => {
                let lose = self.shared.behaviour.lose_on_kill;
                let newest: Vec<u64> = store.rows.keys().rev().take(lose).copied().collect();
                for seq in &newest {
                    store.rows.remove(seq);
                }
                let mut record = self.shared.record.lock().expect("not poisoned");
                record.lost.extend(newest.iter().rev());
                Ok(serde_json::json!({ "lost": newest.len() }))
            }
            FaultKind::VolumeLoss => {
                store.rows.clear();
                store.seeded = false;
                Ok(serde_json::json!({ "volume": "gone" }))
            }
            // Frozen: nothing answers, nothing is lost.
            FaultKind::Pause => Ok(serde_json::json!({ "paused": true })),
            other => bail!("the fake target has no fault {other}"),
        }
    }

    async fn heal(&mut self, fault: &FaultSpec) -> Result<serde_json::Value> {
        self.shared.step(&format!("heal {}", fault.kind)).await?;
        self.store().up = true;
        Ok(serde_json::json!({ "paused": false }))
    }
}

#[async_trait]
impl Target for FakeTarget {
    async fn provision(&mut self) -> Result<()> {
        self.shared.step("provision").await?;
        tokio::time::sleep(self.shared.behaviour.step_time).await;
        self.store().up = true;
        Ok(())
    }

    async fn seed(&mut self) -> Result<()> {
        self.shared.step("seed").await?;
        tokio::time::sleep(self.shared.behaviour.step_time).await;
        self.store().seeded = true;
        Ok(())
    }

    fn writer(&self) -> Box<dyn Writer> {
        Box::new(FakeWriter {
            store: self.store.clone(),
            seed: self.seed,
        })
    }

    fn prober(&self) -> Box<dyn Prober> {
        Box::new(FakeProber {
            store: self.store.clone(),
        })
    }

    async fn backup(&self, _method: BackupMethod, dir: &Path) -> Result<FreshBackup> {
        self.shared.step("backup").await?;
        let (rows, contents, consistent_at) = {
            let store = self.store();
            if !store.up {
                bail!("{} is down", self.name);
            }
            (store.rows.clone(), store.contents(), self.clock.micros())
        };
        tokio::time::sleep(self.shared.behaviour.step_time).await;
        let path = dir.join("rows.json");
        std::fs::write(&path, serde_json::to_vec(&rows)?)?;
        let (sha256, size) = sha256_file(&path)?;
        Ok(FreshBackup {
            consistent_at,
            artefacts: vec![crate::digest::Artefact {
                file: "rows.json".into(),
                size,
                sha256,
            }],
            contents: Contents::new(),
            held: Some(Box::new(FakeSnapshot {
                contents,
                shared: self.shared.clone(),
            })),
            max_seq: rows.keys().next_back().copied(),
            details: serde_json::Value::Null,
        })
    }

    fn outages(&mut self) -> &mut dyn Outages {
        self
    }

    async fn inject(
        &mut self,
        fault: &FaultSpec,
        _backups: &[Backup],
    ) -> Result<serde_json::Value> {
        bail!("the fake target has no fault {} of its own", fault.kind)
    }

    async fn restart(&mut self, _timeout: Duration) -> Result<()> {
        self.shared.step("restart").await?;
        self.store().up = true;
        Ok(())
    }

    /// A replicated fake: its standby is `lose_on_kill` writes behind the primary, so a kill
    /// loses those writes (as the kill itself does) and the failover promotes what is left.
    async fn replication(&self) -> Option<serde_json::Value> {
        self.replicated.then(|| {
            serde_json::json!({
                "standbys": [{ "node": "standby-1", "behind_writes": self.shared.behaviour.lose_on_kill }]
            })
        })
    }

    async fn fail_over(
        &mut self,
        phases: &mut RecoveryPhases,
        _limit: Duration,
    ) -> Result<Restored> {
        phases.enter(Phase::Promote);
        self.shared.step("fail-over").await?;
        tokio::time::sleep(self.shared.behaviour.step_time).await;
        phases.enter(Phase::Reconnect);
        tokio::time::sleep(self.shared.behaviour.step_time).await;
        self.store().up = true;
        Ok(Restored {
            recovery_target: Some("failover: promote standby-1".into()),
            failover: Some(serde_json::json!({ "promoted": "standby-1" })),
            ..Restored::default()
        })
    }

    async fn serve_again(&mut self, _timeout: Duration) -> Result<()> {
        self.shared.step("serve-again").await?;
        if !self.store().up {
            bail!("the fake does not answer");
        }
        Ok(())
    }

    async fn restore(
        &mut self,
        request: &RestoreRequest<'_>,
        phases: &mut RecoveryPhases,
    ) -> Result<Restored> {
        self.shared.step("restore").await?;
        phases.enter(Phase::Provision);
        tokio::time::sleep(self.shared.behaviour.step_time).await;
        phases.enter(Phase::Fetch);
        let bytes = std::fs::read(request.backup.dir.join("rows.json"))?;
        phases.enter(Phase::Restore);
        let rows: BTreeMap<u64, u64> = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow!("backup {} does not load: {e}", request.backup.id))?;
        let mut store = self.store();
        store.rows = rows;
        store.up = true;
        store.seeded = true;
        Ok(Restored {
            recovery_target: Some(format!("backup {}", request.backup.id)),
            ..Restored::default()
        })
    }

    async fn read_back(&self) -> Result<ReadBack> {
        self.shared.step("read-back").await?;
        Ok(self.store().rows.iter().map(|(&s, &d)| (s, d)).collect())
    }

    async fn contents(&self) -> Result<Contents> {
        Ok(self.store().contents())
    }

    async fn seed_facts(&self) -> Result<Contents> {
        let rows = if self.store().seeded { 10 } else { 0 };
        Ok(Contents::from([(
            "customers".to_string(),
            DatasetDigest {
                rows,
                digest: format!("{rows} customers"),
            },
        )]))
    }

    async fn check(&self, check: CheckKind, _evidence: &Evidence<'_>) -> CheckResult {
        CheckResult::unknown(check, "the fake target cannot run this check")
    }

    async fn unasked_outages(&self, _injected: &[FaultKind]) -> Vec<String> {
        if self.shared.behaviour.unasked_outage {
            vec![format!("{}: restarted on its own", self.name)]
        } else {
            Vec::new()
        }
    }

    async fn round_trip(&self) -> Result<()> {
        self.shared.step("round-trip").await?;
        if self.store().up {
            Ok(())
        } else {
            bail!("{} is down", self.name)
        }
    }
}
