//! Task evaluation: prompt/answer pairs from JSON Lines, run under several generation settings,
//! scored by exact match, with the paper's speed measures (docs/ALGORITHM.md §3.2, §3.3).
//!
//! Task files (one JSON object a line, blank lines skipped, other fields ignored):
//!
//! * plain: `{"prompt": "copy 3dbk......=", "answer": "3dbk"}`: the model's answer (cut at the
//!   first EOS, decoded) is correct when its trimmed text equals the trimmed `answer`; a task
//!   with several valid answers gives them as `"answers": ["oj", "qn", "bn"]` (correct when the
//!   output equals any of them; `answer` and `answers` may both be given) and may name its
//!   `"kind"` (accuracy is also reported per kind);
//! * GSM8K: `{"question": "...", "answer": "... #### 1,234"}`: the reference answer is the text
//!   after `#### ` with commas removed; the model's answer is extracted the same way when its text
//!   contains `####`, else it is the last number of the text. Numbers compare by value.
//!
//! A setting is `cache/rule[/steps=N]`: a [`CacheMode`] (`none`, `prefix`, `dual`), an [`Unmask`]
//! label (`fixed`, `threshold=0.9`, `factor=1`, ...) and optionally the number of denoising steps
//! of fixed schedules. For Dream models `fixed` means Dream's timestep schedule
//! ([`Unmask::DreamTimesteps`]), which is what Dream's reference uses when no threshold is set.
//!
//! Measures of one setting ([`SettingReport`]):
//!
//! * accuracy: exact-match fraction;
//! * mean NFE: forwards per prompt (a row's NFE is that of a solo run, whatever the batch);
//! * tokens per forward: tokens committed (the whole answer region, **EOS padding included**) /
//!   forwards, summed over prompts, the paper's "tokens per step" (Figure 5);
//! * output tokens/s: tokens up to the first EOS / wall time of the setting's whole evaluation
//!   loop (tokenized prompts in, scored answers out; model loading excluded), docs/ALGORITHM.md
//!   §3.3;
//! * cost: token positions processed by the network (window length x batch rows, summed over
//!   forwards) per prompt, and wall milliseconds per prompt;
//! * drift: the cache policy's probe-layer K drift over its cached forwards
//!   ([`fastdllm_cache::Adaptive::drift`]), mean and max.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use fastdllm_cache::{CacheMode, CacheSettings, CACHE_NAMES};
use fastdllm_core::{DiffusionLm, GenerateOptions, ModelFamily, TokenId};
use fastdllm_models::LoadedModel;
use fastdllm_sampler::Unmask;
use serde::Serialize;

use fastdllm_engine::{self as engine, trim_at_eos, GenerationSettings, Knobs, Source};

/// How a task's answer is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskFormat {
    /// `{"prompt", "answer"}`: trimmed text, exact match.
    Plain,
    /// `{"question", "answer": "... #### N"}`: final numbers.
    Gsm8k,
}

/// One prompt and its expected answer(s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Task {
    /// The user message (before any chat template).
    pub prompt: String,
    /// The expected answer (GSM8K: the final number, commas removed); with `answers`, the first
    /// valid answer.
    pub answer: String,
    /// Every valid answer (plain tasks; `[answer]` when the file gives only `answer`).
    pub answers: Vec<String>,
    /// The task's `kind` field, if any (accuracy is reported per kind).
    pub kind: Option<String>,
    /// How the answer is compared.
    pub format: TaskFormat,
    /// 1-based line of the task file.
    pub line: usize,
}

impl Task {
    /// Whether the model's decoded answer `output` is correct.
    pub fn is_correct(&self, output: &str) -> bool {
        match self.format {
            TaskFormat::Plain => self.answers.iter().any(|a| output.trim() == a.trim()),
            TaskFormat::Gsm8k => {
                extract_gsm8k_prediction(output).is_some_and(|p| same_number(&p, &self.answer))
            }
        }
    }
}

