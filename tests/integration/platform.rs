//! Platform drills: the shipped monthly drill (PostgreSQL, RabbitMQ and Redis lose their whole
//! site and come back from encrypted copies in a real S3-compatible server, in the runbook's
//! order) and the key-escrow control. The facts checked come from the bucket itself (listed
//! and read with the S3 client here), the ledger and the timeline.

use std::collections::BTreeSet;
use std::path::Path;

use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::Value;

use crate::common::{
    Run, S3_SECRET, assert_no_leftovers, docker, drill, engine, files_under, remove_run, repo,
    s3_env, s3_server, variant,
};

/// Every object under `prefix` in the test bucket: key and bytes.
fn bucket(endpoint: &str, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let store = crate::common::test_bucket(endpoint);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use futures::TryStreamExt;
        let listed: Vec<_> = store
            .list(Some(&object_store::path::Path::from(prefix)))
            .try_collect()
            .await
            .unwrap();
        let mut objects = Vec::new();
        for meta in listed {
            let bytes = store
                .get(&meta.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            objects.push((meta.location.to_string(), bytes.to_vec()));
        }
        objects
    })
}

/// The run's newest container of `target`, kept (`DRILLRIG_KEEP=always`): the restored one.
fn restored(run: &Run, target: &str) -> String {
    let names = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=io.drillrig.run={}", run.run_id()),
        "--format",
        "{{.Names}}",
    ]);
    let prefix = format!("drillrig-{}-{target}-", run.run_id());
    names
        .lines()
        .filter_map(|n| Some((n.strip_prefix(&prefix)?.parse::<u32>().ok()?, n)))
        .max()
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| panic!("no kept container of {target}: {names}"))
}

fn exec(container: &str, user: &str, cmd: &[&str]) -> String {
    let mut args = vec!["exec", "-u", user, container];
    args.extend_from_slice(cmd);
    docker(&args)
}

fn seqs(text: &str, prefix: &str) -> BTreeSet<u64> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(prefix)?.parse().ok())
        .collect()
}

/// The seqs each restored store holds, read there: the orders' `seq` column, the `seq:<n>`
/// keys, and the message ids in every queue of the broker (a seq counts when each queue has it).
fn stores(run: &Run) -> [BTreeSet<u64>; 3] {
    let db = restored(run, "db");
    let orders = seqs(
        &exec(
            &db,
            "postgres",
            &[
                "psql",
                "-d",
                "drill",
                "-Atc",
                "SELECT seq FROM orders WHERE seq IS NOT NULL",
            ],
        ),
        "",
    );
    let cache = restored(run, "cache");
    let acl = exec(&cache, "root", &["cat", "/etc/redis/drillrig.acl"]);
    let password = acl
        .split_whitespace()
        .find_map(|w| w.strip_prefix('>'))
        .expect("the ACL file holds the password");
    let keys = seqs(
        &exec(
            &cache,
            "root",
            &[
                "redis-cli",
                "--no-auth-warning",
                "-a",
                password,
                "--scan",
                "--pattern",
                "seq:*",
            ],
        ),
        "seq:",
    );
    let mq = restored(run, "mq");
    // The broker's default user comes from a file drillrig wrote into the container.
    let conf = exec(
        &mq,
        "root",
        &["cat", "/etc/rabbitmq/conf.d/30-drillrig-user.conf"],
    );
    let password = conf
        .lines()
        .find_map(|l| l.strip_prefix("default_pass = "))
        .expect("the configuration holds the password")
        .trim()
        .to_string();
    let port = docker(&["port", &mq, "5672/tcp"]);
    let port = port
        .lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .unwrap()
        .trim()
        .to_string();
    let events = tokio::runtime::Runtime::new().unwrap().block_on(async {
        use lapin::options::BasicGetOptions;
        let uri = format!("amqp://drill:{password}@127.0.0.1:{port}/drill");
        let conn = lapin::Connection::connect(&uri, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        let mut per_queue = Vec::new();
        for queue in ["orders.quorum", "orders.classic"] {
            let mut ids = BTreeSet::new();
            while let Some(got) = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                if let Some(id) = got.delivery.properties.message_id()
                    && let Ok(seq) = id.as_str().parse::<u64>()
                {
                    ids.insert(seq);
                }
            }
            per_queue.push(ids);
        }
        per_queue[0]
            .intersection(&per_queue[1])
            .copied()
            .collect::<BTreeSet<u64>>()
    });
    [orders, keys, events]
}

fn span<'r>(run: &'r Run, phase: &str, target: &str) -> &'r Value {
    run.report["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == phase && p["target"] == target)
        .unwrap_or_else(|| panic!("no {phase} of {target} on the timeline"))
}

fn target<'r>(run: &'r Run, name: &str) -> &'r Value {
    run.report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap()
}

