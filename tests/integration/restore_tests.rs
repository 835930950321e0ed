//! Restore tests of backups drillrig did not make: every backup here is made with the services'
//! own plain tools (pg_dump, pg_dumpall, redis-cli, rabbitmqctl) from a schema that is not a
//! drillrig fixture, then restored by `drillrig run` from a folder or from a real S3-compatible
//! server (s3s-fs, SigV4 on). Assertions compare with facts the test made itself: the rows it
//! inserted, the dump times it saw, the object sizes the store holds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::common::{
    self, BIN, Run, S3_SECRET, Scratch, docker, engine, out_dir, s3_env, s3_server, wait_for,
};

/// The entrypoint's final server answers: over TCP, which its temporary initdb server does not
/// listen on (a socket check would race the restart between the two).
pub(crate) fn pg_up(c: &Scratch) -> bool {
    runs_ok(&[
        "exec",
        "-u",
        "postgres",
        &c.0,
        "pg_isready",
        "-q",
        "-h",
        "127.0.0.1",
    ])
}

fn runs_ok(args: &[&str]) -> bool {
    Command::new("docker")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Rows the shop schema holds when the dumps are made.
const INVOICES: u64 = 20_000;
const NEWER_INVOICES: u64 = 20_100;

/// Backups of a `shop` database (customers, invoices with a foreign key), made once with
/// pg_dump and pg_dumpall in every format, each in a folder of its own under the returned one.
/// `s3-older` and `s3-newer` hold two custom dumps made a few seconds apart, with 20 000 and
/// 20 100 invoices; `(older made, newer made)` bracket the dumps' start times.
struct PgBackups {
    dir: PathBuf,
    /// Before and after the newer dump ran (its header time lies between).
    newer_made: (SystemTime, SystemTime),
}

fn pg_backups() -> &'static PgBackups {
    static MADE: OnceLock<PgBackups> = OnceLock::new();
    MADE.get_or_init(|| {
        let dir = out_dir("restore-tests-pg-backups");
        let c = Scratch::start(
            "drillrig-test-pg-source",
            &["-e", "POSTGRES_PASSWORD=x", "drillrig/postgres:15-bookworm"],
        );
        wait_for("the source PostgreSQL", Duration::from_secs(60), || {
            pg_up(&c)
        });
        c.exec("postgres", "psql -qc 'CREATE DATABASE shop'");
        c.exec(
            "postgres",
            &format!(
                "psql -q -d shop -c \"CREATE TABLE customer (id int PRIMARY KEY, name text NOT NULL); \
                 CREATE TABLE invoice (id serial PRIMARY KEY, customer_id int NOT NULL REFERENCES customer (id), total numeric NOT NULL); \
                 INSERT INTO customer SELECT g, 'c' || g FROM generate_series(1, 500) g; \
                 INSERT INTO invoice (customer_id, total) SELECT 1 + g % 500, g FROM generate_series(1, {INVOICES}) g;\""
            ),
        );
        let save = |folder: &str, file: &str, script: &str| {
            let d = dir.join(folder);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(file), c.exec("postgres", script)).unwrap();
        };
        save("custom", "shop.dump", "pg_dump -Fc shop");
        // Its checksum beside it, as the backup job of the shipped pg-dump-folder example writes.
        let sum = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(
                std::fs::read(dir.join("custom/shop.dump")).unwrap(),
            ))
        };
        std::fs::write(
            dir.join("custom/shop.dump.sha256"),
            format!("{sum}  shop.dump\n"),
        )
        .unwrap();
        save("tar", "shop.tar", "pg_dump -Ft shop");
        save("plain-gzip", "shop.sql.gz", "pg_dump --create shop | gzip");
        // zstd is not in the images: the host's zstd compresses the plain dump.
        let plain = c.exec("postgres", "pg_dump --create shop");
        let mut zstd = Command::new("zstd")
            .args(["-q", "-c"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the host's zstd (fixtures/env/prepare.sh installs it)");
        {
            use std::io::Write;
            zstd.stdin.take().unwrap().write_all(&plain).unwrap();
        }
        let compressed = zstd.wait_with_output().unwrap();
        assert!(compressed.status.success());
        std::fs::create_dir_all(dir.join("plain-zstd")).unwrap();
        std::fs::write(dir.join("plain-zstd/shop.sql.zst"), compressed.stdout).unwrap();
        save("dumpall", "cluster.sql", "pg_dumpall");
        // A database whose foreign key was added `NOT VALID` over a row that breaks it, as a
        // production schema may carry one: the dump restores, orphan and all.
        c.exec(
            "postgres",
            "psql -qc 'CREATE DATABASE ledger' && psql -q -d ledger -c \"\
             CREATE TABLE customer (id int PRIMARY KEY); \
             CREATE TABLE invoice (id int PRIMARY KEY, customer_id int NOT NULL); \
             INSERT INTO customer SELECT generate_series(1, 10); \
             INSERT INTO invoice SELECT g, 1 + g % 10 FROM generate_series(1, 100) g; \
             INSERT INTO invoice VALUES (101, 99); \
             ALTER TABLE invoice ADD CONSTRAINT invoice_customer_fk \
               FOREIGN KEY (customer_id) REFERENCES customer (id) NOT VALID\"",
        );
        save("orphan", "ledger.dump", "pg_dump -Fc ledger");
        c.exec("postgres", "pg_dump -Fd -f /tmp/shop.dir shop");
        std::fs::create_dir_all(dir.join("directory")).unwrap();
        docker(&[
            "cp",
            &format!("{}:/tmp/shop.dir", c.0),
            dir.join("directory/shop.dir").to_str().unwrap(),
        ]);
        save("s3-older", "shop.dump", "pg_dump -Fc shop");
        // The header records whole seconds: the newer dump must start in a later second.
        std::thread::sleep(Duration::from_millis(2100));
        c.exec(
            "postgres",
            &format!(
                "psql -q -d shop -c \"INSERT INTO invoice (customer_id, total) SELECT 1, g FROM generate_series(1, {}) g\"",
                NEWER_INVOICES - INVOICES
            ),
        );
        let before = SystemTime::now();
        save("s3-newer", "shop.dump", "pg_dump -Fc shop");
        let after = SystemTime::now();
        PgBackups {
            dir,
            newer_made: (before, after),
        }
    })
}

