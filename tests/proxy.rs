//! The proxy as an agent sees it: requests pass through intact (bodies, streams,
//! server-sent events, WebSockets, h2c), hop-by-hop headers stay on their hop,
//! upstream failures become JSON errors, routing by prefix and host, and agent keys.

mod common;
use common::*;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::{Request, Response};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A config with the given `upstreams:` entries (YAML list items), the standard agents
/// and reviewers, and `extra` appended.
fn config(ws: &Workspace, upstreams: &str, extra: &str) -> PathBuf {
    ws.write(
        "airlock.yaml",
        &format!(
            "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nstore: sqlite://airlock.db\nrules: rules/\nupstreams:\n{upstreams}\n{}\n{extra}\n",
            identities_yaml()
        ),
    )
}

/// airlock in front of the upstream at `addr` (prefix `/api`) with a 1s upstream timeout.
async fn start_with_1s_upstream_timeout(ws: &Workspace, addr: std::net::SocketAddr) -> InProcess {
    let cfg = config(
        ws,
        &format!("  - name: api\n    prefix: /api\n    url: http://{addr}\n    timeout: 1s\n"),
        "",
    );
    InProcess::start(&cfg).await
}

fn sha_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

async fn json_of(r: reqwest::Response) -> (u16, Value) {
    let s = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (s, v)
}

#[tokio::test]
async fn get_and_post_pass_through_unchanged() {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    let a = InProcess::start(&ws.standard_config(&up.url(), "")).await;

    let r = agent_request(&a, AGENT_KEY, "GET", "/api/items/7?view=full&tag=a%20b")
        .send()
        .await
        .unwrap();
    let (s, v) = json_of(r).await;
    assert_eq!(s, 200);
    assert_eq!(v["method"], "GET");
    assert_eq!(v["uri"], "/items/7?view=full&tag=a%20b");

    let body = r#"{"name":"vm-1","size":"large"}"#;
    let r = agent_request(&a, AGENT_KEY, "POST", "/api/items")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let (s, v) = json_of(r).await;
    assert_eq!(s, 200);
    assert_eq!(v["method"], "POST");
    assert_eq!(v["body"], body);

    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].method, "POST");
    assert_eq!(seen[1].uri, "/items");
    assert_eq!(&seen[1].body[..], body.as_bytes());
    assert_eq!(seen[1].headers["content-type"], "application/json");
}

#[tokio::test]
async fn large_chunked_upload_streams_through_intact() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 128; // 8 MiB
    let up = Upstream::with_handler(Arc::new(|s: Seen| {
        Response::new(http_body_util::Full::new(Bytes::from(sha_hex(&s.body))))
    }))
    .await;
    let ws = Workspace::new();
    let a = InProcess::start(&ws.standard_config(&up.url(), "")).await;

    // Deterministic pseudo-random bytes, sent as a stream of chunks with no length.
    let mut data = Vec::with_capacity(CHUNK * CHUNKS);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < CHUNK * CHUNKS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    let want = sha_hex(&data);
    let (tx, body) = channel_body();
    let data = Bytes::from(data);
    let feeder = {
        let data = data.clone();
        tokio::spawn(async move {
            for i in 0..CHUNKS {
                tx.send(data.slice(i * CHUNK..(i + 1) * CHUNK))
                    .await
                    .unwrap();
            }
        })
    };
    let req = Request::post("/api/upload")
        .header("host", "airlock.test")
        .header("authorization", format!("Bearer {AGENT_KEY}"))
        .header("content-type", "application/octet-stream")
        .body(body)
        .unwrap();
    let resp = h1_send(a.proxy, req).await;
    feeder.await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&got),
        want,
        "upstream hashed a different body"
    );

    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body.len(), CHUNK * CHUNKS);
    assert_eq!(sha_hex(&seen[0].body), want);
    // Streamed, not buffered into a fixed-length body.
    assert_eq!(
        seen[0]
            .headers
            .get("transfer-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("chunked"),
        "headers upstream saw: {:?}",
        seen[0].headers
    );
    assert!(seen[0].headers.get("content-length").is_none());
}

