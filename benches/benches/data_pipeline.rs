//! Throughput of the data pipeline, in samples per second (criterion's `thrpt`).
//!
//! (a) images: decode 256×256 PNG files, random resized crop to 224, horizontal flip, colour
//!     jitter (0.4), ImageNet normalisation, collate batches of 64 into a `[64, 3, 224, 224]`
//!     tensor. What a PyTorch user runs for the same work (`benches/peer/data_pipeline.py`):
//!     a `Dataset` opening each file with PIL, `transforms.Compose([RandomResizedCrop(224),
//!     RandomHorizontalFlip(), ColorJitter(0.4, 0.4, 0.4), ToTensor(), Normalize(...)])` and a
//!     `DataLoader(batch_size=64, num_workers=<threads>)`.
//! (b) audio: decode FSDD WAV files (8 kHz), resample to 16 kHz, 64-bin log-mel (n_fft 400,
//!     hop 160), collate batches of 64 into `[64, T, 64]` plus lengths. The PyTorch user's
//!     version: `torchaudio.load`, `torchaudio.functional.resample`,
//!     `torchaudio.transforms.MelSpectrogram`, `log`, `pad_sequence`, in a `DataLoader` with
//!     the same workers.
//! (c) video: 32 H.264 mp4 files (320×240, 25 fps, 4 s) through FFmpeg, 16 frames evenly over
//!     each, scaled to 112×112, normalised, collated into `[B, 16, 3, 112, 112]` (clips per
//!     second). The PyTorch user's version (`bench-peer`'s W5): PyAV in a `DataLoader`.
//!
//! Both run through `mm_data::loader::Loader` with rayon's global pool: set
//! `RAYON_NUM_THREADS` to compare at a given thread count.

#![allow(missing_docs)] // criterion_group! defines undocumented functions

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mm_benches::workloads::{image_pipeline, png_manifest, video_manifest, video_pipeline};
use mm_benches::{extract_fsdd, scratch, shared_data};
use mm_data::loader::{Loader, LoaderConfig};
use mm_data::manifest::{Manifest, Sample, Split};
use mm_data::mel::MelConfig;
use mm_data::pipeline::{AudioSpec, Pipeline};

const BATCH: usize = 64;

fn run_epoch(loader: &Loader) -> usize {
    loader.epoch(0).map(|b| b.expect("batch").len()).sum()
}

fn images(c: &mut Criterion) {
    let dir = scratch("png");
    let n = 256;
    let manifest = Manifest::read(png_manifest(&dir, n).expect("PNG files")).expect("manifest");
    let pipeline = image_pipeline();
    let config = LoaderConfig { batch_size: BATCH, drop_last: false, ..LoaderConfig::training(0) };
    let loader =
        Loader::new(Arc::new(manifest), Split::Train, Arc::new(pipeline), config).expect("loader");
    let mut group = c.benchmark_group("data_pipeline");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    group.bench_function("png256_crop224_flip_jitter_normalise_batch64", |b| {
        b.iter(|| assert_eq!(run_epoch(&loader), n))
    });
    group.finish();
    std::fs::remove_dir_all(dir).ok();
}

fn audio(c: &mut Criterion) {
    let Some(data) = shared_data() else {
        eprintln!("audio benchmark skipped: no FSDD data (set MM_SHARED_DATA or run `cargo xtask fetch-data fsdd`)");
        return;
    };
    let dir = scratch("fsdd");
    let n = 512;
    let names =
        extract_fsdd(&data.join("mirror/fsdd/v1.0.10.tar.gz"), &dir, n).expect("FSDD recordings");
    let mut manifest = Manifest::new(&dir);
    for (name, digit) in &names {
        manifest
            .push(Sample::new(name.clone()).with_audio(name.clone()).with_label(digit.to_string()))
            .expect("sample");
    }
    let mut pipeline = Pipeline::new((0..10).map(|d| d.to_string()).collect());
    pipeline.audio = Some(
        AudioSpec::new(&MelConfig {
            sample_rate: 16_000,
            n_fft: 400,
            hop_length: 160,
            n_mels: 64,
            ..MelConfig::default()
        })
        .expect("mel"),
    );
    let config = LoaderConfig { batch_size: BATCH, ..LoaderConfig::evaluation() };
    let loader =
        Loader::new(Arc::new(manifest), Split::Train, Arc::new(pipeline), config).expect("loader");
    let mut group = c.benchmark_group("data_pipeline");
    group.throughput(Throughput::Elements(names.len() as u64));
    group.sample_size(10);
    group.bench_function("fsdd_wav8k_resample16k_logmel64_batch64", |b| {
        b.iter(|| assert_eq!(run_epoch(&loader), names.len()))
    });
    group.finish();
    std::fs::remove_dir_all(dir).ok();
}

fn video(c: &mut Criterion) {
    if let Err(e) = mm_data::video::Ffmpeg::locate() {
        eprintln!("video benchmark skipped: {e}");
        return;
    }
    let dir = scratch("videos");
    let n = 32;
    let manifest = Manifest::read(video_manifest(&dir, n).expect("videos")).expect("manifest");
    let config = LoaderConfig { batch_size: BATCH, ..LoaderConfig::evaluation() };
    let loader = Loader::new(Arc::new(manifest), Split::Train, Arc::new(video_pipeline()), config)
        .expect("loader");
    let mut group = c.benchmark_group("data_pipeline");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    group.bench_function("h264_320x240_16frames_112_batch", |b| {
        b.iter(|| assert_eq!(run_epoch(&loader), n))
    });
    group.finish();
    std::fs::remove_dir_all(dir).ok();
}

criterion_group!(benches, images, audio, video);
criterion_main!(benches);
