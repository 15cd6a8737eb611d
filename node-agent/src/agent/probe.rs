//! Container probes as kubelet's prober runs them: startup, readiness and liveness probes
//! (`exec` through the runtime, `httpGet` and `tcpSocket` to the pod IP) on their own
//! schedule (`initialDelaySeconds`, `periodSeconds`, `timeoutSeconds`), with a result that
//! only flips after `successThreshold` consecutive successes or `failureThreshold`
//! consecutive failures. Readiness and liveness wait for the startup probe to pass.
//!
//! One task per running container probes it and sends each *change* of a probe's result to
//! the pod worker, which marks the container started or ready, or restarts it on a liveness
//! or startup failure.
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::runtime::{ContainerId, Runtime};

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Startup,
    Readiness,
    Liveness,
}

impl ProbeKind {
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Liveness => "Liveness",
        }
    }
}

/// One probe attempt's or a probe's thresholded result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

/// What a probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Exec(Vec<String>),
    Http {
        https: bool,
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
    /// A probe the agent cannot run (e.g. gRPC): it always fails, with this message.
    Unsupported(String),
}

/// A probe with kubelet's defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

fn seconds(v: Option<i32>, default: u64, min: u64) -> Duration {
    let s = v.and_then(|v| u64::try_from(v).ok()).unwrap_or(default);
    Duration::from_secs(s.max(min))
}

fn threshold(v: Option<i32>, default: u32) -> u32 {
    v.and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

/// A container port by number or name.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid port {n}")),
        IntOrString::String(s) => {
            if let Ok(n) = s.parse::<u16>() {
                return Ok(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("couldn't find port {s:?} in container {}", container.name))
        }
    }
}

/// An `httpGet` action (probes and lifecycle hooks).
pub fn http_action(http: &HTTPGetAction, container: &Container) -> Action {
    match resolve_port(&http.port, container) {
        Ok(port) => Action::Http {
            https: http.scheme.as_deref() == Some("HTTPS"),
            host: http.host.clone().filter(|h| !h.is_empty()),
            port,
            path: http
                .path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into()),
            headers: http
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        },
        Err(e) => Action::Unsupported(e),
    }
}

impl ProbeSpec {
    /// The probe of a container's spec, defaults applied (kubelet: period 10 s, timeout 1 s,
    /// success 1, failure 3).
    pub fn from_probe(probe: &Probe, kind: ProbeKind, container: &Container) -> ProbeSpec {
        let action = if let Some(exec) = &probe.exec {
            Action::Exec(exec.command.clone().unwrap_or_default())
        } else if let Some(http) = &probe.http_get {
            http_action(http, container)
        } else if let Some(tcp) = &probe.tcp_socket {
            match resolve_port(&tcp.port, container) {
                Ok(port) => Action::Tcp {
                    host: tcp.host.clone().filter(|h| !h.is_empty()),
                    port,
                },
                Err(e) => Action::Unsupported(e),
            }
        } else if probe.grpc.is_some() {
            Action::Unsupported("gRPC probes are not supported by keel-agent".into())
        } else {
            Action::Unsupported("the probe has no handler".into())
        };
        let success_threshold = match kind {
            // Liveness and startup probes must have successThreshold 1.
            ProbeKind::Readiness => threshold(probe.success_threshold, 1),
            _ => 1,
        };
        ProbeSpec {
            action,
            initial_delay: seconds(probe.initial_delay_seconds, 0, 0),
            period: seconds(probe.period_seconds, 10, 1),
            timeout: seconds(probe.timeout_seconds, 1, 1),
            success_threshold,
            failure_threshold: threshold(probe.failure_threshold, 3),
        }
    }
}

/// A probe's thresholded result, fed one attempt at a time.
#[derive(Clone, Debug)]
pub struct ProbeState {
    pub result: Option<Outcome>,
    last: Option<Outcome>,
    run: u32,
    success_threshold: u32,
    failure_threshold: u32,
}

impl ProbeState {
    /// A probe's state before its first attempt: readiness starts failed, liveness
    /// succeeded, startup unknown.
    pub fn new(kind: ProbeKind, spec: &ProbeSpec) -> ProbeState {
        ProbeState {
            result: match kind {
                ProbeKind::Readiness => Some(Outcome::Failure),
                ProbeKind::Liveness => Some(Outcome::Success),
                ProbeKind::Startup => None,
            },
            last: None,
            run: 0,
            success_threshold: spec.success_threshold,
            failure_threshold: spec.failure_threshold,
        }
    }

