//! Control's authorization (RELIABILITY.md rows 29–32 and 34): anonymous
//! and badly credentialed callers are UNAUTHENTICATED, a workload acts only
//! for its own service and the topics the event bus ACL grants it, operator
//! roles gate policy writes and group management, bootstrap tokens certify
//! one key and nothing else, and an ACL change on one replica is enforced
//! by another on the same Redis within a second. Every refusal leaves the
//! other service's instances, policies and topics untouched.

mod support;

use std::time::{Duration, Instant};

use redfire::control::config::Settings;
use redfire::proto::events::v1 as epb;
use redfire::proto::events::v1::events_client::EventsClient;
use redfire::proto::identity::v1 as ipb;
use redfire::proto::identity::v1::identity_client::IdentityClient;
use redfire::proto::policy::v1 as ppb;
use redfire::proto::policy::v1::policy_client::PolicyClient;
use redfire::proto::registry::v1 as pb;
use redfire::proto::registry::v1::registry_client::RegistryClient;
use support::policy::set_policy;
use support::*;
use tonic::Code;

fn publish_req(topic: &str) -> epb::PublishRequest {
    epb::PublishRequest {
        topic: topic.into(),
        events: vec![epb::PublishEntry {
            event: Some(epb::Event { r#type: "t".into(), data: b"{}".to_vec(), ..Default::default() }),
            idempotency_key: String::new(),
        }],
    }
}

fn open_req(topic: &str) -> epb::SubscribeRequest {
    epb::SubscribeRequest {
        command: Some(epb::subscribe_request::Command::Open(epb::Open {
            topics: vec![topic.into()],
            group: "g".into(),
            consumer: "c".into(),
            ..Default::default()
        })),
    }
}

/// Opens a subscription; the refusal if there is one.
async fn subscribe<T>(c: &mut EventsClient<T>, topic: &str) -> Result<(), tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(open_req(topic)).await.unwrap();
    let mut stream = c.subscribe(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    stream.message().await?;
    drop(tx);
    Ok(())
}

fn denied(name: &str, api: &str, method: &str, reason: &str) -> String {
    format!("{name}{{api=\"{api}\",method=\"{method}\",reason=\"{reason}\"}}")
}

#[tokio::test]
async fn anonymous_and_bad_credentials_are_unauthenticated_and_change_nothing() {
    let control = control(settings()).await;
    let anon = anonymous_channel(&control).await;
    let mut registry = RegistryClient::new(anon.clone());
    let e = registry.register(pb::RegisterRequest { instance: Some(instance("orders", "a")), ttl_ms: 0 }).await;
    let e = e.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("no credential") && e.message().contains("Register"), "{}", e.message());
    let e = registry.watch(pb::WatchRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = PolicyClient::new(anon.clone())
        .set(ppb::SetRequest { service: "orders".into(), toml: String::new() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut events = EventsClient::new(anon.clone());
    assert_eq!(events.publish(publish_req("orders")).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(subscribe(&mut events, "orders").await.unwrap_err().code(), Code::Unauthenticated);
    // Public methods still answer without a credential.
    IdentityClient::new(anon.clone()).get_trust_bundle(ipb::GetTrustBundleRequest {}).await.expect("public");

    // A token that is not a token, and one signed by another mesh's CA.
    let foreign_dir = std::env::temp_dir().join(format!("redfire-foreign-ca-{}", std::process::id()));
    let foreign = support::control(Settings {
        ca_dir: Some(foreign_dir.display().to_string()),
        trust_bundle_file: Some(bundle_path()),
        ..settings()
    })
    .await;
    for token in ["not-a-jwt".to_string(), foreign.operator_token("mallory", &ALL_ROLES).unwrap()] {
        let mut c = RegistryClient::new(as_operator(anon.clone(), &token));
        let e = c.register(pb::RegisterRequest { instance: Some(instance("orders", "b")), ttl_ms: 0 }).await;
        let e = e.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(e.message().starts_with("authorization: token"), "{}", e.message());
    }

    // Nothing was registered, set or published.
    let mut admin = client(&control).await;
    assert!(
        admin
            .get_service(pb::GetServiceRequest { service: "orders".into() })
            .await
            .unwrap()
            .into_inner()
            .instances
            .is_empty()
    );
    let mut ev = EventsClient::new(channel(&control).await);
    let e = ev.describe_topic(epb::DescribeTopicRequest { topic: "orders".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "no topic was created");
    let p = PolicyClient::new(channel(&control).await).get(ppb::GetRequest { service: "orders".into() }).await;
    assert_eq!(p.unwrap().into_inner().version, 0, "no policy was set");
    let name = "redfire_control_authz_denied_total";
    assert!(metric(control.admin_addr, &denied(name, "registry", "Register", "no_credential")).await >= 1.0);
    assert!(metric(control.admin_addr, &denied(name, "registry", "Register", "bad_credential")).await >= 2.0);
    assert!(metric(control.admin_addr, &denied(name, "events", "Subscribe", "no_credential")).await >= 1.0);
    foreign.shutdown();
    let _ = std::fs::remove_dir_all(foreign_dir);
}

#[tokio::test]
async fn a_workload_acts_only_for_its_own_service_and_b_is_untouched() {
    let control = control(settings()).await;
    let orders = workload_channel(&control, &workload_cert(&control, "orders").await).await;
    let mut admin = client(&control).await;
    let b = register(&mut admin, instance("users", "u-1"), 60_000).await;
    set_policy(&control, "users", "").await;

    let mut registry = RegistryClient::new(orders.clone());
    // Its own service: yes.
    let own = registry.register(pb::RegisterRequest { instance: Some(instance("orders", "o-1")), ttl_ms: 0 }).await;
    let own = own.expect("a workload registers its own service").into_inner();
    // B's: no, naming the caller and the rule.
    let e = registry.register(pb::RegisterRequest { instance: Some(instance("users", "u-2")), ttl_ms: 0 }).await;
    let e = e.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("spiffe://redfire.local/ns/default/sa/orders")
            && e.message().contains("\"users\"")
            && e.message().contains("rule"),
        "{}",
        e.message()
    );
    let e = registry.deregister(pb::DeregisterRequest { lease_id: b.lease_id }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let renew = pb::KeepAliveRequest { lease_id: b.lease_id, health: pb::Health::NotServing as i32 };
    let mut stream = registry.keep_alive(tokio_stream::iter(vec![renew])).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap_err().code(), Code::PermissionDenied);
    // Its own lease: renewed and deregistered.
    let renew = pb::KeepAliveRequest { lease_id: own.lease_id, health: pb::Health::Serving as i32 };
    let mut stream = registry.keep_alive(tokio_stream::iter(vec![renew])).await.unwrap().into_inner();
    stream.message().await.expect("own lease renewed");
    registry.deregister(pb::DeregisterRequest { lease_id: own.lease_id }).await.expect("own lease deregistered");
    // Reads of the registry are open to any authenticated caller.
    registry.list_services(pb::ListServicesRequest {}).await.expect("list");

    // Policies: its own, yes; B's, no; writes need policy-admin.
    let mut policy = PolicyClient::new(orders.clone());
    policy.get(ppb::GetRequest { service: "orders".into() }).await.expect("own policy");
    let e = policy.get(ppb::GetRequest { service: "users".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = policy.watch(ppb::WatchRequest { service: "users".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = policy.set(ppb::SetRequest { service: "orders".into(), toml: String::new() }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("operator role policy-admin"), "{}", e.message());

    // Identity: a certificate for B, whether by B's token over A's mTLS or
    // by a CSR naming B with A's current certificate.
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().serialize_request(&key).unwrap();
    let users_token = control.bootstrap_token("default", "users").unwrap();
    let e = IdentityClient::new(orders.clone())
        .issue_certificate(ipb::IssueCertificateRequest {
            csr_pem: csr.pem().unwrap(),
            credential: Some(ipb::issue_certificate_request::Credential::BootstrapToken(users_token)),
            lifetime_s: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names =
        vec![rcgen::SanType::URI("spiffe://redfire.local/ns/default/sa/users".to_string().try_into().unwrap())];
    let orders_token = control.bootstrap_token("default", "orders").unwrap();
    let e = IdentityClient::new(anonymous_channel(&control).await)
        .issue_certificate(ipb::IssueCertificateRequest {
            csr_pem: params.serialize_request(&key).unwrap().pem().unwrap(),
            credential: Some(ipb::issue_certificate_request::Credential::BootstrapToken(orders_token)),
            lifetime_s: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("sa/users") && e.message().contains("sa/orders"), "{}", e.message());

    // B is untouched.
    let users = admin.get_service(pb::GetServiceRequest { service: "users".into() }).await.unwrap().into_inner();
    assert_eq!(users.instances.len(), 1);
    assert_eq!(users.instances[0].health, pb::Health::Serving as i32, "B's health was not changed");
    assert_eq!(users.instances[0].lease_id, b.lease_id);
}

#[tokio::test]
async fn topics_follow_the_event_acl_and_group_admin_needs_its_role() {
    let control = control(settings()).await;
    let orders = workload_channel(&control, &workload_cert(&control, "orders").await).await;
    let mut events = EventsClient::new(orders.clone());
    // No ACL yet: default deny.
    let e = events.publish(publish_req("orders.created")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("no rule matches") && e.message().contains("orders.created"), "{}", e.message());

    set_policy(
        &control,
        "redfire-control",
        "[[event_acl]]\nname = \"orders.*\"\npublish = [\"orders\"]\nsubscribe = [\"orders\", \"billing\"]\n\n\
         [[event_acl]]\nname = \"payments\"\npublish = [\"billing\"]\nsubscribe = [\"role:policy-admin\"]\n",
    )
    .await;
    events.publish(publish_req("orders.created")).await.expect("granted by orders.*");
    subscribe(&mut events, "orders.created").await.expect("subscribe granted");
    let e = events.publish(publish_req("payments")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("rule \"payments\" does not list it"), "{}", e.message());
    assert_eq!(subscribe(&mut events, "payments").await.unwrap_err().code(), Code::PermissionDenied);
    let e = events.describe_topic(epb::DescribeTopicRequest { topic: "payments".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Group management needs events-admin, whoever asks.
    let reset = epb::ResetGroupRequest { topic: "orders.created".into(), group: "g".into(), position: "$".into() };
    assert_eq!(events.reset_group(reset.clone()).await.unwrap_err().code(), Code::PermissionDenied);
    let delete = epb::DeleteGroupRequest { topic: "orders.created".into(), group: "g".into() };
    assert_eq!(events.delete_group(delete.clone()).await.unwrap_err().code(), Code::PermissionDenied);
    // A group named after its own service it may manage, on a topic it reads.
    let own =
        epb::ResetGroupRequest { topic: "orders.created".into(), group: "orders.audit".into(), position: "$".into() };
    // Admitted: the store answers (the group does not exist yet).
    let e = events.reset_group(own).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "a workload may reset its own group: {e:?}");
    let not_readable =
        epb::ResetGroupRequest { topic: "payments".into(), group: "orders.audit".into(), position: "$".into() };
    assert_eq!(events.reset_group(not_readable).await.unwrap_err().code(), Code::PermissionDenied);
    let create = epb::CreateTopicRequest { topic: "payments".into(), retention: None };
    assert_eq!(events.create_topic(create.clone()).await.unwrap_err().code(), Code::PermissionDenied);
    let policy_admin = control.operator_channel("pat", &["policy-admin"]).await.unwrap();
    let mut pat = EventsClient::new(policy_admin);
    let e = pat.create_topic(create.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("operator \"pat\"") && e.message().contains("events-admin"), "{}", e.message());
    // An operator role listed in the ACL: pat may subscribe to payments.
    subscribe(&mut pat, "payments").await.expect("role:policy-admin subscribes to payments");

    // Untouched: nothing was published to payments, the group is still there.
    let mut admin = EventsClient::new(channel(&control).await);
    let p = admin.describe_topic(epb::DescribeTopicRequest { topic: "payments".into() }).await.unwrap();
    assert_eq!(p.into_inner().length, 0, "nothing was published to payments");
    let d = admin.describe_topic(epb::DescribeTopicRequest { topic: "orders.created".into() }).await.unwrap();
    let d = d.into_inner();
    assert_eq!(d.length, 1);
    assert!(d.groups.iter().any(|g| g.name == "g"), "the group survived: {:?}", d.groups);
    admin.reset_group(reset).await.expect("events-admin resets");
    admin.delete_group(delete).await.expect("events-admin deletes");
}

/// Issues a certificate for a fresh (or the given) key with `token`.
async fn issue_with(
    control: &redfire::control::server::Control,
    key: &rcgen::KeyPair,
    token: &str,
) -> Result<ipb::IssueCertificateResponse, tonic::Status> {
    let csr = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().serialize_request(key).unwrap();
    IdentityClient::new(anonymous_channel(control).await)
        .issue_certificate(ipb::IssueCertificateRequest {
            csr_pem: csr.pem().unwrap(),
            credential: Some(ipb::issue_certificate_request::Credential::BootstrapToken(token.into())),
            lifetime_s: 0,
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn a_bootstrap_token_certifies_one_key_and_opens_nothing_else() {
    let control = control(settings()).await;
    let token = control.bootstrap_token("default", "orders").unwrap();
    let (first, second) = (rcgen::KeyPair::generate().unwrap(), rcgen::KeyPair::generate().unwrap());
    issue_with(&control, &first, &token).await.expect("first use");
    let e = issue_with(&control, &second, &token).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("already used"), "{}", e.message());
    // The same sidecar (same key) may come back with it.
    issue_with(&control, &first, &token).await.expect("same key again");
    // As a bearer token it opens no other method.
    let anon = anonymous_channel(&control).await;
    let mut c = RegistryClient::new(as_operator(anon.clone(), &token));
    let e = c.register(pb::RegisterRequest { instance: Some(instance("orders", "a")), ttl_ms: 0 }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("accepted only by IssueCertificate"), "{}", e.message());
    assert_eq!(c.watch(pb::WatchRequest::default()).await.unwrap_err().code(), Code::Unauthenticated);
    let mut e2 = EventsClient::new(as_operator(anon.clone(), &token));
    assert_eq!(e2.publish(publish_req("orders")).await.unwrap_err().code(), Code::Unauthenticated);
    let mut p = PolicyClient::new(as_operator(anon, &token));
    let e = p.get(ppb::GetRequest { service: "orders".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn replicas_share_redemptions_and_enforce_an_acl_change_within_a_second() {
    let Some(url) = shared_redis() else { return };
    let prefix = unique_prefix("authz-replicas");
    let a = control(redis_settings(&url, &prefix)).await;
    let b = control(redis_settings(&url, &prefix)).await;

    // A bootstrap token used at A is spent at B too.
    let token = a.bootstrap_token("default", "orders").unwrap();
    issue_with(&a, &rcgen::KeyPair::generate().unwrap(), &token).await.expect("first use at A");
    let e = issue_with(&b, &rcgen::KeyPair::generate().unwrap(), &token).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "replayed at B: {e:?}");

    let cert = workload_cert(&a, "orders").await;
    let mut at_b = EventsClient::new(workload_channel(&b, &cert).await);
    assert_eq!(at_b.publish(publish_req("fills")).await.unwrap_err().code(), Code::PermissionDenied);

    // Grant at A; B enforces it within a second.
    set_policy(&a, "redfire-control", "[[event_acl]]\nname = \"fills\"\npublish = [\"orders\"]\n").await;
    let granted = Instant::now();
    loop {
        match at_b.publish(publish_req("fills")).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::PermissionDenied && granted.elapsed() < Duration::from_secs(1) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("B did not enforce the grant within 1 s ({:?}): {e:?}", granted.elapsed()),
        }
    }
    // Revoke at A; B refuses again within a second.
    set_policy(&a, "redfire-control", "[[event_acl]]\nname = \"fills\"\npublish = [\"billing\"]\n").await;
    let revoked = Instant::now();
    loop {
        match at_b.publish(publish_req("fills")).await {
            Err(e) if e.code() == Code::PermissionDenied => break,
            Ok(_) if revoked.elapsed() < Duration::from_secs(1) => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("B did not enforce the revocation within 1 s ({:?}): {other:?}", revoked.elapsed()),
        }
    }
    a.shutdown();
    b.shutdown();
}

#[tokio::test]
async fn operators_from_an_oidc_issuer_act_with_the_roles_their_claim_lists() {
    use support::policy::{JwksServer, RSA_PRIVATE, RSA2_PRIVATE, now, rs256, rsa_jwk};
    let idp = JwksServer::start(serde_json::json!({ "keys": [rsa_jwk("k1")] })).await;
    let control = control(Settings { operator_oidc_issuer: Some(idp.issuer_url.clone()), ..settings() }).await;
    let token = |roles: &[&str], aud: &str, key: &str| {
        let claims = serde_json::json!({
            "iss": idp.issuer_url, "aud": aud, "sub": "alice@idp", "exp": now() + 600, "roles": roles,
        });
        rs256(&claims, Some("k1"), key)
    };
    let anon = anonymous_channel(&control).await;
    let set = |token: String| {
        let mut c = PolicyClient::new(as_operator(anon.clone(), &token));
        async move { c.set(ppb::SetRequest { service: "orders".into(), toml: String::new() }).await }
    };
    // The keys arrive through discovery shortly after start.
    let admin = token(&["policy-admin"], "redfire-control", RSA_PRIVATE);
    let ok = eventually(Duration::from_secs(10), || {
        let f = set(admin.clone());
        async move { f.await.is_ok() }
    })
    .await;
    assert!(ok, "an OIDC operator with policy-admin sets a policy");
    assert!(idp.hits.load(std::sync::atomic::Ordering::SeqCst) >= 2, "discovery and JWKS fetched");

    let e = set(token(&["events-admin"], "redfire-control", RSA_PRIVATE)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("operator \"alice@idp\""), "{}", e.message());
    for (why, t) in [
        ("signed by a key the issuer does not publish", token(&["policy-admin"], "redfire-control", RSA2_PRIVATE)),
        ("for another audience", token(&["policy-admin"], "someone-else", RSA_PRIVATE)),
        ("with no operator role", token(&["admin", "root"], "redfire-control", RSA_PRIVATE)),
    ] {
        let e = set(t).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{why}: {e:?}");
    }
    // Control's own operator tokens still work beside the issuer's.
    PolicyClient::new(channel(&control).await)
        .set(ppb::SetRequest { service: "orders".into(), toml: String::new() })
        .await
        .expect("control's own operator token");
}
