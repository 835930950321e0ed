//! The `drillrig` command: a thin layer over the library that maps outcomes to exit codes
//! (0 met, 1 missed or failed, 2 invalid scenario or usage, 3 environment, 130 interrupted).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use drillrig::docker::{self, EnvironmentError};
use drillrig::drill::{self, Keep, RunOptions};
use drillrig::history::regression::{self, Gate, Verdict};
use drillrig::history::{self, History, RunRecord};
use drillrig::live::Board;
use drillrig::measure::projection::{self, Projection};
use drillrig::scenario::Scenario;
use drillrig::suite::{self, Partition};
use drillrig::{report, scenario};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

#[derive(Parser)]
#[command(
    name = "drillrig",
    version,
    about = "Disaster-recovery drills with measured RTO and RPO"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run drills: scenario files or folders of them, as one suite with one exit code.
    Run {
        /// Scenario files, or folders whose *.toml files are scenarios.
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        /// Output folder of a single drill (default: <reports>/<scenario>/<run-id>/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Image for one target, overriding the scenario and the default (repeatable).
        #[arg(long = "image", value_name = "TARGET=IMAGE")]
        images: Vec<String>,
        /// Drills run at once (default: one per two cores, at most one per 4 GiB of memory).
        #[arg(long, short = 'j')]
        jobs: Option<usize>,
        /// Run only the K-th of N shards of the suite (scenarios ordered by name, every N-th).
        #[arg(long, value_name = "K/N", default_value = "1/1")]
        partition: Partition,
        /// Exit 1 when a drill's RTO regressed against its recent runs (see --regression-ratio).
        #[arg(long)]
        fail_on_regression: bool,
        #[command(flatten)]
        gate: GateArgs,
        #[command(flatten)]
        outputs: Outputs,
    },
    /// Judge the latest run of each scenario in the history against its recent runs; exit 1 on
    /// a regression.
    Compare {
        /// Scenario names (default: every scenario in the history).
        scenarios: Vec<String>,
        #[command(flatten)]
        gate: GateArgs,
        #[command(flatten)]
        outputs: Outputs,
    },
    /// Write reports from the history: the latest run of each scenario, and trends over runs.
    Report {
        #[command(flatten)]
        outputs: Outputs,
    },
    /// Check scenario files without starting anything.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Remove containers, volumes and networks of drillrig runs whose process has exited
    /// (runs kept with DRILLRIG_KEEP included).
    Gc,
}

#[derive(Args)]
struct GateArgs {
    /// A regression: achieved RTO above this ratio × the median of the recent runs.
    #[arg(long, default_value_t = Gate::default().ratio)]
    regression_ratio: f64,
    /// How many recent runs of the same scenario the median is taken over.
    #[arg(long, default_value_t = Gate::default().window)]
    regression_window: usize,
}

impl GateArgs {
    fn gate(&self) -> Result<Gate, String> {
        if !(self.regression_ratio.is_finite() && self.regression_ratio >= 1.0) {
            return Err(format!(
                "--regression-ratio {}: expected a ratio of at least 1.0, e.g. 1.25",
                self.regression_ratio
            ));
        }
        if self.regression_window == 0 {
            return Err("--regression-window 0: expected at least 1 run".into());
        }
        Ok(Gate {
            ratio: self.regression_ratio,
            window: self.regression_window,
        })
    }
}

#[derive(Args)]
struct Outputs {
    /// Root of the reports folder.
    #[arg(long, default_value = "reports", env = "DRILLRIG_REPORTS")]
    reports: PathBuf,
    /// The run history: a SQLite file (default <reports>/history.sqlite), a postgres://… URL,
    /// or `none`.
    #[arg(long, env = "DRILLRIG_HISTORY")]
    history: Option<String>,
    /// Write JUnit XML here.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Write a Markdown summary here (e.g. "$GITHUB_STEP_SUMMARY").
    #[arg(long, value_name = "FILE")]
    summary: Option<PathBuf>,
    /// Write OpenMetrics text here.
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
    /// Write the HTML report (latest runs, phase timelines, RTO/RPO trends) here.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

impl Outputs {
    /// Where the history lives, or `None` for `--history none`.
    fn history_location(&self) -> Option<String> {
        match self.history.as_deref() {
            Some("none") => None,
            Some(location) => Some(location.to_string()),
            None => Some(self.reports.join("history.sqlite").display().to_string()),
        }
    }

