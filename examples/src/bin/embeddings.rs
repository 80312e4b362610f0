//! Serves all-MiniLM-L6-v2 sentence embeddings:
//! `scripts/fetch-model.sh && cargo run --release -p modalkit-examples --bin embeddings -- --config config/embeddings.yaml`.

// The allocator is mimalloc, from modalkit's default `mimalloc` feature: it
// keeps freed tensor memory instead of returning it to the OS after every op
// (glibc malloc measured 10-19% of the forward pass).

fn main() -> std::process::ExitCode {
    // modalkit's routes plus the OpenAI-compatible /v1/embeddings.
    modalkit::server::openai::run::<modalkit_examples::embeddings::Embeddings>()
}
