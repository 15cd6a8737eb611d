//! The process runtime with real containers (root only): each test runs a whole node — the
//! runtime, its pods' veths — inside a private network namespace (a thread that unshares and
//! drives a current-thread tokio runtime), with its own root/run/log/image directories and its
//! own cgroup parent (`keel-test-<pid>-<n>`), all removed on every path. The image is built in
//! the test from Debian's `/bin/busybox` (busybox-static), or the test is skipped.
use std::fs;
use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use keel_agent::runtime::process::cgroups::Cgroups;
use keel_agent::runtime::process::container::proc_start_time;
use keel_agent::runtime::process::images;
use keel_agent::runtime::process::network::unmount_netns_dir;
use keel_agent::runtime::process::runtime::{ProcessConfig, ProcessRuntime, mounted_under};
use keel_agent::runtime::{
    ContainerConfig, ContainerId, ContainerState, ContainerStatus, ExecRequest, Mount, Resources,
    Runtime, RuntimeError, SandboxConfig, SandboxId, SandboxState,
};

const BUSYBOX: &str = "keel.local/busybox:latest";
const SHIM: &str = env!("CARGO_BIN_EXE_keel-agent");

fn runnable(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP {test}: needs root (CI runs as root)");
        return false;
    }
    if !Path::new("/bin/busybox").exists() {
        eprintln!(
            "SKIP {test}: /bin/busybox is missing (install busybox-static: cargo xtask setup)"
        );
        return false;
    }
    true
}

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A node's directories and cgroup parent; removes everything when dropped (panics included).
struct Node {
    dir: tempfile::TempDir,
    cgroup_parent: String,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        images::build_busybox_image(&dir.path().join("images"))
            .expect("building the busybox image");
        Node {
            dir,
            cgroup_parent: unique("keel-test"),
        }
    }

    fn config(&self) -> ProcessConfig {
        ProcessConfig {
            root_dir: self.dir.path().join("root"),
            run_dir: self.dir.path().join("run"),
            log_dir: self.dir.path().join("logs"),
            image_dir: self.dir.path().join("images"),
            cgroup_parent: self.cgroup_parent.clone(),
            pod_cidr: "10.77.0.0/24".parse().expect("CIDR"),
        }
    }

    async fn runtime(&self) -> ProcessRuntime {
        ProcessRuntime::new(self.config())
            .await
            .expect("opening the runtime")
            .with_shim_binary(SHIM)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Removing the cgroups kills whatever is still running in them.
        if let Ok(cg) = Cgroups::detect(&self.cgroup_parent) {
            let parent = cg.parent().to_string();
            if let Err(e) = cg.remove(&parent) {
                eprintln!("warning: cleanup: {e}");
            }
        }
        if let Err(e) = unmount_netns_dir(&self.dir.path().join("run")) {
            eprintln!("warning: cleanup: {e}");
        }
    }
}

/// Runs `test` on its own thread inside a new network namespace, on a current-thread runtime.
fn in_private_netns<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = ()>,
{
    std::thread::scope(|s| {
        let t = s.spawn(|| {
            // SAFETY: unshare only changes this thread's network namespace.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(test())
        });
        if let Err(panic) = t.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

fn pod(name: &str) -> SandboxConfig {
    SandboxConfig {
        uid: unique("uid"),
        namespace: "default".into(),
        name: name.into(),
        hostname: name.into(),
        labels: Default::default(),
        annotations: Default::default(),
        resources: Resources::default(),
        host_network: false,
    }
}

fn container(name: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        name: name.into(),
        image: BUSYBOX.into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        args: vec![],
        env: vec![],
        working_dir: None,
        mounts: vec![],
        resources: Resources::default(),
        stdin: false,
        tty: false,
        restart_count: 0,
        labels: Default::default(),
    }
}

async fn run(rt: &ProcessRuntime, sandbox: &SandboxId, c: &ContainerConfig) -> ContainerId {
    let id = rt
        .create_container(sandbox, c)
        .await
        .expect("create_container");
    rt.start_container(&id).await.expect("start_container");
    id
}

async fn wait_exit(rt: &ProcessRuntime, id: &ContainerId) -> ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = rt.container_status(id).await.expect("container_status");
        if s.state == ContainerState::Exited {
            return s;
        }
        assert!(Instant::now() < deadline, "{id} still {:?}", s.state);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The log's lines without their timestamps (`stdout F hello`).
fn log_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest).to_string())
        .collect()
}

