//! The real models for tests, fetched or made by the project's scripts on
//! first use (once per test binary).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `scripts/SCRIPT` (a `.py` one with python3) at the workspace root;
/// panics if it fails.
fn run_script(script: &str) {
    let root = workspace_root();
    let path = root.join("scripts").join(script);
    let mut command = if script.ends_with(".py") {
        let mut python = Command::new("python3");
        python.arg(&path);
        python
    } else {
        Command::new(&path)
    };
    let status = command
        .current_dir(&root)
        .status()
        .unwrap_or_else(|err| panic!("scripts/{script} does not run: {err}"));
    assert!(status.success(), "scripts/{script} failed");
}

/// `models/all-MiniLM-L6-v2`, fetched by `scripts/fetch-model.sh` if missing.
pub fn minilm_folder() -> PathBuf {
    static FETCHED: OnceLock<()> = OnceLock::new();
    FETCHED.get_or_init(|| run_script("fetch-model.sh"));
    workspace_root().join("models/all-MiniLM-L6-v2")
}

/// `models/NAME`, one of the BERT-family models `scripts/make-models.py`
/// assembles from MiniLM's files (`minilm-cls-prompts`, `minilm-max`,
/// `minilm-reranker`, `minilm-classifier`), made if missing.
pub fn family_folder(name: &str) -> PathBuf {
    static MADE: OnceLock<()> = OnceLock::new();
    MADE.get_or_init(|| {
        minilm_folder();
        run_script("make-models.py");
    });
    workspace_root().join("models").join(name)
}

/// `models/SmolLM2-135M-Instruct`, fetched by `scripts/fetch-llm.sh` if
/// missing.
pub fn smollm2_folder() -> PathBuf {
    static FETCHED: OnceLock<()> = OnceLock::new();
    FETCHED.get_or_init(|| run_script("fetch-llm.sh"));
    workspace_root().join("models/SmolLM2-135M-Instruct")
}
