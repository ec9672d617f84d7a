//! The archive gap at a failover, against a real 3-member cluster archiving with
//! pgBackRest: the primary's archiver is frozen (SIGSTOP), so the segment holding some
//! acknowledged rows is completed but never pushed by the primary; then the primary is
//! killed (supervisor and server, kill -9) and stays down. A restore to a moment inside
//! that segment must still find exactly the rows of that moment: the standbys archive
//! the segments they received (`archive_mode = always`). Both survivors end up having
//! pushed the segment, the second push being accepted as the same file, and neither
//! archiver reports a failure.

mod common;

use std::time::{Duration, Instant};

use common::pitr::{after_first_backup, archive_args, ids, insert, note_time, pitr_provider};
use common::{connect, connect_direct, endpoint_conninfo, postmaster_pid, Harness};
use paas_appliance::provider::Provider;

/// The pid of the archiver process among the children of `postmaster`.
fn archiver_pid(postmaster: i32) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // pid (comm) state ppid ...: the command may hold spaces, the fields after ')' not.
            let ppid: i32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let cmdline = std::fs::read_to_string(entry.path().join("cmdline")).ok()?;
            (ppid == postmaster && cmdline.contains("archiver")).then_some(pid)
        })
}

/// The frozen archiver, SIGKILLed when the test ends, passing or failing. PostgreSQL
/// makes each of the postmaster's children lead its own process group, so killing the
/// postmaster's group does not reach it, and a stopped process never notices that its
/// postmaster died: it would stay behind for good. Held by pidfd, so the signal can only
/// reach that very process.
struct FrozenArchiver(std::os::fd::OwnedFd);

impl FrozenArchiver {
    fn freeze(pid: i32) -> FrozenArchiver {
        // SAFETY: pidfd_open(2) on the archiver of a test cluster; the returned
        // descriptor is owned by the guard alone.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        // SAFETY: a new descriptor that nothing else owns.
        let fd =
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        let frozen = FrozenArchiver(fd);
        let stopped = frozen.signal(libc::SIGSTOP);
        assert!(stopped.is_ok(), "SIGSTOP: {stopped:?}");
        frozen
    }

    /// Sends `signal`; a process already gone is not an error.
    fn signal(&self, signal: i32) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal(2) on the descriptor this guard holds.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        let error = std::io::Error::last_os_error();
        if sent == 0 || error.raw_os_error() == Some(libc::ESRCH) {
            Ok(())
        } else {
            Err(error)
        }
    }
}

impl Drop for FrozenArchiver {
    fn drop(&mut self) {
        // No panic here: this also runs while a failed test unwinds.
        if let Err(e) = self.signal(libc::SIGKILL) {
            eprintln!("cannot SIGKILL the frozen archiver: {e}");
        }
    }
}

/// What a member's archiver reports: the last segment it pushed and its failure count.
async fn archiver_stats(h: &Harness, i: usize) -> Option<(String, i64)> {
    let client = connect_direct(h.cluster.members()[i].addr()).await.ok()?;
    let row = client
        .query_one(
            "SELECT coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver",
            &[],
        )
        .await
        .ok()?;
    Some((row.get(0), row.get(1)))
}

