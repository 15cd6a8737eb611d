//! API errors and their wire form, the `meta.k8s.io/v1` `Status` object.
//!
//! Every failure a client can see is an [`ApiError`]: it carries the HTTP code, the `reason`
//! clients branch on (kubectl prints `Error from server (<reason>): <message>`), and the
//! `details` (kind/name, and per-field `causes` for `Invalid`).
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::validation::FieldError;
use crate::store::StoreError;

/// One `details.causes` entry of a Status.
#[derive(Clone, Debug, PartialEq)]
pub struct Cause {
    /// Machine-readable reason, e.g. `FieldValueInvalid`.
    pub reason: String,
    pub message: String,
    /// The field path, e.g. `spec.replicas`.
    pub field: String,
}

/// An error answered to the client as a `Status` object.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `details` (boxed: errors travel in `Result`s on every request path).
    pub details: Box<Details>,
}

/// The `details` of a Status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Details {
    /// `details.group`, `details.kind` (the resource's plural, as Kubernetes does) and `details.name`.
    pub group: String,
    pub kind: String,
    pub name: String,
    pub causes: Vec<Cause>,
    /// `details.retryAfterSeconds`.
    pub retry_after: Option<u32>,
}

/// What an error is about: used to fill `details` and the `<kind> "<name>"` message prefix.
#[derive(Clone, Copy, Debug, Default)]
pub struct Subject<'a> {
    pub group: &'a str,
    /// The resource (plural) name, e.g. `pods`, or `pods.apps` style qualified names in messages.
    pub resource: &'a str,
    pub name: &'a str,
}

