//! What PostgreSQL holds, and the PostgreSQL-only checks: per-table row counts and digests,
//! foreign keys without orphans, and `pg_amcheck` over every heap and B-tree index.

use anyhow::{Result, anyhow, bail};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::{Postgres, error_line, physical, quote_ident};
use crate::backup::{Contents, DatasetDigest};
use crate::checks::CheckResult;
use crate::checks::Evidence;
use crate::spec::CheckKind;

/// Row count and sha256 of the rows `select` returns (one text column), streamed through
/// `COPY … TO STDOUT`: the server never builds a table into one value (PostgreSQL cannot past
/// 1 GB), and the client holds one chunk at a time. COPY escapes newlines inside a row, so each
/// row ends with the only newline it sends.
async fn digest_rows(
    client: &Client,
    select: &str,
) -> Result<DatasetDigest, tokio_postgres::Error> {
    use futures::TryStreamExt;
    use sha2::Digest;
    let stream = client
        .copy_out(&format!("COPY ({select}) TO STDOUT"))
        .await?;
    futures::pin_mut!(stream);
    let mut hash = sha2::Sha256::new();
    let mut rows = 0u64;
    while let Some(chunk) = stream.try_next().await? {
        rows += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        hash.update(&chunk);
    }
    Ok(DatasetDigest {
        rows,
        digest: hex::encode(hash.finalize()),
    })
}

/// The `orders` fixture's own rows per table, counted and digested (rows as text, in id order):
/// every customer, and the orders the seed wrote (the workload's carry a `seq`, the round
/// trip's the canary status). A table that is gone holds none.
pub(super) async fn seed_facts(client: &Client) -> Result<Contents> {
    let mut facts = Contents::new();
    let canary = format!("'{}'", super::CANARY_STATUS);
    for (table, filter) in [
        ("customers", "true".to_string()),
        ("orders", format!("t.seq IS NULL AND t.status <> {canary}")),
    ] {
        let select =
            format!("SELECT t::text FROM public.{table} AS t WHERE {filter} ORDER BY t.id");
        let digest = match digest_rows(client, &select).await {
            Ok(d) => d,
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => DatasetDigest {
                rows: 0,
                digest: "the table is gone".into(),
            },
            Err(e) => bail!("digest the seeded rows of {table}: {}", error_line(&e)),
        };
        facts.insert(table.to_string(), digest);
    }
    Ok(facts)
}

/// How much of each table [`contents`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Depth {
    /// Nothing: no check compares contents.
    None,
    /// Row counts only (`row-counts`), without hashing a row.
    Counts,
    /// Row counts and digests (`checksums`).
    Digests,
}

impl Depth {
    /// What the target's checks compare.
    pub(super) fn for_checks(checks: &[CheckKind]) -> Depth {
        if checks.contains(&CheckKind::Checksums) {
            Depth::Digests
        } else if checks.contains(&CheckKind::RowCounts) {
            Depth::Counts
        } else {
            Depth::None
        }
    }
}

/// Row count and, with [`Depth::Digests`], digest (rows as text, in primary-key order, else in
/// text order) of every table in `public`; nothing with [`Depth::None`].
pub(super) async fn contents(client: &Client, depth: Depth) -> Result<Contents> {
    if depth == Depth::None {
        return Ok(Contents::new());
    }
    let tables = client
        .query(
            "SELECT c.relname, \
                    coalesce((SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY array_position(i.indkey::int2[], a.attnum)) \
                              FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
                              WHERE i.indrelid = c.oid AND i.indisprimary), '') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY c.relname",
            &[],
        )
        .await
        .map_err(|e| anyhow!("list tables: {}", error_line(&e)))?;
    let mut contents = Contents::new();
    for table in tables {
        let (name, key): (String, String) = (table.get(0), table.get(1));
        let order = if key.is_empty() {
            "t::text".to_string()
        } else {
            key
        };
        let digest = if depth == Depth::Counts {
            let sql = format!("SELECT count(*) FROM public.{}", quote_ident(&name));
            let rows: i64 = client
                .query_one(&sql, &[])
                .await
                .map_err(|e| anyhow!("count table {name}: {}", error_line(&e)))?
                .get(0);
            DatasetDigest {
                rows: rows as u64,
                digest: "not computed (no `checksums` check)".into(),
            }
        } else {
            let select = format!(
                "SELECT t::text FROM public.{} AS t ORDER BY {order}",
                quote_ident(&name)
            );
            digest_rows(client, &select)
                .await
                .map_err(|e| anyhow!("digest table {name}: {}", error_line(&e)))?
        };
        contents.insert(name, digest);
    }
    Ok(contents)
}

