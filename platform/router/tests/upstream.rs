//! Backend connections (`paas_router::upstream`) against real backends on 127.0.0.1:
//! keep-alive reuse, and the keep-alive race (an idle connection the backend closed).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use paas_router::state::Backend;
use paas_router::upstream::{self, BackendConns, ConnSettings, SendError};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

fn settings() -> ConnSettings {
    settings_within(1000)
}

/// Settings with at most `max` backend connections.
fn settings_within(max: usize) -> ConnSettings {
    ConnSettings {
        connect_timeout: Duration::from_secs(2),
        ack_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(60),
        open: BackendConns::new(max, Gauge::default()),
    }
}

fn request(method: &str, path: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "shop.localhost")
        .body(Full::from(body))
        .unwrap()
}

/// A keep-alive HTTP/1.1 backend: `/empty` answers 204, anything else 200 with the
/// method and path; counts the connections it accepted.
async fn keep_alive_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let mut resp = Response::new(Full::new(Bytes::from(format!(
                        "{} {}",
                        req.method(),
                        req.uri().path()
                    ))));
                    if req.uri().path() == "/empty" {
                        *resp.body_mut() = Full::default();
                        *resp.status_mut() = StatusCode::NO_CONTENT;
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn sequential_requests_share_one_kept_alive_connection() {
    let (addr, accepted) = keep_alive_backend().await;
    let backend = Arc::new(Backend::new(addr, "web.1".into()));
    for i in 0..20 {
        let path = if i % 3 == 2 { "/empty" } else { "/hello" };
        let resp = upstream::send(&backend, request("GET", path, ""), &settings())
            .await
            .unwrap();
        if path == "/empty" {
            // A body with nothing to read, dropped unread (as a server does for 204).
            assert_eq!(resp.status(), StatusCode::NO_CONTENT);
            drop(resp);
        } else {
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"GET /hello");
        }
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(backend.pool().idle_count(), 1);
}

#[tokio::test]
async fn a_response_cut_short_does_not_return_its_connection() {
    let (addr, accepted) = keep_alive_backend().await;
    let backend = Arc::new(Backend::new(addr, "web.1".into()));
    let resp = upstream::send(&backend, request("GET", "/hello", ""), &settings())
        .await
        .unwrap();
    drop(resp);
    assert_eq!(backend.pool().idle_count(), 0);
    let resp = upstream::send(&backend, request("GET", "/hello", ""), &settings())
        .await
        .unwrap();
    resp.into_body().collect().await.unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_idle_connection_the_backend_closed_does_not_fail_a_post() {
    // Each connection answers one request (keep-alive, by HTTP/1.1's default), then the
    // backend closes it: the connection waits in the pool, closed by its other end.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, mut closed) = mpsc::unbounded_channel::<()>();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.ends_with(b"order") {
                    let n = stream.read(&mut buf).await.unwrap();
                    assert!(n > 0, "request cut short");
                    seen.extend_from_slice(&buf[..n]);
                }
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                drop(stream);
                let _ = closed_tx.send(());
            });
        }
    });
    let backend = Arc::new(Backend::new(addr, "web.1".into()));
    for _ in 0..3 {
        let resp = upstream::send(&backend, request("POST", "/orders", "order"), &settings())
            .await
            .expect("a POST after the backend closed its idle connection");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        closed.recv().await.unwrap();
        // Let the backend's FIN reach this side before the next request takes the
        // connection from the pool.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn backend_connections_are_counted_and_refused_beyond_the_limit() {
    let settings = settings_within(1);
    let (first_addr, _) = keep_alive_backend().await;
    let (second_addr, accepted) = keep_alive_backend().await;
    let first = Arc::new(Backend::new(first_addr, "web.1".into()));
    let second = Arc::new(Backend::new(second_addr, "web.2".into()));
    let resp = upstream::send(&first, request("GET", "/hello", ""), &settings)
        .await
        .unwrap();
    resp.into_body().collect().await.unwrap();
    assert_eq!(settings.open.open(), 1, "the pooled connection counts");

    // Another backend needs a connection of its own: refused, nothing sent.
    let refused = upstream::send(&second, request("GET", "/hello", ""), &settings).await;
    assert!(
        matches!(refused, Err(SendError::Busy)),
        "{:?}",
        refused.err()
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    // The first backend's pooled one still serves.
    let resp = upstream::send(&first, request("GET", "/again", ""), &settings)
        .await
        .unwrap();
    resp.into_body().collect().await.unwrap();

    // Its backend gone (the registration, and the pool with it), the place is free.
    drop(first);
    assert_eq!(settings.open.open(), 0);
    let resp = upstream::send(&second, request("GET", "/hello", ""), &settings)
        .await
        .unwrap();
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "GET /hello"
    );
}
