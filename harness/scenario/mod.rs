//! Scenario files (docs/scenario.md, schema 1): parsed into [`raw`] serde types, then checked and turned
//! into the domain types the drill runs. Every error names file, line, column and key.

pub mod json_schema;
pub mod raw;
mod source;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

#[allow(clippy::wildcard_imports)]
use crate::spec::*;
use raw::{HumanDuration, RawScenario, RawTarget};

use crate::targets::schema::{KeyError, KindKeys};
use crate::targets::{Capabilities, capabilities};

/// The schema version this drillrig reads.
pub const SCHEMA: i64 = 1;

/// Workload duration for targets without a fault when `[drill] duration` is not set.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// How long a target's workload keeps running after the last fault when `[drill] duration` is
/// not set (only targets without faults use it).
const DEFAULT_TAIL: Duration = Duration::from_secs(5);

/// A scenario file that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ScenarioError {
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub position: Option<(usize, usize)>,
    /// Dotted key path (`targets.pg.objectives.rto`), when the problem has one.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Reads and checks a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        file: path.to_path_buf(),
        position: None,
        key: None,
        message: format!("cannot read the file: {e}"),
    })?;
    parse(path, &text)
}

/// Checks scenario text; `path` only names the file in errors and the scenario.
pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    let at = Locator { path, text };
    let mut doc = DeTable::parse(text).map_err(|e| at.toml_error(None, &e))?;
    let whole = doc.clone();
    let owned = KindOwned::take(&mut doc);
    let raw: RawScenario = serde_path_to_error::deserialize(toml::Deserializer::from(doc))
        .map_err(|e| at.toml_error(key_path(e.path()), e.inner()))?;
    Validator {
        at,
        doc: whole,
        owned,
    }
    .scenario(raw)
}

/// The keys kinds own (`targets/<kind>/schema.rs`), taken out of the document before the
/// common schema reads it, to be handed to each target's kind.
struct KindOwned<'i> {
    /// Per target: its kind-owned keys, shaped as in its table.
    targets: BTreeMap<String, KindKeys<'i>>,
    /// Per fault, in file order: the kind-owned keys it holds (`relation`, `file`, `queue`).
    faults: Vec<Vec<(String, Spanned<DeValue<'i>>)>>,
}

impl<'i> KindOwned<'i> {
    /// Takes out every key any kind declares, wherever it stands; validation then tells a key
    /// the target's kind owns from one it does not take.
    fn take(doc: &mut Spanned<DeTable<'i>>) -> KindOwned<'i> {
        let kinds = || TargetKind::ALL.iter().map(|k| capabilities(*k));
        let mut target_keys: Vec<&str> = kinds().flat_map(|c| c.target_keys).copied().collect();
        let mut fault_keys: Vec<&str> = kinds()
            .flat_map(|c| c.fault_keys)
            .map(|(_, k)| *k)
            .collect();
        target_keys.sort_unstable();
        target_keys.dedup();
        fault_keys.sort_unstable();
        fault_keys.dedup();

        let mut owned = KindOwned {
            targets: BTreeMap::new(),
            faults: Vec::new(),
        };
        if let Some(DeValue::Table(targets)) =
            doc.get_mut().get_mut("targets").map(Spanned::get_mut)
        {
            for (name, target) in targets.iter_mut() {
                let span = target.span();
                let DeValue::Table(table) = target.get_mut() else {
                    continue;
                };
                let mut keys = DeTable::new();
                let names = target_keys
                    .iter()
                    .filter(|dotted| take_key(table, &mut keys, dotted))
                    .map(|dotted| dotted.to_string())
                    .collect();
                owned.targets.insert(
                    name.get_ref().to_string(),
                    KindKeys::new(Spanned::new(span, keys), names),
                );
            }
        }
        if let Some(DeValue::Array(faults)) = doc.get_mut().get_mut("faults").map(Spanned::get_mut)
        {
            for fault in faults.iter_mut() {
                let mut keys = Vec::new();
                if let DeValue::Table(table) = fault.get_mut() {
                    for key in &fault_keys {
                        if let Some(value) = table.remove(*key) {
                            keys.push((key.to_string(), value));
                        }
                    }
                }
                owned.faults.push(keys);
            }
        }
        owned
    }
}

/// Moves `dotted` (`persistence`, `restore.repair`) from `from` into `to`, keeping its place in
/// the file and the shape of the tables around it; whether the file had it.
fn take_key<'i>(from: &mut DeTable<'i>, to: &mut DeTable<'i>, dotted: &str) -> bool {
    match dotted.split_once('.') {
        None => match from.remove_entry(dotted) {
            Some((key, value)) => {
                to.insert(key, value);
                true
            }
            None => false,
        },
        Some((outer, rest)) => {
            let Some((key, inner)) = from.get_key_value(outer) else {
                return false;
            };
            let (key, span) = (key.clone(), inner.span());
            let Some(DeValue::Table(inner)) = from.get_mut(outer).map(Spanned::get_mut) else {
                return false;
            };
            let mut taken = DeTable::new();
            if !take_key(inner, &mut taken, rest) {
                return false;
            }
            match to.get_mut(outer).map(Spanned::get_mut) {
                Some(DeValue::Table(existing)) => existing.extend(taken),
                _ => {
                    to.insert(key, Spanned::new(span, DeValue::Table(taken)));
                }
            }
            true
        }
    }
}

/// Where a dotted key (`targets.pg.backup.method`, `faults[2].kind`) stands in the document.
fn span_of(doc: &Spanned<DeTable<'_>>, dotted: &str) -> Option<Range<usize>> {
    let mut span = doc.span();
    let mut value: Option<&DeValue<'_>> = None;
    let mut table = doc.get_ref();
    for segment in dotted.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        if let Some(DeValue::Table(t)) = value {
            table = t;
        } else if value.is_some() {
            return None;
        }
        let mut found = table.get(name)?;
        if let Some(i) = index {
            let DeValue::Array(items) = found.get_ref() else {
                return None;
            };
            found = items.get(i)?;
        }
        span = found.span();
        value = Some(found.get_ref());
    }
    Some(span)
}

