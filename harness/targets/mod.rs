//! Targets: one module per service kind, each implementing [`Target`]. A kind declares what it
//! supports in its [`Capabilities`], which `validate` reads without starting anything.

pub mod postgres;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;

use crate::backup::{Backup, Contents, Taken};
use crate::checks::CheckResult;
use crate::docker::{Container, Docker};
use crate::measure::{Clock, Phases, Prober};
use crate::scenario::{
    BackupMethod, CheckKind, FaultKind, FaultSpec, TargetKind, TargetSpec, Timeouts,
};
use crate::workload::{ReadBack, Writer};

/// What a target kind supports.
#[derive(Debug)]
pub struct Capabilities {
    /// Fixture names; the first is the default.
    pub fixtures: &'static [&'static str],
    pub default_rows: u64,
    pub default_rate: u32,
    /// The relation a fault aims at when the scenario names none.
    pub default_relation: &'static str,
    pub backups: &'static [BackupMethod],
    pub faults: &'static [FaultKind],
    pub checks: &'static [CheckKind],
}

/// The capabilities of `kind`, or `None` while the kind is not implemented.
pub fn capabilities(kind: TargetKind) -> Option<&'static Capabilities> {
    match kind {
        TargetKind::Postgres => Some(&postgres::CAPABILITIES),
        TargetKind::Redis | TargetKind::Rabbitmq => None,
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
}

/// Builds the target for `env.spec.kind`.
pub fn build(env: TargetEnv) -> Box<dyn Target> {
    match env.spec.kind {
        TargetKind::Postgres => Box::new(postgres::Postgres::new(env)),
        kind @ (TargetKind::Redis | TargetKind::Rabbitmq) => {
            unreachable!("validation rejects unimplemented target kind {kind}")
        }
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
    async fn inject(&mut self, fault: &FaultSpec) -> Result<serde_json::Value>;

    /// Crash recovery in place: starts the same container on its own data, waits until ready.
    async fn restart(&mut self, timeout: Duration) -> Result<()>;

    /// Restores `backup` into a fresh container, entering the restore phases as it goes.
    async fn restore(&mut self, backup: &Backup, phases: &mut Phases) -> Result<()>;

    /// The workload's writes as the target holds them now.
    async fn read_back(&self) -> Result<ReadBack>;

    /// Per-dataset row counts and digests as the target holds them now.
    async fn contents(&self) -> Result<Contents>;

    /// Runs a check only this kind knows how to run.
    async fn check(&self, check: CheckKind) -> CheckResult;

    /// A fresh write and its read-back: the last condition of recovery.
    async fn round_trip(&self) -> Result<()>;
}
