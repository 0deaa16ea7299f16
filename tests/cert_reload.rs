//! The listener's certificate and key reloaded when their files change: agents keep
//! sending requests (new connections, and one HTTP/2 connection kept open) while the
//! files are replaced as deploy tools do (a new file renamed over the old); no request
//! fails, the open connection carries on, and new connections then see the new
//! certificate. A broken replacement is refused and the old certificate stays. A
//! replaced `client_ca` decides which client certificates verify from then on.

mod common;
use common::pki::*;
use common::*;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Setup {
    _up: Upstream,
    _ws: Workspace,
    a: InProcess,
    ca: Ca,
    cert: PathBuf,
    key: PathBuf,
}

async fn setup() -> Setup {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", "rules: []\n");
    let certs = ws.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ca = Ca::new("airlock test CA");
    let (cert, key) = ca.server(&[]).write(&certs, "airlock");
    let cfg = ws.standard_config(
        &up.url(),
        "tls:\n  cert: certs/airlock.pem\n  key: certs/airlock-key.pem\n",
    );
    let a = InProcess::start(&cfg).await;
    Setup {
        _up: up,
        _ws: ws,
        a,
        ca,
        cert,
        key,
    }
}

fn agent_get(path: &str) -> http::Request<Full<Bytes>> {
    tls_request(
        "GET",
        path,
        &[("authorization", &format!("Bearer {AGENT_KEY}"))],
    )
}

/// The serial of the certificate a new connection is shown.
async fn serial_now(s: &Setup) -> String {
    let r = tls_send(
        s.a.proxy,
        client_config(&s.ca.pem, None, &[b"http/1.1"]),
        agent_get("/api/serial"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    r.server_serial
}

/// Waits until new connections are shown the certificate with `serial`.
async fn wait_serial(s: &Setup, serial: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if serial_now(s).await == serial {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new connections still see the old certificate after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request on the connection kept open; it must be answered.
async fn send_kept(kept: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>, n: usize) {
    let req = http::Request::builder()
        .uri(format!("https://localhost/api/kept/{n}"))
        .header("authorization", format!("Bearer {AGENT_KEY}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = kept
        .send_request(req)
        .await
        .expect("the open connection carries on");
    assert_eq!(r.status(), 200);
    r.into_body().collect().await.unwrap();
}

#[tokio::test]
async fn the_certificate_is_replaced_under_load_with_no_failed_request() {
    let s = setup().await;
    let old = serial_now(&s).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));

    // Four clients opening a new connection per request, HTTP/1.1 and h2 alike.
    let mut loops = Vec::new();
    for i in 0..4 {
        let alpn: &'static [&'static [u8]] = if i % 2 == 0 { &[b"http/1.1"] } else { &[b"h2"] };
        let cfg = client_config(&s.ca.pem, None, alpn);
        let (stop, ok, failed, errors, addr) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            errors.clone(),
            s.a.proxy,
        );
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match tls_send(addr, cfg.clone(), agent_get(&format!("/api/loop/{i}"))).await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("{} {}", r.status, r.body));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        errors.lock().unwrap().push(e);
                    }
                }
            }
        }));
    }
    // One HTTP/2 connection opened before the swap and used throughout.
    let tls = tls_connect(s.a.proxy, client_config(&s.ca.pem, None, &[b"h2"]))
        .await
        .unwrap();
    let (mut kept, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut kept_ok = 0;
    // Let the load get going, then replace the certificate and key.
    let t0 = ok.load(Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while ok.load(Ordering::SeqCst) < t0 + 20 {
        assert!(tokio::time::Instant::now() < deadline, "no load");
        send_kept(&mut kept, kept_ok).await;
        kept_ok += 1;
    }
    let new = s.ca.server(&[]);
    replace_file(&s.cert, &new.cert_pem);
    replace_file(&s.key, &new.key_pem);
    let new_serial = serial_of(&new.der);
    assert_ne!(new_serial, old);
    wait_serial(&s, &new_serial).await;
    // More requests after the swap, on new connections and on the open one.
    let t1 = ok.load(Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while ok.load(Ordering::SeqCst) < t1 + 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no load after the swap"
        );
        send_kept(&mut kept, kept_ok).await;
        kept_ok += 1;
    }
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        l.await.unwrap();
    }
    send_kept(&mut kept, kept_ok).await;
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "failed requests: {:?}",
        errors.lock().unwrap()
    );
    assert!(ok.load(Ordering::SeqCst) >= 40);
    s.a.stop().await;
}

#[tokio::test]
async fn a_broken_replacement_is_refused_and_the_old_certificate_stays() {
    let s = setup().await;
    let old = serial_now(&s).await;
    // A certificate for another key: the pair does not match.
    let other = s.ca.server(&[]);
    replace_file(&s.cert, &other.cert_pem);
    // No signal says a refused reload happened; give the watcher well over its quiet
    // period, during which every new connection must keep working on the old pair.
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < until {
        assert_eq!(
            serial_now(&s).await,
            old,
            "a mismatched pair was put in force"
        );
    }
    // Garbage in the key file: still the old certificate.
    replace_file(&s.key, "not a key\n");
    let until = tokio::time::Instant::now() + Duration::from_millis(1000);
    while tokio::time::Instant::now() < until {
        assert_eq!(serial_now(&s).await, old);
    }
    // The matching key arrives: the new certificate is in force.
    replace_file(&s.key, &other.key_pem);
    wait_serial(&s, &serial_of(&other.der)).await;
    s.a.stop().await;
}

#[tokio::test]
async fn a_replaced_client_ca_decides_which_client_certificates_verify() {
    let up = Upstream::start().await;
    let ws = Workspace::new();
    ws.write("rules/r.yaml", "rules: []\n");
    let certs = ws.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let server_ca = Ca::new("airlock test CA");
    server_ca.server(&[]).write(&certs, "airlock");
    let old_ca = Ca::new("agents CA 1");
    let ca_file = old_ca.write(&certs, "agents-ca.pem");
    let cfg = ws.standard_config(
        &up.url(),
        "tls:\n  cert: certs/airlock.pem\n  key: certs/airlock-key.pem\n  client_ca: certs/agents-ca.pem\n",
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "agents:\n",
        "agents:\n  - id: reporter\n    mtls: {subject: \"CN=reporter\"}\n",
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let a = InProcess::start(&cfg).await;
    let id = ClientId {
        cn: Some("reporter"),
        ..Default::default()
    };
    let (old_cert, new_ca) = (old_ca.client(&id), Ca::new("agents CA 2"));
    let new_cert = new_ca.client(&id);
    let send = |cert: &Leaf| {
        tls_send(
            a.proxy,
            client_config(&server_ca.pem, Some(cert), &[b"http/1.1"]),
            tls_request("GET", "/api/x", &[]),
        )
    };
    assert_eq!(send(&old_cert).await.unwrap().status, 200);
    assert!(send(&new_cert).await.is_err());
    replace_file(&ca_file, &new_ca.pem);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while send(&new_cert).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new client CA was not put in force"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(send(&new_cert).await.unwrap().status, 200);
    assert!(
        send(&old_cert).await.is_err(),
        "the old CA is no longer trusted"
    );
    a.stop().await;
}
