//! Keel's node agent.
//!
//! - [`datapath`]: the eBPF Service datapath (load, pin, attach, program Services and
//!   EndpointSlices into BPF maps).
//! - [`manifest`]: reading Kubernetes objects from YAML/JSON files.
//! - [`runtime`]: the container runtime interface (CRI-shaped) and the embedded process runtime.
pub mod datapath;
pub mod manifest;
pub mod runtime;
