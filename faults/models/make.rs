//! Makes the bad model directories of the fault corpus from the bundled fixtures
//! (`fixtures/llada-tiny`, `fixtures/dream-tiny`, `fixtures/llada-moe-tiny`) at test time, so no broken binary is committed.
//! Included by `fastdllm-cli/tests/fault_corpus_cli.rs` (`#[path]`); std + serde_json only.
//!
//! Each fault names the directory it made and what `fastdllm generate --model DIR` must do:
//! fail with exit 2 and an `error:` line holding every needle (the file, field, tensor or value
//! at fault), or succeed with exactly the pristine fixture's output (faults that used to crash
//! the process but describe a usable model). Add a fault here whenever a new one is found (bad
//! GGUF files: `gguf.rs`).

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

/// What the binary must do with a fault.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Exit 2, one `error:` line containing every needle.
    Error(Vec<String>),
    /// Exit 0 with the same stdout as the pristine fixture `llada-tiny` / `dream-tiny`.
    SameAs(&'static str),
}

/// One bad model directory.
#[derive(Debug, Clone)]
pub struct ModelFault {
    /// Short name (`nan-weight`, ...).
    pub name: &'static str,
    /// The directory made.
    pub dir: PathBuf,
    /// The expected outcome.
    pub expect: Expect,
}

/// A safetensors file split into its header and data (little-endian u64 header length, JSON
/// header, raw bytes).
struct SafeTensors {
    header: Map<String, Value>,
    data: Vec<u8>,
}

fn read_st(path: &Path) -> SafeTensors {
    let bytes = fs::read(path).expect("read fixture safetensors");
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).expect("fixture header");
    SafeTensors {
        header: header.as_object().unwrap().clone(),
        data: bytes[8 + n..].to_vec(),
    }
}

fn write_st(path: &Path, st: &SafeTensors) {
    let mut header = serde_json::to_string(&st.header).unwrap();
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&st.data);
    fs::write(path, out).unwrap();
}

impl SafeTensors {
    /// Byte offset of element `i` of the F32 tensor `name`.
    fn f32_offset(&self, name: &str, i: usize) -> usize {
        let t = &self.header[name];
        assert_eq!(t["dtype"], "F32", "{name}");
        t["data_offsets"][0].as_u64().unwrap() as usize + 4 * i
    }

