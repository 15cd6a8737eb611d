//! Keel's datapath in the benchmark: the catalogue as Kubernetes objects, and a guard that loads
//! the datapath into a per-run pin directory, programs it (timed) and tears it down on every
//! exit path.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec as K8sServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keel_agent::datapath::{Datapath, DatapathConfig};
use keel_tests::netns::run_in_netns;

use crate::catalogue::{Catalogue, NAMESPACE, ServiceSpec};

/// Label tying an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn service(spec: &ServiceSpec) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(spec.name.clone()),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        spec: Some(K8sServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(spec.vip.to_string()),
            cluster_ips: Some(vec![spec.vip.to_string()]),
            ports: Some(vec![ServicePort {
                name: Some(spec.port_name.into()),
                port: i32::from(spec.port),
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::Int(i32::from(spec.port))),
                ..Default::default()
            }]),
            session_affinity: Some(if spec.affinity { "ClientIP" } else { "None" }.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn endpoint_slice(spec: &ServiceSpec) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{}-bench", spec.name)),
            namespace: Some(NAMESPACE.into()),
            labels: Some(BTreeMap::from([(
                SERVICE_NAME_LABEL.into(),
                spec.name.clone(),
            )])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: spec
            .endpoints
            .iter()
            .map(|ip| Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some(spec.port_name.into()),
            port: Some(i32::from(spec.port)),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

/// The catalogue as the API server would serve it.
pub fn k8s_objects(catalogue: &Catalogue) -> (Vec<Service>, Vec<EndpointSlice>) {
    catalogue
        .services()
        .iter()
        .map(|s| (service(s), endpoint_slice(s)))
        .unzip()
}

/// Keel loaded and attached for one measurement; torn down (programs detached, pins removed)
/// when dropped.
pub struct LoadedKeel {
    datapath: Option<Datapath>,
    pin_dir: PathBuf,
}

/// Where a bench run pins its datapath.
pub fn pin_dir() -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/keel-bench-{}", std::process::id()))
}

/// Removes pin directories of killed bench runs (their pinned links keep programs attached).
pub fn sweep_stale_pins() -> usize {
    let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") else {
        return 0;
    };
    entries
        .flatten()
        .take(10_000)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("keel-bench-")
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .filter(|e| std::fs::remove_dir_all(e.path()).is_ok())
        .count()
}

impl LoadedKeel {
    /// Loads the datapath, programs the services (the returned duration is the `sync` call:
    /// translation plus map writes), then attaches the socket programs to `client_cgroup` and the
    /// per-packet program to each pod's host veth, all from inside `node_ns`.
    pub fn load(
        node_ns: &str,
        client_cgroup: &Path,
        host_veths: &[&str],
        node_addrs: &[Ipv4Addr],
        services: &[Service],
        slices: &[EndpointSlice],
    ) -> Result<(LoadedKeel, Duration)> {
        let pin_dir = pin_dir();
        let mut keel = LoadedKeel {
            datapath: None,
            pin_dir: pin_dir.clone(),
        };
        let cfg = DatapathConfig {
            pin_dir,
            node_name: "bench-node".into(),
        };
        let program_time = run_in_netns(node_ns, || -> Result<Duration> {
            let dp = keel
                .datapath
                .insert(Datapath::load(cfg).context("loading Keel's datapath")?);
            dp.set_node_addresses(node_addrs)
                .context("setting node addresses")?;
            let start = Instant::now();
            let stats = dp.sync(services, slices).context("programming services")?;
            let elapsed = start.elapsed();
            if let Some(w) = stats.warnings.first() {
                eprintln!(
                    "  keel: {} translation warnings, first: {w}",
                    stats.warnings.len()
                );
            }
            dp.attach_cgroup(client_cgroup)
                .context("attaching to the client cgroup")?;
            for dev in host_veths {
                dp.attach_pod_device(dev)
                    .with_context(|| format!("attaching to {dev}"))?;
            }
            Ok(elapsed)
        })??;
        Ok((keel, program_time))
    }

    /// Tears down now, reporting errors (dropping does the same but can only warn).
    pub fn unload(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let result = match self.datapath.take() {
            Some(dp) => dp
                .teardown()
                .map_err(|e| anyhow!(e))
                .context("tearing down Keel's datapath"),
            None => Ok(()),
        };
        // Unpinning the links detaches the programs, whatever happened above.
        match std::fs::remove_dir_all(&self.pin_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                result.and(Err(e).with_context(|| format!("removing {}", self.pin_dir.display())))
            }
            _ => result,
        }
    }
}

impl Drop for LoadedKeel {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("warning: cleanup: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_follow_the_endpointslice_contract() {
        let backends: Vec<_> = (11..14).map(|i| Ipv4Addr::new(10, 244, 0, i)).collect();
        let cat = Catalogue::new(5, &backends).expect("valid scale");
        let (services, slices) = k8s_objects(&cat);
        assert_eq!(services.len(), 6);
        let json = serde_json::to_value(&slices[5]).expect("serializable");
        assert_eq!(
            json["metadata"]["labels"][SERVICE_NAME_LABEL],
            "target-http"
        );
        assert_eq!(json["addressType"], "IPv4");
        assert_eq!(json["ports"][0]["name"], "http");
        assert_eq!(json["endpoints"][0]["conditions"]["ready"], true);
        let svc = serde_json::to_value(&services[4]).expect("serializable");
        assert_eq!(svc["spec"]["sessionAffinity"], "ClientIP");
        assert_eq!(svc["spec"]["ports"][0]["name"], "iperf");
    }
}
