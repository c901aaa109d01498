//! `[[route]]`: which requests go to which pool, by host (exact or
//! `*.suffix`) and path prefix. The typed form is in [`super::pools`]; the
//! matching itself in [`crate::router`].

use std::collections::hash_map::{Entry, HashMap};
use std::net::Ipv6Addr;

use toml::Spanned;

use super::pools::{dns_name, Lines};
use super::raw::RawRoute;
use super::{err, Check, HostMatch, PoolConfig, RouteConfig, DEFAULT_POOL};

/// The `[[route]]`s, in file order; `pools` are the `[[pool]]`s they may
/// name (besides `"default"`).
pub(super) fn routes(
    raw: Vec<Spanned<RawRoute>>,
    pools: &[PoolConfig],
    lines: &Lines,
) -> Check<Vec<RouteConfig>> {
    let valid_pools = || {
        let names: Vec<&str> = std::iter::once(DEFAULT_POOL)
            .chain(pools.iter().map(|p| p.name.as_str()))
            .collect();
        format!("valid: {}", names.join(", "))
    };
    let mut routes = Vec::with_capacity(raw.len());
    let mut taken: HashMap<(Option<HostMatch>, Option<String>), usize> = HashMap::new();
    for r in raw {
        let span = r.span();
        let line = lines.of(span.start);
        let r = r.into_inner();
        let Some(pool) = &r.pool else {
            return err(
                span,
                format!(
                    "[[route]] pool: missing; name the pool it sends to ({})",
                    valid_pools()
                ),
            );
        };
        let pool_name = pool.get_ref();
        if pool_name != DEFAULT_POOL && !pools.iter().any(|p| p.name == *pool_name) {
            return err(
                pool.span(),
                format!(
                    "[[route]] pool: unknown pool {pool_name:?}; {}",
                    valid_pools()
                ),
            );
        }
        let host = r.host.as_ref().map(host).transpose()?;
        let path_prefix = r.path_prefix.as_ref().map(path_prefix).transpose()?;
        if host.is_none() && path_prefix.is_none() {
            return err(
                span,
                "[[route]]: neither host nor path_prefix; a route matches on one or both \
                 (requests no route matches go to the default pool already)"
                    .into(),
            );
        }
        match taken.entry((host.clone(), path_prefix.clone())) {
            Entry::Occupied(o) => {
                return err(
                    span,
                    format!(
                        "[[route]] at line {line}: the same host and path_prefix as the \
                         [[route]] at line {}; each may be routed once",
                        o.get()
                    ),
                )
            }
            Entry::Vacant(v) => v.insert(line),
        };
        routes.push(RouteConfig {
            host,
            path_prefix,
            pool: pool_name.clone(),
            line,
        });
    }
    Ok(routes)
}

/// A route's `host`: exact (a name or an IP literal) or `*.suffix`,
/// lowercased, without a trailing dot; never with a port.
fn host(s: &Spanned<String>) -> Check<HostMatch> {
    let written = s.get_ref();
    let bad = |why: &str| {
        err(
            s.span(),
            format!(
                "[[route]] host: {written:?} {why}; valid: an exact host such as \
                 \"api.example.com\", or \"*.example.com\" for its subdomains, without a port"
            ),
        )
    };
    let lower = written.to_ascii_lowercase();
    let h = lower.strip_suffix('.').unwrap_or(&lower);
    if let Some(suffix) = h.strip_prefix("*.") {
        return match dns_name(suffix) {
            true => Ok(HostMatch::Suffix(format!(".{suffix}"))),
            false => bad("is not a wildcard host name"),
        };
    }
    if h.contains('*') {
        return bad("has a '*' that is not the whole first label");
    }
    let bare = h
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(h);
    if let Ok(v6) = bare.parse::<Ipv6Addr>() {
        return Ok(HostMatch::Exact(v6.to_string()));
    }
    if h.contains(':') {
        return bad("has a port (a route matches its host on any port)");
    }
    if !dns_name(h) {
        return bad("is not a host name (letters, digits, '-', '_' and '.')");
    }
    Ok(HostMatch::Exact(h.to_owned()))
}

/// A route's `path_prefix`: starts with `/`; no whitespace, no control
/// characters, no `?` or `#` (routes match the path without the query).
fn path_prefix(s: &Spanned<String>) -> Check<String> {
    let p = s.get_ref();
    let bad_char = |c: char| c.is_whitespace() || c.is_control() || c == '?' || c == '#';
    if p.starts_with('/') && !p.contains(bad_char) {
        return Ok(p.clone());
    }
    err(
        s.span(),
        format!(
            "[[route]] path_prefix: {p:?} must be a path that starts with '/', without \
             whitespace, '?' or '#', such as \"/v1/\""
        ),
    )
}
