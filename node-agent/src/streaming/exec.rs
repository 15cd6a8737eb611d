//! `GET /exec/{namespace}/{pod}/{container}`: runs a command in a container over a WebSocket
//! (`v5.channel.k8s.io` / `v4.channel.k8s.io`), relays stdin, stdout, stderr and terminal
//! resizes, and reports how the command ended on the error channel.
//!
//! Once the upgrade is accepted every failure (unknown pod, container not running, a command
//! that can't start) is a `Status` on the error channel: an HTTP error would make kubectl fall
//! back to SPDY and lose the message.
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use super::channel::{self, Incoming as ClientMessage, Protocol, TerminalSize};
use super::http::{Body, Query, Shared, bad_request};
use crate::runtime::{ContainerId, ContainerState, ExecRequest, ExecSession};

/// How long output may still drain after the command exited (a background child holding
/// the pipes open must not keep the session open forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// How long the client gets to read the final messages and answer the close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
const READ_CHUNK: usize = 32 * 1024;

/// The container an exec request is for.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// Parses `command`, `stdin`, `stdout`, `stderr`, `tty` (PodExecOptions).
pub(crate) fn parse_request(query: &Query) -> Result<ExecRequest, String> {
    let command = query.all("command");
    if command.is_empty() {
        return Err("you must specify at least one command for the container".into());
    }
    let stdin = query.flag("stdin")?;
    let stdout = query.flag("stdout")?;
    let tty = query.flag("tty")?;
    // Like the kubelet: a terminal carries stderr on stdout.
    let stderr = query.flag("stderr")? && !tty;
    if !stdin && !stdout && !stderr && !query.flag("stderr")? {
        return Err("you must specify at least 1 of stdin, stdout, stderr".into());
    }
    Ok(ExecRequest {
        command,
        stdin,
        stdout,
        stderr,
        tty,
    })
}

/// Checks the WebSocket handshake, answers 101 and runs the session once upgraded.
pub(crate) fn exec(
    shared: Arc<Shared>,
    mut request: Request<Incoming>,
    target: Target,
    query: &Query,
) -> Response<Body> {
    let exec_request = match parse_request(query) {
        Ok(r) => r,
        Err(message) => return bad_request(message),
    };
    let headers = request.headers();
    let is_websocket = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers.get(SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (is_websocket, key) else {
        return bad_request(format!(
            "exec needs a WebSocket upgrade with one of the subprotocols {} (SPDY is not supported)",
            channel::SUPPORTED.join(", ")
        ));
    };
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() != b"13")
    {
        return bad_request("unsupported WebSocket version (13 is served)");
    }
    let offered: Vec<&str> = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let Some(protocol) = Protocol::negotiate(offered.iter().copied()) else {
        return bad_request(format!(
            "none of the requested subprotocols {offered:?} is supported: use one of {}",
            channel::SUPPORTED.join(", ")
        ));
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                session(ws, protocol, shared, target, exec_request).await;
            }
            Err(e) => tracing::debug!(error = %e, "exec: the WebSocket upgrade failed"),
        }
    });
    let mut response = Response::new(http_body_util::Empty::new().boxed_unsync());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    headers.insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol.name()),
    );
    response
}

/// One exec session on an upgraded connection: ends with the status on the error channel and
/// a normal close.
async fn session<S>(
    ws: WebSocketStream<S>,
    protocol: Protocol,
    shared: Arc<Shared>,
    target: Target,
    request: ExecRequest,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, incoming) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(16);
    let writer = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            if sink.send(Message::binary(message)).await.is_err() {
                return;
            }
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
    });
    let status = run(
        &shared,
        &target,
        request,
        protocol,
        incoming,
        out_tx.clone(),
    )
    .await;
    if let Some(status) = status {
        let _ = out_tx.send(channel::frame(channel::ERROR, &status)).await;
    }
    drop(out_tx);
    if tokio::time::timeout(CLOSE_GRACE, writer).await.is_err() {
        tracing::debug!(pod = %target.pod, "exec: the client did not take the final messages");
    }
}

type ClientStream<S> = futures::stream::SplitStream<WebSocketStream<S>>;

