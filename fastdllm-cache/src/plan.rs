//! The pure half of a cache policy: what to forward at each step (docs/ALGORITHM.md §2.5-§2.7,
//! §2.8.3).

use std::ops::Range;

use fastdllm_core::{ForwardPlan, KvAccess, StepAt};

use crate::{Error, Result};

/// Which K/V approximation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Exact: a full forward at every step (`generate`).
    #[serde(rename = "none")]
    Off,
    /// PrefixCache: `[0, s_k)` frozen at the block start; `[s_k, L)` recomputed every step.
    Prefix,
    /// DualCache: `[0, s_k)` and `[e_k, L)` frozen at the block start; only `[s_k, e_k)` recomputed.
    Dual,
}

impl CacheMode {
    /// All modes, in report order.
    pub const ALL: [CacheMode; 3] = [CacheMode::Off, CacheMode::Prefix, CacheMode::Dual];

    /// The CLI / JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::Off => "none",
            CacheMode::Prefix => "prefix",
            CacheMode::Dual => "dual",
        }
    }
}

impl std::fmt::Display for CacheMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CacheMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" | "off" => Ok(CacheMode::Off),
            "prefix" => Ok(CacheMode::Prefix),
            "dual" => Ok(CacheMode::Dual),
            other => Err(Error::UnknownMode(other.to_string())),
        }
    }
}

/// Adaptive refresh triggers and the suffix window: cache policies beyond the reference, each
/// one switched on by its field (several may be combined). The refresh triggers decide, inside a
/// block, when the next forward is a full refresh instead of a cached one; every block still
/// starts with a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Adaptive {
    /// Drift-triggered refresh (Elastic-Cache: Nguyen-Tri et al., "Attention Is All You Need
    /// for KV Cache in Diffusion LLMs", arXiv 2510.14973). Cached K/V go stale as the block's
    /// tokens are committed, but by how much depends on the step: Elastic-Cache watches how far
    /// a probe layer's attention moved and recomputes only when it moved too far. Here the
    /// signal is measured during the cached forward itself, for free: the relative change
    /// `||K - K_ref||_F / ||K_ref||_F` of the last layer's (post-RoPE) keys over the forwarded
    /// window, against the keys the same positions had at the block's last refresh. When it
    /// exceeds this bound the cached forward is discarded and the step redone as a refresh
    /// (the discarded forward counts in the NFE). 0 redoes every cached step (the exact path's
    /// outputs); `inf` never triggers (the plain cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<f64>,
    /// Refresh after `k` tokens were committed since the cache was filled (the commits of the
    /// refresh step itself included): the simplest strong baseline, a count-based version of
    /// dKV-Cache's delayed caching (Ma et al., "dKV-Cache: The Cache for Diffusion Language
    /// Models", arXiv 2505.15781, which re-encodes a token's K/V one step after it is decoded).
    /// Committed tokens are what makes the other positions' cached K/V stale, so the count of
    /// commits since the refresh bounds the staleness. 1 refreshes after every committing step:
    /// the exact path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commits: Option<usize>,
    /// Refresh after a step that committed a token whose ranking score was below this value
    /// (same source as `commits`): a low-confidence commit is a decision the cached context
    /// barely supported, and it changes the context most (Fast-dLLM's own argument for
    /// thresholds, arXiv 2505.22618v3 Sec. 3.3, applied to the cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_confidence: Option<f64>,
    /// Suffix window for long generations (dInfer's vicinity refresh, Ma et al., arXiv
    /// 2510.08666; DPad, Chen et al., "DPad: Efficient Diffusion Language Models with Suffix
    /// Dropout", arXiv 2508.14148). The far masked suffix carries little information for the
    /// current block (DPad shows attention to it decays with distance and dropping it costs
    /// little accuracy), so only the nearest `w` suffix positions `[e_k, e_k + w)` are kept:
    /// refreshes forward `[0, e_k + w)` and cached steps attend over those keys only. A window
    /// covering the whole suffix is the plain cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix_window: Option<usize>,
}

