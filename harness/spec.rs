//! The drill's vocabulary: a checked scenario and its targets, faults, backups, checks and
//! objectives, as every layer below the scenario parser reads them. `scenario` builds these from
//! a file; nothing here parses.

use std::any::Any;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// One drill, checked and ready to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub path: PathBuf,
    pub name: String,
    pub description: String,
    /// How long the workload runs on targets that no fault ends.
    pub duration: Duration,
    /// Seed for every random choice (values written, bytes damaged); `None`: chosen per run.
    pub seed: Option<u64>,
    pub timeouts: Timeouts,
    /// Targets in name order.
    pub targets: Vec<TargetSpec>,
    /// Faults in `at` order (file order among equal offsets).
    pub faults: Vec<FaultSpec>,
    /// `[platform]`: objectives for every target together.
    pub platform: Option<PlatformObjectives>,
    /// `[offsite]`: where backups are shipped, encrypted, as they are taken.
    pub offsite: Option<OffsiteSpec>,
}

/// `[offsite]`: the repository off the site. Every completed backup is encrypted on this host
/// to `recipient` and shipped there on a schedule; after a `site-loss` it is all that is left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsiteSpec {
    pub location: SourceLocation,
    /// How often the backups completed since the last shipment are shipped.
    pub every: Duration,
    /// The age recipient (`age1…`) backups are encrypted to before they leave.
    pub recipient: String,
    /// The identity file the DR site decrypts with; without it, `DRILLRIG_OFFSITE_IDENTITY`.
    /// Read only when the DR site needs it, so a DR site without the key is a finding.
    pub identity: Option<PathBuf>,
}

/// What the platform as a whole promises: its RTO runs from the first fault to the last
/// target's recovery, and its RPO is the worst target's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformObjectives {
    pub rto: Duration,
    pub rpo: Duration,
    /// `workload`: one application writing across the stores instead of a workload per target.
    pub workload: Option<PlatformWorkload>,
}

/// The platform workload: per seq, the order into PostgreSQL (`order`), then its cache entry
/// into Redis (`cache`), then its event into RabbitMQ (`event`), each only once the one before
/// was acknowledged; the write is acknowledged when all three are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformWorkload {
    pub rate: u32,
    /// The targets in write order: the order's, the cache's and the event's.
    pub chain: [String; 3],
}

/// The platform's row in the report and the history, beside the targets' (no target may take
/// the name while `[platform]` is there).
pub const PLATFORM: &str = "platform";

impl Scenario {
    pub fn target(&self, name: &str) -> Option<&TargetSpec> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// The faults aimed at `target`, in `at` order.
    pub fn faults_for<'a>(&'a self, target: &'a str) -> impl Iterator<Item = &'a FaultSpec> + 'a {
        self.faults.iter().filter(move |f| f.target == target)
    }
}

/// A limit on every external step of a drill; a step that overruns ends the drill as `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    #[serde(with = "crate::util::millis")]
    pub provision: Duration,
    #[serde(with = "crate::util::millis")]
    pub seed: Duration,
    #[serde(with = "crate::util::millis")]
    pub backup: Duration,
    #[serde(with = "crate::util::millis")]
    pub fault: Duration,
    #[serde(with = "crate::util::millis")]
    pub detect: Duration,
    #[serde(with = "crate::util::millis")]
    pub archive: Duration,
    #[serde(with = "crate::util::millis")]
    pub restore: Duration,
    #[serde(with = "crate::util::millis")]
    pub check: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            provision: Duration::from_secs(120),
            seed: Duration::from_secs(600),
            backup: Duration::from_secs(600),
            fault: Duration::from_secs(120),
            detect: Duration::from_secs(30),
            archive: Duration::from_secs(60),
            restore: Duration::from_secs(1800),
            check: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TargetSpec {
    pub name: String,
    pub kind: TargetKind,
    pub image: Option<String>,
    pub dataset: Dataset,
    /// Acknowledged writes per second; 0 = as fast as the target takes them.
    pub rate: u32,
    pub backup: Option<BackupSpec>,
    pub restore: RestorePoint,
    /// `restore.after`: the targets whose recovery this target's restore waits for, in the
    /// runbook's order.
    pub restore_after: Vec<String>,
    pub checks: Vec<CheckKind>,
    pub objectives: Objectives,
    /// The kind's own options (`targets/<kind>/schema.rs`), as the kind checked them.
    pub options: Arc<dyn KindOptions>,
    /// The data volume's fixed size in bytes (a tmpfs volume of that size), set when a
    /// `disk-full` fault aims at the target, so that filling it never touches the host's disk.
    pub volume_limit: Option<u64>,
    /// The workload's and probes' connections pass drillrig's TCP proxy, set when a `latency`
    /// fault aims at the target.
    pub proxied: bool,
    /// A restore test: the user's own backup is fetched from here, restored and proven. Such a
    /// target has no dataset, workload, backups or faults.
    pub source: Option<SourceSpec>,
    /// The user's own queries, each a check after the restore.
    pub queries: Vec<QuerySpec>,
    /// PostgreSQL: the database queries and checks run in (default: the dump's own).
    pub database: Option<String>,
}