    async fn open_history(&self) -> Result<Option<History>, u8> {
        let Some(location) = self.history_location() else {
            return Ok(None);
        };
        match History::open(&location).await {
            Ok(h) => Ok(Some(h)),
            Err(e) => {
                eprintln!("error: history {location}: {e:#}");
                eprintln!("  fix: check the path or URL, or pass --history none to record nothing");
                Err(EXIT_ENVIRONMENT)
            }
        }
    }

    /// Every run in the history, for a command that reads it (`compare`, `report`).
    async fn read_history(&self, command: &str) -> Result<Vec<RunRecord>, u8> {
        let Some(history) = self.open_history().await? else {
            eprintln!(
                "error: {command} reads the history: --history none leaves nothing to {command}"
            );
            return Err(EXIT_USAGE);
        };
        history.runs().await.map_err(|e| {
            eprintln!("error: read the history: {e:#}");
            EXIT_ENVIRONMENT
        })
    }

    /// Writes the files asked for: JUnit, summary and metrics about `runs`, the HTML report
    /// about `all` the runs in the history.
    fn write(
        &self,
        runs: &[RunRecord],
        verdicts: &[Verdict],
        projections: &[Projection],
        all: &[RunRecord],
    ) -> Result<(), u8> {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let files: [(&Option<PathBuf>, &dyn Fn() -> String); 4] = [
            (&self.junit, &|| report::ci::junit(runs, projections)),
            (&self.summary, &|| {
                report::ci::summary(runs, verdicts, projections)
            }),
            (&self.metrics, &|| report::ci::openmetrics(runs)),
            (&self.html, &|| report::html::html(all, &now)),
        ];
        for (path, text) in files {
            if let Some(path) = path
                && let Err(e) = report::write_atomically(path, text().as_bytes())
            {
                eprintln!("error: {e:#}");
                return Err(EXIT_ENVIRONMENT);
            }
        }
        Ok(())
    }
}

const EXIT_USAGE: u8 = 2;
const EXIT_ENVIRONMENT: u8 = 3;
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    // A bug shows as one line, not a backtrace; the exit code is 101 as for any panic.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("internal error (a drillrig bug; please report it): {info}");
    }));
    let cli = Cli::parse();
    // Drills on a terminal get live lines; their log lines then print above them, and only
    // warnings do unless DRILLRIG_LOG asks for more (the lines show the phases).
    let board = match cli.command {
        Command::Run { .. } => Board::on_terminal(),
        _ => None,
    };
    let (writer, default_level) = match &board {
        Some(b) => (BoxMakeWriter::new(b.clone()), "drillrig=warn"),
        None => (BoxMakeWriter::new(std::io::stderr), "drillrig=info"),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DRILLRIG_LOG")
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ENVIRONMENT);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Validate { files } => validate(&files),
            Command::Gc => gc().await,
            Command::Run {
                scenarios,
                out,
                images,
                jobs,
                partition,
                fail_on_regression,
                gate,
                outputs,
            } => {
                let suite = Suite {
                    out,
                    images,
                    jobs,
                    partition,
                    fail_on_regression,
                };
                run(&scenarios, suite, &gate, &outputs, board.as_ref()).await
            }
            Command::Compare {
                scenarios,
                gate,
                outputs,
            } => compare(&scenarios, &gate, &outputs).await,
            Command::Report { outputs } => report_from_history(&outputs).await,
        }
    });
    ExitCode::from(code)
}

/// Runs `print` above the live lines of the drills still running, if any are drawn.
fn above<R>(board: Option<&Board>, print: impl FnOnce() -> R) -> R {
    match board {
        Some(b) => b.suspend(print),
        None => print(),
    }
}

