//! What a backup is, told from its first bytes and never from its name, and the time the
//! format itself records (docs/restore-tests.md §2).

use std::io::Read;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// How many leading bytes [`sniff`] reads.
pub const HEAD: usize = 64 << 10;

/// A backup format drillrig restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// `pg_dump -Fc`.
    PgCustom,
    /// `pg_dump -Ft`.
    PgTar,
    /// `pg_dump -Fd` (a folder with `toc.dat`).
    PgDirectory,
    /// `pg_dump` plain SQL.
    PgPlain,
    /// `pg_dumpall`.
    PgDumpall,
    /// `pg_basebackup -Ft` (`base.tar`, `base.tar.gz`): replayed from a WAL archive.
    PgBaseTar,
    /// `pg_basebackup -Fp` (a data folder with `backup_label`): copied into a fresh volume.
    PgBasePlain,
    /// A pgBackRest repository (`backup/STANZA/backup.info`, `archive/STANZA/`): restored by
    /// pgbackrest itself.
    #[serde(rename = "pgbackrest")]
    PgBackRest,
    /// A Redis RDB file (`dump.rdb`).
    RedisRdb,
    /// A Redis 7 AOF folder (`appendonlydir`: a manifest, a base file, incremental files).
    RedisAof,
    /// A RabbitMQ definitions export (`rabbitmqctl export_definitions`, management API).
    RabbitmqDefinitions,
}

impl Format {
    /// Every format; each kind names the ones it restores (`Capabilities::source_formats`).
    pub const ALL: &'static [Format] = &[
        Format::PgCustom,
        Format::PgTar,
        Format::PgDirectory,
        Format::PgPlain,
        Format::PgDumpall,
        Format::PgBaseTar,
        Format::PgBasePlain,
        Format::PgBackRest,
        Format::RedisRdb,
        Format::RedisAof,
        Format::RabbitmqDefinitions,
    ];

    /// The file a backup of this format may have beside it, fetched with it: a tar base
    /// backup's manifest (for `pg-verifybackup`), drillrig's message export beside a definitions
    /// export (its messages are republished).
    pub fn companion(self) -> Option<&'static str> {
        match self {
            Format::PgBaseTar => Some("backup_manifest"),
            Format::RabbitmqDefinitions => Some("messages.jsonl"),
            _ => None,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Format::PgCustom => "pg_dump custom archive",
            Format::PgTar => "pg_dump tar archive",
            Format::PgDirectory => "pg_dump directory archive",
            Format::PgPlain => "pg_dump plain SQL",
            Format::PgDumpall => "pg_dumpall SQL",
            Format::PgBaseTar => "pg_basebackup tar",
            Format::PgBasePlain => "pg_basebackup plain folder",
            Format::PgBackRest => "pgBackRest repository",
            Format::RedisRdb => "Redis RDB snapshot",
            Format::RedisAof => "Redis AOF folder",
            Format::RabbitmqDefinitions => "RabbitMQ definitions export",
        }
    }
}

/// A compression wrapped around a backup, removed before the restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression `head` starts with, if any.
    pub fn of(head: &[u8]) -> Option<Compression> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else {
            None
        }
    }

    /// A reader that removes this compression from `inner`.
    pub fn reader<'a, R: Read + 'a>(self, inner: R) -> std::io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(inner)),
            Compression::Zstd => Box::new(
                ruzstd::decoding::StreamingDecoder::new(inner)
                    .map_err(|e| std::io::Error::other(format!("zstd: {e}")))?,
            ),
        })
    }
}

/// What the first bytes of a backup say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sniffed {
    pub format: Format,
    pub compression: Option<Compression>,
    /// When the backup was made, as the format records it.
    pub made_at: Option<SystemTime>,
    /// PostgreSQL archives: the database the dump was taken from.
    pub database: Option<String>,
}

