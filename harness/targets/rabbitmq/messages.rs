//! Queue contents and definitions: the non-destructive read of a queue, `rabbitmq-export`
//! backups (definitions, plus every message of every queue as JSON lines), the restore that
//! imports the definitions and republishes the messages (also for restore tests), and the
//! definitions check.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::{FutureExt, StreamExt};
use lapin::Channel;
use lapin::Confirmation;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{RabbitMq, persistent};
use crate::backup::{Artefact, Contents, DatasetDigest, FreshBackup};
use crate::checks::{CheckResult, Evidence};
use crate::measure::{Phase, RecoveryPhases};
use crate::spec::CheckKind;
use crate::targets::{RestoreRequest, Restored};

const DEFINITIONS: &str = "definitions.json";
const MESSAGES: &str = "messages.jsonl";

/// One message as a queue holds it.
#[derive(Clone)]
pub(super) struct Message {
    pub id: String,
    pub body: Vec<u8>,
}

/// How long a browse waits for the next delivery before it takes the queue as read (the depth it
/// counted may include messages that left meanwhile).
const QUIET: Duration = Duration::from_secs(2);

/// The most unacknowledged deliveries a browsing consumer asks for (AMQP's limit; "unlimited"
/// would let a quorum queue stop at 2000).
const PREFETCH: u16 = u16::MAX;

/// Every message in `queue`, in order, left in place. A consumer takes as many messages as the
/// queue reported when the browse began, without acknowledging any; then `basic.get`, which no
/// prefetch limit stops, takes the rest until the queue answers empty (past `PREFETCH`, and
/// whatever a quorum queue's lagging depth left out). Then each message is requeued in the order
/// it came. (One `multiple` nack would be fewer frames, but a quorum queue requeues such a batch
/// in no particular order.)
pub(super) async fn browse(channel: &Channel, queue: &str) -> Result<Vec<Message>> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let depth = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .map_err(|e| anyhow!("read queue {queue}: {e}"))?
        .message_count() as usize;
    let mut messages = Vec::with_capacity(depth);
    let mut tags = Vec::with_capacity(depth);
    let tag = format!("drillrig-browse-{queue}");
    let fetched = async {
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut take = |delivery: Delivery, messages: &mut Vec<Message>| {
            tags.push(delivery.delivery_tag);
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default();
            messages.push(Message {
                id,
                body: delivery.data,
            });
        };
        while messages.len() < depth.min(PREFETCH.into()) {
            match tokio::time::timeout(QUIET, consumer.next()).await {
                Ok(Some(delivery)) => take(delivery?, &mut messages),
                Ok(None) | Err(_) => break,
            }
        }
        channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await?;
        // Deliveries that came before the cancel's answer are unacknowledged too, and already
        // buffered: they are read and requeued like the rest.
        while let Some(Some(delivery)) = consumer.next().now_or_never() {
            take(delivery?, &mut messages);
        }
        loop {
            let Some(got) = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await?
            else {
                break;
            };
            take(got.delivery, &mut messages);
        }
        lapin::Result::Ok(())
    }
    .await;
    for tag in tags {
        channel
            .basic_nack(
                tag,
                BasicNackOptions {
                    multiple: false,
                    requeue: true,
                },
            )
            .await
            .map_err(|e| anyhow!("requeue {queue}: {e}"))?;
    }
    fetched.map_err(|e| anyhow!("read queue {queue}: {e}"))?;
    Ok(messages)
}

/// How many messages a queue holds, and a digest of their ids and bodies in order.
pub(super) fn summary(messages: &[Message]) -> DatasetDigest {
    DatasetDigest {
        rows: messages.len() as u64,
        digest: digest(messages),
    }
}

