//! TLS with the cluster's certificate, against real etcd, two real supervisors and real
//! PostgreSQL 15: an app's `DATABASE_URL` with `sslmode=verify-full` and the CA connects
//! through the leader-following endpoint (psql, i.e. libpq) and `pg_stat_ssl` shows its
//! session encrypted; a client that trusts another CA is refused; the standby streams
//! over TLS. After the primary's postmaster is killed, the same holds with the new
//! primary, and the old one rejoins (pg_rewind, verifying the new primary's certificate).

mod common;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use common::{connect, endpoint_conninfo, make_ca, postmaster_pid, Harness};
use paas_postgres::provision::{ClientTls, PostgresProvider, ProviderConfig, VerifyRule};

/// psql with `url` running `sql` (unaligned, tuples only).
fn psql(url: &str, sql: &str) -> Output {
    std::process::Command::new(Path::new(paas_it::PG_BIN).join("psql"))
        .arg(url)
        .args(["-X", "-tA", "-c", sql])
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .output()
        .expect("psql runs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A provider whose URLs require verification when `verify` says so.
fn provider(h: &Harness, verify: bool) -> PostgresProvider {
    let addr = h.endpoint_addr();
    let verify_full: VerifyRule = Arc::new(move || Box::pin(async move { verify }));
    PostgresProvider::new(ProviderConfig {
        host: addr.ip().to_string(),
        port: addr.port(),
        superuser_password: common::PASSWORD.into(),
        tls: Some(ClientTls {
            ca_file: h.ca_file.display().to_string(),
            verify_full,
        }),
    })
}

/// How many of the primary's walsenders stream over TLS, and how many there are.
async fn replication_over_tls(h: &Harness) -> (i64, i64) {
    let row = connect(&endpoint_conninfo(h))
        .await
        .expect("superuser through the endpoint")
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) \
             FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)",
            &[],
        )
        .await
        .expect("query");
    (row.get(0), row.get(1))
}

const SESSION_SSL: &str = "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apps_verify_the_server_and_members_replicate_over_tls() {
    let h = Harness::start(2).await;

    // One host: the URL leaves TLS to the client's default, and names the CA.
    let (env, _) = provider(&h, false)
        .provision_database("shop", "r1")
        .await
        .expect("provision");
    assert!(!env["DATABASE_URL"].contains("sslmode"), "{env:?}");
    assert_eq!(env["PGSSLROOTCERT"], h.ca_file.display().to_string());
    // libpq's default (prefer) negotiates TLS with a server that offers it.
    assert!(ok(&psql(&env["DATABASE_URL"], SESSION_SSL)).starts_with("t|TLSv1."));

    // Clients may be elsewhere: the URL requires verify-full against the CA.
    let (env, _) = provider(&h, true)
        .provision_database("shop", "r1")
        .await
        .expect("provision again");
    let url = env["DATABASE_URL"].clone();
    assert!(
        url.ends_with(&format!(
            "?sslmode=verify-full&sslrootcert={}",
            h.ca_file.display()
        )),
        "{url}"
    );
    assert_eq!(env["PGSSLMODE"], "verify-full");
    let session = ok(&psql(&url, SESSION_SSL));
    assert!(session.starts_with("t|TLSv1."), "{session}");

    // A client that trusts another CA does not get a session, whether that CA has
    // another name or the same name as the cluster's (another key).
    for (file, name, error) in [
        ("other-ca.pem", "another CA", "certificate verify failed"),
        ("same-name-ca.pem", "test CA", "SSL error"),
    ] {
        make_ca(h.dir.path(), file, name);
        let other = h.dir.path().join(file);
        let forged = url.replace(
            &h.ca_file.display().to_string(),
            &other.display().to_string(),
        );
        let refused = psql(&forged, "SELECT 1");
        assert!(!refused.status.success(), "{name} must not verify");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(error), "{name}: {stderr}");
    }

    assert_eq!(replication_over_tls(&h).await, (1, 1), "{}", h.logs());

    // Failover: the sync takes over, the old primary rewinds and streams again.
    let state = h.wait_healthy(Duration::from_secs(30), None).await;
    let old = h.index(&state.primary);
    let pid = postmaster_pid(&h.cluster.members()[old].dir).expect("postmaster.pid");
    // SAFETY: kill(2) on the postmaster of this test's cluster.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let after = h
        .wait_healthy(Duration::from_secs(90), Some(&state.primary))
        .await;
    assert!(after.generation > state.generation);
    let session = ok(&psql(&url, SESSION_SSL));
    assert!(session.starts_with("t|TLSv1."), "{session}");
    assert_eq!(replication_over_tls(&h).await, (1, 1), "{}", h.logs());
}
