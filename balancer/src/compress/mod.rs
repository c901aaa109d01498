//! Response compression, as one self-contained mechanism (contract:
//! "Compression").
//!
//! The proxy uses it in four steps, and each step has its own file:
//!
//! 1. [`accepted`] (`accept.rs`) reads `Accept-Encoding` once, before the
//!    request is forwarded, into a small `Copy` value.
//! 2. [`decide`] (`decide.rs`) is one pure function of the request method, that
//!    value, and the response head. Each contract rule is one row of its tests.
//! 3. [`rewrite_headers`] (`headers.rs`) applies the decision to the response
//!    head: `Content-Encoding`, `Vary`, `Content-Length`, `Accept-Ranges`,
//!    `ETag`.
//! 4. [`Compressed`] (`body.rs`) wraps the backend body and compresses it as it
//!    streams. It flushes when the backend stalls, so slow streams and SSE
//!    reach the client promptly. `codec.rs` hides the three libraries behind
//!    one slice-in/slice-out interface. A gzip body of known length up to
//!    256 KiB (levels 1–7) is instead gathered and compressed whole with
//!    libdeflate, falling back to streaming if the backend stalls
//!    (`whole.rs`).
//!
//! This file owns the shared vocabulary: [`Encoding`], [`Settings`] and
//! [`TypePattern`] (`types.rs`).

mod accept;
mod body;
mod codec;
mod decide;
mod headers;
mod types;
mod whole;

#[cfg(test)]
mod body_tests;
#[cfg(test)]
mod whole_tests;

use std::fmt;
use std::str::FromStr;

pub use accept::{accepted, Accepted};
pub use body::Compressed;
pub use decide::{decide, Decision};
pub use headers::rewrite_headers;
pub use types::{TypePattern, TypePatternError};

/// A content coding the balancer can produce. The config lists them in the
/// server's order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// `gzip`: every client supports it. Bodies of known length up to 256
    /// KiB, at levels 1–7, are compressed whole by libdeflate (C, vendored
    /// and built by `cc`); the rest stream through flate2 on zlib-rs.
    Gzip,
    /// `br` via the pure-Rust `brotli` crate (the one tower-http uses, with
    /// no C to build). At the levels mapped here its output is about gzip's
    /// size, so list it first only for clients that want it.
    Br,
    /// `zstd` via the `zstd` crate's bindings to the reference libzstd (the
    /// C source is vendored and built by `cc`). It gives gzip's ratio at
    /// about three times the speed.
    Zstd,
}

impl Encoding {
    /// The coding's token, as it appears in `Accept-Encoding` and
    /// `Content-Encoding`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Br => "br",
            Encoding::Zstd => "zstd",
        }
    }

    /// The library's own level for the config's `level` (1..=9, clamped), so
    /// one knob steers all three codings.
    ///
    /// - gzip, streaming (whole bodies map `level` to libdeflate's levels in
    ///   `whole.rs`): the zlib-rs level whose output matches C zlib's at `level`,
    ///   so `level` means what it means to nginx and HAProxy users. zlib-rs
    ///   numbers its levels as zlib-ng does: 1 is "quick" deflate (about 30 %
    ///   larger than zlib's 1), 4–6 "medium" (up to 35 % larger than zlib's
    ///   6 on JSON), and zlib's own strategies sit at 2–3 ("fast") and 7–9
    ///   ("slow", lazy matching). Measured on 100 KB JSON and 10 KB HTML:
    ///   zlib-rs 2 = zlib 1 in size (+0.5 %, -1.4 %) at 1.8–4× its speed;
    ///   zlib-rs 7 = zlib 6 (-2.6 %, equal) at 1.3–2.5× its speed. So
    ///   1–3 → 2, 2, 3 and 4–9 → 7, 7, 7, 8, 9, 9.
    /// - br and zstd: `ceil(level / 2)` capped at 3, so 1–2 → 1, 3–4 → 2,
    ///   5–9 → 3. The reason is CPU and memory parity with gzip. On 2.7 MB of
    ///   HTML/JS at the default level 6, zstd 3 (its own default) matched gzip
    ///   6's size at three times its speed. Brotli 3 came out 5% larger at 1.3
    ///   times the speed. Higher settings buy a few percent for much more:
    ///   brotli 4 takes 3.6–12 MiB per stream in this encoder (against 1.9 MiB
    ///   at 3) and runs at half the speed, and zstd 4 and up grow their match
    ///   tables.
    pub fn native_level(self, level: u32) -> u32 {
        let level = level.clamp(1, 9);
        match self {
            Encoding::Gzip => [2, 2, 3, 7, 7, 7, 8, 9, 9][level as usize - 1],
            Encoding::Br | Encoding::Zstd => level.div_ceil(2).min(3),
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An encoding name that is none of `gzip`, `br`, `zstd`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown encoding {0:?}: valid values are \"gzip\", \"br\" and \"zstd\"")]
pub struct UnknownEncoding(pub String);

impl FromStr for Encoding {
    type Err = UnknownEncoding;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gzip" => Ok(Encoding::Gzip),
            "br" => Ok(Encoding::Br),
            "zstd" => Ok(Encoding::Zstd),
            other => Err(UnknownEncoding(other.to_owned())),
        }
    }
}

/// The `[compression]` section in typed form. The config module builds it, and
/// the proxy reads it from its config snapshot for each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Codings the balancer may produce, best first. An empty list turns
    /// compression off: no response changes and no `Vary` is added. When a
    /// client weights two codings equally, the earlier one wins.
    pub encodings: Vec<Encoding>,
    /// The contract's 1..=9 gzip level. br and zstd take the mapped level from
    /// [`Encoding::native_level`].
    pub level: u32,
    /// Responses whose `Content-Length` is below this pass through unchanged,
    /// because compressing them rarely saves a packet. Responses of unknown
    /// length are compressed.
    pub min_size: u64,
    /// Media types worth compressing. Anything else (images, archives, video)
    /// is already compressed, or is not ours to transform.
    pub types: Vec<TypePattern>,
}
