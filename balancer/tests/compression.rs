//! Response compression end to end (contract: "Compression"): real clients
//! (hyper over HTTP/1.1 and HTTP/2, raw sockets, `curl`) talk to the
//! in-process balancer, which talks to real `backend` servers, all on
//! loopback ports chosen by the kernel.
//!
//! - One test per contract rule: `Accept-Encoding` and its q-values, the
//!   statuses that may be compressed, an existing `Content-Encoding`, the
//!   `types` list, `min_size` and unknown sizes, `HEAD`, ranges,
//!   `Cache-Control: no-transform`, and the rewritten head (`Content-Encoding`,
//!   `Content-Length`, `Vary`, `ETag`).
//! - Round trips: what the client decodes is byte for byte what the backend
//!   sends to a client that asked for no compression, for sizes from 0 to
//!   20 MB, over HTTP/1.1 and HTTP/2, and for `br` and `zstd` as well.
//! - Streaming: a slow stream reaches the client decodable chunk by chunk.
//! - `curl --compressed` as a real client.
//! - A client that leaves mid-body frees the encoder and the backend's
//!   in-flight slot.
//! - `gzip = false`.
//!
//! Each request is bounded (30 s), so a hang fails instead of stalling.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{backend_status, backends_toml, request, Host, Lb, Resp};

/// The default `min_size`.
const MIN: usize = 1024;

/// `backends = [host]` (no agent), with health probes rare enough not to
/// matter, then `extra` (a `[compression]` section, say).
fn lb_toml(host: &Host, extra: &str) -> String {
    format!(
        "{}\n[health]\ninterval = \"60s\"\n{extra}\n",
        backends_toml(&[(host, None)])
    )
}

/// A balancer in front of one fresh backend, with `extra` config.
async fn setup(extra: &str) -> (Host, Lb) {
    let host = Host::start("b");
    let lb = Lb::start(&lb_toml(&host, extra)).await;
    (host, lb)
}

/// `GET path` through the balancer with `Accept-Encoding: ae` (none when
/// `None`), over HTTP/1.1.
async fn get_ae(lb: &Lb, path: &str, ae: Option<&str>) -> Resp {
    let headers: Vec<(&str, &str)> = ae.map(|v| ("accept-encoding", v)).into_iter().collect();
    request(Method::GET, &lb.url(path), &headers, Bytes::new()).await
}

/// The body the backend itself sends for `path` to a client that asks for
/// no compression: the reference every round trip must reproduce.
async fn original(host: &Host, path: &str) -> Bytes {
    let r = request(
        Method::GET,
        &format!("http://{}{path}", host.addr),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "direct {path}");
    r.body
}

/// All values of header `name`, one per field line.
fn all(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// The single value of header `name`, if any.
fn one(headers: &HeaderMap, name: &str) -> Option<String> {
    let values = all(headers, name);
    assert!(values.len() <= 1, "{name} repeated: {values:?}");
    values.into_iter().next()
}

/// How many `Vary` elements name `Accept-Encoding`, over all lines.
fn vary_ae_count(headers: &HeaderMap) -> usize {
    all(headers, "vary")
        .iter()
        .flat_map(|v| v.split(','))
        .filter(|e| e.trim().eq_ignore_ascii_case("accept-encoding"))
        .count()
}

/// Decodes a whole body sent with `Content-Encoding: encoding`. Anything
/// but exactly one well-formed stream (garbage, truncation, trailing
/// bytes) panics.
fn decode(encoding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            let mut d = flate2::bufread::GzDecoder::new(data);
            d.read_to_end(&mut out).expect("valid gzip");
            assert!(d.into_inner().is_empty(), "bytes after the gzip stream");
        }
        "br" => {
            brotli::Decompressor::new(data, 4096)
                .read_to_end(&mut out)
                .expect("valid brotli");
        }
        "zstd" => out = zstd::stream::decode_all(data).expect("valid zstd"),
        other => panic!("unexpected Content-Encoding {other:?}"),
    }
    out
}

