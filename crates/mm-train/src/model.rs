//! A multimodal model assembled from configuration: an encoder per modality, a fusion (one
//! method or a tree), and a head. Its sizes come from the data pipeline it will read (mel bins,
//! feature count, vocabulary, classes), so a model that does not fit its data is refused when
//! it is built, not halfway through training.
//!
//! ```toml
//! [encoders.image]
//! kind = "image"
//! arch = "resnet18"
//!
//! [encoders.audio]
//! kind = "audio"
//! backbone = { type = "rnn", cell = "gru", hidden = 64, bidirectional = true }
//!
//! [fusion]
//! method = "gated"
//! dim = 128
//!
//! [head]
//! type = "classification"
//! hidden = [64]
//! ```
//!
//! A retrieval model has no fusion: `[head] type = "retrieval"`, `pair = ["text", "image"]`,
//! `dim = 128` projects the two modalities into a shared space trained with InfoNCE.
//!
//! Several heads share the fused vector when `[heads.NAME]` tables replace `[head]` (at most
//! one per kind, since each kind reads its own target: `label`, `labels` or `target`), with
//! `[loss_weights] NAME = w` (default 1); their metrics are reported as `NAME_accuracy`,
//! `NAME_mse` and so on.

use std::collections::BTreeMap;
use std::sync::Arc;

use mm_data::guard::Part;
use mm_data::loader::Batch;
use mm_data::pipeline::{Pipeline, TextEncoder as PipelineText};
use mm_data::text::Vocab;
use mm_data::transcript::Alphabet;
use mm_data::Modality;
use mm_encoders::weights::LoadReport;
use mm_encoders::{build, BuildContext, Encoder, EncoderConfig, Input};
use mm_fusion::{Embeddings, FusionConfig, FusionModel};

use crate::heads::{Head, HeadContext, HeadInput, Metric};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::{Error, Result};

pub use crate::heads::{ClassWeights, HeadConfig, Positives, Reads, RegressionLoss};

/// A model's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// An encoder per modality, keyed by the modality's name (`image`, `audio`, `text`,
    /// `frames`, `features`; see [`Modality`]). The keys stay strings here, as written;
    /// [`ModelConfig::modalities`] reads them as modalities.
    pub encoders: BTreeMap<String, EncoderConfig>,
    /// The fusion (every head but retrieval needs one).
    #[serde(default)]
    pub fusion: Option<FusionConfig>,
    /// The head, for a model with one.
    #[serde(default)]
    pub head: Option<HeadConfig>,
    /// Several named heads on the same fused vector (multi-task: say a classification of the
    /// label and a regression of the target); give `head` or `heads`.
    #[serde(default)]
    pub heads: BTreeMap<String, HeadConfig>,
    /// Weight of each named head's loss in the total (default 1).
    #[serde(default)]
    pub loss_weights: BTreeMap<String, f64>,
}

impl ModelConfig {
    /// The encoders by modality, in key order (the order of the model's embeddings); a key that
    /// names no modality is an error naming it (`model.encoders.NAME`).
    pub fn modalities(&self) -> Result<Vec<(Modality, &EncoderConfig)>> {
        self.encoders
            .iter()
            .map(|(name, enc)| {
                let m = name
                    .parse::<Modality>()
                    .map_err(|e| Error::Config(format!("model.encoders.{name}: {e}")))?;
                Ok((m, enc))
            })
            .collect()
    }

    /// The heads, named (`main` for a single `head`).
    pub fn named_heads(&self) -> Result<Vec<(String, HeadConfig)>> {
        match (&self.head, self.heads.is_empty()) {
            (Some(h), true) => Ok(vec![("main".to_string(), h.clone())]),
            (None, false) => Ok(self.heads.iter().map(|(n, h)| (n.clone(), h.clone())).collect()),
            (Some(_), false) => {
                Err(Error::Config("model: give `head` or `heads`, not both".to_string()))
            }
            (None, true) => {
                Err(Error::Config("model: no head (`[head]` or `[heads.NAME]`)".to_string()))
            }
        }
    }

