//! The backend's response, shaped for the client: hop-by-hop headers
//! stripped, compression decided, the in-flight guard riding in the body,
//! an upgrade handed to its tunnel.

use http::{Method, Response, StatusCode};
use http_body::Body;
use hyper::body::Incoming;

use crate::backend::InFlight;
use crate::body::{Guarded, ProxyBody};
use crate::compress::{self, Compressed, Decision};
use crate::conns::{Lease, ResponseBody};
use crate::tunnel::{self, ClientUpgrade};

use super::rewrite::strip_hop_by_hop;

/// Shapes the backend's response for the client.
pub(super) fn respond(
    mut resp: Response<Incoming>,
    lease: Option<Lease>,
    mut guard: InFlight,
    method: &Method,
    accepted: compress::Accepted,
    settings: &compress::Settings,
    client_upgrade: Option<ClientUpgrade>,
) -> Response<ProxyBody> {
    if let Some(lease) = &lease {
        guard.sent(lease.sent_at);
    }
    guard.head_arrived(tokio::time::Instant::now());
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client) = client_upgrade {
            let backend = hyper::upgrade::on(&mut resp);
            // Counted from now: the client's HTTP connection ends as soon
            // as the `101` is out.
            let slot = client.limiter.hold(client.peer);
            tokio::spawn(tunnel::run(client, slot, backend, guard));
            let (mut parts, _) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, true);
            return Response::from_parts(parts, ProxyBody::Full(None));
        }
    }
    let (mut parts, body) = resp.into_parts();
    let body = ResponseBody::new(body, lease);
    strip_hop_by_hop(&mut parts.headers, false);
    let decision = compress::decide(method, accepted, parts.status, &parts.headers, settings);
    compress::rewrite_headers(&decision, &mut parts.headers);
    if body.is_end_stream() {
        guard.finish();
    }
    let body = Guarded::new(body, guard);
    let body = match decision {
        Decision::Compress(encoding) => {
            ProxyBody::Compressed(Compressed::new(body, encoding, settings.level))
        }
        Decision::PassThrough { .. } => ProxyBody::Upstream(body),
    };
    Response::from_parts(parts, body)
}
