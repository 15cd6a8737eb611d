//! A container's root filesystem, built by its init process inside its own (new) mount
//! namespace, so nothing is ever mounted in the node's namespace and everything goes away with
//! the container: the image layers and the container's upper directory stacked with overlayfs,
//! volumes bind-mounted (read-only where asked), a fresh `/proc`, a small `/dev` (tmpfs with
//! the host's null, zero, full, random, urandom and tty, a private `/dev/pts`, `/dev/shm`),
//! `/sys` read-only; then `pivot_root` into it and the pod's `/etc/hosts`, `/etc/hostname` and
//! `/etc/resolv.conf`.
//!
//! These functions run in the forked container process before `exec`; errors are messages for
//! the shim to report.
use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::container::{ContainerDir, ContainerSpec};

/// Errors of the container-side setup: a message for the container's status.
pub type SetupResult<T> = std::result::Result<T, String>;

/// Device nodes bind-mounted from the host into the container's `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

pub(super) fn cstr(s: impl AsRef<OsStr>) -> SetupResult<CString> {
    CString::new(s.as_ref().as_bytes()).map_err(|_| format!("{:?} contains a NUL byte", s.as_ref()))
}

/// mount(2) with a readable error.
pub(super) fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> SetupResult<()> {
    let src = source.map(cstr).transpose()?;
    let tgt = cstr(target)?;
    let fs = fstype.map(cstr).transpose()?;
    let dat = data.map(cstr).transpose()?;
    // SAFETY: every pointer is either null or a NUL-terminated string that outlives the call.
    let r = unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            tgt.as_ptr(),
            fs.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            dat.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast::<libc::c_void>()),
        )
    };
    if r != 0 {
        return Err(format!(
            "mounting {} on {} ({}): {}",
            source.unwrap_or("-"),
            target.display(),
            fstype.unwrap_or("bind/remount"),
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Escapes a path for an overlayfs option (`\`, `:` and `,` are separators there).
fn overlay_escape(p: &Path) -> String {
    let mut out = String::new();
    for ch in p.to_string_lossy().chars() {
        if matches!(ch, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// The overlayfs mount options for a container.
pub fn overlay_options(lowerdirs: &[PathBuf], upper: &Path, work: &Path) -> SetupResult<String> {
    if lowerdirs.is_empty() {
        return Err("the image has no layers".into());
    }
    let lower: Vec<String> = lowerdirs.iter().map(|p| overlay_escape(p)).collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        overlay_escape(upper),
        overlay_escape(work)
    );
    // The kernel takes at most a page of mount data.
    if opts.len() >= 4096 {
        return Err(format!(
            "overlay options are {} bytes, more than a page: too many layers or too long paths",
            opts.len()
        ));
    }
    Ok(opts)
}

/// Resolves `path` (a container path) under `root` as the container would see it: symlinks are
/// followed relative to `root` and `..` never climbs above it. The result may not exist yet.
pub fn resolve_in_root(root: &Path, path: &str) -> SetupResult<PathBuf> {
    fn parts(p: &Path) -> Vec<OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect()
    }
    let mut todo: VecDeque<OsString> = parts(Path::new(path)).into();
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(p) = todo.pop_front() {
        if p == ".." {
            done.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&done);
        candidate.push(&p);
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(format!(
                        "too many symlinks resolving {path} in the container"
                    ));
                }
                let target = fs::read_link(&candidate)
                    .map_err(|e| format!("reading link {}: {e}", candidate.display()))?;
                if target.is_absolute() {
                    done.clear();
                }
                for (i, t) in parts(&target).into_iter().enumerate() {
                    todo.insert(i, t);
                }
            }
            _ => done.push(p),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&done);
    Ok(out)
}

fn mkdir_all(p: &Path, mode: u32) -> SetupResult<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(p)
        .map_err(|e| format!("creating {}: {e}", p.display()))
}

/// Creates an empty file to bind a file onto (and its parents).
fn touch(p: &Path) -> SetupResult<()> {
    if let Some(parent) = p.parent() {
        mkdir_all(parent, 0o755)?;
    }
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => Err(format!("{} is a directory", p.display())),
        Ok(_) => Ok(()),
        Err(_) => fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(p)
            .map(drop)
            .map_err(|e| format!("creating {}: {e}", p.display())),
    }
}

/// Bind-mounts a host file or directory at a container path (read-only when asked).
fn bind(root: &Path, source: &Path, container_path: &str, read_only: bool) -> SetupResult<()> {
    let meta =
        fs::metadata(source).map_err(|e| format!("volume source {}: {e}", source.display()))?;
    let target = resolve_in_root(root, container_path)?;
    if target == root {
        return Err(format!(
            "cannot mount a volume over the container's root ({container_path})"
        ));
    }
    if meta.is_dir() {
        mkdir_all(&target, 0o755)?;
    } else {
        touch(&target)?;
    }
    let src = source.to_string_lossy();
    mount(
        Some(&src),
        &target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    if read_only {
        mount(
            None,
            &target,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}

fn setup_dev(root: &Path) -> SetupResult<()> {
    let dev = resolve_in_root(root, "/dev")?;
    mkdir_all(&dev, 0o755)?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let node = dev.join(name);
        touch(&node)?;
        mount(
            Some(&host.to_string_lossy()),
            &node,
            None,
            libc::MS_BIND,
            None,
        )?;
    }
    let pts = dev.join("pts");
    mkdir_all(&pts, 0o755)?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let shm = dev.join("shm");
    mkdir_all(&shm, 0o1777)?;
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    let mqueue = dev.join("mqueue");
    if mkdir_all(&mqueue, 0o755).is_ok() {
        // Best effort: the container's own IPC namespace's message queues.
        let _ = mount(
            Some("mqueue"),
            &mqueue,
            Some("mqueue"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        );
    }
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .map_err(|e| format!("creating /dev/{link}: {e}"))?;
    }
    Ok(())
}

/// Builds the root filesystem at `dir.rootfs()` and pivots into it. Runs in the container's
/// init process, after it has its own mount namespace.
pub fn setup(spec: &ContainerSpec, dir: &ContainerDir) -> SetupResult<()> {
    // Nothing we mount may propagate back to the node.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    let root = dir.rootfs();
    mkdir_all(&root, 0o755)?;
    let opts = overlay_options(&spec.lowerdirs, &dir.upper(), &dir.work())?;
    // `volatile`: no sync of the upper file system when the container's namespace goes away,
    // which would otherwise cost up to seconds per container stop on a busy disk. An upper
    // directory is used for one attempt only, so losing it in a host crash costs nothing.
    if mount(
        Some("overlay"),
        &root,
        Some("overlay"),
        0,
        Some(&format!("{opts},volatile")),
    )
    .is_err()
    {
        mount(Some("overlay"), &root, Some("overlay"), 0, Some(&opts))?;
    }
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", root.display()))?;

    let proc_dir = resolve_in_root(&root, "/proc")?;
    mkdir_all(&proc_dir, 0o555)?;
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    setup_dev(&root)?;
    let sys = resolve_in_root(&root, "/sys")?;
    mkdir_all(&sys, 0o555)?;
    let ro = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if mount(Some("sysfs"), &sys, Some("sysfs"), ro, None).is_err() {
        // Some setups refuse a fresh sysfs; a read-only view of the node's is the fallback.
        mount(Some("/sys"), &sys, None, libc::MS_BIND | libc::MS_REC, None)?;
        mount(
            None,
            &sys,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | ro,
            None,
        )?;
    }
    for m in &spec.mounts {
        bind(&root, &m.host_path, &m.container_path, m.read_only)?;
    }
    pivot_root(&root)
}

/// Makes `root` the process's `/` and detaches the old root (runc's `pivot_root(".", ".")`).
fn pivot_root(root: &Path) -> SetupResult<()> {
    std::env::set_current_dir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    let dot = cstr(".")?;
    // SAFETY: valid NUL-terminated paths; pivot_root has no other memory preconditions.
    if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } != 0 {
        return Err(format!("pivot_root: {}", io::Error::last_os_error()));
    }
    // SAFETY: as above; the old root is stacked on "." now and is detached lazily.
    if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(format!(
            "detaching the old root: {}",
            io::Error::last_os_error()
        ));
    }
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))
}

/// `/etc/hosts` of a pod (as the kubelet writes it).
pub fn hosts_file(spec: &ContainerSpec) -> String {
    let mut s = String::from(
        "# Kubernetes-managed hosts file (keel).\n127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = spec.pod_ip {
        s.push_str(&format!("{ip}\t{}\n", spec.hostname));
    }
    s
}

/// Writes the pod's `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`. Runs after
/// `pivot_root` (paths resolve in the container). A read-only `/etc` (a volume) is left alone.
pub fn write_etc(spec: &ContainerSpec) {
    let _ = mkdir_all(Path::new("/etc"), 0o755);
    for (path, content) in [
        ("/etc/hosts", hosts_file(spec)),
        ("/etc/hostname", format!("{}\n", spec.hostname)),
        ("/etc/resolv.conf", spec.resolv_conf.clone()),
    ] {
        // A dangling symlink (e.g. to systemd-resolved's file) is replaced by a file.
        if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
            && fs::metadata(path).is_err()
        {
            let _ = fs::remove_file(path);
        }
        if let Err(e) = fs::write(path, content) {
            eprintln!("keel shim: writing {path} in the container: {e}");
        }
    }
}

/// Creates the working directory if missing (as runc does) and enters it.
pub fn enter_working_dir(cwd: &str) -> SetupResult<()> {
    let p = Path::new(if cwd.is_empty() { "/" } else { cwd });
    if std::env::set_current_dir(p).is_ok() {
        return Ok(());
    }
    mkdir_all(p, 0o755)?;
    std::env::set_current_dir(p).map_err(|e| format!("chdir to the working directory {cwd}: {e}"))
}

/// Finds the executable for `argv0` in `path` (`$PATH` of the container), as execvp would.
pub fn find_executable(argv0: &str, path: &str) -> SetupResult<PathBuf> {
    if argv0.contains('/') {
        return Ok(PathBuf::from(argv0));
    }
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(argv0);
        if let Ok(m) = fs::metadata(&candidate)
            && m.is_file()
            && m.permissions().mode() & 0o111 != 0
        {
            return Ok(candidate);
        }
    }
    Err(format!(
        "exec: {argv0:?}: executable file not found in $PATH"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths_never_escape_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("a/b")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("a/abs")).unwrap();
        std::os::unix::fs::symlink("../../..", r.join("a/b/up")).unwrap();
        std::os::unix::fs::symlink("b", r.join("a/rel")).unwrap();
        assert_eq!(resolve_in_root(r, "/a/b/c").unwrap(), r.join("a/b/c"));
        assert_eq!(resolve_in_root(r, "/a/abs/x").unwrap(), r.join("etc/x"));
        assert_eq!(resolve_in_root(r, "/a/b/up/etc").unwrap(), r.join("etc"));
        assert_eq!(resolve_in_root(r, "../../x").unwrap(), r.join("x"));
        assert_eq!(resolve_in_root(r, "/a/rel/d").unwrap(), r.join("a/b/d"));
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert!(resolve_in_root(r, "/loop/x").is_err());
    }

    #[test]
    fn overlay_options_escape_separators() {
        let o = overlay_options(
            &[PathBuf::from("/l/top"), PathBuf::from("/l/a:b")],
            Path::new("/c/up,per"),
            Path::new("/c/work"),
        )
        .unwrap();
        assert_eq!(
            o,
            "lowerdir=/l/top:/l/a\\:b,upperdir=/c/up\\,per,workdir=/c/work"
        );
    }
}
