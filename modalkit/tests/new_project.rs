//! `modalkit new` end to end, as a new user goes: generate a project outside
//! the workspace (depending on this checkout by path), build it with Cargo,
//! serve it and call `/predict_sync` with a real HTTP client, then import its
//! Modal app offline and check the image builds its own package and binary.
//! Also keeps the README's quickstart identical to the generated pipeline, so
//! the quickstart is what this test compiles.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the modalkit crate sits in the workspace")
        .to_owned()
}

/// The workspace's target folder: one `target/` for everything, and what
/// both builds compile alike (same lock file) is compiled once.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn readme_quickstart_is_the_generated_pipeline() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let start = readme
        .find("```rust\n")
        .expect("the README has a rust quickstart block")
        + "```rust\n".len();
    let end = start + readme[start..].find("```").unwrap();
    assert_eq!(
        &readme[start..end],
        include_str!("../templates/main.rs"),
        "README quickstart and modalkit/templates/main.rs differ"
    );
}

#[test]
fn a_new_project_builds_serves_and_its_modal_app_builds_its_own_binary() {
    let outside = tempfile::tempdir().unwrap();
    let project = outside.path().join("review-model");
    let status = Command::new(env!("CARGO_BIN_EXE_modalkit"))
        .arg("new")
        .arg(&project)
        .arg("--modalkit-path")
        .arg(workspace_root())
        .status()
        .unwrap();
    assert!(status.success(), "modalkit new failed");
    for file in [
        "Cargo.toml",
        "src/main.rs",
        "modalkit.yaml",
        "Dockerfile",
        "Dockerfile.cuda",
        "modal_app.py",
        ".dockerignore",
    ] {
        assert!(project.join(file).is_file(), "{file} was not written");
    }
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    let modalkit_lines: Vec<&str> = manifest
        .lines()
        .filter(|l| l.starts_with("modalkit"))
        .collect();
    assert_eq!(
        modalkit_lines.len(),
        1,
        "one modalkit dependency: {manifest}"
    );
    assert!(
        !manifest.contains("garde")
            && !manifest.contains("serde")
            && !manifest.contains("schemars"),
        "the project depends on modalkit alone: {manifest}"
    );
    // The versions this workspace tested, not whatever is newest today.
    std::fs::copy(
        workspace_root().join("Cargo.lock"),
        project.join("Cargo.lock"),
    )
    .unwrap();

    let build = Command::new(env!("CARGO"))
        .args(["build", "--quiet"])
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", target_dir())
        .status()
        .unwrap();
    assert!(build.success(), "cargo build of the new project failed");
    let binary = target_dir().join("debug").join("review-model");
    assert!(binary.is_file(), "no binary at {}", binary.display());

    // The project keeps lean defaults (no `sqs`): `check` says what a yaml
    // naming SQS would need, and the server refuses such jobs at submit.
    let check = |env: &[(&str, &str)]| {
        let output = Command::new(&binary)
            .arg("check")
            .current_dir(&project)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = check(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    let sqs_backend = ("MODALKIT_APP_SETTINGS__QUEUE_CONFIG__BACKEND", "sqs");
    let (code, stderr) = check(&[sqs_backend]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("app_settings.queue_config.backend")
            && stderr.contains("`sqs` feature")
            && stderr.contains("MODALKIT_APP_SETTINGS__QUEUE_CONFIG__BACKEND"),
        "{stderr}"
    );
    let (code, stderr) = check(&[("MODALKIT_APP_SETTINGS__QUEUE_CONFIG__INPUT_QUEUE", "jobs")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("input_queue"), "{stderr}");

    let dead_letters = outside.path().join("dead-letters.jsonl");
    let port = free_port();
    let server = Server(
        Command::new(&binary)
            .args(["serve", "--port", &port.to_string()])
            .current_dir(&project)
            .env("RUST_LOG", "warn")
            .env(sqs_backend.0, sqs_backend.1)
            .env(
                "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__DEAD_LETTER_PATH",
                &dead_letters,
            )
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = client.get(format!("{base}/ready")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the new project never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let post_to = |path: &str, body: Value| {
            let request = client.post(format!("{base}{path}")).json(&body).send();
            async move {
                let response = request.await.unwrap();
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.unwrap())
            }
        };
        let post = |body: Value| post_to("/predict_sync", body);
        let (status, body) =
            post(json!({"text": "a fine review of at least fifty characters, for sure"})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "success");
        assert_eq!(body["label"], "positive");
        assert!(body["error"].is_null());
        let (status, body) = post(json!({"text": "   "})).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some("invalid_input")),
            "{body}"
        );
        assert_eq!(body["error"]["message"], "the review is only whitespace");
        let (status, body) = post(json!({"text": ""})).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some("validation_failed")),
            "{body}"
        );
        // A job naming a queue of the backend this binary lacks: refused,
        // naming the feature, and nothing accepted or dead-lettered.
        let job = |body: Value| post_to("/predict_async", body);
        let review = json!({"text": "a fine review of at least fifty characters, for sure"});
        let (status, body) = job(json!({"message": review, "success_queue": "results"})).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["code"], "queue_not_compiled", "{body}");
        assert_eq!(body["error"]["details"]["feature"], "sqs", "{body}");
        assert_eq!(body["error"]["details"]["path"], "success_queue", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("`sqs` feature"), "{message}");
        let (status, body) = job(json!({"message": review, "failure_queue": "failures"})).await;
        assert_eq!(
            (status, body["error"]["details"]["path"].as_str()),
            (422, Some("failure_queue")),
            "{body}"
        );
        // A job naming no queue needs no backend: accepted and run.
        let (status, body) = job(json!({"message": review})).await;
        assert_eq!(status, 200, "{body}");
        let job_id = body["job_id"].as_str().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let record: Value = client
                .get(format!("{base}/jobs/{job_id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if record["status"] == "succeeded" {
                break;
            }
            assert!(Instant::now() < deadline, "the job never ended: {record}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            !dead_letters.exists(),
            "dead-lettered: {}",
            std::fs::read_to_string(&dead_letters).unwrap_or_default()
        );
        let openapi: Value = client
            .get(format!("{base}/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let text = &openapi["components"]["schemas"]["Review"]["properties"]["text"];
        assert_eq!(
            (text["minLength"].as_u64(), text["maxLength"].as_u64()),
            (Some(1), Some(5000)),
            "{openapi}"
        );
    });
    drop(server);

    let python = std::env::var_os("MODALKIT_TEST_MODAL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv-modal/bin/python"));
    assert!(
        python.is_file(),
        "{} is missing: scripts/test.sh installs the modal venv before the tests",
        python.display()
    );
    let script = r#"
import importlib.util, json, sys, warnings
spec = importlib.util.spec_from_file_location("modal_app", sys.argv[1])
app = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    info = app.app.registered_functions["ModalkitServer"].info()
print(json.dumps({"app": app.app.name, "max_inputs": info.concurrency_info.max_inputs,
                  "source": app.image_source(app.SETTINGS, app.PATHS)}))
"#;
    let output = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(project.join("modal_app.py"))
        .current_dir(&project)
        .env("MODALKIT_CONFIG", "modalkit.yaml")
        .env("HOME", outside.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "importing the Modal app failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let imported: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(imported["app"], "review-model-dev");
    // The template: one model, max_batch_size 32, the default queue depth.
    assert_eq!(imported["max_inputs"], json!(1024 + 32));
    let source = &imported["source"];
    let project_dir = project.canonicalize().unwrap();
    assert_eq!(
        source["context_dir"],
        json!(project_dir.display().to_string())
    );
    assert_eq!(
        source["dockerfile"],
        json!(project_dir.join("Dockerfile").display().to_string())
    );
    assert_eq!(
        source["build_args"],
        json!({"PACKAGE": "review-model", "BIN": "review-model", "FEATURES": "", "CONFIG": "modalkit.yaml"})
    );
}
