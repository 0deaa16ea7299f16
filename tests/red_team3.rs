//! Red team, round three (issue 13): short round over classes beyond
//! `tests/bypass_suite.rs`, `tests/red_team.rs` and `tests/red_team2.rs`, plus false
//! positives (ordinary requests that must be forwarded untouched). The recording
//! upstream is ground truth; every case that misses is listed when the test fails.
//!
//! Classes: JSON scalars that frameworks coerce to the rule's number (Jackson's
//! `ACCEPT_FLOAT_AS_INT` and null/empty-string-to-primitive defaults, Go's `null`
//! leaving the zero value); numeric strings that handler code converts to 0 (Python
//! `int`, JavaScript `Number`); enum values ASP.NET Core binds without regard to case;
//! split `Cookie` fields and a trailing slash (held). Then a false-positive sweep:
//! ordinary JSON, form, multipart and binary uploads, chunked and empty bodies, dotted
//! and versioned paths, CORS preflights, all to be forwarded untouched.
//!
//! Written against main at 5adc0c1: the suite fails there, listing each miss.

mod common;
use common::*;
#[path = "attack/mod.rs"]
mod attack;
use attack::*;

/// The rules every case runs against (paths are the upstream's, after the `/api` prefix).
const RULES: &str = r#"rules:
  - name: project-delete
    when: {method: DELETE, path: /v1/projects/*}
    then: deny
  - name: secret-read
    when: {method: GET, path: /v1/secrets/*}
    then: deny
  - name: sql-drop
    when:
      method: POST
      path: /v1/query
      json: {/sql: "re:(?i)\\b(drop|truncate)\\b"}
    then: deny
  - name: scale-to-zero
    when:
      path: /v1/scale
      json: {/replicas: "0"}
    then: deny
  - name: prod-tier
    when:
      path: /v1/deploy
      json: {/spec/tier: prod}
    then: deny
  - name: terminate
    when:
      path: /ec2
      form: {Action: TerminateInstances}
    then: deny
  - name: force-delete
    when:
      path: /v1/volumes/*
      query: {force: "true"}
    then: deny
  - name: project-replace
    when: {method: PUT, path: /v1/projects/*}
    then: deny
  - name: batch-drop
    when:
      path: /v1/batch
      json: {/ops/*/sql: "re:(?i)\\bdrop\\b"}
    then: deny
  - name: prod-release
    when:
      path: /v1/release
      headers: {x-environment: prod}
    then: deny
"#;

/// Appended to the standard config: nothing is held, bodies over 16 KiB are not read.
const EXTRA: &str = "default: allow\nlimits: {inspect_body: 16KiB}\n";

/// Every case of the suite.
fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(coercion_cases());
    v.extend(language_coercion_cases());
    v.extend(false_positive_cases());
    v.extend(misc_cases());
    v.extend(enum_case_cases());
    v
}

