//! The cluster CA on a joined host, against a real etcd: `paas up` records where it
//! published `DATA_DIR/ca.pem`; a joined host writes the CA it was handed at join at
//! that path, follows a moved path, and refuses a recorded path that is not a `ca.pem`.

use std::net::Ipv4Addr;
use std::time::Duration;

#[tokio::test]
async fn a_joined_host_publishes_the_ca_where_paas_up_did() {
    let etcd = paas_it::EtcdServer::start().expect("etcd");
    let coord = paas_coord::Coord::connect(
        &[etcd.endpoint()],
        paas_model::keys::DEFAULT_PREFIX,
        Duration::from_secs(5),
    )
    .await
    .expect("etcd client");
    let tmp = tempfile::tempdir().unwrap();

    let up_dir = tmp.path().join("up");
    let pki = paas_node::pki::ensure(&up_dir, Ipv4Addr::new(127, 0, 0, 9).into()).unwrap();
    let copy = tmp.path().join("pki-copy");
    std::fs::create_dir(&copy).unwrap();
    std::fs::copy(pki.join("ca.pem"), copy.join("ca.pem")).unwrap();

    // Nothing recorded (no `paas up` CA): nothing written.
    assert_eq!(
        paas_node::pki::install_joined_ca(&coord, &copy)
            .await
            .unwrap(),
        None
    );

    // `paas up` records its path; the joined host writes the CA there, and follows
    // when the path moves.
    let published = paas_node::pki::publish_ca(&up_dir, &pki).unwrap();
    paas_node::pki::announce_ca(&coord, &published)
        .await
        .unwrap();
    assert_eq!(
        paas_node::pki::install_joined_ca(&coord, &copy)
            .await
            .unwrap(),
        Some(published.clone())
    );
    let target = tmp.path().join("other-machine/var/lib/paas/ca.pem");
    paas_node::pki::announce_ca(&coord, &target).await.unwrap();
    let written = paas_node::pki::install_joined_ca(&coord, &copy)
        .await
        .unwrap()
        .expect("a recorded path");
    assert_eq!(written, target);
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        std::fs::read_to_string(&published).unwrap()
    );

    // A recorded path that is not a ca.pem is refused; nothing is written.
    let bad = tmp.path().join("etc/passwd");
    paas_node::pki::announce_ca(&coord, &bad).await.unwrap();
    let err = paas_node::pki::install_joined_ca(&coord, &copy)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ca.pem"), "{err}");
    assert!(!bad.exists());
}
