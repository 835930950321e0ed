//! Base backups of a cluster configured for its own host, as production clusters are, restored
//! by `drillrig run` as drillrig's own: the source's port, listen addresses, socket folder,
//! certificate, archive, primary and a stale recovery target are replaced and listed in the
//! report, and the source's `archive_command` never runs in the restored server. The source is
//! a real PostgreSQL container that ran on those settings; its `archive_command` leaves a
//! sentinel file first, which the source itself shows works.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::{self, Run, Scratch, docker, engine, out_dir, wait_for};
use crate::restore_tests::{history, pg_test, pg_up, query, run, scenario};

/// The source's own socket folder: only its container has it.
const SOCKETS: &str = "/srv/source-host/sockets";
const PORT: &str = "5433";
/// Where the source's `archive_command` leaves one sentinel per file, before it archives: in
/// the postgres user's home, which every container of the image has and can write.
const SENTINELS: &str = "/var/lib/postgresql/archive-sentinels";
/// Rows in the table `marker` when the tar was taken, and at the end of the archive.
const ROWS_IN_TAR: u64 = 100;
const ROWS: u64 = 150;

/// Backups of the source cluster, each made with `-R` (so each carries `standby.signal` and
/// the source as `primary_conninfo`).
struct OwnConfigBackups {
    /// `base.tar` and its `backup_manifest` (`pg_basebackup -Ft -X none`), with 100 rows.
    tar: PathBuf,
    /// Every WAL file the source archived, up to its 150th row.
    wal: PathBuf,
    /// A folder holding `plain/` (`pg_basebackup -Fp -X stream`), with 150 rows.
    plain: PathBuf,
}

fn own_config_backups() -> &'static OwnConfigBackups {
    static MADE: OnceLock<OwnConfigBackups> = OnceLock::new();
    MADE.get_or_init(|| {
        let dir = out_dir("restore-tests-own-config-backups");
        std::fs::create_dir_all(&dir).unwrap();
        let c = Scratch::start(
            "drillrig-test-pg-own-config-source",
            &[
                "-e",
                "POSTGRES_PASSWORD=x",
                // 1 MB WAL segments keep the archive small.
                "-e",
                "POSTGRES_INITDB_ARGS=--data-checksums --wal-segsize=1",
                "drillrig/postgres:15-bookworm",
            ],
        );
        wait_for("the source PostgreSQL", Duration::from_secs(60), || {
            pg_up(&c)
        });
        // The host's settings: connection ones in a file postgresql.conf includes, archiving
        // and a preloaded library through ALTER SYSTEM (postgresql.auto.conf).
        c.exec(
            "root",
            &format!("mkdir -p {SOCKETS} && chown postgres:postgres {SOCKETS}"),
        );
        c.exec(
            "postgres",
            &format!(
                "printf \"port = {PORT}\\nlisten_addresses = ''\\nunix_socket_directories = '{SOCKETS}'\\n\" > $PGDATA/source-host.conf \
                 && echo \"include 'source-host.conf'\" >> $PGDATA/postgresql.conf \
                 && psql -Xq -c 'ALTER SYSTEM SET archive_mode = on' \
                    -c \"ALTER SYSTEM SET archive_command = 'mkdir -p {SENTINELS} && touch {SENTINELS}/%f && mkdir -p /var/lib/postgresql/wal && cp %p /var/lib/postgresql/wal/%f'\" \
                    -c \"ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'\""
            ),
        );
        docker(&["restart", &c.0]);
        let psql = format!("psql -X -q -h {SOCKETS} -p {PORT}");
        wait_for(
            "the source on its own port and socket",
            Duration::from_secs(60),
            || {
                Command::new("docker")
                    .args(["exec", "-u", "postgres", &c.0])
                    .args(["pg_isready", "-q", "-h", SOCKETS, "-p", PORT])
                    .status()
                    .is_ok_and(|s| s.success())
            },
        );
        let shown = c.exec(
            "postgres",
            &format!("{psql} -Atc 'SHOW port' -c 'SHOW listen_addresses' -c 'SHOW archive_mode'"),
        );
        assert_eq!(String::from_utf8_lossy(&shown), "5433\n\non\n");
        c.exec(
            "postgres",
            &format!(
                "{psql} -c 'CREATE EXTENSION pg_stat_statements' \
                 -c 'CREATE TABLE marker (id int PRIMARY KEY)' \
                 -c 'INSERT INTO marker SELECT generate_series(1, {ROWS_IN_TAR})'"
            ),
        );
        // Settings in the files the source never ran on (it is not reloaded): a certificate
        // only its host has, and a recovery target left from an earlier restore of it.
        c.exec(
            "postgres",
            &format!(
                "{psql} -c 'ALTER SYSTEM SET ssl = on' \
                 -c \"ALTER SYSTEM SET ssl_cert_file = '/srv/source-host/server.crt'\" \
                 -c \"ALTER SYSTEM SET recovery_target_name = 'source-host-old-point'\""
            ),
        );
        c.exec(
            "postgres",
            &format!(
                "pg_basebackup -h {SOCKETS} -p {PORT} -D /tmp/tar -Ft -R -X none -c fast"
            ),
        );
        c.exec(
            "postgres",
            &format!(
                "{psql} -c 'INSERT INTO marker SELECT generate_series({}, {ROWS})' -c 'SELECT pg_switch_wal()' >/dev/null",
                ROWS_IN_TAR + 1
            ),
        );
        wait_for("the last segment archived", Duration::from_secs(20), || {
            Command::new("docker")
                .args(["exec", "-u", "postgres", &c.0, "psql", "-X", "-h", SOCKETS, "-p", PORT, "-Atc"])
                .arg("SELECT last_archived_wal >= pg_walfile_name(pg_current_wal_lsn() - 1) FROM pg_stat_archiver")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "t")
        });
        // The archive_command works where it runs: a sentinel per file it archived.
        let archived = c.exec("postgres", "ls /var/lib/postgresql/wal");
        let sentinels = c.exec("postgres", &format!("ls {SENTINELS}"));
        assert!(!archived.is_empty());
        assert_eq!(
            String::from_utf8_lossy(&sentinels),
            String::from_utf8_lossy(&archived)
        );
        // The archive is copied while nothing is being archived into it.
        let copy_out = |from: &str, to: &Path| {
            docker(&["cp", &format!("{}:{from}", c.0), to.to_str().unwrap()]);
        };
        copy_out("/var/lib/postgresql/wal", &dir.join("wal"));
        copy_out("/tmp/tar", &dir.join("tar"));
        c.exec(
            "postgres",
            &format!(
                "pg_basebackup -h {SOCKETS} -p {PORT} -D /tmp/plain -Fp -R -X stream -c fast"
            ),
        );
        std::fs::create_dir_all(dir.join("plain-backups")).unwrap();
        copy_out("/tmp/plain", &dir.join("plain-backups/plain"));
        assert!(dir.join("tar/base.tar").is_file());
        OwnConfigBackups {
            tar: dir.join("tar"),
            wal: dir.join("wal"),
            plain: dir.join("plain-backups"),
        }
    })
}

