//! The Vision Transformer (Dosovitskiy et al. 2021) as an image encoder, with torchvision's
//! parameter names (`vit_b_16`, `vit_b_32`: `conv_proj`, `class_token`,
//! `encoder.pos_embedding`, `encoder.layers.encoder_layer_{i}.{ln_1, self_attention, ln_2,
//! mlp}`, `encoder.ln`), so that torchvision's weights saved as safetensors load as they are;
//! Hugging Face's `ViTModel` files (`google/vit-base-patch16-224` and the like: `config.json`
//! plus `model.safetensors`) load through [`hf_vit_name`], which fills the packed query, key and
//! value projection from transformers' three.
//!
//! The pooled output is the class token after the final LayerNorm (what torchvision's head and
//! transformers' classifier read); the sequence is every token. Another image size than the
//! configured one interpolates the patch positions bicubically (transformers'
//! `interpolate_pos_encoding`).
//!
//! ```
//! use mm_encoders::vit::{VitConfig, VitEncoder};
//! use mm_encoders::{Encoder, Input};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let config = VitConfig { hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4,
//!     intermediate_size: 64, image_size: 32, patch_size: 8, ..VitConfig::vit_b_16() };
//! let vs = nn::VarStore::new(Device::Cpu);
//! let vit = VitEncoder::new(&(vs.root() / "image"), &config)?;
//! assert!(vs.variables().contains_key("image.encoder.layers.encoder_layer_1.self_attention.in_proj_weight"));
//! let out = vit.forward_t(&Input::dense(Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu))), false);
//! assert_eq!(out.pooled.size(), [2, 32]);
//! # Ok::<(), mm_encoders::Error>(())
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::weights::Mapped;
use crate::{Backbone, Encoded, Encoder, Error, Input, Result};

/// A ViT's sizes, with transformers' `ViTConfig` names (its `config.json`; other keys ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    /// `vit` when present; another value is refused (the folder holds another model).
    #[serde(default)]
    pub model_type: Option<String>,
    /// Width.
    #[serde(default = "d768")]
    pub hidden_size: i64,
    /// Layers.
    #[serde(default = "d12")]
    pub num_hidden_layers: i64,
    /// Attention heads per layer.
    #[serde(default = "d12")]
    pub num_attention_heads: i64,
    /// Width of the feed-forward block.
    #[serde(default = "d3072")]
    pub intermediate_size: i64,
    /// `gelu` (exact) or `gelu_new` / `gelu_pytorch_tanh`.
    #[serde(default = "gelu")]
    pub hidden_act: String,
    /// LayerNorm epsilon (torchvision's are 1e-6, transformers' default 1e-12).
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    /// The image side the positions were trained for.
    #[serde(default = "d224")]
    pub image_size: i64,
    /// Side of a patch.
    #[serde(default = "d16")]
    pub patch_size: i64,
    /// Input channels.
    #[serde(default = "d3")]
    pub num_channels: i64,
}

fn d3() -> i64 {
    3
}
fn d12() -> i64 {
    12
}
fn d16() -> i64 {
    16
}
fn d224() -> i64 {
    224
}
fn d768() -> i64 {
    768
}
fn d3072() -> i64 {
    3072
}
fn gelu() -> String {
    "gelu".into()
}
fn eps() -> f64 {
    1e-12
}

impl VitConfig {
    /// torchvision's `vit_b_16`: 86 M parameters, 768 wide, 16×16 patches of 224×224.
    pub fn vit_b_16() -> Self {
        VitConfig {
            model_type: None,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: gelu(),
            layer_norm_eps: 1e-6,
            image_size: 224,
            patch_size: 16,
            num_channels: 3,
        }
    }

    /// torchvision's `vit_b_32`: as `vit_b_16` with 32×32 patches.
    pub fn vit_b_32() -> Self {
        VitConfig { patch_size: 32, ..Self::vit_b_16() }
    }

