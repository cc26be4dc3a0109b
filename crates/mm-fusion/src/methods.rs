//! The fusion methods. Parameter counts are for `M` inputs of sizes `D_m`, output size `d`.
//!
//! | method | paper | parameters | output |
//! | --- | --- | --- | --- |
//! | [`Concat`] | early fusion | 0 | `Σ D_m` (`+ M` presence flags) |
//! | [`WeightedSum`] | the seed's `α·v1 + β·v2 + γ·v3` | `Σ (D_m + 1) d + M` | `d` |
//! | [`Product`] | element-wise (Hadamard) product | `Σ (D_m + 1) d` | `d` |
//! | [`Gated`] | GMU, Arevalo et al. 2017, for `M` inputs | `Σ (D_m + 1) d + (Σ D_m + 1) M d` | `d` |
//! | [`TensorFusion`] | Zadeh et al. 2017 | 0 (or a projection `p` each: `Σ (D_m + 1) p`) | `Π (D_m + 1)` |
//! | [`LowRank`] | Liu et al. 2018 | `r Σ (D_m + 1) d + r + d` | `d` |
//! | [`Attention`] | attention over modality tokens (a learned query) | `Σ (D_m + 1) d + M d + d + 4 (d + 1) d` | `d` |
//! | [`CrossAttention`] | MulT, Tsai et al. 2019 (one layer per target) | `Σ (D_m + 1) d + M (4 (d + 1) d + 2 d)` | `M d` |
//! | [`Late`] | late fusion: a head per modality | `Σ (D_m + 1) C + M` | `C` logits |
//! | [`Film`] | FiLM, Perez et al. 2018: the first input modulated by the rest | `(D_1 + 1) d + (Σ_{m>1} D_m + 1) 2d` | `d` |
//!
//! Every method zeroes absent inputs before using them (so even NaN in an absent slot cannot
//! leak) and handles them as the module documentation says.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::{masked_softmax, Embeddings, Error, Fused, Fusion, Result};

/// Modality `m`'s embedding with absent samples set to zero.
fn clean(inputs: &Embeddings, m: usize) -> Tensor {
    let x = &inputs.pooled[m];
    let p = inputs.present.select(1, m as i64).to_kind(Kind::Bool).unsqueeze(1);
    x.where_self(&p, &x.zeros_like())
}

fn check(dims: &[i64], what: &str, min: usize) -> Result<()> {
    if dims.len() < min || dims.iter().any(|d| *d <= 0) {
        return Err(Error::Config(format!(
            "{what}: needs at least {min} inputs of positive size, got {dims:?}"
        )));
    }
    Ok(())
}

fn positive(v: i64, field: &str) -> Result<i64> {
    if v <= 0 {
        return Err(Error::Config(format!("{field} = {v}: must be positive")));
    }
    Ok(v)
}

fn projections(path: &nn::Path, dims: &[i64], d: i64) -> Vec<nn::Linear> {
    dims.iter()
        .enumerate()
        .map(|(m, &dm)| nn::linear(path / "proj" / m, dm, d, Default::default()))
        .collect()
}

/// Early fusion: the embeddings side by side, absent ones zeroed, optionally followed by the
/// presence flags (so that a model can tell "absent" from "all zeros").
#[derive(Debug)]
pub struct Concat {
    dims: Vec<i64>,
    presence_flags: bool,
}

impl Concat {
    /// Concatenation of inputs of sizes `dims`.
    pub fn new(dims: &[i64], presence_flags: bool) -> Result<Self> {
        check(dims, "concat", 1)?;
        Ok(Concat { dims: dims.to_vec(), presence_flags })
    }
}

impl Fusion for Concat {
    fn output_dim(&self) -> i64 {
        self.dims.iter().sum::<i64>() + if self.presence_flags { self.dims.len() as i64 } else { 0 }
    }

