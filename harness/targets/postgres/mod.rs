//! PostgreSQL targets: the `orders` fixture, an INSERT workload keeping the ledger, `pg_dump`
//! backups taken in an exported snapshot (so their row counts and digests are exact), faults on
//! live data files and tables, restores with `pg_restore`, and the catalogue checks.
//!
//! Every PostgreSQL tool runs inside a container (`docker exec`), never on the host.

mod checks;
mod dump;
mod faults;
mod overrides;
mod physical;
mod replication;
pub mod schema;
mod source;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use async_trait::async_trait;
use tokio_postgres::error::{Severity, SqlState};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};

use super::service::{CONNECT_TIMEOUT, Connector, Service, Session, connect_to};
use super::{Capabilities, Outages, RecoveryPoint, RestoreRequest, Restored, Target, TargetEnv};
use crate::backup::{Backup, Contents, FreshBackup};
use crate::checks::{CheckResult, Evidence};
use crate::docker::ContainerSpec;
use crate::docker::image::DefaultImage;
use crate::measure::{Prober, RecoveryPhases};
use crate::source::Fetched;
use crate::source::format::Format;
use crate::spec::{Ask, BackupMethod, CheckKind, FaultKind, FaultSpec, QueryKey, SourceKey};
use crate::workload::{ReadBack, WriteOutcome, Writer, mix};

pub const CAPABILITIES: Capabilities = Capabilities {
    image: DefaultImage {
        official: "postgres:15",
        local: "drillrig/postgres:15-bookworm",
    },
    fixtures: &["orders"],
    default_rows: 10_000,
    default_rate: 100,
    datasets: &["orders", "customers"],
    backups: &[BackupMethod::PgDump, BackupMethod::PgBasebackupWal],
    faults: &[
        FaultKind::Kill,
        FaultKind::Stop,
        FaultKind::Pause,
        FaultKind::NetworkPartition,
        FaultKind::Latency,
        FaultKind::CorruptDataFile,
        FaultKind::DropTable,
        FaultKind::BadUpdate,
        FaultKind::VolumeLoss,
        FaultKind::CorruptBackup,
        FaultKind::TruncateBackup,
        FaultKind::DeleteWalSegment,
    ],
    checks: &[
        CheckKind::Ledger,
        CheckKind::RowCounts,
        CheckKind::Checksums,
        CheckKind::ForeignKeys,
        CheckKind::Amcheck,
        CheckKind::BackupIntegrity,
        CheckKind::PgVerifybackup,
        CheckKind::BackupSize,
        CheckKind::BackupAge,
        CheckKind::WalContinuity,
    ],
    target_keys: schema::TARGET_KEYS,
    target_keys_schema: schema::keys_schema,
    options: schema::options,
    fault_keys: &[
        (FaultKind::CorruptDataFile, "relation"),
        (FaultKind::DropTable, "relation"),
        (FaultKind::Kill, "node"),
        (FaultKind::Stop, "node"),
        (FaultKind::Pause, "node"),
        (FaultKind::NetworkPartition, "node"),
    ],
    aim: schema::aim,
    replicated: |spec| {
        spec.options_of::<schema::PgOptions>()
            .is_some_and(|o| o.replication.is_some())
    },
    source_checks: &[
        CheckKind::Amcheck,
        CheckKind::ForeignKeys,
        CheckKind::PgVerifybackup,
        CheckKind::BackupIntegrity,
        CheckKind::BackupAge,
        CheckKind::BackupSize,
    ],
    source_formats: &[
        Format::PgCustom,
        Format::PgTar,
        Format::PgDirectory,
        Format::PgPlain,
        Format::PgDumpall,
        Format::PgBaseTar,
        Format::PgBasePlain,
        Format::PgBackRest,
    ],
    source_keys: &[SourceKey::Database, SourceKey::Stanza],
    query_key: QueryKey::Sql,
};

/// The database the drill uses in every container.
const DATABASE: &str = "drill";
const PGDATA: &str = "/var/lib/postgresql/data";
const PORT: u16 = 5432;
/// The superuser's password, for the entrypoint's `POSTGRES_PASSWORD_FILE`.
const PASSWORD_FILE: &str = "/etc/drillrig/postgres-password";
/// Rows written by the round trip carry this status.
const CANARY_STATUS: &str = "drillrig-canary";

