//! Services + EndpointSlices → the frontends the datapath must serve. A pure function: no
//! kernel, no clock, deterministic output (golden-tested from YAML in `tests/golden/`).
//!
//! Semantics follow kube-proxy:
//! - frontends: every IPv4 ClusterIP, NodePort, external IP and load-balancer ingress IP of each
//!   TCP/UDP service port (SCTP and IPv6 are reported and skipped);
//! - backends come from the EndpointSlices labelled `kubernetes.io/service-name`, matched to the
//!   service port by port name and protocol;
//! - new connections go to ready endpoints; when there are none, to serving terminating ones
//!   (ProxyTerminatingEndpoints); other terminating endpoints keep their existing flows only;
//! - `internalTrafficPolicy: Local` (ClusterIP) and `externalTrafficPolicy: Local` (NodePort,
//!   external and load-balancer IPs) restrict a frontend to endpoints on this node;
//! - `sessionAffinity: ClientIP` with `sessionAffinityConfig.clientIP.timeoutSeconds` (default
//!   10800 s).
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use keel_common::{PROTO_TCP, PROTO_UDP};

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10800;

/// What the translation needs to know about the node it runs on.
#[derive(Clone, Debug, Default)]
pub struct NodeContext {
    /// This node's name, compared with endpoints' `nodeName` for `Local` traffic policies.
    pub node_name: String,
}

/// An L4 protocol the datapath balances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            PROTO_TCP => Some(Proto::Tcp),
            PROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }

    fn parse(s: Option<&str>) -> Result<Proto, String> {
        match s.unwrap_or("TCP") {
            "TCP" => Ok(Proto::Tcp),
            "UDP" => Ok(Proto::Udp),
            other => Err(format!("protocol {other} is not supported by the datapath")),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        })
    }
}

/// How a frontend's address is matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Exactly this address (ClusterIP, external IP, load-balancer IP).
    Addr,
    /// Any of the node's addresses (NodePort).
    NodePort,
}

/// Where clients connect: the key of the service map without its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub scope: Scope,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scope {
            Scope::Addr => write!(f, "{}:{}/{}", self.addr, self.port, self.proto),
            Scope::NodePort => write!(f, "nodeport:{}/{}", self.port, self.proto),
        }
    }
}

/// A backend address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.proto)
    }
}

/// What one frontend must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendSpec {
    /// `namespace/name:port-name` of the Service, for logs and metrics.
    pub service: String,
    /// Endpoints that take new connections, sorted. Empty: the frontend rejects.
    pub backends: Vec<Endpoint>,
    /// Terminating endpoints that only keep their existing flows, sorted.
    pub lingering: Vec<Endpoint>,
    /// `Some(timeout)` with `sessionAffinity: ClientIP`.
    pub affinity_timeout_s: Option<u32>,
    /// A `Local` traffic policy left this frontend without endpoints although the service has
    /// some elsewhere (reported with its own drop reason).
    pub no_local_backend: bool,
}

/// The complete desired datapath state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub frontends: BTreeMap<Frontend, FrontendSpec>,
    /// What was skipped and why (unsupported protocols, unparsable addresses, conflicts).
    pub warnings: Vec<String>,
}

/// One endpoint of a service port as the slices describe it.
#[derive(Clone, Copy, Debug)]
struct EndpointState {
    ep: Endpoint,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

/// Translates the cluster's Services and EndpointSlices into the frontends this node serves.
/// Takes the objects themselves or anything that borrows as them (e.g. a reflector's `Arc`s,
/// so the caller needs no copy).
pub fn translate<S, E>(services: &[S], slices: &[E], node: &NodeContext) -> Desired
where
    S: std::borrow::Borrow<Service>,
    E: std::borrow::Borrow<EndpointSlice>,
{
    let mut desired = Desired::default();
    // Index slices by (namespace, service name).
    let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices.iter().map(|s| s.borrow()) {
        let Some(name) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let ns = slice
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        by_service
            .entry((ns, name.clone()))
            .or_default()
            .push(slice);
    }

    // Deterministic order regardless of input order: the first claimant of a frontend wins.
    let mut ordered: Vec<&Service> = services.iter().map(|s| s.borrow()).collect();
    ordered.sort_by(|a, b| {
        (a.metadata.namespace.as_deref(), a.metadata.name.as_deref())
            .cmp(&(b.metadata.namespace.as_deref(), b.metadata.name.as_deref()))
    });

    for svc in ordered {
        translate_service(svc, &by_service, node, &mut desired);
    }
    desired
}

fn translate_service(
    svc: &Service,
    by_service: &BTreeMap<(String, String), Vec<&EndpointSlice>>,
    node: &NodeContext,
    desired: &mut Desired,
) {
    let ns = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let Some(name) = svc.metadata.name.clone() else {
        desired
            .warnings
            .push("a Service without metadata.name was skipped".into());
        return;
    };
    let Some(spec) = svc.spec.as_ref() else {
        return;
    };
    let svc_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    if svc_type == "ExternalName" {
        return;
    }
    let affinity = match spec.session_affinity.as_deref() {
        Some("ClientIP") => Some(
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S),
        ),
        _ => None,
    };
    let itp_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let etp_local = spec.external_traffic_policy.as_deref() == Some("Local");