    /// Records an attempt; returns the new result when it changed.
    pub fn record(&mut self, outcome: Outcome) -> Option<Outcome> {
        if self.last == Some(outcome) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(outcome);
            self.run = 1;
        }
        let needed = match outcome {
            Outcome::Success => self.success_threshold,
            Outcome::Failure => self.failure_threshold,
        };
        if self.run < needed || self.result == Some(outcome) {
            return None;
        }
        self.result = Some(outcome);
        Some(outcome)
    }

    /// Starts counting afresh (after a liveness restart).
    pub fn reset_run(&mut self) {
        self.run = 0;
        self.last = None;
    }
}

/// A probe result change, sent to the pod worker.
#[derive(Clone, Debug)]
pub struct ProbeEvent {
    pub container: ContainerId,
    pub kind: ProbeKind,
    pub outcome: Outcome,
    /// Why the last attempt failed (for logs and the restart message).
    pub message: String,
}

/// Runs one attempt of `action` against the container (pod IP for network probes).
pub async fn run_action(
    action: &Action,
    runtime: &Arc<dyn Runtime>,
    container: &ContainerId,
    pod_ip: Option<Ipv4Addr>,
    timeout: Duration,
) -> (Outcome, String) {
    let target = |host: &Option<String>| -> Result<IpAddr, String> {
        match host {
            Some(h) => h
                .parse::<IpAddr>()
                .map_err(|_| format!("probe host {h:?} is not an IP address")),
            None => pod_ip
                .map(IpAddr::V4)
                .ok_or_else(|| "the pod has no IP address".to_string()),
        }
    };
    match action {
        Action::Exec(command) => match runtime.exec_sync(container, command, timeout).await {
            Ok(r) if r.exit_code == 0 => (Outcome::Success, String::new()),
            Ok(r) => {
                let mut out = String::from_utf8_lossy(&r.stdout).into_owned();
                out.push_str(&String::from_utf8_lossy(&r.stderr));
                out.truncate(1024);
                (
                    Outcome::Failure,
                    format!(
                        "command {command:?} exited with {}: {}",
                        r.exit_code,
                        out.trim()
                    ),
                )
            }
            Err(e) => (Outcome::Failure, format!("exec {command:?}: {e}")),
        },
        Action::Tcp { host, port } => match target(host) {
            Ok(ip) => match tokio::time::timeout(timeout, TcpStream::connect((ip, *port))).await {
                Ok(Ok(_)) => (Outcome::Success, String::new()),
                Ok(Err(e)) => (Outcome::Failure, format!("dial tcp {ip}:{port}: {e}")),
                Err(_) => (
                    Outcome::Failure,
                    format!("dial tcp {ip}:{port}: i/o timeout"),
                ),
            },
            Err(e) => (Outcome::Failure, e),
        },
        Action::Http {
            https,
            host,
            port,
            path,
            headers,
        } => match target(host) {
            Ok(ip) => {
                let attempt = async {
                    if *https {
                        // No TLS client here: an HTTPS probe checks that the port accepts.
                        TcpStream::connect((ip, *port)).await.map(|_| 200)
                    } else {
                        http_get(ip, *port, path, headers).await
                    }
                };
                match tokio::time::timeout(timeout, attempt).await {
                    Ok(Ok(code)) if (200..400).contains(&code) => (Outcome::Success, String::new()),
                    Ok(Ok(code)) => (
                        Outcome::Failure,
                        format!("HTTP probe failed with statuscode: {code}"),
                    ),
                    Ok(Err(e)) => (
                        Outcome::Failure,
                        format!("Get \"http://{ip}:{port}{path}\": {e}"),
                    ),
                    Err(_) => (
                        Outcome::Failure,
                        format!(
                            "Get \"http://{ip}:{port}{path}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                        ),
                    ),
                }
            }
            Err(e) => (Outcome::Failure, e),
        },
        Action::Unsupported(message) => (Outcome::Failure, message.clone()),
    }
}

/// A minimal HTTP/1.1 GET; returns the status code.
async fn http_get(
    ip: IpAddr,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect((ip, port)).await?;
    let host = match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    };
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if !has("host") {
        request.push_str(&format!("Host: {host}\r\n"));
    }
    if !has("user-agent") {
        request.push_str("User-Agent: kube-probe/1.33\r\n");
    }
    if !has("accept") {
        request.push_str("Accept: */*\r\n");
    }
    for (k, v) in headers {
        if k.contains(['\r', '\n']) || v.contains(['\r', '\n']) {
            continue;
        }
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.contains(&b'\n') || buf.len() > 4096 {
            break;
        }
    }
    parse_status_line(&buf).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response")
    })
}

