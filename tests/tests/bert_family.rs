//! The BERT family beyond MiniLM's mean pooling, against sentence-
//! transformers on the very same files (tests/fixtures/bert_family.json,
//! made by scripts/make-reference.py on the models scripts/make-models.py
//! assembles): CLS pooling with prompts, max pooling without `Normalize`,
//! a cross-encoder and a classifier, on both encoders. Then TEI's routes
//! and the Cohere/Jina rerank route with an embedder, a reranker and a
//! classifier served side by side, and the real huggingface_hub and cohere
//! clients against them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use candle_core::Device;
use modalkit_examples::bert::{Bert, BertInput, Engine, LoadOptions};
use modalkit_tests::model::family_folder;
use modalkit_tests::support::{
    TestServer, client, get_json, post_json, settings_from_yaml, wait_until_ready,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn fixture() -> Value {
    serde_json::from_str(include_str!("../fixtures/bert_family.json")).unwrap()
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b)).max(1e-30)
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// The folder's files are the bytes the reference was computed on.
fn check_files(name: &str, expected: &Value) -> std::path::PathBuf {
    let folder = family_folder(name);
    for (file, hash) in expected.as_object().unwrap() {
        let bytes = std::fs::read(folder.join(file)).unwrap();
        let digest: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            &digest,
            hash.as_str().unwrap(),
            "{name}/{file} differs from the file the reference was computed on: rerun scripts/make-models.py, or scripts/make-reference.py if the assembly changed"
        );
    }
    folder
}

fn engines() -> Vec<Engine> {
    let mut engines = vec![Engine::Candle];
    if modalkit::candle::encoder::cpu::isa::avx2() {
        engines.push(Engine::Native);
    }
    engines
}

fn load(folder: &Path, engine: Engine) -> Bert {
    Bert::load_folder_with(folder, Device::Cpu, LoadOptions::default(), engine)
        .unwrap_or_else(|err| panic!("{}: {err}", folder.display()))
}

