//! A whole training step (forward in training mode, cross-entropy, backward, AdamW, gradients
//! cleared), as `mm_train::train::fit` runs it per batch, of the two models the PyTorch
//! comparison uses (`mm_benches::workloads`):
//!
//! - the seed's example model: ResNet-50 on 224×224 images + a 2-layer LSTM (hidden 256) over
//!   20 steps of 300 features, concatenated, 10-way linear head; batch 8;
//! - the av-digits recipe's model (LeNet, audio CNN, gated fusion, MLP head); batch 64.
//!
//! libtorch threads: `MM_THREADS` (default 2).

#![allow(missing_docs)] // criterion_group! defines undocumented functions

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mm_benches::workloads::{Trainer, Workload};
use tch::Device;

fn train_step(c: &mut Criterion) {
    let threads = std::env::var("MM_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    tch::set_num_threads(threads);
    let mut group = c.benchmark_group("train_step");
    group.sample_size(10);
    for (workload, batch) in [(Workload::AvDigits, 64), (Workload::Seed, 8)] {
        let mut trainer = Trainer::new(workload, batch, Device::Cpu);
        eprintln!("{}: {} parameters, batch {batch}", workload.name(), trainer.parameters());
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(workload.name(), |b| {
            b.iter(|| {
                let _ = trainer.step();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);