    fn forward_t(&self, inputs: &Embeddings, _train: bool) -> Fused {
        let mut parts: Vec<Tensor> = (0..self.dims.len()).map(|m| clean(inputs, m)).collect();
        if self.presence_flags {
            parts.push(inputs.present_float(parts[0].kind()));
        }
        Fused { fused: Tensor::cat(&parts, 1), weights: None }
    }
}

/// How [`WeightedSum`] and [`Late`] turn their learned weights into mixing weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Normalise {
    /// A softmax over the present modalities (weights positive, summing to 1).
    #[default]
    Softmax,
    /// The raw weights, rescaled when modalities are absent so that they keep their total.
    Free,
}

/// The seed's weighted sum: each modality projected to `d`, then `Σ_m w_m v_m` with learned
/// weights (parameter `weights`, readable with [`WeightedSum::weights`]).
#[derive(Debug)]
pub struct WeightedSum {
    proj: Vec<nn::Linear>,
    logits: Tensor,
    normalise: Normalise,
    dim: i64,
}

impl WeightedSum {
    /// A weighted sum of inputs of sizes `dims` in `dim` dimensions.
    pub fn new(path: &nn::Path, dims: &[i64], dim: i64, normalise: Normalise) -> Result<Self> {
        check(dims, "weighted_sum", 1)?;
        let dim = positive(dim, "weighted_sum.dim")?;
        let m = dims.len() as i64;
        let init = match normalise {
            Normalise::Softmax => nn::Init::Const(0.0),
            Normalise::Free => nn::Init::Const(1.0 / m as f64),
        };
        Ok(WeightedSum {
            proj: projections(path, dims, dim),
            logits: path.var("weights", &[m], init),
            normalise,
            dim,
        })
    }

    /// The mixing weights with every modality present.
    pub fn weights(&self) -> Tensor {
        match self.normalise {
            Normalise::Softmax => self.logits.softmax(0, Kind::Float),
            Normalise::Free => self.logits.shallow_clone(),
        }
    }
}

/// Per-sample mixing weights `[B, M]` from learned `[M]` weights and the presence mask.
fn mixing(logits: &Tensor, present: &Tensor, normalise: Normalise) -> Tensor {
    let b = present.size()[0];
    let p = present.to_kind(logits.kind());
    match normalise {
        Normalise::Softmax => {
            masked_softmax(&logits.unsqueeze(0).expand([b, -1], false), present, 1)
        }
        Normalise::Free => {
            let w = logits.unsqueeze(0) * &p;
            let total = logits.sum(logits.kind());
            let kept = w.sum_dim_intlist(1, true, w.kind());
            // Rescale to the full total; a row whose kept weights sum to 0 stays 0.
            let scale = (total / kept.where_self(&kept.ne(0.0), &kept.ones_like()))
                * kept.ne(0.0).to_kind(w.kind());
            w * scale
        }
    }
}

impl Fusion for WeightedSum {
    fn output_dim(&self) -> i64 {
        self.dim
    }

    fn forward_t(&self, inputs: &Embeddings, _train: bool) -> Fused {
        let w = mixing(&self.logits, &inputs.present, self.normalise);
        let mut fused = Tensor::zeros([w.size()[0], self.dim], (w.kind(), w.device()));
        for (m, proj) in self.proj.iter().enumerate() {
            fused += clean(inputs, m).apply(proj) * w.select(1, m as i64).unsqueeze(1);
        }
        Fused { fused, weights: Some(w) }
    }
}

/// Element-wise product of the projected modalities; an absent one is the identity (all ones).
#[derive(Debug)]
pub struct Product {
    proj: Vec<nn::Linear>,
    dim: i64,
}

impl Product {
    /// A product of inputs of sizes `dims` in `dim` dimensions.
    pub fn new(path: &nn::Path, dims: &[i64], dim: i64) -> Result<Self> {
        check(dims, "product", 1)?;
        let dim = positive(dim, "product.dim")?;
        Ok(Product { proj: projections(path, dims, dim), dim })
    }
}

impl Fusion for Product {
    fn output_dim(&self) -> i64 {
        self.dim
    }

