//! A restore test: the user's own backup, fetched from its source, restored into a fresh
//! container and proven by the checks and the user's queries. No workload, no fault: the RTO
//! runs from the fetch's start to the verified fresh write, and the RPO is the backup's age
//! when the test ran (docs/restore-tests.md §4).

use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::events::{Recovery, RestoreBegins, TargetEvent};
use super::executor::Executor;
use super::stop::{Stop, classify, within};
use super::verify::{RESTORE_FAILED, conclude};
use crate::checks::{CheckResult, CheckStatus, Evidence, Previous};
use crate::measure::rpo::Rpo;
use crate::measure::{Phase, RecoveryPhases};
use crate::report::SourceReport;
use crate::source::{self, Fetched, Unrestorable};
use crate::spec::{CheckKind, QuerySpec, SourceSpec, TargetSpec};
use crate::targets::{Restored, Target};
use crate::util;

impl Executor<'_> {
    /// Fetch → restore → verify for a target with a `source`.
    pub async fn restore_test(
        &self,
        spec: &TargetSpec,
        source: &SourceSpec,
        target: &mut dyn Target,
        previous: &Previous,
    ) -> Result<(), Stop> {
        let name = spec.name.as_str();
        let clock = self.clock;
        let start = clock.micros();
        let tested_at = clock.wall_at(start);
        self.events.outage(name, start);
        self.events.target(
            name,
            TargetEvent::RestoreBegins(Box::new(RestoreBegins {
                fault_at: start,
                restore_started: start,
                workload: None,
                detection: None,
                write_latency: None,
            })),
        );

        let span = self.events.begin("restore", Some(name));
        let mut phases = RecoveryPhases::new(clock, Phase::Fetch, start);
        let dest = self.dir.join("source").join(name);
        let _copy = FetchedCopy {
            target: name,
            dir: &dest,
        };
        let (fetched, restored, restore_error) = self
            .fetch_and_restore(spec, source, target, &dest, &mut phases)
            .await?;
        self.events.end(span);
        if let Some(e) = &restore_error {
            warn!("{name}: restore failed: {e}");
        }

        let span = self.events.begin("verify", Some(name));
        phases.enter(Phase::Verify);
        let results = self
            .prove(
                spec,
                source,
                target,
                fetched.as_ref().ok(),
                &restored,
                restore_error.as_deref(),
                previous,
                start,
                tested_at,
            )
            .await?;
        let limit = self.scenario.timeouts.check;
        let (recovered_at, note) = conclude(
            name,
            target,
            restore_error.as_deref(),
            &results,
            limit,
            &clock,
        )
        .await?;
        self.events.end(span);

        let rpo = Rpo::of_age(
            &spec.objectives,
            newest_data(spec, fetched.as_ref().ok(), &results, &restored),
            tested_at,
        );
        let mut recovery = Recovery {
            note,
            rpo,
            checks: results,
            restored,
            error: restore_error,
            ..Recovery::timed(&phases, start, recovered_at, clock.micros())
        };
        // This run's restore time against its backup's size, with the earlier ones.
        if let (Ok(f), Some(ms)) = (&fetched, recovery.rto_ms) {
            let mut points = previous.restores.get(name).cloned().unwrap_or_default();
            points.push((f.bytes, ms as i64));
            let objective = spec.objectives.rto.as_millis() as i64;
            recovery.trend = crate::measure::projection::restore_trend(&points, objective);
        }
        match recovery.rto_ms {
            Some(ms) => info!("{name}: restored and proven in {}", util::seconds(ms)),
            None => warn!("{name}: not recovered"),
        }
        self.events
            .target(name, TargetEvent::Recovered(Box::new(recovery)));
        Ok(())
    }

    /// Fetches the backup from its source into `dest` and restores it: what was fetched (or
    /// why it cannot be restored), what the restore reached, and why it failed, if it did.
    async fn fetch_and_restore(
        &self,
        spec: &TargetSpec,
        source: &SourceSpec,
        target: &mut dyn Target,
        dest: &std::path::Path,
        phases: &mut RecoveryPhases,
    ) -> Result<(Result<Fetched, String>, Restored, Option<String>), Stop> {
        let name = spec.name.as_str();
        let limit = self.scenario.timeouts.restore;
        let not_after = match spec.restore {
            crate::spec::RestorePoint::At(t) => Some(t),
            _ => None,
        };
        let step = format!("fetch for {name}");
        let fetched = match within(
            &step,
            limit,
            "timeouts.restore",
            source::fetch(source, dest, not_after),
        )
        .await?
        {
            Ok(f) => f,
            Err(e) if e.downcast_ref::<Unrestorable>().is_some() => {
                let why = format!("{e:#}");
                return Ok((Err(why.clone()), Restored::default(), Some(why)));
            }
            Err(e) => return Err(classify(&step, e)),
        };
        info!(
            "{name}: fetched {} ({}, {} bytes) in {}",
            fetched.object,
            fetched.format.describe(),
            fetched.bytes,
            util::seconds(fetched.fetch_ms)
        );
        let mb_per_s = fetched.bytes as f64 / 1e6 / (fetched.fetch_ms.max(1) as f64 / 1000.0);
        self.events.target(
            name,
            TargetEvent::FetchedSource(Box::new(SourceReport {
                location: source.location.label(),
                fetched: fetched.clone(),
                mb_per_s: (mb_per_s * 100.0).round() / 100.0,
                trend: None,
            })),
        );
        let kind = crate::targets::kind_of(fetched.format);
        if kind != spec.kind {
            let why = format!(
                "{} is a {}, not a {} backup",
                fetched.object,
                fetched.format.describe(),
                spec.kind
            );
            return Ok((Ok(fetched), Restored::default(), Some(why)));
        }
        let step = format!("restore {name}");
        let (restored, error) = match within(
            &step,
            limit,
            "timeouts.restore",
            target.restore_source(&fetched, phases),
        )
        .await?
        {
            Ok(r) => (r, None),
            Err(e) => (Restored::default(), Some(format!("{e:#}"))),
        };
        Ok((Ok(fetched), restored, error))
    }

    /// The checks and the user's queries on the restored backup. A check the restore ran on the
    /// way stands as it ran; after a failed restore, what needs the service is not run.
    #[allow(clippy::too_many_arguments)]
    async fn prove(
        &self,
        spec: &TargetSpec,
        source: &SourceSpec,
        target: &dyn Target,
        fetched: Option<&Fetched>,
        restored: &Restored,
        restore_error: Option<&str>,
        previous: &Previous,
        start: crate::clock::Micros,
        tested_at: SystemTime,
    ) -> Result<Vec<CheckResult>, Stop> {
        let name = spec.name.as_str();
        let limit = self.scenario.timeouts.check;
        let mut results = Vec::new();
        if let Some(f) = fetched {
            for &check in &spec.checks {
                // The restore ran it on the backup itself, on the way (its own duration).
                if let Some(ran) = restored.checked.iter().find(|c| c.name == check) {
                    results.push(ran.clone());
                    continue;
                }
                let started = tokio::time::Instant::now();
                let mut r = match check {
                    CheckKind::BackupIntegrity => integrity(f),
                    CheckKind::PgVerifybackup => CheckResult::unknown(
                        check,
                        match restore_error {
                            Some(_) => RESTORE_FAILED.to_string(),
                            None => format!(
                                "not run: pg_verifybackup reads base backups, and {} is a {}",
                                f.object,
                                f.format.describe()
                            ),
                        },
                    ),
                    CheckKind::BackupAge => age(f, tested_at, source.max_age),
                    CheckKind::BackupSize => size(f, previous, name, source.size_tolerance),
                    kind_check if restore_error.is_none() => {
                        let evidence = Evidence {
                            backup: None,
                            catalog: &[],
                            fault_began: start,
                            rpo_objective: spec.objectives.rpo,
                            seed: &Default::default(),
                        };
                        let step = format!("check {kind_check} of {name}");
                        within(
                            &step,
                            limit,
                            "timeouts.check",
                            target.check(kind_check, &evidence),
                        )
                        .await?
                    }
                    other => CheckResult::unknown(other, RESTORE_FAILED),
                };
                r.duration_ms = started.elapsed().as_millis() as u64;
                results.push(r);
            }
        }
        for q in &spec.queries {
            let started = tokio::time::Instant::now();
            let mut r = if restore_error.is_some() || fetched.is_none() {
                let mut r = CheckResult::unknown(CheckKind::Query, RESTORE_FAILED);
                r.query = Some(q.name.clone());
                r
            } else {
                let step = format!("query {:?} of {name}", q.name);
                let answer = within(&step, limit, "timeouts.check", target.query(&q.ask)).await?;
                judge(q, answer.map_err(|e| format!("{e:#}")), previous, name)
            };
            r.duration_ms = started.elapsed().as_millis() as u64;
            results.push(r);
        }
        Ok(results)
    }
}

