//! [`ProcessRuntime`]: the embedded process runtime behind the [`Runtime`] trait.
//!
//! State lives on disk so a restarted agent adopts what is running: a sandbox is
//! `<root_dir>/sandboxes/<uid>/sandbox.json` (its [`SandboxStatus`]); a container is
//! `<root_dir>/containers/<id>/` (see [`super::container`]), run by its own shim process
//! (`keel-agent shim`, see [`super::shim`]) that keeps running without the agent.
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use ipnet::Ipv4Net;

use super::cgroups::Cgroups;
use super::container::{
    ContainerDir, ContainerRecord, ContainerSpec, container_id, read_json, same_process,
    valid_name, write_json,
};
use super::exec::{self, ExecStdio, ExecTarget};
use super::images::{DEFAULT_PATH, ImageConfig, ImageStore};
use super::network::{NetworkConfig, PodNetwork};
use crate::runtime::{
    ContainerConfig, ContainerId, ContainerState, ContainerStatus, ExecRequest, ExecResult,
    ExecSession, Result, Runtime, RuntimeError, SandboxConfig, SandboxId, SandboxState,
    SandboxStatus,
};

/// How long `start_container` waits for the shim to report.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for the shim to record an exit after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Reason and exit code of a container whose shim vanished without recording its end.
const UNKNOWN_REASON: &str = "ContainerStatusUnknown";
const UNKNOWN_EXIT_CODE: i32 = 137;

/// Where the process runtime keeps things (the agent's directory flags).
#[derive(Clone, Debug)]
pub struct ProcessConfig {
    /// State, container upper dirs, IPAM (`--root-dir`, default /var/lib/keel/agent).
    pub root_dir: PathBuf,
    /// Network namespace mounts (`--run-dir`, default /run/keel).
    pub run_dir: PathBuf,
    /// Pod logs (`--log-dir`, default /var/log/keel/pods).
    pub log_dir: PathBuf,
    /// The local image store (`--image-dir`, default /var/lib/keel/images).
    pub image_dir: PathBuf,
    /// The cgroup every pod goes under, relative to each hierarchy (`--cgroup-parent`, `keel`).
    pub cgroup_parent: String,
    /// The node's `spec.podCIDR`.
    pub pod_cidr: Ipv4Net,
}

/// The embedded process runtime.
pub struct ProcessRuntime {
    config: ProcessConfig,
    network: PodNetwork,
    images: Arc<ImageStore>,
    cgroups: Cgroups,
    shim_binary: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn sys(what: impl std::fmt::Display, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::System(format!("{what}: {e}"))
}

/// Uids and container names become paths and cgroup names: keep them tame.
fn check_uid(uid: &str) -> Result<()> {
    let ok = !uid.is_empty()
        && uid.len() <= 128
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Invalid(format!("invalid sandbox id {uid:?}")))
    }
}

/// The command line from the image config and the container's `command`/`args`, by the
/// Kubernetes rules: `command` replaces the entrypoint (and drops the image's cmd), `args`
/// replace the cmd.
pub fn command_line(image: &ImageConfig, command: &[String], args: &[String]) -> Vec<String> {
    match (command.is_empty(), args.is_empty()) {
        (true, true) => [image.entrypoint.as_slice(), image.cmd.as_slice()].concat(),
        (true, false) => [image.entrypoint.as_slice(), args].concat(),
        (false, true) => command.to_vec(),
        (false, false) => [command, args].concat(),
    }
}

