//! Cross-modal retrieval: two encoders' pooled outputs projected into a shared space and
//! L2-normalised, trained with symmetric InfoNCE and a learnable temperature (CLIP), or with
//! every same-label pair as a positive; Recall@1/5/10, median rank and MRR in both directions
//! over the whole validation split, and class-level recall and mAP where pairs have labels.

use mm_data::loader::Batch;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tch::{nn, Kind, Tensor};

use super::{
    gather_i64, host_f32, missing, Evaluator, Head, HeadContext, HeadInput, HeadOutput, Metric,
};
use crate::dist::{self, ProcessGroup, ReduceOp};
use crate::loss::{info_nce, info_nce_by_label, Temperature};
use crate::metrics;
use crate::model::Output;
use crate::{Error, Result};

/// The positives of a retrieval head's contrastive loss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Positives {
    /// Each sample's own pair only (CLIP's InfoNCE).
    #[default]
    Pair,
    /// Every pair of items sharing a label ([`crate::loss::info_nce_by_label`]).
    Label,
}

impl Positives {
    /// Whether this is the default (left out when a configuration is written).
    pub fn is_pair(&self) -> bool {
        *self == Positives::Pair
    }
}

/// A retrieval head.
#[derive(Debug)]
pub struct Retrieval {
    name: String,
    pair: [String; 2],
    a: usize,
    b: usize,
    /// The projections to the shared space; none when the encoders' outputs are compared as
    /// they are.
    proj: Option<(nn::Linear, nn::Linear)>,
    temperature: Temperature,
    positives: Positives,
}

impl Retrieval {
    /// Builds the head: the pair must be two different modalities with encoders, `dim`
    /// positive; without `dim`, the two encoders' outputs must have one size.
    pub fn new(
        ctx: &HeadContext<'_>,
        pair: &[String; 2],
        dim: Option<i64>,
        positives: Positives,
    ) -> Result<Self> {
        if dim.is_some_and(|d| d <= 0) || pair[0] == pair[1] {
            return Err(ctx.error(format_args!(
                "a positive dim ({dim:?}) and two different modalities ({pair:?})"
            )));
        }
        let (a, b) = (ctx.encoder(&pair[0], "pair")?, ctx.encoder(&pair[1], "pair")?);
        let (da, db) = (ctx.encoders[a].1, ctx.encoders[b].1);
        let proj = match dim {
            Some(dim) => Some((
                nn::linear(&ctx.path / "a", da, dim, Default::default()),
                nn::linear(&ctx.path / "b", db, dim, Default::default()),
            )),
            None if da == db => None,
            None => {
                return Err(ctx.error(format_args!(
                    "set dim: the {} encoder gives {da} numbers and the {} encoder {db}, which need projecting to one size (without dim the outputs are compared as they are)",
                    pair[0], pair[1]
                )))
            }
        };
        Ok(Retrieval {
            name: ctx.name.to_string(),
            pair: pair.clone(),
            a,
            b,
            proj,
            temperature: Temperature::new(&ctx.path),
            positives,
        })
    }

    /// The two modalities, query side first (`pair` in the configuration).
    pub fn pair(&self) -> &[String; 2] {
        &self.pair
    }

    fn directions(&self) -> [String; 2] {
        [
            format!("{}_to_{}", self.pair[0], self.pair[1]),
            format!("{}_to_{}", self.pair[1], self.pair[0]),
        ]
    }
}

impl Head for Retrieval {
    fn forward(&self, input: &HeadInput<'_>, _train: bool) -> HeadOutput {
        let normalise =
            |x: Tensor| &x / x.norm_scalaropt_dim(2, [1].as_slice(), true).clamp_min(1e-12);
        let (a, b) = match &self.proj {
            Some((pa, pb)) => (input.pooled[self.a].apply(pa), input.pooled[self.b].apply(pb)),
            None => (input.pooled[self.a].shallow_clone(), input.pooled[self.b].shallow_clone()),
        };
        let (a, b) = (normalise(a), normalise(b));
        let both = input.present[self.a].logical_and(&input.present[self.b]);
        HeadOutput { prediction: a.matmul(&b.tr()), embeddings: Some((a, b, both)), sequence: None }
    }

    fn loss(&self, _: &Tensor, output: &Output, batch: &Batch) -> Result<Tensor> {
        let (a, b, both) = output.embeddings.as_ref().expect("a retrieval head's embeddings");
        let (a, b) = (&a.to_kind(Kind::Float), &b.to_kind(Kind::Float));
        let rows = both.nonzero().squeeze_dim(1);
        if rows.size()[0] < 2 {
            return Ok(a.sum(Kind::Float) * 0.0);
        }
        let (a, b, scale) =
            (&a.index_select(0, &rows), &b.index_select(0, &rows), &self.temperature.scale());
        match (self.positives, batch.label.as_ref()) {
            (Positives::Label, Some(labels)) => {
                Ok(info_nce_by_label(a, b, scale, &labels.index_select(0, &rows)))
            }
            (Positives::Label, None) => {
                Err(missing("labels (model.head.positives = \"label\")", &self.name))
            }
            (Positives::Pair, _) => Ok(info_nce(a, b, scale)),
        }
    }

