//! Redis backups as a user gets them from `paas up` with the default directory store, of
//! a three-member group (`resource add redis --members 3`): keys written through the
//! app's REDIS_URL (`paas redis cli`), `paas backup create`, `list`, `download` (the
//! `paas redis dump v1` format, size and SHA-256 as listed), a restore over changed
//! keys bringing them back, a truncated dump in the store refused with the data left
//! as it was, and a group recorded without its URL (as before backups) backed up all the
//! same.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{ok, paas};
use sha2::{Digest, Sha256};

fn cli(home: &Path, args: &[&str]) -> String {
    let mut all = vec!["redis", "cli", "-a", "shop", "--"];
    all.extend_from_slice(args);
    ok(paas(home, &all)).trim().to_string()
}

fn json(out: String) -> serde_json::Value {
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// What the test compares: the key count and some keys of each type.
fn state(home: &Path) -> Vec<String> {
    vec![
        cli(home, &["DBSIZE"]),
        cli(home, &["GET", "k:1"]),
        cli(home, &["GET", "k:999"]),
        cli(home, &["HGETALL", "h"]),
        cli(home, &["LRANGE", "l", "0", "-1"]),
        cli(home, &["EXISTS", "new"]),
    ]
}

#[test]
fn redis_backup_list_download_restore_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    // The members run redis-server as the redis user: it must traverse to the data dir.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = tmp.path();
    let listen = common::free_addr();
    let (up, up_out) = common::start_up(home, &listen, &[]);

    ok(paas(home, &["apps", "create", "shop"]));
    let r = json(ok(paas(
        home,
        &[
            "--json",
            "resource",
            "add",
            "redis",
            "-a",
            "shop",
            "--members",
            "3",
        ],
    )));
    let resource = r["id"].as_str().unwrap().to_string();
    // One command per key would take a process each: a script writes them.
    cli(
        home,
        &[
            "EVAL",
            "for i = 0, 999 do redis.call('SET', 'k:' .. i, 'value ' .. i) end return 1",
            "0",
        ],
    );
    cli(home, &["HSET", "h", "a", "1", "b", "2"]);
    cli(home, &["RPUSH", "l", "x", "y", "z"]);
    let before = state(home);
    assert_eq!(before[0], "1002");

    let m = json(ok(paas(
        home,
        &["--json", "backup", "create", "-a", "shop"],
    )));
    let id = m["id"].as_str().unwrap().to_string();
    assert_eq!(m["engine"], "redis");
    assert_eq!(m["format"], "paas redis dump v1");
    assert_eq!(m["resource"], resource.as_str());
    assert_eq!(m["state"], "complete");
    let list = json(ok(paas(home, &["--json", "backup", "list", "-a", "shop"])));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], id.as_str());

    // Download: the dump in its own format, as listed.
    let file = home.join("shop.rdump");
    let out = common::base(home)
        .args(["backup", "download", "-a", "shop", &id])
        .stdout(std::fs::File::create(&file).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = std::fs::read(&file).unwrap();
    assert!(dump.starts_with(b"PAASRDUMP1\n"), "{:?}", &dump[..16]);
    assert_eq!(dump.len() as u64, m["size"].as_u64().unwrap());
    assert_eq!(
        hex::encode(Sha256::digest(&dump)),
        m["sha256"].as_str().unwrap()
    );

    // Change the keys, then restore: they are back, the new one gone.
    cli(home, &["DEL", "k:1", "h"]);
    cli(home, &["SET", "k:999", "changed"]);
    cli(home, &["RPUSH", "l", "more"]);
    cli(home, &["SET", "new", "1"]);
    assert_ne!(state(home), before);
    ok(paas(home, &["backup", "restore", "-a", "shop", &id]));
    assert_eq!(state(home), before);

    // A truncated dump in the store is refused and changes nothing.
    cli(home, &["SET", "new", "1"]);
    let changed = state(home);
    let stored = home.join("data/backups/shop").join(&id).join("dump");
    let good = std::fs::read(&stored).unwrap();
    std::fs::write(&stored, &good[..good.len() - 100]).unwrap();
    common::fails(
        paas(home, &["backup", "restore", "-a", "shop", &id]),
        "nothing was changed",
    );
    assert_eq!(state(home), changed);
    std::fs::write(&stored, &good).unwrap();
    ok(paas(home, &["backup", "restore", "-a", "shop", &id]));
    assert_eq!(state(home), before);

    // A group from before the hooks recorded its URL in the resource's data is backed
    // up and restored with the resource's REDIS_URL.
    common::forget_resource_field(home, &up_out, "shop", &resource, "url");
    let older = json(ok(paas(
        home,
        &["--json", "backup", "create", "-a", "shop"],
    )));
    cli(home, &["FLUSHDB"]);
    let older_id = older["id"].as_str().unwrap();
    ok(paas(home, &["backup", "restore", "-a", "shop", older_id]));
    assert_eq!(state(home), before);
    up.stop();
}