/// Writes a scenario into the test's folder; returns its path.
pub(crate) fn scenario(test: &str, body: &str) -> PathBuf {
    let dir = out_dir(&format!("{test}-scenario"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{test}.toml"));
    std::fs::write(&path, body).unwrap();
    path
}

/// `drillrig run` of one scenario into `out`, with `history`.
pub(crate) fn run(path: &Path, out: &str, history: &Path, env: &[(&str, &str)]) -> Run {
    let dir = out_dir(out);
    let output = Command::new(BIN)
        .args([
            "run",
            path.to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
        ])
        .args(["--history", history.to_str().unwrap()])
        .envs(env.iter().copied())
        .output()
        .expect("run drillrig");
    let report = std::fs::read_to_string(dir.join("report.json"))
        .map(|t| serde_json::from_str(&t).expect("report.json parses"))
        .unwrap_or(Value::Null);
    Run {
        output,
        dir,
        report,
    }
}

pub(crate) fn history(test: &str) -> PathBuf {
    let dir = out_dir(&format!("{test}-history"));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("history.sqlite")
}

pub(crate) fn pg_test(name: &str, source: &str, extra: &str) -> String {
    format!(
        r#"schema = 1
name = "{name}"

[targets.db]
kind = "postgres"
source = {source}
restore = {{ from = "latest" }}
objectives = {{ rto = "5m", rpo = "1h" }}
{extra}
"#
    )
}

pub(crate) fn query<'a>(run: &'a Run, name: &str) -> &'a Value {
    run.target()["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["query"] == name)
        .unwrap_or_else(|| panic!("no query {name}: {}", run.debug()))
}

fn phases(run: &Run) -> Vec<String> {
    run.target()["rto"]["phases"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

#[test]
fn every_pg_dump_format_in_a_folder_restores_into_its_own_database() {
    let b = pg_backups();
    let _engine = engine();
    let h = history("formats");
    for (folder, format, extra) in [
        ("custom", "pg-custom", ""),
        ("tar", "pg-tar", ""),
        ("directory", "pg-directory", ""),
        ("plain-gzip", "pg-plain", ""),
        ("plain-zstd", "pg-plain", ""),
        // pg_dumpall holds every database; the queries name the one they ask.
        ("dumpall", "pg-dumpall", "database = \"shop\"\n"),
    ] {
        let path = if folder == "custom" {
            // The shipped example, its queries asked of this schema. `backup-size` compares
            // with an earlier run's size, and this is the first: left out.
            let dir = format!("{:?}", b.dir.join(folder));
            let invoices = format!("expect = \"== {INVOICES}\"");
            PathBuf::from(common::variant(
                "scenarios/restore-tests/pg-dump-folder.toml",
                "format-custom",
                &[
                    ("\"/backups/postgres/daily\"", &dir),
                    ("\"backup-age\", \"backup-size\"]", "\"backup-age\"]"),
                    ("name = \"orders present\"", "name = \"invoices\""),
                    (
                        "FROM orders o LEFT JOIN customers c",
                        "FROM invoice o LEFT JOIN customer c",
                    ),
                    ("FROM orders\"", "FROM invoice\""),
                    ("expect = \">= 1000000\"", &invoices),
                ],
            ))
        } else {
            scenario(
                &format!("format-{folder}"),
                &pg_test(
                    &format!("format-{folder}"),
                    &format!("{{ path = {:?} }}", b.dir.join(folder)),
                    &format!(
                        r#"{extra}checks = ["amcheck", "foreign-keys", "backup-age"]

[[targets.db.queries]]
name = "invoices"
sql = "SELECT count(*) FROM invoice"
expect = "== {INVOICES}"
"#
                    ),
                ),
            )
        };
        let r = run(&path, &format!("format-{folder}-run"), &h, &[]);
        assert_eq!(r.code(), Some(0), "{folder}: {}", r.debug());
        let t = r.target();
        assert_eq!(t["source"]["format"], format, "{folder}");
        assert_eq!(query(&r, "invoices")["value"], INVOICES.to_string());
        assert_eq!(r.check("foreign-keys"), "passed", "{folder}");
        if folder == "custom" {
            assert_eq!(r.check("backup-integrity"), "passed", "{}", r.debug());
            assert_eq!(query(&r, "no order without a customer")["status"], "passed");
        }
        if folder == "plain-gzip" {
            assert_eq!(t["source"]["compression"], "gzip");
        }
        if folder == "plain-zstd" {
            assert_eq!(t["source"]["compression"], "zstd");
        }
        if folder != "dumpall" {
            assert!(
                t["restore"]["reached"]
                    .as_str()
                    .unwrap()
                    .contains("database shop"),
                "{folder}: restored into the dump's own database: {}",
                t["restore"]
            );
        }
        assert!(t["rto"]["achieved_ms"].as_u64().unwrap() > 0);
        for p in ["fetch", "provision", "restore", "verify"] {
            assert!(phases(&r).contains(&p.to_string()), "{folder}: {p}");
        }
        assert!(
            !r.dir.join("source/db").exists(),
            "{folder}: the fetched copy outlived the test"
        );
        common::assert_no_leftovers(r.run_id());
    }
}

/// Uploads `file` as `key` with the object_store client, as a backup job would.
fn upload(endpoint: &str, key: &str, bytes: Vec<u8>) {
    use object_store::ObjectStoreExt;
    let store = crate::common::test_bucket(endpoint);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(store.put(&object_store::path::Path::from(key), bytes.into()))
        .unwrap();
}

#[test]
fn the_newest_dump_in_an_s3_bucket_restores_with_its_rto_and_rpo_measured() {
    let b = pg_backups();
    let _engine = engine();
    let (_s3, endpoint) = s3_server("drillrig-test-s3-restore");
    let newer = std::fs::read(b.dir.join("s3-newer/shop.dump")).unwrap();
    let older = std::fs::read(b.dir.join("s3-older/shop.dump")).unwrap();
    // The newer dump is uploaded first: only its own header says it is the newer one.
    upload(&endpoint, "nightly/shop-b.dump", newer.clone());
    let sum = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&newer))
    };
    upload(
        &endpoint,
        "nightly/shop-b.dump.sha256",
        format!("{sum}  shop-b.dump\n").into_bytes(),
    );
    std::thread::sleep(Duration::from_millis(1100));
    upload(&endpoint, "nightly/shop-a.dump", older);
    upload(&endpoint, "nightly/notes.txt", b"not a backup".to_vec());

    // The shipped example, pointed at this server and asked of this schema.
    let endpoint_key = format!("endpoint = \"{endpoint}\"");
    let invoices = format!("expect = \"== {NEWER_INVOICES}\"");
    let path = PathBuf::from(common::variant(
        "scenarios/restore-tests/pg-dump-s3.toml",
        "s3",
        &[
            ("s3://acme-backups/postgres/daily/", "s3://backups/nightly/"),
            ("region = \"eu-west-1\"", &endpoint_key),
            ("FROM orders\"", "FROM invoice\""),
            ("expect = \">= 1000000\"", &invoices),
        ],
    ));
    // The keys come from a named AWS profile this time, as on a workstation; the other S3
    // tests give them in the environment.
    let aws = out_dir("s3-aws-profile");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(
        aws.join("credentials"),
        format!(
            "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n[backup-reader]\naws_access_key_id = drillrig-test-key\naws_secret_access_key = {S3_SECRET}\n"
        ),
    )
    .unwrap();
    let credentials = aws.join("credentials").display().to_string();
    let env = [
        ("AWS_SHARED_CREDENTIALS_FILE", credentials.as_str()),
        ("AWS_PROFILE", "backup-reader"),
        ("AWS_REGION", "us-east-1"),
    ];
    let started = SystemTime::now();
    let r = run(&path, "s3-run", &history("s3"), &env);
    assert_eq!(r.code(), Some(0), "{}", r.debug());
    let t = r.target();
    assert_eq!(t["source"]["object"], "nightly/shop-b.dump");
    assert_eq!(t["source"]["bytes"], newer.len() as u64);
    assert_eq!(t["source"]["sha256"], sum);
    assert_eq!(r.check("backup-integrity"), "passed");
    assert_eq!(r.check("foreign-keys"), "passed");
    assert_eq!(query(&r, "orders present")["status"], "passed");
    // The RPO is the dump's age from its own header, which lies within the second the test
    // started pg_dump in.
    let made = humantime::parse_rfc3339(t["source"]["made_at"].as_str().unwrap()).unwrap();
    let (before, after) = b.newer_made;
    assert!(
        made + Duration::from_secs(1) >= before && made <= after,
        "made_at {made:?} outside the dump's run {before:?}..{after:?}"
    );
    let rpo = t["rpo"]["achieved_ms"].as_u64().unwrap();
    let age_at_start = started.duration_since(made).unwrap().as_millis() as u64;
    assert!(
        rpo + 50 >= age_at_start && rpo <= age_at_start + 30_000,
        "rpo {rpo} ms against an age of {age_at_start} ms when the run started"
    );
    assert!(t["source"]["fetch_ms"].as_u64().is_some());
    assert!(phases(&r).contains(&"fetch".to_string()));
    let all =
        std::fs::read_to_string(r.dir.join("report.json")).unwrap() + &r.stdout() + &r.stderr();
    assert!(!all.contains(S3_SECRET), "the S3 secret reached an output");
    common::assert_no_leftovers(r.run_id());
}

