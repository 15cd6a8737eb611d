//! cgroups of the process runtime: one cgroup per pod (`<parent>/pod<uid>`) and per container
//! (`<parent>/pod<uid>/<container>`) in every cgroup v1 hierarchy that limits what we set
//! (memory, cpu, cpuacct, pids) and in the unified (v2) hierarchy, where the datapath's socket
//! programs attach at `<unified>/<parent>`.
//!
//! Limits go to v1 files when the controller has a v1 hierarchy (this machine: v1 controllers
//! plus a cgroup2 mount at `/sys/fs/cgroup/unified` with only hugetlb), and to the v2 files
//! (`memory.max`, `cpu.max`, `cpu.weight`, `pids.max`) on a pure cgroup v2 host.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::runtime::{Resources, Result, RuntimeError};

/// The v1 controllers whose hierarchies pods join (`cpuacct` only where it shares `cpu`'s
/// hierarchy: a hierarchy of its own would cost one more migration per process start).
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];
/// The v2 controllers we set limits with (when no v1 hierarchy has them).
const V2_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// The CFS period for CPU limits (as the kubelet: 100 ms).
const CFS_PERIOD_US: u64 = 100_000;
/// How long removal waits for the processes of a cgroup to go.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A mounted hierarchy we place pods in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount: PathBuf,
    /// v1: the controllers of this mount we use (`memory`, `cpu`, ...); v2: the controllers
    /// limits are written with (may be empty: membership only).
    pub controllers: Vec<String>,
    pub v2: bool,
}

/// The cgroup hierarchies of this host and the parent cgroup pods go under.
#[derive(Clone, Debug)]
pub struct Cgroups {
    parent: String,
    hierarchies: Vec<Hierarchy>,
}

fn sys(what: impl std::fmt::Display, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::System(format!("{what}: {e}"))
}

/// `/proc/mounts` escapes spaces and a few other bytes as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (b[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The hierarchies described by a `/proc/mounts` text (pure, for tests).
pub fn hierarchies_from_mounts(
    mounts: &str,
    v2_controllers: &dyn Fn(&Path) -> Vec<String>,
) -> Vec<Hierarchy> {
    let mut v1: Vec<Hierarchy> = Vec::new();
    let mut v2_mounts: Vec<PathBuf> = Vec::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let (target, fstype, opts) = (PathBuf::from(unescape(f[1])), f[2], f[3]);
        match fstype {
            "cgroup" => {
                let controllers: Vec<String> = opts
                    .split(',')
                    .filter(|o| V1_CONTROLLERS.contains(o))
                    .map(str::to_string)
                    .collect();
                if controllers == ["cpuacct"] {
                    continue;
                }
                // The same hierarchy may be mounted twice; keep the first.
                if !controllers.is_empty() && !v1.iter().any(|h| h.controllers == controllers) {
                    v1.push(Hierarchy {
                        mount: target,
                        controllers,
                        v2: false,
                    });
                }
            }
            "cgroup2" => v2_mounts.push(target),
            _ => {}
        }
    }
    v2_mounts.sort_by_key(|p| {
        if p == Path::new("/sys/fs/cgroup") {
            0
        } else if p == Path::new("/sys/fs/cgroup/unified") {
            1
        } else {
            2
        }
    });
    let mut out = v1;
    if let Some(mount) = v2_mounts.into_iter().next() {
        let available = v2_controllers(&mount);
        let controllers = V2_CONTROLLERS
            .iter()
            .filter(|c| available.iter().any(|a| a == *c))
            .filter(|c| !out.iter().any(|h| h.controllers.iter().any(|x| x == *c)))
            .map(|c| c.to_string())
            .collect();
        out.push(Hierarchy {
            mount,
            controllers,
            v2: true,
        });
    }
    out
}

/// Shares from a CPU request, as the kubelet computes them (minimum 2).
pub fn cpu_shares(request_millis: Option<u64>) -> u64 {
    match request_millis {
        Some(m) if m > 0 => (m.saturating_mul(1024) / 1000).max(2),
        _ => 2,
    }
}

/// A CFS quota (µs per 100 ms period) from a CPU limit (minimum 1 ms).
pub fn cfs_quota_us(limit_millis: u64) -> u64 {
    (limit_millis.saturating_mul(CFS_PERIOD_US) / 1000).max(1000)
}

