//! Golden cases from the reference implementation (conformance/goldens/FORMAT.md) and the
//! verdict of FORMAT.md section 10, for any model, cache policy and unmasking policy.
//!
//! * [`read_cases`] loads JSON Lines golden files into [`Case`]s;
//! * [`run_case`] runs one case on any [`DiffusionLm`] with any [`CachePolicy`] and
//!   [`UnmaskPolicy`] (the proposer, decode settings and seed are the case's own);
//! * [`judge`] compares an output with the case (FORMAT.md section 10) and [`check_case`] does
//!   both, with the drift of every cached step from the exact forward when asked;
//! * [`Runner`] runs cases on the bundled models with the policies each case names.
//!
//! A cache approximation is checked against the exact path by running the no-cache cases
//! ([`Case::is_exact_path`]) with it in place of the exact policy: the verdict says where its
//! tokens leave the reference's exact output ([`Verdict::agreement`]) and how far its cached
//! logits drift from the exact forward ([`Verdict::drift`]).
//!
//! ```no_run
//! use fastdllm_conformance::golden::{check_case, read_cases, Status};
//! use fastdllm_conformance::paths::{bundled_model, goldens_dir};
//! use fastdllm_cache::{BlockCache, CacheMode, CacheSettings};
//! use fastdllm_sampler::SamplerProfile;
//!
//! # fn main() -> anyhow::Result<()> {
//! let model = fastdllm_models::load_model(
//!     &bundled_model("llada-tiny"),
//!     &candle_core::Device::Cpu,
//!     candle_core::DType::F32,
//! )?;
//! for case in read_cases(&[goldens_dir().join("llada-tiny.jsonl")])?
//!     .iter()
//!     .filter(|c| c.is_exact_path())
//! {
//!     // Your approximation here; the dual cache stands in for it.
//!     let mut cache = BlockCache::new(CacheSettings::new(CacheMode::Dual))?;
//!     let mut unmask = case.settings()?.unmask.build(SamplerProfile::llada(), 0)?;
//!     let v = check_case(model.model.as_ref(), case, &mut cache, unmask.as_mut(), true);
//!     println!("{}: {:?}, agreement {:.2}", v.id, v.status, v.agreement);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A case passes when the generated ids and the NFE equal the reference's; `unmask_step` and
//! `tokens_per_step` must match too, except where the case's `min_rank_margin` < 1e-8 (order
//! inside a cut may differ by float rounding; reported, not failed) and for `tie` cases, which
//! are compared with `tie_break_lowest_index` (we break ties by lower position). A mismatch in a
//! case with `min_threshold_gap` < 1e-8 is `fragile`, not failed. A case whose mode is not
//! implemented is a failure, never a skip.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use fastdllm_cache::{BlockCache, CacheMode, CacheSettings};
use fastdllm_core::{
    CachePolicy, DecodeConfig, DiffusionLm, GenerateOptions, Generation, ModelFamily, Policies,
    Rng, RowOutput, TokenId, UnmaskPolicy,
};
use fastdllm_sampler::{DreamScore, ProposerConfig, Remasking, SamplerProfile, Unmask};
use serde::{Deserialize, Serialize};

use fastdllm_engine::{AnswerLimits, Finish, GenerationSettings};

/// Margin under which the unmasking order inside a step may differ by rounding (FORMAT.md §9, §10).
pub const RANK_MARGIN_EPS: f64 = 1e-8;
/// Threshold gap under which a case is fragile (FORMAT.md §10).
pub const THRESHOLD_GAP_EPS: f64 = 1e-8;
/// Our extension of FORMAT.md §10 for Dream, whose scores are float32 values: an order-only
/// mismatch (ids and NFE exact) whose `min_rank_margin` is below 4 float32 ulps of values in
/// [0.5, 1) is float rounding of the score, not a logic error. Such cases are reported as
/// `fragile` (never as passed). FORMAT's 1e-8 is below one float32 ulp near 1, so it cannot
/// excuse a one-ulp reordering of float32 scores.
pub const F32_RANK_MARGIN_EPS: f64 = 4.0 * (f32::EPSILON as f64) / 2.0;