    fn forward_t(&self, inputs: &Embeddings, _train: bool) -> Fused {
        let mut fused: Option<Tensor> = None;
        for (m, proj) in self.proj.iter().enumerate() {
            let v = clean(inputs, m).apply(proj);
            let p = inputs.present_col(m, v.kind());
            let factor = &v * &p + (1.0 - p);
            fused = Some(match fused {
                Some(f) => f * factor,
                None => factor,
            });
        }
        Fused { fused: fused.expect("at least one input"), weights: None }
    }
}

/// A gated multimodal unit (Arevalo et al. 2017) for `M` inputs: `h_m = tanh(W_m x_m)`, gates
/// `z = softmax_m(W_z [x_1; ...; x_M])` per output dimension over the present modalities,
/// output `Σ_m z_m ⊙ h_m`. With two inputs this is the paper's `z h_1 + (1 - z) h_2`.
#[derive(Debug)]
pub struct Gated {
    hidden: Vec<nn::Linear>,
    gate: nn::Linear,
    m: i64,
    dim: i64,
}

impl Gated {
    /// A GMU over inputs of sizes `dims` with `dim` outputs.
    pub fn new(path: &nn::Path, dims: &[i64], dim: i64) -> Result<Self> {
        check(dims, "gated", 1)?;
        let dim = positive(dim, "gated.dim")?;
        let hidden = dims
            .iter()
            .enumerate()
            .map(|(m, &d)| nn::linear(path / "hidden" / m, d, dim, Default::default()))
            .collect();
        let m = dims.len() as i64;
        let gate = nn::linear(path / "gate", dims.iter().sum(), m * dim, Default::default());
        Ok(Gated { hidden, gate, m, dim })
    }
}

impl Fusion for Gated {
    fn output_dim(&self) -> i64 {
        self.dim
    }

    fn forward_t(&self, inputs: &Embeddings, _train: bool) -> Fused {
        let xs: Vec<Tensor> = (0..self.m as usize).map(|m| clean(inputs, m)).collect();
        let b = xs[0].size()[0];
        let z = Tensor::cat(&xs, 1).apply(&self.gate).view([b, self.m, self.dim]);
        let present =
            inputs.present.to_kind(Kind::Bool).unsqueeze(2).expand([b, self.m, self.dim], false);
        let z = masked_softmax(&z, &present, 1);
        let h = Tensor::stack(
            &xs.iter().zip(&self.hidden).map(|(x, l)| x.apply(l).tanh()).collect::<Vec<_>>(),
            1,
        );
        let fused = (&z * h).sum_dim_intlist(1, false, z.kind());
        Fused { fused, weights: Some(z.mean_dim(2, false, z.kind())) }
    }
}

/// Appends a constant 1 to `[B, D]`.
fn with_one(x: &Tensor) -> Tensor {
    Tensor::cat(&[x.shallow_clone(), x.ones_like().narrow(1, 0, 1)], 1)
}

/// Tensor fusion (Zadeh et al. 2017): the outer product of the embeddings, each extended by a
/// constant 1, flattened, so that every unimodal, bimodal and higher interaction is a feature.
/// An optional projection to `p` dimensions per modality keeps the size `(p + 1)^M` in check.
#[derive(Debug)]
pub struct TensorFusion {
    proj: Option<Vec<nn::Linear>>,
    sizes: Vec<i64>,
}

impl TensorFusion {
    /// Tensor fusion of inputs of sizes `dims`, each first projected to `project` if set.
    pub fn new(path: &nn::Path, dims: &[i64], project: Option<i64>) -> Result<Self> {
        check(dims, "tensor", 1)?;
        let proj = project
            .map(|p| positive(p, "tensor.project").map(|p| projections(path, dims, p)))
            .transpose()?;
        let sizes = match project {
            Some(p) => vec![p; dims.len()],
            None => dims.to_vec(),
        };
        let out: i64 = sizes.iter().map(|s| s + 1).product();
        if out > 1 << 24 {
            return Err(Error::Config(format!("tensor fusion of sizes {sizes:?} has {out} outputs; set `project` to a few dimensions")));
        }
        Ok(TensorFusion { proj, sizes })
    }
}

