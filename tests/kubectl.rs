//! Stock kubectl against a real keel-control (HTTPS, admin kubeconfig, embedded store in a temp
//! dir, free port): the commands users type, checked by their output. Needs `/usr/bin/kubectl`
//! (on the machine image; the test fails with a message saying so when it is missing).
use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use keel_tests::api_client::ServerThread;

trait KubectlFor {
    fn kubectl(&self) -> Kubectl;
}

impl KubectlFor for ServerThread {
    fn kubectl(&self) -> Kubectl {
        Kubectl {
            kubeconfig: self.kubeconfig.clone(),
        }
    }
}

struct Kubectl {
    kubeconfig: PathBuf,
}

fn kubectl_bin() -> &'static str {
    assert!(
        Path::new("/usr/bin/kubectl").exists(),
        "kubectl is not installed at /usr/bin/kubectl (it is on the machine image; install kubectl to run these tests)"
    );
    "/usr/bin/kubectl"
}

impl Kubectl {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(kubectl_bin());
        c.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        c.env_remove("KUBECONFIG");
        c
    }

    fn output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = self.cmd(args);
        c.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = c.spawn().expect("kubectl starts");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        // Bounded: kubectl's own request timeout.
        child.wait_with_output().expect("kubectl runs")
    }

    /// Runs kubectl and returns stdout; panics with stderr when it fails.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_stdin(args, None)
    }

    fn ok_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut all = vec!["--request-timeout=20s"];
        all.extend_from_slice(args);
        let out = self.output(&all, stdin);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\nstdout: {stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Runs kubectl expecting failure; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.output(args, None);
        assert!(
            !out.status.success(),
            "kubectl {args:?} should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    }
}

const DEPLOY: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: echo
        image: keel.local/echo:v1
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
"#;

fn columns(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[test]
fn kubectl_works_against_keel_control() {
    let server = ServerThread::start();
    let k = server.kubectl();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("web.yaml");
    std::fs::write(&manifest, DEPLOY).unwrap();
    let manifest = manifest.to_str().unwrap();

    // Discovery and metadata.
    let resources = k.ok(&["api-resources"]);
    for needle in [
        "pods",
        "deployments",
        "services",
        "endpointslices",
        "leases",
        "namespaces",
        "po ",
        "deploy",
        "svc",
    ] {
        assert!(
            resources.contains(needle),
            "api-resources lacks {needle}:\n{resources}"
        );
    }
    let ns = k.ok(&["get", "ns"]);
    for n in ["default", "kube-system", "kube-node-lease"] {
        assert!(
            ns.lines().any(|l| l.starts_with(n) && l.contains("Active")),
            "{ns}"
        );
    }

    // apply: create, then an image change.
    let out = k.ok(&["apply", "-f", manifest]);
    assert!(
        out.contains("deployment.apps/web created") && out.contains("service/web created"),
        "{out}"
    );
    let out = k.ok(&["apply", "-f", manifest]);
    assert!(out.contains("deployment.apps/web unchanged"), "{out}");
    let changed = DEPLOY.replace("echo:v1", "echo:v2");
    let out = k.ok_stdin(&["apply", "-f", "-"], Some(&changed));
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let image = k.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(image, "keel.local/echo:v2");
    let generation = k.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.metadata.generation}",
    ]);
    assert_eq!(generation, "2", "an image change is a spec change");

    // get with the usual columns.
    let out = k.ok(&["get", "deploy"]);
    let header = columns(out.lines().next().unwrap());
    assert_eq!(
        header,
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{out}"
    );
    let out = k.ok(&["get", "deploy", "-o", "wide"]);
    assert!(
        out.contains("CONTAINERS") && out.contains("keel.local/echo:v2") && out.contains("app=web"),
        "{out}"
    );
    let out = k.ok(&["get", "svc", "web"]);
    let row = columns(out.lines().nth(1).unwrap());
    assert_eq!(row[0], "web");
    assert_eq!(row[1], "ClusterIP");
    assert!(
        row[2].starts_with("10."),
        "a ClusterIP from the service CIDR: {out}"
    );
    assert_eq!(row[4], "80/TCP");
    let out = k.ok(&["get", "all"]);
    assert!(
        out.contains("deployment.apps/web") && out.contains("service/web"),
        "{out}"
    );
    let yaml = k.ok(&["get", "svc", "web", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: Service")
            && yaml.contains("clusterIP:")
            && yaml.contains("resourceVersion:"),
        "{yaml}"
    );

    // run, then the pod in tables and describe.
    let out = k.ok(&[
        "run",
        "client",
        "--image=keel.local/busybox:latest",
        "--labels=role=client",
        "--",
        "sleep",
        "3600",
    ]);
    assert!(out.contains("pod/client created"), "{out}");
    let out = k.ok(&["get", "pods"]);
    assert_eq!(
        columns(out.lines().next().unwrap()),
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{out}"
    );
    assert!(
        out.contains("client") && out.contains("0/1") && out.contains("Pending"),
        "{out}"
    );
    let out = k.ok(&["get", "pods", "-o", "wide"]);
    assert!(out.contains("NODE") && out.contains("<none>"), "{out}");
    let out = k.ok(&["describe", "pod", "client"]);
    assert!(
        out.contains("Name:")
            && out.contains("client")
            && out.contains("keel.local/busybox:latest"),
        "{out}"
    );
    let out = k.ok(&["describe", "deployment", "web"]);
    assert!(
        out.contains("Replicas:") && out.contains("RollingUpdate"),
        "{out}"
    );

    // label, annotate, selectors.
    k.ok(&["label", "pod", "client", "tier=frontend"]);
    let out = k.ok(&["get", "pods", "-l", "tier=frontend", "-o", "name"]);
    assert_eq!(out.trim(), "pod/client");
    let out = k.ok(&["get", "pods", "-l", "tier in (backend)", "-o", "name"]);
    assert_eq!(out.trim(), "");
    k.ok(&["label", "pod", "client", "tier-"]);
    assert_eq!(
        k.ok(&["get", "pods", "-l", "tier", "-o", "name"]).trim(),
        ""
    );
    k.ok(&["annotate", "deploy", "web", "owner=team-a"]);
    let ann = k.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.metadata.annotations.owner}",
    ]);
    assert_eq!(ann, "team-a");

    // scale.
    let out = k.ok(&["scale", "deploy", "web", "--replicas=5"]);
    assert!(out.contains("scaled"), "{out}");
    assert_eq!(
        k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "5"
    );

    // edit via replace: get, change, replace; a stale copy conflicts.
    let json = k.ok(&["get", "svc", "web", "-o", "json"]);
    let mut obj: serde_json::Value = serde_json::from_str(&json).unwrap();
    obj["metadata"]["labels"] = serde_json::json!({"edited": "yes"});
    let edited = serde_json::to_string(&obj).unwrap();
    let out = k.ok_stdin(&["replace", "-f", "-"], Some(&edited));
    assert!(out.contains("service/web replaced"), "{out}");
    let out = k.output(&["replace", "-f", "-"], Some(&edited));
    assert!(
        !out.status.success(),
        "a stale resourceVersion must conflict"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the object has been modified") || err.contains("Conflict"),
        "{err}"
    );

    // expose and create namespace.
    let out = k.ok(&[
        "expose",
        "deployment",
        "web",
        "--name=web-np",
        "--port=8080",
        "--type=NodePort",
    ]);
    assert!(out.contains("service/web-np exposed"), "{out}");
    let np = k.ok(&[
        "get",
        "svc",
        "web-np",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    let np: u16 = np.parse().expect("a NodePort was allocated");
    assert!((30000..=32767).contains(&np));
    let out = k.ok(&["create", "namespace", "team-a"]);
    assert!(out.contains("namespace/team-a created"), "{out}");
    let out = k.ok(&[
        "-n",
        "team-a",
        "create",
        "configmap",
        "settings",
        "--from-literal=mode=fast",
    ]);
    assert!(out.contains("configmap/settings created"), "{out}");

    // Errors users hit, clearly.
    let err = k.fails(&["get", "pod", "nope"]);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
    let err = k.fails(&["label", "pod", "client", "bad key!=x"]);
    assert!(!err.is_empty());

    // delete -f.
    let out = k.ok(&["delete", "-f", manifest]);
    assert!(
        out.contains("deployment.apps \"web\" deleted") && out.contains("service \"web\" deleted"),
        "{out}"
    );
    let err = k.fails(&["get", "deploy", "web"]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn kubectl_get_watch_streams_changes() {
    let server = ServerThread::start();
    let k = server.kubectl();
    let mut watch = k
        .cmd(&["get", "pods", "-w", "--request-timeout=60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    k.ok(&["run", "watched", "--image=keel.local/busybox:latest"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let mut found = false;
    while std::time::Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                found |= line.starts_with("watched");
                seen.push(line);
                if found {
                    break;
                }
            }
            Err(_) => continue,
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(found, "kubectl get -w did not show the new pod: {seen:?}");
}

#[test]
fn kubectl_explain_uses_the_served_schemas() {
    let server = ServerThread::start();
    let k = server.kubectl();
    let out = k.ok(&["explain", "deployment.spec"]);
    assert!(
        out.contains("replicas") && out.contains("template"),
        "{out}"
    );
}

#[test]
fn requests_without_credentials_are_refused() {
    let server = ServerThread::start();
    let text = std::fs::read_to_string(&server.kubeconfig).unwrap();
    let token_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("token:"))
        .expect("kubeconfig has a token");
    let bad = text.replace(token_line, "    token: not-the-token");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.kubeconfig");
    std::fs::write(&path, bad).unwrap();
    let k = Kubectl { kubeconfig: path };
    let err = k.fails(&["get", "ns"]);
    assert!(
        err.contains("Unauthorized") || err.contains("must be logged in"),
        "{err}"
    );
}