/// Tells the format from `head` (the first [`HEAD`] bytes of a file, or of a folder's
/// `toc.dat`, `backup_label` or AOF manifest when `folder` is set); `None` when it is none
/// drillrig knows.
pub fn sniff(head: &[u8], folder: bool) -> Option<Sniffed> {
    if let Some(c) = Compression::of(head) {
        let mut inner = Vec::new();
        // A truncated head decompresses as far as it goes.
        let _ = c
            .reader(head)
            .ok()?
            .take(HEAD as u64)
            .read_to_end(&mut inner);
        let mut s = sniff(&inner, folder)?;
        if s.compression.is_some() {
            return None;
        }
        s.compression = Some(c);
        return Some(s);
    }
    let plain = |format| Sniffed {
        format,
        compression: None,
        made_at: None,
        database: None,
    };
    if head.starts_with(b"PGDMP") {
        let (made_at, database) = archive_header(head).unwrap_or((None, None));
        let format = if folder {
            Format::PgDirectory
        } else {
            Format::PgCustom
        };
        return Some(Sniffed {
            made_at,
            database,
            ..plain(format)
        });
    }
    if head.len() > 512 + 5 && &head[257..262] == b"ustar" && head.starts_with(b"toc.dat\0") {
        let (made_at, database) = archive_header(&head[512..]).unwrap_or((None, None));
        return Some(Sniffed {
            made_at,
            database,
            ..plain(Format::PgTar)
        });
    }
    if head.len() > 512 && &head[257..262] == b"ustar" && head.starts_with(b"backup_label\0") {
        let label = String::from_utf8_lossy(&head[512..head.len().min(512 + 4096)]);
        return Some(Sniffed {
            made_at: label_start_time(&label),
            ..plain(Format::PgBaseTar)
        });
    }
    let text = String::from_utf8_lossy(&head[..head.len().min(4096)]);
    // A plain base backup's `backup_label`.
    if folder && text.starts_with("START WAL LOCATION: ") {
        return Some(Sniffed {
            made_at: label_start_time(&text),
            ..plain(Format::PgBasePlain)
        });
    }
    // Redis 7's AOF manifest: `file appendonly.aof.1.base.rdb seq 1 type b` lines.
    if folder
        && text.lines().next().is_some_and(|l| l.starts_with("file "))
        && text.lines().any(|l| l.ends_with(" type b"))
    {
        return Some(plain(Format::RedisAof));
    }
    if text.starts_with("--\n-- PostgreSQL database cluster dump") {
        return Some(plain(Format::PgDumpall));
    }
    if text.starts_with("--\n-- PostgreSQL database dump") {
        let database = text
            .lines()
            .find_map(|l| l.strip_prefix("CREATE DATABASE "))
            .and_then(|rest| rest.split_whitespace().next())
            .map(|n| n.trim_matches('"').to_string());
        return Some(Sniffed {
            database,
            ..plain(Format::PgPlain)
        });
    }
    if head.len() >= 9 && head.starts_with(b"REDIS") && head[5..9].iter().all(u8::is_ascii_digit) {
        return Some(Sniffed {
            made_at: rdb_ctime(head),
            ..plain(Format::RedisRdb)
        });
    }
    let trimmed = text.trim_start();
    if trimmed.starts_with('{')
        && (text.contains("\"rabbit_version\"") || text.contains("\"rabbitmq_version\""))
    {
        return Some(plain(Format::RabbitmqDefinitions));
    }
    None
}

/// A pg_dump archive header (custom format, or a tar or directory archive's `toc.dat`): the
/// creation time (the dumping host's local time with no zone, read as UTC) and the database.
fn archive_header(b: &[u8]) -> Option<(Option<SystemTime>, Option<String>)> {
    let (major, minor) = (*b.get(5)?, *b.get(6)?);
    let int_size = *b.get(8)? as usize;
    let mut at = 11;
    let int = |at: &mut usize| -> Option<i64> {
        let sign = *b.get(*at)?;
        let bytes = b.get(*at + 1..*at + 1 + int_size)?;
        *at += 1 + int_size;
        let v = bytes
            .iter()
            .rev()
            .fold(0i64, |acc, &x| (acc << 8) | x as i64);
        Some(if sign != 0 { -v } else { v })
    };
    // Archive 1.15 (PostgreSQL 16) stores the compression algorithm as one byte.
    if (major, minor) >= (1, 15) {
        at += 1;
    } else {
        int(&mut at)?;
    }
    let sec = int(&mut at)?;
    let min = int(&mut at)?;
    let hour = int(&mut at)?;
    let mday = int(&mut at)?;
    let mon = int(&mut at)?;
    let year = int(&mut at)?;
    let _isdst = int(&mut at)?;
    let made_at = civil_to_unix(year + 1900, mon + 1, mday)
        .map(|days| days * 86_400 + hour * 3600 + min * 60 + sec)
        .filter(|s| *s >= 0)
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s as u64));
    let len = int(&mut at)?;
    let database = usize::try_from(len)
        .ok()
        .and_then(|len| b.get(at..at + len))
        .map(|n| String::from_utf8_lossy(n).into_owned());
    Some((made_at, database))
}

