//! The generic REST storage: get, list, create, update, patch and delete of any registered
//! resource over the [`Store`], with Kubernetes' semantics (resourceVersion preconditions,
//! server-set metadata, defaulting and validation, status subresources, finalizers and
//! graceful deletion). HTTP concerns live in `handlers`; kind-specific rules in `strategy`.
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use rand::Rng;
use serde_json::{Value, json};

use super::allocator::{Reservation, ServiceAllocator};
use super::patch::{self, PatchType};
use super::registry::{self, Resource};
use super::request::{Body, FieldValidation};
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{ApiError, ApiResult, Subject, success_status};
use super::{defaults, strategy, validation};
use crate::store::{KeyValue, ListOptions, Store, StoreError};

/// Namespaces that always exist and cannot be deleted.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Seconds a pod may stay unready on a tainted node before eviction (DefaultTolerationSeconds).
const DEFAULT_TOLERATION_SECONDS: i64 = 300;

/// How many times a write is retried when a concurrent writer got there first.
const MAX_WRITE_ATTEMPTS: usize = 32;

/// The API server's state shared by all requests.
pub struct Api {
    pub store: Arc<dyn Store>,
    pub services: ServiceAllocator,
    /// Namespaces whose cleanup task is running.
    namespace_cleanups: Mutex<HashSet<String>>,
    /// `tolerationSeconds` of the not-ready/unreachable tolerations added to new pods
    /// (`--default-toleration-seconds`): how long pods stay on a failed node.
    default_toleration_seconds: std::sync::atomic::AtomicI64,
}

/// Options of a write request.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub validation: FieldValidation,
    pub field_manager: Option<String>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            dry_run: false,
            validation: FieldValidation::Warn,
            field_manager: None,
        }
    }
}

/// The result of a write.
#[derive(Debug)]
pub struct Written {
    pub object: Value,
    /// Whether the write created the object (201 instead of 200).
    pub created: bool,
    /// `Warning` headers (unknown or duplicate fields under `fieldValidation=Warn`).
    pub warnings: Vec<String>,
}

/// Options of a DELETE (query parameters and the DeleteOptions body).
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    /// `Orphan`, `Background` or `Foreground`.
    pub propagation_policy: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
    pub dry_run: bool,
}

/// Options of a LIST (or the initial state of a WATCH).
#[derive(Clone, Debug, Default)]
pub struct ListParams {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: usize,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

/// What a mutation of an existing object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateKind<'a> {
    /// A client write to the object or one of its subresources (validated).
    Client(Option<&'a str>),
    /// A server-internal write (deletion bookkeeping, binding): not validated.
    Internal,
}

/// The current time as Kubernetes writes timestamps.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn timestamp_after(seconds: i64) -> String {
    let at = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(seconds.max(0)))
        .unwrap_or(jiff::Timestamp::now());
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The subject of an error about `name` of `res`.
pub fn subject<'a>(res: &'a Resource, name: &'a str) -> Subject<'a> {
    Subject {
        group: res.group,
        resource: res.plural,
        name,
    }
}

/// Decodes a stored object and stamps its resourceVersion.
pub fn decode_kv(kv: &KeyValue) -> ApiResult<Value> {
    let mut obj: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is not JSON: {e}", kv.key)))?;
    obj["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
    Ok(obj)
}

/// Encodes an object for the store (the resourceVersion comes from the store, not the value).
fn encode(obj: &Value) -> Vec<u8> {
    let mut obj = obj.clone();
    strip_resource_version(&mut obj);
    serde_json::to_vec(&obj).unwrap_or_default()
}

fn strip_resource_version(obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

/// A name usable as a store key segment (the validation module checks the DNS rules).
fn check_key_safe(kind: &str, name: &str) -> ApiResult<()> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('%')
        || name.len() > 253
    {
        return Err(ApiError::invalid_field(
            kind,
            Subject {
                name,
                ..Default::default()
            },
            "metadata.name",
            "FieldValueInvalid",
            format!(
                "Invalid value: \"{name}\": a name may not be empty, \".\" or \"..\", longer than 253 characters, or contain '/' or '%'"
            ),
        ));
    }
    Ok(())
}

/// Checks the body's kind and apiVersion against the URL's resource (filling them when absent).
fn check_type(obj: &mut Value, kind: &str, api_version: &str) -> ApiResult<()> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(format!(
            "the body of the request must be a {kind} object"
        )));
    }
    match obj.get("kind") {
        None | Some(Value::Null) => obj["kind"] = json!(kind),
        Some(Value::String(k)) if k == kind => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "the kind of the object ({}) does not match the expected kind ({kind})",
                other.as_str().unwrap_or("?")
            )));
        }
    }
    match obj.get("apiVersion") {
        None | Some(Value::Null) => obj["apiVersion"] = json!(api_version),
        Some(Value::String(v)) if v == api_version => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({api_version})",
                other.as_str().unwrap_or("?")
            )));
        }
    }
    match obj.get("metadata") {
        None | Some(Value::Null) => obj["metadata"] = json!({}),
        Some(Value::Object(_)) => {}
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "{kind}.metadata must be an object"
            )));
        }
    }
    Ok(())
}

