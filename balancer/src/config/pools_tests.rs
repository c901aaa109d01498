//! `[[pool]]`, `[[route]]` and `[dns]`: the contract's example, the
//! defaults pools take, normalisation, and every error, each naming its
//! line and key.

use std::time::Duration;

use super::super::{Config, Path, Strategy};
use super::*;
use crate::router::Router;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, Path::new("lb.toml")).map_err(|e| e.to_string())
}

const MINIMAL: &str = "listen = \"127.0.0.1:8080\"\nbackends = [\"10.0.0.11:8000\"]\n";

/// The contract's `[[pool]]` and `[[route]]`, verbatim; after [`MINIMAL`],
/// the pool starts at line 4 and the route at line 12.
const CONTRACT: &str = r#"
[[pool]]
name = "api"
backends = ["10.0.1.11:8000", "10.0.1.12:8000"]   # and/or:
# discover = "api.service.consul:8000"   # A/AAAA name and port, or "srv:_http._tcp.api.service.consul"
# resolve_every = "5s"
strategy = "least-connections"          # optional: defaults to [balance] strategy
# health_path = "/ready"                # optional: defaults to [health] path

[[route]]
host = "api.example.com"    # optional: exact, or "*.example.com"
path_prefix = "/v1/"        # optional
pool = "api"
"#;

