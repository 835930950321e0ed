//! drillrig's own settings over a restored cluster's. A physical backup (a base backup, a
//! pgBackRest set) brings the source's `postgresql.conf`, `postgresql.auto.conf` and their
//! includes, written for another host: its port and sockets, its certificates, its WAL archive,
//! its primary. Every restore of one starts the server with drillrig's connection, archive and
//! recovery settings as `-c` options, which outrank every configuration file; the loader owns
//! the files that are not settings (`pg_hba.conf`, the recovery signal files); and the report
//! lists what the backup's files set that drillrig replaced. The decisions are in
//! docs/restore-tests.md §2c.

use anyhow::anyhow;

use super::{PGDATA, PORT, Postgres, error_line};

/// How the restored server recovers.
pub(super) struct Recovery {
    /// drillrig's `restore_command`. `None`: the server starts on the WAL the backup holds
    /// (from its `backup_label`), with no signal file.
    pub restore_command: Option<String>,
    /// The one `recovery_target_*` setting drillrig chose, with its value; `None`: the end of
    /// the archive.
    pub target: Option<(&'static str, String)>,
    /// `recovery_target_timeline`: `current` for a drill's own archive, `latest` for a user's.
    pub timeline: &'static str,
}

/// Settings drillrig always sets, whatever the backup's files say (the port and the paths below
/// `PGDATA` are added by [`Recovery::settings`]).
const ALWAYS: &[(&str, &str)] = &[
    // Reached through the container's published port (the port itself is added by
    // `Recovery::settings`), and by drillrig's tools on the image's socket folder.
    ("listen_addresses", "*"),
    ("unix_socket_directories", "/var/run/postgresql"),
    ("unix_socket_group", ""),
    // Certificates and a PID file of the source host; drillrig connects without TLS, on
    // 127.0.0.1 only.
    ("ssl", "off"),
    ("external_pid_file", ""),
    // The server's log goes to the container's log, which drillrig reads and keeps.
    ("logging_collector", "off"),
    ("log_destination", "stderr"),
    // Huge pages the source host reserved are not reserved here.
    ("huge_pages", "try"),
    // Never push WAL into the source's archive, nor clean it up, nor run its end-of-recovery
    // command.
    ("archive_mode", "off"),
    ("archive_command", ""),
    ("archive_library", ""),
    ("archive_cleanup_command", ""),
    ("recovery_end_command", ""),
    // Never follow the source's primary; never wait for its synchronous standbys (a commit
    // would wait forever).
    ("primary_conninfo", ""),
    ("primary_slot_name", ""),
    ("synchronous_standby_names", ""),
];

/// Every recovery target setting: the one drillrig chose is set, the others are cleared (a
/// stale one in the backup's files would stop the replay early, or clash with drillrig's).
const TARGETS: [&str; 5] = [
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
];

/// Settings whose values can carry credentials (a password in a connection string, a key in a
/// command): the report names them without the backup's value.
const NOT_SHOWN: &[&str] = &[
    "archive_command",
    "archive_cleanup_command",
    "recovery_end_command",
    "restore_command",
    "primary_conninfo",
];

/// drillrig's `pg_hba.conf`: the local socket is trusted (inside the scratch container only),
/// logins over TCP need a password.
const HBA: &str = "local all all trust\nhost all all all scram-sha-256\n";

impl Recovery {
    /// Every setting the restored server starts with, each name once.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let mut settings = vec![("port", PORT.to_string())];
        settings.extend(
            ALWAYS
                .iter()
                .map(|(name, value)| (*name, value.to_string())),
        );
        settings.extend([
            ("data_directory", PGDATA.to_string()),
            ("hba_file", format!("{PGDATA}/pg_hba.conf")),
            ("ident_file", format!("{PGDATA}/pg_ident.conf")),
            (
                "restore_command",
                self.restore_command.clone().unwrap_or_default(),
            ),
        ]);
        // PostgreSQL refuses a second recovery target once one is set, even an empty one
        // ("multiple recovery targets specified"): the others are cleared first.
        let chosen = self.target.as_ref().map(|(name, _)| *name);
        for name in TARGETS.into_iter().filter(|n| Some(*n) != chosen) {
            settings.push((name, String::new()));
        }
        if let Some((name, value)) = &self.target {
            settings.push((name, value.clone()));
        }
        settings.extend([
            ("recovery_target_inclusive", "on".to_string()),
            ("recovery_target_action", "promote".to_string()),
            ("recovery_target_timeline", self.timeline.to_string()),
        ]);
        settings
    }

