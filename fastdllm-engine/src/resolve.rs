//! From the knobs users set to [`GenerationSettings`]: one rule for every front end (CLI flags,
//! HTTP requests over the server's flags, `eval --settings` entries over a base).
//!
//! A knob ([`Knobs`], named as users spell it: [`Param`]) takes its value from the first source
//! that sets it, in this order:
//!
//! 1. the sources the front end passes to [`resolve()`], first wins: an HTTP request's fields
//!    ([`Source::Request`]) then the server's flags ([`Source::Flags`], see
//!    [`Knobs::from_settings`]); a command's flags; an `eval --settings` entry then the
//!    command's flags;
//! 2. the model directory's `generation_config.json` ([`Source::GenerationConfig`],
//!    [`Knobs::from_generation_config`]): its `fastdllm` object (`gen_length`, `block_length`,
//!    `steps`, `cache`, `threshold` — `null` = no threshold —, `factor`), then the transformers
//!    fields `max_new_tokens` (as `gen_length`), `temperature`, and for Dream `top_p`, `top_k`;
//! 3. the paper's accelerated setting ([`Source::Paper`], [`Knobs::paper`]; Fast-dLLM, arXiv
//!    2505.22618 §4: DualCache, threshold 0.9, block size 32, generation length 256), greedy.
//!
//! Rules that tie knobs together:
//!
//! * **canvas**: the first source that sets `gen_length` or an answer limit (`max_tokens`, or
//!   its other name `max_completion_tokens`, which must agree with it) decides `gen_length`:
//!   its `gen_length`, else its limit rounded up to whole blocks ([`Source::Derived`]). In one
//!   source the limit may not exceed `gen_length`;
//! * **steps** (count schedules): a source's `steps` applies only while the canvas
//!   (`gen_length`, `block_length`) is the one that source gives; a source above it that
//!   changes the canvas (a request's `gen_length` or `max_tokens`) makes `steps = gen_length`,
//!   one token per step ([`Source::Derived`]);
//! * **unmasking rule**: the first source that sets `threshold`, `factor`, `unmask`, `steps` or
//!   `dream_original` decides it: its threshold (arXiv 2505.22618 §3.2), factor or rule, else
//!   the family's count schedule ([`Unmask::count_schedule`]: LLaDA's fixed schedule, Dream's
//!   timestep schedule [`Unmask::DREAM_DEFAULT`]). A rule label `fixed` means the family's
//!   count schedule too. One source may set at most one of `threshold`, `factor`, `unmask`;
//! * **`dream_original`** (Dream's original sampler, whole answer one block): the sources
//!   below the one that sets it give no `cache`, `block_length` or rule, so it runs without
//!   cache, in one block of `gen_length`, with the timestep schedule unless told otherwise;
//! * **families**: `top_p` = 1 (no filter) is accepted for every family and stored as `None`;
//!   `top_p` < 1, `top_k`, `alg` and `dream_original` apply to Dream only, `remasking =
//!   random` to LLaDA only. A generation_config.json's `top_p` / `top_k` are read for Dream
//!   only.
//!
//! Every check is the libraries' own ([`GenerationSettings::validate`]: `DecodeConfig`,
//! `CacheSettings`, `Unmask`, `ProposerConfig`, `AnswerLimits`), its error mapped to the knob
//! the user sent: `max_tokens` when the canvas came from it, `block_length` when a
//! `block_length` the user sent does not divide a `gen_length` from further down, and so on.

use std::borrow::Cow;
use std::collections::BTreeMap;

use fastdllm_cache::{CacheMode, CacheSettings, CACHE_NAMES};
use fastdllm_core::{DecodeConfig, ModelFamily};
use fastdllm_models::RawGenerationConfig;
use fastdllm_sampler::{DreamScore, ProposerConfig, Remasking, Unmask};
use serde::Deserialize;

use crate::answer::{AnswerLimits, Finish};
use crate::error::{Error, Result};
use crate::settings::{GenerationSettings, Param};

