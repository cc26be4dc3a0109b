//! Captioning: a Transformer decoder (mm-seq's [`TransformerDecoder`]) writes the sample's
//! `text` (`[data.transcript]`, words or characters) while reading its encoders: each encoder's
//! steps where it has them (a ViT's or CLIP's tokens, an audio encoder's frames, a text encoder's
//! tokens), its pooled vector otherwise, projected to the decoder's width, with sinusoidal
//! positions and a learned vector per modality, and one learned memory slot that every sample
//! has (so a sample missing every modality still decodes). A modality absent from a sample is
//! masked out of its memory.
//!
//! Trained with teacher forcing (cross-entropy on each next token after a start token, the end
//! token last, label smoothing); evaluated by writing captions (beam search of `beam`
//! hypotheses, or greedy) and scoring them against the truth with corpus BLEU and CIDEr-D
//! ([`crate::metrics`]), one reference per sample.
//!
//! Token ids: the transcript's (0 padding, 1 `<unk>` for words, then the words), then the start
//! and end tokens; padding, `<unk>` and the start token are never written.

use std::sync::Arc;

use mm_data::loader::Batch;
use mm_data::transcript::Alphabet;
use mm_seq::decoder::{DecoderConfig, Generation, TransformerDecoder};
use serde_json::{json, Map, Value};
use tch::{nn, Kind, Tensor};

use super::{missing, Evaluator, Head, HeadContext, HeadInput, HeadOutput, Metric};
use crate::dist::ProcessGroup;
use crate::metrics::{bleu, cider_d};
use crate::model::Output;
use crate::Result;

/// What a caption head is configured with (`[model.head] type = "caption"`).
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionOptions {
    /// The decoder's sizes (its `vocab` is set from the data).
    pub decoder: DecoderConfig,
    /// Label smoothing of the cross-entropy.
    pub label_smoothing: f64,
    /// Beams when writing captions (1: greedy).
    pub beam: usize,
    /// Length penalty of beam search ([`Generation::length_penalty`]).
    pub length_penalty: f64,
}

/// A caption head.
#[derive(Debug)]
pub struct Caption {
    name: String,
    encoders: Vec<usize>,
    projections: Vec<nn::Linear>,
    modality: Vec<Tensor>,
    slot: Tensor,
    decoder: TransformerDecoder,
    alphabet: Arc<Alphabet>,
    bos: i64,
    eos: i64,
    options: CaptionOptions,
}

impl Caption {
    /// Builds the head on the encoders of `inputs`; the data must have transcripts.
    pub fn new(ctx: &HeadContext<'_>, inputs: &[String], options: &CaptionOptions) -> Result<Self> {
        let alphabet = ctx.alphabet.ok_or_else(|| {
            ctx.error(
                "a caption head writes the samples' text: add [data.transcript] (unit = \"words\")",
            )
        })?;
        let dim = options.decoder.dim;
        let mut encoders = Vec::new();
        let mut projections = Vec::new();
        let mut modality = Vec::new();
        for (i, m) in inputs.iter().enumerate() {
            let e = ctx.encoder(m, "inputs")?;
            let p = &ctx.path / "memory" / i;
            projections.push(nn::linear(&p / "proj", ctx.encoders[e].1, dim, Default::default()));
            modality.push(p.var("modality", &[dim], nn::Init::Randn { mean: 0.0, stdev: 0.02 }));
            encoders.push(e);
        }
        let slot = (&ctx.path / "memory").var(
            "slot",
            &[1, 1, dim],
            nn::Init::Randn { mean: 0.0, stdev: 0.02 },
        );
        let vocab = alphabet.len() as i64;
        let config = DecoderConfig { vocab: vocab + 2, ..options.decoder.clone() };
        let decoder = TransformerDecoder::new(&(&ctx.path / "decoder"), &config)
            .map_err(|e| ctx.error(e.to_string().trim_start_matches("invalid configuration: ")))?;
        Ok(Caption {
            name: ctx.name.to_string(),
            encoders,
            projections,
            modality,
            slot,
            decoder,
            alphabet: Arc::clone(alphabet),
            bos: vocab,
            eos: vocab + 1,
            options: CaptionOptions { decoder: config, ..options.clone() },
        })
    }

