//! Tests of the sidecar's settings: defaults, every key's validation and
//! the precedence of flag, environment and file.

use super::*;

/// A trust bundle file (one self-signed certificate), written once.
fn bundle_file() -> String {
    static FILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap().cert;
        let path = std::env::temp_dir().join(format!("redfire-config-test-bundle-{}.pem", std::process::id()));
        std::fs::write(&path, cert.pem()).unwrap();
        path.display().to_string()
    })
    .clone()
}

fn base() -> Settings {
    Settings {
        service: Some("orders".into()),
        bootstrap_token: Some("t".into()),
        control_ca_file: Some(bundle_file()),
        ..Default::default()
    }
}

#[test]
fn control_is_tls_by_default_and_plaintext_only_when_asked() {
    let c = Config::from_settings(base()).unwrap();
    assert_eq!(c.control.url, "https://127.0.0.1:15010");
    assert!(c.control.is_tls() && c.control.ca_pem.as_deref().is_some_and(|p| p.contains("BEGIN CERTIFICATE")));
    let plain = Settings {
        control_addr: Some("http://127.0.0.1:15010".into()),
        dev_insecure_control: Some("true".into()),
        control_ca_file: None,
        ..base()
    };
    let c = Config::from_settings(plain).unwrap();
    assert!(!c.control.is_tls() && c.control.ca_pem.is_none());
    let no_bundle = std::env::temp_dir().join("redfire-no-such-bundle.pem").display().to_string();
    let not_pem = std::env::temp_dir().join(format!("redfire-not-pem-{}.txt", std::process::id()));
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let cases: Vec<(Settings, &str, &str)> = vec![
        (Settings { control_addr: Some("http://127.0.0.1:15010".into()), ..base() }, "control_addr", "plaintext"),
        (Settings { dev_insecure_control: Some("yes".into()), ..base() }, "dev_insecure_control", "yes"),
        (Settings { control_ca_file: Some(no_bundle), ..base() }, "control_ca_file", "redfire-no-such-bundle"),
        (
            Settings { control_ca_file: Some(not_pem.display().to_string()), ..base() },
            "control_ca_file",
            "no PEM certificate",
        ),
        (Settings { control_addr: Some("ftp://127.0.0.1:1".into()), ..base() }, "control_addr", "not a URL"),
    ];
    for (s, key, says) in cases {
        let e = Config::from_settings(s).unwrap_err();
        assert_eq!(e.key, key, "{e}");
        assert!(e.message.contains(says), "{e}");
    }
    let _ = std::fs::remove_file(not_pem);
}

#[test]
fn defaults_and_upstreams() {
    let c = Config::from_settings(Settings {
        upstreams: Some("users=127.0.0.1:9001, strategies=127.0.0.1:9002".into()),
        ..base()
    })
    .unwrap();
    assert_eq!(c.inbound_addr.to_string(), "0.0.0.0:15006");
    assert_eq!(c.balancer, Policy::PeakEwma);
    assert_eq!(c.upstreams.len(), 2);
    assert_eq!(c.upstreams[1].0, "strategies");
    assert_eq!(c.zone_preference(), None, "no zone, no preference");
    assert_eq!(c.app_health, HealthCheckConfig::default(), "no app health checks unless asked");
}

#[test]
fn app_health_checks() {
    let kind = |v: &str| {
        Config::from_settings(Settings { app_health_check: Some(v.into()), ..base() }).unwrap().app_health.kind
    };
    assert_eq!(kind("grpc"), Some(CheckKind::Grpc { service: String::new() }));
    assert_eq!(kind("grpc:orders.v1.Orders"), Some(CheckKind::Grpc { service: "orders.v1.Orders".into() }));
    assert_eq!(kind("http:/healthz?full=1"), Some(CheckKind::Http { path: "/healthz?full=1".into() }));
    assert_eq!(kind("none"), None);
}

#[test]
fn hash_balancing_globally_and_per_service() {
    let c = Config::from_settings(Settings {
        balancer: Some("maglev".into()),
        service_balancers: Some("orders=ring_hash:X-Account-Id, users=round_robin".into()),
        zone: Some("eu-1a".into()),
        zone_min_healthy: Some("0.75".into()),
        ..base()
    })
    .unwrap();
    let b = |s: &str| {
        let b = c.balancing(s);
        (b.policy, b.hash_header.to_string())
    };
    assert_eq!(b("orders"), (Policy::RingHash, "x-account-id".into()));
    assert_eq!(b("users"), (Policy::RoundRobin, "x-user-id".into()));
    assert_eq!(b("other"), (Policy::Maglev, "x-user-id".into()), "the global policy and header");
    let zone = c.zone_preference().unwrap();
    assert_eq!((zone.local_zone.as_str(), zone.min_healthy_percent), ("eu-1a", 75));
}