/// The paper's generation length (answer positions G): Fast-dLLM, arXiv 2505.22618 §4.
pub const PAPER_GEN_LENGTH: usize = 256;
/// The paper's block size B (arXiv 2505.22618 §4).
pub const PAPER_BLOCK_LENGTH: usize = 32;
/// The paper's parallel-decoding threshold (arXiv 2505.22618 §3.2, §4).
pub const PAPER_THRESHOLD: f64 = 0.9;
/// The paper's cache approximation: DualCache (arXiv 2505.22618 §3.1, §4).
pub const PAPER_CACHE: CacheMode = CacheMode::Dual;

/// How messages about a value from the model's `generation_config.json` start
/// (`"generation_config.json: ..."`), so that a front end can name the file's path instead.
pub const GENERATION_CONFIG: &str = "generation_config.json";

/// Where a resolved value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// What the user asked for this generation: an HTTP request's fields, one
    /// `eval --settings` entry.
    Request,
    /// The command's flags (a CLI command's own, or the server's defaults for its requests).
    Flags,
    /// The model directory's `generation_config.json`.
    GenerationConfig,
    /// The paper's accelerated setting ([`Knobs::paper`]).
    Paper,
    /// Computed from other knobs (`steps = gen_length`, a canvas rounded up from `max_tokens`,
    /// one block for `dream_original`, the family's count schedule), or the engine's default
    /// where no source sets the knob (seed 0, `low_confidence`, finish `answer`).
    Derived,
}

impl Source {
    /// `request`, `flags`, `generation_config`, `paper`, `derived`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Request => "request",
            Source::Flags => "flags",
            Source::GenerationConfig => "generation_config",
            Source::Paper => "paper",
            Source::Derived => "derived",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `stop` as OpenAI takes it: one string or a list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Stop {
    /// The strings, in order.
    pub fn strings(&self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }
    }

    /// How many strings.
    pub fn len(&self) -> usize {
        match self {
            Stop::One(_) => 1,
            Stop::Many(v) => v.len(),
        }
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every user-facing knob, each optional (`None` = not set here: a later source decides).
///
/// Deserializes from an OpenAI request object with the extension fields (`gen_length`,
/// `block_length`, `steps`, `cache`, `threshold`, `factor`, `top_k`, ...); other fields of the
/// object are ignored here (a front end rejects unknown ones itself), `null` is "not set".
/// Units: lengths and steps in tokens; `temperature`, `top_p`, `threshold` are plain numbers.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Knobs {
    /// OpenAI's answer limit in tokens (>= 1; without `gen_length` the canvas is this rounded up
    /// to whole blocks).
    pub max_tokens: Option<usize>,
    /// OpenAI's newer name of `max_tokens` (chat); must agree with `max_tokens` when both are set.
    pub max_completion_tokens: Option<usize>,
    /// Answer positions G of the canvas (a multiple of `block_length`).
    pub gen_length: Option<usize>,
    /// Block size B.
    pub block_length: Option<usize>,
    /// Denoising steps of count schedules (a positive multiple of G / B); setting it selects
    /// the count schedule unless the same source sets a rule.
    pub steps: Option<usize>,
    /// A cache name as [`CacheSettings`] parses it: `none`, `prefix`, `dual`, or an adaptive
    /// policy such as `dual+commits=2`.
    pub cache: Option<String>,
    /// Refresh the cache every k steps inside a block (1 = exact); overrides the `+every=` of
    /// the cache name.
    pub refresh_every: Option<usize>,
    /// Threshold rule: unmask every candidate with confidence >= threshold, in (0, 1].
    pub threshold: Option<f64>,
    /// Factor rule, finite and > 0.
    pub factor: Option<f64>,
    /// A rule by its label ([`Unmask`]'s `FromStr`: `fixed`, `threshold=0.9`, `factor=1`,
    /// `dream_timesteps[=eps]`, `origin[=eps]`); `fixed` is the family's count schedule.
    #[serde(default, deserialize_with = "unmask_label")]
    pub unmask: Option<Unmask>,
    /// Sampling temperature: 0 = greedy, else finite and >= `MIN_TEMPERATURE`.
    pub temperature: Option<f64>,
    /// Nucleus filter in (0, 1]; 1 = off (accepted for every family).
    pub top_p: Option<f64>,
    /// Top-k filter, >= 1 (Dream).
    pub top_k: Option<usize>,
    /// LLaDA's confidence (`low_confidence`, `random`).
    pub remasking: Option<Remasking>,
    /// Dream's score of count schedules (`entropy`, `maskgit_plus`, `topk_margin`).
    pub alg: Option<DreamScore>,
    /// Dream's original no-cache sampler (whole answer one block, timestep schedule).
    pub dream_original: Option<bool>,
    /// Seed of the first row's random stream.
    pub seed: Option<u64>,
    /// Stop strings (none empty).
    pub stop: Option<Stop>,
    /// When a row stops decoding.
    pub finish: Option<Finish>,
}

fn unmask_label<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Unmask>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(label) => label.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

impl Knobs {
    /// The paper's accelerated setting (arXiv 2505.22618 §4): gen_length 256, block_length 32,
    /// DualCache, threshold 0.9, greedy.
    pub fn paper() -> Knobs {
        Knobs {
            gen_length: Some(PAPER_GEN_LENGTH),
            block_length: Some(PAPER_BLOCK_LENGTH),
            cache: Some(PAPER_CACHE.as_str().to_string()),
            threshold: Some(PAPER_THRESHOLD),
            temperature: Some(0.0),
            ..Knobs::default()
        }
    }

