//! Just enough of the Chrome DevTools Protocol to drive a headless
//! Chromium from a test: start the browser, speak WebSocket (RFC 6455,
//! text frames, client frames masked) to one page, send commands, keep
//! every event, so the test can assert on console errors afterwards.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The browser binary: `$CHROMIUM`, or the first of the usual names on
/// `PATH`.
pub fn find_browser() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome", "chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// A running headless browser; killed (by its own PID) on drop.
pub struct Browser {
    child: Child,
    profile: PathBuf,
    /// The DevTools HTTP endpoint, `127.0.0.1:port`.
    pub devtools: String,
}

impl Browser {
    /// Starts `binary` headless on a blank page with a fresh profile and
    /// waits (up to 30 s) for its DevTools port.
    pub fn start(binary: &Path) -> Browser {
        let profile =
            std::env::temp_dir().join(format!("lb-status-page-chromium-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let child = Command::new(binary)
            .args([
                "--headless=new",
                "--disable-gpu",
                "--no-sandbox",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1600,1200",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut browser = Browser {
            child,
            profile: profile.clone(),
            devtools: String::new(),
        };
        // Chromium writes its chosen port to this file once it listens.
        let file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&file) {
                if let Some(port) = text.lines().next().filter(|p| !p.is_empty()) {
                    browser.devtools = format!("127.0.0.1:{port}");
                    return browser;
                }
            }
            if let Ok(Some(status)) = browser.child.try_wait() {
                panic!("{} exited at start: {status}", binary.display());
            }
            assert!(
                Instant::now() < deadline,
                "{} wrote no DevToolsActivePort in 30 s",
                binary.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A DevTools session with one page.
pub struct Page {
    stream: BufReader<TcpStream>,
    next_id: u64,
    /// Every event received so far (`{"method", "params"}`).
    pub events: Vec<Value>,
}

impl Page {
    /// Connects to the browser's first page target.
    pub async fn connect(browser: &Browser) -> Page {
        let list = crate::support::get(&format!("http://{}/json/list", browser.devtools)).await;
        let targets: Value = serde_json::from_slice(&list.body).unwrap();
        let ws = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("no page target: {targets}"))
            .to_owned();
        let rest = ws.strip_prefix("ws://").expect("a ws:// URL");
        let (host, path) = rest.split_at(rest.find('/').expect("a path"));
        let mut stream = TcpStream::connect(host).await.unwrap();
        let handshake = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(handshake.as_bytes()).await.unwrap();
        let mut stream = BufReader::new(stream);
        let mut status = String::new();
        stream.read_line(&mut status).await.unwrap();
        assert!(status.contains(" 101 "), "WebSocket handshake: {status}");
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        Page {
            stream,
            next_id: 1,
            events: Vec::new(),
        }
    }

    /// Sends a command and returns its result (events that arrive
    /// meanwhile are kept); panics on a protocol error or after 30 s.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let message = json!({"id": id, "method": method, "params": params}).to_string();
        self.send(message.as_bytes()).await;
        let answer = async {
            loop {
                let m = self.receive().await;
                if m["id"] == id {
                    return m;
                }
                if m.get("method").is_some() {
                    self.events.push(m);
                }
            }
        };
        let m = tokio::time::timeout(Duration::from_secs(30), answer)
            .await
            .unwrap_or_else(|_| panic!("{method}: no answer in 30 s"));
        if let Some(e) = m.get("error") {
            panic!("{method}: {e}");
        }
        m["result"].clone()
    }

    /// Evaluates `expression` in the page; its value, by value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression}: {e}");
        }
        r["result"]["value"].clone()
    }

    async fn send(&mut self, payload: &[u8]) {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![0x81];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.get_mut().write_all(&frame).await.unwrap();
    }

    /// One whole message (fragments joined), as JSON.
    async fn receive(&mut self) -> Value {
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.stream.read_exact(&mut head).await.unwrap();
            let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
            let len = match head[1] & 0x7f {
                126 => u64::from(self.stream.read_u16().await.unwrap()),
                127 => self.stream.read_u64().await.unwrap(),
                n => u64::from(n),
            };
            assert!(head[1] & 0x80 == 0, "the server masked a frame");
            assert!(len < 256 << 20, "a {len}-byte DevTools message");
            let mut payload = vec![0u8; len as usize];
            self.stream.read_exact(&mut payload).await.unwrap();
            match opcode {
                0 | 1 => message.extend_from_slice(&payload),
                8 => panic!("the browser closed the DevTools connection"),
                _ => continue, // ping/pong: not sent by Chromium unasked
            }
            if fin {
                return serde_json::from_slice(&message).unwrap();
            }
        }
    }
}

/// Decodes standard base64 (what `Page.captureScreenshot` returns).
pub fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let clean: Vec<u8> = text.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let v: Vec<u32> = chunk.iter().map(|&c| u32::from(value(c))).collect();
        let n = v.iter().fold(0u32, |acc, &x| acc << 6 | x) << (6 * (4 - v.len()));
        out.extend_from_slice(&n.to_be_bytes()[1..v.len()]);
    }
    out
}
