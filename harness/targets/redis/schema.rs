//! The scenario keys Redis targets own (docs/scenario.md §3): `persistence`, passed to
//! `redis-server`; `restore.repair`, `redis-check-aof --fix` before a restart; and the data
//! `file` a `corrupt-data-file` damages. The rules that tie them to the common keys are here.

use std::sync::Arc;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Deserialize;
use toml::Spanned;

use crate::spec::{BackupMethod, FaultKind, KindOptions, RestorePoint, TargetSpec, kebab_enum};
use crate::targets::schema::{KeyError, KindKeys, node_aim};

kebab_enum!(
    /// Redis `appendfsync`.
    Fsync { Always = "always", Everysec = "everysec", No = "no" }
);

kebab_enum!(
    /// Which Redis data file `corrupt-data-file` damages.
    DataFile {
        /// Bytes in the middle of `dump.rdb`.
        Rdb = "rdb",
        /// Bytes in the middle of the newest incremental AOF file.
        Aof = "aof",
        /// The last bytes of the newest incremental AOF file cut off: a torn write.
        AofTail = "aof-tail",
    }
);

/// A Redis target's options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisOptions {
    pub persistence: Persistence,
    /// `redis-check-aof --fix` before a `restart`; what it drops is measured as loss.
    pub repair: bool,
    pub replication: Option<Replication>,
}

/// Replicas of the primary, watched by Sentinel or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    pub replicas: u8,
    /// 0 (a runbook's `REPLICAOF NO ONE`) or 3 (Sentinel elects the new primary).
    pub sentinels: u8,
    /// `min-replicas-to-write` on every node (`min-replicas-max-lag` 10 s).
    pub min_replicas_to_write: u8,
}

impl Replication {
    /// The data nodes' names, primary first: `primary`, `replica-1`, …
    pub fn nodes(&self) -> Vec<String> {
        std::iter::once("primary".to_string())
            .chain((1..=self.replicas).map(|i| format!("replica-{i}")))
            .collect()
    }
}

/// The most replicas a target may have.
pub const MAX_REPLICAS: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persistence {
    pub appendonly: bool,
    pub appendfsync: Fsync,
    /// RDB `save` rules in Redis's syntax (`"3600 1 300 100"`); empty: none.
    pub save: String,
}

impl Default for Persistence {
    /// Redis 7.0's defaults.
    fn default() -> Self {
        Persistence {
            appendonly: false,
            appendfsync: Fsync::Everysec,
            save: "3600 1 300 100 60 10000".into(),
        }
    }
}

/// The keys as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    /// How the server persists its data (Redis 7.0's defaults where unset).
    persistence: Option<RawPersistence>,
    #[serde(default)]
    restore: RawRestore,
    /// Replicas of the primary, with or without Sentinel; `restore.from = "failover"` promotes
    /// one.
    replication: Option<RawReplication>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawReplication {
    /// How many replicas (1 or 2).
    replicas: u8,
    /// 0 (a runbook promotes with `REPLICAOF NO ONE`) or 3 (Sentinel elects); default 3.
    sentinels: Option<u8>,
    /// `min-replicas-to-write` (default 0: the primary takes writes alone).
    min_replicas_to_write: Option<u8>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawPersistence {
    /// `appendonly`: keep an append-only file (default false).
    appendonly: Option<bool>,
    /// `appendfsync` (default `everysec`).
    appendfsync: Option<Fsync>,
    /// RDB `save` rules in Redis's syntax (`"3600 1 300 100"`); `""`: none.
    save: Option<String>,
}

#[derive(Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawRestore {
    /// `redis-check-aof --fix` before a `restart` (needs `persistence.appendonly = true`).
    repair: Option<bool>,
}

/// The target keys Redis owns.
pub const TARGET_KEYS: &[&str] = &["persistence", "restore.repair", "replication"];

/// The JSON Schema of [`TARGET_KEYS`], from the types that parse them.
pub fn keys_schema(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<RawKeys>()
}

