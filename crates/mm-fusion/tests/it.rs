//! Integration tests of mm-fusion (one target for the crate, to keep link time down).

use mm_fusion::{Embeddings, FusionConfig, FusionModel};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

const F: (Kind, Device) = (Kind::Float, Device::Cpu);

/// Every method, as configuration text, with its expected output size for inputs `dims`.
fn methods(dims: &[i64]) -> Vec<(String, i64)> {
    let m = dims.len() as i64;
    vec![
        ("method = \"concat\"".to_string(), dims.iter().sum::<i64>() + m),
        ("method = \"concat\"\npresence_flags = false".to_string(), dims.iter().sum::<i64>()),
        ("method = \"weighted_sum\"\ndim = 8".to_string(), 8),
        ("method = \"weighted_sum\"\ndim = 8\nnormalise = \"free\"".to_string(), 8),
        ("method = \"product\"\ndim = 8".to_string(), 8),
        ("method = \"gated\"\ndim = 8".to_string(), 8),
        ("method = \"tensor\"".to_string(), dims.iter().map(|d| d + 1).product()),
        ("method = \"tensor\"\nproject = 3".to_string(), 4i64.pow(dims.len() as u32)),
        ("method = \"low_rank\"\ndim = 8\nrank = 3".to_string(), 8),
        ("method = \"attention\"\ndim = 8\nheads = 2".to_string(), 8),
        ("method = \"cross_attention\"\ndim = 8\nheads = 2".to_string(), 8 * m),
        ("method = \"late\"\nclasses = 5".to_string(), 5),
        ("method = \"late\"\nclasses = 5\nlearned = false".to_string(), 5),
        ("method = \"film\"\ndim = 8".to_string(), 8),
    ]
}

const NAMES: [&str; 4] = ["image", "audio", "text", "features"];

fn build(text: &str, dims: &[i64]) -> (nn::VarStore, FusionModel) {
    let vs = nn::VarStore::new(Device::Cpu);
    let config: FusionConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    let modalities: Vec<(&str, i64)> = NAMES.iter().zip(dims).map(|(n, d)| (*n, *d)).collect();
    let model = FusionModel::new(&(vs.root() / "fusion"), &config, &modalities)
        .unwrap_or_else(|e| panic!("{text}: {e}"));
    (vs, model)
}

/// Inputs for `dims` with a sequence for the second modality (cross-attention uses it).
fn inputs(dims: &[i64], b: i64, present: &Tensor, fill: f64) -> Embeddings {
    let pooled: Vec<Tensor> = dims.iter().map(|d| Tensor::randn([b, *d], F)).collect();
    let mut e = Embeddings::new(pooled, present.shallow_clone());
    let seq = Tensor::randn([b, 5, dims[1]], F);
    let mask = Tensor::from_slice(&[true, true, true, false, false])
        .unsqueeze(0)
        .expand([b, 5], false)
        .copy();
    e.seqs[1] = Some((seq, mask));
    filled(&e, fill)
}

/// A copy of `e` whose absent slots hold `fill` everywhere (NaN included).
fn filled(e: &Embeddings, fill: f64) -> Embeddings {
    let b = e.present.size()[0];
    let pooled = e
        .pooled
        .iter()
        .enumerate()
        .map(|(m, t)| {
            let present = e.present.select(1, m as i64).unsqueeze(1);
            t.where_self(&present, &t.full_like(fill))
        })
        .collect();
    let mut out = Embeddings::new(pooled, e.present.shallow_clone());
    out.seqs = e
        .seqs
        .iter()
        .enumerate()
        .map(|(m, s)| {
            s.as_ref().map(|(s, k)| {
                let present = e.present.select(1, m as i64).view([b, 1, 1]);
                (s.where_self(&present, &s.full_like(fill)), k.shallow_clone())
            })
        })
        .collect();
    out
}

fn presence(b: i64, m: usize) -> Tensor {
    // Row 0 all present, then each modality absent in turn, then only modality 0.
    let mut rows = vec![vec![true; m]];
    for k in 0..m {
        let mut r = vec![true; m];
        r[k] = false;
        rows.push(r);
    }
    let mut only = vec![false; m];
    only[0] = true;
    rows.push(only);
    rows.push(vec![false; m]); // nothing at all
    let flat: Vec<bool> = (0..b as usize).flat_map(|i| rows[i % rows.len()].clone()).collect();
    Tensor::from_slice(&flat).view([b, m as i64])
}

