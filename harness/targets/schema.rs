//! The part of the scenario schema a kind owns (docs/scenario.md §3). `scenario/` parses the
//! common keys; it takes the keys a kind declares ([`Capabilities::target_keys`],
//! [`Capabilities::fault_keys`]) out of the file before that, and hands them to the kind, which
//! parses and checks them with its own types and returns its options.
//!
//! [`Capabilities::target_keys`]: super::Capabilities::target_keys
//! [`Capabilities::fault_keys`]: super::Capabilities::fault_keys

use std::ops::Range;
use std::sync::Arc;

use schemars::{Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::spec::{FaultKind, KindOptions, TargetSpec};

/// A problem with a kind's keys: the key (dotted, from the target's or the fault's table), and
/// its place in the file when the kind knows it (else the scenario finds the key's place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub key: String,
    pub span: Option<Range<usize>>,
    pub message: String,
}

impl KeyError {
    /// An error about `key`, whose place the scenario looks up.
    pub fn at(key: impl Into<String>, message: impl Into<String>) -> KeyError {
        KeyError {
            key: key.into(),
            span: None,
            message: message.into(),
        }
    }
}

/// A target's keys that its kind owns, shaped as in the target's table (`persistence`,
/// `restore.repair`) and holding only them.
#[derive(Clone)]
pub struct KindKeys<'i> {
    table: Spanned<DeTable<'i>>,
    names: Vec<String>,
}

impl<'i> KindKeys<'i> {
    /// `table` holds the keys named (dotted) in `names`.
    pub fn new(table: Spanned<DeTable<'i>>, names: Vec<String>) -> KindKeys<'i> {
        KindKeys { table, names }
    }

    /// The keys' names, dotted (`restore.repair`), as the file gives them.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The keys as the kind's own serde type (which denies keys it does not know).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, KeyError> {
        let de = ValueDeserializer::from(Spanned::new(
            self.table.span(),
            DeValue::Table(self.table.get_ref().clone()),
        ));
        serde_path_to_error::deserialize(de).map_err(|e| KeyError {
            key: e
                .path()
                .iter()
                .filter_map(|s| match s {
                    serde_path_to_error::Segment::Map { key }
                        if !key.starts_with("$__serde_spanned") =>
                    {
                        Some(key.clone())
                    }
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("."),
            span: e.inner().span(),
            message: e.inner().message().trim().to_string(),
        })
    }
}

/// Checks a target's kind-owned keys against its common spec; returns the kind's options.
pub type TargetOptionsFn = fn(&KindKeys<'_>, &TargetSpec) -> Result<Arc<dyn KindOptions>, KeyError>;

/// Checks a fault on a target of the kind: the fault, the kind's key it takes (`relation`,
/// `file`, `queue`; none for most faults) and that key's value when the file gives one. Returns
/// what the fault aims at, in the kind's terms.
pub type FaultAimFn = fn(
    FaultKind,
    Option<&'static str>,
    Option<&Spanned<String>>,
    &TargetSpec,
) -> Result<Option<String>, KeyError>;

/// The JSON Schema of a kind's target keys, an object shaped as in the target's table (Redis:
/// `persistence`, and `restore` holding `repair`); the generator inlines every subschema.
pub type TargetKeysSchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// A fault's aim among the fixture's `datasets` (the first by default), named by `key`
/// (`relation`: a table, `queue`: a queue), for faults that take it.
pub fn dataset_aim(
    value: Option<&Spanned<String>>,
    datasets: &[&str],
    key: &str,
    noun: &str,
) -> Result<Option<String>, KeyError> {
    let Some(value) = value else {
        return Ok(Some(datasets[0].to_string()));
    };
    let name = value.get_ref();
    if datasets.contains(&name.as_str()) {
        return Ok(Some(name.clone()));
    }
    Err(KeyError {
        key: key.to_string(),
        span: Some(value.span()),
        message: format!(
            "the fixture has no {noun} {name:?} ({noun}s: {})",
            datasets.join(", ")
        ),
    })
}

/// The node an outage of a replicated target hits (`node`): `None` for the primary, whichever
/// node is primary when the fault fires (the default, and `"primary"`), else one of `nodes`
/// (`None`: a single node, which has only its primary).
pub fn node_aim(
    fault: FaultKind,
    value: Option<&Spanned<String>>,
    spec: &TargetSpec,
    nodes: Option<Vec<String>>,
) -> Result<Option<String>, KeyError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let node = value.get_ref();
    if node == "primary" {
        return Ok(None);
    }
    let nodes = nodes.unwrap_or_else(|| vec!["primary".to_string()]);
    if nodes.contains(node) {
        return Ok(Some(node.clone()));
    }
    Err(KeyError {
        key: "node".into(),
        span: Some(value.span()),
        message: format!(
            "fault `{fault}`: target {:?} has no node {node:?} (its nodes: {})",
            spec.name,
            nodes.join(", ")
        ),
    })
}
