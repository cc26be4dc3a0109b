//! Multi-label classification: an MLP on the fused vector, binary cross-entropy per class
//! against the batch's multi-hot `labels`; micro- and macro-F1 and exact-set accuracy at
//! probability 0.5, and the mean one-vs-rest AUROC.

use mm_data::loader::Batch;
use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};

use super::{
    by_class, fused_mlp, gather_f32, host_f32, missing, need_classes, Evaluator, Head, HeadContext,
    HeadInput, HeadOutput, Metric, Mlp,
};
use crate::dist::ProcessGroup;
use crate::loss::binary_cross_entropy;
use crate::metrics;
use crate::model::Output;
use crate::Result;

/// A multi-label classification head.
#[derive(Debug)]
pub struct MultiLabel {
    name: String,
    classes: Vec<String>,
    mlp: Mlp,
}

impl MultiLabel {
    /// Builds the head; `hidden` and `dropout` are checked.
    pub fn new(ctx: &HeadContext<'_>, hidden: &[i64], dropout: f64) -> Result<Self> {
        let classes = need_classes(ctx)?;
        Ok(MultiLabel {
            name: ctx.name.to_string(),
            classes: ctx.classes.to_vec(),
            mlp: fused_mlp(ctx, hidden, dropout, classes)?,
        })
    }
}

impl Head for MultiLabel {
    fn forward(&self, input: &HeadInput<'_>, train: bool) -> HeadOutput {
        HeadOutput::plain(
            self.mlp
                .forward(input.fused.expect("a multi-label head reads the fused vector"), train),
        )
    }

    fn loss(&self, prediction: &Tensor, _: &Output, batch: &Batch) -> Result<Tensor> {
        let labels = batch.labels.as_ref().ok_or_else(|| missing("multi-labels", &self.name))?;
        Ok(binary_cross_entropy(&prediction.to_kind(Kind::Float), labels, None))
    }

    fn probabilities(&self, prediction: &Tensor) -> Tensor {
        prediction.to_kind(Kind::Float).sigmoid()
    }

    fn metrics(&self) -> Vec<Metric> {
        vec![
            Metric::higher("micro_f1"),
            Metric::higher("macro_f1"),
            Metric::higher("exact"),
            Metric::higher("auroc"),
        ]
    }

    fn selection(&self) -> Metric {
        Metric::higher("micro_f1")
    }

    fn evaluator(&self) -> Box<dyn Evaluator + '_> {
        Box::new(MultiEvaluator { head: self, probs: Vec::new(), truth: Vec::new() })
    }

    fn predict(
        &self,
        output: &Output,
        index: usize,
        batch: &Batch,
    ) -> Result<Vec<Map<String, Value>>> {
        let c = self.classes.len();
        let probs = host_f32(&self.probabilities(&output.predictions[index]));
        Ok((0..batch.len())
            .map(|j| {
                let p = &probs[j * c..(j + 1) * c];
                let chosen: Vec<&String> = self
                    .classes
                    .iter()
                    .zip(p)
                    .filter(|(_, v)| **v >= 0.5)
                    .map(|(k, _)| k)
                    .collect();
                let mut row = Map::new();
                row.insert("prediction".into(), json!(chosen));
                row.insert("probabilities".into(), by_class(&self.classes, p));
                row
            })
            .collect())
    }
}

struct MultiEvaluator<'a> {
    head: &'a MultiLabel,
    probs: Vec<f32>,
    truth: Vec<f32>,
}

impl Evaluator for MultiEvaluator<'_> {
    fn add(&mut self, output: &Output, index: usize, batch: &Batch) -> Result<()> {
        let labels = batch
            .labels
            .as_ref()
            .ok_or_else(|| crate::Error::Data("no multi-labels in the validation data".into()))?;
        self.probs.extend(host_f32(&self.head.probabilities(&output.predictions[index])));
        self.truth.extend(host_f32(labels));
        Ok(())
    }

    fn merge(&mut self, group: &ProcessGroup) -> Result<()> {
        self.probs = gather_f32(group, &self.probs)?;
        self.truth = gather_f32(group, &self.truth)?;
        Ok(())
    }

    fn finish(&self, put: &mut dyn FnMut(&str, Value)) {
        if self.truth.is_empty() || self.head.classes.is_empty() {
            return;
        }
        let scores = multi_label_scores(&self.probs, &self.truth, self.head.classes.len());
        put("micro_f1", json!(scores.micro_f1));
        put("macro_f1", json!(scores.macro_f1));
        put("exact", json!(scores.exact));
        if let Some(a) = scores.auroc {
            put("auroc", json!(a));
        }
    }
}

