//! Serves the translate example: `cargo run -p modalkit-examples --bin translate`.

fn main() -> std::process::ExitCode {
    modalkit_server::cli::run::<modalkit_examples::translate::Translator>()
}