/// [`CONTRACT`] with its commented keys in force.
fn uncommented() -> String {
    CONTRACT
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn addrs(backends: &[BackendConfig]) -> Vec<String> {
    backends.iter().map(|b| b.addr.to_string()).collect()
}

#[test]
fn the_contract_example_parses() {
    let c = parse(&format!("{MINIMAL}{CONTRACT}")).unwrap();
    assert_eq!(addrs(&c.backends), ["10.0.0.11:8000"]);
    let [p] = &c.pools[..] else {
        panic!("{:?}", c.pools)
    };
    assert_eq!(p.name, "api");
    assert_eq!(addrs(&p.backends), ["10.0.1.11:8000", "10.0.1.12:8000"]);
    assert_eq!(p.backends[0].agent, "10.0.1.11:9100".parse().unwrap());
    assert_eq!(p.discover, None);
    assert_eq!(p.strategy, Strategy::LeastConnections);
    assert_eq!(p.health_path, "/health");
    assert_eq!(
        c.routes,
        [RouteConfig {
            host: Some(HostMatch::Exact("api.example.com".into())),
            path_prefix: Some("/v1/".into()),
            pool: "api".into(),
            line: 12,
        }]
    );
    assert_eq!(c.dns, Dns::default());
}

#[test]
fn the_contract_example_parses_with_its_commented_lines() {
    let c = parse(&format!("{MINIMAL}{}", uncommented())).unwrap();
    let p = &c.pools[0];
    assert_eq!(addrs(&p.backends), ["10.0.1.11:8000", "10.0.1.12:8000"]);
    assert_eq!(
        p.discover,
        Some(Discover::Host {
            name: "api.service.consul".into(),
            port: 8000
        })
    );
    assert_eq!(p.resolve_every, Duration::from_secs(5));
    assert_eq!(p.health_path, "/ready");
    // The comment's other form.
    let srv = uncommented().replace(
        "\"api.service.consul:8000\"",
        "\"srv:_http._tcp.api.service.consul\"",
    );
    let c = parse(&format!("{MINIMAL}{srv}")).unwrap();
    assert_eq!(
        c.pools[0].discover,
        Some(Discover::Srv {
            name: "_http._tcp.api.service.consul".into()
        })
    );
}

#[test]
fn a_file_without_pools_has_none_and_says_so() {
    let c = parse(MINIMAL).unwrap();
    assert!(c.pools.is_empty() && c.routes.is_empty());
    assert_eq!(c.dns, Dns::default());
    assert!(c
        .summary()
        .contains("no routes: every request goes to the default pool"));
}

#[test]
fn pools_take_balance_strategy_and_health_path_unless_they_say() {
    let c = parse(&format!(
        "{MINIMAL}[balance]\nstrategy = \"random\"\n[health]\npath = \"/hz\"\n\
         [[pool]]\nname = \"a\"\nbackends = [\"10.0.1.1:80\"]\n\
         [[pool]]\nname = \"b.2_x-Y\"\nbackends = [{{ addr = \"10.0.1.2:80\", agent = \"10.0.9.9:9\", weight = 3 }}]\n\
         strategy = \"round-robin\"\nhealth_path = \"/ready\"\nresolve_every = \"1m\"\n\
         discover = \"b.local:80\"\n"
    ))
    .unwrap();
    let (a, b) = (&c.pools[0], &c.pools[1]);
    assert_eq!(
        (a.strategy, a.health_path.as_str()),
        (Strategy::Random, "/hz")
    );
    assert_eq!(
        (b.strategy, b.health_path.as_str()),
        (Strategy::RoundRobin, "/ready")
    );
    assert_eq!(b.name, "b.2_x-Y");
    assert_eq!(b.resolve_every, Duration::from_secs(60));
    assert_eq!(
        b.backends,
        [BackendConfig {
            addr: "10.0.1.2:80".parse().unwrap(),
            agent: "10.0.9.9:9".parse().unwrap(),
            weight: 3
        }]
    );
}

#[test]
fn a_discovering_pool_needs_no_listed_backends() {
    let c = parse(&format!(
        "{MINIMAL}[[pool]]\nname = \"d\"\ndiscover = \"API.Service.Consul.:8000\"\n\
         [[pool]]\nname = \"s\"\ndiscover = \"SRV:_HTTP._tcp.Web.Consul.\"\n"
    ))
    .unwrap();
    assert!(c.pools[0].backends.is_empty());
    assert_eq!(
        c.pools[0].discover,
        Some(Discover::Host {
            name: "api.service.consul".into(),
            port: 8000
        })
    );
    assert_eq!(
        c.pools[1].discover,
        Some(Discover::Srv {
            name: "_http._tcp.web.consul".into()
        })
    );
    assert_eq!(
        c.pools[1].discover.as_ref().unwrap().to_string(),
        "srv:_http._tcp.web.consul"
    );
}

#[test]
fn route_hosts_are_normalised() {
    let table = [
        (
            "API.Example.COM.",
            HostMatch::Exact("api.example.com".into()),
        ),
        ("*.Example.com", HostMatch::Suffix(".example.com".into())),
        (
            "*.a.example.com.",
            HostMatch::Suffix(".a.example.com".into()),
        ),
        ("10.0.0.1", HostMatch::Exact("10.0.0.1".into())),
        ("[::1]", HostMatch::Exact("::1".into())),
        ("2001:DB8:0::1", HostMatch::Exact("2001:db8::1".into())),
        ("localhost", HostMatch::Exact("localhost".into())),
    ];
    for (written, want) in table {
        let text = format!("{MINIMAL}[[route]]\nhost = \"{written}\"\npool = \"default\"\n");
        let c = parse(&text).unwrap_or_else(|e| panic!("{text}\n{e}"));
        assert_eq!(c.routes[0].host.as_ref(), Some(&want), "{written}");
        assert_eq!(c.routes[0].pool, DEFAULT_POOL);
    }
}

#[test]
fn dns_nameservers_parse_with_port_53_by_default() {
    let c = parse(&format!(
        "{MINIMAL}[dns]\nnameservers = [\"10.0.0.2:5353\", \"10.0.0.3\", \"[::1]:53\", \"::2\"]\n"
    ))
    .unwrap();
    let want: Vec<std::net::SocketAddr> = ["10.0.0.2:5353", "10.0.0.3:53", "[::1]:53", "[::2]:53"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(c.dns.nameservers, want);
}

#[test]
fn the_check_summary_prints_every_pool_and_route() {
    let c = parse(&format!(
        "{MINIMAL}{}[[route]]\nhost = \"*.example.com\"\npool = \"default\"\n\
         [dns]\nnameservers = [\"10.0.0.2:53\"]\n",
        uncommented()
    ))
    .unwrap();
    let s = c.summary();
    for want in [
        "pool api: strategy least-connections, health GET /ready, 2 backend(s):",
        "  10.0.1.11:8000 (agent 10.0.1.11:9100, weight 1)",
        "  10.0.1.12:8000 (agent 10.0.1.12:9100, weight 1)",
        "  and those of discover api.service.consul:8000, resolved every 5s",
        "route (line 12): host api.example.com, path /v1/* -> pool api",
        "route (line 16): host *.example.com, any path -> pool default",
        "dns: name servers 10.0.0.2:53",
    ] {
        assert!(s.contains(want), "{want:?} missing from:\n{s}");
    }
    assert!(!s.contains("no routes"), "{s}");
}

#[test]
fn the_router_follows_the_parsed_routes() {
    let c = parse(&format!(
        "{MINIMAL}{CONTRACT}[[pool]]\nname = \"web\"\nbackends = [\"10.0.2.1:80\"]\n\
         [[route]]\nhost = \"*.example.com\"\npool = \"web\"\n"
    ))
    .unwrap();
    let index_of = |name: &str| match name {
        DEFAULT_POOL => 0,
        other => 1 + c.pools.iter().position(|p| p.name == other).unwrap(),
    };
    let r = Router::new(&c.routes, index_of);
    assert_eq!(r.route(Some("api.example.com"), "/v1/users"), 1);
    assert_eq!(r.route(Some("api.example.com"), "/v2/users"), 2);
    assert_eq!(r.route(Some("www.example.com:8080"), "/"), 2);
    assert_eq!(r.route(Some("example.org"), "/v1/users"), 0);
}

/// `[[pool]] name = "api"` with one backend, lines 3 to 5 after [`MINIMAL`].
const API: &str = "[[pool]]\nname = \"api\"\nbackends = [\"10.0.1.11:8000\"]\n";

/// Each bad tail (after [`MINIMAL`]) and what its error must name: the
/// file, line and column, the key, and the valid values.
#[test]
fn errors_name_the_line_the_key_and_the_valid_values() {
    #[rustfmt::skip]
    let table: &[(String, &[&str])] = &[
        // Pool names.
        ("[[pool]]\nbackends = [\"10.0.1.1:80\"]\n".into(),
            &["lb.toml:3:1:", "[[pool]] name: missing", "letters, digits"]),
        ("[[pool]]\nname = \"\"\nbackends = [\"10.0.1.1:80\"]\n".into(),
            &["lb.toml:4:8:", "[[pool]] name: \"\"", "letters, digits, '.', '_' and '-'"]),
        ("[[pool]]\nname = \"a b\"\nbackends = [\"10.0.1.1:80\"]\n".into(),
            &["lb.toml:4:8:", "[[pool]] name: \"a b\"", "not a valid name"]),
        ("[[pool]]\nname = \"default\"\nbackends = [\"10.0.1.1:80\"]\n".into(),
            &["lb.toml:4:8:", "[[pool]] name", "reserved", "top-level backends"]),
        (format!("{API}[[pool]]\nname = \"api\"\nbackends = [\"10.0.1.1:80\"]\n"),
            &["lb.toml:7:8:", "[[pool]] name: \"api\"", "at line 4", "unique"]),
        // Empty pools.
        ("[[pool]]\nname = \"api\"\n".into(),
            &["lb.toml:3:1:", "[[pool]] \"api\": empty pool", "backends", "discover"]),
        ("[[pool]]\nname = \"api\"\nbackends = []\n".into(),
            &["lb.toml:5:12:", "[[pool]] \"api\": empty pool"]),
        // Backends.
        ("[[pool]]\nname = \"api\"\nbackends = [\"nope\"]\n".into(),
            &["lb.toml:5:13:", "[[pool]] \"api\" backends[0]", "IP:port"]),
        ("[[pool]]\nname = \"api\"\nbackends = [{ addr = \"10.0.1.1:80\", weight = 0 }]\n".into(),
            &["lb.toml:5:46:", "[[pool]] \"api\" backends[0] weight", "1..1000"]),
        ("[[pool]]\nname = \"api\"\nbackends = [{ addr = \"10.0.1.1:80\", port = 1 }]\n".into(),
            &["lb.toml:5:", "port"]),
        ("[[pool]]\nname = \"api\"\nbackends = [\"10.0.0.11:8000\"]\n".into(),
            &["lb.toml:5:13:", "[[pool]] \"api\" backends[0]: 10.0.0.11:8000 is listed twice",
              "also as backends[0] at line 2", "one pool only"]),
        (format!("{API}[[pool]]\nname = \"b\"\nbackends = [\"10.0.1.2:80\", \"10.0.1.11:8000\"]\n"),
            &["lb.toml:8:28:", "[[pool]] \"b\" backends[1]: 10.0.1.11:8000 is listed twice",
              "also as [[pool]] \"api\" backends[0] at line 5"]),
        ("[[pool]]\nname = \"api\"\nbackends = [\"10.0.1.1:80\", \"10.0.1.1:80\"]\n".into(),
            &["lb.toml:5:28:", "backends[1]", "listed twice", "backends[0] at line 5"]),
        // discover and resolve_every.
        ("[[pool]]\nname = \"api\"\ndiscover = \"api.consul\"\n".into(),
            &["lb.toml:5:12:", "[[pool]] \"api\" discover: \"api.consul\" has no port",
              "\"name:port\"", "\"srv:_service._proto.name\""]),
        ("[[pool]]\nname = \"api\"\ndiscover = \"api.consul:0\"\n".into(),
            &["lb.toml:5:12:", "discover", "1..65535", "\"name:port\""]),
        ("[[pool]]\nname = \"api\"\ndiscover = \"api.consul:65536\"\n".into(),
            &["lb.toml:5:12:", "discover", "1..65535"]),
        ("[[pool]]\nname = \"api\"\ndiscover = \"10.0.0.1:80\"\n".into(),
            &["lb.toml:5:12:", "discover", "is an address", "backends"]),
        ("[[pool]]\nname = \"api\"\ndiscover = \"[::1]:80\"\n".into(),
            &["lb.toml:5:12:", "discover", "not a DNS name"]),
        ("[[pool]]\nname = \"api\"\ndiscover = \"bad name:80\"\n".into(),
            &["lb.toml:5:12:", "discover", "not a DNS name", "\"srv:_service._proto.name\""]),
        ("[[pool]]\nname = \"api\"\ndiscover = \"a..b:80\"\n".into(),
            &["lb.toml:5:12:", "discover", "not a DNS name"]),
        ("[[pool]]\nname = \"api\"\ndiscover = \"srv:api.consul\"\n".into(),
            &["lb.toml:5:12:", "discover", "not an SRV name", "\"srv:_service._proto.name\""]),
        ("[[pool]]\nname = \"api\"\ndiscover = \"srv:_http._tcp\"\n".into(),
            &["lb.toml:5:12:", "not an SRV name"]),
        ("[[pool]]\nname = \"api\"\ndiscover = \"srv:_http._tcp.a:80\"\n".into(),
            &["lb.toml:5:12:", "not an SRV name"]),
        (format!("{API}resolve_every = \"10s\"\n"),
            &["lb.toml:6:17:", "[[pool]] \"api\" resolve_every", "without discover"]),
        ("[[pool]]\nname = \"api\"\ndiscover = \"a.b:80\"\nresolve_every = \"0s\"\n".into(),
            &["lb.toml:6:17:", "[[pool]] \"api\" resolve_every", "longer than zero", "at most \"7d\""]),
        ("[[pool]]\nname = \"api\"\ndiscover = \"a.b:80\"\nresolve_every = \"soon\"\n".into(),
            &["lb.toml:6:17:", "[[pool]] \"api\" resolve_every", "not a duration"]),
        // strategy, health_path, unknown keys.
        (format!("{API}strategy = \"fastest\"\n"),
            &["lb.toml:6:12:", "[[pool]] \"api\" strategy", "\"fastest\"",
              "least-loaded, round-robin, least-connections, random"]),
        (format!("{API}health_path = \"ready\"\n"),
            &["lb.toml:6:15:", "[[pool]] \"api\" health_path", "\"ready\"", "absolute path"]),
        (format!("{API}weight = 2\n"),
            &["lb.toml:6:1:", "weight"]),
        // Routes.
        (format!("{API}[[route]]\nhost = \"a.example.com\"\npool = \"nope\"\n"),
            &["lb.toml:8:8:", "[[route]] pool", "unknown pool \"nope\"", "valid: default, api"]),
        (format!("{API}[[route]]\nhost = \"a.example.com\"\n"),
            &["lb.toml:6:1:", "[[route]] pool: missing", "valid: default, api"]),
        (format!("{API}[[route]]\npool = \"api\"\n"),
            &["lb.toml:6:1:", "[[route]]: neither host nor path_prefix",
              "no route matches go to the default pool"]),
        (format!("{API}[[route]]\nhost = \"A.example.com\"\npool = \"api\"\n\
                  [[route]]\npath_prefix = \"/v1/\"\npool = \"api\"\n\
                  [[route]]\nhost = \"a.example.com.\"\npool = \"default\"\n"),
            &["lb.toml:12:1:", "[[route]] at line 12", "same host and path_prefix",
              "[[route]] at line 6"]),
        (format!("{API}[[route]]\npath_prefix = \"/v1/\"\npool = \"api\"\npath = \"/\"\n"),
            &["lb.toml:9:1:", "path"]),
        (format!("{API}[[route]]\nhost = \"a.example.com:8080\"\npool = \"api\"\n"),
            &["lb.toml:7:8:", "[[route]] host: \"a.example.com:8080\" has a port",
              "\"*.example.com\""]),
        (format!("{API}[[route]]\nhost = \"*example.com\"\npool = \"api\"\n"),
            &["lb.toml:7:8:", "[[route]] host", "'*'", "\"*.example.com\""]),
        (format!("{API}[[route]]\nhost = \"a.*.example.com\"\npool = \"api\"\n"),
            &["lb.toml:7:8:", "[[route]] host", "whole first label"]),
        (format!("{API}[[route]]\nhost = \"*.\"\npool = \"api\"\n"),
            &["lb.toml:7:8:", "[[route]] host", "'*'"]),
        (format!("{API}[[route]]\nhost = \"*.*.example.com\"\npool = \"api\"\n"),
            &["lb.toml:7:8:", "[[route]] host", "not a wildcard host name"]),
        (format!("{API}[[route]]\nhost = \"a b\"\npool = \"api\"\n"),
            &["lb.toml:7:8:", "[[route]] host", "not a host name", "\"api.example.com\""]),
        (format!("{API}[[route]]\nhost = \"\"\npool = \"api\"\n"),
            &["lb.toml:7:8:", "[[route]] host", "not a host name"]),
        (format!("{API}[[route]]\npath_prefix = \"v1\"\npool = \"api\"\n"),
            &["lb.toml:7:15:", "[[route]] path_prefix: \"v1\"", "starts with '/'", "\"/v1/\""]),
        (format!("{API}[[route]]\npath_prefix = \"/a b\"\npool = \"api\"\n"),
            &["lb.toml:7:15:", "[[route]] path_prefix", "whitespace"]),
        (format!("{API}[[route]]\npath_prefix = \"/a?b\"\npool = \"api\"\n"),
            &["lb.toml:7:15:", "[[route]] path_prefix", "'?'"]),
        // [dns].
        ("[dns]\nnameservers = [\"10.0.0.2:53\", \"ns1\"]\n".into(),
            &["lb.toml:4:31:", "[dns] nameservers", "\"ns1\"", "IP:port"]),
        ("[dns]\nnameservers = [\"10.0.0.2:0\"]\n".into(),
            &["lb.toml:4:16:", "[dns] nameservers", "port 0"]),
        ("[dns]\nservers = [\"10.0.0.2:53\"]\n".into(),
            &["lb.toml:4:1:", "servers"]),
    ];
    let mut failures = Vec::new();
    for (tail, wants) in table {
        let text = format!("{MINIMAL}{tail}");
        match parse(&text) {
            Ok(_) => failures.push(format!("accepted:\n{text}")),
            Err(e) => {
                for want in *wants {
                    if !e.contains(want) {
                        failures.push(format!("error for\n{text}{e}\nlacks {want:?}\n"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_route_may_name_a_pool_defined_after_it() {
    let c = parse(&format!(
        "{MINIMAL}[[route]]\npath_prefix = \"/b/\"\npool = \"b\"\n\
         [[pool]]\nname = \"b\"\nbackends = [\"10.0.1.2:80\"]\n"
    ))
    .unwrap();
    assert_eq!((c.routes[0].pool.as_str(), c.routes[0].line), ("b", 3));
}

/// The README's example, and its table of which request goes where.
#[test]
fn the_readme_example_routes_as_documented() {
    let c = parse(
        r#"
listen = "0.0.0.0:8080"
backends = ["10.0.0.11:8000", "10.0.0.12:8000"]   # the "default" pool

[[pool]]
name = "api"
backends = ["10.0.1.11:8000", { addr = "10.0.1.12:8000", weight = 2 }]
strategy = "least-connections"
health_path = "/ready"

[[pool]]
name = "search"
discover = "search.service.consul:8080"   # every A/AAAA address, on port 8080
resolve_every = "10s"

[[pool]]
name = "static"
discover = "srv:_http._tcp.static.service.consul"   # SRV: targets and their ports

[[route]]
host = "api.example.com"
pool = "api"

[[route]]
host = "api.example.com"
path_prefix = "/search/"
pool = "search"

[[route]]
host = "*.cdn.example.com"
pool = "static"

[[route]]
path_prefix = "/assets/"
pool = "static"

[dns]
nameservers = ["10.0.0.2:53", "10.0.0.3"]   # for discover; default: /etc/resolv.conf
"#,
    )
    .unwrap();
    let index_of = |name: &str| match name {
        DEFAULT_POOL => 0,
        other => 1 + c.pools.iter().position(|p| p.name == other).unwrap(),
    };
    let r = Router::new(&c.routes, index_of);
    let pool = |host, path| match r.route(Some(host), path) {
        0 => DEFAULT_POOL,
        i => c.pools[i - 1].name.as_str(),
    };
    assert_eq!(pool("api.example.com", "/search/q"), "search");
    assert_eq!(pool("api.example.com", "/assets/x.css"), "api");
    assert_eq!(pool("img.cdn.example.com", "/a.png"), "static");
    assert_eq!(pool("cdn.example.com", "/"), "default");
    assert_eq!(pool("www.example.com", "/assets/x.css"), "static");
    assert_eq!(pool("www.example.com", "/"), "default");
}
