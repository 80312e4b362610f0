//! Serves the translate example: `cargo run -p modalkit-examples --bin translate`.

fn main() -> std::process::ExitCode {
    modalkit::run::<modalkit_examples::translate::Translator>()
}
