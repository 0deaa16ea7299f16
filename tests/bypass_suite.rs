//! The bypass suite: a few hundred requests built to reach the upstream in a form the
//! rules would refuse in its plain form, organised by class (method overrides, `HEAD`,
//! `TRACE`, path case, percent-encoding, `;` parameters, `%2F`, JSON keys, bodies read
//! as another type, multipart, query keys, header lists) and sent over both HTTP/1.1
//! (raw bytes, so nothing is normalized on the way) and h2c.
//!
//! Ground truth is the recording upstream: for every case the suite checks airlock's
//! answer **and** how many requests the upstream saw (and which). Every class has benign
//! controls that must be forwarded, so an airlock that refuses everything fails too.
//! One airlock serves every case of a protocol, one case at a time; every miss is
//! collected and reported together (class, protocol, case, expected, got), so one run
//! lists all of them.
//!
//! The rules are all `then: deny` with `default: allow`: a bypass shows as "the upstream
//! saw it", a catch as an immediate `403`, and nothing is ever held. Three more suites
//! run the same way: allow rules under `default: deny` (an allow rule must match every
//! reading), and the per-upstream options (`path_case`, `path_params`, `encoded_slash`,
//! `allow_methods`). Two tests hold a request under several approval requirements (two
//! approve rules, or one rule listing two groups): one group's vote is never enough.

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
  - name: admin-area
    when: {path: /v1/admin/*}
    then: deny
  - name: cafe
    when: {path: /v1/café/*}
    then: deny
  - name: secret-files
    when: {path: /v1/files/secret/*}
    then: deny
  - name: sql-drop
    when:
      method: POST
      path: /v1/query
      json: {/sql: "re:(?i)\\b(drop|truncate)\\b"}
    then: deny
  - name: prod-tier
    when:
      path: /v1/deploy
      json: {/spec/tier: prod}
    then: deny
  - name: secret-kind
    when:
      path: /v1/deploy
      json: {/spec/kind: Secret}
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
  - name: prod-release
    when:
      path: /v1/release
      headers: {x-environment: prod}
    then: deny
  - name: scale-to-zero
    when:
      path: /v1/scale
      json: {/replicas: "0"}
    then: deny
"#;

/// Appended to the standard config: nothing is held, bodies over 16 KiB are not read.
const EXTRA: &str = "default: allow\nlimits: {inspect_body: 16KiB}\n";

/// `text` in UTF-16 (little-endian, or big-endian with a byte order mark).
fn utf16(text: &str, big_endian_with_bom: bool) -> Vec<u8> {
    if big_endian_with_bom {
        std::iter::once(0xfeff)
            .chain(text.encode_utf16())
            .flat_map(u16::to_be_bytes)
            .collect()
    } else {
        text.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }
}

/// Every case of the main suite.
fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(method_cases());
    v.extend(head_cases());
    v.extend(trace_cases());
    v.extend(path_case_cases());
    v.extend(encoding_cases());
    v.extend(path_param_cases());
    v.extend(encoded_slash_cases());
    v.extend(json_key_cases());
    v.extend(body_type_cases());
    v.extend(multipart_cases());
    v.extend(query_cases());
    v.extend(header_cases());
    v.extend(rewrite_header_cases());
    v.extend(json_number_cases());
    v
}

/// Method overrides in headers, the query and every body type (rule: DELETE a project).
fn method_cases() -> Vec<Case> {
    const C: &str = "method-override";
    const P: &str = "/api/v1/projects/p1";
    let post = |name: &str, target: &str| case(C, name, "POST", target);
    let q = |name: &str, query: &str| post(name, &format!("{P}?{query}"));
    vec![
        case(C, "control: GET a project", "GET", P).forwarded("GET", "/v1/projects/p1"),
        post("control: POST a project", P)
            .json("{}")
            .forwarded("POST", "/v1/projects/p1"),
        case(C, "DELETE (plain form)", "DELETE", P).denied(),
        case(C, "lowercase delete", "delete", P).denied(),
        case(C, "mixed-case Delete", "Delete", P).denied(),
        case(C, "mixed-case dElEtE", "dElEtE", P).denied(),
        raw_case(
            C,
            "absolute-form DELETE",
            "DELETE http://127.0.0.1/api/v1/projects/p1 HTTP/1.1\r\nHost: 127.0.0.1\r\n",
            Want::Denied,
        ),
        raw_case(
            C,
            "HTTP/1.0 DELETE",
            "DELETE /api/v1/projects/p1 HTTP/1.0\r\nHost: 127.0.0.1\r\n",
            Want::Denied,
        ),
        raw_case(
            C,
            "two spaces after the method",
            "DELETE  /api/v1/projects/p1 HTTP/1.1\r\nHost: 127.0.0.1\r\n",
            Want::Blocked,
        ),
        // The query.
        q("query _method=DELETE", "_method=DELETE").denied(),
        q("query _method=delete", "_method=delete").denied(),
        q("query _method=Delete", "_method=Delete").denied(),
        q("query _method=%44ELETE", "_method=%44ELETE").denied(),
        q("query _method after another field", "a=1&_method=DELETE").denied(),
        q(
            "query _method twice, agreeing",
            "_method=DELETE&_method=DELETE",
        )
        .denied(),
        q(
            "query _method GET then DELETE",
            "_method=GET&_method=DELETE",
        )
        .refused(400),
        q("query _method not a token", "_method=DEL%00ETE").refused(400),
        q("query _method with a trailing space", "_method=DELETE%20").blocked(),
        q("control: query _method=PUT", "_method=PUT")
            .forwarded("POST", "/v1/projects/p1?_method=PUT"),
        // Headers.
        post("X-HTTP-Method-Override: DELETE", P)
            .h("X-HTTP-Method-Override", "DELETE")
            .denied(),
        post("X-HTTP-Method: DELETE", P)
            .h("X-HTTP-Method", "DELETE")
            .denied(),
        post("X-Method-Override: DELETE", P)
            .h("X-Method-Override", "DELETE")
            .denied(),
        post("x-http-method-override: delete", P)
            .h("x-http-method-override", "delete")
            .denied(),
        post("override with padding", P)
            .h("X-HTTP-Method-Override", "  DELETE  ")
            .h1_only()
            .denied(),
        post("override DELETE, GET (Express takes the first)", P)
            .h("X-HTTP-Method-Override", "DELETE, GET")
            .blocked(),
        post("two override headers disagreeing", P)
            .h("X-HTTP-Method-Override", "DELETE")
            .h("X-HTTP-Method", "GET")
            .refused(400),
        post("the same override header twice, disagreeing", P)
            .h("X-HTTP-Method-Override", "GET")
            .h("X-HTTP-Method-Override", "DELETE")
            .refused(400),
        post("override DELETE;", P)
            .h("X-HTTP-Method-Override", "DELETE;")
            .refused(400),
        post("query and header agreeing", &format!("{P}?_method=DELETE"))
            .h("X-HTTP-Method-Override", "DELETE")
            .denied(),
        post("control: override GET", P)
            .h("X-HTTP-Method-Override", "GET")
            .forwarded("POST", "/v1/projects/p1"),
        case(C, "GET overridden to DELETE", "GET", P)
            .h("X-HTTP-Method-Override", "DELETE")
            .denied(),
        case(C, "PUT with form _method=DELETE", "PUT", P)
            .form("_method=DELETE")
            .denied(),
        case(C, "HEAD overridden to DELETE", "HEAD", P)
            .h("X-HTTP-Method-Override", "DELETE")
            .denied(),
        case(C, "DELETE dressed as GET", "DELETE", P)
            .h("X-HTTP-Method-Override", "GET")
            .blocked(),
        // A urlencoded body.
        post("form _method=DELETE", P)
            .form("_method=DELETE")
            .denied(),
        post("form _method after a field", P)
            .form("name=x&_method=DELETE")
            .denied(),
        post("form _method=delete", P)
            .form("_method=delete")
            .denied(),
        post("form _method=%44ELETE", P)
            .form("_method=%44ELETE")
            .denied(),
        post("form _method, content type with charset", P)
            .body(
                Some("application/x-www-form-urlencoded; charset=UTF-8"),
                "_method=DELETE",
            )
            .denied(),
        post("form _method, content type in capitals", P)
            .body(Some("Application/X-WWW-Form-URLEncoded"), "_method=DELETE")
            .denied(),
        post(
            "form _method=GET against query _method=DELETE",
            &format!("{P}?_method=DELETE"),
        )
        .form("_method=GET")
        .refused(400),
        post("form _method=DELETE against header GET", P)
            .h("X-HTTP-Method-Override", "GET")
            .form("_method=DELETE")
            .refused(400),
        post("form _method and header agreeing", P)
            .h("X-HTTP-Method-Override", "DELETE")
            .form("_method=DELETE")
            .denied(),
        post("control: form _method=PUT", P)
            .form("_method=PUT")
            .forwarded("POST", "/v1/projects/p1"),
        // A JSON body.
        post("JSON _method", P)
            .json(r#"{"_method":"DELETE"}"#)
            .denied(),
        post("JSON _METHOD", P)
            .json(r#"{"_METHOD":"DELETE"}"#)
            .denied(),
        post("JSON _Method: delete", P)
            .json(r#"{"_Method":"delete"}"#)
            .denied(),
        post("JSON escaped key \\u005fmethod", P)
            .json(r#"{"\u005fmethod":"DELETE"}"#)
            .denied(),
        post("JSON _method after a field", P)
            .json(r#"{"name":"x","_method":"DELETE"}"#)
            .denied(),
        post("JSON _method with an escaped value", P)
            .json(r#"{"_method":"\u0044ELETE"}"#)
            .denied(),
        post("JSON _method twice, GET then DELETE", P)
            .json(r#"{"_method":"GET","_method":"DELETE"}"#)
            .blocked(),
        post("JSON _method, content type with charset", P)
            .body(
                Some("application/json; charset=utf-8"),
                r#"{"_method":"DELETE"}"#,
            )
            .denied(),
        post("control: JSON _method PUT", P)
            .json(r#"{"_method":"PUT"}"#)
            .forwarded("POST", "/v1/projects/p1"),
        // A multipart body.
        post("multipart _method=DELETE", P)
            .multipart(&[("_method", "DELETE")])
            .denied(),
        post("multipart _method=delete after a field", P)
            .multipart(&[("name", "x"), ("_method", "delete")])
            .denied(),
        post("control: multipart _method=PUT", P)
            .multipart(&[("_method", "PUT")])
            .forwarded("POST", "/v1/projects/p1"),
    ]
}

/// `HEAD` is a `GET` for strict rules (rule: GET a secret).
fn head_cases() -> Vec<Case> {
    const C: &str = "head";
    const S: &str = "/api/v1/secrets/s1";
    vec![
        case(C, "GET a secret (plain form)", "GET", S).denied(),
        case(C, "HEAD a secret", "HEAD", S).denied(),
        case(C, "lowercase head", "head", S).denied(),
        case(C, "lowercase get", "get", S).denied(),
        case(C, "HEAD in other case", "HEAD", "/api/V1/SECRETS/s1").denied(),
        case(C, "POST overridden to GET", "POST", S)
            .h("X-HTTP-Method-Override", "GET")
            .denied(),
        case(C, "POST overridden to HEAD", "POST", S)
            .h("X-HTTP-Method-Override", "HEAD")
            .denied(),
        case(
            C,
            "POST ?_method=HEAD",
            "POST",
            &format!("{S}?_method=HEAD"),
        )
        .denied(),
        case(C, "POST form _method=GET", "POST", S)
            .form("_method=GET")
            .denied(),
        case(C, "control: HEAD elsewhere", "HEAD", "/api/v1/public")
            .forwarded("HEAD", "/v1/public"),
        case(C, "control: GET elsewhere", "GET", "/api/v1/public").forwarded("GET", "/v1/public"),
        case(C, "control: POST a secret", "POST", S)
            .json("{}")
            .forwarded("POST", "/v1/secrets/s1"),
        case(C, "control: OPTIONS a secret", "OPTIONS", S).forwarded("OPTIONS", "/v1/secrets/s1"),
    ]
}

/// `TRACE`, `TRACK` and `CONNECT` are refused by default, however they are asked for.
fn trace_cases() -> Vec<Case> {
    const C: &str = "trace-track-connect";
    const P: &str = "/api/v1/public";
    let post = |name: &str| case(C, name, "POST", P);
    vec![
        case(C, "TRACE", "TRACE", P).refused(405),
        case(C, "lowercase trace", "trace", P).refused(405),
        case(C, "mixed-case Trace", "Trace", P).refused(405),
        case(C, "TRACK", "TRACK", P).refused(405),
        case(C, "lowercase track", "track", P).refused(405),
        case(C, "TRACE on another path", "TRACE", "/api/nowhere").refused(405),
        raw_case(
            C,
            "CONNECT authority-form",
            "CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: 127.0.0.1:80\r\n",
            Want::Blocked,
        ),
        raw_case(
            C,
            "CONNECT with a path",
            "CONNECT /api/v1/public HTTP/1.1\r\nHost: 127.0.0.1\r\n",
            Want::Blocked,
        ),
        post("override header TRACE")
            .h("X-HTTP-Method-Override", "TRACE")
            .refused(405),
        post("X-HTTP-Method: TRACK")
            .h("X-HTTP-Method", "TRACK")
            .refused(405),
        post("X-Method-Override: connect")
            .h("X-Method-Override", "connect")
            .refused(405),
        case(
            C,
            "query _method=trace",
            "POST",
            &format!("{P}?_method=trace"),
        )
        .refused(405),
        case(
            C,
            "query _method=CONNECT",
            "POST",
            &format!("{P}?_method=CONNECT"),
        )
        .refused(405),
        post("form _method=TRACE")
            .form("_method=TRACE")
            .refused(405),
        post("JSON _method TRACK")
            .json(r#"{"_method":"TRACK"}"#)
            .refused(405),
        post("multipart _method=TRACE")
            .multipart(&[("_method", "TRACE")])
            .refused(405),
        case(C, "control: OPTIONS", "OPTIONS", P).forwarded("OPTIONS", "/v1/public"),
        case(C, "control: PATCH", "PATCH", P)
            .json("{}")
            .forwarded("PATCH", "/v1/public"),
        case(C, "control: PUT", "PUT", P)
            .json("{}")
            .forwarded("PUT", "/v1/public"),
    ]
}

/// Paths are routed case-insensitively by Express and ASP.NET (rules: the admin area,
/// DELETE a project).
fn path_case_cases() -> Vec<Case> {
    const C: &str = "path-case";
    let get = |target: &str| case(C, target, "GET", target);
    let del = |target: &str| case(C, &format!("DELETE {target}"), "DELETE", target);
    vec![
        get("/api/v1/admin/users").denied(),
        get("/api/V1/admin/users").denied(),
        get("/api/v1/ADMIN/users").denied(),
        get("/api/v1/Admin/Users").denied(),
        get("/api/V1/ADMIN/USERS").denied(),
        get("/api/v1/aDmIn/users").denied(),
        get("/api/v1/%41dmin/users").denied(),
        get("/api/v1/%41DMIN/users").denied(),
        get("/api/v1/ADMIN/users/").denied(),
        get("/api/v1//ADMIN//users").denied(),
        get("/api/v1/x/../ADMIN/users").denied(),
        get("/API/v1/admin/users").blocked(),
        get("/Api/V1/Admin/users").blocked(),
        del("/api/V1/PROJECTS/p1").denied(),
        del("/api/v1/Projects/P1").denied(),
        del("/api/v1/pRoJeCtS/p1").denied(),
        case(
            C,
            "lowercase delete, capital path",
            "delete",
            "/api/V1/Projects/p1",
        )
        .denied(),
        get("/api/v1/adminx/users")
            .want(Want::Forwarded("GET", "/v1/adminx/users".into()))
            .named("control: a neighbour of the admin area"),
        get("/api/v1/Public")
            .want(Want::Forwarded("GET", "/v1/Public".into()))
            .named("control: case is kept on the way"),
    ]
}

/// JSON numbers: `0`, `0.0`, `-0`, `0e5` are one value to Go's and JavaScript's decoders.
fn json_number_cases() -> Vec<Case> {
    const C: &str = "json-numbers";
    let scale = |name: &str, body: &str| case(C, name, "POST", "/api/v1/scale").json(body);
    vec![
        scale("zero", r#"{"replicas":0}"#).denied(),
        scale("zero as a string", r#"{"replicas":"0"}"#).denied(),
        scale("0.0", r#"{"replicas":0.0}"#).denied(),
        scale("-0", r#"{"replicas":-0}"#).denied(),
        scale("-0.0", r#"{"replicas":-0.0}"#).denied(),
        scale("0e5", r#"{"replicas":0e5}"#).denied(),
        scale("0E-3", r#"{"replicas":0E-3}"#).denied(),
        scale("REPLICAS 0.00", r#"{"REPLICAS":0.00}"#).denied(),
        scale("control: three", r#"{"replicas":3}"#).forwarded("POST", "/v1/scale"),
        scale("control: 1.5", r#"{"replicas":1.5}"#).forwarded("POST", "/v1/scale"),
    ]
}

/// Headers IIS and Symfony read as the real path: refused, whatever path they name.
fn rewrite_header_cases() -> Vec<Case> {
    const C: &str = "rewrite-headers";
    let get = |name: &str, header: &'static str, value: &'static str| {
        case(C, name, "GET", "/api/v1/public")
            .h(header, value)
            .refused(400)
    };
    vec![
        get(
            "X-Original-URL to the admin area",
            "X-Original-URL",
            "/v1/admin/users",
        ),
        get(
            "x-original-url lowercase",
            "x-original-url",
            "/v1/admin/users",
        ),
        get("X-Rewrite-URL", "X-Rewrite-URL", "/v1/admin/users"),
        get(
            "X-Original-URL to a harmless path",
            "X-Original-URL",
            "/v1/public",
        ),
        case(C, "control: no rewrite header", "GET", "/api/v1/public")
            .want(Want::Forwarded("GET", "/v1/public".into())),
        // Two content types: one upstream parses the body by the first, another by
        // the last (here: a multipart form terminating instances).
        chunked_case(
            C,
            "two Content-Type headers, text then multipart",
            "/api/ec2",
            "text/plain\r\nContent-Type: multipart/form-data; boundary=b",
            &["--b\r\nContent-Disposition: form-data; name=\"Action\"\r\n\r\nTerminateInstances\r\n--b--\r\n"],
            Want::Refused(400),
        ),
    ]
}

/// Percent-encoding: strict rules also match the decoded path (rules: café, DELETE a
/// project, the admin area).
fn encoding_cases() -> Vec<Case> {
    const C: &str = "percent-encoding";
    let get = |target: &str| case(C, target, "GET", target);
    let del = |target: &str| case(C, &format!("DELETE {target}"), "DELETE", target);
    vec![
        get("/api/v1/caf%C3%A9/x").denied(),
        get("/api/v1/caf%c3%a9/x").denied(),
        get("/api/v1/CAF%C3%89/x").denied(),
        get("/api/v1/%63af%C3%A9/x").denied(),
        raw_case(
            C,
            "raw UTF-8 café",
            "GET /api/v1/caf\u{e9}/x HTTP/1.1\r\nHost: 127.0.0.1\r\n",
            Want::Blocked,
        ),
        get("/api/v1/%61dmin/users").denied(),
        get("/api/%76%31/admin/users").denied(),
        del("/api/v1/projects/%70%31").denied(),
        del("/api/%76%31/projects/p1").denied(),
        del("/api/v1/project%73/p1").denied(),
        del("/api/v1/%50rojects/p1").denied(),
        del("/api/v1/%70%72%6F%6A%65%63%74%73/p1").denied(),
        del("/api/v1/projects/%252Fp1").denied(),
        del("/api/v1/projects/%20p1").denied(),
        del("/api/v1/x/%2E%2E/projects/p1").denied(),
        del("/api/v1/x/%2e./projects/p1").denied(),
        del("/api/v1/projects/./p1").denied(),
        del("/api/v1/projects/p1/.").denied(),
        del("/api/v1/projects%2Fp1").refused(400),
        del("/api/v1/projects/p1%00").refused(400),
        del("/api/v1/projects/p1%09").refused(400),
        del("/api/v1/projects/%C0%AFp1").refused(400),
        del("/api/v1/projects/p1%5C").refused(400),
        del("/api/v1/projects/p1%zz").refused(400),
        get("/api/v1/%u0061dmin/users").refused(400),
        get("/api/v1/cafe/x")
            .forwarded("GET", "/v1/cafe/x")
            .named("control: cafe without the accent"),
        get("/api/v1/caf%C3%A9")
            .forwarded("GET", "/v1/caf%C3%A9")
            .named("control: café itself"),
        get("/api/v1/%70ublic")
            .forwarded("GET", "/v1/public")
            .named("control: unreserved decoded"),
    ]
}

/// `;` path parameters (Servlet containers strip them) are refused by default.
fn path_param_cases() -> Vec<Case> {
    const C: &str = "path-params";
    let get = |target: &str| case(C, target, "GET", target);
    let del = |target: &str| case(C, &format!("DELETE {target}"), "DELETE", target);
    vec![
        del("/api/v1/projects;x=1/p1").refused(400),
        del("/api/v1/projects/p1;x=1").refused(400),
        del("/api/v1/projects/p1;").refused(400),
        del("/api/v1/projects/p1%3Bx").refused(400),
        del("/api/v1/projects/p1%3bx").refused(400),
        del("/api/v1;/projects/p1").refused(400),
        get("/api/v1/admin;x/users").refused(400),
        get("/api/v1/admin/users;jsessionid=1").refused(400),
        get("/api/v1/public;jsessionid=1").refused(400),
        get("/api/v1/x/..;/admin/users").refused(400),
        get("/api/v1/public?a=1;b=2")
            .forwarded("GET", "/v1/public?a=1;b=2")
            .named("control: ; in the query"),
    ]
}

/// `%2F` is refused by default (rule: secret files).
fn encoded_slash_cases() -> Vec<Case> {
    const C: &str = "encoded-slash";
    let get = |target: &str| case(C, target, "GET", target);
    vec![
        get("/api/v1/files/a%2Fb").refused(400),
        get("/api/v1/files/secret%2Fx").refused(400),
        get("/api/v1/files/secret%2fx").refused(400),
        get("/api/v1/files%2Fsecret/x").refused(400),
        get("/api/v1/files%2fsecret%2fx").refused(400),
        get("/api/v1/files/secret/x").denied(),
        get("/api/v1/files/a?name=a%2Fb")
            .forwarded("GET", "/v1/files/a?name=a%2Fb")
            .named("control: %2F in the query"),
        get("/api/v1/files/a")
            .forwarded("GET", "/v1/files/a")
            .named("control: a plain file"),
    ]
}

/// JSON keys under Unicode case folding, duplicate keys, invalid JSON (rules: sql-drop,
/// prod-tier, secret-kind).
fn json_key_cases() -> Vec<Case> {
    const C: &str = "json-keys";
    let sql = |name: &str, body: &str| case(C, name, "POST", "/api/v1/query").json(body);
    let deploy = |name: &str, body: &str| case(C, name, "POST", "/api/v1/deploy").json(body);
    let drop = r#""drop table t""#;
    vec![
        sql("control: select", r#"{"sql":"select 1"}"#).forwarded("POST", "/v1/query"),
        sql(
            "control: a column named dropped_at",
            r#"{"sql":"select dropped_at from t"}"#,
        )
        .forwarded("POST", "/v1/query"),
        sql("drop (plain form)", &format!(r#"{{"sql":{drop}}}"#)).denied(),
        sql("DROP in capitals", r#"{"sql":"DROP TABLE t"}"#).denied(),
        sql("truncate", r#"{"sql":"truncate t"}"#).denied(),
        sql("key SQL", &format!(r#"{{"SQL":{drop}}}"#)).denied(),
        sql("key Sql", &format!(r#"{{"Sql":{drop}}}"#)).denied(),
        sql("key sQL", &format!(r#"{{"sQL":{drop}}}"#)).denied(),
        sql(
            "key with long s (ſql)",
            &format!("{{\"\u{17f}ql\":{drop}}}"),
        )
        .denied(),
        sql(
            "key with escaped long s",
            &format!(r#"{{"\u017fql":{drop}}}"#),
        )
        .denied(),
        sql(
            "key escaped \\u0073ql",
            &format!(r#"{{"\u0073ql":{drop}}}"#),
        )
        .denied(),
        sql(
            "key escaped \\u0053QL",
            &format!(r#"{{"\u0053QL":{drop}}}"#),
        )
        .denied(),
        sql("value escaped \\u0064rop", r#"{"sql":"\u0064rop table t"}"#).denied(),
        sql("value with a tab", "{\"sql\":\"drop\\ttable t\"}").denied(),
        sql(
            "duplicate key, benign first",
            &format!(r#"{{"sql":"select 1","sql":{drop}}}"#),
        )
        .denied(),
        sql(
            "duplicate key, malicious first",
            &format!(r#"{{"sql":{drop},"sql":"select 1"}}"#),
        )
        .denied(),
        sql(
            "case-duplicate key, SQL second",
            &format!(r#"{{"sql":"select 1","SQL":{drop}}}"#),
        )
        .denied(),
        sql(
            "case-duplicate key, SQL first",
            &format!(r#"{{"SQL":{drop},"sql":"select 1"}}"#),
        )
        .denied(),
        sql(
            "fold-duplicate key ſql second",
            &format!("{{\"sql\":\"select 1\",\"\u{17f}ql\":{drop}}}"),
        )
        .denied(),
        sql(
            "fold-duplicate escaped \\u017fQL second",
            &format!(r#"{{"sql":"select 1","\u017fQL":{drop}}}"#),
        )
        .denied(),
        sql("truncated JSON", r#"{"sql":"drop table t""#).denied(),
        sql("truncated benign JSON", r#"{"sql":"select 1""#).denied(),
        sql(
            "trailing garbage",
            r#"{"sql":"select 1"}{"sql":"drop table t"}"#,
        )
        .denied(),
        sql("a comment (JSON5)", r#"{"sql": /* x */ "drop table t"}"#).denied(),
        sql("single quotes (JSON5)", r#"{'sql':'drop table t'}"#).denied(),
        sql("byte order mark", "\u{feff}{\"sql\":\"drop table t\"}").denied(),
        sql(
            "over inspect_body (fail closed)",
            &format!(r#"{{"pad":"{}","sql":"select 1"}}"#, "x".repeat(20_000)),
        )
        .denied(),
        case(
            C,
            "UTF-16LE JSON (Jackson detects it)",
            "POST",
            "/api/v1/query",
        )
        .body(
            Some("application/json"),
            utf16(r#"{"sql":"drop table t"}"#, false),
        )
        .denied(),
        case(C, "UTF-16BE JSON with a BOM", "POST", "/api/v1/query")
            .body(
                Some("application/json; charset=utf-16"),
                utf16(r#"{"sql":"drop table t"}"#, true),
            )
            .denied(),
        chunked_case(
            C,
            "chunked, the key split across chunks",
            "/api/v1/query",
            "application/json",
            &[r#"{"s"#, r#"ql":"dr"#, r#"op table t"}"#],
            Want::Denied,
        ),
        chunked_case(
            C,
            "chunked, SQL key",
            "/api/v1/query",
            "text/plain",
            &[r#"{"SQL":"#, r#""drop table t"}"#],
            Want::Denied,
        ),
        deploy(
            "control: a dev ConfigMap",
            r#"{"spec":{"tier":"dev","kind":"ConfigMap"}}"#,
        )
        .forwarded("POST", "/v1/deploy"),
        deploy("nested prod (plain form)", r#"{"spec":{"tier":"prod"}}"#).denied(),
        deploy("nested keys in capitals", r#"{"SPEC":{"TIER":"prod"}}"#).denied(),
        deploy(
            "nested case-duplicate",
            r#"{"Spec":{"tier":"dev","Tier":"prod"}}"#,
        )
        .denied(),
        deploy(
            "duplicate object, malicious first",
            r#"{"spec":{"tier":"prod"},"spec":{"tier":"dev"}}"#,
        )
        .denied(),
        deploy(
            "duplicate object, malicious second",
            r#"{"spec":{"tier":"dev"},"spec":{"tier":"prod"}}"#,
        )
        .denied(),
        deploy("kind Secret (plain form)", r#"{"spec":{"kind":"Secret"}}"#).denied(),
        deploy(
            "Kelvin sign in kind (escaped)",
            r#"{"spec":{"\u212aind":"Secret"}}"#,
        )
        .denied(),
        deploy(
            "Kelvin sign in kind (raw)",
            "{\"spec\":{\"\u{212a}ind\":\"Secret\"}}",
        )
        .denied(),
        deploy("long s in spec", "{\"\u{17f}pec\":{\"kind\":\"Secret\"}}").denied(),
        deploy("KIND in capitals", r#"{"SPEC":{"KIND":"Secret"}}"#).denied(),
        case(
            C,
            "PUT prod (the rule names no method)",
            "PUT",
            "/api/v1/deploy",
        )
        .json(r#"{"spec":{"tier":"prod"}}"#)
        .denied(),
    ]
}

/// A body declared as one type and read as another (rules: sql-drop, terminate).
fn body_type_cases() -> Vec<Case> {
    const C: &str = "body-type";
    let sql = |name: &str, ct: Option<&str>, body: &str| {
        case(C, name, "POST", "/api/v1/query").body(ct, body)
    };
    let ec2 =
        |name: &str, ct: Option<&str>, body: &str| case(C, name, "POST", "/api/ec2").body(ct, body);
    let drop = r#"{"sql":"drop table t"}"#;
    let form_ct = Some("application/x-www-form-urlencoded");
    vec![
        sql("JSON sent as text/plain", Some("text/plain"), drop).denied(),
        sql("JSON sent as a form", form_ct, drop).denied(),
        sql("JSON sent without a content type", None, drop).denied(),
        sql(
            "JSON sent as octet-stream",
            Some("application/octet-stream"),
            drop,
        )
        .denied(),
        sql(
            "JSON sent as vnd.api+json",
            Some("application/vnd.api+json"),
            drop,
        )
        .denied(),
        sql(
            "JSON sent as Application/JSON",
            Some("Application/JSON"),
            drop,
        )
        .denied(),
        sql(
            "JSON sent as multipart",
            Some("multipart/form-data; boundary=XyZb"),
            drop,
        )
        .denied(),
        sql("JSON sent as text/html", Some("text/html"), drop).denied(),
        case(C, "two Content-Type lines", "POST", "/api/v1/query")
            .h("Content-Type", "text/plain")
            .h("Content-Type", "application/json")
            .body(None, drop)
            .refused(400),
        sql(
            "content encoding gzip that is not",
            Some("application/json"),
            drop,
        )
        .h("Content-Encoding", "gzip")
        .denied(),
        sql(
            "JSON with a parameter",
            Some("application/json;foo=bar"),
            drop,
        )
        .denied(),
        sql(
            "control: benign JSON as text/plain",
            Some("text/plain"),
            r#"{"sql":"select 1"}"#,
        )
        .forwarded("POST", "/v1/query"),
        sql(
            "control: benign JSON, no content type",
            None,
            r#"{"sql":"select 1"}"#,
        )
        .forwarded("POST", "/v1/query"),
        ec2("form (plain form)", form_ct, "Action=TerminateInstances").denied(),
        ec2(
            "form sent as JSON",
            Some("application/json"),
            "Action=TerminateInstances",
        )
        .denied(),
        ec2(
            "form with charset",
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            "Action=TerminateInstances",
        )
        .denied(),
        ec2(
            "form content type in capitals",
            Some("APPLICATION/X-WWW-FORM-URLENCODED"),
            "Action=TerminateInstances",
        )
        .denied(),
        ec2("form value encoded", form_ct, "Action=Terminate%49nstances").denied(),
        ec2(
            "form field twice, benign first",
            form_ct,
            "Action=DescribeInstances&Action=TerminateInstances",
        )
        .denied(),
        ec2(
            "form field after others",
            form_ct,
            "Version=2016-11-15&Action=TerminateInstances",
        )
        .denied(),
        case(
            C,
            "form field in the query",
            "POST",
            "/api/ec2?Action=TerminateInstances",
        )
        .denied(),
        case(
            C,
            "form field in a GET query",
            "GET",
            "/api/ec2?Action=TerminateInstances",
        )
        .denied(),
        ec2(
            "control: DescribeInstances",
            form_ct,
            "Action=DescribeInstances",
        )
        .forwarded("POST", "/ec2"),
    ]
}

/// multipart/form-data fields count as form fields (rule: terminate).
fn multipart_cases() -> Vec<Case> {
    const C: &str = "multipart";
    let ec2 =
        |name: &str, ct: &str, body: &str| case(C, name, "POST", "/api/ec2").body(Some(ct), body);
    let mp = "multipart/form-data; boundary=XyZb";
    let part = |disposition: &str, value: &str| {
        format!("--XyZb\r\nContent-Disposition: {disposition}\r\n\r\n{value}\r\n--XyZb--\r\n")
    };
    let terminate = part("form-data; name=\"Action\"", "TerminateInstances");
    vec![
        case(C, "multipart field (plain form)", "POST", "/api/ec2")
            .multipart(&[("Action", "TerminateInstances")])
            .denied(),
        case(C, "multipart field after a benign one", "POST", "/api/ec2")
            .multipart(&[("Action", "DescribeInstances"), ("Action", "TerminateInstances")])
            .denied(),
        ec2("unquoted name", mp, &part("form-data; name=Action", "TerminateInstances")).denied(),
        ec2("quoted boundary", "multipart/form-data; boundary=\"XyZb\"", &terminate).denied(),
        ec2("content type in capitals", "MULTIPART/FORM-DATA; boundary=XyZb", &terminate).denied(),
        ec2("a preamble", mp, &format!("preamble\r\n{terminate}")).denied(),
        ec2(
            "a part with its own content type",
            mp,
            "--XyZb\r\nContent-Disposition: form-data; name=\"Action\"\r\nContent-Type: text/plain\r\n\r\nTerminateInstances\r\n--XyZb--\r\n",
        )
        .denied(),
        ec2(
            "LF line endings",
            mp,
            "--XyZb\nContent-Disposition: form-data; name=\"Action\"\n\nTerminateInstances\n--XyZb--\n",
        )
        .denied(),
        ec2(
            "no closing boundary",
            mp,
            "--XyZb\r\nContent-Disposition: form-data; name=\"Action\"\r\n\r\nTerminateInstances\r\n",
        )
        .denied(),
        ec2(
            "lowercase content-disposition",
            mp,
            "--XyZb\r\ncontent-disposition: form-data; name=\"Action\"\r\n\r\nTerminateInstances\r\n--XyZb--\r\n",
        )
        .denied(),
        ec2("no space after the ;", mp, &part("form-data;name=\"Action\"", "TerminateInstances")).denied(),
        ec2(
            "a charset before the boundary",
            "multipart/form-data; charset=utf-8; boundary=XyZb",
            &terminate,
        )
        .denied(),
        ec2("two boundary parameters", "multipart/form-data; boundary=Other; boundary=XyZb", &terminate).denied(),
        ec2("boundary missing from the content type", "multipart/form-data", &terminate).denied(),
        case(C, "control: DescribeInstances", "POST", "/api/ec2")
            .multipart(&[("Action", "DescribeInstances")])
            .forwarded("POST", "/ec2"),
    ]
}

/// Query keys case-insensitive, array syntax, `;` separators, repeats, form fields for
/// query rules (rule: force-delete).
fn query_cases() -> Vec<Case> {
    const C: &str = "query";
    const V: &str = "/api/v1/volumes/v1";
    let del = |query: &str| case(C, &format!("?{query}"), "DELETE", &format!("{V}?{query}"));
    let post = |name: &str| case(C, name, "POST", V);
    vec![
        del("force=true").denied(),
        del("x=1&force=true").denied(),
        del("FORCE=true").denied(),
        del("Force=true").denied(),
        del("force[]=true").denied(),
        del("force[0]=true").denied(),
        del("FORCE[]=true").denied(),
        del("force%5B%5D=true").denied(),
        del("force%5b0%5d=true").denied(),
        del("a=1;force=true").denied(),
        del("force=true;a=1").denied(),
        del("force=false&force=true").denied(),
        del("force=true&force=false").denied(),
        del("%66orce=true").denied(),
        del("%46ORCE=true").denied(),
        del("force=%74rue").denied(),
        del("force=tr%75e").denied(),
        del("&&force=true&").denied(),
        case(
            C,
            "?force=true#fragment",
            "DELETE",
            &format!("{V}?force=true#frag"),
        )
        .h1_only()
        .denied(),
        post("form body force=true").form("force=true").denied(),
        post("form body FORCE=true").form("FORCE=true").denied(),
        post("form body force[]=true").form("force[]=true").denied(),
        post("form body force=false&force=true")
            .form("force=false&force=true")
            .denied(),
        post("multipart force=true")
            .multipart(&[("force", "true")])
            .denied(),
        case(
            C,
            "form force=true under a benign query",
            "POST",
            &format!("{V}?force=false"),
        )
        .form("force=true")
        .denied(),
        case(C, "control: no query", "DELETE", V).forwarded("DELETE", "/v1/volumes/v1"),
        del("force=false").forwarded("DELETE", "/v1/volumes/v1?force=false"),
        del("forced=true").forwarded("DELETE", "/v1/volumes/v1?forced=true"),
        del("reinforce=true").forwarded("DELETE", "/v1/volumes/v1?reinforce=true"),
        post("control: form force=false")
            .form("force=false")
            .forwarded("POST", "/v1/volumes/v1"),
    ]
}

/// Header values as comma-separated lists, repeated lines, `_` in names (rule:
/// prod-release).
fn header_cases() -> Vec<Case> {
    const C: &str = "headers";
    const R: &str = "/api/v1/release";
    let post = |name: &str| case(C, name, "POST", R);
    let env = |value: &str| post(&format!("x-environment: {value}")).h("x-environment", value);
    vec![
        env("prod").denied(),
        post("X-ENVIRONMENT: prod")
            .h("X-ENVIRONMENT", "prod")
            .denied(),
        env("dev, prod").denied(),
        env("prod, dev").denied(),
        env("dev,prod").denied(),
        env("dev ,  prod").denied(),
        env("dev,,prod").denied(),
        post("two lines, prod second")
            .h("x-environment", "dev")
            .h("x-environment", "prod")
            .denied(),
        post("two lines, prod first")
            .h("x-environment", "prod")
            .h("x-environment", "dev")
            .denied(),
        post("X_Environment: prod")
            .h("X_Environment", "prod")
            .denied(),
        post("x_environment: prod")
            .h("x_environment", "prod")
            .denied(),
        post("x_environment: prod beside x-environment: dev")
            .h("x-environment", "dev")
            .h("x_environment", "prod")
            .denied(),
        raw_case(
            C,
            "no space after the colon",
            "POST /api/v1/release HTTP/1.1\r\nHost: 127.0.0.1\r\nx-environment:prod\r\n",
            Want::Denied,
        ),
        raw_case(
            C,
            "a tab before the value",
            "POST /api/v1/release HTTP/1.1\r\nHost: 127.0.0.1\r\nx-environment:\tprod\r\n",
            Want::Denied,
        ),
        raw_case(
            C,
            "obs-fold continuation line",
            "POST /api/v1/release HTTP/1.1\r\nHost: 127.0.0.1\r\nx-environment: dev,\r\n prod\r\n",
            Want::Blocked,
        ),
        raw_case(
            C,
            "space before the colon",
            "POST /api/v1/release HTTP/1.1\r\nHost: 127.0.0.1\r\nx-environment : prod\r\n",
            Want::Blocked,
        ),
        post("control: no header").forwarded("POST", "/v1/release"),
        env("dev").forwarded("POST", "/v1/release"),
        env("production").forwarded("POST", "/v1/release"),
        env("dev, staging").forwarded("POST", "/v1/release"),
    ]
}

async fn main_suite(proto: Proto) {
    let cases = cases();
    assert!(cases.len() >= 150, "the suite has {} cases", cases.len());
    let (up, _ws, a) = setup_with_rules(RULES, EXTRA).await;
    run(proto, a.proxy, &up, &cases)
        .await
        .assert_clean(&format!("bypass suite over {proto:?}"));
}

#[tokio::test]
async fn bypass_suite_over_http1() {
    main_suite(Proto::H1).await;
}

#[tokio::test]
async fn bypass_suite_over_h2c() {
    main_suite(Proto::H2c).await;
}

// ---- Allow rules under `default: deny`: an allow rule matches only when every reading
// ---- of the request matches it.

const ALLOW_RULES: &str = r#"rules:
  - name: public-reads
    when: {method: GET, path: /v1/public/*}
    then: allow
  - name: dev-deploys
    when:
      method: POST
      path: /v1/deploy
      json: {/spec/tier: dev}
    then: allow
  - name: safe-ops
    when:
      method: POST
      path: /v1/ops
      query: {mode: safe}
    then: allow
  - name: dev-release
    when:
      method: POST
      path: /v1/release
      headers: {x-environment: dev}
    then: allow
  - name: describe
    when:
      method: POST
      path: /ec2
      form: {Action: DescribeInstances}
    then: allow
"#;

/// Every reading must match an allow rule, or the default (deny) applies.
fn allow_cases() -> Vec<Case> {
    const C: &str = "allow-rules";
    const PUB: &str = "/api/v1/public/x";
    let c = |name: &str, method: &str, target: &str| case(C, name, method, target);
    let deploy = |name: &str, body: &str| c(name, "POST", "/api/v1/deploy").json(body);
    let ops = |query: &str| {
        c(
            &format!("?{query}"),
            "POST",
            &format!("/api/v1/ops?{query}"),
        )
    };
    let release = |name: &str| c(name, "POST", "/api/v1/release");
    let ec2 = |name: &str| c(name, "POST", "/api/ec2");
    vec![
        c("control: GET public", "GET", PUB).forwarded("GET", "/v1/public/x"),
        c("DELETE public (no allow rule)", "DELETE", PUB).denied(),
        c("GET public in capitals", "GET", "/api/v1/PUBLIC/x").denied(),
        c("GET public overridden to DELETE", "GET", PUB)
            .h("X-HTTP-Method-Override", "DELETE")
            .denied(),
        c("POST public overridden to GET", "POST", PUB)
            .h("X-HTTP-Method-Override", "GET")
            .denied(),
        c(
            "GET public ?_method=DELETE",
            "GET",
            &format!("{PUB}?_method=DELETE"),
        )
        .denied(),
        c("GET public, form _method=DELETE", "GET", PUB)
            .form("_method=DELETE")
            .denied(),
        c("GET public, JSON _method DELETE", "GET", PUB)
            .json(r#"{"_method":"DELETE"}"#)
            .denied(),
        c("TRACE public", "TRACE", PUB).blocked(),
        c("GET public;x=1", "GET", "/api/v1/public;x=1/x").blocked(),
        deploy("control: dev deploy", r#"{"spec":{"tier":"dev"}}"#).forwarded("POST", "/v1/deploy"),
        deploy(
            "duplicate spec, prod second",
            r#"{"spec":{"tier":"dev"},"spec":{"tier":"prod"}}"#,
        )
        .denied(),
        deploy(
            "duplicate spec, prod first",
            r#"{"spec":{"tier":"prod"},"spec":{"tier":"dev"}}"#,
        )
        .denied(),
        deploy(
            "case-duplicate TIER prod",
            r#"{"spec":{"tier":"dev","TIER":"prod"}}"#,
        )
        .denied(),
        deploy(
            "escaped duplicate tier",
            r#"{"spec":{"tier":"dev","\u0074ier":"prod"}}"#,
        )
        .denied(),
        deploy(
            "SPEC prod beside spec dev",
            r#"{"SPEC":{"tier":"prod"},"spec":{"tier":"dev"}}"#,
        )
        .denied(),
        deploy(
            "long-s spec prod beside spec dev",
            "{\"\u{17f}pec\":{\"tier\":\"prod\"},\"spec\":{\"tier\":\"dev\"}}",
        )
        .denied(),
        deploy("invalid JSON", r#"{"spec":{"tier":"dev"}"#).denied(),
        ops("mode=safe").forwarded("POST", "/v1/ops?mode=safe"),
        ops("mode=safe&mode=unsafe").denied(),
        ops("mode=unsafe&mode=safe").denied(),
        ops("mode=safe;mode=unsafe").denied(),
        ops("mode=safe&MODE=unsafe").blocked(),
        ops("mode=safe&mode[]=unsafe").blocked(),
        c(
            "?mode=safe, form mode=unsafe",
            "POST",
            "/api/v1/ops?mode=safe",
        )
        .form("mode=unsafe")
        .denied(),
        release("control: x-environment: dev")
            .h("x-environment", "dev")
            .forwarded("POST", "/v1/release"),
        release("x-environment: dev, prod")
            .h("x-environment", "dev, prod")
            .denied(),
        release("x-environment twice, dev then prod")
            .h("x-environment", "dev")
            .h("x-environment", "prod")
            .denied(),
        release("x-environment: dev beside x_environment: prod")
            .h("x-environment", "dev")
            .h("x_environment", "prod")
            .denied(),
        ec2("control: DescribeInstances")
            .form("Action=DescribeInstances")
            .forwarded("POST", "/ec2"),
        ec2("control: multipart DescribeInstances")
            .multipart(&[("Action", "DescribeInstances")])
            .forwarded("POST", "/ec2"),
        ec2("Describe then Terminate")
            .form("Action=DescribeInstances&Action=TerminateInstances")
            .denied(),
        c(
            "Terminate in the query, Describe in the body",
            "POST",
            "/api/ec2?Action=TerminateInstances",
        )
        .form("Action=DescribeInstances")
        .denied(),
        ec2("multipart Describe then Terminate")
            .multipart(&[
                ("Action", "DescribeInstances"),
                ("Action", "TerminateInstances"),
            ])
            .denied(),
    ]
}

async fn allow_suite(proto: Proto) {
    let (up, _ws, a) = setup_with_rules(ALLOW_RULES, "default: deny\n").await;
    run(proto, a.proxy, &up, &allow_cases())
        .await
        .assert_clean(&format!("allow rules under default: deny over {proto:?}"));
}

#[tokio::test]
async fn allow_rules_over_http1() {
    allow_suite(Proto::H1).await;
}

#[tokio::test]
async fn allow_rules_over_h2c() {
    allow_suite(Proto::H2c).await;
}

// ---- The per-upstream options: `lax` opts into everything, `api` keeps the defaults.

/// Cases for the options config: `/lax` has `path_case: sensitive`, `path_params:
/// allow`, `encoded_slash: allow` and `allow_methods: [TRACE]`; `/api` has the defaults.
fn option_cases() -> Vec<Case> {
    const C: &str = "upstream-options";
    let c = |method: &str, target: &str| case(C, &format!("{method} {target}"), method, target);
    vec![
        c("TRACE", "/lax/v1/public").forwarded("TRACE", "/v1/public"),
        c("TRACK", "/lax/v1/public").refused(405),
        c("TRACE", "/api/v1/public").refused(405),
        c("POST", "/lax/v1/public")
            .h("X-HTTP-Method-Override", "TRACE")
            .forwarded("POST", "/v1/public")
            .named("POST overridden to TRACE where TRACE is allowed"),
        c("DELETE", "/lax/v1/projects;x=1/p1").denied(),
        c("DELETE", "/lax/v1/projects/p1;x=1").denied(),
        c("DELETE", "/lax/v1/projects/p1%3Bx=1").denied(),
        c("GET", "/lax/v1/admin;x=1/users").denied(),
        c("GET", "/lax/v1/admin/users;jsessionid=1").denied(),
        c("GET", "/lax/v1/x/..;/admin/users").blocked(),
        c("GET", "/lax/v1/public;jsessionid=1").forwarded("GET", "/v1/public;jsessionid=1"),
        c("GET", "/api/v1/public;jsessionid=1").refused(400),
        c("GET", "/lax/v1/files/a%2Fb").forwarded("GET", "/v1/files/a%2Fb"),
        c("GET", "/lax/v1/files/secret%2Fx").denied(),
        c("GET", "/lax/v1/files/secret%2fx").denied(),
        c("GET", "/lax/v1/files%2Fsecret/x").denied(),
        c("GET", "/api/v1/files/a%2Fb").refused(400),
        c("GET", "/lax/v1/admin/users").denied(),
        c("GET", "/lax/v1/ADMIN/users").forwarded("GET", "/v1/ADMIN/users"),
        c("DELETE", "/lax/v1/Projects/p1").forwarded("DELETE", "/v1/Projects/p1"),
        c("DELETE", "/lax/v1/projects/p1").denied(),
        c("GET", "/api/v1/ADMIN/users").denied(),
    ]
}

/// Starts an airlock whose config has the per-upstream options (keys of issue 13).
async fn start_with_options() -> (Upstream, Workspace, InProcess) {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", RULES);
    let text = format!(
        r#"listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
store: sqlite://airlock.db
rules: rules/
{EXTRA}upstreams:
  - name: api
    prefix: /api
    url: {url}
    timeout: 5s
  - name: lax
    prefix: /lax
    url: {url}
    timeout: 5s
    path_case: sensitive
    path_params: allow
    encoded_slash: allow
    allow_methods: [TRACE]
{identities}"#,
        url = up.url(),
        identities = identities_yaml(),
    );
    let cfg = ws.write("airlock.yaml", &text);
    let a = InProcess::start(&cfg).await;
    (up, ws, a)
}

async fn options_suite(proto: Proto) {
    let (up, _ws, a) = start_with_options().await;
    run(proto, a.proxy, &up, &option_cases())
        .await
        .assert_clean(&format!("upstream options over {proto:?}"));
}

#[tokio::test]
async fn upstream_options_over_http1() {
    options_suite(Proto::H1).await;
}

#[tokio::test]
async fn upstream_options_over_h2c() {
    options_suite(Proto::H2c).await;
}

// ---- Several approve rules match: every rule's policy must be met.

const APPROVE_RULES: &str = r#"rules:
  - name: forced
    when:
      path: /v1/query
      query: {force: "true"}
    then: approve
    approval: {approvers: [group:sre], quorum: 1}
  - name: sql-drop
    when:
      method: POST
      path: /v1/query
      json: {/sql: "re:(?i)\\bdrop\\b"}
    then: approve
    approval: {approvers: [group:dba], quorum: 1}
"#;

/// One rule asking for both groups (AND of groups, written as requirements).
const AND_OF_GROUPS_RULES: &str = r#"rules:
  - name: sql-drop
    when:
      method: POST
      path: /v1/query
      json: {/sql: "re:(?i)\\bdrop\\b"}
    then: approve
    approval:
      approvers: [{group: sre, quorum: 1}, {group: dba, quorum: 1}]
"#;

/// An airlock with `rules` and the standard identities, dave in group `dba`.
async fn start_with_dba(rules: &str) -> (Upstream, Workspace, InProcess) {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", rules);
    // The owner is spelled in another case than her reviewer id: the same person.
    let identities = identities_yaml()
        .replace(
            "  - id: dave@example.com\n",
            "  - id: dave@example.com\n    groups: [dba]\n",
        )
        .replace("owner: alice@example.com", "owner: Alice@Example.COM");
    assert!(identities.contains("groups: [dba]"));
    assert!(identities.contains("Alice@Example.COM"));
    let text = format!(
        r#"listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
store: sqlite://airlock.db
rules: rules/
default: allow
upstreams:
  - name: api
    prefix: /api
    url: {url}
    timeout: 5s
{identities}"#,
        url = up.url(),
    );
    let cfg = ws.write("airlock.yaml", &text);
    let a = InProcess::start(&cfg).await;
    (up, ws, a)
}

/// Holds a request matching the `rules` named; `first` votes approve (it must not be
/// enough), then `second` (then it is forwarded exactly once).
async fn both_groups_needed(
    a: &InProcess,
    up: &Upstream,
    (table, rules): (&str, &[&str]),
    first: (&str, &str),
    second: (&str, &str),
) {
    let before = up.count();
    let body = format!(r#"{{"sql":"drop table {table}"}}"#);
    let (held, id) = agent_hold(a, "POST", "/api/v1/query?force=true", &body).await;
    let (_, ap) = approval_get(a, BOB, &id).await;
    let shown = ap["rules"].to_string();
    for rule in rules {
        assert!(shown.contains(rule), "every matched rule is shown: {ap}");
    }

    let (status, v) = vote(a, first.1, &id, "approve", None).await;
    assert_eq!(status, 200, "{} may vote: {v}", first.0);
    let (_, ap) = approval_get(a, BOB, &id).await;
    assert_eq!(
        ap["status"], "pending",
        "one {} vote must not approve a request two rules hold: {ap}",
        first.0
    );
    assert_eq!(up.count(), before, "nothing forwarded on one group's vote");
    // Reviewers see each requirement's progress: one met (by the first voter), one not.
    let reqs = ap["requirements"].as_array().expect("requirements").clone();
    assert_eq!(reqs.len(), 2, "{ap}");
    let met: Vec<&serde_json::Value> = reqs.iter().filter(|r| r["met"] == true).collect();
    assert_eq!(met.len(), 1, "{ap}");
    assert_eq!(
        met[0]["approved_by"].as_array().map(Vec::len),
        Some(1),
        "{ap}"
    );
    // The agent's owner may never vote, whatever the spelling of her id in the config.
    let (status, v) = vote(a, ALICE, &id, "approve", None).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"], "self_approval", "{v}");

    let (status, v) = vote(a, second.1, &id, "approve", None).await;
    assert_eq!(status, 200, "{} may vote: {v}", second.0);
    let reply = tokio::time::timeout(DEADLINE, held)
        .await
        .expect("the held request is answered once both groups approved")
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(up.count(), before + 1, "forwarded exactly once");
    let seen = up.requests().pop().unwrap();
    assert_eq!(
        (seen.method.as_str(), seen.uri.as_str()),
        ("POST", "/v1/query?force=true")
    );
    assert_eq!(seen.body, body.as_bytes());
}

#[tokio::test]
async fn when_two_approve_rules_match_both_policies_must_be_met() {
    let (up, _ws, a) = start_with_dba(APPROVE_RULES).await;
    let both: &[&str] = &["forced", "sql-drop"];
    // The sre rule comes first in the file: its quorum of one sre vote is not enough.
    both_groups_needed(
        &a,
        &up,
        ("t", both),
        ("sre (bob)", BOB),
        ("dba (dave)", DAVE),
    )
    .await;
    // Nor is the dba rule's on its own.
    both_groups_needed(
        &a,
        &up,
        ("u", both),
        ("dba (dave)", DAVE),
        ("sre (bob)", BOB),
    )
    .await;
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_rule_listing_two_group_requirements_needs_both() {
    let (up, _ws, a) = start_with_dba(AND_OF_GROUPS_RULES).await;
    let one: &[&str] = &["sql-drop"];
    both_groups_needed(
        &a,
        &up,
        ("t", one),
        ("sre (bob)", BOB),
        ("dba (dave)", DAVE),
    )
    .await;
    both_groups_needed(
        &a,
        &up,
        ("u", one),
        ("dba (dave)", DAVE),
        ("sre (bob)", BOB),
    )
    .await;
    assert_eq!(up.count(), 2);
}