    /// The knobs a model directory's `generation_config.json` sets (see the module docs);
    /// `top_p` and `top_k` only for Dream (LLaDA's sampler has neither). A `threshold` or
    /// `factor` given as `null` (and neither given a number) is the count schedule.
    pub fn from_generation_config(g: &RawGenerationConfig, family: ModelFamily) -> Knobs {
        let dir = g.fastdllm.clone().unwrap_or_default();
        let (threshold, factor) = (dir.threshold.flatten(), dir.factor.flatten());
        let declared_none = (dir.threshold.is_some() || dir.factor.is_some())
            && threshold.is_none()
            && factor.is_none();
        let dream = family == ModelFamily::Dream;
        Knobs {
            gen_length: dir.gen_length.or(g.max_new_tokens),
            block_length: dir.block_length,
            steps: dir.steps,
            cache: dir.cache,
            threshold,
            factor,
            unmask: declared_none.then_some(Unmask::Fixed),
            temperature: g.temperature,
            top_p: g.top_p.filter(|_| dream),
            top_k: g.top_k.filter(|_| dream),
            ..Knobs::default()
        }
    }

    /// The knobs that give `s` back (for a source made of settings already resolved: the
    /// server's defaults, the base of `eval --settings`). The cache's refresh schedule stays in
    /// the cache name; with Dream's original sampler `block_length` is left to follow
    /// `gen_length`. Not knobs, so not carried: `max_steps_per_block`, `force_block_start =
    /// Some(true)`.
    pub fn from_settings(s: &GenerationSettings) -> Knobs {
        let dream_original = s.decode.force_block_start == Some(false);
        Knobs {
            max_tokens: s.limits.max_tokens,
            max_completion_tokens: None,
            gen_length: Some(s.decode.gen_length),
            block_length: (!dream_original).then_some(s.decode.block_length),
            steps: Some(s.decode.steps),
            cache: Some(s.cache.label()),
            refresh_every: None,
            threshold: None,
            factor: None,
            unmask: Some(s.unmask),
            temperature: Some(s.proposer.temperature),
            top_p: s.proposer.top_p,
            top_k: s.proposer.top_k,
            remasking: Some(s.proposer.remasking),
            alg: s.proposer.dream_score,
            dream_original: dream_original.then_some(true),
            seed: Some(s.seed),
            stop: (!s.limits.stop.is_empty()).then(|| Stop::Many(s.limits.stop.clone())),
            finish: Some(s.limits.finish),
        }
    }

