//! Every validator of generation settings answers `Ok` or a typed error for any integer, never a
//! panic (lengths derived from input use checked arithmetic, so a huge value is an error, not an
//! overflow).

use fastdllm_core::{DecodeConfig, Error, ModelFamily, ModelSpec};
use proptest::prelude::*;

/// Integers that break naive arithmetic: 0, 1, small, `usize::MAX - k`, powers of two, anything.
fn edge() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1usize),
        0usize..1024,
        (0usize..64).prop_map(|k| usize::MAX - k),
        (0u32..64).prop_map(|s| 1usize << s),
        any::<usize>(),
    ]
}

fn spec(max_seq_len: usize) -> ModelSpec {
    ModelSpec {
        family: ModelFamily::Llada,
        vocab_size: 64,
        mask_token_id: 63,
        eos_token_ids: vec![1],
        pad_token_id: 2,
        num_layers: 1,
        num_kv_heads: 1,
        head_dim: 8,
        max_seq_len,
    }
}

proptest! {
    #[test]
    fn decode_config_validates_without_panic(
        g in edge(), b in edge(), s in edge(), cap in proptest::option::of(edge()),
        prompt_len in 1usize..8, max in edge(),
    ) {
        let cfg = DecodeConfig {
            gen_length: g,
            block_length: b,
            steps: s,
            force_block_start: None,
            max_steps_per_block: cap,
        };
        match cfg.validate() {
            Ok(()) => {
                // A valid config has a consistent layout and a cap that fits.
                prop_assert_eq!(cfg.num_blocks() * cfg.block_length, g);
                prop_assert!(cfg.step_cap() >= 1);
                let prompt = vec![3u32; prompt_len];
                match cfg.validate_prompt(&spec(max), &prompt) {
                    Ok(()) => prop_assert!(prompt_len + g <= max),
                    Err(Error::InvalidPrompt(_) | Error::SizeOverflow { .. }) => {}
                    Err(e) => prop_assert!(false, "unexpected error {e}"),
                }
            }
            Err(Error::InvalidSetting { .. } | Error::SizeOverflow { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}

#[test]
fn the_reproducer_is_a_typed_error() {
    // `fastdllm generate --gen-length 18446744073709551608` (= usize::MAX - 7, a multiple of 8).
    let g = usize::MAX - 7;
    let cfg = DecodeConfig {
        gen_length: g,
        block_length: 8,
        steps: g,
        ..Default::default()
    };
    cfg.validate().unwrap();
    let e = cfg.validate_prompt(&spec(4096), &[3; 9]).unwrap_err();
    assert!(matches!(e, Error::SizeOverflow { .. }), "{e}");
    assert!(e.to_string().contains("prompt + gen_length"), "{e}");
    let huge_block = DecodeConfig {
        gen_length: usize::MAX,
        block_length: usize::MAX,
        steps: usize::MAX,
        ..Default::default()
    };
    assert!(matches!(
        huge_block.validate(),
        Err(Error::SizeOverflow { .. })
    ));
}
