//! The `docker` driver: a task as a container of Docker Engine (bollard),
//! with network mode `none`; the agent attaches the container's network
//! namespace once it runs. Containers carry labels naming the task and the
//! node, so a new agent adopts them (they keep running meanwhile, like
//! Swarm's live-restore).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, HealthConfig, HealthStatusEnum, HostConfig,
    HostConfigLogConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptions, LogsOptions,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;

use super::state::{ExitRecord, TaskState};
use super::{
    valid_task_id, AttachFn, DriverError, Health, LogChunk, LogQuery, NodeLogs, TaskDriver,
    TaskSpec,
};

/// Health checks of a spec run every second and fail after two misses.
const HEALTH_INTERVAL_NS: i64 = 1_000_000_000;

/// The container's check: the spec's command (or, without one, the image's
/// HEALTHCHECK) at the spec's timings, Apiary's defaults for the rest of a
/// command it sets.
fn health_config(spec: &TaskSpec) -> Option<HealthConfig> {
    let t = spec.health;
    let ns = |ms: Option<u64>| ms.map(|ms| ms as i64 * 1_000_000);
    let set = HealthConfig {
        test: spec
            .health_cmd
            .as_ref()
            .map(|cmd| vec!["CMD-SHELL".into(), cmd.clone()]),
        interval: ns(t.interval_ms),
        timeout: ns(t.timeout_ms),
        retries: t.retries.map(i64::from),
        start_period: ns(t.start_period_ms),
        ..Default::default()
    };
    match spec.health_cmd {
        Some(_) => Some(HealthConfig {
            interval: set.interval.or(Some(HEALTH_INTERVAL_NS)),
            timeout: set.timeout.or(Some(HEALTH_INTERVAL_NS)),
            retries: set.retries.or(Some(2)),
            ..set
        }),
        None if t.is_default() => None,
        None => Some(set),
    }
}

pub const LABEL_TASK: &str = "io.apiary.task";
pub const LABEL_NODE: &str = "io.apiary.node";

/// What Docker writes into /etc/hosts of a container without a network.
const HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

pub struct DockerDriver {
    docker: Docker,
    rt: tokio::runtime::Runtime,
    node: String,
}

/// The name a node's objects carry in the engine (containers, volumes):
/// its cgroup parent, `/` made `-` (one engine may serve several nodes).
pub fn scope(cgroup_parent: &str) -> String {
    cgroup_parent.replace('/', "-")
}

/// The Docker volume behind a task's named volume on node `node`.
pub fn volume_name(node: &str, name: &str) -> String {
    format!("{node}_{name}")
}

/// Labels of the volumes Apiary makes: the node and the volume's own name.
pub const LABEL_VOLUME: &str = "io.apiary.volume";

fn docker_err(task: &str, what: &str) -> impl FnOnce(bollard::errors::Error) -> DriverError {
    let (task, what) = (task.to_string(), what.to_string());
    move |e| DriverError::Start {
        task,
        message: format!("{what}: {e}"),
    }
}

fn container_state(state: bollard::models::ContainerState) -> TaskState {
    match state.status {
        Some(ContainerStateStatusEnum::RUNNING) => {
            TaskState::Running(state.pid.unwrap_or(0) as i32)
        }
        Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD) => {
            TaskState::Exited(ExitRecord {
                code: state.exit_code.map(|c| c as i32),
                signal: None,
            })
        }
        _ => TaskState::Lost,
    }
}

fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl DockerDriver {
    /// Connects to the Docker Engine at `socket` (e.g. /var/run/docker.sock).
    pub fn connect(socket: &str, node: &str) -> Result<Self, DriverError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| DriverError::Io {
                what: "starting a runtime".into(),
                source,
            })?;
        let unreachable = |e: bollard::errors::Error| DriverError::Start {
            task: String::new(),
            message: format!(
                "Docker Engine at {socket} is not reachable: {e} (is dockerd running?)"
            ),
        };
        let docker = Docker::connect_with_unix(socket, 60, bollard::API_DEFAULT_VERSION)
            .map_err(unreachable)?;
        rt.block_on(docker.ping()).map_err(unreachable)?;
        Ok(DockerDriver {
            docker,
            rt,
            node: node.to_string(),
        })
    }

    /// The images the engine has, by repository:tag.
    pub fn images(&self) -> Result<Vec<String>, DriverError> {
        let list = self
            .rt
            .block_on(
                self.docker
                    .list_images(None::<bollard::query_parameters::ListImagesOptions>),
            )
            .map_err(docker_err("", "listing images"))?;
        Ok(list
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .filter(|t| t != "<none>:<none>")
            .collect())
    }

    /// The named volumes this node's tasks made on the engine.
    pub fn volumes(&self) -> Result<Vec<control::api::volumes::NodeVolume>, DriverError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_NODE}={}", self.node)],
        )]);
        let opts = bollard::query_parameters::ListVolumesOptions {
            filters: Some(filters),
        };
        let list = self
            .rt
            .block_on(self.docker.list_volumes(Some(opts)))
            .map_err(docker_err("", "listing volumes"))?;
        Ok(list
            .volumes
            .unwrap_or_default()
            .into_iter()
            // Made by this node (the filter) for a named volume.
            .filter_map(|v| {
                let name = v.labels.get(LABEL_VOLUME)?.clone();
                (v.name == volume_name(&self.node, &name)).then(|| {
                    control::api::volumes::NodeVolume {
                        name,
                        driver: v.driver,
                        mountpoint: v.mountpoint,
                        created_at: v.created_at.map(|d| d.to_string()),
                        labels: v.labels.into_iter().collect(),
                    }
                })
            })
            .collect())
    }

    /// Removes this node's volume `name` from the engine (which refuses
    /// while a container uses it); `Ok(false)` when there is none.
    pub fn remove_volume(&self, name: &str) -> Result<bool, DriverError> {
        let full = volume_name(&self.node, name);
        match self.rt.block_on(self.docker.remove_volume(
            &full,
            None::<bollard::query_parameters::RemoveVolumeOptions>,
        )) {
            Ok(()) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(docker_err("", &format!("removing volume {full}"))(e)),
        }
    }

    /// Containers are named after the node and the task.
    pub fn container_name(&self, id: &str) -> String {
        format!("apiary-{}-{id}", self.node)
    }

    fn inspect_state(&self, id: &str) -> Result<TaskState, DriverError> {
        let name = self.container_name(id);
        let info = match self.rt.block_on(self.docker.inspect_container(&name, None)) {
            Ok(i) => i,
            Err(e) if not_found(&e) => return Err(DriverError::NoTask(id.to_string())),
            Err(e) => return Err(docker_err(id, "inspecting the container")(e)),
        };
        Ok(container_state(info.state.unwrap_or_default()))
    }

    fn remove_container(&self, id: &str, force: bool) -> Result<(), DriverError> {
        // Its anonymous volumes go with it (named ones stay), as Swarm's do.
        let opts = RemoveContainerOptionsBuilder::new()
            .force(force)
            .v(true)
            .build();
        match self.rt.block_on(
            self.docker
                .remove_container(&self.container_name(id), Some(opts)),
        ) {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(docker_err(id, "removing the container")(e)),
        }
    }
}

