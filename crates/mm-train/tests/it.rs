//! Integration tests of mm-train (one target for the crate, to keep link time down).

use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// Smoke test: autograd and libtorch's SGD take one step of known size.
/// Loss = mean((w·x - y)²) with w = 0, x = (1, 2), y = (2, 4): dL/dw = -2·mean(x·y) = -10, so
/// one step at lr 0.01 moves w to 0.1.
#[test]
fn libtorch_sgd_takes_the_expected_step() {
    let vs = nn::VarStore::new(Device::Cpu);
    let w = vs.root().zeros("w", &[1]);
    let mut opt = nn::Sgd::default().build(&vs, 0.01).expect("optimizer");
    let x = Tensor::from_slice(&[1.0f32, 2.0]);
    let y = Tensor::from_slice(&[2.0f32, 4.0]);
    let loss = (&w * &x - &y).square().mean(Kind::Float);
    opt.backward_step(&loss);
    let w_after = w.double_value(&[0]);
    assert!((w_after - 0.1).abs() < 1e-6, "w = {w_after}");
}

/// libtorch's generator is global and tests run in parallel: tests that draw from it (to
/// initialise or to train) take turns, so that training runs are reproducible.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-5, "{what}: {a} vs expected {b}");
}

#[path = "it/dist.rs"]
mod dist;

mod losses {
    use super::close;
    use mm_train::loss::*;
    use tch::{nn, Device, Kind, Tensor};

    fn softplus(x: f64) -> f64 {
        (1.0 + x.exp()).ln()
    }

    #[test]
    fn cross_entropy_matches_hand_computed_values() {
        let logits = Tensor::from_slice(&[2.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let targets = Tensor::from_slice(&[0i64, 1]);
        // Per sample: -log softmax = log(1 + e^-(margin)).
        let (l0, l1) = (softplus(-2.0), softplus(-1.0));
        close(
            cross_entropy(&logits, &targets, &CrossEntropy::default()).double_value(&[]),
            (l0 + l1) / 2.0,
            "plain",
        );
        let weighted = CrossEntropy {
            class_weights: Some(Tensor::from_slice(&[1.0f32, 3.0])),
            ..Default::default()
        };
        close(
            cross_entropy(&logits, &targets, &weighted).double_value(&[]),
            (l0 + 3.0 * l1) / 4.0,
            "class weights",
        );
        // Smoothing ε: (1 - ε)·CE + ε/C·Σ_c -log p_c; sample 0: -log p_1 = 2 + l0.
        let smooth = CrossEntropy { label_smoothing: 0.1, ..Default::default() };
        let s0 = 0.9 * l0 + 0.05 * (l0 + 2.0 + l0);
        let s1 = 0.9 * l1 + 0.05 * (l1 + 1.0 + l1);
        close(
            cross_entropy(&logits, &targets, &smooth).double_value(&[]),
            (s0 + s1) / 2.0,
            "smoothing",
        );
        // Nothing to learn from: zero, and backward still works.
        let x = Tensor::from_slice(&[1.0f32, 2.0]).view([1, 2]).set_requires_grad(true);
        let l = cross_entropy(&x, &Tensor::from_slice(&[IGNORE]), &CrossEntropy::default());
        assert_eq!(l.double_value(&[]), 0.0);
        l.backward();
        assert_eq!(x.grad().abs().sum(Kind::Float).double_value(&[]), 0.0);
        let w = Vec::<f32>::try_from(balanced_class_weights(&[6, 2, 0])).expect("weights");
        assert_eq!(w, [8.0 / 18.0, 8.0 / 6.0, 0.0]);
    }

    #[test]
    fn regression_and_binary_losses_match_hand_computed_values() {
        let bce = binary_cross_entropy(
            &Tensor::from_slice(&[0.0f32, 2.0]).view([1, 2]),
            &Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]),
            None,
        );
        close(bce.double_value(&[]), (2f64.ln() + softplus(2.0)) / 2.0, "bce");
        let pred = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let target = Tensor::from_slice(&[1.0f32, 0.0, 0.0]);
        let mask = Tensor::from_slice(&[true, true, false]);
        close(mse(&pred, &target, Some(&mask)).double_value(&[]), 2.0, "masked mse");
        close(mse(&pred, &target, None).double_value(&[]), 13.0 / 3.0, "mse");
        close(l1(&pred, &target, Some(&mask)).double_value(&[]), 1.0, "masked l1");
        let none = Tensor::from_slice(&[false, false, false]);
        assert_eq!(mse(&pred, &target, Some(&none)).double_value(&[]), 0.0);
    }

    #[test]
    fn contrastive_triplet_and_ctc_losses_match_hand_computed_values() {
        // Orthogonal pairs at scale 1: each row's logits are (1, 0), so the loss is log(1 + e^-1).
        let a = Tensor::from_slice(&[3.0f32, 0.0, 0.0, 0.5]).view([2, 2]);
        let b = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 2.0]).view([2, 2]);
        close(
            info_nce(&a, &b, &Tensor::from(1.0f32)).double_value(&[]),
            softplus(-1.0),
            "info_nce",
        );
        let vs = nn::VarStore::new(Device::Cpu);
        let t = Temperature::new(&(vs.root() / "clip"));
        close(t.scale().double_value(&[]), 1.0 / 0.07, "CLIP's initial scale");
        close(
            info_nce(&a, &b, &t.scale()).double_value(&[]),
            softplus(-1.0 / 0.07),
            "info_nce at 1/0.07",
        );
        // By label: with distinct labels, or none, it is plain InfoNCE.
        let one = Tensor::from(1.0f32);
        close(
            info_nce_by_label(&a, &b, &one, &Tensor::from_slice(&[4i64, 7])).double_value(&[]),
            softplus(-1.0),
            "distinct labels",
        );
        close(
            info_nce_by_label(&a, &b, &one, &Tensor::from_slice(&[-100i64, -100]))
                .double_value(&[]),
            softplus(-1.0),
            "no labels",
        );
        // Labels [0, 0, 1] on items x, x, y (x ⟂ y): logits rows (1, 1, 0), (1, 1, 0), (0, 0, 1).
        // Rows 0 and 1 target (1/2, 1/2, 0): loss ln(2e + 1) - 1 each; row 2: ln(2 + e) - 1.
        let x = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0, 0.0, 1.0]).view([3, 2]);
        let e = std::f64::consts::E;
        let want = (2.0 * ((2.0 * e + 1.0).ln() - 1.0) + (2.0 + e).ln() - 1.0) / 3.0;
        close(
            info_nce_by_label(&x, &x, &one, &Tensor::from_slice(&[0i64, 0, 1])).double_value(&[]),
            want,
            "same-label positives",
        );
        let anchor = Tensor::from_slice(&[0.0f32, 0.0, 0.0, 0.0]).view([2, 2]);
        let pos = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0]).view([2, 2]);
        let neg = Tensor::from_slice(&[3.0f32, 0.0, 1.5, 0.0]).view([2, 2]);
        // max(0, 1 - 3 + 1) = 0 and max(0, 1 - 1.5 + 1) = 0.5.
        close(triplet(&anchor, &pos, &neg, 1.0).double_value(&[]), 0.25, "triplet");
        // CTC, blank 0, target [1] over two steps with p(1) = 0.6 then 0.5: the paths 11, 01 and
        // 10 sum to 0.6·0.5 + 0.4·0.5 + 0.6·0.5 = 0.8.
        let probs = Tensor::from_slice(&[0.4f32, 0.6, 0.5, 0.5]).view([2, 1, 2]);
        let loss = ctc(&probs.log(), &Tensor::from_slice(&[1i64]).view([1, 1]), &[2], &[1], 0);
        close(loss.double_value(&[]), -(0.8f64.ln()), "ctc");
    }

    #[test]
    fn multi_task_losses_are_weighted_and_named() {
        let m = MultiTask::new(&[("class", 1.0), ("retrieval", 0.5)]).expect("weights");
        let total = m
            .combine(&[("class", Tensor::from(2.0f32)), ("retrieval", Tensor::from(4.0f32))])
            .expect("sum");
        close(total.double_value(&[]), 4.0, "weighted sum");
        let e = m.combine(&[("class", Tensor::from(2.0f32))]).expect_err("missing").to_string();
        assert!(e.contains("retrieval"), "{e}");
        let e = m
            .combine(&[
                ("class", Tensor::from(1.0f32)),
                ("retrieval", Tensor::from(1.0f32)),
                ("extra", Tensor::from(1.0f32)),
            ])
            .expect_err("extra")
            .to_string();
        assert!(e.contains("extra"), "{e}");
        assert!(MultiTask::new(&[("x", f64::NAN)]).is_err());
    }
}

mod metrics {
    use super::close;
    use mm_train::metrics::*;

    #[test]
    fn classification_metrics_match_hand_computed_values() {
        let truth = [0, 0, 1, 1, 2];
        let pred = [0, 1, 1, 1, 0];
        let s = per_class(&pred, &truth, 3);
        close(s[0].precision, 0.5, "p0");
        close(s[0].recall, 0.5, "r0");
        close(s[1].precision, 2.0 / 3.0, "p1");
        close(s[1].recall, 1.0, "r1");
        close(s[1].f1, 0.8, "f1 1");
        assert_eq!((s[2].precision, s[2].recall, s[2].f1, s[2].support), (0.0, 0.0, 0.0, 1));
        // A class that never occurs is left out of the macro average.
        close(macro_f1(&pred, &truth, 4), 1.3 / 3.0, "macro-F1 with an unused class");
        let scores = [0.1f32, 0.5, 0.4, 0.3, 0.3, 0.4];
        assert_eq!(argmax(&scores, 3), [1, 2]);
        close(top_k(&scores, 3, &[2, 0], 1), 0.0, "top-1");
        close(top_k(&scores, 3, &[2, 0], 2), 1.0, "top-2 (a tie ranks by class order)");
    }

    #[test]
    fn auroc_matches_hand_computed_values() {
        // scikit-learn's documented example: 0.75.
        close(
            auroc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).expect("defined"),
            0.75,
            "binary",
        );
        close(auroc(&[0.5, 0.5, 0.5], &[true, false, false]).expect("defined"), 0.5, "ties");
        assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
        // One-vs-rest: class 0 has 3 of 4 pairs right, classes 1 and 2 all; class 3 is absent.
        let truth = [0, 1, 2, 0];
        let scores =
            [0.9f32, 0.05, 0.05, 0.0, 0.1, 0.8, 0.1, 0.0, 0.35, 0.3, 0.5, 0.0, 0.3, 0.6, 0.1, 0.0];
        let (per, mean) = auroc_ovr(&scores, 4, &truth);
        close(per[0].expect("class 0"), 0.75, "class 0");
        close(per[1].expect("class 1"), 1.0, "class 1");
        assert_eq!(per[3], None);
        close(mean.expect("mean"), 2.75 / 3.0, "macro AUROC");
    }

    #[test]
    fn regression_and_retrieval_metrics_match_hand_computed_values() {
        close(mae(&[1.0, 2.0, 3.0], &[2.0, 2.0, 5.0]), 1.0, "mae");
        close(mse(&[1.0, 2.0, 3.0], &[2.0, 2.0, 5.0]), 5.0 / 3.0, "mse");
        // cov 5, var 2 and 114/9.
        close(
            pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 7.0]).expect("defined"),
            5.0 / (2.0f64 * 114.0 / 9.0).sqrt(),
            "pearson",
        );
        assert_eq!(pearson(&[1.0, 1.0], &[1.0, 2.0]), None);
        let sim = [0.9f32, 0.1, 0.2, 0.8, 0.5, 0.3, 0.1, 0.2, 0.3];
        let (fwd, bwd) = retrieval(&sim, 3);
        // Forward ranks 1, 2, 1; backward 1, 1, 2 (a tie counts against the match).
        assert_eq!(match_ranks(&sim, 3), [1, 2, 1]);
        close(fwd.recall[0], 2.0 / 3.0, "R@1");
        close(fwd.recall[1], 1.0, "R@5");
        close(fwd.median_rank, 1.0, "median rank");
        close(fwd.mrr, 2.5 / 3.0, "MRR");
        close(bwd.recall[0], 2.0 / 3.0, "backward R@1");
        close(bwd.mrr, 2.5 / 3.0, "backward MRR");
        // By class, labels [0, 1, 0]. Query 0 orders the gallery 0, 2, 1: relevant at ranks 1
        // and 2, AP 1. Query 1 orders it 0, 1, 2: its one relevant item at rank 2, AP 1/2, no
        // hit at 1. Query 2 orders it 2, 1, 0: relevant at ranks 1 and 3, AP (1 + 2/3) / 2.
        let labels = [0, 1, 0];
        let by_class = class_retrieval(&sim, 3, &labels, &labels);
        close(by_class.recall[0], 2.0 / 3.0, "class R@1");
        close(by_class.recall[1], 1.0, "class R@5");
        close(by_class.map, (1.0 + 0.5 + (1.0 + 2.0 / 3.0) / 2.0) / 3.0, "class mAP");
        assert_eq!(transpose(&sim, 3), [0.9, 0.8, 0.1, 0.1, 0.5, 0.2, 0.2, 0.3, 0.3]);
    }
}

