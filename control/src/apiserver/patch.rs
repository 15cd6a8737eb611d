//! PATCH bodies applied to stored objects: JSON patch (RFC 6902), JSON merge patch (RFC 7386)
//! and Kubernetes' strategic merge patch.
//!
//! Strategic merge patch follows `k8s.io/apimachinery/pkg/util/strategicpatch` as the API
//! server runs it (`MergeParallelList` and `IgnoreUnmatchedNulls` on): lists merge by the merge
//! keys of the Kubernetes type definitions ([`list_merge`]), every other list is replaced,
//! `null` deletes a key, and the directives `$patch` (`replace`, `delete`, `merge`),
//! `$retainKeys`, `$setElementOrder/<list>` and `$deleteFromPrimitiveList/<list>` are honoured.
//! Directives never survive into the result.
//!
//! Element order follows Kubernetes too: `$setElementOrder` wins, then the order of the patch
//! list, then the live order. A consequence users sometimes notice: an element a patch adds
//! to a merged list without `$setElementOrder` lands before the existing ones, as in Kubernetes.
use std::fmt;

use serde_json::{Map, Value};

/// The three patch formats the API server accepts on PATCH, chosen by `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`: a list of RFC 6902 operations.
    Json,
    /// `application/merge-patch+json`: RFC 7386, lists replaced wholesale.
    Merge,
    /// `application/strategic-merge-patch+json`: merge patch that knows Kubernetes' list keys.
    StrategicMerge,
}

impl PatchType {
    /// The patch type of a request's `Content-Type` (parameters such as `charset` ignored), or
    /// `None` for anything else (the server answers 415).
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        let media = ct
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::StrategicMerge),
            _ => None,
        }
    }

    /// The `Content-Type` that selects this patch type.
    pub fn content_type(self) -> &'static str {
        match self {
            PatchType::Json => "application/json-patch+json",
            PatchType::Merge => "application/merge-patch+json",
            PatchType::StrategicMerge => "application/strategic-merge-patch+json",
        }
    }
}

impl fmt::Display for PatchType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PatchType::Json => "JSON",
            PatchType::Merge => "merge",
            PatchType::StrategicMerge => "strategic merge",
        })
    }
}

/// Why a patch could not be applied.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PatchError {
    /// The body is not a well-formed document of its patch type.
    #[error("invalid {patch_type} patch document: {reason}")]
    InvalidDocument {
        patch_type: PatchType,
        reason: String,
    },
    /// The object to patch is not a JSON object.
    #[error("the object to patch is not a JSON object")]
    NotAnObject,
    /// A JSON patch `test` operation found a different value.
    #[error("JSON patch operation {index} (test) failed: the value at {path:?} does not match")]
    TestFailed { index: usize, path: String },
    /// A JSON patch operation referred to a location that does not exist.
    #[error("JSON patch operation {index} ({op}) failed: path {path:?} does not exist")]
    PathNotFound {
        index: usize,
        op: &'static str,
        path: String,
    },
    /// A JSON patch operation that cannot be applied, e.g. moving a value into itself.
    #[error("JSON patch operation {index} ({op}) failed at {path:?}: {reason}")]
    OperationFailed {
        index: usize,
        op: &'static str,
        path: String,
        reason: String,
    },
    /// A strategic merge patch directive is malformed, unknown or contradicts the patch.
    #[error("invalid strategic merge patch at {path}: {reason}")]
    BadDirective { path: String, reason: String },
    /// A strategic merge patch element of a keyed list lacks the list's merge key.
    #[error(
        "invalid strategic merge patch at {path}: map {element} does not contain declared merge key: {key}"
    )]
    MissingMergeKey {
        path: String,
        key: &'static str,
        element: String,
    },
}

impl PatchError {
    /// The HTTP status Kubernetes answers with: 422 when a well-formed JSON patch does not fit
    /// the object, 400 when the patch itself is malformed.
    pub fn status_code(&self) -> u16 {
        match self {
            PatchError::TestFailed { .. }
            | PatchError::PathNotFound { .. }
            | PatchError::OperationFailed { .. } => 422,
            PatchError::InvalidDocument { .. }
            | PatchError::NotAnObject
            | PatchError::BadDirective { .. }
            | PatchError::MissingMergeKey { .. } => 400,
        }
    }
}

/// Applies `patch` to `original` (an object of `kind`, in Kubernetes JSON form) and returns the
/// patched object. `kind` selects the strategic merge keys; the other patch types ignore it.
pub fn apply_patch(
    kind: &str,
    patch_type: PatchType,
    original: &Value,
    patch: &Value,
) -> Result<Value, PatchError> {
    let Value::Object(object) = original else {
        return Err(PatchError::NotAnObject);
    };
    let patched = match patch_type {
        PatchType::Json => apply_json_patch(original, patch)?,
        PatchType::Merge => {
            require_object(patch_type, patch)?;
            let mut doc = original.clone();
            json_patch::merge(&mut doc, patch);
            doc
        }
        PatchType::StrategicMerge => {
            let patch = require_object(patch_type, patch)?;
            let schema = Schema::for_kind(kind);
            Value::Object(merge_map(object.clone(), patch.clone(), "", &schema)?)
        }
    };
    if !patched.is_object() {
        return Err(PatchError::InvalidDocument {
            patch_type,
            reason: "the patched document is not a JSON object".into(),
        });
    }
    Ok(patched)
}

fn require_object(patch_type: PatchType, patch: &Value) -> Result<&Map<String, Value>, PatchError> {
    patch
        .as_object()
        .ok_or_else(|| PatchError::InvalidDocument {
            patch_type,
            reason: format!("expected a JSON object, got {}", json_type(patch)),
        })
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------------------------
// JSON patch

fn apply_json_patch(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    let operations: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| PatchError::InvalidDocument {
            patch_type: PatchType::Json,
            reason: e.to_string(),
        })?;
    let mut doc = original.clone();
    json_patch::patch(&mut doc, &operations).map_err(|e| json_patch_error(&operations, e))?;
    Ok(doc)
}

