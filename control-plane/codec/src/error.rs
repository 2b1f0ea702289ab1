//! Errors and the JSON path used to point at the failing field.

use std::fmt;

/// Everything that can go wrong converting between protobuf and JSON.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The body does not start with the `k8s\0` magic of a Kubernetes protobuf object.
    #[error("not a Kubernetes protobuf object: the body does not start with the k8s\\0 magic")]
    MissingMagic,
    /// No protobuf message is known for this apiVersion and kind (custom resources, unknown
    /// groups): the caller should fall back to JSON (415/406).
    #[error("no protobuf message is known for apiVersion {api_version:?}, kind {kind:?}")]
    UnknownKind {
        /// The object's apiVersion.
        api_version: String,
        /// The object's kind.
        kind: String,
    },
    /// A JSON object to encode lacks apiVersion or kind.
    #[error("the object has no {0} to choose a protobuf message by")]
    MissingTypeMeta(&'static str),
    /// The envelope names a content encoding or content type this codec cannot read.
    #[error("unsupported {what} {value:?} in the runtime.Unknown envelope")]
    Unsupported {
        /// `contentEncoding` or `contentType`.
        what: &'static str,
        /// The value found.
        value: String,
    },
    /// The protobuf bytes are corrupt or do not fit the message type.
    #[error("invalid protobuf at {path} ({message}): {reason}")]
    Wire {
        /// JSON path of the field being read.
        path: String,
        /// Protobuf message type being read.
        message: String,
        /// What is wrong.
        reason: String,
    },
    /// A JSON value does not fit the protobuf field it maps to.
    #[error("invalid JSON at {path} ({message}): {reason}")]
    Json {
        /// JSON path of the offending value.
        path: String,
        /// Protobuf message type being written.
        message: String,
        /// What is wrong.
        reason: String,
    },
    /// A JSON property that has no protobuf field (only reported by the strict encoder).
    #[error("unknown field {path} for protobuf message {message}")]
    UnknownField {
        /// JSON path of the property.
        path: String,
        /// Protobuf message type being written.
        message: String,
    },
    /// A watch stream frame is malformed.
    #[error("invalid watch frame: {0}")]
    Frame(String),
}

/// A JSON path built on the stack while descending: `spec.containers[0].image`.
#[derive(Clone, Copy)]
pub(crate) enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    pub(crate) fn key<'b>(&'b self, k: &'b str) -> Path<'b> {
        Path::Key(self, k)
    }
    pub(crate) fn index(&self, i: usize) -> Path<'_> {
        Path::Index(self, i)
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => f.write_str("$"),
            Path::Key(p, k) => write!(f, "{p}.{k}"),
            Path::Index(p, i) => write!(f, "{p}[{i}]"),
        }
    }
}