/// `source`: where a restore test finds the user's backup.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSpec {
    pub location: SourceLocation,
    /// The WAL archive a base backup replays from (a folder or a prefix).
    pub wal: Option<SourceLocation>,
    /// A glob on names (`*.dump`); the newest match is restored.
    pub pattern: Option<String>,
    /// `backup-age` fails when the backup is older than this (default 24 h).
    pub max_age: Duration,
    /// `backup-size` fails when the size moved more than this share against the previous run.
    pub size_tolerance: f64,
    /// The age identity file an encrypted backup is decrypted with; without it, the identity
    /// is read from `DRILLRIG_AGE_IDENTITY`.
    pub identity: Option<PathBuf>,
    /// The stanza restored when the source is a pgBackRest repository (needed when it holds
    /// several).
    pub stanza: Option<String>,
}

/// Where a source lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceLocation {
    /// A file, or a folder whose newest backup is taken.
    Path(PathBuf),
    /// An object-store URL (`s3://bucket/prefix/`, `gs://…`, `az://…`), with an endpoint
    /// override for S3-compatible servers and a region.
    Url {
        url: String,
        endpoint: Option<String>,
        region: Option<String>,
    },
}

impl SourceLocation {
    /// As the report shows it: never a credential (URLs carry none; the store's keys come from
    /// the environment).
    pub fn label(&self) -> String {
        match self {
            SourceLocation::Path(p) => p.display().to_string(),
            SourceLocation::Url { url, endpoint, .. } => match endpoint {
                Some(e) => format!("{url} (endpoint {e})"),
                None => url.clone(),
            },
        }
    }
}

/// One user query of a restore test (`[[targets.NAME.queries]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct QuerySpec {
    pub name: String,
    pub ask: Ask,
    pub expect: Option<Expect>,
    /// The largest share the value may move against the previous run's (0.01 = 1 %).
    pub drift: Option<f64>,
    /// The value is the time of the newest data restored (a timestamp or Unix seconds): the
    /// restore test's RPO counts from it.
    pub freshness: bool,
}

/// What a query asks, in the kind's own language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// PostgreSQL: SQL run in a read-only transaction; the first column of the first row.
    Sql(String),
    /// Redis: a read-only command and its arguments.
    Command(Vec<String>),
    /// RabbitMQ: a queue's depth (messages ready).
    Queue(String),
}

/// `expect`: what a query's value must be.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    AtLeast(f64),
    AtMost(f64),
    Equals(f64),
    Between(f64, f64),
    /// Exactly this text.
    Text(String),
}

impl Expect {
    /// Parses `>= N`, `<= N`, `== N`, `between A and B`, or takes the text as an exact value.
    pub fn parse(s: &str) -> Result<Expect, String> {
        let t = s.trim();
        let number = |v: &str| {
            v.trim()
                .replace('_', "")
                .parse::<f64>()
                .map_err(|_| format!("{v:?} in `{s}` is not a number"))
        };
        if let Some(v) = t.strip_prefix(">=") {
            return Ok(Expect::AtLeast(number(v)?));
        }
        if let Some(v) = t.strip_prefix("<=") {
            return Ok(Expect::AtMost(number(v)?));
        }
        if let Some(v) = t.strip_prefix("==") {
            return Ok(Expect::Equals(number(v)?));
        }
        if let Some(rest) = t.strip_prefix("between ") {
            let Some((a, b)) = rest.split_once(" and ") else {
                return Err(format!("`{s}`: expected `between A and B`"));
            };
            let (a, b) = (number(a)?, number(b)?);
            if a > b {
                return Err(format!("`{s}`: the lower bound is above the upper"));
            }
            return Ok(Expect::Between(a, b));
        }
        Ok(Expect::Text(s.to_string()))
    }

