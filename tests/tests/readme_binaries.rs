//! The example binaries as a user gets them: `translate` built exactly as
//! the README builds it (`cargo build -p modalkit-examples --bin translate`,
//! not with the features this workspace's tests unify), run with modalkit's
//! default `queue_config.backend: sqs` against a real SQS-API server (moto).
//! Its success and failure messages must arrive, byte-identical to what the
//! real modalkit 0.2.0 sends for the same jobs; nothing may be dead-lettered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use modalkit_tests::model::workspace_root;
use modalkit_tests::moto::{Moto, collect_messages, unique_queue};
use modalkit_tests::oracle::oracle;
use modalkit_tests::support::{ServerProcess, build_example, client, post_json, wait_until_ready};
use serde_json::{Value, json};

/// The binary's own account of the features a config needs and has.
fn features_report(binary: &Path, config: &Path, env: &[(&str, &str)]) -> Value {
    let output = Command::new(binary)
        .args(["check", "--features", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("check --features prints JSON")
}

#[tokio::test]
async fn readme_translate_delivers_to_sqs_as_modalkit_does() {
    let binary = build_example("translate");
    let config = workspace_root().join("config/modalkit.yaml");
    let report = features_report(
        &binary,
        &config,
        &[("MODALKIT_APP_SETTINGS__QUEUE_CONFIG__BACKEND", "sqs")],
    );
    assert_eq!(report["needed"], json!(["sqs"]), "{report}");
    for feature in ["sqs", "dynamodb", "webhooks"] {
        assert!(
            report["compiled"]
                .as_array()
                .unwrap()
                .contains(&json!(feature)),
            "the README's translate lacks `{feature}`: {report}"
        );
    }

    let moto = Moto::shared();
    let scratch = tempfile::tempdir().unwrap();
    let dead_letters = scratch.path().join("dead-letters.jsonl");
    let mut env: Vec<(&str, String)> = moto.process_env();
    env.push(("MODALKIT_APP_SETTINGS__QUEUE_CONFIG__BACKEND", "sqs".into()));
    env.push((
        "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__DEAD_LETTER_PATH",
        dead_letters.display().to_string(),
    ));
    let server = ServerProcess::spawn(&binary, &config, &env, scratch.path().join("server.log"));
    let http = client();
    let (success_queue, failure_queue) = (unique_queue("readme-ok"), unique_queue("readme-err"));
    let meta = json!({"z": 1, "a": "é", "nested": {"b": [1, 2.5, true], "a": null}});
    let success_body = json!({"message": {"text": " héllo wörld "}, "success_queue": success_queue, "failure_queue": failure_queue, "meta": meta}).to_string();
    let failure_body = json!({"message": {"text": "   ", "language": "de"}, "success_queue": success_queue, "failure_queue": failure_queue, "meta": {"k": "v"}}).to_string();
    for body in [&success_body, &failure_body] {
        let (status, reply) = post_json(
            &http,
            &format!("{}/predict_async", server.base_url),
            &serde_json::from_str(body).unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{reply}\n{}", server.log_text());
        assert!(reply["job_id"].is_string(), "{reply}");
    }
    let sqs = moto.sqs();
    let limit = Duration::from_secs(30);
    let successes = collect_messages(&sqs, &success_queue, 1, limit).await;
    let failures = collect_messages(&sqs, &failure_queue, 1, limit).await;
    assert_eq!(
        successes.len(),
        1,
        "success queue: {successes:?}\n{}",
        server.log_text()
    );
    assert_eq!(
        failures.len(),
        1,
        "failure queue: {failures:?}\n{}",
        server.log_text()
    );
    assert!(
        !dead_letters.exists(),
        "dead-lettered: {}",
        std::fs::read_to_string(&dead_letters).unwrap_or_default()
    );

    let failure: Value = serde_json::from_str(&failures[0]).unwrap();
    let answer = oracle(&json!({
        "wire": [
            {"name": "success", "kind": "translate_success", "body": success_body, "default_language": "fr"},
            {"name": "failure", "kind": "translate_item_failure", "body": failure_body, "error": failure["error"]},
        ],
        "wire_config": workspace_root().join("tests/fixtures/modalkit-yaml/base.yaml"),
    }));
    for (name, queue, ours) in [
        ("success", &success_queue, &successes[0]),
        ("failure", &failure_queue, &failures[0]),
    ] {
        let theirs = &answer["wire"][name];
        assert_eq!(theirs["queue"], json!(queue), "{answer}");
        assert_eq!(
            theirs["body"].as_str(),
            Some(ours.as_str()),
            "{name} message: modalkit's and ours differ"
        );
    }
}

/// The `embeddings` binary as the README builds it, on
/// `config/retrieval.yaml`: an embedder and a reranker side by side answer
/// TEI's, Cohere's, OpenAI's and modalkit's routes.
#[tokio::test]
async fn readme_embeddings_serves_an_embedder_and_a_reranker_from_config_retrieval_yaml() {
    let models = modalkit_tests::model::family_folder("minilm-reranker");
    let binary = build_example("embeddings");
    let config = workspace_root().join("config/retrieval.yaml");
    let scratch = tempfile::tempdir().unwrap();
    let env = [(
        "MODALKIT_MODEL_SETTINGS__LOCAL_MODEL_REPOSITORY_FOLDER",
        models.parent().unwrap().display().to_string(),
    )];
    let server = ServerProcess::spawn(&binary, &config, &env, scratch.path().join("server.log"));
    let http = client();
    let url = |path: &str| format!("{}{path}", server.base_url);
    let ready = wait_until_ready(&http, &server.base_url, Duration::from_secs(60)).await;
    assert!(ready, "never ready:\n{}", server.log_text());
    let calls = [
        ("/embed", json!({"inputs": ["hello world", "second"]})),
        (
            "/rerank",
            json!({"query": "capital of France", "texts": ["Paris is the capital.", "Bananas."]}),
        ),
        (
            "/v1/rerank",
            json!({"model": "reranker", "query": "capital of France", "documents": ["Paris is the capital.", "Bananas."], "top_n": 1}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "embedder", "input": "hello world"}),
        ),
        (
            "/predict_sync?model_name=reranker",
            json!({"query": "capital of France", "text": "Paris is the capital."}),
        ),
        (
            "/predict_sync?model_name=embedder",
            json!({"text": "hello world", "prompt_name": "query"}),
        ),
    ];
    for (path, body) in calls {
        let (status, reply) = post_json(&http, &url(path), &body).await;
        assert_eq!(status, 200, "{path}: {reply}\n{}", server.log_text());
    }
    let (_, reranked) = post_json(
        &http,
        &url("/v1/rerank"),
        &json!({"model": "reranker", "query": "q", "documents": ["a", "b", "c"], "top_n": 2}),
    )
    .await;
    assert_eq!(
        reranked["results"].as_array().unwrap().len(),
        2,
        "{reranked}"
    );
}

/// The `generate` binary as the README builds it, on `config/generate.yaml`:
/// OpenAI's chat completions stream, `/predict_stream` streams, and a
/// SIGTERM mid-stream lets the stream finish before the process exits 0.
#[tokio::test]
async fn readme_generate_streams_from_config_generate_yaml_and_drains_on_sigterm() {
    let model = modalkit_tests::model::smollm2_folder();
    let binary = build_example("generate");
    let config = workspace_root().join("config/generate.yaml");
    let scratch = tempfile::tempdir().unwrap();
    let env = [(
        "MODALKIT_MODEL_SETTINGS__LOCAL_MODEL_REPOSITORY_FOLDER",
        model.parent().unwrap().display().to_string(),
    )];
    let mut server =
        ServerProcess::spawn(&binary, &config, &env, scratch.path().join("server.log"));
    let http = client();
    let url = |path: &str| format!("{}{path}", server.base_url);
    let ready = wait_until_ready(&http, &server.base_url, Duration::from_secs(60)).await;
    assert!(ready, "never ready:\n{}", server.log_text());

    // The fixture's first chat case: what transformers generated greedily.
    let fixture: Value =
        serde_json::from_str(include_str!("../fixtures/smollm2_greedy.json")).unwrap();
    let case = fixture["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|case| case["kind"] == "chat")
        .unwrap();
    let chat = http
        .post(url("/v1/chat/completions"))
        .json(&json!({"model": "smollm2", "messages": case["messages"],
                      "max_tokens": 32, "temperature": 0, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 200);
    let body = chat.text().await.unwrap();
    let chunks: Vec<&str> = body
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .collect();
    assert_eq!(chunks.last(), Some(&"[DONE]"), "{body}");
    let text: String = chunks[..chunks.len() - 1]
        .iter()
        .map(|chunk| serde_json::from_str::<Value>(chunk).unwrap())
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, case["generated_text"].as_str().unwrap());

    // A stream in flight when SIGTERM comes still ends with its `end` event.
    let mut streaming = http
        .post(url("/predict_stream"))
        .json(&json!({"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(streaming.status(), 200);
    let mut received = String::new();
    while !received.contains("\n\n") {
        received.push_str(std::str::from_utf8(&streaming.chunk().await.unwrap().unwrap()).unwrap());
    }
    server.signal("TERM");
    while let Some(chunk) = streaming.chunk().await.unwrap() {
        received.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let end = received
        .split("\n\n")
        .find_map(|event| event.strip_prefix("event: end\ndata: "))
        .unwrap_or_else(|| panic!("no end event:\n{received}\n{}", server.log_text()));
    let end: Value = serde_json::from_str(end).unwrap();
    assert_eq!(end["status"], "success", "{end}");
    assert_eq!(end["tokens"], 24);
    assert_eq!(
        server.wait_exit(Duration::from_secs(60)),
        Some(0),
        "{}",
        server.log_text()
    );
}
