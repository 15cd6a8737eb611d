//! `kubectl logs` and `kubectl exec` end to end: stock kubectl → keel-control (in-process) →
//! the agent's streaming server (in-process, `keel_agent::streaming::serve`) over mutual TLS.
//!
//! The runtime behind the streaming server is a stand-in ([`HostRuntime`]): log files are
//! written by the test in the CRI format, and exec runs the command as a plain host process
//! (pipes, or a pty with `tty`), which is all the streaming server asks of a runtime. The
//! process runtime's own exec (into the container's namespaces) is tested with it.
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keel_agent::runtime::{
    ContainerConfig, ContainerId, ContainerState, ContainerStatus, ExecRequest, ExecResult,
    ExecSession, Result as RuntimeResult, Runtime, RuntimeError, SandboxConfig, SandboxId,
    SandboxStatus,
};
use keel_agent::streaming::{
    self, PodLookup, SERVING_CERT_ANNOTATION, ServingCert, StreamContainer, StreamPod,
    StreamingConfig,
};
use keel_tests::api_client::{Backend, Cluster};
use serde_json::{Value, json};

const NODE: &str = "stream-node";
const TS: &str = "2024-05-01T10:00:00.000000001Z";

/// A container of the stand-in runtime: its state, and for a "running" one optionally a real
/// process whose end makes it exited.
struct HostContainer {
    sandbox: SandboxId,
    name: String,
    state: ContainerState,
    process: Option<Child>,
}

/// A runtime stand-in: logs under `log_dir`, exec as host processes.
struct HostRuntime {
    log_dir: PathBuf,
    /// Sandbox id → (namespace, pod name), for log paths.
    sandboxes: Mutex<HashMap<SandboxId, (String, String)>>,
    containers: Mutex<HashMap<ContainerId, HostContainer>>,
}

impl HostRuntime {
    fn new(log_dir: &Path) -> Self {
        HostRuntime {
            log_dir: log_dir.to_path_buf(),
            sandboxes: Mutex::default(),
            containers: Mutex::default(),
        }
    }
}

fn unused<T>(what: &str) -> RuntimeResult<T> {
    Err(RuntimeError::Invalid(format!(
        "{what} is not part of this test"
    )))
}