fn digest(messages: &[Message]) -> String {
    let mut hasher = Sha256::new();
    for m in messages {
        hasher.update(m.id.as_bytes());
        hasher.update(b"\n");
        hasher.update(&m.body);
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

fn artefact(dir: &Path, file: &str, bytes: &[u8]) -> Result<Artefact> {
    let path = dir.join(file);
    std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
    Ok(Artefact {
        file: file.into(),
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
    })
}

/// `rabbitmq-export`: the definitions (`rabbitmqctl export_definitions`), then every message of
/// every queue, read in place. Every message confirmed before the read began is in the copy.
pub(super) async fn take(mq: &RabbitMq, dir: &Path) -> Result<FreshBackup> {
    let definitions = mq.definitions().await?;
    let _alone = mq.browsed.lock().await;
    let (connection, channel) = mq.channel().await?;
    let consistent_at = mq.service.env.clock.micros();
    let mut lines = String::new();
    let mut contents = Contents::new();
    let mut newest: Option<u64> = None;
    for q in &mq.topology.queues {
        let messages = browse(&channel, q).await?;
        for m in &messages {
            lines.push_str(
                &json!({ "queue": q, "vhost": mq.topology.vhost, "message_id": m.id, "body": hex::encode(&m.body) })
                    .to_string(),
            );
            lines.push('\n');
        }
        // The newest workload message every queue holds.
        let top = messages
            .iter()
            .filter_map(|m| m.id.parse::<u64>().ok())
            .max();
        newest = match (newest, top) {
            (None, t) => t,
            (Some(n), Some(t)) => Some(n.min(t)),
            (Some(_), None) => Some(0),
        };
        contents.insert(q.clone(), summary(&messages));
    }
    let _ = connection.close(200, "backed up".into()).await;
    Ok(FreshBackup {
        consistent_at,
        held: None,
        artefacts: vec![
            artefact(dir, DEFINITIONS, &definitions)?,
            artefact(dir, MESSAGES, lines.as_bytes())?,
        ],
        contents,
        max_seq: newest.filter(|&n| n > 0),
        details: json!({ "messages": lines.lines().count() }),
    })
}

/// A fresh node; the backup's definitions imported; the queues waited for; then every message
/// republished to its queue, in order, with confirms.
pub(super) async fn restore(
    mq: &mut RabbitMq,
    request: &RestoreRequest<'_>,
    phases: &mut RecoveryPhases,
) -> Result<Restored> {
    let backup = request.backup;
    phases.enter(Phase::Provision);
    mq.start_container().await?;

    phases.enter(Phase::Fetch);
    let definitions = std::fs::read(backup.dir.join(DEFINITIONS))
        .with_context(|| format!("read the definitions of backup {}", backup.id))?;
    mq.import(&definitions, mq.service.env.timeouts.restore)
        .await
        .with_context(|| format!("restore the definitions of backup {}", backup.id))?;

    phases.enter(Phase::Restore);
    let lines = std::fs::read_to_string(backup.dir.join(MESSAGES))
        .with_context(|| format!("read the messages of backup {}", backup.id))?;
    let republished = republish(
        mq,
        &lines,
        &mq.topology.vhost,
        &format!("backup {} {MESSAGES}", backup.id),
    )
    .await?;
    Ok(Restored {
        prepared: None,
        recovery_target: Some(format!(
            "the definitions and messages of backup {}",
            backup.id
        )),
        reached: Some(format!(
            "{} queues present, {republished} messages republished",
            mq.topology.queues.len()
        )),
        note: None,
        consistent_at: None,
        ..Restored::default()
    })
}

/// Republishes every message of a message export (`messages.jsonl`: one JSON object per line,
/// `queue`, `message_id`, `body` in hex, and `vhost`, else `default_vhost`) to its queue through
/// the default exchange, in order, with confirms; `what` names the file in errors. How many.
pub(super) async fn republish(
    mq: &RabbitMq,
    lines: &str,
    default_vhost: &str,
    what: &str,
) -> Result<usize> {
    let mut channels: std::collections::BTreeMap<String, (lapin::Connection, Channel)> =
        Default::default();
    let mut confirms = Vec::new();
    for (n, line) in lines
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let m: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{what} line {}", n + 1))?;
        let (Some(queue), Some(id), Some(body)) = (
            m["queue"].as_str(),
            m["message_id"].as_str(),
            m["body"].as_str(),
        ) else {
            bail!(
                "{what} line {}: not a message (queue, message_id, body)",
                n + 1
            );
        };
        let body = hex::decode(body).with_context(|| format!("{what} line {}", n + 1))?;
        let vhost = m["vhost"].as_str().unwrap_or(default_vhost).to_string();
        if !channels.contains_key(&vhost) {
            let opened = mq.service.connect(mq.login(&vhost)).await?;
            channels.insert(vhost.clone(), opened);
        }
        let (_, channel) = &channels[&vhost];
        // The default exchange routes by queue name: each message goes back to its own queue.
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &body,
                    persistent(id),
                )
                .await?,
        );
    }
    let republished = confirms.len();
    for confirm in confirms {
        if !matches!(confirm.await?, Confirmation::Ack(_)) {
            bail!("the broker did not confirm a republished message of {what}");
        }
    }
    for (connection, _) in channels.into_values() {
        let _ = connection.close(200, "restored".into()).await;
    }
    Ok(republished)
}

