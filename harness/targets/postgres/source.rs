//! Restore tests of PostgreSQL: the user's own dump restored into a scratch server with
//! PostgreSQL's own tools, into the database it was taken from, and user queries answered in a
//! read-only transaction.

use anyhow::{Result, anyhow, bail};

use super::overrides::{self, Recovery};
use super::{Postgres, Ready, error_line};
use crate::checks::CheckResult;
use crate::measure::{Phase, RecoveryPhases};
use crate::source::{Fetched, Format};
use crate::spec::CheckKind;
use crate::targets::Restored;

/// Where the fetched backup's folder is mounted (read-only) in the scratch container.
const MOUNT: &str = "/drillrig-source";
/// Where a base backup's fetched WAL archive is mounted (read-only).
const ARCHIVE: &str = "/archive";

pub(super) async fn restore(
    pg: &mut Postgres,
    f: &Fetched,
    phases: &mut RecoveryPhases,
) -> Result<Restored> {
    if matches!(
        f.format,
        Format::PgBaseTar | Format::PgBasePlain | Format::PgBackRest
    ) {
        return replay(pg, f, phases).await;
    }
    phases.enter(Phase::Provision);
    let dir = f.folder().to_path_buf();
    let file_name = f.file_name();
    let (name, volume) = pg.service.next_container().await?;
    let spec = pg.container_spec(name, volume, Vec::new(), vec![(dir, MOUNT.into(), true)]);
    pg.start_container(spec, Ready::Serving, pg.service.env.timeouts.restore)
        .await?;
    let c = pg.service.containers.serving()?.clone();
    let docker = pg.service.env.docker.clone();

    phases.enter(Phase::Restore);
    let file = format!("{MOUNT}/{file_name}");
    let wanted = pg.service.env.spec.database.clone();
    let database = match f.format {
        Format::PgCustom | Format::PgTar | Format::PgDirectory => {
            let own = f
                .database
                .clone()
                .ok_or_else(|| anyhow!("{}: the archive's header names no database", f.object))?;
            let jobs = std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .to_string();
            let mut cmd = vec![
                "pg_restore",
                "--exit-on-error",
                "--no-owner",
                "--no-privileges",
                "--dbname",
                "postgres",
            ];
            // `--create` makes the dump's own database, as it was; `postgres` exists already.
            if own != "postgres" {
                cmd.push("--create");
            }
            // pg_restore restores a tar archive with one job only.
            if f.format != Format::PgTar {
                cmd.extend(["--jobs", &jobs]);
            }
            cmd.push(&file);
            let out = docker.exec(&c, "postgres", &cmd).await?;
            if !out.success() {
                bail!(
                    "pg_restore of {} exited with {}: {}",
                    f.object,
                    out.exit_code,
                    out.tail()
                );
            }
            own
        }
        Format::PgPlain => {
            // A plain dump made with --create names its database and connects to it itself.
            let into = match (&f.database, &wanted) {
                (Some(_), _) => "postgres".to_string(),
                (None, Some(db)) if db != "postgres" => {
                    let out = docker
                        .exec(&c, "postgres", &["createdb", "--", db.as_str()])
                        .await?;
                    if !out.success() {
                        bail!("createdb {db}: {}", out.tail());
                    }
                    db.clone()
                }
                (None, _) => "postgres".to_string(),
            };
            psql(pg, &c, &into, &file, f, true).await?;
            f.database.clone().unwrap_or(into)
        }
        Format::PgDumpall => {
            // pg_dumpall recreates every role, `postgres` included, which exists already: that
            // one error is expected; any other fails the restore.
            psql(pg, &c, "postgres", &file, f, false).await?;
            // It also set the source cluster's password on `postgres`: drillrig's is put back.
            set_own_login(pg, &c)
                .await
                .map_err(|e| anyhow!("after pg_dumpall: {e:#}"))?;
            "postgres".to_string()
        }
        other => bail!("{} is not a PostgreSQL backup", other.describe()),
    };
    pg.database = wanted.unwrap_or(database.clone());
    Ok(Restored {
        recovery_target: Some(format!("the {} {}", f.format.describe(), f.object)),
        reached: Some(format!("database {database} restored")),
        ..Restored::default()
    })
}

