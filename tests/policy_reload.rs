//! Policy distribution: hot reload from the policy directory under load
//! with zero failed requests, an invalid file keeping the last good policy
//! (and reported with file and line), API validation, and control replicas
//! on one Redis sharing policies and versions.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use redfire::control::config::{Config, Settings};
use redfire::control::server::Control;
use redfire::proto::policy::v1 as pb;
use support::mesh::*;
use support::policy::*;
use support::{eventually, http_get, settings};

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("redfire-{name}-{:08x}", fastrand::u32(..)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn allow_client(paths: &str) -> String {
    format!(
        "[authz]\ndefault = \"deny\"\n[[authz.rules]]\nfrom = [\"spiffe://redfire.local/ns/default/sa/client\"]\npaths = [{paths}]\n"
    )
}

#[tokio::test]
async fn hot_reload_under_load_fails_no_request_and_an_invalid_file_keeps_the_last_good_policy() {
    let dir = temp_dir("policy-reload");
    let file = dir.join("echo.toml");
    std::fs::write(&file, allow_client("\"*\"")).unwrap();
    let (app, _) = recording_app().await;
    let control_settings = Settings {
        policy_dir: Some(dir.display().to_string()),
        policy_poll_interval: Some("100ms".into()),
        ..settings()
    };
    let m = mesh_on(app, "h2c", None, control_settings).await;
    let admin = m.server_side.admin_addr;
    wait_version(admin, 1).await;

    // Load: 8 callers on their own connections until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..8 {
        let mut c = h2c_client(m.client_side.upstream_addrs[0].1).await;
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            for _ in 0..100_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match call(&mut c, "POST", "/orders.v1.Orders/Place", &[("content-type", "application/grpc")]).await {
                    r if r.status == 200 && r.header("grpc-status") == "0" => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    // Five policy changes, each allowing the load's path differently.
    let variants = [
        "\"/orders.v1.Orders/*\"",
        "\"*\"",
        "\"/orders.v1.Orders/Place\"",
        "\"/x\", \"/orders.v1.Orders/*\"",
        "\"/*\"",
    ];
    let mut version = 1;
    for (i, paths) in variants.iter().enumerate() {
        let before = ok.load(Ordering::SeqCst);
        std::fs::write(&file, format!("# change {i}\n{}", allow_client(paths))).unwrap();
        version += 1;
        wait_version(admin, version).await;
        assert!(eventually(Duration::from_secs(5), || async { ok.load(Ordering::SeqCst) > before + 20 }).await);
    }
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    let (ok_n, failed_n) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert_eq!(failed_n, 0, "{failed_n} of {} requests failed during 5 policy swaps", ok_n + failed_n);
    assert!(ok_n > 100, "the load ran: {ok_n}");

    // An invalid file: rejected with file, line and field; the last good one stays.
    std::fs::write(&file, "[authz]\n# a typo below\ndefault = \"maybe\"\n").unwrap();
    let reported = eventually(Duration::from_secs(5), || async {
        let (_, body) = http_get(m.control.admin_addr, "/admin/policy").await;
        body.contains("echo.toml: line 3: authz.default:")
    })
    .await;
    assert!(reported, "{}", http_get(m.control.admin_addr, "/admin/policy").await.1);
    let (_, metrics) = http_get(m.control.admin_addr, "/metrics").await;
    assert!(metrics.contains("redfire_control_policy_load_errors_total 1"), "{metrics}");
    assert_eq!(sidecar_policy_version(admin).await, version, "the last good policy stays in force");
    let mut c = h2c_client(m.client_side.upstream_addrs[0].1).await;
    assert_eq!(call(&mut c, "GET", "/orders.v1.Orders/Place", &[]).await.status, 200);

    // A valid change that denies: enforced within a poll or two.
    std::fs::write(&file, "[authz]\ndefault = \"deny\"\n").unwrap();
    version += 1;
    wait_version(admin, version).await;
    assert_eq!(call(&mut c, "GET", "/orders.v1.Orders/Place", &[]).await.status, 403);
    let (_, body) = http_get(m.control.admin_addr, "/admin/policy").await;
    assert!(!body.contains("line 3"), "the error is cleared once the file is good: {body}");

    // Removing the file removes the policy.
    std::fs::remove_file(&file).unwrap();
    wait_version(admin, 0).await;
    assert_eq!(call(&mut c, "GET", "/orders.v1.Orders/Place", &[]).await.status, 200);
    m.client_side.shutdown();
    m.server_side.shutdown();
    m.control.shutdown();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_bad_policy_file_stops_control_at_start_and_the_api_rejects_bad_policies() {
    let dir = temp_dir("policy-bad");
    std::fs::write(dir.join("orders.toml"), "[jwt]\nleeway = \"soon\"\n").unwrap();
    let s = Settings { policy_dir: Some(dir.display().to_string()), ..settings() };
    let e = Control::start(Config::from_settings(s).unwrap()).await.unwrap_err().to_string();
    assert!(e.contains("orders.toml: line 2: jwt.leeway:") && e.contains("soon"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();

    let control = support::control(settings()).await;
    let mut c = policy_client(&control).await;
    let bad = pb::SetRequest { service: "orders".into(), toml: "[authz]\ndefault = \"allow\"\nrules = 3\n".into() };
    let st = c.set(bad).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::InvalidArgument);
    assert!(st.message().starts_with("api: line 3: authz.rules:"), "{}", st.message());
    let none = pb::SetRequest {
        service: "orders".into(),
        toml: "[jwt]\n[[jwt.issuers]]\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"none\"]\nkeys = []\n"
            .into(),
    };
    assert!(c.set(none).await.unwrap_err().message().contains("none"), "alg none is not an algorithm");
    assert_eq!(c.get(pb::GetRequest { service: "orders".into() }).await.unwrap().into_inner().version, 0);

    let good = "[authz]\ndefault = \"allow\"\n";
    let checked = c.validate(pb::ValidateRequest { service: "orders".into(), toml: good.into() }).await.unwrap();
    assert!(checked.into_inner().document_json.contains("\"allow\""));
    let v1 = c.set(pb::SetRequest { service: "orders".into(), toml: good.into() }).await.unwrap().into_inner();
    let again = c.set(pb::SetRequest { service: "orders".into(), toml: good.into() }).await.unwrap().into_inner();
    assert_eq!(v1.version, again.version, "an unchanged policy keeps its version");
    control.shutdown();
}

#[tokio::test]
async fn control_replicas_on_one_redis_share_policies_and_versions() {
    let Some(url) = support::shared_redis() else { return };
    let prefix = support::unique_prefix("policy");
    let a = support::control(support::redis_settings(&url, &prefix)).await;
    let b = support::control(support::redis_settings(&url, &prefix)).await;
    let mut ca = policy_client(&a).await;
    let mut cb = policy_client(&b).await;
    let mut watch_b = cb.watch(pb::WatchRequest { service: "orders".into() }).await.unwrap().into_inner();
    let first = watch_b.message().await.unwrap().unwrap();
    assert_eq!(first.version, 0, "no policy yet");

    let set = ca
        .set(pb::SetRequest { service: "orders".into(), toml: "[authz]\ndefault = \"allow\"\n".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(set.version > 0);
    let pushed = tokio::time::timeout(Duration::from_secs(5), watch_b.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(
        (pushed.version, &pushed.document_json),
        (set.version, &set.document_json),
        "replica B pushes A's write"
    );

    // B writing the same document changes nothing; a new one gets a higher version everywhere.
    let same = cb
        .set(pb::SetRequest { service: "orders".into(), toml: "[authz]\ndefault = \"allow\"\n".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same.version, set.version);
    let next = cb
        .set(pb::SetRequest { service: "orders".into(), toml: "[authz]\ndefault = \"deny\"\n".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(next.version > set.version);
    let seen_by_a = eventually(Duration::from_secs(5), || {
        let mut ca = ca.clone();
        async move {
            ca.get(pb::GetRequest { service: "orders".into() }).await.unwrap().into_inner().version == next.version
        }
    })
    .await;
    assert!(seen_by_a, "replica A sees B's version");
    cb.delete(pb::DeleteRequest { service: "orders".into() }).await.unwrap();
    let gone = eventually(Duration::from_secs(5), || {
        let mut ca = ca.clone();
        async move { ca.get(pb::GetRequest { service: "orders".into() }).await.unwrap().into_inner().version == 0 }
    })
    .await;
    assert!(gone);
    a.shutdown();
    b.shutdown();
}

#[tokio::test]
async fn the_policy_stays_in_force_while_redis_and_then_control_are_down() {
    if !support::have_redis_server() {
        return;
    }
    let mut redis = support::RedisServer::start();
    let (app, seen) = recording_app().await;
    let m = mesh_on(app, "h2c", None, support::redis_settings(&redis.url(), "policy-outage")).await;
    let intruder = extra_client(&m, "default", "intruder").await;
    let policy =
        "[authz]\ndefault = \"deny\"\n[[authz.rules]]\nfrom = [\"spiffe://redfire.local/ns/default/sa/client\"]\n";
    let v = set_policy(&m.control, "echo", policy).await;
    wait_version(m.server_side.admin_addr, v).await;
    let mut allowed = h2c_client(m.client_side.upstream_addrs[0].1).await;
    let mut denied = h2c_client(intruder.upstream_addrs[0].1).await;

    redis.kill();
    let mut c = policy_client(&m.control).await;
    let got = c.get(pb::GetRequest { service: "echo".into() }).await.unwrap().into_inner();
    assert_eq!(got.version, v, "control keeps serving the last policies while Redis is down");
    let write = c.set(pb::SetRequest { service: "echo".into(), toml: "[authz]\ndefault = \"allow\"\n".into() }).await;
    assert_eq!(write.unwrap_err().code(), tonic::Code::Unavailable);

    m.control.shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(call(&mut allowed, "GET", "/x", &[]).await.status, 200);
    assert_eq!(call(&mut denied, "GET", "/x", &[]).await.status, 403, "still denied with control gone");
    assert_eq!(sidecar_policy_version(m.server_side.admin_addr).await, v);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 1);
    intruder.shutdown();
    m.client_side.shutdown();
    m.server_side.shutdown();
}

#[tokio::test]
async fn a_restarted_in_memory_control_that_counts_versions_from_1_again_still_updates_sidecars() {
    let (app, _) = recording_app().await;
    let m = mesh(app, "h2c", None).await;
    let addr = m.control.grpc_addr;
    let v = set_policy(&m.control, "echo", "[authz]\ndefault = \"deny\"\n").await;
    assert_eq!(v, 1);
    wait_version(m.server_side.admin_addr, 1).await;
    let mut c = h2c_client(m.client_side.upstream_addrs[0].1).await;
    assert_eq!(call(&mut c, "GET", "/x", &[]).await.status, 403);

    let Mesh { control, client_side, server_side, .. } = m;
    control.shutdown();
    control.wait().await.unwrap();
    // The new control loads an allowing policy from files: its version is 1
    // again, with another document.
    let dir = temp_dir("policy-restart");
    std::fs::write(dir.join("echo.toml"), "[authz]\ndefault = \"allow\"\n").unwrap();
    let restarted = support::control(Settings {
        grpc_addr: Some(addr.to_string()),
        policy_dir: Some(dir.display().to_string()),
        ..settings()
    })
    .await;
    let got =
        policy_client(&restarted).await.get(pb::GetRequest { service: "echo".into() }).await.unwrap().into_inner();
    assert_eq!(got.version, 1, "versions start again at 1");
    let applied = eventually(Duration::from_secs(5), || async {
        let (_, body) = http_get(server_side.admin_addr, "/metrics").await;
        body.contains("redfire_sidecar_policy_version 1") && call(&mut c.clone(), "GET", "/x", &[]).await.status == 200
    })
    .await;
    assert!(applied, "the new version 1 replaced the old version 1");
    client_side.shutdown();
    server_side.shutdown();
    restarted.shutdown();
    std::fs::remove_dir_all(dir).unwrap();
}