impl Fusion for TensorFusion {
    fn output_dim(&self) -> i64 {
        self.sizes.iter().map(|s| s + 1).product()
    }

    fn forward_t(&self, inputs: &Embeddings, _train: bool) -> Fused {
        let mut out: Option<Tensor> = None;
        for m in 0..self.sizes.len() {
            let x = clean(inputs, m);
            let x = match &self.proj {
                Some(p) => x.apply(&p[m]) * inputs.present_col(m, x.kind()),
                None => x,
            };
            let z = with_one(&x);
            out = Some(match out {
                Some(t) => (t.unsqueeze(2) * z.unsqueeze(1)).flatten(1, 2),
                None => z,
            });
        }
        Fused { fused: out.expect("at least one input"), weights: None }
    }
}

/// Low-rank multimodal fusion (Liu et al. 2018): the tensor-fusion weight decomposed into `r`
/// modality-specific factors, so `h = Σ_i λ_i Π_m (W_m^(i) [x_m; 1]) + b` costs linear, not
/// exponential, size. Parameters `factor.{m}` `[r, D_m + 1, d]`, `rank_weights`, `bias`.
#[derive(Debug)]
pub struct LowRank {
    factors: Vec<Tensor>,
    rank_weights: Tensor,
    bias: Tensor,
    dim: i64,
}

impl LowRank {
    /// Low-rank fusion of inputs of sizes `dims` to `dim` outputs with rank `rank`.
    pub fn new(path: &nn::Path, dims: &[i64], dim: i64, rank: i64) -> Result<Self> {
        check(dims, "low_rank", 1)?;
        let dim = positive(dim, "low_rank.dim")?;
        let rank = positive(rank, "low_rank.rank")?;
        let factors = dims
            .iter()
            .enumerate()
            .map(|(m, &d)| {
                let bound = (6.0 / ((d + 1) + dim) as f64).sqrt();
                (path / "factor").var(
                    &m.to_string(),
                    &[rank, d + 1, dim],
                    nn::Init::Uniform { lo: -bound, up: bound },
                )
            })
            .collect();
        let bound = (6.0 / (1 + rank) as f64).sqrt();
        let rank_weights =
            path.var("rank_weights", &[rank], nn::Init::Uniform { lo: -bound, up: bound });
        let bias = path.zeros("bias", &[dim]);
        Ok(LowRank { factors, rank_weights, bias, dim })
    }
}

impl Fusion for LowRank {
    fn output_dim(&self) -> i64 {
        self.dim
    }

    fn forward_t(&self, inputs: &Embeddings, _train: bool) -> Fused {
        let mut prod: Option<Tensor> = None;
        for (m, w) in self.factors.iter().enumerate() {
            let f = with_one(&clean(inputs, m)).unsqueeze(0).matmul(w); // [r, B, d]
            prod = Some(match prod {
                Some(p) => p * f,
                None => f,
            });
        }
        let prod = prod.expect("at least one input");
        let fused =
            (prod * self.rank_weights.view([-1, 1, 1])).sum_dim_intlist(0, false, self.bias.kind())
                + &self.bias;
        Fused { fused, weights: None }
    }
}

/// Multi-head attention projections named as `torch.nn.MultiheadAttention`'s.
#[derive(Debug)]
struct Mha {
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: nn::Linear,
    heads: i64,
}

impl Mha {
    fn new(path: &nn::Path, dim: i64, heads: i64) -> Result<Self> {
        if heads <= 0 || dim % heads != 0 {
            return Err(Error::Config(format!("heads = {heads} must divide dim = {dim}")));
        }
        let bound = (6.0 / (4 * dim) as f64).sqrt();
        Ok(Mha {
            in_proj_weight: path.var(
                "in_proj_weight",
                &[3 * dim, dim],
                nn::Init::Uniform { lo: -bound, up: bound },
            ),
            in_proj_bias: path.zeros("in_proj_bias", &[3 * dim]),
            out_proj: nn::linear(path / "out_proj", dim, dim, Default::default()),
            heads,
        })
    }