fn check_cri_timestamps(path: &Path) {
    for line in fs::read_to_string(path).expect("log").lines() {
        let ts = line.split(' ').next().unwrap_or_default();
        assert!(
            ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "not an RFC 3339 nano timestamp: {line:?}"
        );
    }
}

#[test]
fn a_container_runs_and_its_output_goes_to_the_cri_log() {
    if !runnable("a_container_runs_and_its_output_goes_to_the_cri_log") {
        return;
    }
    let node = Node::new();
    in_private_netns(|| async {
        let rt = node.runtime().await;
        let p = pod("hello");
        let sb = rt.run_sandbox(&p).await.expect("run_sandbox");
        assert_eq!(sb.state, SandboxState::Ready);
        let id = run(&rt, &sb.id, &container("main", &["echo", "hello"])).await;
        let s = wait_exit(&rt, &id).await;
        assert_eq!(
            (s.exit_code, s.reason.as_deref()),
            (Some(0), Some("Completed"))
        );
        assert!(s.image_id.starts_with("sha256:"), "{}", s.image_id);
        let expected = node
            .dir
            .path()
            .join(format!("logs/default_hello_{}/main/0.log", p.uid));
        assert_eq!(s.log_path, expected);
        assert_eq!(rt.log_path(&sb.id, "main", 0), expected);
        assert_eq!(log_lines(&s.log_path), ["stdout F hello"]);
        check_cri_timestamps(&s.log_path);

        // A failing command: exit code and stderr.
        let mut c = container("fail", &["sh", "-c", "echo oops >&2; exit 3"]);
        c.restart_count = 2;
        let id = run(&rt, &sb.id, &c).await;
        let s = wait_exit(&rt, &id).await;
        assert_eq!((s.exit_code, s.reason.as_deref()), (Some(3), Some("Error")));
        assert!(s.log_path.ends_with("fail/2.log"));
        assert_eq!(log_lines(&s.log_path), ["stderr F oops"]);

        rt.remove_sandbox(&sb.id).await.expect("remove_sandbox");
        rt.remove_pod_logs(&sb.id).await.expect("remove_pod_logs");
        assert!(!expected.exists());
    });
}

#[test]
fn a_container_has_its_own_pid_namespace_env_and_working_dir() {
    if !runnable("a_container_has_its_own_pid_namespace_env_and_working_dir") {
        return;
    }
    let node = Node::new();
    in_private_netns(|| async {
        let rt = node.runtime().await;
        let sb = rt.run_sandbox(&pod("web-1")).await.expect("run_sandbox");
        let mut c = container(
            "main",
            &[
                "sh",
                "-c",
                "echo pid=$$; echo host=$(hostname); echo cwd=$(pwd); echo foo=$FOO; \
                 echo path=$PATH; echo procs=$(ls /proc | grep -c '^[0-9]'); \
                 grep web-1 /etc/hosts; cat /etc/hostname; test -c /dev/null && echo devnull",
            ],
        );
        c.env = vec![("FOO".into(), "bar baz".into())];
        c.working_dir = Some("/srv/app".into());
        let id = run(&rt, &sb.id, &c).await;
        let s = wait_exit(&rt, &id).await;
        let lines = log_lines(&s.log_path);
        assert_eq!(s.exit_code, Some(0), "{lines:?}");
        let ip = sb.ip.expect("pod ip");
        for want in [
            "stdout F pid=1".to_string(),
            "stdout F host=web-1".into(),
            "stdout F cwd=/srv/app".into(),
            "stdout F foo=bar baz".into(),
            format!("stdout F path={}", images::DEFAULT_PATH),
            // Only the shell (and its subshell for the count) are visible.
            format!("stdout F {ip}\tweb-1"),
            "stdout F web-1".into(),
            "stdout F devnull".into(),
        ] {
            assert!(lines.contains(&want), "{want:?} not in {lines:?}");
        }
        let procs: Vec<&String> = lines.iter().filter(|l| l.contains("procs=")).collect();
        assert!(
            procs
                .first()
                .and_then(|l| l.rsplit('=').next())
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n <= 4),
            "the container sees other processes: {procs:?}"
        );
        rt.remove_sandbox(&sb.id).await.expect("remove_sandbox");
    });
}