#[async_trait]
impl Runtime for HostRuntime {
    fn version(&self) -> String {
        "host-test://0".into()
    }
    async fn run_sandbox(&self, _: &SandboxConfig) -> RuntimeResult<SandboxStatus> {
        unused("run_sandbox")
    }
    async fn stop_sandbox(&self, _: &SandboxId) -> RuntimeResult<()> {
        unused("stop_sandbox")
    }
    async fn remove_sandbox(&self, _: &SandboxId) -> RuntimeResult<()> {
        unused("remove_sandbox")
    }
    async fn sandbox_status(&self, _: &SandboxId) -> RuntimeResult<SandboxStatus> {
        unused("sandbox_status")
    }
    async fn list_sandboxes(&self) -> RuntimeResult<Vec<SandboxStatus>> {
        unused("list_sandboxes")
    }
    async fn create_container(
        &self,
        _: &SandboxId,
        _: &ContainerConfig,
    ) -> RuntimeResult<ContainerId> {
        unused("create_container")
    }
    async fn start_container(&self, _: &ContainerId) -> RuntimeResult<()> {
        unused("start_container")
    }
    async fn stop_container(&self, _: &ContainerId, _: Duration) -> RuntimeResult<()> {
        unused("stop_container")
    }
    async fn remove_container(&self, _: &ContainerId) -> RuntimeResult<()> {
        unused("remove_container")
    }
    async fn container_status(&self, id: &ContainerId) -> RuntimeResult<ContainerStatus> {
        let mut containers = self.containers.lock().unwrap();
        let c = containers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        if let Some(process) = c.process.as_mut()
            && process.try_wait().ok().flatten().is_some()
        {
            c.state = ContainerState::Exited;
        }
        Ok(ContainerStatus {
            id: id.clone(),
            sandbox: c.sandbox.clone(),
            name: c.name.clone(),
            image: "keel.local/busybox:latest".into(),
            image_id: String::new(),
            state: c.state,
            restart_count: 0,
            pid: None,
            created_at: std::time::SystemTime::now(),
            started_at: None,
            finished_at: None,
            exit_code: None,
            reason: None,
            message: None,
            log_path: PathBuf::new(),
        })
    }
    async fn list_containers(&self, _: Option<&SandboxId>) -> RuntimeResult<Vec<ContainerStatus>> {
        unused("list_containers")
    }
    async fn exec_sync(
        &self,
        _: &ContainerId,
        _: &[String],
        _: Duration,
    ) -> RuntimeResult<ExecResult> {
        unused("exec_sync")
    }
    async fn exec(&self, id: &ContainerId, request: &ExecRequest) -> RuntimeResult<ExecSession> {
        if !self.containers.lock().unwrap().contains_key(id) {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        let Some((program, args)) = request.command.split_first() else {
            return Err(RuntimeError::Invalid("no command".into()));
        };
        let mut command = Command::new(program);
        command.args(args);
        if request.tty {
            host_exec_tty(command)
        } else {
            host_exec_pipes(command, request)
        }
    }
    fn log_path(&self, sandbox: &SandboxId, container: &str, restart_count: u32) -> PathBuf {
        let (ns, pod) = self
            .sandboxes
            .lock()
            .unwrap()
            .get(sandbox)
            .cloned()
            .unwrap_or_default();
        self.log_dir
            .join(format!("{ns}_{pod}_{sandbox}"))
            .join(container)
            .join(format!("{restart_count}.log"))
    }
    async fn remove_pod_logs(&self, _: &SandboxId) -> RuntimeResult<()> {
        unused("remove_pod_logs")
    }
}

fn host_exec_pipes(mut command: Command, request: &ExecRequest) -> RuntimeResult<ExecSession> {
    let pipe_if = |wanted: bool| {
        if wanted {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    command
        .stdin(pipe_if(request.stdin))
        .stdout(pipe_if(request.stdout))
        .stderr(pipe_if(request.stderr));
    let mut child = command
        .spawn()
        .map_err(|e| RuntimeError::Invalid(format!("starting {:?}: {e}", request.command)))?;
    // The streaming server reaps the child (the `Child` handle is dropped without waiting).
    Ok(ExecSession {
        pid: child.id(),
        stdin: child.stdin.take().map(|s| File::from(OwnedFd::from(s))),
        stdout: child.stdout.take().map(|s| File::from(OwnedFd::from(s))),
        stderr: child.stderr.take().map(|s| File::from(OwnedFd::from(s))),
        pty: None,
    })
}

fn host_exec_tty(mut command: Command) -> RuntimeResult<ExecSession> {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors into valid locals; the name/termios/winsize
    // pointers may be null.
    if unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: openpty returned two fresh descriptors that nothing else owns.
    let (master, slave) = unsafe { (File::from_raw_fd(master), File::from_raw_fd(slave)) };
    command
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave.try_clone()?));
    // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop(slave);
    Ok(ExecSession {
        pid: child.id(),
        stdin: Some(master.try_clone()?),
        stdout: Some(master.try_clone()?),
        stderr: None,
        pty: Some(master),
    })
}

/// The agent's pod table, as the agent core would answer it.
#[derive(Default)]
struct Pods(Mutex<HashMap<(String, String), StreamPod>>);

#[async_trait]
impl PodLookup for Pods {
    async fn pod(&self, namespace: &str, name: &str) -> Option<StreamPod> {
        self.0
            .lock()
            .unwrap()
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
}

/// Everything one test run holds: the control plane, the agent's server and its stand-ins.
struct Setup {
    cluster: Cluster,
    runtime: Arc<HostRuntime>,
    pods: Arc<Pods>,
    server: streaming::StreamingServer,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Setup {
        let cluster = Cluster::start_with(Backend::Embedded, |config| config.controllers = None)
            .await
            .expect("keel-control starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, &cluster.running().ca_pem).unwrap();
        let runtime = Arc::new(HostRuntime::new(&dir.path().join("logs")));
        let pods = Arc::new(Pods::default());
        let mut config = StreamingConfig::new(0, &ca);
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.serving_cert = ServingCert::SelfSigned {
            dir: Some(dir.path().join("pki")),
            hosts: vec!["127.0.0.1".into()],
        };
        let server = streaming::serve(config, runtime.clone(), pods.clone())
            .await
            .expect("the streaming server starts");
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE,
                "annotations": {SERVING_CERT_ANNOTATION: server.serving_cert_sha256()},
            },
        });
        let created = cluster.post("/api/v1/nodes", node).await;
        assert!(created.status.is_success(), "{:?}", created.body);
        let status = json!({"status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": server.addr().port()}},
        }});
        let patched = cluster
            .patch(
                &format!("/api/v1/nodes/{NODE}/status"),
                "application/merge-patch+json",
                status,
            )
            .await;
        assert!(patched.status.is_success(), "{:?}", patched.body);
        Setup {
            cluster,
            runtime,
            pods,
            server,
            dir,
        }
    }

    /// Creates a pod with `containers` (bound to the node unless `node` is None) and registers
    /// it with the agent: each container at attempt `restart_count`, in `state`.
    async fn pod(
        &self,
        name: &str,
        containers: &[&str],
        node: Option<&str>,
        restart_count: u32,
        state: ContainerState,
    ) -> SandboxId {
        let specs: Vec<Value> = containers
            .iter()
            .map(|c| json!({"name": c, "image": "keel.local/busybox:latest"}))
            .collect();
        let mut spec = json!({"containers": specs});
        if let Some(node) = node {
            spec["nodeName"] = json!(node);
        }
        let created = self
            .cluster
            .post(
                "/api/v1/namespaces/default/pods",
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}),
            )
            .await;
        assert!(created.status.is_success(), "{:?}", created.body);
        let uid = created.body["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string();
        let sandbox = SandboxId(uid.clone());
        self.runtime
            .sandboxes
            .lock()
            .unwrap()
            .insert(sandbox.clone(), ("default".into(), name.into()));
        let mut stream_containers = Vec::new();
        for c in containers {
            let id = ContainerId(format!("{uid}-{c}-{restart_count}"));
            self.runtime.containers.lock().unwrap().insert(
                id.clone(),
                HostContainer {
                    sandbox: sandbox.clone(),
                    name: c.to_string(),
                    state,
                    process: None,
                },
            );
            stream_containers.push(StreamContainer {
                name: c.to_string(),
                id: Some(id),
                restart_count,
            });
        }
        self.pods.0.lock().unwrap().insert(
            ("default".into(), name.into()),
            StreamPod {
                sandbox: sandbox.clone(),
                containers: stream_containers,
            },
        );
        sandbox
    }

    fn write_log(&self, sandbox: &SandboxId, container: &str, attempt: u32, records: &str) {
        let path = self.runtime.log_path(sandbox, container, attempt);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, records).unwrap();
    }

    fn kubectl(&self) -> Kubectl {
        Kubectl {
            kubeconfig: self.cluster.running().kubeconfig.clone(),
        }
    }
}

