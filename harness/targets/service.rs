//! What every kind's target shares, written once: its run environment and containers, the host
//! port its writers and probes follow across restarts and restores ([`Endpoint`]), connecting
//! with a timeout ([`Connector`]), readiness polling and crash recovery in place ([`Service`]),
//! and connections that are replaced after an abandoned write ([`Session`]). A kind's module
//! keeps only what is its own: how to start it, write, read back, back up, restore and damage
//! it.

use std::future::Future;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;

use super::TargetEnv;
use crate::docker::{Container, ContainerSpec, Docker};
use crate::spec::{FaultKind, FaultSpec, Isolate, Toxics};

/// How long a connection may take to open, unless the kind says otherwise.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// When a wait inside a step bounded by `limit` gives up: a tenth of the limit early, so that
/// what it waited for not happening is reported as a finding (a failover that found no new
/// primary) rather than the step overrunning its timeout.
pub fn give_up_within(limit: Duration) -> Instant {
    Instant::now() + limit.mul_f64(0.9)
}

/// How a kind opens a connection (or a session on one) to the port a container publishes.
#[async_trait]
pub trait Connector: Clone + Send + Sync + 'static {
    type Connection: Send + Sync;

    /// Opens a connection to `127.0.0.1:port`; [`Endpoint::connect`] bounds it.
    async fn open(&self, port: u16) -> Result<Self::Connection>;

    /// Whether a connection kept from before can still be used.
    fn alive(&self, _connection: &Self::Connection) -> bool {
        true
    }

    /// How long [`Connector::open`] may take.
    fn timeout(&self) -> Duration {
        CONNECT_TIMEOUT
    }
}

/// Where the serving container listens, and how to connect to it. Clones follow restarts and
/// restores: the port is watched.
#[derive(Clone)]
pub struct Endpoint<C> {
    port: watch::Receiver<u16>,
    connector: C,
}

impl<C: Connector> Endpoint<C> {
    /// A new connection to the serving container, bounded by the connector's timeout.
    pub async fn connect(&self) -> Result<C::Connection> {
        let port = *self.port.borrow();
        if port == 0 {
            bail!("no container is serving");
        }
        connect_to(&self.connector, port).await
    }
}

/// Opens a connection to `port` with `connector`, bounded by its timeout.
pub async fn connect_to<C: Connector>(connector: &C, port: u16) -> Result<C::Connection> {
    let limit = connector.timeout();
    tokio::time::timeout(limit, connector.open(port))
        .await
        .map_err(|_| anyhow!("connect to 127.0.0.1:{port}: no answer within {limit:?}"))?
        .map_err(|e| anyhow!("connect to 127.0.0.1:{port}: {e:#}"))
}

/// A connection a writer or a prober keeps from one use to the next: opened on first use, and
/// replaced when it broke or when a write on it was abandoned mid-flight (the workload's
/// timeout cut it off, so what the connection holds is unknown).
pub struct Session<C: Connector> {
    endpoint: Endpoint<C>,
    connection: Option<C::Connection>,
    in_flight: bool,
}

impl<C: Connector> Session<C> {
    pub fn new(endpoint: Endpoint<C>) -> Self {
        Session {
            endpoint,
            connection: None,
            in_flight: false,
        }
    }

    /// The connection, opened again when there is none, it broke, or a write was abandoned.
    pub async fn connection(&mut self) -> Result<&mut C::Connection> {
        if std::mem::take(&mut self.in_flight) {
            self.connection = None;
        }
        if self
            .connection
            .as_ref()
            .is_none_or(|c| !self.endpoint.connector.alive(c))
        {
            self.connection = Some(self.endpoint.connect().await?);
        }
        Ok(self.connection.as_mut().expect("opened above"))
    }

    /// The connection for a write, which is on the wire from now until [`Session::landed`]:
    /// if the workload abandons it before then, the next use opens a new connection.
    pub async fn begin(&mut self) -> Result<&mut C::Connection> {
        self.connection().await?;
        self.in_flight = true;
        Ok(self.connection.as_mut().expect("opened above"))
    }

    /// The write in flight has its answer.
    pub fn landed(&mut self) {
        self.in_flight = false;
    }