    /// Checks how the encoders, the fusion and the heads fit together (the rules that need no
    /// data), and returns the named heads. [`Model::new`] and
    /// [`crate::run::RunConfig::validate`] both call it, so each rule lives here once:
    /// - at least one encoder, each keyed by a modality; `head` or `heads`; loss weights name
    ///   heads and are finite and non-negative; no two heads of one kind (they would read the
    ///   same targets);
    /// - a head that reads encoders directly (retrieval, CTC) stands alone, without a fusion,
    ///   over exactly the encoders it reads;
    /// - heads that read a fused vector need a fusion over several modalities; over one, the
    ///   encoder's output is the fused vector.
    pub fn check(&self) -> Result<Vec<(String, HeadConfig)>> {
        let bad = |m: String| Err(Error::Config(m));
        if self.encoders.is_empty() {
            return bad("model.encoders: at least one modality".to_string());
        }
        self.modalities()?;
        let named = self.named_heads()?;
        for (name, weight) in &self.loss_weights {
            if !named.iter().any(|(n, _)| n == name) {
                return bad(format!("model.loss_weights.{name}: no head of that name"));
            }
            if !weight.is_finite() || *weight < 0.0 {
                return bad(format!(
                    "model.loss_weights.{name} = {weight}: finite and non-negative"
                ));
            }
        }
        let kinds: Vec<&str> = named.iter().map(|(_, h)| h.kind()).collect();
        if (1..kinds.len()).any(|i| kinds[..i].contains(&kinds[i])) {
            return bad(
                "model.heads: two heads of one kind would read the same targets".to_string()
            );
        }
        for (name, head) in &named {
            let field = if named.len() == 1 {
                "model.head".to_string()
            } else {
                format!("model.heads.{name}")
            };
            head.check_values(&field)?;
            let kind = head.kind();
            match head.reads() {
                Reads::Encoders { key, modalities } => {
                    if named.len() > 1 {
                        return bad(format!("model.heads: a {kind} head stands alone"));
                    }
                    if self.fusion.is_some() {
                        return bad(format!("model.fusion: a {kind} head reads {modalities:?} directly and fuses nothing; remove [model.fusion]"));
                    }
                    for m in &modalities {
                        if !self.encoders.contains_key(m) {
                            return bad(format!("{field}.{key}: no encoder for {m:?}"));
                        }
                    }
                    if self.encoders.len() != modalities.len() {
                        return bad(format!("model.encoders: a {kind} head reads {modalities:?} alone; remove the other encoders"));
                    }
                }
                Reads::Fused if self.fusion.is_none() && self.encoders.len() > 1 => {
                    return bad(format!(
                        "model.fusion: missing; a {kind} head reads a fused vector of the {} modalities (every head but retrieval and ctc; one modality needs none)",
                        self.encoders.len()
                    ));
                }
                Reads::Fused => {}
            }
        }
        Ok(named)
    }
}

/// What the model needs to know about its data.
#[derive(Debug, Clone, Default)]
pub struct DataShape {
    /// Modalities the pipeline delivers, in batch order.
    pub modalities: Vec<Modality>,
    /// Class names.
    pub classes: Vec<String>,
    /// Mel bins of the audio.
    pub n_mels: Option<i64>,
    /// Numeric features per sample.
    pub features: Option<i64>,
    /// The word vocabulary of the text.
    pub vocab: Option<Arc<Vocab>>,
    /// Token ids of a subword tokenizer.
    pub vocab_size: Option<i64>,
    /// The longest token sequence the text pipeline delivers.
    pub max_tokens: Option<i64>,
    /// Class counts in the training split, for balanced class weights.
    pub class_counts: Vec<usize>,
    /// The alphabet of transcript targets (a CTC head's outputs).
    pub alphabet: Option<Arc<Alphabet>>,
}

