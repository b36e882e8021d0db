//! Property tests of the unmasking policies on random candidate sets (docs/ALGORITHM.md §8).
//!
//! What: every policy returns distinct in-range indices; threshold and factor always make
//! progress; threshold commits exactly {top-1} ∪ {c >= tau}; factor commits a sorted prefix that
//! satisfies its inequality (plus the reference's last-rank quirk); fixed and Dream schedules
//! complete a block in `steps_per_block` steps. Reference: the rules of `llada/generate.py` and
//! `dream/model/generation_utils*.py` as restated in docs/ALGORITHM.md §2.3 / §2.8. The number of
//! cases follows `PROPTEST_CASES` (proptest's default config reads it).

use fastdllm_core::{Candidate, Selection, StepInfo, UnmaskPolicy};
use fastdllm_sampler::{
    factor_threshold, fixed_count, rank_candidates, DreamTimesteps, Factor, FixedSchedule, Origin,
    PerRow, Precision, QuotaThreshold, Threshold,
};
use proptest::prelude::*;

/// Confidences in [0, 1] with frequent exact ties and values on typical thresholds.
fn confidence() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => 0.0..=1.0f64,
        1 => Just(0.9),
        1 => Just(0.5),
        1 => Just(1.0),
        1 => Just(0.0),
        1 => 0.99..=1.0f64,
    ]
}

/// Candidates in position order (as the loop passes them), with gaps between positions.
fn candidates(max: usize) -> impl Strategy<Value = Vec<Candidate>> {
    prop::collection::vec((confidence(), 1usize..4, 0u32..100), 0..max).prop_map(|v| {
        let mut pos = 100;
        v.into_iter()
            .map(|(c, gap, token)| {
                pos += gap;
                Candidate {
                    position: pos,
                    token,
                    confidence: c,
                }
            })
            .collect()
    })
}

fn info(step: usize, spb: usize, m0: usize) -> StepInfo {
    StepInfo {
        row: 0,
        step,
        steps_per_block: spb,
        block_length: m0.max(1),
        block_masks_at_start: m0,
    }
}

fn commits(s: Selection) -> Vec<usize> {
    match s {
        Selection::Commit(v) => v,
        Selection::EndBlock => Vec::new(),
    }
}

fn assert_valid(idx: &[usize], n: usize) -> Result<(), TestCaseError> {
    let mut seen = vec![false; n];
    for &i in idx {
        prop_assert!(i < n, "index {} out of range 0..{}", i, n);
        prop_assert!(!seen[i], "index {} repeated", i);
        seen[i] = true;
    }
    Ok(())
}

/// Runs `policy` on a block until no candidate is left or `max_steps` calls, removing what it
/// commits; returns the per-step commit counts.
fn simulate(
    policy: &mut dyn UnmaskPolicy,
    mut cands: Vec<Candidate>,
    spb: usize,
    first_step: usize,
    max_steps: usize,
) -> Result<Vec<usize>, TestCaseError> {
    let m0 = cands.len();
    let mut counts = Vec::new();
    let mut step = first_step;
    while !cands.is_empty() && counts.len() < max_steps {
        let sel = policy.select(&cands, &info(step, spb, m0));
        let idx = match sel {
            Selection::Commit(v) => v,
            Selection::EndBlock => break,
        };
        assert_valid(&idx, cands.len())?;
        counts.push(idx.len());
        let mut keep = vec![true; cands.len()];
        for i in idx {
            keep[i] = false;
        }
        let mut k = keep.into_iter();
        cands.retain(|_| k.next().unwrap_or(true));
        step += 1;
    }
    Ok(counts)
}

