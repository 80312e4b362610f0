//! The real modalkit 0.2.0 as an oracle: tests/oracle/modalkit_oracle.py,
//! run with the Python that `scripts/modalkit-oracle.sh` installs, answers
//! what modalkit's own code makes of settings files and wire cases.
#![allow(clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::model::workspace_root;
use crate::support::client_python;

/// Sends `request` to the oracle and returns its answer (see the script's
/// docstring for the shape of both). Panics with its stderr if it fails.
pub fn oracle(request: &Value) -> Value {
    let mut child = Command::new(client_python())
        .arg(workspace_root().join("tests/oracle/modalkit_oracle.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the oracle starts");
    let mut stdin = child.stdin.take().expect("the oracle's stdin");
    stdin
        .write_all(request.to_string().as_bytes())
        .expect("the request reaches the oracle");
    drop(stdin);
    let output = child.wait_with_output().expect("the oracle ends");
    assert!(
        output.status.success(),
        "the oracle failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the oracle answers JSON")
}