/// The newest data a restore test brought back, and how it is known: a passing freshness
/// query's answer, else the newest transaction a replay reached, else the backup's own time;
/// or why there is none (no backup was fetched).
fn newest_data(
    spec: &TargetSpec,
    fetched: Option<&Fetched>,
    results: &[CheckResult],
    restored: &Restored,
) -> Result<(SystemTime, String), String> {
    let f = fetched.ok_or("no backup was fetched")?;
    let freshness = spec.queries.iter().find(|q| q.freshness).and_then(|q| {
        results
            .iter()
            .find(|r| r.query.as_deref() == Some(q.name.as_str()))
            .filter(|r| r.status == CheckStatus::Passed)
            .and_then(|r| r.value.as_deref().and_then(point_in_time))
            .map(|t| (q.name.clone(), t))
    });
    Ok(match (freshness, restored.consistent_at) {
        (Some((query, t)), _) => (
            t,
            format!(
                "the age of the newest data, as freshness query {query:?} found it ({}), when the test began",
                humantime::format_rfc3339_millis(t)
            ),
        ),
        (None, Some(t)) => (
            t,
            format!(
                "the age of the newest transaction the restore replayed ({}) when the test began",
                humantime::format_rfc3339_millis(t)
            ),
        ),
        (None, None) => (
            f.made_at_time,
            format!(
                "the backup's age when the test began: made at {} (from {})",
                f.made_at, f.made_at_from
            ),
        ),
    })
}

