//! drillrig: chaos and disaster-recovery drills for PostgreSQL, Redis and RabbitMQ.
//!
//! A drill ([`drill::run`]) starts real services in Docker ([`docker`], [`targets`]), writes to
//! them while keeping a ledger of every acknowledged write ([`workload`]), takes real backups
//! ([`backup`]), injects faults ([`faults`]), restores with the services' own tools, verifies the
//! result ([`checks`]), and measures the achieved RTO and RPO ([`measure`]) into a report
//! ([`report`]). Scenarios are TOML files ([`scenario`]) checked into the vocabulary of
//! [`spec`]. Several run as a [`suite`]; every run goes into the [`history`], which the trend
//! reports and the regression gate read ([`publish`]). A suite's end can be sent to a webhook
//! ([`notify`]).
//!
//! Layers go one way (`tests/integration/layers.rs` keeps it so): `scenario` → `suite` → `drill`
//! → `faults` → `targets` → `checks`, `backup`, `docker`; `report` and `history` read finished
//! results, `publish` reads the history, and `notify` reads finished runs; `spec` (the
//! vocabulary) and the leaves `clock`, `digest`, `exit` and `util` serve every layer.

pub mod backup;
pub mod checks;
pub mod clock;
pub mod digest;
pub mod docker;
pub mod drill;
pub mod exit;
pub mod faults;
pub mod history;
pub mod live;
pub mod measure;
pub mod notify;
pub mod offsite;
pub mod proxy;
pub mod publish;
pub mod report;
pub mod scenario;
pub mod source;
pub mod spec;
pub mod suite;
pub mod suite_end;
pub mod targets;
pub mod util;
pub mod workload;
