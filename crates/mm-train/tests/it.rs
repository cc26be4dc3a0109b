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
