//! The controller API against a real etcd: names, releases, tokens, resources, errors.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use paas_controller::{Controller, Provider, ProviderError, Providers, Provisioned};
use paas_model::keys;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A provider that hands out numbered fake credentials and records what it was asked.
#[derive(Default)]
struct RecordingProvider {
    calls: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Provider for RecordingProvider {
    async fn provision(
        &self,
        app: &str,
        id: &str,
        _options: &paas_appliance::provider::Options,
    ) -> Result<Provisioned, ProviderError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("provision {app} {id}"));
        let mut env = BTreeMap::new();
        env.insert("DATABASE_URL".to_string(), format!("test://{id}"));
        Ok(Provisioned {
            env,
            data: json!({ "db": id }),
        })
    }

    async fn deprovision(&self, app: &str, id: &str, data: &Value) -> Result<(), ProviderError> {
        assert_eq!(data["db"], id);
        self.calls
            .lock()
            .unwrap()
            .push(format!("deprovision {app} {id}"));
        Ok(())
    }
}

struct Api {
    _etcd: paas_it::EtcdServer,
    url: String,
    admin: String,
    http: reqwest::Client,
    provider: Arc<RecordingProvider>,
}

impl Api {
    async fn start() -> Api {
        let etcd = paas_it::EtcdServer::start().expect("etcd");
        let provider = Arc::new(RecordingProvider::default());
        let mut providers = Providers::default();
        providers.register("testdb", provider.clone());
        let controller = Controller::connect(&[etcd.endpoint()], "test")
            .await
            .expect("connect")
            .with_providers(providers)
            .with_max_artifact_bytes(1 << 20);
        let admin = paas_controller::auth::generate_secret().secret;
        controller.ensure_admin_token(&admin).await.unwrap();
        // Idempotent at every start.
        controller.ensure_admin_token(&admin).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, controller.router()).await });
        Api {
            _etcd: etcd,
            url,
            admin,
            http: reqwest::Client::new(),
            provider,
        }
    }

    async fn call(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON reply {text:?}"))
        };
        (status, value)
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(Some(&self.admin.clone()), method, path, body)
            .await
    }
}

fn assert_error(reply: &(StatusCode, Value), status: StatusCode, code: &str, needle: &str) {
    assert_eq!(reply.0, status, "{:?}", reply.1);
    assert_eq!(reply.1["error"]["code"], code, "{:?}", reply.1);
    let msg = reply.1["error"]["message"].as_str().unwrap();
    assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
}

