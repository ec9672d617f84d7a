//! Forced failovers of a two-member group under a writer that confirms each write with
//! `WAIT 1 1000`: kill -9 of the primary's redis-server, kill -9 of its supervisor, and
//! SIGSTOP of its supervisor (its redis-server keeps running, unsupervised). After
//! every failover the old primary rejoins as a replica. No write `WAIT` confirmed may be
//! lost; unconfirmed writes lost are counted and printed, not failed (Redis replication
//! is asynchronous). Failover times are printed (the bench measures them over 20 runs).
//! The two-member group runs with a certificate: replication, the supervisors' and the
//! writer's connections over verified TLS.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{missing, writer, Harness, Written};

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillRedis,
    KillSupervisor,
    StopSupervisor,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wait_confirmed_write_is_lost_across_forced_failovers() {
    let faults = [
        Fault::KillRedis,
        Fault::KillSupervisor,
        Fault::StopSupervisor,
        Fault::KillRedis,
        Fault::KillSupervisor,
        Fault::StopSupervisor,
    ];
    run_failovers(Harness::start_with(2, true).await, &faults).await;
}

/// With two replicas, both detach from the lost primary before the one with the highest
/// offset is promoted; the frozen supervisor's redis-server keeps streaming to them
/// until they do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_promote_the_highest_offset_after_detaching() {
    let faults = [
        Fault::StopSupervisor,
        Fault::KillRedis,
        Fault::KillSupervisor,
    ];
    run_failovers(Harness::start(3).await, &faults).await;
}

async fn run_failovers(mut h: Harness, faults: &[Fault]) {
    let written = Arc::new(Mutex::new(Written::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(writer(h.url(), written.clone(), stop.clone()));

    for &fault in faults {
        let state = h.wait_healthy(Duration::from_secs(60), None).await;
        let old = h.index(&state.primary);
        let old_port = h.group.members()[old].port;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let t0 = Instant::now();
        match fault {
            Fault::KillRedis => {
                let pid = h.redis_pid(old).expect("primary's redis pid");
                // SAFETY: kill(2) on a redis-server this test's group started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            Fault::KillSupervisor => {
                h.group.signal(old, libc::SIGKILL);
                h.group.restart(old).expect("restart the supervisor");
            }
            Fault::StopSupervisor => {
                h.group.signal(old, libc::SIGSTOP);
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let snapshot = h.snapshot().await;
                    if snapshot
                        .leader
                        .as_ref()
                        .is_some_and(|l| l.record.member != state.primary)
                    {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "no new leader while {} is frozen",
                        state.primary
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                h.group.signal(old, libc::SIGCONT);
            }
        }
        let new = h
            .wait_healthy(Duration::from_secs(60), Some(&state.primary))
            .await;
        let back = loop {
            if let Some(at) = written
                .lock()
                .unwrap()
                .first_accepted_elsewhere_after(t0, old_port)
            {
                break at;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "no write accepted after {fault:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        println!(
            "{fault:?}: {} -> {} (generation {} -> {}), writes accepted again after {:?}",
            state.primary,
            new.primary,
            state.generation,
            new.generation,
            back - t0
        );
        assert!(new.generation > state.generation);
    }
    h.wait_healthy(Duration::from_secs(60), None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    task.await.unwrap();

    let w = std::mem::take(&mut *written.lock().unwrap());
    let lost_confirmed = missing(&h.url(), &w.confirmed).await;
    let lost_unconfirmed = missing(&h.url(), &w.unconfirmed).await;
    println!(
        "{} WAIT-confirmed writes, {} lost; {} unconfirmed writes, {} lost",
        w.confirmed.len(),
        lost_confirmed.len(),
        w.unconfirmed.len(),
        lost_unconfirmed.len()
    );
    assert!(w.confirmed.len() > 100, "the writer made progress");
    assert!(
        lost_confirmed.is_empty(),
        "WAIT-confirmed writes lost: {:?}\n{}",
        &lost_confirmed[..lost_confirmed.len().min(20)],
        h.logs()
    );
}
