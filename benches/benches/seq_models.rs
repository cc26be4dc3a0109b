//! Forward and backward time of the sequence models on CPU, at batch 64, 100 steps, 64 features,
//! with per-sample lengths drawn between 50 and 100 (seeded; the PyTorch peer
//! `benches/peer/seq_models.py` uses the same lengths): LSTM and GRU (hidden 128, one layer, on
//! packed sequences), a Transformer encoder (d_model 64, 4 heads, 2 layers, feed-forward 256,
//! pre-norm, GELU, key-padding mask) and a temporal convolution stack (128 channels, kernel 3,
//! 3 blocks). Each iteration: forward in training mode, mean-pool the valid steps, sum,
//! backward.
//!
//! Set the libtorch thread count with `MM_THREADS` (default 2) to compare at equal parallelism.

#![allow(missing_docs)] // criterion_group! defines undocumented functions

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mm_seq::rnn::{CellKind, Rnn, RnnConfig};
use mm_seq::tcn::{TemporalConv, TemporalConvConfig};
use mm_seq::transformer::{Activation, TransformerConfig, TransformerEncoder};
use mm_seq::{Pooling, SequenceModel};
use tch::{nn, Device, Kind, Tensor};

const B: i64 = 64;
const T: i64 = 100;
const F: i64 = 64;

/// Lengths 50..=100 from a fixed linear congruential sequence (the peer computes the same).
pub fn lengths() -> Vec<i64> {
    let mut state: u64 = 12345;
    (0..B)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            50 + ((state >> 33) % 51) as i64
        })
        .collect()
}

fn bench_model(c: &mut Criterion, name: &str, model: &dyn SequenceModel) {
    let xs = Tensor::randn([B, T, F], (Kind::Float, Device::Cpu));
    let lengths = Tensor::from_slice(&lengths());
    let mut group = c.benchmark_group("seq_forward_backward");
    group.throughput(Throughput::Elements(B as u64));
    group.sample_size(20);
    group.bench_function(name, |b| {
        b.iter(|| {
            let out = model.forward_seq(&xs, &lengths, true);
            out.pool(Pooling::Mean).sum(Kind::Float).backward();
        })
    });
    group.finish();
}

fn seq_models(c: &mut Criterion) {
    let threads = std::env::var("MM_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let rnn = |cell| RnnConfig { cell, hidden: 128, layers: 1, bidirectional: false, dropout: 0.0 };
    let lstm = Rnn::new(&(&root / "lstm"), F, &rnn(CellKind::Lstm)).expect("lstm");
    bench_model(c, "lstm", &lstm);
    let gru = Rnn::new(&(&root / "gru"), F, &rnn(CellKind::Gru)).expect("gru");
    bench_model(c, "gru", &gru);
    let config = TransformerConfig {
        d_model: 64,
        heads: 4,
        layers: 2,
        ff: 256,
        dropout: 0.1,
        activation: Activation::Gelu,
        norm_first: true,
        ..Default::default()
    };
    let transformer =
        TransformerEncoder::new(&(&root / "transformer"), F, &config).expect("transformer");
    bench_model(c, "transformer", &transformer);
    let config = TemporalConvConfig {
        channels: 128,
        kernel: 3,
        layers: 3,
        dropout: 0.1,
        ..Default::default()
    };
    let tcn = TemporalConv::new(&(&root / "tcn"), F, &config).expect("tcn");
    bench_model(c, "tcn", &tcn);
}

criterion_group!(benches, seq_models);
criterion_main!(benches);
