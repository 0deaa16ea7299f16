//! Two `airlock serve` replicas on one PostgreSQL database (issue 7): a vote cast on
//! one replica releases a request held on the other; a mixed load whose votes land on
//! either replica gets every answer right, reaches the upstream exactly as approved and
//! leaves exactly the audit events it should, in one chain that verifies; and racing
//! votes by one reviewer count once.
//!
//! Each test makes a database of its own (`airlock_rep_<random>`, dropped with the
//! guard), starts two real processes with the same config (their own ports and
//! `audit.file`) in front of one recording upstream, and reads the audit log back the
//! way an auditor does (`airlock audit export`, `airlock audit verify`). Skipped without
//! PostgreSQL, except in CI.

mod common;
use common::*;
#[path = "standins/slack.rs"]
mod slack_standin;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RULES: &str = r#"rules:
  - name: protected-delete
    when:
      upstream: api
      method: DELETE
      path: /protected/**
    then: deny
  - name: deploy
    when:
      upstream: api
      method: POST
      path: /deploy/*
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 5m
  - name: release
    when:
      upstream: api
      method: POST
      path: /release/*
    then: approve
    approval:
      approvers: [group:sre]
      quorum: 2
      timeout: 5m
  - name: expiring
    when:
      upstream: api
      method: POST
      path: /expiring/*
    then: approve
    approval:
      approvers: [group:sre]
      timeout: 8s
"#;

/// The reviewers who vote here (alice owns deploy-bot and may not).
const REVIEWERS: [(&str, &str); 2] = [(BOB, "bob@example.com"), (CAROL, "carol@example.com")];

// ---- The database, the two replicas, and reading the log back ----------------------

/// A database of its own on the test server; dropped (connections and all) with the
/// guard, so reruns and parallel tests never share state.
struct Database {
    server: String,
    name: String,
    url: String,
}

impl Database {
    async fn create(test: &str) -> Option<Database> {
        let server = postgres_or_skip(test).await?;
        let name = format!(
            "airlock_rep_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        );
        let (c, conn) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL answered a moment ago: {e}"));
        tokio::spawn(conn);
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        Some(Database {
            url: with_database(&server, &name),
            server,
            name,
        })
    }
}

impl Drop for Database {
    /// Drops the database from a thread of its own (the test's runtime may be the one
    /// dropping the guard, and cannot block on itself).
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(&server, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    if let Err(e) = c.batch_execute(&sql).await {
                        eprintln!("could not drop the test database {name}: {e}");
                    }
                }
            });
        })
        .join();
    }
}

/// `url` (`postgres://user@host:port/db?options`) naming database `db` instead.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let root = match base[authority..].find('/') {
        Some(i) => &base[..authority + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

/// The addresses of one replica.
#[derive(Clone, Copy, Debug)]
struct Replica {
    proxy: SocketAddr,
    admin: SocketAddr,
}

impl Listeners for Replica {
    fn proxy_addr(&self) -> SocketAddr {
        self.proxy
    }
    fn admin_addr(&self) -> Option<SocketAddr> {
        Some(self.admin)
    }
}

/// Two `airlock serve` processes on one database, in front of one upstream.
struct Pair {
    up: Upstream,
    at: [Replica; 2],
    configs: [PathBuf; 2],
    audit_files: [PathBuf; 2],
    processes: Vec<Airlock>,
    _ws: Workspace,
    /// Last: dropped after the processes are gone.
    _db: Database,
}

impl Pair {
    /// A fresh database, an echo upstream and two replicas with `rules`, at
    /// `audit.level: all`; `None` when the test is skipped for want of PostgreSQL.
    async fn start(test: &str, rules: &str) -> Option<Pair> {
        Pair::start_with(test, rules, "").await
    }

    /// [`Pair::start`] with `extra` appended to both configs.
    async fn start_with(test: &str, rules: &str, extra: &str) -> Option<Pair> {
        let db = Database::create(test).await?;
        let up = Upstream::start().await;
        let ws = Workspace::new();
        ws.write("rules/r.yaml", rules);
        let config = |audit: &str| {
            format!(
                r#"listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
store: "{store}"
rules: rules/
upstreams:
  - name: api
    prefix: /api
    url: {upstream}
    timeout: 5s
{identities}audit:
  level: all
  file: {audit}
{extra}
"#,
                store = db.url,
                upstream = up.url(),
                identities = identities_yaml(),
            )
        };
        let configs = [
            ws.write("replica-a.yaml", &config("audit-a.jsonl")),
            ws.write("replica-b.yaml", &config("audit-b.jsonl")),
        ];
        let audit_files = [
            ws.path().join("audit-a.jsonl"),
            ws.path().join("audit-b.jsonl"),
        ];
        // Both start at once: they migrate the fresh database concurrently.
        let starts = configs
            .clone()
            .map(|c| tokio::task::spawn_blocking(move || Airlock::start(&c)));
        let mut processes = Vec::new();
        for s in starts {
            processes.push(s.await.unwrap());
        }
        let at = [0, 1].map(|i: usize| Replica {
            proxy: processes[i].proxy,
            admin: processes[i]
                .admin
                .expect("the replica's config has an admin listener"),
        });
        Some(Pair {
            up,
            at,
            configs,
            audit_files,
            processes,
            _ws: ws,
            _db: db,
        })
    }

    /// Stops both replicas (SIGTERM, so their audit files are complete) and returns
    /// their logs.
    async fn stop(&mut self) -> Vec<String> {
        let mut logs = Vec::new();
        for p in self.processes.drain(..) {
            let log = p.stderr.clone();
            let status = tokio::task::spawn_blocking(move || p.stop()).await.unwrap();
            let log = log.lock().unwrap().clone();
            assert!(status.success(), "a replica exited with {status}:\n{log}");
            logs.push(log);
        }
        logs
    }

    /// The audit log as the store holds it (`airlock audit export`), in seq order.
    fn export(&self) -> Vec<Value> {
        let cfg = self.configs[0].to_string_lossy().into_owned();
        let (code, out, err) = run_cli(&["audit", "export", "-c", &cfg], &[]);
        assert_eq!(code, 0, "audit export failed: {err}");
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("export line {l:?}: {e}")))
            .collect()
    }

    /// Stops the replicas and checks what must hold after any run: the chain verifies
    /// (`airlock audit verify`, exit 0), seqs are 1..=N, neither log shows a chain out
    /// of step or an error, and each replica's JSONL copy agrees with the store and
    /// together they miss nothing. Returns the store's events.
    async fn stop_and_check_log(&mut self) -> Vec<Value> {
        let logs = self.stop().await;
        for (name, log) in ["a", "b"].iter().zip(&logs) {
            assert!(
                !log.contains("out of step"),
                "replica {name}: audit chain out of step:\n{log}"
            );
            let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
            assert!(
                errors.is_empty(),
                "replica {name} logged errors:\n{}",
                errors.join("\n")
            );
        }
        let cfg = self.configs[1].to_string_lossy().into_owned();
        let (code, out, err) = run_cli(&["audit", "verify", "-c", &cfg], &[]);
        assert_eq!(code, 0, "audit verify must accept the chain:\n{out}{err}");

        let events = self.export();
        let seqs: Vec<u64> = events
            .iter()
            .map(|e| e["seq"].as_u64().unwrap_or(0))
            .collect();
        assert_eq!(
            seqs,
            (1..=events.len() as u64).collect::<Vec<_>>(),
            "the store's seqs are 1..=N, no gap, no duplicate"
        );
        let mut copied = vec![false; events.len()];
        for (name, file) in ["a", "b"].iter().zip(&self.audit_files) {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            for line in text.lines() {
                let ev: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("replica {name}'s audit file: {line:?}: {e}"));
                let seq = ev["seq"].as_u64().unwrap_or(0) as usize;
                assert!(
                    (1..=events.len()).contains(&seq) && events[seq - 1] == ev,
                    "replica {name}'s audit file has an event the store does not: {line}"
                );
                copied[seq - 1] = true;
            }
        }
        let missing: Vec<usize> = (1..=events.len()).filter(|s| !copied[s - 1]).collect();
        assert!(
            missing.is_empty(),
            "seqs in no replica's audit file: {missing:?}"
        );
        events
    }
}

/// The events of one approval, in seq order.
fn events_of<'a>(events: &'a [Value], id: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["approval_id"] == id).collect()
}

/// `event` or `event reviewer decision`, for comparing what happened to an approval.
fn label(e: &Value) -> String {
    let mut s = e["event"].as_str().unwrap_or("?").to_string();
    for field in ["reviewer", "decision"] {
        if let Some(v) = e[field].as_str() {
            s.push(' ');
            s.push_str(v);
        }
    }
    s
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Sends deploy-bot's `POST path` with `body` to `at` in the background.
fn post_spawn(
    c: &reqwest::Client,
    at: Replica,
    path: &str,
    body: &str,
) -> tokio::task::JoinHandle<AgentReply> {
    let (c, url, body) = (c.clone(), at.url(path), body.to_string());
    tokio::spawn(async move { agent_send(&c, &url, "POST", AGENT_KEY, &body).await })
}

/// The agent's answer, which must come within [`DEADLINE`]; `what` says what it waits on.
async fn answer(held: tokio::task::JoinHandle<AgentReply>, what: &str) -> AgentReply {
    let started = Instant::now();
    match tokio::time::timeout(DEADLINE, held).await {
        Ok(r) => r.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
        Err(_) => panic!("{what}: no answer within {:?}", started.elapsed()),
    }
}

// ---- Watching the pending list ------------------------------------------------------

/// Approval ids by URL, as reviewers see them listed pending: one task polls the admin
/// API of both replicas in turn (a reviewer has no other signal) and keeps every id it
/// ever saw, so a worker learns the id of its held request even after it is decided.
struct Listed {
    ids: tokio::sync::watch::Receiver<HashMap<String, String>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Listed {
    fn watch(c: &reqwest::Client, at: [Replica; 2]) -> Listed {
        let (tx, ids) = tokio::sync::watch::channel(HashMap::new());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, stopped) = (c.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut failures = Vec::new();
            for turn in 0.. {
                if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let url = at[turn % 2].admin_url("/api/v1/approvals?status=pending&limit=10000");
                match c.get(&url).bearer_auth(BOB).send().await {
                    Ok(r) if r.status() == 200 => {
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        let list = v["approvals"].as_array().cloned().unwrap_or_default();
                        tx.send_modify(|m| {
                            for a in &list {
                                if let (Some(u), Some(id)) = (a["url"].as_str(), a["id"].as_str()) {
                                    m.entry(u.to_string()).or_insert_with(|| id.to_string());
                                }
                            }
                        });
                    }
                    Ok(r) => failures.push(format!("{url}: {}", r.status())),
                    Err(e) => failures.push(format!("{url}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            failures
        });
        Listed { ids, stop, task }
    }

    /// The id of the approval listed for `url` (the upstream's view of the path).
    async fn id(&self, url: &str) -> String {
        let mut rx = self.ids.clone();
        let found = tokio::time::timeout(DEADLINE, rx.wait_for(|m| m.contains_key(url))).await;
        match found {
            Ok(Ok(m)) => m[url].clone(),
            _ => panic!("no approval for {url} listed pending within {DEADLINE:?}"),
        }
    }

    /// Stops polling; every listing must have been answered.
    async fn finish(self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let failures = self.task.await.unwrap();
        assert!(
            failures.is_empty(),
            "listing pending approvals failed: {failures:?}"
        );
    }
}

// ---- A vote on one replica, a request held on the other ------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_on_one_replica_decides_a_request_held_on_the_other() {
    let Some(mut pair) = Pair::start("two_replicas vote across", RULES).await else {
        return;
    };
    let c = client();
    let [a, b] = pair.at;

    // Held on A, approved on B: forwarded once, promptly.
    let held = post_spawn(&c, a, "/api/deploy/1", r#"{"k":1}"#);
    let id = id_of(&wait_pending(&a, 1).await[0]);
    let (s, v) = vote_with(&c, &b, BOB, &id, "approve", None).await;
    assert_eq!(s, 200, "{v}");
    answer(held, "held on replica A, approved on replica B")
        .await
        .assert_forwarded_on(&id);

    // Held on B, denied on A: the reviewer's reason reaches the agent.
    let held = post_spawn(&c, b, "/api/deploy/2", r#"{"k":2}"#);
    let id2 = id_of(&wait_pending(&b, 1).await[0]);
    let (s, v) = vote_with(&c, &a, CAROL, &id2, "deny", Some("not today")).await;
    assert_eq!(s, 200, "{v}");
    let r = answer(held, "held on replica B, denied on replica A").await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.json()["error"], "denied");
    assert_eq!(r.json()["reason"], "not today");
    assert_eq!(r.json()["approval_id"], id2.as_str());

    let seen: Vec<String> = pair.up.requests().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(
        seen,
        ["/deploy/1"],
        "only the approved request reached the upstream"
    );
    let events = pair.stop_and_check_log().await;
    let labels = |id: &str| {
        events_of(&events, id)
            .iter()
            .map(|e| label(e))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        labels(&id),
        [
            "held",
            "vote bob@example.com approve",
            "approved bob@example.com",
            "forwarded"
        ]
    );
    assert_eq!(
        labels(&id2),
        [
            "held",
            "vote carol@example.com deny",
            "denied carol@example.com",
            "not_forwarded"
        ]
    );
}

// ---- Notifications from two replicas --------------------------------------------------

/// With a webhook channel on both replicas: a vote on B releases the request parked on
/// A at once (LISTEN/NOTIFY, not the reconciliation every 3 s), and every lifecycle
/// event of every approval reaches the channel exactly once, though both replicas run
/// a dispatcher over the one outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_on_b_wakes_a_at_once_and_each_notice_goes_out_once() {
    let hook = Upstream::start().await;
    let slack = slack_standin::Slack::start().await;
    let extra = format!(
        "channels:\n  webhook: {{url: \"{}/hook\", secret: test-hook-secret}}\n  slack: {{bot_token: {}, signing_secret: test-signing-secret, channel: {}, api_base: \"{}\"}}\n",
        hook.url(),
        slack_standin::BOT_TOKEN,
        slack_standin::CHANNEL,
        slack.api_base(),
    );
    let Some(mut pair) = Pair::start_with("two_replicas notices", RULES, &extra).await else {
        return;
    };
    let c = client();
    let [a, b] = pair.at;
    const ROUNDS: usize = 8;
    let mut waits = Vec::new();
    let mut ids = Vec::new();
    for k in 0..ROUNDS {
        let (held_at, vote_at) = if k % 2 == 0 { (a, b) } else { (b, a) };
        let held = post_spawn(&c, held_at, &format!("/api/deploy/{k}"), "{}");
        let id = id_of(&wait_pending(&held_at, 1).await[0]);
        let (s, v) = vote_with(&c, &vote_at, BOB, &id, "approve", None).await;
        let voted = Instant::now();
        assert_eq!(s, 200, "{v}");
        answer(held, "held on one replica, approved on the other")
            .await
            .assert_forwarded_on(&id);
        waits.push(voted.elapsed());
        ids.push(id);
    }
    waits.sort();
    let median = waits[ROUNDS / 2];
    eprintln!(
        "vote accepted → parked request answered on the other replica: median {median:?}, max {:?}",
        waits[ROUNDS - 1]
    );
    assert!(
        median < Duration::from_millis(250),
        "a vote on one replica must wake the other at once (LISTEN/NOTIFY), not at the \
         next reconciliation: {waits:?}"
    );

    // Every approval: opened, vote, decided, forwarded — each delivered once.
    let want = ["opened", "vote", "decided", "forwarded"];
    let complete = eventually(30, || {
        let hook = &hook;
        let ids = &ids;
        async move {
            let got: Vec<Value> = hook
                .requests()
                .iter()
                .filter_map(|r| serde_json::from_slice(&r.body).ok())
                .collect();
            let complete = ids.iter().all(|id| {
                want.iter().all(|w| {
                    got.iter().any(|e| {
                        e["subject"] == id.as_str()
                            && e["type"] == format!("dev.airlock.approval.{w}")
                    })
                })
            });
            complete.then_some(got)
        }
    })
    .await;
    eventually(30, || {
        let slack = &slack;
        async move {
            (slack.calls_of("chat.update").len() >= ROUNDS * (want.len() - 1)).then_some(())
        }
    })
    .await;
    // Both replicas stopped: no dispatcher can deliver anything more.
    pair.stop_and_check_log().await;
    let deliveries: Vec<Value> = hook
        .requests()
        .iter()
        .filter_map(|r| serde_json::from_slice(&r.body).ok())
        .collect();
    assert!(deliveries.len() >= complete.len());
    let mut seen = HashMap::new();
    for e in &deliveries {
        *seen
            .entry((e["subject"].to_string(), e["type"].to_string()))
            .or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(
        deliveries.len(),
        ROUNDS * want.len(),
        "one delivery per lifecycle event"
    );
    // One Slack message per approval, not one per replica; every later event updated it.
    let posts = slack.calls_of("chat.postMessage");
    for id in &ids {
        let n = posts
            .iter()
            .filter(|p| p.to_string().contains(id.as_str()))
            .count();
        assert_eq!(n, 1, "Slack messages posted for {id}: {posts:#?}");
    }
    assert_eq!(posts.len(), ROUNDS);
    assert_eq!(
        slack.calls_of("chat.update").len(),
        ROUNDS * (want.len() - 1),
        "vote, decided and forwarded each updated the message once"
    );
}

// ---- The mixed load -----------------------------------------------------------------

/// How a held request's approval is meant to end.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Plan {
    /// Every vote approves.
    Approve,
    /// Quorum 1: the one vote denies. Quorum 2: one approves, then the other denies.
    Deny,
    /// Nobody votes (rule `expiring`, 8 s: long enough that an identical retry sent as
    /// soon as the approval is listed has surely joined it, even on a loaded machine).
    Expire,
}

/// Whether an identical request follows the first.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Retry {
    No,
    /// The identical request goes to the other replica while the approval is pending
    /// and joins it (only with `Expire`: nothing decides it before the retry has
    /// surely joined; an approval decided before a retry's lookup would rightly make
    /// the retry ask anew, and nothing outside airlock can tell when it has joined).
    Joined,
    /// The agent gives up while held (`client_gone`); after the approval its identical
    /// retry, on a random replica, is forwarded on it (only with `Approve`).
    AfterLeaving,
}

/// One agent request, or one held request and everything done about it.
#[derive(Clone, Debug)]
enum Case {
    /// `GET /api/items/K`: allowed.
    Plain {
        k: usize,
        at: usize,
    },
    /// `DELETE /api/protected/K`: denied by rule.
    Refused {
        k: usize,
        at: usize,
    },
    Held(Held),
}

#[derive(Clone, Debug)]
struct Held {
    k: usize,
    /// The rule: `deploy` (quorum 1), `release` (quorum 2) or `expiring`.
    rule: &'static str,
    plan: Plan,
    retry: Retry,
    /// The replica the agent sends to.
    at: usize,
    /// Votes in order: (reviewer index, replica). Quorum 2 votes land on different
    /// replicas; approving ones are sent at once.
    votes: Vec<(usize, usize)>,
    /// The replica an `AfterLeaving` retry goes to.
    retry_at: usize,
}

impl Held {
    fn upstream_path(&self) -> String {
        format!("/{}/{}", self.rule, self.k)
    }
    fn body(&self) -> String {
        format!(r#"{{"k":{},"rule":"{}"}}"#, self.k, self.rule)
    }
    fn decision(&self, i: usize) -> &'static str {
        match self.plan {
            Plan::Deny if i + 1 == self.votes.len() => "deny",
            _ => "approve",
        }
    }
    fn deny_reason(&self) -> String {
        format!("no to {}", self.k)
    }
}

/// The mix: a few hundred agent requests and some fifty votes.
fn cases(rng: &mut impl Rng) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut k = 0;
    let mut next = || {
        k += 1;
        k
    };
    for _ in 0..200 {
        cases.push(Case::Plain {
            k: next(),
            at: rng.gen_range(0..2),
        });
    }
    for _ in 0..40 {
        cases.push(Case::Refused {
            k: next(),
            at: rng.gen_range(0..2),
        });
    }
    let held = [
        ("deploy", Plan::Approve, Retry::No, 8),
        ("deploy", Plan::Approve, Retry::AfterLeaving, 4),
        ("deploy", Plan::Deny, Retry::No, 8),
        ("release", Plan::Approve, Retry::No, 7),
        ("release", Plan::Approve, Retry::AfterLeaving, 3),
        ("release", Plan::Deny, Retry::No, 6),
        ("expiring", Plan::Expire, Retry::No, 2),
        ("expiring", Plan::Expire, Retry::Joined, 4),
    ];
    for (rule, plan, retry, n) in held {
        for _ in 0..n {
            let votes = match (rule, plan) {
                (_, Plan::Expire) => vec![],
                ("deploy", _) => vec![(rng.gen_range(0..2), rng.gen_range(0..2))],
                _ => {
                    let (first, on) = (rng.gen_range(0..2), rng.gen_range(0..2));
                    vec![(first, on), (1 - first, 1 - on)]
                }
            };
            cases.push(Case::Held(Held {
                k: next(),
                rule,
                plan,
                retry,
                at: rng.gen_range(0..2),
                votes,
                retry_at: rng.gen_range(0..2),
            }));
        }
    }
    cases.shuffle(rng);
    cases
}

/// What the workers share.
struct Load {
    c: reqwest::Client,
    at: [Replica; 2],
    audit_files: [PathBuf; 2],
    listed: Listed,
}

/// What a held case left to check in the log: its approval and how many agent
/// requests it carried.
struct HeldDone {
    held: Held,
    id: String,
}

impl Load {
    /// Runs one case and checks every answer; a held case returns its approval.
    async fn run(&self, case: Case) -> Option<HeldDone> {
        match case {
            Case::Plain { k, at } => {
                let url = self.at[at].url(&format!("/api/items/{k}?n={k}"));
                let r = agent_send(&self.c, &url, "GET", AGENT_KEY, "").await;
                assert_eq!(r.status, 200, "GET items/{k}: {}", r.text);
                assert_eq!(r.json()["uri"], format!("/items/{k}?n={k}"), "{}", r.text);
                None
            }
            Case::Refused { k, at } => {
                let url = self.at[at].url(&format!("/api/protected/{k}"));
                let r = agent_send(&self.c, &url, "DELETE", AGENT_KEY, "").await;
                assert_eq!(r.status, 403, "DELETE protected/{k}: {}", r.text);
                assert_eq!(r.json()["error"], "denied_by_rule", "{}", r.text);
                assert_eq!(r.json()["rule"], serde_json::json!(["protected-delete"]));
                None
            }
            Case::Held(h) => Some(self.held(h).await),
        }
    }

    async fn held(&self, h: Held) -> HeldDone {
        let path = format!("/api{}", h.upstream_path());
        let body = h.body();
        let first = post_spawn(&self.c, self.at[h.at], &path, &body);
        let id = self.listed.id(&h.upstream_path()).await;
        let ctx = format!("{h:?} on {id}");
        let mut joined = None;
        match h.retry {
            Retry::No => {}
            Retry::Joined => {
                joined = Some(post_spawn(&self.c, self.at[1 - h.at], &path, &body));
            }
            Retry::AfterLeaving => {
                first.abort();
                let file = &self.audit_files[h.at];
                wait_audit_event(file, "client_gone", |e| {
                    e["event"] == "client_gone" && e["approval_id"] == id.as_str()
                })
                .await;
            }
        }
        self.vote(&h, &id, &ctx).await;
        let decided = format!(
            "{ctx}: held on replica {}, last vote on {:?}",
            h.at,
            h.votes.last()
        );
        match (h.plan, h.retry) {
            (Plan::Approve, Retry::AfterLeaving) => {
                let retry = post_spawn(&self.c, self.at[h.retry_at], &path, &body);
                let r = answer(retry, &format!("{ctx}: the retry")).await;
                r.assert_forwarded_on(&id);
            }
            (Plan::Approve, _) => {
                let r = answer(first, &decided).await;
                r.assert_forwarded_on(&id);
                assert_eq!(r.json()["body"], body.as_str(), "{ctx}");
            }
            (Plan::Deny, _) => {
                let r = answer(first, &decided).await;
                assert_eq!(r.status, 403, "{ctx}: {}", r.text);
                assert_eq!(r.json()["error"], "denied", "{ctx}: {}", r.text);
                assert_eq!(r.json()["approval_id"], id.as_str(), "{ctx}");
                assert_eq!(r.json()["reason"], h.deny_reason().as_str(), "{ctx}");
            }
            (Plan::Expire, _) => {
                for r in [Some(first), joined].into_iter().flatten() {
                    let r = answer(r, &ctx).await;
                    assert_eq!(r.status, 403, "{ctx}: {}", r.text);
                    assert_eq!(r.json()["error"], "approval_expired", "{ctx}: {}", r.text);
                    assert_eq!(r.json()["approval_id"], id.as_str(), "{ctx}");
                }
            }
        }
        HeldDone { held: h, id }
    }

    /// Casts the case's votes; each must be accepted. Approving votes of a quorum-2
    /// approval go at once (to different replicas); a deny follows the approve it
    /// overrules.
    async fn vote(&self, h: &Held, id: &str, ctx: &str) {
        let cast = |i: usize| {
            let (who, on) = h.votes[i];
            let decision = h.decision(i);
            let reason = (decision == "deny").then(|| h.deny_reason());
            let (c, at, id) = (self.c.clone(), self.at[on], id.to_string());
            async move { vote_with(&c, &at, REVIEWERS[who].0, &id, decision, reason.as_deref()).await }
        };
        let answers = match (h.plan, h.votes.len()) {
            (_, 0) => vec![],
            (Plan::Approve, 2) => {
                let (x, y) = tokio::join!(cast(0), cast(1));
                vec![x, y]
            }
            (_, n) => {
                let mut v = Vec::new();
                for i in 0..n {
                    v.push(cast(i).await);
                }
                v
            }
        };
        for (s, v) in answers {
            assert_eq!(s, 200, "{ctx}: a vote was refused: {v}");
        }
    }
}

/// The events a held case must leave, as [`outcome_label`] shows them, sorted.
fn expected_events(h: &Held) -> Vec<String> {
    let mut want = vec!["held".to_string()];
    for (i, (who, _)) in h.votes.iter().enumerate() {
        want.push(format!("vote {} {}", REVIEWERS[*who].1, h.decision(i)));
    }
    let requests = if h.retry == Retry::Joined { 2 } else { 1 };
    let (decision, outcome) = match h.plan {
        Plan::Approve => ("approved", "forwarded"),
        Plan::Deny => ("denied", "not_forwarded"),
        Plan::Expire => ("expired", "not_forwarded"),
    };
    want.push(decision.into());
    want.extend(std::iter::repeat_n(outcome.to_string(), requests));
    if h.retry == Retry::AfterLeaving {
        want.push("client_gone".into());
    }
    sorted(want)
}

/// [`label`], but a decision without the reviewer whose vote made it: which one that
/// is may race (quorum 2, approving votes sent at once), so it is checked apart.
fn outcome_label(e: &Value) -> String {
    match e["event"].as_str() {
        Some(d @ ("approved" | "denied")) => d.to_string(),
        _ => label(e),
    }
}

/// Checks one approval's events: exactly the expected ones, in an order that tells
/// the truth (held first; every vote before the decision; the decision before the
/// request went out or was refused).
fn check_approval(events: &[Value], done: &HeldDone) {
    let h = &done.held;
    let mine = events_of(events, &done.id);
    let ctx = format!("{h:?} on {}: {:#?}", done.id, mine);
    let got: Vec<String> = mine.iter().map(|e| outcome_label(e)).collect();
    assert_eq!(sorted(got), expected_events(h), "{ctx}");
    if let Some(d) = mine
        .iter()
        .find(|e| e["event"] == "approved" || e["event"] == "denied")
    {
        let who = d["reviewer"].as_str().unwrap_or_default();
        assert!(
            h.votes.iter().any(|(r, _)| REVIEWERS[*r].1 == who),
            "the decision names a voter: {ctx}"
        );
        if h.plan == Plan::Deny {
            assert_eq!(d["reason"], h.deny_reason().as_str(), "{ctx}");
        }
    }

    // `mine` is in seq order.
    let first_of = |kinds: &[&str]| {
        mine.iter()
            .position(|e| kinds.iter().any(|k| e["event"] == *k))
    };
    let last_of = |kinds: &[&str]| {
        mine.iter()
            .rposition(|e| kinds.iter().any(|k| e["event"] == *k))
    };
    assert_eq!(
        mine[0]["event"], "held",
        "the held event comes first: {ctx}"
    );
    if let (Some(votes), Some(decision)) = (last_of(&["vote"]), first_of(&["approved", "denied"])) {
        assert!(
            votes < decision,
            "every vote is recorded before the decision: {ctx}"
        );
    }
    if let (Some(decision), Some(out)) = (
        first_of(&["approved", "denied"]),
        first_of(&["forwarded", "not_forwarded"]),
    ) {
        assert!(
            decision < out,
            "the decision is recorded before the request goes out or is refused: {ctx}"
        );
    }
    for e in &mine {
        let ok = match e["event"].as_str().unwrap_or_default() {
            "forwarded" => e["status"] == 200,
            "not_forwarded" => e["status"] == 403,
            _ => true,
        };
        assert!(ok, "outcome status: {e}: {ctx}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_on_two_replicas_is_answered_forwarded_and_audited_exactly() {
    let Some(mut pair) = Pair::start("two_replicas mixed load", RULES).await else {
        return;
    };
    let seed = std::env::var("AIRLOCK_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen::<u64>());
    eprintln!("mixed load: seed {seed} (rerun with AIRLOCK_TEST_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let all = cases(&mut rng);

    let c = client();
    let load = Arc::new(Load {
        listed: Listed::watch(&c, pair.at),
        c,
        at: pair.at,
        audit_files: pair.audit_files.clone(),
    });
    let queue = Arc::new(Mutex::new(all.clone()));
    let started = Instant::now();
    const CLIENTS: usize = 20;
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (load, queue) = (load.clone(), queue.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let next = queue.lock().unwrap().pop();
                    let Some(case) = next else { break };
                    done.extend(load.run(case).await);
                }
                done
            })
        })
        .collect();
    let mut held = Vec::new();
    for w in workers {
        held.extend(
            w.await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
        );
    }
    eprintln!(
        "mixed load: {} cases answered in {:?}",
        all.len(),
        started.elapsed()
    );
    let Ok(load) = Arc::try_unwrap(load) else {
        panic!("the workers are done with the load")
    };
    load.listed.finish().await;

    // The upstream saw exactly the allowed and the approved requests, each once.
    let mut want: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for case in &all {
        let key = match case {
            Case::Plain { k, .. } => ("GET".into(), format!("/items/{k}?n={k}"), String::new()),
            Case::Held(h) if h.plan == Plan::Approve => {
                ("POST".into(), h.upstream_path(), h.body())
            }
            _ => continue,
        };
        *want.entry(key).or_default() += 1;
    }
    let mut seen: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for s in pair.up.requests() {
        let body = String::from_utf8_lossy(&s.body).into_owned();
        *seen.entry((s.method, s.uri, body)).or_default() += 1;
    }
    assert_eq!(seen, want, "upstream hits");

    let events = pair.stop_and_check_log().await;
    for done in &held {
        check_approval(&events, done);
    }
    // Every other event is the one outcome of a request that held nothing.
    let ids: std::collections::HashSet<&str> = held.iter().map(|d| d.id.as_str()).collect();
    let mut rest: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &events {
        match e["approval_id"].as_str() {
            Some(id) => assert!(ids.contains(id), "an event for an unknown approval: {e}"),
            None => {
                let status = e["status"].as_u64().unwrap_or(0);
                let what = format!("{} {}", e["event"].as_str().unwrap_or("?"), status);
                rest.entry(e["path"].as_str().unwrap_or("").to_string())
                    .or_default()
                    .push(what);
            }
        }
    }
    let mut want_rest: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for case in &all {
        match case {
            Case::Plain { k, .. } => {
                want_rest.insert(format!("/items/{k}?n={k}"), vec!["passed 200".into()]);
            }
            Case::Refused { k, .. } => {
                want_rest.insert(format!("/protected/{k}"), vec!["denied_by_rule 403".into()]);
            }
            Case::Held(_) => {}
        }
    }
    assert_eq!(rest, want_rest, "one event per request that held nothing");
}

// ---- Racing votes by one reviewer ---------------------------------------------------

/// Where one reviewer's two identical votes go, relative to the held request.
#[derive(Clone, Copy, Debug)]
enum Race {
    /// Quorum 2: one vote to each replica; a second reviewer decides afterwards.
    EachReplica,
    /// Quorum 2: both to the replica the agent is not on; a second reviewer decides.
    SameReplica,
    /// Quorum 1: both to the agent's replica; the winner decides.
    Deciding,
}

/// Bob sends the same approving vote twice at once. Asserted, for each approval:
/// exactly one `vote` event by bob and one `approved`, the request forwarded once; of
/// bob's two answers at least one is `200` and the other is `200` (the vote taken as
/// the same one) or `409` `already_voted` / `already_decided` (quorum 1: the winner
/// may have decided it already) — never an error, never two votes. A `vote_refused`
/// for bob is allowed only for a `409` answer (whether a refused duplicate is audited
/// is not specified; an accepted vote must not also be recorded as refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_votes_by_one_reviewer_count_once() {
    let Some(mut pair) = Pair::start("two_replicas racing votes", RULES).await else {
        return;
    };
    const ROUNDS: usize = 5;
    let c = client();
    let listed = Listed::watch(&c, pair.at);
    let listed = Arc::new(listed);
    let mut rounds = Vec::new();
    for n in 0..ROUNDS * 3 {
        let race = [Race::EachReplica, Race::SameReplica, Race::Deciding][n % 3];
        let (c, at, listed) = (c.clone(), pair.at, listed.clone());
        rounds.push(tokio::spawn(async move {
            let agent_on = n % 2;
            let rule = if matches!(race, Race::Deciding) {
                "deploy"
            } else {
                "release"
            };
            let path = format!("/{rule}/{n}");
            let held = post_spawn(&c, at[agent_on], &format!("/api{path}"), "{}");
            let id = listed.id(&path).await;
            let targets = match race {
                Race::EachReplica => [0, 1],
                Race::SameReplica => [1 - agent_on; 2],
                Race::Deciding => [agent_on; 2],
            };
            let (x, y) = tokio::join!(
                vote_with(&c, &at[targets[0]], BOB, &id, "approve", None),
                vote_with(&c, &at[targets[1]], BOB, &id, "approve", None)
            );
            let ctx = format!("{race:?} on {id}: answers {x:?} and {y:?}");
            let mut refused = 0;
            for (s, v) in [&x, &y] {
                match s {
                    200 => {}
                    409 if v["error"] == "already_voted" || v["error"] == "already_decided" => {
                        refused += 1
                    }
                    _ => panic!("{ctx}: a racing vote got neither 200 nor 409"),
                }
            }
            assert!(refused < 2, "{ctx}: one of the two votes is taken");
            if !matches!(race, Race::Deciding) {
                // The second approver decides on the agent's replica.
                let (s, v) = vote_with(&c, &at[agent_on], CAROL, &id, "approve", None).await;
                assert_eq!(s, 200, "{ctx}: carol's vote: {v}");
            }
            answer(held, &ctx).await.assert_forwarded_on(&id);
            let (_, a) = approval_get(&at[0], BOB, &id).await;
            let bobs = a["votes"].as_array().map_or(0, |v| {
                v.iter()
                    .filter(|v| v["reviewer"] == "bob@example.com")
                    .count()
            });
            assert_eq!(bobs, 1, "{ctx}: bob's votes on the approval: {a}");
            (race, id, path, refused)
        }));
    }
    let mut done = Vec::new();
    for r in rounds {
        done.push(
            r.await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
        );
    }
    let Ok(listed) = Arc::try_unwrap(listed) else {
        panic!("the rounds are done with the listing")
    };
    listed.finish().await;

    let mut seen: Vec<String> = pair.up.requests().iter().map(|s| s.uri.clone()).collect();
    let mut want: Vec<String> = done.iter().map(|(_, _, p, _)| p.clone()).collect();
    seen.sort();
    want.sort();
    assert_eq!(
        seen, want,
        "each approved request reached the upstream once"
    );

    let events = pair.stop_and_check_log().await;
    let mut failures = Vec::new();
    for (race, id, _, refused) in &done {
        let mine = events_of(&events, id);
        let count = |label_is: &str| mine.iter().filter(|e| label(e) == label_is).count();
        let bob_votes = count("vote bob@example.com approve");
        let approved = mine.iter().filter(|e| e["event"] == "approved").count();
        let forwarded = count("forwarded");
        let bob_refused = mine
            .iter()
            .filter(|e| e["event"] == "vote_refused" && e["reviewer"] == "bob@example.com")
            .count();
        if bob_votes != 1 || approved != 1 || forwarded != 1 || bob_refused > *refused {
            let labels: Vec<String> = mine.iter().map(|e| label(e)).collect();
            failures.push(format!(
                "{race:?} {id}: {bob_votes} vote events by bob, {approved} approved, \
                 {forwarded} forwarded, {bob_refused} vote_refused for {refused} 409 answers: \
                 {labels:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "racing votes by one reviewer must count once:\n{}",
        failures.join("\n")
    );
}
