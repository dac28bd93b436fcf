//! `AdminAuth`: the extractor that guards every `/admin` route.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use subtle::ConstantTimeEq;

use super::{error::ApiError, HttpState};

/// The token of an `Authorization: Bearer <token>` header.
pub(super) fn bearer_token(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Present in a handler's arguments = the request carried the admin token.
#[derive(Debug, Clone, Copy)]
pub struct AdminAuth;

impl FromRequest for AdminAuth {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let expected = req
            .app_data::<web::Data<HttpState>>()
            .map(|s| s.admin_token.expose().as_bytes().to_vec())
            .unwrap_or_default();
        let presented = bearer_token(req).unwrap_or("");
        // An empty expected token never matches: the server does not start
        // admin routes without one (see `app`).
        let ok = !expected.is_empty() && bool::from(presented.as_bytes().ct_eq(&expected));
        ready(if ok {
            Ok(AdminAuth)
        } else {
            Err(ApiError::Unauthorized)
        })
    }
}
