//! The pod status kubelet reports, computed from what the runtime and the pod worker know:
//! container statuses (state, last state, restart count, ready, started), the phase by
//! kubelet's rules (`getPhase`), and the conditions (PodReadyToStartContainers, Initialized,
//! ContainersReady, Ready) with stable transition times.
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, PodCondition, PodSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::runtime;

/// Container id prefix in `containerID` (`<runtime>://<id>`, like `containerd://...`).
pub const CONTAINER_ID_SCHEME: &str = "keel://";

/// A timestamp as the API stores it (whole seconds), so computed statuses compare equal to
/// what was written.
pub fn time(at: SystemTime) -> Time {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Now, as an API timestamp.
pub fn now() -> Time {
    time(SystemTime::now())
}

/// A waiting reason and message (`ContainerCreating`, `ErrImagePull`, `CrashLoopBackOff`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: Option<String>,
}

impl Waiting {
    pub fn new(reason: &str, message: Option<String>) -> Self {
        Waiting {
            reason: reason.to_string(),
            message,
        }
    }
}

/// What the worker knows about one container of the spec.
#[derive(Clone, Debug)]
pub struct ContainerSnapshot {
    pub name: String,
    /// The image of the spec.
    pub image: String,
    /// The newest attempt, if any was created.
    pub current: Option<runtime::ContainerStatus>,
    /// The attempt before it (exited), for `lastState`.
    pub previous: Option<runtime::ContainerStatus>,
    /// Shown instead of the current attempt's state when that isn't running: why the
    /// container waits (image missing, back-off, configuration error, initialization).
    pub waiting: Option<Waiting>,
    /// Readiness (probe or, without one, running and started).
    pub ready: bool,
    /// Startup probe passed (or none) and running.
    pub started: bool,
}

fn terminated(c: &runtime::ContainerStatus) -> ContainerStateTerminated {
    let exit_code = c
        .exit_code
        .unwrap_or(if c.state == runtime::ContainerState::Unknown {
            255
        } else {
            0
        });
    let reason = c.reason.clone().unwrap_or_else(|| {
        if c.state == runtime::ContainerState::Unknown {
            "Unknown".to_string()
        } else if exit_code == 0 {
            "Completed".to_string()
        } else {
            "Error".to_string()
        }
    });
    ContainerStateTerminated {
        container_id: Some(format!("{CONTAINER_ID_SCHEME}{}", c.id)),
        exit_code,
        finished_at: c.finished_at.map(time),
        message: c.message.clone(),
        reason: Some(reason),
        signal: None,
        started_at: c.started_at.map(time),
    }
}

fn is_exited(c: &runtime::ContainerStatus) -> bool {
    matches!(
        c.state,
        runtime::ContainerState::Exited | runtime::ContainerState::Unknown
    )
}

/// The API status of one container.
pub fn container_status(snapshot: &ContainerSnapshot) -> ContainerStatus {
    let current = snapshot.current.as_ref();
    let running = current.is_some_and(|c| c.state == runtime::ContainerState::Running);
    let previous_terminated = snapshot
        .previous
        .as_ref()
        .filter(|p| is_exited(p))
        .map(terminated);
    let (state, last_state) = match (&snapshot.waiting, current) {
        (Some(waiting), current) if !running => {
            // Waiting to (re)start: the newest exited attempt is the last state.
            let last = current
                .filter(|c| is_exited(c))
                .map(terminated)
                .or(previous_terminated);
            (
                ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(waiting.reason.clone()),
                        message: waiting.message.clone(),
                    }),
                    ..Default::default()
                },
                last,
            )
        }
        (_, Some(c)) => {
            let state = match c.state {
                runtime::ContainerState::Running => ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: c.started_at.map(time),
                    }),
                    ..Default::default()
                },
                runtime::ContainerState::Created => ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("ContainerCreating".into()),
                        message: None,
                    }),
                    ..Default::default()
                },
                runtime::ContainerState::Exited | runtime::ContainerState::Unknown => {
                    ContainerState {
                        terminated: Some(terminated(c)),
                        ..Default::default()
                    }
                }
            };
            (state, previous_terminated)
        }
        (_, None) => (
            ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ContainerCreating".into()),
                    message: None,
                }),
                ..Default::default()
            },
            None,
        ),
    };
    ContainerStatus {
        name: snapshot.name.clone(),
        image: snapshot.image.clone(),
        image_id: current.map(|c| c.image_id.clone()).unwrap_or_default(),
        container_id: current.map(|c| format!("{CONTAINER_ID_SCHEME}{}", c.id)),
        ready: running && snapshot.ready,
        started: Some(running && snapshot.started),
        restart_count: current.map_or(0, |c| i32::try_from(c.restart_count).unwrap_or(i32::MAX)),
        state: Some(state),
        last_state: Some(
            last_state.map_or_else(ContainerState::default, |t| ContainerState {
                terminated: Some(t),
                ..Default::default()
            }),
        ),
        ..Default::default()
    }
}