/// Parses one line of a task file (`line` is only used in messages).
pub fn parse_task_line(text: &str, line: usize) -> Result<Task> {
    let value: serde_json::Value =
        serde_json::from_str(text).with_context(|| "malformed JSON".to_string())?;
    let obj = value
        .as_object()
        .with_context(|| format!("expected a JSON object, got {}", kind_of(&value)))?;
    let string_field = |name: &str| -> Result<Option<String>> {
        match obj.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(serde_json::Value::Number(n)) if name == "answer" => Ok(Some(n.to_string())),
            Some(v) => bail!("field \"{name}\" must be a string, got {}", kind_of(v)),
        }
    };
    let kind = string_field("kind")?;
    let answers: Option<Vec<String>> = match obj.get("answers") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Array(items)) => {
            let list = items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    serde_json::Value::String(s) => Ok(s.clone()),
                    other => bail!(
                        "field \"answers\"[{i}] must be a string, got {}",
                        kind_of(other)
                    ),
                })
                .collect::<Result<Vec<_>>>()?;
            if list.is_empty() {
                bail!("field \"answers\" is an empty list (give at least one valid answer)");
            }
            Some(list)
        }
        Some(v) => bail!(
            "field \"answers\" must be a list of strings, got {}",
            kind_of(v)
        ),
    };
    let answer = string_field("answer")?;
    if let Some(prompt) = string_field("prompt")? {
        if prompt.trim().is_empty() {
            bail!("field \"prompt\" is empty");
        }
        let mut all: Vec<String> = answer.iter().cloned().collect();
        for a in answers.into_iter().flatten() {
            if !all.contains(&a) {
                all.push(a);
            }
        }
        let Some(first) = all.first().cloned() else {
            bail!("missing field \"answer\" (or \"answers\")");
        };
        return Ok(Task {
            prompt,
            answer: first,
            answers: all,
            kind,
            format: TaskFormat::Plain,
            line,
        });
    }
    if answers.is_some() {
        bail!("field \"answers\" applies to plain tasks (\"prompt\"), not GSM8K (\"question\")");
    }
    let answer = answer.context("missing field \"answer\"")?;
    if let Some(question) = string_field("question")? {
        if question.trim().is_empty() {
            bail!("field \"question\" is empty");
        }
        let answer = gsm8k_final_answer(&answer).with_context(|| {
            "GSM8K answer has no final answer after \"#### \" (expected \"... #### 42\")"
        })?;
        return Ok(Task {
            prompt: question,
            answers: vec![answer.clone()],
            answer,
            kind,
            format: TaskFormat::Gsm8k,
            line,
        });
    }
    bail!("expected a \"prompt\" (plain task) or \"question\" (GSM8K) field")
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Parses a whole task file's text; errors name `source:line`.
pub fn parse_tasks(text: &str, source: &str) -> Result<Vec<Task>> {
    let mut tasks = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let task = parse_task_line(l, i + 1).with_context(|| format!("{source}:{}", i + 1))?;
        tasks.push(task);
    }
    if tasks.is_empty() {
        bail!("{source}: no tasks (expected JSON Lines with \"prompt\"/\"answer\" or \"question\"/\"answer\")");
    }
    Ok(tasks)
}

/// Reads a task file (JSON Lines).
pub fn read_tasks(path: &Path) -> Result<Vec<Task>> {
    fastdllm_models::regular_file(path, "task file")?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read task file {}", path.display()))?;
    parse_tasks(&text, &path.display().to_string())
}

/// GSM8K's final answer: the text after the first `####` (first line only), trimmed, commas
/// removed. `None` without `####` or when nothing follows it.
pub fn gsm8k_final_answer(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("####")?;
    let first = rest.trim_start().lines().next().unwrap_or("").trim();
    let answer: String = first.chars().filter(|&c| c != ',').collect();
    (!answer.is_empty()).then_some(answer)
}

/// The last number of `text` (`-?digits[,digits]*[.digits]`), commas removed.
pub fn last_number(text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut last = None;
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = if i > 0 && chars[i - 1] == '-' {
            i - 1
        } else {
            i
        };
        let mut end = i;
        while end < chars.len() {
            let c = chars[end];
            let joins_digits = (c == ',' || c == '.')
                && end + 1 < chars.len()
                && chars[end + 1].is_ascii_digit()
                && end > i;
            if c.is_ascii_digit() || joins_digits {
                end += 1;
            } else {
                break;
            }
        }
        last = Some(
            chars[start..end]
                .iter()
                .filter(|&&c| c != ',')
                .collect::<String>(),
        );
        i = end;
    }
    last
}

