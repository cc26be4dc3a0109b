//! BERT (Devlin et al. 2019) as a text encoder, with Hugging Face's parameter names and
//! configuration file, so that `bert-base-uncased` (or any BERT checkpoint published as
//! `config.json` plus `model.safetensors`) loads as it is and gives what transformers'
//! `BertModel` gives.
//!
//! - [`BertConfig`] reads a model's `config.json` (the keys transformers writes; others are
//!   ignored, unsupported values refused by name);
//! - [`Bert`] is the network: embeddings (word, position, token type, LayerNorm), the encoder
//!   layers (`encoder.layer.{i}.attention.self.{query,key,value}`, `attention.output`,
//!   `intermediate`, `output`) and the pooler, attention through libtorch's fused
//!   `scaled_dot_product_attention` with a key-padding mask;
//! - [`BertEncoder`] is the [`Encoder`]: token ids with lengths (from a `tokenizer.json`
//!   through mm-data's subword tokenizer) to the `[CLS]` vector, the pooler's output or the mean
//!   of the valid tokens, with every token's vector as the sequence;
//! - [`hf_name`] maps the names of a file saved by transformers (`bert.` prefix of the
//!   pre-training model, TensorFlow-era `LayerNorm.gamma`/`beta`) to ours and skips what the
//!   encoder has no use for (the pre-training heads `cls.*`, the `position_ids` buffer).
//!
//! ```
//! use mm_encoders::bert::{BertConfig, BertEncoder, BertPooling};
//! use mm_encoders::{Encoder, Input};
//! use tch::{nn, Device, Tensor};
//!
//! let config: BertConfig = serde_json::from_str(r#"{"vocab_size": 100, "hidden_size": 32,
//!     "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
//!     "max_position_embeddings": 64}"#)?;
//! let vs = nn::VarStore::new(Device::Cpu);
//! let bert = BertEncoder::new(&(vs.root() / "text"), &config, BertPooling::Cls)?;
//! assert!(vs.variables().contains_key("text.encoder.layer.1.attention.self.query.weight"));
//! // [CLS] a dog [SEP] and [CLS] hi [SEP] [PAD]: ids padded with 0, lengths 4 and 3.
//! let ids = Tensor::from_slice(&[2i64, 9, 81, 3, 2, 40, 3, 0]).view([2, 4]);
//! let out = bert.forward_t(&Input::sequence(ids, Tensor::from_slice(&[4i64, 3])), false);
//! assert_eq!(out.pooled.size(), [2, 32]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use mm_seq::lengths_to_mask;

use crate::weights::Mapped;
use crate::{Backbone, Encoded, Encoder, Error, Input, Result};

/// A BERT model's `config.json`, as transformers writes it. Keys not listed are ignored (the
/// file is transformers', not ours).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Token ids.
    pub vocab_size: i64,
    /// Model width.
    #[serde(default = "d768")]
    pub hidden_size: i64,
    /// Encoder layers.
    #[serde(default = "d12")]
    pub num_hidden_layers: i64,
    /// Attention heads per layer.
    #[serde(default = "d12")]
    pub num_attention_heads: i64,
    /// Width of the feed-forward block.
    #[serde(default = "d3072")]
    pub intermediate_size: i64,
    /// `gelu` (exact), `gelu_new` / `gelu_pytorch_tanh` (tanh approximation) or `relu`.
    #[serde(default = "gelu")]
    pub hidden_act: String,
    /// Dropout after the embeddings and each sub-layer, when training.
    #[serde(default = "tenth")]
    pub hidden_dropout_prob: f64,
    /// Dropout on the attention probabilities, when training.
    #[serde(default = "tenth")]
    pub attention_probs_dropout_prob: f64,
    /// Longest sequence, special tokens included.
    #[serde(default = "d512")]
    pub max_position_embeddings: i64,
    /// Segment ids (2 for BERT's sentence pairs).
    #[serde(default = "d2")]
    pub type_vocab_size: i64,
    /// LayerNorm epsilon.
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    /// Only `absolute` positions are supported.
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
}