/// A restore test of `source` with the row count and the preloaded library as queries.
fn body(name: &str, source: &str) -> String {
    pg_test(
        name,
        source,
        &format!(
            r#"
[[targets.db.queries]]
name = "rows"
sql = "SELECT count(*) FROM marker"
expect = "== {ROWS}"

# Fails unless the library is preloaded.
[[targets.db.queries]]
name = "pg_stat_statements"
sql = "SELECT count(*) FROM pg_stat_statements"
expect = ">= 0"
"#
        ),
    )
}

/// What every restore of these backups replaces, after the files each restore path handles.
const REPLACED_SETTINGS: [&str; 8] = [
    "port: 5433 -> 5432",
    "listen_addresses: '' -> '*'",
    "unix_socket_directories: /srv/source-host/sockets -> /var/run/postgresql",
    "ssl: on -> off",
    "archive_mode: on -> off",
    "archive_command: (not shown) -> removed",
    "primary_conninfo: (not shown) -> removed",
    "recovery_target_name: source-host-old-point -> removed",
];

fn overrides(r: &Run) -> Vec<String> {
    r.target()["restore"]["overrides"]
        .as_array()
        .unwrap_or_else(|| panic!("no restore.overrides: {}", r.target()["restore"]))
        .iter()
        .map(|o| o.as_str().unwrap().to_string())
        .collect()
}

/// Neither the source's archive_command nor its primary_conninfo reach an output.
fn assert_source_commands_hidden(r: &Run) {
    let json = std::fs::read_to_string(r.dir.join("report.json")).unwrap();
    let md = std::fs::read_to_string(r.dir.join("report.md")).unwrap();
    for text in [&json, &md, &r.stdout(), &r.stderr()] {
        assert!(!text.contains("archive-sentinels"), "archive_command shown");
        assert!(!text.contains("passfile"), "primary_conninfo shown");
    }
}

/// The run's newest container of target `db`, kept by `DRILLRIG_KEEP=always`: the restored one.
fn restored_container(r: &Run) -> String {
    let prefix = format!("drillrig-{}-db-", r.run_id());
    docker(&["ps", "--format", "{{.Names}}"])
        .lines()
        .filter_map(|n| Some((n.strip_prefix(&prefix)?.parse::<u32>().ok()?, n)))
        .max()
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| panic!("no kept container of {}", r.run_id()))
}

/// A run kept by `DRILLRIG_KEEP=always`; dropping it removes what the run left, and nothing else
/// (`common::remove_run`).
struct Kept(String);

impl Drop for Kept {
    fn drop(&mut self) {
        common::remove_run(&self.0);
    }
}

fn in_container(container: &str, script: &str) -> String {
    docker(&["exec", "-u", "postgres", container, "sh", "-c", script])
}