    /// Whether `value` meets the expectation.
    pub fn holds(&self, value: &str) -> bool {
        let n = value.trim().parse::<f64>().ok();
        match self {
            Expect::AtLeast(x) => n.is_some_and(|n| n >= *x),
            Expect::AtMost(x) => n.is_some_and(|n| n <= *x),
            Expect::Equals(x) => n.is_some_and(|n| n == *x),
            Expect::Between(a, b) => n.is_some_and(|n| *a <= n && n <= *b),
            Expect::Text(t) => value == t,
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::AtLeast(x) => write!(f, ">= {x}"),
            Expect::AtMost(x) => write!(f, "<= {x}"),
            Expect::Equals(x) => write!(f, "== {x}"),
            Expect::Between(a, b) => write!(f, "between {a} and {b}"),
            Expect::Text(t) => write!(f, "{t:?}"),
        }
    }
}

/// The size of a target's data volume when a `disk-full` fault aims at it.
pub const DISK_FULL_VOLUME: u64 = 64 << 20;

/// A kind's own target options: any type the kind defines. Only that kind reads them back
/// ([`TargetSpec::options_of`]).
pub trait KindOptions: Any + fmt::Debug + Send + Sync {}

impl<T: Any + fmt::Debug + Send + Sync> KindOptions for T {}

impl TargetSpec {
    /// The kind's options, as the kind's own type `T`; `None` when they are another type.
    pub fn options_of<T: Any>(&self) -> Option<&T> {
        let options: &dyn Any = &*self.options;
        options.downcast_ref()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    pub fixture: String,
    pub rows: u64,
    /// Run the drill once per size and project the RTO to a production size.
    pub projection: Option<Projection>,
}

/// `dataset.projection`: the drill runs once per size (`rows` replaced), and the RTOs achieved
/// are fitted against size and projected to `production_rows`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    pub sizes: Vec<u64>,
    pub production_rows: u64,
}

impl Scenario {
    /// The target whose dataset carries a projection, if one does.
    pub fn projected_target(&self) -> Option<&TargetSpec> {
        self.targets.iter().find(|t| t.dataset.projection.is_some())
    }

