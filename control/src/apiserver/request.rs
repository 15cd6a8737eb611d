//! Reading a request: the resource path, query options, the response media type the client
//! accepts, and the body (JSON, YAML or protobuf) with duplicate-field detection.
use std::cell::RefCell;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::protobuf;
use super::registry::{self, Resource};
use super::status::{ApiError, ApiResult};

/// A request for a resource, parsed from `/api/v1/...` or `/apis/<group>/<version>/...`.
#[derive(Debug)]
pub struct Target {
    pub resource: &'static Resource,
    /// The namespace from the path (`None`: cluster-scoped, or all namespaces).
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// The deprecated `/watch/` path prefix was used.
    pub watch_path: bool,
}

/// Where a path under `/api` or `/apis` leads.
#[derive(Debug)]
pub enum Route {
    /// `/api` (legacy versions, or aggregated discovery of the core group).
    CoreVersions,
    /// `/apis` (groups).
    Groups,
    /// `/apis/<group>`.
    Group(String),
    /// `/api/v1` or `/apis/<group>/<version>`: the resource list.
    GroupVersion(String, String),
    /// A resource, an object or a subresource.
    Resource(Target),
}

/// Parses the URL path; unknown paths are 404.
pub fn route(path: &str) -> ApiResult<Route> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segments.as_slice() {
        ["api"] => return Ok(Route::CoreVersions),
        ["apis"] => return Ok(Route::Groups),
        ["apis", group] => {
            return if registry::group_versions().iter().any(|(g, _)| g == group) {
                Ok(Route::Group(group.to_string()))
            } else {
                Err(ApiError::path_not_found())
            };
        }
        ["api", version, rest @ ..] => ("", version, rest),
        ["apis", group, version, rest @ ..] => (group, version, rest),
        _ => return Err(ApiError::path_not_found()),
    };
    if !registry::group_versions().contains(&(group, version)) {
        return Err(ApiError::path_not_found());
    }
    if rest.is_empty() {
        return Ok(Route::GroupVersion(group.to_string(), version.to_string()));
    }
    let (watch_path, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    let segment = |s: &str| -> ApiResult<String> { decode_segment(s) };
    let target = match rest {
        // `/namespaces/<ns>/<plural>...`: a namespaced resource, unless <plural> is a
        // subresource of the namespace itself (status, finalize).
        ["namespaces", ns, plural, tail @ ..]
            if registry::find(group, version, plural).is_some_and(|r| r.namespaced) =>
        {
            let resource =
                registry::find(group, version, plural).ok_or_else(ApiError::path_not_found)?;
            let (name, subresource) = match tail {
                [] => (None, None),
                [name] => (Some(segment(name)?), None),
                [name, sub] => (Some(segment(name)?), Some(sub.to_string())),
                _ => return Err(ApiError::path_not_found()),
            };
            Target {
                resource,
                namespace: Some(segment(ns)?),
                name,
                subresource,
                watch_path,
            }
        }
        [plural, tail @ ..] => {
            let resource =
                registry::find(group, version, plural).ok_or_else(ApiError::path_not_found)?;
            let (name, subresource) = match tail {
                [] => (None, None),
                [name] => (Some(segment(name)?), None),
                [name, sub] => (Some(segment(name)?), Some(sub.to_string())),
                _ => return Err(ApiError::path_not_found()),
            };
            if resource.namespaced && name.is_some() {
                // A namespaced object needs its namespace in the path.
                return Err(ApiError::path_not_found());
            }
            Target {
                resource,
                namespace: None,
                name,
                subresource,
                watch_path,
            }
        }
        [] => return Err(ApiError::path_not_found()),
    };
    if let Some(sub) = &target.subresource
        && target.resource.subresource(sub).is_none()
    {
        return Err(ApiError::path_not_found());
    }
    Ok(Route::Resource(target))
}

