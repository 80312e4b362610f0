//! The real model for tests: fetched by `scripts/fetch-model.sh` on first use.
#![allow(clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `models/all-MiniLM-L6-v2`, fetched (once per test binary) if missing.
pub fn minilm_folder() -> PathBuf {
    static FETCHED: OnceLock<PathBuf> = OnceLock::new();
    FETCHED
        .get_or_init(|| {
            let root = workspace_root();
            let status = Command::new(root.join("scripts/fetch-model.sh"))
                .current_dir(&root)
                .status()
                .expect("scripts/fetch-model.sh runs");
            assert!(status.success(), "scripts/fetch-model.sh failed");
            root.join("models/all-MiniLM-L6-v2")
        })
        .clone()
}

/// `models/NAME`, one of the BERT-family models `scripts/make-models.py`
/// assembles from MiniLM's files (`minilm-cls-prompts`, `minilm-max`,
/// `minilm-reranker`, `minilm-classifier`), made (once per test binary) if
/// missing.
pub fn family_folder(name: &str) -> PathBuf {
    static MADE: OnceLock<PathBuf> = OnceLock::new();
    let models = MADE.get_or_init(|| {
        minilm_folder();
        let root = workspace_root();
        let status = Command::new("python3")
            .arg(root.join("scripts/make-models.py"))
            .current_dir(&root)
            .status()
            .expect("scripts/make-models.py runs");
        assert!(status.success(), "scripts/make-models.py failed");
        root.join("models")
    });
    models.join(name)
}

/// `models/SmolLM2-135M-Instruct`, fetched by `scripts/fetch-llm.sh` (once
/// per test binary) if missing.
pub fn smollm2_folder() -> PathBuf {
    static FETCHED: OnceLock<PathBuf> = OnceLock::new();
    FETCHED
        .get_or_init(|| {
            let root = workspace_root();
            let status = Command::new(root.join("scripts/fetch-llm.sh"))
                .current_dir(&root)
                .status()
                .expect("scripts/fetch-llm.sh runs");
            assert!(status.success(), "scripts/fetch-llm.sh failed");
            root.join("models/SmolLM2-135M-Instruct")
        })
        .clone()
}
