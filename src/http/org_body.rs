//! Request bodies of the organization routes, validated field by field so a
//! client learns about every bad field in one answer.

use dynabase_actors::{OrgId, Tier, Upstream};

use crate::org_admin::{CreateOrg, UpdateOrg};
use serde_json::{Map, Value};

use super::{
    error::{ApiError, FieldError},
    json_object,
};

const CREATE_FIELDS: &[&str] = &[
    "id",
    "name",
    "tier",
    "upstream",
    "stripe_customer_id",
    "stripe_subscription_id",
];
const UPDATE_FIELDS: &[&str] = &[
    "name",
    "tier",
    "upstream",
    "stripe_customer_id",
    "stripe_subscription_id",
    "railway_service_id",
    "reason",
];

/// Parses the body of `POST /admin/orgs`.
pub fn create_org(body: &[u8]) -> Result<CreateOrg, ApiError> {
    let mut f = Fields::new(body, CREATE_FIELDS)?;
    let id = f.required("id", |s| OrgId::parse(s).map_err(|e| e.to_string()));
    let name = f.required("name", non_empty);
    let tier = f.required("tier", |s| s.parse::<Tier>().map_err(|e| e.to_string()));
    let upstream = f.required("upstream", |s| {
        Upstream::parse(s).map_err(|e| e.to_string())
    });
    let stripe_customer_id = f.nullable("stripe_customer_id").flatten();
    let stripe_subscription_id = f.nullable("stripe_subscription_id").flatten();
    f.finish()?;
    match (id, name, tier, upstream) {
        (Some(id), Some(name), Some(tier), Some(upstream)) => Ok(CreateOrg {
            id,
            name,
            tier,
            upstream,
            stripe_customer_id,
            stripe_subscription_id,
        }),
        // `finish` reported the missing ones.
        _ => Err(ApiError::InvalidFields(Vec::new())),
    }
}

/// Parses the body of `PATCH /admin/orgs/{id}`.
pub fn update_org(body: &[u8]) -> Result<UpdateOrg, ApiError> {
    let mut f = Fields::new(body, UPDATE_FIELDS)?;
    let update = UpdateOrg {
        name: f.optional("name", non_empty),
        tier: f.optional("tier", |s| s.parse::<Tier>().map_err(|e| e.to_string())),
        upstream: f.optional("upstream", |s| {
            Upstream::parse(s).map_err(|e| e.to_string())
        }),
        stripe_customer_id: f.nullable("stripe_customer_id"),
        stripe_subscription_id: f.nullable("stripe_subscription_id"),
        railway_service_id: f.nullable("railway_service_id"),
        reason: f.optional("reason", non_empty),
    };
    f.finish()?;
    Ok(update)
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_owned())
    }
}

/// A JSON object being read, collecting field errors as it goes.
struct Fields {
    object: Map<String, Value>,
    errors: Vec<FieldError>,
}

impl Fields {
    fn new(body: &[u8], allowed: &[&str]) -> Result<Self, ApiError> {
        let (object, errors) = json_object::parse(body, allowed)?;
        Ok(Self { object, errors })
    }

    fn string(&mut self, name: &str) -> Option<Option<String>> {
        match self.object.get(name)? {
            Value::String(s) => Some(Some(s.clone())),
            Value::Null => Some(None),
            _ => {
                self.errors.push(FieldError::new(name, "must be a string"));
                Some(None)
            }
        }
    }

    fn required<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match self.string(name) {
            None | Some(None) => {
                if !self.errors.iter().any(|e| e.field == name) {
                    self.errors.push(FieldError::new(name, "is required"));
                }
                None
            }
            Some(Some(s)) => self.check(name, parse(&s)),
        }
    }

    fn optional<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match self.string(name) {
            Some(Some(s)) => self.check(name, parse(&s)),
            Some(None) if !self.errors.iter().any(|e| e.field == name) => {
                self.errors.push(FieldError::new(name, "must not be null"));
                None
            }
            _ => None,
        }
    }

    /// Absent → `None`; `null` → `Some(None)` (clear); string → `Some(Some)`.
    fn nullable(&mut self, name: &str) -> Option<Option<String>> {
        self.string(name)
    }

    fn check<T>(&mut self, name: &str, result: Result<T, String>) -> Option<T> {
        result
            .map_err(|message| self.errors.push(FieldError::new(name, message)))
            .ok()
    }

    fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::InvalidFields(self.errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields_of(e: ApiError) -> Vec<String> {
        match e {
            ApiError::InvalidFields(f) => f.into_iter().map(|f| f.field).collect(),
            other => panic!("expected invalid fields, got {other:?}"),
        }
    }

    #[test]
    fn create_reports_every_bad_field() {
        let err =
            create_org(br#"{"id":"Bad Id","tier":"gold","upstream":"x","colour":1}"#).unwrap_err();
        let mut fields = fields_of(err);
        fields.sort();
        assert_eq!(fields, ["colour", "id", "name", "tier", "upstream"]);
    }

    #[test]
    fn create_accepts_the_documented_body() {
        let org =
            create_org(br#"{"id":"acme","name":"Acme","tier":"free","upstream":"127.0.0.1:5432"}"#)
                .unwrap();
        assert_eq!((org.id.as_str(), org.tier), ("acme", Tier::Free));
    }

    #[test]
    fn malformed_json_is_not_a_field_error() {
        assert!(matches!(create_org(b"{"), Err(ApiError::MalformedBody(_))));
        assert!(matches!(update_org(b"[]"), Err(ApiError::MalformedBody(_))));
    }
}
