//! The scenario keys RabbitMQ targets own (docs/scenario.md §12.3): `cluster`, three nodes with
//! one Erlang cookie; and the `node` an outage hits on such a target, beside the `queue` a
//! `delete-queue` deletes.

use std::sync::Arc;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Deserialize;
use toml::Spanned;

use crate::spec::{FaultKind, KindOptions, RestorePoint, TargetSpec};
use crate::targets::schema::{KeyError, KindKeys, dataset_aim, node_aim};

/// The nodes a cluster has here.
pub const NODES: u8 = 3;

/// A RabbitMQ target's options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqOptions {
    /// The cluster's node count (3), when the target is one.
    pub cluster: Option<u8>,
}

impl MqOptions {
    /// The nodes' names: `node-1`, `node-2`, `node-3`; a single node has none.
    pub fn nodes(&self) -> Option<Vec<String>> {
        self.cluster
            .map(|n| (1..=n).map(|i| format!("node-{i}")).collect())
    }
}

/// The keys as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    /// A cluster of nodes sharing one Erlang cookie; quorum queues replicate across them.
    cluster: Option<RawCluster>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    /// How many nodes: 3.
    nodes: u8,
}

/// The target keys RabbitMQ owns.
pub const TARGET_KEYS: &[&str] = &["cluster"];

/// The JSON Schema of [`TARGET_KEYS`], from the types that parse them.
pub fn keys_schema(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<RawKeys>()
}

/// Checks a RabbitMQ target's own keys against its common spec.
pub fn options(keys: &KindKeys<'_>, spec: &TargetSpec) -> Result<Arc<dyn KindOptions>, KeyError> {
    let raw: RawKeys = keys.parse()?;
    let cluster = match raw.cluster {
        None => None,
        Some(c) if c.nodes != NODES => {
            return Err(KeyError::at(
                "cluster.nodes",
                format!("a cluster has {NODES} nodes here, not {}", c.nodes),
            ));
        }
        Some(_) if spec.source.is_some() => {
            return Err(KeyError::at(
                "cluster",
                "a restore test restores into one scratch broker: it has no cluster",
            ));
        }
        Some(c) => Some(c.nodes),
    };
    if spec.restore == RestorePoint::Failover && cluster.is_none() {
        return Err(KeyError::at(
            "restore.from",
            "restore.from = \"failover\" waits for the cluster to serve again: give the target `cluster = { nodes = 3 }`",
        ));
    }
    Ok(Arc::new(MqOptions { cluster }))
}

/// Checks a fault on a RabbitMQ target: the queue `delete-queue` deletes, or the node an outage
/// hits (`primary`, the node the clients use when it fires, by default; `node-1`…`node-3`).
pub fn aim(
    fault: FaultKind,
    key: Option<&'static str>,
    value: Option<&Spanned<String>>,
    spec: &TargetSpec,
) -> Result<Option<String>, KeyError> {
    match key {
        Some("node") => {
            let nodes = spec.options_of::<MqOptions>().and_then(MqOptions::nodes);
            node_aim(fault, value, spec, nodes)
        }
        Some(key) => dataset_aim(value, super::CAPABILITIES.datasets, key, "queue"),
        None => Ok(None),
    }
}