/// Finds the container, starts the command, relays its streams and waits for it. Returns the
/// error-channel status, or `None` if the client went away first.
async fn run<S>(
    shared: &Arc<Shared>,
    target: &Target,
    request: ExecRequest,
    protocol: Protocol,
    incoming: ClientStream<S>,
    out: mpsc::Sender<Vec<u8>>,
) -> Option<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let id = match resolve(shared, target).await {
        Ok(id) => id,
        Err(message) => return Some(channel::failure_status(&message)),
    };
    let session = match shared.runtime.exec(&id, &request).await {
        Ok(session) => session,
        Err(e) => {
            return Some(channel::failure_status(&format!(
                "error executing command in container: {e}"
            )));
        }
    };
    let ExecSession {
        pid,
        stdin,
        stdout,
        stderr,
        pty,
    } = session;
    tracing::debug!(container = %id, pid, command = ?request.command, "exec started");

    let mut pumps = tokio::task::JoinSet::new();
    for (file, channel) in [(stdout, channel::STDOUT), (stderr, channel::STDERR)] {
        if let Some(file) = file {
            pumps.spawn(pump(file, channel, out.clone()));
        }
    }
    drop(out);
    let stdin = stdin.and_then(|file| match sender(file) {
        Ok(sender) => Some(sender),
        Err(e) => {
            tracing::warn!(error = %e, "exec: stdin unusable");
            None
        }
    });
    let mut input = tokio::spawn(relay_input(incoming, stdin, pty, protocol, request.tty));
    let mut exited = tokio::task::spawn_blocking(move || wait_for_exit(pid));

    let exit = tokio::select! {
        exit = &mut exited => exit.unwrap_or_else(|e| Exit::Unknown(format!("waiting for the command: {e}"))),
        _ = &mut input => {
            // The client is gone. A terminal hangs up; otherwise the command goes on with its
            // stdin closed (as with the kubelet). The blocking wait still reaps it.
            if request.tty {
                // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped
                // child (the wait above has not returned), so it can't name another process.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
            }
            pumps.abort_all();
            return None;
        }
    };
    // Output written before the exit is still in the pipes: drain it, within bounds.
    let drained = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
        while pumps.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            pid,
            "exec: output still open after the command exited; closing"
        );
        pumps.abort_all();
    }
    // Keep reading the client (for its close answer) until the session ends.
    tokio::spawn(async move {
        let _ = tokio::time::timeout(CLOSE_GRACE, &mut input).await;
        input.abort();
    });
    Some(match exit {
        Exit::Code(0) => channel::success_status(),
        Exit::Code(code) => channel::exit_status(code),
        Exit::Signal(signal) => channel::exit_status(128 + signal),
        Exit::Unknown(message) => channel::failure_status(&message),
    })
}

/// The running container for the target, or why there is none.
async fn resolve(shared: &Shared, target: &Target) -> Result<ContainerId, String> {
    let Target {
        namespace,
        pod,
        container,
    } = target;
    let found = shared.lookup.pod(namespace, pod).await.ok_or_else(|| {
        format!("pod \"{pod}\" in namespace \"{namespace}\" is not running on this node")
    })?;
    let spec = found
        .containers
        .iter()
        .find(|c| c.name == *container)
        .ok_or_else(|| format!("container \"{container}\" not found in pod \"{pod}\""))?;
    let not_running = || format!("container \"{container}\" in pod \"{pod}\" is not running");
    let id = spec.id.clone().ok_or_else(not_running)?;
    match shared.runtime.container_status(&id).await {
        Ok(status) if status.state == ContainerState::Running => Ok(id),
        Ok(_) => Err(not_running()),
        Err(e) => Err(format!("container \"{container}\" in pod \"{pod}\": {e}")),
    }
}

fn set_nonblocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sender(file: File) -> io::Result<pipe::Sender> {
    set_nonblocking(&file)?;
    pipe::Sender::from_file_unchecked(file)
}

/// Copies a process output (a pipe or the pty master) to the client on `channel`.
async fn pump(file: File, channel: u8, out: mpsc::Sender<Vec<u8>>) {
    let receiver = set_nonblocking(&file).and_then(|_| pipe::Receiver::from_file_unchecked(file));
    let mut receiver = match receiver {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(channel, error = %e, "exec: output unusable");
            return;
        }
    };
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match receiver.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                if out.send(channel::frame(channel, &buf[..n])).await.is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A pty master reads EIO once the terminal's last holder is gone: its end.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return,
            Err(e) => {
                tracing::debug!(channel, error = %e, "exec: reading output failed");
                return;
            }
        }
    }
}

