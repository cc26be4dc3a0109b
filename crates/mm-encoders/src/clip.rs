//! CLIP (Radford et al. 2021) with Hugging Face's parameter names and configuration file, so
//! that `openai/clip-vit-base-patch32` or `-patch16` (any `CLIPModel` published as
//! `config.json` plus `model.safetensors`) loads as it is and gives what transformers'
//! `CLIPModel` gives.
//!
//! - [`ClipConfig`] reads a model's `config.json` (its `text_config` and `vision_config`; keys
//!   not listed are ignored, unsupported values refused by name);
//! - [`ClipVision`] is the vision tower, a ViT: patch embedding, class token, positions
//!   (interpolated bicubically for another image size, as transformers'
//!   `interpolate_pos_encoding`), pre-LayerNorm transformer layers, the class token's vector
//!   after `post_layernorm`;
//! - [`ClipText`] is the text tower: causal pre-LayerNorm layers over BPE token ids, the
//!   vector of each sequence's last token (its end-of-text token) after `final_layer_norm`;
//! - [`Clip`] holds both with their projections and the logit scale: image and text
//!   embeddings ([`Clip::image_features`], [`Clip::text_features`]) and the scaled cosine
//!   similarities ([`Clip::logits_per_image`]); [`Clip::load`] reads a model folder;
//! - [`ClipImageEncoder`] and [`ClipTextEncoder`] are the towers as [`Encoder`]s for any run
//!   (`kind = "clip-image"`, `kind = "clip-text"`), frozen or fine-tuned.
//!
//! Attention goes through libtorch's fused `scaled_dot_product_attention`.
//!
//! ```
//! use mm_encoders::clip::{Clip, ClipConfig};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let config: ClipConfig = serde_json::from_str(r#"{"projection_dim": 16,
//!     "text_config": {"vocab_size": 50, "hidden_size": 32, "intermediate_size": 64,
//!         "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 16},
//!     "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
//!         "num_attention_heads": 4, "image_size": 32, "patch_size": 8}}"#)?;
//! let vs = nn::VarStore::new(Device::Cpu);
//! let clip = Clip::new(&vs.root(), &config)?;
//! assert!(vs.variables().contains_key("vision_model.encoder.layers.1.self_attn.q_proj.weight"));
//! let images = clip.image_features(&Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu)));
//! // Two captions of 4 and 3 tokens (start, words, end of text), padded.
//! let ids = Tensor::from_slice(&[48i64, 7, 9, 49, 48, 5, 49, 49]).view([2, 4]);
//! let texts = clip.text_features(&ids, &Tensor::from_slice(&[4i64, 3]));
//! assert_eq!(clip.logits_per_image(&images, &texts).size(), [2, 2]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::weights::{load_safetensors, LoadOptions, LoadReport, Mapped};
use crate::{Backbone, Encoded, Encoder, Error, Input, Result};

/// The text tower's part of a CLIP `config.json` (`text_config`), transformers' defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipTextConfig {
    /// Token ids.
    #[serde(default = "d49408")]
    pub vocab_size: i64,
    /// Width.
    #[serde(default = "d512")]
    pub hidden_size: i64,
    /// Width of the feed-forward block.
    #[serde(default = "d2048")]
    pub intermediate_size: i64,
    /// Layers.
    #[serde(default = "d12")]
    pub num_hidden_layers: i64,
    /// Attention heads per layer.
    #[serde(default = "d8")]
    pub num_attention_heads: i64,
    /// Longest token sequence, start and end tokens included.
    #[serde(default = "d77")]
    pub max_position_embeddings: i64,
    /// `quick_gelu` (OpenAI's), `gelu`, `gelu_new` / `gelu_pytorch_tanh` or `relu`.
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    /// Dropout on the attention probabilities, when training.
    #[serde(default)]
    pub attention_dropout: f64,
}

/// The vision tower's part of a CLIP `config.json` (`vision_config`), transformers' defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipVisionConfig {
    /// Width.
    #[serde(default = "d768")]
    pub hidden_size: i64,
    /// Width of the feed-forward block.
    #[serde(default = "d3072")]
    pub intermediate_size: i64,
    /// Layers.
    #[serde(default = "d12")]
    pub num_hidden_layers: i64,
    /// Attention heads per layer.
    #[serde(default = "d12")]
    pub num_attention_heads: i64,
    /// Input channels.
    #[serde(default = "d3")]
    pub num_channels: i64,
    /// The image side the positions were trained for (other sides are interpolated).
    #[serde(default = "d224")]
    pub image_size: i64,
    /// Side of a patch.
    #[serde(default = "d32")]
    pub patch_size: i64,
    /// As in [`ClipTextConfig::hidden_act`].
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    /// Dropout on the attention probabilities, when training.
    #[serde(default)]
    pub attention_dropout: f64,
}

/// A CLIP model's `config.json`, as transformers writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    /// `clip` when present; any other value is refused (the folder holds another model).
    #[serde(default)]
    pub model_type: Option<String>,
    /// The text tower.
    #[serde(default = "default_text")]
    pub text_config: ClipTextConfig,
    /// The vision tower.
    #[serde(default = "default_vision")]
    pub vision_config: ClipVisionConfig,
    /// Size of the shared embedding.
    #[serde(default = "d512")]
    pub projection_dim: i64,
    /// Initial log of the logit scale (loaded weights replace it).
    #[serde(default = "logit_scale")]
    pub logit_scale_init_value: f64,
}

fn default_text() -> ClipTextConfig {
    serde_json::from_str("{}").expect("defaults")
}
fn default_vision() -> ClipVisionConfig {
    serde_json::from_str("{}").expect("defaults")
}
fn d3() -> i64 {
    3
}
fn d8() -> i64 {
    8
}
fn d12() -> i64 {
    12
}
fn d32() -> i64 {
    32
}
fn d77() -> i64 {
    77
}
fn d224() -> i64 {
    224
}
fn d512() -> i64 {
    512
}
fn d768() -> i64 {
    768
}
fn d2048() -> i64 {
    2048
}
fn d3072() -> i64 {
    3072
}
fn d49408() -> i64 {
    49408
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn eps() -> f64 {
    1e-5
}
fn logit_scale() -> f64 {
    2.6592
}

/// What the checks of a tower's configuration need.
struct Shape<'a> {
    hidden: i64,
    intermediate: i64,
    layers: i64,
    heads: i64,
    act: &'a str,
    dropout: f64,
}