/// The reference call's arguments (LLaDA and Dream fields together).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Params {
    /// `steps`.
    pub steps: usize,
    /// `gen_length` (Dream: `max_new_tokens`).
    pub gen_length: usize,
    /// `block_length`.
    pub block_length: usize,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: f64,
    /// LLaDA remasking.
    #[serde(default)]
    pub remasking: Option<String>,
    /// Threshold rule.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Factor rule.
    #[serde(default)]
    pub factor: Option<f64>,
    /// Dream `alg`.
    #[serde(default)]
    pub alg: Option<String>,
    /// Dream dual cache flag.
    #[serde(default)]
    pub dual_cache: Option<bool>,
    /// Dream top_p.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Dream top_k.
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Dream alg_temp.
    #[serde(default)]
    pub alg_temp: Option<f64>,
    /// Dream eps.
    #[serde(default)]
    pub eps: Option<f64>,
}

/// The lowest-index tie-break rebuild of a tie case.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TieBreak {
    /// Full output.
    pub output_ids: Vec<TokenId>,
    /// Unmask steps.
    pub unmask_step: Vec<Option<usize>>,
    /// Tokens per step.
    pub tokens_per_step: Vec<usize>,
    /// NFE.
    pub nfe: usize,
}

/// One golden case (FORMAT.md section 6; fields we do not judge are ignored).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Case {
    /// Unique id.
    pub id: String,
    /// Folder name under fixtures/.
    pub model: String,
    /// Reference function.
    pub function: String,
    /// none | prefix | dual.
    pub cache: String,
    /// fixed | threshold | factor | fixed_{alg}.
    pub rule: String,
    /// Input ids, BOS included.
    pub prompt_ids: Vec<TokenId>,
    /// Call arguments.
    pub params: Params,
    /// Expected answer ids.
    pub generated_ids: Vec<TokenId>,
    /// Expected NFE.
    pub nfe: usize,
    /// Expected unmask step per answer position.
    pub unmask_step: Vec<Option<usize>>,
    /// Expected tokens per step.
    pub tokens_per_step: Vec<usize>,
    /// Smallest confidence gap at a ranking cut.
    #[serde(default)]
    pub min_rank_margin: Option<f64>,
    /// Smallest distance of a compared confidence to its threshold.
    #[serde(default)]
    pub min_threshold_gap: Option<f64>,
    /// Exact tie at a cut.
    #[serde(default)]
    pub tie: bool,
    /// The lower-index-first rebuild (tie cases).
    #[serde(default)]
    pub tie_break_lowest_index: Option<TieBreak>,
}

impl Case {
    /// Whether the case is a call of the reference's exact path (no cache): the output any
    /// cache approximation is measured against.
    pub fn is_exact_path(&self) -> bool {
        self.cache == "none"
    }

    /// The model family of the case's model (`dream*` folders are Dream, the rest LLaDA).
    pub fn family(&self) -> ModelFamily {
        if self.model.starts_with("dream") {
            ModelFamily::Dream
        } else {
            ModelFamily::Llada
        }
    }

    /// The policies the case itself names: a [`BlockCache`] of its cache mode and its
    /// unmasking rule, built for `family` with the case's seed.
    pub fn policies(
        &self,
        family: ModelFamily,
    ) -> Result<(BlockCache, Box<dyn UnmaskPolicy + Send>)> {
        let s = self.settings()?;
        Ok((
            BlockCache::new(s.cache)?,
            s.unmask.build(SamplerProfile::for_family(family), s.seed)?,
        ))
    }

    /// The settings that reproduce the reference call.
    pub fn settings(&self) -> Result<GenerationSettings> {
        let p = &self.params;
        let mut decode = DecodeConfig {
            gen_length: p.gen_length,
            block_length: p.block_length,
            steps: p.steps,
            force_block_start: None,
            max_steps_per_block: None,
        };
        let cache_mode: CacheMode = self.cache.parse()?;
        let mut proposer = ProposerConfig {
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k,
            remasking: Remasking::LowConfidence,
            dream_score: None,
        };
        if let Some(r) = &p.remasking {
            proposer.remasking = r.parse()?;
        }
        if p.alg_temp.is_some_and(|t| t > 0.0) {
            bail!("alg_temp > 0 is not implemented");
        }
        let unmask = match (self.family() == ModelFamily::Dream, self.rule.as_str()) {
            (false, "fixed") => Unmask::Fixed,
            (false, "threshold") => Unmask::Threshold {
                threshold: need(p.threshold, "threshold")?,
            },
            (false, "factor") => Unmask::Factor {
                factor: need(p.factor, "factor")?,
            },
            (true, "threshold") => Unmask::Threshold {
                threshold: need(p.threshold, "threshold")?,
            },
            (true, rule) if rule.starts_with("fixed_") => {
                let eps = p.eps.map_or(fastdllm_sampler::DEFAULT_EPS, |e| e as f32);
                if self.function.starts_with("generation_utils._sample") {
                    // Dream's original sampler: the whole answer is one block, no forced start.
                    decode.force_block_start = Some(false);
                    proposer.dream_score = Some(match &rule["fixed_".len()..] {
                        "entropy" => DreamScore::NegEntropy,
                        "maskgit_plus" => DreamScore::Probability,
                        "topk_margin" => DreamScore::Margin,
                        other => bail!("Dream original sampler alg '{other}' is not implemented"),
                    });
                }
                Unmask::DreamTimesteps { eps }
            }
            (_, rule) => bail!("rule '{rule}' of model '{}' is not implemented", self.model),
        };
        Ok(GenerationSettings {
            decode,
            cache: CacheSettings::new(cache_mode),
            unmask,
            proposer,
            seed: 0,
            // The reference decodes the whole canvas: its NFE and every position are compared.
            limits: AnswerLimits {
                finish: Finish::Canvas,
                ..AnswerLimits::default()
            },
        })
    }
}

