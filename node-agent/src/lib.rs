//! Keel's node agent.
//!
//! - [`datapath`]: the eBPF Service datapath (load, pin, attach, program Services and
//!   EndpointSlices into BPF maps).
//! - [`manifest`]: reading Kubernetes objects from YAML/JSON files.
pub mod datapath;
pub mod manifest;
