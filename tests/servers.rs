//! Drives the `keel-testsrv` binary from tests: servers that answer with their name inside a pod
//! namespace, and clients (inside a namespace and optionally a cgroup, where Keel's socket
//! programs apply) that report which name answered and what peer address the socket saw.
//!
//! Integration tests of this package find the binary with `env!("CARGO_BIN_EXE_keel-testsrv")`.

use std::io::Write;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cgroup::Cgroup;
use crate::process::{Limits, OutputLines, ProcessGuard, spawn_in};

/// How long a server may take to start listening.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The protocol a server speaks / a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// Line-based: each line sent is answered with the name; the connection stays open.
    Tcp,
    /// Each datagram is answered with the name.
    Udp,
    /// Each request is answered with `200` and the name as the body; one request per connection.
    Http,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Http => "http",
        }
    }
}

/// Starts a server in `ns` listening on `listen` and answering with `name`; returns once it
/// listens. Killed when the guard drops.
pub fn spawn_server(
    bin: &Path,
    ns: &str,
    proto: Proto,
    listen: SocketAddrV4,
    name: &str,
) -> Result<ProcessGuard> {
    let mut cmd = Command::new(bin);
    cmd.arg(proto.as_str())
        .args(["--listen", &listen.to_string(), "--name", name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut server = spawn_in(ns, None, cmd)?;
    let lines = server.stdout_lines()?;
    lines
        .wait_for(|l| l.starts_with("READY "), Limits::timeout(READY_TIMEOUT))
        .with_context(|| {
            format!(
                "{} server {name} on {listen} in {ns} did not start",
                proto.as_str()
            )
        })?;
    Ok(server)
}

/// What answered one exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The answering server's name.
    pub name: String,
    /// The peer as the client's socket API reported it (a Service's VIP under socket-level load
    /// balancing, not the backend's address).
    pub peer: SocketAddr,
}

/// One exchange's outcome: the answer, or the client's error text (e.g. "connect: Connection
/// refused").
pub type Reply = std::result::Result<Answer, String>;

/// Options of [`ask`].
#[derive(Debug, Clone, Copy)]
pub struct AskOptions {
    pub count: u32,
    pub interval: Duration,
    pub timeout: Duration,
    /// UDP only: `sendto`/`recvfrom` on an unconnected socket (Keel's sendmsg4/recvmsg4 hooks).
    pub unconnected: bool,
}

impl Default for AskOptions {
    fn default() -> Self {
        AskOptions {
            count: 1,
            interval: Duration::ZERO,
            timeout: Duration::from_secs(2),
            unconnected: false,
        }
    }
}

fn ask_command(bin: &Path, proto: Proto, to: SocketAddrV4, opts: &AskOptions) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["ask", proto.as_str(), "--to", &to.to_string()])
        .args(["--count", &opts.count.to_string()])
        .args(["--interval-ms", &opts.interval.as_millis().to_string()])
        .args(["--timeout-ms", &opts.timeout.as_millis().max(1).to_string()]);
    if opts.unconnected {
        cmd.arg("--unconnected");
    }
    cmd
}

/// Runs `opts.count` exchanges with `to` from inside `ns` (and `cgroup`), TCP over one
/// connection, UDP over one socket, HTTP one connection each; returns one reply per exchange
/// (failed exchanges included: a test may expect them).
pub fn ask(
    bin: &Path,
    ns: &str,
    cgroup: Option<&Cgroup>,
    proto: Proto,
    to: SocketAddrV4,
    opts: AskOptions,
) -> Result<Vec<Reply>> {
    let mut cmd = ask_command(bin, proto, to, &opts);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let budget = (opts.timeout * 2 + opts.interval) * opts.count + Duration::from_secs(5);
    let out = spawn_in(ns, cgroup, cmd)?.wait_with_output(Limits::timeout(budget))?;
    // Exit status 1 means some exchange failed, which the output lines say; 2 is a usage error.
    if !matches!(out.status.code(), Some(0 | 1)) {
        bail!(
            "keel-testsrv ask failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_replies(&String::from_utf8_lossy(&out.stdout))
}

/// Parses `OK <name> <peer>` / `ERR <reason>` lines.
pub fn parse_replies(stdout: &str) -> Result<Vec<Reply>> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_reply)
        .collect()
}

fn parse_reply(line: &str) -> Result<Reply> {
    if let Some(reason) = line.strip_prefix("ERR ") {
        return Ok(Err(reason.to_string()));
    }
    let mut fields = line
        .strip_prefix("OK ")
        .unwrap_or_default()
        .split_whitespace();
    match (fields.next(), fields.next().map(str::parse::<SocketAddr>)) {
        (Some(name), Some(Ok(peer))) => Ok(Ok(Answer {
            name: name.to_string(),
            peer,
        })),
        _ => bail!("unexpected keel-testsrv output line {line:?}"),
    }
}

/// A client kept running between exchanges, so a test can change the datapath's state while a
/// TCP connection or a connected UDP socket stays open.
#[derive(Debug)]
pub struct Client {
    stdin: ChildStdin,
    lines: OutputLines,
    timeout: Duration,
    // Dropped last: kills the client.
    _proc: ProcessGuard,
}

impl Client {
    /// Starts a client in `ns` (and `cgroup`); nothing is sent until [`Client::exchange`].
    pub fn start(
        bin: &Path,
        ns: &str,
        cgroup: Option<&Cgroup>,
        proto: Proto,
        to: SocketAddrV4,
        opts: AskOptions,
    ) -> Result<Client> {
        let mut cmd = ask_command(bin, proto, to, &opts);
        cmd.arg("--stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut proc = spawn_in(ns, cgroup, cmd)?;
        let stdin = proc.take_stdin().context("client stdin is not piped")?;
        let lines = proc.stdout_lines()?;
        Ok(Client {
            stdin,
            lines,
            timeout: opts.timeout,
            _proc: proc,
        })
    }

    /// One exchange over the client's connection/socket (a new one if the previous failed).
    pub fn exchange(&mut self) -> Result<Reply> {
        writeln!(self.stdin, "go").context("writing to the client")?;
        self.stdin.flush().context("writing to the client")?;
        let line = self
            .lines
            .next_within(self.timeout * 2 + Duration::from_secs(2))
            .context("the client did not answer")?;
        parse_reply(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replies() {
        let replies =
            parse_replies("OK backend-1 10.96.0.10:80\nERR connect: Connection refused\n")
                .expect("valid output");
        assert_eq!(
            replies,
            vec![
                Ok(Answer {
                    name: "backend-1".into(),
                    peer: "10.96.0.10:80".parse().unwrap()
                }),
                Err("connect: Connection refused".into()),
            ]
        );
        assert!(parse_replies("garbage").is_err());
    }
}
