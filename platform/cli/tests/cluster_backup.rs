//! The whole cluster through `paas cluster backup` and `paas cluster restore`, end to
//! end with real `paas up`s: an app with code, a release, a route, a scaled web process,
//! an app-scoped token and a Postgres database with rows, a second app with a MariaDB
//! database with rows, a third with a Redis group holding keys (recorded without its
//! URL, as resources older than the backup hooks are); a backup taken (to a
//! file and to stdout); the first cluster stopped; a damaged copy of the file refused
//! with the data dir left empty; the file restored into a new data dir; a `paas up` on
//! it without the MariaDB appliance stops, saying so; one while the Redis group's
//! endpoint port is taken stops at the Redis step; the next one serves the same apps,
//! releases and routes to the old tokens, the web job answers through the router from
//! the restored code, the rows and keys are back behind the same DATABASE_URL,
//! MYSQL_URL and REDIS_URL, and the variables naming the CA name the new data dir's
//! (the restored cluster has a new CA), in a release that says so.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{fails, ok, paas, up_fails};

fn json(out: String) -> serde_json::Value {
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A client command against `url` with `token` (overriding the config file).
fn as_token(home: &Path, url: &str, token: &str, args: &[&str]) -> std::process::Output {
    common::base(home)
        .env("PAAS_URL", url)
        .env("PAAS_TOKEN", token)
        .args(args)
        .output()
        .unwrap()
}

fn api_url(up_output: &str) -> String {
    up_output
        .lines()
        .find_map(|l| l.trim().strip_prefix("API:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no API line in {up_output}"))
}

fn admin_token(up_output: &str) -> String {
    up_output
        .lines()
        .find_map(|l| l.trim().strip_prefix("token:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no token line in {up_output}"))
}

fn router_addr(up_output: &str) -> String {
    let line = up_output
        .lines()
        .find(|l| l.trim().starts_with("router:"))
        .unwrap_or_else(|| panic!("no router line in {up_output}"));
    let url = line.split_whitespace().nth(1).unwrap();
    url.trim_start_matches("http://").to_string()
}

fn rows(url: &str) -> Result<Vec<String>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let rows = client
            .query("SELECT item FROM orders ORDER BY id", &[])
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    })
}

fn sql(url: &str, statements: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.batch_execute(statements).await.unwrap();
    })
}

