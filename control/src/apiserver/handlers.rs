//! HTTP glue: routes `/api` and `/apis` requests to discovery or to the REST storage,
//! reads bodies and options, and writes objects in the representation the client accepts
//! (JSON, YAML, Table, PartialObjectMetadata), including watch streams.
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body as HttpBody, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http_body_util::BodyExt;
use hyper::upgrade::OnUpgrade;
use serde_json::{Value, json};
use tokio_stream::wrappers::ReceiverStream;

use super::patch::{self, PatchType};
use super::proxy::{self, NodeClient};
use super::registry::Resource;
use super::request::{self, Body, BodyFormat, Output, Query, Route, Target};
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{ApiError, ApiResult, success_status};
use super::storage::{Api, DeleteOptions, ListParams, UpdateKind, WriteOptions, Written, subject};
use super::table::{self, IncludeObject};
use super::watch::{self, WatchParams};
use super::{discovery, namespaces, strategy};

/// The largest request body accepted (like kube-apiserver's 3 MiB limit).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// What a request was, for metrics and logs (attached to the response).
#[derive(Clone, Debug)]
pub struct RequestInfo {
    /// Kubernetes verb in upper case: GET, LIST, WATCH, CREATE, UPDATE, PATCH, DELETE, ...
    pub verb: &'static str,
    /// `pods`, `deployments/scale`, or empty for non-resource paths.
    pub resource: String,
}

/// Everything a handler needs.
pub struct Handler {
    pub api: Arc<Api>,
    /// `host:port` clients reach this server at (legacy discovery's serverAddress).
    pub server_address: String,
    /// Connects to node agents for `pods/log` and `pods/exec`.
    pub nodes: Arc<NodeClient>,
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn json_response(code: StatusCode, value: &Value, content_type: &str) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    (
        code,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type)
                .unwrap_or(HeaderValue::from_static("application/json")),
        )],
        body,
    )
        .into_response()
}

/// Writes an object (or list) in the negotiated representation.
fn object_response(
    code: StatusCode,
    value: &Value,
    output: Output,
    warnings: &[String],
) -> Response {
    let mut response = match output {
        Output::Yaml => match serde_norway::to_string(value) {
            Ok(text) => (code, [(header::CONTENT_TYPE, "application/yaml")], text).into_response(),
            Err(e) => ApiError::internal(format!("encoding YAML: {e}")).into_response(),
        },
        Output::Metadata(version) => {
            let converted = if let Some(items) = value.get("items").and_then(Value::as_array) {
                let items: Vec<Value> = items
                    .iter()
                    .map(|i| table::partial_metadata(i, version))
                    .collect();
                json!({"kind": "PartialObjectMetadataList", "apiVersion": format!("meta.k8s.io/{version}"), "metadata": value["metadata"].clone(), "items": items})
            } else if value.get("kind") == Some(&json!("Status")) {
                value.clone()
            } else {
                table::partial_metadata(value, version)
            };
            json_response(code, &converted, "application/json")
        }
        Output::Json | Output::Table(_) => json_response(code, value, "application/json"),
    };
    for warning in warnings {
        let text = format!(
            "299 - \"{}\"",
            warning.replace('\\', "\\\\").replace('"', "\\\"")
        );
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

fn with_info(mut response: Response, verb: &'static str, resource: String) -> Response {
    response
        .extensions_mut()
        .insert(RequestInfo { verb, resource });
    response
}

/// Reads a request body up to [`MAX_BODY_BYTES`] (413 beyond).
async fn read_body(body: HttpBody) -> ApiResult<Bytes> {
    match http_body_util::Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::too_large(MAX_BODY_BYTES))
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}

fn write_options(query: &Query) -> ApiResult<WriteOptions> {
    Ok(WriteOptions {
        dry_run: query.dry_run()?,
        validation: query.field_validation()?,
        field_manager: query.get("fieldManager").map(str::to_string),
    })
}

fn list_params(res: &Resource, query: &Query) -> ApiResult<ListParams> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""), res.kind)
        .map_err(ApiError::bad_request)?;
    let limit = query.int("limit")?.unwrap_or(0);
    if limit < 0 {
        return Err(ApiError::bad_request("limit must not be negative"));
    }
    Ok(ListParams {
        labels,
        fields,
        limit: limit as usize,
        continue_token: query
            .get("continue")
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        resource_version: query.get("resourceVersion").map(str::to_string),
        resource_version_match: query
            .get("resourceVersionMatch")
            .filter(|m| !m.is_empty())
            .map(str::to_string),
    })
}