    /// This source's answer limit and the name it was sent under.
    ///
    /// Errors: `max_tokens` and `max_completion_tokens` both set and different
    /// ([`Param::MaxCompletionTokens`]).
    fn limit(&self) -> Result<Option<(usize, Param)>> {
        match (self.max_tokens, self.max_completion_tokens) {
            (Some(m), Some(c)) if m != c => Err(Error::setting(
                Param::MaxCompletionTokens,
                format!(
                    "max_tokens = {m} and max_completion_tokens = {c} disagree (two names of the \
                     answer limit; give one)"
                ),
            )),
            (Some(m), _) => Ok(Some((m, Param::MaxTokens))),
            (None, Some(c)) => Ok(Some((c, Param::MaxCompletionTokens))),
            (None, None) => Ok(None),
        }
    }

    /// Whether this source decides the unmasking rule (see the module docs).
    fn decides_rule(&self) -> bool {
        self.threshold.is_some()
            || self.factor.is_some()
            || self.unmask.is_some()
            || self.steps.is_some()
            || self.dream_original == Some(true)
    }
}

/// Settings resolved from their sources, with where each knob came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The validated settings.
    pub settings: GenerationSettings,
    /// The source of every knob the settings hold: always `gen_length`, `block_length`,
    /// `steps`, `cache`, `unmask` (plus `threshold` or `factor` for those rules),
    /// `temperature`, `remasking`, `seed`, `finish`; the others when set.
    pub sources: BTreeMap<Param, Source>,
}

impl Resolved {
    /// Where `param` came from (`None`: not set anywhere).
    pub fn source(&self, param: Param) -> Option<Source> {
        self.sources.get(&param).copied()
    }
}

/// One source of knobs.
struct Layer<'a> {
    source: Source,
    knobs: Cow<'a, Knobs>,
}

/// The first layer of `layers` whose knob `f` is set, with its index.
fn first<T>(layers: &[Layer], f: impl Fn(&Knobs) -> Option<T>) -> Option<(T, usize)> {
    layers
        .iter()
        .enumerate()
        .find_map(|(i, l)| f(&l.knobs).map(|v| (v, i)))
}

/// `gen_length` and `block_length` of `layers`, and where they came from.
struct Canvas {
    gen_length: usize,
    /// The layer that set `gen_length`; `None`: rounded up from the answer limit.
    gen_layer: Option<usize>,
    /// The knob the canvas came from (`gen_length`, `max_tokens`, `max_completion_tokens`).
    gen_param: Param,
    block_length: usize,
    /// `None`: one block (`dream_original`).
    block_layer: Option<usize>,
    /// The layer of `dream_original = true`, the last one that gives cache, blocks and rule.
    dream_layer: Option<usize>,
}

impl Canvas {
    /// The canvas of `layers` (see the module docs). Errors: answer limits that disagree or
    /// exceed `gen_length` in one source, a limit too large to round up.
    fn of(layers: &[Layer]) -> Result<Canvas> {
        let dream_layer = match first(layers, |k| k.dream_original) {
            Some((true, i)) => Some(i),
            _ => None,
        };
        let floor = dream_layer.map_or(layers.len(), |i| i + 1);
        let block = first(&layers[..floor], |k| k.block_length);
        let mut decided = None;
        for (i, l) in layers.iter().enumerate() {
            let limit = l.knobs.limit().map_err(|e| at(layers, i, e))?;
            if l.knobs.gen_length.is_some() || limit.is_some() {
                decided = Some((i, l.knobs.gen_length, limit));
                break;
            }
        }
        let (i, gen, limit) = decided.unwrap_or((layers.len(), Some(PAPER_GEN_LENGTH), None));
        let (gen_length, gen_layer, gen_param) = match (gen, limit) {
            (Some(g), Some((l, p))) if l > g => {
                let msg = format!(
                    "{p} = {l} exceeds gen_length = {g} (the canvas the answer is decoded in); \
                     drop gen_length or raise it"
                );
                return Err(at(layers, i, Error::setting(p, msg)));
            }
            (Some(g), _) => (g, Some(i), Param::GenLength),
            (None, Some((l, p))) => {
                let g = match block {
                    Some((b, _)) if b > 0 => l.checked_next_multiple_of(b).ok_or_else(|| {
                        let msg = format!(
                            "{p} = {l} is too large (rounded up to whole blocks of {b} it \
                             overflows)"
                        );
                        at(layers, i, Error::setting(p, msg))
                    })?,
                    _ => l,
                };
                (g, None, p)
            }
            (None, None) => (PAPER_GEN_LENGTH, None, Param::GenLength),
        };
        let (block_length, block_layer) = match block {
            Some((b, j)) => (b, Some(j)),
            None if dream_layer.is_some() => (gen_length, None),
            None => (PAPER_BLOCK_LENGTH, None),
        };
        Ok(Canvas {
            gen_length,
            gen_layer,
            gen_param,
            block_length,
            block_layer,
            dream_layer,
        })
    }
}