    /// Reads transformers' `config.json`; the error names the file and what is wrong.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: VitConfig = crate::weights::read_model_config(path, "a ViT")?;
        config.check().map_err(|m| Error::Config(format!("{}: {m}", path.display())))?;
        Ok(config)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if let Some(t) = self.model_type.as_deref().filter(|t| *t != "vit") {
            return Err(format!("model_type = {t:?}: this is not a ViT (\"vit\" expected)"));
        }
        let sizes = [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("num_channels", self.num_channels),
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
        if self.image_size % self.patch_size != 0 {
            return Err(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        if !["gelu", "gelu_new", "gelu_pytorch_tanh"].contains(&self.hidden_act.as_str()) {
            return Err(format!(
                "hidden_act = {:?}: supported are gelu, gelu_new and gelu_pytorch_tanh",
                self.hidden_act
            ));
        }
        Ok(())
    }
}

/// Which ViT a run builds (`kind = "vit"` in TOML).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum VitArch {
    /// torchvision's `vit_b_16`.
    #[default]
    VitB16,
    /// torchvision's `vit_b_32`.
    VitB32,
}

/// Configuration of a ViT in a model (`kind = "vit"` in TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitEncoderConfig {
    /// torchvision's architecture (default `vit_b_16`), when no `model` folder is given.
    #[serde(default)]
    pub arch: VitArch,
    /// A transformers folder (`config.json`, `model.safetensors` of a `ViTModel` or
    /// `ViTForImageClassification`): its sizes, and its weights loaded when training starts.
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// A safetensors file of torchvision's weights for `arch` (its `heads` skipped).
    #[serde(default)]
    pub weights: Option<PathBuf>,
    /// Keep the whole network fixed.
    #[serde(default)]
    pub freeze: bool,
    /// Project the output to this size.
    #[serde(default)]
    pub project: Option<i64>,
}

impl VitEncoderConfig {
    /// The network's sizes: the model folder's `config.json`, or the architecture's.
    pub fn sizes(&self) -> Result<VitConfig> {
        match &self.model {
            Some(dir) => VitConfig::from_file(&dir.join("config.json")),
            None => Ok(match self.arch {
                VitArch::VitB16 => VitConfig::vit_b_16(),
                VitArch::VitB32 => VitConfig::vit_b_32(),
            }),
        }
    }
}

#[derive(Debug)]
struct Layer {
    ln_1: nn::LayerNorm,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: nn::Linear,
    ln_2: nn::LayerNorm,
    mlp_0: nn::Linear,
    mlp_3: nn::Linear,
}

/// A ViT image encoder (see the module's documentation). The whole network is the backbone.
#[derive(Debug)]
pub struct VitEncoder {
    conv_proj: nn::Conv2D,
    class_token: Tensor,
    pos_embedding: Tensor,
    layers: Vec<Layer>,
    ln: nn::LayerNorm,
    config: VitConfig,
    backbone: Backbone,
}

