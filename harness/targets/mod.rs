//! Targets: one module per service kind, each implementing [`Target`]. A kind declares what it
//! supports, and the scenario keys it owns, in its [`Capabilities`], which validation reads
//! without starting anything. A [`Site`] is where a run's targets live: [`site::DockerSite`] on
//! a Docker engine.

pub mod postgres;
pub mod rabbitmq;
pub mod redis;
pub mod schema;
pub mod service;
pub mod site;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;

use crate::backup::{Backup, Contents, FreshBackup};
use crate::checks::{CheckResult, Evidence};
use crate::clock::Clock;
use crate::clock::Micros;
use crate::docker::Docker;
use crate::docker::image::{DefaultImage, ImageChoice};
use crate::measure::{Prober, RecoveryPhases};
use crate::source::Fetched;
use crate::source::format::Format;
use crate::spec::{
    Ask, BackupMethod, CheckKind, FaultKind, FaultSpec, QueryKey, RestorePoint, SourceKey,
    TargetKind, TargetSpec, Timeouts,
};
use crate::workload::{ReadBack, Writer};

/// Where a run's targets live. The drill engine asks it for targets and, at the end, to remove
/// everything; the Docker site is the real one, and the engine's tests use an in-process fake.
#[async_trait]
pub trait Site: Send + Sync {
    /// Creates what the run's targets share (the run's network).
    async fn open(&self) -> Result<()>;

    /// Builds the target `spec` describes; with the image chosen for it, for the report.
    async fn target(
        &self,
        spec: &TargetSpec,
        run: &RunContext,
    ) -> Result<(Box<dyn Target>, Option<ImageChoice>)>;

    /// Keeps what the services logged in the run folder.
    async fn save_logs(&self);

    /// `site-loss`: every container, volume and network of the run goes at once (their logs
    /// kept first), and a new network, the DR site, takes the old one's place for whatever
    /// starts next. Returns what went, for the report.
    async fn lose(&self) -> Result<serde_json::Value>;

    /// Leaves everything in place for inspection (`DRILLRIG_KEEP`).
    fn keep(&self);

    /// How to reach each target's serving container, passwords included: a kept run's
    /// `connections.json` (docs/outputs.md §1). Nothing by default.
    async fn connections(&self) -> serde_json::Value {
        serde_json::json!({ "targets": {} })
    }

    /// Removes everything the run created; says what, for the log.
    async fn teardown(&self) -> Result<String>;
}

/// What every target of a run shares.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub seed: u64,
    pub clock: Clock,
    pub timeouts: Timeouts,
    /// The run's backup repository (absolute: containers mount it); a target's folder is
    /// `<repository>/<target>`.
    pub repository: std::path::PathBuf,
}

/// What a target kind supports.
#[derive(Debug)]
pub struct Capabilities {
    /// The image a target of this kind runs unless the scenario or the command line says.
    pub image: DefaultImage,
    /// Fixture names; the first is the default.
    pub fixtures: &'static [&'static str],
    pub default_rows: u64,
    pub default_rate: u32,
    /// The fixture's datasets a fault may aim at by name (`relation`: PostgreSQL tables;
    /// `queue`: RabbitMQ queues); the first is the default.
    pub datasets: &'static [&'static str],
    pub backups: &'static [BackupMethod],
    pub faults: &'static [FaultKind],
    pub checks: &'static [CheckKind],
    /// The keys a target of this kind takes beyond the common ones, dotted from the target's
    /// table (Redis: `persistence`, `restore.repair`).
    pub target_keys: &'static [&'static str],
    /// Those keys' JSON Schema, shaped as in the target's table (`drillrig schema`).
    pub target_keys_schema: schema::TargetKeysSchemaFn,
    /// Checks those keys and returns the kind's options ([`TargetSpec::options`]).
    pub options: schema::TargetOptionsFn,
    /// The key a fault takes on this kind beyond the common ones (`relation`, `file`,
    /// `queue`), by fault.
    pub fault_keys: &'static [(FaultKind, &'static str)],
    /// Checks a fault against a target of this kind; returns what it aims at.
    pub aim: schema::FaultAimFn,
    /// Whether a target runs more than one node (its options say): a `network-partition` may
    /// then cut a node off from its peers only.
    pub replicated: fn(&TargetSpec) -> bool,
    /// The checks a restore test of the user's own backup (`source`) may run.
    pub source_checks: &'static [CheckKind],
    /// The backup formats a restore test of this kind restores; every format is one kind's.
    pub source_formats: &'static [Format],
    /// The restore-test keys this kind takes beyond the common ones (`database`, `stanza`).
    pub source_keys: &'static [SourceKey],
    /// What a user query of this kind asks with.
    pub query_key: QueryKey,
}