fn check_tower(section: &str, s: &Shape, more: &[(&str, i64)]) -> std::result::Result<(), String> {
    let sizes = [
        ("hidden_size", s.hidden),
        ("intermediate_size", s.intermediate),
        ("num_hidden_layers", s.layers),
        ("num_attention_heads", s.heads),
    ];
    if let Some((k, v)) = sizes.iter().chain(more).find(|(_, v)| *v <= 0) {
        return Err(format!("{section}.{k} = {v}: must be positive"));
    }
    if s.hidden % s.heads != 0 {
        return Err(format!(
            "{section}.hidden_size {} is not a multiple of num_attention_heads {}",
            s.hidden, s.heads
        ));
    }
    if Activation::parse(s.act).is_none() {
        return Err(format!(
            "{section}.hidden_act = {:?}: supported are quick_gelu, gelu, gelu_new, gelu_pytorch_tanh and relu",
            s.act
        ));
    }
    if !(0.0..1.0).contains(&s.dropout) {
        return Err(format!("{section}.attention_dropout = {}: must be in [0, 1)", s.dropout));
    }
    Ok(())
}

/// open_clip's `open_clip_config.json` (its `model_cfg`), the keys that give a CLIP's sizes.
#[derive(Debug, Deserialize)]
struct OpenClipFile {
    model_cfg: OpenClipModel,
}

#[derive(Debug, Deserialize)]
struct OpenClipModel {
    embed_dim: i64,
    #[serde(default)]
    quick_gelu: bool,
    vision_cfg: OpenClipTower,
    text_cfg: OpenClipTower,
}

#[derive(Debug, Deserialize)]
struct OpenClipTower {
    #[serde(default)]
    image_size: Option<i64>,
    #[serde(default)]
    patch_size: Option<i64>,
    #[serde(default)]
    context_length: Option<i64>,
    #[serde(default)]
    vocab_size: Option<i64>,
    #[serde(default = "d12")]
    layers: i64,
    width: i64,
    #[serde(default)]
    heads: Option<i64>,
    #[serde(default = "d64")]
    head_width: i64,
    #[serde(default = "four")]
    mlp_ratio: f64,
    /// Another network in place of the tower (timm's or transformers'): not supported.
    #[serde(default)]
    timm_model_name: Option<String>,
    #[serde(default)]
    hf_model_name: Option<String>,
}

fn d64() -> i64 {
    64
}
fn four() -> f64 {
    4.0
}

impl ClipConfig {
    /// Reads open_clip's `open_clip_config.json` into the same sizes (heads from
    /// `head_width`, the feed-forward width from `mlp_ratio`, `quick_gelu` or exact GELU,
    /// LayerNorm epsilon 1e-5). Towers built from timm or transformers models are refused.
    pub fn from_open_clip_file(path: &Path) -> Result<Self> {
        let file: OpenClipFile = crate::weights::read_model_config(path, "an open_clip")?;
        let m = file.model_cfg;
        let bad = |msg: String| Error::Config(format!("{}: {msg}", path.display()));
        for (tower, t) in [("vision_cfg", &m.vision_cfg), ("text_cfg", &m.text_cfg)] {
            if let Some(other) = t.timm_model_name.as_ref().or(t.hf_model_name.as_ref()) {
                return Err(bad(format!(
                    "model_cfg.{tower} uses {other:?} as its tower: only CLIP's own transformer towers are supported"
                )));
            }
        }
        let act = if m.quick_gelu { "quick_gelu" } else { "gelu" };
        let (v, t) = (&m.vision_cfg, &m.text_cfg);
        let config = ClipConfig {
            model_type: None,
            projection_dim: m.embed_dim,
            logit_scale_init_value: logit_scale(),
            vision_config: ClipVisionConfig {
                hidden_size: v.width,
                intermediate_size: (v.width as f64 * v.mlp_ratio).round() as i64,
                num_hidden_layers: v.layers,
                num_attention_heads: v.heads.unwrap_or(v.width / v.head_width.max(1)),
                num_channels: 3,
                image_size: v.image_size.unwrap_or(224),
                patch_size: v.patch_size.unwrap_or(16),
                hidden_act: act.into(),
                layer_norm_eps: 1e-5,
                attention_dropout: 0.0,
            },
            text_config: ClipTextConfig {
                vocab_size: t.vocab_size.unwrap_or(49408),
                hidden_size: t.width,
                intermediate_size: (t.width as f64 * t.mlp_ratio).round() as i64,
                num_hidden_layers: t.layers,
                num_attention_heads: t.heads.unwrap_or(8),
                max_position_embeddings: t.context_length.unwrap_or(77),
                hidden_act: act.into(),
                layer_norm_eps: 1e-5,
                attention_dropout: 0.0,
            },
        };
        config.check().map_err(bad)?;
        Ok(config)
    }

    /// Reads a `config.json`; the error names the file and what is wrong (another model's
    /// configuration included).
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: ClipConfig = crate::weights::read_model_config(path, "a CLIP")?;
        config.check().map_err(|m| Error::Config(format!("{}: {m}", path.display())))?;
        Ok(config)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if let Some(t) = self.model_type.as_deref().filter(|t| *t != "clip") {
            return Err(format!(
                "model_type = {t:?}: this is not a CLIP model (\"clip\" expected)"
            ));
        }
        let t = &self.text_config;
        check_tower(
            "text_config",
            &Shape {
                hidden: t.hidden_size,
                intermediate: t.intermediate_size,
                layers: t.num_hidden_layers,
                heads: t.num_attention_heads,
                act: &t.hidden_act,
                dropout: t.attention_dropout,
            },
            &[("vocab_size", t.vocab_size), ("max_position_embeddings", t.max_position_embeddings)],
        )?;
        let v = &self.vision_config;
        check_tower(
            "vision_config",
            &Shape {
                hidden: v.hidden_size,
                intermediate: v.intermediate_size,
                layers: v.num_hidden_layers,
                heads: v.num_attention_heads,
                act: &v.hidden_act,
                dropout: v.attention_dropout,
            },
            &[
                ("num_channels", v.num_channels),
                ("image_size", v.image_size),
                ("patch_size", v.patch_size),
            ],
        )?;
        if v.image_size % v.patch_size != 0 {
            return Err(format!(
                "vision_config.image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        if self.projection_dim <= 0 {
            return Err(format!("projection_dim = {}: must be positive", self.projection_dim));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    QuickGelu,
    Gelu,
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Activation::QuickGelu),
            "gelu" => Some(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Some(Activation::GeluTanh),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }

    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::QuickGelu => x * (x * 1.702).sigmoid(),
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Relu => x.relu(),
        }
    }
}

