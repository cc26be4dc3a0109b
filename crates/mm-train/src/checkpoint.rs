//! Checkpoints that a crash cannot corrupt: the weights and the optimiser's state go to
//! safetensors files with a fresh name each time, then a small JSON record naming them (and
//! holding the training state) replaces the previous record atomically; files no record names
//! any more are deleted afterwards. A kill at any moment leaves the previous record and its
//! files intact.
//!
//! Layout in the checkpoint folder, for the tag `last` (and likewise `best`):
//! `last.json` → `{"weights": "last-000120.safetensors", "optimizer":
//! "last-000120.optimizer.safetensors", "state": {...}}`.
//!
//! A resume restores the weights (parameters and batch-norm statistics), the optimiser's
//! moments and step count, and [`TrainState`] (epoch, step, best metric, the plateau
//! scheduler, the seed, the metric history), so that on CPU with a fixed seed a resumed run
//! continues exactly as the uninterrupted one would have.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::optim::Optimizer;
use crate::schedule::ReduceOnPlateau;
use crate::{Error, Result};

/// Where a run is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: u64,
    /// Optimiser steps taken.
    pub step: u64,
    /// Best value of the watched metric so far, and the epoch it came from.
    pub best: Option<(f64, u64)>,
    /// Epochs since the best (early stopping).
    pub epochs_since_best: u64,
    /// The reduce-on-plateau state, if the run uses one.
    pub plateau: Option<ReduceOnPlateau>,
    /// The run's seed.
    pub seed: u64,
    /// One JSON object per completed epoch (losses, metrics, learning rate, time).
    pub history: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    weights: String,
    optimizer: String,
    optimizer_steps: i64,
    state: TrainState,
}

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Checkpoint(format!("{}: {e}", path.display()))
}

/// Saves the variables of `vs`, the optimiser and `state` under `tag` in `dir` (created).
pub fn save(
    dir: &Path,
    tag: &str,
    vs: &nn::VarStore,
    optimizer: &Optimizer,
    state: &TrainState,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let weights = format!("{tag}-{:06}.safetensors", state.step);
    let optim = format!("{tag}-{:06}.optimizer.safetensors", state.step);
    let named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    mm_encoders::weights::save_named(&dir.join(&weights), named).map_err(Error::from)?;
    let (moments, steps) = optimizer.state_tensors();
    mm_encoders::weights::save_named(&dir.join(&optim), moments.into_iter().collect())
        .map_err(Error::from)?;
    let record = Record {
        weights: weights.clone(),
        optimizer: optim.clone(),
        optimizer_steps: steps,
        state: state.clone(),
    };
    let json = serde_json::to_vec_pretty(&record).map_err(|e| io(dir, e))?;
    let path = dir.join(format!("{tag}.json"));
    mm_data::fs::write_atomic(&path, &json).map_err(Error::from)?;
    // Files of this tag that the record no longer names (earlier saves, or a save killed
    // before its record was written).
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{tag}-"))
                && name.ends_with(".safetensors")
                && name != weights
                && name != optim
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

fn read_record(dir: &Path, tag: &str) -> Result<Record> {
    let path = dir.join(format!("{tag}.json"));
    let bytes = mm_data::fs::read_capped(&path, mm_data::fs::FileKind::Text)?;
    let record: Record = serde_json::from_slice(&bytes)
        .map_err(|e| io(&path, format!("not a checkpoint record: {e}")))?;
    // A record names files beside it, nothing else: one from a stranger cannot point us at
    // `../../somewhere` or an absolute path.
    for name in [&record.weights, &record.optimizer] {
        let mut parts = Path::new(name).components();
        if !matches!((parts.next(), parts.next()), (Some(std::path::Component::Normal(_)), None)) {
            return Err(io(
                &path,
                format!("names {name:?}, which is not a file in the checkpoint folder"),
            ));
        }
    }
    Ok(record)
}

/// Whether `dir` holds a checkpoint under `tag`.
pub fn exists(dir: &Path, tag: &str) -> bool {
    dir.join(format!("{tag}.json")).is_file()
}

/// Restores the checkpoint `tag` of `dir` into `vs` (every variable must be in it, with its
/// shape) and `optimizer`; returns the training state.
pub fn load(
    dir: &Path,
    tag: &str,
    vs: &nn::VarStore,
    optimizer: &mut Optimizer,
) -> Result<TrainState> {
    let record = read_record(dir, tag)?;
    let weights: PathBuf = dir.join(&record.weights);
    mm_encoders::weights::load_safetensors(vs, &weights, &Default::default())
        .map_err(Error::from)?;
    let optim = dir.join(&record.optimizer);
    let tensors: BTreeMap<String, Tensor> =
        mm_encoders::weights::read_named(&optim)?.into_iter().collect();
    optimizer.load_state(&tensors, record.optimizer_steps)?;
    Ok(record.state)
}

/// Loads only the weights of checkpoint `tag` into `vs` (for evaluation or prediction: no
/// optimiser needed); returns the training state recorded with them. Weights that are not all
/// finite are refused, naming the tensors: a model with a NaN weight predicts nothing.
pub fn load_weights(dir: &Path, tag: &str, vs: &nn::VarStore) -> Result<TrainState> {
    let record = read_record(dir, tag)?;
    let weights = dir.join(&record.weights);
    mm_encoders::weights::load_safetensors(vs, &weights, &Default::default())
        .map_err(Error::from)?;
    let bad = non_finite(vs);
    if !bad.is_empty() {
        let shown: Vec<&str> = bad.iter().take(5).map(String::as_str).collect();
        return Err(io(
            &weights,
            format!(
                "{} tensor(s) hold NaN or infinite values ({}{}): this checkpoint cannot make predictions; use another one (--checkpoint) or train again",
                bad.len(),
                shown.join(", "),
                if bad.len() > shown.len() { ", ..." } else { "" }
            ),
        ));
    }
    Ok(record.state)
}

/// The floating-point variables of `vs` holding a NaN or an infinity, by name.
pub fn non_finite(vs: &nn::VarStore) -> Vec<String> {
    let mut bad: Vec<String> = tch::no_grad(|| {
        vs.variables()
            .into_iter()
            .filter(|(_, t)| t.is_floating_point() && t.numel() > 0)
            .filter(|(_, t)| !bool::try_from(t.isfinite().all()).unwrap_or(false))
            .map(|(name, _)| name)
            .collect()
    });
    bad.sort();
    bad
}
