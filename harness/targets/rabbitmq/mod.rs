//! RabbitMQ targets: the `orders` topology (a topic exchange routing to a durable quorum queue and
//! a durable classic queue), a workload publishing persistent messages with publisher confirms,
//! backups of definitions and messages, logical disasters, and restores that import the
//! definitions, wait until the queues exist, then republish the messages.
//!
//! Queues are read without consuming them: every message is fetched unacknowledged, then each is
//! requeued in the order it came, which returns it to its place (classic and quorum queues alike). Backups,
//! checks and the ledger's read-back all see queue contents this way, so depths stay intact.
//! `rabbitmqctl` runs inside the containers, never on the host.

mod cluster;
mod messages;
pub mod schema;
mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use lapin::Confirmation;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::service::{Connector, Service, Session, connect_to};
use super::{Capabilities, Outages, RestoreRequest, Restored, Target, TargetEnv};
use crate::backup::{Backup, Contents, FreshBackup};
use crate::checks::{CheckResult, Evidence};
use crate::docker::image::DefaultImage;
use crate::measure::{Prober, RecoveryPhases};
use crate::source::format::Format;
use crate::spec::{BackupMethod, CheckKind, FaultKind, FaultSpec, QueryKey};
use crate::workload::{ReadBack, WriteOutcome, Writer, mix};

pub const CAPABILITIES: Capabilities = Capabilities {
    image: DefaultImage {
        official: "rabbitmq:3.10-management",
        local: "drillrig/rabbitmq:3.10-bookworm",
    },
    fixtures: &["orders"],
    default_rows: 1_000,
    default_rate: 200,
    datasets: &["orders.quorum", "orders.classic"],
    backups: &[BackupMethod::RabbitmqExport],
    faults: &[
        FaultKind::Kill,
        FaultKind::Stop,
        FaultKind::Pause,
        FaultKind::NetworkPartition,
        FaultKind::Latency,
        FaultKind::DeleteQueue,
        FaultKind::Reset,
        FaultKind::VolumeLoss,
        FaultKind::CorruptBackup,
        FaultKind::TruncateBackup,
    ],
    checks: &[
        CheckKind::Ledger,
        CheckKind::RowCounts,
        CheckKind::Checksums,
        CheckKind::Definitions,
        CheckKind::BackupIntegrity,
        CheckKind::BackupSize,
        CheckKind::BackupAge,
    ],
    target_keys: schema::TARGET_KEYS,
    target_keys_schema: schema::keys_schema,
    options: schema::options,
    fault_keys: &[
        (FaultKind::DeleteQueue, "queue"),
        (FaultKind::Kill, "node"),
        (FaultKind::Stop, "node"),
        (FaultKind::Pause, "node"),
        (FaultKind::NetworkPartition, "node"),
    ],
    aim: schema::aim,
    replicated: |spec| {
        spec.options_of::<schema::MqOptions>()
            .is_some_and(|o| o.cluster.is_some())
    },
    source_checks: &[
        CheckKind::Definitions,
        CheckKind::BackupIntegrity,
        CheckKind::BackupAge,
        CheckKind::BackupSize,
    ],
    source_formats: &[Format::RabbitmqDefinitions],
    source_keys: &[],
    query_key: QueryKey::Queue,
};

const DATA: &str = "/var/lib/rabbitmq";
const PORT: u16 = 5672;
const USER: &str = "drill";
/// The default user, read by the broker with the rest of `conf.d` on its first start.
const USER_CONF: &str = "/etc/rabbitmq/conf.d/30-drillrig-user.conf";
/// RabbitMQ opens a connection and a confirm channel in two round trips.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The workload's routing key; the `orders` topology binds `order.#` to every queue.
const ROUTING_KEY: &str = "order.created";
/// Whether `definitions` (an export's JSON) give `user` every right on `vhost`.
fn grants_all(definitions: &[u8], user: &str, vhost: &str) -> bool {
    let Ok(defs) = serde_json::from_slice::<serde_json::Value>(definitions) else {
        return false;
    };
    defs["permissions"].as_array().is_some_and(|ps| {
        ps.iter().any(|p| {
            p["user"] == user
                && p["vhost"] == vhost
                && ["configure", "write", "read"]
                    .iter()
                    .all(|right| p[*right] == ".*")
        })
    })
}

/// What the broker logs when a memory or disk alarm blocks every publisher.
const ALARM_SET: &str = "resource limit alarm set";

