//! Learning-rate schedules: constant, step decay, cosine annealing and linear decay, each with
//! an optional linear warm-up, plus reduce-on-plateau driven by a validation metric. A schedule
//! is a pure function of the step (so a resumed run recomputes it exactly); reduce-on-plateau
//! carries a small state that a checkpoint saves.
//!
//! ```
//! use mm_train::schedule::{Schedule, Shape};
//!
//! let s = Schedule { base_lr: 1e-3, warmup_steps: 100, shape: Shape::Cosine { total_steps: 1100, min_lr: 0.0 } };
//! let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
//! assert!(close(s.lr(0), 1e-5)); // warming up: (step + 1) / warmup of the base
//! assert!(close(s.lr(99), 1e-3));
//! assert!(close(s.lr(600), 5e-4)); // half-way down the cosine
//! assert!(close(s.lr(1100), 0.0));
//! ```

use serde::{Deserialize, Serialize};

/// The shape after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Shape {
    /// The base rate throughout.
    Constant,
    /// Multiplied by `gamma` every `every` steps.
    Step {
        /// Steps between decays.
        every: u64,
        /// Factor per decay.
        gamma: f64,
    },
    /// Cosine annealing from the base rate to `min_lr` at `total_steps` (then `min_lr`).
    Cosine {
        /// Step at which the rate reaches `min_lr`, warm-up included; 0 (the default) for the
        /// run's last step.
        #[serde(default)]
        total_steps: u64,
        /// Final rate (default 0).
        #[serde(default)]
        min_lr: f64,
    },
    /// Linear decay from the base rate to `min_lr` at `total_steps`.
    Linear {
        /// Step at which the rate reaches `min_lr`, warm-up included; 0 (the default) for the
        /// run's last step.
        #[serde(default)]
        total_steps: u64,
        /// Final rate (default 0).
        #[serde(default)]
        min_lr: f64,
    },
}

/// A learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// The rate after warm-up.
    pub base_lr: f64,
    /// Steps of linear warm-up from `base_lr / warmup_steps` to `base_lr`.
    #[serde(default)]
    pub warmup_steps: u64,
    /// The shape after warm-up.
    pub shape: Shape,
}

impl Schedule {
    /// The rate at optimiser step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let after = step - self.warmup_steps;
        match self.shape {
            Shape::Constant => self.base_lr,
            Shape::Step { every, gamma } => {
                self.base_lr * gamma.powi((after / every.max(1)) as i32)
            }
            Shape::Cosine { total_steps, min_lr } => {
                let span = total_steps.saturating_sub(self.warmup_steps).max(1);
                let t = (after as f64 / span as f64).min(1.0);
                min_lr + (self.base_lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Shape::Linear { total_steps, min_lr } => {
                let span = total_steps.saturating_sub(self.warmup_steps).max(1);
                let t = (after as f64 / span as f64).min(1.0);
                self.base_lr + (min_lr - self.base_lr) * t
            }
        }
    }
}

/// Reduce-on-plateau: the rate is multiplied by `factor` when the watched metric has not
/// improved by more than `threshold` for `patience` evaluations (PyTorch's
/// `ReduceLROnPlateau`, relative threshold mode off).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReduceOnPlateau {
    /// Multiplier per reduction.
    pub factor: f64,
    /// Evaluations without improvement before a reduction.
    pub patience: u32,
    /// Smallest change that counts as an improvement.
    pub threshold: f64,
    /// Higher is better (accuracy) or lower is better (loss).
    pub maximise: bool,
    /// Lower bound of the multiplier.
    pub min_scale: f64,
    /// Best value so far.
    pub best: Option<f64>,
    /// Evaluations since the best.
    pub bad: u32,
    /// Current multiplier of the schedule's rate.
    pub scale: f64,
}

impl ReduceOnPlateau {
    /// A fresh state.
    pub fn new(factor: f64, patience: u32, maximise: bool) -> Self {
        ReduceOnPlateau {
            factor,
            patience,
            threshold: 1e-4,
            maximise,
            min_scale: 0.0,
            best: None,
            bad: 0,
            scale: 1.0,
        }
    }

    /// Records an evaluation; returns the (possibly reduced) multiplier.
    pub fn observe(&mut self, value: f64) -> f64 {
        let improved = match self.best {
            None => true,
            Some(b) if self.maximise => value > b + self.threshold,
            Some(b) => value < b - self.threshold,
        };
        if improved {
            self.best = Some(value);
            self.bad = 0;
        } else {
            self.bad += 1;
            if self.bad > self.patience {
                self.scale = (self.scale * self.factor).max(self.min_scale);
                self.bad = 0;
            }
        }
        self.scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_close(a: &[f64], b: &[f64]) {
        assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12), "{a:?} vs {b:?}");
    }

    #[test]
    fn shapes_follow_their_formulas() {
        let step = Schedule {
            base_lr: 0.1,
            warmup_steps: 0,
            shape: Shape::Step { every: 10, gamma: 0.5 },
        };
        all_close(&[step.lr(0), step.lr(9), step.lr(10), step.lr(25)], &[0.1, 0.1, 0.05, 0.025]);
        let lin = Schedule {
            base_lr: 1.0,
            warmup_steps: 10,
            shape: Shape::Linear { total_steps: 20, min_lr: 0.0 },
        };
        all_close(&[lin.lr(4), lin.lr(10), lin.lr(15), lin.lr(30)], &[0.5, 1.0, 0.5, 0.0]);
        let constant = Schedule { base_lr: 0.3, warmup_steps: 3, shape: Shape::Constant };
        all_close(&[constant.lr(0), constant.lr(2), constant.lr(1000)], &[0.1, 0.3, 0.3]);
        let cos = Schedule {
            base_lr: 2.0,
            warmup_steps: 0,
            shape: Shape::Cosine { total_steps: 4, min_lr: 1.0 },
        };
        assert!(
            (cos.lr(1) - (1.0 + 0.5 * (1.0 + std::f64::consts::FRAC_PI_4.cos()))).abs() < 1e-12
        );
        all_close(&[cos.lr(2)], &[1.5]);
    }

    #[test]
    fn plateaus_reduce_the_rate_after_patience_runs_out() {
        let mut p = ReduceOnPlateau::new(0.5, 2, true);
        let scales: Vec<f64> =
            [0.5, 0.6, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7, 0.7].iter().map(|v| p.observe(*v)).collect();
        assert_eq!(scales, [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25]);
        let toml_text = "base_lr = 0.01\nwarmup_steps = 5\nshape = { type = \"cosine\", total_steps = 100, min_lr = 0.0 }";
        let s: Schedule = toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}"));
        all_close(&[s.lr(4)], &[0.01]);
    }
}
