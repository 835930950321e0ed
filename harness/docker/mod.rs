//! The Docker backend: containers are created, started and driven with bollard (kill, stop,
//! exec, archives, logs). Every container, volume and network carries the run's
//! labels, and the run only ever removes what carries its own run id.

pub mod gc;
pub mod image;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountType, NetworkConnectRequest, NetworkCreateRequest,
    NetworkDisconnectRequest, PortBinding, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder, InspectContainerOptions,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    ListVolumesOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptions, StartContainerOptions, StopContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_util::task::TaskTracker;

pub use gc::{RunOwner, process_identity, remove_owned_by};

use crate::digest::Artefact;

/// Label carrying the run id on every resource a run creates.
pub const RUN_LABEL: &str = "io.drillrig.run";
/// Label carrying the scenario name.
pub const SCENARIO_LABEL: &str = "io.drillrig.scenario";
/// Labels naming the process that owns the run, so `gc` can tell dead runs from live ones.
pub const HOST_LABEL: &str = "io.drillrig.host";
pub const PID_LABEL: &str = "io.drillrig.pid";
pub const PID_START_LABEL: &str = "io.drillrig.pid-start";
/// Present on runs started with `DRILLRIG_KEEP`: only an explicit `drillrig gc` removes them.
pub const KEEP_LABEL: &str = "io.drillrig.keep";

/// The engine could not be reached or used: an environment problem (exit 3).
#[derive(Debug, thiserror::Error)]
#[error("{cause}")]
pub struct EnvironmentError {
    pub cause: String,
    pub fix: String,
}

/// Connects to the engine (DOCKER_HOST or the default socket) and negotiates the API version.
pub async fn connect() -> std::result::Result<bollard::Docker, EnvironmentError> {
    let where_ =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let no_engine = |e: &dyn std::fmt::Display| EnvironmentError {
        cause: format!("no Docker engine answers at {where_}: {e}"),
        fix: "start dockerd (as root: fixtures/env/ensure-docker.sh) or set DOCKER_HOST".into(),
    };
    let api = bollard::Docker::connect_with_defaults().map_err(|e| no_engine(&e))?;
    let api = tokio::time::timeout(Duration::from_secs(10), api.negotiate_version())
        .await
        .map_err(|_| no_engine(&"no answer within 10s"))?
        .map_err(|e| no_engine(&e))?;
    let version = api.version().await.map_err(|e| no_engine(&e))?;
    let api_version = version.api_version.unwrap_or_default();
    if version_below(&api_version, "1.41") {
        return Err(EnvironmentError {
            cause: format!(
                "the Docker engine at {where_} speaks API {api_version}; drillrig needs 1.41 (Docker 20.10) or newer"
            ),
            fix: "upgrade the Docker engine".into(),
        });
    }
    Ok(api)
}

fn version_below(have: &str, want: &str) -> bool {
    let parse = |v: &str| {
        v.split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0))
            .collect::<Vec<_>>()
    };
    parse(have) < parse(want)
}

/// What a target needs from a container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Unique within the run, e.g. `pg-1`; the container is named `drillrig-<run>-<name>`.
    pub name: String,
    pub image: String,
    pub env: Vec<(String, String)>,
    pub cmd: Vec<String>,
    /// The service port, published on 127.0.0.1 only.
    pub port: u16,
    /// A run volume mounted at the service's data directory.
    pub volume: Option<(String, String)>,
    /// Host folders mounted into the container: `(host path, container path, read-only)`.
    pub binds: Vec<(PathBuf, String, bool)>,
    /// Replaces the image's entrypoint (a helper container: `sleep` with `cmd` `["infinity"]`).
    pub entrypoint: Option<String>,
    /// Host files or folders copied into the container before it starts: `(host, container path)`.
    pub copy_in: Vec<(PathBuf, String)>,
    /// Files written into the container before it starts: `(container path, contents)`. How a
    /// secret reaches a service without crossing a command line.
    pub files: Vec<(String, Vec<u8>)>,
    pub hostname: Option<String>,
    /// The container may change its own network stack (`CAP_NET_ADMIN`, inside its own network
    /// namespace only): what a partition from its peers alone (`ip route … blackhole`) needs.
    pub net_admin: bool,
    pub startup_timeout: Duration,
}

/// How a user reaches a target's service from the host: a kept run's `connections.json`.
#[derive(Debug, Clone)]
pub struct Access {
    /// The target's kind: `postgres`, `redis`, `rabbitmq`.
    pub kind: &'static str,
    pub user: String,
    /// The run's generated password for the target.
    pub password: String,
    /// PostgreSQL's database, RabbitMQ's vhost, Redis's database number.
    pub database: String,
}