/// The status code of an HTTP response's first line.
pub fn parse_status_line(response: &[u8]) -> Option<u16> {
    let line_end = response.iter().position(|b| *b == b'\n')?;
    let line = std::str::from_utf8(&response[..line_end]).ok()?;
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// The probes of one running container.
pub struct ContainerProbes {
    pub container: ContainerId,
    pub startup: Option<ProbeSpec>,
    pub readiness: Option<ProbeSpec>,
    pub liveness: Option<ProbeSpec>,
    /// When the container started (initial delays count from it).
    pub started_at: SystemTime,
    /// The startup probe already passed (e.g. an adopted container reported started).
    pub already_started: bool,
    /// The readiness probe already passed (an adopted container reported ready).
    pub already_ready: bool,
    pub pod_ip: Option<Ipv4Addr>,
}

impl ContainerProbes {
    /// The probes of `container` (None when it has none).
    pub fn of(container: &Container) -> (Option<ProbeSpec>, Option<ProbeSpec>, Option<ProbeSpec>) {
        let spec = |p: &Option<Probe>, kind| {
            p.as_ref()
                .map(|p| ProbeSpec::from_probe(p, kind, container))
        };
        (
            spec(&container.startup_probe, ProbeKind::Startup),
            spec(&container.readiness_probe, ProbeKind::Readiness),
            spec(&container.liveness_probe, ProbeKind::Liveness),
        )
    }
}

struct Scheduled {
    kind: ProbeKind,
    spec: ProbeSpec,
    state: ProbeState,
    due: tokio::time::Instant,
}

/// Probes a container until the task is dropped or a liveness/startup failure is reported.
pub async fn run(
    probes: ContainerProbes,
    runtime: Arc<dyn Runtime>,
    events: mpsc::UnboundedSender<ProbeEvent>,
) {
    let now_wall = SystemTime::now();
    let now = tokio::time::Instant::now();
    let since_start = now_wall
        .duration_since(probes.started_at)
        .unwrap_or(Duration::ZERO);
    let first_due = |spec: &ProbeSpec| now + spec.initial_delay.saturating_sub(since_start);
    let mut started = probes.startup.is_none() || probes.already_started;
    let mut scheduled: Vec<Scheduled> = Vec::new();
    for (kind, spec) in [
        (ProbeKind::Startup, probes.startup),
        (ProbeKind::Readiness, probes.readiness),
        (ProbeKind::Liveness, probes.liveness),
    ] {
        let Some(spec) = spec else { continue };
        let mut state = ProbeState::new(kind, &spec);
        if kind == ProbeKind::Readiness && probes.already_ready {
            state.result = Some(Outcome::Success);
        }
        if kind == ProbeKind::Startup && started {
            continue;
        }
        scheduled.push(Scheduled {
            kind,
            due: first_due(&spec),
            spec,
            state,
        });
    }
    loop {
        let active = scheduled
            .iter_mut()
            .filter(|s| (s.kind == ProbeKind::Startup) != started)
            .min_by_key(|s| s.due);
        let Some(next) = active else { return };
        tokio::time::sleep_until(next.due).await;
        let (outcome, message) = run_action(
            &next.spec.action,
            &runtime,
            &probes.container,
            probes.pod_ip,
            next.spec.timeout,
        )
        .await;
        next.due = tokio::time::Instant::now() + next.spec.period;
        let kind = next.kind;
        if let Some(changed) = next.state.record(outcome) {
            let fatal = changed == Outcome::Failure && kind != ProbeKind::Readiness;
            let event = ProbeEvent {
                container: probes.container.clone(),
                kind,
                outcome: changed,
                message,
            };
            if events.send(event).is_err() {
                return;
            }
            if kind == ProbeKind::Startup && changed == Outcome::Success {
                started = true;
                // Readiness and liveness start now.
                let now = tokio::time::Instant::now();
                for s in &mut scheduled {
                    if s.kind != ProbeKind::Startup {
                        s.due = now;
                    }
                }
                scheduled.retain(|s| s.kind != ProbeKind::Startup);
            }
            if fatal {
                // The worker restarts the container; a new task probes the new one.
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, ExecAction, TCPSocketAction};

    fn spec(success: u32, failure: u32) -> ProbeSpec {
        ProbeSpec {
            action: Action::Unsupported(String::new()),
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    use Outcome::{Failure as F, Success as S};

    fn feed(state: &mut ProbeState, outcomes: &[Outcome]) -> Vec<Option<Outcome>> {
        outcomes.iter().map(|o| state.record(*o)).collect()
    }

    #[test]
    fn readiness_needs_consecutive_successes_and_failures() {
        let mut state = ProbeState::new(ProbeKind::Readiness, &spec(2, 3));
        assert_eq!(state.result, Some(F));
        assert_eq!(feed(&mut state, &[S]), [None]);
        assert_eq!(feed(&mut state, &[F, S]), [None, None], "the run restarts");
        assert_eq!(feed(&mut state, &[S]), [Some(S)]);
        assert_eq!(
            feed(&mut state, &[S, S]),
            [None, None],
            "no change, no event"
        );
        assert_eq!(feed(&mut state, &[F, F]), [None, None]);
        assert_eq!(feed(&mut state, &[F]), [Some(F)]);
        assert_eq!(feed(&mut state, &[F]), [None]);
        assert_eq!(state.result, Some(F));
    }

    #[test]
    fn liveness_starts_alive_and_fails_after_the_threshold() {
        let mut state = ProbeState::new(ProbeKind::Liveness, &spec(1, 3));
        assert_eq!(state.result, Some(S));
        assert_eq!(feed(&mut state, &[S, F, F, S, F, F]), [None; 6]);
        assert_eq!(feed(&mut state, &[F]), [Some(F)]);
        state.reset_run();
        assert_eq!(feed(&mut state, &[S]), [Some(S)]);
    }

    #[test]
    fn startup_is_unknown_until_decided() {
        let mut state = ProbeState::new(ProbeKind::Startup, &spec(1, 2));
        assert_eq!(state.result, None);
        assert_eq!(feed(&mut state, &[F]), [None]);
        assert_eq!(feed(&mut state, &[S]), [Some(S)]);
        let mut failing = ProbeState::new(ProbeKind::Startup, &spec(1, 2));
        assert_eq!(feed(&mut failing, &[F, F]), [None, Some(F)]);
    }

    fn container() -> Container {
        Container {
            name: "web".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn probe_defaults_and_named_ports() {
        let probe = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String("http".into()),
                path: Some("/healthz".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = ProbeSpec::from_probe(&probe, ProbeKind::Readiness, &container());
        assert_eq!(s.period, Duration::from_secs(10));
        assert_eq!(s.timeout, Duration::from_secs(1));
        assert_eq!((s.success_threshold, s.failure_threshold), (1, 3));
        assert_eq!(
            s.action,
            Action::Http {
                https: false,
                host: None,
                port: 8080,
                path: "/healthz".into(),
                headers: vec![],
            }
        );
        let probe = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("nope".into()),
                host: None,
            }),
            success_threshold: Some(5),
            period_seconds: Some(0),
            ..Default::default()
        };
        let s = ProbeSpec::from_probe(&probe, ProbeKind::Liveness, &container());
        assert!(matches!(s.action, Action::Unsupported(_)));
        assert_eq!(
            s.success_threshold, 1,
            "liveness success threshold is always 1"
        );
        assert_eq!(s.period, Duration::from_secs(1));
        let probe = Probe {
            exec: Some(ExecAction {
                command: Some(vec!["true".into()]),
            }),
            initial_delay_seconds: Some(5),
            success_threshold: Some(2),
            ..Default::default()
        };
        let s = ProbeSpec::from_probe(&probe, ProbeKind::Readiness, &container());
        assert_eq!(s.action, Action::Exec(vec!["true".into()]));
        assert_eq!(s.initial_delay, Duration::from_secs(5));
        assert_eq!(s.success_threshold, 2);
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\nX: y\r\n"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"garbage\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 200"), None);
    }

    #[tokio::test]
    async fn http_and_tcp_probes_against_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1024];
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buf[..n]).to_string();
                    let code =
                        if request.starts_with("GET /ok ") && request.contains("X-Probe: yes") {
                            "200 OK"
                        } else {
                            "500 Internal Server Error"
                        };
                    let _ = conn
                        .write_all(
                            format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let runtime: Arc<dyn Runtime> = Arc::new(NoRuntime);
        let id = ContainerId("x".into());
        let ip = Some(Ipv4Addr::LOCALHOST);
        let http = |path: &str| Action::Http {
            https: false,
            host: None,
            port,
            path: path.into(),
            headers: vec![("X-Probe".into(), "yes".into())],
        };
        let t = Duration::from_secs(2);
        assert_eq!(run_action(&http("/ok"), &runtime, &id, ip, t).await.0, S);
        let (outcome, message) = run_action(&http("/bad"), &runtime, &id, ip, t).await;
        assert_eq!(outcome, F);
        assert!(message.contains("500"), "{message}");
        let tcp = Action::Tcp { host: None, port };
        assert_eq!(run_action(&tcp, &runtime, &id, ip, t).await.0, S);
        // Nothing listens on port 1.
        let closed = Action::Tcp {
            host: None,
            port: 1,
        };
        assert_eq!(run_action(&closed, &runtime, &id, ip, t).await.0, F);
        assert_eq!(
            run_action(&tcp, &runtime, &id, None, t).await.0,
            F,
            "no pod IP"
        );
    }

    /// A runtime that only exists to satisfy signatures in network probe tests.
    struct NoRuntime;

    #[async_trait::async_trait]
    impl Runtime for NoRuntime {
        fn version(&self) -> String {
            String::new()
        }
        async fn run_sandbox(
            &self,
            _: &crate::runtime::SandboxConfig,
        ) -> crate::runtime::Result<crate::runtime::SandboxStatus> {
            Err(crate::runtime::RuntimeError::Invalid("unused".into()))
        }
        async fn stop_sandbox(&self, _: &crate::runtime::SandboxId) -> crate::runtime::Result<()> {
            Ok(())
        }
        async fn remove_sandbox(
            &self,
            _: &crate::runtime::SandboxId,
        ) -> crate::runtime::Result<()> {
            Ok(())
        }
        async fn sandbox_status(
            &self,
            id: &crate::runtime::SandboxId,
        ) -> crate::runtime::Result<crate::runtime::SandboxStatus> {
            Err(crate::runtime::RuntimeError::NotFound(id.to_string()))
        }
        async fn list_sandboxes(
            &self,
        ) -> crate::runtime::Result<Vec<crate::runtime::SandboxStatus>> {
            Ok(vec![])
        }
        async fn create_container(
            &self,
            _: &crate::runtime::SandboxId,
            _: &crate::runtime::ContainerConfig,
        ) -> crate::runtime::Result<ContainerId> {
            Err(crate::runtime::RuntimeError::Invalid("unused".into()))
        }
        async fn start_container(&self, _: &ContainerId) -> crate::runtime::Result<()> {
            Ok(())
        }
        async fn stop_container(&self, _: &ContainerId, _: Duration) -> crate::runtime::Result<()> {
            Ok(())
        }
        async fn remove_container(&self, _: &ContainerId) -> crate::runtime::Result<()> {
            Ok(())
        }
        async fn container_status(
            &self,
            id: &ContainerId,
        ) -> crate::runtime::Result<crate::runtime::ContainerStatus> {
            Err(crate::runtime::RuntimeError::NotFound(id.to_string()))
        }
        async fn list_containers(
            &self,
            _: Option<&crate::runtime::SandboxId>,
        ) -> crate::runtime::Result<Vec<crate::runtime::ContainerStatus>> {
            Ok(vec![])
        }
        async fn exec_sync(
            &self,
            _: &ContainerId,
            _: &[String],
            _: Duration,
        ) -> crate::runtime::Result<crate::runtime::ExecResult> {
            Err(crate::runtime::RuntimeError::Invalid("unused".into()))
        }
        async fn exec(
            &self,
            _: &ContainerId,
            _: &crate::runtime::ExecRequest,
        ) -> crate::runtime::Result<crate::runtime::ExecSession> {
            Err(crate::runtime::RuntimeError::Invalid("unused".into()))
        }
        fn log_path(&self, _: &crate::runtime::SandboxId, _: &str, _: u32) -> std::path::PathBuf {
            std::path::PathBuf::new()
        }
        async fn remove_pod_logs(
            &self,
            _: &crate::runtime::SandboxId,
        ) -> crate::runtime::Result<()> {
            Ok(())
        }
    }
}
