//! The training loop: epochs over a [`Loader`], the optimiser stepped on a schedule (with
//! gradient accumulation and clipping), an evaluation on the validation split after every
//! epoch, early stopping on a chosen metric, crash-safe checkpoints (`last` every epoch, `best`
//! when the metric improves), the metric history in `metrics.jsonl`, a guard against NaN or
//! infinite losses, and resume from the last checkpoint.
//!
//! A run's folder: `config.json` (the resolved model and training configuration),
//! `data/` (the pipeline's normalisation statistics and vocabulary), `checkpoints/`
//! (`last`, `best`), `metrics.jsonl` and `curves.svg`. With them a model is rebuilt for
//! evaluation: [`crate::model::Model::new`] from `config.json`'s `model`, the pipeline's
//! `load_statistics`, and [`crate::checkpoint::load_weights`].
//!
//! Reproducibility: the loader's order and augmentation depend only on (seed, epoch, sample),
//! and libtorch's generator is re-seeded from (seed, epoch) at the start of every epoch, so a
//! run resumed from an epoch's checkpoint on the CPU follows the uninterrupted run exactly.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mm_data::loader::{Loader, LoaderConfig, Shard};
use mm_data::manifest::{Manifest, Split};
use mm_data::pipeline::Pipeline;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tch::nn;

use crate::checkpoint;
use crate::dist::ProcessGroup;
use crate::model::Model;
use crate::optim::{Group, Optimizer, OptimizerConfig};
use crate::precision::Precision;
use crate::schedule::Shape;
use crate::{Error, Result};

mod fused;
pub mod strategy;
mod trainer;

pub use fused::{evaluate, evaluate_group, evaluate_in};
pub use trainer::{Fitted, StepLoss, TrainStep, Trainer};

/// What to do with a batch whose loss is NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnNonFinite {
    /// Stop the run with an error naming the epoch, step and sample ids.
    #[default]
    Stop,
    /// Skip the batch (no update) and count it in the epoch's record.
    Skip,
}

/// Early stopping on a validation metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// The metric (`accuracy`, `macro_f1`, `auroc`, `loss`, `mse`, `mae`, `pearson`).
    pub metric: String,
    /// Epochs without improvement before stopping.
    pub patience: u64,
}

/// Reduce-on-plateau on the selection metric (see [`crate::schedule::ReduceOnPlateau`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlateauConfig {
    /// Multiplier per reduction (default 0.1).
    #[serde(default = "tenth")]
    pub factor: f64,
    /// Epochs without improvement before a reduction (default 2).
    #[serde(default = "two")]
    pub patience: u32,
    /// The multiplier never goes below this (default 0).
    #[serde(default)]
    pub min_scale: f64,
}

fn tenth() -> f64 {
    0.1
}

fn two() -> u32 {
    2
}

/// Training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Epochs.
    pub epochs: u64,
    /// Samples per batch.
    pub batch_size: usize,
    /// The optimiser.
    pub optimizer: OptimizerConfig,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// The shape after warm-up; `total_steps` of cosine and linear default to the whole run.
    pub schedule: Option<Shape>,
    /// Multiply the rate by a factor when the selection metric stops improving (on top of the
    /// schedule).
    pub reduce_on_plateau: Option<PlateauConfig>,
    /// Clip the global gradient norm to this.
    pub clip_grad_norm: Option<f64>,
    /// Batches per optimiser step.
    pub accumulate: usize,
    /// Early stopping; `None` trains every epoch.
    pub early_stopping: Option<EarlyStopping>,
    /// The metric that picks the `best` checkpoint when there is no early stopping
    /// (default: accuracy for classification, MSE for regression).
    pub select: Option<String>,
    /// Seed of the order, augmentation and initialisation.
    pub seed: u64,
    /// NaN or infinite losses.
    pub on_non_finite: OnNonFinite,
    /// Learning-rate multiplier of the encoders' backbones (pretrained parts); 0 freezes them.
    pub backbone_lr_scale: f64,
    /// The pretrained encoders (image `weights`, a BERT model, word vectors) stay frozen for
    /// this many epochs while the rest learns, then learn at `backbone_lr_scale` times the rate:
    /// the usual way to fine-tune a pretrained encoder without wrecking it while the layers
    /// after it are still random.
    pub freeze_backbone_epochs: u64,
    /// `"f32"`, or `"bf16"`: forward passes under bf16 autocast (on the model's device type).
    pub precision: Precision,
    /// Evaluate the validation split once before the first epoch (a fresh run only), into
    /// `before.json` in the run folder: where a pretrained model starts, to compare the trained
    /// one with.
    pub eval_before: bool,
    /// Print one line per epoch (for logs).
    pub verbose: bool,
    /// A progress bar with the loss, throughput and time left, on a terminal (never in logs).
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 64,
            optimizer: OptimizerConfig::AdamW {
                betas: (0.9, 0.999),
                eps: 1e-8,
                weight_decay: 0.01,
            },
            lr: 1e-3,
            warmup_steps: 0,
            schedule: None,
            reduce_on_plateau: None,
            clip_grad_norm: None,
            accumulate: 1,
            early_stopping: None,
            select: None,
            seed: 0,
            on_non_finite: OnNonFinite::Stop,
            backbone_lr_scale: 1.0,
            freeze_backbone_epochs: 0,
            precision: Precision::F32,
            eval_before: false,
            verbose: false,
            progress: true,
        }
    }
}

