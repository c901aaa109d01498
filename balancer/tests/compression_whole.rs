//! gzip of bodies of known length, end to end over real sockets: up to 256
//! KiB (`Content-Length`) the balancer gathers the body and compresses it in
//! one libdeflate call; above that, or without a length, it streams; a body
//! that stalls is not held back; a backend that fails mid-body makes the
//! client's response fail, not end early and look complete.
//!
//! Which path ran is visible in the bytes: a whole body is exactly what one
//! libdeflate call makes of it (level 7 for the default level 6).

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{backends_toml, backends_without_agents, request, Host, Lb, Step};

/// The largest `Content-Length` compressed whole.
const WHOLE_MAX: usize = 256 * 1024;

/// What one libdeflate call makes of `data` at the level the default
/// `level = 6` maps to.
fn libdeflate_gzip(data: &[u8]) -> Vec<u8> {
    let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(7).unwrap());
    let mut out = vec![0u8; c.gzip_compress_bound(data.len())];
    let n = c.gzip_compress(data, &mut out).unwrap();
    out.truncate(n);
    out
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

/// A balancer in front of `addr` alone, probing its health rarely.
async fn lb_for(addr: SocketAddr) -> Lb {
    Lb::start(&format!(
        "{}\n[health]\ninterval = \"60s\"\n",
        backends_without_agents(&[addr])
    ))
    .await
}

async fn get_gzip(url: &str) -> support::Resp {
    request(
        Method::GET,
        url,
        &[("accept-encoding", "gzip")],
        Bytes::new(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_up_to_the_bound_are_compressed_whole_and_larger_ones_stream() {
    let host = Host::start("b");
    let lb = Lb::start(&format!(
        "{}\n[health]\ninterval = \"60s\"\n",
        backends_toml(&[(&host, None)])
    ))
    .await;
    let cases = [
        ("/words/1024", true),
        ("/words/10240", true),
        ("/html/10240", true),
        ("/json/102400", true),
        ("/words/102400", true),
        (&*format!("/words/{WHOLE_MAX}"), true),
        (&*format!("/words/{}", WHOLE_MAX + 1), false),
        ("/words/600000", false),
        // No Content-Length: streamed whatever the size.
        ("/words/102400?chunked=1", false),
    ];
    for (path, whole) in cases {
        let original = request(
            Method::GET,
            &format!("http://{}{path}", host.addr),
            &[],
            Bytes::new(),
        )
        .await
        .body;
        let r = get_gzip(&lb.url(path)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(
            r.headers
                .get("content-encoding")
                .map(|v| v.to_str().unwrap()),
            Some("gzip"),
            "{path}"
        );
        assert!(r.headers.get("content-length").is_none(), "{path}");
        assert!(gunzip(&r.body) == original[..], "{path}: round trip");
        assert_eq!(
            r.body[..] == libdeflate_gzip(&original)[..],
            whole,
            "{path}: compressed whole is {whole}"
        );
    }
    lb.stop().await;
}

const HEAD_60K: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n";

/// 60,000 bytes of JSON-ish text.
fn body_60k() -> Vec<u8> {
    let mut body = Vec::new();
    let mut i = 0u32;
    while body.len() < 60_000 {
        body.extend_from_slice(
            format!("{{\"id\":{i},\"v\":\"x{}\"}},", i * 7919 % 1000).as_bytes(),
        );
        i += 1;
    }
    body.truncate(60_000);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_of_known_length_is_not_held_back() {
    // Half the body, a 1.5 s stall, the other half: the first half must
    // reach the client long before the stall ends, not with the rest.
    let body = body_60k();
    let mut first = HEAD_60K.to_vec();
    first.extend_from_slice(&body[..30_000]);
    let backend = support::scripted_backend(vec![
        Step::Send(first),
        Step::Sleep(Duration::from_millis(1500)),
        Step::Send(body[30_000..].to_vec()),
    ])
    .await;
    let lb = lb_for(backend).await;

    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = Request::get(lb.url("/"))
        .header("accept-encoding", "gzip")
        .body(Empty::new())
        .unwrap();
    let start = Instant::now();
    let (decoded, first_half_at) = tokio::time::timeout(Duration::from_secs(30), async {
        let resp = client.request(req).await.expect("response");
        assert_eq!(resp.headers()["content-encoding"], "gzip");
        let mut body = resp.into_body();
        let mut decoder = flate2::write::GzDecoder::new(Vec::new());
        let mut first_half_at = None;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.expect("body frame").into_data() else {
                continue;
            };
            decoder.write_all(&data).expect("valid gzip");
            decoder.flush().expect("valid gzip");
            if first_half_at.is_none() && decoder.get_ref().len() >= 30_000 {
                first_half_at = Some(start.elapsed());
            }
        }
        (decoder.finish().expect("complete gzip"), first_half_at)
    })
    .await
    .expect("response within 30 s");
    let total = start.elapsed();

    assert!(decoded == body, "round trip");
    assert!(total >= Duration::from_millis(1500), "took {total:?}");
    let first_half_at = first_half_at.expect("decoded");
    // The flush comes 5 ms into the stall; 1 s leaves room for a loaded
    // machine while still far from the 1.5 s a held body would take.
    assert!(
        first_half_at < Duration::from_secs(1),
        "the first half was held back until {first_half_at:?} (total {total:?})"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_mid_body_fails_the_clients_response() {
    // Content-Length 60000, 20000 bytes, then the backend hangs up.
    let body = body_60k();
    let mut partial = HEAD_60K.to_vec();
    partial.extend_from_slice(&body[..20_000]);
    let backend = support::scripted_backend(vec![Step::Send(partial), Step::Close]).await;
    let lb = lb_for(backend).await;

    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = Request::get(lb.url("/"))
        .header("accept-encoding", "gzip")
        .body(Empty::new())
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        // The failure may reach the client before the head is on the wire
        // (the connection then closes without one) or after (the body
        // breaks off); either way the client must not get a complete
        // response.
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-encoding"], "gzip");
        resp.into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| e.to_string())
    })
    .await
    .expect("an answer within 30 s");
    // Ending the chunked body cleanly would tell the client that a
    // truncated body was complete.
    assert!(
        outcome.is_err(),
        "the body ended cleanly: {:?}",
        outcome.map(|b| b.len())
    );
    lb.stop().await;
}