impl Handler {
    /// Serves any `/api` or `/apis` request; `upgrade` is the connection's upgrade handle
    /// (for `pods/exec` WebSockets).
    pub async fn handle(
        &self,
        method: Method,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
        body: HttpBody,
        upgrade: Option<OnUpgrade>,
    ) -> Response {
        let path = uri.path();
        let query = Query::parse(uri.query());
        let route = match request::route(path) {
            Ok(route) => route,
            Err(e) => return with_info(e.into_response(), verb_of_method(&method), String::new()),
        };
        match route {
            Route::Resource(target) => {
                let resource = match &target.subresource {
                    Some(sub) => format!("{}/{sub}", target.resource.plural),
                    None => target.resource.plural.to_string(),
                };
                let verb = resource_verb(&method, &target, &query);
                if target.resource.kind == "Pod"
                    && let (Some(ns), Some(name), Some(sub @ ("log" | "exec"))) = (
                        target.namespace.as_deref(),
                        target.name.as_deref(),
                        target.subresource.as_deref(),
                    )
                {
                    let response = match self
                        .stream(&method, sub, ns, name, &query, headers, upgrade)
                        .await
                    {
                        Ok(response) => response,
                        Err(e) => e.into_response(),
                    };
                    return with_info(response, verb, resource);
                }
                let response = match self.resource(method, target, &query, headers, body).await {
                    Ok(response) => response,
                    Err(e) => e.into_response(),
                };
                with_info(response, verb, resource)
            }
            discovery_route => {
                let response = if method != Method::GET {
                    ApiError::method_not_allowed(method.as_str()).into_response()
                } else {
                    self.discovery(discovery_route, headers)
                };
                with_info(response, "GET", String::new())
            }
        }
    }

    /// `pods/log` (GET) and `pods/exec` (GET with a WebSocket upgrade, or POST for SPDY),
    /// proxied to the pod's node agent.
    #[allow(clippy::too_many_arguments)]
    async fn stream(
        &self,
        method: &Method,
        sub: &str,
        ns: &str,
        name: &str,
        query: &Query,
        headers: &HeaderMap,
        upgrade: Option<OnUpgrade>,
    ) -> ApiResult<Response> {
        match (sub, method) {
            ("log", &Method::GET) => proxy::logs(&self.api, &self.nodes, ns, name, query).await,
            ("exec", &Method::GET | &Method::POST) => {
                proxy::exec(
                    &self.api,
                    &self.nodes,
                    method,
                    ns,
                    name,
                    query,
                    headers,
                    upgrade,
                )
                .await
            }
            _ => Err(ApiError::method_not_allowed(method.as_str())),
        }
    }

    fn discovery(&self, route: Route, headers: &HeaderMap) -> Response {
        let accept = header_str(headers, header::ACCEPT);
        match route {
            Route::CoreVersions => match discovery::wants_aggregated(accept) {
                Some(v) => json_response(
                    StatusCode::OK,
                    &discovery::aggregated(true, v),
                    &discovery::aggregated_content_type(v),
                ),
                None => json_response(
                    StatusCode::OK,
                    &discovery::api_versions(&self.server_address),
                    "application/json",
                ),
            },
            Route::Groups => match discovery::wants_aggregated(accept) {
                Some(v) => json_response(
                    StatusCode::OK,
                    &discovery::aggregated(false, v),
                    &discovery::aggregated_content_type(v),
                ),
                None => json_response(
                    StatusCode::OK,
                    &discovery::api_group_list(),
                    "application/json",
                ),
            },
            Route::Group(group) => json_response(
                StatusCode::OK,
                &discovery::api_group_object(&group),
                "application/json",
            ),
            Route::GroupVersion(group, version) => json_response(
                StatusCode::OK,
                &discovery::api_resource_list(&group, &version),
                "application/json",
            ),
            Route::Resource(_) => ApiError::path_not_found().into_response(),
        }
    }

