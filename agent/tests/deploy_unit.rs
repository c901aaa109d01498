//! `deploy/agent.service` as an operator installs it: the unit passes
//! `systemd-analyze verify`, is hardened without losing the files the agent
//! reads, and its `ExecStart=` line, run with the built binary and a key
//! where systemd would put the credential, serves `/load` behind the key.
//!
//! Tool: `systemd-analyze` (Debian: `systemd`); under `CI=true` a missing
//! tool fails the test.

#[path = "../../balancer/tests/systemd/mod.rs"]
mod systemd;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use systemd::{TempDir, Unit};

const BIN: &str = env!("CARGO_BIN_EXE_agent");
/// Where the unit expects the binary.
const INSTALLED: &str = "/usr/local/bin/agent";

#[test]
fn the_agent_unit_passes_systemd_analyze_verify() {
    let Some(tool) = systemd::systemd_analyze() else {
        return;
    };
    let unit = Unit::load("agent.service");
    assert!(unit.text.contains(INSTALLED), "{}", unit.text);
    let built = unit.text.replace(INSTALLED, BIN);
    if let Err(e) = systemd::verify(tool, &unit.name, &built) {
        panic!("systemd-analyze verify agent.service: {e}");
    }
    // The check can fail: a value systemd cannot parse is caught.
    let bogus = built.replace("ProtectSystem=strict", "ProtectSystem=sealed");
    assert!(systemd::verify(tool, &unit.name, &bogus).is_err());
}

#[test]
fn the_agent_unit_is_hardened_and_can_still_measure() {
    let unit = Unit::load("agent.service");
    unit.assert_has(systemd::HARDENING);
    // No privilege at all: port 9100 needs none.
    unit.assert_has(&["CapabilityBoundingSet=", "AmbientCapabilities="]);
    // ProcSubset=pid would hide /proc/stat and /proc/meminfo (host-wide CPU
    // and memory); a CPU or memory limit on the agent's own cgroup would
    // make it report that tiny budget instead of the host's.
    for key in [
        "ProcSubset",
        "CPUQuota",
        "MemoryMax",
        "MemoryHigh",
        "AllowedCPUs",
    ] {
        assert!(unit.values(key).is_empty(), "agent.service sets {key}=");
    }
    if let Some(tool) = systemd::systemd_analyze() {
        let level = systemd::exposure(tool, &unit.name, &unit.text.replace(INSTALLED, BIN));
        assert!(
            level <= systemd::MAX_EXPOSURE,
            "systemd-analyze security rates agent.service {level}"
        );
    }
}

#[test]
fn the_units_command_line_serves_load_behind_the_key() {
    let unit = Unit::load("agent.service");
    // The key comes from the credential the unit loads, by the same name.
    unit.assert_has(&["LoadCredential=agent.key:/etc/balancer/agent.key"]);
    let dir = TempDir::new();
    dir.write(
        "agent.key",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
    );

    let line = unit.value("ExecStart");
    let line = line
        .replace("${CREDENTIALS_DIRECTORY}", &dir.0.to_string_lossy())
        .replace("0.0.0.0:9100", "127.0.0.1:0");
    let mut args = line.split_whitespace();
    assert_eq!(args.next(), Some(INSTALLED));
    let child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agent");
    let mut agent = Killed(child);
    let addr = serving_addr(&mut agent.0);

    // Without credentials: 401, not the load.
    let mut stream = TcpStream::connect(&addr).expect("connect to the agent");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /load HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
}

/// The address from the agent's "serving" log line, waiting up to 20 s.
fn serving_addr(child: &mut Child) -> String {
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    // Reads on to the end, so the agent never writes into a closed pipe.
    std::thread::spawn(move || {
        let mut log = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("serving") {
                let addr = line
                    .split("addr=")
                    .nth(1)
                    .and_then(|a| a.split_whitespace().next());
                let _ = tx.send(Ok(addr.unwrap_or_default().to_string()));
            }
            log.push_str(&line);
            log.push('\n');
        }
        let _ = tx.send(Err(log));
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(addr)) => addr,
        Ok(Err(log)) => panic!("the agent exited without serving:\n{log}"),
        Err(_) => panic!("the agent did not say it was serving within 20 s"),
    }
}

/// Kills the agent when the test ends, passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
