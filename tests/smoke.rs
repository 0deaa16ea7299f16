mod common;
use common::*;

#[tokio::test]
async fn harness_starts_airlock_and_upstream() {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", "rules: []\n");
    let cfg = ws.standard_config(&up.url(), "");
    let a = Airlock::start(&cfg);
    let r = client()
        .get(a.url("/api/hello"))
        .bearer_auth(AGENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.requests()[0].uri, "/hello");
}