fn need(v: Option<f64>, name: &str) -> Result<f64> {
    v.ok_or_else(|| anyhow!("case has no '{name}' parameter"))
}

/// Reads cases from JSON Lines files.
pub fn read_cases(files: &[PathBuf]) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    for f in files {
        fastdllm_models::regular_file(f, "golden cases file")?;
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read cases file {}", f.display()))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let case: Case = serde_json::from_str(line).with_context(|| {
                format!(
                    "{}:{}: not a golden case (FORMAT.md section 6)",
                    f.display(),
                    i + 1
                )
            })?;
            cases.push(case);
        }
    }
    Ok(cases)
}

/// Verdict of one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Ids and NFE (and the order, where required) match.
    Pass,
    /// A mismatch that FORMAT.md section 10 counts as a failure.
    Fail,
    /// A mismatch in a case within float rounding of a threshold.
    Fragile,
}

/// One case's result.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Case id.
    pub id: String,
    /// pass | fail | fragile.
    pub status: Status,
    /// What differed (empty when it passed).
    pub problems: Vec<String>,
    /// Notes on differences that do not fail the case.
    pub notes: Vec<String>,
    /// First answer position whose id differs from the case's (the shorter length when one is
    /// a prefix of the other); `None` when the ids are equal or the case could not run.
    pub first_difference: Option<usize>,
    /// The generated ids judged (empty if the case could not run).
    pub generated_ids: Vec<TokenId>,
    /// The NFE judged.
    pub nfe: usize,
    /// Our unmask steps (empty when not reported).
    pub unmask_step: Vec<Option<usize>>,
    /// Share of the expected answer positions whose id we generated (1.0 when the ids match;
    /// 0.0 when the case could not run): how far a cache approximation's tokens stay on the
    /// exact path.
    pub agreement: f64,
    /// Drift summary of the cached steps, when measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<fastdllm_core::DriftStats>,
}

/// Judges our output against the case (FORMAT.md section 10): [`judge_observed`] with every
/// field of the row.
pub fn judge(case: &Case, out: &RowOutput) -> Verdict {
    judge_observed(
        case,
        &Observed {
            generated: &out.generated,
            nfe: out.nfe,
            unmask_step: Some(&out.unmask_step),
            tokens_per_step: Some(&out.tokens_per_step),
        },
    )
}

/// What an implementation produced for one case, as the judge reads it: ours
/// ([`RowOutput`], through [`judge`]) or another implementation's ([`crate::judge::Output`]).
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The answer positions (`gen_length` ids, FORMAT.md section 6 `generated_ids`).
    pub generated: &'a [TokenId],
    /// Forward calls (NFE).
    pub nfe: usize,
    /// Forward index that committed each answer position; `None` when not reported (the order
    /// is then not judged, and the verdict says so in a note).
    pub unmask_step: Option<&'a [Option<usize>]>,
    /// Tokens committed by each forward; `None` when not reported.
    pub tokens_per_step: Option<&'a [usize]>,
}