    fn probabilities(&self, prediction: &Tensor) -> Tensor {
        prediction.shallow_clone()
    }

    fn metrics(&self) -> Vec<Metric> {
        let mut out = Vec::new();
        for d in self.directions() {
            for k in ["r1", "r5", "r10", "mrr", "class_r1", "class_r5", "class_r10", "class_map"] {
                out.push(Metric::higher(format!("{d}_{k}")));
            }
            out.push(Metric::lower(format!("{d}_median_rank")));
        }
        out
    }

    fn selection(&self) -> Metric {
        Metric::higher(format!("{}_mrr", self.directions()[0]))
    }

    fn evaluator(&self) -> Box<dyn Evaluator + '_> {
        Box::new(RetrievalEvaluator {
            head: self,
            emb_a: Vec::new(),
            emb_b: Vec::new(),
            truth: Vec::new(),
        })
    }

    fn predict(&self, _: &Output, _: usize, _: &Batch) -> Result<Vec<Map<String, Value>>> {
        Err(Error::Config("a retrieval model predicts no labels: use `mm retrieve`".into()))
    }
}

struct RetrievalEvaluator<'a> {
    head: &'a Retrieval,
    emb_a: Vec<Tensor>,
    emb_b: Vec<Tensor>,
    truth: Vec<i64>,
}

impl Evaluator for RetrievalEvaluator<'_> {
    fn add(&mut self, output: &Output, _: usize, batch: &Batch) -> Result<()> {
        if let Some((a, b, both)) = output.embeddings.as_ref() {
            let rows = both.nonzero().squeeze_dim(1);
            self.emb_a
                .push(a.index_select(0, &rows).to_device(tch::Device::Cpu).to_kind(Kind::Float));
            self.emb_b
                .push(b.index_select(0, &rows).to_device(tch::Device::Cpu).to_kind(Kind::Float));
            // Labels, where the data has them, for category-level retrieval.
            if let Some(labels) = batch.label.as_ref() {
                self.truth.extend(super::host_i64(&labels.index_select(0, &rows)));
            }
        }
        Ok(())
    }

    fn merge(&mut self, group: &ProcessGroup) -> Result<()> {
        self.truth = gather_i64(group, &self.truth)?;
        for side in [&mut self.emb_a, &mut self.emb_b] {
            // Embeddings travel flat with their width (agreed by the maximum: a rank with none
            // has width 0).
            let width = side.first().map_or(0, |t| t.size()[1]);
            let width = group.all_reduce_values(&[width as f64], ReduceOp::Max)?[0] as i64;
            let flat: Vec<f64> = if side.is_empty() {
                Vec::new()
            } else {
                dist::host_vec(&Tensor::cat(side, 0).to_kind(Kind::Double))?
            };
            let all = group.all_gather(&flat)?;
            *side = if all.is_empty() || width == 0 {
                Vec::new()
            } else {
                vec![Tensor::from_slice(&all).to_kind(Kind::Float).view([-1, width])]
            };
        }
        Ok(())
    }

    fn finish(&self, put: &mut dyn FnMut(&str, Value)) {
        if self.emb_a.is_empty() {
            return;
        }
        // Every validation pair against every other: the whole split is the gallery.
        let (a, b) = (Tensor::cat(&self.emb_a, 0), Tensor::cat(&self.emb_b, 0));
        let n = a.size()[0] as usize;
        let sim = host_f32(&a.matmul(&b.tr()));
        let (ab, ba) = metrics::retrieval(&sim, n);
        let [forward, backward] = self.head.directions();
        for (direction, r) in [(&forward, ab), (&backward, ba)] {
            put(&format!("{direction}_r1"), json!(r.recall[0]));
            put(&format!("{direction}_r5"), json!(r.recall[1]));
            put(&format!("{direction}_r10"), json!(r.recall[2]));
            put(&format!("{direction}_median_rank"), json!(r.median_rank));
            put(&format!("{direction}_mrr"), json!(r.mrr));
        }
        // With a label on every pair: a gallery item is relevant when it shares the query's
        // label (`_class_r1`, `_class_map`).
        if self.truth.len() == n && self.truth.iter().all(|l| *l >= 0) {
            let by_class = [
                (&forward, metrics::class_retrieval(&sim, n, &self.truth, &self.truth)),
                (
                    &backward,
                    metrics::class_retrieval(
                        &metrics::transpose(&sim, n),
                        n,
                        &self.truth,
                        &self.truth,
                    ),
                ),
            ];
            for (direction, r) in by_class {
                for (k, cut) in [1, 5, 10].iter().enumerate() {
                    put(&format!("{direction}_class_r{cut}"), json!(r.recall[k]));
                }
                put(&format!("{direction}_class_map"), json!(r.map));
            }
        }
        put("gallery", json!(n));
    }
}
