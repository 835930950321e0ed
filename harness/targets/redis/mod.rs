//! Redis targets: the `items` fixture, a `MULTI { SET seq:<n>; RPUSH drillrig:ledger <n> }`
//! workload keeping the ledger, RDB and AOF backups whose key count and `DEBUG DIGEST` describe
//! exactly what they hold, crash-and-damage faults on the server's own files, and restores by the
//! server's own persistence or from a backup.
//!
//! `redis-server`, `redis-cli` and `redis-check-*` run inside containers, never on the host.

mod files;

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Capabilities, Containers, RestoreRequest, Restored, Target, TargetEnv};
use crate::backup::{Backup, Contents, DatasetDigest, Taken};
use crate::checks::{CheckResult, Evidence};
use crate::docker::{Container, ContainerSpec};
use crate::measure::{Phases, Prober};
use crate::scenario::{BackupMethod, CheckKind, FaultKind, FaultSpec, Persistence};
use crate::workload::{Outcome, ReadBack, Writer, mix};

pub const CAPABILITIES: Capabilities = Capabilities {
    fixtures: &["items"],
    default_rows: 10_000,
    default_rate: 200,
    relations: &[],
    backups: &[BackupMethod::RedisRdb, BackupMethod::RedisAof],
    faults: &[
        FaultKind::Kill,
        FaultKind::CorruptDataFile,
        FaultKind::Flushall,
        FaultKind::VolumeLoss,
        FaultKind::CorruptBackup,
        FaultKind::TruncateBackup,
    ],
    checks: &[
        CheckKind::Ledger,
        CheckKind::RowCounts,
        CheckKind::Checksums,
        CheckKind::BackupIntegrity,
        CheckKind::BackupSize,
        CheckKind::BackupAge,
        CheckKind::RedisCheck,
    ],
};

const DATA: &str = "/data";
const PORT: u16 = 6379;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The list the workload appends each seq to, next to its `seq:<n>` key.
const LEDGER_LIST: &str = "drillrig:ledger";
/// The seed key the health probe reads.
const PROBE_KEY: &str = "item:1";
/// Items per fixture script call: each is one transaction in the AOF.
const SEED_CHUNK: u64 = 1000;
/// The one dataset of a Redis target in reports: the whole keyspace.
const KEYSPACE: &str = "keyspace";

/// Where the current container listens. Clones follow restarts and restores.
#[derive(Clone)]
struct Endpoint {
    port: watch::Receiver<u16>,
    password: std::sync::Arc<str>,
}

impl Endpoint {
    async fn connect(&self) -> Result<MultiplexedConnection> {
        let port = *self.port.borrow();
        if port == 0 {
            bail!("no container is serving");
        }
        let client = redis::Client::open(format!("redis://:{}@127.0.0.1:{port}/", self.password))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(Duration::from_secs(30)));
        let connect = client.get_multiplexed_async_connection_with_config(&config);
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                anyhow!("connect to 127.0.0.1:{port}: no answer within {CONNECT_TIMEOUT:?}")
            })?
            .map_err(|e| anyhow!("connect to 127.0.0.1:{port}: {e}"))
    }
}

/// The value the workload writes for `seq`: 16 hex digits, which the read-back parses back.
fn value_for(seed: u64, seq: u64) -> String {
    format!("{:016x}", mix(seed, seq))
}

/// The digest of a value read back: the number it encodes, 0 when it does not parse.
fn value_digest(value: &str) -> u64 {
    u64::from_str_radix(value, 16).unwrap_or(0)
}

pub struct Redis {
    env: TargetEnv,
    persistence: Persistence,
    containers: Containers,

    port: watch::Sender<u16>,
    /// `redis-check-rdb` / `redis-check-aof` on the restored backup, run before the restore.
    artefact_check: Mutex<Option<CheckResult>>,
}