    /// Drops the connection: the next use opens a new one.
    pub fn reset(&mut self) {
        self.connection = None;
    }
}

/// The files `disk-full` fills a data volume with.
const FILLER: &str = "drillrig-filler";

/// Polls this often until a container is ready: the wait is part of every RTO, so a coarse
/// poll would add up to its period to each recovery.
const READY_POLL: Duration = Duration::from_millis(25);
/// One readiness check that takes longer fails, and the next one starts: a client library
/// waiting on a half-open connection must not hold up provisioning until its deadline.
const READY_ATTEMPT: Duration = Duration::from_secs(10);

/// A target's service: the run environment, the containers it has had, and the host port of
/// the one serving now.
pub struct Service {
    pub env: TargetEnv,
    pub containers: Containers,
    port: watch::Sender<u16>,
    /// The service's name in messages: `PostgreSQL`, `Redis`, `RabbitMQ`.
    what: &'static str,
    /// Containers that answered their readiness query at least once: only a service that
    /// served can have an outage (a restore that never came up is the restore's failure).
    served: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// The `latency` fault's proxy, in front of every client connection when the target is
    /// proxied, and the port it listens on.
    proxy: Option<(crate::proxy::Proxy, watch::Sender<u16>)>,
    /// Who a user logs in as, and into what: `(user, database)` (a kept run's
    /// `connections.json`).
    login: (&'static str, String),
}

impl Service {
    /// `user` and `database`: what a user logs in as and into (PostgreSQL's database,
    /// RabbitMQ's vhost, Redis's database number), for a kept run's `connections.json`.
    pub fn new(env: TargetEnv, what: &'static str, user: &'static str, database: &str) -> Self {
        Service {
            containers: Containers::new(&env.spec.name),
            env,
            port: watch::channel(0).0,
            what,
            served: Default::default(),
            proxy: None,
            login: (user, database.to_string()),
        }
    }

    /// The target's generated password, for a kind's [`Connector`].
    pub fn password(&self) -> std::sync::Arc<str> {
        self.env.password.as_str().into()
    }

    /// A new connection to the serving container with `connector`.
    pub async fn connect<C: Connector>(&self, connector: C) -> Result<C::Connection> {
        self.endpoint(connector).connect().await
    }

    /// An endpoint on the serving container, connecting with `connector`.
    pub fn endpoint<C: Connector>(&self, connector: C) -> Endpoint<C> {
        let port = match &self.proxy {
            Some((_, through)) => through.subscribe(),
            None => self.port.subscribe(),
        };
        Endpoint { port, connector }
    }

    /// Nothing serves now (the container and its volume are gone): clients fail at once.
    pub fn unpublish(&self) {
        self.port.send_replace(0);
    }

    /// Names the next container and creates its data volume: `(name, volume)`.
    pub async fn next_container(&mut self) -> Result<(String, String)> {
        self.containers
            .next(&self.env.docker, self.env.spec.volume_limit)
            .await
    }

    /// The `kill` fault: SIGKILL to the container of `node` (the serving one by default), which
    /// must then have stopped.
    pub async fn kill(&self, node: Option<&str>) -> Result<serde_json::Value> {
        let c = self.containers.node(node)?;
        self.env.docker.kill(c, "SIGKILL").await?;
        Ok(serde_json::json!({
            "container": c.name,
            "signal": "SIGKILL",
            "exit_code": self.exit_code_after(c, "SIGKILL").await?,
            "note": "a process crash, not a host crash: what the service wrote but did not fsync survives in the host's page cache",
        }))
    }

    /// The `stop` fault: a graceful stop through the engine, which sends the image's stop signal
    /// (PostgreSQL: SIGINT, a fast shutdown; Redis and RabbitMQ: SIGTERM) and waits up to 30 s
    /// for the service's own shutdown. The container must then have stopped; its exit code says
    /// whether the shutdown was clean.
    pub async fn stop(&self, node: Option<&str>) -> Result<serde_json::Value> {
        let c = self.containers.node(node)?;
        self.env.docker.stop(c, Duration::from_secs(30)).await?;
        Ok(serde_json::json!({
            "container": c.name,
            "signal": "the image's stop signal (SIGKILL after 30 s)",
            "exit_code": self.exit_code_after(c, "a stop").await?,
        }))
    }

