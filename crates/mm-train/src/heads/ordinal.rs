//! Ordinal classification (CORAL, Cao, Mirjalili and Raschka 2020): classes in a known order
//! (ratings, severity grades, sentiment from negative to positive), learned as `K - 1`
//! questions "is the class above k?" that share one weight vector and differ only in their
//! thresholds, so the answers cannot contradict each other. The loss is binary cross-entropy
//! over those questions against the batch's `label`; a class's probability is the difference
//! of neighbouring answers, and the predicted class is the number of "yes" answers. Metrics:
//! accuracy, and the mean absolute error in classes (`mae`, which selects).
//!
//! The data's classes are taken in the order `[data] classes` lists them.

use mm_data::loader::Batch;
use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};

use super::{
    class_rows, fused_mlp, gather_i64, host_f32, host_i64, missing, need_classes, Evaluator, Head,
    HeadContext, HeadInput, HeadOutput, Metric, Mlp,
};
use crate::dist::ProcessGroup;
use crate::metrics;
use crate::model::Output;
use crate::{Error, Result};

/// An ordinal classification head.
#[derive(Debug)]
pub struct Ordinal {
    name: String,
    classes: Vec<String>,
    mlp: Mlp,
    /// `[K - 1]` thresholds, one per "above k" question.
    thresholds: Tensor,
}

impl Ordinal {
    /// Builds the head: an MLP to one score, and `K - 1` thresholds (at least three classes).
    pub fn new(ctx: &HeadContext<'_>, hidden: &[i64], dropout: f64) -> Result<Self> {
        let k = need_classes(ctx)?;
        if k < 3 {
            return Err(ctx.error(format_args!("an ordinal head needs at least 3 ordered classes (the data has {k}); use classification")));
        }
        if ctx.late_fusion {
            return Err(ctx.error("an ordinal head learns its own score: late fusion gives class logits; use another fusion"));
        }
        let mlp = fused_mlp(ctx, hidden, dropout, 1)?;
        let thresholds = ctx.path.zeros("thresholds", &[k - 1]);
        Ok(Ordinal { name: ctx.name.to_string(), classes: ctx.classes.to_vec(), mlp, thresholds })
    }
}

/// `P(class > k)` for each of the `K - 1` questions, from `[B, K - 1]` logits, to class
/// probabilities `[B, K]` (clamped at 0: the answers are consistent when the thresholds are
/// ordered, which training keeps them close to).
fn class_probabilities(logits: &Tensor) -> Tensor {
    let above = logits.to_kind(Kind::Float).sigmoid();
    let b = above.size()[0];
    let ones = Tensor::ones([b, 1], (Kind::Float, above.device()));
    let zeros = Tensor::zeros([b, 1], (Kind::Float, above.device()));
    let upper = Tensor::cat(&[&ones, &above], 1);
    let lower = Tensor::cat(&[&above, &zeros], 1);
    (upper - lower).clamp_min(0.0)
}

/// The predicted class: the number of questions answered "above".
fn ranks(logits: &Tensor) -> Tensor {
    logits.gt(0.0).sum_dim_intlist(1, false, Kind::Int64)
}

impl Head for Ordinal {
    fn forward(&self, input: &HeadInput<'_>, train: bool) -> HeadOutput {
        let score =
            self.mlp.forward(input.fused.expect("an ordinal head reads the fused vector"), train);
        HeadOutput::plain(score - &self.thresholds)
    }

    fn loss(&self, prediction: &Tensor, _: &Output, batch: &Batch) -> Result<Tensor> {
        let labels = batch.label.as_ref().ok_or_else(|| missing("labels", &self.name))?;
        let known = labels.ge(0);
        if known.any().int64_value(&[]) == 0 {
            return Ok(prediction.sum(Kind::Float) * 0.0);
        }
        let rows = known.nonzero().squeeze_dim(1);
        let logits = prediction.to_kind(Kind::Float).index_select(0, &rows);
        let k = Tensor::arange(logits.size()[1], (Kind::Int64, logits.device()));
        let above = labels
            .index_select(0, &rows)
            .unsqueeze(1)
            .gt_tensor(&k.unsqueeze(0))
            .to_kind(Kind::Float);
        Ok(logits.binary_cross_entropy_with_logits::<Tensor>(
            &above,
            None,
            None,
            tch::Reduction::Mean,
        ))
    }

    fn probabilities(&self, prediction: &Tensor) -> Tensor {
        class_probabilities(prediction)
    }

    fn metrics(&self) -> Vec<Metric> {
        vec![Metric::higher("accuracy"), Metric::lower("mae")]
    }

    fn selection(&self) -> Metric {
        Metric::lower("mae")
    }

    fn evaluator(&self) -> Box<dyn Evaluator + '_> {
        Box::new(OrdinalEvaluator { predicted: Vec::new(), truth: Vec::new() })
    }

    fn predict(
        &self,
        output: &Output,
        index: usize,
        batch: &Batch,
    ) -> Result<Vec<Map<String, Value>>> {
        let logits = &output.predictions[index];
        let probs = host_f32(&class_probabilities(logits));
        let predicted: Vec<usize> = host_i64(&ranks(logits)).iter().map(|r| *r as usize).collect();
        let labels = batch.label.as_ref().map(host_i64);
        Ok(class_rows(&self.classes, &predicted, &probs, labels.as_deref()))
    }
}

