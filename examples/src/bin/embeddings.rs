//! Serves all-MiniLM-L6-v2 sentence embeddings:
//! `scripts/fetch-model.sh && cargo run --release -p modalkit-examples --bin embeddings -- --config config/embeddings.yaml`.

/// mimalloc keeps freed tensor memory instead of returning it to the OS after
/// every op (glibc's malloc measured 10-19% of the forward pass).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // modalkit's routes plus the OpenAI-compatible /v1/embeddings.
    modalkit::openai::run::<modalkit_examples::embeddings::Embeddings>()
}