/// The outcome of [`fit`].
#[derive(Debug, Clone)]
pub struct Report {
    /// One record per epoch (as in `metrics.jsonl`).
    pub history: Vec<Value>,
    /// The validation metric that selects the `best` checkpoint (and stops early).
    pub metric: String,
    /// The best value of the selection metric and its epoch.
    pub best: Option<(f64, u64)>,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// The validation metrics before the first epoch (`train.eval_before`).
    pub before: Option<Map<String, Value>>,
    /// The pretrained weights loaded before the first epoch, by modality (empty for a resumed
    /// run, whose checkpoint holds them).
    pub pretrained: Vec<(String, mm_encoders::weights::LoadReport)>,
}

/// Trains `model` (whose variables live in `vs`) on the training split of `manifest` and
/// evaluates it on the validation split after every epoch; writes checkpoints and
/// `metrics.jsonl` under `out`. With `resume`, continues from `out/checkpoints/last` when it
/// exists.
pub fn fit(
    model: &Model,
    vs: &nn::VarStore,
    manifest: Arc<Manifest>,
    pipeline: Arc<Pipeline>,
    config: &TrainConfig,
    out: &Path,
    resume: bool,
) -> Result<Report> {
    fit_in(model, vs, manifest, pipeline, config, out, resume, None)
}

/// [`fit`] as one rank of a data-parallel job when `group` is given (see [`crate::dist`]).
///
/// Every rank calls it with the same model, data and configuration. Rank 0 loads the
/// pretrained weights or the checkpoint to resume from and sends the variables, the optimiser's
/// state and the training state to the others, so the other ranks need neither the files nor
/// the run folder. Each epoch every rank trains on its own shard of the training split
/// ([`Shard`]); gradients are averaged across the ranks before every optimiser step, so all
/// ranks take the same step, the one a single process would take on the ranks' batches put
/// together (`batch_size` is per rank: the effective batch is `batch_size` times the ranks).
/// The validation split is evaluated in shards and its predictions gathered, so the metrics are
/// the whole split's; a non-finite loss on any rank stops (or skips the batch on) every rank.
/// Only rank 0 writes the run folder (checkpoints, `metrics.jsonl`, curves) and prints. A
/// checkpoint resumes with any number of ranks: the data order depends on (seed, epoch) only.
#[allow(clippy::too_many_arguments)]
pub fn fit_in(
    model: &Model,
    vs: &nn::VarStore,
    manifest: Arc<Manifest>,
    pipeline: Arc<Pipeline>,
    config: &TrainConfig,
    out: &Path,
    resume: bool,
    group: Option<&ProcessGroup>,
) -> Result<Report> {
    let shard = group
        .filter(|g| g.world_size() > 1)
        .map_or(Shard::WHOLE, |g| Shard { rank: g.rank(), world: g.world_size() });
    let train_loader = Loader::new(
        Arc::clone(&manifest),
        Split::Train,
        Arc::clone(&pipeline),
        LoaderConfig {
            batch_size: config.batch_size.max(1),
            shard,
            ..LoaderConfig::training(config.seed)
        },
    )
    .map_err(Error::from)?;
    // Model selection on the test split would be a leak: a validation split is required.
    if manifest.split(Split::Val).next().is_none() {
        return Err(Error::Data(format!(
            "{}: no sample has split \"val\"; training selects and stops on a validation split, never the test split",
            manifest.source().display()
        )));
    }
    let val_loader = Loader::new(
        Arc::clone(&manifest),
        Split::Val,
        Arc::clone(&pipeline),
        LoaderConfig { batch_size: config.batch_size.max(1), shard, ..LoaderConfig::evaluation() },
    )
    .map_err(Error::from)?;
    fit_with(model, vs, &train_loader, &val_loader, &pipeline, config, out, resume, group)
}