impl DataShape {
    /// The shape of what `pipeline` produces; `class_counts` from the training split.
    pub fn from_pipeline(pipeline: &Pipeline, class_counts: Vec<usize>) -> Self {
        let (vocab, vocab_size) = match pipeline.text.as_ref().map(|t| &t.encoder) {
            Some(PipelineText::Words { vocab, .. }) => {
                (Some(Arc::clone(vocab)), Some(vocab.len() as i64))
            }
            Some(PipelineText::Subword(s)) => (None, Some(s.vocab_size() as i64)),
            None => (None, None),
        };
        DataShape {
            modalities: pipeline.modalities(),
            classes: pipeline.classes.clone(),
            n_mels: pipeline.audio.as_ref().map(|a| a.mel.config().n_mels as i64),
            features: pipeline.features.as_ref().map(|f| f.dim as i64),
            vocab,
            vocab_size,
            max_tokens: pipeline.text.as_ref().map(|t| t.max_tokens as i64),
            class_counts,
            alphabet: pipeline.transcript.clone(),
        }
    }
}

/// A model's output for a batch.
#[derive(Debug)]
pub struct Output {
    /// The first head's logits `[B, C]` (classification) or predictions `[B]` (regression);
    /// for retrieval, the `[B, B]` similarities.
    pub prediction: Tensor,
    /// Every head's output, in [`Model::heads`] order.
    pub predictions: Vec<Tensor>,
    /// Per-sample modality weights or gates of the fusion, where it has them.
    pub weights: Option<Tensor>,
    /// Retrieval: the two modalities' L2-normalised embeddings `[B, D]` and `[B]` booleans,
    /// true where a sample has both.
    pub embeddings: Option<(Tensor, Tensor, Tensor)>,
    /// CTC: per-step log-probabilities `[B, T, C]` (class 0 the blank) and each sample's valid
    /// steps `[B]` (int64); `prediction` holds the same log-probabilities. Caption: the
    /// decoder's memory `[B, S, D]` and its mask `[B, S]`.
    pub sequence: Option<(Tensor, Tensor)>,
}

/// One of a model's heads: its name, configuration, loss weight and module.
#[derive(Debug)]
struct NamedHead {
    name: String,
    config: HeadConfig,
    weight: f64,
    head: Box<dyn Head>,
}

/// An encoder per modality, a fusion (none for heads that read encoders directly, or over one
/// modality) and one or more heads.
#[derive(Debug)]
pub struct Model {
    encoders: Vec<(Modality, Box<dyn Encoder>)>,
    fusion: Option<FusionModel>,
    /// Whether the heads read a fused vector that, without a fusion, is the one encoder's
    /// output (decided when the model is built).
    reads_fused: bool,
    heads: Vec<NamedHead>,
    classes: usize,
    alphabet: Option<Arc<Alphabet>>,
    config: ModelConfig,
}

/// An encoder built for its modality.
type Built = (Modality, Box<dyn Encoder>);

