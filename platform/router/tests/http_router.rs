//! The HTTP router against a real etcd and real HTTP backends on 127.0.0.1.
//!
//! Each test starts its own etcd, registers backends the way host agents do
//! (`services/<app>-web/<job>` on a lease) and sends requests through the router with a
//! plain hyper client on a fresh connection.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use paas_coord::{Coord, Registration};
use paas_model::keys;
use paas_router::{Limits, Router, RouterConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TTL: Duration = Duration::from_secs(5);
const WAIT: Duration = Duration::from_secs(10);

/// A real HTTP backend: answers every request with JSON describing what it received,
/// and echoes bytes on upgraded (websocket) connections.
struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn describe(
    name: &'static str,
    hits: Arc<AtomicUsize>,
    mut req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    hits.fetch_add(1, Ordering::SeqCst);
    if req.headers().contains_key("upgrade") {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    if let Some(ms) = req.uri().query().and_then(|q| q.strip_prefix("wait=")) {
        // A slow backend: the head comes after that many milliseconds.
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(size) = req.uri().query().and_then(|q| q.strip_prefix("size=")) {
        // A body of that many bytes, for a client that does not read it.
        let size: usize = size.parse().unwrap_or(0);
        return Response::new(Full::new(Bytes::from(vec![b'x'; size])));
    }
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect();
    let method = req.method().to_string();
    let path = req.uri().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let reply = json!({"backend": name, "method": method, "path": path, "headers": headers, "body_len": body.len()});
    Response::new(Full::new(Bytes::from(reply.to_string())))
}

async fn backend(name: &'static str) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let hits = Arc::clone(&counter);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let hits = Arc::clone(&hits);
                    async move { Ok::<_, Infallible>(describe(name, hits, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Backend { addr, hits, task }
}

/// A backend that reads a request and closes the connection without answering;
/// counts connections.
async fn closing_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                drop(stream);
            });
        }
    });
    (addr, count)
}

/// A backend that accepts and never answers.
async fn silent_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// An address that refuses connections: a listener's port, the listener closed.
/// (Used only as a dead backend; nothing long-lived is meant to listen there.)
async fn refusing_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

struct Platform {
    _etcd: paas_it::EtcdServer,
    coord: Coord,
}

async fn platform() -> Platform {
    let etcd = paas_it::EtcdServer::start().expect("etcd");
    let coord = Coord::connect(&[etcd.endpoint()], "paas", Duration::from_secs(10))
        .await
        .unwrap();
    Platform { _etcd: etcd, coord }
}

impl Platform {
    async fn app(&self, name: &str) {
        self.coord
            .create(
                &keys::app(name),
                &json!({"name": name, "created_at": "2026-12-01T00:00:00Z", "release": 1}),
            )
            .await
            .unwrap();
    }

    async fn register(&self, app: &str, job: &str, addr: SocketAddr) -> Registration {
        let entry =
            json!({"addr": addr.to_string(), "app": app, "job": job, "process_type": "web"});
        self.coord
            .register(&keys::service_name(app, "web"), job, &entry, TTL)
            .await
            .unwrap()
    }

    async fn route(
        &self,
        id: &str,
        app: &str,
        domain: &str,
        path: Option<&str>,
        sticky: bool,
        tls: Option<Value>,
    ) {
        let mut route = json!({"id": id, "app": app, "domain": domain, "sticky": sticky, "created_at": "2026-12-01T00:00:00Z"});
        if let Some(p) = path {
            route["path"] = p.into();
        }
        if let Some(t) = tls {
            route["tls"] = t;
        }
        self.coord.create(&keys::route(id), &route).await.unwrap();
    }

    async fn router(&self, limits: Limits) -> Router {
        let mut config = RouterConfig::new("127.0.0.1:0".parse().unwrap(), "h1");
        config.tls_listen = Some("127.0.0.1:0".parse().unwrap());
        config.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        config.proxy_protocol_listen = Some("127.0.0.1:0".parse().unwrap());
        config.limits = limits;
        paas_router::start(&self.coord, config).await.unwrap()
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn backend(&self) -> String {
        self.json()["backend"].as_str().unwrap_or("").to_string()
    }
}

/// Sends `req` on a fresh HTTP/1.1 connection to `addr`.
async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    send_body(addr, req).await
}