impl Redis {
    pub fn new(env: TargetEnv) -> Self {
        let persistence = env.spec.persistence.clone().unwrap_or_default();
        Redis {
            containers: Containers::new(&env.spec.name),
            env,
            persistence,
            port: watch::channel(0).0,
            artefact_check: Mutex::new(None),
        }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            port: self.port.subscribe(),
            password: self.env.password.as_str().into(),
        }
    }

    async fn connect(&self) -> Result<MultiplexedConnection> {
        self.endpoint().connect().await
    }

    /// `redis-server` with the scenario's persistence; `appendonly` overrides it (an RDB restore
    /// must load with the AOF off).
    fn server_command(&self, appendonly: bool) -> Vec<String> {
        let p = &self.persistence;
        [
            "redis-server",
            "--requirepass",
            &self.env.password,
            "--appendonly",
            if appendonly { "yes" } else { "no" },
            "--appendfsync",
            p.appendfsync.as_str(),
            "--save",
            &p.save,
            "--dir",
            DATA,
            // The backups' digests come from DEBUG DIGEST.
            "--enable-debug-command",
            "yes",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    }

    fn container_spec(
        &self,
        name: String,
        volume: String,
        cmd: Vec<String>,
        copy_in: Vec<(std::path::PathBuf, String)>,
    ) -> ContainerSpec {
        ContainerSpec {
            name,
            image: self.env.image.clone(),
            env: Vec::new(),
            cmd,
            port: PORT,
            volume: Some((volume, DATA.into())),
            binds: Vec::new(),
            entrypoint: None,
            copy_in,
            hostname: None,
            startup_timeout: self.env.timeouts.provision + self.env.timeouts.restore,
        }
    }

    async fn start_container(&mut self, spec: ContainerSpec, limit: Duration) -> Result<()> {
        self.containers.start(&self.env.docker, &spec).await?;
        self.wait_ready(limit).await
    }

    /// Polls until `PING` answers `PONG` (not `LOADING`); fails early when the container exits,
    /// with the end of its log. Publishes the (possibly new) host port first.
    async fn wait_ready(&self, limit: Duration) -> Result<()> {
        let c = self.containers.serving()?;
        let deadline = Instant::now() + limit;
        loop {
            let last_error = match self.env.docker.host_port(c).await {
                Ok(port) => {
                    self.port.send_replace(port);
                    match self.connect().await {
                        Ok(mut con) => {
                            match redis::cmd("PING").query_async::<String>(&mut con).await {
                                Ok(pong) if pong == "PONG" => return Ok(()),
                                Ok(other) => format!("PING answered {other:?}"),
                                Err(e) => e.to_string(),
                            }
                        }
                        Err(e) => format!("{e:#}"),
                    }
                }
                Err(e) => format!("{e:#}"),
            };
            if let Ok((false, code)) = self.env.docker.state(c).await {
                bail!(
                    "container {} exited (code {}) before Redis answered: {last_error}; its log ends: {}",
                    c.name,
                    code.unwrap_or(-1),
                    self.log_tail(c).await
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "Redis in {} did not answer within {}: {last_error}",
                    c.name,
                    humantime::format_duration(limit)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of a container's log that say something.
    async fn log_tail(&self, c: &Container) -> String {
        let Ok(logs) = self.env.docker.logs(c).await else {
            return "(unreadable)".into();
        };
        let logs = String::from_utf8_lossy(&logs);
        let lines: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(" # ") || l.contains("Bad file") || l.contains("error"))
            .collect();
        let lines = if lines.is_empty() {
            logs.lines().collect()
        } else {
            lines
        };
        lines[lines.len().saturating_sub(3)..]
            .iter()
            .map(|l| l.split_once(' ').map_or(*l, |(_, rest)| rest).trim())
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// `DBSIZE` and `DEBUG DIGEST` in one transaction, plus the newest seq in the ledger list.
    async fn describe(con: &mut MultiplexedConnection) -> Result<(Contents, Option<u64>)> {
        let (keys, digest, newest): (u64, String, Option<u64>) = redis::pipe()
            .atomic()
            .cmd("DBSIZE")
            .cmd("DEBUG")
            .arg("DIGEST")
            .cmd("LINDEX")
            .arg(LEDGER_LIST)
            .arg(-1)
            .query_async(con)
            .await
            .map_err(|e| anyhow!("DBSIZE and DEBUG DIGEST: {e}"))?;
        Ok((
            Contents::from([(KEYSPACE.to_string(), DatasetDigest { rows: keys, digest })]),
            newest,
        ))
    }
}

#[async_trait]
impl Target for Redis {
    fn container(&self) -> Option<&Container> {
        self.containers.current()
    }

    async fn provision(&mut self) -> Result<()> {
        let (name, volume) = self.containers.next(&self.env.docker).await?;
        let spec = self.container_spec(
            name,
            volume,
            self.server_command(self.persistence.appendonly),
            Vec::new(),
        );
        self.start_container(spec, self.env.timeouts.provision)
            .await
    }

    async fn seed(&mut self) -> Result<()> {
        let fixture = &self.env.spec.dataset.fixture;
        let script = match fixture.as_str() {
            "items" => include_str!("../../../fixtures/redis/items.lua"),
            other => bail!("no redis fixture {other:?}"),
        };
        let mut con = self.connect().await?;
        let rows = self.env.spec.dataset.rows;
        for first in (1..=rows).step_by(SEED_CHUNK as usize) {
            let last = (first + SEED_CHUNK - 1).min(rows);
            let _: u64 = redis::cmd("EVAL")
                .arg(script)
                .arg(0)
                .arg(first)
                .arg(last)
                .query_async(&mut con)
                .await
                .map_err(|e| anyhow!("load fixture {fixture} (items {first}..{last}): {e}"))?;
        }
        if self.persistence.appendonly {
            // As on a long-running server, the old data sits in the AOF's base file and the
            // incremental file holds what came since: the workload.
            files::rewrite_aof(&mut con).await?;
        }
        Ok(())
    }

    fn writer(&self) -> Box<dyn Writer> {
        Box::new(RedisWriter {
            endpoint: self.endpoint(),
            con: None,
            in_flight: false,
            seed: self.env.seed,
        })
    }

    fn prober(&self) -> Box<dyn Prober> {
        Box::new(RedisProber {
            endpoint: self.endpoint(),
            con: None,
        })
    }

    async fn backup(&self, method: BackupMethod, dir: &std::path::Path) -> Result<Taken> {
        match method {
            BackupMethod::RedisRdb => files::take_rdb(self, dir).await,
            BackupMethod::RedisAof => files::take_aof(self, dir).await,
            other => bail!("backup method {other} is not a redis method"),
        }
    }

    async fn inject(
        &mut self,
        fault: &FaultSpec,
        _backups: &[Backup],
    ) -> Result<serde_json::Value> {
        match fault.kind {
            FaultKind::Flushall => {
                let mut con = self.connect().await?;
                redis::cmd("FLUSHALL")
                    .query_async::<()>(&mut con)
                    .await
                    .map_err(|e| anyhow!("FLUSHALL: {e}"))?;
                Ok(serde_json::json!({ "command": "FLUSHALL" }))
            }
            FaultKind::CorruptDataFile => {
                files::damage(self, fault.file.expect("validation sets the file")).await
            }
            FaultKind::VolumeLoss => files::volume_loss(self).await,
            other => bail!("fault {other} is not a redis fault"),
        }
    }

    async fn restart(&mut self, limit: Duration) -> Result<()> {
        let c = self.containers.serving()?.clone();
        if let Ok((true, _)) = self.env.docker.state(&c).await {
            self.env.docker.stop(&c, Duration::from_secs(30)).await?;
        }
        self.env.docker.start_again(&c).await?;
        self.wait_ready(limit).await
    }

    async fn restore(
        &mut self,
        request: &RestoreRequest<'_>,
        phases: &mut Phases,
    ) -> Result<Restored> {
        files::restore(self, request, phases).await
    }

    async fn repair(&mut self) -> Result<Option<String>> {
        files::repair_aof(self).await.map(Some)
    }

    async fn read_back(&self) -> Result<ReadBack> {
        let mut con = self.connect().await?;
        let mut keys: Vec<String> = Vec::new();
        {
            let mut iter: redis::AsyncIter<String> = con.scan_match("seq:*").await?;
            while let Some(key) = iter.next_item().await {
                keys.push(key?);
            }
        }
        let mut values = std::collections::BTreeMap::new();
        for chunk in keys.chunks(1000) {
            let got: Vec<Option<String>> = con.mget(chunk).await?;
            for (key, value) in chunk.iter().zip(got) {
                if let (Some(seq), Some(value)) = (
                    key.strip_prefix("seq:").and_then(|s| s.parse::<u64>().ok()),
                    value,
                ) {
                    values.insert(seq, value_digest(&value));
                }
            }
        }
        // The list and the keys are written in one transaction: where they disagree, the write
        // was torn, and its value counts as damaged (digest 0).
        let listed: Vec<u64> = con.lrange(LEDGER_LIST, 0, -1).await?;
        let listed: std::collections::BTreeSet<u64> = listed.into_iter().collect();
        let mut read = ReadBack::new();
        for (&seq, &digest) in &values {
            read.push((seq, if listed.contains(&seq) { digest } else { 0 }));
        }
        read.extend(
            listed
                .iter()
                .filter(|s| !values.contains_key(s))
                .map(|&s| (s, 0)),
        );
        Ok(read)
    }

    async fn contents(&self) -> Result<Contents> {
        let mut con = self.connect().await?;
        Ok(Redis::describe(&mut con).await?.0)
    }

    async fn check(&self, check: CheckKind, evidence: &Evidence<'_>) -> CheckResult {
        match check {
            CheckKind::BackupAge => {
                crate::checks::backup_age(evidence, crate::checks::newest_backup_point(evidence))
            }
            CheckKind::RedisCheck => self
                .artefact_check
                .lock()
                .expect("not poisoned")
                .clone()
                .unwrap_or_else(|| {
                    CheckResult::unknown(check, "no backup artefact was checked before the restore")
                }),
            other => CheckResult::unknown(other, "not a redis check"),
        }
    }

    async fn round_trip(&self) -> Result<()> {
        let mut con = self.connect().await?;
        let canary = format!("{:016x}", rand::random::<u64>());
        let _: () = con
            .set("drillrig:canary", &canary)
            .await
            .map_err(|e| anyhow!("write the canary: {e}"))?;
        let back: Option<String> = con
            .get("drillrig:canary")
            .await
            .map_err(|e| anyhow!("read the canary back: {e}"))?;
        if back.as_deref() != Some(canary.as_str()) {
            bail!("the canary reads back as {back:?}");
        }
        Ok(())
    }
}

/// The workload's writer: `MULTI { SET seq:<n> <value>; RPUSH drillrig:ledger <n> } EXEC`.
struct RedisWriter {
    endpoint: Endpoint,
    con: Option<MultiplexedConnection>,
    /// Set while a write is on the wire: if the runner abandons it, the connection is replaced.
    in_flight: bool,
    seed: u64,
}

#[async_trait]
impl Writer for RedisWriter {
    fn digest(&self, seq: u64) -> u64 {
        value_digest(&value_for(self.seed, seq))
    }

    async fn write(&mut self, seq: u64) -> Outcome {
        if std::mem::take(&mut self.in_flight) {
            self.con = None;
        }
        if self.con.is_none() {
            match self.endpoint.connect().await {
                Ok(con) => self.con = Some(con),
                // Nothing was sent.
                Err(_) => return Outcome::Fail,
            }
        }
        let con = self.con.as_mut().expect("connected above");
        self.in_flight = true;
        let result: redis::RedisResult<()> = redis::pipe()
            .atomic()
            .set(format!("seq:{seq}"), value_for(self.seed, seq))
            .ignore()
            .rpush(LEDGER_LIST, seq)
            .ignore()
            .query_async(con)
            .await;
        self.in_flight = false;
        match result {
            Ok(()) => Outcome::Ok,
            // The server refused the transaction (LOADING, MISCONF, EXECABORT…): not applied.
            Err(e) if matches!(e.kind(), redis::ErrorKind::Server(_)) => Outcome::Fail,
            // Lost connection, timeout: it may or may not have been applied.
            Err(_) => {
                self.con = None;
                Outcome::Info
            }
        }
    }
}

/// Reads the seed's first key: a crash, a load in progress and a flushed keyspace all fail it.
struct RedisProber {
    endpoint: Endpoint,
    con: Option<MultiplexedConnection>,
}

#[async_trait]
impl Prober for RedisProber {
    async fn probe(&mut self) -> Result<(), String> {
        if self.con.is_none() {
            self.con = Some(
                self.endpoint
                    .connect()
                    .await
                    .map_err(|e| format!("{e:#}"))?,
            );
        }
        let con = self.con.as_mut().expect("connected above");
        match con.exists::<_, bool>(PROBE_KEY).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("seed key {PROBE_KEY} is gone")),
            Err(e) => {
                if !matches!(e.kind(), redis::ErrorKind::Server(_)) {
                    self.con = None;
                }
                Err(e.to_string())
            }
        }
    }
}
