//! Running a command inside a running container (exec probes, preStop hooks, `kubectl exec`).
//!
//! A dedicated thread unshares its filesystem attributes (`CLONE_FS`), joins the container's
//! IPC, UTS, network, PID and mount namespaces (`setns` on `/proc/<pid>/ns/*`), and forks: the
//! child lands in the container's PID namespace and root filesystem, moves itself into the
//! container's cgroups, and execs the command with the container's environment and working
//! directory. The thread ends right after, so no thread of the agent stays in a container.
//! The command's process is a child of the agent: whoever holds it reaps it ([`wait`]).
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::rootfs;
use super::shim::{env_path, pipe};
use crate::runtime::{ExecResult, Result, RuntimeError};

/// Each output stream of [`exec_sync`] keeps at most this much.
pub const MAX_OUTPUT: usize = 1024 * 1024;

/// The container an exec runs in.
#[derive(Clone, Debug)]
pub struct ExecTarget {
    /// The container's init (host pid).
    pub pid: u32,
    /// `KEY=value`.
    pub env: Vec<String>,
    pub cwd: String,
    pub cgroup_dirs: Vec<PathBuf>,
}

/// How the command's standard descriptors are connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecStdio {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// One terminal for all three (the pty master is returned).
    pub tty: bool,
}

/// A started command: its pid and the agent's ends of its stdio.
#[derive(Debug)]
pub struct Spawned {
    pub pid: u32,
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
    /// The pty master (tty mode): stdin, stdout and resizes all go through it.
    pub pty: Option<File>,
}

fn sys(what: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::System(format!("{what}: {e}"))
}

fn os_err(what: &str) -> RuntimeError {
    sys(what, io::Error::last_os_error())
}

fn devnull(write: bool) -> Result<OwnedFd> {
    let f = OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map_err(|e| sys("/dev/null", e))?;
    Ok(f.into())
}

fn openpty() -> Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two ints; the name, termios and winsize pointers may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(os_err("openpty"));
    }
    // SAFETY: both descriptors were just opened and are owned by nobody else.
    let (m, s) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&m, &s] {
        // SAFETY: setting FD_CLOEXEC on an open descriptor.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok((m, s))
}

/// Starts `argv` in the container. Blocking (a short-lived thread does the namespace work).
pub fn spawn(target: &ExecTarget, argv: &[String], stdio: ExecStdio) -> Result<Spawned> {
    if argv.is_empty() {
        return Err(RuntimeError::Invalid("exec: empty command".into()));
    }
    let mut env = target.env.clone();
    if stdio.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    // The child's ends and the agent's ends of its stdio.
    let mut ours = Spawned {
        pid: 0,
        stdin: None,
        stdout: None,
        stderr: None,
        pty: None,
    };
    let plan = if stdio.tty {
        None
    } else {
        let pipe_err = |e: String| RuntimeError::System(e);
        let cin = if stdio.stdin {
            let (r, w) = pipe().map_err(pipe_err)?;
            ours.stdin = Some(File::from(w));
            r
        } else {
            devnull(false)?
        };
        let cout = if stdio.stdout {
            let (r, w) = pipe().map_err(pipe_err)?;
            ours.stdout = Some(File::from(r));
            w
        } else {
            devnull(true)?
        };
        let cerr = if stdio.stderr {
            let (r, w) = pipe().map_err(pipe_err)?;
            ours.stderr = Some(File::from(r));
            w
        } else {
            devnull(true)?
        };
        Some([cin, cout, cerr])
    };
    let target = target.clone();
    let argv = argv.to_vec();
    let (pid, master) = std::thread::Builder::new()
        .name("keel-exec".into())
        .spawn(move || enter_and_fork(&target, &argv, &env, plan))
        .map_err(|e| sys("starting the exec thread", e))?
        .join()
        .map_err(|_| RuntimeError::System("the exec thread panicked".into()))??;
    if let Some(master) = master {
        let m = File::from(master);
        let clone = |f: &File| f.try_clone().map_err(|e| sys("dup pty", e));
        if stdio.stdin {
            ours.stdin = Some(clone(&m)?);
        }
        ours.stdout = Some(clone(&m)?);
        ours.pty = Some(m);
    }
    ours.pid = pid;
    Ok(ours)
}

