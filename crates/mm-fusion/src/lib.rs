//! Fusion of modality embeddings: concatenation, weighted sum, product, gated units, tensor and
//! low-rank tensor fusion, attention and late fusion, arranged in parallel or in series. Every
//! method takes the `[B, D_m]` embeddings of a batch plus a `[B, M]` presence mask, so a
//! missing modality is part of the API.
//!
//! - [`Fusion`]: one method over `M` inputs ([`Embeddings`]) to a [`Fused`] `[B, D_out]`, with
//!   per-sample modality weights or gates where the method has them. The methods are in
//!   [`methods`], each with the paper it comes from and its parameter count.
//! - [`FusionConfig`] and [`FusionModel`]: a method, or a tree of methods (fuse image and text,
//!   then the result with audio; or gate between two arrangements), from TOML, over named
//!   modalities.
//!
//! An absent modality contributes nothing, whatever values its embedding holds: concatenation
//! zeroes it, sums and gates renormalise their weights over the present modalities, products
//! treat it as the identity, tensor fusions keep only its constant 1, attention masks it. A
//! sample with no modality at all gets a well-defined (constant) output.
//!
//! ```
//! use mm_fusion::{Embeddings, FusionConfig, FusionModel};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let config: FusionConfig = toml::from_str("method = \"weighted_sum\"\ndim = 16")?;
//! let model = FusionModel::new(&(vs.root() / "fusion"), &config, &[("image", 32), ("audio", 8)])?;
//! let inputs = Embeddings::new(
//!     vec![Tensor::randn([4, 32], (Kind::Float, Device::Cpu)), Tensor::randn([4, 8], (Kind::Float, Device::Cpu))],
//!     Tensor::from_slice(&[true, true, true, false, false, true, true, true]).view([4, 2]), // sample 1 lacks audio, 2 the image
//! );
//! let out = model.forward_t(&inputs, false);
//! assert_eq!(out.fused.size(), [4, 16]);
//! let weights = out.weights.expect("a weighted sum has weights"); // [4, 2], 0 where absent
//! assert_eq!(weights.double_value(&[1, 1]), 0.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Architecture invariant: mm-fusion knows nothing about encoders, data or training; it sees
//! only tensors and the presence mask, and depends on no other mm crate.

pub mod methods;
mod tree;

use tch::{Kind, Tensor};

pub use tree::{FusionConfig, FusionModel, InputRef};

/// Errors of mm-fusion.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration that cannot build a fusion; the message names the field.
    #[error("invalid fusion configuration: {0}")]
    Config(String),
}

/// Result type of mm-fusion.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The inputs of a fusion: per modality a `[B, D_m]` embedding and optionally a `[B, T_m, D_m]`
/// sequence with its `[B, T_m]` mask, plus the `[B, M]` presence mask.
#[derive(Debug)]
pub struct Embeddings {
    /// `[B, D_m]` per modality, in the fusion's input order.
    pub pooled: Vec<Tensor>,
    /// Sequences, for the methods that attend over steps (`None`: the pooled vector is used as
    /// a one-step sequence).
    pub seqs: Vec<Option<(Tensor, Tensor)>>,
    /// `[B, M]`, true (or 1) where the modality is present.
    pub present: Tensor,
}

impl Embeddings {
    /// Pooled embeddings only.
    pub fn new(pooled: Vec<Tensor>, present: Tensor) -> Self {
        let seqs = pooled.iter().map(|_| None).collect();
        Embeddings { pooled, seqs, present }
    }

    /// Every modality present.
    pub fn all_present(pooled: Vec<Tensor>) -> Self {
        let b = pooled.first().map_or(0, |t| t.size()[0]);
        let device = pooled.first().map_or(tch::Device::Cpu, Tensor::device);
        let present = Tensor::ones([b, pooled.len() as i64], (Kind::Bool, device));
        Embeddings::new(pooled, present)
    }

    /// Presence of modality `m` as a `[B, 1]` float column.
    pub fn present_col(&self, m: usize, kind: Kind) -> Tensor {
        self.present.select(1, m as i64).to_kind(kind).unsqueeze(1)
    }

    /// `[B, M]` presence as floats.
    pub fn present_float(&self, kind: Kind) -> Tensor {
        self.present.to_kind(kind)
    }

    /// Modality `m`'s sequence and mask (absent samples masked out), or its pooled vector as a
    /// one-step sequence.
    pub fn seq(&self, m: usize) -> (Tensor, Tensor) {
        let present = self.present.select(1, m as i64).to_kind(Kind::Bool).unsqueeze(1);
        match &self.seqs[m] {
            Some((s, mask)) => (s.shallow_clone(), mask.to_kind(Kind::Bool).logical_and(&present)),
            None => (self.pooled[m].unsqueeze(1), present),
        }
    }
}

/// What a fusion returns.
#[derive(Debug)]
pub struct Fused {
    /// `[B, D_out]`.
    pub fused: Tensor,
    /// `[B, M]` per-sample modality weights or mean gate values, where the method has them
    /// (zero for an absent modality).
    pub weights: Option<Tensor>,
}

/// One fusion method over `M` inputs.
pub trait Fusion: std::fmt::Debug + Send {
    /// Size of the fused output.
    fn output_dim(&self) -> i64;

    /// Fuses a batch; `train` turns dropout on.
    fn forward_t(&self, inputs: &Embeddings, train: bool) -> Fused;
}

/// Softmax over the present entries of `[B, M]` scores; rows with nothing present are zeros.
pub fn masked_softmax(scores: &Tensor, present: &Tensor, dim: i64) -> Tensor {
    let present = present.to_kind(Kind::Bool);
    let any = present.any_dim(dim, true);
    let filled = scores.masked_fill(&present.logical_not(), f64::NEG_INFINITY);
    let safe = filled.where_self(&any, &filled.zeros_like());
    safe.softmax(dim, scores.kind()) * present.to_kind(scores.kind()) * any.to_kind(scores.kind())
}
