//! Redis's own files: RDB and AOF backups, damage to the files a server loads at startup, the
//! `redis-check-*` tools, restores into fresh containers, and the `redis-check-aof --fix` repair.
//!
//! Backups describe exactly what they hold: `CLIENT PAUSE WRITE` holds writes while `DBSIZE` and
//! `DEBUG DIGEST` are taken and an RDB backup's `BGSAVE` forks, or an AOF backup (rewritten just
//! before) is copied; Redis writes the AOF buffer out before it answers, so the file on disk
//! matches memory.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use redis::aio::MultiplexedConnection;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::schema::DataFile;
use super::{DATA, PORT, Redis};
use crate::backup::{Artefact, Backup, FreshBackup};
use crate::checks::CheckResult;
use crate::docker::{Container, ContainerSpec};
use crate::measure::{Phase, RecoveryPhases};
use crate::spec::{BackupMethod, CheckKind};
use crate::targets::{RestoreRequest, Restored, TargetEnv};

const RDB_FILE: &str = "dump.rdb";
const AOF_DIR: &str = "appendonlydir";
const AOF_MANIFEST: &str = "appendonly.aof.manifest";
/// Where helper containers see the target's backup repository (read-only).
const REPOSITORY: &str = "/repository";
/// Bytes inverted by `corrupt-data-file`, and bytes cut off by a torn tail.
const DAMAGE_LEN: usize = 16;
const TORN_TAIL: usize = 7;