fn validate(files: &[PathBuf]) -> u8 {
    let mut failed = false;
    for file in files {
        match scenario::load(file) {
            Ok(s) => println!(
                "ok: {} ({}: {} target(s), {} fault(s))",
                file.display(),
                s.name,
                s.targets.len(),
                s.faults.len()
            ),
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    if failed { EXIT_USAGE } else { 0 }
}

fn environment_error(e: &EnvironmentError) -> u8 {
    eprintln!("error: {}\n  fix: {}", e.cause, e.fix);
    EXIT_ENVIRONMENT
}

async fn gc() -> u8 {
    let api = match docker::connect().await {
        Ok(api) => api,
        Err(e) => return environment_error(&e),
    };
    match docker::gc::collect(&api, true).await {
        Ok(dead) if dead.is_empty() => {
            println!("nothing to remove");
            0
        }
        Ok(dead) => {
            for run in dead {
                let r = run.removed;
                println!(
                    "removed run {}: {} container(s), {} volume(s), {} network(s)",
                    run.run_id, r.containers, r.volumes, r.networks
                );
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_ENVIRONMENT
        }
    }
}

/// How `run` runs its scenarios.
struct Suite {
    out: Option<PathBuf>,
    images: Vec<String>,
    jobs: Option<usize>,
    partition: Partition,
    fail_on_regression: bool,
}

/// The scenarios of `paths`, in this partition; every invalid file is reported before any
/// drill starts.
fn load_suite(paths: &[PathBuf], partition: Partition) -> Result<Vec<(PathBuf, Scenario)>, u8> {
    let files = suite::scenario_files(paths).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_USAGE
    })?;
    let mut loaded = Vec::new();
    let mut invalid = false;
    for file in files {
        match scenario::load(&file) {
            Ok(s) => loaded.push((file, s)),
            Err(e) => {
                eprintln!("error: {e}");
                invalid = true;
            }
        }
    }
    if invalid {
        return Err(EXIT_USAGE);
    }
    Ok(suite::partition(
        loaded,
        |(file, s)| (s.name.as_str(), file.as_path()),
        partition,
    ))
}

/// `--image TARGET=IMAGE` overrides, each naming a target some scenario of the suite has.
fn image_overrides(
    specs: &[String],
    scenarios: &[(PathBuf, Scenario)],
) -> Result<BTreeMap<String, String>, u8> {
    let mut overrides = BTreeMap::new();
    for spec in specs {
        let Some((target, image)) = spec
            .split_once('=')
            .filter(|(t, i)| !t.is_empty() && !i.is_empty())
        else {
            eprintln!(
                "error: --image {spec:?}: expected TARGET=IMAGE, e.g. --image pg=postgres:15"
            );
            return Err(EXIT_USAGE);
        };
        if !scenarios.iter().any(|(_, s)| s.target(target).is_some()) {
            eprintln!(
                "error: --image {spec:?}: no scenario of this run has a target named {target:?}"
            );
            return Err(EXIT_USAGE);
        }
        overrides.insert(target.to_string(), image.to_string());
    }
    Ok(overrides)
}

async fn run(
    paths: &[PathBuf],
    suite: Suite,
    gate: &GateArgs,
    outputs: &Outputs,
    board: Option<&Board>,
) -> u8 {
    let gate = match gate.gate() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let scenarios = match load_suite(paths, suite.partition) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if scenarios.is_empty() {
        println!(
            "partition {} holds no scenario: nothing to run",
            suite.partition
        );
        return 0;
    }
    // A scenario with a projection runs once per dataset size, in the same shard.
    let expanded: Vec<(&PathBuf, Scenario)> = scenarios
        .iter()
        .flat_map(|(file, s)| s.expand_projection().into_iter().map(move |x| (file, x)))
        .collect();
    let drill_count = expanded.len();
    if suite.out.is_some() && drill_count > 1 {
        eprintln!(
            "error: --out names the folder of one drill, and this run has {drill_count} \
             (a projection runs once per size): leave it out (each drill writes into \
             <reports>/<scenario>/<run-id>/)"
        );
        return EXIT_USAGE;
    }
    let images = match image_overrides(&suite.images, &scenarios) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let keep_var = std::env::var("DRILLRIG_KEEP").unwrap_or_default();
    let Some(keep) = Keep::parse(&keep_var) else {
        eprintln!("error: DRILLRIG_KEEP={keep_var:?}: expected never, on-failure or always");
        return EXIT_USAGE;
    };
    let jobs = match suite.jobs {
        Some(0) => {
            eprintln!("error: --jobs 0: expected at least 1");
            return EXIT_USAGE;
        }
        Some(n) => n,
        None => suite::default_jobs(),
    };
    let mut history = match outputs.open_history().await {
        Ok(h) => h,
        Err(code) => return code,
    };
    if drill_count > 1 {
        info!(
            "suite of {drill_count} drill(s), {jobs} at a time, partition {}",
            suite.partition
        );
    }

    let cancel = CancellationToken::new();
    tokio::spawn(escalate_signals(cancel.clone()));
    let options = |s: &Scenario| RunOptions {
        out_dir: suite.out.clone(),
        reports_root: outputs.reports.clone(),
        images: images
            .iter()
            .filter(|(t, _)| s.target(t).is_some())
            .map(|(t, i)| (t.clone(), i.clone()))
            .collect(),
        keep,
        live: board.map(|b| b.lines(s)).unwrap_or_default(),
    };
    let mut drills = futures::stream::iter(expanded.iter())
        .map(|(file, s)| {
            let cancel = cancel.clone();
            let options = options(s);
            async move {
                // After an interrupt, drills not yet started do not start.
                if cancel.is_cancelled() {
                    return (file, s, None);
                }
                let result = drill::run(s, &options, cancel)
                    .instrument(tracing::info_span!("drill", scenario = %s.name))
                    .await;
                (file, s, Some(result))
            }
        })
        .buffer_unordered(jobs);

    let mut codes = Vec::new();
    let mut records = Vec::new();
    while let Some((file, s, result)) = drills.next().await {
        let Some(result) = result else {
            above(board, || {
                println!("drillrig {}: not started (interrupted)", s.name)
            });
            codes.push(EXIT_INTERRUPTED);
            continue;
        };
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                codes.push(above(board, || {
                    match e.downcast_ref::<EnvironmentError>() {
                        Some(env) => environment_error(env),
                        None => {
                            eprintln!("error: {}: {e:#}", s.name);
                            1
                        }
                    }
                }));
                continue;
            }
        };
        above(board, || {
            print!("{}", report::terminal(&result.report));
            println!("report: {}", result.dir.join("report.json").display());
            if let Some(error) = &result.error {
                eprintln!("error: {error}");
            }
            if let Some(fix) = &result.fix {
                eprintln!("  fix: {fix}");
            }
        });
        codes.push(result.exit_code as u8);
        let record = RunRecord::from_report(
            &result.report,
            history::git_revision(file),
            Some(&result.dir),
        );
        if let Some(h) = history.as_mut()
            && let Err(e) = h.record(&record).await
        {
            eprintln!("error: {e:#}");
            codes.push(EXIT_ENVIRONMENT);
        }
        records.push(record);
    }
    records.sort_by(|a, b| (&a.scenario, &a.started_at).cmp(&(&b.scenario, &b.started_at)));

    let all = match &history {
        Some(h) => h.runs().await.unwrap_or_else(|e| {
            eprintln!("error: read the history: {e:#}");
            codes.push(EXIT_ENVIRONMENT);
            Vec::new()
        }),
        None => records.clone(),
    };
    let verdicts: Vec<Verdict> = records
        .iter()
        .flat_map(|r| regression::judge(r, &all, gate))
        .collect();
    print_verdicts(&verdicts);
    if suite.fail_on_regression && verdicts.iter().any(|v| v.regressed) {
        eprintln!("error: RTO regression (--fail-on-regression)");
        codes.push(1);
    }
    if records.len() > 1 {
        print!("{}", report::terminal_suite(&records));
    }
    let projections = project(&scenarios, &records, &outputs.reports);
    if projections.iter().any(|p| p.projected_miss) {
        codes.push(1);
    }
    if let Err(code) = outputs.write(&records, &verdicts, &projections, &all) {
        codes.push(code);
    }
    suite::worst_exit(codes)
}