#[test]
fn a_lost_site_comes_back_from_encrypted_offsite_copies_in_the_runbooks_order() {
    let _engine = engine();
    let (_s3, endpoint) = s3_server("drillrig-test-s3-platform");
    let key = repo("fixtures/offsite/dr-site.key");
    let scenario = variant(
        "scenarios/platform-site-loss.toml",
        "platform-site-loss",
        &[
            (
                r#"path = "../reports/offsite""#,
                &format!("url = \"s3://backups/drills/\"\nendpoint = \"{endpoint}\""),
            ),
            (
                r#"identity = "../fixtures/offsite/dr-site.key""#,
                &format!(r#"identity = "{}""#, key.display()),
            ),
        ],
    );
    let env = s3_env(S3_SECRET);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Kept, so the restored stores can be read directly below; `remove_run` removes them.
    env.push(("DRILLRIG_KEEP", "always"));
    let engine_events = crate::engine_clock::EngineEvents::follow();
    let run = drill(&scenario, "platform-site-loss", &env);
    let engine_events = engine_events.stop();
    let [orders, cache, events] = stores(&run);
    remove_run(run.run_id());
    assert_eq!(run.code(), Some(0), "{}", run.debug());
    assert_eq!(run.report["outcome"], "met");
    // Every container of the three stores removed inside the site loss, by the engine's clock.
    crate::engine_clock::assert_sites_lost_on_the_engine_clock(&run, &engine_events);

    // The cross-store counts, against the rows read from the restored stores themselves.
    let c = &run.report["platform"]["cross_store"];
    let count = |a: &BTreeSet<u64>, b: &BTreeSet<u64>| a.difference(b).count() as u64;
    assert!(!orders.is_empty() && !cache.is_empty() && !events.is_empty());
    assert_eq!(
        c["phantom_events"].as_u64().unwrap(),
        count(&events, &orders),
        "{c:#}"
    );
    assert_eq!(
        c["orphan_cache_entries"].as_u64().unwrap(),
        count(&cache, &orders),
        "{c:#}"
    );
    assert_eq!(
        c["orders_without_event"].as_u64().unwrap(),
        count(&orders, &events),
        "{c:#}"
    );
    assert_eq!(c["passed"], true, "{c:#}");
    let agree = orders == cache && cache == events;
    assert_eq!(c["consistent_at_seq"].is_null(), !agree, "{c:#}");

    // The runbook's order: the broker's restore begins once the database is verified, the
    // cache's once the broker is.
    for (before, after) in [("db", "mq"), ("mq", "cache")] {
        let verified = span(&run, "verify", before)["ended_ms"].as_u64().unwrap();
        let restore = span(&run, "restore", after)["started_ms"].as_u64().unwrap();
        assert!(
            restore >= verified,
            "{after} restored before {before} was verified"
        );
        assert!(
            target(&run, after)["rto"]["phases"]["wait"]
                .as_u64()
                .is_some()
        );
    }

    // The site is gone: its containers, volumes and network, and its backup repository.
    let lost = &run.report["faults"][0]["details"];
    assert_eq!(lost["removed"]["containers"], 3, "{lost}");
    assert_eq!(lost["removed"]["volumes"], 3, "{lost}");
    assert_eq!(lost["removed"]["networks"], 1, "{lost}");
    assert!(lost["deleted"]["files"].as_u64().unwrap() >= 9, "{lost}");
    assert!(
        !run.dir.join("backups").exists(),
        "the local repository survived the site loss"
    );

    let objects = bucket(&endpoint, "drills/platform-site-loss");
    for name in ["db", "mq", "cache"] {
        let t = target(&run, name);
        // The site loss took from `started_ms` to `injected_at_ms`: what landed, landed by then.
        let lost_by = run.report["faults"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["target"] == name)
            .unwrap()["injected_at_ms"]
            .as_u64()
            .unwrap();
        // What landed in the bucket, read there: sealed artefacts and a manifest per backup.
        let manifests: Vec<Value> = objects
            .iter()
            .filter(|(k, _)| k.contains(&format!("/{name}/")) && k.ends_with("/manifest.json"))
            .map(|(_, b)| serde_json::from_slice(b).unwrap())
            .collect();
        let landed: Vec<u64> = manifests
            .iter()
            .map(|m| m["backup"]["id"].as_u64().unwrap())
            .collect();
        assert!(!landed.is_empty(), "{name}: nothing landed offsite");
        for (key, bytes) in objects
            .iter()
            .filter(|(k, _)| k.contains(&format!("/{name}/")) && k.ends_with(".age"))
        {
            assert!(
                bytes.starts_with(b"age-encryption.org/v1\n"),
                "{key} is not sealed"
            );
        }
        // The DR site restored the newest backup that landed, fetched from the bucket.
        let restored = t["restore"]["backup_id"].as_u64().unwrap();
        assert_eq!(Some(restored), landed.iter().copied().max(), "{name}");
        assert_eq!(t["offsite"]["fetched"]["backup_id"], restored);
        assert!(t["offsite"]["fetched"]["bytes"].as_u64().unwrap() > 0);
        assert!(t["rto"]["phases"]["fetch"].as_u64().is_some());
        let dr = run.dir.join("dr-site/backups").join(name);
        assert_eq!(
            std::fs::read_dir(&dr).unwrap().count(),
            1,
            "{name}: only the restored backup came back"
        );
        // Shipping lag per backup: landed after it was taken, before shipping stopped; what
        // the report says landed is what the bucket holds.
        let stopped = run.report["faults"][0]["details"]["shipping_stopped_ms"]
            .as_u64()
            .unwrap();
        let shipped = t["offsite"]["shipped"].as_array().unwrap();
        for s in shipped {
            let (taken, landed_at) = (
                s["taken_ms"].as_u64().unwrap(),
                s["landed_ms"].as_u64().unwrap(),
            );
            assert_eq!(s["lag_ms"].as_u64().unwrap(), landed_at - taken);
            assert!(landed_at <= stopped && stopped <= lost_by, "{name}: {s}");
        }
        let reported: BTreeSet<u64> = shipped
            .iter()
            .map(|s| s["backup_id"].as_u64().unwrap())
            .collect();
        assert_eq!(reported, landed.iter().copied().collect(), "{name}");
        // The ledger measures what the lag cost: every write acknowledged before the restored
        // backup's consistent point is back, every one lost came after it.
        let consistent_at = t["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == restored)
            .unwrap()["consistent_at_ms"]
            .as_f64()
            .unwrap();
        let ledger = run.ledger_of(name);
        assert!(ledger.iter().any(|w| w.3 == "yes"), "{name}: nothing lost");
        for w in &ledger {
            if w.3 == "yes" {
                assert!(w.1 >= consistent_at, "{name}: seq {} lost", w.0);
            }
            if w.2 == "ok" && w.1 < consistent_at {
                assert_eq!(w.3, "no", "{name}: seq {} acked before the copy", w.0);
            }
        }
        assert_eq!(t["rpo"]["holes"], 0);
    }

    // The platform: from the first fault to the last recovery.
    let p = &run.report["platform"];
    let recovered =
        ["db", "mq", "cache"].map(|n| target(&run, n)["rto"]["recovered_at_ms"].as_u64().unwrap());
    let first = ["db", "mq", "cache"]
        .map(|n| target(&run, n)["rto"]["fault_at_ms"].as_u64().unwrap())
        .into_iter()
        .min()
        .unwrap();
    let last = recovered.into_iter().max().unwrap();
    assert_eq!(p["rto"]["achieved_ms"].as_u64().unwrap(), last - first);
    assert_eq!(p["rto"]["last_target"], "cache");
    assert!(run.stdout().contains("platform"));

    // Neither the store's secret nor the DR site's key reaches an output.
    let identity = std::fs::read_to_string(&key).unwrap();
    let secret_key = identity
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap();
    let mut outputs = format!("{}{}", run.stdout(), run.stderr());
    for f in files_under(&run.dir) {
        if f.extension()
            .is_some_and(|e| e == "json" || e == "md" || e == "log" || e == "csv")
        {
            outputs.push_str(&String::from_utf8_lossy(&std::fs::read(&f).unwrap()));
        }
    }
    assert!(
        !outputs.contains(S3_SECRET),
        "the S3 secret reached an output"
    );
    assert!(
        !outputs.contains(secret_key),
        "the DR key reached an output"
    );
    crate::common::assert_report_md_agrees(&run);
    assert_no_leftovers(run.run_id());
}

#[test]
fn a_dr_site_holding_a_stale_key_cannot_restore_and_the_drill_names_the_key() {
    let _engine = engine();
    let offsite = crate::common::out_dir("platform-key-missing-offsite");
    let scenario = variant(
        "scenarios/controls/platform-key-missing.toml",
        "platform-key-missing",
        &[
            (
                r#"path = "../../reports/offsite""#,
                &format!(r#"path = "{}""#, offsite.display()),
            ),
            (
                r#"identity = "../../fixtures/offsite/escrow-stale.key""#,
                &format!(
                    r#"identity = "{}""#,
                    repo("fixtures/offsite/escrow-stale.key").display()
                ),
            ),
        ],
    );
    let run = drill(&scenario, "platform-key-missing", &[]);
    assert_eq!(run.code(), Some(1), "{}", run.debug());
    assert_eq!(run.report["outcome"], "missed");
    let t = run.target();
    let error = t["restore"]["error"].as_str().unwrap();
    let recipient = std::fs::read_to_string(repo("scenarios/controls/platform-key-missing.toml"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("recipient = \"")
                .map(|r| r.trim_end_matches('"').to_string())
        })
        .unwrap();
    assert!(
        error.contains(&recipient) && error.contains("escrow-stale.key"),
        "the error names the key needed and the one the DR site has: {error}"
    );
    // The repository was there: the backup landed, sealed, and its manifest with it.
    let landed = files_under(&offsite);
    assert!(
        landed.iter().any(|f| f.ends_with("manifest.json"))
            && landed
                .iter()
                .any(|f| f.extension().is_some_and(|e| e == "age")),
        "{landed:?}"
    );
    assert!(!Path::new(&run.dir.join("backups")).exists());
    assert!(t["rto"]["achieved_ms"].is_null());
    crate::common::assert_report_md_agrees(&run);
    assert_no_leftovers(run.run_id());
}
