//! Makes the bad GGUF files of the fault corpus from the bundled `fixtures/gguf/llada-tiny-f32.gguf`
//! at test time (the header is parsed, edited and written again; the tensor data is copied), so
//! no broken binary is committed. llama.cpp refuses every one of them (its `gguf_init_from_file`
//! or its model loader); `fastdllm generate` must too, with exit 2 and one line naming the key or
//! tensor. Included by `fastdllm-cli/tests/fault_corpus_cli.rs` (`#[path]`, next to `make.rs`);
//! std only. GGUF layout: ggml's `docs/gguf.md` (little-endian; version 3: 64-bit counts).

use std::fs;
use std::path::Path;

use super::make::{Expect, ModelFault};

/// A GGUF file split into its header fields and its data section.
#[derive(Clone)]
struct Gguf {
    version: u32,
    /// Key, value type, value bytes as stored.
    kvs: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<TensorInfo>,
    /// The data section (from the first aligned byte after the header).
    data: Vec<u8>,
}

#[derive(Clone)]
struct TensorInfo {
    name: String,
    /// GGML order (`ne[0]` first).
    dims: Vec<u64>,
    ty: u32,
    offset: u64,
}

struct Cursor<'a>(&'a [u8], usize);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.0[self.1..self.1 + n];
        self.1 += n;
        s
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
    /// Skips one value of type `ty`.
    fn skip(&mut self, ty: u32) {
        match ty {
            0 | 1 | 7 => self.1 += 1,
            2 | 3 => self.1 += 2,
            4..=6 => self.1 += 4,
            10..=12 => self.1 += 8,
            8 => {
                let n = self.u64() as usize;
                self.1 += n;
            }
            9 => {
                let elem = self.u32();
                for _ in 0..self.u64() {
                    self.skip(elem);
                }
            }
            _ => panic!("GGUF value type {ty}"),
        }
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Gguf {
    fn read(path: &Path) -> Gguf {
        let bytes = fs::read(path).expect("read the GGUF fixture");
        let mut c = Cursor(&bytes, 4);
        let version = c.u32();
        let (n_tensors, n_kv) = (c.u64(), c.u64());
        let mut kvs = Vec::new();
        for _ in 0..n_kv {
            let key = c.string();
            let ty = c.u32();
            let start = c.1;
            c.skip(ty);
            kvs.push((key, ty, bytes[start..c.1].to_vec()));
        }
        let mut tensors = Vec::new();
        for _ in 0..n_tensors {
            let name = c.string();
            let n = c.u32();
            let dims = (0..n).map(|_| c.u64()).collect();
            let (ty, offset) = (c.u32(), c.u64());
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
            });
        }
        let mut g = Gguf {
            version,
            kvs,
            tensors,
            data: Vec::new(),
        };
        let start = c.1.next_multiple_of(g.alignment());
        g.data = bytes[start..].to_vec();
        g
    }

    fn alignment(&self) -> usize {
        self.kvs
            .iter()
            .find(|(k, _, _)| k == "general.alignment")
            .map_or(32, |(_, _, v)| {
                u32::from_le_bytes(v[..4].try_into().unwrap()) as usize
            })
    }

    fn write(&self, path: &Path) {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, ty, v) in &self.kvs {
            put_string(&mut out, k);
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(v);
        }
        for t in &self.tensors {
            put_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.to_le_bytes());
            out.extend_from_slice(&t.offset.to_le_bytes());
        }
        out.resize(out.len().next_multiple_of(self.alignment().max(1)), 0);
        out.extend_from_slice(&self.data);
        fs::write(path, out).unwrap();
    }

    /// Sets (or adds) the u32 key `key`.
    fn set_u32(&mut self, key: &str, v: u32) {
        let value = (4, v.to_le_bytes().to_vec());
        match self.kvs.iter_mut().find(|(k, _, _)| k == key) {
            Some(kv) => (kv.1, kv.2) = value,
            None => self.kvs.push((key.to_string(), value.0, value.1)),
        }
    }

    fn u32_of(&self, key: &str) -> u32 {
        let (_, _, v) = self.kvs.iter().find(|(k, _, _)| k == key).unwrap();
        u32::from_le_bytes(v[..4].try_into().unwrap())
    }

    /// Keeps the first `n` elements of the array key `key`.
    fn truncate_array(&mut self, key: &str, n: u64) {
        let kv = self.kvs.iter_mut().find(|(k, _, _)| k == key).unwrap();
        let v = &kv.2;
        let mut c = Cursor(v, 0);
        let elem = c.u32();
        c.u64();
        for _ in 0..n {
            c.skip(elem);
        }
        let mut out = elem.to_le_bytes().to_vec();
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&v[12..c.1]);
        kv.2 = out;
    }

    fn tensor(&mut self, name: &str) -> &mut TensorInfo {
        self.tensors.iter_mut().find(|t| t.name == name).unwrap()
    }

    /// The names of the tensors in offset order.
    fn by_offset(&self) -> Vec<String> {
        let mut t: Vec<_> = self
            .tensors
            .iter()
            .map(|t| (t.offset, t.name.clone()))
            .collect();
        t.sort();
        t.into_iter().map(|(_, n)| n).collect()
    }
}