impl DockerDriver {
    /// Checks a spec and builds its container (nothing is created yet).
    /// `images` caches what was found of each image in this batch (a
    /// busy engine answers each lookup slowly).
    fn prepare(
        &self,
        spec: &TaskSpec,
        images: &mut HashMap<String, bool>,
    ) -> Result<(String, ContainerCreateBody), DriverError> {
        if !valid_task_id(&spec.id) {
            return Err(DriverError::BadTaskId(spec.id.clone()));
        }
        let image = spec.image.clone().ok_or_else(|| DriverError::Start {
            task: spec.id.clone(),
            message: "the docker driver needs an image".into(),
        })?;
        let known = match images.get(&image) {
            Some(k) => *k,
            None => {
                let k = match self.rt.block_on(self.docker.inspect_image(&image)) {
                    Ok(_) => true,
                    Err(e) if not_found(&e) => false,
                    Err(e) => return Err(docker_err(&spec.id, "looking up the image")(e)),
                };
                images.insert(image.clone(), k);
                k
            }
        };
        if !known {
            return Err(DriverError::UnknownImage(image));
        }
        // A container of this name already there is found when creating it
        // (409), without a lookup per task.
        let name = self.container_name(&spec.id);
        let mut binds = Vec::new();
        if let Some(r) = &spec.resolv_conf {
            // The attacher fills it in place; the container sees it change.
            if !r.exists() {
                let io = |source| DriverError::Io {
                    what: format!("creating {}", r.display()),
                    source,
                };
                std::fs::create_dir_all(r.parent().unwrap_or(r)).map_err(io)?;
                control::private_fs::write_task_readable(r, b"").map_err(|source| {
                    DriverError::Io {
                        what: format!("creating {}", r.display()),
                        source,
                    }
                })?;
            }
            binds.push(format!("{}:/etc/resolv.conf:ro", r.display()));
            // With Docker's networking off (below) the engine leaves
            // /etc/hosts empty; localhost must still resolve.
            let hosts = r.with_file_name("hosts");
            control::private_fs::write_task_readable(&hosts, HOSTS.as_bytes()).map_err(
                |source| DriverError::Io {
                    what: format!("writing {}", hosts.display()),
                    source,
                },
            )?;
            binds.push(format!("{}:/etc/hosts:ro", hosts.display()));
        }
        let mut mounts: Vec<bollard::models::Mount> =
            spec.mounts.iter().map(|m| self.mount(m)).collect();
        // Secrets and configs: typed binds (a `:` in a target is no
        // separator), read-only, after the task's own mounts.
        mounts.extend(spec.binds.iter().map(|b| bollard::models::Mount {
            target: Some(b.target.clone()),
            source: Some(b.source.display().to_string()),
            typ: Some(bollard::models::MountType::BIND),
            read_only: Some(true),
            ..Default::default()
        }));
        let mut labels: HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(LABEL_TASK.to_string(), spec.id.clone());
        labels.insert(LABEL_NODE.to_string(), self.node.clone());
        let body = ContainerCreateBody {
            image: Some(image),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            entrypoint: spec.entrypoint.clone(),
            env: (!spec.env.is_empty()).then(|| spec.env.clone()),
            labels: Some(labels),
            // The agent attaches the task's network itself. Without this the
            // engine still sets up a sandbox for `none` and runs its
            // `libnetwork-setkey` hook (a re-exec of dockerd) in every start:
            // measured, half of the engine's CPU per container, 100 starts in
            // 12 s instead of 6 s.
            network_disabled: Some(true),
            healthcheck: health_config(spec),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                // A real init reaps zombies and passes SIGTERM on (busybox as PID 1 ignores it).
                init: Some(true),
                memory: spec.memory_max.map(|m| m as i64),
                nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
                binds: (!binds.is_empty()).then_some(binds),
                mounts: (!mounts.is_empty()).then_some(mounts),
                // Docker's own rotation, set for every task (the engine's
                // default keeps everything).
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".into()),
                    config: Some(HashMap::from([
                        ("max-size".to_string(), spec.log.max_size.to_string()),
                        ("max-file".to_string(), spec.log.max_files.to_string()),
                    ])),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok((name, body))
    }

    /// A `--mount` as Docker's. A named volume is this node's: the engine
    /// may serve several nodes (the lab), so its name carries the node
    /// (`NODE_NAME`) and its labels say whose it is.
    fn mount(&self, m: &control::services::mounts::Mount) -> bollard::models::Mount {
        use bollard::models::{MountBindOptions, MountTmpfsOptions, MountType, MountVolumeOptions};
        use control::services::mounts::MountKind;
        let mut out = bollard::models::Mount {
            target: Some(m.target.clone()),
            read_only: Some(m.read_only),
            ..Default::default()
        };
        match &m.kind {
            MountKind::Volume { nocopy, labels } => {
                out.typ = Some(MountType::VOLUME);
                out.source = m.source.as_ref().map(|n| volume_name(&self.node, n));
                let mut l: HashMap<String, String> =
                    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                l.insert(LABEL_NODE.to_string(), self.node.clone());
                if let Some(n) = &m.source {
                    l.insert(LABEL_VOLUME.to_string(), n.clone());
                }
                out.volume_options = Some(MountVolumeOptions {
                    no_copy: Some(*nocopy),
                    labels: Some(l),
                    ..Default::default()
                });
            }
            MountKind::Bind { propagation } => {
                out.typ = Some(MountType::BIND);
                out.source = m.source.clone();
                out.bind_options = propagation.as_deref().map(|p| MountBindOptions {
                    propagation: p.parse().ok(),
                    ..Default::default()
                });
            }
            MountKind::Tmpfs { size, mode } => {
                out.typ = Some(MountType::TMPFS);
                out.tmpfs_options = Some(MountTmpfsOptions {
                    size_bytes: size.map(|s| s as i64),
                    mode: mode.map(|m| m as i64),
                    ..Default::default()
                });
            }
        }
        out
    }

    /// Starts several tasks: Docker Engine creates and starts their
    /// containers at the same time (one after the other, 100 containers
    /// took about three times as long), then each is attached. One result
    /// per spec, in order; a task that fails leaves nothing behind.
    pub fn start_many(
        &mut self,
        specs: &[TaskSpec],
        attach: AttachFn<'_>,
    ) -> Vec<Result<TaskState, DriverError>> {
        let mut images = HashMap::new();
        let mut out: Vec<Option<Result<TaskState, DriverError>>> = Vec::new();
        let mut bodies = Vec::new();
        for s in specs {
            match self.prepare(s, &mut images) {
                Ok(b) => {
                    bodies.push(Some(b));
                    out.push(None);
                }
                Err(e) => {
                    bodies.push(None);
                    out.push(Some(Err(e)));
                }
            }
        }
        let docker = &self.docker;
        let mut pending: futures::stream::FuturesUnordered<_> = bodies
            .iter()
            .zip(specs)
            .enumerate()
            .filter_map(|(i, (b, spec))| {
                let (name, body) = b.as_ref()?;
                Some(async move { (i, launch(docker, name, body, &spec.id).await) })
            })
            .collect();
        // Each container is attached as soon as it runs, while the engine
        // works on the others.
        while let Some((i, launched)) = self.rt.block_on(pending.next()) {
            out[i] = Some(self.finish(&specs[i], launched, attach));
        }
        out.into_iter()
            .map(|r| r.expect("a result for every spec"))
            .collect()
    }

    /// Attaches a launched container, or removes what failed.
    fn finish(
        &self,
        spec: &TaskSpec,
        launched: Result<TaskState, DriverError>,
        attach: AttachFn<'_>,
    ) -> Result<TaskState, DriverError> {
        let pid = match launched {
            Ok(TaskState::Running(pid)) if pid > 0 => pid,
            // Not ours to remove: it was there before.
            Err(DriverError::Exists(id)) => return Err(DriverError::Exists(id)),
            Ok(other) => {
                let _ = self.remove_container(&spec.id, true);
                return Err(DriverError::Start {
                    task: spec.id.clone(),
                    message: format!("the container did not stay up: {other:?}"),
                });
            }
            Err(e) => {
                let _ = self.remove_container(&spec.id, true);
                return Err(e);
            }
        };
        let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        if let Err(message) = attach(&spec.id, &netns) {
            let _ = self.remove_container(&spec.id, true);
            return Err(DriverError::Attach {
                task: spec.id.clone(),
                message,
            });
        }
        Ok(TaskState::Running(pid))
    }
}

/// Creates, starts and inspects one container.
async fn launch(
    docker: &Docker,
    name: &str,
    body: &ContainerCreateBody,
    id: &str,
) -> Result<TaskState, DriverError> {
    let opts = CreateContainerOptionsBuilder::new().name(name).build();
    match docker.create_container(Some(opts), body.clone()).await {
        Ok(_) => {}
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => return Err(DriverError::Exists(id.to_string())),
        Err(e) => return Err(docker_err(id, "creating the container")(e)),
    }
    docker
        .start_container(name, None)
        .await
        .map_err(docker_err(id, "starting the container"))?;
    let info = docker
        .inspect_container(name, None)
        .await
        .map_err(docker_err(id, "inspecting the container"))?;
    Ok(container_state(info.state.unwrap_or_default()))
}

impl TaskDriver for DockerDriver {
    fn start(&mut self, spec: &TaskSpec, attach: AttachFn<'_>) -> Result<TaskState, DriverError> {
        self.start_many(std::slice::from_ref(spec), attach)
            .pop()
            .expect("one result per spec")
    }

