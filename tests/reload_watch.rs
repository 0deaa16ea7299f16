//! Reload without restarting: the config file and the rules folder are watched, and
//! `POST /api/v1/reload` (what `airlock reload` calls) reports what changed. Upstreams
//! that did not change keep their connection pools.

mod common;
use common::*;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const ALLOW: &str = "rules:\n  - name: ok\n    when: {path: /nothing}\n    then: allow\n";
const NO_DELETES: &str =
    "rules:\n  - name: no-deletes\n    when: {method: DELETE}\n    then: deny\n";
const BROKEN: &str = "rules:\n  - name: broken\n    when: {path: \"re:(\"}\n    then: deny\n";

async fn status_of(a: &impl Listeners, method: &str) -> u16 {
    agent_request(a, AGENT_KEY, method, "/api/x")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_rules_file_is_put_in_force_and_a_broken_one_is_refused() {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/a.yaml", ALLOW);
    let cfg = ws.standard_config(&up.url(), "");
    let a = Airlock::start(&cfg);
    assert_eq!(status_of(&a, "DELETE").await, 200);

    // A new rule file: in force without a signal or an API call.
    ws.write("rules/b.yaml", NO_DELETES);
    eventually(DEADLINE.as_secs(), || async {
        (status_of(&a, "DELETE").await == 403).then_some(())
    })
    .await;
    let stderr = a.stderr.clone();
    eventually(DEADLINE.as_secs(), || {
        let stderr = stderr.clone();
        async move {
            let log = stderr.lock().unwrap().clone();
            log.contains("rules added: no-deletes").then_some(())
        }
    })
    .await;

    // A broken one: refused, logged with where it is broken; the old rules stay.
    ws.write("rules/c.yaml", BROKEN);
    eventually(DEADLINE.as_secs(), || {
        let stderr = stderr.clone();
        async move {
            let log = stderr.lock().unwrap().clone();
            (log.contains("reload refused") && log.contains("c.yaml:3:")).then_some(())
        }
    })
    .await;
    assert_eq!(status_of(&a, "DELETE").await, 403);
    assert_eq!(status_of(&a, "GET").await, 200);
    assert_eq!(admin_json(&a, "/readyz").await["rules"], 2);
}

/// An upstream that counts the TCP connections it accepts.
async fn counting_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(|_req: hyper::Request<hyper::body::Incoming>| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), conns)
}

async fn reload(a: &impl Listeners) -> Value {
    let r = client()
        .post(a.admin_url("/api/v1/reload"))
        .bearer_auth(BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reports_what_changed_and_unchanged_upstreams_keep_their_connections() {
    let (url, conns) = counting_upstream().await;
    let ws = Workspace::new();
    ws.write("rules/a.yaml", ALLOW);
    let cfg = ws.standard_config(&url, "");
    let a = InProcess::start(&cfg).await;
    assert_eq!(status_of(&a, "GET").await, 200);
    assert_eq!(status_of(&a, "GET").await, 200);
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "airlock pools its upstream connection"
    );

    // Rules change, the upstream does not: the pooled connection is reused.
    ws.write("rules/b.yaml", NO_DELETES);
    let v = reload(&a).await;
    assert_eq!(v["rules_added"], serde_json::json!(["no-deletes"]), "{v}");
    assert_eq!(v["upstreams_changed"], serde_json::json!([]), "{v}");
    assert_eq!(status_of(&a, "GET").await, 200);
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "the pool survived the reload"
    );

    // The upstream changes (a base path): a new client, a new connection.
    let text = std::fs::read_to_string(&cfg).unwrap();
    ws.write(
        "airlock.yaml",
        &text.replace(&format!("url: {url}"), &format!("url: {url}/base")),
    );
    let v = reload(&a).await;
    assert_eq!(v["upstreams_changed"], serde_json::json!(["api"]), "{v}");
    assert_eq!(v["rules_added"], serde_json::json!([]), "{v}");
    assert_eq!(status_of(&a, "GET").await, 200);
    assert_eq!(
        conns.load(Ordering::SeqCst),
        2,
        "a changed upstream gets a new pool"
    );
    assert_eq!(status_of(&a, "DELETE").await, 403);
}