/// Makes every bad GGUF model directory (one `model.gguf` each) under `out`.
pub fn make_all(fixtures: &Path, out: &Path) -> Vec<ModelFault> {
    let pristine = Gguf::read(&fixtures.join("gguf/llada-tiny-f32.gguf"));
    let order = pristine.by_offset();
    let blocks = pristine.u32_of("llada.block_count");
    let n_embd = pristine.u32_of("llada.embedding_length");
    let mut faults = Vec::new();
    let mut add = |name: &'static str, needles: &[&str], edit: &dyn Fn(&mut Gguf)| {
        let dir = out.join(name);
        fs::create_dir_all(&dir).unwrap();
        let mut g = pristine.clone();
        edit(&mut g);
        g.write(&dir.join("model.gguf"));
        let expect = Expect::Error(needles.iter().map(|n| n.to_string()).collect());
        faults.push(ModelFault { name, dir, expect });
    };
    add(
        "gguf-version-1",
        &["GGUF version 1 is not supported"],
        &|g| g.version = 1,
    );
    add(
        "gguf-version-4",
        &["GGUF version 4 is not supported"],
        &|g| g.version = 4,
    );
    add("gguf-alignment-0", &["`general.alignment` = 0"], &|g| {
        g.set_u32("general.alignment", 0)
    });
    // A tensor declared Q8_0 over f32-sized data: every later offset is off.
    add(
        "gguf-q8_0-type-over-f32-data",
        &["blk.0.attn_q.weight", "Q8_0"],
        &|g| g.tensor("blk.0.attn_q.weight").ty = 8,
    );
    let (second, third) = (order[1].clone(), order[2].clone());
    add("gguf-overlapping-tensors", &[&third, "overlaps"], &|g| {
        let at = g.tensor(&second).offset;
        g.tensor(&third).offset = at;
    });
    add("gguf-shifted-offset", &[&third, "gap"], &|g| {
        g.tensor(&third).offset += 32
    });
    add(
        "gguf-misaligned-offset",
        &[&third, "not a multiple of the alignment 32"],
        &|g| g.tensor(&third).offset += 1,
    );
    add(
        "gguf-truncated-data",
        &["truncated", order.last().unwrap()],
        &|g| {
            let n = g.data.len() - 100;
            g.data.truncate(n);
        },
    );
    add(
        "gguf-block-count-short",
        &["llada.block_count", &format!("= {}", blocks - 1)],
        &|g| g.set_u32("llada.block_count", blocks - 1),
    );
    add(
        "gguf-embedding-length",
        &["llada.embedding_length", "token_embd.weight"],
        &|g| g.set_u32("llada.embedding_length", n_embd * 2),
    );
    add("gguf-head-count-0", &["llada.attention.head_count"], &|g| {
        g.set_u32("llada.attention.head_count", 0)
    });
    add(
        "gguf-head-count-kv-3",
        &["llada.attention.head_count_kv"],
        &|g| g.set_u32("llada.attention.head_count_kv", 3),
    );
    add(
        "gguf-vocabulary-half-the-embedding-rows",
        &["tokenizer.ggml.tokens", "token_embd.weight"],
        &|g| {
            let rows = g.tensor("token_embd.weight").dims[1];
            g.truncate_array("tokenizer.ggml.tokens", rows / 2);
        },
    );
    add("gguf-huge-shape", &["blk.0.attn_q.weight"], &|g| {
        g.tensor("blk.0.attn_q.weight").dims = vec![1 << 40, 1 << 40]
    });
    // A FIFO named `model.gguf`, passed as the file and found in a directory.
    let dir = out.join("gguf-fifo");
    fs::create_dir_all(&dir).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(dir.join("model.gguf"))
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
    let expect = Expect::Error(vec![
        "model.gguf".into(),
        "not a regular file (FIFO)".into(),
    ]);
    faults.push(ModelFault {
        name: "gguf-fifo-as-the-model-file",
        dir: dir.join("model.gguf"),
        expect: expect.clone(),
    });
    faults.push(ModelFault {
        name: "gguf-fifo-in-the-model-directory",
        dir,
        expect,
    });
    faults
}