/// `INFO persistence` as key → value.
async fn persistence_info(con: &mut MultiplexedConnection) -> Result<HashMap<String, String>> {
    let info: String = redis::cmd("INFO")
        .arg("persistence")
        .query_async(con)
        .await
        .map_err(|e| anyhow!("INFO persistence: {e}"))?;
    Ok(info
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

/// Waits until no RDB save and no AOF rewrite runs; returns `INFO persistence` then.
async fn wait_idle(con: &mut MultiplexedConnection) -> Result<HashMap<String, String>> {
    loop {
        let info = persistence_info(con).await?;
        let busy = [
            "rdb_bgsave_in_progress",
            "aof_rewrite_in_progress",
            "aof_rewrite_scheduled",
        ]
        .iter()
        .any(|k| info.get(*k).is_some_and(|v| v != "0"));
        if !busy {
            return Ok(info);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `CLIENT PAUSE WRITE`: writes wait (they do not fail) until [`unpause_writes`] or 10 s, so a
/// crashed harness cannot hold them for ever.
async fn pause_writes(con: &mut MultiplexedConnection) -> Result<()> {
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(10_000)
        .arg("WRITE")
        .query_async::<()>(con)
        .await
        .map_err(|e| anyhow!("CLIENT PAUSE: {e}"))
}

async fn unpause_writes(con: &mut MultiplexedConnection) -> Result<()> {
    redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async::<()>(con)
        .await
        .map_err(|e| anyhow!("CLIENT UNPAUSE: {e}"))
}

pub(super) async fn take_rdb(r: &Redis, dir: &Path) -> Result<FreshBackup> {
    let c = r.service.containers.serving()?;
    let mut con = r.connect().await?;
    loop {
        wait_idle(&mut con).await?;
        // Writes are held while the dataset is described and BGSAVE forks, so the RDB holds
        // exactly what was described: every write acknowledged before the pause. (Inside
        // MULTI, Redis 7 only schedules a BGSAVE, and writes slip in before the fork.)
        pause_writes(&mut con).await?;
        let described = async {
            let consistent_at = r.service.env.clock.micros();
            let (contents, newest) = Redis::keyspace(&mut con).await?;
            let started: redis::RedisResult<String> =
                redis::cmd("BGSAVE").query_async(&mut con).await;
            anyhow::Ok((consistent_at, contents, newest, started))
        }
        .await;
        let unpaused = unpause_writes(&mut con).await;
        let (consistent_at, contents, max_seq, started) = described?;
        unpaused?;
        match started {
            Ok(reply) if reply.contains("started") => {}
            Ok(reply) => bail!("BGSAVE answered {reply:?}, not a save started now"),
            // An automatic save or a rewrite began meanwhile: wait for it and take our own.
            Err(e) if e.to_string().contains("in progress") || e.to_string().contains("active") => {
                continue;
            }
            Err(e) => bail!("BGSAVE: {e}"),
        }
        let info = wait_idle(&mut con).await?;
        if info.get("rdb_last_bgsave_status").map(String::as_str) != Some("ok") {
            bail!(
                "BGSAVE failed (rdb_last_bgsave_status {:?})",
                info.get("rdb_last_bgsave_status")
            );
        }
        let saved = info.get("rdb_last_save_time").cloned();
        let file = r
            .service
            .env
            .docker
            .download(c, &format!("{DATA}/{RDB_FILE}"))
            .await?;
        // A save rule firing between our BGSAVE and the copy would have replaced dump.rdb.
        if persistence_info(&mut con).await?.get("rdb_last_save_time") != saved.as_ref() {
            continue;
        }
        let path = dir.join(RDB_FILE);
        std::fs::write(&path, &file.bytes).with_context(|| format!("write {}", path.display()))?;
        return Ok(FreshBackup {
            consistent_at,
            held: None,
            artefacts: vec![Artefact {
                file: RDB_FILE.into(),
                size: file.bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(&file.bytes)),
            }],
            contents,
            max_seq,
            details: json!({ "rdb_last_save_time": saved }),
        });
    }
}

/// `BGREWRITEAOF`, waited for: the dataset becomes the AOF's new base file.
pub(super) async fn rewrite_aof(con: &mut MultiplexedConnection) -> Result<()> {
    wait_idle(con).await?;
    redis::cmd("BGREWRITEAOF")
        .query_async::<()>(con)
        .await
        .map_err(|e| anyhow!("BGREWRITEAOF: {e}"))?;
    let info = wait_idle(con).await?;
    if info.get("aof_last_bgrewrite_status").map(String::as_str) != Some("ok") {
        bail!(
            "BGREWRITEAOF failed (aof_last_bgrewrite_status {:?})",
            info.get("aof_last_bgrewrite_status")
        );
    }
    Ok(())
}

pub(super) async fn take_aof(r: &Redis, dir: &Path) -> Result<FreshBackup> {
    let c = r.service.containers.serving()?;
    let mut con = r.connect().await?;
    rewrite_aof(&mut con).await?;
    pause_writes(&mut con).await?;
    let copied = async {
        let consistent_at = r.service.env.clock.micros();
        let (contents, newest) = Redis::keyspace(&mut con).await?;
        let artefacts = r
            .service
            .env
            .docker
            .download_dir(c, &format!("{DATA}/{AOF_DIR}"), &dir.join(AOF_DIR), AOF_DIR)
            .await?;
        anyhow::Ok((consistent_at, contents, newest, artefacts))
    }
    .await;
    let unpaused = unpause_writes(&mut con).await;
    let (consistent_at, contents, max_seq, artefacts) = copied?;
    unpaused?;
    Ok(FreshBackup {
        consistent_at,
        held: None,
        artefacts,
        contents,
        max_seq,
        details: json!({}),
    })
}

/// The newest incremental AOF file named by the manifest in `manifest` text.
fn newest_incr(manifest: &str) -> Option<String> {
    manifest
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w == ["type", "i"])
        })
        .filter_map(|l| l.split_whitespace().nth(1).map(String::from))
        .next_back()
}

/// `corrupt-data-file`: the server crashes (SIGKILL: no save on the way down) and the file it
/// would load at startup is damaged on disk. The server stays down; the restore meets the damage.
pub(super) async fn damage(r: &mut Redis, file: DataFile) -> Result<serde_json::Value> {
    let c = r.service.containers.serving()?.clone();
    let docker = r.service.env.docker.clone();
    docker.kill(&c, "SIGKILL").await?;
    let path = match file {
        DataFile::Rdb => format!("{DATA}/{RDB_FILE}"),
        DataFile::Aof | DataFile::AofTail => {
            let manifest = docker
                .download(&c, &format!("{DATA}/{AOF_DIR}/{AOF_MANIFEST}"))
                .await?;
            let manifest = String::from_utf8_lossy(&manifest.bytes).into_owned();
            let incr = newest_incr(&manifest).ok_or_else(|| {
                anyhow!("the AOF manifest names no incremental file:\n{manifest}")
            })?;
            format!("{DATA}/{AOF_DIR}/{incr}")
        }
    };
    let mut data = docker
        .download(&c, &path)
        .await
        .with_context(|| format!("{path}: the server has not written it (no save yet?)"))?;
    let size = data.bytes.len();
    let details = match file {
        DataFile::AofTail => {
            if size < TORN_TAIL {
                bail!("{path} holds {size} bytes: nothing to tear");
            }
            data.bytes.truncate(size - TORN_TAIL);
            json!({ "file": path, "size_before": size, "size_after": size - TORN_TAIL, "torn_bytes": TORN_TAIL })
        }
        DataFile::Rdb | DataFile::Aof => {
            if size < 2 * DAMAGE_LEN {
                bail!("{path} holds {size} bytes: too small to damage in the middle");
            }
            let offset = (size - DAMAGE_LEN) / 2;
            let window = &mut data.bytes[offset..offset + DAMAGE_LEN];
            let before = hex::encode(&*window);
            window.iter_mut().for_each(|b| *b = !*b);
            json!({ "file": path, "offset": offset, "length": DAMAGE_LEN, "bytes_before": before, "bytes_after": hex::encode(&*window) })
        }
    };
    docker.upload(&c, &path, &data).await?;
    Ok(details)
}

/// A short-lived container of the target's image, to run a tool on files: `volume` is
/// `(volume, path)`; `repository` is mounted read-only at `/repository`.
async fn helper(
    env: &TargetEnv,
    name: &str,
    volume: Option<(String, String)>,
    repository: &Path,
) -> Result<Container> {
    // A drill without backups has no repository folder yet.
    std::fs::create_dir_all(repository)
        .with_context(|| format!("create {}", repository.display()))?;
    let spec = ContainerSpec {
        name: name.to_string(),
        image: env.image.clone(),
        env: Vec::new(),
        cmd: vec!["infinity".into()],
        port: PORT,
        volume,
        binds: vec![(repository.to_path_buf(), REPOSITORY.into(), true)],
        entrypoint: Some("sleep".into()),
        copy_in: Vec::new(),
        files: Vec::new(),
        hostname: None,
        net_admin: false,
        startup_timeout: env.timeouts.provision,
    };
    env.docker.start(&spec).await
}

/// `redis-check-rdb` or `redis-check-aof` on the restored backup's own files in the repository
/// (the `redis-check` check): in the restored server's container, which mounts the repository
/// read-only, while the server runs; in a helper container when it does not (it could not load
/// them).
pub(super) async fn check_backup(r: &Redis, backup: &Backup) -> CheckResult {
    let check = CheckKind::RedisCheck;
    let env = &r.service.env;
    let Some(folder) = backup.dir.file_name().and_then(|n| n.to_str()) else {
        return CheckResult::unknown(check, format!("backup {} has no folder", backup.id));
    };
    // redis-check-aof opens its files for writing even without --fix: check a scratch copy.
    let (tool, script) = match backup.method {
        BackupMethod::RedisRdb => (
            "redis-check-rdb",
            format!("redis-check-rdb {REPOSITORY}/{folder}/{RDB_FILE}"),
        ),
        _ => (
            "redis-check-aof",
            format!(
                "rm -rf /tmp/check && cp -r {REPOSITORY}/{folder}/{AOF_DIR} /tmp/check && redis-check-aof /tmp/check/{AOF_MANIFEST}"
            ),
        ),
    };
    let sh = ["sh", "-c", script.as_str()];
    let verdict = |ran| {
        crate::checks::from_tool(check, tool, backup.id, ran, |out| {
            format!("{tool} on backup {}: {}", backup.id, out.tail())
        })
    };
    if let Ok(server) = r.service.containers.serving()
        && let Ok(out) = env.docker.exec(server, "root", &sh).await
    {
        return verdict(Ok(out));
    }
    let name = format!(
        "{}-check",
        r.service
            .containers
            .serving()
            .map_or(env.spec.name.as_str(), |c| c.name.as_str())
    );
    let repository = backup.dir.parent().unwrap_or(&backup.dir);
    let tools = match helper(env, &name, None, repository).await {
        Ok(tools) => tools,
        Err(e) => return CheckResult::unknown(check, format!("no helper container: {e:#}")),
    };
    let ran = env.docker.exec(&tools, "root", &sh).await;
    if let Err(e) = env.docker.remove(&tools).await {
        tracing::warn!("remove {}: {e:#}", tools.name);
    }
    verdict(ran)
}

pub(super) async fn restore(
    r: &mut Redis,
    request: &RestoreRequest<'_>,
    phases: &mut RecoveryPhases,
) -> Result<Restored> {
    let backup = request.backup;
    phases.enter(Phase::Provision);
    let (name, volume) = r.service.next_container().await?;

    phases.enter(Phase::Restore);
    // An RDB loads only with the AOF off: a server with appendonly yes would start empty.
    let (copy_in, appendonly) = match backup.method {
        BackupMethod::RedisRdb => (
            vec![(backup.dir.join(RDB_FILE), format!("{DATA}/{RDB_FILE}"))],
            false,
        ),
        BackupMethod::RedisAof => (
            vec![(backup.dir.join(AOF_DIR), format!("{DATA}/{AOF_DIR}"))],
            true,
        ),
        other => bail!("{other} is not a redis backup method"),
    };
    let mut spec = r.container_spec(name, volume, r.server_command(appendonly), copy_in);
    // The backup's repository (the DR site's after a site loss), read-only, for the
    // `redis-check` check of the backup's own files.
    let repository = backup.dir.parent().unwrap_or(&backup.dir).to_path_buf();
    spec.binds.push((repository, REPOSITORY.into(), true));
    r.start_container(spec, r.service.env.timeouts.restore)
        .await?;
    let mut con = r.connect().await?;
    let keys: u64 = redis::cmd("DBSIZE")
        .query_async(&mut con)
        .await
        .map_err(|e| anyhow!("DBSIZE: {e}"))?;
    if !appendonly && r.options.persistence.appendonly {
        // Back to the scenario's persistence: the AOF is rewritten from the loaded data.
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("appendonly")
            .arg("yes")
            .query_async::<()>(&mut con)
            .await
            .map_err(|e| anyhow!("CONFIG SET appendonly yes: {e}"))?;
        wait_idle(&mut con).await?;
    }
    Ok(Restored {
        prepared: None,
        recovery_target: Some(format!("the contents of backup {}", backup.id)),
        reached: Some(format!("{keys} keys loaded")),
        note: None,
        consistent_at: None,
        ..Restored::default()
    })
}

/// A restore test of the user's own RDB: `redis-check-rdb` on it (the `redis-check` check),
/// then a fresh server that loads it at startup.
pub(super) async fn restore_source(
    r: &mut Redis,
    f: &crate::source::Fetched,
    phases: &mut RecoveryPhases,
) -> Result<Restored> {
    phases.enter(Phase::Provision);
    let (name, volume) = r.service.next_container().await?;
    let dir = f.folder().to_path_buf();
    let file = f.file_name();
    let tools = r
        .service
        .env
        .docker
        .start(&ContainerSpec {
            name: format!("{name}-check"),
            image: r.service.env.image.clone(),
            env: Vec::new(),
            cmd: vec!["infinity".into()],
            port: PORT,
            volume: None,
            binds: vec![(dir, "/source".into(), true)],
            entrypoint: Some("sleep".into()),
            copy_in: Vec::new(),
            files: Vec::new(),
            hostname: None,
            net_admin: false,
            startup_timeout: r.service.env.timeouts.provision,
        })
        .await?;

    phases.enter(Phase::Restore);
    // An AOF folder loads under the name its manifest carries (`NAME.manifest`).
    let aof_name = match f.format {
        crate::source::Format::RedisAof => Some(aof_file_name(&f.local)?),
        _ => None,
    };
    let (tool, script) = match &aof_name {
        // redis-check-aof may rewrite what it checks: it checks a copy.
        Some(aof) => (
            "redis-check-aof",
            format!("cp -r /source/{file} /tmp/check && redis-check-aof /tmp/check/{aof}.manifest"),
        ),
        None => ("redis-check-rdb", format!("redis-check-rdb /source/{file}")),
    };
    let ran = r
        .service
        .env
        .docker
        .exec(&tools, "root", &["sh", "-c", &script])
        .await;
    r.service.env.docker.remove(&tools).await?;
    let checked = match ran {
        Ok(out) if out.success() => CheckResult::passed(
            CheckKind::RedisCheck,
            format!("{tool} on {}: {}", f.object, out.tail()),
        ),
        Ok(out) => CheckResult::failed(
            CheckKind::RedisCheck,
            format!(
                "{tool} on {} exited with {}: {}",
                f.object,
                out.exit_code,
                out.tail()
            ),
        ),
        Err(e) => CheckResult::unknown(CheckKind::RedisCheck, format!("{e:#}")),
    };
    *r.artefact_check.lock().expect("not poisoned") = Some(checked);
    let (copy_in, command) = match &aof_name {
        Some(aof) => {
            let mut command = r.server_command(true);
            command.extend(["--appendfilename".to_string(), aof.clone()]);
            (
                vec![(f.local.clone(), format!("{DATA}/{AOF_DIR}"))],
                command,
            )
        }
        None => (
            vec![(f.local.clone(), format!("{DATA}/{RDB_FILE}"))],
            r.server_command(false),
        ),
    };
    let spec = r.container_spec(name, volume, command, copy_in);
    r.start_container(spec, r.service.env.timeouts.restore)
        .await?;
    let mut con = r.connect().await?;
    let keys: u64 = redis::cmd("DBSIZE")
        .query_async(&mut con)
        .await
        .map_err(|e| anyhow!("DBSIZE: {e}"))?;
    Ok(Restored {
        recovery_target: Some(format!("the {} {}", f.format.describe(), f.object)),
        reached: Some(format!("{keys} keys loaded")),
        ..Restored::default()
    })
}

/// The `appendfilename` of an AOF folder: its manifest's name without `.manifest`.
fn aof_file_name(folder: &std::path::Path) -> Result<String> {
    std::fs::read_dir(folder)?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .find_map(|n| n.strip_suffix(".manifest").map(String::from))
        .ok_or_else(|| anyhow!("{} holds no AOF manifest", folder.display()))
}

/// A user's read-only command (`DBSIZE`, `EXISTS key`, `HLEN key`…): the server's own command
/// table must flag it `readonly`, else it is refused unrun. The reply as text.
pub(super) async fn query(r: &Redis, args: &[String]) -> Result<String> {
    let mut con = r.connect().await?;
    let name = args.first().ok_or_else(|| anyhow!("an empty command"))?;
    let info: redis::Value = redis::cmd("COMMAND")
        .arg("INFO")
        .arg(name)
        .query_async(&mut con)
        .await
        .map_err(|e| anyhow!("COMMAND INFO {name}: {e}"))?;
    let flags = match &info {
        redis::Value::Array(entries) => match entries.first() {
            Some(redis::Value::Array(entry)) => entry.get(2).cloned(),
            _ => None,
        },
        _ => None,
    };
    let readonly = match flags {
        Some(redis::Value::Array(flags)) => flags.iter().any(|f| {
            matches!(f, redis::Value::SimpleString(s) if s == "readonly")
                || matches!(f, redis::Value::BulkString(b) if b == b"readonly")
        }),
        _ => bail!("Redis knows no command {name:?}"),
    };
    if !readonly {
        bail!("{name} is not a read-only command (Redis's command table): a query may only read");
    }
    let mut cmd = redis::cmd(name);
    for a in &args[1..] {
        cmd.arg(a);
    }
    let reply: redis::Value = cmd
        .query_async(&mut con)
        .await
        .map_err(|e| anyhow!("{}: {e}", args.join(" ")))?;
    Ok(reply_text(&reply))
}

fn reply_text(v: &redis::Value) -> String {
    match v {
        redis::Value::Nil => "nil".into(),
        redis::Value::Int(n) => n.to_string(),
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Okay => "OK".into(),
        redis::Value::Double(d) => d.to_string(),
        redis::Value::Boolean(b) => b.to_string(),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            items.iter().map(reply_text).collect::<Vec<_>>().join("\n")
        }
        other => format!("{other:?}"),
    }
}