#[tokio::test]
async fn slow_chunked_response_outlasting_the_timeout_arrives_intact() {
    // The upstream answers its headers at once, then dribbles its body out over longer
    // than the upstream `timeout` (which bounds the wait for headers only): six chunks,
    // each sent only after the client has read the one before and a 250ms pause. A proxy
    // that buffered the body would never deliver the first chunk, and the test says so.
    let read = Arc::new(tokio::sync::Notify::new());
    let read2 = read.clone();
    let addr = raw_upstream(move |_req| {
        let read = read2.clone();
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                for i in 0..6 {
                    tx.send(Bytes::from(format!("chunk-{i};"))).await.unwrap();
                    read.notified().await;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            });
            Response::builder()
                .header("content-type", "text/plain")
                .body(body)
                .unwrap()
        }
    })
    .await;
    let ws = Workspace::new();
    let a = start_with_1s_upstream_timeout(&ws, addr).await;
    let started = Instant::now();
    let mut r = agent_request(&a, AGENT_KEY, "GET", "/api/slow")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-length").is_none());
    let mut got = String::new();
    let mut pieces = 0;
    tokio::time::timeout(DEADLINE, async {
        while let Some(c) = r.chunk().await.unwrap() {
            got.push_str(std::str::from_utf8(&c).unwrap());
            pieces += 1;
            read.notify_one();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the body stalled after {got:?}: airlock buffers it"));
    assert_eq!(got, "chunk-0;chunk-1;chunk-2;chunk-3;chunk-4;chunk-5;");
    assert!(
        pieces >= 2,
        "the body arrived in one piece: it was buffered"
    );
    assert!(
        started.elapsed() > Duration::from_secs(1),
        "the body must outlast the 1s upstream timeout for this test to mean anything"
    );
}

#[tokio::test]
async fn server_sent_events_are_not_buffered() {
    let release = Arc::new(tokio::sync::Notify::new());
    let r2 = release.clone();
    let addr = raw_upstream(move |_req| {
        let release = r2.clone();
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                tx.send(Bytes::from("event: progress\ndata: one\n\n"))
                    .await
                    .unwrap();
                // The second event only exists once the test has seen the first.
                release.notified().await;
                tx.send(Bytes::from("event: progress\ndata: two\n\n"))
                    .await
                    .unwrap();
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(body)
                .unwrap()
        }
    })
    .await;
    let ws = Workspace::new();
    let a = InProcess::start(&ws.standard_config(&format!("http://{addr}"), "")).await;
    let mut r = agent_request(&a, AGENT_KEY, "GET", "/api/events")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");

    let mut got = String::new();
    tokio::time::timeout(DEADLINE, async {
        while !got.contains("\n\n") {
            let c = r.chunk().await.unwrap().expect("stream ended early");
            got.push_str(std::str::from_utf8(&c).unwrap());
        }
    })
    .await
    .expect("first event not delivered before the upstream finished: airlock buffers");
    assert_eq!(got, "event: progress\ndata: one\n\n");

    release.notify_one();
    while let Some(c) = tokio::time::timeout(DEADLINE, r.chunk())
        .await
        .expect("second event never arrived")
        .unwrap()
    {
        got.push_str(std::str::from_utf8(&c).unwrap());
    }
    assert_eq!(
        got,
        "event: progress\ndata: one\n\nevent: progress\ndata: two\n\n"
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_forwarding_headers_set() {
    let up = Upstream::with_handler(Arc::new(|_s: Seen| {
        Response::builder()
            .header("connection", "x-resp-hop")
            .header("x-resp-hop", "1")
            .header("x-resp-keep", "1")
            .body(http_body_util::Full::new(Bytes::from("ok")))
            .unwrap()
    }))
    .await;
    let ws = Workspace::new();
    let a = InProcess::start(&ws.standard_config(&up.url(), "")).await;
    let r = agent_request(&a, AGENT_KEY, "GET", "/api/h")
        .header("host", "agent-facing.example")
        .header("connection", "x-foo")
        .header("x-foo", "hop-only")
        .header("x-bar", "end-to-end")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic cHJveHk6c2VjcmV0")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "10.1.2.3")
        .header("via", "1.1 corp-proxy")
        .header("x-airlock-justification", "cleaning up test VMs")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("x-resp-hop").is_none(),
        "response hop-by-hop header leaked"
    );
    assert_eq!(r.headers()["x-resp-keep"], "1");
    assert!(
        r.headers()
            .get("via")
            .is_some_and(|v| v.to_str().unwrap().contains("airlock")),
        "response Via: {:?}",
        r.headers().get("via")
    );

    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    let h = &seen[0].headers;
    for gone in [
        "x-foo",
        "te",
        "proxy-authorization",
        "keep-alive",
        "authorization",
        "x-airlock-justification",
    ] {
        assert!(h.get(gone).is_none(), "{gone} was forwarded: {h:?}");
    }
    if let Some(c) = h.get("connection") {
        assert!(
            !c.to_str().unwrap().contains("x-foo"),
            "Connection forwarded: {c:?}"
        );
    }
    assert_eq!(h["x-bar"], "end-to-end");
    assert_eq!(
        h["host"],
        up.addr.to_string().as_str(),
        "Host not rewritten"
    );
    // airlock is the edge: a client's claim about earlier hops is not passed on.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(
        h["x-forwarded-host"]
            .to_str()
            .unwrap()
            .starts_with("agent-facing.example"),
        "X-Forwarded-Host: {:?}",
        h["x-forwarded-host"]
    );
    let via = h["via"].to_str().unwrap();
    assert!(
        via.starts_with("1.1 corp-proxy") && via.ends_with("airlock"),
        "Via: {via:?}"
    );
}

#[tokio::test]
async fn websocket_upgrade_passes_through_on_an_allowed_route() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::{Message, Role};

    let seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
    let seen2 = seen.clone();
    let addr = raw_upstream(move |mut req: Request<hyper::body::Incoming>| {
        let seen = seen2.clone();
        async move {
            seen.lock().unwrap().push(req.headers().clone());
            let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
                return Response::builder()
                    .status(400)
                    .body(test_body("not a websocket request"))
                    .unwrap();
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(on_upgrade.await.unwrap());
                let mut ws =
                    tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None)
                        .await;
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() {
                        let reply = format!("echo: {}", m.to_text().unwrap());
                        ws.send(Message::text(reply)).await.unwrap();
                    } else if m.is_close() {
                        break;
                    }
                }
            });
            Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header(
                    "sec-websocket-accept",
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
                )
                .body(test_body(""))
                .unwrap()
        }
    })
    .await;
    let ws_dir = Workspace::new();
    ws_dir.write(
        "rules/ws.yaml",
        "rules:\n  - name: no-admin-socket\n    when: {path: /admin-socket}\n    then: deny\n",
    );
    let a = InProcess::start(&ws_dir.standard_config(&format!("http://{addr}"), "")).await;

    let mut req = format!("ws://{}/api/socket", a.proxy)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {AGENT_KEY}").parse().unwrap(),
    );
    let (mut sock, resp) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake timed out")
        .expect("websocket handshake through airlock failed");
    assert_eq!(resp.status(), 101);
    for word in ["hello", "world"] {
        sock.send(Message::text(word)).await.unwrap();
        let m = tokio::time::timeout(DEADLINE, sock.next())
            .await
            .expect("no echo")
            .unwrap()
            .unwrap();
        assert_eq!(m.to_text().unwrap(), format!("echo: {word}"));
    }
    let _ = sock.close(None).await;
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert!(
            seen[0].get("authorization").is_none(),
            "agent key forwarded"
        );
        assert_eq!(
            seen[0]["upgrade"].to_str().unwrap().to_ascii_lowercase(),
            "websocket"
        );
    }

    // The rules still apply to upgrades: a denied path never reaches the upstream.
    let mut req = format!("ws://{}/api/admin-socket", a.proxy)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {AGENT_KEY}").parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!(
            "expected a 403 refusal, got {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn h2c_prior_knowledge_client_gets_through() {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write(
        "rules/r.yaml",
        "rules:\n  - name: no-delete\n    when: {method: DELETE}\n    then: deny\n",
    );
    let a = InProcess::start(&ws.standard_config(&up.url(), "")).await;
    let auth = format!("Bearer {AGENT_KEY}");

    let req = Request::get(format!("http://{}/api/h2/thing?x=1", a.proxy))
        .header("authorization", &auth)
        .body(test_body(""))
        .unwrap();
    let resp = h2c_send(a.proxy, req).await;
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["uri"], "/h2/thing?x=1");

    let req = Request::post(format!("http://{}/api/h2/post", a.proxy))
        .header("authorization", &auth)
        .body(test_body("h2 body"))
        .unwrap();
    let resp = h2c_send(a.proxy, req).await;
    assert_eq!(resp.status(), 200);

    let req = Request::delete(format!("http://{}/api/h2/thing", a.proxy))
        .header("authorization", &auth)
        .body(test_body(""))
        .unwrap();
    let resp = h2c_send(a.proxy, req).await;
    assert_eq!(resp.status(), 403);
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["error"], "denied_by_rule");

    let seen = up.requests();
    assert_eq!(seen.len(), 2, "the denied DELETE must not be forwarded");
    assert_eq!(seen[1].method, "POST");
    assert_eq!(&seen[1].body[..], b"h2 body");
    assert!(seen[0].headers.get("authorization").is_none());
    assert!(
        seen[0].headers["via"]
            .to_str()
            .unwrap()
            .contains("2 airlock"),
        "Via: {:?}",
        seen[0].headers["via"]
    );
}

