//! Journal behaviour on a real directory: ids across restarts, torn tails, group sync,
//! drops over `max_bytes`, deletion of acknowledged segments, reader exclusivity.

use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use paas_logshipper::dedupe::Origin;
use paas_logshipper::journal::{record, Journal, JournalConfig, JournalError, ReadBatch};
use paas_logshipper::{LogLine, Stream};

fn line(i: u64) -> LogLine {
    LogLine {
        id: 0,
        app: "shop".into(),
        process_type: Some("web".into()),
        job: Some(format!("job-{}", i % 3).into()),
        host: None,
        stream: if i.is_multiple_of(2) {
            Stream::Stdout
        } else {
            Stream::Stderr
        },
        timestamp_ns: 1_700_000_000_000_000_000 + i as i64,
        message: format!("message number {i}"),
    }
}

fn lines(range: std::ops::Range<u64>) -> Vec<LogLine> {
    range.map(line).collect()
}

fn small() -> JournalConfig {
    JournalConfig {
        segment_bytes: 1024,
        max_bytes: 1024 * 1024,
    }
}

async fn read_all(r: &mut paas_logshipper::journal::JournalReader, n: usize) -> Vec<LogLine> {
    let mut out = Vec::new();
    while out.len() < n {
        match r.next_batch(n - out.len()).await.unwrap() {
            ReadBatch::Lines(l) => out.extend(l),
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn ids_continue_across_restart_and_reader_resumes_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), small()).unwrap();
    let mut r = j.reader("es").unwrap();
    let mut batch = lines(0..50);
    assert_eq!(j.append(&mut batch).unwrap(), 50);
    assert_eq!(batch[0].id, 1);
    let got = read_all(&mut r, 30).await;
    assert_eq!(
        got.iter().map(|l| l.id).collect::<Vec<_>>(),
        (1..=30).collect::<Vec<_>>()
    );
    assert_eq!(got[4].message, "message number 4");
    r.commit(20).await.unwrap();
    drop(r);
    drop(j);

    let j = Journal::open(dir.path(), small()).unwrap();
    let mut more = lines(50..60);
    assert_eq!(j.append(&mut more).unwrap(), 60);
    assert_eq!(more[0].id, 51);
    let mut r = j.reader("es").unwrap();
    let got = read_all(&mut r, 40).await;
    assert_eq!(
        got.iter().map(|l| l.id).collect::<Vec<_>>(),
        (21..=60).collect::<Vec<_>>()
    );
    assert_eq!(got.last().unwrap().message, "message number 59");
}

#[tokio::test]
async fn torn_tail_is_truncated_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), small()).unwrap();
    let mut r = j.reader("d").unwrap();
    j.append(&mut lines(0..5)).unwrap();
    drop(r);
    drop(j);
    let active = segment_files(dir.path()).pop().unwrap();
    let good_len = std::fs::metadata(&active).unwrap().len();
    // A crash in the middle of writing a sixth record: a header and half a payload.
    let mut f = OpenOptions::new().append(true).open(&active).unwrap();
    f.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 6, 0, 0, 0, 0, 0, 0, 0, b'x', b'y'])
        .unwrap();
    drop(f);

    let j = Journal::open(dir.path(), small()).unwrap();
    assert_eq!(std::fs::metadata(&active).unwrap().len(), good_len);
    assert_eq!(j.stats().last_id, 5);
    let mut next = lines(5..7);
    assert_eq!(j.append(&mut next).unwrap(), 7);
    r = j.reader("d").unwrap();
    // The reader was created before the first append, so it sees all of them.
    let got = read_all(&mut r, 7).await;
    assert_eq!(
        got.iter().map(|l| l.id).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    assert_eq!(got[6].message, "message number 6");
}

