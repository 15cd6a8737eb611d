//! A throw-away cgroup v2 directory: where Keel's socket-level programs attach, and where the
//! processes they should see are placed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{is_stale_name, unique_name};

/// Mount point of the cgroup v2 hierarchy, from `/proc/mounts`: `/sys/fs/cgroup` on pure-v2
/// hosts, `/sys/fs/cgroup/unified` on hybrid ones.
pub fn v2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
        })
        .collect();
    // Prefer the conventional locations when several are mounted.
    found.sort_by_key(|p| {
        if p == Path::new("/sys/fs/cgroup") {
            0
        } else if p == Path::new("/sys/fs/cgroup/unified") {
            1
        } else {
            2
        }
    });
    found
        .into_iter()
        .next()
        .context("no cgroup2 file system is mounted (see /proc/mounts)")
}

/// `/proc/mounts` escapes spaces and a few other bytes as `\ooo`.
fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A cgroup v2 directory created for one test or benchmark; its processes are killed and the
/// directory removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `<cgroup2 root>/keel-<pid>-<n>`.
    pub fn create() -> Result<Cgroup> {
        let path = v2_root()?.join(unique_name());
        std::fs::create_dir(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Cgroup { path })
    }

    /// The cgroup's directory (what `Datapath::attach_cgroup` takes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `cgroup.procs` file: writing a pid (or "0" for the writer) moves a process here.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Pids currently in the cgroup.
    pub fn procs(&self) -> Result<Vec<u32>> {
        read_procs(&self.path)
    }

    /// Kills every process in the cgroup (SIGKILL) and waits, up to two seconds, until it is empty.
    pub fn kill_all(&self) -> Result<()> {
        kill_all(&self.path)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = remove(&self.path) {
            eprintln!("warning: cleanup: {e:#}");
        }
    }
}

fn read_procs(dir: &Path) -> Result<Vec<u32>> {
    let file = dir.join("cgroup.procs");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

fn kill_all(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let kill_file = dir.join("cgroup.kill");
    loop {
        let procs = read_procs(dir)?;
        if procs.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "processes {procs:?} still in {} after SIGKILL",
                dir.display()
            );
        }
        // cgroup.kill (Linux 5.14+) also catches processes forking meanwhile.
        if std::fs::write(&kill_file, "1").is_err() {
            for pid in procs {
                if let Ok(pid) = libc::pid_t::try_from(pid) {
                    // SAFETY: kill has no memory-safety preconditions; a stale pid fails with ESRCH.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn remove(dir: &Path) -> Result<()> {
    kill_all(dir)?;
    // rmdir can fail with EBUSY briefly while killed tasks are being reaped.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).with_context(|| format!("removing cgroup {}", dir.display())),
        }
    }
}

/// Removes cgroups left behind by killed runs (named `keel-<pid>-…` with `<pid>` gone), killing
/// their processes. Returns how many were removed.
pub fn sweep_stale() -> usize {
    let Ok(root) = v2_root() else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(&root) else {
        return 0;
    };
    entries
        .flatten()
        .take(10_000)
        .filter(|e| is_stale_name(&e.file_name().to_string_lossy()))
        .filter(|e| remove(&e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mount_paths() {
        assert_eq!(unescape_mount_path("/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
        assert_eq!(unescape_mount_path("/a\\"), "/a\\");
    }
}
