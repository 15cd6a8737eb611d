//! `keel-agent shim <container dir>`: the per-container monitor (like conmon).
//!
//! The runtime starts it and waits for it to say whether the container started. It forks
//! itself: the first process only relays that answer and exits, so the monitor is re-parented
//! to init and outlives the agent (containers and their logs survive an agent restart). The
//! monitor:
//! 1. reads `spec.json`, opens the pod's network namespace and the CRI log file;
//! 2. unshares a PID namespace and forks the container's init (PID 1 there), which waits until
//!    the monitor has put it in its cgroups, then joins the pod's network namespace, unshares
//!    mount, UTS and IPC namespaces, sets the hostname, builds its root filesystem
//!    ([`super::rootfs`]), enters the working directory and execs the command;
//! 3. records the pid in `state.json`, copies the container's stdout and stderr into the log
//!    file (`<RFC3339Nano> <stream> <F|P> <line>`), reaps it and records the exit code, the
//!    time and the reason (`Completed`, `Error`, `OOMKilled`).
//!
//! The container's mounts live only in its own mount namespace: they vanish with it.
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::SystemTime;

use super::cgroups;
use super::container::{
    ContainerDir, ContainerRecord, ContainerSpec, proc_start_time, rfc3339_nano,
};
use super::images::DEFAULT_PATH;
use super::rootfs;
use crate::runtime::ContainerState;

/// Exit code and reason recorded when the container could not be started (as containerd).
pub const START_ERROR_EXIT_CODE: i32 = 128;
pub const START_ERROR_REASON: &str = "StartError";

/// A partial line longer than this is written as a `P` record.
const MAX_LINE: usize = 16 * 1024;

fn last_err(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

/// A pipe with both ends close-on-exec.
pub(super) fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(last_err("pipe2"));
    }
    // SAFETY: pipe2 succeeded: both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Entry point of `keel-agent shim <container dir>`; returns the process exit code.
pub fn main(container_dir: &Path) -> i32 {
    let (report_r, report_w) = match pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("keel shim: {e}");
            return 1;
        }
    };
    // SAFETY: fork has no memory-safety preconditions; the child continues on this thread
    // only (the shim is single-threaded at this point; glibc's fork resets malloc's locks).
    match unsafe { libc::fork() } {
        -1 => {
            eprintln!("keel shim: {}", last_err("fork"));
            1
        }
        0 => {
            drop(report_r);
            let code = monitor(container_dir, report_w);
            // SAFETY: ends the monitor without running atexit handlers of the parent image.
            unsafe { libc::_exit(code) }
        }
        _ => {
            drop(report_w);
            let mut answer = String::new();
            let _ = File::from(report_r).read_to_string(&mut answer);
            match answer.strip_prefix("ok") {
                Some(_) => 0,
                None => {
                    let msg = answer.strip_prefix("err ").unwrap_or(&answer);
                    if msg.is_empty() {
                        eprintln!("keel shim: the monitor exited before starting the container");
                    } else {
                        eprintln!("{msg}");
                    }
                    1
                }
            }
        }
    }
}

/// Tells the waiting first process how the start went.
struct Reporter(Option<File>);

impl Reporter {
    fn send(&mut self, msg: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(msg.as_bytes());
        }
    }
}

fn monitor(container_dir: &Path, report_w: OwnedFd) -> i32 {
    let mut reporter = Reporter(Some(File::from(report_w)));
    let dir = ContainerDir::new(container_dir);
    // SAFETY: setsid has no preconditions; we are not a group leader (fresh child).
    unsafe { libc::setsid() };
    redirect_own_stdio(&dir);
    match run(&dir, &mut reporter) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("keel shim: {e}");
            reporter.send(&format!("err {e}"));
            1
        }
    }
}

/// The monitor's own stdout/stderr go to `shim.log`, so the runtime (reading the first
/// process's stderr) sees EOF once the first process exits.
fn redirect_own_stdio(dir: &ContainerDir) {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.shim_log());
    let null = File::open("/dev/null");
    // SAFETY: dup2 onto the standard descriptors with fds we own; no memory is involved.
    unsafe {
        if let Ok(n) = &null {
            libc::dup2(n.as_raw_fd(), 0);
        }
        if let Ok(l) = &log {
            libc::dup2(l.as_raw_fd(), 1);
            libc::dup2(l.as_raw_fd(), 2);
        }
    }
}

