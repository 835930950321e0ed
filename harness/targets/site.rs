//! The Docker site: a run's targets as containers on one engine, labelled with the run id, on
//! the run's own bridge network, and removed together at the end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;
use tracing::{info, warn};

use super::{RunContext, Site, Target, TargetEnv};
use crate::docker::image::{self, ImageChoice};
use crate::docker::{self, Docker, EnvironmentError};
use crate::spec::TargetSpec;

/// The run's targets on the Docker engine.
pub struct DockerSite {
    docker: Arc<Docker>,
    /// Image per target name, from `--image NAME=IMAGE`.
    images: BTreeMap<String, String>,
}

impl DockerSite {
    /// Connects to the engine, removes what dead runs left behind, and labels everything this
    /// run creates with `run_id`. `keepable`: the run may be kept for inspection
    /// (`DRILLRIG_KEEP`), so later runs must not collect it.
    pub async fn connect(
        run_id: &str,
        scenario: &str,
        keepable: bool,
        logs: PathBuf,
        images: BTreeMap<String, String>,
    ) -> Result<DockerSite, EnvironmentError> {
        let api = docker::connect().await?;
        match docker::gc::collect(&api, false).await {
            Ok(dead) => {
                for run in dead {
                    info!(
                        "removed leftovers of dead run {}: {:?}",
                        run.run_id, run.removed
                    );
                }
            }
            Err(e) => warn!("could not look for leftovers of dead runs: {e:#}"),
        }
        let owner = docker::process_identity();
        let docker = Arc::new(Docker::new(api, run_id, scenario, &owner, keepable, logs));
        Ok(DockerSite { docker, images })
    }
}

/// Random per target and run; never written to any output.
fn password() -> String {
    use rand::RngExt;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

#[async_trait]
impl Site for DockerSite {
    async fn open(&self) -> Result<()> {
        self.docker.create_network().await
    }

    async fn target(
        &self,
        spec: &TargetSpec,
        run: &RunContext,
    ) -> Result<(Box<dyn Target>, Option<ImageChoice>)> {
        let choice = image::resolve(
            self.docker.api(),
            spec.kind.as_str(),
            super::capabilities(spec.kind).image,
            self.images.get(&spec.name).map(String::as_str),
            spec.image.as_deref(),
        )
        .await?;
        if let Some(note) = &choice.note {
            info!("{}: {note}", spec.name);
        }
        let env = TargetEnv {
            spec: spec.clone(),
            image: choice.image.clone(),
            docker: self.docker.clone(),
            password: password(),
            seed: run.seed,
            clock: run.clock,
            timeouts: run.timeouts,
            repository: run.repository.join(&spec.name),
        };
        Ok((super::build(env), Some(choice)))
    }

    async fn save_logs(&self) {
        self.docker.save_logs().await;
    }

    async fn lose(&self) -> Result<serde_json::Value> {
        self.docker.save_logs().await;
        let (removed, dr_network) = self.docker.lose_site().await?;
        Ok(serde_json::json!({
            "removed": {
                "containers": removed.containers,
                "volumes": removed.volumes,
                "networks": removed.networks,
            },
            "dr_network": dr_network,
        }))
    }

    fn keep(&self) {
        self.docker.keep();
    }

    async fn connections(&self) -> serde_json::Value {
        self.docker.connections().await
    }

    async fn teardown(&self) -> Result<String> {
        let removed = self.docker.teardown().await?;
        Ok(format!(
            "{} container(s), {} volume(s), {} network(s)",
            removed.containers, removed.volumes, removed.networks
        ))
    }
}