/// `e` as coming from layer `i`: messages about a generation_config.json value say so.
fn at(layers: &[Layer], i: usize, e: Error) -> Error {
    match e {
        Error::Setting { param, message }
            if layers.get(i).map(|l| l.source) == Some(Source::GenerationConfig) =>
        {
            Error::setting(param, format!("{GENERATION_CONFIG}: {message}"))
        }
        e => e,
    }
}

/// Resolves the knobs of `sources` (first wins), then the model's `generation_config`, then
/// the paper's setting, into validated settings for a `family` model (see the module docs for
/// the rules).
///
/// Errors: [`Error::Setting`] naming the knob the user sent ([`Param`]), whose message is the
/// failing library check's (`invalid setting gen_length = 30: must be a multiple of
/// block_length = 8`, `threshold must be in (0, 1], got 1.5`, ...) with a hint where one helps;
/// a message about a value of the generation_config.json starts with [`GENERATION_CONFIG`].
pub fn resolve(
    sources: &[(Source, &Knobs)],
    generation_config: Option<&RawGenerationConfig>,
    family: ModelFamily,
) -> Result<Resolved> {
    let mut layers: Vec<Layer> = sources
        .iter()
        .map(|(source, knobs)| Layer {
            source: *source,
            knobs: Cow::Borrowed(*knobs),
        })
        .collect();
    if let Some(g) = generation_config {
        layers.push(Layer {
            source: Source::GenerationConfig,
            knobs: Cow::Owned(Knobs::from_generation_config(g, family)),
        });
    }
    layers.push(Layer {
        source: Source::Paper,
        knobs: Cow::Owned(Knobs::paper()),
    });
    Resolver {
        layers: &layers,
        family,
        from: BTreeMap::new(),
    }
    .run()
}

/// The resolution in progress: the layers, and the layer each knob came from (`None`: derived).
struct Resolver<'l, 'a> {
    layers: &'l [Layer<'a>],
    family: ModelFamily,
    from: BTreeMap<Param, Option<usize>>,
}

impl Resolver<'_, '_> {
    /// The first layer setting knob `f` (of the layers up to `end`), recorded as `param`'s source.
    fn pick<T>(&mut self, param: Param, end: usize, f: impl Fn(&Knobs) -> Option<T>) -> Option<T> {
        let (v, i) = first(&self.layers[..end], f)?;
        self.from.insert(param, Some(i));
        Some(v)
    }

    /// The layer index of `param`'s source; derived values rank below every layer.
    fn rank(&self, param: Param) -> usize {
        self.from
            .get(&param)
            .copied()
            .flatten()
            .unwrap_or(usize::MAX)
    }

    /// `e` attributed to `param`, with the generation_config.json prefix when it came from there.
    fn blame(&self, param: Param, message: String) -> Error {
        let mut message = message;
        if !message.contains(param.name()) {
            message = format!("{param}: {message}");
        }
        let e = Error::setting(param, message);
        match self.from.get(&param).copied().flatten() {
            Some(i) => at(self.layers, i, e),
            None => e,
        }
    }

