//! Task heads: each kind is a module behind the [`Head`] trait, in a file of its own.
//!
//! A head builds itself from its configuration ([`HeadConfig::build`], the one place the
//! configuration's kinds are matched), checking that configuration once; then it runs its
//! forward pass ([`Head::forward`]), its loss ([`Head::loss`]), its probabilities, one JSON
//! object per sample for `mm predict` ([`Head::predict`]), and its evaluation
//! ([`Head::evaluator`]: what it gathers over a split, merged across data-parallel ranks, and
//! the metrics it reports). Every metric carries its direction ([`Metric`]), and each head names
//! the metric that selects its best checkpoint ([`Head::selection`]).
//!
//! | kind | file | reads | target | selection |
//! | --- | --- | --- | --- | --- |
//! | `classification` | [`classification`] | the fused vector | `label` | `accuracy` |
//! | `multi_label` | [`multi_label`] | the fused vector | `labels` | `micro_f1` |
//! | `ordinal` | [`ordinal`] | the fused vector | `label`, classes in order | `mae` |
//! | `regression` | [`regression`] | the fused vector | `target` | `mse` |
//! | `retrieval` | [`retrieval`] | two encoders | the pairing | `A_to_B_mrr` |
//! | `ctc` | [`ctc`] | one encoder's steps | `[data.transcript]` | `wer` |
//! | `caption` | [`caption`] | encoders' steps (or vectors) | `[data.transcript]` | `cider` |
//!
//! A new head is a new file here with a struct implementing [`Head`] and a variant of
//! [`HeadConfig`] whose `build` arm constructs it (docs/ARCHITECTURE.md, "How to add a head").
//!
//! ```
//! use mm_train::heads::{HeadConfig, Head};
//!
//! let config: HeadConfig = toml::from_str("type = \"regression\"\nhidden = [16]").unwrap();
//! assert_eq!(config.kind(), "regression");
//! ```

pub mod caption;
pub mod classification;
pub mod ctc;
pub mod multi_label;
pub mod ordinal;
pub mod regression;
pub mod retrieval;

use std::sync::Arc;

use mm_data::loader::Batch;
use mm_data::transcript::Alphabet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tch::{nn, Tensor};

use crate::dist::ProcessGroup;
use crate::model::Output;
use crate::{Error, Result};

pub use classification::ClassWeights;
pub use regression::RegressionLoss;
pub use retrieval::Positives;