impl Adaptive {
    /// No trigger and no window: the reference policies.
    pub fn is_off(&self) -> bool {
        *self == Adaptive::default()
    }
}

/// A cache mode plus its refresh schedule.
///
/// Names ([`std::str::FromStr`], [`CacheSettings::label`]): `none`, `prefix`, `dual`, optionally
/// followed by `+key=value` parts: `every=K` (refresh every K steps), `drift=X`, `commits=K`,
/// `lowconf=P`, `window=W` ([`Adaptive`]); e.g. `dual+commits=2`, `dual+drift=0.3+window=8`.
/// The one parser of cache names for `eval --settings`, `bench --cache` and the server's `cache`
/// field.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CacheSettings {
    /// The approximation.
    pub mode: CacheMode,
    /// Refresh every k steps inside a block (`None` = only at the block start, as the reference).
    #[serde(default)]
    pub refresh_every: Option<usize>,
    /// Adaptive refresh triggers and the suffix window (off by default).
    #[serde(default)]
    pub adaptive: Adaptive,
}

/// Help text of the cache names.
pub const CACHE_NAMES: &str = "none, prefix or dual, optionally followed by +every=K, +drift=X, \
     +commits=K, +lowconf=P, +window=W (e.g. dual+commits=2)";

impl CacheSettings {
    /// Settings for `mode` with the reference's refresh schedule.
    pub fn new(mode: CacheMode) -> Self {
        CacheSettings {
            mode,
            refresh_every: None,
            adaptive: Adaptive::default(),
        }
    }

    /// Checks the refresh interval and the adaptive parameters.
    pub fn validate(&self) -> Result<()> {
        if self.refresh_every == Some(0) {
            return Err(Error::InvalidSetting {
                name: "refresh_every",
                value: "0".into(),
                allowed: "must be >= 1 (1 = refresh at every step, the exact path)".into(),
            });
        }
        let a = &self.adaptive;
        if self.mode == CacheMode::Off && !a.is_off() {
            return Err(Error::InvalidSetting {
                name: "cache",
                value: self.label(),
                allowed: "adaptive policies apply to prefix and dual only".into(),
            });
        }
        if let Some(d) = a.drift {
            if d.is_nan() || d < 0.0 {
                return Err(Error::InvalidSetting {
                    name: "drift",
                    value: d.to_string(),
                    allowed: "a bound >= 0 (0 = redo every cached step, inf = never)".into(),
                });
            }
        }
        if a.commits == Some(0) {
            return Err(Error::InvalidSetting {
                name: "commits",
                value: "0".into(),
                allowed: "must be >= 1 (1 = refresh after every committing step)".into(),
            });
        }
        if let Some(p) = a.low_confidence {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::InvalidSetting {
                    name: "lowconf",
                    value: p.to_string(),
                    allowed: "a confidence in [0, 1]".into(),
                });
            }
        }
        Ok(())
    }

    /// The name for reports, parsed back by [`std::str::FromStr`]: `none`, `prefix`, `dual`,
    /// `dual+every=4`, `dual+commits=2+window=8`, ...
    pub fn label(&self) -> String {
        let mut s = self.mode.to_string();
        let a = &self.adaptive;
        if let Some(k) = self.refresh_every {
            s.push_str(&format!("+every={k}"));
        }
        if let Some(d) = a.drift {
            s.push_str(&format!("+drift={d}"));
        }
        if let Some(k) = a.commits {
            s.push_str(&format!("+commits={k}"));
        }
        if let Some(p) = a.low_confidence {
            s.push_str(&format!("+lowconf={p}"));
        }
        if let Some(w) = a.suffix_window {
            s.push_str(&format!("+window={w}"));
        }
        s
    }

    /// The plan at `at` when the policy's triggers ask for no refresh: pure.
    pub fn plan(&self, at: &StepAt) -> ForwardPlan {
        self.plan_with(at, false)
    }

    /// The plan at `at`; `refresh` forces a refresh (an adaptive trigger fired). Pure.
    pub fn plan_with(&self, at: &StepAt, refresh: bool) -> ForwardPlan {
        let end = self.keys_end(at);
        let refresh = refresh
            || match self.refresh_every {
                Some(k) => at.step.is_multiple_of(k.max(1)),
                None => at.step == 0,
            };
        match self.mode {
            CacheMode::Off => ForwardPlan {
                window: 0..at.seq_len,
                kv: KvAccess::Fresh,
            },
            _ if refresh => ForwardPlan {
                window: 0..end,
                kv: KvAccess::Refresh,
            },
            CacheMode::Prefix => reuse(at.block.start..end),
            CacheMode::Dual => reuse(at.block.clone()),
        }
    }

    /// End of the keys kept at `at`: `seq_len`, or `e_k + w` with a suffix window.
    pub fn keys_end(&self, at: &StepAt) -> usize {
        match (self.mode, self.adaptive.suffix_window) {
            (CacheMode::Off, _) | (_, None) => at.seq_len,
            (_, Some(w)) => at.block.end.saturating_add(w).min(at.seq_len),
        }
    }
}