#[test]
fn bad_sources_end_with_a_clear_cause_and_exit_3_or_2_leaving_nothing() {
    let _engine = engine();
    let (_s3, endpoint) = s3_server("drillrig-test-s3-bad");
    upload(&endpoint, "nightly/x.dump", b"PGDMP".to_vec());
    let h = history("bad-sources");
    let case = |name: &str, source: &str, secret: &str| {
        let path = scenario(name, &pg_test(name, source, ""));
        let env = s3_env(secret);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run(&path, &format!("{name}-run"), &h, &env)
    };
    let s3 = |prefix: &str, endpoint: &str| {
        format!("{{ url = \"s3://backups/{prefix}\", endpoint = \"{endpoint}\" }}")
    };
    let wrong = "wrong-secret-also-never-shown";
    for (name, source, secret, code, says) in [
        (
            "bad-credentials",
            s3("nightly/", &endpoint),
            wrong,
            3,
            "credentials",
        ),
        (
            "empty-prefix",
            s3("nothing-here/", &endpoint),
            S3_SECRET,
            3,
            "holds no backup",
        ),
        (
            "unreachable",
            s3("nightly/", "http://127.0.0.1:9"),
            S3_SECRET,
            3,
            "endpoint",
        ),
        (
            "missing-folder",
            "{ path = \"/nonexistent/backups\" }".to_string(),
            S3_SECRET,
            3,
            "cannot be read",
        ),
        (
            "credentials-in-url",
            "{ url = \"s3://key:secret@backups/x/\" }".to_string(),
            S3_SECRET,
            2,
            "no credentials",
        ),
    ] {
        let r = case(name, &source, secret);
        assert_eq!(r.code(), Some(code), "{name}: {}", r.debug());
        let text = r.stderr() + &r.stdout();
        assert!(text.contains(says), "{name}: {}", r.debug());
        assert!(
            !text.contains(wrong) && !text.contains(S3_SECRET),
            "{name}: a secret reached the output"
        );
        if r.report != Value::Null {
            let report = std::fs::read_to_string(r.dir.join("report.json")).unwrap();
            assert!(!report.contains(wrong) && !report.contains(S3_SECRET));
            assert!(
                !r.dir.join("source/db").exists(),
                "{name}: the fetched copy outlived the run"
            );
            common::assert_no_leftovers(r.run_id());
        }
    }
}

