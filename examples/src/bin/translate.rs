//! Serves the translate example: `cargo run -p modalkit-examples --bin translate`.

/// The process's allocator: mimalloc (glibc's malloc and free took a fifth
/// of a no-op server's CPU time, and 10-19% of the embeddings forward pass).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    modalkit::run::<modalkit_examples::translate::Translator>()
}
