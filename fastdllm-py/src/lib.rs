//! Python bindings of fastdllm (`import fastdllm`): load a LLaDA / Dream model, generate with
//! the Fast-dLLM caches and parallel decoding (arXiv 2505.22618, §3.2-§3.3) through the same
//! engine and settings resolver as the `fastdllm` CLI, stream committed blocks, read the exact
//! forward's logits, and judge another implementation's outputs against the golden cases
//! (docs/JUDGE.md).
//!
//! This is the native module `fastdllm._fastdllm`; the Python package `fastdllm`
//! (`python/fastdllm/__init__.py`) re-exports it and adds the numpy view of the logits. Errors
//! are Python exceptions carrying the CLI's messages: `ValueError` for an invalid setting,
//! prompt or file content, `FileNotFoundError` / `OSError` for files, `TypeError` for an
//! unknown keyword, `RuntimeError` for a failure while generating.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use fastdllm_conformance::golden::{read_cases, Status, Tally, Verdict as RustVerdict};
use fastdllm_conformance::judge::{judge_outputs, parse_outputs, read_outputs};
use fastdllm_core::{
    ForwardInput, GenerateOptions, ModelFamily, PassthroughKv, Positions, TokenId,
};
use fastdllm_engine::{self as engine, Batch, Knobs, RowEvent, RowEvents, RowSink, Source};
use fastdllm_models::{LoadOptions, LoadedModel, QuantType, RawGenerationConfig};
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

/// The keyword arguments of [`Model::generate`] and [`Model::stream`] that are decoding knobs
/// (the CLI's flags, under the engine's names, [`fastdllm_engine::Param::name`]).
const KNOBS: &[&str] = &[
    "gen_length",
    "block_length",
    "steps",
    "cache",
    "refresh_every",
    "threshold",
    "factor",
    "unmask",
    "temperature",
    "top_p",
    "top_k",
    "remasking",
    "alg",
    "dream_original",
    "seed",
    "stop",
    "max_tokens",
    "finish",
];

fn models_err(e: fastdllm_models::Error) -> PyErr {
    match e {
        fastdllm_models::Error::MissingDir { .. } | fastdllm_models::Error::MissingFile { .. } => {
            PyFileNotFoundError::new_err(e.to_string())
        }
        // OSError, as huggingface_hub's own download errors are.
        fastdllm_models::Error::Io { .. } | fastdllm_models::Error::Hub { .. } => {
            PyOSError::new_err(e.to_string())
        }
        other => PyValueError::new_err(other.to_string()),
    }
}