/// Multi-label scores of `n × C` probabilities against multi-hot truth, at threshold 0.5.
#[derive(Debug, PartialEq)]
pub struct MultiLabelScores {
    /// F1 over every (sample, class) decision.
    pub micro_f1: f64,
    /// Mean F1 over the classes that occur in the truth or the predictions.
    pub macro_f1: f64,
    /// Share of samples whose predicted set is exactly their set.
    pub exact: f64,
    /// Mean one-vs-rest AUROC over the classes with both positives and negatives.
    pub auroc: Option<f64>,
}

/// See [`MultiLabelScores`] (scikit-learn's `f1_score(average="micro"|"macro")`,
/// `accuracy_score` on label sets, `roc_auc_score(average="macro")`).
pub fn multi_label_scores(probs: &[f32], truth: &[f32], classes: usize) -> MultiLabelScores {
    let (mut tp, mut fp, mut fn_) =
        (vec![0usize; classes], vec![0usize; classes], vec![0usize; classes]);
    let mut exact = 0usize;
    let n = truth.len() / classes;
    for (p, t) in probs.chunks(classes).zip(truth.chunks(classes)) {
        let mut same = true;
        for c in 0..classes {
            let (pc, tc) = (p[c] >= 0.5, t[c] >= 0.5);
            same &= pc == tc;
            match (pc, tc) {
                (true, true) => tp[c] += 1,
                (true, false) => fp[c] += 1,
                (false, true) => fn_[c] += 1,
                (false, false) => {}
            }
        }
        exact += usize::from(same);
    }
    let f1 = |tp: usize, fp: usize, fn_: usize| {
        if tp == 0 {
            0.0
        } else {
            2.0 * tp as f64 / (2 * tp + fp + fn_) as f64
        }
    };
    let (stp, sfp, sfn) = (tp.iter().sum(), fp.iter().sum(), fn_.iter().sum());
    let used: Vec<f64> = (0..classes)
        .filter(|&c| tp[c] + fp[c] + fn_[c] > 0)
        .map(|c| f1(tp[c], fp[c], fn_[c]))
        .collect();
    let aurocs: Vec<f64> = (0..classes)
        .filter_map(|c| {
            let s: Vec<f64> = probs.chunks(classes).map(|r| f64::from(r[c])).collect();
            let positive: Vec<bool> = truth.chunks(classes).map(|r| r[c] >= 0.5).collect();
            metrics::auroc(&s, &positive)
        })
        .collect();
    MultiLabelScores {
        micro_f1: f1(stp, sfp, sfn),
        macro_f1: if used.is_empty() { 0.0 } else { used.iter().sum::<f64>() / used.len() as f64 },
        exact: exact as f64 / n.max(1) as f64,
        auroc: (!aurocs.is_empty()).then(|| aurocs.iter().sum::<f64>() / aurocs.len() as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-computed: three samples, three classes.
    #[test]
    fn scores_match_hand_computed_values() {
        let probs = [0.9, 0.2, 0.7, /**/ 0.1, 0.8, 0.4, /**/ 0.6, 0.3, 0.2];
        let truth = [1.0, 0.0, 1.0, /**/ 0.0, 1.0, 1.0, /**/ 0.0, 0.0, 1.0];
        let s = multi_label_scores(&probs, &truth, 3);
        // Decisions: class 0 tp 1 fp 1; class 1 tp 1; class 2 tp 1 fn 2.
        // micro: tp 3, fp 1, fn 2 -> 6 / 9.
        assert!((s.micro_f1 - 6.0 / 9.0).abs() < 1e-12, "{s:?}");
        // macro: (2/3 + 1 + 2/4) / 3.
        assert!((s.macro_f1 - (2.0 / 3.0 + 1.0 + 0.5) / 3.0).abs() < 1e-12, "{s:?}");
        assert!((s.exact - 1.0 / 3.0).abs() < 1e-12);
        // AUROC: class 0 1.0 (0.9 above 0.1 and 0.6); class 1 1.0; class 2 has no negative.
        assert_eq!(s.auroc, Some(1.0));
    }
}
