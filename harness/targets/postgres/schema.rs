//! The scenario keys PostgreSQL targets own (docs/scenario.md §3): `replication`, the standbys
//! streaming from the primary and whether they confirm each commit; and the `node` an outage
//! hits on such a target. The rules that tie them to the common keys are here.

use std::sync::Arc;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Deserialize;
use toml::Spanned;

use crate::spec::{FaultKind, KindOptions, RestorePoint, TargetSpec, kebab_enum};
use crate::targets::schema::{KeyError, KindKeys, dataset_aim, node_aim};

kebab_enum!(
    /// How a commit waits for the standbys.
    Mode {
        /// The commit returns once the primary has it; the standbys stream behind.
        Async = "async",
        /// `synchronous_standby_names = 'FIRST 1 (…)'`, `synchronous_commit = on`: the commit
        /// returns once the first standby listed has flushed it too.
        Sync = "sync",
    }
);

/// The most standbys a target may have.
pub const MAX_STANDBYS: u8 = 2;

/// A PostgreSQL target's options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgOptions {
    pub replication: Option<Replication>,
}

/// Streaming replication: `standbys` made with `pg_basebackup -R`, a replication slot each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    pub standbys: u8,
    pub mode: Mode,
}

impl Replication {
    /// The nodes' names, primary first: `primary`, `standby-1`, …
    pub fn nodes(&self) -> Vec<String> {
        std::iter::once("primary".to_string())
            .chain((1..=self.standbys).map(|i| format!("standby-{i}")))
            .collect()
    }
}

/// The keys as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    /// Streaming standbys of the primary; `restore.from = "failover"` promotes one.
    replication: Option<RawReplication>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawReplication {
    /// How many standbys (1 or 2).
    standbys: u8,
    /// `async` (default) or `sync`.
    mode: Option<Mode>,
}

/// The target keys PostgreSQL owns.
pub const TARGET_KEYS: &[&str] = &["replication"];

/// The JSON Schema of [`TARGET_KEYS`], from the types that parse them.
pub fn keys_schema(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<RawKeys>()
}

/// Checks a PostgreSQL target's own keys against its common spec.
pub fn options(keys: &KindKeys<'_>, spec: &TargetSpec) -> Result<Arc<dyn KindOptions>, KeyError> {
    let raw: RawKeys = keys.parse()?;
    let replication = match raw.replication {
        None => None,
        Some(r) => {
            if !(1..=MAX_STANDBYS).contains(&r.standbys) {
                return Err(KeyError::at(
                    "replication.standbys",
                    format!(
                        "a primary has 1 to {MAX_STANDBYS} standbys here, not {}",
                        r.standbys
                    ),
                ));
            }
            if spec.source.is_some() {
                return Err(KeyError::at(
                    "replication",
                    "a restore test restores into one scratch server: it has no replication",
                ));
            }
            Some(Replication {
                standbys: r.standbys,
                mode: r.mode.unwrap_or(Mode::Async),
            })
        }
    };
    if spec.restore == RestorePoint::Failover && replication.is_none() {
        return Err(KeyError::at(
            "restore.from",
            "restore.from = \"failover\" promotes a standby: give the target `replication = { standbys = 1 }`",
        ));
    }
    Ok(Arc::new(PgOptions { replication }))
}

/// Checks a fault on a PostgreSQL target: the table a fault names, or the node an outage hits
/// (`primary`, whichever node is primary when it fires, by default; `standby-1`, …). Returns the
/// table, or the standby (`None`: the primary).
pub fn aim(
    fault: FaultKind,
    key: Option<&'static str>,
    value: Option<&Spanned<String>>,
    spec: &TargetSpec,
) -> Result<Option<String>, KeyError> {
    match key {
        Some("node") => {
            let nodes = spec
                .options_of::<PgOptions>()
                .and_then(|o| o.replication)
                .map(|r| r.nodes());
            node_aim(fault, value, spec, nodes)
        }
        Some(key) => dataset_aim(value, super::CAPABILITIES.datasets, key, "table"),
        None => Ok(None),
    }
}