proptest! {
    #[test]
    fn threshold_commits_top1_and_everything_at_or_above_tau(
        c in candidates(40),
        tau in prop_oneof![0.01..=1.0f64, Just(0.9), Just(0.5), Just(1.0)],
        f32_compare in any::<bool>(),
    ) {
        let compare = if f32_compare { Precision::F32 } else { Precision::F64 };
        let mut t = Threshold::new(tau, compare);
        let got = commits(t.select(&c, &info(0, 1, c.len())));
        assert_valid(&got, c.len())?;
        if c.is_empty() {
            prop_assert!(got.is_empty());
        } else {
            let top1 = rank_candidates(&c)[0];
            let mut want: Vec<usize> =
                (0..c.len()).filter(|&i| i == top1 || compare.at_least(c[i].confidence, tau)).collect();
            let mut got_sorted = got.clone();
            got_sorted.sort_unstable();
            want.sort_unstable();
            prop_assert_eq!(got_sorted, want);
            prop_assert_eq!(got[0], top1);
        }
    }

    #[test]
    fn threshold_above_every_confidence_commits_exactly_one(
        conf in prop::collection::vec(prop_oneof![3 => 0.0..0.999f64, 1 => Just(0.5)], 1..40),
    ) {
        let c: Vec<Candidate> = conf
            .iter()
            .enumerate()
            .map(|(i, &x)| Candidate { position: 7 + 2 * i, token: 0, confidence: x })
            .collect();
        let max = conf.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        // The next f32 above max is above it in both precisions.
        let tau = f64::from(f32::from_bits((max as f32).to_bits() + 1)).min(1.0);
        prop_assume!(tau > max);
        for compare in [Precision::F64, Precision::F32] {
            let mut t = Threshold::new(tau, compare);
            prop_assert_eq!(commits(t.select(&c, &info(0, 1, c.len()))).len(), 1);
        }
    }

    #[test]
    fn factor_commits_a_sorted_prefix_satisfying_its_inequality(
        c in candidates(40),
        f in prop_oneof![0.0001..=4.0f64, Just(1.0), Just(2.0), Just(0.001)],
    ) {
        let got = commits(Factor::new(f).select(&c, &info(0, 1, c.len())));
        assert_valid(&got, c.len())?;
        let m = c.len();
        if m == 0 {
            prop_assert!(got.is_empty());
            return Ok(());
        }
        let ranked = rank_candidates(&c);
        let k = got.len();
        prop_assert!(k >= 1);
        prop_assert_eq!(&got[..], &ranked[..k], "not a prefix of the ranking");
        let sorted: Vec<f64> = ranked.iter().map(|&i| c[i].confidence).collect();
        let fails = |n: usize| sorted[n - 1] < factor_threshold(f, n); // 1-based rank
        let first_fail = (1..=m).find(|&n| fails(n));
        match first_fail {
            None => prop_assert_eq!(k, m),
            Some(1) => prop_assert_eq!(k, 1),
            // The reference's quirk: a failure only at the last rank still commits everything.
            Some(n) if n == m => prop_assert_eq!(k, m),
            Some(n) => {
                prop_assert_eq!(k, n - 1);
                for r in 2..=k {
                    prop_assert!(!fails(r));
                }
            }
        }
    }

    #[test]
    fn threshold_and_factor_always_progress(
        c in candidates(40),
        tau in 0.01..=1.0f64,
        f in 0.0001..=4.0f64,
    ) {
        let m = c.len();
        let mut t = Threshold::new(tau, Precision::F32);
        let steps = simulate(&mut t, c.clone(), 1, 0, m + 1)?;
        prop_assert!(steps.iter().all(|&k| k >= 1));
        prop_assert_eq!(steps.iter().sum::<usize>(), m);
        let mut fac = Factor::new(f);
        let steps = simulate(&mut fac, c, 1, 0, m + 1)?;
        prop_assert!(steps.iter().all(|&k| k >= 1));
        prop_assert_eq!(steps.iter().sum::<usize>(), m);
    }

    #[test]
    fn fixed_schedule_counts_sum_to_the_masks(m0 in 0usize..300, spb in 1usize..70) {
        let counts: Vec<usize> = (0..spb).map(|i| fixed_count(m0, spb, i)).collect();
        prop_assert_eq!(counts.iter().sum::<usize>(), m0);
        prop_assert!(counts.windows(2).all(|w| w[0] >= w[1]), "remainder goes first");
        prop_assert!(counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0) <= 1);
        prop_assert_eq!(fixed_count(m0, spb, spb), 0);
    }

    #[test]
    fn fixed_schedule_completes_a_block_in_steps_per_block(c in candidates(64), spb in 1usize..20) {
        let m = c.len();
        let steps = simulate(&mut FixedSchedule, c, spb, 0, spb)?;
        prop_assert_eq!(steps.iter().sum::<usize>(), m);
    }

    #[test]
    fn dream_timesteps_complete_a_block_at_the_last_step(
        c in candidates(64),
        spb in 1usize..20,
        first_step in 0usize..2,
    ) {
        let m = c.len();
        prop_assume!(first_step < spb);
        let mut p = DreamTimesteps::default();
        let steps = simulate(&mut p, c.clone(), spb, first_step, spb)?;
        prop_assert_eq!(steps.iter().sum::<usize>(), m);
        // Before the last step a count never takes everything (1 - s/t < 1), so a block with
        // masks uses every step.
        if m > 0 {
            prop_assert_eq!(steps.len(), spb - first_step);
        }
        // Past the schedule the block ends.
        if !c.is_empty() {
            prop_assert_eq!(p.select(&c, &info(spb, spb, m)), Selection::EndBlock);
        }
    }

    #[test]
    fn every_policy_returns_distinct_in_range_indices(
        c in candidates(48),
        step in 0usize..12,
        spb in 1usize..12,
        m0_extra in 0usize..8,
        seed in any::<u64>(),
        row in 0usize..3,
    ) {
        let m0 = c.len() + m0_extra;
        let mut policies: Vec<Box<dyn UnmaskPolicy>> = vec![
            Box::new(FixedSchedule),
            Box::new(DreamTimesteps::default()),
            Box::new(Threshold::new(0.9, Precision::F64)),
            Box::new(Threshold::new(0.99999, Precision::F32)),
            Box::new(Factor::new(1.0)),
            Box::new(Origin::new(1e-3, seed)),
            Box::new(QuotaThreshold::new(0.9, Precision::F32)),
            Box::new(PerRow::new(vec![
                Box::new(Factor::new(0.001)),
                Box::new(FixedSchedule),
                Box::new(Threshold::new(0.5, Precision::F64)),
            ])),
        ];
        let mut inf = info(step, spb, m0);
        inf.row = row;
        for p in policies.iter_mut() {
            let got = commits(p.select(&c, &inf));
            assert_valid(&got, c.len())?;
        }
    }

    #[test]
    fn quota_threshold_completes_within_budget(
        c in candidates(48),
        spb in 1usize..12,
        tau in 0.01..=1.0f64,
    ) {
        let m = c.len();
        let mut q = QuotaThreshold::new(tau, Precision::F32);
        let steps = simulate(&mut q, c, spb, 0, spb + m + 1)?;
        prop_assert_eq!(steps.iter().sum::<usize>(), m);
        prop_assert!(steps.len() <= spb + m);
    }

    #[test]
    fn origin_commits_everything_by_the_last_step(c in candidates(48), spb in 1usize..10, seed in any::<u64>()) {
        let m = c.len();
        let mut o = Origin::new(1e-3, seed);
        let steps = simulate(&mut o, c, spb, 0, spb)?;
        prop_assert_eq!(steps.iter().sum::<usize>(), m);
    }
}