/// The environment: the image's, then the container's (same names replaced in place), with
/// `PATH` and `HOSTNAME` defaulted.
pub fn environment(image_env: &[String], env: &[(String, String)], hostname: &str) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match out.iter_mut().find(|(n, _)| n == k) {
        Some(slot) => slot.1 = v.to_string(),
        None => out.push((k.to_string(), v.to_string())),
    };
    for e in image_env {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        if !k.is_empty() {
            set(k, v);
        }
    }
    for (k, v) in env {
        if !k.is_empty() && !k.contains('=') {
            set(k, v);
        }
    }
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    if !out.iter().any(|(k, _)| k == "HOSTNAME") {
        out.push(("HOSTNAME".into(), hostname.to_string()));
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The node's resolver configuration for pods: `/etc/resolv.conf`, or systemd-resolved's
/// upstream file when the former only points at a loopback stub.
fn host_resolv_conf() -> String {
    let main = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let loopback_only = main
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .all(|ns| ns.trim().starts_with("127.") || ns.trim() == "::1");
    if loopback_only && let Ok(upstream) = fs::read_to_string("/run/systemd/resolve/resolv.conf") {
        return upstream;
    }
    main
}

/// The network namespace of `hostNetwork` pods: opened by the shim, so it names the namespace
/// the shim was started in (the agent's).
const HOST_NETNS: &str = "/proc/self/ns/net";

impl ProcessRuntime {
    /// Opens the runtime over its directories: sets up the node side of the pod network
    /// (call it on a thread in the agent's network namespace), creates the parent cgroup, and
    /// finds the sandboxes and containers left by an earlier agent.
    pub async fn new(config: ProcessConfig) -> Result<ProcessRuntime> {
        for d in [
            &config.root_dir,
            &config.run_dir,
            &config.log_dir,
            &config.image_dir,
        ] {
            fs::create_dir_all(d).map_err(|e| sys(format!("creating {}", d.display()), e))?;
        }
        for d in ["sandboxes", "containers"] {
            let p = config.root_dir.join(d);
            fs::create_dir_all(&p).map_err(|e| sys(format!("creating {}", p.display()), e))?;
        }
        let cgroups = Cgroups::detect(&config.cgroup_parent)?;
        cgroups.create_parent()?;
        let network = PodNetwork::new(NetworkConfig {
            pod_cidr: config.pod_cidr,
            run_dir: config.run_dir.clone(),
            root_dir: config.root_dir.clone(),
        })
        .await?;
        let shim_binary = std::env::current_exe()
            .map_err(|e| sys("finding the agent's own binary (the shim)", e))?;
        let runtime = ProcessRuntime {
            images: Arc::new(ImageStore::new(&config.image_dir)),
            config,
            network,
            cgroups,
            shim_binary,
            locks: Mutex::new(HashMap::new()),
        };
        runtime.reclaim_orphan_networks().await;
        Ok(runtime)
    }

    /// Tears down pod networks (address claim, network namespace, veth) that have no sandbox
    /// record: an earlier agent stopped between setting a pod's network up and recording its
    /// sandbox. Nothing else can own them while the runtime is opening.
    async fn reclaim_orphan_networks(&self) {
        for (ip, uid) in self.network.ipam().allocations() {
            if self.sandbox_file(&uid).exists() {
                continue;
            }
            match self.network.teardown(&uid).await {
                Ok(()) => {
                    tracing::info!(%ip, uid, "reclaimed the network of a pod with no sandbox")
                }
                Err(e) => {
                    tracing::warn!(%ip, uid, error = %e, "reclaiming an orphaned pod network")
                }
            }
        }
    }

    /// Uses another binary as the shim (`<binary> shim <dir>`); the default is the running
    /// executable, which is right for `keel-agent` but not for a test binary.
    pub fn with_shim_binary(mut self, binary: impl Into<PathBuf>) -> Self {
        self.shim_binary = binary.into();
        self
    }

    pub fn config(&self) -> &ProcessConfig {
        &self.config
    }

    pub fn network(&self) -> &PodNetwork {
        &self.network
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    pub fn cgroups(&self) -> &Cgroups {
        &self.cgroups
    }

    /// `<unified cgroup mount>/<cgroup parent>`: where the datapath's socket programs attach.
    pub fn unified_cgroup(&self) -> Option<PathBuf> {
        self.cgroups.unified_parent()
    }

    fn lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(m.entry(key.to_string()).or_default())
    }

    fn forget_lock(&self, key: &str) {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(key);
    }

    fn sandbox_dir(&self, uid: &str) -> PathBuf {
        self.config.root_dir.join("sandboxes").join(uid)
    }

    fn sandbox_file(&self, uid: &str) -> PathBuf {
        self.sandbox_dir(uid).join("sandbox.json")
    }

    fn container_dir(&self, id: &str) -> ContainerDir {
        ContainerDir::new(self.config.root_dir.join("containers").join(id))
    }

    fn read_sandbox(&self, uid: &str) -> Result<SandboxStatus> {
        check_uid(uid)?;
        read_json(&self.sandbox_file(uid)).map_err(|e| match e {
            RuntimeError::NotFound(_) => RuntimeError::NotFound(format!("sandbox {uid}")),
            e => e,
        })
    }

    /// `<log_dir>/<namespace>_<name>_<uid>`.
    fn pod_log_dir(&self, config: &SandboxConfig) -> PathBuf {
        self.config.log_dir.join(format!(
            "{}_{}_{}",
            config.namespace, config.name, config.uid
        ))
    }

    /// The log directories of a pod uid (by name suffix; the sandbox may be gone).
    fn pod_log_dirs_of(&self, uid: &str) -> Vec<PathBuf> {
        let suffix = format!("_{uid}");
        fs::read_dir(&self.config.log_dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(&suffix))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Container ids on disk, optionally of one sandbox.
    fn container_ids(&self, sandbox: Option<&str>) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(self.config.root_dir.join("containers"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(s) = sandbox {
            // Ids start with the sandbox id (cheap filter), the spec tells for sure.
            let prefix = format!("{s}-");
            out.retain(|id| {
                id.starts_with(&prefix)
                    && self
                        .container_dir(id)
                        .read_spec()
                        .is_ok_and(|spec| spec.sandbox == s)
            });
        }
        out.sort();
        out
    }

    fn check_container_id(id: &str) -> Result<()> {
        if id.is_empty() || id.contains('/') || id.starts_with('.') || id.len() > 400 {
            return Err(RuntimeError::Invalid(format!(
                "invalid container id {id:?}"
            )));
        }
        Ok(())
    }

    /// The spec and the (reconciled) record of a container.
    fn load(&self, id: &str) -> Result<(ContainerDir, ContainerSpec, ContainerRecord)> {
        Self::check_container_id(id)?;
        let dir = self.container_dir(id);
        let spec = dir.read_spec().map_err(|e| match e {
            RuntimeError::NotFound(_) => RuntimeError::NotFound(format!("container {id}")),
            e => e,
        })?;
        let mut rec = dir.read_state()?;
        if rec.state == ContainerState::Running
            && !same_process(rec.pid, rec.pid_start)
            && !same_process(rec.shim_pid, rec.shim_start)
        {
            // Both gone and no exit recorded (the shim was killed). Re-read first: the shim
            // may have written the exit meanwhile.
            rec = dir.read_state()?;
            if rec.state == ContainerState::Running {
                rec.state = ContainerState::Exited;
                rec.finished_at = Some(SystemTime::now());
                rec.exit_code = Some(UNKNOWN_EXIT_CODE);
                rec.reason = Some(UNKNOWN_REASON.into());
                rec.message =
                    Some("the container's monitor exited without recording its end".into());
                dir.write_state(&rec)?;
            }
        }
        Ok((dir, spec, rec))
    }

    fn status_of(spec: &ContainerSpec, rec: &ContainerRecord) -> ContainerStatus {
        ContainerStatus {
            id: ContainerId(spec.id.clone()),
            sandbox: SandboxId(spec.sandbox.clone()),
            name: spec.name.clone(),
            image: spec.image.clone(),
            image_id: spec.image_id.clone(),
            state: rec.state,
            restart_count: spec.restart_count,
            pid: rec.pid.filter(|_| rec.state == ContainerState::Running),
            created_at: spec.created_at,
            started_at: rec.started_at,
            finished_at: rec.finished_at,
            exit_code: rec.exit_code,
            reason: rec.reason.clone(),
            message: rec.message.clone(),
            log_path: spec.log_path.clone(),
        }
    }

    /// SIGTERM (unless `grace` is zero), SIGKILL after `grace`, then wait for the shim to
    /// record the exit.
    async fn kill_container(&self, id: &str, grace: Duration) -> Result<()> {
        let (dir, _spec, rec) = self.load(id)?;
        if rec.state != ContainerState::Running {
            return Ok(());
        }
        let (pid, start) = (rec.pid, rec.pid_start);
        let signal = |sig: libc::c_int| {
            if let Some(p) = pid
                && same_process(Some(p), start)
            {
                // SAFETY: kill has no memory-safety preconditions; the start time check
                // makes sure the pid is still the container's.
                unsafe { libc::kill(p as libc::pid_t, sig) };
            }
        };
        if !grace.is_zero() {
            signal(libc::SIGTERM);
            let deadline = Instant::now() + grace;
            while same_process(pid, start) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        signal(libc::SIGKILL);
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            let (_, _, rec) = self.load(id)?;
            if rec.state != ContainerState::Running {
                return Ok(());
            }
            if !same_process(rec.shim_pid, rec.shim_start) && !same_process(pid, start) {
                return Ok(()); // load() records the end on the next call
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::System(format!(
                    "container {id} did not exit after SIGKILL (see {})",
                    dir.shim_log().display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Removes a container's directory and, unless another attempt of the same container
    /// still exists, its cgroup.
    fn remove_container_files(&self, id: &str) -> Result<()> {
        let dir = self.container_dir(id);
        if let Ok(spec) = dir.read_spec() {
            let others = self
                .container_ids(Some(&spec.sandbox))
                .into_iter()
                .filter(|other| other != id)
                .any(|other| {
                    self.container_dir(&other)
                        .read_spec()
                        .is_ok_and(|s| s.name == spec.name)
                });
            if !others {
                self.cgroups
                    .remove(&self.cgroups.container_path(&spec.sandbox, &spec.name))?;
            }
        }
        match fs::remove_dir_all(&dir.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(sys(format!("removing {}", dir.path.display()), e)),
        }
    }

    fn exec_target(&self, id: &str) -> Result<ExecTarget> {
        let (_, spec, rec) = self.load(id)?;
        match (rec.state, rec.pid) {
            (ContainerState::Running, Some(pid)) if same_process(Some(pid), rec.pid_start) => {
                Ok(ExecTarget {
                    pid,
                    env: spec.env.clone(),
                    cwd: spec.cwd.clone(),
                    cgroup_dirs: spec.cgroup_dirs.clone(),
                })
            }
            _ => Err(RuntimeError::Invalid(format!(
                "container {id} is not running"
            ))),
        }
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn version(&self) -> String {
        format!("keel-process://{}", env!("CARGO_PKG_VERSION"))
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<SandboxStatus> {
        check_uid(&config.uid)?;
        let lock = self.lock(&config.uid);
        let _g = lock.lock().await;
        let existing = match self.read_sandbox(&config.uid) {
            Ok(s) => Some(s),
            Err(RuntimeError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        if let Some(s) = &existing
            && s.state == SandboxState::Ready
            && (config.host_network || self.network.find(&config.uid).await?.is_some())
        {
            return Ok(s.clone());
        }
        // (address, network namespace, host-side veth)
        let (ip, netns, host_veth) = if config.host_network {
            // The containers join the network namespace their shim starts in: the agent's.
            (None, PathBuf::from(HOST_NETNS), None)
        } else {
            let a = self.network.setup(&config.uid).await?;
            (Some(a.ip), a.netns, Some(a.host_veth))
        };
        let pod_cgroup = self.cgroups.pod_path(&config.uid);
        let setup = || -> Result<SandboxStatus> {
            self.cgroups.create(&pod_cgroup, &config.resources)?;
            let logs = self.pod_log_dir(config);
            fs::create_dir_all(&logs)
                .map_err(|e| sys(format!("creating {}", logs.display()), e))?;
            let dir = self.sandbox_dir(&config.uid);
            fs::create_dir_all(&dir).map_err(|e| sys(format!("creating {}", dir.display()), e))?;
            let status = SandboxStatus {
                id: SandboxId(config.uid.clone()),
                config: config.clone(),
                state: SandboxState::Ready,
                ip,
                netns: netns.clone(),
                host_veth: host_veth.clone(),
                created_at: existing
                    .as_ref()
                    .map_or_else(SystemTime::now, |s| s.created_at),
            };
            write_json(&self.sandbox_file(&config.uid), &status)?;
            Ok(status)
        };
        match setup() {
            Ok(s) => Ok(s),
            Err(e) => {
                if existing.is_none() {
                    let _ = self.network.teardown(&config.uid).await;
                    let _ = self.cgroups.remove(&pod_cgroup);
                    let _ = fs::remove_dir_all(self.sandbox_dir(&config.uid));
                }
                Err(e)
            }
        }
    }

    async fn stop_sandbox(&self, id: &SandboxId) -> Result<()> {
        check_uid(&id.0)?;
        let lock = self.lock(&id.0);
        let _g = lock.lock().await;
        for cid in self.container_ids(Some(&id.0)) {
            self.kill_container(&cid, Duration::ZERO).await?;
        }
        self.network.teardown(&id.0).await?;
        match self.read_sandbox(&id.0) {
            Ok(mut s) => {
                s.state = SandboxState::NotReady;
                write_json(&self.sandbox_file(&id.0), &s)
            }
            Err(RuntimeError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn remove_sandbox(&self, id: &SandboxId) -> Result<()> {
        check_uid(&id.0)?;
        let lock = self.lock(&id.0);
        let _g = lock.lock().await;
        for cid in self.container_ids(Some(&id.0)) {
            self.kill_container(&cid, Duration::ZERO).await?;
            self.remove_container_files(&cid)?;
        }
        // Kills whatever is left in the pod's cgroups (e.g. a container whose shim died).
        self.cgroups.remove(&self.cgroups.pod_path(&id.0))?;
        self.network.teardown(&id.0).await?;
        let dir = self.sandbox_dir(&id.0);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(sys(format!("removing {}", dir.display()), e)),
        }
        drop(_g);
        self.forget_lock(&id.0);
        Ok(())
    }

    async fn sandbox_status(&self, id: &SandboxId) -> Result<SandboxStatus> {
        let mut s = self.read_sandbox(&id.0)?;
        if s.state == SandboxState::Ready
            && !s.config.host_network
            && self.network.find(&id.0).await?.is_none()
        {
            s.state = SandboxState::NotReady;
        }
        Ok(s)
    }

    async fn list_sandboxes(&self) -> Result<Vec<SandboxStatus>> {
        let mut out = Vec::new();
        let dir = self.config.root_dir.join("sandboxes");
        let entries = fs::read_dir(&dir).map_err(|e| sys(dir.display(), e))?;
        let mut uids: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        uids.sort();
        for uid in uids {
            match self.sandbox_status(&SandboxId(uid)).await {
                Ok(s) => out.push(s),
                Err(RuntimeError::NotFound(_)) | Err(RuntimeError::Invalid(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn create_container(
        &self,
        sandbox: &SandboxId,
        config: &ContainerConfig,
    ) -> Result<ContainerId> {
        if !valid_name(&config.name) {
            return Err(RuntimeError::Invalid(format!(
                "invalid container name {:?}",
                config.name
            )));
        }
        let sb = self.read_sandbox(&sandbox.0)?;
        if sb.state != SandboxState::Ready {
            return Err(RuntimeError::Invalid(format!(
                "sandbox {sandbox} is not ready"
            )));
        }
        let id = container_id(&sandbox.0, &config.name, config.restart_count);
        let lock = self.lock(&id);
        let _g = lock.lock().await;
        let dir = self.container_dir(&id);
        if dir.path.exists() {
            return match dir.read_state() {
                Ok(rec) if rec.state == ContainerState::Created => Ok(ContainerId(id)),
                _ => Err(RuntimeError::Invalid(format!(
                    "container {id} already exists"
                ))),
            };
        }
        let images = Arc::clone(&self.images);
        let image_ref = config.image.clone();
        let image = tokio::task::spawn_blocking(move || images.resolve(&image_ref))
            .await
            .map_err(|e| sys("resolving the image", e))??;
        let argv = command_line(&image.config, &config.command, &config.args);
        if argv.is_empty() {
            return Err(RuntimeError::Invalid(format!(
                "container {}: no command given and image {} has none",
                config.name, config.image
            )));
        }
        let env = environment(&image.config.env, &config.env, &sb.config.hostname);
        let cwd = config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .or(image.config.working_dir.clone())
            .unwrap_or_else(|| "/".into());
        if !cwd.starts_with('/') {
            return Err(RuntimeError::Invalid(format!(
                "container {}: workingDir {cwd:?} is not absolute",
                config.name
            )));
        }
        for m in &config.mounts {
            if !m.container_path.starts_with('/') || !m.host_path.is_absolute() {
                return Err(RuntimeError::Invalid(format!(
                    "container {}: mount {} -> {} needs absolute paths",
                    config.name,
                    m.host_path.display(),
                    m.container_path
                )));
            }
        }
        let cgroup_dirs = self.cgroups.create(
            &self.cgroups.container_path(&sandbox.0, &config.name),
            &config.resources,
        )?;
        let log_path = self.log_path(sandbox, &config.name, config.restart_count);
        let spec = ContainerSpec {
            id: id.clone(),
            sandbox: sandbox.0.clone(),
            name: config.name.clone(),
            image: config.image.clone(),
            image_id: image.image_id.clone(),
            restart_count: config.restart_count,
            created_at: SystemTime::now(),
            labels: config.labels.clone(),
            lowerdirs: image.lowerdirs.clone(),
            argv,
            env,
            cwd,
            hostname: sb.config.hostname.clone(),
            pod_ip: sb.ip,
            netns: sb.netns.clone(),
            mounts: config.mounts.clone(),
            cgroup_dirs,
            log_path: log_path.clone(),
            resolv_conf: host_resolv_conf(),
            resources: config.resources.clone(),
        };
        let tmp = self
            .config
            .root_dir
            .join("containers")
            .join(format!(".{id}.tmp-{}", std::process::id()));
        let build = || -> Result<()> {
            let t = ContainerDir::new(&tmp);
            for d in [t.path.clone(), t.upper(), t.work(), t.rootfs()] {
                fs::create_dir_all(&d).map_err(|e| sys(format!("creating {}", d.display()), e))?;
            }
            if let Some(parent) = log_path.parent() {
                fs::create_dir_all(parent)
                    .map_err(|e| sys(format!("creating {}", parent.display()), e))?;
            }
            t.write_spec(&spec)?;
            t.write_state(&ContainerRecord::created())?;
            fs::rename(&tmp, &dir.path)
                .map_err(|e| sys(format!("creating {}", dir.path.display()), e))
        };
        if let Err(e) = build() {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        Ok(ContainerId(id))
    }

    async fn start_container(&self, id: &ContainerId) -> Result<()> {
        let lock = self.lock(&id.0);
        let _g = lock.lock().await;
        let (dir, _spec, rec) = self.load(&id.0)?;
        if rec.state != ContainerState::Created {
            return Err(RuntimeError::Invalid(format!(
                "container {id} is {:?}, not Created",
                rec.state
            )));
        }
        let mut cmd = tokio::process::Command::new(&self.shim_binary);
        cmd.arg("shim")
            .arg(&dir.path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| {
            sys(
                format!("starting the shim {}", self.shim_binary.display()),
                e,
            )
        })?;
        let out = tokio::time::timeout(START_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| {
                RuntimeError::System(format!(
                    "container {id}: the shim did not report within {START_TIMEOUT:?}"
                ))
            })?
            .map_err(|e| sys("waiting for the shim", e))?;
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(RuntimeError::System(format!(
                "starting container {id}: {}",
                if msg.is_empty() {
                    format!("the shim failed ({})", out.status)
                } else {
                    msg
                }
            )));
        }
        Ok(())
    }

    async fn stop_container(&self, id: &ContainerId, grace: Duration) -> Result<()> {
        self.kill_container(&id.0, grace).await
    }

    async fn remove_container(&self, id: &ContainerId) -> Result<()> {
        Self::check_container_id(&id.0)?;
        let lock = self.lock(&id.0);
        let _g = lock.lock().await;
        if !self.container_dir(&id.0).path.exists() {
            return Ok(());
        }
        self.kill_container(&id.0, Duration::ZERO).await?;
        self.remove_container_files(&id.0)?;
        drop(_g);
        self.forget_lock(&id.0);
        Ok(())
    }

    async fn container_status(&self, id: &ContainerId) -> Result<ContainerStatus> {
        let (_, spec, rec) = self.load(&id.0)?;
        Ok(Self::status_of(&spec, &rec))
    }

    async fn list_containers(&self, sandbox: Option<&SandboxId>) -> Result<Vec<ContainerStatus>> {
        let mut out = Vec::new();
        for id in self.container_ids(sandbox.map(|s| s.0.as_str())) {
            match self.load(&id) {
                Ok((_, spec, rec)) => out.push(Self::status_of(&spec, &rec)),
                Err(RuntimeError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn exec_sync(
        &self,
        id: &ContainerId,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecResult> {
        let target = self.exec_target(&id.0)?;
        let command = command.to_vec();
        tokio::task::spawn_blocking(move || exec::exec_sync(&target, &command, timeout))
            .await
            .map_err(|e| sys("exec", e))?
    }

    async fn exec(&self, id: &ContainerId, request: &ExecRequest) -> Result<ExecSession> {
        let target = self.exec_target(&id.0)?;
        let command = request.command.clone();
        let stdio = ExecStdio {
            stdin: request.stdin,
            stdout: request.stdout,
            stderr: request.stderr,
            tty: request.tty,
        };
        let s = tokio::task::spawn_blocking(move || exec::spawn(&target, &command, stdio))
            .await
            .map_err(|e| sys("exec", e))??;
        Ok(ExecSession {
            pid: s.pid,
            stdin: s.stdin,
            stdout: s.stdout,
            stderr: s.stderr,
            pty: s.pty,
        })
    }

    fn log_path(&self, sandbox: &SandboxId, container: &str, restart_count: u32) -> PathBuf {
        let pod_dir = match self.read_sandbox(&sandbox.0) {
            Ok(s) => self.pod_log_dir(&s.config),
            Err(_) => self
                .pod_log_dirs_of(&sandbox.0)
                .into_iter()
                .next()
                .unwrap_or_else(|| self.config.log_dir.join(format!("_{}", sandbox.0))),
        };
        pod_dir.join(container).join(format!("{restart_count}.log"))
    }

    async fn remove_pod_logs(&self, sandbox: &SandboxId) -> Result<()> {
        check_uid(&sandbox.0)?;
        for d in self.pod_log_dirs_of(&sandbox.0) {
            match fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(sys(format!("removing {}", d.display()), e)),
            }
        }
        Ok(())
    }
}

/// The mount points under `prefix` in this process's mount namespace (tests use it to check
/// that nothing is left mounted).
pub fn mounted_under(prefix: &Path) -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(PathBuf::from))
        .filter(|p| p.starts_with(prefix))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn command_and_args_follow_kubernetes() {
        let img = ImageConfig {
            entrypoint: s(&["/ep"]),
            cmd: s(&["--cmd"]),
            ..Default::default()
        };
        assert_eq!(command_line(&img, &[], &[]), s(&["/ep", "--cmd"]));
        assert_eq!(command_line(&img, &[], &s(&["a"])), s(&["/ep", "a"]));
        assert_eq!(command_line(&img, &s(&["/c"]), &[]), s(&["/c"]));
        assert_eq!(command_line(&img, &s(&["/c"]), &s(&["a"])), s(&["/c", "a"]));
    }

    #[test]
    fn container_env_overrides_the_image() {
        let env = environment(
            &s(&["PATH=/bin", "A=1", "B=2"]),
            &[("A".into(), "x".into()), ("C".into(), "3".into())],
            "pod-a",
        );
        assert_eq!(
            env,
            s(&["PATH=/bin", "A=x", "B=2", "C=3", "HOSTNAME=pod-a"])
        );
        let env = environment(&[], &[], "h");
        assert_eq!(env, s(&[&format!("PATH={DEFAULT_PATH}"), "HOSTNAME=h"]));
    }
}
