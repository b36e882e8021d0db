//! Where the repository's test data lives: the bundled tiny models (`fixtures/`), the golden
//! cases (`conformance/goldens/`) and the other test data (`conformance/tests/data/`), for the
//! tests of every crate.
//!
//! Resolution order: `$FASTDLLM_HOME` (a repository root), the repository this binary was built
//! from, then the current directory and its ancestors, so a binary copied to another machine
//! (e.g. a GPU box) still finds the data of the checkout it runs in.

use std::path::{Path, PathBuf};

const BUILD_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The repository root that holds `fixtures/`.
pub fn repo_root() -> PathBuf {
    let has_fixtures = |p: &Path| p.join("fixtures").join("llada-tiny").is_dir();
    if let Some(home) = std::env::var_os("FASTDLLM_HOME").map(PathBuf::from) {
        return home;
    }
    let build = PathBuf::from(BUILD_ROOT);
    if has_fixtures(&build) {
        return build;
    }
    if let Ok(cwd) = std::env::current_dir() {
        if let Some(found) = cwd.ancestors().find(|p| has_fixtures(p)) {
            return found.to_path_buf();
        }
    }
    build
}

/// The repository's `fixtures/` folder.
pub fn fixtures_dir() -> PathBuf {
    repo_root().join("fixtures")
}

/// The bundled model `name` (`llada-tiny` or `dream-tiny`).
pub fn bundled_model(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

/// The model used when no `--model` is given: the tiny LLaDA bundled in the repository.
pub fn default_model() -> PathBuf {
    bundled_model("llada-tiny")
}

/// The repository's golden cases folder.
pub fn goldens_dir() -> PathBuf {
    repo_root().join("conformance").join("goldens")
}

/// The repository's other test data (`conformance/tests/data`: chat templates and what
/// transformers renders of them).
pub fn test_data_dir() -> PathBuf {
    repo_root().join("conformance").join("tests").join("data")
}