#[tokio::test]
async fn reader_waits_for_new_lines() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), small()).unwrap();
    let mut r = j.reader("d").unwrap();
    let j2 = j.clone();
    let waiter = tokio::spawn(async move {
        let b = r.next_batch(10).await.unwrap();
        (r, b)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished());
    j2.append(&mut lines(0..3)).unwrap();
    let (_r, b) = waiter.await.unwrap();
    match b {
        ReadBatch::Lines(l) => assert_eq!(l.len(), 3),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn over_max_bytes_drops_oldest_and_reader_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = JournalConfig {
        segment_bytes: 1000,
        max_bytes: 4000,
    };
    let j = Journal::open(dir.path(), cfg).unwrap();
    let mut r = j.reader("slow").unwrap();
    for i in 0..100 {
        j.append(&mut lines(i * 10..i * 10 + 10)).unwrap();
    }
    let stats = j.stats();
    assert!(stats.bytes <= 4000 + 1000, "bytes {}", stats.bytes);
    assert!(stats.first_id > 1);
    let mut seen = 0u64;
    let mut dropped = 0u64;
    let mut expect = 1u64;
    while expect <= 1000 {
        match r.next_batch(64).await.unwrap() {
            ReadBatch::Dropped { count, through_id } => {
                assert_eq!(through_id + 1 - count, expect);
                dropped += count;
                expect = through_id + 1;
            }
            ReadBatch::Lines(l) => {
                for x in l {
                    assert_eq!(x.id, expect);
                    assert_eq!(x.message, format!("message number {}", x.id - 1));
                    expect += 1;
                    seen += 1;
                }
            }
        }
    }
    assert_eq!(dropped, stats.first_id - 1);
    assert_eq!(seen + dropped, 1000);
}

#[tokio::test]
async fn committed_segments_are_deleted_once_every_reader_passed_them() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), small()).unwrap();
    let mut a = j.reader("a").unwrap();
    let mut b = j.reader("b").unwrap();
    j.append(&mut lines(0..200)).unwrap();
    let before = j.stats().segments;
    assert!(before > 5);
    read_all(&mut a, 200).await;
    a.commit(200).await.unwrap();
    assert_eq!(j.stats().segments, before, "b still needs them");
    read_all(&mut b, 150).await;
    b.commit(150).await.unwrap();
    let mid = j.stats();
    assert!(mid.segments < before);
    assert!(mid.first_id <= 151);
    b.commit(200).await.unwrap();
    assert_eq!(j.stats().segments, 1);
    assert_eq!(segment_files(dir.path()).len(), 1);
    // Removing a reader releases what it held.
    j.append(&mut lines(0..100)).unwrap();
    drop(b);
    j.remove_reader("b").unwrap();
    read_all(&mut a, 100).await;
    a.commit(300).await.unwrap();
    assert_eq!(j.stats().segments, 1);
}

#[tokio::test]
async fn reader_names_are_exclusive_and_validated() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), small()).unwrap();
    let r = j.reader("x").unwrap();
    assert!(matches!(j.reader("x"), Err(JournalError::ReaderBusy(_))));
    drop(r);
    j.reader("x").unwrap();
    assert!(matches!(
        j.reader("../etc"),
        Err(JournalError::InvalidReaderName(_))
    ));
}

#[tokio::test]
async fn commit_beyond_end_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), small()).unwrap();
    let mut r = j.reader("x").unwrap();
    j.append(&mut lines(0..3)).unwrap();
    assert!(matches!(
        r.commit(4).await,
        Err(JournalError::CommitBeyondEnd { id: 4, last: 3 })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_and_syncs_assign_unique_ids() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(
        dir.path(),
        JournalConfig {
            segment_bytes: 64 * 1024,
            max_bytes: 1 << 30,
        },
    )
    .unwrap();
    let mut r = j.reader("all").unwrap();
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let j = j.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..50u64 {
                let mut b = lines(t * 1000 + k * 10..t * 1000 + k * 10 + 10);
                j.append(&mut b).unwrap();
                j.sync().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = read_all(&mut r, 4000).await;
    let ids: Vec<u64> = got.iter().map(|l| l.id).collect();
    assert_eq!(ids, (1..=4000).collect::<Vec<_>>());
    let mut msgs: Vec<String> = got.into_iter().map(|l| l.message).collect();
    msgs.sort();
    msgs.dedup();
    assert_eq!(msgs.len(), 4000);
}

#[tokio::test]
async fn damaged_middle_segment_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), small()).unwrap();
    let _ = j.reader("r").unwrap();
    j.append(&mut lines(0..100)).unwrap();
    drop(j);
    let segs = segment_files(dir.path());
    assert!(segs.len() > 3);
    // Flip a byte in the middle of the second segment.
    let victim = &segs[1];
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(victim, bytes).unwrap();

    let j = Journal::open(dir.path(), small()).unwrap();
    let mut r = j.reader("r").unwrap();
    let (mut seen, mut dropped, mut expect) = (0u64, 0u64, 1u64);
    while expect <= 100 {
        match r.next_batch(1000).await.unwrap() {
            ReadBatch::Lines(l) => {
                for x in l {
                    assert_eq!(x.id, expect);
                    expect += 1;
                    seen += 1;
                }
            }
            ReadBatch::Dropped { count, through_id } => {
                assert_eq!(through_id + 1 - count, expect);
                expect = through_id + 1;
                dropped += count;
            }
        }
    }
    assert!(dropped > 0);
    assert_eq!(seen + dropped, 100);
}

