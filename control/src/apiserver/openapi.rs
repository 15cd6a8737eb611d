//! OpenAPI v3: the `/openapi/v3` root and one document per group-version.
//!
//! Schemas come from k8s-openapi's `schemars` support, named like Kubernetes'
//! (`io.k8s.api.apps.v1.Deployment`), with `x-kubernetes-group-version-kind` on each kind and
//! the strategic-merge list keys (`x-kubernetes-patch-merge-key`/`-strategy`) from the patch
//! module, so `kubectl explain` and client-side `kubectl apply` work. Every PATCH operation
//! carries `x-kubernetes-group-version-kind` and a `fieldValidation` parameter, which is how
//! kubectl decides to let the server validate fields.
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::OnceLock;

use k8s_openapi::schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use super::discovery::GIT_VERSION;
use super::patch::{self, ListMerge};
use super::registry::{self, Resource};

/// The generated documents, keyed by `api/v1` / `apis/<group>/<version>`.
struct Documents {
    root: Vec<u8>,
    by_path: BTreeMap<String, (Vec<u8>, String)>,
}

static DOCUMENTS: OnceLock<Documents> = OnceLock::new();

fn documents() -> &'static Documents {
    DOCUMENTS.get_or_init(build)
}

/// The root document (`/openapi/v3`).
pub fn root() -> &'static [u8] {
    &documents().root
}

/// The document of one group-version (`gv_path` is `api/v1` or `apis/apps/v1`) and its hash.
pub fn group_version(gv_path: &str) -> Option<(&'static [u8], &'static str)> {
    documents()
        .by_path
        .get(gv_path)
        .map(|(doc, hash)| (doc.as_slice(), hash.as_str()))
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn build() -> Documents {
    let mut by_path = BTreeMap::new();
    let mut root_paths = Map::new();
    for (group, version) in registry::group_versions() {
        let doc = group_version_document(group, version);
        let bytes = serde_json::to_vec(&doc).unwrap_or_default();
        let mut hasher = DefaultHasher::new();
        bytes.hash(&mut hasher);
        let hash = format!("{:016X}", hasher.finish());
        let path = gv_path(group, version);
        root_paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
        );
        by_path.insert(path, (bytes, hash));
    }
    let root = serde_json::to_vec(&json!({"paths": root_paths})).unwrap_or_default();
    Documents { root, by_path }
}

/// Adds the schema of a kind (and everything it refers to) to the generator.
fn add_schema(generator: &mut SchemaGenerator, kind: &str) {
    use k8s_openapi::api::{apps, autoscaling, coordination, core, discovery};
    use k8s_openapi::apimachinery::pkg::apis::meta;
    match kind {
        "Namespace" => drop(generator.subschema_for::<core::v1::Namespace>()),
        "Pod" => drop(generator.subschema_for::<core::v1::Pod>()),
        "Service" => drop(generator.subschema_for::<core::v1::Service>()),
        "Node" => drop(generator.subschema_for::<core::v1::Node>()),
        "Event" => drop(generator.subschema_for::<core::v1::Event>()),
        "ConfigMap" => drop(generator.subschema_for::<core::v1::ConfigMap>()),
        "Secret" => drop(generator.subschema_for::<core::v1::Secret>()),
        "Binding" => drop(generator.subschema_for::<core::v1::Binding>()),
        "Deployment" => drop(generator.subschema_for::<apps::v1::Deployment>()),
        "ReplicaSet" => drop(generator.subschema_for::<apps::v1::ReplicaSet>()),
        "Scale" => drop(generator.subschema_for::<autoscaling::v1::Scale>()),
        "EndpointSlice" => drop(generator.subschema_for::<discovery::v1::EndpointSlice>()),
        "Lease" => drop(generator.subschema_for::<coordination::v1::Lease>()),
        "Status" => drop(generator.subschema_for::<meta::v1::Status>()),
        "DeleteOptions" => drop(generator.subschema_for::<meta::v1::DeleteOptions>()),
        _ => {}
    }
}

/// The Kubernetes definition name of a kind: `io.k8s.api.apps.v1.Deployment`.
fn definition_name(group: &str, version: &str, kind: &str) -> String {
    let package = match group {
        "" => "core".to_string(),
        g => g
            .trim_end_matches(".k8s.io")
            .split('.')
            .next()
            .unwrap_or(g)
            .to_string(),
    };
    match kind {
        "Status" | "DeleteOptions" => format!("io.k8s.apimachinery.pkg.apis.meta.v1.{kind}"),
        _ => format!("io.k8s.api.{package}.{version}.{kind}"),
    }
}