    fn run(mut self) -> Result<Resolved> {
        let family = self.family;
        let dream = family == ModelFamily::Dream;
        let all = self.layers.len();

        // Answer limit: the first source that sets one; checked before it sizes the canvas.
        let mut limit = None;
        for (i, l) in self.layers.iter().enumerate() {
            if let Some(v) = l.knobs.limit().map_err(|e| at(self.layers, i, e))? {
                limit = Some((v, i));
                break;
            }
        }
        let limit_param = limit.map_or(Param::MaxTokens, |((_, p), _)| p);
        if let Some(((l, p), i)) = limit {
            self.from.insert(p, Some(i));
            let check = AnswerLimits {
                max_tokens: Some(l),
                ..AnswerLimits::default()
            };
            check
                .validate()
                .map_err(|e| self.blame(p, rename_limit(e.to_string(), p)))?;
        }

        // Dream's original sampler.
        let dream_original =
            self.pick(Param::DreamOriginal, all, |k| k.dream_original) == Some(true);
        if dream_original && !dream {
            return Err(self.blame(
                Param::DreamOriginal,
                format!(
                    "dream_original applies to Dream models only (this model is {family:?}: its \
                     reference has no such sampler)"
                ),
            ));
        }

        // Canvas, blocks, steps.
        let canvas = Canvas::of(self.layers)?;
        let (g, b) = (canvas.gen_length, canvas.block_length);
        self.from.insert(Param::GenLength, canvas.gen_layer);
        self.from.insert(Param::BlockLength, canvas.block_layer);
        let floor = canvas.dream_layer.map_or(all, |i| i + 1);
        let steps = match first(self.layers, |k| k.steps) {
            Some((s, i)) => {
                let same = Canvas::of(&self.layers[i..])
                    .is_ok_and(|c| (c.gen_length, c.block_length) == (g, b));
                if same {
                    self.from.insert(Param::Steps, Some(i));
                    s
                } else {
                    self.from.insert(Param::Steps, None);
                    g
                }
            }
            None => {
                self.from.insert(Param::Steps, None);
                g
            }
        };
        if dream_original && b != g {
            return Err(self.blame(
                Param::DreamOriginal,
                format!(
                    "dream_original decodes the whole answer as one block: block_length = {b} \
                     must equal gen_length = {g} (omit block_length or set it to {g})"
                ),
            ));
        }

        // Cache.
        let mut cache = match first(&self.layers[..floor], |k| k.cache.clone()) {
            Some((name, i)) => {
                self.from.insert(Param::Cache, Some(i));
                name.parse::<CacheSettings>().map_err(|e| {
                    self.blame(
                        Param::Cache,
                        format!("cache = '{name}': {e} (names: {CACHE_NAMES})"),
                    )
                })?
            }
            None => {
                self.from.insert(Param::Cache, None);
                CacheSettings::new(CacheMode::Off)
            }
        };
        if let Some(k) = self.pick(Param::RefreshEvery, all, |k| k.refresh_every) {
            cache.refresh_every = Some(k);
        }

        // Unmasking rule.
        let rule_layer = first(&self.layers[..floor], |k| k.decides_rule().then_some(()));
        let (unmask, rule_param) = match rule_layer {
            Some(((), i)) => {
                let k = &self.layers[i].knobs;
                let rule = match (k.threshold, k.factor, k.unmask) {
                    (Some(_), Some(_), _) => {
                        self.from.insert(Param::Threshold, Some(i));
                        return Err(self.blame(
                            Param::Threshold,
                            "threshold and factor are two unmasking rules: give at most one".into(),
                        ));
                    }
                    (Some(_), None, Some(u)) | (None, Some(_), Some(u)) => {
                        self.from.insert(Param::Unmask, Some(i));
                        return Err(self.blame(
                            Param::Unmask,
                            format!(
                                "unmask = {u} and threshold / factor are two unmasking rules: \
                                 give one"
                            ),
                        ));
                    }
                    (Some(t), None, None) => (Unmask::Threshold { threshold: t }, Param::Threshold),
                    (None, Some(f), None) => (Unmask::Factor { factor: f }, Param::Factor),
                    (None, None, Some(Unmask::Fixed)) => {
                        (Unmask::count_schedule(family), Param::Unmask)
                    }
                    (None, None, Some(u)) => (u, Param::Unmask),
                    (None, None, None) if k.steps.is_some() => {
                        (Unmask::count_schedule(family), Param::Steps)
                    }
                    (None, None, None) => (Unmask::count_schedule(family), Param::DreamOriginal),
                };
                self.from.insert(Param::Unmask, Some(i));
                if matches!(rule.1, Param::Threshold | Param::Factor) {
                    self.from.insert(rule.1, Some(i));
                }
                rule
            }
            None => {
                self.from.insert(Param::Unmask, None);
                (Unmask::count_schedule(family), Param::Unmask)
            }
        };

        // Proposer.
        let temperature = self.pick(Param::Temperature, all, |k| k.temperature);
        if temperature.is_none() {
            self.from.insert(Param::Temperature, None);
        }
        let top_p = self.pick(Param::TopP, all, |k| k.top_p);
        let top_k = self.pick(Param::TopK, all, |k| k.top_k);
        let remasking = self.pick(Param::Remasking, all, |k| k.remasking);
        if remasking.is_none() {
            self.from.insert(Param::Remasking, None);
        }
        let alg = self.pick(Param::Alg, all, |k| k.alg);

        // Seed and answer limits.
        let seed = self.pick(Param::Seed, all, |k| k.seed);
        if seed.is_none() {
            self.from.insert(Param::Seed, None);
        }
        let stop = self.pick(Param::Stop, all, |k| k.stop.clone());
        let finish = self.pick(Param::Finish, all, |k| k.finish);
        if finish.is_none() {
            self.from.insert(Param::Finish, None);
        }

        let settings = GenerationSettings {
            decode: DecodeConfig {
                gen_length: g,
                block_length: b,
                steps,
                force_block_start: dream_original.then_some(false),
                max_steps_per_block: None,
            },
            cache,
            unmask,
            proposer: ProposerConfig {
                temperature: temperature.unwrap_or(0.0),
                top_p,
                top_k,
                remasking: remasking.unwrap_or_default(),
                dream_score: alg,
            },
            seed: seed.unwrap_or(0),
            limits: AnswerLimits {
                max_tokens: limit.map(|((l, _), _)| l),
                stop: stop.map(|s| s.strings()).unwrap_or_default(),
                finish: finish.unwrap_or_default(),
            },
        };
        let ctx = Blame {
            canvas: &canvas,
            rule_param,
            limit_param,
            refresh_param: if self.from.contains_key(&Param::RefreshEvery) {
                Param::RefreshEvery
            } else {
                Param::Cache
            },
        };
        if let Err(e) = settings.validate(family) {
            let (param, message) = ctx.explain(&self, e);
            return Err(self.blame(param, message));
        }
        let mut settings = settings;
        self.check_family(&settings)?;
        // top_p = 1 keeps every token: no filter (Dream's reference skips it too).
        settings.proposer.top_p = settings.proposer.top_p.filter(|&p| p < 1.0);
        let sources = self
            .from
            .iter()
            .map(|(&p, &i)| (p, i.map_or(Source::Derived, |i| self.layers[i].source)))
            .collect();
        Ok(Resolved { settings, sources })
    }