/// [`send`] with a body of any type (a stream, for chunked requests).
async fn send_body<B>(addr: SocketAddr, req: Request<B>) -> Reply
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.unwrap();
    let (head, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Reply {
        status: head.status,
        headers: head.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A POST to `shop.localhost` whose body is `frames` chunks of `len` bytes, sent
/// chunked (no `Content-Length`).
fn chunked_post(
    frames: usize,
    len: usize,
) -> Request<impl hyper::body::Body<Data = Bytes, Error = Infallible> + Send + 'static> {
    let chunks = futures::stream::iter(
        (0..frames).map(move |_| Ok(hyper::body::Frame::data(Bytes::from(vec![b'c'; len])))),
    );
    Request::post("/")
        .header("host", "shop.localhost")
        .body(http_body_util::StreamBody::new(chunks))
        .unwrap()
}

fn get(host: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method("GET")
        .uri(path)
        .header("host", host)
}

async fn get_ok(router: &Router, host: &str) -> bool {
    send(
        router.http_addr(),
        get(host, "/").body(Full::default()).unwrap(),
    )
    .await
    .status
        == StatusCode::OK
}

/// App `shop` with one backend registered, and a router that has been seen to reach it
/// over HTTP/1.1; the registration lives as long as the returned value.
async fn shop_behind_a_router() -> (Platform, Backend, Registration, Router) {
    shop_behind_a_router_with(Limits::default()).await
}

/// [`shop_behind_a_router`] with a router of `limits`.
async fn shop_behind_a_router_with(limits: Limits) -> (Platform, Backend, Registration, Router) {
    let p = platform().await;
    p.app("shop").await;
    let shop = backend("shop").await;
    let registration = p.register("shop", "j1", shop.addr).await;
    let router = p.router(limits).await;
    paas_it::wait_for("shop's backend", WAIT, || get_ok(&router, "shop.localhost")).await;
    (p, shop, registration, router)
}

#[tokio::test]
async fn routes_by_host_and_path_and_sets_forwarding_headers() {
    let p = platform().await;
    p.app("shop").await;
    p.app("api").await;
    p.app("idle").await;
    let (shop, api) = (backend("shop").await, backend("api").await);
    let _r1 = p.register("shop", "j1", shop.addr).await;
    let _r2 = p.register("api", "j2", api.addr).await;
    p.route("r1", "shop", "shop.example.com", None, false, None)
        .await;
    p.route("r2", "api", "shop.example.com", Some("/api"), false, None)
        .await;
    let router = p.router(Limits::default()).await;
    paas_it::wait_for("shop's backend", WAIT, || get_ok(&router, "shop.localhost")).await;

    // Default route <app>.localhost, with the forwarding headers.
    let reply = send(
        router.http_addr(),
        get("shop.localhost:8080", "/cart?x=1")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = reply.json();
    assert_eq!(seen["backend"], "shop");
    assert_eq!(seen["path"], "/cart?x=1");
    let h = &seen["headers"];
    assert_eq!(h["host"], "shop.localhost:8080");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-port"], router.http_addr().port().to_string());
    let id = h["x-request-id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "generated request id {id:?}");
    assert_eq!(reply.headers["x-request-id"], id.as_str());

    // A given request id and X-Forwarded-For are kept (the client appended).
    let reply = send(
        router.http_addr(),
        get("shop.localhost", "/")
            .header("x-request-id", "abc-123")
            .header("x-forwarded-for", "203.0.113.9")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.json()["headers"]["x-request-id"], "abc-123");
    assert_eq!(
        reply.json()["headers"]["x-forwarded-for"],
        "203.0.113.9, 127.0.0.1"
    );
    assert_eq!(reply.headers["x-request-id"], "abc-123");

    // Stored routes: longest path prefix wins on a segment boundary.
    for (path, expected) in [
        ("/", "shop"),
        ("/api", "api"),
        ("/api/items", "api"),
        ("/apiary", "shop"),
    ] {
        let reply = send(
            router.http_addr(),
            get("SHOP.example.com", path).body(Full::default()).unwrap(),
        )
        .await;
        assert_eq!(reply.backend(), expected, "{path}");
    }

    // Unknown host: 404. An app without backends: 503.
    let reply = send(
        router.http_addr(),
        get("nope.localhost", "/").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = send(
        router.http_addr(),
        get("idle.localhost", "/").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.headers.contains_key("x-request-id"));

    // A route added while running is followed.
    p.route("r3", "api", "api.example.com", None, false, None)
        .await;
    paas_it::wait_for("the new route", WAIT, || get_ok(&router, "api.example.com")).await;

    // Metrics on the admin listener.
    let admin = router.admin_addr().unwrap();
    let metrics = send(
        admin,
        Request::get("/metrics").body(Full::default()).unwrap(),
    )
    .await;
    assert!(
        metrics
            .body
            .contains(r#"router_requests_total{app="shop",status="200"}"#),
        "{}",
        metrics.body
    );
    assert!(metrics
        .body
        .contains(r#"router_requests_total{app="-",status="404"}"#));
    assert!(metrics.body.contains(r#"router_backends{app="shop"} 1"#));
    assert!(
        metrics.body.contains("router_access_lines_dropped_total 0"),
        "{}",
        metrics.body
    );
    router.shutdown().await;
}

#[tokio::test]
async fn enforces_body_and_header_limits_and_backend_timeout() {
    let p = platform().await;
    p.app("shop").await;
    p.app("slow").await;
    let shop = backend("shop").await;
    let _r = p.register("shop", "j1", shop.addr).await;
    let _s = p.register("slow", "j2", silent_backend().await).await;
    let limits = Limits {
        max_body_bytes: 1024,
        max_header_bytes: 4096,
        backend_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let router = p.router(limits).await;
    paas_it::wait_for("shop's backend", WAIT, || get_ok(&router, "shop.localhost")).await;

    let post = |body: Vec<u8>| {
        Request::post("/")
            .header("host", "shop.localhost")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let ok = send(router.http_addr(), post(vec![b'x'; 1024])).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json()["body_len"], 1024);
    // Declared too large: refused before reading.
    let big = send(router.http_addr(), post(vec![b'x'; 1025])).await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Chunked (no Content-Length), too large while reading.
    let chunked = send_body(router.http_addr(), chunked_post(4, 512)).await;
    assert_eq!(chunked.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        shop.hits.load(Ordering::SeqCst),
        2,
        "only the accepted requests reached the backend (1 probe + 1 post)"
    );

    // Headers over the limit: 431 (ours below hyper's buffer, hyper's own above it).
    for size in [5000, 100_000] {
        let reply = send(
            router.http_addr(),
            get("shop.localhost", "/")
                .header("x-big", "z".repeat(size))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "{size}"
        );
    }

    // A backend that never answers: 504 after the backend timeout, not retried.
    let started = std::time::Instant::now();
    let reply = send(
        router.http_addr(),
        get("slow.localhost", "/").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    router.shutdown().await;
}

/// Request bodies are held within a router-wide budget (a body beyond it gets a 503, not
/// the host's memory) and must keep arriving (408 for a stalled one, whose bytes are
/// then given back).
#[tokio::test]
async fn request_bodies_are_held_within_a_budget_and_must_keep_arriving() {
    let read_timeout = Duration::from_secs(3);
    let (_p, shop, _r, router) = shop_behind_a_router_with(Limits {
        max_body_bytes: 1024,
        max_buffered_body_bytes: 1500,
        body_read_timeout: read_timeout,
        ..Limits::default()
    })
    .await;
    let post = || {
        Request::post("/")
            .header("host", "shop.localhost")
            .body(Full::new(Bytes::from(vec![b'x'; 1000])))
            .unwrap()
    };
    assert_eq!(
        send(router.http_addr(), post()).await.status,
        StatusCode::OK
    );
    // A body in several frames (chunked) reaches the backend whole.
    let chunked = send_body(router.http_addr(), chunked_post(4, 250)).await;
    assert_eq!(chunked.status, StatusCode::OK);
    assert_eq!(chunked.json()["body_len"], 1000);
    let hits = shop.hits.load(Ordering::SeqCst);

    // A client sends 1000 of the 1024 bytes it announced, then nothing.
    let mut stalled = TcpStream::connect(router.http_addr()).await.unwrap();
    stalled
        .write_all(b"POST / HTTP/1.1\r\nHost: shop.localhost\r\nContent-Length: 1024\r\n\r\n")
        .await
        .unwrap();
    stalled.write_all(&[b'y'; 1000]).await.unwrap();
    let stalled_at = std::time::Instant::now();
    let admin = router.admin_addr().unwrap();
    let body_bytes = || async move {
        let metrics = send(
            admin,
            Request::get("/metrics").body(Full::default()).unwrap(),
        )
        .await;
        metrics
            .body
            .lines()
            .find_map(|l| l.strip_prefix("router_request_body_bytes "))
            .map(str::to_string)
    };
    paas_it::wait_for("the router to hold the stalled bytes", WAIT, || async {
        body_bytes().await.as_deref() == Some("1000")
    })
    .await;
    // While they are held, another 1000-byte body does not fit the budget.
    let busy = send(router.http_addr(), post()).await;
    assert_eq!(
        busy.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        busy.body
    );
    assert_eq!(busy.headers["retry-after"], "1");
    assert!(
        busy.body.contains("too many request bodies"),
        "{}",
        busy.body
    );

    // The stalled body gets a 408 after the read timeout, and its bytes are given back.
    let mut reply = Vec::new();
    let _ = stalled.read_to_end(&mut reply).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(
        stalled_at.elapsed() >= read_timeout,
        "{:?}",
        stalled_at.elapsed()
    );
    assert_eq!(body_bytes().await.as_deref(), Some("0"));
    assert_eq!(
        send(router.http_addr(), post()).await.status,
        StatusCode::OK
    );
    assert_eq!(
        shop.hits.load(Ordering::SeqCst),
        hits + 1,
        "the stalled and the refused bodies did not reach the backend"
    );
    router.shutdown().await;
}

#[tokio::test]
async fn retries_on_another_backend_when_one_refuses_connections() {
    let p = platform().await;
    p.app("shop").await;
    let live = backend("live").await;
    let _dead = p.register("shop", "dead", refusing_addr().await).await;
    let _live = p.register("shop", "live", live.addr).await;
    // Long enough that the test's requests all fall inside it.
    let limits = Limits {
        down_after_refusal: Duration::from_secs(60),
        ..Limits::default()
    };
    let router = p.router(limits).await;
    paas_it::wait_for("the backends", WAIT, || async {
        router
            .metrics_text()
            .contains(r#"router_backends{app="shop"} 2"#)
    })
    .await;

    // Every request succeeds, also non-idempotent ones: nothing reached the dead one.
    for i in 0..30 {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let req = Request::builder()
            .method(method)
            .uri("/")
            .header("host", "shop.localhost")
            .body(Full::from("b"))
            .unwrap();
        let reply = send(router.http_addr(), req).await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}: {}", reply.body);
        assert_eq!(reply.backend(), "live");
    }
    assert_eq!(live.hits.load(Ordering::SeqCst), 30);
    // The dead one was tried once, then skipped as down: one retry, not one per
    // request that drew it.
    let metrics = router.metrics_text();
    let retries = metrics
        .lines()
        .find(|l| l.starts_with(r#"router_retries_total{app="shop",reason="connect"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(retries, Some(1.0), "{metrics}");
    router.shutdown().await;
}

#[tokio::test]
async fn closed_before_response_is_retried_only_for_idempotent_methods() {
    let p = platform().await;
    p.app("shop").await;
    let live = backend("live").await;
    let (closer, closes) = closing_backend().await;
    let _c = p.register("shop", "closer", closer).await;
    let _l = p.register("shop", "live", live.addr).await;
    let router = p.router(Limits::default()).await;
    paas_it::wait_for("the backends", WAIT, || async {
        router
            .metrics_text()
            .contains(r#"router_backends{app="shop"} 2"#)
    })
    .await;

    for _ in 0..20 {
        let reply = send(
            router.http_addr(),
            get("shop.localhost", "/")
                .header("x-order", "7")
                .header("x-request-id", "order-7")
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        // Whether it went to the live backend first or after the closing one, it
        // arrives whole: the attempt before the last sends a copy of the headers.
        let seen = &reply.json()["headers"];
        assert_eq!(seen["x-order"], "7", "{}", reply.body);
        assert_eq!(seen["x-request-id"], "order-7");
        assert_eq!(seen["host"], "shop.localhost");
        assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    }
    let gets_closed = closes.load(Ordering::SeqCst);
    assert!(
        gets_closed > 0,
        "p2c never chose the closing backend in 20 GETs"
    );
    assert_eq!(live.hits.load(Ordering::SeqCst), 20);

    // POST: the closing backend may have acted on it, so it is not sent again.
    let mut bad_gateway = 0;
    for _ in 0..20 {
        let req = Request::post("/")
            .header("host", "shop.localhost")
            .body(Full::from("order"))
            .unwrap();
        let reply = send(router.http_addr(), req).await;
        match reply.status {
            StatusCode::OK => {}
            StatusCode::BAD_GATEWAY => bad_gateway += 1,
            other => panic!("unexpected {other}"),
        }
    }
    let posts_closed = closes.load(Ordering::SeqCst) - gets_closed;
    assert!(bad_gateway > 0);
    assert_eq!(
        bad_gateway, posts_closed,
        "every POST the closer saw failed, none was retried"
    );
    assert_eq!(live.hits.load(Ordering::SeqCst), 20 + 20 - bad_gateway);
    router.shutdown().await;
}

#[tokio::test]
async fn a_backend_leaves_the_set_when_its_registration_is_deleted() {
    let p = platform().await;
    p.app("shop").await;
    let (a, b) = (backend("a").await, backend("b").await);
    let reg_a = p.register("shop", "ja", a.addr).await;
    let _reg_b = p.register("shop", "jb", b.addr).await;
    let router = p.router(Limits::default()).await;
    paas_it::wait_for("both backends", WAIT, || async {
        router
            .metrics_text()
            .contains(r#"router_backends{app="shop"} 2"#)
    })
    .await;
    for _ in 0..20 {
        send(
            router.http_addr(),
            get("shop.localhost", "/").body(Full::default()).unwrap(),
        )
        .await;
    }
    assert!(
        a.hits.load(Ordering::SeqCst) > 0 && b.hits.load(Ordering::SeqCst) > 0,
        "both served"
    );

    // `a` keeps running, only its registration goes: it gets no more requests.
    let removed = std::time::Instant::now();
    reg_a.deregister().await.unwrap();
    paas_it::wait_for("a to leave", Duration::from_secs(2), || async {
        router
            .metrics_text()
            .contains(r#"router_backends{app="shop"} 1"#)
    })
    .await;
    eprintln!(
        "backend left the set {:?} after its registration was deleted",
        removed.elapsed()
    );
    let before = a.hits.load(Ordering::SeqCst);
    for _ in 0..30 {
        let reply = send(
            router.http_addr(),
            get("shop.localhost", "/").body(Full::default()).unwrap(),
        )
        .await;
        assert_eq!(reply.backend(), "b");
    }
    assert_eq!(a.hits.load(Ordering::SeqCst), before);
    router.shutdown().await;
}

#[tokio::test]
async fn sticky_cookie_keeps_the_backend_and_falls_back_when_it_is_gone() {
    let p = platform().await;
    p.app("shop").await;
    let (a, b) = (backend("a").await, backend("b").await);
    let reg_a = p.register("shop", "ja", a.addr).await;
    let reg_b = p.register("shop", "jb", b.addr).await;
    p.route("s1", "shop", "sticky.example.com", None, true, None)
        .await;
    let router = p.router(Limits::default()).await;
    paas_it::wait_for("both backends", WAIT, || async {
        router
            .metrics_text()
            .contains(r#"router_backends{app="shop"} 2"#)
    })
    .await;

    let first = send(
        router.http_addr(),
        get("sticky.example.com", "/")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let cookie = first.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(cookie.starts_with("paas_sticky="), "{cookie}");
    let chosen = first.backend();
    for _ in 0..20 {
        let reply = send(
            router.http_addr(),
            get("sticky.example.com", "/")
                .header("cookie", &cookie)
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(reply.backend(), chosen);
        assert!(
            !reply.headers.contains_key("set-cookie"),
            "a valid cookie is not set again"
        );
    }
    // A forged cookie is ignored (and replaced).
    // (The cookie names the chosen backend; point it at the other one.)
    let (from, to) = if chosen == "a" {
        (a.addr, b.addr)
    } else {
        (b.addr, a.addr)
    };
    let forged = cookie.replace(&from.port().to_string(), &to.port().to_string());
    assert_ne!(forged, cookie);
    let reply = send(
        router.http_addr(),
        get("sticky.example.com", "/")
            .header("cookie", &forged)
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert!(reply.headers.contains_key("set-cookie"));
    // Non-sticky routes set no cookie.
    let plain = send(
        router.http_addr(),
        get("shop.localhost", "/").body(Full::default()).unwrap(),
    )
    .await;
    assert!(!plain.headers.contains_key("set-cookie"));

    // The chosen backend goes away: the other serves, with a new cookie.
    let (gone, other) = if chosen == "a" {
        (reg_a, "b")
    } else {
        (reg_b, "a")
    };
    gone.deregister().await.unwrap();
    paas_it::wait_for("one backend", WAIT, || async {
        router
            .metrics_text()
            .contains(r#"router_backends{app="shop"} 1"#)
    })
    .await;
    let reply = send(
        router.http_addr(),
        get("sticky.example.com", "/")
            .header("cookie", &cookie)
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.backend(), other);
    assert!(reply.headers["set-cookie"]
        .to_str()
        .unwrap()
        .starts_with("paas_sticky="));
    router.shutdown().await;
}

#[tokio::test]
async fn websocket_upgrade_is_passed_through() {
    let (_p, _shop, _r, router) = shop_behind_a_router().await;

    let mut stream = TcpStream::connect(router.http_addr()).await.unwrap();
    stream
        .write_all(b"GET /chat HTTP/1.1\r\nHost: shop.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "closed during the response head"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for message in [&b"hello"[..], b"again"] {
        stream.write_all(message).await.unwrap();
        let mut echo = vec![0u8; message.len()];
        stream.read_exact(&mut echo).await.unwrap();
        assert_eq!(echo, message);
    }
    router.shutdown().await;
}

#[tokio::test]
async fn https_by_sni_with_h2_and_http11() {
    let p = platform().await;
    p.app("shop").await;
    let shop = backend("shop").await;
    let _r = p.register("shop", "j1", shop.addr).await;
    let cert = rcgen::generate_simple_self_signed(vec!["secure.example.com".into()]).unwrap();
    let tls = json!({"cert_pem": cert.cert.pem(), "key_pem": cert.key_pair.serialize_pem()});
    p.route("t1", "shop", "secure.example.com", None, false, Some(tls))
        .await;
    let router = p.router(Limits::default()).await;
    paas_it::wait_for("the backend", WAIT, || {
        get_ok(&router, "secure.example.com")
    })
    .await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(router.tls_addr().unwrap())
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("secure.example.com").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        let io = TokioIo::new(tls);
        let resp = if alpn == b"h2" {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let req = Request::get("https://secure.example.com/x")
                .body(Full::<Bytes>::default())
                .unwrap();
            sender.send_request(req).await.unwrap()
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            sender
                .send_request(
                    get("secure.example.com", "/x")
                        .body(Full::<Bytes>::default())
                        .unwrap(),
                )
                .await
                .unwrap()
        };
        assert_eq!(resp.status(), StatusCode::OK, "{alpn:?}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let seen: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
        assert_eq!(seen["headers"]["host"], "secure.example.com");
        assert_eq!(seen["path"], "/x");
    }

    // No certificate for another name: the handshake fails.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(router.tls_addr().unwrap())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("other.example.com").unwrap();
    assert!(connector.connect(name, tcp).await.is_err());
    router.shutdown().await;
}

/// The plain listener also speaks HTTP/2 to a client that starts with its preface (h2c
/// by prior knowledge, as `curl --http2-prior-knowledge` does): the host comes from the
/// `:authority`, and streams on one connection are proxied at once.
#[tokio::test]
async fn plain_listener_serves_h2c_by_prior_knowledge() {
    let (_p, shop, _r, router) = shop_behind_a_router().await;

    let tcp = TcpStream::connect(router.http_addr()).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let requests = (0..4).map(|i| {
        let mut sender = sender.clone();
        async move {
            let req = Request::get(format!("http://shop.localhost/h2/{i}"))
                .body(Full::<Bytes>::default())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.version(), http::Version::HTTP_2);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<Value>(&body).unwrap()
        }
    });
    let seen = futures::future::join_all(requests).await;
    for (i, seen) in seen.iter().enumerate() {
        assert_eq!(seen["backend"], "shop");
        assert_eq!(seen["path"], format!("/h2/{i}"));
        assert_eq!(seen["headers"]["host"], "shop.localhost");
        assert_eq!(seen["headers"]["x-forwarded-proto"], "http");
    }
    assert!(shop.hits.load(Ordering::SeqCst) >= 4);

    // An authority no route knows is a 404 on the stream, not a dead connection.
    let mut sender = sender;
    let req = Request::get("http://nobody.example.com/")
        .body(Full::<Bytes>::default())
        .unwrap();
    assert_eq!(
        sender.send_request(req).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    router.shutdown().await;
}

#[tokio::test]
async fn access_lines_reach_the_log_aggregator_as_syslog() {
    let p = platform().await;
    p.app("shop").await;
    let shop = backend("shop").await;
    let _r = p.register("shop", "j1", shop.addr).await;
    // A syslog receiver standing in for the aggregator's TCP input: collects bytes.
    let syslog = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let syslog_addr = syslog.local_addr().unwrap();
    let received = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = syslog.accept().await {
            let sink = Arc::clone(&sink);
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    let spool = tempfile::tempdir().unwrap();
    let mut config = RouterConfig::new("127.0.0.1:0".parse().unwrap(), "h1");
    config.access_log = Some(paas_router::AccessLogConfig::Ship {
        aggregator: syslog_addr,
        spool_dir: spool.path().join("spool"),
    });
    let router = paas_router::start(&p.coord, config).await.unwrap();
    paas_it::wait_for("the backend", WAIT, || get_ok(&router, "shop.localhost")).await;
    send(
        router.http_addr(),
        get("shop.localhost", "/checkout")
            .header("x-request-id", "req-42")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    paas_it::wait_for("the access line", WAIT, || {
        let text = String::from_utf8_lossy(&received.lock().unwrap()).into_owned();
        async move { text.contains("req-42") }
    })
    .await;
    let text = String::from_utf8_lossy(&received.lock().unwrap()).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("req-42"))
        .unwrap()
        .to_string();
    // RFC 5424: APP-NAME shop, PROCID router.<host>, HOSTNAME <host>-router.
    assert!(line.contains(" h1-router shop router.h1 stdout "), "{line}");
    assert!(
        line.contains(r#"method=GET path="/checkout" host=shop.localhost status=200"#),
        "{line}"
    );
    assert!(line.contains(&format!("backend={}", shop.addr)), "{line}");
    router.shutdown().await;
}

#[tokio::test]
async fn access_lines_go_straight_into_a_local_aggregator() {
    use paas_logshipper::aggregator::Aggregator;
    use paas_logshipper::journal::{Journal, JournalConfig};
    use paas_logshipper::metrics::IngestMetrics;
    use paas_logshipper::store::{Filter, Store, StoreConfig};

    let p = platform().await;
    p.app("shop").await;
    let shop = backend("shop").await;
    let _r = p.register("shop", "j1", shop.addr).await;
    // The aggregator's accept path as `paas up` hands it over: a real journal and store.
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path().join("journal"), JournalConfig::default()).unwrap();
    let store = Arc::new(Store::open(StoreConfig::new(dir.path().join("store"))).unwrap());
    let metrics = IngestMetrics::default();
    let aggregator = Aggregator::new(journal.clone(), Arc::clone(&store), metrics.clone());
    let mut config = RouterConfig::new("127.0.0.1:0".parse().unwrap(), "h1");
    config.access_log = Some(paas_router::AccessLogConfig::Local(aggregator));
    let router = paas_router::start(&p.coord, config).await.unwrap();
    paas_it::wait_for("the backend", WAIT, || get_ok(&router, "shop.localhost")).await;
    for i in 0..20 {
        send(
            router.http_addr(),
            get("shop.localhost", &format!("/item/{i}"))
                .header("x-request-id", format!("local-{i}"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
    }
    let lines = |store: &Store| {
        store
            .tail("shop", 100, &Filter::default())
            .into_iter()
            .filter(|l| l.message.contains("request_id=local-"))
            .collect::<Vec<_>>()
    };
    paas_it::wait_for("the access lines in the store", WAIT, || {
        let n = lines(&store).len();
        async move { n == 20 }
    })
    .await;
    let found = lines(&store);
    // Each worker hands on its own batch: lines of requests served by different
    // workers may come out of order within a window, each with its own time.
    let line = found
        .iter()
        .find(|l| l.message.contains("request_id=local-0 "))
        .expect("the first request's line");
    assert_eq!(line.process_type.as_deref(), Some("router"));
    assert_eq!(line.host.as_deref(), Some("h1-router"));
    assert_eq!(line.job.as_deref(), Some("h1"));
    assert!(
        line.message
            .starts_with(r#"method=GET path="/item/0" host=shop.localhost status=200"#),
        "{}",
        line.message
    );
    // Journaled (so drains get them), each with its own id, and counted as input `router`.
    assert!(journal.stats().last_id >= 20);
    let ids: std::collections::BTreeSet<u64> = found.iter().map(|l| l.id).collect();
    assert_eq!(ids.len(), 20);
    let (received, _) = metrics.input_counters(paas_router::access::LOCAL_INPUT);
    assert!(received.get() >= 20, "{}", received.get());
    router.shutdown().await;
}

/// Writes `chunks` (pausing between them) and reads until the router closes.
async fn raw_exchange(addr: SocketAddr, chunks: &[&[u8]]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    for chunk in chunks {
        stream.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON body of a raw HTTP/1.1 reply, which must be a 200.
fn ok_json(reply: &str) -> Value {
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

#[tokio::test]
async fn proxy_protocol_listener_takes_the_client_from_the_header() {
    let (_p, shop, _r, router) = shop_behind_a_router().await;
    let addr = router.proxy_protocol_addr().unwrap();
    let request = &b"GET /pp HTTP/1.1\r\nHost: shop.localhost\r\nConnection: close\r\n\r\n"[..];

    // v1, header and request in one write.
    let v1 = [
        &b"PROXY TCP4 203.0.113.7 198.51.100.1 5555 80\r\n"[..],
        request,
    ]
    .concat();
    let seen = ok_json(&raw_exchange(addr, &[&v1]).await);
    assert_eq!(seen["headers"]["x-forwarded-for"], "203.0.113.7");
    assert_eq!(seen["headers"]["x-forwarded-port"], "80");

    // v2 (TCP6), the header split across writes.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    v2.extend_from_slice(
        &"2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    v2.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    v2.extend_from_slice(&4000u16.to_be_bytes());
    v2.extend_from_slice(&443u16.to_be_bytes());
    let seen = ok_json(&raw_exchange(addr, &[&v2[..10], &v2[10..], request]).await);
    assert_eq!(seen["headers"]["x-forwarded-for"], "2001:db8::7");
    assert_eq!(seen["headers"]["x-forwarded-port"], "443");

    // No header: closed without an answer; the plain listener ignores no one.
    assert_eq!(raw_exchange(addr, &[request]).await, "");
    let hits = shop.hits.load(Ordering::SeqCst);
    let plain = raw_exchange(router.http_addr(), &[request]).await;
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
    assert_eq!(shop.hits.load(Ordering::SeqCst), hits + 1);
    router.shutdown().await;
}

/// Requests that read one way to the router and another to a backend: two `Host`
/// headers, an absolute-form target naming another host than `Host`, `CONNECT`,
/// `TRACE`, and an `h2c` upgrade (a tunnel past the router if a backend took it).
#[tokio::test]
async fn ambiguous_and_tunnelling_requests_are_refused_or_made_plain() {
    let (_p, shop, _r, router) = shop_behind_a_router().await;
    let addr = router.http_addr();
    let hits = shop.hits.load(Ordering::SeqCst);

    let two_hosts = raw_exchange(
        addr,
        &[b"GET / HTTP/1.1\r\nHost: shop.localhost\r\nHost: other.localhost\r\nConnection: close\r\n\r\n"],
    )
    .await;
    assert!(two_hosts.starts_with("HTTP/1.1 400"), "{two_hosts}");
    assert!(
        two_hosts.contains("more than one Host header"),
        "{two_hosts}"
    );
    for method in ["CONNECT shop.localhost:443", "TRACE /"] {
        let request =
            format!("{method} HTTP/1.1\r\nHost: shop.localhost\r\nConnection: close\r\n\r\n");
        let reply = raw_exchange(addr, &[request.as_bytes()]).await;
        assert!(reply.starts_with("HTTP/1.1 405"), "{method}: {reply}");
        assert!(
            reply.to_ascii_lowercase().contains("\r\nallow: get, head,"),
            "{method}: {reply}"
        );
    }
    assert_eq!(
        shop.hits.load(Ordering::SeqCst),
        hits,
        "refused requests reached the backend"
    );

    // An absolute-form target wins over Host (RFC 9112 3.2.2), user info dropped: routed
    // by it, and the backend is told it as its Host.
    for target in [
        "http://shop.localhost/abs",
        "http://someone@shop.localhost:8080/abs",
    ] {
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: nope.localhost\r\nConnection: close\r\n\r\n");
        let seen = ok_json(&raw_exchange(addr, &[request.as_bytes()]).await);
        assert_eq!(seen["path"], "/abs", "{target}");
        let host = target.split('/').nth(2).unwrap();
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        assert_eq!(seen["headers"]["host"], host, "{target}");
    }

    // h2c: forwarded as a plain request (the test backend would answer any upgrade 101).
    let seen = ok_json(
        &raw_exchange(
            addr,
            &[b"GET /h2c HTTP/1.1\r\nHost: shop.localhost\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"],
        )
        .await,
    );
    for gone in ["upgrade", "connection", "http2-settings"] {
        assert!(
            seen["headers"].get(gone).is_none(),
            "{gone} forwarded: {seen}"
        );
    }
    router.shutdown().await;
}

#[tokio::test]
async fn send_failures_are_classified_for_the_retry_verdict() {
    use paas_router::retry::Failure;
    use paas_router::upstream::{self, BackendConns, ConnSettings};
    let settings = ConnSettings {
        connect_timeout: Duration::from_secs(2),
        ack_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(60),
        open: BackendConns::new(100, Default::default()),
    };
    let settings = &settings;
    let send = |addr: SocketAddr| async move {
        let backend = Arc::new(paas_router::state::Backend::new(addr, "j".into()));
        let req = Request::get("/")
            .header("host", "shop.localhost")
            .body(Full::default())
            .unwrap();
        upstream::send(&backend, req, settings).await.map(|_| ())
    };
    // A backend that answers garbage.
    let garbage = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let garbage_addr = garbage.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = garbage.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(b"NOT HTTP AT ALL\r\n\r\n").await;
        }
    });
    let (closer, _) = closing_backend().await;
    for (addr, expected) in [
        (refusing_addr().await, Failure::Connect),
        (closer, Failure::ClosedBeforeResponse),
        (garbage_addr, Failure::Other),
    ] {
        let err = send(addr).await.expect_err("must fail");
        assert_eq!(paas_router::proxy::classify(&err), expected, "{err:?}");
    }
}

/// A TCP backend that answers each line with `<name> <line>`.
async fn echo_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let reply = format!("{name} {}", String::from_utf8_lossy(&buf[..n]));
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// One line through a TCP route: the reply, or the error.
async fn tcp_exchange(addr: SocketAddr, line: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(line.as_bytes()).await?;
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("no reply"))??;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test]
async fn tcp_routes_forward_connections_to_the_apps_web_jobs() {
    let p = platform().await;
    p.app("tcpapp").await;
    let _a = p.register("tcpapp", "j1", echo_backend("one").await).await;
    let _b = p.register("tcpapp", "j2", echo_backend("two").await).await;
    // Its own loopback address, so the fixed port is free whatever else runs.
    let ip: std::net::IpAddr = "127.0.0.77".parse().unwrap();
    let mut config = RouterConfig::new("127.0.0.1:0".parse().unwrap(), "h1");
    config.tcp_ip = Some(ip);
    let router = paas_router::start(&p.coord, config).await.unwrap();
    let route = json!({"id": "t1", "app": "tcpapp", "domain": "", "tcp_port": 3456, "sticky": false, "created_at": "2026-12-01T00:00:00Z"});
    let rev = p.coord.create(&keys::route("t1"), &route).await.unwrap();
    let addr = SocketAddr::new(ip, 3456);

    let deadline = tokio::time::Instant::now() + WAIT;
    while tcp_exchange(addr, "hello").await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "TCP route never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Connections spread over both jobs, each one byte for byte.
    let mut seen = BTreeMap::new();
    for i in 0..40 {
        let reply = tcp_exchange(addr, &format!("ping{i}")).await.unwrap();
        let (name, echoed) = reply.split_once(' ').unwrap();
        assert_eq!(echoed, format!("ping{i}"));
        *seen.entry(name.to_string()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both backends serve: {seen:?}");

    // A registered backend that refuses costs a retry, never a failed connection.
    let _dead = p.register("tcpapp", "j3", refusing_addr().await).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..30 {
        let reply = tcp_exchange(addr, &format!("again{i}")).await;
        assert!(
            reply
                .as_ref()
                .is_ok_and(|r| r.ends_with(&format!("again{i}"))),
            "connection {i}: {reply:?}"
        );
    }

    // The route goes: so does the listener.
    p.coord.delete(&keys::route("t1"), rev).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "TCP route still listens"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    router.shutdown().await;
}

/// The router's metric `name` (no labels) as its text shows it.
fn metric(router: &Router, name: &str) -> Option<String> {
    router
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_string))
}

/// Waits until the router counts `n` open client connections.
async fn wait_for_connections(router: &Router, n: usize) {
    let want = n.to_string();
    paas_it::wait_for(&format!("{n} client connections"), WAIT, || {
        let open = metric(router, "router_client_connections");
        let matches = open.as_deref() == Some(want.as_str());
        async move { matches }
    })
    .await;
}

/// Whether the router closes `stream` without a byte (within `WAIT`).
async fn closed_unanswered(mut stream: TcpStream) -> bool {
    let mut out = Vec::new();
    matches!(
        tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// One client address holds at most its limit of connections, whichever listener (or
/// TCP route) they came in on; behind a PROXY header, the header's client is counted.
#[tokio::test]
async fn connections_from_one_client_address_are_limited() {
    let (p, _shop, _r, router) = shop_behind_a_router_with(Limits {
        max_connections_per_client: 3,
        ..Limits::default()
    })
    .await;
    // A TCP route on the router's address (127.0.0.1): its connections count too.
    p.app("tcpapp").await;
    let _echo = p.register("tcpapp", "j9", echo_backend("tcp").await).await;
    let route = json!({"id": "t9", "app": "tcpapp", "domain": "", "tcp_port": 3457, "sticky": false, "created_at": "2026-12-01T00:00:00Z"});
    p.coord.create(&keys::route("t9"), &route).await.unwrap();
    let tcp_route = SocketAddr::new(router.http_addr().ip(), 3457);
    paas_it::wait_for("the TCP route", WAIT, || async {
        tcp_exchange(tcp_route, "up").await.is_ok()
    })
    .await;
    wait_for_connections(&router, 0).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(router.http_addr()).await.unwrap());
    }
    wait_for_connections(&router, 3).await;

    // A fourth from the same address, on any listener: closed without an answer.
    for fourth in [router.http_addr(), router.tls_addr().unwrap()] {
        let fourth = TcpStream::connect(fourth).await.unwrap();
        assert!(
            closed_unanswered(fourth).await,
            "a fourth connection was kept"
        );
    }
    assert_eq!(
        metric(&router, "router_connections_refused_total").as_deref(),
        Some("2")
    );
    wait_for_connections(&router, 3).await;

    // The held ones are served; once one closes, another is taken.
    let request = &b"GET / HTTP/1.1\r\nHost: shop.localhost\r\nConnection: close\r\n\r\n"[..];
    let mut first = held.remove(0);
    first.write_all(request).await.unwrap();
    let mut reply = Vec::new();
    first.read_to_end(&mut reply).await.unwrap();
    ok_json(&String::from_utf8_lossy(&reply));
    wait_for_connections(&router, 2).await;
    ok_json(&raw_exchange(router.http_addr(), &[request]).await);
    wait_for_connections(&router, 2).await;
    assert_eq!(tcp_exchange(tcp_route, "hi").await.unwrap(), "tcp hi");

    // Behind a PROXY header the client it names is counted, not the balancer.
    let proxied = router.proxy_protocol_addr().unwrap();
    let header = &b"PROXY TCP4 203.0.113.7 198.51.100.1 5555 80\r\n"[..];
    let mut from_one = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(proxied).await.unwrap();
        stream.write_all(header).await.unwrap();
        // Answered, so its header was read and its place taken: the workers read the
        // headers of connections in parallel, and without this the fourth's could be
        // read first and one of these three be the one refused.
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: shop.localhost\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        from_one.push(stream);
    }
    wait_for_connections(&router, 5).await;
    let mut fourth = TcpStream::connect(proxied).await.unwrap();
    fourth.write_all(header).await.unwrap();
    assert!(
        closed_unanswered(fourth).await,
        "a fourth from 203.0.113.7 was kept"
    );
    assert_eq!(
        metric(&router, "router_connections_refused_total").as_deref(),
        Some("3")
    );
    drop((held, from_one));
    wait_for_connections(&router, 0).await;
    router.shutdown().await;
}

/// A connection that sends nothing is closed after the idle timeout; one that keeps
/// sending requests is not; one whose client stopped reading a response is dropped
/// after twice the timeout (it never finishes otherwise).
#[tokio::test]
async fn silent_client_connections_are_closed() {
    let timeout = Duration::from_secs(2);
    let (_p, _shop, _r, router) = shop_behind_a_router_with(Limits {
        client_idle_timeout: timeout,
        ..Limits::default()
    })
    .await;
    let addr = router.http_addr();
    let silent = async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        assert!(
            closed_unanswered(stream).await,
            "a silent connection stayed open"
        );
        started.elapsed()
    };
    let busy = async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        // Requests every 250 ms for longer than a timeout and a quarter.
        for _ in 0..14 {
            let resp = sender
                .send_request(get("shop.localhost", "/").body(Full::default()).unwrap())
                .await
                .expect("a connection in use was closed");
            assert_eq!(resp.status(), StatusCode::OK);
            resp.into_body().collect().await.unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let (took, ()) = tokio::join!(silent, busy);
    assert!(took >= timeout, "closed after {took:?}");
    wait_for_connections(&router, 0).await;

    // A client that asks for 64 MiB and reads none of it.
    let mut stuck = TcpStream::connect(addr).await.unwrap();
    stuck
        .write_all(b"GET /big?size=67108864 HTTP/1.1\r\nHost: shop.localhost\r\n\r\n")
        .await
        .unwrap();
    wait_for_connections(&router, 1).await;
    wait_for_connections(&router, 0).await;
    let mut got = Vec::new();
    let _ = stuck.read_to_end(&mut got).await;
    assert!(
        got.len() < 64 << 20,
        "the whole body arrived: {} bytes",
        got.len()
    );
    router.shutdown().await;
}

/// A request waiting for a slow backend's answer is not a silent client: it gets its
/// answer after more than twice the idle timeout (the backend timeout bounds the wait).
#[tokio::test]
async fn a_request_on_a_slow_backend_outlives_the_idle_timeout() {
    let timeout = Duration::from_secs(1);
    let (_p, _shop, _r, router) = shop_behind_a_router_with(Limits {
        client_idle_timeout: timeout,
        ..Limits::default()
    })
    .await;
    let started = std::time::Instant::now();
    let answer = send(
        router.http_addr(),
        get("shop.localhost", "/slow?wait=3500")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(started.elapsed() >= Duration::from_millis(3500));
    router.shutdown().await;
}

/// A request that needs a backend connection beyond the router's limit gets a 503 with
/// `Retry-After`; once a connection closes, the next one is served.
#[tokio::test]
async fn backend_connections_beyond_the_limit_get_503() {
    let (p, _shop, shop_registration, router) = shop_behind_a_router_with(Limits {
        max_backend_connections: 1,
        ..Limits::default()
    })
    .await;
    // shop's kept-alive connection holds the one place.
    assert_eq!(
        metric(&router, "router_backend_connections").as_deref(),
        Some("1")
    );
    p.app("cart").await;
    let cart = backend("cart").await;
    let _cart_registration = p.register("cart", "j2", cart.addr).await;
    let cart_get = || {
        send(
            router.http_addr(),
            get("cart.localhost", "/").body(Full::default()).unwrap(),
        )
    };
    paas_it::wait_for("cart's route", WAIT, || async {
        cart_get().await.status != StatusCode::NOT_FOUND
    })
    .await;
    let refused = cart_get().await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    assert_eq!(refused.headers["retry-after"], "1");
    assert_eq!(cart.hits.load(Ordering::SeqCst), 0);

    // shop's backend leaves the set, its pooled connection with it.
    drop(shop_registration);
    paas_it::wait_for("cart served", WAIT, || async {
        cart_get().await.status == StatusCode::OK
    })
    .await;
    assert_eq!(
        metric(&router, "router_backend_connections").as_deref(),
        Some("1")
    );
    router.shutdown().await;
}