/// The encoders and the fusion of `config` (whose heads are `named`) built under `path` for
/// data of shape `data`, and whether the heads read a fused vector.
fn build_parts(
    path: &nn::Path,
    config: &ModelConfig,
    named: &[(String, HeadConfig)],
    data: &DataShape,
) -> Result<(Vec<Built>, Option<FusionModel>, bool)> {
    let mut encoders = Vec::new();
    for (name, enc) in config.modalities()? {
        if !data.modalities.contains(&name) {
            return Err(Error::Config(format!(
                "model.encoders.{name}: the data has no {name} (it has {:?})",
                data.modalities
            )));
        }
        let input_dim = match name {
            Modality::Audio => data.n_mels,
            Modality::Features => data.features,
            Modality::Image | Modality::Text | Modality::Frames => None,
        };
        let ctx = BuildContext {
            input_dim,
            vocab: data.vocab.as_deref(),
            vocab_size: data.vocab_size,
            max_tokens: data.max_tokens,
            seed: 0,
        };
        let e = build(&(path / "encoders" / name), enc, &ctx).map_err(|e| match e {
            mm_encoders::Error::Config(m) | mm_encoders::Error::Seq(mm_seq::Error::Config(m)) => {
                Error::Config(format!("model.encoders.{name}: {m}"))
            }
            e => Error::Config(format!("model.encoders.{name}: {e}")),
        })?;
        encoders.push((name, e));
    }
    let reads_fused = named.iter().any(|(_, h)| h.reads() == Reads::Fused);
    let fusion = match &config.fusion {
        Some(f) if reads_fused => {
            let dims: Vec<(String, i64)> =
                encoders.iter().map(|(n, e)| (n.to_string(), e.output_dim())).collect();
            let dims: Vec<(&str, i64)> = dims.iter().map(|(n, d)| (n.as_str(), *d)).collect();
            Some(FusionModel::new(&(path / "fusion"), f, &dims).map_err(|e| match e {
                mm_fusion::Error::Config(m) => Error::Config(format!("model.fusion: {m}")),
                e => Error::Config(format!("model.fusion: {e}")),
            })?)
        }
        _ => None,
    };
    Ok((encoders, fusion, reads_fused))
}

impl ModelConfig {
    /// Builds the encoders and the fusion once on the CPU, with stand-in sizes from the data's
    /// configuration (its mel bins, features and token length; a vocabulary of 8 words), and
    /// drops them: every number they check (channels, heads dividing a size, dropout, ...) is
    /// then checked before any data is read, not after the data is cleaned. A model with an
    /// encoder whose building reads files (word vectors, BERT) is left to the real build.
    pub fn check_build(&self, data: &mm_data::config::DataConfig) -> Result<()> {
        let whisper_front =
            data.audio.as_ref().is_some_and(|a| a.front == mm_data::config::AudioFront::Whisper);
        for (name, e) in &self.encoders {
            if matches!(e, EncoderConfig::Whisper(_)) && !whisper_front {
                return Err(Error::Config(format!(
                    "model.encoders.{name}: kind = \"whisper\" reads Whisper's own log-mel window: set [data.audio] front = \"whisper\" (and mel = {{ n_mels = 80 }}, the model's bins)"
                )));
            }
        }
        let reads_files = self.encoders.values().any(|e| match e {
            EncoderConfig::Bert(_)
            | EncoderConfig::ClipImage(_)
            | EncoderConfig::ClipText(_)
            | EncoderConfig::Whisper(_) => true,
            EncoderConfig::Vit(v) => v.model.is_some(),
            EncoderConfig::Text(t) => t.vectors.is_some(),
            _ => false,
        });
        if reads_files {
            return Ok(());
        }
        let named = self.check()?;
        let shape = DataShape {
            modalities: data.modalities(),
            n_mels: data.audio.as_ref().map(|a| a.mel.n_mels as i64),
            features: data.features.as_ref().map(|f| f.dim as i64),
            vocab_size: Some(8),
            max_tokens: data.text.as_ref().map(|t| t.max_tokens as i64),
            ..DataShape::default()
        };
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let (encoders, _, _) = build_parts(&vs.root(), self, &named, &shape)?;
        // An image size the image encoder cannot take (too small for its kernels and pools).
        let image = data.image.as_ref().map(|i| i.size.hw());
        for (name, encoder) in encoders.iter().filter(|(m, _)| *m == Modality::Image) {
            let Some((h, w)) = image else { continue };
            let input = Input {
                values: Tensor::zeros(
                    [1, 3, h as i64, w as i64],
                    (tch::Kind::Float, tch::Device::Cpu),
                ),
                lengths: None,
            };
            let ran = mm_data::guard::catch(|| {
                let _no_grad = tch::no_grad_guard();
                encoder.forward_t(&input, false).pooled.size()
            });
            if let Err(caught) = ran {
                return Err(Error::Config(format!(
                    "data.image.size = {h}x{w}: too small for model.encoders.{name} ({})",
                    caught.message
                )));
            }
        }
        Ok(())
    }
}