fn json_patch_error(operations: &json_patch::Patch, error: json_patch::PatchError) -> PatchError {
    use json_patch::{PatchErrorKind, PatchOperation};
    let index = error.operation;
    let path = error.path.as_str().to_string();
    let operation = operations.0.get(index);
    let op = match operation {
        Some(PatchOperation::Add(_)) => "add",
        Some(PatchOperation::Remove(_)) => "remove",
        Some(PatchOperation::Replace(_)) => "replace",
        Some(PatchOperation::Move(_)) => "move",
        Some(PatchOperation::Copy(_)) => "copy",
        Some(PatchOperation::Test(_)) => "test",
        None => "unknown",
    };
    match error.kind {
        PatchErrorKind::TestFailed => PatchError::TestFailed { index, path },
        PatchErrorKind::InvalidPointer => PatchError::PathNotFound { index, op, path },
        PatchErrorKind::InvalidFromPointer => {
            let from = match operation {
                Some(PatchOperation::Move(m)) => m.from.as_str().to_string(),
                Some(PatchOperation::Copy(c)) => c.from.as_str().to_string(),
                _ => path,
            };
            PatchError::PathNotFound {
                index,
                op,
                path: from,
            }
        }
        other => PatchError::OperationFailed {
            index,
            op,
            path,
            reason: other.to_string(),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Strategic merge patch: the list merge keys of the Kubernetes types.

/// How a strategic merge patch combines a list field with the live list: the Go field tag
/// `patchStrategy:"merge"` (OpenAPI `x-kubernetes-patch-strategy: merge`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListMerge {
    /// Elements are objects identified by this field (`patchMergeKey`).
    ByKey(&'static str),
    /// Elements are scalars; the result is the union of both lists.
    Union,
}

use ListMerge::{ByKey, Union};

/// The mergeable list fields of one Kubernetes type, as dotted field paths relative to it;
/// list elements add no segment (`containers.env` is every container's `env`). Lists not in
/// a table are atomic: a patch replaces them (e.g. `tolerations`, `envFrom`, node `taints`,
/// EndpointSlice `endpoints` and `ports`).
type ListTable = &'static [(&'static str, ListMerge)];

/// `ObjectMeta`.
const OBJECT_META_LISTS: ListTable = &[("finalizers", Union), ("ownerReferences", ByKey("uid"))];

/// `PodSpec`, for Pods (`spec`) and pod templates (`spec.template.spec`).
const POD_SPEC_LISTS: ListTable = &[
    ("containers", ByKey("name")),
    ("containers.ports", ByKey("containerPort")),
    ("containers.env", ByKey("name")),
    ("containers.volumeMounts", ByKey("mountPath")),
    ("containers.volumeDevices", ByKey("devicePath")),
    ("initContainers", ByKey("name")),
    ("initContainers.ports", ByKey("containerPort")),
    ("initContainers.env", ByKey("name")),
    ("initContainers.volumeMounts", ByKey("mountPath")),
    ("initContainers.volumeDevices", ByKey("devicePath")),
    ("ephemeralContainers", ByKey("name")),
    ("ephemeralContainers.ports", ByKey("containerPort")),
    ("ephemeralContainers.env", ByKey("name")),
    ("ephemeralContainers.volumeMounts", ByKey("mountPath")),
    ("ephemeralContainers.volumeDevices", ByKey("devicePath")),
    ("volumes", ByKey("name")),
    ("imagePullSecrets", ByKey("name")),
    ("hostAliases", ByKey("ip")),
    ("topologySpreadConstraints", ByKey("topologyKey")),
    ("schedulingGates", ByKey("name")),
    ("resourceClaims", ByKey("name")),
];

/// `PodStatus`.
const POD_STATUS_LISTS: ListTable = &[
    ("conditions", ByKey("type")),
    ("podIPs", ByKey("ip")),
    ("hostIPs", ByKey("ip")),
    ("resourceClaimStatuses", ByKey("name")),
];

/// Statuses whose only mergeable list is `conditions` (Deployment, ReplicaSet, Service, Namespace).
const CONDITIONS_LISTS: ListTable = &[("conditions", ByKey("type"))];

/// `ServiceSpec`.
const SERVICE_SPEC_LISTS: ListTable = &[("ports", ByKey("port"))];

/// `NodeSpec`.
const NODE_SPEC_LISTS: ListTable = &[("podCIDRs", Union)];

/// `NodeStatus`.
const NODE_STATUS_LISTS: ListTable = &[("conditions", ByKey("type")), ("addresses", ByKey("type"))];

/// Where each type's table applies within an object of `kind`: `(path of the field, table)`.
fn list_tables(kind: &str) -> &'static [(&'static str, ListTable)] {
    match kind {
        "Pod" => &[
            ("metadata", OBJECT_META_LISTS),
            ("spec", POD_SPEC_LISTS),
            ("status", POD_STATUS_LISTS),
        ],
        "Deployment" | "ReplicaSet" => &[
            ("metadata", OBJECT_META_LISTS),
            ("spec.template.metadata", OBJECT_META_LISTS),
            ("spec.template.spec", POD_SPEC_LISTS),
            ("status", CONDITIONS_LISTS),
        ],
        "Service" => &[
            ("metadata", OBJECT_META_LISTS),
            ("spec", SERVICE_SPEC_LISTS),
            ("status", CONDITIONS_LISTS),
        ],
        "Node" => &[
            ("metadata", OBJECT_META_LISTS),
            ("spec", NODE_SPEC_LISTS),
            ("status", NODE_STATUS_LISTS),
        ],
        "Namespace" => &[
            ("metadata", OBJECT_META_LISTS),
            ("status", CONDITIONS_LISTS),
        ],
        _ => &[("metadata", OBJECT_META_LISTS)],
    }
}

/// How the list at `path` (dotted field names from the object root, e.g.
/// `spec.template.spec.containers.ports`) of an object of `kind` merges; `None` means replace.
pub fn list_merge(kind: &str, path: &str) -> Option<ListMerge> {
    list_tables(kind).iter().find_map(|(prefix, table)| {
        let relative = path.strip_prefix(prefix)?.strip_prefix('.')?;
        table
            .iter()
            .find(|(field, _)| *field == relative)
            .map(|(_, merge)| *merge)
    })
}

struct Schema<'k> {
    kind: &'k str,
}

impl<'k> Schema<'k> {
    fn for_kind(kind: &'k str) -> Self {
        Schema { kind }
    }

