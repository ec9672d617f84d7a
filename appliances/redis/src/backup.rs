//! Backups of one Redis group, taken logically through its leader-following endpoint as
//! the app's ACL user (`default`: every command but `@admin`, so neither `SYNC` nor
//! `BGSAVE`; `SCAN`, `DUMP`, `PTTL`, `RESTORE`, `SWAPDB`, `FLUSHDB` and `INFO` are
//! allowed).
//!
//! Format (`paas redis dump v1`), integers big-endian: the 11-byte magic
//! `PAASRDUMP1\n`, the number of databases n:u32 and their indexes (n × u32), then
//! records tagged by one byte:
//!
//! ```text
//! 'D' db:u32                                     the keys that follow are in db
//! 'K' len:u32 key  expires_at_ms:i64  len:u32 payload   one key: DUMP's payload
//!                                                (Redis's own serialization with its
//!                                                RDB version and CRC64), absolute
//!                                                expiry in Unix ms or -1
//! 'E' keys:u64                                   the end, with the number of keys
//! ```
//!
//! What a backup guarantees while writes go on: the keys are scanned (`SCAN`, every
//! database `INFO keyspace` lists) and each batch of keys is dumped in one `MULTI`
//! with the server's `TIME`, so every key is saved whole, with its TTL, as it was at one
//! moment of the backup; two keys in different batches may be from different moments.
//! It is not a point-in-time snapshot of the dataset: values that must agree with each
//! other belong in one key (a hash, a stream). A key that exists for the whole backup is
//! in it; one created or deleted meanwhile may or may not be. A failover closes the
//! connection and fails the backup.
//!
//! Restore replaces the dataset: every database of the dump is loaded (`RESTORE ...
//! REPLACE ABSTTL`, so expiries keep their moment; keys already expired are skipped by
//! the server) into an empty database index the app does not use, and only after the
//! dump was read to its end (the backups crate's verified stream ends only once size
//! and SHA-256 match) and its end record agreed, one `MULTI` swaps each loaded database
//! with the one it replaces (`SWAPDB`) and empties the app's databases the dump does not
//! have; the swapped-out data is then flushed. A source that breaks, a record that does
//! not parse, or a refused command flushes the scratch databases and the app's data was
//! never touched. Writes the app makes during a restore are replaced at the swap. The
//! load needs room for a second copy of the data in memory.

use std::collections::BTreeSet;

use paas_appliance::provider::{BackupInfo, BackupSink, RestoreSource};
use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The format name recorded in manifests.
pub const FORMAT: &str = "paas redis dump v1";

/// The first bytes of every dump.
pub const MAGIC: &[u8; 11] = b"PAASRDUMP1\n";

/// Keys asked for per `SCAN` and dumped per `MULTI`; `RESTORE`s per pipeline.
const BATCH: usize = 500;

/// The database indexes a server has unless configured otherwise (Redis's default; the
/// appliance does not change it).
const DATABASES: u32 = 16;

/// Why a dump or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Neither the resource's data nor its environment holds its URL.
    #[error("resource {0} records no REDIS_URL, in its data or its environment; add a new resource to back it up")]
    NoUrl(String),
    /// Redis refused a command or the connection broke.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered a backup's command with something it never sends.
    #[error("unexpected answer from redis: {0}")]
    Unexpected(String),
    /// Writing the dump to the sink failed; the dump is incomplete.
    #[error("writing the dump: {0}")]
    Sink(std::io::Error),
    /// Reading the dump failed (verification failed, the store went away).
    #[error("reading the dump: {0}; nothing was restored")]
    Source(std::io::Error),
    /// The dump is not one this module wrote, or ends early.
    #[error("not a whole redis dump: {0}; nothing was restored")]
    Format(String),
    /// Every database index is in use or holds keys: nowhere to load the dump.
    #[error("no free database index to restore into (the app and the dump use {0} of {DATABASES}); nothing was restored")]
    NoScratch(usize),
    /// The load failed; nothing was swapped.
    #[error("redis: {0}; nothing was restored")]
    Load(redis::RedisError),
}

/// The databases `INFO keyspace` lists as holding keys (`db3:keys=10,...`).
pub fn keyspace_dbs(info: &str) -> BTreeSet<u32> {
    info.lines()
        .filter_map(|line| line.strip_prefix("db"))
        .filter_map(|rest| rest.split_once(':'))
        .filter(|(_, stats)| !stats.starts_with("keys=0,"))
        .filter_map(|(db, _)| db.parse().ok())
        .collect()
}