    /// `q` `[B, Tq, d]` attends to `kv` `[B, Tk, d]` where `key_mask` `[B, Tk]` is true;
    /// returns the output `[B, Tq, d]` and, `with_weights`, the head-averaged weights
    /// `[B, Tq, Tk]` (zero rows where no key is present; otherwise an empty tensor and the
    /// fused attention kernel). A query with no key to attend to gets zeros.
    fn forward(
        &self,
        q: &Tensor,
        kv: &Tensor,
        key_mask: &Tensor,
        with_weights: bool,
    ) -> (Tensor, Tensor) {
        let (b, tq, d) = q.size3().expect("[B, T, d]");
        let tk = kv.size()[1];
        let h = self.heads;
        let w = |k: i64| self.in_proj_weight.narrow(0, k * d, d);
        let bias = |k: i64| self.in_proj_bias.narrow(0, k * d, d);
        let split = |x: Tensor, t: i64| x.view([b, t, h, d / h]).transpose(1, 2);
        let qh = split(q.matmul(&w(0).tr()) + bias(0), tq);
        let kh = split(kv.matmul(&w(1).tr()) + bias(1), tk);
        let vh = split(kv.matmul(&w(2).tr()) + bias(2), tk);
        if !with_weights {
            // The fused kernel; a sample with no key keeps key 0 (finite) and is zeroed after.
            let any = key_mask.to_kind(Kind::Bool).any_dim(1, true);
            let first = Tensor::arange(tk, (Kind::Int64, kv.device())).eq(0).unsqueeze(0);
            let mask = key_mask
                .to_kind(Kind::Bool)
                .logical_or(&first.logical_and(&any.logical_not()))
                .view([b, 1, 1, tk]);
            let out = Tensor::scaled_dot_product_attention(
                &qh,
                &kh,
                &vh,
                Some(&mask),
                0.0,
                false,
                None,
                false,
            );
            let out = out.transpose(1, 2).reshape([b, tq, d]).apply(&self.out_proj);
            return (
                out * any.to_kind(q.kind()).unsqueeze(2),
                Tensor::zeros([0], (q.kind(), q.device())),
            );
        }
        let scores = qh.matmul(&kh.transpose(2, 3)) / ((d / h) as f64).sqrt(); // [B, H, Tq, Tk]
        let mask = key_mask.to_kind(Kind::Bool).view([b, 1, 1, tk]).expand([b, h, tq, tk], false);
        let attn = masked_softmax(&scores, &mask, 3);
        let out = attn.matmul(&vh).transpose(1, 2).reshape([b, tq, d]).apply(&self.out_proj);
        (out, attn.mean_dim(1, false, attn.kind()))
    }
}

/// Attention over modality tokens: each modality projected to `d` plus a learned modality
/// embedding becomes a token; a learned query attends over the present tokens (multi-head);
/// the per-sample attention weights are the modality weights.
#[derive(Debug)]
pub struct Attention {
    proj: Vec<nn::Linear>,
    modality: Tensor,
    query: Tensor,
    attn: Mha,
    dim: i64,
}

impl Attention {
    /// Attention fusion of inputs of sizes `dims` in `dim` dimensions with `heads` heads.
    pub fn new(path: &nn::Path, dims: &[i64], dim: i64, heads: i64) -> Result<Self> {
        check(dims, "attention", 1)?;
        let dim = positive(dim, "attention.dim")?;
        Ok(Attention {
            proj: projections(path, dims, dim),
            modality: path.var(
                "modality",
                &[dims.len() as i64, dim],
                nn::Init::Randn { mean: 0.0, stdev: 0.02 },
            ),
            query: path.var("query", &[dim], nn::Init::Randn { mean: 0.0, stdev: 0.02 }),
            attn: Mha::new(&(path / "attn"), dim, heads)?,
            dim,
        })
    }
}

