//! Replication and failover: replicas that follow the primary (`REPLICAOF`, with `masterauth` set
//! over a client connection, so no password reaches a command line), three Sentinels watching
//! them (Debian's `redis-sentinel`), the replicas' lag at the fault from `INFO replication`, and
//! the failover: Sentinel's own election, watched the way a client finds the primary
//! (`SENTINEL get-master-addr-by-name`) until the new primary takes writes; or, without
//! Sentinels, the runbook's `REPLICAOF NO ONE` on the replica with the largest offset.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::schema::{RedisOptions, Replication};
use super::{PORT, Redis};
use crate::docker::{Container, ContainerSpec};
use crate::measure::{Phase, RecoveryPhases};
use crate::targets::Restored;
use crate::targets::service::{CONNECT_TIMEOUT, Connector, connect_to, give_up_within};

/// Sentinel's name for the primary it watches.
const MASTER: &str = "drill";
const SENTINEL_PORT: u16 = 26379;
/// Sentinel rewrites its own configuration file, so it is one it may write.
const SENTINEL_CONF: &str = "/etc/redis/sentinel.conf";
/// A primary that does not answer Sentinel for this long is subjectively down.
const DOWN_AFTER_MS: u64 = 1000;
const FAILOVER_TIMEOUT_MS: u64 = 10_000;
/// How often a node or Sentinel that does not answer yet is asked again.
const POLL: Duration = Duration::from_millis(100);
/// How long a runbook waits for a node's answer before judging it down.
const ANSWER: Duration = Duration::from_secs(2);
/// How long a returning old primary is watched for Sentinel's `REPLICAOF`: a Sentinel converts
/// it once it has been up for 8 s and said `role:master` for 8 s, learned from an `INFO` it asks
/// a replica for every 10 s: up to about 18 s after the heal.
const REJOIN: Duration = Duration::from_secs(30);

/// The old primary, the promoted node's name and every data node's address, from a failover
/// until it settles.
pub(super) type Deposed = (Container, String, BTreeMap<String, String>);

/// A connection to a Sentinel, which asks for no password.
#[derive(Clone)]
struct SentinelLogin;

#[async_trait]
impl Connector for SentinelLogin {
    type Connection = MultiplexedConnection;

    async fn open(&self, port: u16) -> Result<MultiplexedConnection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(ANSWER));
        Ok(client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }
}