/// Judges an output against the case by FORMAT.md section 10: ids and NFE must equal the
/// case's; the unmasking order (`unmask_step`, `tokens_per_step`) too when it is reported, except
/// where `min_rank_margin` < 1e-8 (a note) and for `tie` cases (compared with
/// `tie_break_lowest_index`). A mismatch where `min_threshold_gap` < 1e-8 is
/// [`Status::Fragile`], as is a Dream order-only mismatch within float32 rounding
/// ([`F32_RANK_MARGIN_EPS`]); every other mismatch is [`Status::Fail`].
pub fn judge_observed(case: &Case, out: &Observed<'_>) -> Verdict {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let mut order_rounding = false;
    let first_difference = first_diff(&case.generated_ids, out.generated);
    if let Some(pos) = first_difference {
        problems.push(format!(
            "generated ids differ at answer position {pos}: expected {:?}, got {:?}",
            case.generated_ids.get(pos),
            out.generated.get(pos)
        ));
    }
    if case.nfe != out.nfe {
        problems.push(format!("nfe: expected {}, got {}", case.nfe, out.nfe));
    }
    let (want_steps, want_tps) = match (&case.tie_break_lowest_index, case.tie) {
        (Some(tb), true) => (&tb.unmask_step, &tb.tokens_per_step),
        _ => (&case.unmask_step, &case.tokens_per_step),
    };
    let order_ok = match (out.unmask_step, out.tokens_per_step) {
        (Some(steps), Some(tps)) => want_steps.as_slice() == steps && want_tps.as_slice() == tps,
        (steps, tps) => {
            notes.push(format!(
                "{} not reported: the unmasking order is not judged",
                match (steps, tps) {
                    (None, None) => "unmask_step and tokens_per_step",
                    (None, _) => "unmask_step",
                    _ => "tokens_per_step",
                }
            ));
            true
        }
    };
    if !order_ok {
        let steps = out.unmask_step.unwrap_or_default();
        let msg = match first_diff(want_steps, steps) {
            Some(pos) => format!(
                "unmask_step differs at answer position {pos}: expected {:?}, got {:?}",
                want_steps.get(pos),
                steps.get(pos)
            ),
            None => format!(
                "tokens_per_step: expected {want_tps:?}, got {:?}",
                out.tokens_per_step.unwrap_or_default()
            ),
        };
        if case.min_rank_margin.is_some_and(|m| m < RANK_MARGIN_EPS) {
            notes.push(format!(
                "{msg} (excused: min_rank_margin {:?} < 1e-8)",
                case.min_rank_margin
            ));
        } else {
            if case.model.starts_with("dream")
                && case
                    .min_rank_margin
                    .is_some_and(|m| m < F32_RANK_MARGIN_EPS)
            {
                order_rounding = true;
            }
            problems.push(msg);
        }
    }
    let ids_and_nfe_exact = out.generated == case.generated_ids.as_slice() && out.nfe == case.nfe;
    let status = if problems.is_empty() {
        Status::Pass
    } else if case
        .min_threshold_gap
        .is_some_and(|g| g < THRESHOLD_GAP_EPS)
    {
        Status::Fragile
    } else if order_rounding && ids_and_nfe_exact && problems.len() == 1 {
        notes.push(format!(
            "order-only mismatch within float32 rounding of Dream's scores (min_rank_margin {:?} < {F32_RANK_MARGIN_EPS:.2e})",
            case.min_rank_margin
        ));
        Status::Fragile
    } else {
        Status::Fail
    };
    Verdict {
        id: case.id.clone(),
        status,
        problems,
        notes,
        first_difference,
        generated_ids: out.generated.to_vec(),
        nfe: out.nfe,
        unmask_step: out.unmask_step.map(<[_]>::to_vec).unwrap_or_default(),
        agreement: agreement(&case.generated_ids, out.generated),
        drift: None,
    }
}

fn agreement(want: &[TokenId], got: &[TokenId]) -> f64 {
    if want.is_empty() {
        return if got.is_empty() { 1.0 } else { 0.0 };
    }
    let same = want.iter().zip(got).filter(|(a, b)| a == b).count();
    same as f64 / want.len() as f64
}

/// Runs `case` on `model` with the given cache and unmasking policies. The proposer (logits →
/// proposed token and confidence), the decode settings and the seed are the case's own
/// ([`Case::settings`]), so only the two policies differ from the reference call.
///
/// Errors when the case's settings are not implemented or invalid for the model's family
/// (e.g. Dream's original sampler with a cached mode), or when generation fails (a prompt longer
/// than the model's positions, a policy breaking its contract).
pub fn run_case(
    model: &dyn DiffusionLm,
    case: &Case,
    cache: &mut dyn CachePolicy,
    unmask: &mut dyn UnmaskPolicy,
    opts: &GenerateOptions,
) -> Result<Generation> {
    let settings = case.settings()?;
    let spec = model.spec();
    settings.validate(spec.family)?;
    let mut proposer = settings.proposer.build_for_model(
        SamplerProfile::for_spec(spec),
        &settings.unmask,
        spec.mask_token_id,
    )?;
    let gen = fastdllm_core::generate(
        model,
        std::slice::from_ref(&case.prompt_ids),
        &settings.decode,
        Policies {
            cache,
            proposer: proposer.as_mut(),
            unmask,
        },
        &mut [Rng::new(settings.seed)],
        opts,
    )
    .with_context(|| format!("case {}", case.id))?;
    Ok(gen)
}