/// Whether an init container runs for the pod's life (a sidecar, `restartPolicy: Always`).
pub fn is_sidecar(container: &Container) -> bool {
    container.restart_policy.as_deref() == Some("Always")
}

fn find<'a>(statuses: &'a [ContainerStatus], name: &str) -> Option<&'a ContainerStatus> {
    statuses.iter().find(|s| s.name == name)
}

fn state(status: &ContainerStatus) -> ContainerState {
    status.state.clone().unwrap_or_default()
}

fn last_terminated(status: &ContainerStatus) -> Option<ContainerStateTerminated> {
    status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.clone())
}

/// Whether any regular container has run (then a pod never goes back to Pending).
fn any_regular_started(statuses: &[ContainerStatus]) -> bool {
    statuses.iter().any(|s| {
        let st = state(s);
        st.running.is_some() || st.terminated.is_some() || last_terminated(s).is_some()
    })
}

/// The pod phase by kubelet's `getPhase`. `terminal`: the worker has decided the pod is done
/// (nothing will be restarted).
pub fn phase(
    spec: &PodSpec,
    init_statuses: &[ContainerStatus],
    statuses: &[ContainerStatus],
    terminal: bool,
) -> &'static str {
    let restart_policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let mut pending_initialization = 0;
    let mut failed_initialization = 0;
    let mut pending_sidecars = 0;
    let (mut unknown, mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0, 0);
    for container in spec.init_containers.iter().flatten() {
        let Some(status) = find(init_statuses, &container.name) else {
            if is_sidecar(container) {
                unknown += 1;
            } else {
                pending_initialization += 1;
            }
            continue;
        };
        let st = state(status);
        if is_sidecar(container) {
            if st.running.is_some() {
                if status.started != Some(true) {
                    pending_sidecars += 1;
                }
                running += 1;
            } else if st.terminated.is_some() {
                // Stopped sidecars don't count.
            } else if st.waiting.is_some() {
                if last_terminated(status).is_none() {
                    pending_sidecars += 1;
                    waiting += 1;
                }
            } else {
                unknown += 1;
            }
            continue;
        }
        if st.running.is_some() {
            pending_initialization += 1;
        } else if let Some(t) = &st.terminated {
            if t.exit_code != 0 {
                failed_initialization += 1;
            }
        } else if st.waiting.is_some() {
            match last_terminated(status) {
                Some(t) if t.exit_code != 0 => failed_initialization += 1,
                Some(_) => {}
                None => pending_initialization += 1,
            }
        } else {
            pending_initialization += 1;
        }
    }
    for container in &spec.containers {
        let Some(status) = find(statuses, &container.name) else {
            unknown += 1;
            continue;
        };
        let st = state(status);
        if st.running.is_some() {
            running += 1;
        } else if let Some(t) = &st.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if st.waiting.is_some() {
            if last_terminated(status).is_some() {
                stopped += 1;
            } else {
                waiting += 1;
            }
        } else {
            unknown += 1;
        }
    }
    if failed_initialization > 0 && restart_policy == "Never" {
        return "Failed";
    }
    let initializing =
        (pending_initialization > 0 || pending_sidecars > 0) && !any_regular_started(statuses);
    if initializing || waiting > 0 {
        return "Pending";
    }
    if running > 0 && unknown == 0 {
        return "Running";
    }
    if running == 0 && stopped > 0 && unknown == 0 {
        if terminal {
            return if stopped == succeeded {
                "Succeeded"
            } else {
                "Failed"
            };
        }
        if restart_policy == "Always" {
            return "Running";
        }
        if stopped == succeeded {
            return "Succeeded";
        }
        if restart_policy == "Never" {
            return "Failed";
        }
        return "Running";
    }
    "Pending"
}