#[test]
fn negative_controls_miss_naming_the_check_that_failed() {
    let b = pg_backups();
    let _engine = engine();
    let root = out_dir("negative-controls-backups");
    let custom = std::fs::read(b.dir.join("custom/shop.dump")).unwrap();
    let folder = |name: &str, files: &[(&str, Vec<u8>)]| {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (f, bytes) in files {
            std::fs::write(d.join(f), bytes).unwrap();
        }
        d
    };
    let truncated = folder(
        "truncated",
        &[("shop.dump", custom[..custom.len() / 2].to_vec())],
    );
    let wrong_sum = folder(
        "wrong-sidecar",
        &[
            ("shop.dump", custom.clone()),
            (
                "shop.dump.sha256",
                format!("{}  shop.dump\n", "0".repeat(64)).into(),
            ),
        ],
    );
    let stale = folder(
        "stale",
        &[(
            "shop.sql.gz",
            std::fs::read(b.dir.join("plain-gzip/shop.sql.gz")).unwrap(),
        )],
    );
    // A plain dump records no time: its file's age is the backup's, three days here.
    let three_days_ago = SystemTime::now() - Duration::from_secs(3 * 86_400);
    std::fs::File::options()
        .write(true)
        .open(stale.join("shop.sql.gz"))
        .unwrap()
        .set_modified(three_days_ago)
        .unwrap();
    let h = history("negative-controls");
    let query = |expect: &str| {
        format!(
            "[[targets.db.queries]]\nname = \"invoices\"\nsql = \"SELECT count(*) FROM invoice\"\nexpect = \"{expect}\"\n"
        )
    };
    for (name, dir, extra, failing) in [
        ("truncated-dump", &truncated, String::new(), None),
        (
            "wrong-sidecar",
            &wrong_sum,
            "checks = [\"backup-integrity\"]".to_string(),
            Some("backup-integrity"),
        ),
        (
            "stale-backup",
            &stale,
            "checks = [\"backup-age\"]".to_string(),
            Some("backup-age"),
        ),
        (
            "failing-expect",
            &b.dir.join("custom"),
            query(">= 1000000"),
            Some("query"),
        ),
        (
            "orphan-row",
            &b.dir.join("orphan"),
            "checks = [\"foreign-keys\"]".to_string(),
            Some("foreign-keys"),
        ),
    ] {
        let path = scenario(
            name,
            &pg_test(name, &format!("{{ path = {dir:?} }}"), &extra),
        );
        let r = run(&path, &format!("{name}-run"), &h, &[]);
        assert_eq!(r.code(), Some(1), "{name}: {}", r.debug());
        assert_eq!(r.report["outcome"], "missed", "{name}");
        let t = r.target();
        assert!(
            t["rto"]["achieved_ms"].is_null(),
            "{name}: no RTO when missed"
        );
        match failing {
            None => {
                let error = t["restore"]["error"].as_str().unwrap_or_default();
                assert!(error.contains("pg_restore"), "{name}: {}", t["restore"]);
            }
            Some(check) => {
                let failed: Vec<&Value> = t["checks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|c| c["status"] != "passed")
                    .collect();
                assert_eq!(failed.len(), 1, "{name}: {failed:?}");
                assert_eq!(failed[0]["name"], check, "{name}");
                assert_eq!(failed[0]["status"], "failed", "{name}");
                assert!(
                    r.stdout().contains("MISSED"),
                    "{name}: the terminal says so: {}",
                    r.stdout()
                );
                common::assert_report_md_agrees(&r);
            }
        }
        if name == "orphan-row" {
            // The one row the test inserted without its customer, named with its key.
            assert_eq!(
                r.check_detail("foreign-keys"),
                "invoice_customer_fk: 1 row(s) of invoice reference a missing customer",
                "{}",
                r.debug()
            );
        }
        common::assert_no_leftovers(r.run_id());
    }
}

#[test]
fn a_query_that_drifts_beyond_its_bound_fails_while_its_floor_still_holds() {
    let b = pg_backups();
    let _engine = engine();
    let folder = out_dir("drift-backups");
    std::fs::create_dir_all(&folder).unwrap();
    let h = history("drift");
    let path = scenario(
        "drift",
        &pg_test(
            "drift",
            &format!("{{ path = {folder:?} }}"),
            "[[targets.db.queries]]\nname = \"invoices\"\nsql = \"SELECT count(*) FROM invoice\"\nexpect = \">= 1000\"\ndrift = \"1%\"\n",
        ),
    );
    // Week 1: 20 100 invoices, recorded as the baseline.
    std::fs::copy(b.dir.join("s3-newer/shop.dump"), folder.join("shop.dump")).unwrap();
    let first = run(&path, "drift-run-1", &h, &[]);
    assert_eq!(first.code(), Some(0), "{}", first.debug());
    assert!(
        query(&first, "invoices")["detail"]
            .as_str()
            .unwrap()
            .contains("baseline")
    );
    // Week 2: the same backup job, the same query; the restored table has 20 000: within 1 %.
    std::fs::copy(b.dir.join("custom/shop.dump"), folder.join("shop.dump")).unwrap();
    let second = run(&path, "drift-run-2", &h, &[]);
    assert_eq!(second.code(), Some(0), "{}", second.debug());
    // Two backups within 1 % of each other's size: too close to fit a trend through.
    assert!(second.target()["source"]["trend"].is_null());
    // Week 3: a backup of a table missing half its rows: the floor (>= 1000) still holds.
    let c = Scratch::start(
        "drillrig-test-pg-drift",
        &["-e", "POSTGRES_PASSWORD=x", "drillrig/postgres:15-bookworm"],
    );
    wait_for("the source PostgreSQL", Duration::from_secs(60), || {
        pg_up(&c)
    });
    std::fs::write(
        folder.join("shop.dump"),
        c.exec(
            "postgres",
            "psql -q -c 'CREATE DATABASE shop' && psql -q -d shop -c 'CREATE TABLE invoice AS SELECT g AS id FROM generate_series(1, 10000) g' && pg_dump -Fc shop",
        ),
    )
    .unwrap();
    let third = run(&path, "drift-run-3", &h, &[]);
    assert_eq!(third.code(), Some(1), "{}", third.debug());
    let q = query(&third, "invoices");
    assert_eq!(q["status"], "failed");
    assert_eq!(q["value"], "10000");
    let detail = q["detail"].as_str().unwrap();
    assert!(
        detail.contains("-50.00 %") && detail.contains(second.run_id()),
        "names the move and the run it compares with: {detail}"
    );
    // Week 4: the same 10 000 rows (no drift from week 3), each with a note, so the backup is
    // about twice week 1's size. The trend runs through the weeks that recovered (1, 2 and 4),
    // as each run's report gave them.
    std::fs::write(
        folder.join("shop.dump"),
        c.exec(
            "postgres",
            "psql -q -d shop -c 'DROP TABLE invoice' -c 'CREATE TABLE invoice AS SELECT g AS id, md5(g::text) || md5((-g)::text) AS note FROM generate_series(1, 10000) g' && pg_dump -Fc shop",
        ),
    )
    .unwrap();
    let fourth = run(&path, "drift-run-4", &h, &[]);
    assert_eq!(fourth.code(), Some(0), "{}", fourth.debug());
    let point = |r: &Run| {
        serde_json::json!([
            r.target()["source"]["bytes"],
            r.target()["rto"]["achieved_ms"]
        ])
    };
    let trend = &fourth.target()["source"]["trend"];
    assert_eq!(
        trend["points"],
        serde_json::json!([point(&first), point(&second), point(&fourth)]),
        "{}",
        fourth.target()["source"]
    );
    assert!(trend["ms_per_gb"].as_f64().is_some() && trend["rms_error_ms"].as_f64().is_some());
}

#[test]
fn a_redis_rdb_from_a_folder_restores_and_only_read_only_queries_run() {
    let _engine = engine();
    let c = Scratch::start(
        "drillrig-test-redis-source",
        &["drillrig/redis:7.0-bookworm"],
    );
    wait_for("the source Redis", Duration::from_secs(30), || {
        runs_ok(&["exec", &c.0, "redis-cli", "ping"])
    });
    c.exec(
        "root",
        "for i in $(seq 1 300); do echo \"SET session:$i v$i\"; done | redis-cli >/dev/null && \
         redis-cli HSET profile:1 name ann plan pro seats 3 >/dev/null && redis-cli SAVE >/dev/null",
    );
    let dir = out_dir("redis-rdb-backups");
    std::fs::create_dir_all(&dir).unwrap();
    docker(&[
        "cp",
        &format!("{}:/data/dump.rdb", c.0),
        dir.join("dump.rdb").to_str().unwrap(),
    ]);
    let saved = SystemTime::now();
    let h = history("redis-rdb");
    let body = |name: &str, command: &str, expect: &str| {
        format!(
            r#"schema = 1
name = "{name}"

[targets.cache]
kind = "redis"
source = {{ path = {dir:?} }}
restore = {{ from = "latest" }}
checks = ["redis-check", "backup-age"]
objectives = {{ rto = "2m", rpo = "1h" }}

[[targets.cache.queries]]
name = "keys"
command = "DBSIZE"
expect = "== 301"

[[targets.cache.queries]]
name = "asked"
command = "{command}"
expect = "{expect}"
"#
        )
    };
    // The shipped example, pointed at this folder and asked of these keys.
    let path = PathBuf::from(common::variant(
        "scenarios/restore-tests/redis-rdb.toml",
        "redis-rdb-example",
        &[
            ("\"/backups/redis\"", &format!("{dir:?}")),
            ("expect = \">= 1000\"", "expect = \"== 301\""),
            ("HLEN config:flags", "HLEN profile:1"),
            ("expect = \">= 1\"", "expect = \"== 3\""),
        ],
    ));
    let r = run(&path, "redis-rdb-run", &h, &[]);
    assert_eq!(r.code(), Some(0), "{}", r.debug());
    let t = r.target();
    assert_eq!(t["source"]["format"], "redis-rdb");
    assert_eq!(r.check("redis-check"), "passed");
    // The RDB's own ctime: written by SAVE just before the copy.
    let made = humantime::parse_rfc3339(t["source"]["made_at"].as_str().unwrap()).unwrap();
    assert!(made <= saved && saved.duration_since(made).unwrap() < Duration::from_secs(30));
    assert_eq!(t["source"]["made_at_from"], "the RDB's ctime field");
    assert_eq!(query(&r, "keys")["status"], "passed");
    assert_eq!(query(&r, "feature flags loaded")["status"], "passed");
    common::assert_no_leftovers(r.run_id());

    let path = scenario("redis-write", &body("redis-write", "DEL session:1", "== 1"));
    let r = run(&path, "redis-write-run", &h, &[]);
    assert_eq!(r.code(), Some(1), "{}", r.debug());
    let q = query(&r, "asked");
    assert_eq!(q["status"], "failed");
    assert!(
        q["detail"]
            .as_str()
            .unwrap()
            .contains("not a read-only command"),
        "{q}"
    );
    assert_eq!(
        query(&r, "keys")["value"],
        "301",
        "the refused DEL never ran"
    );
    common::assert_no_leftovers(r.run_id());
}

#[test]
fn a_redis_aof_folder_restores_under_its_own_name_and_a_torn_tail_is_caught() {
    let _engine = engine();
    let c = Scratch::start(
        "drillrig-test-redis-aof-source",
        &[
            "drillrig/redis:7.0-bookworm",
            "redis-server",
            "--appendonly",
            "yes",
            "--appendfilename",
            "shop.aof",
            // Every write in the file before its reply: under `everysec` a busy disk lets Redis
            // postpone the write for up to 2 s after answering, and the copy below missed it.
            "--appendfsync",
            "always",
            "--dir",
            "/data",
        ],
    );
    wait_for("the source Redis", Duration::from_secs(30), || {
        runs_ok(&["exec", &c.0, "redis-cli", "ping"])
    });
    // 200 keys in the base file (rewritten), 100 more and a hash in the incremental file.
    c.exec(
        "root",
        "for i in $(seq 1 200); do echo \"SET session:$i v$i\"; done | redis-cli >/dev/null && \
         redis-cli BGREWRITEAOF >/dev/null && sleep 0.5 && \
         while redis-cli INFO persistence | grep -Eq 'aof_rewrite_(in_progress|scheduled):1'; do sleep 0.1; done && \
         for i in $(seq 201 300); do echo \"SET session:$i v$i\"; done | redis-cli >/dev/null && \
         redis-cli HSET profile:1 name ann plan pro >/dev/null",
    );
    let dir = out_dir("redis-aof-backups");
    std::fs::create_dir_all(&dir).unwrap();
    docker(&[
        "cp",
        &format!("{}:/data/appendonlydir", c.0),
        dir.join("appendonlydir").to_str().unwrap(),
    ]);
    let body = |name: &str, dir: &Path| {
        format!(
            r#"schema = 1
name = "{name}"

[targets.cache]
kind = "redis"
source = {{ path = {dir:?} }}
restore = {{ from = "latest" }}
checks = ["redis-check"]
objectives = {{ rto = "2m", rpo = "1h" }}

[[targets.cache.queries]]
name = "keys"
command = "DBSIZE"
expect = "== 301"
"#
        )
    };
    let h = history("redis-aof");
    let r = run(
        &scenario("redis-aof", &body("redis-aof", &dir)),
        "redis-aof-run",
        &h,
        &[],
    );
    assert_eq!(r.code(), Some(0), "{}", r.debug());
    let t = r.target();
    assert_eq!(t["source"]["format"], "redis-aof");
    assert_eq!(t["source"]["object"], "appendonlydir");
    assert_eq!(r.check("redis-check"), "passed");
    assert_eq!(query(&r, "keys")["value"], "301");
    common::assert_no_leftovers(r.run_id());

    // The incremental file cut inside its last command: redis-check-aof says so.
    let torn = out_dir("redis-aof-torn");
    common::copy_tree(&dir, &torn);
    let incr = common::files_under(&torn)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".incr.aof"))
        .expect("an incremental AOF file");
    let len = std::fs::metadata(&incr).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&incr)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let r = run(
        &scenario("redis-aof-torn", &body("redis-aof-torn", &torn)),
        "redis-aof-torn-run",
        &h,
        &[],
    );
    assert_eq!(r.code(), Some(1), "{}", r.debug());
    assert_eq!(r.check("redis-check"), "failed", "{}", r.debug());
    common::assert_no_leftovers(r.run_id());
}