#[test]
fn containers_of_a_pod_talk_over_localhost_and_the_node_reaches_the_pod() {
    if !runnable("containers_of_a_pod_talk_over_localhost_and_the_node_reaches_the_pod") {
        return;
    }
    let node = Node::new();
    in_private_netns(|| async {
        let rt = node.runtime().await;
        let sb = rt.run_sandbox(&pod("duo")).await.expect("run_sandbox");
        let server = run(
            &rt,
            &sb.id,
            &container(
                "server",
                &[
                    "sh",
                    "-c",
                    "mkdir -p /www && echo hi-from-server > /www/index.html && \
                     exec httpd -f -p 8080 -h /www",
                ],
            ),
        )
        .await;
        let client = run(
            &rt,
            &sb.id,
            &container(
                "client",
                &[
                    "sh",
                    "-c",
                    "for i in $(seq 100); do wget -q -O - http://127.0.0.1:8080/ && exit 0; \
                     sleep 0.1; done; exit 1",
                ],
            ),
        )
        .await;
        let s = wait_exit(&rt, &client).await;
        let lines = log_lines(&s.log_path);
        assert_eq!(s.exit_code, Some(0), "{lines:?}");
        assert!(
            lines.contains(&"stdout F hi-from-server".to_string()),
            "{lines:?}"
        );

        // From the node (the test's namespace) to the pod's address.
        let ip = sb.ip.expect("pod ip");
        let mut conn = TcpStream::connect_timeout(&(ip, 8080).into(), Duration::from_secs(5))
            .expect("connecting to the pod");
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut reply = String::new();
        let _ = conn.read_to_string(&mut reply);
        assert!(reply.contains("hi-from-server"), "{reply}");

        let st = rt.container_status(&server).await.unwrap();
        assert_eq!(st.state, ContainerState::Running);
        rt.remove_sandbox(&sb.id).await.expect("remove_sandbox");
    });
}

#[test]
fn a_host_network_pod_shares_the_node_network_namespace() {
    if !runnable("a_host_network_pod_shares_the_node_network_namespace") {
        return;
    }
    let node = Node::new();
    in_private_netns(|| async {
        // Loopback up in this (the "node's") namespace: the pod's server listens on it.
        let up = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("ip link set lo up");
        assert!(up.success());
        let rt = node.runtime().await;
        let links_before = keel_links();
        let config = SandboxConfig {
            host_network: true,
            ..pod("on-host")
        };
        let sb = rt.run_sandbox(&config).await.expect("run_sandbox");
        assert_eq!(sb.ip, None, "no address of its own");
        assert_eq!(sb.host_veth, None, "no veth");
        assert!(
            rt.network().ipam().allocations().is_empty(),
            "no address claimed"
        );
        assert_eq!(keel_links(), links_before);
        // A server in the pod listens in the node's (here: the test's) namespace.
        let server = run(
            &rt,
            &sb.id,
            &container(
                "server",
                &[
                    "sh",
                    "-c",
                    "mkdir -p /www && echo on-the-host > /www/index.html && \
                     exec httpd -f -p 127.0.0.1:18080 -h /www",
                ],
            ),
        )
        .await;
        let mut reply = String::new();
        for _ in 0..100 {
            if let Ok(mut conn) =
                TcpStream::connect_timeout(&([127, 0, 0, 1], 18080).into(), Duration::from_secs(1))
            {
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                conn.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
                let _ = conn.read_to_string(&mut reply);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let st = rt.container_status(&server).await.unwrap();
        assert!(
            reply.contains("on-the-host"),
            "{reply:?}; server: {st:?} {:?}",
            log_lines(&st.log_path),
        );
        assert_eq!(
            fs::read_link(format!("/proc/{}/ns/net", st.pid.expect("pid"))).ok(),
            fs::read_link("/proc/thread-self/ns/net").ok(),
            "the container is in the node's network namespace"
        );
        // Still Ready when listed again (there is no pod netns to look for), and idempotent.
        let listed = rt.list_sandboxes().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, SandboxState::Ready);
        let again = rt
            .run_sandbox(&config)
            .await
            .expect("idempotent run_sandbox");
        assert_eq!(again.netns, sb.netns);
        assert_eq!(
            rt.container_status(&server).await.unwrap().state,
            ContainerState::Running
        );
        rt.remove_sandbox(&sb.id).await.expect("remove_sandbox");
        assert!(rt.list_sandboxes().await.unwrap().is_empty());
    });
}

/// Network devices in the calling thread's namespace (`/sys/class/net` would show the
/// namespace sysfs was mounted in).
fn links() -> Vec<String> {
    let dev = fs::read_to_string("/proc/thread-self/net/dev").expect("reading net/dev");
    let mut out: Vec<String> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_string())
        .collect();
    out.sort();
    out
}

