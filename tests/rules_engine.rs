//! The rule engine end to end: every matcher kind decides real requests (a match gets
//! the verdict and the upstream sees nothing; a near miss passes through), the
//! strictest verdict wins, bodies are inspected only when needed and fail closed, the
//! default verdict applies, observe mode forwards while recording what it saw, and a
//! request no rule matches is decided without a single allocation.

mod common;
use common::*;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Request, Response};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Counts heap allocations per thread, so a test can assert that the decision for a
/// request no rule matches allocates nothing (the proxy's hot path).
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn count_allocation() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_allocation();
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_allocation();
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        count_allocation();
        unsafe { std::alloc::System.realloc(ptr, layout, size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Allocations `f` makes on this thread.
fn allocations_of<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATIONS.with(|c| c.get());
    let out = f();
    (ALLOCATIONS.with(|c| c.get()) - before, out)
}

/// A config with upstreams `api` (/api) and `other` (/other) on `url`, the standard
/// identities, and `extra` appended.
fn config(ws: &Workspace, url: &str, extra: &str) -> PathBuf {
    ws.write(
        "airlock.yaml",
        &format!(
            "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nstore: sqlite://airlock.db\nrules: rules/\nupstreams:\n  - name: api\n    prefix: /api\n    url: {url}\n  - name: other\n    prefix: /other\n    url: {url}\n{}\n{extra}\n",
            identities_yaml()
        ),
    )
}

/// One request of a table-driven case.
struct Case {
    method: &'static str,
    path: &'static str,
    key: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Option<&'static str>,
}

fn req(method: &'static str, path: &'static str) -> Case {
    Case {
        method,
        path,
        key: AGENT_KEY,
        headers: Vec::new(),
        body: None,
    }
}

impl Case {
    fn header(mut self, k: &'static str, v: &'static str) -> Case {
        self.headers.push((k, v));
        self
    }
    fn json(mut self, body: &'static str) -> Case {
        self.headers.push(("content-type", "application/json"));
        self.body = Some(body);
        self
    }
    fn form(mut self, body: &'static str) -> Case {
        self.headers
            .push(("content-type", "application/x-www-form-urlencoded"));
        self.body = Some(body);
        self
    }
    fn body(mut self, body: &'static str) -> Case {
        self.body = Some(body);
        self
    }
    fn key(mut self, key: &'static str) -> Case {
        self.key = key;
        self
    }

    async fn send(&self, a: &Airlock) -> (u16, Value) {
        let mut rb = client()
            .request(self.method.parse().unwrap(), a.url(self.path))
            .bearer_auth(self.key);
        for (k, v) in &self.headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = self.body {
            rb = rb.body(b);
        }
        let r = rb.send().await.unwrap();
        let s = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            s,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn label(&self) -> String {
        format!(
            "{} {} headers={:?} body={:?}",
            self.method, self.path, self.headers, self.body
        )
    }
}

/// Sends `case` and checks it was denied by `rule` without reaching the upstream.
async fn assert_denied(a: &Airlock, up: &Upstream, case: Case, rule: &str) {
    let before = up.count();
    let (s, v) = case.send(a).await;
    let label = case.label();
    assert_eq!(s, 403, "{label}: expected a deny, got {s} {v}");
    assert_eq!(v["error"], "denied_by_rule", "{label}: {v}");
    let rules: Vec<&str> = v["rule"]
        .as_array()
        .unwrap_or_else(|| panic!("{label}: no rule list in {v}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        rules.contains(&rule),
        "{label}: rule {rule} not in {rules:?}"
    );
    assert_eq!(
        up.count(),
        before,
        "{label}: a denied request reached the upstream"
    );
}

/// Sends `case` and checks it was forwarded to the upstream as `upstream_uri`.
async fn assert_passes(a: &Airlock, up: &Upstream, case: Case, upstream_uri: &str) {
    let before = up.count();
    let (s, v) = case.send(a).await;
    let label = case.label();
    assert_eq!(s, 200, "{label}: expected to pass, got {s} {v}");
    assert_eq!(up.count(), before + 1, "{label}: not forwarded");
    let last = up.requests().pop().unwrap();
    assert_eq!(last.uri, upstream_uri, "{label}");
    assert_eq!(last.method, case.method, "{label}");
    if let Some(b) = case.body {
        assert_eq!(&last.body[..], b.as_bytes(), "{label}: body changed");
    }
}

const MATCHERS: &str = r#"rules:
  - name: upstream-other
    when: {upstream: other, path: /up/**}
    then: deny
  - name: method-delete
    when: {method: DELETE, path: /m/**}
    then: deny
  - name: method-list
    when: {method: [PUT, patch], path: /ml/**}
    then: deny
  - name: path-star
    when: {path: /s/*/x}
    then: deny
  - name: path-tail
    when: {path: /d/**}
    then: deny
  - name: path-regex
    when: {path: "re:^/re/[0-9]+$"}
    then: deny
  - name: header-exact
    when: {path: /h/**, headers: {X-Env: prod}}
    then: deny
  - name: header-regex
    when: {path: /hr/**, headers: {x-team: "re:^ops-"}}
    then: deny
  - name: query-force
    when: {path: /q/**, query: {force: "true"}}
    then: deny
  - name: json-nested
    when: {method: POST, path: /j/**, json: {/spec/tier: prod}}
    then: deny
  - name: json-wildcard
    when: {method: POST, path: /jw/**, json: {/items/*/name: "re:^danger"}}
    then: deny
  - name: json-number
    when: {method: POST, path: /jn/**, json: {/replicas: "0"}}
    then: deny
  - name: form-action
    when: {method: POST, path: /f/**, form: {Action: TerminateInstances}}
    then: deny
  - name: agent-exact
    when: {path: /a/**, agent: etl-agent}
    then: deny
  - name: agent-regex
    when: {path: /ar/**, agent: "re:^deploy-"}
    then: deny
"#;

#[tokio::test]
async fn every_matcher_kind_denies_its_match_and_passes_its_near_miss() {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/matchers.yaml", MATCHERS);
    let a = Airlock::start(&config(&ws, &up.url(), ""));

    // upstream
    assert_denied(&a, &up, req("GET", "/other/up/1"), "upstream-other").await;
    assert_passes(&a, &up, req("GET", "/api/up/1"), "/up/1").await;
    // method, and a list of methods (written in any case)
    assert_denied(&a, &up, req("DELETE", "/api/m/1"), "method-delete").await;
    assert_passes(&a, &up, req("GET", "/api/m/1"), "/m/1").await;
    assert_denied(&a, &up, req("PUT", "/api/ml/1"), "method-list").await;
    assert_denied(&a, &up, req("PATCH", "/api/ml/1"), "method-list").await;
    assert_passes(&a, &up, req("POST", "/api/ml/1"), "/ml/1").await;
    // path: `*` is exactly one segment
    assert_denied(&a, &up, req("GET", "/api/s/a/x"), "path-star").await;
    assert_denied(&a, &up, req("GET", "/api/s/a/x/"), "path-star").await;
    assert_passes(&a, &up, req("GET", "/api/s/a/b/x"), "/s/a/b/x").await;
    assert_passes(&a, &up, req("GET", "/api/s/x"), "/s/x").await;
    assert_passes(&a, &up, req("GET", "/api/s/a/xy"), "/s/a/xy").await;
    // path: `**` is any tail, including none
    assert_denied(&a, &up, req("GET", "/api/d"), "path-tail").await;
    assert_denied(&a, &up, req("GET", "/api/d/a/b/c"), "path-tail").await;
    assert_passes(&a, &up, req("GET", "/api/dx"), "/dx").await;
    // path: regex, anchored as written
    assert_denied(&a, &up, req("GET", "/api/re/42"), "path-regex").await;
    assert_passes(&a, &up, req("GET", "/api/re/42a"), "/re/42a").await;
    // headers: name case-insensitive, value exact; any of several values
    assert_denied(
        &a,
        &up,
        req("GET", "/api/h/1").header("x-env", "prod"),
        "header-exact",
    )
    .await;
    assert_denied(
        &a,
        &up,
        req("GET", "/api/h/1").header("X-ENV", "prod"),
        "header-exact",
    )
    .await;
    assert_denied(
        &a,
        &up,
        req("GET", "/api/h/1")
            .header("x-env", "staging")
            .header("x-env", "prod"),
        "header-exact",
    )
    .await;
    // A value in another case is the same enum name to ASP.NET's binder: caught.
    assert_denied(
        &a,
        &up,
        req("GET", "/api/h/1").header("x-env", "Prod"),
        "header-exact",
    )
    .await;
    assert_passes(
        &a,
        &up,
        req("GET", "/api/h/1").header("x-env", "production"),
        "/h/1",
    )
    .await;
    assert_passes(
        &a,
        &up,
        req("GET", "/api/h/1").header("x-env", "staging"),
        "/h/1",
    )
    .await;
    assert_passes(&a, &up, req("GET", "/api/h/1"), "/h/1").await;
    // headers: regex value
    assert_denied(
        &a,
        &up,
        req("GET", "/api/hr/1").header("x-team", "ops-db"),
        "header-regex",
    )
    .await;
    assert_passes(
        &a,
        &up,
        req("GET", "/api/hr/1").header("x-team", "dev-ops-db"),
        "/hr/1",
    )
    .await;
    // query: decoded, any of repeated values
    assert_denied(&a, &up, req("GET", "/api/q/1?force=true"), "query-force").await;
    assert_denied(
        &a,
        &up,
        req("GET", "/api/q/1?x=1&forc%65=tru%65"),
        "query-force",
    )
    .await;
    assert_denied(
        &a,
        &up,
        req("GET", "/api/q/1?force=false&force=true"),
        "query-force",
    )
    .await;
    assert_passes(
        &a,
        &up,
        req("GET", "/api/q/1?force=false"),
        "/q/1?force=false",
    )
    .await;
    assert_passes(
        &a,
        &up,
        req("GET", "/api/q/1?forced=true"),
        "/q/1?forced=true",
    )
    .await;
    // Every spelling of the boolean true is true to a lax upstream (Go's ParseBool,
    // Spring, PHP): a deny rule for "true" catches them; a word that is no boolean
    // passes.
    assert_denied(&a, &up, req("GET", "/api/q/1?force=TRUE"), "query-force").await;
    assert_denied(&a, &up, req("GET", "/api/q/1?force=1"), "query-force").await;
    assert_passes(
        &a,
        &up,
        req("GET", "/api/q/1?force=truthy"),
        "/q/1?force=truthy",
    )
    .await;
    // json: nested pointer
    assert_denied(
        &a,
        &up,
        req("POST", "/api/j/1").json(r#"{"spec":{"tier":"prod","n":1}}"#),
        "json-nested",
    )
    .await;
    assert_passes(
        &a,
        &up,
        req("POST", "/api/j/1").json(r#"{"spec":{"tier":"dev"}}"#),
        "/j/1",
    )
    .await;
    assert_passes(
        &a,
        &up,
        req("POST", "/api/j/1").json(r#"{"tier":"prod"}"#),
        "/j/1",
    )
    .await;
    assert_passes(
        &a,
        &up,
        req("PUT", "/api/j/1").json(r#"{"spec":{"tier":"prod"}}"#),
        "/j/1",
    )
    .await;
    // json: `*` over array elements and object members
    assert_denied(
        &a,
        &up,
        req("POST", "/api/jw/1").json(r#"{"items":[{"name":"ok"},{"name":"danger-zone"}]}"#),
        "json-wildcard",
    )
    .await;
    assert_denied(
        &a,
        &up,
        req("POST", "/api/jw/1").json(r#"{"items":{"a":{"name":"ok"},"b":{"name":"danger"}}}"#),
        "json-wildcard",
    )
    .await;
    assert_passes(
        &a,
        &up,
        req("POST", "/api/jw/1").json(r#"{"items":[{"name":"ok"},{"name":"not-danger"}]}"#),
        "/jw/1",
    )
    .await;
    // json: a number is matched by its text
    assert_denied(
        &a,
        &up,
        req("POST", "/api/jn/1").json(r#"{"replicas":0}"#),
        "json-number",
    )
    .await;
    assert_passes(
        &a,
        &up,
        req("POST", "/api/jn/1").json(r#"{"replicas":10}"#),
        "/jn/1",
    )
    .await;
    // form: decoded fields
    assert_denied(
        &a,
        &up,
        req("POST", "/api/f/1").form("Action=TerminateInstances&InstanceId.1=i-1"),
        "form-action",
    )
    .await;
    assert_denied(
        &a,
        &up,
        req("POST", "/api/f/1").form("Version=2016&Action=Terminate%49nstances"),
        "form-action",
    )
    .await;
    assert_passes(
        &a,
        &up,
        req("POST", "/api/f/1").form("Action=DescribeInstances"),
        "/f/1",
    )
    .await;
    // agent: exact id and regex
    assert_denied(
        &a,
        &up,
        req("GET", "/api/a/1").key(OTHER_AGENT_KEY),
        "agent-exact",
    )
    .await;
    assert_passes(&a, &up, req("GET", "/api/a/1"), "/a/1").await;
    assert_denied(&a, &up, req("GET", "/api/ar/1"), "agent-regex").await;
    assert_passes(
        &a,
        &up,
        req("GET", "/api/ar/1").key(OTHER_AGENT_KEY),
        "/ar/1",
    )
    .await;
}

const LAYERED: &str = r#"rules:
  - name: w-allow
    when: {path: /w/**}
    then: allow
  - name: w-approve
    when: {path: /w/**, method: [POST, DELETE]}
    then: approve
    approval: {approvers: [group:sre], quorum: 1, timeout: 5m}
  - name: w-deny
    when: {path: /w/secret/**}
    then: deny
"#;

#[tokio::test]
async fn the_strictest_verdict_wins() {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/layered.yaml", LAYERED);
    let a = Airlock::start(&config(&ws, &up.url(), ""));

    // allow + approve + deny → deny (file order does not matter).
    let (s, v) = req("DELETE", "/api/w/secret/1").send(&a).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("denied_by_rule")),
        "{v}"
    );
    let rules: Vec<&str> = v["rule"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(rules.contains(&"w-deny"), "{rules:?}");
    assert!(
        pending(&a, BOB).await.is_empty(),
        "a denied request was held"
    );

    // allow only → forwarded.
    assert_passes(&a, &up, req("GET", "/api/w/job"), "/w/job").await;

    // allow + approve → held: the upstream sees nothing until a decision.
    let held = {
        let url = a.url("/api/w/job");
        tokio::spawn(async move {
            client()
                .post(url)
                .bearer_auth(AGENT_KEY)
                .body("run it")
                .send()
                .await
                .unwrap()
        })
    };
    let item = eventually(10, || async { pending(&a, BOB).await.into_iter().next() }).await;
    assert_eq!(item["method"], "POST");
    assert_eq!(item["agent"], "deploy-bot");
    let rules: Vec<&str> = item["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(rules.contains(&"w-approve"), "{rules:?}");
    assert!(!rules.contains(&"w-deny"), "{rules:?}");
    assert_eq!(up.count(), 1, "a held request reached the upstream");
    assert!(!held.is_finished());

    let id = item["id"].as_str().unwrap().to_string();
    let (s, _) = vote(&a, BOB, &id, "deny", Some("not during the freeze")).await;
    assert_eq!(s, 200);
    let r = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("held request not released by the deny")
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-airlock-approval-id"], id.as_str());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "denied");
    assert_eq!(v["reason"], "not during the freeze");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn default_deny_lets_only_allowed_requests_through() {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write(
        "rules/allow.yaml",
        r#"rules:
  - name: open
    when: {path: /open/**}
    then: allow
  - name: safe-json
    when: {method: POST, path: /jsafe, json: {/safe: "yes"}}
    then: allow
"#,
    );
    let a = Airlock::start(&config(&ws, &up.url(), "default: deny"));
    assert_passes(&a, &up, req("GET", "/api/open/1"), "/open/1").await;
    assert_passes(
        &a,
        &up,
        req("POST", "/api/jsafe").json(r#"{"safe":"yes"}"#),
        "/jsafe",
    )
    .await;
    for case in [
        req("GET", "/api/closed"),
        req("POST", "/api/jsafe").json(r#"{"safe":"no"}"#),
        // An allow rule never opens a door it could not check.
        req("POST", "/api/jsafe").json(r#"{"safe":"yes""#),
        req("POST", "/api/jsafe").json(r#"{"safe":"yes","safe":"no"}"#),
        req("POST", "/api/jsafe")
            .json(r#"{"safe":"yes"}"#)
            .header("content-encoding", "gzip"),
    ] {
        let before = up.count();
        let (s, v) = case.send(&a).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (403, Some("denied_by_rule")),
            "{}: {v}",
            case.label()
        );
        assert_eq!(up.count(), before, "{}", case.label());
    }
}

const BODY_RULES: &str = r#"rules:
  - name: sql-drop
    when: {method: POST, path: /sql, json: {/sql: "re:(?i)\\bdrop\\b"}}
    then: deny
  - name: hold-delete-op
    when: {method: [GET, POST], path: /g/**, json: {/op: delete}}
    then: approve
    approval: {approvers: [group:sre], timeout: 5m}
"#;

#[tokio::test]
async fn uninspectable_bodies_fail_closed() {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/body.yaml", BODY_RULES);
    let a = Airlock::start(&config(
        &ws,
        &up.url(),
        "limits: {max_body: 1MiB, inspect_body: 1KiB}",
    ));

    assert_passes(
        &a,
        &up,
        req("POST", "/api/sql").json(r#"{"sql":"select 1"}"#),
        "/sql",
    )
    .await;
    assert_passes(&a, &up, req("POST", "/api/sql"), "/sql").await;
    assert_passes(
        &a,
        &up,
        req("POST", "/api/sql")
            .json(r#"{"sql":"select 1"}"#)
            .header("content-encoding", "identity"),
        "/sql",
    )
    .await;
    assert_denied(
        &a,
        &up,
        req("POST", "/api/sql").json(r#"{"sql":"DROP TABLE t"}"#),
        "sql-drop",
    )
    .await;

    // Larger than inspect_body, with a harmless statement: fail closed.
    let big: &'static str =
        Box::leak(format!(r#"{{"sql":"select 1","pad":"{}"}}"#, "x".repeat(2048)).into_boxed_str());
    assert_denied(&a, &up, req("POST", "/api/sql").json(big), "sql-drop").await;
    // Compressed: airlock cannot read it, so the rule applies.
    assert_denied(
        &a,
        &up,
        req("POST", "/api/sql")
            .json("\u{1f}\u{8b}\u{8}\u{0}compressed")
            .header("content-encoding", "gzip"),
        "sql-drop",
    )
    .await;
    assert_denied(
        &a,
        &up,
        req("POST", "/api/sql")
            .json(r#"{"sql":"select 1"}"#)
            .header("content-encoding", "br"),
        "sql-drop",
    )
    .await;
    // Not JSON, or JSON two parsers could read differently.
    assert_denied(
        &a,
        &up,
        req("POST", "/api/sql").json(r#"{"sql": "select 1""#),
        "sql-drop",
    )
    .await;
    // A body that is not JSON and does not claim to be is read through its form
    // fields, as Rails and Laravel bind them: harmless passes, a drop is caught.
    assert_passes(
        &a,
        &up,
        req("POST", "/api/sql").body("sql=select 1"),
        "/sql",
    )
    .await;
    assert_denied(
        &a,
        &up,
        req("POST", "/api/sql").body("sql=DROP+TABLE+t"),
        "sql-drop",
    )
    .await;
    // JSON declared as something else is still JSON.
    assert_denied(
        &a,
        &up,
        req("POST", "/api/sql")
            .body(r#"{"sql":"drop table t"}"#)
            .header("content-type", "text/plain"),
        "sql-drop",
    )
    .await;
    assert_denied(
        &a,
        &up,
        req("POST", "/api/sql").json(r#"{"sql":"select 1","sql":"drop table t"}"#),
        "sql-drop",
    )
    .await;
    assert_denied(
        &a,
        &up,
        req("POST", "/api/sql").json(r#"{"sql":"select 1","sql":"select 2"}"#),
        "sql-drop",
    )
    .await;

    // Larger than inspect_body and streamed without a length: still fail closed.
    let (tx, body) = channel_body();
    let feeder = tokio::spawn(async move {
        tx.send(Bytes::from(r#"{"sql":"select 1","pad":""#))
            .await
            .unwrap();
        tx.send(Bytes::from("y".repeat(4096))).await.unwrap();
        tx.send(Bytes::from(r#""}"#)).await.unwrap();
    });
    let before = up.count();
    let resp = h1_send(
        a.proxy,
        Request::post("/api/sql")
            .header("host", "airlock.test")
            .header("authorization", format!("Bearer {AGENT_KEY}"))
            .header("content-type", "application/json")
            .body(body)
            .unwrap(),
    )
    .await;
    let _ = feeder.await;
    assert_eq!(resp.status(), 403);
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["error"], "denied_by_rule");
    assert_eq!(up.count(), before);

    // A json rule does not hold a request that has no body.
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        client()
            .get(a.url("/api/g/1"))
            .bearer_auth(AGENT_KEY)
            .send(),
    )
    .await
    .expect("a GET without a body was held by a json rule")
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_passes(
        &a,
        &up,
        req("POST", "/api/g/1").json(r#"{"op":"read"}"#),
        "/g/1",
    )
    .await;
    assert!(pending(&a, BOB).await.is_empty());
}

#[tokio::test]
async fn the_body_is_not_read_when_no_candidate_rule_inspects_it() {
    // The upstream reports the moment it has the request head, before the body ends.
    let (head_tx, head_rx) = tokio::sync::oneshot::channel::<String>();
    let head_tx = Arc::new(Mutex::new(Some(head_tx)));
    let addr = raw_upstream(move |req: Request<hyper::body::Incoming>| {
        let head_tx = head_tx.clone();
        async move {
            if let Some(tx) = head_tx.lock().unwrap().take() {
                let _ = tx.send(req.uri().to_string());
            }
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Response::new(test_body(body))
        }
    })
    .await;
    let ws = Workspace::new();
    ws.write("rules/body.yaml", BODY_RULES);
    let a = Airlock::start(&config(&ws, &format!("http://{addr}"), ""));

    let (tx, body) = channel_body();
    let send = tokio::spawn(h1_send(
        a.proxy,
        Request::post("/api/upload")
            .header("host", "airlock.test")
            .header("authorization", format!("Bearer {AGENT_KEY}"))
            .header("content-type", "application/json")
            .body(body)
            .unwrap(),
    ));
    tx.send(Bytes::from(r#"{"part":1,"#)).await.unwrap();
    // Had airlock waited for the whole body before forwarding, the upstream would never
    // see the head while the rest of the body is still unsent.
    let uri = tokio::time::timeout(Duration::from_secs(10), head_rx)
        .await
        .expect("upstream got nothing before the body was complete: airlock read the body")
        .unwrap();
    assert_eq!(uri, "/upload");
    tx.send(Bytes::from(r#""sql":"drop table t"}"#))
        .await
        .unwrap();
    drop(tx);
    let resp = send.await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&got[..], br#"{"part":1,"sql":"drop table t"}"#);
}

#[tokio::test]
async fn observe_mode_forwards_and_records_what_it_would_have_done() {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write(
        "rules/observe.yaml",
        r#"rules:
  - name: danger-deny
    when: {method: DELETE, path: /danger/**}
    then: deny
  - name: hold-me
    when: {method: POST, path: /hold/**}
    then: approve
    approval: {approvers: [group:sre], timeout: 5m}
"#,
    );
    let cfg = config(&ws, &up.url(), "mode: observe");
    let a = Airlock::start(&cfg);
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        client()
            .delete(a.url("/api/danger/1"))
            .bearer_auth(AGENT_KEY)
            .send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        client()
            .post(a.url("/api/hold/1"))
            .bearer_auth(AGENT_KEY)
            .body("x")
            .send(),
    )
    .await
    .expect("observe mode held a request")
    .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].uri.as_str()),
        ("DELETE", "/danger/1")
    );
    assert!(pending(&a, BOB).await.is_empty());

    let stderr = a.stderr.clone();
    let status = a.stop();
    assert!(status.success(), "airlock exited with {status:?}");
    let log = stderr.lock().unwrap().clone();
    assert!(
        log.contains("observe mode"),
        "stderr says nothing about observe mode:\n{log}"
    );

    let (code, out, err) = run_cli(&["audit", "export", "-c", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "audit export failed: {err}");
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let observed = |rule: &str| {
        events.iter().any(|e| {
            e["event"] == "observed"
                && e["rules"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|x| x == rule))
        })
    };
    assert!(
        observed("danger-deny"),
        "no observed event for danger-deny in:\n{out}"
    );
    assert!(
        observed("hold-me"),
        "no observed event for hold-me in:\n{out}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "denied_by_rule" || e["event"] == "held"),
        "observe mode denied or held:\n{out}"
    );
}

#[test]
fn a_request_no_rule_matches_is_decided_without_allocating() {
    use airlock::rules::{load_files, Body, RequestView, Verdict};
    let ws = Workspace::new();
    let cfg_path = config(&ws, "http://127.0.0.1:9", "");
    let rules = ws.write(
        "rules/r.yaml",
        r#"rules:
  - name: project-delete
    when: {method: DELETE, path: /v1/projects/*}
    then: deny
  - name: prod-writes
    when: {path: "re:^/v1/prod/", query: {force: "true"}}
    then: deny
  - name: break-glass
    when: {method: POST, headers: {x-break-glass: "re:(?i)^yes$"}}
    then: deny
  - name: tier
    when: {path: /v1/jobs/**, json: {/spec/tier: prod}}
    then: deny
"#,
    );
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    let cfg = airlock::config::Config::parse(&airlock::config::Source {
        file: cfg_path,
        text,
    })
    .unwrap();
    let set = load_files(&cfg, &[rules]).unwrap().set;
    let mut headers = http::HeaderMap::new();
    headers.insert("x-break-glass", "no".parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    let decide = |method: &str, path: &str| {
        let view = RequestView {
            // As a proxy sees it by default: the upstream routes paths without
            // regard to case.
            path_case_sensitive: false,
            ..RequestView::plain(
                "api",
                method,
                path,
                Some("force=true&page=2"),
                &headers,
                "deploy-bot",
            )
        };
        let head = set.head(&view);
        assert!(!set.needs_body(&head));
        set.finish(head, Body::NotRead, None)
    };
    // Warm up: the regex engines make their per-thread caches on first use.
    assert_eq!(decide("DELETE", "/v1/projects/p1").verdict, Verdict::Deny);
    for (method, path) in [
        ("GET", "/v2/projects/p1"),
        // The path-less break-glass rule is a candidate; its header does not match.
        ("POST", "/v2/projects/p1"),
    ] {
        let (n, d) = allocations_of(|| decide(method, path));
        assert_eq!(d.verdict, Verdict::Allow, "{method} {path}");
        assert_eq!(n, 0, "{method} {path}: {n} allocation(s) to decide a miss");
    }
}
