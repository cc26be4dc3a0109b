//! Regression of the scalar target: an MLP on the fused vector to one value, MSE or L1 over the
//! samples that have a target; MSE, MAE and Pearson's r.

use mm_data::loader::Batch;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};

use super::{
    fused_mlp, host_f32, missing, Evaluator, Head, HeadContext, HeadInput, HeadOutput, Metric, Mlp,
};
use crate::dist::ProcessGroup;
use crate::loss::{l1, mse};
use crate::metrics;
use crate::model::Output;
use crate::Result;

/// The regression loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RegressionLoss {
    /// Mean squared error.
    #[default]
    Mse,
    /// Mean absolute error.
    L1,
}

/// A regression head.
#[derive(Debug)]
pub struct Regression {
    name: String,
    mlp: Mlp,
    loss: RegressionLoss,
}

impl Regression {
    /// Builds the head; `hidden` and `dropout` are checked.
    pub fn new(
        ctx: &HeadContext<'_>,
        hidden: &[i64],
        dropout: f64,
        loss: RegressionLoss,
    ) -> Result<Self> {
        Ok(Regression {
            name: ctx.name.to_string(),
            mlp: fused_mlp(ctx, hidden, dropout, 1)?,
            loss,
        })
    }
}

impl Head for Regression {
    fn forward(&self, input: &HeadInput<'_>, train: bool) -> HeadOutput {
        HeadOutput::plain(
            self.mlp
                .forward(input.fused.expect("a regression head reads the fused vector"), train)
                .squeeze_dim(1),
        )
    }

    fn loss(&self, prediction: &Tensor, _: &Output, batch: &Batch) -> Result<Tensor> {
        let (target, mask) = batch.target.as_ref().ok_or_else(|| missing("targets", &self.name))?;
        let (prediction, mask) = (&prediction.to_kind(Kind::Float), mask.gt(0.5));
        Ok(match self.loss {
            RegressionLoss::Mse => mse(prediction, target, Some(&mask)),
            RegressionLoss::L1 => l1(prediction, target, Some(&mask)),
        })
    }

    fn probabilities(&self, prediction: &Tensor) -> Tensor {
        prediction.shallow_clone()
    }

    fn metrics(&self) -> Vec<Metric> {
        vec![Metric::lower("mse"), Metric::lower("mae"), Metric::higher("pearson")]
    }

    fn selection(&self) -> Metric {
        Metric::lower("mse")
    }

    fn evaluator(&self) -> Box<dyn Evaluator + '_> {
        Box::new(RegressionEvaluator { preds: Vec::new(), targets: Vec::new() })
    }

    fn predict(
        &self,
        output: &Output,
        index: usize,
        batch: &Batch,
    ) -> Result<Vec<Map<String, Value>>> {
        let p = host_f32(&output.predictions[index]);
        let targets = batch.target.as_ref().map(|(t, m)| (host_f32(t), host_f32(m)));
        Ok((0..batch.len())
            .map(|j| {
                let mut row = Map::new();
                row.insert("prediction".into(), json!(p[j]));
                if let Some((t, m)) = &targets {
                    if m.get(j).is_some_and(|m| *m > 0.5) {
                        row.insert("target".into(), json!(t[j]));
                    }
                }
                row
            })
            .collect())
    }
}

struct RegressionEvaluator {
    preds: Vec<f64>,
    targets: Vec<f64>,
}

impl Evaluator for RegressionEvaluator {
    fn add(&mut self, output: &Output, index: usize, batch: &Batch) -> Result<()> {
        let (t, mask) = batch
            .target
            .as_ref()
            .ok_or_else(|| crate::Error::Data("no targets in the validation data".into()))?;
        let (t, mask, p) = (host_f32(t), host_f32(mask), host_f32(&output.predictions[index]));
        for ((pi, ti), mi) in p.iter().zip(&t).zip(&mask) {
            if *mi > 0.5 {
                self.preds.push(f64::from(*pi));
                self.targets.push(f64::from(*ti));
            }
        }
        Ok(())
    }

    fn merge(&mut self, group: &ProcessGroup) -> Result<()> {
        self.preds = group.all_gather(&self.preds)?;
        self.targets = group.all_gather(&self.targets)?;
        Ok(())
    }

    fn finish(&self, put: &mut dyn FnMut(&str, Value)) {
        if self.targets.is_empty() {
            return;
        }
        put("mse", json!(metrics::mse(&self.preds, &self.targets)));
        put("mae", json!(metrics::mae(&self.preds, &self.targets)));
        if let Some(r) = metrics::pearson(&self.preds, &self.targets) {
            put("pearson", json!(r));
        }
    }
}
