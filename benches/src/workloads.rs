//! The models and steps the benchmarks time, defined once for the criterion benches, the
//! PyTorch comparison (`bench-peer`) and the GPU suite (`bench-gpu`).
//!
//! - [`seed_model`]: the seed's example, a ResNet-50 over 224×224 images and a 2-layer LSTM
//!   (hidden 256, last state) over 20 steps of 300 features, concatenated, and a 10-way linear
//!   head. The sequence rides in the `audio` slot of a batch (an RNN audio encoder is exactly an
//!   LSTM over frames of features).
//! - [`av_digits_model`]: the model of `configs/av-digits/av-digits.toml` (a LeNet over 28×28
//!   images, a 2-block CNN over 40-bin log-mel frames, gated fusion, an MLP head), with the
//!   recipe's shapes: 120 frames at most.
//!
//! Every step is what `mm_train::train::fit` does per batch: forward in training mode, the
//! head's loss, backward, an AdamW update, gradients zeroed.

use std::path::{Path, PathBuf};

use mm_data::augment::ImageAugment;
use mm_data::loader::Batch;
use mm_data::manifest::{Manifest, Sample};
use mm_data::pipeline::{ImageSpec, Pipeline};
use mm_data::Modality;
use mm_fusion::Embeddings;
use mm_train::model::{DataShape, Model, ModelConfig};
use mm_train::optim::{Group, Optimizer, OptimizerConfig};
use mm_train::precision::{Autocast, Precision};
use mm_train::run::RunConfig;
use tch::{nn, Device, Kind, Tensor};

/// The av-digits recipe, as committed.
pub const AV_DIGITS_TOML: &str = include_str!("../../configs/av-digits/av-digits.toml");

/// The seed's example model.
pub const SEED_MODEL_TOML: &str = r#"
[encoders.image]
kind = "image"
arch = "resnet50"

[encoders.audio]
kind = "audio"
backbone = { type = "rnn", cell = "lstm", hidden = 256, layers = 2 }
pooling = "last"

[fusion]
method = "concat"

[head]
type = "classification"
"#;

/// Steps of the seed model's sequences.
pub const SEED_STEPS: i64 = 20;
/// Features per step of the seed model's sequences.
pub const SEED_FEATURES: i64 = 300;
/// Image side of the seed model.
pub const SEED_IMAGE: i64 = 224;
/// Image side, mel bins and most frames of the av-digits recipe.
pub const AV_IMAGE: i64 = 28;
/// Mel bins of the av-digits recipe.
pub const AV_MELS: i64 = 40;
/// Most frames per clip in the av-digits recipe (`max_frames`).
pub const AV_FRAMES: i64 = 120;
/// Classes of both models.
pub const CLASSES: i64 = 10;

/// Which model a step trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// [`SEED_MODEL_TOML`].
    Seed,
    /// The av-digits recipe's model.
    AvDigits,
}

impl Workload {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Seed => "seed_resnet50_lstm",
            Workload::AvDigits => "av_digits_gated",
        }
    }
}

/// The seed model's configuration.
pub fn seed_model() -> ModelConfig {
    toml::from_str(SEED_MODEL_TOML).expect("the seed model's TOML is valid")
}

/// The av-digits recipe's model configuration.
pub fn av_digits_model() -> ModelConfig {
    av_digits_run().model
}

/// The av-digits recipe as a run configuration.
pub fn av_digits_run() -> RunConfig {
    RunConfig::parse(AV_DIGITS_TOML, "configs/av-digits/av-digits.toml".as_ref(), &[])
        .expect("the av-digits recipe is valid")
}

fn shape(n_mels: i64) -> DataShape {
    DataShape {
        modalities: vec![Modality::Image, Modality::Audio],
        classes: (0..CLASSES).map(|c| c.to_string()).collect(),
        n_mels: Some(n_mels),
        ..Default::default()
    }
}

/// Lengths `lo..=hi` from a fixed linear congruential sequence (the PyTorch peer draws the
/// same: `benches/peer/peer.py`).
pub fn lengths(n: usize, lo: i64, hi: i64) -> Vec<i64> {
    let mut state: u64 = 12345;
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            lo + ((state >> 33) % (hi - lo + 1) as u64) as i64
        })
        .collect()
}

/// A batch of random inputs shaped as `workload`'s data, on `device`.
pub fn random_batch(workload: Workload, batch: usize, device: Device) -> Batch {
    let b = batch as i64;
    let f = (Kind::Float, device);
    let (image, audio) = match workload {
        Workload::Seed => (
            Tensor::randn([b, 3, SEED_IMAGE, SEED_IMAGE], f),
            (
                Tensor::randn([b, SEED_STEPS, SEED_FEATURES], f),
                Tensor::full([b], SEED_STEPS, (Kind::Int64, device)),
            ),
        ),
        Workload::AvDigits => (
            Tensor::randn([b, 3, AV_IMAGE, AV_IMAGE], f),
            (
                Tensor::randn([b, AV_FRAMES, AV_MELS], f),
                Tensor::from_slice(&lengths(batch, AV_FRAMES / 3, AV_FRAMES)).to_device(device),
            ),
        ),
    };
    Batch {
        ids: (0..batch).map(|i| i.to_string()).collect(),
        modalities: vec![Modality::Image, Modality::Audio],
        present: Tensor::ones([b, 2], f),
        image: Some(image),
        audio: Some(audio),
        text: None,
        frames: None,
        features: None,
        label: Some(Tensor::randint(CLASSES, [b], (Kind::Int64, device))),
        labels: None,
        target: None,
        transcript: None,
    }
}