/// cgroup v2 `cpu.weight` from v1 shares (the conversion runc and the kubelet use).
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(|e| sys(format!("writing {value:?} to {}", path.display()), e))
}

/// The pids in a cgroup directory (empty when it is gone).
pub fn procs_in(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Moves a process into each of `dirs` (writes its pid to `cgroup.procs`).
pub fn add_pid(dirs: &[PathBuf], pid: u32) -> Result<()> {
    for d in dirs {
        write(d, "cgroup.procs", &pid.to_string())?;
    }
    Ok(())
}

/// OOM kills recorded in the memory controller of any of `dirs` (v1 `memory.oom_control`, v2
/// `memory.events`), or None when no memory controller is there.
pub fn oom_kills_in(dirs: &[PathBuf]) -> Option<u64> {
    for d in dirs {
        for file in ["memory.oom_control", "memory.events"] {
            if let Ok(text) = fs::read_to_string(d.join(file)) {
                let n = text.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                });
                if n.is_some() {
                    return n;
                }
            }
        }
    }
    None
}

/// Removes one cgroup directory (no children), killing what is left in it. Gone already: Ok.
fn remove_dir(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + REMOVE_TIMEOUT;
    let mut killed = false;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if Instant::now() >= deadline {
                    return Err(sys(
                        format!(
                            "removing cgroup {} (processes left: {:?})",
                            dir.display(),
                            procs_in(dir)
                        ),
                        e,
                    ));
                }
                // Give exiting processes a moment before killing them.
                if killed || deadline - Instant::now() < REMOVE_TIMEOUT - Duration::from_millis(200)
                {
                    if dir.join("cgroup.kill").exists() {
                        let _ = fs::write(dir.join("cgroup.kill"), "1");
                    }
                    for pid in procs_in(dir) {
                        // SAFETY: kill has no memory-safety preconditions.
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    }
                    killed = true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(sys(format!("removing cgroup {}", dir.display()), e)),
        }
    }
}

/// Removes a cgroup directory and its children, deepest first.
fn remove_tree(dir: &Path) -> Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path())?;
            }
        }
    }
    remove_dir(dir)
}

impl Cgroups {
    /// Finds the hierarchies of this host (from `/proc/self/mounts`); pods go under `parent`
    /// (a relative path such as `keel`) in each.
    pub fn detect(parent: &str) -> Result<Cgroups> {
        let parent = parent.trim_matches('/').to_string();
        if parent.is_empty()
            || parent
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(RuntimeError::Invalid(format!(
                "cgroup parent {parent:?}: want a relative path such as `keel`"
            )));
        }
        let mounts =
            fs::read_to_string("/proc/self/mounts").map_err(|e| sys("/proc/self/mounts", e))?;
        let hierarchies = hierarchies_from_mounts(&mounts, &|m: &Path| {
            fs::read_to_string(m.join("cgroup.controllers"))
                .map(|t| t.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        });
        if hierarchies.is_empty() {
            return Err(RuntimeError::System(
                "no cgroup hierarchy is mounted (see /proc/mounts)".into(),
            ));
        }
        Ok(Cgroups {
            parent,
            hierarchies,
        })
    }

    pub fn hierarchies(&self) -> &[Hierarchy] {
        &self.hierarchies
    }

    /// The parent, relative to each hierarchy's root (`keel`).
    pub fn parent(&self) -> &str {
        &self.parent
    }

    /// `<unified mount>/<parent>`: where the datapath's socket programs attach.
    pub fn unified_parent(&self) -> Option<PathBuf> {
        self.hierarchies
            .iter()
            .find(|h| h.v2)
            .map(|h| h.mount.join(&self.parent))
    }

    /// `<parent>/pod<uid>`.
    pub fn pod_path(&self, uid: &str) -> String {
        format!("{}/pod{uid}", self.parent)
    }

    /// `<parent>/pod<uid>/<container>`.
    pub fn container_path(&self, uid: &str, container: &str) -> String {
        format!("{}/pod{uid}/{container}", self.parent)
    }

    /// The directories of a relative cgroup path in every hierarchy.
    pub fn dirs(&self, rel: &str) -> Vec<PathBuf> {
        self.hierarchies.iter().map(|h| h.mount.join(rel)).collect()
    }