    fn stop(&mut self, id: &str, grace: Duration) -> Result<ExitRecord, DriverError> {
        if let TaskState::Exited(rec) = self.inspect_state(id)? {
            return Ok(rec);
        }
        let opts = StopContainerOptionsBuilder::new()
            .t(grace.as_secs() as i32)
            .build();
        self.rt
            .block_on(
                self.docker
                    .stop_container(&self.container_name(id), Some(opts)),
            )
            .map_err(docker_err(id, "stopping the container"))?;
        match self.inspect_state(id)? {
            TaskState::Exited(rec) => Ok(rec),
            other => Err(DriverError::Start {
                task: id.to_string(),
                message: format!("still {other:?} after stop"),
            }),
        }
    }

    fn state(&self, id: &str) -> Result<TaskState, DriverError> {
        self.inspect_state(id)
    }

    /// Streams the engine's log once, counting each stream's bytes: what
    /// lies before the offsets asked for is skipped, not kept. Lines come
    /// behind their times, as the exec driver keeps them
    /// ([`control::logline`]).
    fn logs(&self, id: &str, q: &LogQuery) -> Result<NodeLogs, DriverError> {
        let opts = LogsOptions {
            stdout: true,
            stderr: true,
            timestamps: true,
            ..Default::default()
        };
        let name = self.container_name(id);
        let limit = q.limit();
        let mut chunks = [(q.stdout, 0u64, Vec::new()), (q.stderr, 0u64, Vec::new())];
        let res: Result<(), DriverError> = self.rt.block_on(async {
            let mut s = self.docker.logs(&name, Some(opts));
            while let Some(c) = s.next().await {
                let (k, bytes) = match c {
                    Ok(bollard::container::LogOutput::StdErr { message }) => (1, message),
                    Ok(other) => (0, other.into_bytes()),
                    Err(e) if not_found(&e) => return Err(DriverError::NoTask(id.to_string())),
                    Err(e) => return Err(docker_err(id, "reading logs")(e)),
                };
                let (from, seen, kept) = &mut chunks[k];
                let end = *seen + bytes.len() as u64;
                if end > *from && kept.len() < limit {
                    let skip = from.saturating_sub(*seen) as usize;
                    let take = (bytes.len() - skip).min(limit - kept.len());
                    kept.extend_from_slice(&bytes[skip..skip + take]);
                }
                *seen = end;
            }
            Ok(())
        });
        res?;
        let chunk = |(from, seen, kept): (u64, u64, Vec<u8>)| {
            let start = from.min(seen);
            LogChunk {
                from: start,
                next: start + kept.len() as u64,
                data: String::from_utf8_lossy(&kept).into_owned(),
            }
        };
        let [out, err] = chunks;
        Ok(NodeLogs {
            stdout: chunk(out),
            stderr: chunk(err),
        })
    }

