//! Three endpoints under load, one killed with SIGKILL mid-run: no request
//! fails (retries go to the others, the dead one is ejected), and the retries
//! stay inside the budget.

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use redfire::control::authz::token;
use redfire::control::config::Config;
use redfire::control::identity::ca::Ca;
use support::mesh::*;
use support::*;

#[tokio::test]
async fn one_of_three_endpoints_killed_under_load_loses_no_request() {
    let m = mesh(unary_app().await, "h2c", None).await;
    let ca = Ca::load(Config::from_settings(settings()).unwrap().ca).await.unwrap();
    // Two more `echo` endpoints, each a real sidecar process beside its own app.
    let mut children = Vec::new();
    for _ in 0..2 {
        let app = unary_app().await;
        let admin = free_port();
        let child = Killed(
            Command::new(env!("CARGO_BIN_EXE_redfire-sidecar"))
                .args(["--control-addr", &m.control.grpc_url(), "--service", "echo"])
                .args(["--control-ca-file", &m.control.trust_bundle_file.as_ref().unwrap().display().to_string()])
                .args(["--inbound-addr", "127.0.0.1:0", "--outbound-addr", "127.0.0.1:0"])
                .args(["--admin-addr", &format!("127.0.0.1:{admin}"), "--app-addr", &app.to_string()])
                .args(["--log-level", "error"])
                .env(
                    "REDFIRE_BOOTSTRAP_TOKEN",
                    token::create(&ca, "default", "echo", Duration::from_secs(600)).unwrap(),
                )
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        children.push(child);
    }
    let client_admin = m.client_side.admin_addr;
    let three = eventually(Duration::from_secs(30), || async {
        let (_, body) = http_get(client_admin, "/admin/endpoints").await;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        json["echo"]["endpoints"].as_array().is_some_and(|e| e.len() == 3)
    })
    .await;
    assert!(three, "three echo endpoints discovered");

    let listener = m.client_side.upstream_addrs[0].1;
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (ok, failed) = (ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let mut c = h2c_client(listener).await;
            for _ in 0..150 {
                let req = Request::post("http://echo/echo.Echo/Say")
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(Full::new(Bytes::from_static(b"0123456789")).map_err(|n| match n {}).boxed_unsync())
                    .unwrap();
                let good = match c.send_request(req).await {
                    Ok(r) if r.status() == 200 && r.headers().get("grpc-status").is_none() => {
                        match r.into_body().collect().await {
                            Ok(b) => b.trailers().and_then(|t| t.get("grpc-status")).is_some_and(|s| s == "0"),
                            Err(e) => {
                                eprintln!("response body failed: {e}");
                                false
                            }
                        }
                    }
                    Ok(r) => {
                        eprintln!("failed: {} {:?}", r.status(), r.headers());
                        false
                    }
                    Err(e) => {
                        eprintln!("failed: {e}");
                        false
                    }
                };
                if good {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    failed.fetch_add(1, Ordering::Relaxed)
                };
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut victim = children.remove(0);
    victim.kill(); // SIGKILL: no drain, connections just die
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed ({} ok)", ok.load(Ordering::Relaxed));
    assert_eq!(ok.load(Ordering::Relaxed), 8 * 150);

    let (_, metrics) = http_get(client_admin, "/metrics").await;
    let retried: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("redfire_sidecar_retries_total{") && l.contains("result=\"retried\""))
        .filter_map(|l| l.rsplit(" ").next()?.parse::<f64>().ok())
        .sum();
    assert!(retried >= 1.0, "the kill caused retries: {metrics}");
    assert!(retried <= 0.2 * 1200.0 + 10.0 * 10.0, "retries inside the budget: {retried}");
    drop(children);
    m.client_side.shutdown();
    m.server_side.shutdown();
    m.control.shutdown();
}

/// A child process killed (SIGKILL) and reaped when dropped, even when the
/// test panics.
struct Killed(std::process::Child);

impl Killed {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.kill();
    }
}