/// Checks a Redis target's own keys against its common spec.
pub fn options(keys: &KindKeys<'_>, spec: &TargetSpec) -> Result<Arc<dyn KindOptions>, KeyError> {
    let raw: RawKeys = keys.parse()?;
    let replication = match raw.replication {
        None => None,
        Some(r) => Some(replication(r, spec)?),
    };
    if spec.restore == RestorePoint::Failover && replication.is_none() {
        return Err(KeyError::at(
            "restore.from",
            "restore.from = \"failover\" promotes a replica: give the target `replication = { replicas = 1 }`",
        ));
    }
    let defaults = Persistence::default();
    let persistence = match raw.persistence {
        None => defaults,
        Some(p) => Persistence {
            appendonly: p.appendonly.unwrap_or(defaults.appendonly),
            appendfsync: p.appendfsync.unwrap_or(defaults.appendfsync),
            save: p.save.unwrap_or(defaults.save),
        },
    };
    if spec
        .backup
        .is_some_and(|b| b.method == BackupMethod::RedisAof)
        && !persistence.appendonly
    {
        return Err(KeyError::at(
            "backup.method",
            "backup method `redis-aof` copies the append-only file: set persistence.appendonly = true",
        ));
    }
    let repair = raw.restore.repair.unwrap_or(false);
    if repair && !(spec.restore == RestorePoint::Restart && persistence.appendonly) {
        return Err(KeyError::at(
            "restore.repair",
            "repair runs `redis-check-aof --fix` before a restart: it needs restore.from = \"restart\" and persistence.appendonly = true",
        ));
    }
    Ok(Arc::new(RedisOptions {
        persistence,
        repair,
        replication,
    }))
}

fn replication(r: RawReplication, spec: &TargetSpec) -> Result<Replication, KeyError> {
    if !(1..=MAX_REPLICAS).contains(&r.replicas) {
        return Err(KeyError::at(
            "replication.replicas",
            format!(
                "a primary has 1 to {MAX_REPLICAS} replicas here, not {}",
                r.replicas
            ),
        ));
    }
    let sentinels = r.sentinels.unwrap_or(3);
    if sentinels != 0 && sentinels != 3 {
        return Err(KeyError::at(
            "replication.sentinels",
            format!("0 (a runbook promotes) or 3 sentinels, not {sentinels}"),
        ));
    }
    let min_replicas_to_write = r.min_replicas_to_write.unwrap_or(0);
    if min_replicas_to_write > r.replicas {
        return Err(KeyError::at(
            "replication.min_replicas_to_write",
            format!(
                "{min_replicas_to_write} replicas cannot acknowledge writes when there are {}",
                r.replicas
            ),
        ));
    }
    if spec.source.is_some() {
        return Err(KeyError::at(
            "replication",
            "a restore test restores into one scratch server: it has no replication",
        ));
    }
    Ok(Replication {
        replicas: r.replicas,
        sentinels,
        min_replicas_to_write,
    })
}

/// Checks a fault on a Redis target: the `file` a `corrupt-data-file` damages must be one the
/// server loads, and a full disk must be one the server can survive.
pub fn aim(
    fault: FaultKind,
    key: Option<&'static str>,
    value: Option<&Spanned<String>>,
    spec: &TargetSpec,
) -> Result<Option<String>, KeyError> {
    let p = &spec
        .options_of::<RedisOptions>()
        .expect("a redis target has redis options")
        .persistence;
    // A full disk is only met by a service that keeps writing to it, and only survived in
    // place where the service refuses writes rather than exiting (Redis exits on an AOF write
    // error under `appendfsync always`).
    if fault == FaultKind::DiskFull && (!p.appendonly || p.appendfsync == Fsync::Always) {
        return Err(KeyError::at(
            "kind",
            format!(
                "fault `{fault}` needs target {:?} to write an AOF it can survive losing space under: persistence.appendonly = true with appendfsync `everysec` or `no`",
                spec.name
            ),
        ));
    }
    if key == Some("node") {
        let nodes = spec
            .options_of::<RedisOptions>()
            .and_then(|o| o.replication)
            .map(|r| r.nodes());
        return node_aim(fault, value, spec, nodes);
    }
    if key.is_none() {
        return Ok(None);
    }
    let Some(value) = value else {
        let file = if p.appendonly {
            DataFile::Aof
        } else {
            DataFile::Rdb
        };
        return Ok(Some(file.as_str().into()));
    };
    let error = |message: String| KeyError {
        key: "file".into(),
        span: Some(value.span()),
        message,
    };
    let file = DataFile::parse(value.get_ref()).ok_or_else(|| {
        error(format!(
            "unknown data file {:?} (files: {})",
            value.get_ref(),
            DataFile::ALL
                .iter()
                .map(|f| f.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    if (file != DataFile::Rdb) != p.appendonly {
        return Err(error(if p.appendonly {
            "with appendonly the server loads the AOF and ignores dump.rdb: damage `aof` or `aof-tail`".into()
        } else {
            "without appendonly there is no AOF to damage: use `rdb` or set persistence.appendonly = true".into()
        }));
    }
    Ok(Some(file.as_str().into()))
}

/// The data file a validated fault aims at.
pub fn data_file(aim: Option<&str>) -> DataFile {
    aim.and_then(DataFile::parse)
        .expect("validation sets the file")
}
