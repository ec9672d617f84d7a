//! A group comes back by itself after etcd is frozen or killed, whatever the length of
//! the outage, and loses no `WAIT`-confirmed write: every supervisor gets a new lease
//! (the primary's server is fenced when its lease may be expiring), and writes through
//! the endpoint are confirmed again within seconds of etcd's return.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{missing, writer, Harness, Written};

/// How long after etcd is back writes must be confirmed again.
const RESUME_WITHIN: Duration = Duration::from_secs(30);

enum Outage {
    Frozen(Duration),
    Restarted(Duration),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_rejoins_after_etcd_outages_without_losing_confirmed_writes() {
    let mut h = Harness::start(2).await;
    let written = Arc::new(Mutex::new(Written::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(writer(h.url(), written.clone(), stop.clone()));
    for outage in [
        Outage::Frozen(Duration::from_secs(5)),
        Outage::Frozen(Duration::from_secs(30)),
        Outage::Restarted(Duration::from_secs(5)),
    ] {
        h.wait_healthy(Duration::from_secs(60), None).await;
        let pid = h.etcd.process().pid().expect("etcd pid") as i32;
        let what = match outage {
            Outage::Frozen(d) => {
                // SAFETY: signals to the etcd child this test started.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                tokio::time::sleep(d).await;
                unsafe { libc::kill(pid, libc::SIGCONT) };
                format!("etcd frozen {d:?}")
            }
            Outage::Restarted(d) => {
                h.etcd.stop();
                tokio::time::sleep(d).await;
                h.etcd.restart().expect("etcd restart");
                format!("etcd killed for {d:?}")
            }
        };
        let back = Instant::now();
        let before = written.lock().unwrap().confirmed.len();
        loop {
            if written.lock().unwrap().confirmed.len() > before + 10 {
                break;
            }
            assert!(
                back.elapsed() < RESUME_WITHIN,
                "no confirmed writes {RESUME_WITHIN:?} after {what}\n{}",
                h.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "{what}: writes confirmed again {:?} after etcd returned",
            back.elapsed()
        );
    }
    h.wait_healthy(Duration::from_secs(60), None).await;
    stop.store(true, Ordering::SeqCst);
    task.await.unwrap();
    let w = std::mem::take(&mut *written.lock().unwrap());
    let lost = missing(&h.url(), &w.confirmed).await;
    let lost_unconfirmed = missing(&h.url(), &w.unconfirmed).await;
    println!(
        "{} WAIT-confirmed writes, {} lost; {} unconfirmed, {} lost",
        w.confirmed.len(),
        lost.len(),
        w.unconfirmed.len(),
        lost_unconfirmed.len()
    );
    assert!(
        lost.is_empty(),
        "WAIT-confirmed writes lost: {:?}",
        &lost[..lost.len().min(20)]
    );
}