/// An engine error: a setting is a `ValueError` with the CLI's message, the keyword in place of
/// the flag (`gen_length: invalid setting ...`), or the generation_config.json at fault named as
/// the CLI names it; anything else (the loop failing) a `RuntimeError`.
fn engine_err(e: engine::Error, generation_config: Option<&Path>) -> PyErr {
    match e {
        engine::Error::Setting { param, message } => {
            let file = format!("{}: ", engine::resolve::GENERATION_CONFIG);
            match (message.strip_prefix(&file), generation_config) {
                (Some(rest), Some(path)) => PyValueError::new_err(format!(
                    "{}: {rest} (override with {}=...)",
                    path.display(),
                    param.name()
                )),
                _ => PyValueError::new_err(format!("{}: {message}", param.name())),
            }
        }
        engine::Error::Core(fastdllm_core::Error::InvalidPrompt(m)) => PyValueError::new_err(m),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

fn anyhow_value_err(e: anyhow::Error) -> PyErr {
    let msg = format!("{e:#}");
    match e.downcast_ref::<fastdllm_models::Error>() {
        Some(fastdllm_models::Error::MissingDir { .. })
        | Some(fastdllm_models::Error::MissingFile { .. }) => PyFileNotFoundError::new_err(msg),
        Some(fastdllm_models::Error::Io { .. }) => PyOSError::new_err(msg),
        _ => match e.downcast_ref::<std::io::Error>() {
            Some(io) if io.kind() == std::io::ErrorKind::NotFound => {
                PyFileNotFoundError::new_err(msg)
            }
            Some(_) => PyOSError::new_err(msg),
            None => PyValueError::new_err(msg),
        },
    }
}

/// A loaded diffusion LLM (LLaDA or Dream) with its tokenizer and chat template.
///
/// `Model(path, device="cpu", dtype=None, quantize=None)`: `path` is a Hugging Face model
/// directory (config.json, safetensors, tokenizer.json), a llama.cpp GGUF file (or a
/// directory holding one), or a Hugging Face Hub model id (`"GSAI-ML/LLaDA-8B-Instruct"`:
/// resolved through the standard Hugging Face cache as the CLI's `--model` does, downloading
/// what is missing unless `HF_HUB_OFFLINE=1`; `HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT`,
/// `HF_TOKEN` apply; an existing local path wins); `device` is `"cpu"` or `"cuda"` (CUDA device 0, builds with the
/// `cuda` feature); `dtype` is `"f32"` (default, the golden cases' precision), `"bf16"` or
/// `"f16"`; `quantize` is `"q8_0"`, `"q4_k"`, `"q5_k"` or `"q6_k"` (linear layers quantized
/// at load). Raises FileNotFoundError for a missing directory or file, ValueError for a bad
/// config, dtype, device or quantization type, OSError for a hub id that cannot be resolved
/// (offline and not cached, unknown or refused repository, network failure).
#[pyclass(module = "fastdllm._fastdllm", subclass, frozen)]
struct Model {
    loaded: Arc<LoadedModel>,
    path: PathBuf,
    generation: Option<RawGenerationConfig>,
}

/// The result of one prompt of [`Model::generate`].
#[pyclass(module = "fastdllm._fastdllm", frozen, get_all)]
#[derive(Clone)]
struct GenerationResult {
    /// The answer text (chat template's end token and stop string removed).
    text: String,
    /// The answer's token ids (up to its end, without the end-of-sequence id).
    ids: Vec<TokenId>,
    /// The prompt's token ids (chat template applied unless `raw`).
    prompt_ids: Vec<TokenId>,
    /// The whole canvas after the prompt (`gen_length` ids; masks where decoding stopped early).
    generated_ids: Vec<TokenId>,
    /// Forward calls this prompt took part in (its NFE).
    nfe: usize,
    /// Tokens committed by each of those forwards.
    tokens_per_step: Vec<usize>,
    /// `stop` (end of sequence or a stop string) or `length`.
    finish_reason: String,
    /// Answer tokens (OpenAI's `completion_tokens`).
    completion_tokens: usize,
    /// Wall time of the whole call in seconds (every prompt of a batch shares it).
    wall_s: f64,
    /// Answer tokens of the whole call per wall second.
    tokens_per_s: f64,
}

#[pymethods]
impl GenerationResult {
    fn __repr__(&self) -> String {
        format!(
            "GenerationResult(text={:?}, nfe={}, finish_reason={:?}, completion_tokens={})",
            self.text, self.nfe, self.finish_reason, self.completion_tokens
        )
    }
}

/// One item of [`Model::stream`]: the answer text committed since the previous item.
#[pyclass(module = "fastdllm._fastdllm", frozen, get_all)]
#[derive(Clone)]
struct StreamChunk {
    /// The block whose every position is now committed (`None` on the last chunk).
    block: Option<usize>,
    /// Final answer text committed since the previous chunk (a tail a stop string could still
    /// cut is held back).
    text: String,
    /// On the last chunk: the whole result; `None` before.
    result: Option<GenerationResult>,
}

#[pymethods]
impl StreamChunk {
    fn __repr__(&self) -> String {
        format!(
            "StreamChunk(block={:?}, text={:?}, last={})",
            self.block,
            self.text,
            self.result.is_some()
        )
    }
}

enum StreamMsg {
    Chunk(StreamChunk),
    Error(String),
}

/// The iterator of [`Model::stream`]: generation runs on a thread of its own; dropping the
/// iterator cancels it after the current step.
#[pyclass(module = "fastdllm._fastdllm")]
struct Stream {
    rx: Arc<Mutex<mpsc::Receiver<StreamMsg>>>,
}

#[pymethods]
impl Stream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<StreamChunk>> {
        let rx = self.rx.clone();
        let next = py.detach(move || match rx.lock() {
            Ok(rx) => Ok(rx.recv()),
            Err(_) => Err(()),
        });
        match next.map_err(|()| PyRuntimeError::new_err("stream poisoned"))? {
            Ok(StreamMsg::Chunk(c)) => Ok(Some(c)),
            Ok(StreamMsg::Error(e)) => Err(PyRuntimeError::new_err(e)),
            Err(_) => Ok(None),
        }
    }
}

/// The prompts of a call: texts (chat template unless raw) or token ids, and whether the caller
/// gave one prompt (a single result back) or a list.
fn prompts_arg(obj: &Bound<'_, PyAny>) -> PyResult<(Vec<PromptArg>, bool)> {
    if let Ok(s) = obj.extract::<String>() {
        return Ok((vec![PromptArg::Text(s)], true));
    }
    if let Ok(ids) = obj.extract::<Vec<TokenId>>() {
        return Ok((vec![PromptArg::Ids(ids)], true));
    }
    if let Ok(list) = obj.extract::<Vec<String>>() {
        return Ok((list.into_iter().map(PromptArg::Text).collect(), false));
    }
    if let Ok(list) = obj.extract::<Vec<Vec<TokenId>>>() {
        return Ok((list.into_iter().map(PromptArg::Ids).collect(), false));
    }
    Err(PyTypeError::new_err(
        "prompt must be a str, a list of str, a list of token ids or a list of such lists",
    ))
}

enum PromptArg {
    Text(String),
    Ids(Vec<TokenId>),
}

impl Model {
    fn family(&self) -> ModelFamily {
        self.loaded.model.spec().family
    }

    fn generation_config_path(&self) -> Option<PathBuf> {
        self.generation
            .as_ref()
            .map(|_| self.path.join(engine::resolve::GENERATION_CONFIG))
    }

    /// The knobs of `kwargs` resolved over the model directory's defaults and the paper's, as
    /// the CLI resolves its flags ([`fastdllm_engine::resolve()`]).
    fn settings(
        &self,
        py: Python<'_>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<engine::GenerationSettings> {
        let mut knobs = Knobs::default();
        if let Some(kw) = kwargs {
            for key in kw.keys() {
                let key: String = key.extract()?;
                if !KNOBS.contains(&key.as_str()) {
                    return Err(PyTypeError::new_err(format!(
                        "unexpected keyword argument '{key}' (knobs: {})",
                        KNOBS.join(", ")
                    )));
                }
            }
            let json: String = py.import("json")?.call_method1("dumps", (kw,))?.extract()?;
            let mut de = serde_json::Deserializer::from_str(&json);
            knobs = serde_path_to_error::deserialize(&mut de)
                .map_err(|e| PyValueError::new_err(format!("{}: {}", e.path(), e.inner())))?;
        }
        engine::resolve(
            &[(Source::Flags, &knobs)],
            self.generation.as_ref(),
            self.family(),
        )
        .map(|r| r.settings)
        .map_err(|e| engine_err(e, self.generation_config_path().as_deref()))
    }

    fn encode_prompts(&self, prompts: Vec<PromptArg>, raw: bool) -> PyResult<Vec<Vec<TokenId>>> {
        let l = &self.loaded;
        prompts
            .into_iter()
            .map(|p| match p {
                PromptArg::Ids(ids) => Ok(ids),
                PromptArg::Text(t) => {
                    if t.trim().is_empty() {
                        return Err(PyValueError::new_err(
                            "the prompt is empty (give some text)",
                        ));
                    }
                    let text = if raw {
                        t
                    } else {
                        l.info.chat_template.apply(&t).map_err(models_err)?
                    };
                    let add_special = raw || l.info.chat_template.add_special_tokens();
                    l.tokenizer.encode(&text, add_special).map_err(models_err)
                }
            })
            .collect()
    }
}

fn result_of(
    prompt: &[TokenId],
    output: &fastdllm_core::RowOutput,
    answer: &engine::Answer,
    wall_s: f64,
    tokens: usize,
) -> GenerationResult {
    GenerationResult {
        text: answer.text.clone().unwrap_or_default(),
        ids: answer.token_ids.clone(),
        prompt_ids: prompt.to_vec(),
        generated_ids: output.generated.clone(),
        nfe: output.nfe,
        tokens_per_step: output.tokens_per_step.clone(),
        finish_reason: answer.finish_reason.as_str().to_string(),
        completion_tokens: answer.completion_tokens,
        wall_s,
        tokens_per_s: if wall_s > 0.0 {
            tokens as f64 / wall_s
        } else {
            0.0
        },
    }
}

/// Sends a streamed row's events to the iterator; a gone iterator cancels the row.
struct StreamSink {
    tx: mpsc::Sender<StreamMsg>,
    pending: String,
    gone: bool,
}

impl RowSink for StreamSink {
    fn event(&mut self, _row: fastdllm_core::RowId, event: RowEvent) {
        let chunk = match event {
            RowEvent::Text(t) => {
                self.pending.push_str(&t);
                return;
            }
            RowEvent::BlockCommitted(k) => StreamChunk {
                block: Some(k),
                text: std::mem::take(&mut self.pending),
                result: None,
            },
            // The last chunk is sent with the result, once the row has left the batch.
            RowEvent::Done(_) | RowEvent::Provisional(_) => return,
        };
        self.gone |= self.tx.send(StreamMsg::Chunk(chunk)).is_err();
    }

    fn cancelled(&mut self, _row: fastdllm_core::RowId) -> bool {
        self.gone
    }
}

fn parse_dtype(dtype: Option<&str>) -> PyResult<DType> {
    match dtype.unwrap_or("f32") {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => Err(PyValueError::new_err(format!(
            "dtype '{other}': must be f32, bf16 or f16"
        ))),
    }
}

fn parse_device(device: &str) -> PyResult<Device> {
    match device {
        "cpu" => Ok(Device::Cpu),
        "cuda" if cfg!(feature = "cuda") => {
            Device::new_cuda(0).map_err(|e| PyRuntimeError::new_err(e.to_string()))
        }
        "cuda" => Err(PyValueError::new_err(
            "device 'cuda': this build has no CUDA support (build with the `cuda` feature)",
        )),
        other => Err(PyValueError::new_err(format!(
            "device '{other}': must be cpu or cuda"
        ))),
    }
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (path, device = "cpu", dtype = None, quantize = None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        device: &str,
        dtype: Option<&str>,
        quantize: Option<&str>,
    ) -> PyResult<Self> {
        let device = parse_device(device)?;
        let dtype = parse_dtype(dtype)?;
        let quantize = quantize
            .map(|q| {
                q.parse::<QuantType>()
                    .map_err(|e| PyValueError::new_err(format!("quantize '{q}': {e}")))
            })
            .transpose()?;
        let options = LoadOptions::new(dtype).quantized(quantize);
        let (path, loaded) = py
            .detach(|| {
                let path = fastdllm_models::hub::resolve_model(&path)?;
                let loaded = fastdllm_models::load_model_with(&path, &device, &options)?;
                Ok((path, loaded))
            })
            .map_err(models_err)?;
        let generation = fastdllm_models::read_generation_config(&path).map_err(models_err)?;
        Ok(Model {
            loaded: Arc::new(loaded),
            path,
            generation,
        })
    }

    /// The model directory or GGUF file (for a hub id, its snapshot folder in the cache).
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// `"llada"` or `"dream"`.
    #[getter(family)]
    fn family_name(&self) -> &'static str {
        match self.family() {
            ModelFamily::Llada => "llada",
            ModelFamily::Dream => "dream",
        }
    }

    /// Rows of the LM head (logits per position).
    #[getter]
    fn vocab_size(&self) -> usize {
        self.loaded.model.spec().vocab_size
    }

    /// The `[MASK]` token id.
    #[getter]
    fn mask_token_id(&self) -> TokenId {
        self.loaded.model.spec().mask_token_id
    }

    /// Most canvas positions (prompt + gen_length).
    #[getter]
    fn max_seq_len(&self) -> usize {
        self.loaded.model.spec().max_seq_len
    }

    /// Token ids of a prompt as `generate` encodes it (chat template unless `raw`).
    #[pyo3(signature = (text, raw = false))]
    fn encode(&self, text: String, raw: bool) -> PyResult<Vec<TokenId>> {
        Ok(self
            .encode_prompts(vec![PromptArg::Text(text)], raw)?
            .remove(0))
    }

    /// Text of token ids (special tokens skipped).
    fn decode(&self, ids: Vec<TokenId>) -> PyResult<String> {
        self.loaded.tokenizer.decode(&ids).map_err(models_err)
    }

    /// The resolved settings of `**knobs` as a dict (what `generate` would run), or ValueError.
    #[pyo3(signature = (**knobs))]
    fn settings_for(
        &self,
        py: Python<'_>,
        knobs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let s = self.settings(py, knobs)?;
        let json = serde_json::to_string(&s).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        Ok(py.import("json")?.call_method1("loads", (json,))?.unbind())
    }

    /// Generates answers (see the package docstring for the knobs).
    #[pyo3(signature = (prompt, *, raw = false, **knobs))]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        raw: bool,
        knobs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let (prompts, single) = prompts_arg(prompt)?;
        let settings = self.settings(py, knobs)?;
        let prompts = self.encode_prompts(prompts, raw)?;
        let loaded = self.loaded.clone();
        let start = Instant::now();
        let gen = py
            .detach(|| {
                engine::run_batch(
                    loaded.model.as_ref(),
                    Some(&loaded.tokenizer),
                    &prompts,
                    &settings,
                    &GenerateOptions::default(),
                    &mut |_, _| {},
                )
            })
            .map_err(|e| engine_err(e, self.generation_config_path().as_deref()))?;
        let wall = start.elapsed().as_secs_f64();
        let tokens: usize = gen.answers.iter().map(|a| a.completion_tokens).sum();
        let results: Vec<GenerationResult> = prompts
            .iter()
            .zip(gen.rows.iter().zip(&gen.answers))
            .map(|(p, (row, answer))| result_of(p, row, answer, wall, tokens))
            .collect();
        if single {
            Ok(results
                .into_iter()
                .next()
                .expect("one prompt")
                .into_pyobject(py)?
                .into_any()
                .unbind())
        } else {
            Ok(results.into_pyobject(py)?.into_any().unbind())
        }
    }

    /// Generates one answer, yielding a chunk each time a block is committed.
    #[pyo3(signature = (prompt, *, raw = false, **knobs))]
    fn stream(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        raw: bool,
        knobs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Stream> {
        let (prompts, single) = prompts_arg(prompt)?;
        if !single {
            return Err(PyTypeError::new_err(
                "stream takes one prompt (a str or a list of token ids)",
            ));
        }
        let settings = self.settings(py, knobs)?;
        let prompt = self.encode_prompts(prompts, raw)?.remove(0);
        let loaded = self.loaded.clone();
        // Admission errors (a prompt too long for the model, ...) are raised here, not by the
        // first next().
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), engine::Error>>();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut batch = match Batch::new(
                loaded.model.as_ref(),
                Some(&loaded.tokenizer),
                &settings,
                GenerateOptions::default(),
            ) {
                Ok(b) => b,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let events = RowEvents {
                text: true,
                provisional: false,
                logprobs: None,
            };
            if let Err(e) = batch.admit(&prompt, &settings, events) {
                let _ = ready_tx.send(Err(e));
                return;
            }
            let _ = ready_tx.send(Ok(()));
            let mut sink = StreamSink {
                tx: tx.clone(),
                pending: String::new(),
                gone: false,
            };
            while !batch.is_empty() && !sink.gone {
                match batch.run_block(&mut sink) {
                    Ok(done) => {
                        for d in done {
                            let wall = start.elapsed().as_secs_f64();
                            let r = result_of(
                                &prompt,
                                &d.output,
                                &d.answer,
                                wall,
                                d.answer.completion_tokens,
                            );
                            let _ = tx.send(StreamMsg::Chunk(StreamChunk {
                                block: None,
                                text: std::mem::take(&mut sink.pending),
                                result: Some(r),
                            }));
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(StreamMsg::Error(e.to_string()));
                        return;
                    }
                }
            }
        });
        match py.detach(move || ready_rx.recv()) {
            Ok(Ok(())) => Ok(Stream {
                rx: Arc::new(Mutex::new(rx)),
            }),
            Ok(Err(e)) => Err(engine_err(e, self.generation_config_path().as_deref())),
            Err(_) => Err(PyRuntimeError::new_err("the generation thread ended early")),
        }
    }

    /// The exact (no-cache) forward's logits of `ids` as `(bytes, shape)`: float32, C order,
    /// shape `(len(ids), vocab_size)`, row i scoring the token at position i (Dream's shift
    /// applied). `fastdllm.Model.forward` wraps it as a numpy array.
    fn _forward(
        &self,
        py: Python<'_>,
        ids: Vec<TokenId>,
    ) -> PyResult<(Py<PyBytes>, (usize, usize))> {
        if ids.is_empty() {
            return Err(PyValueError::new_err(
                "ids is empty (give at least one token id)",
            ));
        }
        let spec = self.loaded.model.spec();
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= spec.vocab_size) {
            return Err(PyValueError::new_err(format!(
                "token id {bad} is out of the vocabulary (vocab_size {})",
                spec.vocab_size
            )));
        }
        if ids.len() > spec.max_seq_len {
            return Err(PyValueError::new_err(format!(
                "{} ids is more than the model's max_seq_len {}",
                ids.len(),
                spec.max_seq_len
            )));
        }
        let model = self.loaded.model.clone();
        let n = ids.len();
        let values: Vec<f32> = py
            .detach(|| -> candle_core::Result<Vec<f32>> {
                let tokens = Tensor::new(ids.as_slice(), model.device())?.unsqueeze(0)?;
                let input = ForwardInput {
                    tokens,
                    positions: Positions::Contiguous { start: 0 },
                    window_start: 0,
                    key_bias: None,
                    logits_rows: (0..n).into(),
                };
                let logits = model
                    .forward(&input, &mut PassthroughKv)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                logits
                    .squeeze(0)?
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1()
            })
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        let vocab = values.len() / n;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
        Ok((PyBytes::new(py, &bytes).unbind(), (n, vocab)))
    }

    fn __repr__(&self) -> String {
        format!(
            "Model(path={:?}, family={:?}, vocab_size={})",
            self.path.display().to_string(),
            self.family_name(),
            self.vocab_size()
        )
    }
}