/// Applies `fieldValidation`: Strict rejects unknown and duplicate fields, Warn reports them.
fn check_fields(
    kind: &str,
    obj: &Value,
    duplicates: &[String],
    mode: FieldValidation,
) -> ApiResult<Vec<String>> {
    if mode == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let mut problems: Vec<String> = validation::unknown_fields(kind, obj)
        .into_iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    problems.extend(
        duplicates
            .iter()
            .map(|f| format!("duplicate field \"{f}\"")),
    );
    if problems.is_empty() {
        return Ok(Vec::new());
    }
    match mode {
        FieldValidation::Strict => Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            problems.join(", ")
        ))),
        _ => Ok(problems),
    }
}

fn random_suffix() -> String {
    // The alphabet Kubernetes uses (no vowels, no easily confused characters).
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A list continue token: the revision the list was read at and the last key returned.
#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: i64,
    start: String,
}

fn encode_continue(revision: i64, key: &str, prefix: &str) -> String {
    let token = ContinueToken {
        v: "meta.k8s.io/v1".into(),
        rv: revision,
        start: key.strip_prefix(prefix).unwrap_or(key).to_string(),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&token).unwrap_or_default())
}

fn decode_continue(token: &str, prefix: &str) -> ApiResult<(i64, String)> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad())?;
    let token: ContinueToken = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if token.v != "meta.k8s.io/v1" || token.rv <= 0 || token.start.contains("..") {
        return Err(bad());
    }
    Ok((token.rv, format!("{prefix}{}", token.start)))
}

impl Api {
    pub fn new(store: Arc<dyn Store>, services: ServiceAllocator) -> Arc<Self> {
        Arc::new(Api {
            store,
            services,
            namespace_cleanups: Mutex::new(HashSet::new()),
            default_toleration_seconds: std::sync::atomic::AtomicI64::new(
                DEFAULT_TOLERATION_SECONDS,
            ),
        })
    }

    /// Sets the `tolerationSeconds` new pods get for the not-ready and unreachable taints.
    pub fn set_default_toleration_seconds(&self, seconds: i64) {
        self.default_toleration_seconds
            .store(seconds.max(0), std::sync::atomic::Ordering::Relaxed);
    }

