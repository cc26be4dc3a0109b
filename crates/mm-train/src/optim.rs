//! Optimisers whose whole state is tensors this crate owns, so that a checkpoint can save and
//! restore it exactly (moments included): SGD (momentum, Nesterov, weight decay), Adam (with
//! L2 weight decay, as `torch.optim.Adam`) and AdamW (decoupled weight decay, as
//! `torch.optim.AdamW`); parameter groups with their own learning-rate multiplier and weight
//! decay (a lower rate for a pretrained backbone); global gradient-norm clipping.
//!
//! The update rules are PyTorch's, step for step; the tests compare them with libtorch's own
//! optimisers.
//!
//! ```
//! use mm_train::optim::{Optimizer, OptimizerConfig, Group};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let w = vs.root().var("w", &[3], nn::Init::Const(1.0));
//! let config = OptimizerConfig::AdamW { betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01 };
//! let mut opt = Optimizer::new(&config, vec![Group::new("all", vs.trainable_variables())])?;
//! let loss = (&w * &w).sum(Kind::Float);
//! opt.zero_grad();
//! loss.backward();
//! opt.step(1e-3);
//! assert!(w.double_value(&[0]) < 1.0);
//! # Ok::<(), mm_train::Error>(())
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::{Error, Result};

/// Which optimiser, with its hyper-parameters (the learning rate comes from the schedule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// Stochastic gradient descent.
    Sgd {
        /// Momentum (0: none).
        #[serde(default)]
        momentum: f64,
        /// Nesterov momentum.
        #[serde(default)]
        nesterov: bool,
        /// L2 weight decay added to the gradient.
        #[serde(default)]
        weight_decay: f64,
    },
    /// Adam (Kingma & Ba 2015), weight decay as an L2 term in the gradient.
    Adam {
        /// `(β1, β2)`.
        #[serde(default = "betas")]
        betas: (f64, f64),
        /// Added to the denominator.
        #[serde(default = "eps")]
        eps: f64,
        /// L2 weight decay.
        #[serde(default)]
        weight_decay: f64,
    },
    /// AdamW (Loshchilov & Hutter 2019): decoupled weight decay.
    AdamW {
        /// `(β1, β2)`.
        #[serde(default = "betas")]
        betas: (f64, f64),
        /// Added to the denominator.
        #[serde(default = "eps")]
        eps: f64,
        /// Decoupled weight decay.
        #[serde(default = "adamw_decay")]
        weight_decay: f64,
    },
}

fn betas() -> (f64, f64) {
    (0.9, 0.999)
}
fn eps() -> f64 {
    1e-8
}
fn adamw_decay() -> f64 {
    0.01
}

impl OptimizerConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("optimizer.{m}")));
        match self {
            OptimizerConfig::Sgd { momentum, nesterov, weight_decay } => {
                if !(0.0..1.0).contains(momentum) {
                    return bad(format!("momentum = {momentum}: must be in [0, 1)"));
                }
                if *nesterov && *momentum == 0.0 {
                    return bad("nesterov needs a momentum above 0".to_string());
                }
                if !(weight_decay.is_finite() && *weight_decay >= 0.0) {
                    return bad(format!("weight_decay = {weight_decay}: must be non-negative"));
                }
            }
            OptimizerConfig::Adam { betas, eps, weight_decay }
            | OptimizerConfig::AdamW { betas, eps, weight_decay } => {
                if !(0.0..1.0).contains(&betas.0) || !(0.0..1.0).contains(&betas.1) {
                    return bad(format!("betas = {betas:?}: each must be in [0, 1)"));
                }
                let eps_ok = eps.is_finite() && *eps > 0.0;
                if !(eps_ok && weight_decay.is_finite() && *weight_decay >= 0.0) {
                    return bad(format!("eps = {eps} must be positive and weight_decay = {weight_decay} non-negative"));
                }
            }
        }
        Ok(())
    }

    fn weight_decay(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd { weight_decay, .. }
            | OptimizerConfig::Adam { weight_decay, .. }
            | OptimizerConfig::AdamW { weight_decay, .. } => *weight_decay,
        }
    }
}