    fn list_merge(&self, path: &str) -> Option<ListMerge> {
        list_merge(self.kind, path)
    }
}

// ---------------------------------------------------------------------------------------------
// Strategic merge patch: the merge.

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn shown(path: &str) -> &str {
    if path.is_empty() {
        "the object root"
    } else {
        path
    }
}

fn bad_directive(path: &str, reason: impl Into<String>) -> PatchError {
    PatchError::BadDirective {
        path: shown(path).to_string(),
        reason: reason.into(),
    }
}

fn missing_merge_key(path: &str, key: &'static str, element: &Value) -> PatchError {
    PatchError::MissingMergeKey {
        path: shown(path).to_string(),
        key,
        element: element.to_string(),
    }
}

/// Merges `patch` into `original` (the map at `path`).
fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    path: &str,
    schema: &Schema,
) -> Result<Map<String, Value>, PatchError> {
    if let Some(directive) = patch.remove(DIRECTIVE) {
        match directive.as_str() {
            // The rest of the patch map, cleaned of directives and nulls, replaces the map.
            Some("replace") => return merge_map(Map::new(), patch, path, schema),
            Some("delete") => return Ok(Map::new()),
            // Merging is what happens anyway.
            Some("merge") => {}
            _ => {
                return Err(bad_directive(
                    path,
                    format!("unknown $patch value {directive} (want replace, delete or merge)"),
                ));
            }
        }
    }
    if let Some(retain) = patch.remove(RETAIN_KEYS) {
        apply_retain_keys(&mut original, &patch, &retain, path)?;
    }
    let orders: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(SET_ELEMENT_ORDER))
        .cloned()
        .collect();
    for key in orders {
        if let Some(order) = patch.remove(&key) {
            let field = &key[SET_ELEMENT_ORDER.len()..];
            apply_element_order(&mut original, &mut patch, field, order, path, schema)?;
        }
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            delete_from_primitive_list(&mut original, field, value, path)?;
            continue;
        }
        if key.starts_with('$') {
            return Err(bad_directive(path, format!("unknown directive {key:?}")));
        }
        if value.is_null() {
            original.remove(&key);
            continue;
        }
        let field_path = child_path(path, &key);
        let merged = match (original.remove(&key), value) {
            (Some(Value::Object(live)), Value::Object(patch)) => {
                Value::Object(merge_map(live, patch, &field_path, schema)?)
            }
            (Some(Value::Array(live)), Value::Array(patch)) => {
                Value::Array(merge_list(live, patch, &field_path, schema)?)
            }
            // New or differently typed: the patch value, cleaned of directives and nulls.
            (_, Value::Object(patch)) => {
                Value::Object(merge_map(Map::new(), patch, &field_path, schema)?)
            }
            (_, Value::Array(patch)) => {
                Value::Array(merge_list(Vec::new(), patch, &field_path, schema)?)
            }
            (_, scalar) => scalar,
        };
        original.insert(key, merged);
    }
    Ok(original)
}

/// `$retainKeys`: keys of the live map not in the list are cleared (the patch may only set
/// listed keys), used for unions such as a volume's source or a Deployment's strategy.
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    retain: &Value,
    path: &str,
) -> Result<(), PatchError> {
    let keys = retain
        .as_array()
        .and_then(|list| {
            list.iter()
                .map(Value::as_str)
                .collect::<Option<Vec<&str>>>()
        })
        .ok_or_else(|| {
            bad_directive(
                path,
                "invalid patch format of retainKeys: want a list of field names",
            )
        })?;
    if let Some((key, _)) = patch
        .iter()
        .find(|(k, v)| !v.is_null() && !k.starts_with('$') && !keys.contains(&k.as_str()))
    {
        return Err(bad_directive(
            path,
            format!("patch content doesn't match retainKeys list: {key:?} is not in it"),
        ));
    }
    original.retain(|k, _| keys.contains(&k.as_str()));
    Ok(())
}

/// `$deleteFromPrimitiveList/<field>`: removes the given scalars from the live list.
fn delete_from_primitive_list(
    original: &mut Map<String, Value>,
    field: &str,
    remove: Value,
    path: &str,
) -> Result<(), PatchError> {
    let Value::Array(remove) = remove else {
        return Err(bad_directive(
            path,
            format!("{DELETE_FROM_PRIMITIVE_LIST}{field} must be a list"),
        ));
    };
    if let Some(Value::Array(list)) = original.get_mut(field) {
        list.retain(|v| !remove.iter().any(|r| values_equal(r, v)));
    }
    Ok(())
}

/// `$setElementOrder/<field>`: merges the patch's `<field>` list now and orders the result as
/// the directive lists (elements it doesn't name keep their live relative order).
fn apply_element_order(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    field: &str,
    order: Value,
    path: &str,
    schema: &Schema,
) -> Result<(), PatchError> {
    let Value::Array(order) = order else {
        return Err(bad_directive(
            path,
            format!("{SET_ELEMENT_ORDER}{field} must be a list"),
        ));
    };
    let list_path = child_path(path, field);
    let key = match schema.list_merge(&list_path) {
        Some(ByKey(key)) => Some(key),
        _ => None,
    };
    if let Some(key) = key
        && let Some(element) = order.iter().find(|e| e.get(key).is_none())
    {
        return Err(missing_merge_key(&list_path, key, element));
    }
    let patch_list = match patch.remove(field) {
        Some(Value::Array(list)) => Some(list),
        // A null or scalar replaces the list in the main merge; there is nothing to order.
        Some(other) => {
            patch.insert(field.to_string(), other);
            return Ok(());
        }
        None => None,
    };
    if let Some(list) = &patch_list {
        check_element_order(list, &order, key, &list_path)?;
    }
    let live_list = match original.remove(field) {
        Some(Value::Array(list)) => Some(list),
        Some(other) if patch_list.is_none() => {
            original.insert(field.to_string(), other);
            return Ok(());
        }
        _ => None,
    };
    let live_order = live_list.clone().unwrap_or_default();
    let merged = match (live_list, patch_list) {
        (Some(live), None) => live,
        (live, Some(patch)) => merge_list(live.unwrap_or_default(), patch, &list_path, schema)?,
        (None, None) => return Ok(()),
    };
    original.insert(
        field.to_string(),
        Value::Array(order_elements(merged, &order, &live_order, key)),
    );
    Ok(())
}

