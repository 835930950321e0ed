//! The `drillrig` command: a thin layer over the library that maps outcomes to exit codes
//! (0 met, 1 missed or failed, 2 invalid scenario or usage, 3 environment, 130 interrupted).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use drillrig::docker::{self, EnvironmentError};
use drillrig::drill::{Keep, RunOptions};
use drillrig::exit::Exit;
use drillrig::history::RunRecord;
use drillrig::history::regression::{Gate, Verdict};
use drillrig::live::Board;
use drillrig::spec::Scenario;
use drillrig::suite::{self, Finished, Partition, Projected};
use drillrig::suite_end::{self, SuiteEnd};
use drillrig::{notify, publish, report, scenario, util};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::info;
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
        /// POST a JSON summary of the suite to this http(s) URL when it ends (see --notify-on).
        #[arg(
            long,
            value_name = "URL",
            env = "DRILLRIG_NOTIFY",
            hide_env_values = true
        )]
        notify: Option<String>,
        /// When to notify: only when the suite's exit is not 0, or after every suite.
        #[arg(long, value_enum, value_name = "WHEN", default_value_t = NotifyOn::Failure)]
        notify_on: NotifyOn,
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
    Gc {
        /// Only these runs (the run id of report.json), and only once their process has exited.
        runs: Vec<String>,
    },
    /// Print the JSON Schema of scenario files, for editors (docs/writing-scenarios.md §4).
    Schema,
}

/// `--notify-on`.
#[derive(Clone, Copy, ValueEnum)]
enum NotifyOn {
    /// When the suite's exit is not 0.
    Failure,
    /// After every suite.
    Always,
}

impl From<NotifyOn> for notify::When {
    fn from(on: NotifyOn) -> Self {
        match on {
            NotifyOn::Failure => notify::When::Failure,
            NotifyOn::Always => notify::When::Always,
        }
    }
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
    /// The library's view of these options: the history's location resolved (`none`: no
    /// history; default `<reports>/history.sqlite`).
    fn resolved(&self) -> suite_end::Outputs {
        suite_end::Outputs {
            reports: self.reports.clone(),
            history: match self.history.as_deref() {
                Some("none") => None,
                Some(location) => Some(location.to_string()),
                None => Some(self.reports.join("history.sqlite").display().to_string()),
            },
            junit: self.junit.clone(),
            summary: self.summary.clone(),
            metrics: self.metrics.clone(),
            html: self.html.clone(),
        }
    }

    /// Every run in the history, for a command that reads it (`compare`, `report`).
    async fn read_history(&self, command: &str) -> Result<Vec<RunRecord>, Exit> {
        let outputs = self.resolved();
        let history = match outputs.open_history().await {
            Ok(Some(history)) => history,
            Ok(None) => {
                eprintln!(
                    "error: {command} reads the history: --history none leaves nothing to {command}"
                );
                return Err(Exit::Usage);
            }
            Err(e) => return Err(history_error(&e)),
        };
        history.runs().await.map_err(|e| {
            eprintln!("error: read the history: {e:#}");
            Exit::Environment
        })
    }
}