    /// The `pause` fault: every process of the serving container frozen by the engine (the
    /// cgroup freezer), which must then report it paused. Connections stay open and unanswered.
    pub async fn pause(&self, node: Option<&str>) -> Result<serde_json::Value> {
        let c = self.containers.node(node)?;
        self.env.docker.pause(c).await?;
        if !self.env.docker.paused(c).await? {
            bail!("the engine does not report container {} paused", c.name);
        }
        Ok(serde_json::json!({ "container": c.name, "paused": true }))
    }

    /// Heals `pause`: the container thaws, and the engine must report it running again.
    pub async fn unpause(&self, node: Option<&str>) -> Result<serde_json::Value> {
        let c = self.containers.node(node)?;
        self.env.docker.unpause(c).await?;
        if self.env.docker.paused(c).await? {
            bail!("container {} is still paused after unpause", c.name);
        }
        Ok(serde_json::json!({ "container": c.name, "paused": false }))
    }

    /// The `network-partition` fault: the serving container is taken off the run's network, which
    /// also withdraws its published port, so every client of the drill is cut off (established
    /// connections break, new ones are refused) while the service runs on. The engine must then
    /// show the container on no network and publishing nothing.
    pub async fn partition(&self, node: Option<&str>) -> Result<serde_json::Value> {
        let c = self.containers.node(node)?;
        let docker = &self.env.docker;
        let port = docker.host_port(c).await?;
        docker.leave_network(c).await?;
        let networks = docker.networks_of(c).await?;
        if !networks.is_empty() {
            bail!("container {} is still on {networks:?}", c.name);
        }
        if let Ok(p) = docker.host_port(c).await {
            bail!("container {} still publishes host port {p}", c.name);
        }
        Ok(serde_json::json!({
            "container": c.name,
            "cut_from": ["the run's network", format!("host port {port}")],
        }))
    }

    /// `network-partition` with `isolate = "peers"`: the container of `node` can no longer
    /// reach the target's other containers (its replicas, standbys, Sentinels): a blackhole
    /// route to each of their addresses in its own network stack (replicated targets' containers
    /// have `CAP_NET_ADMIN` for this), so no packet of it reaches
    /// them, while its clients, who come through the published port from the host's side of
    /// the bridge, still reach it. The container must then list every route.
    pub async fn isolate_from_peers(&self, node: Option<&str>) -> Result<serde_json::Value> {
        let c = self.containers.node(node)?;
        let docker = &self.env.docker;
        let mut cut = Vec::new();
        for other in self
            .containers
            .current()
            .into_iter()
            .chain(self.containers.peers().iter().map(|(p, _)| p))
            .filter(|o| o.id != c.id)
        {
            if let Ok(ip) = docker.ip_of(other).await {
                cut.push((other.name.clone(), ip));
            }
        }
        if cut.is_empty() {
            bail!("{} has no peer to be cut off from", c.name);
        }
        for (_, ip) in &cut {
            let route = format!("{ip}/32");
            let out = docker
                .exec(c, "root", &["ip", "route", "add", "blackhole", &route])
                .await?;
            if out.exit_code != 0 {
                bail!("cut {} off from {ip}: {}", c.name, out.tail());
            }
        }
        let routes = self.blackholes(c).await?;
        if let Some((name, ip)) = cut.iter().find(|(_, ip)| !routes.contains(ip)) {
            bail!("{} still has a route to {name} ({ip})", c.name);
        }
        Ok(serde_json::json!({
            "container": c.name,
            "isolate": "peers",
            "cut_from": cut.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            "blackholes": routes,
            "clients": format!("still reach it on host port {}", docker.host_port(c).await?),
        }))
    }

    /// The addresses `c`'s own routing table sends nowhere.
    async fn blackholes(&self, c: &Container) -> Result<Vec<String>> {
        let out = self
            .env
            .docker
            .exec(c, "root", &["ip", "route", "show", "type", "blackhole"])
            .await?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(|ip| ip.trim_end_matches("/32").to_string())
            .collect())
    }

