//! The padded canvas of one round of a [`crate::BlockBatch`]: every row's tokens placed so that
//! all rows' current blocks share the same canvas columns.
//!
//! Row `r` has `p_r` prompt tokens, `G` answer positions and `k_r` finished blocks, so its current
//! block starts at `c_r = p_r + k_r * B` in its own coordinates. The round aligns those starts at
//! `S = max_r c_r` by shifting row `r` right by `o_r = S - c_r` (left padding); rows that end
//! before the longest one are right-padded. Pad keys get [`PAD_KEY_BIAS`] and each real token's
//! RoPE position is its index in its own row, so a row computes what it computes alone
//! (docs/ALGORITHM.md §2.9 and §6, item 3). With every row at the same block (plain
//! [`crate::generate()`]), `o_r` is the usual left padding `P - p_r` and the layout is the same in
//! every round.

use std::ops::Range;

use candle_core::{Device, Tensor};

use crate::model::{ForwardInput, LogitRows, Positions};
use crate::{Result, TokenId};

/// Attention bias of pad keys (finite, so no row can become NaN; candle#3236).
pub(crate) const PAD_KEY_BIAS: f32 = -1.0e30;

/// The canvas of one round.
#[derive(Debug)]
pub(crate) struct Canvas {
    /// Padded rows, all of length `seq_len`.
    pub(crate) rows: Vec<Vec<TokenId>>,
    /// Per row: canvas column of its first prompt token.
    pub(crate) offsets: Vec<usize>,
    /// Per row: its real length (prompt + answer).
    pub(crate) lens: Vec<usize>,
    /// Per row: its prompt length.
    pub(crate) prompt_lens: Vec<usize>,
    /// Canvas columns of every row's current block.
    pub(crate) block: Range<usize>,
    pub(crate) mask: TokenId,
}

/// What [`Canvas::new`] needs of a row.
pub(crate) struct RowLayout<'a> {
    /// Prompt then answer.
    pub(crate) tokens: &'a [TokenId],
    pub(crate) prompt_len: usize,
    /// Finished blocks.
    pub(crate) block_idx: usize,
}