/// GET / through the router with `Host: host`, until it answers 200 (the job may still
/// be starting) or `limit` passes; the body.
fn get_through_router(router: &str, host: &str, limit: Duration) -> String {
    use std::io::{Read, Write};
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < limit {
        if let Ok(mut s) = std::net::TcpStream::connect(router) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(
                s,
                "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            );
            let mut reply = String::new();
            let _ = s.read_to_string(&mut reply);
            if reply.split_whitespace().nth(1) == Some("200") {
                return reply;
            }
            last = reply;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{host} never answered 200 through {router}: {last}");
}

/// `paas up` flags: Postgres (2 members) and MariaDB (2 members) on fixed endpoints,
/// which the apps' URLs name, so the restored cluster must use them too.
fn engines(pg: &str, my: &str) -> Vec<String> {
    vec![
        "--postgres-listen".into(),
        pg.into(),
        "--postgres-members".into(),
        "2".into(),
        "--appliance".into(),
        "mysql=2".into(),
        "--appliance-listen".into(),
        format!("mysql={my}"),
    ]
}

/// SQL through `paas mysql shell` (the mariadb client on the app's MYSQL_URL).
fn shell(home: &Path, app: &str, sql: &str) -> std::process::Output {
    paas(
        home,
        &["mysql", "shell", "-a", app, "--", "-N", "-B", "-e", sql],
    )
}

/// `paas redis cli -a cache -- ARGS` (redis-cli on the app's REDIS_URL, verifying the
/// server with its REDIS_TLS_CA); its output.
fn redis_cli(home: &Path, args: &[&str]) -> String {
    let mut all = vec!["redis", "cli", "-a", "cache", "--"];
    all.extend_from_slice(args);
    ok(paas(home, &all)).trim().to_string()
}

/// What the test compares of the Redis resource: the key count and some keys.
fn redis_state(home: &Path) -> Vec<String> {
    vec![
        redis_cli(home, &["DBSIZE"]),
        redis_cli(home, &["GET", "k:1"]),
        redis_cli(home, &["GET", "k:500"]),
        redis_cli(home, &["HGETALL", "h"]),
    ]
}

#[test]
fn a_cluster_comes_back_from_its_backup_file() {
    let tmp = common::home();
    let home = tmp.path();
    let pg = common::free_addr();
    let my = common::free_addr();
    let listen = common::free_addr();
    let flags = engines(&pg, &my);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let clock = Instant::now();
    let (up, out) = common::start_up(home, &listen, &flags);
    eprintln!(
        "figures: paas up on a new dir, ready in {:?}",
        clock.elapsed()
    );
    let url = api_url(&out);
    let old_admin = admin_token(&out);

    // An app with code, a release, a route, one web job, a token and a database.
    let site = home.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "hello from the old cluster\n").unwrap();
    std::fs::write(
        home.join("Procfile"),
        "web: exec python3 -m http.server --bind $HOST_IP $PORT\n",
    )
    .unwrap();
    ok(paas(home, &["apps", "create", "shop"]));
    ok(paas(home, &["resource", "add", "postgres", "-a", "shop"]));
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
    ok(paas(home, &["scale", "-a", "shop", "web=1"]));
    ok(paas(
        home,
        &["route", "add", "-a", "shop", "shop.example.test"],
    ));
    let token = json(ok(paas(
        home,
        &["--json", "tokens", "create", "-a", "shop"],
    )));
    let app_token = token["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {token}"))
        .to_string();
    let env = json(ok(paas(home, &["--json", "env", "get", "-a", "shop"])));
    let database_url = env["DATABASE_URL"]
        .as_str()
        .unwrap_or_else(|| panic!("no DATABASE_URL in {env}"))
        .to_string();
    sql(
        &database_url,
        "CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL);
         INSERT INTO orders (item) VALUES ('tea'), ('cake'), ('scones');",
    );
    // A second app with a MariaDB database.
    ok(paas(home, &["apps", "create", "blog"]));
    let blog = json(ok(paas(
        home,
        &["--json", "resource", "add", "mysql", "-a", "blog"],
    )));
    let mysql_url = blog["env"]["MYSQL_URL"].as_str().unwrap().to_string();
    ok(shell(
        home,
        "blog",
        "create table posts (id int primary key, title text); \
         insert into posts values (1, 'first'), (2, 'second')",
    ));
    let router = router_addr(&out);
    let page = get_through_router(&router, "shop.example.test", Duration::from_secs(120));
    assert!(page.contains("hello from the old cluster"), "{page}");

    // An app-scoped token may not take it.
    fails(
        as_token(home, &url, &app_token, &["cluster", "backup", "x.tar"]),
        "admin token",
    );
    let file = home.join("cluster.tar");
    // A third app with a Redis group (one member) holding keys.
    ok(paas(home, &["apps", "create", "cache"]));
    let redis = json(ok(paas(
        home,
        &[
            "--json",
            "resource",
            "add",
            "redis",
            "-a",
            "cache",
            "--members",
            "1",
        ],
    )));
    let redis_url = redis["env"]["REDIS_URL"].as_str().unwrap().to_string();
    assert!(redis_url.starts_with("rediss://"), "{redis_url}");
    redis_cli(
        home,
        &[
            "EVAL",
            "for i = 1, 500 do redis.call('SET', 'k:' .. i, 'v' .. i) end return 1",
            "0",
        ],
    );
    redis_cli(home, &["HSET", "h", "a", "1", "b", "2"]);
    let keys_before = redis_state(home);
    assert_eq!(keys_before[0], "501");
    // Recorded as before the backup hooks (no URL in its data): the backup and the
    // restore take it from the resource's variables.
    let redis_id = redis["id"].as_str().unwrap();
    common::forget_resource_field(home, &out, "cache", redis_id, "url");
    let apps_before = json(ok(paas(home, &["--json", "apps", "list"])));
    let releases_before = json(ok(paas(home, &["--json", "releases", "-a", "shop"])));
    let routes_before = ok(paas(home, &["route", "list", "-a", "shop"]));

    let clock = Instant::now();
    let report = ok(paas(home, &["cluster", "backup", file.to_str().unwrap()]));
    eprintln!(
        "figures: cluster backup {:?}, {} bytes",
        clock.elapsed(),
        std::fs::metadata(&file).unwrap().len()
    );
    assert!(report.contains("checked"), "{report}");
    assert!(report.contains("postgres"), "{report}");
    assert!(report.contains("redis"), "{report}");
    assert!(!home.join("cluster.tar.partial").exists());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the file holds the cluster's secrets");
    // To stdout: the same archive, complete.
    let piped = paas(home, &["cluster", "backup", "-"]);
    assert!(piped.status.success(), "{piped:?}");
    let manifest = paas_backups::archive::check(piped.stdout.as_slice()).unwrap();
    let mut kinds: Vec<&str> = manifest.resources.iter().map(|r| r.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["mysql", "postgres", "redis"]);
    // shop, blog, cache and the system apps paas-postgres, paas-mysql, paas-redis-<group>.
    assert_eq!(manifest.counts["apps"], 6, "{:?}", manifest.counts);
    assert_eq!(manifest.counts["routes"], 1, "{:?}", manifest.counts);
    assert_eq!(manifest.counts["artifacts"], 1, "{:?}", manifest.counts);
    up.stop();

    // A damaged copy (one byte flipped in the middle of the database's dump) is
    // refused; nothing is written.
    let mut bytes = std::fs::read(&file).unwrap();
    let (offset, size) = {
        let mut archive = tar::Archive::new(bytes.as_slice());
        let dump = archive
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .find(|e| e.path().unwrap().ends_with("dump"))
            .expect("a dump in the archive");
        (dump.raw_file_position() as usize, dump.size() as usize)
    };
    bytes[offset + size / 2] ^= 0x55;
    let damaged = home.join("damaged.tar");
    std::fs::write(&damaged, &bytes).unwrap();
    let other = tempfile::tempdir().unwrap();
    let empty = other.path().join("data");
    std::fs::create_dir(&empty).unwrap();
    fails(
        paas(
            home,
            &[
                "cluster",
                "restore",
                damaged.to_str().unwrap(),
                "--data-dir",
                empty.to_str().unwrap(),
            ],
        ),
        "nothing was written",
    );
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    // A data dir in use is refused.
    fails(
        paas(
            home,
            &[
                "cluster",
                "restore",
                file.to_str().unwrap(),
                "--data-dir",
                home.join("data").to_str().unwrap(),
            ],
        ),
        "not empty",
    );

    // Restore into a new HOME's data dir and start there.
    let tmp2 = common::home();
    let home2 = tmp2.path();
    let clock = Instant::now();
    let restored = ok(paas(
        home2,
        &[
            "cluster",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            home2.join("data").to_str().unwrap(),
        ],
    ));
    assert!(restored.contains("paas up --data-dir"), "{restored}");
    eprintln!("figures: cluster restore {:?}", clock.elapsed());
    // Without the MariaDB appliance the start stops before any data moves, saying why;
    // the next start resumes.
    let stderr = up_fails(
        home2,
        &["--postgres-listen", &pg, "--postgres-members", "2"],
    );
    assert!(stderr.contains("--appliance mysql=N"), "{stderr}");
    assert!(home2.join("data/restore/pending.json").exists());
    // With the Redis group's endpoint port taken, the start fails at the Redis step,
    // after the Postgres and MariaDB clusters ran and took their data: the next start
    // resumes with both clusters restarting.
    let endpoint = paas_redis::provision::parse_url(&redis_url)
        .unwrap()
        .endpoint;
    let squatter = std::net::TcpListener::bind(endpoint).unwrap();
    let stderr = up_fails(home2, &flags);
    assert!(stderr.contains(&format!("{endpoint} ")), "{stderr}");
    assert!(home2.join("data/restore/pending.json").exists());
    drop(squatter);
    let listen2 = common::free_addr();
    let clock = Instant::now();
    let (up2, out2) = common::start_up(home2, &listen2, &flags);
    eprintln!(
        "figures: paas up on the restored dir, ready in {:?}",
        clock.elapsed()
    );
    let url2 = api_url(&out2);
    assert!(
        !home2.join("data/restore").exists(),
        "the restore's files are left behind"
    );

    // The old tokens work, and see what they saw (the system app `paas-postgres` has a
    // new release: its members' commands name the new data dir).
    // The apps have one release more: their variables name the new data dir's CA.
    let apps_after = json(ok(as_token(
        home2,
        &url2,
        &old_admin,
        &["--json", "apps", "list"],
    )));
    let by_name = |list: &serde_json::Value| -> Vec<(String, u64)> {
        let mut apps: Vec<(String, u64)> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["name"].as_str().unwrap().to_string(),
                    a["release"].as_u64().unwrap(),
                )
            })
            .collect();
        apps.sort();
        apps
    };
    let (before, after) = (by_name(&apps_before), by_name(&apps_after));
    assert_eq!(
        after.iter().map(|a| &a.0).collect::<Vec<_>>(),
        before.iter().map(|a| &a.0).collect::<Vec<_>>()
    );
    for ((name, was), (_, is)) in before.iter().zip(&after) {
        if ["shop", "blog", "cache"].contains(&name.as_str()) {
            assert_eq!(*is, was + 1, "{name}");
        }
    }
    let releases_after = json(ok(as_token(
        home2,
        &url2,
        &old_admin,
        &["--json", "releases", "-a", "shop"],
    )));
    let (before, after) = (
        releases_before.as_array().unwrap(),
        releases_after.as_array().unwrap(),
    );
    // Newest first.
    assert_eq!(after.len(), before.len() + 1, "{releases_after}");
    assert_eq!(&after[1..], before.as_slice());
    let moved = after[0]["description"].as_str().unwrap();
    assert!(
        moved.starts_with("Cluster restore: the CA is now"),
        "{moved}"
    );
    assert_eq!(
        ok(as_token(
            home2,
            &url2,
            &app_token,
            &["route", "list", "-a", "shop"]
        )),
        routes_before
    );
    fails(
        as_token(home2, &url2, &app_token, &["apps", "create", "other"]),
        "admin",
    );

    // The rows are back behind the same URL, and the database takes writes.
    assert_eq!(
        rows(&database_url).unwrap(),
        vec!["tea".to_string(), "cake".into(), "scones".into()]
    );
    sql(&database_url, "INSERT INTO orders (item) VALUES ('jam');");
    let env2 = json(ok(as_token(
        home2,
        &url2,
        &app_token,
        &["--json", "env", "get", "-a", "shop"],
    )));
    assert_eq!(env2["DATABASE_URL"], env["DATABASE_URL"]);
    let blog_env = json(ok(paas(home2, &["--json", "env", "get", "-a", "blog"])));
    assert_eq!(blog_env["MYSQL_URL"].as_str(), Some(mysql_url.as_str()));
    assert_eq!(
        ok(shell(home2, "blog", "select title from posts order by id")),
        "first\nsecond\n"
    );
    // The keys are back behind the same REDIS_URL, verified against the new CA.
    let cache_env = json(ok(paas(home2, &["--json", "env", "get", "-a", "cache"])));
    assert_eq!(cache_env["REDIS_URL"].as_str(), Some(redis_url.as_str()));
    assert_eq!(redis_state(home2), keys_before);
    redis_cli(home2, &["SET", "new", "1"]);
    // Every variable naming the CA names the new data dir's, which is the new CA.
    let new_ca = home2.join("data/ca.pem").canonicalize().unwrap();
    for (vars, key) in [
        (&env2, "PGSSLROOTCERT"),
        (&blog_env, "MYSQL_SSL_CA"),
        (&cache_env, "REDIS_TLS_CA"),
    ] {
        let path = vars[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} in {vars}"));
        assert_eq!(
            std::path::Path::new(path).canonicalize().unwrap(),
            new_ca,
            "{key}"
        );
    }
    assert_ne!(
        std::fs::read(&new_ca).unwrap(),
        std::fs::read(home.join("data/ca.pem")).unwrap(),
        "the restored cluster has a CA of its own"
    );

    // The restored code runs and the route leads to it.
    let page = get_through_router(
        &router_addr(&out2),
        "shop.example.test",
        Duration::from_secs(120),
    );
    assert!(page.contains("hello from the old cluster"), "{page}");
    up2.stop();
}
