//! `pg-basebackup-wal`: the primary archives every WAL segment into the repository (a host folder
//! mounted at `/archive`, so losing the primary loses none of it), base backups run on schedule,
//! and restores replay the archive to the end, to the point captured before the fault, or to a
//! time. Before replaying, the chain is read: a missing segment ends what can be reached, and the
//! restore says so instead of failing blind.
//!
//! Segment arithmetic follows PostgreSQL's file names: `TTTTTTTTHHHHHHHHLLLLLLLL`, timeline, then
//! the segment number split in units of 4 GiB / segment size.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;

use super::overrides::{self, Recovery};
use super::{PGDATA, PORT, Postgres, Ready, error_line};
use crate::backup::{Backup, Contents, FreshBackup, sha256_file};
use crate::checks::{CheckResult, Evidence};
use crate::docker::ContainerSpec;
use crate::measure::{Phase, RecoveryPhases};
use crate::spec::{CheckKind, DEFAULT_ARCHIVE_TIMEOUT, RestorePoint};
use crate::targets::{RestoreRequest, Restored};

/// Where containers see the WAL archive.
pub(super) const ARCHIVE: &str = "/archive";
/// Where restore containers see the target's backup repository (read-only).
const REPOSITORY: &str = "/repository";
/// A base backup's folder inside its backup folder.
const BASE: &str = "pgdata";
/// Where pg_basebackup writes inside the primary before the copy out.
const STAGING: &str = "/tmp/drillrig-basebackup";

/// Copies a finished segment in under a temporary name, records its sha256 next to it, then
/// renames it: a segment name in the archive always means a whole segment.
const ARCHIVE_COMMAND: &str = "test ! -f /archive/%f && cp %p /archive/%f.part \
     && sha256sum /archive/%f.part | cut -c1-64 > /archive/%f.sha256 && mv /archive/%f.part /archive/%f";

/// Creates the archive folder. The server writes there as its own user, whose uid the host does
/// not know, hence the open mode (the folder sits inside the run folder).
pub(super) fn prepare_archive(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
        .with_context(|| format!("open {} to the server", dir.display()))
}

/// The primary's command line: archive every segment, and switch segments at least every
/// `archive_timeout`.
pub(super) fn archiving_command(archive_timeout: Option<Duration>) -> Vec<String> {
    let timeout = archive_timeout.unwrap_or(DEFAULT_ARCHIVE_TIMEOUT).as_secs();
    [
        "postgres".to_string(),
        "-c".into(),
        "wal_level=replica".into(),
        "-c".into(),
        "archive_mode=on".into(),
        "-c".into(),
        format!("archive_timeout={timeout}s"),
        "-c".into(),
        format!("archive_command={ARCHIVE_COMMAND}"),
    ]
    .into()
}

/// A WAL location as a number.
pub(super) fn parse_lsn(lsn: &str) -> Option<u64> {
    let (hi, lo) = lsn.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

pub(super) fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Segments per 4 GiB of WAL (the `HHHHHHHH` unit of segment names).
fn segments_per_id(segment_size: u64) -> u64 {
    0x1_0000_0000 / segment_size
}

pub(super) fn segment_name(timeline: u32, number: u64, segment_size: u64) -> String {
    let per = segments_per_id(segment_size);
    format!("{timeline:08X}{:08X}{:08X}", number / per, number % per)
}

/// `(timeline, segment number)` of a segment file name.
pub(super) fn parse_segment(name: &str, segment_size: u64) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let timeline = u32::from_str_radix(&name[..8], 16).ok()?;
    let hi = u64::from_str_radix(&name[8..16], 16).ok()?;
    let lo = u64::from_str_radix(&name[16..], 16).ok()?;
    Some((timeline, hi * segments_per_id(segment_size) + lo))
}

/// What a base backup records about its place in the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    timeline: u32,
    start_lsn: u64,
    segment_size: u64,
}