/// Names of the foreign keys in the user schemas, in name order.
pub(super) async fn foreign_key_names(client: &Client) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT con.conname FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace \
             WHERE con.contype = 'f' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| anyhow!("list foreign keys: {}", error_line(&e)))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Every foreign key the fixture declared exists, and no row references a missing parent.
pub(super) async fn foreign_keys(pg: &Postgres) -> CheckResult {
    let check = CheckKind::ForeignKeys;
    let client = match pg.connect().await {
        Ok(c) => c,
        Err(e) => return CheckResult::unknown(check, format!("{e:#}")),
    };
    let constraints = match client
        .query(
            "SELECT con.conname, con.conrelid::regclass::text, con.confrelid::regclass::text, \
                    (SELECT array_agg(quote_ident(a.attname) ORDER BY k.i) FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, i) \
                     JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum), \
                    (SELECT array_agg(quote_ident(a.attname) ORDER BY k.i) FROM unnest(con.confkey) WITH ORDINALITY AS k(attnum, i) \
                     JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum) \
             FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace \
             WHERE con.contype = 'f' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' ORDER BY 1",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) => return CheckResult::unknown(check, format!("list foreign keys: {}", error_line(&e))),
    };
    let mut problems = Vec::new();
    let present: Vec<String> = constraints.iter().map(|r| r.get(0)).collect();
    for missing in pg.foreign_keys.iter().filter(|fk| !present.contains(fk)) {
        problems.push(format!("foreign key {missing} is missing"));
    }
    let mut checked = 0;
    for row in &constraints {
        let (name, child, parent): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let (child_cols, parent_cols): (Vec<String>, Vec<String>) = (row.get(3), row.get(4));
        let not_null = child_cols
            .iter()
            .map(|c| format!("c.{c} IS NOT NULL"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let joined = child_cols
            .iter()
            .zip(&parent_cols)
            .map(|(c, p)| format!("p.{p} = c.{c}"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let sql = format!(
            "SELECT count(*) FROM {child} AS c WHERE {not_null} AND NOT EXISTS (SELECT 1 FROM {parent} AS p WHERE {joined})"
        );
        match client.query_one(&sql, &[]).await {
            Ok(r) => {
                let orphans: i64 = r.get(0);
                if orphans > 0 {
                    problems.push(format!(
                        "{name}: {orphans} row(s) of {child} reference a missing {parent}"
                    ));
                }
                checked += 1;
            }
            Err(e) => {
                return CheckResult::unknown(check, format!("check {name}: {}", error_line(&e)));
            }
        }
    }
    if pg.service.env.spec.source.is_some() && constraints.is_empty() {
        return CheckResult::unknown(
            check,
            format!("database {} declares no foreign keys to check", pg.database),
        );
    }
    if pg.service.env.spec.source.is_none() && pg.foreign_keys.is_empty() {
        return CheckResult::unknown(check, "the fixture declared no foreign keys to check");
    }
    CheckResult::from_problems(
        check,
        format!("{checked} foreign key(s), no orphan rows"),
        problems,
    )
}

/// `pg_amcheck --heapallindexed --rootdescend` over the whole database, run in the container.
pub(super) async fn amcheck(pg: &Postgres) -> CheckResult {
    let check = CheckKind::Amcheck;
    let c = match pg.service.containers.serving() {
        Ok(c) => c,
        Err(e) => return CheckResult::unknown(check, format!("{e:#}")),
    };
    let cmd = [
        "pg_amcheck",
        "--install-missing",
        "--heapallindexed",
        "--rootdescend",
        &pg.database,
    ];
    match pg.service.env.docker.exec(c, "postgres", &cmd).await {
        Ok(out) if out.success() => CheckResult::passed(
            check,
            "pg_amcheck --heapallindexed --rootdescend found no corruption",
        ),
        // Exit 2: corruption found; anything else: pg_amcheck itself failed.
        Ok(out) if out.exit_code == 2 => CheckResult::failed(
            check,
            format!(
                "pg_amcheck found corruption: {}",
                amcheck_findings(&String::from_utf8_lossy(&out.stdout))
                    .unwrap_or_else(|| out.tail())
            ),
        ),
        Ok(out) => CheckResult::failed(
            check,
            format!("pg_amcheck exited with {}: {}", out.exit_code, out.tail()),
        ),
        Err(e) => CheckResult::unknown(check, format!("{e:#}")),
    }
}

/// How many damaged relations [`amcheck_findings`] names before it counts the rest.
const AMCHECK_NAMED: usize = 3;

/// What `pg_amcheck` found, one relation at a time: each relation it reports (a line such as
/// `btree index "shop.public.invoice_pkey":`) with the first line it says about it (`index
/// "invoice_pkey" contains unexpected zero page at block 1`), so that the detail names the
/// damaged index or table and the error whatever else the output holds. `None` when the output
/// names no relation.
fn amcheck_findings(stdout: &str) -> Option<String> {
    let mut found: Vec<(String, String)> = Vec::new();
    for line in stdout.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            if let Some(relation) = line.trim_end().strip_suffix(':') {
                found.push((relation.to_string(), String::new()));
            }
        } else if let Some((_, said)) = found.last_mut().filter(|(_, said)| said.is_empty()) {
            let text = line.trim();
            *said = text
                .strip_prefix("ERROR:")
                .map_or(text, str::trim_start)
                .to_string();
        }
    }
    if found.is_empty() {
        return None;
    }
    let mut parts: Vec<String> = found
        .iter()
        .take(AMCHECK_NAMED)
        .map(|(relation, said)| {
            if said.is_empty() {
                relation.clone()
            } else {
                format!("{relation}: {said}")
            }
        })
        .collect();
    if found.len() > AMCHECK_NAMED {
        parts.push(format!(
            "and {} more relation(s)",
            found.len() - AMCHECK_NAMED
        ));
    }
    Some(parts.join("; "))
}

/// `backup-age`: the newest recovery point at the fault is the newest archived WAL segment (in
/// the archive beside the restored backup: after a site loss, what reached the DR site), or the
/// newest dump's snapshot.
pub(super) fn backup_age(pg: &Postgres, evidence: &Evidence<'_>) -> CheckResult {
    let newest = if pg.archives_wal() {
        let archive = evidence
            .backup
            .map_or_else(|| pg.archive_dir(), crate::backup::Backup::archive);
        match physical::newest_archived(pg, &archive, evidence.fault_began) {
            Ok(n) => n.map(|(name, at)| (format!("WAL segment {name}, archived"), at)),
            Err(e) => {
                return CheckResult::unknown(
                    CheckKind::BackupAge,
                    format!("read the archive: {e:#}"),
                );
            }
        }
    } else {
        crate::checks::newest_backup_point(evidence)
    };
    crate::checks::backup_age(evidence, newest)
}

#[cfg(test)]
mod tests {
    use super::amcheck_findings;

    #[test]
    fn amcheck_findings_name_each_relation_and_its_error() {
        let out = "btree index \"shop.public.invoice_pkey\":\n    ERROR:  index \"invoice_pkey\" contains unexpected zero page at block 1\n    HINT:  Please REINDEX it.\nheap table \"shop.public.invoice\", block 0, offset 3:\n    xmin 7 precedes relation freeze threshold 0:700\n";
        assert_eq!(
            amcheck_findings(out).unwrap(),
            "btree index \"shop.public.invoice_pkey\": index \"invoice_pkey\" contains unexpected zero page at block 1; \
             heap table \"shop.public.invoice\", block 0, offset 3: xmin 7 precedes relation freeze threshold 0:700"
        );
        let many: String = (0..5)
            .map(|i| format!("btree index \"db.public.i{i}\":\n    ERROR:  bad {i}\n"))
            .collect();
        assert_eq!(
            amcheck_findings(&many).unwrap(),
            "btree index \"db.public.i0\": bad 0; btree index \"db.public.i1\": bad 1; \
             btree index \"db.public.i2\": bad 2; and 2 more relation(s)"
        );
        assert_eq!(amcheck_findings("pg_amcheck: error: no relations\n"), None);
    }
}