    let mut cluster_ips: Vec<Ipv4Addr> = Vec::new();
    let ips = spec
        .cluster_ips
        .clone()
        .unwrap_or_default()
        .into_iter()
        .chain(spec.cluster_ip.clone());
    for ip in ips {
        if ip.is_empty() || ip == "None" {
            continue;
        }
        match ip.parse::<Ipv4Addr>() {
            Ok(a) if !cluster_ips.contains(&a) => cluster_ips.push(a),
            Ok(_) => {}
            Err(_) if ip.contains(':') => {} // IPv6: not handled by this IPv4 datapath.
            Err(_) => desired.warnings.push(format!(
                "{ns}/{name}: clusterIP {ip:?} is not an IPv4 address"
            )),
        }
    }
    let mut external: Vec<Ipv4Addr> = Vec::new();
    let ext = spec
        .external_ips
        .clone()
        .unwrap_or_default()
        .into_iter()
        .chain(
            svc.status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.clone()),
        );
    for ip in ext {
        match ip.parse::<Ipv4Addr>() {
            Ok(a) if !external.contains(&a) => external.push(a),
            Ok(_) => {}
            Err(_) if ip.contains(':') => {}
            Err(_) => desired.warnings.push(format!(
                "{ns}/{name}: external IP {ip:?} is not an IPv4 address"
            )),
        }
    }

    let slices = by_service.get(&(ns.clone(), name.clone()));
    for port in spec.ports.as_deref().unwrap_or_default() {
        let port_name = port.name.clone().unwrap_or_default();
        let proto = match Proto::parse(port.protocol.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                desired
                    .warnings
                    .push(format!("{ns}/{name} port {port_name:?}: {e}; skipped"));
                continue;
            }
        };
        let Ok(svc_port) = u16::try_from(port.port) else {
            desired
                .warnings
                .push(format!("{ns}/{name}: port {} out of range", port.port));
            continue;
        };
        let endpoints = collect_endpoints(
            slices.map(Vec::as_slice).unwrap_or_default(),
            &port_name,
            proto,
            node,
        );
        let label = if port_name.is_empty() {
            format!("{ns}/{name}")
        } else {
            format!("{ns}/{name}:{port_name}")
        };

        let add = |fe: Frontend, local_only: bool, desired: &mut Desired| {
            let spec = frontend_spec(&label, &endpoints, local_only, affinity);
            if let Some(prev) = desired.frontends.get(&fe) {
                desired.warnings.push(format!(
                    "{label}: frontend {fe} already belongs to {}; skipped",
                    prev.service
                ));
                return;
            }
            desired.frontends.insert(fe, spec);
        };
        for ip in &cluster_ips {
            add(
                Frontend {
                    scope: Scope::Addr,
                    addr: *ip,
                    port: svc_port,
                    proto,
                },
                itp_local,
                desired,
            );
        }
        for ip in &external {
            add(
                Frontend {
                    scope: Scope::Addr,
                    addr: *ip,
                    port: svc_port,
                    proto,
                },
                etp_local,
                desired,
            );
        }
        if matches!(svc_type, "NodePort" | "LoadBalancer")
            && let Some(np) = port
                .node_port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
        {
            add(
                Frontend {
                    scope: Scope::NodePort,
                    addr: Ipv4Addr::UNSPECIFIED,
                    port: np,
                    proto,
                },
                etp_local,
                desired,
            );
        }
    }
}

/// The endpoints of one service port, deduplicated by address (a pod can briefly appear in two
/// slices; the most available view wins).
fn collect_endpoints(
    slices: &[&EndpointSlice],
    port_name: &str,
    proto: Proto,
    node: &NodeContext,
) -> Vec<EndpointState> {
    let mut out: BTreeMap<Endpoint, EndpointState> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let Some(port) = slice.ports.as_deref().unwrap_or_default().iter().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && Proto::parse(p.protocol.as_deref()).ok() == Some(proto)
        }) else {
            continue;
        };
        let Some(num) = port
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            // Consumers use the first address (EndpointSlice API: the others are ignored).
            let Some(addr) = ep
                .addresses
                .first()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let cond = ep.conditions.as_ref();
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            let local = ep.node_name.as_deref() == Some(node.node_name.as_str())
                && !node.node_name.is_empty();
            let state = EndpointState {
                ep: Endpoint {
                    addr,
                    port: num,
                    proto,
                },
                ready,
                serving,
                terminating,
                local,
            };
            out.entry(state.ep)
                .and_modify(|s| {
                    if rank(&state) > rank(s) {
                        *s = state;
                    }
                })
                .or_insert(state);
        }
    }
    out.into_values().collect()
}

fn rank(s: &EndpointState) -> u8 {
    match (s.ready && !s.terminating, s.serving) {
        (true, _) => 2,
        (false, true) => 1,
        _ => 0,
    }
}

fn frontend_spec(
    label: &str,
    endpoints: &[EndpointState],
    local_only: bool,
    affinity: Option<u32>,
) -> FrontendSpec {
    let candidates: Vec<&EndpointState> = endpoints
        .iter()
        .filter(|e| !local_only || e.local)
        .collect();
    let ready: BTreeSet<Endpoint> = candidates
        .iter()
        .filter(|e| e.ready && !e.terminating)
        .map(|e| e.ep)
        .collect();
    let backends: BTreeSet<Endpoint> = if ready.is_empty() {
        candidates
            .iter()
            .filter(|e| e.serving && e.terminating)
            .map(|e| e.ep)
            .collect()
    } else {
        ready
    };
    let lingering: Vec<Endpoint> = candidates
        .iter()
        .filter(|e| e.terminating && !backends.contains(&e.ep))
        .map(|e| e.ep)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let no_local_backend = local_only
        && backends.is_empty()
        && endpoints
            .iter()
            .any(|e| (e.ready && !e.terminating) || e.serving);
    FrontendSpec {
        service: label.to_string(),
        backends: backends.into_iter().collect(),
        lingering,
        affinity_timeout_s: affinity,
        no_local_backend,
    }
}