#[tokio::test]
async fn upstream_down_is_502_upstream_unavailable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ws = Workspace::new();
    let a = InProcess::start(&ws.standard_config(&format!("http://127.0.0.1:{port}"), "")).await;
    let r = agent_request(&a, AGENT_KEY, "GET", "/api/x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/json");
    let (s, v) = json_of(r).await;
    assert_eq!(s, 502);
    assert_eq!(v["error"], "upstream_unavailable");
}

#[tokio::test]
async fn upstream_that_never_answers_is_504_within_the_timeout() {
    // Accepts connections and reads nothing, answers nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let ws = Workspace::new();
    let a = start_with_1s_upstream_timeout(&ws, addr).await;
    let started = Instant::now();
    let r = agent_request(&a, AGENT_KEY, "GET", "/api/stuck")
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    let (s, v) = json_of(r).await;
    assert_eq!(s, 504);
    assert_eq!(v["error"], "upstream_timeout");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "answered after {took:?} with timeout: 1s"
    );
}

#[tokio::test]
async fn routing_by_prefix_and_host() {
    let api = Upstream::start().await;
    let deep = Upstream::start().await;
    let svc = Upstream::start().await;
    let ws = Workspace::new();
    let cfg = config(
        &ws,
        &format!(
            "  - name: api\n    prefix: /api\n    url: {}\n  - name: deep\n    prefix: /api/deep\n    url: {}\n  - name: svc\n    host: svc.internal\n    url: {}\n",
            api.url(),
            deep.url(),
            svc.url()
        ),
        "",
    );
    let a = InProcess::start(&cfg).await;
    let c = client();
    let get = |path: &str, host: Option<&str>| {
        let mut rb = c.get(a.url(path)).bearer_auth(AGENT_KEY);
        if let Some(h) = host {
            rb = rb.header("host", h);
        }
        rb.send()
    };

    // Prefix stripped.
    assert_eq!(get("/api/x/y?q=1", None).await.unwrap().status(), 200);
    assert_eq!(api.requests().last().unwrap().uri, "/x/y?q=1");
    assert_eq!(get("/api", None).await.unwrap().status(), 200);
    assert_eq!(api.requests().last().unwrap().uri, "/");
    // Longest prefix wins.
    assert_eq!(get("/api/deep/z", None).await.unwrap().status(), 200);
    assert_eq!(deep.requests().last().unwrap().uri, "/z");
    assert_eq!(api.count(), 2);
    // Host routes keep the path, ignore case and port.
    assert_eq!(get("/x", Some("svc.internal")).await.unwrap().status(), 200);
    assert_eq!(svc.requests().last().unwrap().uri, "/x");
    assert_eq!(
        get("/api/x", Some("SVC.Internal:8080"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(svc.requests().last().unwrap().uri, "/api/x");
    assert_eq!(svc.count(), 2);
    assert_eq!(api.count(), 2);

    // No route: a prefix matches whole segments only.
    for path in ["/apix", "/apix/y", "/other", "/", "/ap"] {
        let r = get(path, None).await.unwrap();
        assert_eq!(r.headers()["content-type"], "application/json");
        let (s, v) = json_of(r).await;
        assert_eq!((s, v["error"].as_str()), (404, Some("no_route")), "{path}");
    }
    let r = get("/y", Some("unknown.internal")).await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(api.count() + deep.count() + svc.count(), 5);
}

#[tokio::test]
async fn agent_keys_are_required_checked_and_never_forwarded() {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    let a = InProcess::start(&ws.standard_config(&up.url(), "")).await;
    let c = client();

    let r = c.get(a.url("/api/x")).send().await.unwrap();
    let (s, v) = json_of(r).await;
    assert_eq!((s, v["error"].as_str()), (401, Some("unauthenticated")));

    for bad in [
        "Bearer not-a-key".to_string(),
        format!("Basic {AGENT_KEY}"),
        format!("Bearer {AGENT_KEY}x"),
        "Bearer ".to_string(),
    ] {
        let r = c
            .get(a.url("/api/x"))
            .header("authorization", bad.as_str())
            .send()
            .await
            .unwrap();
        let (s, v) = json_of(r).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (401, Some("unauthenticated")),
            "{bad}"
        );
    }
    assert_eq!(up.count(), 0, "an unauthenticated request was forwarded");

    for key in [AGENT_KEY, OTHER_AGENT_KEY] {
        let r = c
            .get(a.url("/api/x"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert!(
            s.headers.get("authorization").is_none(),
            "agent key forwarded: {:?}",
            s.headers
        );
    }
}

#[tokio::test]
async fn injected_headers_come_from_the_environment() {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    let cfg = config(
        &ws,
        &format!(
            "  - name: api\n    prefix: /api\n    url: {}\n    inject:\n      authorization: \"Bearer ${{AIRLOCK_TEST_UPSTREAM_TOKEN}}\"\n      x-api-key: \"key-${{AIRLOCK_TEST_UPSTREAM_KEY}}-v1\"\n",
            up.url()
        ),
        "",
    );
    // The real binary: `${VAR}`s come from the environment, which an in-process test
    // must not change (it is the whole test process's).
    let a = Airlock::start_with_env(
        &cfg,
        &[
            ("AIRLOCK_TEST_UPSTREAM_TOKEN", "real-upstream-secret"),
            ("AIRLOCK_TEST_UPSTREAM_KEY", "123"),
        ],
    );
    let r = agent_request(&a, AGENT_KEY, "GET", "/api/x")
        .header("x-api-key", "agent-supplied")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.requests();
    assert_eq!(
        seen[0].headers["authorization"],
        "Bearer real-upstream-secret"
    );
    let keys: Vec<_> = seen[0].headers.get_all("x-api-key").iter().collect();
    assert_eq!(
        keys,
        ["key-123-v1"],
        "the agent must not override an injected header"
    );
}

#[tokio::test]
async fn agent_key_in_a_custom_header() {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    let key = "custom-header-agent-key";
    let cfg = ws.write(
        "airlock.yaml",
        &format!(
            "listen: 127.0.0.1:0\nstore: sqlite://airlock.db\nupstreams:\n  - name: api\n    prefix: /api\n    url: {}\nagents:\n  - id: header-bot\n    key: {}\n    header: X-Airlock-Key\n",
            up.url(),
            digest(key)
        ),
    );
    let a = InProcess::start(&cfg).await;
    let c = client();
    let r = c
        .get(a.url("/api/x"))
        .header("x-airlock-key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(up.requests()[0].headers.get("x-airlock-key").is_none());

    // The key in the wrong header is no key at all.
    let r = c
        .get(a.url("/api/x"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(a.url("/api/x"))
        .header("x-airlock-key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn no_agents_means_anonymous_callers_are_forwarded() {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write(
        "rules/r.yaml",
        "rules:\n  - name: anon-local\n    when: {path: /anon-only, agent: \"re:^anonymous@127\\\\.0\\\\.0\\\\.1$\"}\n    then: deny\n",
    );
    let cfg = ws.write(
        "airlock.yaml",
        &format!(
            "listen: 127.0.0.1:0\nstore: sqlite://airlock.db\nrules: rules/\nupstreams:\n  - name: api\n    prefix: /api\n    url: {}\nagents: []\n",
            up.url()
        ),
    );
    let a = InProcess::start(&cfg).await;
    let c = client();
    let r = c.get(a.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.requests()[0].uri, "/x");
    // The anonymous caller is named by its address, and rules can match it.
    let r = c.get(a.url("/api/anon-only")).send().await.unwrap();
    let (s, v) = json_of(r).await;
    assert_eq!((s, v["error"].as_str()), (403, Some("denied_by_rule")));
    assert_eq!(up.count(), 1);
}
