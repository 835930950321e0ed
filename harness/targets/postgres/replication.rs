//! Streaming replication and failover: standbys made with `pg_basebackup -R` from the primary,
//! a replication slot each, optionally synchronous; their lag read from `pg_stat_replication`
//! just before a fault; and the runbook's failover: judge the primary down, promote the standby
//! that received the most WAL (`pg_promote`), fence the old primary, point the other standby at
//! the new one, and let the clients find it.

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::physical::{format_lsn, parse_lsn};
use super::schema::{Mode, PgOptions, Replication};
use super::{PGDATA, PORT, Postgres, Ready, error_line};
use crate::docker::{Container, ContainerSpec};
use crate::measure::{Phase, RecoveryPhases};
use crate::targets::Restored;
use crate::targets::service::{connect_to, give_up_within};

/// The password file a standby replicates with, as written into its container, and where the
/// server's user reads it (`PGPASSFILE`, which the WAL receiver inherits from the server).
const PGPASS: &str = "/etc/drillrig/pgpass";
const PGPASSFILE: &str = "/var/lib/postgresql/.pgpass";
/// How often a standby that does not answer yet is asked again.
const POLL: Duration = Duration::from_millis(100);

/// A standby's replication slot and `application_name` (`standby_1`).
fn slot(node: &str) -> String {
    node.replace('-', "_")
}

impl Postgres {
    /// The target's replication, when it has one.
    pub(super) fn replication_options(&self) -> Option<Replication> {
        self.service
            .env
            .spec
            .options_of::<PgOptions>()
            .and_then(|o| o.replication)
    }

    /// Opens the primary to replication connections, starts each standby from a base backup
    /// of it, makes the first synchronous in `sync` mode, and waits until every standby
    /// streams (and the synchronous one is `sync`).
    pub(super) async fn start_standbys(&mut self, replication: Replication) -> Result<()> {
        let primary = self.service.containers.serving()?.clone();
        let docker = self.service.env.docker.clone();
        let hba = format!("echo 'host replication all all scram-sha-256' >> {PGDATA}/pg_hba.conf");
        let out = docker
            .exec(&primary, "postgres", &["sh", "-c", &hba])
            .await?;
        if out.exit_code != 0 {
            bail!("allow replication in {}: {}", primary.name, out.tail());
        }
        let client = self.connect().await?;
        client
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .map_err(|e| anyhow!("reload {}: {}", primary.name, error_line(&e)))?;
        let host = docker.dns_name(&primary);
        let limit = self.service.env.timeouts.provision;
        for node in replication.nodes().iter().skip(1) {
            let standby = self.start_standby(node, &host).await?;
            self.until_standby(&standby, limit).await?;
        }
        if replication.mode == Mode::Sync {
            let names: Vec<String> = replication.nodes()[1..].iter().map(|n| slot(n)).collect();
            let names = format!(
                "ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 ({})'",
                names.join(", ")
            );
            let settings = [names.as_str(), "ALTER SYSTEM SET synchronous_commit = 'on'"];
            one_by_one(&client, &settings)
                .await
                .map_err(|e| anyhow!("make standby_1 synchronous: {e}"))?;
        }
        self.until_streaming(replication, limit).await
    }

    /// Starts the container of standby `node` from a base backup of the primary at `host`.
    async fn start_standby(&mut self, node: &str, host: &str) -> Result<Container> {
        let limit = self.service.env.spec.volume_limit;
        let docker = self.service.env.docker.clone();
        let (name, volume) = self
            .service
            .containers
            .next_node(&docker, node, limit)
            .await?;
        let slot = slot(node);
        // As root: the data folder and the password file for the server's user, a base backup
        // as that user (`-R` writes standby.signal and primary_conninfo, `-C -S` the slot),
        // then the image's own entrypoint, which finds the data and starts the standby.
        let script = format!(
            "set -e; install -d -o postgres -g postgres -m 700 {PGDATA}; \
             install -o postgres -g postgres -m 600 {PGPASS} {PGPASSFILE}; \
             if [ ! -s {PGDATA}/PG_VERSION ]; then \
               setpriv --reuid=postgres --regid=postgres --init-groups \
               pg_basebackup -h {host} -p {PORT} -U postgres -D {PGDATA} -R -C -S {slot} -X stream -c fast -w; \
             fi; \
             exec docker-entrypoint.sh postgres -c cluster_name={slot}"
        );
        let mut spec: ContainerSpec = self.container_spec(name, volume, Vec::new(), Vec::new());
        spec.entrypoint = Some("sh".into());
        spec.cmd = vec!["-c".into(), script];
        spec.env.push(("PGPASSFILE".into(), PGPASSFILE.into()));
        spec.files.push((
            PGPASS.into(),
            format!("*:*:*:postgres:{}\n", self.service.env.password).into_bytes(),
        ));
        self.service.start_peer(&spec).await
    }

