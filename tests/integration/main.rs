//! drillrig's integration tests, one binary: the real `drillrig` command against real
//! containers on a local Docker engine (`fixtures/env/prepare.sh` starts one and builds the
//! images). Tests run three at a time (`.cargo/config.toml`); a test that must see every drillrig
//! container alone takes `common::engine_alone`. The shipped scenarios are run for real
//! by `shipped`, which is ignored by default: `cargo test --release --test integration --
//! --ignored shipped`.

mod benches;
mod common;
mod drills;
mod engine_clock;
mod failover;
mod hardening;
mod layers;
mod notify;
mod outages;
mod pitr;
mod platform;
mod rabbitmq;
mod readme;
mod redis;
mod reports;
mod restore_tests;
mod restored_config;
mod shipped;
