//! The sampler's configuration side: closed serde enums with `validate()` and `build()` into the
//! trait objects the loop runs, given the model's [`SamplerProfile`].
//!
//! Profile semantics: [`ProposalKind::LladaGumbel`] builds a [`LladaProposer`],
//! [`ProposalKind::DreamSample`] a [`DreamProposer`]; the threshold rule compares in the
//! profile's [`SamplerProfile::threshold_precision`] (float64 for LLaDA, float32 for Dream).
//! Dream's score is the probability for `threshold`, `factor` and `origin`, and the **negative
//! entropy** for the count schedules (`fixed`, `dream_timesteps`), because Dream's block path
//! scores every non-threshold `alg` by entropy; [`ProposerConfig::dream_score`] overrides it
//! (`maskgit_plus` / `topk_margin` runs of Dream's original sampler). Reference: the keyword
//! arguments of `llada/generate.py` and `dream/model/generation_utils*.py`. Deviations: settings
//! the reference silently ignores or crashes on (top-p with LLaDA's proposals, random remasking
//! with Dream's, a threshold of 1.3) are errors.

use std::str::FromStr;

use fastdllm_core::{Proposer, UnmaskPolicy};

use crate::confidence::{DreamProposer, DreamScore, LladaProposer, Remasking};
use crate::dream::{DreamTimesteps, Origin, DEFAULT_EPS};
use crate::factor::Factor;
use crate::fixed::FixedSchedule;
use crate::profile::{ProposalKind, SamplerProfile};
use crate::threshold::Threshold;
use crate::{Error, Result};

fn default_eps() -> f32 {
    DEFAULT_EPS
}

/// Which unmasking rule to run. Serialised with a `kind` tag:
/// `{"kind": "threshold", "threshold": 0.9}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Unmask {
    /// LLaDA's fixed schedule (docs/ALGORITHM.md §2.3a), the reference default when neither
    /// threshold nor factor is set.
    #[default]
    Fixed,
    /// Dream's `linspace(1, eps, steps + 1)` count schedule (docs/ALGORITHM.md §2.8.2,
    /// §2.8.3).
    DreamTimesteps {
        /// Last timestep, in (0, 1); default 1e-3.
        #[serde(default = "default_eps")]
        eps: f32,
    },
    /// Fast-dLLM's threshold rule (docs/ALGORITHM.md §2.3b).
    Threshold {
        /// `tau`, in (0, 1]; the paper uses 0.9.
        threshold: f64,
    },
    /// Fast-dLLM's factor rule (docs/ALGORITHM.md §2.3c).
    Factor {
        /// `f`, finite and > 0; the scripts use 1.
        factor: f64,
    },
    /// Dream's `origin` algorithm (random reveals with probability `1 - s/t`).
    Origin {
        /// Last timestep, in (0, 1); default 1e-3.
        #[serde(default = "default_eps")]
        eps: f32,
    },
}

fn check_eps(eps: f32) -> Result<()> {
    if eps > 0.0 && eps < 1.0 {
        Ok(())
    } else {
        Err(Error::setting("eps", eps, "in (0, 1)"))
    }
}

/// Checks a threshold: in (0, 1].
pub fn check_threshold(threshold: f64) -> Result<()> {
    if threshold > 0.0 && threshold <= 1.0 {
        Ok(())
    } else {
        Err(Error::setting("threshold", threshold, "in (0, 1]"))
    }
}

impl Unmask {
    /// Dream's rule when neither a threshold nor a factor is set: its timestep count schedule
    /// `linspace(1, eps, steps + 1)` with the reference's `eps` = [`DEFAULT_EPS`] (1e-3), as
    /// Dream's `generation_utils.py` runs it (and Fast-dLLM's Dream scripts without
    /// `--threshold`).
    pub const DREAM_DEFAULT: Unmask = Unmask::DreamTimesteps { eps: DEFAULT_EPS };

    /// The count schedule of a model whose sampler is `profile`: the rule of a generation that
    /// sets neither a threshold nor a factor. LLaDA's proposals: [`Unmask::Fixed`] (`steps /
    /// blocks` tokens per step); Dream's: [`Unmask::DREAM_DEFAULT`].
    pub fn count_schedule(profile: impl Into<SamplerProfile>) -> Unmask {
        match profile.into().proposal {
            ProposalKind::LladaGumbel => Unmask::Fixed,
            ProposalKind::DreamSample => Unmask::DREAM_DEFAULT,
        }
    }