impl Position {
    fn of(backup: &Backup) -> Result<Position> {
        let d = &backup.details;
        let lsn = |k: &str| {
            d[k].as_str()
                .and_then(parse_lsn)
                .ok_or_else(|| anyhow!("backup {} records no {k}", backup.id))
        };
        Ok(Position {
            timeline: d["timeline"]
                .as_u64()
                .ok_or_else(|| anyhow!("backup {} records no timeline", backup.id))?
                as u32,
            start_lsn: lsn("start_lsn")?,
            segment_size: d["wal_segment_size"]
                .as_u64()
                .ok_or_else(|| anyhow!("backup {} records no segment size", backup.id))?,
        })
    }

    fn start_segment(&self) -> u64 {
        self.start_lsn / self.segment_size
    }

    fn name(&self, number: u64) -> String {
        segment_name(self.timeline, number, self.segment_size)
    }
}

/// The archive's whole segments of one timeline, by number.
fn archived_segments(archive: &Path, p: &Position) -> Result<BTreeMap<u64, String>> {
    let mut segments = BTreeMap::new();
    let listed = match std::fs::read_dir(archive) {
        // No archive (nothing of it reached the DR site) holds no segment.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(segments),
        listed => listed.with_context(|| format!("list {}", archive.display()))?,
    };
    for entry in listed {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some((timeline, number)) = parse_segment(&name, p.segment_size)
            && timeline == p.timeline
        {
            segments.insert(number, name);
        }
    }
    Ok(segments)
}

/// The archive as seen from a base backup: how far replay can go from it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chain {
    /// Segments from the backup's start onward, in order.
    present: Vec<u64>,
    /// Segments missing between the backup's start and the newest archived segment.
    missing: Vec<u64>,
}

impl Chain {
    fn read(archive: &Path, p: &Position) -> Result<Chain> {
        let segments = archived_segments(archive, p)?;
        let present: Vec<u64> = segments
            .range(p.start_segment()..)
            .map(|(n, _)| *n)
            .collect();
        let missing = match present.last() {
            Some(&newest) => (p.start_segment()..=newest)
                .filter(|n| !segments.contains_key(n))
                .collect(),
            None => Vec::new(),
        };
        Ok(Chain { present, missing })
    }

    /// The end of the WAL replay can reach, when a gap stops it: the end of the last segment
    /// before the first missing one.
    fn reachable_end(&self, p: &Position) -> Option<u64> {
        self.missing.first().map(|&gap| gap * p.segment_size)
    }

    /// Whether replay from the backup can read all of segment `n`.
    fn reaches(&self, n: u64) -> bool {
        self.missing.first().is_none_or(|&gap| n < gap) && self.present.contains(&n)
    }

    /// The end of the last segment replay can read, if the archive holds any.
    fn end(&self, p: &Position) -> Option<u64> {
        self.reachable_end(p)
            .or_else(|| self.present.last().map(|&n| (n + 1) * p.segment_size))
    }
}