/// [`run_case`] then [`judge`]. With `drift`, every cached (approximate) step is also run
/// exactly and the difference is summarised in [`Verdict::drift`] (those extra forwards are not
/// counted in the NFE). A case that cannot run is a [`Status::Fail`] verdict with the reason.
pub fn check_case(
    model: &dyn DiffusionLm,
    case: &Case,
    cache: &mut dyn CachePolicy,
    unmask: &mut dyn UnmaskPolicy,
    drift: bool,
) -> Verdict {
    let opts = GenerateOptions {
        trace: drift,
        drift,
    };
    match run_case(model, case, cache, unmask, &opts) {
        Ok(gen) => {
            let mut v = judge(case, &gen.rows[0]);
            v.drift = gen.trace.as_ref().and_then(|t| t.drift_summary());
            v
        }
        Err(e) => failed(case, e),
    }
}

fn failed(case: &Case, e: anyhow::Error) -> Verdict {
    Verdict {
        id: case.id.clone(),
        status: Status::Fail,
        problems: vec![format!("could not run: {e:#}")],
        notes: Vec::new(),
        first_difference: None,
        generated_ids: Vec::new(),
        nfe: 0,
        unmask_step: Vec::new(),
        agreement: 0.0,
        drift: None,
    }
}

fn first_diff<T: PartialEq>(a: &[T], b: &[T]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// Runs cases, loading each model directory once.
pub struct Runner {
    models: HashMap<PathBuf, fastdllm_models::LoadedModel>,
    model_override: Option<PathBuf>,
    device: candle_core::Device,
    dtype: candle_core::DType,
    /// Measure drift of cached steps.
    pub drift: bool,
    /// Quantize the linear layers at load (`--quantize`).
    pub quantize: Option<fastdllm_models::QuantType>,
}

impl Runner {
    /// A runner on `device`/`dtype`; `model_override` replaces every case's model directory.
    pub fn new(
        model_override: Option<PathBuf>,
        device: candle_core::Device,
        dtype: candle_core::DType,
    ) -> Self {
        Runner {
            models: HashMap::new(),
            model_override,
            device,
            dtype,
            drift: false,
            quantize: None,
        }
    }

    fn model_dir(&self, case: &Case) -> PathBuf {
        self.model_override
            .clone()
            .unwrap_or_else(|| crate::paths::bundled_model(&case.model))
    }

    fn model(&mut self, dir: &Path) -> Result<&fastdllm_models::LoadedModel> {
        if !self.models.contains_key(dir) {
            let options = fastdllm_models::LoadOptions::new(self.dtype).quantized(self.quantize);
            let m = fastdllm_models::load_model_with(dir, &self.device, &options)?;
            self.models.insert(dir.to_path_buf(), m);
        }
        Ok(&self.models[dir])
    }

    /// Runs and judges one case with the policies it names ([`Case::policies`]) on its model;
    /// a case that cannot run is a failure with the reason.
    pub fn run(&mut self, case: &Case) -> Verdict {
        let dir = self.model_dir(case);
        let drift = self.drift;
        let model = match self.model(&dir) {
            Ok(m) => m,
            Err(e) => return failed(case, e),
        };
        let family = model.model.spec().family;
        match case.policies(family) {
            Ok((mut cache, mut unmask)) => check_case(
                model.model.as_ref(),
                case,
                &mut cache,
                unmask.as_mut(),
                drift,
            ),
            Err(e) => failed(case, e),
        }
    }
}

/// Totals of a run, printed as the closing line `N passed, M failed[, K fragile]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Passed cases.
    pub passed: usize,
    /// Failed cases.
    pub failed: usize,
    /// Fragile mismatches.
    pub fragile: usize,
}

impl Tally {
    /// Counts a verdict.
    pub fn add(&mut self, v: &Verdict) {
        match v.status {
            Status::Pass => self.passed += 1,
            Status::Fail => self.failed += 1,
            Status::Fragile => self.fragile += 1,
        }
    }

    /// The closing line.
    pub fn line(&self) -> String {
        let mut s = format!("{} passed, {} failed", self.passed, self.failed);
        if self.fragile > 0 {
            s.push_str(&format!(", {} fragile", self.fragile));
        }
        s
    }
}