/// What the postmaster logs when a backend dies abnormally and it restarts every session: a
/// crash no fault of the scenario causes (`kill` takes the whole container, the data-file fault
/// stops the server cleanly).
const CRASH_RESTART: &str = "terminating any other active server processes";

const INSERT: &str =
    "INSERT INTO orders (customer_id, amount_cents, status, seq) VALUES ($1, $2, 'new', $3)";
/// The probe reads the newest workload row through the `seq` index, so it touches the heap page
/// the workload writes to.
const PROBE: &str = "SELECT amount_cents FROM orders WHERE seq = (SELECT max(seq) FROM orders)";

/// How to log in to the drill's database.
#[derive(Clone)]
struct Login {
    password: Arc<str>,
    database: Arc<str>,
}

#[async_trait]
impl Connector for Login {
    type Connection = Client;

    async fn open(&self, port: u16) -> Result<Client> {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user("postgres")
            .password(self.password.as_bytes())
            .dbname(&*self.database)
            .connect_timeout(CONNECT_TIMEOUT);
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| anyhow!(error_line(&e)))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    fn alive(&self, client: &Client) -> bool {
        !client.is_closed()
    }
}

/// A login with the workload's INSERT prepared on it.
#[derive(Clone)]
struct Inserter(Login);

#[async_trait]
impl Connector for Inserter {
    type Connection = (Client, Statement);

    async fn open(&self, port: u16) -> Result<(Client, Statement)> {
        let client = self.0.open(port).await?;
        let insert = client
            .prepare(INSERT)
            .await
            .map_err(|e| anyhow!(error_line(&e)))?;
        Ok((client, insert))
    }

    fn alive(&self, (client, _): &(Client, Statement)) -> bool {
        !client.is_closed()
    }
}

/// A PostgreSQL error in one line: SQLSTATE and message for server errors, the cause otherwise.
fn error_line(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn no_params() -> impl ExactSizeIterator<Item = &'static (dyn ToSql + Sync)> {
    std::iter::empty()
}

/// The order the workload writes for `seq`: `(customer_id, amount_cents)`.
fn order_for(seed: u64, customers: u64, seq: u64) -> (i64, i64) {
    let h = mix(seed, seq);
    (1 + (h % customers) as i64, ((h >> 32) % 100_000) as i64)
}

fn order_digest(customer_id: i64, amount_cents: i64) -> u64 {
    mix(customer_id as u64, amount_cents as u64)
}

pub struct Postgres {
    service: Service,
    customers: u64,
    /// Foreign keys the fixture declared, checked after restore.
    foreign_keys: Vec<String>,
    /// The database queries, checks and the round trip use: the drill's own, or a restore
    /// test's dump's.
    database: String,
}

impl Postgres {
    pub fn new(env: TargetEnv) -> Self {
        let customers = (env.spec.dataset.rows / 10).max(1);
        // A restore test's scratch server has only `postgres` until the dump brings its own.
        let database = if env.spec.source.is_some() {
            "postgres"
        } else {
            DATABASE
        };
        Postgres {
            service: Service::new(env, "PostgreSQL", "postgres", database),
            customers,
            foreign_keys: Vec::new(),
            database: database.into(),
        }
    }

    fn login(&self) -> Login {
        Login {
            password: self.service.password(),
            database: self.database.as_str().into(),
        }
    }

    async fn connect(&self) -> Result<Client> {
        self.service.connect(self.login()).await
    }

    /// Whether the backup method archives WAL: the primary then archives into the repository.
    fn archives_wal(&self) -> bool {
        self.service
            .env
            .spec
            .backup
            .is_some_and(|b| b.method.archives_wal())
    }

    /// The WAL archive in the repository, outside every container.
    fn archive_dir(&self) -> std::path::PathBuf {
        self.service.env.repository.join(crate::backup::ARCHIVE)
    }

