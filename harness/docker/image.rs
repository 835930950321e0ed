//! Which image a target runs: `--image` beats the scenario's `image`, which beats
//! `DRILLRIG_IMAGE_<KIND>`, which beats the pinned official default. An absent official default
//! that cannot be pulled falls back to the locally built image (fixtures/images/build.sh), and
//! the report says so.

use std::time::Duration;

use bollard::query_parameters::CreateImageOptionsBuilder;
use futures::StreamExt;
use serde::Serialize;

use super::EnvironmentError;

/// How long a pull may take before the image counts as unavailable.
const PULL_TIMEOUT: Duration = Duration::from_secs(120);

/// A kind's default image: the pinned official one, and the local build standing in for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultImage {
    pub official: &'static str,
    pub local: &'static str,
}

/// Where the image choice came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageSource {
    CommandLine,
    Scenario,
    Environment,
    Default,
    LocalBuild,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageChoice {
    pub image: String,
    pub source: ImageSource,
    /// Why the choice differs from what was asked for, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `name:tag` split at the tag's colon (a registry port's colon is not a tag).
pub fn split_reference(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

/// The environment variable overriding the default image of `kind`.
pub fn env_var(kind: &str) -> String {
    format!("DRILLRIG_IMAGE_{}", kind.to_ascii_uppercase())
}

/// Picks the image for a target of `kind` and makes sure the engine has it.
pub async fn resolve(
    api: &bollard::Docker,
    kind: &str,
    default: DefaultImage,
    command_line: Option<&str>,
    scenario: Option<&str>,
) -> Result<ImageChoice, EnvironmentError> {
    let explicit = command_line
        .map(|i| (i.to_string(), ImageSource::CommandLine))
        .or_else(|| scenario.map(|i| (i.to_string(), ImageSource::Scenario)))
        .or_else(|| {
            std::env::var(env_var(kind))
                .ok()
                .filter(|v| !v.is_empty())
                .map(|i| (i, ImageSource::Environment))
        });
    if let Some((image, source)) = explicit {
        ensure(api, &image).await?;
        return Ok(ImageChoice {
            image,
            source,
            note: None,
        });
    }
    let DefaultImage { official, local } = default;
    match ensure(api, official).await {
        Ok(()) => Ok(ImageChoice {
            image: official.into(),
            source: ImageSource::Default,
            note: None,
        }),
        Err(pull_error) if present(api, local).await => Ok(ImageChoice {
            image: local.into(),
            source: ImageSource::LocalBuild,
            note: Some(format!(
                "{}; using the locally built {local}",
                pull_error.cause
            )),
        }),
        Err(mut e) => {
            e.fix = format!(
                "build the local images with `sudo fixtures/images/build.sh`, or make {official} available to the engine"
            );
            Err(e)
        }
    }
}

async fn present(api: &bollard::Docker, image: &str) -> bool {
    api.inspect_image(image).await.is_ok()
}

/// Makes sure the engine has `image`, pulling it if needed.
async fn ensure(api: &bollard::Docker, image: &str) -> Result<(), EnvironmentError> {
    if present(api, image).await {
        return Ok(());
    }
    let (repo, tag) = split_reference(image);
    let unavailable = |why: String| EnvironmentError {
        cause: format!("image {image} is not present and cannot be pulled: {why}"),
        fix: format!("load or build {image} on this engine, or choose another with --image"),
    };
    let pull = async {
        let mut stream = api.create_image(
            Some(
                CreateImageOptionsBuilder::default()
                    .from_image(repo)
                    .tag(tag)
                    .build(),
            ),
            None,
            None,
        );
        while let Some(step) = stream.next().await {
            step.map_err(|e| unavailable(e.to_string()))?;
        }
        Ok(())
    };
    match tokio::time::timeout(PULL_TIMEOUT, pull).await {
        Ok(r) => r,
        Err(_) => Err(unavailable(format!(
            "no answer from the registry within {}",
            humantime::format_duration(PULL_TIMEOUT)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_at_the_tag() {
        assert_eq!(split_reference("postgres:15"), ("postgres", "15"));
        assert_eq!(
            split_reference("drillrig/postgres:15-bookworm"),
            ("drillrig/postgres", "15-bookworm")
        );
        assert_eq!(
            split_reference("registry:5000/pg"),
            ("registry:5000/pg", "latest")
        );
        assert_eq!(
            split_reference("registry:5000/pg:16"),
            ("registry:5000/pg", "16")
        );
        assert_eq!(split_reference("pg"), ("pg", "latest"));
    }
}
