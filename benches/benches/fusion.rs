//! Forward and backward time of every fusion method on CPU: 3 modalities of sizes 512, 128 and
//! 256 (an image, an audio and a text embedding), batch 64, output 128 where the method has a
//! size; the cross-attention variant gets sequences of 50, 100 and 32 steps (audio and text)
//! and a one-step image. Tensor fusion projects each input to 16 first (17³ = 4913 outputs).
//!
//! libtorch threads: `MM_THREADS` (default 2).

#![allow(missing_docs)] // criterion_group! defines undocumented functions

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mm_fusion::{Embeddings, FusionConfig, FusionModel};
use tch::{nn, Device, Kind, Tensor};

const B: i64 = 64;
const DIMS: [(&str, i64); 3] = [("image", 512), ("audio", 128), ("text", 256)];

fn inputs(sequences: bool) -> Embeddings {
    let f = (Kind::Float, Device::Cpu);
    let pooled: Vec<Tensor> = DIMS.iter().map(|(_, d)| Tensor::randn([B, *d], f).set_requires_grad(true)).collect();
    let mut e = Embeddings::all_present(pooled);
    if sequences {
        for (m, t) in [(1usize, 100i64), (2, 32)] {
            let lengths = Tensor::randint_low(t / 2, t + 1, [B], (Kind::Int64, Device::Cpu));
            let mask = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0).lt_tensor(&lengths.unsqueeze(1));
            e.seqs[m] = Some((Tensor::randn([B, t, DIMS[m].1], f), mask));
        }
    }
    e
}

fn fusion(c: &mut Criterion) {
    let threads = std::env::var("MM_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let cases = [
        ("concat", "method = \"concat\""),
        ("weighted_sum", "method = \"weighted_sum\"\ndim = 128"),
        ("product", "method = \"product\"\ndim = 128"),
        ("gated", "method = \"gated\"\ndim = 128"),
        ("tensor_p16", "method = \"tensor\"\nproject = 16"),
        ("low_rank_r4", "method = \"low_rank\"\ndim = 128\nrank = 4"),
        ("attention", "method = \"attention\"\ndim = 128\nheads = 4"),
        ("cross_attention", "method = \"cross_attention\"\ndim = 128\nheads = 4"),
        ("late", "method = \"late\"\nclasses = 10"),
    ];
    let mut group = c.benchmark_group("fusion_forward_backward");
    group.throughput(Throughput::Elements(B as u64));
    group.sample_size(20);
    for (name, text) in cases {
        let vs = nn::VarStore::new(Device::Cpu);
        let config: FusionConfig = toml::from_str(text).expect("config");
        let model = FusionModel::new(&(vs.root() / "fusion"), &config, &DIMS).expect("fusion");
        let e = inputs(name == "cross_attention");
        let params: i64 = vs.trainable_variables().iter().map(Tensor::numel).map(|n| n as i64).sum();
        eprintln!("{name}: {params} parameters, output {}", model.output_dim());
        group.bench_function(name, |b| b.iter(|| model.forward_t(&e, true).fused.sum(Kind::Float).backward()));
    }
    group.finish();
}

criterion_group!(benches, fusion);
criterion_main!(benches);
