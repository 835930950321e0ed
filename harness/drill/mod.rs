//! One drill, start to end: provision → seed → per target (workload with scheduled backups →
//! faults → detect → restore → verify) → teardown, timed on one clock, with every step bounded
//! by a timeout. This module is the run frame: it opens the [`Site`], races the drill against
//! cancellation, and always writes a report. [`executor`] holds one target's steps, [`events`]
//! the sink that records them, and [`stop`] why a drill ends early.

mod backups;
mod events;
mod executor;
#[cfg(test)]
mod fake;
mod faults;
mod restore;
mod restore_test;
mod shipping;
mod stop;
#[cfg(test)]
mod tests;
mod verify;
mod workloads;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::try_join_all;
use rand::RngExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use backups::choose_backup;

use crate::backup::Repository;
use crate::checks::Previous;
use crate::clock::Clock;
use crate::docker::EnvironmentError;
use crate::exit::Exit;
use crate::live;
use crate::measure;
use crate::measure::rpo::Rpo;
use crate::report::{self, Report, RestoreReport, Rto, RunOutcome, TargetReport, WorkloadReport};
use crate::spec::{Scenario, TargetSpec};
use crate::targets::site::DockerSite;
use crate::targets::{RunContext, Site, Target};
use crate::util;
use events::{Events, TargetEvent};
use executor::{Executor, Seeded};
use stop::{Stop, bounded, classify, host_storage_full};

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
    /// What the previous run of the scenario measured (restore tests' `drift`, `backup-size`).
    pub previous: Previous,
}

/// A finished run: its report, folder and exit (docs/outputs.md).
pub struct RunResult {
    pub report: Report,
    pub dir: PathBuf,
    pub exit: Exit,
    /// What ended the run early, and how to fix it when the environment did.
    pub error: Option<String>,
    pub fix: Option<String>,
}

/// What a [`Site`] is opened for.
pub struct RunInfo {
    pub run_id: String,
    pub scenario: String,
    /// The run folder (absolute).
    pub dir: PathBuf,
    pub keep: Keep,
    /// Image per target name, from `--image NAME=IMAGE`.
    pub images: BTreeMap<String, String>,
}

/// A new run id: UTC start time and a random suffix, e.g. `20261121T101500Z-3f2a`.
pub fn new_run_id(clock: &Clock) -> String {
    let stamp = humantime::format_rfc3339_seconds(clock.started_at())
        .to_string()
        .replace(['-', ':'], "");
    format!("{stamp}-{:04x}", rand::rng().random::<u16>())
}

/// Runs `scenario` on the Docker engine to its end, or until `cancel` fires. Always returns a
/// report unless the run folder itself cannot be created.
pub async fn run(
    scenario: &Scenario,
    opts: &RunOptions,
    cancel: CancellationToken,
) -> anyhow::Result<RunResult> {
    run_on(scenario, opts, cancel, |run: RunInfo| async move {
        let site = DockerSite::connect(
            &run.run_id,
            &run.scenario,
            run.keep != Keep::Never,
            run.dir.join("logs"),
            run.images,
        )
        .await?;
        Ok(Arc::new(site) as Arc<dyn Site>)
    })
    .await
}