    async fn resource(
        &self,
        method: Method,
        target: Target,
        query: &Query,
        headers: &HeaderMap,
        body: HttpBody,
    ) -> ApiResult<Response> {
        let res = target.resource;
        let ns = target.namespace.as_deref();
        let sub = target.subresource.as_deref();
        let name = target.name.as_deref();
        let allowed = |verb: &str| -> ApiResult<()> {
            let verbs = match sub {
                Some(s) => res.subresource(s).map(|s| s.verbs).unwrap_or(&[]),
                None => res.verbs,
            };
            if verbs.contains(&verb) {
                Ok(())
            } else {
                Err(ApiError::method_not_allowed(method_name(verb)))
            }
        };
        let watching = target.watch_path || query.flag("watch")?;
        match (&method, name) {
            (&Method::GET, None) if watching => {
                allowed("watch")?;
                let output = request::negotiate(header_str(headers, header::ACCEPT))?;
                self.watch(res, ns, query, output).await
            }
            (&Method::GET, None) => {
                allowed("list")?;
                let output = request::negotiate(header_str(headers, header::ACCEPT))?;
                let list = self.api.list(res, ns, &list_params(res, query)?).await?;
                render_read(res, &list, output, query, true)
            }
            (&Method::GET, Some(name)) if watching => {
                allowed("watch")?;
                let output = request::negotiate(header_str(headers, header::ACCEPT))?;
                let mut pinned = query.clone();
                pinned.set("fieldSelector", &format!("metadata.name={name}"));
                self.watch(res, ns, &pinned, output).await
            }
            (&Method::GET, Some(name)) => {
                allowed("get")?;
                let output = request::negotiate(header_str(headers, header::ACCEPT))?;
                let obj = self.api.get(res, ns, name).await?;
                match sub {
                    Some("scale") => Ok(object_response(
                        StatusCode::OK,
                        &scale_of(&obj)?,
                        output,
                        &[],
                    )),
                    _ => render_read(res, &obj, output, query, false),
                }
            }
            (&Method::POST, None) => {
                allowed("create")?;
                let output =
                    request::negotiate(header_str(headers, header::ACCEPT)).unwrap_or(Output::Json);
                let body = decode_request_body(headers, body).await?;
                let written = self
                    .api
                    .create(res, ns, body, &write_options(query)?)
                    .await?;
                Ok(written_response(written, output))
            }
            (&Method::POST, Some(name)) if sub == Some("binding") => {
                allowed("create")?;
                let body = decode_request_body(headers, body).await?;
                let binding = strategy::normalize_kind("Binding", "v1", body.value)?;
                if let Some(bound) = binding.pointer("/metadata/name").and_then(Value::as_str)
                    && !bound.is_empty()
                    && bound != name
                {
                    return Err(ApiError::bad_request(format!(
                        "the name of the binding ({bound}) does not match the pod ({name})"
                    )));
                }
                let node = binding
                    .pointer("/target/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                self.api.bind(res, ns, name, node, query.dry_run()?).await?;
                Ok(json_response(
                    StatusCode::CREATED,
                    &success_status(subject(res, name), ""),
                    "application/json",
                ))
            }
            (&Method::PUT, Some(name)) => {
                allowed("update")?;
                let output =
                    request::negotiate(header_str(headers, header::ACCEPT)).unwrap_or(Output::Json);
                let body = decode_request_body(headers, body).await?;
                let opts = write_options(query)?;
                if sub == Some("scale") {
                    return self.update_scale(res, ns, name, body, &opts, output).await;
                }
                let written = self.api.update(res, ns, name, sub, body, &opts).await?;
                Ok(written_response(written, output))
            }
            (&Method::PATCH, Some(name)) => {
                allowed("patch")?;
                let output =
                    request::negotiate(header_str(headers, header::ACCEPT)).unwrap_or(Output::Json);
                let content_type = header_str(headers, header::CONTENT_TYPE).unwrap_or("");
                let bytes = read_body(body).await?;
                let opts = write_options(query)?;
                let is_apply = content_type
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/apply-patch+yaml");
                if is_apply {
                    let body = request::decode(BodyFormat::Yaml, &bytes)?;
                    if sub == Some("scale") {
                        return self
                            .patch_scale(
                                res,
                                ns,
                                name,
                                PatchType::Merge,
                                &body.value,
                                &opts,
                                output,
                            )
                            .await;
                    }
                    let written = self.api.apply(res, ns, name, sub, body, &opts).await?;
                    return Ok(written_response(written, output));
                }
                let patch_type = PatchType::from_content_type(content_type)
                    .ok_or_else(|| ApiError::unsupported_media_type(content_type))?;
                let patch_body: Value = request::decode(BodyFormat::Json, &bytes)?.value;
                if sub == Some("scale") {
                    return self
                        .patch_scale(res, ns, name, patch_type, &patch_body, &opts, output)
                        .await;
                }
                let written = self
                    .api
                    .patch(res, ns, name, sub, patch_type, &patch_body, &opts)
                    .await?;
                Ok(written_response(written, output))
            }
            (&Method::DELETE, Some(name)) if sub.is_none() => {
                allowed("delete")?;
                let output =
                    request::negotiate(header_str(headers, header::ACCEPT)).unwrap_or(Output::Json);
                let opts = delete_options(query, headers, body).await?;
                let result = if res.kind == "Namespace" {
                    namespaces::delete(&self.api, name, &opts).await?
                } else {
                    self.api.delete(res, ns, name, &opts).await?
                };
                Ok(object_response(StatusCode::OK, &result, output, &[]))
            }
            (&Method::DELETE, None) => {
                allowed("deletecollection")?;
                let output =
                    request::negotiate(header_str(headers, header::ACCEPT)).unwrap_or(Output::Json);
                let params = list_params(res, query)?;
                let opts = delete_options(query, headers, body).await?;
                let result = self.api.delete_collection(res, ns, &params, &opts).await?;
                Ok(object_response(StatusCode::OK, &result, output, &[]))
            }
            _ => Err(ApiError::method_not_allowed(method.as_str())),
        }
    }

    async fn watch(
        &self,
        res: &'static Resource,
        ns: Option<&str>,
        query: &Query,
        output: Output,
    ) -> ApiResult<Response> {
        let params = WatchParams {
            labels: LabelSelector::parse(query.get("labelSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?,
            fields: FieldSelector::parse(query.get("fieldSelector").unwrap_or(""), res.kind)
                .map_err(ApiError::bad_request)?,
            resource_version: query.get("resourceVersion").map(str::to_string),
            send_initial_events: query
                .get("sendInitialEvents")
                .map(|v| v == "true" || v == "1"),
            allow_bookmarks: query.flag("allowWatchBookmarks")?,
            timeout: query
                .int("timeoutSeconds")?
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(s as u64)),
        };
        let include =
            IncludeObject::parse(query.get("includeObject")).map_err(ApiError::bad_request)?;
        let events = watch::start(self.api.clone(), res, ns.map(str::to_string), params).await?;
        let mut first = true;
        let stream = ReceiverStream::new(events).map(move |event| {
            let object = match output {
                Output::Table(version) if event.kind != "ERROR" && event.kind != "BOOKMARK" => {
                    let rv = event
                        .object
                        .pointer("/metadata/resourceVersion")
                        .cloned()
                        .unwrap_or(json!(""));
                    let table = table::table(
                        res,
                        std::slice::from_ref(&event.object),
                        include,
                        version,
                        first,
                        json!({"resourceVersion": rv}),
                    );
                    first = false;
                    table
                }
                Output::Metadata(version) if event.kind != "ERROR" => {
                    table::partial_metadata(&event.object, version)
                }
                _ => event.object,
            };
            let mut line = serde_json::to_vec(&json!({"type": event.kind, "object": object}))
                .unwrap_or_default();
            line.push(b'\n');
            Ok::<Bytes, std::convert::Infallible>(Bytes::from(line))
        });
        let mut response = Response::new(HttpBody::from_stream(stream));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, private"),
        );
        Ok(response)
    }

    async fn update_scale(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        body: Body,
        opts: &WriteOptions,
        output: Output,
    ) -> ApiResult<Response> {
        let mut scale = body.value;
        if !scale.is_object() {
            return Err(ApiError::bad_request(
                "the body must be an autoscaling/v1 Scale",
            ));
        }
        if scale.get("kind").is_none() {
            scale["kind"] = json!("Scale");
        }
        if scale.get("apiVersion").is_none() {
            scale["apiVersion"] = json!("autoscaling/v1");
        }
        let scale = strategy::normalize_kind("Scale", "autoscaling/v1", scale)?;
        let replicas = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let rv = scale
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        self.write_replicas(res, ns, name, replicas, rv, opts, output)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn patch_scale(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        patch_type: PatchType,
        patch_body: &Value,
        opts: &WriteOptions,
        output: Output,
    ) -> ApiResult<Response> {
        let current = self.api.get(res, ns, name).await?;
        let scale = scale_of(&current)?;
        let patched = patch::apply_patch("Scale", patch_type, &scale, patch_body).map_err(|e| {
            if e.status_code() == 422 {
                ApiError::invalid_field(
                    "Scale",
                    subject(res, name),
                    "",
                    "FieldValueInvalid",
                    e.to_string(),
                )
            } else {
                ApiError::bad_request(e.to_string())
            }
        })?;
        let patched = strategy::normalize_kind("Scale", "autoscaling/v1", patched)?;
        let replicas = patched
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let rv = patched
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|v| {
                Some(*v)
                    != current
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
            })
            .map(str::to_string);
        self.write_replicas(res, ns, name, replicas, rv, opts, output)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_replicas(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        replicas: i64,
        rv: Option<String>,
        opts: &WriteOptions,
        output: Output,
    ) -> ApiResult<Response> {
        if replicas < 0 {
            return Err(ApiError::invalid_field(
                "Scale",
                subject(res, name),
                "spec.replicas",
                "FieldValueInvalid",
                format!("Invalid value: {replicas}: must be greater than or equal to 0"),
            ));
        }
        let updated = self
            .api
            .guaranteed_update(
                res,
                ns,
                name,
                UpdateKind::Client(None),
                opts.dry_run,
                |current| {
                    let mut next = current.clone();
                    next["spec"]["replicas"] = json!(replicas);
                    match &rv {
                        Some(rv) => next["metadata"]["resourceVersion"] = json!(rv),
                        None => {
                            if let Some(meta) = next["metadata"].as_object_mut() {
                                meta.remove("resourceVersion");
                            }
                        }
                    }
                    Ok(next)
                },
            )
            .await?;
        Ok(object_response(
            StatusCode::OK,
            &scale_of(&updated)?,
            output,
            &[],
        ))
    }
}

/// The `autoscaling/v1` Scale of a Deployment or ReplicaSet.
fn scale_of(obj: &Value) -> ApiResult<Value> {
    let selector = match obj.pointer("/spec/selector") {
        Some(sel) => LabelSelector::from_object(sel)
            .map(|s| s.to_string())
            .unwrap_or_default(),
        None => String::new(),
    };
    let meta = &obj["metadata"];
    let mut metadata = json!({});
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = meta.get(field) {
            metadata[field] = v.clone();
        }
    }
    Ok(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": metadata,
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)},
        "status": {"replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0), "selector": selector},
    }))
}

