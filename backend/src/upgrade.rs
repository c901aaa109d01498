//! `GET /echo` with `Connection: upgrade`: the `101` handshake (with the
//! WebSocket accept key when asked) and the byte echo that follows, so the
//! balancer's tunnelling can be tested end to end.

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// The magic suffix of RFC 6455 §4.2.2 for `Sec-WebSocket-Accept`.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Upgrade` value, if the request asks for an upgrade: it has an
/// `Upgrade` header and `upgrade` among its `Connection` tokens.
pub fn requested(headers: &HeaderMap) -> Option<&HeaderValue> {
    let connection_upgrade = headers.get_all(CONNECTION).iter().any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    connection_upgrade.then(|| headers.get(UPGRADE)).flatten()
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`:
/// base64(sha1(key + GUID)).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(WEBSOCKET_GUID.as_bytes());
    base64(&sha.digest().bytes())
}

/// Standard base64 with padding; only ever used on a 20-byte digest, so a
/// dependency would be more than the job.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> shift) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Once hyper hands over the connection, echoes every byte back until the
/// client closes its side (or the server stops), then closes ours.
pub fn spawn_echo(on_upgrade: OnUpgrade, mut closing: watch::Receiver<()>) {
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(error = %err, "upgrade failed");
                return;
            }
        };
        let mut io = TokioIo::new(upgraded);
        let echo = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = io.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                io.write_all(&buf[..n]).await?;
            }
            io.shutdown().await
        };
        tokio::select! {
            result = echo => if let Err(err) = result {
                tracing::debug!(error = %err, "echo tunnel ended with an error");
            },
            _ = closing.changed() => {}
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_known_values() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn rfc6455_example_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn detects_upgrade_requests() {
        let mut headers = HeaderMap::new();
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(requested(&headers).is_none());
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert_eq!(
            requested(&headers).map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        headers.remove(UPGRADE);
        assert!(requested(&headers).is_none());
    }
}
