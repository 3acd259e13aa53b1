//! The README's shell walk-through, run as written against `countersign demo --serve` in a fresh
//! directory, with `countersign` on PATH. Only the ports are changed (to free ones).

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use support::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_countersign");

/// The first ```sh block after the walk-through marker.
fn walk_through() -> String {
    let readme = include_str!("../README.md");
    let marked = readme
        .split_once("<!-- readme-test: walk-through -->")
        .expect("README has the walk-through marker")
        .1;
    let block = marked
        .split_once("```sh\n")
        .expect("a sh block follows the marker")
        .1;
    block
        .split_once("```")
        .expect("the block ends")
        .0
        .to_owned()
}

#[test]
fn the_readme_walk_through_runs_as_written_against_demo_serve() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (gateway, metrics) = (free_port(), free_port());
    let mut demo = Command::new(BIN)
        .args(["demo", "--serve", "--listen"])
        .arg(format!("127.0.0.1:{gateway}"))
        .arg("--metrics")
        .arg(format!("127.0.0.1:{metrics}"))
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("demo --serve");
    let mut printed = String::new();
    let mut lines = BufReader::new(demo.stdout.take().expect("stdout")).lines();
    for line in lines.by_ref() {
        let line = line.expect("demo output");
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("ready") {
            break;
        }
    }
    assert!(
        printed.contains(&format!("metrics      http://127.0.0.1:{metrics}/metrics")),
        "{printed}"
    );
    let audit = dir.path().join("countersign-demo-audit.jsonl");
    assert!(printed.contains(&audit.display().to_string()), "{printed}");

    let script = walk_through()
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{gateway}"))
        .replace("127.0.0.1:9464", &format!("127.0.0.1:{metrics}"));
    let bin_dir = Path::new(BIN).parent().expect("binary dir");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .output()
        .expect("bash");
    let _ = demo.kill();
    let _ = demo.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Both confirmations reached the sample API, signed by the key keygen made.
    assert!(
        stdout.contains(r#"{"done":"DELETE /api/users/42","confirmed_by_device":""#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"{"done":"DELETE /api/users/43","confirmed_by_device":""#),
        "{stdout}"
    );
    assert!(
        stdout.contains("countersign-demo-audit.jsonl: chain intact, 6 records"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"countersign_requests_total{decision="accepted",route="delete-user"} 2"#),
        "{stdout}"
    );
}