/// Parameters that share a learning-rate multiplier and a weight decay.
#[derive(Debug)]
pub struct Group {
    /// Name (used in checkpoints: the state of parameter `i` of group `g` is `g.i.*`).
    pub name: String,
    /// The parameters.
    pub params: Vec<Tensor>,
    /// Multiplier of the scheduled learning rate.
    pub lr_scale: f64,
    /// Weight decay; `None` takes the optimiser's.
    pub weight_decay: Option<f64>,
}

impl Group {
    /// A group at the full rate and the optimiser's weight decay.
    pub fn new(name: &str, params: Vec<Tensor>) -> Self {
        Group { name: name.to_string(), params, lr_scale: 1.0, weight_decay: None }
    }
}

/// An optimiser over parameter groups.
#[derive(Debug)]
pub struct Optimizer {
    config: OptimizerConfig,
    groups: Vec<Group>,
    /// Per group, per parameter: first moment (momentum buffer) and second moment.
    state: Vec<Vec<(Option<Tensor>, Option<Tensor>)>>,
    steps: i64,
}

impl Optimizer {
    /// An optimiser over `groups` (names unique).
    pub fn new(config: &OptimizerConfig, groups: Vec<Group>) -> Result<Self> {
        config.validate()?;
        let mut names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::Config(format!("parameter group names repeat: {names:?}")));
        }
        let state =
            groups.iter().map(|g| g.params.iter().map(|_| (None, None)).collect()).collect();
        Ok(Optimizer { config: config.clone(), groups, state, steps: 0 })
    }

    /// Optimiser steps taken.
    pub fn steps(&self) -> i64 {
        self.steps
    }

    /// Clears every gradient.
    pub fn zero_grad(&mut self) {
        for g in &self.groups {
            for p in &g.params {
                let mut grad = p.grad();
                if grad.defined() {
                    let _ = grad.zero_();
                }
            }
        }
    }

    /// Scales the gradients so that their global L2 norm is at most `max_norm`; returns the
    /// norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let grads: Vec<Tensor> = self
            .groups
            .iter()
            .flat_map(|g| g.params.iter().map(Tensor::grad))
            .filter(Tensor::defined)
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        let total = Tensor::stack(
            &grads.iter().map(|g| g.norm().to_kind(Kind::Float)).collect::<Vec<_>>(),
            0,
        )
        .norm()
        .double_value(&[]);
        if total > max_norm {
            let scale = max_norm / (total + 1e-6);
            tch::no_grad(|| {
                for mut g in grads {
                    let _ = g.g_mul_scalar_(scale);
                }
            });
        }
        total
    }

    /// One update at learning rate `lr` (times each group's multiplier). Parameters without a
    /// gradient (frozen, or unused this step) are left alone.
    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let t = self.steps;
        let config = self.config.clone();
        tch::no_grad(|| {
            for (g, group) in self.groups.iter().enumerate() {
                let lr = lr * group.lr_scale;
                let wd = group.weight_decay.unwrap_or_else(|| config.weight_decay());
                for (i, p) in group.params.iter().enumerate() {
                    let grad = p.grad();
                    if !grad.defined() {
                        continue;
                    }
                    let mut p = p.shallow_clone();
                    let (m, v) = &mut self.state[g][i];
                    match config {
                        OptimizerConfig::Sgd { momentum, nesterov, .. } => {
                            let mut d =
                                if wd != 0.0 { &grad + &p * wd } else { grad.shallow_clone() };
                            if momentum != 0.0 {
                                let buf = match m.take() {
                                    None => d.copy(),
                                    Some(b) => b * momentum + &d,
                                };
                                d = if nesterov {
                                    &d + &buf * momentum
                                } else {
                                    buf.shallow_clone()
                                };
                                *m = Some(buf);
                            }
                            let _ = p.g_sub_(&(d * lr));
                        }
                        OptimizerConfig::Adam { betas, eps, .. }
                        | OptimizerConfig::AdamW { betas, eps, .. } => {
                            let m1 = m.get_or_insert_with(|| p.zeros_like());
                            let m2 = v.get_or_insert_with(|| p.zeros_like());
                            let rule = AdamRule {
                                lr,
                                betas,
                                eps,
                                weight_decay: wd,
                                decoupled: matches!(config, OptimizerConfig::AdamW { .. }),
                                step: t,
                            };
                            if !fused_adam_cpu(&rule, &mut p, &grad, m1, m2) {
                                adam_in_place(&rule, &mut p, &grad, m1, m2);
                            }
                        }
                    }
                }
            }
        });
    }

    /// The state as named tensors (`{group}.{index}.m`, `.v`) and the step count, for a
    /// checkpoint.
    pub fn state_tensors(&self) -> (BTreeMap<String, Tensor>, i64) {
        let mut out = BTreeMap::new();
        for (group, states) in self.groups.iter().zip(&self.state) {
            for (i, (m, v)) in states.iter().enumerate() {
                if let Some(m) = m {
                    out.insert(format!("{}.{i}.m", group.name), m.shallow_clone());
                }
                if let Some(v) = v {
                    out.insert(format!("{}.{i}.v", group.name), v.shallow_clone());
                }
            }
        }
        (out, self.steps)
    }

    /// Restores a state saved by [`Optimizer::state_tensors`]; every tensor must fit a
    /// parameter of this optimiser.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, steps: i64) -> Result<()> {
        let mut state: Vec<Vec<(Option<Tensor>, Option<Tensor>)>> =
            self.groups.iter().map(|g| g.params.iter().map(|_| (None, None)).collect()).collect();
        for (name, t) in tensors {
            let parts: Vec<&str> = name.rsplitn(3, '.').collect();
            let [slot, index, group] = parts.as_slice() else {
                return Err(Error::Config(format!(
                    "optimizer state {name:?}: not `group.index.m|v`"
                )));
            };
            let g = self.groups.iter().position(|x| x.name == *group).ok_or_else(|| {
                Error::Config(format!("optimizer state {name:?}: no group {group:?}"))
            })?;
            let i: usize = index
                .parse()
                .map_err(|_| Error::Config(format!("optimizer state {name:?}: bad index")))?;
            let p = self.groups[g].params.get(i).ok_or_else(|| {
                Error::Config(format!(
                    "optimizer state {name:?}: group {group:?} has {} parameters",
                    self.groups[g].params.len()
                ))
            })?;
            if p.size() != t.size() {
                return Err(Error::Config(format!(
                    "optimizer state {name:?}: shape {:?}, parameter {:?}",
                    t.size(),
                    p.size()
                )));
            }
            // A copy of its own: the optimiser updates its moments in place.
            let t = t.to_device(p.device()).to_kind(p.kind()).copy();
            match *slot {
                "m" => state[g][i].0 = Some(t),
                "v" => state[g][i].1 = Some(t),
                _ => return Err(Error::Config(format!("optimizer state {name:?}: unknown slot"))),
            }
        }
        self.state = state;
        self.steps = steps;
        Ok(())
    }
}

