//! The routing table of an HTTP listener, built from its configuration (pure): which
//! backend a request for a host and path goes to, with upstream Ingress semantics.
//!
//! Matches are ordered as upstream's Ingress and Gateway API order them: the routes of
//! the request's exact host, then of its wildcard host, then those that name no host;
//! within those, an `Exact` path before a `Prefix`, a longer prefix before a shorter one.
//! The first group with a matching path wins, so a host's rules do not hide the rules
//! without host for paths they do not cover.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::edge::config::{HttpBackend, HttpConfig, PathType};

/// A Service port: where the requests of its routes go, round robin over its endpoints.
#[derive(Debug)]
pub(crate) struct Backend {
    /// `NAMESPACE/SERVICE:PORT`, for logs and metrics.
    pub(crate) name: String,
    endpoints: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl Backend {
    fn new(config: &HttpBackend) -> Self {
        let mut endpoints: Vec<SocketAddr> = Vec::with_capacity(config.endpoints.len());
        for endpoint in &config.endpoints {
            if !endpoints.contains(&SocketAddr::V4(*endpoint)) {
                endpoints.push(SocketAddr::V4(*endpoint));
            }
        }
        Backend {
            name: config.name.clone(),
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    pub(crate) fn has_endpoints(&self) -> bool {
        !self.endpoints.is_empty()
    }

    /// Every endpoint once, in the order one request tries them: the next in turn
    /// first (round robin), then the ones after it, should it refuse.
    pub(crate) fn endpoints_in_turn(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let n = self.endpoints.len();
        let start = match n {
            0 => 0,
            _ => self.next.fetch_add(1, Ordering::Relaxed) % n,
        };
        (0..n).map(move |i| self.endpoints[(start + i) % n])
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathMatch {
    Exact(String),
    /// The rule's path without its trailing slashes; empty matches every path.
    Prefix(String),
}

impl PathMatch {
    fn new(path: &str, path_type: PathType) -> Self {
        match path_type {
            PathType::Exact => PathMatch::Exact(path.to_owned()),
            // ImplementationSpecific: as Prefix, the choice most controllers make.
            PathType::Prefix | PathType::ImplementationSpecific => {
                PathMatch::Prefix(path.trim_end_matches('/').to_owned())
            }
        }
    }

    /// Upstream's Prefix matches whole path elements: `/foo` takes `/foo`, `/foo/` and
    /// `/foo/bar` but not `/foobar`.
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Prefix(prefix) => {
                prefix.is_empty()
                    || path
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
        }
    }

    /// Orders the routes of one host: exact paths first, then longer prefixes.
    fn precedence(&self) -> (u8, std::cmp::Reverse<usize>) {
        match self {
            PathMatch::Exact(path) => (0, std::cmp::Reverse(path.len())),
            PathMatch::Prefix(prefix) => (1, std::cmp::Reverse(prefix.len())),
        }
    }
}

#[derive(Debug)]
struct Route {
    path: PathMatch,
    backend: Arc<Backend>,
}

/// Values by host pattern: `example.com` (exact, case-insensitive) or `*.example.com`,
/// which takes exactly one more label, as upstream's wildcard hosts do.
#[derive(Debug)]
pub(crate) struct HostMap<T> {
    exact: HashMap<String, T>,
    /// Keyed by the domain under the `*.`.
    wildcard: HashMap<String, T>,
}

impl<T> Default for HostMap<T> {
    fn default() -> Self {
        HostMap {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }
}

impl<T: Default> HostMap<T> {
    pub(crate) fn entry(&mut self, pattern: &str) -> &mut T {
        let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(domain) => self.wildcard.entry(domain.to_owned()).or_default(),
            None => self.exact.entry(pattern).or_default(),
        }
    }
}

impl<T> HostMap<T> {
    /// The exact host's value, else its wildcard's; `host` is normalized already.
    pub(crate) fn get(&self, host: &str) -> Option<&T> {
        self.exact.get(host).or_else(|| self.wildcard_of(host))
    }

    fn wildcard_of(&self, host: &str) -> Option<&T> {
        let (label, domain) = host.split_once('.')?;
        match label.is_empty() {
            true => None,
            false => self.wildcard.get(domain),
        }
    }
}

/// The host a request names, as routes compare it: lower case, without the port or a
/// trailing dot.
pub(crate) fn normalize_host(raw: &str) -> String {
    let host = match raw.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8080`.
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => raw.rsplit_once(':').map_or(raw, |(host, _port)| host),
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The path as routes compare it: `.` and `..` segments resolved and repeated slashes
/// merged, so that `/public/../admin` cannot take the route of `/public` (the backend
/// resolves it to `/admin`). The request is still forwarded as sent.
pub(crate) fn clean_path(path: &str) -> Cow<'_, str> {
    let dirty = path.contains("//") || path.split('/').any(|s| s == "." || s == "..");
    if !dirty {
        return Cow::Borrowed(path);
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut clean = format!("/{}", segments.join("/"));
    let directory = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    if directory && !segments.is_empty() {
        clean.push('/');
    }
    Cow::Owned(clean)
}

/// The routes of one listener, ready for lookups.
#[derive(Debug)]
pub(crate) struct Routes {
    by_host: HostMap<Vec<Route>>,
    any_host: Vec<Route>,
    default_backend: Option<Arc<Backend>>,
}

impl Routes {
    pub(crate) fn new(config: &HttpConfig) -> Routes {
        // One backend object per name, so that its routes share one round robin.
        let mut backends: HashMap<String, Arc<Backend>> = HashMap::new();
        let mut backend = |config: &HttpBackend| -> Arc<Backend> {
            Arc::clone(
                backends
                    .entry(config.name.clone())
                    .or_insert_with(|| Arc::new(Backend::new(config))),
            )
        };
        let mut by_host: HostMap<Vec<Route>> = HostMap::default();
        let mut any_host = Vec::new();
        for route in &config.routes {
            let entry = Route {
                path: PathMatch::new(&route.path, route.path_type),
                backend: backend(&route.backend),
            };
            match &route.host {
                Some(host) if !host.is_empty() => by_host.entry(host).push(entry),
                _ => any_host.push(entry),
            }
        }
        // Stable: of two equal routes, the one listed first wins.
        for routes in by_host
            .exact
            .values_mut()
            .chain(by_host.wildcard.values_mut())
            .chain(std::iter::once(&mut any_host))
        {
            routes.sort_by_key(|r| r.path.precedence());
        }
        Routes {
            by_host,
            any_host,
            default_backend: config.default_backend.as_ref().map(backend),
        }
    }

    /// The backend for a request to `host` (normalized) and `path`: the first matching
    /// route in precedence order, else the default backend.
    pub(crate) fn route(&self, host: &str, path: &str) -> Option<&Arc<Backend>> {
        let path = clean_path(path);
        let groups = [
            self.by_host.exact.get(host),
            self.by_host.wildcard_of(host),
            Some(&self.any_host),
        ];
        groups
            .into_iter()
            .flatten()
            .find_map(|routes| routes.iter().find(|r| r.path.matches(&path)))
            .map(|r| &r.backend)
            .or(self.default_backend.as_ref())
    }

    /// Every endpoint of every backend (the connections worth keeping across a reload).
    pub(crate) fn endpoints(&self) -> HashSet<SocketAddr> {
        self.by_host
            .exact
            .values()
            .chain(self.by_host.wildcard.values())
            .chain(std::iter::once(&self.any_host))
            .flatten()
            .map(|r| &r.backend)
            .chain(self.default_backend.as_ref())
            .flat_map(|b| b.endpoints.iter().copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::config::HttpRoute;

    fn backend(name: &str) -> HttpBackend {
        HttpBackend {
            name: name.into(),
            endpoints: vec!["10.0.0.1:80".parse().unwrap()],
        }
    }

    fn route(host: Option<&str>, path: &str, path_type: PathType, to: &str) -> HttpRoute {
        HttpRoute {
            host: host.map(str::to_owned),
            path: path.into(),
            path_type,
            backend: backend(to),
        }
    }

    fn to(routes: &Routes, host: &str, path: &str) -> Option<String> {
        routes
            .route(&normalize_host(host), path)
            .map(|b| b.name.clone())
    }

    #[test]
    fn prefix_matches_whole_path_elements() {
        let routes = Routes::new(&HttpConfig {
            routes: vec![
                route(None, "/foo", PathType::Prefix, "foo"),
                route(None, "/bar/", PathType::Prefix, "bar"),
                route(None, "/any", PathType::ImplementationSpecific, "any"),
            ],
            ..Default::default()
        });
        for (path, want) in [
            ("/foo", Some("foo")),
            ("/foo/", Some("foo")),
            ("/foo/bar", Some("foo")),
            ("/foobar", None),
            ("/fo", None),
            // The rule's trailing slash is ignored.
            ("/bar", Some("bar")),
            ("/bar/x", Some("bar")),
            ("/barx", None),
            ("/any/thing", Some("any")),
            ("/anything", None),
        ] {
            assert_eq!(to(&routes, "h", path).as_deref(), want, "{path}");
        }
        let everything = Routes::new(&HttpConfig {
            routes: vec![route(None, "/", PathType::Prefix, "root")],
            ..Default::default()
        });
        for path in ["/", "/x", "/x/y/"] {
            assert_eq!(to(&everything, "h", path).as_deref(), Some("root"));
        }
    }

    #[test]
    fn exact_before_prefix_and_longer_before_shorter() {
        let routes = Routes::new(&HttpConfig {
            routes: vec![
                route(None, "/", PathType::Prefix, "root"),
                route(None, "/api", PathType::Prefix, "api"),
                route(None, "/api/v1", PathType::Prefix, "v1"),
                route(None, "/api/v1", PathType::Exact, "v1-exact"),
                route(None, "/api", PathType::Prefix, "api-listed-later"),
            ],
            ..Default::default()
        });
        assert_eq!(to(&routes, "h", "/api/v1").as_deref(), Some("v1-exact"));
        assert_eq!(to(&routes, "h", "/api/v1/").as_deref(), Some("v1"));
        assert_eq!(to(&routes, "h", "/api/v2").as_deref(), Some("api"));
        assert_eq!(to(&routes, "h", "/other").as_deref(), Some("root"));
        // Exact is exact: no trailing slash slack.
        let exact = Routes::new(&HttpConfig {
            routes: vec![route(None, "/a", PathType::Exact, "a")],
            ..Default::default()
        });
        assert_eq!(to(&exact, "h", "/a/"), None);
    }

    #[test]
    fn exact_host_then_wildcard_then_no_host() {
        let routes = Routes::new(&HttpConfig {
            routes: vec![
                route(None, "/", PathType::Prefix, "any-host"),
                route(Some("*.example.com"), "/", PathType::Prefix, "wildcard"),
                route(Some("Shop.Example.com"), "/cart", PathType::Prefix, "shop"),
            ],
            ..Default::default()
        });
        for (host, path, want) in [
            // Case-insensitive, port and trailing dot ignored.
            ("SHOP.example.com:8443", "/cart/1", "shop"),
            ("shop.example.com.", "/cart", "shop"),
            // The host's rules do not cover the path: the wildcard's do.
            ("shop.example.com", "/", "wildcard"),
            ("blog.example.com", "/x", "wildcard"),
            // One label only, and not the bare domain.
            ("a.b.example.com", "/", "any-host"),
            ("example.com", "/", "any-host"),
            (".example.com", "/", "any-host"),
            ("[::1]:80", "/", "any-host"),
        ] {
            assert_eq!(
                to(&routes, host, path).as_deref(),
                Some(want),
                "{host}{path}"
            );
        }
    }

    #[test]
    fn default_backend_takes_what_no_route_matches() {
        let mut config = HttpConfig {
            routes: vec![route(Some("a.example"), "/app", PathType::Prefix, "app")],
            ..Default::default()
        };
        assert_eq!(to(&Routes::new(&config), "b.example", "/app"), None);
        config.default_backend = Some(backend("fallback"));
        let routes = Routes::new(&config);
        assert_eq!(
            to(&routes, "b.example", "/app").as_deref(),
            Some("fallback")
        );
        assert_eq!(to(&routes, "a.example", "/").as_deref(), Some("fallback"));
        assert_eq!(to(&routes, "a.example", "/app").as_deref(), Some("app"));
    }

    #[test]
    fn dot_segments_cannot_borrow_another_route() {
        let routes = Routes::new(&HttpConfig {
            routes: vec![
                route(None, "/public", PathType::Prefix, "public"),
                route(None, "/admin", PathType::Exact, "admin"),
            ],
            ..Default::default()
        });
        assert_eq!(to(&routes, "h", "/public/../secret"), None);
        assert_eq!(
            to(&routes, "h", "/public/./../admin").as_deref(),
            Some("admin")
        );
        assert_eq!(to(&routes, "h", "//public//x").as_deref(), Some("public"));
        assert_eq!(clean_path("/a/b/.."), "/a/");
        assert_eq!(clean_path("/.."), "/");
    }

    #[test]
    fn a_backend_rotates_over_its_endpoints_and_routes_share_it() {
        let shared = HttpBackend {
            name: "web".into(),
            endpoints: vec![
                "10.0.0.1:80".parse().unwrap(),
                "10.0.0.2:80".parse().unwrap(),
                "10.0.0.1:80".parse().unwrap(),
            ],
        };
        let routes = Routes::new(&HttpConfig {
            routes: vec![
                HttpRoute {
                    host: None,
                    path: "/a".into(),
                    path_type: PathType::Prefix,
                    backend: shared.clone(),
                },
                HttpRoute {
                    host: None,
                    path: "/b".into(),
                    path_type: PathType::Prefix,
                    backend: shared,
                },
            ],
            ..Default::default()
        });
        let first = |path: &str| {
            let backend = routes.route("h", path).unwrap();
            let order: Vec<SocketAddr> = backend.endpoints_in_turn().collect();
            assert_eq!(order.len(), 2, "duplicates are dropped");
            order[0].to_string()
        };
        assert_eq!(
            [first("/a"), first("/b"), first("/a")],
            ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.1:80"]
        );
        assert_eq!(routes.endpoints().len(), 2);
    }
}
