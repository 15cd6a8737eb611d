//! Reading Services and EndpointSlices from multi-document YAML (or JSON) manifests.
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde::Deserialize;

/// The objects of a manifest the datapath cares about.
#[derive(Clone, Debug, Default)]
pub struct DatapathObjects {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
}

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The text is not valid YAML/JSON, or an object doesn't match its kind's schema.
    #[error("document {doc}: {message}")]
    Invalid { doc: usize, message: String },
    /// An object of a kind this reader doesn't handle.
    #[error(
        "document {doc}: unsupported kind {api_version}/{kind} (expected v1/Service or discovery.k8s.io/v1/EndpointSlice)"
    )]
    UnsupportedKind {
        doc: usize,
        api_version: String,
        kind: String,
    },
}

#[derive(Deserialize)]
struct TypeMeta {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

/// Parses every document of `text`. `List` objects are flattened; empty documents skipped.
pub fn parse(text: &str) -> Result<DatapathObjects, ManifestError> {
    let mut out = DatapathObjects::default();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let doc_no = i + 1;
        let value = serde_norway::Value::deserialize(doc).map_err(|e| ManifestError::Invalid {
            doc: doc_no,
            message: e.to_string(),
        })?;
        add(value, doc_no, &mut out)?;
    }
    Ok(out)
}

fn add(
    value: serde_norway::Value,
    doc: usize,
    out: &mut DatapathObjects,
) -> Result<(), ManifestError> {
    if value.is_null() {
        return Ok(());
    }
    let invalid = |e: serde_norway::Error| ManifestError::Invalid {
        doc,
        message: e.to_string(),
    };
    let tm: TypeMeta = serde_norway::from_value(value.clone()).map_err(invalid)?;
    match (tm.api_version.as_str(), tm.kind.as_str()) {
        ("v1", "Service") => out
            .services
            .push(serde_norway::from_value(value).map_err(invalid)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => out
            .slices
            .push(serde_norway::from_value(value).map_err(invalid)?),
        (_, "List") | (_, "ServiceList") | (_, "EndpointSliceList") => {
            if let Some(items) = value.get("items").and_then(|i| i.as_sequence()) {
                for item in items.clone() {
                    add(item, doc, out)?;
                }
            }
        }
        (api_version, kind) => {
            return Err(ManifestError::UnsupportedKind {
                doc,
                api_version: api_version.into(),
                kind: kind.into(),
            });
        }
    }
    Ok(())
}