impl Model {
    /// Builds the model under `path` for data of shape `data`.
    pub fn new(path: &nn::Path, config: &ModelConfig, data: &DataShape) -> Result<Self> {
        let named = config.check()?;
        let (encoders, fusion, reads_fused) = build_parts(path, config, &named, data)?;
        let dims: Vec<(String, i64)> =
            encoders.iter().map(|(n, e)| (n.to_string(), e.output_dim())).collect();
        // Without a fusion, a model over one modality reads that encoder's output.
        let fused_dim = fusion
            .as_ref()
            .map(FusionModel::output_dim)
            .or_else(|| (reads_fused && dims.len() == 1).then(|| dims[0].1));
        let late_fusion = matches!(config.fusion, Some(FusionConfig::Late { .. }));
        if late_fusion && named.len() > 1 {
            return Err(Error::Config(format!(
                "model: late fusion gives {} logits itself; it needs one head, with {} classes and no hidden layers",
                fused_dim.unwrap_or(0),
                data.classes.len()
            )));
        }
        let mut heads = Vec::new();
        for (name, head) in &named {
            let field = if named.len() == 1 {
                "model.head".to_string()
            } else {
                format!("model.heads.{name}")
            };
            let ctx = HeadContext {
                path: if named.len() == 1 { path / "head" } else { path / "heads" / name.as_str() },
                name,
                field: &field,
                encoders: &dims,
                fused_dim,
                late_fusion,
                classes: &data.classes,
                class_counts: &data.class_counts,
                alphabet: data.alphabet.as_ref(),
            };
            let module = head.build(&ctx)?;
            let weight = config.loss_weights.get(name).copied().unwrap_or(1.0);
            heads.push(NamedHead {
                name: name.clone(),
                config: head.clone(),
                weight,
                head: module,
            });
        }
        Ok(Model {
            encoders,
            fusion,
            reads_fused,
            heads,
            classes: data.classes.len(),
            alphabet: data.alphabet.clone(),
            config: config.clone(),
        })
    }

    /// The heads' names and configurations, in output order.
    pub fn heads(&self) -> Vec<(&str, &HeadConfig)> {
        self.heads.iter().map(|h| (h.name.as_str(), &h.config)).collect()
    }

    /// Number of classes of the data (the width of classification heads).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Input frames per output step of a CTC model (its encoder's [`Encoder::time_stride`]).
    pub fn ctc_stride(&self) -> Option<i64> {
        self.heads.iter().find_map(|h| h.head.steps_of()).map(|i| self.encoders[i].1.time_stride())
    }