fn d768() -> i64 {
    768
}
fn d12() -> i64 {
    12
}
fn d3072() -> i64 {
    3072
}
fn d512() -> i64 {
    512
}
fn d2() -> i64 {
    2
}
fn gelu() -> String {
    "gelu".into()
}
fn absolute() -> String {
    "absolute".into()
}
fn tenth() -> f64 {
    0.1
}
fn eps() -> f64 {
    1e-12
}

impl BertConfig {
    /// Reads a `config.json`; the error names the file and what is wrong.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: BertConfig = crate::weights::read_model_config(path, "a BERT")?;
        config.check().map_err(|m| Error::Config(format!("{}: {m}", path.display())))?;
        Ok(config)
    }

    fn check(&self) -> std::result::Result<(), String> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        if let Some((k, v)) = sizes.iter().find(|(_, v)| *v <= 0) {
            return Err(format!("{k} = {v}: must be positive"));
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if Activation::parse(&self.hidden_act).is_none() {
            return Err(format!(
                "hidden_act = {:?}: supported are gelu, gelu_new, gelu_pytorch_tanh and relu",
                self.hidden_act
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type = {:?}: only \"absolute\" is supported",
                self.position_embedding_type
            ));
        }
        for (k, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            ("attention_probs_dropout_prob", self.attention_probs_dropout_prob),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{k} = {p}: must be in [0, 1)"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    Gelu,
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Some(Activation::GeluTanh),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }

    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Relu => x.relu(),
        }
    }
}

#[derive(Debug)]
struct Layer {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    attn_out: nn::Linear,
    attn_norm: nn::LayerNorm,
    intermediate: nn::Linear,
    out: nn::Linear,
    out_norm: nn::LayerNorm,
}

/// The BERT network with transformers' parameter names (`embeddings.*`, `encoder.layer.{i}.*`,
/// `pooler.dense`).
#[derive(Debug)]
pub struct Bert {
    word: nn::Embedding,
    position: nn::Embedding,
    token_type: nn::Embedding,
    emb_norm: nn::LayerNorm,
    layers: Vec<Layer>,
    pooler: nn::Linear,
    config: BertConfig,
    act: Activation,
}

/// What [`Bert::forward_t`] returns.
#[derive(Debug)]
pub struct BertOutput {
    /// `[B, L, hidden]`: every token's vector after the last layer (transformers'
    /// `last_hidden_state`).
    pub hidden: Tensor,
    /// `[B, hidden]`: tanh of the pooler's linear map of the first token (`pooler_output`).
    pub pooled: Tensor,
}