/// Whether WAL segment `a` comes at or after `b` on any timeline (the timeline is the
/// first 8 hex digits of a segment's name, the position the other 16).
fn at_or_after(a: &str, b: &str) -> bool {
    a.len() >= 24 && a.get(8..24) >= b.get(8..24)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_the_primary_never_pushed_is_archived_by_the_standbys() {
    let mut h = Harness::start_with(3, archive_args).await;
    let provider = pitr_provider(&h);
    let (env, data) = provider.provision_database("shop", "db").await.unwrap();
    let url = env["DATABASE_URL"].clone();
    let data = serde_json::to_value(data).unwrap();
    connect(&url)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    after_first_backup(&h).await;

    // The primary stops archiving: its archiver is frozen.
    let old = h.wait_healthy(Duration::from_secs(30), None).await.primary;
    let i = h.index(&old);
    let postmaster = postmaster_pid(&h.cluster.members()[i].dir).expect("postmaster.pid");
    let archiver = archiver_pid(postmaster).expect("the primary's archiver");
    let frozen = FrozenArchiver::freeze(archiver);
    let (before, _) = archiver_stats(&h, i)
        .await
        .expect("primary's pg_stat_archiver");
    // Pushes before the stanza existed may have failed; none may fail from here on.
    let mut failed_before = Vec::new();
    for j in 0..h.cluster.members().len() {
        failed_before.push(archiver_stats(&h, j).await.expect("pg_stat_archiver").1);
    }

    insert(&url, 1..=10).await;
    let t = note_time().await;
    insert(&url, 11..=20).await;
    // Complete the segment holding t, and wait until every standby has received it.
    let superuser = connect(&endpoint_conninfo(&h)).await.unwrap();
    let row = superuser
        .query_one(
            "SELECT pg_walfile_name(lsn), lsn::text FROM (SELECT pg_switch_wal() AS lsn) s",
            &[],
        )
        .await
        .unwrap();
    let (segment, end): (String, String) = (row.get(0), row.get(1));
    let started = Instant::now();
    for (j, member) in h.cluster.members().iter().enumerate() {
        if j == i {
            continue;
        }
        loop {
            let received = async {
                let client = connect_direct(member.addr()).await.ok()?;
                let row = client
                    .query_one(
                        "SELECT pg_last_wal_receive_lsn() >= $1::text::pg_lsn",
                        &[&end],
                    )
                    .await
                    .ok()?;
                row.get::<_, Option<bool>>(0)
            }
            .await;
            if received == Some(true) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{} did not receive {segment}\n{}",
                member.name,
                h.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (pushed, _) = archiver_stats(&h, i)
        .await
        .expect("primary's pg_stat_archiver");
    assert_eq!(pushed, before, "the frozen archiver pushed nothing");
    assert!(!at_or_after(&pushed, &segment), "{pushed} vs {segment}");

    // kill -9 of the primary: its supervisor, its server's process group, and the
    // frozen archiver (a group of its own); it stays down.
    h.cluster.signal(i, libc::SIGKILL);
    // SAFETY: kill(2) on the process group the test cluster's postmaster leads.
    assert_eq!(unsafe { libc::kill(-postmaster, libc::SIGKILL) }, 0);
    drop(frozen);
    // The new primary takes writes once promoted with the remaining standby as its sync.
    let killed = Instant::now();
    loop {
        let ready = async {
            let client = connect(&endpoint_conninfo(&h)).await.ok()?;
            let row = client
                .query_one(
                    "SELECT inet_server_port(), pg_is_in_recovery(), \
                     (SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync')",
                    &[],
                )
                .await
                .ok()?;
            let port = u16::try_from(row.get::<_, i32>(0)).ok()?;
            Some(
                port != h.cluster.members()[i].port
                    && !row.get::<_, bool>(1)
                    && row.get::<_, i64>(2) > 0,
            )
        }
        .await;
        if ready == Some(true) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no new primary with a sync\n{}",
            h.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (restored_url, restored) = {
        let (env, data) = provider.provision_database("shop", "r").await.unwrap();
        (
            env["DATABASE_URL"].clone(),
            serde_json::to_value(data).unwrap(),
        )
    };
    let tell = |line: &str| eprintln!("restore: {line}");
    let said = provider
        .restore_to_time(&data, t, &restored, &tell)
        .await
        .unwrap_or_else(|e| panic!("restore to a moment in {segment}: {e}\n{}", h.logs()));
    eprintln!("{said}");
    assert_eq!(ids(&restored_url).await, (1..=10).collect::<Vec<_>>());

    // Both survivors push the segment (the one still a standby after a delay); the
    // second push finds the same file and is accepted, and no push failed meanwhile.
    let started = Instant::now();
    for j in (0..h.cluster.members().len()).filter(|&j| j != i) {
        loop {
            let stats = archiver_stats(&h, j).await;
            if let Some((last, failed)) = &stats {
                assert_eq!(
                    *failed,
                    failed_before[j],
                    "member {j}'s archiver failed\n{}",
                    h.logs()
                );
                if at_or_after(last, &segment) {
                    break;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "member {j} did not archive {segment}: {stats:?}\n{}",
                h.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