    /// The loader's last step, a shell script run as root in the filled data folder. It owns
    /// the files that are not settings: the recovery signal (`recovery.signal` when drillrig
    /// replays an archive, none otherwise; never `standby.signal`), drillrig's `pg_hba.conf`,
    /// an empty `postgresql.conf` and `pg_ident.conf` where the backup has none (a Debian
    /// cluster keeps them outside its data folder), and the ownership the server needs. It
    /// prints one report line per file of the backup it removed or replaced.
    pub fn prepare_script(&self) -> String {
        let signal = if self.restore_command.is_some() {
            "touch recovery.signal"
        } else {
            "if [ -e recovery.signal ]; then rm recovery.signal \
             && echo 'recovery.signal: removed (the server starts on the WAL the backup holds)'; fi"
        };
        format!(
            "cd {PGDATA} \
             && if [ -e standby.signal ]; then rm standby.signal \
             && echo 'standby.signal: removed (a restore is promoted, never a standby)'; fi \
             && {signal} \
             && printf '{hba}' > pg_hba.conf \
             && echo 'pg_hba.conf: replaced with drillrig rules (local: trust; host: scram-sha-256)' \
             && touch postgresql.conf pg_ident.conf \
             && chown -R postgres:postgres {PGDATA} && chmod 700 {PGDATA}",
            hba = HBA.replace('\n', "\\n"),
        )
    }
}

/// `when` as `recovery_target_time` takes it: PostgreSQL refuses RFC 3339's `T…Z` form.
pub(super) fn target_time(when: std::time::SystemTime) -> String {
    humantime::format_rfc3339_micros(when)
        .to_string()
        .replace('T', " ")
        .replace('Z', "+00")
}

