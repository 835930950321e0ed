//! The scenario file as written: serde types that mirror schema 1 key for key, except the keys
//! a kind owns (`targets/<kind>/schema.rs`), which are taken out before these read the rest.
//!
//! Every table denies unknown keys, and values that later validation must point at keep their
//! byte span (`Spanned`), so each error can name file, line, column and key.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

use crate::spec::{BackupMethod, CheckKind, FaultKind, RestorePoint, TargetKind};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScenario {
    pub schema: Spanned<i64>,
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub drill: RawDrill,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    pub targets: Spanned<BTreeMap<String, Spanned<RawTarget>>>,
    #[serde(default)]
    pub faults: Vec<Spanned<RawFault>>,
    pub platform: Option<Spanned<RawPlatform>>,
    pub offsite: Option<Spanned<RawOffsite>>,
}

/// `[offsite]`: where backups are shipped, encrypted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOffsite {
    pub path: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    pub endpoint: Option<Spanned<String>>,
    pub region: Option<String>,
    pub every: Spanned<HumanDuration>,
    pub recipient: Spanned<String>,
    pub identity: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrill {
    pub duration: Option<Spanned<HumanDuration>>,
    pub seed: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub provision: Option<Spanned<HumanDuration>>,
    pub seed: Option<Spanned<HumanDuration>>,
    pub backup: Option<Spanned<HumanDuration>>,
    pub fault: Option<Spanned<HumanDuration>>,
    pub detect: Option<Spanned<HumanDuration>>,
    pub archive: Option<Spanned<HumanDuration>>,
    pub restore: Option<Spanned<HumanDuration>>,
    pub check: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub kind: Spanned<TargetKind>,
    pub image: Option<Spanned<String>>,
    pub dataset: Option<Spanned<RawDataset>>,
    pub workload: Option<RawWorkload>,
    pub backup: Option<Spanned<RawBackup>>,
    pub restore: Spanned<RawRestore>,
    #[serde(default)]
    pub checks: Vec<Spanned<CheckKind>>,
    pub objectives: Spanned<RawObjectives>,
    pub source: Option<Spanned<RawSource>>,
    #[serde(default)]
    pub queries: Vec<Spanned<RawQuery>>,
    pub database: Option<Spanned<String>>,
}

/// A restore test's backup: `path` or `url`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub path: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    /// The WAL archive of a base backup: a path or an object-store URL.
    pub wal: Option<Spanned<String>>,
    pub pattern: Option<Spanned<String>>,
    pub endpoint: Option<Spanned<String>>,
    pub region: Option<String>,
    pub max_age: Option<Spanned<HumanDuration>>,
    pub size_tolerance: Option<Spanned<String>>,
    /// An age identity file, for encrypted backups.
    pub identity: Option<Spanned<String>>,
    /// The stanza of a pgBackRest repository.
    pub stanza: Option<Spanned<String>>,
}

/// A user query: one of `sql`, `command`, `queue`, with `expect` and `drift`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuery {
    pub name: Spanned<String>,
    pub sql: Option<Spanned<String>>,
    pub command: Option<Spanned<String>>,
    pub queue: Option<Spanned<String>>,
    pub expect: Option<Spanned<String>>,
    pub drift: Option<Spanned<String>>,
    /// The query answers the newest data's time: the RPO counts from it.
    pub freshness: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDataset {
    pub fixture: Spanned<String>,
    pub rows: Spanned<i64>,
    pub projection: Option<Spanned<RawProjection>>,
}

/// Restores at several dataset sizes, projected to the production size.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProjection {
    pub sizes: Spanned<Vec<i64>>,
    pub production_rows: Spanned<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkload {
    pub rate: Spanned<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackup {
    pub method: Spanned<BackupMethod>,
    pub every: Spanned<HumanDuration>,
    pub archive_timeout: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRestore {
    pub from: Spanned<RestorePoint>,
    pub after: Option<Spanned<Vec<String>>>,
}

/// `[platform]`: objectives for every target together.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlatform {
    pub rto: Spanned<HumanDuration>,
    pub rpo: Spanned<HumanDuration>,
    pub workload: Option<Spanned<RawPlatformWorkload>>,
}

/// `[platform] workload`: which target holds the orders, the cache and the events.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlatformWorkload {
    pub rate: Spanned<u32>,
    pub order: Spanned<String>,
    pub cache: Spanned<String>,
    pub event: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawObjectives {
    pub rto: Spanned<HumanDuration>,
    pub rpo: Spanned<HumanDuration>,
    pub max_lost_writes: Option<Spanned<i64>>,
    pub write_p99: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFault {
    /// Every kind but `site-loss` (which takes the whole site) names its target.
    pub target: Option<Spanned<String>>,
    pub kind: Spanned<FaultKind>,
    pub at: Spanned<HumanDuration>,
    #[serde(rename = "for")]
    pub for_: Option<Spanned<HumanDuration>>,
    pub artefact: Option<Spanned<String>>,
    pub delay: Option<Spanned<HumanDuration>>,
    pub jitter: Option<Spanned<HumanDuration>>,
    /// `latency`: bytes per second each way, per connection (`"64KiB/s"`).
    pub bandwidth: Option<Spanned<String>>,
    /// `latency`: each connection is reset once it has been open this long during the fault.
    pub reset: Option<Spanned<HumanDuration>>,
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

impl<'de> Deserialize<'de> for RestorePoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RestorePoint;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "`restart`, `in-place`, `latest`, `before-fault` or an RFC 3339 timestamp",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RestorePoint, E> {
                match s {
                    "restart" => Ok(RestorePoint::Restart),
                    "in-place" => Ok(RestorePoint::InPlace),
                    "latest" => Ok(RestorePoint::Latest),
                    "before-fault" => Ok(RestorePoint::BeforeFault),
                    _ => humantime::parse_rfc3339(s).map(RestorePoint::At).map_err(|_| {
                        E::custom(format!(
                            "invalid restore point {s:?}: expected `restart`, `in-place`, \
                             `latest`, `before-fault` or an RFC 3339 timestamp such as \"2026-11-21T10:00:00Z\""
                        ))
                    }),
                }
            }
        }
        deserializer.deserialize_str(V)
    }
}