    /// The transcript alphabet of a CTC model (its output classes after the blank).
    pub fn alphabet(&self) -> Option<&Alphabet> {
        self.alphabet.as_deref()
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Runs one batch without gradients and turns a libtorch failure (a shape that does not
    /// fit) into an error, so that a mismatch between data and model is reported before
    /// training starts.
    pub fn check(&self, batch: &Batch) -> Result<()> {
        // A guard, not `tch::no_grad`: the guard restores gradient mode when a panic unwinds.
        let outcome = mm_data::guard::catch(|| {
            let _no_grad = tch::no_grad_guard();
            self.forward_t(batch, false).prediction.size()
        });
        match outcome {
            Ok(_) => Ok(()),
            Err(caught) => Err(Error::Config(format!(
                "the model does not fit the data (samples {:?}...): {caught}",
                batch.ids.iter().take(3).collect::<Vec<_>>()
            ))),
        }
    }

    /// The first head's configuration.
    pub fn head(&self) -> &HeadConfig {
        &self.heads[0].config
    }

    /// The heads' modules, in output order (their metrics, evaluation and predictions).
    pub fn head_modules(&self) -> impl Iterator<Item = &dyn Head> {
        self.heads.iter().map(|h| h.head.as_ref())
    }

    /// A validation metric's direction: `loss` (and with several heads `NAME_loss`) and every
    /// metric a head reports ([`Head::metrics`], prefixed `NAME_` with several heads); `None`
    /// for a name this model never reports.
    pub fn metric(&self, name: &str) -> Option<Metric> {
        let several = self.heads.len() > 1;
        if name == "loss" {
            return Some(Metric::lower("loss"));
        }
        self.heads.iter().find_map(|h| {
            let own =
                if several { name.strip_prefix(h.name.as_str())?.strip_prefix('_')? } else { name };
            if own == "loss" {
                return Some(Metric::lower(name));
            }
            h.head
                .metrics()
                .into_iter()
                .find(|m| m.name == own)
                .map(|m| Metric { name: name.to_string(), ..m })
        })
    }

    /// The metric that selects the best checkpoint by default: the first head's
    /// ([`Head::selection`]), prefixed by its name when there are several heads.
    pub fn selection(&self) -> Metric {
        let first = &self.heads[0];
        let m = first.head.selection();
        if self.heads.len() > 1 {
            Metric { name: format!("{}_{}", first.name, m.name), ..m }
        } else {
            m
        }
    }

    /// Runs the model on a batch (on the model's device).
    pub fn forward_t(&self, batch: &Batch, train: bool) -> Output {
        let mut pooled = Vec::new();
        let mut seqs = Vec::new();
        let mut present = Vec::new();
        for (name, enc) in &self.encoders {
            let input = Input::from_batch(batch, *name).unwrap_or_else(|| {
                panic!("the batch has no {name} (checked when the model was built)")
            });
            let out = {
                let _part = Part::enter(format!("{name} encoder"));
                enc.forward_t(&input, train)
            };
            pooled.push(out.pooled);
            seqs.push(out.seq);
            let column =
                batch.modalities.iter().position(|m| m == name).expect("modality in the batch");
            present.push(batch.present.select(1, column as i64).gt(0.5));
        }
        let reads_fused = self.reads_fused;
        let (fused, weights) = match &self.fusion {
            Some(fusion) => {
                let _part = Part::enter("fusion");
                let embeddings = Embeddings {
                    pooled: pooled.iter().map(Tensor::shallow_clone).collect(),
                    seqs: seqs
                        .iter()
                        .map(|s| s.as_ref().map(|(a, b)| (a.shallow_clone(), b.shallow_clone())))
                        .collect(),
                    present: Tensor::stack(&present, 1),
                };
                let f = fusion.forward_t(&embeddings, train);
                (Some(f.fused), f.weights)
            }
            // One modality and no fusion: its encoder's output, zero where the sample lacks it.
            None if reads_fused => (
                Some(pooled[0].where_self(&present[0].unsqueeze(1), &pooled[0].zeros_like())),
                None,
            ),
            None => (None, None),
        };
        let input = HeadInput {
            fused: fused.as_ref(),
            pooled: &pooled,
            seqs: &seqs,
            present: &present,
            targets: batch.transcript.as_ref(),
        };
        let (mut predictions, mut embeddings, mut sequence) = (Vec::new(), None, None);
        for h in &self.heads {
            let _part = Part::enter(format!("{} head", h.name));
            let out = h.head.forward(&input, train);
            predictions.push(out.prediction);
            embeddings = embeddings.or(out.embeddings);
            sequence = sequence.or(out.sequence);
        }
        Output {
            prediction: predictions[0].shallow_clone(),
            predictions,
            weights,
            embeddings,
            sequence,
        }
    }

    /// The loss of `output` against the batch's targets: the weighted sum of the heads'.
    pub fn loss(&self, output: &Output, batch: &Batch) -> Result<Tensor> {
        Ok(self.total_loss(&self.head_losses(output, batch)?))
    }

    /// The weighted sum of per-head losses from [`Model::head_losses`].
    pub fn total_loss(&self, losses: &[(String, Tensor)]) -> Tensor {
        let mut terms = losses.iter().zip(&self.heads).map(|((_, l), h)| l * h.weight);
        let first = terms.next().expect("a model has at least one head");
        terms.fold(first, |total, term| total + term)
    }

    /// Each head's own loss (unweighted, in f32 even under bf16 autocast), by name.
    pub fn head_losses(&self, output: &Output, batch: &Batch) -> Result<Vec<(String, Tensor)>> {
        self.heads
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let _part = Part::enter(format!("{} head's loss", h.name));
                Ok((h.name.clone(), h.head.loss(&output.predictions[i], output, batch)?))
            })
            .collect()
    }

