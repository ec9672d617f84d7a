//! The route table: which app a request goes to, from its host and path. Pure.
//!
//! Built from the stored routes (`routes/<id>`, [`Route`]) plus one default route per
//! app, `<app>.<domain>` (the router's `--domain`). A request matches the routes of its
//! host (port and a trailing dot removed, case ignored); among those, the one with the
//! longest path prefix that matches on a segment boundary (`/api` matches `/api` and
//! `/api/x`, not `/apix`). A stored route wins over a default route with the same domain
//! and path.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use paas_model::Route;

/// One entry of the table: where matching requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// The stored route's id, or `default` for `<app>.<domain>`.
    pub id: String,
    /// The app whose `web` jobs serve the route (shared: every request's log names it).
    pub app: Arc<str>,
    /// Lower-case domain.
    pub domain: String,
    /// Path prefix without a trailing slash; empty matches every path.
    pub path: String,
    /// Whether clients keep their backend (signed cookie).
    pub sticky: bool,
}

/// Every route, by domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// Domain -> entries, longest path first.
    by_domain: foldhash::HashMap<String, Vec<RouteEntry>>,
}

/// The id of the default route of every app.
pub const DEFAULT_ROUTE_ID: &str = "default";

impl RouteTable {
    /// The table for these stored routes and apps; every app gets `<app>.<domain>`
    /// unless `domain` is empty.
    pub fn build<'a>(
        routes: impl IntoIterator<Item = &'a Route>,
        apps: impl IntoIterator<Item = &'a str>,
        domain: &str,
    ) -> RouteTable {
        let mut table = RouteTable::default();
        let domain = domain.trim_matches('.').to_ascii_lowercase();
        for route in routes {
            if route.tcp_port.is_some() {
                continue; // served by `tcp_routes`, not matched by host
            }
            table.insert(RouteEntry {
                id: route.id.clone(),
                app: route.app.as_str().into(),
                domain: route.domain.to_ascii_lowercase(),
                path: normalize_prefix(route.path.as_deref().unwrap_or("")),
                sticky: route.sticky,
            });
        }
        if !domain.is_empty() {
            for app in apps {
                let name = format!("{app}.{domain}");
                let own = table
                    .by_domain
                    .get(&name)
                    .is_some_and(|es| es.iter().any(|e| e.path.is_empty() && &*e.app == app));
                if own {
                    // The app's own stored route for its default name (e.g. sticky).
                    continue;
                }
                table.insert(RouteEntry {
                    id: DEFAULT_ROUTE_ID.to_string(),
                    app: app.into(),
                    domain: name,
                    path: String::new(),
                    sticky: false,
                });
            }
        }
        for entries in table.by_domain.values_mut() {
            entries.sort_by(|a, b| b.path.len().cmp(&a.path.len()).then(a.id.cmp(&b.id)));
        }
        table
    }

    /// Adds `entry`, replacing an entry with the same domain and path.
    fn insert(&mut self, entry: RouteEntry) {
        let entries = self.by_domain.entry(entry.domain.clone()).or_default();
        entries.retain(|e| e.path != entry.path);
        entries.push(entry);
    }

    /// A copy whose app names are allocations of its own: a router worker's copy, so
    /// that counting references to an entry's app touches nothing another worker's
    /// copy shares.
    pub fn localized(&self) -> RouteTable {
        let mut apps: HashMap<&str, Arc<str>> = HashMap::new();
        let mut by_domain =
            foldhash::HashMap::with_capacity_and_hasher(self.by_domain.len(), Default::default());
        for (domain, entries) in &self.by_domain {
            let mut local = Vec::with_capacity(entries.len());
            for e in entries {
                let app = apps.entry(&*e.app).or_insert_with(|| Arc::from(&*e.app));
                local.push(RouteEntry {
                    app: Arc::clone(app),
                    ..e.clone()
                });
            }
            by_domain.insert(domain.clone(), local);
        }
        RouteTable { by_domain }
    }

    /// The route for a request with this `Host` (or `:authority`) and path, if any.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&RouteEntry> {
        let host = normalize_host(host)?;
        self.by_domain
            .get(host.as_ref())?
            .iter()
            .find(|e| path_matches(&e.path, path))
    }

    /// Number of entries (default routes included).
    pub fn len(&self) -> usize {
        self.by_domain.values().map(Vec::len).sum()
    }

    /// Whether the table has no entry.
    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }
}