    /// The memory `[B, S, dim]` and its mask `[B, S]` from what the encoders gave.
    fn memory(&self, input: &HeadInput<'_>) -> (Tensor, Tensor) {
        let b = input.present[self.encoders[0]].size()[0];
        let device = self.slot.device();
        let mut states = vec![self.slot.expand([b, 1, self.options.decoder.dim], false)];
        let mut masks = vec![Tensor::ones([b, 1], (Kind::Bool, device))];
        for (k, &e) in self.encoders.iter().enumerate() {
            let present = input.present[e].unsqueeze(1);
            let (steps, mask) = match &input.seqs[e] {
                Some((steps, mask)) => (steps.shallow_clone(), mask.to_kind(Kind::Bool)),
                None => (input.pooled[e].unsqueeze(1), Tensor::ones([b, 1], (Kind::Bool, device))),
            };
            let projected = steps.to_kind(Kind::Float).apply(&self.projections[k]);
            let t = projected.size()[1];
            states.push(
                projected + positions(t, self.options.decoder.dim, device) + &self.modality[k],
            );
            masks.push(mask.logical_and(&present));
        }
        (Tensor::cat(&states, 1), Tensor::cat(&masks, 1))
    }

    /// The decoder's input (`[B, L + 1]`: the start token, then the transcript) and target
    /// (the transcript, then the end token; 0 after it), cut to the decoder's positions.
    fn teacher(&self, targets: &Tensor, lengths: &Tensor) -> (Tensor, Tensor) {
        let b = targets.size()[0];
        let device = targets.device();
        let start = Tensor::full([b, 1], self.bos, (Kind::Int64, device));
        let input = Tensor::cat(&[&start, targets], 1);
        let target = Tensor::cat(&[targets, &Tensor::zeros([b, 1], (Kind::Int64, device))], 1);
        let end = Tensor::full([b, 1], self.eos, (Kind::Int64, device));
        let target = target.scatter(1, &lengths.to_kind(Kind::Int64).unsqueeze(1), &end);
        let most = self.options.decoder.max_positions.min(input.size()[1]);
        (input.narrow(1, 0, most), target.narrow(1, 0, most))
    }

    /// Writes a caption for each sample of `output` (from [`Head::forward`]'s memory), with the
    /// configured beam.
    pub fn write(&self, output: &Output) -> Vec<String> {
        self.write_with(output, self.options.beam)
    }

    /// [`Caption::write`] with `beam` beams (1: greedy).
    pub fn write_with(&self, output: &Output, beam: usize) -> Vec<String> {
        let (states, mask) = output.sequence.as_ref().expect("a caption head's memory");
        // In f32: the forward pass may have run under bf16 autocast, and `mm caption` and
        // `mm predict` generate outside it (evaluation during training generates under it).
        let memory = tch::no_grad(|| self.decoder.memory(&states.to_kind(Kind::Float), Some(mask)));
        let mut never = vec![0, self.bos];
        never.extend(
            (0..self.alphabet.len()).filter(|i| self.alphabet.is_unknown(*i)).map(|i| i as i64),
        );
        let start = [self.bos];
        let how = Generation {
            beam: beam.max(1),
            length_penalty: self.options.length_penalty,
            suppress: &never,
            ..Generation::new(&start, self.eos, self.options.decoder.max_positions as usize)
        };
        let ids = tch::no_grad(|| self.decoder.generate(&memory, &how));
        ids.iter().map(|ids| self.alphabet.decode(ids)).collect()
    }
}

/// Sinusoidal positions `[t, dim]` (Vaswani et al.), for memory steps of any number.
fn positions(t: i64, dim: i64, device: tch::Device) -> Tensor {
    let pos = Tensor::arange(t, (Kind::Float, device)).unsqueeze(1);
    let i = Tensor::arange(dim, (Kind::Float, device));
    let rate = ((&i / 2).floor() * 2.0 / dim as f64 * -(10_000f64.ln())).exp();
    let angle = pos * rate.unsqueeze(0);
    let even = i.remainder(2).eq(0.0).unsqueeze(0);
    angle.sin().where_self(&even, &angle.cos())
}

impl Head for Caption {
    fn forward(&self, input: &HeadInput<'_>, train: bool) -> HeadOutput {
        let (states, mask) = self.memory(input);
        // With the batch's transcripts: every next token's logits (teacher forcing). Without
        // them (captioning new files), the memory alone, for `write`.
        let prediction = match input.targets {
            Some((targets, lengths)) => {
                let (ids, _) = self.teacher(targets, lengths);
                let memory = self.decoder.memory(&states, Some(&mask));
                self.decoder.forward_t(&memory, &ids, train)
            }
            None => states.shallow_clone(),
        };
        HeadOutput { prediction, embeddings: None, sequence: Some((states, mask)) }
    }

