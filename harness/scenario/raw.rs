//! The scenario file as written: serde types that mirror schema 1 key for key, except the keys
//! a kind owns (`targets/<kind>/schema.rs`), which are taken out before these read the rest.
//!
//! Every table denies unknown keys, and values that later validation must point at keep their
//! byte span (`Spanned`), so each error can name file, line, column and key. The same types give
//! `drillrig schema` its JSON Schema (`json_schema.rs`): a spanned value is described as the value.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

use crate::spec::{BackupMethod, CheckKind, FaultKind, RestorePoint, TargetKind};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawScenario {
    #[schemars(with = "i64")]
    pub schema: Spanned<i64>,
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub drill: RawDrill,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[schemars(with = "BTreeMap<String, RawTarget>")]
    pub targets: Spanned<BTreeMap<String, Spanned<RawTarget>>>,
    #[serde(default)]
    #[schemars(with = "Vec<RawFault>")]
    pub faults: Vec<Spanned<RawFault>>,
    #[schemars(with = "Option<RawPlatform>")]
    pub platform: Option<Spanned<RawPlatform>>,
    #[schemars(with = "Option<RawOffsite>")]
    pub offsite: Option<Spanned<RawOffsite>>,
}

/// `[offsite]`: where backups are shipped, encrypted.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOffsite {
    #[schemars(with = "Option<String>")]
    pub path: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub url: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub endpoint: Option<Spanned<String>>,
    pub region: Option<String>,
    #[schemars(with = "HumanDuration")]
    pub every: Spanned<HumanDuration>,
    #[schemars(with = "String")]
    pub recipient: Spanned<String>,
    #[schemars(with = "Option<String>")]
    pub identity: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDrill {
    #[schemars(with = "Option<HumanDuration>")]
    pub duration: Option<Spanned<HumanDuration>>,
    pub seed: Option<u64>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    #[schemars(with = "Option<HumanDuration>")]
    pub provision: Option<Spanned<HumanDuration>>,
    #[schemars(with = "Option<HumanDuration>")]
    pub seed: Option<Spanned<HumanDuration>>,
    #[schemars(with = "Option<HumanDuration>")]
    pub backup: Option<Spanned<HumanDuration>>,
    #[schemars(with = "Option<HumanDuration>")]
    pub fault: Option<Spanned<HumanDuration>>,
    #[schemars(with = "Option<HumanDuration>")]
    pub detect: Option<Spanned<HumanDuration>>,
    #[schemars(with = "Option<HumanDuration>")]
    pub archive: Option<Spanned<HumanDuration>>,
    #[schemars(with = "Option<HumanDuration>")]
    pub restore: Option<Spanned<HumanDuration>>,
    #[schemars(with = "Option<HumanDuration>")]
    pub check: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    #[schemars(with = "TargetKind")]
    pub kind: Spanned<TargetKind>,
    #[schemars(with = "Option<String>")]
    pub image: Option<Spanned<String>>,
    #[schemars(with = "Option<RawDataset>")]
    pub dataset: Option<Spanned<RawDataset>>,
    pub workload: Option<RawWorkload>,
    #[schemars(with = "Option<RawBackup>")]
    pub backup: Option<Spanned<RawBackup>>,
    #[schemars(with = "RawRestore")]
    pub restore: Spanned<RawRestore>,
    #[serde(default)]
    #[schemars(with = "Vec<CheckKind>")]
    pub checks: Vec<Spanned<CheckKind>>,
    #[schemars(with = "RawObjectives")]
    pub objectives: Spanned<RawObjectives>,
    #[schemars(with = "Option<RawSource>")]
    pub source: Option<Spanned<RawSource>>,
    #[serde(default)]
    #[schemars(with = "Vec<RawQuery>")]
    pub queries: Vec<Spanned<RawQuery>>,
    #[schemars(with = "Option<String>")]
    pub database: Option<Spanned<String>>,
}

/// A restore test's backup: `path` or `url`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    #[schemars(with = "Option<String>")]
    pub path: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub url: Option<Spanned<String>>,
    /// The WAL archive of a base backup: a path or an object-store URL.
    #[schemars(with = "Option<String>")]
    pub wal: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub pattern: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub endpoint: Option<Spanned<String>>,
    pub region: Option<String>,
    #[schemars(with = "Option<HumanDuration>")]
    pub max_age: Option<Spanned<HumanDuration>>,
    #[schemars(with = "Option<String>")]
    pub size_tolerance: Option<Spanned<String>>,
    /// An age identity file, for encrypted backups.
    #[schemars(with = "Option<String>")]
    pub identity: Option<Spanned<String>>,
    /// The stanza of a pgBackRest repository.
    #[schemars(with = "Option<String>")]
    pub stanza: Option<Spanned<String>>,
}

/// A user query: one of `sql`, `command`, `queue`, with `expect` and `drift`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawQuery {
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    #[schemars(with = "Option<String>")]
    pub sql: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub command: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub queue: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub expect: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub drift: Option<Spanned<String>>,
    /// The query answers the newest data's time: the RPO counts from it.
    #[schemars(with = "Option<bool>")]
    pub freshness: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDataset {
    #[schemars(with = "String")]
    pub fixture: Spanned<String>,
    #[schemars(with = "i64")]
    pub rows: Spanned<i64>,
    #[schemars(with = "Option<RawProjection>")]
    pub projection: Option<Spanned<RawProjection>>,
}

