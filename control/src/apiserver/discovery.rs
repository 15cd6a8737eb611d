//! Discovery: the aggregated (`apidiscovery.k8s.io/v2`) and legacy forms of `/api` and
//! `/apis`, the per-group-version resource lists, and `/version`.
use serde_json::{Value, json};

use super::registry::{self, Resource};

/// The Kubernetes version this server speaks (kubectl's dispatcher picks its binary from it).
pub const KUBERNETES_MINOR: &str = "32";
pub const GIT_VERSION: &str = "v1.32.0";

/// The Content-Type of an aggregated discovery answer.
pub fn aggregated_content_type(version: &str) -> String {
    format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList")
}

/// Which aggregated discovery version the Accept header prefers, if any.
pub fn wants_aggregated(accept: Option<&str>) -> Option<&'static str> {
    let accept = accept?;
    for entry in accept.split(',') {
        let params: Vec<&str> = entry.split(';').map(str::trim).collect();
        if !params.contains(&"as=APIGroupDiscoveryList")
            || !params.contains(&"g=apidiscovery.k8s.io")
        {
            if params
                .first()
                .is_some_and(|m| *m == "application/json" || *m == "*/*")
                && params.len() == 1
            {
                // Plain JSON ranked before aggregated discovery: the client prefers legacy.
                return None;
            }
            continue;
        }
        if params.contains(&"v=v2") {
            return Some("v2");
        }
        if params.contains(&"v=v2beta1") {
            return Some("v2beta1");
        }
    }
    None
}

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBERNETES_MINOR,
        "emulationMajor": "1",
        "emulationMinor": KUBERNETES_MINOR,
        "gitVersion": GIT_VERSION,
        "gitCommit": "keel",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn scope(res: &Resource) -> &'static str {
    if res.namespaced {
        "Namespaced"
    } else {
        "Cluster"
    }
}

fn aggregated_resource(res: &Resource) -> Value {
    let mut out = json!({
        "resource": res.plural,
        "responseKind": {"group": res.group, "version": res.version, "kind": res.kind},
        "scope": scope(res),
        "singularResource": res.singular,
        "verbs": res.verbs,
    });
    if !res.short_names.is_empty() {
        out["shortNames"] = json!(res.short_names);
    }
    if !res.categories.is_empty() {
        out["categories"] = json!(res.categories);
    }
    if !res.subresources.is_empty() {
        let subs: Vec<Value> = res
            .subresources
            .iter()
            .map(|s| {
                json!({
                    "subresource": s.name,
                    "responseKind": {"group": s.response.0, "version": s.response.1, "kind": s.response.2},
                    "verbs": s.verbs,
                })
            })
            .collect();
        out["subresources"] = json!(subs);
    }
    out
}

fn aggregated_group(group: &str) -> Value {
    let versions: Vec<Value> = registry::group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| {
            let resources: Vec<Value> = registry::resources_of(g, v)
                .map(aggregated_resource)
                .collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    let mut metadata = json!({"creationTimestamp": null});
    if !group.is_empty() {
        metadata["name"] = json!(group);
    }
    json!({"metadata": metadata, "versions": versions})
}

/// Aggregated discovery for `/api` (`core == true`) or `/apis`.
pub fn aggregated(core: bool, version: &str) -> Value {
    let mut groups: Vec<&str> = Vec::new();
    for (g, _) in registry::group_versions() {
        if (g.is_empty() == core) && !groups.contains(&g) {
            groups.push(g);
        }
    }
    let items: Vec<Value> = groups.into_iter().map(aggregated_group).collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"), "metadata": {}, "items": items})
}

/// Legacy `/api`: the core versions.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn api_group(group: &str) -> Value {
    let versions: Vec<Value> = registry::group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first().cloned().unwrap_or(json!({}));
    json!({"name": group, "versions": versions, "preferredVersion": preferred})
}

/// Legacy `/apis`: the named groups.
pub fn api_group_list() -> Value {
    let mut groups: Vec<&str> = Vec::new();
    for (g, _) in registry::group_versions() {
        if !g.is_empty() && !groups.contains(&g) {
            groups.push(g);
        }
    }
    let groups: Vec<Value> = groups.into_iter().map(api_group).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// Legacy `/apis/<group>`.
pub fn api_group_object(group: &str) -> Value {
    let mut out = api_group(group);
    out["kind"] = json!("APIGroup");
    out["apiVersion"] = json!("v1");
    out
}

/// `/api/v1` or `/apis/<group>/<version>`: an APIResourceList.
pub fn api_resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for res in registry::resources_of(group, version) {
        let mut entry = json!({
            "name": res.plural,
            "singularName": res.singular,
            "namespaced": res.namespaced,
            "kind": res.kind,
            "verbs": res.verbs,
        });
        if !res.short_names.is_empty() {
            entry["shortNames"] = json!(res.short_names);
        }
        if !res.categories.is_empty() {
            entry["categories"] = json!(res.categories);
        }
        resources.push(entry);
        for sub in res.subresources {
            let mut entry = json!({
                "name": format!("{}/{}", res.plural, sub.name),
                "singularName": "",
                "namespaced": res.namespaced,
                "kind": sub.response.2,
                "verbs": sub.verbs,
            });
            if !sub.response.0.is_empty() || sub.response.2 == "Scale" {
                entry["group"] = json!(sub.response.0);
                entry["version"] = json!(sub.response.1);
            }
            resources.push(entry);
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_discovery_lists_every_resource_with_categories() {
        let core = aggregated(true, "v2");
        assert_eq!(core["items"].as_array().unwrap().len(), 1);
        let pods = core["items"][0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "pods")
            .unwrap()
            .clone();
        assert_eq!(pods["categories"], json!(["all"]));
        assert_eq!(pods["shortNames"], json!(["po"]));
        let apis = aggregated(false, "v2");
        let groups: Vec<&str> = apis["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            groups,
            vec!["apps", "discovery.k8s.io", "coordination.k8s.io"]
        );
        let deploy = &apis["items"][0]["versions"][0]["resources"][0];
        assert_eq!(deploy["subresources"][0]["responseKind"]["kind"], "Scale");
    }

    #[test]
    fn aggregated_is_chosen_only_when_preferred() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(wants_aggregated(Some(kubectl)), Some("v2"));
        assert_eq!(wants_aggregated(Some("application/json")), None);
        assert_eq!(wants_aggregated(None), None);
    }

    #[test]
    fn legacy_resource_lists_include_subresources() {
        let list = api_resource_list("apps", "v1");
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"deployments/scale"));
        assert!(names.contains(&"deployments/status"));
        assert_eq!(list["groupVersion"], "apps/v1");
    }
}