/// Runs `scenario` on the site `open` returns (the Docker engine, or a fake in the engine's
/// tests).
pub async fn run_on<F, Fut>(
    scenario: &Scenario,
    opts: &RunOptions,
    cancel: CancellationToken,
    open: F,
) -> anyhow::Result<RunResult>
where
    F: FnOnce(RunInfo) -> Fut,
    Fut: Future<Output = Result<Arc<dyn Site>, EnvironmentError>>,
{
    let clock = Clock::start();
    let run_id = new_run_id(&clock);
    let dir = opts
        .out_dir
        .clone()
        .unwrap_or_else(|| opts.reports_root.join(&scenario.name).join(&run_id));
    std::fs::create_dir_all(&dir).map_err(|e| {
        anyhow::Error::new(EnvironmentError {
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

    let events = Events::new(
        clock,
        opts.live.clone(),
        scenario.targets.iter().map(empty_report).collect(),
    );
    let info = RunInfo {
        run_id: run_id.clone(),
        scenario: scenario.name.clone(),
        dir: dir.clone(),
        keep: opts.keep,
        images: opts.images.clone(),
    };
    let (site, stop) = match open(info).await {
        Err(e) => (None, Some(Stop::Environment(e))),
        Ok(site) => {
            let run = RunContext {
                seed,
                clock,
                timeouts: scenario.timeouts,
                repository: dir.join("backups"),
            };
            let drill = Drill {
                scenario,
                site: site.as_ref(),
                run,
                events: events.clone(),
                dir: dir.clone(),
                previous: &opts.previous,
                run_id: &run_id,
            };
            let stop = tokio::select! {
                r = drill.execute() => r.err(),
                _ = cancel.cancelled() => Some(Stop::Interrupted),
            };
            (Some(site), stop)
        }
    };

    let mut report = build_report(scenario, &run_id, seed, &clock, &events, stop.as_ref());
    if let Some(site) = site {
        let span = events.begin("teardown", None);
        site.save_logs().await;
        let keep = match opts.keep {
            Keep::Always => true,
            Keep::OnFailure => report.outcome != RunOutcome::Met,
            Keep::Never => false,
        };
        if keep {
            site.keep();
            info!(
                "keeping the run's containers (DRILLRIG_KEEP); remove them with `drillrig gc` once this process has exited"
            );
            // How to reach them, passwords included: readable by this user only.
            let connections = site.connections().await;
            let path = dir.join(CONNECTIONS);
            match serde_json::to_vec_pretty(&connections)
                .map_err(anyhow::Error::new)
                .and_then(|bytes| util::write_private(&path, &bytes))
            {
                Ok(()) => info!("how to connect to the kept containers: {}", path.display()),
                Err(e) => warn!("cannot write {}: {e:#}", path.display()),
            }
        } else {
            match tokio::time::timeout(Duration::from_secs(120), site.teardown()).await {
                Ok(Ok(removed)) => info!("removed {removed}"),
                Ok(Err(e)) => warn!("teardown incomplete ({e:#}); `drillrig gc` removes the rest"),
                Err(_) => {
                    warn!("teardown did not finish within 120s; `drillrig gc` removes the rest")
                }
            }
        }
        events.end(span);
        report.timeline = events.progress().timeline;
        report.duration_ms = clock.millis();
    }
    report::write(&report, &dir).map_err(|e| {
        if host_storage_full(&e) {
            anyhow::Error::new(EnvironmentError {
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
    let exit = match (&report.outcome, &stop) {
        (_, Some(stop)) => stop.exit(),
        (RunOutcome::Met, None) => Exit::Met,
        (_, None) => Exit::Missed,
    };
    Ok(RunResult {
        report,
        dir,
        exit,
        error,
        fix,
    })
}

/// A kept run's logins to its containers, in the run folder (docs/outputs.md §1).
pub const CONNECTIONS: &str = "connections.json";

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
        return Err(EnvironmentError {
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
        seed: None,
        source: None,
        offsite: None,
        write_latency: None,
        replication: None,
        rto: Rto {
            target_ms: t.objectives.rto.as_millis() as u64,
            ..Rto::default()
        },
        rpo: Rpo::unmeasured(&t.objectives),
        checks: Vec::new(),
        restore: RestoreReport {
            from: t.restore.label(),
            ..RestoreReport::default()
        },
        backups: Vec::new(),
        workload: WorkloadReport {
            rate: t.rate,
            ..WorkloadReport::default()
        },
        detection: measure::Detection::default(),
        unasked_outages: Vec::new(),
    }
}

fn build_report(
    scenario: &Scenario,
    run_id: &str,
    seed: u64,
    clock: &Clock,
    events: &Events,
    stop: Option<&Stop>,
) -> Report {
    let p = events.progress();
    let targets: Vec<TargetReport> = p.targets.into_values().collect();
    let platform = scenario.platform.as_ref().map(|objectives| {
        report::PlatformReport::judge(objectives, &targets, p.cross_store.clone())
    });
    let (outcome, error) = match stop {
        Some(Stop::Interrupted) => (RunOutcome::Interrupted, Some(Stop::Interrupted.message())),
        Some(stop) => (RunOutcome::Error, Some(stop.message())),
        None if targets.iter().all(TargetReport::met)
            && platform.as_ref().is_none_or(|p| p.met) =>
        {
            (RunOutcome::Met, None)
        }
        None => (RunOutcome::Missed, None),
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
        timeline: p.timeline,
        targets,
        platform,
        faults: p.faults,
    }
}

/// The run's part of a drill: provision and seed every target, then drive each concurrently.
struct Drill<'a> {
    scenario: &'a Scenario,
    site: &'a dyn Site,
    run: RunContext,
    events: Events,
    dir: PathBuf,
    previous: &'a Previous,
    run_id: &'a str,
}

impl Drill<'_> {
    async fn execute(&self) -> Result<(), Stop> {
        let s = self.scenario;
        let clock = self.run.clock;
        // Restore tests start their targets when they restore; only drills provision and seed.
        let drills = s.targets.iter().any(|t| t.source.is_none());
        let span = drills.then(|| self.events.begin("provision", None));
        self.site
            .open()
            .await
            .map_err(|e| classify("create the run network", e))?;
        let mut targets: Vec<(&TargetSpec, Box<dyn Target>)> = Vec::new();
        for spec in &s.targets {
            let (target, image) = self
                .site
                .target(spec, &self.run)
                .await
                .map_err(|e| classify(&format!("target {}", spec.name), e))?;
            self.events.target(&spec.name, TargetEvent::Image(image));
            targets.push((spec, target));
        }
        // A restore test's target starts when its backup is restored.
        let drilled = |(spec, _): &&mut (&TargetSpec, Box<dyn Target>)| spec.source.is_none();
        try_join_all(
            targets
                .iter_mut()
                .filter(drilled)
                .map(|(spec, t)| async move {
                    let started = clock.millis();
                    bounded(
                        &format!("provision {}", spec.name),
                        s.timeouts.provision,
                        "timeouts.provision",
                        t.provision(),
                    )
                    .await?;
                    info!(
                        "{}: provisioned in {}",
                        spec.name,
                        util::seconds(clock.millis() - started)
                    );
                    Ok::<_, Stop>(())
                }),
        )
        .await?;
        if let Some(span) = span {
            self.events.end(span);
        }

        let span = drills.then(|| self.events.begin("seed", None));
        let seeds = try_join_all(targets.iter_mut().map(|(spec, t)| async move {
            if spec.source.is_some() {
                return Ok(None);
            }
            let at = clock.micros();
            let seeded = async {
                t.seed().await?;
                t.seed_facts().await
            };
            let facts = bounded(
                &format!("seed {}", spec.name),
                s.timeouts.seed,
                "timeouts.seed",
                seeded,
            )
            .await?;
            info!(
                "{}: seeded {} rows of {} in {}",
                spec.name,
                spec.dataset.rows,
                spec.dataset.fixture,
                util::seconds((clock.micros() - at) / 1000)
            );
            self.events.target(
                &spec.name,
                TargetEvent::Seeded(report::SeedReport {
                    started_ms: at / 1000,
                    datasets: facts.clone(),
                }),
            );
            Ok::<_, Stop>(Some(Seeded { at, facts }))
        }))
        .await?;
        if let Some(span) = span {
            self.events.end(span);
        }

        let executor = Executor {
            scenario: s,
            clock,
            events: self.events.clone(),
            repo: Repository::new(self.run.repository.clone()),
            dir: self.dir.clone(),
            finished: s
                .targets
                .iter()
                .map(|t| (t.name.clone(), tokio::sync::watch::Sender::new(false)))
                .collect(),
            site: self.site,
            offsite: match &s.offsite {
                Some(spec) => Some(
                    crate::offsite::Offsite::open(spec, &format!("{}/{}", s.name, self.run_id))
                        .map_err(|e| classify("open the offsite repository", e))?,
                ),
                None => None,
            },
            site_alive: CancellationToken::new(),
            site_lost: tokio::sync::OnceCell::new(),
            site_loss_barrier: tokio::sync::Barrier::new(
                s.faults
                    .iter()
                    .filter(|f| f.kind == crate::spec::FaultKind::SiteLoss)
                    .count(),
            ),
            chain: s
                .platform
                .as_ref()
                .and_then(|p| p.workload.as_ref())
                .map(|w| {
                    let writers = w
                        .chain
                        .iter()
                        .map(|name| {
                            let (_, t) = targets
                                .iter()
                                .find(|(spec, _)| &spec.name == name)
                                .expect("validation checked the platform workload's targets");
                            t.writer()
                        })
                        .collect();
                    workloads::Chain::start(w.chain.to_vec(), writers, w.rate, clock)
                }),
            recovered: std::sync::Mutex::new(BTreeMap::new()),
        };
        let workload_start = clock.micros();
        try_join_all(targets.iter_mut().zip(&seeds).map(|((spec, t), seeded)| {
            let executor = &executor;
            async move {
                let ended = match (&spec.source, seeded) {
                    (Some(source), _) => {
                        executor
                            .restore_test(spec, source, t.as_mut(), self.previous)
                            .await
                    }
                    (None, Some(seeded)) => {
                        executor
                            .drive(spec, t.as_mut(), seeded, workload_start)
                            .await
                    }
                    (None, None) => unreachable!("every drilled target is seeded"),
                };
                executor.finish(&spec.name);
                ended
            }
        }))
        .await?;
        if let Some(checked) = executor.cross_store() {
            info!("platform: {}", checked.summary());
            self.events.cross_store(checked);
        }
        Ok(())
    }
}