/// A physical backup replayed from its WAL archive, to the archive's end or to
/// `restore.from`'s time, then promoted: a `pg_basebackup` tar or plain folder with the WAL
/// folder beside it, or a pgBackRest repository's set restored by pgbackrest, which also serves
/// the WAL. A plain folder without an archive starts on the WAL it holds itself (`-X stream`).
/// The cluster keeps its own roles and passwords: drillrig reaches it over the local socket
/// (trusted in the scratch container only) and sets its own login on `postgres`.
async fn replay(pg: &mut Postgres, f: &Fetched, phases: &mut RecoveryPhases) -> Result<Restored> {
    phases.enter(Phase::Provision);
    let docker = pg.service.env.docker.clone();
    let (name, volume) = pg.service.next_container().await?;
    let pgdata = super::PGDATA;
    // The folder mounted read-only at MOUNT: the base backup's, or the repository's copy; and
    // where the server reads WAL from.
    let (mounted, restore_command, replayed_from) = match (&f.pgbackrest, &f.wal) {
        (Some(set), _) => (
            f.local.clone(),
            Some(format!(
                "pgbackrest --stanza={} --repo1-path={MOUNT} --pg1-path={pgdata} --log-level-file=off --log-level-console=warn archive-get %f \"%p\"",
                set.stanza
            )),
            format!("pgbackrest's WAL archive of stanza {}", set.stanza),
        ),
        (None, Some(wal)) => (
            f.folder().to_path_buf(),
            Some(format!("cp {ARCHIVE}/%f %p")),
            format!("{} WAL file(s)", wal.files),
        ),
        (None, None) if f.format == Format::PgBasePlain => (
            f.folder().to_path_buf(),
            None,
            "the WAL the backup holds (no archive given)".to_string(),
        ),
        (None, None) => bail!(
            "{} is a base backup: give the source its WAL archive (`wal`)",
            f.object
        ),
    };
    let (target, described) = match pg.service.env.spec.restore {
        crate::spec::RestorePoint::At(when) => {
            let when = overrides::target_time(when);
            let described = format!("time {when}");
            (Some(("recovery_target_time", when)), described)
        }
        _ => (None, "the end of the archive".to_string()),
    };
    let recovery = Recovery {
        restore_command: restore_command.clone(),
        target,
        timeline: "latest",
    };
    let settings = recovery.settings();
    let mut binds = vec![(mounted.clone(), MOUNT.to_string(), true)];
    if let Some(wal) = &f.wal {
        binds.push((wal.local.clone(), ARCHIVE.to_string(), true));
    }
    let loader = crate::docker::ContainerSpec {
        name: format!("{name}-loader"),
        image: pg.service.env.image.clone(),
        env: Vec::new(),
        cmd: vec!["infinity".into()],
        port: super::PORT,
        volume: Some((volume.clone(), pgdata.into())),
        binds: binds.clone(),
        entrypoint: Some("sleep".into()),
        copy_in: Vec::new(),
        files: Vec::new(),
        hostname: None,
        net_admin: false,
        startup_timeout: pg.service.env.timeouts.provision,
    };
    let helper = docker.start(&loader).await?;
    let loaded = load(pg, f, &helper, &recovery).await;
    docker.remove(&helper).await?;
    let (checked, mut overridden) = loaded?;

    phases.enter(Phase::Restore);
    let spec = pg.container_spec(name, volume, overrides::command(&settings), binds);
    let image = pg.service.env.image.clone();
    let c = start_promoted(pg, &spec)
        .await
        .map_err(|e| overrides::explain_start_failure(e, &image))?;
    set_own_login(pg, &c)
        .await
        .map_err(|e| anyhow!("on the restored cluster: {e:#}"))?;
    pg.database = pg
        .service
        .env
        .spec
        .database
        .clone()
        .unwrap_or_else(|| "postgres".into());
    overridden.extend(overrides::replaced(pg, &settings).await);
    let client = pg.connect().await?;
    let replayed: Option<f64> = client
        .query_one(
            "SELECT extract(epoch FROM pg_last_xact_replay_timestamp())::float8",
            &[],
        )
        .await
        .map_err(|e| anyhow!("read the last replayed transaction: {}", error_line(&e)))?
        .get(0);
    let consistent_at = replayed
        .filter(|s| *s > 0.0)
        .map(|s| std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs_f64(s));
    Ok(Restored {
        recovery_target: Some(format!("{described}, from {}", f.object)),
        reached: Some({
            let how = match restore_command {
                Some(_) => "promoted",
                None => "started",
            };
            match consistent_at {
                Some(t) => format!(
                    "{how} after replaying {replayed_from}; last transaction {}",
                    humantime::format_rfc3339_millis(t)
                ),
                None => format!("{how} after replaying {replayed_from}; no transaction replayed"),
            }
        }),
        consistent_at,
        checked,
        overrides: overridden,
        ..Restored::default()
    })
}

