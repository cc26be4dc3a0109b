//! Reproducible randomness for augmentation and sampling.
//!
//! Every random decision about a sample comes from a generator seeded by `(seed, epoch,
//! sample index, stream)`, never from a shared generator, so the result does not depend on how
//! many threads decode, in which order they finish, or which other samples share the batch.
//! The generator is SplitMix64: tiny, fast, and good enough for augmentation and shuffling.

/// A SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator from a single seed.
    pub fn new(seed: u64) -> Self {
        Rng { state: mix(seed ^ 0x6A09_E667_F3BC_C908) }
    }

    /// The generator of one sample in one epoch; `stream` separates independent uses (one per
    /// modality, say) so that adding a transform to one modality leaves the others unchanged.
    pub fn for_sample(seed: u64, epoch: u64, index: u64, stream: u64) -> Self {
        Rng::new(mix(mix(mix(seed) ^ epoch) ^ index) ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.state)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        // Lemire's multiply-shift; the bias is below 2^-64 · n, negligible here.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Shuffles a slice in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_stream_and_different_inputs_differ() {
        let a: Vec<u64> = (0..4).map(|_| Rng::for_sample(1, 2, 3, 0).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let firsts: Vec<u64> =
            [(1, 2, 3, 0), (1, 2, 3, 1), (1, 2, 4, 0), (1, 3, 3, 0), (2, 2, 3, 0)]
                .iter()
                .map(|&(s, e, i, k)| Rng::for_sample(s, e, i, k).next_u64())
                .collect();
        for i in 0..firsts.len() {
            for j in i + 1..firsts.len() {
                assert_ne!(firsts[i], firsts[j]);
            }
        }
    }

    #[test]
    fn distributions_have_the_right_moments() {
        let mut r = Rng::new(7);
        let n = 200_000;
        let (mut s, mut s2, mut hits) = (0.0, 0.0, 0);
        let mut counts = [0u32; 5];
        for _ in 0..n {
            let z = r.normal();
            s += z;
            s2 += z * z;
            hits += u32::from(r.chance(0.25));
            counts[r.below(5) as usize] += 1;
        }
        let mean = s / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.02, "mean {mean} var {var}");
        assert!((f64::from(hits) / n as f64 - 0.25).abs() < 0.005);
        assert!(
            counts.iter().all(|&c| (f64::from(c) / n as f64 - 0.2).abs() < 0.005),
            "{counts:?}"
        );
        let mut v: Vec<u32> = (0..100).collect();
        r.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }
}
