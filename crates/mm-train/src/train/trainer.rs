//! The one training loop, for any model that implements [`TrainStep`]: the fused model
//! ([`crate::model::Model`]) and the speech synthesiser (mm-speech) both train here.
//!
//! Per epoch: the seed from (seed, epoch, rank), the training batches (each under the run's
//! precision, its loss checked for NaN, gradients accumulated and averaged across ranks, the
//! optimiser stepped on the schedule), the validation, the [`Strategy`] list (best epoch,
//! plateau, early stopping), the `last` and `best` checkpoints, and the loggers.

use std::path::Path;
use std::time::Instant;

use mm_data::loader::{Batch, Loader};
use serde_json::{json, Map, Value};
use tch::{nn, Device, Kind, Tensor};

use crate::checkpoint::{self, TrainState};
use crate::dist::{self, ProcessGroup, ReduceOp};
use crate::guard;
use crate::heads::Metric;
use crate::log::{Curves, Logger, MetricsJsonl, TensorBoard};
use crate::optim::Optimizer;
use crate::precision::{Autocast, Precision};
use crate::schedule::{Schedule, Shape};
use crate::{Error, Result};

use super::strategy::{Decision, EarlyStop, KeepBest, Plateau, Strategy};
use super::{checkpoint_dir, OnNonFinite, TrainConfig};

/// A training batch's loss: the total that is minimised, and any parts worth recording (their
/// means over the epoch's samples go into the record's `train` object).
#[derive(Debug)]
pub struct StepLoss {
    /// The loss the backward pass starts from (a scalar).
    pub total: Tensor,
    /// Named parts of the loss (scalars), for the record only.
    pub parts: Vec<(&'static str, Tensor)>,
}

impl From<Tensor> for StepLoss {
    fn from(total: Tensor) -> Self {
        StepLoss { total, parts: Vec::new() }
    }
}

/// What the [`Trainer`] needs of a model: a training batch's loss, a validation pass, and its
/// metrics with their directions.
pub trait TrainStep {
    /// The loss of one training batch, in training mode. The trainer runs it under the run's
    /// precision and turns a libtorch failure into [`Error::Torch`].
    fn loss(&self, batch: &Batch) -> Result<StepLoss>;

    /// Evaluates the validation split on `device`: `loss` and every metric, by name. In
    /// data-parallel training each rank sees its shard of `loader` and every rank must return
    /// the whole split's numbers (`group` gathers them).
    fn validate(
        &self,
        loader: &Loader,
        device: Device,
        precision: Precision,
        group: Option<&ProcessGroup>,
    ) -> Result<Map<String, Value>>;

    /// The metric called `name` in [`TrainStep::validate`]'s keys, with its direction.
    fn metric(&self, name: &str) -> Option<Metric>;

    /// The metric that selects the `best` checkpoint unless the configuration names another.
    fn selection(&self) -> Metric;

    /// Every metric name [`TrainStep::validate`] reports (for an error message).
    fn metric_names(&self) -> Vec<String>;