/// One Adam or AdamW update of one parameter, PyTorch's rule: with `g` the gradient (plus
/// `weight_decay · p` for Adam), `m ← β1 m + (1 − β1) g`, `v ← β2 v + (1 − β2) g²`,
/// `p ← p − lr / (1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)`; AdamW first scales `p` by
/// `1 − lr · weight_decay`.
#[derive(Debug, Clone, Copy)]
struct AdamRule {
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
    step: i64,
}

impl AdamRule {
    fn corrections(&self) -> (f64, f64) {
        (
            1.0 - self.betas.0.powi(self.step as i32),
            (1.0 - self.betas.1.powi(self.step as i32)).sqrt(),
        )
    }
}

/// The update with libtorch's in-place operations (any device, any floating kind): the
/// moments are updated where they are, one temporary for the denominator.
fn adam_in_place(rule: &AdamRule, p: &mut Tensor, grad: &Tensor, m: &mut Tensor, v: &mut Tensor) {
    let (bc1, bc2_sqrt) = rule.corrections();
    let coupled;
    let g = if rule.weight_decay != 0.0 && !rule.decoupled {
        coupled = grad + &*p * rule.weight_decay;
        &coupled
    } else {
        grad
    };
    if rule.decoupled && rule.weight_decay != 0.0 {
        let _ = p.g_mul_scalar_(1.0 - rule.lr * rule.weight_decay);
    }
    let _ = m.lerp_(g, 1.0 - rule.betas.0);
    let _ = v.g_mul_scalar_(rule.betas.1);
    let _ = v.addcmul_(&(g * (1.0 - rule.betas.1)), g);
    if rule.lr == 0.0 {
        return; // a frozen group or a warm-up's first step: the moments move, the parameter not
    }
    // p += m / d with d = (√v / √bc2 + ε) · (−bc1 / lr): the step size folded into the divisor.
    let scale = -bc1 / rule.lr;
    let mut d = v.sqrt();
    let _ = d.g_mul_scalar_(scale / bc2_sqrt);
    let _ = d.g_add_scalar_(rule.eps * scale);
    let _ = p.addcdiv_(m, &d);
}

