//! The pure half of a cache policy: what to forward at each step (SPEC 2.5-2.7, 2.8.3).

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

/// A cache mode plus its refresh schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheSettings {
    /// The approximation.
    pub mode: CacheMode,
    /// Refresh every k steps inside a block (`None` = only at the block start, as the reference).
    #[serde(default)]
    pub refresh_every: Option<usize>,
}

impl CacheSettings {
    /// Settings for `mode` with the reference's refresh schedule.
    pub fn new(mode: CacheMode) -> Self {
        CacheSettings {
            mode,
            refresh_every: None,
        }
    }

    /// Checks the refresh interval.
    pub fn validate(&self) -> Result<()> {
        if self.refresh_every == Some(0) {
            return Err(Error::InvalidSetting {
                name: "refresh_every",
                value: "0".into(),
                allowed: "must be >= 1 (1 = refresh at every step, the exact path)".into(),
            });
        }
        Ok(())
    }

    /// Short label for reports: `none`, `prefix`, `dual`, `dual/r4`.
    pub fn label(&self) -> String {
        match (self.mode, self.refresh_every) {
            (CacheMode::Off, _) | (_, None) => self.mode.to_string(),
            (m, Some(k)) => format!("{m}/r{k}"),
        }
    }

    /// The plan at `at`: pure.
    pub fn plan(&self, at: &StepAt) -> ForwardPlan {
        let full = ForwardPlan {
            window: 0..at.seq_len,
            kv: KvAccess::Refresh,
        };
        let refresh = match self.refresh_every {
            Some(k) => at.step % k.max(1) == 0,
            None => at.step == 0,
        };
        match self.mode {
            CacheMode::Off => ForwardPlan {
                window: 0..at.seq_len,
                kv: KvAccess::Fresh,
            },
            _ if refresh => full,
            CacheMode::Prefix => reuse(at.block.start..at.seq_len),
            CacheMode::Dual => reuse(at.block.clone()),
        }
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
            mode: CacheMode::Dual,
            refresh_every: Some(0),
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

    proptest! {
        #[test]
        fn plans_are_well_formed(p in 1usize..64, b in 1usize..16, k in 0usize..8, step in 0usize..40,
                                 mode in 0usize..3, every in proptest::option::of(1usize..6)) {
            let nblocks = 8;
            let seq_len = p + nblocks * b;
            let block = p + k * b..p + (k + 1) * b;
            let settings = CacheSettings { mode: CacheMode::ALL[mode], refresh_every: every };
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
