//! Model test of the journal: random appends, reads, commits, restarts and torn writes
//! against a plain in-memory model. After any sequence, a reader sees exactly the lines
//! after its committed cursor, in order, each once, with the content that was appended;
//! with a small `max_bytes`, every id is either seen or counted as dropped, exactly once.

use std::fs::OpenOptions;
use std::io::Write;

use paas_logshipper::journal::{record, Journal, JournalConfig, JournalReader, ReadBatch};
use paas_logshipper::{LogLine, Stream};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    Read(u8),
    Commit,
    Restart,
    /// Restart after a crash in the middle of writing a record: `cut` bytes of it remain.
    TornRestart(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..30).prop_map(Op::Append),
        4 => (1u8..40).prop_map(Op::Read),
        2 => Just(Op::Commit),
        1 => Just(Op::Restart),
        1 => (1u8..60).prop_map(Op::TornRestart),
    ]
}

fn make_line(n: u64) -> LogLine {
    LogLine {
        id: 0,
        app: format!("app{}", n % 4).into(),
        process_type: None,
        job: n.is_multiple_of(2).then(|| format!("j{n}").into()),
        host: None,
        stream: Stream::Stdout,
        timestamp_ns: n as i64,
        message: "x".repeat((n % 37) as usize) + &n.to_string(),
    }
}

/// What the model expects a reader to see.
struct Model {
    /// Message of every id ever appended (index = id - 1).
    appended: Vec<String>,
    committed: u64,
    /// Next id the open reader will return (or report as dropped).
    read_pos: u64,
    seen: u64,
    dropped: u64,
}

struct Real {
    journal: Option<Journal>,
    reader: Option<JournalReader>,
}

fn open(dir: &std::path::Path, cfg: &JournalConfig) -> Real {
    let journal = Journal::open(dir, cfg.clone()).unwrap();
    let reader = journal.reader("m").unwrap();
    Real {
        journal: Some(journal),
        reader: Some(reader),
    }
}

fn active_segment(dir: &std::path::Path) -> std::path::PathBuf {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v.pop().unwrap()
}

fn run(ops: Vec<Op>, cfg: JournalConfig, may_drop: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let mut real = open(dir.path(), &cfg);
        let mut m = Model {
            appended: Vec::new(),
            committed: 0,
            read_pos: 1,
            seen: 0,
            dropped: 0,
        };
        let mut counter = 0u64;
        for op in ops {
            match op {
                Op::Append(n) => {
                    let mut batch: Vec<LogLine> = (0..n)
                        .map(|_| {
                            counter += 1;
                            make_line(counter)
                        })
                        .collect();
                    let last = real.journal.as_ref().unwrap().append(&mut batch).unwrap();
                    for l in &batch {
                        m.appended.push(l.message.clone());
                        assert_eq!(l.id, m.appended.len() as u64, "ids are consecutive");
                    }
                    assert_eq!(last, m.appended.len() as u64);
                }
                Op::Read(max) => {
                    if m.read_pos > m.appended.len() as u64 {
                        continue; // caught up: next_batch would wait
                    }
                    let r = real.reader.as_mut().unwrap();
                    match r.next_batch(max as usize).await.unwrap() {
                        ReadBatch::Lines(lines) => {
                            assert!(!lines.is_empty() && lines.len() <= max as usize);
                            for l in lines {
                                assert_eq!(l.id, m.read_pos, "no loss, no duplicate");
                                assert_eq!(l.message, m.appended[(l.id - 1) as usize]);
                                m.read_pos += 1;
                                m.seen += 1;
                            }
                        }
                        ReadBatch::Dropped { count, through_id } => {
                            assert!(may_drop, "dropped {count} without a size limit");
                            assert!(count > 0);
                            assert_eq!(through_id + 1 - count, m.read_pos);
                            m.read_pos = through_id + 1;
                            m.dropped += count;
                        }
                    }
                }
                Op::Commit => {
                    let upto = m.read_pos - 1;
                    real.reader.as_mut().unwrap().commit(upto).await.unwrap();
                    m.committed = m.committed.max(upto);
                }
                Op::Restart | Op::TornRestart(_) => {
                    real.reader = None;
                    real.journal = None;
                    if let Op::TornRestart(cut) = op {
                        let mut framed = Vec::new();
                        let payload = record::encode_payload(&make_line(999), None).unwrap();
                        record::frame(&mut framed, m.appended.len() as u64 + 1, &payload);
                        let cut = (cut as usize).min(framed.len() - 1);
                        let mut f = OpenOptions::new()
                            .append(true)
                            .open(active_segment(dir.path()))
                            .unwrap();
                        f.write_all(&framed[..cut]).unwrap();
                    }
                    real = open(dir.path(), &cfg);
                    assert_eq!(
                        real.journal.as_ref().unwrap().stats().last_id,
                        m.appended.len() as u64,
                        "restart keeps every appended line"
                    );
                    assert_eq!(real.reader.as_ref().unwrap().committed(), m.committed);
                    // Lines read but not committed are read again; counts restart there.
                    m.read_pos = m.committed + 1;
                }
            }
        }
        // Drain the rest: everything after the cursor is seen or dropped exactly once.
        let r = real.reader.as_mut().unwrap();
        let end = m.appended.len() as u64;
        while m.read_pos <= end {
            match r.next_batch(100).await.unwrap() {
                ReadBatch::Lines(lines) => {
                    for l in lines {
                        assert_eq!(l.id, m.read_pos);
                        assert_eq!(l.message, m.appended[(l.id - 1) as usize]);
                        m.read_pos += 1;
                    }
                }
                ReadBatch::Dropped { count, through_id } => {
                    assert!(may_drop);
                    assert_eq!(through_id + 1 - count, m.read_pos);
                    m.read_pos = through_id + 1;
                }
            }
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn no_loss_no_duplicates(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops, JournalConfig { segment_bytes: 700, max_bytes: 1 << 30 }, false);
    }

    #[test]
    fn drops_are_exactly_accounted(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops, JournalConfig { segment_bytes: 400, max_bytes: 1600 }, true);
    }
}
