//! The runtime interface's data: what the agent asks for, what the runtime reports.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// A sandbox id (the pod's uid).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SandboxId(pub String);

/// A container id (`<sandbox id>-<container name>-<attempt>`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContainerId(pub String);

impl std::fmt::Display for SandboxId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for ContainerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a pod sandbox is made from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxConfig {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// The pod's hostname (its name, or `spec.hostname`).
    pub hostname: String,
    /// Pod labels and annotations (kept with the sandbox for adoption and listing).
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Pod-level cgroup limits (sum of the containers'), if any.
    pub resources: Resources,
    /// `spec.hostNetwork`: the pod shares the node's network namespace (no netns, veth or
    /// address of its own).
    #[serde(default)]
    pub host_network: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    Ready,
    NotReady,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxStatus {
    pub id: SandboxId,
    pub config: SandboxConfig,
    pub state: SandboxState,
    /// The pod's address.
    pub ip: Option<Ipv4Addr>,
    /// The network namespace path (e.g. `/run/keel/netns/<uid>`).
    pub netns: PathBuf,
    /// The host side of the pod's veth (e.g. `keel1a2b3c4d`).
    pub host_veth: Option<String>,
    pub created_at: SystemTime,
}

/// cgroup limits. `None`: unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU requests in millicores (→ cpu.shares / cpu.weight).
    pub cpu_request_millis: Option<u64>,
    /// CPU limit in millicores (→ cfs quota over a 100 ms period).
    pub cpu_limit_millis: Option<u64>,
    /// Memory limit in bytes.
    pub memory_limit_bytes: Option<u64>,
    /// Maximum number of processes.
    pub pids_limit: Option<u64>,
}

/// A mount into a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path on the node (an emptyDir, hostPath, or a projected configMap/secret dir).
    pub host_path: PathBuf,
    /// Absolute path in the container.
    pub container_path: String,
    pub read_only: bool,
}

/// What a container is made from (the agent resolves env sources, volumes and the command).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// The container's name in the pod.
    pub name: String,
    /// The image reference (e.g. `keel.local/echo:latest`).
    pub image: String,
    /// `command` (overrides the image's entrypoint when non-empty).
    pub command: Vec<String>,
    /// `args` (overrides the image's cmd when non-empty).
    pub args: Vec<String>,
    /// Environment, resolved (ConfigMap/Secret/downward API sources already read).
    pub env: Vec<(String, String)>,
    /// `workingDir` (the image's when empty).
    pub working_dir: Option<String>,
    pub mounts: Vec<Mount>,
    pub resources: Resources,
    /// `stdin`/`tty` of the container spec.
    pub stdin: bool,
    pub tty: bool,
    /// Which attempt this is (0 for the first start); names the log file.
    pub restart_count: u32,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub id: ContainerId,
    pub sandbox: SandboxId,
    pub name: String,
    pub image: String,
    /// The image's digest (`sha256:...`), for `imageID`.
    pub image_id: String,
    pub state: ContainerState,
    pub restart_count: u32,
    pub pid: Option<u32>,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub exit_code: Option<i32>,
    /// `Completed`, `Error`, `OOMKilled`, ... for an exited container.
    pub reason: Option<String>,
    pub message: Option<String>,
    pub log_path: PathBuf,
}

#[derive(Clone, Debug)]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct ExecRequest {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A running `kubectl exec` process: its pid and its stdio (a pty master when `tty`).
pub struct ExecSession {
    pub pid: u32,
    /// Write end of the process's stdin (or the pty master), if stdin was asked for.
    pub stdin: Option<std::fs::File>,
    /// Read end of stdout (or the pty master, which carries both streams).
    pub stdout: Option<std::fs::File>,
    /// Read end of stderr (None with a tty).
    pub stderr: Option<std::fs::File>,
    /// The pty master for resizes (`TIOCSWINSZ`), with a tty.
    pub pty: Option<std::fs::File>,
}
