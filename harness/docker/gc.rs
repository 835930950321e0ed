//! Leftovers of dead runs: a run is alive while the drillrig process that labelled its
//! resources (host, pid and the pid's start time) still runs. Everything else carrying
//! drillrig's labels is removed; resources without them are never looked at.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder,
};

use super::{HOST_LABEL, KEEP_LABEL, PID_LABEL, PID_START_LABEL, RUN_LABEL, Removed, sweep};

/// The process that owns a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOwner {
    pub host: String,
    pub pid: u32,
    /// Start time of the process in clock ticks since boot (`/proc/<pid>/stat` field 22), so a
    /// reused pid is not mistaken for the owner.
    pub start_ticks: u64,
}

/// This process, as it labels its runs.
pub fn process_identity() -> RunOwner {
    let pid = std::process::id();
    RunOwner {
        host: hostname(),
        pid,
        start_ticks: start_ticks(pid).unwrap_or(0),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the owner recorded in `labels` is a process still running on this host. Runs owned by
/// another host cannot be checked and count as alive: they are never touched.
pub fn owner_alive(labels: &HashMap<String, String>) -> bool {
    let host = labels
        .get(HOST_LABEL)
        .map(String::as_str)
        .unwrap_or_default();
    if host != hostname() {
        return true;
    }
    let pid: Option<u32> = labels.get(PID_LABEL).and_then(|p| p.parse().ok());
    let ticks: Option<u64> = labels.get(PID_START_LABEL).and_then(|t| t.parse().ok());
    match (pid, ticks) {
        (Some(pid), Some(ticks)) => start_ticks(pid) == Some(ticks),
        _ => false,
    }
}

/// One run's leftovers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadRun {
    pub run_id: String,
    pub removed: Removed,
}

/// Every run with resources on the engine, with the labels of one of its resources.
async fn runs(api: &bollard::Docker) -> Result<BTreeMap<String, HashMap<String, String>>> {
    let mut runs: BTreeMap<String, HashMap<String, String>> = BTreeMap::new();
    let mut add = |labels: HashMap<String, String>| {
        if let Some(run) = labels.get(RUN_LABEL).cloned() {
            runs.entry(run).or_insert(labels);
        }
    };
    let filter = HashMap::from([("label", vec![RUN_LABEL.to_string()])]);
    let containers = api
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filter)
                .build(),
        ))
        .await
        .context("list drillrig containers")?;
    containers
        .into_iter()
        .for_each(|c| add(c.labels.unwrap_or_default()));
    let volumes = api
        .list_volumes(Some(
            ListVolumesOptionsBuilder::default()
                .filters(&filter)
                .build(),
        ))
        .await
        .context("list drillrig volumes")?;
    volumes
        .volumes
        .unwrap_or_default()
        .into_iter()
        .for_each(|v| add(v.labels));
    let networks = api
        .list_networks(Some(
            ListNetworksOptionsBuilder::default()
                .filters(&filter)
                .build(),
        ))
        .await
        .context("list drillrig networks")?;
    networks
        .into_iter()
        .for_each(|n| add(n.labels.unwrap_or_default()));
    Ok(runs)
}

async fn remove_where(
    api: &bollard::Docker,
    pick: impl Fn(&HashMap<String, String>) -> bool,
) -> Result<Vec<DeadRun>> {
    let mut removed_runs = Vec::new();
    for (run_id, labels) in runs(api).await? {
        if pick(&labels) {
            let removed = sweep(api, &run_id).await?;
            removed_runs.push(DeadRun { run_id, removed });
        }
    }
    Ok(removed_runs)
}

/// Whether `gc` may remove the run whose resource carries `labels`: its owner is dead, and it
/// was not kept for inspection (unless `kept_too`).
pub fn collectable(labels: &HashMap<String, String>, kept_too: bool) -> bool {
    !owner_alive(labels) && (kept_too || !labels.contains_key(KEEP_LABEL))
}

/// Removes the resources of every dead run; returns what went, per run. Resources of live runs
/// (this one included) stay, and so do runs kept for inspection unless `kept_too`.
pub async fn collect(api: &bollard::Docker, kept_too: bool) -> Result<Vec<DeadRun>> {
    remove_where(api, |labels| collectable(labels, kept_too)).await
}

/// Removes the runs named (`drillrig gc RUN_ID...`), kept ones too, each only once its process
/// has exited; every other run stays.
pub async fn collect_named(api: &bollard::Docker, named: &[String]) -> Result<Vec<DeadRun>> {
    remove_where(api, |labels| {
        collectable(labels, true) && labels.get(RUN_LABEL).is_some_and(|run| named.contains(run))
    })
    .await
}

/// Removes every run `owner` created (the forced second interrupt).
pub async fn remove_owned_by(api: &bollard::Docker, owner: &RunOwner) -> Result<Vec<DeadRun>> {
    let mine = |labels: &HashMap<String, String>| {
        labels.get(HOST_LABEL) == Some(&owner.host)
            && labels.get(PID_LABEL) == Some(&owner.pid.to_string())
            && labels.get(PID_START_LABEL) == Some(&owner.start_ticks.to_string())
    };
    remove_where(api, mine).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(owner: &RunOwner) -> HashMap<String, String> {
        HashMap::from([
            (HOST_LABEL.to_string(), owner.host.clone()),
            (PID_LABEL.to_string(), owner.pid.to_string()),
            (PID_START_LABEL.to_string(), owner.start_ticks.to_string()),
        ])
    }

    #[test]
    fn this_process_is_alive() {
        let me = process_identity();
        assert!(me.start_ticks > 0);
        assert!(owner_alive(&labels(&me)));
    }

    #[test]
    fn a_reused_pid_is_not_the_owner() {
        let mut other = process_identity();
        other.start_ticks += 1;
        assert!(!owner_alive(&labels(&other)));
    }

    #[test]
    fn an_exited_process_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let gone = RunOwner {
            host: process_identity().host,
            pid,
            start_ticks: 1,
        };
        assert!(!owner_alive(&labels(&gone)));
    }

    #[test]
    fn runs_of_other_hosts_are_left_alone() {
        let stranger = RunOwner {
            host: "elsewhere.invalid".into(),
            pid: 1,
            start_ticks: 1,
        };
        assert!(owner_alive(&labels(&stranger)));
    }

    #[test]
    fn kept_runs_wait_for_an_explicit_gc() {
        let mut l = labels(&RunOwner {
            host: process_identity().host,
            pid: u32::MAX,
            start_ticks: 1,
        });
        assert!(collectable(&l, false));
        l.insert(KEEP_LABEL.to_string(), "true".to_string());
        assert!(
            !collectable(&l, false),
            "a later run leaves a kept run alone"
        );
        assert!(collectable(&l, true), "`drillrig gc` removes it");
        assert!(
            !collectable(&labels(&process_identity()), true),
            "never a live run"
        );
    }

    #[test]
    fn unlabelled_owners_are_dead() {
        let mut l = labels(&process_identity());
        l.remove(PID_LABEL);
        assert!(!owner_alive(&l));
    }
}