#[tokio::test]
async fn apps_lifecycle_and_name_rules() {
    let api = Api::start().await;
    let r = api
        .admin("POST", "/apps", Some(json!({"name": "shop"})))
        .await;
    assert_eq!(r.0, StatusCode::CREATED);
    assert_eq!(r.1["name"], "shop");
    assert_eq!(r.1["release"], 1);

    assert_error(
        &api.admin("POST", "/apps", Some(json!({"name": "shop"})))
            .await,
        StatusCode::CONFLICT,
        "conflict",
        "already exists",
    );
    for bad in [
        "Shop",
        "2shop",
        "",
        "a234567890123456789012345678901",
        "sh_op",
    ] {
        assert_error(
            &api.admin("POST", "/apps", Some(json!({"name": bad}))).await,
            StatusCode::BAD_REQUEST,
            "invalid",
            "invalid app name",
        );
    }
    assert_error(
        &api.admin("POST", "/apps", Some(json!({"nom": "x"}))).await,
        StatusCode::BAD_REQUEST,
        "invalid",
        "invalid request body",
    );

    // A malformed body is a JSON 400, not a plain-text one.
    let resp = api
        .http
        .post(format!("{}/apps", api.url))
        .bearer_auth(&api.admin)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid");

    api.admin("POST", "/apps", Some(json!({"name": "blog"})))
        .await;
    let (_, list) = api.admin("GET", "/apps", None).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["blog", "shop"]);

    let (s, info) = api.admin("GET", "/apps/shop", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(info["release"], 1);

    assert_eq!(
        api.admin("DELETE", "/apps/shop", None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_error(
        &api.admin("GET", "/apps/shop", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "shop",
    );
    assert_error(
        &api.admin("DELETE", "/apps/shop", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "shop",
    );
    assert_error(
        &api.admin("GET", "/apps/shop/releases", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "shop",
    );
    // The name is free again, with fresh history.
    let r = api
        .admin("POST", "/apps", Some(json!({"name": "shop"})))
        .await;
    assert_eq!(r.0, StatusCode::CREATED);
    let (_, releases) = api.admin("GET", "/apps/shop/releases", None).await;
    assert_eq!(releases.as_array().unwrap().len(), 1);
    assert_error(
        &api.admin("GET", "/no/such/thing", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "endpoint",
    );
    assert_error(
        &api.admin("POST", "/apps", Some(json!({"name": "paas-postgres2"})))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid",
        "reserved",
    );
}

#[tokio::test]
async fn env_changes_make_numbered_releases_and_rollback() {
    let api = Api::start().await;
    api.admin("POST", "/apps", Some(json!({"name": "shop"})))
        .await;
    let (s, rel) = api
        .admin(
            "PATCH",
            "/apps/shop/env",
            Some(json!({"set": {"A": "1", "B": "two=2"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(rel["version"], 2);
    assert_eq!(rel["description"], "Set A, B");
    let (_, rel) = api
        .admin(
            "PATCH",
            "/apps/shop/env",
            Some(json!({"unset": ["A"], "set": {"C": "3"}})),
        )
        .await;
    assert_eq!(rel["version"], 3);
    let (_, env) = api.admin("GET", "/apps/shop/env", None).await;
    assert_eq!(env, json!({"B": "two=2", "C": "3"}));

    assert_error(
        &api.admin(
            "PATCH",
            "/apps/shop/env",
            Some(json!({"set": {"1BAD": "x"}})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid",
        "1BAD",
    );
    assert_error(
        &api.admin("PATCH", "/apps/shop/env", Some(json!({}))).await,
        StatusCode::BAD_REQUEST,
        "invalid",
        "nothing to change",
    );
    assert_error(
        &api.admin("PATCH", "/apps/nope/env", Some(json!({"set": {"A": "1"}})))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        "nope",
    );

    // Rollback without a version goes to the previous release, as a new release.
    let (s, rel) = api
        .admin("POST", "/apps/shop/rollback", Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(rel["version"], 4);
    assert_eq!(rel["description"], "Rollback to v2");
    let (_, env) = api.admin("GET", "/apps/shop/env", None).await;
    assert_eq!(env, json!({"A": "1", "B": "two=2"}));
    let (_, rel) = api
        .admin("POST", "/apps/shop/rollback", Some(json!({"version": 1})))
        .await;
    assert_eq!(rel["version"], 5);
    let (_, env) = api.admin("GET", "/apps/shop/env", None).await;
    assert_eq!(env, json!({}));
    assert_error(
        &api.admin("POST", "/apps/shop/rollback", Some(json!({"version": 99})))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        "v99",
    );

    // Old releases are untouched.
    let (_, v2) = api.admin("GET", "/apps/shop/releases/v2", None).await;
    assert_eq!(v2["env"], json!({"A": "1", "B": "two=2"}));
    let (_, list) = api.admin("GET", "/apps/shop/releases", None).await;
    let versions: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [5, 4, 3, 2, 1]);
}

#[tokio::test]
async fn concurrent_env_changes_are_all_kept() {
    let api = Arc::new(Api::start().await);
    api.admin("POST", "/apps", Some(json!({"name": "shop"})))
        .await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("K{i}");
            api.admin(
                "PATCH",
                "/apps/shop/env",
                Some(json!({"set": {key: i.to_string()}})),
            )
            .await
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        let (s, rel) = t.await.unwrap();
        assert_eq!(s, StatusCode::CREATED, "{rel}");
        versions.push(rel["version"].as_u64().unwrap());
    }
    versions.sort();
    assert_eq!(versions, (2..14).collect::<Vec<u64>>());
    let (_, env) = api.admin("GET", "/apps/shop/env", None).await;
    assert_eq!(env.as_object().unwrap().len(), 12, "{env}");
}

#[tokio::test]
async fn tokens_authenticate_scope_and_revoke() {
    let api = Api::start().await;
    api.admin("POST", "/apps", Some(json!({"name": "shop"})))
        .await;
    api.admin("POST", "/apps", Some(json!({"name": "blog"})))
        .await;

    assert_error(
        &api.call(None, "GET", "/apps", None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing",
    );
    assert_error(
        &api.call(Some("paas_wrong"), "GET", "/apps", None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "invalid or revoked",
    );
    let resp = api
        .http
        .get(format!("{}/apps", api.url))
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        api.call(None, "GET", "/health", None).await.0,
        StatusCode::OK
    );

    let (s, created) = api
        .admin(
            "POST",
            "/tokens",
            Some(json!({"app": "shop", "description": "ci"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let scoped = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert_error(
        &api.admin("POST", "/tokens", Some(json!({"app": "nope"})))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        "nope",
    );

    // The scoped token sees only its app; others look absent.
    let (_, list) = api.call(Some(&scoped), "GET", "/apps", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "shop");
    assert_eq!(
        api.call(Some(&scoped), "GET", "/apps/shop", None).await.0,
        StatusCode::OK
    );
    let hidden = api.call(Some(&scoped), "GET", "/apps/blog", None).await;
    let missing = api.call(Some(&scoped), "GET", "/apps/zzz", None).await;
    assert_error(&hidden, StatusCode::NOT_FOUND, "not_found", "blog");
    assert_eq!(
        hidden.1["error"]["message"]
            .as_str()
            .unwrap()
            .replace("blog", "X"),
        missing.1["error"]["message"]
            .as_str()
            .unwrap()
            .replace("zzz", "X")
    );
    assert_error(
        &api.call(
            Some(&scoped),
            "PATCH",
            "/apps/blog/env",
            Some(json!({"set": {"A": "1"}})),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        "blog",
    );
    assert_eq!(
        api.call(
            Some(&scoped),
            "PATCH",
            "/apps/shop/env",
            Some(json!({"set": {"A": "1"}}))
        )
        .await
        .0,
        StatusCode::CREATED
    );
    assert_error(
        &api.call(Some(&scoped), "POST", "/apps", Some(json!({"name": "x"})))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "admin",
    );
    assert_error(
        &api.call(Some(&scoped), "GET", "/tokens", None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "admin",
    );
    assert_error(
        &api.call(Some(&scoped), "DELETE", "/apps/shop", None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "admin",
    );

    // Listed without secrets; revocation is immediate.
    let (_, tokens) = api.admin("GET", "/tokens", None).await;
    assert!(tokens
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t.get("token").is_none()));
    assert!(!tokens.to_string().contains(&scoped));
    assert_eq!(
        api.admin("DELETE", &format!("/tokens/{id}"), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_error(
        &api.call(Some(&scoped), "GET", "/apps/shop", None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "revoked",
    );
    assert_error(
        &api.admin("DELETE", &format!("/tokens/{id}"), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
        &id,
    );

    // Destroying an app revokes the tokens scoped to it.
    let (_, created) = api
        .admin("POST", "/tokens", Some(json!({"app": "blog"})))
        .await;
    let blog_token = created["token"].as_str().unwrap().to_string();
    assert_eq!(
        api.admin("DELETE", "/apps/blog", None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.call(Some(&blog_token), "GET", "/apps", None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn resources_go_through_providers_and_releases() {
    let api = Api::start().await;
    api.admin("POST", "/apps", Some(json!({"name": "shop"})))
        .await;
    assert_error(
        &api.admin(
            "POST",
            "/apps/shop/resources",
            Some(json!({"kind": "oracle"})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid",
        "available kinds: testdb",
    );
    assert_error(
        &api.admin(
            "POST",
            "/apps/nope/resources",
            Some(json!({"kind": "testdb"})),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        "nope",
    );

    let (s, r) = api
        .admin(
            "POST",
            "/apps/shop/resources",
            Some(json!({"kind": "testdb"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("testdb-"));
    let (_, env) = api.admin("GET", "/apps/shop/env", None).await;
    assert_eq!(env["DATABASE_URL"], format!("test://{id}"));
    let (_, list) = api.admin("GET", "/apps/shop/resources", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (_, info) = api.admin("GET", "/apps/shop/releases/2", None).await;
    assert!(info["description"].as_str().unwrap().contains(&id));

    assert_eq!(
        api.admin("DELETE", &format!("/apps/shop/resources/{id}"), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let (_, env) = api.admin("GET", "/apps/shop/env", None).await;
    assert!(env.get("DATABASE_URL").is_none());
    assert_error(
        &api.admin("DELETE", &format!("/apps/shop/resources/{id}"), None)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        &id,
    );

    // Destroying the app deprovisions what is left.
    let (_, r2) = api
        .admin(
            "POST",
            "/apps/shop/resources",
            Some(json!({"kind": "testdb"})),
        )
        .await;
    let id2 = r2["id"].as_str().unwrap().to_string();
    api.admin("DELETE", "/apps/shop", None).await;
    let calls = api.provider.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            format!("provision shop {id}"),
            format!("deprovision shop {id}"),
            format!("provision shop {id2}"),
            format!("deprovision shop {id2}")
        ]
    );
}

#[tokio::test]
async fn releases_formations_and_jobs() {
    let api = Api::start().await;
    api.admin("POST", "/apps", Some(json!({"name": "shop"})))
        .await;
    api.admin("PATCH", "/apps/shop/env", Some(json!({"set": {"A": "1"}})))
        .await;

    // Content-addressed artifact upload.
    let tarball = b"\x1f\x8b not really a tarball, but bytes".to_vec();
    let resp = api
        .http
        .put(format!("{}/artifacts", api.url))
        .bearer_auth(&api.admin)
        .body(tarball.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let artifact: Value = resp.json().await.unwrap();
    assert_eq!(artifact["size"], tarball.len());
    assert_eq!(artifact["sha256"].as_str().unwrap().len(), 64);
    let resp = api
        .http
        .put(format!("{}/artifacts", api.url))
        .body(tarball)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // One byte over the limit (1 MiB here): 413, streamed bodies included.
    let resp = api
        .http
        .put(format!("{}/artifacts", api.url))
        .bearer_auth(&api.admin)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(
            (0..17).map(|_| Ok::<_, std::io::Error>(vec![0u8; 64 * 1024])),
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_large", "{body}");

    assert_error(
        &api.admin(
            "POST",
            "/apps/shop/releases",
            Some(json!({"processes": {"Web!": "x"}})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid",
        "process type",
    );
    assert_error(
        &api.admin(
            "POST",
            "/apps/shop/releases",
            Some(json!({"processes": {"web": "x"}, "artifact": {"sha256": "00", "size": 1}})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid",
        "not uploaded",
    );
    let (s, rel) = api.admin("POST", "/apps/shop/releases", Some(json!({"processes": {"web": "python3 -m http.server $PORT", "worker": "sleep 1000"}, "artifact": artifact}))).await;
    assert_eq!(s, StatusCode::CREATED, "{rel}");
    assert_eq!(rel["version"], 3);
    assert_eq!(rel["env"], json!({"A": "1"}), "env is carried over");
    // An env change keeps the processes and code.
    let (_, rel) = api
        .admin("PATCH", "/apps/shop/env", Some(json!({"set": {"B": "2"}})))
        .await;
    assert_eq!(rel["processes"]["web"], "python3 -m http.server $PORT");
    assert_eq!(rel["artifact"], artifact);

    assert_error(
        &api.admin(
            "PUT",
            "/apps/shop/formation",
            Some(json!({"processes": {"db": 1}})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid",
        "no process type \"db\"",
    );
    let (s, f) = api
        .admin(
            "PUT",
            "/apps/shop/formation",
            Some(json!({"processes": {"web": 3, "worker": 1}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{f}");
    let (_, f) = api
        .admin(
            "PUT",
            "/apps/shop/formation",
            Some(json!({"processes": {"worker": 0}})),
        )
        .await;
    assert_eq!(f["processes"], json!({"web": 3}));
    let (_, f) = api.admin("GET", "/apps/shop/formation", None).await;
    assert_eq!(f["processes"], json!({"web": 3}));

    // Limits per type: set without changing counts, kept by a later count change,
    // cleared with an empty object; nonsense refused.
    let (s, f) = api
        .admin(
            "PUT",
            "/apps/shop/formation",
            Some(json!({"limits": {"web": {"memory": 536870912, "cpu_millis": 500}}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{f}");
    assert_eq!(f["processes"], json!({"web": 3}));
    assert_eq!(
        f["limits"]["web"],
        json!({"memory": 536870912, "cpu_millis": 500})
    );
    let (_, f) = api
        .admin(
            "PUT",
            "/apps/shop/formation",
            Some(json!({"processes": {"web": 2}})),
        )
        .await;
    assert_eq!(f["limits"]["web"]["memory"], 536870912, "{f}");
    assert_error(
        &api.admin(
            "PUT",
            "/apps/shop/formation",
            Some(json!({"limits": {"web": {"memory": 4096}}})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid",
        "at least 16 MiB",
    );
    assert_error(
        &api.admin(
            "PUT",
            "/apps/shop/formation",
            Some(json!({"limits": {"web": {"cpu_millis": 1}}})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid",
        "between 0.01 and 64",
    );
    assert_error(
        &api.admin(
            "PUT",
            "/apps/shop/formation",
            Some(json!({"limits": {"db": {"memory": 536870912}}})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid",
        "no process type \"db\"",
    );
    let (_, f) = api
        .admin(
            "PUT",
            "/apps/shop/formation",
            Some(json!({"processes": {"web": 3}, "limits": {"web": {}}})),
        )
        .await;
    assert_eq!(f.get("limits"), None, "{f}");

    // Jobs as the scheduler and a host would write them.
    let coord = paas_coord::Coord::connect(
        &[api._etcd.endpoint()],
        "test",
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    let job = json!({"id": "j1", "app": "shop", "release": 4, "process_type": "web", "host": "h1", "created_at": "2026-01-01T00:00:00Z"});
    coord
        .create(&keys::placement("h1", "j1"), &job)
        .await
        .unwrap();
    let other = json!({"id": "j2", "app": "blog", "release": 1, "process_type": "web", "host": "h1", "created_at": "2026-01-01T00:00:00Z"});
    coord
        .create(&keys::placement("h1", "j2"), &other)
        .await
        .unwrap();
    let (_, jobs) = api.admin("GET", "/apps/shop/jobs", None).await;
    assert_eq!(jobs.as_array().unwrap().len(), 1);
    assert_eq!(jobs[0]["state"], "starting");
    let status = json!({"id": "j1", "app": "shop", "release": 4, "process_type": "web", "host": "h1", "state": "up", "pid": 42, "port": 5000, "restarts": 2, "message": ""});
    coord
        .create(&keys::job_status("j1"), &status)
        .await
        .unwrap();
    let (_, jobs) = api.admin("GET", "/apps/shop/jobs", None).await;
    assert_eq!(jobs[0]["state"], "up");
    assert_eq!(jobs[0]["restarts"], 2);

    assert_error(
        &api.admin("DELETE", "/apps/shop/jobs/j2", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
        "j2",
    );
    assert_eq!(
        api.admin("DELETE", "/apps/shop/jobs/j1", None).await.0,
        StatusCode::NO_CONTENT
    );
    assert!(coord
        .get::<Value>(&keys::placement("h1", "j1"))
        .await
        .unwrap()
        .is_none());
    assert!(coord
        .get::<Value>(&keys::placement("h1", "j2"))
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn drains_are_validated_scoped_and_stored() {
    let api = Api::start().await;
    api.admin("POST", "/apps", Some(json!({"name": "shop"})))
        .await;
    api.admin("POST", "/apps", Some(json!({"name": "blog"})))
        .await;

    let (s, d) = api.admin("POST", "/drains", Some(json!({"app": "shop", "kind": "elasticsearch", "url": "http://127.0.0.1:9200", "index": "logs-shop-%Y.%m.%d"}))).await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    let id = d["id"].as_str().unwrap().to_string();
    let (s, all) = api
        .admin(
            "POST",
            "/drains",
            Some(json!({"url": "s3://bucket/prefix", "region": "eu-west-1"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{all}");
    assert_error(
        &api.admin("POST", "/drains", Some(json!({"url": "gopher://x"})))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid",
        "gopher",
    );
    assert_error(
        &api.admin(
            "POST",
            "/drains",
            Some(json!({"app": "nope", "url": "s3://b"})),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        "nope",
    );

    let (_, list) = api.admin("GET", "/drains", None).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(
        list[0]["status"].is_null(),
        "no aggregator running: no status"
    );

    let (_, created) = api
        .admin("POST", "/tokens", Some(json!({"app": "blog"})))
        .await;
    let scoped = created["token"].as_str().unwrap().to_string();
    let (_, mine) = api.call(Some(&scoped), "GET", "/drains", None).await;
    assert_eq!(mine.as_array().unwrap().len(), 0, "{mine}");
    assert_error(
        &api.call(
            Some(&scoped),
            "POST",
            "/drains",
            Some(json!({"url": "s3://b"})),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "admin",
    );
    assert_error(
        &api.call(
            Some(&scoped),
            "POST",
            "/drains",
            Some(json!({"app": "shop", "url": "s3://b"})),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        "shop",
    );
    assert_error(
        &api.call(Some(&scoped), "DELETE", &format!("/drains/{id}"), None)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        &id,
    );
    // An app's token may not aim a drain inside the platform, nor make the aggregator
    // read a file or sign S3 requests for it.
    for (body, says) in [
        (
            json!({"app": "blog", "url": "forward://127.0.0.1:24224"}),
            "internal",
        ),
        (
            json!({"app": "blog", "kind": "elasticsearch", "url": "http://localhost:9200"}),
            "internal",
        ),
        (
            json!({"app": "blog", "url": "syslog+tls://93.184.216.34:6514", "ca_file": "/dev/zero"}),
            "ca_file",
        ),
        (
            json!({"app": "blog", "url": "s3://b/p", "region": "eu-west-1"}),
            "S3",
        ),
    ] {
        assert_error(
            &api.call(Some(&scoped), "POST", "/drains", Some(body)).await,
            StatusCode::FORBIDDEN,
            "forbidden",
            says,
        );
    }
    let (s, _) = api
        .call(
            Some(&scoped),
            "POST",
            "/drains",
            Some(json!({"app": "blog", "url": "forward://93.184.216.34:24224"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);

    assert_eq!(
        api.admin("DELETE", &format!("/drains/{id}"), None).await.0,
        StatusCode::NO_CONTENT
    );
    let (_, list) = api.admin("GET", "/drains", None).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    // Destroying an app removes its drains: a new app of the same name must not ship
    // its logs to the old owner's sink.
    assert_eq!(
        api.admin("DELETE", "/apps/blog", None).await.0,
        StatusCode::NO_CONTENT
    );
    let (_, list) = api.admin("GET", "/drains", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert!(list[0]["app"].is_null(), "{list}");
    // Logs need a running aggregator: a clear 503, not a hang.
    assert_error(
        &api.admin("GET", "/apps/shop/log", None).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "aggregator",
    );
}

#[tokio::test]
async fn routes_are_validated_unique_scoped_and_removed_with_their_app() {
    let api = Api::start().await;
    api.admin("POST", "/apps", Some(json!({"name": "shop"})))
        .await;
    api.admin("POST", "/apps", Some(json!({"name": "blog"})))
        .await;

    let tls = json!({"cert_pem": "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n", "key_pem": "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n"});
    let (s, r1) = api
        .admin(
            "POST",
            "/apps/shop/routes",
            Some(json!({"domain": "Shop.Example.com", "tls": tls})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r1}");
    assert_eq!(r1["domain"], "shop.example.com");
    assert_eq!(r1["tls"], true, "the key is never returned: {r1}");
    let (s, r2) = api
        .admin(
            "POST",
            "/apps/shop/routes",
            Some(json!({"domain": "shop.example.com", "path": "/api/", "sticky": true})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r2}");
    assert_eq!(r2["path"], "/api");
    assert_eq!(r2["sticky"], true);

    // Taken domain+path (also by another app), bad names, bad PEM.
    for (app, body, needle) in [
        (
            "blog",
            json!({"domain": "shop.example.com"}),
            "already routed",
        ),
        (
            "shop",
            json!({"domain": "shop.example.com", "path": "/api"}),
            "already routed",
        ),
    ] {
        assert_error(
            &api.admin("POST", &format!("/apps/{app}/routes"), Some(body))
                .await,
            StatusCode::CONFLICT,
            "conflict",
            needle,
        );
    }
    for body in [
        json!({"domain": "bad domain"}),
        json!({"domain": "x.example.com", "path": "api"}),
        json!({"domain": "x.example.com", "tls": {"cert_pem": "nope", "key_pem": "nope"}}),
        json!({"domain": "x.example.com", "port": 80}),
    ] {
        let reply = api
            .admin("POST", "/apps/shop/routes", Some(body.clone()))
            .await;
        assert_eq!(reply.0, StatusCode::BAD_REQUEST, "{body} -> {:?}", reply.1);
    }

    let (_, list) = api.admin("GET", "/apps/shop/routes", None).await;
    let domains: Vec<(String, Value)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["domain"].as_str().unwrap().to_string(), r["path"].clone()))
        .collect();
    assert_eq!(
        domains,
        [
            ("shop.example.com".to_string(), Value::Null),
            ("shop.example.com".to_string(), json!("/api"))
        ]
    );
    assert!(list[0].get("key_pem").is_none() && !list.to_string().contains("PRIVATE KEY"));

    // A token scoped to blog sees none of shop's routes.
    let (_, created) = api
        .admin("POST", "/tokens", Some(json!({"app": "blog"})))
        .await;
    let scoped = created["token"].as_str().unwrap().to_string();
    let r1_id = r1["id"].as_str().unwrap().to_string();
    for (method, path) in [
        ("GET", "/apps/shop/routes".to_string()),
        ("DELETE", format!("/apps/shop/routes/{r1_id}")),
        ("DELETE", format!("/apps/blog/routes/{r1_id}")),
    ] {
        assert_error(
            &api.call(Some(&scoped), method, &path, None).await,
            StatusCode::NOT_FOUND,
            "not_found",
            "",
        );
    }
    let (s, _) = api
        .call(
            Some(&scoped),
            "POST",
            "/apps/blog/routes",
            Some(json!({"domain": "blog.example.com"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);

    // Removing frees the domain; destroying the app removes its routes.
    let (s, _) = api
        .admin("DELETE", &format!("/apps/shop/routes/{r1_id}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, again) = api
        .admin(
            "POST",
            "/apps/blog/routes",
            Some(json!({"domain": "shop.example.com"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{again}");
    let (s, _) = api.admin("DELETE", "/apps/blog", None).await;
    assert!(s.is_success());
    let (s, _) = api
        .admin(
            "POST",
            "/apps/shop/routes",
            Some(json!({"domain": "shop.example.com"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "blog's routes went with blog");
}

/// In-process writers (the daemons' system apps) go through the `Store` without the
/// API's handlers: the store applies the same name rules itself.
#[tokio::test]
async fn the_store_checks_names_for_in_process_writers() {
    let etcd = paas_it::EtcdServer::start().expect("etcd");
    let controller = Controller::connect(&[etcd.endpoint()], "test")
        .await
        .expect("connect");
    let store = &controller.state().store;
    let invalid = |r: Result<(), paas_controller::ApiError>, needle: &str| match r {
        Err(paas_controller::ApiError::Invalid(m)) => assert!(m.contains(needle), "{m}"),
        other => panic!("expected Invalid mentioning {needle:?}, got {other:?}"),
    };

    invalid(store.create_app("Bad").await.map(drop), "invalid app name");
    store.create_app("sys").await.unwrap();
    let with = |processes: &[(&str, &str)], env: &[(&str, &str)]| {
        let processes: BTreeMap<String, String> = processes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |current: &paas_model::Release| {
            let mut next = current.clone();
            next.processes = processes.clone();
            next.env = env.clone();
            Ok(next)
        }
    };
    invalid(
        store
            .new_release_with("sys", with(&[("Web", "run")], &[]))
            .await
            .map(drop),
        "invalid process type",
    );
    invalid(
        store
            .new_release_with("sys", with(&[("web", "run")], &[("A-B", "1")]))
            .await
            .map(drop),
        "invalid environment variable name",
    );
    assert_eq!(store.get_app("sys").await.unwrap().release, 1);
    let next = store
        .new_release_with("sys", with(&[("pg0", "run")], &[("PAAS_X", "1")]))
        .await
        .unwrap();
    assert_eq!(next.version, 2);

    let route = |domain: &str, path: Option<&str>| paas_model::Route {
        id: "r1".to_string(),
        app: "sys".to_string(),
        domain: domain.to_string(),
        path: path.map(str::to_string),
        sticky: false,
        tls: None,
        tcp_port: None,
        created_at: chrono::Utc::now(),
    };
    invalid(
        store.create_route(&route("Sys.example", None)).await,
        "invalid domain",
    );
    invalid(
        store.create_route(&route("sys.example", Some("api"))).await,
        "invalid path",
    );
    assert!(store.list_routes("sys").await.unwrap().is_empty());
    store
        .create_route(&route("sys.example", Some("/api")))
        .await
        .unwrap();
    assert_eq!(store.list_routes("sys").await.unwrap().len(), 1);
}

#[tokio::test]
async fn old_releases_and_unreferenced_artifacts_are_collected() {
    use paas_controller::gc::{collect, GcConfig};
    let etcd = paas_it::EtcdServer::start().expect("etcd");
    let dir = tempfile::tempdir().unwrap();
    let controller = Controller::connect(&[etcd.endpoint()], "gc")
        .await
        .unwrap()
        .with_artifacts_dir(dir.path().to_path_buf());
    let store = &controller.state().store;
    store.create_app("shop").await.unwrap();
    let digest = |i: u8| format!("{:064x}", i);
    for i in 1..=3u8 {
        std::fs::write(dir.path().join(format!("{}.tar.gz", digest(i))), [i]).unwrap();
        store
            .new_release_with("shop", |current| {
                let mut next = current.clone();
                next.artifact = Some(paas_model::Artifact {
                    sha256: digest(i),
                    size: 1,
                });
                next.description = format!("code {i}");
                Ok(next)
            })
            .await
            .unwrap();
    }
    // Uploaded, never released.
    std::fs::write(dir.path().join(format!("{}.tar.gz", digest(9))), [9]).unwrap();
    let before: Vec<u64> = store
        .list_releases("shop")
        .await
        .unwrap()
        .iter()
        .map(|r| r.version)
        .collect();
    let current = *before.last().unwrap();

    // Within the grace period nothing uploaded is touched.
    let config = GcConfig {
        keep_releases: 2,
        grace: std::time::Duration::from_secs(3600),
        every: std::time::Duration::from_secs(60),
    };
    let plan = collect(controller.state(), &config).await.unwrap();
    assert!(plan.artifacts.is_empty(), "{plan:?}");
    let kept: Vec<u64> = store
        .list_releases("shop")
        .await
        .unwrap()
        .iter()
        .map(|r| r.version)
        .collect();
    assert_eq!(kept, vec![current - 1, current], "{before:?} -> {kept:?}");

    let config = GcConfig {
        grace: std::time::Duration::ZERO,
        ..config
    };
    collect(controller.state(), &config).await.unwrap();
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        vec![
            format!("{}.tar.gz", digest(2)),
            format!("{}.tar.gz", digest(3))
        ],
        "the kept releases' code stays, the rest goes"
    );
}

#[tokio::test]
async fn app_tokens_are_held_to_quotas() {
    // Defaults: 20 jobs per app, 10 releases per hour, 3 one-off runs at once.
    let api = Api::start().await;
    assert_eq!(
        api.admin("POST", "/apps", Some(json!({"name": "shop"})))
            .await
            .0,
        StatusCode::CREATED
    );
    let (_, created) = api
        .admin("POST", "/tokens", Some(json!({"app": "shop"})))
        .await;
    let scoped = created["token"].as_str().unwrap().to_string();
    let release = api
        .call(
            Some(&scoped),
            "POST",
            "/apps/shop/releases",
            Some(json!({"processes": {"web": "serve", "worker": "work"}})),
        )
        .await;
    assert_eq!(release.0, StatusCode::CREATED, "{:?}", release.1);

    // Jobs: all process types together.
    let scale = |n: u32| json!({"processes": {"web": 15, "worker": n}});
    let ok = api
        .call(Some(&scoped), "PUT", "/apps/shop/formation", Some(scale(5)))
        .await;
    assert_eq!(ok.0, StatusCode::OK, "{:?}", ok.1);
    assert_error(
        &api.call(Some(&scoped), "PUT", "/apps/shop/formation", Some(scale(6)))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "at most 20",
    );
    let (_, formation) = api.admin("GET", "/apps/shop/formation", None).await;
    assert_eq!(
        formation["processes"]["worker"], 5,
        "the refused scale changed nothing"
    );
    let admin = api
        .admin("PUT", "/apps/shop/formation", Some(scale(50)))
        .await;
    assert_eq!(admin.0, StatusCode::OK, "admins are not held to quotas");

    // Releases: v1 (create) and v2 above count; eight more env changes make ten.
    for i in 0..8 {
        let r = api
            .call(
                Some(&scoped),
                "PATCH",
                "/apps/shop/env",
                Some(json!({"set": {"N": i.to_string()}})),
            )
            .await;
        assert_eq!(r.0, StatusCode::CREATED, "change {i}: {:?}", r.1);
    }
    assert_error(
        &api.call(
            Some(&scoped),
            "PATCH",
            "/apps/shop/env",
            Some(json!({"set": {"N": "x"}})),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "10 releases in the last hour",
    );
    assert_error(
        &api.call(
            Some(&scoped),
            "POST",
            "/apps/shop/releases",
            Some(json!({"processes": {"web": "serve"}})),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "releases in the last hour",
    );
    let admin = api
        .admin(
            "PATCH",
            "/apps/shop/env",
            Some(json!({"set": {"N": "admin"}})),
        )
        .await;
    assert_eq!(
        admin.0,
        StatusCode::CREATED,
        "admins are not held to quotas"
    );
}

#[tokio::test]
async fn tcp_routes_take_a_free_port_in_the_range() {
    let api = Api::start().await;
    for app in ["shop", "blog"] {
        api.admin("POST", "/apps", Some(json!({"name": app}))).await;
    }
    let (s, route) = api
        .admin("POST", "/apps/shop/routes", Some(json!({"tcp_port": 3000})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{route:?}");
    assert_eq!(route["tcp_port"], 3000);
    assert_error(
        &api.admin("POST", "/apps/blog/routes", Some(json!({"tcp_port": 3000})))
            .await,
        StatusCode::CONFLICT,
        "conflict",
        "TCP port 3000 is already routed",
    );
    assert_error(
        &api.admin("POST", "/apps/blog/routes", Some(json!({"tcp_port": 22})))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid",
        "outside 3000-3999",
    );
    assert_error(
        &api.admin(
            "POST",
            "/apps/blog/routes",
            Some(json!({"tcp_port": 3001, "domain": "blog.example.com"})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid",
        "takes only a port",
    );
    // Removing the route frees the port.
    let id = route["id"].as_str().unwrap();
    let (s, _) = api
        .admin("DELETE", &format!("/apps/shop/routes/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api
        .admin("POST", "/apps/blog/routes", Some(json!({"tcp_port": 3000})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
}