/// Scratch database indexes for the `wanted` databases of a dump: the highest indexes
/// of `0..databases` that are neither used by the app nor wanted.
pub fn scratch_dbs(databases: u32, used: &BTreeSet<u32>, wanted: usize) -> Option<Vec<u32>> {
    let free: Vec<u32> = (0..databases)
        .rev()
        .filter(|db| !used.contains(db))
        .take(wanted)
        .collect();
    (free.len() == wanted).then_some(free)
}

async fn connect(url: &str) -> Result<MultiplexedConnection, redis::RedisError> {
    let client = redis::Client::open(url)?;
    client.get_multiplexed_async_connection().await
}

async fn used_dbs(conn: &mut MultiplexedConnection) -> Result<BTreeSet<u32>, redis::RedisError> {
    let info: String = redis::cmd("INFO").arg("keyspace").query_async(conn).await?;
    Ok(keyspace_dbs(&info))
}

/// The server's version (`INFO server`'s `redis_version`).
async fn version(conn: &mut MultiplexedConnection) -> Result<String, redis::RedisError> {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| format!("Redis {}", v.trim()))
        .unwrap_or_else(|| "Redis".into()))
}

/// Streams a dump of every database of the group behind `url` into `sink`.
pub async fn dump(url: &str, sink: BackupSink<'_>) -> Result<BackupInfo, BackupError> {
    let mut conn = connect(url).await?;
    let version = version(&mut conn).await?;
    let dbs = used_dbs(&mut conn).await?;
    let mut header = MAGIC.to_vec();
    header.extend_from_slice(&(dbs.len() as u32).to_be_bytes());
    for db in &dbs {
        header.extend_from_slice(&db.to_be_bytes());
    }
    sink.write_all(&header).await.map_err(BackupError::Sink)?;
    let mut keys = 0u64;
    for db in dbs {
        redis::cmd("SELECT")
            .arg(db)
            .query_async::<()>(&mut conn)
            .await?;
        let mut out = vec![b'D'];
        out.extend_from_slice(&db.to_be_bytes());
        sink.write_all(&out).await.map_err(BackupError::Sink)?;
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut conn)
                .await?;
            if !batch.is_empty() {
                let out = dump_batch(&mut conn, &batch, &mut keys).await?;
                sink.write_all(&out).await.map_err(BackupError::Sink)?;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    let mut end = vec![b'E'];
    end.extend_from_slice(&keys.to_be_bytes());
    sink.write_all(&end).await.map_err(BackupError::Sink)?;
    Ok(BackupInfo {
        engine: "redis".into(),
        version,
        format: FORMAT.into(),
    })
}

/// `TIME` and each key's `DUMP` and `PTTL` in one `MULTI`, encoded as records; keys
/// gone since the `SCAN` are left out.
async fn dump_batch(
    conn: &mut MultiplexedConnection,
    batch: &[Vec<u8>],
    keys: &mut u64,
) -> Result<Vec<u8>, BackupError> {
    let mut pipe = redis::pipe();
    pipe.atomic().cmd("TIME");
    for key in batch {
        pipe.cmd("DUMP").arg(key).cmd("PTTL").arg(key);
    }
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    let mut replies = replies.into_iter();
    let time = replies.next();
    let now_ms = time_ms(time.as_ref())
        .ok_or_else(|| BackupError::Unexpected(format!("TIME gave {time:?}")))?;
    let mut out = Vec::new();
    for key in batch {
        let (payload, pttl) = (replies.next(), replies.next());
        let (Some(Value::BulkString(payload)), Some(Value::Int(pttl))) = (payload, pttl) else {
            continue; // deleted or expired since the SCAN
        };
        if pttl == -2 {
            continue;
        }
        let expires_at = if pttl < 0 { -1 } else { now_ms + pttl };
        out.push(b'K');
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&expires_at.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        *keys += 1;
    }
    Ok(out)
}

/// `TIME`'s answer (seconds and microseconds, as strings) in Unix milliseconds.
fn time_ms(reply: Option<&Value>) -> Option<i64> {
    let Some(Value::Array(parts)) = reply else {
        return None;
    };
    let int = |v: &Value| -> Option<i64> {
        match v {
            Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            Value::Int(n) => Some(*n),
            _ => None,
        }
    };
    match parts.as_slice() {
        [secs, micros] => Some(int(secs)? * 1000 + int(micros)? / 1000),
        _ => None,
    }
}

/// One record of a dump.
enum Record {
    Db(u32),
    Key {
        key: Vec<u8>,
        expires_at: i64,
        payload: Vec<u8>,
    },
    End(u64),
}

async fn read_record(source: RestoreSource<'_>) -> Result<Record, BackupError> {
    let tag = read_u8(source).await?;
    match tag {
        b'D' => Ok(Record::Db(read_u32(source).await?)),
        b'K' => {
            let key = read_bytes(source).await?;
            let mut at = [0u8; 8];
            read_exact(source, &mut at).await?;
            let payload = read_bytes(source).await?;
            Ok(Record::Key {
                key,
                expires_at: i64::from_be_bytes(at),
                payload,
            })
        }
        b'E' => {
            let mut n = [0u8; 8];
            read_exact(source, &mut n).await?;
            Ok(Record::End(u64::from_be_bytes(n)))
        }
        other => Err(BackupError::Format(format!(
            "unknown record tag {other:#04x}"
        ))),
    }
}

async fn read_exact(source: RestoreSource<'_>, buf: &mut [u8]) -> Result<(), BackupError> {
    match source.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(BackupError::Format("it ends before its end record".into()))
        }
        Err(e) => Err(BackupError::Source(e)),
    }
}

