//! Red team, round two (issue 13): new classes beyond `tests/bypass_suite.rs` and
//! `tests/red_team.rs`. Each case is a request a deny rule should catch (or airlock
//! should refuse) where a mainstream upstream framework would act on it as the rule's
//! target; the recording upstream is ground truth and every case that gets through is
//! listed when the test fails. Controls (benign spellings that must be forwarded) are
//! included per class.
//!
//! Classes: Spring dot-notation binding (`spec.tier=prod`) and Rails/Laravel/Spring
//! binding of nested query parameters into the object a `json` rule guards; qs
//! percent-encoded brackets; top-level JSON arrays (batches) against a `/sql` pointer;
//! `;` as a form-body separator (Python before 3.9.2, Django before 3.2); values with
//! surrounding whitespace (Spring trims before converting); override header lists
//! (Express `method-override` takes the first element); `Content-Encoding` spellings
//! (body-parser lower-cases it and inflates); request smuggling spellings; absolute-form
//! targets and dot segments; JSON Patch / batch arrays; `multipart/*` subtypes other
//! than form-data (Spring on Tomcat parses them); `NAME=` in upper case; cookies as
//! parameters (PHP `$_REQUEST` under the built-in `variables_order`); `PATCH` where a
//! `PUT` rule applies (Rails routes both to `update`). Then approvals: one reviewer
//! named twice toward one quorum (held up), and a request for another `Host` (forwarded
//! as `X-Forwarded-Host`) joining an approval given for the first.
//!
//! Written against main at 37f4402: the suites fail there, listing each miss.

mod common;
use common::*;
#[path = "attack/mod.rs"]
mod attack;
use attack::*;
use std::time::Duration;

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

/// CRC-32 (IEEE), bit by bit.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `data` as a gzip member with one stored (uncompressed) deflate block.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let len = data.len() as u16;
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 1];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// Every case of the suite.
fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(binding_cases());
    v.extend(batch_cases());
    v.extend(form_separator_cases());
    v.extend(whitespace_value_cases());
    v.extend(override_list_cases());
    v.extend(content_encoding_cases());
    v.extend(smuggling_cases());
    v.extend(target_form_cases());
    v.extend(misc_cases());
    v
}

/// Parameters from elsewhere and routes that merge methods.
/// - PHP's `$_REQUEST` merges cookies when `request_order` is unset and
///   `variables_order` is the built-in `EGPCS` (the official Docker images ship no
///   php.ini); ASP.NET (Framework) `Request["force"]` reads cookies too.
/// - Rails `resources` routes `PATCH` and `PUT` to the same `update` action.
/// - Rack/qs `ops[][sql]=…` is `ops: [{sql: …}]`.
/// - busboy reads multipart part headers and parameter names case-insensitively.
fn misc_cases() -> Vec<Case> {
    let c = "misc";
    vec![
        case(c, "Cookie: force=true (PHP $_REQUEST, ASP.NET Request[])", "DELETE", "/api/v1/volumes/v1")
            .h("Cookie", "force=true")
            .denied(),
        case(c, "Cookie: Action=TerminateInstances", "POST", "/api/ec2")
            .h("Cookie", "Action=TerminateInstances")
            .denied(),
        case(c, "PATCH where a PUT rule applies (Rails update)", "PATCH", "/api/v1/projects/p1").denied(),
        case(c, "PUT (control: the rule itself)", "PUT", "/api/v1/projects/p1").denied(),
        case(c, "form ops[][sql]=DROP (Rack, qs)", "POST", "/api/v1/batch")
            .form("ops[][sql]=DROP%20TABLE%20users")
            .denied(),
        case(c, "form ops[0].sql=DROP (Spring list binding)", "POST", "/api/v1/batch")
            .form("ops[0].sql=DROP%20TABLE%20users")
            .denied(),
        case(c, "multipart header name in upper case", "POST", "/api/ec2")
            .body(
                Some("multipart/form-data; boundary=XyZb"),
                "--XyZb\r\nCONTENT-DISPOSITION: form-data; name=\"Action\"\r\n\r\nTerminateInstances\r\n--XyZb--\r\n",
            )
            .denied(),
        case(c, "multipart NAME= parameter in upper case", "POST", "/api/ec2")
            .body(
                Some("multipart/form-data; boundary=XyZb"),
                "--XyZb\r\nContent-Disposition: form-data; NAME=\"Action\"\r\n\r\nTerminateInstances\r\n--XyZb--\r\n",
            )
            .denied(),
        case(c, "multipart headers in upper case", "POST", "/api/ec2")
            .body(
                Some("multipart/form-data; boundary=XyZb"),
                "--XyZb\r\nCONTENT-DISPOSITION: FORM-DATA; NAME=\"Action\"\r\n\r\nTerminateInstances\r\n--XyZb--\r\n",
            )
            .denied(),
        case(c, "multipart boundary followed by a charset", "POST", "/api/ec2")
            .body(
                Some("multipart/form-data; boundary=XyZb; charset=utf-8"),
                "--XyZb\r\nContent-Disposition: form-data; name=\"Action\"\r\n\r\nTerminateInstances\r\n--XyZb--\r\n",
            )
            .denied(),
        case(c, "multipart with a Content-Transfer-Encoding: base64 part", "POST", "/api/ec2")
            .body(
                Some("multipart/form-data; boundary=XyZb"),
                "--XyZb\r\nContent-Disposition: form-data; name=\"Action\"\r\nContent-Transfer-Encoding: base64\r\n\r\nVGVybWluYXRlSW5zdGFuY2Vz\r\n--XyZb--\r\n",
            )
            .want(Want::Blocked),
        case(c, "control: PATCH elsewhere", "PATCH", "/api/v1/other/p1").forwarded("PATCH", "/v1/other/p1"),
    ]
}

