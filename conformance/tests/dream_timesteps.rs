//! Dream's `linspace` timesteps (fastdllm-sampler `dream_timesteps`) equal torch's float32
//! values bit for bit, for every `n` recorded in goldens/dream_timesteps.json (moved here from a
//! unit test of fastdllm-sampler, whose tests need no repository data).

use fastdllm_conformance::paths::goldens_dir;
use fastdllm_sampler::dream_timesteps;

#[test]
fn timesteps_match_torch_linspace_bit_for_bit() {
    let path = goldens_dir().join("dream_timesteps.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("dream_timesteps.json parses");
    let linspace = json["linspace"]
        .as_object()
        .expect("dream_timesteps.json has a 'linspace' object");
    assert!(linspace.len() >= 6, "found {} entries", linspace.len());
    for (key, entry) in linspace {
        let n: usize = key.parse().expect("numeric key");
        let want: Vec<f32> = entry["timesteps_f32"]
            .as_array()
            .expect("timesteps_f32 array")
            .iter()
            .map(|v| v.as_f64().expect("number") as f32)
            .collect();
        let got = dream_timesteps(1e-3, n);
        assert_eq!(got.len(), want.len(), "n = {n}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "n = {n}, i = {i}: {g} vs {w}");
        }
    }
}
