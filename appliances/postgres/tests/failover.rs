//! Failover with real etcd, three real supervisor processes and real PostgreSQL 15.
//!
//! A writer inserts through the leader-following endpoint and records every insert
//! that was acknowledged; a monitor probes every instance directly with a write, many
//! times a second. Then the primary is forced out, in turn: kill -9 of its postmaster,
//! kill -9 of its supervisor (restarted afterwards, as a host agent would), and SIGSTOP
//! of its supervisor (a partition: its PostgreSQL keeps running; SIGCONT afterwards).
//! After each: a new member leads, writes resume through the same endpoint address, the
//! old primary rejoins as a standby, and every acknowledged row is present. At no
//! sampled moment do two instances accept a write.
//!
//! `PAAS_PG_FAILOVERS` sets how many rounds of the three kinds run (default 1).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{connect, connect_direct, Harness, PASSWORD};

/// The rows the writer got an acknowledgement for, and when the last one came.
#[derive(Default)]
struct Acked {
    ids: Vec<i64>,
    last: Option<Instant>,
}

fn endpoint_conninfo(h: &Harness) -> String {
    let addr = h.endpoint_addr();
    format!(
        "host={} port={} user=postgres password={PASSWORD} dbname=postgres connect_timeout=3",
        addr.ip(),
        addr.port()
    )
}

/// Inserts ids 1, 2, 3... through the endpoint, recording the acknowledged ones. An id
/// whose insert failed or timed out is never retried (its fate is unknown, so it is not
/// counted as acknowledged).
async fn writer(conninfo: String, acked: Arc<Mutex<Acked>>, stop: Arc<AtomicBool>) {
    let mut next = 0i64;
    while !stop.load(Ordering::SeqCst) {
        let Ok(client) = connect(&conninfo).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while !stop.load(Ordering::SeqCst) {
            next += 1;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&next];
            let insert = client.execute("INSERT INTO acked (id) VALUES ($1)", &params);
            match tokio::time::timeout(Duration::from_secs(20), insert).await {
                Ok(Ok(1)) => {
                    let mut a = acked.lock().unwrap();
                    a.ids.push(next);
                    a.last = Some(Instant::now());
                }
                _ => break,
            }
        }
    }
}

