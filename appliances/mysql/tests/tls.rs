//! TLS with the cluster's certificate, against real etcd, three real supervisors and
//! real MariaDB 10.11: an app whose URL requires TLS (`?require_ssl=true`, the CA in
//! `MYSQL_SSL_CA`) connects through the leader-following endpoint with `mysql_async`
//! and with the `mariadb` CLI (`--ssl-verify-server-cert`), and `Ssl_cipher` shows its
//! session encrypted; a client that trusts another CA is refused, and so is a plain
//! session of the app's user (`REQUIRE SSL`). Replication requires TLS and verifies
//! the upstream's certificate, before and after the primary's mariadbd is killed.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{connect, connect_direct, make_ca, server_pid, url_opts, Harness};
use mysql_async::prelude::Queryable;
use mysql_async::SslOpts;

/// `mysql_async` options from `url` trusting only the CA in `ca_file`.
fn verifying(url: &str, ca_file: &Path) -> mysql_async::OptsBuilder {
    paas_appliance::tls::use_ring();
    url_opts(url).ssl_opts(
        SslOpts::default()
            .with_root_certs(vec![ca_file.to_path_buf().into()])
            .with_disable_built_in_roots(true),
    )
}

/// The `mariadb` CLI on the app's variables, verifying the server against `ca_file`.
fn mariadb(env: &std::collections::BTreeMap<String, String>, ca_file: &str, sql: &str) -> Output {
    std::process::Command::new("mariadb")
        .arg("--no-defaults")
        .args([
            "--protocol=TCP",
            "-h",
            &env["MYSQL_HOST"],
            "-P",
            &env["MYSQL_PORT"],
        ])
        .args(["-u", &env["MYSQL_USER"], &env["MYSQL_DATABASE"]])
        .args([
            "--ssl",
            &format!("--ssl-ca={ca_file}"),
            "--ssl-verify-server-cert",
        ])
        .args(["-N", "-B", "-e", sql])
        .env("MYSQL_PWD", &env["MYSQL_PASSWORD"])
        .output()
        .expect("mariadb runs")
}

/// The cipher of a session through `opts`, with what it reads back.
async fn cipher(opts: mysql_async::OptsBuilder) -> Result<String, String> {
    let mut conn = connect(opts).await?;
    let row: Option<(String, String)> = conn
        .query_first("SHOW STATUS LIKE 'Ssl_cipher'")
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.map(|(_, v)| v).unwrap_or_default())
}

/// Every replica's replication settings and threads: (member, SSL required, server
/// certificate verified, IO thread state).
async fn replication(h: &Harness) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for i in 0..h.cluster.members().len() {
        let name = h.cluster.members()[i].name.clone();
        let mut conn = connect_direct(h.member_addr(i)).await.expect("superuser");
        let row: Option<mysql_async::Row> =
            conn.query_first("SHOW SLAVE STATUS").await.expect("status");
        if let Some(row) = row {
            let get = |col: &str| row.get::<String, _>(col).unwrap_or_default();
            out.push((
                name,
                get("Master_SSL_Allowed"),
                get("Master_SSL_Verify_Server_Cert"),
                get("Slave_IO_Running"),
            ));
        }
    }
    out
}

/// Waits until every replica streams with TLS required and verified.
async fn wait_replication_over_tls(h: &Harness, replicas: usize) {
    let started = std::time::Instant::now();
    loop {
        let seen = replication(h).await;
        let good = seen
            .iter()
            .filter(|(_, ssl, verify, io)| ssl == "Yes" && verify == "Yes" && io == "Yes")
            .count();
        if good == replicas && seen.len() == replicas {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "replication not over verified TLS: {seen:?}\n{}",
            h.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_and_replication_verify_the_cluster_certificate() {
    let h = Harness::start(3).await;
    let (env, _) = h
        .provider_requiring_tls(true)
        .provision_database("shop", "db")
        .await
        .expect("provision");
    let url = env["MYSQL_URL"].clone();
    assert!(url.ends_with("?require_ssl=true"), "{url}");
    assert_eq!(env["DATABASE_URL"], url);
    assert_eq!(env["MYSQL_SSL_MODE"], "VERIFY_IDENTITY");
    let ca_file = env["MYSQL_SSL_CA"].clone();
    assert_eq!(Path::new(&ca_file), h.ca_file);

    // mysql_async with the URL and the CA: encrypted.
    let got = cipher(verifying(&url, Path::new(&ca_file)))
        .await
        .expect("mysql_async with the cluster CA");
    assert!(!got.is_empty(), "Ssl_cipher is empty");
    println!("mysql_async through the endpoint: Ssl_cipher {got}");

    // The mariadb CLI verifying the server's certificate: encrypted.
    let out = mariadb(&env, &ca_file, "SHOW STATUS LIKE 'Ssl_cipher'");
    assert!(
        out.status.success(),
        "mariadb --ssl-verify-server-cert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let cli_cipher = text.split_whitespace().nth(1).unwrap_or_default();
    assert!(!cli_cipher.is_empty(), "mariadb: Ssl_cipher empty: {text}");
    println!("mariadb CLI through the endpoint: Ssl_cipher {cli_cipher}");

    // A client trusting another CA is refused by its own verification, both clients.
    let other = make_ca(h.dir.path(), "other-ca.pem", "another CA");
    drop(other);
    let other_ca = h.dir.path().join("other-ca.pem");
    let refused = cipher(verifying(&url, &other_ca)).await;
    assert!(refused.is_err(), "connected trusting another CA");
    let out = mariadb(&env, &other_ca.to_string_lossy(), "SELECT 1");
    assert!(
        !out.status.success(),
        "mariadb connected trusting another CA"
    );

    // The app's user may not open a plain session (REQUIRE SSL).
    let plain = url.trim_end_matches("?require_ssl=true");
    let refused = connect(url_opts(plain)).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("Access denied")),
        "plain session: {:?}",
        refused.map(|_| ())
    );

    // Replication: required, verified, streaming; again after a failover.
    wait_replication_over_tls(&h, 2).await;
    let state = h.wait_healthy(Duration::from_secs(120), None).await;
    let i = h.index(&state.primary);
    let pid = server_pid(&h.cluster.members()[i].dir).expect("mysqld.pid");
    // SAFETY: kill(2) on the mariadbd of a test cluster.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let after = h
        .wait_healthy(Duration::from_secs(120), Some(&state.primary))
        .await;
    println!("failover: {} -> {}", state.primary, after.primary);
    wait_replication_over_tls(&h, 2).await;
    let got = cipher(verifying(&url, Path::new(&ca_file)))
        .await
        .expect("mysql_async after the failover");
    assert!(!got.is_empty());
    let mut app = connect(verifying(&url, Path::new(&ca_file))).await.unwrap();
    app.query_drop("CREATE TABLE t (id INT PRIMARY KEY)")
        .await
        .unwrap();
    app.query_drop("INSERT INTO t VALUES (1)").await.unwrap();
}