/// The fetched copy of a backup (possibly decrypted production data), removed when the test
/// ends, however it ends: finished, failed, overran, or interrupted (the drill's future is then
/// dropped).
struct FetchedCopy<'a> {
    target: &'a str,
    dir: &'a std::path::Path,
}

impl Drop for FetchedCopy<'_> {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(
                "{}: cannot remove the fetched copy {}: {e}",
                self.target,
                self.dir.display()
            );
        }
    }
}

/// `backup-integrity`: the fetched bytes against the sidecar checksum next to the backup.
fn integrity(f: &Fetched) -> CheckResult {
    let check = CheckKind::BackupIntegrity;
    // A pgBackRest repository carries a checksum for every file: pgbackrest verify reads them,
    // in the restore.
    if f.pgbackrest.is_some() {
        return CheckResult::unknown(
            check,
            "not run: the restore stopped before pgbackrest verify",
        );
    }
    match (&f.sidecar, &f.sha256) {
        (None, _) => CheckResult::unknown(
            check,
            format!(
                "no checksum next to {} (NAME.sha256 or SHA256SUMS): nothing to verify against",
                f.object
            ),
        ),
        (Some(_), None) => CheckResult::unknown(check, "a folder backup has no single checksum"),
        (Some(s), Some(have)) if s.sha256 == *have => CheckResult::passed(
            check,
            format!("{} matches {} (sha256 {})", f.object, s.file, &have[..12]),
        ),
        (Some(s), Some(have)) => CheckResult::failed(
            check,
            format!(
                "{} has sha256 {have}, but {} says {}: the backup changed after it was written",
                f.object, s.file, s.sha256
            ),
        ),
    }
}

/// `backup-age`: the backup was made within `max_age` of the test.
fn age(f: &Fetched, tested_at: SystemTime, max_age: Duration) -> CheckResult {
    let check = CheckKind::BackupAge;
    let age = tested_at
        .duration_since(f.made_at_time)
        .unwrap_or(Duration::ZERO);
    let shown = humantime::format_duration(Duration::from_secs(age.as_secs()));
    let mut r = if age <= max_age {
        CheckResult::passed(
            check,
            format!(
                "{} was made {shown} ago (at most {})",
                f.object,
                humantime::format_duration(max_age)
            ),
        )
    } else {
        CheckResult::failed(
            check,
            format!(
                "{} was made {shown} ago, at {} (from {}): older than {} (source.max_age); the backup job may have stopped",
                f.object,
                f.made_at,
                f.made_at_from,
                humantime::format_duration(max_age)
            ),
        )
    };
    r.value = Some(age.as_secs().to_string());
    r
}