impl Capabilities {
    /// The kind's key `fault` takes on this kind, if any.
    pub fn fault_key(&self, fault: FaultKind) -> Option<&'static str> {
        self.fault_keys
            .iter()
            .find(|(f, _)| *f == fault)
            .map(|(_, k)| *k)
    }
}

/// What a target of `kind` offers.
pub fn capabilities(kind: TargetKind) -> &'static Capabilities {
    match kind {
        TargetKind::Postgres => &postgres::CAPABILITIES,
        TargetKind::Redis => &redis::CAPABILITIES,
        TargetKind::Rabbitmq => &rabbitmq::CAPABILITIES,
    }
}

/// The kind whose restore tests restore `format`.
pub fn kind_of(format: Format) -> TargetKind {
    TargetKind::ALL
        .iter()
        .copied()
        .find(|&k| capabilities(k).source_formats.contains(&format))
        .expect("every format is one kind's (tested)")
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
    /// What the recovery made durable before restoring (a forced WAL segment switch and its
    /// archive), and what it cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepared: Option<String>,
    /// Damage found on the way and what it cost (a WAL gap, a target beyond reach…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// A failover: how the primary was judged down, the standbys and their WAL positions, the
    /// one promoted, and what became of the old primary and the other standbys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover: Option<serde_json::Value>,
    /// What drillrig replaced of the backup's own configuration so that the restored service
    /// does not act as the one it came from (`setting: backup's value -> drillrig's`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
    /// A restore test's point in time: the newest transaction the service replayed, which the
    /// RPO counts from instead of the backup's own start.
    #[serde(skip)]
    pub consistent_at: Option<std::time::SystemTime>,
    /// Checks a restore test's restore ran on the backup itself, on the way (`pgbackrest
    /// verify` for `backup-integrity`, `pg_verifybackup`): they stand as the checks' results.
    #[serde(skip)]
    pub checked: Vec<crate::checks::CheckResult>,
}

/// Builds the target for `env.spec.kind`.
pub fn build(env: TargetEnv) -> Box<dyn Target> {
    match env.spec.kind {
        TargetKind::Postgres => Box::new(postgres::Postgres::new(env)),
        TargetKind::Redis => Box::new(redis::Redis::new(env)),
        TargetKind::Rabbitmq => Box::new(rabbitmq::RabbitMq::new(env)),
    }
}

/// The outages every kind suffers alike ([`FaultKind::is_outage`]): `kill`, `stop`, `pause`,
/// `network-partition`, `latency` and `volume-loss`, at the container or its network rather
/// than its data. A kind's [`service::Service`] suffers them; the engine hands them to it
/// directly, and heals those that last `for`.
#[async_trait]
pub trait Outages: Send {
    /// Injects `fault`; returns what was done, for the report.
    async fn inject(&mut self, fault: &FaultSpec) -> Result<serde_json::Value>;

    /// Ends a temporary outage (`pause`, `network-partition`, `latency`).
    async fn heal(&mut self, fault: &FaultSpec) -> Result<serde_json::Value>;
}

/// One service under drill. Methods that take `&mut self` change which container is current;
/// writers and probers follow the change on their own.
#[async_trait]
pub trait Target: Send + Sync {
    /// Starts the service in a fresh container and waits until a real query answers.
    async fn provision(&mut self) -> Result<()>;

    /// Loads the scenario's dataset.
    async fn seed(&mut self) -> Result<()>;

    /// A writer for the workload; it follows the target across restarts and restores.
    fn writer(&self) -> Box<dyn Writer>;

    /// A health probe reading the workload's newest data.
    fn prober(&self) -> Box<dyn Prober>;

    /// Takes one backup into `dir` with the service's own tools.
    async fn backup(&self, method: BackupMethod, dir: &Path) -> Result<FreshBackup>;

    /// Where the outages every kind suffers alike happen (its service).
    fn outages(&mut self) -> &mut dyn Outages;

    /// Injects a fault that is this kind's own (not an outage, not damage to a backup); returns
    /// what was done, for the report. `backups` are the completed backups, oldest first.
    async fn inject(&mut self, fault: &FaultSpec, backups: &[Backup]) -> Result<serde_json::Value>;

    /// Captures the point `before-fault` restores to; `None` where the kind has none.
    async fn recovery_point(&self) -> Result<Option<RecoveryPoint>> {
        Ok(None)
    }

    /// After a failover whose RTO is measured: brings the topology to its final shape (the old
    /// primary rejoins as a replica, or is fenced) and says what became of each old node, as
    /// fields of the report's `restore.failover`. Nothing by default.
    async fn settle(&mut self, limit: Duration) -> Option<serde_json::Value> {
        let _ = limit;
        None
    }