/// The host name of a `Host` header value: port and trailing dot removed, lower case;
/// `None` when empty.
pub fn normalize_host(host: &str) -> Option<Cow<'_, str>> {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(name, _port)| name)
    };
    let name = name.trim_end_matches('.');
    if name.is_empty() {
        None
    } else if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(name.to_ascii_lowercase()))
    } else {
        // The usual case: no copy on the request path.
        Some(Cow::Borrowed(name))
    }
}

/// `/api/` -> `/api`, `/` -> `` (every path).
fn normalize_prefix(path: &str) -> String {
    path.trim_end_matches('/').to_string()
}

/// Whether `path` is `prefix` or below it (segment boundary).
pub fn path_matches(prefix: &str, path: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(id: &str, app: &str, domain: &str, path: Option<&str>) -> Route {
        Route {
            id: id.into(),
            app: app.into(),
            domain: domain.into(),
            path: path.map(Into::into),
            sticky: id.contains("sticky"),
            tls: None,
            tcp_port: None,
            created_at: chrono::Utc::now(),
        }
    }

    fn table() -> RouteTable {
        let routes = [
            route("r1", "shop", "shop.example.com", None),
            route("r2", "api", "shop.example.com", Some("/api/")),
            route("r3", "v2", "shop.example.com", Some("/api/v2")),
            route("sticky", "blog", "blog.example.com", None),
            // Cannot take legacy's default route; can add a path below it.
            route("r4", "other", "legacy.localhost", None),
            route("r5", "other", "legacy.localhost", Some("/x")),
            route("own-sticky", "blog", "blog.localhost", None),
        ];
        RouteTable::build(&routes, ["shop", "blog", "legacy"], "localhost")
    }

    /// `(host, path)` -> `(route id, app)`, or `None`.
    fn check(host: &str, path: &str, expected: Option<(&str, &str)>) {
        let t = table();
        let got = t.lookup(host, path).map(|e| (e.id.as_str(), &*e.app));
        assert_eq!(got, expected, "{host} {path}");
    }

    #[test]
    fn a_localized_copy_routes_the_same_with_app_names_of_its_own() {
        let t = table();
        let local = t.localized();
        assert_eq!(local, t);
        let shop = t.lookup("shop.example.com", "/").unwrap();
        let local_shop = local.lookup("shop.example.com", "/").unwrap();
        assert!(!Arc::ptr_eq(&shop.app, &local_shop.app));
        // One allocation per app within the copy.
        let again = local.lookup("shop.localhost", "/").unwrap();
        assert!(Arc::ptr_eq(&local_shop.app, &again.app));
    }

    #[test]
    fn lookups() {
        check("shop.example.com", "/", Some(("r1", "shop")));
        check("SHOP.Example.com:8080", "/cart", Some(("r1", "shop")));
        check("shop.example.com.", "/", Some(("r1", "shop")));
        check("shop.example.com", "/api", Some(("r2", "api")));
        check("shop.example.com", "/api/x", Some(("r2", "api")));
        check("shop.example.com", "/apix", Some(("r1", "shop")));
        check("shop.example.com", "/api/v2/items", Some(("r3", "v2")));
        check("shop.example.com", "/api/v20", Some(("r2", "api")));
        check("blog.example.com", "/", Some(("sticky", "blog")));
        check("shop.localhost", "/", Some(("default", "shop")));
        check("shop.localhost:8080", "/x", Some(("default", "shop")));
        check("legacy.localhost", "/", Some(("default", "legacy")));
        check("legacy.localhost", "/x/1", Some(("r5", "other")));
        check("blog.localhost", "/", Some(("own-sticky", "blog")));
        check("nope.localhost", "/", None);
        check("localhost", "/", None);
        check("", "/", None);
        check("127.0.0.1:8080", "/", None);
        check("[::1]:8080", "/", None);
    }

    #[test]
    fn sticky_flag_and_size() {
        let t = table();
        assert!(t.lookup("blog.example.com", "/").is_some_and(|e| e.sticky));
        assert!(t.lookup("shop.example.com", "/").is_some_and(|e| !e.sticky));
        // 2 defaults (shop, legacy over r4) + r1 r2 r3 r5 + sticky + own-sticky.
        assert_eq!(t.len(), 8);
        assert!(t.lookup("blog.localhost", "/").is_some_and(|e| e.sticky));
        assert!(RouteTable::build(&[], ["a"], "").is_empty());
    }

    #[test]
    fn hosts() {
        assert_eq!(normalize_host("A.b:1").as_deref(), Some("a.b"));
        assert_eq!(normalize_host("[::1]:80").as_deref(), Some("::1"));
        assert_eq!(normalize_host("x.").as_deref(), Some("x"));
        assert_eq!(normalize_host(":80"), None);
    }
}