impl Canvas {
    pub(crate) fn new(
        rows: &[RowLayout<'_>],
        block_length: usize,
        pad: TokenId,
        mask: TokenId,
    ) -> Self {
        let starts: Vec<usize> = rows
            .iter()
            .map(|r| r.prompt_len + r.block_idx * block_length)
            .collect();
        let s = starts.iter().copied().max().unwrap_or(0);
        let offsets: Vec<usize> = starts.iter().map(|&c| s - c).collect();
        let seq_len = rows
            .iter()
            .zip(&offsets)
            .map(|(r, &o)| o + r.tokens.len())
            .max()
            .unwrap_or(0);
        let padded = rows
            .iter()
            .zip(&offsets)
            .map(|(r, &o)| {
                let mut row = vec![pad; o];
                row.extend_from_slice(r.tokens);
                row.resize(seq_len, pad);
                row
            })
            .collect();
        Canvas {
            rows: padded,
            offsets,
            lens: rows.iter().map(|r| r.tokens.len()).collect(),
            prompt_lens: rows.iter().map(|r| r.prompt_len).collect(),
            block: s..s + block_length,
            mask,
        }
    }

    pub(crate) fn seq_len(&self) -> usize {
        self.rows.first().map_or(0, Vec::len)
    }

    /// Canvas columns of row `r`'s real tokens.
    fn real(&self, r: usize) -> Range<usize> {
        self.offsets[r]..self.offsets[r] + self.lens[r]
    }

    /// Canvas column of row `r`'s first answer position.
    pub(crate) fn answer_start(&self, r: usize) -> usize {
        self.offsets[r] + self.prompt_lens[r]
    }

    /// Row `r`'s answer positions.
    pub(crate) fn answer(&self, r: usize) -> &[TokenId] {
        &self.rows[r][self.answer_start(r)..self.offsets[r] + self.lens[r]]
    }

    /// Row `r`'s prompt and answer, without padding.
    pub(crate) fn unpadded(&self, r: usize) -> &[TokenId] {
        &self.rows[r][self.real(r)]
    }

    fn padded(&self) -> bool {
        let len = self.seq_len();
        self.offsets
            .iter()
            .zip(&self.lens)
            .any(|(&o, &n)| o > 0 || o + n < len)
    }

    pub(crate) fn masks_in(&self, row: usize, range: Range<usize>) -> usize {
        self.rows[row][range]
            .iter()
            .filter(|&&t| t == self.mask)
            .count()
    }

    /// Window tokens, shape `(batch, window_len)`.
    fn tokens(&self, window: &Range<usize>, device: &Device) -> Result<Tensor> {
        let flat: Vec<u32> = self
            .rows
            .iter()
            .flat_map(|r| r[window.clone()].iter().copied())
            .collect();
        Ok(Tensor::from_vec(
            flat,
            (self.rows.len(), window.len()),
            device,
        )?)
    }

    /// RoPE positions: a real token's index in its own row; 0 for pads (their keys are masked
    /// and their outputs unused).
    fn positions(&self, window: &Range<usize>, device: &Device) -> Result<Positions> {
        if !self.padded() {
            return Ok(Positions::Contiguous {
                start: window.start,
            });
        }
        let flat: Vec<u32> = (0..self.rows.len())
            .flat_map(|r| {
                let real = self.real(r);
                let o = self.offsets[r];
                window
                    .clone()
                    .map(move |i| if real.contains(&i) { (i - o) as u32 } else { 0 })
            })
            .collect();
        Ok(Positions::PerRow(Tensor::from_vec(
            flat,
            (self.rows.len(), window.len()),
            device,
        )?))
    }

    /// The key bias of every forward of the round; `None` when no row is padded.
    pub(crate) fn key_bias(&self, device: &Device) -> Result<Option<Tensor>> {
        if !self.padded() {
            return Ok(None);
        }
        let len = self.seq_len();
        let flat: Vec<f32> = (0..self.rows.len())
            .flat_map(|r| {
                let real = self.real(r);
                (0..len).map(move |i| if real.contains(&i) { 0.0 } else { PAD_KEY_BIAS })
            })
            .collect();
        Ok(Some(Tensor::from_vec(
            flat,
            (self.rows.len(), 1, 1, len),
            device,
        )?))
    }

    /// The forward of `window` returning the logits of the canvas columns `rows` (increasing,
    /// inside the window).
    pub(crate) fn input(
        &self,
        window: &Range<usize>,
        rows: &[usize],
        key_bias: &Option<Tensor>,
        device: &Device,
    ) -> Result<ForwardInput> {
        Ok(ForwardInput {
            tokens: self.tokens(window, device)?,
            positions: self.positions(window, device)?,
            window_start: window.start,
            key_bias: key_bias.clone(),
            logits_rows: LogitRows::new(rows.iter().map(|&c| c - window.start).collect())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_at_different_blocks_share_the_block_columns() {
        let a: Vec<u32> = vec![1, 2, 3, 9, 9, 9, 9]; // prompt 3, answer 4, block 0
        let b: Vec<u32> = vec![5, 6, 7, 8, 9]; // prompt 1, answer 4, block 1 done
        let rows = [
            RowLayout {
                tokens: &a,
                prompt_len: 3,
                block_idx: 0,
            },
            RowLayout {
                tokens: &b,
                prompt_len: 1,
                block_idx: 1,
            },
        ];
        let c = Canvas::new(&rows, 2, 0, 9);
        // Block starts: a at 3, b at 1 + 2 = 3: no shift.
        assert_eq!(c.block, 3..5);
        assert_eq!(c.offsets, vec![0, 0]);
        assert_eq!(c.rows[1], vec![5, 6, 7, 8, 9, 0, 0]);
        let rows = [
            RowLayout {
                tokens: &a,
                prompt_len: 3,
                block_idx: 1,
            },
            RowLayout {
                tokens: &b,
                prompt_len: 1,
                block_idx: 0,
            },
        ];
        let c = Canvas::new(&rows, 2, 0, 9);
        // a's block starts at 5, b's at 1: b shifts right by 4, a ends at 7, b at 9.
        assert_eq!(c.block, 5..7);
        assert_eq!(c.offsets, vec![0, 4]);
        assert_eq!(c.seq_len(), 9);
        assert_eq!(c.answer(1), &[6, 7, 8, 9]);
        assert_eq!(c.unpadded(0), a.as_slice());
        let Positions::PerRow(p) = c.positions(&(0..9), &Device::Cpu).unwrap() else {
            panic!("padded canvas must have per-row positions");
        };
        assert_eq!(
            p.to_vec2::<u32>().unwrap(),
            vec![
                vec![0, 1, 2, 3, 4, 5, 6, 0, 0],
                vec![0, 0, 0, 0, 0, 1, 2, 3, 4]
            ]
        );
        let bias = c.key_bias(&Device::Cpu).unwrap().unwrap();
        let bias = bias.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let real: Vec<bool> = bias.iter().map(|&x| x == 0.0).collect();
        let want: Vec<bool> = [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
            .iter()
            .map(|&x| x == 1)
            .collect();
        assert_eq!(real, want);
    }
}