    /// Marks a namespace's cleanup as running; false if it already is.
    pub fn claim_namespace_cleanup(&self, name: &str) -> bool {
        self.namespace_cleanups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string())
    }

    /// Marks a namespace's cleanup as finished.
    pub fn release_namespace_cleanup(&self, name: &str) {
        self.namespace_cleanups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// Reads one object.
    pub async fn get(&self, res: &Resource, ns: Option<&str>, name: &str) -> ApiResult<Value> {
        let key = res.key(ns, name);
        match self.store.get(&key).await {
            Ok(Some(kv)) => decode_kv(&kv),
            Ok(None) => Err(ApiError::not_found(subject(res, name))),
            Err(e) => Err(ApiError::from_store(e, subject(res, name))),
        }
    }

    async fn get_kv(&self, res: &Resource, ns: Option<&str>, name: &str) -> ApiResult<KeyValue> {
        match self.store.get(&res.key(ns, name)).await {
            Ok(Some(kv)) => Ok(kv),
            Ok(None) => Err(ApiError::not_found(subject(res, name))),
            Err(e) => Err(ApiError::from_store(e, subject(res, name))),
        }
    }

    /// Lists objects matching the selectors, one page at a time when `limit` is set.
    /// Returns the `<Kind>List` object.
    pub async fn list(
        &self,
        res: &Resource,
        ns: Option<&str>,
        params: &ListParams,
    ) -> ApiResult<Value> {
        let (items, revision, continue_token) = self.list_items(res, ns, params).await?;
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if let Some(token) = continue_token {
            metadata["continue"] = json!(token);
        }
        Ok(
            json!({"kind": res.list_kind(), "apiVersion": res.api_version(), "metadata": metadata, "items": items}),
        )
    }

    /// The matching objects, the revision they were read at, and the continue token.
    pub async fn list_items(
        &self,
        res: &Resource,
        ns: Option<&str>,
        params: &ListParams,
    ) -> ApiResult<(Vec<Value>, i64, Option<String>)> {
        let prefix = res.prefix(ns);
        let (mut revision, mut start_after) = match &params.continue_token {
            Some(token) if !token.is_empty() => {
                if params
                    .resource_version
                    .as_deref()
                    .is_some_and(|rv| !rv.is_empty() && rv != "0")
                {
                    return Err(ApiError::bad_request(
                        "specifying resource version is not allowed when using continue",
                    ));
                }
                let (rv, key) = decode_continue(token, &prefix)?;
                (rv, Some(key))
            }
            _ => (self.list_revision(params).await?, None),
        };
        let page_size = if params.limit > 0 {
            params.limit.max(100)
        } else {
            0
        };
        let mut items = Vec::new();
        loop {
            let page = self
                .store
                .list(&prefix, ListOptions { revision, limit: page_size, start_after: start_after.clone() })
                .await
                .map_err(|e| match e {
                    StoreError::Compacted { .. } if params.continue_token.is_some() => ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ),
                    other => ApiError::from_store(other, Subject::default()),
                })?;
            revision = page.revision;
            let count = page.items.len();
            for (i, kv) in page.items.iter().enumerate() {
                let obj = decode_kv(kv)?;
                if params.labels.matches_object(&obj) && params.fields.matches_object(&obj) {
                    items.push(obj);
                    if params.limit > 0 && items.len() >= params.limit {
                        let more = i + 1 < count || page.more;
                        let token = more.then(|| encode_continue(revision, &kv.key, &prefix));
                        return Ok((items, revision, token));
                    }
                }
            }
            match page.items.last() {
                Some(last) if page.more => start_after = Some(last.key.clone()),
                _ => break,
            }
        }
        Ok((items, revision, None))
    }

    /// The revision a list reads at, from `resourceVersion` and `resourceVersionMatch`.
    async fn list_revision(&self, params: &ListParams) -> ApiResult<i64> {
        let rv = params.resource_version.as_deref().unwrap_or("");
        let requested: i64 = if rv.is_empty() {
            0
        } else {
            rv.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?
        };
        match params.resource_version_match.as_deref().unwrap_or("") {
            "Exact" => {
                if requested <= 0 {
                    return Err(ApiError::bad_request(
                        "resourceVersionMatch=Exact requires a non-zero resourceVersion",
                    ));
                }
                Ok(requested)
            }
            "" | "NotOlderThan" => {
                if requested > 0 {
                    let current = self
                        .store
                        .current_revision()
                        .await
                        .map_err(|e| ApiError::from_store(e, Subject::default()))?;
                    if requested > current {
                        return Err(ApiError::too_large_resource_version(requested, current));
                    }
                }
                Ok(0)
            }
            other => Err(ApiError::bad_request(format!(
                "resourceVersionMatch {other:?} is not one of Exact, NotOlderThan"
            ))),
        }
    }

    /// Creates an object from a request body.
    pub async fn create(
        &self,
        res: &Resource,
        ns: Option<&str>,
        body: Body,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        let mut obj = body.value;
        check_type(&mut obj, res.kind, &res.api_version())?;
        let warnings = check_fields(res.kind, &obj, &body.duplicates, opts.validation)?;
        if res.namespaced {
            let ns = ns.ok_or_else(|| {
                ApiError::bad_request("a namespace is required to create this resource")
            })?;
            match meta_str(&obj, "namespace") {
                Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => obj["metadata"]["namespace"] = json!(ns),
            }
        } else if let Some(meta) = obj["metadata"].as_object_mut() {
            meta.remove("namespace");
        }
        let generate_name = meta_str(&obj, "generateName").unwrap_or("").to_string();
        let fixed_name = meta_str(&obj, "name").unwrap_or("").to_string();
        if fixed_name.is_empty() && generate_name.is_empty() {
            return Err(ApiError::invalid_field(
                res.kind,
                subject(res, ""),
                "metadata.name",
                "FieldValueRequired",
                "Required value: name or generateName is required",
            ));
        }
        let mut obj = strategy::normalize(res, obj)?;
        {
            let meta = obj["metadata"]
                .as_object_mut()
                .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
            for field in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
                "selfLink",
            ] {
                meta.remove(field);
            }
            meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            meta.insert("creationTimestamp".into(), json!(now()));
        }
        strategy::prepare_for_create(res, &mut obj);
        defaults::apply_defaults(res.kind, &mut obj);
        if res.kind == "Pod" {
            defaults::default_tolerations(
                &mut obj,
                self.default_toleration_seconds
                    .load(std::sync::atomic::Ordering::Relaxed),
            );
        }
        if let Some(ns) = ns.filter(|_| res.namespaced) {
            self.check_namespace_open(res, ns, &fixed_name).await?;
        }
        for attempt in 0..8 {
            let name = if fixed_name.is_empty() {
                format!("{generate_name}{}", random_suffix())
            } else {
                fixed_name.clone()
            };
            check_key_safe(res.kind, &name)?;
            obj["metadata"]["name"] = json!(name);
            let errors = validation::validate(res.kind, &obj, None);
            if !errors.is_empty() {
                return Err(ApiError::from_field_errors(
                    res.kind,
                    subject(res, &name),
                    &errors,
                ));
            }
            let mut reservation = Reservation::default();
            if res.kind == "Service" {
                self.services
                    .assign(
                        self.store.as_ref(),
                        &mut obj,
                        None,
                        opts.dry_run,
                        &mut reservation,
                    )
                    .await
                    .map_err(|e| e.into_api_error(res.kind, subject(res, &name)))?;
            }
            if opts.dry_run {
                self.services
                    .rollback(self.store.as_ref(), reservation)
                    .await;
                return Ok(Written {
                    object: obj,
                    created: true,
                    warnings,
                });
            }
            let key = res.key(ns, &name);
            match self.store.create(&key, encode(&obj)).await {
                Ok(revision) => {
                    obj["metadata"]["resourceVersion"] = json!(revision.to_string());
                    return Ok(Written {
                        object: obj,
                        created: true,
                        warnings,
                    });
                }
                Err(StoreError::AlreadyExists(_)) if fixed_name.is_empty() && attempt < 7 => {
                    self.services
                        .rollback(self.store.as_ref(), reservation)
                        .await;
                    continue;
                }
                Err(e) => {
                    self.services
                        .rollback(self.store.as_ref(), reservation)
                        .await;
                    return Err(ApiError::from_store(e, subject(res, &name)));
                }
            }
        }
        Err(ApiError::already_exists(subject(res, &generate_name)))
    }

    /// Namespaced creates need an existing namespace that is not being deleted.
    async fn check_namespace_open(&self, res: &Resource, ns: &str, name: &str) -> ApiResult<()> {
        let namespaces = registry::find("", "v1", "namespaces")
            .ok_or_else(|| ApiError::internal("namespaces not registered"))?;
        let namespace = self.get(namespaces, None, ns).await?;
        if namespace
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|t| !t.is_null())
        {
            return Err(ApiError::forbidden(
                subject(res, name),
                &format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            ));
        }
        Ok(())
    }

    /// Replaces an object (PUT) or its status.
    pub async fn update(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        body: Body,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        let mut obj = body.value;
        check_type(&mut obj, res.kind, &res.api_version())?;
        let warnings = check_fields(res.kind, &obj, &body.duplicates, opts.validation)?;
        if let Some(body_name) = meta_str(&obj, "name").filter(|n| !n.is_empty())
            && body_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if res.namespaced
            && let Some(body_ns) = meta_str(&obj, "namespace").filter(|n| !n.is_empty())
            && Some(body_ns) != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let obj = strategy::normalize(res, obj)?;
        let object = self
            .guaranteed_update(
                res,
                ns,
                name,
                UpdateKind::Client(subresource),
                opts.dry_run,
                |_| Ok(obj.clone()),
            )
            .await?;
        Ok(Written {
            object,
            created: false,
            warnings,
        })
    }

    /// Applies a PATCH (JSON, merge or strategic merge) to an object or its status.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        patch_type: PatchType,
        patch_body: &Value,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        let mut warnings = Vec::new();
        let object = self
            .guaranteed_update(
                res,
                ns,
                name,
                UpdateKind::Client(subresource),
                opts.dry_run,
                |current| {
                    let mut original = current.clone();
                    strip_resource_version(&mut original);
                    let patched = patch::apply_patch(res.kind, patch_type, &original, patch_body)
                        .map_err(|e| patch_error(res, name, e))?;
                    let mut patched = patched;
                    check_type(&mut patched, res.kind, &res.api_version())?;
                    warnings = check_fields(res.kind, &patched, &[], opts.validation)?;
                    if meta_str(&patched, "name") != Some(name) {
                        return Err(ApiError::bad_request(format!(
                            "the patch changes the name of the object to {:?}",
                            meta_str(&patched, "name").unwrap_or("")
                        )));
                    }
                    strategy::normalize(res, patched)
                },
            )
            .await?;
        Ok(Written {
            object,
            created: false,
            warnings,
        })
    }

    /// Server-side apply (`application/apply-patch+yaml`): creates the object when absent,
    /// otherwise merges the applied configuration into it as a strategic merge patch.
    /// Field ownership (managedFields) and apply conflicts are not tracked.
    pub async fn apply(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        body: Body,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        if opts.field_manager.as_deref().unwrap_or("").is_empty() {
            return Err(ApiError::invalid_field(
                "PatchOptions.meta.k8s.io",
                Subject::default(),
                "fieldManager",
                "FieldValueRequired",
                "Required value: is required for apply patch",
            ));
        }
        let mut applied = body.value;
        if applied.get("apiVersion").is_none() || applied.get("kind").is_none() {
            return Err(ApiError::bad_request(
                "apply patches must set apiVersion and kind",
            ));
        }
        check_type(&mut applied, res.kind, &res.api_version())?;
        match meta_str(&applied, "name") {
            Some(n) if n == name => {}
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            None => applied["metadata"]["name"] = json!(name),
        }
        if subresource.is_none() {
            match self.get(res, ns, name).await {
                Err(e) if e.code == 404 => {
                    let created = self
                        .create(
                            res,
                            ns,
                            Body {
                                value: applied.clone(),
                                duplicates: body.duplicates.clone(),
                            },
                            opts,
                        )
                        .await;
                    match created {
                        Err(e) if e.code == 409 && e.reason == "AlreadyExists" => {}
                        other => return other,
                    }
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
        let warnings = check_fields(res.kind, &applied, &body.duplicates, opts.validation)?;
        let mut patch_body = applied;
        if let Some(meta) = patch_body["metadata"].as_object_mut() {
            for field in [
                "uid",
                "creationTimestamp",
                "generation",
                "managedFields",
                "resourceVersion",
            ] {
                meta.remove(field);
            }
        }
        let object = self
            .guaranteed_update(
                res,
                ns,
                name,
                UpdateKind::Client(subresource),
                opts.dry_run,
                |current| {
                    let mut original = current.clone();
                    strip_resource_version(&mut original);
                    let merged = patch::apply_patch(
                        res.kind,
                        PatchType::StrategicMerge,
                        &original,
                        &patch_body,
                    )
                    .map_err(|e| patch_error(res, name, e))?;
                    strategy::normalize(res, merged)
                },
            )
            .await?;
        Ok(Written {
            object,
            created: false,
            warnings,
        })
    }

    /// Reads, changes and writes an object until the write lands without a concurrent change
    /// (or fails with 409 when the change carried a resourceVersion precondition).
    /// `mutate` gets the stored object and returns the desired one; the strategy then merges
    /// what the kind and subresource allow. Returns the written object.
    pub async fn guaranteed_update<F>(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        kind: UpdateKind<'_>,
        dry_run: bool,
        mut mutate: F,
    ) -> ApiResult<Value>
    where
        F: FnMut(&Value) -> ApiResult<Value>,
    {
        let key = res.key(ns, name);
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let kv = self.get_kv(res, ns, name).await?;
            let mut old = decode_kv(&kv)?;
            let mut new = mutate(&old)?;
            let pinned = match new.pointer("/metadata/resourceVersion") {
                Some(Value::String(rv)) if !rv.is_empty() => {
                    if *rv != kv.mod_revision.to_string() {
                        return Err(ApiError::stale(subject(res, name)));
                    }
                    true
                }
                _ => false,
            };
            if let Some(uid) = meta_str(&new, "uid").filter(|u| !u.is_empty())
                && Some(uid) != meta_str(&old, "uid")
            {
                return Err(ApiError::conflict(
                    subject(res, name),
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&old, "uid").unwrap_or("")
                    ),
                ));
            }
            strip_resource_version(&mut old);
            strip_resource_version(&mut new);
            let mut reservation = Reservation::default();
            if let UpdateKind::Client(subresource) = kind {
                strategy::prepare_for_update(res, subresource, &mut new, &old);
                defaults::apply_defaults(res.kind, &mut new);
                let errors = validation::validate(res.kind, &new, Some(&old));
                if !errors.is_empty() {
                    return Err(ApiError::from_field_errors(
                        res.kind,
                        subject(res, name),
                        &errors,
                    ));
                }
                if res.kind == "Service" && subresource.is_none() {
                    self.services
                        .assign(
                            self.store.as_ref(),
                            &mut new,
                            Some(&old),
                            dry_run,
                            &mut reservation,
                        )
                        .await
                        .map_err(|e| e.into_api_error(res.kind, subject(res, name)))?;
                }
            }
            if new == old {
                self.services
                    .rollback(self.store.as_ref(), reservation)
                    .await;
                new["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
                return Ok(new);
            }
            if dry_run {
                self.services
                    .rollback(self.store.as_ref(), reservation)
                    .await;
                new["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
                return Ok(new);
            }
            match self
                .store
                .update(&key, encode(&new), Some(kv.mod_revision))
                .await
            {
                Ok(revision) => {
                    if res.kind == "Service" {
                        self.services
                            .release_unused(self.store.as_ref(), &old, Some(&new))
                            .await;
                    }
                    new["metadata"]["resourceVersion"] = json!(revision.to_string());
                    if deletion_complete(&new) {
                        self.delete_now(res, &key, revision, &new).await;
                    }
                    return Ok(new);
                }
                Err(StoreError::Conflict { .. }) => {
                    self.services
                        .rollback(self.store.as_ref(), reservation)
                        .await;
                    if pinned {
                        return Err(ApiError::stale(subject(res, name)));
                    }
                }
                Err(e) => {
                    self.services
                        .rollback(self.store.as_ref(), reservation)
                        .await;
                    return Err(ApiError::from_store(e, subject(res, name)));
                }
            }
        }
        Err(ApiError::conflict(
            subject(res, name),
            "too many concurrent writers; please retry",
        ))
    }

    /// Removes an object whose deletion has nothing left to wait for. A concurrent write
    /// wins (the next write re-checks).
    async fn delete_now(&self, res: &Resource, key: &str, revision: i64, obj: &Value) {
        match self.store.delete(key, Some(revision)).await {
            Ok(_) => {
                if res.kind == "Service" {
                    self.services
                        .release_unused(self.store.as_ref(), obj, None)
                        .await;
                }
            }
            Err(e) => tracing::debug!(key, error = %e, "deferred deletion lost a race"),
        }
    }

    /// Deletes an object. Returns the HTTP code and body: the object while deletion is
    /// pending (finalizers, graceful pod termination) or for kinds that return it, a
    /// `Status` otherwise.
    pub async fn delete(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<Value> {
        let key = res.key(ns, name);
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let kv = self.get_kv(res, ns, name).await?;
            let current = decode_kv(&kv)?;
            let uid = meta_str(&current, "uid").unwrap_or("").to_string();
            if let Some(want) = opts.precondition_uid.as_deref().filter(|u| !u.is_empty())
                && want != uid
            {
                return Err(ApiError::conflict(
                    subject(res, name),
                    &format!(
                        "Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
                    ),
                ));
            }
            if let Some(want) = opts
                .precondition_resource_version
                .as_deref()
                .filter(|v| !v.is_empty())
                && want != kv.mod_revision.to_string()
            {
                return Err(ApiError::conflict(
                    subject(res, name),
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {}",
                        kv.mod_revision
                    ),
                ));
            }
            let mut next = current.clone();
            strip_resource_version(&mut next);
            let mut finalizers: Vec<String> = next
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .map(|f| {
                    f.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            match opts.propagation_policy.as_deref() {
                Some("Foreground") => {
                    finalizers.retain(|f| f != "orphan");
                    if !finalizers.iter().any(|f| f == "foregroundDeletion") {
                        finalizers.push("foregroundDeletion".into());
                    }
                }
                Some("Orphan") => {
                    finalizers.retain(|f| f != "foregroundDeletion");
                    if !finalizers.iter().any(|f| f == "orphan") {
                        finalizers.push("orphan".into());
                    }
                }
                Some("Background") | None => {}
                Some(other) => {
                    return Err(ApiError::invalid_field(
                        "DeleteOptions",
                        subject(res, name),
                        "propagationPolicy",
                        "FieldValueNotSupported",
                        format!(
                            "Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
                        ),
                    ));
                }
            }
            let grace = self.grace_period(res, &current, opts.grace_period_seconds);
            let already_deleting = current
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|t| !t.is_null());
            let current_grace = current
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64);
            if !finalizers.is_empty() || grace > 0 {
                // Deletion is pending: mark the object and let finalizers / the node finish.
                if !finalizers.is_empty() {
                    next["metadata"]["finalizers"] = json!(finalizers);
                }
                if !already_deleting || current_grace.is_some_and(|g| grace < g) {
                    next["metadata"]["deletionTimestamp"] = json!(timestamp_after(grace));
                    next["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                    if res.has_generation && !already_deleting {
                        let generation = next
                            .pointer("/metadata/generation")
                            .and_then(Value::as_i64)
                            .unwrap_or(0);
                        next["metadata"]["generation"] = json!(generation + 1);
                    }
                }
                let mut unchanged = current.clone();
                strip_resource_version(&mut unchanged);
                if next == unchanged || opts.dry_run {
                    return Ok(current);
                }
                match self
                    .store
                    .update(&key, encode(&next), Some(kv.mod_revision))
                    .await
                {
                    Ok(revision) => {
                        next["metadata"]["resourceVersion"] = json!(revision.to_string());
                        return Ok(next);
                    }
                    Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound(_)) => continue,
                    Err(e) => return Err(ApiError::from_store(e, subject(res, name))),
                }
            }
            // Nothing to wait for: delete now.
            if opts.dry_run {
                return Ok(self.deleted_response(res, name, &uid, current));
            }
            match self.store.delete(&key, Some(kv.mod_revision)).await {
                Ok((_, revision)) => {
                    if res.kind == "Service" {
                        self.services
                            .release_unused(self.store.as_ref(), &current, None)
                            .await;
                    }
                    let mut gone = current;
                    gone["metadata"]["resourceVersion"] = json!(revision.to_string());
                    return Ok(self.deleted_response(res, name, &uid, gone));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(e, subject(res, name))),
            }
        }
        Err(ApiError::conflict(
            subject(res, name),
            "too many concurrent writers; please retry",
        ))
    }

    fn deleted_response(&self, res: &Resource, name: &str, uid: &str, obj: Value) -> Value {
        if strategy::returns_deleted_object(res) {
            obj
        } else {
            success_status(subject(res, name), uid)
        }
    }

    /// The grace period of a deletion: pods bound to a node terminate gracefully (the
    /// request's period, else the pod's, else 30 s); everything else goes at once.
    fn grace_period(&self, res: &Resource, obj: &Value, requested: Option<i64>) -> i64 {
        if res.kind != "Pod" {
            return 0;
        }
        let bound = obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let finished = matches!(
            obj.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        );
        if !bound || finished {
            return 0;
        }
        let grace = requested
            .or_else(|| {
                obj.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30);
        // Kubernetes turns a requested 0 into 1 s unless forced; here 0 means now.
        grace.max(0)
    }

    /// Deletes every object matching the list options (DELETE on a collection); returns
    /// the list of what was deleted or marked for deletion.
    pub async fn delete_collection(
        &self,
        res: &Resource,
        ns: Option<&str>,
        params: &ListParams,
        opts: &DeleteOptions,
    ) -> ApiResult<Value> {
        let (items, revision, _) = self
            .list_items(
                res,
                ns,
                &ListParams {
                    limit: 0,
                    continue_token: None,
                    ..params.clone()
                },
            )
            .await?;
        let mut deleted = Vec::new();
        for item in items {
            let name = meta_str(&item, "name").unwrap_or("").to_string();
            let item_ns = meta_str(&item, "namespace").map(str::to_string);
            match self.delete(res, item_ns.as_deref(), &name, opts).await {
                Ok(result) => deleted.push(if result.get("kind") == Some(&json!("Status")) {
                    item
                } else {
                    result
                }),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(
            json!({"kind": res.list_kind(), "apiVersion": res.api_version(), "metadata": {"resourceVersion": revision.to_string()}, "items": deleted}),
        )
    }

    /// Binds a pod to a node (`pods/binding`); 409 if it is already bound.
    pub async fn bind(
        &self,
        res: &Resource,
        ns: Option<&str>,
        pod: &str,
        node: &str,
        dry_run: bool,
    ) -> ApiResult<()> {
        if node.is_empty() {
            return Err(ApiError::invalid_field(
                "Binding",
                subject(res, pod),
                "target.name",
                "FieldValueRequired",
                "Required value",
            ));
        }
        self.guaranteed_update(res, ns, pod, UpdateKind::Internal, dry_run, |current| {
            if let Some(bound) = current.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                return Err(ApiError::conflict(subject(res, pod), &format!("pod {pod} is already assigned to node \"{bound}\"")));
            }
            if current.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
                return Err(ApiError::conflict(subject(res, pod), &format!("pod {pod} is being deleted, cannot be assigned to a host")));
            }
            let mut next = current.clone();
            // No resourceVersion precondition: a concurrent status write is retried, not a 409.
            strip_resource_version(&mut next);
            next["spec"]["nodeName"] = json!(node);
            let condition = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now()});
            let conditions = next["status"]["conditions"].as_array().cloned().unwrap_or_default();
            let mut conditions: Vec<Value> = conditions.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
            conditions.push(condition);
            next["status"]["conditions"] = json!(conditions);
            Ok(next)
        })
        .await?;
        Ok(())
    }

    /// Ensures the system namespaces (and the `default/kubernetes` Service) exist, and
    /// loads the Service allocations (claims and stored Services).
    pub async fn bootstrap(&self) -> anyhow::Result<()> {
        let services = registry::find("", "v1", "services")
            .ok_or_else(|| anyhow::anyhow!("services not registered"))?;
        let (stored, _, _) = self
            .list_items(services, None, &ListParams::default())
            .await
            .map_err(|e| anyhow::anyhow!("listing services: {e}"))?;
        self.services
            .load(self.store.as_ref(), &stored)
            .await
            .map_err(|e| anyhow::anyhow!("loading service allocations: {e}"))?;
        let namespaces = registry::find("", "v1", "namespaces")
            .ok_or_else(|| anyhow::anyhow!("namespaces not registered"))?;
        for ns in SYSTEM_NAMESPACES {
            let body = Body {
                value: json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                duplicates: vec![],
            };
            match self
                .create(namespaces, None, body, &WriteOptions::default())
                .await
            {
                Ok(_) => tracing::info!(namespace = ns, "created system namespace"),
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => anyhow::bail!("creating namespace {ns}: {e}"),
            }
        }
        let kubernetes = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": self.services.first_ip().to_string(), "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}], "sessionAffinity": "None", "type": "ClusterIP"},
        });
        // Already there (a restart, or another API server on the same etcd): nothing to do.
        if self
            .get(services, Some("default"), "kubernetes")
            .await
            .is_ok()
        {
            return Ok(());
        }
        match self
            .create(
                services,
                Some("default"),
                Body {
                    value: kubernetes,
                    duplicates: vec![],
                },
                &WriteOptions::default(),
            )
            .await
        {
            Ok(_)
            | Err(ApiError {
                reason: "AlreadyExists",
                ..
            }) => {}
            Err(e) => tracing::warn!(error = %e, "could not create the default/kubernetes service"),
        }
        Ok(())
    }

    /// How long watches wait between bookmarks.
    pub fn bookmark_interval(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// Whether an object marked for deletion has nothing left to wait for.
fn deletion_complete(obj: &Value) -> bool {
    let deleting = obj
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null());
    // Namespaces also wait for their spec.finalizers (the namespace cleanup).
    let finalizers = ["/metadata/finalizers", "/spec/finalizers"]
        .iter()
        .any(|p| {
            obj.pointer(p)
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty())
        });
    let grace = obj
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    deleting && !finalizers && grace == 0
}

fn patch_error(res: &Resource, name: &str, err: patch::PatchError) -> ApiError {
    if err.status_code() == 422 {
        ApiError::invalid_field(
            res.kind,
            subject(res, name),
            "",
            "FieldValueInvalid",
            err.to_string(),
        )
    } else {
        ApiError::bad_request(err.to_string())
    }
}
