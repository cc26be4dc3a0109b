//! The fused model's training step ([`TrainStep`] for [`Model`]) and its evaluation.

use mm_data::loader::{Batch, Loader};
use serde_json::{json, Map, Value};
use tch::Device;

use crate::dist::{ProcessGroup, ReduceOp};
use crate::guard;
use crate::heads::{Evaluator, Metric};
use crate::model::{HeadConfig, Model};
use crate::precision::{Autocast, Precision};
use crate::{Error, Result};

use super::trainer::{StepLoss, TrainStep};
use super::TrainConfig;

impl TrainStep for Model {
    fn loss(&self, batch: &Batch) -> Result<StepLoss> {
        let output = self.forward_t(batch, true);
        Ok(self.loss(&output, batch)?.into())
    }

    fn validate(
        &self,
        loader: &Loader,
        device: Device,
        precision: Precision,
        group: Option<&ProcessGroup>,
    ) -> Result<Map<String, Value>> {
        evaluate_group(self, loader, device, precision, group)
    }

    fn metric(&self, name: &str) -> Option<Metric> {
        Model::metric(self, name)
    }

    fn selection(&self) -> Metric {
        Model::selection(self)
    }

    fn metric_names(&self) -> Vec<String> {
        let several = self.heads().len() > 1;
        let mut names = vec!["loss".to_string()];
        for ((name, _), head) in self.heads().iter().zip(self.head_modules()) {
            names.extend(head.metrics().into_iter().map(|m| {
                if several {
                    format!("{name}_{}", m.name)
                } else {
                    m.name
                }
            }));
        }
        names
    }

    fn begin_epoch(&self, epoch: u64, config: &TrainConfig) {
        if config.freeze_backbone_epochs > 0 {
            // Decided by the epoch alone, so a resumed run is in the same phase.
            self.set_pretrained_trainable(
                epoch >= config.freeze_backbone_epochs && config.backbone_lr_scale > 0.0,
            );
        }
    }
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
        let batch = batch.map_err(Error::from)?.to_device(device);
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
