//! The generate example serving SmolLM2-135M-Instruct with the engine's
//! iteration-level batching: greedy tokens equal transformers' `generate`
//! on the same weights, token for token, while sequences share steps; the
//! real `openai` client streams chat and completions; a client that leaves
//! mid-stream frees its slot at the next step; 50 mixed streams complete
//! with more than one sequence per step; bad input is a 4xx in OpenAI's
//! shape before any event; `/predict_sync`, `/predict_batch` and async jobs
//! get the whole text.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use modalkit::generate::WholeGeneration;
use modalkit_examples::llama::LlamaGenerator;
use modalkit_tests::model::smollm2_folder;
use modalkit_tests::support::{
    TestServer, client, metric_value, post_json, run_client, scrape, settings_from_yaml,
    wait_until_ready,
};
use serde_json::{Value, json};

/// The example serving model entry `model` (its metrics' label), and its
/// metrics once warm-up is done, to count from.
struct Served {
    server: TestServer,
    warm: String,
}

impl Served {
    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// How much `series` grew since warm-up, in a scrape taken now.
    async fn grown(&self, series: &str) -> f64 {
        let now = scrape(&self.server.base_url).await;
        metric_value(&now, series) - metric_value(&self.warm, series)
    }

    /// The mean of a histogram's observations since warm-up.
    async fn mean_since_warm(&self, name: &str, model: &str) -> f64 {
        let sum = self.grown(&series(&format!("{name}_sum"), model, "")).await;
        let count = self
            .grown(&series(&format!("{name}_count"), model, ""))
            .await;
        assert!(count > 0.0, "{name} has observations");
        sum / count
    }
}

/// Starts the example on model entry `model`, with `engine` (YAML flow-map
/// keys, may be empty) added to the entry, and waits for its warm-up.
async fn serve(model: &str, engine: &str) -> Served {
    let folder = smollm2_folder();
    let yaml = format!(
        "app_settings:\n  app_prefix: gen\n  batch_config: {{max_batch_size: 8, wait_ms: 0}}\n  queue_config: {{backend: memory}}\nmodel_settings:\n  local_model_repository_folder: '{}'\n  model_entries:\n    {model}: {{path: '{}'{}{engine}}}\n",
        folder.parent().unwrap().display(),
        folder.file_name().unwrap().to_str().unwrap(),
        if engine.is_empty() { "" } else { ", " },
    );
    let server = TestServer::builder(settings_from_yaml(&yaml))
        .pipeline::<WholeGeneration<LlamaGenerator>>()
        .routes(modalkit::generate::routes::<LlamaGenerator>())
        .start()
        .await;
    assert!(wait_until_ready(&client(), &server.base_url, Duration::from_secs(60)).await);
    let warm = scrape(&server.base_url).await;
    Served { server, warm }
}

/// The fixture's cases: what transformers generated greedily, 32 tokens at
/// most, from the same GGUF weights (scripts/make-generation-reference.py).
fn cases() -> Vec<Value> {
    let fixture: Value =
        serde_json::from_str(include_str!("../fixtures/smollm2_greedy.json")).unwrap();
    assert_eq!(fixture["generation"]["max_new_tokens"], 32);
    let cases = fixture["cases"].as_array().unwrap().clone();
    assert_eq!(cases.len(), 8);
    cases
}

/// The case's prompt as a request body's `prompt` or `messages`, greedy.
fn greedy_body(case: &Value) -> Value {
    let mut body = json!({"max_tokens": 32, "temperature": 0});
    match case["kind"].as_str().unwrap() {
        "completion" => body["prompt"] = case["prompt"].clone(),
        _ => body["messages"] = case["messages"].clone(),
    }
    body
}

