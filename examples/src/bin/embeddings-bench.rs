//! Raw in-process throughput of the embeddings pipeline (no server), for
//! bench/embeddings.sh: `embeddings-bench MODEL_DIR "SENTENCE" 1,8,32 [SECONDS]`.
//! Prints one line per batch size: `raw batch=N ms_per_batch=X sentences_per_s=Y`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use modalkit::InferencePipeline;
use modalkit_examples::embeddings::{EmbeddingInput, Embeddings};

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
    let sentence = &args[2];
    let sizes: Vec<usize> = args[3]
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let seconds: f64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let pipeline = match Embeddings::load_folder(&folder, candle_core::Device::Cpu, None) {
        Ok(pipeline) => pipeline,
        Err(err) => {
            eprintln!("cannot load {}: {err}", folder.display());
            return ExitCode::FAILURE;
        }
    };
    for size in sizes {
        let inputs: Vec<EmbeddingInput> = (0..size)
            .map(|_| EmbeddingInput {
                text: sentence.clone(),
            })
            .collect();
        let run = || -> Result<(), String> {
            let ids = pipeline.preprocess(&inputs).map_err(|e| e.to_string())?;
            let out = pipeline.predict(&inputs, ids).map_err(|e| e.to_string())?;
            std::hint::black_box(pipeline.postprocess(&inputs, out));
            Ok(())
        };
        for _ in 0..3 {
            if let Err(err) = run() {
                eprintln!("{err}");
                return ExitCode::FAILURE;
            }
        }
        let started = Instant::now();
        let mut batches = 0u32;
        while started.elapsed() < Duration::from_secs_f64(seconds) {
            if let Err(err) = run() {
                eprintln!("{err}");
                return ExitCode::FAILURE;
            }
            batches += 1;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let ms = elapsed * 1000.0 / f64::from(batches);
        println!(
            "raw batch={size} ms_per_batch={ms:.3} sentences_per_s={:.1}",
            f64::from(batches) * size as f64 / elapsed
        );
    }
    ExitCode::SUCCESS
}