#[test]
fn every_method_gives_its_documented_size_for_two_three_and_four_modalities() {
    tch::manual_seed(0);
    for dims in [vec![6i64, 4], vec![6, 4, 5], vec![6, 4, 5, 3]] {
        for (text, size) in methods(&dims) {
            let (_vs, model) = build(&text, &dims);
            assert_eq!(model.output_dim(), size, "{text} for {dims:?}");
            let b = 7;
            let out = tch::no_grad(|| {
                model.forward_t(&inputs(&dims, b, &presence(b, dims.len()), 0.0), false)
            });
            assert_eq!(out.fused.size(), [b, size], "{text} for {dims:?}");
            assert!(
                bool::try_from(out.fused.isfinite().all()).expect("bool"),
                "{text}: a non-finite output"
            );
            if let Some(w) = out.weights {
                assert_eq!(w.size(), [b, dims.len() as i64], "{text}");
            }
        }
    }
}

#[test]
fn an_absent_modality_cannot_change_the_output_whatever_it_holds() {
    let dims = [6i64, 4, 5];
    let b = 12;
    let present = presence(b, dims.len());
    for (text, _) in methods(&dims) {
        let (_vs, model) = build(&text, &dims);
        let clean = inputs(&dims, b, &present, 0.0);
        let noisy = filled(&clean, 1e6);
        let nan = filled(&clean, f64::NAN);
        let (a, n, x) = tch::no_grad(|| {
            (
                model.forward_t(&clean, false).fused,
                model.forward_t(&noisy, false).fused,
                model.forward_t(&nan, false).fused,
            )
        });
        assert!(
            bool::try_from(x.isfinite().all()).expect("bool"),
            "{text}: NaN in an absent slot leaked"
        );
        let d1 = (&a - n).abs().max().double_value(&[]);
        let d2 = (&a - x).abs().max().double_value(&[]);
        assert!(d1 < 1e-5 && d2 < 1e-5, "{text}: absent values changed the output by {d1} / {d2}");
    }
}

#[test]
fn gradients_reach_every_present_input_and_no_absent_one() {
    let dims = [6i64, 4, 5];
    let b = 12;
    let present = presence(b, dims.len());
    for (text, _) in methods(&dims) {
        let (_vs, model) = build(&text, &dims);
        let e = inputs(&dims, b, &present, 0.0);
        let pooled: Vec<Tensor> =
            e.pooled.iter().map(|t| t.detach().set_requires_grad(true)).collect();
        let mut e2 = Embeddings::new(
            pooled.iter().map(Tensor::shallow_clone).collect(),
            present.shallow_clone(),
        );
        e2.seqs = e.seqs;
        // Cross-attention reads modality 1 from its sequence; the others from the pooled vectors.
        model.forward_t(&e2, true).fused.square().sum(Kind::Float).backward();
        for (m, t) in pooled.iter().enumerate() {
            if text.contains("cross_attention") && m == 1 {
                continue;
            }
            let g = t.grad().abs().sum_dim_intlist(1, false, Kind::Float);
            for i in 0..b {
                let is_present = present.int64_value(&[i, m as i64]) == 1;
                let gi = g.double_value(&[i]);
                if is_present {
                    assert!(gi > 0.0, "{text}: no gradient reaches modality {m} of sample {i}");
                } else {
                    assert_eq!(
                        gi, 0.0,
                        "{text}: gradient reaches absent modality {m} of sample {i}"
                    );
                }
            }
        }
    }
}

#[test]
fn weights_renormalise_over_present_modalities() {
    let dims = [3i64, 3, 3];
    let b = 12;
    let present = presence(b, 3);
    for text in [
        "method = \"weighted_sum\"\ndim = 4",
        "method = \"late\"\nclasses = 2",
        "method = \"gated\"\ndim = 4",
        "method = \"attention\"\ndim = 4\nheads = 2",
    ] {
        let (_vs, model) = build(text, &dims);
        let w = tch::no_grad(|| {
            model.forward_t(&inputs(&dims, b, &present, 0.0), false).weights.expect("weights")
        });
        let sums = w.sum_dim_intlist(1, false, Kind::Float);
        for i in 0..b {
            let any = present.get(i).any().int64_value(&[]) == 1;
            let s = sums.double_value(&[i]);
            assert!(
                (s - if any { 1.0 } else { 0.0 }).abs() < 1e-5,
                "{text}: row {i} weights sum to {s}"
            );
            for m in 0..3 {
                if present.int64_value(&[i, m]) == 0 {
                    assert_eq!(
                        w.double_value(&[i, m]),
                        0.0,
                        "{text}: an absent modality has weight"
                    );
                }
            }
        }
    }
}

