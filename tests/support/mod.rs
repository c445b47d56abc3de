//! Shared helpers of the integration tests: real control servers on port 0,
//! real Redis (the machine's, under a per-test key prefix, or a test's own
//! `redis-server` when the test kills it), and bounded waits.

#![allow(dead_code, unreachable_pub)]

pub mod gateway;
pub mod mesh;
pub mod policy;

use std::future::Future;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redfire::control::config::{Config, Settings};
use redfire::control::server::Control;
use redfire::mesh::process::control_endpoint::BearerToken;
pub use redfire::mesh::process::control_endpoint::OperatorChannel;
use redfire::proto::registry::v1 as pb;
use redfire::proto::registry::v1::registry_client::RegistryClient;
use tonic::transport::Channel;

/// Set by `.ci/run`: tests that need Redis fail instead of skipping.
pub const REQUIRE_REDIS: &str = "REDFIRE_REQUIRE_REDIS";

/// The shared Redis for tests that do not kill it, or `None` (with a loud
/// message) when it is unreachable outside CI.
pub fn shared_redis() -> Option<String> {
    let url = std::env::var("REDFIRE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    if ping(&url) {
        return Some(url);
    }
    if std::env::var_os(REQUIRE_REDIS).is_some() {
        panic!("{REQUIRE_REDIS} is set but Redis at {url} does not answer PING");
    }
    eprintln!("\n*** SKIPPING: Redis at {url} does not answer; set {REQUIRE_REDIS}=1 to make this a failure ***\n");
    None
}

fn ping(url: &str) -> bool {
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .is_ok()
}

/// A key prefix no other test uses.
pub fn unique_prefix(test: &str) -> String {
    format!("test-{test}-{:08x}", fastrand::u32(..))
}

/// True when `redis-server` can be started by a test.
pub fn have_redis_server() -> bool {
    let ok = Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_ok();
    if !ok {
        if std::env::var_os(REQUIRE_REDIS).is_some() {
            panic!("{REQUIRE_REDIS} is set but redis-server is not installed");
        }
        eprintln!("\n*** SKIPPING: redis-server is not installed ***\n");
    }
    ok
}

/// A test's own redis-server on a free port, no persistence; killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = free_port();
        let mut s = RedisServer { port, child: None };
        s.spawn();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        for _ in 0..100 {
            if ping(&self.url()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer", self.port);
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: Redis stops answering but keeps its sockets open, like a
    /// stalled or blackholed server (sent to the pid this test started).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        let ok = Command::new("kill").args([sig, &pid.to_string()]).status().expect("run kill").success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// A fresh, empty redis-server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A CA directory private to this test process (tests in one binary share
/// it, as replicas share a root; creation is atomic).
pub fn test_ca_dir() -> String {
    std::env::temp_dir().join(format!("redfire-test-ca-{}", std::process::id())).display().to_string()
}

/// A file name no other control of this process writes its trust bundle to.
pub fn bundle_path() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("redfire-test-bundle-{}-{n}.pem", std::process::id())).display().to_string()
}

/// Settings for a control on free ports (TLS on, as by default; its trust
/// bundle written to a file of its own for sidecars).
pub fn settings() -> Settings {
    Settings {
        grpc_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        log_level: Some("warn".into()),
        ca_dir: Some(test_ca_dir()),
        trust_bundle_file: Some(bundle_path()),
        ..Default::default()
    }
}

/// Settings for a control on Redis under `prefix`.
pub fn redis_settings(url: &str, prefix: &str) -> Settings {
    Settings {
        store: Some("redis".into()),
        redis_url: Some(url.into()),
        redis_prefix: Some(prefix.into()),
        redis_timeout: Some("500ms".into()),
        ..settings()
    }
}

/// Starts a control in this process.
pub async fn control(settings: Settings) -> Control {
    Control::start(Config::from_settings(settings).expect("valid settings")).await.expect("control starts")
}

/// Every operator role: what the tests' clients of control carry unless a
/// test is about authorization.
pub const ALL_ROLES: [&str; 3] = ["policy-admin", "events-admin", "registry-admin"];

/// A channel to `control`, TLS verified against its trust bundle, without
/// any credential (anonymous: only public methods answer).
pub async fn anonymous_channel(control: &Control) -> Channel {
    control.endpoint().connect_timeout(Duration::from_secs(2)).connect().await.expect("connect to control")
}

/// A channel to `control` as an operator holding every role.
pub async fn channel(control: &Control) -> OperatorChannel {
    as_operator(anonymous_channel(control).await, &control.operator_token("tests", &ALL_ROLES).unwrap())
}

/// `channel` carrying operator `token`.
pub fn as_operator(channel: Channel, token: &str) -> OperatorChannel {
    tonic::service::interceptor::InterceptedService::new(channel, BearerToken::new(token).unwrap())
}

/// A channel to a control process on 127.0.0.1:`port` whose trust bundle is
/// in `bundle_file` and whose CA is in `ca_dir` (TLS, as an operator with
/// every role, with a token minted from that CA).
pub async fn process_channel(port: u16, bundle_file: &std::path::Path, ca_dir: &str) -> OperatorChannel {
    let pem = std::fs::read_to_string(bundle_file).expect("control wrote its trust bundle");
    let ch = redfire::mesh::process::control_endpoint::endpoint(&format!("https://127.0.0.1:{port}"), Some(&pem))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect to control");
    let ca = redfire::control::identity::ca::Ca::load(
        Config::from_settings(Settings { ca_dir: Some(ca_dir.into()), ..Default::default() }).unwrap().ca,
    )
    .await
    .unwrap();
    let token =
        redfire::control::authz::token::create_operator(&ca, "tests", &ALL_ROLES, Duration::from_secs(3600)).unwrap();
    as_operator(ch, &token)
}