/// The model's GSM8K answer: after `####` when the text has one, else its last number.
pub fn extract_gsm8k_prediction(text: &str) -> Option<String> {
    if text.contains("####") {
        gsm8k_final_answer(text).map(|a| last_number(&a).unwrap_or(a))
    } else {
        last_number(text)
    }
}

/// Equal as numbers when both parse, else as trimmed text (a trailing `.` ignored).
fn same_number(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.trim()
            .trim_end_matches('.')
            .trim_start_matches('$')
            .to_string()
    };
    let (a, b) = (norm(a), norm(b));
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// One `cache/rule[/steps=N]` entry of `--settings`, not yet tied to a model family.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingSpec {
    /// The text as given.
    pub text: String,
    /// Cache policy ([`CacheSettings`] names: `none`, `dual`, `dual+commits=2`, ...).
    pub cache: CacheSettings,
    /// Unmasking rule.
    pub unmask: Unmask,
    /// Denoising steps (fixed schedules); `None`: the base settings' steps.
    pub steps: Option<usize>,
}

impl std::str::FromStr for SettingSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let text = s.trim();
        let help = format!(
            "expected cache/rule[/steps=N], e.g. none/fixed, dual/threshold=0.9, \
             prefix/factor=1, none/fixed/steps=16, dual+commits=2/threshold=0.9 (cache: {CACHE_NAMES})"
        );
        let mut parts = text.split('/');
        let (Some(cache), Some(rule)) = (parts.next(), parts.next()) else {
            bail!("unknown setting '{text}': {help}");
        };
        let cache: CacheSettings = cache
            .trim()
            .parse()
            .with_context(|| format!("unknown setting '{text}': {help}"))?;
        let unmask: Unmask = rule
            .trim()
            .parse()
            .with_context(|| format!("unknown setting '{text}': {help}"))?;
        let steps = match parts.next() {
            None => None,
            Some(p) => {
                let n = p
                    .trim()
                    .strip_prefix("steps=")
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .filter(|&n| n > 0)
                    .with_context(|| {
                        format!("unknown setting '{text}': '{p}' is not steps=N (N > 0); {help}")
                    })?;
                Some(n)
            }
        };
        if parts.next().is_some() {
            bail!("unknown setting '{text}': {help}");
        }
        Ok(SettingSpec {
            text: text.to_string(),
            cache,
            unmask,
            steps,
        })
    }
}

impl SettingSpec {
    /// The knobs this entry sets: its cache name, its rule and its steps.
    pub fn knobs(&self) -> Knobs {
        Knobs {
            cache: Some(self.cache.label()),
            unmask: Some(self.unmask),
            steps: self.steps,
            ..Knobs::default()
        }
    }

    /// The full settings for a model family: this entry over `base` ([`fastdllm_engine::resolve()`]
    /// with the entry as the request and `base` as the flags): its cache and rule, its steps
    /// (else `base`'s). Dream's `fixed` is its timestep schedule ([`Unmask::count_schedule`]).
    /// Errors: the entry's settings fail a check (naming the entry and the knob).
    pub fn resolve(
        &self,
        base: &GenerationSettings,
        family: ModelFamily,
    ) -> Result<GenerationSettings> {
        let base = Knobs::from_settings(base);
        let resolved = fastdllm_engine::resolve(
            &[(Source::Request, &self.knobs()), (Source::Flags, &base)],
            None,
            family,
        )
        .with_context(|| format!("setting '{}'", self.text))?;
        Ok(resolved.settings)
    }
}

/// Parses a comma-separated `--settings` list.
pub fn parse_settings(list: &str) -> Result<Vec<SettingSpec>> {
    let specs: Vec<SettingSpec> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_>>()?;
    if specs.is_empty() {
        bail!("--settings is empty: give cache/rule pairs such as none/fixed,dual/threshold=0.9");
    }
    Ok(specs)
}

