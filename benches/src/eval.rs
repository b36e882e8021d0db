//! Task evaluation: prompt/answer pairs from JSON Lines, run under several generation settings,
//! scored by exact match, with the paper's speed measures (SPEC 3.2, 3.3).
//!
//! Task files (one JSON object a line, blank lines skipped, other fields ignored):
//!
//! * plain: `{"prompt": "copy 3dbk......=", "answer": "3dbk"}`: the model's answer (cut at the
//!   first EOS, decoded) is correct when its trimmed text equals the trimmed `answer`;
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
//!   loop (tokenized prompts in, scored answers out; model loading excluded), SPEC 3.3.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use fastdllm_cache::CacheMode;
use fastdllm_core::{DiffusionLm, GenerateOptions, ModelFamily, TokenId};
use fastdllm_models::LoadedModel;
use fastdllm_sampler::Unmask;
use serde::Serialize;

use conformance::engine::{self, trim_at_eos, GenerationSettings};

/// How a task's answer is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskFormat {
    /// `{"prompt", "answer"}`: trimmed text, exact match.
    Plain,
    /// `{"question", "answer": "... #### N"}`: final numbers.
    Gsm8k,
}

/// One prompt and its expected answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Task {
    /// The user message (before any chat template).
    pub prompt: String,
    /// The expected answer (GSM8K: the final number, commas removed).
    pub answer: String,
    /// How the answer is compared.
    pub format: TaskFormat,
    /// 1-based line of the task file.
    pub line: usize,
}

impl Task {
    /// Whether the model's decoded answer `output` is correct.
    pub fn is_correct(&self, output: &str) -> bool {
        match self.format {
            TaskFormat::Plain => output.trim() == self.answer.trim(),
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
    let answer = string_field("answer")?.context("missing field \"answer\"")?;
    if let Some(prompt) = string_field("prompt")? {
        if prompt.trim().is_empty() {
            bail!("field \"prompt\" is empty");
        }
        return Ok(Task {
            prompt,
            answer,
            format: TaskFormat::Plain,
            line,
        });
    }
    if let Some(question) = string_field("question")? {
        if question.trim().is_empty() {
            bail!("field \"question\" is empty");
        }
        let answer = gsm8k_final_answer(&answer).with_context(|| {
            "GSM8K answer has no final answer after \"#### \" (expected \"... #### 42\")"
        })?;
        return Ok(Task {
            prompt: question,
            answer,
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
    /// Cache approximation.
    pub cache: CacheMode,
    /// Unmasking rule.
    pub unmask: Unmask,
    /// Denoising steps (fixed schedules); `None`: the base settings' steps.
    pub steps: Option<usize>,
}

impl std::str::FromStr for SettingSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let text = s.trim();
        let help = "expected cache/rule[/steps=N], e.g. none/fixed, dual/threshold=0.9, \
                    prefix/factor=1, none/fixed/steps=16 (cache: none, prefix, dual)";
        let mut parts = text.split('/');
        let (Some(cache), Some(rule)) = (parts.next(), parts.next()) else {
            bail!("unknown setting '{text}': {help}");
        };
        let cache: CacheMode = cache
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
    /// The full settings for a model family: `base` with this cache mode, rule and steps.
    /// Dream's `fixed` is its timestep schedule.
    pub fn resolve(
        &self,
        base: &GenerationSettings,
        family: ModelFamily,
    ) -> Result<GenerationSettings> {
        let mut s = base.clone();
        s.cache.mode = self.cache;
        if self.cache == CacheMode::Off {
            s.cache.refresh_every = None;
        }
        s.unmask = match (family, self.unmask) {
            (ModelFamily::Dream, Unmask::Fixed) => Unmask::DreamTimesteps { eps: 1e-3 },
            (_, u) => u,
        };
        if let Some(n) = self.steps {
            s.decode.steps = n;
        }
        s.validate(family)
            .with_context(|| format!("setting '{}'", self.text))?;
        Ok(s)
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
    tasks
        .iter()
        .map(|t| {
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
    /// Per-task outcomes, in task order.
    pub outcomes: Vec<TaskOutcome>,
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
    let opts = GenerateOptions::default();
    let start = Instant::now();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for (chunk_tasks, chunk_prompts) in tasks.chunks(batch).zip(prompts.chunks(batch)) {
        // Row seeds follow the task's index, so the answers do not depend on --batch.
        let seeds = engine::row_seeds(settings.seed, outcomes.len(), chunk_prompts.len());
        let gen = engine::run(model, chunk_prompts, &seeds, settings, &opts)?;
        for (task, row) in chunk_tasks.iter().zip(&gen.rows) {
            let answer = trim_at_eos(&row.generated, eos);
            let output = loaded.tokenizer.decode(answer)?;
            outcomes.push(TaskOutcome {
                line: task.line,
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
        outcomes,
    })
}

/// The text table of several reports (Markdown, so it can be pasted into documents).
pub fn format_table(reports: &[SettingReport]) -> String {
    let mut out = String::from(
        "| setting | accuracy | mean NFE | tokens/forward | output tok/s | wall s |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in reports {
        out.push_str(&format!(
            "| {} | {:.3} ({}/{}) | {:.2} | {:.2} | {:.1} | {:.2} |\n",
            r.label,
            r.accuracy,
            r.correct,
            r.tasks,
            r.mean_nfe,
            r.tokens_per_forward,
            r.tokens_per_s,
            r.wall_s
        ));
    }
    out.push_str(
        "\ntokens/forward = answer tokens committed, EOS padding included / forwards; \
         output tok/s = tokens up to the first EOS / wall time (SPEC 3.3).\n",
    );
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
        cache: fastdllm_cache::CacheSettings {
            mode: CacheMode::Off,
            refresh_every: None,
        },
        unmask: Unmask::Fixed,
        proposer: fastdllm_sampler::ProposerConfig::default(),
        seed: 0,
    }
}