/// The task head on the model's encoders or its fused vector: its kind (`type`) and settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HeadConfig {
    /// Single-label classification over the data's classes (cross-entropy).
    Classification {
        /// Hidden layer sizes of the head's MLP.
        #[serde(default)]
        hidden: Vec<i64>,
        /// Dropout before each layer when training.
        #[serde(default)]
        dropout: f64,
        /// Label smoothing.
        #[serde(default)]
        label_smoothing: f64,
        /// Class weights.
        #[serde(default, skip_serializing_if = "ClassWeights::is_none")]
        class_weights: ClassWeights,
    },
    /// Multi-label classification (binary cross-entropy per class).
    MultiLabel {
        /// Hidden layer sizes.
        #[serde(default)]
        hidden: Vec<i64>,
        /// Dropout.
        #[serde(default)]
        dropout: f64,
    },
    /// Cross-modal retrieval: two modalities' embeddings projected to a shared space and
    /// trained with symmetric InfoNCE and a learnable temperature (CLIP); no fusion.
    Retrieval {
        /// The two modalities paired (`["text", "image"]`).
        pair: [String; 2],
        /// Size of the shared space (a linear projection of each side); without it the
        /// encoders' own outputs are compared, which must then have one size (a pretrained
        /// CLIP's two towers, whose embeddings already share a space).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dim: Option<i64>,
        /// What counts as a match in training: `pair` (each sample's own two items, CLIP) or
        /// `label` (every item with the same label; for data paired by class).
        #[serde(default, skip_serializing_if = "Positives::is_pair")]
        positives: Positives,
    },
    /// Speech recognition: one modality's sequence (the audio encoder's steps) mapped to
    /// per-step log-probabilities over the transcript alphabet and its blank
    /// (`[data.transcript]`), trained with CTC; no fusion, and no other head.
    Ctc {
        /// The modality whose encoder's sequence is read (default `audio`).
        #[serde(default = "audio")]
        modality: String,
        /// Hidden layer sizes of the per-step MLP.
        #[serde(default)]
        hidden: Vec<i64>,
        /// Dropout before each layer when training.
        #[serde(default)]
        dropout: f64,
    },
    /// Captioning: a Transformer decoder writes the sample's `text` (`[data.transcript]`,
    /// usually `unit = "words"`) reading the encoders of `inputs` (their steps, or their vectors);
    /// evaluated by writing captions and scoring them with CIDEr-D and BLEU; no fusion (the
    /// decoder's cross-attention over every input is the fusion), and no other head.
    Caption {
        /// The modalities whose encoders the decoder reads (`["image"]`, `["image", "audio"]`).
        inputs: Vec<String>,
        /// Decoder width.
        #[serde(default = "caption_dim")]
        dim: i64,
        /// Decoder layers.
        #[serde(default = "two")]
        layers: i64,
        /// Attention heads (dividing `dim`).
        #[serde(default = "four")]
        heads: i64,
        /// Feed-forward width (default 4 × `dim`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ffn: Option<i64>,
        /// Dropout in the decoder when training.
        #[serde(default = "tenth")]
        dropout: f64,
        /// Label smoothing of the cross-entropy.
        #[serde(default = "tenth")]
        label_smoothing: f64,
        /// Decoder positions: the start token, the caption's tokens and the end token, so at
        /// most `max_len - 2` words are written; longer training captions are cut.
        #[serde(default = "caption_len")]
        max_len: i64,
        /// Beams when writing captions (evaluation, `mm caption`); 1 is greedy.
        #[serde(default = "three")]
        beam: usize,
        /// Beam search's length penalty (1: mean log-probability per token; 0: the sum).
        #[serde(default = "one")]
        length_penalty: f64,
    },
    /// Ordinal classification: the classes in the order `[data] classes` lists them (CORAL:
    /// `K - 1` "above k" questions sharing one score).
    Ordinal {
        /// Hidden layer sizes of the MLP to the score.
        #[serde(default)]
        hidden: Vec<i64>,
        /// Dropout before each layer when training.
        #[serde(default)]
        dropout: f64,
    },
    /// Regression of the scalar target.
    Regression {
        /// Hidden layer sizes.
        #[serde(default)]
        hidden: Vec<i64>,
        /// Dropout.
        #[serde(default)]
        dropout: f64,
        /// Loss.
        #[serde(default)]
        loss: RegressionLoss,
    },
}

fn audio() -> String {
    "audio".to_string()
}

fn caption_dim() -> i64 {
    256
}

fn caption_len() -> i64 {
    32
}

fn two() -> i64 {
    2
}

fn four() -> i64 {
    4
}

fn three() -> usize {
    3
}

fn tenth() -> f64 {
    0.1
}

fn one() -> f64 {
    1.0
}

/// What a head reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reads {
    /// The fusion's output (or the one encoder's, in a model over one modality).
    Fused,
    /// These encoders' outputs directly, by modality: such a head stands alone, without a
    /// fusion. `key` is the setting that names them (`pair`, `modality`).
    Encoders {
        /// The setting that names the modalities.
        key: &'static str,
        /// The modalities read.
        modalities: Vec<String>,
    },
}