/// Uniform numbers in `[-1, 1)` from a local generator: tests run in parallel and libtorch's
/// generator is global, so a test that must be reproducible makes its own numbers.
fn local_uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Re-initialises every matrix (uniform, ±1/√fan-in) and zeroes every bias, from `seed`.
fn reinit(vs: &nn::VarStore, seed: u64) {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (i, (name, mut v)) in vars.into_iter().enumerate() {
            if name.ends_with("bias") {
                let _ = v.zero_();
            } else if v.dim() >= 2 {
                let size = v.size();
                let k = 1.0 / (*size.last().unwrap_or(&1) as f32).sqrt();
                let values: Vec<f32> =
                    local_uniform(v.numel(), seed + i as u64).iter().map(|x| x * k).collect();
                v.copy_(&Tensor::from_slice(&values).view(size.as_slice()));
            }
        }
    });
}

/// A toy task where modality 0 carries the class and modality 1 is pure noise: the learned
/// weight (weighted sum) and gate (GMU) of the noise must fall.
#[test]
fn learned_weights_and_gates_turn_away_from_a_noise_modality() {
    let n = 512;
    let coin = local_uniform(n, 1);
    let y = Tensor::from_slice(&coin.iter().map(|c| i64::from(*c > 0.0)).collect::<Vec<_>>());
    let jitter = Tensor::from_slice(&local_uniform(n * 4, 2)).view([n as i64, 4]);
    let signal = jitter * 0.8 + y.to_kind(Kind::Float).unsqueeze(1) * 2.0 - 1.0;
    let noise = Tensor::from_slice(&local_uniform(n * 4, 3)).view([n as i64, 4]) * 3.0;
    for text in ["method = \"weighted_sum\"\ndim = 8", "method = \"gated\"\ndim = 8"] {
        let vs = nn::VarStore::new(Device::Cpu);
        let config: FusionConfig = toml::from_str(text).expect("toml");
        let model = FusionModel::new(&(vs.root() / "f"), &config, &[("signal", 4), ("noise", 4)])
            .expect("fusion");
        let head = nn::linear(vs.root() / "head", 8, 2, Default::default());
        reinit(&vs, 7);
        let mut opt = nn::Adam::default().build(&vs, 0.02).expect("adam");
        let batch = || Embeddings::all_present(vec![signal.shallow_clone(), noise.shallow_clone()]);
        let noise_weight = |model: &FusionModel| {
            tch::no_grad(|| {
                model
                    .forward_t(&batch(), false)
                    .weights
                    .expect("w")
                    .select(1, 1)
                    .mean(Kind::Float)
                    .double_value(&[])
            })
        };
        let before = noise_weight(&model);
        for _ in 0..600 {
            let out = model.forward_t(&batch(), true);
            opt.backward_step(&head.forward(&out.fused).cross_entropy_for_logits(&y));
        }
        let after = noise_weight(&model);
        eprintln!(
            "{}: weight of the noise modality {before:.3} -> {after:.3}",
            text.lines().next().unwrap_or("")
        );
        assert!((before - 0.5).abs() < 0.1, "{text}: starts at {before}");
        // The weighted sum can only silence the noise through its weight; the GMU can also shrink
        // the noise's tanh projection, so its gate falls less far.
        let needed = if text.contains("gated") { before - 0.08 } else { 0.3 };
        assert!(
            after < needed,
            "{text}: the noise modality keeps weight {after} (needed below {needed})"
        );
    }
}