impl Bert {
    /// The network `config` describes, under `path`, initialised as transformers does (normal
    /// with standard deviation 0.02, LayerNorm at identity).
    pub fn new(path: &nn::Path, config: &BertConfig) -> Result<Self> {
        config.check().map_err(Error::Config)?;
        let d = config.hidden_size;
        let init = nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        let linear = |p: nn::Path, i: i64, o: i64| {
            nn::linear(
                p,
                i,
                o,
                nn::LinearConfig { ws_init: init, bs_init: Some(nn::Init::Const(0.0)), bias: true },
            )
        };
        let embedding = |p: nn::Path, n: i64| {
            nn::embedding(p, n, d, nn::EmbeddingConfig { ws_init: init, ..Default::default() })
        };
        let norm = |p: nn::Path| {
            nn::layer_norm(
                p,
                vec![d],
                nn::LayerNormConfig { eps: config.layer_norm_eps, ..Default::default() },
            )
        };
        let emb = path / "embeddings";
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = path / "encoder" / "layer" / i;
                let attention = &p / "attention";
                Layer {
                    query: linear(&attention / "self" / "query", d, d),
                    key: linear(&attention / "self" / "key", d, d),
                    value: linear(&attention / "self" / "value", d, d),
                    attn_out: linear(&attention / "output" / "dense", d, d),
                    attn_norm: norm(&attention / "output" / "LayerNorm"),
                    intermediate: linear(
                        &p / "intermediate" / "dense",
                        d,
                        config.intermediate_size,
                    ),
                    out: linear(&p / "output" / "dense", config.intermediate_size, d),
                    out_norm: norm(&p / "output" / "LayerNorm"),
                }
            })
            .collect();
        Ok(Bert {
            word: embedding(&emb / "word_embeddings", config.vocab_size),
            position: embedding(&emb / "position_embeddings", config.max_position_embeddings),
            token_type: embedding(&emb / "token_type_embeddings", config.type_vocab_size),
            emb_norm: norm(&emb / "LayerNorm"),
            layers,
            pooler: linear(path / "pooler" / "dense", d, d),
            act: Activation::parse(&config.hidden_act).unwrap_or(Activation::Gelu),
            config: config.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Every parameter (shallow copies).
    pub fn parameters(&self) -> Vec<Tensor> {
        let linear = |l: &nn::Linear| {
            std::iter::once(l.ws.shallow_clone()).chain(l.bs.as_ref().map(Tensor::shallow_clone))
        };
        let norm = |n: &nn::LayerNorm| {
            n.ws.iter().chain(n.bs.iter()).map(Tensor::shallow_clone).collect::<Vec<_>>()
        };
        let mut p: Vec<Tensor> = [&self.word, &self.position, &self.token_type]
            .iter()
            .map(|e| e.ws.shallow_clone())
            .collect();
        p.extend(norm(&self.emb_norm));
        for l in &self.layers {
            for lin in [&l.query, &l.key, &l.value, &l.attn_out, &l.intermediate, &l.out] {
                p.extend(linear(lin));
            }
            p.extend(norm(&l.attn_norm));
            p.extend(norm(&l.out_norm));
        }
        p.extend(linear(&self.pooler));
        p
    }

    /// `ids` `[B, L]` (at most `max_position_embeddings` long) with a `[B, L]` boolean
    /// `mask` of the valid tokens and optional segment ids (zeros when `None`).
    ///
    /// Panics when `L` exceeds `max_position_embeddings` or an id is out of the vocabulary (a
    /// programmer's error: [`BertEncoder`] is sized from the tokenizer and the data's maximum
    /// length, which mm-train checks before training).
    pub fn forward_t(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        token_types: Option<&Tensor>,
        train: bool,
    ) -> BertOutput {
        let (b, l) = ids.size2().expect("token ids are [B, L]");
        assert!(
            l <= self.config.max_position_embeddings,
            "{l} tokens, but BERT has {} positions",
            self.config.max_position_embeddings
        );
        let device = ids.device();
        let ids = ids.to_kind(Kind::Int64);
        let positions = Tensor::arange(l, (Kind::Int64, device)).unsqueeze(0);
        let types = token_types.map_or_else(|| ids.zeros_like(), |t| t.to_kind(Kind::Int64));
        let x =
            ids.apply(&self.word) + positions.apply(&self.position) + types.apply(&self.token_type);
        let mut x = x.apply(&self.emb_norm).dropout(self.config.hidden_dropout_prob, train);
        // A sample with no valid token (its text absent) attends to its first position, so that
        // no row of the attention is empty (which would be NaN); its output is unused.
        let mask = mask.to_device(device).to_kind(Kind::Bool);
        let empty = mask.any_dim(1, true).logical_not();
        let first = Tensor::arange(l, (Kind::Int64, device)).eq(0).unsqueeze(0);
        let key_mask = mask.logical_or(&first.logical_and(&empty)).view([b, 1, 1, l]);
        let heads = self.config.num_attention_heads;
        let d = self.config.hidden_size;
        let attn_dropout = if train { self.config.attention_probs_dropout_prob } else { 0.0 };
        for layer in &self.layers {
            let split = |t: Tensor| t.view([b, l, heads, d / heads]).transpose(1, 2);
            let (q, k, v) = (
                split(x.apply(&layer.query)),
                split(x.apply(&layer.key)),
                split(x.apply(&layer.value)),
            );
            let context = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(&key_mask),
                attn_dropout,
                false,
                None,
                false,
            );
            let context = context.transpose(1, 2).reshape([b, l, d]);
            let h = context.apply(&layer.attn_out).dropout(self.config.hidden_dropout_prob, train);
            let a = (h + &x).apply(&layer.attn_norm);
            let h = self
                .act
                .apply(&a.apply(&layer.intermediate))
                .apply(&layer.out)
                .dropout(self.config.hidden_dropout_prob, train);
            x = (h + a).apply(&layer.out_norm);
        }
        let pooled = x.select(1, 0).apply(&self.pooler).tanh();
        BertOutput { hidden: x, pooled }
    }
}

