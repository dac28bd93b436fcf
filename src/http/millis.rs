//! `now` overrides in Unix milliseconds, read from JSON bodies and query
//! strings: an integer, or a number with no fractional part (`1406.0`,
//! which JSON Schema counts as an integer and generators send); in a query
//! string, such a number's text (query strings carry nothing else). A JSON
//! string is refused, as the schema says.

use std::fmt;

use serde::{de, Deserializer};

/// For `#[serde(default, deserialize_with = "…")]` on an `Option<i64>` of
/// a JSON body.
pub fn optional_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    d.deserialize_any(MillisVisitor { text: false })
}

/// The same for a query string parameter.
pub fn optional_millis_query<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    d.deserialize_any(MillisVisitor { text: true })
}

/// A JSON value read the same way; `None` for anything but a whole number.
pub fn from_json(v: &serde_json::Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .and_then(|f| integral::<de::value::Error>(f).ok().flatten())
    })
}

struct MillisVisitor {
    /// Whether text is a number (query strings) or a type error (JSON).
    text: bool,
}

/// Largest magnitude an `f64` holds exactly and an `i64` can take.
const EXACT: f64 = 9_007_199_254_740_992.0;

fn integral<E: de::Error>(v: f64) -> Result<Option<i64>, E> {
    if v.is_finite() && v.fract() == 0.0 && v.abs() <= EXACT {
        // Checked above: integral and within ±2^53.
        Ok(Some(v as i64))
    } else {
        Err(E::custom(format!(
            "{v} is not a whole number of milliseconds"
        )))
    }
}

impl<'de> de::Visitor<'de> for MillisVisitor {
    type Value = Option<i64>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("Unix milliseconds (a whole number) or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        i64::try_from(v)
            .map(Some)
            .map_err(|_| E::custom(format!("{v} milliseconds is out of range")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        integral(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if !self.text {
            return Err(E::invalid_type(de::Unexpected::Str(v), &self));
        }
        if let Ok(ms) = v.parse::<i64>() {
            return Ok(Some(ms));
        }
        match v.parse::<f64>() {
            Ok(f) => integral(f),
            Err(_) => Err(E::custom(format!("`{v}` is not Unix milliseconds"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(default, deserialize_with = "optional_millis")]
        now: Option<i64>,
    }

    #[derive(Debug, Deserialize)]
    struct Query {
        #[serde(default, deserialize_with = "optional_millis_query")]
        now: Option<i64>,
    }

    fn json(s: &str) -> Result<Option<i64>, serde_json::Error> {
        serde_json::from_str::<Body>(s).map(|b| b.now)
    }

    fn query(s: &str) -> Result<Option<i64>, actix_web::error::QueryPayloadError> {
        actix_web::web::Query::<Query>::from_query(s).map(|q| q.into_inner().now)
    }

    #[test]
    fn whole_numbers_in_any_spelling_are_read() {
        assert_eq!(json(r#"{"now":1406}"#).unwrap(), Some(1406));
        assert_eq!(json(r#"{"now":1406.0}"#).unwrap(), Some(1406));
        assert_eq!(json(r#"{"now":-5}"#).unwrap(), Some(-5));
        assert_eq!(json(r#"{"now":null}"#).unwrap(), None);
        assert_eq!(json("{}").unwrap(), None);
        assert_eq!(query("now=1406").unwrap(), Some(1406));
        assert_eq!(query("now=1406.0").unwrap(), Some(1406));
        assert_eq!(query("").unwrap(), None);
        assert_eq!(from_json(&serde_json::json!(1406.0)), Some(1406));
        assert_eq!(from_json(&serde_json::json!(1406.5)), None);
        assert_eq!(from_json(&serde_json::json!("1406")), None);
    }

    #[test]
    fn fractions_text_and_huge_values_are_refused() {
        assert!(json(r#"{"now":1406.5}"#).is_err());
        assert!(json(r#"{"now":"soon"}"#).is_err());
        assert!(
            json(r#"{"now":"1406"}"#).is_err(),
            "a string is not an integer"
        );
        assert!(json(r#"{"now":1e300}"#).is_err());
        assert!(json(r#"{"now":18446744073709551615}"#).is_err());
        assert!(query("now=soon").is_err());
        assert!(query("now=NaN").is_err());
    }
}