/// One case's verdict (FORMAT.md section 10).
#[pyclass(module = "fastdllm._fastdllm", frozen, get_all)]
#[derive(Clone)]
struct Verdict {
    /// The case id.
    id: String,
    /// `"pass"`, `"fail"` or `"fragile"`.
    status: &'static str,
    /// First answer position whose id differs from the case's, or None.
    first_difference: Option<usize>,
    /// What differed (empty when it passed).
    problems: Vec<String>,
    /// Differences that do not fail the case, and what was not judged.
    notes: Vec<String>,
    /// Share of the expected answer positions produced.
    agreement: f64,
}

#[pymethods]
impl Verdict {
    fn __repr__(&self) -> String {
        format!(
            "Verdict(id={:?}, status={:?}, first_difference={:?})",
            self.id, self.status, self.first_difference
        )
    }
}

impl From<&RustVerdict> for Verdict {
    fn from(v: &RustVerdict) -> Self {
        Verdict {
            id: v.id.clone(),
            status: match v.status {
                Status::Pass => "pass",
                Status::Fail => "fail",
                Status::Fragile => "fragile",
            },
            first_difference: v.first_difference,
            problems: v.problems.clone(),
            notes: v.notes.clone(),
            agreement: v.agreement,
        }
    }
}

/// The verdicts of a judged outputs file and their tally.
#[pyclass(module = "fastdllm._fastdllm", frozen, get_all)]
struct Judgement {
    /// One verdict per case, in the cases files' order.
    verdicts: Vec<Verdict>,
    /// Passed cases.
    passed: usize,
    /// Failed cases.
    failed: usize,
    /// Fragile mismatches (not failures).
    fragile: usize,
    /// True when no case failed (the CLI's exit 0).
    ok: bool,
    /// The closing line `N passed, M failed[, K fragile]`.
    summary: String,
}

