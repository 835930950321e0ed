//! Why a drill stopped before its end, and the bound every external step runs under.

use std::time::Duration;

use crate::docker::EnvironmentError;
use crate::exit::Exit;

/// Why a drill stopped before its end. Findings (a failed restore, a failing check) are not
/// stops: they end the drill as `missed`.
#[derive(Debug)]
pub enum Stop {
    /// The environment failed (engine, image, the host's disk): exit 3.
    Environment(EnvironmentError),
    /// A step failed or overran its timeout: exit 1.
    Step(String),
    /// The run was cancelled (a signal): exit 130.
    Interrupted,
}

impl Stop {
    pub fn environment(cause: String, fix: impl Into<String>) -> Stop {
        Stop::Environment(EnvironmentError {
            cause,
            fix: fix.into(),
        })
    }

    /// The line the report and the terminal show.
    pub fn message(&self) -> String {
        match self {
            Stop::Environment(e) => format!("{} (fix: {})", e.cause, e.fix),
            Stop::Step(s) => s.clone(),
            Stop::Interrupted => "interrupted by signal".into(),
        }
    }

    pub fn exit(&self) -> Exit {
        match self {
            Stop::Environment(_) => Exit::Environment,
            Stop::Step(_) => Exit::Missed,
            Stop::Interrupted => Exit::Interrupted,
        }
    }
}

/// Bounds `fut` by `limit`, the scenario's `setting`; an overrun is a failed step named `step`.
pub async fn bounded<T>(
    step: &str,
    limit: Duration,
    setting: &str,
    fut: impl std::future::Future<Output = anyhow::Result<T>>,
) -> Result<T, Stop> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(step, e)),
        Err(_) => Err(overran(step, limit, setting)),
    }
}

/// Bounds `fut` by `limit`, the scenario's `setting`, and hands back whatever it returns: a
/// failure it reports is the caller's finding, and only an overrun stops the drill.
pub async fn within<T>(
    step: &str,
    limit: Duration,
    setting: &str,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, Stop> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| overran(step, limit, setting))
}

/// The stop for `step` overrunning `limit`, naming the setting (`timeouts.restore`).
pub fn overran(step: &str, limit: Duration, setting: &str) -> Stop {
    Stop::Step(format!(
        "{step}: did not finish within {} ({setting})",
        humantime::format_duration(limit)
    ))
}

/// An environment error anywhere in the chain, or a full host disk, stops the drill as
/// `error` with exit 3; anything else as a failed step.
pub fn classify(step: &str, e: anyhow::Error) -> Stop {
    if let Some(env) = e.downcast_ref::<EnvironmentError>() {
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
pub fn host_storage_full(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
            io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28)
        })
    })
}