/// Host-side veths of pods (`keel…`) in the calling thread's namespace.
fn keel_links() -> Vec<String> {
    links()
        .into_iter()
        .filter(|n| n.starts_with("keel"))
        .collect()
}

fn read_cgroup(hierarchy: &str, rel: &str, file: &str) -> Option<String> {
    fs::read_to_string(
        Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join(rel)
            .join(file),
    )
    .ok()
    .map(|s| s.trim().to_string())
}

#[test]
fn resources_land_in_the_cgroups_and_an_oom_kill_is_reported() {
    if !runnable("resources_land_in_the_cgroups_and_an_oom_kill_is_reported") {
        return;
    }
    let node = Node::new();
    in_private_netns(|| async {
        let rt = node.runtime().await;
        let sb = rt.run_sandbox(&pod("limited")).await.expect("run_sandbox");
        let mut c = container("main", &["sleep", "1000"]);
        c.resources = Resources {
            cpu_request_millis: Some(250),
            cpu_limit_millis: Some(500),
            memory_limit_bytes: Some(64 * 1024 * 1024),
            pids_limit: Some(100),
        };
        let id = run(&rt, &sb.id, &c).await;
        let status = rt.container_status(&id).await.unwrap();
        let pid = status.pid.expect("running container pid");
        let cg = rt.cgroups().container_path(&sb.id.0, "main");
        let v1 = Path::new("/sys/fs/cgroup/memory").exists()
            && rt.cgroups().hierarchies().iter().any(|h| !h.v2);
        if v1 {
            assert_eq!(
                read_cgroup("memory", &cg, "memory.limit_in_bytes").as_deref(),
                Some("67108864")
            );
            assert_eq!(
                read_cgroup("cpu", &cg, "cpu.shares").as_deref(),
                Some("256")
            );
            assert_eq!(
                read_cgroup("cpu", &cg, "cpu.cfs_quota_us").as_deref(),
                Some("50000")
            );
            assert_eq!(read_cgroup("pids", &cg, "pids.max").as_deref(), Some("100"));
        } else {
            assert_eq!(
                read_cgroup("", &cg, "memory.max").as_deref(),
                Some("67108864")
            );
            assert_eq!(
                read_cgroup("", &cg, "cpu.max").as_deref(),
                Some("50000 100000")
            );
            assert_eq!(read_cgroup("", &cg, "pids.max").as_deref(), Some("100"));
        }
        // The container's process is in every hierarchy, the unified one included.
        for dir in rt.cgroups().dirs(&cg) {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            assert!(
                procs.lines().any(|l| l.trim() == pid.to_string()),
                "pid {pid} not in {}",
                dir.display()
            );
        }
        assert!(
            rt.unified_cgroup()
                .is_some_and(|u| u.ends_with(&node.cgroup_parent) && u.is_dir())
        );

        // Over the limit: the kernel kills it and the status says so.
        let mut hog = container(
            "hog",
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"],
        );
        hog.resources.memory_limit_bytes = Some(16 * 1024 * 1024);
        let id = run(&rt, &sb.id, &hog).await;
        let s = wait_exit(&rt, &id).await;
        assert_eq!(
            (s.exit_code, s.reason.as_deref()),
            (Some(137), Some("OOMKilled")),
            "{:?}",
            log_lines(&s.log_path)
        );
        rt.remove_sandbox(&sb.id).await.expect("remove_sandbox");
    });
}