/// Asserts `r` is a compressed response in `encoding` (head rewritten as the
/// contract says) whose body decodes to `want`.
fn assert_compressed(r: &Resp, encoding: &str, want: &[u8], what: &str) {
    assert_eq!(r.status, StatusCode::OK, "{what}");
    assert_eq!(
        one(&r.headers, "content-encoding").as_deref(),
        Some(encoding),
        "{what}: {:?}",
        r.headers
    );
    assert!(
        r.headers.get("content-length").is_none(),
        "{what}: Content-Length kept on a compressed body: {:?}",
        r.headers
    );
    assert_eq!(vary_ae_count(&r.headers), 1, "{what}: {:?}", r.headers);
    let decoded = decode(encoding, &r.body);
    assert!(
        decoded == want,
        "{what}: decoded {} bytes, want {} bytes (equal prefix: {})",
        decoded.len(),
        want.len(),
        decoded.iter().zip(want).take_while(|(a, b)| a == b).count()
    );
}

/// Asserts `r` was passed through without compression, body `want`.
fn assert_identity(r: &Resp, want: &[u8], what: &str) {
    assert!(
        r.headers.get("content-encoding").is_none(),
        "{what}: compressed: {:?}",
        r.headers
    );
    assert!(
        r.body == want,
        "{what}: body of {} bytes, want {}",
        r.body.len(),
        want.len()
    );
}

/// `GET url` with `Accept-Encoding: ae` over HTTP/2, read whole, within 30 s.
async fn get_h2_ae(url: &str, ae: &str) -> Resp {
    support::get_h2(url, &[("accept-encoding", ae)]).await
}

