//! [`TypePattern`]: one entry of `compression.types`, parsed once at config
//! load, and matched against `Content-Type` for each response without
//! allocating.

use std::fmt;
use std::str::FromStr;

/// A media-type pattern from `compression.types`. It is checked against a
/// response's `Content-Type`, case-insensitively, with parameters such as
/// `; charset=utf-8` ignored.
///
/// Valid forms:
/// - `type/subtype`, e.g. `application/json`: exactly that type;
/// - `type/*`, e.g. `text/*`: any subtype of `type`;
/// - `type/*+suffix`, e.g. `application/*+json`: any subtype of `type` with
///   that structured suffix (`application/ld+json`);
/// - `*/*+suffix`, e.g. `*/*+xml`: that suffix under any type
///   (`image/svg+xml`, `application/atom+xml`);
/// - `*/*`: everything. This is rarely what you want, since it includes
///   images and archives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypePattern {
    /// `None` is the `*` type.
    ty: Option<Box<str>>,
    sub: Subtype,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Subtype {
    Any,
    Exact(Box<str>),
    /// `*+suffix`, stored without the `+`.
    Suffix(Box<str>),
}

/// Why a `compression.types` entry could not be parsed. The message names the
/// valid forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid content type pattern {input:?}: {reason}; valid forms are \
     \"type/subtype\", \"type/*\", \"type/*+suffix\", \"*/*+suffix\" and \"*/*\""
)]
pub struct TypePatternError {
    input: String,
    reason: &'static str,
}

impl TypePattern {
    /// Whether a `Content-Type` field value (the raw bytes, parameters
    /// allowed) matches. A malformed value matches nothing.
    pub fn matches(&self, content_type: &[u8]) -> bool {
        let Some((ty, sub)) = media_type(content_type) else {
            return false;
        };
        if let Some(want) = &self.ty {
            if !ty.eq_ignore_ascii_case(want.as_bytes()) {
                return false;
            }
        }
        match &self.sub {
            Subtype::Any => true,
            Subtype::Exact(want) => sub.eq_ignore_ascii_case(want.as_bytes()),
            Subtype::Suffix(suffix) => {
                let suffix = suffix.as_bytes();
                sub.len() > suffix.len() + 1
                    && sub[sub.len() - suffix.len() - 1] == b'+'
                    && sub[sub.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

/// `type` and `subtype` of a `Content-Type` value, parameters dropped.
fn media_type(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let essence = value.split(|&b| b == b';').next()?.trim_ascii();
    let slash = essence.iter().position(|&b| b == b'/')?;
    let (ty, sub) = (&essence[..slash], &essence[slash + 1..]);
    (is_token(ty) && is_token(sub)).then_some((ty, sub))
}

/// RFC 9110 §5.6.2 `token`.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl FromStr for TypePattern {
    type Err = TypePatternError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason| TypePatternError {
            input: input.to_owned(),
            reason,
        };
        let s = input.trim().to_ascii_lowercase();
        if s.contains(';') {
            return Err(fail("parameters are not allowed"));
        }
        let Some((ty, sub)) = s.split_once('/') else {
            return Err(fail("missing '/'"));
        };
        let ty = match ty {
            "*" => None,
            t if is_token(t.as_bytes()) && !t.contains('*') => Some(Box::from(t)),
            _ => return Err(fail("the type must be a token or '*'")),
        };
        let sub = match sub {
            "*" => Subtype::Any,
            s => match s.strip_prefix("*+") {
                Some(suffix) if is_token(suffix.as_bytes()) && !suffix.contains('*') => {
                    Subtype::Suffix(Box::from(suffix))
                }
                Some(_) => return Err(fail("the suffix after '*+' must be a token")),
                None if is_token(s.as_bytes()) && !s.contains('*') => Subtype::Exact(Box::from(s)),
                None => return Err(fail("the subtype must be a token, '*' or '*+suffix'")),
            },
        };
        if ty.is_none() && matches!(sub, Subtype::Exact(_)) {
            return Err(fail("a '*' type needs a '*' or '*+suffix' subtype"));
        }
        Ok(TypePattern { ty, sub })
    }
}

impl fmt::Display for TypePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.ty.as_deref().unwrap_or("*"))?;
        match &self.sub {
            Subtype::Any => f.write_str("/*"),
            Subtype::Exact(sub) => write!(f, "/{sub}"),
            Subtype::Suffix(suffix) => write!(f, "/*+{suffix}"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for TypePattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> TypePattern {
        s.parse().expect("valid pattern")
    }

    #[test]
    fn matching_table() {
        // (pattern, Content-Type, matches)
        let rows: &[(&str, &str, bool)] = &[
            ("text/*", "text/html", true),
            ("text/*", "text/plain; charset=utf-8", true),
            ("text/*", "TEXT/Plain;charset=UTF-8", true),
            ("text/*", " text/css ", true),
            ("text/*", "textual/plain", false),
            ("text/*", "application/json", false),
            ("application/json", "application/json", true),
            ("application/json", "Application/JSON ; charset=utf-8", true),
            ("application/json", "application/jsonp", false),
            ("application/json", "application/ld+json", false),
            ("application/*+json", "application/ld+json", true),
            ("application/*+json", "application/vnd.api+JSON", true),
            ("application/*+json", "application/json", false),
            ("application/*+json", "application/+json", false),
            ("application/*+json", "text/x+json", false),
            ("*/*+xml", "image/svg+xml", true),
            ("*/*+xml", "application/atom+xml; q=1", true),
            ("*/*+xml", "application/xml", false),
            ("image/svg+xml", "image/svg+xml", true),
            ("image/svg+xml", "image/png", false),
            ("*/*", "image/png", true),
            ("*/*", "", false),
            ("*/*", "garbage", false),
            ("*/*", "text/", false),
            ("*/*", "/plain", false),
            ("text/*", "text/plain\u{7f}", false),
        ];
        for &(pat, content_type, want) in rows {
            assert_eq!(
                pattern(pat).matches(content_type.as_bytes()),
                want,
                "{pat} vs {content_type:?}"
            );
        }
    }

    #[test]
    fn parse_errors_name_the_valid_forms() {
        for bad in [
            "",
            "text",
            "text/",
            "/json",
            "*/json",
            "te xt/*",
            "text/*; q=1",
            "text/*+",
            "text/a*",
            "**/*",
            "text/*+*",
        ] {
            let err = bad.parse::<TypePattern>().expect_err(bad).to_string();
            assert!(err.contains("valid forms are"), "{bad}: {err}");
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "text/*",
            "application/json",
            "application/*+json",
            "*/*+xml",
            "*/*",
        ] {
            assert_eq!(pattern(s).to_string(), s);
        }
        assert_eq!(pattern(" Text/HTML ").to_string(), "text/html");
    }

    #[test]
    fn deserializes_from_a_string() {
        #[derive(serde::Deserialize)]
        struct Raw {
            types: Vec<TypePattern>,
        }
        let raw: Raw = toml::from_str(r#"types = ["text/*", "image/svg+xml"]"#).expect("parses");
        assert_eq!(raw.types, vec![pattern("text/*"), pattern("image/svg+xml")]);
        let err = toml::from_str::<Raw>(r#"types = ["text"]"#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("valid forms are"), "{err}");
    }
}