    /// The container spec every PostgreSQL container of this target shares.
    fn container_spec(
        &self,
        name: String,
        volume: String,
        cmd: Vec<String>,
        binds: Vec<(std::path::PathBuf, String, bool)>,
    ) -> ContainerSpec {
        ContainerSpec {
            name,
            image: self.service.env.image.clone(),
            env: vec![
                // The entrypoint reads the password from this file, written into the container
                // before it starts: it is in no environment `docker inspect` shows.
                ("POSTGRES_PASSWORD_FILE".into(), PASSWORD_FILE.into()),
                // A restore test's scratch server starts with only `postgres`: the dump
                // brings its own database.
                (
                    "POSTGRES_DB".into(),
                    if self.service.env.spec.source.is_some() {
                        "postgres".into()
                    } else {
                        DATABASE.into()
                    },
                ),
                // 1 MB WAL segments keep archives of short drills small.
                (
                    "POSTGRES_INITDB_ARGS".into(),
                    "--data-checksums --wal-segsize=1".into(),
                ),
            ],
            cmd,
            port: PORT,
            volume: Some((volume, PGDATA.into())),
            binds,
            entrypoint: None,
            copy_in: Vec::new(),
            files: vec![(
                PASSWORD_FILE.into(),
                self.service.env.password.clone().into_bytes(),
            )],
            hostname: None,
            net_admin: self.replication_options().is_some(),
            // The drill bounds the whole step; this only keeps the engine's start from giving
            // up first.
            startup_timeout: self.service.env.timeouts.provision
                + self.service.env.timeouts.restore,
        }
    }

    /// Starts a container and waits until it is `ready`.
    async fn start_container(
        &mut self,
        spec: ContainerSpec,
        ready: Ready,
        limit: Duration,
    ) -> Result<()> {
        self.service.start(&spec).await?;
        self.wait_ready(ready, limit).await
    }

    /// Polls with a real query until the current container is `ready`.
    async fn wait_ready(&self, ready: Ready, limit: Duration) -> Result<()> {
        let query = match ready {
            Ready::Serving => "SELECT true",
            Ready::Promoted => "SELECT NOT pg_is_in_recovery()",
        };
        let login = self.login();
        self.service
            .wait_ready(limit, |port| {
                let login = login.clone();
                async move {
                    let client = connect_to(&login, port)
                        .await
                        .map_err(|e| format!("{e:#}"))?;
                    match client.query_one(query, &[]).await {
                        Ok(row) if row.get::<_, bool>(0) => Ok(()),
                        Ok(_) => Err("still in recovery".to_string()),
                        Err(e) => Err(error_line(&e)),
                    }
                }
            })
            .await
    }
}

/// What "ready" means for a container being started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ready {
    /// Answers queries.
    Serving,
    /// Answers queries and has left recovery (promoted after a point-in-time restore).
    Promoted,
}