#[test]
fn a_rabbitmq_definitions_export_imports_exactly_what_it_declares_and_its_messages() {
    let _engine = engine();
    let c = Scratch::start(
        "drillrig-test-rabbitmq-source",
        &["drillrig/rabbitmq:3.10-bookworm"],
    );
    wait_for("the source RabbitMQ", Duration::from_secs(90), || {
        runs_ok(&[
            "exec",
            &c.0,
            "rabbitmqctl",
            "await_startup",
            "--timeout",
            "1",
        ])
    });
    let topology = r#"{"vhosts":[{"name":"shop"}],
      "users":[{"name":"app","password_hash":"","hashing_algorithm":"rabbit_password_hashing_sha256","tags":[]}],
      "permissions":[{"user":"app","vhost":"shop","configure":"","write":".*","read":".*"}],
      "exchanges":[{"name":"events","vhost":"shop","type":"topic","durable":true,"auto_delete":false,"internal":false,"arguments":{}}],
      "queues":[{"name":"billing","vhost":"shop","durable":true,"auto_delete":false,"arguments":{"x-queue-type":"quorum"}},
                {"name":"audit","vhost":"shop","durable":true,"auto_delete":false,"arguments":{}}],
      "bindings":[{"source":"events","vhost":"shop","destination":"billing","destination_type":"queue","routing_key":"invoice.#","arguments":{}}]}"#;
    c.exec(
        "root",
        &format!("cat > /tmp/topology.json <<'EOF'\n{topology}\nEOF\nrabbitmqctl import_definitions /tmp/topology.json >/dev/null && rabbitmqctl export_definitions /tmp/export.json >/dev/null"),
    );
    let dir = out_dir("rabbitmq-definitions-backups");
    std::fs::create_dir_all(&dir).unwrap();
    docker(&[
        "cp",
        &format!("{}:/tmp/export.json", c.0),
        dir.join("definitions.json").to_str().unwrap(),
    ]);
    drop(c);
    // drillrig's own message export beside it, in its documented form: 3 invoices for billing
    // in vhost shop, 2 audit records.
    let line = |queue: &str, id: u32| {
        format!(
            "{{\"queue\":\"{queue}\",\"vhost\":\"shop\",\"message_id\":\"{id}\",\"body\":\"{}\"}}\n",
            hex::encode(format!("{queue} {id}"))
        )
    };
    let messages: String = [
        ("billing", 1),
        ("billing", 2),
        ("audit", 3),
        ("billing", 4),
        ("audit", 5),
    ]
    .iter()
    .map(|(q, id)| line(q, *id))
    .collect();
    std::fs::write(dir.join("messages.jsonl"), messages).unwrap();
    // The shipped example, pointed at this folder (the export and the messages beside it);
    // its billing queue holds the 3 messages republished, and the audit queue is asked too.
    let path = PathBuf::from(common::variant(
        "scenarios/restore-tests/rabbitmq-definitions.toml",
        "rabbitmq-definitions",
        &[
            (
                "\"/backups/rabbitmq/definitions.json\"",
                &format!("{dir:?}"),
            ),
            (
                "name = \"billing queue declared (and empty after an import)\"",
                "name = \"billing\"",
            ),
            (
                "expect = \"== 0\"",
                "expect = \"== 3\"\n\n[[targets.broker.queries]]\nname = \"audit\"\nqueue = \"audit\"\nexpect = \"== 2\"",
            ),
        ],
    ));
    let r = run(
        &path,
        "rabbitmq-definitions-run",
        &history("rabbitmq-definitions"),
        &[],
    );
    assert_eq!(r.code(), Some(0), "{}", r.debug());
    let t = r.target();
    assert_eq!(t["source"]["format"], "rabbitmq-definitions");
    assert_eq!(r.check("definitions"), "passed");
    assert_eq!(r.check("backup-age"), "passed");
    assert!(
        t["restore"]["reached"]
            .as_str()
            .unwrap()
            .contains("2 queue(s) declared, 5 message(s) republished from"),
        "{}",
        t["restore"]
    );
    assert_eq!(query(&r, "billing")["status"], "passed");
    assert_eq!(query(&r, "audit")["status"], "passed");
    common::assert_no_leftovers(r.run_id());
}

/// A base backup (`pg_basebackup -Ft -z`) and the WAL archive `archive_command` filled, with
/// 1 000 invoices committed before `.1` (a time between two batches) and 500 after.
struct PitrBackups {
    base: PathBuf,
    wal: PathBuf,
    between: SystemTime,
    /// A folder holding `plain/`, a `pg_basebackup -Fp -X stream` made after all 1 500.
    plain: PathBuf,
    /// The file of the index `invoice_pkey`, relative to the data directory
    /// (`pg_relation_filepath`).
    pkey_file: String,
}

fn pitr_backups() -> &'static PitrBackups {
    static MADE: OnceLock<PitrBackups> = OnceLock::new();
    MADE.get_or_init(|| {
        let dir = out_dir("restore-tests-pitr-backups");
        std::fs::create_dir_all(&dir).unwrap();
        let c = Scratch::start(
            "drillrig-test-pg-pitr-source",
            &[
                "-e",
                "POSTGRES_PASSWORD=x",
                "drillrig/postgres:15-bookworm",
                "postgres",
                "-c",
                "archive_mode=on",
                "-c",
                // In the postgres user's home, so that the first segment archives at once
                // (a failing archive_command makes the archiver wait a minute).
                "archive_command=mkdir -p /var/lib/postgresql/archive && test ! -f /var/lib/postgresql/archive/%f && cp %p /var/lib/postgresql/archive/%f",
            ],
        );
        wait_for("the source PostgreSQL", Duration::from_secs(60), || {
            pg_up(&c)
        });
        c.exec(
            "postgres",
            "psql -qc 'CREATE DATABASE shop' && psql -q -d shop -c 'CREATE TABLE invoice (id serial PRIMARY KEY, total int NOT NULL)'",
        );
        let pkey_file = String::from_utf8(c.exec(
            "postgres",
            "psql -qAt -d shop -c \"SELECT pg_relation_filepath('invoice_pkey')\"",
        ))
        .unwrap()
        .trim()
        .to_string();
        c.exec("postgres", "pg_basebackup -D /tmp/base -Ft -z -X none -c fast");
        c.exec(
            "postgres",
            "psql -q -d shop -c 'INSERT INTO invoice (total) SELECT g FROM generate_series(1, 1000) g'",
        );
        std::thread::sleep(Duration::from_millis(1500));
        let between = SystemTime::now();
        std::thread::sleep(Duration::from_millis(1500));
        c.exec(
            "postgres",
            "psql -q -d shop -c 'INSERT INTO invoice (total) SELECT g FROM generate_series(1, 500) g' && psql -qAtc 'SELECT pg_switch_wal()' >/dev/null",
        );
        // Until the segment the switch closed is in the archive.
        wait_for("the last segment archived", Duration::from_secs(20), || {
            Command::new("docker")
                .args(["exec", "-u", "postgres", &c.0, "psql", "-qAtc"])
                .arg("SELECT last_archived_wal >= pg_walfile_name(pg_current_wal_lsn() - 1) FROM pg_stat_archiver")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "t")
        });
        c.exec("postgres", "pg_basebackup -D /tmp/plain -Fp -X stream -c fast");
        std::fs::create_dir_all(dir.join("plain-backups")).unwrap();
        docker(&[
            "cp",
            &format!("{}:/tmp/plain", c.0),
            dir.join("plain-backups/plain").to_str().unwrap(),
        ]);
        docker(&["cp", &format!("{}:/tmp/base", c.0), dir.join("base").to_str().unwrap()]);
        docker(&[
            "cp",
            &format!("{}:/var/lib/postgresql/archive", c.0),
            dir.join("wal").to_str().unwrap(),
        ]);
        PitrBackups {
            base: dir.join("base"),
            wal: dir.join("wal"),
            between,
            plain: dir.join("plain-backups"),
            pkey_file,
        }
    })
}