/// Runs on its own thread: joins the container and forks the command. `stdio`: the child's
/// descriptors, or None for a terminal, allocated in the container's own `/dev/pts` (so the
/// command's `tty` names it). Returns the pid and, with a terminal, its master side.
fn enter_and_fork(
    target: &ExecTarget,
    argv: &[String],
    env: &[String],
    stdio: Option<[OwnedFd; 3]>,
) -> Result<(u32, Option<OwnedFd>)> {
    let ns_dir = PathBuf::from(format!("/proc/{}/ns", target.pid));
    let mut namespaces = Vec::new();
    for (name, flag) in [
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("net", libc::CLONE_NEWNET),
        ("pid", libc::CLONE_NEWPID),
        ("mnt", libc::CLONE_NEWNS),
    ] {
        let f = File::open(ns_dir.join(name))
            .map_err(|e| sys(&format!("opening {}/{name}", ns_dir.display()), e))?;
        namespaces.push((name, flag, f));
    }
    // Opened in the node's mount namespace; the child writes "0" (itself) to each.
    let mut cgroup_procs = Vec::new();
    for d in &target.cgroup_dirs {
        let p = d.join("cgroup.procs");
        let f = OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(|e| sys(&format!("opening {}", p.display()), e))?;
        cgroup_procs.push(f);
    }
    // SAFETY: unshare/setns only change this thread's attributes; the fds are open.
    unsafe {
        if libc::unshare(libc::CLONE_FS) != 0 {
            return Err(os_err("unshare(CLONE_FS)"));
        }
        for (name, flag, f) in &namespaces {
            if libc::setns(f.as_raw_fd(), *flag) != 0 {
                return Err(os_err(&format!("joining the container's {name} namespace")));
            }
        }
    }
    // Now in the container's root: resolve the command there.
    let ctty = stdio.is_none();
    let (stdio, master) = match stdio {
        Some(fds) => (fds, None),
        None => {
            let (master, slave) = openpty()?;
            let s2 = slave.try_clone().map_err(|e| sys("dup pty", e))?;
            let s3 = slave.try_clone().map_err(|e| sys("dup pty", e))?;
            ([slave, s2, s3], Some(master))
        }
    };
    let path = rootfs::find_executable(&argv[0], env_path(env)).map_err(RuntimeError::Invalid)?;
    let cstr = |s: &str| {
        CString::new(s).map_err(|_| RuntimeError::Invalid(format!("{s:?} contains a NUL byte")))
    };
    let c_path = cstr(&path.to_string_lossy())?;
    let c_argv: Vec<CString> = argv.iter().map(|a| cstr(a)).collect::<Result<_>>()?;
    let c_env: Vec<CString> = env.iter().map(|e| cstr(e)).collect::<Result<_>>()?;
    let c_cwd = cstr(if target.cwd.is_empty() {
        "/"
    } else {
        &target.cwd
    })?;
    let mut argv_p: Vec<*const libc::c_char> = c_argv.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = c_env.iter().map(|c| c.as_ptr()).collect();
    env_p.push(std::ptr::null());
    let cg_fds: Vec<RawFd> = cgroup_procs.iter().map(|f| f.as_raw_fd()).collect();
    let (err_r, err_w) = pipe().map_err(RuntimeError::System)?;
    let raw = [
        stdio[0].as_raw_fd(),
        stdio[1].as_raw_fd(),
        stdio[2].as_raw_fd(),
    ];
    // SAFETY: the agent is multi-threaded, so between fork and exec the child only makes
    // async-signal-safe calls (write, setsid, ioctl, dup2, chdir, signal, sigprocmask,
    // syscall, execve, _exit) on data prepared above; it allocates nothing.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return Err(os_err("fork"));
    }
    if pid == 0 {
        // SAFETY: see above; every pointer refers to memory prepared before the fork.
        unsafe {
            let fail = |step: u8| -> ! {
                let errno = *libc::__errno_location();
                let msg = [step, (errno & 0xff) as u8, ((errno >> 8) & 0xff) as u8];
                libc::write(err_w.as_raw_fd(), msg.as_ptr().cast(), 3);
                libc::_exit(127)
            };
            for fd in &cg_fds {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    fail(1);
                }
            }
            if ctty {
                libc::setsid();
                if libc::ioctl(raw[0], libc::TIOCSCTTY, 0) != 0 {
                    fail(2);
                }
            }
            if libc::dup2(raw[0], 0) < 0 || libc::dup2(raw[1], 1) < 0 || libc::dup2(raw[2], 2) < 0 {
                fail(3);
            }
            if libc::chdir(c_cwd.as_ptr()) != 0 {
                libc::chdir(c"/".as_ptr());
            }
            for s in 1..32 {
                if s != libc::SIGKILL && s != libc::SIGSTOP {
                    libc::signal(s, libc::SIG_DFL);
                }
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            libc::execve(c_path.as_ptr(), argv_p.as_ptr(), env_p.as_ptr());
            fail(4);
        }
    }
    drop(err_w);
    let mut msg = Vec::new();
    let _ = File::from(err_r).read_to_end(&mut msg);
    if msg.len() >= 3 {
        let errno = i32::from(msg[1]) | (i32::from(msg[2]) << 8);
        let step = match msg[0] {
            1 => "joining the container's cgroups",
            2 => "setting the controlling terminal",
            3 => "setting up stdio",
            _ => "exec",
        };
        wait(pid as u32);
        return Err(RuntimeError::System(format!(
            "{step} for {:?}: {}",
            argv[0],
            io::Error::from_raw_os_error(errno)
        )));
    }
    Ok((pid as u32, master))
}