/// `restore.repair`: `redis-check-aof --fix` on the crashed server's AOF, in a helper container
/// that mounts its data volume. Returns what the tool says it cut; the ledger measures the loss.
pub(super) async fn repair_aof(r: &mut Redis) -> Result<String> {
    let c = r.service.containers.serving()?.clone();
    if let Ok((true, _)) = r.service.env.docker.state(&c).await {
        r.service
            .env
            .docker
            .stop(&c, Duration::from_secs(30))
            .await?;
    }
    let volume = r.service.containers.volume()?;
    let name = format!(
        "{}-repair",
        c.name.rsplit_once('-').map_or(c.name.as_str(), |(n, _)| n)
    );
    let tools = helper(
        &r.service.env,
        &format!("{name}-{}", r.service.containers.generation()),
        Some((volume, DATA.into())),
        &r.service.env.repository,
    )
    .await?;
    let fix = format!("echo y | redis-check-aof --fix {DATA}/{AOF_DIR}/{AOF_MANIFEST}");
    let out = r
        .service
        .env
        .docker
        .exec(&tools, "root", &["sh", "-c", &fix])
        .await;
    r.service.env.docker.remove(&tools).await?;
    let out = out?;
    let said = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = said
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.contains("truncat")
                || l.contains("ok_up_to")
                || l.contains("Bad file")
                || l.contains("valid")
                || l.contains("diff=")
        })
        .collect();
    if !out.success() {
        bail!(
            "redis-check-aof --fix exited with {}: {}",
            out.exit_code,
            out.tail()
        );
    }
    Ok(format!(
        "redis-check-aof --fix repaired the AOF before the restart: {}",
        summary.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_incremental_file_is_the_last_one_listed() {
        let manifest = "file appendonly.aof.2.base.rdb seq 2 type b\nfile appendonly.aof.2.incr.aof seq 2 type i\nfile appendonly.aof.3.incr.aof seq 3 type i\n";
        assert_eq!(
            newest_incr(manifest).as_deref(),
            Some("appendonly.aof.3.incr.aof")
        );
        assert_eq!(
            newest_incr("file appendonly.aof.1.base.rdb seq 1 type b\n"),
            None
        );
    }
}
