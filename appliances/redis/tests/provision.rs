//! `paas resource add redis` as the controller calls it: each resource gets its own
//! replication group with its own password, address and directory; one app's password
//! does not open another's group; removing a resource stops its group and deletes its
//! data and records.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use paas_appliance::provider::{Options, Provider};
use paas_redis::provision::{ProviderConfig, RedisProvider, ResourceData};

use common::{connect, reachable_tempdir, LocalRunner};

/// Member 0's redis-server address in a group directory.
fn first_member(dir: &std::path::Path) -> std::net::SocketAddr {
    let ip = paas_appliance::addr::cluster_ip(&dir.to_string_lossy());
    std::net::SocketAddr::from((ip, paas_appliance::addr::REDIS_PORT))
}

fn host_port(url: &str) -> &str {
    url.rsplit('@').next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_resource_is_its_own_isolated_group_and_removal_deletes_it() {
    let etcd = paas_it::EtcdServer::start().expect("etcd");
    let dir = reachable_tempdir("paas-redis-provision");
    let coord = paas_coord::Coord::connect(&[etcd.endpoint()], "/paas/", Duration::from_secs(5))
        .await
        .unwrap();
    let runner = Arc::new(LocalRunner::new(coord.clone()));
    let provider = RedisProvider::new(
        ProviderConfig {
            base_dir: dir.path().to_path_buf(),
            etcd_endpoints: vec![etcd.endpoint()],
            prefix: "/paas/".into(),
            ttl_secs: 3,
            default_members: 2,
            ca_file: None,
        },
        runner.clone(),
        coord,
    );

    let started = Instant::now();
    let shop = provider
        .provision("shop", "redis-aaaa", &Options::new())
        .await
        .expect("provision shop");
    println!(
        "resource add (2 members) answered PING after {:?}",
        started.elapsed()
    );
    let one = Options::from([("members".to_string(), "1".to_string())]);
    let blog = provider
        .provision("blog", "redis-bbbb", &one)
        .await
        .expect("provision blog");
    let shop_url = shop.env["REDIS_URL"].clone();
    let blog_url = blog.env["REDIS_URL"].clone();
    assert!(shop_url.starts_with("redis://default:"), "{shop_url}");

    let mut s = connect(&shop_url).await.expect("shop's url works");
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("shop")
        .query_async(&mut s)
        .await
        .unwrap();
    let mut b = connect(&blog_url).await.expect("blog's url works");
    let v: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut b)
        .await
        .unwrap();
    assert_eq!(v, None, "groups share no data");

    // Shop's password does not open blog's group, nor blog's member directly.
    let shop_password = shop_url
        .strip_prefix("redis://default:")
        .unwrap()
        .split('@')
        .next()
        .unwrap();
    let crossed = format!("redis://default:{shop_password}@{}/", host_port(&blog_url));
    assert!(
        connect(&crossed).await.is_none(),
        "one app's password must not open another's group"
    );
    let blog_data: ResourceData = serde_json::from_value(blog.data.clone()).unwrap();
    let shop_data: ResourceData = serde_json::from_value(shop.data.clone()).unwrap();
    assert_eq!((shop_data.members, blog_data.members), (2, 1));
    let blog_member = first_member(&blog_data.dir);
    let shop_member = first_member(&shop_data.dir);
    assert_ne!(
        blog_member.ip(),
        shop_member.ip(),
        "each group has its own address"
    );
    let direct = format!("redis://default:{shop_password}@{blog_member}/");
    assert!(connect(&direct).await.is_none());

    // Status lists both groups, with their tables.
    let status = provider.status().await.unwrap();
    assert!(
        status["groups"].get(&shop_data.group).is_some()
            && status["groups"].get(&blog_data.group).is_some(),
        "{status}"
    );
    let text = status["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("redis group {}: generation 1", blog_data.group)),
        "{text}"
    );

    // Unknown options and bad member counts are refused before anything starts.
    let bad = Options::from([("members".to_string(), "9".to_string())]);
    assert!(provider
        .provision("shop", "redis-cccc", &bad)
        .await
        .is_err());
    assert!(!dir.path().join("rediscccc").exists());

    provider
        .deprovision("shop", "redis-aaaa", &shop.data)
        .await
        .expect("deprovision");
    assert!(!shop_data.dir.exists(), "data deleted");
    assert!(connect(&shop_url).await.is_none(), "the group is gone");
    let status = provider.status().await.unwrap();
    assert!(
        status["groups"].get(&shop_data.group).is_none(),
        "records deleted: {status}"
    );
    // Removing again succeeds (already gone).
    provider
        .deprovision("shop", "redis-aaaa", &shop.data)
        .await
        .expect("deprovision twice");
    // Blog is untouched.
    let _: () = redis::cmd("PING").query_async(&mut b).await.unwrap();
    provider
        .deprovision("blog", "redis-bbbb", &blog.data)
        .await
        .expect("deprovision blog");
}