    fn set_f32(&mut self, name: &str, i: usize, value: f32) {
        let o = self.f32_offset(name, i);
        self.data[o..o + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// Appends an F32 tensor.
    fn push_f32(&mut self, name: &str, values: &[f32]) {
        let start = self.data.len();
        for v in values {
            self.data.extend_from_slice(&v.to_le_bytes());
        }
        self.header.insert(
            name.into(),
            json!({"dtype": "F32", "shape": [values.len()], "data_offsets": [start, self.data.len()]}),
        );
    }
}

/// Copies fixture `model` into `out/name`.
fn copy(fixtures: &Path, model: &str, out: &Path, name: &str) -> PathBuf {
    let dir = out.join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    for entry in fs::read_dir(fixtures.join(model)).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

fn edit_json(path: &Path, f: impl FnOnce(&mut Map<String, Value>)) {
    let mut v: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn set_config(dir: &Path, field: &str, value: Value) {
    edit_json(&dir.join("config.json"), |c| {
        c.insert(field.into(), value);
    });
}

fn edit_weights(dir: &Path, f: impl FnOnce(&mut SafeTensors)) {
    let path = dir.join("model.safetensors");
    let mut st = read_st(&path);
    f(&mut st);
    write_st(&path, &st);
}

/// Replaces `dir/file` by a FIFO (`mkfifo`).
fn fifo(dir: &Path, file: &str) {
    let path = dir.join(file);
    fs::remove_file(&path).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Makes every bad model directory under `out` (created if needed).
pub fn make_all(fixtures: &Path, out: &Path) -> Vec<ModelFault> {
    fs::create_dir_all(out).unwrap();
    let mut faults = Vec::new();
    let mut add = |name: &'static str, model: &str, expect: Expect, f: &dyn Fn(&Path)| {
        let dir = copy(fixtures, model, out, name);
        f(&dir);
        faults.push(ModelFault { name, dir, expect });
    };
    use Expect::SameAs;
    let err = |needles: &[&str]| Expect::Error(needles.iter().map(|n| n.to_string()).collect());
    const L: &str = "llada-tiny";
    const D: &str = "dream-tiny";
    const M: &str = "llada-moe-tiny";

    // Weights: values, dtypes, unused tensors, broken files.
    add(
        "nan-weight",
        L,
        err(&["model.transformer.blocks.1.attn_out.weight", "non-finite"]),
        &|d| {
            edit_weights(d, |st| {
                st.set_f32("model.transformer.blocks.1.attn_out.weight", 7, f32::NAN)
            })
        },
    );
    add(
        "inf-weight",
        D,
        err(&["lm_head.weight", "non-finite"]),
        &|d| edit_weights(d, |st| st.set_f32("lm_head.weight", 5, f32::INFINITY)),
    );
    add(
        "int-dtype",
        L,
        err(&["model.transformer.blocks.0.ff_norm.weight", "I32"]),
        &|d| {
            edit_weights(d, |st| {
                st.header["model.transformer.blocks.0.ff_norm.weight"]["dtype"] = json!("I32");
            })
        },
    );
    add(
        "unused-tensor",
        L,
        err(&["model.transformer.blocks.9.extra.weight", "not used"]),
        &|d| {
            edit_weights(d, |st| {
                st.push_f32("model.transformer.blocks.9.extra.weight", &[1.0; 4])
            })
        },
    );
    add(
        "too-few-layers",
        L,
        err(&["model.transformer.blocks.2.", "n_layers"]),
        &|d| set_config(d, "n_layers", json!(2)),
    );
    add(
        "too-few-layers-dream",
        D,
        err(&["model.layers.2.", "num_hidden_layers"]),
        &|d| set_config(d, "num_hidden_layers", json!(2)),
    );
    add("truncated-weights", L, err(&["model.safetensors"]), &|d| {
        let p = d.join("model.safetensors");
        let bytes = fs::read(&p).unwrap();
        fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    });
    add("empty-weights", L, err(&["model.safetensors"]), &|d| {
        fs::write(d.join("model.safetensors"), b"").unwrap()
    });
    add("huge-header-length", L, err(&["model.safetensors"]), &|d| {
        let p = d.join("model.safetensors");
        let mut bytes = fs::read(&p).unwrap();
        bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        fs::write(&p, bytes).unwrap();
    });
    // Config values.
    // Attribution: the file that set the value is the one named.
    add(
        "eos-out-of-range-in-generation-config",
        L,
        err(&["generation_config.json", "eos_token_id", "1000000"]),
        &|d| {
            edit_json(&d.join("generation_config.json"), |g| {
                g.insert("eos_token_id".into(), json!(1_000_000));
            })
        },
    );
    add(
        "eos-out-of-range-in-generation-config-moe",
        M,
        err(&["generation_config.json", "eos_token_id", "1000000"]),
        &|d| {
            edit_json(&d.join("generation_config.json"), |g| {
                g.insert("eos_token_id".into(), json!(1_000_000));
            })
        },
    );
    add(
        "mask-id-missing-from-both-files",
        L,
        err(&[
            "mask_token_id",
            "(missing)",
            "neither config.json nor generation_config.json",
        ]),
        &|d| {
            edit_json(&d.join("config.json"), |c| {
                c.remove("mask_token_id");
            });
            edit_json(&d.join("generation_config.json"), |g| {
                g.remove("mask_token_id");
            });
        },
    );
    add("mask-equals-eos", L, err(&["mask_token_id", "50"]), &|d| {
        set_config(d, "mask_token_id", json!(50))
    });
    add(
        "mask-equals-pad-dream",
        D,
        err(&["mask_token_id", "53"]),
        &|d| set_config(d, "mask_token_id", json!(53)),
    );
    add("huge-max-sequence-length", L, SameAs(L), &|d| {
        set_config(d, "max_sequence_length", json!(100_000_000u64))
    });
    add("huge-max-position-embeddings-dream", D, SameAs(D), &|d| {
        set_config(d, "max_position_embeddings", json!(100_000_000u64))
    });
    add(
        "max-sequence-length-past-u32",
        L,
        err(&["max_sequence_length", "99999999999"]),
        &|d| set_config(d, "max_sequence_length", json!(99_999_999_999u64)),
    );
    add("huge-vocab", L, err(&["vocab_size", "1000000000"]), &|d| {
        set_config(d, "vocab_size", json!(1_000_000_000u64))
    });
    add("zero-heads", L, err(&["n_heads"]), &|d| {
        set_config(d, "n_heads", json!(0))
    });
    add("negative-rope-theta", L, err(&["rope_theta"]), &|d| {
        set_config(d, "rope_theta", json!(-1.0))
    });
    add(
        "string-layers",
        L,
        err(&["config.json", "n_layers"]),
        &|d| set_config(d, "n_layers", json!("four")),
    );
    add("config-not-json", L, err(&["config.json"]), &|d| {
        fs::write(d.join("config.json"), "{").unwrap()
    });
    add("tokenizer-not-json", L, err(&["tokenizer.json"]), &|d| {
        fs::write(d.join("tokenizer.json"), "not json").unwrap()
    });
    // Special files and paths.
    add(
        "fifo-config",
        L,
        err(&["config.json", "not a regular file", "FIFO"]),
        &|d| fifo(d, "config.json"),
    );
    add(
        "fifo-generation-config",
        L,
        err(&["generation_config.json", "not a regular file"]),
        &|d| fifo(d, "generation_config.json"),
    );
    add(
        "fifo-weights",
        L,
        err(&["model.safetensors", "not a regular file"]),
        &|d| fifo(d, "model.safetensors"),
    );
    add(
        "directory-tokenizer",
        L,
        err(&["tokenizer.json", "not a regular file", "directory"]),
        &|d| {
            fs::remove_file(d.join("tokenizer.json")).unwrap();
            fs::create_dir(d.join("tokenizer.json")).unwrap();
        },
    );
    add(
        "device-weights",
        L,
        err(&["model.safetensors", "not a regular file"]),
        &|d| {
            fs::remove_file(d.join("model.safetensors")).unwrap();
            std::os::unix::fs::symlink("/dev/zero", d.join("model.safetensors")).unwrap();
        },
    );
    let outside = out.join("outside");
    let _ = fs::remove_dir_all(&outside);
    fs::create_dir_all(&outside).unwrap();
    fs::copy(
        fixtures.join(L).join("model.safetensors"),
        outside.join("weights.safetensors"),
    )
    .unwrap();
    let escape = outside.join("weights.safetensors");
    add(
        "symlinked-shard-escapes",
        L,
        err(&[
            "model-00001-of-00001.safetensors",
            "outside the model directory",
        ]),
        &|d| {
            let st = read_st(&d.join("model.safetensors"));
            let map: Map<String, Value> = st
                .header
                .keys()
                .filter(|k| *k != "__metadata__")
                .map(|k| (k.clone(), json!("model-00001-of-00001.safetensors")))
                .collect();
            fs::remove_file(d.join("model.safetensors")).unwrap();
            fs::write(
                d.join("model.safetensors.index.json"),
                json!({"weight_map": map}).to_string(),
            )
            .unwrap();
            std::os::unix::fs::symlink(&escape, d.join("model-00001-of-00001.safetensors"))
                .unwrap();
        },
    );
    add(
        "symlinked-weights-escape",
        L,
        err(&["model.safetensors", "outside the model directory"]),
        &|d| {
            fs::remove_file(d.join("model.safetensors")).unwrap();
            std::os::unix::fs::symlink(&escape, d.join("model.safetensors")).unwrap();
        },
    );
    add(
        "shard-path-dotdot",
        L,
        err(&["model.safetensors.index.json", "relative"]),
        &|d| {
            fs::remove_file(d.join("model.safetensors")).unwrap();
            fs::write(
                d.join("model.safetensors.index.json"),
                json!({"weight_map": {"model.transformer.wte.weight": "../outside/weights.safetensors"}})
                    .to_string(),
            )
            .unwrap();
        },
    );
    faults
}
