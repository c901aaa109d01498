//! Who may change the balancer through the admin listener: the holder of
//! the bearer token of `[admin] token_file` (RFC 6750). Reading needs no
//! token; every other method goes through [`authorize`] first.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;

use crate::config::AdminToken;

/// Lets `req` through when it carries `Authorization: Bearer <token>`
/// with the configured `token`. Otherwise the answer to send instead:
/// `403` when no token is configured (changes are disabled), `401` with a
/// `WWW-Authenticate: Bearer` challenge when the token is missing or wrong.
/// The comparison takes constant time.
///
/// Every handler of a mutating endpoint calls this before acting; the
/// admin router already does for every method but `GET` and `HEAD`.
pub fn authorize<B>(
    req: &Request<B>,
    token: Option<&AdminToken>,
) -> Result<(), Box<Response<Full<Bytes>>>> {
    let Some(token) = token else {
        return Err(Box::new(super::text(
            StatusCode::FORBIDDEN,
            "forbidden: changes through the admin listener are disabled; set [admin] token_file\n",
        )));
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer(v.as_bytes()));
    match presented {
        Some(p) if token.matches(p) => Ok(()),
        Some(_) => Err(Box::new(challenge(
            "Bearer realm=\"balancer admin\", error=\"invalid_token\"",
            "unauthorized: wrong bearer token\n",
        ))),
        None => Err(Box::new(challenge(
            "Bearer realm=\"balancer admin\"",
            "unauthorized: send Authorization: Bearer <the token of [admin] token_file>\n",
        ))),
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme in any
/// case, blanks around the token ignored); `None` for another scheme.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.first().is_some_and(|&c| c == b' ') {
        return None;
    }
    Some(rest.trim_ascii())
}

/// `401` with the challenge `www_authenticate`.
fn challenge(www_authenticate: &'static str, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = super::text(StatusCode::UNAUTHORIZED, body);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(www_authenticate),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(authorization: Option<&str>) -> Request<()> {
        let mut req = Request::post("/backends/10.0.0.1:80/drain");
        if let Some(a) = authorization {
            req = req.header(header::AUTHORIZATION, a);
        }
        req.body(()).unwrap()
    }

    fn status(r: Result<(), Box<Response<Full<Bytes>>>>) -> (u16, Option<String>) {
        match r {
            Ok(()) => (200, None),
            Err(resp) => (
                resp.status().as_u16(),
                resp.headers()
                    .get(header::WWW_AUTHENTICATE)
                    .map(|v| v.to_str().unwrap().to_owned()),
            ),
        }
    }

    #[test]
    fn without_a_token_configured_every_change_is_forbidden() {
        for auth in [None, Some("Bearer anything"), Some("Bearer ")] {
            assert_eq!(
                status(authorize(&post(auth), None)),
                (403, None),
                "{auth:?}"
            );
        }
    }

    #[test]
    fn the_token_must_be_presented_exactly() {
        let token = AdminToken::new(b"s3cret-admin-token");
        let realm = "Bearer realm=\"balancer admin\"";
        let invalid = "Bearer realm=\"balancer admin\", error=\"invalid_token\"";
        for (auth, want) in [
            (Some("Bearer s3cret-admin-token"), (200, None)),
            (Some("bearer  s3cret-admin-token "), (200, None)),
            (Some("BEARER s3cret-admin-token"), (200, None)),
            (None, (401, Some(realm))),
            (Some("Basic czNjcmV0"), (401, Some(realm))),
            (Some("Bearers3cret-admin-token"), (401, Some(realm))),
            (Some("Bearer"), (401, Some(realm))),
            (Some("Bearer s3cret-admin-toke"), (401, Some(invalid))),
            (Some("Bearer s3cret-admin-token2"), (401, Some(invalid))),
            (Some("Bearer S3CRET-ADMIN-TOKEN"), (401, Some(invalid))),
            (Some("Bearer "), (401, Some(invalid))),
        ] {
            let got = status(authorize(&post(auth), Some(&token)));
            assert_eq!(got, (want.0, want.1.map(str::to_owned)), "{auth:?}");
        }
    }
}