fn record_start_error(dir: &ContainerDir, message: &str) {
    let mut st = dir
        .read_state()
        .unwrap_or_else(|_| ContainerRecord::created());
    st.state = ContainerState::Exited;
    st.started_at = None;
    st.finished_at = Some(SystemTime::now());
    st.exit_code = Some(START_ERROR_EXIT_CODE);
    st.reason = Some(START_ERROR_REASON.into());
    st.message = Some(message.to_string());
    st.pid = None;
    st.pid_start = None;
    let _ = dir.write_state(&st);
}

fn run(dir: &ContainerDir, reporter: &mut Reporter) -> Result<(), String> {
    let spec = dir.read_spec().map_err(|e| e.to_string())?;
    let state = dir.read_state().map_err(|e| e.to_string())?;
    if state.state != ContainerState::Created {
        return Err(format!(
            "container {} is {:?}, not Created",
            spec.id, state.state
        ));
    }
    let fail = |msg: String| {
        record_start_error(dir, &msg);
        msg
    };
    if let Some(parent) = spec.log_path.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| fail(format!("creating {}: {e}", parent.display())))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
        .map_err(|e| fail(format!("opening the log {}: {e}", spec.log_path.display())))?;
    let netns = File::open(&spec.netns).map_err(|e| {
        fail(format!(
            "opening the pod's network namespace {}: {e}",
            spec.netns.display()
        ))
    })?;
    let devnull = File::open("/dev/null").map_err(|e| fail(format!("/dev/null: {e}")))?;
    let (out_r, out_w) = pipe().map_err(&fail)?;
    let (err_r, err_w) = pipe().map_err(&fail)?;
    let (go_r, go_w) = pipe().map_err(&fail)?;
    let (exec_r, exec_w) = pipe().map_err(&fail)?;
    let oom_before = cgroups::oom_kills_in(&spec.cgroup_dirs);
    // The monitor outlives terminals and agents; it stops only when the container does.
    // SAFETY: setting dispositions to SIG_IGN is always sound.
    unsafe {
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE] {
            libc::signal(s, libc::SIG_IGN);
        }
    }
    // SAFETY: unshare only changes this process's namespaces (for its future children).
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(fail(last_err("unshare(CLONE_NEWPID)")));
    }
    // SAFETY: the monitor is single-threaded; the child only runs `container_init`.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return Err(fail(last_err("fork")));
    }
    if pid == 0 {
        drop((out_r, err_r, go_w, exec_r));
        let fds = ChildFds {
            stdin: devnull.as_raw_fd(),
            stdout: out_w.as_raw_fd(),
            stderr: err_w.as_raw_fd(),
            netns: netns.as_raw_fd(),
        };
        let err = container_init(&spec, dir, go_r, &fds);
        let mut f = File::from(exec_w);
        let _ = f.write_all(err.as_bytes());
        // SAFETY: ends the failed child without running the parent's atexit handlers.
        unsafe { libc::_exit(127) };
    }
    let pid = pid as u32;
    drop((out_w, err_w, go_r, exec_w, netns, devnull));
    // Into the cgroups before the container runs anything.
    if let Err(e) = cgroups::add_pid(&spec.cgroup_dirs, pid) {
        kill_and_reap(pid);
        return Err(fail(format!("joining the container's cgroups: {e}")));
    }
    let _ = File::from(go_w).write_all(b"g");
    let mut exec_error = String::new();
    let _ = File::from(exec_r).read_to_string(&mut exec_error);
    if !exec_error.is_empty() {
        kill_and_reap(pid);
        return Err(fail(exec_error));
    }
    let me = std::process::id();
    let mut st = state;
    st.state = ContainerState::Running;
    st.pid = Some(pid);
    st.pid_start = proc_start_time(pid);
    st.shim_pid = Some(me);
    st.shim_start = proc_start_time(me);
    st.started_at = Some(SystemTime::now());
    st.oom_kills_at_start = oom_before;
    dir.write_state(&st).map_err(|e| e.to_string())?;
    reporter.send("ok");

    copy_logs(log, File::from(out_r), File::from(err_r));
    let status = wait(pid);
    let exit_code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    };
    let oom_after = cgroups::oom_kills_in(&spec.cgroup_dirs);
    let oom_killed = matches!((oom_before, oom_after), (Some(a), Some(b)) if b > a);
    st.state = ContainerState::Exited;
    st.finished_at = Some(SystemTime::now());
    st.exit_code = Some(exit_code);
    st.reason = Some(
        if oom_killed {
            "OOMKilled"
        } else if exit_code == 0 {
            "Completed"
        } else {
            "Error"
        }
        .to_string(),
    );
    dir.write_state(&st).map_err(|e| e.to_string())?;
    Ok(())
}

