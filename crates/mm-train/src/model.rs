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

use std::collections::BTreeMap;
use std::sync::Arc;

use mm_data::loader::Batch;
use mm_data::pipeline::{Pipeline, TextEncoder as PipelineText};
use mm_data::text::Vocab;
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
        #[serde(default)]
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
            HeadConfig::Classification { hidden, dropout, .. } | HeadConfig::MultiLabel { hidden, dropout } | HeadConfig::Regression { hidden, dropout, .. } => {
                (hidden, *dropout)
            }
            HeadConfig::Retrieval { .. } => (&[], 0.0),
        }
    }
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
    /// The head.
    pub head: HeadConfig,
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
    /// Class counts in the training split, for balanced class weights.
    pub class_counts: Vec<usize>,
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
            class_counts,
        }
    }
}

/// A model's output for a batch.
#[derive(Debug)]
pub struct Output {
    /// Logits `[B, C]` (classification), or predictions `[B]` (regression).
    pub prediction: Tensor,
    /// Per-sample modality weights or gates of the fusion, where it has them.
    pub weights: Option<Tensor>,
    /// Retrieval: the two modalities' L2-normalised embeddings `[B, D]` and `[B]` booleans,
    /// true where a sample has both.
    pub embeddings: Option<(Tensor, Tensor, Tensor)>,
}

#[derive(Debug)]
struct RetrievalHead {
    a: usize,
    b: usize,
    proj_a: nn::Linear,
    proj_b: nn::Linear,
    temperature: crate::loss::Temperature,
}

