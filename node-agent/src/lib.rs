//! Keel's node agent.
//!
//! - [`agent`]: the kubelet part: Node registration, Lease, pod workers and pod status.
//! - [`datapath`]: the eBPF Service datapath (load, pin, attach, program Services and
//!   EndpointSlices into BPF maps).
//! - [`manifest`]: reading Kubernetes objects from YAML/JSON files.
//! - [`node_services`]: the streaming endpoint and the Service proxy, started beside the pods.
//! - [`proxy`]: the Service proxy: Services and EndpointSlices from the API into the datapath.
//! - [`runtime`]: the container runtime interface (CRI-shaped) and the embedded process runtime.
//! - [`streaming`]: the HTTPS endpoint the control plane proxies `kubectl logs` and
//!   `kubectl exec` to (container logs, exec over WebSocket).
pub mod agent;
pub mod datapath;
pub mod manifest;
pub mod node_services;
pub mod proxy;
pub mod runtime;
pub mod streaming;
