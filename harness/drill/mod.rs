//! One drill, start to end: provision → seed → workload (with scheduled backups) → faults →
//! detect → restore → verify → teardown, timed on one clock, with every step bounded by a
//! timeout. What the drill learns is kept in [`Progress`] as it goes, outside the drill's future,
//! so an interrupted or failed run still reports how far it got.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::try_join_all;
use rand::RngExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};

use crate::backup::{Backup, Repository};
use crate::checks::{self, CheckStatus, Evidence};
use crate::docker::{self, Docker, image};
use crate::faults;
use crate::live;
use crate::measure::{self, Clock, Phase, Phases};
use crate::report::{
    self, BackupReport, FaultRecord, Outcome, PhaseSpan, Report, RestoreReport, Rpo, Rto,
    TargetReport, WorkloadReport,
};
use crate::scenario::{RestorePoint, Scenario, TargetSpec};
use crate::targets::{self, RecoveryPoint, RestoreRequest, Restored, Target, TargetEnv};
use crate::workload::{self, Ledger, Micros, ledger::compare};

/// When to leave a run's containers in place for inspection (`DRILLRIG_KEEP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Keep {
    #[default]
    Never,
    OnFailure,
    Always,
}

impl Keep {
    pub fn parse(s: &str) -> Option<Keep> {
        match s {
            "" | "never" | "no" => Some(Keep::Never),
            "on-failure" => Some(Keep::OnFailure),
            "always" => Some(Keep::Always),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Where outputs go; default `<reports>/<scenario>/<run-id>/`.
    pub out_dir: Option<PathBuf>,
    pub reports_root: PathBuf,
    /// Image per target name, from `--image NAME=IMAGE`.
    pub images: BTreeMap<String, String>,
    pub keep: Keep,
    /// The drill's live lines on a terminal; drawn nowhere by default.
    pub live: live::Lines,
}

/// A finished run: its report, folder and exit code (DESIGN §6).
pub struct RunResult {
    pub report: Report,
    pub dir: PathBuf,
    pub exit_code: i32,
    /// What ended the run early, and how to fix it when the environment did.
    pub error: Option<String>,
    pub fix: Option<String>,
}

/// Why a drill stopped before its end.
#[derive(Debug)]
enum Stop {
    /// The environment failed (engine, image, disk): exit 3.
    Environment(docker::EnvironmentError),
    /// A step failed or overran its timeout: exit 1.
    Step(String),
    Interrupted,
}

impl Stop {
    fn environment(cause: String, fix: impl Into<String>) -> Stop {
        Stop::Environment(docker::EnvironmentError {
            cause,
            fix: fix.into(),
        })
    }

    /// The line the report and the terminal show.
    fn message(&self) -> String {
        match self {
            Stop::Environment(e) => format!("{} (fix: {})", e.cause, e.fix),
            Stop::Step(s) => s.clone(),
            Stop::Interrupted => "interrupted by signal".into(),
        }
    }
}

/// What the run has learned so far.
#[derive(Default)]
struct Progress {
    timeline: Vec<PhaseSpan>,
    faults: Vec<FaultRecord>,
    targets: BTreeMap<String, TargetReport>,
    live: live::Lines,
}

type Shared = Arc<Mutex<Progress>>;

fn begin(progress: &Shared, clock: &Clock, phase: &str, target: Option<&str>) -> usize {
    match target {
        Some(t) => info!("{t}: phase {phase}"),
        None => info!("phase {phase}"),
    }
    let mut p = progress.lock().expect("not poisoned");
    p.live.phase(target, phase);
    p.timeline.push(PhaseSpan {
        phase: phase.into(),
        target: target.map(Into::into),
        started_ms: clock.millis(),
        ended_ms: None,
    });
    p.timeline.len() - 1
}

fn end(progress: &Shared, clock: &Clock, span: usize) {
    progress.lock().expect("not poisoned").timeline[span].ended_ms = Some(clock.millis());
}

/// The drill's live lines (a cheap handle).
fn live(progress: &Shared) -> live::Lines {
    progress.lock().expect("not poisoned").live.clone()
}

fn update(progress: &Shared, target: &str, f: impl FnOnce(&mut TargetReport)) {
    if let Some(t) = progress
        .lock()
        .expect("not poisoned")
        .targets
        .get_mut(target)
    {
        f(t);
    }
}

/// A new run id: UTC start time and a random suffix, e.g. `20261121T101500Z-3f2a`.
pub fn new_run_id(clock: &Clock) -> String {
    let stamp = humantime::format_rfc3339_seconds(clock.started_at())
        .to_string()
        .replace(['-', ':'], "");
    format!("{stamp}-{:04x}", rand::rng().random::<u16>())
}

fn password() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// Runs `scenario` to its end, or until `cancel` fires. Always returns a report unless the run
/// folder itself cannot be created.
pub async fn run(
    scenario: &Scenario,
    opts: &RunOptions,
    cancel: CancellationToken,
) -> anyhow::Result<RunResult> {
    let clock = Clock::start();
    let run_id = new_run_id(&clock);
    let dir = opts
        .out_dir
        .clone()
        .unwrap_or_else(|| opts.reports_root.join(&scenario.name).join(&run_id));
    std::fs::create_dir_all(&dir).map_err(|e| {
        anyhow::Error::new(docker::EnvironmentError {
            cause: format!("cannot create the run folder {}: {e}", dir.display()),
            fix: "free disk space or choose another folder with --out".into(),
        })
    })?;
    check_free_space(&dir)?;
    // Containers mount parts of the run folder: it must be absolute.
    let dir = std::fs::canonicalize(&dir)
        .map_err(|e| anyhow::anyhow!("resolve {}: {e}", dir.display()))?;
    let seed = scenario.seed.unwrap_or_else(|| rand::rng().random());
    info!("run {run_id} of {} into {}", scenario.name, dir.display());

    let progress: Shared = Arc::new(Mutex::new(Progress {
        live: opts.live.clone(),
        ..Progress::default()
    }));
    for t in &scenario.targets {
        progress
            .lock()
            .expect("not poisoned")
            .targets
            .insert(t.name.clone(), empty_report(t));
    }

    let mut engine: Option<Arc<Docker>> = None;
    let stop = match docker::connect().await {
        Err(e) => Some(Stop::Environment(e)),
        Ok(api) => {
            match docker::gc::collect(&api, false).await {
                Ok(dead) => {
                    for run in dead {
                        info!(
                            "removed leftovers of dead run {}: {:?}",
                            run.run_id, run.removed
                        );
                    }
                }
                Err(e) => warn!("could not look for leftovers of dead runs: {e:#}"),
            }
            let owner = docker::process_identity();
            let d = Arc::new(Docker::new(
                api,
                &run_id,
                &scenario.name,
                &owner,
                opts.keep != Keep::Never,
                dir.join("logs"),
            ));
            engine = Some(d.clone());
            let drill = Drill {
                scenario,
                opts,
                clock,
                docker: d,
                repo: Repository::new(dir.join("backups")),
                dir: dir.clone(),
                seed,
                progress: progress.clone(),
            };
            tokio::select! {
                r = drill.execute() => r.err(),
                _ = cancel.cancelled() => Some(Stop::Interrupted),
            }
        }
    };

    let mut report = build_report(scenario, &run_id, seed, &clock, &progress, stop.as_ref());
    if let Some(d) = engine {
        let span = begin(&progress, &clock, "teardown", None);
        d.save_logs().await;
        let keep = match opts.keep {
            Keep::Always => true,
            Keep::OnFailure => report.outcome != Outcome::Met,
            Keep::Never => false,
        };
        if keep {
            d.keep();
            info!(
                "keeping the run's containers (DRILLRIG_KEEP); remove them with `drillrig gc` once this process has exited"
            );
        } else {
            match tokio::time::timeout(Duration::from_secs(120), d.teardown()).await {
                Ok(Ok(removed)) => info!(
                    "removed {} container(s), {} volume(s), {} network(s)",
                    removed.containers, removed.volumes, removed.networks
                ),
                Ok(Err(e)) => warn!("teardown incomplete ({e:#}); `drillrig gc` removes the rest"),
                Err(_) => {
                    warn!("teardown did not finish within 120s; `drillrig gc` removes the rest")
                }
            }
        }
        end(&progress, &clock, span);
        report.timeline = progress.lock().expect("not poisoned").timeline.clone();
        report.duration_ms = clock.millis();
    }
    report::write(&report, &dir).map_err(|e| {
        if host_storage_full(&e) {
            anyhow::Error::new(docker::EnvironmentError {
                cause: format!("cannot write the report into {}: {e:#}", dir.display()),
                fix: "free space there, or write elsewhere with --out or DRILLRIG_REPORTS".into(),
            })
        } else {
            e
        }
    })?;
    let (error, fix) = match &stop {
        Some(Stop::Environment(e)) => (Some(e.cause.clone()), Some(e.fix.clone())),
        Some(other) => (Some(other.message()), None),
        None => (None, None),
    };
    let exit_code = match (&report.outcome, &stop) {
        (Outcome::Met, _) => 0,
        (Outcome::Missed, _) => 1,
        (Outcome::Interrupted, _) => 130,
        (Outcome::Error, Some(Stop::Environment(_))) => 3,
        (Outcome::Error, _) => 1,
    };
    Ok(RunResult {
        report,
        dir,
        exit_code,
        error,
        fix,
    })
}

/// Space a run folder needs, in MiB, unless `DRILLRIG_MIN_FREE_MB` says otherwise: backups,
/// the ledger and the container logs go there.
const MIN_FREE_MB: u64 = 256;

fn check_free_space(dir: &Path) -> anyhow::Result<()> {
    let need = std::env::var("DRILLRIG_MIN_FREE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MIN_FREE_MB);
    let st =
        rustix::fs::statvfs(dir).map_err(|e| anyhow::anyhow!("statvfs {}: {e}", dir.display()))?;
    let free_mb = st.f_bavail.saturating_mul(st.f_frsize) / (1024 * 1024);
    if free_mb < need {
        return Err(docker::EnvironmentError {
            cause: format!(
                "the report folder {} has {free_mb} MiB free; a drill needs at least {need} MiB (backups, ledger, logs)",
                dir.display()
            ),
            fix: "free space there, write elsewhere with --out or DRILLRIG_REPORTS, or lower DRILLRIG_MIN_FREE_MB".into(),
        }
        .into());
    }
    Ok(())
}

fn empty_report(t: &TargetSpec) -> TargetReport {
    TargetReport {
        name: t.name.clone(),
        kind: t.kind,
        image: None,
        dataset_rows: t.dataset.rows,
        rto: Rto {
            target_ms: t.objectives.rto.as_millis() as u64,
            ..Rto::default()
        },
        rpo: Rpo {
            target_ms: t.objectives.rpo.as_millis() as u64,
            max_lost_writes: t.objectives.max_lost_writes,
            ..Rpo::default()
        },
        checks: Vec::new(),
        restore: RestoreReport {
            from: restore_label(t.restore),
            ..RestoreReport::default()
        },
        backups: Vec::new(),
        workload: WorkloadReport {
            rate: t.rate,
            ..WorkloadReport::default()
        },
        detection: measure::Detection::default(),
    }
}

fn restore_label(p: RestorePoint) -> String {
    match p {
        RestorePoint::Restart => "restart".into(),
        RestorePoint::Latest => "latest".into(),
        RestorePoint::BeforeFault => "before-fault".into(),
        RestorePoint::At(t) => humantime::format_rfc3339(t).to_string(),
    }
}

fn build_report(
    scenario: &Scenario,
    run_id: &str,
    seed: u64,
    clock: &Clock,
    progress: &Shared,
    stop: Option<&Stop>,
) -> Report {
    let p = progress.lock().expect("not poisoned");
    let targets: Vec<TargetReport> = p.targets.values().cloned().collect();
    let (outcome, error) = match stop {
        Some(Stop::Interrupted) => (Outcome::Interrupted, Some(Stop::Interrupted.message())),
        Some(stop) => (Outcome::Error, Some(stop.message())),
        None if targets.iter().all(TargetReport::met) => (Outcome::Met, None),
        None => (Outcome::Missed, None),
    };
    Report {
        schema_version: report::SCHEMA_VERSION,
        scenario: scenario.name.clone(),
        scenario_file: scenario.path.display().to_string(),
        description: scenario.description.clone(),
        run_id: run_id.into(),
        started_at: humantime::format_rfc3339_millis(clock.started_at()).to_string(),
        duration_ms: clock.millis(),
        outcome,
        error,
        seed,
        drillrig_version: env!("CARGO_PKG_VERSION").into(),
        timeline: p.timeline.clone(),
        targets,
        faults: p.faults.clone(),
    }
}

/// What `Drill::restore` did: the backup it used, what the service reached, and the error
/// that stopped it (a finding, not a stop of the drill).
struct RestoreOutcome<'c> {
    backup: Option<&'c Backup>,
    restored: Restored,
    error: Option<String>,
}

struct Drill<'a> {
    scenario: &'a Scenario,
    opts: &'a RunOptions,
    clock: Clock,
    docker: Arc<Docker>,
    repo: Repository,
    dir: PathBuf,
    seed: u64,
    progress: Shared,
}

/// Bounds `fut` by `limit`; an overrun is a failed step named `step`.
async fn bounded<T>(
    step: &str,
    limit: Duration,
    fut: impl std::future::Future<Output = anyhow::Result<T>>,
) -> Result<T, Stop> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(step, e)),
        Err(_) => Err(Stop::Step(format!(
            "{step}: did not finish within {} (timeouts)",
            humantime::format_duration(limit)
        ))),
    }
}

