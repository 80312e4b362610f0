//! The embeddings example serving the real all-MiniLM-L6-v2 weights: every
//! vector matches sentence-transformers' (torch) reference with cosine
//! similarity >= 0.9999, through `/predict_sync` and `/predict_batch`; and a
//! CUDA device asked of a CPU-only build fails start-up clearly; and the
//! OpenAI-compatible route, driven by the real `openai` Python client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use modalkit_examples::bert::{Bert, LoadOptions};
use modalkit_server::ServerOptions;
use modalkit_tests::model::{minilm_folder, workspace_root};
use modalkit_tests::support::{TestServer, client, get_json, post_json, settings_from_yaml};
use serde_json::{Value, json};

struct Reference {
    text: String,
    embedding: Vec<f64>,
}

fn references() -> Vec<Reference> {
    let fixture: Value =
        serde_json::from_str(include_str!("../fixtures/minilm_reference.json")).unwrap();
    assert_eq!(fixture["model"], "sentence-transformers/all-MiniLM-L6-v2");
    fixture["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| Reference {
            text: item["text"].as_str().unwrap().to_owned(),
            embedding: item["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect(),
        })
        .collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// What `/ready` calls the CPU: with the kernels' level where the native
/// encoder runs (AVX2 or better), plain `cpu` where candle's runs.
fn expected_cpu_device() -> String {
    use modalkit::candle::encoder::cpu::isa;
    if isa::avx2() {
        format!("cpu ({}, fp32)", isa::active().min(isa::Isa::Avx512).name())
    } else {
        "cpu".to_owned()
    }
}

fn config(device: &str) -> String {
    let folder = minilm_folder();
    format!(
        "app_settings:\n  app_prefix: emb\n  batch_config: {{max_batch_size: 32, wait_ms: 5}}\nmodel_settings:\n  local_model_repository_folder: '{}'\n  common: {{device: {device}}}\n  model_entries:\n    minilm: {{path: '{}'}}\n",
        folder.parent().unwrap().display(),
        folder.file_name().unwrap().to_str().unwrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_match_sentence_transformers_through_sync_and_batch() {
    let references = references();
    assert!(
        references.iter().any(|r| r.text.is_empty()),
        "the fixture covers the empty string"
    );
    let server = TestServer::builder(settings_from_yaml(&config("cpu")))
        .pipeline::<Bert>()
        .start()
        .await;
    let http = client();

    for reference in &references {
        let (status, body) = post_json(
            &http,
            &server.url("/predict_sync"),
            &json!({"text": reference.text}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "success");
        let embedding = floats(&body["embedding"]);
        assert_eq!(embedding.len(), 384);
        let similarity = cosine(&embedding, &reference.embedding);
        assert!(
            similarity >= 0.9999,
            "sync {:?}: cosine {similarity}",
            &reference.text[..reference.text.len().min(40)]
        );
    }

    let batch: Vec<Value> = references.iter().map(|r| json!({"text": r.text})).collect();
    let (status, body) =
        post_json(&http, &server.url("/predict_batch"), &Value::Array(batch)).await;
    assert_eq!(status, 200, "{body}");
    let results = body.as_array().unwrap();
    assert_eq!(results.len(), references.len());
    for (result, reference) in results.iter().zip(&references) {
        let similarity = cosine(&floats(&result["embedding"]), &reference.embedding);
        assert!(
            similarity >= 0.9999,
            "batch {:?}: cosine {similarity}",
            &reference.text[..reference.text.len().min(40)]
        );
    }

    let ready: Value = get_json(&http, &server.url("/ready")).await;
    assert_eq!(ready["device"], expected_cpu_device());
    let (status, body) = post_json(
        &http,
        &server.url("/predict_sync"),
        &json!({"text": "x".repeat(20_001)}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
}

#[tokio::test]
async fn device_cuda_on_a_cpu_only_build_fails_start_up_clearly() {
    if candle_core::utils::cuda_is_available() {
        // Built with --features cuda: this check belongs to CPU-only builds.
        let folder = minilm_folder();
        let loaded = Bert::load_folder(&folder, candle_core::Device::Cpu, LoadOptions::default());
        assert!(loaded.is_ok());
        return;
    }
    for (device, named) in [("cuda", "cuda:0"), ("cuda:1", "cuda:1")] {
        let error = match modalkit_server::Server::<Bert>::build(
            settings_from_yaml(&config(device)),
            ServerOptions::default(),
        )
        .await
        {
            Ok(_) => panic!("device {device} must not start on a CPU-only build"),
            Err(error) => error.to_string(),
        };
        assert!(
            error.contains(&format!("device '{named}' cannot be used")),
            "{error}"
        );
        assert!(error.contains("without the `cuda` feature"), "{error}");
    }
    // `auto` falls back to the CPU.
    let server = TestServer::builder(settings_from_yaml(&config("auto")))
        .pipeline::<Bert>()
        .start()
        .await;
    let ready: Value = client()
        .get(server.url("/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["models"]["minilm"]["device"], expected_cpu_device());
    assert!(
        workspace_root()
            .join("models/all-MiniLM-L6-v2/.complete")
            .is_file()
    );
}

/// Runs test `name` of this binary again in a child process with the
/// kernels capped at `level` (the level is chosen once per process) and
/// returns its output; fails if the child fails.
fn run_capped(name: &str, level: modalkit::candle::encoder::cpu::isa::Isa) -> String {
    use modalkit::candle::encoder::cpu::isa;
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture"])
        .env(isa::ISA_VARIABLE, level.name())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&child.stdout).into_owned();
    assert!(
        child.status.success(),
        "{level} run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&child.stderr)
    );
    stdout
}

/// Marks the output of a child run of `native_encoder_matches_candle_encoder`.
const CHILD_REPORT: &str = "native-vs-candle isa=";

#[test]
fn native_encoder_matches_candle_encoder() {
    use modalkit::candle::encoder::cpu::isa;
    use modalkit_examples::bert::Engine;

    let folder = minilm_folder();
    let load = |engine| {
        Bert::load_folder_with(
            &folder,
            candle_core::Device::Cpu,
            LoadOptions::default(),
            engine,
        )
        .unwrap()
    };
    let (native, candle) = (load(Engine::Native), load(Engine::Candle));
    // Mixed lengths in one batch (the native encoder packs them without
    // padding), the fixture's texts (empty, unicode, > 256 tokens) and repeats.
    let references = references();
    let mut texts: Vec<String> = references.iter().map(|r| r.text.clone()).collect();
    texts.push("word ".repeat(60));
    texts.push("a".into());
    texts.extend(texts.clone());
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids = native.token_ids(&texts).unwrap();
    assert!(
        ids.iter().any(|i| i.len() == 256),
        "a text must hit the 256-token cap"
    );
    let fast = native.embed_ids(&ids).unwrap();
    let reference = candle.embed_ids(&ids).unwrap();
    for ((text, a), b) in texts.iter().zip(&fast).zip(&reference) {
        assert_eq!(a.len(), 384);
        let worst = max_difference(a, b);
        assert!(
            worst < 2e-5,
            "{} kernels, {text:?}: native and candle differ by {worst}",
            isa::describe()
        );
    }
    // And sentence-transformers' own vectors, on these kernels.
    for (item, vector) in references.iter().zip(&fast) {
        let vector: Vec<f64> = vector.iter().map(|&x| f64::from(x)).collect();
        let similarity = cosine(&vector, &item.embedding);
        assert!(
            similarity >= 0.9999,
            "{} kernels, {:?}: cosine {similarity} to sentence-transformers",
            isa::describe(),
            item.text
        );
    }
    // One at a time gives the same vectors as in a batch.
    let alone = native.embed_ids(&ids[..1]).unwrap();
    let worst = max_difference(&alone[0], &fast[0]);
    assert!(worst < 1e-6, "batched and alone differ by {worst}");
    // No tokens at all (never from the tokenizer, but the API allows it).
    assert!(native.embed_ids(&[]).unwrap().is_empty());
    let empty = native.embed_ids(&[vec![], vec![]]).unwrap();
    assert!(
        empty
            .iter()
            .all(|v| v.len() == 384 && v.iter().all(|&x| x == 0.0))
    );
    println!("{CHILD_REPORT}{}", isa::describe());

    // Run this test again in a child process for every lower level this
    // CPU can run (the level is chosen once per process), forced with
    // MODALKIT_CPU_ISA: each ISA path is checked on every machine that has it.
    if std::env::var_os(isa::ISA_VARIABLE).is_some() {
        return;
    }
    // The levels above AVX-512 run its fp32 kernels.
    for lower in isa::Isa::ALL
        .into_iter()
        .filter(|&level| level < isa::active() && level <= isa::Isa::Avx512)
    {
        let stdout = run_capped("native_encoder_matches_candle_encoder", lower);
        assert!(
            stdout.contains(&format!("{CHILD_REPORT}{lower}\n")),
            "the child did not run the {lower} kernels:\n{stdout}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_gets_the_same_vectors_from_v1_embeddings() {
    let server = TestServer::builder(settings_from_yaml(&config("cpu")))
        .pipeline::<Bert>()
        .routes(modalkit::openai::routes::<Bert>())
        .start()
        .await;
    let http = client();
    let (_, sync) = post_json(
        &http,
        &server.url("/predict_sync"),
        &json!({"text": "hello world"}),
    )
    .await;
    let expected: Vec<f32> = floats(&sync["embedding"])
        .iter()
        .map(|x| *x as f32)
        .collect();

    let args = vec![server.base_url.clone(), "minilm".into()];
    let seen = modalkit_tests::support::run_client("openai_client.py", args).await;

    let vector = |v: &Value| -> Vec<f32> { floats(v).iter().map(|x| *x as f32).collect() };
    // base64 (the client's default), decoded by the client: the same floats.
    let default = &seen["default"];
    assert_eq!(default["object"], "list");
    assert_eq!(default["model"], "minilm");
    assert_eq!(
        max_difference(&vector(&default["data"][0]["embedding"]), &expected),
        0.0
    );
    assert!(
        default["usage"]["prompt_tokens"].as_u64().unwrap() >= 2,
        "{}",
        default["usage"]
    );
    // float, two inputs through the batcher, in order.
    let data = seen["floats"]["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(
        (data[0]["index"].as_u64(), data[1]["index"].as_u64()),
        (Some(0), Some(1))
    );
    assert!(max_difference(&vector(&data[0]["embedding"]), &expected) < 1e-6);
    assert!(
        cosine(
            &floats(&data[0]["embedding"]),
            &floats(&data[1]["embedding"])
        ) < 0.9
    );
    let usage = &seen["floats"]["usage"];
    assert_eq!(usage["prompt_tokens"], usage["total_tokens"]);
    // dimensions: the first 128 values, re-normalised.
    let short = vector(&seen["short"]["data"][0]["embedding"]);
    assert_eq!(short.len(), 128);
    let norm = short.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    let scale = expected[..128].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((short[5] - expected[5] / scale).abs() < 1e-6);
    assert_eq!(seen["models"], json!(["minilm"]));
    // OpenAI's error shape for a bad request.
    let refused = &seen["refused"];
    assert_eq!(refused["status"], 400, "{refused}");
    assert_eq!(refused["body"]["param"], "dimensions", "{refused}");
    assert_eq!(
        refused["body"]["type"], "invalid_request_error",
        "{refused}"
    );
}

/// Marks the output of a run of `bf16_stays_within_its_quality_bounds`.
const BF16_REPORT: &str = "bf16 quality: kernels=";

#[test]
fn bf16_stays_within_its_quality_bounds() {
    use modalkit::candle::encoder::cpu::{isa, precision::Precision};
    use modalkit_examples::bert::Engine;

    let folder = minilm_folder();
    let load = |precision| {
        let options = LoadOptions {
            max_seq_length: None,
            precision,
        };
        Bert::load_folder_with(&folder, candle_core::Device::Cpu, options, Engine::Native).unwrap()
    };
    let (fp32, bf16) = (load(Precision::Fp32), load(Precision::Bf16));
    let to_f64 = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();

    // sentence-transformers' own vectors.
    let references = references();
    let texts: Vec<&str> = references.iter().map(|r| r.text.as_str()).collect();
    let vectors = bf16.embed_ids(&bf16.token_ids(&texts).unwrap()).unwrap();
    let worst_reference = references
        .iter()
        .zip(&vectors)
        .map(|(r, v)| cosine(&to_f64(v), &r.embedding))
        .fold(1.0, f64::min);

    // Every other text of the benchmark's mixed corpus (queries, passages,
    // texts past the 256-token limit; half keeps the test short): every
    // vector against fp32's, and retrieval: each query's 10 nearest
    // documents at bf16 against those at fp32.
    let corpus: Vec<(String, String)> = include_str!("../../bench/corpus/mixed.jsonl")
        .lines()
        .step_by(2)
        .map(|line| {
            let item: Value = serde_json::from_str(line).unwrap();
            (
                item["kind"].as_str().unwrap().to_owned(),
                item["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let texts: Vec<&str> = corpus.iter().map(|(_, text)| text.as_str()).collect();
    let ids = fp32.token_ids(&texts).unwrap();
    let (exact, reduced) = (fp32.embed_ids(&ids).unwrap(), bf16.embed_ids(&ids).unwrap());
    let worst_fp32 = exact
        .iter()
        .zip(&reduced)
        .map(|(a, b)| cosine(&to_f64(a), &to_f64(b)))
        .fold(1.0, f64::min);
    let queries: Vec<usize> = (0..corpus.len())
        .filter(|&i| corpus[i].0 == "query")
        .collect();
    let documents: Vec<usize> = (0..corpus.len())
        .filter(|&i| corpus[i].0 != "query")
        .collect();
    let nearest = |vectors: &[Vec<f32>], query: usize| -> Vec<usize> {
        let mut scored: Vec<(f32, usize)> = documents
            .iter()
            .map(|&d| {
                (
                    vectors[query]
                        .iter()
                        .zip(&vectors[d])
                        .map(|(a, b)| a * b)
                        .sum(),
                    d,
                )
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.into_iter().take(10).map(|(_, d)| d).collect()
    };
    let shared: usize = queries
        .iter()
        .map(|&q| {
            let (a, b) = (nearest(&exact, q), nearest(&reduced, q));
            a.iter().filter(|d| b.contains(d)).count()
        })
        .sum();
    let agreement = shared as f64 / (queries.len() * 10) as f64;
    let kernels = modalkit::InferencePipeline::device(&bf16);
    let report = format!(
        "{BF16_REPORT}{} ({}): min cosine to fp32 {worst_fp32:.6} over {} corpus texts, to sentence-transformers {worst_reference:.6}; top-10 neighbours of {} queries among {} documents agree with fp32 in {:.1}%",
        bf16_kernels(),
        kernels,
        corpus.len(),
        queries.len(),
        documents.len(),
        100.0 * agreement
    );
    println!("{report}");
    assert!(worst_fp32 >= 0.9999, "{report}");
    assert!(worst_reference >= 0.9999, "{report}");
    assert!(agreement >= 0.95, "{report}");

    // Again in a child process for each lower bf16 path this CPU can run
    // (the level is chosen once per process): AVX512-BF16 under AMX, and
    // the rounded values on the AVX-512 fp32 kernels (the path of CPUs
    // without BF16). The fp32 kernels of each level are checked by
    // `native_encoder_matches_candle_encoder`.
    if std::env::var_os(isa::ISA_VARIABLE).is_some() || !isa::avx512_bf16() {
        modalkit_tests::support::write_report("bf16-quality.txt", &report);
        return;
    }
    let mut reports = vec![report];
    for lower in [isa::Isa::Avx512Bf16, isa::Isa::Avx512]
        .into_iter()
        .filter(|&level| level < isa::active())
    {
        let stdout = run_capped("bf16_stays_within_its_quality_bounds", lower);
        let line = stdout
            .lines()
            .find(|line| line.starts_with(BF16_REPORT))
            .unwrap_or_else(|| panic!("no report from the {lower} run:\n{stdout}"));
        assert!(
            line.starts_with(&format!("{BF16_REPORT}{lower} ")),
            "the {lower} run did not run those kernels: {line}"
        );
        reports.push(line.to_owned());
    }
    modalkit_tests::support::write_report("bf16-quality.txt", &reports.join("\n"));
}

/// The kernels a bf16 model runs on here.
fn bf16_kernels() -> &'static str {
    use modalkit::candle::encoder::cpu::isa;
    if isa::avx512_bf16() {
        isa::active().name()
    } else {
        isa::active().min(isa::Isa::Avx512).name()
    }
}
