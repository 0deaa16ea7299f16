//! `POST /teams/actions`: Bot Framework invoke activities for the Teams cards'
//! Approve / Deny buttons. Thin: the checks and the vote live in
//! [`crate::channels::teams::action`]; this only answers over HTTP. Never votes on
//! anything the channel's checks refused.

use super::answer::{json, ApiError};
use crate::state::Airlock;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use std::sync::Arc;

/// Verifies and handles one card action: `200` with the invoke response, or airlock's
/// JSON error (`401` bad token, `403` another tenant) with nothing recorded.
pub async fn actions(
    State(airlock): State<Arc<Airlock>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match crate::channels::teams::action::handle(&airlock, &headers, &body).await {
        Ok(answer) => json(StatusCode::OK, &answer),
        Err(e) => ApiError(e).into_response(),
    }
}