#[test]
fn each_bad_value_names_its_key() {
    let cases: Vec<(Settings, &str)> = vec![
        (Settings { service: None, ..base() }, "service"),
        (Settings { bootstrap_token: None, ..base() }, "bootstrap_token"),
        (Settings { upstreams: Some("users:9001".into()), ..base() }, "upstreams"),
        (Settings { app_protocol: Some("grpc".into()), ..base() }, "app_protocol"),
        (Settings { balancer: Some("random".into()), ..base() }, "balancer"),
        (Settings { control_addr: Some("127.0.0.1:15010".into()), ..base() }, "control_addr"),
        (Settings { max_in_flight: Some("0".into()), ..base() }, "max_in_flight"),
        (Settings { dev_plaintext: Some("yes".into()), ..base() }, "dev_plaintext"),
        (Settings { stream_idle_timeout: Some("0s".into()), ..base() }, "stream_idle_timeout"),
        (Settings { ejection_failures: Some("0".into()), ..base() }, "ejection_failures"),
        (Settings { ejection_time: Some("10m".into()), ..base() }, "ejection_time"),
        (Settings { hash_header: Some("x user".into()), ..base() }, "hash_header"),
        (Settings { service_balancers: Some("orders".into()), ..base() }, "service_balancers"),
        (Settings { service_balancers: Some("orders=hash".into()), ..base() }, "service_balancers"),
        (Settings { service_balancers: Some("Orders=maglev".into()), ..base() }, "service_balancers"),
        (Settings { service_balancers: Some("orders=maglev:a b".into()), ..base() }, "service_balancers"),
        (Settings { zone: Some("eu 1".into()), ..base() }, "zone"),
        (Settings { zone: Some("z".repeat(129)), ..base() }, "zone"),
        (Settings { zone_min_healthy: Some("1.5".into()), ..base() }, "zone_min_healthy"),
        (Settings { app_health_check: Some("tcp".into()), ..base() }, "app_health_check"),
        (Settings { app_health_check: Some("http:healthz".into()), ..base() }, "app_health_check"),
        (Settings { app_health_interval: Some("0s".into()), ..base() }, "app_health_interval"),
        (Settings { app_health_timeout: Some("soon".into()), ..base() }, "app_health_timeout"),
        (Settings { app_health_unhealthy_threshold: Some("0".into()), ..base() }, "app_health_unhealthy_threshold"),
        (Settings { app_health_healthy_threshold: Some("x".into()), ..base() }, "app_health_healthy_threshold"),
        (Settings { mode: Some("edge".into()), ..base() }, "mode"),
        (Settings { metadata: Some("version".into()), ..base() }, "metadata"),
        (
            Settings {
                mode: Some("gateway".into()),
                routes: Some("r.toml".into()),
                gateway_max_headers: Some("0".into()),
                ..base()
            },
            "gateway_max_headers",
        ),
        (
            Settings {
                mode: Some("gateway".into()),
                routes: Some("r.toml".into()),
                gateway_tls_cert: Some("c.pem".into()),
                ..base()
            },
            "gateway_tls_key",
        ),
        (
            Settings {
                mode: Some("gateway".into()),
                routes: Some("r.toml".into()),
                gateway_ws_path: Some("ws".into()),
                ..base()
            },
            "gateway_ws_path",
        ),
        (
            Settings {
                mode: Some("gateway".into()),
                routes: Some("r.toml".into()),
                gateway_ws_max_message: Some("64".into()),
                ..base()
            },
            "gateway_ws_max_message",
        ),
        (
            Settings {
                mode: Some("gateway".into()),
                routes: Some("r.toml".into()),
                gateway_ws_replica: Some("a b".into()),
                ..base()
            },
            "gateway_ws_replica",
        ),
    ];
    for (s, key) in cases {
        let e = Config::from_settings(s).unwrap_err();
        assert_eq!(e.key, key, "{e}");
    }
}