    /// Creates the parent cgroup in every hierarchy, without limits of its own (so the pods
    /// as a whole weigh as much as any other cgroup of the node). Idempotent.
    pub fn create_parent(&self) -> Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for h in &self.hierarchies {
            let dir = h.mount.join(&self.parent);
            if h.v2 && !h.controllers.is_empty() {
                self.enable_v2_controllers(h, &self.parent)?;
            }
            fs::create_dir_all(&dir)
                .map_err(|e| sys(format!("creating cgroup {}", dir.display()), e))?;
            dirs.push(dir);
        }
        Ok(dirs)
    }

    /// Creates a cgroup (and its parents) in every hierarchy and sets its limits. Idempotent.
    pub fn create(&self, rel: &str, resources: &Resources) -> Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for h in &self.hierarchies {
            let dir = h.mount.join(rel);
            if h.v2 && !h.controllers.is_empty() {
                self.enable_v2_controllers(h, rel)?;
            }
            fs::create_dir_all(&dir)
                .map_err(|e| sys(format!("creating cgroup {}", dir.display()), e))?;
            apply(h, &dir, resources)?;
            dirs.push(dir);
        }
        Ok(dirs)
    }

    /// On v2, a controller's files exist only when every ancestor delegates it
    /// (`cgroup.subtree_control`).
    fn enable_v2_controllers(&self, h: &Hierarchy, rel: &str) -> Result<()> {
        let enable: String = h
            .controllers
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        let mut cur = h.mount.clone();
        let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        for (i, c) in comps.iter().enumerate() {
            let control = cur.join("cgroup.subtree_control");
            let present = fs::read_to_string(&control).unwrap_or_default();
            if !h
                .controllers
                .iter()
                .all(|c| present.split_whitespace().any(|p| p == c))
            {
                write(&cur, "cgroup.subtree_control", &enable)?;
            }
            cur.push(c);
            if i + 1 < comps.len() {
                fs::create_dir_all(&cur).map_err(|e| sys(cur.display(), e))?;
            }
        }
        Ok(())
    }

    /// Removes a cgroup and its children from every hierarchy, killing the processes left.
    pub fn remove(&self, rel: &str) -> Result<()> {
        let mut first_err = None;
        for dir in self.dirs(rel) {
            if let Err(e) = remove_tree(&dir) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Every pid in the cgroup (and its children) across hierarchies, deduplicated.
    pub fn pids(&self, rel: &str) -> Vec<u32> {
        fn walk(dir: &Path, out: &mut Vec<u32>) {
            out.extend(procs_in(dir));
            if let Ok(entries) = fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        walk(&e.path(), out);
                    }
                }
            }
        }
        let mut out = Vec::new();
        for d in self.dirs(rel) {
            walk(&d, &mut out);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether the cgroup exists in any hierarchy.
    pub fn exists(&self, rel: &str) -> bool {
        self.dirs(rel).iter().any(|d| d.is_dir())
    }

    /// The pod cgroups (`pod<uid>` directory names' uids) found under the parent.
    pub fn pod_uids(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .hierarchies
            .iter()
            .filter_map(|h| fs::read_dir(h.mount.join(&self.parent)).ok())
            .flat_map(|rd| rd.flatten())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("pod")
                    .map(str::to_string)
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Writes the limits a hierarchy is responsible for ("unlimited" for unset ones, so a reused
/// cgroup does not keep old limits).
fn apply(h: &Hierarchy, dir: &Path, r: &Resources) -> Result<()> {
    let has = |c: &str| h.controllers.iter().any(|x| x == c);
    if !h.v2 {
        if has("memory") {
            let v = r
                .memory_limit_bytes
                .map_or("-1".to_string(), |b| b.to_string());
            write(dir, "memory.limit_in_bytes", &v)?;
        }
        if has("cpu") {
            write(
                dir,
                "cpu.shares",
                &cpu_shares(r.cpu_request_millis).to_string(),
            )?;
            write(dir, "cpu.cfs_period_us", &CFS_PERIOD_US.to_string())?;
            let q = r
                .cpu_limit_millis
                .map_or("-1".to_string(), |m| cfs_quota_us(m).to_string());
            write(dir, "cpu.cfs_quota_us", &q)?;
        }
        if has("pids") {
            let v = r.pids_limit.map_or("max".to_string(), |p| p.to_string());
            write(dir, "pids.max", &v)?;
        }
        return Ok(());
    }
    if has("memory") {
        let v = r
            .memory_limit_bytes
            .map_or("max".to_string(), |b| b.to_string());
        write(dir, "memory.max", &v)?;
    }
    if has("cpu") {
        let w = shares_to_weight(cpu_shares(r.cpu_request_millis));
        write(dir, "cpu.weight", &w.to_string())?;
        let q = r
            .cpu_limit_millis
            .map_or("max".to_string(), |m| cfs_quota_us(m).to_string());
        write(dir, "cpu.max", &format!("{q} {CFS_PERIOD_US}"))?;
    }
    if has("pids") {
        let v = r.pids_limit.map_or("max".to_string(), |p| p.to_string());
        write(dir, "pids.max", &v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn hybrid_hosts_limit_with_v1_and_join_v2() {
        let h = hierarchies_from_mounts(HYBRID, &|_| vec!["hugetlb".into()]);
        let names: Vec<(String, Vec<String>, bool)> = h
            .iter()
            .map(|h| (h.mount.display().to_string(), h.controllers.clone(), h.v2))
            .collect();
        assert_eq!(
            names,
            vec![
                ("/sys/fs/cgroup/cpu".into(), vec!["cpu".into()], false),
                ("/sys/fs/cgroup/memory".into(), vec!["memory".into()], false),
                ("/sys/fs/cgroup/pids".into(), vec!["pids".into()], false),
                ("/sys/fs/cgroup/unified".into(), vec![], true),
            ]
        );
    }

    #[test]
    fn pure_v2_hosts_limit_with_v2() {
        let mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n";
        let h = hierarchies_from_mounts(mounts, &|_| {
            ["cpuset", "cpu", "io", "memory", "pids"]
                .map(String::from)
                .to_vec()
        });
        assert_eq!(h.len(), 1);
        assert!(h[0].v2);
        assert_eq!(h[0].controllers, ["memory", "cpu", "pids"]);
    }

    #[test]
    fn combined_cpu_cpuacct_mounts_are_one_hierarchy() {
        let mounts = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n";
        let h = hierarchies_from_mounts(mounts, &|_| vec![]);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].controllers, ["cpu", "cpuacct"]);
    }

    fn applied(v2: bool, r: &Resources) -> Vec<(String, String)> {
        let dir = tempfile::tempdir().unwrap();
        let h = Hierarchy {
            mount: dir.path().to_path_buf(),
            controllers: ["memory", "cpu", "pids"].map(String::from).to_vec(),
            v2,
        };
        apply(&h, dir.path(), r).unwrap();
        let mut out: Vec<(String, String)> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| {
                let v = fs::read_to_string(e.path()).unwrap();
                (e.file_name().to_string_lossy().into_owned(), v)
            })
            .collect();
        out.sort();
        out
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn limits_are_written_in_each_version_s_files() {
        let r = Resources {
            cpu_request_millis: Some(500),
            cpu_limit_millis: Some(1500),
            memory_limit_bytes: Some(1 << 20),
            pids_limit: Some(64),
        };
        assert_eq!(
            applied(false, &r),
            pairs(&[
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "150000"),
                ("cpu.shares", "512"),
                ("memory.limit_in_bytes", "1048576"),
                ("pids.max", "64"),
            ])
        );
        assert_eq!(
            applied(true, &r),
            pairs(&[
                ("cpu.max", "150000 100000"),
                ("cpu.weight", "20"),
                ("memory.max", "1048576"),
                ("pids.max", "64"),
            ])
        );
        // Unset limits are reset (a cgroup reused by a later attempt keeps nothing old).
        assert_eq!(
            applied(true, &Resources::default()),
            pairs(&[
                ("cpu.max", "max 100000"),
                ("cpu.weight", "1"),
                ("memory.max", "max"),
                ("pids.max", "max"),
            ])
        );
    }

    #[test]
    fn cpu_conversions_follow_the_kubelet() {
        assert_eq!(cpu_shares(None), 2);
        assert_eq!(cpu_shares(Some(1)), 2);
        assert_eq!(cpu_shares(Some(250)), 256);
        assert_eq!(cpu_shares(Some(1000)), 1024);
        assert_eq!(cfs_quota_us(500), 50_000);
        assert_eq!(cfs_quota_us(1), 1000);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }
}
