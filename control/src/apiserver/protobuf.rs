//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`): the `k8s\0` envelope
//! around a `runtime.Unknown`, whose `raw` bytes are the object's message. client-go's typed
//! clients (e.g. `kubectl create namespace|deployment|service|configmap|secret`) send these.
//!
//! The decoder walks the wire format with the field tables of [`protobuf_schema`] (generated
//! from k8s-pb and k8s-openapi) and yields the object's JSON form. Go's protobuf encoder
//! writes every non-pointer field, so zero values are dropped like `omitempty` would, except
//! for the optional fields where zero is meaningful ([`KEEP_ZERO`], e.g. `replicas: 0`).
use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine;
use serde_json::{Map, Value, json};

use super::protobuf_schema::MESSAGES;
use super::status::{ApiError, ApiResult};

/// One field of a message table.
#[derive(Debug)]
pub struct Field {
    pub tag: u32,
    pub json: &'static str,
    pub kind: Kind,
    pub repeated: bool,
}

/// How a field is encoded.
#[derive(Debug)]
pub enum Kind {
    Str,
    Bytes,
    Bool,
    I32,
    I64,
    U32,
    U64,
    F64,
    F32,
    /// A nested message, by full name (`api.core.v1.PodSpec`).
    Msg(&'static str),
    /// `map<string, V>` (encoded as repeated key/value entries).
    Map(&'static Kind),
    /// `meta.v1.Time`/`MicroTime`: seconds + nanos → RFC 3339.
    Time,
    /// `meta.v1.Duration`: nanoseconds → Go duration string.
    Duration,
    /// `resource.Quantity`: its string form.
    Quantity,
    /// `intstr.IntOrString`: a number or a string.
    IntOrString,
    /// `runtime.RawExtension`/`FieldsV1`: embedded JSON.
    Raw,
}

const MAGIC: &[u8] = b"k8s\0";
const MAX_DEPTH: usize = 64;

/// Optional (pointer) fields whose zero value means something, so it is kept.
const KEEP_ZERO: &[&str] = &[
    "replicas",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "terminationGracePeriodSeconds",
    "activeDeadlineSeconds",
    "automountServiceAccountToken",
    "enableServiceLinks",
    "privileged",
    "readOnlyRootFilesystem",
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "fsGroup",
    "allowPrivilegeEscalation",
    "defaultMode",
    "mode",
    "optional",
    "allocateLoadBalancerNodePorts",
    "immutable",
    "priority",
    "tolerationSeconds",
    "ready",
    "serving",
    "terminating",
    "leaseDurationSeconds",
    "leaseTransitions",
    "gracePeriodSeconds",
    "orphanDependents",
    "blockOwnerDeletion",
    "controller",
];

fn tables() -> &'static HashMap<&'static str, &'static [Field]> {
    static TABLES: OnceLock<HashMap<&'static str, &'static [Field]>> = OnceLock::new();
    TABLES.get_or_init(|| {
        MESSAGES
            .iter()
            .map(|(name, fields)| (*name, *fields))
            .collect()
    })
}

fn bad(message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("protobuf: {message}"))
}

/// The message name of an object kind.
fn message_for(api_version: &str, kind: &str) -> String {
    if kind == "DeleteOptions" {
        return "apimachinery.pkg.apis.meta.v1.DeleteOptions".into();
    }
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = if group.is_empty() {
        "core"
    } else {
        group.split('.').next().unwrap_or(group)
    };
    format!("api.{package}.{version}.{kind}")
}

/// Decodes a protobuf body into the object's JSON form (with `apiVersion` and `kind`).
pub fn decode(bytes: &[u8]) -> ApiResult<Value> {
    let body = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("the body does not start with the k8s\\0 envelope"))?;
    let mut reader = Reader::new(body);
    let (mut api_version, mut kind, mut raw, mut encoding) =
        (String::new(), String::new(), &[][..], String::new());
    while !reader.done() {
        let (tag, wire) = reader.key()?;
        match (tag, wire) {
            (1, 2) => {
                let mut meta = Reader::new(reader.bytes()?);
                while !meta.done() {
                    match meta.key()? {
                        (1, 2) => api_version = utf8(meta.bytes()?)?,
                        (2, 2) => kind = utf8(meta.bytes()?)?,
                        (_, w) => meta.skip(w)?,
                    }
                }
            }
            (2, 2) => raw = reader.bytes()?,
            (3, 2) => encoding = utf8(reader.bytes()?)?,
            (_, w) => reader.skip(w)?,
        }
    }
    if !encoding.is_empty() {
        return Err(ApiError::unsupported_media_type(&format!(
            "application/vnd.kubernetes.protobuf (contentEncoding {encoding})"
        )));
    }
    let name = message_for(&api_version, &kind);
    if !tables().contains_key(name.as_str()) {
        return Err(ApiError::unsupported_media_type(&format!(
            "application/vnd.kubernetes.protobuf for {kind} {api_version}"
        )));
    }
    let mut object = decode_message(&name, raw, 0)?;
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    Ok(object)
}