#[tokio::test]
async fn ids_are_not_reused_when_a_crash_lost_lines_a_reader_had_committed() {
    let dir = tempfile::tempdir().unwrap();
    let one_segment = JournalConfig {
        segment_bytes: 1 << 20,
        max_bytes: 1 << 30,
    };
    let j = Journal::open(dir.path(), one_segment.clone()).unwrap();
    let mut r = j.reader("d").unwrap();
    let mut other = j.reader("late").unwrap();
    j.append(&mut lines(0..10)).unwrap();
    read_all(&mut r, 10).await;
    r.commit(10).await.unwrap();
    read_all(&mut other, 4).await;
    other.commit(4).await.unwrap();
    drop((r, other, j));
    // The machine crashed before the segment reached the disk: its records are gone.
    let seg = segment_files(dir.path()).pop().unwrap();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(0)
        .unwrap();

    let j = Journal::open(dir.path(), one_segment.clone()).unwrap();
    let mut fresh = lines(10..12);
    assert_eq!(j.append(&mut fresh).unwrap(), 12);
    assert_eq!(fresh[0].id, 11, "id 5..=10 are not handed out again");
    let mut r = j.reader("d").unwrap();
    let got = read_all(&mut r, 2).await;
    assert_eq!(got[0].message, "message number 10");
    // The reader that was behind learns that ids 5..=10 are gone.
    let mut other = j.reader("late").unwrap();
    assert_eq!(
        other.next_batch(100).await.unwrap(),
        ReadBatch::Dropped {
            count: 6,
            through_id: 10
        }
    );
    let got = read_all(&mut other, 2).await;
    assert_eq!(got[1].id, 12);
}

#[tokio::test]
async fn an_undecodable_record_is_skipped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), small()).unwrap();
    let mut r = j.reader("d").unwrap();
    j.append(&mut lines(0..3)).unwrap();
    drop(j);
    // A record with a valid crc whose payload is not a line (0xc1 is never valid).
    let mut framed = Vec::new();
    record::frame(&mut framed, 4, &[0xc1]);
    let active = segment_files(dir.path()).pop().unwrap();
    OpenOptions::new()
        .append(true)
        .open(&active)
        .unwrap()
        .write_all(&framed)
        .unwrap();
    drop(r);

    let j = Journal::open(dir.path(), small()).unwrap();
    j.append(&mut lines(4..6)).unwrap();
    r = j.reader("d").unwrap();
    let mut events = Vec::new();
    while events.len() < 6 {
        match r.next_batch(100).await.unwrap() {
            ReadBatch::Lines(l) => events.extend(l.into_iter().map(|l| l.id.to_string())),
            ReadBatch::Dropped { count, through_id } => {
                events.push(format!("dropped {count} through {through_id}"))
            }
        }
    }
    assert_eq!(events, ["1", "2", "3", "dropped 1 through 4", "5", "6"]);
}

#[tokio::test]
async fn oversized_lines_are_refused_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), small()).unwrap();
    let mut batch = lines(0..3);
    batch[1].message = "x".repeat(record::MAX_PAYLOAD as usize);
    assert!(matches!(j.append(&mut batch), Err(JournalError::Record(_))));
    assert_eq!(j.stats().last_id, 0);
    assert_eq!(j.append(&mut lines(0..1)).unwrap(), 1);
}