fn wait(pid: u32) -> libc::c_int {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int to fill.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if r == pid as libc::pid_t {
            return status;
        }
        if r == -1 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return status;
        }
    }
}

fn kill_and_reap(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions; `pid` is our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    wait(pid);
}

/// Descriptors the container's init puts in place before exec.
struct ChildFds {
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    netns: RawFd,
}

/// The container's init, between fork and exec. Returns only on failure, with the message.
fn container_init(spec: &ContainerSpec, dir: &ContainerDir, go: OwnedFd, fds: &ChildFds) -> String {
    let mut b = [0u8; 1];
    let mut go = File::from(go);
    if !matches!(go.read(&mut b), Ok(1)) {
        return "the monitor went away before the container started".into();
    }
    drop(go);
    match prepare_and_exec(spec, dir, fds) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

fn prepare_and_exec(
    spec: &ContainerSpec,
    dir: &ContainerDir,
    fds: &ChildFds,
) -> Result<Never, String> {
    // SAFETY: setns/unshare/sethostname take plain values; `fds.netns` is open.
    unsafe {
        if libc::setns(fds.netns, libc::CLONE_NEWNET) != 0 {
            return Err(last_err("joining the pod's network namespace"));
        }
        if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) != 0 {
            return Err(last_err("unshare(mount, uts, ipc)"));
        }
        if libc::sethostname(spec.hostname.as_ptr().cast(), spec.hostname.len()) != 0 {
            return Err(last_err("sethostname"));
        }
    }
    rootfs::setup(spec, dir)?;
    rootfs::write_etc(spec);
    rootfs::enter_working_dir(&spec.cwd)?;
    exec(&spec.argv, &spec.env, fds)
}

/// The value of `PATH` in a `KEY=value` environment (the default when unset).
pub(super) fn env_path(env: &[String]) -> &str {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
}