/// Restores at several dataset sizes, projected to the production size.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawProjection {
    #[schemars(with = "Vec<i64>")]
    pub sizes: Spanned<Vec<i64>>,
    #[schemars(with = "i64")]
    pub production_rows: Spanned<i64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWorkload {
    #[schemars(with = "i64")]
    pub rate: Spanned<i64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBackup {
    #[schemars(with = "BackupMethod")]
    pub method: Spanned<BackupMethod>,
    #[schemars(with = "HumanDuration")]
    pub every: Spanned<HumanDuration>,
    #[schemars(with = "Option<HumanDuration>")]
    pub archive_timeout: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRestore {
    #[schemars(with = "RestorePoint")]
    pub from: Spanned<RestorePoint>,
    #[schemars(with = "Option<Vec<String>>")]
    pub after: Option<Spanned<Vec<String>>>,
}

/// `[platform]`: objectives for every target together.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPlatform {
    #[schemars(with = "HumanDuration")]
    pub rto: Spanned<HumanDuration>,
    #[schemars(with = "HumanDuration")]
    pub rpo: Spanned<HumanDuration>,
    #[schemars(with = "Option<RawPlatformWorkload>")]
    pub workload: Option<Spanned<RawPlatformWorkload>>,
}

/// `[platform] workload`: which target holds the orders, the cache and the events.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPlatformWorkload {
    #[schemars(with = "u32")]
    pub rate: Spanned<u32>,
    #[schemars(with = "String")]
    pub order: Spanned<String>,
    #[schemars(with = "String")]
    pub cache: Spanned<String>,
    #[schemars(with = "String")]
    pub event: Spanned<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawObjectives {
    #[schemars(with = "HumanDuration")]
    pub rto: Spanned<HumanDuration>,
    #[schemars(with = "HumanDuration")]
    pub rpo: Spanned<HumanDuration>,
    #[schemars(with = "Option<i64>")]
    pub max_lost_writes: Option<Spanned<i64>>,
    #[schemars(with = "Option<HumanDuration>")]
    pub write_p99: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFault {
    /// Every kind but `site-loss` (which takes the whole site) names its target.
    #[schemars(with = "Option<String>")]
    pub target: Option<Spanned<String>>,
    #[schemars(with = "FaultKind")]
    pub kind: Spanned<FaultKind>,
    #[schemars(with = "HumanDuration")]
    pub at: Spanned<HumanDuration>,
    #[serde(rename = "for")]
    #[schemars(with = "Option<HumanDuration>")]
    pub for_: Option<Spanned<HumanDuration>>,
    #[schemars(with = "Option<String>")]
    pub artefact: Option<Spanned<String>>,
    #[schemars(with = "Option<HumanDuration>")]
    pub delay: Option<Spanned<HumanDuration>>,
    #[schemars(with = "Option<HumanDuration>")]
    pub jitter: Option<Spanned<HumanDuration>>,
    /// `latency`: bytes per second each way, per connection (`"64KiB/s"`).
    #[schemars(with = "Option<String>")]
    pub bandwidth: Option<Spanned<String>>,
    /// `latency`: each connection is reset once it has been open this long during the fault.
    #[schemars(with = "Option<HumanDuration>")]
    pub reset: Option<Spanned<HumanDuration>>,
    /// `network-partition`: `all` (default) or `peers` (the node's other nodes only).
    #[schemars(with = "Option<crate::spec::Isolate>")]
    pub isolate: Option<Spanned<crate::spec::Isolate>>,
}

/// A humantime duration string ("500ms", "5s", "2m").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"500ms\", \"5s\" or \"2m\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                humantime::parse_duration(s)
                    .map(HumanDuration)
                    .map_err(|e| E::custom(format!("invalid duration {s:?}: {e}")))
            }
        }
        deserializer.deserialize_str(V)
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration: numbers with units, such as \"500ms\", \"5s\", \"2m\" or \"1h 30m\".",
            "pattern": DURATION_PATTERN,
        })
    }
}

/// What `humantime` reads: one or more numbers each followed by a unit.
pub const DURATION_PATTERN: &str = r"^\s*([0-9]+\s*[a-zA-Zµ]+\s*)+$";

impl JsonSchema for RestorePoint {
    fn schema_name() -> Cow<'static, str> {
        "RestorePoint".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "What the restore recovers: `restart`, `in-place`, `failover` (a replicated target's standby takes over), `latest`, `before-fault`, or an RFC 3339 timestamp (point-in-time recovery).",
            "anyOf": [
                { "type": "string", "enum": ["restart", "in-place", "failover", "latest", "before-fault"] },
                { "type": "string", "format": "date-time" },
            ],
        })
    }
}

impl<'de> Deserialize<'de> for RestorePoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RestorePoint;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "`restart`, `in-place`, `failover`, `latest`, `before-fault` or an RFC 3339 timestamp",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RestorePoint, E> {
                match s {
                    "restart" => Ok(RestorePoint::Restart),
                    "in-place" => Ok(RestorePoint::InPlace),
                    "failover" => Ok(RestorePoint::Failover),
                    "latest" => Ok(RestorePoint::Latest),
                    "before-fault" => Ok(RestorePoint::BeforeFault),
                    _ => humantime::parse_rfc3339(s).map(RestorePoint::At).map_err(|_| {
                        E::custom(format!(
                            "invalid restore point {s:?}: expected `restart`, `in-place`, \
                             `failover`, `latest`, `before-fault` or an RFC 3339 timestamp such as \"2026-11-21T10:00:00Z\""
                        ))
                    }),
                }
            }
        }
        deserializer.deserialize_str(V)
    }
}