impl HeadConfig {
    /// The kind's name, as `type` writes it.
    pub fn kind(&self) -> &'static str {
        match self {
            HeadConfig::Classification { .. } => "classification",
            HeadConfig::MultiLabel { .. } => "multi_label",
            HeadConfig::Retrieval { .. } => "retrieval",
            HeadConfig::Ctc { .. } => "ctc",
            HeadConfig::Caption { .. } => "caption",
            HeadConfig::Ordinal { .. } => "ordinal",
            HeadConfig::Regression { .. } => "regression",
        }
    }

    /// The two modalities a retrieval head pairs, query side first; `None` for any other
    /// head. What `mm retrieve` and a server's search read.
    pub fn retrieval_pair(&self) -> Option<&[String; 2]> {
        match self {
            HeadConfig::Retrieval { pair, .. } => Some(pair),
            _ => None,
        }
    }

    /// Whether the head predicts the data's classes (classification, multi-label, ordinal):
    /// then every class needs training samples.
    pub fn reads_classes(&self) -> bool {
        matches!(
            self,
            HeadConfig::Classification { .. }
                | HeadConfig::MultiLabel { .. }
                | HeadConfig::Ordinal { .. }
        )
    }

    /// Whether this is a single-label classifier (a class per sample, accuracy and the
    /// rest): what `mm compare` compares.
    pub fn is_classifier(&self) -> bool {
        matches!(self, HeadConfig::Classification { .. })
    }

    /// Checks the head's numbers before anything is built or read: hidden sizes and the
    /// retrieval dimension positive, dropout in [0, 1), label smoothing in [0, 1). `field`
    /// names the head (`model.head`) in the message.
    pub fn check_values(&self, field: &str) -> Result<()> {
        let (hidden, dropout) = match self {
            HeadConfig::Classification { hidden, dropout, .. }
            | HeadConfig::MultiLabel { hidden, dropout }
            | HeadConfig::Ctc { hidden, dropout, .. }
            | HeadConfig::Ordinal { hidden, dropout }
            | HeadConfig::Regression { hidden, dropout, .. } => (hidden.as_slice(), *dropout),
            HeadConfig::Retrieval { dim, .. } => {
                if let Some(dim) = dim.filter(|d| *d <= 0) {
                    return Err(Error::Config(format!("{field}.dim = {dim}: must be positive")));
                }
                return Ok(());
            }
            HeadConfig::Caption { .. } => {
                let options = self.caption_options().expect("a caption head");
                return check_caption(&options, field);
            }
        };
        if let Some(h) = hidden.iter().find(|h| **h <= 0) {
            return Err(Error::Config(format!(
                "{field}.hidden = {hidden:?}: every size must be positive (found {h})"
            )));
        }
        if !(0.0..1.0).contains(&dropout) {
            return Err(Error::Config(format!("{field}.dropout = {dropout}: must be in [0, 1)")));
        }
        if let HeadConfig::Classification { label_smoothing: s, .. } = self {
            if !(0.0..1.0).contains(s) {
                return Err(Error::Config(format!(
                    "{field}.label_smoothing = {s}: must be in [0, 1) (0.1 is usual)"
                )));
            }
        }
        Ok(())
    }

    /// What the head reads: the fused vector, or encoders directly.
    pub fn reads(&self) -> Reads {
        match self {
            HeadConfig::Retrieval { pair, .. } => {
                Reads::Encoders { key: "pair", modalities: pair.to_vec() }
            }
            HeadConfig::Ctc { modality, .. } => {
                Reads::Encoders { key: "modality", modalities: vec![modality.clone()] }
            }
            HeadConfig::Caption { inputs, .. } => {
                Reads::Encoders { key: "inputs", modalities: inputs.clone() }
            }
            _ => Reads::Fused,
        }
    }

    /// What the head needs of a run's `[data]` that the data's shape cannot show when the model
    /// is built: a CTC head learns transcripts (`[data.transcript]`); an ordinal head learns
    /// the classes in an order, which only `[data] classes` gives (the default is sorted
    /// labels). `field` names the head (`model.head`).
    pub fn check_data(&self, data: &mm_data::config::DataConfig, field: &str) -> Result<()> {
        match self {
            HeadConfig::Ctc { .. } if data.transcript.is_none() => Err(Error::Config(format!(
                "{field}: a ctc head learns transcripts; add [data.transcript]"
            ))),
            HeadConfig::Ctc { .. }
                if data
                    .transcript
                    .as_ref()
                    .is_some_and(|t| t.unit == mm_data::transcript::Unit::Words) =>
            {
                Err(Error::Config(format!(
                    "{field}: a ctc head spells transcripts out character by character; data.transcript.unit = \"words\" is for caption heads (remove it)"
                )))
            }
            HeadConfig::Caption { .. } if data.transcript.is_none() => Err(Error::Config(format!(
                "{field}: a caption head learns to write the samples' text; add [data.transcript] with unit = \"words\""
            ))),
            HeadConfig::Ordinal { .. } if data.classes.is_empty() => Err(Error::Config(format!(
                "{field}: an ordinal head learns the classes in order: list them in that order in [data] classes"
            ))),
            _ => Ok(()),
        }
    }

    /// Builds the head (the one place the kinds are matched); its configuration is checked
    /// here, with errors naming `ctx.field`.
    pub fn build(&self, ctx: &HeadContext<'_>) -> Result<Box<dyn Head>> {
        Ok(match self {
            HeadConfig::Classification { hidden, dropout, label_smoothing, class_weights } => {
                Box::new(classification::Classification::new(
                    ctx,
                    hidden,
                    *dropout,
                    *label_smoothing,
                    class_weights,
                )?)
            }
            HeadConfig::MultiLabel { hidden, dropout } => {
                Box::new(multi_label::MultiLabel::new(ctx, hidden, *dropout)?)
            }
            HeadConfig::Ordinal { hidden, dropout } => {
                Box::new(ordinal::Ordinal::new(ctx, hidden, *dropout)?)
            }
            HeadConfig::Regression { hidden, dropout, loss } => {
                Box::new(regression::Regression::new(ctx, hidden, *dropout, *loss)?)
            }
            HeadConfig::Retrieval { pair, dim, positives } => {
                Box::new(retrieval::Retrieval::new(ctx, pair, *dim, *positives)?)
            }
            HeadConfig::Ctc { modality, hidden, dropout } => {
                Box::new(ctc::Ctc::new(ctx, modality, hidden, *dropout)?)
            }
            HeadConfig::Caption { inputs, .. } => {
                let options = self.caption_options().expect("a caption head");
                Box::new(caption::Caption::new(ctx, inputs, &options)?)
            }
        })
    }

    /// A caption head's settings, `None` for other heads.
    pub fn caption_options(&self) -> Option<caption::CaptionOptions> {
        let HeadConfig::Caption {
            dim,
            layers,
            heads,
            ffn,
            dropout,
            label_smoothing,
            max_len,
            beam,
            length_penalty,
            ..
        } = self
        else {
            return None;
        };
        Some(caption::CaptionOptions {
            decoder: mm_seq::decoder::DecoderConfig {
                vocab: 1,
                dim: *dim,
                layers: *layers,
                heads: *heads,
                ffn: ffn.unwrap_or(4 * *dim),
                max_positions: *max_len,
                dropout: *dropout,
                key_bias: true,
            },
            label_smoothing: *label_smoothing,
            beam: *beam,
            length_penalty: *length_penalty,
        })
    }
}