impl VitEncoder {
    /// The network `config` describes under `path`, randomly initialised until weights are
    /// loaded.
    pub fn new(path: &nn::Path, config: &VitConfig) -> Result<Self> {
        config.check().map_err(Error::Config)?;
        let d = config.hidden_size;
        let mut params = Vec::new();
        let mut keep = |t: &Tensor| params.push(t.shallow_clone());
        let init = nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        let norm = |p: nn::Path| {
            nn::layer_norm(
                p,
                vec![d],
                nn::LayerNormConfig { eps: config.layer_norm_eps, ..Default::default() },
            )
        };
        let linear = |p: nn::Path, i: i64, o: i64| {
            nn::linear(
                p,
                i,
                o,
                nn::LinearConfig { ws_init: init, bs_init: Some(nn::Init::Const(0.0)), bias: true },
            )
        };
        let conv_proj = nn::conv2d(
            path / "conv_proj",
            config.num_channels,
            d,
            config.patch_size,
            nn::ConvConfig { stride: config.patch_size, ..Default::default() },
        );
        keep(&conv_proj.ws);
        if let Some(b) = &conv_proj.bs {
            keep(b);
        }
        let class_token = path.var("class_token", &[1, 1, d], nn::Init::Const(0.0));
        keep(&class_token);
        let grid = config.image_size / config.patch_size;
        let enc = path / "encoder";
        let pos_embedding = enc.var("pos_embedding", &[1, grid * grid + 1, d], init);
        keep(&pos_embedding);
        let mut layers = Vec::new();
        for i in 0..config.num_hidden_layers {
            let p = &enc / "layers" / format!("encoder_layer_{i}");
            let attn = &p / "self_attention";
            let layer = Layer {
                ln_1: norm(&p / "ln_1"),
                in_proj_weight: attn.var("in_proj_weight", &[3 * d, d], init),
                in_proj_bias: attn.var("in_proj_bias", &[3 * d], nn::Init::Const(0.0)),
                out_proj: linear(&attn / "out_proj", d, d),
                ln_2: norm(&p / "ln_2"),
                mlp_0: linear(&p / "mlp" / "0", d, config.intermediate_size),
                mlp_3: linear(&p / "mlp" / "3", config.intermediate_size, d),
            };
            for n in [&layer.ln_1, &layer.ln_2] {
                n.ws.iter().chain(n.bs.iter()).for_each(&mut keep);
            }
            keep(&layer.in_proj_weight);
            keep(&layer.in_proj_bias);
            for l in [&layer.out_proj, &layer.mlp_0, &layer.mlp_3] {
                keep(&l.ws);
                l.bs.iter().for_each(&mut keep);
            }
            layers.push(layer);
        }
        let ln = norm(&enc / "ln");
        ln.ws.iter().chain(ln.bs.iter()).for_each(&mut keep);
        Ok(VitEncoder {
            conv_proj,
            class_token,
            pos_embedding,
            layers,
            ln,
            config: config.clone(),
            backbone: Backbone::new(params),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    fn positions(&self, gh: i64, gw: i64) -> Tensor {
        let g = self.config.image_size / self.config.patch_size;
        if gh == g && gw == g {
            return self.pos_embedding.shallow_clone();
        }
        let d = self.config.hidden_size;
        let patches = self
            .pos_embedding
            .narrow(1, 1, g * g)
            .view([1, g, g, d])
            .permute([0, 3, 1, 2])
            .upsample_bicubic2d([gh, gw], false, None, None)
            .permute([0, 2, 3, 1])
            .reshape([1, gh * gw, d]);
        Tensor::cat(&[self.pos_embedding.narrow(1, 0, 1), patches], 1)
    }

    /// `[B, 1 + patches, D]`: every token after the final LayerNorm, the class token first.
    pub fn tokens(&self, pixels: &Tensor) -> Tensor {
        let x = pixels.to_kind(self.conv_proj.ws.kind()).apply(&self.conv_proj);
        let (b, d, gh, gw) = x.size4().expect("[B, D, gh, gw]");
        let x = x.flatten(2, 3).transpose(1, 2);
        let class = self.class_token.expand([b, 1, d], false);
        let mut x = Tensor::cat(&[class, x], 1) + self.positions(gh, gw);
        let l = x.size()[1];
        let h = self.config.num_attention_heads;
        let tanh = self.config.hidden_act != "gelu";
        for layer in &self.layers {
            let y = x.apply(&layer.ln_1);
            let qkv = y.linear(&layer.in_proj_weight, Some(&layer.in_proj_bias));
            let split = |t: &Tensor| t.view([b, l, h, d / h]).transpose(1, 2);
            let parts = qkv.chunk(3, -1);
            let context = Tensor::scaled_dot_product_attention::<Tensor>(
                &split(&parts[0]),
                &split(&parts[1]),
                &split(&parts[2]),
                None,
                0.0,
                false,
                None,
                false,
            );
            // Not `+=`: libtorch would add in place into a tensor autograd saved.
            x = &x + context.transpose(1, 2).reshape([b, l, d]).apply(&layer.out_proj);
            let y =
                x.apply(&layer.ln_2).apply(&layer.mlp_0).gelu(if tanh { "tanh" } else { "none" });
            x = &x + y.apply(&layer.mlp_3);
        }
        x.apply(&self.ln)
    }
}

impl Encoder for VitEncoder {
    fn output_dim(&self) -> i64 {
        self.config.hidden_size
    }

    fn forward_t(&self, input: &Input, _train: bool) -> Encoded {
        let tokens = self.tokens(&input.values);
        let (b, l, _) = tokens.size3().expect("[B, L, D]");
        let mask = Tensor::ones([b, l], (Kind::Bool, tokens.device()));
        Encoded { pooled: tokens.select(1, 0), seq: Some((tokens, mask)) }
    }

    fn set_backbone_trainable(&self, trainable: bool) {
        self.backbone.set_trainable(trainable);
    }

    fn backbone_parameters(&self) -> Vec<Tensor> {
        self.backbone.parameters()
    }
}

/// Maps a tensor name of transformers' `ViTModel` (or `ViTForImageClassification`, `vit.`
/// prefix) to torchvision's, which [`VitEncoder`] uses: query, key and value fill the thirds of
/// the packed `in_proj`; the pooler and the classifier are skipped. Both namings are read: the
/// Hub's files (`encoder.layer.{i}.attention.attention.query`, `intermediate.dense`, ...) and
/// those transformers 5 writes (`layers.{i}.attention.q_proj`, `mlp.fc1`, ...). Names that are
/// neither (torchvision's own) are kept.
pub fn hf_vit_name(name: &str) -> Mapped {
    let name = name.strip_prefix("vit.").unwrap_or(name);
    if name.starts_with("classifier.") {
        return Mapped::Skip("classifier tensors (the encoder stops before the head)");
    }
    if name.starts_with("pooler.") {
        return Mapped::Skip("pooler tensors (the encoder pools the class token)");
    }
    let fixed = match name {
        "embeddings.cls_token" => Some("class_token"),
        "embeddings.position_embeddings" => Some("encoder.pos_embedding"),
        "embeddings.patch_embeddings.projection.weight" => Some("conv_proj.weight"),
        "embeddings.patch_embeddings.projection.bias" => Some("conv_proj.bias"),
        "layernorm.weight" => Some("encoder.ln.weight"),
        "layernorm.bias" => Some("encoder.ln.bias"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Mapped::To(f.to_string());
    }
    let Some(rest) = name.strip_prefix("encoder.layer.").or_else(|| name.strip_prefix("layers."))
    else {
        return Mapped::To(name.to_string());
    };
    let Some((i, tail)) = rest.split_once('.') else { return Mapped::To(name.to_string()) };
    let Some((module, what)) = tail.rsplit_once('.') else { return Mapped::To(name.to_string()) };
    let layer = format!("encoder.layers.encoder_layer_{i}");
    let part = |index: usize| {
        let packed = if what == "weight" { "in_proj_weight" } else { "in_proj_bias" };
        Mapped::Part { to: format!("{layer}.self_attention.{packed}"), index, of: 3 }
    };
    match module {
        "attention.attention.query" | "attention.q_proj" => part(0),
        "attention.attention.key" | "attention.k_proj" => part(1),
        "attention.attention.value" | "attention.v_proj" => part(2),
        "attention.output.dense" | "attention.o_proj" => {
            Mapped::To(format!("{layer}.self_attention.out_proj.{what}"))
        }
        "layernorm_before" => Mapped::To(format!("{layer}.ln_1.{what}")),
        "layernorm_after" => Mapped::To(format!("{layer}.ln_2.{what}")),
        "intermediate.dense" | "mlp.fc1" => Mapped::To(format!("{layer}.mlp.0.{what}")),
        "output.dense" | "mlp.fc2" => Mapped::To(format!("{layer}.mlp.3.{what}")),
        _ => Mapped::To(name.to_string()),
    }
}

/// torchvision's tensors a ViT encoder does not have (the classification head).
pub const TORCHVISION_HEAD: &str = "heads.";