fn decode_segment(segment: &str) -> ApiResult<String> {
    let decoded = percent_decode(segment);
    if decoded.is_empty() || decoded == "." || decoded == ".." || decoded.contains('/') {
        return Err(ApiError::bad_request(format!(
            "invalid name in path: {decoded:?}"
        )));
    }
    Ok(decoded)
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The query string as ordered key/value pairs.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        let pairs = query
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        Query { pairs }
    }

    /// Replaces every value of `key`.
    pub fn set(&mut self, key: &str, value: &str) {
        self.pairs.retain(|(k, _)| k != key);
        self.pairs.push((key.to_string(), value.to_string()));
    }

    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, key: &str) -> impl Iterator<Item = &str> {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean flag (`true`/`1`); malformed values are a 400.
    pub fn flag(&self, key: &str) -> ApiResult<bool> {
        match self.get(key) {
            None | Some("") | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "invalid value for {key}: {other:?} is not a boolean"
            ))),
        }
    }

    /// An integer option; malformed values are a 400.
    pub fn int(&self, key: &str) -> ApiResult<Option<i64>> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("invalid value for {key}: {v:?} is not an integer"))
            }),
        }
    }

    /// `dryRun=All` (the only value Kubernetes defines).
    pub fn dry_run(&self) -> ApiResult<bool> {
        let mut dry = false;
        for v in self.all("dryRun") {
            match v {
                "All" => dry = true,
                "" => {}
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unsupported dryRun value {other:?}: only \"All\" is supported"
                    )));
                }
            }
        }
        Ok(dry)
    }

    /// `fieldValidation`: `Ignore`, `Warn` (the default) or `Strict`.
    pub fn field_validation(&self) -> ApiResult<FieldValidation> {
        match self.get("fieldValidation") {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn, Strict, got {other:?}"
            ))),
        }
    }
}

/// How unknown or duplicate fields in a body are treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

/// The representation a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Json,
    Yaml,
    /// `meta.k8s.io` Table in this version (`v1` or `v1beta1`).
    Table(&'static str),
    /// `meta.k8s.io` PartialObjectMetadata(List) in this version.
    Metadata(&'static str),
}

/// One entry of an Accept header.
struct MediaType<'a> {
    essence: &'a str,
    params: Vec<(&'a str, &'a str)>,
}

fn media_types(accept: &str) -> Vec<MediaType<'_>> {
    accept
        .split(',')
        .map(|entry| {
            let mut parts = entry.split(';').map(str::trim);
            let essence = parts.next().unwrap_or_default();
            let params = parts
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.trim(), v.trim()))
                .collect();
            MediaType { essence, params }
        })
        .collect()
}

impl MediaType<'_> {
    fn param(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

/// Picks the response representation from the Accept header (first acceptable entry wins).
pub fn negotiate(accept: Option<&str>) -> ApiResult<Output> {
    let accept = accept.unwrap_or("").trim();
    if accept.is_empty() {
        return Ok(Output::Json);
    }
    for media in media_types(accept) {
        let json_like = matches!(media.essence, "application/json" | "*/*" | "application/*");
        match media.param("as") {
            Some(as_kind) if media.essence == "application/json" => {
                if media.param("g") != Some("meta.k8s.io") {
                    continue;
                }
                let version = match media.param("v") {
                    Some("v1") => "v1",
                    Some("v1beta1") => "v1beta1",
                    _ => continue,
                };
                match as_kind {
                    "Table" => return Ok(Output::Table(version)),
                    "PartialObjectMetadata" | "PartialObjectMetadataList" => {
                        return Ok(Output::Metadata(version));
                    }
                    _ => continue,
                }
            }
            Some(_) => continue,
            None if json_like => return Ok(Output::Json),
            None if media.essence == "application/yaml" => return Ok(Output::Yaml),
            None => continue,
        }
    }
    Err(ApiError::not_acceptable(accept))
}

/// A decoded request body.
#[derive(Debug)]
pub struct Body {
    pub value: Value,
    /// Paths of fields given more than once (the last one wins).
    pub duplicates: Vec<String>,
}

/// The body formats a request may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Yaml,
    Protobuf,
}

/// Maps a Content-Type to a body format (missing → JSON); others are a 415.
pub fn body_format(content_type: Option<&str>) -> ApiResult<BodyFormat> {
    let essence = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "" | "application/json" | "*/*" | "text/json" => Ok(BodyFormat::Json),
        "application/yaml"
        | "application/x-yaml"
        | "text/yaml"
        | "application/apply-patch+yaml" => Ok(BodyFormat::Yaml),
        "application/vnd.kubernetes.protobuf" => Ok(BodyFormat::Protobuf),
        _ => Err(ApiError::unsupported_media_type(content_type.unwrap_or(""))),
    }
}

/// Decodes a body: malformed input is a 400 naming the problem.
pub fn decode(format: BodyFormat, bytes: &[u8]) -> ApiResult<Body> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let duplicates = RefCell::new(Vec::new());
    let seed = ValueSeed {
        path: String::new(),
        duplicates: &duplicates,
    };
    let value = match format {
        BodyFormat::Json => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let value = seed
                .deserialize(&mut de)
                .map_err(|e| ApiError::bad_request(format!("json: {e}")))?;
            de.end()
                .map_err(|e| ApiError::bad_request(format!("json: {e}")))?;
            value
        }
        BodyFormat::Yaml => {
            let de = serde_norway::Deserializer::from_slice(bytes);
            seed.deserialize(de)
                .map_err(|e| ApiError::bad_request(format!("yaml: {e}")))?
        }
        BodyFormat::Protobuf => protobuf::decode(bytes)?,
    };
    Ok(Body {
        value,
        duplicates: duplicates.into_inner(),
    })
}