/// The most beams a caption head (or `mm caption --beam`) searches with.
pub const MAX_BEAM: usize = 64;

/// A caption head's numbers, checked before anything is built; errors name `field`'s keys.
fn check_caption(options: &caption::CaptionOptions, field: &str) -> Result<()> {
    let d = &options.decoder;
    d.check().map_err(|e| {
        let message = e.to_string();
        let message = message.trim_start_matches("invalid configuration: ");
        let message =
            message.replace("max_positions", "max_len").replace("ffn = ", "ffn (or 4 × dim) = ");
        Error::Config(format!("{field}.{message}"))
    })?;
    if d.max_positions < 2 {
        return Err(Error::Config(format!(
            "{field}.max_len = {}: at least 2 (the start token and one more)",
            d.max_positions
        )));
    }
    if !(0.0..1.0).contains(&options.label_smoothing) {
        return Err(Error::Config(format!(
            "{field}.label_smoothing = {}: must be in [0, 1) (0.1 is usual)",
            options.label_smoothing
        )));
    }
    if options.beam == 0 || options.beam > MAX_BEAM {
        return Err(Error::Config(format!(
            "{field}.beam = {}: 1 (greedy) to {MAX_BEAM}",
            options.beam
        )));
    }
    if d.max_positions > 4096 {
        return Err(Error::Config(format!(
            "{field}.max_len = {}: at most 4096 tokens",
            d.max_positions
        )));
    }
    if !options.length_penalty.is_finite() {
        return Err(Error::Config(format!(
            "{field}.length_penalty = {}: must be finite",
            options.length_penalty
        )));
    }
    Ok(())
}

