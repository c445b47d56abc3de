//! HTTP/JSON → gRPC transcoding through the gateway: a real tonic server
//! (`redfire.example.v1.UserService`, whose methods carry `google.api.http`
//! bindings) behind its sidecar; the gateway loads the example descriptor
//! set that build.rs writes. The same GetUser called as gRPC, gRPC-Web and
//! JSON gives the same user; POST/PATCH bodies, query parameters and
//! `response_body` work; gRPC errors become mapped HTTP statuses with a
//! JSON error body; bad requests are 400/404/413 JSON; a bad descriptor
//! file fails the start naming the file.

mod support;

use std::time::Duration;

use bytes::{Buf, Bytes};
use prost::Message;
use redfire::sidecar::config::{Config as SidecarConfig, Settings as SidecarSettings};
use redfire::sidecar::server::Sidecar;
use serde_json::{Value, json};
use support::gateway::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Request, Response, Status};

#[allow(unreachable_pub, clippy::all, clippy::pedantic)]
mod pb {
    tonic::include_proto!("redfire.example.v1");
}

use pb::user_service_client::UserServiceClient;
use pb::user_service_server::{UserService, UserServiceServer};
use pb::{Address, GetUserRequest, Kind, User};

/// The example descriptor set (imports included), as build.rs wrote it.
const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/example_descriptor.bin"));

const ROUTES: &str = "\
[[route]]
name = \"users-grpc\"
path_prefix = \"/redfire.example.v1.UserService\"
service = \"users\"
timeout = \"5s\"

[[route]]
name = \"users-json\"
path_prefix = \"/api\"
rewrite = \"\"
service = \"users\"
timeout = \"5s\"
transcode = true
";

/// Deterministic users derived from the request; id 404 does not exist.
struct Users;

fn user(id: i64) -> User {
    let mut roles = vec!["reader".to_string()];
    if id % 2 == 0 {
        roles.push("writer".into());
    }
    User {
        user_id: id,
        display_name: format!("user-{id}"),
        email: format!("u{id}@example.com"),
        roles,
        kind: Kind::Person as i32,
        address: Some(Address { city: "Oslo".into(), country: "NO".into() }),
    }
}

#[tonic::async_trait]
impl UserService for Users {
    async fn get_user(&self, req: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let r = req.into_inner();
        let id = match r.name.strip_prefix("people/") {
            Some(n) => n.parse().map_err(|_| Status::invalid_argument(format!("bad name {:?}", r.name)))?,
            None => r.user_id,
        };
        if id == 404 {
            return Err(Status::not_found(format!("user {id} not found: gone")));
        }
        Ok(Response::new(user(id)))
    }

    async fn create_user(&self, req: Request<pb::CreateUserRequest>) -> Result<Response<User>, Status> {
        let r = req.into_inner();
        let mut u = r.user.unwrap_or_default();
        if u.display_name.is_empty() {
            return Err(Status::invalid_argument("display_name is required"));
        }
        u.user_id = 1000;
        if !r.request_id.is_empty() {
            u.roles.push(format!("req:{}", r.request_id));
        }
        Ok(Response::new(u))
    }

    async fn update_user(&self, req: Request<pb::UpdateUserRequest>) -> Result<Response<User>, Status> {
        Ok(Response::new(req.into_inner().user.unwrap_or_default()))
    }

    async fn list_users(&self, req: Request<pb::ListUsersRequest>) -> Result<Response<pb::ListUsersResponse>, Status> {
        let r = req.into_inner();
        let filter = r.filter.unwrap_or_default();
        let users = (1..=i64::from(r.page_size))
            .map(|i| User { display_name: format!("{}{i}", filter.prefix), kind: filter.kind, ..user(i) })
            .collect();
        Ok(Response::new(pb::ListUsersResponse { users, next_page_token: "next".into() }))
    }
}

struct Setup {
    mesh: GatewayMesh,
    descriptors: TempFile,
}

fn descriptor_file() -> TempFile {
    let f = TempFile::new("example.desc", "");
    std::fs::write(&f.0, DESCRIPTORS).unwrap();
    f
}

async fn setup() -> Setup {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = l.local_addr().unwrap();
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
        let _ = tonic::transport::Server::builder()
            .add_service(UserServiceServer::new(Users))
            .serve_with_incoming(incoming)
            .await;
    });
    let descriptors = descriptor_file();
    let extra =
        SidecarSettings { gateway_descriptors: Some(descriptors.0.display().to_string()), ..Default::default() };
    let mesh = gateway_mesh(&[Service { name: "users", app, protocol: "h2c", metadata: "" }], ROUTES, extra).await;
    Setup { mesh, descriptors }
}