    /// Called before every epoch (from 0), for what depends on the epoch alone.
    fn begin_epoch(&self, _epoch: u64, _config: &TrainConfig) {}
}

/// What a finished [`Trainer::fit`] returns.
#[derive(Debug, Clone)]
pub struct Fitted {
    /// One record per epoch (as in `metrics.jsonl`).
    pub history: Vec<Value>,
    /// The validation metric that selects the `best` checkpoint (and stops early).
    pub metric: String,
    /// The best value of the selection metric and its epoch.
    pub best: Option<(f64, u64)>,
    /// Whether a strategy (early stopping) ended the run.
    pub stopped_early: bool,
    /// The validation metrics before the first epoch, when asked for (`eval_before`) and the
    /// run started fresh.
    pub before: Option<Map<String, Value>>,
}

/// The epoch's running sums over its training batches.
#[derive(Debug, Default)]
struct Tally {
    loss_sum: f64,
    counted: usize,
    skipped: usize,
    samples: usize,
    parts: Vec<(&'static str, f64)>,
    part_samples: usize,
}

/// Trains a [`TrainStep`] (see the module documentation).
///
/// ```no_run
/// use mm_train::optim::{Group, Optimizer};
/// use mm_train::train::{Trainer, TrainConfig};
/// # fn run(model: &mm_train::model::Model, vs: &tch::nn::VarStore,
/// #        train: &mm_data::loader::Loader, val: &mm_data::loader::Loader) -> mm_train::Result<()> {
/// let config = TrainConfig { epochs: 3, ..TrainConfig::default() };
/// let optimizer = Optimizer::new(&config.optimizer, vec![Group::new("all", vs.trainable_variables())])?;
/// let fitted = Trainer::new(model, vs, optimizer, &config, "runs/x".as_ref(), None)?
///     .fit(train, val, false)?;
/// println!("best {:?} by {}", fitted.best, fitted.metric);
/// # Ok(()) }
/// ```
pub struct Trainer<'a> {
    step: &'a dyn TrainStep,
    vs: &'a nn::VarStore,
    optimizer: Optimizer,
    config: &'a TrainConfig,
    out: &'a Path,
    group: Option<&'a ProcessGroup>,
    select: Metric,
    strategies: Vec<Box<dyn Strategy + 'a>>,
    loggers: Vec<Box<dyn Logger + 'a>>,
    synced: Vec<Tensor>,
}

impl<'a> Trainer<'a> {
    /// A trainer of `step`, whose variables live in `vs`, as `config` says, writing into `out`
    /// (rank 0 only, with a `group` of several ranks). Refuses a configuration that cannot
    /// train and a selection or early-stopping metric that `step` does not report. Its
    /// strategies: [`KeepBest`], then [`Plateau`] and [`EarlyStop`] when configured; its
    /// loggers (rank 0, made when [`Trainer::fit`] starts): `metrics.jsonl`, `curves.svg` and
    /// TensorBoard's event files.
    pub fn new(
        step: &'a dyn TrainStep,
        vs: &'a nn::VarStore,
        optimizer: Optimizer,
        config: &'a TrainConfig,
        out: &'a Path,
        group: Option<&'a ProcessGroup>,
    ) -> Result<Self> {
        check(config)?;
        let group = group.filter(|g| g.world_size() > 1);
        let select = selection(step, config)?;
        let mut strategies: Vec<Box<dyn Strategy + 'a>> =
            vec![Box::new(KeepBest::new(select.clone()))];
        if let Some(p) = &config.reduce_on_plateau {
            strategies.push(Box::new(Plateau::new(p.clone(), select.higher_is_better)));
        }
        if let Some(es) = &config.early_stopping {
            strategies.push(Box::new(EarlyStop { patience: es.patience }));
        }
        // Gradients averaged across ranks: every trainable variable, in the store's order of
        // creation (the same on every rank).
        let synced = vs.trainable_variables();
        Ok(Trainer {
            step,
            vs,
            optimizer,
            config,
            out,
            group,
            select,
            strategies,
            loggers: Vec::new(),
            synced,
        })
    }

    /// Adds a strategy, asked after the built-in ones.
    pub fn with_strategy(mut self, strategy: impl Strategy + 'a) -> Self {
        self.strategies.push(Box::new(strategy));
        self
    }

    /// Adds a logger (on rank 0), called after the built-in ones.
    pub fn with_logger(mut self, logger: impl Logger + 'a) -> Self {
        if self.is_main() {
            self.loggers.push(Box::new(logger));
        }
        self
    }

    fn is_main(&self) -> bool {
        self.group.is_none_or(|g| g.is_main())
    }

    fn device(&self) -> Device {
        self.vs.device()
    }

    /// Refuses loaders a run cannot train on: a training split with no full batch (the run
    /// would take no step) and an empty validation split (it would select on nothing).
    /// [`Trainer::fit`] checks this first; a caller that writes files before it can call it
    /// earlier.
    pub fn check_loaders(&self, train: &Loader, val: &Loader) -> Result<()> {
        if train.batches_per_epoch() == 0 {
            return Err(Error::Data(format!(
                "the training split has {} samples, not one full batch of {}{}: lower train.batch_size or add data",
                train.samples(),
                self.config.batch_size,
                self.group.map_or(String::new(), |g| format!(" on each of {} ranks", g.world_size()))
            )));
        }
        if val.samples() == 0 {
            return Err(Error::Data(
                "the validation split has no samples: training selects its best epoch and stops on a validation split".into(),
            ));
        }
        Ok(())
    }