/// Report label of resolved settings: `cache/rule`, plus the steps for count schedules.
pub fn setting_label(s: &GenerationSettings) -> String {
    match s.unmask {
        Unmask::Fixed | Unmask::DreamTimesteps { .. } | Unmask::Origin { .. } => {
            format!("{} steps={}", s.label(), s.decode.steps)
        }
        _ => s.label(),
    }
}

/// Tokenizes every task's prompt: the chat template unless `raw` (raw: tokenizer encoding with
/// its special tokens, i.e. BOS for the tiny models).
pub fn encode_prompts(
    loaded: &LoadedModel,
    tasks: &[Task],
    raw: bool,
) -> Result<Vec<Vec<TokenId>>> {
    let cap = loaded
        .tokenizer
        .prompt_byte_cap(loaded.model.spec().max_seq_len);
    tasks
        .iter()
        .map(|t| {
            if t.prompt.len() > cap {
                bail!(
                    "the prompt of line {} is {} bytes, more than the {cap} that fit the model's maximum sequence length ({} tokens)",
                    t.line,
                    t.prompt.len(),
                    loaded.model.spec().max_seq_len
                );
            }
            let ids = if raw {
                loaded.tokenizer.encode(&t.prompt, true)
            } else {
                loaded
                    .tokenizer
                    .encode_prompt(&t.prompt, &loaded.info.chat_template)
            };
            ids.with_context(|| format!("cannot tokenize the prompt of line {}", t.line))
        })
        .collect()
}

/// Outcome of one task under one setting.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskOutcome {
    /// Line of the task file.
    pub line: usize,
    /// The task's kind, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The decoded answer (up to the first EOS).
    pub output: String,
    /// Exact match.
    pub correct: bool,
    /// Forwards of this prompt.
    pub nfe: usize,
    /// Tokens committed (answer region incl. EOS padding).
    pub committed: usize,
    /// Tokens up to the first EOS.
    pub output_tokens: usize,
}

/// Results of one setting over all tasks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettingReport {
    /// The `--settings` entry as given.
    pub setting: String,
    /// Resolved label ([`setting_label`]).
    pub label: String,
    /// The resolved settings.
    pub settings: GenerationSettings,
    /// Number of tasks.
    pub tasks: usize,
    /// Correct answers.
    pub correct: usize,
    /// `correct / tasks`.
    pub accuracy: f64,
    /// Mean forwards per prompt.
    pub mean_nfe: f64,
    /// Tokens committed (EOS padding included) / forwards.
    pub tokens_per_forward: f64,
    /// Tokens up to the first EOS, summed.
    pub output_tokens: usize,
    /// `output_tokens / wall_s`.
    pub tokens_per_s: f64,
    /// Wall time of the setting's evaluation loop.
    pub wall_s: f64,
    /// Prompts per engine call.
    pub batch: usize,
    /// Token positions processed by the network per prompt (window length x batch rows, summed
    /// over forwards, discarded forwards included).
    pub positions_per_prompt: f64,
    /// Wall milliseconds per prompt (`wall_s` / tasks).
    pub ms_per_prompt: f64,
    /// Mean probe-layer K drift of the cached forwards (`None` without cached forwards).
    pub drift_mean: Option<f64>,
    /// Largest probe-layer K drift of a cached forward.
    pub drift_max: Option<f64>,
    /// Full refreshes inside blocks (after a block's first forward) per prompt, per batch row.
    pub inblock_refreshes_per_prompt: f64,
    /// Accuracy per task `kind`, in order of first appearance (empty when no task has a kind).
    pub per_kind: Vec<KindScore>,
    /// Per-task outcomes, in task order.
    pub outcomes: Vec<TaskOutcome>,
}

/// Accuracy and mean NFE of the tasks of one `kind`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindScore {
    /// The kind.
    pub kind: String,
    /// Tasks of this kind.
    pub tasks: usize,
    /// Correct answers.
    pub correct: usize,
    /// `correct / tasks`.
    pub accuracy: f64,
    /// Mean forwards per prompt.
    pub mean_nfe: f64,
}