#[test]
fn a_base_backup_and_its_wal_from_s3_restore_to_a_time() {
    let p = pitr_backups();
    let _engine = engine();
    let (_s3, endpoint) = s3_server("drillrig-test-s3-pitr");
    for e in std::fs::read_dir(&p.base).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "base.tar.gz" || name == "backup_manifest" {
            upload(
                &endpoint,
                &format!("pg/base/{name}"),
                std::fs::read(e.path()).unwrap(),
            );
        }
    }
    let mut segments = 0;
    for e in std::fs::read_dir(&p.wal).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        upload(
            &endpoint,
            &format!("pg/wal/{name}"),
            std::fs::read(e.path()).unwrap(),
        );
        segments += 1;
    }
    let when = humantime::format_rfc3339_millis(p.between).to_string();
    // The shipped example, pointed at this server and this time, asked of this schema (which
    // declares no foreign key; pg_basebackup's manifest is checked instead).
    let endpoint_key = format!("wal = \"s3://backups/pg/wal/\", endpoint = \"{endpoint}\"");
    let path = PathBuf::from(common::variant(
        "scenarios/restore-tests/pg-basebackup-s3.toml",
        "pitr-s3",
        &[
            ("s3://acme-backups/postgres/base/", "s3://backups/pg/base/"),
            ("wal = \"s3://acme-backups/postgres/wal/\"", &endpoint_key),
            ("2026-11-30T02:00:00Z", &when),
            ("database = \"orders\"", "database = \"shop\""),
            (
                "checks = [\"amcheck\", \"foreign-keys\"]",
                "checks = [\"amcheck\", \"pg-verifybackup\"]",
            ),
            ("FROM orders\"", "FROM invoice\""),
            ("expect = \">= 1000000\"", "expect = \"== 1000\""),
        ],
    ));
    let env = s3_env(S3_SECRET);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let started = SystemTime::now();
    let r = run(&path, "pitr-s3-run", &history("pitr-s3"), &env);
    assert_eq!(r.code(), Some(0), "{}", r.debug());
    let t = r.target();
    assert_eq!(t["source"]["format"], "pg-base-tar");
    assert_eq!(query(&r, "orders present")["status"], "passed");
    // The manifest pg_basebackup wrote beside the tar, against the unpacked files and the WAL.
    assert_eq!(r.check("pg-verifybackup"), "passed", "{}", r.debug());
    assert_eq!(t["source"]["wal"]["files"], segments);
    assert!(
        t["restore"]["recovery_target"]
            .as_str()
            .unwrap()
            .starts_with("time ")
    );
    // The RPO counts from the newest transaction replayed, committed before the time.
    let rpo = t["rpo"]["achieved_ms"].as_u64().unwrap();
    let since_between = started.duration_since(p.between).unwrap().as_millis() as u64;
    assert!(
        rpo >= since_between && rpo <= since_between + 5_000,
        "rpo {rpo} ms; the time was {since_between} ms before the run: {}",
        t["rpo"]
    );
    common::assert_no_leftovers(r.run_id());
}

#[test]
fn a_plain_base_backup_starts_on_its_own_wal_and_a_damaged_file_fails_pg_verifybackup() {
    let p = pitr_backups();
    let _engine = engine();
    let body = |name: &str, dir: &Path| {
        pg_test(
            name,
            &format!("{{ path = {dir:?} }}"),
            r#"database = "shop"
checks = ["amcheck", "pg-verifybackup"]

[[targets.db.queries]]
name = "invoices"
sql = "SELECT count(*) FROM invoice"
expect = "== 1500"
"#,
        )
    };
    let h = history("plain-base");
    let r = run(
        &scenario("plain-base", &body("plain-base", &p.plain)),
        "plain-base-run",
        &h,
        &[],
    );
    assert_eq!(r.code(), Some(0), "{}", r.debug());
    let t = r.target();
    assert_eq!(t["source"]["format"], "pg-base-plain");
    assert_eq!(t["source"]["made_at_from"], "START TIME in backup_label");
    assert_eq!(r.check("pg-verifybackup"), "passed");
    assert_eq!(query(&r, "invoices")["status"], "passed");
    common::assert_no_leftovers(r.run_id());

    // A file of the copy changed after the backup (a line added to postgresql.conf, which still
    // starts the server): only the manifest can tell.
    let damaged = out_dir("plain-base-damaged");
    common::copy_tree(&p.plain, &damaged);
    let conf = damaged.join("plain/postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("# changed after the backup\n");
    std::fs::write(&conf, text).unwrap();
    let r = run(
        &scenario("plain-base-damaged", &body("plain-base-damaged", &damaged)),
        "plain-base-damaged-run",
        &h,
        &[],
    );
    assert_eq!(r.code(), Some(1), "{}", r.debug());
    assert_eq!(r.check("pg-verifybackup"), "failed", "{}", r.debug());
    assert_eq!(r.check("amcheck"), "passed", "the data itself is whole");
    common::assert_no_leftovers(r.run_id());

    // The index `invoice_pkey` damaged in the copy: every page after its metapage zeroed, as a
    // lost write of the storage would leave it. The server starts (nothing reads the index on
    // the way), the table's rows are all there, and only pg_amcheck's descent into the B-tree
    // can tell: it must fail, naming the index and what it found.
    let damaged = out_dir("plain-base-damaged-index");
    common::copy_tree(&p.plain, &damaged);
    let index = damaged.join("plain").join(&p.pkey_file);
    let mut bytes = std::fs::read(&index).unwrap();
    assert!(bytes.len() > 2 * 8192, "invoice_pkey has pages to damage");
    bytes[8192..].fill(0);
    std::fs::write(&index, bytes).unwrap();
    let r = run(
        &scenario(
            "plain-base-damaged-index",
            &body("plain-base-damaged-index", &damaged),
        ),
        "plain-base-damaged-index-run",
        &h,
        &[],
    );
    assert_eq!(r.code(), Some(1), "{}", r.debug());
    assert_eq!(r.report["outcome"], "missed");
    assert_eq!(r.check("amcheck"), "failed", "{}", r.debug());
    let detail = r.check_detail("amcheck");
    assert!(
        detail.contains("btree index \"shop.public.invoice_pkey\"") && detail.contains("zero page"),
        "the detail names the index and the error: {detail}"
    );
    assert_eq!(
        query(&r, "invoices")["status"],
        "passed",
        "the heap is whole"
    );
    common::assert_report_md_agrees(&r);
    common::assert_no_leftovers(r.run_id());
}

#[test]
fn a_wal_gap_before_the_target_time_misses() {
    let p = pitr_backups();
    let _engine = engine();
    let wal = out_dir("wal-gap-archive");
    std::fs::create_dir_all(&wal).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&p.wal)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // The segment the base backup started in (named by its `.backup` file) is kept; the next
    // one, which holds the invoices committed before the time, is the gap.
    let backup_file = names
        .iter()
        .find(|n| n.ends_with(".backup"))
        .expect("a .backup file");
    let start = &backup_file[..24];
    let gap = names
        .iter()
        .find(|n| n.len() == 24 && n.as_str() > start)
        .expect("a segment after the backup's")
        .clone();
    for n in names.iter().filter(|n| **n != gap) {
        std::fs::copy(p.wal.join(n), wal.join(n)).unwrap();
    }
    let when = humantime::format_rfc3339_millis(p.between).to_string();
    let path = scenario(
        "wal-gap",
        &pg_test(
            "wal-gap",
            &format!("{{ path = {:?}, wal = {wal:?} }}", p.base),
            "database = \"shop\"\n",
        )
        .replace(
            "restore = { from = \"latest\" }",
            &format!("restore = {{ from = \"{when}\" }}"),
        ),
    );
    let r = run(&path, "wal-gap-run", &history("wal-gap"), &[]);
    assert_eq!(r.code(), Some(1), "{}", r.debug());
    assert_eq!(r.report["outcome"], "missed");
    let error = r.target()["restore"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("recovery") || error.contains(&gap),
        "the restore names the failed recovery: {error}"
    );
    common::assert_no_leftovers(r.run_id());
}