    /// Trains on `train` (shuffled, its last short batch dropped) and validates on `val` after
    /// every epoch; with `resume`, continues from `out/checkpoints/last` when it exists.
    pub fn fit(mut self, train: &Loader, val: &Loader, resume: bool) -> Result<Fitted> {
        self.check_loaders(train, val)?;
        let schedule = self.schedule(train);
        let mut state = self.start(resume)?;
        if self.is_main() {
            // `metrics.jsonl`, `curves.svg` and TensorBoard's event files, then any added.
            let mut loggers: Vec<Box<dyn Logger + 'a>> = vec![
                Box::new(MetricsJsonl::new(self.out.join("metrics.jsonl"))),
                Box::new(Curves::new(self.out.join("curves.svg"))),
                Box::new(TensorBoard::create(self.out)?),
            ];
            loggers.append(&mut self.loggers);
            self.loggers = loggers;
        }
        let before = if self.config.eval_before && state.epoch == 0 {
            let m = self.step.validate(val, self.device(), self.config.precision, self.group)?;
            if self.is_main() {
                let text = serde_json::to_string_pretty(&Value::Object(m.clone()))
                    .expect("metrics are JSON");
                mm_data::fs::write_atomic(&self.out.join("before.json"), text.as_bytes())?;
                if self.config.verbose {
                    let shown = m.get(&self.select.name).and_then(Value::as_f64);
                    eprintln!(
                        "before training: validation {} {}",
                        self.select.name,
                        shown.map_or("n/a".to_string(), |v| format!("{v:.4}"))
                    );
                }
            }
            Some(m)
        } else {
            None
        };
        let mut stopped_early = false;
        while state.epoch < self.config.epochs {
            let epoch = state.epoch;
            self.step.begin_epoch(epoch, self.config);
            let rank = self.group.map_or(0, |g| g.rank()) as u64;
            // Each rank draws its own dropout masks (rank 0 the ones a single process would).
            tch::manual_seed(
                (self.config.seed
                    ^ epoch.wrapping_mul(0x9E37_79B9)
                    ^ rank.wrapping_mul(0x85EB_CA6B_C2B2_AE35)) as i64,
            );
            let started = Instant::now();
            let tally = self.train_epoch(train, &schedule, &mut state)?;
            if let Some(group) = self.group {
                // Buffers such as batch-norm statistics follow rank 0's, as DDP's do.
                dist::broadcast_tensors(group, &buffers(self.vs), 0)?;
            }
            let lr = schedule.lr(state.step.saturating_sub(1)) * Plateau::scale(&state);
            let val_metrics =
                self.step.validate(val, self.device(), self.config.precision, self.group)?;
            let record = record(&state, &tally, lr, started, train.unused(epoch), val_metrics);
            if self.end_epoch(record, &mut state)? == Decision::Stop {
                stopped_early = true;
                break;
            }
        }
        Ok(Fitted {
            history: state.history,
            metric: self.select.name,
            best: state.best,
            stopped_early,
            before,
        })
    }

    /// The learning-rate schedule over the whole run (`total_steps` 0 means the run's steps).
    fn schedule(&self, train: &Loader) -> Schedule {
        let c = self.config;
        let per_epoch = train.batches_per_epoch().div_ceil(c.accumulate).max(1) as u64;
        let total = per_epoch * c.epochs;
        let shape = match c.schedule {
            None => Shape::Constant,
            Some(Shape::Cosine { total_steps: 0, min_lr }) => {
                Shape::Cosine { total_steps: total, min_lr }
            }
            Some(Shape::Linear { total_steps: 0, min_lr }) => {
                Shape::Linear { total_steps: total, min_lr }
            }
            Some(s) => s,
        };
        Schedule { base_lr: c.lr, warmup_steps: c.warmup_steps, shape }
    }

    /// The state to start from: rank 0's checkpoint when resuming, else a fresh one; shared
    /// with every rank (with the variables and the optimiser's state).
    fn start(&mut self, resume: bool) -> Result<TrainState> {
        let ckpt = checkpoint_dir(self.out);
        let mut state = TrainState { seed: self.config.seed, ..Default::default() };
        if self.is_main() && resume && checkpoint::exists(&ckpt, "last") {
            state = checkpoint::load(&ckpt, "last", self.vs, &mut self.optimizer)?;
            if self.config.verbose {
                eprintln!("resuming after epoch {} (step {})", state.epoch, state.step);
            }
        }
        if let Some(group) = self.group {
            state = share_start(group, self.vs, &mut self.optimizer, state)?;
        }
        Ok(state)
    }