fn ids(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// One Server-Sent Event: its name (`None` for the default) and data.
#[derive(Debug)]
struct Event {
    name: Option<String>,
    data: String,
}

/// Reads a `text/event-stream` response event by event.
struct EventReader {
    response: reqwest::Response,
    buffer: String,
    /// Comment lines seen (keep-alives).
    comments: usize,
}

impl EventReader {
    fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        EventReader {
            response,
            buffer: String::new(),
            comments: 0,
        }
    }

    /// The next event, or `None` when the body ends.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Event {
                    name: None,
                    data: String::new(),
                };
                let mut fields = 0;
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                    } else if let Some(name) = line.strip_prefix("event: ") {
                        event.name = Some(name.to_owned());
                        fields += 1;
                    } else if let Some(data) = line.strip_prefix("data: ") {
                        event.data.push_str(data);
                        fields += 1;
                    }
                }
                if fields > 0 {
                    return Some(event);
                }
                continue;
            }
            let chunk = self.response.chunk().await.expect("the stream reads")?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Every token event's data, then the `end` event's data.
    async fn collect(mut self) -> (Vec<Value>, Value) {
        let mut tokens = Vec::new();
        while let Some(event) = self.next().await {
            let data: Value = serde_json::from_str(&event.data).unwrap();
            if event.name.as_deref() == Some("end") {
                assert!(self.next().await.is_none(), "nothing follows `end`");
                return (tokens, data);
            }
            tokens.push(data);
        }
        panic!("the stream ended without an `end` event");
    }
}

async fn stream(http: &reqwest::Client, url: &str, body: &Value) -> EventReader {
    EventReader::new(http.post(url).json(body).send().await.unwrap())
}

fn series(name: &str, model: &str, extra: &str) -> String {
    format!("{name}{{model=\"{model}\"{extra}}}")
}

#[tokio::test]
async fn greedy_streams_equal_transformers_token_for_token_while_sharing_steps() {
    let server = serve("smollm2-greedy", "").await;
    let http = client();
    let url = server.url("/predict_stream");
    // All eight at once: they join one another's steps, and batching must
    // not change a single greedy token.
    let streams = cases().into_iter().map(|case| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let reader = stream(&http, &url, &greedy_body(&case)).await;
            (case, reader.collect().await)
        }
    });
    for (case, (tokens, end)) in futures_join_all(streams).await {
        let expected = ids(&case["generated_ids"]);
        let got: Vec<u64> = tokens
            .iter()
            .map(|t| t["token_id"].as_u64().unwrap())
            .collect();
        assert_eq!(got, expected, "{}", case["rendered_prompt"]);
        let text: String = tokens.iter().map(|t| t["text"].as_str().unwrap()).collect();
        assert_eq!(text, case["generated_text"].as_str().unwrap());
        for token in &tokens {
            assert_eq!(token["status"], "success");
            assert_eq!(token["error"], Value::Null);
        }
        assert_eq!(end["status"], "success");
        assert_eq!(end["tokens"], expected.len());
        let reason = if case["stopped_at_eos"].as_bool().unwrap() {
            "stop"
        } else {
            "length"
        };
        assert_eq!(end["finish_reason"], reason);
        assert!(end["time_to_first_token_ms"].as_f64().unwrap() > 0.0);
        assert!(end["tokens_per_second"].as_f64().unwrap() > 0.0);
    }
    let per_step = server
        .mean_since_warm("modalkit_step_sequences", "smollm2-greedy")
        .await;
    assert!(
        per_step > 1.0,
        "the eight sequences shared steps: {per_step}"
    );
    let finished = series(
        "modalkit_sequences_ended_total",
        "smollm2-greedy",
        ",end=\"finished\"",
    );
    assert_eq!(server.grown(&finished).await, 8.0);
}