/// The archive step of a restore (`archive` phase), as an operator does it: while the primary
/// still answers, force a segment switch and wait until the archive holds the switched segment,
/// so every WAL record written so far can be replayed. With the primary gone, or the archive
/// not there in time (`timeouts.archive`), the archive is what there is: a point beyond it is
/// given up for its end, and the ledger measures what that cost.
async fn settle_archive(
    pg: &Postgres,
    archive: &Path,
    position: &Position,
) -> Result<(Chain, String)> {
    let clock = &pg.service.env.clock;
    let switched = async {
        let client = pg.connect().await?;
        let row = client
            .query_one("SELECT pg_switch_wal()::text", &[])
            .await
            .map_err(|e| anyhow!("switch WAL segments: {}", error_line(&e)))?;
        let lsn: String = row.get(0);
        parse_lsn(&lsn).ok_or_else(|| anyhow!("pg_switch_wal returned {lsn:?}"))
    };
    let switched = match tokio::time::timeout(Duration::from_secs(10), switched).await {
        Ok(Ok(lsn)) => lsn,
        Ok(Err(e)) => {
            let chain = Chain::read(archive, position)?;
            return Ok((
                chain,
                format!(
                    "the primary does not answer ({e:#}): no segment switch, the archive is as the fault left it"
                ),
            ));
        }
        Err(_) => {
            let chain = Chain::read(archive, position)?;
            return Ok((chain, "the primary did not switch WAL segments within 10s: the archive is as the fault left it".into()));
        }
    };
    // The segment holding the last byte before the switch point (a switch at a segment boundary
    // closed the one before it).
    let needed = switched.saturating_sub(1) / position.segment_size;
    let name = position.name(needed);
    let began = clock.micros();
    let limit = pg.service.env.timeouts.archive;
    loop {
        let chain = Chain::read(archive, position)?;
        let waited = Duration::from_micros(clock.micros().saturating_sub(began));
        if chain.present.contains(&needed) {
            let account = format!(
                "forced a WAL segment switch at {}; segment {name} was archived {} later",
                format_lsn(switched),
                crate::util::seconds(waited.as_millis() as u64)
            );
            return Ok((chain, account));
        }
        if waited >= limit {
            let account = format!(
                "forced a WAL segment switch at {}, but segment {name} was not archived within {} (timeouts.archive)",
                format_lsn(switched),
                humantime::format_duration(limit)
            );
            return Ok((chain, account));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(super) async fn take(pg: &Postgres, dir: &Path) -> Result<FreshBackup> {
    let c = pg.service.containers.serving()?;
    let docker = &pg.service.env.docker;
    let client = pg.connect().await?;
    let segment_size: i64 = client
        .query_one(
            "SELECT pg_size_bytes(current_setting('wal_segment_size'))",
            &[],
        )
        .await
        .map_err(|e| anyhow!("read the WAL segment size: {}", error_line(&e)))?
        .get(0);
    docker.exec(c, "postgres", &["rm", "-rf", STAGING]).await?;
    let cmd = [
        "pg_basebackup",
        "-D",
        STAGING,
        "-Fp",
        "-X",
        "stream",
        "-c",
        "fast",
        "--manifest-checksums=SHA256",
        "-l",
        "drillrig",
    ];
    let out = docker.exec(c, "postgres", &cmd).await?;
    // A base backup restores to its end (the WAL it streamed up to `End-LSN`), never to an
    // earlier point: it is consistent as of the moment pg_basebackup returned.
    let consistent_at = pg.service.env.clock.micros();
    if !out.success() {
        bail!(
            "pg_basebackup exited with {}: {}",
            out.exit_code,
            out.tail()
        );
    }
    let artefacts = docker
        .download_dir(c, STAGING, &dir.join(BASE), BASE)
        .await?;
    docker.exec(c, "postgres", &["rm", "-rf", STAGING]).await?;
    let manifest_path = dir.join(BASE).join("backup_manifest");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&manifest_path)
            .with_context(|| format!("read {}", manifest_path.display()))?,
    )
    .with_context(|| format!("parse {}", manifest_path.display()))?;
    let range = &manifest["WAL-Ranges"][0];
    let (start, end) = (
        range["Start-LSN"].as_str().unwrap_or_default(),
        range["End-LSN"].as_str().unwrap_or_default(),
    );
    let timeline = range["Timeline"]
        .as_u64()
        .ok_or_else(|| anyhow!("backup_manifest has no WAL range"))?;
    let start_lsn =
        parse_lsn(start).ok_or_else(|| anyhow!("backup_manifest start LSN {start:?}"))?;
    Ok(FreshBackup {
        consistent_at,
        held: None,
        artefacts,
        contents: Contents::new(),
        max_seq: None,
        details: json!({
            "timeline": timeline,
            "start_lsn": start,
            "end_lsn": end,
            "start_segment": segment_name(timeline as u32, start_lsn / segment_size as u64, segment_size as u64),
            "wal_segment_size": segment_size,
        }),
    })
}

pub(super) async fn restore(
    pg: &mut Postgres,
    request: &RestoreRequest<'_>,
    phases: &mut RecoveryPhases,
) -> Result<Restored> {
    let backup = request.backup;
    let position = Position::of(backup)?;
    phases.enter(Phase::Archive);
    // The archive beside the backup: the site's, or what the DR site fetched after a loss.
    let archive = backup.archive();
    let (chain, prepared) = settle_archive(pg, &archive, &position).await?;
    let reachable = chain.reachable_end(&position);
    let mut note = chain.missing.first().map(|&gap| {
        format!(
            "WAL segment {} is missing from the archive: replay from backup {} stops at {}, the end of segment {}",
            position.name(gap),
            backup.id,
            format_lsn(gap * position.segment_size),
            position.name(gap.saturating_sub(1)),
        )
    });
    let mut target = None;
    let recovery_target = match request.point {
        RestorePoint::Latest
        | RestorePoint::Restart
        | RestorePoint::InPlace
        | RestorePoint::Failover => "the end of the archive".to_string(),
        RestorePoint::BeforeFault => {
            let point = request
                .recovery_point
                .ok_or_else(|| anyhow!("no recovery point was captured before the fault"))?;
            let lsn = parse_lsn(&point.label)
                .ok_or_else(|| anyhow!("recovery point {:?} is not a WAL location", point.label))?;
            match reachable {
                Some(end) if lsn > end => {
                    note = note.map(|n| format!("{n}; the point before the fault ({}) lies beyond it, so the restore goes as far as it can", point.label));
                    "the end of the archive (the point before the fault is beyond a gap)"
                        .to_string()
                }
                // The WAL holding the point never reached the archive: replay what there is.
                _ if !chain.reaches(lsn / position.segment_size) => {
                    let end = chain
                        .end(&position)
                        .map_or("the backup's own WAL".to_string(), format_lsn);
                    note = Some(format!(
                        "the WAL at the point before the fault ({}) is not in the archive: the restore replays to its end ({end}), and every write after it is lost",
                        point.label
                    ));
                    "the end of the archive (the point before the fault was never archived)"
                        .to_string()
                }
                _ => {
                    target = Some(("recovery_target_lsn", point.label.clone()));
                    format!("lsn {} (captured before the fault)", point.label)
                }
            }
        }
        RestorePoint::At(when) => {
            let when = overrides::target_time(when);
            let described = format!("time {when}");
            target = Some(("recovery_target_time", when));
            described
        }
    };

    let recovery = Recovery {
        restore_command: Some(format!("cp {ARCHIVE}/%f %p")),
        target,
        timeline: "current",
    };
    let settings = recovery.settings();

    phases.enter(Phase::Provision);
    let (name, volume) = pg.service.next_container().await?;
    let loader = ContainerSpec {
        name: format!("{name}-loader"),
        image: pg.service.env.image.clone(),
        env: Vec::new(),
        cmd: vec!["infinity".into()],
        port: PORT,
        volume: Some((volume.clone(), PGDATA.into())),
        binds: vec![(backup.repository().to_path_buf(), REPOSITORY.into(), true)],
        entrypoint: Some("sleep".into()),
        copy_in: Vec::new(),
        files: Vec::new(),
        hostname: None,
        net_admin: false,
        startup_timeout: pg.service.env.timeouts.provision,
    };
    let docker = pg.service.env.docker.clone();
    let helper = docker.start(&loader).await?;

    phases.enter(Phase::Fetch);
    let folder = backup
        .dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("backup {} has no folder", backup.id))?;
    let script = format!(
        "cp -a {REPOSITORY}/{folder}/{BASE}/. {PGDATA}/ && {}",
        recovery.prepare_script()
    );
    let copied = docker.exec(&helper, "root", &["sh", "-c", &script]).await?;
    docker.remove(&helper).await?;
    if !copied.success() {
        bail!(
            "copying base backup {} into the new data volume failed: {}",
            backup.id,
            copied.tail()
        );
    }

    let mut overridden = overrides::file_lines(&copied.stdout);

    phases.enter(Phase::Restore);
    let cmd = overrides::command(&settings);
    let binds = vec![
        (archive, ARCHIVE.into(), true),
        (backup.repository().to_path_buf(), REPOSITORY.into(), true),
    ];
    let spec = pg.container_spec(name, volume, cmd, binds);
    let image = pg.service.env.image.clone();
    pg.start_container(spec, Ready::Promoted, pg.service.env.timeouts.restore)
        .await
        .map_err(|e| overrides::explain_start_failure(e, &image))?;
    let reached = recovery_end(pg).await;
    overridden.extend(overrides::replaced(pg, &settings).await);
    Ok(Restored {
        recovery_target: Some(recovery_target),
        reached,
        prepared: Some(prepared),
        note,
        consistent_at: None,
        overrides: overridden,
        ..Restored::default()
    })
}