/// The dotted key path (`targets.pg.objectives.rto`, `faults[0].kind`) of a serde error, without
/// the wrapper keys of `Spanned` values.
fn key_path(path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Map { key: k } if k.starts_with("$__serde_spanned") => {}
            Segment::Map { key: k } | Segment::Enum { variant: k } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(k);
            }
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Unknown => {}
        }
    }
    (!key.is_empty()).then_some(key)
}

/// The key a syntax error sits at, read from the text: the enclosing table header (arrays of
/// tables counted, `faults[2]`) and the key of the line, e.g. `targets.pg.objectives`. At the top
/// of the file, before any key: `(document)`.
fn key_near(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let mut table = String::new();
    let mut arrays: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for line in text[..line_start].lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let name = name.trim().to_string();
            let n = arrays
                .entry(name.clone())
                .and_modify(|n| *n += 1)
                .or_insert(0);
            table = format!("{name}[{n}]");
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = name.trim().to_string();
        }
    }
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let own = if line.starts_with('[') {
        // The error is in a header: name the table it opens (or the one before it).
        let opened = line
            .trim_start_matches('[')
            .split(']')
            .next()
            .map(str::trim)
            .filter(|n| !n.is_empty());
        if let Some(name) = opened {
            return name.to_string();
        }
        None
    } else {
        line.split('=')
            .next()
            .map(str::trim)
            .filter(|k| !k.is_empty() && !k.starts_with('#') && line.contains('='))
    };
    match (table.is_empty(), own) {
        (true, Some(k)) => k.to_string(),
        (false, Some(k)) => format!("{table}.{k}"),
        (false, None) => table,
        (true, None) => "(document)".to_string(),
    }
}

/// Turns byte spans into `file:line:column` errors.
struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    fn error(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ScenarioError {
        ScenarioError {
            file: self.path.to_path_buf(),
            position: Some(self.position(span.start)),
            key: Some(key.into()),
            message: message.into(),
        }
    }

    fn toml_error(&self, key: Option<String>, e: &toml::de::Error) -> ScenarioError {
        let offset = e.span().map_or(self.text.len(), |s| s.start);
        ScenarioError {
            file: self.path.to_path_buf(),
            position: Some(self.position(offset)),
            key: key
                .or_else(|| {
                    e.message()
                        .strip_prefix("missing field `")
                        .and_then(|m| m.split('`').next())
                        .map(String::from)
                })
                .or_else(|| Some(key_near(self.text, offset))),
            message: e
                .message()
                .trim()
                .replace("expected i64", "expected an integer"),
        }
    }
}

struct Validator<'a> {
    at: Locator<'a>,
    /// The whole document, for the places of keys a kind names in its errors.
    doc: Spanned<DeTable<'a>>,
    owned: KindOwned<'a>,
}

type Checked<T> = Result<T, ScenarioError>;

impl<'a> Validator<'a> {
    /// A kind's error about a key under `table` (`targets.pg`, `faults[0]`), placed where the
    /// kind says or, failing that, where the key stands in the file.
    fn key_error(&self, table: &str, e: KeyError) -> ScenarioError {
        let key = format!("{table}.{}", e.key);
        let span = e
            .span
            .or_else(|| span_of(&self.doc, &key))
            .or_else(|| span_of(&self.doc, table))
            .unwrap_or(0..0);
        self.at.error(span, key, e.message)
    }