struct OrdinalEvaluator {
    predicted: Vec<i64>,
    truth: Vec<i64>,
}

impl Evaluator for OrdinalEvaluator {
    fn add(&mut self, output: &Output, index: usize, batch: &Batch) -> Result<()> {
        let labels = batch
            .label
            .as_ref()
            .ok_or_else(|| Error::Data("no labels in the validation data".into()))?;
        for (p, l) in host_i64(&ranks(&output.predictions[index])).into_iter().zip(host_i64(labels))
        {
            if l >= 0 {
                self.predicted.push(p);
                self.truth.push(l);
            }
        }
        Ok(())
    }

    fn merge(&mut self, group: &ProcessGroup) -> Result<()> {
        self.predicted = gather_i64(group, &self.predicted)?;
        self.truth = gather_i64(group, &self.truth)?;
        Ok(())
    }

    fn finish(&self, put: &mut dyn FnMut(&str, Value)) {
        if self.truth.is_empty() {
            return;
        }
        let (p, t): (Vec<usize>, Vec<usize>) = (
            self.predicted.iter().map(|v| *v as usize).collect(),
            self.truth.iter().map(|v| *v as usize).collect(),
        );
        put("accuracy", json!(metrics::accuracy(&p, &t)));
        let (pf, tf): (Vec<f64>, Vec<f64>) = (
            self.predicted.iter().map(|v| *v as f64).collect(),
            self.truth.iter().map(|v| *v as f64).collect(),
        );
        put("mae", json!(metrics::mae(&pf, &tf)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heads::HeadContext;
    use tch::nn::{self, OptimizerConfig};
    use tch::Device;

    /// Class probabilities from the "above k" answers: differences of neighbours, summing to 1.
    #[test]
    fn probabilities_are_differences_of_the_answers() {
        let logits = Tensor::from_slice(&[2.0f32, 0.0, -2.0]).view([1, 3]);
        let p = host_f32(&class_probabilities(&logits));
        let s = |x: f32| 1.0 / (1.0 + (-x).exp());
        let expected = [1.0 - s(2.0), s(2.0) - 0.5, 0.5 - s(-2.0), s(-2.0)];
        for (a, b) in p.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{p:?} vs {expected:?}");
        }
        assert_eq!(host_i64(&ranks(&logits)), vec![1]);
    }

    /// On a scalar that sets the class by thresholds, the head alone learns the order: few
    /// errors, and those it makes are off by one class at most.
    #[test]
    fn learns_ordered_classes_from_a_score() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let classes: Vec<String> = (0..5).map(|c| format!("grade{c}")).collect();
        let encoders = [("features".to_string(), 3i64)];
        let ctx = HeadContext {
            path: vs.root() / "head",
            name: "main",
            field: "model.head",
            encoders: &encoders,
            fused_dim: Some(3),
            late_fusion: false,
            classes: &classes,
            class_counts: &[],
            alphabet: None,
        };
        let head = Ordinal::new(&ctx, &[8], 0.0).expect("head");
        let n = 400i64;
        let x = Tensor::rand([n, 1], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let fused =
            Tensor::cat(&[&x, &(Tensor::randn([n, 2], (Kind::Float, Device::Cpu)) * 0.1)], 1);
        let label = ((&x + 1.0) * 2.5).floor().clamp(0.0, 4.0).to_kind(Kind::Int64).view([-1]);
        let mut opt = nn::Adam::default().build(&vs, 0.03).expect("adam");
        let batch = |label: &Tensor| Batch {
            ids: Vec::new(),
            modalities: vec![mm_data::Modality::Features],
            present: Tensor::ones([n, 1], (Kind::Float, Device::Cpu)),
            image: None,
            audio: None,
            text: None,
            frames: None,
            features: None,
            label: Some(label.shallow_clone()),
            labels: None,
            target: None,
            transcript: None,
        };
        let b = batch(&label);
        let run = |train: bool| {
            let out = head.forward(
                &HeadInput {
                    fused: Some(&fused),
                    pooled: &[],
                    seqs: &[],
                    present: &[],
                    targets: None,
                },
                train,
            );
            Output {
                prediction: out.prediction.shallow_clone(),
                predictions: vec![out.prediction],
                weights: None,
                embeddings: None,
                sequence: None,
            }
        };
        for _ in 0..300 {
            let out = run(true);
            opt.backward_step(&head.loss(&out.predictions[0], &out, &b).expect("loss"));
        }
        let out = tch::no_grad(|| run(false));
        let mut e = head.evaluator();
        e.add(&out, 0, &b).expect("add");
        let mut m = Map::new();
        e.finish(&mut |k, v| {
            m.insert(k.to_string(), v);
        });
        let (accuracy, mae) =
            (m["accuracy"].as_f64().expect("accuracy"), m["mae"].as_f64().expect("mae"));
        assert!(accuracy > 0.85 && mae < 0.2, "accuracy {accuracy}, mae {mae}");
        let predicted = host_i64(&ranks(&out.predictions[0]));
        assert!(predicted.iter().zip(host_i64(&label)).all(|(p, t)| (p - t).abs() <= 1));
        let sums = class_probabilities(&out.predictions[0]).sum_dim_intlist(1, false, Kind::Float);
        assert!((sums - 1.0).abs().max().double_value(&[]) < 1e-4);
    }
}