/// Fits and prints the RTO projection of each scenario that asks for one, from this run's
/// drills at each size, and writes it to `<reports>/<scenario>/projection.json`.
fn project(
    scenarios: &[(PathBuf, Scenario)],
    records: &[RunRecord],
    reports: &std::path::Path,
) -> Vec<Projection> {
    let mut projections = Vec::new();
    for (_, s) in scenarios {
        let Some(target) = s.projected_target() else {
            continue;
        };
        let spec = target.dataset.projection.as_ref().expect("projected");
        let measured: Vec<(u64, Option<i64>)> = records
            .iter()
            .filter(|r| r.scenario == s.name)
            .filter_map(|r| r.targets.iter().find(|t| t.target == target.name))
            .map(|t| (t.dataset_rows.unwrap_or(0) as u64, t.rto_achieved_ms))
            .collect();
        let points: Vec<(u64, i64)> = measured
            .iter()
            .filter_map(|&(rows, rto)| rto.map(|ms| (rows, ms)))
            .collect();
        let objective = target.objectives.rto.as_millis() as i64;
        let Some(mut p) = projection::project(
            &s.name,
            &target.name,
            &points,
            spec.production_rows,
            objective,
        ) else {
            println!(
                "{} / {}: no RTO projection: {} size(s) achieved an RTO, 2 needed",
                s.name,
                target.name,
                points.len()
            );
            continue;
        };
        p.unmeasured_sizes = measured
            .iter()
            .filter(|(_, rto)| rto.is_none())
            .map(|(rows, _)| *rows)
            .collect();
        println!(
            "{} / {}: RTO projected to {} at {} rows ({}; objective {}): {}, \
             from {} (fit: {} + {} per million rows; error rms {}, worst {:.0}%)",
            s.name,
            target.name,
            report::seconds(p.projected_ms.max(0) as u64),
            p.production_rows,
            if p.projected_miss { "MISSED" } else { "met" },
            report::seconds(objective as u64),
            if p.projected_miss {
                "projected miss"
            } else {
                "within the objective"
            },
            p.points
                .iter()
                .map(|(rows, ms)| format!("{rows} rows: {}", report::seconds(*ms as u64)))
                .collect::<Vec<_>>()
                .join(", "),
            report::seconds(p.fixed_ms.max(0.0).round() as u64),
            report::seconds(p.ms_per_million_rows.max(0.0).round() as u64),
            report::seconds(p.rms_error_ms.round() as u64),
            p.max_error_ratio * 100.0
        );
        let file = reports.join(&s.name).join("projection.json");
        let written = std::fs::create_dir_all(reports.join(&s.name))
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                let mut json = serde_json::to_vec_pretty(&p)?;
                json.push(b'\n');
                report::write_atomically(&file, &json)
            });
        if let Err(e) = written {
            eprintln!("error: write {}: {e:#}", file.display());
        }
        projections.push(p);
    }
    projections
}

