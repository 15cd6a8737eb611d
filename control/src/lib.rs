//! Keel's control plane (`keel-control`).
//!
//! - [`server`]: configuration and the HTTPS server (`run`, `start`) in front of the API.
//! - [`apiserver`]: the Kubernetes-compatible API (routing, storage semantics, discovery).
//! - [`compactor`]: periodic compaction of the store's history (`--compaction-interval`).
//! - [`store`]: the revisioned key-value store trait and its backends (embedded redb, etcd).
//! - [`pki`]: the cluster CA, serving certificate, admin token and kubeconfig.
//! - [`metrics`]: Prometheus metrics of the API server.
pub mod apiserver;
pub mod compactor;
pub mod controllers;
pub mod metrics;
pub mod pki;
pub mod server;
pub mod store;

pub use server::{Config, Running, StoreBackend, run, start};