    /// The knobs one family's sampler does not have (after the ranges are checked).
    fn check_family(&self, s: &GenerationSettings) -> Result<()> {
        let p = &s.proposer;
        match self.family {
            ModelFamily::Llada => {
                if let Some(top_p) = p.top_p.filter(|&x| x < 1.0) {
                    return Err(self.blame(
                        Param::TopP,
                        format!(
                            "top_p = {top_p} applies to Dream models only (LLaDA's sampler has \
                             no nucleus filter); omit top_p or send 1"
                        ),
                    ));
                }
                if let Some(k) = p.top_k {
                    return Err(self.blame(
                        Param::TopK,
                        format!(
                            "top_k = {k} applies to Dream models only (LLaDA's sampler has no \
                             top-k filter); omit top_k"
                        ),
                    ));
                }
                if let Some(a) = p.dream_score {
                    return Err(self.blame(
                        Param::Alg,
                        format!(
                            "alg = {} applies to Dream models only (LLaDA scores with remasking \
                             = low_confidence | random)",
                            a.as_str()
                        ),
                    ));
                }
            }
            ModelFamily::Dream => {
                if p.remasking != Remasking::LowConfidence {
                    return Err(self.blame(
                        Param::Remasking,
                        format!(
                            "remasking = {} applies to LLaDA models only (Dream's sampler has no \
                             random remasking; choose alg)",
                            p.remasking
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// How a library error maps onto the knobs of one resolution.
struct Blame<'c> {
    canvas: &'c Canvas,
    /// The knob that decided the unmasking rule.
    rule_param: Param,
    /// The name the answer limit was sent under.
    limit_param: Param,
    /// `refresh_every` when set as its own knob, else `cache` (its `+every=`).
    refresh_param: Param,
}

impl Blame<'_> {
    /// The knob at fault for a failure of [`GenerationSettings::validate`], and the message.
    fn explain(&self, r: &Resolver, e: Error) -> (Param, String) {
        let message = e.to_string();
        let c = self.canvas;
        match e {
            Error::Core(fastdllm_core::Error::InvalidSetting { name, .. }) => {
                let param = match name {
                    "gen_length"
                        if c.block_length > 0 && !c.gen_length.is_multiple_of(c.block_length) =>
                    {
                        let (g, b) = (c.gen_length, c.block_length);
                        let lo = g / b * b;
                        // The next multiple may not exist (g near usize::MAX).
                        let hint = match (lo > 0, lo.checked_add(b)) {
                            (true, Some(hi)) => format!("{lo} or {hi}"),
                            (true, None) => format!("{lo}"),
                            (false, _) => format!("{b}"),
                        };
                        let param = if r.rank(Param::BlockLength) < r.rank(c.gen_param) {
                            Param::BlockLength
                        } else {
                            c.gen_param
                        };
                        return (
                            param,
                            format!(
                                "{message} (the answer is decoded in blocks of {b} tokens; use \
                                 gen_length {hint}, or another block_length)"
                            ),
                        );
                    }
                    "gen_length" => c.gen_param,
                    "block_length" => Param::BlockLength,
                    _ => Param::Steps,
                };
                (param, message)
            }
            // The step cap `block_length + steps / blocks + 1` overflows.
            Error::Core(_) if r.from.get(&Param::Steps).copied().flatten().is_some() => {
                (Param::Steps, message)
            }
            Error::Core(_) => (Param::BlockLength, message),
            Error::Cache(fastdllm_cache::Error::InvalidSetting { name, .. }) => {
                let param = match name {
                    "refresh_every" => self.refresh_param,
                    _ => Param::Cache,
                };
                (param, message)
            }
            Error::Cache(_) => (Param::Cache, message),
            Error::Sampler(fastdllm_sampler::Error::InvalidSetting { name, .. }) => {
                let param = match name {
                    "temperature" => Param::Temperature,
                    "top_p" => Param::TopP,
                    "top_k" => Param::TopK,
                    // threshold, factor, eps: the rule, as it was sent.
                    _ => self.rule_param,
                };
                (param, message)
            }
            Error::Sampler(_) => (self.rule_param, message),
            Error::Setting {
                param: Param::MaxTokens,
                ..
            } => (self.limit_param, rename_limit(message, self.limit_param)),
            Error::Setting { param, .. } => (param, message),
            _ => (c.gen_param, message),
        }
    }
}

/// A message about `max_tokens` as the knob was sent (`max_completion_tokens`).
fn rename_limit(message: String, sent: Param) -> String {
    if sent == Param::MaxTokens {
        message
    } else {
        message.replacen("max_tokens", sent.name(), 1)
    }
}
