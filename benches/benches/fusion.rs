//! Forward and backward time of every fusion method on CPU: 3 modalities of sizes 512, 128 and
//! 256 (an image, an audio and a text embedding), batch 64, output 128 where the method has a
//! size; the cross-attention variant gets sequences of 50, 100 and 32 steps (audio and text)
//! and a one-step image. Tensor fusion projects each input to 16 first (17³ = 4913 outputs).
//!
//! libtorch threads: `MM_THREADS` (default 2).

#![allow(missing_docs)] // criterion_group! defines undocumented functions

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mm_benches::workloads::{fusion_inputs, FUSION_CASES, FUSION_DIMS};
use mm_fusion::{FusionConfig, FusionModel};
use tch::{nn, Device, Kind, Tensor};

const B: i64 = 64;

fn fusion(c: &mut Criterion) {
    let threads = std::env::var("MM_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let mut group = c.benchmark_group("fusion_forward_backward");
    group.throughput(Throughput::Elements(B as u64));
    group.sample_size(20);
    for (name, text) in FUSION_CASES {
        let vs = nn::VarStore::new(Device::Cpu);
        let config: FusionConfig = toml::from_str(text).expect("config");
        let model =
            FusionModel::new(&(vs.root() / "fusion"), &config, &FUSION_DIMS).expect("fusion");
        let e = fusion_inputs(B, name == "cross_attention", Device::Cpu);
        let params: i64 =
            vs.trainable_variables().iter().map(Tensor::numel).map(|n| n as i64).sum();
        eprintln!("{name}: {params} parameters, output {}", model.output_dim());
        group.bench_function(name, |b| {
            b.iter(|| model.forward_t(&e, true).fused.sum(Kind::Float).backward())
        });
    }
    group.finish();
}

criterion_group!(benches, fusion);
criterion_main!(benches);
