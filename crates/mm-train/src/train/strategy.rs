//! What happens between epochs, as small strategies: keeping the best epoch, stopping early,
//! and reducing the learning rate on a plateau. The [`Trainer`](super::Trainer) asks each
//! strategy, in order, after every validation; a strategy of one's own implements
//! [`Strategy`].
//!
//! ```
//! use mm_train::checkpoint::TrainState;
//! use mm_train::heads::Metric;
//! use mm_train::train::strategy::{Decision, EarlyStop, KeepBest, Strategy};
//!
//! let mut state = TrainState::default();
//! let mut best = KeepBest::new(Metric::lower("loss"));
//! let mut stop = EarlyStop { patience: 2 };
//! let mut decisions = Vec::new();
//! for loss in [1.0, 0.5, 0.7, 0.6] {
//!     state.epoch += 1;
//!     best.after_epoch(Some(loss), &mut state);
//!     decisions.push(stop.after_epoch(Some(loss), &mut state));
//! }
//! assert_eq!(state.best, Some((0.5, 2)));
//! assert_eq!(decisions.last(), Some(&Decision::Stop));
//! ```

use crate::checkpoint::TrainState;
use crate::heads::Metric;
use crate::schedule::ReduceOnPlateau;

use super::PlateauConfig;

/// What a strategy wants after an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Train the next epoch.
    Continue,
    /// End the run after this epoch (its checkpoints and records are still written).
    Stop,
}

/// A rule applied after every epoch's validation. `value` is the epoch's selection metric
/// (`None` when the validation did not report it); `state` is the run's state, saved in every
/// checkpoint, so a strategy that keeps its own state there resumes exactly.
pub trait Strategy {
    /// Updates `state` after the epoch `state.epoch` (already counted) and decides.
    fn after_epoch(&mut self, value: Option<f64>, state: &mut TrainState) -> Decision;
}

/// Keeps the best value of the selection metric and its epoch in `state.best`, and counts the
/// epochs since (`state.epochs_since_best`, 0 after an improvement). The first strategy of
/// every run: the `best` checkpoint and [`EarlyStop`] read what it records.
#[derive(Debug, Clone)]
pub struct KeepBest {
    metric: Metric,
}

impl KeepBest {
    /// Keeps the best of `metric`, in its direction.
    pub fn new(metric: Metric) -> Self {
        KeepBest { metric }
    }

    /// Whether `value` improves on `best`. A non-finite value never does.
    pub fn improves(&self, value: f64, best: Option<(f64, u64)>) -> bool {
        match best {
            _ if !value.is_finite() => false,
            None => true,
            Some((b, _)) if self.metric.higher_is_better => value > b,
            Some((b, _)) => value < b,
        }
    }
}

impl Strategy for KeepBest {
    fn after_epoch(&mut self, value: Option<f64>, state: &mut TrainState) -> Decision {
        match value {
            Some(v) if self.improves(v, state.best) => {
                state.best = Some((v, state.epoch));
                state.epochs_since_best = 0;
            }
            _ => state.epochs_since_best += 1,
        }
        Decision::Continue
    }
}

/// Stops when the selection metric has not improved for `patience` epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyStop {
    /// Epochs without improvement before stopping.
    pub patience: u64,
}

impl Strategy for EarlyStop {
    fn after_epoch(&mut self, _value: Option<f64>, state: &mut TrainState) -> Decision {
        if state.epochs_since_best >= self.patience {
            Decision::Stop
        } else {
            Decision::Continue
        }
    }
}

/// Reduces the learning rate when the selection metric stops improving (on top of the
/// schedule): the multiplier lives in `state.plateau`, which the trainer applies to every step.
#[derive(Debug, Clone)]
pub struct Plateau {
    config: PlateauConfig,
    higher_is_better: bool,
}

impl Plateau {
    /// A plateau rule as `config` says, on a metric in the given direction.
    pub fn new(config: PlateauConfig, higher_is_better: bool) -> Self {
        Plateau { config, higher_is_better }
    }

    /// The learning-rate multiplier `state` holds (1 before the first reduction).
    pub fn scale(state: &TrainState) -> f64 {
        state.plateau.as_ref().map_or(1.0, |p| p.scale)
    }
}

impl Strategy for Plateau {
    fn after_epoch(&mut self, value: Option<f64>, state: &mut TrainState) -> Decision {
        if let Some(v) = value.filter(|v| v.is_finite()) {
            let plateau = state.plateau.get_or_insert_with(|| {
                let mut r = ReduceOnPlateau::new(
                    self.config.factor,
                    self.config.patience,
                    self.higher_is_better,
                );
                r.min_scale = self.config.min_scale;
                r
            });
            plateau.observe(v);
        }
        Decision::Continue
    }
}