mod optimisers {
    use std::collections::BTreeMap;

    use mm_train::checkpoint::{self, TrainState};
    use mm_train::optim::{Group, Optimizer, OptimizerConfig};
    use tch::nn::{self, Module, OptimizerConfig as _};
    use tch::{Device, Kind, Tensor};

    /// A small regression problem with fixed data (no global random generator involved).
    fn data() -> (Tensor, Tensor) {
        let x: Vec<f32> = (0..32 * 4).map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0).collect();
        let y: Vec<f32> = (0..32 * 3).map(|i| ((i * 11 % 13) as f32 - 6.0) / 6.0).collect();
        (Tensor::from_slice(&x).view([32, 4]), Tensor::from_slice(&y).view([32, 3]))
    }

    fn model(vs: &nn::VarStore) -> nn::Linear {
        let l = nn::linear(vs.root() / "l", 4, 3, Default::default());
        tch::no_grad(|| {
            let w: Vec<f32> = (0..12).map(|i| (i as f32 - 6.0) / 10.0).collect();
            l.ws.shallow_clone().copy_(&Tensor::from_slice(&w).view([3, 4]));
            let _ = l.bs.as_ref().expect("bias").shallow_clone().fill_(0.1);
        });
        l
    }

    fn loss(l: &nn::Linear) -> Tensor {
        let (x, y) = data();
        let kind = l.ws.kind();
        (l.forward(&x.to_kind(kind)) - y.to_kind(kind)).square().mean(kind)
    }

    fn params(vs: &nn::VarStore) -> BTreeMap<String, Tensor> {
        vs.variables().into_iter().map(|(k, v)| (k, v.copy())).collect()
    }

    /// Our update rules against libtorch's own optimisers, step for step: in `f32` on the CPU
    /// (Adam's fused one-pass update) and in `f64` (libtorch's in-place operations, the path
    /// every other device and kind takes).
    #[test]
    fn sgd_adam_and_adamw_match_libtorch() {
        let _rng = super::rng_lock();
        type Reference = Box<dyn Fn(&nn::VarStore) -> nn::Optimizer>;
        let cases: Vec<(OptimizerConfig, Reference)> = vec![
            (
                OptimizerConfig::Sgd { momentum: 0.9, nesterov: true, weight_decay: 0.01 },
                Box::new(|vs| {
                    nn::Sgd { momentum: 0.9, dampening: 0.0, wd: 0.01, nesterov: true }
                        .build(vs, 0.05)
                        .expect("sgd")
                }),
            ),
            (
                OptimizerConfig::Sgd { momentum: 0.5, nesterov: false, weight_decay: 0.0 },
                Box::new(|vs| {
                    nn::Sgd { momentum: 0.5, dampening: 0.0, wd: 0.0, nesterov: false }
                        .build(vs, 0.05)
                        .expect("sgd")
                }),
            ),
            (
                OptimizerConfig::Adam { betas: (0.9, 0.99), eps: 1e-8, weight_decay: 0.01 },
                Box::new(|vs| {
                    nn::Adam { beta1: 0.9, beta2: 0.99, wd: 0.01, eps: 1e-8, amsgrad: false }
                        .build(vs, 0.05)
                        .expect("adam")
                }),
            ),
            (
                OptimizerConfig::AdamW { betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.1 },
                Box::new(|vs| {
                    nn::AdamW { beta1: 0.9, beta2: 0.999, wd: 0.1, eps: 1e-8, amsgrad: false }
                        .build(vs, 0.05)
                        .expect("adamw")
                }),
            ),
        ];
        for ((config, theirs), kind) in
            cases.iter().flat_map(|c| [(c, Kind::Float), (c, Kind::Double)])
        {
            let mut vs_a = nn::VarStore::new(Device::Cpu);
            let a = model(&vs_a);
            vs_a.set_kind(kind);
            let mut ours =
                Optimizer::new(config, vec![Group::new("all", vs_a.trainable_variables())])
                    .expect("optimizer");
            let mut vs_b = nn::VarStore::new(Device::Cpu);
            let b = model(&vs_b);
            vs_b.set_kind(kind);
            let mut reference = theirs(&vs_b);
            for _ in 0..6 {
                ours.zero_grad();
                loss(&a).backward();
                ours.step(0.05);
                reference.backward_step(&loss(&b));
            }
            let (pa, pb) = (params(&vs_a), params(&vs_b));
            for (name, t) in &pa {
                let d = (t - &pb[name]).abs().max().double_value(&[]);
                // f32: a few units in the last place per step (another order of operations).
                let tolerance = if kind == Kind::Float { 1e-5 } else { 1e-10 };
                assert!(
                    d < tolerance,
                    "{config:?} in {kind:?}: {name} differs from libtorch's by {d}"
                );
            }
        }
    }

    /// A group at rate 0 (a frozen backbone, the first step of a warm-up) keeps its parameters
    /// exactly, on both of Adam's paths.
    #[test]
    fn adam_at_rate_zero_leaves_parameters_alone() {
        let _rng = super::rng_lock();
        for kind in [Kind::Float, Kind::Double] {
            let mut vs = nn::VarStore::new(Device::Cpu);
            let l = model(&vs);
            // A parameter whose gradient is exactly zero (a dead unit, an unused embedding row):
            // its second moment stays 0.
            let unused = vs.root().var("unused", &[4], nn::Init::Const(1.0));
            vs.set_kind(kind);
            let before = params(&vs);
            let mut frozen = Group::new("frozen", vs.trainable_variables());
            frozen.lr_scale = 0.0;
            let mut opt = Optimizer::new(
                &OptimizerConfig::AdamW { betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01 },
                vec![frozen],
            )
            .expect("opt");
            for _ in 0..3 {
                opt.zero_grad();
                (loss(&l) + (&unused * 0.0).sum(kind)).backward();
                opt.step(0.1);
            }
            for (name, t) in params(&vs) {
                assert_eq!(
                    (&t - &before[&name]).abs().max().double_value(&[]),
                    0.0,
                    "{kind:?}: {name} moved"
                );
            }
            let (moments, _) = opt.state_tensors();
            assert!(
                moments.values().all(|m| m.isfinite().all().int64_value(&[]) == 1),
                "{kind:?}: moments not finite"
            );
        }
    }

    #[test]
    fn groups_scale_the_rate_and_clipping_bounds_the_norm() {
        let _rng = super::rng_lock();
        let vs = nn::VarStore::new(Device::Cpu);
        let l = model(&vs);
        let before = params(&vs);
        let mut backbone = Group::new("backbone", vec![l.ws.shallow_clone()]);
        backbone.lr_scale = 0.0; // frozen by its rate
        let head = Group::new("head", vec![l.bs.as_ref().expect("bias").shallow_clone()]);
        let mut opt = Optimizer::new(
            &OptimizerConfig::Sgd { momentum: 0.0, nesterov: false, weight_decay: 0.0 },
            vec![backbone, head],
        )
        .expect("opt");
        opt.zero_grad();
        (loss(&l) * 1000.0).backward();
        let norm = opt.clip_grad_norm(1.0);
        assert!(norm > 1.0);
        let clipped =
            Tensor::stack(&[l.ws.grad().norm(), l.bs.as_ref().expect("bias").grad().norm()], 0)
                .norm()
                .double_value(&[]);
        assert!((clipped - 1.0).abs() < 1e-4, "norm after clipping {clipped}");
        opt.step(0.1);
        let after = params(&vs);
        assert_eq!((&after["l.weight"] - &before["l.weight"]).abs().max().double_value(&[]), 0.0);
        assert!((&after["l.bias"] - &before["l.bias"]).abs().max().double_value(&[]) > 0.0);
        let e = Optimizer::new(
            &OptimizerConfig::Sgd { momentum: 0.0, nesterov: true, weight_decay: 0.0 },
            vec![],
        )
        .expect_err("nesterov")
        .to_string();
        assert!(e.contains("nesterov"), "{e}");
    }

    /// A checkpoint cut short at seeded random offsets (its weights, its optimiser state or its
    /// record), or a record naming files outside its folder, is refused with an error that names
    /// the file; nothing panics and nothing loads half.
    #[test]
    fn truncated_or_foreign_checkpoints_are_refused_by_name() {
        let _rng = super::rng_lock();
        let dir = std::env::temp_dir().join(format!("mm-train-truncated-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let vs = nn::VarStore::new(Device::Cpu);
        let l = model(&vs);
        let config = OptimizerConfig::AdamW { betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01 };
        let mut opt = Optimizer::new(&config, vec![Group::new("all", vs.trainable_variables())])
            .expect("optimizer");
        opt.zero_grad();
        loss(&l).backward();
        opt.step(0.01);
        let state = TrainState { epoch: 1, step: 1, ..Default::default() };
        checkpoint::save(&dir, "last", &vs, &opt, &state).expect("save");
        let fresh = || {
            let vs = nn::VarStore::new(Device::Cpu);
            let _ = model(&vs);
            let opt = Optimizer::new(&config, vec![Group::new("all", vs.trainable_variables())])
                .expect("optimizer");
            (vs, opt)
        };
        {
            let (vs, mut opt) = fresh();
            assert_eq!(
                checkpoint::load(&dir, "last", &vs, &mut opt)
                    .expect("the whole checkpoint loads")
                    .epoch,
                1
            );
        }
        let files = ["last-000001.safetensors", "last-000001.optimizer.safetensors", "last.json"];
        let mut rng: u64 = 7;
        let mut cuts = 0;
        for file in files {
            let path = dir.join(file);
            let whole = std::fs::read(&path).expect("read");
            for _ in 0..12 {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let at = (rng >> 33) as usize % whole.len();
                std::fs::write(&path, &whole[..at]).expect("truncate");
                let (vs, mut opt) = fresh();
                let e = checkpoint::load(&dir, "last", &vs, &mut opt)
                    .expect_err("a truncated checkpoint")
                    .to_string();
                assert!(e.contains(file), "{file} cut at {at} of {}: {e}", whole.len());
                cuts += 1;
            }
            std::fs::write(&path, &whole).expect("restore");
        }
        // A record from a stranger pointing elsewhere.
        let record = std::fs::read_to_string(dir.join("last.json")).expect("record");
        for elsewhere in ["../../etc/passwd", "/etc/passwd", "sub/last-000001.safetensors"] {
            std::fs::write(
                dir.join("last.json"),
                record.replace("last-000001.safetensors", elsewhere),
            )
            .expect("write");
            let (vs, mut opt) = fresh();
            let e = checkpoint::load(&dir, "last", &vs, &mut opt)
                .expect_err("outside the folder")
                .to_string();
            assert!(
                e.contains("not a file in the checkpoint folder") && e.contains("last.json"),
                "{e}"
            );
            let e = checkpoint::load_weights(&dir, "last", &vs)
                .expect_err("outside the folder")
                .to_string();
            assert!(e.contains("not a file in the checkpoint folder"), "{e}");
        }
        assert_eq!(cuts, 36);
        std::fs::remove_dir_all(dir).ok();
    }

    /// Train 10 steps straight; train 4, checkpoint, restore into a fresh model and optimiser,
    /// train 6 more: the parameters agree exactly (Adam's moments included).
    #[test]
    fn a_resumed_run_continues_exactly() {
        let _rng = super::rng_lock();
        let dir = std::env::temp_dir().join(format!("mm-train-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = OptimizerConfig::AdamW { betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01 };
        let run = |vs: &nn::VarStore, l: &nn::Linear, opt: &mut Optimizer, steps: usize| {
            for _ in 0..steps {
                opt.zero_grad();
                loss(l).backward();
                opt.step(0.01);
            }
            let _ = vs;
        };
        let vs_a = nn::VarStore::new(Device::Cpu);
        let a = model(&vs_a);
        let mut opt_a =
            Optimizer::new(&config, vec![Group::new("all", vs_a.trainable_variables())])
                .expect("opt");
        run(&vs_a, &a, &mut opt_a, 10);

        let vs_b = nn::VarStore::new(Device::Cpu);
        let b = model(&vs_b);
        let mut opt_b =
            Optimizer::new(&config, vec![Group::new("all", vs_b.trainable_variables())])
                .expect("opt");
        run(&vs_b, &b, &mut opt_b, 4);
        let state = TrainState { epoch: 1, step: 4, seed: 7, ..Default::default() };
        checkpoint::save(&dir, "last", &vs_b, &opt_b, &state).expect("save");
        // A second save replaces the first and leaves only its own files.
        checkpoint::save(&dir, "last", &vs_b, &opt_b, &state).expect("save again");
        let files = std::fs::read_dir(&dir).expect("list").count();
        assert_eq!(files, 3, "last.json and its two files");

        let vs_c = nn::VarStore::new(Device::Cpu);
        let c = nn::linear(vs_c.root() / "l", 4, 3, Default::default()); // other initial values
        let mut opt_c =
            Optimizer::new(&config, vec![Group::new("all", vs_c.trainable_variables())])
                .expect("opt");
        let restored = checkpoint::load(&dir, "last", &vs_c, &mut opt_c).expect("load");
        assert_eq!(restored, state);
        assert_eq!(opt_c.steps(), 4);
        run(&vs_c, &c, &mut opt_c, 6);
        let (pa, pc) = (params(&vs_a), params(&vs_c));
        for (name, t) in &pa {
            assert_eq!(
                (t - &pc[name]).abs().max().double_value(&[]),
                0.0,
                "{name} differs after resume"
            );
        }

        // A record naming a damaged file is an error that names it; nothing half-loads.
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("last.json")).expect("record"))
                .expect("json");
        let weights = dir.join(record["weights"].as_str().expect("name"));
        let bytes = std::fs::read(&weights).expect("weights");
        std::fs::write(&weights, &bytes[..bytes.len() / 2]).expect("truncate");
        let vs_d = nn::VarStore::new(Device::Cpu);
        let _d = nn::linear(vs_d.root() / "l", 4, 3, Default::default());
        let mut opt_d =
            Optimizer::new(&config, vec![Group::new("all", vs_d.trainable_variables())])
                .expect("opt");
        let e =
            checkpoint::load(&dir, "last", &vs_d, &mut opt_d).expect_err("truncated").to_string();
        assert!(e.contains(weights.file_name().expect("name").to_str().expect("utf-8")), "{e}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}

mod training {
    use std::sync::Arc;

    use mm_data::manifest::{Manifest, Split};
    use mm_data::mel::MelConfig;
    use mm_data::pipeline::{AudioSpec, Pipeline, TextSpec};
    use mm_data::text::{VocabBuilder, WordTokenizer};
    use mm_datasets::synth::{generate, SynthConfig, CLASSES};
    use mm_train::model::{DataShape, Model, ModelConfig};
    use mm_train::train::{fit, TrainConfig};
    use tch::{nn, Device};

    /// Writes a synthetic data set under a fresh folder and loads it.
    pub(super) fn data(
        name: &str,
        samples: usize,
    ) -> (std::path::PathBuf, Arc<Manifest>, Arc<Pipeline>) {
        let dir = std::env::temp_dir().join(format!("mm-train-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = SynthConfig {
            samples,
            image_size: 16,
            frame_size: 16,
            frames: 2,
            duration: 0.4,
            seed: 11,
            ..SynthConfig::default()
        };
        generate(&dir.join("data"), &config, false).expect("synthetic data");
        let (manifest, pipeline) = load(&dir);
        (dir, manifest, pipeline)
    }

    /// The manifest and pipeline (caption and sound) of the data under `dir`.
    pub(super) fn load(dir: &std::path::Path) -> (Arc<Manifest>, Arc<Pipeline>) {
        let manifest = Manifest::read(dir.join("data/manifest.jsonl")).expect("manifest");
        let tokenizer = WordTokenizer::default();
        let vocab = VocabBuilder::default()
            .build(&tokenizer, manifest.split(Split::Train).filter_map(|s| s.text.as_deref()));
        let mut p = Pipeline::new(CLASSES.iter().map(|c| c.to_string()).collect());
        p.audio =
            Some(AudioSpec::new(&MelConfig { n_mels: 32, ..MelConfig::default() }).expect("mel"));
        p.text = Some(TextSpec::words(tokenizer, vocab, 32));
        p.fit_statistics(&manifest).expect("statistics");
        (Arc::new(manifest), Arc::new(p))
    }

    const MODEL: &str = r#"
        [encoders.text]
        kind = "text"
        dim = 32
        pooling = "mean"

        [encoders.audio]
        kind = "audio"
        backbone = { type = "cnn", channels = [8, 16] }
        pooling = "mean"

        [fusion]
        method = "concat"

        [head]
        type = "classification"
        hidden = [32]
    "#;

    fn manifest_val_count(dir: &std::path::Path) -> u64 {
        Manifest::read(dir.join("data/manifest.jsonl")).expect("manifest").split(Split::Val).count()
            as u64
    }

    pub(super) fn build_model(
        vs: &nn::VarStore,
        pipeline: &Pipeline,
        manifest: &Manifest,
    ) -> Model {
        let config: ModelConfig = toml::from_str(MODEL).expect("model config");
        let counts = (0..CLASSES.len())
            .map(|c| {
                manifest
                    .split(Split::Train)
                    .filter(|s| s.label.as_deref() == Some(CLASSES[c]))
                    .count()
            })
            .collect();
        Model::new(&vs.root(), &config, &DataShape::from_pipeline(pipeline, counts)).expect("model")
    }

    /// The fused label of the synthetic data (caption + sound) is learned to 90 % and more in
    /// ten epochs (97 % measured); each modality alone could not pass about half.
    #[test]
    fn a_fused_model_learns_the_synthetic_task() {
        let _rng = super::rng_lock();
        let (dir, manifest, pipeline) = data("fit", 600);
        let vs = nn::VarStore::new(Device::Cpu);
        tch::manual_seed(0);
        let model = build_model(&vs, &pipeline, &manifest);
        let config =
            TrainConfig { epochs: 10, batch_size: 32, lr: 1e-2, seed: 1, ..TrainConfig::default() };
        let report = fit(&model, &vs, manifest, pipeline, &config, &dir.join("run"), false)
            .expect("training");
        let last = report.history.last().expect("epochs");
        let accuracy = last["val"]["accuracy"].as_f64().expect("accuracy");
        eprintln!("validation accuracy after {} epochs: {accuracy:.3}", report.history.len());
        assert!(accuracy >= 0.9, "{accuracy}");
        let lines = std::fs::read_to_string(dir.join("run/metrics.jsonl"))
            .expect("metrics")
            .lines()
            .count();
        assert_eq!(lines, 10);
        assert!(
            dir.join("run/checkpoints/best.json").is_file()
                && dir.join("run/checkpoints/last.json").is_file()
        );
        let svg = std::fs::read_to_string(dir.join("run/curves.svg")).expect("curves");
        assert!(
            svg.starts_with("<svg") && svg.contains("accuracy") && svg.contains("<polyline"),
            "{}",
            &svg[..svg.len().min(200)]
        );
        let confusion = last["val"]["confusion"].as_array().expect("confusion matrix");
        let total: u64 = confusion
            .iter()
            .flat_map(|r| r.as_array().expect("row").iter().map(|x| x.as_u64().expect("count")))
            .sum();
        assert_eq!(total, manifest_val_count(&dir));

        // Rebuilt from the run's folder alone: the best checkpoint gives the best epoch's metrics.
        let resolved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("run/config.json")).expect("config"))
                .expect("json");
        let config: ModelConfig =
            serde_json::from_value(resolved["model"].clone()).expect("model config");
        let (manifest, _) = load(&dir);
        let vocab = mm_data::text::Vocab::load(dir.join("run/data/vocab.txt")).expect("vocabulary");
        let mut p = Pipeline::new(CLASSES.iter().map(|c| c.to_string()).collect());
        p.audio =
            Some(AudioSpec::new(&MelConfig { n_mels: 32, ..MelConfig::default() }).expect("mel"));
        p.text = Some(TextSpec::words(WordTokenizer::default(), vocab, 32));
        p.load_statistics(dir.join("run/data")).expect("statistics");
        let vs = nn::VarStore::new(Device::Cpu);
        let rebuilt =
            Model::new(&vs.root(), &config, &DataShape::from_pipeline(&p, vec![])).expect("model");
        let state = mm_train::checkpoint::load_weights(&dir.join("run/checkpoints"), "best", &vs)
            .expect("weights");
        let loader = mm_data::loader::Loader::new(
            manifest,
            Split::Val,
            Arc::new(p),
            mm_data::loader::LoaderConfig::evaluation(),
        )
        .expect("loader");
        let again = mm_train::train::evaluate(&rebuilt, &loader, Device::Cpu).expect("evaluation");
        let (best, epoch) = report.best.expect("a best epoch");
        assert_eq!(state.best, Some((best, epoch)));
        assert_eq!(again["accuracy"].as_f64(), Some(best), "the rebuilt model's accuracy");
        std::fs::remove_dir_all(dir).expect("clean up");
    }

    /// bf16 autocast (here on the CPU; the same code path on CUDA) trains the fused model too:
    /// the products run in bf16, the weights and their checkpoint stay f32, the loss stays
    /// finite, and it learns the task almost as well as in f32.
    #[test]
    fn bf16_autocast_trains_the_fused_model() {
        let _rng = super::rng_lock();
        let (dir, manifest, pipeline) = data("bf16", 600);
        let run = |precision, name: &str| {
            let vs = nn::VarStore::new(Device::Cpu);
            tch::manual_seed(0);
            let model = build_model(&vs, &pipeline, &manifest);
            let config = TrainConfig {
                epochs: 10,
                batch_size: 32,
                lr: 1e-2,
                seed: 1,
                precision,
                progress: false,
                ..TrainConfig::default()
            };
            let report = fit(
                &model,
                &vs,
                Arc::clone(&manifest),
                Arc::clone(&pipeline),
                &config,
                &dir.join(name),
                false,
            )
            .expect("training");
            (vs, model, report)
        };
        let (_, _, f32_report) = run(mm_train::precision::Precision::F32, "f32");
        let (vs, model, report) = run(mm_train::precision::Precision::Bf16, "bf16");
        let last = |r: &mm_train::train::Report| {
            r.history.last().expect("epochs")["val"]["accuracy"].as_f64().expect("accuracy")
        };
        let (accuracy, reference) = (last(&report), last(&f32_report));
        eprintln!("validation accuracy: bf16 {accuracy:.3}, f32 {reference:.3}");
        assert!(
            accuracy >= 0.85 && accuracy >= reference - 0.05,
            "bf16 {accuracy} vs f32 {reference}"
        );
        assert_ne!(report.history, f32_report.history, "bf16 changed the arithmetic");
        assert!(report
            .history
            .iter()
            .all(|h| h["train_loss"].as_f64().is_some_and(f64::is_finite)));
        assert!(vs.variables().values().all(|t| t.kind() == tch::Kind::Float), "weights stay f32");
        // Inside the scope the model's output is bf16; outside, f32 again.
        let loader = mm_data::loader::Loader::new(
            manifest,
            Split::Val,
            pipeline,
            mm_data::loader::LoaderConfig::evaluation(),
        )
        .expect("loader");
        let batch = loader.epoch(0).next().expect("a batch").expect("batch");
        let _no_grad = tch::no_grad_guard();
        {
            let _bf16 = mm_train::precision::Autocast::bf16(Device::Cpu);
            assert_eq!(model.forward_t(&batch, false).prediction.kind(), tch::Kind::BFloat16);
        }
        assert_eq!(model.forward_t(&batch, false).prediction.kind(), tch::Kind::Float);
        // The same scope on a GPU, where there is one.
        if tch::Cuda::is_available() {
            let gpu = nn::VarStore::new(Device::Cuda(0));
            let (manifest, pipeline) = load(&dir);
            let model = build_model(&gpu, &pipeline, &manifest);
            let batch = batch.to_device(Device::Cuda(0));
            let _bf16 = mm_train::precision::Autocast::bf16(Device::Cuda(0));
            assert_eq!(model.forward_t(&batch, false).prediction.kind(), tch::Kind::BFloat16);
        } else {
            eprintln!("no CUDA device: bf16 autocast checked on the CPU only");
        }
        std::fs::remove_dir_all(dir).expect("clean up");
    }

    /// A model that does not fit its data fails before training, with a message; a loss that
    /// blows up stops the run naming the epoch, step and samples, or is skipped if asked.
    #[test]
    fn mismatches_and_exploding_losses_are_reported() {
        let _rng = super::rng_lock();
        let (dir, manifest, pipeline) = data("guards", 120);
        let wrong = MODEL.replace(
            "kind = \"text\"\n        dim = 32\n        pooling = \"mean\"",
            "kind = \"image\"\n        arch = \"lenet\"",
        );
        let config: ModelConfig = toml::from_str(&wrong).expect("config");
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Model::new(&vs.root(), &config, &DataShape::from_pipeline(&pipeline, vec![]))
            .expect("builds: sizes are not checked until data flows");
        let train =
            TrainConfig { epochs: 1, batch_size: 16, progress: false, ..TrainConfig::default() };
        let e = fit(
            &model,
            &vs,
            Arc::clone(&manifest),
            Arc::clone(&pipeline),
            &train,
            &dir.join("wrong"),
            false,
        )
        .expect_err("mismatch")
        .to_string();
        assert!(e.contains("does not fit the data"), "{e}");
        assert!(!dir.join("wrong/checkpoints").exists(), "nothing trained");

        let vs = nn::VarStore::new(Device::Cpu);
        let model = build_model(&vs, &pipeline, &manifest);
        let sgd = mm_train::optim::OptimizerConfig::Sgd {
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        };
        let blow_up = TrainConfig {
            epochs: 2,
            batch_size: 16,
            lr: 1e12,
            optimizer: sgd,
            progress: false,
            ..TrainConfig::default()
        };
        let e = fit(
            &model,
            &vs,
            Arc::clone(&manifest),
            Arc::clone(&pipeline),
            &blow_up,
            &dir.join("nan"),
            false,
        )
        .expect_err("NaN")
        .to_string();
        assert!(e.contains("epoch 1") && e.contains("step") && e.contains("samples [\"s"), "{e}");
        let vs = nn::VarStore::new(Device::Cpu);
        let model = build_model(&vs, &pipeline, &manifest);
        let skip = TrainConfig { on_non_finite: mm_train::train::OnNonFinite::Skip, ..blow_up };
        let report = fit(
            &model,
            &vs,
            Arc::clone(&manifest),
            Arc::clone(&pipeline),
            &skip,
            &dir.join("skip"),
            false,
        )
        .expect("skips");
        let skipped: u64 =
            report.history.iter().map(|h| h["skipped_batches"].as_u64().unwrap_or(0)).sum();
        assert!(skipped > 0, "{:?}", report.history);

        // A libtorch failure inside a step (here a model built for fewer classes than the data
        // has: a library user's slip that no configuration check can see) is an error naming
        // the step, the model part and the settings, not a panic.
        let config: ModelConfig = toml::from_str(MODEL).expect("config");
        let mut shape = DataShape::from_pipeline(&pipeline, vec![]);
        shape.classes.truncate(2);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Model::new(&vs.root(), &config, &shape).expect("model");
        let e = fit(
            &model,
            &vs,
            Arc::clone(&manifest),
            Arc::clone(&pipeline),
            &train,
            &dir.join("smoothing"),
            false,
        )
        .expect_err("libtorch refuses");
        assert!(matches!(e, mm_train::Error::Torch(_)), "{e:?}");
        let e = e.to_string();
        assert!(e.starts_with("libtorch failed in the training step, in the main head's loss (precision = \"f32\" on cpu): "), "{e}");
        // One line, unless RUST_BACKTRACE asks for libtorch's C++ stack too.
        let first = e.lines().next().unwrap_or_default();
        assert!(first.contains("out of bounds") && !e.contains("unwrap"), "{e}");
        if std::env::var_os("RUST_BACKTRACE").is_none_or(|v| v == "0") {
            assert!(!e.contains("Exception raised from") && e.lines().count() == 1, "{e}");
        } else {
            assert!(e.lines().nth(1).is_some_and(|l| l.contains("C++ stack")), "{e}");
        }

        // No validation split: refused, rather than selecting on the test split.
        let mut no_val = Manifest::new(manifest.root());
        for sample in manifest.samples() {
            let split = if sample.split == Split::Val { Split::Test } else { sample.split };
            no_val.push(mm_data::manifest::Sample { split, ..sample.clone() }).expect("sample");
        }
        let vs = nn::VarStore::new(Device::Cpu);
        let model = build_model(&vs, &pipeline, &manifest);
        let e = fit(
            &model,
            &vs,
            Arc::new(no_val),
            Arc::clone(&pipeline),
            &train,
            &dir.join("noval"),
            false,
        )
        .expect_err("no val")
        .to_string();
        assert!(e.contains("no sample has split \"val\""), "{e}");
        std::fs::remove_dir_all(dir).expect("clean up");
    }

    /// A model over one modality needs no `[fusion]`: the encoder's output is the fused vector,
    /// exactly what concatenation without presence flags gives, with the same variables; with
    /// two modalities and no fusion the model is refused by name. The selection metric is
    /// checked against what the heads report before anything trains.
    #[test]
    fn one_modality_needs_no_fusion_and_metrics_are_named_by_the_heads() {
        let _rng = super::rng_lock();
        let (dir, manifest, pipeline) = data("nofusion", 120);
        let audio_only = MODEL.replace("[encoders.text]\n        kind = \"text\"\n        dim = 32\n        pooling = \"mean\"\n", "");
        let without: ModelConfig =
            toml::from_str(&audio_only.replace("[fusion]\n        method = \"concat\"\n", ""))
                .expect("config");
        assert!(without.fusion.is_none() && without.encoders.len() == 1);
        let with: ModelConfig =
            toml::from_str(&audio_only.replace(
                "method = \"concat\"",
                "method = \"concat\"\n        presence_flags = false",
            ))
            .expect("config");
        let shape = DataShape::from_pipeline(&pipeline, vec![]);
        let build = |config: &ModelConfig| {
            let vs = nn::VarStore::new(Device::Cpu);
            tch::manual_seed(3);
            let model = Model::new(&vs.root(), config, &shape).expect("model");
            (vs, model)
        };
        let ((vs_a, a), (vs_b, b)) = (build(&without), build(&with));
        let names = |vs: &nn::VarStore| {
            vs.variables().keys().cloned().collect::<std::collections::BTreeSet<_>>()
        };
        assert_eq!(names(&vs_a), names(&vs_b));
        let loader = mm_data::loader::Loader::new(
            Arc::clone(&manifest),
            Split::Val,
            Arc::clone(&pipeline),
            mm_data::loader::LoaderConfig::evaluation(),
        )
        .expect("loader");
        let batch = loader.epoch(0).next().expect("a batch").expect("batch");
        let (pa, pb) = tch::no_grad(|| {
            (a.forward_t(&batch, false).prediction, b.forward_t(&batch, false).prediction)
        });
        assert_eq!((pa - pb).abs().max().double_value(&[]), 0.0);
        let config =
            TrainConfig { epochs: 1, batch_size: 16, progress: false, ..TrainConfig::default() };
        let report = fit(
            &a,
            &vs_a,
            Arc::clone(&manifest),
            Arc::clone(&pipeline),
            &config,
            &dir.join("one"),
            false,
        )
        .expect("trains");
        assert_eq!(report.metric, "accuracy");

        let two: ModelConfig =
            toml::from_str(&MODEL.replace("[fusion]\n        method = \"concat\"\n", ""))
                .expect("config");
        let e = Model::new(&nn::VarStore::new(Device::Cpu).root(), &two, &shape)
            .expect_err("two modalities, no fusion")
            .to_string();
        assert!(e.contains("model.fusion: missing") && e.contains("2 modalities"), "{e}");

        // A selection metric the heads do not report is refused before training, listing
        // those they do; one they report keeps its direction (a loss goes down).
        let (vs, model) = build(&with);
        let bogus = TrainConfig { select: Some("bogus".into()), ..config.clone() };
        let e = fit(
            &model,
            &vs,
            Arc::clone(&manifest),
            Arc::clone(&pipeline),
            &bogus,
            &dir.join("bogus"),
            false,
        )
        .expect_err("bogus")
        .to_string();
        assert!(
            e.contains("train.select = \"bogus\"") && e.contains("accuracy, top5, macro_f1, auroc"),
            "{e}"
        );
        assert!(!dir.join("bogus/checkpoints").exists());
        assert_eq!(model.metric("loss").map(|m| m.higher_is_better), Some(false));
        assert_eq!(model.metric("macro_f1").map(|m| m.higher_is_better), Some(true));
        assert_eq!(model.metric("main_accuracy"), None, "one head: names are not prefixed");
        std::fs::remove_dir_all(dir).expect("clean up");
    }

    /// Backbones in their own parameter group: a rate of 0 keeps them fixed while the rest
    /// learns; a smaller rate moves them less.
    #[test]
    fn backbones_learn_at_their_own_rate() {
        let _rng = super::rng_lock();
        let (dir, manifest, pipeline) = data("groups", 120);
        let moved = |scale: f64| {
            let vs = nn::VarStore::new(Device::Cpu);
            tch::manual_seed(0);
            let model = build_model(&vs, &pipeline, &manifest);
            // Text embeddings and the audio CNN: 1 + 4 + 2 tensors.
            assert_eq!(model.backbone_parameters().len(), 7);
            let before: Vec<tch::Tensor> =
                model.backbone_parameters().iter().map(|t| t.copy()).collect();
            let config = TrainConfig {
                epochs: 1,
                batch_size: 16,
                backbone_lr_scale: scale,
                progress: false,
                ..TrainConfig::default()
            };
            fit(
                &model,
                &vs,
                Arc::clone(&manifest),
                Arc::clone(&pipeline),
                &config,
                &dir.join(format!("s{scale}")),
                false,
            )
            .expect("training");
            model
                .backbone_parameters()
                .iter()
                .zip(&before)
                .map(|(a, b)| (a - b).abs().sum(tch::Kind::Float).double_value(&[]))
                .sum::<f64>()
        };
        let (frozen, slow, full) = (moved(0.0), moved(0.1), moved(1.0));
        assert_eq!(frozen, 0.0);
        assert!(slow > 0.0 && slow < full, "moved {slow} at 0.1 and {full} at 1");
        std::fs::remove_dir_all(dir).expect("clean up");
    }

    /// Pretrained image weights named in the configuration are loaded when a run starts (and
    /// said so, beside the run), stay fixed for `freeze_backbone_epochs` epochs while the rest
    /// learns, then learn at `backbone_lr_scale` times the rate; a resumed run is in the phase
    /// its epoch says, and an encoder configured `freeze = true` never thaws.
    #[test]
    fn a_pretrained_backbone_loads_stays_frozen_then_is_fine_tuned() {
        use mm_data::pipeline::ImageSpec;
        let _rng = super::rng_lock();
        let (dir, manifest, _) = data("finetune", 120);
        let mut p = Pipeline::new(CLASSES.iter().map(|c| c.to_string()).collect());
        p.image = Some(ImageSpec::new((16, 16)));
        p.audio =
            Some(AudioSpec::new(&MelConfig { n_mels: 32, ..MelConfig::default() }).expect("mel"));
        p.fit_statistics(&manifest).expect("statistics");
        let pipeline = Arc::new(p);
        // The "pretrained" weights: a LeNet of its own, saved with the encoder's own names.
        let weights = dir.join("lenet.safetensors");
        {
            let vs = nn::VarStore::new(Device::Cpu);
            tch::manual_seed(99);
            let _ = mm_encoders::image::ImageEncoder::new(
                &(vs.root() / "net"),
                &mm_encoders::image::ImageConfig::new(mm_encoders::image::Arch::Lenet),
            )
            .expect("lenet");
            mm_encoders::weights::save_safetensors(&vs, &weights, "net.").expect("save");
        }
        let model_toml = |freeze: bool| {
            format!(
                "[encoders.image]\nkind = \"image\"\narch = \"lenet\"\nweights = {:?}\nfreeze = {freeze}\n\n\
                 [encoders.audio]\nkind = \"audio\"\nbackbone = {{ type = \"cnn\", channels = [8] }}\n\n\
                 [fusion]\nmethod = \"concat\"\n\n[head]\ntype = \"classification\"\n",
                weights.to_string_lossy()
            )
        };
        let image_weights = |vs: &nn::VarStore| -> Vec<(String, Vec<f32>)> {
            let mut v: Vec<(String, Vec<f32>)> = vs
                .variables()
                .into_iter()
                .filter(|(k, _)| k.starts_with("encoders.image."))
                .map(|(k, t)| (k, Vec::try_from(t.view([-1])).expect("values")))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let file: Vec<(String, Vec<f32>)> = {
            let mut v: Vec<(String, Vec<f32>)> = tch::Tensor::read_safetensors(&weights)
                .expect("read")
                .into_iter()
                .map(|(k, t)| {
                    (format!("encoders.image.{k}"), Vec::try_from(t.view([-1])).expect("values"))
                })
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let out = dir.join("run");
        let config = |epochs: u64| TrainConfig {
            epochs,
            batch_size: 16,
            freeze_backbone_epochs: 2,
            backbone_lr_scale: 0.1,
            progress: false,
            ..TrainConfig::default()
        };
        let build = |freeze: bool| {
            let vs = nn::VarStore::new(Device::Cpu);
            tch::manual_seed(0);
            let config: ModelConfig = toml::from_str(&model_toml(freeze)).expect("model config");
            let model =
                Model::new(&vs.root(), &config, &DataShape::from_pipeline(&pipeline, vec![]))
                    .expect("model");
            (vs, model)
        };
        // Two frozen epochs: the image network is the file's, exactly; the rest learned.
        let (vs, model) = build(false);
        let audio_before: Vec<f32> =
            Vec::try_from(vs.variables()["encoders.audio.cnn.convs.0.weight"].view([-1]))
                .expect("values");
        let report =
            fit(&model, &vs, Arc::clone(&manifest), Arc::clone(&pipeline), &config(2), &out, false)
                .expect("training");
        assert_eq!(report.pretrained.len(), 1, "{:?}", report.pretrained);
        assert_eq!(report.pretrained[0].0, "image");
        assert_eq!(report.pretrained[0].1.loaded, file.len());
        let record: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join("pretrained.json")).expect("pretrained.json"),
        )
        .expect("JSON");
        assert_eq!(record["image"]["loaded"], file.len());
        assert_eq!(image_weights(&vs), file, "the backbone moved while frozen");
        let audio_after: Vec<f32> =
            Vec::try_from(vs.variables()["encoders.audio.cnn.convs.0.weight"].view([-1]))
                .expect("values");
        assert_ne!(audio_before, audio_after, "the rest must learn meanwhile");
        // Resumed to four epochs: epochs 3 and 4 fine-tune the image network too.
        let (vs, model) = build(false);
        let report =
            fit(&model, &vs, Arc::clone(&manifest), Arc::clone(&pipeline), &config(4), &out, true)
                .expect("resumed");
        assert!(
            report.pretrained.is_empty(),
            "a resumed run takes its weights from the checkpoint"
        );
        assert_eq!(report.history.len(), 4);
        let tuned = image_weights(&vs);
        assert_ne!(tuned, file, "the backbone must learn once thawed");
        // An encoder configured `freeze = true` stays frozen after the frozen epochs too.
        let (vs, model) = build(true);
        fit(
            &model,
            &vs,
            Arc::clone(&manifest),
            Arc::clone(&pipeline),
            &config(3),
            &dir.join("frozen"),
            false,
        )
        .expect("training");
        assert_eq!(image_weights(&vs), file, "freeze = true must hold for the whole run");
        // A weights file that does not fit is refused before the first epoch, by name.
        std::fs::write(&weights, b"not a safetensors file").expect("write");
        let (vs, model) = build(false);
        let e = fit(
            &model,
            &vs,
            Arc::clone(&manifest),
            Arc::clone(&pipeline),
            &config(1),
            &dir.join("bad"),
            false,
        )
        .expect_err("bad weights")
        .to_string();
        assert!(
            e.contains("model.encoders.image: pretrained weights")
                && e.contains("lenet.safetensors"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).expect("clean up");
    }

    /// A retrieval model (captions and images into one space, InfoNCE) ranks the matching image
    /// far above chance after a few epochs, and reports both directions.
    #[test]
    fn a_retrieval_model_learns_to_rank_matching_pairs() {
        let _rng = super::rng_lock();
        let dir = std::env::temp_dir().join(format!("mm-train-retrieval-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let synth = SynthConfig {
            samples: 400,
            image_size: 32,
            frame_size: 16,
            frames: 2,
            duration: 0.3,
            val: 0.15,
            test: 0.0,
            seed: 5,
            ..SynthConfig::default()
        };
        generate(&dir.join("data"), &synth, false).expect("data");
        let manifest =
            Arc::new(Manifest::read(dir.join("data/retrieval.jsonl")).expect("manifest"));
        let tokenizer = WordTokenizer::default();
        let vocab = VocabBuilder::default()
            .build(&tokenizer, manifest.split(Split::Train).filter_map(|s| s.text.as_deref()));
        let mut p = Pipeline::new(vec![]);
        p.image = Some(mm_data::pipeline::ImageSpec::new((32, 32)));
        p.text = Some(TextSpec::words(tokenizer, vocab, 32));
        p.fit_statistics(&manifest).expect("statistics");
        let pipeline = Arc::new(p);
        let config: ModelConfig = toml::from_str(
            "[encoders.text]\nkind = \"text\"\ndim = 32\n[encoders.image]\nkind = \"image\"\narch = \"lenet\"\n[head]\ntype = \"retrieval\"\npair = [\"text\", \"image\"]\ndim = 32",
        )
        .expect("config");
        let vs = nn::VarStore::new(Device::Cpu);
        tch::manual_seed(0);
        let model = Model::new(&vs.root(), &config, &DataShape::from_pipeline(&pipeline, vec![]))
            .expect("model");
        let train = TrainConfig {
            epochs: 15,
            batch_size: 32,
            lr: 3e-3,
            progress: false,
            ..TrainConfig::default()
        };
        let report =
            fit(&model, &vs, Arc::clone(&manifest), pipeline, &train, &dir.join("run"), false)
                .expect("training");
        let val = &report.history.last().expect("epochs")["val"];
        let n = val["gallery"].as_f64().expect("gallery");
        let r5 = val["text_to_image_r5"].as_f64().expect("R@5");
        eprintln!("text to image over {n} pairs: R@1 {:.3}, R@5 {r5:.3}, MRR {:.3}; image to text R@5 {:.3}", val["text_to_image_r1"], val["text_to_image_mrr"], val["image_to_text_r5"]);
        assert!(r5 > 3.0 * 5.0 / n, "R@5 {r5} is near chance ({})", 5.0 / n);
        assert!(val["image_to_text_r5"].as_f64().expect("backward R@5") > 3.0 * 5.0 / n);
        std::fs::remove_dir_all(dir).expect("clean up");
    }

    /// Early stopping ends a run whose metric stops improving; accumulation takes one step per
    /// `accumulate` batches; a cosine schedule ends at its floor.
    #[test]
    fn early_stopping_accumulation_and_schedules_act_in_the_loop() {
        let _rng = super::rng_lock();
        let (dir, manifest, pipeline) = data("loop", 160);
        let run = |name: &str, config: TrainConfig| {
            let vs = nn::VarStore::new(Device::Cpu);
            tch::manual_seed(0);
            let model = build_model(&vs, &pipeline, &manifest);
            fit(
                &model,
                &vs,
                Arc::clone(&manifest),
                Arc::clone(&pipeline),
                &config,
                &dir.join(name),
                false,
            )
            .expect("training")
        };
        // A rate too small to move anything: validation accuracy stays where it started, so
        // with patience 2 the run stops after epoch 3.
        let stop = mm_train::train::EarlyStopping { metric: "accuracy".into(), patience: 2 };
        let frozen = TrainConfig {
            epochs: 20,
            batch_size: 16,
            lr: 1e-12,
            early_stopping: Some(stop),
            progress: false,
            ..TrainConfig::default()
        };
        let report = run("stop", frozen.clone());
        assert!(
            report.stopped_early && report.history.len() == 3,
            "{} epochs",
            report.history.len()
        );

        // The same frozen run with reduce-on-plateau (patience 0, factor 0.5) instead: epoch 1
        // sets the best, every later epoch fails to improve and halves the rate of the next.
        let plateau = mm_train::train::PlateauConfig { factor: 0.5, patience: 0, min_scale: 0.0 };
        let report = run(
            "plateau",
            TrainConfig {
                epochs: 4,
                early_stopping: None,
                reduce_on_plateau: Some(plateau),
                ..frozen
            },
        );
        let lrs: Vec<f64> =
            report.history.iter().map(|h| h["lr"].as_f64().expect("lr") / 1e-12).collect();
        assert!(
            lrs.iter().zip([1.0, 1.0, 0.5, 0.25]).all(|(a, b)| (a - b).abs() < 1e-9),
            "rates (x 1e-12) {lrs:?}"
        );

        let one =
            TrainConfig { epochs: 1, batch_size: 16, progress: false, ..TrainConfig::default() };
        let batches = report.history[0]["step"].as_u64().expect("steps");
        let accumulated = run("acc", TrainConfig { accumulate: 2, ..one.clone() });
        assert_eq!(accumulated.history[0]["step"].as_u64(), Some(batches.div_ceil(2)));

        let cosine = TrainConfig {
            epochs: 2,
            lr: 1e-2,
            schedule: Some(mm_train::schedule::Shape::Cosine { total_steps: 0, min_lr: 1e-4 }),
            ..one
        };
        let report = run("cos", cosine);
        let last_lr = report.history[1]["lr"].as_f64().expect("lr");
        // The cosine spans the whole run: its last step's rate is one step short of the floor.
        let total = report.history[1]["step"].as_u64().expect("steps");
        let shape = mm_train::schedule::Shape::Cosine { total_steps: total, min_lr: 1e-4 };
        let expected =
            mm_train::schedule::Schedule { base_lr: 1e-2, warmup_steps: 0, shape }.lr(total - 1);
        assert!(
            (last_lr - expected).abs() < 1e-12 && last_lr < 3e-4,
            "the last step's rate {last_lr}, expected {expected}"
        );
        std::fs::remove_dir_all(dir).expect("clean up");
    }

    /// Two heads on one fused vector: the sentiment class and the sentiment score of the
    /// synthetic data (caption and image), trained together with weighted losses.
    #[test]
    fn several_heads_train_together() {
        let _rng = super::rng_lock();
        let dir = std::env::temp_dir().join(format!("mm-train-heads-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let synth = SynthConfig {
            samples: 500,
            image_size: 32,
            frame_size: 16,
            frames: 2,
            duration: 0.3,
            seed: 9,
            ..SynthConfig::default()
        };
        generate(&dir.join("data"), &synth, false).expect("data");
        let manifest =
            Arc::new(Manifest::read(dir.join("data/sentiment.jsonl")).expect("manifest"));
        let tokenizer = WordTokenizer::default();
        let vocab = VocabBuilder::default()
            .build(&tokenizer, manifest.split(Split::Train).filter_map(|s| s.text.as_deref()));
        let mut p = Pipeline::new(
            mm_datasets::synth::SENTIMENT_CLASSES.iter().map(|c| c.to_string()).collect(),
        );
        p.image = Some(mm_data::pipeline::ImageSpec::new((32, 32)));
        p.text = Some(TextSpec::words(tokenizer, vocab, 40));
        p.fit_statistics(&manifest).expect("statistics");
        let pipeline = Arc::new(p);
        let text = r#"
            [encoders.text]
            kind = "text"
            dim = 32
            [encoders.image]
            kind = "image"
            arch = "lenet"
            [fusion]
            method = "concat"
            [heads.mood]
            type = "classification"
            hidden = [32]
            [heads.score]
            type = "regression"
            hidden = [32]
            [loss_weights]
            score = 4.0
        "#;
        let config: ModelConfig = toml::from_str(text).expect("config");
        let vs = nn::VarStore::new(Device::Cpu);
        tch::manual_seed(0);
        let model = Model::new(&vs.root(), &config, &DataShape::from_pipeline(&pipeline, vec![]))
            .expect("model");
        assert_eq!(model.heads().iter().map(|(n, _)| *n).collect::<Vec<_>>(), ["mood", "score"]);
        let train = TrainConfig {
            epochs: 12,
            batch_size: 32,
            lr: 3e-3,
            progress: false,
            ..TrainConfig::default()
        };
        let report =
            fit(&model, &vs, Arc::clone(&manifest), pipeline, &train, &dir.join("run"), false)
                .expect("training");
        // The best epoch (selected on the first head's accuracy) beats guessing on both heads:
        // the majority class is under half, and predicting the mean scores the variance, 0.21.
        let (_, best_epoch) = report.best.expect("a best epoch");
        let val = &report.history[best_epoch as usize - 1]["val"];
        let (accuracy, mse) = (
            val["mood_accuracy"].as_f64().expect("accuracy"),
            val["score_mse"].as_f64().expect("mse"),
        );
        eprintln!(
            "sentiment, best epoch {best_epoch}: class accuracy {accuracy:.3}, score MSE {mse:.4}"
        );
        assert!(accuracy > 0.6 && mse < 0.17, "accuracy {accuracy}, MSE {mse}");
        assert!(val["mood_loss"].is_number() && val["score_loss"].is_number());
        // Mistakes in the heads are named.
        let both = format!("{text}\n[head]\ntype = \"regression\"");
        let e =
            Model::new(&vs.root(), &toml::from_str(&both).expect("config"), &DataShape::default())
                .expect_err("both")
                .to_string();
        assert!(e.contains("not both") || e.contains("the data has no"), "{e}");
        let bad_weight = text.replace("score = 4.0", "scor = 4.0");
        let vs2 = nn::VarStore::new(Device::Cpu);
        let shape = DataShape::from_pipeline(&Pipeline::new(vec!["a".into()]), vec![]);
        let shape = DataShape {
            modalities: vec![mm_data::Modality::Text, mm_data::Modality::Image],
            vocab_size: Some(10),
            ..shape
        };
        let e = Model::new(&vs2.root(), &toml::from_str(&bad_weight).expect("config"), &shape)
            .expect_err("unknown weight")
            .to_string();
        assert!(e.contains("loss_weights.scor"), "{e}");
        std::fs::remove_dir_all(dir).expect("clean up");
    }

    /// A model of one's own trains in the same loop as the fused model by implementing
    /// `TrainStep`: a linear probe of the sound's mean spectrum, with a strategy and a logger
    /// of its own added to the trainer's.
    #[test]
    fn a_step_of_ones_own_trains_in_the_trainer_with_its_own_strategy_and_logger() {
        use mm_data::loader::{Batch, Loader, LoaderConfig};
        use mm_train::checkpoint::TrainState;
        use mm_train::heads::Metric;
        use mm_train::log::Logger;
        use mm_train::optim::{Group, Optimizer};
        use mm_train::train::strategy::{Decision, Strategy};
        use mm_train::train::{StepLoss, TrainStep, Trainer};
        use serde_json::{json, Map, Value};
        use tch::{Kind, Tensor};

        struct Probe {
            linear: nn::Linear,
        }
        impl Probe {
            fn logits(&self, batch: &Batch) -> Tensor {
                let (mel, _) = batch.audio.as_ref().expect("audio");
                nn::Module::forward(&self.linear, &mel.mean_dim(1, false, Kind::Float))
            }
        }
        impl TrainStep for Probe {
            fn loss(&self, batch: &Batch) -> mm_train::Result<StepLoss> {
                let label = batch.label.as_ref().expect("labels");
                Ok(self.logits(batch).cross_entropy_for_logits(label).into())
            }
            fn validate(
                &self,
                loader: &Loader,
                device: Device,
                _: mm_train::precision::Precision,
                _: Option<&mm_train::dist::ProcessGroup>,
            ) -> mm_train::Result<Map<String, Value>> {
                let (mut right, mut loss, mut n) = (0.0, 0.0, 0.0);
                let _no_grad = tch::no_grad_guard();
                for batch in loader.epoch(0) {
                    let batch = batch.expect("batch").to_device(device);
                    let (logits, label) =
                        (self.logits(&batch), batch.label.as_ref().expect("labels"));
                    let k = batch.len() as f64;
                    loss += logits.cross_entropy_for_logits(label).double_value(&[]) * k;
                    right +=
                        logits.argmax(1, false).eq_tensor(label).sum(Kind::Float).double_value(&[]);
                    n += k;
                }
                let mut m = Map::new();
                m.insert("loss".into(), json!(loss / n));
                m.insert("accuracy".into(), json!(right / n));
                Ok(m)
            }
            fn metric(&self, name: &str) -> Option<Metric> {
                match name {
                    "loss" => Some(Metric::lower("loss")),
                    "accuracy" => Some(Metric::higher("accuracy")),
                    _ => None,
                }
            }
            fn selection(&self) -> Metric {
                Metric::higher("accuracy")
            }
            fn metric_names(&self) -> Vec<String> {
                vec!["loss".into(), "accuracy".into()]
            }
        }
        /// Ends the run after a fixed number of epochs.
        struct StopAfter(u64);
        impl Strategy for StopAfter {
            fn after_epoch(&mut self, _: Option<f64>, state: &mut TrainState) -> Decision {
                if state.epoch >= self.0 {
                    Decision::Stop
                } else {
                    Decision::Continue
                }
            }
        }
        struct Count(std::rc::Rc<std::cell::Cell<usize>>);
        impl Logger for Count {
            fn log(&mut self, _: &Value, history: &[Value]) -> mm_train::Result<()> {
                self.0.set(history.len());
                Ok(())
            }
        }

        let _rng = super::rng_lock();
        let (dir, manifest, pipeline) = data("own-step", 160);
        let loader = |split, config| {
            Loader::new(Arc::clone(&manifest), split, Arc::clone(&pipeline), config)
                .expect("loader")
        };
        let train =
            loader(Split::Train, LoaderConfig { batch_size: 16, ..LoaderConfig::training(3) });
        let val = loader(Split::Val, LoaderConfig::evaluation());
        let vs = nn::VarStore::new(Device::Cpu);
        tch::manual_seed(0);
        let probe =
            Probe { linear: nn::linear(vs.root(), 32, CLASSES.len() as i64, Default::default()) };
        let config =
            TrainConfig { epochs: 6, batch_size: 16, lr: 1e-2, seed: 3, ..TrainConfig::default() };
        let optimizer = || {
            Optimizer::new(&config.optimizer, vec![Group::new("all", vs.trainable_variables())])
                .expect("optimizer")
        };
        let out = dir.join("run");
        // A metric the step does not report is refused before anything trains, with the names
        // it does report.
        let bad = TrainConfig { select: Some("f1".into()), ..config.clone() };
        let err = Trainer::new(&probe, &vs, optimizer(), &bad, &out, None).err().expect("refused");
        assert!(err.to_string().contains("loss, accuracy"), "{err}");
        let seen = std::rc::Rc::new(std::cell::Cell::new(0));
        let fitted = Trainer::new(&probe, &vs, optimizer(), &config, &out, None)
            .expect("trainer")
            .with_strategy(StopAfter(3))
            .with_logger(Count(seen.clone()))
            .fit(&train, &val, false)
            .expect("training");
        assert!(fitted.stopped_early && fitted.history.len() == 3, "{:?}", fitted.history);
        assert_eq!(seen.get(), 3, "the added logger saw every epoch");
        assert_eq!(
            std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics").lines().count(),
            3
        );
        // The best epoch is the one with the highest accuracy, and its checkpoint was written.
        let accuracy = |r: &Value| r["val"]["accuracy"].as_f64().expect("accuracy");
        let best = fitted.history.iter().map(accuracy).fold(f64::MIN, f64::max);
        assert_eq!(fitted.metric, "accuracy");
        assert_eq!(fitted.best.map(|b| b.0), Some(best));
        assert!(out.join("checkpoints").read_dir().expect("checkpoints").count() >= 2);
        // The probe learned: its training loss fell.
        let loss = |r: &Value| r["train_loss"].as_f64().expect("train loss");
        assert!(loss(&fitted.history[2]) < loss(&fitted.history[0]), "{:?}", fitted.history);
        // A training split with no full batch is refused: a run that would take no step.
        let big = TrainConfig { batch_size: 1000, ..config.clone() };
        let whole =
            loader(Split::Train, LoaderConfig { batch_size: 1000, ..LoaderConfig::training(3) });
        let err = Trainer::new(&probe, &vs, optimizer(), &big, &dir.join("none"), None)
            .expect("trainer")
            .fit(&whole, &val, false)
            .expect_err("no full batch");
        assert!(err.to_string().contains("not one full batch of 1000"), "{err}");
        assert!(!dir.join("none/metrics.jsonl").exists());
        std::fs::remove_dir_all(dir).expect("clean up");
    }

    /// Three epochs straight, or two and then a resumed run to three: the same history.
    #[test]
    fn a_resumed_run_reaches_the_same_metrics() {
        let _rng = super::rng_lock();
        let (dir, manifest, pipeline) = data("resume", 200);
        let config = TrainConfig { epochs: 3, batch_size: 32, seed: 2, ..TrainConfig::default() };
        let run = |name: &str, epochs: u64, resume: bool| {
            let vs = nn::VarStore::new(Device::Cpu);
            tch::manual_seed(0);
            let model = build_model(&vs, &pipeline, &manifest);
            let c = TrainConfig { epochs, ..config.clone() };
            fit(
                &model,
                &vs,
                Arc::clone(&manifest),
                Arc::clone(&pipeline),
                &c,
                &dir.join(name),
                resume,
            )
            .expect("training")
        };
        let straight = run("straight", 3, false);
        run("split", 2, false);
        let resumed = run("split", 3, true);
        assert_eq!(resumed.history.len(), 3);
        for (a, b) in straight.history.iter().zip(&resumed.history) {
            assert_eq!(a["val"], b["val"], "epoch {}", a["epoch"]);
            assert_eq!(a["train_loss"], b["train_loss"], "epoch {}", a["epoch"]);
        }
        std::fs::remove_dir_all(dir).expect("clean up");
    }
}

mod killed {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::training::{build_model, data};
    use mm_train::train::{fit, TrainConfig};
    use tch::{nn, Device};

    fn config() -> TrainConfig {
        TrainConfig { epochs: 12, batch_size: 16, seed: 3, ..TrainConfig::default() }
    }

    /// Run in a child process by `a_run_killed_again_and_again_resumes_to_the_same_metrics`
    /// (ignored otherwise): trains, resuming from the folder's checkpoint when there is one.
    #[test]
    #[ignore = "a helper: runs only as the child of the kill test"]
    fn child_trains_until_killed() {
        let Some(dir) = std::env::var_os("MM_TRAIN_CHILD_DIR").map(std::path::PathBuf::from) else {
            return;
        };
        let (manifest, pipeline) = super::training::load(&dir);
        let vs = nn::VarStore::new(Device::Cpu);
        tch::manual_seed(0);
        let model = build_model(&vs, &pipeline, &manifest);
        let _ = fit(&model, &vs, manifest, pipeline, &config(), &dir.join("killed"), true);
    }

    /// A real training process is killed (SIGKILL) at seeded random moments, again and again
    /// (until 11 of its 12 epochs are done, within about 2 minutes), each time started anew on
    /// the same folder: after every kill the checkpoint loads whole, and the run, resumed to the
    /// end, has the same metrics, epoch by epoch, as a run that was never interrupted. The
    /// moments are drawn in epochs (1 to 3 more than the last kill saw) plus 0 to 150 ms, so the
    /// test means the same on a fast machine and a slow one.
    #[test]
    fn a_run_killed_again_and_again_resumes_to_the_same_metrics() {
        let _rng = super::rng_lock();
        let (dir, manifest, pipeline) = data("killed", 160);
        let ckpt = mm_train::train::checkpoint_dir(&dir.join("killed"));
        let metrics = dir.join("killed/metrics.jsonl");
        let done = || std::fs::read_to_string(&metrics).map(|t| t.lines().count()).unwrap_or(0);
        let started = Instant::now();
        let mut rng: u64 = 0x5EED;
        let mut draw = |n: u64| {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (rng >> 33) % n
        };
        let mut kills = Vec::new();
        let last = config().epochs as usize - 1;
        loop {
            let target = done() + 1 + draw(3) as usize;
            if target > last || started.elapsed() > Duration::from_secs(120) {
                break;
            }
            let extra = Duration::from_millis(draw(150));
            let mut child =
                std::process::Command::new(std::env::current_exe().expect("test binary"))
                    .args([
                        "--exact",
                        "killed::child_trains_until_killed",
                        "--ignored",
                        "--nocapture",
                        "--test-threads",
                        "1",
                    ])
                    .env("MM_TRAIN_CHILD_DIR", &dir)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("spawn the child");
            // Until `target` epochs are on record, then a moment more: inside the next epoch, or
            // while its checkpoint is written.
            let mut finished = false;
            while done() < target {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(status.success(), "the child failed on its own: {status}");
                    finished = true;
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(300), "the child made no progress");
                std::thread::sleep(Duration::from_millis(5));
            }
            if !finished {
                std::thread::sleep(extra);
                finished = matches!(child.try_wait(), Ok(Some(_)));
            }
            child.kill().ok();
            child.wait().expect("reap");
            if finished {
                break;
            }
            // Whatever the moment, the last checkpoint is whole.
            let vs = nn::VarStore::new(Device::Cpu);
            let _model = build_model(&vs, &pipeline, &manifest);
            let mut opt = mm_train::optim::Optimizer::new(
                &config().optimizer,
                vec![mm_train::optim::Group::new("all", vs.trainable_variables())],
            )
            .expect("optimizer");
            let state =
                mm_train::checkpoint::load(&ckpt, "last", &vs, &mut opt).unwrap_or_else(|e| {
                    panic!("after kill {}: the checkpoint does not load: {e}", kills.len() + 1)
                });
            assert_eq!(state.history.len() as u64, state.epoch);
            kills.push((target, extra.as_millis(), state.epoch));
        }
        let run = |name: &str, resume: bool| {
            let vs = nn::VarStore::new(Device::Cpu);
            tch::manual_seed(0);
            let model = build_model(&vs, &pipeline, &manifest);
            fit(
                &model,
                &vs,
                Arc::clone(&manifest),
                Arc::clone(&pipeline),
                &config(),
                &dir.join(name),
                resume,
            )
            .expect("training")
        };
        let resumed = run("killed", true);
        let straight = run("straight", false);
        assert_eq!(resumed.history.len(), straight.history.len());
        for (a, b) in straight.history.iter().zip(&resumed.history) {
            assert_eq!(a["val"], b["val"], "epoch {}", a["epoch"]);
            assert_eq!(a["train_loss"], b["train_loss"], "epoch {}", a["epoch"]);
        }
        assert!(kills.len() >= 2, "only {} kill(s) before the run ended: {kills:?}", kills.len());
        eprintln!("{} kills (epochs awaited, ms more, epochs checkpointed): {kills:?}; resumed to {} epochs with identical metrics", kills.len(), resumed.history.len());
        std::fs::remove_dir_all(dir).expect("clean up");
    }
}

mod disk_full {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::training::{build_model, data};
    use mm_train::train::{checkpoint_dir, fit, TrainConfig};
    use tch::{nn, Device};

    fn config(epochs: u64) -> TrainConfig {
        TrainConfig { epochs, batch_size: 16, seed: 4, ..TrainConfig::default() }
    }

    /// Run in a child process by `a_checkpoint_write_that_runs_out_of_space_keeps_the_previous_one`
    /// (ignored otherwise): resumes the run under a file-size limit (`RLIMIT_FSIZE`, with
    /// `SIGXFSZ` ignored, so that a write past it fails as on a full disk) and exits with 3 and
    /// the error on stderr when training fails.
    #[test]
    #[ignore = "a helper: runs only as the child of the disk-full test"]
    fn child_trains_with_too_little_space() {
        let Some(dir) = std::env::var_os("MM_TRAIN_CHILD_DIR").map(std::path::PathBuf::from) else {
            return;
        };
        let limit: u64 = std::env::var("MM_TRAIN_FSIZE")
            .ok()
            .and_then(|s| s.parse().ok())
            .expect("MM_TRAIN_FSIZE");
        // SAFETY: plain system calls on this process, with a valid rlimit value.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let r = libc::rlimit { rlim_cur: limit, rlim_max: limit };
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &r), 0);
        }
        let (manifest, pipeline) = super::training::load(&dir);
        let vs = nn::VarStore::new(Device::Cpu);
        tch::manual_seed(0);
        let model = build_model(&vs, &pipeline, &manifest);
        if let Err(e) = fit(&model, &vs, manifest, pipeline, &config(3), &dir.join("run"), true) {
            eprintln!("ERROR: {e}");
            std::process::exit(3);
        }
    }

    /// The disk fills up while a checkpoint is written: training stops with an error that says
    /// so and where; the previous checkpoint is intact, no partial file is left, and resuming
    /// once there is space again ends with the metrics of a run that never failed.
    #[test]
    fn a_checkpoint_write_that_runs_out_of_space_keeps_the_previous_one() {
        let _rng = super::rng_lock();
        let (dir, manifest, pipeline) = data("diskfull", 160);
        let run = |name: &str, epochs: u64, resume: bool| {
            let vs = nn::VarStore::new(Device::Cpu);
            tch::manual_seed(0);
            let model = build_model(&vs, &pipeline, &manifest);
            fit(
                &model,
                &vs,
                Arc::clone(&manifest),
                Arc::clone(&pipeline),
                &config(epochs),
                &dir.join(name),
                resume,
            )
            .expect("training")
        };
        run("run", 1, false);
        let ckpt = checkpoint_dir(&dir.join("run"));
        let files = |ckpt: &std::path::Path| {
            let mut v: Vec<String> = std::fs::read_dir(ckpt)
                .expect("checkpoints")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let before = files(&ckpt);
        let weights = before
            .iter()
            .find(|f| f.starts_with("last-") && !f.contains("optimizer"))
            .expect("a weights file");
        let size = std::fs::metadata(ckpt.join(weights)).expect("size").len();
        // Room for the small files (metrics, curves, records), not for a checkpoint's weights.
        let limit = size / 2;
        let started = Instant::now();
        let child = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "disk_full::child_trains_with_too_little_space",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("MM_TRAIN_CHILD_DIR", &dir)
            .env("MM_TRAIN_FSIZE", limit.to_string())
            .output()
            .expect("run the child");
        assert!(started.elapsed() < Duration::from_secs(300));
        let stderr = String::from_utf8_lossy(&child.stderr);
        assert_eq!(child.status.code(), Some(3), "{stderr}");
        let error = stderr.lines().find(|l| l.starts_with("ERROR: ")).unwrap_or_default();
        assert!(
            error.contains("File too large (os error 27)")
                && error.contains(&ckpt.display().to_string()),
            "{error}"
        );
        // The previous checkpoint is the one on record, whole; nothing half-written is left.
        assert_eq!(files(&ckpt), before, "{error}");
        let vs = nn::VarStore::new(Device::Cpu);
        let _model = build_model(&vs, &pipeline, &manifest);
        let mut opt = mm_train::optim::Optimizer::new(
            &config(1).optimizer,
            vec![mm_train::optim::Group::new("all", vs.trainable_variables())],
        )
        .expect("optimizer");
        let state = mm_train::checkpoint::load(&ckpt, "last", &vs, &mut opt)
            .expect("the previous checkpoint loads");
        assert_eq!(state.epoch, 1);
        let resumed = run("run", 3, true);
        let straight = run("straight", 3, false);
        for (a, b) in straight.history.iter().zip(&resumed.history) {
            assert_eq!(a["val"], b["val"], "epoch {}", a["epoch"]);
        }
        assert_eq!(resumed.history.len(), 3);
        eprintln!("out of space: {error}");
        std::fs::remove_dir_all(dir).expect("clean up");
    }
}

/// A CTC head over an audio CNN + GRU: the recipe's configuration validates, the combinations
/// that cannot work are refused with the key named, and the built model gives per-step
/// log-probabilities over the alphabet whose steps are the frames over the CNN's stride.
mod ctc_head {
    use std::sync::Arc;

    use mm_data::loader::Batch;
    use mm_data::pipeline::Pipeline;
    use mm_data::transcript::Alphabet;
    use mm_train::model::{DataShape, Model};
    use mm_train::run::RunConfig;
    use tch::{nn, Device, Kind, Tensor};

    const RECIPE: &str = include_str!("../../../configs/speech/recognize.toml");

    fn parse(text: &str) -> Result<RunConfig, String> {
        RunConfig::parse(text, "recognize.toml".as_ref(), &[]).map_err(|e| e.to_string())
    }

    /// An ordinal head learns its classes in an order, which only `[data] classes` gives: a
    /// run without them is refused by its head, naming the setting.
    #[test]
    fn an_ordinal_head_needs_its_classes_in_order() {
        let recipe = include_str!("../../../configs/av-digits/av-digits.toml");
        let ordinal = recipe.replace("type = \"classification\"", "type = \"ordinal\"");
        assert_ne!(ordinal, recipe);
        let e = parse(&ordinal).expect_err("no classes").to_string();
        assert!(e.contains("model.head: an ordinal head") && e.contains("[data] classes"), "{e}");
        let listed = ordinal.replace("[data]\n", "[data]\nclasses = [\"0\", \"1\", \"2\", \"3\", \"4\", \"5\", \"6\", \"7\", \"8\", \"9\"]\n");
        parse(&listed).expect("classes listed in order");
    }

    #[test]
    fn ctc_configurations_are_checked_and_the_head_reads_the_encoder_steps() {
        let config = parse(RECIPE).expect("the recipe is valid");
        let with_fusion = format!("{RECIPE}\n[model.fusion]\nmethod = \"concat\"\n");
        assert!(parse(&with_fusion).expect_err("fusion").contains("fuses nothing"));
        let no_transcript = RECIPE.replace("[data.transcript]", "");
        assert!(parse(&no_transcript).expect_err("no transcript").contains("[data.transcript]"));
        let both = RECIPE.replace("[data.transcript]", "[data.text]\n[data.transcript]");
        assert!(parse(&both).expect_err("both").contains("not both"));
        let bad_alphabet =
            RECIPE.replace("[data.transcript]", "[data.transcript]\nalphabet = \"aa\"");
        assert!(parse(&bad_alphabet).expect_err("alphabet").contains("data.transcript.alphabet"));

        let vs = nn::VarStore::new(Device::Cpu);
        let mut pipeline = Pipeline::new(Vec::new());
        pipeline.audio = Some(
            mm_data::pipeline::AudioSpec::new(&config.data.audio.as_ref().expect("audio").mel)
                .expect("mel"),
        );
        pipeline.transcript =
            Some(Arc::new(Alphabet::new(mm_data::transcript::ENGLISH).expect("alphabet")));
        let shape = DataShape::from_pipeline(&pipeline, Vec::new());
        assert!(Model::new(
            &vs.root(),
            &config.model,
            &DataShape { alphabet: None, ..shape.clone() }
        )
        .expect_err("no alphabet")
        .to_string()
        .contains("transcript"));
        let model = Model::new(&vs.root(), &config.model, &shape).expect("model");
        assert_eq!(model.ctc_stride(), Some(4));
        let (b, t) = (3i64, 37i64);
        let lengths = Tensor::from_slice(&[37i64, 20, 5]);
        let batch = Batch {
            ids: vec!["a".into(), "b".into(), "c".into()],
            modalities: vec![mm_data::Modality::Audio],
            present: Tensor::ones([b, 1], (Kind::Float, Device::Cpu)),
            image: None,
            audio: Some((Tensor::randn([b, t, 40], (Kind::Float, Device::Cpu)), lengths)),
            text: None,
            frames: None,
            features: None,
            label: None,
            labels: None,
            target: None,
            transcript: Some((
                Tensor::from_slice(&[15i64, 14, 5, 20, 23, 15, 0, 0, 0]).view([3, 3]),
                Tensor::from_slice(&[3i64, 3, 0]),
            )),
        };
        let out = model.forward_t(&batch, false);
        let (log_probs, steps) = out.sequence.as_ref().expect("ctc output");
        assert_eq!(log_probs.size(), [b, 10, 29]);
        assert_eq!(Vec::<i64>::try_from(steps).expect("steps"), [10, 5, 2], "ceil(frames / 4)");
        let total = log_probs.exp().sum_dim_intlist([2].as_slice(), false, Kind::Float);
        assert!((total - 1.0).abs().max().double_value(&[]) < 1e-4, "each step is a distribution");
        let loss = model.loss(&out, &batch).expect("loss").double_value(&[]);
        assert!(loss.is_finite() && loss > 0.0, "{loss}");
    }
}

/// No configuration reaches a libtorch failure (issue 27): every number of a run's file, set in
/// turn to values out of its range, is either refused by validation with the file, the line
/// and the key, or gives a run that trains (or stops on the data with a clear error of mm's
/// own, never libtorch's).
mod config_ranges {
    use mm_datasets::synth::{generate, SynthConfig};
    use mm_train::run::{train, RunConfig};
    use mm_train::Error;
    use tch::Device;

    const BASE: &str = r#"
[data]
manifest = "MANIFEST"
modality_dropout = 0.1
[data.image]
size = 16
augment = { hflip = 0.5, rotate_degrees = 5.0, brightness = 0.1, noise_std = 0.01 }
[data.audio]
mel = { n_mels = 16, n_fft = 256, hop_length = 128, f_min = 0.0 }
augment = { gain_db = 2.0, max_shift = 0.05, time_masks = [1, 4], freq_masks = [1, 2] }
[data.text]
max_tokens = 16
min_freq = 1
[model.encoders.image]
kind = "image"
arch = "lenet"
[model.encoders.audio]
kind = "audio"
backbone = { type = "cnn", channels = [8, 8] }
[model.encoders.text]
kind = "text"
dim = 8
[model.fusion]
method = "concat"
[model.head]
type = "classification"
hidden = [8]
dropout = 0.1
label_smoothing = 0.1
[train]
epochs = 1
batch_size = 16
lr = 0.001
warmup_steps = 1
clip_grad_norm = 1.0
backbone_lr_scale = 1.0
optimizer = { type = "adamw", betas = [0.9, 0.999], eps = 1e-8, weight_decay = 0.01 }
"#;

    /// Other fusion methods and sequence encoders, as replacements of the base's text.
    const VARIANTS: [(&str, &str); 10] = [
        ("method = \"concat\"", "method = \"attention\"\ndim = 8\nheads = 2"),
        ("method = \"concat\"", "method = \"cross_attention\"\ndim = 8\nheads = 2"),
        ("method = \"concat\"", "method = \"low_rank\"\ndim = 8\nrank = 2"),
        ("method = \"concat\"", "method = \"gated\"\ndim = 8"),
        ("method = \"concat\"", "method = \"weighted_sum\"\ndim = 8"),
        ("method = \"concat\"", "method = \"tensor\"\nproject = 4"),
        ("method = \"concat\"", "method = \"film\"\ndim = 8"),
        (
            "backbone = { type = \"cnn\", channels = [8, 8] }",
            "backbone = { type = \"cnn\", channels = [8], rnn = { cell = \"gru\", hidden = 8, layers = 2, bidirectional = true, dropout = 0.1 } }",
        ),
        (
            "dim = 8\n[model.fusion]",
            "dim = 8\ncontext = { type = \"transformer\", d_model = 8, heads = 2, layers = 1, ff = 16, dropout = 0.1, max_len = 32 }\n[model.fusion]",
        ),
        (
            "dim = 8\n[model.fusion]",
            "dim = 8\ncontext = { type = \"rnn\", cell = \"lstm\", hidden = 8, layers = 1, dropout = 0.0 }\n[model.fusion]",
        ),
    ];

    /// Every numeric leaf of `v` (arrays included), as a path of keys and indices.
    fn leaves(v: &toml::Value, path: Vec<String>, out: &mut Vec<(Vec<String>, bool)>) {
        match v {
            toml::Value::Integer(_) => out.push((path, true)),
            toml::Value::Float(_) => out.push((path, false)),
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let mut p = path.clone();
                    p.push(k.clone());
                    leaves(v, p, out);
                }
            }
            toml::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    let mut p = path.clone();
                    p.push(i.to_string());
                    leaves(v, p, out);
                }
            }
            _ => {}
        }
    }

    fn set(v: &mut toml::Value, path: &[String], to: toml::Value) {
        let slot = path.iter().fold(v, |v, k| match v {
            toml::Value::Table(t) => t.get_mut(k).expect("key"),
            toml::Value::Array(a) => &mut a[k.parse::<usize>().expect("index")],
            _ => unreachable!(),
        });
        *slot = to;
    }

    #[test]
    fn no_configuration_value_reaches_a_libtorch_failure() {
        let _rng = super::rng_lock();
        let dir = std::env::temp_dir().join(format!("mm-train-ranges-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let synth = SynthConfig {
            samples: 96,
            image_size: 16,
            frame_size: 16,
            frames: 2,
            duration: 0.3,
            seed: 3,
            ..SynthConfig::default()
        };
        generate(&dir.join("data"), &synth, false).expect("data");
        let text = BASE.replace("MANIFEST", &dir.join("data/manifest.jsonl").to_string_lossy());
        let base: toml::Value = toml::from_str(&text).expect("base");
        // The base itself trains.
        let config = RunConfig::parse(&text, "ranges.toml".as_ref(), &[]).expect("base config");
        train(&config, &dir.join("base"), Device::Cpu, false).expect("the base trains");

        // The base with every numeric key, then each other fusion method and sequence
        // encoder, with their own keys.
        let mut bases = vec![(base.clone(), String::new())];
        for (from, to) in VARIANTS {
            assert!(text.contains(from), "{from}");
            let v: toml::Value = toml::from_str(&text.replace(from, to)).expect("variant");
            bases.push((v, "model.".to_string()));
        }
        let mut found = Vec::new();
        for (b, (v, only)) in bases.iter().enumerate() {
            let mut keys = Vec::new();
            leaves(v, Vec::new(), &mut keys);
            // Not ranges: how long it runs, and the seed.
            keys.retain(|(p, _)| {
                !matches!(p.last().map(String::as_str), Some("epochs" | "seed"))
                    && p.join(".").starts_with(only.as_str())
            });
            found.extend(keys.into_iter().map(|(p, int)| (b, p, int)));
        }
        assert!(found.len() >= 60, "{} numeric keys", found.len());
        let ints = [-1i64, 0, 3, 300].map(toml::Value::Integer);
        let floats = [-0.5, 1.0, 2.0, f64::NAN].map(toml::Value::Float);
        let (mut refused, mut trained, mut stopped, mut failures) = (0, 0, 0, Vec::new());
        for (case, (b, path, integer)) in found.iter().enumerate() {
            let base = &bases[*b].0;
            let values: &[toml::Value] = if *integer { &ints } else { &floats };
            for (i, value) in values.iter().enumerate() {
                let mut v = base.clone();
                set(&mut v, path, value.clone());
                let key = path.join(".");
                let what = format!("{key} = {value}");
                let text = toml::to_string(&v).expect("toml");
                let config = match RunConfig::parse(&text, "ranges.toml".as_ref(), &[]) {
                    Err(e) => {
                        // Refused: said where, as one line of mm's own.
                        let e = e.to_string();
                        if !e.contains("ranges.toml:") || e.contains('\n') {
                            failures.push(format!("{what}: refused without a line: {e}"));
                        }
                        refused += 1;
                        continue;
                    }
                    Ok(c) => c,
                };
                let out = dir.join(format!("case-{case}-{i}"));
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    train(&config, &out, Device::Cpu, false)
                }));
                match outcome {
                    Ok(Ok(_)) => trained += 1,
                    Ok(Err(e @ Error::Torch(_))) => {
                        failures.push(format!("{what}: libtorch failed: {e}"))
                    }
                    Ok(Err(e)) => {
                        let e = mm_data::error::report(&e);
                        if std::env::var_os("MM_SHOW_STOPS").is_some() {
                            eprintln!("stopped: {what}: {e}");
                        }
                        if e.contains("does not fit the data") && !key.starts_with("data.") {
                            failures.push(format!("{what}: reached the model check: {e}"));
                        }
                        // The model's own numbers (encoders, fusion, heads) are refused by
                        // validation, with their line, not when the model is built after the
                        // data is read; only the data's geometry can meet the model there.
                        let first = e.lines().next().unwrap_or_default();
                        if first.contains("invalid configuration") && !key.starts_with("data.") {
                            failures.push(format!("{what}: refused only after the data: {e}"));
                        }
                        stopped += 1;
                    }
                    Err(_) => failures.push(format!("{what}: panicked")),
                }
                let _ = std::fs::remove_dir_all(&out);
            }
        }
        eprintln!(
            "{} keys: {refused} values refused with their line, {trained} trained, {stopped} stopped with mm's own error",
            found.len()
        );
        assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
        std::fs::remove_dir_all(dir).ok();
    }
}