    /// Heals `isolate = "peers"`: every blackhole route goes, and the container must list none.
    pub async fn rejoin_peers(&self, node: Option<&str>) -> Result<serde_json::Value> {
        let c = self.containers.node(node)?;
        let routes = self.blackholes(c).await?;
        for ip in &routes {
            let route = format!("{ip}/32");
            self.env
                .docker
                .exec(c, "root", &["ip", "route", "del", "blackhole", &route])
                .await?;
        }
        let left = self.blackholes(c).await?;
        if !left.is_empty() {
            bail!("{} still cannot reach {left:?}", c.name);
        }
        Ok(serde_json::json!({ "container": c.name, "reachable_again": routes }))
    }

    /// Heals `network-partition`: the container rejoins the run's network and publishes its
    /// port again (a new host port, which writers and probes follow).
    pub async fn reconnect(&self, node: Option<&str>) -> Result<serde_json::Value> {
        let c = self.containers.node(node)?;
        self.env.docker.join_network(c).await?;
        let port = self.env.docker.host_port(c).await?;
        if self.containers.is_serving(c) {
            self.port.send_replace(port);
        }
        Ok(serde_json::json!({ "container": c.name, "host_port": port }))
    }

    /// The `disk-full` fault's first half: the data volume mounted at `mount` (a tmpfs of fixed
    /// size, [`crate::spec::DISK_FULL_VOLUME`]) is filled to its last byte by filler files, as
    /// root inside the container. Returns the volume's size and what is left (0).
    pub async fn fill_volume(&self, mount: &str) -> Result<serde_json::Value> {
        let c = self.containers.serving()?;
        if self.env.spec.volume_limit.is_none() {
            bail!("the data volume of {} has no fixed size", c.name);
        }
        let script = format!(
            "avail=$(df -B1 --output=avail {mount} | tail -1) \
             && fallocate -l \"$avail\" {mount}/{FILLER} \
             ; dd if=/dev/zero of={mount}/{FILLER}-tail bs=4096 2>/dev/null \
             ; df -B1 --output=size,avail {mount} | tail -1"
        );
        let out = self
            .env
            .docker
            .exec(c, "root", &["sh", "-c", &script])
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let numbers: Vec<u64> = text
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        let [size, avail] = numbers[..] else {
            bail!("filling {mount} in {}: {}", c.name, out.tail());
        };
        if avail > 0 {
            bail!(
                "{mount} in {} still has {avail} bytes free after filling",
                c.name
            );
        }
        Ok(serde_json::json!({
            "container": c.name,
            "volume": mount,
            "volume_bytes": size,
            "available_bytes": avail,
        }))
    }

