//! Raw in-process throughput of the embeddings pipeline (no server), for
//! bench/embeddings.sh and bench/mixed.sh:
//! `embeddings-bench MODEL_DIR TEXT 1,8,32 [SECONDS [PRECISION]]`, where TEXT
//! is one sentence, repeated, or `@CORPUS.jsonl:KIND` (`query`, `passage`,
//! `long` or `mixed`): the corpus' texts of that kind in turn, each batch
//! the next N; PRECISION is `fp32` (the default) or `bf16`.
//! Prints one line per batch size:
//! `raw batch=N ms_per_batch=X sentences_per_s=Y tokens_per_s=Z`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use modalkit::InferencePipeline;
use modalkit::candle::encoder::cpu::precision::Precision;
use modalkit_examples::bert::{Bert, BertInput, LoadOptions};

/// mimalloc, as the server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: embeddings-bench MODEL_DIR SENTENCE BATCH_SIZES [SECONDS]");
        return ExitCode::from(2);
    }
    let folder = PathBuf::from(&args[1]);
    let texts = match texts_of(&args[2]) {
        Ok(texts) => texts,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let sizes: Vec<usize> = args[3]
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let seconds: f64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let precision = match args.get(5).map(|name| Precision::parse(name)).transpose() {
        Ok(precision) => precision.unwrap_or_default(),
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let options = LoadOptions {
        max_seq_length: None,
        precision,
    };
    let pipeline = match Bert::load_folder(&folder, candle_core::Device::Cpu, options) {
        Ok(pipeline) => pipeline,
        Err(err) => {
            eprintln!("cannot load {}: {err}", folder.display());
            return ExitCode::FAILURE;
        }
    };
    let mut next = 0usize;
    for size in sizes {
        let mut batch = || -> Vec<BertInput> {
            (0..size)
                .map(|_| {
                    next = (next + 1) % texts.len();
                    BertInput::text(texts[next].clone())
                })
                .collect()
        };
        let run = |inputs: &[BertInput]| -> Result<usize, String> {
            let ids = pipeline.preprocess(inputs).map_err(|e| e.to_string())?;
            let out = pipeline.predict(inputs, ids).map_err(|e| e.to_string())?;
            let tokens = out
                .iter()
                .map(|item| item.as_ref().map_or(0, |(_, tokens)| *tokens))
                .sum();
            std::hint::black_box(pipeline.postprocess(inputs, out));
            Ok(tokens)
        };
        for _ in 0..3 {
            if let Err(err) = run(&batch()) {
                eprintln!("{err}");
                return ExitCode::FAILURE;
            }
        }
        let started = Instant::now();
        let (mut batches, mut tokens) = (0u32, 0usize);
        while started.elapsed() < Duration::from_secs_f64(seconds) {
            match run(&batch()) {
                Ok(count) => tokens += count,
                Err(err) => {
                    eprintln!("{err}");
                    return ExitCode::FAILURE;
                }
            }
            batches += 1;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let ms = elapsed * 1000.0 / f64::from(batches);
        println!(
            "raw batch={size} ms_per_batch={ms:.3} sentences_per_s={:.1} tokens_per_s={:.0}",
            f64::from(batches) * size as f64 / elapsed,
            tokens as f64 / elapsed
        );
    }
    ExitCode::SUCCESS
}

/// The texts TEXT names: itself, or a corpus' texts of one kind.
fn texts_of(text: &str) -> Result<Vec<String>, String> {
    let Some(spec) = text.strip_prefix('@') else {
        return Ok(vec![text.to_owned()]);
    };
    let (path, kind) = spec
        .rsplit_once(':')
        .ok_or_else(|| format!("{text}: expected @CORPUS.jsonl:KIND"))?;
    let corpus = std::fs::read_to_string(path).map_err(|err| format!("{path}: {err}"))?;
    let mut texts = Vec::new();
    for line in corpus.lines() {
        let item: modalkit::serde_json::Value =
            modalkit::serde_json::from_str(line).map_err(|err| format!("{path}: {err}"))?;
        if kind == "mixed" || item["kind"] == kind {
            texts.push(item["text"].as_str().unwrap_or_default().to_owned());
        }
    }
    if texts.is_empty() {
        return Err(format!("{path} has no texts of kind {kind}"));
    }
    Ok(texts)
}
