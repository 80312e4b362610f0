//! Serves the no-op pipeline: `cargo run -p modalkit-examples --bin noop -- --config config/noop.yaml`.

fn main() -> std::process::ExitCode {
    modalkit::run::<modalkit_examples::noop::Noop>()
}