/// Accuracy per kind of `outcomes`, kinds in order of first appearance.
pub fn per_kind(outcomes: &[TaskOutcome]) -> Vec<KindScore> {
    let mut out: Vec<KindScore> = Vec::new();
    for o in outcomes {
        let Some(kind) = &o.kind else { continue };
        let i = match out.iter().position(|k| &k.kind == kind) {
            Some(i) => i,
            None => {
                out.push(KindScore {
                    kind: kind.clone(),
                    tasks: 0,
                    correct: 0,
                    accuracy: 0.0,
                    mean_nfe: 0.0,
                });
                out.len() - 1
            }
        };
        let k = &mut out[i];
        k.tasks += 1;
        k.correct += o.correct as usize;
        k.mean_nfe += o.nfe as f64;
    }
    for k in &mut out {
        k.accuracy = k.correct as f64 / k.tasks as f64;
        k.mean_nfe /= k.tasks as f64;
    }
    out
}

/// Runs every prompt under `settings`, `batch` prompts per engine call, and scores the answers.
/// `progress` is called with the number of prompts done after every engine call.
pub fn evaluate(
    loaded: &LoadedModel,
    tasks: &[Task],
    prompts: &[Vec<TokenId>],
    settings: &GenerationSettings,
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<SettingReport> {
    if tasks.len() != prompts.len() {
        bail!("{} prompts for {} tasks", prompts.len(), tasks.len());
    }
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let model: &dyn DiffusionLm = loaded.model.as_ref();
    let eos = &model.spec().eos_token_ids;
    // The trace gives the forwarded windows (cost) and the cache policy's drift signal.
    let opts = GenerateOptions {
        trace: true,
        drift: false,
    };
    let start = Instant::now();
    let mut outcomes = Vec::with_capacity(tasks.len());
    let mut positions = 0usize;
    let mut inblock_refreshes = 0usize;
    let mut drifts: Vec<f64> = Vec::new();
    for (chunk_tasks, chunk_prompts) in tasks.chunks(batch).zip(prompts.chunks(batch)) {
        // Every task draws from the seed itself: each task is its own request to a server, whose
        // first choice keeps the request's seed, so a seeded run of a client harness against
        // `fastdllm serve` equals this one. Rows draw independently: --batch changes nothing.
        let seeds = vec![settings.seed; chunk_prompts.len()];
        let gen = engine::run(model, chunk_prompts, &seeds, settings, &opts)?;
        for st in gen.trace.iter().flat_map(|t| &t.steps) {
            positions += st.window.len() * chunk_prompts.len();
            if st.step > 0 && st.kv == fastdllm_core::KvAccess::Refresh {
                inblock_refreshes += chunk_prompts.len();
            }
            drifts.extend(st.cache_signal);
        }
        for (task, row) in chunk_tasks.iter().zip(&gen.rows) {
            let answer = trim_at_eos(&row.generated, eos);
            let output = loaded.tokenizer.decode(answer)?;
            outcomes.push(TaskOutcome {
                line: task.line,
                kind: task.kind.clone(),
                correct: task.is_correct(&output),
                output,
                nfe: row.nfe,
                committed: row.tokens_per_step.iter().sum(),
                output_tokens: answer.len(),
            });
        }
        progress(outcomes.len());
    }
    let wall_s = start.elapsed().as_secs_f64();
    let n = outcomes.len();
    let correct = outcomes.iter().filter(|o| o.correct).count();
    let nfe: usize = outcomes.iter().map(|o| o.nfe).sum();
    let committed: usize = outcomes.iter().map(|o| o.committed).sum();
    let output_tokens: usize = outcomes.iter().map(|o| o.output_tokens).sum();
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Ok(SettingReport {
        setting: String::new(),
        label: setting_label(settings),
        settings: settings.clone(),
        tasks: n,
        correct,
        accuracy: ratio(correct as f64, n as f64),
        mean_nfe: ratio(nfe as f64, n as f64),
        tokens_per_forward: ratio(committed as f64, nfe as f64),
        output_tokens,
        tokens_per_s: ratio(output_tokens as f64, wall_s),
        wall_s,
        batch,
        positions_per_prompt: ratio(positions as f64, n as f64),
        ms_per_prompt: ratio(wall_s * 1e3, n as f64),
        drift_mean: (!drifts.is_empty()).then(|| drifts.iter().sum::<f64>() / drifts.len() as f64),
        drift_max: drifts.iter().copied().reduce(f64::max),
        inblock_refreshes_per_prompt: ratio(inblock_refreshes as f64, n as f64),
        per_kind: per_kind(&outcomes),
        outcomes,
    })
}

/// The text table of several reports (Markdown, so it can be pasted into documents).
pub fn format_table(reports: &[SettingReport]) -> String {
    let mut out = String::from(
        "| setting | accuracy | mean NFE | tokens/forward | positions/prompt | ms/prompt | drift mean / max | output tok/s | wall s |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let drift = match (r.drift_mean, r.drift_max) {
            (Some(m), Some(x)) => format!("{m:.3} / {x:.3}"),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "| {} | {:.3} ({}/{}) | {:.2} | {:.2} | {:.1} | {:.2} | {} | {:.1} | {:.2} |\n",
            r.label,
            r.accuracy,
            r.correct,
            r.tasks,
            r.mean_nfe,
            r.tokens_per_forward,
            r.positions_per_prompt,
            r.ms_per_prompt,
            drift,
            r.tokens_per_s,
            r.wall_s
        ));
    }
    out.push_str(
        "\ntokens/forward = answer tokens committed, EOS padding included / forwards; \
         positions = token positions processed by the network; drift = probe-layer K drift of \
         the cached forwards; output tok/s = tokens up to the first EOS / wall time \
         (docs/ALGORITHM.md §3.3).\n",
    );
    let kinds: Vec<&str> = {
        let mut ks: Vec<&str> = Vec::new();
        for k in reports.iter().flat_map(|r| &r.per_kind) {
            if !ks.contains(&k.kind.as_str()) {
                ks.push(&k.kind);
            }
        }
        ks
    };
    if !kinds.is_empty() {
        out.push_str(&format!(
            "\nAccuracy per kind (correct/tasks):\n\n| setting | {} |\n|---|{}\n",
            kinds.join(" | "),
            "---|".repeat(kinds.len())
        ));
        for r in reports {
            let cells: Vec<String> = kinds
                .iter()
                .map(|k| {
                    r.per_kind
                        .iter()
                        .find(|s| s.kind == *k)
                        .map(|s| format!("{}/{}", s.correct, s.tasks))
                        .unwrap_or_else(|| "-".into())
                })
                .collect();
            out.push_str(&format!("| {} | {} |\n", r.label, cells.join(" | ")));
        }
    }
    out
}

