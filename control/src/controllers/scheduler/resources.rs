//! Resource arithmetic of the scheduler: quantities as integers (millicores, bytes) and a pod's
//! effective requests, computed as kube-scheduler's `resourcehelper.PodRequests` does.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::apiserver::validation::ParsedQuantity;

/// CPU and memory, the resources the scheduler accounts for (the pod count is kept apart).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
}

impl Resources {
    pub fn add(&mut self, other: Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
    }

    pub fn sub(&mut self, other: Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(other.milli_cpu);
        self.memory = self.memory.saturating_sub(other.memory);
    }

    /// The larger of each resource.
    pub fn max(self, other: Resources) -> Resources {
        Resources {
            milli_cpu: self.milli_cpu.max(other.milli_cpu),
            memory: self.memory.max(other.memory),
        }
    }
}

/// What the scheduler assumes for a container that requests no CPU, when scoring (not when
/// checking fit), as kube-scheduler's `DefaultMilliCPURequest`.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// The memory counterpart (200 MiB), as `DefaultMemoryRequest`.
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// Rounds a float that should be an integer: a value within rounding noise of an integer is
/// that integer, anything else rounds up (as `Quantity.Value`/`MilliValue` do).
fn round_up(value: f64) -> i64 {
    let nearest = value.round();
    let rounded = if (value - nearest).abs() <= 1e-9 * nearest.abs().max(1.0) {
        nearest
    } else {
        value.ceil()
    };
    // `as` saturates at the i64 bounds.
    rounded as i64
}

fn parse(quantity: &Quantity) -> Option<ParsedQuantity> {
    match ParsedQuantity::parse(&quantity.0) {
        Ok(parsed) if !parsed.is_negative() => Some(parsed),
        Ok(_) => {
            tracing::warn!(
                quantity = quantity.0,
                "negative resource quantity counted as 0"
            );
            None
        }
        Err(e) => {
            tracing::warn!(
                quantity = quantity.0,
                error = e,
                "malformed resource quantity counted as 0"
            );
            None
        }
    }
}

/// A quantity in thousandths (CPU in millicores), rounded up; malformed or negative is 0.
pub fn milli_value(quantity: &Quantity) -> i64 {
    parse(quantity).map_or(0, |q| round_up(q.as_f64() * 1000.0))
}

/// A quantity in units (memory in bytes), rounded up; malformed or negative is 0.
pub fn value(quantity: &Quantity) -> i64 {
    parse(quantity).map_or(0, |q| round_up(q.as_f64()))
}

/// The CPU and memory of a resource list (`requests`, `allocatable`, `overhead`), with
/// `defaults` standing in for a missing (not a zero) entry.
pub fn resource_list(list: Option<&BTreeMap<String, Quantity>>, defaults: Resources) -> Resources {
    let cpu = list.and_then(|l| l.get("cpu"));
    let memory = list.and_then(|l| l.get("memory"));
    Resources {
        milli_cpu: cpu.map_or(defaults.milli_cpu, milli_value),
        memory: memory.map_or(defaults.memory, value),
    }
}

/// The `pods` entry of a node's allocatable (0 when absent, as in Kubernetes).
pub fn allowed_pods(list: Option<&BTreeMap<String, Quantity>>) -> i64 {
    list.and_then(|l| l.get("pods")).map_or(0, value)
}

fn container_requests(container: &Container, defaults: Resources) -> Resources {
    let requests = container
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref());
    resource_list(requests, defaults)
}

/// A pod's effective requests: the larger of its containers' sum and what each init container
/// needs while it runs (next to the sidecars started before it), plus the pod overhead.
/// `defaults` replace the requests a container leaves out (zero for fit, the scheduler's
/// defaults for scoring).
pub fn pod_requests(pod: &Pod, defaults: Resources) -> Resources {
    let Some(spec) = &pod.spec else {
        return Resources::default();
    };
    let mut total = Resources::default();
    for container in &spec.containers {
        total.add(container_requests(container, defaults));
    }
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for container in spec.init_containers.iter().flatten() {
        let mut during = container_requests(container, defaults);
        if container.restart_policy.as_deref() == Some("Always") {
            // A sidecar keeps running next to the app containers and the later init containers.
            total.add(during);
            sidecars.add(during);
            during = sidecars;
        } else {
            during.add(sidecars);
        }
        init_peak = init_peak.max(during);
    }
    let mut requests = total.max(init_peak);
    if let Some(overhead) = &spec.overhead {
        requests.add(resource_list(Some(overhead), Resources::default()));
    }
    requests
}

