//! The `drillrig` command: a thin layer over the library that maps outcomes to exit codes
//! (0 met, 1 missed or failed, 2 invalid scenario or usage, 3 environment, 130 interrupted).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use drillrig::docker::{self, EnvironmentError};
use drillrig::drill::{self, Keep, RunOptions};
use drillrig::{report, scenario};
use tokio_util::sync::CancellationToken;

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
    /// Run a drill and write its report.
    Run {
        /// The scenario file.
        scenario: PathBuf,
        /// Output folder (default: <reports>/<scenario>/<run-id>/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Image for one target, overriding the scenario and the default (repeatable).
        #[arg(long = "image", value_name = "TARGET=IMAGE")]
        images: Vec<String>,
        /// Root of the reports folder.
        #[arg(long, default_value = "reports", env = "DRILLRIG_REPORTS")]
        reports: PathBuf,
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

const EXIT_USAGE: u8 = 2;
const EXIT_ENVIRONMENT: u8 = 3;
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    // A bug shows as one line, not a backtrace; the exit code is 101 as for any panic.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("internal error (a drillrig bug; please report it): {info}");
    }));
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DRILLRIG_LOG")
                .unwrap_or_else(|_| "drillrig=info".into()),
        )
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_writer(std::io::stderr)
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
                scenario,
                out,
                images,
                reports,
            } => run(scenario, out, images, reports).await,
        }
    });
    ExitCode::from(code)
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

async fn run(path: PathBuf, out: Option<PathBuf>, images: Vec<String>, reports: PathBuf) -> u8 {
    let scenario = match scenario::load(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let mut image_overrides = BTreeMap::new();
    for spec in images {
        let Some((target, image)) = spec
            .split_once('=')
            .filter(|(t, i)| !t.is_empty() && !i.is_empty())
        else {
            eprintln!(
                "error: --image {spec:?}: expected TARGET=IMAGE, e.g. --image pg=postgres:15"
            );
            return EXIT_USAGE;
        };
        if scenario.target(target).is_none() {
            eprintln!(
                "error: --image {spec:?}: scenario {} has no target named {target:?}",
                scenario.name
            );
            return EXIT_USAGE;
        }
        image_overrides.insert(target.to_string(), image.to_string());
    }
    let keep_var = std::env::var("DRILLRIG_KEEP").unwrap_or_default();
    let Some(keep) = Keep::parse(&keep_var) else {
        eprintln!("error: DRILLRIG_KEEP={keep_var:?}: expected never, on-failure or always");
        return EXIT_USAGE;
    };
    let options = RunOptions {
        out_dir: out,
        reports_root: reports,
        images: image_overrides,
        keep,
    };

    let cancel = CancellationToken::new();
    tokio::spawn(escalate_signals(cancel.clone()));
    match drill::run(&scenario, &options, cancel).await {
        Ok(result) => {
            print!("{}", report::terminal(&result.report));
            println!("report: {}", result.dir.join("report.json").display());
            if let Some(error) = &result.error {
                eprintln!("error: {error}");
            }
            if let Some(fix) = &result.fix {
                eprintln!("  fix: {fix}");
            }
            result.exit_code as u8
        }
        Err(e) => match e.downcast_ref::<EnvironmentError>() {
            Some(env) => environment_error(env),
            None => {
                eprintln!("error: {e:#}");
                1
            }
        },
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
    std::process::exit(i32::from(EXIT_INTERRUPTED));
}