/// What a head is built from: where its variables go, what it is called, and the shapes of
/// what it reads.
#[derive(Debug)]
pub struct HeadContext<'a> {
    /// Where the head's variables go (`head` for a model's only head, `heads/NAME` otherwise).
    pub path: nn::Path<'a>,
    /// The head's name (`main` for a model's only head).
    pub name: &'a str,
    /// The configuration key errors name (`model.head`, `model.heads.NAME`).
    pub field: &'a str,
    /// The encoders, by modality, with their output sizes, in model order.
    pub encoders: &'a [(String, i64)],
    /// The size of the fused vector, for heads that read it.
    pub fused_dim: Option<i64>,
    /// Whether the fusion is late fusion, which gives the logits itself (the head then adds no
    /// layers).
    pub late_fusion: bool,
    /// The data's class names.
    pub classes: &'a [String],
    /// Class counts in the training split (balanced class weights).
    pub class_counts: &'a [usize],
    /// The transcript alphabet, where the data has transcripts.
    pub alphabet: Option<&'a Arc<Alphabet>>,
}

impl HeadContext<'_> {
    /// An error about this head's configuration.
    pub fn error(&self, message: impl std::fmt::Display) -> Error {
        Error::Config(format!("{}: {message}", self.field))
    }

    /// The position of `modality`'s encoder.
    pub fn encoder(&self, modality: &str, key: &str) -> Result<usize> {
        self.encoders
            .iter()
            .position(|(n, _)| n == modality)
            .ok_or_else(|| self.error(format_args!("{key}: no encoder for {modality:?}")))
    }
}

/// What a head reads in the forward pass.
#[derive(Debug)]
pub struct HeadInput<'a> {
    /// The fused vector `[B, D]`, for heads that read it.
    pub fused: Option<&'a Tensor>,
    /// Each encoder's pooled output `[B, D_i]`, in model order.
    pub pooled: &'a [Tensor],
    /// Each encoder's steps `[B, T, D_i]` and step mask `[B, T]`, where it has them.
    pub seqs: &'a [Option<(Tensor, Tensor)>],
    /// Each encoder's presence `[B]` (booleans).
    pub present: &'a [Tensor],
    /// The batch's transcripts `[B, L]` and their lengths `[B]`, where it has them: what a head
    /// that writes text is taught to write (teacher forcing).
    pub targets: Option<&'a (Tensor, Tensor)>,
}

/// What a head's forward pass gives.
#[derive(Debug)]
pub struct HeadOutput {
    /// Logits `[B, C]`, predictions `[B]`, similarities `[B, B]` or log-probabilities
    /// `[B, T, C]`.
    pub prediction: Tensor,
    /// Retrieval: the two L2-normalised embeddings `[B, D]` and where a sample has both `[B]`.
    pub embeddings: Option<(Tensor, Tensor, Tensor)>,
    /// CTC: the per-step log-probabilities and each sample's valid steps `[B]`; caption: the
    /// decoder's memory `[B, S, D]` and its mask `[B, S]`.
    pub sequence: Option<(Tensor, Tensor)>,
}

impl HeadOutput {
    /// An output that is a prediction only.
    pub fn plain(prediction: Tensor) -> HeadOutput {
        HeadOutput { prediction, embeddings: None, sequence: None }
    }
}

/// A validation metric a head reports, with its direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    /// The name in `metrics.jsonl` (before a multi-head model's `NAME_` prefix).
    pub name: String,
    /// Whether a higher value is better (accuracy) or a lower one (loss, error rates, ranks).
    pub higher_is_better: bool,
}

impl Metric {
    /// A metric where higher is better.
    pub fn higher(name: impl Into<String>) -> Metric {
        Metric { name: name.into(), higher_is_better: true }
    }

    /// A metric where lower is better.
    pub fn lower(name: impl Into<String>) -> Metric {
        Metric { name: name.into(), higher_is_better: false }
    }
}

