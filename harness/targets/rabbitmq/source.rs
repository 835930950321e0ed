//! Restore tests of RabbitMQ: the user's own definitions export imported into a scratch broker,
//! checked to hold exactly what it declares, and queue depths answered for user queries.

use std::collections::BTreeSet;

use anyhow::{Context, Result, anyhow, bail};

use super::messages::{canonical, republish};
use super::{RabbitMq, USER};
use crate::checks::CheckResult;
use crate::measure::{Phase, RecoveryPhases};
use crate::source::Fetched;
use crate::spec::CheckKind;
use crate::targets::Restored;

/// Where the export is copied in the scratch broker.
const IMPORTED: &str = "/tmp/drillrig-definitions.json";

pub(super) async fn restore(
    mq: &mut RabbitMq,
    f: &Fetched,
    phases: &mut RecoveryPhases,
) -> Result<Restored> {
    phases.enter(Phase::Provision);
    mq.start_container().await?;

    phases.enter(Phase::Restore);
    let text = std::fs::read(&f.local).with_context(|| format!("read {}", f.object))?;
    let defs: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| anyhow!("{} is not valid JSON: {e}", f.object))?;
    let c = mq.service.containers.serving()?.clone();
    mq.service
        .env
        .docker
        .upload_host_file(&c, &f.local, IMPORTED)
        .await?;
    mq.rabbitmqctl(&["import_definitions", IMPORTED])
        .await
        .with_context(|| format!("import {}", f.object))?;
    let vhosts: BTreeSet<String> = defs["vhosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str().map(String::from))
        .collect();
    // drillrig's own login reads every vhost the export declares.
    for vhost in &vhosts {
        mq.rabbitmqctl(&["set_permissions", "-p", vhost, USER, ".*", ".*", ".*"])
            .await?;
    }
    let queues = defs["queues"].as_array().map_or(0, Vec::len);
    let present = all_queues(mq, &vhosts).await?.len();
    if present < queues {
        bail!("{queues} queues declared, {present} present after the import");
    }
    // drillrig's own message export beside the definitions: its messages go back too.
    let republished = match (&f.companion, &f.companion_path) {
        (Some(name), Some(path)) => {
            let lines = std::fs::read_to_string(path).with_context(|| format!("read {name}"))?;
            Some(republish(mq, &lines, "/", name).await?)
        }
        _ => None,
    };
    Ok(Restored {
        recovery_target: Some(format!("the {} {}", f.format.describe(), f.object)),
        reached: Some(match republished {
            Some(n) => format!(
                "{} vhost(s), {present} queue(s) declared, {n} message(s) republished from {}",
                vhosts.len(),
                f.companion.as_deref().unwrap_or_default()
            ),
            None => format!("{} vhost(s), {present} queue(s) declared", vhosts.len()),
        }),
        ..Restored::default()
    })
}

/// `(vhost, queue, messages)` of every queue in `vhosts`.
async fn all_queues(
    mq: &RabbitMq,
    vhosts: &BTreeSet<String>,
) -> Result<Vec<(String, String, u64)>> {
    let mut out = Vec::new();
    for vhost in vhosts {
        let listed = mq
            .rabbitmqctl(&[
                "list_queues",
                "-p",
                vhost,
                "name",
                "messages",
                "--formatter",
                "json",
                "--quiet",
            ])
            .await?;
        let rows: serde_json::Value = serde_json::from_str(listed.trim())
            .map_err(|e| anyhow!("list_queues -p {vhost}: {e}: {listed}"))?;
        for q in rows.as_array().into_iter().flatten() {
            out.push((
                vhost.clone(),
                q["name"].as_str().unwrap_or_default().to_string(),
                q["messages"].as_u64().unwrap_or(0),
            ));
        }
    }
    Ok(out)
}

/// A queue's depth: the messages it holds ready, as the queue itself answers a passive declare
/// (nothing consumes in a scratch broker). `vhost/queue` names the vhost, a bare name must be
/// unique across the broker's vhosts.
pub(super) async fn depth(mq: &RabbitMq, queue: &str) -> Result<String> {
    let listed = mq
        .rabbitmqctl(&["list_vhosts", "name", "--formatter", "json", "--quiet"])
        .await?;
    let vhosts: BTreeSet<String> = serde_json::from_str::<serde_json::Value>(listed.trim())?
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str().map(String::from))
        .collect();
    let all = all_queues(mq, &vhosts).await?;
    let matches: Vec<_> = all
        .iter()
        .filter(|(v, q, _)| q == queue || format!("{v}/{q}") == queue)
        .collect();
    match matches.as_slice() {
        // The count list_queues gives a quorum queue lags its queue by seconds: the queue
        // itself answers a passive declare with what it holds.
        [(vhost, name, _)] => {
            let (connection, channel) = mq.service.connect(mq.login(vhost)).await?;
            let passive = lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let declared = channel
                .queue_declare(name.as_str().into(), passive, Default::default())
                .await
                .map_err(|e| anyhow!("passive declare of {vhost}/{name}: {e}"));
            let _ = connection.close(200, "counted".into()).await;
            Ok(declared?.message_count().to_string())
        }
        [] => bail!("no queue {queue:?} in the restored broker"),
        _ => bail!("queue {queue:?} exists in several vhosts: name it as VHOST/QUEUE"),
    }
}

/// `definitions` for a restore test: the broker holds exactly what the export declares, beyond
/// drillrig's own login and the default vhost.
pub(super) async fn definitions(mq: &RabbitMq, f: &Fetched) -> CheckResult {
    let check = CheckKind::Definitions;
    let want = match std::fs::read(&f.local)
        .map_err(anyhow::Error::from)
        .and_then(|d| canonical(&d))
    {
        Ok(w) => w,
        Err(e) => return CheckResult::failed(check, format!("{} cannot be read: {e:#}", f.object)),
    };
    let have = match mq.definitions().await.and_then(|d| canonical(&d)) {
        Ok(h) => h,
        Err(e) => {
            return CheckResult::unknown(check, format!("export the broker's definitions: {e:#}"));
        }
    };
    let ours = |item: &&String| {
        let own_user = format!("\"name\":\"{USER}\"");
        let own_grant = format!("\"user\":\"{USER}\"");
        (item.starts_with("users ") && item.contains(&own_user))
            || (item.starts_with("permissions ") && item.contains(&own_grant))
            || item.as_str() == "vhosts {\"name\":\"/\"}"
            || item.starts_with("vhosts {") && item.contains("\"name\":\"/\"")
    };
    let missing: Vec<&String> = want.difference(&have).collect();
    let extra: Vec<&String> = have.difference(&want).filter(|i| !ours(i)).collect();
    let mut problems = Vec::new();
    let sample = |items: &[&String]| {
        items
            .iter()
            .take(3)
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    };
    if !missing.is_empty() {
        problems.push(format!(
            "{} declared but missing: {}",
            missing.len(),
            sample(&missing)
        ));
    }
    if !extra.is_empty() {
        problems.push(format!(
            "{} present but not declared: {}",
            extra.len(),
            sample(&extra)
        ));
    }
    CheckResult::from_problems(
        check,
        format!(
            "{} definitions of {} (vhosts, users, permissions, exchanges, queues, bindings, policies) present, nothing else",
            want.len(),
            f.object
        ),
        problems,
    )
}
