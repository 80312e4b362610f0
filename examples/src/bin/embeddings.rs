//! Serves the BERT family: sentence embeddings, rerankers and classifiers
//! (all-MiniLM-L6-v2 on the default config):
//! `scripts/fetch-model.sh && cargo run --release -p modalkit-examples --bin embeddings -- --config config/embeddings.yaml`.

/// mimalloc keeps freed tensor memory instead of returning it to the OS after
/// every op (glibc's malloc measured 10-19% of the forward pass).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // modalkit's routes, TEI's (/embed, /rerank, /predict, /tokenize,
    // /info, Cohere's /v1/rerank) and OpenAI's /v1/embeddings.
    modalkit::tei::run::<modalkit_examples::bert::Bert>()
}