impl Access {
    /// The URL a client of the kind takes, on `127.0.0.1:port`.
    fn url(&self, port: u16) -> String {
        let Access {
            kind,
            user,
            password,
            database,
        } = self;
        let scheme = match *kind {
            "postgres" => "postgresql",
            "redis" => "redis",
            _ => "amqp",
        };
        // RabbitMQ's vhost is one path segment: `/` is `%2F`.
        let database = database.replace('%', "%25").replace('/', "%2F");
        format!("{scheme}://{user}:{password}@127.0.0.1:{port}/{database}")
    }
}

/// A container of this run.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub name: String,
    /// The service port inside the container.
    pub port: u16,
}

/// Output of a command run inside a container.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }

    /// The last lines of stderr (then stdout), for error messages.
    pub fn tail(&self) -> String {
        let text = if self.stderr.is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let text = String::from_utf8_lossy(text);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(6)..].join(" | ")
    }
}

/// A file copied out of a container, with the metadata needed to put it back unchanged.
pub struct ContainerFile {
    pub header: tar::Header,
    pub bytes: Vec<u8>,
}

/// The engine, bound to one run.
pub struct Docker {
    api: bollard::Docker,
    run_id: String,
    labels: HashMap<String, String>,
    /// The ids of the containers started on the current site, in start order.
    started: Mutex<Vec<String>>,
    /// The network containers join: the run's, or after a site loss the DR site's.
    network: Mutex<String>,
    /// Creations of containers, volumes and networks run as tasks here, so an interrupt that
    /// drops the drill cannot drop one half-way; teardown waits for them before it sweeps.
    creations: TaskTracker,
    /// Where containers' logs are saved: at teardown, and before a container is removed early.
    logs_dir: PathBuf,
    /// Per target, the container serving it now and how to log in: `connections.json`.
    serving: Mutex<BTreeMap<String, (Container, Access)>>,
}

