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

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-5, "{what}: {a} vs expected {b}");
}

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
        close(cross_entropy(&logits, &targets, &CrossEntropy::default()).double_value(&[]), (l0 + l1) / 2.0, "plain");
        let weighted = CrossEntropy { class_weights: Some(Tensor::from_slice(&[1.0f32, 3.0])), ..Default::default() };
        close(cross_entropy(&logits, &targets, &weighted).double_value(&[]), (l0 + 3.0 * l1) / 4.0, "class weights");
        // Smoothing ε: (1 - ε)·CE + ε/C·Σ_c -log p_c; sample 0: -log p_1 = 2 + l0.
        let smooth = CrossEntropy { label_smoothing: 0.1, ..Default::default() };
        let s0 = 0.9 * l0 + 0.05 * (l0 + 2.0 + l0);
        let s1 = 0.9 * l1 + 0.05 * (l1 + 1.0 + l1);
        close(cross_entropy(&logits, &targets, &smooth).double_value(&[]), (s0 + s1) / 2.0, "smoothing");
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
        let bce = binary_cross_entropy(&Tensor::from_slice(&[0.0f32, 2.0]).view([1, 2]), &Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]), None);
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
        close(info_nce(&a, &b, &Tensor::from(1.0f32)).double_value(&[]), softplus(-1.0), "info_nce");
        let vs = nn::VarStore::new(Device::Cpu);
        let t = Temperature::new(&(vs.root() / "clip"));
        close(t.scale().double_value(&[]), 1.0 / 0.07, "CLIP's initial scale");
        close(info_nce(&a, &b, &t.scale()).double_value(&[]), softplus(-1.0 / 0.07), "info_nce at 1/0.07");
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
        let total = m.combine(&[("class", Tensor::from(2.0f32)), ("retrieval", Tensor::from(4.0f32))]).expect("sum");
        close(total.double_value(&[]), 4.0, "weighted sum");
        let e = m.combine(&[("class", Tensor::from(2.0f32))]).expect_err("missing").to_string();
        assert!(e.contains("retrieval"), "{e}");
        let e = m.combine(&[("class", Tensor::from(1.0f32)), ("retrieval", Tensor::from(1.0f32)), ("extra", Tensor::from(1.0f32))]).expect_err("extra").to_string();
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
        close(auroc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).expect("defined"), 0.75, "binary");
        close(auroc(&[0.5, 0.5, 0.5], &[true, false, false]).expect("defined"), 0.5, "ties");
        assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
        // One-vs-rest: class 0 has 3 of 4 pairs right, classes 1 and 2 all; class 3 is absent.
        let truth = [0, 1, 2, 0];
        let scores = [0.9f32, 0.05, 0.05, 0.0, 0.1, 0.8, 0.1, 0.0, 0.35, 0.3, 0.5, 0.0, 0.3, 0.6, 0.1, 0.0];
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
        close(pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 7.0]).expect("defined"), 5.0 / (2.0f64 * 114.0 / 9.0).sqrt(), "pearson");
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
    }
}