fn classify(step: &str, e: anyhow::Error) -> Stop {
    if let Some(env) = e.downcast_ref::<docker::EnvironmentError>() {
        return Stop::environment(format!("{step}: {}", env.cause), env.fix.clone());
    }
    if host_storage_full(&e) {
        return Stop::environment(
            format!("{step}: the host's report folder is full: {e:#}"),
            "free space there, or write elsewhere with --out or DRILLRIG_REPORTS",
        );
    }
    Stop::Step(format!("{step}: {e:#}"))
}

/// Whether `e` comes from a write on the host that found no space left (the report folder): an
/// environment problem, not a finding about the target.
fn host_storage_full(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
            io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28)
        })
    })
}

impl Drill<'_> {
    async fn execute(&self) -> Result<(), Stop> {
        let s = self.scenario;
        let span = begin(&self.progress, &self.clock, "provision", None);
        self.docker
            .create_network()
            .await
            .map_err(|e| classify("create the run network", e))?;
        let mut targets: Vec<(TargetSpec, Box<dyn Target>)> = Vec::new();
        for spec in &s.targets {
            let choice = image::resolve(
                self.docker.api(),
                spec.kind,
                self.opts.images.get(&spec.name).map(String::as_str),
                spec.image.as_deref(),
            )
            .await
            .map_err(|e| Stop::environment(format!("target {}: {}", spec.name, e.cause), e.fix))?;
            if let Some(note) = &choice.note {
                info!("{}: {note}", spec.name);
            }
            let env = TargetEnv {
                spec: spec.clone(),
                image: choice.image.clone(),
                docker: self.docker.clone(),
                password: password(),
                seed: self.seed,
                clock: self.clock,
                timeouts: s.timeouts,
                repository: self.repo.root().join(&spec.name),
            };
            update(&self.progress, &spec.name, |t| t.image = Some(choice));
            targets.push((spec.clone(), targets::build(env)));
        }
        try_join_all(targets.iter_mut().map(|(spec, t)| async move {
            let started = self.clock.millis();
            bounded(
                &format!("provision {}", spec.name),
                s.timeouts.provision,
                t.provision(),
            )
            .await?;
            info!(
                "{}: provisioned in {}",
                spec.name,
                report::seconds(self.clock.millis() - started)
            );
            Ok::<_, Stop>(())
        }))
        .await?;
        end(&self.progress, &self.clock, span);

        let span = begin(&self.progress, &self.clock, "seed", None);
        try_join_all(targets.iter_mut().map(|(spec, t)| async move {
            let started = self.clock.millis();
            bounded(&format!("seed {}", spec.name), s.timeouts.seed, t.seed()).await?;
            info!(
                "{}: seeded {} rows of {} in {}",
                spec.name,
                spec.dataset.rows,
                spec.dataset.fixture,
                report::seconds(self.clock.millis() - started)
            );
            Ok::<_, Stop>(())
        }))
        .await?;
        end(&self.progress, &self.clock, span);

        let workload_start = self.clock.micros();
        try_join_all(
            targets
                .iter_mut()
                .map(|(spec, t)| self.drive(spec, t.as_mut(), workload_start)),
        )
        .await?;
        Ok(())
    }

    /// One target from the workload's start to its verified restore.
    async fn drive(
        &self,
        spec: &TargetSpec,
        target: &mut dyn Target,
        workload_start: Micros,
    ) -> Result<(), Stop> {
        let s = self.scenario;
        let name = spec.name.as_str();
        let clock = self.clock;

        let stop_writing = CancellationToken::new();
        let writer = AbortOnDropHandle::new(tokio::spawn(workload::run(
            target.writer(),
            spec.rate,
            clock,
            stop_writing.clone(),
        )));
        let workload_span = begin(&self.progress, &clock, "workload", Some(name));
        update(&self.progress, name, |t| {
            t.workload.started_ms = Some(workload_start / 1000)
        });

        let faults: Vec<_> = s.faults_for(name).collect();
        let backups_until =
            workload_start + faults.first().map_or(s.duration, |f| f.at).as_micros() as Micros;
        let catalog = self
            .backups(spec, target, workload_start, backups_until)
            .await?;

        // Faults fire on schedule; probing starts with the first fault that hits the service.
        let (fault_tx, fault_rx) = oneshot::channel::<Micros>();
        let mut prober = target.prober();
        let detection = async {
            match fault_rx.await {
                Ok(_) => {
                    let span = begin(&self.progress, &clock, "detect", Some(name));
                    let d = measure::detect(prober.as_mut(), &clock, s.timeouts.detect).await;
                    end(&self.progress, &clock, span);
                    Some(d)
                }
                Err(_) => None,
            }
        };
        let injections = async {
            let mut fault_tx = Some(fault_tx);
            let mut t_fault = None;
            let mut fault_began = None;
            let mut recovery_point = None;
            for f in &faults {
                tokio::time::sleep_until(
                    clock.instant_at(workload_start + f.at.as_micros() as Micros),
                )
                .await;
                if !f.kind.is_latent() && t_fault.is_none() && spec.restore != RestorePoint::Restart
                {
                    // The point `before-fault` restores to: the last moment the target was whole.
                    recovery_point = bounded(
                        &format!("capture the recovery point of {name}"),
                        s.timeouts.fault,
                        target.recovery_point(),
                    )
                    .await?;
                    update(&self.progress, name, |t| {
                        t.restore.recovery_point = recovery_point.clone()
                    });
                }
                let span = begin(
                    &self.progress,
                    &clock,
                    &format!("fault {}", f.kind),
                    Some(name),
                );
                let started = clock.micros();
                let result = bounded(
                    &format!("inject {} into {name}", f.kind),
                    s.timeouts.fault,
                    faults::inject(f, target, &self.docker, &catalog),
                )
                .await;
                let injected = clock.micros();
                end(&self.progress, &clock, span);
                let mut record = FaultRecord {
                    target: name.into(),
                    kind: f.kind,
                    scheduled_ms: (workload_start + f.at.as_micros() as Micros) / 1000,
                    started_ms: started / 1000,
                    injected_at_ms: None,
                    details: serde_json::Value::Null,
                    error: None,
                };
                match result {
                    Ok(details) => {
                        info!(
                            "{name}: injected {} at {}",
                            f.kind,
                            report::seconds(injected / 1000)
                        );
                        record.injected_at_ms = Some(injected / 1000);
                        record.details = details;
                        self.progress
                            .lock()
                            .expect("not poisoned")
                            .faults
                            .push(record);
                        if !f.kind.is_latent() && t_fault.is_none() {
                            t_fault = Some(injected);
                            live(&self.progress)
                                .rto_from(name, clock.instant_at(injected).into_std());
                            fault_began = Some(started);
                            if let Some(tx) = fault_tx.take() {
                                let _ = tx.send(injected);
                            }
                        }
                    }
                    Err(stop) => {
                        record.error = Some(stop.message());
                        self.progress
                            .lock()
                            .expect("not poisoned")
                            .faults
                            .push(record);
                        return Err(stop);
                    }
                }
            }
            Ok::<_, Stop>((t_fault, fault_began, recovery_point))
        };
        let (injected, detection) = tokio::join!(injections, detection);
        let (t_fault, fault_began, recovery_point) = injected?;
        if t_fault.is_none() {
            // No fault hit the service: a restore test, measured from the restore's start.
            tokio::time::sleep_until(
                clock.instant_at(workload_start + s.duration.as_micros() as Micros),
            )
            .await;
            live(&self.progress).rto_from(name, std::time::Instant::now());
        }

        // The restore begins: the workload stops, its last writes are recorded.
        let restore_start = clock.micros();
        stop_writing.cancel();
        let ledger = writer
            .await
            .map_err(|e| Stop::Step(format!("{name} workload: {e}")))?;
        end(&self.progress, &clock, workload_span);
        let t_fault = t_fault.unwrap_or(restore_start);
        let fault_began = fault_began.unwrap_or(t_fault);
        update(&self.progress, name, |t| {
            t.workload = WorkloadReport {
                rate: spec.rate,
                started_ms: Some(workload_start / 1000),
                stopped_ms: Some(restore_start / 1000),
                attempted: ledger.len() as u64,
                ok: ledger.count(workload::Outcome::Ok),
                fail: ledger.count(workload::Outcome::Fail),
                info: ledger.count(workload::Outcome::Info),
                ledger_file: None,
            };
            t.rto.fault_at_ms = Some(t_fault / 1000);
            t.rto.restore_started_at_ms = Some(restore_start / 1000);
            if let Some(d) = &detection {
                t.detection = d.clone();
            }
        });
        if let Some(d) = &detection {
            match d.detected_at_ms {
                Some(at) => info!(
                    "{name}: outage detected at {} ({})",
                    report::seconds(at),
                    d.cause.as_deref().unwrap_or("")
                ),
                None => warn!(
                    "{name}: no probe failed within {}; restoring anyway",
                    humantime::format_duration(s.timeouts.detect)
                ),
            }
        }

        let span = begin(&self.progress, &clock, "restore", Some(name));
        let mut phases = Phases::new(clock, Phase::Detect, t_fault);
        let outcome = self
            .restore(
                spec,
                target,
                &catalog,
                t_fault,
                recovery_point.as_ref(),
                &mut phases,
            )
            .await?;
        end(&self.progress, &clock, span);
        let (restored, restore_error) = (outcome.backup, outcome.error);
        if let Some(e) = &restore_error {
            warn!("{name}: restore failed: {e}");
        }
        if let Some(note) = &outcome.restored.note {
            warn!("{name}: {note}");
        }

        let span = begin(&self.progress, &clock, "verify", Some(name));
        phases.enter(Phase::Verify);
        let overran = |step: &str| {
            Stop::Step(format!(
                "{step} of {name}: did not finish within {} (timeouts.check)",
                humantime::format_duration(s.timeouts.check)
            ))
        };
        let comparison = match tokio::time::timeout(s.timeouts.check, target.read_back()).await {
            Ok(Ok(read)) => Ok(compare(&ledger, &read)),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => return Err(overran("reading the workload back")),
        };
        let evidence = Evidence {
            comparison: &comparison,
            backup: restored,
            catalog: &catalog,
            fault_began,
            rpo_objective: spec.objectives.rpo,
        };
        let target_ref: &dyn Target = target;
        let results = try_join_all(
            spec.checks
                .iter()
                .map(|&c| checks::run(c, target_ref, &evidence, s.timeouts.check)),
        )
        .await
        .map_err(|o| overran(&format!("check {}", o.check)))?;
        let all_passed =
            restore_error.is_none() && results.iter().all(|c| c.status == CheckStatus::Passed);
        let mut recovered = None;
        let mut rto_note = None;
        if all_passed {
            match tokio::time::timeout(s.timeouts.check, target.round_trip()).await {
                Ok(Ok(())) => recovered = Some(clock.micros()),
                Ok(Err(e)) => {
                    rto_note = Some(format!("the fresh write and read-back failed: {e:#}"))
                }
                Err(_) => return Err(overran("the fresh write and read-back")),
            }
        } else if restore_error.is_some() {
            rto_note = Some("the restore failed".into());
        } else {
            let failing: Vec<String> = results
                .iter()
                .filter(|c| c.status != CheckStatus::Passed)
                .map(|c| c.name.to_string())
                .collect();
            rto_note = Some(format!(
                "not recovered: check(s) {} did not pass",
                failing.join(", ")
            ));
        }
        end(&self.progress, &clock, span);

        let end_of_phases = recovered.unwrap_or_else(|| clock.micros());
        let ledger_file = self.write_ledger(name, &ledger, &comparison);
        let mut rpo = rpo_report(spec, &ledger, &comparison, t_fault, workload_start);
        if let (false, Some(note)) = (rpo.met, &outcome.restored.note) {
            // Damage to the backup chain is the reason the RPO was missed.
            rpo.note = Some(rpo.note.map_or(note.clone(), |n| format!("{n}; {note}")));
        }
        let rto_achieved = recovered.map(|r| (r - t_fault) / 1000);
        live(&self.progress).recovered(name, rto_achieved.map(Duration::from_millis));
        update(&self.progress, name, |t| {
            t.rto.phases = report::Phases::from_durations(&phases.durations(end_of_phases));
            t.rto.achieved_ms = rto_achieved;
            t.rto.met = rto_achieved.is_some_and(|a| a <= t.rto.target_ms);
            t.rto.recovered_at_ms = recovered.map(|r| r / 1000);
            t.rto.note = rto_note;
            t.rpo = rpo;
            t.checks = results;
            t.restore.backup_id = restored.map(|b| b.id);
            t.restore.error = restore_error;
            t.restore.recovery_target = outcome.restored.recovery_target.clone();
            t.restore.reached = outcome.restored.reached.clone();
            t.restore.note = outcome.restored.note.clone();
            t.workload.ledger_file = ledger_file;
        });
        match rto_achieved {
            Some(ms) => info!("{name}: recovered {} after the fault", report::seconds(ms)),
            None => warn!("{name}: not recovered"),
        }
        Ok(())
    }

    /// Takes backups every `every` from the workload's start until `until`; a backup running at
    /// `until` finishes first (the fault waits for it, and the report shows the delay).
    ///
    /// A backup the service refuses is recorded as failed, and the drill goes on (a finding). A
    /// backup that overruns `timeouts.backup`, or that the host cannot store, ends the drill.
    async fn backups(
        &self,
        spec: &TargetSpec,
        target: &dyn Target,
        start: Micros,
        until: Micros,
    ) -> Result<Vec<Backup>, Stop> {
        let mut catalog = Vec::new();
        let Some(plan) = spec.backup else {
            return Ok(catalog);
        };
        let every = plan.every.as_micros() as Micros;
        let mut next = start;
        let mut id = 0;
        while next < until {
            tokio::time::sleep_until(self.clock.instant_at(next)).await;
            id += 1;
            let began_ms = self.clock.millis();
            let taken = async {
                let dir = self.repo.prepare(&spec.name, id, plan.method)?;
                let taken = target.backup(plan.method, &dir).await?;
                anyhow::Ok((dir, taken))
            };
            let result = tokio::time::timeout(self.scenario.timeouts.backup, taken).await;
            let finished_ms = self.clock.millis();
            let mut entry = BackupReport {
                id,
                began_ms,
                consistent_at_ms: None,
                finished_ms,
                size_bytes: 0,
                max_seq: None,
                error: None,
            };
            match result {
                Ok(Ok((dir, taken))) => {
                    let backup = Backup {
                        target: spec.name.clone(),
                        id,
                        method: plan.method,
                        dir,
                        began_ms,
                        consistent_at_us: taken.consistent_at,
                        finished_ms,
                        artefacts: taken.artefacts,
                        contents: taken.contents,
                        max_seq: taken.max_seq,
                        details: taken.details,
                    };
                    if let Err(e) = self.repo.record(&backup) {
                        entry.error = Some(format!("write the manifest: {e:#}"));
                    } else {
                        entry.consistent_at_ms = Some(backup.consistent_at_us as f64 / 1000.0);
                        entry.size_bytes = backup.size();
                        entry.max_seq = backup.max_seq;
                        info!(
                            "{}: backup {id} ({}) took {}, {} bytes",
                            spec.name,
                            plan.method,
                            report::seconds(finished_ms - began_ms),
                            entry.size_bytes
                        );
                        catalog.push(backup);
                    }
                }
                Ok(Err(e)) if host_storage_full(&e) => {
                    entry.error = Some(format!("{e:#}"));
                    update(&self.progress, &spec.name, |t| t.backups.push(entry));
                    return Err(classify(&format!("backup {id} of {}", spec.name), e));
                }
                Ok(Err(e)) => entry.error = Some(format!("{e:#}")),
                Err(_) => {
                    let limit = humantime::format_duration(self.scenario.timeouts.backup);
                    entry.error = Some(format!("did not finish within {limit}"));
                    update(&self.progress, &spec.name, |t| t.backups.push(entry));
                    return Err(Stop::Step(format!(
                        "backup {id} of {}: did not finish within {limit} (timeouts.backup)",
                        spec.name
                    )));
                }
            }
            if let Some(e) = &entry.error {
                warn!("{}: backup {id} failed: {e}", spec.name);
            }
            update(&self.progress, &spec.name, |t| t.backups.push(entry));
            let now = self.clock.micros();
            while next <= now {
                next += every;
            }
        }
        Ok(catalog)
    }

    /// Runs the restore the scenario asks for. `Ok((backup used, restore error))`; `Err` only
    /// when the restore overran its timeout.
    async fn restore<'c>(
        &self,
        spec: &TargetSpec,
        target: &mut dyn Target,
        catalog: &'c [Backup],
        t_fault: Micros,
        recovery_point: Option<&RecoveryPoint>,
        phases: &mut Phases,
    ) -> Result<RestoreOutcome<'c>, Stop> {
        let limit = self.scenario.timeouts.restore;
        let step = format!("restore {}", spec.name);
        let overran = || {
            Stop::Step(format!(
                "{step}: did not finish within {} (timeouts.restore)",
                humantime::format_duration(limit)
            ))
        };
        let chosen = match spec.restore {
            RestorePoint::Restart => {
                phases.enter(Phase::Restore);
                let mut restored = Restored {
                    recovery_target: Some("crash recovery in place".into()),
                    ..Restored::default()
                };
                let recovered = async {
                    if spec.repair {
                        restored.note = target.repair().await?;
                    }
                    target.restart(limit).await
                };
                let error = match tokio::time::timeout(limit, recovered).await {
                    Ok(r) => r.err().map(|e| format!("{e:#}")),
                    Err(_) => return Err(overran()),
                };
                return Ok(RestoreOutcome {
                    backup: None,
                    restored,
                    error,
                });
            }
            RestorePoint::Latest => catalog.last(),
            RestorePoint::BeforeFault => catalog
                .iter()
                .rev()
                .find(|b| b.finished_ms * 1000 <= t_fault),
            // A backup restores to a time only once it has completed by then (a base backup
            // cannot stop recovery before its own end).
            RestorePoint::At(when) => catalog
                .iter()
                .rev()
                .find(|b| self.clock.wall_at(b.finished_ms * 1000) <= when),
        };
        let Some(backup) = chosen else {
            let error = format!(
                "no completed backup matches `{}`",
                restore_label(spec.restore)
            );
            return Ok(RestoreOutcome {
                backup: None,
                restored: Restored::default(),
                error: Some(error),
            });
        };
        let request = RestoreRequest {
            backup,
            point: spec.restore,
            recovery_point,
            catalog,
        };
        match tokio::time::timeout(limit, target.restore(&request, phases)).await {
            Ok(Ok(restored)) => Ok(RestoreOutcome {
                backup: Some(backup),
                restored,
                error: None,
            }),
            Ok(Err(e)) => Ok(RestoreOutcome {
                backup: Some(backup),
                restored: Restored::default(),
                error: Some(format!("{e:#}")),
            }),
            Err(_) => Err(overran()),
        }
    }

    /// Writes the ledger as CSV (`seq,invoked_ms,completed_ms,outcome,recovered`); returns its
    /// path relative to the run folder.
    fn write_ledger(
        &self,
        target: &str,
        ledger: &Ledger,
        comparison: &Result<workload::Comparison, String>,
    ) -> Option<String> {
        let name = format!("ledger-{target}.csv");
        let write = || -> anyhow::Result<()> {
            report::write_atomically_with(&self.dir.join(&name), |out| {
                ledger.write_csv(comparison.as_ref().ok(), out)
            })
        };
        match write() {
            Ok(()) => Some(name),
            Err(e) => {
                warn!("cannot write {name}: {e:#}");
                None
            }
        }
    }
}

