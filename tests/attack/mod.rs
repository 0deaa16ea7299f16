//! The harness every attack suite shares (`bypass_suite`, `red_team`, `red_team2`,
//! `red_team3`): a case is a request (built, or hand-written HTTP/1.1 bytes) and what
//! must happen to it; [`run`] sends every case over one protocol to one airlock, one at
//! a time, and judges airlock's answer together with what the recording upstream saw
//! (the ground truth); [`Report`] lists every miss at once.
//!
//! Include it beside `mod common;` with `#[path = "attack/mod.rs"] mod attack;`.
#![allow(dead_code)]

use super::common::*;
use http_body_util::BodyExt;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// How long one case may take before it counts as a miss (airlock hung).
pub const CASE_DEADLINE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    H1,
    H2c,
}

/// What must happen to a case.
#[derive(Debug, Clone, PartialEq)]
pub enum Want {
    /// Forwarded exactly once: the upstream saw `method uri` (path and query).
    Forwarded(&'static str, String),
    /// `403 denied_by_rule`; the upstream saw nothing.
    Denied,
    /// airlock answered this status itself (its JSON error); the upstream saw nothing.
    Refused(u16),
    /// Stopped one way or another (`400`, `403`, `404` or `405` from airlock), never
    /// forwarded: for spellings where refusing and denying are both right.
    Blocked,
    /// Blocked, or forwarded with this header removed (a header only some upstreams act on).
    BlockedOrStripped(&'static str),
    /// Whatever airlock answers, the upstream never sees a `DELETE` (a smuggled request).
    NotTheSmuggled,
}

impl fmt::Display for Want {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Want::Forwarded(m, u) => write!(f, "forwarded as {m} {u}"),
            Want::Denied => write!(f, "403 denied_by_rule, not forwarded"),
            Want::Refused(s) => write!(f, "{s} from airlock, not forwarded"),
            Want::Blocked => write!(f, "400/403/404/405 from airlock, not forwarded"),
            Want::BlockedOrStripped(h) => write!(f, "blocked, or forwarded without {h}"),
            Want::NotTheSmuggled => write!(f, "no DELETE reaching the upstream"),
        }
    }
}

/// One request and what must happen to it.
#[derive(Debug, Clone)]
pub struct Case {
    pub class: &'static str,
    pub name: String,
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// A hand-written HTTP/1.1 request (odd request lines, folded headers): HTTP/1.1 only.
    pub raw: Option<Vec<u8>>,
    /// Sent over HTTP/1.1 only (the h2c client cannot express it).
    pub h1_only: bool,
    pub want: Want,
}

/// A case `METHOD target` of `class`, named `name`; add headers, a body and the
/// expectation with the builder methods.
pub fn case(class: &'static str, name: &str, method: &str, target: &str) -> Case {
    Case {
        class,
        name: name.to_string(),
        method: method.to_string(),
        target: target.to_string(),
        headers: Vec::new(),
        body: Vec::new(),
        raw: None,
        h1_only: false,
        want: Want::Blocked,
    }
}

/// A hand-written HTTP/1.1 request: `head` is the request line and any header lines
/// (each ending in `\r\n`); the agent key, `Connection: close` and the blank line are
/// added.
pub fn raw_case(class: &'static str, name: &str, head: &str, want: Want) -> Case {
    let text = format!(
        "{head}Authorization: Bearer {AGENT_KEY}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    Case {
        raw: Some(text.into_bytes()),
        h1_only: true,
        want,
        ..case(class, name, "", "")
    }
}

