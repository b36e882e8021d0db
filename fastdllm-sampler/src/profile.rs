//! The sampler profile: what the proposer and the unmasking rules need to know about a model,
//! as plain data, so a model implemented outside fastdllm-models gets a sampler without claiming
//! to be LLaDA or Dream.
//!
//! Two properties differ between the reference samplers, and nothing else the sampler does
//! depends on the model:
//!
//! * which proposer turns logits into `(token, confidence)` ([`ProposalKind`]): LLaDA's
//!   (NVlabs/Fast-dLLM `llada/generate.py`) or Dream's `sample_tokens`
//!   (`dream/model/generation_utils_block.py`, shared with Dream's `generation_utils.py`);
//! * the precision the threshold rule (arXiv 2505.22618, section "Confidence-Aware Parallel
//!   Decoding") compares confidences with `tau` in ([`Precision`]).
//!
//! The orientation of the logits (Dream's output at `j - 1` scores token `j`) is not part of the
//! profile: models hand the sampler aligned rows, and the block loop of fastdllm-core handles
//! the consequence for cached windows.
//!
//! Reference: the two files above. Deviation: none; [`SamplerProfile::llada`] and
//! [`SamplerProfile::dream`] are the built-in families' profiles, and any other combination is
//! an outside model's own choice.

use fastdllm_core::{ModelFamily, ModelSpec};

use crate::threshold::Precision;

/// Which reference proposer turns a model's logits into one `(token, confidence)` per row.
///
/// It decides which [`ProposerConfig`](crate::ProposerConfig) settings exist: `remasking` for
/// [`ProposalKind::LladaGumbel`]; `top_p`, `top_k` and `dream_score` for
/// [`ProposalKind::DreamSample`]. `temperature` is common to both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalKind {
    /// LLaDA's sampler in NVlabs/Fast-dLLM `llada/generate.py` ([`LladaProposer`]): argmax of
    /// the raw logits, or at temperature > 0 the Gumbel-max of `add_gumbel_noise` (float64);
    /// the confidence is `softmax(logits as f64)[x0]` (`remasking = low_confidence`) or a
    /// uniform draw (`random`). No top-p or top-k filter.
    ///
    /// [`LladaProposer`]: crate::LladaProposer
    LladaGumbel,
    /// Dream's `sample_tokens` in `dream/model/generation_utils_block.py` ([`DreamProposer`]):
    /// logits / temperature, top-p, top-k, a float32 softmax, argmax or a sample, scored by
    /// probability, top-1 minus top-2 margin, or negative entropy; the unmasking rule picks the
    /// score unless `dream_score` is set ([`Unmask::dream_score`](crate::Unmask::dream_score)).
    /// No random remasking.
    ///
    /// [`DreamProposer`]: crate::DreamProposer
    DreamSample,
}

impl ProposalKind {
    /// The snake_case name (`llada_gumbel`, `dream_sample`), as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            ProposalKind::LladaGumbel => "llada_gumbel",
            ProposalKind::DreamSample => "dream_sample",
        }
    }
}

impl std::fmt::Display for ProposalKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the sampler ([`ProposerConfig::build`](crate::ProposerConfig::build),
/// [`Unmask::build`](crate::Unmask::build)) needs to know about a model. Plain data: the
/// built-in families have [`SamplerProfile::llada`] and [`SamplerProfile::dream`]
/// ([`SamplerProfile::for_spec`] picks one from a [`ModelSpec`]); a model of your own sets the
/// fields to the reference behaviour it was trained for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SamplerProfile {
    /// Which proposer turns logits into `(token, confidence)` (see [`ProposalKind`]).
    pub proposal: ProposalKind,
    /// The precision in which the threshold rule ([`Threshold`](crate::Threshold)) compares a
    /// confidence (a probability, unitless, in [0, 1]) with `tau`: [`Precision::F64`] as
    /// `llada/generate.py` does (float64 confidences against a Python float), or
    /// [`Precision::F32`] as `dream/model/generation_utils_block.py` does (a float32 tensor
    /// against a Python float, which torch compares in float32, so `tau` is effectively
    /// `f32(tau)`). Only the threshold rule reads it.
    pub threshold_precision: Precision,
}

impl SamplerProfile {
    /// LLaDA's sampler (`llada/generate.py`): [`ProposalKind::LladaGumbel`] proposals, float64
    /// threshold comparisons.
    pub const fn llada() -> Self {
        SamplerProfile {
            proposal: ProposalKind::LladaGumbel,
            threshold_precision: Precision::F64,
        }
    }

    /// Dream's sampler (`dream/model/generation_utils_block.py`): [`ProposalKind::DreamSample`]
    /// proposals, float32 threshold comparisons.
    pub const fn dream() -> Self {
        SamplerProfile {
            proposal: ProposalKind::DreamSample,
            threshold_precision: Precision::F32,
        }
    }

    /// The profile of a built-in family's reference sampler.
    pub const fn for_family(family: ModelFamily) -> Self {
        match family {
            ModelFamily::Llada => SamplerProfile::llada(),
            ModelFamily::Dream => SamplerProfile::dream(),
        }
    }

    /// The profile of the family `spec` declares ([`SamplerProfile::for_family`]).
    pub fn for_spec(spec: &ModelSpec) -> Self {
        SamplerProfile::for_family(spec.family)
    }
}

impl From<ModelFamily> for SamplerProfile {
    fn from(family: ModelFamily) -> Self {
        SamplerProfile::for_family(family)
    }
}

impl From<&ModelSpec> for SamplerProfile {
    fn from(spec: &ModelSpec) -> Self {
        SamplerProfile::for_spec(spec)
    }
}

impl std::fmt::Display for SamplerProfile {
    /// `llada_gumbel proposals, f64 threshold comparisons`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let precision = match self.threshold_precision {
            Precision::F64 => "f64",
            Precision::F32 => "f32",
        };
        write!(
            f,
            "{} proposals, {precision} threshold comparisons",
            self.proposal
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_families_keep_their_reference_semantics() {
        assert_eq!(
            SamplerProfile::for_family(ModelFamily::Llada),
            SamplerProfile {
                proposal: ProposalKind::LladaGumbel,
                threshold_precision: Precision::F64,
            }
        );
        assert_eq!(
            SamplerProfile::from(ModelFamily::Dream),
            SamplerProfile {
                proposal: ProposalKind::DreamSample,
                threshold_precision: Precision::F32,
            }
        );
        assert_eq!(
            SamplerProfile::llada().to_string(),
            "llada_gumbel proposals, f64 threshold comparisons"
        );
        assert_eq!(ProposalKind::DreamSample.to_string(), "dream_sample");
    }
}