/// `backup-size`: the size against the previous run's, within `tolerance`.
fn size(f: &Fetched, previous: &Previous, target: &str, tolerance: f64) -> CheckResult {
    let check = CheckKind::BackupSize;
    let mut r = match previous
        .value(target, check.as_str())
        .and_then(|(run, v)| Some((run, v.parse::<u64>().ok()?)))
    {
        None => CheckResult::unknown(
            check,
            format!(
                "{} bytes; no previous run of this scenario recorded a size to compare with",
                f.bytes
            ),
        ),
        Some((run, before)) => {
            let change = (f.bytes as f64 - before as f64) / (before.max(1) as f64);
            let text = format!(
                "{} bytes, {:+.1} % against {} bytes in run {run}",
                f.bytes,
                change * 100.0,
                before,
            );
            if change.abs() <= tolerance {
                CheckResult::passed(
                    check,
                    format!("{text} (within ±{:.0} %)", tolerance * 100.0),
                )
            } else {
                CheckResult::failed(
                    check,
                    format!(
                        "{text}: beyond ±{:.0} % (source.size_tolerance)",
                        tolerance * 100.0
                    ),
                )
            }
        }
    };
    r.value = Some(f.bytes.to_string());
    r
}

/// A user query's answer against its `expect` and `drift`.
fn judge(
    q: &QuerySpec,
    answer: Result<String, String>,
    previous: &Previous,
    target: &str,
) -> CheckResult {
    let check = CheckKind::Query;
    let title = format!("query: {}", q.name);
    let mut r = match answer {
        Err(e) => CheckResult::failed(check, format!("the query failed: {e}")),
        Ok(value) => {
            let mut problems = Vec::new();
            let mut said = vec![format!("value {value}")];
            if let Some(expect) = &q.expect {
                if expect.holds(&value) {
                    said.push(format!("expected {expect}"));
                } else {
                    problems.push(format!("value {value}, expected {expect}"));
                }
            }
            let mut unknown = None;
            if let Some(bound) = q.drift {
                match previous.value(target, &title) {
                    // With an `expect` that held, the query proved something; the drift has no
                    // baseline yet, and says so.
                    None if q.expect.is_some() => said.push(
                        "drift: no earlier run recorded this query; this value is the baseline"
                            .into(),
                    ),
                    None => unknown = Some(format!(
                        "value {value}; no earlier run of this scenario recorded it, so its drift cannot be judged yet"
                    )),
                    Some((run, before)) => match (value.trim().parse::<f64>(), before.trim().parse::<f64>()) {
                        (Ok(now), Ok(was)) => {
                            let moved = if was == 0.0 {
                                if now == 0.0 { 0.0 } else { f64::INFINITY }
                            } else {
                                (now - was) / was.abs()
                            };
                            let text = format!(
                                "{:+.2} % against {was} in run {run}",
                                moved * 100.0,
                            );
                            if moved.abs() <= bound {
                                said.push(format!("{text} (drift at most {:.2} %)", bound * 100.0));
                            } else {
                                problems.push(format!(
                                    "value {value} moved {text}: beyond the drift of {:.2} %",
                                    bound * 100.0
                                ));
                            }
                        }
                        _ if value == before => said.push(format!("unchanged since run {run}")),
                        _ => problems.push(format!(
                            "value {value:?} was {before:?} in run {run}: a text value may not drift"
                        )),
                    },
                }
            }
            if q.freshness {
                match point_in_time(&value) {
                    Some(t) => said.push(format!(
                        "the newest data is from {}: the RPO counts from it",
                        humantime::format_rfc3339_millis(t)
                    )),
                    None => problems.push(format!(
                        "value {value:?} is no time: a freshness query answers a timestamp or Unix seconds"
                    )),
                }
            }
            let mut r = if !problems.is_empty() {
                CheckResult::failed(check, problems.join("; "))
            } else if let Some(u) = unknown {
                CheckResult::unknown(check, u)
            } else {
                CheckResult::passed(check, said.join(", "))
            };
            r.value = Some(value);
            r
        }
    };
    r.query = Some(q.name.clone());
    r
}

