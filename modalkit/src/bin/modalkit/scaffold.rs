//! `modalkit new`: writes a new pipeline crate that builds, serves and
//! deploys on its own: `src/main.rs` (the README's quickstart pipeline),
//! `modalkit.yaml`, `Cargo.toml` depending on `modalkit-rs` alone, the
//! Dockerfiles and the Modal app of `deploy/` set to the new package and
//! binary, a README, `.gitignore` and `.dockerignore`.

use std::fmt;
use std::path::{Path, PathBuf};

/// What `modalkit new` is asked for.
#[derive(Debug, Clone, clap::Args)]
pub struct NewProject {
    /// The folder to create; its name is the crate's and the binary's.
    pub path: PathBuf,
    /// Depend on a local checkout of modalkit-rs (the folder holding the
    /// `modalkit-rs` crate, or the workspace) instead of the crates
    /// registry. Docker builds need a registry or git dependency: a path
    /// outside the project is not in the image's build context.
    #[arg(long, value_name = "DIR")]
    pub modalkit_path: Option<PathBuf>,
    /// Depend on a git repository of modalkit-rs instead of the crates
    /// registry.
    #[arg(long, value_name = "URL")]
    pub modalkit_git: Option<String>,
}

/// Why a project could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The folder name is not a valid crate name.
    #[error(
        "'{0}' is not a valid crate name: use letters, digits, '-' or '_', starting with a letter"
    )]
    InvalidName(String),
    /// The folder exists and is not empty.
    #[error("{0} already exists and is not empty")]
    NotEmpty(PathBuf),
    /// `--modalkit-path` holds no `modalkit-rs` crate.
    #[error(
        "{0} holds no modalkit-rs crate (expected Cargo.toml with name = \"modalkit-rs\", or modalkit/Cargo.toml)"
    )]
    NoModalkitCrate(PathBuf),
    /// Writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// What was written, for the command's output.
#[derive(Debug)]
pub struct Written {
    /// The project folder.
    pub root: PathBuf,
    /// The files, relative to it.
    pub files: Vec<&'static str>,
}

impl fmt::Display for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "created {}:", self.root.display())?;
        for file in &self.files {
            writeln!(f, "  {file}")?;
        }
        write!(
            f,
            "next: cd {} && cargo run   (then: modal deploy modal_app.py)",
            self.root.display()
        )
    }
}

const MAIN_RS: &str = include_str!("../../../templates/main.rs");
const CARGO_TOML: &str = include_str!("../../../templates/Cargo.toml.in");
const MODALKIT_YAML: &str = include_str!("../../../templates/modalkit.yaml");
const README_MD: &str = include_str!("../../../templates/README.md");
const GITIGNORE: &str = include_str!("../../../templates/gitignore");
const DOCKERIGNORE: &str = include_str!("../../../templates/dockerignore");
const DOCKERFILE: &str = include_str!("../../../templates/deploy/Dockerfile");
const DOCKERFILE_CUDA: &str = include_str!("../../../templates/deploy/Dockerfile.cuda");
const MODAL_APP: &str = include_str!("../../../templates/deploy/modal_app.py");

/// Writes the project `request` asks for.
pub fn write_project(request: &NewProject) -> Result<Written, ScaffoldError> {
    let root = &request.path;
    let name = root
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    if !valid_crate_name(&name) {
        return Err(ScaffoldError::InvalidName(name));
    }
    if root.exists() && std::fs::read_dir(root).map_or(true, |mut d| d.next().is_some()) {
        return Err(ScaffoldError::NotEmpty(root.clone()));
    }
    let dependency = match (&request.modalkit_path, &request.modalkit_git) {
        (Some(path), _) => {
            let crate_dir = modalkit_crate_dir(path)?;
            format!(
                "{{ path = {} }}",
                toml_string(&crate_dir.display().to_string())
            )
        }
        (None, Some(url)) => format!("{{ git = {} }}", toml_string(url)),
        // What `cargo add modalkit-rs` writes: this tool's own version.
        (None, None) => toml_string(env!("CARGO_PKG_VERSION")),
    };
    let fill = |template: &str| {
        template
            .replace("{{name}}", &name)
            .replace("{{modalkit}}", &dependency)
    };
    let files: Vec<(&'static str, String)> = vec![
        ("Cargo.toml", fill(CARGO_TOML)),
        ("src/main.rs", MAIN_RS.to_owned()),
        ("modalkit.yaml", fill(MODALKIT_YAML)),
        ("README.md", fill(README_MD)),
        (".gitignore", GITIGNORE.to_owned()),
        (".dockerignore", DOCKERIGNORE.to_owned()),
        ("Dockerfile", project_dockerfile(DOCKERFILE, &name)),
        (
            "Dockerfile.cuda",
            project_dockerfile(DOCKERFILE_CUDA, &name),
        ),
        ("modal_app.py", project_modal_app(&name)),
    ];
    for (relative, content) in &files {
        let path = root.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| ScaffoldError::Io {
                path: parent.to_owned(),
                source,
            })?;
        }
        std::fs::write(&path, content).map_err(|source| ScaffoldError::Io { path, source })?;
    }
    Ok(Written {
        root: root.clone(),
        files: files.iter().map(|(relative, _)| *relative).collect(),
    })
}