fn group_version_document(group: &str, version: &str) -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let resources: Vec<&Resource> = registry::resources_of(group, version).collect();
    for res in &resources {
        add_schema(&mut generator, res.kind);
        for sub in res.subresources {
            add_schema(&mut generator, sub.response.2);
        }
    }
    add_schema(&mut generator, "Status");
    add_schema(&mut generator, "DeleteOptions");
    let mut schemas = generator.take_definitions(true);
    for res in &resources {
        let name = definition_name(res.group, res.version, res.kind);
        if let Some(schema) = schemas.get_mut(&name) {
            schema["x-kubernetes-group-version-kind"] =
                json!([{"group": res.group, "kind": res.kind, "version": res.version}]);
        }
        annotate_merge_keys(&mut schemas, &name, res.kind, "", 0);
    }
    if let Some(scale) = schemas.get_mut("io.k8s.api.autoscaling.v1.Scale") {
        scale["x-kubernetes-group-version-kind"] =
            json!([{"group": "autoscaling", "kind": "Scale", "version": "v1"}]);
    }
    let mut paths = Map::new();
    for res in &resources {
        add_paths(&mut paths, res);
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": GIT_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// The definition a property schema refers to (`$ref` directly or through `allOf`).
fn referenced(schema: &Value) -> Option<String> {
    let reference = schema
        .get("$ref")
        .or_else(|| schema.pointer("/allOf/0/$ref"))?
        .as_str()?;
    reference
        .strip_prefix("#/components/schemas/")
        .map(str::to_string)
}

/// Walks a kind's schema along field paths and marks the lists that strategic merge patch
/// merges by key (or as a set), as Kubernetes' OpenAPI does.
fn annotate_merge_keys(
    schemas: &mut Map<String, Value>,
    definition: &str,
    kind: &str,
    path: &str,
    depth: usize,
) {
    if depth > 12 {
        return;
    }
    let Some(properties) = schemas
        .get(definition)
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .cloned()
    else {
        return;
    };
    for (field, property) in properties {
        let field_path = if path.is_empty() {
            field.clone()
        } else {
            format!("{path}.{field}")
        };
        let is_array = property.get("type").and_then(Value::as_str) == Some("array");
        if is_array {
            if let Some(merge) = patch::list_merge(kind, &field_path) {
                let annotations = match merge {
                    ListMerge::ByKey(key) => {
                        json!({"x-kubernetes-patch-merge-key": key, "x-kubernetes-patch-strategy": "merge"})
                    }
                    ListMerge::Union => json!({"x-kubernetes-patch-strategy": "merge"}),
                };
                if let Some(target) = schemas.get_mut(definition).and_then(|s| {
                    s.pointer_mut(&format!(
                        "/properties/{}",
                        field.replace('~', "~0").replace('/', "~1")
                    ))
                }) && let (Some(target), Some(annotations)) =
                    (target.as_object_mut(), annotations.as_object())
                {
                    target.extend(annotations.clone());
                }
            }
            if let Some(item) = property.get("items").and_then(referenced) {
                annotate_merge_keys(schemas, &item, kind, &field_path, depth + 1);
            }
        } else if let Some(child) = referenced(&property) {
            annotate_merge_keys(schemas, &child, kind, &field_path, depth + 1);
        }
    }
}

fn query_param(name: &str, description: &str, kind: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": kind, "uniqueItems": true}})
}

fn write_params() -> Vec<Value> {
    vec![
        query_param(
            "dryRun",
            "When present, indicates that modifications should not be persisted. Valid values are: - All: all dry run stages will be processed",
            "string",
        ),
        query_param(
            "fieldManager",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
            "string",
        ),
        query_param(
            "fieldValidation",
            "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore - Warn (default) - Strict",
            "string",
        ),
    ]
}

fn list_params() -> Vec<Value> {
    ["allowWatchBookmarks", "watch", "sendInitialEvents"]
        .iter()
        .map(|p| query_param(p, "", "boolean"))
        .chain(
            [
                "continue",
                "fieldSelector",
                "labelSelector",
                "resourceVersion",
                "resourceVersionMatch",
            ]
            .iter()
            .map(|p| query_param(p, "", "string")),
        )
        .chain(
            ["limit", "timeoutSeconds"]
                .iter()
                .map(|p| query_param(p, "", "integer")),
        )
        .collect()
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}})
}

fn response(definition: &str) -> Value {
    let schema = json!({"$ref": format!("#/components/schemas/{definition}")});
    json!({"description": "OK", "content": {"application/json": {"schema": schema}, "application/yaml": {"schema": schema}}})
}

fn operation(
    action: &str,
    id: String,
    gvk: &Value,
    params: Vec<Value>,
    definition: &str,
    body: Option<Value>,
) -> Value {
    let mut op = json!({
        "operationId": id,
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
        "parameters": params,
        "responses": {"200": response(definition), "401": {"description": "Unauthorized"}},
    });
    if let Some(body) = body {
        op["requestBody"] = body;
    }
    op
}

fn json_body(definition: &str) -> Value {
    json!({"content": {"*/*": {"schema": {"$ref": format!("#/components/schemas/{definition}")}}}, "required": true})
}

fn patch_body() -> Value {
    let schema = json!({"type": "object"});
    json!({"content": {
        "application/apply-patch+yaml": {"schema": schema},
        "application/json-patch+json": {"schema": schema},
        "application/merge-patch+json": {"schema": schema},
        "application/strategic-merge-patch+json": {"schema": schema},
    }, "required": true})
}