    fn loss(&self, logits: &Tensor, _: &Output, batch: &Batch) -> Result<Tensor> {
        let (targets, lengths) =
            batch.transcript.as_ref().ok_or_else(|| missing("transcripts", &self.name))?;
        let (_, target) = self.teacher(targets, lengths);
        let v = logits.size()[2];
        Ok(logits.to_kind(Kind::Float).view([-1, v]).cross_entropy_loss::<Tensor>(
            &target.reshape([-1]),
            None,
            tch::Reduction::Mean,
            0,
            self.options.label_smoothing,
        ))
    }

    fn probabilities(&self, prediction: &Tensor) -> Tensor {
        prediction.softmax(-1, Kind::Float)
    }

    fn metrics(&self) -> Vec<Metric> {
        vec![
            Metric::higher("cider"),
            Metric::higher("bleu4"),
            Metric::higher("bleu1"),
            Metric::higher("exact"),
        ]
    }

    fn selection(&self) -> Metric {
        Metric::higher("cider")
    }

    fn evaluator(&self) -> Box<dyn Evaluator + '_> {
        Box::new(CaptionEvaluator { head: self, hyps: Vec::new(), refs: Vec::new() })
    }

    fn write_text(&self, output: &Output, beam: Option<usize>) -> Option<Vec<String>> {
        Some(self.write_with(output, beam.unwrap_or(self.options.beam)))
    }

    fn predict(&self, output: &Output, _: usize, batch: &Batch) -> Result<Vec<Map<String, Value>>> {
        let truth = batch.transcripts();
        Ok(self
            .write(output)
            .into_iter()
            .enumerate()
            .map(|(j, caption)| {
                let mut row = Map::new();
                row.insert("prediction".into(), json!(caption));
                if let Some(t) = truth.as_ref().and_then(|t| t.get(j)) {
                    row.insert("reference".into(), json!(self.alphabet.decode(t)));
                }
                row
            })
            .collect())
    }
}

struct CaptionEvaluator<'a> {
    head: &'a Caption,
    hyps: Vec<String>,
    refs: Vec<String>,
}

/// Texts as one list of values: each text's byte count, then its bytes.
fn pack(texts: &[String]) -> Vec<f64> {
    texts
        .iter()
        .flat_map(|t| std::iter::once(t.len() as f64).chain(t.bytes().map(f64::from)))
        .collect()
}

fn unpack(values: &[f64]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < values.len() {
        let n = values[i] as usize;
        let bytes: Vec<u8> =
            values[i + 1..(i + 1 + n).min(values.len())].iter().map(|b| *b as u8).collect();
        out.push(String::from_utf8_lossy(&bytes).into_owned());
        i += 1 + n;
    }
    out
}

impl Evaluator for CaptionEvaluator<'_> {
    fn add(&mut self, output: &Output, _: usize, batch: &Batch) -> Result<()> {
        let truths = batch
            .transcripts()
            .ok_or_else(|| crate::Error::Data("no transcripts in the validation data".into()))?;
        self.hyps.extend(self.head.write(output));
        self.refs.extend(truths.iter().map(|t| self.head.alphabet.decode(t)));
        Ok(())
    }

    fn merge(&mut self, group: &ProcessGroup) -> Result<()> {
        self.hyps = unpack(&group.all_gather(&pack(&self.hyps))?);
        self.refs = unpack(&group.all_gather(&pack(&self.refs))?);
        Ok(())
    }

    fn finish(&self, put: &mut dyn FnMut(&str, Value)) {
        if self.hyps.is_empty() {
            return;
        }
        let words = |t: &String| t.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        let hyps: Vec<Vec<String>> = self.hyps.iter().map(words).collect();
        let refs: Vec<Vec<Vec<String>>> = self.refs.iter().map(|r| vec![words(r)]).collect();
        let n = hyps.len() as f64;
        put("cider", json!(cider_d(&hyps, &refs)));
        put("bleu4", json!(bleu(&hyps, &refs, 4)));
        put("bleu1", json!(bleu(&hyps, &refs, 1)));
        let exact = self.hyps.iter().zip(&self.refs).filter(|(h, r)| h == r).count();
        put("exact", json!(exact as f64 / n));
    }
}
