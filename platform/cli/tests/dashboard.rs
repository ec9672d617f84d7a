//! The web dashboard in a real headless Chromium, driven over WebDriver (`chromedriver`
//! started by each test on its own port), against a real `paas up`: sign in, apps, env,
//! scale and live jobs, routes (added in the page, then requested through the router with
//! `curl`), live logs sent with `logger`, a scoped token, a Postgres resource and a
//! failover on the cluster page. Each test saves screenshots under
//! `target/dashboard-screenshots/`.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (scripts/setup installs
//! them); without them the tests fail, they do not skip.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_addr, ok, paas};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// chromedriver in its own process group with the Chromium it starts; the whole group is
/// killed when dropped, so no browser outlives a failed test (its open log view would
/// also hold `paas up` for the shutdown grace period).
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the process group this test created (pgid = chromedriver's pid).
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// A browser session and the chromedriver behind it (dropped after the session).
struct Browser {
    client: Client,
    _driver: Driver,
    /// `http://ADDR` of the controller.
    base: String,
    /// Screenshot name prefix (the test's name).
    test: &'static str,
}

/// Starts chromedriver on a free port and opens a headless Chromium session on it.
async fn browser(test: &'static str, listen: &str) -> Browser {
    let port = paas_it::free_port().unwrap();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start chromedriver ({e}): the dashboard tests need the Debian \
                 packages chromium and chromium-driver; run scripts/setup"
            )
        });
    let driver = Driver(child);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let caps = json!({
        "goog:chromeOptions": {
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--no-first-run", "--disable-extensions"]
        }
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("chromedriver would not open a Chromium session: {e}"));
    Browser {
        client,
        _driver: driver,
        base: format!("http://{listen}"),
        test,
    }
}

