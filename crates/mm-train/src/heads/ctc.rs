//! Speech recognition: a per-step MLP over one encoder's steps to log-probabilities over the
//! transcript alphabet and CTC's blank, trained with CTC against `[data.transcript]`; greedy
//! decoding for word and character error rates, exact transcripts, and the samples whose steps
//! are too few for their transcript.

use std::sync::Arc;

use mm_data::loader::Batch;
use mm_data::transcript::Alphabet;
use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};

use super::{missing, mlp, Evaluator, Head, HeadContext, HeadInput, HeadOutput, Metric, Mlp};
use crate::ctc::{decode_batch, min_steps, ErrorCounts};
use crate::dist::{ProcessGroup, ReduceOp};
use crate::model::Output;
use crate::Result;

/// A CTC head.
#[derive(Debug)]
pub struct Ctc {
    name: String,
    encoder: usize,
    alphabet: Arc<Alphabet>,
    mlp: Mlp,
}

impl Ctc {
    /// Builds the head on `modality`'s encoder; the data must have transcripts.
    pub fn new(
        ctx: &HeadContext<'_>,
        modality: &str,
        hidden: &[i64],
        dropout: f64,
    ) -> Result<Self> {
        let alphabet = ctx
            .alphabet
            .ok_or_else(|| ctx.error("a ctc head needs transcripts ([data.transcript])"))?;
        let encoder = ctx.encoder(modality, "modality")?;
        let mlp = mlp(ctx, ctx.encoders[encoder].1, hidden, dropout, alphabet.len() as i64)?;
        Ok(Ctc { name: ctx.name.to_string(), encoder, alphabet: Arc::clone(alphabet), mlp })
    }

    /// The transcript alphabet (its outputs after the blank).
    pub fn alphabet(&self) -> &Arc<Alphabet> {
        &self.alphabet
    }
}

impl Head for Ctc {
    fn forward(&self, input: &HeadInput<'_>, train: bool) -> HeadOutput {
        let (steps, mask) = input.seqs[self.encoder]
            .as_ref()
            .expect("a ctc head reads an encoder with a sequence output");
        let log_probs =
            self.mlp.forward(steps, train).to_kind(Kind::Float).log_softmax(-1, Kind::Float);
        let lengths = mask.to_kind(Kind::Int64).sum_dim_intlist([1].as_slice(), false, Kind::Int64);
        HeadOutput {
            prediction: log_probs.shallow_clone(),
            embeddings: None,
            sequence: Some((log_probs, lengths)),
        }
    }

    fn loss(&self, _: &Tensor, output: &Output, batch: &Batch) -> Result<Tensor> {
        let (targets, target_lengths) =
            batch.transcript.as_ref().ok_or_else(|| missing("transcripts", &self.name))?;
        let (log_probs, lengths) = output.sequence.as_ref().expect("a ctc head's output");
        // Steps × batch × classes, as libtorch's CTC takes them. A sample whose steps cannot
        // hold its transcript counts 0 (evaluation reports how many there were).
        Ok(Tensor::ctc_loss_tensor(
            &log_probs.transpose(0, 1),
            targets,
            lengths,
            target_lengths,
            Alphabet::BLANK as i64,
            tch::Reduction::Mean,
            true,
        ))
    }

    fn probabilities(&self, prediction: &Tensor) -> Tensor {
        prediction.exp()
    }

    fn metrics(&self) -> Vec<Metric> {
        vec![
            Metric::lower("wer"),
            Metric::lower("cer"),
            Metric::higher("exact"),
            Metric::lower("too_short"),
        ]
    }

    fn selection(&self) -> Metric {
        Metric::lower("wer")
    }

    fn steps_of(&self) -> Option<usize> {
        Some(self.encoder)
    }

    fn evaluator(&self) -> Box<dyn Evaluator + '_> {
        Box::new(CtcEvaluator {
            alphabet: &self.alphabet,
            errors: ErrorCounts::default(),
            too_short: 0,
        })
    }

    fn predict(&self, output: &Output, _: usize, batch: &Batch) -> Result<Vec<Map<String, Value>>> {
        let (log_probs, lengths) = output.sequence.as_ref().expect("a ctc head's output");
        let hyps = decode_batch(log_probs, lengths, Alphabet::BLANK, 1);
        let truth = batch.transcripts();
        Ok(hyps
            .iter()
            .enumerate()
            .map(|(j, hyp)| {
                let mut row = Map::new();
                row.insert("prediction".into(), json!(self.alphabet.decode(&hyp.labels)));
                if let Some(t) = truth.as_ref().and_then(|t| t.get(j)) {
                    row.insert("transcript".into(), json!(self.alphabet.decode(t)));
                }
                row
            })
            .collect())
    }
}

struct CtcEvaluator<'a> {
    alphabet: &'a Alphabet,
    errors: ErrorCounts,
    /// Samples whose output steps are fewer than their transcript needs.
    too_short: usize,
}

impl Evaluator for CtcEvaluator<'_> {
    fn add(&mut self, output: &Output, _: usize, batch: &Batch) -> Result<()> {
        let truths = batch
            .transcripts()
            .ok_or_else(|| crate::Error::Data("no transcripts in the validation data".into()))?;
        let (log_probs, lengths) = output.sequence.as_ref().expect("a ctc head's output");
        let decoded = decode_batch(log_probs, lengths, Alphabet::BLANK, 1);
        let steps = super::host_i64(lengths);
        for ((hyp, truth), steps) in decoded.iter().zip(&truths).zip(&steps) {
            self.errors.add(&self.alphabet.decode(truth), &self.alphabet.decode(&hyp.labels));
            self.too_short += usize::from(*steps < min_steps(truth) as i64);
        }
        Ok(())
    }

    fn merge(&mut self, group: &ProcessGroup) -> Result<()> {
        let mut counts = self.errors.to_values().to_vec();
        counts.push(self.too_short as f64);
        let counts = group.all_reduce_values(&counts, ReduceOp::Sum)?;
        self.errors = ErrorCounts::from_values(&counts);
        self.too_short = counts[counts.len() - 1] as usize;
        Ok(())
    }

    fn finish(&self, put: &mut dyn FnMut(&str, Value)) {
        if self.errors.utterances == 0 {
            return;
        }
        // Greedy decoding; `mm transcribe --beam` decodes with a beam.
        put("wer", json!(self.errors.wer().unwrap_or(0.0)));
        put("cer", json!(self.errors.cer().unwrap_or(0.0)));
        put("exact", json!(self.errors.exact as f64 / self.errors.utterances as f64));
        put("too_short", json!(self.too_short));
    }
}