#[async_trait]
impl Target for Postgres {
    async fn provision(&mut self) -> Result<()> {
        let replication = self.replication_options();
        let (name, volume) = match replication {
            Some(_) => {
                let docker = self.service.env.docker.clone();
                let limit = self.service.env.spec.volume_limit;
                self.service
                    .containers
                    .next_node(&docker, "primary", limit)
                    .await?
            }
            None => self.service.next_container().await?,
        };
        let (cmd, binds) = if self.archives_wal() {
            let dir = self.archive_dir();
            physical::prepare_archive(&dir)?;
            (
                physical::archiving_command(
                    self.service.env.spec.backup.and_then(|b| b.archive_timeout),
                ),
                vec![(dir, physical::ARCHIVE.to_string(), false)],
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let spec = self.container_spec(name, volume, cmd, binds);
        self.start_container(spec, Ready::Serving, self.service.env.timeouts.provision)
            .await?;
        match replication {
            Some(replication) => self.start_standbys(replication).await,
            None => Ok(()),
        }
    }

    async fn seed(&mut self) -> Result<()> {
        let fixture = &self.service.env.spec.dataset.fixture;
        let sql = match fixture.as_str() {
            "orders" => include_str!("../../../fixtures/postgres/orders.sql"),
            other => bail!("no postgres fixture {other:?}"),
        };
        let sql = sql
            .replace("{{rows}}", &self.service.env.spec.dataset.rows.to_string())
            .replace("{{customers}}", &self.customers.to_string());
        let client = self.connect().await?;
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| anyhow!("load fixture {fixture}: {}", error_line(&e)))?;
        self.foreign_keys = checks::foreign_key_names(&client).await?;
        Ok(())
    }

    fn writer(&self) -> Box<dyn Writer> {
        Box::new(PgWriter {
            session: Session::new(self.service.endpoint(Inserter(self.login()))),
            seed: self.service.env.seed,
            customers: self.customers,
        })
    }

    fn prober(&self) -> Box<dyn Prober> {
        Box::new(PgProber {
            session: Session::new(self.service.endpoint(self.login())),
        })
    }

    async fn backup(&self, method: BackupMethod, dir: &std::path::Path) -> Result<FreshBackup> {
        match method {
            BackupMethod::PgDump => dump::take(self, dir).await,
            BackupMethod::PgBasebackupWal => physical::take(self, dir).await,
            other => bail!("backup method {other} is not implemented for postgres"),
        }
    }

    fn outages(&mut self) -> &mut dyn Outages {
        &mut self.service
    }

    async fn inject(&mut self, fault: &FaultSpec, backups: &[Backup]) -> Result<serde_json::Value> {
        let relation = fault.aim.as_deref().unwrap_or(CAPABILITIES.datasets[0]);
        match fault.kind {
            FaultKind::CorruptDataFile => faults::corrupt_page(self, relation).await,
            FaultKind::DropTable => faults::drop_table(self, relation).await,
            FaultKind::BadUpdate => faults::bad_update(self).await,
            FaultKind::DeleteWalSegment => physical::delete_segment(self, backups),
            other => bail!("fault {other} is not a postgres fault"),
        }
    }

    async fn recovery_point(&self) -> Result<Option<RecoveryPoint>> {
        let client = self.connect().await?;
        let asked_at_us = self.service.env.clock.micros();
        let lsn: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| anyhow!("read the current WAL location: {}", error_line(&e)))?
            .get(0);
        Ok(Some(RecoveryPoint {
            label: lsn,
            asked_at_us,
            answered_at_us: self.service.env.clock.micros(),
        }))
    }

    async fn replication(&self) -> Option<serde_json::Value> {
        self.replication_options()?;
        Some(self.replication_state().await)
    }

    async fn fail_over(
        &mut self,
        phases: &mut RecoveryPhases,
        limit: Duration,
    ) -> Result<Restored> {
        self.promote_standby(phases, limit).await
    }

    async fn restart(&mut self, limit: Duration) -> Result<()> {
        self.service.start_again().await?;
        self.wait_ready(Ready::Serving, limit).await
    }

    async fn serve_again(&mut self, limit: Duration) -> Result<()> {
        self.wait_ready(Ready::Serving, limit).await
    }

    async fn restore(
        &mut self,
        request: &RestoreRequest<'_>,
        phases: &mut RecoveryPhases,
    ) -> Result<Restored> {
        match request.backup.method {
            BackupMethod::PgDump => dump::restore(self, request.backup, phases).await,
            BackupMethod::PgBasebackupWal => physical::restore(self, request, phases).await,
            other => bail!("restoring {other} backups is not implemented for postgres"),
        }
    }

    async fn restore_source(
        &mut self,
        fetched: &Fetched,
        phases: &mut RecoveryPhases,
    ) -> Result<Restored> {
        source::restore(self, fetched, phases).await
    }

    async fn query(&self, ask: &Ask) -> Result<String> {
        match ask {
            Ask::Sql(sql) => source::query(self, sql).await,
            other => bail!("a postgres query asks with `sql`, not {other:?}"),
        }
    }

