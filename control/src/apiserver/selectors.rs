//! Label and field selectors: parsing the query-string forms and matching objects.
//!
//! Label selectors follow `k8s.io/apimachinery/pkg/labels`: `k=v`, `k==v`, `k!=v`,
//! `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, `k>n`, `k<n`, comma-joined (AND).
//! Field selectors support `=`, `==` and `!=` on a per-kind set of fields.
use std::collections::BTreeMap;

use serde_json::Value;

use super::validation;

/// One label requirement.
#[derive(Clone, Debug, PartialEq)]
enum LabelOp {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    GreaterThan(i64),
    LessThan(i64),
}

/// A parsed label selector (all requirements must hold). The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector {
    requirements: Vec<(String, LabelOp)>,
}

/// A parsed field selector.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector {
    requirements: Vec<(String, bool, String)>,
}

impl LabelSelector {
    /// Parses the query-string form; errors are messages for a 400.
    pub fn parse(input: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(input)? {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(part)?);
        }
        Ok(LabelSelector { requirements })
    }

    /// Builds the selector of a `metav1.LabelSelector` object (`matchLabels` + `matchExpressions`).
    pub fn from_object(selector: &Value) -> Result<Self, String> {
        let mut requirements = Vec::new();
        if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in labels {
                requirements.push((
                    k.clone(),
                    LabelOp::Equals(v.as_str().unwrap_or_default().to_string()),
                ));
            }
        }
        if let Some(exprs) = selector.get("matchExpressions").and_then(Value::as_array) {
            for expr in exprs {
                let key = expr
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let values: Vec<String> = expr
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|vs| {
                        vs.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                let op = match expr
                    .get("operator")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                {
                    "In" => LabelOp::In(values),
                    "NotIn" => LabelOp::NotIn(values),
                    "Exists" => LabelOp::Exists,
                    "DoesNotExist" => LabelOp::DoesNotExist,
                    other => {
                        return Err(format!("{other:?} is not a valid label selector operator"));
                    }
                };
                requirements.push((key, op));
            }
        }
        Ok(LabelSelector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object's labels satisfy the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|(key, op)| {
            let value = labels.get(key);
            match op {
                LabelOp::Equals(v) => value == Some(v),
                LabelOp::NotEquals(v) => value != Some(v),
                LabelOp::In(vs) => value.is_some_and(|x| vs.contains(x)),
                LabelOp::NotIn(vs) => value.is_none_or(|x| !vs.contains(x)),
                LabelOp::Exists => value.is_some(),
                LabelOp::DoesNotExist => value.is_none(),
                LabelOp::GreaterThan(n) => value
                    .and_then(|x| x.parse::<i64>().ok())
                    .is_some_and(|x| x > *n),
                LabelOp::LessThan(n) => value
                    .and_then(|x| x.parse::<i64>().ok())
                    .is_some_and(|x| x < *n),
            }
        })
    }

    /// Whether an object (its `metadata.labels`) satisfies the selector.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.is_empty() || self.matches(&labels_of(obj))
    }
}

impl std::fmt::Display for LabelSelector {
    /// The canonical string form (what `Scale.status.selector` carries).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|(k, op)| match op {
                LabelOp::Equals(v) => format!("{k}={v}"),
                LabelOp::NotEquals(v) => format!("{k}!={v}"),
                LabelOp::In(vs) => format!("{k} in ({})", vs.join(",")),
                LabelOp::NotIn(vs) => format!("{k} notin ({})", vs.join(",")),
                LabelOp::Exists => k.clone(),
                LabelOp::DoesNotExist => format!("!{k}"),
                LabelOp::GreaterThan(n) => format!("{k}>{n}"),
                LabelOp::LessThan(n) => format!("{k}<{n}"),
            })
            .collect();
        write!(f, "{}", parts.join(","))
    }
}