    /// The encoders' backbone parameters (the pretrained parts), for their own parameter group.
    pub fn backbone_parameters(&self) -> Vec<Tensor> {
        self.encoders.iter().flat_map(|(_, e)| e.backbone_parameters()).collect()
    }

    /// Freezes or unfreezes every encoder's backbone; a backbone its configuration freezes
    /// (`freeze = true`) stays frozen.
    pub fn set_backbones_trainable(&self, trainable: bool) {
        for (name, e) in &self.encoders {
            let frozen = self.config.encoders.get(name.name()).is_some_and(EncoderConfig::frozen);
            e.set_backbone_trainable(trainable && !frozen);
        }
    }

    /// Freezes or unfreezes the backbones of the encoders that start from pretrained numbers
    /// ([`EncoderConfig::pretrained`]); those configured `freeze = true` stay frozen, and the
    /// others are left alone.
    pub fn set_pretrained_trainable(&self, trainable: bool) {
        for (name, e) in &self.encoders {
            if let Some(config) = self.config.encoders.get(name.name()).filter(|c| c.pretrained()) {
                e.set_backbone_trainable(trainable && !config.frozen());
            }
        }
    }

    /// Loads every encoder's configured pretrained weights (an image network's `weights`, a
    /// BERT model's folder) into `vs`, at whose root this model was built; returns what each
    /// load did, by modality. A file that does not fit its encoder is an error listing every
    /// mismatched tensor by name and shape.
    pub fn load_pretrained(&self, vs: &nn::VarStore) -> Result<Vec<(String, LoadReport)>> {
        let mut reports = Vec::new();
        for (name, config) in &self.config.encoders {
            let loaded = config.load_weights(vs, &format!("encoders.{name}.")).map_err(|e| {
                Error::Config(format!("model.encoders.{name}: pretrained weights: {e}"))
            })?;
            if let Some(report) = loaded {
                reports.push((name.clone(), report));
            }
        }
        Ok(reports)
    }

    /// Head `i`'s probabilities `[B, C]` (softmax, or sigmoid for multi-label); regression
    /// predictions and retrieval similarities as they are.
    pub fn probabilities(&self, output: &Output, i: usize) -> Tensor {
        self.heads[i].head.probabilities(&output.predictions[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoder_keys_are_read_as_modalities_in_key_order_and_unknown_ones_named() {
        let config: ModelConfig = toml::from_str(
            "[encoders.text]\nkind = \"text\"\n[encoders.audio]\nkind = \"audio\"\n\
             [fusion]\nmethod = \"concat\"\n[head]\ntype = \"classification\"\n",
        )
        .expect("config");
        let keys: Vec<Modality> =
            config.modalities().expect("modalities").into_iter().map(|(m, _)| m).collect();
        assert_eq!(keys, [Modality::Audio, Modality::Text]);
        let mut bad = config.clone();
        let enc = bad.encoders.remove("audio").expect("audio");
        bad.encoders.insert("sound".into(), enc);
        let e = bad.check().expect_err("unknown modality").to_string();
        assert!(
            e.contains("model.encoders.sound: unknown modality `sound` (image, audio, text, frames or features)"),
            "{e}"
        );
    }
}