impl std::fmt::Display for CacheSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

impl std::str::FromStr for CacheSettings {
    type Err = Error;
    /// Parses a cache name (see [`CacheSettings`]); the result is validated.
    fn from_str(s: &str) -> Result<Self> {
        let mut parts = s.trim().split('+');
        let mode: CacheMode = parts.next().unwrap_or("").trim().parse()?;
        let mut c = CacheSettings::new(mode);
        let bad = |part: &str, allowed: &str| Error::InvalidSetting {
            name: "cache",
            value: format!("'{}' (in '{}')", part.trim(), s.trim()),
            allowed: allowed.to_string(),
        };
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad(part, &format!("expected key=value; names: {CACHE_NAMES}")))?;
            let value = value.trim();
            let count = || {
                value
                    .parse::<usize>()
                    .map_err(|_| bad(part, "a whole number"))
            };
            let real = || {
                value
                    .parse::<f64>()
                    .map_err(|_| bad(part, "a number (inf allowed)"))
            };
            match key.trim() {
                "every" => c.refresh_every = Some(count()?),
                "drift" => c.adaptive.drift = Some(real()?),
                "commits" => c.adaptive.commits = Some(count()?),
                "lowconf" => c.adaptive.low_confidence = Some(real()?),
                "window" => c.adaptive.suffix_window = Some(count()?),
                _ => return Err(bad(part, &format!("unknown key; names: {CACHE_NAMES}"))),
            }
        }
        c.validate()?;
        Ok(c)
    }
}