/// FiLM's point (Perez et al. 2018): the conditioning input scales the other's features, a
/// product that concatenation followed by a linear layer cannot form. The class here is
/// `x · c > 0` (x from one modality, c from the other, each a noisy scalar in 4 features):
/// a linear readout of FiLM learns it, the same readout of a concatenation stays near chance.
/// Without its conditioning input, FiLM is the plain projection of the first.
#[test]
fn film_learns_a_product_of_modalities_that_concatenation_cannot() {
    let n = 512;
    let (x, c) = (local_uniform(n, 11), local_uniform(n, 12));
    let y = Tensor::from_slice(
        &x.iter().zip(&c).map(|(a, b)| i64::from(a * b > 0.0)).collect::<Vec<_>>(),
    );
    let spread = |v: &[f32], seed: u64| {
        let noise = Tensor::from_slice(&local_uniform(n * 4, seed)).view([n as i64, 4]) * 0.05;
        Tensor::from_slice(v).unsqueeze(1).expand([n as i64, 4], false) + noise
    };
    let (xs, cs) = (spread(&x, 13), spread(&c, 14));
    let accuracy = |text: &str| {
        let vs = nn::VarStore::new(Device::Cpu);
        let config: FusionConfig = toml::from_str(text).expect("toml");
        let model =
            FusionModel::new(&(vs.root() / "f"), &config, &[("x", 4), ("c", 4)]).expect("fusion");
        let head = nn::linear(vs.root() / "head", model.output_dim(), 2, Default::default());
        reinit(&vs, 5);
        let mut opt = nn::Adam::default().build(&vs, 0.02).expect("adam");
        let batch = || Embeddings::all_present(vec![xs.shallow_clone(), cs.shallow_clone()]);
        for _ in 0..400 {
            opt.backward_step(
                &head.forward(&model.forward_t(&batch(), true).fused).cross_entropy_for_logits(&y),
            );
        }
        let logits = tch::no_grad(|| head.forward(&model.forward_t(&batch(), false).fused));
        logits
            .argmax(1, false)
            .eq_tensor(&y)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[])
    };
    let (film, concat) = (accuracy("method = \"film\"\ndim = 8"), accuracy("method = \"concat\""));
    eprintln!("x·c > 0: FiLM {film:.3}, concatenation {concat:.3}");
    assert!(film > 0.9, "FiLM reached only {film}");
    // A line does at best 2/3 on this task (the sign of a product is an XOR).
    assert!(concat < 0.75, "concatenation reached {concat}: the task is not multiplicative");

    // The conditioning input absent: the output is the first input's projection, unmodulated.
    let (vs, model) = build("method = \"film\"\ndim = 8", &[6, 4]);
    let present = Tensor::from_slice(&[true, false, true, false]).view([2, 2]);
    let e = inputs(&[6, 4], 2, &present, 0.0);
    let out = tch::no_grad(|| model.forward_t(&e, false).fused);
    let vars = vs.variables();
    let projected =
        e.pooled[0].matmul(&vars["fusion.project.weight"].tr()) + &vars["fusion.project.bias"];
    assert!((out - projected).abs().max().double_value(&[]) < 1e-6);
}

#[test]
fn arrangements_are_configuration_and_mistakes_are_named() {
    let dims = [6i64, 4, 5];
    // Serial: image and text concatenated, then weighted with audio.
    let serial = "method = \"weighted_sum\"\ndim = 8\ninputs = [\"audio\", { method = \"concat\", inputs = [\"image\", \"text\"] }]";
    let (vs, model) = build(serial, &dims);
    assert_eq!(model.output_dim(), 8);
    assert!(vs.variables().contains_key("fusion.proj.1.weight"));
    assert_eq!(vs.variables()["fusion.proj.1.weight"].size(), [8, 6 + 5 + 2]);
    // A gate over two arrangements of the same modalities.
    let gate = "method = \"gated\"\ndim = 8\ninputs = [{ method = \"tensor\", project = 2 }, { method = \"attention\", dim = 8, heads = 2 }]";
    let (_vs, model) = build(gate, &dims);
    let b = 6;
    let out = tch::no_grad(|| model.forward_t(&inputs(&dims, b, &presence(b, 3), 0.0), false));
    assert_eq!(out.fused.size(), [b, 8]);
    assert_eq!(out.weights.expect("gates").size(), [b, 2]);
    // Mistakes.
    let vs = nn::VarStore::new(Device::Cpu);
    let modalities = [("image", 6i64), ("audio", 4)];
    let bad: FusionConfig =
        toml::from_str("method = \"concat\"\ninputs = [\"imgae\"]").expect("toml");
    let e = FusionModel::new(&vs.root(), &bad, &modalities).expect_err("unknown input").to_string();
    assert!(e.contains("unknown input \"imgae\"") && e.contains("image"), "{e}");
    let e = toml::from_str::<FusionConfig>("method = \"gated\"\ndim = 8\ndimm = 3")
        .expect_err("unknown key")
        .to_string();
    assert!(e.contains("dimm"), "{e}");
    let e = toml::from_str::<FusionConfig>("method = \"blend\"")
        .expect_err("unknown method")
        .to_string();
    assert!(e.contains("blend"), "{e}");
    let attention: FusionConfig =
        toml::from_str("method = \"attention\"\ndim = 10\nheads = 3").expect("toml");
    let e = FusionModel::new(&vs.root(), &attention, &modalities).expect_err("heads").to_string();
    assert!(e.contains("heads = 3 must divide dim = 10"), "{e}");
    let big: FusionConfig = toml::from_str("method = \"tensor\"").expect("toml");
    let e = FusionModel::new(&vs.root(), &big, &[("a", 512), ("b", 512), ("c", 512)])
        .expect_err("huge")
        .to_string();
    assert!(e.contains("project"), "{e}");
}