fn add_paths(paths: &mut Map<String, Value>, res: &Resource) {
    let prefix = if res.group.is_empty() {
        format!("/api/{}", res.version)
    } else {
        format!("/apis/{}/{}", res.group, res.version)
    };
    let scope = if res.namespaced {
        "/namespaces/{namespace}"
    } else {
        ""
    };
    let collection = format!("{prefix}{scope}/{}", res.plural);
    let item = format!("{collection}/{{name}}");
    let gvk = json!({"group": res.group, "version": res.version, "kind": res.kind});
    let definition = definition_name(res.group, res.version, res.kind);
    let id_suffix = format!(
        "{}{}",
        if res.namespaced { "Namespaced" } else { "" },
        res.kind
    );
    let mut scope_params = Vec::new();
    if res.namespaced {
        scope_params.push(path_param("namespace"));
    }
    let with = |extra: Vec<Value>, base: &Vec<Value>| -> Vec<Value> {
        base.iter().cloned().chain(extra).collect()
    };

    paths.insert(
        collection.clone(),
        json!({
            "get": operation("list", format!("list{id_suffix}"), &gvk, with(list_params(), &scope_params), &format!("{definition}List"), None),
            "post": operation("post", format!("create{id_suffix}"), &gvk, with(write_params(), &scope_params), &definition, Some(json_body(&definition))),
            "delete": operation("deletecollection", format!("deleteCollection{id_suffix}"), &gvk, with(list_params(), &scope_params), "io.k8s.apimachinery.pkg.apis.meta.v1.Status", None),
        }),
    );
    let mut item_params = scope_params.clone();
    item_params.insert(0, path_param("name"));
    let mut patch_params = write_params();
    patch_params.push(query_param(
        "force",
        "Force is going to \"force\" Apply requests.",
        "boolean",
    ));
    paths.insert(
        item.clone(),
        json!({
            "get": operation("get", format!("read{id_suffix}"), &gvk, item_params.clone(), &definition, None),
            "put": operation("put", format!("replace{id_suffix}"), &gvk, with(write_params(), &item_params), &definition, Some(json_body(&definition))),
            "patch": operation("patch", format!("patch{id_suffix}"), &gvk, with(patch_params.clone(), &item_params), &definition, Some(patch_body())),
            "delete": operation("delete", format!("delete{id_suffix}"), &gvk, with(vec![query_param("gracePeriodSeconds", "", "integer"), query_param("propagationPolicy", "", "string")], &item_params), &definition, Some(json_body("io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"))),
        }),
    );
    for sub in res.subresources {
        let sub_definition = definition_name(sub.response.0, sub.response.1, sub.response.2);
        let sub_gvk =
            json!({"group": sub.response.0, "version": sub.response.1, "kind": sub.response.2});
        let mut ops = Map::new();
        let title = {
            let mut c = sub.name.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        };
        for verb in sub.verbs {
            let (method, action, params, body) = match *verb {
                "get" => ("get", "get", item_params.clone(), None),
                "update" => (
                    "put",
                    "put",
                    with(write_params(), &item_params),
                    Some(json_body(&sub_definition)),
                ),
                "patch" => (
                    "patch",
                    "patch",
                    with(patch_params.clone(), &item_params),
                    Some(patch_body()),
                ),
                "create" => (
                    "post",
                    "post",
                    with(write_params(), &item_params),
                    Some(json_body(&sub_definition)),
                ),
                _ => continue,
            };
            let id = format!("{action}{id_suffix}{title}");
            ops.insert(
                method.to_string(),
                operation(action, id, &sub_gvk, params, &sub_definition, body),
            );
        }
        paths.insert(format!("{item}/{}", sub.name), Value::Object(ops));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(path: &str) -> Value {
        serde_json::from_slice(group_version(path).unwrap().0).unwrap()
    }

    #[test]
    fn root_lists_every_group_version() {
        let root: Value = serde_json::from_slice(root()).unwrap();
        for path in [
            "api/v1",
            "apis/apps/v1",
            "apis/discovery.k8s.io/v1",
            "apis/coordination.k8s.io/v1",
        ] {
            let url = root["paths"][path]["serverRelativeURL"].as_str().unwrap();
            assert!(
                url.starts_with(&format!("/openapi/v3/{path}?hash=")),
                "{url}"
            );
        }
    }

    #[test]
    fn kinds_have_gvk_schemas_and_patch_operations_with_field_validation() {
        let apps = doc("apis/apps/v1");
        let deploy = &apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deploy["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        let patch =
            &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        );
        let containers = &apps["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]
            ["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        let core = doc("api/v1");
        assert!(core["components"]["schemas"]["io.k8s.api.core.v1.Pod"].is_object());
        let ports =
            &core["components"]["schemas"]["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"];
        assert_eq!(ports["x-kubernetes-patch-merge-key"], "port");
        assert!(core["paths"]["/api/v1/nodes/{name}"]["patch"].is_object());
    }
}
