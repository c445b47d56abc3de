//! The `redfire-control` binary as an operator runs it: SIGTERM drains and
//! exits 0; invalid config exits 2 with one line naming the key.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redfire::proto::registry::v1 as pb;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_redfire-control");

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let (grpc, admin) = (free_port(), free_port());
    let child = Command::new(BIN)
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}"), "--admin-addr", &format!("127.0.0.1:{admin}")])
        .args(["--log-format", "json", "--shutdown-grace", "3s", "--ca-dir", &test_ca_dir()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redfire-control");
    let admin_addr = format!("127.0.0.1:{admin}").parse().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(admin_addr).await.is_ok() && http_get(admin_addr, "/ready").await.0 == 200
        })
        .await,
        "control became ready"
    );
    let bundle = std::path::Path::new(&test_ca_dir()).join("bundle.pem");
    let mut c = pb::registry_client::RegistryClient::new(process_channel(grpc, &bundle, &test_ca_dir()).await);
    register(&mut c, instance("orders", "a"), 0).await;
    let mut w = Watcher::open(&mut c, pb::WatchRequest::default()).await;
    w.snapshot(Duration::from_secs(5)).await;

    let started = Instant::now();
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    // The open watch ends with UNAVAILABLE so the client moves to another replica.
    let e = tokio::time::timeout(Duration::from_secs(5), w.stream.message()).await.unwrap().unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    let status = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    assert_eq!(status.status.code(), Some(0), "exit code after SIGTERM");
    assert!(started.elapsed() < Duration::from_secs(3), "drained before the grace period ran out");
    let logs = String::from_utf8_lossy(&status.stdout);
    assert!(logs.lines().any(|l| l.contains("\"draining\"")), "json log shows draining: {logs}");
    assert!(logs.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "every line is JSON");
}

#[test]
fn invalid_config_exits_2_with_one_line_naming_the_key() {
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (vec!["--lease-ttl", "forever"], vec![], "lease_ttl"),
        (vec![], vec![("REDFIRE_STORE", "etcd")], "store"),
        (vec![], vec![("REDFIRE_GRPC_ADDR", "localhost")], "grpc_addr"),
    ];
    for (args, env, key) in cases {
        let out = Command::new(BIN).args(&args).envs(env).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{key}");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<_> = err.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {err}");
        assert!(lines[0].contains(&format!("{key}:")), "{err}");
    }
    let dir = std::env::temp_dir().join(format!("redfire-lifecycle-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("control.toml");
    std::fs::write(&file, "store = \"memory\"\nwatch_histroy = 5\n").unwrap();
    let out = Command::new(BIN).arg("--config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("watch_histroy"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn sidecar_sigterm_reports_draining_deregisters_and_exits_zero() {
    use redfire::control::authz::token;
    use redfire::control::config::Config;
    use redfire::control::identity::ca::Ca;
    let ctl = control(settings()).await;
    let ca = Ca::load(Config::from_settings(settings()).unwrap().ca).await.unwrap();
    let tok = token::create(&ca, "default", "lifecycle", Duration::from_secs(600)).unwrap();
    let admin = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_redfire-sidecar"))
        .args(["--control-addr", &ctl.grpc_url(), "--service", "lifecycle"])
        .args(["--control-ca-file", &ctl.trust_bundle_file.as_ref().unwrap().display().to_string()])
        .args(["--inbound-addr", "127.0.0.1:0", "--outbound-addr", "127.0.0.1:0"])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}"), "--shutdown-grace", "2s", "--log-level", "warn"])
        .env("REDFIRE_BOOTSTRAP_TOKEN", tok)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let admin_addr = format!("127.0.0.1:{admin}").parse().unwrap();
    let ready = eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(admin_addr).await.is_ok() && http_get(admin_addr, "/ready").await.0 == 200
    });
    assert!(ready.await, "sidecar ready");
    let mut c = client(&ctl).await;
    let mut w =
        Watcher::open(&mut c, pb::WatchRequest { services: vec!["lifecycle".into()], ..Default::default() }).await;
    let snapshot = w.snapshot(Duration::from_secs(5)).await;
    assert_eq!(snapshot.instances.len(), 1, "registered");
    // `/ready` and the SERVING renewal on the lease race: under load the
    // watcher may see the instance before its health reached control.
    if snapshot.instances[0].health != pb::Health::Serving as i32 {
        let serving = w.change(Duration::from_secs(5)).await;
        assert_eq!(serving.instance.unwrap().health, pb::Health::Serving as i32, "SERVING once ready");
    }

    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let draining = w.change(Duration::from_secs(5)).await;
    assert_eq!(draining.instance.unwrap().health, pb::Health::Draining as i32, "DRAINING first");
    let gone = w.change(Duration::from_secs(5)).await;
    assert!(is_delete(&gone) && gone.reason == "deregistered", "{gone:?}");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(0));
    ctl.shutdown();
}