#[test]
fn an_age_encrypted_dump_opens_with_its_identity_and_a_missing_key_is_named() {
    use age::secrecy::ExposeSecret;
    let b = pg_backups();
    let _engine = engine();
    let dir = out_dir("age-backups");
    std::fs::create_dir_all(&dir).unwrap();
    let identity = age::x25519::Identity::generate();
    let plain = std::fs::read(b.dir.join("custom/shop.dump")).unwrap();
    let sealed = age::encrypt(&identity.to_public(), &plain).unwrap();
    std::fs::write(dir.join("shop.dump.age"), &sealed).unwrap();
    let keys = out_dir("age-keys");
    std::fs::create_dir_all(&keys).unwrap();
    let secret = identity.to_string().expose_secret().to_string();
    std::fs::write(keys.join("backup.key"), format!("{secret}\n")).unwrap();
    let other = age::x25519::Identity::generate()
        .to_string()
        .expose_secret()
        .to_string();
    let h = history("age");
    let body = |name: &str, identity: &str| {
        pg_test(
            name,
            &format!("{{ path = {dir:?}{identity} }}"),
            &format!(
                "[[targets.db.queries]]\nname = \"invoices\"\nsql = \"SELECT count(*) FROM invoice\"\nexpect = \"== {INVOICES}\"\n"
            ),
        )
    };
    let with_key = format!(", identity = {:?}", keys.join("backup.key"));
    let r = run(
        &scenario("age", &body("age", &with_key)),
        "age-run",
        &h,
        &[],
    );
    assert_eq!(r.code(), Some(0), "{}", r.debug());
    assert_eq!(r.target()["source"]["encrypted"], true);
    assert_eq!(r.target()["source"]["format"], "pg-custom");
    assert_eq!(r.target()["source"]["bytes"], sealed.len() as u64);

    // No identity at all: the environment lacks it (exit 3), said before anything restores.
    let r = run(
        &scenario("age-none", &body("age-none", "")),
        "age-none-run",
        &h,
        &[("DRILLRIG_AGE_IDENTITY", "")],
    );
    assert_eq!(r.code(), Some(3), "{}", r.debug());
    assert!(r.stderr().contains("encrypted with age"), "{}", r.debug());

    // The DR site holds another key: a finding naming the file and the missing key.
    let r = run(
        &scenario("age-wrong", &body("age-wrong", "")),
        "age-wrong-run",
        &h,
        &[("DRILLRIG_AGE_IDENTITY", other.as_str())],
    );
    assert_eq!(r.code(), Some(1), "{}", r.debug());
    let error = r.target()["restore"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("shop.dump.age") && error.contains("key"),
        "{error}"
    );
    for run_dir in ["age-run", "age-none-run", "age-wrong-run"] {
        for f in common::files_under(&out_dir_kept(run_dir)) {
            let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
            assert!(
                !text.contains(&secret) && !text.contains(&other),
                "an age identity reached {}",
                f.display()
            );
        }
    }
    common::assert_no_leftovers(r.run_id());
}

#[test]
fn an_interrupt_after_the_fetch_leaves_no_copy_and_no_container() {
    let b = pg_backups();
    let _engine = engine();
    let path = scenario(
        "interrupted-restore-test",
        &pg_test(
            "interrupted-restore-test",
            &format!("{{ path = {:?} }}", b.dir.join("custom")),
            "checks = [\"amcheck\"]\n",
        ),
    );
    let dir = out_dir("interrupted-restore-test-run");
    let mut child = common::spawn_drill(path.to_str().unwrap(), &dir);
    let stderr = common::Stderr::follow(&mut child);
    stderr
        .wait_for("db: fetched", Duration::from_secs(60))
        .unwrap();
    // The copy exists now; the restore into a fresh container is under way.
    assert!(
        dir.join("source/db").exists(),
        "the fetched copy is in the run folder"
    );
    common::signal(&child, "INT");
    let status = child.wait().unwrap();
    let said = stderr.all();
    assert_eq!(status.code(), Some(130), "{said}");
    assert!(
        !dir.join("source").join("db").exists(),
        "the fetched copy outlived the interrupt: {said}"
    );
    let report = common::read_report(&dir);
    common::assert_no_leftovers(report["run_id"].as_str().unwrap());
}

/// A test's output folder as the run left it (without emptying it, as [`out_dir`] does).
fn out_dir_kept(test: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("drills")
        .join(test)
}

/// A pgBackRest repository (stanza `shop`) that pgbackrest itself filled from a running server:
/// a full backup, 1 000 invoices, `between`, a differential backup, 500 more invoices, and the
/// WAL archived through `archive-push` up to the last of them.
struct PgBackRestRepo {
    dir: PathBuf,
    between: SystemTime,
    /// Before and after the 1 000 invoices were committed (their `created_at`).
    first_batch: (SystemTime, SystemTime),
    full: String,
    diff: String,
}

fn pgbackrest_repo() -> &'static PgBackRestRepo {
    static MADE: OnceLock<PgBackRestRepo> = OnceLock::new();
    MADE.get_or_init(|| {
        let dir = out_dir("restore-tests-pgbackrest-repo");
        std::fs::create_dir_all(&dir).unwrap();
        // The container's postgres writes the repository into the test's folder.
        Command::new("chmod")
            .args(["777", dir.to_str().unwrap()])
            .status()
            .unwrap();
        let opts = "--stanza=shop --repo1-path=/repo --pg1-path=/var/lib/postgresql/data --log-level-file=off --log-level-console=warn";
        let c = Scratch::start(
            "drillrig-test-pgbackrest-source",
            &[
                "-e",
                "POSTGRES_PASSWORD=x",
                "-v",
                &format!("{}:/repo", dir.display()),
                "drillrig/postgres:15-bookworm",
                "postgres",
                "-c",
                "archive_mode=on",
                "-c",
                &format!("archive_command=pgbackrest {opts} archive-push %p"),
            ],
        );
        wait_for("the source PostgreSQL", Duration::from_secs(60), || {
            pg_up(&c)
        });
        c.exec(
            "postgres",
            &format!(
                "pgbackrest {opts} stanza-create && psql -qc 'CREATE DATABASE shop' \
                 && psql -q -d shop -c 'CREATE TABLE invoice (id serial PRIMARY KEY, total int NOT NULL, created_at timestamptz NOT NULL DEFAULT clock_timestamp())' \
                 && pgbackrest {opts} --repo1-retention-full=9 --start-fast --type=full backup"
            ),
        );
        let before_batch = SystemTime::now();
        c.exec(
            "postgres",
            "psql -q -d shop -c 'INSERT INTO invoice (total) SELECT g FROM generate_series(1, 1000) g'",
        );
        let first_batch = (before_batch, SystemTime::now());
        std::thread::sleep(Duration::from_millis(1500));
        let between = SystemTime::now();
        std::thread::sleep(Duration::from_millis(1500));
        c.exec(
            "postgres",
            &format!(
                "pgbackrest {opts} --repo1-retention-full=9 --start-fast --type=diff backup \
                 && psql -q -d shop -c 'INSERT INTO invoice (total) SELECT g FROM generate_series(1, 500) g' \
                 && psql -qAtc 'SELECT pg_switch_wal()' >/dev/null"
            ),
        );
        wait_for("the last segment archived", Duration::from_secs(20), || {
            Command::new("docker")
                .args(["exec", "-u", "postgres", &c.0, "psql", "-qAtc"])
                .arg("SELECT last_archived_wal >= pg_walfile_name(pg_current_wal_lsn() - 1) FROM pg_stat_archiver")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "t")
        });
        let mut sets: Vec<String> = std::fs::read_dir(dir.join("backup/shop"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with('F') || n.ends_with('D'))
            .collect();
        sets.sort();
        assert_eq!(sets.len(), 2, "{sets:?}");
        PgBackRestRepo {
            dir,
            between,
            first_batch,
            full: sets[0].clone(),
            diff: sets[1].clone(),
        }
    })
}