/// [`fit_in`] over loaders made by the caller: the training split's (shuffled, augmented, its
/// last short batch dropped) and the validation split's, each with this rank's
/// [`Shard`] when `group` is given; for example [`Loader::from_shards`] over tar shards.
///
/// This writes what rebuilds the model beside the run (`config.json`, the pipeline's `data/`),
/// checks one validation batch through the model, loads the pretrained weights of a fresh run,
/// and hands the loop to the [`Trainer`].
#[allow(clippy::too_many_arguments)]
pub fn fit_with(
    model: &Model,
    vs: &nn::VarStore,
    train_loader: &Loader,
    val_loader: &Loader,
    pipeline: &Pipeline,
    config: &TrainConfig,
    out: &Path,
    resume: bool,
    group: Option<&ProcessGroup>,
) -> Result<Report> {
    let main = group.is_none_or(|g| g.is_main());
    if config.backbone_lr_scale == 0.0 {
        model.set_backbones_trainable(false);
    }
    let optimizer = Optimizer::new(&config.optimizer, optimizer_groups(model, vs, config))?;
    // The configuration is checked before anything is written.
    let trainer = Trainer::new(model, vs, optimizer, config, out, group)?;
    trainer.check_loaders(train_loader, val_loader)?;
    if main {
        write_run(model, pipeline, config, out)?;
    }
    // A dry run of one batch: a model that does not fit its data fails here, not mid-epoch.
    if let Some(first) = val_loader.epoch(0).next() {
        model.check(&first.map_err(Error::from)?.to_device(vs.device()))?;
    }
    let resuming = resume && checkpoint::exists(&checkpoint_dir(out), "last");
    let pretrained =
        if main && !resuming { load_pretrained(model, vs, config, out)? } else { Vec::new() };
    let fitted = trainer.fit(train_loader, val_loader, resume)?;
    Ok(Report {
        history: fitted.history,
        metric: fitted.metric,
        best: fitted.best,
        stopped_early: fitted.stopped_early,
        before: fitted.before,
        pretrained,
    })
}

/// The optimiser's parameter groups: two when the backbones learn at their own rate (the
/// backbones, and the rest), else one.
fn optimizer_groups(model: &Model, vs: &nn::VarStore, config: &TrainConfig) -> Vec<Group> {
    if config.backbone_lr_scale == 1.0 || config.backbone_lr_scale <= 0.0 {
        return vec![Group::new("all", vs.trainable_variables())];
    }
    let backbone = model.backbone_parameters();
    let ptrs: std::collections::HashSet<usize> =
        backbone.iter().map(|t| t.data_ptr() as usize).collect();
    let rest = vs
        .trainable_variables()
        .into_iter()
        .filter(|t| !ptrs.contains(&(t.data_ptr() as usize)))
        .collect();
    let mut b = Group::new("backbone", backbone);
    b.lr_scale = config.backbone_lr_scale;
    vec![b, Group::new("rest", rest)]
}

/// What rebuilds the model beside the run: the resolved configuration (`config.json`) and
/// the pipeline's statistics and vocabulary (`data/`).
fn write_run(model: &Model, pipeline: &Pipeline, config: &TrainConfig, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
    let resolved = json!({"model": model.config(), "train": config});
    mm_data::fs::write_atomic(
        &out.join("config.json"),
        serde_json::to_string_pretty(&resolved).unwrap_or_default().as_bytes(),
    )
    .map_err(Error::from)?;
    pipeline.save_statistics(out.join("data")).map_err(Error::from)?;
    if let Some(mm_data::pipeline::TextEncoder::Words { vocab, .. }) =
        pipeline.text.as_ref().map(|t| &t.encoder)
    {
        vocab.save(out.join("data/vocab.txt")).map_err(Error::from)?;
    }
    if let Some(vocab) = pipeline.transcript.as_ref().and_then(|t| t.vocab()) {
        vocab
            .save(out.join("data").join(mm_data::config::TRANSCRIPT_VOCAB))
            .map_err(Error::from)?;
    }
    Ok(())
}

