//! Pooling a padded sequence to one vector per sample, honouring the step mask: masked mean,
//! masked max and learned attention pooling. An empty sequence pools to zeros.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::{Error, Result};

/// Mean over the valid steps of `[B, T, D]`; zeros for an empty sequence.
pub fn masked_mean(xs: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.unsqueeze(-1).to_kind(xs.kind());
    (xs * &m).sum_dim_intlist(1, false, xs.kind())
        / m.sum_dim_intlist(1, false, xs.kind()).clamp_min(1.0)
}

/// Element-wise maximum over the valid steps of `[B, T, D]`; zeros for an empty sequence.
pub fn masked_max(xs: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.unsqueeze(-1);
    let max = xs.masked_fill(&m.logical_not(), f64::NEG_INFINITY).amax(1, false);
    let any = mask.any_dim(1, false).unsqueeze(1);
    max.where_self(&any, &max.zeros_like())
}

/// Softmax over the valid steps of `scores` `[B, T]`; all zeros for an empty sequence.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor) -> Tensor {
    let filled = scores.masked_fill(&mask.logical_not(), f64::NEG_INFINITY);
    let any = mask.any_dim(1, true);
    // An all-masked row would be NaN; give it zeros instead.
    let safe = filled.where_self(&any, &filled.zeros_like());
    safe.softmax(1, scores.kind()) * any.to_kind(scores.kind()) * mask.to_kind(scores.kind())
}

/// Configuration of [`AttentionPool`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttentionPoolConfig {
    /// Size of the scoring layer (`tanh(W h)` before the score vector); 0 scores `h` linearly.
    pub hidden: i64,
}

impl Default for AttentionPoolConfig {
    fn default() -> Self {
        AttentionPoolConfig { hidden: 64 }
    }
}

/// Additive attention pooling (Bahdanau et al. 2015; Yang et al. 2016 for classification):
/// `score_t = vᵀ tanh(W h_t + b)`, weights a masked softmax over valid steps, output
/// `Σ_t w_t h_t`. Parameters: `proj.weight`, `proj.bias`, `score.weight` under its path.
#[derive(Debug)]
pub struct AttentionPool {
    proj: Option<nn::Linear>,
    score: nn::Linear,
}

impl AttentionPool {
    /// Attention pooling over steps of size `dim`.
    pub fn new(path: &nn::Path, dim: i64, config: &AttentionPoolConfig) -> Result<Self> {
        if dim <= 0 || config.hidden < 0 {
            return Err(Error::Config(format!(
                "attention pooling: dim {dim} and hidden {} must be positive",
                config.hidden
            )));
        }
        let proj = (config.hidden > 0)
            .then(|| nn::linear(path / "proj", dim, config.hidden, Default::default()));
        let width = if config.hidden > 0 { config.hidden } else { dim };
        let score = nn::linear(
            path / "score",
            width,
            1,
            nn::LinearConfig { bias: false, ..Default::default() },
        );
        Ok(AttentionPool { proj, score })
    }

    /// The attention weights `[B, T]` (zero at padded steps, summing to 1 over valid ones).
    pub fn weights(&self, xs: &Tensor, mask: &Tensor) -> Tensor {
        let h = match &self.proj {
            Some(p) => xs.apply(p).tanh(),
            None => xs.shallow_clone(),
        };
        masked_softmax(&h.apply(&self.score).squeeze_dim(-1), mask)
    }

    /// Pools `[B, T, D]` to `[B, D]`.
    pub fn forward(&self, xs: &Tensor, mask: &Tensor) -> Tensor {
        let w = self.weights(xs, mask);
        (xs * w.unsqueeze(-1)).sum_dim_intlist(1, false, xs.kind())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn mask(lengths: &[i64], t: i64) -> Tensor {
        crate::lengths_to_mask(&Tensor::from_slice(lengths), t)
    }

    #[test]
    fn masked_reductions_ignore_padding_and_empty_rows_give_zeros() {
        // Padded steps hold huge values that must not show.
        let xs = Tensor::from_slice(&[
            1.0f32, 2.0, 3.0, 100.0, 4.0, -100.0, 100.0, 100.0, 7.0, 7.0, 7.0, 7.0,
        ])
        .view([3, 4, 1]);
        let m = mask(&[3, 1, 0], 4);
        let mean = Vec::<f32>::try_from(masked_mean(&xs, &m).view([-1])).unwrap();
        assert_eq!(mean, [2.0, 4.0, 0.0]);
        let max = Vec::<f32>::try_from(masked_max(&xs, &m).view([-1])).unwrap();
        assert_eq!(max, [3.0, 4.0, 0.0]);
        let w = masked_softmax(&Tensor::zeros([3, 4], (Kind::Float, Device::Cpu)), &m);
        let w = Vec::<f32>::try_from(w.view([-1])).unwrap();
        let third = 1.0 / 3.0;
        let expected = [third, third, third, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        assert!(w.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6), "{w:?}");
    }

    #[test]
    fn attention_pooling_is_a_convex_combination_of_valid_steps() {
        let vs = nn::VarStore::new(Device::Cpu);
        let pool =
            AttentionPool::new(&(vs.root() / "att"), 3, &AttentionPoolConfig::default()).unwrap();
        let xs = Tensor::randn([2, 5, 3], (Kind::Float, Device::Cpu));
        let m = mask(&[5, 2], 5);
        let w = pool.weights(&xs, &m);
        let sums = Vec::<f32>::try_from(w.sum_dim_intlist(1, false, Kind::Float)).unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");
        assert_eq!(w.get(1).narrow(0, 2, 3).abs().sum(Kind::Float).double_value(&[]), 0.0);
        let names: Vec<String> = vs.variables().into_keys().collect();
        assert!(
            names.contains(&"att.proj.weight".to_string())
                && names.contains(&"att.score.weight".to_string()),
            "{names:?}"
        );
    }
}