/// Where recovery stopped, from the server's own log lines.
async fn recovery_end(pg: &Postgres) -> Option<String> {
    let c = pg.service.containers.serving().ok()?;
    let logs = pg.service.env.docker.logs(c).await.ok()?;
    let logs = String::from_utf8_lossy(&logs);
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| {
            l.contains("recovery stopping")
                || l.contains("redo done at")
                || l.contains("selected new timeline ID")
        })
        .map(|l| l.split_once("LOG:").map_or(l, |(_, m)| m).trim())
        .collect();
    (!lines.is_empty()).then(|| lines.join("; "))
}

/// `delete-wal-segment`: removes a segment from the middle of what the newest base backup needs.
pub(super) fn delete_segment(pg: &Postgres, backups: &[Backup]) -> Result<serde_json::Value> {
    let newest = backups
        .last()
        .ok_or_else(|| anyhow!("no base backup has been taken yet"))?;
    let position = Position::of(newest)?;
    let archive = pg.archive_dir();
    let segments = archived_segments(&archive, &position)?;
    let since_start = segments.range(position.start_segment()..).count();
    // The base backup carries its own copy of the WAL up to its end (`-X stream`): a gap that
    // replay must cross lies after the segment holding the end, with more archive behind it.
    let end = newest.details["end_lsn"]
        .as_str()
        .and_then(parse_lsn)
        .ok_or_else(|| anyhow!("backup {} records no end_lsn", newest.id))?;
    let after: Vec<(&u64, &String)> = segments.range(end / position.segment_size + 1..).collect();
    if after.len() < 2 {
        bail!(
            "the archive holds {} segment(s) after the end of base backup {}; a gap in the middle needs at least 2 (fire the fault later, or lower archive_timeout)",
            after.len(),
            newest.id
        );
    }
    let (&number, name) = after[(after.len() - 1) / 2];
    std::fs::remove_file(archive.join(name)).with_context(|| format!("remove {name}"))?;
    Ok(json!({
        "segment": name,
        "lsn_from": format_lsn(number * position.segment_size),
        "lsn_to": format_lsn((number + 1) * position.segment_size),
        "base_backup": newest.id,
        "segments_since_base_backup": since_start,
    }))
}