/// Starts the restored server and waits until it has left recovery, asking over the local
/// socket (the cluster keeps the source's passwords until drillrig sets its own).
async fn start_promoted(
    pg: &mut Postgres,
    spec: &crate::docker::ContainerSpec,
) -> Result<crate::docker::Container> {
    let docker = pg.service.env.docker.clone();
    pg.service.start(spec).await?;
    let c = pg.service.containers.serving()?.clone();
    let limit = pg.service.env.timeouts.restore;
    pg.service
        .wait_ready(limit, |_port| {
            let (docker, c) = (docker.clone(), c.clone());
            async move {
                let out = docker
                    .exec(
                        &c,
                        "postgres",
                        &["psql", "-X", "-Atc", "SELECT NOT pg_is_in_recovery()"],
                    )
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                match (out.success(), String::from_utf8_lossy(&out.stdout).trim()) {
                    (true, "t") => Ok(()),
                    (true, _) => Err("still replaying WAL".to_string()),
                    (false, _) => Err(out.tail()),
                }
            }
        })
        .await?;
    Ok(c)
}

/// Fills the data volume from the backup in the loader container `helper`, and makes it
/// drillrig's to start ([`Recovery::prepare_script`]). On the way it runs the checks that read
/// the backup itself, when they are asked for: `pgbackrest verify` (`backup-integrity`) and
/// `pg_verifybackup` (`pg-verifybackup`), on the files as the backup holds them. Returns those
/// checks, and what the preparation replaced of the backup's files.
async fn load(
    pg: &Postgres,
    f: &Fetched,
    helper: &crate::docker::Container,
    recovery: &Recovery,
) -> Result<(Vec<CheckResult>, Vec<String>)> {
    let docker = &pg.service.env.docker;
    let pgdata = super::PGDATA;
    let asked = |c: CheckKind| pg.service.env.spec.checks.contains(&c);
    let mut checked = Vec::new();
    let mut verified = None;
    match &f.pgbackrest {
        Some(set) => {
            let repo = [
                format!("--stanza={}", set.stanza),
                format!("--repo1-path={MOUNT}"),
                "--log-level-file=off".into(),
                // A damaged file is reported at once, not retried for 15 s.
                "--job-retry=0".into(),
            ];
            let run = |extra: &[String]| {
                let mut cmd: Vec<String> = vec!["pgbackrest".into()];
                cmd.extend(repo.iter().cloned());
                cmd.extend(extra.iter().cloned());
                cmd
            };
            if asked(CheckKind::BackupIntegrity) {
                let started = std::time::Instant::now();
                let cmd = run(&["--log-level-console=info".into(), "verify".into()]);
                let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
                let out = docker.exec(helper, "postgres", &args).await?;
                let (held, said) = verify_outcome(&out.stdout, out.success(), &out.tail());
                let mut result = if held {
                    CheckResult::passed(CheckKind::BackupIntegrity, said.clone())
                } else {
                    CheckResult::failed(CheckKind::BackupIntegrity, said.clone())
                };
                result.duration_ms = started.elapsed().as_millis() as u64;
                checked.push(result);
                verified = Some((held, said));
            }
            let mut extra = vec![
                format!("--pg1-path={pgdata}"),
                format!("--set={}", set.label),
                "--log-level-console=warn".into(),
            ];
            // pgbackrest writes its own restore_command into postgresql.auto.conf: the one the
            // server runs with, so that the report does not list it as replaced.
            if let Some(command) = &recovery.restore_command {
                extra.push(format!("--recovery-option=restore_command={command}"));
            }
            extra.push("restore".into());
            let cmd = run(&extra);
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            let out = docker.exec(helper, "postgres", &args).await?;
            if !out.success() {
                let found = match &verified {
                    Some((false, said)) => format!(" ({said})"),
                    _ => String::new(),
                };
                bail!(
                    "pgbackrest restore of {} exited with {}: {}{found}",
                    f.object,
                    out.exit_code,
                    out.tail()
                );
            }
        }
        None => {
            let file_name = f.file_name();
            // pg_verifybackup reads the files as the backup holds them: a plain folder where
            // it lies, a tar once unpacked, before anything in it changes.
            let (unpack, verified_dir, manifest) = if f.format == Format::PgBasePlain {
                let copy = format!("cp -a {MOUNT}/{file_name}/. {pgdata}/");
                (
                    copy,
                    format!("{MOUNT}/{file_name}"),
                    Some(format!("{MOUNT}/{file_name}/backup_manifest")),
                )
            } else {
                let manifest = f
                    .companion_path
                    .as_ref()
                    .and_then(|m| m.file_name())
                    .map(|m| format!("{MOUNT}/{}", m.to_string_lossy()));
                (
                    format!("tar -xf {MOUNT}/{file_name} -C {pgdata}"),
                    pgdata.to_string(),
                    manifest,
                )
            };
            let out = docker.exec(helper, "root", &["sh", "-c", &unpack]).await?;
            if !out.success() {
                bail!(
                    "unpacking {} into a data volume failed: {}",
                    f.object,
                    out.tail()
                );
            }
            if asked(CheckKind::PgVerifybackup) {
                let started = std::time::Instant::now();
                let mut result = verify_base_backup(pg, f, helper, &verified_dir, manifest).await;
                result.duration_ms = started.elapsed().as_millis() as u64;
                checked.push(result);
            }
        }
    }
    let script = recovery.prepare_script();
    let out = docker.exec(helper, "root", &["sh", "-c", &script]).await?;
    if !out.success() {
        bail!(
            "preparing {} in its data volume failed: {}",
            f.object,
            out.tail()
        );
    }
    Ok((checked, overrides::file_lines(&out.stdout)))
}

