//! Child processes started inside a network namespace (and optionally a cgroup v2), killed
//! when their handle drops, with bounded waits and line-by-line access to their output.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cgroup::Cgroup;
use crate::netns::open_netns;

/// How long a wait may last, and an optional flag (e.g. set by a Ctrl-C handler) that makes it
/// give up early.
#[derive(Debug, Clone, Copy)]
pub struct Limits<'a> {
    pub timeout: Duration,
    pub cancel: Option<&'a AtomicBool>,
}

impl<'a> Limits<'a> {
    pub fn timeout(timeout: Duration) -> Self {
        Limits {
            timeout,
            cancel: None,
        }
    }

    pub fn cancel_on(self, flag: &'a AtomicBool) -> Self {
        Limits {
            cancel: Some(flag),
            ..self
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|f| f.load(Ordering::Relaxed))
    }
}

/// A running child process; killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct ProcessGuard {
    child: Child,
    label: String,
    exited: Option<ExitStatus>,
}

/// Starts `cmd` with its network namespace switched to `ns` and, when `cgroup` is given, moved
/// into that cgroup, both before `exec` (so the program's first socket is already subject to
/// programs attached to the cgroup).
///
/// The child also gets `PR_SET_PDEATHSIG = SIGKILL`: it dies if the thread that spawned it exits,
/// so spawn long-lived children from a thread that outlives them (the test's own thread).
pub fn spawn_in(ns: &str, cgroup: Option<&Cgroup>, cmd: Command) -> Result<ProcessGuard> {
    spawn_with(Some(ns), cgroup, cmd)
}

/// Starts `cmd` in the caller's namespaces, with the same kill-on-drop handle as [`spawn_in`].
pub fn spawn(cmd: Command) -> Result<ProcessGuard> {
    spawn_with(None, None, cmd)
}

fn spawn_with(ns: Option<&str>, cgroup: Option<&Cgroup>, mut cmd: Command) -> Result<ProcessGuard> {
    let label = describe(&cmd);
    let netns = ns.map(open_netns).transpose()?;
    let procs = cgroup
        .map(|cg| {
            let file = cg.procs_file();
            OpenOptions::new()
                .write(true)
                .open(&file)
                .with_context(|| format!("opening {}", file.display()))
        })
        .transpose()?;
    let netns_fd = netns.as_ref().map(File::as_raw_fd);
    let procs_fd = procs.as_ref().map(File::as_raw_fd);
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system
    // calls (prctl, getppid, setns, write) on fds that stay open until `spawn` returns (`netns`
    // and `procs` live to the end of this function); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            if let Some(fd) = procs_fd {
                let pid0 = b"0";
                if libc::write(fd, pid0.as_ptr().cast(), pid0.len()) != pid0.len() as isize {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(fd) = netns_fd
                && libc::setns(fd, libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| match ns {
        Some(ns) => format!("starting `{label}` in network namespace {ns}"),
        None => format!("starting `{label}`"),
    })?;
    drop((netns, procs));
    Ok(ProcessGuard {
        child,
        label,
        exited: None,
    })
}

/// Runs `cmd` inside `ns` (and `cgroup`) to completion with captured stdout/stderr; fails if it
/// cannot start, exits non-zero, outlives `limits.timeout` or is cancelled (it is killed then).
pub fn run_in(
    ns: &str,
    cgroup: Option<&Cgroup>,
    mut cmd: Command,
    limits: Limits<'_>,
) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let proc = spawn_in(ns, cgroup, cmd)?;
    let label = proc.label.clone();
    let out = proc.wait_with_output(limits)?;
    if !out.status.success() {
        bail!(
            "`{label}` failed ({}): {}{}",
            out.status,
            tail(&out.stderr),
            if out.stderr.is_empty() {
                tail(&out.stdout)
            } else {
                String::new()
            }
        );
    }
    Ok(out)
}

/// The last few hundred bytes of some output, for error messages.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let start = text.len().saturating_sub(600);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].to_string()
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

impl ProcessGuard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The child's stdin, when the command was set up with `Stdio::piped()`.
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.stdin.take()
    }

    /// Reads the child's stdout (it must be `Stdio::piped()`) line by line on a helper thread.
    pub fn stdout_lines(&mut self) -> Result<OutputLines> {
        let stdout = self.child.stdout.take().with_context(|| {
            format!("stdout of `{}` is not piped (or already taken)", self.label)
        })?;
        Ok(OutputLines::spawn(stdout))
    }

    /// The exit status if the child has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for `{}`", self.label))?;
        }
        Ok(self.exited)
    }

    /// Waits for the child to exit; kills it and fails on timeout or cancellation.
    pub fn wait(&mut self, limits: Limits<'_>) -> Result<ExitStatus> {
        let deadline = Instant::now() + limits.timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if limits.cancelled() {
                self.kill();
                bail!("`{}` interrupted", self.label);
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "`{}` still running after {:?}; killed it",
                    self.label,
                    limits.timeout
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the child (stdout and stderr should be piped) and collects its output.
    pub fn wait_with_output(mut self, limits: Limits<'_>) -> Result<Output> {
        let stdout = self.child.stdout.take().map(read_all_in_background);
        let stderr = self.child.stderr.take().map(read_all_in_background);
        let status = self.wait(limits)?;
        // The pipes close when the child exits (our children don't leave grandchildren behind);
        // still, don't hang on a pipe some other process inherited.
        let collect = |rx: Option<Receiver<Vec<u8>>>| {
            rx.and_then(|rx| rx.recv_timeout(Duration::from_secs(2)).ok())
                .unwrap_or_default()
        };
        Ok(Output {
            status,
            stdout: collect(stdout),
            stderr: collect(stderr),
        })
    }

    /// Kills the child (SIGKILL) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if self.exited.is_some() {
            return;
        }
        // Ignored error: the child may have exited already, which `wait` then reports.
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => self.exited = Some(status),
            Err(e) => eprintln!("warning: reaping `{}`: {e}", self.label),
        }
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_all_in_background(mut source: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error ends the capture; what was read so far is still reported.
        let _ = source.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// A child's output, line by line, with bounded waits.
#[derive(Debug)]
pub struct OutputLines {
    rx: Receiver<String>,
}

impl OutputLines {
    fn spawn(source: impl Read + Send + 'static) -> OutputLines {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(source).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        OutputLines { rx }
    }

    /// The next line, or `None` if none arrives within `timeout` or the output ended.
    pub fn next_within(&self, timeout: Duration) -> Option<String> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Skips lines until one satisfies `pred`; fails when `limits` run out or the output ends.
    pub fn wait_for(
        &self,
        mut pred: impl FnMut(&str) -> bool,
        limits: Limits<'_>,
    ) -> Result<String> {
        let deadline = Instant::now() + limits.timeout;
        loop {
            if limits.cancelled() {
                bail!("interrupted while waiting for output");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no matching output line within {:?}", limits.timeout);
            }
            match self.rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(line) if pred(&line) => return Ok(line),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => bail!("output ended"),
            }
        }
    }
}
