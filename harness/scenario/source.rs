//! Restore tests: a target with a `source` restores the user's own backup instead of running a
//! drill on a fixture. Checks what such a target may say (docs/restore-tests.md §1).

use std::time::Duration;

use toml::Spanned;

use super::raw::{RawQuery, RawSource, RawTarget};
use super::{Checked, Validator, list};
use crate::spec::*;
use crate::targets::capabilities;

/// `backup-age`'s bound when `source.max_age` is not given.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// `backup-size`'s bound when `source.size_tolerance` is not given.
pub const DEFAULT_SIZE_TOLERANCE: f64 = 0.10;

impl Validator<'_> {
    pub(super) fn sourced_target(
        &self,
        name: &str,
        raw: &RawTarget,
        source: &Spanned<RawSource>,
    ) -> Checked<TargetSpec> {
        let key = |k: &str| format!("targets.{name}.{k}");
        let kind = *raw.kind.get_ref();
        let caps = capabilities(kind);
        let drill_only = [
            ("dataset", raw.dataset.as_ref().map(|d| d.span())),
            ("workload", raw.workload.as_ref().map(|w| w.rate.span())),
            ("backup", raw.backup.as_ref().map(|b| b.span())),
        ];
        if let Some((k, Some(span))) = drill_only.into_iter().find(|(_, s)| s.is_some()) {
            return Err(self.at.error(
                span,
                key(k),
                format!(
                    "a restore test (`source`) restores your own backup: `{k}` belongs to drills"
                ),
            ));
        }

        let keys = self.kind_keys(name, kind)?;
        if let Some(k) = keys.names().first() {
            let full = key(k);
            return Err(self.at.error(
                super::span_of(&self.doc, &full).unwrap_or(source.span()),
                full,
                format!(
                    "a restore test (`source`) restores your own backup: `{k}` belongs to drills"
                ),
            ));
        }

        let s = source.get_ref();
        let location = match (&s.path, &s.url) {
            (Some(p), None) => {
                if let Some(e) = &s.endpoint {
                    return Err(self.at.error(
                        e.span(),
                        key("source.endpoint"),
                        "`endpoint` is for an object store's `url`, not a `path`",
                    ));
                }
                self.path(p.get_ref())
            }
            (None, Some(u)) => self.url(u, &key("source.url"), &s.endpoint, &s.region)?,
            _ => {
                return Err(self.at.error(
                    source.span(),
                    key("source"),
                    "a source takes exactly one of `path` (a file or folder) and `url` (s3://…)",
                ));
            }
        };
        let wal = match &s.wal {
            None => None,
            Some(w) if w.get_ref().contains("://") => {
                Some(self.url(w, &key("source.wal"), &s.endpoint, &s.region)?)
            }
            Some(w) => Some(self.path(w.get_ref())),
        };
        let pattern = match &s.pattern {
            Some(p) => {
                glob::Pattern::new(p.get_ref()).map_err(|e| {
                    self.at
                        .error(p.span(), key("source.pattern"), format!("not a glob: {e}"))
                })?;
                Some(p.get_ref().clone())
            }
            None => None,
        };
        let size_tolerance = match &s.size_tolerance {
            Some(t) => self.share(t, &key("source.size_tolerance"))?,
            None => DEFAULT_SIZE_TOLERANCE,
        };
        let max_age = s
            .max_age
            .as_ref()
            .map_or(DEFAULT_MAX_AGE, |a| a.get_ref().0);

        let stanza = match &s.stanza {
            Some(st) if !caps.source_keys.contains(&SourceKey::Stanza) => {
                return Err(self.at.error(
                    st.span(),
                    key("source.stanza"),
                    format!("`stanza` names a pgBackRest repository's stanza: {kind} targets take no stanza"),
                ));
            }
            Some(st) if st.get_ref().is_empty() || st.get_ref().contains(['/', ' ']) => {
                return Err(self.at.error(
                    st.span(),
                    key("source.stanza"),
                    format!("{:?} is not a stanza name", st.get_ref()),
                ));
            }
            st => st.as_ref().map(|st| st.get_ref().clone()),
        };

        let restore_raw = raw.restore.get_ref();
        let restore = *restore_raw.from.get_ref();
        match restore {
            RestorePoint::Latest => {}
            RestorePoint::At(_) if wal.is_some() || stanza.is_some() => {}
            RestorePoint::At(_) => {
                return Err(self.at.error(
                    restore_raw.from.span(),
                    key("restore.from"),
                    "a restore to a point in time replays WAL: give a base backup its archive (`wal`), or name a pgBackRest repository's `stanza`",
                ));
            }
            other => {
                return Err(self.at.error(
                    restore_raw.from.span(),
                    key("restore.from"),
                    format!(
                        "a restore test restores the newest backup in its source (\"latest\") or the newest before a time, not `{}`",
                        other.label()
                    ),
                ));
            }
        }

        let mut checks = Vec::new();
        for check in &raw.checks {
            let c = *check.get_ref();
            if !caps.source_checks.contains(&c) {
                return Err(self.at.error(
                    check.span(),
                    key("checks"),
                    format!(
                        "check `{c}` is not available in a restore test of a {kind} backup (available: {})",
                        list(caps.source_checks)
                    ),
                ));
            }
            if checks.contains(&c) {
                return Err(self.at.error(
                    check.span(),
                    key("checks"),
                    format!("check `{c}` is listed twice"),
                ));
            }
            checks.push(c);
        }

        let mut queries: Vec<QuerySpec> = Vec::new();
        for (i, q) in raw.queries.iter().enumerate() {
            let query = self.query(q, &key(&format!("queries[{i}]")), caps.query_key, kind)?;
            if query.freshness && queries.iter().any(|other| other.freshness) {
                return Err(self.at.error(
                    q.get_ref().name.span(),
                    key(&format!("queries[{i}].freshness")),
                    "only one query may give the RPO its point (`freshness = true`)",
                ));
            }
            if queries.iter().any(|other| other.name == query.name) {
                return Err(self.at.error(
                    q.get_ref().name.span(),
                    key(&format!("queries[{i}].name")),
                    format!("two queries are named {:?}", query.name),
                ));
            }
            queries.push(query);
        }
        let database = match &raw.database {
            Some(d) if !caps.source_keys.contains(&SourceKey::Database) => {
                return Err(self.at.error(
                    d.span(),
                    key("database"),
                    format!(
                        "`database` names the database a query runs in: {kind} targets take none"
                    ),
                ));
            }
            d => d.as_ref().map(|d| d.get_ref().clone()),
        };

        let o = raw.objectives.get_ref();
        let rto = o.rto.get_ref().0;
        if rto.is_zero() {
            return Err(self.at.error(
                o.rto.span(),
                key("objectives.rto"),
                "an RTO of 0s can never be met: every recovery takes time",
            ));
        }
        if let Some(p) = &o.write_p99 {
            return Err(self.at.error(
                p.span(),
                key("objectives.write_p99"),
                "a restore test has no workload, so no write latency to judge",
            ));
        }
        if let Some(m) = &o.max_lost_writes {
            return Err(self.at.error(
                m.span(),
                key("objectives.max_lost_writes"),
                "a restore test has no workload, so no writes to lose: its RPO is the backup's age",
            ));
        }

        let mut spec = TargetSpec {
            name: name.to_string(),
            kind,
            image: raw.image.as_ref().map(|i| i.get_ref().clone()),
            dataset: Dataset {
                fixture: String::new(),
                rows: 0,
                projection: None,
            },
            rate: 0,
            backup: None,
            restore,
            checks,
            objectives: Objectives {
                rto,
                rpo: o.rpo.get_ref().0,
                max_lost_writes: None,
                write_p99: None,
            },
            options: std::sync::Arc::new(()),
            volume_limit: None,
            proxied: false,
            restore_after: Vec::new(),
            source: Some(SourceSpec {
                location,
                wal,
                pattern,
                max_age,
                size_tolerance,
                identity: s.identity.as_ref().map(|i| match self.path(i.get_ref()) {
                    SourceLocation::Path(p) => p,
                    SourceLocation::Url { .. } => unreachable!("a path"),
                }),
                stanza,
            }),
            queries,
            database,
        };
        // A restore test gives its kind no keys: the kind's defaults.
        spec.options = (caps.options)(&keys, &spec)
            .map_err(|e| self.key_error(&format!("targets.{name}"), e))?;
        Ok(spec)
    }

    /// A path; a relative one is read from the scenario file's folder.
    pub(super) fn path(&self, p: &str) -> SourceLocation {
        let path = std::path::PathBuf::from(p);
        SourceLocation::Path(if path.is_relative() {
            self.at
                .path
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join(path)
        } else {
            path
        })
    }

    /// An object-store URL, with the source's endpoint and region.
    pub(super) fn url(
        &self,
        u: &Spanned<String>,
        key: &str,
        endpoint: &Option<Spanned<String>>,
        region: &Option<String>,
    ) -> Checked<SourceLocation> {
        let url = u.get_ref();
        let scheme = url.split_once("://").map(|(s, _)| s);
        if !matches!(scheme, Some("s3" | "s3a" | "gs" | "az" | "abfs" | "abfss")) {
            return Err(self.at.error(
                u.span(),
                key.to_string(),
                format!("{url:?}: expected an object-store URL such as s3://bucket/prefix/ (also gs://, az://)"),
            ));
        }
        if url.contains('@') || url.contains('?') {
            return Err(self.at.error(
                u.span(),
                key.to_string(),
                "put no credentials or options in the URL: keys come from the standard environment (AWS_ACCESS_KEY_ID, …), the endpoint from `endpoint`",
            ));
        }
        let endpoint = match endpoint {
            Some(e)
                if !e.get_ref().starts_with("http://") && !e.get_ref().starts_with("https://") =>
            {
                return Err(self.at.error(
                    e.span(),
                    key.replace(".url", ".endpoint")
                        .replace(".wal", ".endpoint")
                        .replace(".path", ".endpoint"),
                    format!("{:?}: expected an http:// or https:// URL", e.get_ref()),
                ));
            }
            e => e.as_ref().map(|e| e.get_ref().clone()),
        };
        Ok(SourceLocation::Url {
            url: url.clone(),
            endpoint,
            region: region.clone(),
        })
    }

    fn query(
        &self,
        spanned: &Spanned<RawQuery>,
        key: &str,
        query_key: QueryKey,
        kind: TargetKind,
    ) -> Checked<QuerySpec> {
        let q = spanned.get_ref();
        let name = q.name.get_ref().trim();
        if name.is_empty() {
            return Err(self.at.error(
                q.name.span(),
                format!("{key}.name"),
                "a query needs a name",
            ));
        }
        let asks = [
            (QueryKey::Sql, &q.sql),
            (QueryKey::Command, &q.command),
            (QueryKey::Queue, &q.queue),
        ];
        let given: Vec<_> = asks.iter().filter(|(_, v)| v.is_some()).collect();
        let (k, value) = match given.as_slice() {
            [(k, Some(v))] => (*k, v),
            _ => {
                return Err(self.at.error(
                    spanned.span(),
                    key.to_string(),
                    format!("a {kind} query asks with `{query_key}` (and only that)"),
                ));
            }
        };
        if k != query_key {
            return Err(self.at.error(
                value.span(),
                format!("{key}.{k}"),
                format!("a {kind} query asks with `{query_key}`, not `{k}`"),
            ));
        }
        let text = value.get_ref().trim();
        if text.is_empty() {
            return Err(self
                .at
                .error(value.span(), format!("{key}.{k}"), "the query is empty"));
        }
        let ask = match k {
            QueryKey::Sql => Ask::Sql(text.to_string()),
            QueryKey::Command => Ask::Command(text.split_whitespace().map(String::from).collect()),
            QueryKey::Queue => Ask::Queue(text.to_string()),
        };
        let expect = match &q.expect {
            Some(e) => Some(
                Expect::parse(e.get_ref())
                    .map_err(|m| self.at.error(e.span(), format!("{key}.expect"), m))?,
            ),
            None => None,
        };
        let drift = match &q.drift {
            Some(d) => Some(self.share(d, &format!("{key}.drift"))?),
            None => None,
        };
        let freshness = q.freshness.as_ref().is_some_and(|f| *f.get_ref());
        if let Some(f) = q.freshness.as_ref().filter(|f| *f.get_ref())
            && k == QueryKey::Queue
        {
            return Err(self.at.error(
                f.span(),
                format!("{key}.freshness"),
                "a queue's depth is no time: `freshness` needs a query that answers one",
            ));
        }
        if expect.is_none() && drift.is_none() && !freshness {
            return Err(self.at.error(
                spanned.span(),
                key.to_string(),
                "a query proves something only with `expect`, `drift`, `freshness` or a mix",
            ));
        }
        Ok(QuerySpec {
            name: name.to_string(),
            ask,
            expect,
            drift,
            freshness,
        })
    }

    /// A share written as a percentage (`"10%"`).
    fn share(&self, value: &Spanned<String>, key: &str) -> Checked<f64> {
        let text = value.get_ref().trim();
        text.strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
            .filter(|n| n.is_finite() && *n >= 0.0)
            .map(|n| n / 100.0)
            .ok_or_else(|| {
                self.at.error(
                    value.span(),
                    key.to_string(),
                    format!("{text:?}: expected a percentage such as \"1%\""),
                )
            })
    }
}