/// `pg_verifybackup` on a base backup's files in `dir`, against `manifest` (none: unknown),
/// with its WAL from the fetched archive when there is one, else from the backup's own pg_wal.
async fn verify_base_backup(
    pg: &Postgres,
    f: &Fetched,
    helper: &crate::docker::Container,
    dir: &str,
    manifest: Option<String>,
) -> CheckResult {
    let check = CheckKind::PgVerifybackup;
    let docker = &pg.service.env.docker;
    let Some(manifest) = manifest else {
        return CheckResult::unknown(
            check,
            format!(
                "no backup_manifest beside {}: nothing to verify against",
                f.object
            ),
        );
    };
    let exists = docker
        .exec(helper, "root", &["test", "-f", &manifest])
        .await;
    if !exists.is_ok_and(|o| o.success()) {
        return CheckResult::unknown(
            check,
            format!(
                "{} holds no backup_manifest: nothing to verify against",
                f.object
            ),
        );
    }
    let mut cmd = vec!["pg_verifybackup", "--manifest-path", &manifest];
    if f.wal.is_some() {
        cmd.extend(["--wal-directory", ARCHIVE]);
    }
    cmd.push(dir);
    match docker.exec(helper, "root", &cmd).await {
        Ok(out) if out.success() => CheckResult::passed(
            check,
            format!(
                "pg_verifybackup: {} is valid (files and WAL against its manifest)",
                f.object
            ),
        ),
        Ok(out) => CheckResult::failed(
            check,
            format!(
                "pg_verifybackup on {} exited with {}: {}",
                f.object,
                out.exit_code,
                out.tail()
            ),
        ),
        Err(e) => CheckResult::unknown(check, format!("{e:#}")),
    }
}

/// What `pgbackrest verify` found, from its console log: it exits 0 even when files are
/// invalid, and lists each as `invalid …` under a `status: error` summary.
fn verify_outcome(stdout: &[u8], exited_ok: bool, tail: &str) -> (bool, String) {
    let text = String::from_utf8_lossy(stdout);
    let invalid: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once("INFO: ").map(|(_, m)| m))
        .filter(|m| m.starts_with("invalid "))
        .collect();
    if !exited_ok {
        return (false, format!("pgbackrest verify failed: {tail}"));
    }
    if invalid.is_empty() && !text.contains("status: error") {
        return (
            true,
            "pgbackrest verify found every backup file and WAL segment of the stanza intact".into(),
        );
    }
    let mut said = invalid.join("; ");
    if said.is_empty() {
        said = "status: error".into();
    }
    (false, format!("pgbackrest verify: {said}"))
}