impl Subject<'_> {
    /// `pods` or `deployments.apps`, as Kubernetes writes resources in messages.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: Box::default(),
        }
    }

    fn about(mut self, subject: Subject<'_>) -> Self {
        self.details.group = subject.group.to_string();
        self.details.kind = subject.resource.to_string();
        self.details.name = subject.name.to_string();
        self
    }

    /// 400: the request itself is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    /// 401: no or a wrong bearer token.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }
    /// 403 with a message naming the subject.
    pub fn forbidden(subject: Subject<'_>, why: &str) -> Self {
        let message = format!(
            "{} \"{}\" is forbidden: {}",
            subject.qualified(),
            subject.name,
            why
        );
        Self::new(403, "Forbidden", message).about(subject)
    }
    /// 404 for an object.
    pub fn not_found(subject: Subject<'_>) -> Self {
        let message = format!("{} \"{}\" not found", subject.qualified(), subject.name);
        Self::new(404, "NotFound", message).about(subject)
    }
    /// 404 for a path the server does not serve.
    pub fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }
    /// 405: the verb is not supported on this path.
    pub fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }
    /// 406: no acceptable response media type.
    pub fn not_acceptable(accept: &str) -> Self {
        Self::new(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: application/json, application/yaml, application/json;as=Table;v=v1;g=meta.k8s.io (asked for {accept})"
            ),
        )
    }
    /// 409 AlreadyExists.
    pub fn already_exists(subject: Subject<'_>) -> Self {
        let message = format!(
            "{} \"{}\" already exists",
            subject.qualified(),
            subject.name
        );
        Self::new(409, "AlreadyExists", message).about(subject)
    }
    /// 409 Conflict: a stale resourceVersion or a failed precondition.
    pub fn conflict(subject: Subject<'_>, why: &str) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{}\": {}",
            subject.qualified(),
            subject.name,
            why
        );
        Self::new(409, "Conflict", message).about(subject)
    }
    /// 409 Conflict for a stale resourceVersion.
    pub fn stale(subject: Subject<'_>) -> Self {
        Self::conflict(
            subject,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }
    /// 410 Expired: a resourceVersion or continue token too old.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }
    /// 413: body over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }
    /// 415: a Content-Type the server can't decode.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type:?})"
            ),
        )
    }
    /// 422 Invalid with per-field causes.
    pub fn invalid(kind: &str, subject: Subject<'_>, causes: Vec<Cause>) -> Self {
        let summary: Vec<String> = causes
            .iter()
            .map(|c| {
                if c.field.is_empty() {
                    c.message.clone()
                } else {
                    format!("{}: {}", c.field, c.message)
                }
            })
            .collect();
        let message = format!(
            "{} \"{}\" is invalid: {}",
            kind,
            subject.name,
            join_causes(&summary)
        );
        let mut err = Self::new(422, "Invalid", message).about(subject);
        err.details.kind = kind.to_string();
        err.details.causes = causes;
        err
    }
    /// 422 from the validation module's field errors.
    pub fn from_field_errors(kind: &str, subject: Subject<'_>, errors: &[FieldError]) -> Self {
        let causes = errors.iter().map(cause_of).collect();
        Self::invalid(kind, subject, causes)
    }
    /// 422 with one cause.
    pub fn invalid_field(
        kind: &str,
        subject: Subject<'_>,
        field: &str,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Self::invalid(
            kind,
            subject,
            vec![Cause {
                reason: reason.to_string(),
                message: message.into(),
                field: field.to_string(),
            }],
        )
    }
    /// 500: a bug or a backend failure.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }
    /// 503: the store is unreachable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }
    /// 504 for a watch or list at a revision the store hasn't reached.
    pub fn too_large_resource_version(requested: i64, current: i64) -> Self {
        let mut err = Self::new(
            504,
            "Timeout",
            format!("Too large resource version: {requested}, current: {current}"),
        );
        err.details.causes = vec![Cause {
            reason: "ResourceVersionTooLarge".into(),
            message: "Too large resource version".into(),
            field: String::new(),
        }];
        err.details.retry_after = Some(1);
        err
    }

    /// Maps a store failure about `subject` to the API error a client expects.
    pub fn from_store(err: StoreError, subject: Subject<'_>) -> Self {
        match err {
            StoreError::AlreadyExists(_) => Self::already_exists(subject),
            StoreError::NotFound(_) => Self::not_found(subject),
            StoreError::Conflict { .. } => Self::stale(subject),
            StoreError::Compacted {
                requested,
                compacted,
            } => Self::expired(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            StoreError::FutureRevision { requested, current } => {
                Self::too_large_resource_version(requested, current)
            }
            StoreError::Backend(message) => {
                Self::unavailable(format!("storage backend failure: {message}"))
            }
        }
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        let mut details = serde_json::Map::new();
        if !self.details.name.is_empty() {
            details.insert("name".into(), json!(self.details.name));
        }
        if !self.details.group.is_empty() {
            details.insert("group".into(), json!(self.details.group));
        }
        if !self.details.kind.is_empty() {
            details.insert("kind".into(), json!(self.details.kind));
        }
        if !self.details.causes.is_empty() {
            let causes: Vec<Value> = self
                .details
                .causes
                .iter()
                .map(|c| {
                    let mut cause = json!({"reason": c.reason, "message": c.message});
                    if !c.field.is_empty() {
                        cause["field"] = json!(c.field);
                    }
                    cause
                })
                .collect();
            details.insert("causes".into(), Value::Array(causes));
        }
        if let Some(seconds) = self.details.retry_after {
            details.insert("retryAfterSeconds".into(), json!(seconds));
        }
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

fn join_causes(summary: &[String]) -> String {
    match summary.len() {
        0 => "invalid object".to_string(),
        1 => summary[0].clone(),
        _ => format!("[{}]", summary.join(", ")),
    }
}

fn cause_of(error: &FieldError) -> Cause {
    Cause {
        reason: error.error_type.reason().to_string(),
        message: error.body(),
        field: error.field.clone(),
    }
}

/// A `Status` of success, answered by deletes of kinds that do not return the object.
pub fn success_status(subject: Subject<'_>, uid: &str) -> Value {
    let mut details = json!({"name": subject.name, "kind": subject.resource});
    if !subject.group.is_empty() {
        details["group"] = json!(subject.group);
    }
    if !uid.is_empty() {
        details["uid"] = json!(uid);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        let mut response = (
            code,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if let Some(seconds) = self.details.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_the_resource_like_kubernetes() {
        let err = ApiError::not_found(Subject {
            group: "apps",
            resource: "deployments",
            name: "web",
        });
        let status = err.to_status();
        assert_eq!(status["message"], "deployments.apps \"web\" not found");
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(status["code"], 404);
        assert_eq!(status["details"]["kind"], "deployments");
        assert_eq!(status["details"]["group"], "apps");
    }

    #[test]
    fn invalid_carries_causes() {
        let err = ApiError::invalid_field(
            "Pod",
            Subject {
                group: "",
                resource: "pods",
                name: "p",
            },
            "metadata.name",
            "FieldValueRequired",
            "Required value",
        );
        let status = err.to_status();
        assert_eq!(status["code"], 422);
        assert_eq!(status["details"]["kind"], "Pod");
        assert_eq!(status["details"]["causes"][0]["field"], "metadata.name");
        assert_eq!(
            status["message"],
            "Pod \"p\" is invalid: metadata.name: Required value"
        );
    }
}