/// JSON (proto3 mapping) → the prost message, through the descriptors.
fn from_json<M: Message + Default>(full_name: &str, v: &Value) -> M {
    let pool = prost_reflect::DescriptorPool::decode(DESCRIPTORS).unwrap();
    let desc = pool.get_message_by_name(full_name).unwrap();
    let dynamic = prost_reflect::DynamicMessage::deserialize(desc, v.clone()).unwrap();
    M::decode(dynamic.encode_to_vec().as_slice()).unwrap()
}

async fn call(s: &Setup, method: &str, path: &str, body: &str) -> (u16, http::HeaderMap, Value) {
    let headers = [("content-type", "application/json")];
    let (status, headers, body) = http1(s.mesh.addr, method, path, &headers, body.as_bytes()).await;
    let v = serde_json::from_slice(&body).unwrap_or_else(|_| panic!("JSON body: {}", String::from_utf8_lossy(&body)));
    (status, headers, v)
}

fn grpc_frame(msg: &impl Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut f = vec![0u8];
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(&body);
    f
}

#[tokio::test]
async fn grpc_grpc_web_and_json_give_the_same_answer() {
    let s = setup().await;
    let req = GetUserRequest { user_id: 42, name: String::new() };

    // (a) gRPC (h2c) through the gateway.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.mesh.addr)).unwrap();
    let mut grpc = UserServiceClient::new(channel.connect().await.unwrap());
    let via_grpc = grpc.get_user(req.clone()).await.unwrap().into_inner();
    assert_eq!(via_grpc, user(42));

    // (b) gRPC-Web (binary) through the gateway.
    let headers = [("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1")];
    let path = "/redfire.example.v1.UserService/GetUser";
    let (status, _, body) = http1(s.mesh.addr, "POST", path, &headers, &grpc_frame(&req)).await;
    assert_eq!(status, 200);
    let mut body = Bytes::from(body);
    assert_eq!(body.get_u8(), 0, "a message frame first");
    let len = body.get_u32() as usize;
    let via_web = User::decode(body.split_to(len)).unwrap();
    assert_eq!(via_web, via_grpc, "gRPC-Web gives the gRPC answer");

    // (c) JSON through the gateway: GET with the id in the path.
    let (status, headers, v) = call(&s, "GET", "/api/v1/users/42", "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.get("x-request-id").is_some());
    let via_json: User = from_json("redfire.example.v1.User", &v);
    assert_eq!(via_json, via_grpc, "JSON gives the gRPC answer");
    // proto3 JSON: lowerCamelCase, int64 as a string, enums by name, defaults emitted.
    assert_eq!(v["userId"], "42");
    assert_eq!(v["displayName"], "user-42");
    assert_eq!(v["kind"], "KIND_PERSON");
    assert_eq!(v["roles"], json!(["reader", "writer"]));
    assert_eq!(v["address"], json!({"city": "Oslo", "country": "NO"}));

    // The additional binding (`/v1/{name=people/*}`) reaches the same method.
    let (status, _, v) = call(&s, "GET", "/api/v1/people/43", "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(from_json::<User>("redfire.example.v1.User", &v), user(43));
}

#[tokio::test]
async fn bodies_query_parameters_and_response_body() {
    let s = setup().await;
    // POST with body: "user", and a query parameter for a non-body field.
    let body = r#"{"displayName": "Ann", "email": "ann@example.com", "kind": "KIND_SERVICE", "roles": ["admin"]}"#;
    let (status, _, v) = call(&s, "POST", "/api/v1/users?request_id=abc%20d", body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["userId"], "1000");
    assert_eq!(v["displayName"], "Ann");
    assert_eq!(v["kind"], "KIND_SERVICE");
    assert_eq!(v["roles"], json!(["admin", "req:abc d"]));

    // PATCH with body: "*" and a nested path variable ({user.user_id}); proto names work too.
    let (status, _, v) = call(&s, "PATCH", "/api/v1/users/7", r#"{"user": {"display_name": "Bo"}}"#).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["userId"], "7");
    assert_eq!(v["displayName"], "Bo");

    // GET with nested query parameters; response_body: "users" sends the list alone.
    let (status, _, v) =
        call(&s, "GET", "/api/v1/users?pageSize=2&filter.kind=KIND_SERVICE&filter.prefix=svc-", "").await;
    assert_eq!(status, 200, "{v}");
    let users = v.as_array().expect("the users list itself");
    assert_eq!(users.len(), 2);
    assert_eq!(users[0]["displayName"], "svc-1");
    assert_eq!(users[1]["kind"], "KIND_SERVICE");

    // A bad edit of the descriptor file is logged; the bindings in force stay.
    std::fs::write(&s.descriptors.0, b"garbage").unwrap();
    let rejected = "redfire_sidecar_gateway_config_reloads_total{what=\"descriptors\",result=\"rejected\"}";
    let admin = s.mesh.gateway.admin_addr;
    let seen =
        support::eventually(Duration::from_secs(10), || async { support::metric(admin, rejected).await >= 1.0 }).await;
    assert!(seen, "the bad descriptor file is read and counted as rejected");
    let (status, _, v) = call(&s, "GET", "/api/v1/users/5", "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["displayName"], "user-5");
}

#[tokio::test]
async fn errors_are_mapped_http_statuses_with_json_bodies() {
    let s = setup().await;
    // gRPC NOT_FOUND from the app → 404, message percent-decoded.
    let (status, _, v) = call(&s, "GET", "/api/v1/users/404", "").await;
    assert_eq!(status, 404);
    assert_eq!(v["error"], json!({"code": "NOT_FOUND", "message": "user 404 not found: gone", "status": 404}));
    // gRPC INVALID_ARGUMENT from the app → 400.
    let (status, _, v) = call(&s, "POST", "/api/v1/users", r#"{"email": "x@example.com"}"#).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "INVALID_ARGUMENT");
    assert_eq!(v["error"]["message"], "display_name is required");

    // Refused by the gateway before the app: malformed JSON, unknown field, wrong type.
    for (method, path, body) in [
        ("POST", "/api/v1/users", "{not json"),
        ("POST", "/api/v1/users", r#"{"displayName": "A", "nope": 1}"#),
        ("POST", "/api/v1/users", r#"{"displayName": 5}"#),
        ("GET", "/api/v1/users/abc", ""),
        ("GET", "/api/v1/users?unknown=1", ""),
    ] {
        let (status, headers, v) = call(&s, method, path, body).await;
        assert_eq!(status, 400, "{method} {path} {body}: {v}");
        assert_eq!(v["error"]["code"], "INVALID_ARGUMENT", "{v}");
        assert_eq!(v["error"]["status"], 400);
        assert_eq!(headers["content-type"], "application/json");
    }

    // No binding under a transcoding route → 404 JSON (method or path unknown).
    for (method, path) in [("GET", "/api/v1/nothing"), ("DELETE", "/api/v1/users/1")] {
        let (status, _, v) = call(&s, method, path, "").await;
        assert_eq!(status, 404, "{method} {path}");
        assert_eq!(v["error"]["code"], "NOT_FOUND");
    }

    // Too large a body → 413, answered from the declared length alone.
    let mut tcp = tokio::net::TcpStream::connect(s.mesh.addr).await.unwrap();
    let head = "POST /api/v1/users HTTP/1.1\r\nhost: api.test\r\ncontent-type: application/json\r\n\
                content-length: 5242880\r\n\r\n{\"displayName\": \"";
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test]
async fn a_bad_descriptor_file_fails_the_start_naming_it() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let routes = TempFile::new("routes.toml", ROUTES);
    let bad = TempFile::new("bad.desc", "not a descriptor set");
    let config = SidecarConfig::from_settings(SidecarSettings {
        mode: Some("gateway".into()),
        service: Some("gateway".into()),
        bootstrap_token: Some("t".into()),
        // Never reached: the start fails on the descriptors first.
        control_addr: Some("http://127.0.0.1:1".into()),
        dev_insecure_control: Some("true".into()),
        gateway_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        inbound_addr: Some("127.0.0.1:0".into()),
        outbound_addr: Some("127.0.0.1:0".into()),
        routes: Some(routes.0.display().to_string()),
        gateway_descriptors: Some(bad.0.display().to_string()),
        ..Default::default()
    })
    .unwrap();
    let Err(err) = Sidecar::start(config).await else { panic!("start fails") };
    let err = err.to_string();
    assert!(err.contains("gateway_descriptors") && err.contains(&bad.0.display().to_string()), "{err}");
}