impl Fusion for Attention {
    fn output_dim(&self) -> i64 {
        self.dim
    }

    fn forward_t(&self, inputs: &Embeddings, _train: bool) -> Fused {
        let tokens: Vec<Tensor> =
            self.proj.iter().enumerate().map(|(m, p)| clean(inputs, m).apply(p)).collect();
        let tokens = Tensor::stack(&tokens, 1) + self.modality.unsqueeze(0);
        let b = tokens.size()[0];
        let q = self.query.view([1, 1, self.dim]).expand([b, 1, self.dim], false);
        let (out, w) = self.attn.forward(&q, &tokens, &inputs.present, true);
        Fused { fused: out.squeeze_dim(1), weights: Some(w.squeeze_dim(1)) }
    }
}

/// Cross-modal attention in the manner of MulT (Tsai et al. 2019): every modality's sequence
/// (projected to `d`) attends to the steps of all the other present modalities, with a
/// residual connection and a layer norm; each result is mean-pooled over its valid steps and
/// the `M` vectors are joined. A modality without a sequence is a one-step sequence.
#[derive(Debug)]
pub struct CrossAttention {
    proj: Vec<nn::Linear>,
    cross: Vec<Mha>,
    norms: Vec<nn::LayerNorm>,
    dim: i64,
}

impl CrossAttention {
    /// Cross-modal attention over inputs of sizes `dims` in `dim` dimensions, `heads` heads.
    pub fn new(path: &nn::Path, dims: &[i64], dim: i64, heads: i64) -> Result<Self> {
        check(dims, "cross_attention", 2)?;
        let dim = positive(dim, "cross_attention.dim")?;
        let cross = (0..dims.len())
            .map(|m| Mha::new(&(path / "cross" / m), dim, heads))
            .collect::<Result<Vec<_>>>()?;
        let norms = (0..dims.len())
            .map(|m| nn::layer_norm(path / "norm" / m, vec![dim], Default::default()))
            .collect();
        Ok(CrossAttention { proj: projections(path, dims, dim), cross, norms, dim })
    }
}

impl Fusion for CrossAttention {
    fn output_dim(&self) -> i64 {
        self.dim * self.proj.len() as i64
    }

    fn forward_t(&self, inputs: &Embeddings, _train: bool) -> Fused {
        let seqs: Vec<(Tensor, Tensor)> = (0..self.proj.len())
            .map(|m| {
                let (s, mask) = inputs.seq(m);
                let s = s.where_self(&mask.unsqueeze(-1), &s.zeros_like()).apply(&self.proj[m]);
                (s, mask)
            })
            .collect();
        let mut pooled = Vec::new();
        for (m, (s, mask)) in seqs.iter().enumerate() {
            let others: Vec<usize> = (0..seqs.len()).filter(|&k| k != m).collect();
            let kv = Tensor::cat(
                &others.iter().map(|&k| seqs[k].0.shallow_clone()).collect::<Vec<_>>(),
                1,
            );
            let kmask = Tensor::cat(
                &others.iter().map(|&k| seqs[k].1.shallow_clone()).collect::<Vec<_>>(),
                1,
            );
            let (cross, _) = self.cross[m].forward(s, &kv, &kmask, false);
            let h = (s + cross).apply(&self.norms[m]);
            let mf = mask.to_kind(h.kind()).unsqueeze(-1);
            let mean = (&h * &mf).sum_dim_intlist(1, false, h.kind())
                / mf.sum_dim_intlist(1, false, h.kind()).clamp_min(1.0);
            pooled.push(mean * inputs.present_col(m, h.kind()));
        }
        Fused { fused: Tensor::cat(&pooled, 1), weights: None }
    }
}