/// The labels of an object as a map.
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(input: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!(
                        "unable to parse requirement: unbalanced ')' in {input:?}"
                    ));
                }
            }
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!(
            "unable to parse requirement: unbalanced '(' in {input:?}"
        ));
    }
    parts.push(&input[start..]);
    Ok(parts)
}

fn parse_requirement(part: &str) -> Result<(String, LabelOp), String> {
    let bad = |why: &str| format!("unable to parse requirement: {part:?}: {why}");
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        check_label_key(key).map_err(|e| bad(&e))?;
        return Ok((key.to_string(), LabelOp::DoesNotExist));
    }
    // Set-based: `key in (...)` / `key notin (...)`.
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let key = words[0].trim();
        let rest = words[1].trim_start();
        for (word, negate) in [("notin", true), ("in", false)] {
            if let Some(list) = rest.strip_prefix(word) {
                let list = list.trim();
                if !(list.starts_with('(') && list.ends_with(')')) {
                    continue;
                }
                check_label_key(key).map_err(|e| bad(&e))?;
                let values: Vec<String> = list[1..list.len() - 1]
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                for v in &values {
                    check_label_value(v).map_err(|e| bad(&e))?;
                }
                if values.is_empty() && !negate {
                    return Err(bad(
                        "for 'in', 'notin' operators, values set can't be empty",
                    ));
                }
                let op = if negate {
                    LabelOp::NotIn(values)
                } else {
                    LabelOp::In(values)
                };
                return Ok((key.to_string(), op));
            }
        }
    }
    for (token, kind) in [("!=", 0), ("==", 1), ("=", 1), (">", 2), ("<", 3)] {
        if let Some(idx) = part.find(token) {
            let key = part[..idx].trim();
            let value = part[idx + token.len()..].trim();
            check_label_key(key).map_err(|e| bad(&e))?;
            let op = match kind {
                0 | 1 => {
                    check_label_value(value).map_err(|e| bad(&e))?;
                    if kind == 0 {
                        LabelOp::NotEquals(value.to_string())
                    } else {
                        LabelOp::Equals(value.to_string())
                    }
                }
                _ => {
                    let n: i64 = value.parse().map_err(|_| {
                        bad("for 'Gt', 'Lt' operators, the value must be an integer")
                    })?;
                    if kind == 2 {
                        LabelOp::GreaterThan(n)
                    } else {
                        LabelOp::LessThan(n)
                    }
                }
            };
            return Ok((key.to_string(), op));
        }
    }
    let key = part.trim();
    check_label_key(key).map_err(|e| bad(&e))?;
    Ok((key.to_string(), LabelOp::Exists))
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters.
fn check_label_key(key: &str) -> Result<(), String> {
    match validation::is_qualified_name(key).first() {
        None => Ok(()),
        Some(why) => Err(format!("invalid label key {key:?}: {why}")),
    }
}

fn check_label_value(value: &str) -> Result<(), String> {
    match validation::is_valid_label_value(value).first() {
        None => Ok(()),
        Some(why) => Err(format!("invalid label value {value:?}: {why}")),
    }
}

/// The fields each kind can be selected by, besides `metadata.name` and `metadata.namespace`.
fn selectable_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        "Node" => &["spec.unschedulable"],
        "Namespace" => &["status.phase"],
        "Secret" => &["type"],
        "ReplicaSet" => &["status.replicas"],
        "Service" => &["spec.clusterIP", "spec.type"],
        _ => &[],
    }
}

