//! The embedded process runtime: pod sandboxes are network namespaces with a veth to the node,
//! containers are processes in their own namespaces with a local OCI image as root filesystem.
pub mod cgroups;
pub mod container;
pub mod exec;
pub mod images;
pub mod ipam;
pub mod network;
pub mod rootfs;
pub mod runtime;
pub mod shim;
