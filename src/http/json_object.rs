//! Request bodies that are one JSON object of known fields.
//!
//! Every admin route that takes a body reads it the same way: not JSON or
//! not an object is a 400, each key the route does not know is a field
//! error reported together with the route's own field errors (422).

use serde_json::{Map, Value};

use super::error::{ApiError, FieldError};

/// Parses `body` as a JSON object: the object, and an "unknown field"
/// error for each key not in `allowed`.
pub(super) fn parse(
    body: &[u8],
    allowed: &[&str],
) -> Result<(Map<String, Value>, Vec<FieldError>), ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::MalformedBody(e.to_string()))?;
    fields(value, allowed)
}

/// [`parse`] for a value already read.
pub(super) fn fields(
    value: Value,
    allowed: &[&str],
) -> Result<(Map<String, Value>, Vec<FieldError>), ApiError> {
    let Value::Object(map) = value else {
        return Err(ApiError::MalformedBody("expected a JSON object".into()));
    };
    let unknown = map
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .map(|k| FieldError::new(k.clone(), "unknown field"))
        .collect();
    Ok((map, unknown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_field_errors_and_the_object_is_kept() {
        let (map, unknown) = parse(br#"{"a": 1, "b": 2, "c": 3}"#, &["a", "c"]).unwrap();
        assert_eq!(map.len(), 3);
        assert_eq!(unknown.len(), 1);
        assert_eq!(unknown[0].field, "b");
    }

    #[test]
    fn not_an_object_is_a_malformed_body() {
        for body in [&b"[1]"[..], b"3", b"null", b"{", b""] {
            assert!(
                matches!(parse(body, &["a"]), Err(ApiError::MalformedBody(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