/// The parts of a definitions export that describe topology and access, each item as canonical
/// JSON tagged with its section; node-specific parameters (cluster name and id) are left out.
pub(super) fn canonical(definitions: &[u8]) -> Result<BTreeSet<String>> {
    let defs: serde_json::Value =
        serde_json::from_slice(definitions).context("parse the definitions")?;
    let mut items = BTreeSet::new();
    for section in [
        "vhosts",
        "users",
        "permissions",
        "exchanges",
        "queues",
        "bindings",
        "policies",
    ] {
        for item in defs[section].as_array().into_iter().flatten() {
            let mut item = item.clone();
            if section == "users" {
                // Compare who exists and their tags; hashes of the same password differ by salt.
                item = json!({ "name": item["name"], "tags": item["tags"] });
            }
            items.insert(format!("{section} {item}"));
        }
    }
    Ok(items)
}

/// `definitions`: the broker's topology and users now equal the restored backup's.
pub(super) async fn compare_definitions(mq: &RabbitMq, evidence: &Evidence<'_>) -> CheckResult {
    let check = CheckKind::Definitions;
    let Some(backup) = evidence.backup else {
        return CheckResult::unknown(check, "no backup was restored to compare with");
    };
    let want = match std::fs::read(backup.dir.join(DEFINITIONS))
        .map_err(anyhow::Error::from)
        .and_then(|d| canonical(&d))
    {
        Ok(w) => w,
        Err(e) => {
            return CheckResult::failed(
                check,
                format!(
                    "the definitions of backup {} cannot be read: {e:#}",
                    backup.id
                ),
            );
        }
    };
    let have = match mq.definitions().await.and_then(|d| canonical(&d)) {
        Ok(h) => h,
        Err(e) => {
            return CheckResult::unknown(check, format!("export the broker's definitions: {e:#}"));
        }
    };
    let missing: Vec<&String> = want.difference(&have).collect();
    let extra: Vec<&String> = have.difference(&want).collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "{} missing: {}",
            missing.len(),
            missing
                .iter()
                .take(3)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    if !extra.is_empty() {
        problems.push(format!(
            "{} not in backup {}: {}",
            extra.len(),
            backup.id,
            extra
                .iter()
                .take(3)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    CheckResult::from_problems(
        check,
        format!(
            "{} definitions (vhosts, users, permissions, exchanges, queues, bindings, policies) equal to backup {}'s",
            want.len(),
            backup.id
        ),
        problems,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_definitions_ignore_order_salts_and_node_parameters() {
        let a = br#"{"rabbit_version":"3.10.8","users":[{"name":"drill","password_hash":"x","tags":["administrator"]}],
            "queues":[{"name":"q1","vhost":"d","durable":true,"arguments":{"x-queue-type":"quorum"}},{"name":"q2","vhost":"d","durable":true,"arguments":{}}],
            "global_parameters":[{"name":"cluster_name","value":"rabbit@a"}]}"#;
        let b = br#"{"rabbit_version":"3.10.8","users":[{"name":"drill","password_hash":"y","tags":["administrator"]}],
            "queues":[{"arguments":{},"durable":true,"vhost":"d","name":"q2"},{"name":"q1","vhost":"d","durable":true,"arguments":{"x-queue-type":"quorum"}}],
            "global_parameters":[{"name":"cluster_name","value":"rabbit@b"}]}"#;
        assert_eq!(canonical(a).unwrap(), canonical(b).unwrap());
        let c = br#"{"queues":[{"name":"q1","vhost":"d","durable":true,"arguments":{"x-queue-type":"classic"}}]}"#;
        assert_ne!(canonical(a).unwrap(), canonical(c).unwrap());
        assert!(canonical(b"{ not json").is_err());
    }
}
