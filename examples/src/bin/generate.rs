//! Serves a causal language model with streaming (SmolLM2-135M-Instruct on
//! `config/generate.yaml`): `/predict_stream`, OpenAI's `/v1/completions`
//! and `/v1/chat/completions`, and modalkit's routes with the whole text:
//! `scripts/fetch-llm.sh && cargo run --release -p modalkit-examples --bin generate -- --config config/generate.yaml`.

/// mimalloc keeps freed tensor memory for the next step's tensors.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    modalkit::generate::run::<modalkit_examples::llama::LlamaGenerator>()
}