fn condition(kind: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> PodCondition {
    PodCondition {
        type_: kind.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: if ok { None } else { reason.map(str::to_string) },
        message: if ok { None } else { message },
        ..Default::default()
    }
}

/// kubelet's condition types (the others, e.g. PodScheduled, belong to other writers).
pub const KUBELET_CONDITIONS: [&str; 4] = [
    "PodReadyToStartContainers",
    "Initialized",
    "ContainersReady",
    "Ready",
];

/// The kubelet-owned conditions, without transition times (see [`stamp_conditions`]).
/// `other_conditions`: the pod's conditions from other writers (readiness gates read them).
pub fn conditions(
    spec: &PodSpec,
    phase: &str,
    sandbox_ready: bool,
    init_statuses: &[ContainerStatus],
    statuses: &[ContainerStatus],
    other_conditions: &[PodCondition],
) -> Vec<PodCondition> {
    let mut out = vec![condition(
        "PodReadyToStartContainers",
        sandbox_ready,
        None,
        None,
    )];

    // Initialized: every regular init container succeeded and every sidecar started, or
    // the regular containers already ran.
    let incomplete: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| {
            let Some(status) = find(init_statuses, &c.name) else {
                return true;
            };
            if is_sidecar(c) {
                return status.started != Some(true);
            }
            state(status).terminated.is_none_or(|t| t.exit_code != 0)
        })
        .map(|c| c.name.as_str())
        .collect();
    let initialized = incomplete.is_empty() || any_regular_started(statuses);
    out.push(condition(
        "Initialized",
        initialized,
        Some("ContainersNotInitialized"),
        Some(format!(
            "containers with incomplete status: [{}]",
            incomplete.join(" ")
        )),
    ));

    let completed = phase == "Succeeded";
    let unready: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| is_sidecar(c))
        .filter(|c| !find(init_statuses, &c.name).is_some_and(|s| s.ready))
        .chain(
            spec.containers
                .iter()
                .filter(|c| !find(statuses, &c.name).is_some_and(|s| s.ready)),
        )
        .map(|c| c.name.as_str())
        .collect();
    let containers_ready = unready.is_empty() && !completed;
    let (reason, message) = if completed {
        ("PodCompleted", None)
    } else {
        (
            "ContainersNotReady",
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    out.push(condition(
        "ContainersReady",
        containers_ready,
        Some(reason),
        message.clone(),
    ));

    // Ready: containers ready and every readiness gate's condition True.
    let mut gate_problems = Vec::new();
    for gate in spec.readiness_gates.iter().flatten() {
        match other_conditions
            .iter()
            .find(|c| c.type_ == gate.condition_type)
        {
            None => gate_problems.push(format!(
                "corresponding condition of pod readiness gate \"{}\" does not exist.",
                gate.condition_type
            )),
            Some(c) if c.status != "True" => gate_problems.push(format!(
                "the status of pod readiness gate \"{}\" is not \"True\", but {}",
                gate.condition_type, c.status
            )),
            Some(_) => {}
        }
    }
    let ready = if !containers_ready {
        condition("Ready", false, Some(reason), message)
    } else if !gate_problems.is_empty() {
        condition(
            "Ready",
            false,
            Some("ReadinessGatesNotReady"),
            Some(gate_problems.join(", ")),
        )
    } else {
        condition("Ready", true, None, None)
    };
    out.push(ready);
    out
}

/// Sets `lastTransitionTime` (and `lastProbeTime` null): kept from `previous` when the
/// status did not change, `now` otherwise.
pub fn stamp_conditions(conditions: &mut [PodCondition], previous: &[PodCondition], now: &Time) {
    for c in conditions {
        let before = previous.iter().find(|p| p.type_ == c.type_);
        c.last_transition_time = match before {
            Some(p) if p.status == c.status => p.last_transition_time.clone().or(Some(now.clone())),
            _ => Some(now.clone()),
        };
    }
}

/// The pod's QoS class from its containers' resources (`Guaranteed`: every container has
/// cpu and memory limits equal to its requests; `BestEffort`: none has any).
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let containers: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
        for name in ["cpu", "memory"] {
            let limit = limits.and_then(|l| l.get(name));
            let request = requests.and_then(|r| r.get(name)).or(limit);
            let nonzero = |q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
                q.and_then(|q| super::quantity::parse(q).ok())
                    .is_some_and(|q| !q.is_zero())
            };
            if nonzero(request) || nonzero(limit) {
                any = true;
            }
            let same = match (limit, request) {
                (Some(l), Some(r)) => {
                    let (l, r) = (super::quantity::parse(l), super::quantity::parse(r));
                    matches!((l, r), (Ok(l), Ok(r)) if l.millis() == r.millis() && !l.is_zero())
                }
                _ => false,
            };
            if !same {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodReadinessGate, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use std::path::PathBuf;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn rt(
        name: &str,
        attempt: u32,
        state: runtime::ContainerState,
        exit: Option<i32>,
    ) -> runtime::ContainerStatus {
        runtime::ContainerStatus {
            id: runtime::ContainerId(format!("uid-{name}-{attempt}")),
            sandbox: runtime::SandboxId("uid".into()),
            name: name.into(),
            image: "keel.local/busybox:latest".into(),
            image_id: "sha256:abc".into(),
            state,
            restart_count: attempt,
            pid: None,
            created_at: at(0),
            started_at: Some(at(1)),
            finished_at: exit.map(|_| at(5)),
            exit_code: exit,
            reason: None,
            message: None,
            log_path: PathBuf::new(),
        }
    }

    fn snap(name: &str, current: Option<runtime::ContainerStatus>) -> ContainerSnapshot {
        ContainerSnapshot {
            name: name.into(),
            image: "keel.local/busybox:latest".into(),
            current,
            previous: None,
            waiting: None,
            ready: true,
            started: true,
        }
    }

    fn running(name: &str) -> ContainerStatus {
        container_status(&snap(
            name,
            Some(rt(name, 0, runtime::ContainerState::Running, None)),
        ))
    }

    fn exited(name: &str, code: i32) -> ContainerStatus {
        container_status(&snap(
            name,
            Some(rt(name, 0, runtime::ContainerState::Exited, Some(code))),
        ))
    }

    fn creating(name: &str) -> ContainerStatus {
        container_status(&snap(name, None))
    }

    fn crash_looping(name: &str, code: i32) -> ContainerStatus {
        let mut s = snap(
            name,
            Some(rt(name, 3, runtime::ContainerState::Exited, Some(code))),
        );
        s.waiting = Some(Waiting::new("CrashLoopBackOff", Some("back-off".into())));
        container_status(&s)
    }

    fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            ..Default::default()
        }
    }

    fn spec(policy: &str, init: &[&str], containers: &[&str]) -> PodSpec {
        PodSpec {
            restart_policy: Some(policy.into()),
            init_containers: (!init.is_empty())
                .then(|| init.iter().map(|n| container(n)).collect()),
            containers: containers.iter().map(|n| container(n)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn container_states_map_to_the_api() {
        let s = running("app");
        assert!(s.state.as_ref().unwrap().running.is_some());
        assert_eq!(s.container_id.as_deref(), Some("keel://uid-app-0"));
        assert_eq!(s.image_id, "sha256:abc");
        assert!(s.ready);
        assert_eq!(s.started, Some(true));

        let s = exited("app", 0);
        let t = s.state.unwrap().terminated.unwrap();
        assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
        let s = exited("app", 2);
        let t = s.state.unwrap().terminated.unwrap();
        assert_eq!((t.exit_code, t.reason.as_deref()), (2, Some("Error")));
        assert!(!s.ready);

        let s = crash_looping("app", 1);
        assert_eq!(s.restart_count, 3);
        assert_eq!(
            s.state.unwrap().waiting.unwrap().reason.as_deref(),
            Some("CrashLoopBackOff")
        );
        assert_eq!(s.last_state.unwrap().terminated.unwrap().exit_code, 1);

        // A restarted container shows its previous attempt as the last state.
        let mut sn = snap(
            "app",
            Some(rt("app", 1, runtime::ContainerState::Running, None)),
        );
        sn.previous = Some(rt("app", 0, runtime::ContainerState::Exited, Some(137)));
        let s = container_status(&sn);
        assert_eq!(s.restart_count, 1);
        assert_eq!(s.last_state.unwrap().terminated.unwrap().exit_code, 137);

        let s = creating("app");
        assert_eq!(
            s.state.unwrap().waiting.unwrap().reason.as_deref(),
            Some("ContainerCreating")
        );
        assert_eq!(s.container_id, None);
        assert_eq!(s.started, Some(false));
    }

    #[test]
    fn phases_follow_kubelet() {
        let always = spec("Always", &[], &["a", "b"]);
        assert_eq!(
            phase(&always, &[], &[creating("a"), creating("b")], false),
            "Pending"
        );
        assert_eq!(
            phase(&always, &[], &[running("a"), creating("b")], false),
            "Pending"
        );
        assert_eq!(
            phase(&always, &[], &[running("a"), running("b")], false),
            "Running"
        );
        assert_eq!(
            phase(&always, &[], &[running("a"), exited("b", 0)], false),
            "Running"
        );
        assert_eq!(
            phase(&always, &[], &[exited("a", 0), exited("b", 1)], false),
            "Running"
        );
        assert_eq!(
            phase(&always, &[], &[running("a"), crash_looping("b", 1)], false),
            "Running"
        );
        assert_eq!(phase(&always, &[], &[running("a")], false), "Pending");

        let never = spec("Never", &[], &["a", "b"]);
        assert_eq!(
            phase(&never, &[], &[exited("a", 0), exited("b", 0)], false),
            "Succeeded"
        );
        assert_eq!(
            phase(&never, &[], &[exited("a", 0), exited("b", 3)], false),
            "Failed"
        );
        assert_eq!(
            phase(&never, &[], &[running("a"), exited("b", 3)], false),
            "Running"
        );

        let on_failure = spec("OnFailure", &[], &["a"]);
        assert_eq!(
            phase(&on_failure, &[], &[exited("a", 0)], false),
            "Succeeded"
        );
        assert_eq!(
            phase(&on_failure, &[], &[crash_looping("a", 1)], false),
            "Running"
        );
        assert_eq!(phase(&on_failure, &[], &[exited("a", 1)], true), "Failed");

        // Terminal pods (being torn down) end in Succeeded/Failed whatever the policy.
        assert_eq!(
            phase(&always, &[], &[exited("a", 0), exited("b", 0)], true),
            "Succeeded"
        );
        assert_eq!(
            phase(&always, &[], &[exited("a", 0), exited("b", 137)], true),
            "Failed"
        );
    }

    #[test]
    fn init_containers_gate_the_phase() {
        let s = spec("Always", &["i1", "i2"], &["a"]);
        assert_eq!(
            phase(
                &s,
                &[running("i1"), creating("i2")],
                &[creating("a")],
                false
            ),
            "Pending"
        );
        assert_eq!(
            phase(
                &s,
                &[exited("i1", 0), running("i2")],
                &[creating("a")],
                false
            ),
            "Pending"
        );
        assert_eq!(
            phase(
                &s,
                &[exited("i1", 0), exited("i2", 0)],
                &[running("a")],
                false
            ),
            "Running"
        );
        // A failed init container is retried (Pending) unless the policy is Never.
        assert_eq!(
            phase(
                &s,
                &[crash_looping("i1", 1), creating("i2")],
                &[creating("a")],
                false
            ),
            "Pending"
        );
        let never = spec("Never", &["i1"], &["a"]);
        assert_eq!(
            phase(&never, &[exited("i1", 1)], &[creating("a")], false),
            "Failed"
        );
    }

    #[test]
    fn conditions_report_init_readiness_and_gates() {
        let mut s = spec("Always", &["init"], &["a", "b"]);
        let c = conditions(
            &s,
            "Pending",
            true,
            &[running("init")],
            &[creating("a"), creating("b")],
            &[],
        );
        let get = |c: &[PodCondition], t: &str| c.iter().find(|c| c.type_ == t).cloned().unwrap();
        assert_eq!(get(&c, "PodReadyToStartContainers").status, "True");
        let init = get(&c, "Initialized");
        assert_eq!(init.status, "False");
        assert_eq!(init.reason.as_deref(), Some("ContainersNotInitialized"));
        assert_eq!(
            init.message.as_deref(),
            Some("containers with incomplete status: [init]")
        );
        let ready = get(&c, "Ready");
        assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [a b]")
        );

        let c = conditions(
            &s,
            "Running",
            true,
            &[exited("init", 0)],
            &[running("a"), running("b")],
            &[],
        );
        for t in KUBELET_CONDITIONS {
            assert_eq!(get(&c, t).status, "True", "{t}");
        }

        s.readiness_gates = Some(vec![PodReadinessGate {
            condition_type: "example.com/lb".into(),
        }]);
        let c = conditions(
            &s,
            "Running",
            true,
            &[exited("init", 0)],
            &[running("a"), running("b")],
            &[],
        );
        assert_eq!(get(&c, "ContainersReady").status, "True");
        let ready = get(&c, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ReadinessGatesNotReady"));
        let gate = PodCondition {
            type_: "example.com/lb".into(),
            status: "True".into(),
            ..Default::default()
        };
        let c = conditions(
            &s,
            "Running",
            true,
            &[exited("init", 0)],
            &[running("a"), running("b")],
            &[gate],
        );
        assert_eq!(get(&c, "Ready").status, "True");

        let done = spec("Never", &[], &["a"]);
        let c = conditions(&done, "Succeeded", false, &[], &[exited("a", 0)], &[]);
        assert_eq!(get(&c, "Ready").reason.as_deref(), Some("PodCompleted"));
        assert_eq!(get(&c, "PodReadyToStartContainers").status, "False");
    }

    #[test]
    fn transition_times_move_only_on_change() {
        let t0 = time(at(0));
        let t1 = time(at(60));
        let mut first = vec![condition("Ready", false, Some("x"), None)];
        stamp_conditions(&mut first, &[], &t0);
        let mut same = vec![condition("Ready", false, Some("y"), None)];
        stamp_conditions(&mut same, &first, &t1);
        assert_eq!(same[0].last_transition_time, Some(t0.clone()));
        let mut flipped = vec![condition("Ready", true, None, None)];
        stamp_conditions(&mut flipped, &first, &t1);
        assert_eq!(flipped[0].last_transition_time, Some(t1));
    }

    #[test]
    fn qos_classes() {
        let with = |limits: &[(&str, &str)], requests: &[(&str, &str)]| {
            let map = |items: &[(&str, &str)]| {
                (!items.is_empty()).then(|| {
                    items
                        .iter()
                        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                        .collect()
                })
            };
            PodSpec {
                containers: vec![Container {
                    name: "a".into(),
                    resources: Some(ResourceRequirements {
                        limits: map(limits),
                        requests: map(requests),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }
        };
        assert_eq!(qos_class(&with(&[], &[])), "BestEffort");
        assert_eq!(
            qos_class(&with(&[("cpu", "1"), ("memory", "1Gi")], &[])),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&with(
                &[("cpu", "1"), ("memory", "1Gi")],
                &[("cpu", "1000m"), ("memory", "1Gi")]
            )),
            "Guaranteed"
        );
        assert_eq!(qos_class(&with(&[("cpu", "1")], &[])), "Burstable");
        assert_eq!(qos_class(&with(&[], &[("memory", "10Mi")])), "Burstable");
    }

    #[test]
    fn times_are_whole_seconds() {
        let t = time(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_999));
        assert_eq!(t.0.as_second(), 1_700_000_000);
        assert_eq!(t.0.subsec_nanosecond(), 0);
    }
}
