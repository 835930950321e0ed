//! `pg-dump` backups and their restore.
//!
//! A backup opens a REPEATABLE READ transaction, exports its snapshot, and runs `pg_dump
//! --snapshot` inside the container. The transaction stays open afterwards as the backup's
//! [`HeldSnapshot`]: if a check compares contents and this is the backup the restore will use,
//! the same snapshot yields the row counts and digests, so they describe exactly what the dump
//! holds, and no other backup rereads a table for them. The dump streams from the container's
//! stdout into the repository (custom format, so `pg_restore -j` can use several jobs).

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use async_trait::async_trait;
use tokio_postgres::Client;

use super::{DATABASE, Postgres, Ready, checks, error_line};
use crate::backup::{Artefact, Backup, Contents, FreshBackup, HeldSnapshot};
use crate::measure::{Phase, RecoveryPhases};
use crate::targets::Restored;

const DUMP_FILE: &str = "drill.dump";
/// Where the dump is copied in the replacement container.
const RESTORE_PATH: &str = "/tmp/drillrig-restore.dump";

pub(super) async fn take(pg: &Postgres, dir: &Path) -> Result<FreshBackup> {
    let c = pg.service.containers.serving()?;
    let client = pg.connect().await?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| anyhow!("open the backup transaction: {}", error_line(&e)))?;
    // The snapshot is taken by the transaction's first query: every write acknowledged before
    // this instant is in it.
    let consistent_at = pg.service.env.clock.micros();
    let snapshot: String = client
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(|e| anyhow!("export the backup snapshot: {}", error_line(&e)))?
        .get(0);

    let dest = dir.join(DUMP_FILE);
    let cmd = [
        "pg_dump",
        "--format=custom",
        "--dbname",
        DATABASE,
        "--snapshot",
        &snapshot,
    ];
    let (dumped, max_seq) = tokio::join!(
        pg.service
            .env
            .docker
            .exec_to_file(c, "postgres", &cmd, &dest),
        client.query_one("SELECT max(seq) FROM orders", &[])
    );
    let (output, sha256, size) = dumped?;
    let max_seq: Option<i64> = max_seq
        .map_err(|e| anyhow!("read the newest seq in the snapshot: {}", error_line(&e)))?
        .get(0);
    let depth = checks::Depth::for_checks(&pg.service.env.spec.checks);
    let held = if depth == checks::Depth::None {
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| anyhow!("close the backup transaction: {}", error_line(&e)))?;
        None
    } else {
        Some(Box::new(Snapshot { client, depth }) as Box<dyn HeldSnapshot>)
    };
    if !output.success() {
        bail!(
            "pg_dump exited with {}: {}",
            output.exit_code,
            output.tail()
        );
    }
    Ok(FreshBackup {
        consistent_at,
        artefacts: vec![Artefact {
            file: DUMP_FILE.into(),
            size,
            sha256,
        }],
        contents: Contents::new(),
        held,
        max_seq: max_seq.map(|s| s as u64),
        details: serde_json::json!({ "snapshot": snapshot }),
    })
}

/// A dump's snapshot, held by its open transaction.
struct Snapshot {
    client: Client,
    depth: checks::Depth,
}

#[async_trait]
impl HeldSnapshot for Snapshot {
    async fn contents(self: Box<Self>) -> Result<Contents> {
        checks::contents(&self.client, self.depth).await
    }
}

pub(super) async fn restore(
    pg: &mut Postgres,
    backup: &Backup,
    phases: &mut RecoveryPhases,
) -> Result<Restored> {
    phases.enter(Phase::Provision);
    let (name, volume) = pg.service.next_container().await?;
    let spec = pg.container_spec(name, volume, Vec::new(), Vec::new());
    pg.start_container(spec, Ready::Serving, pg.service.env.timeouts.restore)
        .await?;
    let c = pg.service.containers.serving()?.clone();

    phases.enter(Phase::Fetch);
    let artefact = backup
        .artefacts
        .iter()
        .find(|a| a.file == DUMP_FILE)
        .ok_or_else(|| anyhow!("backup {} has no {DUMP_FILE}", backup.id))?;
    pg.service
        .env
        .docker
        .upload_host_file(&c, &backup.dir.join(&artefact.file), RESTORE_PATH)
        .await?;

    phases.enter(Phase::Restore);
    let jobs = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .to_string();
    let output = pg
        .service
        .env
        .docker
        .exec(
            &c,
            "postgres",
            &[
                "pg_restore",
                "--dbname",
                DATABASE,
                "--exit-on-error",
                "--no-owner",
                "--jobs",
                &jobs,
                RESTORE_PATH,
            ],
        )
        .await?;
    if !output.success() {
        bail!(
            "pg_restore of backup {} exited with {}: {}",
            backup.id,
            output.exit_code,
            output.tail()
        );
    }
    Ok(Restored {
        prepared: None,
        recovery_target: Some(format!("the snapshot of dump {}", backup.id)),
        reached: None,
        note: None,
        consistent_at: None,
        ..Restored::default()
    })
}
