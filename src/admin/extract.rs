//! Typed extractors for what a caller sends the admin API: path parameters, query
//! strings and JSON bodies. Each rejection is a `400 bad_request` (or `413
//! body_too_large`) in airlock's JSON error shape, with a message that says what was
//! expected; none of axum's plain-text rejections reaches a caller.

use super::answer::ApiError;
use crate::http::{AirlockError, Code};
use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use http::header;
use http::request::Parts;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

/// The largest JSON body the admin API reads (a vote is a few hundred bytes).
pub const MAX_JSON_BODY: usize = 64 * 1024;

/// A JSON body the caller can describe: what [`ApiJson`] names in its error messages.
pub trait Expected {
    /// What a valid body looks like, e.g. `{"decision": "approve"|"deny", "reason": …}`.
    const EXPECTED: &'static str;
}

/// A JSON request body of at most [`MAX_JSON_BODY`] bytes, parsed into `T` (whose
/// `Deserialize` should `deny_unknown_fields`).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned + Expected,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let too_large = || {
            ApiError(AirlockError::new(
                Code::BodyTooLarge,
                format!("request body over {} KiB", MAX_JSON_BODY / 1024),
            ))
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_JSON_BODY as u64) {
            return Err(too_large());
        }
        let body: Body = req.into_body();
        let bytes = match Limited::new(body, MAX_JSON_BODY).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<LengthLimitError>() => return Err(too_large()),
            Err(e) => {
                return Err(ApiError(AirlockError::new(
                    Code::BadRequest,
                    format!("request body could not be read: {e}"),
                )))
            }
        };
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| {
            ApiError(AirlockError::new(
                Code::BadRequest,
                format!("expected JSON {}: {e}", T::EXPECTED),
            ))
        })
    }
}

/// A query string parsed into `T`; a value that does not fit is a `400`.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError(AirlockError::new(Code::BadRequest, e.body_text())))
    }
}

/// Path parameters parsed into `T`; a segment that does not fit is a `400`.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| ApiPath(p))
            .map_err(|e| ApiError(AirlockError::new(Code::BadRequest, e.body_text())))
    }
}