/// One JSON object per setting (no per-task outcomes unless `outcomes`).
pub fn report_json(r: &SettingReport, model: &Path, outcomes: bool) -> serde_json::Value {
    let mut v = serde_json::json!({
        "setting": r.setting,
        "label": r.label,
        "model": model.display().to_string(),
        "cache": r.settings.cache.label(),
        "rule": r.settings.unmask.label(),
        "gen_length": r.settings.decode.gen_length,
        "block_length": r.settings.decode.block_length,
        "steps": r.settings.decode.steps,
        "tasks": r.tasks,
        "correct": r.correct,
        "accuracy": r.accuracy,
        "mean_nfe": r.mean_nfe,
        "tokens_per_forward": r.tokens_per_forward,
        "output_tokens": r.output_tokens,
        "tokens_per_s": r.tokens_per_s,
        "wall_s": r.wall_s,
        "batch": r.batch,
        "positions_per_prompt": r.positions_per_prompt,
        "ms_per_prompt": r.ms_per_prompt,
        "drift_mean": r.drift_mean,
        "drift_max": r.drift_max,
        "inblock_refreshes_per_prompt": r.inblock_refreshes_per_prompt,
        "per_kind": r.per_kind,
    });
    if outcomes {
        v["outcomes"] = serde_json::to_value(&r.outcomes).unwrap_or_default();
    }
    v
}

