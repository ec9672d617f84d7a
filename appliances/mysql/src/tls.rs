//! The client side of the cluster's certificate: every connection the appliance makes
//! to a member or through the endpoint (supervisors, provisioning, dumps, the node's
//! readiness check) requires TLS and verifies the server against the cluster CA and
//! the address it dialled, once the cluster has a certificate; the same options are
//! what an app using `mysql_async` adds to its `MYSQL_URL` (see `crate::provision`).

use std::path::Path;

use mysql_async::{OptsBuilder, SslOpts};

/// TLS options that trust only the CA in `ca_file` and check the server's name (an IP
/// address SAN for the addresses we dial).
pub fn ssl_opts(ca_file: &Path) -> SslOpts {
    paas_appliance::tls::use_ring();
    SslOpts::default()
        .with_root_certs(vec![ca_file.to_path_buf().into()])
        .with_disable_built_in_roots(true)
}

/// `opts` with TLS verified against `ca_file` when given; plain otherwise.
pub fn with_tls(opts: OptsBuilder, ca_file: Option<&Path>) -> OptsBuilder {
    match ca_file {
        Some(ca) => opts.ssl_opts(ssl_opts(ca)),
        None => opts,
    }
}

/// The `mariadb`/`mariadb-dump` client options that require TLS and verify the server
/// against `ca_file` (empty without one).
pub fn client_args(ca_file: Option<&Path>) -> Vec<String> {
    match ca_file {
        Some(ca) => vec![
            "--ssl".into(),
            format!("--ssl-ca={}", ca.display()),
            "--ssl-verify-server-cert".into(),
        ],
        None => Vec::new(),
    }
}

/// `host`, or 127.0.0.1 when it is the unspecified address (an endpoint listening on
/// every address): what a connection of ours dials, so the name checked is one the
/// cluster's certificate has.
pub fn dial_host(host: &str) -> String {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.to_string(),
        _ => host.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_on_every_address_is_dialled_on_loopback() {
        assert_eq!(dial_host("0.0.0.0"), "127.0.0.1");
        assert_eq!(dial_host("::"), "127.0.0.1");
        assert_eq!(dial_host("10.1.2.3"), "10.1.2.3");
        assert_eq!(dial_host("127.0.0.1"), "127.0.0.1");
    }
}