#[derive(Debug)]
struct Layer {
    norm1: nn::LayerNorm,
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    out: nn::Linear,
    norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

/// Parameters of the modules built, gathered for a [`Backbone`].
#[derive(Default)]
struct Params(std::cell::RefCell<Vec<Tensor>>);

impl Params {
    fn linear(&self, p: nn::Path, i: i64, o: i64, bias: bool) -> nn::Linear {
        let init = nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        let bs_init = bias.then_some(nn::Init::Const(0.0));
        let l = nn::linear(p, i, o, nn::LinearConfig { ws_init: init, bs_init, bias });
        self.push(&l.ws);
        if let Some(b) = &l.bs {
            self.push(b);
        }
        l
    }

    fn norm(&self, p: nn::Path, d: i64, eps: f64) -> nn::LayerNorm {
        let n = nn::layer_norm(p, vec![d], nn::LayerNormConfig { eps, ..Default::default() });
        for t in n.ws.iter().chain(n.bs.iter()) {
            self.push(t);
        }
        n
    }

    fn embedding(&self, p: nn::Path, n: i64, d: i64) -> nn::Embedding {
        let init = nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        let e = nn::embedding(p, n, d, nn::EmbeddingConfig { ws_init: init, ..Default::default() });
        self.push(&e.ws);
        e
    }

    fn push(&self, t: &Tensor) {
        self.0.borrow_mut().push(t.shallow_clone());
    }

    fn take(self) -> Vec<Tensor> {
        self.0.into_inner()
    }
}

/// A stack of CLIP's pre-LayerNorm transformer layers (`encoder.layers.{i}`).
#[derive(Debug)]
struct Stack {
    layers: Vec<Layer>,
    heads: i64,
    act: Activation,
    dropout: f64,
}

impl Stack {
    #[allow(clippy::too_many_arguments)]
    fn new(
        path: &nn::Path,
        params: &Params,
        d: i64,
        inner: i64,
        layers: i64,
        heads: i64,
        act: &str,
        eps: f64,
        dropout: f64,
    ) -> Self {
        let layers = (0..layers)
            .map(|i| {
                let p = path / "layers" / i;
                let a = &p / "self_attn";
                Layer {
                    norm1: params.norm(&p / "layer_norm1", d, eps),
                    q: params.linear(&a / "q_proj", d, d, true),
                    k: params.linear(&a / "k_proj", d, d, true),
                    v: params.linear(&a / "v_proj", d, d, true),
                    out: params.linear(&a / "out_proj", d, d, true),
                    norm2: params.norm(&p / "layer_norm2", d, eps),
                    fc1: params.linear(&p / "mlp" / "fc1", d, inner, true),
                    fc2: params.linear(&p / "mlp" / "fc2", inner, d, true),
                }
            })
            .collect();
        Stack {
            layers,
            heads,
            act: Activation::parse(act).unwrap_or(Activation::QuickGelu),
            dropout,
        }
    }