    /// Crash recovery in place: starts the same container on its own data, waits until ready.
    async fn restart(&mut self, timeout: Duration) -> Result<()>;

    /// A replicated target's replication as it stands now (per standby: its state and how far
    /// behind it is, in bytes and seconds), read just before the first fault hits; `None` for a
    /// single node. Never fails: a state that cannot be read says why.
    async fn replication(&self) -> Option<serde_json::Value> {
        None
    }

    /// Failover (`restore.from = "failover"`): once the primary is judged down, a standby takes
    /// over as the new primary (the kind's runbook promotion, or its own election) and the
    /// clients follow it; the old primary is fenced or rejoins. Enters the phases `promote` (a
    /// runbook's promotion) or `elect` (the service's own election), then `reconnect`, as it
    /// goes.
    async fn fail_over(
        &mut self,
        phases: &mut RecoveryPhases,
        limit: Duration,
    ) -> Result<Restored> {
        let _ = (phases, limit);
        anyhow::bail!("this kind has no failover")
    }

    /// The seeded dataset as it stands now: per dataset, the fixture's own rows (never the
    /// workload's) and a digest of them. Recorded after the seed, compared after the recovery.
    async fn seed_facts(&self) -> Result<Contents>;

    /// Ends a temporary fault (`for`) of the kind's own (Redis's `disk-full`); returns what was
    /// done.
    async fn heal(&mut self, fault: &FaultSpec) -> Result<serde_json::Value> {
        anyhow::bail!("fault {} does not heal", fault.kind)
    }

    /// Waits, without touching the service, until it answers again (after a fault healed).
    async fn serve_again(&mut self, timeout: Duration) -> Result<()>;

    /// Before a `restart`: repairs the stopped service's own files when the target's options
    /// ask for it (Redis `restore.repair`); returns what the repair tool says it did.
    async fn repair(&mut self) -> Result<Option<String>> {
        Ok(None)
    }

    /// Restores into a fresh container, entering the restore phases as it goes.
    async fn restore(
        &mut self,
        request: &RestoreRequest<'_>,
        phases: &mut RecoveryPhases,
    ) -> Result<Restored>;

    /// Restores the user's own backup (a restore test) into a fresh container, entering the
    /// restore phases as it goes.
    async fn restore_source(
        &mut self,
        fetched: &Fetched,
        phases: &mut RecoveryPhases,
    ) -> Result<Restored> {
        let _ = phases;
        anyhow::bail!(
            "restoring a {} is not implemented for this kind",
            fetched.format.describe()
        )
    }

    /// Answers a user query on the restored service, read-only: its value as text.
    async fn query(&self, ask: &Ask) -> Result<String> {
        anyhow::bail!("{ask:?} is not a query this kind answers")
    }

    /// The workload's writes as the target holds them now.
    async fn read_back(&self) -> Result<ReadBack>;

    /// Per-dataset row counts and digests as the target holds them now.
    async fn contents(&self) -> Result<Contents>;

    /// Runs a check only this kind knows how to run.
    async fn check(&self, check: CheckKind, evidence: &Evidence<'_>) -> CheckResult;

    /// A fresh write and its read-back: the last condition of recovery.
    async fn round_trip(&self) -> Result<()>;

    /// Outages the service's own logs show that none of the `injected` faults explains: each a
    /// line naming the container and what it logged. None where the kind cannot tell.
    async fn unasked_outages(&self, _injected: &[FaultKind]) -> Vec<String> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_restore_test_format_is_exactly_one_kinds() {
        for &format in Format::ALL {
            let owners: Vec<TargetKind> = TargetKind::ALL
                .iter()
                .copied()
                .filter(|&k| capabilities(k).source_formats.contains(&format))
                .collect();
            assert_eq!(owners.len(), 1, "{format:?} is restored by {owners:?}");
            assert_eq!(kind_of(format), owners[0]);
        }
    }

    #[test]
    fn every_kind_lists_each_outage_it_supports_and_its_own_faults_only_once() {
        for &kind in TargetKind::ALL {
            let caps = capabilities(kind);
            let mut faults = caps.faults.to_vec();
            faults.sort();
            faults.dedup();
            assert_eq!(
                faults.len(),
                caps.faults.len(),
                "{kind} lists a fault twice"
            );
            // Every kind suffers the outages every kind suffers alike.
            for outage in FaultKind::ALL.iter().filter(|f| f.is_outage()) {
                assert!(caps.faults.contains(outage), "{kind} lacks outage {outage}");
            }
        }
    }
}