/// A registry client of `control` (an operator with every role).
pub async fn client(control: &Control) -> RegistryClient<OperatorChannel> {
    let ch = control
        .endpoint()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect to control");
    RegistryClient::new(as_operator(ch, &control.operator_token("tests", &ALL_ROLES).unwrap()))
}

/// A valid instance.
pub fn instance(service: &str, id: &str) -> pb::Instance {
    pb::Instance {
        service: service.into(),
        instance_id: id.into(),
        address: "127.0.0.1".into(),
        ports: Some(pb::Ports { grpc: Some(9000), http: None, admin: None }),
        ..Default::default()
    }
}

/// Registers `instance` with `ttl_ms` (0 = default); returns the lease.
pub async fn register(
    c: &mut RegistryClient<OperatorChannel>,
    instance: pb::Instance,
    ttl_ms: u32,
) -> pb::RegisterResponse {
    c.register(pb::RegisterRequest { instance: Some(instance), ttl_ms }).await.expect("register").into_inner()
}

/// A Watch stream.
pub struct Watcher {
    pub stream: tonic::Streaming<pb::WatchResponse>,
    pub epoch: String,
    pub revision: u64,
}

impl Watcher {
    pub async fn open(c: &mut RegistryClient<OperatorChannel>, req: pb::WatchRequest) -> Watcher {
        let stream = c.watch(req).await.expect("watch").into_inner();
        Watcher { stream, epoch: String::new(), revision: 0 }
    }

    /// The next message, within `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<pb::WatchResponse> {
        match tokio::time::timeout(limit, self.stream.message()).await {
            Ok(Ok(Some(m))) => {
                self.epoch = m.epoch.clone();
                self.revision = m.revision;
                Some(m)
            }
            _ => None,
        }
    }

    /// The next change (skipping nothing: panics on a snapshot).
    pub async fn change(&mut self, limit: Duration) -> pb::Change {
        match self.next(limit).await.map(|m| m.event) {
            Some(Some(pb::watch_response::Event::Change(c))) => c,
            other => panic!("expected a change within {limit:?}, got {other:?}"),
        }
    }

    /// The next snapshot.
    pub async fn snapshot(&mut self, limit: Duration) -> pb::Snapshot {
        match self.next(limit).await.map(|m| m.event) {
            Some(Some(pb::watch_response::Event::Snapshot(s))) => s,
            other => panic!("expected a snapshot within {limit:?}, got {other:?}"),
        }
    }

    /// No message arrives within `limit`.
    pub async fn quiet(&mut self, limit: Duration) {
        if let Ok(Ok(Some(m))) = tokio::time::timeout(limit, self.stream.message()).await {
            panic!("expected no message, got {m:?}");
        }
    }
}

pub fn key(c: &pb::Change) -> String {
    let i = c.instance.as_ref().expect("change has an instance");
    format!("{}/{}", i.service, i.instance_id)
}

pub fn is_put(c: &pb::Change) -> bool {
    c.r#type == pb::ChangeType::Put as i32
}

pub fn is_delete(c: &pb::Change) -> bool {
    c.r#type == pb::ChangeType::Delete as i32
}

/// Polls `check` every 20 ms until it is true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// One series' value from an admin port's `/metrics` (`name` with its
/// labels, as exposed); 0 when absent.
pub async fn metric(admin: SocketAddr, name: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics").await;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// GET on an admin port: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect admin");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await.expect("admin answers").unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A workload's credentials: obtained from `control`'s CA with a bootstrap
/// token for `service` in namespace `default`, as a sidecar does.
pub struct WorkloadCert {
    pub chain_pem: String,
    pub key_pem: String,
    pub spiffe_id: String,
}

/// Obtains a certificate for `service` through the identity API.
pub async fn workload_cert(control: &Control, service: &str) -> WorkloadCert {
    use redfire::proto::identity::v1 as ipb;
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().serialize_request(&key).unwrap();
    let token = control.bootstrap_token("default", service).unwrap();
    let r = ipb::identity_client::IdentityClient::new(anonymous_channel(control).await)
        .issue_certificate(ipb::IssueCertificateRequest {
            csr_pem: csr.pem().unwrap(),
            credential: Some(ipb::issue_certificate_request::Credential::BootstrapToken(token)),
            lifetime_s: 0,
        })
        .await
        .expect("certificate issued")
        .into_inner();
    WorkloadCert { chain_pem: r.certificate_chain_pem, key_pem: key.serialize_pem(), spiffe_id: r.spiffe_id }
}

/// A channel to `control` presenting `cert` (mTLS, as a sidecar's).
pub async fn workload_channel(control: &Control, cert: &WorkloadCert) -> Channel {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&control.trust_bundle_pem))
        .domain_name("127.0.0.1")
        .identity(Identity::from_pem(&cert.chain_pem, &cert.key_pem));
    Endpoint::from_shared(control.grpc_url())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect to control with a workload certificate")
}