/// The patch list must name its elements in the same relative order as `$setElementOrder`.
fn check_element_order(
    patch_list: &[Value],
    order: &[Value],
    key: Option<&'static str>,
    path: &str,
) -> Result<(), PatchError> {
    let items: Vec<&Value> = patch_list
        .iter()
        .filter(|v| v.get(DIRECTIVE).is_none())
        .collect();
    let (mut p, mut o) = (0, 0);
    while p < items.len() && o < order.len() {
        let Some(id) = identity(items[p], key) else {
            return Err(missing_merge_key(path, key.unwrap_or_default(), items[p]));
        };
        if identity(&order[o], key).is_some_and(|other| values_equal(id, other)) {
            p += 1;
        }
        o += 1;
    }
    if p < items.len() {
        return Err(bad_directive(
            path,
            format!(
                "the order of the patch list doesn't match its {SET_ELEMENT_ORDER}{} list",
                path.rsplit('.').next().unwrap_or(path)
            ),
        ));
    }
    Ok(())
}

/// Merges a patch list into the live list at `path`.
fn merge_list(
    original: Vec<Value>,
    patch: Vec<Value>,
    path: &str,
    schema: &Schema,
) -> Result<Vec<Value>, PatchError> {
    match schema.list_merge(path) {
        None => patch
            .into_iter()
            .map(|element| clean(element, path, schema))
            .collect(),
        Some(Union) => merge_scalar_list(original, patch, path),
        Some(ByKey(key)) => merge_keyed_list(original, patch, key, path, schema),
    }
}

/// A patch value taken as is, minus directives and nulls.
fn clean(value: Value, path: &str, schema: &Schema) -> Result<Value, PatchError> {
    match value {
        Value::Object(map) => merge_map(Map::new(), map, path, schema).map(Value::Object),
        Value::Array(list) => merge_list(Vec::new(), list, path, schema).map(Value::Array),
        scalar => Ok(scalar),
    }
}

fn merge_scalar_list(
    original: Vec<Value>,
    patch: Vec<Value>,
    path: &str,
) -> Result<Vec<Value>, PatchError> {
    if let Some(element) = patch.iter().find(|v| v.is_object() || v.is_array()) {
        return Err(bad_directive(
            path,
            format!("{path} is a list of scalars, got element {element}"),
        ));
    }
    let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
    for value in original.iter().chain(&patch) {
        if !merged.iter().any(|m| values_equal(m, value)) {
            merged.push(value.clone());
        }
    }
    Ok(order_elements(merged, &patch, &original, None))
}

fn merge_keyed_list(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    key: &'static str,
    path: &str,
    schema: &Schema,
) -> Result<Vec<Value>, PatchError> {
    let mut replace = false;
    let mut items = Vec::with_capacity(patch.len());
    for element in patch {
        let Value::Object(map) = element else {
            return Err(bad_directive(
                path,
                format!("elements of {path} must be objects merged by {key:?}, got {element}"),
            ));
        };
        let Some(directive) = map.get(DIRECTIVE) else {
            items.push(map);
            continue;
        };
        match directive.as_str() {
            Some("delete") => {
                let Some(id) = map.get(key) else {
                    return Err(missing_merge_key(path, key, &Value::Object(map)));
                };
                original.retain(|live| !live.get(key).is_some_and(|v| values_equal(v, id)));
            }
            Some("replace") => replace = true,
            Some("merge") => {
                return Err(bad_directive(
                    path,
                    "merging lists cannot yet be specified in the patch",
                ));
            }
            _ => {
                return Err(bad_directive(
                    path,
                    format!("unknown $patch value {directive} (want replace or delete)"),
                ));
            }
        }
    }
    if replace {
        return items
            .into_iter()
            .map(|m| merge_map(Map::new(), m, path, schema).map(Value::Object))
            .collect();
    }
    let live_order = original.clone();
    let mut order = Vec::with_capacity(items.len());
    for item in items {
        let Some(id) = item.get(key).cloned() else {
            return Err(missing_merge_key(path, key, &Value::Object(item)));
        };
        let found = original
            .iter()
            .position(|live| live.get(key).is_some_and(|v| values_equal(v, &id)));
        match found {
            Some(i) => {
                let live = match std::mem::take(&mut original[i]) {
                    Value::Object(live) => live,
                    _ => Map::new(),
                };
                original[i] = Value::Object(merge_map(live, item, path, schema)?);
            }
            None => original.push(Value::Object(merge_map(Map::new(), item, path, schema)?)),
        }
        let mut identity = Map::new();
        identity.insert(key.to_string(), id);
        order.push(Value::Object(identity));
    }
    Ok(order_elements(original, &order, &live_order, Some(key)))
}

/// Kubernetes' `normalizeElementOrder`: elements named in `order` come in that order, the
/// others keep their live order, and the two runs are interleaved by live position where both
/// have one (an element new to the list goes before the live ones it is compared with).
fn order_elements(
    merged: Vec<Value>,
    order: &[Value],
    live_order: &[Value],
    key: Option<&str>,
) -> Vec<Value> {
    let (mut named, mut live_only): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|element| index_in(order, element, key).is_some());
    named.sort_by_key(|element| index_in(order, element, key).unwrap_or(usize::MAX));
    live_only.sort_by_key(|element| index_in(live_order, element, key).unwrap_or(usize::MAX));

    let mut result = Vec::with_capacity(named.len() + live_only.len());
    let mut named = named.into_iter().peekable();
    let mut live_only = live_only.into_iter().peekable();
    loop {
        let take_live = match (live_only.peek(), named.peek()) {
            (Some(l), Some(n)) => matches!(
                (index_in(live_order, l, key), index_in(live_order, n, key)),
                (Some(li), Some(ni)) if li < ni
            ),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_live {
            live_only.next()
        } else {
            named.next()
        };
        result.extend(next);
    }
    result
}

/// What identifies a list element: its merge key's value, or the element itself for scalars.
fn identity<'a>(element: &'a Value, key: Option<&str>) -> Option<&'a Value> {
    match key {
        Some(key) => element.get(key),
        None => Some(element),
    }
}

fn index_in(list: &[Value], element: &Value, key: Option<&str>) -> Option<usize> {
    let id = identity(element, key)?;
    list.iter()
        .position(|other| identity(other, key).is_some_and(|other| values_equal(other, id)))
}

