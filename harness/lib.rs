//! drillrig: chaos and disaster-recovery drills for PostgreSQL, Redis and RabbitMQ.
//!
//! A drill ([`drill::run`]) starts real services in Docker ([`docker`], [`targets`]), writes to
//! them while keeping a ledger of every acknowledged write ([`workload`]), takes real backups
//! ([`backup`]), injects faults ([`faults`]), restores with the services' own tools, verifies the
//! result ([`checks`]), and measures the achieved RTO and RPO ([`measure`]) into a report
//! ([`report`]). Scenarios are TOML files ([`scenario`]). Several run as a [`suite`]; every run
//! goes into the [`history`], which the trend reports and the regression gate read.

pub mod backup;
pub mod checks;
pub mod docker;
pub mod drill;
pub mod faults;
pub mod history;
pub mod live;

pub mod measure;
pub mod report;
pub mod scenario;
pub mod suite;
pub mod targets;
pub mod workload;