/// `wal-continuity`: every segment from the restored base backup's start to the newest archived
/// one is there, and matches the sha256 recorded when it was archived.
pub(super) fn wal_continuity(evidence: &Evidence<'_>) -> CheckResult {
    let check = CheckKind::WalContinuity;
    let Some(backup) = evidence.backup else {
        return CheckResult::unknown(check, "no base backup was restored");
    };
    let run = || -> Result<CheckResult> {
        let position = Position::of(backup)?;
        let archive = backup.archive();
        let chain = Chain::read(&archive, &position)?;
        let mut problems: Vec<String> = chain
            .missing
            .iter()
            .map(|&n| {
                format!(
                    "segment {} ({}–{}) is missing",
                    position.name(n),
                    format_lsn(n * position.segment_size),
                    format_lsn((n + 1) * position.segment_size)
                )
            })
            .collect();
        for &n in &chain.present {
            let name = position.name(n);
            let recorded = std::fs::read_to_string(archive.join(format!("{name}.sha256")));
            match recorded {
                Err(_) => problems.push(format!("segment {name} has no recorded sha256")),
                Ok(recorded) => {
                    let (actual, _) = sha256_file(&archive.join(&name))?;
                    if recorded.trim() != actual {
                        problems.push(format!(
                            "segment {name} differs from the sha256 recorded when it was archived"
                        ));
                    }
                }
            }
        }
        let (Some(first), Some(last)) = (chain.present.first(), chain.present.last()) else {
            return Ok(CheckResult::failed(
                check,
                format!(
                    "no archived segment from base backup {}'s start on",
                    backup.id
                ),
            ));
        };
        Ok(CheckResult::from_problems(
            check,
            format!(
                "{} segment(s) {}…{} contiguous from base backup {}, each matching its sha256",
                chain.present.len(),
                position.name(*first),
                position.name(*last),
                backup.id
            ),
            problems,
        ))
    };
    run().unwrap_or_else(|e| CheckResult::unknown(check, format!("{e:#}")))
}