/// An encoder per modality, a fusion and a head.
#[derive(Debug)]
pub struct Model {
    encoders: Vec<(String, Box<dyn Encoder>)>,
    fusion: Option<FusionModel>,
    retrieval: Option<RetrievalHead>,
    head: Vec<nn::Linear>,
    head_config: HeadConfig,
    class_weights: Option<Tensor>,
    classes: usize,
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
            let ctx = BuildContext { input_dim, vocab: data.vocab.as_deref(), vocab_size: data.vocab_size, seed: 0 };
            let e = build(&(path / "encoders" / name), enc, &ctx).map_err(|e| Error::Config(format!("model.encoders.{name}: {e}")))?;
            encoders.push((name.clone(), e));
        }
        let dims: Vec<(&str, i64)> = encoders.iter().map(|(n, e)| (n.as_str(), e.output_dim())).collect();
        let classes = data.classes.len();
        let mut head = Vec::new();
        let (mut fusion, mut retrieval) = (None, None);
        if let HeadConfig::Retrieval { pair, dim } = &config.head {
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
        } else {
            let fconfig = config.fusion.as_ref().ok_or_else(|| Error::Config("model.fusion: this head needs a fusion".to_string()))?;
            let f = FusionModel::new(&(path / "fusion"), fconfig, &dims).map_err(|e| Error::Config(format!("model.fusion: {e}")))?;
            let outputs = match &config.head {
                HeadConfig::Regression { .. } => 1,
                _ if classes == 0 => return Err(Error::Config("model.head: a classification head needs classes in the data".to_string())),
                _ => classes as i64,
            };
            let (hidden, dropout) = config.head.mlp();
            if !(0.0..1.0).contains(&dropout) || hidden.iter().any(|h| *h <= 0) {
                return Err(Error::Config(format!("model.head: hidden {hidden:?} must be positive and dropout {dropout} in [0, 1)")));
            }
            if matches!(fconfig, FusionConfig::Late { .. }) {
                if f.output_dim() != outputs || !hidden.is_empty() {
                    return Err(Error::Config(format!(
                        "model: late fusion gives {} logits itself; the data has {outputs} classes and the head must have no hidden layers",
                        f.output_dim()
                    )));
                }
            } else {
                let mut input = f.output_dim();
                for (i, &h) in hidden.iter().chain(std::iter::once(&outputs)).enumerate() {
                    head.push(nn::linear(path / "head" / i, input, h, Default::default()));
                    input = h;
                }
            }
            fusion = Some(f);
        }
        let class_weights = match &config.head {
            HeadConfig::Classification { class_weights: ClassWeights::List(w), .. } => {
                if w.len() != classes || w.iter().any(|x| !x.is_finite() || *x < 0.0) {
                    return Err(Error::Config(format!("model.head.class_weights: {} non-negative weights for {classes} classes", w.len())));
                }
                Some(Tensor::from_slice(&w.iter().map(|x| *x as f32).collect::<Vec<_>>()))
            }
            HeadConfig::Classification { class_weights: ClassWeights::Named(n), .. } if n == "balanced" => {
                if data.class_counts.len() != classes {
                    return Err(Error::Config("model.head.class_weights = \"balanced\" needs the training split's class counts".to_string()));
                }
                Some(crate::loss::balanced_class_weights(&data.class_counts))
            }
            HeadConfig::Classification { class_weights: ClassWeights::Named(n), .. } => {
                return Err(Error::Config(format!("model.head.class_weights = {n:?}: \"balanced\" or a list")))
            }
            _ => None,
        };
        Ok(Model { encoders, fusion, retrieval, head, head_config: config.head.clone(), class_weights, classes, config: config.clone() })
    }

    /// Number of classes (0 for regression).
    pub fn classes(&self) -> usize {
        match self.head_config {
            HeadConfig::Regression { .. } | HeadConfig::Retrieval { .. } => 0,
            _ => self.classes,
        }
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
        let run = std::panic::AssertUnwindSafe(|| {
            let _no_grad = tch::no_grad_guard();
            self.forward_t(batch, false).prediction.size()
        });
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let outcome = std::panic::catch_unwind(run);
        std::panic::set_hook(hook);
        match outcome {
            Ok(_) => Ok(()),
            Err(e) => {
                let message = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                let first = message.lines().next().unwrap_or("").to_string();
                Err(Error::Config(format!("the model does not fit the data (samples {:?}...): {first}", batch.ids.iter().take(3).collect::<Vec<_>>())))
            }
        }
    }

    /// The head's configuration.
    pub fn head(&self) -> &HeadConfig {
        &self.head_config
    }

    /// Runs the model on a batch (on the model's device).
    pub fn forward_t(&self, batch: &Batch, train: bool) -> Output {
        let mut pooled = Vec::new();
        let mut seqs = Vec::new();
        let mut present = Vec::new();
        for (name, enc) in &self.encoders {
            let input = Input::from_batch(batch, name).unwrap_or_else(|| panic!("the batch has no {name} (checked when the model was built)"));
            let out = enc.forward_t(&input, train);
            pooled.push(out.pooled);
            seqs.push(out.seq);
            let column = batch.modalities.iter().position(|m| m == name).expect("modality in the batch");
            present.push(batch.present.select(1, column as i64).gt(0.5));
        }
        if let Some(r) = &self.retrieval {
            let normalise = |x: Tensor| &x / x.norm_scalaropt_dim(2, [1].as_slice(), true).clamp_min(1e-12);
            let a = normalise(pooled[r.a].apply(&r.proj_a));
            let b = normalise(pooled[r.b].apply(&r.proj_b));
            let both = present[r.a].logical_and(&present[r.b]);
            return Output { prediction: a.matmul(&b.tr()), weights: None, embeddings: Some((a, b, both)) };
        }
        let embeddings = Embeddings { pooled, seqs, present: Tensor::stack(&present, 1) };
        let fusion = self.fusion.as_ref().expect("a fusion for every head but retrieval");
        let fused = fusion.forward_t(&embeddings, train);
        let (_, dropout) = self.head_config.mlp();
        let mut x = fused.fused;
        let last = self.head.len().saturating_sub(1);
        for (i, l) in self.head.iter().enumerate() {
            x = x.dropout(dropout, train).apply(l);
            if i < last {
                x = x.relu();
            }
        }
        let prediction = match self.head_config {
            HeadConfig::Regression { .. } => x.squeeze_dim(1),
            _ => x,
        };
        Output { prediction, weights: fused.weights, embeddings: None }
    }

    /// The loss of `output` against the batch's targets.
    pub fn loss(&self, output: &Output, batch: &Batch) -> Result<Tensor> {
        let missing = |what: &str| Error::Config(format!("the batch has no {what} for this model's head"));
        match &self.head_config {
            HeadConfig::Classification { label_smoothing, .. } => {
                let labels = batch.label.as_ref().ok_or_else(|| missing("labels"))?;
                let options = CrossEntropy {
                    class_weights: self.class_weights.as_ref().map(|w| w.to_device(output.prediction.device())),
                    label_smoothing: *label_smoothing,
                };
                Ok(cross_entropy(&output.prediction, labels, &options))
            }
            HeadConfig::MultiLabel { .. } => {
                let labels = batch.labels.as_ref().ok_or_else(|| missing("multi-labels"))?;
                Ok(binary_cross_entropy(&output.prediction, labels, None))
            }
            HeadConfig::Retrieval { .. } => {
                let r = self.retrieval.as_ref().expect("a retrieval head");
                let (a, b, both) = output.embeddings.as_ref().expect("retrieval embeddings");
                let rows = both.nonzero().squeeze_dim(1);
                if rows.size()[0] < 2 {
                    return Ok(a.sum(Kind::Float) * 0.0);
                }
                Ok(crate::loss::info_nce(&a.index_select(0, &rows), &b.index_select(0, &rows), &r.temperature.scale()))
            }
            HeadConfig::Regression { loss, .. } => {
                let (target, mask) = batch.target.as_ref().ok_or_else(|| missing("targets"))?;
                let mask = mask.gt(0.5);
                Ok(match loss {
                    RegressionLoss::Mse => mse(&output.prediction, target, Some(&mask)),
                    RegressionLoss::L1 => l1(&output.prediction, target, Some(&mask)),
                })
            }
        }
    }

    /// The encoders' backbone parameters (the pretrained parts), for their own parameter group.
    pub fn backbone_parameters(&self) -> Vec<Tensor> {
        self.encoders.iter().flat_map(|(_, e)| e.backbone_parameters()).collect()
    }

    /// Freezes or unfreezes every encoder's backbone.
    pub fn set_backbones_trainable(&self, trainable: bool) {
        for (_, e) in &self.encoders {
            e.set_backbone_trainable(trainable);
        }
    }

    /// The predicted probabilities `[B, C]` (softmax, or sigmoid for multi-label) of logits.
    pub fn probabilities(&self, output: &Output) -> Tensor {
        match self.head_config {
            HeadConfig::MultiLabel { .. } => output.prediction.sigmoid(),
            HeadConfig::Regression { .. } | HeadConfig::Retrieval { .. } => output.prediction.shallow_clone(),
            HeadConfig::Classification { .. } => output.prediction.softmax(1, Kind::Float),
        }
    }
}
