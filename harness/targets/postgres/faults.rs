//! PostgreSQL faults: a damaged heap page under the workload, a dropped table, and a bad update.

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use serde_json::json;

use super::{PGDATA, Postgres, error_line, quote_ident};

/// Bytes flipped in the damaged page.
const DAMAGE_LEN: usize = 16;
/// Offset of the damage inside the page: the tuple area, past the page header and line pointers.
const DAMAGE_OFFSET_IN_PAGE: u64 = 4096;
/// A relation file segment holds this many blocks (1 GB of 8 kB pages).
const BLOCKS_PER_SEGMENT: u64 = 131_072;

/// Flips bytes in the heap page holding the workload's newest row of `relation` (or its last page
/// when the relation has no `seq`). Inserts into `relation` wait on a lock from the moment that
/// page is located until the server stops, so the newest row is still on it when it is damaged
/// (without the lock, the workload could fill the page and move on in between, and no read of
/// the newest row would ever touch the damage). The server is stopped cleanly so that shared
/// buffers cannot hide the damage, then started again: the next read of the page fails its
/// checksum.
pub(super) async fn corrupt_page(pg: &mut Postgres, relation: &str) -> Result<serde_json::Value> {
    let client = pg.connect().await?;
    let rel = quote_ident(relation);
    let has_seq: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = 'seq')", &[&rel])
        .await
        .map_err(|e| anyhow!("look up relation {relation}: {}", error_line(&e)))?
        .get(0);
    // Held until the server stops: a fast shutdown ends the transaction, and inserts resume on
    // the restarted server.
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = '10s'; LOCK TABLE {rel} IN SHARE MODE"
        ))
        .await
        .map_err(|e| anyhow!("lock {relation} against inserts: {}", error_line(&e)))?;
    let newest_block = if has_seq {
        format!(
            "(SELECT (ctid::text::point)[0]::bigint FROM {rel} WHERE seq = (SELECT max(seq) FROM {rel}))"
        )
    } else {
        "NULL::bigint".to_string()
    };
    let row = client
        .query_one(
            &format!(
                "SELECT pg_relation_filepath($1::text::regclass), current_setting('block_size')::bigint, \
                        coalesce({newest_block}, pg_relation_size($1::text::regclass) / current_setting('block_size')::bigint - 1)"
            ),
            &[&rel],
        )
        .await
        .map_err(|e| anyhow!("locate the pages of {relation}: {}", error_line(&e)))?;
    let (file, block_size, block): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
    if block < 0 {
        bail!("relation {relation} has no pages to damage");
    }
    let (block, block_size) = (block as u64, block_size as u64);
    let segment = block / BLOCKS_PER_SEGMENT;
    let path = if segment == 0 {
        format!("{PGDATA}/{file}")
    } else {
        format!("{PGDATA}/{file}.{segment}")
    };
    let offset = (block % BLOCKS_PER_SEGMENT) * block_size + DAMAGE_OFFSET_IN_PAGE;

    let c = pg.service.containers.serving()?.clone();
    let docker = pg.service.env.docker.clone();
    docker.stop(&c, Duration::from_secs(60)).await?;
    drop(client);
    let mut data = docker.download(&c, &path).await?;
    let start = offset as usize;
    let Some(bytes) = data.bytes.get_mut(start..start + DAMAGE_LEN) else {
        bail!(
            "{path} is {} bytes long; block {block} is not in it",
            data.bytes.len()
        );
    };
    let before = hex::encode(&*bytes);
    // Inverting guarantees every byte changes.
    bytes.iter_mut().for_each(|b| *b = !*b);
    let after = hex::encode(&*bytes);
    docker.upload(&c, &path, &data).await?;
    docker.start_again(&c).await?;
    pg.wait_ready(super::Ready::Serving, pg.service.env.timeouts.fault)
        .await?;
    Ok(json!({
        "relation": relation,
        "file": path,
        "block": block,
        "offset": offset,
        "length": DAMAGE_LEN,
        "bytes_before": before,
        "bytes_after": after,
    }))
}

/// `DROP TABLE relation CASCADE` through a normal client session.
pub(super) async fn drop_table(pg: &mut Postgres, relation: &str) -> Result<serde_json::Value> {
    let client = pg.connect().await?;
    let sql = format!("DROP TABLE {} CASCADE", quote_ident(relation));
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| anyhow!("{sql}: {}", error_line(&e)))?;
    Ok(json!({ "statement": sql }))
}

/// `bad-update`: a logical disaster through a normal client, one statement: every tenth order
/// (`id % 10 = pick`, `pick` from the run's seed), seeded and workload rows alike, gets
/// `amount_cents = 0`. The server stays healthy; only the data is wrong.
pub(super) async fn bad_update(pg: &mut Postgres) -> Result<serde_json::Value> {
    let client = pg.connect().await?;
    let pick = pg.service.env.seed % 10;
    let sql =
        format!("UPDATE orders SET amount_cents = 0 WHERE id % 10 = {pick} AND amount_cents <> 0");
    let rows = client
        .execute(&sql, &[])
        .await
        .map_err(|e| anyhow!("{sql}: {}", error_line(&e)))?;
    Ok(json!({ "statement": sql, "rows_updated": rows }))
}