/// The server's command line: `postgres` and one `-c` per setting.
pub(super) fn command(settings: &[(&'static str, String)]) -> Vec<String> {
    let mut cmd = vec!["postgres".to_string()];
    for (name, value) in settings {
        cmd.push("-c".into());
        cmd.push(format!("{name}={value}"));
    }
    cmd
}

/// The report lines the loader's script printed ([`Recovery::prepare_script`]).
pub(super) fn file_lines(stdout: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// What the backup's configuration files set that `settings` replaced, read from the running
/// server's own parse of them (`pg_file_settings`: every file and include in the order
/// PostgreSQL reads them, `postgresql.auto.conf` last), one line per setting in `settings`'
/// order. A setting the files leave out was not replaced. Failing to read them is a line of its
/// own: the restore itself succeeded.
pub(super) async fn replaced(pg: &Postgres, settings: &[(&'static str, String)]) -> Vec<String> {
    let names: Vec<String> = settings.iter().map(|(n, _)| n.to_string()).collect();
    let read = async {
        let client = pg.connect().await?;
        client
            .query(
                "SELECT lower(name), coalesce(setting, '') FROM pg_file_settings \
                 WHERE lower(name) = ANY($1) ORDER BY seqno",
                &[&names],
            )
            .await
            .map_err(|e| anyhow!("read pg_file_settings: {}", error_line(&e)))
    };
    match read.await {
        Ok(rows) => {
            let entries: Vec<(String, String)> =
                rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            replaced_lines(&entries, settings)
        }
        Err(e) => vec![format!(
            "unknown: the backup's settings were not read ({e:#})"
        )],
    }
}

/// [`replaced`] over the files' entries `(name, value)`, in the order they were read: the last
/// entry of a name is the one the source ran on.
fn replaced_lines(
    entries: &[(String, String)],
    settings: &[(&'static str, String)],
) -> Vec<String> {
    settings
        .iter()
        .filter_map(|(name, ours)| {
            let theirs = entries.iter().rev().find(|(n, _)| n == name)?.1.as_str();
            (!same(theirs, ours)).then(|| line(name, theirs, ours))
        })
        .collect()
}

/// `name: the backup's value -> drillrig's` (`removed` when drillrig's is empty).
fn line(name: &str, theirs: &str, ours: &str) -> String {
    let theirs = if NOT_SHOWN.contains(&name) {
        "(not shown)".to_string()
    } else {
        shown(theirs)
    };
    let ours = if ours.is_empty() {
        "removed".to_string()
    } else {
        shown(ours)
    };
    format!("{name}: {theirs} -> {ours}")
}

/// A value as written in a configuration file: bare when it is a plain word or path, quoted
/// otherwise (an empty value, `*`, a list).
fn shown(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:".contains(c));
    if plain {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', "''"))
    }
}

/// Whether two values of a setting mean the same: equal, or the same boolean in PostgreSQL's
/// spellings.
fn same(a: &str, b: &str) -> bool {
    fn boolean(v: &str) -> Option<bool> {
        match v.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" | "1" => Some(true),
            "off" | "false" | "no" | "0" => Some(false),
            _ => None,
        }
    }
    a == b || matches!((boolean(a), boolean(b)), (Some(x), Some(y)) if x == y)
}

/// A server that exits at start because a library it preloads is not in the image: the error
/// names the library, and `shared_preload_libraries` as the setting that asks for it (the only
/// libraries a server loads before it answers). Any other error is returned as it is.
pub(super) fn explain_start_failure(e: anyhow::Error, image: &str) -> anyhow::Error {
    let text = format!("{e:#}");
    let marker = "could not access file \"";
    let library = text
        .find(marker)
        .map(|at| &text[at + marker.len()..])
        .and_then(|rest| rest.split_once('"'))
        .map(|(library, _)| library.to_string());
    match library {
        Some(library) if text.contains("exited") => anyhow!(
            "the backup's shared_preload_libraries names {library:?}, which image {image} does not have, so PostgreSQL cannot start: restore with an image that has it (the target's `image`, or --image) ({text})"
        ),
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(settings: &'a [(&'static str, String)], name: &str) -> &'a str {
        let found: Vec<&String> = settings
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(found.len(), 1, "{name} is set once");
        found[0]
    }

    #[test]
    fn a_replay_sets_its_own_target_and_clears_every_other() {
        let settings = Recovery {
            restore_command: Some("cp /archive/%f %p".into()),
            target: Some(("recovery_target_time", "2026-12-01 02:00:00+00".into())),
            timeline: "latest",
        }
        .settings();
        assert_eq!(value(&settings, "restore_command"), "cp /archive/%f %p");
        assert_eq!(
            value(&settings, "recovery_target_time"),
            "2026-12-01 02:00:00+00"
        );
        for name in [
            "recovery_target",
            "recovery_target_lsn",
            "recovery_target_name",
            "recovery_target_xid",
        ] {
            assert_eq!(value(&settings, name), "", "{name}");
        }
        let targets: Vec<&str> = settings
            .iter()
            .filter(|(n, _)| TARGETS.contains(n))
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(targets.len(), TARGETS.len());
        assert_eq!(
            targets.last(),
            Some(&"recovery_target_time"),
            "the chosen target comes after the cleared ones"
        );
        assert_eq!(value(&settings, "recovery_target_action"), "promote");
        assert_eq!(value(&settings, "archive_mode"), "off");
        assert_eq!(value(&settings, "archive_command"), "");
        assert_eq!(value(&settings, "primary_conninfo"), "");
        assert_eq!(value(&settings, "port"), PORT.to_string());
        assert_eq!(
            value(&settings, "hba_file"),
            format!("{PGDATA}/pg_hba.conf")
        );
    }

    #[test]
    fn without_an_archive_no_restore_command_and_no_signal_file() {
        let recovery = Recovery {
            restore_command: None,
            target: None,
            timeline: "latest",
        };
        let settings = recovery.settings();
        assert_eq!(value(&settings, "restore_command"), "");
        for name in TARGETS {
            assert_eq!(value(&settings, name), "", "{name}");
        }
        let script = recovery.prepare_script();
        assert!(script.contains("rm recovery.signal"), "{script}");
        assert!(script.contains("rm standby.signal"), "{script}");
        assert!(!script.contains("touch recovery.signal"), "{script}");
        let with_archive = Recovery {
            restore_command: Some("cp /archive/%f %p".into()),
            ..recovery
        }
        .prepare_script();
        assert!(with_archive.contains("touch recovery.signal"));
        assert!(with_archive.contains("rm standby.signal"));
    }

    #[test]
    fn the_command_line_carries_one_option_per_setting() {
        let cmd = command(&[("port", "5432".into()), ("archive_command", String::new())]);
        assert_eq!(
            cmd,
            ["postgres", "-c", "port=5432", "-c", "archive_command="]
        );
    }

    #[test]
    fn the_report_lists_what_the_files_set_differently_the_last_entry_winning() {
        let settings = Recovery {
            restore_command: Some("cp /archive/%f %p".into()),
            target: None,
            timeline: "latest",
        }
        .settings();
        let entries: Vec<(String, String)> = [
            ("listen_addresses", "*"),
            ("port", "5433"),
            // postgresql.conf said '*', an include later said '': the include wins.
            ("listen_addresses", ""),
            ("unix_socket_directories", "/srv/source/sockets"),
            ("ssl", "true"),
            ("logging_collector", "off"),
            ("archive_mode", "on"),
            ("archive_command", "PGPASSWORD=secret cp %p /mnt/archive/%f"),
            ("primary_conninfo", "host=primary password=secret"),
            ("recovery_target_name", "before upgrade"),
            ("restore_command", "cp /archive/%f %p"),
            ("shared_buffers", "4GB"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        let lines = replaced_lines(&entries, &settings);
        assert_eq!(
            lines,
            [
                "port: 5433 -> 5432",
                "listen_addresses: '' -> '*'",
                "unix_socket_directories: /srv/source/sockets -> /var/run/postgresql",
                "ssl: true -> off",
                "archive_mode: on -> off",
                "archive_command: (not shown) -> removed",
                "primary_conninfo: (not shown) -> removed",
                "recovery_target_name: 'before upgrade' -> removed",
            ]
        );
        assert!(!lines.join("\n").contains("secret"));
    }

    #[test]
    fn a_missing_preloaded_library_is_named() {
        let e = anyhow!(
            "container drillrig-x-db-1 exited (code 1) before PostgreSQL answered: connection refused; its log ends: 2026-12-04 FATAL:  could not access file \"timescaledb\": No such file or directory | LOG:  database system is shut down"
        );
        let said = format!(
            "{:#}",
            explain_start_failure(e, "drillrig/postgres:15-bookworm")
        );
        assert!(
            said.starts_with("the backup's shared_preload_libraries names \"timescaledb\", which image drillrig/postgres:15-bookworm does not have"),
            "{said}"
        );
        let other = anyhow!("container x exited (code 1): FATAL: could not create lock file");
        assert_eq!(
            format!("{:#}", explain_start_failure(other, "img")),
            "container x exited (code 1): FATAL: could not create lock file"
        );
    }

    #[test]
    fn the_loader_reports_each_file_it_changed() {
        assert_eq!(
            file_lines(b"standby.signal: removed (x)\n\npg_hba.conf: replaced\n"),
            ["standby.signal: removed (x)", "pg_hba.conf: replaced"]
        );
    }
}
