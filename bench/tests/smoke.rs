//! Smoke test: runs `bench failover --quick` (our own binaries only, no
//! nginx/HAProxy/wrk or cgroups needed) and checks that its report is well
//! formed: JSON that parses with the expected fields, a Markdown table, and
//! SVG that is balanced XML, and that the load was the open loop's Poisson
//! arrivals. No timing assertions.

use std::path::{Path, PathBuf};
use std::process::Command;

fn out_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn failover_quick_writes_a_well_formed_report() {
    let out = out_dir();
    let status = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["failover", "--quick", "--out"])
        .arg(&out)
        .env("RUST_LOG", "warn")
        .status()
        .expect("bench runs");
    assert!(status.success(), "bench failover --quick failed: {status}");
    let dir = out.join("failover");

    let json: serde_json::Value =
        serde_json::from_str(&read(&dir.join("report.json"))).expect("report.json is JSON");
    assert_eq!(json["scenario"], "failover");
    let result = &json["result"];
    assert!(
        result["ok"].as_u64().expect("ok count") > 0,
        "no request succeeded"
    );
    assert!(result["errors"].is_u64());
    assert!(result["latency_ms"]["p99"].is_number());
    // The open loop: Poisson arrivals, with the count of those the driver
    // held back (not asserted: that would be a timing assertion).
    assert!(
        result["mode"]
            .as_str()
            .is_some_and(|m| m.contains("Poisson")),
        "{}",
        result["mode"]
    );
    assert!(result["throttled"].is_u64());
    assert!(result["timeline"].as_array().is_some_and(|t| !t.is_empty()));
    let goals = json["goals"].as_array().expect("goals");
    assert!(!goals.is_empty());
    assert!(goals
        .iter()
        .all(|g| g["what"].is_string() && g["target"].is_string()));

    let md = read(&dir.join("report.md"));
    assert!(md.starts_with("# "), "report.md has a title");
    assert!(
        md.contains("| failed requests |"),
        "report.md has the figures table"
    );
    assert!(md.contains("](timeline.svg)"), "report.md links its chart");

    let svg = read(&dir.join("timeline.svg"));
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert_balanced_xml(&svg);
    assert!(svg.contains("<polyline"), "the timeline has lines");

    let _ = std::fs::remove_dir_all(&out);
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every element is closed in order; attribute values are quoted.
fn assert_balanced_xml(svg: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = svg;
    while let Some(open) = rest.find('<') {
        let close = rest[open..].find('>').expect("unclosed tag") + open;
        let tag = &rest[open + 1..close];
        assert_eq!(
            tag.matches('"').count() % 2,
            0,
            "unbalanced quotes in <{tag}>"
        );
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
        } else if !tag.ends_with('/') {
            let name = tag.split_whitespace().next().expect("tag name");
            stack.push(name.to_string());
        }
        rest = &rest[close + 1..];
    }
    assert!(stack.is_empty(), "unclosed elements: {stack:?}");
}