/// Elements below which the fused update runs on the calling thread.
const FUSED_CHUNK: usize = 1 << 15;

/// The update in one pass over memory, for contiguous `f32` tensors on the CPU (each element
/// of the parameter, its gradient and its moments is read and written once, as PyTorch's
/// `fused=True` kernels do), in parallel chunks. Returns `false`, touching nothing, when the
/// tensors do not qualify.
fn fused_adam_cpu(
    rule: &AdamRule,
    p: &mut Tensor,
    grad: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
) -> bool {
    use rayon::prelude::*;
    let n = p.numel();
    let qualifies = |t: &Tensor| {
        t.device() == tch::Device::Cpu
            && t.kind() == Kind::Float
            && t.is_contiguous()
            && t.numel() == n
    };
    if n == 0 || ![&*p, grad, &*m, &*v].into_iter().all(qualifies) {
        return false;
    }
    let ptrs = [p.data_ptr(), grad.data_ptr(), m.data_ptr(), v.data_ptr()];
    if (1..4).any(|i| ptrs[..i].contains(&ptrs[i])) {
        return false; // shared storage: leave it to libtorch
    }
    // SAFETY: all four tensors are contiguous f32 CPU tensors of `n` elements (checked above),
    // at distinct addresses; the parameter and the moments are separate allocations (the
    // moments were made by `zeros_like` or copied on load, gradients are their own tensors),
    // and nothing else runs on them while the optimiser holds them under `no_grad`. The slices
    // live only within this function.
    let (ps, gs, ms, vs) = unsafe {
        (
            std::slice::from_raw_parts_mut(ptrs[0] as *mut f32, n),
            std::slice::from_raw_parts(ptrs[1] as *const f32, n),
            std::slice::from_raw_parts_mut(ptrs[2] as *mut f32, n),
            std::slice::from_raw_parts_mut(ptrs[3] as *mut f32, n),
        )
    };
    let (bc1, bc2_sqrt) = rule.corrections();
    let (b1, b2) = (rule.betas.0 as f32, rule.betas.1 as f32);
    let step = (rule.lr / bc1) as f32;
    let inv_bc2 = (1.0 / bc2_sqrt) as f32;
    let eps = rule.eps as f32;
    let wd = rule.weight_decay as f32;
    let decay = if rule.decoupled { (1.0 - rule.lr * rule.weight_decay) as f32 } else { 1.0 };
    let coupled = if rule.decoupled { 0.0 } else { wd };
    type Chunk<'a> = (((&'a mut [f32], &'a [f32]), &'a mut [f32]), &'a mut [f32]);
    let update = |(((p, g), m), v): Chunk| {
        for i in 0..p.len() {
            let g = g[i] + coupled * p[i];
            let pi = p[i] * decay;
            let mi = b1 * m[i] + (1.0 - b1) * g;
            let vi = b2 * v[i] + (1.0 - b2) * g * g;
            m[i] = mi;
            v[i] = vi;
            p[i] = pi - step * mi / (vi.sqrt() * inv_bc2 + eps);
        }
    };
    if n <= FUSED_CHUNK {
        update((((ps, gs), ms), vs));
    } else {
        ps.par_chunks_mut(FUSED_CHUNK)
            .zip(gs.par_chunks(FUSED_CHUNK))
            .zip(ms.par_chunks_mut(FUSED_CHUNK))
            .zip(vs.par_chunks_mut(FUSED_CHUNK))
            .for_each(update);
    }
    true
}