/// Sets drillrig's own password on `postgres` over the local socket, through psql's stdin
/// (never on a command line): a restored cluster brings the source's.
async fn set_own_login(pg: &Postgres, c: &crate::docker::Container) -> Result<()> {
    let sql = format!(
        "ALTER ROLE postgres PASSWORD '{}';",
        pg.service.env.password.replace('\'', "''")
    );
    let cmd = [
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "--dbname",
        "postgres",
    ];
    let out = pg
        .service
        .env
        .docker
        .exec_with_stdin(c, "postgres", &cmd, sql.as_bytes())
        .await?;
    if !out.success() {
        bail!("set drillrig's login: {}", out.tail());
    }
    Ok(())
}

async fn psql(
    pg: &Postgres,
    c: &crate::docker::Container,
    database: &str,
    file: &str,
    f: &Fetched,
    stop_on_error: bool,
) -> Result<()> {
    let on_error = format!("ON_ERROR_STOP={}", u8::from(stop_on_error));
    let cmd = [
        "psql", "-X", "-q", "-v", &on_error, "--dbname", database, "-f", file,
    ];
    let out = pg.service.env.docker.exec(c, "postgres", &cmd).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ERROR:"))
        .filter(|l| !l.contains("role \"postgres\" already exists"))
        .collect();
    if !out.success() || !errors.is_empty() {
        bail!(
            "psql -f {} exited with {}: {}",
            f.object,
            out.exit_code,
            if errors.is_empty() {
                out.tail()
            } else {
                errors[..errors.len().min(5)].join(" | ")
            }
        );
    }
    Ok(())
}

/// A user's SQL in a read-only transaction: the first column of the first row, as text.
pub(super) async fn query(pg: &Postgres, sql: &str) -> Result<String> {
    let client = pg.connect().await?;
    let sql = sql.trim().trim_end_matches(';');
    // One statement (the extended protocol takes no more), wrapped so that only a query runs,
    // inside a transaction that cannot write.
    let wrapped = format!("SELECT q.value::text FROM ({sql}) AS q(value) LIMIT 1");
    client
        .batch_execute("BEGIN READ ONLY")
        .await
        .map_err(|e| anyhow!("begin a read-only transaction: {}", error_line(&e)))?;
    let row = client
        .query_opt(&wrapped, &[])
        .await
        .map_err(|e| anyhow!("{}", error_line(&e)));
    let _ = client.batch_execute("ROLLBACK").await;
    match row? {
        None => bail!("the query returned no row"),
        Some(row) => Ok(row
            .get::<_, Option<String>>(0)
            .unwrap_or_else(|| "NULL".into())),
    }
}

/// The last condition of a restore test's recovery: the restored database takes a fresh write
/// and reads it back (in a table of its own, dropped afterwards).
pub(super) async fn round_trip(pg: &Postgres) -> Result<()> {
    let client = pg.connect().await?;
    let token = format!("drillrig-{}", std::process::id());
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS drillrig_round_trip (token text PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(|e| anyhow!("create the round-trip table: {}", error_line(&e)))?;
    client
        .execute(
            "INSERT INTO drillrig_round_trip (token) VALUES ($1) ON CONFLICT (token) DO UPDATE SET at = now()",
            &[&token],
        )
        .await
        .map_err(|e| anyhow!("write the round-trip row: {}", error_line(&e)))?;
    let back: String = client
        .query_one(
            "SELECT token FROM drillrig_round_trip WHERE token = $1",
            &[&token],
        )
        .await
        .map_err(|e| anyhow!("read the round-trip row back: {}", error_line(&e)))?
        .get(0);
    if back != token {
        bail!("the round-trip row reads back as {back:?}");
    }
    client
        .batch_execute("DROP TABLE drillrig_round_trip")
        .await
        .map_err(|e| anyhow!("drop the round-trip table: {}", error_line(&e)))?;
    Ok(())
}