/// JSON equality where `80` and `80.0` are the same number, as Go's decoded `float64`s are.
fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(kind: &str, original: Value, patch: Value) -> Value {
        apply_patch(kind, PatchType::StrategicMerge, &original, &patch)
            .expect("strategic merge patch applies")
    }

    fn deployment(containers: Value) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": containers}
                }
            }
        })
    }

    fn names(list: &Value) -> Vec<&str> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn content_types_select_patch_types() {
        assert_eq!(
            PatchType::from_content_type("application/json-patch+json"),
            Some(PatchType::Json)
        );
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
        assert_eq!(
            PatchType::from_content_type("Application/Strategic-Merge-Patch+JSON"),
            Some(PatchType::StrategicMerge)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml"),
            None
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
        for t in [PatchType::Json, PatchType::Merge, PatchType::StrategicMerge] {
            assert_eq!(PatchType::from_content_type(t.content_type()), Some(t));
        }
    }

    #[test]
    fn kubectl_scale_merge_patch() {
        let original = deployment(json!([{"name": "web", "image": "nginx:1.25"}]));
        for patch_type in [PatchType::Merge, PatchType::StrategicMerge] {
            let patched = apply_patch(
                "Deployment",
                patch_type,
                &original,
                &json!({"spec": {"replicas": 5}}),
            )
            .unwrap();
            assert_eq!(patched["spec"]["replicas"], 5);
            assert_eq!(patched["spec"]["template"], original["spec"]["template"]);
        }
    }

    #[test]
    fn kubectl_label_and_annotate() {
        let original = json!({
            "kind": "Pod",
            "metadata": {"name": "p", "labels": {"app": "web", "tier": "front"}, "annotations": {"note": "x"}},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}
        });
        let patch = json!({"metadata": {"labels": {"tier": null, "env": "prod"}, "annotations": {"owner": "me"}}});
        for patch_type in [PatchType::Merge, PatchType::StrategicMerge] {
            let patched = apply_patch("Pod", patch_type, &original, &patch).unwrap();
            assert_eq!(
                patched["metadata"]["labels"],
                json!({"app": "web", "env": "prod"})
            );
            assert_eq!(
                patched["metadata"]["annotations"],
                json!({"note": "x", "owner": "me"})
            );
            assert_eq!(patched["spec"], original["spec"]);
        }
        // Removing a label that isn't there is not an error.
        let patched = smp(
            "Pod",
            original.clone(),
            json!({"metadata": {"labels": {"absent": null}}}),
        );
        assert_eq!(
            patched["metadata"]["labels"],
            original["metadata"]["labels"]
        );
    }

    #[test]
    fn merge_patch_replaces_lists() {
        let original =
            deployment(json!([{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]));
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "b:2"}]}}}});
        let patched = apply_patch("Deployment", PatchType::Merge, &original, &patch).unwrap();
        assert_eq!(
            patched["spec"]["template"]["spec"]["containers"],
            json!([{"name": "b", "image": "b:2"}])
        );
    }

    #[test]
    fn merge_patch_must_be_an_object() {
        let err = apply_patch("Pod", PatchType::Merge, &json!({"a": 1}), &json!([1])).unwrap_err();
        assert!(matches!(err, PatchError::InvalidDocument { .. }), "{err}");
        assert_eq!(err.status_code(), 400);
        let err = apply_patch(
            "Pod",
            PatchType::StrategicMerge,
            &json!({"a": 1}),
            &json!("x"),
        )
        .unwrap_err();
        assert_eq!(err.status_code(), 400);
    }

    #[test]
    fn kubectl_set_image_merges_containers_by_name() {
        let original = deployment(json!([
            {"name": "web", "image": "nginx:1.25", "ports": [{"containerPort": 80}]},
            {"name": "sidecar", "image": "envoy:1"}
        ]));
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}});
        let patched = smp("Deployment", original, patch);
        let containers = &patched["spec"]["template"]["spec"]["containers"];
        assert_eq!(
            *containers,
            json!([
                {"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}]},
                {"name": "sidecar", "image": "envoy:1"}
            ])
        );
    }

    #[test]
    fn pod_containers_merge_at_spec() {
        let original = json!({"spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}});
        let patched = smp(
            "Pod",
            original,
            json!({"spec": {"containers": [{"name": "b", "image": "b:2"}]}}),
        );
        assert_eq!(
            patched["spec"]["containers"],
            json!([{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:2"}])
        );
    }

    #[test]
    fn kubectl_apply_patch_with_set_element_order() {
        // What `kubectl apply` sends after the manifest changed the image of `b`, added `c`
        // between `a` and `b`, and removed `old` (which was in last-applied).
        let original = deployment(json!([
            {"name": "a", "image": "a:1"},
            {"name": "old", "image": "old:1"},
            {"name": "b", "image": "b:1"}
        ]));
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "c"}, {"name": "b"}],
            "containers": [
                {"name": "c", "image": "c:1"},
                {"name": "b", "image": "b:2"},
                {"$patch": "delete", "name": "old"}
            ]
        }}}});
        let patched = smp("Deployment", original, patch);
        let spec = &patched["spec"]["template"]["spec"];
        assert_eq!(
            spec["containers"],
            json!([{"name": "a", "image": "a:1"}, {"name": "c", "image": "c:1"}, {"name": "b", "image": "b:2"}])
        );
        assert!(spec.get("$setElementOrder/containers").is_none());
    }

    #[test]
    fn set_element_order_reorders_without_content_change() {
        let original = json!({"spec": {"containers": [{"name": "a", "image": "a"}, {"name": "b", "image": "b"}]}});
        let patch =
            json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}});
        let patched = smp("Pod", original, patch);
        assert_eq!(names(&patched["spec"]["containers"]), ["b", "a"]);
    }

    #[test]
    fn set_element_order_keeps_server_only_elements() {
        let original =
            json!({"spec": {"containers": [{"name": "a"}, {"name": "injected"}, {"name": "b"}]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "b", "image": "b:2"}]
        }});
        let patched = smp("Pod", original, patch);
        assert_eq!(
            names(&patched["spec"]["containers"]),
            ["a", "injected", "b"]
        );
        assert_eq!(patched["spec"]["containers"][2]["image"], "b:2");
    }

    #[test]
    fn set_element_order_must_agree_with_patch_list() {
        let original = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "b", "image": "b"}, {"name": "a", "image": "a"}]
        }});
        let err = apply_patch("Pod", PatchType::StrategicMerge, &original, &patch).unwrap_err();
        assert!(matches!(err, PatchError::BadDirective { .. }), "{err}");
        assert!(
            err.to_string().contains("$setElementOrder/containers"),
            "{err}"
        );
    }

    #[test]
    fn set_element_order_for_scalar_list() {
        let original = json!({"metadata": {"finalizers": ["a", "b"]}});
        let patch = json!({"metadata": {"$setElementOrder/finalizers": ["b", "c", "a"], "finalizers": ["c"]}});
        let patched = smp("Pod", original, patch);
        assert_eq!(patched["metadata"]["finalizers"], json!(["b", "c", "a"]));
    }

    #[test]
    fn patch_delete_removes_a_container() {
        let original =
            json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}});
        let patched = smp(
            "Pod",
            original,
            json!({"spec": {"containers": [{"$patch": "delete", "name": "b"}]}}),
        );
        assert_eq!(names(&patched["spec"]["containers"]), ["a", "c"]);
    }

    #[test]
    fn patch_delete_without_merge_key_fails() {
        let original = json!({"spec": {"containers": [{"name": "a"}]}});
        let err = apply_patch(
            "Pod",
            PatchType::StrategicMerge,
            &original,
            &json!({"spec": {"containers": [{"$patch": "delete", "image": "x"}]}}),
        )
        .unwrap_err();
        assert!(
            matches!(err, PatchError::MissingMergeKey { key: "name", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("spec.containers"), "{err}");
    }

    #[test]
    fn keyed_list_element_without_merge_key_fails() {
        let original = json!({"spec": {"containers": [{"name": "a"}]}});
        let err = apply_patch(
            "Pod",
            PatchType::StrategicMerge,
            &original,
            &json!({"spec": {"containers": [{"image": "x"}]}}),
        )
        .unwrap_err();
        assert!(matches!(err, PatchError::MissingMergeKey { .. }), "{err}");
    }

    #[test]
    fn patch_replace_on_list_and_map() {
        let original = json!({"spec": {
            "containers": [{"name": "a", "image": "a"}, {"name": "b", "image": "b"}],
            "nodeSelector": {"disk": "ssd", "zone": "z1"}
        }});
        let patch = json!({"spec": {
            "containers": [{"$patch": "replace"}, {"name": "c", "image": "c"}],
            "nodeSelector": {"$patch": "replace", "zone": "z2"}
        }});
        let patched = smp("Pod", original, patch);
        assert_eq!(
            patched["spec"]["containers"],
            json!([{"name": "c", "image": "c"}])
        );
        assert_eq!(patched["spec"]["nodeSelector"], json!({"zone": "z2"}));
    }

    #[test]
    fn patch_delete_on_map_and_merge_directive() {
        let original =
            json!({"spec": {"nodeSelector": {"disk": "ssd"}, "dnsConfig": {"options": []}}});
        let patch = json!({"spec": {"nodeSelector": {"$patch": "delete"}, "dnsConfig": {"$patch": "merge", "searches": ["x"]}}});
        let patched = smp("Pod", original, patch);
        assert_eq!(patched["spec"]["nodeSelector"], json!({}));
        assert_eq!(
            patched["spec"]["dnsConfig"],
            json!({"options": [], "searches": ["x"]})
        );
    }

    #[test]
    fn unknown_patch_directive_value_fails() {
        let err = apply_patch(
            "Pod",
            PatchType::StrategicMerge,
            &json!({"spec": {}}),
            &json!({"spec": {"$patch": "explode"}}),
        )
        .unwrap_err();
        assert!(matches!(err, PatchError::BadDirective { .. }));
        assert!(err.to_string().contains("explode"), "{err}");
        let err = apply_patch(
            "Pod",
            PatchType::StrategicMerge,
            &json!({"spec": {"containers": []}}),
            &json!({"spec": {"containers": [{"$patch": "merge"}]}}),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("merging lists cannot yet be specified"),
            "{err}"
        );
        let err = apply_patch(
            "Pod",
            PatchType::StrategicMerge,
            &json!({}),
            &json!({"$bogus": 1}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("$bogus"), "{err}");
    }

    #[test]
    fn retain_keys_clears_other_union_members() {
        // Switching a Deployment from RollingUpdate to Recreate the way kubectl apply does.
        let original = deployment(json!([{"name": "web"}]));
        let mut original = original;
        original["spec"]["strategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}});
        let patched = smp("Deployment", original, patch);
        assert_eq!(patched["spec"]["strategy"], json!({"type": "Recreate"}));

        // A volume changing source: emptyDir → configMap.
        let original = json!({"spec": {"volumes": [{"name": "v", "emptyDir": {}}]}});
        let patch = json!({"spec": {"volumes": [{"name": "v", "$retainKeys": ["configMap", "name"], "configMap": {"name": "cm"}}]}});
        let patched = smp("Pod", original, patch);
        assert_eq!(
            patched["spec"]["volumes"],
            json!([{"name": "v", "configMap": {"name": "cm"}}])
        );
    }

    #[test]
    fn retain_keys_must_list_patched_fields() {
        let original = json!({"spec": {"strategy": {"type": "RollingUpdate"}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": {}}}});
        let err =
            apply_patch("Deployment", PatchType::StrategicMerge, &original, &patch).unwrap_err();
        assert!(err.to_string().contains("retainKeys"), "{err}");
        let err = apply_patch(
            "Deployment",
            PatchType::StrategicMerge,
            &original,
            &json!({"spec": {"$retainKeys": "type"}}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("retainKeys"), "{err}");
    }

    #[test]
    fn env_merges_by_name() {
        let original = json!({"spec": {"containers": [{"name": "c", "env": [
            {"name": "A", "value": "1"}, {"name": "B", "value": "2"}
        ]}]}});
        let patch = json!({"spec": {"containers": [{"name": "c", "env": [
            {"name": "B", "value": "3"}, {"name": "C", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
        ]}]}});
        let patched = smp("Pod", original, patch);
        let env = &patched["spec"]["containers"][0]["env"];
        assert_eq!(names(env).len(), 3);
        assert_eq!(
            env.as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == "A")
                .unwrap()["value"],
            "1"
        );
        assert_eq!(
            env.as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == "B")
                .unwrap()["value"],
            "3"
        );
        assert!(env.as_array().unwrap().iter().any(|e| e["name"] == "C"));
    }

    #[test]
    fn added_elements_come_first_like_kubernetes() {
        // Kubernetes' documented result of adding a container by strategic merge patch.
        let original =
            json!({"spec": {"containers": [{"name": "patch-demo-ctr", "image": "nginx"}]}});
        let patch =
            json!({"spec": {"containers": [{"name": "patch-demo-ctr-2", "image": "redis"}]}});
        let patched = smp("Pod", original, patch);
        assert_eq!(
            names(&patched["spec"]["containers"]),
            ["patch-demo-ctr-2", "patch-demo-ctr"]
        );
    }

    #[test]
    fn container_ports_merge_by_container_port() {
        let original = json!({"spec": {"containers": [{"name": "c", "ports": [
            {"containerPort": 80, "name": "http"}, {"containerPort": 443, "name": "https"}
        ]}]}});
        let patch = json!({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80.0, "protocol": "TCP"}]}]}});
        let patched = smp("Pod", original, patch);
        // `80.0` matches `80`, as in Kubernetes where JSON numbers decode to the same float.
        let ports = &patched["spec"]["containers"][0]["ports"];
        assert_eq!(ports.as_array().unwrap().len(), 2);
        assert_eq!(ports[0]["containerPort"].as_f64(), Some(80.0));
        assert_eq!(
            (&ports[0]["name"], &ports[0]["protocol"]),
            (&json!("http"), &json!("TCP"))
        );
        assert_eq!(ports[1], json!({"containerPort": 443, "name": "https"}));
    }

    #[test]
    fn service_ports_merge_by_port() {
        let original = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443, "targetPort": 8443}]}});
        let patch = json!({"spec": {"ports": [{"port": 443, "targetPort": 9443}]}});
        let patched = smp("Service", original, patch);
        assert_eq!(
            patched["spec"]["ports"],
            json!([{"port": 80, "targetPort": 8080}, {"port": 443, "targetPort": 9443}])
        );
    }

    #[test]
    fn volume_mounts_volumes_and_conditions_merge() {
        let original = json!({
            "spec": {
                "volumes": [{"name": "data", "emptyDir": {}}],
                "containers": [{"name": "c", "volumeMounts": [{"mountPath": "/data", "name": "data"}]}]
            },
            "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}]}
        });
        let patch = json!({
            "spec": {
                "volumes": [{"name": "cfg", "configMap": {"name": "cm"}}],
                "containers": [{"name": "c", "volumeMounts": [{"mountPath": "/data", "readOnly": true}]}]
            },
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        });
        let patched = smp("Pod", original, patch);
        assert_eq!(patched["spec"]["volumes"].as_array().unwrap().len(), 2);
        assert_eq!(
            patched["spec"]["containers"][0]["volumeMounts"],
            json!([{"mountPath": "/data", "name": "data", "readOnly": true}])
        );
        assert_eq!(
            patched["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}])
        );
    }

    #[test]
    fn atomic_lists_are_replaced() {
        let original = json!({"spec": {
            "tolerations": [{"key": "a", "operator": "Exists"}],
            "containers": [{"name": "c", "args": ["x", "y"], "envFrom": [{"configMapRef": {"name": "a"}}]}]
        }});
        let patch = json!({"spec": {
            "tolerations": [{"key": "b", "operator": "Exists"}],
            "containers": [{"name": "c", "args": ["z"], "envFrom": [{"secretRef": {"name": "s"}}]}]
        }});
        let patched = smp("Pod", original, patch);
        assert_eq!(
            patched["spec"]["tolerations"],
            json!([{"key": "b", "operator": "Exists"}])
        );
        assert_eq!(patched["spec"]["containers"][0]["args"], json!(["z"]));
        assert_eq!(
            patched["spec"]["containers"][0]["envFrom"],
            json!([{"secretRef": {"name": "s"}}])
        );

        let slice =
            json!({"endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}]});
        let patched = smp(
            "EndpointSlice",
            slice,
            json!({"endpoints": [{"addresses": ["10.0.0.3"]}]}),
        );
        assert_eq!(patched["endpoints"], json!([{"addresses": ["10.0.0.3"]}]));
    }

    #[test]
    fn finalizers_union_and_delete_from_primitive_list() {
        let original = json!({"metadata": {"name": "x", "finalizers": ["a", "b"]}});
        let patched = smp(
            "ConfigMap",
            original.clone(),
            json!({"metadata": {"finalizers": ["b", "c"]}}),
        );
        let finalizers: Vec<&str> = patched["metadata"]["finalizers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(finalizers.len(), 3);
        for f in ["a", "b", "c"] {
            assert!(finalizers.contains(&f), "{finalizers:?}");
        }
        let patched = smp(
            "ConfigMap",
            original,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(patched["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn owner_references_merge_by_uid() {
        let original = json!({"metadata": {"ownerReferences": [{"uid": "1", "name": "a", "controller": true}]}});
        let patch = json!({"metadata": {"ownerReferences": [{"uid": "1", "controller": false}, {"uid": "2", "name": "b"}]}});
        let patched = smp("ReplicaSet", original, patch);
        let refs = patched["metadata"]["ownerReferences"].as_array().unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!(
            refs.iter().find(|r| r["uid"] == "1").unwrap(),
            &json!({"uid": "1", "name": "a", "controller": false})
        );
    }

    #[test]
    fn null_deletes_and_nested_nulls_never_stored() {
        let original = json!({"spec": {"replicas": 3, "paused": true}});
        let patch = json!({"spec": {"paused": null, "strategy": {"type": "Recreate", "rollingUpdate": null}}});
        let patched = smp("Deployment", original, patch);
        assert_eq!(
            patched["spec"],
            json!({"replicas": 3, "strategy": {"type": "Recreate"}})
        );
    }

    #[test]
    fn new_subtrees_are_cleaned_of_directives() {
        let original = json!({"metadata": {"name": "d"}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "a"}],
            "containers": [{"name": "a", "image": "a", "env": [{"name": "X", "value": null}]}]
        }}}});
        let patched = smp("Deployment", original, patch);
        assert_eq!(
            patched["spec"],
            json!({"template": {"spec": {"containers": [{"name": "a", "image": "a", "env": [{"name": "X"}]}]}}})
        );
    }

    #[test]
    fn node_lists() {
        let original = json!({"spec": {"podCIDRs": ["10.244.0.0/24"], "taints": [{"key": "a", "effect": "NoSchedule"}]},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": "n1"}]}});
        let patch = json!({"spec": {"taints": [{"key": "b", "effect": "NoExecute"}]},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]}});
        let patched = smp("Node", original, patch);
        assert_eq!(
            patched["spec"]["taints"],
            json!([{"key": "b", "effect": "NoExecute"}])
        );
        assert_eq!(
            patched["status"]["addresses"],
            json!([{"type": "InternalIP", "address": "10.0.0.2"}, {"type": "Hostname", "address": "n1"}])
        );
    }

    #[test]
    fn list_merge_table_lookup() {
        assert_eq!(list_merge("Pod", "spec.containers"), Some(ByKey("name")));
        assert_eq!(
            list_merge("Deployment", "spec.template.spec.containers"),
            Some(ByKey("name"))
        );
        assert_eq!(
            list_merge("ReplicaSet", "spec.template.spec.initContainers.env"),
            Some(ByKey("name"))
        );
        assert_eq!(
            list_merge("Pod", "spec.containers.ports"),
            Some(ByKey("containerPort"))
        );
        assert_eq!(list_merge("Service", "spec.ports"), Some(ByKey("port")));
        assert_eq!(
            list_merge("Deployment", "spec.template.metadata.finalizers"),
            Some(Union)
        );
        assert_eq!(list_merge("Pod", "spec.tolerations"), None);
        assert_eq!(list_merge("Deployment", "spec.containers"), None);
        assert_eq!(
            list_merge("Lease", "metadata.ownerReferences"),
            Some(ByKey("uid"))
        );
    }

    // JSON patch

    #[test]
    fn json_patch_operations() {
        let original = json!({"metadata": {"name": "x", "labels": {"a/b": "1", "c~d": "2"}}, "spec": {"list": [1, 2]}});
        let patch = json!([
            {"op": "test", "path": "/metadata/name", "value": "x"},
            {"op": "add", "path": "/spec/list/-", "value": 3},
            {"op": "add", "path": "/spec/list/0", "value": 0},
            {"op": "replace", "path": "/metadata/labels/a~1b", "value": "one"},
            {"op": "remove", "path": "/metadata/labels/c~0d"},
            {"op": "copy", "from": "/metadata/name", "path": "/metadata/generateName"},
            {"op": "move", "from": "/spec/list", "path": "/spec/items"}
        ]);
        let patched = apply_patch("Pod", PatchType::Json, &original, &patch).unwrap();
        assert_eq!(
            patched,
            json!({"metadata": {"name": "x", "generateName": "x", "labels": {"a/b": "one"}}, "spec": {"items": [0, 1, 2, 3]}})
        );
    }

    #[test]
    fn json_patch_rollout_undo_replaces_template() {
        let original = deployment(json!([{"name": "web", "image": "nginx:2"}]));
        let template = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx:1"}]}});
        let patch = json!([{"op": "replace", "path": "/spec/template", "value": template}]);
        let patched = apply_patch("Deployment", PatchType::Json, &original, &patch).unwrap();
        assert_eq!(patched["spec"]["template"], template);
    }

    #[test]
    fn json_patch_failures() {
        let original = json!({"metadata": {"name": "x"}, "spec": {"list": [1]}});
        let run =
            |patch: Value| apply_patch("Pod", PatchType::Json, &original, &patch).unwrap_err();

        let err = run(json!([{"op": "test", "path": "/metadata/name", "value": "y"}]));
        assert_eq!(
            err,
            PatchError::TestFailed {
                index: 0,
                path: "/metadata/name".into()
            }
        );
        assert_eq!(err.status_code(), 422);

        let err = run(
            json!([{"op": "add", "path": "/metadata/name", "value": "y"}, {"op": "remove", "path": "/spec/missing"}]),
        );
        assert_eq!(
            err,
            PatchError::PathNotFound {
                index: 1,
                op: "remove",
                path: "/spec/missing".into()
            }
        );
        assert_eq!(err.status_code(), 422);

        let err = run(json!([{"op": "replace", "path": "/spec/list/5", "value": 1}]));
        assert!(
            matches!(err, PatchError::PathNotFound { op: "replace", .. }),
            "{err}"
        );

        let err = run(json!([{"op": "move", "from": "/nope", "path": "/spec/x"}]));
        assert_eq!(
            err,
            PatchError::PathNotFound {
                index: 0,
                op: "move",
                path: "/nope".into()
            }
        );

        let err = run(json!([{"op": "move", "from": "/spec", "path": "/spec/list/0"}]));
        assert!(
            matches!(err, PatchError::OperationFailed { op: "move", .. }),
            "{err}"
        );

        let err = run(json!([{"op": "frobnicate", "path": "/x"}]));
        assert!(
            matches!(
                err,
                PatchError::InvalidDocument {
                    patch_type: PatchType::Json,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.status_code(), 400);

        let err = run(json!({"op": "add", "path": "/x", "value": 1}));
        assert!(matches!(err, PatchError::InvalidDocument { .. }), "{err}");

        let err = run(json!([{"op": "replace", "path": "", "value": [1]}]));
        assert!(err.to_string().contains("not a JSON object"), "{err}");
    }

    #[test]
    fn json_patch_failure_leaves_original_untouched() {
        let original = json!({"a": 1});
        let _ = apply_patch("Pod", PatchType::Json, &original, &json!([{"op": "add", "path": "/b", "value": 2}, {"op": "test", "path": "/a", "value": 2}]))
            .unwrap_err();
        assert_eq!(original, json!({"a": 1}));
    }

    #[test]
    fn non_object_original_is_rejected() {
        let err = apply_patch("Pod", PatchType::Merge, &json!([1]), &json!({})).unwrap_err();
        assert_eq!(err, PatchError::NotAnObject);
    }
}