impl FieldSelector {
    /// Parses `a=b,c!=d` for a kind; unknown fields are an error (400).
    pub fn parse(input: &str, kind: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in split_unescaped(input, ',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (field, negate, value) = if let Some((f, v)) = split_once_unescaped(part, "!=") {
                (f, true, v)
            } else if let Some((f, v)) = split_once_unescaped(part, "==") {
                (f, false, v)
            } else if let Some((f, v)) = split_once_unescaped(part, "=") {
                (f, false, v)
            } else {
                return Err(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ));
            };
            let field = field.trim().to_string();
            if field != "metadata.name"
                && field != "metadata.namespace"
                && !selectable_fields(kind).contains(&field.as_str())
            {
                return Err(format!("field label not supported: {field}"));
            }
            requirements.push((field, negate, unescape(value.trim())));
        }
        Ok(FieldSelector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The name this selector pins (`metadata.name=X`), which narrows a list to one key.
    pub fn pinned_name(&self) -> Option<&str> {
        self.requirements
            .iter()
            .find(|(f, negate, _)| f == "metadata.name" && !negate)
            .map(|(_, _, v)| v.as_str())
    }

    /// Whether an object satisfies the selector.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.requirements.iter().all(|(field, negate, value)| {
            let actual = field_value(obj, field);
            (actual == *value) != *negate
        })
    }
}

/// A field's value as the selector compares it (absent → empty string).
fn field_value(obj: &Value, field: &str) -> String {
    let pointer = if field == "source" {
        "/source/component".to_string()
    } else {
        format!("/{}", field.replace('.', "/"))
    };
    match obj.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Null) | None => {
            // Booleans that default to false select as "false", like the Go field sets.
            if field == "spec.unschedulable" || field == "spec.hostNetwork" {
                "false".into()
            } else {
                String::new()
            }
        }
        Some(other) => other.to_string(),
    }
}

fn split_unescaped(input: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in input.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(&input[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&input[start..]);
    parts
}

fn split_once_unescaped<'a>(input: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    let mut escaped = false;
    for (i, c) in input.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' {
            escaped = true;
            continue;
        }
        if input[i..].starts_with(op) {
            return Some((&input[..i], &input[i + op.len()..]));
        }
    }
    None
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn equality_and_set_based_label_selectors() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let db = labels(&[("app", "db")]);
        let cases = [
            ("app=web", true, false),
            ("app==web", true, false),
            ("app!=web", false, true),
            ("app in (web, api)", true, false),
            ("app notin (web)", false, true),
            ("tier", true, false),
            ("!tier", false, true),
            ("app=web,tier=front", true, false),
            ("tier!=back", true, true),
            ("", true, true),
        ];
        for (selector, matches_web, matches_db) in cases {
            let s = LabelSelector::parse(selector).unwrap();
            assert_eq!(s.matches(&web), matches_web, "{selector} on web");
            assert_eq!(s.matches(&db), matches_db, "{selector} on db");
        }
    }

    #[test]
    fn malformed_label_selectors_are_errors() {
        for bad in [
            "app in (web",
            "a b c",
            "app=we b",
            "-x=1",
            "app in ()",
            "x>y",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn label_selector_object_round_trips_to_a_string() {
        let s = LabelSelector::from_object(&json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]})).unwrap();
        assert_eq!(s.to_string(), "app=web,tier in (a,b)");
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "b")])));
    }

    #[test]
    fn field_selectors_per_kind() {
        let pod = json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let s = FieldSelector::parse(
            "metadata.name=p,spec.nodeName==n1,status.phase!=Pending",
            "Pod",
        )
        .unwrap();
        assert!(s.matches_object(&pod));
        assert_eq!(s.pinned_name(), Some("p"));
        assert!(
            !FieldSelector::parse("spec.nodeName=", "Pod")
                .unwrap()
                .matches_object(&pod)
        );
        assert!(FieldSelector::parse("spec.nodeName=x", "ConfigMap").is_err());
        let event = json!({"involvedObject": {"kind": "Deployment", "name": "web"}, "source": {"component": "c"}});
        assert!(
            FieldSelector::parse(
                "involvedObject.kind=Deployment,involvedObject.name=web,source=c",
                "Event"
            )
            .unwrap()
            .matches_object(&event)
        );
        let node = json!({"spec": {}});
        assert!(
            FieldSelector::parse("spec.unschedulable=false", "Node")
                .unwrap()
                .matches_object(&node)
        );
    }
}
