//! A small seeded PRNG (xoshiro256++ seeded by SplitMix64).
//!
//! Our own so that a seed gives the same Gumbel noise and random confidences on every platform
//! and in every future version (rand's `StdRng` does not promise that). The reference draws from
//! torch's generator, which no port can reproduce; temperature-0 decoding needs no randomness.

/// Seeded pseudo-random generator; one per batch row so rows are independent of each other.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator from a seed (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in the open interval (0, 1): never 0, never 1 (so `-ln(-ln u)` is finite).
    pub fn open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard Gumbel sample `-ln(-ln u)`.
    pub fn gumbel(&mut self) -> f64 {
        -(-self.open01().ln()).ln()
    }

    /// The seed of row `row` derived from a request seed, so a row's stream does not depend on
    /// the batch it is in.
    pub fn row_seed(seed: u64, row: usize) -> u64 {
        seed ^ (row as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open01_stays_inside() {
        let mut r = Rng::new(7);
        for _ in 0..10_000 {
            let u = r.open01();
            assert!(u > 0.0 && u < 1.0);
        }
    }

    #[test]
    fn same_seed_same_stream() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}
