//! Restore tests: a target with a `source` restores the user's own backup instead of running a
//! drill on a fixture. Checks what such a target may say (docs/restore-tests.md §1).

use std::time::Duration;

use toml::Spanned;

use super::raw::{RawObjectives, RawQuery, RawRestore, RawSource, RawTarget};
use super::{Checked, Validator, list};
use crate::spec::*;
use crate::targets::schema::KindKeys;
use crate::targets::{Capabilities, capabilities};

/// `backup-age`'s bound when `source.max_age` is not given.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// `backup-size`'s bound when `source.size_tolerance` is not given.
pub const DEFAULT_SIZE_TOLERANCE: f64 = 0.10;

impl<'a> Validator<'a> {
    pub(super) fn sourced_target(
        &self,
        name: &str,
        raw: &RawTarget,
        source: &Spanned<RawSource>,
    ) -> Checked<TargetSpec> {
        let key = |k: &str| format!("targets.{name}.{k}");
        let kind = *raw.kind.get_ref();
        let caps = capabilities(kind);
        let keys = self.no_drill_keys(name, raw, source, &key)?;
        let source = self.source(source, kind, caps, &key)?;
        let restore = self.source_restore(raw.restore.get_ref(), &source, &key)?;
        let checks = self.source_checks(&raw.checks, kind, caps, &key)?;
        let queries = self.queries(&raw.queries, kind, caps, &key)?;
        let database = self.database(raw.database.as_ref(), kind, caps, &key)?;
        let objectives = self.source_objectives(raw.objectives.get_ref(), &key)?;

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
            objectives,
            options: std::sync::Arc::new(()),
            volume_limit: None,
            proxied: false,
            restore_after: Vec::new(),
            source: Some(source),
            queries,
            database,
        };
        // A restore test gives its kind no keys: the kind's defaults.
        spec.options = (caps.options)(&keys, &spec)
            .map_err(|e| self.key_error(&format!("targets.{name}"), e))?;
        Ok(spec)
    }

    /// A restore test takes none of a drill's keys: no `dataset`, `workload`, `backup`, and
    /// none of the keys its kind owns. Returns those (empty) keys.
    fn no_drill_keys(
        &self,
        name: &str,
        raw: &RawTarget,
        source: &Spanned<RawSource>,
        key: &dyn Fn(&str) -> String,
    ) -> Checked<KindKeys<'a>> {
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

        let keys = self.kind_keys(name, *raw.kind.get_ref())?;
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
        Ok(keys)
    }

    /// Where the backup lives and how it is judged: its location, WAL archive, pattern,
    /// size tolerance, maximum age, identity and stanza.
    fn source(
        &self,
        source: &Spanned<RawSource>,
        kind: TargetKind,
        caps: &Capabilities,
        key: &dyn Fn(&str) -> String,
    ) -> Checked<SourceSpec> {
        let s = source.get_ref();
        let location = self.source_location(source, key)?;
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
        let stanza = self.stanza(s.stanza.as_ref(), kind, caps, key)?;
        Ok(SourceSpec {
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
        })
    }

    /// The backup's place: exactly one of `path` and `url`; `endpoint` only with a `url`.
    fn source_location(
        &self,
        source: &Spanned<RawSource>,
        key: &dyn Fn(&str) -> String,
    ) -> Checked<SourceLocation> {
        let s = source.get_ref();
        match (&s.path, &s.url) {
            (Some(p), None) => {
                if let Some(e) = &s.endpoint {
                    return Err(self.at.error(
                        e.span(),
                        key("source.endpoint"),
                        "`endpoint` is for an object store's `url`, not a `path`",
                    ));
                }
                Ok(self.path(p.get_ref()))
            }
            (None, Some(u)) => self.url(u, &key("source.url"), &s.endpoint, &s.region),
            _ => Err(self.at.error(
                source.span(),
                key("source"),
                "a source takes exactly one of `path` (a file or folder) and `url` (s3://…)",
            )),
        }
    }

    /// A pgBackRest repository's stanza, for kinds that take one.
    fn stanza(
        &self,
        stanza: Option<&Spanned<String>>,
        kind: TargetKind,
        caps: &Capabilities,
        key: &dyn Fn(&str) -> String,
    ) -> Checked<Option<String>> {
        match stanza {
            Some(st) if !caps.source_keys.contains(&SourceKey::Stanza) => Err(self.at.error(
                st.span(),
                key("source.stanza"),
                format!(
                    "`stanza` names a pgBackRest repository's stanza: {kind} targets take no stanza"
                ),
            )),
            Some(st) if st.get_ref().is_empty() || st.get_ref().contains(['/', ' ']) => {
                Err(self.at.error(
                    st.span(),
                    key("source.stanza"),
                    format!("{:?} is not a stanza name", st.get_ref()),
                ))
            }
            st => Ok(st.map(|st| st.get_ref().clone())),
        }
    }

    /// A restore test restores the newest backup, or the newest before a time when it has
    /// WAL to replay (`wal` or a `stanza`).
    fn source_restore(
        &self,
        restore_raw: &RawRestore,
        source: &SourceSpec,
        key: &dyn Fn(&str) -> String,
    ) -> Checked<RestorePoint> {
        let restore = *restore_raw.from.get_ref();
        match restore {
            RestorePoint::Latest => {}
            RestorePoint::At(_) if source.wal.is_some() || source.stanza.is_some() => {}
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
        Ok(restore)
    }

    /// A restore test's checks: each one its kind has for restore tests, listed once.
    fn source_checks(
        &self,
        raw: &[Spanned<CheckKind>],
        kind: TargetKind,
        caps: &Capabilities,
        key: &dyn Fn(&str) -> String,
    ) -> Checked<Vec<CheckKind>> {
        let mut checks = Vec::new();
        for check in raw {
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
        Ok(checks)
    }

    /// The user's queries: each named once, at most one giving the RPO its point.
    fn queries(
        &self,
        raw: &[Spanned<RawQuery>],
        kind: TargetKind,
        caps: &Capabilities,
        key: &dyn Fn(&str) -> String,
    ) -> Checked<Vec<QuerySpec>> {
        let mut queries: Vec<QuerySpec> = Vec::new();
        for (i, q) in raw.iter().enumerate() {
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
        Ok(queries)
    }

    /// The database the queries run in, for kinds that have databases.
    fn database(
        &self,
        raw: Option<&Spanned<String>>,
        kind: TargetKind,
        caps: &Capabilities,
        key: &dyn Fn(&str) -> String,
    ) -> Checked<Option<String>> {
        match raw {
            Some(d) if !caps.source_keys.contains(&SourceKey::Database) => Err(self.at.error(
                d.span(),
                key("database"),
                format!("`database` names the database a query runs in: {kind} targets take none"),
            )),
            d => Ok(d.map(|d| d.get_ref().clone())),
        }
    }

    /// A restore test's objectives: an RTO above zero and an RPO. With no workload there is
    /// no write latency and no lost writes to judge.
    fn source_objectives(
        &self,
        o: &RawObjectives,
        key: &dyn Fn(&str) -> String,
    ) -> Checked<Objectives> {
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
        Ok(Objectives {
            rto,
            rpo: o.rpo.get_ref().0,
            max_lost_writes: None,
            write_p99: None,
        })
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
