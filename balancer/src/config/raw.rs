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
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<Spanned<String>>,
}