/// Builds a `Value` while noting duplicate object keys.
struct ValueSeed<'a> {
    path: String,
    duplicates: &'a RefCell<Vec<String>>,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let child = ValueSeed {
                path: format!("{}[{}]", self.path, items.len()),
                duplicates: self.duplicates,
            };
            match seq.next_element_seed(child)? {
                Some(v) => items.push(v),
                None => break,
            }
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{}", self.path, key)
            };
            let child = ValueSeed {
                path: path.clone(),
                duplicates: self.duplicates,
            };
            let value = map.next_value_seed(child)?;
            if out.insert(key, value).is_some() {
                self.duplicates.borrow_mut().push(path);
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str) -> Target {
        match route(path).unwrap() {
            Route::Resource(t) => t,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn routes_resources_objects_and_subresources() {
        let t = target("/api/v1/namespaces/default/pods/web/status");
        assert_eq!(
            (
                t.resource.plural,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.subresource.as_deref()
            ),
            ("pods", Some("default"), Some("web"), Some("status"))
        );
        let t = target("/api/v1/namespaces/demo");
        assert_eq!(
            (t.resource.plural, t.namespace, t.name.as_deref()),
            ("namespaces", None, Some("demo"))
        );
        let t = target("/api/v1/namespaces/demo/status");
        assert_eq!(
            (
                t.resource.plural,
                t.name.as_deref(),
                t.subresource.as_deref()
            ),
            ("namespaces", Some("demo"), Some("status"))
        );
        let t = target("/api/v1/pods");
        assert_eq!(
            (t.resource.plural, t.namespace, t.name),
            ("pods", None, None)
        );
        let t = target("/apis/apps/v1/watch/namespaces/x/deployments");
        assert!(t.watch_path);
        assert_eq!(t.resource.kind, "Deployment");
        let t = target("/api/v1/nodes/n1");
        assert_eq!(t.name.as_deref(), Some("n1"));
        assert!(matches!(
            route("/apis/apps/v1").unwrap(),
            Route::GroupVersion(_, _)
        ));
        assert!(matches!(route("/apis/apps").unwrap(), Route::Group(_)));
        for bad in [
            "/api/v2/pods",
            "/apis/apps/v1/foos",
            "/api/v1/pods/x",
            "/api/v1/namespaces/d/pods/x/bogus",
            "/apis/nope/v1",
            "/api/v1/namespaces/d/pods/x/y/z",
        ] {
            assert_eq!(route(bad).unwrap_err().code, 404, "{bad}");
        }
    }

    #[test]
    fn negotiates_tables_and_json() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(Some(kubectl)).unwrap(), Output::Table("v1"));
        assert_eq!(
            negotiate(Some("application/vnd.kubernetes.protobuf,application/json")).unwrap(),
            Output::Json
        );
        assert_eq!(negotiate(None).unwrap(), Output::Json);
        assert_eq!(negotiate(Some("application/yaml")).unwrap(), Output::Yaml);
        assert_eq!(
            negotiate(Some("application/vnd.kubernetes.protobuf"))
                .unwrap_err()
                .code,
            406
        );
    }

    #[test]
    fn decodes_json_and_yaml_and_reports_duplicates() {
        let body = decode(
            BodyFormat::Json,
            br#"{"a": 1, "b": {"c": 1, "c": 2}, "a": 3}"#,
        )
        .unwrap();
        assert_eq!(body.value["a"], 3);
        assert_eq!(body.duplicates, vec!["b.c".to_string(), "a".to_string()]);
        let body = decode(BodyFormat::Yaml, b"kind: Pod\nmetadata:\n  name: x\n").unwrap();
        assert_eq!(body.value["metadata"]["name"], "x");
        assert_eq!(
            decode(BodyFormat::Json, b"{not json").unwrap_err().code,
            400
        );
        assert_eq!(
            decode(BodyFormat::Json, b"{} trailing").unwrap_err().code,
            400
        );
        assert_eq!(decode(BodyFormat::Yaml, b"a: [").unwrap_err().code, 400);
        assert_eq!(body_format(Some("text/plain")).unwrap_err().code, 415);
        let deep = "[".repeat(10_000);
        assert_eq!(
            decode(BodyFormat::Json, deep.as_bytes()).unwrap_err().code,
            400
        );
    }
}