/// `join_all` without a futures dependency: spawned tasks, awaited in order.
async fn futures_join_all<T: Send + 'static>(
    futures: impl Iterator<Item = impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn the_openai_client_streams_chat_and_completions() {
    let server = serve("smollm2-openai", "").await;
    let cases = cases();
    let completion = cases.iter().find(|c| c["kind"] == "completion").unwrap();
    let chat = cases.iter().find(|c| c["kind"] == "chat").unwrap();
    let requests = json!({
        "prompt": completion["prompt"],
        "messages": chat["messages"],
        "max_tokens": 32,
        "long_prompt": "word ".repeat(3000),
    });
    let seen = run_client(
        "openai_stream.py",
        vec![
            server.server.base_url.clone(),
            "smollm2-openai".to_owned(),
            requests.to_string(),
        ],
    )
    .await;
    let finish = |case: &Value| {
        if case["stopped_at_eos"].as_bool().unwrap() {
            "stop"
        } else {
            "length"
        }
    };

    let chat_stream = &seen["chat_stream"];
    assert_eq!(chat_stream["text"], chat["generated_text"]);
    assert_eq!(
        chat_stream["roles"][0], "assistant",
        "the first delta names the role"
    );
    assert_eq!(
        chat_stream["ids"].as_array().unwrap().len(),
        1,
        "one id per stream"
    );
    let reasons = chat_stream["finish_reasons"].as_array().unwrap();
    assert_eq!(reasons.last().unwrap(), finish(chat));
    assert!(reasons[..reasons.len() - 1].iter().all(Value::is_null));
    assert!(chat_stream["chunks"].as_u64().unwrap() > 3, "it streamed");
    let generated = ids(&chat["generated_ids"]).len();
    let prompt = ids(&chat["prompt_ids"]).len();
    let usage = chat_stream["usage"].as_array().unwrap();
    assert_eq!(usage.len(), 1, "one usage chunk, as asked");
    assert_eq!(usage[0]["prompt_tokens"], prompt);
    assert_eq!(usage[0]["completion_tokens"], generated);
    assert_eq!(usage[0]["total_tokens"], prompt + generated);

    let chat_whole = &seen["chat_whole"];
    assert_eq!(chat_whole["object"], "chat.completion");
    assert_eq!(
        chat_whole["choices"][0]["message"]["content"],
        chat["generated_text"]
    );
    assert_eq!(chat_whole["choices"][0]["message"]["role"], "assistant");
    assert_eq!(chat_whole["choices"][0]["finish_reason"], finish(chat));
    assert_eq!(chat_whole["usage"]["completion_tokens"], generated);

    let completion_stream = &seen["completion_stream"];
    assert_eq!(completion_stream["text"], completion["generated_text"]);
    assert!(completion_stream["chunks"].as_u64().unwrap() > 3);
    let reasons = completion_stream["finish_reasons"].as_array().unwrap();
    assert_eq!(reasons.last().unwrap(), finish(completion));
    let completion_whole = &seen["completion_whole"];
    assert_eq!(
        completion_whole["choices"][0]["text"],
        completion["generated_text"]
    );
    assert_eq!(
        completion_whole["usage"]["prompt_tokens"],
        ids(&completion["prompt_ids"]).len()
    );

    for (case, param) in [
        ("empty_messages", "messages"),
        ("max_tokens_zero", "max_tokens"),
        ("prompt_over_context", "messages"),
    ] {
        let refused = &seen["refused"][case];
        assert_eq!(refused["status"], 400, "{case}: {refused}");
        assert_eq!(refused["body"]["type"], "invalid_request_error", "{case}");
        assert_eq!(refused["body"]["param"], param, "{case}");
    }
    assert_eq!(seen["models"], json!(["smollm2-openai"]));
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_frees_its_slot_at_the_next_step() {
    // One slot: while the long sequence holds it, nothing else runs.
    let model = "smollm2-leave";
    let server = serve(model, "max_running_sequences: 1").await;
    let http = client();
    let long = json!({"prompt": "Once upon a time", "max_tokens": 1500, "temperature": 0});
    let mut reader = stream(&http, &server.url("/predict_stream"), &long).await;
    for _ in 0..3 {
        let event = reader.next().await.unwrap();
        assert_eq!(event.name, None, "a token event");
    }
    let running = series("modalkit_sequences_running", model, "");
    assert_eq!(
        metric_value(&scrape(&server.server.base_url).await, &running),
        1.0
    );
    drop(reader);

    // The slot is free at the next step: a short request runs at once
    // (behind 1,500 tokens it would wait a minute or more).
    let started = Instant::now();
    let short = http
        .post(server.url("/v1/completions"))
        .json(&json!({"model": model, "prompt": "Hello", "max_tokens": 4, "temperature": 0}))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("the short request is served while the long one would still run");
    assert_eq!(short.status(), 200);
    let short: Value = short.json().await.unwrap();
    assert_eq!(short["usage"]["completion_tokens"], 4);

    let ended = |end: &str| {
        series(
            "modalkit_sequences_ended_total",
            model,
            &format!(",end=\"{end}\""),
        )
    };
    assert_eq!(server.grown(&ended("cancelled")).await, 1.0);
    assert_eq!(server.grown(&ended("finished")).await, 1.0);
    let generated = server
        .grown(&series("modalkit_generated_tokens_total", model, ""))
        .await;
    assert!(
        generated < 200.0,
        "the left sequence stopped generating ({generated} tokens in all, {:?} after it left)",
        started.elapsed()
    );
    // The gauge is set after the step that answered the short request.
    let settled = Instant::now() + Duration::from_secs(5);
    while metric_value(&scrape(&server.server.base_url).await, &running) != 0.0 {
        assert!(Instant::now() < settled, "no sequence runs any more");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn fifty_concurrent_streams_of_mixed_lengths_all_complete() {
    let model = "smollm2-fifty";
    let server = serve(model, "").await;
    let http = client();
    let url = server.url("/predict_stream");
    let streams = (0..50u64).map(|i| {
        let (http, url) = (http.clone(), url.clone());
        let max_tokens = 1 + (i * 7) % 24;
        let body = if i % 2 == 0 {
            json!({"prompt": format!("Item {i}: a short story about the number {i}."),
                   "max_tokens": max_tokens, "temperature": 0.8, "seed": i})
        } else {
            json!({"messages": [{"role": "user", "content": format!("Say something about {i}.")}],
                   "max_tokens": max_tokens, "temperature": 0.8, "seed": i})
        };
        async move {
            let (tokens, end) = stream(&http, &url, &body).await.collect().await;
            (max_tokens, tokens, end)
        }
    });
    let mut total = 0;
    for (max_tokens, tokens, end) in futures_join_all(streams).await {
        assert_eq!(end["status"], "success", "{end}");
        let count = tokens.len() as u64;
        assert_eq!(end["tokens"], count);
        assert!((1..=max_tokens).contains(&count));
        let reason = end["finish_reason"].as_str().unwrap();
        assert!(
            reason == "stop" || (reason == "length" && count == max_tokens),
            "{reason} after {count} of {max_tokens}"
        );
        total += count;
    }
    let per_step = server
        .mean_since_warm("modalkit_step_sequences", model)
        .await;
    assert!(per_step > 1.0, "mean running sequences per step {per_step}");
    let generated = series("modalkit_generated_tokens_total", model, "");
    assert_eq!(server.grown(&generated).await, total as f64);
    let finished = series("modalkit_sequences_ended_total", model, ",end=\"finished\"");
    assert_eq!(server.grown(&finished).await, 50.0);
    modalkit_tests::support::write_report(
        "generate_fifty_streams.txt",
        &format!("50 mixed streams: {total} tokens, mean {per_step:.1} sequences per decode step"),
    );
}

#[tokio::test]
async fn bad_input_is_a_4xx_before_any_event() {
    let model = "smollm2-bad";
    let server = serve(model, "").await;
    let http = client();
    let long = "word ".repeat(3000);
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": model, "messages": [], "stream": true}),
            "messages",
        ),
        (
            "/v1/completions",
            json!({"model": model, "prompt": "Hi", "max_tokens": 0, "stream": true}),
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"model": model, "prompt": "Hi", "max_tokens": 5000, "stream": true}),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            json!({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2040, "stream": true}),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            json!({"model": model, "messages": [{"role": "user", "content": long}], "stream": true}),
            "messages",
        ),
        (
            "/v1/completions",
            json!({"model": model, "prompt": long, "stream": true}),
            "prompt",
        ),
        (
            "/v1/chat/completions",
            json!({"model": model, "messages": [{"role": "robot", "content": "Hi"}], "stream": true}),
            "messages",
        ),
        (
            "/v1/completions",
            json!({"model": model, "prompt": "Hi", "temperature": 3, "stream": true}),
            "temperature",
        ),
        (
            "/v1/completions",
            json!({"model": model, "prompt": "Hi", "n": 2, "stream": true}),
            "n",
        ),
    ];
    for (route, body, param) in cases {
        let response = http
            .post(server.url(route))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let reply: Value = response.json().await.unwrap();
        assert_eq!(status, 400, "{route} {body}: {reply}");
        assert_eq!(kind, "application/json", "no event was sent");
        assert_eq!(reply["error"]["type"], "invalid_request_error");
        assert_eq!(reply["error"]["param"], param, "{reply}");
        assert!(!reply["error"]["message"].as_str().unwrap().is_empty());
    }
    // modalkit's own stream route answers in modalkit's error shape.
    for body in [
        json!({"max_tokens": 4}),
        json!({"prompt": "Hi", "max_tokens": 0}),
        json!({"prompt": long, "max_tokens": 4}),
        json!({"prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}]}),
    ] {
        let response = http
            .post(server.url("/predict_stream"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let reply: Value = response.json().await.unwrap();
        assert_eq!(status, 422, "{body}: {reply}");
        assert_eq!(kind, "application/json");
        assert!(
            !reply["error"]["code"].as_str().unwrap().is_empty(),
            "{reply}"
        );
        assert!(
            !reply["error"]["message"].as_str().unwrap().is_empty(),
            "{reply}"
        );
    }
    let generated = series("modalkit_generated_tokens_total", model, "");
    assert_eq!(server.grown(&generated).await, 0.0, "nothing was generated");
}

#[tokio::test]
async fn sync_batch_and_async_routes_get_the_whole_text() {
    let model = "smollm2-whole";
    let server = serve(model, "").await;
    let http = client();
    let cases = cases();
    let completions: Vec<&Value> = cases.iter().filter(|c| c["kind"] == "completion").collect();

    let (status, reply) = post_json(
        &http,
        &server.url("/predict_sync"),
        &greedy_body(completions[0]),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["status"], "success");
    assert_eq!(reply["text"], completions[0]["generated_text"]);
    assert_eq!(reply["tokens"], ids(&completions[0]["generated_ids"]).len());

    let batch: Vec<Value> = cases.iter().map(greedy_body).collect();
    let (status, reply) = post_json(&http, &server.url("/predict_batch"), &json!(batch)).await;
    assert_eq!(status, 200, "{reply}");
    let replies = reply.as_array().unwrap();
    assert_eq!(replies.len(), cases.len());
    for (case, reply) in cases.iter().zip(replies) {
        assert_eq!(
            reply["text"], case["generated_text"],
            "{}",
            case["rendered_prompt"]
        );
    }

    let job =
        json!({"message": greedy_body(completions[1]), "success_queue": "done", "meta": {"n": 7}});
    let (status, reply) = post_json(&http, &server.url("/predict_async"), &job).await;
    assert_eq!(status, 200, "{reply}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = loop {
        let delivered = server.server.queue.peek("done");
        if !delivered.is_empty() || Instant::now() > deadline {
            break delivered;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(delivered.len(), 1, "the job's result was delivered");
    let message: Value = serde_json::from_str(&delivered[0]).unwrap();
    assert_eq!(message["status"], "success");
    assert_eq!(message["text"], completions[1]["generated_text"]);
    assert_eq!(message["meta"], json!({"n": 7}));
}