/// A model, its optimiser and one batch, ready to be stepped.
pub struct Trainer {
    /// The variables.
    pub vs: nn::VarStore,
    /// The model.
    pub model: Model,
    /// AdamW, as `fit` uses by default.
    pub optimizer: Optimizer,
    /// The batch every step trains on.
    pub batch: Batch,
    /// Learning rate of every step.
    pub lr: f64,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer").field("batch", &self.batch.len()).field("lr", &self.lr).finish()
    }
}

impl Trainer {
    /// `workload`'s model on `device`, seeded, with a random batch of `batch` samples.
    pub fn new(workload: Workload, batch: usize, device: Device) -> Self {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(device);
        let (config, mels) = match workload {
            Workload::Seed => (seed_model(), SEED_FEATURES),
            Workload::AvDigits => (av_digits_model(), AV_MELS),
        };
        let model = Model::new(&vs.root(), &config, &shape(mels))
            .expect("the benchmark models fit their data");
        let optimizer = Optimizer::new(
            &OptimizerConfig::AdamW { betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.01 },
            vec![Group::new("all", vs.trainable_variables())],
        )
        .expect("AdamW's settings are valid");
        Trainer { vs, model, optimizer, batch: random_batch(workload, batch, device), lr: 1e-3 }
    }

    /// Trainable parameters.
    pub fn parameters(&self) -> i64 {
        self.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
    }

    /// One training step; returns the loss as a tensor (reading it would wait for the device).
    pub fn step(&mut self) -> Tensor {
        self.step_in(Precision::F32)
    }

    /// One training step with the forward pass in `precision` (bf16 autocast, as `fit` does).
    pub fn step_in(&mut self, precision: Precision) -> Tensor {
        let loss = {
            let _autocast = Autocast::scope(precision, self.vs.device());
            let output = self.model.forward_t(&self.batch, true);
            self.model.loss(&output, &self.batch).expect("the batch has labels")
        };
        loss.backward();
        self.optimizer.step(self.lr);
        self.optimizer.zero_grad();
        loss
    }
}

/// Runs `f` `warmup` times, then `iters` times, and returns each timed run's seconds (after a
/// device synchronisation, so that CUDA's queued work is counted).
pub fn time_runs(device: Device, warmup: usize, iters: usize, mut f: impl FnMut()) -> Vec<f64> {
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    for _ in 0..warmup {
        f();
    }
    sync();
    (0..iters)
        .map(|_| {
            let start = std::time::Instant::now();
            f();
            sync();
            start.elapsed().as_secs_f64()
        })
        .collect()
}

/// The median of `xs` (the mean of the middle two for an even count); NaN when empty.
pub fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Modalities and embedding sizes of the fusion benchmarks: an image, an audio and a text
/// embedding.
pub const FUSION_DIMS: [(&str, i64); 3] = [("image", 512), ("audio", 128), ("text", 256)];