fn rpo_report(
    spec: &TargetSpec,
    ledger: &Ledger,
    comparison: &Result<workload::Comparison, String>,
    t_fault: Micros,
    workload_start: Micros,
) -> Rpo {
    let mut rpo = Rpo {
        target_ms: spec.objectives.rpo.as_millis() as u64,
        max_lost_writes: spec.objectives.max_lost_writes,
        acked_writes: ledger.count(workload::Outcome::Ok),
        last_acked_before_fault_seq: ledger.last_acked_before(t_fault).map(|w| w.seq),
        ..Rpo::default()
    };
    match comparison {
        Err(e) => rpo.note = Some(format!("unknown: {e}")),
        Ok(c) => {
            let achieved = measure::rpo(ledger, c, t_fault, workload_start);
            rpo.achieved_ms = Some(achieved.as_millis() as u64);
            rpo.lost_writes = c.lost.len() as u64;
            rpo.holes = c.holes;
            rpo.unacked_present = c.unacked_present;
            rpo.unexpected = c.unexpected.len() as u64;
            rpo.mismatched = c.mismatched.len() as u64;
            rpo.failed_present = c.failed_present.len() as u64;
            rpo.duplicates = c.duplicates;
            rpo.recovered_prefix_seq = c.r_star;
            if let Some(&first) = c.lost.first() {
                rpo.first_lost_seq = Some(first);
                rpo.first_lost_acked_at_ms = ledger.get(first).map(|w| w.completed as f64 / 1000.0);
            }
            let within_loss = spec
                .objectives
                .max_lost_writes
                .is_none_or(|m| rpo.lost_writes <= m);
            rpo.met = achieved <= spec.objectives.rpo && within_loss;
            if !within_loss {
                rpo.note = Some(format!(
                    "{} acknowledged writes lost; at most {} allowed",
                    rpo.lost_writes,
                    spec.objectives.max_lost_writes.unwrap_or(0)
                ));
            }
        }
    }
    rpo
}
