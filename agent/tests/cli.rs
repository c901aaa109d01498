//! The built `agent` binary: flags, exit codes and signals, as the contract
//! states them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_agent"))
}

/// Waits for `child` to exit, killing it after `limit`.
fn wait(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("agent still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn version_and_help() {
    let version = agent().arg("--version").output().expect("run agent");
    assert!(version.status.success());
    let stdout = String::from_utf8_lossy(&version.stdout);
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "{stdout}");

    let help = agent().arg("--help").output().expect("run agent");
    assert!(help.status.success());
    let stdout = String::from_utf8_lossy(&help.stdout);
    assert!(
        stdout.contains("--listen") && stdout.contains("0.0.0.0:9100"),
        "{stdout}"
    );
}

#[test]
fn a_bad_listen_address_is_a_usage_error() {
    let out = agent()
        .args(["--listen", "not-an-address"])
        .output()
        .expect("run agent");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-an-address"));
}

#[test]
fn an_address_in_use_exits_1_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = taken.local_addr().expect("local addr").to_string();
    let child = agent()
        .args(["--listen", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let out = wait(child, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

#[test]
fn sigterm_exits_cleanly() {
    let mut child = agent()
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    // Wait until it serves, so the signal handlers are in place.
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let serving = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("serving"));
    assert!(serving, "agent never said it was serving");
    let pid = child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let out = wait(child, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn help_says_where_the_agent_listens_and_who_should_reach_it() {
    let help = agent().arg("--help").output().expect("run agent");
    let stdout = String::from_utf8_lossy(&help.stdout);
    for words in ["0.0.0.0:9100", "every interface", "balancer", "--key-file"] {
        assert!(stdout.contains(words), "{words:?} missing from:\n{stdout}");
    }
}

/// A key file that is missing, empty or shorter than 16 bytes stops the
/// agent at start with exit 2, naming the file.
#[test]
fn a_bad_key_file_is_a_usage_error_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("agent-cli-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let short = dir.join("short.key");
    std::fs::write(&short, "too short\n").expect("write");
    let empty = dir.join("empty.key");
    std::fs::write(&empty, "").expect("write");
    let missing = dir.join("missing.key");
    for (path, says) in [
        (&short, "9 bytes"),
        (&empty, "0 bytes"),
        (&missing, "cannot read"),
    ] {
        let out = agent()
            .args(["--listen", "127.0.0.1:0", "--key-file"])
            .arg(path)
            .output()
            .expect("run agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&path.display().to_string()) && stderr.contains(says),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// With a good key the agent starts and says it requires one.
#[test]
fn a_good_key_file_starts_an_authenticating_agent() {
    let dir = std::env::temp_dir().join(format!("agent-cli-goodkey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = dir.join("agent.key");
    std::fs::write(&key, "c2l4dGVlbiBieXRlcyBhdCBsZWFzdA==\n").expect("write");
    let mut child = agent()
        .args(["--listen", "127.0.0.1:0", "--key-file"])
        .arg(&key)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let stderr = child.stderr.take().expect("stderr");
    let line = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("serving"));
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let line = line.expect("agent never said it was serving");
    assert!(line.contains("key required"), "{line}");
}