impl Docker {
    /// `keepable`: the run may be kept for inspection, so later runs must not collect it.
    pub fn new(
        api: bollard::Docker,
        run_id: &str,
        scenario: &str,
        owner: &RunOwner,
        keepable: bool,
        logs_dir: PathBuf,
    ) -> Self {
        let mut labels = HashMap::from([
            (RUN_LABEL.to_string(), run_id.to_string()),
            (SCENARIO_LABEL.to_string(), scenario.to_string()),
            (HOST_LABEL.to_string(), owner.host.clone()),
            (PID_LABEL.to_string(), owner.pid.to_string()),
            (PID_START_LABEL.to_string(), owner.start_ticks.to_string()),
        ]);
        if keepable {
            labels.insert(KEEP_LABEL.to_string(), "true".to_string());
        }
        Docker {
            api,
            run_id: run_id.to_string(),
            labels,
            started: Mutex::new(Vec::new()),
            network: Mutex::new(format!("drillrig-{run_id}")),
            creations: TaskTracker::new(),
            logs_dir,
            serving: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn api(&self) -> &bollard::Docker {
        &self.api
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// `c` serves `target` now (the latest call for a target wins), reached with `access`.
    pub fn serves(&self, target: &str, c: &Container, access: Access) {
        self.serving
            .lock()
            .expect("not poisoned")
            .insert(target.to_string(), (c.clone(), access));
    }

    /// How to reach each target's serving container now: the contents of a kept run's
    /// `connections.json`, passwords included (docs/outputs.md §1). A container that publishes
    /// no port (stopped, partitioned, removed) has `port` and `url` null.
    pub async fn connections(&self) -> serde_json::Value {
        let serving = self.serving.lock().expect("not poisoned").clone();
        let mut targets = serde_json::Map::new();
        for (target, (c, access)) in serving {
            let port = self.host_port(&c).await.ok();
            targets.insert(
                target,
                serde_json::json!({
                    "kind": access.kind,
                    "container": self.resource_name(&c.name),
                    "host": "127.0.0.1",
                    "port": port,
                    "user": access.user,
                    "password": access.password,
                    "database": access.database,
                    "url": port.map(|p| access.url(p)),
                }),
            );
        }
        serde_json::json!({
            "run_id": self.run_id,
            "note": "the kept containers and their generated passwords: this file is private (0600) and is the only output that holds them",
            "targets": targets,
        })
    }

    /// The name the run's other containers reach `c` by on the run's network.
    pub fn dns_name(&self, c: &Container) -> String {
        self.resource_name(&c.name)
    }

    fn resource_name(&self, name: &str) -> String {
        format!("{}{name}", resource_prefix(&self.run_id))
    }

    /// Runs `creation` to its end even if the caller is dropped (see `creations`).
    async fn create<T: Send + 'static>(
        &self,
        creation: impl Future<Output = T> + Send + 'static,
    ) -> Result<T> {
        self.creations
            .spawn(creation)
            .await
            .map_err(|e| anyhow!("a creation task failed: {e}"))
    }

    fn network(&self) -> String {
        self.network.lock().expect("not poisoned").clone()
    }

    /// Creates the run's bridge network; targets join it.
    pub async fn create_network(&self) -> Result<()> {
        let network = self.network();
        let api = self.api.clone();
        let request = NetworkCreateRequest {
            name: network.clone(),
            driver: Some("bridge".into()),
            labels: Some(self.labels.clone()),
            ..Default::default()
        };
        self.create(async move { api.create_network(request).await })
            .await?
            .with_context(|| format!("create network {network}"))?;
        Ok(())
    }

    /// The site is lost: every container, volume and network of the run is removed in one
    /// sweep, then a new network (`drillrig-<run>-dr`) is created for the DR site, where
    /// containers start from now on. Returns what went and the new network's name.
    pub async fn lose_site(&self) -> Result<(Removed, String)> {
        let (removed, error) = remove_run(&self.api, &self.run_id).await;
        if let Some(e) = error {
            return Err(e.context("remove the lost site"));
        }
        self.started.lock().expect("not poisoned").clear();
        let dr = format!("drillrig-{}-dr", self.run_id);
        *self.network.lock().expect("not poisoned") = dr.clone();
        self.create_network().await?;
        Ok((removed, dr))
    }

    /// Creates a labelled volume of this run; returns its name.
    /// With `limit`, the volume is a tmpfs of that many bytes: full at that size, whatever the
    /// host's disk holds.
    pub async fn create_volume(&self, name: &str, limit: Option<u64>) -> Result<String> {
        let name = self.resource_name(name);
        let api = self.api.clone();
        let driver_opts = limit.map(|bytes| {
            HashMap::from([
                ("type".to_string(), "tmpfs".to_string()),
                ("device".to_string(), "tmpfs".to_string()),
                ("o".to_string(), format!("size={bytes}")),
            ])
        });
        let request = VolumeCreateRequest {
            name: Some(name.clone()),
            labels: Some(self.labels.clone()),
            driver_opts,
            ..Default::default()
        };
        self.create(async move { api.create_volume(request).await })
            .await?
            .with_context(|| format!("create volume {name}"))?;
        Ok(name)
    }

    /// Creates and starts a container; returns once the engine reports it started (readiness is
    /// the target's business: a real query, never a port connect).
    pub async fn start(&self, spec: &ContainerSpec) -> Result<Container> {
        let port = spec.port;
        let mut mounts = Vec::new();
        if let Some((volume, path)) = &spec.volume {
            mounts.push(Mount {
                typ: Some(MountType::VOLUME),
                source: Some(volume.clone()),
                target: Some(path.clone()),
                ..Default::default()
            });
        }
        for (host, path, read_only) in &spec.binds {
            mounts.push(Mount {
                typ: Some(MountType::BIND),
                source: Some(host.display().to_string()),
                target: Some(path.clone()),
                read_only: Some(*read_only),
                ..Default::default()
            });
        }
        let config = ContainerCreateBody {
            image: Some(spec.image.clone()),
            labels: Some(self.labels.clone()),
            hostname: spec.hostname.clone(),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            cmd: (!spec.cmd.is_empty()).then(|| spec.cmd.clone()),
            entrypoint: spec.entrypoint.clone().map(|e| vec![e]),
            exposed_ports: Some(vec![format!("{port}/tcp")]),
            host_config: Some(HostConfig {
                network_mode: Some(self.network()),
                mounts: (!mounts.is_empty()).then_some(mounts),
                // An init process (the engine's `docker-init`) is PID 1 and reaps orphans: a
                // child of an exec'd helper that dies by a signal is not the server's child, so
                // PostgreSQL never takes it for a crashed backend and restarts every session.
                init: Some(true),
                cap_add: spec.net_admin.then(|| vec!["NET_ADMIN".to_string()]),
                // Publish on loopback only, on a port the engine picks.
                publish_all_ports: Some(false),
                port_bindings: Some(HashMap::from([(
                    format!("{port}/tcp"),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(String::new()),
                    }]),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        };
        // Files go in before the start, so the service finds them on its first read.
        let files = copy_in_archive(&spec.copy_in, &spec.files)?;
        let (api, name, timeout) = (
            self.api.clone(),
            self.resource_name(&spec.name),
            spec.startup_timeout,
        );
        let start = async move {
            let options = CreateContainerOptionsBuilder::default().name(&name).build();
            let id = api.create_container(Some(options), config).await?.id;
            if let Some(tarball) = files {
                let to = UploadToContainerOptionsBuilder::default().path("/").build();
                api.upload_to_container(&id, Some(to), bollard::body_full(tarball.into()))
                    .await?;
            }
            match tokio::time::timeout(
                timeout,
                api.start_container(&id, None::<StartContainerOptions>),
            )
            .await
            {
                Ok(started) => started.map(|()| Ok(id)),
                Err(_) => Ok(Err(id)),
            }
        };
        let started = self.create(start).await?.map_err(|e: bollard::errors::Error| {
            let text = format!("{e:#}");
            let exhausted = ["address already in use", "port is already allocated", "all ports are allocated"];
            if exhausted.iter().any(|m| text.contains(m)) {
                anyhow::Error::new(EnvironmentError {
                    cause: format!("no free port on 127.0.0.1 to publish port {port} of {}: {text}", spec.name),
                    fix: "free host ports (other services; leftovers of dead runs: drillrig gc), or widen net.ipv4.ip_local_port_range".into(),
                })
            } else {
                anyhow::Error::new(e).context(format!("start container {} from {}", spec.name, spec.image))
            }
        })?;
        let id = started.map_err(|_| {
            anyhow!(
                "start container {} from {}: the engine did not start it within {:?}",
                spec.name,
                spec.image,
                spec.startup_timeout
            )
        })?;
        self.started.lock().expect("not poisoned").push(id.clone());
        let container = Container {
            id,
            name: spec.name.clone(),
            port,
        };
        Ok(container)
    }

    /// The host port (on 127.0.0.1) that reaches the container's service port now; it changes
    /// when the container restarts.
    pub async fn host_port(&self, c: &Container) -> Result<u16> {
        let info = self
            .api
            .inspect_container(&c.id, None::<InspectContainerOptions>)
            .await?;
        let binding = info
            .network_settings
            .and_then(|n| n.ports)
            .and_then(|mut p| p.remove(&format!("{}/tcp", c.port)))
            .flatten()
            .and_then(|b| b.into_iter().find_map(|b| b.host_port))
            .and_then(|p| p.parse::<u16>().ok());
        binding.ok_or_else(|| {
            anyhow!(
                "container {} publishes no port for {}/tcp (is it running?)",
                c.name,
                c.port
            )
        })
    }

    /// The engine's view of `c`'s state now.
    async fn inspect_state(&self, c: &Container) -> Result<bollard::models::ContainerState> {
        Ok(self
            .api
            .inspect_container(&c.id, None::<InspectContainerOptions>)
            .await?
            .state
            .unwrap_or_default())
    }

    /// Whether the container is running, and its exit code when not.
    pub async fn state(&self, c: &Container) -> Result<(bool, Option<i64>)> {
        let state = self.inspect_state(c).await?;
        Ok((state.running.unwrap_or(false), state.exit_code))
    }

    /// Takes `c` off the run's network: its only interface goes, and with it every published
    /// port (the engine removes the mapping). The processes inside keep running.
    pub async fn leave_network(&self, c: &Container) -> Result<()> {
        let request = NetworkDisconnectRequest {
            container: c.id.clone(),
            force: Some(true),
        };
        self.api
            .disconnect_network(&self.network(), request)
            .await
            .with_context(|| format!("disconnect {} from {}", c.name, self.network()))
    }

    /// Puts `c` back on the run's network; the engine publishes its port again, on a new host
    /// port.
    pub async fn join_network(&self, c: &Container) -> Result<()> {
        let request = NetworkConnectRequest {
            container: c.id.clone(),
            endpoint_config: None,
        };
        self.api
            .connect_network(&self.network(), request)
            .await
            .with_context(|| format!("connect {} to {}", c.name, self.network()))
    }

    /// The networks `c` is attached to now.
    pub async fn networks_of(&self, c: &Container) -> Result<Vec<String>> {
        let info = self
            .api
            .inspect_container(&c.id, None::<InspectContainerOptions>)
            .await?;
        Ok(info
            .network_settings
            .and_then(|n| n.networks)
            .map(|n| n.into_keys().collect())
            .unwrap_or_default())
    }

    /// `c`'s address on the run's network (what the run's other containers connect to).
    pub async fn ip_of(&self, c: &Container) -> Result<String> {
        let info = self
            .api
            .inspect_container(&c.id, None::<InspectContainerOptions>)
            .await?;
        let network = self.network();
        info.network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(&network))
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| anyhow!("container {} has no address on {network}", c.name))
    }

    /// Whether the engine reports `c` paused (frozen by the cgroup freezer).
    pub async fn paused(&self, c: &Container) -> Result<bool> {
        Ok(self.inspect_state(c).await?.paused.unwrap_or(false))
    }

    pub async fn kill(&self, c: &Container, signal: &str) -> Result<()> {
        self.api
            .kill_container(
                &c.id,
                Some(
                    KillContainerOptionsBuilder::default()
                        .signal(signal)
                        .build(),
                ),
            )
            .await
            .with_context(|| format!("kill -s {signal} container {}", c.name))
    }

    pub async fn stop(&self, c: &Container, grace: Duration) -> Result<()> {
        self.api
            .stop_container(
                &c.id,
                Some(
                    StopContainerOptionsBuilder::default()
                        .t(grace.as_secs() as i32)
                        .build(),
                ),
            )
            .await
            .with_context(|| format!("stop container {}", c.name))
    }

    pub async fn start_again(&self, c: &Container) -> Result<()> {
        self.api
            .start_container(&c.id, None::<StartContainerOptions>)
            .await
            .with_context(|| format!("start container {}", c.name))
    }

    pub async fn pause(&self, c: &Container) -> Result<()> {
        self.api
            .pause_container(&c.id)
            .await
            .with_context(|| format!("pause container {}", c.name))
    }

    pub async fn unpause(&self, c: &Container) -> Result<()> {
        self.api
            .unpause_container(&c.id)
            .await
            .with_context(|| format!("unpause container {}", c.name))
    }

    /// Runs `cmd` in the container as `user` and collects its output.
    pub async fn exec(&self, c: &Container, user: &str, cmd: &[&str]) -> Result<ExecOutput> {
        let mut out = ExecOutput::default();
        let code = self
            .exec_streaming(
                c,
                user,
                cmd,
                None,
                |chunk| {
                    out.stdout.extend_from_slice(chunk);
                    Ok(())
                },
                &mut out.stderr,
            )
            .await?;
        out.exit_code = code;
        Ok(out)
    }

    /// Runs `cmd` in the container, streaming its stdout into `dest` on the host; returns the
    /// output (stderr only), the sha256 and the size of what was written.
    pub async fn exec_to_file(
        &self,
        c: &Container,
        user: &str,
        cmd: &[&str],
        dest: &Path,
    ) -> Result<(ExecOutput, String, u64)> {
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(dest).with_context(|| format!("create {}", dest.display()))?,
        );
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut out = ExecOutput::default();
        out.exit_code = self
            .exec_streaming(
                c,
                user,
                cmd,
                None,
                |chunk| {
                    use std::io::Write as _;
                    hasher.update(chunk);
                    size += chunk.len() as u64;
                    file.write_all(chunk)
                        .with_context(|| format!("write {}", dest.display()))
                },
                &mut out.stderr,
            )
            .await?;
        use std::io::Write as _;
        file.flush()?;
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok((out, hex::encode(hasher.finalize()), size))
    }

    /// Runs `cmd` with `stdin` fed to it.
    pub async fn exec_with_stdin(
        &self,
        c: &Container,
        user: &str,
        cmd: &[&str],
        stdin: &[u8],
    ) -> Result<ExecOutput> {
        let mut out = ExecOutput::default();
        let code = self
            .exec_streaming(
                c,
                user,
                cmd,
                Some(stdin),
                |chunk| {
                    out.stdout.extend_from_slice(chunk);
                    Ok(())
                },
                &mut out.stderr,
            )
            .await?;
        out.exit_code = code;
        Ok(out)
    }

    async fn exec_streaming(
        &self,
        c: &Container,
        user: &str,
        cmd: &[&str],
        stdin: Option<&[u8]>,
        mut on_stdout: impl FnMut(&[u8]) -> Result<()>,
        stderr: &mut Vec<u8>,
    ) -> Result<i64> {
        let what = || format!("run `{}` in {}", cmd.join(" "), c.name);
        let exec = self
            .api
            .create_exec(
                &c.id,
                CreateExecOptions {
                    cmd: Some(cmd.to_vec()),
                    user: Some(user),
                    attach_stdin: Some(stdin.is_some()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .with_context(what)?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = self
            .api
            .start_exec(&exec.id, None)
            .await
            .with_context(what)?
        else {
            bail!("{}: the engine did not attach", what());
        };
        if let Some(data) = stdin {
            input.write_all(data).await.with_context(what)?;
            input.shutdown().await.with_context(what)?;
        }
        while let Some(frame) = output.next().await {
            match frame.with_context(what)? {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    on_stdout(&message)?
                }
                LogOutput::StdErr { message } => stderr.extend_from_slice(&message),
                LogOutput::StdIn { .. } => {}
            }
        }
        let code = self
            .api
            .inspect_exec(&exec.id)
            .await
            .with_context(what)?
            .exit_code;
        code.ok_or_else(|| anyhow!("{}: no exit code", what()))
    }

    /// Copies one regular file out of the container (running or stopped).
    pub async fn download(&self, c: &Container, path: &str) -> Result<ContainerFile> {
        let mut stream = self.api.download_from_container(
            &c.id,
            Some(
                DownloadFromContainerOptionsBuilder::default()
                    .path(path)
                    .build(),
            ),
        );
        let mut tarball = Vec::new();
        while let Some(chunk) = stream.next().await {
            tarball.extend_from_slice(
                &chunk.with_context(|| format!("copy {path} out of {}", c.name))?,
            );
        }
        let mut archive = tar::Archive::new(&tarball[..]);
        let mut entry = archive
            .entries()?
            .next()
            .ok_or_else(|| anyhow!("copy {path} out of {}: empty archive", c.name))??;
        let header = entry.header().clone();
        let mut bytes = Vec::with_capacity(header.size()? as usize);
        std::io::Read::read_to_end(&mut entry, &mut bytes)?;
        Ok(ContainerFile { header, bytes })
    }

    /// Copies the folder `path` out of the container into `dest` on the host (created), and
    /// returns each regular file with its size and sha256, relative to `dest`'s parent folder
    /// under `prefix` (e.g. `base/global/pg_control`).
    pub async fn download_dir(
        &self,
        c: &Container,
        path: &str,
        dest: &Path,
        prefix: &str,
    ) -> Result<Vec<Artefact>> {
        let mut stream = self.api.download_from_container(
            &c.id,
            Some(
                DownloadFromContainerOptionsBuilder::default()
                    .path(path)
                    .build(),
            ),
        );
        let mut tarball = Vec::new();
        while let Some(chunk) = stream.next().await {
            tarball.extend_from_slice(
                &chunk.with_context(|| format!("copy {path} out of {}", c.name))?,
            );
        }
        std::fs::create_dir_all(dest).with_context(|| format!("create {}", dest.display()))?;
        let mut artefacts = Vec::new();
        let mut archive = tar::Archive::new(&tarball[..]);
        for entry in archive.entries()? {
            let mut entry = entry?;
            // Entries are `<folder name>/…`: drop the folder name.
            let inner: PathBuf = entry.path()?.components().skip(1).collect();
            if inner.as_os_str().is_empty() {
                continue;
            }
            let target = dest.join(&inner);
            match entry.header().entry_type() {
                tar::EntryType::Directory => std::fs::create_dir_all(&target)?,
                tar::EntryType::Regular => {
                    let mut bytes = Vec::with_capacity(entry.header().size()? as usize);
                    std::io::Read::read_to_end(&mut entry, &mut bytes)?;
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::write(&target, &bytes)
                        .with_context(|| format!("write {}", target.display()))?;
                    artefacts.push(Artefact {
                        file: format!("{prefix}/{}", inner.display()),
                        size: bytes.len() as u64,
                        sha256: hex::encode(Sha256::digest(&bytes)),
                    });
                }
                _ => {}
            }
        }
        artefacts.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(artefacts)
    }

    /// Writes `file` to `path` in the container (running or stopped), keeping owner and mode.
    pub async fn upload(&self, c: &Container, path: &str, file: &ContainerFile) -> Result<()> {
        let (dir, name) = path
            .rsplit_once('/')
            .ok_or_else(|| anyhow!("{path} is not an absolute path"))?;
        let mut header = file.header.clone();
        header.set_size(file.bytes.len() as u64);
        let mut builder = tar::Builder::new(Vec::new());
        builder.append_data(&mut header, name, &file.bytes[..])?;
        let tarball = builder.into_inner()?;
        self.api
            .upload_to_container(
                &c.id,
                Some(
                    UploadToContainerOptionsBuilder::default()
                        .path(if dir.is_empty() { "/" } else { dir })
                        .build(),
                ),
                bollard::body_full(tarball.into()),
            )
            .await
            .with_context(|| format!("copy {path} into {}", c.name))
    }

    /// Copies a host file into the container at `path`, readable by everyone.
    pub async fn upload_host_file(&self, c: &Container, src: &Path, path: &str) -> Result<()> {
        let bytes = std::fs::read(src).with_context(|| format!("read {}", src.display()))?;
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_mtime(0);
        let file = ContainerFile { header, bytes };
        self.upload(c, path, &file).await
    }

    /// The container's stdout and stderr so far, with timestamps.
    pub async fn logs(&self, c: &Container) -> Result<Vec<u8>> {
        let mut stream = self.api.logs(
            &c.id,
            Some(
                LogsOptionsBuilder::default()
                    .stdout(true)
                    .stderr(true)
                    .timestamps(true)
                    .build(),
            ),
        );
        let mut out = Vec::new();
        while let Some(frame) = stream.next().await {
            out.extend_from_slice(&frame?.into_bytes());
        }
        Ok(out)
    }

    /// The ids of the containers this run started, in start order.
    pub fn started(&self) -> Vec<String> {
        self.started.lock().expect("not poisoned").clone()
    }

    /// Removes a container of this run now (with its anonymous volumes).
    pub async fn remove(&self, c: &Container) -> Result<()> {
        if let Err(e) = self.save_log(&c.id).await {
            tracing::warn!("cannot keep the log of {}: {e:#}", c.name);
        }
        remove_container(&self.api, &c.id).await
    }

    /// Saves the log of every container this run started that still exists (removed ones were
    /// saved before their removal).
    pub async fn save_logs(&self) {
        for id in self.started() {
            match self.save_log(&id).await {
                Ok(()) => {}
                Err(e)
                    if e.chain()
                        .any(|c| c.downcast_ref::<bollard::errors::Error>().is_some_and(gone)) => {}
                Err(e) => tracing::warn!("cannot keep the log of container {id}: {e:#}"),
            }
        }
    }

    /// Writes the container's stdout and stderr to `<logs dir>/<container name>.log`.
    async fn save_log(&self, id: &str) -> Result<()> {
        let info = self
            .api
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .context("inspect")?;
        let name = info
            .name
            .unwrap_or_else(|| id.to_string())
            .trim_start_matches('/')
            .to_string();
        let c = Container {
            id: id.to_string(),
            name: name.clone(),
            port: 0,
        };
        let bytes = tokio::time::timeout(Duration::from_secs(30), self.logs(&c))
            .await
            .map_err(|_| anyhow!("reading the log of {name} took over 30s"))??;
        std::fs::create_dir_all(&self.logs_dir)
            .with_context(|| format!("create {}", self.logs_dir.display()))?;
        let path = self.logs_dir.join(format!("{name}.log"));
        std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))
    }

    /// Removes the run's volume `name` (created by [`Docker::create_volume`]).
    pub async fn remove_volume(&self, volume: &str) -> Result<()> {
        self.api
            .remove_volume(volume, None::<RemoveVolumeOptions>)
            .await
            .with_context(|| format!("remove volume {volume}"))
    }

    /// Removes every container, volume and network carrying this run's id.
    pub async fn teardown(&self) -> Result<Removed> {
        self.creations.close();
        if tokio::time::timeout(Duration::from_secs(60), self.creations.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "a container, volume or network was still being created after 60s; sweeping anyway"
            );
        }
        let removed = sweep(&self.api, &self.run_id).await?;
        self.started.lock().expect("not poisoned").clear();
        Ok(removed)
    }

    /// Leaves the run's resources in place for inspection (DRILLRIG_KEEP): nothing of the run
    /// is removed but by [`Docker::teardown`] (or `drillrig gc`), so there is nothing to release.
    pub fn keep(&self) {}
}

/// One tar archive, rooted at `/`, of the host files or folders (`copy_in`: a file keeps its
/// mode, a folder its tree) and the literal files (`files`: mode 0644) a container gets before
/// it starts; `None` when there is nothing to copy.
fn copy_in_archive(
    copy_in: &[(PathBuf, String)],
    files: &[(String, Vec<u8>)],
) -> Result<Option<Vec<u8>>> {
    if copy_in.is_empty() && files.is_empty() {
        return Ok(None);
    }
    let mut archive = tar::Builder::new(Vec::new());
    for (host, path) in copy_in {
        let at = path.trim_start_matches('/');
        let meta = std::fs::metadata(host).with_context(|| format!("read {}", host.display()))?;
        let packed = if meta.is_dir() {
            archive.append_dir_all(at, host)
        } else {
            // Owned by root in the container, whoever owns it here; the host's mode.
            let mut header = tar::Header::new_gnu();
            header.set_size(meta.len());
            header.set_mode(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()));
            std::fs::File::open(host).and_then(|f| archive.append_data(&mut header, at, f))
        };
        packed.with_context(|| format!("pack {} for {path}", host.display()))?;
    }
    for (path, contents) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        archive.append_data(&mut header, path.trim_start_matches('/'), &contents[..])?;
    }
    Ok(Some(archive.into_inner()?))
}