/// Convenience for tests and scripts: load `model_dir` (f32, CPU), run `settings` (a
/// `--settings` list) over `tasks` on top of `base`, and return one report per setting.
pub fn run_eval(
    model_dir: &Path,
    tasks: &[Task],
    settings: &str,
    base: &GenerationSettings,
    raw: bool,
    batch: usize,
) -> Result<Vec<SettingReport>> {
    let specs = parse_settings(settings)?;
    let loaded = fastdllm_models::load_model(
        model_dir,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .with_context(|| format!("cannot load model {}", model_dir.display()))?;
    let family = loaded.model.spec().family;
    let resolved: Vec<GenerationSettings> = specs
        .iter()
        .map(|s| s.resolve(base, family))
        .collect::<Result<_>>()?;
    let prompts = encode_prompts(&loaded, tasks, raw)?;
    let mut reports = Vec::new();
    for (spec, s) in specs.iter().zip(&resolved) {
        let mut r = evaluate(&loaded, tasks, &prompts, s, batch, &mut |_| {})?;
        r.setting = spec.text.clone();
        reports.push(r);
    }
    Ok(reports)
}

/// Base settings for [`run_eval`]: greedy, no cache, fixed schedule, `steps` = `gen_length`.
pub fn base_settings(gen_length: usize, block_length: usize) -> GenerationSettings {
    GenerationSettings {
        decode: fastdllm_core::DecodeConfig {
            gen_length,
            block_length,
            steps: gen_length,
            force_block_start: None,
            max_steps_per_block: None,
        },
        cache: fastdllm_cache::CacheSettings::new(CacheMode::Off),
        unmask: Unmask::Fixed,
        proposer: fastdllm_sampler::ProposerConfig::default(),
        seed: 0,
        limits: Default::default(),
    }
}

/// One line of an XY chart: a name and its points `(x, y, point label)`.
pub struct XySeries {
    /// Legend name.
    pub name: String,
    /// Points, drawn joined in the given order.
    pub points: Vec<(f64, f64, String)>,
}

/// An XY line chart (points joined per series) as an `<svg>` element, drawn with [`crate::svg`]
/// as the bench report's bar charts are (same palette, escaping and number format).
pub fn line_chart(title: &str, x_unit: &str, y_unit: &str, series: &[XySeries]) -> String {
    use crate::svg::{fmt_num, px1, Svg, PALETTE};
    let (left, top, plot_w, plot_h, right) = (60.0, 48.0, 620.0, 360.0, 170.0);
    let (width, height) = (left + plot_w + right, top + plot_h + 50.0);
    let pts = || series.iter().flat_map(|s| s.points.iter());
    let x_max = pts()
        .map(|p| p.0)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let x_max = if x_max > 0.0 { x_max * 1.08 } else { 1.0 };
    let x = |v: f64| left + plot_w * (v / x_max).clamp(0.0, 1.0);
    // Accuracy axis: 0 to 1.
    let y = |v: f64| top + plot_h * (1.0 - v.clamp(0.0, 1.0));
    let mut s = Svg::new(width, height, "sans-serif");
    s.title(title);
    for i in 0..=5 {
        let v = i as f64 / 5.0;
        let gy = y(v);
        s.line((left, gy), (left + plot_w, gy), r##" stroke="#ddd""##, None);
        let label = r##" text-anchor="end" fill="#555""##;
        s.text(left - 4.0, gy + 3.0, label, &fmt_num(v));
        let xv = x_max * i as f64 / 5.0;
        let gx = x(xv);
        s.line((gx, top), (gx, top + plot_h), r##" stroke="#eee""##, None);
        let label = r##" text-anchor="middle" fill="#555""##;
        s.text(gx, top + plot_h + 14.0, label, &fmt_num(xv));
    }
    let middle = r#" text-anchor="middle""#;
    s.text(left + plot_w / 2.0, top + plot_h + 34.0, middle, x_unit);
    let mid_y = top + plot_h / 2.0;
    let rotated = format!(r#" text-anchor="middle" transform="rotate(-90 12 {mid_y})""#);
    s.text(12, mid_y, &rotated, y_unit);
    for (si, ser) in series.iter().enumerate() {
        let color = PALETTE[si % PALETTE.len()];
        let finite = || {
            ser.points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
        };
        let path: Vec<String> = finite()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
            .collect();
        let stroke = format!(r#" fill="none" stroke="{color}" stroke-width="1.5""#);
        s.polyline(&path.join(" "), &stroke);
        let fill = format!(r#" fill="{color}""#);
        for p in finite() {
            let tip = format!(
                "{} {}: {} tokens/forward, accuracy {}",
                ser.name,
                p.2,
                fmt_num(p.0),
                fmt_num(p.1)
            );
            s.circle((px1(x(p.0)), px1(y(p.1))), 3.5, &fill, Some(&tip));
        }
        let ly = top + 14.0 * si as f64;
        let lx = left + plot_w + 12.0;
        let stroke = format!(r#" stroke="{color}" stroke-width="2""#);
        s.line((lx, ly), (lx + 18.0, ly), &stroke, None);
        s.circle((lx + 9.0, ly), 3, &fill, None);
        s.text(lx + 24.0, ly + 4.0, "", &ser.name);
    }
    s.finish()
}

/// The HTML report of an evaluation: the paper's Figure 5 analog (accuracy against tokens per
/// forward, one point per unmasking rule, one line per cache policy, points ordered by tokens per
/// forward), the table of [`format_table`] and the per-kind accuracies.
pub fn html(reports: &[SettingReport], caption: &str) -> String {
    use crate::svg::{escape, html_page, TABLE_CSS};
    let mut series: Vec<XySeries> = Vec::new();
    for r in reports {
        let name = r.settings.cache.label();
        let point = (r.tokens_per_forward, r.accuracy, setting_label_rule(r));
        match series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push(point),
            None => series.push(XySeries {
                name,
                points: vec![point],
            }),
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let mut out = html_page("fastdllm eval", TABLE_CSS);
    out.push_str("<h1>fastdllm eval</h1>");
    out.push_str(&format!("<p>{}</p>", escape(caption)));
    out.push_str(&line_chart(
        "Accuracy vs tokens per forward (Fast-dLLM Figure 5 analog): one point per rule, one line per cache policy",
        "tokens per forward (answer tokens committed, EOS padding included / forwards)",
        "accuracy",
        &series,
    ));
    out.push_str("<h2>Settings</h2><table><tr><th>setting</th><th>accuracy</th><th>mean NFE</th><th>tokens/forward</th><th>positions/prompt</th><th>ms/prompt</th><th>drift mean</th><th>drift max</th></tr>");
    for r in reports {
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_default();
        out.push_str(&format!(
            "<tr><td class=l>{}</td><td>{:.3} ({}/{})</td><td>{:.2}</td><td>{:.2}</td><td>{:.1}</td><td>{:.2}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.label),
            r.accuracy,
            r.correct,
            r.tasks,
            r.mean_nfe,
            r.tokens_per_forward,
            r.positions_per_prompt,
            r.ms_per_prompt,
            opt(r.drift_mean),
            opt(r.drift_max)
        ));
    }
    out.push_str("</table>");
    let kinds: Vec<String> = {
        let mut ks: Vec<String> = Vec::new();
        for k in reports.iter().flat_map(|r| &r.per_kind) {
            if !ks.contains(&k.kind) {
                ks.push(k.kind.clone());
            }
        }
        ks
    };
    if !kinds.is_empty() {
        out.push_str("<h2>Accuracy per kind (correct / tasks)</h2><table><tr><th>setting</th>");
        for k in &kinds {
            out.push_str(&format!("<th>{}</th>", escape(k)));
        }
        out.push_str("</tr>");
        for r in reports {
            out.push_str(&format!("<tr><td class=l>{}</td>", escape(&r.label)));
            for k in &kinds {
                let cell = r
                    .per_kind
                    .iter()
                    .find(|s| &s.kind == k)
                    .map(|s| format!("{}/{}", s.correct, s.tasks))
                    .unwrap_or_default();
                out.push_str(&format!("<td>{cell}</td>"));
            }
            out.push_str("</tr>");
        }
        out.push_str("</table>");
    }
    out.push_str("</body></html>\n");
    out
}

/// The rule part of a report's label (`fixed steps=16`, `threshold=0.9`).
fn setting_label_rule(r: &SettingReport) -> String {
    match r.settings.unmask {
        Unmask::Fixed | Unmask::DreamTimesteps { .. } | Unmask::Origin { .. } => {
            format!(
                "{} steps={}",
                r.settings.unmask.label(),
                r.settings.decode.steps
            )
        }
        _ => r.settings.unmask.label(),
    }
}