/// A fresh run starts from the configured pretrained weights; a record of what was loaded (and
/// what was skipped, and why) goes beside the run, in `pretrained.json`.
fn load_pretrained(
    model: &Model,
    vs: &nn::VarStore,
    config: &TrainConfig,
    out: &Path,
) -> Result<Vec<(String, mm_encoders::weights::LoadReport)>> {
    let pretrained = model.load_pretrained(vs)?;
    if pretrained.is_empty() {
        return Ok(pretrained);
    }
    let record: Map<String, Value> = pretrained
        .iter()
        .map(|(m, r)| {
            let summary = r.summary();
            (m.clone(), json!({"loaded": r.loaded, "skipped": r.skipped, "kept": r.kept, "summary": summary}))
        })
        .collect();
    mm_data::fs::write_atomic(
        &out.join("pretrained.json"),
        serde_json::to_string_pretty(&record).unwrap_or_default().as_bytes(),
    )
    .map_err(Error::from)?;
    if config.verbose {
        for (m, r) in &pretrained {
            eprintln!("pretrained {m}: {}", r.summary());
        }
    }
    Ok(pretrained)
}

impl TrainConfig {
    /// Checks every number of `[train]` before anything is read or built, each message naming
    /// its key: counts at least 1, rates positive and finite, factors in range, the
    /// optimiser's settings (`train.optimizer.momentum` in [0, 1), ...).
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        for (key, n) in [
            ("epochs", self.epochs),
            ("batch_size", self.batch_size as u64),
            ("accumulate", self.accumulate as u64),
        ] {
            if n == 0 {
                return bad(format!("train.{key} = 0: must be at least 1"));
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("train.lr = {}: a positive learning rate", self.lr));
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return bad(format!("train.clip_grad_norm = {c}: must be positive"));
            }
        }
        if !(self.backbone_lr_scale.is_finite() && self.backbone_lr_scale >= 0.0) {
            return bad(format!(
                "train.backbone_lr_scale = {}: must be 0 (frozen) or positive",
                self.backbone_lr_scale
            ));
        }
        if let Some(p) = &self.reduce_on_plateau {
            if !(p.factor > 0.0 && p.factor < 1.0 && (0.0..1.0).contains(&p.min_scale)) {
                return bad(format!(
                    "train.reduce_on_plateau: factor {} must be in (0, 1) and min_scale {} in [0, 1)",
                    p.factor, p.min_scale
                ));
            }
        }
        match self.schedule {
            Some(Shape::Step { every, gamma }) => {
                if every == 0 || !(gamma > 0.0 && gamma <= 1.0) {
                    return bad(format!("train.schedule: every = {every} must be at least 1 and gamma = {gamma} in (0, 1]"));
                }
            }
            Some(Shape::Cosine { min_lr, .. } | Shape::Linear { min_lr, .. }) => {
                if !(min_lr.is_finite() && min_lr >= 0.0 && min_lr <= self.lr) {
                    return bad(format!(
                        "train.schedule.min_lr = {min_lr}: must be in [0, lr = {}]",
                        self.lr
                    ));
                }
            }
            Some(Shape::Constant) | None => {}
        }
        if let Some(es) = &self.early_stopping {
            if es.patience == 0 {
                return bad("train.early_stopping.patience: at least 1".into());
            }
        }
        self.optimizer.validate().map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("train.{m}")),
            e => e,
        })
    }
}

/// Takes the run folder `out` for this process: locks it (a second writer, a training or a
/// `--resume` started while this one runs, is refused with this process's id; see
/// [`mm_data::fs::DirLock`]) and removes the temporary files a killed run left in it and in its
/// checkpoints. Hold the lock for as long as the run writes the folder.
pub fn claim(out: &Path) -> Result<mm_data::fs::DirLock> {
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    let mut what = args.join(" ");
    if what.chars().count() > 300 {
        what = what.chars().take(300).chain("...".chars()).collect();
    }
    let lock = mm_data::fs::DirLock::acquire(out, &what)?;
    if !lock.held() {
        eprintln!(
            "warning: {}: this file system cannot lock files (flock), so nothing keeps a second process from writing this run folder at the same time",
            out.display()
        );
    }
    for dir in [out.to_path_buf(), checkpoint_dir(out)] {
        mm_data::fs::remove_stale(&dir);
    }
    Ok(lock)
}

/// The checkpoint folder of the run folder `out`.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}