#[test]
fn stop_waits_for_the_grace_period_then_kills() {
    if !runnable("stop_waits_for_the_grace_period_then_kills") {
        return;
    }
    let node = Node::new();
    in_private_netns(|| async {
        let rt = node.runtime().await;
        let sb = rt.run_sandbox(&pod("stopper")).await.expect("run_sandbox");
        // PID 1 without a SIGTERM handler ignores SIGTERM: SIGKILL after the grace period.
        let stubborn = run(&rt, &sb.id, &container("stubborn", &["sleep", "1000"])).await;
        // A handler: SIGTERM ends it with its own exit code.
        let polite = run(
            &rt,
            &sb.id,
            &container(
                "polite",
                &[
                    "sh",
                    "-c",
                    "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.05; done",
                ],
            ),
        )
        .await;
        let started = Instant::now();
        let grace = Duration::from_millis(300);
        rt.stop_container(&stubborn, grace).await.expect("stop");
        assert!(started.elapsed() >= grace);
        let s = rt.container_status(&stubborn).await.unwrap();
        assert_eq!(
            (s.state, s.exit_code, s.reason.as_deref()),
            (ContainerState::Exited, Some(137), Some("Error"))
        );
        // Wait until the trap is installed (the shell printed "ready").
        let log = rt.container_status(&polite).await.unwrap().log_path;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !log_lines(&log).contains(&"stdout F ready".to_string()) {
            assert!(Instant::now() < deadline, "polite never got ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rt.stop_container(&polite, Duration::from_secs(20))
            .await
            .expect("stop");
        let s = rt.container_status(&polite).await.unwrap();
        assert_eq!((s.state, s.exit_code), (ContainerState::Exited, Some(3)));
        assert!(log_lines(&log).contains(&"stdout F got-term".to_string()));
        // Stopping again is fine.
        rt.stop_container(&polite, grace)
            .await
            .expect("second stop");
        rt.remove_sandbox(&sb.id).await.expect("remove_sandbox");
    });
}

#[test]
fn exec_runs_in_the_container() {
    if !runnable("exec_runs_in_the_container") {
        return;
    }
    let node = Node::new();
    in_private_netns(|| async {
        let rt = node.runtime().await;
        let sb = rt.run_sandbox(&pod("execme")).await.expect("run_sandbox");
        let mut c = container("main", &["sleep", "1000"]);
        c.env = vec![("GREETING".into(), "hi".into())];
        c.working_dir = Some("/tmp".into());
        let id = run(&rt, &sb.id, &c).await;
        let cmd: Vec<String> = [
            "sh",
            "-c",
            "echo $GREETING; pwd; hostname; tr '\\0' ' ' < /proc/1/cmdline; echo; \
             echo to-stderr >&2; exit 7",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let r = rt
            .exec_sync(&id, &cmd, Duration::from_secs(10))
            .await
            .expect("exec_sync");
        assert_eq!(r.exit_code, 7);
        assert_eq!(
            String::from_utf8_lossy(&r.stdout),
            "hi\n/tmp\nexecme\nsleep 1000 \n"
        );
        assert_eq!(String::from_utf8_lossy(&r.stderr), "to-stderr\n");

        // A command that outlives its timeout is killed and reported as such.
        let started = Instant::now();
        let e = rt
            .exec_sync(
                &id,
                &["sleep".into(), "30".into()],
                Duration::from_millis(300),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        // A missing command.
        let e = rt
            .exec_sync(&id, &["no-such-cmd".into()], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");

        // Interactive, with a terminal.
        let session = rt
            .exec(
                &id,
                &ExecRequest {
                    command: vec!["sh".into(), "-c".into(), "tty; read x; echo got-$x".into()],
                    stdin: true,
                    stdout: true,
                    stderr: true,
                    tty: true,
                },
            )
            .await
            .expect("exec");
        let pid = session.pid;
        let mut input = session.stdin.expect("stdin");
        let mut output = session.stdout.expect("stdout");
        assert!(session.stderr.is_none());
        input.write_all(b"abc\n").unwrap();
        let out = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            let mut buf = [0u8; 1024];
            // The pty reports EIO once the process is gone.
            while let Ok(n) = output.read(&mut buf) {
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&all).contains("got-abc") {
                    break;
                }
            }
            String::from_utf8_lossy(&all).into_owned()
        })
        .await
        .unwrap();
        assert!(out.contains("/dev/pts/0"), "{out:?}");
        assert!(out.contains("got-abc"), "{out:?}");
        let code =
            tokio::task::spawn_blocking(move || keel_agent::runtime::process::exec::wait(pid))
                .await
                .unwrap();
        assert_eq!(code, 0);

        rt.stop_container(&id, Duration::ZERO).await.unwrap();
        let e = rt
            .exec_sync(&id, &cmd, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not running"), "{e}");
        rt.remove_sandbox(&sb.id).await.expect("remove_sandbox");
    });
}

#[test]
fn volumes_are_bind_mounted_read_only_where_asked() {
    if !runnable("volumes_are_bind_mounted_read_only_where_asked") {
        return;
    }
    let node = Node::new();
    in_private_netns(|| async {
        let rt = node.runtime().await;
        let sb = rt.run_sandbox(&pod("vols")).await.expect("run_sandbox");
        let ro = node.dir.path().join("ro");
        let rw = node.dir.path().join("rw");
        fs::create_dir_all(&ro).unwrap();
        fs::create_dir_all(&rw).unwrap();
        fs::write(ro.join("config"), "from-config\n").unwrap();
        let mut c = container(
            "main",
            &[
                "sh",
                "-c",
                "cat /etc/app/config; echo x > /etc/app/new 2>/dev/null && echo ro-writable; \
                 echo data > /data/out",
            ],
        );
        c.mounts = vec![
            Mount {
                host_path: ro.clone(),
                container_path: "/etc/app".into(),
                read_only: true,
            },
            Mount {
                host_path: rw.clone(),
                container_path: "/data".into(),
                read_only: false,
            },
        ];
        let id = run(&rt, &sb.id, &c).await;
        let s = wait_exit(&rt, &id).await;
        let lines = log_lines(&s.log_path);
        assert_eq!(s.exit_code, Some(0), "{lines:?}");
        assert!(
            lines.contains(&"stdout F from-config".to_string()),
            "{lines:?}"
        );
        assert!(
            !lines.contains(&"stdout F ro-writable".to_string()),
            "{lines:?}"
        );
        assert!(!ro.join("new").exists());
        assert_eq!(fs::read_to_string(rw.join("out")).unwrap(), "data\n");
        rt.remove_sandbox(&sb.id).await.expect("remove_sandbox");
    });
}

#[test]
fn bad_images_and_commands_are_reported() {
    if !runnable("bad_images_and_commands_are_reported") {
        return;
    }
    let node = Node::new();
    in_private_netns(|| async {
        let rt = node.runtime().await;
        let sb = rt.run_sandbox(&pod("bad")).await.expect("run_sandbox");
        let mut c = container("main", &["true"]);
        c.image = "keel.local/nope:latest".into();
        let e = rt.create_container(&sb.id, &c).await.unwrap_err();
        assert!(matches!(e, RuntimeError::ImageNotFound { .. }), "{e}");
        assert!(e.to_string().contains("cargo xtask images"), "{e}");

        let id = rt
            .create_container(&sb.id, &container("missing", &["no-such-binary"]))
            .await
            .expect("create");
        let e = rt.start_container(&id).await.unwrap_err();
        assert!(e.to_string().contains("executable file not found"), "{e}");
        let s = rt.container_status(&id).await.unwrap();
        assert_eq!(
            (s.state, s.exit_code, s.reason.as_deref()),
            (ContainerState::Exited, Some(128), Some("StartError"))
        );
        assert!(
            s.message
                .as_deref()
                .is_some_and(|m| m.contains("no-such-binary")),
            "{:?}",
            s.message
        );
        rt.remove_sandbox(&sb.id).await.expect("remove_sandbox");
    });
}

#[test]
fn a_restarted_runtime_adopts_running_containers() {
    if !runnable("a_restarted_runtime_adopts_running_containers") {
        return;
    }
    let node = Node::new();
    in_private_netns(|| async {
        let (sb, id, pid) = {
            let rt = node.runtime().await;
            let sb = rt.run_sandbox(&pod("survivor")).await.expect("run_sandbox");
            let id = run(&rt, &sb.id, &container("main", &["sleep", "1000"])).await;
            let pid = rt.container_status(&id).await.unwrap().pid.expect("pid");
            (sb, id, pid)
        };
        // A new runtime over the same directories (the agent restarted).
        let rt = node.runtime().await;
        let sandboxes = rt.list_sandboxes().await.unwrap();
        assert_eq!(sandboxes.len(), 1);
        assert_eq!(sandboxes[0].id, sb.id);
        assert_eq!(sandboxes[0].state, SandboxState::Ready);
        assert_eq!(sandboxes[0].ip, sb.ip);
        let again = rt
            .run_sandbox(&sb.config)
            .await
            .expect("idempotent run_sandbox");
        assert_eq!(again.ip, sb.ip);
        let containers = rt.list_containers(Some(&sb.id)).await.unwrap();
        assert_eq!(containers.len(), 1);
        assert_eq!(containers[0].id, id);
        assert_eq!(containers[0].state, ContainerState::Running);
        assert_eq!(containers[0].pid, Some(pid));
        let r = rt
            .exec_sync(&id, &["hostname".into()], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&r.stdout), "survivor\n");
        rt.remove_sandbox(&sb.id).await.expect("remove_sandbox");
        assert!(rt.list_containers(None).await.unwrap().is_empty());
    });
}

#[test]
fn a_network_without_a_sandbox_record_is_reclaimed_at_start() {
    if !runnable("a_network_without_a_sandbox_record_is_reclaimed_at_start") {
        return;
    }
    let node = Node::new();
    in_private_netns(|| async {
        let (kept, orphan) = {
            let rt = node.runtime().await;
            let kept = rt.run_sandbox(&pod("kept")).await.expect("run_sandbox");
            // What an agent that died between the network setup and the sandbox record left.
            let orphan = rt
                .network()
                .setup("0a7e3b1c-orphan")
                .await
                .expect("network setup");
            (kept, orphan)
        };
        assert!(orphan.netns.exists());
        assert!(keel_links().contains(&orphan.host_veth));
        let rt = node.runtime().await;
        let claims: Vec<String> = rt
            .network()
            .ipam()
            .allocations()
            .into_iter()
            .map(|(_, uid)| uid)
            .collect();
        assert_eq!(
            claims,
            vec![kept.config.uid.clone()],
            "only the recorded pod keeps its address"
        );
        assert!(
            !orphan.netns.exists(),
            "the orphan's network namespace is gone"
        );
        let links = links();
        assert!(
            links.iter().any(|l| l == "lo"),
            "this thread sees its own namespace: {links:?}"
        );
        assert!(
            !links.contains(&orphan.host_veth),
            "the orphan's veth {} is gone: {links:?}",
            orphan.host_veth
        );
        let again = rt.run_sandbox(&kept.config).await.expect("run_sandbox");
        assert_eq!(again.ip, kept.ip, "the recorded pod keeps its address");
        rt.remove_sandbox(&kept.id).await.expect("remove_sandbox");
        assert!(rt.network().ipam().allocations().is_empty());
    });
}

/// Builds `keel-echo` as `cargo xtask images` does (static, release, `target/images`).
fn static_echo_binary() -> Option<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let target_dir = workspace.join("target/images");
    let status = std::process::Command::new(env!("CARGO"))
        .current_dir(&workspace)
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=debuginfo",
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "keel-echo",
            "--target",
            &triple,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .ok()?;
    status
        .success()
        .then(|| target_dir.join(&triple).join("release/keel-echo"))
}

fn http_get(conn: &mut TcpStream) -> String {
    conn.write_all(b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    // One response: the head, then Content-Length bytes.
    loop {
        let n = conn.read(&mut buf).expect("reading the reply");
        assert!(
            n > 0,
            "connection closed: {:?}",
            String::from_utf8_lossy(&reply)
        );
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .expect("Content-Length");
            if body.len() >= len {
                return text;
            }
        }
    }
}

#[test]
fn the_echo_image_answers_with_its_pod_name() {
    if !runnable("the_echo_image_answers_with_its_pod_name") {
        return;
    }
    let Some(echo) = static_echo_binary() else {
        eprintln!(
            "SKIP the_echo_image_answers_with_its_pod_name: cannot build keel-echo statically"
        );
        return;
    };
    let node = Node::new();
    images::build_echo_image(&node.dir.path().join("images"), &echo).expect("echo image");
    in_private_netns(|| async {
        let rt = node.runtime().await;
        let sb = rt.run_sandbox(&pod("echo-a")).await.expect("run_sandbox");
        let mut c = container("echo", &[]);
        c.image = "keel.local/echo".into();
        c.env = vec![("POD_NAME".into(), "echo-a".into())];
        let named = run(&rt, &sb.id, &c).await;
        // Without POD_NAME: the hostname, on another port.
        let sb2 = rt.run_sandbox(&pod("echo-b")).await.expect("run_sandbox");
        let mut c = container("echo", &[]);
        c.image = "keel.local/echo:latest".into();
        c.env = vec![("PORT".into(), "9090".into())];
        run(&rt, &sb2.id, &c).await;

        for (sb, port, name) in [(&sb, 8080, "echo-a"), (&sb2, 9090, "echo-b")] {
            let addr = (sb.ip.expect("pod ip"), port).into();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut conn = loop {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    Ok(c) => break c,
                    Err(e) => {
                        assert!(Instant::now() < deadline, "{addr}: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            };
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // Two requests over one connection (keep-alive).
            for _ in 0..2 {
                let reply = http_get(&mut conn);
                assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
                assert!(reply.ends_with(&format!("\r\n\r\n{name}\n")), "{reply}");
            }
        }
        let s = rt.container_status(&named).await.unwrap();
        assert_eq!(s.state, ContainerState::Running);
        rt.remove_sandbox(&sb.id).await.expect("remove_sandbox");
        rt.remove_sandbox(&sb2.id).await.expect("remove_sandbox");
    });
}

#[test]
fn removing_a_pod_leaves_nothing_behind() {
    if !runnable("removing_a_pod_leaves_nothing_behind") {
        return;
    }
    let node = Node::new();
    in_private_netns(|| async {
        let rt = node.runtime().await;
        let before: Vec<PathBuf> = mounted_under(node.dir.path());
        let sb = rt.run_sandbox(&pod("gone")).await.expect("run_sandbox");
        let a = run(&rt, &sb.id, &container("a", &["sleep", "1000"])).await;
        let b = run(
            &rt,
            &sb.id,
            &container("b", &["sh", "-c", "sleep 1000 & sleep 1000 & wait"]),
        )
        .await;
        let mut pids = Vec::new();
        for id in [&a, &b] {
            pids.push(rt.container_status(id).await.unwrap().pid.expect("pid"));
        }
        let shims: Vec<u32> = [&a, &b]
            .iter()
            .filter_map(|id| {
                let state = node
                    .dir
                    .path()
                    .join(format!("root/containers/{}/state.json", id.0));
                let v: serde_json::Value = serde_json::from_slice(&fs::read(state).ok()?).ok()?;
                v["shim_pid"].as_u64().map(|p| p as u32)
            })
            .collect();
        assert_eq!(shims.len(), 2);
        let pod_cgroup = rt.cgroups().pod_path(&sb.id.0);
        pids.extend(rt.cgroups().pids(&pod_cgroup));
        assert!(pids.len() >= 4, "{pids:?}");
        let veth = sb.host_veth.clone().expect("veth");
        let devices = || fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default();
        assert!(devices().contains(&veth));

        rt.stop_sandbox(&sb.id).await.expect("stop_sandbox");
        rt.remove_sandbox(&sb.id).await.expect("remove_sandbox");

        for pid in pids.iter().chain(&shims) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while proc_start_time(*pid).is_some() {
                assert!(Instant::now() < deadline, "process {pid} survived");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert!(
            !rt.cgroups().exists(&pod_cgroup),
            "cgroup {pod_cgroup} left"
        );
        assert_eq!(mounted_under(node.dir.path()), before, "mounts left");
        assert!(!sb.netns.exists(), "netns left");
        assert!(!devices().contains(&veth), "veth left");
        let leftovers: Vec<_> = ["root/containers", "root/sandboxes"]
            .iter()
            .flat_map(|d| fs::read_dir(node.dir.path().join(d)).unwrap().flatten())
            .map(|e| e.path())
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert!(rt.list_sandboxes().await.unwrap().is_empty());
        // Removing twice is fine.
        rt.remove_sandbox(&sb.id)
            .await
            .expect("second remove_sandbox");
    });
}