    /// Checks the parameter's range.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Unmask::Fixed => Ok(()),
            Unmask::DreamTimesteps { eps } | Unmask::Origin { eps } => check_eps(eps),
            Unmask::Threshold { threshold } => check_threshold(threshold),
            Unmask::Factor { factor } => {
                if factor.is_finite() && factor > 0.0 {
                    Ok(())
                } else {
                    Err(Error::setting("factor", factor, "finite and > 0"))
                }
            }
        }
    }

    /// The policy for a model with `profile` (the threshold rule compares in its
    /// [`SamplerProfile::threshold_precision`]); `seed` feeds the rules that draw random numbers
    /// (`origin`).
    pub fn build(
        &self,
        profile: SamplerProfile,
        seed: u64,
    ) -> Result<Box<dyn UnmaskPolicy + Send>> {
        self.validate()?;
        Ok(match *self {
            Unmask::Fixed => Box::new(FixedSchedule),
            Unmask::DreamTimesteps { eps } => Box::new(DreamTimesteps { eps }),
            Unmask::Threshold { threshold } => {
                Box::new(Threshold::new(threshold, profile.threshold_precision))
            }
            Unmask::Factor { factor } => Box::new(Factor::new(factor)),
            Unmask::Origin { eps } => Box::new(Origin::new(eps, seed)),
        })
    }

    /// Short name for reports, equal to the built policy's `name()`: `fixed`, `threshold=0.9`,
    /// `factor=1`, `dream_timesteps`, `origin` (with `=eps` when eps is not 1e-3). Parses back
    /// with [`FromStr`].
    pub fn label(&self) -> String {
        match *self {
            Unmask::Fixed => "fixed".into(),
            Unmask::DreamTimesteps { eps } if eps == DEFAULT_EPS => "dream_timesteps".into(),
            Unmask::DreamTimesteps { eps } => format!("dream_timesteps={eps}"),
            Unmask::Threshold { threshold } => format!("threshold={threshold}"),
            Unmask::Factor { factor } => format!("factor={factor}"),
            Unmask::Origin { eps } if eps == DEFAULT_EPS => "origin".into(),
            Unmask::Origin { eps } => format!("origin={eps}"),
        }
    }

    /// The Dream score the reference uses with this rule (see the module docs).
    pub fn dream_score(&self) -> DreamScore {
        match self {
            Unmask::Fixed | Unmask::DreamTimesteps { .. } => DreamScore::NegEntropy,
            Unmask::Threshold { .. } | Unmask::Factor { .. } | Unmask::Origin { .. } => {
                DreamScore::Probability
            }
        }
    }
}

impl std::fmt::Display for Unmask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

impl FromStr for Unmask {
    type Err = Error;
    /// Parses a label: `fixed`, `threshold=0.9`, `factor=1`, `dream_timesteps[=eps]`,
    /// `origin[=eps]`. The value is validated.
    fn from_str(s: &str) -> Result<Self> {
        let (kind, value) = match s.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (s.trim(), None),
        };
        let num = |name: &'static str, allowed: &str| -> Result<f64> {
            let v =
                value.ok_or_else(|| Error::setting(name, s, format!("given as {name}=<value>")))?;
            v.parse::<f64>()
                .map_err(|_| Error::setting(name, v, allowed.to_string()))
        };
        let eps = |name: &'static str| -> Result<f32> {
            match value {
                None => Ok(DEFAULT_EPS),
                Some(v) => v
                    .parse::<f32>()
                    .map_err(|_| Error::setting(name, v, "a number in (0, 1)")),
            }
        };
        let u = match kind {
            "fixed" if value.is_none() => Unmask::Fixed,
            "threshold" => Unmask::Threshold { threshold: num("threshold", "a number in (0, 1]")? },
            "factor" => Unmask::Factor { factor: num("factor", "a finite number > 0")? },
            "dream_timesteps" => Unmask::DreamTimesteps { eps: eps("eps")? },
            "origin" => Unmask::Origin { eps: eps("eps")? },
            _ => {
                return Err(Error::setting(
                    "unmask",
                    s,
                    "one of fixed, threshold=<tau>, factor=<f>, dream_timesteps[=<eps>], origin[=<eps>]",
                ))
            }
        };
        u.validate()?;
        Ok(u)
    }
}