    /// Heals `disk-full`: the filler files are removed; returns the space free again.
    pub async fn empty_volume(&self, mount: &str) -> Result<serde_json::Value> {
        let c = self.containers.serving()?;
        let script = format!(
            "rm -f {mount}/{FILLER} {mount}/{FILLER}-tail && df -B1 --output=avail {mount} | tail -1"
        );
        let out = self
            .env
            .docker
            .exec(c, "root", &["sh", "-c", &script])
            .await?;
        let avail: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| anyhow!("emptying {mount} in {}: {}", c.name, out.tail()))?;
        Ok(serde_json::json!({ "available_bytes": avail }))
    }

    /// The exit code of `c`, which `what` must have stopped: an error if it still runs.
    async fn exit_code_after(&self, c: &Container, what: &str) -> Result<Option<i64>> {
        let (running, exit_code) = self.env.docker.state(c).await?;
        if running {
            bail!("container {} still runs after {what}", c.name);
        }
        Ok(exit_code)
    }

    /// The `volume-loss` fault: the serving container and its data volume are removed, and
    /// clients see nothing serving at all. What survives is the backup repository, outside
    /// every container.
    pub async fn lose_volume(&mut self) -> Result<serde_json::Value> {
        let removed = self.containers.remove_with_volume(&self.env.docker).await?;
        self.unpublish();
        Ok(removed)
    }

    /// Starts `spec` as the serving container; the kind then waits until it is ready. A proxied
    /// target's proxy starts with its first container.
    pub async fn start(&mut self, spec: &ContainerSpec) -> Result<()> {
        if self.env.spec.proxied && self.proxy.is_none() {
            let proxy = crate::proxy::Proxy::start(self.port.subscribe(), self.env.seed).await?;
            let through = watch::channel(proxy.port()).0;
            self.proxy = Some((proxy, through));
        }
        self.containers.start(&self.env.docker, spec).await?;
        self.announce()
    }

    /// Records how a user logs in to the serving container (a kept run's `connections.json`).
    fn announce(&self) -> Result<()> {
        let access = crate::docker::Access {
            kind: self.env.spec.kind.as_str(),
            user: self.login.0.to_string(),
            password: self.env.password.clone(),
            database: self.login.1.clone(),
        };
        let c = self.containers.serving()?;
        self.env.docker.serves(&self.env.spec.name, c, access);
        Ok(())
    }

    /// Starts `spec` beside the serving container (a standby): it serves no client until
    /// [`Service::take_over`].
    pub async fn start_peer(&mut self, spec: &ContainerSpec) -> Result<Container> {
        let c = self.env.docker.start(spec).await?;
        let volume = spec.volume.as_ref().map(|(v, _)| v.clone());
        self.containers
            .add_peer(c.clone(), volume.unwrap_or_default());
        Ok(c)
    }

    /// Failover: the peer `name` serves from now on; the caller then waits until it is ready,
    /// which publishes its port to every client.
    pub fn take_over(&mut self, name: &str) -> Result<()> {
        self.containers.promote(name)?;
        self.announce()
    }

    /// Marks `c` as having served (its log counts for [`Service::log_lines`]).
    pub fn served(&self, c: &Container) {
        let mut served = self.served.lock().expect("not poisoned");
        served.insert(c.name.clone());
    }

    /// The `latency` fault: from now on drillrig's proxy applies `toxics` to every connection
    /// between the target and its clients.
    pub fn slow_down(&self, toxics: Toxics) -> Result<serde_json::Value> {
        let proxy = self.proxy()?;
        proxy.set(Some(toxics));
        Ok(serde_json::json!({
            "proxy_port": proxy.port(),
            "delay_ms": toxics.delay.as_millis() as u64,
            "jitter_ms": toxics.jitter.as_millis() as u64,
            "bandwidth_bytes_per_s": toxics.bandwidth,
            "reset_after_ms": toxics.reset.map(|r| r.as_millis() as u64),
            "each_way": true,
            "resets_before": proxy.resets(),
        }))
    }

    /// Heals `latency`: the proxy only copies again. Says how many connections it has reset.
    pub fn speed_up(&self) -> Result<serde_json::Value> {
        let proxy = self.proxy()?;
        proxy.set(None);
        Ok(serde_json::json!({ "delay_ms": 0, "resets_so_far": proxy.resets() }))
    }

    fn proxy(&self) -> Result<&crate::proxy::Proxy> {
        match &self.proxy {
            Some((proxy, _)) => Ok(proxy),
            None => bail!(
                "target {} is not behind the latency proxy",
                self.env.spec.name
            ),
        }
    }

    /// Publishes the serving container's host port, then polls `ready` on it (a real query,
    /// never a bare port connect) until it answers `Ok`. Fails early, with the end of the
    /// container's log, when the container exits.
    pub async fn wait_ready<F, Fut>(&self, limit: Duration, mut ready: F) -> Result<()>
    where
        F: FnMut(u16) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let c = self.containers.serving()?;
        let deadline = Instant::now() + limit;
        loop {
            let last_error = match self.env.docker.host_port(c).await {
                Ok(port) => {
                    self.port.send_replace(port);
                    match tokio::time::timeout(READY_ATTEMPT, ready(port)).await {
                        Ok(Ok(())) => {
                            let mut served = self.served.lock().expect("not poisoned");
                            served.insert(c.name.clone());
                            return Ok(());
                        }
                        Ok(Err(e)) => e,
                        Err(_) => format!("no answer within {READY_ATTEMPT:?}"),
                    }
                }
                Err(e) => format!("{e:#}"),
            };
            if let Ok((false, code)) = self.env.docker.state(c).await {
                bail!(
                    "container {} exited (code {}) before {} answered: {last_error}; its log ends: {}",
                    c.name,
                    code.unwrap_or(-1),
                    self.what,
                    self.log_tail(c).await
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} in {} did not answer within {}: {last_error}",
                    self.what,
                    c.name,
                    humantime::format_duration(limit)
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Crash recovery in place: stops the serving container if it still runs, and starts it
    /// again on its own data. The caller then waits until it is ready.
    pub async fn start_again(&self) -> Result<()> {
        let c = self.containers.serving()?;
        if let Ok((true, _)) = self.env.docker.state(c).await {
            self.env.docker.stop(c, Duration::from_secs(30)).await?;
        }
        self.env.docker.start_again(c).await
    }

    /// Lines of the logs of every container that served (answered its readiness query) that
    /// contain one of `patterns`, each as `container: line`. A log that cannot be read (a
    /// removed container) is skipped.
    pub async fn log_lines(&self, patterns: &[&str]) -> Vec<String> {
        let mut found = Vec::new();
        let served = self.served.lock().expect("not poisoned").clone();
        for c in self
            .containers
            .started()
            .iter()
            .filter(|c| served.contains(&c.name))
        {
            let Ok(logs) = self.env.docker.logs(c).await else {
                continue;
            };
            let logs = String::from_utf8_lossy(&logs);
            found.extend(
                logs.lines()
                    .filter(|l| patterns.iter().any(|p| l.contains(p)))
                    .map(|l| format!("{}: {}", c.name, l.trim())),
            );
        }
        found
    }

    /// The last lines of a container's log that say something.
    pub async fn log_tail(&self, c: &Container) -> String {
        let Ok(logs) = self.env.docker.logs(c).await else {
            return "(unreadable)".into();
        };
        let logs = String::from_utf8_lossy(&logs);
        let telling: Vec<&str> = logs
            .lines()
            .filter(|l| {
                l.contains(" # ")
                    || l.contains("FATAL")
                    || l.contains("PANIC")
                    || l.contains("Bad file")
                    || l.contains("error")
            })
            .collect();
        let lines = if telling.is_empty() {
            logs.lines().collect()
        } else {
            telling
        };
        lines[lines.len().saturating_sub(3)..]
            .iter()
            .map(|l| l.trim())
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// The containers a target has had: the one serving now, its data volume, and how many were
/// started (which names the next: `pg-1`, `pg-2`, …).
pub struct Containers {
    target: String,
    /// Every container started so far, oldest first.
    started: Vec<Container>,
    current: Option<Container>,
    volume: Option<String>,
    /// Containers running beside the serving one (standbys), with their data volumes.
    peers: Vec<(Container, String)>,
    generation: u32,
}

impl Containers {
    pub fn new(target: &str) -> Self {
        Containers {
            target: target.into(),
            started: Vec::new(),
            current: None,
            volume: None,
            peers: Vec::new(),
            generation: 0,
        }
    }

    /// Every container started so far, oldest first (removed ones included).
    pub fn started(&self) -> &[Container] {
        &self.started
    }

    /// The container serving the target now, if any.
    pub fn current(&self) -> Option<&Container> {
        self.current.as_ref()
    }

    /// The container serving the target now, or an error naming the target.
    pub fn serving(&self) -> Result<&Container> {
        self.current
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("target {} has no container", self.target))
    }

    /// The serving container's data volume.
    pub fn volume(&self) -> Result<String> {
        let c = self.serving()?;
        self.volume
            .clone()
            .ok_or_else(|| anyhow::anyhow!("container {} has no data volume", c.name))
    }

    /// How many containers were started so far.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Names the next container and creates its data volume: `(name, volume)`.
    pub async fn next(&mut self, docker: &Docker, limit: Option<u64>) -> Result<(String, String)> {
        let name = format!("{}-{}", self.target, self.generation + 1);
        self.named(docker, &name, limit).await
    }

    /// Names the container of a replicated target's `node` (`pg-primary`, `pg-standby-1`) and
    /// creates its data volume: `(name, volume)`.
    pub async fn next_node(
        &mut self,
        docker: &Docker,
        node: &str,
        limit: Option<u64>,
    ) -> Result<(String, String)> {
        let name = format!("{}-{node}", self.target);
        self.named(docker, &name, limit).await
    }

    async fn named(
        &mut self,
        docker: &Docker,
        name: &str,
        limit: Option<u64>,
    ) -> Result<(String, String)> {
        self.generation += 1;
        let volume = docker.create_volume(&format!("{name}-data"), limit).await?;
        Ok((name.to_string(), volume))
    }

    /// The container of `node` (`standby-1`: the container named `<target>-standby-1`, serving
    /// or not); `None` or `primary`: the serving container.
    pub fn node(&self, node: Option<&str>) -> Result<&Container> {
        let Some(node) = node.filter(|n| *n != "primary") else {
            return self.serving();
        };
        let name = format!("{}-{node}", self.target);
        self.current
            .iter()
            .chain(self.peers.iter().map(|(c, _)| c))
            .find(|c| c.name == name)
            .ok_or_else(|| anyhow::anyhow!("target {} has no node {node}", self.target))
    }

    /// Whether `c` is the serving container.
    pub fn is_serving(&self, c: &Container) -> bool {
        self.current.as_ref().is_some_and(|s| s.id == c.id)
    }

    /// The containers that run beside the serving one (a replicated target's standbys), with
    /// their data volumes.
    pub fn peers(&self) -> &[(Container, String)] {
        &self.peers
    }

    /// A container started beside the serving one (a standby), with its data volume.
    pub fn add_peer(&mut self, container: Container, volume: String) {
        self.started.push(container.clone());
        self.peers.push((container, volume));
    }

    /// Failover: the peer named `name` serves from now on, and the container that served
    /// becomes a peer.
    pub fn promote(&mut self, name: &str) -> Result<()> {
        let i = self
            .peers
            .iter()
            .position(|(c, _)| c.name == name)
            .ok_or_else(|| anyhow::anyhow!("target {} has no standby {name}", self.target))?;
        let (container, volume) = self.peers.remove(i);
        if let (Some(old), Some(old_volume)) = (self.current.take(), self.volume.take()) {
            self.peers.push((old, old_volume));
        }
        self.current = Some(container);
        self.volume = Some(volume);
        Ok(())
    }

    /// Starts `spec`, which then serves the target with the volume it mounts.
    pub async fn start(&mut self, docker: &Docker, spec: &ContainerSpec) -> Result<()> {
        let container = docker.start(spec).await?;
        self.started.push(container.clone());
        self.volume = spec.volume.as_ref().map(|(v, _)| v.clone());
        self.current = Some(container);
        Ok(())
    }

    /// The `volume-loss` fault: removes the serving container and its data volume. Returns what
    /// was removed, for the fault's record.
    pub async fn remove_with_volume(&mut self, docker: &Docker) -> Result<serde_json::Value> {
        let c = self.serving()?.clone();
        let volume = self.volume()?;
        docker.remove(&c).await?;
        docker.remove_volume(&volume).await?;
        self.current = None;
        self.volume = None;
        Ok(serde_json::json!({ "container": c.name, "volume": volume }))
    }
}

#[async_trait::async_trait]
impl super::Outages for Service {
    async fn inject(&mut self, fault: &FaultSpec) -> Result<serde_json::Value> {
        // An outage's aim is the node it hits (`standby-1`), as a replicated kind names it;
        // `None`: the serving container.
        let node = fault.aim.as_deref();
        match fault.kind {
            FaultKind::Kill => self.kill(node).await,
            FaultKind::Stop => self.stop(node).await,
            FaultKind::Pause => self.pause(node).await,
            FaultKind::NetworkPartition if fault.isolate == Isolate::Peers => {
                self.isolate_from_peers(node).await
            }
            FaultKind::NetworkPartition => self.partition(node).await,
            FaultKind::Latency => self.slow_down(fault.toxics.expect("validation sets the toxics")),
            FaultKind::VolumeLoss => self.lose_volume().await,
            other => bail!("fault {other} is no outage of a service"),
        }
    }

    async fn heal(&mut self, fault: &FaultSpec) -> Result<serde_json::Value> {
        // An outage's aim is the node it hits (`standby-1`), as a replicated kind names it;
        // `None`: the serving container.
        let node = fault.aim.as_deref();
        match fault.kind {
            FaultKind::Pause => self.unpause(node).await,
            FaultKind::NetworkPartition if fault.isolate == Isolate::Peers => {
                self.rejoin_peers(node).await
            }
            FaultKind::NetworkPartition => self.reconnect(node).await,
            FaultKind::Latency => self.speed_up(),
            other => bail!("fault {other} does not heal"),
        }
    }
}