    /// Polls standby `c` until it answers in recovery; fails early when its container exits.
    async fn until_standby(&self, c: &Container, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let docker = &self.service.env.docker;
        loop {
            let last = match docker.host_port(c).await {
                Ok(port) => match self.in_recovery(port).await {
                    Ok(true) => return Ok(()),
                    Ok(false) => "it is not in recovery".to_string(),
                    Err(e) => format!("{e:#}"),
                },
                Err(e) => format!("{e:#}"),
            };
            if let Ok((false, code)) = docker.state(c).await {
                bail!(
                    "standby {} exited (code {}): {last}; its log ends: {}",
                    c.name,
                    code.unwrap_or(-1),
                    self.service.log_tail(c).await
                );
            }
            if Instant::now() >= deadline {
                bail!("standby {} did not answer within {limit:?}: {last}", c.name);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn in_recovery(&self, port: u16) -> Result<bool> {
        let client = connect_to(&self.login(), port).await?;
        let row = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| anyhow!(error_line(&e)))?;
        Ok(row.get(0))
    }

    /// Waits until the primary's `pg_stat_replication` shows every standby streaming, the
    /// first as `sync` in `sync` mode.
    async fn until_streaming(&self, replication: Replication, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let client = self.connect().await?;
        let want = replication.nodes().len() - 1;
        loop {
            let rows = client
                .query(
                    "SELECT application_name, state, sync_state FROM pg_stat_replication",
                    &[],
                )
                .await
                .map_err(|e| anyhow!("read pg_stat_replication: {}", error_line(&e)))?;
            let streaming: Vec<(String, String, String)> = rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .filter(|(_, state, _)| state == "streaming")
                .collect();
            let sync_ok = replication.mode == Mode::Async
                || streaming
                    .iter()
                    .any(|(name, _, sync)| name == "standby_1" && sync == "sync");
            if streaming.len() == want && sync_ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the standbys did not all stream within {limit:?}: pg_stat_replication shows {streaming:?}"
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Each standby's state and lag, from the primary's `pg_stat_replication`.
    pub(super) async fn replication_state(&self) -> Value {
        let read = async {
            let client = self.connect().await?;
            let lsn: String = client
                .query_one("SELECT pg_current_wal_lsn()::text", &[])
                .await
                .map_err(|e| anyhow!(error_line(&e)))?
                .get(0);
            let rows = client
                .query(
                    "SELECT application_name, state, sync_state, \
                       pg_wal_lsn_diff(pg_current_wal_lsn(), sent_lsn)::bigint, \
                       pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)::bigint, \
                       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, \
                       extract(epoch FROM write_lag)::float8, \
                       extract(epoch FROM flush_lag)::float8, \
                       extract(epoch FROM replay_lag)::float8 \
                     FROM pg_stat_replication ORDER BY application_name",
                    &[],
                )
                .await
                .map_err(|e| anyhow!(error_line(&e)))?;
            let standbys: Vec<Value> = rows
                .iter()
                .map(|r| {
                    let name: String = r.get(0);
                    json!({
                        "node": name.replace('_', "-"),
                        "state": r.get::<_, String>(1),
                        "sync_state": r.get::<_, String>(2),
                        "behind_bytes": {
                            "sent": r.get::<_, Option<i64>>(3),
                            "flushed": r.get::<_, Option<i64>>(4),
                            "replayed": r.get::<_, Option<i64>>(5),
                        },
                        "lag_s": {
                            "write": r.get::<_, Option<f64>>(6),
                            "flush": r.get::<_, Option<f64>>(7),
                            "replay": r.get::<_, Option<f64>>(8),
                        },
                    })
                })
                .collect();
            Ok::<_, anyhow::Error>(json!({ "primary_wal_lsn": lsn, "standbys": standbys }))
        };
        let mut state = read
            .await
            .unwrap_or_else(|e| json!({ "error": format!("read pg_stat_replication: {e:#}") }));
        if let Ok(c) = self.service.containers.serving() {
            state["primary"] = c.name.clone().into();
        }
        state
    }

    /// The runbook's failover: judge the primary down, ask every standby how much WAL it
    /// received (until one answers), promote the most advanced, fence the old primary, point
    /// the other standby at the new one, and wait until clients find it taking writes.
    pub(super) async fn promote_standby(
        &mut self,
        phases: &mut RecoveryPhases,
        limit: Duration,
    ) -> Result<Restored> {
        phases.enter(Phase::Promote);
        let replication = self
            .replication_options()
            .ok_or_else(|| anyhow!("the target has no replication to fail over to"))?;
        // A volume loss took the primary's container with it: nothing is left to judge or fence.
        let old = self.service.containers.current().cloned();
        let down = match &old {
            Some(old) => self.judge_down(old).await?,
            None => "its container and data volume are gone".to_string(),
        };
        let (candidates, chosen) = self.choose_standby(limit).await?;
        let (name, received) = (chosen.0.name.clone(), chosen.1);
        let port = self.service.env.docker.host_port(&chosen.0).await?;
        let client = connect_to(&self.login(), port).await?;
        let promoted: bool = client
            .query_one("SELECT pg_promote(true, 60)", &[])
            .await
            .map_err(|e| anyhow!("promote {name}: {}", error_line(&e)))?
            .get(0);
        if !promoted {
            bail!("pg_promote on {name} did not finish within 60 s");
        }
        let fenced = match &old {
            Some(old) => self.fence(old).await?,
            None => json!({ "container": null, "fenced": "nothing left to fence" }),
        };
        phases.enter(Phase::Reconnect);
        self.service.take_over(&name)?;
        self.wait_ready(Ready::Promoted, limit).await?;
        let followers = self.repoint_standbys(&name).await;
        let new = self.service.containers.serving()?.clone();
        self.service.served(&new);
        let timeline: String = client
            .query_one(
                "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
                &[],
            )
            .await
            .map_err(|e| anyhow!("read the timeline of {name}: {}", error_line(&e)))?
            .get(0);
        let timeline = u32::from_str_radix(&timeline, 16).unwrap_or(0);
        let note = (replication.mode == Mode::Sync).then(|| {
            format!(
                "{name} serves without a synchronous standby: the failover restored writes, not synchronous replication"
            )
        });
        Ok(Restored {
            recovery_target: Some(format!(
                "the standby that received the most WAL, {name} ({})",
                format_lsn(received)
            )),
            reached: Some(format!("{name} is the primary, on timeline {timeline}")),
            note,
            failover: Some(json!({
                "primary_down": { "container": old.map(|c| c.name), "judged": down },
                "standbys": candidates,
                "promoted": name,
                "timeline": timeline,
                "old_primary": fenced,
                "standbys_following": followers,
            })),
            ..Restored::default()
        })
    }

    /// Whether the primary is down, as a runbook judges it: its container stopped, or no
    /// answer to a query. A primary that answers is not failed over.
    async fn judge_down(&self, primary: &Container) -> Result<String> {
        let docker = &self.service.env.docker;
        match docker.state(primary).await? {
            (false, code) => Ok(format!(
                "its container stopped (exit code {})",
                code.unwrap_or(-1)
            )),
            (true, _) => {
                let answer = async {
                    let port = docker.host_port(primary).await?;
                    let client = connect_to(&self.login(), port).await?;
                    client
                        .query_one("SELECT 1", &[])
                        .await
                        .map_err(|e| anyhow!(error_line(&e)))
                };
                match tokio::time::timeout(Duration::from_secs(2), answer).await {
                    Ok(Ok(_)) => bail!(
                        "the primary {} still answers: a runbook does not promote a standby beside a live primary",
                        primary.name
                    ),
                    Ok(Err(e)) => Ok(format!("no answer: {e:#}")),
                    Err(_) => Ok("no answer within 2 s".into()),
                }
            }
        }
    }

    /// Asks every standby how much WAL it received and replayed, again every 100 ms until one
    /// answers; returns what each said and the one that received the most (the first such).
    async fn choose_standby(&self, limit: Duration) -> Result<(Vec<Value>, (Container, u64))> {
        let deadline = give_up_within(limit);
        let docker = &self.service.env.docker;
        loop {
            let mut said = Vec::new();
            let mut best: Option<(Container, u64)> = None;
            for (c, _) in self.service.containers.peers() {
                let asked = async {
                    let port = docker.host_port(c).await?;
                    let client = connect_to(&self.login(), port).await?;
                    let row = client
                        .query_one(
                            "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn()::text, \
                             pg_last_wal_replay_lsn()::text",
                            &[],
                        )
                        .await
                        .map_err(|e| anyhow!(error_line(&e)))?;
                    Ok::<_, anyhow::Error>((
                        row.get::<_, bool>(0),
                        row.get::<_, Option<String>>(1),
                        row.get::<_, Option<String>>(2),
                    ))
                };
                match tokio::time::timeout(Duration::from_secs(2), asked).await {
                    Ok(Ok((true, received, replayed))) => {
                        let at = received.as_deref().and_then(parse_lsn).unwrap_or(0);
                        said.push(json!({
                            "container": c.name,
                            "received_lsn": received,
                            "replayed_lsn": replayed,
                        }));
                        if best.as_ref().is_none_or(|(_, b)| at > *b) {
                            best = Some((c.clone(), at));
                        }
                    }
                    Ok(Ok((false, ..))) => said.push(json!({
                        "container": c.name,
                        "error": "not in recovery: it is no standby",
                    })),
                    Ok(Err(e)) => {
                        said.push(json!({ "container": c.name, "error": format!("{e:#}") }))
                    }
                    Err(_) => {
                        said.push(json!({ "container": c.name, "error": "no answer within 2 s" }))
                    }
                }
            }
            if let Some(best) = best {
                return Ok((said, best));
            }
            if Instant::now() >= deadline {
                bail!("no standby answered within {limit:?}: {said:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Fences the old primary: a container that still runs (paused, cut off) is killed, so it
    /// can never take a write again; it stays stopped, not rejoined.
    async fn fence(&self, old: &Container) -> Result<Value> {
        let docker = &self.service.env.docker;
        let (running, code) = docker.state(old).await?;
        if !running {
            return Ok(json!({
                "container": old.name,
                "fenced": format!("stopped (exit code {}) and left stopped", code.unwrap_or(-1)),
            }));
        }
        if docker.paused(old).await? {
            docker.unpause(old).await?;
        }
        docker.kill(old, "SIGKILL").await?;
        Ok(json!({
            "container": old.name,
            "fenced": "still running: killed (SIGKILL) and left stopped",
        }))
    }

    /// Points every other standby at the new primary `name`: a slot for it there, then its
    /// `primary_conninfo` and `primary_slot_name`, reloaded (it follows the new timeline).
    async fn repoint_standbys(&self, name: &str) -> Vec<Value> {
        let docker = &self.service.env.docker;
        let Ok(primary) = self.service.containers.serving() else {
            return Vec::new();
        };
        let host = docker.dns_name(primary);
        let mut followers = Vec::new();
        for (c, _) in self.service.containers.peers() {
            if !c.name.contains("-standby-") {
                continue;
            }
            let node = c
                .name
                .rsplit_once("-standby-")
                .map(|(_, n)| n)
                .unwrap_or("");
            let slot = slot(&format!("standby-{node}"));
            let repointed = async {
                let new = self.connect().await?;
                new.query_one(
                    "SELECT pg_create_physical_replication_slot($1, true)",
                    &[&slot],
                )
                .await
                .map_err(|e| anyhow!("create slot {slot} on {name}: {}", error_line(&e)))?;
                let port = docker.host_port(c).await?;
                let standby = connect_to(&self.login(), port).await?;
                let conninfo = format!(
                    "ALTER SYSTEM SET primary_conninfo = 'host={host} port={PORT} user=postgres application_name={slot}'"
                );
                let slot_name = format!("ALTER SYSTEM SET primary_slot_name = '{slot}'");
                one_by_one(&standby, &[conninfo.as_str(), slot_name.as_str()])
                    .await
                    .map_err(|e| anyhow!("point {} at {name}: {e}", c.name))?;
                Ok::<_, anyhow::Error>(())
            };
            followers.push(match repointed.await {
                Ok(()) => json!({ "container": c.name, "follows": name }),
                Err(e) => json!({ "container": c.name, "error": format!("{e:#}") }),
            });
        }
        followers
    }
}

/// Runs `settings` (`ALTER SYSTEM`, which no transaction may hold) one statement at a time,
/// then reloads the configuration.
async fn one_by_one(client: &tokio_postgres::Client, settings: &[&str]) -> Result<(), String> {
    for statement in settings.iter().chain(&["SELECT pg_reload_conf()"]) {
        client
            .batch_execute(statement)
            .await
            .map_err(|e| error_line(&e))?;
    }
    Ok(())
}
