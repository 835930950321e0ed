//! RabbitMQ targets: the `orders` topology (a topic exchange routing to a durable quorum queue and
//! a durable classic queue), a workload publishing persistent messages with publisher confirms,
//! backups of definitions and messages, logical disasters, and restores that import the
//! definitions, wait until the queues exist, then republish the messages.
//!
//! Queues are read without consuming them: every message is fetched unacknowledged, then each is
//! requeued in the order it came, which returns it to its place (classic and quorum queues alike). Backups,
//! checks and the ledger's read-back all see queue contents this way, so depths stay intact.
//! `rabbitmqctl` runs inside the containers, never on the host.

mod messages;

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
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Capabilities, Containers, RestoreRequest, Restored, Target, TargetEnv};
use crate::backup::{Backup, Contents, Taken};
use crate::checks::{CheckResult, Evidence};
use crate::docker::{Container, ContainerSpec};
use crate::measure::{Phases, Prober};
use crate::scenario::{BackupMethod, CheckKind, FaultKind, FaultSpec};
use crate::workload::{Outcome, ReadBack, Writer, mix};

pub const CAPABILITIES: Capabilities = Capabilities {
    fixtures: &["orders"],
    default_rows: 1_000,
    default_rate: 200,
    relations: &["orders.quorum", "orders.classic"],
    backups: &[BackupMethod::RabbitmqExport],
    faults: &[
        FaultKind::Kill,
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
};

const DATA: &str = "/var/lib/rabbitmq";
const PORT: u16 = 5672;
const USER: &str = "drill";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The workload's routing key; the `orders` topology binds `order.#` to every queue.
const ROUTING_KEY: &str = "order.created";

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
        }
    }
}

/// Where the current container listens. Clones follow restarts and restores.
#[derive(Clone)]
struct Endpoint {
    port: watch::Receiver<u16>,
    password: Arc<str>,
}

impl Endpoint {
    /// A connection to `vhost` and a channel on it with publisher confirms on.
    async fn channel(&self, vhost: &str) -> Result<(Connection, Channel)> {
        let port = *self.port.borrow();
        if port == 0 {
            bail!("no container is serving");
        }
        let vhost = if vhost == "/" {
            "%2f".to_string()
        } else {
            vhost.to_string()
        };
        let uri = format!("amqp://{USER}:{}@127.0.0.1:{port}/{vhost}", self.password);
        let opened = async {
            let connection = Connection::connect(&uri, ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            lapin::Result::Ok((connection, channel))
        };
        tokio::time::timeout(CONNECT_TIMEOUT, opened)
            .await
            .map_err(|_| {
                anyhow!("connect to 127.0.0.1:{port}: no answer within {CONNECT_TIMEOUT:?}")
            })?
            .map_err(|e| anyhow!("connect to 127.0.0.1:{port}: {e}"))
    }
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
    env: TargetEnv,
    topology: Topology,
    containers: Containers,

    port: watch::Sender<u16>,
    /// Held while a queue is browsed: a browse leaves messages unacknowledged until it requeues
    /// them, so a second browse running alongside would see only part. Holds what the last
    /// read-back saw, so the checks of one verify phase judge the same snapshot without browsing
    /// again; any change to the node (fault, restart, restore) clears it.
    browsed: tokio::sync::Mutex<Option<Contents>>,
}

impl RabbitMq {
    pub fn new(env: TargetEnv) -> Self {
        RabbitMq {
            containers: Containers::new(&env.spec.name),
            env,
            topology: Topology::orders(),
            port: watch::channel(0).0,
            browsed: Default::default(),
        }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            port: self.port.subscribe(),
            password: self.env.password.as_str().into(),
        }
    }

    /// A channel on the drill's vhost.
    async fn channel(&self) -> Result<(Connection, Channel)> {
        self.endpoint().channel(&self.topology.vhost).await
    }

    /// Runs `rabbitmqctl` in the current container.
    async fn rabbitmqctl(&self, args: &[&str]) -> Result<String> {
        let c = self.containers.serving()?;
        let mut cmd = vec!["rabbitmqctl"];
        cmd.extend_from_slice(args);
        let out = self.env.docker.exec(c, "rabbitmq", &cmd).await?;
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
        let (name, volume) = self.containers.next(&self.env.docker).await?;
        let spec = ContainerSpec {
            name,
            image: self.env.image.clone(),
            env: vec![
                ("RABBITMQ_DEFAULT_USER".into(), USER.into()),
                ("RABBITMQ_DEFAULT_PASS".into(), self.env.password.clone()),
            ],
            cmd: Vec::new(),
            port: PORT,
            volume: Some((volume, DATA.into())),
            binds: Vec::new(),
            entrypoint: None,
            copy_in: Vec::new(),
            // The node name (rabbit@<hostname>) stays the same across restarts.
            hostname: Some(format!("drillrig-{}", self.env.spec.name)),
            startup_timeout: self.env.timeouts.provision + self.env.timeouts.restore,
        };
        self.containers.start(&self.env.docker, &spec).await?;
        self.wait_ready(self.env.timeouts.provision, false).await
    }