/// Renders a GET or LIST result, converting to a Table when asked.
fn render_read(
    res: &Resource,
    value: &Value,
    output: Output,
    query: &Query,
    is_list: bool,
) -> ApiResult<Response> {
    match output {
        Output::Table(version) => {
            let include =
                IncludeObject::parse(query.get("includeObject")).map_err(ApiError::bad_request)?;
            let (items, metadata) = if is_list {
                (
                    value["items"].as_array().cloned().unwrap_or_default(),
                    value["metadata"].clone(),
                )
            } else {
                (
                    vec![value.clone()],
                    json!({"resourceVersion": value.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))}),
                )
            };
            Ok(json_response(
                StatusCode::OK,
                &table::table(res, &items, include, version, true, metadata),
                "application/json",
            ))
        }
        other => Ok(object_response(StatusCode::OK, value, other, &[])),
    }
}

fn written_response(written: Written, output: Output) -> Response {
    let code = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let output = match output {
        Output::Table(_) => Output::Json,
        other => other,
    };
    object_response(code, &written.object, output, &written.warnings)
}

/// Decodes a create/update body by its Content-Type.
async fn decode_request_body(headers: &HeaderMap, body: HttpBody) -> ApiResult<Body> {
    let format = request::body_format(header_str(headers, header::CONTENT_TYPE))?;
    let bytes = read_body(body).await?;
    request::decode(format, &bytes)
}