/// The backend's requests in flight, as the balancer's `/status.json` says.
async fn in_flight(lb: &Lb, addr: SocketAddr) -> u64 {
    backend_status(&lb.status().await, addr)["in_flight"]
        .as_u64()
        .expect("in_flight is a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_encoding_and_q_values_decide_gzip() {
    let (host, lb) = setup("").await;
    let path = "/text/5000";
    let want = original(&host, path).await;
    // (Accept-Encoding, gzipped?)
    let rows: &[(Option<&str>, bool)] = &[
        (Some("gzip"), true),
        (Some("GZip"), true),
        (Some("deflate, gzip;q=0.5"), true),
        (Some("br;q=1.0, gzip;q=0.1"), true),
        (Some("*"), true),
        (Some("x-gzip"), true),
        (Some("gzip;q=0"), false),
        (Some("gzip;q=0.000"), false),
        (Some("gzip;q=0, *"), false),
        (Some("*;q=0"), false),
        (Some("deflate, br"), false),
        (Some("identity"), false),
        (Some(""), false),
        (Some("gzip;q=nonsense"), false),
        (None, false),
    ];
    for &(ae, gzipped) in rows {
        let r = get_ae(&lb, path, ae).await;
        let what = format!("Accept-Encoding {ae:?}");
        if gzipped {
            assert_compressed(&r, "gzip", &want, &what);
        } else {
            assert_identity(&r, &want, &what);
            assert_eq!(
                one(&r.headers, "content-length").as_deref(),
                Some("5000"),
                "{what}"
            );
            // The type is compressible: another client would get gzip.
            assert_eq!(vary_ae_count(&r.headers), 1, "{what}: {:?}", r.headers);
        }
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_200_to_203_are_compressed() {
    // min_size 0, so the one-line bodies of /status/N qualify by size.
    let (host, lb) = setup("[compression]\nmin_size = 0").await;
    for code in [200, 201, 202, 203] {
        let path = format!("/status/{code}");
        let r = get_ae(&lb, &path, Some("gzip")).await;
        assert_eq!(r.status.as_u16(), code);
        let reason = r.status.canonical_reason().unwrap_or("unknown");
        let want = format!("{code} {reason}\n");
        assert_eq!(
            one(&r.headers, "content-encoding").as_deref(),
            Some("gzip"),
            "{path}: {:?}",
            r.headers
        );
        assert_eq!(decode("gzip", &r.body), want.as_bytes(), "{path}");
    }
    for code in [301, 400, 404, 410, 500, 503] {
        let path = format!("/status/{code}");
        let r = get_ae(&lb, &path, Some("gzip")).await;
        assert_eq!(r.status.as_u16(), code, "{path}");
        let reason = r.status.canonical_reason().unwrap_or("unknown");
        assert_identity(&r, format!("{code} {reason}\n").as_bytes(), &path);
    }
    for code in [204, 304] {
        let path = format!("/status/{code}");
        let r = get_ae(&lb, &path, Some("gzip")).await;
        assert_eq!(r.status.as_u16(), code, "{path}");
        assert_identity(&r, b"", &path);
    }
    // The control: the same 404 is sent to a client refusing gzip unchanged.
    let direct = request(
        Method::GET,
        &format!("http://{}/status/404", host.addr),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        direct.body,
        get_ae(&lb, "/status/404", Some("gzip")).await.body
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_content_encoding_passes_through_untouched() {
    let (host, lb) = setup("").await;
    let want = original(&host, "/text/5000").await;
    for coding in ["gzip", "br", "deflate", "x-custom"] {
        let path = format!("/text/5000?content_encoding={coding}");
        let r = get_ae(&lb, &path, Some("gzip, br, deflate, x-custom")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            all(&r.headers, "content-encoding"),
            vec![coding.to_owned()],
            "{path}"
        );
        assert_eq!(
            one(&r.headers, "content-length").as_deref(),
            Some("5000"),
            "{path}"
        );
        assert!(r.body == want, "{path}: the body was changed");
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_types_list_is_honoured() {
    let (host, lb) = setup("").await;
    // (path, compressed with the default types?)
    let rows: &[(&str, bool)] = &[
        ("/html/5000", true),
        ("/json/5000", true),
        ("/text/5000", true),
        ("/bytes/5000", false),
        (
            "/text/5000?content_type=application/json;%20charset=utf-8",
            true,
        ),
        ("/text/5000?content_type=Text/HTML;charset=UTF-8", true),
        ("/bytes/5000?content_type=image/svg+xml", true),
        ("/bytes/5000?content_type=application/javascript", true),
        ("/text/5000?content_type=image/png", false),
        ("/text/5000?content_type=application/jsonp", false),
        ("/text/5000?content_type=textual/plain", false),
    ];
    for &(path, compressed) in rows {
        let want = original(&host, path).await;
        let r = get_ae(&lb, path, Some("gzip")).await;
        if compressed {
            assert_compressed(&r, "gzip", &want, path);
        } else {
            assert_identity(&r, &want, path);
            // Not compressible: no client gets it compressed, so no Vary.
            assert_eq!(vary_ae_count(&r.headers), 0, "{path}: {:?}", r.headers);
        }
    }
    lb.stop().await;

    // A configured list replaces the default one.
    let lb = Lb::start(&lb_toml(
        &host,
        "[compression]\ntypes = [\"application/json\", \"application/*+xml\"]",
    ))
    .await;
    let rows: &[(&str, bool)] = &[
        ("/json/5000", true),
        ("/text/5000?content_type=application/atom+xml", true),
        ("/html/5000", false),
        ("/text/5000", false),
    ];
    for &(path, compressed) in rows {
        let want = original(&host, path).await;
        let r = get_ae(&lb, path, Some("gzip")).await;
        if compressed {
            assert_compressed(&r, "gzip", &want, path);
        } else {
            assert_identity(&r, &want, path);
            assert_eq!(vary_ae_count(&r.headers), 0, "{path}: {:?}", r.headers);
        }
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_size_against_known_length_and_unknown_size_compressed() {
    let (host, lb) = setup("").await;
    // Below min_size: the body passes through unchanged, but the type is
    // compressible, so the contract's "responses that are not compressed
    // still get Vary: Accept-Encoding when their type is compressible"
    // applies (a larger response of the same resource would be compressed).
    for path in [format!("/text/{}", MIN - 1), "/text/1".to_owned()] {
        let want = original(&host, &path).await;
        let r = get_ae(&lb, &path, Some("gzip")).await;
        assert_identity(&r, &want, &path);
        assert_eq!(
            one(&r.headers, "content-length"),
            Some(want.len().to_string()),
            "{path}"
        );
        assert_eq!(vary_ae_count(&r.headers), 1, "{path}: {:?}", r.headers);
    }
    let path = format!("/text/{MIN}");
    let want = original(&host, &path).await;
    assert_compressed(
        &get_ae(&lb, &path, Some("gzip")).await,
        "gzip",
        &want,
        &path,
    );
    // Unknown size (no Content-Length): compressed, however small. (An
    // empty `chunked=1` body is no case: hyper gives it `Content-Length: 0`.)
    for path in [
        "/text/10?chunked=1",
        "/json/2?chunked=1",
        "/text/1?chunked=1",
    ] {
        let want = original(&host, path).await;
        let r = get_ae(&lb, path, Some("gzip")).await;
        assert_compressed(&r, "gzip", &want, path);
    }
    lb.stop().await;

    // A configured min_size moves the boundary.
    let lb = Lb::start(&lb_toml(&host, "[compression]\nmin_size = 100")).await;
    let want = original(&host, "/text/99").await;
    assert_identity(&get_ae(&lb, "/text/99", Some("gzip")).await, &want, "99");
    let want = original(&host, "/text/100").await;
    assert_compressed(
        &get_ae(&lb, "/text/100", Some("gzip")).await,
        "gzip",
        &want,
        "100",
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_not_compressed_but_varies_like_get() {
    let (_host, lb) = setup("").await;
    for path in [
        "/text/5000",
        "/text/5000?chunked=1",
        "/html/5000?vary=Origin",
    ] {
        let get = get_ae(&lb, path, Some("gzip")).await;
        assert_eq!(
            one(&get.headers, "content-encoding").as_deref(),
            Some("gzip"),
            "GET {path}"
        );
        let head = request(
            Method::HEAD,
            &lb.url(path),
            &[("accept-encoding", "gzip")],
            Bytes::new(),
        )
        .await;
        assert_eq!(head.status, StatusCode::OK, "HEAD {path}");
        assert!(
            head.headers.get("content-encoding").is_none(),
            "HEAD {path}: {:?}",
            head.headers
        );
        assert!(head.body.is_empty(), "HEAD {path}");
        assert_eq!(
            all(&head.headers, "vary"),
            all(&get.headers, "vary"),
            "HEAD {path} must vary as its GET"
        );
        assert_eq!(vary_ae_count(&head.headers), 1, "HEAD {path}");
        if !path.contains("chunked") {
            // The identity representation's length, as the backend said.
            assert_eq!(
                one(&head.headers, "content-length").as_deref(),
                Some("5000")
            );
        }
    }
    lb.stop().await;
}

/// A balancer in front of a raw backend that answers every request with
/// `status`, `Content-Range: range` and a 3200-byte `text/plain` body.
async fn range_backend(status: &str, range: &str) -> (Lb, String) {
    let body: String = "0123456789abcdef".repeat(200);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\n\
         Content-Range: {range}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let addr = support::raw_backend(Box::leak(response.into_bytes().into_boxed_slice())).await;
    let lb = Lb::start(&format!(
        "backends = [{{ addr = \"{addr}\", agent = \"127.0.0.1:1\" }}]\n\
         [health]\ninterval = \"60s\"\n"
    ))
    .await;
    (lb, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_are_not_compressed() {
    // The backend has no ranges: raw backends answer with a compressible
    // 206, and with a 200 that carries a Content-Range all the same.
    for (status, code) in [("206 Partial Content", 206), ("200 OK", 200)] {
        let (lb, body) = range_backend(status, "bytes 0-3199/100000").await;
        let r = request(
            Method::GET,
            &lb.url("/big"),
            &[("accept-encoding", "gzip"), ("range", "bytes=0-3199")],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status.as_u16(), code);
        assert_identity(&r, body.as_bytes(), status);
        assert_eq!(
            one(&r.headers, "content-range").as_deref(),
            Some("bytes 0-3199/100000"),
            "{status}"
        );
        assert_eq!(one(&r.headers, "content-length").as_deref(), Some("3200"));
        lb.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_control_no_transform_is_respected() {
    let (host, lb) = setup("").await;
    let want = original(&host, "/text/5000").await;
    for cc in ["no-transform", "public,%20max-age=60,%20No-Transform"] {
        let path = format!("/text/5000?cache_control={cc}");
        let r = get_ae(&lb, &path, Some("gzip")).await;
        assert_identity(&r, &want, &path);
        assert_eq!(one(&r.headers, "content-length").as_deref(), Some("5000"));
    }
    // Other directives do not stop compression.
    let path = "/text/5000?cache_control=no-cache,%20max-age=0";
    assert_compressed(&get_ae(&lb, path, Some("gzip")).await, "gzip", &want, path);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_heads_are_rewritten_and_vary_is_merged_once() {
    let (host, lb) = setup("").await;
    let want = original(&host, "/text/5000").await;

    // Strong ETag made weak, backend Vary merged, no Content-Length.
    let path = "/text/5000?etag=%22v1%22&vary=Origin";
    let r = get_ae(&lb, path, Some("gzip")).await;
    assert_compressed(&r, "gzip", &want, path);
    assert_eq!(one(&r.headers, "etag").as_deref(), Some("W/\"v1\""));
    let vary: Vec<String> = all(&r.headers, "vary")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|e| e.trim().to_ascii_lowercase())
        .collect();
    assert_eq!(vary, ["origin", "accept-encoding"], "{:?}", r.headers);
    // Over HTTP/1.1 a body of unknown length is chunked.
    assert_eq!(
        one(&r.headers, "transfer-encoding").as_deref(),
        Some("chunked")
    );

    // A weak ETag stays as it is; a Vary that already names
    // Accept-Encoding is not repeated.
    let path = "/text/5000?etag=W/%22v2%22&vary=accept-encoding";
    let r = get_ae(&lb, path, Some("gzip")).await;
    assert_compressed(&r, "gzip", &want, path);
    assert_eq!(one(&r.headers, "etag").as_deref(), Some("W/\"v2\""));
    assert_eq!(all(&r.headers, "vary"), ["accept-encoding"]);

    // The same URL uncompressed (client refuses): strong ETag and length
    // kept, Vary merged all the same, since the type is compressible.
    let path = "/text/5000?etag=%22v1%22&vary=Origin";
    for ae in [None, Some("gzip;q=0")] {
        let r = get_ae(&lb, path, ae).await;
        assert_identity(&r, &want, path);
        assert_eq!(one(&r.headers, "etag").as_deref(), Some("\"v1\""));
        assert_eq!(one(&r.headers, "content-length").as_deref(), Some("5000"));
        assert_eq!(
            one(&r.headers, "vary").as_deref(),
            Some("Origin, Accept-Encoding")
        );
    }
    // Not compressible: the backend's Vary untouched.
    let r = get_ae(&lb, "/bytes/5000?vary=Origin", Some("gzip")).await;
    assert!(r.headers.get("content-encoding").is_none());
    assert_eq!(all(&r.headers, "vary"), ["Origin"]);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_is_exact_for_every_size() {
    let (host, lb) = setup("").await;
    for n in [0, 1, MIN - 1, MIN, 10_000, 1_000_000] {
        for kind in ["text", "html", "json"] {
            if kind == "json" && n < 2 {
                continue; // /json/N needs N >= 2
            }
            // Known length: compressed from min_size on.
            let path = format!("/{kind}/{n}");
            let want = original(&host, &path).await;
            assert_eq!(want.len(), n, "{path}");
            let r = get_ae(&lb, &path, Some("gzip")).await;
            if n >= MIN {
                assert_compressed(&r, "gzip", &want, &path);
                if n >= 10_000 {
                    assert!(r.body.len() < n / 4, "{path}: {} bytes", r.body.len());
                }
            } else {
                assert_identity(&r, &want, &path);
            }
            // Unknown length: always compressed. (The backend cannot send
            // an empty body without `Content-Length: 0`: see below.)
            if n > 0 {
                let path = format!("/{kind}/{n}?chunked=1");
                let r = get_ae(&lb, &path, Some("gzip")).await;
                assert_compressed(&r, "gzip", &want, &path);
            }
        }
    }
    lb.stop().await;

    // With min_size 0 the empty and one-byte bodies are compressed too.
    let lb = Lb::start(&lb_toml(&host, "[compression]\nmin_size = 0")).await;
    for path in ["/text/0", "/text/1", "/json/2"] {
        let want = original(&host, path).await;
        let r = get_ae(&lb, path, Some("gzip")).await;
        assert_compressed(&r, "gzip", &want, path);
        let r = get_h2_ae(&lb.url(path), "gzip").await;
        assert_compressed(&r, "gzip", &want, &format!("h2 {path}"));
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_megabytes_streamed_round_trip() {
    let (host, lb) = setup("").await;
    let path = "/text/20000000?chunked=1";
    let want = original(&host, path).await;
    assert_eq!(want.len(), 20_000_000);
    let r = get_ae(&lb, path, Some("gzip")).await;
    assert_compressed(&r, "gzip", &want, path);
    assert!(r.body.len() < want.len() / 10, "{} bytes", r.body.len());
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_over_http2() {
    let (host, lb) = setup("").await;
    for path in [
        "/text/1?chunked=1".to_owned(),
        format!("/text/{MIN}"),
        "/html/10000".to_owned(),
        "/json/1000000?chunked=1".to_owned(),
        "/stream?chunks=5&ms=10".to_owned(),
    ] {
        let want = original(&host, &path).await;
        let r = get_h2_ae(&lb.url(&path), "gzip").await;
        assert_compressed(&r, "gzip", &want, &path);
    }
    // Refused over h2 too.
    let want = original(&host, "/text/5000").await;
    let r = get_h2_ae(&lb.url("/text/5000"), "gzip;q=0").await;
    assert_identity(&r, &want, "h2 gzip;q=0");
    assert_eq!(vary_ae_count(&r.headers), 1);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn br_and_zstd_are_chosen_by_q_values_then_server_order() {
    let (host, lb) = setup("[compression]\nencodings = [\"zstd\", \"br\", \"gzip\"]").await;
    let path = "/html/300000";
    let want = original(&host, path).await;
    // (Accept-Encoding, chosen coding or None)
    let rows: &[(&str, Option<&str>)] = &[
        ("gzip, br, zstd", Some("zstd")),
        ("gzip, br", Some("br")),
        ("gzip", Some("gzip")),
        ("*", Some("zstd")),
        ("br;q=1, zstd;q=0.5", Some("br")),
        ("gzip;q=0.9, br;q=0.8, zstd;q=0.7", Some("gzip")),
        ("gzip;q=0.5, br;q=0.5", Some("br")),
        ("zstd;q=0, br;q=0, *;q=0.1", Some("gzip")),
        ("zstd;q=0, *", Some("br")),
        ("zstd;q=0, br;q=0, gzip;q=0", None),
        ("deflate", None),
    ];
    for &(ae, chosen) in rows {
        let r = get_ae(&lb, path, Some(ae)).await;
        let what = format!("Accept-Encoding {ae:?}");
        match chosen {
            Some(encoding) => assert_compressed(&r, encoding, &want, &what),
            None => {
                assert_identity(&r, &want, &what);
                assert_eq!(vary_ae_count(&r.headers), 1, "{what}");
            }
        }
    }
    // Streamed bodies of unknown length round-trip in each coding too.
    let path = "/json/200000?chunked=1";
    let want = original(&host, path).await;
    for encoding in ["zstd", "br", "gzip"] {
        let r = get_ae(&lb, path, Some(encoding)).await;
        assert_compressed(&r, encoding, &want, path);
        let r = get_h2_ae(&lb.url(path), encoding).await;
        assert_compressed(&r, encoding, &want, &format!("h2 {path}"));
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stream_reaches_the_client_chunk_by_chunk() {
    let (host, lb) = setup("").await;
    let path = "/stream?chunks=10&ms=200";
    let direct = tokio::spawn({
        let url = format!("http://{}{path}", host.addr);
        async move { support::get(&url).await.body }
    });

    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = Request::get(lb.url(path))
        .header("accept-encoding", "gzip")
        .body(Empty::new())
        .unwrap();
    let start = Instant::now();
    let (decoded, arrivals) = tokio::time::timeout(Duration::from_secs(30), async {
        let resp = client.request(req).await.expect("response");
        assert_eq!(
            one(resp.headers(), "content-encoding").as_deref(),
            Some("gzip")
        );
        let mut body = resp.into_body();
        let mut decoder = flate2::write::GzDecoder::new(Vec::new());
        // When each frame that made more text decodable arrived.
        let mut arrivals = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.expect("body frame").into_data() else {
                continue;
            };
            let before = decoder.get_ref().len();
            decoder.write_all(&data).expect("valid gzip");
            decoder.flush().expect("valid gzip");
            if decoder.get_ref().len() > before {
                arrivals.push(start.elapsed());
            }
        }
        (decoder.finish().expect("complete gzip"), arrivals)
    })
    .await
    .expect("stream within 30 s");
    let total = start.elapsed();

    assert_eq!(decoded, direct.await.unwrap(), "decoded stream");
    assert!(
        total >= Duration::from_millis(1700),
        "stream took {total:?}"
    );
    let first = arrivals[0];
    assert!(
        first < Duration::from_secs(1),
        "first decodable bytes after {first:?} (arrivals {arrivals:?})"
    );
    // Chunk by chunk: decodable text kept arriving over the whole stream,
    // not in one piece at the end.
    assert!(
        arrivals.len() >= 6,
        "only {} frames made text decodable: {arrivals:?}",
        arrivals.len()
    );
    let last = *arrivals.last().unwrap();
    assert!(
        last - first >= Duration::from_millis(1200),
        "decodable text came in a burst: {arrivals:?}"
    );
    lb.stop().await;
}

/// Runs `curl` with `args`, or returns `None` when there is no `curl`.
async fn curl(args: Vec<String>) -> Option<std::process::Output> {
    tokio::task::spawn_blocking(move || {
        match std::process::Command::new("curl").args(&args).output() {
            Ok(out) => Some(out),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("cannot run curl: {e}"),
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_compressed_gets_the_original_body() {
    let (host, lb) = setup("").await;
    let dir = std::env::temp_dir().join(format!("lb-compression-curl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (head_file, body_file) = (dir.join("head"), dir.join("body"));
    let fetch = |url: String| {
        vec![
            "--silent".to_owned(),
            "--show-error".to_owned(),
            "--compressed".to_owned(),
            "--max-time".to_owned(),
            "30".to_owned(),
            "--dump-header".to_owned(),
            head_file.display().to_string(),
            "--output".to_owned(),
            body_file.display().to_string(),
            url,
        ]
    };
    for path in [
        "/html/200000",
        "/text/3000000?chunked=1",
        "/stream?chunks=3&ms=50",
    ] {
        let Some(out) = curl(fetch(lb.url(path))).await else {
            // In CI a missing tool is a failure, not a skip: `.ci/run`
            // installs curl, and a test that cannot run cannot fail.
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "curl is not on PATH, and CI=true: .ci/run must install it"
            );
            println!("note: curl is not on PATH; skipping the curl test");
            let _ = std::fs::remove_dir_all(&dir);
            return;
        };
        assert!(
            out.status.success(),
            "curl {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let head = std::fs::read_to_string(&head_file).unwrap().to_lowercase();
        assert!(
            head.contains("content-encoding: gzip"),
            "curl {path}: not gzipped: {head}"
        );
        let body = std::fs::read(&body_file).unwrap();
        assert!(
            body == original(&host, path).await,
            "curl {path}: decoded body differs ({} bytes)",
            body.len()
        );
    }
    lb.stop().await;

    // curl offers br and zstd as well: the server's first choice wins.
    let lb = Lb::start(&lb_toml(
        &host,
        "[compression]\nencodings = [\"zstd\", \"br\", \"gzip\"]",
    ))
    .await;
    let path = "/json/300000";
    let out = curl(fetch(lb.url(path))).await.expect("curl ran before");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = std::fs::read_to_string(&head_file).unwrap().to_lowercase();
    let body = std::fs::read(&body_file).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    // This curl may be built without zstd (it then does not offer it).
    assert!(
        head.contains("content-encoding: zstd") || head.contains("content-encoding: br"),
        "{head}"
    );
    assert!(body == original(&host, path).await, "curl {path}");
    lb.stop().await;
}

/// Sends `GET path` with `Accept-Encoding: gzip` on a raw socket, checks the
/// response is gzipped, and reads at least `at_least` bytes of its body.
async fn start_download(lb: &Lb, path: &str, at_least: usize) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: lb\r\nAccept-Encoding: gzip\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let (head, mut body) = support::read_head(&mut stream).await;
    assert_eq!(head.status, 200, "{path}");
    assert_eq!(head.header("content-encoding"), Some("gzip"), "{path}");
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        while body.len() < at_least {
            let n = stream.read(&mut buf).await.expect("read the body");
            assert!(n > 0, "{path}: body ended after {} bytes", body.len());
            body.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the first bytes of the body within 10 s");
    stream
}

/// Waits up to 5 s for the backend's in-flight count to reach 0.
async fn wait_idle(lb: &Lb, addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = in_flight(lb, addr).await;
        if n == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {n} request(s) still in flight 5 s after the client left: \
             the compressing body was not dropped"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_body_frees_the_encoder() {
    let (host, lb) = setup("").await;

    // A client that stops reading, then leaves: random bytes labelled
    // text/plain do not shrink, so the download stalls on the full socket
    // buffers with the request (and its encoder) alive.
    let path = "/bytes/200000000?content_type=text/plain&chunked=1";
    let stream = start_download(&lb, path, 16 * 1024).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(in_flight(&lb, host.addr).await, 1, "download under way");
    drop(stream);
    wait_idle(&lb, host.addr, "stalled download").await;

    // A client that leaves while the balancer is busy compressing a large,
    // compressible body of unknown length.
    let path = "/text/1000000000?chunked=1";
    let stream = start_download(&lb, path, 4 * 1024).await;
    assert_eq!(in_flight(&lb, host.addr).await, 1, "download under way");
    drop(stream);
    wait_idle(&lb, host.addr, "busy download").await;

    // The balancer still serves compressed responses afterwards.
    let want = original(&host, "/text/5000").await;
    assert_compressed(
        &get_ae(&lb, "/text/5000", Some("gzip")).await,
        "gzip",
        &want,
        "after",
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_false_compresses_nothing() {
    let (host, lb) = setup("[compression]\ngzip = false").await;
    for path in ["/text/5000", "/html/100000?chunked=1", "/json/5000"] {
        let want = original(&host, path).await;
        for ae in ["gzip", "*", "gzip, br, zstd"] {
            let r = get_ae(&lb, path, Some(ae)).await;
            assert_identity(&r, &want, path);
            // Compression off: no client can get another representation,
            // so no Vary either.
            assert_eq!(vary_ae_count(&r.headers), 0, "{path}: {:?}", r.headers);
        }
    }
    lb.stop().await;

    // gzip = false removes gzip from a longer list and leaves the rest.
    let lb = Lb::start(&lb_toml(
        &host,
        "[compression]\ngzip = false\nencodings = [\"br\", \"gzip\"]",
    ))
    .await;
    let want = original(&host, "/text/5000").await;
    let r = get_ae(&lb, "/text/5000", Some("gzip")).await;
    assert_identity(&r, &want, "gzip only, gzip off");
    assert_eq!(vary_ae_count(&r.headers), 1, "br is on: {:?}", r.headers);
    let r = get_ae(&lb, "/text/5000", Some("gzip, br")).await;
    assert_compressed(&r, "br", &want, "gzip, br");
    lb.stop().await;
}
