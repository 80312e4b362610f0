//! The `modalkit` command: `modalkit new PATH` writes a new pipeline project.
//! (A project's own server binary has `serve`, `check` and `openapi`.)

use std::process::ExitCode;

use clap::Parser;
use scaffold::{NewProject, write_project};

mod scaffold;

/// modalkit-rs project tools.
#[derive(Debug, Parser)]
#[command(version, about = "modalkit-rs project tools")]
enum Command {
    /// Write a new pipeline crate: src/main.rs, modalkit.yaml, Dockerfile,
    /// modal_app.py, ready to `cargo run` and `modal deploy`.
    New(NewProject),
}

fn main() -> ExitCode {
    match Command::parse() {
        Command::New(project) => match write_project(&project) {
            Ok(written) => {
                println!("{written}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        },
    }
}
