//! Field validation of API objects before they are stored: what Kubernetes' `ValidateX` and
//! `ValidateXUpdate` functions check for the kinds Keel serves, with Kubernetes' field paths
//! and messages, and strict decoding's unknown-field detection (duplicate fields are found
//! while the body is parsed, in `request`).
//!
//! Objects are validated as they will be stored, so run [`super::defaults::apply_defaults`]
//! first. Fields that defaulting fills (`restartPolicy`, a port's `protocol`, ...) are checked
//! when present and accepted when absent.
//!
//! Validation decodes the object into its `k8s-openapi` type first; a value of the wrong JSON
//! type (a string `replicas`, bad base64 in a Secret) is reported as one `Invalid` error at
//! its path, and nothing else is checked.
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, Event, HTTPGetAction, LifecycleHandler, Namespace, Node, Pod,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret, Service, ServiceSpec,
    TCPSocketAction, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::selectors;

/// The kind of a [`FieldError`], as in `k8s.io/apimachinery/pkg/util/validation/field`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldErrorType {
    /// A required field is missing or empty.
    Required,
    /// The value is malformed or out of range.
    Invalid,
    /// The value is not one of a fixed set.
    NotSupported,
    /// The value repeats one that must be unique.
    Duplicate,
    /// The value is longer than allowed.
    TooLong,
    /// The field may not be set (here, now, or to this).
    Forbidden,
    /// The list has more items than allowed.
    TooMany,
    /// The value refers to something that does not exist (e.g. a volume mount's volume).
    NotFound,
}

impl FieldErrorType {
    /// The `details.causes[].reason` of the 422 Status.
    pub fn reason(&self) -> &'static str {
        match self {
            FieldErrorType::Required => "FieldValueRequired",
            FieldErrorType::Invalid => "FieldValueInvalid",
            FieldErrorType::NotSupported => "FieldValueNotSupported",
            FieldErrorType::Duplicate => "FieldValueDuplicate",
            FieldErrorType::TooLong => "FieldValueTooLong",
            FieldErrorType::Forbidden => "FieldValueForbidden",
            FieldErrorType::TooMany => "FieldValueTooMany",
            FieldErrorType::NotFound => "FieldValueNotFound",
        }
    }

    /// The words Kubernetes starts the message with (`Required value`, `Invalid value`, ...).
    pub fn description(&self) -> &'static str {
        match self {
            FieldErrorType::Required => "Required value",
            FieldErrorType::Invalid => "Invalid value",
            FieldErrorType::NotSupported => "Unsupported value",
            FieldErrorType::Duplicate => "Duplicate value",
            FieldErrorType::TooLong => "Too long",
            FieldErrorType::Forbidden => "Forbidden",
            FieldErrorType::TooMany => "Too many",
            FieldErrorType::NotFound => "Not found",
        }
    }
}

/// One problem with one field.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    /// The field path, e.g. `metadata.name`, `spec.containers[0].image`, `data[key]`.
    pub field: String,
    pub error_type: FieldErrorType,
    /// The detail, without the type's words or the value: "must be no more than 63 characters".
    pub message: String,
    /// The offending value, for types that show it (not Required, Forbidden, TooLong).
    pub bad_value: Option<Value>,
}

impl FieldError {
    pub fn required(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(field, FieldErrorType::Required, message, None)
    }

    pub fn invalid(
        field: impl Into<String>,
        value: impl Into<Value>,
        message: impl Into<String>,
    ) -> Self {
        Self::new(field, FieldErrorType::Invalid, message, Some(value.into()))
    }

    /// The value is not one of `supported`.
    pub fn not_supported(
        field: impl Into<String>,
        value: impl Into<Value>,
        supported: &[&str],
    ) -> Self {
        let quoted: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        let message = format!("supported values: {}", quoted.join(", "));
        Self::new(
            field,
            FieldErrorType::NotSupported,
            message,
            Some(value.into()),
        )
    }

    pub fn duplicate(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Self::new(field, FieldErrorType::Duplicate, "", Some(value.into()))
    }

    /// Longer than `max` bytes.
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        let unit = if max == 1 { "byte" } else { "bytes" };
        Self::new(
            field,
            FieldErrorType::TooLong,
            format!("may not be more than {max} {unit}"),
            None,
        )
    }

    pub fn forbidden(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(field, FieldErrorType::Forbidden, message, None)
    }

    /// `actual` items where at most `max` are allowed.
    pub fn too_many(field: impl Into<String>, actual: usize, max: usize) -> Self {
        Self::new(
            field,
            FieldErrorType::TooMany,
            format!("must have at most {max} items"),
            Some(actual.into()),
        )
    }

    pub fn not_found(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Self::new(field, FieldErrorType::NotFound, "", Some(value.into()))
    }

    fn new(
        field: impl Into<String>,
        error_type: FieldErrorType,
        message: impl Into<String>,
        bad_value: Option<Value>,
    ) -> Self {
        FieldError {
            field: field.into(),
            error_type,
            message: message.into(),
            bad_value,
        }
    }

    /// The message as Kubernetes words a cause (`ErrorBody`): `Required value`,
    /// `Invalid value: "Foo": a lowercase RFC 1123 ...`, `Unsupported value: "x": supported values: ...`.
    pub fn body(&self) -> String {
        let mut body = self.error_type.description().to_string();
        if let Some(value) = &self.bad_value {
            body.push_str(": ");
            match value {
                Value::String(s) => body.push_str(&format!("{s:?}")),
                other => body.push_str(&other.to_string()),
            }
        }
        if !self.message.is_empty() {
            body.push_str(": ");
            body.push_str(&self.message);
        }
        body
    }
}

impl fmt::Display for FieldError {
    /// `<field>: <body>`, one item of the `<Kind> "<name>" is invalid: [...]` message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.body())
        } else {
            write!(f, "{}: {}", self.field, self.body())
        }
    }
}

type Errors = Vec<FieldError>;

const FIELD_IMMUTABLE: &str = "field is immutable";
const IMMUTABLE_WHEN_SET: &str = "field is immutable when `immutable` is set";
const NON_NEGATIVE: &str = "must be greater than or equal to 0";
const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
/// `TotalAnnotationSizeLimitB`.
const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;
/// `MaxSecretSize`, also the ConfigMap limit.
const MAX_DATA_BYTES: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Entry points

/// Validates an object of `kind` for create (`old` is `None`) or update (`old` is the stored
/// object: immutable fields are checked against it). An empty result means valid.
pub fn validate(kind: &str, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    match kind {
        "Pod" => validate_typed(kind, obj, old, validate_pod, validate_pod_update),
        "Deployment" => validate_typed(
            kind,
            obj,
            old,
            validate_deployment,
            validate_deployment_update,
        ),
        "ReplicaSet" => validate_typed(
            kind,
            obj,
            old,
            validate_replica_set,
            validate_replica_set_update,
        ),
        "Service" => validate_typed(kind, obj, old, validate_service, validate_service_update),
        "ConfigMap" => validate_typed(
            kind,
            obj,
            old,
            validate_config_map,
            validate_config_map_update,
        ),
        "Secret" => validate_typed(kind, obj, old, validate_secret, validate_secret_update),
        "EndpointSlice" => validate_typed(
            kind,
            obj,
            old,
            validate_endpoint_slice,
            validate_endpoint_slice_update,
        ),
        "Node" => validate_typed(kind, obj, old, validate_node, validate_node_update),
        "Namespace" => validate_typed(kind, obj, old, validate_namespace, no_update_rules),
        "Event" => validate_typed(kind, obj, old, validate_event, no_update_rules),
        "Lease" => validate_typed(kind, obj, old, validate_lease, no_update_rules),
        _ => {
            let null = Value::Null;
            let meta = obj.get("metadata").unwrap_or(&null);
            let mut errors = validate_object_meta(kind, meta);
            if let Some(old_meta) = old.and_then(|o| o.get("metadata")) {
                errors.extend(validate_object_meta_update(meta, old_meta));
            }
            errors
        }
    }
}

/// Checks `metadata` of an object of `kind` (given as the `metadata` value): name and
/// generateName (per-kind name rules; an empty name is accepted when generateName is set,
/// as the server generates it), namespace, labels, annotations, finalizers, ownerReferences.
pub fn validate_object_meta(kind: &str, meta: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match decode_at::<ObjectMeta>(meta, "metadata") {
        Ok(meta) => object_meta(kind, &meta, "metadata", &mut errors),
        Err(error) => errors.push(error),
    }
    errors
}

/// Checks that an update keeps `metadata.name`, `namespace`, `uid` and `creationTimestamp`
/// (an empty uid or creationTimestamp in the new object is accepted: the server carries the
/// stored ones over).
pub fn validate_object_meta_update(new_meta: &Value, old_meta: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let (Ok(new), Ok(old)) = (
        decode_at::<ObjectMeta>(new_meta, "metadata"),
        decode_at::<ObjectMeta>(old_meta, "metadata"),
    ) {
        object_meta_update(&new, &old, &mut errors);
    }
    errors
}

/// Why `name` is not a valid name for an object of `kind` (empty if it is). With `prefix`, the
/// rules for a `generateName` (a trailing `-` is fine).
pub fn name_errors(kind: &str, name: &str, prefix: bool) -> Vec<String> {
    let name = if prefix && name.ends_with('-') {
        format!("{}a", &name[..name.len() - 1])
    } else {
        name.to_string()
    };
    match kind {
        "Namespace" => is_dns1123_label(&name),
        "Service" => is_dns1035_label(&name),
        _ => is_dns1123_subdomain(&name),
    }
}

fn validate_typed<T>(
    kind: &str,
    obj: &Value,
    old: Option<&Value>,
    create: fn(&T, &Value, &mut Errors),
    update: fn(&T, &T, &mut Errors),
) -> Vec<FieldError>
where
    T: DeserializeOwned + k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    let new: T = match decode_at(obj, "") {
        Ok(new) => new,
        Err(error) => return vec![error],
    };
    let mut errors = Vec::new();
    object_meta(kind, new.metadata(), "metadata", &mut errors);
    create(&new, obj, &mut errors);
    if let Some(old) = old.and_then(|old| decode_at::<T>(old, "").ok()) {
        object_meta_update(new.metadata(), old.metadata(), &mut errors);
        update(&new, &old, &mut errors);
    }
    errors
}

fn no_update_rules<T>(_new: &T, _old: &T, _errors: &mut Errors) {}

/// Decodes `value` into `T`, or the `Invalid` error at the path of the first mistyped field.
fn decode_at<T: DeserializeOwned>(value: &Value, prefix: &str) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let mut path = prefix.to_string();
        let mut bad = Some(value);
        for segment in error.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => {
                    path.push_str(&format!("[{index}]"));
                    bad = bad.and_then(|v| v.get(index));
                }
                serde_path_to_error::Segment::Map { key } => {
                    path = join(&path, key);
                    bad = bad.and_then(|v| v.get(key));
                }
                _ => bad = None,
            }
        }
        FieldError {
            field: path,
            error_type: FieldErrorType::Invalid,
            message: error.into_inner().to_string(),
            bad_value: bad.cloned(),
        }
    })
}

fn join(path: &str, child: &str) -> String {
    if path.is_empty() {
        child.to_string()
    } else {
        format!("{path}.{child}")
    }
}

fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Strict decoding

/// The fields of `obj` that an object of `kind` does not have, as paths like
/// `spec.containers[0].imagee`, for `fieldValidation=Strict` (an unknown field set to `null`
/// is not reported). Empty for kinds Keel does not know and for objects that don't decode
/// ([`validate`] reports those).
pub fn unknown_fields(kind: &str, obj: &Value) -> Vec<String> {
    let known = match kind {
        "Pod" => round_trip::<Pod>(obj),
        "Deployment" => round_trip::<Deployment>(obj),
        "ReplicaSet" => round_trip::<ReplicaSet>(obj),
        "Service" => round_trip::<Service>(obj),
        "ConfigMap" => round_trip::<ConfigMap>(obj),
        "Secret" => round_trip::<Secret>(obj),
        "EndpointSlice" => round_trip::<EndpointSlice>(obj),
        "Node" => round_trip::<Node>(obj),
        "Namespace" => round_trip::<Namespace>(obj),
        "Event" => round_trip::<Event>(obj),
        "Lease" => round_trip::<Lease>(obj),
        _ => None,
    };
    let mut unknown = Vec::new();
    if let Some(known) = known {
        collect_unknown(obj, &known, "", &mut unknown);
    }
    unknown
}

/// The object as its typed struct sees it: decoding drops unknown fields, so a key present in
/// `obj` but missing here is unknown (k8s-openapi keeps every present, non-null known field).
fn round_trip<T: DeserializeOwned + Serialize>(obj: &Value) -> Option<Value> {
    let typed: T = serde_json::from_value(obj.clone()).ok()?;
    serde_json::to_value(typed).ok()
}

