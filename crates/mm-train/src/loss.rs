//! Losses: cross-entropy (label smoothing, class weights, ignored targets), binary
//! cross-entropy for multi-label heads, MSE and L1 with a target mask, symmetric InfoNCE with a
//! learnable temperature (CLIP) for cross-modal retrieval, triplet margin, CTC for speech, and
//! a weighted sum of named losses for multi-task heads.
//!
//! Each follows PyTorch's definition (the libtorch kernel where there is one), except that a
//! batch with nothing to learn from (every target ignored or masked) gives a zero loss still
//! connected to the graph, rather than NaN.
//!
//! ```
//! use mm_train::loss::{cross_entropy, CrossEntropy};
//! use tch::{Kind, Tensor};
//!
//! let logits = Tensor::from_slice(&[2.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
//! let targets = Tensor::from_slice(&[0i64, -100]); // the second sample has no label
//! let loss = cross_entropy(&logits, &targets, &CrossEntropy::default());
//! // Only the first sample counts: -log(e² / (e² + 1)).
//! assert!((loss.double_value(&[]) - (1.0f64 + (-2.0f64).exp()).ln()).abs() < 1e-6);
//! ```

use tch::{nn, Kind, Reduction, Tensor};

use crate::{Error, Result};

/// The class id of a sample without a label (mm-data's `NO_LABEL`, PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// Options of [`cross_entropy`].
#[derive(Debug, Default)]
pub struct CrossEntropy {
    /// Per-class weights `[C]` (for imbalance: e.g. inverse frequencies); the mean is then
    /// weighted, as in PyTorch.
    pub class_weights: Option<Tensor>,
    /// Label smoothing in `[0, 1)`: the target puts `1 - ε` on the class and `ε / C` on every
    /// class.
    pub label_smoothing: f64,
}

/// A zero that keeps `x` in the graph (so `backward` works on a batch with nothing to learn).
fn zero_like_graph(x: &Tensor) -> Tensor {
    x.sum(Kind::Float) * 0.0
}

/// Cross-entropy of `[B, C]` logits against `[B]` class ids; ids equal to [`IGNORE`] do not
/// count.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, options: &CrossEntropy) -> Tensor {
    let targets = targets.to_kind(Kind::Int64);
    if targets.ne(IGNORE).any().int64_value(&[]) == 0 {
        return zero_like_graph(logits);
    }
    logits.cross_entropy_loss(
        &targets,
        options.class_weights.as_ref(),
        Reduction::Mean,
        IGNORE,
        options.label_smoothing,
    )
}

/// Inverse-frequency class weights `n / (C · n_c)` from class counts (a class never seen gets
/// weight 0), normalised like scikit-learn's `class_weight="balanced"`.
pub fn balanced_class_weights(counts: &[usize]) -> Tensor {
    let n: usize = counts.iter().sum();
    let c = counts.len() as f64;
    let w: Vec<f32> = counts
        .iter()
        .map(|&k| if k == 0 { 0.0 } else { (n as f64 / (c * k as f64)) as f32 })
        .collect();
    Tensor::from_slice(&w)
}

/// Binary cross-entropy of `[B, C]` logits against multi-hot `[B, C]` targets (mean over every
/// entry); `pos_weight` `[C]` scales the positive term, as in PyTorch.
pub fn binary_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    pos_weight: Option<&Tensor>,
) -> Tensor {
    logits.binary_cross_entropy_with_logits(
        &targets.to_kind(logits.kind()),
        None::<&Tensor>,
        pos_weight,
        Reduction::Mean,
    )
}

/// Mean squared error over the entries where `mask` is true (all when `None`).
pub fn mse(pred: &Tensor, target: &Tensor, mask: Option<&Tensor>) -> Tensor {
    masked_mean(&(pred - target.to_kind(pred.kind())).square(), mask)
}

/// Mean absolute error over the entries where `mask` is true (all when `None`).
pub fn l1(pred: &Tensor, target: &Tensor, mask: Option<&Tensor>) -> Tensor {
    masked_mean(&(pred - target.to_kind(pred.kind())).abs(), mask)
}

fn masked_mean(values: &Tensor, mask: Option<&Tensor>) -> Tensor {
    match mask {
        None => values.mean(values.kind()),
        Some(m) => {
            let m = m.to_kind(values.kind());
            let n = m.sum(values.kind());
            if n.double_value(&[]) == 0.0 {
                return zero_like_graph(values);
            }
            (values * m).sum(values.kind()) / n
        }
    }
}

/// CLIP's learnable temperature: a parameter `logit_scale` (log of the inverse temperature),
/// initialised at `ln(1 / 0.07)` and clamped at `ln(100)` when used.
#[derive(Debug)]
pub struct Temperature {
    logit_scale: Tensor,
}

impl Temperature {
    /// Creates the parameter under `path`.
    pub fn new(path: &nn::Path) -> Self {
        Temperature {
            logit_scale: path.var("logit_scale", &[], nn::Init::Const((1.0f64 / 0.07).ln())),
        }
    }

    /// The current scale `1 / τ`.
    pub fn scale(&self) -> Tensor {
        self.logit_scale.clamp_max(100f64.ln()).exp()
    }
}