/// Lines from `host` carrying spool ids `seqs` of incarnation `spool`.
fn shipped(
    host: &str,
    spool: u64,
    seqs: std::ops::Range<u64>,
) -> (Vec<LogLine>, Vec<Option<Origin>>) {
    seqs.map(|s| {
        let mut l = line(s);
        l.host = Some(host.into());
        (
            l,
            Some(Origin {
                seq: s,
                spool: Some(spool),
            }),
        )
    })
    .unzip()
}

fn append_shipped(
    j: &Journal,
    host: &str,
    spool: u64,
    seqs: std::ops::Range<u64>,
) -> (Vec<u64>, u64) {
    let (mut batch, origins) = shipped(host, spool, seqs);
    let appended = j.append_from(&mut batch, &origins).unwrap();
    (batch.iter().map(|l| l.id).collect(), appended.duplicates)
}

#[tokio::test]
async fn replays_are_dropped_also_after_reopen_and_a_new_spool_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), small()).unwrap();
    let mut r = j.reader("check").unwrap();
    // 1..=40 from h1 (several segments of 1 KiB), 1..=5 from h2.
    assert_eq!(append_shipped(&j, "h1", 7, 1..41).1, 0);
    assert_eq!(append_shipped(&j, "h2", 9, 1..6).1, 0);
    assert!(segment_files(dir.path()).len() > 3, "rolled segments");
    // A replay overlapping the end: only the new lines get ids.
    let (ids, dups) = append_shipped(&j, "h1", 7, 30..45);
    assert_eq!((ids, dups), (vec![46, 47, 48, 49], 11));
    // Lines without an origin are never dropped, even from a tracked host.
    let mut plain = lines(1..3);
    plain[0].host = Some("h1".into());
    assert_eq!(j.append_from(&mut plain, &[]).unwrap().duplicates, 0);
    assert_eq!(plain.len(), 2);
    // What was written is exactly the accepted lines, under their ids.
    let got: Vec<(u64, Option<String>, String)> = read_all(&mut r, 51)
        .await
        .into_iter()
        .map(|l| (l.id, l.host.map(String::from), l.message))
        .collect();
    let mut want: Vec<(Option<String>, String)> = Vec::new();
    for (h, seqs) in [("h1", 1..41), ("h2", 1..6), ("h1", 41..45)] {
        want.extend(seqs.map(|s| (Some(h.to_string()), format!("message number {s}"))));
    }
    want.push((Some("h1".into()), "message number 1".into()));
    want.push((None, "message number 2".into()));
    let want: Vec<_> = (1..).zip(want).map(|(id, (h, m))| (id, h, m)).collect();
    assert_eq!(got, want);
    drop((r, j));

    for round in 0..2 {
        if round == 1 {
            // Without the newest checkpoint, the marks come from an older one plus more
            // segments read.
            let mut marks: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "marks"))
                .collect();
            marks.sort();
            assert!(marks.len() >= 2, "{marks:?}");
            std::fs::remove_file(marks.last().unwrap()).unwrap();
        }
        let j = Journal::open(dir.path(), small()).unwrap();
        let last = j.stats().last_id;
        assert_eq!(
            append_shipped(&j, "h1", 7, 1..45),
            (vec![], 44),
            "round {round}"
        );
        assert_eq!(append_shipped(&j, "h2", 9, 1..6), (vec![], 5));
        assert_eq!(j.stats().last_id, last, "nothing written");
    }

    let j = Journal::open(dir.path(), small()).unwrap();
    // h2's spool was wiped: a new incarnation starts at 1 again and is accepted.
    let (ids, dups) = append_shipped(&j, "h2", 10, 1..4);
    assert_eq!((ids.len(), dups), (3, 0));
    assert_eq!(append_shipped(&j, "h2", 10, 1..4).1, 3);
    // h1 goes on after its mark.
    assert_eq!(append_shipped(&j, "h1", 7, 44..47).0.len(), 2);
}