/// Values a framework binds to an enum without regard to case: ASP.NET Core's
/// `JsonStringEnumConverter` reads enum names case-insensitively, and its model binder
/// converts query/form strings with `EnumConverter` (`Enum.Parse(…, ignoreCase: true)`).
fn enum_case_cases() -> Vec<Case> {
    let c = "enum case";
    vec![
        case(c, "JSON tier PROD", "POST", "/api/v1/deploy")
            .json(r#"{"spec":{"tier":"PROD"}}"#)
            .denied(),
        case(c, "JSON tier Prod", "POST", "/api/v1/deploy")
            .json(r#"{"spec":{"tier":"Prod"}}"#)
            .denied(),
        case(c, "form spec.tier=Prod", "POST", "/api/v1/deploy")
            .form("spec.tier=Prod")
            .denied(),
        case(c, "X-Environment: PROD", "POST", "/api/v1/release")
            .h("X-Environment", "PROD")
            .denied(),
        case(c, "form Action=terminateinstances", "POST", "/api/ec2")
            .form("Action=terminateinstances")
            .denied(),
        case(c, "control: JSON tier prod", "POST", "/api/v1/deploy")
            .json(r#"{"spec":{"tier":"prod"}}"#)
            .denied(),
        case(c, "control: JSON tier Staging", "POST", "/api/v1/deploy")
            .json(r#"{"spec":{"tier":"Staging"}}"#)
            .forwarded("POST", "/v1/deploy"),
    ]
}

/// Cookies split over several `cookie` fields (HTTP/2 allows, RFC 9113 8.2.3; servers
/// join them with `; `), and a trailing slash (Spring before 6 matches `/x/` as `/x`).
fn misc_cases() -> Vec<Case> {
    let c = "misc";
    vec![
        case(
            c,
            "two Cookie fields, force=true in the second",
            "DELETE",
            "/api/v1/volumes/v1",
        )
        .h("Cookie", "sid=abc")
        .h("Cookie", "force=true")
        .denied(),
        case(c, "trailing slash", "GET", "/api/v1/secrets/s1/").denied(),
        case(
            c,
            "control: two Cookie fields, nothing forced",
            "DELETE",
            "/api/v1/volumes/v1",
        )
        .h("Cookie", "sid=abc")
        .h("Cookie", "theme=dark")
        .forwarded("DELETE", "/v1/volumes/v1"),
    ]
}

/// JSON scalars a framework binds to the number the rule names (`/replicas: "0"`).
/// - Jackson (Spring Boot's default) has `ACCEPT_FLOAT_AS_INT` on by default: `0.5`
///   and `0.99` bound into an `int` field are `0` (truncated).
/// - Jackson has `FAIL_ON_NULL_FOR_PRIMITIVES` off by default: `null` into an `int` is
///   `0`; Go's `encoding/json` leaves the field at its zero value for `null`.
/// - Jackson coerces a numeric string into an `int` with `Integer.parseInt` (`"+0"`,
///   `"00"`); Python's `int()` reads `"0_0"`; JavaScript's `Number()` (Express apps)
///   reads `""`, `"0x0"` and `"0b0"` as `0`.
fn coercion_cases() -> Vec<Case> {
    let c = "scalar coercion";
    let scale =
        |body: &str| case(c, &format!("replicas {body}"), "PUT", "/api/v1/scale").json(body);
    vec![
        scale(r#"{"replicas":0.5}"#).denied(),
        scale(r#"{"replicas":0.99}"#).denied(),
        scale(r#"{"replicas":-0.5}"#).denied(),
        scale(r#"{"replicas":null}"#).denied(),
        scale(r#"{"replicas":"+0"}"#).denied(),
        scale(r#"{"replicas":"00"}"#).denied(),
        scale(r#"{"replicas":""}"#).denied(),
        case(c, "query replicas=+0", "PUT", "/api/v1/scale?replicas=%2B0").denied(),
        scale(r#"{"replicas":0}"#).denied(),
        scale(r#"{"replicas":1}"#).forwarded("PUT", "/v1/scale"),
        scale(r#"{"replicas":1.5}"#).forwarded("PUT", "/v1/scale"),
        scale(r#"{"replicas":"10"}"#).forwarded("PUT", "/v1/scale"),
    ]
}

/// A `POST` over HTTP/1.1 with a chunked body (no `Content-Length`), as streaming
/// clients send (Node's `fetch` with a stream, Go's client for a reader of unknown size).
fn chunked(class: &'static str, name: &str, target: &str, ct: &str, body: &str) -> Case {
    let text = format!(
        "POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {AGENT_KEY}\r\nContent-Type: {ct}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    Case {
        raw: Some(text.into_bytes()),
        h1_only: true,
        ..case(class, name, "POST", target)
    }
}

/// Ordinary requests no rule targets: each must reach the upstream unchanged.
/// Numeric strings that language-level conversions in handler code read as `0`:
/// Python's `int("0_0")`; JavaScript's `Number("0x0")`, `Number("0b0")` (Express
/// handlers that do `Number(req.body.replicas)`). Weaker than the framework defaults
/// above: the application calls the conversion.
fn language_coercion_cases() -> Vec<Case> {
    let c = "language coercion";
    let scale =
        |body: &str| case(c, &format!("replicas {body}"), "PUT", "/api/v1/scale").json(body);
    vec![
        scale(r#"{"replicas":"0_0"}"#).denied(),
        scale(r#"{"replicas":"0x0"}"#).denied(),
        scale(r#"{"replicas":"0b0"}"#).denied(),
        scale(r#"{"replicas":"0x10"}"#).forwarded("PUT", "/v1/scale"),
    ]
}

fn false_positive_cases() -> Vec<Case> {
    let c = "false positive";
    let (mp_ct, mut upload) = multipart(&[("title", "report")]);
    // A file part with binary content (NULs) before the closing boundary.
    let end = upload.len() - "--XyZb--\r\n".len();
    let mut file = b"--XyZb\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n\x00\x00\x00\x01\xff\xfe\r\n".to_vec();
    file.extend_from_slice(&upload[end..]);
    upload.truncate(end);
    upload.extend_from_slice(&file);
    let png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR".to_vec();
    vec![
        case(c, "JSON with charset=UTF-8", "POST", "/api/v1/query")
            .body(
                Some("application/json;charset=UTF-8"),
                r#"{"sql":"select 1"}"#,
            )
            .forwarded("POST", "/v1/query"),
        case(
            c,
            "form with charset=UTF-8 (jQuery default)",
            "POST",
            "/api/ec2",
        )
        .body(
            Some("application/x-www-form-urlencoded; charset=UTF-8"),
            "Action=DescribeInstances",
        )
        .forwarded("POST", "/ec2"),
        case(
            c,
            "form with charset=ISO-8859-1, no rule at stake",
            "POST",
            "/api/v1/notes",
        )
        .body(
            Some("application/x-www-form-urlencoded; charset=ISO-8859-1"),
            "text=caf%E9",
        )
        .forwarded("POST", "/v1/notes"),
        case(c, "file with a dot", "GET", "/api/v1/files/report.pdf")
            .forwarded("GET", "/v1/files/report.pdf"),
        case(
            c,
            "version segment with a dot and code=",
            "GET",
            "/api/v2.1/items?code=abc&state=xyz",
        )
        .forwarded("GET", "/v2.1/items?code=abc&state=xyz"),
        case(
            c,
            "custom method colon (Google style)",
            "GET",
            "/api/v1/things/t1:batchGet",
        )
        .forwarded("GET", "/v1/things/t1:batchGet"),
        case(c, "@me segment", "GET", "/api/v1/users/@me").forwarded("GET", "/v1/users/@me"),
        case(
            c,
            "space, UTF-8 and %25 in a file name",
            "GET",
            "/api/v1/files/my%20caf%C3%A9%25.txt",
        )
        .forwarded("GET", "/v1/files/my%20caf%C3%A9%25.txt"),
        case(
            c,
            "multipart upload with a binary file part",
            "POST",
            "/api/v1/upload",
        )
        .body(Some(&mp_ct), upload.clone())
        .forwarded("POST", "/v1/upload"),
        case(
            c,
            "multipart upload with a binary file to a path with a DELETE rule",
            "POST",
            "/api/v1/projects/p1",
        )
        .body(Some(&mp_ct), upload)
        .forwarded("POST", "/v1/projects/p1"),
        case(
            c,
            "PNG upload (POST) to a path with a DELETE rule",
            "POST",
            "/api/v1/projects/p1",
        )
        .body(Some("image/png"), png.clone())
        .forwarded("POST", "/v1/projects/p1"),
        case(
            c,
            "octet-stream upload (POST) to a path with a DELETE rule",
            "POST",
            "/api/v1/projects/p1",
        )
        .body(Some("application/octet-stream"), png)
        .forwarded("POST", "/v1/projects/p1"),
        case(
            c,
            "JSON POST to a path with a DELETE rule",
            "POST",
            "/api/v1/projects/p1",
        )
        .json(r#"{"name":"x","method":"DELETE"}"#)
        .forwarded("POST", "/v1/projects/p1"),
        case(
            c,
            "CORS preflight for DELETE",
            "OPTIONS",
            "/api/v1/projects/p1",
        )
        .h("Origin", "https://app.example")
        .h("Access-Control-Request-Method", "DELETE")
        .forwarded("OPTIONS", "/v1/projects/p1"),
        case(
            c,
            "GET volume with force=false",
            "GET",
            "/api/v1/volumes/v1?force=false",
        )
        .forwarded("GET", "/v1/volumes/v1?force=false"),
        case(
            c,
            "GET volume with an ordinary session cookie",
            "GET",
            "/api/v1/volumes/v1",
        )
        .h("Cookie", "sid=abc; theme=dark; forced_layout=true")
        .forwarded("GET", "/v1/volumes/v1"),
        case(
            c,
            "deploy staging with prod in a note",
            "POST",
            "/api/v1/deploy",
        )
        .json(r#"{"spec":{"tier":"staging"},"note":"prod next week"}"#)
        .forwarded("POST", "/v1/deploy"),
        case(
            c,
            "deploy with ?tier=prod not under spec",
            "POST",
            "/api/v1/deploy?tier=prod",
        )
        .json(r#"{"spec":{"tier":"staging"}}"#)
        .forwarded("POST", "/v1/deploy?tier=prod"),
        case(
            c,
            "release to production (not prod)",
            "POST",
            "/api/v1/release",
        )
        .h("X-Environment", "production")
        .forwarded("POST", "/v1/release"),
        case(
            c,
            "select with drop in a comment field",
            "POST",
            "/api/v1/query",
        )
        .json(r#"{"sql":"select 1","comment":"do not drop"}"#)
        .forwarded("POST", "/v1/query"),
        case(c, "JSON with leading newline", "POST", "/api/v1/query")
            .json("\n{\"sql\":\"select 1\"}")
            .forwarded("POST", "/v1/query"),
        case(
            c,
            "text/plain body to a path with a DELETE rule",
            "POST",
            "/api/v1/projects/p1",
        )
        .body(Some("text/plain"), "hello world")
        .forwarded("POST", "/v1/projects/p1"),
        case(c, "plain form post", "POST", "/api/v1/notes")
            .form("text=hello+world&tags=a,b")
            .forwarded("POST", "/v1/notes"),
        case(
            c,
            "empty body declared JSON, to a path with a DELETE rule",
            "POST",
            "/api/v1/projects/p1",
        )
        .json("")
        .forwarded("POST", "/v1/projects/p1"),
        case(
            c,
            "empty body declared JSON, to a path a json rule guards",
            "POST",
            "/api/v1/query",
        )
        .json("")
        .forwarded("POST", "/v1/query"),
        case(
            c,
            "JSON null body, to a path with a DELETE rule",
            "POST",
            "/api/v1/projects/p1",
        )
        .json("null")
        .forwarded("POST", "/v1/projects/p1"),
        case(
            c,
            "empty form body, to a path with a DELETE rule",
            "POST",
            "/api/v1/projects/p1",
        )
        .form("")
        .forwarded("POST", "/v1/projects/p1"),
        chunked(
            c,
            "chunked JSON POST (no declared length) to a path with a DELETE rule",
            "/api/v1/projects/p1",
            "application/json",
            r#"{"name":"x"}"#,
        )
        .forwarded("POST", "/v1/projects/p1"),
        chunked(
            c,
            "chunked JSON POST to a path a json rule guards",
            "/api/v1/query",
            "application/json",
            r#"{"sql":"select 1"}"#,
        )
        .forwarded("POST", "/v1/query"),
        case(c, "secrets list", "GET", "/api/v1/secrets").forwarded("GET", "/v1/secrets"),
        case(
            c,
            "query value with ; inside quotes",
            "GET",
            "/api/v1/search?q=a%3Bb",
        )
        .forwarded("GET", "/v1/search?q=a%3Bb"),
    ]
}

async fn red_suite(proto: Proto) {
    let cases = cases();
    let (up, _ws, a) = setup_with_rules(RULES, EXTRA).await;
    run(proto, a.proxy, &up, &cases)
        .await
        .assert_clean(&format!("red team 3 over {proto:?}"));
}

#[tokio::test]
async fn red_team3_over_http1() {
    red_suite(Proto::H1).await;
}

#[tokio::test]
async fn red_team3_over_h2c() {
    red_suite(Proto::H2c).await;
}