/// Restores default signal handling (ignored signals survive exec) and an empty mask.
pub(super) fn reset_signals() {
    // SAFETY: resetting dispositions and the mask of this (single-threaded) process.
    unsafe {
        for s in 1..32 {
            if s != libc::SIGKILL && s != libc::SIGSTOP {
                libc::signal(s, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Puts the standard descriptors in place and execs `argv` (resolved in `$PATH`).
fn exec(argv: &[String], env: &[String], fds: &ChildFds) -> Result<Never, String> {
    let argv0 = argv.first().ok_or("no command to run")?;
    let path = rootfs::find_executable(argv0, env_path(env))?;
    let c_path = rootfs::cstr(&path)?;
    let c_argv: Vec<CString> = argv.iter().map(rootfs::cstr).collect::<Result<_, _>>()?;
    let c_env: Vec<CString> = env.iter().map(rootfs::cstr).collect::<Result<_, _>>()?;
    let mut argv_p: Vec<*const libc::c_char> = c_argv.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = c_env.iter().map(|c| c.as_ptr()).collect();
    env_p.push(std::ptr::null());
    reset_signals();
    // SAFETY: dup2 onto the standard descriptors; close_range marks every other descriptor
    // close-on-exec (the exec error pipe already is); execve gets NULL-terminated arrays of
    // valid C strings that live until it returns.
    unsafe {
        if libc::dup2(fds.stdin, 0) < 0
            || libc::dup2(fds.stdout, 1) < 0
            || libc::dup2(fds.stderr, 2) < 0
        {
            return Err(last_err("dup2"));
        }
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        libc::execve(c_path.as_ptr(), argv_p.as_ptr(), env_p.as_ptr());
    }
    Err(format!(
        "exec {}: {}",
        path.display(),
        io::Error::last_os_error()
    ))
}

/// Writes CRI log records for the two streams until both are closed.
fn copy_logs(log: File, stdout: File, stderr: File) {
    let mut w = CriLogWriter::new(log);
    let mut streams = [(Some(stdout), "stdout"), (Some(stderr), "stderr")];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut pfds: Vec<libc::pollfd> = Vec::new();
        let mut which = Vec::new();
        for (i, (f, _)) in streams.iter().enumerate() {
            if let Some(f) = f {
                pfds.push(libc::pollfd {
                    fd: f.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                which.push(i);
            }
        }
        if pfds.is_empty() {
            break;
        }
        // SAFETY: `pfds` is a valid array of pollfd of the given length.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if r < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        for (p, &i) in pfds.iter().zip(&which) {
            if p.revents == 0 {
                continue;
            }
            let (slot, name) = &mut streams[i];
            let Some(f) = slot.as_mut() else { continue };
            match f.read(&mut buf) {
                Ok(0) | Err(_) => {
                    w.finish(i, name);
                    *slot = None;
                }
                Ok(n) => w.write(i, name, &buf[..n]),
            }
        }
    }
}

/// The CRI log format: `<RFC3339Nano> <stream> <F|P> <content>\n`, `P` for a partial line.
pub struct CriLogWriter<W: Write> {
    out: W,
    partial: [Vec<u8>; 2],
}

impl<W: Write> CriLogWriter<W> {
    pub fn new(out: W) -> Self {
        CriLogWriter {
            out,
            partial: [Vec::new(), Vec::new()],
        }
    }

    /// Adds bytes read from stream `i` (0 stdout, 1 stderr) named `name`.
    pub fn write(&mut self, i: usize, name: &str, data: &[u8]) {
        let ts = rfc3339_nano(SystemTime::now());
        let mut out = Vec::with_capacity(data.len() + 64);
        let buf = &mut self.partial[i];
        buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            record(&mut out, &ts, name, "F", &buf[start..start + nl]);
            start += nl + 1;
        }
        buf.drain(..start);
        while buf.len() >= MAX_LINE {
            let chunk: Vec<u8> = buf.drain(..MAX_LINE).collect();
            record(&mut out, &ts, name, "P", &chunk);
        }
        let _ = self.out.write_all(&out);
    }

    /// The stream ended: its last unterminated line is written as a full one.
    pub fn finish(&mut self, i: usize, name: &str) {
        if self.partial[i].is_empty() {
            return;
        }
        let ts = rfc3339_nano(SystemTime::now());
        let mut out = Vec::new();
        record(&mut out, &ts, name, "F", &self.partial[i]);
        self.partial[i].clear();
        let _ = self.out.write_all(&out);
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

fn record(out: &mut Vec<u8>, ts: &str, stream: &str, tag: &str, line: &[u8]) {
    out.extend_from_slice(ts.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_bytes());
    out.push(b' ');
    out.extend_from_slice(tag.as_bytes());
    out.push(b' ');
    out.extend_from_slice(line);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(w: CriLogWriter<Vec<u8>>) -> Vec<String> {
        String::from_utf8(w.into_inner())
            .unwrap()
            .lines()
            .map(|l| {
                // Drop the timestamp.
                let (_, rest) = l.split_once(' ').unwrap();
                rest.to_string()
            })
            .collect()
    }

    #[test]
    fn log_records_split_lines_and_mark_partial_ones() {
        let mut w = CriLogWriter::new(Vec::new());
        w.write(0, "stdout", b"hello\nwor");
        w.write(1, "stderr", b"oops\n");
        w.write(0, "stdout", b"ld\n\nlast");
        w.finish(0, "stdout");
        w.finish(1, "stderr");
        assert_eq!(
            lines(w),
            [
                "stdout F hello",
                "stderr F oops",
                "stdout F world",
                "stdout F ",
                "stdout F last"
            ]
        );
        let mut w = CriLogWriter::new(Vec::new());
        w.write(0, "stdout", &vec![b'x'; MAX_LINE + 3]);
        w.write(0, "stdout", b"\n");
        let l = lines(w);
        assert_eq!(l.len(), 2);
        assert!(l[0].starts_with("stdout P xxx"));
        assert_eq!(l[1], "stdout F xxx");
    }

    #[test]
    fn path_comes_from_the_environment() {
        assert_eq!(env_path(&["A=1".into(), "PATH=/x".into()]), "/x");
        assert_eq!(env_path(&[]), DEFAULT_PATH);
    }
}
