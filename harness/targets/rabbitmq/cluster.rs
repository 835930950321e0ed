//! A three-node cluster: one Erlang cookie (derived from the run's password, written into each
//! container, never on a command line), node-2 and node-3 joined to node-1 with `rabbitmqctl
//! join_cluster`, the quorum queue's members read with `rabbitmq-queues quorum_status` just
//! before a fault, and the failover the cluster does on its own: drillrig watches until a
//! running node holds a quorum queue leader and serves the clients, then starts every lost node
//! again and waits until the cluster lists it running.

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::schema::MqOptions;
use super::{DATA, PORT, RabbitMq, USER, USER_CONF};
use crate::docker::{Container, ContainerSpec};
use crate::measure::{Phase, RecoveryPhases};
use crate::targets::Restored;
use crate::targets::service::{connect_to, give_up_within};

/// Where every node finds the cluster's Erlang cookie.
const COOKIE: &str = "/var/lib/rabbitmq/.erlang.cookie";
/// How often a node that does not answer yet is asked again.
const POLL: Duration = Duration::from_millis(200);

impl RabbitMq {
    /// The cluster's node count, when the target is one.
    pub(super) fn cluster_nodes(&self) -> Option<u8> {
        self.service
            .env
            .spec
            .options_of::<MqOptions>()
            .and_then(|o| o.cluster)
    }

    /// The container spec of a node: its host name is its name on the run's network (node
    /// names are `rabbit@<host name>`), and a clustered node gets the cookie, made readable by
    /// its owner only before the image's entrypoint starts the broker.
    pub(super) fn node_spec(&self, name: String, volume: String) -> ContainerSpec {
        let clustered = self.cluster_nodes().is_some();
        let hostname = if clustered {
            self.service.env.docker.dns_name(&Container {
                id: String::new(),
                name: name.clone(),
                port: PORT,
            })
        } else {
            // The node name (rabbit@<hostname>) stays the same across restarts.
            format!("drillrig-{}", self.service.env.spec.name)
        };
        let mut files = vec![(
            USER_CONF.into(),
            format!(
                "default_user = {USER}\ndefault_pass = {}\n",
                self.service.env.password
            )
            .into_bytes(),
        )];
        let (entrypoint, cmd) = if clustered {
            files.push((COOKIE.into(), self.cookie().into_bytes()));
            (
                Some("sh".to_string()),
                vec![
                    "-c".to_string(),
                    format!("chmod 400 {COOKIE} && exec docker-entrypoint.sh rabbitmq-server"),
                ],
            )
        } else {
            (None, Vec::new())
        };
        ContainerSpec {
            name,
            image: self.service.env.image.clone(),
            // The default user comes from a configuration file written into the container
            // before it starts, not from RABBITMQ_DEFAULT_PASS: no environment `docker inspect`
            // shows holds the password.
            env: Vec::new(),
            cmd,
            port: PORT,
            volume: Some((volume, DATA.into())),
            binds: Vec::new(),
            entrypoint,
            copy_in: Vec::new(),
            files,
            hostname: Some(hostname),
            net_admin: clustered,
            startup_timeout: self.service.env.timeouts.provision
                + self.service.env.timeouts.restore,
        }
    }

    /// The cluster's Erlang cookie: a digest of the run's generated password.
    fn cookie(&self) -> String {
        let digest = Sha256::digest(format!("erlang-cookie:{}", self.service.env.password));
        hex::encode(&digest[..16]).to_uppercase()
    }

    /// `rabbitmq-server`'s node name of container `c`.
    fn node_name(&self, c: &Container) -> String {
        format!("rabbit@{}", self.service.env.docker.dns_name(c))
    }