/// Symmetric InfoNCE (Radford et al. 2021): row `i` of `a` `[B, D]` and row `i` of `b` are a
/// pair; both are L2-normalised, their cosine similarities scaled by `scale` are logits, and the
/// loss is the mean of the cross-entropies from `a` to `b` and from `b` to `a`.
pub fn info_nce(a: &Tensor, b: &Tensor, scale: &Tensor) -> Tensor {
    let normalise = |x: &Tensor| x / x.norm_scalaropt_dim(2, [1].as_slice(), true).clamp_min(1e-12);
    let logits = normalise(a).matmul(&normalise(b).tr()) * scale;
    let targets = Tensor::arange(a.size()[0], (Kind::Int64, a.device()));
    let none = CrossEntropy::default();
    (cross_entropy(&logits, &targets, &none) + cross_entropy(&logits.tr(), &targets, &none)) / 2.0
}

/// InfoNCE where every pair sharing a label is a positive (supervised contrastive learning,
/// Khosla et al. 2020, across two modalities): each row's target spreads evenly over the items
/// with the row's label; an item without a label (negative, as `-100`) matches only its own
/// pair. With all labels distinct it is [`info_nce`]. For data paired by class (a recording and
/// an image of the same digit), where plain InfoNCE would push same-class items apart.
pub fn info_nce_by_label(a: &Tensor, b: &Tensor, scale: &Tensor, labels: &Tensor) -> Tensor {
    let normalise = |x: &Tensor| x / x.norm_scalaropt_dim(2, [1].as_slice(), true).clamp_min(1e-12);
    let logits = normalise(a).matmul(&normalise(b).tr()) * scale;
    let n = a.size()[0];
    let labels = labels.to_device(a.device());
    let valid = labels.ge(0);
    let same = labels
        .unsqueeze(1)
        .eq_tensor(&labels.unsqueeze(0))
        .logical_and(&valid.unsqueeze(1))
        .logical_and(&valid.unsqueeze(0));
    let positives = same.logical_or(&Tensor::eye(n, (Kind::Bool, a.device()))).to_kind(Kind::Float);
    // Symmetric, so the same targets serve both directions.
    let targets = &positives / positives.sum_dim_intlist([1].as_slice(), true, Kind::Float);
    let one_way = |l: &Tensor| {
        -(&targets * l.log_softmax(1, Kind::Float))
            .sum_dim_intlist([1].as_slice(), false, Kind::Float)
            .mean(Kind::Float)
    };
    (one_way(&logits) + one_way(&logits.tr())) / 2.0
}

/// Triplet margin loss (Euclidean): `mean(max(0, ‖a − p‖ − ‖a − n‖ + margin))`.
pub fn triplet(anchor: &Tensor, positive: &Tensor, negative: &Tensor, margin: f64) -> Tensor {
    Tensor::triplet_margin_loss(
        anchor,
        positive,
        negative,
        margin,
        2.0,
        1e-6,
        false,
        Reduction::Mean,
    )
}

/// Connectionist temporal classification (Graves et al. 2006) for speech: `log_probs`
/// `[T, B, C]` (log-softmax over classes), `targets` `[B, S]` padded, with the lengths of
/// both; `blank` is the blank class. Infinite losses (a target longer than its input allows)
/// count as zero, and the mean is over target lengths, as PyTorch's default.
pub fn ctc(
    log_probs: &Tensor,
    targets: &Tensor,
    input_lengths: &[i64],
    target_lengths: &[i64],
    blank: i64,
) -> Tensor {
    Tensor::ctc_loss(
        log_probs,
        targets,
        input_lengths,
        target_lengths,
        blank,
        Reduction::Mean,
        true,
    )
}

/// A weighted sum of named losses, for a model with several heads.
#[derive(Debug, Clone, Default)]
pub struct MultiTask {
    weights: Vec<(String, f64)>,
}

impl MultiTask {
    /// Losses named in `weights`, each with its weight (finite, non-negative).
    pub fn new(weights: &[(&str, f64)]) -> Result<Self> {
        for (name, w) in weights {
            if !w.is_finite() || *w < 0.0 {
                return Err(Error::Config(format!(
                    "loss weight of {name:?} = {w}: must be finite and non-negative"
                )));
            }
        }
        Ok(MultiTask { weights: weights.iter().map(|(n, w)| (n.to_string(), *w)).collect() })
    }

    /// `Σ w_i · loss_i` over the named `losses` (each must be one of the configured names, and
    /// every configured name must be there).
    pub fn combine(&self, losses: &[(&str, Tensor)]) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for (name, w) in &self.weights {
            let (_, l) = losses
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| Error::Config(format!("no loss named {name:?} this step")))?;
            let term = l * *w;
            total = Some(match total {
                Some(t) => t + term,
                None => term,
            });
        }
        if let Some((extra, _)) =
            losses.iter().find(|(n, _)| !self.weights.iter().any(|(w, _)| w == n))
        {
            return Err(Error::Config(format!("loss {extra:?} has no weight")));
        }
        total.ok_or_else(|| Error::Config("no losses to combine".to_string()))
    }
}
