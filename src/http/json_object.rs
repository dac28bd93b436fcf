//! Request bodies that are one JSON object of known fields.
//!
//! The admin routes that check their fields by hand read a body the same
//! way: not JSON or not an object is a 400, each key the route does not know
//! is a field error reported together with the route's own (422).

use serde_json::{Map, Value};

use super::error::{ApiError, FieldError};

/// Parses `body` as a JSON object: the object, and an "unknown field"
/// error for each key not in `allowed`.
pub(super) fn parse(
    body: &[u8],
    allowed: &[&str],
) -> Result<(Map<String, Value>, Vec<FieldError>), ApiError> {
    fields(read(body)?, allowed)
}

/// [`parse`] for a body that may be left out: an empty body and `null` are
/// read as `{}`, so a route's required fields are then reported as missing.
pub(super) fn parse_optional(
    body: &[u8],
    allowed: &[&str],
) -> Result<(Map<String, Value>, Vec<FieldError>), ApiError> {
    if body.is_empty() {
        return Ok((Map::new(), Vec::new()));
    }
    match read(body)? {
        Value::Null => Ok((Map::new(), Vec::new())),
        value => fields(value, allowed),
    }
}

fn read(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::MalformedBody(e.to_string()))
}

fn fields(
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
    fn an_optional_body_may_be_empty_or_null_but_not_another_value() {
        for body in [&b""[..], b"null"] {
            let (map, unknown) = parse_optional(body, &["a"]).unwrap();
            assert!(map.is_empty() && unknown.is_empty());
        }
        let (_, unknown) = parse_optional(br#"{"b": 1}"#, &["a"]).unwrap();
        assert_eq!(unknown.len(), 1);
        assert!(matches!(
            parse_optional(b"[]", &["a"]),
            Err(ApiError::MalformedBody(_))
        ));
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
