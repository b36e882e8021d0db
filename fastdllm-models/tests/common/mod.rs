//! Helpers shared by the model tests that read the bundled fixtures (paths through
//! `fastdllm_conformance::paths`): throw-away model directories and the sample prompt.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use fastdllm_conformance::paths::bundled_model;

/// A fresh empty directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!(
            "fastdllm-models-test-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    /// A copy of the bundled model `name` (every file).
    pub fn copy_of(name: &str, tag: &str) -> Self {
        let dir = Self::new(tag);
        for entry in std::fs::read_dir(bundled_model(name)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.0.join(entry.file_name())).unwrap();
        }
        dir
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Edits `config.json` as a JSON value.
    pub fn edit_config(&self, edit: impl FnOnce(&mut serde_json::Value)) {
        let path = self.file("config.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut json);
        std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The prompt "copy abc=" of the fixture tokenizer followed by masks.
pub fn sample_ids() -> Vec<u32> {
    let mut ids = vec![51, 12, 24, 25, 34, 36, 10, 11, 12, 40];
    ids.extend([52; 8]);
    ids
}

/// `bytes` with the first occurrence of `from` after `after` replaced by `to` (same length).
pub fn patch(bytes: &[u8], after: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let find = |hay: &[u8], needle: &[u8], start: usize| {
        hay[start..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + start)
            .unwrap()
    };
    let a = find(bytes, after, 0) + after.len();
    let at = find(bytes, from, a);
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}