/// A task head (see the module documentation).
pub trait Head: std::fmt::Debug + Send {
    /// The forward pass.
    fn forward(&self, input: &HeadInput<'_>, train: bool) -> HeadOutput;

    /// The loss of `prediction` (this head's entry of `output.predictions`) against the
    /// batch's targets, a mean over the batch, in f32.
    fn loss(&self, prediction: &Tensor, output: &Output, batch: &Batch) -> Result<Tensor>;

    /// Probabilities from `prediction` (softmax, sigmoid, exp of log-probabilities), or the
    /// prediction itself where it is a value or a similarity.
    fn probabilities(&self, prediction: &Tensor) -> Tensor;

    /// Every validation metric this head can report, with its direction.
    fn metrics(&self) -> Vec<Metric>;

    /// The metric that selects the best checkpoint by default.
    fn selection(&self) -> Metric;

    /// A fresh accumulator for one evaluation.
    fn evaluator(&self) -> Box<dyn Evaluator + '_>;

    /// The encoder whose steps the output follows, one output per step (CTC); `None` for a
    /// head with one output per sample.
    fn steps_of(&self) -> Option<usize> {
        None
    }

    /// For a head that writes text (caption): the text of each sample of `output`, written with
    /// `beam` beams (or the head's own setting); `None` for a head that writes none.
    fn write_text(&self, output: &Output, beam: Option<usize>) -> Option<Vec<String>> {
        let _ = (output, beam);
        None
    }

    /// One JSON object per sample of the batch for `mm predict`: the prediction, beside the
    /// truth where the batch has it. `index` is this head's position in `output.predictions`.
    fn predict(
        &self,
        output: &Output,
        index: usize,
        batch: &Batch,
    ) -> Result<Vec<Map<String, Value>>>;
}

/// What a head gathers while a split is evaluated.
pub trait Evaluator {
    /// Takes one batch's output (`index`: this head's position in `output.predictions`).
    fn add(&mut self, output: &Output, index: usize, batch: &Batch) -> Result<()>;

    /// Replaces this rank's gathered predictions by every rank's (data-parallel evaluation;
    /// every rank calls it, in the same order).
    fn merge(&mut self, group: &ProcessGroup) -> Result<()>;

    /// The metrics, each through `put(name, value)`; none when nothing was gathered.
    fn finish(&self, put: &mut dyn FnMut(&str, Value));
}

/// The layers of a head's MLP: `hidden` sizes, then `outputs`, from `input`; checked.
pub(crate) fn mlp(
    ctx: &HeadContext<'_>,
    input: i64,
    hidden: &[i64],
    dropout: f64,
    outputs: i64,
) -> Result<Mlp> {
    if !(0.0..1.0).contains(&dropout) || hidden.iter().any(|h| *h <= 0) {
        return Err(ctx.error(format_args!(
            "hidden {hidden:?} must be positive and dropout {dropout} in [0, 1)"
        )));
    }
    let mut layers = Vec::new();
    let mut from = input;
    for (i, &h) in hidden.iter().chain(std::iter::once(&outputs)).enumerate() {
        layers.push(nn::linear(&ctx.path / i, from, h, Default::default()));
        from = h;
    }
    Ok(Mlp { layers, dropout })
}

/// A head's MLP on the fused vector, or none under late fusion (whose output is the logits):
/// late fusion then needs exactly `outputs` outputs and no hidden layers.
pub(crate) fn fused_mlp(
    ctx: &HeadContext<'_>,
    hidden: &[i64],
    dropout: f64,
    outputs: i64,
) -> Result<Mlp> {
    let input = ctx
        .fused_dim
        .ok_or_else(|| ctx.error("this head reads a fused vector: add [model.fusion]"))?;
    if ctx.late_fusion {
        if !(0.0..1.0).contains(&dropout) || hidden.iter().any(|h| *h <= 0) {
            return Err(ctx.error(format_args!(
                "hidden {hidden:?} must be positive and dropout {dropout} in [0, 1)"
            )));
        }
        if input != outputs || !hidden.is_empty() {
            return Err(Error::Config(format!(
                "model: late fusion gives {input} logits itself; it needs one head, with {outputs} classes and no hidden layers"
            )));
        }
        return Ok(Mlp { layers: Vec::new(), dropout });
    }
    mlp(ctx, input, hidden, dropout, outputs)
}

/// Linear layers with ReLU between them and dropout before each when training.
#[derive(Debug)]
pub(crate) struct Mlp {
    layers: Vec<nn::Linear>,
    dropout: f64,
}

impl Mlp {
    pub(crate) fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut x = x.shallow_clone();
        let last = self.layers.len().saturating_sub(1);
        for (i, l) in self.layers.iter().enumerate() {
            x = x.dropout(self.dropout, train).apply(l);
            if i < last {
                x = x.relu();
            }
        }
        x
    }
}

