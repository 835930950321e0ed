//! Restore tests of PostgreSQL: the user's own dump restored into a scratch server with
//! PostgreSQL's own tools, into the database it was taken from, and user queries answered in a
//! read-only transaction.

use anyhow::{Result, anyhow, bail};

use super::{Postgres, Ready, error_line};
use crate::measure::{Phase, RecoveryPhases};
use crate::source::{Fetched, Format};
use crate::targets::Restored;

/// Where the fetched backup's folder is mounted (read-only) in the scratch container.
const MOUNT: &str = "/drillrig-source";

pub(super) async fn restore(
    pg: &mut Postgres,
    f: &Fetched,
    phases: &mut RecoveryPhases,
) -> Result<Restored> {
    phases.enter(Phase::Provision);
    let dir = f
        .local
        .parent()
        .ok_or_else(|| anyhow!("{} has no folder", f.local.display()))?
        .to_path_buf();
    let file_name = f
        .local
        .file_name()
        .ok_or_else(|| anyhow!("{} has no name", f.local.display()))?
        .to_string_lossy()
        .into_owned();
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
            // It also set the source cluster's password on `postgres`: drillrig's login is
            // put back (through stdin, never on a command line).
            let sql = format!(
                "ALTER ROLE postgres PASSWORD '{}';",
                pg.service.env.password.replace('\'', "''")
            );
            let out = docker
                .exec_with_stdin(
                    &c,
                    "postgres",
                    &[
                        "psql",
                        "-X",
                        "-q",
                        "-v",
                        "ON_ERROR_STOP=1",
                        "--dbname",
                        "postgres",
                    ],
                    sql.as_bytes(),
                )
                .await?;
            if !out.success() {
                bail!("restore drillrig's login after pg_dumpall: {}", out.tail());
            }
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
