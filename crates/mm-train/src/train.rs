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
use std::time::Instant;

use mm_data::loader::{Batch, Loader, LoaderConfig, Shard};
use mm_data::manifest::{Manifest, Split};
use mm_data::pipeline::Pipeline;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tch::{nn, Device, Kind, Tensor};

use crate::checkpoint::{self, TrainState};
use crate::dist::{self, ProcessGroup, ReduceOp};
use crate::guard;
use crate::heads::Evaluator;
use crate::log::{Curves, Logger, MetricsJsonl, TensorBoard};
use crate::model::{HeadConfig, Model};
use crate::optim::{Group, Optimizer, OptimizerConfig};
use crate::precision::{Autocast, Precision};
use crate::schedule::{ReduceOnPlateau, Schedule, Shape};
use crate::{Error, Result};

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
            verbose: false,
            progress: true,
        }
    }
}

/// The metrics `model` reports, for an error message.
fn reported(model: &Model) -> String {
    let several = model.heads().len() > 1;
    let mut names = vec!["loss".to_string()];
    for ((name, _), head) in model.heads().iter().zip(model.head_modules()) {
        names.extend(head.metrics().into_iter().map(|m| {
            if several {
                format!("{name}_{}", m.name)
            } else {
                m.name
            }
        }));
    }
    names.join(", ")
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
    /// The pretrained weights loaded before the first epoch, by modality (empty for a resumed
    /// run, whose checkpoint holds them).
    pub pretrained: Vec<(String, mm_encoders::weights::LoadReport)>,
}

/// Evaluates `model` over `loader`: the loss and the metrics of each head. With one head the
/// keys are plain (`accuracy`); with several they are prefixed by the head's name
/// (`label_accuracy`, `target_mse`) and `loss` is the weighted total.
pub fn evaluate(model: &Model, loader: &Loader, device: Device) -> Result<Map<String, Value>> {
    evaluate_in(model, loader, device, Precision::F32)
}

/// [`evaluate`] with the forward passes in `precision`.
pub fn evaluate_in(
    model: &Model,
    loader: &Loader,
    device: Device,
    precision: Precision,
) -> Result<Map<String, Value>> {
    evaluate_group(model, loader, device, precision, None)
}

/// [`evaluate_in`] in data-parallel training: each rank evaluates its shard of `loader`
/// ([`mm_data::loader::Shard`]), then the predictions of every rank are gathered, so every
/// rank computes the metrics of the whole split (the same numbers on all of them).
pub fn evaluate_group(
    model: &Model,
    loader: &Loader,
    device: Device,
    precision: Precision,
    group: Option<&ProcessGroup>,
) -> Result<Map<String, Value>> {
    let heads: Vec<(&str, &HeadConfig)> = model.heads();
    let mut evaluators: Vec<Box<dyn Evaluator + '_>> =
        model.head_modules().map(|h| h.evaluator()).collect();
    // Each head's loss, then the total: sums over samples.
    let mut losses = vec![0.0; heads.len()];
    let (mut loss_sum, mut batches) = (0.0, 0usize);
    for batch in loader.epoch(0) {
        let batch = batch.map_err(|e| Error::Data(e.to_string()))?.to_device(device);
        // A libtorch failure in the batch is an error naming the model part, not a panic.
        guard::step("evaluation", precision, device, || {
            let _no_grad = tch::no_grad_guard();
            let _autocast = Autocast::scope(precision, device);
            let out = model.forward_t(&batch, false);
            let head_losses = model.head_losses(&out, &batch)?;
            // Each batch's mean loss weighted by its size: a mean over samples, whatever the
            // batches (and the ranks' shards) are.
            let n = batch.len() as f64;
            loss_sum += model.total_loss(&head_losses).double_value(&[]) * n;
            batches += batch.len();
            for (i, (sum, evaluator)) in losses.iter_mut().zip(evaluators.iter_mut()).enumerate() {
                *sum += head_losses[i].1.double_value(&[]) * n;
                evaluator.add(&out, i, &batch)?;
            }
            Ok(())
        })?;
    }
    if let Some(group) = group.filter(|g| g.world_size() > 1) {
        // Sums of losses and batch counts, then every rank's predictions.
        let mut sums = vec![loss_sum, batches as f64];
        sums.extend(&losses);
        let sums = group.all_reduce_values(&sums, ReduceOp::Sum)?;
        (loss_sum, batches) = (sums[0], sums[1] as usize);
        losses.copy_from_slice(&sums[2..]);
        for evaluator in &mut evaluators {
            evaluator.merge(group)?;
        }
    }
    let mut m = Map::new();
    m.insert("loss".into(), json!(loss_sum / batches.max(1) as f64));
    let prefixed = heads.len() > 1;
    for (((name, _), loss), evaluator) in heads.iter().zip(&losses).zip(&evaluators) {
        let key = |k: &str| if prefixed { format!("{name}_{k}") } else { k.to_string() };
        if prefixed {
            m.insert(key("loss"), json!(loss / batches.max(1) as f64));
        }
        evaluator.finish(&mut |k, v| {
            m.insert(key(k), v);
        });
    }
    Ok(m)
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
    .map_err(|e| Error::Data(e.to_string()))?;
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
    .map_err(|e| Error::Data(e.to_string()))?;
    fit_with(model, vs, &train_loader, &val_loader, &pipeline, config, out, resume, group)
}

