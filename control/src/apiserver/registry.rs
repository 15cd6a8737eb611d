//! The table of served resources: names, scope, verbs, subresources, and store keys.
//!
//! Everything that differs between resources only by name (discovery, URL routing, store
//! keys, list kinds) is read from [`RESOURCES`]; behaviour that differs by kind lives in
//! `strategy`.

/// A subresource served under `<resource>/<name>/<subresource>`.
#[derive(Debug)]
pub struct Subresource {
    pub name: &'static str,
    /// `(group, version, kind)` of the object it answers with.
    pub response: (&'static str, &'static str, &'static str),
    pub verbs: &'static [&'static str],
}

/// One served resource.
#[derive(Debug)]
pub struct Resource {
    /// API group; empty for the core (legacy) group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub namespaced: bool,
    pub verbs: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Subresource],
    /// Whether the object's `metadata.generation` tracks its spec.
    pub has_generation: bool,
}

const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const NO_COLLECTION_DELETE: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];
const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

const fn status_of(group: &'static str, version: &'static str, kind: &'static str) -> Subresource {
    Subresource {
        name: "status",
        response: (group, version, kind),
        verbs: STATUS_VERBS,
    }
}

/// Every resource this API server serves.
pub static RESOURCES: &[Resource] = &[
    Resource {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        short_names: &["ns"],
        namespaced: false,
        verbs: NO_COLLECTION_DELETE,
        categories: &[],
        subresources: &[
            Subresource {
                name: "finalize",
                response: ("", "v1", "Namespace"),
                verbs: &["update"],
            },
            status_of("", "v1", "Namespace"),
        ],
        has_generation: false,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        short_names: &["po"],
        namespaced: true,
        verbs: ALL_VERBS,
        categories: &["all"],
        subresources: &[
            Subresource {
                name: "binding",
                response: ("", "v1", "Binding"),
                verbs: &["create"],
            },
            // Streamed from the node agent (see `proxy`).
            Subresource {
                name: "exec",
                response: ("", "v1", "PodExecOptions"),
                verbs: &["create", "get"],
            },
            Subresource {
                name: "log",
                response: ("", "v1", "Pod"),
                verbs: &["get"],
            },
            status_of("", "v1", "Pod"),
        ],
        has_generation: true,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        singular: "service",
        short_names: &["svc"],
        namespaced: true,
        verbs: ALL_VERBS,
        categories: &["all"],
        subresources: &[status_of("", "v1", "Service")],
        has_generation: false,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        singular: "node",
        short_names: &["no"],
        namespaced: false,
        verbs: ALL_VERBS,
        categories: &[],
        subresources: &[status_of("", "v1", "Node")],
        has_generation: false,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        short_names: &["ev"],
        namespaced: true,
        verbs: ALL_VERBS,
        categories: &[],
        subresources: &[],
        has_generation: false,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        short_names: &["cm"],
        namespaced: true,
        verbs: ALL_VERBS,
        categories: &[],
        subresources: &[],
        has_generation: false,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        singular: "secret",
        short_names: &[],
        namespaced: true,
        verbs: ALL_VERBS,
        categories: &[],
        subresources: &[],
        has_generation: false,
    },
    Resource {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        singular: "deployment",
        short_names: &["deploy"],
        namespaced: true,
        verbs: ALL_VERBS,
        categories: &["all"],
        subresources: &[
            Subresource {
                name: "scale",
                response: ("autoscaling", "v1", "Scale"),
                verbs: STATUS_VERBS,
            },
            status_of("apps", "v1", "Deployment"),
        ],
        has_generation: true,
    },
    Resource {
        group: "apps",
        version: "v1",
        kind: "ReplicaSet",
        plural: "replicasets",
        singular: "replicaset",
        short_names: &["rs"],
        namespaced: true,
        verbs: ALL_VERBS,
        categories: &["all"],
        subresources: &[
            Subresource {
                name: "scale",
                response: ("autoscaling", "v1", "Scale"),
                verbs: STATUS_VERBS,
            },
            status_of("apps", "v1", "ReplicaSet"),
        ],
        has_generation: true,
    },
    Resource {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        short_names: &[],
        namespaced: true,
        verbs: ALL_VERBS,
        categories: &[],
        subresources: &[],
        has_generation: false,
    },
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        short_names: &[],
        namespaced: true,
        verbs: ALL_VERBS,
        categories: &[],
        subresources: &[],
        has_generation: false,
    },
];

/// The group-versions served, in discovery order (core first).
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// The resources of one group-version.
pub fn resources_of<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static Resource> + 'a {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

/// Finds a resource by URL coordinates.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Every served resource.
pub fn all() -> &'static [Resource] {
    RESOURCES
}

/// Finds a resource by kind.
pub fn by_kind(kind: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.kind == kind)
}

impl Resource {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `PodList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The subresource called `name`, if served.
    pub fn subresource(&self, name: &str) -> Option<&'static Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }

    /// Whether `status` is a separate subresource (then the main resource ignores status writes).
    pub fn has_status(&self) -> bool {
        self.subresource("status").is_some()
    }

    /// The group segment of store keys (`core` for the legacy group).
    fn key_group(&self) -> &'static str {
        if self.group.is_empty() {
            "core"
        } else {
            self.group
        }
    }

    /// The store key of one object: `/registry/<group>/<plural>/[<namespace>/]<name>`.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!(
                "/registry/{}/{}/{}/{}",
                self.key_group(),
                self.plural,
                ns,
                name
            ),
            _ => format!("/registry/{}/{}/{}", self.key_group(), self.plural, name),
        }
    }

    /// The store prefix of a list: all objects, or those of one namespace.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("/registry/{}/{}/{}/", self.key_group(), self.plural, ns),
            _ => format!("/registry/{}/{}/", self.key_group(), self.plural),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_registry_layout() {
        let pods = find("", "v1", "pods").unwrap();
        assert_eq!(
            pods.key(Some("default"), "web"),
            "/registry/core/pods/default/web"
        );
        assert_eq!(pods.prefix(Some("default")), "/registry/core/pods/default/");
        assert_eq!(pods.prefix(None), "/registry/core/pods/");
        let deploy = find("apps", "v1", "deployments").unwrap();
        assert_eq!(
            deploy.key(Some("ns"), "d"),
            "/registry/apps/deployments/ns/d"
        );
        let nodes = find("", "v1", "nodes").unwrap();
        assert_eq!(nodes.key(None, "n1"), "/registry/core/nodes/n1");
        assert_eq!(deploy.api_version(), "apps/v1");
        assert_eq!(deploy.list_kind(), "DeploymentList");
    }

    #[test]
    fn group_versions_start_with_core() {
        let gvs = group_versions();
        assert_eq!(gvs[0], ("", "v1"));
        assert!(gvs.contains(&("apps", "v1")));
        assert!(gvs.contains(&("discovery.k8s.io", "v1")));
        assert!(gvs.contains(&("coordination.k8s.io", "v1")));
    }
}