/// What a sweep removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    pub containers: usize,
    pub volumes: usize,
    pub networks: usize,
}

/// Whether a removal error means the resource is already gone (someone else removed it).
fn gone(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Retries a removal while the engine answers 409 (still in use by a container being removed),
/// for up to 3 s (a sweep's next pass tries again); a 404 counts as removed.
async fn remove_with_retry<F, Fut>(what: String, mut remove: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), bollard::errors::Error>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match remove().await {
            Ok(()) => return Ok(()),
            Err(e) if gone(&e) => return Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).context(what),
        }
    }
}

async fn remove_container(api: &bollard::Docker, id: &str) -> Result<()> {
    remove_with_retry(format!("remove container {id}"), || {
        api.remove_container(
            id,
            Some(
                RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .v(true)
                    .build(),
            ),
        )
    })
    .await
}

/// Removes every resource of `run_id` (`remove_run`) in passes 300 ms apart, until a pass
/// after the first finds nothing and fails at nothing (or 60 s have passed). A creation that was
/// in flight when the run stopped (an interrupt drops the request, not the engine's work) shows
/// up in a later pass; if its container already holds the run's volume, that pass's volume
/// removal fails, and the next pass removes the container first. The error returned is the last
/// pass's.
pub async fn sweep(api: &bollard::Docker, run_id: &str) -> Result<Removed> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut total = Removed::default();
    let mut first = true;
    loop {
        let (removed, error) = remove_run(api, run_id).await;
        let found_nothing = removed == Removed::default();
        total.containers += removed.containers;
        total.volumes += removed.volumes;
        total.networks += removed.networks;
        let clean = !first && found_nothing && error.is_none();
        if clean || tokio::time::Instant::now() >= deadline {
            return error.map_or(Ok(total), Err);
        }
        first = false;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// How the names of a run's containers and volumes begin.
fn resource_prefix(run_id: &str) -> String {
    format!("drillrig-{run_id}-")
}

/// One pass over the resources of `run_id` (containers and networks by label, volumes by name):
/// containers first, then volumes and networks. Keeps going past a failed removal and returns the
/// first failure with what it removed; resources that are already gone count as removed (another
/// sweep may be running).
async fn remove_run(api: &bollard::Docker, run_id: &str) -> (Removed, Option<anyhow::Error>) {
    let filter = HashMap::from([("label", vec![format!("{RUN_LABEL}={run_id}")])]);
    let mut removed = Removed::default();
    let mut first_error: Option<anyhow::Error> = None;
    let mut note = |r: Result<()>, count: &mut usize| match r {
        Ok(()) => *count += 1,
        Err(e) => {
            first_error.get_or_insert(e);
        }
    };
    let containers = api
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filter)
                .build(),
        ))
        .await
        .context("list the run's containers");
    for id in listed(containers, &mut note)
        .into_iter()
        .filter_map(|c| c.id)
    {
        note(remove_container(api, &id).await, &mut removed.containers);
    }
    // By name, not label: a container created with a named volume that is gone re-creates it,
    // unlabelled. Every volume of the run is named by `Docker::resource_name`.
    let prefix = resource_prefix(run_id);
    let volumes = api
        .list_volumes(Some(
            ListVolumesOptionsBuilder::default()
                .filters(&HashMap::from([("name", vec![prefix.clone()])]))
                .build(),
        ))
        .await
        .context("list the run's volumes")
        .map(|v| v.volumes.unwrap_or_default());
    let volumes = listed(volumes, &mut note);
    for v in volumes.iter().filter(|v| v.name.starts_with(&prefix)) {
        let r = remove_with_retry(format!("remove volume {}", v.name), || {
            api.remove_volume(&v.name, None::<RemoveVolumeOptions>)
        })
        .await;
        note(r, &mut removed.volumes);
    }
    let networks = api
        .list_networks(Some(
            ListNetworksOptionsBuilder::default()
                .filters(&filter)
                .build(),
        ))
        .await
        .context("list the run's networks");
    for id in listed(networks, &mut note).into_iter().filter_map(|n| n.id) {
        let r = remove_with_retry(format!("remove network {id}"), || api.remove_network(&id)).await;
        note(r, &mut removed.networks);
    }
    (removed, first_error)
}

/// The items of a listing, or none (noting the error) when the listing failed.
fn listed<T>(list: Result<Vec<T>>, note: &mut impl FnMut(Result<()>, &mut usize)) -> Vec<T> {
    list.unwrap_or_else(|e| {
        note(Err(e), &mut 0);
        Vec::new()
    })
}
