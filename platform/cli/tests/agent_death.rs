//! `kill -9` of `paas up` leaves no job process behind, even one the job forked: each
//! job runs under a shim (`paas job-shim`) that kills the job's whole process group when
//! the agent dies.

mod common;

use std::time::{Duration, Instant};

use common::{free_addr, ok, paas};
use paas_it::processes;

/// Every process whose command line mentions `marker` (shim, shells, sleeps).
fn marked(marker: &str) -> Vec<u32> {
    processes(|a| a.iter().any(|x| x.contains(marker)))
}

fn sleeps(marker: &str) -> Vec<u32> {
    processes(|a| a.len() == 2 && a[0].ends_with("sleep") && a[1] == marker)
}

#[test]
fn kill_9_of_paas_up_leaves_no_job_process() {
    let home = common::home();
    let home = home.path();
    let (mut up, _) = common::start_up(home, &free_addr(), &[]);
    let marker = format!(
        "1000.{}{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_micros()
    );
    let site = home.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("README"), "a worker that forks\n").unwrap();
    std::fs::write(
        home.join("Procfile"),
        format!("worker: sh -c 'sleep {marker} & sleep {marker}'\n"),
    )
    .unwrap();
    ok(paas(home, &["apps", "create", "shop"]));
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
    ok(paas(home, &["scale", "-a", "shop", "worker=1"]));
    let deadline = Instant::now() + Duration::from_secs(60);
    while sleeps(&marker).len() != 2 {
        assert!(Instant::now() < deadline, "the job's two sleeps never ran");
        std::thread::sleep(Duration::from_millis(50));
    }

    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(up.0.id() as i32, libc::SIGKILL) };
    let killed = Instant::now();
    up.0.wait().unwrap();
    while !marked(&marker).is_empty() {
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "processes left 2 s after kill -9 of paas up: {:?}",
            marked(&marker)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "every job process gone {:?} after kill -9 of paas up",
        killed.elapsed()
    );
    assert!(killed.elapsed() < Duration::from_secs(1));
}
