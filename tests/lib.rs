//! Keel's test infrastructure: privileged fixtures shared by the integration tests and the
//! datapath benchmark (`keel-bench`).
//!
//! Layout:
//! - [`privilege`]: skip privileged tests cleanly when not running as root.
//! - [`netns`]: network namespaces, the routed pod/node/outside [`netns::Topology`], and
//!   [`netns::run_in_netns`] to run code with the calling thread inside a namespace.
//! - [`cgroup`]: a throw-away cgroup v2 directory (where Keel's socket programs attach).
//! - [`process`]: child processes started inside a namespace (and optionally a cgroup),
//!   killed when their handle drops, with bounded waits and line-by-line output.
//! - [`servers`]: drives the `keel-testsrv` binary (a tiny TCP/UDP/HTTP server and client that
//!   answer with a name, so tests can tell which backend served them).
//! - [`etcd`]: a private etcd on free loopback ports, for the etcd store's tests and benchmarks.
//! - [`api_client`]: keel-control started in-process (embedded store or etcd) and an HTTPS
//!   client for its API (the API tests and `keel-bench-api`).
//! - [`hollow`]: hollow nodes (kubemark-style fake kubelets over the API) for controller and
//!   scheduler tests and `keel-bench-sched`.
//!
//! Every fixture removes what it created when dropped, panics included. Names carry the process
//! id, so tests run in parallel and leftovers of a killed run can be swept (`sweep_stale`).

pub mod api_client;
pub mod cgroup;
pub mod etcd;
pub mod hollow;
pub mod netns;
pub mod privilege;
pub mod process;
pub mod servers;

/// Prefix of every kernel object name (namespaces, cgroups) these fixtures create.
pub const NAME_PREFIX: &str = "keel-";

use std::sync::atomic::{AtomicU32, Ordering};

/// A name unique to this process and call: `keel-<pid>-<n>`.
pub(crate) fn unique_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{NAME_PREFIX}{}-{n}", std::process::id())
}

/// For a name made by [`unique_name`] (possibly with a suffix): true when the process that made
/// it is gone, so the object is a leftover of a killed run.
pub(crate) fn is_stale_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
        return false;
    };
    let Some((pid, _)) = rest.split_once('-') else {
        return false;
    };
    match pid.parse::<u32>() {
        Ok(pid) => {
            pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        }
        Err(_) => false,
    }
}