fn reuse(window: Range<usize>) -> ForwardPlan {
    ForwardPlan {
        window,
        kv: KvAccess::Reuse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(block: Range<usize>, step: usize, seq_len: usize) -> StepAt {
        StepAt {
            block_idx: 0,
            block,
            step,
            seq_len,
        }
    }

    #[test]
    fn reference_windows() {
        let s = |m| CacheSettings::new(m);
        assert_eq!(
            s(CacheMode::Prefix).plan(&at(17..21, 0, 33)),
            ForwardPlan {
                window: 0..33,
                kv: KvAccess::Refresh
            }
        );
        assert_eq!(
            s(CacheMode::Prefix).plan(&at(17..21, 2, 33)),
            ForwardPlan {
                window: 17..33,
                kv: KvAccess::Reuse
            }
        );
        assert_eq!(
            s(CacheMode::Dual).plan(&at(17..21, 1, 33)),
            ForwardPlan {
                window: 17..21,
                kv: KvAccess::Reuse
            }
        );
        assert_eq!(
            s(CacheMode::Off).plan(&at(17..21, 1, 33)),
            ForwardPlan {
                window: 0..33,
                kv: KvAccess::Fresh
            }
        );
    }

    #[test]
    fn refresh_every_zero_is_an_error() {
        let e = CacheSettings {
            refresh_every: Some(0),
            ..CacheSettings::new(CacheMode::Dual)
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("refresh_every = 0"), "{e}");
        assert!("fancy"
            .parse::<CacheMode>()
            .unwrap_err()
            .to_string()
            .contains("allowed: none, prefix, dual"));
    }

    #[test]
    fn names_round_trip_and_bad_names_say_why() {
        for name in [
            "none",
            "prefix",
            "dual",
            "dual+every=4",
            "dual+drift=0.25",
            "dual+drift=inf",
            "prefix+commits=2",
            "dual+lowconf=0.9",
            "dual+window=8",
            "dual+commits=3+lowconf=0.5+window=16",
        ] {
            let c: CacheSettings = name.parse().unwrap();
            assert_eq!(c.label(), name);
        }
        let err = |s: &str| s.parse::<CacheSettings>().unwrap_err().to_string();
        assert!(
            err("dual+fancy=1").contains("unknown key"),
            "{}",
            err("dual+fancy=1")
        );
        assert!(err("dual+commits=0").contains("commits = 0"));
        assert!(err("dual+drift=-1").contains("drift = -1"));
        assert!(err("dual+lowconf=2").contains("lowconf = 2"));
        assert!(err("dual+window").contains("key=value"));
        assert!(err("none+commits=2").contains("prefix and dual only"));
        assert!(err("quad").contains("unknown cache mode 'quad'"));
    }

    #[test]
    fn suffix_window_limits_the_keys_and_covering_it_is_the_plain_cache() {
        let w: CacheSettings = "dual+window=4".parse().unwrap();
        assert_eq!(
            w.plan(&at(17..21, 0, 33)),
            ForwardPlan {
                window: 0..25,
                kv: KvAccess::Refresh
            }
        );
        assert_eq!(w.plan(&at(17..21, 1, 33)).window, 17..21);
        assert_eq!(w.keys_end(&at(17..21, 1, 33)), 25);
        let p: CacheSettings = "prefix+window=4".parse().unwrap();
        assert_eq!(p.plan(&at(17..21, 1, 33)).window, 17..25);
        for step in 0..4 {
            for mode in ["dual", "prefix"] {
                let plain: CacheSettings = mode.parse().unwrap();
                let covering: CacheSettings = format!("{mode}+window=12").parse().unwrap();
                let a = at(17..21, step, 33);
                assert_eq!(covering.plan(&a), plain.plan(&a));
                assert_eq!(covering.keys_end(&a), 33);
            }
        }
    }

    proptest! {
        #[test]
        fn plans_are_well_formed(p in 1usize..64, b in 1usize..16, k in 0usize..8, step in 0usize..40,
                                 mode in 0usize..3, every in proptest::option::of(1usize..6)) {
            let nblocks = 8;
            let seq_len = p + nblocks * b;
            let block = p + k * b..p + (k + 1) * b;
            let settings = CacheSettings { refresh_every: every, ..CacheSettings::new(CacheMode::ALL[mode]) };
            let plan = settings.plan(&at(block.clone(), step, seq_len));
            // The window always holds the block and stays on the canvas.
            prop_assert!(plan.window.start <= block.start && plan.window.end >= block.end && plan.window.end <= seq_len);
            // Exact steps are full forwards.
            if plan.kv != KvAccess::Reuse { prop_assert_eq!(plan.window.clone(), 0..seq_len); }
            // The first step of a block is always exact.
            if step == 0 { prop_assert!(plan.is_exact()); }
            // Refresh every step = the exact path.
            if every == Some(1) { prop_assert!(plan.is_exact()); }
            match settings.mode {
                CacheMode::Off => prop_assert_eq!(plan.kv, KvAccess::Fresh),
                CacheMode::Prefix if plan.kv == KvAccess::Reuse => prop_assert_eq!(plan.window, block.start..seq_len),
                CacheMode::Dual if plan.kv == KvAccess::Reuse => prop_assert_eq!(plan.window, block),
                _ => {}
            }
        }
    }
}
