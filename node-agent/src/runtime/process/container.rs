//! A container of the process runtime on disk: `<root_dir>/containers/<id>/` holds what the
//! shim runs (`spec.json`, written once by the runtime), what happened to it (`state.json`,
//! written by the runtime at creation and by the shim afterwards), the overlay's `upper/` and
//! `work/` directories, the `rootfs/` mount point and the shim's own log (`shim.log`).
use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::runtime::{ContainerState, Mount, Resources, Result, RuntimeError};

/// Everything the shim needs to start a container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub id: String,
    /// The sandbox (pod uid).
    pub sandbox: String,
    /// The container's name in the pod.
    pub name: String,
    pub image: String,
    /// The image's config digest.
    pub image_id: String,
    pub restart_count: u32,
    pub created_at: SystemTime,
    pub labels: BTreeMap<String, String>,
    /// Unpacked image layers, top-most first (overlayfs `lowerdir` order).
    pub lowerdirs: Vec<PathBuf>,
    /// The resolved command line (entrypoint/cmd/command/args already combined).
    pub argv: Vec<String>,
    /// `KEY=value`, image env first then the container's (later entries win).
    pub env: Vec<String>,
    /// Working directory in the container.
    pub cwd: String,
    pub hostname: String,
    pub pod_ip: Option<Ipv4Addr>,
    /// The pod's network namespace file.
    pub netns: PathBuf,
    pub mounts: Vec<Mount>,
    /// The container's cgroup directories (one per hierarchy).
    pub cgroup_dirs: Vec<PathBuf>,
    /// The CRI log file.
    pub log_path: PathBuf,
    /// Content of the container's `/etc/resolv.conf`.
    pub resolv_conf: String,
    pub resources: Resources,
}

/// What happened to a container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub state: ContainerState,
    /// The container's init process (host pid) and its start time (clock ticks since boot,
    /// from `/proc/<pid>/stat`), which tells it from a later process with the same pid.
    pub pid: Option<u32>,
    pub pid_start: Option<u64>,
    /// The shim monitoring it.
    pub shim_pid: Option<u32>,
    pub shim_start: Option<u64>,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub message: Option<String>,
    /// The cgroup's OOM-kill counter when the container started (a later increase means the
    /// container was OOM-killed).
    pub oom_kills_at_start: Option<u64>,
}

impl ContainerRecord {
    pub fn created() -> ContainerRecord {
        ContainerRecord {
            state: ContainerState::Created,
            pid: None,
            pid_start: None,
            shim_pid: None,
            shim_start: None,
            started_at: None,
            finished_at: None,
            exit_code: None,
            reason: None,
            message: None,
            oom_kills_at_start: None,
        }
    }
}

/// The files of one container.
#[derive(Clone, Debug)]
pub struct ContainerDir {
    pub path: PathBuf,
}

impl ContainerDir {
    pub fn new(path: impl Into<PathBuf>) -> ContainerDir {
        ContainerDir { path: path.into() }
    }
    pub fn spec_file(&self) -> PathBuf {
        self.path.join("spec.json")
    }
    pub fn state_file(&self) -> PathBuf {
        self.path.join("state.json")
    }
    pub fn upper(&self) -> PathBuf {
        self.path.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.path.join("work")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.path.join("rootfs")
    }
    pub fn shim_log(&self) -> PathBuf {
        self.path.join("shim.log")
    }

    pub fn read_spec(&self) -> Result<ContainerSpec> {
        read_json(&self.spec_file())
    }
    pub fn read_state(&self) -> Result<ContainerRecord> {
        read_json(&self.state_file())
    }
    pub fn write_spec(&self, spec: &ContainerSpec) -> Result<()> {
        write_json(&self.spec_file(), spec)
    }
    pub fn write_state(&self, state: &ContainerRecord) -> Result<()> {
        write_json(&self.state_file(), state)
    }
}

/// Reads a JSON file; a missing file is `NotFound`.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            RuntimeError::NotFound(path.display().to_string())
        } else {
            RuntimeError::System(format!("reading {}: {e}", path.display()))
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| RuntimeError::System(format!("{} is corrupt: {e}", path.display())))
}

/// Writes a JSON file atomically (temp file, rename).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| RuntimeError::System(format!("encoding {}: {e}", path.display())))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        // No fsync: it costs tens to hundreds of milliseconds on a busy disk, on the path of
        // every start and stop; ext4 flushes a file renamed over another before the rename.
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        RuntimeError::System(format!("writing {}: {e}", path.display()))
    })
}

/// The start time of a process (field 22 of `/proc/<pid>/stat`), None when it is gone or a
/// zombie.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether `pid` is alive and still the process that started at `start`.
pub fn same_process(pid: Option<u32>, start: Option<u64>) -> bool {
    match (pid, start) {
        (Some(p), Some(s)) => proc_start_time(p) == Some(s),
        (Some(p), None) => proc_start_time(p).is_some(),
        _ => false,
    }
}

/// RFC 3339 UTC timestamp with nanoseconds (`2026-11-24T01:02:03.000000004Z`), the CRI log
/// format's first field.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Container id of an attempt: `<sandbox>-<name>-<attempt>`.
pub fn container_id(sandbox: &str, name: &str, attempt: u32) -> String {
    format!("{sandbox}-{name}-{attempt}")
}

/// Whether a container name is safe as a path component and cgroup name (a DNS label, as
/// Kubernetes requires).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
        && !name.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc_with_nanoseconds() {
        let t = UNIX_EPOCH + Duration::new(1_795_000_000, 5);
        assert_eq!(rfc3339_nano(t), "2026-11-18T11:06:40.000000005Z");
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_nano(leap), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn our_own_start_time_is_readable() {
        let me = std::process::id();
        let start = proc_start_time(me);
        assert!(start.is_some());
        assert!(same_process(Some(me), start));
        assert!(!same_process(Some(me), start.map(|s| s + 1)));
    }
}
