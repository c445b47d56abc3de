//! Tests of the sidecar's settings: defaults, every key's validation and
//! the precedence of flag, environment and file.

use super::*;

fn base() -> Settings {
    Settings { service: Some("orders".into()), bootstrap_token: Some("t".into()), ..Default::default() }
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
