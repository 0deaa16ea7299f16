//! How the admin listener answers: JSON bodies that are never cached, and every
//! error in airlock's JSON error shape ([`AirlockError`]). Nothing here decides
//! *which* error a request gets; handlers and extractors do.

use crate::http::AirlockError;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

/// An admin API error: airlock's JSON error shape with the status its code maps to.
/// Every rejection (bad path, bad query, bad body, unknown page) becomes one of these,
/// never axum's plain-text answer.
#[derive(Debug)]
pub struct ApiError(pub AirlockError);

impl From<AirlockError> for ApiError {
    fn from(e: AirlockError) -> ApiError {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.into_response_with(Body::from)
    }
}

/// A JSON answer with `status`, marked `Cache-Control: no-store` (approvals change).
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let (status, body) = match serde_json::to_vec(value) {
        Ok(b) => (status, b),
        Err(e) => {
            // Not reachable with the types the API sends (string keys only); answered
            // like `AirlockError`'s own fallback rather than with a panic.
            tracing::error!(error = %e, "admin answer could not be serialized");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                b"{\"error\":\"internal\"}".to_vec(),
            )
        }
    };
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