/// BLEU-1 to 4 and CIDEr-D as coco-caption's scorers (pycocoevalcap) give them, on captions with
/// one to three references each (`tests/data/caption_metrics.py` made the goldens).
#[test]
fn caption_metrics_match_coco_caption() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/caption_metrics.json");
    let g: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("golden")).expect("JSON");
    let words = |s: &serde_json::Value| -> Vec<String> {
        s.as_str().expect("text").split_whitespace().map(str::to_string).collect()
    };
    let hyps: Vec<Vec<String>> = g["hyps"].as_array().expect("hyps").iter().map(words).collect();
    let refs: Vec<Vec<Vec<String>>> = g["refs"]
        .as_array()
        .expect("refs")
        .iter()
        .map(|r| r.as_array().expect("references").iter().map(words).collect())
        .collect();
    for n in 1..=4 {
        let want = g["bleu"][n - 1].as_f64().expect("bleu");
        let got = mm_train::metrics::bleu(&hyps, &refs, n);
        assert!((got - want).abs() < 1e-6, "BLEU-{n}: {got} against {want}");
    }
    let want = g["cider_d"].as_f64().expect("cider");
    let got = mm_train::metrics::cider_d(&hyps, &refs);
    assert!((got - want).abs() < 1e-9 * want.abs().max(1.0), "CIDEr-D: {got} against {want}");
}