/// DeleteOptions from the query and the (optional) body; the body wins.
async fn delete_options(
    query: &Query,
    headers: &HeaderMap,
    body: HttpBody,
) -> ApiResult<DeleteOptions> {
    let mut opts = DeleteOptions {
        grace_period_seconds: query.int("gracePeriodSeconds")?,
        propagation_policy: query
            .get("propagationPolicy")
            .filter(|p| !p.is_empty())
            .map(str::to_string),
        dry_run: query.dry_run()?,
        ..Default::default()
    };
    if query.get("orphanDependents") == Some("true") && opts.propagation_policy.is_none() {
        opts.propagation_policy = Some("Orphan".into());
    }
    let bytes = read_body(body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(opts);
    }
    let format = request::body_format(header_str(headers, header::CONTENT_TYPE))?;
    let mut value = request::decode(format, &bytes)?.value;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the body of a DELETE must be a DeleteOptions object",
        ));
    }
    // Clients send DeleteOptions with several apiVersions (v1, meta.k8s.io/v1); the shape is the same.
    if let Some(map) = value.as_object_mut() {
        map.remove("kind");
        map.remove("apiVersion");
    }
    let parsed = strategy::normalize_kind("DeleteOptions", "v1", value)?;
    if let Some(grace) = parsed.get("gracePeriodSeconds").and_then(Value::as_i64) {
        opts.grace_period_seconds = Some(grace);
    }
    if let Some(policy) = parsed.get("propagationPolicy").and_then(Value::as_str) {
        opts.propagation_policy = Some(policy.to_string());
    } else if parsed.get("orphanDependents") == Some(&json!(true)) {
        opts.propagation_policy = Some("Orphan".into());
    }
    if let Some(uid) = parsed.pointer("/preconditions/uid").and_then(Value::as_str) {
        opts.precondition_uid = Some(uid.to_string());
    }
    if let Some(rv) = parsed
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
    {
        opts.precondition_resource_version = Some(rv.to_string());
    }
    if let Some(dry) = parsed.get("dryRun").and_then(Value::as_array) {
        opts.dry_run |= dry.iter().any(|v| v == "All");
    }
    Ok(opts)
}

fn verb_of_method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "CREATE",
        Method::PUT => "UPDATE",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

fn resource_verb(method: &Method, target: &Target, query: &Query) -> &'static str {
    let watching = target.watch_path || query.get("watch").is_some_and(|w| w == "true" || w == "1");
    match (method, target.name.is_some()) {
        (&Method::GET, _) if watching => "WATCH",
        (&Method::GET, false) => "LIST",
        (&Method::DELETE, false) => "DELETECOLLECTION",
        (&Method::PATCH, _) => "PATCH",
        _ => verb_of_method(method),
    }
}

fn method_name(verb: &str) -> &str {
    match verb {
        "get" | "list" | "watch" => "GET",
        "create" => "POST",
        "update" => "PUT",
        "patch" => "PATCH",
        _ => "DELETE",
    }
}

/// A Status for requests to unknown paths outside `/api` and `/apis`.
pub fn not_found() -> Response {
    ApiError::path_not_found().into_response()
}

/// The error for protected paths without a valid token.
pub fn unauthorized() -> Response {
    ApiError::unauthorized().into_response()
}