fn print_verdicts(verdicts: &[Verdict]) {
    for v in verdicts {
        let line = match (v.regressed, v.ratio, v.baseline_ms) {
            (true, Some(r), Some(b)) => format!(
                "REGRESSION: RTO {} is {r:.2}× the median {} of its last {} run(s)",
                v.achieved_ms
                    .map_or("none".into(), |a| report::seconds(a as u64)),
                report::seconds(b as u64),
                v.baseline_runs
            ),
            (false, Some(r), Some(b)) => format!(
                "RTO {r:.2}× the median {} of its last {} run(s): within bounds",
                report::seconds(b as u64),
                v.baseline_runs
            ),
            _ => v.note.clone().unwrap_or_default(),
        };
        println!("{} / {}: {line}", v.scenario, v.target);
    }
}

async fn compare(names: &[String], gate: &GateArgs, outputs: &Outputs) -> u8 {
    let gate = match gate.gate() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let all = match outputs.read_history("compare").await {
        Ok(all) => all,
        Err(code) => return code,
    };
    let latest = history::latest_per_scenario(&all);
    for name in names {
        if !latest.iter().any(|r| &r.scenario == name) {
            eprintln!("error: the history has no run of scenario {name:?}");
            return EXIT_USAGE;
        }
    }
    let judged: Vec<RunRecord> = latest
        .into_iter()
        .filter(|r| names.is_empty() || names.contains(&r.scenario))
        .collect();
    let verdicts: Vec<Verdict> = judged
        .iter()
        .flat_map(|r| regression::judge(r, &all, gate))
        .collect();
    print_verdicts(&verdicts);
    if let Err(code) = outputs.write(&judged, &verdicts, &[], &all) {
        return code;
    }
    u8::from(verdicts.iter().any(|v| v.regressed))
}

async fn report_from_history(outputs: &Outputs) -> u8 {
    let all = match outputs.read_history("report").await {
        Ok(all) => all,
        Err(code) => return code,
    };
    let latest = history::latest_per_scenario(&all);
    let verdicts: Vec<Verdict> = latest
        .iter()
        .flat_map(|r| regression::judge(r, &all, Gate::default()))
        .collect();
    if let Err(code) = outputs.write(&latest, &verdicts, &[], &all) {
        return code;
    }
    println!(
        "{} run(s) of {} scenario(s) in the history",
        all.len(),
        latest.len()
    );
    0
}

/// First SIGINT or SIGTERM: stop the drill, write the partial report, remove the run's
/// resources. Second: remove everything this process created now, and exit.
async fn escalate_signals(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    let next = async |int: &mut tokio::signal::unix::Signal,
                      term: &mut tokio::signal::unix::Signal| {
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    };
    next(&mut int, &mut term).await;
    eprintln!(
        "interrupted: stopping the drill and removing its containers (interrupt again to force)"
    );
    cancel.cancel();
    next(&mut int, &mut term).await;
    eprintln!("interrupted again: removing this run's containers now");
    if let Ok(api) = docker::connect().await {
        let _ = docker::remove_owned_by(&api, &docker::process_identity()).await;
    }
    std::process::exit(i32::from(EXIT_INTERRUPTED));
}
