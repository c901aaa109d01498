//! Stage 1 of parsing `lb.toml`: the file as written. Unknown keys are
//! refused, and every value keeps its position in the file ([`Spanned`]) so
//! that stage 2 (validation, in the parent module) can point at it.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: Spanned<String>,
    pub(super) backends: Spanned<Vec<Spanned<RawBackend>>>,
    #[serde(default)]
    pub(super) balance: RawBalance,
    #[serde(default)]
    pub(super) health: RawHealth,
    #[serde(default)]
    pub(super) agent: RawAgent,
    #[serde(default)]
    pub(super) compression: RawCompression,
    #[serde(default)]
    pub(super) timeouts: RawTimeouts,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) outlier: RawOutlier,
    #[serde(default)]
    pub(super) limits: RawLimits,
    pub(super) tls: Option<Spanned<RawTls>>,
    #[serde(default)]
    pub(super) log: RawLog,
    /// `[[pool]]`, in file order.
    #[serde(default)]
    pub(super) pool: Vec<Spanned<RawPool>>,
    /// `[[route]]`, in file order.
    #[serde(default)]
    pub(super) route: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub(super) dns: RawDns,
}

/// A backend is `"IP:port"` or `{ addr = "IP:port", agent = "IP:port", weight = N }`.
pub(super) struct RawBackend {
    pub(super) addr: Spanned<String>,
    pub(super) agent: Option<Spanned<String>>,
    pub(super) weight: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackendTable {
    pub(super) addr: Spanned<String>,
    pub(super) agent: Option<Spanned<String>>,
    pub(super) weight: Option<Spanned<i64>>,
}

impl<'de> Deserialize<'de> for RawBackend {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawBackend;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a backend as "IP:port" or { addr = "IP:port", agent = "IP:port", weight = N }"#)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawBackend, E> {
                // A plain string has no span of its own here; the caller's
                // `Spanned<RawBackend>` carries it, so use an empty one.
                Ok(RawBackend {
                    addr: Spanned::new(0..0, s.to_owned()),
                    agent: None,
                    weight: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawBackend, A::Error> {
                let t = RawBackendTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawBackend {
                    addr: t.addr,
                    agent: t.agent,
                    weight: t.weight,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBalance {
    pub(super) strategy: Option<Spanned<String>>,
    pub(super) retries: Option<Spanned<i64>>,
    pub(super) slow_start: Option<Spanned<String>>,
    pub(super) retry_budget: Option<Spanned<RawNumber>>,
}

/// A number written as an integer or a float: `retry_budget = 1` is as
/// valid as `retry_budget = 1.0` (TOML keeps the two apart).
#[derive(Clone, Copy)]
pub(super) struct RawNumber(pub(super) f64);

impl<'de> Deserialize<'de> for RawNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawNumber;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number such as 0.2")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawNumber, E> {
                Ok(RawNumber(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawNumber, E> {
                Ok(RawNumber(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawNumber, E> {
                Ok(RawNumber(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) path: Option<Spanned<String>>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) fall: Option<Spanned<i64>>,
    pub(super) rise: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub(super) port: Option<Spanned<i64>>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) key_file: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCompression {
    pub(super) gzip: Option<bool>,
    pub(super) level: Option<Spanned<i64>>,
    pub(super) min_size: Option<Spanned<i64>>,
    pub(super) types: Option<Vec<Spanned<String>>>,
    pub(super) encodings: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub(super) connect: Option<Spanned<String>>,
    pub(super) request: Option<Spanned<String>>,
    pub(super) idle: Option<Spanned<String>>,
    pub(super) header: Option<Spanned<String>>,
    pub(super) drain: Option<Spanned<String>>,
    pub(super) client_body: Option<Spanned<String>>,
    pub(super) send: Option<Spanned<String>>,
    pub(super) tunnel: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) token_file: Option<Spanned<String>>,
    pub(super) heartbeat: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutlier {
    pub(super) consecutive_failures: Option<Spanned<i64>>,
    pub(super) base_ejection: Option<Spanned<String>>,
    pub(super) max_ejected_percent: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_conns_per_backend: Option<Spanned<i64>>,
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) max_connections_per_ip: Option<Spanned<i64>>,
    pub(super) rate_per_ip: Option<Spanned<RawNumber>>,
    pub(super) burst_per_ip: Option<Spanned<i64>>,
    pub(super) max_request_body: Option<Spanned<super::limits::RawSize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) cert: Option<Spanned<String>>,
    pub(super) key: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) sni: Vec<Spanned<RawSni>>,
    pub(super) redirect_http: Option<bool>,
}

/// One extra certificate: `{ names = [...], cert = "...", key = "..." }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSni {
    pub(super) names: Spanned<Vec<Spanned<String>>>,
    pub(super) cert: Spanned<String>,
    pub(super) key: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) access: Option<Spanned<String>>,
    pub(super) format: Option<Spanned<String>>,
}

/// One `[[pool]]`. `name` is optional here only so that its absence gets
/// an error pointing at the table, with the rules, rather than serde's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub(super) name: Option<Spanned<String>>,
    pub(super) backends: Option<Spanned<Vec<Spanned<RawBackend>>>>,
    pub(super) discover: Option<Spanned<String>>,
    pub(super) resolve_every: Option<Spanned<String>>,
    pub(super) strategy: Option<Spanned<String>>,
    pub(super) health_path: Option<Spanned<String>>,
}

/// One `[[route]]` (`pool` optional here for the same reason as a pool's
/// `name`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) host: Option<Spanned<String>>,
    pub(super) path_prefix: Option<Spanned<String>>,
    pub(super) pool: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    #[serde(default)]
    pub(super) nameservers: Vec<Spanned<String>>,
}