/// A hand-written HTTP/1.1 `POST target` whose `body` is sent in `chunks` (chunked
/// transfer coding), with the content type `ct`.
pub fn chunked_case(
    class: &'static str,
    name: &str,
    target: &str,
    ct: &str,
    chunks: &[&str],
    want: Want,
) -> Case {
    let mut text = format!(
        "POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {AGENT_KEY}\r\nContent-Type: {ct}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for chunk in chunks {
        text.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    text.push_str("0\r\n\r\n");
    Case {
        raw: Some(text.into_bytes()),
        h1_only: true,
        want,
        ..case(class, name, "POST", target)
    }
}

impl Case {
    pub fn h(mut self, name: &str, value: &str) -> Case {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    /// A body with a content type (`None`: no `Content-Type` header at all).
    pub fn body(mut self, content_type: Option<&str>, body: impl Into<Vec<u8>>) -> Case {
        if let Some(ct) = content_type {
            self = self.h("Content-Type", ct);
        }
        self.body = body.into();
        self
    }
    pub fn json(self, body: &str) -> Case {
        self.body(Some("application/json"), body)
    }
    pub fn form(self, body: &str) -> Case {
        self.body(Some("application/x-www-form-urlencoded"), body)
    }
    pub fn multipart(self, fields: &[(&str, &str)]) -> Case {
        let (ct, body) = multipart(fields);
        self.body(Some(&ct), body)
    }
    pub fn named(mut self, name: &str) -> Case {
        self.name = name.to_string();
        self
    }
    pub fn h1_only(mut self) -> Case {
        self.h1_only = true;
        self
    }
    pub fn want(mut self, want: Want) -> Case {
        self.want = want;
        self
    }
    pub fn denied(self) -> Case {
        self.want(Want::Denied)
    }
    pub fn refused(self, status: u16) -> Case {
        self.want(Want::Refused(status))
    }
    pub fn blocked(self) -> Case {
        self.want(Want::Blocked)
    }
    pub fn forwarded(self, method: &'static str, uri: &str) -> Case {
        self.want(Want::Forwarded(method, uri.to_string()))
    }

    /// The HTTP/1.1 bytes of this case.
    pub fn h1_bytes(&self) -> Vec<u8> {
        if let Some(raw) = &self.raw {
            return raw.clone();
        }
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {AGENT_KEY}\r\n",
            self.method, self.target
        );
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        ));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }

    /// The h2c request of this case, or why the client cannot send it.
    pub fn h2_request(&self, addr: SocketAddr) -> Result<hyper::Request<TestBody>, String> {
        let mut b = hyper::Request::builder()
            .method(self.method.as_str())
            .uri(format!("http://{addr}{}", self.target))
            .header("authorization", format!("Bearer {AGENT_KEY}"));
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        b.body(test_body(self.body.clone()))
            .map_err(|e| e.to_string())
    }
}