    /// Runs `tool` (`rabbitmqctl`, `rabbitmq-queues`) with `args` in container `c`.
    async fn ctl_in(&self, c: &Container, tool: &str, args: &[&str]) -> Result<String> {
        let mut cmd = vec![tool];
        cmd.extend_from_slice(args);
        let out = self.service.env.docker.exec(c, "rabbitmq", &cmd).await?;
        if !out.success() {
            bail!(
                "{tool} {} in {} exited with {}: {}",
                args.join(" "),
                c.name,
                out.exit_code,
                out.tail()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts node-2 and node-3 beside node-1 (already serving), joins each to node-1, and
    /// waits until node-1 lists all three running.
    pub(super) async fn start_cluster(&mut self, nodes: u8) -> Result<()> {
        let docker = self.service.env.docker.clone();
        let limit = self.service.env.timeouts.provision;
        let first = self.service.containers.serving()?.clone();
        let seed = self.node_name(&first);
        for i in 2..=nodes {
            let (name, volume) = self
                .service
                .containers
                .next_node(&docker, &format!("node-{i}"), None)
                .await?;
            let c = self
                .service
                .start_peer(&self.node_spec(name, volume))
                .await?;
            self.until_answering(&c, limit).await?;
            for args in [
                vec!["stop_app"],
                vec!["join_cluster", seed.as_str()],
                vec!["start_app"],
            ] {
                self.ctl_in(&c, "rabbitmqctl", &args).await?;
            }
        }
        self.until_running(&first, nodes as usize, limit).await?;
        Ok(())
    }

    /// Polls `c` until an AMQP channel opens on it; fails early when its container exits.
    async fn until_answering(&self, c: &Container, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let docker = &self.service.env.docker;
        loop {
            let last = match docker.host_port(c).await {
                Ok(port) => match connect_to(&self.login("/"), port).await {
                    Ok((connection, _)) => {
                        let _ = connection.close(200, "ready".into()).await;
                        return Ok(());
                    }
                    Err(e) => format!("{e:#}"),
                },
                Err(e) => format!("{e:#}"),
            };
            if let Ok((false, code)) = docker.state(c).await {
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

    /// The nodes `c`'s `rabbitmqctl cluster_status` lists running.
    async fn running_nodes(&self, c: &Container) -> Result<Vec<String>> {
        let status = self
            .ctl_in(c, "rabbitmqctl", &["cluster_status", "--formatter", "json"])
            .await?;
        let status: Value = serde_json::from_str(&status)
            .map_err(|e| anyhow!("cluster_status of {} is not JSON: {e}", c.name))?;
        Ok(status["running_nodes"]
            .as_array()
            .map(|n| {
                n.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn until_running(&self, c: &Container, want: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let running = self.running_nodes(c).await;
            if let Ok(nodes) = &running
                && nodes.len() == want
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{want} nodes did not all run within {limit:?}: {running:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Every node of the cluster, the serving one first.
    fn cluster_members(&self) -> Vec<Container> {
        self.service
            .containers
            .current()
            .into_iter()
            .chain(self.service.containers.peers().iter().map(|(c, _)| c))
            .cloned()
            .collect()
    }

    /// The quorum queues' members as `c` sees them: per queue, each member's node, Raft state
    /// and commit index (`rabbitmq-queues quorum_status`).
    async fn quorum_on(&self, c: &Container) -> Result<Value> {
        let mut queues = Vec::new();
        for q in self.topology.quorum_queues() {
            let status = self
                .ctl_in(
                    c,
                    "rabbitmq-queues",
                    &[
                        "quorum_status",
                        &q,
                        "--vhost",
                        &self.topology.vhost,
                        "--formatter",
                        "json",
                    ],
                )
                .await?;
            let members: Value = serde_json::from_str(&status)
                .map_err(|e| anyhow!("quorum_status of {q} is not JSON: {e}"))?;
            queues.push(json!({ "queue": q, "members": members }));
        }
        Ok(json!(queues))
    }

    /// The quorum queues' members just before a fault, from the serving node.
    pub(super) async fn quorum_state(&self) -> Value {
        let mut state = match self.service.containers.serving() {
            Ok(c) => match self.quorum_on(c).await {
                Ok(queues) => json!({ "quorum_queues": queues }),
                Err(e) => json!({ "error": format!("{e:#}") }),
            },
            Err(e) => json!({ "error": format!("{e:#}") }),
        };
        if let Ok(c) = self.service.containers.serving() {
            state["primary"] = c.name.clone().into();
        }
        state
    }

    /// Whether every quorum queue has a leader on a node that `c` lists running, and a majority
    /// of its members up: a member whose node is down reports its Raft state as `nodedown`,
    /// and a leader left alone still calls itself leader for a while, though it can commit
    /// nothing.
    async fn has_leaders(&self, c: &Container) -> Result<bool> {
        let running = self.running_nodes(c).await?;
        let quorum = self.quorum_on(c).await?;
        Ok(quorum.as_array().is_some_and(|queues| {
            queues.iter().all(|q| {
                q["members"].as_array().is_some_and(|members| {
                    let up = |m: &&Value| {
                        let node = m["Node Name"].as_str().unwrap_or_default();
                        m["Raft State"].is_string() && running.iter().any(|r| r == node)
                    };
                    let majority = members.iter().filter(up).count() * 2 > members.len();
                    majority
                        && members
                            .iter()
                            .filter(up)
                            .any(|m| m["Raft State"] == "leader")
                })
            })
        }))
    }

    /// The cluster's own failover, watched: once a running node answers and every quorum queue
    /// has a leader on a running node (phase `elect`), the clients use that node (`reconnect`):
    /// the one they used when it still runs, else the first that does.
    pub(super) async fn fail_over_cluster(
        &mut self,
        phases: &mut RecoveryPhases,
        limit: Duration,
    ) -> Result<Restored> {
        phases.enter(Phase::Elect);
        let docker = self.service.env.docker.clone();
        let deadline = give_up_within(limit);
        let began = Instant::now();
        let (lost, chosen) = loop {
            let mut lost = Vec::new();
            let mut chosen = None;
            for c in self.cluster_members() {
                match docker.state(&c).await {
                    Ok((true, _)) if chosen.is_none() => {
                        if self.has_leaders(&c).await.unwrap_or(false) {
                            chosen = Some(c);
                        }
                    }
                    Ok((true, _)) => {}
                    Ok((false, code)) => lost.push(json!({
                        "container": c.name,
                        "judged": format!("its container stopped (exit code {})", code.unwrap_or(-1)),
                    })),
                    Err(e) => lost.push(json!({ "container": c.name, "judged": format!("{e:#}") })),
                }
            }
            if let Some(c) = chosen {
                break (lost, c);
            }
            if Instant::now() >= deadline {
                bail!("no running node had a leader for every quorum queue within {limit:?}");
            }
            tokio::time::sleep(POLL).await;
        };
        let elected_after_ms = began.elapsed().as_millis() as u64;
        let quorum = self.quorum_on(&chosen).await.unwrap_or(Value::Null);
        phases.enter(Phase::Reconnect);
        let serving = self.service.containers.serving()?.name.clone();
        if chosen.name != serving {
            self.service.take_over(&chosen.name)?;
            self.wait_ready(limit, true).await?;
        }
        self.service.served(&chosen);
        let first_lost = lost.first().cloned().unwrap_or(Value::Null);
        Ok(Restored {
            recovery_target: Some(format!(
                "the cluster's own election: every quorum queue led from a running node, clients on {}",
                chosen.name
            )),
            reached: Some(format!(
                "{} serves; {} node(s) lost",
                chosen.name,
                lost.len()
            )),
            failover: Some(json!({
                "primary_down": {
                    "container": first_lost["container"],
                    "judged": first_lost["judged"],
                },
                "lost_nodes": lost,
                "how": { "judged": "the cluster's own Raft elections", "elected_after_ms": elected_after_ms, "quorum_queues": quorum },
                "promoted": chosen.name,
            })),
            ..Restored::default()
        })
    }

    /// After the failover: every lost node is started again on its own data and must rejoin
    /// (the serving node lists it running).
    pub(super) async fn settle_cluster(&mut self, limit: Duration) -> Option<Value> {
        let docker = self.service.env.docker.clone();
        let serving = self.service.containers.serving().ok()?.clone();
        let mut rejoined = Vec::new();
        for c in self.cluster_members() {
            if let Ok((false, _)) = docker.state(&c).await {
                let started = docker.start_again(&c).await;
                rejoined.push((c, started));
            }
        }
        if rejoined.is_empty() {
            return None;
        }
        let all = self.cluster_members().len();
        let running = self.until_running(&serving, all, limit).await;
        let first = &rejoined[0].0;
        let how = match (&rejoined[0].1, &running) {
            (Ok(()), Ok(())) => json!({
                "container": first.name,
                "rejoined": format!("a member of the cluster again: started on its own data, {} lists all {all} nodes running", serving.name),
            }),
            (Err(e), _) | (_, Err(e)) => {
                json!({ "container": first.name, "error": format!("{e:#}") })
            }
        };
        Some(json!({ "old_primary": how }))
    }
}