    /// One pass over the training batches of the epoch `state.epoch`.
    fn train_epoch(
        &mut self,
        loader: &Loader,
        schedule: &Schedule,
        state: &mut TrainState,
    ) -> Result<Tally> {
        let bar = self.progress_bar(loader, state.epoch);
        let world = self.group.map_or(1, |g| g.world_size());
        let (mut tally, mut pending) = (Tally::default(), 0usize);
        self.optimizer.zero_grad();
        for batch in loader.epoch(state.epoch) {
            let batch = batch.map_err(Error::from)?.to_device(self.device());
            let Some((loss, value)) = self.forward(&batch, state, &mut tally)? else {
                continue;
            };
            guard::step("the backward pass", self.config.precision, self.device(), || {
                (loss.total / self.config.accumulate as f64).backward();
                Ok(())
            })?;
            tally.loss_sum += value;
            tally.counted += 1;
            tally.samples += batch.len() * world;
            add_parts(&mut tally, &loss.parts, batch.len());
            bar.inc(1);
            bar.set_message(format!("{:.4}", tally.loss_sum / tally.counted as f64));
            pending += 1;
            if pending == self.config.accumulate {
                self.take_step(schedule, state)?;
                pending = 0;
            }
        }
        if pending > 0 {
            // The epoch's last, incomplete accumulation group still counts.
            self.take_step(schedule, state)?;
        }
        bar.finish_and_clear();
        Ok(tally)
    }

    /// The batch's loss and its value (the mean over ranks), or `None` when a non-finite loss
    /// skips the batch; a non-finite loss that stops the run is an error.
    fn forward(
        &self,
        batch: &Batch,
        state: &TrainState,
        tally: &mut Tally,
    ) -> Result<Option<(StepLoss, f64)>> {
        let (precision, device) = (self.config.precision, self.device());
        let loss = guard::step("the training step", precision, device, || {
            let _autocast = Autocast::scope(precision, device);
            self.step.loss(batch)
        })?;
        let (value, elsewhere) = self.agree(loss.total.double_value(&[]))?;
        if value.is_finite() {
            return Ok(Some((loss, value)));
        }
        match self.config.on_non_finite {
            OnNonFinite::Stop => Err(Error::NonFinite {
                epoch: state.epoch + 1,
                step: state.step,
                loss: value,
                ids: if elsewhere {
                    "on another rank".to_string()
                } else {
                    format!("{:?}", batch.ids.iter().take(8).collect::<Vec<_>>())
                },
            }),
            OnNonFinite::Skip => {
                tally.skipped += 1;
                Ok(None)
            }
        }
    }

    /// The loss every rank agrees on: the mean over ranks when every rank's is finite, else
    /// NaN (or this rank's own non-finite value), so that all ranks stop or skip together;
    /// and whether the non-finite loss was another rank's.
    fn agree(&self, value: f64) -> Result<(f64, bool)> {
        let Some(group) = self.group else {
            return Ok((value, false));
        };
        let finite = value.is_finite();
        let sums = group.all_reduce_values(
            &[if finite { value } else { 0.0 }, f64::from(u8::from(!finite))],
            ReduceOp::Sum,
        )?;
        Ok(match (sums[1] > 0.0, finite) {
            (false, _) => (sums[0] / group.world_size() as f64, false),
            (true, true) => (f64::NAN, true),
            (true, false) => (value, false),
        })
    }

    /// One optimiser step: gradients averaged across ranks, clipped, applied at the
    /// schedule's rate (times the plateau's multiplier), then cleared.
    fn take_step(&mut self, schedule: &Schedule, state: &mut TrainState) -> Result<()> {
        if let Some(group) = self.group {
            dist::average_gradients(group, &self.synced)?;
        }
        let lr = schedule.lr(state.step) * Plateau::scale(state);
        let (clip, optimizer) = (self.config.clip_grad_norm, &mut self.optimizer);
        guard::step("the optimiser step", self.config.precision, self.vs.device(), || {
            if let Some(max) = clip {
                optimizer.clip_grad_norm(max);
            }
            optimizer.step(lr);
            optimizer.zero_grad();
            Ok(())
        })?;
        state.step += 1;
        Ok(())
    }

    /// After the epoch's validation: the strategies, the record, the checkpoints, the loggers.
    fn end_epoch(&mut self, record: Value, state: &mut TrainState) -> Result<Decision> {
        let value = record["val"].get(&self.select.name).and_then(Value::as_f64);
        state.epoch += 1;
        let mut decision = Decision::Continue;
        for strategy in &mut self.strategies {
            if strategy.after_epoch(value, state) == Decision::Stop {
                decision = Decision::Stop;
            }
        }
        let improved =
            state.epochs_since_best == 0 && state.best.is_some_and(|b| b.1 == state.epoch);
        if self.config.verbose && self.is_main() {
            eprintln!(
                "epoch {}/{}: train loss {:.4}, val {} {}, {:.0} samples/s",
                state.epoch,
                self.config.epochs,
                record["train_loss"].as_f64().unwrap_or(f64::NAN),
                self.select.name,
                value.map_or("n/a".to_string(), |v| format!("{v:.4}")),
                record["samples_per_second"].as_f64().unwrap_or(0.0)
            );
        }
        state.history.push(record);
        if self.is_main() {
            let ckpt = checkpoint_dir(self.out);
            checkpoint::save(&ckpt, "last", self.vs, &self.optimizer, state)?;
            if improved {
                checkpoint::save(&ckpt, "best", self.vs, &self.optimizer, state)?;
            }
            let record = state.history.last().expect("the record just pushed");
            for logger in &mut self.loggers {
                logger.log(record, &state.history)?;
            }
        }
        Ok(decision)
    }