/// Applies client messages (stdin data, resizes, stdin close) until the client closes.
async fn relay_input<S>(
    mut incoming: ClientStream<S>,
    mut stdin: Option<pipe::Sender>,
    pty: Option<File>,
    protocol: Protocol,
    tty: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    while let Some(message) = incoming.next().await {
        let data = match message {
            Ok(Message::Binary(data)) => data,
            Ok(Message::Close(_)) | Err(_) => return,
            Ok(_) => continue,
        };
        match channel::parse(&data, protocol) {
            ClientMessage::Stdin(bytes) => {
                if let Some(writer) = stdin.as_mut()
                    && writer.write_all(bytes).await.is_err()
                {
                    stdin = None;
                }
            }
            ClientMessage::Resize(size) => {
                if let Some(pty) = &pty
                    && let Err(e) = resize(pty, size)
                {
                    tracing::debug!(error = %e, "exec: resizing the terminal failed");
                }
            }
            ClientMessage::Close(channel::STDIN) => {
                if let Some(mut writer) = stdin.take()
                    && tty
                {
                    // A terminal has no end of file: send the EOF character, as a user would.
                    let _ = writer.write_all(&[4]).await;
                }
            }
            ClientMessage::Close(_) | ClientMessage::Ignored => {}
        }
    }
}

fn resize(pty: &File, size: TerminalSize) -> io::Result<()> {
    let winsize = libc::winsize {
        ws_row: size.height,
        ws_col: size.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid for the call.
    if unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &winsize) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How the command ended.
#[derive(Debug, PartialEq, Eq)]
enum Exit {
    Code(i32),
    Signal(i32),
    Unknown(String),
}

/// Waits for `pid` (a child of this process) to end and reaps it.
fn wait_for_exit(pid: u32) -> Exit {
    let pid = pid as libc::pid_t;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a valid local.
        let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
        if reaped == pid {
            if libc::WIFEXITED(status) {
                return Exit::Code(libc::WEXITSTATUS(status));
            }
            if libc::WIFSIGNALED(status) {
                return Exit::Signal(libc::WTERMSIG(status));
            }
            continue;
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => {
                // Not our child (a runtime breaking the contract): wait for it to vanish.
                // SAFETY: signal 0 only checks that the process exists.
                while unsafe { libc::kill(pid, 0) } == 0 {
                    std::thread::sleep(Duration::from_millis(100));
                }
                return Exit::Unknown(format!(
                    "the exit code of process {pid} is unknown: it is not a child of the agent"
                ));
            }
            _ => return Exit::Unknown(format!("waiting for process {pid}: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;
    use std::process::{Command, Stdio};

    use super::*;

    fn request(query: &str) -> Result<ExecRequest, String> {
        parse_request(&Query::parse(Some(query)))
    }

    #[test]
    fn parses_exec_options() {
        let r = request("command=sh&command=-c&command=exit+3&stdout=true&stderr=true").unwrap();
        assert_eq!(r.command, vec!["sh", "-c", "exit 3"]);
        assert!(r.stdout && r.stderr && !r.stdin && !r.tty);
        // A terminal carries stderr on stdout.
        let r = request("command=sh&stdin=1&stdout=1&stderr=1&tty=1").unwrap();
        assert!(r.tty && !r.stderr);
        assert!(request("stdout=1").is_err());
        assert!(request("command=ls").is_err());
    }

    #[test]
    fn reaps_exit_codes_and_signals() {
        let child = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        assert_eq!(wait_for_exit(child.id()), Exit::Code(7));
        let child = Command::new("sh")
            .args(["-c", "kill -9 $$"])
            .spawn()
            .unwrap();
        assert_eq!(wait_for_exit(child.id()), Exit::Signal(9));
        // A pid that is not our child.
        assert!(matches!(wait_for_exit(u32::MAX / 2), Exit::Unknown(_)));
    }

    #[tokio::test]
    async fn pumps_output_into_channel_frames() {
        let mut child = Command::new("sh")
            .args(["-c", "echo out; echo err >&2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = File::from(OwnedFd::from(child.stdout.take().unwrap()));
        let stderr = File::from(OwnedFd::from(child.stderr.take().unwrap()));
        let (tx, mut rx) = mpsc::channel(8);
        let a = tokio::spawn(pump(stdout, channel::STDOUT, tx.clone()));
        let b = tokio::spawn(pump(stderr, channel::STDERR, tx));
        let mut frames = Vec::new();
        while let Some(frame) = rx.recv().await {
            frames.push(frame);
        }
        a.await.unwrap();
        b.await.unwrap();
        frames.sort();
        assert_eq!(frames, vec![b"\x01out\n".to_vec(), b"\x02err\n".to_vec()]);
        assert_eq!(wait_for_exit(child.id()), Exit::Code(0));
    }
}
