//! Targets: one module per service kind, each implementing [`Target`]. A kind declares what it
//! supports in its [`Capabilities`], which `validate` reads without starting anything.

pub mod postgres;
pub mod rabbitmq;
pub mod redis;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;

use crate::backup::{Backup, Contents, Taken};
use crate::checks::{CheckResult, Evidence};
use crate::docker::{Container, Docker};
use crate::measure::{Clock, Phases, Prober};
use crate::scenario::{
    BackupMethod, CheckKind, FaultKind, FaultSpec, RestorePoint, TargetKind, TargetSpec, Timeouts,
};
use crate::workload::{Micros, ReadBack, Writer};

/// What a target kind supports.
#[derive(Debug)]
pub struct Capabilities {
    /// Fixture names; the first is the default.
    pub fixtures: &'static [&'static str],
    pub default_rows: u64,
    pub default_rate: u32,
    /// What `relation` (a table) or `queue` may name in a fault; the first is the default.
    pub relations: &'static [&'static str],
    pub backups: &'static [BackupMethod],
    pub faults: &'static [FaultKind],
    pub checks: &'static [CheckKind],
}

/// What a target of `kind` offers.
pub fn capabilities(kind: TargetKind) -> &'static Capabilities {
    match kind {
        TargetKind::Postgres => &postgres::CAPABILITIES,
        TargetKind::Redis => &redis::CAPABILITIES,
        TargetKind::Rabbitmq => &rabbitmq::CAPABILITIES,
    }
}

/// Everything a target needs from the run.
#[derive(Clone)]
pub struct TargetEnv {
    pub spec: TargetSpec,
    pub image: String,
    pub docker: Arc<Docker>,
    /// Generated per run; never written to any output.
    pub password: String,
    pub seed: u64,
    pub clock: Clock,
    pub timeouts: Timeouts,
    /// This target's folder in the run's backup repository (absolute: containers mount it).
    pub repository: std::path::PathBuf,
}

/// A point the service can be recovered to, captured just before the first fault hit it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecoveryPoint {
    /// The service's own name for it (PostgreSQL: a WAL location such as `0/3000148`).
    pub label: String,
    /// When the capture was asked for (run µs): every write acknowledged before is before it.
    pub asked_at_us: Micros,
    /// When the answer came (run µs): every write invoked after is after it.
    pub answered_at_us: Micros,
}

/// What the drill asks a restore for.
pub struct RestoreRequest<'a> {
    pub backup: &'a Backup,
    pub point: RestorePoint,
    /// The point captured at the first fault, for `before-fault`.
    pub recovery_point: Option<&'a RecoveryPoint>,
    /// Every completed backup, oldest first.
    pub catalog: &'a [Backup],
}

/// What a restore reached, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Restored {
    /// The recovery target given to the service (`lsn 0/3000148`, `end of archive`…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_target: Option<String>,
    /// Where recovery stopped, as the service reported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reached: Option<String>,
    /// Damage found on the way and what it cost (a WAL gap, a target beyond reach…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Builds the target for `env.spec.kind`.
pub fn build(env: TargetEnv) -> Box<dyn Target> {
    match env.spec.kind {
        TargetKind::Postgres => Box::new(postgres::Postgres::new(env)),
        TargetKind::Redis => Box::new(redis::Redis::new(env)),
        TargetKind::Rabbitmq => Box::new(rabbitmq::RabbitMq::new(env)),
    }
}

/// One service under drill. Methods that take `&mut self` change which container is current;
/// writers and probers follow the change on their own.
#[async_trait]
pub trait Target: Send + Sync {
    /// The container currently serving the target.
    fn container(&self) -> Option<&Container>;

    /// Starts the service in a fresh container and waits until a real query answers.
    async fn provision(&mut self) -> Result<()>;

    /// Loads the scenario's dataset.
    async fn seed(&mut self) -> Result<()>;

    /// A writer for the workload; it follows the target across restarts and restores.
    fn writer(&self) -> Box<dyn Writer>;