    /// The epoch's progress bar on a terminal (rank 0, when configured), else a hidden one.
    fn progress_bar(&self, loader: &Loader, epoch: u64) -> indicatif::ProgressBar {
        if !(self.config.progress && self.is_main()) {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(loader.batches_per_epoch() as u64),
            indicatif::ProgressDrawTarget::stderr(),
        );
        let style = indicatif::ProgressStyle::with_template(
            "epoch {prefix} [{bar:30}] {pos}/{len} loss {msg} {per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style.progress_chars("=> "));
        bar.set_prefix(format!("{}/{}", epoch + 1, self.config.epochs));
        bar
    }
}

/// Refuses a configuration that cannot train ([`TrainConfig::check`]).
fn check(config: &TrainConfig) -> Result<()> {
    config.check()
}

/// The selection metric: early stopping's, else `select`, else the step's own; a name the
/// step does not report is refused with the names it does.
fn selection(step: &dyn TrainStep, config: &TrainConfig) -> Result<Metric> {
    let named = config.early_stopping.as_ref().map(|e| e.metric.clone()).or(config.select.clone());
    let Some(name) = named else {
        return Ok(step.selection());
    };
    step.metric(&name).ok_or_else(|| {
        let key = if config.early_stopping.is_some() {
            "train.early_stopping.metric"
        } else {
            "train.select"
        };
        Error::Config(format!(
            "{key} = {name:?}: not a metric this model reports (it reports {})",
            step.metric_names().join(", ")
        ))
    })
}

/// Adds a batch's loss parts, weighted by its `samples`.
fn add_parts(tally: &mut Tally, parts: &[(&'static str, Tensor)], samples: usize) {
    if tally.parts.is_empty() {
        tally.parts = parts.iter().map(|(name, _)| (*name, 0.0)).collect();
    }
    for ((_, sum), (_, part)) in tally.parts.iter_mut().zip(parts) {
        *sum += part.double_value(&[]) * samples as f64;
    }
    tally.part_samples += samples;
}

/// The epoch's record, as `metrics.jsonl` holds it.
fn record(
    state: &TrainState,
    tally: &Tally,
    lr: f64,
    started: Instant,
    unused: usize,
    val: Map<String, Value>,
) -> Value {
    let seconds = started.elapsed().as_secs_f64();
    let mut record = json!({
        "epoch": state.epoch + 1,
        "step": state.step,
        "train_loss": if tally.counted > 0 { tally.loss_sum / tally.counted as f64 } else { f64::NAN },
        "lr": lr,
        "seconds": seconds,
        "samples_per_second": tally.samples as f64 / seconds.max(1e-9),
        "skipped_batches": tally.skipped,
        "unused_samples": unused,
    });
    if !tally.parts.is_empty() {
        let n = tally.part_samples.max(1) as f64;
        let parts: Map<String, Value> =
            tally.parts.iter().map(|(name, sum)| (name.to_string(), json!(sum / n))).collect();
        record["train"] = Value::Object(parts);
    }
    record["val"] = Value::Object(val);
    record
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
    let moments =
        if group.is_main() { moments } else { zeros_like(&header["moments"], vs.device()) };
    let list: Vec<Tensor> = moments.values().map(Tensor::shallow_clone).collect();
    dist::broadcast_tensors(group, &list, 0)?;
    if !group.is_main() {
        optimizer.load_state(&moments, steps)?;
    }
    dist::broadcast_variables(group, vs, 0)?;
    Ok(state)
}

/// Zero tensors of the shapes and kinds rank 0 described, to receive its optimiser moments.
fn zeros_like(described: &Value, device: Device) -> std::collections::BTreeMap<String, Tensor> {
    let mut made = std::collections::BTreeMap::new();
    for (name, v) in described.as_object().into_iter().flatten() {
        let shape: Vec<i64> =
            v["shape"].as_array().into_iter().flatten().filter_map(Value::as_i64).collect();
        let kind = if v["kind"] == "Double" { Kind::Double } else { Kind::Float };
        made.insert(name.clone(), Tensor::zeros(shape.as_slice(), (kind, device)));
    }
    made
}
