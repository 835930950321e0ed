//! AWS shared profiles for S3 sources: the `object_store` crate reads credentials from the
//! environment only, so drillrig reads `~/.aws/credentials` and `~/.aws/config` itself, as the
//! AWS CLI does, when the environment gives no keys (docs/restore-tests.md §1). Keys are never
//! shown: errors name the profile and the file.

use std::path::PathBuf;

use ini::Ini;

use crate::docker::EnvironmentError;

/// What a profile gives an S3 client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// The profile's `region` in the config file, when the environment sets none.
    pub region: Option<String>,
}

/// The profile to use, read through `var` (the process environment in use): none when the
/// environment holds keys (`AWS_ACCESS_KEY_ID`, which wins, as with the AWS CLI), or when no
/// `AWS_PROFILE` is set and the files hold no `default` profile. A named profile that is not
/// there, or that lacks a key, is an environment error.
pub fn load(var: impl Fn(&str) -> Option<String>) -> Result<Option<Profile>, EnvironmentError> {
    let set = |k: &str| var(k).filter(|v| !v.trim().is_empty());
    if set("AWS_ACCESS_KEY_ID").is_some() {
        return Ok(None);
    }
    let named = set("AWS_PROFILE");
    let name = named.clone().unwrap_or_else(|| "default".into());
    let home = set("HOME").map(PathBuf::from);
    let file = |env: &str, default: &str| {
        set(env)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
    };
    let credentials_file = file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
    let config_file = file("AWS_CONFIG_FILE", "config");
    let read = |path: &Option<PathBuf>| -> Result<Option<Ini>, EnvironmentError> {
        match path {
            Some(p) if p.is_file() => {
                Ini::load_from_file_noescape(p)
                    .map(Some)
                    .map_err(|e| EnvironmentError {
                        cause: format!("the AWS file {} cannot be read: {e}", p.display()),
                        fix: "check the file (an INI file of [profile] sections)".into(),
                    })
            }
            _ => Ok(None),
        }
    };
    let credentials = read(&credentials_file)?;
    let config = read(&config_file)?;
    // The credentials file names a profile `[NAME]`; the config file `[profile NAME]`, except
    // `[default]`.
    let config_section = if name == "default" {
        name.clone()
    } else {
        format!("profile {name}")
    };
    let from_credentials = credentials
        .as_ref()
        .and_then(|i| i.section(Some(name.as_str())));
    let from_config = config
        .as_ref()
        .and_then(|i| i.section(Some(config_section.as_str())));
    if from_credentials.is_none() && from_config.is_none() {
        return match named {
            None => Ok(None),
            Some(n) => Err(EnvironmentError {
                cause: format!(
                    "AWS_PROFILE is {n:?}, and neither {} nor {} has that profile",
                    shown(&credentials_file),
                    shown(&config_file)
                ),
                fix: "name a profile of your AWS files, or export its keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)".into(),
            }),
        };
    }
    let get = |key: &str| {
        from_credentials
            .and_then(|s| s.get(key))
            .or_else(|| from_config.and_then(|s| s.get(key)))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let (Some(access_key_id), Some(secret_access_key)) =
        (get("aws_access_key_id"), get("aws_secret_access_key"))
    else {
        return Err(EnvironmentError {
            cause: format!(
                "AWS profile {name:?} ({}) has no aws_access_key_id and aws_secret_access_key",
                shown(&credentials_file)
            ),
            fix: "drillrig reads static keys from profiles (SSO and assumed roles are not resolved): run `aws configure export-credentials --format env` and export them".into(),
        });
    };
    Ok(Some(Profile {
        name,
        access_key_id,
        secret_access_key,
        session_token: get("aws_session_token"),
        region: from_config
            .and_then(|s| s.get("region"))
            .map(|r| r.trim().to_string()),
    }))
}

fn shown(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map_or("(no HOME)".into(), |p| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(dir: &std::path::Path, extra: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let mut vars: HashMap<String, String> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        vars.insert("HOME".into(), dir.display().to_string());
        move |k| vars.get(k).cloned()
    }

    #[test]
    fn a_profile_gives_its_keys_and_its_region_unless_the_environment_has_keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".aws")).unwrap();
        std::fs::write(
            dir.path().join(".aws/credentials"),
            "[default]\naws_access_key_id = AKD\naws_secret_access_key = SKD\n\n[reader]\naws_access_key_id=AKR\naws_secret_access_key=S/K+R\naws_session_token = T\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join(".aws/config"),
            "[default]\nregion = eu-west-1\n[profile reader]\nregion = us-east-2\n",
        )
        .unwrap();
        let d = load(env(dir.path(), &[])).unwrap().unwrap();
        assert_eq!(
            (d.access_key_id.as_str(), d.region.as_deref()),
            ("AKD", Some("eu-west-1"))
        );
        let r = load(env(dir.path(), &[("AWS_PROFILE", "reader")]))
            .unwrap()
            .unwrap();
        assert_eq!(r.secret_access_key, "S/K+R");
        assert_eq!(r.session_token.as_deref(), Some("T"));
        assert_eq!(r.region.as_deref(), Some("us-east-2"));
        assert_eq!(
            load(env(dir.path(), &[("AWS_ACCESS_KEY_ID", "E")])).unwrap(),
            None
        );
        let e = load(env(dir.path(), &[("AWS_PROFILE", "nobody")])).unwrap_err();
        assert!(e.cause.contains("\"nobody\""), "{}", e.cause);
        assert!(!e.cause.contains("SKD") && !e.fix.contains("SKD"));
    }

    #[test]
    fn no_files_and_no_named_profile_is_no_profile() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(env(dir.path(), &[])).unwrap(), None);
    }
}
