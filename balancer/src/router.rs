//! Which upstream (pool) a request goes to, by its host and path: a pure
//! function over the `[[route]]`s, after sozu's `Router`.
//!
//! Precedence, most specific first: a route whose host matches exactly,
//! then one whose wildcard matches (`*.example.com`; the longer suffix
//! first), then one without a host; within each, the longest matching path
//! prefix (no prefix counts as length 0). A request no route matches goes
//! to upstream 0, the default pool. The order is settled once in
//! [`Router::new`], so [`Router::route`] is a scan that stops at the first
//! match and allocates nothing.
//!
//! Hosts compare case-insensitively, without the port and a trailing dot;
//! an IPv6 literal compares as written between its brackets. Paths compare
//! byte for byte, as sent (not percent-decoded or normalised, as HAProxy's
//! `path_beg`): routing picks a pool, it is not an access control.

use crate::config::{HostMatch, RouteConfig};

/// The routes in match order, with the upstream each sends to.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// Most specific first (see the module doc).
    routes: Box<[Route]>,
}

#[derive(Debug, Clone)]
struct Route {
    host: Host,
    /// `""` when the route has no `path_prefix`: every path starts with it.
    prefix: Box<str>,
    upstream: usize,
}

/// A route's host, lowercased.
#[derive(Debug, Clone)]
enum Host {
    Exact(Box<str>),
    /// With its leading dot: `".example.com"`.
    Suffix(Box<str>),
    Any,
}

impl Host {
    /// Sort key: exact first, then suffixes longest first, then any.
    fn rank(&self) -> (u8, usize) {
        match self {
            Host::Exact(_) => (2, 0),
            Host::Suffix(s) => (1, s.len()),
            Host::Any => (0, 0),
        }
    }

    /// Whether `host` (port and trailing dot already stripped) matches.
    fn matches(&self, host: Option<&str>) -> bool {
        match (self, host) {
            (Host::Any, _) => true,
            (_, None) => false,
            (Host::Exact(h), Some(host)) => host.eq_ignore_ascii_case(h),
            (Host::Suffix(s), Some(host)) => {
                host.len() > s.len()
                    && host.as_bytes()[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
        }
    }
}

impl Router {
    /// Orders `routes` for matching; `index_of` maps a pool name to its
    /// upstream's index (the default pool is 0). Routes with the same host
    /// and prefix (which a validated config never has) keep file order,
    /// and the first wins.
    pub fn new(routes: &[RouteConfig], index_of: impl Fn(&str) -> usize) -> Router {
        let mut routes: Vec<Route> = routes
            .iter()
            .map(|r| Route {
                host: match &r.host {
                    None => Host::Any,
                    Some(HostMatch::Exact(h)) => Host::Exact(h.to_ascii_lowercase().into()),
                    Some(HostMatch::Suffix(s)) => Host::Suffix(s.to_ascii_lowercase().into()),
                },
                prefix: r.path_prefix.as_deref().unwrap_or("").into(),
                upstream: index_of(&r.pool),
            })
            .collect();
        // Stable: equal keys keep file order.
        routes.sort_by_key(|r| std::cmp::Reverse((r.host.rank(), r.prefix.len())));
        Router {
            routes: routes.into(),
        }
    }

    /// No routes: every request goes to upstream 0, and the proxy need not
    /// ask.
    pub fn is_trivial(&self) -> bool {
        self.routes.is_empty()
    }

    /// The upstream for a request to `host` (as sent: `Host` or the
    /// authority, perhaps with a port, any case; `None` when the request
    /// names none) and `path` (a query, if any, is ignored); 0 when no
    /// route matches.
    pub fn route(&self, host: Option<&str>, path: &str) -> usize {
        let host = host.map(bare_host);
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        self.routes
            .iter()
            .find(|r| r.host.matches(host) && path.as_bytes().starts_with(r.prefix.as_bytes()))
            .map_or(0, |r| r.upstream)
    }
}

/// `host` without its port and trailing dot; an IPv6 literal without its
/// brackets.
fn bare_host(host: &str) -> &str {
    let h = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(host, |(inside, _)| inside),
        None => host.split_once(':').map_or(host, |(name, _)| name),
    };
    h.strip_suffix('.').unwrap_or(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, prefix: Option<&str>, pool: &str) -> RouteConfig {
        RouteConfig {
            host: host.map(|h| match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Suffix(suffix.to_owned()),
                None => HostMatch::Exact(h.to_owned()),
            }),
            path_prefix: prefix.map(str::to_owned),
            pool: pool.to_owned(),
            line: 0,
        }
    }