/// The topology of the `orders` fixture, read from its definitions file.
#[derive(Debug, Clone)]
struct Topology {
    /// The definitions, as imported.
    json: &'static str,
    vhost: String,
    /// The exchange the workload publishes to.
    exchange: String,
    /// The queues the workload's messages are routed to.
    queues: Vec<String>,
    /// Those of them that are quorum queues.
    quorum: Vec<String>,
}

impl Topology {
    /// The quorum queues among the topology's queues.
    fn quorum_queues(&self) -> Vec<String> {
        self.quorum.clone()
    }
}

impl Topology {
    fn orders() -> Topology {
        let json = include_str!("../../../fixtures/rabbitmq/orders.json");
        let defs: serde_json::Value =
            serde_json::from_str(json).expect("the orders fixture is valid JSON");
        let name = |v: &serde_json::Value| v["name"].as_str().unwrap_or_default().to_string();
        Topology {
            json,
            vhost: name(&defs["vhosts"][0]),
            exchange: name(&defs["exchanges"][0]),
            queues: defs["queues"]
                .as_array()
                .map(|q| q.iter().map(name).collect())
                .unwrap_or_default(),
            quorum: defs["queues"]
                .as_array()
                .map(|q| {
                    q.iter()
                        .filter(|q| q["arguments"]["x-queue-type"] == "quorum")
                        .map(name)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// How to log in to a vhost: a connection and a channel on it with publisher confirms on.
#[derive(Clone)]
struct Login {
    password: Arc<str>,
    vhost: String,
}

#[async_trait]
impl Connector for Login {
    type Connection = (Connection, Channel);

    async fn open(&self, port: u16) -> Result<(Connection, Channel)> {
        let vhost = if self.vhost == "/" {
            "%2f"
        } else {
            self.vhost.as_str()
        };
        let uri = format!("amqp://{USER}:{}@127.0.0.1:{port}/{vhost}", self.password);
        let connection = Connection::connect(&uri, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok((connection, channel))
    }

    fn alive(&self, (connection, channel): &(Connection, Channel)) -> bool {
        connection.status().connected() && channel.status().connected()
    }

    fn timeout(&self) -> Duration {
        CONNECT_TIMEOUT
    }
}

/// The topology's `queues` that a passive declare does not find on `connection`.
async fn missing_queues(connection: &Connection, queues: &[String]) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for q in queues {
        // A failed passive declare closes the channel: one channel per queue.
        let probe = connection.create_channel().await?;
        let declared = probe
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(_) => {
                let _ = probe.close(200, "ok".into()).await;
            }
            Err(_) => missing.push(q.clone()),
        }
    }
    Ok(missing)
}

/// The body the workload publishes for `seq`: 16 hex digits, which the read-back parses back.
fn body_for(seed: u64, seq: u64) -> String {
    format!("{:016x}", mix(seed, seq))
}

fn body_digest(body: &[u8]) -> u64 {
    std::str::from_utf8(body)
        .ok()
        .and_then(|b| u64::from_str_radix(b, 16).ok())
        .unwrap_or(0)
}

fn persistent(message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(message_id.into())
}

pub struct RabbitMq {
    service: Service,
    topology: Topology,
    /// Held while a queue is browsed: a browse leaves messages unacknowledged until it requeues
    /// them, so a second browse running alongside would see only part. Holds what the last
    /// read-back saw, so the checks of one verify phase judge the same snapshot without browsing
    /// again; any change to the node (fault, restart, restore) clears it.
    browsed: tokio::sync::Mutex<Option<Browsed>>,
    /// A restore test's export, which `definitions` compares the broker with.
    fetched: std::sync::Mutex<Option<crate::source::Fetched>>,
}

/// What one browse of every queue saw.
#[derive(Clone)]
struct Browsed {
    /// Per queue, every message.
    contents: Contents,
    /// Per queue, the seed's messages (ids `seed-<n>`).
    seed: Contents,
}

impl Browsed {
    fn add(&mut self, queue: &str, messages: &[messages::Message]) {
        self.contents
            .insert(queue.to_string(), messages::summary(messages));
        // In id order: drillrig's own browses (every export) requeue what they read, and a
        // quorum queue may hand requeued messages back in another order. The seed check asks
        // whether the seeded messages survived unchanged, not in which order.
        let mut seeded: Vec<messages::Message> = messages
            .iter()
            .filter(|m| m.id.starts_with("seed-"))
            .cloned()
            .collect();
        seeded.sort_by(|a, b| a.id.cmp(&b.id));
        self.seed
            .insert(queue.to_string(), messages::summary(&seeded));
    }
}

impl RabbitMq {
    /// Browses every queue of the topology; the caller holds `browsed`.
    async fn browse_all(&self) -> Result<Browsed> {
        let (connection, channel) = self.channel().await?;
        let mut seen = Browsed {
            contents: Contents::new(),
            seed: Contents::new(),
        };
        let mut browsed = Ok(());
        for q in &self.topology.queues {
            match messages::browse(&channel, q).await {
                Ok(messages) => seen.add(q, &messages),
                Err(e) => {
                    browsed = Err(e);
                    break;
                }
            }
        }
        let _ = connection.close(200, "browse".into()).await;
        browsed.map(|()| seen)
    }

    pub fn new(env: TargetEnv) -> Self {
        // A restore test's broker has the user's topology; drillrig's round trip uses `/`.
        let topology = if env.spec.source.is_some() {
            Topology {
                json: "",
                vhost: "/".into(),
                exchange: String::new(),
                queues: Vec::new(),
                quorum: Vec::new(),
            }
        } else {
            Topology::orders()
        };
        RabbitMq {
            service: Service::new(env, "RabbitMQ", USER, &topology.vhost),
            topology,
            browsed: Default::default(),
            fetched: Default::default(),
        }
    }

    fn login(&self, vhost: &str) -> Login {
        Login {
            password: self.service.password(),
            vhost: vhost.into(),
        }
    }

    /// A channel on the drill's vhost.
    async fn channel(&self) -> Result<(Connection, Channel)> {
        self.service.connect(self.login(&self.topology.vhost)).await
    }

    /// Runs `rabbitmqctl` in the current container.
    async fn rabbitmqctl(&self, args: &[&str]) -> Result<String> {
        let c = self.service.containers.serving()?;
        let mut cmd = vec!["rabbitmqctl"];
        cmd.extend_from_slice(args);
        let out = self.service.env.docker.exec(c, "rabbitmq", &cmd).await?;
        if !out.success() {
            bail!(
                "rabbitmqctl {} exited with {}: {}",
                args.join(" "),
                out.exit_code,
                out.tail()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn start_container(&mut self) -> Result<()> {
        let (name, volume) = match self.cluster_nodes() {
            Some(_) => {
                let docker = self.service.env.docker.clone();
                self.service
                    .containers
                    .next_node(&docker, "node-1", None)
                    .await?
            }
            None => self.service.next_container().await?,
        };
        let spec = self.node_spec(name, volume);
        self.service.start(&spec).await?;
        self.wait_ready(self.service.env.timeouts.provision, false)
            .await
    }

    /// Polls until an AMQP channel opens (RabbitMQ opens its port before it finishes booting)
    /// and, with `queues`, until every queue of the topology exists.
    async fn wait_ready(&self, limit: Duration, queues: bool) -> Result<()> {
        let (login, wanted) = if queues {
            (
                self.login(&self.topology.vhost),
                self.topology.queues.clone(),
            )
        } else {
            (self.login("/"), Vec::new())
        };
        self.service
            .wait_ready(limit, |port| {
                let (login, wanted) = (login.clone(), wanted.clone());
                async move {
                    let (connection, _) = connect_to(&login, port)
                        .await
                        .map_err(|e| format!("{e:#}"))?;
                    let missing = missing_queues(&connection, &wanted).await;
                    let _ = connection.close(200, "ready".into()).await;
                    match missing {
                        Ok(missing) if missing.is_empty() => Ok(()),
                        Ok(missing) => Err(format!("queues not there yet: {}", missing.join(", "))),
                        Err(e) => Err(format!("{e:#}")),
                    }
                }
            })
            .await
    }

    /// Imports `definitions` (a JSON file's text), grants the drill's user the vhost, and waits
    /// until every queue exists.
    async fn import(&self, definitions: &[u8], limit: Duration) -> Result<()> {
        let c = self.service.containers.serving()?;
        let file = crate::docker::ContainerFile {
            header: tar::Header::new_gnu(),
            bytes: definitions.to_vec(),
        };
        let mut file = file;
        file.header.set_mode(0o644);
        self.service
            .env
            .docker
            .upload(c, "/tmp/drillrig-definitions.json", &file)
            .await?;
        self.rabbitmqctl(&["import_definitions", "/tmp/drillrig-definitions.json"])
            .await
            .context("import the definitions")?;
        // A drill's own export already grants its user the vhost; a user's export may not (each
        // rabbitmqctl call boots an Erlang VM: most of a second of the RTO).
        if !grants_all(definitions, USER, &self.topology.vhost) {
            self.rabbitmqctl(&[
                "set_permissions",
                "-p",
                &self.topology.vhost,
                USER,
                ".*",
                ".*",
                ".*",
            ])
            .await?;
        }
        self.wait_ready(limit, true).await
    }

    /// The broker's definitions now, as exported by `rabbitmqctl export_definitions`.
    async fn definitions(&self) -> Result<Vec<u8>> {
        let c = self.service.containers.serving()?;
        self.rabbitmqctl(&["export_definitions", "/tmp/drillrig-export.json"])
            .await?;
        Ok(self
            .service
            .env
            .docker
            .download(c, "/tmp/drillrig-export.json")
            .await?
            .bytes)
    }
}

#[async_trait]
impl Target for RabbitMq {
    async fn provision(&mut self) -> Result<()> {
        self.start_container().await?;
        match self.cluster_nodes() {
            Some(nodes) => self.start_cluster(nodes).await,
            None => Ok(()),
        }
    }

    async fn replication(&self) -> Option<serde_json::Value> {
        self.cluster_nodes()?;
        Some(self.quorum_state().await)
    }

    async fn fail_over(
        &mut self,
        phases: &mut RecoveryPhases,
        limit: Duration,
    ) -> Result<Restored> {
        self.fail_over_cluster(phases, limit).await
    }

    async fn settle(&mut self, limit: Duration) -> Option<serde_json::Value> {
        self.settle_cluster(limit).await
    }

    async fn seed(&mut self) -> Result<()> {
        match self.service.env.spec.dataset.fixture.as_str() {
            "orders" => {}
            other => bail!("no rabbitmq fixture {other:?}"),
        }
        self.import(
            self.topology.json.as_bytes(),
            self.service.env.timeouts.seed,
        )
        .await?;
        let (connection, channel) = self.channel().await?;
        let mut confirms = Vec::new();
        for n in 1..=self.service.env.spec.dataset.rows {
            let body = format!("seed order {n}");
            let id = format!("seed-{n}");
            let publish = channel
                .basic_publish(
                    self.topology.exchange.as_str().into(),
                    ROUTING_KEY.into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    persistent(&id),
                )
                .await?;
            confirms.push(publish);
        }
        for confirm in confirms {
            if !matches!(confirm.await?, Confirmation::Ack(_)) {
                bail!("the broker did not confirm a seed message");
            }
        }
        let _ = connection.close(200, "seeded".into()).await;
        Ok(())
    }

    fn writer(&self) -> Box<dyn Writer> {
        Box::new(MqWriter {
            session: Session::new(self.service.endpoint(self.login(&self.topology.vhost))),
            exchange: self.topology.exchange.clone(),
            seed: self.service.env.seed,
        })
    }

    fn prober(&self) -> Box<dyn Prober> {
        Box::new(MqProber {
            session: Session::new(self.service.endpoint(self.login(&self.topology.vhost))),
            queues: self.topology.queues.clone(),
        })
    }

    async fn backup(&self, method: BackupMethod, dir: &std::path::Path) -> Result<FreshBackup> {
        match method {
            BackupMethod::RabbitmqExport => messages::take(self, dir).await,
            other => bail!("backup method {other} is not a rabbitmq method"),
        }
    }

    async fn inject(
        &mut self,
        fault: &FaultSpec,
        _backups: &[Backup],
    ) -> Result<serde_json::Value> {
        *self.browsed.get_mut() = None;
        match fault.kind {
            FaultKind::DeleteQueue => {
                let queue = fault
                    .aim
                    .clone()
                    .unwrap_or_else(|| CAPABILITIES.datasets[0].into());
                let (connection, channel) = self.channel().await?;
                let dropped = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await
                    .map_err(|e| anyhow!("delete queue {queue}: {e}"))?;
                let _ = connection.close(200, "deleted".into()).await;
                Ok(serde_json::json!({ "queue": queue, "messages_deleted": dropped }))
            }
            FaultKind::Reset => {
                let c = self.service.containers.serving()?;
                let script = "rabbitmqctl stop_app && rabbitmqctl reset && rabbitmqctl start_app";
                let out = self
                    .service
                    .env
                    .docker
                    .exec(c, "rabbitmq", &["sh", "-c", script])
                    .await?;
                if !out.success() {
                    bail!("{script} exited with {}: {}", out.exit_code, out.tail());
                }
                Ok(serde_json::json!({ "commands": script }))
            }
            other => bail!("fault {other} is not a rabbitmq fault"),
        }
    }

    async fn restart(&mut self, limit: Duration) -> Result<()> {
        *self.browsed.get_mut() = None;
        self.service.start_again().await?;
        // Durable queues come back on their own: wait until they are all there.
        self.wait_ready(limit, true).await
    }

    fn outages(&mut self) -> &mut dyn Outages {
        // An outage changes the node: what was browsed before no longer holds.
        *self.browsed.get_mut() = None;
        &mut self.service
    }

    async fn serve_again(&mut self, limit: Duration) -> Result<()> {
        *self.browsed.get_mut() = None;
        self.wait_ready(limit, true).await
    }

    async fn restore(
        &mut self,
        request: &RestoreRequest<'_>,
        phases: &mut RecoveryPhases,
    ) -> Result<Restored> {
        *self.browsed.get_mut() = None;
        messages::restore(self, request, phases).await
    }

    async fn read_back(&self) -> Result<ReadBack> {
        let mut browsed = self.browsed.lock().await;
        let (connection, channel) = self.channel().await?;
        let mut seen_now = Browsed {
            contents: Contents::new(),
            seed: Contents::new(),
        };
        // A message is recovered when every queue it was routed to has it back.
        let mut per_queue: Vec<BTreeMap<u64, (u64, u64)>> = Vec::new();
        for q in &self.topology.queues {
            let mut seen: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
            let messages = messages::browse(&channel, q).await?;
            seen_now.add(q, &messages);
            for m in messages {
                if let Ok(seq) = m.id.parse::<u64>() {
                    let entry = seen.entry(seq).or_insert((body_digest(&m.body), 0));
                    entry.1 += 1;
                }
            }
            per_queue.push(seen);
        }
        let _ = connection.close(200, "read back".into()).await;
        *browsed = Some(seen_now);
        let everywhere: BTreeSet<u64> = match per_queue.split_first() {
            Some((first, rest)) => first
                .keys()
                .filter(|s| rest.iter().all(|q| q.contains_key(s)))
                .copied()
                .collect(),
            None => BTreeSet::new(),
        };
        let mut read = ReadBack::new();
        for seq in everywhere {
            let (digest, copies) = per_queue[0][&seq];
            // A different body in any queue is a damaged message.
            let digest = if per_queue.iter().all(|q| q[&seq].0 == digest) {
                digest
            } else {
                0
            };
            // Extra copies in any queue are duplicates.
            let extra = per_queue
                .iter()
                .map(|q| q[&seq].1 - 1)
                .max()
                .unwrap_or(0)
                .max(copies - 1);
            read.extend(std::iter::repeat_n((seq, digest), 1 + extra as usize));
        }
        Ok(read)
    }

    async fn contents(&self) -> Result<Contents> {
        let mut browsed = self.browsed.lock().await;
        if let Some(seen) = browsed.as_ref() {
            return Ok(seen.contents.clone());
        }
        let seen = self.browse_all().await?;
        *browsed = Some(seen.clone());
        Ok(seen.contents)
    }

    async fn seed_facts(&self) -> Result<Contents> {
        let browsed = self.browsed.lock().await;
        match browsed.as_ref() {
            Some(seen) => Ok(seen.seed.clone()),
            // Not kept: the workload has not written yet when the seed is recorded.
            None => Ok(self.browse_all().await?.seed),
        }
    }

    async fn restore_source(
        &mut self,
        fetched: &crate::source::Fetched,
        phases: &mut RecoveryPhases,
    ) -> Result<Restored> {
        *self.fetched.lock().expect("not poisoned") = Some(fetched.clone());
        source::restore(self, fetched, phases).await
    }

    async fn query(&self, ask: &crate::spec::Ask) -> Result<String> {
        match ask {
            crate::spec::Ask::Queue(q) => source::depth(self, q).await,
            other => bail!("a rabbitmq query asks with `queue`, not {other:?}"),
        }
    }

    async fn check(&self, check: CheckKind, evidence: &Evidence<'_>) -> CheckResult {
        let fetched = self.fetched.lock().expect("not poisoned").clone();
        match check {
            CheckKind::Definitions if fetched.is_some() => {
                source::definitions(self, fetched.as_ref().expect("checked")).await
            }
            CheckKind::Definitions => messages::compare_definitions(self, evidence).await,
            CheckKind::BackupAge => {
                crate::checks::backup_age(evidence, crate::checks::newest_backup_point(evidence))
            }
            other => CheckResult::unknown(other, "not a rabbitmq check"),
        }
    }

    async fn unasked_outages(&self, _injected: &[FaultKind]) -> Vec<String> {
        // An alarm blocks publishers while the broker answers everything else: no fault
        // drillrig injects raises one.
        self.service.log_lines(&[ALARM_SET]).await
    }

    async fn round_trip(&self) -> Result<()> {
        let (connection, channel) = self.channel().await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| anyhow!("declare a canary queue: {e}"))?;
        let canary = format!("{:016x}", rand::random::<u64>());
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.name().clone(),
                BasicPublishOptions::default(),
                canary.as_bytes(),
                persistent("drillrig-canary"),
            )
            .await?
            .await
            .map_err(|e| anyhow!("publish the canary: {e}"))?;
        if !matches!(confirm, Confirmation::Ack(_)) {
            bail!("the broker did not confirm the canary");
        }
        let got = channel
            .basic_get(queue.name().clone(), BasicGetOptions { no_ack: true })
            .await?;
        let _ = connection.close(200, "round trip".into()).await;
        match got {
            Some(m) if m.delivery.data == canary.as_bytes() => Ok(()),
            other => bail!(
                "the canary reads back as {:?}",
                other.map(|m| String::from_utf8_lossy(&m.delivery.data).into_owned())
            ),
        }
    }
}

/// The workload's writer: one persistent message per seq, `message_id` = seq, confirmed.
struct MqWriter {
    session: Session<Login>,
    exchange: String,
    seed: u64,
}

#[async_trait]
impl Writer for MqWriter {
    fn digest(&self, seq: u64) -> u64 {
        body_digest(body_for(self.seed, seq).as_bytes())
    }

    async fn write(&mut self, seq: u64) -> WriteOutcome {
        let body = body_for(self.seed, seq);
        let Ok((_, channel)) = self.session.begin().await else {
            // Nothing was sent.
            return WriteOutcome::Fail;
        };
        let published = channel
            .basic_publish(
                self.exchange.as_str().into(),
                ROUTING_KEY.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                persistent(&seq.to_string()),
            )
            .await;
        let confirm = match published {
            Ok(confirm) => confirm,
            // The channel refused to send it.
            Err(_) => {
                self.session.landed();
                self.session.reset();
                return WriteOutcome::Fail;
            }
        };
        let confirmed = confirm.await;
        self.session.landed();
        match confirmed {
            Ok(Confirmation::Ack(_)) => WriteOutcome::Ok,
            // The broker said it could not take it.
            Ok(Confirmation::Nack(_)) => WriteOutcome::Fail,
            Ok(Confirmation::NotRequested) | Err(_) => {
                self.session.reset();
                WriteOutcome::Info
            }
        }
    }
}

/// Declares every queue of the topology passively: a crash, a reset and a deleted queue all
/// fail it.
struct MqProber {
    session: Session<Login>,
    queues: Vec<String>,
}

#[async_trait]
impl Prober for MqProber {
    async fn probe(&mut self) -> Result<(), String> {
        let (connection, _) = self
            .session
            .connection()
            .await
            .map_err(|e| format!("{e:#}"))?;
        for q in &self.queues {
            let channel = match connection.create_channel().await {
                Ok(channel) => channel,
                Err(e) => {
                    self.session.reset();
                    return Err(e.to_string());
                }
            };
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            match channel
                .queue_declare(q.as_str().into(), passive, FieldTable::default())
                .await
            {
                Ok(_) => {
                    let _ = channel.close(200, "probed".into()).await;
                }
                Err(e) => return Err(format!("queue {q}: {e}")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::grants_all;

    #[test]
    fn only_every_right_on_the_vhost_counts_as_a_grant() {
        let defs = |p: &str| format!(r#"{{"permissions":[{p}]}}"#).into_bytes();
        let all = r#"{"user":"drill","vhost":"drill","configure":".*","write":".*","read":".*"}"#;
        assert!(grants_all(&defs(all), "drill", "drill"));
        assert!(!grants_all(&defs(all), "drill", "other"));
        assert!(!grants_all(&defs(all), "guest", "drill"));
        let read_only = all.replace(r#""write":".*""#, r#""write":"""#);
        assert!(!grants_all(&defs(&read_only), "drill", "drill"));
        assert!(!grants_all(b"not json", "drill", "drill"));
        assert!(!grants_all(b"{}", "drill", "drill"));
    }
}