/// The smallest non-zero temperature. Dream's sampler divides float32 logits by `T` (as the
/// reference does), which overflows to infinity (and NaN probabilities) once `|logit| / T`
/// exceeds `f32::MAX`; at `T >= 1e-6` that needs logits above 3e32. Below it the distribution
/// is already one-hot for any real logits, so `T = 0` (greedy) is the same answer.
pub const MIN_TEMPERATURE: f64 = 1e-6;

/// How logits become proposals. Unset fields take the reference defaults (greedy,
/// `low_confidence`, no filters, the rule's Dream score).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ProposerConfig {
    /// 0 = greedy (the paper's setting), else finite and `>= MIN_TEMPERATURE`.
    pub temperature: f64,
    /// [`ProposalKind::DreamSample`] only: nucleus filter, in (0, 1].
    pub top_p: Option<f64>,
    /// [`ProposalKind::DreamSample`] only: keep the `k >= 1` largest logits.
    pub top_k: Option<usize>,
    /// [`ProposalKind::LladaGumbel`] only: how proposals are scored (`random` needs it).
    pub remasking: Remasking,
    /// [`ProposalKind::DreamSample`] only: overrides the score [`Unmask::dream_score`] picks.
    pub dream_score: Option<DreamScore>,
}

impl Default for ProposerConfig {
    fn default() -> Self {
        ProposerConfig {
            temperature: 0.0,
            top_p: None,
            top_k: None,
            remasking: Remasking::LowConfidence,
            dream_score: None,
        }
    }
}