    /// Pool names are their upstream index, to read the table below.
    fn index_of(pool: &str) -> usize {
        pool.parse().unwrap()
    }

    fn router() -> Router {
        // Deliberately not in precedence order.
        let routes = [
            route(None, Some("/v1/"), "4"),
            route(Some("*.example.com"), None, "2"),
            route(Some("api.example.com"), Some("/v1/admin/"), "5"),
            route(Some("*.b.example.com"), None, "3"),
            route(Some("api.example.com"), None, "1"),
            route(Some("::1"), None, "6"),
            route(Some("*.example.com"), Some("/static/"), "7"),
            route(Some("127.0.0.1"), Some("/"), "8"),
        ];
        Router::new(&routes, index_of)
    }

    #[test]
    fn each_rule_picks_its_upstream() {
        let r = router();
        #[rustfmt::skip]
        let table: &[(Option<&str>, &str, usize, &str)] = &[
            (Some("api.example.com"), "/", 1, "exact host beats wildcard"),
            (Some("api.example.com"), "/v1/x", 1, "exact host beats a hostless prefix"),
            (Some("api.example.com"), "/v1/admin/users", 5, "longest prefix within exact"),
            (Some("www.example.com"), "/", 2, "wildcard"),
            (Some("www.example.com"), "/static/a.css", 7, "longest prefix within wildcard"),
            (Some("www.example.com"), "/v1/x", 2, "wildcard beats a hostless prefix"),
            (Some("a.b.example.com"), "/", 3, "longer suffix beats shorter"),
            (Some("a.b.example.com"), "/static/x", 3, "longer suffix beats shorter with a prefix"),
            (Some("x.a.b.example.com"), "/", 3, "a wildcard matches any depth"),
            (Some("a.b.example.com"), "/", 3, "depth two under *.example.com"),
            (Some("example.com"), "/", 0, "a wildcard never matches its apex"),
            (Some("example.com"), "/v1/", 4, "the apex falls to the hostless route"),
            (Some("notexample.com"), "/", 0, "suffix matches at a dot only"),
            (Some("\u{e9}example.com"), "/", 0, "non-ASCII host, no panic"),
            (Some("API.Example.COM"), "/", 1, "case-insensitive host"),
            (Some("WWW.EXAMPLE.COM"), "/", 2, "case-insensitive wildcard"),
            (Some("api.example.com:8443"), "/", 1, "port stripped"),
            (Some("api.example.com."), "/", 1, "trailing dot stripped"),
            (Some("[::1]:8080"), "/", 6, "IPv6 literal with port"),
            (Some("[::1]"), "/", 6, "IPv6 literal"),
            (Some("[::2]:80"), "/v1/", 4, "other IPv6 literal"),
            (Some("127.0.0.1:80"), "/x", 8, "IPv4 literal with port"),
            (None, "/v1/x", 4, "no host: hostless routes only"),
            (None, "/", 0, "no host, no prefix match"),
            (Some("other.org"), "/v1/?a=1", 4, "query after the prefix"),
            (Some("other.org"), "/v1?a=/v1/", 0, "query ignored"),
            (Some("other.org"), "/V1/", 0, "paths are case-sensitive"),
            (Some("other.org"), "/v2/", 0, "fallthrough to the default"),
            (Some(""), "/", 0, "empty host"),
        ];
        for (host, path, want, rule) in table {
            assert_eq!(r.route(*host, path), *want, "{rule}: {host:?} {path:?}");
        }
    }

    #[test]
    fn no_routes_is_trivial_and_routes_everything_to_0() {
        let r = Router::new(&[], |_| unreachable!());
        assert!(r.is_trivial());
        assert_eq!(r.route(Some("a.example.com"), "/v1/"), 0);
        assert!(!router().is_trivial());
    }

    #[test]
    fn index_of_is_asked_for_each_routes_pool() {
        let routes = [
            route(None, Some("/a/"), "api"),
            route(None, Some("/b/"), "default"),
        ];
        let r = Router::new(&routes, |p| if p == "api" { 7 } else { 0 });
        assert_eq!(r.route(None, "/a/x"), 7);
        assert_eq!(r.route(None, "/b/x"), 0);
    }

    #[test]
    fn a_hostless_route_without_prefix_catches_everything_unmatched() {
        let routes = [
            route(None, None, "9"),
            route(Some("api.example.com"), Some("/v1/"), "1"),
        ];
        let r = Router::new(&routes, index_of);
        assert_eq!(r.route(Some("api.example.com"), "/v1/"), 1);
        assert_eq!(r.route(Some("api.example.com"), "/v2/"), 9);
        assert_eq!(r.route(None, "/"), 9);
    }
}