/// A `backup_label`'s `START TIME: 2026-11-30 02:14:45 UTC` (the server's log time zone; a
/// zone other than UTC or GMT is read as UTC).
fn label_start_time(label: &str) -> Option<SystemTime> {
    let line = label.lines().find_map(|l| l.strip_prefix("START TIME: "))?;
    let mut parts = line.split_whitespace();
    let (date, time) = (parts.next()?, parts.next()?);
    let d: Vec<i64> = date.split('-').filter_map(|x| x.parse().ok()).collect();
    let t: Vec<i64> = time.split(':').filter_map(|x| x.parse().ok()).collect();
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    let days = civil_to_unix(d[0], d[1], d[2])?;
    let secs = days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    u64::try_from(secs)
        .ok()
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_to_unix(y: i64, m: i64, d: i64) -> Option<i64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// An RDB file's `ctime` auxiliary field: when Redis wrote it.
fn rdb_ctime(b: &[u8]) -> Option<SystemTime> {
    let mut at = 9;
    while *b.get(at)? == 0xFA {
        at += 1;
        let key = rdb_string(b, &mut at)?;
        let value = rdb_string(b, &mut at)?;
        if key == b"ctime" {
            let secs: u64 = String::from_utf8(value).ok()?.parse().ok()?;
            return Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        }
    }
    None
}

/// One RDB string (length-prefixed, or an integer encoding), as text bytes.
fn rdb_string(b: &[u8], at: &mut usize) -> Option<Vec<u8>> {
    let first = *b.get(*at)?;
    *at += 1;
    let len = match first >> 6 {
        0 => (first & 0x3f) as usize,
        1 => {
            let next = *b.get(*at)? as usize;
            *at += 1;
            (((first & 0x3f) as usize) << 8) | next
        }
        2 if first == 0x80 => {
            let v = u32::from_be_bytes(b.get(*at..*at + 4)?.try_into().ok()?);
            *at += 4;
            v as usize
        }
        2 => return None,
        _ => {
            let (n, v): (usize, i64) = match first & 0x3f {
                0 => (1, *b.get(*at)? as i8 as i64),
                1 => (
                    2,
                    i16::from_le_bytes(b.get(*at..*at + 2)?.try_into().ok()?) as i64,
                ),
                2 => (
                    4,
                    i32::from_le_bytes(b.get(*at..*at + 4)?.try_into().ok()?) as i64,
                ),
                _ => return None,
            };
            *at += n;
            return Some(v.to_string().into_bytes());
        }
    };
    let s = b.get(*at..*at + len)?.to_vec();
    *at += len;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where `format` stands in [`Format::ALL`]: a new variant does not compile here until it
    /// is listed, and the test below holds the list to it.
    fn position(format: Format) -> usize {
        use Format::*;
        match format {
            PgCustom => 0,
            PgTar => 1,
            PgDirectory => 2,
            PgPlain => 3,
            PgDumpall => 4,
            PgBaseTar => 5,
            PgBasePlain => 6,
            PgBackRest => 7,
            RedisRdb => 8,
            RedisAof => 9,
            RabbitmqDefinitions => 10,
        }
    }

    #[test]
    fn every_format_is_listed_once() {
        for (i, &f) in Format::ALL.iter().enumerate() {
            assert_eq!(position(f), i, "{f:?}");
        }
        assert_eq!(Format::ALL.len(), 11);
    }

    fn custom_header(year: i64, mon0: i64, mday: i64, hour: i64, db: &str) -> Vec<u8> {
        let mut b = b"PGDMP".to_vec();
        b.extend([1, 14, 0, 4, 8, 1]);
        let int = |b: &mut Vec<u8>, v: i64| {
            b.push(u8::from(v < 0));
            b.extend((v.unsigned_abs() as u32).to_le_bytes());
        };
        for v in [-1, 30, 15, hour, mday, mon0, year - 1900, 0] {
            int(&mut b, v);
        }
        int(&mut b, db.len() as i64);
        b.extend(db.as_bytes());
        b
    }

    #[test]
    fn a_custom_dump_header_gives_its_time_and_database() {
        let s = sniff(&custom_header(2026, 10, 30, 2, "shop"), false).unwrap();
        assert_eq!(s.format, Format::PgCustom);
        assert_eq!(s.database.as_deref(), Some("shop"));
        assert_eq!(
            humantime::format_rfc3339(s.made_at.unwrap()).to_string(),
            "2026-11-30T02:15:30Z"
        );
    }

    #[test]
    fn gzip_is_seen_through() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"--\n-- PostgreSQL database dump\n--\n")
            .unwrap();
        let s = sniff(&gz.finish().unwrap(), false).unwrap();
        assert_eq!(
            (s.format, s.compression),
            (Format::PgPlain, Some(Compression::Gzip))
        );
    }

    #[test]
    fn an_rdb_ctime_is_read_after_the_version_aux_fields() {
        let mut b = b"REDIS0010".to_vec();
        b.extend([0xFA, 9]);
        b.extend(b"redis-ver");
        b.extend([6]);
        b.extend(b"7.0.15");
        b.extend([0xFA, 10]);
        b.extend(b"redis-bits");
        b.extend([0xC0, 64]);
        b.extend([0xFA, 5]);
        b.extend(b"ctime");
        b.push(0xC2);
        b.extend(1_780_000_000u32.to_le_bytes());
        let s = sniff(&b, false).unwrap();
        assert_eq!(s.format, Format::RedisRdb);
        assert_eq!(
            s.made_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000))
        );
    }

    #[test]
    fn a_base_backup_tar_gives_its_label_start_time() {
        let mut tar = vec![0u8; 512];
        tar[..13].copy_from_slice(b"backup_label\0");
        tar[257..263].copy_from_slice(b"ustar\0");
        tar.extend(b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIME: 2026-11-30 02:14:45 UTC\n");
        let s = sniff(&tar, false).unwrap();
        assert_eq!(s.format, Format::PgBaseTar);
        assert_eq!(
            humantime::format_rfc3339(s.made_at.unwrap()).to_string(),
            "2026-11-30T02:14:45Z"
        );
    }

    #[test]
    fn a_backup_label_makes_its_folder_a_plain_base_backup() {
        let label = b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nSTART TIME: 2026-11-30 02:14:45 UTC\n";
        let s = sniff(label, true).unwrap();
        assert_eq!(s.format, Format::PgBasePlain);
        assert_eq!(
            humantime::format_rfc3339(s.made_at.unwrap()).to_string(),
            "2026-11-30T02:14:45Z"
        );
        assert_eq!(sniff(label, false), None);
    }

    #[test]
    fn an_aof_manifest_makes_its_folder_an_aof_backup() {
        let manifest =
            b"file shop.aof.2.base.rdb seq 2 type b\nfile shop.aof.2.incr.aof seq 2 type i\n";
        assert_eq!(
            sniff(manifest, true).map(|s| s.format),
            Some(Format::RedisAof)
        );
        // The manifest alone, outside its folder, restores nothing.
        assert_eq!(sniff(manifest, false), None);
    }

    #[test]
    fn names_do_not_decide_and_unknown_bytes_are_none() {
        assert_eq!(sniff(b"hello, world", false), None);
        assert_eq!(
            sniff(b"{\"rabbit_version\":\"3.10.8\",\"queues\":[]}", false).map(|s| s.format),
            Some(Format::RabbitmqDefinitions)
        );
    }
}
