//! `ApiError`: every error the HTTP API shows, as JSON with the right status.
//!
//! This enum is the allow-list of what clients may see: internal details
//! (store addresses, driver messages) are logged, never returned.

use actix_web::{http::StatusCode, HttpResponse, ResponseError};
use dynabase_actors::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// A problem with one field of a request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
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
    #[error("query string is invalid: {0}")]
    MalformedQuery(String),
    #[error("request body is larger than this route accepts")]
    PayloadTooLarge,
    #[error("this path does not serve that method; it serves {allow}")]
    MethodNotAllowed { allow: String },
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

/// Every error answer: `{"error":{"code","message","fields"?}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    code: ErrorCode,
    /// For people; may change wording between releases.
    message: String,
    /// Only with `invalid_fields`: every bad field of the request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(nullable = false)]
    fields: Vec<FieldError>,
}

/// What went wrong, for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Unauthorized,
    NotFound,
    Conflict,
    MalformedBody,
    MalformedQuery,
    PayloadTooLarge,
    MethodNotAllowed,
    InvalidFields,
    Unavailable,
    RateLimited,
}

impl ApiError {
    fn code(&self) -> ErrorCode {
        match self {
            ApiError::Unauthorized => ErrorCode::Unauthorized,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::MalformedBody(_) => ErrorCode::MalformedBody,
            ApiError::MalformedQuery(_) => ErrorCode::MalformedQuery,
            ApiError::PayloadTooLarge => ErrorCode::PayloadTooLarge,
            ApiError::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            ApiError::InvalidFields(_) => ErrorCode::InvalidFields,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::RateLimited { .. } => ErrorCode::RateLimited,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MalformedBody(_) | ApiError::MalformedQuery(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::InvalidFields(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let fields = match self {
            ApiError::InvalidFields(f) => f.clone(),
            _ => Vec::new(),
        };
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, ApiError::Unauthorized) {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if let ApiError::MethodNotAllowed { allow } = self {
            response.insert_header(("Allow", allow.as_str()));
        }
        if let ApiError::RateLimited { retry_after, .. } = self {
            response.insert_header((
                "Retry-After",
                super::customer_limits::retry_after_header(*retry_after),
            ));
        }
        response.json(ErrorBody {
            error: ErrorDetail {
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

/// actix-web's own extractor failures (a query string, a path segment or a
/// JSON body it could not read), as JSON errors like every other.
pub fn query_error(
    err: actix_web::error::QueryPayloadError,
    _: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::MalformedQuery(err.to_string()).into()
}

pub fn path_error(
    err: actix_web::error::PathError,
    _: &actix_web::HttpRequest,
) -> actix_web::Error {
    // Path segments name resources: one that cannot be read names none.
    ApiError::NotFound(format!("no such resource: {err}")).into()
}

pub fn json_error(
    err: actix_web::error::JsonPayloadError,
    _: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::MalformedBody(err.to_string()).into()
}

/// actix-web's payload limits (64 KiB, the webhook route's 1 MiB) answer
/// 413 in plain text before any handler runs; rewritten here into the
/// API's JSON error (used with `middleware::ErrorHandlers`).
pub fn payload_too_large<B>(
    res: actix_web::dev::ServiceResponse<B>,
) -> actix_web::Result<actix_web::middleware::ErrorHandlerResponse<B>> {
    let (req, _) = res.into_parts();
    let res = actix_web::dev::ServiceResponse::new(req, ApiError::PayloadTooLarge.error_response())
        .map_into_right_body();
    Ok(actix_web::middleware::ErrorHandlerResponse::Response(res))
}

/// Routes that do not exist: 404, or 405 with `Allow` for a documented
/// path asked with a method it does not serve.
pub async fn no_route(req: actix_web::HttpRequest) -> HttpResponse {
    match super::allowed_methods::allow_header(req.path(), req.method().as_str()) {
        Some(allow) => ApiError::MethodNotAllowed { allow }.error_response(),
        None => ApiError::NotFound("no such route".to_owned()).error_response(),
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
