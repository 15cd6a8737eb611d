//! The Kubernetes-compatible API server.
//!
//! - [`registry`]: the served resources (names, scope, verbs, subresources, store keys).
//! - [`request`]: URL routing, query options, content negotiation, body decoding.
//! - [`handlers`]: the HTTP glue from requests to storage and back.
//! - [`storage`]: generic REST semantics over the store (CRUD, preconditions, finalizers).
//! - [`strategy`]: per-kind write rules (status, generation, typed normalization).
//! - [`watch`]: watch streams; [`table`]: `kubectl get` tables; [`selectors`]: label/field selectors.
//! - [`discovery`], [`openapi`]: discovery documents, `/version`, OpenAPI v3.
//! - [`allocator`]: Service ClusterIPs and NodePorts; [`namespaces`]: namespace lifecycle.
//! - [`status`]: API errors as `Status` objects; [`protobuf`]: protobuf request bodies.
//! - [`proxy`]: `pods/log` and `pods/exec` proxied to the node agent running the pod.
//! - [`patch`], [`validation`], [`defaults`]: patch application, validation, defaulting.
pub mod allocator;
pub mod defaults;
pub mod discovery;
pub mod handlers;
pub mod namespaces;
pub mod openapi;
pub mod patch;
pub mod protobuf;
#[rustfmt::skip] // generated (control/tools/protobuf_schema.py): one line per field
pub mod protobuf_schema;
pub mod proxy;
pub mod registry;
pub mod request;
pub mod selectors;
pub mod status;
pub mod storage;
pub mod strategy;
pub mod table;
pub mod validation;
pub mod watch;
