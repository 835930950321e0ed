//! Redis targets: the `items` fixture, a `MULTI { SET seq:<n>; RPUSH drillrig:ledger <n> }`
//! workload keeping the ledger, RDB and AOF backups whose key count and `DEBUG DIGEST` describe
//! exactly what they hold, crash-and-damage faults on the server's own files, and restores by the
//! server's own persistence or from a backup.
//!
//! `redis-server`, `redis-cli` and `redis-check-*` run inside containers, never on the host.

mod files;
mod replication;
pub mod schema;

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

use super::service::{CONNECT_TIMEOUT, Connector, Service, Session, connect_to};
use super::{Capabilities, Outages, RestoreRequest, Restored, Target, TargetEnv};
use crate::backup::{Backup, Contents, DatasetDigest, FreshBackup};
use crate::checks::{CheckResult, Evidence};
use crate::docker::ContainerSpec;
use crate::docker::image::DefaultImage;
use crate::measure::{Prober, RecoveryPhases};
use crate::source::format::Format;
use crate::spec::{BackupMethod, CheckKind, FaultKind, FaultSpec, QueryKey};
use crate::workload::{ReadBack, WriteOutcome, Writer, mix};
use schema::RedisOptions;

pub const CAPABILITIES: Capabilities = Capabilities {
    image: DefaultImage {
        official: "redis:7.0",
        local: "drillrig/redis:7.0-bookworm",
    },
    fixtures: &["items"],
    default_rows: 10_000,
    default_rate: 200,
    datasets: &[],
    backups: &[BackupMethod::RedisRdb, BackupMethod::RedisAof],
    faults: &[
        FaultKind::Kill,
        FaultKind::Stop,
        FaultKind::Pause,
        FaultKind::NetworkPartition,
        FaultKind::Latency,
        FaultKind::DiskFull,
        FaultKind::CorruptDataFile,
        FaultKind::Flushall,
        FaultKind::BadUpdate,
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
    target_keys: schema::TARGET_KEYS,
    target_keys_schema: schema::keys_schema,
    options: schema::options,
    fault_keys: &[
        (FaultKind::CorruptDataFile, "file"),
        (FaultKind::Kill, "node"),
        (FaultKind::Stop, "node"),
        (FaultKind::Pause, "node"),
        (FaultKind::NetworkPartition, "node"),
    ],
    aim: schema::aim,
    replicated: |spec| {
        spec.options_of::<RedisOptions>()
            .is_some_and(|o| o.replication.is_some())
    },
    source_checks: &[
        CheckKind::RedisCheck,
        CheckKind::BackupIntegrity,
        CheckKind::BackupAge,
        CheckKind::BackupSize,
    ],
    source_formats: &[Format::RedisRdb, Format::RedisAof],
    source_keys: &[],
    query_key: QueryKey::Command,
};

const DATA: &str = "/data";
/// The server's users, written into the container before it starts.
const ACL_FILE: &str = "/etc/redis/drillrig.acl";
const PORT: u16 = 6379;
/// The list the workload appends each seq to, next to its `seq:<n>` key.
const LEDGER_LIST: &str = "drillrig:ledger";
/// The seed key the health probe reads.
const PROBE_KEY: &str = "item:1";
/// Items per fixture script call: each is one transaction in the AOF.
const SEED_CHUNK: u64 = 1000;
/// The one dataset of a Redis target in reports: the whole keyspace.
const KEYSPACE: &str = "keyspace";
/// The key `disk-full` writes to meet, then to clear, the server's out-of-space refusal.
const SPACE_PROBE: &str = "drillrig:disk-full-probe";
/// How long Redis may take to refuse writes on a full volume, or to accept them again.
const SPACE_WAIT: Duration = Duration::from_secs(10);
/// What Redis logs when it crashes (its bug report).
const CRASHED: &str = "crashed by signal";
/// What Redis logs when a save or an AOF write failed, after which it refuses writes
/// (`stop-writes-on-bgsave-error`, or the AOF's own error) until one succeeds again.
const WRITES_REFUSED: [&str; 2] = ["Background saving error", "Error writing to the AOF file"];
/// `bad-update`: every tenth seeded item (`n % 10 = ARGV[2]`) that exists is overwritten
/// through the normal client, one script: a logical disaster the server cannot notice.
const BAD_UPDATE: &str = r"
local count = 0
for i = 1, tonumber(ARGV[1]) do
  if i % 10 == tonumber(ARGV[2]) and redis.call('EXISTS', 'item:' .. i) == 1 then
    redis.call('SET', 'item:' .. i, 'drillrig bad update')
    count = count + 1
  end
end
return count
";
/// The `items` fixture's own keys as they stand, for `rows` items: how many are there (each
/// `item:<n>` and the sorted set), and a SHA-1 of every present key, value and sorted-set member.
const SEED_FACTS: &str = r"
local parts, count = {}, 0
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('GET', 'item:' .. i)
  if v then
    count = count + 1
    parts[#parts + 1] = 'item:' .. i .. '=' .. v
  end
end
local z = redis.call('ZRANGE', 'items:by-price', 0, -1, 'WITHSCORES')
if #z > 0 then count = count + 1 end
parts[#parts + 1] = table.concat(z, ' ')
return {count, redis.sha1hex(table.concat(parts, ','))}
";

/// How to log in to the server.
#[derive(Clone)]
struct Login {
    password: std::sync::Arc<str>,
}

#[async_trait]
impl Connector for Login {
    type Connection = MultiplexedConnection;

    async fn open(&self, port: u16) -> Result<MultiplexedConnection> {
        let client = redis::Client::open(format!("redis://:{}@127.0.0.1:{port}/", self.password))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(Duration::from_secs(30)));
        Ok(client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
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
    service: Service,
    options: RedisOptions,
    /// A restore test's `redis-check-rdb` / `redis-check-aof` on the user's backup, run before
    /// the restore (a drill's runs when the checks do: [`files::check_backup`]).
    artefact_check: Mutex<Option<CheckResult>>,
    /// After a failover, until it settles: the old primary, the promoted node's name and every
    /// data node's address.
    deposed: Mutex<Option<replication::Deposed>>,
}

impl Redis {
    pub fn new(env: TargetEnv) -> Self {
        let options = env
            .spec
            .options_of::<RedisOptions>()
            .cloned()
            .unwrap_or_default();
        Redis {
            service: Service::new(env, "Redis", "default", "0"),
            options,
            artefact_check: Mutex::new(None),
            deposed: Mutex::new(None),
        }
    }

    fn login(&self) -> Login {
        Login {
            password: self.service.password(),
        }
    }

    async fn connect(&self) -> Result<MultiplexedConnection> {
        self.service.connect(self.login()).await
    }

    /// The ACL file: the default user with the run's password and every right.
    fn acl(&self) -> String {
        format!(
            "user default on >{} ~* &* +@all\n",
            self.service.env.password
        )
    }

    /// `redis-server` with the scenario's persistence; `appendonly` overrides it (an RDB restore
    /// must load with the AOF off).
    fn server_command(&self, appendonly: bool) -> Vec<String> {
        let p = &self.options.persistence;
        [
            "redis-server",
            // The password is in this file, never on the command line.
            "--aclfile",
            ACL_FILE,
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
            image: self.service.env.image.clone(),
            env: Vec::new(),
            cmd,
            port: PORT,
            volume: Some((volume, DATA.into())),
            binds: Vec::new(),
            entrypoint: None,
            copy_in,
            files: vec![(ACL_FILE.into(), self.acl().into_bytes())],
            hostname: None,
            net_admin: self.replication_options().is_some(),
            startup_timeout: self.service.env.timeouts.provision
                + self.service.env.timeouts.restore,
        }
    }

    /// Starts `spec` and waits until `PING` answers `PONG` (not `LOADING`).
    async fn start_container(&mut self, spec: ContainerSpec, limit: Duration) -> Result<()> {
        self.service.start(&spec).await?;
        self.wait_ready(limit).await
    }

    async fn wait_ready(&self, limit: Duration) -> Result<()> {
        let login = self.login();
        self.service
            .wait_ready(limit, |port| {
                let login = login.clone();
                async move {
                    let mut con = connect_to(&login, port)
                        .await
                        .map_err(|e| format!("{e:#}"))?;
                    match redis::cmd("PING").query_async::<String>(&mut con).await {
                        Ok(pong) if pong == "PONG" => Ok(()),
                        Ok(other) => Err(format!("PING answered {other:?}")),
                        Err(e) => Err(e.to_string()),
                    }
                }
            })
            .await
    }

    /// `DBSIZE` and `DEBUG DIGEST` in one transaction, plus the newest seq in the ledger list.
    /// After the volume filled up: writes a 4 kB probe until Redis refuses it with its own
    /// out-of-space error (it fails the AOF write of the next command that needs a new page,
    /// then refuses every write with `MISCONF`); returns that error.
    async fn refusal_for_space(&self) -> Result<String> {
        let mut con = self.connect().await?;
        let deadline = tokio::time::Instant::now() + SPACE_WAIT;
        loop {
            let set: redis::RedisResult<()> = redis::cmd("SET")
                .arg(SPACE_PROBE)
                .arg("x".repeat(4096))
                .query_async(&mut con)
                .await;
            match set {
                Err(e) if e.to_string().contains("No space left on device") => {
                    return Ok(e.to_string());
                }
                Err(e) => bail!("write on a full volume: {e}"),
                Ok(()) if tokio::time::Instant::now() >= deadline => {
                    bail!("Redis still accepts writes {SPACE_WAIT:?} after its volume filled up")
                }
                Ok(()) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// After the filler went: waits until Redis accepts a write again (it retries its AOF write
    /// every second), then removes the probe; returns how long that took (ms).
    async fn writable_again(&self) -> Result<u64> {
        let mut con = self.connect().await?;
        let began = tokio::time::Instant::now();
        loop {
            let set: redis::RedisResult<()> = redis::cmd("SET")
                .arg(SPACE_PROBE)
                .arg("ok")
                .query_async(&mut con)
                .await;
            match set {
                Ok(()) => break,
                Err(e) if began.elapsed() >= SPACE_WAIT => {
                    bail!("Redis still refuses writes {SPACE_WAIT:?} after space came back: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let waited = began.elapsed().as_millis() as u64;
        redis::cmd("DEL")
            .arg(SPACE_PROBE)
            .query_async::<()>(&mut con)
            .await
            .map_err(|e| anyhow!("remove the space probe: {e}"))?;
        Ok(waited)
    }

    async fn keyspace(con: &mut MultiplexedConnection) -> Result<(Contents, Option<u64>)> {
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
    async fn provision(&mut self) -> Result<()> {
        let replication = self.replication_options();
        let (name, volume) = match replication {
            Some(_) => {
                let docker = self.service.env.docker.clone();
                let limit = self.service.env.spec.volume_limit;
                self.service
                    .containers
                    .next_node(&docker, "primary", limit)
                    .await?
            }
            None => self.service.next_container().await?,
        };
        let spec = self.container_spec(
            name,
            volume,
            self.server_command(self.options.persistence.appendonly),
            Vec::new(),
        );
        self.start_container(spec, self.service.env.timeouts.provision)
            .await?;
        match replication {
            Some(r) => self.start_replicas(r).await,
            None => Ok(()),
        }
    }

    async fn replication(&self) -> Option<serde_json::Value> {
        self.replication_options()?;
        Some(self.replication_state().await)
    }

    async fn fail_over(
        &mut self,
        phases: &mut RecoveryPhases,
        limit: Duration,
    ) -> Result<Restored> {
        self.fail_over_to_replica(phases, limit).await
    }

    async fn settle(&mut self, limit: Duration) -> Option<serde_json::Value> {
        self.settle_topology(limit).await
    }

    async fn seed(&mut self) -> Result<()> {
        let fixture = &self.service.env.spec.dataset.fixture;
        let script = match fixture.as_str() {
            "items" => include_str!("../../../fixtures/redis/items.lua"),
            other => bail!("no redis fixture {other:?}"),
        };
        let mut con = self.connect().await?;
        let rows = self.service.env.spec.dataset.rows;
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
        if self.options.persistence.appendonly {
            // As on a long-running server, the old data sits in the AOF's base file and the
            // incremental file holds what came since: the workload.
            files::rewrite_aof(&mut con).await?;
        }
        Ok(())
    }

    fn writer(&self) -> Box<dyn Writer> {
        Box::new(RedisWriter {
            session: Session::new(self.service.endpoint(self.login())),
            seed: self.service.env.seed,
        })
    }

    fn prober(&self) -> Box<dyn Prober> {
        Box::new(RedisProber {
            session: Session::new(self.service.endpoint(self.login())),
        })
    }

    async fn backup(&self, method: BackupMethod, dir: &std::path::Path) -> Result<FreshBackup> {
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
            FaultKind::DiskFull => {
                let mut details = self.service.fill_volume(DATA).await?;
                details["refused_with"] = serde_json::json!(self.refusal_for_space().await?);
                Ok(details)
            }
            FaultKind::Flushall => {
                let mut con = self.connect().await?;
                redis::cmd("FLUSHALL")
                    .query_async::<()>(&mut con)
                    .await
                    .map_err(|e| anyhow!("FLUSHALL: {e}"))?;
                Ok(serde_json::json!({ "command": "FLUSHALL" }))
            }
            FaultKind::BadUpdate => {
                let mut con = self.connect().await?;
                let pick = self.service.env.seed % 10;
                let keys: u64 = redis::cmd("EVAL")
                    .arg(BAD_UPDATE)
                    .arg(0)
                    .arg(self.service.env.spec.dataset.rows)
                    .arg(pick)
                    .query_async(&mut con)
                    .await
                    .map_err(|e| anyhow!("overwrite the seeded items: {e}"))?;
                Ok(serde_json::json!({
                    "keys_overwritten": keys,
                    "which": format!("item:<n> with n % 10 = {pick}"),
                }))
            }
            FaultKind::CorruptDataFile => {
                files::damage(self, schema::data_file(fault.aim.as_deref())).await
            }
            other => bail!("fault {other} is not a redis fault"),
        }
    }

    async fn restart(&mut self, limit: Duration) -> Result<()> {
        self.service.start_again().await?;
        self.wait_ready(limit).await
    }

    async fn heal(&mut self, fault: &FaultSpec) -> Result<serde_json::Value> {
        match fault.kind {
            FaultKind::DiskFull => {
                let mut details = self.service.empty_volume(DATA).await?;
                details["writes_again_after_ms"] = serde_json::json!(self.writable_again().await?);
                Ok(details)
            }
            other => bail!("fault {other} is no redis fault that heals"),
        }
    }

    fn outages(&mut self) -> &mut dyn Outages {
        &mut self.service
    }

    async fn serve_again(&mut self, limit: Duration) -> Result<()> {
        self.wait_ready(limit).await
    }

    async fn restore(
        &mut self,
        request: &RestoreRequest<'_>,
        phases: &mut RecoveryPhases,
    ) -> Result<Restored> {
        files::restore(self, request, phases).await
    }

    async fn restore_source(
        &mut self,
        fetched: &crate::source::Fetched,
        phases: &mut RecoveryPhases,
    ) -> Result<Restored> {
        files::restore_source(self, fetched, phases).await
    }

    async fn query(&self, ask: &crate::spec::Ask) -> Result<String> {
        match ask {
            crate::spec::Ask::Command(args) => files::query(self, args).await,
            other => bail!("a redis query asks with `command`, not {other:?}"),
        }
    }

    async fn repair(&mut self) -> Result<Option<String>> {
        if !self.options.repair {
            return Ok(None);
        }
        files::repair_aof(self).await.map(Some)
    }

    async fn read_back(&self) -> Result<ReadBack> {
        let mut con = self.connect().await?;
        let mut keys: Vec<String> = Vec::new();
        {
            // A thousand keys a step: SCAN's default of ten costs a round trip per ten keys.
            let scan = redis::ScanOptions::default()
                .with_pattern("seq:*")
                .with_count(1000);
            let mut iter: redis::AsyncIter<String> = con.scan_options(scan).await?;
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

    async fn seed_facts(&self) -> Result<Contents> {
        let mut con = self.connect().await?;
        let (rows, digest): (u64, String) = redis::cmd("EVAL")
            .arg(SEED_FACTS)
            .arg(0)
            .arg(self.service.env.spec.dataset.rows)
            .query_async(&mut con)
            .await
            .map_err(|e| anyhow!("digest the seeded items: {e}"))?;
        Ok(Contents::from([(
            "items".to_string(),
            DatasetDigest { rows, digest },
        )]))
    }

    async fn contents(&self) -> Result<Contents> {
        let mut con = self.connect().await?;
        Ok(Redis::keyspace(&mut con).await?.0)
    }

    async fn check(&self, check: CheckKind, evidence: &Evidence<'_>) -> CheckResult {
        match check {
            CheckKind::BackupAge => {
                crate::checks::backup_age(evidence, crate::checks::newest_backup_point(evidence))
            }
            CheckKind::RedisCheck => {
                let checked = self.artefact_check.lock().expect("not poisoned").clone();
                match (checked, evidence.backup) {
                    (Some(checked), _) => checked,
                    (None, Some(backup)) => files::check_backup(self, backup).await,
                    (None, None) => CheckResult::unknown(check, "no backup was restored"),
                }
            }
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

    async fn unasked_outages(&self, injected: &[FaultKind]) -> Vec<String> {
        // A crash ends the container (the server runs under the engine's init), but it is told
        // in the log; a failed save or AOF write makes Redis refuse every write while reads
        // and probes go on, unless a `disk-full` the scenario injected explains it.
        let mut patterns = vec![CRASHED];
        if !injected.contains(&FaultKind::DiskFull) {
            patterns.extend(WRITES_REFUSED);
        }
        self.service.log_lines(&patterns).await
    }
}

/// The workload's writer: `MULTI { SET seq:<n> <value>; RPUSH drillrig:ledger <n> } EXEC`.
struct RedisWriter {
    session: Session<Login>,
    seed: u64,
}

#[async_trait]
impl Writer for RedisWriter {
    fn digest(&self, seq: u64) -> u64 {
        value_digest(&value_for(self.seed, seq))
    }

    async fn write(&mut self, seq: u64) -> WriteOutcome {
        let Ok(con) = self.session.begin().await else {
            // Nothing was sent.
            return WriteOutcome::Fail;
        };
        let result: redis::RedisResult<()> = redis::pipe()
            .atomic()
            .set(format!("seq:{seq}"), value_for(self.seed, seq))
            .ignore()
            .rpush(LEDGER_LIST, seq)
            .ignore()
            .query_async(con)
            .await;
        self.session.landed();
        match result {
            Ok(()) => WriteOutcome::Ok,
            // The server refused the transaction (LOADING, MISCONF, EXECABORT…): not applied.
            Err(e) if matches!(e.kind(), redis::ErrorKind::Server(_)) => WriteOutcome::Fail,
            // Lost connection, timeout: it may or may not have been applied.
            Err(_) => {
                self.session.reset();
                WriteOutcome::Info
            }
        }
    }
}

/// Reads the seed's first key: a crash, a load in progress and a flushed keyspace all fail it.
struct RedisProber {
    session: Session<Login>,
}

#[async_trait]
impl Prober for RedisProber {
    async fn probe(&mut self) -> Result<(), String> {
        let con = self
            .session
            .connection()
            .await
            .map_err(|e| format!("{e:#}"))?;
        match con.exists::<_, bool>(PROBE_KEY).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("seed key {PROBE_KEY} is gone")),
            Err(e) => {
                if !matches!(e.kind(), redis::ErrorKind::Server(_)) {
                    self.session.reset();
                }
                Err(e.to_string())
            }
        }
    }
}