    /// One scenario per projection size, with that target's rows set to it; the scenario itself
    /// when it has no projection.
    pub fn expand_projection(&self) -> Vec<Scenario> {
        let Some(target) = self.projected_target() else {
            return vec![self.clone()];
        };
        let projection = target.dataset.projection.clone().expect("projected");
        projection
            .sizes
            .iter()
            .map(|&rows| {
                let mut s = self.clone();
                for t in &mut s.targets {
                    if t.name == target.name {
                        t.dataset.rows = rows;
                    }
                }
                s
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSpec {
    pub method: BackupMethod,
    pub every: Duration,
    /// WAL archiving methods: force a segment switch at least this often (bounds the RPO).
    pub archive_timeout: Option<Duration>,
}

/// `archive_timeout` when a WAL-archiving backup does not set one.
pub const DEFAULT_ARCHIVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Objectives {
    pub rto: Duration,
    pub rpo: Duration,
    pub max_lost_writes: Option<u64>,
    /// The acknowledged-write p99 a `latency` fault may cost at most (writes never acknowledged
    /// count as slower than every acknowledged one).
    pub write_p99: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSpec {
    pub target: String,
    pub kind: FaultKind,
    /// Offset from the workload's start.
    pub at: Duration,
    /// How long a temporary fault (pause, partition) lasts.
    pub hold: Option<Duration>,
    /// What the fault aims at inside its target, in the kind's terms, as the kind checked it:
    /// a PostgreSQL table (`relation`), a Redis data file (`file`), a RabbitMQ queue (`queue`).
    pub aim: Option<String>,
    /// The backup artefact `corrupt-backup` / `truncate-backup` damages (default: the largest).
    pub artefact: Option<String>,
    /// `latency`: what drillrig's proxy does to the target's connections while it lasts.
    pub toxics: Option<Toxics>,
    /// `network-partition`: what the node is cut off from.
    pub isolate: Isolate,
}

kebab_enum!(
    /// What a `network-partition` cuts its node off from.
    Isolate {
        /// Every client and every other node: off the run's network.
        All = "all",
        /// The target's other nodes only (its replicas and Sentinels); its clients still reach
        /// it: the split-brain case.
        Peers = "peers",
    }
);

/// What the `latency` fault's proxy does to every connection, like Toxiproxy's toxics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Toxics {
    /// Every chunk of data waits this long each way, varying within ± `jitter`.
    pub delay: Duration,
    pub jitter: Duration,
    /// At most this many bytes per second through each connection, each way.
    pub bandwidth: Option<u64>,
    /// Each connection is reset (a TCP RST to both ends) once it has been open this long
    /// while the fault lasts.
    pub reset: Option<Duration>,
}

macro_rules! kebab_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ::serde::Deserialize, ::serde::Serialize, ::schemars::JsonSchema)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
            /// The variant spelled `text`.
            pub fn parse(text: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.as_str() == text)
            }
        }
        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
/// A closed set of names spelled in kebab case in scenario files, for kinds' own enums too.
pub(crate) use kebab_enum;

kebab_enum!(
    /// The service a target runs.
    TargetKind { Postgres = "postgres", Redis = "redis", Rabbitmq = "rabbitmq" }
);

kebab_enum!(
    /// What a user query of a restore test asks with: SQL, a Redis command, a queue's depth.
    QueryKey { Sql = "sql", Command = "command", Queue = "queue" }
);

kebab_enum!(
    /// Keys of a restore test that only the kinds declaring them take (dotted from the
    /// target's table).
    SourceKey { Database = "database", Stanza = "source.stanza" }
);

kebab_enum!(
    /// How backups are taken.
    BackupMethod {
        PgDump = "pg-dump",
        PgBasebackupWal = "pg-basebackup-wal",
        RedisRdb = "redis-rdb",
        RedisAof = "redis-aof",
        RabbitmqExport = "rabbitmq-export",
    }
);

kebab_enum!(
    /// A verification run after the restore.
    CheckKind {
        Ledger = "ledger",
        RowCounts = "row-counts",
        Checksums = "checksums",
        ForeignKeys = "foreign-keys",
        Amcheck = "amcheck",
        BackupIntegrity = "backup-integrity",
        PgVerifybackup = "pg-verifybackup",
        BackupSize = "backup-size",
        BackupAge = "backup-age",
        WalContinuity = "wal-continuity",
        RedisCheck = "redis-check",
        Definitions = "definitions",
        Seed = "seed",
        /// A user query of a restore test (never listed in `checks`).
        Query = "query",
    }
);

kebab_enum!(
    /// An injected failure (docs/scenario.md §16).
    FaultKind {
        Kill = "kill",
        Pause = "pause",
        Stop = "stop",
        NetworkPartition = "network-partition",
        CorruptDataFile = "corrupt-data-file",
        DropTable = "drop-table",
        BadUpdate = "bad-update",
        Flushall = "flushall",
        DeleteQueue = "delete-queue",
        Reset = "reset",
        DeleteWalSegment = "delete-wal-segment",
        CorruptBackup = "corrupt-backup",
        TruncateBackup = "truncate-backup",
        DiskFull = "disk-full",
        Latency = "latency",
        VolumeLoss = "volume-loss",
        SiteLoss = "site-loss",
    }
);

impl FaultKind {
    /// Faults on the backup chain: they damage artefacts silently and do not disturb the
    /// running service, so they neither start the RTO clock nor end the workload.
    pub fn is_latent(self) -> bool {
        use FaultKind::*;
        match self {
            CorruptBackup | TruncateBackup | DeleteWalSegment => true,
            Kill | Pause | Stop | NetworkPartition | CorruptDataFile | DropTable | BadUpdate
            | Flushall | DeleteQueue | Reset | DiskFull | Latency | VolumeLoss | SiteLoss => false,
        }
    }

    /// Faults that heal after `for` (the option is required).
    pub fn takes_hold(self) -> bool {
        use FaultKind::*;
        match self {
            Pause | NetworkPartition | DiskFull | Latency => true,
            Kill | Stop | CorruptDataFile | DropTable | BadUpdate | Flushall | DeleteQueue
            | Reset | DeleteWalSegment | CorruptBackup | TruncateBackup | VolumeLoss | SiteLoss => {
                false
            }
        }
    }

    /// Faults that slow the service down without taking it down: like backup-chain faults they
    /// neither start the RTO clock nor end the workload, which runs on through them.
    pub fn degrades(self) -> bool {
        use FaultKind::*;
        match self {
            Latency => true,
            Kill | Pause | Stop | NetworkPartition | CorruptDataFile | DropTable | BadUpdate
            | Flushall | DeleteQueue | Reset | DeleteWalSegment | CorruptBackup
            | TruncateBackup | DiskFull | VolumeLoss | SiteLoss => false,
        }
    }