fn kubectl_bin() -> &'static str {
    assert!(
        Path::new("/usr/bin/kubectl").exists(),
        "kubectl is not installed at /usr/bin/kubectl (it is on the machine image; install kubectl to run these tests)"
    );
    "/usr/bin/kubectl"
}

struct Kubectl {
    kubeconfig: PathBuf,
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(kubectl_bin());
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--request-timeout=30s")
            .args(args)
            .env_remove("KUBECONFIG")
            .kill_on_drop(true);
        c
    }

    /// Runs kubectl (bounded), feeding `stdin`.
    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Outcome {
        let mut c = self.command(args);
        c.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c.spawn().expect("kubectl starts");
        if let Some(text) = stdin {
            let mut input = child.stdin.take().unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut input, text.as_bytes())
                .await
                .unwrap();
        }
        let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish within 60 s"))
            .expect("kubectl runs");
        Outcome {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    async fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin).await;
        assert_eq!(
            out.code,
            Some(0),
            "kubectl {args:?} failed: {}\nstdout: {}",
            out.stderr,
            out.stdout
        );
        out.stdout
    }
}

fn records(lines: &[(&str, &str, &str)]) -> String {
    lines
        .iter()
        .map(|(stream, tag, text)| format!("{TS} {stream} {tag} {text}\n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_through_the_control_plane() {
    let setup = Setup::start().await;
    let kubectl = setup.kubectl();
    let sandbox = setup
        .pod("web", &["app"], Some(NODE), 1, ContainerState::Running)
        .await;
    setup.write_log(
        &sandbox,
        "app",
        0,
        &records(&[("stdout", "F", "first run"), ("stderr", "F", "crashed")]),
    );
    setup.write_log(
        &sandbox,
        "app",
        1,
        &records(&[
            ("stdout", "F", "one"),
            ("stderr", "F", "two"),
            ("stdout", "P", "thr"),
            ("stdout", "F", "ee"),
            ("stdout", "F", "four"),
        ]),
    );

    assert_eq!(
        kubectl.ok(&["logs", "web"], None).await,
        "one\ntwo\nthree\nfour\n"
    );
    assert_eq!(
        kubectl.ok(&["logs", "web", "--previous"], None).await,
        "first run\ncrashed\n"
    );
    assert_eq!(
        kubectl.ok(&["logs", "web", "--tail=2"], None).await,
        "three\nfour\n"
    );
    assert_eq!(
        kubectl
            .ok(&["logs", "web", "--tail=1", "--timestamps"], None)
            .await,
        format!("{TS} four\n")
    );
    assert_eq!(
        kubectl
            .ok(&["logs", "web", "-c", "app", "--limit-bytes=6"], None)
            .await,
        "one\ntw"
    );

    // A pod whose container never restarted has no previous log.
    let fresh = setup
        .pod("fresh", &["app"], Some(NODE), 0, ContainerState::Running)
        .await;
    setup.write_log(&fresh, "app", 0, &records(&[("stdout", "F", "hello")]));
    let out = kubectl.run(&["logs", "fresh", "--previous"], None).await;
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr
            .contains("previous terminated container \"app\" in pod \"fresh\" not found"),
        "{}",
        out.stderr
    );

    // Errors from the control plane: unknown pod, unbound pod, ambiguous container.
    let out = kubectl.run(&["logs", "nope"], None).await;
    assert!(
        out.stderr.contains("pods \"nope\" not found"),
        "{}",
        out.stderr
    );
    setup
        .pod("pending", &["app"], None, 0, ContainerState::Created)
        .await;
    let out = kubectl.run(&["logs", "pending"], None).await;
    assert!(
        out.stderr
            .contains("pod pending does not have a host assigned"),
        "{}",
        out.stderr
    );
    setup
        .pod("pair", &["a", "b"], Some(NODE), 0, ContainerState::Running)
        .await;
    let reply = setup
        .cluster
        .get("/api/v1/namespaces/default/pods/pair/log")
        .await;
    assert_eq!(reply.status.as_u16(), 400, "{:?}", reply.body);
    assert_eq!(
        reply.body["message"],
        "a container name must be specified for pod pair, choose one of: [a b]"
    );

    // Discovery lists the subresources.
    let v1 = setup.cluster.get("/api/v1").await;
    let names: Vec<&str> = v1.body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(
        names.contains(&"pods/log") && names.contains(&"pods/exec"),
        "{names:?}"
    );
    drop(setup);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_follow_ends_when_the_container_exits() {
    let setup = Setup::start().await;
    let kubectl = setup.kubectl();
    let sandbox = setup
        .pod("ticker", &["app"], Some(NODE), 0, ContainerState::Running)
        .await;
    // The "container": a process printing a line every 100 ms, its output written to the
    // log file in the CRI format by a thread standing in for the shim.
    let mut process = Command::new("sh")
        .args([
            "-c",
            "i=0; while [ $i -lt 600 ]; do echo tick $i; i=$((i+1)); sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = process.stdout.take().unwrap();
    let path = setup.runtime.log_path(&sandbox, "app", 0);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut log = File::create(&path).unwrap();
    let shim = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if log
                .write_all(format!("{TS} stdout F {line}\n").as_bytes())
                .is_err()
            {
                break;
            }
        }
    });
    let id = setup.pods.0.lock().unwrap()[&("default".to_string(), "ticker".to_string())]
        .containers[0]
        .id
        .clone()
        .unwrap();
    setup
        .runtime
        .containers
        .lock()
        .unwrap()
        .get_mut(&id)
        .unwrap()
        .process = Some(process);

    let mut follow = kubectl
        .command(&["logs", "-f", "ticker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl starts");
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(follow.stdout.take().unwrap()));
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 5 {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
            .await
            .expect("lines arrive while following")
            .unwrap()
            .expect("the stream stays open while the container runs");
        seen.push(line);
    }
    assert_eq!(&seen[..3], ["tick 0", "tick 1", "tick 2"]);

    // The container dies: the follow drains what was written and ends by itself.
    {
        let mut containers = setup.runtime.containers.lock().unwrap();
        let process = containers.get_mut(&id).unwrap().process.as_mut().unwrap();
        process.kill().unwrap();
        process.wait().unwrap();
    }
    shim.join().unwrap();
    let written = std::fs::read_to_string(&path).unwrap().lines().count();
    while let Some(line) = tokio::time::timeout_at(deadline.into(), lines.next_line())
        .await
        .expect("kubectl logs -f ends once the container has exited")
        .unwrap()
    {
        seen.push(line);
    }
    let status = tokio::time::timeout_at(deadline.into(), follow.wait())
        .await
        .expect("kubectl exits")
        .unwrap();
    assert!(status.success());
    assert_eq!(seen.len(), written, "every line written is shown once");
    assert_eq!(seen.last().unwrap(), &format!("tick {}", written - 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_through_the_control_plane() {
    let setup = Setup::start().await;
    let kubectl = setup.kubectl();
    setup
        .pod("shell", &["main"], Some(NODE), 0, ContainerState::Running)
        .await;

    assert_eq!(
        kubectl
            .ok(&["exec", "shell", "--", "echo", "hi"], None)
            .await,
        "hi\n"
    );
    // stdin, closed at its end (v5 close signal) so `cat` finishes.
    assert_eq!(
        kubectl
            .ok(
                &["exec", "-i", "shell", "--", "cat"],
                Some("hello\nworld\n")
            )
            .await,
        "hello\nworld\n"
    );
    // stdout and stderr stay apart; the exit code comes back.
    let out = kubectl
        .run(
            &[
                "exec",
                "shell",
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 3",
            ],
            None,
        )
        .await;
    assert_eq!(out.code, Some(3), "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "out\n");
    assert!(out.stderr.starts_with("err\n"), "{}", out.stderr);
    assert!(
        out.stderr.contains("command terminated with exit code 3"),
        "{}",
        out.stderr
    );

    // A command that can't start is reported, not hung on.
    let out = kubectl
        .run(&["exec", "shell", "--", "/no/such/binary"], None)
        .await;
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("/no/such/binary"), "{}", out.stderr);

    // A terminal: kubectl -t needs one itself, which `script` provides.
    let script = format!(
        "{} --kubeconfig {} exec -it shell -- sh -c 'tty; echo done'",
        kubectl_bin(),
        setup.cluster.running().kubeconfig.display()
    );
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("script")
            .args(["-qec", &script, "/dev/null"])
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("kubectl exec -it finishes")
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("/dev/pts/"),
        "a terminal on the remote side: {text}"
    );
    assert!(text.contains("done\r\n"), "{text}");

    // SPDY (kubectl's fallback) is refused with a clear message.
    let reply = setup
        .cluster
        .request(
            reqwest::Method::POST,
            "/api/v1/namespaces/default/pods/shell/exec?command=true&stdout=true",
        )
        .header("X-Stream-Protocol-Version", "v4.channel.k8s.io")
        .header("Upgrade", "SPDY/3.1")
        .header("Connection", "Upgrade")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 400);
    let body: Value = reply.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("SPDY is not supported"),
        "{body}"
    );

    // The container must run.
    setup
        .pod("stopped", &["main"], Some(NODE), 0, ContainerState::Exited)
        .await;
    let out = kubectl.run(&["exec", "stopped", "--", "true"], None).await;
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("is not running"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_only_accepts_the_control_plane() {
    let setup = Setup::start().await;
    setup
        .pod("web", &["app"], Some(NODE), 0, ContainerState::Running)
        .await;
    let url = format!(
        "https://127.0.0.1:{}/containerLogs/default/web/app",
        setup.server.addr().port()
    );
    let trust_agent = reqwest::Certificate::from_pem(setup.server.serving_cert_pem().as_bytes())
        .expect("the serving certificate parses");
    // No client certificate: 401.
    let anonymous = reqwest::Client::builder()
        .add_root_certificate(trust_agent.clone())
        .build()
        .unwrap();
    let reply = anonymous.get(&url).send().await.expect("the agent answers");
    assert_eq!(reply.status().as_u16(), 401);
    let body: Value = reply.json().await.unwrap();
    assert_eq!(body["kind"], "Status");
    // The admin's bearer token is no key to the agent either.
    let reply = anonymous
        .get(&url)
        .bearer_auth(&setup.cluster.running().token)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 401);
    // A client certificate from another CA: the handshake fails.
    let stranger = streaming::tls::self_signed(&["intruder".into()]).unwrap();
    let identity = reqwest::Identity::from_pem(format!("{}{}", stranger.1, stranger.0).as_bytes())
        .expect("identity");
    let impostor = reqwest::Client::builder()
        .add_root_certificate(trust_agent)
        .identity(identity)
        .build()
        .unwrap();
    assert!(impostor.get(&url).send().await.is_err());

    // An agent whose certificate isn't the pinned one is refused by keel-control (502).
    let wrong_pin =
        json!({"metadata": {"annotations": {SERVING_CERT_ANNOTATION: "00".repeat(32)}}});
    let patched = setup
        .cluster
        .patch(
            &format!("/api/v1/nodes/{NODE}"),
            "application/merge-patch+json",
            wrong_pin,
        )
        .await;
    assert!(patched.status.is_success(), "{:?}", patched.body);
    let reply = setup
        .cluster
        .get("/api/v1/namespaces/default/pods/web/log")
        .await;
    assert_eq!(reply.status.as_u16(), 502, "{:?}", reply.body);
    assert!(
        reply.body["message"]
            .as_str()
            .unwrap_or("")
            .contains("pinned"),
        "{:?}",
        reply.body
    );
    // An agent that is down: 502 naming the node.
    let port = setup.server.addr().port();
    let Setup {
        cluster,
        server,
        dir,
        ..
    } = setup;
    server.stop().await;
    let restore = json!({"metadata": {"annotations": {SERVING_CERT_ANNOTATION: null}}});
    cluster
        .patch(
            &format!("/api/v1/nodes/{NODE}"),
            "application/merge-patch+json",
            restore,
        )
        .await;
    let reply = cluster.get("/api/v1/namespaces/default/pods/web/log").await;
    assert_eq!(reply.status.as_u16(), 502, "{:?}", reply.body);
    let message = reply.body["message"].as_str().unwrap_or("");
    assert!(
        message.contains(NODE) && message.contains(&port.to_string()),
        "{message}"
    );
    drop(dir);
}

/// How many descriptors of this process have `path` open.
fn open_count(path: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|target| target == path))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_ends_when_kubectl_goes_away() {
    let setup = Setup::start().await;
    let sandbox = setup
        .pod("quiet", &["app"], Some(NODE), 0, ContainerState::Running)
        .await;
    setup.write_log(
        &sandbox,
        "app",
        0,
        &records(&[("stdout", "F", "only line")]),
    );
    let path = setup.runtime.log_path(&sandbox, "app", 0);
    let mut follow = setup
        .kubectl()
        .command(&["logs", "-f", "quiet"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("kubectl starts");
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(follow.stdout.take().unwrap()));
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the log arrives")
        .unwrap();
    assert_eq!(first.as_deref(), Some("only line"));
    assert_eq!(open_count(&path), 1, "the agent follows the log");
    follow.kill().await.unwrap();
    // The container runs on and writes nothing: only the disconnect can end the follow.
    let deadline = Instant::now() + Duration::from_secs(20);
    while open_count(&path) > 0 {
        assert!(
            Instant::now() < deadline,
            "the agent still follows the log 20 s after kubectl went away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