#[pymethods]
impl Judgement {
    fn __repr__(&self) -> String {
        format!("Judgement({:?})", self.summary)
    }
}

/// Judges outputs (JSON Lines `text`, named `source` in errors, or the file `path`) against
/// the golden cases of `cases` (paths), as `fastdllm conform --cases ... --judge ...`.
#[pyfunction]
#[pyo3(signature = (cases, path = None, text = None, source = "<outputs>", filter = None))]
fn _judge(
    cases: Vec<PathBuf>,
    path: Option<PathBuf>,
    text: Option<String>,
    source: &str,
    filter: Option<String>,
) -> PyResult<Judgement> {
    let cs = read_cases(&cases).map_err(anyhow_value_err)?;
    let outputs = match (path, text) {
        (Some(p), None) => read_outputs(&p),
        (None, Some(t)) => parse_outputs(&t, source),
        _ => return Err(PyTypeError::new_err("give exactly one of path and text")),
    }
    .map_err(anyhow_value_err)?;
    let verdicts = judge_outputs(&cs, &outputs, filter.as_deref()).map_err(anyhow_value_err)?;
    let mut tally = Tally::default();
    verdicts.iter().for_each(|v| tally.add(v));
    Ok(Judgement {
        verdicts: verdicts.iter().map(Verdict::from).collect(),
        passed: tally.passed,
        failed: tally.failed,
        fragile: tally.fragile,
        ok: tally.failed == 0,
        summary: tally.line(),
    })
}

/// The native module of the `fastdllm` package.
#[pymodule]
fn _fastdllm(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_class::<GenerationResult>()?;
    m.add_class::<StreamChunk>()?;
    m.add_class::<Stream>()?;
    m.add_class::<Verdict>()?;
    m.add_class::<Judgement>()?;
    m.add_function(wrap_pyfunction!(_judge, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
