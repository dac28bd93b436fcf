//! `ApiError`: every error the HTTP API shows, as JSON with the right status.
//!
//! This enum is the allow-list of what clients may see: internal details
//! (store addresses, driver messages) are logged, never returned.

use actix_web::{http::StatusCode, HttpResponse, ResponseError};
use dynabase_actors::StoreError;
use serde::Serialize;

/// A problem with one field of a request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is not valid JSON: {0}")]
    MalformedBody(String),
    #[error("request body has invalid fields")]
    InvalidFields(Vec<FieldError>),
    #[error("{0} is unavailable; try again shortly")]
    Unavailable(&'static str),
    #[error("{message}")]
    RateLimited {
        retry_after: std::time::Duration,
        message: String,
    },
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    fields: &'a [FieldError],
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::MalformedBody(_) => "malformed_body",
            ApiError::InvalidFields(_) => "invalid_fields",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::RateLimited { .. } => "rate_limited",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MalformedBody(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidFields(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let fields = match self {
            ApiError::InvalidFields(f) => f.as_slice(),
            _ => &[],
        };
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, ApiError::Unauthorized) {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if let ApiError::RateLimited { retry_after, .. } = self {
            response.insert_header((
                "Retry-After",
                super::customer_limits::retry_after_header(*retry_after),
            ));
        }
        response.json(Body {
            error: Detail {
                code: self.code(),
                message: self.to_string(),
                fields,
            },
        })
    }
}

impl ApiError {
    /// 404 for an organization id that is malformed or not in the store.
    pub fn org_not_found(id: impl std::fmt::Display) -> Self {
        ApiError::NotFound(format!("organization `{id}` not found"))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Duplicate(id) => {
                ApiError::Conflict(format!("organization `{id}` already exists"))
            }
            StoreError::NotFound(id) => ApiError::org_not_found(id),
            StoreError::Unavailable(_) | StoreError::Corrupt(_) => {
                tracing::error!(error = %e, "store error");
                ApiError::Unavailable("the store")
            }
        }
    }
}