/// Waits for a process started by [`spawn`] and returns its exit code (128 + signal when
/// killed). Blocking.
pub fn wait(pid: u32) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int to fill.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if r == pid as libc::pid_t {
            break;
        }
        if r == -1 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return -1;
        }
    }
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        -1
    }
}

/// Runs `argv` in the container to completion, collecting its output (each stream truncated
/// to [`MAX_OUTPUT`]); killed (SIGKILL) when `timeout` passes, which is an error. Blocking.
pub fn exec_sync(target: &ExecTarget, argv: &[String], timeout: Duration) -> Result<ExecResult> {
    let spawned = spawn(
        target,
        argv,
        ExecStdio {
            stdin: false,
            stdout: true,
            stderr: true,
            tty: false,
        },
    )?;
    let deadline = Instant::now() + timeout;
    let mut outs: [(Option<File>, Vec<u8>); 2] =
        [(spawned.stdout, Vec::new()), (spawned.stderr, Vec::new())];
    let mut buf = vec![0u8; 64 * 1024];
    let mut timed_out = false;
    loop {
        let mut pfds = Vec::new();
        let mut idx = Vec::new();
        for (i, (f, _)) in outs.iter().enumerate() {
            if let Some(f) = f {
                pfds.push(libc::pollfd {
                    fd: f.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                idx.push(i);
            }
        }
        if pfds.is_empty() {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: `pfds` is a valid pollfd array of the given length.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if r < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        for (p, &i) in pfds.iter().zip(&idx) {
            if p.revents == 0 {
                continue;
            }
            let (slot, out) = &mut outs[i];
            let Some(f) = slot.as_mut() else { continue };
            match f.read(&mut buf) {
                Ok(0) | Err(_) => *slot = None,
                Ok(n) => {
                    let room = MAX_OUTPUT.saturating_sub(out.len());
                    out.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
    }
    if timed_out {
        // SAFETY: kill has no memory-safety preconditions; `pid` is our unreaped child.
        unsafe { libc::kill(spawned.pid as libc::pid_t, libc::SIGKILL) };
        wait(spawned.pid);
        return Err(RuntimeError::System(format!(
            "command {argv:?} timed out after {timeout:?}"
        )));
    }
    // Output is closed; the process may still be running (it closed its stdio): wait with
    // what is left of the timeout.
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid int to fill.
        let r = unsafe { libc::waitpid(spawned.pid as libc::pid_t, &mut status, libc::WNOHANG) };
        if r == spawned.pid as libc::pid_t {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                -1
            };
            let [(_, stdout), (_, stderr)] = outs;
            return Ok(ExecResult {
                exit_code: code,
                stdout,
                stderr,
            });
        }
        if r == -1 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(os_err("waiting for the exec'd command"));
        }
        if Instant::now() >= deadline {
            // SAFETY: as above.
            unsafe { libc::kill(spawned.pid as libc::pid_t, libc::SIGKILL) };
            wait(spawned.pid);
            return Err(RuntimeError::System(format!(
                "command {argv:?} timed out after {timeout:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether a path names an existing namespace file of a process (for callers checking a pid
/// before exec).
pub fn has_namespaces(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}/ns/mnt")).exists()
}
