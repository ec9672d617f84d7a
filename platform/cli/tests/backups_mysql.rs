//! MariaDB backups as a user gets them from `paas up --appliance mysql=3` with the
//! default directory store: rows written through the app's MYSQL_URL (`paas mysql
//! shell`), `paas backup create`, `list`, `download` (a `mariadb-dump` SQL file, size
//! and SHA-256 as listed), a restore over changed data bringing it back, a corrupted
//! dump in the store refused with the database left as it was, and a resource recorded
//! without its user's password (as before backups) backed up all the same.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{ok, paas};
use sha2::{Digest, Sha256};

fn shell(home: &Path, sql: &str) -> String {
    ok(paas(
        home,
        &["mysql", "shell", "-a", "shop", "--", "-N", "-B", "-e", sql],
    ))
}

fn json(out: String) -> serde_json::Value {
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

const STATE: &str =
    "select count(*), sum(balance), md5(group_concat(id, ':', balance order by id)) from accounts";

#[test]
fn mysql_backup_list_download_restore_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    // The members run as the mysql user: it must traverse to the data dir.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = tmp.path();
    let listen = common::free_addr();
    let my = common::free_addr();
    let (up, up_out) = common::start_up(
        home,
        &listen,
        &[
            "--appliance",
            "mysql=3",
            "--appliance-listen",
            &format!("mysql={my}"),
        ],
    );

    ok(paas(home, &["apps", "create", "shop"]));
    let r = json(ok(paas(
        home,
        &["--json", "resource", "add", "mysql", "-a", "shop"],
    )));
    let resource = r["id"].as_str().unwrap().to_string();
    shell(
        home,
        "create table accounts (id int primary key, balance bigint not null);
         insert into accounts select seq, seq * 10 from seq_1_to_2000;",
    );
    let before = shell(home, STATE);
    assert!(before.starts_with("2000\t20010000\t"), "{before}");

    let m = json(ok(paas(
        home,
        &["--json", "backup", "create", "-a", "shop"],
    )));
    let id = m["id"].as_str().unwrap().to_string();
    assert_eq!(m["engine"], "mariadb");
    assert_eq!(m["format"], "mariadb-dump sql");
    assert_eq!(m["resource"], resource.as_str());
    assert_eq!(m["state"], "complete");
    let list = json(ok(paas(home, &["--json", "backup", "list", "-a", "shop"])));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], id.as_str());

    // Download: the mariadb-dump file, as listed.
    let file = home.join("shop.sql");
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
    let text = String::from_utf8_lossy(&dump);
    // mariadb-dump's own header (after the "sandbox mode" line of 10.11.8 and later).
    let head: String = text.lines().take(3).collect::<Vec<_>>().join("\n");
    assert!(head.contains("-- MariaDB dump"), "{head}");
    assert!(text.contains("CREATE TABLE `accounts`"), "the dump is SQL");
    assert_eq!(dump.len() as u64, m["size"].as_u64().unwrap());
    assert_eq!(
        hex::encode(Sha256::digest(&dump)),
        m["sha256"].as_str().unwrap()
    );

    // Change the data, then restore: it is back.
    shell(
        home,
        "delete from accounts where id > 100; update accounts set balance = 0;
         create table later (x int);",
    );
    assert_ne!(shell(home, STATE), before);
    ok(paas(home, &["backup", "restore", "-a", "shop", &id]));
    assert_eq!(shell(home, STATE), before);
    assert_eq!(shell(home, "show tables"), "accounts\n");

    // A corrupted dump in the store is refused and changes nothing.
    shell(home, "update accounts set balance = 1 where id = 1");
    let changed = shell(home, STATE);
    let stored = home.join("data/backups/shop").join(&id).join("dump");
    let good = std::fs::read(&stored).unwrap();
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x55;
    std::fs::write(&stored, &bad).unwrap();
    common::fails(
        paas(home, &["backup", "restore", "-a", "shop", &id]),
        "damaged",
    );
    assert_eq!(shell(home, STATE), changed);
    std::fs::write(&stored, &good).unwrap();
    ok(paas(home, &["backup", "restore", "-a", "shop", &id]));
    assert_eq!(shell(home, STATE), before);

    // A resource from before the hooks recorded the user's password in its data is
    // backed up and restored with the one in its environment.
    common::forget_resource_field(home, &up_out, "shop", &resource, "password");
    let older = json(ok(paas(
        home,
        &["--json", "backup", "create", "-a", "shop"],
    )));
    shell(home, "delete from accounts");
    let older_id = older["id"].as_str().unwrap();
    ok(paas(home, &["backup", "restore", "-a", "shop", older_id]));
    assert_eq!(shell(home, STATE), before);
    up.stop();
}