async fn read_u8(source: RestoreSource<'_>) -> Result<u8, BackupError> {
    let mut b = [0u8; 1];
    read_exact(source, &mut b).await?;
    Ok(b[0])
}

async fn read_u32(source: RestoreSource<'_>) -> Result<u32, BackupError> {
    let mut b = [0u8; 4];
    read_exact(source, &mut b).await?;
    Ok(u32::from_be_bytes(b))
}

async fn read_bytes(source: RestoreSource<'_>) -> Result<Vec<u8>, BackupError> {
    let len = read_u32(source).await? as usize;
    let mut buf = vec![0u8; len];
    read_exact(source, &mut buf).await?;
    Ok(buf)
}

/// Replaces the dataset of the group behind `url` with the dump read from `source`
/// (see the module doc for how, and what a failure leaves).
pub async fn restore(url: &str, source: RestoreSource<'_>) -> Result<(), BackupError> {
    let mut conn = connect(url).await?;
    let used = used_dbs(&mut conn).await?;
    let mut magic = [0u8; MAGIC.len()];
    read_exact(source, &mut magic).await?;
    if &magic != MAGIC {
        return Err(BackupError::Format(format!(
            "it does not start with {MAGIC:?}"
        )));
    }
    let count = read_u32(source).await?;
    let mut dumped = BTreeSet::new();
    for _ in 0..count.min(DATABASES + 1) {
        dumped.insert(read_u32(source).await?);
    }
    if count > DATABASES
        || dumped.len() != count as usize
        || dumped.iter().any(|db| *db >= DATABASES)
    {
        return Err(BackupError::Format(format!(
            "a list of {count} databases that does not fit"
        )));
    }
    // Neither the app's databases nor the dump's may serve as scratch.
    let reserved: BTreeSet<u32> = used.union(&dumped).copied().collect();
    // (dump's db, scratch db) in the order loaded.
    let mut loaded: Vec<(u32, u32)> = Vec::new();
    let result = load(&mut conn, source, &reserved, &dumped, &mut loaded).await;
    if let Err(e) = result {
        flush(&mut conn, loaded.iter().map(|(_, scratch)| *scratch)).await;
        return Err(e);
    }
    let mut swap = redis::pipe();
    swap.atomic();
    for (db, scratch) in &loaded {
        swap.cmd("SWAPDB").arg(*scratch).arg(*db).ignore();
    }
    let restored: BTreeSet<u32> = loaded.iter().map(|(db, _)| *db).collect();
    for db in used.difference(&restored) {
        swap.cmd("SELECT").arg(*db).ignore();
        swap.cmd("FLUSHDB").ignore();
    }
    if let Err(e) = swap.query_async::<()>(&mut conn).await {
        flush(&mut conn, loaded.iter().map(|(_, scratch)| *scratch)).await;
        return Err(BackupError::Load(e));
    }
    // The scratch databases now hold what was replaced.
    flush(&mut conn, loaded.iter().map(|(_, scratch)| *scratch)).await;
    Ok(())
}

