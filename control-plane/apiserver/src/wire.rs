//! Wire formats: request bodies in JSON, YAML or protobuf by `Content-Type`; responses in JSON,
//! YAML or protobuf by `Accept`, gzip when the client asks; 415/406 for what is not served.

use crate::server::{full, Body};
use crate::status::StatusError;
use hyper::Response;
use serde_json::Value;

pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
/// Largest request body accepted (upstream's limit is 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// The media type of a header value, without parameters.
pub fn media_type(v: &str) -> &str {
    v.split(';').next().unwrap_or("").trim()
}

/// Decodes a create/update body.
pub fn decode_body(content_type: &str, body: &[u8]) -> Result<Value, StatusError> {
    if body.len() > MAX_BODY {
        return Err(StatusError::new(
            413,
            "RequestEntityTooLarge",
            "the request is too large: limit is 3MB",
        ));
    }
    let v: Value = match media_type(content_type) {
        "" | "application/json" | "*/*" => serde_json::from_slice(body).map_err(|e| {
            StatusError::bad_request(format!("the request body is not valid JSON: {e}"))
        })?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => {
            let text = std::str::from_utf8(body).map_err(|e| {
                StatusError::bad_request(format!("the request body is not valid UTF-8: {e}"))
            })?;
            serde_yaml::from_str(text).map_err(|e| {
                StatusError::bad_request(format!("the request body is not valid YAML: {e}"))
            })?
        }
        PROTOBUF => skiff_codec::decode(body).map_err(|e| {
            StatusError::bad_request(format!("the request body is not a valid protobuf object: {e}"))
        })?,
        other => {
            return Err(StatusError::new(
                415,
                "UnsupportedMediaType",
                format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {other:?})"),
            ))
        }
    };
    if !v.is_object() {
        return Err(StatusError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(v)
}

/// The response format chosen from an `Accept` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
    Protobuf,
}

/// Picks the first acceptable format in the client's order; `None` when nothing fits (406).
pub fn negotiate(accept: &str) -> Option<Format> {
    if accept.trim().is_empty() {
        return Some(Format::Json);
    }
    for part in accept.split(',') {
        let mt = media_type(part);
        let params = part.split(';').skip(1).map(str::trim).collect::<Vec<_>>();
        // Table/PartialObjectMetadata are requested through `as=`; those are built as JSON and
        // then encoded like any other object.
        let f = match mt {
            "application/json" | "*/*" | "application/*" => Some(Format::Json),
            "application/yaml" => Some(Format::Yaml),
            PROTOBUF => Some(Format::Protobuf),
            _ => None,
        };
        if let Some(f) = f {
            if params.iter().any(|p| p.starts_with("as=")) && f == Format::Yaml {
                continue;
            }
            return Some(f);
        }
    }
    None
}

/// One frame of a protobuf watch stream (length-prefixed `WatchEvent`).
pub fn watch_frame(kind: &str, obj: &Value) -> Option<Vec<u8>> {
    skiff_codec::encode_watch_event(kind, obj).ok()
}

/// Encodes a response object.
pub fn respond(format: Format, code: u16, v: &Value, gzip: bool) -> Response<Body> {
    let (ct, bytes) = match format {
        Format::Json => ("application/json", serde_json::to_vec(v).expect("json")),
        Format::Yaml => (
            "application/yaml",
            serde_yaml::to_string(v).expect("yaml").into_bytes(),
        ),
        Format::Protobuf => match skiff_codec::encode(v) {
            Ok(b) => (PROTOBUF, b),
            // Kinds the codec does not know (e.g. Table built as JSON) fall back to JSON, which
            // every client accepts after protobuf.
            Err(_) => ("application/json", serde_json::to_vec(v).expect("json")),
        },
    };
    respond_bytes(ct, code, bytes, gzip)
}

/// A response with `bytes` (already encoded as `ct`), gzipped if the client takes it and the
/// body is large.
pub fn respond_bytes(ct: &str, code: u16, bytes: Vec<u8>, gzip: bool) -> Response<Body> {
    let mut b = Response::builder().status(code).header("content-type", ct);
    let body = if gzip && bytes.len() > 128 * 1024 {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = enc.write_all(&bytes);
        b = b.header("content-encoding", "gzip");
        enc.finish().unwrap_or(bytes)
    } else {
        bytes
    };
    b.body(full(body)).expect("response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_client_order() {
        assert_eq!(
            negotiate("application/vnd.kubernetes.protobuf, */*"),
            Some(Format::Protobuf)
        );
        assert_eq!(
            negotiate("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"),
            Some(Format::Json)
        );
        assert_eq!(negotiate("text/html"), None);
        assert!(decode_body("application/yaml", b"a: 1\n").is_ok());
        assert_eq!(decode_body("text/plain", b"{}").unwrap_err().code, 415);
        assert_eq!(
            decode_body("application/json", b"[1]").unwrap_err().code,
            400
        );
    }
}
