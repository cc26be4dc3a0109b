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
use mm_encoders::weights::LoadReport;
use mm_encoders::{build, BuildContext, Encoder, EncoderConfig, Input};
use mm_fusion::{Embeddings, FusionConfig, FusionModel};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::loss::{binary_cross_entropy, cross_entropy, l1, mse, CrossEntropy};
use crate::{Error, Result};

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
    fn is_pair(&self) -> bool {
        *self == Positives::Pair
    }
}

/// The task head on the fused vector.
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
        /// Size of the shared space.
        dim: i64,
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

impl HeadConfig {
    fn mlp(&self) -> (&[i64], f64) {
        match self {
            HeadConfig::Classification { hidden, dropout, .. }
            | HeadConfig::MultiLabel { hidden, dropout }
            | HeadConfig::Regression { hidden, dropout, .. }
            | HeadConfig::Ctc { hidden, dropout, .. } => (hidden, *dropout),
            HeadConfig::Retrieval { .. } => (&[], 0.0),
        }
    }
}

fn audio() -> String {
    "audio".to_string()
}

/// A model's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// An encoder per modality, keyed by the modality's name (`image`, `audio`, `text`,
    /// `frames`, `features`).
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
    /// The heads, named (`main` for a single `head`).
    pub fn named_heads(&self) -> Result<Vec<(String, HeadConfig)>> {
        match (&self.head, self.heads.is_empty()) {
            (Some(h), true) => Ok(vec![("main".to_string(), h.clone())]),
            (None, false) => Ok(self.heads.iter().map(|(n, h)| (n.clone(), h.clone())).collect()),
            (Some(_), false) => Err(Error::Config("model: give `head` or `heads`, not both".to_string())),
            (None, true) => Err(Error::Config("model: no head (`[head]` or `[heads.NAME]`)".to_string())),
        }
    }
}

/// What the model needs to know about its data.
#[derive(Debug, Clone, Default)]
pub struct DataShape {
    /// Modalities the pipeline delivers, in batch order.
    pub modalities: Vec<&'static str>,
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
            Some(PipelineText::Words { vocab, .. }) => (Some(Arc::clone(vocab)), Some(vocab.len() as i64)),
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
    /// steps `[B]` (int64); `prediction` holds the same log-probabilities.
    pub sequence: Option<(Tensor, Tensor)>,
}

#[derive(Debug)]
struct CtcHead {
    encoder: usize,
    layers: Vec<nn::Linear>,
    dropout: f64,
}

#[derive(Debug)]
struct RetrievalHead {
    a: usize,
    b: usize,
    proj_a: nn::Linear,
    proj_b: nn::Linear,
    temperature: crate::loss::Temperature,
}

#[derive(Debug)]
struct Head {
    name: String,
    config: HeadConfig,
    layers: Vec<nn::Linear>,
    class_weights: Option<Tensor>,
    weight: f64,
}

/// An encoder per modality, a fusion and one or more heads.
#[derive(Debug)]
pub struct Model {
    encoders: Vec<(String, Box<dyn Encoder>)>,
    fusion: Option<FusionModel>,
    retrieval: Option<RetrievalHead>,
    ctc: Option<CtcHead>,
    heads: Vec<Head>,
    classes: usize,
    alphabet: Option<Arc<Alphabet>>,
    config: ModelConfig,
}