/// A history that cannot be opened: exit 3, with the fix.
fn history_error(e: &anyhow::Error) -> Exit {
    eprintln!("error: {e:#}");
    eprintln!("  fix: check the path or URL, or pass --history none to record nothing");
    Exit::Environment
}

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
            return Exit::Environment.into();
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Validate { files } => validate(&files),
            Command::Gc { runs } => gc(&runs).await,
            Command::Schema => {
                print!("{}", scenario::json_schema::scenario_schema_text());
                Exit::Met
            }
            Command::Run {
                scenarios,
                out,
                images,
                jobs,
                partition,
                fail_on_regression,
                notify,
                notify_on,
                gate,
                outputs,
            } => {
                let suite = Suite {
                    out,
                    images,
                    jobs,
                    partition,
                    fail_on_regression,
                    notify,
                    notify_on: notify_on.into(),
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
    code.into()
}

/// Runs `print` above the live lines of the drills still running, if any are drawn.
fn above<R>(board: Option<&Board>, print: impl FnOnce() -> R) -> R {
    match board {
        Some(b) => b.suspend(print),
        None => print(),
    }
}

fn validate(files: &[PathBuf]) -> Exit {
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
    if failed { Exit::Usage } else { Exit::Met }
}

fn environment_error(e: &EnvironmentError) -> Exit {
    eprintln!("error: {}\n  fix: {}", e.cause, e.fix);
    Exit::Environment
}

async fn gc(runs: &[String]) -> Exit {
    let api = match docker::connect().await {
        Ok(api) => api,
        Err(e) => return environment_error(&e),
    };
    let removed = if runs.is_empty() {
        docker::gc::collect(&api, true).await
    } else {
        docker::gc::collect_named(&api, runs).await
    };
    match removed {
        Ok(dead) if dead.is_empty() => {
            println!("nothing to remove");
            Exit::Met
        }
        Ok(dead) => {
            for run in dead {
                let r = run.removed;
                println!(
                    "removed run {}: {} container(s), {} volume(s), {} network(s)",
                    run.run_id, r.containers, r.volumes, r.networks
                );
            }
            Exit::Met
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::Environment
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
    /// `--notify URL`, checked by `run` before any drill starts.
    notify: Option<String>,
    notify_on: notify::When,
}

/// The scenarios of `paths`, in this partition; every invalid file is reported before any
/// drill starts.
fn load_suite(paths: &[PathBuf], partition: Partition) -> Result<Vec<(PathBuf, Scenario)>, Exit> {
    let files = suite::scenario_files(paths).map_err(|e| {
        eprintln!("error: {e}");
        Exit::Usage
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
        return Err(Exit::Usage);
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
) -> Result<BTreeMap<String, String>, Exit> {
    let mut overrides = BTreeMap::new();
    for spec in specs {
        let Some((target, image)) = spec
            .split_once('=')
            .filter(|(t, i)| !t.is_empty() && !i.is_empty())
        else {
            eprintln!(
                "error: --image {spec:?}: expected TARGET=IMAGE, e.g. --image pg=postgres:15"
            );
            return Err(Exit::Usage);
        };
        if !scenarios.iter().any(|(_, s)| s.target(target).is_some()) {
            eprintln!(
                "error: --image {spec:?}: no scenario of this run has a target named {target:?}"
            );
            return Err(Exit::Usage);
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
) -> Exit {
    let gate = match gate.gate() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Usage;
        }
    };
    // An empty DRILLRIG_NOTIFY (a CI secret that is not set) asks for nothing.
    let webhook = match suite
        .notify
        .as_deref()
        .filter(|url| !url.trim().is_empty())
        .map(notify::Webhook::parse)
        .transpose()
    {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: --notify (or DRILLRIG_NOTIFY): {e}");
            return Exit::Usage;
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
        return Exit::Met;
    }
    // A scenario with a projection runs once per dataset size, in the same shard.
    let expanded = suite::expand(&scenarios);
    let drill_count = expanded.len();
    if suite.out.is_some() && drill_count > 1 {
        eprintln!(
            "error: --out names the folder of one drill, and this run has {drill_count} \
             (a projection runs once per size): leave it out (each drill writes into \
             <reports>/<scenario>/<run-id>/)"
        );
        return Exit::Usage;
    }
    let images = match image_overrides(&suite.images, &scenarios) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let keep_var = std::env::var("DRILLRIG_KEEP").unwrap_or_default();
    let Some(keep) = Keep::parse(&keep_var) else {
        eprintln!("error: DRILLRIG_KEEP={keep_var:?}: expected never, on-failure or always");
        return Exit::Usage;
    };
    let jobs = match suite.jobs {
        Some(0) => {
            eprintln!("error: --jobs 0: expected at least 1");
            return Exit::Usage;
        }
        Some(n) => n,
        None => suite::default_jobs(),
    };
    let mut end = match SuiteEnd::open(outputs.resolved()).await {
        Ok(end) => end,
        Err(e) => return history_error(&e),
    };
    if drill_count > 1 {
        info!(
            "suite of {drill_count} drill(s), {jobs} at a time, partition {}",
            suite.partition
        );
    }
    // Restore tests compare with what earlier runs measured (`drift`, `backup-size`).
    let previous = match end.previous(&scenarios).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Exit::Environment;
        }
    };

    let cancel = CancellationToken::new();
    tokio::spawn(escalate_signals(cancel.clone()));
    let options = |s: &Scenario| RunOptions {
        previous: previous.get(&s.name).cloned().unwrap_or_default(),
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
    let mut drills = std::pin::pin!(suite::run(&expanded, jobs, cancel, options));
    let mut codes = Vec::new();
    while let Some((file, s, finished)) = drills.next().await {
        codes.push(finished.exit());
        let result = match finished {
            Finished::NotStarted => {
                above(board, || {
                    println!("drillrig {}: not started (interrupted)", s.name)
                });
                continue;
            }
            Finished::Failed(e) => {
                above(board, || match e.downcast_ref::<EnvironmentError>() {
                    Some(env) => environment_error(env),
                    None => {
                        eprintln!("error: {}: {e:#}", s.name);
                        Exit::Missed
                    }
                });
                continue;
            }
            Finished::Ran(result) => *result,
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
        end.record(&result.report, file, &result.dir).await;
    }
    let ended = end.finish(&scenarios, gate, suite.fail_on_regression).await;
    print_verdicts(&ended.verdicts);
    for problem in &ended.problems {
        eprintln!("error: {}", problem.message);
    }
    if ended.records.len() > 1 {
        print!("{}", publish::terminal_suite(&ended.records));
    }
    print_projections(&ended.projected);
    let exit = ended.exit(codes);
    if let Some(webhook) = &webhook {
        notify_end(webhook, suite.notify_on, &ended.records, exit).await;
    }
    exit
}

/// Sends the suite's notification if one is due, says how it went and records it in each run's
/// folder; whatever happens, the exit stays as it is.
async fn notify_end(
    webhook: &notify::Webhook,
    when: notify::When,
    records: &[RunRecord],
    exit: Exit,
) {
    let Some((delivery, unrecorded)) = suite_end::notify(webhook, when, records, exit).await else {
        return;
    };
    if delivery.ok {
        info!(
            "notified {} ({} attempt(s))",
            delivery.target, delivery.attempts
        );
    } else {
        eprintln!(
            "warning: notification to {} failed after {} attempt(s): {}",
            delivery.target,
            delivery.attempts,
            delivery.error.as_deref().unwrap_or("unknown cause")
        );
    }
    for e in unrecorded {
        eprintln!("warning: record the notification: {e:#}");
    }
}

/// Prints each scenario's RTO projection.
fn print_projections(projected: &[Projected]) {
    for p in projected {
        let p = match p {
            Projected::Fitted(p) => p,
            Projected::TooFewPoints {
                scenario,
                target,
                measured,
            } => {
                println!(
                    "{scenario} / {target}: no RTO projection: {measured} size(s) achieved an RTO, 2 needed"
                );
                continue;
            }
        };
        println!(
            "{} / {}: RTO projected to {} at {} rows ({}; objective {}): {}, \
             from {} (fit: {} + {} per million rows; error rms {}, worst {:.0}%)",
            p.scenario,
            p.target,
            util::seconds(p.projected_ms.max(0) as u64),
            p.production_rows,
            if p.projected_miss { "MISSED" } else { "met" },
            util::seconds(p.objective_ms.max(0) as u64),
            if p.projected_miss {
                "projected miss"
            } else {
                "within the objective"
            },
            p.points
                .iter()
                .map(|(rows, ms)| format!("{rows} rows: {}", util::seconds(*ms as u64)))
                .collect::<Vec<_>>()
                .join(", "),
            util::seconds(p.fixed_ms.max(0.0).round() as u64),
            util::seconds(p.ms_per_million_rows.max(0.0).round() as u64),
            util::seconds(p.rms_error_ms.round() as u64),
            p.max_error_ratio * 100.0
        );
    }
}

fn print_verdicts(verdicts: &[Verdict]) {
    for v in verdicts {
        let line = match (v.regressed, v.ratio, v.baseline_ms) {
            (true, Some(r), Some(b)) => format!(
                "REGRESSION: RTO {} is {r:.2}× the median {} of its last {} run(s)",
                v.achieved_ms
                    .map_or("none".into(), |a| util::seconds(a as u64)),
                util::seconds(b as u64),
                v.baseline_runs
            ),
            (false, Some(r), Some(b)) => format!(
                "RTO {r:.2}× the median {} of its last {} run(s): within bounds",
                util::seconds(b as u64),
                v.baseline_runs
            ),
            _ => v.note.clone().unwrap_or_default(),
        };
        println!("{} / {}: {line}", v.scenario, v.target);
    }
}

async fn compare(names: &[String], gate: &GateArgs, outputs: &Outputs) -> Exit {
    let gate = match gate.gate() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Usage;
        }
    };
    let all = match outputs.read_history("compare").await {
        Ok(all) => all,
        Err(code) => return code,
    };
    match suite_end::compare(names, &all, gate, &outputs.resolved()) {
        Ok(verdicts) => {
            print_verdicts(&verdicts);
            if verdicts.iter().any(|v| v.regressed) {
                Exit::Missed
            } else {
                Exit::Met
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            Exit::Usage
        }
    }
}

async fn report_from_history(outputs: &Outputs) -> Exit {
    let all = match outputs.read_history("report").await {
        Ok(all) => all,
        Err(code) => return code,
    };
    match suite_end::report(&all, &outputs.resolved()) {
        Ok(scenarios) => {
            println!(
                "{} run(s) of {scenarios} scenario(s) in the history",
                all.len()
            );
            Exit::Met
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::Environment
        }
    }
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
    std::process::exit(i32::from(Exit::Interrupted.code()));
}