fn collect_unknown(original: &Value, known: &Value, path: &str, unknown: &mut Vec<String>) {
    match (original, known) {
        (Value::Object(original), Value::Object(known)) => {
            for (key, value) in original {
                let field = join(path, key);
                match known.get(key) {
                    Some(known) => collect_unknown(value, known, &field, unknown),
                    None if value.is_null() => {}
                    None => unknown.push(field),
                }
            }
        }
        (Value::Array(original), Value::Array(known)) => {
            for (i, (value, known)) in original.iter().zip(known).enumerate() {
                collect_unknown(value, known, &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Name and value formats (k8s.io/apimachinery/pkg/util/validation)

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const CONFIG_KEY_FMT: &str = "[-._a-zA-Z0-9]+";
const CONFIG_KEY_MSG: &str =
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'";
const PERCENT_FMT: &str = "[0-9]+%";
const PERCENT_MSG: &str =
    "a valid percent string must be a numeric string followed by an ending '%'";

/// Kubernetes' `RegexError`: the message, examples and the regex.
fn regex_error(message: &str, format: &str, examples: &[&str]) -> String {
    let mut text = format!("{message} (");
    if !examples.is_empty() {
        text.push_str("e.g. ");
        for (i, example) in examples.iter().enumerate() {
            if i > 0 {
                text.push_str(" or ");
            }
            text.push_str(&format!("'{example}', "));
        }
    }
    text.push_str(&format!("regex used for validation is '{format}')"));
    text
}

fn max_len_error(max: usize) -> String {
    format!("must be no more than {max} characters")
}

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// Matches `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
fn matches_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && is_lower_alnum(b[0])
        && is_lower_alnum(b[b.len() - 1])
        && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
}

fn matches_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(matches_dns1123_label)
}

/// Matches `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn matches_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Why `value` is not a DNS-1123 label (≤ 63 characters), e.g. a Namespace name.
pub fn is_dns1123_label(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 63 {
        errors.push(max_len_error(63));
    }
    if !matches_dns1123_label(value) {
        if matches_dns1123_subdomain(value) {
            errors.push("must not contain dots".to_string());
        } else {
            errors.push(regex_error(
                DNS1123_LABEL_MSG,
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errors
}

/// Why `value` is not a DNS-1123 subdomain (≤ 253 characters), the name rule of most kinds.
pub fn is_dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 253 {
        errors.push(max_len_error(253));
    }
    if !matches_dns1123_subdomain(value) {
        errors.push(regex_error(
            DNS1123_SUBDOMAIN_MSG,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errors
}

/// Why `value` is not a DNS-1035 label (starts with a letter, ≤ 63), the Service name rule.
pub fn is_dns1035_label(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 63 {
        errors.push(max_len_error(63));
    }
    if !(matches_dns1123_label(value) && value.as_bytes()[0].is_ascii_lowercase()) {
        errors.push(regex_error(
            DNS1035_LABEL_MSG,
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        ));
    }
    errors
}

/// Why `value` is not a qualified name (`[prefix/]name`), the rule of label and annotation
/// keys and finalizers.
pub fn is_qualified_name(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errors.push("prefix part must be non-empty".to_string());
            } else {
                errors.extend(
                    is_dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            errors.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_MSG, QUALIFIED_NAME_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errors;
        }
    };
    if name.is_empty() {
        errors.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errors.push(format!("name part {}", max_len_error(63)));
    }
    if !matches_qualified_name_part(name) {
        errors.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_MSG,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errors
}

/// Why `value` is not a label value (≤ 63, possibly empty).
pub fn is_valid_label_value(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 63 {
        errors.push(max_len_error(63));
    }
    if !(value.is_empty() || matches_qualified_name_part(value)) {
        errors.push(regex_error(
            LABEL_VALUE_MSG,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errors
}

/// Why `value` is not a ConfigMap or Secret key.
pub fn is_config_map_key(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 253 {
        errors.push(max_len_error(253));
    }
    if value.is_empty()
        || !value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        errors.push(regex_error(
            CONFIG_KEY_MSG,
            CONFIG_KEY_FMT,
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    if value == "." {
        errors.push("must not be '.'".to_string());
    } else if value == ".." {
        errors.push("must not be '..'".to_string());
    } else if value.starts_with("..") {
        errors.push("must not start with '..'".to_string());
    }
    errors
}

/// Why `value` is not an IANA service name (a named container port).
fn is_valid_port_name(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 15 {
        errors.push(max_len_error(15));
    }
    if value.is_empty() || !value.bytes().all(|c| is_lower_alnum(c) || c == b'-') {
        errors.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_string(),
        );
    }
    if !value.bytes().any(|c| c.is_ascii_lowercase()) {
        errors.push("must contain at least one letter (a-z)".to_string());
    }
    if value.contains("--") {
        errors.push("must not contain consecutive hyphens".to_string());
    }
    if value.starts_with('-') || value.ends_with('-') {
        errors.push("must not begin or end with a hyphen".to_string());
    }
    errors
}

fn is_valid_port(port: i32) -> bool {
    (1..=65535).contains(&port)
}

fn is_valid_percent(value: &str) -> bool {
    value
        .strip_suffix('%')
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()))
}

/// Whether `value` is an `a.b.c.d/n` or IPv6 CIDR.
fn is_cidr(value: &str) -> bool {
    let Some((ip, bits)) = value.split_once('/') else {
        return false;
    };
    let Ok(bits) = bits.parse::<u8>() else {
        return false;
    };
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => bits <= 32,
        Ok(IpAddr::V6(_)) => bits <= 128,
        Err(_) => false,
    }
}

fn push_all(errors: &mut Errors, field: &str, value: &str, messages: Vec<String>) {
    errors.extend(
        messages
            .into_iter()
            .map(|m| FieldError::invalid(field, value, m)),
    );
}

fn not_supported(errors: &mut Errors, field: &str, value: Option<&str>, supported: &[&str]) {
    if let Some(value) = value
        && !supported.contains(&value)
    {
        errors.push(FieldError::not_supported(field, value, supported));
    }
}

fn non_negative(errors: &mut Errors, field: &str, value: Option<i64>) {
    if let Some(value) = value.filter(|v| *v < 0) {
        errors.push(FieldError::invalid(field, value, NON_NEGATIVE));
    }
}

// ---------------------------------------------------------------------------------------------
// Resource quantities

/// A parsed resource quantity (`100m`, `1Gi`, `0.5`, `1e3`), exact: sign × digits × 10^exp10 × 2^exp2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedQuantity {
    negative: bool,
    digits: u128,
    exp10: i32,
    exp2: u32,
}

/// Kubernetes' message for a malformed quantity.
pub const QUANTITY_FORMAT_ERROR: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

impl ParsedQuantity {
    /// Parses the Kubernetes quantity syntax: a decimal number and one of the suffixes
    /// `n u m k M G T P E` (decimal SI), `Ki Mi Gi Ti Pi Ei` (binary SI) or `e<n>`/`E<n>`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let format_error = || QUANTITY_FORMAT_ERROR.to_string();
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(format_error());
        }
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let all_digits = format!("{whole}{fraction}");
        let significant = all_digits.trim_start_matches('0');
        if significant.len() > 38 {
            return Err("quantity is too large".to_string());
        }
        let digits = if significant.is_empty() {
            0
        } else {
            significant.parse::<u128>().map_err(|_| format_error())?
        };
        let mut exp10 = -(fraction.len() as i32);
        let mut exp2 = 0;
        match suffix {
            "" => {}
            "n" => exp10 -= 9,
            "u" => exp10 -= 6,
            "m" => exp10 -= 3,
            "k" => exp10 += 3,
            "M" => exp10 += 6,
            "G" => exp10 += 9,
            "T" => exp10 += 12,
            "P" => exp10 += 15,
            "E" => exp10 += 18,
            "Ki" => exp2 = 10,
            "Mi" => exp2 = 20,
            "Gi" => exp2 = 30,
            "Ti" => exp2 = 40,
            "Pi" => exp2 = 50,
            "Ei" => exp2 = 60,
            exponent if exponent.starts_with(['e', 'E']) => {
                let value = &exponent[1..];
                let unsigned = value.strip_prefix(['+', '-']).unwrap_or(value);
                if unsigned.is_empty() || !unsigned.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(format_error());
                }
                exp10 += value.parse::<i32>().map_err(|_| format_error())?;
            }
            _ => return Err(format_error()),
        }
        Ok(ParsedQuantity {
            negative: negative && digits != 0,
            digits,
            exp10,
            exp2,
        })
    }

    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// The value as a float (for scheduling arithmetic, not for comparisons at the edge).
    pub fn as_f64(&self) -> f64 {
        let magnitude = self.digits as f64 * 2f64.powi(self.exp2 as i32) * 10f64.powi(self.exp10);
        if self.negative { -magnitude } else { magnitude }
    }

    fn cmp_magnitude(&self, other: &Self) -> std::cmp::Ordering {
        let exact = || -> Option<std::cmp::Ordering> {
            let a = self.digits.checked_mul(1u128.checked_shl(self.exp2)?)?;
            let b = other.digits.checked_mul(1u128.checked_shl(other.exp2)?)?;
            let low = self.exp10.min(other.exp10);
            let a = a.checked_mul(10u128.checked_pow((self.exp10 - low) as u32)?)?;
            let b = b.checked_mul(10u128.checked_pow((other.exp10 - low) as u32)?)?;
            Some(a.cmp(&b))
        };
        exact().unwrap_or_else(|| {
            let (a, b) = (self.as_f64().abs(), other.as_f64().abs());
            a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal)
        })
    }
}

impl PartialOrd for ParsedQuantity {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ParsedQuantity {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self.negative, other.negative) {
            (false, true) => std::cmp::Ordering::Greater,
            (true, false) => std::cmp::Ordering::Less,
            (false, false) => self.cmp_magnitude(other),
            (true, true) => other.cmp_magnitude(self),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ObjectMeta

fn object_meta(kind: &str, meta: &ObjectMeta, path: &str, errors: &mut Errors) {
    let name = meta.name.as_deref().unwrap_or_default();
    let generate_name = meta.generate_name.as_deref().unwrap_or_default();
    if !generate_name.is_empty() {
        push_all(
            errors,
            &join(path, "generateName"),
            generate_name,
            name_errors(kind, generate_name, true),
        );
    }
    if name.is_empty() {
        if generate_name.is_empty() {
            errors.push(FieldError::required(
                join(path, "name"),
                "name or generateName is required",
            ));
        }
    } else {
        push_all(
            errors,
            &join(path, "name"),
            name,
            name_errors(kind, name, false),
        );
    }
    if let Some(namespace) = meta.namespace.as_deref().filter(|n| !n.is_empty()) {
        push_all(
            errors,
            &join(path, "namespace"),
            namespace,
            is_dns1123_label(namespace),
        );
    }
    template_meta(meta, path, errors);
    for (i, finalizer) in meta.finalizers.iter().flatten().enumerate() {
        push_all(
            errors,
            &format!("{path}.finalizers[{i}]"),
            finalizer,
            is_qualified_name(finalizer),
        );
    }
    owner_references(meta, path, errors);
}

/// The parts of `ObjectMeta` a pod template's metadata is held to: labels and annotations.
fn template_meta(meta: &ObjectMeta, path: &str, errors: &mut Errors) {
    if let Some(labels) = &meta.labels {
        labels_errors(labels, &join(path, "labels"), errors);
    }
    if let Some(annotations) = &meta.annotations {
        let field = join(path, "annotations");
        for key in annotations.keys() {
            push_all(errors, &field, key, is_qualified_name(&key.to_lowercase()));
        }
        let size: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > MAX_ANNOTATIONS_BYTES {
            errors.push(FieldError::too_long(field, MAX_ANNOTATIONS_BYTES));
        }
    }
}

fn labels_errors(labels: &BTreeMap<String, String>, field: &str, errors: &mut Errors) {
    for (key, value) in labels {
        push_all(errors, field, key, is_qualified_name(key));
        push_all(errors, field, value, is_valid_label_value(value));
    }
}

fn owner_references(meta: &ObjectMeta, path: &str, errors: &mut Errors) {
    let mut controllers = Vec::new();
    for (i, reference) in meta.owner_references.iter().flatten().enumerate() {
        let field = format!("{path}.ownerReferences[{i}]");
        for (name, value) in [
            ("apiVersion", &reference.api_version),
            ("kind", &reference.kind),
            ("name", &reference.name),
            ("uid", &reference.uid),
        ] {
            if value.is_empty() {
                errors.push(FieldError::invalid(
                    format!("{field}.{name}"),
                    "",
                    format!("{name} must not be empty"),
                ));
            }
        }
        if reference.controller == Some(true) {
            controllers.push(format!("{}/{}", reference.kind, reference.name));
        }
    }
    if controllers.len() > 1 {
        errors.push(FieldError::invalid(
            join(path, "ownerReferences"),
            json(&meta.owner_references),
            format!("Only one reference can have Controller set to true. Found \"true\" in references for {}", controllers.join(" and ")),
        ));
    }
}

fn object_meta_update(new: &ObjectMeta, old: &ObjectMeta, errors: &mut Errors) {
    let immutable =
        |errors: &mut Errors, field: &str, new: Option<&String>, old: Option<&String>| {
            if new.map(String::as_str).unwrap_or_default()
                != old.map(String::as_str).unwrap_or_default()
            {
                errors.push(FieldError::invalid(
                    field,
                    new.cloned().unwrap_or_default(),
                    FIELD_IMMUTABLE,
                ));
            }
        };
    immutable(
        errors,
        "metadata.name",
        new.name.as_ref(),
        old.name.as_ref(),
    );
    immutable(
        errors,
        "metadata.namespace",
        new.namespace.as_ref(),
        old.namespace.as_ref(),
    );
    if new.uid.as_deref().is_some_and(|uid| !uid.is_empty()) {
        immutable(errors, "metadata.uid", new.uid.as_ref(), old.uid.as_ref());
    }
    if let (Some(new_time), Some(old_time)) = (&new.creation_timestamp, &old.creation_timestamp)
        && new_time != old_time
    {
        errors.push(FieldError::invalid(
            "metadata.creationTimestamp",
            json(new_time),
            FIELD_IMMUTABLE,
        ));
    }
}

fn label_selector(selector: &LabelSelector, path: &str, errors: &mut Errors) {
    if let Some(labels) = &selector.match_labels {
        labels_errors(labels, &join(path, "matchLabels"), errors);
    }
    for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let field = format!("{path}.matchExpressions[{i}]");
        let values = requirement.values.as_deref().unwrap_or_default();
        match requirement.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => errors.push(FieldError::required(
                format!("{field}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => errors.push(FieldError::forbidden(
                format!("{field}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errors.push(FieldError::invalid(
                format!("{field}.operator"),
                other,
                "not a valid selector operator",
            )),
        }
        push_all(
            errors,
            &format!("{field}.key"),
            &requirement.key,
            is_qualified_name(&requirement.key),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Pod

const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const DNS_POLICIES: &[&str] = &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
const TERMINATION_MESSAGE_POLICIES: &[&str] = &["File", "FallbackToLogsOnError"];
const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

fn validate_pod(pod: &Pod, _raw: &Value, errors: &mut Errors) {
    let empty = PodSpec::default();
    pod_spec(pod.spec.as_ref().unwrap_or(&empty), "spec", errors);
}

fn pod_spec(spec: &PodSpec, path: &str, errors: &mut Errors) {
    let volumes = volumes(
        spec.volumes.as_deref().unwrap_or_default(),
        &join(path, "volumes"),
        errors,
    );
    let mut names = HashSet::new();
    if spec.containers.is_empty() {
        errors.push(FieldError::required(join(path, "containers"), ""));
    }
    for (i, container) in spec.containers.iter().enumerate() {
        self::container(
            container,
            &format!("{path}.containers[{i}]"),
            &volumes,
            &mut names,
            errors,
        );
    }
    for (i, container) in spec.init_containers.iter().flatten().enumerate() {
        self::container(
            container,
            &format!("{path}.initContainers[{i}]"),
            &volumes,
            &mut names,
            errors,
        );
    }
    match spec.restart_policy.as_deref() {
        Some("") => errors.push(FieldError::required(join(path, "restartPolicy"), "")),
        other => not_supported(
            errors,
            &join(path, "restartPolicy"),
            other,
            RESTART_POLICIES,
        ),
    }
    not_supported(
        errors,
        &join(path, "dnsPolicy"),
        spec.dns_policy.as_deref(),
        DNS_POLICIES,
    );
    if spec.dns_policy.as_deref() == Some("None") && spec.dns_config.is_none() {
        errors.push(FieldError::required(
            join(path, "dnsConfig"),
            "must provide `dnsConfig` when `dnsPolicy` is None",
        ));
    }
    if let Some(seconds) = spec
        .active_deadline_seconds
        .filter(|s| !(1..=i64::from(i32::MAX)).contains(s))
    {
        errors.push(FieldError::invalid(
            join(path, "activeDeadlineSeconds"),
            seconds,
            "must be between 1 and 2147483647, inclusive",
        ));
    }
    for (field, value, check) in [
        (
            "nodeName",
            &spec.node_name,
            is_dns1123_subdomain as fn(&str) -> Vec<String>,
        ),
        (
            "serviceAccountName",
            &spec.service_account_name,
            is_dns1123_subdomain,
        ),
        ("hostname", &spec.hostname, is_dns1123_label),
        ("subdomain", &spec.subdomain, is_dns1123_label),
    ] {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            push_all(errors, &join(path, field), value, check(value));
        }
    }
    if let Some(selector) = &spec.node_selector {
        labels_errors(selector, &join(path, "nodeSelector"), errors);
    }
    tolerations(
        spec.tolerations.as_deref().unwrap_or_default(),
        &join(path, "tolerations"),
        errors,
    );
}

/// Checks the volumes and returns their names.
fn volumes<'a>(volumes: &'a [Volume], path: &str, errors: &mut Errors) -> BTreeSet<&'a str> {
    let mut names = BTreeSet::new();
    for (i, volume) in volumes.iter().enumerate() {
        let field = format!("{path}[{i}]");
        if volume.name.is_empty() {
            errors.push(FieldError::required(format!("{field}.name"), ""));
        } else {
            push_all(
                errors,
                &format!("{field}.name"),
                &volume.name,
                is_dns1123_label(&volume.name),
            );
        }
        if !names.insert(volume.name.as_str()) {
            errors.push(FieldError::duplicate(
                format!("{field}.name"),
                volume.name.as_str(),
            ));
        }
        let sources: Vec<String> = match json(volume) {
            Value::Object(map) => map
                .into_iter()
                .map(|(k, _)| k)
                .filter(|k| k != "name")
                .collect(),
            _ => Vec::new(),
        };
        match sources.as_slice() {
            [] => errors.push(FieldError::required(field, "must specify a volume type")),
            [_] => {}
            [_, rest @ ..] => errors.push(FieldError::forbidden(
                format!("{field}.{}", rest[0]),
                "may not specify more than 1 volume type",
            )),
        }
    }
    names
}

fn container(
    container: &Container,
    path: &str,
    volumes: &BTreeSet<&str>,
    names: &mut HashSet<String>,
    errors: &mut Errors,
) {
    let name_field = join(path, "name");
    if container.name.is_empty() {
        errors.push(FieldError::required(&name_field, ""));
    } else {
        push_all(
            errors,
            &name_field,
            &container.name,
            is_dns1123_label(&container.name),
        );
        if !names.insert(container.name.clone()) {
            errors.push(FieldError::duplicate(&name_field, container.name.as_str()));
        }
    }
    match container.image.as_deref().unwrap_or_default() {
        "" => errors.push(FieldError::required(join(path, "image"), "")),
        image if image.trim() != image => errors.push(FieldError::invalid(
            join(path, "image"),
            image,
            "must not have leading or trailing whitespace",
        )),
        _ => {}
    }
    not_supported(
        errors,
        &join(path, "imagePullPolicy"),
        container.image_pull_policy.as_deref(),
        PULL_POLICIES,
    );
    not_supported(
        errors,
        &join(path, "terminationMessagePolicy"),
        container.termination_message_policy.as_deref(),
        TERMINATION_MESSAGE_POLICIES,
    );
    container_ports(container, &join(path, "ports"), errors);
    env(
        container.env.as_deref().unwrap_or_default(),
        &join(path, "env"),
        errors,
    );
    volume_mounts(
        container.volume_mounts.as_deref().unwrap_or_default(),
        volumes,
        &join(path, "volumeMounts"),
        errors,
    );
    if let Some(resources) = &container.resources {
        resource_requirements(resources, &join(path, "resources"), errors);
    }
    for (field, probe, single_success) in [
        ("livenessProbe", &container.liveness_probe, true),
        ("readinessProbe", &container.readiness_probe, false),
        ("startupProbe", &container.startup_probe, true),
    ] {
        if let Some(probe) = probe {
            self::probe(probe, &join(path, field), single_success, errors);
        }
    }
    if let Some(lifecycle) = &container.lifecycle {
        for (field, handler) in [
            ("postStart", &lifecycle.post_start),
            ("preStop", &lifecycle.pre_stop),
        ] {
            if let Some(handler) = handler {
                lifecycle_handler(handler, &format!("{path}.lifecycle.{field}"), errors);
            }
        }
    }
}

fn container_ports(container: &Container, path: &str, errors: &mut Errors) {
    let mut names = HashSet::new();
    for (i, port) in container.ports.iter().flatten().enumerate() {
        let field = format!("{path}[{i}]");
        if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            let messages = is_valid_port_name(name);
            if !messages.is_empty() {
                push_all(errors, &format!("{field}.name"), name, messages);
            } else if !names.insert(name) {
                errors.push(FieldError::duplicate(format!("{field}.name"), name));
            }
        }
        if port.container_port == 0 {
            errors.push(FieldError::required(format!("{field}.containerPort"), ""));
        } else if !is_valid_port(port.container_port) {
            errors.push(FieldError::invalid(
                format!("{field}.containerPort"),
                port.container_port,
                PORT_RANGE,
            ));
        }
        if let Some(host_port) = port.host_port.filter(|p| *p != 0 && !is_valid_port(*p)) {
            errors.push(FieldError::invalid(
                format!("{field}.hostPort"),
                host_port,
                PORT_RANGE,
            ));
        }
        not_supported(
            errors,
            &format!("{field}.protocol"),
            port.protocol.as_deref(),
            PROTOCOLS,
        );
    }
}

fn env(vars: &[EnvVar], path: &str, errors: &mut Errors) {
    for (i, var) in vars.iter().enumerate() {
        let field = format!("{path}[{i}]");
        if var.name.is_empty() {
            errors.push(FieldError::required(format!("{field}.name"), ""));
        } else if !var
            .name
            .bytes()
            .all(|c| (b' '..=b'~').contains(&c) && c != b'=')
        {
            errors.push(FieldError::invalid(
                format!("{field}.name"),
                var.name.as_str(),
                "a valid environment variable name must consist only of printable ASCII characters other than '='",
            ));
        }
        if let Some(source) = &var.value_from {
            let sources = [
                source.field_ref.is_some(),
                source.resource_field_ref.is_some(),
                source.config_map_key_ref.is_some(),
                source.secret_key_ref.is_some(),
            ]
            .into_iter()
            .filter(|set| *set)
            .count();
            let field = format!("{field}.valueFrom");
            if sources == 0 {
                errors.push(FieldError::invalid(
                    &field,
                    "",
                    "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
                ));
            }
            if sources != 0 && var.value.as_deref().is_some_and(|v| !v.is_empty()) {
                errors.push(FieldError::invalid(
                    &field,
                    "",
                    "may not be specified when `value` is not empty",
                ));
            }
            if sources > 1 {
                errors.push(FieldError::invalid(
                    &field,
                    "",
                    "may not have more than one field specified at a time",
                ));
            }
        }
    }
}

fn volume_mounts(
    mounts: &[VolumeMount],
    volumes: &BTreeSet<&str>,
    path: &str,
    errors: &mut Errors,
) {
    let mut mount_paths = HashSet::new();
    for (i, mount) in mounts.iter().enumerate() {
        let field = format!("{path}[{i}]");
        if mount.name.is_empty() {
            errors.push(FieldError::required(format!("{field}.name"), ""));
        } else if !volumes.contains(mount.name.as_str()) {
            errors.push(FieldError::not_found(
                format!("{field}.name"),
                mount.name.as_str(),
            ));
        }
        if mount.mount_path.is_empty() {
            errors.push(FieldError::required(format!("{field}.mountPath"), ""));
        } else if !mount_paths.insert(mount.mount_path.as_str()) {
            errors.push(FieldError::invalid(
                format!("{field}.mountPath"),
                mount.mount_path.as_str(),
                "must be unique",
            ));
        }
    }
}

/// Whether requests may be below limits (`IsOvercommitAllowed`): native resources except hugepages.
fn overcommit_allowed(resource: &str) -> bool {
    let native = !resource.contains('/') || resource.contains("kubernetes.io/");
    native && !resource.starts_with("hugepages-")
}

fn resource_requirements(resources: &ResourceRequirements, path: &str, errors: &mut Errors) {
    let mut parse = |list: &str,
                     entries: &Option<
        BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| {
        let mut parsed = BTreeMap::new();
        for (name, quantity) in entries.iter().flatten() {
            let field = format!("{path}.{list}[{name}]");
            match ParsedQuantity::parse(&quantity.0) {
                Ok(q) if q.is_negative() => errors.push(FieldError::invalid(
                    field,
                    quantity.0.as_str(),
                    NON_NEGATIVE,
                )),
                Ok(q) => {
                    parsed.insert(name.clone(), (q, quantity.0.clone()));
                }
                Err(message) => {
                    errors.push(FieldError::invalid(field, quantity.0.as_str(), message))
                }
            }
        }
        parsed
    };
    let limits = parse("limits", &resources.limits);
    let requests = parse("requests", &resources.requests);
    let requests_field = join(path, "requests");
    for (name, (request, request_text)) in &requests {
        match limits.get(name) {
            Some((limit, limit_text)) if !overcommit_allowed(name) && request != limit => errors
                .push(FieldError::invalid(
                    &requests_field,
                    request_text.as_str(),
                    format!("must be equal to {name} limit of {limit_text}"),
                )),
            Some((limit, limit_text)) if request > limit => errors.push(FieldError::invalid(
                &requests_field,
                request_text.as_str(),
                format!("must be less than or equal to {name} limit of {limit_text}"),
            )),
            None if !overcommit_allowed(name) => errors.push(FieldError::required(
                join(path, "limits"),
                "Limit must be set for non overcommitable resources",
            )),
            _ => {}
        }
    }
}

fn port_number_or_name(port: &IntOrString, field: &str, errors: &mut Errors) {
    match port {
        IntOrString::Int(number) if !is_valid_port(*number) => {
            errors.push(FieldError::invalid(field, *number, PORT_RANGE))
        }
        IntOrString::String(name) => push_all(errors, field, name, is_valid_port_name(name)),
        IntOrString::Int(_) => {}
    }
}

fn probe_actions(
    http_get: &Option<HTTPGetAction>,
    tcp_socket: &Option<TCPSocketAction>,
    path: &str,
    errors: &mut Errors,
) {
    if let Some(action) = http_get {
        port_number_or_name(&action.port, &format!("{path}.httpGet.port"), errors);
        not_supported(
            errors,
            &format!("{path}.httpGet.scheme"),
            action.scheme.as_deref(),
            &["HTTP", "HTTPS"],
        );
    }
    if let Some(action) = tcp_socket {
        port_number_or_name(&action.port, &format!("{path}.tcpSocket.port"), errors);
    }
}

fn handler_count(path: &str, handlers: &[(&str, bool)], errors: &mut Errors) {
    let set: Vec<&str> = handlers
        .iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| *name)
        .collect();
    match set.as_slice() {
        [] => errors.push(FieldError::required(path, "must specify a handler type")),
        [_] => {}
        [_, second, ..] => errors.push(FieldError::forbidden(
            format!("{path}.{second}"),
            "may not specify more than 1 handler type",
        )),
    }
}

fn probe(probe: &Probe, path: &str, single_success: bool, errors: &mut Errors) {
    handler_count(
        path,
        &[
            ("exec", probe.exec.is_some()),
            ("httpGet", probe.http_get.is_some()),
            ("tcpSocket", probe.tcp_socket.is_some()),
            ("grpc", probe.grpc.is_some()),
        ],
        errors,
    );
    probe_actions(&probe.http_get, &probe.tcp_socket, path, errors);
    for (field, value) in [
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("periodSeconds", probe.period_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        non_negative(errors, &join(path, field), value.map(i64::from));
    }
    if single_success && let Some(threshold) = probe.success_threshold.filter(|t| *t != 1) {
        errors.push(FieldError::invalid(
            join(path, "successThreshold"),
            threshold,
            "must be 1",
        ));
    }
}

fn lifecycle_handler(handler: &LifecycleHandler, path: &str, errors: &mut Errors) {
    handler_count(
        path,
        &[
            ("exec", handler.exec.is_some()),
            ("httpGet", handler.http_get.is_some()),
            ("tcpSocket", handler.tcp_socket.is_some()),
            ("sleep", handler.sleep.is_some()),
        ],
        errors,
    );
    probe_actions(&handler.http_get, &handler.tcp_socket, path, errors);
}

fn tolerations(tolerations: &[Toleration], path: &str, errors: &mut Errors) {
    for (i, toleration) in tolerations.iter().enumerate() {
        let field = format!("{path}[{i}]");
        let key = toleration.key.as_deref().unwrap_or_default();
        let operator = toleration.operator.as_deref().unwrap_or_default();
        let value = toleration.value.as_deref().unwrap_or_default();
        let effect = toleration.effect.as_deref().unwrap_or_default();
        if !key.is_empty() {
            push_all(errors, &format!("{field}.key"), key, is_qualified_name(key));
        }
        if key.is_empty() && operator != "Exists" {
            errors.push(FieldError::invalid(
                format!("{field}.operator"),
                operator,
                "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            ));
        }
        if toleration.toleration_seconds.is_some() && effect != "NoExecute" {
            errors.push(FieldError::invalid(
                format!("{field}.effect"),
                effect,
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            ));
        }
        match operator {
            "" | "Equal" => {
                let messages = is_valid_label_value(value);
                if !messages.is_empty() {
                    errors.push(FieldError::invalid(
                        format!("{field}.operator"),
                        value,
                        messages.join(";"),
                    ));
                }
            }
            "Exists" if !value.is_empty() => errors.push(FieldError::invalid(
                format!("{field}.operator"),
                json(toleration),
                "value must be empty when `operator` is 'Exists'",
            )),
            "Exists" => {}
            other => errors.push(FieldError::not_supported(
                format!("{field}.operator"),
                other,
                &["Equal", "Exists"],
            )),
        }
        if !effect.is_empty() {
            not_supported(
                errors,
                &format!("{field}.effect"),
                Some(effect),
                TAINT_EFFECTS,
            );
        }
    }
}

/// The fields a Pod update may change, as Kubernetes lists them.
const POD_UPDATABLE_FIELDS: &str = "`spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

fn validate_pod_update(new: &Pod, old: &Pod, errors: &mut Errors) {
    let empty = PodSpec::default();
    let new_spec = new.spec.as_ref().unwrap_or(&empty);
    let old_spec = old.spec.as_ref().unwrap_or(&empty);

    match (
        new_spec.active_deadline_seconds,
        old_spec.active_deadline_seconds,
    ) {
        (Some(new), Some(old)) if new > old => errors.push(FieldError::invalid(
            "spec.activeDeadlineSeconds",
            new,
            "must be less than or equal to previous value",
        )),
        (None, Some(_)) => errors.push(FieldError::invalid(
            "spec.activeDeadlineSeconds",
            Value::Null,
            "must not update from a positive integer to nil value",
        )),
        _ => {}
    }
    let old_tolerations = old_spec.tolerations.as_deref().unwrap_or_default();
    let new_tolerations = new_spec.tolerations.as_deref().unwrap_or_default();
    let same_but_seconds = |a: &Toleration, b: &Toleration| {
        a.key == b.key && a.operator == b.operator && a.value == b.value && a.effect == b.effect
    };
    for (i, old_toleration) in old_tolerations.iter().enumerate() {
        if !new_tolerations
            .iter()
            .any(|t| same_but_seconds(t, old_toleration))
        {
            errors.push(FieldError::forbidden(
                format!("spec.tolerations[{i}]"),
                "existing toleration can not be modified except its tolerationSeconds",
            ));
        }
    }

    // Everything else must be as before: copy the updatable fields from the old spec and compare.
    let mut munged = new_spec.clone();
    for (containers, old_containers) in [
        (&mut munged.containers, &old_spec.containers),
        (
            munged.init_containers.get_or_insert_with(Vec::new),
            old_spec.init_containers.as_ref().unwrap_or(&Vec::new()),
        ),
    ] {
        for (container, old_container) in containers.iter_mut().zip(old_containers) {
            container.image.clone_from(&old_container.image);
        }
    }
    if old_spec.init_containers.is_none()
        && munged.init_containers.as_ref().is_some_and(Vec::is_empty)
    {
        munged.init_containers = None;
    }
    munged.active_deadline_seconds = old_spec.active_deadline_seconds;
    munged.tolerations.clone_from(&old_spec.tolerations);
    if old_spec
        .termination_grace_period_seconds
        .is_some_and(|s| s < 0)
        && munged.termination_grace_period_seconds == Some(1)
    {
        munged.termination_grace_period_seconds = old_spec.termination_grace_period_seconds;
    }
    // Scheduling gates may only be removed.
    let old_gates = old_spec.scheduling_gates.as_deref().unwrap_or_default();
    if munged
        .scheduling_gates
        .iter()
        .flatten()
        .all(|gate| old_gates.contains(gate))
    {
        munged
            .scheduling_gates
            .clone_from(&old_spec.scheduling_gates);
    }
    if munged != *old_spec {
        errors.push(FieldError::forbidden(
            "spec",
            format!("pod updates may not change fields other than {POD_UPDATABLE_FIELDS}"),
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Deployment and ReplicaSet

/// Selector and template rules shared by Deployments and ReplicaSets.
fn workload_selector_and_template(
    selector: &LabelSelector,
    template: Option<&PodTemplateSpec>,
    raw: &Value,
    errors: &mut Errors,
) {
    if raw.pointer("/spec/selector").is_none_or(Value::is_null) {
        errors.push(FieldError::required("spec.selector", ""));
    } else {
        label_selector(selector, "spec.selector", errors);
        let empty = selector
            .match_labels
            .as_ref()
            .is_none_or(BTreeMap::is_empty)
            && selector
                .match_expressions
                .as_ref()
                .is_none_or(Vec::is_empty);
        if empty {
            errors.push(FieldError::invalid(
                "spec.selector",
                json(selector),
                "empty selector is invalid for deployment",
            ));
        }
    }
    let template = match template {
        Some(template) if raw.pointer("/spec/template").is_some_and(|t| !t.is_null()) => template,
        _ => {
            errors.push(FieldError::required("spec.template", ""));
            return;
        }
    };
    let empty_meta = ObjectMeta::default();
    let meta = template.metadata.as_ref().unwrap_or(&empty_meta);
    let labels = meta.labels.clone().unwrap_or_default();
    if let Ok(parsed) = selectors::LabelSelector::from_object(&json(selector))
        && !parsed.is_empty()
        && !parsed.matches(&labels)
    {
        errors.push(FieldError::invalid(
            "spec.template.metadata.labels",
            json(&labels),
            "`selector` does not match template `labels`",
        ));
    }
    template_meta(meta, "spec.template.metadata", errors);
    let empty_spec = PodSpec::default();
    let spec = template.spec.as_ref().unwrap_or(&empty_spec);
    pod_spec(spec, "spec.template.spec", errors);
    if let Some(policy) = spec
        .restart_policy
        .as_deref()
        .filter(|p| *p != "Always" && RESTART_POLICIES.contains(p))
    {
        errors.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            policy,
            &["Always"],
        ));
    }
    if spec.active_deadline_seconds.is_some() {
        errors.push(FieldError::forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            "activeDeadlineSeconds in ReplicaSet is not Supported",
        ));
    }
}

fn validate_deployment(deployment: &Deployment, raw: &Value, errors: &mut Errors) {
    let empty = DeploymentSpec::default();
    let spec = deployment.spec.as_ref().unwrap_or(&empty);
    non_negative(errors, "spec.replicas", spec.replicas.map(i64::from));
    workload_selector_and_template(&spec.selector, Some(&spec.template), raw, errors);
    if let Some(strategy) = &spec.strategy {
        let kind = strategy.type_.as_deref().unwrap_or("RollingUpdate");
        not_supported(
            errors,
            "spec.strategy.type",
            Some(kind),
            &["Recreate", "RollingUpdate"],
        );
        match (&strategy.rolling_update, kind) {
            (Some(_), "Recreate") => errors.push(FieldError::forbidden(
                "spec.strategy.rollingUpdate",
                "may not be specified when strategy `type` is 'Recreate'",
            )),
            (Some(rolling), _) => {
                let surge = rolling.max_surge.as_ref();
                let unavailable = rolling.max_unavailable.as_ref();
                positive_int_or_percent(surge, "spec.strategy.rollingUpdate.maxSurge", errors);
                positive_int_or_percent(
                    unavailable,
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    errors,
                );
                if is_zero(surge) && is_zero(unavailable) {
                    errors.push(FieldError::invalid(
                        "spec.strategy.rollingUpdate.maxUnavailable",
                        json(&unavailable),
                        "may not be 0 when `maxSurge` is 0",
                    ));
                }
                if let Some(IntOrString::String(percent)) = unavailable
                    && percent
                        .trim_end_matches('%')
                        .parse::<u64>()
                        .is_ok_and(|p| p > 100)
                {
                    errors.push(FieldError::invalid(
                        "spec.strategy.rollingUpdate.maxUnavailable",
                        percent.as_str(),
                        "must not be greater than 100%",
                    ));
                }
            }
            (None, _) => {}
        }
    }
    non_negative(
        errors,
        "spec.minReadySeconds",
        spec.min_ready_seconds.map(i64::from),
    );
    non_negative(
        errors,
        "spec.revisionHistoryLimit",
        spec.revision_history_limit.map(i64::from),
    );
    if let Some(deadline) = spec.progress_deadline_seconds {
        non_negative(
            errors,
            "spec.progressDeadlineSeconds",
            Some(i64::from(deadline)),
        );
        if deadline <= spec.min_ready_seconds.unwrap_or(0) {
            errors.push(FieldError::invalid(
                "spec.progressDeadlineSeconds",
                deadline,
                "must be greater than minReadySeconds",
            ));
        }
    }
}

fn is_zero(value: Option<&IntOrString>) -> bool {
    match value {
        Some(IntOrString::Int(n)) => *n == 0,
        Some(IntOrString::String(s)) => {
            s.trim_end_matches('%').parse::<u64>().is_ok_and(|n| n == 0)
        }
        None => false,
    }
}

fn positive_int_or_percent(value: Option<&IntOrString>, field: &str, errors: &mut Errors) {
    match value {
        Some(IntOrString::Int(n)) => non_negative(errors, field, Some(i64::from(*n))),
        Some(IntOrString::String(s)) if !is_valid_percent(s) => errors.push(FieldError::invalid(
            field,
            s.as_str(),
            regex_error(PERCENT_MSG, PERCENT_FMT, &["1%", "93%"]),
        )),
        _ => {}
    }
}

fn validate_deployment_update(new: &Deployment, old: &Deployment, errors: &mut Errors) {
    let (new, old) = (
        new.spec.as_ref().map(|s| &s.selector),
        old.spec.as_ref().map(|s| &s.selector),
    );
    if new != old {
        errors.push(FieldError::invalid(
            "spec.selector",
            json(&new),
            FIELD_IMMUTABLE,
        ));
    }
}

fn validate_replica_set(replica_set: &ReplicaSet, raw: &Value, errors: &mut Errors) {
    let empty = Default::default();
    let spec = replica_set.spec.as_ref().unwrap_or(&empty);
    non_negative(errors, "spec.replicas", spec.replicas.map(i64::from));
    non_negative(
        errors,
        "spec.minReadySeconds",
        spec.min_ready_seconds.map(i64::from),
    );
    workload_selector_and_template(&spec.selector, spec.template.as_ref(), raw, errors);
}

fn validate_replica_set_update(new: &ReplicaSet, old: &ReplicaSet, errors: &mut Errors) {
    let (new, old) = (
        new.spec.as_ref().map(|s| &s.selector),
        old.spec.as_ref().map(|s| &s.selector),
    );
    if new != old {
        errors.push(FieldError::invalid(
            "spec.selector",
            json(&new),
            FIELD_IMMUTABLE,
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Service

const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];

fn validate_service(service: &Service, _raw: &Value, errors: &mut Errors) {
    let empty = ServiceSpec::default();
    let spec = service.spec.as_ref().unwrap_or(&empty);
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    not_supported(errors, "spec.type", Some(kind), SERVICE_TYPES);
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or_default();
    let headless = cluster_ip == "None";
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && !headless && kind != "ExternalName" {
        errors.push(FieldError::required("spec.ports", ""));
    }

    if kind == "ExternalName" {
        match spec.external_name.as_deref().unwrap_or_default() {
            "" => errors.push(FieldError::required("spec.externalName", "")),
            name => push_all(
                errors,
                "spec.externalName",
                name,
                is_dns1123_subdomain(name.trim_end_matches('.')),
            ),
        }
        if !cluster_ip.is_empty() && !headless {
            errors.push(FieldError::forbidden(
                "spec.clusterIP",
                "may not be set for ExternalName services",
            ));
        }
    } else if !cluster_ip.is_empty() && !headless {
        cluster_ip_errors("spec.clusterIP", cluster_ip, errors);
    }
    if headless && matches!(kind, "NodePort" | "LoadBalancer") {
        errors.push(FieldError::invalid(
            "spec.clusterIP",
            cluster_ip,
            format!("may not be set to 'None' for {kind} services"),
        ));
    }
    if let Some(first) = spec.cluster_ips.as_ref().and_then(|ips| ips.first())
        && !cluster_ip.is_empty()
        && first != cluster_ip
    {
        errors.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            first.as_str(),
            "must match `spec.clusterIP`",
        ));
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        if ip.parse::<IpAddr>().is_err() {
            errors.push(FieldError::invalid(
                format!("spec.externalIPs[{i}]"),
                ip.as_str(),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
    }

    let mut names = HashSet::new();
    let mut port_keys = HashSet::new();
    let mut node_ports = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let name = port.name.as_deref().unwrap_or_default();
        if name.is_empty() {
            if ports.len() > 1 {
                errors.push(FieldError::required(format!("{field}.name"), ""));
            }
        } else {
            push_all(
                errors,
                &format!("{field}.name"),
                name,
                is_dns1123_label(name),
            );
            if !names.insert(name) {
                errors.push(FieldError::duplicate(format!("{field}.name"), name));
            }
        }
        if !is_valid_port(port.port) {
            errors.push(FieldError::invalid(
                format!("{field}.port"),
                port.port,
                PORT_RANGE,
            ));
        }
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        not_supported(
            errors,
            &format!("{field}.protocol"),
            Some(protocol),
            PROTOCOLS,
        );
        if let Some(target) = &port.target_port {
            port_number_or_name(target, &format!("{field}.targetPort"), errors);
        }
        if !port_keys.insert((port.port, protocol)) {
            errors.push(FieldError::duplicate(
                field.as_str(),
                serde_json::json!({"port": port.port, "protocol": protocol}),
            ));
        }
        if let Some(node_port) = port.node_port.filter(|p| *p != 0) {
            let node_port_field = format!("{field}.nodePort");
            if matches!(kind, "ClusterIP" | "ExternalName") {
                errors.push(FieldError::forbidden(
                    &node_port_field,
                    format!("may not be used when `type` is '{kind}'"),
                ));
            } else if !is_valid_port(node_port) {
                errors.push(FieldError::invalid(&node_port_field, node_port, PORT_RANGE));
            } else if !node_ports.insert((node_port, protocol)) {
                errors.push(FieldError::duplicate(&node_port_field, node_port));
            }
        }
    }

    match spec.session_affinity.as_deref() {
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            if let Some(timeout) = timeout.filter(|t| !(1..=86400).contains(t)) {
                errors.push(FieldError::invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    timeout,
                    "must be greater than 0 and less than 86400",
                ));
            }
        }
        other => {
            not_supported(errors, "spec.sessionAffinity", other, &["ClientIP", "None"]);
            if spec.session_affinity_config.is_some() && other.is_none_or(|a| a == "None") {
                errors.push(FieldError::forbidden(
                    "spec.sessionAffinityConfig",
                    "must not be set when session affinity is None",
                ));
            }
        }
    }
    let externally_accessible = matches!(kind, "NodePort" | "LoadBalancer")
        || (kind == "ClusterIP"
            && spec
                .external_ips
                .as_ref()
                .is_some_and(|ips| !ips.is_empty()));
    if let Some(policy) = spec
        .external_traffic_policy
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        not_supported(
            errors,
            "spec.externalTrafficPolicy",
            Some(policy),
            &["Cluster", "Local"],
        );
        if !externally_accessible {
            errors.push(FieldError::invalid(
                "spec.externalTrafficPolicy",
                policy,
                "may only be set for externally-accessible services",
            ));
        }
    }
    not_supported(
        errors,
        "spec.internalTrafficPolicy",
        spec.internal_traffic_policy.as_deref(),
        &["Cluster", "Local"],
    );
    match spec.ip_family_policy.as_deref() {
        Some("RequireDualStack") => errors.push(FieldError::invalid(
            "spec.ipFamilyPolicy",
            "RequireDualStack",
            "this cluster is not configured for dual-stack services",
        )),
        other => not_supported(
            errors,
            "spec.ipFamilyPolicy",
            other,
            &["PreferDualStack", "RequireDualStack", "SingleStack"],
        ),
    }
    for (i, family) in spec.ip_families.iter().flatten().enumerate() {
        match family.as_str() {
            "IPv4" => {}
            "IPv6" => errors.push(FieldError::invalid(
                format!("spec.ipFamilies[{i}]"),
                "IPv6",
                "not configured on this cluster",
            )),
            other => errors.push(FieldError::not_supported(
                format!("spec.ipFamilies[{i}]"),
                other,
                &["IPv4", "IPv6"],
            )),
        }
    }
    if let Some(selector) = &spec.selector {
        labels_errors(selector, "spec.selector", errors);
    }
}

/// A requested cluster IP must be an IPv4 literal: Keel's service network is IPv4.
fn cluster_ip_errors(field: &str, ip: &str, errors: &mut Errors) {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => {}
        Ok(IpAddr::V6(_)) => errors.push(FieldError::invalid(
            field,
            ip,
            "must be an IPv4 address: this cluster has no IPv6 service network",
        )),
        Err(_) => errors.push(FieldError::invalid(
            field,
            ip,
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        )),
    }
}

fn validate_service_update(new: &Service, old: &Service, errors: &mut Errors) {
    let primary = |service: &Service| -> (String, String) {
        let spec = service.spec.clone().unwrap_or_default();
        let ip = spec
            .cluster_ips
            .and_then(|ips| ips.into_iter().next())
            .or(spec.cluster_ip)
            .unwrap_or_default();
        (spec.type_.unwrap_or_else(|| "ClusterIP".into()), ip)
    };
    let ((new_type, new_ip), (old_type, old_ip)) = (primary(new), primary(old));
    // Changing to or from ExternalName releases or allocates the address; an empty new value
    // means "keep" (the server carries the allocated address over).
    let involves_external_name = new_type == "ExternalName" || old_type == "ExternalName";
    if !involves_external_name && !old_ip.is_empty() && !new_ip.is_empty() && new_ip != old_ip {
        errors.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            new_ip,
            "may not change once set",
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// ConfigMap and Secret

fn validate_config_map(config_map: &ConfigMap, _raw: &Value, errors: &mut Errors) {
    let data = config_map.data.clone().unwrap_or_default();
    let binary = config_map.binary_data.clone().unwrap_or_default();
    let mut size = 0;
    for (key, value) in &data {
        push_all(errors, &format!("data[{key}]"), key, is_config_map_key(key));
        if binary.contains_key(key) {
            errors.push(FieldError::invalid(
                format!("data[{key}]"),
                key.as_str(),
                "duplicate of key present in binaryData",
            ));
        }
        size += value.len();
    }
    for (key, value) in &binary {
        push_all(
            errors,
            &format!("binaryData[{key}]"),
            key,
            is_config_map_key(key),
        );
        if data.contains_key(key) {
            errors.push(FieldError::invalid(
                format!("binaryData[{key}]"),
                key.as_str(),
                "duplicate of key present in data",
            ));
        }
        size += value.0.len();
    }
    if size > MAX_DATA_BYTES {
        errors.push(FieldError::too_long("", MAX_DATA_BYTES));
    }
}

fn validate_config_map_update(new: &ConfigMap, old: &ConfigMap, errors: &mut Errors) {
    if old.immutable == Some(true) {
        if new.immutable != Some(true) {
            errors.push(FieldError::forbidden("immutable", IMMUTABLE_WHEN_SET));
        }
        if new.data != old.data {
            errors.push(FieldError::forbidden("data", IMMUTABLE_WHEN_SET));
        }
        if new.binary_data != old.binary_data {
            errors.push(FieldError::forbidden("binaryData", IMMUTABLE_WHEN_SET));
        }
    }
}

fn validate_secret(secret: &Secret, _raw: &Value, errors: &mut Errors) {
    let data = secret.data.clone().unwrap_or_default();
    let string_data = secret.string_data.clone().unwrap_or_default();
    let mut size = 0;
    for (key, value) in &data {
        push_all(errors, &format!("data[{key}]"), key, is_config_map_key(key));
        size += value.0.len();
    }
    for (key, value) in &string_data {
        push_all(
            errors,
            &format!("stringData[{key}]"),
            key,
            is_config_map_key(key),
        );
        if !data.contains_key(key) {
            size += value.len();
        }
    }
    if size > MAX_DATA_BYTES {
        errors.push(FieldError::too_long("data", MAX_DATA_BYTES));
    }
    // stringData is folded into data on write; required keys may come from either.
    let value_of = |key: &str| {
        data.get(key)
            .map(|v| v.0.clone())
            .or_else(|| string_data.get(key).map(|v| v.clone().into_bytes()))
    };
    let required = |errors: &mut Errors, key: &str| {
        errors.push(FieldError::required(format!("data[{key}]"), ""))
    };
    match secret.type_.as_deref().unwrap_or("Opaque") {
        "kubernetes.io/service-account-token" => {
            let annotations = secret.metadata.annotations.clone().unwrap_or_default();
            if annotations
                .get("kubernetes.io/service-account.name")
                .is_none_or(String::is_empty)
            {
                errors.push(FieldError::required(
                    "metadata.annotations[kubernetes.io/service-account.name]",
                    "",
                ));
            }
        }
        kind @ ("kubernetes.io/dockercfg" | "kubernetes.io/dockerconfigjson") => {
            let key = if kind == "kubernetes.io/dockercfg" {
                ".dockercfg"
            } else {
                ".dockerconfigjson"
            };
            match value_of(key) {
                None => required(errors, key),
                Some(bytes) => {
                    if let Err(error) =
                        serde_json::from_slice::<serde_json::Map<String, Value>>(&bytes)
                    {
                        errors.push(FieldError::invalid(
                            format!("data[{key}]"),
                            "<secret contents redacted>",
                            error.to_string(),
                        ));
                    }
                }
            }
        }
        "kubernetes.io/basic-auth"
            if value_of("username").is_none() && value_of("password").is_none() =>
        {
            required(errors, "username");
            required(errors, "password");
        }
        "kubernetes.io/ssh-auth" if value_of("ssh-privatekey").is_none_or(|v| v.is_empty()) => {
            required(errors, "ssh-privatekey");
        }
        "kubernetes.io/tls" => {
            for key in ["tls.crt", "tls.key"] {
                if value_of(key).is_none() {
                    required(errors, key);
                }
            }
        }
        _ => {}
    }
}

fn validate_secret_update(new: &Secret, old: &Secret, errors: &mut Errors) {
    let new_type = new.type_.as_deref().unwrap_or("Opaque");
    if new_type != old.type_.as_deref().unwrap_or("Opaque") {
        errors.push(FieldError::invalid("type", new_type, FIELD_IMMUTABLE));
    }
    if old.immutable == Some(true) {
        if new.immutable != Some(true) {
            errors.push(FieldError::forbidden("immutable", IMMUTABLE_WHEN_SET));
        }
        let string_data_changes = new.string_data.iter().flatten().any(|(key, value)| {
            old.data
                .as_ref()
                .and_then(|d| d.get(key))
                .is_none_or(|old| old.0 != value.as_bytes())
        });
        if new.data != old.data || string_data_changes {
            errors.push(FieldError::forbidden("data", IMMUTABLE_WHEN_SET));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// EndpointSlice, Node, Namespace, Event, Lease

const ADDRESS_TYPES: &[&str] = &["FQDN", "IPv4", "IPv6"];

fn validate_endpoint_slice(slice: &EndpointSlice, _raw: &Value, errors: &mut Errors) {
    let address_type = slice.address_type.as_str();
    if address_type.is_empty() {
        errors.push(FieldError::required("addressType", ""));
    } else {
        not_supported(errors, "addressType", Some(address_type), ADDRESS_TYPES);
    }
    if slice.endpoints.len() > 1000 {
        errors.push(FieldError::too_many(
            "endpoints",
            slice.endpoints.len(),
            1000,
        ));
    }
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        let field = format!("endpoints[{i}]");
        let addresses_field = format!("{field}.addresses");
        if endpoint.addresses.is_empty() {
            errors.push(FieldError::required(
                &addresses_field,
                "must contain at least 1 address",
            ));
        } else if endpoint.addresses.len() > 100 {
            errors.push(FieldError::too_many(
                &addresses_field,
                endpoint.addresses.len(),
                100,
            ));
        }
        for (j, address) in endpoint.addresses.iter().enumerate() {
            let address_field = format!("{addresses_field}[{j}]");
            match address_type {
                "IPv4" if address.parse::<Ipv4Addr>().is_err() => errors.push(FieldError::invalid(
                    address_field,
                    address.as_str(),
                    "must be a valid IPv4 address",
                )),
                "IPv6" if address.parse::<std::net::Ipv6Addr>().is_err() => {
                    errors.push(FieldError::invalid(
                        address_field,
                        address.as_str(),
                        "must be a valid IPv6 address",
                    ))
                }
                "FQDN" => push_all(
                    errors,
                    &address_field,
                    address,
                    is_dns1123_subdomain(address),
                ),
                _ => {}
            }
        }
        if let Some(node_name) = endpoint.node_name.as_deref() {
            push_all(
                errors,
                &format!("{field}.nodeName"),
                node_name,
                is_dns1123_subdomain(node_name),
            );
        }
        if let Some(hostname) = endpoint.hostname.as_deref() {
            push_all(
                errors,
                &format!("{field}.hostname"),
                hostname,
                is_dns1123_label(hostname),
            );
        }
    }
    let ports = slice.ports.as_deref().unwrap_or_default();
    if ports.len() > 20000 {
        errors.push(FieldError::too_many("ports", ports.len(), 20000));
    }
    let mut names = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let field = format!("ports[{i}]");
        let name = port.name.as_deref().unwrap_or_default();
        if !name.is_empty() {
            push_all(
                errors,
                &format!("{field}.name"),
                name,
                is_dns1123_label(name),
            );
        }
        if !names.insert(name) {
            errors.push(FieldError::duplicate(format!("{field}.name"), name));
        }
        not_supported(
            errors,
            &format!("{field}.protocol"),
            port.protocol.as_deref(),
            PROTOCOLS,
        );
        if let Some(number) = port.port.filter(|p| !is_valid_port(*p)) {
            errors.push(FieldError::invalid(
                format!("{field}.port"),
                number,
                PORT_RANGE,
            ));
        }
        if let Some(protocol) = port.app_protocol.as_deref() {
            push_all(
                errors,
                &format!("{field}.appProtocol"),
                protocol,
                is_qualified_name(protocol),
            );
        }
    }
}

fn validate_endpoint_slice_update(new: &EndpointSlice, old: &EndpointSlice, errors: &mut Errors) {
    if new.address_type != old.address_type {
        errors.push(FieldError::invalid(
            "addressType",
            new.address_type.as_str(),
            FIELD_IMMUTABLE,
        ));
    }
}

fn validate_node(node: &Node, _raw: &Value, errors: &mut Errors) {
    let Some(spec) = &node.spec else { return };
    let mut seen = HashSet::new();
    for (i, taint) in spec.taints.iter().flatten().enumerate() {
        let field = format!("spec.taints[{i}]");
        push_all(
            errors,
            &format!("{field}.key"),
            &taint.key,
            is_qualified_name(&taint.key),
        );
        let value = taint.value.as_deref().unwrap_or_default();
        let messages = is_valid_label_value(value);
        if !messages.is_empty() {
            errors.push(FieldError::invalid(
                format!("{field}.value"),
                value,
                messages.join(";"),
            ));
        }
        if taint.effect.is_empty() {
            errors.push(FieldError::required(format!("{field}.effect"), ""));
        } else {
            not_supported(
                errors,
                &format!("{field}.effect"),
                Some(&taint.effect),
                TAINT_EFFECTS,
            );
        }
        if !seen.insert((taint.key.as_str(), taint.effect.as_str())) {
            let mut error = FieldError::duplicate(field, json(taint));
            error.message = "taints must be unique by key and effect pair".into();
            errors.push(error);
        }
    }
    if let Some(cidr) = spec
        .pod_cidr
        .as_deref()
        .filter(|c| !c.is_empty() && !is_cidr(c))
    {
        errors.push(FieldError::invalid(
            "spec.podCIDR",
            cidr,
            "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        ));
    }
    for (i, cidr) in spec.pod_cidrs.iter().flatten().enumerate() {
        if !is_cidr(cidr) {
            errors.push(FieldError::invalid(
                format!("spec.podCIDRs[{i}]"),
                cidr.as_str(),
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            ));
        }
    }
}

fn validate_node_update(new: &Node, old: &Node, errors: &mut Errors) {
    let cidr = |node: &Node| {
        node.spec
            .as_ref()
            .and_then(|s| s.pod_cidr.clone())
            .unwrap_or_default()
    };
    let (new_cidr, old_cidr) = (cidr(new), cidr(old));
    if !old_cidr.is_empty() && new_cidr != old_cidr {
        errors.push(FieldError::forbidden(
            "spec.podCIDR",
            "node updates may not change podCIDR except from \"\" to valid",
        ));
    }
}

/// Finalizer names Kubernetes itself uses, allowed without a `/` prefix in a Namespace's spec.
const STANDARD_FINALIZERS: &[&str] = &["kubernetes", "orphan", "foregroundDeletion"];

fn validate_namespace(namespace: &Namespace, _raw: &Value, errors: &mut Errors) {
    for (i, finalizer) in namespace
        .spec
        .iter()
        .flat_map(|s| s.finalizers.iter().flatten())
        .enumerate()
    {
        let field = format!("spec.finalizers[{i}]");
        push_all(errors, &field, finalizer, is_qualified_name(finalizer));
        if !finalizer.contains('/') && !STANDARD_FINALIZERS.contains(&finalizer.as_str()) {
            errors.push(FieldError::invalid(
                field,
                finalizer.as_str(),
                "name is neither a standard finalizer name nor is it fully qualified",
            ));
        }
    }
}

fn validate_event(event: &Event, _raw: &Value, errors: &mut Errors) {
    let namespace = event.metadata.namespace.as_deref().unwrap_or_default();
    let involved = event
        .involved_object
        .namespace
        .as_deref()
        .unwrap_or_default();
    let matches = if involved.is_empty() {
        namespace.is_empty() || namespace == "default"
    } else {
        involved == namespace
    };
    if !matches {
        errors.push(FieldError::invalid(
            "involvedObject.namespace",
            involved,
            "does not match event.namespace",
        ));
    }
    non_negative(errors, "count", event.count.map(i64::from));
}

fn validate_lease(lease: &Lease, _raw: &Value, errors: &mut Errors) {
    let Some(spec) = &lease.spec else { return };
    if let Some(duration) = spec.lease_duration_seconds.filter(|d| *d <= 0) {
        errors.push(FieldError::invalid(
            "spec.leaseDurationSeconds",
            duration,
            "must be greater than 0",
        ));
    }
    non_negative(
        errors,
        "spec.leaseTransitions",
        spec.lease_transitions.map(i64::from),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    fn find<'a>(errors: &'a [FieldError], field: &str) -> &'a FieldError {
        errors
            .iter()
            .find(|e| e.field == field)
            .unwrap_or_else(|| panic!("no error at {field}: {errors:#?}"))
    }

    fn pod(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    fn deployment(spec: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    fn valid_deployment_spec() -> Value {
        json!({
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web", "tier": "front"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}]}
            }
        })
    }

    fn service(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn reasons_and_bodies() {
        assert_eq!(FieldErrorType::Required.reason(), "FieldValueRequired");
        assert_eq!(FieldErrorType::TooMany.reason(), "FieldValueTooMany");
        assert_eq!(
            FieldError::required("spec.containers", "").to_string(),
            "spec.containers: Required value"
        );
        assert_eq!(
            FieldError::not_supported("spec.restartPolicy", "Sometimes", RESTART_POLICIES)
                .to_string(),
            "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\""
        );
        assert_eq!(
            FieldError::invalid("spec.replicas", -1, NON_NEGATIVE).body(),
            "Invalid value: -1: must be greater than or equal to 0"
        );
        assert_eq!(
            FieldError::too_long("metadata.annotations", 262144).body(),
            "Too long: may not be more than 262144 bytes"
        );
        assert_eq!(
            FieldError::duplicate("spec.containers[1].name", "a").body(),
            "Duplicate value: \"a\""
        );
    }

    #[test]
    fn name_formats() {
        assert!(is_dns1123_label("my-name").is_empty());
        assert!(is_dns1123_subdomain("example.com").is_empty());
        assert_eq!(is_dns1123_label("a.b"), ["must not contain dots"]);
        assert_eq!(
            is_dns1123_subdomain("Foo"),
            [
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            ]
        );
        assert_eq!(
            is_dns1123_label("-x")[0],
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
        );
        assert_eq!(
            is_dns1123_label(&"a".repeat(64)),
            ["must be no more than 63 characters"]
        );
        assert!(is_dns1123_subdomain(&"a".repeat(253)).is_empty());
        assert_eq!(is_dns1123_subdomain(&"a".repeat(254)).len(), 1);
        assert!(is_dns1035_label("web-1").is_empty());
        assert!(!is_dns1035_label("1web").is_empty());
        assert!(is_qualified_name("app.kubernetes.io/name").is_empty());
        assert!(is_qualified_name("MyName").is_empty());
        assert!(!is_qualified_name("a/b/c").is_empty());
        assert_eq!(is_qualified_name("/x"), ["prefix part must be non-empty"]);
        assert!(
            is_qualified_name("Example.com/x")[0]
                .starts_with("prefix part a lowercase RFC 1123 subdomain")
        );
        assert!(
            is_qualified_name(&format!("x/{}", "a".repeat(64)))
                .contains(&"name part must be no more than 63 characters".to_string())
        );
        assert!(is_valid_label_value("").is_empty());
        assert!(is_valid_label_value("v1.2_3-a").is_empty());
        assert!(!is_valid_label_value("-bad").is_empty());
        assert!(is_config_map_key("app.properties").is_empty());
        assert!(!is_config_map_key("a/b").is_empty());
        assert_eq!(is_config_map_key(".."), ["must not be '..'"]);
        assert!(is_valid_port_name("http").is_empty());
        assert!(!is_valid_port_name("8080").is_empty());
        assert!(!is_valid_port_name("a-very-long-port-name").is_empty());
        assert_eq!(name_errors("Service", "1abc", false).len(), 1);
        assert!(name_errors("Pod", "web-", true).is_empty());
    }

    #[test]
    fn metadata_rules() {
        let errors = validate(
            "ConfigMap",
            &json!({"metadata": {"namespace": "default"}}),
            None,
        );
        assert_eq!(
            find(&errors, "metadata.name").message,
            "name or generateName is required"
        );
        assert!(
            validate(
                "ConfigMap",
                &json!({"metadata": {"generateName": "cfg-", "namespace": "default"}}),
                None
            )
            .is_empty()
        );

        let errors = validate(
            "ConfigMap",
            &json!({"metadata": {"name": "Bad_Name", "namespace": "Default"}}),
            None,
        );
        assert_eq!(
            find(&errors, "metadata.name").error_type,
            FieldErrorType::Invalid
        );
        assert_eq!(
            find(&errors, "metadata.name").bad_value,
            Some(json!("Bad_Name"))
        );
        assert!(
            find(&errors, "metadata.namespace")
                .message
                .contains("RFC 1123 label")
        );

        let errors = validate(
            "ConfigMap",
            &json!({"metadata": {"name": "x", "labels": {"bad key!": "v", "ok": "bad value!", "fine": ""}}}),
            None,
        );
        assert_eq!(
            errors
                .iter()
                .filter(|e| e.field == "metadata.labels")
                .count(),
            2,
            "{errors:#?}"
        );

        let big = "x".repeat(MAX_ANNOTATIONS_BYTES);
        let errors = validate(
            "ConfigMap",
            &json!({"metadata": {"name": "x", "annotations": {"a": big}}}),
            None,
        );
        assert_eq!(
            find(&errors, "metadata.annotations").error_type,
            FieldErrorType::TooLong
        );

        let errors = validate("Namespace", &json!({"metadata": {"name": "a.b"}}), None);
        assert_eq!(
            find(&errors, "metadata.name").message,
            "must not contain dots"
        );
        assert!(
            validate(
                "Node",
                &json!({"metadata": {"name": "node-1.example.com"}}),
                None
            )
            .is_empty()
        );

        let errors = validate(
            "ConfigMap",
            &json!({"metadata": {"name": "x", "finalizers": ["a/b/c"], "ownerReferences": [
                {"apiVersion": "v1", "kind": "A", "name": "a", "uid": "1", "controller": true},
                {"apiVersion": "v1", "kind": "B", "name": "b", "uid": "", "controller": true}
            ]}}),
            None,
        );
        assert!(fields(&errors).contains(&"metadata.finalizers[0]"));
        assert!(fields(&errors).contains(&"metadata.ownerReferences[1].uid"));
        assert!(
            find(&errors, "metadata.ownerReferences")
                .message
                .starts_with("Only one reference can have Controller set to true")
        );
    }

    #[test]
    fn metadata_is_immutable_on_update() {
        let old = json!({"metadata": {"name": "x", "namespace": "default", "uid": "u1", "creationTimestamp": "2024-01-01T00:00:00Z"}});
        let new = json!({"metadata": {"name": "x", "namespace": "default", "uid": "u2", "creationTimestamp": "2024-01-02T00:00:00Z"}});
        let errors = validate("ConfigMap", &new, Some(&old));
        assert_eq!(find(&errors, "metadata.uid").message, FIELD_IMMUTABLE);
        assert!(fields(&errors).contains(&"metadata.creationTimestamp"));
        let new = json!({"metadata": {"name": "x", "namespace": "default"}});
        assert!(validate("ConfigMap", &new, Some(&old)).is_empty());
        assert_eq!(
            validate_object_meta_update(&json!({"name": "y"}), &json!({"name": "x"}))[0].field,
            "metadata.name"
        );
    }

    #[test]
    fn mistyped_fields_are_reported_at_their_path() {
        let errors = validate(
            "Deployment",
            &deployment(json!({"replicas": "three"})),
            None,
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "spec.replicas");
        assert_eq!(errors[0].bad_value, Some(json!("three")));
        let errors = validate(
            "Pod",
            &pod(json!({"containers": [{"name": "c", "image": 5}]})),
            None,
        );
        assert_eq!(errors[0].field, "spec.containers[0].image");
        let errors = validate(
            "Secret",
            &json!({"metadata": {"name": "s"}, "data": {"k": "not base64!"}}),
            None,
        );
        assert_eq!(errors[0].field, "data.k");
    }

    #[test]
    fn valid_objects_pass() {
        let pod = pod(json!({
            "restartPolicy": "Always",
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{
                "name": "web", "image": "nginx:1.27", "imagePullPolicy": "IfNotPresent",
                "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}],
                "env": [{"name": "A", "value": "1"}, {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "0.5", "memory": "1Gi"}},
                "livenessProbe": {"httpGet": {"path": "/", "port": "http"}, "successThreshold": 1},
                "readinessProbe": {"tcpSocket": {"port": 80}}
            }],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        }));
        assert_eq!(validate("Pod", &pod, None), vec![]);
        assert_eq!(
            validate("Deployment", &deployment(valid_deployment_spec()), None),
            vec![]
        );
        let svc = service(
            json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}),
        );
        assert_eq!(validate("Service", &svc, None), vec![]);
    }

    #[test]
    fn pod_container_rules() {
        let errors = validate("Pod", &pod(json!({"containers": []})), None);
        assert_eq!(
            find(&errors, "spec.containers").error_type,
            FieldErrorType::Required
        );
        let errors = validate("Pod", &pod(json!({})), None);
        assert!(fields(&errors).contains(&"spec.containers"));

        let errors = validate(
            "Pod",
            &pod(json!({"containers": [
                {"name": "web", "image": ""},
                {"name": "web", "image": "nginx "},
                {"name": "Bad_Name", "image": "x", "imagePullPolicy": "Sometimes", "ports": [
                    {"containerPort": 70000, "protocol": "HTTP", "name": "http"},
                    {"containerPort": 0, "name": "http", "hostPort": 99999}
                ]}
            ], "restartPolicy": "Sometimes", "dnsPolicy": "Bogus"})),
            None,
        );
        assert_eq!(
            find(&errors, "spec.containers[0].image").error_type,
            FieldErrorType::Required
        );
        assert_eq!(
            find(&errors, "spec.containers[1].name").error_type,
            FieldErrorType::Duplicate
        );
        assert_eq!(
            find(&errors, "spec.containers[1].image").message,
            "must not have leading or trailing whitespace"
        );
        assert!(
            find(&errors, "spec.containers[2].name")
                .message
                .contains("RFC 1123 label")
        );
        assert_eq!(
            find(&errors, "spec.containers[2].imagePullPolicy").error_type,
            FieldErrorType::NotSupported
        );
        assert_eq!(
            find(&errors, "spec.containers[2].ports[0].containerPort").message,
            PORT_RANGE
        );
        assert_eq!(
            find(&errors, "spec.containers[2].ports[0].protocol").message,
            "supported values: \"SCTP\", \"TCP\", \"UDP\""
        );
        assert_eq!(
            find(&errors, "spec.containers[2].ports[1].name").error_type,
            FieldErrorType::Duplicate
        );
        assert_eq!(
            find(&errors, "spec.containers[2].ports[1].containerPort").error_type,
            FieldErrorType::Required
        );
        assert!(fields(&errors).contains(&"spec.containers[2].ports[1].hostPort"));
        assert_eq!(
            find(&errors, "spec.restartPolicy").to_string(),
            "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\""
        );
        assert!(fields(&errors).contains(&"spec.dnsPolicy"));
    }

    #[test]
    fn pod_volumes_env_and_probes() {
        let errors = validate(
            "Pod",
            &pod(json!({
                "volumes": [{"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}, "configMap": {"name": "x"}}, {"name": "b"}],
                "containers": [{
                    "name": "c", "image": "x",
                    "volumeMounts": [{"name": "missing", "mountPath": "/m"}, {"name": "a", "mountPath": "/m"}],
                    "env": [{"name": "", "value": "x"}, {"name": "A=B"}, {"name": "C", "value": "v", "valueFrom": {"fieldRef": {"fieldPath": "x"}, "secretKeyRef": {"key": "k", "name": "s"}}}],
                    "livenessProbe": {"periodSeconds": -1, "successThreshold": 2},
                    "readinessProbe": {"exec": {"command": ["true"]}, "httpGet": {"port": 0}}
                }]
            })),
            None,
        );
        assert_eq!(
            find(&errors, "spec.volumes[1].name").error_type,
            FieldErrorType::Duplicate
        );
        assert_eq!(
            find(&errors, "spec.volumes[1].emptyDir").message,
            "may not specify more than 1 volume type"
        );
        assert_eq!(
            find(&errors, "spec.volumes[2]").message,
            "must specify a volume type"
        );
        let not_found = find(&errors, "spec.containers[0].volumeMounts[0].name");
        assert_eq!(
            (not_found.error_type, not_found.body()),
            (
                FieldErrorType::NotFound,
                "Not found: \"missing\"".to_string()
            )
        );
        assert_eq!(
            find(&errors, "spec.containers[0].volumeMounts[1].mountPath").message,
            "must be unique"
        );
        assert_eq!(
            find(&errors, "spec.containers[0].env[0].name").error_type,
            FieldErrorType::Required
        );
        assert!(fields(&errors).contains(&"spec.containers[0].env[1].name"));
        assert_eq!(
            errors
                .iter()
                .filter(|e| e.field == "spec.containers[0].env[2].valueFrom")
                .count(),
            2,
            "value and valueFrom, and two sources: {errors:#?}"
        );
        assert_eq!(
            find(&errors, "spec.containers[0].livenessProbe").message,
            "must specify a handler type"
        );
        assert!(fields(&errors).contains(&"spec.containers[0].livenessProbe.periodSeconds"));
        assert_eq!(
            find(&errors, "spec.containers[0].livenessProbe.successThreshold").message,
            "must be 1"
        );
        assert_eq!(
            find(&errors, "spec.containers[0].readinessProbe.httpGet").error_type,
            FieldErrorType::Forbidden
        );
        assert!(fields(&errors).contains(&"spec.containers[0].readinessProbe.httpGet.port"));
    }

    #[test]
    fn pod_resources() {
        let errors = validate(
            "Pod",
            &pod(
                json!({"containers": [{"name": "c", "image": "x", "resources": {
                    "requests": {"cpu": "2", "memory": "1Gi", "nvidia.com/gpu": "1", "ephemeral-storage": "-1"},
                    "limits": {"cpu": "1500m", "memory": "1024Mi", "nvidia.com/gpu": "2", "example.com/foo": "12x"}
                }}]}),
            ),
            None,
        );
        let requests: Vec<&str> = errors
            .iter()
            .filter(|e| e.field == "spec.containers[0].resources.requests")
            .map(|e| e.message.as_str())
            .collect();
        assert!(
            requests.contains(&"must be less than or equal to cpu limit of 1500m"),
            "{errors:#?}"
        );
        assert!(
            requests.contains(&"must be equal to nvidia.com/gpu limit of 2"),
            "{errors:#?}"
        );
        assert_eq!(requests.len(), 2, "1Gi == 1024Mi: {errors:#?}");
        assert_eq!(
            find(
                &errors,
                "spec.containers[0].resources.requests[ephemeral-storage]"
            )
            .message,
            NON_NEGATIVE
        );
        assert_eq!(
            find(
                &errors,
                "spec.containers[0].resources.limits[example.com/foo]"
            )
            .message,
            QUANTITY_FORMAT_ERROR
        );
    }

    #[test]
    fn quantities() {
        let q = |s: &str| ParsedQuantity::parse(s).unwrap();
        assert_eq!(q("100m").cmp(&q("0.1")), std::cmp::Ordering::Equal);
        assert!(q("1Gi") > q("1G"));
        assert_eq!(q("1Gi").cmp(&q("1073741824")), std::cmp::Ordering::Equal);
        assert_eq!(q("1e3").cmp(&q("1k")), std::cmp::Ordering::Equal);
        assert_eq!(q("1E3").cmp(&q("1000")), std::cmp::Ordering::Equal);
        assert_eq!(q("1E").cmp(&q("1000P")), std::cmp::Ordering::Equal);
        assert!(q("-1") < q("0"));
        assert!(q("500u") < q("1m"));
        assert!(q(".5") > q("499m"));
        assert_eq!(q("2Ei").as_f64(), 2f64.powi(61));
        for bad in ["", "m", "1.2.3", "1x", "1Ki2", "1e", "--1", "1 m"] {
            assert!(
                ParsedQuantity::parse(bad).is_err(),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn tolerations_rules() {
        let errors = validate(
            "Pod",
            &pod(
                json!({"containers": [{"name": "c", "image": "x"}], "tolerations": [
                    {"operator": "Equal", "value": "x"},
                    {"key": "k", "operator": "Exists", "value": "v"},
                    {"key": "k", "operator": "Maybe"},
                    {"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5},
                    {"key": "k", "effect": "Sometimes"}
                ]}),
            ),
            None,
        );
        assert!(
            find(&errors, "spec.tolerations[0].operator")
                .message
                .starts_with("operator must be Exists when `key` is empty")
        );
        assert_eq!(
            find(&errors, "spec.tolerations[1].operator").message,
            "value must be empty when `operator` is 'Exists'"
        );
        assert_eq!(
            find(&errors, "spec.tolerations[2].operator").error_type,
            FieldErrorType::NotSupported
        );
        assert_eq!(
            find(&errors, "spec.tolerations[3].effect").message,
            "effect must be 'NoExecute' when `tolerationSeconds` is set"
        );
        assert_eq!(
            find(&errors, "spec.tolerations[4].effect").error_type,
            FieldErrorType::NotSupported
        );
    }

    #[test]
    fn pod_update_rules() {
        let old = pod(json!({
            "containers": [{"name": "c", "image": "nginx:1", "ports": [{"containerPort": 80}]}],
            "initContainers": [{"name": "i", "image": "busybox:1"}],
            "activeDeadlineSeconds": 100,
            "tolerations": [{"key": "a", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}]
        }));
        let mut new = old.clone();
        new["metadata"]["labels"] = json!({"changed": "yes"});
        new["spec"]["containers"][0]["image"] = json!("nginx:2");
        new["spec"]["initContainers"][0]["image"] = json!("busybox:2");
        new["spec"]["activeDeadlineSeconds"] = json!(50);
        new["spec"]["tolerations"] = json!([
            {"key": "a", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
            {"key": "b", "operator": "Exists"}
        ]);
        assert_eq!(validate("Pod", &new, Some(&old)), vec![]);

        let mut changed = old.clone();
        changed["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(81);
        let errors = validate("Pod", &changed, Some(&old));
        let error = find(&errors, "spec");
        assert_eq!(error.error_type, FieldErrorType::Forbidden);
        assert!(error.message.starts_with(
            "pod updates may not change fields other than `spec.containers[*].image`"
        ));

        let mut changed = old.clone();
        changed["spec"]["activeDeadlineSeconds"] = json!(200);
        assert_eq!(
            find(
                &validate("Pod", &changed, Some(&old)),
                "spec.activeDeadlineSeconds"
            )
            .message,
            "must be less than or equal to previous value"
        );

        let mut changed = old.clone();
        changed["spec"]["tolerations"] = json!([]);
        assert!(fields(&validate("Pod", &changed, Some(&old))).contains(&"spec.tolerations[0]"));

        let mut changed = old.clone();
        changed["spec"]["nodeName"] = json!("node-1");
        assert!(fields(&validate("Pod", &changed, Some(&old))).contains(&"spec"));
    }

    #[test]
    fn deployment_rules() {
        let mut spec = valid_deployment_spec();
        spec["replicas"] = json!(-1);
        spec["template"]["metadata"]["labels"] = json!({"app": "other"});
        spec["template"]["spec"]["restartPolicy"] = json!("Never");
        spec["revisionHistoryLimit"] = json!(-2);
        spec["minReadySeconds"] = json!(10);
        spec["progressDeadlineSeconds"] = json!(10);
        spec["strategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}});
        let errors = validate("Deployment", &deployment(spec), None);
        assert_eq!(find(&errors, "spec.replicas").message, NON_NEGATIVE);
        assert_eq!(
            find(&errors, "spec.template.metadata.labels").message,
            "`selector` does not match template `labels`"
        );
        assert_eq!(
            find(&errors, "spec.template.spec.restartPolicy").message,
            "supported values: \"Always\""
        );
        assert!(fields(&errors).contains(&"spec.revisionHistoryLimit"));
        assert_eq!(
            find(&errors, "spec.progressDeadlineSeconds").message,
            "must be greater than minReadySeconds"
        );
        assert_eq!(
            find(&errors, "spec.strategy.rollingUpdate.maxUnavailable").message,
            "may not be 0 when `maxSurge` is 0"
        );

        let mut spec = valid_deployment_spec();
        spec["strategy"] = json!({"type": "Recreate", "rollingUpdate": {"maxSurge": 1}});
        let errors = validate("Deployment", &deployment(spec), None);
        assert_eq!(
            find(&errors, "spec.strategy.rollingUpdate").error_type,
            FieldErrorType::Forbidden
        );

        let mut spec = valid_deployment_spec();
        spec["strategy"] =
            json!({"type": "Blue", "rollingUpdate": {"maxSurge": "x%", "maxUnavailable": "150%"}});
        let errors = validate("Deployment", &deployment(spec), None);
        assert!(fields(&errors).contains(&"spec.strategy.type"));
        assert!(
            find(&errors, "spec.strategy.rollingUpdate.maxSurge")
                .message
                .starts_with("a valid percent string")
        );
        assert_eq!(
            find(&errors, "spec.strategy.rollingUpdate.maxUnavailable").message,
            "must not be greater than 100%"
        );

        let mut spec = valid_deployment_spec();
        spec.as_object_mut().unwrap().remove("selector");
        let errors = validate("Deployment", &deployment(spec), None);
        assert_eq!(
            find(&errors, "spec.selector").error_type,
            FieldErrorType::Required
        );

        let mut spec = valid_deployment_spec();
        spec["selector"] = json!({});
        let errors = validate("Deployment", &deployment(spec), None);
        assert_eq!(
            find(&errors, "spec.selector").message,
            "empty selector is invalid for deployment"
        );

        let mut spec = valid_deployment_spec();
        spec["selector"] = json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]});
        assert_eq!(validate("Deployment", &deployment(spec), None), vec![]);

        let mut spec = valid_deployment_spec();
        spec["selector"] = json!({"matchExpressions": [
            {"key": "app", "operator": "In"}, {"key": "x", "operator": "Exists", "values": ["y"]}, {"key": "z", "operator": "Near"}
        ]});
        let errors = validate("Deployment", &deployment(spec), None);
        assert_eq!(
            find(&errors, "spec.selector.matchExpressions[0].values").error_type,
            FieldErrorType::Required
        );
        assert_eq!(
            find(&errors, "spec.selector.matchExpressions[1].values").error_type,
            FieldErrorType::Forbidden
        );
        assert_eq!(
            find(&errors, "spec.selector.matchExpressions[2].operator").message,
            "not a valid selector operator"
        );

        let errors = validate(
            "Deployment",
            &deployment(json!({"selector": {"matchLabels": {"a": "b"}}})),
            None,
        );
        assert!(fields(&errors).contains(&"spec.template"));
    }

    #[test]
    fn workload_selectors_are_immutable() {
        let old = deployment(valid_deployment_spec());
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(5);
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:2");
        assert_eq!(validate("Deployment", &new, Some(&old)), vec![]);
        new["spec"]["selector"] = json!({"matchLabels": {"app": "web", "tier": "front"}});
        let errors = validate("Deployment", &new, Some(&old));
        assert_eq!(find(&errors, "spec.selector").message, FIELD_IMMUTABLE);

        let mut old = old;
        old["kind"] = json!("ReplicaSet");
        new["kind"] = json!("ReplicaSet");
        let errors = validate("ReplicaSet", &new, Some(&old));
        assert_eq!(find(&errors, "spec.selector").message, FIELD_IMMUTABLE);
        old["spec"]["replicas"] = json!(-3);
        assert!(fields(&validate("ReplicaSet", &old, None)).contains(&"spec.replicas"));
    }

    #[test]
    fn service_rules() {
        let errors = validate("Service", &service(json!({"type": "ClusterIP"})), None);
        assert_eq!(
            find(&errors, "spec.ports").error_type,
            FieldErrorType::Required
        );
        assert!(validate("Service", &service(json!({"clusterIP": "None"})), None).is_empty());
        assert!(
            validate(
                "Service",
                &service(json!({"type": "ExternalName", "externalName": "db.example.com"})),
                None
            )
            .is_empty()
        );
        let errors = validate("Service", &service(json!({"type": "ExternalName"})), None);
        assert_eq!(
            find(&errors, "spec.externalName").error_type,
            FieldErrorType::Required
        );

        let errors = validate(
            "Service",
            &service(json!({
                "type": "ClusterIP",
                "clusterIP": "10.96.0.300",
                "ports": [
                    {"port": 80, "nodePort": 30080},
                    {"name": "Bad", "port": 0, "protocol": "HTTP", "targetPort": "http_port"},
                    {"name": "b", "port": 443},
                    {"name": "b", "port": 443}
                ],
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 90000}},
                "externalTrafficPolicy": "Local",
                "ipFamilies": ["IPv6"],
                "ipFamilyPolicy": "Sometimes"
            })),
            None,
        );
        assert_eq!(
            find(&errors, "spec.clusterIP").bad_value,
            Some(json!("10.96.0.300"))
        );
        assert_eq!(
            find(&errors, "spec.ports[0].name").error_type,
            FieldErrorType::Required
        );
        assert_eq!(
            find(&errors, "spec.ports[0].nodePort").message,
            "may not be used when `type` is 'ClusterIP'"
        );
        assert!(fields(&errors).contains(&"spec.ports[1].name"));
        assert_eq!(find(&errors, "spec.ports[1].port").message, PORT_RANGE);
        assert!(fields(&errors).contains(&"spec.ports[1].protocol"));
        assert!(fields(&errors).contains(&"spec.ports[1].targetPort"));
        assert_eq!(
            find(&errors, "spec.ports[3].name").error_type,
            FieldErrorType::Duplicate
        );
        assert_eq!(
            find(&errors, "spec.ports[3]").error_type,
            FieldErrorType::Duplicate
        );
        assert_eq!(
            find(
                &errors,
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
            )
            .message,
            "must be greater than 0 and less than 86400"
        );
        assert_eq!(
            find(&errors, "spec.externalTrafficPolicy").message,
            "may only be set for externally-accessible services"
        );
        assert_eq!(
            find(&errors, "spec.ipFamilies[0]").message,
            "not configured on this cluster"
        );
        assert!(fields(&errors).contains(&"spec.ipFamilyPolicy"));

        let errors = validate(
            "Service",
            &service(
                json!({"type": "NodePort", "clusterIP": "None", "ports": [{"port": 80, "nodePort": 30080}],
                "sessionAffinity": "None", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10}}, "externalTrafficPolicy": "Local"}),
            ),
            None,
        );
        assert_eq!(
            find(&errors, "spec.clusterIP").message,
            "may not be set to 'None' for NodePort services"
        );
        assert_eq!(
            find(&errors, "spec.sessionAffinityConfig").error_type,
            FieldErrorType::Forbidden
        );
        assert!(!fields(&errors).contains(&"spec.externalTrafficPolicy"));
        assert!(!fields(&errors).contains(&"spec.ports[0].nodePort"));

        let errors = validate(
            "Service",
            &service(json!({"type": "Magic", "ports": [{"port": 80}]})),
            None,
        );
        assert_eq!(
            find(&errors, "spec.type").error_type,
            FieldErrorType::NotSupported
        );
        assert_eq!(
            validate(
                "Service",
                &json!({"metadata": {"name": "1web"}, "spec": {"clusterIP": "None"}}),
                None
            )[0]
            .field,
            "metadata.name"
        );
    }

    #[test]
    fn service_cluster_ip_is_immutable() {
        let old = service(
            json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ports": [{"port": 80}]}),
        );
        let mut new = old.clone();
        assert_eq!(validate("Service", &new, Some(&old)), vec![]);
        new["spec"]["clusterIP"] = json!("10.96.0.11");
        new["spec"]["clusterIPs"] = json!(["10.96.0.11"]);
        let errors = validate("Service", &new, Some(&old));
        assert_eq!(
            find(&errors, "spec.clusterIPs[0]").message,
            "may not change once set"
        );
        let mut omitted = old.clone();
        omitted["spec"]
            .as_object_mut()
            .unwrap()
            .retain(|k, _| k == "ports");
        assert_eq!(validate("Service", &omitted, Some(&old)), vec![]);
        let external = service(json!({"type": "ExternalName", "externalName": "x.example.com"}));
        assert_eq!(validate("Service", &external, Some(&old)), vec![]);
    }

    #[test]
    fn config_map_and_secret_rules() {
        let errors = validate(
            "ConfigMap",
            &json!({"metadata": {"name": "c"}, "data": {"a/b": "x", "dup": "1"}, "binaryData": {"dup": "MQ=="}}),
            None,
        );
        assert!(fields(&errors).contains(&"data[a/b]"));
        assert_eq!(
            find(&errors, "data[dup]").message,
            "duplicate of key present in binaryData"
        );
        assert_eq!(
            find(&errors, "binaryData[dup]").message,
            "duplicate of key present in data"
        );

        let errors = validate(
            "Secret",
            &json!({"metadata": {"name": "s"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}}),
            None,
        );
        assert_eq!(fields(&errors), ["data[tls.key]"]);
        let ok = json!({"metadata": {"name": "s"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}, "stringData": {"tls.key": "k"}});
        assert_eq!(validate("Secret", &ok, None), vec![]);
        let errors = validate(
            "Secret",
            &json!({"metadata": {"name": "s"}, "type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": "{nope"}}),
            None,
        );
        assert_eq!(
            find(&errors, "data[.dockerconfigjson]").bad_value,
            Some(json!("<secret contents redacted>"))
        );
        let errors = validate(
            "Secret",
            &json!({"metadata": {"name": "s"}, "type": "kubernetes.io/basic-auth"}),
            None,
        );
        assert_eq!(fields(&errors), ["data[username]", "data[password]"]);
        let errors = validate(
            "Secret",
            &json!({"metadata": {"name": "s"}, "stringData": {"bad key": "v"}}),
            None,
        );
        assert!(fields(&errors).contains(&"stringData[bad key]"));
    }

    #[test]
    fn immutable_config_maps_and_secrets() {
        let old = json!({"metadata": {"name": "c"}, "immutable": true, "data": {"a": "1"}});
        let mut new = old.clone();
        assert_eq!(validate("ConfigMap", &new, Some(&old)), vec![]);
        new["data"]["a"] = json!("2");
        new["immutable"] = json!(false);
        let errors = validate("ConfigMap", &new, Some(&old));
        assert_eq!(fields(&errors), ["immutable", "data"]);
        assert_eq!(errors[0].message, IMMUTABLE_WHEN_SET);

        let old = json!({"metadata": {"name": "s"}, "type": "Opaque", "immutable": true, "data": {"a": "MQ=="}});
        let mut new = old.clone();
        new["metadata"]["labels"] = json!({"x": "y"});
        assert_eq!(validate("Secret", &new, Some(&old)), vec![]);
        new["stringData"] = json!({"a": "2"});
        new["type"] = json!("kubernetes.io/tls");
        let errors = validate("Secret", &new, Some(&old));
        assert!(fields(&errors).contains(&"data"));
        assert_eq!(find(&errors, "type").message, FIELD_IMMUTABLE);
    }

    #[test]
    fn endpoint_slice_rules() {
        let valid = json!({"metadata": {"name": "web-abc"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "nodeName": "n1"}],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]});
        assert_eq!(validate("EndpointSlice", &valid, None), vec![]);
        let endpoints: Vec<Value> = (0..1001)
            .map(|_| json!({"addresses": ["10.0.0.1"]}))
            .collect();
        let errors = validate(
            "EndpointSlice",
            &json!({"metadata": {"name": "s"}, "addressType": "IPv4", "endpoints": endpoints,
                "ports": [{"name": "p", "port": 0, "protocol": "HTTP"}, {"name": "p"}]}),
            None,
        );
        let too_many = find(&errors, "endpoints");
        assert_eq!(
            (too_many.error_type, too_many.bad_value.clone()),
            (FieldErrorType::TooMany, Some(json!(1001)))
        );
        assert!(fields(&errors).contains(&"ports[0].port"));
        assert!(fields(&errors).contains(&"ports[0].protocol"));
        assert_eq!(
            find(&errors, "ports[1].name").error_type,
            FieldErrorType::Duplicate
        );

        let errors = validate(
            "EndpointSlice",
            &json!({"metadata": {"name": "s"}, "addressType": "IPv5", "endpoints": [{"addresses": []}]}),
            None,
        );
        assert_eq!(
            find(&errors, "addressType").error_type,
            FieldErrorType::NotSupported
        );
        assert_eq!(
            find(&errors, "endpoints[0].addresses").message,
            "must contain at least 1 address"
        );
        let errors = validate(
            "EndpointSlice",
            &json!({"metadata": {"name": "s"}, "addressType": "IPv4", "endpoints": [{"addresses": ["fe80::1", "10.0.0.1"]}]}),
            None,
        );
        assert_eq!(fields(&errors), ["endpoints[0].addresses[0]"]);
        let mut changed = valid.clone();
        changed["addressType"] = json!("IPv6");
        changed["endpoints"] = json!([]);
        assert_eq!(
            fields(&validate("EndpointSlice", &changed, Some(&valid))),
            ["addressType"]
        );
    }

    #[test]
    fn node_namespace_event_lease_rules() {
        let errors = validate(
            "Node",
            &json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.0.0/33", "taints": [
                {"key": "a", "effect": "NoSchedule"}, {"key": "a", "effect": "NoSchedule"}, {"key": "b", "effect": "Never"}
            ]}}),
            None,
        );
        assert!(fields(&errors).contains(&"spec.podCIDR"));
        assert_eq!(
            find(&errors, "spec.taints[1]").message,
            "taints must be unique by key and effect pair"
        );
        assert_eq!(
            find(&errors, "spec.taints[2].effect").error_type,
            FieldErrorType::NotSupported
        );
        let old = json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.0.0/24"}});
        let new = json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"}});
        assert_eq!(
            fields(&validate("Node", &new, Some(&old))),
            ["spec.podCIDR"]
        );

        let errors = validate(
            "Namespace",
            &json!({"metadata": {"name": "team-a"}, "spec": {"finalizers": ["kubernetes", "custom"]}}),
            None,
        );
        assert_eq!(fields(&errors), ["spec.finalizers[1]"]);

        let event = |ns: &str, involved: Value| json!({"metadata": {"name": "e.1", "namespace": ns}, "involvedObject": involved});
        assert!(
            validate(
                "Event",
                &event(
                    "default",
                    json!({"kind": "Pod", "namespace": "default", "name": "p"})
                ),
                None
            )
            .is_empty()
        );
        assert!(
            validate(
                "Event",
                &event("default", json!({"kind": "Node", "name": "n1"})),
                None
            )
            .is_empty()
        );
        let errors = validate(
            "Event",
            &event(
                "team-a",
                json!({"kind": "Pod", "namespace": "default", "name": "p"}),
            ),
            None,
        );
        assert_eq!(
            find(&errors, "involvedObject.namespace").message,
            "does not match event.namespace"
        );

        let errors = validate(
            "Lease",
            &json!({"metadata": {"name": "n1", "namespace": "kube-node-lease"}, "spec": {"leaseDurationSeconds": 0, "leaseTransitions": -1}}),
            None,
        );
        assert_eq!(
            fields(&errors),
            ["spec.leaseDurationSeconds", "spec.leaseTransitions"]
        );
    }

    #[test]
    fn unknown_kinds_get_metadata_checks() {
        assert!(validate("Widget", &json!({"metadata": {"name": "ok"}}), None).is_empty());
        assert_eq!(
            fields(&validate(
                "Widget",
                &json!({"metadata": {"name": "Not OK"}}),
                None
            )),
            ["metadata.name"]
        );
        assert_eq!(
            fields(&validate_object_meta("Pod", &json!({"name": 5}))),
            ["metadata.name"]
        );
    }

    #[test]
    fn unknown_fields_for_strict_decoding() {
        let mut obj = pod(json!({
            "containers": [{"name": "c", "imagee": "nginx", "ports": [{"containerPort": 80, "hostPorts": 1}]}],
            "nodeName": null,
            "securityContext": {},
            "bogus": null
        }));
        obj["metadata"]["labels"] = json!({"any-key": "v"});
        obj["extra"] = json!({"x": 1});
        assert_eq!(
            unknown_fields("Pod", &obj),
            [
                "extra",
                "spec.containers[0].imagee",
                "spec.containers[0].ports[0].hostPorts"
            ]
        );
        assert!(unknown_fields("Deployment", &deployment(valid_deployment_spec())).is_empty());
        let svc =
            service(json!({"ports": [{"port": 80, "targetport": 8080}], "type": "ClusterIP"}));
        assert_eq!(
            unknown_fields("Service", &svc),
            ["spec.ports[0].targetport"]
        );
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "eA=="}, "stringdata": {}});
        assert_eq!(unknown_fields("Secret", &secret), ["stringdata"]);
        assert!(unknown_fields("Widget", &json!({"anything": 1})).is_empty());
    }
}
