//! Where the bundled tiny models live (fixtures/ at the repository root).

use std::path::PathBuf;

/// The repository's `fixtures/` folder.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures"))
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
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../conformance/goldens"))
}