    /// Target `name`'s keys that kinds own, after checking its kind owns each of them.
    fn kind_keys(&self, name: &str, kind: TargetKind) -> Checked<KindKeys<'a>> {
        let keys = self
            .owned
            .targets
            .get(name)
            .cloned()
            .unwrap_or_else(|| KindKeys::new(Spanned::new(0..0, DeTable::new()), Vec::new()));
        let caps = capabilities(kind);
        for key in keys.names() {
            if caps.target_keys.contains(&key.as_str()) {
                continue;
            }
            let owners: Vec<&str> = TargetKind::ALL
                .iter()
                .filter(|k| capabilities(**k).target_keys.contains(&key.as_str()))
                .map(|k| k.as_str())
                .collect();
            let full = format!("targets.{name}.{key}");
            return Err(self.at.error(
                span_of(&self.doc, &full).unwrap_or(0..0),
                full,
                format!(
                    "`{key}` is a key of {} targets; {kind} targets do not take it",
                    owners.join(" and ")
                ),
            ));
        }
        Ok(keys)
    }

    fn scenario(self, raw: RawScenario) -> Checked<Scenario> {
        self.header(&raw)?;
        let mut targets = self.targets(&raw)?;
        let offsite = match &raw.offsite {
            Some(o) => Some(self.offsite(o)?),
            None => None,
        };
        let faults = self.faults(&raw, &targets, offsite.is_some())?;
        let duration = self.duration(&raw, &faults)?;

        for target in &targets {
            self.restore_needs(target, &faults, &raw)?;
        }
        self.restore_order(&raw, &mut targets)?;
        let platform = self.platform(&raw, &mut targets)?;
        self.fit_to_faults(&faults, &mut targets)?;

        Ok(Scenario {
            path: self.at.path.to_path_buf(),
            name: raw.name.get_ref().clone(),
            description: raw.description,
            duration,
            seed: raw.drill.seed,
            timeouts: self.timeouts(&raw.timeouts)?,
            targets,
            faults,
            platform,
            offsite,
        })
    }

    /// The schema version this drillrig reads, a name fit for report folders, and at least
    /// one target.
    fn header(&self, raw: &RawScenario) -> Checked<()> {
        if *raw.schema.get_ref() != SCHEMA {
            return Err(self.at.error(
                raw.schema.span(),
                "schema",
                format!(
                    "unsupported schema version {} (this drillrig reads schema {SCHEMA})",
                    raw.schema.get_ref()
                ),
            ));
        }
        let name = raw.name.get_ref();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(self.at.error(
                raw.name.span(),
                "name",
                format!("invalid name {name:?}: use lowercase letters, digits and '-' (it names report folders)"),
            ));
        }
        if raw.targets.get_ref().is_empty() {
            return Err(self.at.error(
                raw.targets.span(),
                "targets",
                "a scenario needs at least one target",
            ));
        }
        Ok(())
    }

    /// Every target, checked; at most one of them carries a projection.
    fn targets(&self, raw: &RawScenario) -> Checked<Vec<TargetSpec>> {
        let mut targets = Vec::new();
        for (name, target) in raw.targets.get_ref() {
            targets.push(self.target(name, target)?);
        }
        if let Some((name, second)) = raw
            .targets
            .get_ref()
            .iter()
            .filter_map(|(n, t)| {
                let p = t
                    .get_ref()
                    .dataset
                    .as_ref()?
                    .get_ref()
                    .projection
                    .as_ref()?;
                Some((n, p))
            })
            .nth(1)
        {
            return Err(self.at.error(
                second.span(),
                format!("targets.{name}.dataset.projection"),
                "only one target of a scenario may carry a projection (the drill runs once per size)",
            ));
        }
        Ok(targets)
    }

    /// Every fault, checked and in time order. A site is lost at most once, and after every
    /// other fault.
    fn faults(
        &self,
        raw: &RawScenario,
        targets: &[TargetSpec],
        has_offsite: bool,
    ) -> Checked<Vec<FaultSpec>> {
        let mut faults = Vec::new();
        let site_losses: Vec<(usize, &Spanned<raw::RawFault>)> = raw
            .faults
            .iter()
            .enumerate()
            .filter(|(_, f)| *f.get_ref().kind.get_ref() == FaultKind::SiteLoss)
            .collect();
        if let Some((i, f)) = site_losses.get(1) {
            return Err(self.at.error(
                f.get_ref().kind.span(),
                format!("faults[{i}].kind"),
                "a scenario loses its site at most once",
            ));
        }
        if let Some((_, lost)) = site_losses.first() {
            let lost_at = lost.get_ref().at.get_ref().0;
            if let Some((i, f)) = raw.faults.iter().enumerate().find(|(_, f)| {
                *f.get_ref().kind.get_ref() != FaultKind::SiteLoss
                    && f.get_ref().at.get_ref().0 >= lost_at
            }) {
                return Err(self.at.error(
                    f.get_ref().at.span(),
                    format!("faults[{i}].at"),
                    "after the site loss there is nothing left to fault: give it an `at` before the site-loss's",
                ));
            }
        }
        for (i, fault) in raw.faults.iter().enumerate() {
            if *fault.get_ref().kind.get_ref() == FaultKind::SiteLoss {
                faults.extend(self.site_loss(i, fault.get_ref(), targets, has_offsite)?);
            } else {
                faults.push(self.fault(i, fault.get_ref(), targets)?);
            }
        }
        faults.sort_by_key(|f| f.at);
        Ok(faults)
    }

    /// How long the drill runs: `drill.duration`, after every fault, or else a tail past the
    /// last fault's end.
    fn duration(&self, raw: &RawScenario, faults: &[FaultSpec]) -> Checked<Duration> {
        let last_fault = faults
            .iter()
            .map(|f| f.at + f.hold.unwrap_or_default())
            .max();
        let Some(d) = &raw.drill.duration else {
            return Ok(last_fault.map_or(DEFAULT_DURATION, |t| t + DEFAULT_TAIL));
        };
        let duration = d.get_ref().0;
        if let Some((i, f)) = raw
            .faults
            .iter()
            .enumerate()
            .find(|(_, f)| f.get_ref().at.get_ref().0 >= duration)
        {
            return Err(self.at.error(
                f.get_ref().at.span(),
                format!("faults[{i}].at"),
                format!(
                    "the fault fires at {} but the drill ends at {} (drill.duration)",
                    humantime::format_duration(f.get_ref().at.get_ref().0),
                    humantime::format_duration(duration)
                ),
            ));
        }
        if duration.is_zero() {
            return Err(self.at.error(
                d.span(),
                "drill.duration",
                "the drill needs a duration above zero",
            ));
        }
        Ok(duration)
    }

    /// `[platform]`: objectives for every target together, and its workload. No target may
    /// take the platform row's name.
    fn platform(
        &self,
        raw: &RawScenario,
        targets: &mut [TargetSpec],
    ) -> Checked<Option<PlatformObjectives>> {
        let Some(p) = &raw.platform else {
            return Ok(None);
        };
        if let Some((name, t)) = raw.targets.get_ref().get_key_value(PLATFORM) {
            return Err(self.at.error(
                t.span(),
                format!("targets.{name}"),
                "with [platform], the report's platform row is named `platform`: give this target another name",
            ));
        }
        let p = p.get_ref();
        let workload = match &p.workload {
            Some(w) => Some(self.platform_workload(w, raw, targets)?),
            None => None,
        };
        Ok(Some(PlatformObjectives {
            rto: p.rto.get_ref().0,
            rpo: p.rpo.get_ref().0,
            workload,
        }))
    }

    /// Fits each target to its faults: a small volume to fill for `disk-full`, a proxy for
    /// `latency`. A `write_p99` objective needs a `latency` fault to judge.
    fn fit_to_faults(&self, faults: &[FaultSpec], targets: &mut [TargetSpec]) -> Checked<()> {
        for t in targets {
            if faults
                .iter()
                .any(|f| f.target == t.name && f.kind == FaultKind::DiskFull)
            {
                t.volume_limit = Some(crate::spec::DISK_FULL_VOLUME);
            }
            t.proxied = faults
                .iter()
                .any(|f| f.target == t.name && f.kind == FaultKind::Latency);
            if t.objectives.write_p99.is_some() && !t.proxied {
                let key = format!("targets.{}.objectives.write_p99", t.name);
                return Err(self.at.error(
                    span_of(&self.doc, &key).unwrap_or(0..0),
                    key,
                    "write_p99 judges the writes while a `latency` fault lasts: this target has none",
                ));
            }
        }
        Ok(())
    }

    /// `[offsite]`: one of `path` and `url`, a schedule, and the age recipient backups are
    /// encrypted to. The identity is only a path here: the DR site reads it when it needs it.
    fn offsite(&self, spanned: &Spanned<raw::RawOffsite>) -> Checked<OffsiteSpec> {
        let o = spanned.get_ref();
        let location = match (&o.path, &o.url) {
            (Some(p), None) => {
                if let Some(e) = &o.endpoint {
                    return Err(self.at.error(
                        e.span(),
                        "offsite.endpoint",
                        "`endpoint` is for an object store's `url`, not a `path`",
                    ));
                }
                self.path(p.get_ref())
            }
            (None, Some(u)) => self.url(u, "offsite.url", &o.endpoint, &o.region)?,
            _ => {
                return Err(self.at.error(
                    spanned.span(),
                    "offsite",
                    "offsite takes exactly one of `path` (a folder) and `url` (s3://…)",
                ));
            }
        };
        let every = o.every.get_ref().0;
        if every.is_zero() {
            return Err(self.at.error(
                o.every.span(),
                "offsite.every",
                "shipping every 0s would never stop: give a time above zero",
            ));
        }
        let recipient = o.recipient.get_ref().trim();
        if recipient.parse::<age::x25519::Recipient>().is_err() {
            return Err(self.at.error(
                o.recipient.span(),
                "offsite.recipient",
                "not an age recipient: give the public key (age1…) that `age-keygen -y` prints for the DR site's identity",
            ));
        }
        Ok(OffsiteSpec {
            location,
            every,
            recipient: recipient.to_string(),
            identity: o.identity.as_ref().map(|i| match self.path(i.get_ref()) {
                SourceLocation::Path(p) => p,
                SourceLocation::Url { .. } => unreachable!("a path"),
            }),
        })
    }

    /// `site-loss`: one fault for the whole site, which every target suffers at `at`. Each
    /// target must be a drill that restores a backup that could have been shipped.
    fn site_loss(
        &self,
        i: usize,
        raw: &raw::RawFault,
        targets: &[TargetSpec],
        offsite: bool,
    ) -> Checked<Vec<FaultSpec>> {
        let key = |k: &str| format!("faults[{i}].{k}");
        let kind_span = raw.kind.span();
        if let Some(t) = &raw.target {
            return Err(self.at.error(
                t.span(),
                key("target"),
                "site-loss takes the whole site at once: it names no target",
            ));
        }
        let extra = [
            ("for", raw.for_.as_ref().map(|v| v.span())),
            ("artefact", raw.artefact.as_ref().map(|v| v.span())),
            ("delay", raw.delay.as_ref().map(|v| v.span())),
            ("jitter", raw.jitter.as_ref().map(|v| v.span())),
            ("bandwidth", raw.bandwidth.as_ref().map(|v| v.span())),
            ("reset", raw.reset.as_ref().map(|v| v.span())),
            ("isolate", raw.isolate.as_ref().map(|v| v.span())),
        ];
        if let Some((k, Some(span))) = extra.into_iter().find(|(_, s)| s.is_some()) {
            return Err(self.at.error(
                span,
                key(k),
                format!("site-loss takes only `at`, not `{k}`"),
            ));
        }
        if let Some((k, _)) = self.owned.faults[i].first() {
            return Err(self.at.error(
                kind_span,
                key(k),
                format!("site-loss takes only `at`, not `{k}`"),
            ));
        }
        if !offsite {
            return Err(self.at.error(
                kind_span,
                key("kind"),
                "after a site loss only what was shipped offsite is left: add an [offsite] table",
            ));
        }
        let at = raw.at.get_ref().0;
        let mut faults = Vec::new();
        for t in targets {
            let problem = if t.source.is_some() {
                Some(
                    "is a restore test; a site loss drills every target of the scenario"
                        .to_string(),
                )
            } else if !t.restore.from_backup() {
                Some(format!(
                    "restores from `{}`, but nothing of the site is left to recover on: restore from a backup",
                    t.restore.label()
                ))
            } else if t.restore == RestorePoint::BeforeFault
                && t.backup.is_some_and(|b| b.method.archives_wal())
            {
                Some("restores to `before-fault`, a WAL location the site loss takes with the site: restore from `latest` or a time".to_string())
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(self.at.error(
                    kind_span,
                    key("kind"),
                    format!("target {:?} {problem}", t.name),
                ));
            }
            faults.push(FaultSpec {
                target: t.name.clone(),
                kind: FaultKind::SiteLoss,
                at,
                hold: None,
                aim: None,
                artefact: None,
                toxics: None,
                isolate: crate::spec::Isolate::All,
            });
        }
        Ok(faults)
    }

    /// `[platform] workload`: `order`, `cache` and `event` name a PostgreSQL, a Redis and a
    /// RabbitMQ drill, none with a workload of its own; they then write at the platform's rate.
    fn platform_workload(
        &self,
        w: &Spanned<raw::RawPlatformWorkload>,
        raw: &RawScenario,
        targets: &mut [TargetSpec],
    ) -> Checked<PlatformWorkload> {
        let r = w.get_ref();
        let rate = *r.rate.get_ref();
        if rate == 0 {
            return Err(self.at.error(
                r.rate.span(),
                "platform.workload.rate",
                "the platform workload needs a rate above zero (writes per second across the stores)",
            ));
        }
        let roles = [
            ("order", &r.order, TargetKind::Postgres),
            ("cache", &r.cache, TargetKind::Redis),
            ("event", &r.event, TargetKind::Rabbitmq),
        ];
        let mut chain: [String; 3] = Default::default();
        for (i, (role, name, kind)) in roles.into_iter().enumerate() {
            let key = format!("platform.workload.{role}");
            let Some(t) = targets.iter_mut().find(|t| &t.name == name.get_ref()) else {
                let known: Vec<&str> = raw.targets.get_ref().keys().map(String::as_str).collect();
                return Err(self.at.error(
                    name.span(),
                    key,
                    format!(
                        "no target named {:?} (targets: {})",
                        name.get_ref(),
                        known.join(", ")
                    ),
                ));
            };
            if t.kind != kind || t.source.is_some() {
                return Err(self.at.error(
                    name.span(),
                    key,
                    format!(
                        "the {role}s go to a {kind} drill; {:?} is a {}{}",
                        t.name,
                        t.kind,
                        if t.source.is_some() {
                            " restore test"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            if let Some(own) = &raw.targets.get_ref()[&t.name].get_ref().workload {
                return Err(self.at.error(
                    own.rate.span(),
                    format!("targets.{}.workload", t.name),
                    "the platform workload writes to this target: it takes no workload of its own",
                ));
            }
            if chain.contains(&t.name) {
                return Err(self.at.error(name.span(), key, "one target per role"));
            }
            t.rate = rate;
            chain[i] = t.name.clone();
        }
        Ok(PlatformWorkload { rate, chain })
    }

    /// `restore.after`: each name another target of the scenario, and no target waiting,
    /// through others, on itself.
    fn restore_order(&self, raw: &RawScenario, targets: &mut [TargetSpec]) -> Checked<()> {
        let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
        for t in targets.iter_mut() {
            let raw_target = &raw.targets.get_ref()[&t.name];
            let Some(after) = &raw_target.get_ref().restore.get_ref().after else {
                continue;
            };
            let key = format!("targets.{}.restore.after", t.name);
            if t.source.is_some() {
                return Err(self.at.error(
                    after.span(),
                    key,
                    "a restore test (`source`) restores at once: `after` orders a drill's restores",
                ));
            }
            for other in after.get_ref() {
                if *other == t.name {
                    return Err(self.at.error(
                        after.span(),
                        key,
                        "a target cannot restore after itself",
                    ));
                }
                if !names.contains(other) {
                    return Err(self.at.error(
                        after.span(),
                        key,
                        format!("no target named {other:?} (targets: {})", names.join(", ")),
                    ));
                }
            }
            t.restore_after = after.get_ref().clone();
        }
        // A cycle: following `after` from some target leads back to it.
        for t in targets.iter() {
            let mut frontier: Vec<&str> = t.restore_after.iter().map(String::as_str).collect();
            let mut seen = std::collections::BTreeSet::new();
            while let Some(next) = frontier.pop() {
                if next == t.name {
                    let key = format!("targets.{}.restore.after", t.name);
                    let span = span_of(&self.doc, &key).unwrap_or(0..0);
                    return Err(self.at.error(
                        span,
                        key,
                        format!(
                            "the restore order has a cycle through {}: no target could start",
                            t.name
                        ),
                    ));
                }
                if seen.insert(next)
                    && let Some(n) = targets.iter().find(|x| x.name == next)
                {
                    frontier.extend(n.restore_after.iter().map(String::as_str));
                }
            }
        }
        Ok(())
    }

    fn timeouts(&self, raw: &raw::RawTimeouts) -> Checked<Timeouts> {
        let mut t = Timeouts::default();
        let fields: [(&str, &Option<Spanned<HumanDuration>>, &mut Duration); 8] = [
            ("provision", &raw.provision, &mut t.provision),
            ("seed", &raw.seed, &mut t.seed),
            ("backup", &raw.backup, &mut t.backup),
            ("fault", &raw.fault, &mut t.fault),
            ("detect", &raw.detect, &mut t.detect),
            ("archive", &raw.archive, &mut t.archive),
            ("restore", &raw.restore, &mut t.restore),
            ("check", &raw.check, &mut t.check),
        ];
        for (key, value, slot) in fields {
            if let Some(v) = value {
                if v.get_ref().0.is_zero() {
                    return Err(self.at.error(
                        v.span(),
                        format!("timeouts.{key}"),
                        "a timeout of zero would fail every step",
                    ));
                }
                *slot = v.get_ref().0;
            }
        }
        Ok(t)
    }

    fn projection(
        &self,
        p: &raw::RawProjection,
        key: &dyn Fn(&str) -> String,
    ) -> Checked<Projection> {
        let sizes = p.sizes.get_ref();
        let mut distinct: Vec<i64> = sizes.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() < 2 || distinct[0] < 1 || distinct.len() != sizes.len() {
            return Err(self.at.error(
                p.sizes.span(),
                key("dataset.projection.sizes"),
                format!(
                    "a projection needs at least two different sizes of at least 1 row, got {sizes:?}"
                ),
            ));
        }
        let production = *p.production_rows.get_ref();
        if production < 1 {
            return Err(self.at.error(
                p.production_rows.span(),
                key("dataset.projection.production_rows"),
                format!("production_rows must be at least 1, got {production}"),
            ));
        }
        Ok(Projection {
            sizes: sizes.iter().map(|&s| s as u64).collect(),
            production_rows: production as u64,
        })
    }

    fn target(&self, name: &str, spanned: &Spanned<RawTarget>) -> Checked<TargetSpec> {
        let raw = spanned.get_ref();
        let key = |k: &str| format!("targets.{name}.{k}");
        self.target_name(name, spanned)?;
        let kind = *raw.kind.get_ref();
        let caps = capabilities(kind);
        if let Some(source) = &raw.source {
            return self.sourced_target(name, raw, source);
        }
        self.no_restore_test_keys(raw, &key)?;

        let keys = self.kind_keys(name, kind)?;
        let dataset = self.dataset(raw.dataset.as_ref(), kind, caps, &key)?;
        let rate = self.rate(raw.workload.as_ref(), caps, &key)?;
        let backup = self.backup(raw.backup.as_ref(), kind, caps, &key)?;

        let restore_raw = raw.restore.get_ref();
        let restore = *restore_raw.from.get_ref();
        if restore.from_backup() && backup.is_none() {
            return Err(self.at.error(
                restore_raw.from.span(),
                key("restore.from"),
                "restoring from a backup needs a `backup` for this target (or use `restart`)",
            ));
        }
        let checks = self.drill_checks(&raw.checks, kind, caps, restore, backup, &key)?;
        let objectives = self.drill_objectives(raw.objectives.get_ref(), &key)?;

        let mut spec = TargetSpec {
            name: name.to_string(),
            kind,
            image: raw.image.as_ref().map(|i| i.get_ref().clone()),
            dataset,
            rate,
            backup,
            restore,
            checks,
            objectives,
            options: Arc::new(()),
            volume_limit: None,
            proxied: false,
            restore_after: Vec::new(),
            source: None,
            queries: Vec::new(),
            database: None,
        };
        spec.options = (caps.options)(&keys, &spec)
            .map_err(|e| self.key_error(&format!("targets.{name}"), e))?;
        Ok(spec)
    }

    /// A target name uses letters, digits, '-' and '_'.
    fn target_name(&self, name: &str, spanned: &Spanned<RawTarget>) -> Checked<()> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(self.at.error(
                spanned.span(),
                format!("targets.{name}"),
                "a target name uses letters, digits, '-' and '_'",
            ));
        }
        Ok(())
    }

    /// A drill has no `queries` and no `database`: those belong to restore tests.
    fn no_restore_test_keys(&self, raw: &RawTarget, key: &dyn Fn(&str) -> String) -> Checked<()> {
        if let Some(q) = raw.queries.first() {
            return Err(self.at.error(
                q.span(),
                key("queries"),
                "queries prove a restore test of your own backup: give the target a `source`",
            ));
        }
        if let Some(d) = &raw.database {
            return Err(self.at.error(
                d.span(),
                key("database"),
                "`database` names where a restore test's queries run: give the target a `source`",
            ));
        }
        Ok(())
    }

    /// The fixture a drill seeds, and how many rows; the kind's default when not given.
    fn dataset(
        &self,
        raw: Option<&Spanned<raw::RawDataset>>,
        kind: TargetKind,
        caps: &Capabilities,
        key: &dyn Fn(&str) -> String,
    ) -> Checked<Dataset> {
        let Some(d) = raw else {
            return Ok(Dataset {
                fixture: caps.fixtures[0].to_string(),
                rows: caps.default_rows,
                projection: None,
            });
        };
        let d = d.get_ref();
        let fixture = d.fixture.get_ref();
        if !caps.fixtures.contains(&fixture.as_str()) {
            return Err(self.at.error(
                d.fixture.span(),
                key("dataset.fixture"),
                format!(
                    "no {kind} fixture named {fixture:?} (fixtures: {})",
                    caps.fixtures.join(", ")
                ),
            ));
        }
        let rows = *d.rows.get_ref();
        if rows < 1 {
            return Err(self.at.error(
                d.rows.span(),
                key("dataset.rows"),
                format!("rows must be at least 1, got {rows}"),
            ));
        }
        let projection = match &d.projection {
            None => None,
            Some(p) => Some(self.projection(p.get_ref(), key)?),
        };
        Ok(Dataset {
            fixture: fixture.clone(),
            rows: rows as u64,
            projection,
        })
    }

    /// The workload's writes per second; the kind's default when not given.
    fn rate(
        &self,
        raw: Option<&raw::RawWorkload>,
        caps: &Capabilities,
        key: &dyn Fn(&str) -> String,
    ) -> Checked<u32> {
        let Some(w) = raw else {
            return Ok(caps.default_rate);
        };
        let rate = *w.rate.get_ref();
        u32::try_from(rate).map_err(|_| {
            self.at.error(
                w.rate.span(),
                key("workload.rate"),
                format!("rate must be between 0 and {}, got {rate}", u32::MAX),
            )
        })
    }

    /// A drill's backups: a method the kind has, an interval above zero, and an
    /// `archive_timeout` only where WAL is archived.
    fn backup(
        &self,
        raw: Option<&Spanned<raw::RawBackup>>,
        kind: TargetKind,
        caps: &Capabilities,
        key: &dyn Fn(&str) -> String,
    ) -> Checked<Option<BackupSpec>> {
        let Some(b) = raw else {
            return Ok(None);
        };
        let b = b.get_ref();
        let method = *b.method.get_ref();
        if !caps.backups.contains(&method) {
            return Err(self.at.error(
                b.method.span(),
                key("backup.method"),
                format!(
                    "backup method `{method}` is not available for {kind} targets (available: {})",
                    list(caps.backups)
                ),
            ));
        }
        let every = b.every.get_ref().0;
        if every.is_zero() {
            return Err(self.at.error(
                b.every.span(),
                key("backup.every"),
                "backups need an interval above zero",
            ));
        }
        let archive_timeout = match &b.archive_timeout {
            Some(t) if !method.archives_wal() => {
                return Err(self.at.error(
                    t.span(),
                    key("backup.archive_timeout"),
                    format!(
                        "backup method `{method}` archives no WAL; archive_timeout does not apply"
                    ),
                ));
            }
            Some(t) if t.get_ref().0 < Duration::from_secs(1) => {
                return Err(self.at.error(
                    t.span(),
                    key("backup.archive_timeout"),
                    "PostgreSQL takes archive_timeout in whole seconds, at least 1s",
                ));
            }
            Some(t) => Some(t.get_ref().0),
            None => method.archives_wal().then_some(DEFAULT_ARCHIVE_TIMEOUT),
        };
        Ok(Some(BackupSpec {
            method,
            every,
            archive_timeout,
        }))
    }

    /// A drill's checks: each one the kind has, that its restore and backup can answer,
    /// listed once. `seed` runs anyway and is not listed.
    fn drill_checks(
        &self,
        raw: &[Spanned<CheckKind>],
        kind: TargetKind,
        caps: &Capabilities,
        restore: RestorePoint,
        backup: Option<BackupSpec>,
        key: &dyn Fn(&str) -> String,
    ) -> Checked<Vec<CheckKind>> {
        let mut checks = Vec::new();
        for check in raw {
            let c = *check.get_ref();
            if c == CheckKind::Seed {
                return Err(self.at.error(
                    check.span(),
                    key("checks"),
                    "the `seed` check runs on every recovery: leave it out of `checks`",
                ));
            }
            if !caps.checks.contains(&c) {
                return Err(self.at.error(
                    check.span(),
                    key("checks"),
                    format!(
                        "check `{c}` is not available for {kind} targets (available: {})",
                        list(caps.checks)
                    ),
                ));
            }
            if c.needs_backup() && !restore.from_backup() {
                return Err(self.at.error(
                    check.span(),
                    key("checks"),
                    format!(
                        "check `{c}` compares with the restored backup, but restore.from is `{}`",
                        restore.label()
                    ),
                ));
            }
            let method = backup.map(|b| b.method);
            if c.needs_snapshot() && method.is_some_and(|m| !m.takes_snapshot()) {
                return Err(self.at.error(
                    check.span(),
                    key("checks"),
                    format!(
                        "check `{c}` compares with a backup's logical snapshot; `{}` restores a point in time (use `ledger`, `foreign-keys`, `amcheck`)",
                        method.expect("checked above")
                    ),
                ));
            }
            if c.needs_wal_archive() && !method.is_some_and(BackupMethod::archives_wal) {
                return Err(self.at.error(
                    check.span(),
                    key("checks"),
                    format!("check `{c}` verifies a WAL archive and its base backups; it needs backup method `pg-basebackup-wal`"),
                ));
            }
            if c == CheckKind::BackupAge && backup.is_none() {
                return Err(self.at.error(
                    check.span(),
                    key("checks"),
                    "check `backup-age` needs a `backup` for this target",
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

    /// A drill's objectives: an RTO and a write p99 above zero, lost writes not negative.
    fn drill_objectives(
        &self,
        o: &raw::RawObjectives,
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
        if let Some(p) = o.write_p99.as_ref().filter(|p| p.get_ref().0.is_zero()) {
            return Err(self.at.error(
                p.span(),
                key("objectives.write_p99"),
                "a write p99 of 0s can never be met: every write takes time",
            ));
        }
        let max_lost_writes = match &o.max_lost_writes {
            None => None,
            Some(m) => Some(u64::try_from(*m.get_ref()).map_err(|_| {
                self.at.error(
                    m.span(),
                    key("objectives.max_lost_writes"),
                    "max_lost_writes cannot be negative",
                )
            })?),
        };
        Ok(Objectives {
            rto,
            rpo: o.rpo.get_ref().0,
            max_lost_writes,
            write_p99: o.write_p99.as_ref().map(|d| d.get_ref().0),
        })
    }

    fn fault(&self, i: usize, raw: &raw::RawFault, targets: &[TargetSpec]) -> Checked<FaultSpec> {
        let key = |k: &str| format!("faults[{i}].{k}");
        let Some(raw_target) = &raw.target else {
            return Err(self.at.error(
                raw.kind.span(),
                key("target"),
                format!("fault `{}` needs a `target`", raw.kind.get_ref()),
            ));
        };
        let name = raw_target.get_ref();
        let Some(target) = targets.iter().find(|t| &t.name == name) else {
            let known: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
            return Err(self.at.error(
                raw_target.span(),
                key("target"),
                format!("no target named {name:?} (targets: {})", known.join(", ")),
            ));
        };
        let kind = *raw.kind.get_ref();
        if target.source.is_some() {
            return Err(self.at.error(
                raw_target.span(),
                key("target"),
                format!("target {name:?} restores your own backup (`source`): a restore test takes no faults"),
            ));
        }
        let caps = capabilities(target.kind);
        if !caps.faults.contains(&kind) {
            return Err(self.at.error(
                raw.kind.span(),
                key("kind"),
                format!(
                    "fault `{kind}` is not available for {} targets (available: {})",
                    target.kind,
                    list(caps.faults)
                ),
            ));
        }
        if kind.is_latent() && target.backup.is_none() {
            return Err(self.at.error(
                raw.kind.span(),
                key("kind"),
                format!("fault `{kind}` damages a backup, but target {name:?} takes none"),
            ));
        }
        if kind == FaultKind::DeleteWalSegment
            && !target.backup.is_some_and(|b| b.method.archives_wal())
        {
            return Err(self.at.error(
                raw.kind.span(),
                key("kind"),
                format!("fault `{kind}` needs a WAL archive: target {name:?} must use backup method `pg-basebackup-wal`"),
            ));
        }
        if kind == FaultKind::VolumeLoss && target.restore == RestorePoint::Restart {
            return Err(self.at.error(
                raw.kind.span(),
                key("kind"),
                format!("fault `{kind}` leaves no data to restart on; target {name:?} must restore from a backup"),
            ));
        }
        // A temporary fault heals by itself: nothing is restored, and nothing but a temporary
        // fault may hit a target that restores nothing. A replicated target failing over may
        // also suffer one on the way (a standby paused before its primary dies).
        if kind.takes_hold()
            && target.restore != RestorePoint::InPlace
            && target.restore != RestorePoint::Failover
        {
            return Err(self.at.error(
                raw.kind.span(),
                key("kind"),
                format!("fault `{kind}` heals by itself after `for`: target {name:?} must use restore.from = \"in-place\" (or \"failover\")"),
            ));
        }
        if target.restore == RestorePoint::InPlace && !kind.takes_hold() && !kind.is_latent() {
            return Err(self.at.error(
                raw.kind.span(),
                key("kind"),
                format!("target {name:?} restores nothing (restore.from = \"in-place\"): only a fault that heals by itself (pause, network-partition) can hit it"),
            ));
        }
        let hold = raw.for_.as_ref().map(|f| (f.span(), f.get_ref().0));
        match (kind.takes_hold(), hold.clone()) {
            (true, None) => {
                return Err(self.at.error(
                    raw.kind.span(),
                    key("for"),
                    format!("fault `{kind}` needs `for`, how long it lasts"),
                ));
            }
            (false, Some((span, _))) => {
                return Err(self.at.error(
                    span,
                    key("for"),
                    format!("fault `{kind}` does not take `for`"),
                ));
            }
            (true, Some((span, d))) if d.is_zero() => {
                return Err(self.at.error(
                    span,
                    key("for"),
                    "a fault that lasts 0s does not happen",
                ));
            }
            _ => {}
        }
        // Which key a fault takes on which kind, and what it may say, is the kind's to say.
        let takes = caps.fault_key(kind);
        let mut value = None;
        for (k, v) in &self.owned.faults[i] {
            if Some(k.as_str()) != takes {
                return Err(self.at.error(
                    v.span(),
                    key(k),
                    format!(
                        "fault `{kind}` on a {} target does not take `{k}`",
                        target.kind
                    ),
                ));
            }
            let DeValue::String(text) = v.get_ref() else {
                return Err(self.at.error(v.span(), key(k), "expected a string"));
            };
            value = Some(Spanned::new(v.span(), text.to_string()));
        }
        let aim = (caps.aim)(kind, takes, value.as_ref(), target)
            .map_err(|e| self.key_error(&format!("faults[{i}]"), e))?;
        if let (false, Some(a)) = (
            matches!(kind, FaultKind::CorruptBackup | FaultKind::TruncateBackup),
            &raw.artefact,
        ) {
            return Err(self.at.error(
                a.span(),
                key("artefact"),
                format!("fault `{kind}` does not take `artefact`"),
            ));
        }
        let artefact = raw.artefact.as_ref().map(|a| a.get_ref().clone());
        let toxics = self.toxics(i, kind, raw)?;
        let isolate = match &raw.isolate {
            None => crate::spec::Isolate::All,
            Some(v) if kind != FaultKind::NetworkPartition => {
                return Err(self.at.error(
                    v.span(),
                    key("isolate"),
                    format!("fault `{kind}` does not take `isolate`"),
                ));
            }
            Some(v)
                if *v.get_ref() == crate::spec::Isolate::Peers && !(caps.replicated)(target) =>
            {
                return Err(self.at.error(
                    v.span(),
                    key("isolate"),
                    format!("isolate = \"peers\" cuts a node off from the target's other nodes, and target {name:?} has one node: give it `replication`"),
                ));
            }
            Some(v) => *v.get_ref(),
        };
        Ok(FaultSpec {
            target: name.clone(),
            kind,
            at: raw.at.get_ref().0,
            hold: hold.map(|(_, d)| d),
            aim,
            artefact,
            toxics,
            isolate,
        })
    }

    /// A `latency` fault's toxics (`delay`, `jitter`, `bandwidth`, `reset`): at least one that
    /// acts; no other fault takes them.
    fn toxics(&self, i: usize, kind: FaultKind, raw: &raw::RawFault) -> Checked<Option<Toxics>> {
        let key = |k: &str| format!("faults[{i}].{k}");
        let given = [
            ("delay", raw.delay.as_ref().map(|d| d.span())),
            ("jitter", raw.jitter.as_ref().map(|d| d.span())),
            ("bandwidth", raw.bandwidth.as_ref().map(|d| d.span())),
            ("reset", raw.reset.as_ref().map(|d| d.span())),
        ];
        if kind != FaultKind::Latency {
            if let Some((k, Some(span))) = given.into_iter().find(|(_, s)| s.is_some()) {
                return Err(self.at.error(
                    span,
                    key(k),
                    format!("fault `{kind}` does not take `{k}`"),
                ));
            }
            return Ok(None);
        }
        let duration = |d: &Option<Spanned<HumanDuration>>| d.as_ref().map(|d| d.get_ref().0);
        let delay = duration(&raw.delay).unwrap_or_default();
        let jitter = duration(&raw.jitter).unwrap_or_default();
        if jitter > delay {
            return Err(self.at.error(
                raw.jitter.as_ref().expect("jitter is set").span(),
                key("jitter"),
                "the jitter may not exceed the delay (a chunk cannot arrive before it was sent)",
            ));
        }
        let bandwidth = match &raw.bandwidth {
            None => None,
            Some(b) => Some(parse_bandwidth(b.get_ref()).ok_or_else(|| {
                self.at.error(
                    b.span(),
                    key("bandwidth"),
                    format!(
                        "invalid bandwidth {:?}: bytes per second above zero, such as \"64KiB/s\" or \"1MB/s\"",
                        b.get_ref()
                    ),
                )
            })?),
        };
        let reset = duration(&raw.reset);
        if let Some(r) = &raw.reset
            && r.get_ref().0.is_zero()
        {
            return Err(self.at.error(
                r.span(),
                key("reset"),
                "a reset after 0s leaves no connection up: give it a time above zero",
            ));
        }
        if delay.is_zero() && bandwidth.is_none() && reset.is_none() {
            return Err(self.at.error(
                raw.kind.span(),
                key("delay"),
                "fault `latency` needs `delay` above zero (the time added each way), `bandwidth` or `reset`",
            ));
        }
        Ok(Some(Toxics {
            delay,
            jitter,
            bandwidth,
            reset,
        }))
    }

    /// A restore from backup needs a backup taken before the target's first fault.
    fn restore_needs(
        &self,
        target: &TargetSpec,
        faults: &[FaultSpec],
        raw: &RawScenario,
    ) -> Checked<()> {
        if !target.restore.from_backup() {
            return Ok(());
        }
        let first = faults.iter().find(|f| f.target == target.name);
        if first.is_some_and(|f| f.at.is_zero()) {
            let (i, f) = raw
                .faults
                .iter()
                .enumerate()
                .filter(|(_, f)| {
                    let f = f.get_ref();
                    f.kind.get_ref() == &FaultKind::SiteLoss
                        || f.target
                            .as_ref()
                            .is_some_and(|t| t.get_ref() == &target.name)
                })
                .min_by_key(|(_, f)| f.get_ref().at.get_ref().0)
                .expect("the fault came from this file");
            return Err(self.at.error(
                f.get_ref().at.span(),
                format!("faults[{i}].at"),
                "the fault fires as the workload starts, before any backup can be taken",
            ));
        }
        Ok(())
    }
}

/// Bytes per second from `"64KiB/s"`, `"1MB/s"`, `"500B/s"` (decimal `kB`/`MB`/`GB`, binary
/// `KiB`/`MiB`/`GiB`); `None` unless above zero.
fn parse_bandwidth(text: &str) -> Option<u64> {
    let per_second = text.trim().strip_suffix("/s")?.trim();
    let split = per_second
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(per_second.len());
    let (number, unit) = per_second.split_at(split);
    let scale: f64 = match unit.trim() {
        "B" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = (number.parse::<f64>().ok()? * scale).round();
    (bytes >= 1.0 && bytes.is_finite()).then_some(bytes as u64)
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