    /// A health probe reading the workload's newest data.
    fn prober(&self) -> Box<dyn Prober>;

    /// Takes one backup into `dir` with the service's own tools.
    async fn backup(&self, method: BackupMethod, dir: &Path) -> Result<Taken>;

    /// Injects a fault that is specific to this kind; returns what was done, for the report.
    /// `backups` are the completed backups, oldest first.
    async fn inject(&mut self, fault: &FaultSpec, backups: &[Backup]) -> Result<serde_json::Value>;

    /// Captures the point `before-fault` restores to; `None` where the kind has none.
    async fn recovery_point(&self) -> Result<Option<RecoveryPoint>> {
        Ok(None)
    }

    /// Crash recovery in place: starts the same container on its own data, waits until ready.
    async fn restart(&mut self, timeout: Duration) -> Result<()>;

    /// Repairs the stopped service's own files before a `restart` (`restore.repair`); returns
    /// what the repair tool says it did.
    async fn repair(&mut self) -> Result<Option<String>> {
        Ok(None)
    }

    /// Restores into a fresh container, entering the restore phases as it goes.
    async fn restore(
        &mut self,
        request: &RestoreRequest<'_>,
        phases: &mut Phases,
    ) -> Result<Restored>;

    /// The workload's writes as the target holds them now.
    async fn read_back(&self) -> Result<ReadBack>;

    /// Per-dataset row counts and digests as the target holds them now.
    async fn contents(&self) -> Result<Contents>;

    /// Runs a check only this kind knows how to run.
    async fn check(&self, check: CheckKind, evidence: &Evidence<'_>) -> CheckResult;

    /// A fresh write and its read-back: the last condition of recovery.
    async fn round_trip(&self) -> Result<()>;
}

/// The containers a target has had: the one serving now, its data volume, and how many were
/// started (which names the next: `pg-1`, `pg-2`, …).
pub struct Containers {
    target: String,
    current: Option<Container>,
    volume: Option<String>,
    generation: u32,
}

impl Containers {
    pub fn new(target: &str) -> Self {
        Containers {
            target: target.into(),
            current: None,
            volume: None,
            generation: 0,
        }
    }

    /// The container serving the target now, if any.
    pub fn current(&self) -> Option<&Container> {
        self.current.as_ref()
    }

    /// The container serving the target now, or an error naming the target.
    pub fn serving(&self) -> Result<&Container> {
        self.current
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("target {} has no container", self.target))
    }

    /// The serving container's data volume.
    pub fn volume(&self) -> Result<String> {
        let c = self.serving()?;
        self.volume
            .clone()
            .ok_or_else(|| anyhow::anyhow!("container {} has no data volume", c.name))
    }

    /// How many containers were started so far.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Names the next container and creates its data volume: `(name, volume)`.
    pub async fn next(&mut self, docker: &Docker) -> Result<(String, String)> {
        self.generation += 1;
        let name = format!("{}-{}", self.target, self.generation);
        let volume = docker.create_volume(&format!("{name}-data")).await?;
        Ok((name, volume))
    }

    /// Starts `spec`, which then serves the target with the volume it mounts.
    pub async fn start(
        &mut self,
        docker: &Docker,
        spec: &crate::docker::ContainerSpec,
    ) -> Result<()> {
        let container = docker.start(spec).await?;
        self.volume = spec.volume.as_ref().map(|(v, _)| v.clone());
        self.current = Some(container);
        Ok(())
    }

    /// The `volume-loss` fault: removes the serving container and its data volume. Returns what
    /// was removed, for the fault's record.
    pub async fn remove_with_volume(&mut self, docker: &Docker) -> Result<serde_json::Value> {
        let c = self.serving()?.clone();
        let volume = self.volume()?;
        docker.remove(&c).await?;
        docker.remove_volume(&volume).await?;
        self.current = None;
        self.volume = None;
        Ok(serde_json::json!({ "container": c.name, "volume": volume }))
    }
}