/// Runs inputs through the pipeline's three stages, as a batch.
fn run(pipeline: &Bert, inputs: &[BertInput]) -> Vec<modalkit_examples::bert::BertOutput> {
    use modalkit::InferencePipeline;
    let prepared = pipeline.preprocess(inputs).unwrap();
    let predicted = pipeline.predict(inputs, prepared).unwrap();
    pipeline
        .postprocess(inputs, predicted)
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

#[test]
fn every_pooling_and_head_matches_sentence_transformers_on_both_encoders() {
    let reference = fixture();
    let texts: Vec<String> = reference["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    let pairs: Vec<(String, String)> = reference["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let models = &reference["models"];
    let mut worst_cosine = 1.0f64;
    let mut worst_logit = 0.0f64;
    for engine in engines() {
        // CLS pooling + Normalize, with the folder's default prompt and a named one.
        let model = &models["minilm-cls-prompts"];
        let cls = load(&check_files("minilm-cls-prompts", &model["files"]), engine);
        for (prompt, key) in [(None, "default_prompt"), (Some("query"), "query_prompt")] {
            let inputs: Vec<BertInput> = texts
                .iter()
                .map(|t| BertInput {
                    prompt_name: prompt.map(str::to_owned),
                    ..BertInput::text(t.clone())
                })
                .collect();
            for (i, output) in run(&cls, &inputs).iter().enumerate() {
                let got = widen(output.embedding.as_ref().unwrap());
                let want = floats(&model[key][i]);
                let similarity = cosine(&got, &want);
                worst_cosine = worst_cosine.min(similarity);
                assert!(
                    similarity >= 0.9999,
                    "{engine:?} cls {key} text {i}: cosine {similarity}"
                );
                assert!((norm(&got) - 1.0).abs() < 1e-4, "normalized");
            }
        }
        // The prompt changes the vector: it is really prepended.
        let plain = run(&cls, &[BertInput::text("A man is eating food.")]);
        let query = run(
            &cls,
            &[BertInput {
                prompt_name: Some("query".into()),
                ..BertInput::text("A man is eating food.")
            }],
        );
        assert!(
            cosine(
                &widen(plain[0].embedding.as_ref().unwrap()),
                &widen(query[0].embedding.as_ref().unwrap())
            ) < 0.999
        );

        // Max pooling, no Normalize, max_seq_length 128 from the folder.
        let model = &models["minilm-max"];
        let max = load(&check_files("minilm-max", &model["files"]), engine);
        assert_eq!(max.max_seq_length(), 128);
        let inputs: Vec<BertInput> = texts.iter().map(|t| BertInput::text(t.clone())).collect();
        for (i, output) in run(&max, &inputs).iter().enumerate() {
            let got = widen(output.embedding.as_ref().unwrap());
            let want = floats(&model["embeddings"][i]);
            let similarity = cosine(&got, &want);
            worst_cosine = worst_cosine.min(similarity);
            assert!(
                similarity >= 0.9999,
                "{engine:?} max text {i}: cosine {similarity}"
            );
            let scale = norm(&got) / norm(&want);
            assert!(
                (scale - 1.0).abs() < 1e-3,
                "{engine:?} max text {i}: not normalized like the reference ({scale})"
            );
        }

        // The cross-encoder: raw logits within 1e-4 of CrossEncoder.predict's.
        let model = &models["minilm-reranker"];
        let reranker = load(&check_files("minilm-reranker", &model["files"]), engine);
        let inputs: Vec<BertInput> = pairs
            .iter()
            .map(|(q, t)| BertInput {
                query: Some(q.clone()),
                ..BertInput::text(t.clone())
            })
            .collect();
        let expected = floats(&model["logits"]);
        for (i, output) in run(&reranker, &inputs).iter().enumerate() {
            let logit = f64::from(output.logits[0]);
            worst_logit = worst_logit.max((logit - expected[i]).abs());
            assert!(
                (logit - expected[i]).abs() <= 1e-4,
                "{engine:?} pair {i}: logit {logit}, sentence-transformers {}",
                expected[i]
            );
            let sigmoid = 1.0 / (1.0 + (-expected[i]).exp());
            assert!((f64::from(output.score.unwrap()) - sigmoid).abs() <= 1e-4);
        }

        // The classifier: logits per label, labels from id2label.
        let model = &models["minilm-classifier"];
        let classifier = load(&check_files("minilm-classifier", &model["files"]), engine);
        for (i, output) in run(&classifier, &inputs_of(&texts)).iter().enumerate() {
            let expected = floats(&model["logits"][i]);
            for (got, want) in output.logits.iter().zip(&expected) {
                worst_logit = worst_logit.max((f64::from(*got) - want).abs());
                assert!(
                    (f64::from(*got) - want).abs() <= 1e-4,
                    "{engine:?} text {i}: {got} vs {want}"
                );
            }
            let best = expected
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            assert_eq!(
                output.label.as_deref(),
                model["id2label"][best.to_string()].as_str()
            );
            let total: f32 = output
                .labels
                .as_ref()
                .unwrap()
                .iter()
                .map(|l| l.score)
                .sum();
            assert!((total - 1.0).abs() < 1e-5);
        }
    }
    modalkit_tests::support::write_report(
        "bert-family.txt",
        &format!(
            "BERT family vs sentence-transformers: worst cosine {worst_cosine:.7}, worst logit difference {worst_logit:.2e}\n"
        ),
    );
}

fn inputs_of(texts: &[String]) -> Vec<BertInput> {
    texts.iter().map(|t| BertInput::text(t.clone())).collect()
}

#[test]
fn folders_it_cannot_serve_are_refused_at_load_naming_what() {
    let source = family_folder("minilm-cls-prompts");
    let cases: [(&str, &str, &str, &str); 4] = [
        (
            "1_Pooling/config.json",
            r#"{"word_embedding_dimension": 384, "pooling_mode_weightedmean_tokens": true}"#,
            "pooling_mode_weightedmean_tokens is not supported",
            "weighted mean pooling",
        ),
        (
            "modules.json",
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},{"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},{"idx":2,"name":"2","path":"2_Dense","type":"sentence_transformers.models.Dense"}]"#,
            "[\"Dense\"] not supported",
            "a Dense module",
        ),
        (
            "config_sentence_transformers.json",
            r#"{"prompts": {"query": "query: "}, "default_prompt_name": "passage"}"#,
            "default_prompt_name 'passage' is not one of the prompts",
            "a default prompt that does not exist",
        ),
        (
            "1_Pooling/config.json",
            r#"{"pooling_mode_cls_token": true, "include_prompt": false}"#,
            "include_prompt false is not supported",
            "prompts excluded from pooling",
        ),
    ];
    for (file, content, message, what) in cases {
        let dir = tempfile::tempdir().unwrap();
        copy_folder(&source, dir.path());
        std::fs::write(dir.path().join(file), content).unwrap();
        let error = Bert::load_folder(dir.path(), Device::Cpu, LoadOptions::default())
            .err()
            .unwrap_or_else(|| panic!("{what} was loaded"))
            .to_string();
        assert!(error.contains(message), "{what}: {error}");
    }
    let dir = tempfile::tempdir().unwrap();
    copy_folder(&source, dir.path());
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.replace(
            "\"model_type\": \"bert\"",
            "\"model_type\": \"xlm-roberta\"",
        ),
    )
    .unwrap();
    let error = Bert::load_folder(dir.path(), Device::Cpu, LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("model_type xlm-roberta"), "{error}");
}

fn copy_folder(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_folder(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// An embedder (CLS, prompts), a max-pooled model, a reranker and a
/// classifier ("sentiment") in one config: four entries, four batchers;
/// the embedder is the default (first by name) model.
fn side_by_side_config(max_items: usize) -> String {
    let models = family_folder("minilm-cls-prompts");
    format!(
        "app_settings:
  app_prefix: retrieval
  batch_config: {{max_batch_size: 16, wait_ms: 2, max_batch_tokens: 1024}}
  server_config: {{max_batch_request_items: {max_items}}}
model_settings:
  local_model_repository_folder: '{}'
  common: {{device: cpu}}
  model_entries:
    embedder: {{path: minilm-cls-prompts}}
    maxpool: {{path: minilm-max}}
    reranker: {{path: minilm-reranker}}
    sentiment: {{path: minilm-classifier}}
",
        models.parent().unwrap().display()
    )
}

async fn start_side_by_side() -> TestServer {
    TestServer::builder(settings_from_yaml(&side_by_side_config(8)))
        .pipeline::<Bert>()
        .routes(modalkit::tei::routes::<Bert>().merge(modalkit::openai::routes::<Bert>()))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tei_routes_serve_an_embedder_a_reranker_and_a_classifier_side_by_side() {
    let reference = fixture();
    let models = &reference["models"];
    let server = start_side_by_side().await;
    let http = client();
    let url = |path: &str| server.url(path);

    // /embed: always nested, the default prompt, normalized; the embedder
    // is the first model (by name) that embeds.
    let texts = reference["texts"].as_array().unwrap();
    let (status, body) = post_json(&http, &url("/embed"), &json!({"inputs": texts[0]})).await;
    assert_eq!(status, 200, "{body}");
    let vectors = body.as_array().unwrap();
    assert_eq!(vectors.len(), 1);
    let similarity = cosine(
        &floats(&vectors[0]),
        &floats(&models["minilm-cls-prompts"]["default_prompt"][0]),
    );
    assert!(similarity >= 0.9999, "{similarity}");
    let batch: Vec<&Value> = texts.iter().take(4).collect();
    let (status, body) = post_json(
        &http,
        &url("/embed"),
        &json!({"inputs": batch, "prompt_name": "query"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for (i, vector) in body.as_array().unwrap().iter().enumerate() {
        let want = floats(&models["minilm-cls-prompts"]["query_prompt"][i]);
        assert!(
            cosine(&floats(vector), &want) >= 0.9999,
            "query prompt text {i}"
        );
    }
    // The max-pooled model by name, raw and normalized on request.
    let (_, raw) = post_json(
        &http,
        &url("/embed?model_name=maxpool"),
        &json!({"inputs": texts[1], "normalize": false}),
    )
    .await;
    let want = floats(&models["minilm-max"]["embeddings"][1]);
    let raw = floats(&raw[0]);
    assert!(cosine(&raw, &want) >= 0.9999 && (norm(&raw) / norm(&want) - 1.0).abs() < 1e-3);
    let (_, unit) = post_json(
        &http,
        &url("/embed?model_name=maxpool"),
        &json!({"inputs": texts[1]}),
    )
    .await;
    assert!(
        (norm(&floats(&unit[0])) - 1.0).abs() < 1e-4,
        "TEI normalizes by default"
    );
    // dimensions: cut, then normalized.
    let (status, short) = post_json(
        &http,
        &url("/embed"),
        &json!({"inputs": "hello", "dimensions": 64}),
    )
    .await;
    assert_eq!(status, 200, "{short}");
    assert_eq!(short[0].as_array().unwrap().len(), 64);
    assert!((norm(&floats(&short[0])) - 1.0).abs() < 1e-4);

    // /rerank: every text, best first, sigmoid scores unless raw.
    let pairs = reference["pairs"].as_array().unwrap();
    let logits = floats(&models["minilm-reranker"]["logits"]);
    let query = pairs[0][0].as_str().unwrap();
    let candidates: Vec<&str> = pairs[..2].iter().map(|p| p[1].as_str().unwrap()).collect();
    let (status, ranked) = post_json(
        &http,
        &url("/rerank"),
        &json!({"query": query, "texts": candidates, "raw_scores": true, "return_text": true}),
    )
    .await;
    assert_eq!(status, 200, "{ranked}");
    let ranked = ranked.as_array().unwrap();
    assert_eq!(ranked.len(), 2);
    assert!(ranked[0]["score"].as_f64().unwrap() >= ranked[1]["score"].as_f64().unwrap());
    for rank in ranked {
        let index = rank["index"].as_u64().unwrap() as usize;
        assert!((rank["score"].as_f64().unwrap() - logits[index]).abs() <= 1e-4);
        assert_eq!(rank["text"], candidates[index]);
    }
    let (_, plain) = post_json(
        &http,
        &url("/rerank"),
        &json!({"query": query, "texts": candidates}),
    )
    .await;
    for rank in plain.as_array().unwrap() {
        let index = rank["index"].as_u64().unwrap() as usize;
        let sigmoid = 1.0 / (1.0 + (-logits[index]).exp());
        assert!((rank["score"].as_f64().unwrap() - sigmoid).abs() <= 1e-4);
        assert!(rank.get("text").is_none(), "no text unless asked");
    }

    // The Cohere/Jina shape: top_n, documents as strings or objects.
    let (status, cohere) = post_json(
        &http,
        &url("/v1/rerank"),
        &json!({"model": "reranker", "query": query, "documents": [candidates[0], {"text": candidates[1]}], "top_n": 1, "return_documents": true}),
    )
    .await;
    assert_eq!(status, 200, "{cohere}");
    assert_eq!(cohere["model"], "reranker");
    let results = cohere["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "top_n");
    let best = if logits[0] >= logits[1] { 0 } else { 1 };
    assert_eq!(results[0]["index"], best);
    assert_eq!(results[0]["document"]["text"], candidates[best]);
    assert!(cohere["usage"]["total_tokens"].as_u64().unwrap() > 10);

    // /predict: one text, one pair, a batch; softmax over id2label.
    let classifier_logits = &models["minilm-classifier"]["logits"];
    let (status, one) = post_json(&http, &url("/predict"), &json!({"inputs": texts[1]})).await;
    assert_eq!(status, 200, "{one}");
    let one = one.as_array().unwrap();
    assert_eq!(one.len(), 3, "every label");
    let expected = softmax(&floats(&classifier_logits[1]));
    for label in one {
        let index = ["negative", "neutral", "positive"]
            .iter()
            .position(|l| label["label"] == *l)
            .unwrap();
        assert!((label["score"].as_f64().unwrap() - expected[index]).abs() < 1e-4);
    }
    assert!(
        one[0]["score"].as_f64() >= one[1]["score"].as_f64(),
        "best first"
    );
    let (status, batch) = post_json(
        &http,
        &url("/predict"),
        &json!({"inputs": [[texts[0]], [texts[1]], ["first text", "second text"]], "raw_scores": true}),
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch.as_array().unwrap().len(), 3);
    let raw_first: Vec<f64> = batch[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["score"].as_f64().unwrap())
        .collect();
    let mut want = floats(&classifier_logits[0]);
    want.sort_by(|a, b| b.total_cmp(a));
    for (got, want) in raw_first.iter().zip(&want) {
        assert!((got - want).abs() <= 1e-4, "raw scores are the logits");
    }

    // /tokenize: byte offsets into the text (prompt included), specials null.
    let (status, tokens) =
        post_json(&http, &url("/tokenize"), &json!({"inputs": "Héllo world"})).await;
    assert_eq!(status, 200, "{tokens}");
    let tokens = tokens[0].as_array().unwrap();
    assert_eq!(
        tokens[0],
        json!({"id": 101, "text": "[CLS]", "special": true, "start": null, "stop": null})
    );
    let prompted = "passage: Héllo world";
    for token in &tokens[1..tokens.len() - 1] {
        let (start, stop) = (
            token["start"].as_u64().unwrap() as usize,
            token["stop"].as_u64().unwrap() as usize,
        );
        assert_eq!(token["text"], prompted[start..stop], "{token}");
        assert_eq!(token["special"], false);
    }
    assert!(
        tokens
            .iter()
            .any(|t| t["text"] == "Héllo" || t["text"] == "H"),
        "{tokens:?}"
    );

    // /info, per model.
    let info = get_json(&http, &url("/info?model_name=sentiment")).await;
    assert_eq!(
        info["model_type"]["classifier"]["id2label"]["2"],
        "positive"
    );
    let info = get_json(&http, &url("/info")).await;
    assert_eq!(
        info["served_model_name"], "embedder",
        "the first model by name"
    );
    assert_eq!(info["model_type"], json!({"embedding": {"pooling": "cls"}}));
    assert_eq!(info["max_input_length"], 256);
    assert_eq!(info["model_id"], "minilm-cls-prompts");
    assert_eq!(info["max_client_batch_size"], 8);
    let info = get_json(&http, &url("/info?model_name=reranker")).await;
    assert_eq!(info["model_type"]["reranker"]["id2label"]["0"], "LABEL_0");
    assert_eq!(info["max_input_length"], 512);

    // POST / dispatches on the model's kind.
    let (status, root) = post_json(
        &http,
        &url("/?model_name=embedder"),
        &json!({"inputs": texts[0]}),
    )
    .await;
    assert_eq!(status, 200, "{root}");
    assert_eq!(root[0].as_array().unwrap().len(), 384);
    let (_, root) = post_json(
        &http,
        &url("/?model_name=reranker"),
        &json!({"query": "q", "texts": ["a", "b"]}),
    )
    .await;
    assert_eq!(root.as_array().unwrap().len(), 2);

    // modalkit's own routes and OpenAI's keep working per entry.
    let (status, sync) = post_json(
        &http,
        &url("/predict_sync?model_name=reranker"),
        &json!({"query": query, "text": candidates[0]}),
    )
    .await;
    assert_eq!(status, 200, "{sync}");
    let sigmoid = 1.0 / (1.0 + (-logits[0]).exp());
    assert!(
        (sync["score"].as_f64().unwrap() - sigmoid).abs() <= 1e-4,
        "{sync}"
    );
    let (status, sync) = post_json(
        &http,
        &url("/predict_sync?model_name=sentiment"),
        &json!({"text": texts[1]}),
    )
    .await;
    assert_eq!(status, 200, "{sync}");
    assert_eq!(sync["label"], one[0]["label"]);
    let (status, openai) = post_json(
        &http,
        &url("/v1/embeddings"),
        &json!({"model": "embedder", "input": texts[0], "encoding_format": "float"}),
    )
    .await;
    assert_eq!(status, 200, "{openai}");
    assert!(
        cosine(
            &floats(&openai["data"][0]["embedding"]),
            &floats(&vectors[0])
        ) > 0.999999
    );

    // TEI's statuses: 400 empty, 413 too many, 422 invalid, 424 wrong model.
    let expect = |status: u16, body: &Value, want: u16, error_type: &str, words: &str| {
        assert_eq!(status, want, "{body}");
        assert_eq!(body["error_type"], error_type, "{body}");
        assert!(body["error"].as_str().unwrap().contains(words), "{body}");
    };
    let (s, b) = post_json(&http, &url("/embed"), &json!({"inputs": []})).await;
    expect(s, &b, 400, "Empty", "cannot be empty");
    let (s, b) = post_json(&http, &url("/rerank"), &json!({"query": "q", "texts": []})).await;
    expect(s, &b, 400, "Empty", "`texts` cannot be empty");
    let (s, b) = post_json(&http, &url("/embed"), &json!({"inputs": vec!["a"; 9]})).await;
    expect(
        s,
        &b,
        413,
        "Validation",
        "batch size 9 > maximum allowed batch size 8",
    );
    let long = "word ".repeat(400);
    let (s, b) = post_json(
        &http,
        &url("/embed"),
        &json!({"inputs": long, "truncate": false}),
    )
    .await;
    expect(s, &b, 422, "Validation", "at most 256 tokens");
    let (s, _) = post_json(&http, &url("/embed"), &json!({"inputs": long})).await;
    assert_eq!(s, 200, "truncated by default, as TEI's --auto-truncate");
    let (s, b) = post_json(
        &http,
        &url("/embed"),
        &json!({"inputs": "x", "prompt_name": "nope"}),
    )
    .await;
    expect(
        s,
        &b,
        422,
        "Validation",
        "not one of this model's prompts: passage, query",
    );
    let (s, b) = post_json(
        &http,
        &url("/rerank?model_name=embedder"),
        &json!({"query": "q", "texts": ["a"]}),
    )
    .await;
    expect(s, &b, 424, "Backend", "is not a re-ranker model");
    let (s, b) = post_json(&http, &url("/embed"), &json!({"inputs": [1, 2, 3]})).await;
    expect(s, &b, 422, "Validation", "token ids are not supported");
    let (s, b) = post_json(&http, &url("/predict"), &json!({"inputs": ["a", "b", "c"]})).await;
    expect(s, &b, 422, "Validation", "`inputs` must be");
    let (s, b) = post_json(
        &http,
        &url("/embed"),
        &json!({"inputs": "x", "truncation_direction": "left"}),
    )
    .await;
    expect(s, &b, 422, "Validation", "truncation_direction 'left'");
    let (s, b) = post_json(
        &http,
        &url("/predict_sync?model_name=reranker"),
        &json!({"text": "no query"}),
    )
    .await;
    assert_eq!(s, 422, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("query is required"),
        "{b}"
    );
    let (s, b) = post_json(
        &http,
        &url("/predict_sync?model_name=embedder"),
        &json!({"text": "t", "query": "q"}),
    )
    .await;
    assert_eq!(s, 422, "{b}");
}

fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huggingface_hub_and_cohere_clients_work_unchanged() {
    let reference = fixture();
    let models = &reference["models"];
    let server = start_side_by_side().await;
    let http = client();
    let args = vec![
        server.base_url.clone(),
        "reranker".into(),
        "sentiment".into(),
    ];
    let seen = modalkit_tests::support::run_client("tei_clients.py", args).await;

    // feature_extraction posts to the URL itself: POST / on the default
    // (first) model, the embedder.
    let cls = &models["minilm-cls-prompts"];
    assert_eq!(
        seen["one"].as_array().unwrap().len(),
        1,
        "TEI's nested shape"
    );
    assert!(cosine(&floats(&seen["one"][0]), &floats(&cls["default_prompt"][0])) >= 0.9999);
    assert!(
        cosine(
            &floats(&seen["many"][1]),
            &floats(&cls["default_prompt"][2])
        ) >= 0.9999
    );
    assert!(cosine(&floats(&seen["query"][0]), &floats(&cls["query_prompt"][0])) >= 0.9999);
    let raw = floats(&seen["raw"][0]);
    assert!(
        (norm(&raw) - 1.0).abs() > 1e-3,
        "normalize=False reached the server"
    );

    let (_, predicted) = post_json(
        &http,
        &server.url("/predict"),
        &json!({"inputs": reference["texts"][1]}),
    )
    .await;
    assert_eq!(seen["classification"]["label"], predicted[0]["label"]);
    assert!(
        (seen["classification"]["score"].as_f64().unwrap()
            - predicted[0]["score"].as_f64().unwrap())
        .abs()
            < 1e-6
    );

    // Cohere: v2 with top_n, v1 with documents; relevance is the sigmoid of the logit.
    let documents = [
        "Berlin has a population of 3,520,031 registered inhabitants.",
        "New York City is famous for the Metropolitan Museum of Art.",
        "The weather in Lisbon is mild in winter.",
    ];
    let (_, ranked) = post_json(
        &http,
        &server.url("/rerank"),
        &json!({"query": "How many people live in Berlin?", "texts": documents}),
    )
    .await;
    let v2 = seen["cohere_v2"].as_array().unwrap();
    assert_eq!(v2.len(), 2, "top_n");
    for (got, want) in v2.iter().zip(ranked.as_array().unwrap()) {
        assert_eq!(got["index"], want["index"]);
        assert!(
            (got["relevance_score"].as_f64().unwrap() - want["score"].as_f64().unwrap()).abs()
                < 1e-6
        );
    }
    let v1 = seen["cohere_v1"].as_array().unwrap();
    assert_eq!(v1.len(), 3);
    for result in v1 {
        assert_eq!(
            result["document"],
            documents[result["index"].as_u64().unwrap() as usize]
        );
    }
    assert!(
        seen["cohere_v1_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_queue_cannot_hold_whole_gets_429_overloaded_and_nothing_is_queued() {
    let models = family_folder("minilm-cls-prompts");
    let yaml = format!(
        "app_settings:
  app_prefix: small
  batch_config: {{max_batch_size: 4, wait_ms: 0}}
  server_config: {{max_queue_depth: 4}}
model_settings:
  local_model_repository_folder: '{}'
  common: {{device: cpu}}
  model_entries:
    embedder: {{path: minilm-cls-prompts}}
",
        models.parent().unwrap().display()
    );
    let server = TestServer::builder(settings_from_yaml(&yaml))
        .pipeline::<Bert>()
        .routes(modalkit::tei::routes::<Bert>())
        .start()
        .await;
    let http = client();
    // The warm-up batch must be out of the queue before counting it.
    assert!(wait_until_ready(&http, &server.base_url, Duration::from_secs(60)).await);
    // Five texts never fit a queue of four: refused as one, TEI's way.
    let (status, body) = post_json(
        &http,
        &server.url("/embed"),
        &json!({"inputs": ["a", "b", "c", "d", "e"]}),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error_type"], "Overloaded", "{body}");
    let ready = get_json(&http, &server.url("/ready")).await;
    assert_eq!(
        ready["models"]["embedder"]["queue_depth"], 0,
        "none queued: {ready}"
    );
    let (status, body) = post_json(
        &http,
        &server.url("/embed"),
        &json!({"inputs": ["a", "b", "c", "d"]}),
    )
    .await;
    assert_eq!(status, 200, "four fit: {body}");
}
