//! Single-label classification: an MLP on the fused vector, cross-entropy (class weights,
//! label smoothing) against the batch's `label`; accuracy, top-5, macro-F1, per-class precision
//! and recall, the confusion matrix and AUROC.

use mm_data::loader::Batch;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};

use super::{
    class_rows, fused_mlp, gather_f32, gather_i64, host_f32, host_i64, missing, need_classes,
    Evaluator, Head, HeadContext, HeadInput, HeadOutput, Metric, Mlp,
};
use crate::dist::ProcessGroup;
use crate::loss::{cross_entropy, CrossEntropy};
use crate::metrics;
use crate::model::Output;
use crate::Result;

/// Class weights for an imbalanced classification head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase", untagged)]
pub enum ClassWeights {
    /// None.
    #[default]
    None,
    /// `"balanced"`: inverse class frequencies of the training split.
    Named(String),
    /// One weight per class.
    List(Vec<f64>),
}

impl ClassWeights {
    /// Whether there are none (the default; left out when a configuration is written).
    pub fn is_none(&self) -> bool {
        *self == ClassWeights::None
    }
}

/// A single-label classification head.
#[derive(Debug)]
pub struct Classification {
    name: String,
    classes: Vec<String>,
    mlp: Mlp,
    class_weights: Option<Tensor>,
    label_smoothing: f64,
}

impl Classification {
    /// Builds the head; `hidden`, `dropout`, `label_smoothing` and `class_weights` are checked.
    pub fn new(
        ctx: &HeadContext<'_>,
        hidden: &[i64],
        dropout: f64,
        label_smoothing: f64,
        class_weights: &ClassWeights,
    ) -> Result<Self> {
        let classes = need_classes(ctx)?;
        let mlp = fused_mlp(ctx, hidden, dropout, classes)?;
        let n = classes as usize;
        let device = ctx.path.device();
        let class_weights = match class_weights {
            ClassWeights::None => None,
            ClassWeights::List(w) => {
                if w.len() != n || w.iter().any(|x| !x.is_finite() || *x < 0.0) {
                    return Err(ctx.error(format_args!(
                        "class_weights: {} non-negative weights for {n} classes",
                        w.len()
                    )));
                }
                Some(
                    Tensor::from_slice(&w.iter().map(|x| *x as f32).collect::<Vec<_>>())
                        .to_device(device),
                )
            }
            ClassWeights::Named(name) if name == "balanced" => {
                if ctx.class_counts.len() != n {
                    return Err(ctx.error(
                        "class_weights = \"balanced\" needs the training split's class counts",
                    ));
                }
                Some(crate::loss::balanced_class_weights(ctx.class_counts).to_device(device))
            }
            ClassWeights::Named(name) => {
                return Err(
                    ctx.error(format_args!("class_weights = {name:?}: \"balanced\" or a list"))
                )
            }
        };
        Ok(Classification {
            name: ctx.name.to_string(),
            classes: ctx.classes.to_vec(),
            mlp,
            class_weights,
            label_smoothing,
        })
    }
}

impl Head for Classification {
    fn forward(&self, input: &HeadInput<'_>, train: bool) -> HeadOutput {
        HeadOutput::plain(
            self.mlp
                .forward(input.fused.expect("a classification head reads the fused vector"), train),
        )
    }

    fn loss(&self, prediction: &Tensor, _: &Output, batch: &Batch) -> Result<Tensor> {
        let labels = batch.label.as_ref().ok_or_else(|| missing("labels", &self.name))?;
        let options = CrossEntropy {
            class_weights: self.class_weights.as_ref().map(Tensor::shallow_clone),
            label_smoothing: self.label_smoothing,
        };
        Ok(cross_entropy(&prediction.to_kind(Kind::Float), labels, &options))
    }

    fn probabilities(&self, prediction: &Tensor) -> Tensor {
        prediction.softmax(1, Kind::Float)
    }

    fn metrics(&self) -> Vec<Metric> {
        vec![
            Metric::higher("accuracy"),
            Metric::higher("top5"),
            Metric::higher("macro_f1"),
            Metric::higher("auroc"),
        ]
    }

    fn selection(&self) -> Metric {
        Metric::higher("accuracy")
    }

    fn evaluator(&self) -> Box<dyn Evaluator + '_> {
        Box::new(ClassEvaluator { head: self, probs: Vec::new(), truth: Vec::new() })
    }

    fn predict(
        &self,
        output: &Output,
        index: usize,
        batch: &Batch,
    ) -> Result<Vec<Map<String, Value>>> {
        let probs = host_f32(&self.probabilities(&output.predictions[index]));
        let predicted = metrics::argmax(&probs, self.classes.len());
        let labels = batch.label.as_ref().map(host_i64);
        Ok(class_rows(&self.classes, &predicted, &probs, labels.as_deref()))
    }
}

struct ClassEvaluator<'a> {
    head: &'a Classification,
    probs: Vec<f32>,
    truth: Vec<i64>,
}

impl Evaluator for ClassEvaluator<'_> {
    fn add(&mut self, output: &Output, index: usize, batch: &Batch) -> Result<()> {
        let labels = batch
            .label
            .as_ref()
            .ok_or_else(|| crate::Error::Data("no labels in the validation data".into()))?;
        let c = self.head.classes.len();
        let probs = host_f32(&self.head.probabilities(&output.predictions[index]));
        for (j, l) in host_i64(labels).iter().enumerate() {
            if *l >= 0 {
                self.probs.extend_from_slice(&probs[j * c..(j + 1) * c]);
                self.truth.push(*l);
            }
        }
        Ok(())
    }

    fn merge(&mut self, group: &ProcessGroup) -> Result<()> {
        self.probs = gather_f32(group, &self.probs)?;
        self.truth = gather_i64(group, &self.truth)?;
        Ok(())
    }

    fn finish(&self, put: &mut dyn FnMut(&str, Value)) {
        if self.truth.is_empty() {
            return;
        }
        let classes = self.head.classes.len();
        let t: Vec<usize> = self.truth.iter().map(|x| *x as usize).collect();
        let p = metrics::argmax(&self.probs, classes);
        put("accuracy", json!(metrics::accuracy(&p, &t)));
        if classes > 5 {
            put("top5", json!(metrics::top_k(&self.probs, classes, &t, 5)));
        }
        put("macro_f1", json!(metrics::macro_f1(&p, &t, classes)));
        let per = metrics::per_class(&p, &t, classes);
        put("precision", json!(per.iter().map(|c| c.precision).collect::<Vec<_>>()));
        put("recall", json!(per.iter().map(|c| c.recall).collect::<Vec<_>>()));
        put("confusion", json!(metrics::confusion_matrix(&p, &t, classes)));
        let auroc = if classes == 2 {
            let s: Vec<f64> = self.probs.chunks(2).map(|r| f64::from(r[1])).collect();
            metrics::auroc(&s, &t.iter().map(|x| *x == 1).collect::<Vec<_>>())
        } else {
            metrics::auroc_ovr(&self.probs, classes, &t).1
        };
        if let Some(a) = auroc {
            put("auroc", json!(a));
        }
    }
}