/// Probes every instance with a direct write each round; returns the rounds in which
/// more than one instance acknowledged a write.
async fn monitor(ports: Vec<(String, u16)>, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut clients: Vec<Option<tokio_postgres::Client>> = ports.iter().map(|_| None).collect();
    let mut violations = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let mut probes = Vec::new();
        for (i, (_, port)) in ports.iter().enumerate() {
            let client = clients[i].take();
            let port = *port;
            probes.push(tokio::spawn(async move {
                let client = match client {
                    Some(c) if !c.is_closed() => c,
                    _ => match tokio::time::timeout(Duration::from_secs(1), connect_direct(port))
                        .await
                    {
                        Ok(Ok(c)) => c,
                        _ => return (false, None),
                    },
                };
                // No statement_timeout: cancelling a commit that waits for the sync would
                // make it visible locally. A timed-out probe's connection is dropped.
                let write = client.execute("INSERT INTO probe (at) VALUES (now())", &[]);
                match tokio::time::timeout(Duration::from_millis(800), write).await {
                    Ok(Ok(_)) => (true, Some(client)),
                    Ok(Err(_)) => (false, Some(client)),
                    Err(_) => (false, None),
                }
            }));
        }
        let mut writable = Vec::new();
        for (i, probe) in probes.into_iter().enumerate() {
            let (ok, client) = probe.await.unwrap();
            clients[i] = client;
            if ok {
                writable.push(ports[i].0.clone());
            }
        }
        if writable.len() > 1 {
            violations.push(format!("{writable:?} accepted writes in the same round"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    violations
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    KillPostgres,
    KillSupervisor,
    FreezeSupervisor,
}

async fn wait_until(
    what: &str,
    h: &Harness,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> bool,
) {
    let started = Instant::now();
    while !check().await {
        if started.elapsed() > timeout {
            panic!(
                "{what}: not within {timeout:?}\n{}\n{}",
                common::describe(&h.snapshot().await),
                h.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn verify_acked(h: &Harness, acked: &Arc<Mutex<Acked>>) -> usize {
    let expected: BTreeSet<i64> = acked.lock().unwrap().ids.iter().copied().collect();
    let conninfo = endpoint_conninfo(h);
    let started = Instant::now();
    loop {
        let present = async {
            let client = connect(&conninfo).await.ok()?;
            let rows = client.query("SELECT id FROM acked", &[]).await.ok()?;
            Some(
                rows.iter()
                    .map(|r| r.get::<_, i64>(0))
                    .collect::<BTreeSet<i64>>(),
            )
        }
        .await;
        if let Some(present) = present {
            let missing: Vec<&i64> = expected.difference(&present).collect();
            assert!(
                missing.is_empty(),
                "acknowledged rows lost: {missing:?}\n{}",
                h.logs()
            );
            return expected.len();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "cannot read back rows through the endpoint"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_every_kind_of_failover() {
    let rounds: usize = std::env::var("PAAS_PG_FAILOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut h = Harness::start(3).await;
    {
        let setup = connect(&endpoint_conninfo(&h))
            .await
            .expect("connect through the endpoint");
        setup
            .batch_execute(
                "CREATE TABLE acked (id bigint PRIMARY KEY); CREATE TABLE probe (at timestamptz)",
            )
            .await
            .expect("create tables");
    }
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer_task = tokio::spawn(writer(endpoint_conninfo(&h), acked.clone(), stop.clone()));
    let ports = h
        .cluster
        .members()
        .iter()
        .map(|m| (m.name.clone(), m.pg_port))
        .collect();
    let monitor_task = tokio::spawn(monitor(ports, stop.clone()));

    let kinds = [
        Kind::KillPostgres,
        Kind::KillSupervisor,
        Kind::FreezeSupervisor,
    ];
    for round in 0..rounds {
        for kind in kinds {
            let state = h.wait_healthy(Duration::from_secs(90), None).await;
            let old = state.primary.clone();
            let i = h.index(&old);
            let before = acked.lock().unwrap().ids.len();
            wait_until(
                "writes flowing before the failover",
                &h,
                Duration::from_secs(30),
                async || acked.lock().unwrap().ids.len() > before + 5,
            )
            .await;
            let t0 = Instant::now();
            match kind {
                Kind::KillPostgres => {
                    let pid = h.cluster.members()[i]
                        .postmaster_pid()
                        .expect("postmaster.pid");
                    // SAFETY: kill(2) on the postmaster of a test cluster.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                Kind::KillSupervisor => h.cluster.signal(i, libc::SIGKILL),
                Kind::FreezeSupervisor => h.cluster.signal(i, libc::SIGSTOP),
            }
            wait_until(
                "a new member leads",
                &h,
                Duration::from_secs(30),
                async || {
                    let s = h.snapshot().await;
                    s.leader.is_some_and(|l| l.record.member != old)
                        && s.state.is_some_and(|(st, _)| {
                            st.generation > state.generation && st.primary != old
                        })
                },
            )
            .await;
            let acks_at_kill = acked.lock().unwrap().ids.len();
            wait_until(
                "writes resume through the same endpoint",
                &h,
                Duration::from_secs(30),
                async || {
                    let a = acked.lock().unwrap();
                    a.ids.len() > acks_at_kill && a.last.is_some_and(|last| last > t0)
                },
            )
            .await;
            let took = t0.elapsed();
            match kind {
                Kind::KillPostgres => {}
                Kind::KillSupervisor => h.cluster.restart(i).expect("restart supervisor"),
                Kind::FreezeSupervisor => {
                    // Let the monitor watch the frozen side's still-running PostgreSQL.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    h.cluster.signal(i, libc::SIGCONT);
                }
            }
            let healthy = h.wait_healthy(Duration::from_secs(90), Some(&old)).await;
            let rows = verify_acked(&h, &acked).await;
            println!(
                "round {round} {kind:?}: {old} -> {} (generation {}), writes resumed after {took:?}; {rows} acknowledged rows all present",
                healthy.primary, healthy.generation
            );
        }
    }

    stop.store(true, Ordering::SeqCst);
    writer_task.await.unwrap();
    let violations = monitor_task.await.unwrap();
    let rows = verify_acked(&h, &acked).await;
    assert!(
        violations.is_empty(),
        "two writable instances: {violations:#?}"
    );
    assert!(rows > 0);
}
