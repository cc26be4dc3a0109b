//! Integration tests of mm-seq (one target for the crate, to keep link time down).

use tch::nn::{self, RNN};
use tch::{Device, Kind, Tensor};

/// Smoke test: libtorch's LSTM kernel runs here, and its final hidden state is the last output
/// step (single layer, one direction), as the recurrence requires.
#[test]
fn libtorch_lstm_final_state_is_last_output() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let lstm = nn::lstm(vs.root() / "lstm", 4, 6, Default::default());
    let xs = Tensor::randn([3, 5, 4], (Kind::Float, Device::Cpu)); // [B, T, F]
    let (out, state) = lstm.seq(&xs);
    assert_eq!(out.size(), vec![3, 5, 6]);
    let last = out.select(1, 4);
    let h = state.h().squeeze_dim(0);
    let diff = (last - h).abs().max().double_value(&[]);
    assert!(diff < 1e-6, "last output and h_n differ by {diff}");
}