    /// `x` `[B, L, D]` through every layer; `mask` `[B, 1, L, L]` (true: may attend) or
    /// none (every position sees every other).
    fn forward(&self, mut x: Tensor, mask: Option<&Tensor>, train: bool) -> Tensor {
        let (b, l, d) = x.size3().expect("[B, L, D]");
        let h = self.heads;
        let dropout = if train { self.dropout } else { 0.0 };
        for layer in &self.layers {
            let y = x.apply(&layer.norm1);
            let split = |t: Tensor| t.view([b, l, h, d / h]).transpose(1, 2);
            let (q, k, v) =
                (split(y.apply(&layer.q)), split(y.apply(&layer.k)), split(y.apply(&layer.v)));
            let context =
                Tensor::scaled_dot_product_attention(&q, &k, &v, mask, dropout, false, None, false);
            // Not `+=`: libtorch would add in place into a tensor autograd saved.
            x = &x + context.transpose(1, 2).reshape([b, l, d]).apply(&layer.out);
            let y = self.act.apply(&x.apply(&layer.norm2).apply(&layer.fc1)).apply(&layer.fc2);
            x = &x + y;
        }
        x
    }
}

/// CLIP's vision tower (transformers' `CLIPVisionTransformer`, under `vision_model`).
#[derive(Debug)]
pub struct ClipVision {
    class_embedding: Tensor,
    patch: nn::Conv2D,
    position: nn::Embedding,
    pre_norm: nn::LayerNorm,
    stack: Stack,
    post_norm: nn::LayerNorm,
    config: ClipVisionConfig,
}

/// What [`ClipVision::forward_t`] returns.
#[derive(Debug)]
pub struct VisionOutput {
    /// `[B, 1 + patches, D]` after the last layer (transformers' `last_hidden_state`; the
    /// class token first).
    pub hidden: Tensor,
    /// `[B, D]`: the class token after `post_layernorm` (`pooler_output`).
    pub pooled: Tensor,
}

impl ClipVision {
    fn new(path: &nn::Path, config: &ClipVisionConfig, params: &Params) -> Self {
        let d = config.hidden_size;
        let emb = path / "embeddings";
        let class_embedding =
            emb.var("class_embedding", &[d], nn::Init::Randn { mean: 0.0, stdev: 0.02 });
        params.push(&class_embedding);
        let patch = nn::conv2d(
            &emb / "patch_embedding",
            config.num_channels,
            d,
            config.patch_size,
            nn::ConvConfig { stride: config.patch_size, bias: false, ..Default::default() },
        );
        params.push(&patch.ws);
        let grid = config.image_size / config.patch_size;
        ClipVision {
            class_embedding,
            patch,
            position: params.embedding(&emb / "position_embedding", grid * grid + 1, d),
            pre_norm: params.norm(path / "pre_layrnorm", d, config.layer_norm_eps),
            stack: Stack::new(
                &(path / "encoder"),
                params,
                d,
                config.intermediate_size,
                config.num_hidden_layers,
                config.num_attention_heads,
                &config.hidden_act,
                config.layer_norm_eps,
                config.attention_dropout,
            ),
            post_norm: params.norm(path / "post_layernorm", d, config.layer_norm_eps),
            config: config.clone(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// `[B, 1 + gh·gw, D]` position embeddings for a `gh × gw` grid of patches: the trained
    /// ones, or for another grid the patches' interpolated bicubically (transformers'
    /// `interpolate_pos_encoding`).
    fn positions(&self, gh: i64, gw: i64) -> Tensor {
        let pos = &self.position.ws;
        let g = self.config.image_size / self.config.patch_size;
        if gh == g && gw == g {
            return pos.unsqueeze(0);
        }
        let d = self.config.hidden_size;
        let patches = pos
            .narrow(0, 1, g * g)
            .view([1, g, g, d])
            .permute([0, 3, 1, 2])
            .upsample_bicubic2d([gh, gw], false, None, None)
            .permute([0, 2, 3, 1])
            .reshape([1, gh * gw, d]);
        Tensor::cat(&[pos.narrow(0, 0, 1).unsqueeze(0), patches], 1)
    }

    /// Normalised pixels `[B, C, H, W]` (any side of at least one patch; the patches that do
    /// not fit whole are left out, as the patch convolution does).
    pub fn forward_t(&self, pixels: &Tensor, train: bool) -> VisionOutput {
        let x = pixels.to_kind(self.patch.ws.kind()).apply(&self.patch);
        let (b, d, gh, gw) = x.size4().expect("[B, D, gh, gw]");
        let x = x.flatten(2, 3).transpose(1, 2);
        let class = self.class_embedding.view([1, 1, d]).expand([b, 1, d], false);
        let x = Tensor::cat(&[class, x], 1) + self.positions(gh, gw);
        let hidden = self.stack.forward(x.apply(&self.pre_norm), None, train);
        let pooled = hidden.select(1, 0).apply(&self.post_norm);
        VisionOutput { hidden, pooled }
    }
}

/// CLIP's text tower (transformers' `CLIPTextTransformer`, under `text_model`).
#[derive(Debug)]
pub struct ClipText {
    token: nn::Embedding,
    position: nn::Embedding,
    stack: Stack,
    final_norm: nn::LayerNorm,
    config: ClipTextConfig,
}

/// What [`ClipText::forward_t`] returns.
#[derive(Debug)]
pub struct TextOutput {
    /// `[B, L, D]` after `final_layer_norm` (transformers' `last_hidden_state`); positions
    /// past a sequence's length are not meaningful.
    pub hidden: Tensor,
    /// `[B, D]`: each sequence's last token (`pooler_output`).
    pub pooled: Tensor,
}

impl ClipText {
    fn new(path: &nn::Path, config: &ClipTextConfig, params: &Params) -> Self {
        let d = config.hidden_size;
        let emb = path / "embeddings";
        ClipText {
            token: params.embedding(&emb / "token_embedding", config.vocab_size, d),
            position: params.embedding(
                &emb / "position_embedding",
                config.max_position_embeddings,
                d,
            ),
            stack: Stack::new(
                &(path / "encoder"),
                params,
                d,
                config.intermediate_size,
                config.num_hidden_layers,
                config.num_attention_heads,
                &config.hidden_act,
                config.layer_norm_eps,
                config.attention_dropout,
            ),
            final_norm: params.norm(path / "final_layer_norm", d, config.layer_norm_eps),
            config: config.clone(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Token ids `[B, L]` (right-padded, each sequence ending with the end-of-text token as
    /// CLIP's tokenizer writes it) with their `[B]` lengths. Each token sees those before it;
    /// the pooled vector is the last valid token's, which is where transformers pools for such
    /// sequences (the first end-of-text token).
    ///
    /// Panics when `L` exceeds `max_position_embeddings` or an id is out of the vocabulary (a
    /// programmer's error: the encoders and `mm zero-shot` check both first).
    pub fn forward_t(&self, ids: &Tensor, lengths: &Tensor, train: bool) -> TextOutput {
        let (b, l) = ids.size2().expect("token ids are [B, L]");
        assert!(
            l <= self.config.max_position_embeddings,
            "{l} tokens, but CLIP's text tower has {} positions",
            self.config.max_position_embeddings
        );
        let device = ids.device();
        let positions = Tensor::arange(l, (Kind::Int64, device));
        let x = ids.to_kind(Kind::Int64).apply(&self.token)
            + positions.apply(&self.position).unsqueeze(0);
        let lengths = lengths.to_device(device).to_kind(Kind::Int64);
        // Causal and key-padding mask; an empty sequence still sees its first position, so that
        // no row of the attention is empty (NaN); its output is unused.
        let keys = positions.unsqueeze(0).lt_tensor(&lengths.clamp_min(1).unsqueeze(1));
        let causal = positions.unsqueeze(1).ge_tensor(&positions.unsqueeze(0));
        let mask = causal.unsqueeze(0).logical_and(&keys.unsqueeze(1)).unsqueeze(1);
        let hidden = self.stack.forward(x, Some(&mask), train).apply(&self.final_norm);
        let last = (lengths - 1).clamp(0, l - 1);
        let pooled = hidden
            .gather(1, &last.view([b, 1, 1]).expand([b, 1, self.config.hidden_size], false), false)
            .squeeze_dim(1);
        TextOutput { hidden, pooled }
    }
}

/// The whole CLIP model with transformers' names (`text_model`, `vision_model`,
/// `text_projection`, `visual_projection`, `logit_scale`).
#[derive(Debug)]
pub struct Clip {
    text: ClipText,
    vision: ClipVision,
    text_projection: nn::Linear,
    visual_projection: nn::Linear,
    logit_scale: Tensor,
    config: ClipConfig,
}

impl Clip {
    /// The model `config` describes under `path`, randomly initialised until weights are
    /// loaded.
    pub fn new(path: &nn::Path, config: &ClipConfig) -> Result<Self> {
        config.check().map_err(Error::Config)?;
        let params = Params::default();
        let p = config.projection_dim;
        let logit_scale =
            path.var("logit_scale", &[], nn::Init::Const(config.logit_scale_init_value));
        Ok(Clip {
            text: ClipText::new(&(path / "text_model"), &config.text_config, &params),
            vision: ClipVision::new(&(path / "vision_model"), &config.vision_config, &params),
            text_projection: params.linear(
                path / "text_projection",
                config.text_config.hidden_size,
                p,
                false,
            ),
            visual_projection: params.linear(
                path / "visual_projection",
                config.vision_config.hidden_size,
                p,
                false,
            ),
            logit_scale,
            config: config.clone(),
        })
    }

    /// Reads a model folder (see [`ClipFolder`]: transformers' `CLIPModel` or open_clip's
    /// files) onto `device`, in evaluation mode and without gradients. A folder that
    /// holds another model, or weights that do not fit the configuration, is an error naming
    /// the file and every tensor at fault.
    pub fn load(dir: &Path, device: Device) -> Result<(nn::VarStore, Clip)> {
        let folder = ClipFolder::read(dir)?;
        let mut vs = nn::VarStore::new(device);
        let clip = Clip::new(&vs.root(), &folder.config)?;
        load_safetensors(&vs, &folder.weights, &folder.load_options(ClipPart::Whole, ""))?;
        vs.freeze();
        Ok((vs, clip))
    }

    /// The configuration.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The text tower.
    pub fn text(&self) -> &ClipText {
        &self.text
    }

    /// The vision tower.
    pub fn vision(&self) -> &ClipVision {
        &self.vision
    }

    /// `[B, projection_dim]` image embeddings (not normalised; transformers'
    /// `get_image_features`) of normalised pixels `[B, 3, H, W]`.
    pub fn image_features(&self, pixels: &Tensor) -> Tensor {
        self.vision.forward_t(pixels, false).pooled.apply(&self.visual_projection)
    }

    /// `[B, projection_dim]` text embeddings (not normalised; `get_text_features`) of token
    /// ids `[B, L]` with their lengths (see [`ClipText::forward_t`]).
    pub fn text_features(&self, ids: &Tensor, lengths: &Tensor) -> Tensor {
        self.text.forward_t(ids, lengths, false).pooled.apply(&self.text_projection)
    }

    /// The device the model's parameters are on.
    pub fn device(&self) -> Device {
        self.logit_scale.device()
    }

    /// `exp(logit_scale)`, the temperature the similarities are multiplied by.
    pub fn scale(&self) -> f64 {
        self.logit_scale.exp().double_value(&[])
    }

    /// `[images, texts]`: the cosine similarities of the embeddings times the logit scale
    /// (transformers' `logits_per_image`); a softmax over a row gives zero-shot probabilities.
    pub fn logits_per_image(&self, image_features: &Tensor, text_features: &Tensor) -> Tensor {
        let unit = |t: &Tensor| t / t.norm_scalaropt_dim(2.0, [-1], true);
        unit(image_features).matmul(&unit(text_features).tr()) * self.logit_scale.exp()
    }
}

/// Which part of a CLIP file a variable set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipPart {
    /// Both towers, their projections and the logit scale.
    Whole,
    /// `vision_model` and `visual_projection`.
    Vision,
    /// `text_model` and `text_projection`.
    Text,
}

/// How to load a CLIP file (transformers' names) into the variables under `prefix`: the
/// tensors of the other tower skipped for a one-tower encoder, the `position_ids` buffers
/// skipped, a projection of the encoder's own (`proj.`) allowed to be missing.
pub fn clip_load_options(part: ClipPart, prefix: &str) -> LoadOptions {
    let other: &[&str] = match part {
        ClipPart::Whole => &[],
        ClipPart::Vision => &["text_model.", "text_projection.", "logit_scale"],
        ClipPart::Text => &["vision_model.", "visual_projection.", "logit_scale"],
    };
    LoadOptions {
        prefix: prefix.to_string(),
        skip: other.iter().map(|s| s.to_string()).collect(),
        allow_missing: vec!["proj.".to_string()],
        map: Some(hf_clip_name),
    }
}

/// Maps a tensor name of a CLIP file saved by transformers to ours: the same, but the
/// `position_ids` buffers older files carry are skipped.
pub fn hf_clip_name(name: &str) -> Mapped {
    if name.ends_with("position_ids") {
        Mapped::Skip("position-index buffers (recomputed)")
    } else {
        Mapped::To(name.to_string())
    }
}

/// Configuration of a CLIP tower in a model (`kind = "clip-image"` or `kind = "clip-text"` in
/// TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipEncoderConfig {
    /// A CLIP model folder ([`ClipFolder`]: transformers' `CLIPModel` files, or open_clip's);
    /// only the tower's part of the weights is loaded. For
    /// `clip-text`, the data's `[data.text] tokenizer` is its `tokenizer.json`; for
    /// `clip-image`, `[data.image] normalize = "clip"`.
    pub model: PathBuf,
    /// Keep the tower and its projection fixed.
    #[serde(default)]
    pub freeze: bool,
    /// Project the output to this size.
    #[serde(default)]
    pub project: Option<i64>,
}

/// CLIP's vision tower as an [`Encoder`] of images: the pooled output is the image embedding
/// (`get_image_features`), the sequence is every token after `post_layernorm` and the
/// projection (the class token first, so that step 0 is the pooled vector).
#[derive(Debug)]
pub struct ClipImageEncoder {
    vision: ClipVision,
    projection: nn::Linear,
    dim: i64,
    backbone: Backbone,
}

impl ClipImageEncoder {
    /// The vision tower of `config` under `path` (`path/vision_model`, `path/visual_projection`).
    pub fn new(path: &nn::Path, config: &ClipConfig) -> Result<Self> {
        config.check().map_err(Error::Config)?;
        let params = Params::default();
        let vision = ClipVision::new(&(path / "vision_model"), &config.vision_config, &params);
        let projection = params.linear(
            path / "visual_projection",
            config.vision_config.hidden_size,
            config.projection_dim,
            false,
        );
        Ok(ClipImageEncoder {
            vision,
            projection,
            dim: config.projection_dim,
            backbone: Backbone::new(params.take()),
        })
    }
}

impl Encoder for ClipImageEncoder {
    fn output_dim(&self) -> i64 {
        self.dim
    }

    fn forward_t(&self, input: &Input, train: bool) -> Encoded {
        let out = self.vision.forward_t(&input.values, train && !self.backbone.frozen());
        let seq = out.hidden.apply(&self.vision.post_norm).apply(&self.projection);
        let (b, l, _) = seq.size3().expect("[B, L, P]");
        let mask = Tensor::ones([b, l], (Kind::Bool, seq.device()));
        Encoded { pooled: seq.select(1, 0), seq: Some((seq, mask)) }
    }

    fn set_backbone_trainable(&self, trainable: bool) {
        self.backbone.set_trainable(trainable);
    }

    fn backbone_parameters(&self) -> Vec<Tensor> {
        self.backbone.parameters()
    }
}

/// CLIP's text tower as an [`Encoder`] of token ids: the pooled output is the text embedding
/// (`get_text_features`), the sequence every token's projected vector with its mask.
#[derive(Debug)]
pub struct ClipTextEncoder {
    text: ClipText,
    projection: nn::Linear,
    dim: i64,
    backbone: Backbone,
}

impl ClipTextEncoder {
    /// The text tower of `config` under `path` (`path/text_model`, `path/text_projection`).
    pub fn new(path: &nn::Path, config: &ClipConfig) -> Result<Self> {
        config.check().map_err(Error::Config)?;
        let params = Params::default();
        let text = ClipText::new(&(path / "text_model"), &config.text_config, &params);
        let projection = params.linear(
            path / "text_projection",
            config.text_config.hidden_size,
            config.projection_dim,
            false,
        );
        Ok(ClipTextEncoder {
            text,
            projection,
            dim: config.projection_dim,
            backbone: Backbone::new(params.take()),
        })
    }
}

impl Encoder for ClipTextEncoder {
    fn output_dim(&self) -> i64 {
        self.dim
    }

    fn forward_t(&self, input: &Input, train: bool) -> Encoded {
        let ids = &input.values;
        let steps = ids.size()[1];
        let lengths = input.lengths_or_full().to_device(ids.device());
        let out = self.text.forward_t(ids, &lengths, train && !self.backbone.frozen());
        let mask = mm_seq::lengths_to_mask(&lengths, steps);
        let seq =
            out.hidden.apply(&self.projection) * mask.unsqueeze(-1).to_kind(out.hidden.kind());
        Encoded { pooled: out.pooled.apply(&self.projection), seq: Some((seq, mask)) }
    }

    fn set_backbone_trainable(&self, trainable: bool) {
        self.backbone.set_trainable(trainable);
    }

    fn backbone_parameters(&self) -> Vec<Tensor> {
        self.backbone.parameters()
    }
}

/// Loads a model folder's weights into an encoder's variables under `prefix`, for `part`.
pub(crate) fn load_part(
    vs: &nn::VarStore,
    dir: &Path,
    part: ClipPart,
    prefix: &str,
) -> Result<LoadReport> {
    let folder = ClipFolder::read(dir)?;
    load_safetensors(vs, &folder.weights, &folder.load_options(part, prefix))
}

/// A CLIP model folder in either layout:
///
/// - transformers' (`CLIPModel`): `config.json`, `model.safetensors`, `tokenizer.json`,
///   `preprocessor_config.json`;
/// - open_clip's (`laion/CLIP-ViT-B-32-laion2B-s34B-b79K` and the like):
///   `open_clip_config.json`, `open_clip_model.safetensors` (or `model.safetensors`),
///   `tokenizer.json`; its names are mapped by [`open_clip_name`] (packed query, key and value
///   cut apart, projections transposed) and its sizes by [`ClipConfig::from_open_clip_file`].
#[derive(Debug, Clone)]
pub struct ClipFolder {
    /// The sizes.
    pub config: ClipConfig,
    /// The weights file.
    pub weights: PathBuf,
    /// Whether the files are open_clip's.
    pub open_clip: bool,
}

impl ClipFolder {
    /// Finds the layout of `dir`; a folder with neither configuration file is an error naming
    /// both.
    pub fn read(dir: &Path) -> Result<Self> {
        let hf = dir.join("config.json");
        let oc = dir.join("open_clip_config.json");
        if !hf.exists() && !oc.exists() {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                message: "neither config.json (transformers' CLIPModel) nor open_clip_config.json (open_clip): not a CLIP model folder".into(),
            });
        }
        if hf.exists() {
            return Ok(ClipFolder {
                config: ClipConfig::from_file(&hf)?,
                weights: dir.join("model.safetensors"),
                open_clip: false,
            });
        }
        let own = dir.join("open_clip_model.safetensors");
        Ok(ClipFolder {
            config: ClipConfig::from_open_clip_file(&oc)?,
            weights: if own.is_file() { own } else { dir.join("model.safetensors") },
            open_clip: true,
        })
    }

    /// How to load this folder's file into the variables under `prefix`, for `part`.
    pub fn load_options(&self, part: ClipPart, prefix: &str) -> LoadOptions {
        if !self.open_clip {
            return clip_load_options(part, prefix);
        }
        let other: &[&str] = match part {
            ClipPart::Whole => &[],
            ClipPart::Vision => &[
                "token_embedding.",
                "positional_embedding",
                "transformer.",
                "ln_final.",
                "text_projection",
                "logit_scale",
                "attn_mask",
            ],
            ClipPart::Text => &["visual.", "logit_scale"],
        };
        LoadOptions {
            prefix: prefix.to_string(),
            skip: other.iter().map(|s| s.to_string()).collect(),
            allow_missing: vec!["proj.".to_string()],
            map: Some(open_clip_name),
        }
    }
}

/// Maps a tensor name of an open_clip CLIP (OpenAI's layout: `visual.transformer.resblocks`,
/// `transformer.resblocks`, `ln_final`, ...) to transformers' names, which [`Clip`] uses: each
/// layer's packed `attn.in_proj_weight` / `in_proj_bias` cut into the query, key and value
/// projections, `visual.proj` and `text_projection` transposed into linear weights; the
/// causal-mask buffer skipped.
pub fn open_clip_name(name: &str) -> Mapped {
    if name == "attn_mask" || name.ends_with(".attn_mask") {
        return Mapped::Skip("attention-mask buffers (recomputed)");
    }
    let fixed = match name {
        "logit_scale" => Some("logit_scale"),
        "token_embedding.weight" => Some("text_model.embeddings.token_embedding.weight"),
        "positional_embedding" => Some("text_model.embeddings.position_embedding.weight"),
        "ln_final.weight" => Some("text_model.final_layer_norm.weight"),
        "ln_final.bias" => Some("text_model.final_layer_norm.bias"),
        "visual.class_embedding" => Some("vision_model.embeddings.class_embedding"),
        "visual.positional_embedding" => Some("vision_model.embeddings.position_embedding.weight"),
        "visual.conv1.weight" => Some("vision_model.embeddings.patch_embedding.weight"),
        "visual.ln_pre.weight" => Some("vision_model.pre_layrnorm.weight"),
        "visual.ln_pre.bias" => Some("vision_model.pre_layrnorm.bias"),
        "visual.ln_post.weight" => Some("vision_model.post_layernorm.weight"),
        "visual.ln_post.bias" => Some("vision_model.post_layernorm.bias"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Mapped::To(f.to_string());
    }
    match name {
        "visual.proj" => return Mapped::Transposed("visual_projection.weight".into()),
        "text_projection" => return Mapped::Transposed("text_projection.weight".into()),
        _ => {}
    }
    let (tower, rest) = if let Some(r) = name.strip_prefix("visual.transformer.resblocks.") {
        ("vision_model", r)
    } else if let Some(r) = name.strip_prefix("transformer.resblocks.") {
        ("text_model", r)
    } else {
        return Mapped::To(name.to_string());
    };
    let Some((i, tail)) = rest.split_once('.') else { return Mapped::To(name.to_string()) };
    let layer = format!("{tower}.encoder.layers.{i}");
    match tail {
        "attn.in_proj_weight" | "attn.in_proj_bias" => {
            let what = if tail.ends_with("weight") { "weight" } else { "bias" };
            Mapped::Chunks(
                ["q_proj", "k_proj", "v_proj"]
                    .iter()
                    .map(|p| format!("{layer}.self_attn.{p}.{what}"))
                    .collect(),
            )
        }
        _ => {
            let Some((module, what)) = tail.rsplit_once('.') else {
                return Mapped::To(name.to_string());
            };
            let ours = match module {
                "attn.out_proj" => "self_attn.out_proj",
                "ln_1" => "layer_norm1",
                "ln_2" => "layer_norm2",
                "mlp.c_fc" => "mlp.fc1",
                "mlp.c_proj" => "mlp.fc2",
                _ => return Mapped::To(name.to_string()),
            };
            Mapped::To(format!("{layer}.{ours}.{what}"))
        }
    }
}

/// CLIP's input preparation, read from a model folder: its `tokenizer.json` (byte-level BPE,
/// start and end-of-text tokens added) and its `preprocessor_config.json` (resize of the
/// shorter side, centre crop, CLIP's mean and standard deviation; when the file is absent, the
/// vision tower's image size and OpenAI's statistics, or open_clip's `preprocess_cfg` ones).
#[derive(Debug, Clone)]
pub struct ClipProcessor {
    tokenizer: mm_data::subword::SubwordTokenizer,
    max_tokens: usize,
    shortest: usize,
    crop: (usize, usize),
    mean: [f32; 3],
    std: [f32; 3],
}

/// The keys of a `preprocessor_config.json` the processor reads (sizes as a number or as
/// transformers' `{"shortest_edge"}` / `{"height", "width"}` objects).
#[derive(Debug, Deserialize)]
struct Preprocessor {
    #[serde(default)]
    size: Option<serde_json::Value>,
    #[serde(default)]
    crop_size: Option<serde_json::Value>,
    #[serde(default)]
    image_mean: Option<[f32; 3]>,
    #[serde(default)]
    image_std: Option<[f32; 3]>,
}

impl ClipProcessor {
    /// Reads `dir/tokenizer.json` and, if present, `dir/preprocessor_config.json`, for the
    /// model `config` describes. A tokenizer with more ids than the text tower has rows is an
    /// error (they do not belong together).
    pub fn from_folder(dir: &Path, config: &ClipConfig) -> Result<Self> {
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = mm_data::subword::SubwordTokenizer::from_file(&tokenizer_path)
            .map_err(|e| Error::Config(e.to_string()))?;
        if tokenizer.vocab_size() as i64 > config.text_config.vocab_size {
            return Err(Error::Config(format!(
                "{}: {} ids, but the CLIP model's text tower has {}: the tokenizer does not belong to this model",
                tokenizer_path.display(),
                tokenizer.vocab_size(),
                config.text_config.vocab_size
            )));
        }
        let side = config.vision_config.image_size as usize;
        let mut processor = ClipProcessor {
            tokenizer,
            max_tokens: config.text_config.max_position_embeddings as usize,
            shortest: side,
            crop: (side, side),
            mean: mm_data::normalize::CLIP_MEAN,
            std: mm_data::normalize::CLIP_STD,
        };
        let path = dir.join("preprocessor_config.json");
        if path.exists() {
            let text = mm_data::fs::read_text_capped(&path, mm_data::fs::FileKind::Text)
                .map_err(crate::weights::unreadable)?;
            let bad = |m: String| Error::Io { path: path.clone(), message: m };
            let p: Preprocessor = serde_json::from_str(&text)
                .map_err(|e| bad(format!("not a preprocessor_config.json: {e}")))?;
            let number = |v: &serde_json::Value, key: &str| {
                v.as_u64()
                    .or_else(|| v.get(key).and_then(serde_json::Value::as_u64))
                    .filter(|n| *n > 0)
                    .map(|n| n as usize)
            };
            if let Some(v) = &p.size {
                processor.shortest = number(v, "shortest_edge").ok_or_else(|| {
                    bad(format!(
                        "size = {v}: a positive number or {{\"shortest_edge\": N}} expected"
                    ))
                })?;
            }
            if let Some(v) = &p.crop_size {
                processor.crop = match (number(v, "height"), number(v, "width")) {
                    (Some(h), Some(w)) => (h, w),
                    _ => return Err(bad(format!(
                        "crop_size = {v}: a positive number or {{\"height\": H, \"width\": W}} expected"
                    ))),
                };
            }
            if processor.crop.0 > processor.shortest || processor.crop.1 > processor.shortest {
                return Err(bad(format!(
                    "crop_size {:?} is larger than the resized image's shorter side {}",
                    processor.crop, processor.shortest
                )));
            }
            processor.mean = p.image_mean.unwrap_or(processor.mean);
            processor.std = p.image_std.unwrap_or(processor.std);
        } else if let Ok(text) = std::fs::read_to_string(dir.join("open_clip_config.json")) {
            // open_clip's own statistics, when it gives them (`preprocess_cfg`).
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let three = |key: &str| -> Option<[f32; 3]> {
                serde_json::from_value(v["preprocess_cfg"][key].clone()).ok()
            };
            processor.mean = three("mean").unwrap_or(processor.mean);
            processor.std = three("std").unwrap_or(processor.std);
        }
        if processor.std.iter().any(|s| s.is_nan() || *s <= 0.0) {
            return Err(Error::Config(format!(
                "{}: image_std = {:?}: must be positive",
                dir.display(),
                processor.std
            )));
        }
        Ok(processor)
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &mm_data::subword::SubwordTokenizer {
        &self.tokenizer
    }

    /// `[3, crop.0, crop.1]` normalised pixels of an `[H, W, 3]` image (see
    /// [`mm_data::image::resize_shortest_center_crop_chw`]). An image more than 32 times as
    /// long as it is wide (or the reverse) is refused: its resize would take gigabytes (a
    /// 1×20000 strip becomes 224×4.5M pixels) for a crop of its middle.
    pub fn image(&self, pixels: &ndarray::Array3<u8>) -> Result<Tensor> {
        let (h, w, _) = pixels.dim();
        if h == 0 || w == 0 || h.max(w) > 32 * h.min(w) {
            return Err(Error::Config(format!(
                "an image of {w}x{h} pixels: too elongated for CLIP's resize of the shorter side (at most 32 times as long as wide)"
            )));
        }
        let chw = mm_data::image::resize_shortest_center_crop_chw(pixels, self.shortest, self.crop);
        let t = Tensor::from_slice(chw.as_slice().expect("standard layout")).view([
            3,
            self.crop.0 as i64,
            self.crop.1 as i64,
        ]);
        let mean = Tensor::from_slice(&self.mean).view([3, 1, 1]);
        let std = Tensor::from_slice(&self.std).view([3, 1, 1]);
        Ok((t - mean) / std)
    }

    /// `[B, 3, crop.0, crop.1]` normalised pixels of several images; the first that
    /// [`ClipProcessor::image`] refuses is the error.
    pub fn images(&self, images: &[ndarray::Array3<u8>]) -> Result<Tensor> {
        let prepared = images.iter().map(|i| self.image(i)).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&prepared, 0))
    }

    /// Token ids `[B, L]` (padded with the end-of-text id) and their `[B]` lengths; a text
    /// longer than the model's positions is cut, its start and end tokens kept (transformers'
    /// `truncation=True`).
    pub fn texts(&self, texts: &[String]) -> Result<(Tensor, Tensor)> {
        let mut rows = Vec::with_capacity(texts.len());
        for t in texts {
            let (ids, _) = self
                .tokenizer
                .encode_max(t, self.max_tokens)
                .map_err(|e| Error::Config(e.to_string()))?;
            rows.push(ids);
        }
        let l = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let pad = rows.iter().find_map(|r| r.last().copied()).unwrap_or(0);
        let lengths: Vec<i64> = rows.iter().map(|r| r.len() as i64).collect();
        let flat: Vec<i64> = rows
            .into_iter()
            .flat_map(|mut r| {
                r.resize(l, pad);
                r
            })
            .collect();
        Ok((
            Tensor::from_slice(&flat).view([texts.len() as i64, l as i64]),
            Tensor::from_slice(&lengths),
        ))
    }
}

/// Zero-shot classification with a CLIP model: each label becomes a text through a template
/// (`"a photo of a {}"`), an image's class probabilities are the softmax of its scaled cosine
/// similarities to the labels' embeddings (computed once).
#[derive(Debug)]
pub struct ZeroShot {
    clip: Clip,
    _vs: nn::VarStore,
    processor: ClipProcessor,
    labels: Vec<String>,
    label_features: Tensor,
}

impl ZeroShot {
    /// Loads the model folder (`config.json`, `model.safetensors`, `tokenizer.json`,
    /// optionally `preprocessor_config.json`) and embeds the labels. The template must hold
    /// `{}` exactly once (where the label goes); the labels must be non-empty, distinct and not
    /// blank.
    pub fn new(dir: &Path, labels: &[String], template: &str, device: Device) -> Result<Self> {
        if template.matches("{}").count() != 1 {
            return Err(Error::Config(format!(
                "template {template:?}: it must hold {{}} exactly once, where the label goes (\"a photo of a {{}}\")"
            )));
        }
        if labels.is_empty() {
            return Err(Error::Config("no labels: give at least one (--labels cat,dog)".into()));
        }
        if let Some(blank) = labels.iter().position(|l| l.trim().is_empty()) {
            return Err(Error::Config(format!("label {} of {labels:?} is blank", blank + 1)));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = labels.iter().find(|l| !seen.insert(l.trim())) {
            return Err(Error::Config(format!("label {twice:?} is given twice")));
        }
        // The tokenizer first: one that does not belong to the model is the clearer error.
        let config = ClipFolder::read(dir)?.config;
        let processor = ClipProcessor::from_folder(dir, &config)?;
        let (vs, clip) = Clip::load(dir, device)?;
        let prompts: Vec<String> =
            labels.iter().map(|l| template.replace("{}", l.trim())).collect();
        let (ids, lengths) = processor.texts(&prompts)?;
        let label_features =
            tch::no_grad(|| clip.text_features(&ids.to_device(device), &lengths.to_device(device)));
        Ok(ZeroShot { clip, _vs: vs, processor, labels: labels.to_vec(), label_features })
    }

    /// The labels, in the order of the probabilities.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The model.
    pub fn clip(&self) -> &Clip {
        &self.clip
    }

    /// The input preparation.
    pub fn processor(&self) -> &ClipProcessor {
        &self.processor
    }

    /// `[B, labels]` probabilities of decoded `[H, W, 3]` images (an image the processor
    /// refuses is the error).
    pub fn classify(&self, images: &[ndarray::Array3<u8>]) -> Result<Tensor> {
        Ok(self.classify_prepared(&self.processor.images(images)?))
    }

    /// `[B, labels]` probabilities of pixels already prepared by [`ZeroShot::processor`]
    /// (`[B, 3, H, W]`).
    pub fn classify_prepared(&self, pixels: &Tensor) -> Tensor {
        let device = self.label_features.device();
        tch::no_grad(|| {
            let features = self.clip.image_features(&pixels.to_device(device));
            self.clip.logits_per_image(&features, &self.label_features).softmax(-1, Kind::Float)
        })
    }
}