/// [`fit_in`] over loaders made by the caller: the training split's (shuffled, augmented, its
/// last short batch dropped) and the validation split's, each with this rank's
/// [`Shard`] when `group` is given; for example [`Loader::from_shards`] over tar shards.
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
    let group = group.filter(|g| g.world_size() > 1);
    let (rank, world) = group.map_or((0, 1), |g| (g.rank(), g.world_size()));
    let main = rank == 0;
    if config.epochs == 0
        || config.batch_size == 0
        || config.accumulate == 0
        || !config.lr.is_finite()
        || config.lr <= 0.0
    {
        return Err(Error::Config(
            "train: epochs, batch_size, accumulate and lr must be positive".into(),
        ));
    }
    if let Some(p) = &config.reduce_on_plateau {
        if !(p.factor > 0.0 && p.factor < 1.0 && (0.0..1.0).contains(&p.min_scale)) {
            return Err(Error::Config(format!(
                "train.reduce_on_plateau: factor {} must be in (0, 1) and min_scale {} in [0, 1)",
                p.factor, p.min_scale
            )));
        }
    }
    let select = match config
        .early_stopping
        .as_ref()
        .map(|e| e.metric.clone())
        .or_else(|| config.select.clone())
    {
        Some(name) => model.metric(&name).ok_or_else(|| {
            let key = if config.early_stopping.is_some() {
                "train.early_stopping.metric"
            } else {
                "train.select"
            };
            Error::Config(format!(
                "{key} = {name:?}: not a metric this model reports (it reports {})",
                reported(model)
            ))
        })?,
        None => model.selection(),
    };
    let device = vs.device();
    let steps_per_epoch =
        train_loader.batches_per_epoch().div_ceil(config.accumulate).max(1) as u64;
    let total = steps_per_epoch * config.epochs;
    let shape = match config.schedule {
        None => Shape::Constant,
        Some(Shape::Cosine { total_steps: 0, min_lr }) => {
            Shape::Cosine { total_steps: total, min_lr }
        }
        Some(Shape::Linear { total_steps: 0, min_lr }) => {
            Shape::Linear { total_steps: total, min_lr }
        }
        Some(s) => s,
    };
    let schedule = Schedule { base_lr: config.lr, warmup_steps: config.warmup_steps, shape };
    if config.backbone_lr_scale == 0.0 {
        model.set_backbones_trainable(false);
    }
    // Two groups when the backbones learn at their own rate: the backbones, and the rest.
    let groups = if config.backbone_lr_scale != 1.0 && config.backbone_lr_scale > 0.0 {
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
    } else {
        vec![Group::new("all", vs.trainable_variables())]
    };
    let mut optimizer = Optimizer::new(&config.optimizer, groups)?;
    // Gradients averaged across ranks: every trainable variable, in the store's order of
    // creation (the same on every rank).
    let synced = vs.trainable_variables();
    // The resolved configuration beside the run, and a dry run of one batch: a model that does
    // not fit its data fails here, not mid-epoch.
    if main {
        std::fs::create_dir_all(out)
            .map_err(|e| Error::Checkpoint(format!("{}: {e}", out.display())))?;
        let resolved = json!({"model": model.config(), "train": config});
        mm_data::fs::write_atomic(
            &out.join("config.json"),
            serde_json::to_string_pretty(&resolved).unwrap_or_default().as_bytes(),
        )
        .map_err(|e| Error::Checkpoint(e.to_string()))?;
        // What rebuilds the pipeline for evaluation and prediction: its statistics and vocabulary.
        pipeline.save_statistics(out.join("data")).map_err(|e| Error::Data(e.to_string()))?;
        if let Some(mm_data::pipeline::TextEncoder::Words { vocab, .. }) =
            pipeline.text.as_ref().map(|t| &t.encoder)
        {
            vocab.save(out.join("data/vocab.txt")).map_err(|e| Error::Data(e.to_string()))?;
        }
    }
    if let Some(first) = val_loader.epoch(0).next() {
        model.check(&first.map_err(|e| Error::Data(e.to_string()))?.to_device(device))?;
    }
    let ckpt = checkpoint_dir(out);
    let mut pretrained = Vec::new();
    let mut state = if !main {
        // Rank 0's state arrives below.
        TrainState { seed: config.seed, ..Default::default() }
    } else if resume && checkpoint::exists(&ckpt, "last") {
        checkpoint::load(&ckpt, "last", vs, &mut optimizer)?
    } else {
        // A fresh run starts from the configured pretrained weights; a record of what was
        // loaded (and what was skipped, and why) goes beside the run.
        pretrained = model.load_pretrained(vs)?;
        if !pretrained.is_empty() {
            let record: Map<String, Value> = pretrained
                .iter()
                .map(|(m, r)| (m.clone(), json!({"loaded": r.loaded, "skipped": r.skipped, "kept": r.kept, "summary": r.summary()})))
                .collect();
            mm_data::fs::write_atomic(
                &out.join("pretrained.json"),
                serde_json::to_string_pretty(&record).unwrap_or_default().as_bytes(),
            )
            .map_err(|e| Error::Checkpoint(e.to_string()))?;
            if config.verbose {
                for (m, r) in &pretrained {
                    eprintln!("pretrained {m}: {}", r.summary());
                }
            }
        }
        TrainState { seed: config.seed, ..Default::default() }
    };
    if let Some(group) = group {
        state = share_start(group, vs, &mut optimizer, state)?;
    }
    let take_step = |optimizer: &mut Optimizer, state: &mut TrainState| -> Result<()> {
        if let Some(group) = group {
            dist::average_gradients(group, &synced)?;
        }
        let scale = state.plateau.as_ref().map_or(1.0, |p| p.scale);
        guard::step("the optimiser step", config.precision, device, || {
            if let Some(max) = config.clip_grad_norm {
                optimizer.clip_grad_norm(max);
            }
            optimizer.step(schedule.lr(state.step) * scale);
            optimizer.zero_grad();
            Ok(())
        })?;
        state.step += 1;
        Ok(())
    };
    // Rank 0 records every epoch: metrics.jsonl, curves.svg and TensorBoard's event files.
    let mut loggers: Vec<Box<dyn Logger>> = if main {
        vec![
            Box::new(MetricsJsonl::new(out.join("metrics.jsonl"))),
            Box::new(Curves::new(out.join("curves.svg"))),
            Box::new(TensorBoard::create(out)?),
        ]
    } else {
        Vec::new()
    };
    let mut stopped_early = false;
    while state.epoch < config.epochs {
        let epoch = state.epoch;
        if config.freeze_backbone_epochs > 0 {
            // Decided by the epoch alone, so a resumed run is in the same phase.
            model.set_pretrained_trainable(
                epoch >= config.freeze_backbone_epochs && config.backbone_lr_scale > 0.0,
            );
        }
        // Each rank draws its own dropout masks (rank 0 the ones a single process would).
        tch::manual_seed(
            (config.seed
                ^ epoch.wrapping_mul(0x9E37_79B9)
                ^ (rank as u64).wrapping_mul(0x85EB_CA6B_C2B2_AE35)) as i64,
        );
        let started = Instant::now();
        let (mut loss_sum, mut counted, mut skipped, mut samples) = (0.0, 0usize, 0usize, 0usize);
        let mut pending = 0usize;
        let bar = if config.progress && main {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(train_loader.batches_per_epoch() as u64),
                indicatif::ProgressDrawTarget::stderr(),
            );
            let style = indicatif::ProgressStyle::with_template(
                "epoch {prefix} [{bar:30}] {pos}/{len} loss {msg} {per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("=> "));
            bar.set_prefix(format!("{}/{}", epoch + 1, config.epochs));
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        optimizer.zero_grad();
        for batch in train_loader.epoch(epoch) {
            let batch: Batch = batch.map_err(|e| Error::Data(e.to_string()))?.to_device(device);
            let loss = guard::step("the training step", config.precision, device, || {
                let _autocast = Autocast::scope(config.precision, device);
                let output = model.forward_t(&batch, true);
                model.loss(&output, &batch)
            })?;
            let mut value = loss.double_value(&[]);
            let mut elsewhere = false;
            if let Some(group) = group {
                // Every rank learns whether any rank's loss is not finite (and the mean loss),
                // so all of them stop or skip together.
                let finite = value.is_finite();
                let sums = group.all_reduce_values(
                    &[if finite { value } else { 0.0 }, f64::from(u8::from(!finite))],
                    ReduceOp::Sum,
                )?;
                let bad = sums[1];
                elsewhere = finite && bad > 0.0;
                value = if bad > 0.0 {
                    if finite {
                        f64::NAN
                    } else {
                        value
                    }
                } else {
                    sums[0] / world as f64
                };
            }
            if !value.is_finite() {
                match config.on_non_finite {
                    OnNonFinite::Stop => {
                        let ids: Vec<&String> = batch.ids.iter().take(8).collect();
                        let ids = if elsewhere {
                            "on another rank".to_string()
                        } else {
                            format!("{ids:?}")
                        };
                        return Err(Error::NonFinite {
                            epoch: epoch + 1,
                            step: state.step,
                            loss: value,
                            ids,
                        });
                    }
                    OnNonFinite::Skip => {
                        skipped += 1;
                        continue;
                    }
                }
            }
            guard::step("the backward pass", config.precision, device, || {
                (loss / config.accumulate as f64).backward();
                Ok(())
            })?;
            loss_sum += value;
            counted += 1;
            bar.inc(1);
            bar.set_message(format!("{:.4}", loss_sum / counted as f64));
            samples += batch.len() * world;
            pending += 1;
            if pending == config.accumulate {
                take_step(&mut optimizer, &mut state)?;
                pending = 0;
            }
        }
        if pending > 0 {
            // The epoch's last, incomplete accumulation group still counts.
            take_step(&mut optimizer, &mut state)?;
        }
        if let Some(group) = group {
            // Buffers such as batch-norm statistics follow rank 0's, as DDP's do.
            dist::broadcast_tensors(group, &buffers(vs), 0)?;
        }
        bar.finish_and_clear();
        let lr = schedule.lr(state.step.saturating_sub(1))
            * state.plateau.as_ref().map_or(1.0, |p| p.scale);
        let val = evaluate_group(model, val_loader, device, config.precision, group)?;
        let seconds = started.elapsed().as_secs_f64();
        let mut record = json!({
            "epoch": epoch + 1,
            "step": state.step,
            "train_loss": if counted > 0 { loss_sum / counted as f64 } else { f64::NAN },
            "lr": lr,
            "seconds": seconds,
            "samples_per_second": samples as f64 / seconds.max(1e-9),
            "skipped_batches": skipped,
            "unused_samples": train_loader.unused(epoch),
        });
        record["val"] = Value::Object(val.clone());
        let value = val.get(&select.name).and_then(Value::as_f64);
        let improved = match (value, state.best) {
            (Some(v), None) => v.is_finite(),
            (Some(v), Some((b, _))) => {
                if select.higher_is_better {
                    v > b
                } else {
                    v < b
                }
            }
            (None, _) => false,
        };
        if let (Some(p), Some(v)) = (&config.reduce_on_plateau, value.filter(|v| v.is_finite())) {
            let plateau = state.plateau.get_or_insert_with(|| {
                let mut r = ReduceOnPlateau::new(p.factor, p.patience, select.higher_is_better);
                r.min_scale = p.min_scale;
                r
            });
            plateau.observe(v);
        }
        state.epoch += 1;
        if improved {
            state.best = value.map(|v| (v, epoch + 1));
            state.epochs_since_best = 0;
        } else {
            state.epochs_since_best += 1;
        }
        if config.verbose && main {
            eprintln!(
                "epoch {}/{}: train loss {:.4}, val {} {}, {:.0} samples/s",
                epoch + 1,
                config.epochs,
                record["train_loss"].as_f64().unwrap_or(f64::NAN),
                select.name,
                value.map_or("n/a".to_string(), |v| format!("{v:.4}")),
                record["samples_per_second"].as_f64().unwrap_or(0.0)
            );
        }
        state.history.push(record);
        if main {
            checkpoint::save(&ckpt, "last", vs, &optimizer, &state)?;
            if improved {
                checkpoint::save(&ckpt, "best", vs, &optimizer, &state)?;
            }
            let record = state.history.last().expect("the record just pushed");
            for logger in &mut loggers {
                logger.log(record, &state.history)?;
            }
        }
        if let Some(es) = &config.early_stopping {
            if state.epochs_since_best >= es.patience {
                stopped_early = true;
                break;
            }
        }
    }
    Ok(Report {
        history: state.history,
        metric: select.name,
        best: state.best,
        stopped_early,
        pretrained,
    })
}