/// The requests used to check whether a pod fits.
pub fn fit_requests(pod: &Pod) -> Resources {
    pod_requests(pod, Resources::default())
}

/// The requests used to score nodes: a container without a CPU or memory request counts as
/// asking for the defaults, so best-effort pods still spread.
pub fn score_requests(pod: &Pod) -> Resources {
    pod_requests(
        pod,
        Resources {
            milli_cpu: DEFAULT_MILLI_CPU_REQUEST,
            memory: DEFAULT_MEMORY_REQUEST,
        },
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};

    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    fn container(cpu: Option<&str>, memory: Option<&str>) -> Container {
        let mut requests = BTreeMap::new();
        if let Some(cpu) = cpu {
            requests.insert("cpu".to_string(), q(cpu));
        }
        if let Some(memory) = memory {
            requests.insert("memory".to_string(), q(memory));
        }
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: Some(requests),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn quantities_convert_to_millicores_and_bytes() {
        assert_eq!(milli_value(&q("100m")), 100);
        assert_eq!(milli_value(&q("0.1")), 100);
        assert_eq!(milli_value(&q("2")), 2000);
        assert_eq!(milli_value(&q("1.5")), 1500);
        assert_eq!(milli_value(&q("1e-3")), 1);
        // Below a millicore rounds up, as Quantity.MilliValue does.
        assert_eq!(milli_value(&q("500u")), 1);
        assert_eq!(value(&q("128Mi")), 128 << 20);
        assert_eq!(value(&q("1.5Gi")), 3 << 29);
        assert_eq!(value(&q("1G")), 1_000_000_000);
        assert_eq!(value(&q("1k")), 1000);
        assert_eq!(value(&q("1Ki")), 1024);
        assert_eq!(value(&q("2Ti")), 2 << 40);
        assert_eq!(value(&q("1T")), 1_000_000_000_000);
        assert_eq!(value(&q("1Ei")), 1 << 60);
        assert_eq!(value(&q("1E")), 1_000_000_000_000_000_000);
        assert_eq!(value(&q("12e6")), 12_000_000);
        assert_eq!(value(&q("1M")), 1_000_000);
        assert_eq!(value(&q("110")), 110);
    }

    #[test]
    fn garbage_quantities_count_as_zero() {
        for bad in ["", "abc", "1x", "1.2.3", "-1", "1 Gi"] {
            assert_eq!(value(&q(bad)), 0, "{bad:?}");
            assert_eq!(milli_value(&q(bad)), 0, "{bad:?}");
        }
    }

    #[test]
    fn pod_requests_take_the_init_peak_and_add_overhead() {
        let mut overhead = BTreeMap::new();
        overhead.insert("cpu".to_string(), q("10m"));
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![
                    container(Some("100m"), Some("64Mi")),
                    container(Some("200m"), None),
                ],
                init_containers: Some(vec![container(Some("1"), Some("32Mi"))]),
                overhead: Some(overhead),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            fit_requests(&pod),
            Resources {
                milli_cpu: 1010,
                memory: 64 << 20
            }
        );
        // Scoring fills in the missing memory request of the second container.
        assert_eq!(
            score_requests(&pod).memory,
            (64 << 20) + DEFAULT_MEMORY_REQUEST
        );
    }

    #[test]
    fn sidecars_run_next_to_everything_after_them() {
        let mut sidecar = container(Some("100m"), None);
        sidecar.restart_policy = Some("Always".into());
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![container(Some("300m"), None)],
                init_containers: Some(vec![sidecar, container(Some("500m"), None)]),
                ..Default::default()
            }),
            ..Default::default()
        };
        // The second init container runs next to the sidecar: 600m; the app phase needs 400m.
        assert_eq!(fit_requests(&pod).milli_cpu, 600);
    }

    #[test]
    fn explicit_zero_is_not_replaced_by_the_scoring_default() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![container(Some("0"), None)],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(score_requests(&pod).milli_cpu, 0);
        assert_eq!(score_requests(&pod).memory, DEFAULT_MEMORY_REQUEST);
    }
}