#[test]
fn a_tar_base_backup_of_a_cluster_set_up_for_its_own_host_restores_and_never_archives() {
    let b = own_config_backups();
    let _engine = engine();
    let source = format!("{{ path = {:?}, wal = {:?} }}", b.tar, b.wal);
    let r = run(
        &scenario("own-config-tar", &body("own-config-tar", &source)),
        "own-config-tar-run",
        &history("own-config-tar"),
        &[("DRILLRIG_KEEP", "always")],
    );
    let kept = Kept(r.run_id().to_string());
    let c = restored_container(&r);
    // The restored server, inspected before anything else: the source's archive_command leaves
    // a sentinel before anything else, in a folder the restored server's user can create
    // there. A completed segment would be queued (`.ready`) for it if archiving were on.
    let probe = format!("{SENTINELS}-probe");
    in_container(&c, &format!("mkdir {probe} && rmdir {probe}"));
    let switched = in_container(
        &c,
        "psql -X -q -c 'INSERT INTO marker VALUES (0)' && psql -X -Atc 'SELECT pg_walfile_name(pg_switch_wal())'",
    );
    let queued = in_container(&c, "ls $PGDATA/pg_wal/archive_status");
    let sentinels = in_container(&c, &format!("ls -d {SENTINELS} 2>/dev/null || true"));
    let archiver = in_container(
        &c,
        "psql -X -Atc 'SELECT archived_count, failed_count FROM pg_stat_archiver'",
    );
    drop(kept);

    assert_eq!(r.code(), Some(0), "{}", r.debug());
    let t = r.target();
    assert_eq!(t["source"]["format"], "pg-base-tar");
    assert_eq!(query(&r, "rows")["status"], "passed", "{}", r.debug());
    assert_eq!(query(&r, "pg_stat_statements")["status"], "passed");
    assert!(
        t["restore"]["reached"]
            .as_str()
            .unwrap()
            .starts_with("promoted after replaying"),
        "{}",
        t["restore"]
    );
    let mut expected = vec![
        "standby.signal: removed (a restore is promoted, never a standby)",
        "pg_hba.conf: replaced with drillrig rules (local: trust; host: scram-sha-256)",
    ];
    expected.extend(REPLACED_SETTINGS);
    assert_eq!(overrides(&r), expected);
    let md = std::fs::read_to_string(r.dir.join("report.md")).unwrap();
    assert!(
        md.contains("Replaced in the backup's configuration: `standby.signal: removed"),
        "{md}"
    );
    assert!(md.contains("`port: 5433 -> 5432`"), "{md}");
    assert_source_commands_hidden(&r);

    assert_eq!(
        switched.trim().len(),
        24,
        "a segment was completed: {switched}"
    );
    assert!(
        !queued.lines().any(|f| f.ends_with(".ready")),
        "nothing is queued for an archive_command: {queued}"
    );
    assert_eq!(sentinels.trim(), "", "the source's archive_command ran");
    assert_eq!(archiver.trim(), "0|0");
    common::assert_no_leftovers(r.run_id());
}

#[test]
fn a_plain_base_backup_of_such_a_cluster_starts_on_its_own_wal_and_a_missing_library_is_named() {
    let b = own_config_backups();
    let _engine = engine();
    let h = history("own-config-plain");
    let source = |dir: &Path| format!("{{ path = {dir:?} }}");
    let r = run(
        &scenario(
            "own-config-plain",
            &body("own-config-plain", &source(&b.plain)),
        ),
        "own-config-plain-run",
        &h,
        &[],
    );
    assert_eq!(r.code(), Some(0), "{}", r.debug());
    let t = r.target();
    assert_eq!(t["source"]["format"], "pg-base-plain");
    assert_eq!(query(&r, "rows")["status"], "passed");
    assert_eq!(query(&r, "pg_stat_statements")["status"], "passed");
    assert!(
        t["restore"]["reached"]
            .as_str()
            .unwrap()
            .starts_with("started after replaying the WAL the backup holds"),
        "{}",
        t["restore"]
    );
    let mut expected = vec![
        "standby.signal: removed (a restore is promoted, never a standby)",
        "pg_hba.conf: replaced with drillrig rules (local: trust; host: scram-sha-256)",
    ];
    expected.extend(REPLACED_SETTINGS);
    assert_eq!(overrides(&r), expected);
    assert_source_commands_hidden(&r);
    common::assert_no_leftovers(r.run_id());

    // The same backup asking for a library the image does not have.
    let missing = out_dir("own-config-missing-library");
    common::copy_tree(&b.plain, &missing);
    let conf = missing.join("plain/postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("shared_preload_libraries = 'pg_stat_statements,timescaledb'\n");
    std::fs::write(&conf, text).unwrap();
    let r = run(
        &scenario(
            "own-config-missing-library",
            &body("own-config-missing-library", &source(&missing)),
        ),
        "own-config-missing-library-run",
        &h,
        &[],
    );
    assert_eq!(r.code(), Some(1), "{}", r.debug());
    let error = r.target()["restore"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("shared_preload_libraries names \"timescaledb\", which image"),
        "{error}"
    );
    common::assert_no_leftovers(r.run_id());
}