/// Every fusion method, as benchmarked: its name and its `[model.fusion]` TOML. Output 128
/// where the method has a size; tensor fusion projects each input to 16 first (17³ = 4913
/// outputs); cross-attention reads sequences (see [`fusion_inputs`]).
pub const FUSION_CASES: [(&str, &str); 9] = [
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

/// Random embeddings of [`FUSION_DIMS`] for `batch` samples on `device`, requiring gradients;
/// with `sequences`, the audio and text also get sequences of 100 and 32 steps (random valid
/// lengths from half to all of them).
pub fn fusion_inputs(batch: i64, sequences: bool, device: Device) -> Embeddings {
    let f = (Kind::Float, device);
    let pooled: Vec<Tensor> = FUSION_DIMS
        .iter()
        .map(|(_, d)| Tensor::randn([batch, *d], f).set_requires_grad(true))
        .collect();
    let mut e = Embeddings::all_present(pooled);
    if sequences {
        for (m, t) in [(1usize, 100i64), (2, 32)] {
            let lengths = Tensor::randint_low(t / 2, t + 1, [batch], (Kind::Int64, device));
            let mask = Tensor::arange(t, (Kind::Int64, device))
                .unsqueeze(0)
                .lt_tensor(&lengths.unsqueeze(1));
            e.seqs[m] = Some((Tensor::randn([batch, t, FUSION_DIMS[m].1], f), mask));
        }
    }
    e
}

/// The image pipeline of W1 and of the GPU suite: random resized crop to 224, horizontal flip,
/// colour jitter 0.4 (brightness, contrast, saturation), ImageNet normalisation; one class.
pub fn image_pipeline() -> Pipeline {
    let mut pipeline = Pipeline::new(vec!["x".into()]);
    let mut spec = ImageSpec::new((224, 224));
    spec.augment = ImageAugment {
        crop: ImageAugment::standard().crop,
        hflip: 0.5,
        brightness: 0.4,
        contrast: 0.4,
        saturation: 0.4,
        ..Default::default()
    };
    pipeline.image = Some(spec);
    pipeline
}

/// `dir/images-N/manifest.jsonl` over `n` textured 256×256 PNG files ([`crate::write_pngs`]),
/// written once (into a staging folder renamed into place) and reused afterwards.
pub fn png_manifest(dir: &Path, n: usize) -> Result<PathBuf, String> {
    let images = dir.join(format!("images-{n}"));
    let path = images.join("manifest.jsonl");
    if path.is_file() {
        return Ok(path);
    }
    let staging = dir.join(format!(".images-{n}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    let mut manifest = Manifest::new(&staging);
    for name in crate::write_pngs(&staging, n, 256) {
        manifest
            .push(Sample::new(name.clone()).with_image(name).with_label("x"))
            .map_err(|e| mm_data::error::report(&e))?;
    }
    manifest.write(staging.join("manifest.jsonl")).map_err(|e| mm_data::error::report(&e))?;
    let _ = std::fs::remove_dir_all(&images);
    std::fs::rename(&staging, &images)
        .map_err(|e| format!("{} -> {}: {e}", staging.display(), images.display()))?;
    Ok(path)
}

/// Side of W5's videos.
pub const VIDEO_SIZE: (usize, usize) = (240, 320);
/// Frames per second and seconds of W5's videos.
pub const VIDEO_FPS: f64 = 25.0;
/// Seconds of each of W5's videos.
pub const VIDEO_SECONDS: usize = 4;
/// Frames a W5 clip takes, and their side.
pub const CLIP_FRAMES: usize = 16;
/// Side of W5's clip frames.
pub const CLIP_SIDE: usize = 112;

/// `n` H.264 mp4 files of 320×240 at 25 fps, 4 s each (a moving square over a gradient with
/// a little noise, different per file), and their manifest, in `dir/videos-N` (written once,
/// through FFmpeg).
pub fn video_manifest(dir: &Path, n: usize) -> Result<PathBuf, String> {
    let videos = dir.join(format!("videos-{n}"));
    let path = videos.join("manifest.jsonl");
    if path.is_file() {
        return Ok(path);
    }
    let staging = dir.join(format!(".videos-{n}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    let (h, w) = VIDEO_SIZE;
    let count = (VIDEO_FPS as usize) * VIDEO_SECONDS;
    let mut manifest = Manifest::new(&staging);
    for i in 0..n {
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ i as u64;
        let frames: Vec<ndarray::Array3<u8>> = (0..count)
            .map(|k| {
                let (sx, sy) = ((k * 3 + i * 7) % (w - 40), (k * 2 + i * 5) % (h - 40));
                ndarray::Array3::from_shape_fn((h, w, 3), |(y, x, c)| {
                    state =
                        state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let noise = (state >> 60) as usize;
                    let base = if (sx..sx + 40).contains(&x) && (sy..sy + 40).contains(&y) {
                        220
                    } else {
                        (x * 255 / w + y * 128 / h + c * 40 + i * 13) % 200
                    };
                    (base + noise) as u8
                })
            })
            .collect();
        let name = format!("v{i:04}.mp4");
        mm_data::video::encode_video(
            &staging.join(&name),
            &frames,
            VIDEO_FPS,
            "libx264",
            None,
            None,
        )
        .map_err(|e| mm_data::error::report(&e))?;
        manifest
            .push(Sample::new(format!("v{i:04}")).with_video(name).with_label("x"))
            .map_err(|e| mm_data::error::report(&e))?;
    }
    manifest.write(staging.join("manifest.jsonl")).map_err(|e| mm_data::error::report(&e))?;
    let _ = std::fs::remove_dir_all(&videos);
    std::fs::rename(&staging, &videos)
        .map_err(|e| format!("{} -> {}: {e}", staging.display(), videos.display()))?;
    Ok(path)
}

/// W5's pipeline: 16 frames evenly over each video, scaled to 112×112 by FFmpeg, ImageNet's
/// statistics, no augmentation (as an evaluation clip).
pub fn video_pipeline() -> Pipeline {
    use mm_data::pipeline::{ClipSpec, FramesSpec};
    let mut pipeline = Pipeline::new(vec!["x".into()]);
    pipeline.frames = Some(FramesSpec {
        image: ImageSpec { fit_statistics: false, ..ImageSpec::new((CLIP_SIDE, CLIP_SIDE)) },
        max_frames: Some(CLIP_FRAMES),
        clip: ClipSpec { frames: CLIP_FRAMES, ..ClipSpec::default() },
    });
    pipeline
}