/// A freshness query's value as a point in time: Unix seconds, or a timestamp as PostgreSQL or
/// RFC 3339 writes it (`2026-11-30 02:00:00.5+00`, `2026-11-30T02:00:00Z`, `…+05:30`). A
/// timestamp with no zone is read as UTC.
fn point_in_time(value: &str) -> Option<SystemTime> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs));
    }
    // The zone: `Z`, or `+HH`, `+HHMM`, `+HH:MM` (or `-`) after the time of day.
    let (civil, offset_secs) = match v.strip_suffix('Z') {
        Some(rest) => (rest, 0i64),
        None => {
            let split = v
                .char_indices()
                .skip(11)
                .find(|(_, c)| *c == '+' || *c == '-')
                .map(|(i, _)| i);
            match split {
                Some(i) => {
                    let (civil, zone) = v.split_at(i);
                    let sign = if zone.starts_with('-') { -1 } else { 1 };
                    let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
                    if !digits.chars().all(|c| c.is_ascii_digit()) {
                        return None;
                    }
                    let (h, m) = match digits.len() {
                        2 => (digits.parse::<i64>().ok()?, 0),
                        4 => (
                            digits[..2].parse::<i64>().ok()?,
                            digits[2..].parse::<i64>().ok()?,
                        ),
                        _ => return None,
                    };
                    (civil, sign * (h * 3600 + m * 60))
                }
                None => (v, 0),
            }
        }
    };
    let utc = humantime::parse_rfc3339_weak(&civil.replacen(' ', "T", 1)).ok()?;
    if offset_secs >= 0 {
        utc.checked_sub(Duration::from_secs(offset_secs as u64))
    } else {
        utc.checked_add(Duration::from_secs((-offset_secs) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Ask, Expect};

    #[test]
    fn freshness_values_read_as_points_in_time() {
        let at =
            |s: &str| point_in_time(s).map(|t| humantime::format_rfc3339_millis(t).to_string());
        let want = Some("2026-11-30T02:00:00.500Z".to_string());
        assert_eq!(at("2026-11-30 02:00:00.5+00"), want);
        assert_eq!(at("2026-11-30 03:30:00.5+01:30"), want);
        assert_eq!(at("2026-11-30 00:00:00.5-0200"), want);
        assert_eq!(at("2026-11-30T02:00:00.5Z"), want);
        assert_eq!(at("2026-11-30 02:00:00.5"), want);
        assert_eq!(at("1796004000.5"), want);
        assert_eq!(at("yesterday"), None);
        assert_eq!(at("2026-11-30 02:00:00+0x"), None);
        assert_eq!(at("-5"), None);
    }

    fn q(expect: Option<&str>, drift: Option<f64>) -> QuerySpec {
        QuerySpec {
            freshness: false,
            name: "orders".into(),
            ask: Ask::Sql("SELECT 1".into()),
            expect: expect.map(|e| Expect::parse(e).unwrap()),
            drift,
        }
    }

    fn previous(value: &str) -> Previous {
        let mut p = Previous::default();
        p.values.insert(
            ("db".into(), "query: orders".into()),
            ("r1".into(), value.into()),
        );
        p
    }

    #[test]
    fn a_query_below_its_floor_fails_and_names_both() {
        let r = judge(
            &q(Some(">= 1000"), None),
            Ok("999".into()),
            &Previous::default(),
            "db",
        );
        assert_eq!(r.status, CheckStatus::Failed);
        assert!(
            r.detail.contains("999") && r.detail.contains(">= 1000"),
            "{}",
            r.detail
        );
        assert_eq!(r.value.as_deref(), Some("999"));
    }

    #[test]
    fn drift_beyond_its_bound_fails_even_above_the_floor() {
        let r = judge(
            &q(Some(">= 10"), Some(0.01)),
            Ok("500".into()),
            &previous("1000"),
            "db",
        );
        assert_eq!(r.status, CheckStatus::Failed, "{}", r.detail);
        let r = judge(
            &q(Some(">= 10"), Some(0.01)),
            Ok("995".into()),
            &previous("1000"),
            "db",
        );
        assert_eq!(r.status, CheckStatus::Passed, "{}", r.detail);
    }

    #[test]
    fn drift_without_an_earlier_run_is_unknown_unless_an_expect_was_proven() {
        let r = judge(
            &q(None, Some(0.01)),
            Ok("5".into()),
            &Previous::default(),
            "db",
        );
        assert_eq!(r.status, CheckStatus::Unknown);
        let r = judge(
            &q(Some(">= 1"), Some(0.01)),
            Ok("5".into()),
            &Previous::default(),
            "db",
        );
        assert_eq!(r.status, CheckStatus::Passed);
        assert!(r.detail.contains("baseline"), "{}", r.detail);
    }

    #[test]
    fn expectations_parse_and_hold() {
        let e = Expect::parse("between 5 and 10").unwrap();
        assert!(e.holds("5") && e.holds("10") && !e.holds("11") && !e.holds("x"));
        assert!(Expect::parse("== 3").unwrap().holds("3"));
        assert!(Expect::parse("ok").unwrap().holds("ok"));
        assert!(Expect::parse("between 9 and 1").is_err());
        assert!(Expect::parse(">= lots").is_err());
    }
}
