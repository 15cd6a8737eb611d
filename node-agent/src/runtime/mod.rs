//! The container runtime interface the agent drives, shaped after the CRI (RunPodSandbox,
//! CreateContainer, StartContainer, StopContainer, RemoveContainer, ContainerStatus,
//! ListContainers, Exec) so a CRI/containerd implementation can sit behind it later.
//!
//! - [`process`]: the default, embedded process runtime: a pod sandbox is a network namespace
//!   with a veth to the node (netlink), containers are processes in their own PID, mount, UTS
//!   and IPC namespaces sharing it, with the root filesystem of a local OCI image and cgroup
//!   limits.
//!
//! Every runtime keeps its own state on disk so a restarted agent finds (and adopts) what it
//! left running: `list_sandboxes` and `list_containers` report it.
pub mod process;
pub mod types;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

pub use types::*;

/// Errors of a runtime call.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image is not in the local image store (`ErrImagePull`).
    #[error(
        "image {image} not found in the local image store {store}: build it with `cargo xtask images` or import it"
    )]
    ImageNotFound { image: String, store: String },
    /// The sandbox or container does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request cannot be carried out as given (bad command, bad volume, ...).
    #[error("{0}")]
    Invalid(String),
    /// The system refused (netlink, mount, cgroup, exec failures).
    #[error("{0}")]
    System(String),
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

impl From<std::io::Error> for RuntimeError {
    fn from(e: std::io::Error) -> Self {
        RuntimeError::System(e.to_string())
    }
}

/// A container runtime.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// The runtime's name and version (Node `status.nodeInfo.containerRuntimeVersion`,
    /// e.g. `keel-process://0.1.0`).
    fn version(&self) -> String;

    /// Creates a pod sandbox: its network namespace, veth, address and routes. Idempotent for
    /// the same `config.uid` (returns the existing sandbox).
    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<SandboxStatus>;

    /// Stops every container of the sandbox (SIGKILL) and tears its network down.
    async fn stop_sandbox(&self, id: &SandboxId) -> Result<()>;

    /// Removes a stopped sandbox and everything it owns on disk (logs excepted: they go with
    /// the pod's log directory, see [`Runtime::remove_pod_logs`]).
    async fn remove_sandbox(&self, id: &SandboxId) -> Result<()>;

    async fn sandbox_status(&self, id: &SandboxId) -> Result<SandboxStatus>;

    /// Every sandbox this runtime knows (after a restart too).
    async fn list_sandboxes(&self) -> Result<Vec<SandboxStatus>>;

    /// Prepares a container (image root filesystem, mounts, cgroup) without starting it.
    async fn create_container(
        &self,
        sandbox: &SandboxId,
        config: &ContainerConfig,
    ) -> Result<ContainerId>;

    /// Starts a created container's process.
    async fn start_container(&self, id: &ContainerId) -> Result<()>;

    /// Stops a container: SIGTERM, then SIGKILL after `grace`.
    async fn stop_container(&self, id: &ContainerId, grace: Duration) -> Result<()>;

    /// Removes a stopped container (its root filesystem, cgroup and state; the log stays).
    async fn remove_container(&self, id: &ContainerId) -> Result<()>;

    async fn container_status(&self, id: &ContainerId) -> Result<ContainerStatus>;

    /// Every container of a sandbox (or of all sandboxes), including exited ones.
    async fn list_containers(&self, sandbox: Option<&SandboxId>) -> Result<Vec<ContainerStatus>>;

    /// Runs a command in a running container's namespaces and root filesystem, to completion
    /// (exec probes, preStop hooks). Each output stream is truncated to 1 MiB.
    async fn exec_sync(
        &self,
        id: &ContainerId,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecResult>;

    /// Starts an interactive command in a running container (`kubectl exec`): the returned
    /// process has its stdio connected to the session's pipes or to a terminal.
    async fn exec(&self, id: &ContainerId, request: &ExecRequest) -> Result<ExecSession>;

    /// The file a container's stdout and stderr go to, in the CRI log format
    /// (`<RFC3339Nano> <stream> <F|P> <line>`), per attempt (`restart_count`).
    fn log_path(&self, sandbox: &SandboxId, container: &str, restart_count: u32) -> PathBuf;

    /// Removes a pod's log directory.
    async fn remove_pod_logs(&self, sandbox: &SandboxId) -> Result<()>;
}