    /// Outages every kind suffers alike, at the container or its network rather than its data:
    /// the engine hands them to the target's service (`targets::Outages`), never to a kind's
    /// own code.
    pub fn is_outage(self) -> bool {
        use FaultKind::*;
        match self {
            Kill | Pause | Stop | NetworkPartition | Latency | VolumeLoss => true,
            CorruptDataFile | DropTable | BadUpdate | Flushall | DeleteQueue | Reset
            | DeleteWalSegment | CorruptBackup | TruncateBackup | DiskFull | SiteLoss => false,
        }
    }
}

impl CheckKind {
    /// Checks that look at the restored backup (there is none after `restart`).
    pub fn needs_backup(self) -> bool {
        use CheckKind::*;
        match self {
            RowCounts | Checksums | BackupIntegrity | PgVerifybackup | BackupSize
            | WalContinuity | RedisCheck | Definitions => true,
            Ledger | ForeignKeys | Amcheck | BackupAge | Seed | Query => false,
        }
    }

    /// Checks that compare with a logical snapshot taken at backup time.
    pub fn needs_snapshot(self) -> bool {
        use CheckKind::*;
        match self {
            RowCounts | Checksums => true,
            Ledger | ForeignKeys | Amcheck | BackupIntegrity | PgVerifybackup | BackupSize
            | BackupAge | WalContinuity | RedisCheck | Definitions | Seed | Query => false,
        }
    }

    /// Checks of a WAL archive and the physical base backups it extends.
    pub fn needs_wal_archive(self) -> bool {
        use CheckKind::*;
        match self {
            PgVerifybackup | WalContinuity => true,
            Ledger | RowCounts | Checksums | ForeignKeys | Amcheck | BackupIntegrity
            | BackupSize | BackupAge | RedisCheck | Definitions | Seed | Query => false,
        }
    }

    /// Checks that read the restored service, not only the backup: after a failed restore
    /// there is nothing for them to read, and they are not run.
    pub fn reads_service(self) -> bool {
        use CheckKind::*;
        match self {
            Ledger | RowCounts | Checksums | ForeignKeys | Amcheck | PgVerifybackup
            | Definitions | Seed | Query => true,
            // redis-check runs in a helper container when no server could load the backup.
            BackupIntegrity | BackupSize | BackupAge | WalContinuity | RedisCheck => false,
        }
    }
}

impl BackupMethod {
    /// Methods whose backups record a logical snapshot (row counts and digests of each table).
    pub fn takes_snapshot(self) -> bool {
        use BackupMethod::*;
        match self {
            PgDump | RedisRdb | RedisAof | RabbitmqExport => true,
            PgBasebackupWal => false,
        }
    }

    /// Methods that archive WAL continuously next to their base backups.
    pub fn archives_wal(self) -> bool {
        use BackupMethod::*;
        match self {
            PgBasebackupWal => true,
            PgDump | RedisRdb | RedisAof | RabbitmqExport => false,
        }
    }
}

impl RestorePoint {
    /// Whether the recovery restores a backup (not `restart`, not `in-place`).
    pub fn from_backup(self) -> bool {
        match self {
            RestorePoint::Restart | RestorePoint::InPlace | RestorePoint::Failover => false,
            RestorePoint::Latest | RestorePoint::BeforeFault | RestorePoint::At(_) => true,
        }
    }

    /// As the scenario spells it.
    pub fn label(self) -> String {
        match self {
            RestorePoint::Restart => "restart".into(),
            RestorePoint::InPlace => "in-place".into(),
            RestorePoint::Failover => "failover".into(),
            RestorePoint::Latest => "latest".into(),
            RestorePoint::BeforeFault => "before-fault".into(),
            RestorePoint::At(t) => humantime::format_rfc3339(t).to_string(),
        }
    }
}

/// `restore.from`: which recovery point to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestorePoint {
    /// The service recovers in place on its own data (crash recovery).
    Restart,
    /// Nothing is restored: a temporary fault heals and the service must serve again by itself.
    InPlace,
    /// Nothing is restored: a standby of the target's replication takes over as the new primary
    /// (the kind's runbook promotion, or its own election).
    Failover,
    /// The newest backup, restored into a fresh container.
    Latest,
    /// The newest recovery point before the fault.
    BeforeFault,
    /// Point-in-time recovery to this wall-clock time.
    At(SystemTime),
}