impl Model {
    /// Builds the model under `path` for data of shape `data`.
    pub fn new(path: &nn::Path, config: &ModelConfig, data: &DataShape) -> Result<Self> {
        if config.encoders.is_empty() {
            return Err(Error::Config("model.encoders: at least one modality".to_string()));
        }
        let mut encoders = Vec::new();
        for (name, enc) in &config.encoders {
            if !data.modalities.contains(&name.as_str()) {
                return Err(Error::Config(format!("model.encoders.{name}: the data has no {name} (it has {:?})", data.modalities)));
            }
            let input_dim = match name.as_str() {
                "audio" => data.n_mels,
                "features" => data.features,
                _ => None,
            };
            let ctx = BuildContext { input_dim, vocab: data.vocab.as_deref(), vocab_size: data.vocab_size, max_tokens: data.max_tokens, seed: 0 };
            let e = build(&(path / "encoders" / name), enc, &ctx).map_err(|e| Error::Config(format!("model.encoders.{name}: {e}")))?;
            encoders.push((name.clone(), e));
        }
        let dims: Vec<(&str, i64)> = encoders.iter().map(|(n, e)| (n.as_str(), e.output_dim())).collect();
        let classes = data.classes.len();
        let named = config.named_heads()?;
        for name in config.loss_weights.keys() {
            if !named.iter().any(|(n, _)| n == name) {
                return Err(Error::Config(format!("model.loss_weights.{name}: no head of that name")));
            }
        }
        let kinds: Vec<std::mem::Discriminant<HeadConfig>> = named.iter().map(|(_, h)| std::mem::discriminant(h)).collect();
        if (1..kinds.len()).any(|i| kinds[..i].contains(&kinds[i])) {
            return Err(Error::Config("model.heads: two heads of one kind would read the same targets".to_string()));
        }
        let (mut fusion, mut retrieval, mut ctc) = (None, None, None);
        let mut heads = Vec::new();
        if let Some((_, HeadConfig::Ctc { modality, hidden, dropout })) = named.iter().find(|(_, h)| matches!(h, HeadConfig::Ctc { .. })) {
            if named.len() > 1 || config.fusion.is_some() {
                return Err(Error::Config("model: a ctc head stands alone, on one modality's sequence, without a fusion".to_string()));
            }
            let alphabet = data.alphabet.as_ref().ok_or_else(|| Error::Config("model.head: a ctc head needs transcripts ([data.transcript])".to_string()))?;
            let encoder = encoders
                .iter()
                .position(|(n, _)| n == modality)
                .ok_or_else(|| Error::Config(format!("model.head.modality: no encoder for {modality:?}")))?;
            if encoders.len() > 1 {
                return Err(Error::Config(format!("model.encoders: a ctc head reads {modality:?} alone; remove the other encoders")));
            }
            if !(0.0..1.0).contains(dropout) || hidden.iter().any(|h| *h <= 0) {
                return Err(Error::Config(format!("model.head: hidden {hidden:?} must be positive and dropout {dropout} in [0, 1)")));
            }
            let mut layers = Vec::new();
            let mut input = dims[encoder].1;
            for (i, &h) in hidden.iter().chain(std::iter::once(&(alphabet.len() as i64))).enumerate() {
                layers.push(nn::linear(path / "head" / i, input, h, Default::default()));
                input = h;
            }
            ctc = Some(CtcHead { encoder, layers, dropout: *dropout });
            heads.push(Head { name: named[0].0.clone(), config: named[0].1.clone(), layers: Vec::new(), class_weights: None, weight: 1.0 });
        } else if let Some((_, HeadConfig::Retrieval { pair, dim, .. })) = named.iter().find(|(_, h)| matches!(h, HeadConfig::Retrieval { .. })) {
            if named.len() > 1 {
                return Err(Error::Config("model.heads: a retrieval head stands alone".to_string()));
            }
            if *dim <= 0 || pair[0] == pair[1] {
                return Err(Error::Config(format!("model.head: a positive dim ({dim}) and two different modalities ({pair:?})")));
            }
            let index = |name: &str| {
                encoders.iter().position(|(n, _)| n == name).ok_or_else(|| Error::Config(format!("model.head.pair: no encoder for {name:?}")))
            };
            let (a, b) = (index(&pair[0])?, index(&pair[1])?);
            let h = path / "head";
            retrieval = Some(RetrievalHead {
                a,
                b,
                proj_a: nn::linear(&h / "a", dims[a].1, *dim, Default::default()),
                proj_b: nn::linear(&h / "b", dims[b].1, *dim, Default::default()),
                temperature: crate::loss::Temperature::new(&h),
            });
            heads.push(Head { name: named[0].0.clone(), config: named[0].1.clone(), layers: Vec::new(), class_weights: None, weight: 1.0 });
        } else {
            let fconfig = config.fusion.as_ref().ok_or_else(|| Error::Config("model.fusion: this head needs a fusion".to_string()))?;
            let f = FusionModel::new(&(path / "fusion"), fconfig, &dims).map_err(|e| Error::Config(format!("model.fusion: {e}")))?;
            let late = matches!(fconfig, FusionConfig::Late { .. });
            for (name, head) in &named {
                let field = if named.len() == 1 { "model.head".to_string() } else { format!("model.heads.{name}") };
                let outputs = match head {
                    HeadConfig::Regression { .. } => 1,
                    _ if classes == 0 => return Err(Error::Config(format!("{field}: a classification head needs classes in the data"))),
                    _ => classes as i64,
                };
                let (hidden, dropout) = head.mlp();
                if !(0.0..1.0).contains(&dropout) || hidden.iter().any(|h| *h <= 0) {
                    return Err(Error::Config(format!("{field}: hidden {hidden:?} must be positive and dropout {dropout} in [0, 1)")));
                }
                let mut layers = Vec::new();
                if late {
                    if named.len() > 1 || f.output_dim() != outputs || !hidden.is_empty() {
                        return Err(Error::Config(format!(
                            "model: late fusion gives {} logits itself; it needs one head, with {outputs} classes and no hidden layers",
                            f.output_dim()
                        )));
                    }
                } else {
                    let hp = if named.len() == 1 { path / "head" } else { path / "heads" / name.as_str() };
                    let mut input = f.output_dim();
                    for (i, &h) in hidden.iter().chain(std::iter::once(&outputs)).enumerate() {
                        layers.push(nn::linear(&hp / i, input, h, Default::default()));
                        input = h;
                    }
                }
                let class_weights = match head {
                    HeadConfig::Classification { class_weights: ClassWeights::List(w), .. } => {
                        if w.len() != classes || w.iter().any(|x| !x.is_finite() || *x < 0.0) {
                            return Err(Error::Config(format!("{field}.class_weights: {} non-negative weights for {classes} classes", w.len())));
                        }
                        Some(Tensor::from_slice(&w.iter().map(|x| *x as f32).collect::<Vec<_>>()).to_device(path.device()))
                    }
                    HeadConfig::Classification { class_weights: ClassWeights::Named(n), .. } if n == "balanced" => {
                        if data.class_counts.len() != classes {
                            return Err(Error::Config(format!("{field}.class_weights = \"balanced\" needs the training split's class counts")));
                        }
                        Some(crate::loss::balanced_class_weights(&data.class_counts).to_device(path.device()))
                    }
                    HeadConfig::Classification { class_weights: ClassWeights::Named(n), .. } => {
                        return Err(Error::Config(format!("{field}.class_weights = {n:?}: \"balanced\" or a list")))
                    }
                    _ => None,
                };
                let weight = config.loss_weights.get(name).copied().unwrap_or(1.0);
                if !weight.is_finite() || weight < 0.0 {
                    return Err(Error::Config(format!("model.loss_weights.{name} = {weight}: finite and non-negative")));
                }
                heads.push(Head { name: name.clone(), config: head.clone(), layers, class_weights, weight });
            }
            fusion = Some(f);
        }
        Ok(Model { encoders, fusion, retrieval, ctc, heads, classes, alphabet: data.alphabet.clone(), config: config.clone() })
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
        self.ctc.as_ref().map(|c| self.encoders[c.encoder].1.time_stride())
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
            Err(caught) => Err(Error::Config(format!("the model does not fit the data (samples {:?}...): {caught}", batch.ids.iter().take(3).collect::<Vec<_>>()))),
        }
    }

    /// The first head's configuration.
    pub fn head(&self) -> &HeadConfig {
        &self.heads[0].config
    }

    /// Runs the model on a batch (on the model's device).
    pub fn forward_t(&self, batch: &Batch, train: bool) -> Output {
        let mut pooled = Vec::new();
        let mut seqs = Vec::new();
        let mut present = Vec::new();
        for (name, enc) in &self.encoders {
            let input = Input::from_batch(batch, name).unwrap_or_else(|| panic!("the batch has no {name} (checked when the model was built)"));
            let out = {
                let _part = Part::enter(format!("{name} encoder"));
                enc.forward_t(&input, train)
            };
            pooled.push(out.pooled);
            seqs.push(out.seq);
            let column = batch.modalities.iter().position(|m| m == name).expect("modality in the batch");
            present.push(batch.present.select(1, column as i64).gt(0.5));
        }
        if let Some(r) = &self.retrieval {
            let _part = Part::enter("retrieval projections");
            let normalise = |x: Tensor| &x / x.norm_scalaropt_dim(2, [1].as_slice(), true).clamp_min(1e-12);
            let a = normalise(pooled[r.a].apply(&r.proj_a));
            let b = normalise(pooled[r.b].apply(&r.proj_b));
            let both = present[r.a].logical_and(&present[r.b]);
            let sim = a.matmul(&b.tr());
            return Output { prediction: sim.shallow_clone(), predictions: vec![sim], weights: None, embeddings: Some((a, b, both)), sequence: None };
        }
        if let Some(c) = &self.ctc {
            let _part = Part::enter("ctc head");
            let (steps, mask) = seqs[c.encoder].take().expect("a ctc head reads an encoder with a sequence output");
            let last = c.layers.len() - 1;
            let mut x = steps;
            for (i, l) in c.layers.iter().enumerate() {
                x = x.dropout(c.dropout, train).apply(l);
                if i < last {
                    x = x.relu();
                }
            }
            let log_probs = x.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
            let lengths = mask.to_kind(Kind::Int64).sum_dim_intlist([1].as_slice(), false, Kind::Int64);
            return Output { prediction: log_probs.shallow_clone(), predictions: vec![log_probs.shallow_clone()], weights: None, embeddings: None, sequence: Some((log_probs, lengths)) };
        }
        let embeddings = Embeddings { pooled, seqs, present: Tensor::stack(&present, 1) };
        let fusion = self.fusion.as_ref().expect("a fusion for every head but retrieval");
        let fused = {
            let _part = Part::enter("fusion");
            fusion.forward_t(&embeddings, train)
        };
        let predictions: Vec<Tensor> = self
            .heads
            .iter()
            .map(|head| {
                let _part = Part::enter(format!("{} head", head.name));
                let (_, dropout) = head.config.mlp();
                let mut x = fused.fused.shallow_clone();
                let last = head.layers.len().saturating_sub(1);
                for (i, l) in head.layers.iter().enumerate() {
                    x = x.dropout(dropout, train).apply(l);
                    if i < last {
                        x = x.relu();
                    }
                }
                match head.config {
                    HeadConfig::Regression { .. } => x.squeeze_dim(1),
                    _ => x,
                }
            })
            .collect();
        Output { prediction: predictions[0].shallow_clone(), predictions, weights: fused.weights, embeddings: None, sequence: None }
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

    /// Each head's own loss (unweighted), by name.
    pub fn head_losses(&self, output: &Output, batch: &Batch) -> Result<Vec<(String, Tensor)>> {
        self.heads
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let _part = Part::enter(format!("{} head's loss", h.name));
                Ok((h.name.clone(), self.head_loss(h, &output.predictions[i], output, batch)?))
            })
            .collect()
    }

    fn head_loss(&self, head: &Head, prediction: &Tensor, output: &Output, batch: &Batch) -> Result<Tensor> {
        // Losses are computed in f32 even when the forward pass ran under bf16 autocast (a
        // no-op in f32).
        let prediction = &prediction.to_kind(Kind::Float);
        let missing = |what: &str| Error::Config(format!("the batch has no {what} for the head {:?}", head.name));
        match &head.config {
            HeadConfig::Classification { label_smoothing, .. } => {
                let labels = batch.label.as_ref().ok_or_else(|| missing("labels"))?;
                let options = CrossEntropy {
                    class_weights: head.class_weights.as_ref().map(Tensor::shallow_clone),
                    label_smoothing: *label_smoothing,
                };
                Ok(cross_entropy(prediction, labels, &options))
            }
            HeadConfig::MultiLabel { .. } => {
                let labels = batch.labels.as_ref().ok_or_else(|| missing("multi-labels"))?;
                Ok(binary_cross_entropy(prediction, labels, None))
            }
            HeadConfig::Retrieval { positives, .. } => {
                let r = self.retrieval.as_ref().expect("a retrieval head");
                let (a, b, both) = output.embeddings.as_ref().expect("retrieval embeddings");
                let (a, b) = (&a.to_kind(Kind::Float), &b.to_kind(Kind::Float));
                let rows = both.nonzero().squeeze_dim(1);
                if rows.size()[0] < 2 {
                    return Ok(a.sum(Kind::Float) * 0.0);
                }
                let (a, b, scale) = (&a.index_select(0, &rows), &b.index_select(0, &rows), &r.temperature.scale());
                match (positives, batch.label.as_ref()) {
                    (Positives::Label, Some(labels)) => Ok(crate::loss::info_nce_by_label(a, b, scale, &labels.index_select(0, &rows))),
                    (Positives::Label, None) => Err(missing("labels (model.head.positives = \"label\")")),
                    (Positives::Pair, _) => Ok(crate::loss::info_nce(a, b, scale)),
                }
            }
            HeadConfig::Ctc { .. } => {
                let (targets, target_lengths) = batch.transcript.as_ref().ok_or_else(|| missing("transcripts"))?;
                let (log_probs, lengths) = output.sequence.as_ref().expect("ctc output");
                // Steps × batch × classes, as libtorch's CTC takes them. A sample whose steps
                // cannot hold its transcript counts 0 (evaluation reports how many there were).
                Ok(Tensor::ctc_loss_tensor(
                    &log_probs.transpose(0, 1),
                    targets,
                    lengths,
                    target_lengths,
                    mm_data::transcript::Alphabet::BLANK as i64,
                    tch::Reduction::Mean,
                    true,
                ))
            }
            HeadConfig::Regression { loss, .. } => {
                let (target, mask) = batch.target.as_ref().ok_or_else(|| missing("targets"))?;
                let mask = mask.gt(0.5);
                Ok(match loss {
                    RegressionLoss::Mse => mse(prediction, target, Some(&mask)),
                    RegressionLoss::L1 => l1(prediction, target, Some(&mask)),
                })
            }
        }
    }

    /// The encoders' backbone parameters (the pretrained parts), for their own parameter group.
    pub fn backbone_parameters(&self) -> Vec<Tensor> {
        self.encoders.iter().flat_map(|(_, e)| e.backbone_parameters()).collect()
    }

    /// Freezes or unfreezes every encoder's backbone; a backbone its configuration freezes
    /// (`freeze = true`) stays frozen.
    pub fn set_backbones_trainable(&self, trainable: bool) {
        for (name, e) in &self.encoders {
            let frozen = self.config.encoders.get(name).is_some_and(EncoderConfig::frozen);
            e.set_backbone_trainable(trainable && !frozen);
        }
    }

    /// Freezes or unfreezes the backbones of the encoders that start from pretrained numbers
    /// ([`EncoderConfig::pretrained`]); those configured `freeze = true` stay frozen, and the
    /// others are left alone.
    pub fn set_pretrained_trainable(&self, trainable: bool) {
        for (name, e) in &self.encoders {
            if let Some(config) = self.config.encoders.get(name).filter(|c| c.pretrained()) {
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
            let loaded = config
                .load_weights(vs, &format!("encoders.{name}."))
                .map_err(|e| Error::Config(format!("model.encoders.{name}: pretrained weights: {e}")))?;
            if let Some(report) = loaded {
                reports.push((name.clone(), report));
            }
        }
        Ok(reports)
    }

    /// Head `i`'s probabilities `[B, C]` (softmax, or sigmoid for multi-label); regression
    /// predictions and retrieval similarities as they are.
    pub fn probabilities(&self, output: &Output, i: usize) -> Tensor {
        let p = &output.predictions[i];
        match self.heads[i].config {
            HeadConfig::MultiLabel { .. } => p.sigmoid(),
            HeadConfig::Regression { .. } | HeadConfig::Retrieval { .. } => p.shallow_clone(),
            HeadConfig::Ctc { .. } => p.exp(),
            HeadConfig::Classification { .. } => p.softmax(1, Kind::Float),
        }
    }
}