fn screenshot_dir() -> PathBuf {
    // target/debug/paas -> target/dashboard-screenshots
    let dir = Path::new(common::PAAS)
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    async fn open(&self, hash: &str) {
        self.client
            .goto(&format!("{}/{hash}", self.base))
            .await
            .unwrap();
    }

    /// Saves a PNG of the viewport as `target/dashboard-screenshots/TEST-NAME.png`.
    async fn shot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        let path = screenshot_dir().join(format!("{}-{name}.png", self.test));
        std::fs::write(&path, png).unwrap();
        path
    }

    async fn find(&self, css: &str) -> Element {
        self.wait(css, "", 10).await;
        self.client.find(Locator::Css(css)).await.unwrap()
    }

    /// The text content of the first element matching `css` (also when hidden), if any.
    async fn text(&self, css: &str) -> Option<String> {
        let v = self
            .client
            .execute(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                vec![json!(css)],
            )
            .await
            .ok()?;
        v.as_str().map(str::to_string)
    }

    /// Waits until the element matching `css` exists and its text contains `needle`;
    /// on timeout saves a screenshot and fails with what the page showed.
    async fn wait(&self, css: &str, needle: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(t) = self.text(css).await {
                if t.contains(needle) {
                    return t;
                }
            }
            if Instant::now() > deadline {
                let shot = self.shot("timeout").await;
                let main = self.text("body").await.unwrap_or_default();
                panic!(
                    "timed out after {secs}s waiting for {css:?} to contain {needle:?}; \
                     page text: {main}\nscreenshot: {}",
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the first element matching `css`.
    async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    /// Replaces the value of the input matching `css` with `text` (typed, as a user would).
    async fn fill(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    /// Picks `value` in the log filter `select` and waits until the view it reloads is
    /// following (the old view is marked first, so its status cannot pass for the new).
    async fn filter_logs(&self, select: &str, value: &str) {
        self.client
            .execute(
                "document.getElementById('log-view').setAttribute('data-stale', '')",
                vec![],
            )
            .await
            .unwrap();
        self.find(select)
            .await
            .select_by_value(value)
            .await
            .unwrap();
        self.wait("#log-view:not([data-stale]) .log-status", "following", 10)
            .await;
    }

    async fn sign_in(&self, token: &str) {
        self.open("").await;
        // Focus starts in the token field; Enter submits, as from the keyboard.
        self.wait("#sign-in", "Sign in", 10).await;
        self.fill("#token", &format!("{token}\n")).await;
    }

    async fn close(self) {
        self.client.close().await.unwrap();
    }
}

/// `paas up` (no Postgres) and its admin token, unauthenticated syslog input (`logger`
/// cannot present a client certificate) and HTTP router address.
fn up(home: &Path, listen: &str, args: &[&str]) -> (common::Daemon, String, String, String) {
    let mut args = args.to_vec();
    args.extend(["--unauthenticated-syslog-listen", "127.0.0.1:0"]);
    let (daemon, out) = common::start_up(home, listen, &args);
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let router = field("router:").trim_start_matches("http://").to_string();
    (
        daemon,
        field("token:"),
        field("syslog-unauthenticated:"),
        router,
    )
}

/// GET `path` through the router with `Host: host`: (HTTP status, body).
fn through_router(router: &str, host: &str, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\\n%{http_code}", "-H"])
        .arg(format!("Host: {host}"))
        .arg(format!("http://{router}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Polls `through_router` until it answers `status`, for at most 10 s.
async fn wait_router(router: &str, host: &str, path: &str, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (got, body) = through_router(router, host, path);
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{host}{path} through the router: {got}, not {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends one syslog line for `app` with `logger`, as an outside client would.
fn logger(syslog: &str, app: &str, stream: &str, message: &str) {
    let (host, port) = syslog.rsplit_once(':').unwrap();
    let status = Command::new("logger")
        .args([
            "--tcp",
            "--octet-count",
            "--rfc5424",
            "-n",
            host,
            "-P",
            port,
        ])
        .args(["-t", app, "--msgid", stream, message])
        .status()
        .expect("logger (util-linux)");
    assert!(status.success());
}

/// Sends `n` syslog lines for `app` over one connection, as fast as the socket takes them.
fn burst(syslog: &str, app: &str, n: usize) {
    let mut out = Vec::new();
    for i in 0..n {
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let msg = format!("<14>1 {ts} test {app} - stdout - burst line {i}");
        out.extend_from_slice(format!("{} {msg}", msg.len()).as_bytes());
    }
    let mut conn = std::net::TcpStream::connect(syslog).unwrap();
    std::io::Write::write_all(&mut conn, &out).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_runs_an_app_from_sign_in_to_destroy() {
    let started = Instant::now();
    let tmp = common::home();
    let home = tmp.path();
    let listen = free_addr();
    let (_up, token, syslog, router) = up(home, &listen, &[]);
    let b = browser("app", &listen).await;

    // A wrong token is refused next to the field; the right one signs in.
    b.sign_in("paas_not-a-token").await;
    b.wait("#sign-in-error", "invalid or revoked token", 10)
        .await;
    b.fill("#token", &format!("{token}\n")).await;
    b.wait("#main h1", "Apps", 10).await;
    b.wait("#main", "No apps yet.", 10).await;
    assert_eq!(b.text("#who").await.as_deref(), Some("admin"));

    // Create: an invalid name is refused next to the name field.
    b.fill("#new-app", "Bad_Name\n").await;
    b.wait("#new-app-error", "Bad_Name", 10).await;
    b.fill("#new-app", "shop\n").await;
    b.wait("#main .notice", "Created app shop.", 10).await;
    b.wait("#main table.apps", "shop", 10).await;
    b.click("#main table.apps a[href='#/apps/shop']").await;
    b.wait("#main h1", "shop", 10).await;
    b.wait("#releases", "Current: v1", 10).await;

    // Env: set makes release v2; the value stays masked until revealed.
    b.fill("#env-key", "GREETING").await;
    b.fill("#env-value", "hello-secret\n").await;
    b.wait("#env table.env", "GREETING", 10).await;
    b.wait("#releases", "Current: v2", 10).await;
    let env_html = b.find("#env").await.html(true).await.unwrap();
    assert!(
        !env_html.contains("hello-secret"),
        "the value is not in the page until revealed: {env_html}"
    );
    b.click("#env button[aria-label='Reveal GREETING']").await;
    b.wait("#env code.value", "hello-secret", 10).await;
    // The keyboard focus stays on the toggle, now "Hide".
    let focused = b
        .client
        .execute("return document.activeElement.textContent", vec![])
        .await
        .unwrap();
    assert_eq!(focused, json!("Hide"));
    // A bad key is refused next to the key field, the table stays.
    b.fill("#env-key", "1BAD").await;
    b.fill("#env-value", "x\n").await;
    b.wait("#env-set-error", "1BAD", 10).await;
    let kept = b.find("#env-key").await.prop("value").await.unwrap();
    assert_eq!(
        kept.as_deref(),
        Some("1BAD"),
        "the refused key stays in its field"
    );
    b.wait("#env table.env", "GREETING", 10).await;

    // A release with a Procfile (the dashboard does not upload code; the CLI does).
    let site = home.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "hi\n").unwrap();
    std::fs::write(
        home.join("Procfile"),
        "web: echo web started on port $PORT; exec python3 -m http.server --bind $HOST_IP $PORT\n",
    )
    .unwrap();
    ok(paas(
        home,
        &[
            "release",
            "add",
            "-a",
            "shop",
            "--procfile",
            home.join("Procfile").to_str().unwrap(),
            site.to_str().unwrap(),
        ],
    ));
    // Reload: the token survives in this tab's sessionStorage.
    b.client.refresh().await.unwrap();
    b.wait("#releases", "Current: v3", 10).await;
    // From here on, any Content-Security-Policy violation (an inline script or style that
    // the policy blocks) is recorded, and must not happen.
    b.client
        .execute(
            "window.cspViolations = []; document.addEventListener('securitypolicyviolation', \
             e => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI + ' ' + e.sourceFile + ':' + e.lineNumber))",
            vec![],
        )
        .await
        .unwrap();

    // Scale web to 1 and watch the job come up (the jobs table refreshes itself).
    b.fill("#scale-web", "1\n").await;
    b.wait("#jobs", "web", 20).await;
    b.wait("#jobs .state-up", "up", 60).await;
    b.shot("app-page").await;

    // Restart the job: a new one replaces it and comes up.
    let first = b
        .find("#jobs tr[data-job]")
        .await
        .attr("data-job")
        .await
        .unwrap()
        .unwrap();
    b.click(&format!("#restart-{first}")).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = b
            .client
            .execute(
                "return [...document.querySelectorAll('#jobs tr[data-job]')].map(r => r.dataset.job + ':' + r.querySelector('.state').textContent).join(' ')",
                vec![],
            )
            .await
            .unwrap();
        let rows = rows.as_str().unwrap_or_default().to_string();
        if !rows.contains(&first) && rows.ends_with(":up") && rows.matches(':').count() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no replacement job came up: {rows}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Routes: the default route is a note (the API does not list it); a bad domain is
    // refused next to its field and stays there to be corrected; a sticky route is added
    // with the keyboard, listed, and reaches the web job through the router.
    b.wait("#routes", "No routes.", 10).await;
    b.wait("#routes-default", "shop.localhost", 10).await;
    wait_router(&router, "shop.localhost", "/index.html", 200).await;
    b.fill("#route-domain", "Not a domain!\n").await;
    b.wait("#routes-domain-error", "invalid domain", 10).await;
    let kept = b.find("#route-domain").await.prop("value").await.unwrap();
    assert_eq!(kept.as_deref(), Some("Not a domain!"));
    assert_eq!(b.text("#routes-path-error").await.as_deref(), Some(""));
    b.client
        .execute("document.getElementById('routes').scrollIntoView()", vec![])
        .await
        .unwrap();
    b.shot("routes-refused").await;
    b.find("#route-sticky").await.send_keys(" ").await.unwrap();
    b.fill("#route-domain", "www.shop.test\n").await;
    b.wait("#routes table.routes", "www.shop.test", 10).await;
    assert_eq!(b.text("#routes td.sticky").await.as_deref(), Some("yes"));
    assert_eq!(b.text("#routes td.tls").await.as_deref(), Some("no"));
    assert_eq!(b.text("#routes-domain-error").await.as_deref(), Some(""));
    let body = wait_router(&router, "www.shop.test", "/index.html", 200).await;
    assert_eq!(body, "hi\n", "the web job's file through the router");
    // A TLS route added with the CLI shows as TLS, and its key is not in the page. (The
    // API checks only the PEM markers; the router skips a certificate it cannot parse.)
    let cert = home.join("cert.pem");
    let key = home.join("key.pem");
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nnot-a-cert\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nkey-material-xyz\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    ok(paas(
        home,
        &[
            "route",
            "add",
            "-a",
            "shop",
            "secure.shop.test",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    ));
    b.open("#/apps").await;
    b.wait("#main table.apps", "shop", 10).await;
    b.open("#/apps/shop").await;
    b.wait("#routes table.routes", "secure.shop.test", 10).await;
    let routes_html = b.find("#routes").await.html(true).await.unwrap();
    assert!(
        !routes_html.contains("key-material-xyz") && !routes_html.contains("PRIVATE KEY"),
        "a private key in the page: {routes_html}"
    );
    let tls = b
        .client
        .execute(
            "return [...document.querySelectorAll('#routes tr[data-route]')].map(r => r.querySelector('code').textContent + ':' + r.querySelector('.tls').textContent).join(' ')",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(tls, json!("secure.shop.test:yes www.shop.test:no"));
    b.client
        .execute("document.getElementById('routes').scrollIntoView()", vec![])
        .await
        .unwrap();
    b.shot("routes").await;
    // On a phone the routes table scrolls, not the page.
    b.client.set_window_size(390, 844).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let overflow = b
        .client
        .execute(
            "document.getElementById('routes').scrollIntoView(); \
             return document.documentElement.scrollWidth - document.documentElement.clientWidth",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "routes wider than a phone: {overflow}"
    );
    b.shot("routes-narrow").await;
    b.client.set_window_size(1280, 1000).await.unwrap();
    // Remove, with the rows' quiet buttons: the router stops serving the domain.
    b.click("#routes button[aria-label='Remove route www.shop.test']")
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = b.text("#routes table.routes").await.unwrap_or_default();
        if !left.contains("www.shop.test") {
            assert!(left.contains("secure.shop.test"), "{left}");
            break;
        }
        assert!(Instant::now() < deadline, "the route stayed: {left}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_router(&router, "www.shop.test", "/index.html", 404).await;
    b.click("#routes button[aria-label='Remove route secure.shop.test']")
        .await;
    b.wait("#routes", "No routes.", 10).await;

    // Rollback to v2 makes v4 with v2's env.
    b.click("#releases form button").await;
    b.wait("#releases", "Rollback to", 10).await;

    // Drains: a bad URL is refused next to the field; a syslog drain to a listener of
    // this test shows up, delivers a line (the cluster page counts it), and goes away.
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let received = std::thread::spawn(move || {
        let (mut conn, _) = sink.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("to the drain") {
            match std::io::Read::read(&mut conn, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    });
    b.open("#/apps/shop").await;
    b.wait("#drains", "No drains.", 10).await;
    b.fill("#drain-url", "ftp://example\n").await;
    b.wait("#drains-add-error", "ftp", 10).await;
    b.fill("#drain-url", &format!("syslog+tcp://{sink_addr}\n"))
        .await;
    b.wait(
        "#drains table.drains",
        &format!("syslog+tcp://{sink_addr}"),
        10,
    )
    .await;
    logger(&syslog, "shop", "stdout", "on its way to the drain");
    assert!(received.join().unwrap().contains("on its way to the drain"));
    b.click("#nav a[href='#/cluster']").await;
    b.wait("#main h1", "Cluster", 10).await;
    b.wait("#cluster-live table.drains", &sink_addr.to_string(), 10)
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while b
        .text("#cluster-live table.drains td.delivered")
        .await
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(0)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the cluster page never counted a delivery"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Keyboard: after a route change the page's heading has the focus.
    b.open("#/apps/shop").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let focused = b
            .client
            .execute(
                "const e = document.activeElement; return e.tagName + ':' + e.textContent",
                vec![],
            )
            .await
            .unwrap();
        if focused == json!("H1:shop") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "focus is on {focused}, not the heading"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.click("#drains button[aria-label^='Remove drain']").await;
    b.wait("#drains", "No drains.", 10).await;

    // Logs: the job's own output, then a line sent with logger appears live.
    b.click("nav.tabs a[href='#/apps/shop/logs']").await;
    b.wait("#main h1", "shop logs", 10).await;
    b.wait(".log-status", "following", 10).await;
    b.wait(".log-lines", "web started on port", 30).await;
    logger(&syslog, "shop", "stdout", "hi <b>from</b> logger");
    b.wait(".log-lines", "hi <b>from</b> logger", 10).await;
    b.shot("logs-live").await;

    // Pause holds new lines; resume shows them.
    b.click(".log-pause").await;
    logger(&syslog, "shop", "stdout", "sent while paused");
    b.wait(".log-status", "1 new lines held", 10).await;
    assert!(!b
        .text(".log-lines")
        .await
        .unwrap()
        .contains("sent while paused"));
    b.click(".log-pause").await;
    b.wait(".log-lines", "sent while paused", 10).await;

    // More lines than a paused view holds: on resume, a marker says how many were skipped
    // (by the view, or by the aggregator when the follow itself fell behind).
    b.click(".log-pause").await;
    burst(&syslog, "shop", 6000);
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = b.text(".log-status").await.unwrap_or_default();
        if now == last && now.contains("held") {
            break;
        }
        assert!(Instant::now() < deadline, "the burst never settled: {now}");
        last = now;
    }
    b.click(".log-pause").await;
    let marker = b.wait(".log-lines .log-skipped", "lines skipped", 10).await;
    b.shot("logs-skipped").await;
    assert!(
        b.text(".log-lines").await.unwrap().contains("burst line"),
        "held lines are shown after the marker: {marker}"
    );

    // Filter by stream: only stderr lines, old stdout lines gone.
    b.filter_logs("#log-stream", "stderr").await;
    logger(&syslog, "shop", "stderr", "an error line");
    b.wait(".log-lines", "an error line", 10).await;
    let lines = b.text(".log-lines").await.unwrap();
    assert!(!lines.contains("from</b> logger"), "{lines}");
    b.shot("logs").await;

    // Filter by process type: only the web job's own lines.
    b.filter_logs("#log-stream", "").await;
    b.filter_logs("#log-type", "web").await;
    b.wait(".log-lines", "web started on port", 10).await;
    let lines = b.text(".log-lines").await.unwrap();
    assert!(
        !lines.contains("burst line") && !lines.contains("an error line"),
        "{lines}"
    );

    // The token was never part of a URL the page requested.
    let urls = b
        .client
        .execute(
            "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name)).join(' ')",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        !urls.as_str().unwrap().contains(&token),
        "token in a URL: {urls}"
    );

    let violations = b
        .client
        .execute("return window.cspViolations", vec![])
        .await
        .unwrap();
    assert_eq!(violations, json!([]), "the page broke its own CSP");

    // Destroy, with a typed confirmation.
    b.open("#/apps/shop").await;
    b.fill("#destroy-confirm", "shoe\n").await;
    b.wait("#destroy-error", "Type shop exactly", 10).await;
    b.fill("#destroy-confirm", "shop\n").await;
    b.wait("#main h1", "Apps", 15).await;
    b.wait("#main", "No apps yet.", 10).await;
    b.close().await;
    eprintln!("dashboard app test: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_scoped_token_sees_only_its_app() {
    let started = Instant::now();
    let tmp = common::home();
    let home = tmp.path();
    let listen = free_addr();
    let (_up, _token, _syslog, _router) = up(home, &listen, &[]);
    ok(paas(home, &["apps", "create", "shop"]));
    ok(paas(home, &["apps", "create", "blog"]));
    let created: serde_json::Value = serde_json::from_str(&ok(paas(
        home,
        &["--json", "tokens", "create", "-a", "shop"],
    )))
    .unwrap();
    let scoped = created["token"].as_str().unwrap();
    let b = browser("scoped", &listen).await;

    b.sign_in(scoped).await;
    b.wait("#main table.apps", "shop", 10).await;
    assert_eq!(b.text("#who").await.as_deref(), Some("app shop"));
    let list = b.text("#main").await.unwrap();
    assert!(!list.contains("blog"), "another app leaked: {list}");
    assert!(
        b.client.find(Locator::Css("#new-app")).await.is_err(),
        "no create form for a scoped token"
    );
    let cluster_link_hidden = b
        .client
        .execute(
            "return document.getElementById('nav-cluster').hidden",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(cluster_link_hidden, json!(true));

    // Another app by URL: not found, exactly as on the API.
    b.open("#/apps/blog").await;
    b.wait("#main h1", "Not found", 10).await;
    b.wait("#main", "app \"blog\" not found", 10).await;
    b.open("#/apps/blog/logs").await;
    b.wait("#main h1", "Not found", 10).await;
    b.open("#/cluster").await;
    b.wait("#main h1", "Not allowed", 10).await;

    // Its own app works, without the admin-only destroy section.
    b.open("#/apps/shop").await;
    b.wait("#releases", "Current: v1", 10).await;
    assert!(b.client.find(Locator::Css("#danger")).await.is_err());

    // Readable on a narrow screen: nothing wider than the viewport but scrolling tables.
    b.client.set_window_size(390, 844).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let overflow = b
        .client
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "page wider than a phone: {overflow}"
    );
    b.shot("narrow").await;

    // A revoked token goes back to sign-in with the reason.
    ok(paas(
        home,
        &["tokens", "revoke", created["id"].as_str().unwrap()],
    ));
    b.open("#/apps").await;
    b.wait("#sign-in-error", "sign in again", 10).await;
    b.close().await;
    eprintln!("dashboard scoped test: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_postgres_resource_and_failover_on_the_cluster_page() {
    let started = Instant::now();
    let tmp = common::home();
    // The members run as the postgres user: it must traverse to the data dir.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = tmp.path();
    let listen = free_addr();
    let pg = free_addr();
    let (_up, token, _syslog, _router) = up(
        home,
        &listen,
        &["--postgres-members", "2", "--postgres-listen", &pg],
    );
    ok(paas(home, &["apps", "create", "shop"]));
    let b = browser("postgres", &listen).await;
    b.sign_in(&token).await;
    b.wait("#main table.apps", "shop", 10).await;

    // Add a Postgres resource: its env names are listed, and the env has them.
    b.open("#/apps/shop").await;
    b.wait("#resources", "No resources.", 10).await;
    b.find("#resource-kind")
        .await
        .select_by_value("postgres")
        .await
        .unwrap();
    b.click("#resources button[type=submit]").await;
    b.wait("#resources table.resources", "DATABASE_URL", 30)
        .await;
    b.wait("#env table.env", "PGPASSWORD", 10).await;
    b.wait("#releases", "Add postgres resource", 10).await;

    // The cluster page: both members, a primary and its sync.
    b.open("#/cluster").await;
    b.wait("#main h1", "Cluster", 10).await;
    b.wait("#cluster-live .role-primary", "primary", 30).await;
    b.wait("#cluster-live .role-sync", "sync", 30).await;
    let primary = b.wait("#cluster-live strong.primary", "", 10).await;
    let generation: u64 = b
        .wait("#cluster-live strong.generation", "", 10)
        .await
        .trim()
        .parse()
        .unwrap();
    b.shot("cluster").await;

    // kill -9 the primary's job (supervisor and PostgreSQL); the page, refreshing by
    // itself, shows the sync promoted in a new generation.
    let n = primary
        .trim()
        .trim_start_matches(|c: char| !c.is_ascii_digit());
    let jobs: serde_json::Value =
        serde_json::from_str(&ok(paas(home, &["--json", "ps", "-a", "paas-postgres"]))).unwrap();
    let job = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["process_type"] == format!("pg{n}"))
        .unwrap_or_else(|| panic!("no job for primary {primary}: {jobs}"));
    // SAFETY: kill(2) of a process group the platform started for this test.
    unsafe { libc::kill(-(job["pid"].as_i64().unwrap() as i32), libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let g = b
            .text("#cluster-live strong.generation")
            .await
            .and_then(|t| t.trim().parse::<u64>().ok());
        let p = b.text("#cluster-live strong.primary").await;
        if g.is_some_and(|g| g > generation) && p.as_deref() != Some(primary.as_str()) {
            break;
        }
        if Instant::now() > deadline {
            let shot = b.shot("timeout").await;
            panic!(
                "no failover on the cluster page: {:?}\nscreenshot {}",
                b.text("#cluster-live").await,
                shot.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.shot("cluster-after-failover").await;

    // On a phone the cluster page scrolls its tables, not the page.
    b.client.set_window_size(390, 844).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let overflow = b
        .client
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "cluster page wider than a phone: {overflow}"
    );
    b.shot("cluster-narrow").await;
    b.client.set_window_size(1280, 1000).await.unwrap();

    // Remove the resource again.
    b.open("#/apps/shop").await;
    b.click("#resources button[aria-label^='Remove postgres-']")
        .await;
    b.wait("#resources", "No resources.", 30).await;
    b.close().await;
    eprintln!("dashboard postgres test: {:?}", started.elapsed());
}