fn valid_crate_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn modalkit_crate_dir(path: &Path) -> Result<PathBuf, ScaffoldError> {
    let absolute = std::path::absolute(path).map_err(|source| ScaffoldError::Io {
        path: path.to_owned(),
        source,
    })?;
    for candidate in [absolute.clone(), absolute.join("modalkit")] {
        let manifest = std::fs::read_to_string(candidate.join("Cargo.toml")).unwrap_or_default();
        if manifest
            .lines()
            .any(|line| line.trim() == "name = \"modalkit-rs\"")
        {
            return Ok(candidate);
        }
    }
    Err(ScaffoldError::NoModalkitCrate(absolute))
}

fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `deploy/Dockerfile*` with the new project's package, binary and config
/// as the defaults of their build arguments.
fn project_dockerfile(template: &str, name: &str) -> String {
    template
        .lines()
        .map(|line| match line.split_once('=') {
            Some((key @ ("ARG PACKAGE" | "ARG BIN"), _)) => format!("{key}={name}"),
            Some(("ARG CONFIG", _)) => "ARG CONFIG=modalkit.yaml".to_owned(),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// `deploy/modal_app.py` with its project block set to the new project: the
/// folder of the file itself, its package and binary, its Dockerfiles.
fn project_modal_app(name: &str) -> String {
    MODAL_APP
        .lines()
        .map(|line| match line.split_once(" = ") {
            Some(("PROJECT_ROOT", _)) => {
                "PROJECT_ROOT = Path(__file__).resolve().parent".to_owned()
            }
            Some(("PROJECT_PACKAGE", _)) => format!("PROJECT_PACKAGE = \"{name}\""),
            Some(("PROJECT_BINARY", _)) => format!("PROJECT_BINARY = \"{name}\""),
            Some(("PROJECT_DOCKERFILE", _)) => "PROJECT_DOCKERFILE = \"Dockerfile\"".to_owned(),
            Some(("PROJECT_CUDA_DOCKERFILE", _)) => {
                "PROJECT_CUDA_DOCKERFILE = \"Dockerfile.cuda\"".to_owned()
            }
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deploy_files_carry_the_project_block_the_scaffold_rewrites() {
        let app = project_modal_app("my-model");
        for line in [
            "PROJECT_ROOT = Path(__file__).resolve().parent\n",
            "PROJECT_PACKAGE = \"my-model\"\n",
            "PROJECT_BINARY = \"my-model\"\n",
            "PROJECT_DOCKERFILE = \"Dockerfile\"\n",
            "PROJECT_CUDA_DOCKERFILE = \"Dockerfile.cuda\"\n",
        ] {
            assert!(app.contains(line), "modal_app.py lacks {line:?}");
        }
        for template in [DOCKERFILE, DOCKERFILE_CUDA] {
            let docker = project_dockerfile(template, "my-model");
            for line in [
                "ARG PACKAGE=my-model\n",
                "ARG BIN=my-model\n",
                "ARG CONFIG=modalkit.yaml\n",
            ] {
                assert!(docker.contains(line), "Dockerfile lacks {line:?}");
            }
        }
    }

    #[test]
    fn names_that_are_not_crate_names_are_refused() {
        assert!(valid_crate_name("my-model_2"));
        for bad in ["", "2fast", "my model", "ü"] {
            assert!(!valid_crate_name(bad), "{bad:?}");
        }
        let dir = std::env::temp_dir().join("modalkit-scaffold-bad name");
        let err = write_project(&NewProject {
            path: dir,
            modalkit_path: None,
            modalkit_git: None,
        })
        .unwrap_err();
        assert!(matches!(err, ScaffoldError::InvalidName(_)), "{err}");
    }
}