    /// Polls until an AMQP channel opens (RabbitMQ opens its port before it finishes booting)
    /// and, with `queues`, until every queue of the topology exists; fails early when the
    /// container exits. Publishes the (possibly new) host port first.
    async fn wait_ready(&self, limit: Duration, queues: bool) -> Result<()> {
        let c = self.containers.serving()?;
        let deadline = Instant::now() + limit;
        loop {
            let last_error = match self.env.docker.host_port(c).await {
                Ok(port) => {
                    self.port.send_replace(port);
                    let vhost = if queues {
                        self.topology.vhost.as_str()
                    } else {
                        "/"
                    };
                    match self.endpoint().channel(vhost).await {
                        Ok((connection, _)) => {
                            let present = if queues {
                                self.missing_queues(&connection).await
                            } else {
                                Ok(Vec::new())
                            };
                            let _ = connection.close(200, "ready".into()).await;
                            match present {
                                Ok(missing) if missing.is_empty() => return Ok(()),
                                Ok(missing) => {
                                    format!("queues not there yet: {}", missing.join(", "))
                                }
                                Err(e) => format!("{e:#}"),
                            }
                        }
                        Err(e) => format!("{e:#}"),
                    }
                }
                Err(e) => format!("{e:#}"),
            };
            if let Ok((false, code)) = self.env.docker.state(c).await {
                bail!(
                    "container {} exited (code {}) before RabbitMQ answered: {last_error}",
                    c.name,
                    code.unwrap_or(-1)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "RabbitMQ in {} was not ready within {}: {last_error}",
                    c.name,
                    humantime::format_duration(limit)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The topology's queues that a passive declare does not find.
    async fn missing_queues(&self, connection: &Connection) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for q in &self.topology.queues {
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

    /// Imports `definitions` (a JSON file's text), grants the drill's user the vhost, and waits
    /// until every queue exists.
    async fn import(&self, definitions: &[u8], limit: Duration) -> Result<()> {
        let c = self.containers.serving()?;
        let file = crate::docker::ContainerFile {
            header: tar::Header::new_gnu(),
            bytes: definitions.to_vec(),
        };
        let mut file = file;
        file.header.set_mode(0o644);
        self.env
            .docker
            .upload(c, "/tmp/drillrig-definitions.json", &file)
            .await?;
        self.rabbitmqctl(&["import_definitions", "/tmp/drillrig-definitions.json"])
            .await
            .context("import the definitions")?;
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
        self.wait_ready(limit, true).await
    }

    /// The broker's definitions now, as exported by `rabbitmqctl export_definitions`.
    async fn definitions(&self) -> Result<Vec<u8>> {
        let c = self.containers.serving()?;
        self.rabbitmqctl(&["export_definitions", "/tmp/drillrig-export.json"])
            .await?;
        Ok(self
            .env
            .docker
            .download(c, "/tmp/drillrig-export.json")
            .await?
            .bytes)
    }
}

#[async_trait]
impl Target for RabbitMq {
    fn container(&self) -> Option<&Container> {
        self.containers.current()
    }

    async fn provision(&mut self) -> Result<()> {
        self.start_container().await
    }

    async fn seed(&mut self) -> Result<()> {
        match self.env.spec.dataset.fixture.as_str() {
            "orders" => {}
            other => bail!("no rabbitmq fixture {other:?}"),
        }
        self.import(self.topology.json.as_bytes(), self.env.timeouts.seed)
            .await?;
        let (connection, channel) = self.channel().await?;
        let mut confirms = Vec::new();
        for n in 1..=self.env.spec.dataset.rows {
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
            endpoint: self.endpoint(),
            vhost: self.topology.vhost.clone(),
            exchange: self.topology.exchange.clone(),
            session: None,
            in_flight: false,
            seed: self.env.seed,
        })
    }

    fn prober(&self) -> Box<dyn Prober> {
        Box::new(MqProber {
            endpoint: self.endpoint(),
            vhost: self.topology.vhost.clone(),
            queues: self.topology.queues.clone(),
            session: None,
        })
    }

    async fn backup(&self, method: BackupMethod, dir: &std::path::Path) -> Result<Taken> {
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
                    .queue
                    .clone()
                    .unwrap_or_else(|| CAPABILITIES.relations[0].into());
                let (connection, channel) = self.channel().await?;
                let dropped = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await
                    .map_err(|e| anyhow!("delete queue {queue}: {e}"))?;
                let _ = connection.close(200, "deleted".into()).await;
                Ok(serde_json::json!({ "queue": queue, "messages_deleted": dropped }))
            }
            FaultKind::Reset => {
                let c = self.containers.serving()?;
                let script = "rabbitmqctl stop_app && rabbitmqctl reset && rabbitmqctl start_app";
                let out = self
                    .env
                    .docker
                    .exec(c, "rabbitmq", &["sh", "-c", script])
                    .await?;
                if !out.success() {
                    bail!("{script} exited with {}: {}", out.exit_code, out.tail());
                }
                Ok(serde_json::json!({ "commands": script }))
            }
            FaultKind::VolumeLoss => {
                let removed = self.containers.remove_with_volume(&self.env.docker).await?;
                // Clients see nothing serving at all.
                self.port.send_replace(0);
                Ok(removed)
            }
            other => bail!("fault {other} is not a rabbitmq fault"),
        }
    }

    async fn restart(&mut self, limit: Duration) -> Result<()> {
        *self.browsed.get_mut() = None;
        let c = self.containers.serving()?.clone();
        if let Ok((true, _)) = self.env.docker.state(&c).await {
            self.env.docker.stop(&c, Duration::from_secs(30)).await?;
        }
        self.env.docker.start_again(&c).await?;
        // Durable queues come back on their own: wait until they are all there.
        self.wait_ready(limit, true).await
    }

    async fn restore(
        &mut self,
        request: &RestoreRequest<'_>,
        phases: &mut Phases,
    ) -> Result<Restored> {
        *self.browsed.get_mut() = None;
        messages::restore(self, request, phases).await
    }

    async fn read_back(&self) -> Result<ReadBack> {
        let mut browsed = self.browsed.lock().await;
        let (connection, channel) = self.channel().await?;
        let mut contents = Contents::new();
        // A message is recovered when every queue it was routed to has it back.
        let mut per_queue: Vec<BTreeMap<u64, (u64, u64)>> = Vec::new();
        for q in &self.topology.queues {
            let mut seen: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
            let messages = messages::browse(&channel, q).await?;
            contents.insert(q.clone(), messages::summary(&messages));
            for m in messages {
                if let Ok(seq) = m.id.parse::<u64>() {
                    let entry = seen.entry(seq).or_insert((body_digest(&m.body), 0));
                    entry.1 += 1;
                }
            }
            per_queue.push(seen);
        }
        let _ = connection.close(200, "read back".into()).await;
        *browsed = Some(contents);
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
        if let Some(contents) = browsed.as_ref() {
            return Ok(contents.clone());
        }
        let (connection, channel) = self.channel().await?;
        let contents = messages::contents(&channel, &self.topology.queues).await;
        let _ = connection.close(200, "contents".into()).await;
        let contents = contents?;
        *browsed = Some(contents.clone());
        Ok(contents)
    }

    async fn check(&self, check: CheckKind, evidence: &Evidence<'_>) -> CheckResult {
        match check {
            CheckKind::Definitions => messages::compare_definitions(self, evidence).await,
            CheckKind::BackupAge => {
                crate::checks::backup_age(evidence, crate::checks::newest_backup_point(evidence))
            }
            other => CheckResult::unknown(other, "not a rabbitmq check"),
        }
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
    endpoint: Endpoint,
    vhost: String,
    exchange: String,
    session: Option<(Connection, Channel)>,
    /// Set while a publish awaits its confirm: if the runner abandons it, the session is replaced.
    in_flight: bool,
    seed: u64,
}

#[async_trait]
impl Writer for MqWriter {
    fn digest(&self, seq: u64) -> u64 {
        body_digest(body_for(self.seed, seq).as_bytes())
    }

    async fn write(&mut self, seq: u64) -> Outcome {
        if std::mem::take(&mut self.in_flight) {
            self.session = None;
        }
        if self
            .session
            .as_ref()
            .is_none_or(|(c, ch)| !c.status().connected() || !ch.status().connected())
        {
            match self.endpoint.channel(&self.vhost).await {
                Ok(session) => self.session = Some(session),
                // Nothing was sent.
                Err(_) => return Outcome::Fail,
            }
        }
        let (_, channel) = self.session.as_ref().expect("opened above");
        let body = body_for(self.seed, seq);
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
                self.session = None;
                return Outcome::Fail;
            }
        };
        self.in_flight = true;
        let confirmed = confirm.await;
        self.in_flight = false;
        match confirmed {
            Ok(Confirmation::Ack(_)) => Outcome::Ok,
            // The broker said it could not take it.
            Ok(Confirmation::Nack(_)) => Outcome::Fail,
            Ok(Confirmation::NotRequested) | Err(_) => {
                self.session = None;
                Outcome::Info
            }
        }
    }
}

/// Declares every queue of the topology passively: a crash, a reset and a deleted queue all
/// fail it.
struct MqProber {
    endpoint: Endpoint,
    vhost: String,
    queues: Vec<String>,
    session: Option<(Connection, Channel)>,
}

#[async_trait]
impl Prober for MqProber {
    async fn probe(&mut self) -> Result<(), String> {
        if self
            .session
            .as_ref()
            .is_none_or(|(c, _)| !c.status().connected())
        {
            self.session = Some(
                self.endpoint
                    .channel(&self.vhost)
                    .await
                    .map_err(|e| format!("{e:#}"))?,
            );
        }
        let (connection, _) = self.session.as_ref().expect("connected above");
        for q in &self.queues {
            let channel = match connection.create_channel().await {
                Ok(channel) => channel,
                Err(e) => {
                    self.session = None;
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