/// A `multipart/form-data` body with `fields`: (content type, body).
pub fn multipart(fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let mut body = String::new();
    for (name, value) in fields {
        body.push_str(&format!(
            "--XyZb\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    body.push_str("--XyZb--\r\n");
    (
        "multipart/form-data; boundary=XyZb".to_string(),
        body.into(),
    )
}

/// What came back for one case.
pub enum Answer {
    /// airlock answered: status and body.
    Status(u16, String),
    /// The exchange failed (no answer, a reset, a panic in the client).
    Failed(String),
}

/// Sends one case over `proto`; `None` when the h2c client cannot express it.
pub async fn send(proto: Proto, addr: SocketAddr, c: &Case) -> Option<Answer> {
    let task = match proto {
        Proto::H1 => {
            let bytes = c.h1_bytes();
            tokio::spawn(async move {
                let (status, _head, body) = raw_http(addr, &bytes).await;
                (status, body)
            })
        }
        Proto::H2c => {
            let req = c.h2_request(addr).ok()?;
            tokio::spawn(async move {
                let resp = h2c_send(addr, req).await;
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8_lossy(&body).into_owned())
            })
        }
    };
    Some(match tokio::time::timeout(CASE_DEADLINE, task).await {
        Ok(Ok((0, body))) => Answer::Failed(format!("no HTTP answer ({body:?})")),
        Ok(Ok((status, body))) => Answer::Status(status, body),
        Ok(Err(e)) => Answer::Failed(format!("the exchange failed: {e}")),
        Err(_) => Answer::Failed(format!("no answer within {CASE_DEADLINE:?}")),
    })
}

/// The `error` code of an airlock JSON answer, if it is one.
pub fn error_code(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["error"].as_str().map(str::to_string)
}

/// Checks one answer against the case and the upstream's log; `Err(what happened)`.
pub fn judge(c: &Case, answer: &Answer, new: &[Seen]) -> Result<(), String> {
    let (status, body) = match answer {
        Answer::Status(s, b) => (*s, b.as_str()),
        Answer::Failed(_)
            if c.want == Want::NotTheSmuggled && new.iter().all(|s| s.method != "DELETE") =>
        {
            return Ok(())
        }
        Answer::Failed(why) => {
            return Err(format!(
                "{why}; upstream saw {}",
                seen_list(new).unwrap_or("nothing".into())
            ))
        }
    };
    let head = c.method.eq_ignore_ascii_case("HEAD");
    let code = error_code(body);
    let got = || {
        let shown = match &code {
            Some(code) => code.clone(),
            None => body.chars().take(120).collect(),
        };
        format!(
            "{status} {shown}; upstream saw {}",
            seen_list(new).unwrap_or("nothing".into())
        )
    };
    let ok = match &c.want {
        Want::Forwarded(method, uri) => {
            status == 200 && new.len() == 1 && new[0].method == *method && new[0].uri == *uri
        }
        Want::Denied => {
            status == 403 && new.is_empty() && (head || code.as_deref() == Some("denied_by_rule"))
        }
        Want::Refused(want) => status == *want && new.is_empty() && (head || code.is_some()),
        Want::Blocked => matches!(status, 400 | 403 | 404 | 405) && new.is_empty(),
        Want::BlockedOrStripped(h) => {
            (matches!(status, 400 | 403 | 404 | 405) && new.is_empty())
                || (new.len() == 1 && !new[0].headers.contains_key(*h))
        }
        Want::NotTheSmuggled => !new.iter().any(|s| s.method == "DELETE"),
    };
    if ok {
        Ok(())
    } else {
        Err(got())
    }
}

/// `METHOD uri, …` of what the upstream saw, `None` when nothing.
pub fn seen_list(new: &[Seen]) -> Option<String> {
    (!new.is_empty()).then(|| {
        new.iter()
            .map(|s| format!("{} {}", s.method, s.uri))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// Runs `cases` one by one over `proto` against the airlock at `addr` in front of `up`:
/// every miss as a line, and a per-class tally.
pub async fn run(proto: Proto, addr: SocketAddr, up: &Upstream, cases: &[Case]) -> Report {
    let mut report = Report::default();
    for c in cases {
        if proto == Proto::H2c && c.h1_only {
            continue;
        }
        let before = up.count();
        let Some(answer) = send(proto, addr, c).await else {
            report.skipped.push(format!("[{}] {}", c.class, c.name));
            continue;
        };
        let new: Vec<Seen> = up.requests().split_off(before);
        let tally = report.tally.entry(c.class).or_default();
        tally.0 += 1;
        if let Err(got) = judge(c, &answer, &new) {
            tally.1 += 1;
            report.misses.push(format!(
                "[{}] {proto:?} {}: expected {}, got {got}",
                c.class, c.name, c.want
            ));
        }
    }
    report
}

#[derive(Default)]
pub struct Report {
    /// class → (cases run, misses).
    pub tally: BTreeMap<&'static str, (usize, usize)>,
    pub misses: Vec<String>,
    pub skipped: Vec<String>,
}

impl Report {
    /// Panics with every miss (and the per-class tally) when there is any.
    pub fn assert_clean(&self, what: &str) {
        let run: usize = self.tally.values().map(|t| t.0).sum();
        let tally = self
            .tally
            .iter()
            .map(|(class, (n, miss))| format!("  {class}: {} of {n} pass", n - miss))
            .collect::<Vec<_>>()
            .join("\n");
        eprintln!(
            "{what}: {run} cases run, {} missed, {} not expressible over h2c\n{tally}",
            self.misses.len(),
            self.skipped.len()
        );
        assert!(
            self.misses.is_empty(),
            "{what}: {} of {run} cases missed:\n{}\n\nper class:\n{tally}",
            self.misses.len(),
            self.misses.join("\n")
        );
    }
}
