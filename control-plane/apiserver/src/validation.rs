//! `fieldValidation=Strict|Warn|Ignore`: unknown fields in a request body are an error (Strict),
//! a warning header (Warn, the default) or ignored, as upstream's field validation does.

use crate::handlers::{Ctx, Target};
use crate::status::StatusError;
use serde_json::Value;

/// Checks `obj` against its kind's schema; returns the warnings to send.
pub fn field_validation(
    _ctx: &Ctx,
    t: &Target,
    obj: &Value,
    raw: Option<&[u8]>,
) -> Result<Vec<String>, StatusError> {
    let mode = t.param("fieldValidation").unwrap_or("Warn");
    if mode == "Ignore" {
        return Ok(vec![]);
    }
    let mut unknown = skiff_openapi::unknown_fields(&t.res.group, &t.res.version, &t.res.kind, obj);
    if let Some(raw) = raw.filter(|r| r.first() == Some(&b'{')) {
        unknown.extend(skiff_openapi::duplicate_fields(raw));
    }
    if unknown.is_empty() {
        return Ok(vec![]);
    }
    if mode == "Strict" {
        let msg = unknown.join(", ");
        return Err(StatusError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {msg}",
            t.res.kind, t.res.version, t.res.kind
        )));
    }
    Ok(unknown)
}