/// The object a `json` rule guards (`/spec/tier`), bound from other spellings.
/// - Spring's `@ModelAttribute` data binder reads `spec.tier=prod` (form or query) into
///   `spec.tier` (nested property paths); so does ASP.NET Core's form binder for a
///   `[FromForm]` model (`spec.tier` and `spec[tier]`).
/// - Rails merges query parameters into `params`: `?spec[tier]=prod` is
///   `params[:spec][:tier]` for a POST with an empty or JSON body; Laravel's
///   `$request->input('spec.tier')` reads the query as well; Spring binds the query too.
/// - qs (Express) decodes the key before splitting brackets: `spec%5Btier%5D=prod` is
///   `{spec: {tier: "prod"}}`.
fn binding_cases() -> Vec<Case> {
    let c = "nested binding";
    vec![
        case(
            c,
            "form spec.tier=prod (Spring, ASP.NET)",
            "POST",
            "/api/v1/deploy",
        )
        .form("spec.tier=prod")
        .denied(),
        case(
            c,
            "query ?spec.tier=prod (Spring)",
            "POST",
            "/api/v1/deploy?spec.tier=prod",
        )
        .denied(),
        case(
            c,
            "query ?spec[tier]=prod, empty body (Rails, Laravel)",
            "POST",
            "/api/v1/deploy?spec[tier]=prod",
        )
        .denied(),
        case(
            c,
            "query ?spec[tier]=prod with a JSON body without spec (Rails merges)",
            "POST",
            "/api/v1/deploy?spec[tier]=prod",
        )
        .json(r#"{"name":"web"}"#)
        .denied(),
        case(
            c,
            "form spec%5Btier%5D=prod (qs decodes brackets)",
            "POST",
            "/api/v1/deploy",
        )
        .form("spec%5Btier%5D=prod")
        .denied(),
        case(
            c,
            "form spec[tier][]=prod (qs, Rails: array)",
            "POST",
            "/api/v1/deploy",
        )
        .form("spec[tier][]=prod")
        .denied(),
        case(
            c,
            "form spec[tier]=prod (control: covered reading)",
            "POST",
            "/api/v1/deploy",
        )
        .form("spec[tier]=prod")
        .denied(),
        case(
            c,
            "query ?sql=drop table t on POST /v1/query, empty body (Rails, Laravel merge)",
            "POST",
            "/api/v1/query?sql=drop%20table%20t",
        )
        .denied(),
        case(
            c,
            "form spec['tier']=prod (Spring map/bean index syntax)",
            "POST",
            "/api/v1/deploy",
        )
        .form("spec['tier']=prod")
        .denied(),
        case(
            c,
            "form spec.Tier=prod (ASP.NET binds case-insensitively)",
            "POST",
            "/api/v1/deploy",
        )
        .form("spec.Tier=prod")
        .denied(),
        case(
            c,
            "multipart spec.tier=prod (Spring @ModelAttribute)",
            "POST",
            "/api/v1/deploy",
        )
        .multipart(&[("spec.tier", "prod")])
        .denied(),
        case(
            c,
            "query ?replicas=0 on POST /v1/scale, empty body (Laravel input(), Spring)",
            "POST",
            "/api/v1/scale?replicas=0",
        )
        .denied(),
        case(
            c,
            "form sql[]=DROP TABLE (qs/Rails array)",
            "POST",
            "/api/v1/query",
        )
        .form("sql[]=DROP%20TABLE%20users")
        .denied(),
        case(c, "control: form spec.tier=dev", "POST", "/api/v1/deploy")
            .form("spec.tier=dev")
            .forwarded("POST", "/v1/deploy"),
        case(
            c,
            "control: query ?spec[tier]=dev",
            "POST",
            "/api/v1/deploy?spec[tier]=dev",
        )
        .forwarded("POST", "/v1/deploy?spec[tier]=dev"),
    ]
}

/// Top-level JSON arrays: batch endpoints (JSON-RPC batches, Go handlers decoding
/// `[]Query`, Rails `params[:_json]`) run every element; a `/sql` pointer reads only an
/// object at the top. And JSON carried as a string inside a form field or a JSON string
/// (Slack-style `payload=`), which handlers decode.
fn batch_cases() -> Vec<Case> {
    let c = "JSON shapes";
    vec![
        case(c, "top-level array [{sql: drop}]", "POST", "/api/v1/query")
            .json(r#"[{"sql":"DROP TABLE users"}]"#)
            .denied(),
        case(c, "top-level array, drop second", "POST", "/api/v1/query")
            .json(r#"[{"sql":"select 1"},{"sql":"DROP TABLE users"}]"#)
            .denied(),
        case(
            c,
            "top-level array under text/plain",
            "POST",
            "/api/v1/query",
        )
        .body(Some("text/plain"), r#"[{"sql":"DROP TABLE users"}]"#)
        .denied(),
        case(c, "control: array of selects", "POST", "/api/v1/query")
            .json(r#"[{"sql":"select 1"}]"#)
            .forwarded("POST", "/v1/query"),
        case(
            c,
            "JSON Patch replace /spec/tier (Kubernetes, ASP.NET JsonPatch)",
            "PATCH",
            "/api/v1/deploy",
        )
        .body(
            Some("application/json-patch+json"),
            r#"[{"op":"replace","path":"/spec/tier","value":"prod"}]"#,
        )
        .denied(),
        case(c, "JSON Patch add /replicas 0", "PATCH", "/api/v1/scale")
            .body(
                Some("application/json-patch+json"),
                r#"[{"op":"add","path":"/replicas","value":0}]"#,
            )
            .denied(),
        case(
            c,
            "JSON Patch add /spec with an object value",
            "PATCH",
            "/api/v1/deploy",
        )
        .body(
            Some("application/json-patch+json"),
            r#"[{"op":"add","path":"/spec","value":{"tier":"prod"}}]"#,
        )
        .denied(),
        case(
            c,
            "merge patch (application/merge-patch+json)",
            "PATCH",
            "/api/v1/deploy",
        )
        .body(
            Some("application/merge-patch+json"),
            r#"{"spec":{"tier":"prod"}}"#,
        )
        .denied(),
        case(c, "duplicate key by escape", "POST", "/api/v1/query")
            .json(r#"{"sql":"select 1","s\u0071l":"DROP TABLE users"}"#)
            .denied(),
        case(
            c,
            "two JSON documents (Go json.Decoder reads the first)",
            "POST",
            "/api/v1/query",
        )
        .json(r#"{"sql":"DROP TABLE users"} {"sql":"select 1"}"#)
        .denied(),
        case(
            c,
            "JSON after leading whitespace under text/plain",
            "POST",
            "/api/v1/query",
        )
        .body(Some("text/plain"), "\r\n\t {\"sql\":\"DROP TABLE users\"}")
        .denied(),
        case(c, "escaped key and value", "POST", "/api/v1/query")
            .json(r#"{"\u0073ql":"\u0044ROP TABLE users"}"#)
            .denied(),
        case(
            c,
            "deep nesting elsewhere (serde limit 128)",
            "POST",
            "/api/v1/query",
        )
        .json(&format!(
            r#"{{"sql":"DROP TABLE users","x":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        ))
        .denied(),
        case(
            c,
            "lone surrogate in another value",
            "POST",
            "/api/v1/query",
        )
        .json(r#"{"sql":"DROP TABLE users","x":"\ud800"}"#)
        .denied(),
        case(c, "replicas: -0.0e+0", "POST", "/api/v1/scale")
            .json(r#"{"replicas":-0.0e+0}"#)
            .denied(),
        case(
            c,
            "replicas: \"0\" as a string (Go ,string tag; Laravel)",
            "POST",
            "/api/v1/scale",
        )
        .json(r#"{"replicas":"0"}"#)
        .denied(),
        case(
            c,
            "replicas: \" 0\" string with a space (PHP numeric strings)",
            "POST",
            "/api/v1/scale",
        )
        .json(r#"{"replicas":" 0"}"#)
        .denied(),
        case(c, "control: replicas 3", "POST", "/api/v1/scale")
            .json(r#"{"replicas":3}"#)
            .forwarded("POST", "/v1/scale"),
    ]
}

/// `;` as a form-body separator: Python's `parse_qsl` before 3.9.2 (Flask/Werkzeug
/// before 2.0.1 used its own `[&;]` split) and Django's `limited_parse_qsl` before 3.2
/// split on `;` in bodies as well as queries.
fn form_separator_cases() -> Vec<Case> {
    let c = "form separators";
    vec![
        case(c, "form x=1;Action=TerminateInstances", "POST", "/api/ec2")
            .form("x=1;Action=TerminateInstances")
            .denied(),
        case(c, "control: Version=1;Action=DescribeInstances", "POST", "/api/ec2")
            .form("Version=1;Action=DescribeInstances")
            .forwarded("POST", "/ec2"),
        case(c, "form Action=TerminateInstances; (trailing ;)", "POST", "/api/ec2")
            .form("Action=TerminateInstances;")
            .denied(),
        case(c, "form &amp;Action=TerminateInstances (HTML-escaped &)", "POST", "/api/ec2")
            .form("x=1&amp;Action=TerminateInstances")
            .denied(),
        case(c, "Content-Type: multipart/related", "POST", "/api/ec2")
            .body(
                Some("multipart/related; boundary=XyZb"),
                "--XyZb\r\nContent-Disposition: form-data; name=\"Action\"\r\n\r\nTerminateInstances\r\n--XyZb--\r\n",
            )
            .denied(),
        case(c, "Content-Type: multipart/x-anything", "POST", "/api/ec2")
            .body(
                Some("multipart/x-anything; boundary=XyZb"),
                "--XyZb\r\nContent-Disposition: form-data; name=\"Action\"\r\n\r\nTerminateInstances\r\n--XyZb--\r\n",
            )
            .denied(),
        case(c, "Content-Type: Multipart/Form-Data (case)", "POST", "/api/ec2")
            .body(
                Some("Multipart/Form-Data; boundary=XyZb"),
                "--XyZb\r\nContent-Disposition: form-data; name=\"Action\"\r\n\r\nTerminateInstances\r\n--XyZb--\r\n",
            )
            .denied(),
        case(c, "multipart with LF-only line endings (busboy, Werkzeug accept)", "POST", "/api/ec2")
            .body(
                Some("multipart/form-data; boundary=XyZb"),
                "--XyZb\nContent-Disposition: form-data; name=\"Action\"\n\nTerminateInstances\n--XyZb--\n",
            )
            .denied(),
        case(c, "multipart boundary quoted", "POST", "/api/ec2")
            .body(
                Some("multipart/form-data; boundary=\"XyZb\""),
                "--XyZb\r\nContent-Disposition: form-data; name=\"Action\"\r\n\r\nTerminateInstances\r\n--XyZb--\r\n",
            )
            .denied(),
        case(c, "multipart name without quotes", "POST", "/api/ec2")
            .body(
                Some("multipart/form-data; boundary=XyZb"),
                "--XyZb\r\nContent-Disposition: form-data; name=Action\r\n\r\nTerminateInstances\r\n--XyZb--\r\n",
            )
            .denied(),
        case(c, "multipart with a preamble", "POST", "/api/ec2")
            .body(
                Some("multipart/form-data; boundary=XyZb"),
                "preamble\r\n--XyZb\r\nContent-Disposition: form-data; name=\"Action\"\r\n\r\nTerminateInstances\r\n--XyZb--\r\n",
            )
            .denied(),
        case(c, "multipart with a file part named Action (PHP $_FILES aside, Spring binds)", "POST", "/api/ec2")
            .body(
                Some("multipart/form-data; boundary=XyZb"),
                "--XyZb\r\nContent-Disposition: form-data; name=\"Action\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nTerminateInstances\r\n--XyZb--\r\n",
            )
            .denied(),
        case(c, "Content-Type: multipart/mixed (Spring on Tomcat parses any multipart/*)", "POST", "/api/ec2")
            .body(
                Some("multipart/mixed; boundary=XyZb"),
                "--XyZb\r\nContent-Disposition: form-data; name=\"Action\"\r\n\r\nTerminateInstances\r\n--XyZb--\r\n",
            )
            .denied(),
    ]
}

/// Values with whitespace around them: Spring's `StringToBooleanConverter` trims
/// (`" true"` is true), Laravel's `TrimStrings` middleware trims every input, and
/// ASP.NET's bool binder (`bool.TryParse`) trims; PHP `FILTER_VALIDATE_BOOLEAN` trims.
fn whitespace_value_cases() -> Vec<Case> {
    let c = "whitespace in values";
    vec![
        case(
            c,
            "?force=%20true",
            "DELETE",
            "/api/v1/volumes/v1?force=%20true",
        )
        .denied(),
        case(
            c,
            "?force=true%20",
            "DELETE",
            "/api/v1/volumes/v1?force=true%20",
        )
        .denied(),
        case(
            c,
            "?force=+true+",
            "DELETE",
            "/api/v1/volumes/v1?force=+true+",
        )
        .denied(),
        case(
            c,
            "?force=true%09",
            "DELETE",
            "/api/v1/volumes/v1?force=true%09",
        )
        .denied(),
        case(
            c,
            "?force=true%0A",
            "DELETE",
            "/api/v1/volumes/v1?force=true%0A",
        )
        .denied(),
        case(
            c,
            "?force%20=true (PHP: force_; ASP.NET trims keys?)",
            "DELETE",
            "/api/v1/volumes/v1?%20force=true",
        )
        .denied(),
        case(
            c,
            "form Action=TerminateInstances%20 (Laravel TrimStrings)",
            "POST",
            "/api/ec2",
        )
        .form("Action=TerminateInstances%20")
        .denied(),
        case(
            c,
            "JSON tier \"prod \" (Laravel TrimStrings)",
            "POST",
            "/api/v1/deploy",
        )
        .json(r#"{"spec":{"tier":"prod "}}"#)
        .denied(),
        case(
            c,
            "header x-environment: dev;prod",
            "POST",
            "/api/v1/release",
        )
        .h("X-Environment", "dev;prod")
        .forwarded("POST", "/v1/release"),
        case(
            c,
            "control: ?force=false",
            "DELETE",
            "/api/v1/volumes/v1?force=false",
        )
        .forwarded("DELETE", "/v1/volumes/v1?force=false"),
    ]
}

/// Express's `method-override` header getter takes the first element of a
/// comma-separated list and trims it (`DELETE, GET` is `DELETE`); two header lines are
/// joined by Node with `, `.
fn override_list_cases() -> Vec<Case> {
    let c = "override lists";
    vec![
        case(
            c,
            "X-HTTP-Method-Override: DELETE, POST",
            "POST",
            "/api/v1/projects/p1",
        )
        .h("X-HTTP-Method-Override", "DELETE, POST")
        .want(Want::Blocked),
        case(
            c,
            "X-HTTP-Method-Override: DELETE,POST",
            "POST",
            "/api/v1/projects/p1",
        )
        .h("X-HTTP-Method-Override", "DELETE,POST")
        .want(Want::Blocked),
        case(
            c,
            "X-HTTP-Method-Override: POST, DELETE (some take the last)",
            "POST",
            "/api/v1/projects/p1",
        )
        .h("X-HTTP-Method-Override", "POST, DELETE")
        .want(Want::Blocked),
        case(
            c,
            "_method=DELETE,POST in the query",
            "POST",
            "/api/v1/projects/p1?_method=DELETE,POST",
        )
        .want(Want::Blocked),
        case(
            c,
            "_method=%20DELETE in a form",
            "POST",
            "/api/v1/projects/p1",
        )
        .form("_method=%20DELETE")
        .want(Want::Blocked),
        case(
            c,
            "_method[]=DELETE in a form (qs array; Rack takes string only)",
            "POST",
            "/api/v1/projects/p1",
        )
        .form("_method[]=DELETE")
        .want(Want::Blocked),
        case(
            c,
            "X-HTTP-Method-Override with a tab",
            "POST",
            "/api/v1/projects/p1",
        )
        .h("X-HTTP-Method-Override", "DELETE\t")
        .want(Want::Blocked),
        case(
            c,
            "override in a GET (method-override ignores, others do not)",
            "GET",
            "/api/v1/projects/p1",
        )
        .h("X-HTTP-Method", "DELETE")
        .want(Want::Blocked),
        case(
            c,
            "X-HTTP-Method-Override: GET on a POST to a secret",
            "POST",
            "/api/v1/secrets/s1",
        )
        .h("X-HTTP-Method-Override", "GET")
        .want(Want::Blocked),
        case(
            c,
            "X-HTTP-Method-Override: HEAD on a POST to a secret",
            "POST",
            "/api/v1/secrets/s1",
        )
        .h("X-HTTP-Method-Override", "HEAD")
        .want(Want::Blocked),
        // A PATCH is read as the PUT a rule names (Rails routes both to `update`).
        case(
            c,
            "X-HTTP-Method-Override: PATCH where PUT is denied",
            "POST",
            "/api/v1/projects/p1",
        )
        .h("X-HTTP-Method-Override", "PATCH")
        .denied(),
        case(
            c,
            "control: X-HTTP-Method-Override: OPTIONS",
            "POST",
            "/api/v1/projects/p1",
        )
        .h("X-HTTP-Method-Override", "OPTIONS")
        .forwarded("POST", "/v1/projects/p1"),
    ]
}

/// Compressed request bodies: body-parser (Express) inflates `gzip` and `deflate`
/// (matching the coding lower-cased), ASP.NET Core's request decompression middleware
/// reads `gzip`, `br`, `deflate`; Spring/Tomcat and Go do not. A body airlock cannot
/// read must make the rules that inspect it match.
fn content_encoding_cases() -> Vec<Case> {
    let c = "content-encoding";
    let drop = gzip_stored(br#"{"sql":"DROP TABLE users"}"#);
    let mut v = Vec::new();
    for ce in [
        "gzip",
        "GZIP",
        "Gzip",
        "x-gzip",
        "gzip, identity",
        "identity, gzip",
        " gzip ",
        "gzip;q=1",
    ] {
        v.push(
            case(
                c,
                &format!("Content-Encoding: {ce:?}"),
                "POST",
                "/api/v1/query",
            )
            .h("Content-Encoding", ce)
            .body(Some("application/json"), drop.clone())
            .denied(),
        );
    }
    v.push(
        case(
            c,
            "gzip body, no Content-Encoding, application/json (not JSON: fail closed)",
            "POST",
            "/api/v1/query",
        )
        .body(Some("application/json"), drop.clone())
        .denied(),
    );
    v.push(
        case(
            c,
            "Content-Encoding: identity (control)",
            "POST",
            "/api/v1/query",
        )
        .h("Content-Encoding", "identity")
        .json(r#"{"sql":"select 1"}"#)
        .forwarded("POST", "/v1/query"),
    );
    v.push(
        case(
            c,
            "Content-Encoding: identity with a drop",
            "POST",
            "/api/v1/query",
        )
        .h("Content-Encoding", "identity")
        .json(r#"{"sql":"DROP TABLE users"}"#)
        .denied(),
    );
    v.push(
        case(
            c,
            "two Content-Encoding lines gzip + identity",
            "POST",
            "/api/v1/query",
        )
        .h("Content-Encoding", "identity")
        .h("Content-Encoding", "gzip")
        .body(Some("application/json"), drop)
        .denied(),
    );
    v
}

/// Request smuggling spellings over HTTP/1.1: each must be refused or read once.
fn smuggling_cases() -> Vec<Case> {
    let c = "smuggling";
    let k = AGENT_KEY;
    let raw = |name: &str, text: String| Case {
        raw: Some(text.into_bytes()),
        h1_only: true,
        want: Want::Blocked,
        ..case(c, name, "POST", "/api/v1/public")
    };
    let smuggled = "DELETE /api/v1/projects/p1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-agent-key-deploy-bot\r\n\r\n";
    let chunked = |te: &str| {
        format!(
            "POST /api/v1/public HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {k}\r\n{te}\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{smuggled}"
        )
    };
    vec![
        raw("TE: chunked, identity + CL", chunked("Transfer-Encoding: chunked, identity")),
        raw("TE: identity, chunked + CL", chunked("Transfer-Encoding: identity, chunked")),
        raw("TE: xchunked + CL", chunked("Transfer-Encoding: xchunked")),
        raw("TE: chunked twice (two lines) + CL", chunked("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked")),
        raw("TE with a tab: chunked", chunked("Transfer-Encoding:\tchunked")),
        raw("TE obs-fold", chunked("Transfer-Encoding:\r\n chunked")),
        raw("TE: CHUNKED", chunked("Transfer-Encoding: CHUNKED")),
        raw("Transfer_Encoding: chunked", chunked("Transfer_Encoding: chunked")),
        raw("space before colon", chunked("Transfer-Encoding : chunked")),
        raw(
            "CL with a plus sign",
            format!("POST /api/v1/public HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {k}\r\nContent-Length: +0\r\n\r\n{smuggled}"),
        ),
        raw(
            "two different Content-Length",
            format!("POST /api/v1/public HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {k}\r\nContent-Length: 0\r\nContent-Length: 91\r\n\r\n{smuggled}"),
        ),
        raw(
            "CL list 0, 91",
            format!("POST /api/v1/public HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {k}\r\nContent-Length: 0, 91\r\n\r\n{smuggled}"),
        ),
        raw(
            "chunk size with extension and 0x prefix",
            format!("POST /api/v1/public HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {k}\r\nTransfer-Encoding: chunked\r\n\r\n0x0\r\n\r\n{smuggled}"),
        ),
        raw(
            "bare LF line endings in the head",
            format!("DELETE /api/v1/projects/p1 HTTP/1.1\nHost: x\nAuthorization: Bearer {k}\nX-HTTP-Method-Override: GET\n\n"),
        ),
        raw(
            "request line with a trailing space in the method",
            format!("DELETE  /api/v1/projects/p1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {k}\r\n\r\n"),
        ),
        raw(
            "method DELETE\\t",
            format!("DELETE\t/api/v1/projects/p1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {k}\r\n\r\n"),
        ),
        raw(
            "HTTP/1.0 with a fragment",
            format!("DELETE /api/v1/projects/p1#x HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {k}\r\n\r\n"),
        ),
    ]
    .into_iter()
    .map(|mut c| {
        // Only the first request may be forwarded; a forwarded smuggled DELETE is a miss.
        if c.name.starts_with("TE") || c.name.starts_with("Transfer_") || c.name.starts_with("space") {
            c.want = Want::NotTheSmuggled;
        }
        if c.name.starts_with("CL") || c.name.starts_with("two different") || c.name.starts_with("chunk size") {
            c.want = Want::NotTheSmuggled;
        }
        c
    })
    .collect()
}

/// Targets: absolute-form with userinfo, dot segments, double slashes, `?` repeated.
fn target_form_cases() -> Vec<Case> {
    let c = "targets";
    let k = AGENT_KEY;
    let raw = |name: &str, line: &str| {
        raw_case(
            c,
            name,
            &format!("{line}\r\nHost: 127.0.0.1\r\n"),
            Want::Blocked,
        )
    };
    let _ = k;
    vec![
        raw(
            "absolute-form",
            "DELETE http://127.0.0.1/api/v1/projects/p1 HTTP/1.1",
        ),
        raw(
            "absolute-form with userinfo",
            "DELETE http://u:p@127.0.0.1/api/v1/projects/p1 HTTP/1.1",
        ),
        raw(
            "absolute-form https scheme",
            "DELETE https://127.0.0.1/api/v1/projects/p1 HTTP/1.1",
        ),
        raw(
            "absolute-form other host",
            "DELETE http://example.com/api/v1/projects/p1 HTTP/1.1",
        ),
        raw("dot segment", "DELETE /api/v1/x/../projects/p1 HTTP/1.1"),
        raw(
            "encoded dot segment",
            "DELETE /api/v1/x/%2e%2e/projects/p1 HTTP/1.1",
        ),
        raw("double slash", "DELETE /api/v1//projects/p1 HTTP/1.1"),
        raw("backslash", "DELETE /api/v1\\projects\\p1 HTTP/1.1"),
        raw(
            "encoded backslash",
            "DELETE /api/v1%5Cprojects%5Cp1 HTTP/1.1",
        ),
        raw("trailing %20", "DELETE /api/v1/projects/p1%20 HTTP/1.1"),
        raw("trailing %09", "DELETE /api/v1/projects/p1%09 HTTP/1.1"),
        raw("trailing %00", "DELETE /api/v1/projects/p1%00 HTTP/1.1"),
        raw("asterisk-form", "DELETE * HTTP/1.1"),
        raw(
            "GET secret with ?? and #",
            "GET /api/v1/secrets/s1??x HTTP/1.1",
        ),
        raw(
            "GET secret via overlong UTF-8 %c0%af",
            "GET /api/v1%c0%afsecrets/s1 HTTP/1.1",
        ),
        raw(
            "GET secret via %u002f (IIS)",
            "GET /api/v1%u002fsecrets/s1 HTTP/1.1",
        ),
        raw(
            "GET secret with .json suffix after ;",
            "GET /api/v1/secrets/s1.json HTTP/1.1",
        ),
        raw(
            "GET secret with trailing /.",
            "GET /api/v1/secrets/s1/. HTTP/1.1",
        ),
        raw(
            "GET secret with trailing %2e",
            "GET /api/v1/secrets/s1/%2e HTTP/1.1",
        ),
        raw(
            "GET secrets with uppercase escape %2E%2E",
            "GET /api/v1/x/%2E%2E/secrets/s1 HTTP/1.1",
        ),
        raw(
            "GET secret through /api/./v1",
            "GET /api/./v1/secrets/s1 HTTP/1.1",
        ),
        raw(
            "GET secret through /./api",
            "GET /./api/v1/secrets/s1 HTTP/1.1",
        ),
        raw(
            "GET secret through /x/../api",
            "GET /x/../api/v1/secrets/s1 HTTP/1.1",
        ),
        raw(
            "GET secret through //api",
            "GET //api/v1/secrets/s1 HTTP/1.1",
        ),
        raw("GET secret through /API", "GET /API/v1/secrets/s1 HTTP/1.1"),
        raw(
            "GET secret through /api%2fv1",
            "GET /api%2fv1/secrets/s1 HTTP/1.1",
        ),
        raw(
            "GET secret through /%61pi",
            "GET /%61pi/v1/secrets/s1 HTTP/1.1",
        ),
    ]
}

async fn red_suite(proto: Proto) {
    let cases = cases();
    let (up, _ws, a) = setup_with_rules(RULES, EXTRA).await;
    run(proto, a.proxy, &up, &cases)
        .await
        .assert_clean(&format!("red team 2 over {proto:?}"));
}

#[tokio::test]
async fn red_team2_over_http1() {
    red_suite(Proto::H1).await;
}

#[tokio::test]
async fn red_team2_over_h2c() {
    red_suite(Proto::H2c).await;
}

// ---- Quorum: one person must count once in one requirement, however they are named.

/// An airlock with `rules` and the standard identities, bob in groups `sre` and `dba`,
/// dave in `dba`.
async fn start_with_two_group_bob(rules: &str) -> (Upstream, Workspace, InProcess) {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", rules);
    let identities = identities_yaml()
        .replace(
            "  - id: bob@example.com\n    groups: [sre]\n",
            "  - id: bob@example.com\n    groups: [sre, dba]\n",
        )
        .replace(
            "  - id: dave@example.com\n",
            "  - id: dave@example.com\n    groups: [dba]\n",
        );
    assert!(identities.contains("groups: [sre, dba]") && identities.contains("groups: [dba]"));
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

/// Quorum 2 over approvers that name bob twice (two of his groups, or a group and his
/// id): bob's one approval must not meet it.
#[tokio::test]
async fn one_reviewer_named_twice_counts_once_toward_a_quorum() {
    let shapes = [
        (
            "two groups bob is in",
            r#"approvers: ["group:sre", "group:dba"], quorum: 2"#,
        ),
        (
            "a group and bob's id",
            r#"approvers: ["group:sre", "bob@example.com"], quorum: 2"#,
        ),
        (
            "bob's id twice",
            r#"approvers: ["bob@example.com", "bob@example.com", "group:dba"], quorum: 2"#,
        ),
        (
            "bob's id in another case",
            r#"approvers: ["bob@example.com", "BOB@example.com", "group:dba"], quorum: 2"#,
        ),
    ];
    let mut misses = Vec::new();
    for (what, approvers) in shapes {
        let rules = format!(
            "rules:\n  - name: hold-me\n    when: {{path: /v1/hold}}\n    then: approve\n    approval: {{{approvers}}}\n"
        );
        let (up, _ws, a) = start_with_two_group_bob(&rules).await;
        let before = up.count();
        let (held, id) = agent_hold(&a, "GET", "/api/v1/hold", "").await;
        let (status, _) = vote(&a, BOB, &id, "approve", None).await;
        let (_, ap) = approval_get(&a, BOB, &id).await;
        if ap["status"] != "pending" || up.count() != before {
            misses.push(format!(
                "{what}: bob's one approve (HTTP {status}) left the approval {} and the upstream saw {} request(s)",
                ap["status"],
                up.count() - before
            ));
        }
        // Whoever of dave (dba) and carol (sre) is eligible ends it.
        let _ = vote(&a, DAVE, &id, "deny", Some("cleanup")).await;
        let _ = vote(&a, CAROL, &id, "deny", Some("cleanup")).await;
        let _ = held.await;
    }
    assert!(
        misses.is_empty(),
        "{} quorums met by one person:\n{}",
        misses.len(),
        misses.join("\n")
    );
}

// ---- What an approval binds: the digest skips `Host`, but airlock forwards the agent's
// ---- Host as `X-Forwarded-Host`, which Rails (`request.host`), Express with `trust
// ---- proxy`, Django with `USE_X_FORWARDED_HOST`, Spring's `ForwardedHeaderFilter` and
// ---- ASP.NET's forwarded-headers middleware take as the host (multi-tenant routing).

const HOLD_RULES: &str = r#"rules:
  - name: hold-me
    when: {path: /v1/hold}
    then: approve
    approval: {approvers: ["group:sre"], quorum: 1}
"#;

/// Two held requests that differ only in the Host the upstream is told must not share
/// one approval: approving the staging one must not release the prod one.
#[tokio::test]
async fn a_request_for_another_host_does_not_join_an_approval() {
    let (up, _ws, a) = setup_with_rules(HOLD_RULES, "default: allow\n").await;
    let send = |host: &str| {
        spawn_request(
            agent_request(&a, AGENT_KEY, "POST", "/api/v1/hold")
                .header("host", host)
                .body("{}"),
        )
    };
    let staging = send("staging.example.com");
    let id = id_of(&wait_pending(&a, 1).await[0]);
    let prod = send("prod.example.com");
    wait_held_gauge(&a, 2).await;
    // Held counts the request before its approval is stored: wait (bounded) for the
    // second approval; a prod request that joined staging's never makes one.
    let listed = match tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let listed = pending(&a, BOB).await;
            if listed.len() >= 2 {
                return listed;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    {
        Ok(listed) => listed,
        Err(_) => pending(&a, BOB).await,
    };
    assert_eq!(vote(&a, BOB, &id, "approve", None).await.0, 200);
    for other in listed.iter().filter(|p| id_of(p) != id) {
        let _ = vote(&a, BOB, &id_of(other), "deny", Some("cleanup")).await;
    }
    let mut answers = Vec::new();
    for (what, task) in [("staging", staging), ("prod", prod)] {
        let answer = match tokio::time::timeout(DEADLINE, task).await {
            Ok(Ok(r)) => format!("{what}: {}", r.status()),
            _ => format!("{what}: no answer"),
        };
        answers.push(answer);
    }
    let hosts: Vec<String> = up
        .requests()
        .iter()
        .map(|s| {
            s.headers
                .get("x-forwarded-host")
                .map(|v| v.to_str().unwrap_or("?").to_string())
                .unwrap_or_default()
        })
        .collect();
    let mut misses = Vec::new();
    if listed.len() != 2 {
        misses.push(format!(
            "the prod request joined the staging approval ({} pending for two hosts)",
            listed.len()
        ));
    }
    if hosts.iter().any(|h| h == "prod.example.com") {
        misses.push(format!(
            "approving the staging request forwarded the prod one (upstream saw {hosts:?})"
        ));
    }
    assert!(
        misses.is_empty(),
        "{}; agents got {answers:?}",
        misses.join("; ")
    );
}