impl ProposerConfig {
    /// Checks every range (independent of the model's profile).
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite()
            && (self.temperature == 0.0 || self.temperature >= MIN_TEMPERATURE))
        {
            return Err(Error::setting(
                "temperature",
                crate::error::compact(self.temperature),
                format!("0 (greedy) or finite and >= {MIN_TEMPERATURE:e} (smaller temperatures overflow float32 logits / T in Dream's sampler; use 0 for greedy)"),
            ));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::setting(
                    "top_p",
                    crate::error::compact(p),
                    "in (0, 1]",
                ));
            }
        }
        if self.top_k == Some(0) {
            return Err(Error::setting("top_k", 0, ">= 1"));
        }
        Ok(())
    }

    /// [`ProposerConfig::build`] for a model whose mask id is `mask_token_id`: the mask token is
    /// never proposed (see [`crate::confidence::exclude_from_argmax`]); identical to the
    /// reference whenever the model's argmax is not the mask token.
    pub fn build_for_model(
        &self,
        profile: SamplerProfile,
        unmask: &Unmask,
        mask_token_id: u32,
    ) -> Result<Box<dyn Proposer + Send>> {
        self.build_inner(profile, unmask, Some(mask_token_id))
    }

    /// The proposer of `profile`'s [`ProposalKind`] running with `unmask` (which picks Dream's
    /// default score), literally the reference's (it may propose the mask token). Errors on a
    /// setting that proposal kind does not have (`top_p`, `top_k` or `dream_score` with
    /// [`ProposalKind::LladaGumbel`], random `remasking` with [`ProposalKind::DreamSample`]).
    pub fn build(
        &self,
        profile: SamplerProfile,
        unmask: &Unmask,
    ) -> Result<Box<dyn Proposer + Send>> {
        self.build_inner(profile, unmask, None)
    }

    fn build_inner(
        &self,
        profile: SamplerProfile,
        unmask: &Unmask,
        never_propose: Option<u32>,
    ) -> Result<Box<dyn Proposer + Send>> {
        self.validate()?;
        let proposal = profile.proposal;
        let unsupported = |name: &'static str, reason: &str| Error::Unsupported {
            name,
            proposal,
            reason: reason.to_string(),
        };
        match proposal {
            ProposalKind::LladaGumbel => {
                if self.top_p.is_some() {
                    return Err(unsupported(
                        "top_p",
                        "this model's sampler has no nucleus filter (only dream_sample proposals have one)",
                    ));
                }
                if self.top_k.is_some() {
                    return Err(unsupported(
                        "top_k",
                        "this model's sampler has no top-k filter (only dream_sample proposals have one)",
                    ));
                }
                if self.dream_score.is_some() {
                    return Err(unsupported(
                        "dream_score",
                        "this model's sampler scores with remasking = low_confidence | random (dream_score needs dream_sample proposals)",
                    ));
                }
                Ok(Box::new(LladaProposer {
                    never_propose,
                    ..LladaProposer::new(self.temperature, self.remasking)
                }))
            }
            ProposalKind::DreamSample => {
                if self.remasking != Remasking::LowConfidence {
                    return Err(unsupported(
                        "remasking",
                        "this model's sampler has no random remasking (only llada_gumbel proposals have it); choose a dream_score",
                    ));
                }
                Ok(Box::new(DreamProposer {
                    temperature: self.temperature,
                    top_p: self.top_p,
                    top_k: self.top_k,
                    score: self.dream_score.unwrap_or_else(|| unmask.dream_score()),
                    never_propose,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::threshold::Precision;

    const LLADA: SamplerProfile = SamplerProfile::llada();
    const DREAM: SamplerProfile = SamplerProfile::dream();

    fn err(u: Unmask) -> String {
        u.validate().unwrap_err().to_string()
    }

    #[test]
    fn validation_messages_name_parameter_and_range() {
        assert_eq!(
            err(Unmask::Threshold { threshold: 1.3 }),
            "threshold must be in (0, 1], got 1.3"
        );
        assert_eq!(
            err(Unmask::Threshold { threshold: 0.0 }),
            "threshold must be in (0, 1], got 0"
        );
        assert!(err(Unmask::Threshold {
            threshold: f64::NAN
        })
        .contains("threshold"));
        assert_eq!(
            err(Unmask::Factor { factor: -1.0 }),
            "factor must be finite and > 0, got -1"
        );
        assert!(err(Unmask::Factor {
            factor: f64::INFINITY
        })
        .contains("factor"));
        assert_eq!(
            err(Unmask::DreamTimesteps { eps: 1.0 }),
            "eps must be in (0, 1), got 1"
        );
        assert!(err(Unmask::Origin { eps: 0.0 }).contains("eps"));
        assert!(Unmask::Threshold { threshold: 1.0 }.validate().is_ok());
        assert!(Unmask::Fixed.validate().is_ok());

        let bad = |c: ProposerConfig| c.validate().unwrap_err().to_string();
        let d = ProposerConfig::default();
        let e = bad(ProposerConfig {
            temperature: -1.0,
            ..d
        });
        assert!(
            e.starts_with("temperature must be 0 (greedy) or finite and >= 1e-6")
                && e.ends_with("got -1"),
            "{e}"
        );
        // Dream at T = 1e-38 used to give every generated id = [MASK] (logits / T overflow).
        let e = bad(ProposerConfig {
            temperature: 1e-38,
            ..d
        });
        assert!(e.contains(">= 1e-6"), "{e}");
        assert!(ProposerConfig {
            temperature: MIN_TEMPERATURE,
            ..d
        }
        .validate()
        .is_ok());
        assert!(bad(ProposerConfig {
            temperature: f64::NAN,
            ..d
        })
        .contains("temperature"));
        assert_eq!(
            bad(ProposerConfig {
                top_p: Some(0.0),
                ..d
            }),
            "top_p must be in (0, 1], got 0"
        );
        assert_eq!(
            bad(ProposerConfig {
                top_k: Some(0),
                ..d
            }),
            "top_k must be >= 1, got 0"
        );
        assert!(d.validate().is_ok());
    }

    #[test]
    fn build_follows_profile_semantics() {
        let t = Unmask::Threshold { threshold: 0.9 };
        assert_eq!(t.build(LLADA, 0).unwrap().name(), "threshold=0.9");
        assert!(t.build(DREAM, 0).is_ok());
        assert!(Unmask::Threshold { threshold: 2.0 }
            .build(LLADA, 0)
            .is_err());
        assert_eq!(LLADA.threshold_precision, Precision::F64);
        assert_eq!(DREAM.threshold_precision, Precision::F32);
        assert_eq!(
            Unmask::DreamTimesteps { eps: 1e-3 }.dream_score(),
            DreamScore::NegEntropy
        );
        assert_eq!(Unmask::Fixed.dream_score(), DreamScore::NegEntropy);
        assert_eq!(t.dream_score(), DreamScore::Probability);
        assert_eq!(
            Unmask::Factor { factor: 1.0 }.dream_score(),
            DreamScore::Probability
        );

        let d = ProposerConfig::default();
        assert!(d.build(LLADA, &t).is_ok());
        assert!(d.build(DREAM, &t).is_ok());
        let e = ProposerConfig {
            top_p: Some(0.9),
            ..d
        }
        .build(LLADA, &t);
        assert_eq!(
            e.err().unwrap().to_string(),
            "top_p is not supported by llada_gumbel proposals: this model's sampler has no \
             nucleus filter (only dream_sample proposals have one)"
        );
        assert!(ProposerConfig {
            remasking: Remasking::Random,
            ..d
        }
        .build(DREAM, &t)
        .is_err());
        assert!(ProposerConfig {
            dream_score: Some(DreamScore::Margin),
            ..d
        }
        .build(LLADA, &t)
        .is_err());
        // The policies and proposers are Send.
        fn is_send<T: Send>(_: &T) {}
        is_send(&t.build(DREAM, 1).unwrap());
        is_send(&d.build(DREAM, &t).unwrap());
    }

    #[test]
    fn threshold_compares_in_the_profiles_precision() {
        use fastdllm_core::{Candidate, Selection, StepInfo};
        // 0.8999999999 < 0.9 in float64, equal to it once both are rounded to float32.
        let candidates = [(0, 0.95), (1, 0.8999999999)].map(|(position, confidence)| Candidate {
            position,
            token: 1,
            confidence,
        });
        let info = StepInfo {
            row: 0,
            step: 0,
            steps_per_block: 4,
            block_length: 4,
            block_masks_at_start: 2,
        };
        let commits = |profile: SamplerProfile| {
            let mut rule = Unmask::Threshold { threshold: 0.9 }
                .build(profile, 0)
                .unwrap();
            match rule.select(&candidates, &info) {
                Selection::Commit(indices) => indices.len(),
                Selection::EndBlock => 0,
            }
        };
        assert_eq!(commits(LLADA), 1);
        assert_eq!(commits(DREAM), 2);
        // An outside model's own combination: Dream's proposals, float64 comparisons.
        let own = SamplerProfile {
            proposal: ProposalKind::DreamSample,
            threshold_precision: Precision::F64,
        };
        assert_eq!(commits(own), 1);
        assert!(ProposerConfig {
            top_p: Some(0.9),
            ..ProposerConfig::default()
        }
        .build(own, &Unmask::Fixed)
        .is_ok());
    }

    #[test]
    fn labels_round_trip_and_match_policy_names() {
        let all = [
            Unmask::Fixed,
            Unmask::DreamTimesteps { eps: 1e-3 },
            Unmask::DreamTimesteps { eps: 0.01 },
            Unmask::Threshold { threshold: 0.9 },
            Unmask::Threshold { threshold: 0.99999 },
            Unmask::Factor { factor: 1.0 },
            Unmask::Factor { factor: 0.0001 },
            Unmask::Origin { eps: 1e-3 },
            Unmask::Origin { eps: 0.5 },
        ];
        for u in all {
            let label = u.label();
            assert_eq!(label.parse::<Unmask>().unwrap(), u, "{label}");
            assert_eq!(u.build(LLADA, 0).unwrap().name(), label);
        }
        assert_eq!(Unmask::Factor { factor: 1.0 }.label(), "factor=1");
        assert_eq!(
            Unmask::DreamTimesteps { eps: 1e-3 }.to_string(),
            "dream_timesteps"
        );
        assert!("threshold=1.5".parse::<Unmask>().is_err());
        assert!("threshold".parse::<Unmask>().is_err());
        assert!("fixed=3".parse::<Unmask>().is_err());
        assert!("bogus"
            .parse::<Unmask>()
            .unwrap_err()
            .to_string()
            .contains("one of fixed"));
    }

    #[test]
    fn serde_names() {
        use serde::de::value::{Error as DeError, MapDeserializer, StrDeserializer};
        use serde::Deserialize;
        let fixed = MapDeserializer::<_, DeError>::new([("kind", "fixed")].into_iter());
        assert_eq!(Unmask::deserialize(fixed).unwrap(), Unmask::Fixed);
        let ts = MapDeserializer::<_, DeError>::new([("kind", "dream_timesteps")].into_iter());
        assert_eq!(
            Unmask::deserialize(ts).unwrap(),
            Unmask::DreamTimesteps { eps: 1e-3 }
        );
        let r = Remasking::deserialize(StrDeserializer::<DeError>::new("random")).unwrap();
        assert_eq!(r, Remasking::Random);
        for (name, want) in [
            ("maskgit_plus", DreamScore::Probability),
            ("topk_margin", DreamScore::Margin),
            ("entropy", DreamScore::NegEntropy),
            ("neg_entropy", DreamScore::NegEntropy),
        ] {
            let got = DreamScore::deserialize(StrDeserializer::<DeError>::new(name)).unwrap();
            assert_eq!(got, want, "{name}");
        }
        assert_eq!(Unmask::default(), Unmask::Fixed);
    }
}