    fn remove(&mut self, id: &str) -> Result<(), DriverError> {
        if let Ok(TaskState::Running(_)) = self.inspect_state(id) {
            return Err(DriverError::Exists(id.to_string()));
        }
        self.remove_container(id, false)
    }

    fn health(&self, id: &str) -> Result<Health, DriverError> {
        let name = self.container_name(id);
        let info = match self.rt.block_on(self.docker.inspect_container(&name, None)) {
            Ok(i) => i,
            Err(e) if not_found(&e) => return Err(DriverError::NoTask(id.to_string())),
            Err(e) => return Err(docker_err(id, "inspecting the container")(e)),
        };
        // The spec's check or the image's HEALTHCHECK, as Docker runs it.
        let status = info.state.and_then(|s| s.health).and_then(|h| h.status);
        Ok(match status {
            Some(HealthStatusEnum::STARTING) => Health::Starting,
            Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
            Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
            _ => Health::None,
        })
    }

    fn adopt(&mut self) -> Result<Vec<(String, TaskState)>, DriverError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_NODE}={}", self.node)],
        )]);
        let opts = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list = self
            .rt
            .block_on(self.docker.list_containers(Some(opts)))
            .map_err(docker_err("", "listing containers"))?;
        let mut out = Vec::new();
        for c in list {
            let Some(id) = c.labels.as_ref().and_then(|l| l.get(LABEL_TASK)).cloned() else {
                continue;
            };
            let state = self.inspect_state(&id)?;
            out.push((id, state));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}