/// Every WAL segment file of the repository's archive, oldest first.
fn repo_segments(repo: &Path) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = common::files_under(&repo.join("archive/shop"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(".gz"))
        })
        .collect();
    all.sort();
    all
}

#[test]
fn a_pgbackrest_repository_restores_its_newest_set_and_a_damaged_segment_is_named() {
    let repo = pgbackrest_repo();
    let _engine = engine();
    let body = |name: &str, dir: &Path| {
        pg_test(
            name,
            &format!("{{ path = {dir:?} }}"),
            r#"database = "shop"
checks = ["amcheck", "backup-integrity", "backup-age"]

[[targets.db.queries]]
name = "invoices"
sql = "SELECT count(*) FROM invoice"
expect = "== 1500"
"#,
        )
    };
    let h = history("pgbackrest");
    // The shipped example, pointed at this repository and asked of this schema (which declares
    // no foreign key to check).
    let path = PathBuf::from(common::variant(
        "scenarios/restore-tests/pg-pgbackrest.toml",
        "pgbackrest",
        &[
            (
                "{ path = \"/var/lib/pgbackrest\", stanza = \"main\" }",
                &format!("{{ path = {:?}, stanza = \"shop\" }}", repo.dir),
            ),
            ("database = \"orders\"", "database = \"shop\""),
            ("\"foreign-keys\", ", ""),
            ("name = \"orders present\"", "name = \"invoices\""),
            ("FROM orders\"", "FROM invoice\""),
            ("expect = \">= 1000000\"", "expect = \"== 1500\""),
        ],
    ));
    let r = run(&path, "pgbackrest-run", &h, &[]);
    assert_eq!(r.code(), Some(0), "{}", r.debug());
    let t = r.target();
    assert_eq!(t["source"]["format"], "pgbackrest");
    assert_eq!(t["source"]["pgbackrest"]["label"], repo.diff.as_str());
    assert_eq!(t["source"]["pgbackrest"]["type"], "diff");
    assert_eq!(t["source"]["pgbackrest"]["sets"], 2);
    assert_eq!(r.check("backup-integrity"), "passed");
    assert_eq!(r.check("amcheck"), "passed");
    assert_eq!(query(&r, "invoices")["status"], "passed");
    assert!(
        t["restore"]["reached"]
            .as_str()
            .unwrap()
            .contains("pgbackrest's WAL archive of stanza shop"),
        "{}",
        t["restore"]
    );
    // The restore_command pgbackrest wrote is drillrig's own: not listed as replaced.
    assert_eq!(
        t["restore"]["overrides"],
        serde_json::json!([
            "pg_hba.conf: replaced with drillrig rules (local: trust; host: scram-sha-256)"
        ])
    );
    // The fetched copy of the repository is gone with the test.
    assert!(!r.dir.join("source").join("db").exists());
    common::assert_no_leftovers(r.run_id());

    // The newest segment damaged in a copy: verify names it, and replay stops short of it.
    let damaged = out_dir("pgbackrest-damaged-repo");
    common::copy_tree(&repo.dir, &damaged);
    let last = repo_segments(&damaged).pop().expect("an archived segment");
    let mut bytes = std::fs::read(&last).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&last, bytes).unwrap();
    let r = run(
        &scenario("pgbackrest-damaged", &body("pgbackrest-damaged", &damaged)),
        "pgbackrest-damaged-run",
        &h,
        &[],
    );
    assert_eq!(r.code(), Some(1), "{}", r.debug());
    assert_eq!(r.check("backup-integrity"), "failed", "{}", r.debug());
    let segment = last.file_name().unwrap().to_string_lossy().into_owned();
    let detail = r.target()["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "backup-integrity")
        .unwrap()["detail"]
        .to_string();
    assert!(detail.contains(&segment), "{detail}");
    common::assert_no_leftovers(r.run_id());
}

#[test]
fn a_pgbackrest_repository_in_s3_restores_to_a_time_from_the_set_before_it() {
    let repo = pgbackrest_repo();
    let _engine = engine();
    let (_s3, endpoint) = s3_server("drillrig-test-s3-pgbackrest");
    let files: Vec<(String, Vec<u8>)> = common::files_under(&repo.dir)
        .into_iter()
        .filter(|p| p.is_file() && !p.is_symlink())
        .map(|p| {
            let rel = p
                .strip_prefix(&repo.dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (format!("pg/repo/{rel}"), std::fs::read(&p).unwrap())
        })
        .collect();
    upload_all(&endpoint, files);
    let when = humantime::format_rfc3339_millis(repo.between).to_string();
    let path = scenario(
        "pgbackrest-s3",
        &format!(
            r#"schema = 1
name = "pgbackrest-s3"

[targets.db]
kind = "postgres"
source = {{ url = "s3://backups/pg/repo/", endpoint = "{endpoint}", stanza = "shop" }}
restore = {{ from = "{when}" }}
database = "shop"
checks = ["amcheck"]
objectives = {{ rto = "5m", rpo = "1h" }}

[[targets.db.queries]]
name = "invoices before the time"
sql = "SELECT count(*) FROM invoice"
expect = "== 1000"

[[targets.db.queries]]
name = "newest invoice"
sql = "SELECT max(created_at) FROM invoice"
freshness = true
"#
        ),
    );
    let env = s3_env(S3_SECRET);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let started = SystemTime::now();
    let r = run(&path, "pgbackrest-s3-run", &history("pgbackrest-s3"), &env);
    assert_eq!(r.code(), Some(0), "{}", r.debug());
    let t = r.target();
    // The differential set finished after the time: the full one is restored and replayed.
    assert_eq!(t["source"]["pgbackrest"]["label"], repo.full.as_str());
    assert_eq!(query(&r, "invoices before the time")["status"], "passed");
    // The RPO counts from the newest invoice the restore holds: committed within the test's
    // own clock readings around the batch (the run itself began up to 3 s after `started`).
    assert_eq!(query(&r, "newest invoice")["status"], "passed");
    let rpo = t["rpo"]["achieved_ms"].as_u64().unwrap();
    let ms = |a: SystemTime, b: SystemTime| a.duration_since(b).unwrap().as_millis() as u64;
    let (low, high) = (
        ms(started, repo.first_batch.1),
        ms(started, repo.first_batch.0) + 3_000,
    );
    assert!(
        (low..=high).contains(&rpo),
        "rpo {rpo} ms, the batch was committed {low}..{high} ms before the run: {}",
        t["rpo"]
    );
    assert!(
        t["rpo"]["note"]
            .as_str()
            .unwrap()
            .contains("freshness query \"newest invoice\""),
        "{}",
        t["rpo"]
    );
    assert!(
        t["restore"]["recovery_target"]
            .as_str()
            .unwrap()
            .starts_with("time "),
        "{}",
        t["restore"]
    );
    common::assert_no_leftovers(r.run_id());
}

/// Uploads `(key, bytes)` pairs with one object_store client, as a backup job would.
fn upload_all(endpoint: &str, files: Vec<(String, Vec<u8>)>) {
    use object_store::ObjectStoreExt;
    let store = crate::common::test_bucket(endpoint);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        for (key, bytes) in files {
            store
                .put(&object_store::path::Path::from(key.as_str()), bytes.into())
                .await
                .unwrap();
        }
    });
}
