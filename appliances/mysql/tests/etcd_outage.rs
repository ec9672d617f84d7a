//! The cluster comes back by itself after etcd is frozen or killed, whatever the length
//! of the outage, and loses no acknowledged write: every supervisor gets a new lease and
//! rejoins, and writes through the endpoint resume within a few seconds of etcd's return.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{prepare_app_database, verify_acked, writer, Acked, Harness};

/// How long after etcd is back writes must be acknowledged again.
const RESUME_WITHIN: Duration = Duration::from_secs(20);

enum Outage {
    Frozen(Duration),
    Restarted(Duration),
}

async fn survive(h: &mut Harness, outage: Outage, url: &str, acked: &Arc<Mutex<Acked>>) {
    h.wait_healthy(Duration::from_secs(90), None).await;
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
    let before = acked.lock().unwrap().ids.len();
    common::wait_until(
        &format!("writes after {what}"),
        h,
        RESUME_WITHIN,
        async || acked.lock().unwrap().ids.len() > before + 10,
    )
    .await;
    let resumed = back.elapsed();
    h.wait_healthy(Duration::from_secs(90), None).await;
    let rows = verify_acked(h, url, acked).await;
    println!("{what}: writes resumed {resumed:?} after etcd returned; {rows} acknowledged rows all present");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_rejoins_after_etcd_outages() {
    let mut h = Harness::start(3).await;
    let url = prepare_app_database(&h).await;
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let w = tokio::spawn(writer(url.clone(), Arc::clone(&acked), Arc::clone(&stop)));
    for outage in [
        Outage::Frozen(Duration::from_secs(5)),
        Outage::Frozen(Duration::from_secs(30)),
        Outage::Restarted(Duration::from_secs(5)),
    ] {
        survive(&mut h, outage, &url, &acked).await;
    }
    stop.store(true, Ordering::SeqCst);
    w.await.unwrap();
}
