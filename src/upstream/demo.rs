//! The built-in demo upstream (`url: demo:`): answers inside the process with a JSON
//! echo of the request exactly as an upstream would have received it (method, path,
//! query, headers after airlock's rewrite, body). For trying airlock without a server.

use crate::http::body::{full, read_limited, ProxyBody, Read};
use http::{header, HeaderValue, Request, Response, StatusCode};
use serde_json::{json, Map, Value};

/// The largest body the demo echoes.
const DEMO_MAX_BODY: usize = 1 << 20;

/// Answers a request as the demo upstream.
pub async fn answer(req: Request<ProxyBody>) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let body = match read_limited(body, DEMO_MAX_BODY).await {
        Ok(Read::Complete(b)) => b,
        Ok(Read::Over(..)) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"demo": true, "error": "body larger than 1 MiB"}),
            );
        }
        Err(e) => {
            return plain(
                StatusCode::BAD_REQUEST,
                json!({"demo": true, "error": e.to_string()}),
            )
        }
    };
    let mut headers = Map::new();
    for (k, v) in &parts.headers {
        let v = Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned());
        match headers.get_mut(k.as_str()) {
            Some(Value::Array(a)) => a.push(v),
            Some(prev) => {
                let p = prev.take();
                *prev = Value::Array(vec![p, v]);
            }
            None => {
                headers.insert(k.as_str().to_string(), v);
            }
        }
    }
    let body_json: Option<Value> = serde_json::from_slice(&body).ok();
    let echo = json!({
        "demo": true,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
        "json": body_json,
    });
    plain(StatusCode::OK, echo)
}

fn plain(status: StatusCode, v: Value) -> Response<ProxyBody> {
    let mut resp = Response::new(full(serde_json::to_vec_pretty(&v).unwrap_or_default()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