/// `pg-verifybackup` on the restored base backup, in the restored container.
pub(super) async fn verify_backup(pg: &Postgres, evidence: &Evidence<'_>) -> CheckResult {
    let check = CheckKind::PgVerifybackup;
    let (Some(backup), Ok(c)) = (evidence.backup, pg.service.containers.serving()) else {
        return CheckResult::unknown(check, "no base backup was restored");
    };
    let Some(folder) = backup.dir.file_name().and_then(|n| n.to_str()) else {
        return CheckResult::unknown(check, format!("backup {} has no folder", backup.id));
    };
    let path = format!("{REPOSITORY}/{folder}/{BASE}");
    // As root: the repository's files belong to the host user.
    let ran = pg
        .service
        .env
        .docker
        .exec(c, "root", &["pg_verifybackup", &path])
        .await;
    crate::checks::from_tool(check, "pg_verifybackup", backup.id, ran, |_| {
        format!(
            "pg_verifybackup: backup {} is valid (files and WAL against its manifest)",
            backup.id
        )
    })
}

/// The newest segment in `archive` archived before `before` (the fault), with its archive time
/// (run µs). After a site loss, `archive` is what the DR site fetched, each file dated as the
/// site archived it.
pub(super) fn newest_archived(
    pg: &Postgres,
    archive: &Path,
    before: crate::clock::Micros,
) -> Result<Option<(String, crate::clock::Micros)>> {
    let limit = pg.service.env.clock.wall_at(before);
    let mut newest: Option<(String, crate::clock::Micros)> = None;
    for entry in std::fs::read_dir(archive)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let archived = entry.metadata()?.modified()?;
        if archived > limit {
            continue;
        }
        let at = pg.service.env.clock.offset_of_wall(archived);
        if newest.as_ref().is_none_or(|(_, t)| at > *t) {
            newest = Some((name, at));
        }
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn lsns_round_trip() {
        assert_eq!(parse_lsn("0/3000148"), Some(0x3000148));
        assert_eq!(parse_lsn("1A/FF"), Some((0x1A << 32) | 0xFF));
        assert_eq!(format_lsn(0x3000148), "0/3000148");
        assert_eq!(parse_lsn("nonsense"), None);
    }

    #[test]
    fn segment_names_follow_postgres() {
        // 16 MB segments: 256 per 4 GiB; 1 MB: 4096.
        assert_eq!(segment_name(1, 3, 16 * MB), "000000010000000000000003");
        assert_eq!(segment_name(1, 256, 16 * MB), "000000010000000100000000");
        assert_eq!(segment_name(2, 4097, MB), "000000020000000100000001");
        assert_eq!(
            parse_segment("000000020000000100000001", MB),
            Some((2, 4097))
        );
        assert_eq!(parse_segment("000000010000000000000003.sha256", MB), None);
        assert_eq!(parse_segment("00000002.history", MB), None);
    }

    #[test]
    fn a_chain_stops_at_its_first_gap() {
        let dir = tempfile::tempdir().unwrap();
        let p = Position {
            timeline: 1,
            start_lsn: 3 * MB + 40,
            segment_size: MB,
        };
        for n in [2, 3, 4, 6, 7] {
            std::fs::write(dir.path().join(segment_name(1, n, MB)), b"x").unwrap();
        }
        std::fs::write(dir.path().join(segment_name(2, 5, MB)), b"other timeline").unwrap();
        let chain = Chain::read(dir.path(), &p).unwrap();
        assert_eq!(chain.present, vec![3, 4, 6, 7]);
        assert_eq!(chain.missing, vec![5]);
        assert_eq!(chain.reachable_end(&p), Some(5 * MB));
    }
}
