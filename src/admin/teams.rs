//! `POST /teams/actions`: Teams card actions (invoke `adaptiveCard/action`). (Being built.)

use crate::state::Airlock;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use std::sync::Arc;

/// Verifies and handles one interactivity callback.
pub async fn actions(
    State(airlock): State<Arc<Airlock>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _ = (airlock, headers, body);
    StatusCode::NOT_FOUND.into_response()
}