/// How a [`BertEncoder`] turns the tokens' vectors into one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BertPooling {
    /// The `[CLS]` token's vector after the last layer.
    #[default]
    Cls,
    /// The pooler's output (tanh of a linear map of `[CLS]`, trained on next-sentence
    /// prediction).
    Pooler,
    /// The mean over the valid tokens (special tokens included).
    Mean,
}

/// Configuration of a [`BertEncoder`] in a model (`kind = "bert"` in TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BertEncoderConfig {
    /// A folder with the model's `config.json` and `model.safetensors` (what
    /// `cargo xtask fetch-data bert-base-uncased` writes to `data/bert-base-uncased`); the data's
    /// `[data.text] tokenizer` is its `tokenizer.json`.
    pub model: std::path::PathBuf,
    /// How the tokens' vectors become one (default `cls`).
    #[serde(default)]
    pub pooling: BertPooling,
    /// Keep the whole network fixed.
    #[serde(default)]
    pub freeze: bool,
    /// Project the output to this size.
    #[serde(default)]
    pub project: Option<i64>,
}

/// A BERT text encoder: token ids with lengths to `[B, hidden]`, and every token's vector with
/// its mask as the sequence. The whole network is the backbone; frozen, it runs as in
/// evaluation (no dropout), a fixed feature extractor.
#[derive(Debug)]
pub struct BertEncoder {
    bert: Bert,
    pooling: BertPooling,
    backbone: Backbone,
}

impl BertEncoder {
    /// A BERT of `config` under `path` (randomly initialised until weights are loaded).
    pub fn new(path: &nn::Path, config: &BertConfig, pooling: BertPooling) -> Result<Self> {
        let bert = Bert::new(path, config)?;
        let backbone = Backbone::new(bert.parameters());
        Ok(BertEncoder { bert, pooling, backbone })
    }

    /// The network.
    pub fn bert(&self) -> &Bert {
        &self.bert
    }
}

impl Encoder for BertEncoder {
    fn output_dim(&self) -> i64 {
        self.bert.config.hidden_size
    }

    fn forward_t(&self, input: &Input, train: bool) -> Encoded {
        let ids = &input.values;
        let steps = ids.size()[1];
        let mask = lengths_to_mask(&input.lengths_or_full().to_device(ids.device()), steps);
        // A frozen BERT is a fixed feature extractor: no dropout, as in evaluation.
        let out = self.bert.forward_t(ids, &mask, None, train && !self.backbone.frozen());
        let valid = mask.unsqueeze(-1).to_kind(out.hidden.kind());
        let pooled = match self.pooling {
            BertPooling::Cls => out.hidden.select(1, 0),
            BertPooling::Pooler => out.pooled,
            BertPooling::Mean => {
                (&out.hidden * &valid).sum_dim_intlist(1, false, None)
                    / valid.sum_dim_intlist(1, false, None).clamp_min(1.0)
            }
        };
        Encoded { pooled, seq: Some((out.hidden * valid, mask)) }
    }

    fn set_backbone_trainable(&self, trainable: bool) {
        self.backbone.set_trainable(trainable);
    }

    fn backbone_parameters(&self) -> Vec<Tensor> {
        self.backbone.parameters()
    }
}

/// Maps a tensor name of a BERT file saved by transformers to [`Bert`]'s: drops the `bert.`
/// prefix of `BertForPreTraining` and similar models, renames TensorFlow-era
/// `LayerNorm.gamma`/`beta` to `weight`/`bias`, and skips the pre-training heads (`cls.*`) and
/// the `position_ids` buffer older files carry.
pub fn hf_name(name: &str) -> Mapped {
    let name = name.strip_prefix("bert.").unwrap_or(name);
    if name.starts_with("cls.") {
        return Mapped::Skip("pre-training-head tensors (the encoder does not use them)");
    }
    if name.ends_with("position_ids") {
        return Mapped::Skip("position-index buffers (recomputed)");
    }
    let name = if let Some(stem) = name.strip_suffix("LayerNorm.gamma") {
        format!("{stem}LayerNorm.weight")
    } else if let Some(stem) = name.strip_suffix("LayerNorm.beta") {
        format!("{stem}LayerNorm.bias")
    } else {
        name.to_string()
    };
    Mapped::To(name)
}
