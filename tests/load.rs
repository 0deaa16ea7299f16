//! Load: thousands of mixed requests against one airlock (SQLite store, `audit.level:
//! all`) and a recording upstream, 64 at a time: allowed, denied by a rule, held then
//! approved, held then denied, held then expired. Every answer is checked, the upstream
//! must have seen exactly the allowed and approved requests (each once), the audit log
//! must hold exactly the events each request should leave, and `airlock audit verify`
//! must pass.

mod common;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REQUESTS: usize = 3000;
const CONCURRENCY: usize = 64;
/// Must finish well within this, on a loaded machine.
const BUDGET: Duration = Duration::from_secs(60);

const RULES: &str = r#"rules:
  - name: reads
    when: {method: GET, path: /v1/pass/*}
    then: allow
  - name: no-deletes
    when: {method: DELETE, path: /v1/deny/*}
    then: deny
  - name: reviewed
    when: {method: POST, path: ["/v1/approve/*", "/v1/reject/*"]}
    then: approve
    approval: {approvers: [group:sre], timeout: 1h}
  - name: short-lived
    when: {method: POST, path: /v1/expire/*}
    then: approve
    approval: {approvers: [group:sre], timeout: 2s}
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Pass,
    Deny,
    Approve,
    Reject,
    Expire,
}

impl Kind {
    /// Request `i`'s kind: of every 30, 21 allowed, 6 denied, one of each hold.
    fn of(i: usize) -> Kind {
        match i % 30 {
            0..=20 => Kind::Pass,
            21..=26 => Kind::Deny,
            27 => Kind::Approve,
            28 => Kind::Reject,
            _ => Kind::Expire,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Kind::Pass => "pass",
            Kind::Deny => "deny",
            Kind::Approve => "approve",
            Kind::Reject => "reject",
            Kind::Expire => "expire",
        }
    }

    fn method(self) -> &'static str {
        match self {
            Kind::Pass => "GET",
            Kind::Deny => "DELETE",
            _ => "POST",
        }
    }

    /// The audit events the request leaves, in order.
    fn events(self) -> &'static [&'static str] {
        match self {
            Kind::Pass => &["passed"],
            Kind::Deny => &["denied_by_rule"],
            Kind::Approve => &["held", "vote", "approved", "forwarded"],
            Kind::Reject => &["held", "vote", "denied", "not_forwarded"],
            Kind::Expire => &["held", "expired", "not_forwarded"],
        }
    }
}

/// The path the upstream sees for request `i` (the route prefix `/api` removed).
fn upstream_path(i: usize) -> String {
    format!("/v1/{}/{i}", Kind::of(i).word())
}

fn reject_reason(i: usize) -> String {
    format!("load test says no to {i}")
}

/// `(kind, n)` from a path or URL ending in `/{kind}/{n}` (a query is ignored).
fn request_of(url: &str) -> Option<usize> {
    let path = url.split('?').next()?;
    let mut segs = path.rsplit('/');
    let n: usize = segs.next()?.parse().ok()?;
    (segs.next()? == Kind::of(n).word()).then_some(n)
}

/// Checks one answer; returns the approval id it carries (holds only).
fn check_answer(i: usize, r: &AgentReply) -> Option<String> {
    let kind = Kind::of(i);
    let v = r.json();
    let what = format!("request {i} ({kind:?}): {} {}", r.status, r.text);
    match kind {
        Kind::Pass | Kind::Approve => {
            assert_eq!(r.status, 200, "{what}");
            assert_eq!(v["uri"], upstream_path(i).as_str(), "{what}");
        }
        Kind::Deny => {
            assert_eq!(r.status, 403, "{what}");
            assert_eq!(v["error"], "denied_by_rule", "{what}");
        }
        Kind::Reject => {
            assert_eq!(r.status, 403, "{what}");
            assert_eq!(v["error"], "denied", "{what}");
            assert_eq!(v["reason"], reject_reason(i).as_str(), "{what}");
        }
        Kind::Expire => {
            assert_eq!(r.status, 403, "{what}");
            assert_eq!(v["error"], "approval_expired", "{what}");
        }
    }
    if matches!(kind, Kind::Pass | Kind::Deny) {
        assert_eq!(r.approval_header, None, "{what}");
        None
    } else {
        let id = r.approval_header.clone();
        assert!(id.is_some(), "no approval id: {what}");
        if !matches!(kind, Kind::Approve) {
            assert_eq!(v["approval_id"].as_str(), id.as_deref(), "{what}");
        }
        id
    }
}

/// Votes on every pending approval of an `approve` or `reject` request, once each, until
/// `done`: the reviewers' side of the load.
async fn reviewers(a: Arc<InProcess>, done: Arc<AtomicBool>) -> usize {
    let c = client();
    let mut voted: HashSet<String> = HashSet::new();
    while !done.load(Ordering::SeqCst) {
        let list = pending(&*a, BOB).await;
        let mut votes = tokio::task::JoinSet::new();
        for ap in list {
            let id = id_of(&ap);
            let Some(i) = ap["url"].as_str().and_then(request_of) else {
                panic!("an approval of no load request: {ap}");
            };
            let (decision, reason) = match Kind::of(i) {
                Kind::Approve => ("approve", None),
                Kind::Reject => ("deny", Some(reject_reason(i))),
                Kind::Expire => continue,
                k => panic!("request {i} ({k:?}) was held: {ap}"),
            };
            if !voted.insert(id.clone()) {
                continue;
            }
            let (c, a) = (c.clone(), a.clone());
            votes.spawn(async move {
                let (s, v) = vote_with(&c, &*a, BOB, &id, decision, reason.as_deref()).await;
                assert_eq!(s, 200, "vote {decision} on {id} (request {i}): {v}");
            });
        }
        while let Some(r) = votes.join_next().await {
            r.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    voted.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_mixed_requests_each_answered_forwarded_and_audited_exactly() {
    let started = Instant::now();
    let (up, ws, a) = setup_with_rules(RULES, "audit:\n  level: all\n  file: audit.jsonl\n").await;
    let a = Arc::new(a);
    let done = Arc::new(AtomicBool::new(false));
    let voting = tokio::spawn(reviewers(a.clone(), done.clone()));

    // 64 agents' worth of concurrent requests, from both agents, in a mixed order.
    let next = Arc::new(AtomicUsize::new(0));
    let answers: Arc<Mutex<BTreeMap<usize, Option<String>>>> = Arc::default();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (a, next, answers) = (a.clone(), next.clone(), answers.clone());
        workers.spawn(async move {
            let c = client();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= REQUESTS {
                    return;
                }
                let kind = Kind::of(i);
                let key = if (i / 30) % 2 == 0 {
                    AGENT_KEY
                } else {
                    OTHER_AGENT_KEY
                };
                let url = a.url(&format!("/api{}", upstream_path(i)));
                let body = if kind.method() == "POST" {
                    format!("{{\"n\":{i}}}")
                } else {
                    String::new()
                };
                let r = agent_send(&c, &url, kind.method(), key, &body).await;
                let id = check_answer(i, &r);
                answers.lock().unwrap().insert(i, id);
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let votes = voting.await.unwrap();
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    assert_eq!(answers.len(), REQUESTS);
    let count = |k: Kind| (0..REQUESTS).filter(|&i| Kind::of(i) == k).count();
    assert_eq!(votes, count(Kind::Approve) + count(Kind::Reject));

    // The upstream saw exactly the allowed and the approved requests, each once.
    let mut seen: Vec<String> = up.requests().into_iter().map(|s| s.uri).collect();
    seen.sort();
    let mut want: Vec<String> = (0..REQUESTS)
        .filter(|&i| matches!(Kind::of(i), Kind::Pass | Kind::Approve))
        .map(upstream_path)
        .collect();
    want.sort();
    assert_eq!(seen.len(), want.len(), "requests the upstream saw");
    assert_eq!(seen, want);

    // Stopping flushes the audit log; then every request's events are exactly its own.
    let a = Arc::try_unwrap(a).unwrap_or_else(|_| panic!("airlock still shared"));
    a.stop().await;
    let text = std::fs::read_to_string(ws.path().join("audit.jsonl")).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let approval_of: BTreeMap<&str, usize> = answers
        .iter()
        .filter_map(|(i, id)| id.as_deref().map(|id| (id, *i)))
        .collect();
    let mut got: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    let mut other = Vec::new();
    for e in &events {
        // Lines that are not events (a checkpoint, say) belong to no request.
        let Some(kind) = e["event"].as_str() else {
            continue;
        };
        let by_path = e["path"].as_str().and_then(request_of);
        let i = match e["approval_id"].as_str() {
            Some(id) => {
                let i = *approval_of
                    .get(id)
                    .unwrap_or_else(|| panic!("an event of an unknown approval: {e}"));
                if let Some(p) = by_path {
                    assert_eq!(p, i, "{e}");
                }
                Some(i)
            }
            None => by_path,
        };
        match i {
            Some(i) => got.entry(i).or_default().push(kind),
            None => other.push(e),
        }
    }
    for i in 0..REQUESTS {
        assert_eq!(
            got.get(&i).map(Vec::as_slice).unwrap_or_default(),
            Kind::of(i).events(),
            "the audit events of request {i} ({:?})",
            Kind::of(i)
        );
    }
    assert_eq!(got.len(), REQUESTS);
    // Nothing else was recorded about requests.
    for e in &other {
        assert!(
            e["request_id"].is_null() && e["approval_id"].is_null(),
            "an event of no load request: {e}"
        );
    }
    let per_kind: BTreeSet<(Kind, usize)> = [
        Kind::Pass,
        Kind::Deny,
        Kind::Approve,
        Kind::Reject,
        Kind::Expire,
    ]
    .into_iter()
    .map(|k| (k, count(k)))
    .collect();
    assert_audit_intact(&ws.config(), "after the load").await;
    let took = started.elapsed();
    eprintln!("{REQUESTS} requests {per_kind:?} in {took:?}");
    assert!(took < BUDGET, "took {took:?}");
}