/// The variables that are never trained (buffers such as batch-norm statistics), by name;
/// frozen weights are not among them (they do not change).
fn buffers(vs: &nn::VarStore) -> Vec<Tensor> {
    let trained: std::collections::HashSet<usize> =
        vs.trainable_variables().iter().map(|t| t.data_ptr() as usize).collect();
    let named: std::collections::BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    named.into_values().filter(|t| !trained.contains(&(t.data_ptr() as usize))).collect()
}

/// Rank 0's starting point on every rank: its training state (fresh, or the checkpoint it
/// resumed from), its optimiser state and its variables (initialised, pretrained or resumed).
fn share_start(
    group: &ProcessGroup,
    vs: &nn::VarStore,
    optimizer: &mut Optimizer,
    state: TrainState,
) -> Result<TrainState> {
    let (moments, steps) = optimizer.state_tensors();
    let shapes: Map<String, Value> = moments
        .iter()
        .map(|(k, t)| (k.clone(), json!({"shape": t.size(), "kind": format!("{:?}", t.kind())})))
        .collect();
    let header = if group.is_main() {
        serde_json::to_vec(&json!({"state": state, "steps": steps, "moments": shapes}))
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let header: Value = serde_json::from_slice(&group.broadcast_bytes(&header, 0)?)
        .map_err(|e| Error::Distributed(format!("rank 0's training state: {e}")))?;
    let state: TrainState = serde_json::from_value(header["state"].clone())
        .map_err(|e| Error::Distributed(format!("rank 0's training state: {e}")))?;
    let steps = header["steps"].as_i64().unwrap_or(0);
    let device = vs.device();
    let moments: std::collections::BTreeMap<String, Tensor> = if group.is_main() {
        moments
    } else {
        let mut made = std::collections::BTreeMap::new();
        for (name, v) in header["moments"].as_object().into_iter().flatten() {
            let shape: Vec<i64> =
                v["shape"].as_array().into_iter().flatten().filter_map(Value::as_i64).collect();
            let kind = if v["kind"] == "Double" { Kind::Double } else { Kind::Float };
            made.insert(name.clone(), Tensor::zeros(shape.as_slice(), (kind, device)));
        }
        made
    };
    let list: Vec<Tensor> = moments.values().map(Tensor::shallow_clone).collect();
    dist::broadcast_tensors(group, &list, 0)?;
    if !group.is_main() {
        optimizer.load_state(&moments, steps)?;
    }
    dist::broadcast_variables(group, vs, 0)?;
    Ok(state)
}

/// The checkpoint folder of a run's output folder.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}