/// `INFO replication` as `field → value`.
fn info_fields(info: &str) -> BTreeMap<String, String> {
    info.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One `slaveN:ip=…,port=…,state=…,offset=…,lag=…` value as `key → value`.
fn replica_fields(value: &str) -> BTreeMap<&str, &str> {
    value
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .collect()
}

impl Redis {
    /// The target's replication, when it has one.
    pub(super) fn replication_options(&self) -> Option<Replication> {
        self.service
            .env
            .spec
            .options_of::<RedisOptions>()
            .and_then(|o| o.replication)
    }

    async fn on(&self, c: &Container) -> Result<MultiplexedConnection> {
        let port = self.service.env.docker.host_port(c).await?;
        connect_to(&self.login(), port).await
    }

    /// Sets what every data node needs to replicate and to be replicated from: the password it
    /// answers a primary with, and how many replicas must acknowledge a write.
    async fn prepare_node(&self, con: &mut MultiplexedConnection, r: Replication) -> Result<()> {
        for (setting, value) in [
            ("masterauth", self.service.env.password.clone()),
            ("min-replicas-to-write", r.min_replicas_to_write.to_string()),
            ("min-replicas-max-lag", "10".to_string()),
        ] {
            redis::cmd("CONFIG")
                .arg("SET")
                .arg(setting)
                .arg(&value)
                .query_async::<()>(con)
                .await
                .map_err(|e| anyhow!("CONFIG SET {setting}: {e}"))?;
        }
        Ok(())
    }

    /// Starts the replicas, makes each follow the primary, waits until the primary sees them
    /// all online, then starts the Sentinels and waits until each knows every replica and the
    /// other Sentinels.
    pub(super) async fn start_replicas(&mut self, r: Replication) -> Result<()> {
        let docker = self.service.env.docker.clone();
        let limit = self.service.env.timeouts.provision;
        let primary = self.service.containers.serving()?.clone();
        let primary_ip = docker.ip_of(&primary).await?;
        let mut con = self.connect().await?;
        self.prepare_node(&mut con, r).await?;
        for node in r.nodes().iter().skip(1) {
            let (name, volume) = self
                .service
                .containers
                .next_node(&docker, node, self.service.env.spec.volume_limit)
                .await?;
            let spec = self.container_spec(
                name,
                volume,
                self.server_command(self.options.persistence.appendonly),
                Vec::new(),
            );
            let c = self.service.start_peer(&spec).await?;
            let mut replica = self.until_answering(&c, limit).await?;
            self.prepare_node(&mut replica, r).await?;
            redis::cmd("REPLICAOF")
                .arg(&primary_ip)
                .arg(PORT)
                .query_async::<()>(&mut replica)
                .await
                .map_err(|e| anyhow!("REPLICAOF on {}: {e}", c.name))?;
        }
        self.until_replicas_online(r.replicas, limit).await?;
        if r.sentinels > 0 {
            let conf = format!(
                "port {SENTINEL_PORT}\nsentinel monitor {MASTER} {primary_ip} {PORT} 2\n\
                 sentinel auth-pass {MASTER} {}\n\
                 sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n\
                 sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n\
                 sentinel parallel-syncs {MASTER} 1\n",
                self.service.env.password
            );
            for i in 1..=r.sentinels {
                let spec = ContainerSpec {
                    name: format!("{}-sentinel-{i}", self.service.env.spec.name),
                    image: self.service.env.image.clone(),
                    env: Vec::new(),
                    cmd: vec!["redis-sentinel".into(), SENTINEL_CONF.into()],
                    port: SENTINEL_PORT,
                    volume: None,
                    binds: Vec::new(),
                    entrypoint: None,
                    copy_in: Vec::new(),
                    files: vec![(SENTINEL_CONF.into(), conf.clone().into_bytes())],
                    hostname: None,
                    net_admin: false,
                    startup_timeout: limit,
                };
                self.service.start_peer(&spec).await?;
            }
            self.until_sentinels_agree(r, limit).await?;
        }
        Ok(())
    }

    /// The containers of one role among the serving one's peers (`-replica-`, `-sentinel-`).
    fn peers_named(&self, role: &str) -> Vec<Container> {
        self.service
            .containers
            .peers()
            .iter()
            .map(|(c, _)| c.clone())
            .filter(|c| c.name.contains(role))
            .collect()
    }

    /// Polls `c` until it answers `PING`; fails early when its container exits.
    async fn until_answering(
        &self,
        c: &Container,
        limit: Duration,
    ) -> Result<MultiplexedConnection> {
        let deadline = Instant::now() + limit;
        loop {
            let last = match self.on(c).await {
                Ok(mut con) => match redis::cmd("PING").query_async::<String>(&mut con).await {
                    Ok(_) => return Ok(con),
                    Err(e) => e.to_string(),
                },
                Err(e) => format!("{e:#}"),
            };
            if let Ok((false, code)) = self.service.env.docker.state(c).await {
                bail!(
                    "{} exited (code {}): {last}; its log ends: {}",
                    c.name,
                    code.unwrap_or(-1),
                    self.service.log_tail(c).await
                );
            }
            if Instant::now() >= deadline {
                bail!("{} did not answer within {limit:?}: {last}", c.name);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn until_replicas_online(&self, replicas: u8, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let info = self.info_replication().await?;
            let online = info
                .iter()
                .filter(|(k, v)| k.starts_with("slave") && v.contains("state=online"))
                .count();
            if online == replicas as usize {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{online} of {replicas} replicas online after {limit:?}: {info:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn until_sentinels_agree(&self, r: Replication, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let sentinels = self.peers_named("-sentinel-");
        loop {
            let mut views = Vec::new();
            for s in &sentinels {
                views.push(self.sentinel_view(s).await.unwrap_or_default());
            }
            let agree = views.iter().all(|v| {
                v.get("num-slaves").map(String::as_str) == Some(&r.replicas.to_string())
                    && v.get("num-other-sentinels").map(String::as_str)
                        == Some(&(r.sentinels - 1).to_string())
            });
            if agree {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the Sentinels did not all see every replica and each other within {limit:?}: {views:?}"
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `SENTINEL MASTER drill` on Sentinel `s`, as `field → value`.
    async fn sentinel_view(&self, s: &Container) -> Result<BTreeMap<String, String>> {
        let port = self.service.env.docker.host_port(s).await?;
        let mut con = connect_to(&SentinelLogin, port).await?;
        let fields: Vec<String> = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(MASTER)
            .query_async(&mut con)
            .await?;
        Ok(fields
            .chunks(2)
            .filter_map(|kv| Some((kv.first()?.clone(), kv.get(1)?.clone())))
            .collect())
    }

    async fn info_replication_of(
        con: &mut MultiplexedConnection,
    ) -> Result<BTreeMap<String, String>> {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(con)
            .await?;
        Ok(info_fields(&info))
    }

    async fn info_replication(&self) -> Result<BTreeMap<String, String>> {
        let mut con = self.connect().await?;
        Self::info_replication_of(&mut con).await
    }

    /// Each data node's address on the run's network, by container name.
    async fn addresses(&self) -> BTreeMap<String, String> {
        let docker = &self.service.env.docker;
        let mut ips = BTreeMap::new();
        let all = self
            .service
            .containers
            .current()
            .into_iter()
            .cloned()
            .chain(self.peers_named("-replica-"))
            .chain(self.peers_named("-primary"));
        for c in all {
            if let Ok(ip) = docker.ip_of(&c).await {
                ips.insert(c.name.clone(), ip);
            }
        }
        ips
    }

    /// Each replica's state and lag, from the primary's `INFO replication`.
    pub(super) async fn replication_state(&self) -> Value {
        let ips = self.addresses().await;
        let node_of = |ip: &str| {
            ips.iter()
                .find(|(_, i)| i.as_str() == ip)
                .map(|(name, _)| name.clone())
                .unwrap_or_else(|| ip.to_string())
        };
        let mut state = match self.info_replication().await {
            Ok(info) => {
                let offset: i64 = info
                    .get("master_repl_offset")
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(0);
                let replicas: Vec<Value> = info
                    .iter()
                    .filter(|(k, _)| k.starts_with("slave") && k[5..].parse::<u32>().is_ok())
                    .map(|(_, v)| {
                        let f = replica_fields(v);
                        let behind = f
                            .get("offset")
                            .and_then(|o| o.parse::<i64>().ok())
                            .map(|o| offset - o);
                        json!({
                            "node": node_of(f.get("ip").copied().unwrap_or("?")),
                            "state": f.get("state").copied().unwrap_or("?"),
                            "sync_state": "async",
                            // What the replica last acknowledged (it does every second).
                            "behind_bytes": { "acknowledged": behind },
                            "lag_s": { "since_ack": f.get("lag").and_then(|l| l.parse::<f64>().ok()) },
                        })
                    })
                    .collect();
                json!({
                    "master_repl_offset": offset,
                    "min_replicas_to_write": info.get("min_slaves_good_slaves").cloned(),
                    "replicas": replicas,
                })
            }
            Err(e) => json!({ "error": format!("INFO replication: {e:#}") }),
        };
        if let Ok(c) = self.service.containers.serving() {
            state["primary"] = c.name.clone().into();
        }
        state
    }

    /// Fails over to a replica: Sentinel's election watched until the new primary takes writes,
    /// or without Sentinels the runbook's promotion of the replica with the largest offset.
    pub(super) async fn fail_over_to_replica(
        &mut self,
        phases: &mut RecoveryPhases,
        limit: Duration,
    ) -> Result<Restored> {
        let r = self
            .replication_options()
            .ok_or_else(|| anyhow!("the target has no replication to fail over to"))?;
        let ips = self.addresses().await;
        let old = self.service.containers.current().cloned();
        let old_ip = old.as_ref().and_then(|c| ips.get(&c.name).cloned());
        let (chosen, how, fenced) = if r.sentinels > 0 {
            phases.enter(Phase::Elect);
            let (chosen, how) = self.watch_election(old_ip.as_deref(), &ips, limit).await?;
            (chosen, how, None)
        } else {
            phases.enter(Phase::Promote);
            let (chosen, how) = self.promote_replica(old.as_ref(), &ips, limit).await?;
            let fenced = match &old {
                Some(old) => self.fence(old, false).await?,
                None => json!({ "container": null, "fenced": "nothing left to fence" }),
            };
            (chosen, how, Some(fenced))
        };
        phases.enter(Phase::Reconnect);
        self.service.take_over(&chosen)?;
        self.wait_ready(limit).await?;
        let new = self.service.containers.serving()?.clone();
        self.service.served(&new);
        *self.deposed.lock().expect("not poisoned") = old.clone().map(|c| (c, chosen.clone(), ips));
        let mut failover = json!({
            "primary_down": {
                "container": old.map(|c| c.name),
                "judged": how["judged"].clone(),
            },
            "how": how,
            "promoted": chosen,
        });
        if let Some(fenced) = fenced {
            failover["old_primary"] = fenced;
        }
        Ok(Restored {
            recovery_target: Some(match r.sentinels {
                0 => format!("the replica with the largest replication offset, {chosen}"),
                n => format!("the replica {n} Sentinels elected, {chosen}"),
            }),
            reached: Some(format!("{chosen} is the primary")),
            failover: Some(failover),
            ..Restored::default()
        })
    }

    /// After the failover: under Sentinel, the old primary, if it runs, becomes a replica of
    /// the new one (Sentinel turns it; asked for up to 10 s) or is fenced; and what each replica
    /// follows now.
    pub(super) async fn settle_topology(&mut self, limit: Duration) -> Option<Value> {
        let (old, chosen, ips) = self.deposed.lock().expect("not poisoned").take()?;
        let sentinels = self.replication_options().is_some_and(|r| r.sentinels > 0);
        let mut settled = json!({});
        if sentinels {
            let new_ip = ips.get(&chosen).cloned().unwrap_or_default();
            settled["old_primary"] = if self.rejoined(&old, &new_ip, limit).await {
                json!({
                    "container": old.name,
                    "rejoined": format!("a replica of {chosen}: Sentinel turned it with REPLICAOF, and what it took alone is gone"),
                })
            } else {
                self.fence(&old, true)
                    .await
                    .unwrap_or_else(|e| json!({ "container": old.name, "error": format!("{e:#}") }))
            };
        }
        settled["standbys_following"] = self.followers(&ips).await.into();
        Some(settled)
    }

    /// Asks every Sentinel for the primary's address until one names another node than the
    /// old primary and that node says it is a master; returns its container.
    async fn watch_election(
        &self,
        old_ip: Option<&str>,
        ips: &BTreeMap<String, String>,
        limit: Duration,
    ) -> Result<(String, Value)> {
        let deadline = give_up_within(limit);
        let sentinels = self.peers_named("-sentinel-");
        let began = Instant::now();
        loop {
            let mut said = Vec::new();
            for s in &sentinels {
                let asked = async {
                    let port = self.service.env.docker.host_port(s).await?;
                    let mut con = connect_to(&SentinelLogin, port).await?;
                    let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg(MASTER)
                        .query_async(&mut con)
                        .await?;
                    Ok::<_, anyhow::Error>(addr)
                };
                said.push((s.name.clone(), asked.await.map_err(|e| format!("{e:#}"))));
            }
            let elected = said.iter().find_map(|(_, a)| match a {
                Ok(Some((ip, _))) if Some(ip.as_str()) != old_ip => Some(ip.clone()),
                _ => None,
            });
            if let Some(ip) = elected
                && let Some((name, _)) = ips.iter().find(|(_, i)| **i == ip)
                && let Some(c) = self.peers_named(name).first()
                && self.is_master(c).await
            {
                let view: Vec<Value> = said
                    .iter()
                    .map(|(s, a)| match a {
                        Ok(Some((ip, port))) => {
                            json!({ "sentinel": s, "primary": format!("{ip}:{port}") })
                        }
                        Ok(None) => json!({ "sentinel": s, "primary": null }),
                        Err(e) => json!({ "sentinel": s, "error": e }),
                    })
                    .collect();
                return Ok((
                    name.clone(),
                    json!({
                        "judged": format!("the Sentinels' quorum (2 of 3, down after {DOWN_AFTER_MS} ms)"),
                        "sentinels": view,
                        "elected_after_ms": began.elapsed().as_millis() as u64,
                    }),
                ));
            }
            if Instant::now() >= deadline {
                bail!("no Sentinel named a new primary within {limit:?}: {said:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn is_master(&self, c: &Container) -> bool {
        let Ok(mut con) = self.on(c).await else {
            return false;
        };
        Self::info_replication_of(&mut con)
            .await
            .is_ok_and(|i| i.get("role").map(String::as_str) == Some("master"))
    }

    /// The runbook without Sentinels: the primary judged down, every replica asked for its
    /// replication offset, the largest promoted (`REPLICAOF NO ONE`), the others pointed at it.
    async fn promote_replica(
        &self,
        old: Option<&Container>,
        ips: &BTreeMap<String, String>,
        limit: Duration,
    ) -> Result<(String, Value)> {
        let judged = match old {
            Some(old) => self.judge_down(old).await?,
            None => "its container and data volume are gone".into(),
        };
        let deadline = give_up_within(limit);
        let replicas = self.peers_named("-replica-");
        let (said, best) = loop {
            let mut said = Vec::new();
            let mut best: Option<(Container, i64)> = None;
            for c in &replicas {
                let asked = tokio::time::timeout(ANSWER, async {
                    let mut con = self.on(c).await?;
                    Self::info_replication_of(&mut con).await
                })
                .await;
                match asked {
                    Ok(Ok(info)) => {
                        let offset: i64 = info
                            .get("slave_repl_offset")
                            .or(info.get("master_repl_offset"))
                            .and_then(|o| o.parse().ok())
                            .unwrap_or(0);
                        said.push(json!({ "container": c.name, "offset": offset }));
                        if best.as_ref().is_none_or(|(_, b)| offset > *b) {
                            best = Some((c.clone(), offset));
                        }
                    }
                    Ok(Err(e)) => {
                        said.push(json!({ "container": c.name, "error": format!("{e:#}") }))
                    }
                    Err(_) => {
                        said.push(json!({ "container": c.name, "error": "no answer within 2 s" }))
                    }
                }
            }
            if let Some(best) = best {
                break (said, best);
            }
            if Instant::now() >= deadline {
                bail!("no replica answered within {limit:?}: {said:?}");
            }
            tokio::time::sleep(POLL).await;
        };
        let (chosen, _) = best;
        let mut con = self.on(&chosen).await?;
        redis::cmd("REPLICAOF")
            .arg("NO")
            .arg("ONE")
            .query_async::<()>(&mut con)
            .await
            .map_err(|e| anyhow!("REPLICAOF NO ONE on {}: {e}", chosen.name))?;
        let new_ip = ips
            .get(&chosen.name)
            .ok_or_else(|| anyhow!("no address for {}", chosen.name))?;
        for c in replicas.iter().filter(|c| c.name != chosen.name) {
            if let Ok(mut other) = self.on(c).await {
                let _ = redis::cmd("REPLICAOF")
                    .arg(new_ip)
                    .arg(PORT)
                    .query_async::<()>(&mut other)
                    .await;
            }
        }
        Ok((
            chosen.name.clone(),
            json!({ "judged": judged, "replicas": said }),
        ))
    }

    /// Whether the primary is down, as a runbook judges it: its container stopped, or no
    /// answer to `PING` within 2 s. A primary that answers is not failed over.
    async fn judge_down(&self, primary: &Container) -> Result<String> {
        match self.service.env.docker.state(primary).await? {
            (false, code) => Ok(format!(
                "its container stopped (exit code {})",
                code.unwrap_or(-1)
            )),
            (true, _) => {
                let answer = tokio::time::timeout(ANSWER, async {
                    let mut con = self.on(primary).await?;
                    redis::cmd("PING")
                        .query_async::<String>(&mut con)
                        .await
                        .map_err(anyhow::Error::from)
                })
                .await;
                match answer {
                    Ok(Ok(_)) => bail!(
                        "the primary {} still answers: a runbook does not promote a replica beside a live primary",
                        primary.name
                    ),
                    Ok(Err(e)) => Ok(format!("no answer: {e:#}")),
                    Err(_) => Ok("no answer within 2 s".into()),
                }
            }
        }
    }

    /// Whether the old primary, still running, became a replica of the new primary (at
    /// `new_ip`), as Sentinel makes a returning primary; asked for up to [`REJOIN`] (within 90 %
    /// of the step's `limit`).
    async fn rejoined(&self, old: &Container, new_ip: &str, limit: Duration) -> bool {
        let deadline = (Instant::now() + REJOIN).min(give_up_within(limit));
        if !matches!(self.service.env.docker.state(old).await, Ok((true, _))) {
            return false;
        }
        while Instant::now() < deadline {
            if let Ok(mut con) = self.on(old).await
                && let Ok(info) = Self::info_replication_of(&mut con).await
                && info.get("role").map(String::as_str) == Some("slave")
                && info.get("master_host").map(String::as_str) == Some(new_ip)
            {
                return true;
            }
            tokio::time::sleep(POLL).await;
        }
        false
    }

    /// Fences the old primary: a container still running is killed and left stopped. Under
    /// Sentinel a primary that comes back is turned into a replica of the new one.
    async fn fence(&self, old: &Container, sentinels: bool) -> Result<Value> {
        let docker = &self.service.env.docker;
        let (running, code) = docker.state(old).await?;
        let after = if sentinels {
            "; Sentinel would make it a replica of the new primary were it started again"
        } else {
            ""
        };
        if !running {
            return Ok(json!({
                "container": old.name,
                "fenced": format!("stopped (exit code {}) and left stopped{after}", code.unwrap_or(-1)),
            }));
        }
        if docker.paused(old).await? {
            docker.unpause(old).await?;
        }
        docker.kill(old, "SIGKILL").await?;
        Ok(json!({
            "container": old.name,
            "fenced": format!("still running: killed (SIGKILL) and left stopped{after}"),
        }))
    }

    /// What each other replica follows now, as its own `INFO replication` says.
    async fn followers(&self, ips: &BTreeMap<String, String>) -> Vec<Value> {
        let mut followers = Vec::new();
        for c in self.peers_named("-replica-") {
            let info = async {
                let mut con = self.on(&c).await?;
                Self::info_replication_of(&mut con).await
            };
            followers.push(match info.await {
                Ok(i) => {
                    let host = i.get("master_host").cloned().unwrap_or_default();
                    let follows = ips
                        .iter()
                        .find(|(_, ip)| **ip == host)
                        .map_or(host, |(name, _)| name.clone());
                    json!({
                        "container": c.name,
                        "follows": follows,
                        "link": i.get("master_link_status"),
                    })
                }
                Err(e) => json!({ "container": c.name, "error": format!("{e:#}") }),
            });
        }
        followers
    }
}