/// The classes a head needs, or an error.
pub(crate) fn need_classes(ctx: &HeadContext<'_>) -> Result<i64> {
    if ctx.classes.is_empty() {
        return Err(ctx.error("a classification head needs classes in the data"));
    }
    Ok(ctx.classes.len() as i64)
}

/// The error for a batch without the target a head learns.
pub(crate) fn missing(what: &str, name: &str) -> Error {
    Error::Config(format!("the batch has no {what} for the head {name:?}"))
}

/// `t` on the CPU as `f32` values.
pub(crate) fn host_f32(t: &Tensor) -> Vec<f32> {
    Vec::try_from(t.to_device(tch::Device::Cpu).to_kind(tch::Kind::Float).view([-1]))
        .unwrap_or_default()
}

/// `t` on the CPU as `i64` values.
pub(crate) fn host_i64(t: &Tensor) -> Vec<i64> {
    Vec::try_from(t.to_device(tch::Device::Cpu).to_kind(tch::Kind::Int64).view([-1]))
        .unwrap_or_default()
}

/// Every rank's `values`, in rank order.
pub(crate) fn gather_f32(group: &ProcessGroup, values: &[f32]) -> Result<Vec<f32>> {
    Ok(group
        .all_gather(&values.iter().map(|v| f64::from(*v)).collect::<Vec<_>>())?
        .into_iter()
        .map(|v| v as f32)
        .collect())
}

/// Every rank's `values`, in rank order.
pub(crate) fn gather_i64(group: &ProcessGroup, values: &[i64]) -> Result<Vec<i64>> {
    Ok(group
        .all_gather(&values.iter().map(|v| *v as f64).collect::<Vec<_>>())?
        .into_iter()
        .map(|v| v as i64)
        .collect())
}

/// Class names to probabilities, as `mm predict` prints them.
pub(crate) fn by_class(classes: &[String], probs: &[f32]) -> Value {
    Value::Object(
        classes.iter().zip(probs).map(|(k, v)| (k.clone(), serde_json::json!(v))).collect(),
    )
}

/// `mm predict`'s objects for a head over classes, one per sample: the predicted class, every
/// class's probability (`probs`, `[B, C]` flat), and the label where the sample has one.
pub(crate) fn class_rows(
    classes: &[String],
    predicted: &[usize],
    probs: &[f32],
    labels: Option<&[i64]>,
) -> Vec<Map<String, Value>> {
    let c = classes.len();
    predicted
        .iter()
        .enumerate()
        .map(|(j, &k)| {
            let mut row = Map::new();
            row.insert("prediction".into(), serde_json::json!(classes[k]));
            row.insert("probabilities".into(), by_class(classes, &probs[j * c..(j + 1) * c]));
            if let Some(l) = labels.and_then(|l| l.get(j)).filter(|l| **l >= 0) {
                row.insert("label".into(), serde_json::json!(classes[*l as usize]));
            }
            row
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_refuse_transcripts_they_cannot_learn() {
        let words: mm_data::config::DataConfig =
            toml::from_str("manifest = \"m.jsonl\"\n[transcript]\nunit = \"words\"\n")
                .expect("data");
        let ctc: HeadConfig = toml::from_str("type = \"ctc\"").expect("ctc");
        let e = ctc.check_data(&words, "model.head").expect_err("words").to_string();
        assert!(e.contains("data.transcript.unit"), "{e}");
        let caption: HeadConfig =
            toml::from_str("type = \"caption\"\ninputs = [\"image\"]").expect("caption");
        caption.check_data(&words, "model.head").expect("words are a caption's");
        let none: mm_data::config::DataConfig =
            toml::from_str("manifest = \"m.jsonl\"").expect("data");
        let e = caption.check_data(&none, "model.head").expect_err("no text").to_string();
        assert!(e.contains("[data.transcript]"), "{e}");
        let big: HeadConfig =
            toml::from_str("type = \"caption\"\ninputs = [\"image\"]\nbeam = 65").expect("caption");
        let e = big.check_values("model.head").expect_err("beam").to_string();
        assert!(e.contains("model.head.beam = 65"), "{e}");
    }
}