fn utf8(bytes: &[u8]) -> ApiResult<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| bad("a string field is not valid UTF-8"))
}

fn decode_message(name: &str, bytes: &[u8], depth: usize) -> ApiResult<Value> {
    if depth > MAX_DEPTH {
        return Err(bad("messages nested too deeply"));
    }
    let fields = tables()
        .get(name)
        .ok_or_else(|| bad(format!("no table for message {name}")))?;
    let mut out = Map::new();
    let mut reader = Reader::new(bytes);
    while !reader.done() {
        let (tag, wire) = reader.key()?;
        let Some(field) = fields.iter().find(|f| f.tag == tag) else {
            reader.skip(wire)?;
            continue;
        };
        if let Kind::Map(value_kind) = &field.kind {
            let (key, value) = decode_map_entry(value_kind, reader.bytes()?, depth)?;
            let map = out.entry(field.json).or_insert_with(|| json!({}));
            if let (Some(map), Some(value)) = (map.as_object_mut(), value) {
                map.insert(key, value);
            }
            continue;
        }
        let values = decode_values(&field.kind, wire, &mut reader, depth)?;
        if field.repeated {
            let list = out.entry(field.json).or_insert_with(|| json!([]));
            if let Some(list) = list.as_array_mut() {
                list.extend(values.into_iter().map(|v| v.unwrap_or(Value::Null)));
            }
        } else if let Some(value) = values.into_iter().last() {
            match value {
                Some(value) if !is_zero(&value) || KEEP_ZERO.contains(&field.json) => {
                    out.insert(field.json.to_string(), value);
                }
                _ => {
                    out.remove(field.json);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

/// Scalars at their zero value (what `omitempty` leaves out).
fn is_zero(value: &Value) -> bool {
    match value {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

/// Decodes one field occurrence; packed repeated scalars yield several values. `None` is an
/// absent value (a zero time).
fn decode_values(
    kind: &Kind,
    wire: u8,
    reader: &mut Reader<'_>,
    depth: usize,
) -> ApiResult<Vec<Option<Value>>> {
    let scalar = matches!(
        kind,
        Kind::Bool | Kind::I32 | Kind::I64 | Kind::U32 | Kind::U64 | Kind::F64 | Kind::F32
    );
    if scalar && wire == 2 {
        let mut packed = Reader::new(reader.bytes()?);
        let mut values = Vec::new();
        while !packed.done() {
            let wire = match kind {
                Kind::F64 => 1,
                Kind::F32 => 5,
                _ => 0,
            };
            values.push(Some(decode_scalar(kind, wire, &mut packed)?));
        }
        return Ok(values);
    }
    if scalar {
        return Ok(vec![Some(decode_scalar(kind, wire, reader)?)]);
    }
    if wire != 2 {
        return Err(bad(format!(
            "wire type {wire} where a length-delimited field was expected"
        )));
    }
    let bytes = reader.bytes()?;
    let value = match kind {
        Kind::Str => Some(Value::String(utf8(bytes)?)),
        Kind::Bytes => Some(Value::String(
            base64::engine::general_purpose::STANDARD.encode(bytes),
        )),
        Kind::Msg(name) => Some(decode_message(name, bytes, depth + 1)?),
        Kind::Time => decode_time(bytes)?,
        Kind::Duration => Some(Value::String(go_duration(first_varint(bytes, 1)? as i64))),
        Kind::Quantity => Some(Value::String(first_string(bytes, 1)?)),
        Kind::IntOrString => decode_int_or_string(bytes)?,
        Kind::Raw => {
            let raw = first_bytes(bytes, 1)?;
            if raw.is_empty() {
                None
            } else {
                Some(
                    serde_json::from_slice(&raw)
                        .map_err(|e| bad(format!("embedded object is not JSON: {e}")))?,
                )
            }
        }
        _ => return Err(bad("unexpected field kind")),
    };
    Ok(vec![value])
}

fn decode_scalar(kind: &Kind, wire: u8, reader: &mut Reader<'_>) -> ApiResult<Value> {
    Ok(match (kind, wire) {
        (Kind::Bool, 0) => Value::Bool(reader.varint()? != 0),
        (Kind::I32, 0) => json!(reader.varint()? as i64 as i32),
        (Kind::I64, 0) => json!(reader.varint()? as i64),
        (Kind::U32, 0) => json!(reader.varint()? as u32),
        (Kind::U64, 0) => json!(reader.varint()?),
        (Kind::F64, 1) => json!(f64::from_le_bytes(reader.fixed::<8>()?)),
        (Kind::F32, 5) => json!(f32::from_le_bytes(reader.fixed::<4>()?) as f64),
        _ => {
            return Err(bad(format!(
                "wire type {wire} does not fit a {kind:?} field"
            )));
        }
    })
}

fn decode_map_entry(
    value_kind: &Kind,
    bytes: &[u8],
    depth: usize,
) -> ApiResult<(String, Option<Value>)> {
    let mut reader = Reader::new(bytes);
    let mut key = String::new();
    let mut value = None;
    while !reader.done() {
        match reader.key()? {
            (1, 2) => key = utf8(reader.bytes()?)?,
            (2, wire) => {
                value = decode_values(value_kind, wire, &mut reader, depth)?
                    .into_iter()
                    .last()
                    .flatten()
            }
            (_, wire) => reader.skip(wire)?,
        }
    }
    // A map value that is absent on the wire is the zero value (e.g. an empty string).
    let value = value.or_else(|| match value_kind {
        Kind::Str | Kind::Bytes | Kind::Quantity => Some(json!("")),
        _ => None,
    });
    Ok((key, value))
}

/// `seconds`/`nanos` → RFC 3339; Go's zero time (year 1) and the epoch mean unset.
fn decode_time(bytes: &[u8]) -> ApiResult<Option<Value>> {
    let seconds = first_varint(bytes, 1)? as i64;
    let nanos = first_varint(bytes, 2)? as i64 as i32;
    if seconds <= 0 && nanos == 0 {
        return Ok(None);
    }
    let ts =
        jiff::Timestamp::new(seconds, nanos).map_err(|e| bad(format!("bad timestamp: {e}")))?;
    let format = if nanos == 0 {
        "%Y-%m-%dT%H:%M:%SZ"
    } else {
        "%Y-%m-%dT%H:%M:%S%.6fZ"
    };
    Ok(Some(Value::String(ts.strftime(format).to_string())))
}

fn decode_int_or_string(bytes: &[u8]) -> ApiResult<Option<Value>> {
    let kind = first_varint(bytes, 1)?;
    if kind == 1 {
        let s = first_string(bytes, 3)?;
        return Ok(if s.is_empty() {
            None
        } else {
            Some(Value::String(s))
        });
    }
    let n = first_varint(bytes, 2)? as i64 as i32;
    Ok(if n == 0 { None } else { Some(json!(n)) })
}

/// Go's `time.Duration.String()` for whole and fractional seconds.
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let total = nanos.unsigned_abs();
    let (hours, rest) = (total / 3_600_000_000_000, total % 3_600_000_000_000);
    let (minutes, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let seconds = rest as f64 / 1e9;
    let mut out = sign.to_string();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&format!("{seconds}s"));
    out
}

fn first_varint(bytes: &[u8], tag: u32) -> ApiResult<u64> {
    let mut reader = Reader::new(bytes);
    let mut found = 0;
    while !reader.done() {
        match reader.key()? {
            (t, 0) if t == tag => found = reader.varint()?,
            (_, wire) => reader.skip(wire)?,
        }
    }
    Ok(found)
}

fn first_bytes(bytes: &[u8], tag: u32) -> ApiResult<Vec<u8>> {
    let mut reader = Reader::new(bytes);
    let mut found = Vec::new();
    while !reader.done() {
        match reader.key()? {
            (t, 2) if t == tag => found = reader.bytes()?.to_vec(),
            (_, wire) => reader.skip(wire)?,
        }
    }
    Ok(found)
}

fn first_string(bytes: &[u8], tag: u32) -> ApiResult<String> {
    utf8(&first_bytes(bytes, tag)?)
}

/// A cursor over protobuf wire data.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> ApiResult<u64> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| bad("truncated varint"))?;
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(bad("varint overflows 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(bad("varint too long"))
    }

    fn key(&mut self) -> ApiResult<(u32, u8)> {
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| bad("field number out of range"))?;
        if tag == 0 {
            return Err(bad("field number 0"));
        }
        Ok((tag, (key & 7) as u8))
    }

    fn bytes(&mut self) -> ApiResult<&'a [u8]> {
        let len = usize::try_from(self.varint()?).map_err(|_| bad("length out of range"))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| bad("truncated field"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn fixed<const N: usize>(&mut self) -> ApiResult<[u8; N]> {
        let end = self
            .pos
            .checked_add(N)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| bad("truncated field"))?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..end]);
        self.pos = end;
        Ok(out)
    }

    fn skip(&mut self, wire: u8) -> ApiResult<()> {
        match wire {
            0 => drop(self.varint()?),
            1 => drop(self.fixed::<8>()?),
            2 => drop(self.bytes()?),
            5 => drop(self.fixed::<4>()?),
            other => return Err(bad(format!("unsupported wire type {other}"))),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut out = MAGIC.to_vec();
        out.extend(unknown.encode_to_vec());
        out
    }

    fn meta(name: &str) -> k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            generate_name: Some(String::new()),
            namespace: Some(String::new()),
            creation_timestamp: Some(k8s_pb::apimachinery::pkg::apis::meta::v1::Time {
                seconds: Some(-62135596800),
                nanos: Some(0),
            }),
            labels: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn decodes_a_namespace_like_kubectl_create_sends() {
        let ns = k8s_pb::api::core::v1::Namespace {
            metadata: Some(meta("demo")),
            spec: Some(Default::default()),
            status: Some(Default::default()),
        };
        let obj = decode(&envelope("v1", "Namespace", ns.encode_to_vec())).unwrap();
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo", "labels": {"app": "web"}}, "spec": {}, "status": {}})
        );
    }

    #[test]
    fn decodes_deployments_services_and_secrets() {
        use k8s_pb::api::{apps, core};
        use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
        let deployment = apps::v1::Deployment {
            metadata: Some(meta("d2")),
            spec: Some(apps::v1::DeploymentSpec {
                replicas: Some(0),
                template: Some(core::v1::PodTemplateSpec {
                    metadata: Some(meta("")),
                    spec: Some(core::v1::PodSpec {
                        containers: vec![core::v1::Container {
                            name: Some("nginx".into()),
                            image: Some("nginx".into()),
                            ports: vec![core::v1::ContainerPort {
                                container_port: Some(80),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }],
                        host_network: Some(false),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        };
        let obj = decode(&envelope(
            "apps/v1",
            "Deployment",
            deployment.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(
            obj["spec"]["replicas"], 0,
            "an explicit zero replicas is kept"
        );
        assert_eq!(
            obj["spec"]["template"]["spec"]["containers"][0],
            json!({"name": "nginx", "image": "nginx", "ports": [{"containerPort": 80}]})
        );
        assert!(obj["spec"]["template"]["spec"].get("hostNetwork").is_none());

        let service = core::v1::Service {
            metadata: Some(meta("np")),
            spec: Some(core::v1::ServiceSpec {
                r#type: Some("NodePort".into()),
                cluster_ip: Some(String::new()),
                ports: vec![core::v1::ServicePort {
                    name: Some("80-8080".into()),
                    protocol: Some("TCP".into()),
                    port: Some(80),
                    target_port: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(8080),
                        str_val: Some(String::new()),
                    }),
                    node_port: Some(0),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        };
        let obj = decode(&envelope("v1", "Service", service.encode_to_vec())).unwrap();
        assert_eq!(
            obj["spec"]["ports"][0],
            json!({"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080})
        );
        assert_eq!(obj["spec"]["type"], "NodePort");

        let secret = core::v1::Secret {
            metadata: Some(meta("s")),
            data: [("k".to_string(), b"v".to_vec())].into(),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let obj = decode(&envelope("v1", "Secret", secret.encode_to_vec())).unwrap();
        assert_eq!(obj["data"]["k"], "dg==");
    }

    #[test]
    fn malformed_bodies_are_client_errors() {
        assert_eq!(decode(b"not protobuf").unwrap_err().code, 400);
        let mut truncated = envelope("v1", "Namespace", vec![0x0a, 0x05, 0x0a]);
        assert_eq!(decode(&truncated).unwrap_err().code, 400);
        truncated.truncate(6);
        assert!(decode(&truncated).is_err());
        assert_eq!(
            decode(&envelope("batch/v1", "Job", vec![]))
                .unwrap_err()
                .code,
            415
        );
    }
}