/// Reads the whole dump into scratch databases, recording each in `loaded` as soon as
/// anything may have been written to it.
async fn load(
    conn: &mut MultiplexedConnection,
    source: RestoreSource<'_>,
    reserved: &BTreeSet<u32>,
    dumped: &BTreeSet<u32>,
    loaded: &mut Vec<(u32, u32)>,
) -> Result<(), BackupError> {
    let mut pipe = redis::pipe();
    let mut pending = 0usize;
    let mut keys = 0u64;
    let mut taken = reserved.clone();
    loop {
        match read_record(source).await? {
            Record::Db(db) => {
                run(conn, &mut pipe, &mut pending).await?;
                if !dumped.contains(&db) || loaded.iter().any(|(d, _)| *d == db) {
                    return Err(BackupError::Format(format!("database {db} out of place")));
                }
                let scratch = scratch_dbs(DATABASES, &taken, 1)
                    .and_then(|s| s.first().copied())
                    .ok_or(BackupError::NoScratch(reserved.len()))?;
                redis::cmd("SELECT")
                    .arg(scratch)
                    .query_async::<()>(conn)
                    .await
                    .map_err(BackupError::Load)?;
                let size: u64 = redis::cmd("DBSIZE")
                    .query_async(conn)
                    .await
                    .map_err(BackupError::Load)?;
                if size != 0 {
                    return Err(BackupError::NoScratch(reserved.len()));
                }
                taken.insert(scratch);
                loaded.push((db, scratch));
            }
            Record::Key {
                key,
                expires_at,
                payload,
            } => {
                if loaded.is_empty() {
                    return Err(BackupError::Format("a key before any database".into()));
                }
                pipe.cmd("RESTORE")
                    .arg(key)
                    .arg(expires_at.max(0))
                    .arg(payload)
                    .arg("REPLACE");
                if expires_at >= 0 {
                    pipe.arg("ABSTTL");
                }
                pipe.ignore();
                pending += 1;
                keys += 1;
                if pending >= BATCH {
                    run(conn, &mut pipe, &mut pending).await?;
                }
            }
            Record::End(n) => {
                run(conn, &mut pipe, &mut pending).await?;
                if n != keys {
                    return Err(BackupError::Format(format!(
                        "its end record counts {n} keys, it holds {keys}"
                    )));
                }
                // Read to the very end: the verified stream reports a mismatch there.
                let mut rest = [0u8; 1];
                return match source.read(&mut rest).await {
                    Ok(0) => Ok(()),
                    Ok(_) => Err(BackupError::Format("bytes after its end record".into())),
                    Err(e) => Err(BackupError::Source(e)),
                };
            }
        }
    }
}

async fn run(
    conn: &mut MultiplexedConnection,
    pipe: &mut redis::Pipeline,
    pending: &mut usize,
) -> Result<(), BackupError> {
    if *pending > 0 {
        pipe.query_async::<()>(conn)
            .await
            .map_err(BackupError::Load)?;
        pipe.clear();
        *pending = 0;
    }
    Ok(())
}

/// Empties the scratch databases `dbs` (best effort: a broken connection leaves them to
/// the next restore, which only uses empty ones).
async fn flush(conn: &mut MultiplexedConnection, dbs: impl Iterator<Item = u32>) {
    for db in dbs {
        let mut pipe = redis::pipe();
        pipe.cmd("SELECT")
            .arg(db)
            .ignore()
            .cmd("FLUSHDB")
            .arg("ASYNC")
            .ignore();
        if let Err(e) = pipe.query_async::<()>(conn).await {
            tracing::warn!(db, error = %e, "emptying a restore's scratch database failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_lists_databases_with_keys() {
        let info = "# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=0\r\ndb4:keys=1,expires=0,avg_ttl=0\r\ndb7:keys=0,expires=0,avg_ttl=0\r\n";
        assert_eq!(keyspace_dbs(info), BTreeSet::from([0, 4]));
        assert!(keyspace_dbs("# Keyspace\r\n").is_empty());
    }

    #[test]
    fn time_is_read_strictly() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let time = Value::Array(vec![bulk("1700000000"), bulk("123456")]);
        assert_eq!(time_ms(Some(&time)), Some(1_700_000_000_123));
        let bad = Value::Array(vec![bulk("x"), bulk("1")]);
        assert_eq!(time_ms(Some(&bad)), None);
        assert_eq!(time_ms(Some(&Value::Nil)), None);
        assert_eq!(time_ms(None), None);
    }

    #[test]
    fn scratch_databases_are_the_highest_unused() {
        let used = BTreeSet::from([0, 15]);
        assert_eq!(scratch_dbs(16, &used, 2), Some(vec![14, 13]));
        assert_eq!(scratch_dbs(16, &used, 0), Some(vec![]));
        let all: BTreeSet<u32> = (0..16).collect();
        assert_eq!(scratch_dbs(16, &all, 1), None);
    }
}