    async fn read_back(&self) -> Result<ReadBack> {
        use futures::TryStreamExt;
        let client = self.connect().await?;
        let rows = client
            .query_raw(
                "SELECT seq, customer_id, amount_cents FROM orders WHERE seq IS NOT NULL",
                no_params(),
            )
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            // The table is gone: the read-back fails, naming it (an empty read-back would pass
            // as a prefix loss).
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {
                bail!("the table orders is gone: {}", error_line(&e))
            }
            Err(e) => bail!("read the workload's orders: {}", error_line(&e)),
        };
        futures::pin_mut!(rows);
        let mut read = ReadBack::new();
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|e| anyhow!("read the workload's orders: {}", error_line(&e)))?
        {
            let (seq, customer, amount): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            read.push((seq as u64, order_digest(customer, amount)));
        }
        Ok(read)
    }

    async fn contents(&self) -> Result<Contents> {
        let client = self.connect().await?;
        // What the checks compare: counts alone need no hashing.
        let depth = match checks::Depth::for_checks(&self.service.env.spec.checks) {
            checks::Depth::None => checks::Depth::Counts,
            d => d,
        };
        checks::contents(&client, depth).await
    }

    async fn seed_facts(&self) -> Result<Contents> {
        let client = self.connect().await?;
        checks::seed_facts(&client).await
    }

    async fn check(&self, check: CheckKind, evidence: &Evidence<'_>) -> CheckResult {
        match check {
            CheckKind::ForeignKeys => checks::foreign_keys(self).await,
            CheckKind::Amcheck => checks::amcheck(self).await,
            CheckKind::PgVerifybackup => physical::verify_backup(self, evidence).await,
            CheckKind::WalContinuity => physical::wal_continuity(evidence),
            CheckKind::BackupAge => checks::backup_age(self, evidence),
            other => CheckResult::unknown(other, "not a postgres-specific check"),
        }
    }

    async fn round_trip(&self) -> Result<()> {
        if self.service.env.spec.source.is_some() {
            return source::round_trip(self).await;
        }
        let client = self.connect().await?;
        let row = client
            .query_one(
                "INSERT INTO orders (customer_id, amount_cents, status) \
                 VALUES ((SELECT min(id) FROM customers), 0, $1) RETURNING id",
                &[&CANARY_STATUS],
            )
            .await
            .map_err(|e| anyhow!("write a canary order: {}", error_line(&e)))?;
        let id: i64 = row.get(0);
        let status: String = client
            .query_one("SELECT status FROM orders WHERE id = $1", &[&id])
            .await
            .map_err(|e| anyhow!("read the canary order back: {}", error_line(&e)))?
            .get(0);
        if status != CANARY_STATUS {
            bail!("the canary order {id} reads back as {status:?}");
        }
        Ok(())
    }

    async fn unasked_outages(&self, _injected: &[FaultKind]) -> Vec<String> {
        self.service.log_lines(&[CRASH_RESTART]).await
    }
}

/// The workload's writer: one INSERT per seq, in autocommit, on a prepared statement.
struct PgWriter {
    session: Session<Inserter>,
    seed: u64,
    customers: u64,
}

#[async_trait]
impl Writer for PgWriter {
    fn digest(&self, seq: u64) -> u64 {
        let (customer, amount) = order_for(self.seed, self.customers, seq);
        order_digest(customer, amount)
    }

    async fn write(&mut self, seq: u64) -> WriteOutcome {
        let (customer, amount) = order_for(self.seed, self.customers, seq);
        let Ok((client, insert)) = self.session.begin().await else {
            // Nothing was sent.
            return WriteOutcome::Fail;
        };
        let result = client
            .execute(&*insert, &[&customer, &amount, &(seq as i64)])
            .await;
        self.session.landed();
        match result {
            Ok(1) => WriteOutcome::Ok,
            Ok(_) => WriteOutcome::Info,
            // An ERROR ends the statement's implicit transaction: not committed.
            Err(e)
                if e.as_db_error()
                    .is_some_and(|d| d.parsed_severity() == Some(Severity::Error)) =>
            {
                WriteOutcome::Fail
            }
            // FATAL, PANIC, a broken connection: the commit may or may not have happened.
            Err(_) => {
                self.session.reset();
                WriteOutcome::Info
            }
        }
    }
}

struct PgProber {
    session: Session<Login>,
}

#[async_trait]
impl Prober for PgProber {
    async fn probe(&mut self) -> Result<(), String> {
        let client = self
            .session
            .connection()
            .await
            .map_err(|e| format!("{e:#}"))?;
        match client.query_opt(PROBE, &[]).await {
            Ok(_) => Ok(()),
            Err(e) => {
                if e.as_db_error().is_none() {
                    self.session.reset();
                }
                Err(error_line(&e))
            }
        }
    }
}