/// Late fusion: a linear head per modality gives class logits; the logits are combined with
/// learned weights (softmax over present modalities) or averaged over the present ones. The
/// output is logits, so no task head follows.
#[derive(Debug)]
pub struct Late {
    heads: Vec<nn::Linear>,
    logits: Option<Tensor>,
    classes: i64,
}

impl Late {
    /// Late fusion of inputs of sizes `dims` into `classes` logits; `learned` weights or an
    /// average.
    pub fn new(path: &nn::Path, dims: &[i64], classes: i64, learned: bool) -> Result<Self> {
        check(dims, "late", 1)?;
        let classes = positive(classes, "late.classes")?;
        let heads = dims
            .iter()
            .enumerate()
            .map(|(m, &d)| nn::linear(path / "head" / m, d, classes, Default::default()))
            .collect();
        let logits =
            learned.then(|| path.var("weights", &[dims.len() as i64], nn::Init::Const(0.0)));
        Ok(Late { heads, logits, classes })
    }
}

impl Fusion for Late {
    fn output_dim(&self) -> i64 {
        self.classes
    }

    fn forward_t(&self, inputs: &Embeddings, _train: bool) -> Fused {
        let per: Vec<Tensor> =
            self.heads.iter().enumerate().map(|(m, h)| clean(inputs, m).apply(h)).collect();
        let b = per[0].size()[0];
        let m = per.len() as i64;
        let logits = match &self.logits {
            Some(l) => l.shallow_clone(),
            None => Tensor::zeros([m], (per[0].kind(), per[0].device())),
        };
        let w = masked_softmax(&logits.unsqueeze(0).expand([b, m], false), &inputs.present, 1);
        let fused = (Tensor::stack(&per, 1) * w.unsqueeze(2)).sum_dim_intlist(1, false, w.kind());
        Fused { fused, weights: Some(w) }
    }
}

/// Feature-wise linear modulation (FiLM, Perez et al. 2018): the first input, projected to
/// `dim`, is scaled and shifted per feature by the others (the conditioning), as
/// `(1 + Δγ(c)) ⊙ W x + β(c)` with `Δγ, β` linear in the concatenated conditioning inputs.
/// A multiplicative interaction: `x` and `c` meet in a product, which concatenation followed by
/// a linear layer cannot express. Absent conditioning inputs are zeroed; with none present the
/// modulation is the identity (`Δγ = β = 0`); an absent first input contributes nothing, so the
/// output is then `β(c)`. It has no per-modality weights.
#[derive(Debug)]
pub struct Film {
    project: nn::Linear,
    modulation: nn::Linear,
    m: usize,
    dim: i64,
}

impl Film {
    /// FiLM of the first of the inputs of sizes `dims` by the rest, with `dim` outputs.
    pub fn new(path: &nn::Path, dims: &[i64], dim: i64) -> Result<Self> {
        check(dims, "film", 2)?;
        let dim = positive(dim, "film.dim")?;
        let project = nn::linear(path / "project", dims[0], dim, Default::default());
        let modulation =
            nn::linear(path / "modulation", dims[1..].iter().sum(), 2 * dim, Default::default());
        Ok(Film { project, modulation, m: dims.len(), dim })
    }
}

impl Fusion for Film {
    fn output_dim(&self) -> i64 {
        self.dim
    }

    fn forward_t(&self, inputs: &Embeddings, _train: bool) -> Fused {
        let x =
            clean(inputs, 0).apply(&self.project) * inputs.present_col(0, inputs.pooled[0].kind());
        let c = Tensor::cat(&(1..self.m).map(|m| clean(inputs, m)).collect::<Vec<_>>(), 1);
        let any = inputs
            .present
            .narrow(1, 1, self.m as i64 - 1)
            .to_kind(Kind::Bool)
            .any_dim(1, true)
            .to_kind(x.kind());
        let gb = c.apply(&self.modulation) * &any;
        let (gamma, beta) = (gb.narrow(1, 0, self.dim), gb.narrow(1, self.dim, self.dim));
        Fused { fused: (gamma + 1.0) * x + beta, weights: None }
    }
}
