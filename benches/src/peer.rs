//! mm against the same work in PyTorch, on the same machine: the inputs both sides read, our
//! side of each workload, and the table (`cargo xtask bench-peer`, binary `bench-peer`).
//!
//! | id | workload | measure |
//! | --- | --- | --- |
//! | W1 | 256 PNG files of 256×256 → random resized crop 224, flip, colour jitter 0.4, normalise, batches of 64 | samples/s, target ≥ 2× PyTorch |
//! | W2 | 512 FSDD WAV files (8 kHz) → resample to 16 kHz → 64-bin log-mel, padded batches of 64 | samples/s, target ≥ 2× |
//! | W3 | one training step of the seed model (batch 8) and of the av-digits model (batch 64) | ms/step, target no slower |
//! | W4 | one epoch of the av-digits recipe (4500 training, 500 validation samples), data loading, validation and checkpoint included | s/epoch, target ≤ 0.7× |
//! | W5 | 64 H.264 mp4 files (320×240, 25 fps, 4 s) → 16 frames evenly, 112×112, normalised, batches of 64 | clips/s, target ≥ PyAV in a DataLoader |
//!
//! Both sides read the same files (written once into the work folder), use the same batch
//! sizes, thread count, model definitions and initialisation scheme (libtorch's defaults, which
//! are PyTorch's), and report the median of repeated runs after a warm-up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use mm_data::loader::{Loader, LoaderConfig};
use mm_data::manifest::{Manifest, Sample, Split};
use mm_data::mel::MelConfig;
use mm_data::pipeline::{AudioSpec, Pipeline};
use mm_datasets::avdigits::{convert, AvDigitsConfig};
use mm_train::model::{DataShape, Model};
use mm_train::train::{fit, TrainConfig};
use serde::{Deserialize, Serialize};
use tch::{nn, Device};

use crate::workloads::{
    av_digits_run, image_pipeline, median, png_manifest, time_runs, video_manifest, video_pipeline,
    Trainer, Workload, CLIP_FRAMES, CLIP_SIDE,
};

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sizes {
    /// PNG files of W1.
    pub images: usize,
    /// WAV files of W2.
    pub clips: usize,
    /// Training images per digit of W4's av-digits (test: a fifth of it).
    pub av_per_digit: usize,
    /// Batch of the seed model's step in W3.
    pub seed_batch: usize,
    /// Video files of W5.
    #[serde(default)]
    pub videos: usize,
    /// Timed repetitions (epochs for W1, W2; steps for W3).
    pub repeats: usize,
}

impl Sizes {
    /// The full comparison.
    pub fn full() -> Self {
        Sizes { images: 256, clips: 512, av_per_digit: 500, seed_batch: 8, videos: 64, repeats: 3 }
    }

    /// A quick pass over every code path (CI, smoke tests): numbers mean little.
    pub fn quick() -> Self {
        Sizes { images: 64, clips: 64, av_per_digit: 20, seed_batch: 2, videos: 8, repeats: 2 }
    }
}

/// One measurement of one side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measure {
    /// `W1`, `W2`, `W3-seed`, `W3-av`, `W4`.
    pub id: String,
    /// What was measured.
    pub what: String,
    /// The median.
    pub value: f64,
    /// `samples/s` (higher is better) or `ms/step`, `s/epoch` (lower is better).
    pub unit: String,
    /// Every timed repetition, in `unit`.
    pub runs: Vec<f64>,
}

impl Measure {
    /// Whether higher values are better.
    pub fn higher_is_better(&self) -> bool {
        self.unit.ends_with("/s")
    }
}

/// The inputs both sides read, in the work folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inputs {
    /// Manifest of the W1 PNG files.
    pub images: PathBuf,
    /// Manifest of the W2 WAV files, when FSDD was found.
    pub clips: Option<PathBuf>,
    /// Manifest of W4's av-digits data set, when MNIST and FSDD were found.
    pub av_digits: Option<PathBuf>,
    /// Manifest of W5's video files, when an FFmpeg was found to write them.
    #[serde(default)]
    pub videos: Option<PathBuf>,
    /// Why any of them is missing.
    pub missing: Vec<String>,
}

/// Where the shared data lives: FSDD's release archive and MNIST's idx files.
#[derive(Debug, Clone)]
pub struct Sources {
    /// FSDD v1.0.10 `.tar.gz` (or a folder of its recordings).
    pub fsdd: Option<PathBuf>,
    /// A folder with MNIST's four idx files (`.gz` or not).
    pub mnist: Option<PathBuf>,
}

impl Sources {
    /// What `cargo xtask fetch-data mnist fsdd` left in `data_dir`, else the development
    /// machines' shared mirror (`MM_SHARED_DATA`, else `../shared/data`).
    pub fn find(data_dir: &Path) -> Self {
        let shared = crate::shared_data();
        let first = |candidates: Vec<PathBuf>| candidates.into_iter().find(|p| p.exists());
        let mut fsdd = vec![data_dir.join("fsdd/recordings")];
        let mut mnist = vec![data_dir.join("mnist/raw")];
        if let Some(s) = &shared {
            fsdd.push(s.join("mirror/fsdd/v1.0.10.tar.gz"));
            mnist.push(s.join("mirror/mnist"));
        }
        Sources { fsdd: first(fsdd), mnist: first(mnist) }
    }
}

/// Writes (once) the inputs of every workload into `work`.
pub fn prepare(work: &Path, sources: &Sources, sizes: Sizes) -> Result<Inputs, String> {
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    std::fs::create_dir_all(work).map_err(|e| io("create", work, e))?;
    let mut missing = Vec::new();
    // W1: PNG files, the same pattern as the criterion bench.
    let images = png_manifest(work, sizes.images)?;
    // W2: FSDD clips.
    let clips = work.join(format!("clips-{}", sizes.clips));
    let clips = match &sources.fsdd {
        _ if clips.join("manifest.jsonl").is_file() => Some(clips),
        Some(fsdd) => {
            let staging = work.join(".clips-staging");
            let _ = std::fs::remove_dir_all(&staging);
            std::fs::create_dir_all(&staging).map_err(|e| io("create", &staging, e))?;
            let names = crate::extract_fsdd(fsdd, &staging, sizes.clips)?;
            let mut manifest = Manifest::new(&staging);
            for (name, digit) in &names {
                manifest
                    .push(
                        Sample::new(name.clone())
                            .with_audio(name.clone())
                            .with_label(digit.to_string()),
                    )
                    .map_err(|e| mm_data::error::report(&e))?;
            }
            manifest
                .write(staging.join("manifest.jsonl"))
                .map_err(|e| mm_data::error::report(&e))?;
            rename(&staging, &clips)?;
            Some(clips)
        }
        None => {
            missing.push("W2, W4: no FSDD (run `cargo xtask fetch-data fsdd`)".into());
            None
        }
    };
    // W4: the av-digits recipe's data set, degraded as its README says.
    let av_digits = av_digits(work, sources, sizes.av_per_digit)?;
    if av_digits.is_none() {
        missing.push("W4: no MNIST (run `cargo xtask fetch-data mnist fsdd`)".into());
    }
    // W5: H.264 files, written by FFmpeg.
    let videos = match mm_data::video::Ffmpeg::locate() {
        Ok(_) => Some(video_manifest(work, sizes.videos.max(1))?),
        Err(e) => {
            missing.push(format!("W5: {e}"));
            None
        }
    };
    let inputs = Inputs {
        images,
        clips: clips.map(|c| c.join("manifest.jsonl")),
        av_digits,
        videos,
        missing,
    };
    let text = serde_json::to_string_pretty(&inputs).map_err(|e| mm_data::error::report(&e))?;
    mm_data::fs::write_atomic(&work.join("inputs.json"), text.as_bytes())
        .map_err(|e| mm_data::error::report(&e))?;
    Ok(inputs)
}

/// The av-digits recipe's data set (`per_digit` training pairs per digit, a fifth of that for
/// test), degraded as its README says, written once under `work`: its manifest, or `None`
/// without MNIST and FSDD.
pub fn av_digits(
    work: &Path,
    sources: &Sources,
    per_digit: usize,
) -> Result<Option<PathBuf>, String> {
    let av = work.join(format!("av-digits-{per_digit}"));
    if av.join("manifest.jsonl").is_file() {
        return Ok(Some(av.join("manifest.jsonl")));
    }
    let (Some(mnist), Some(fsdd)) = (&sources.mnist, &sources.fsdd) else { return Ok(None) };
    let config = AvDigitsConfig {
        train_per_digit: Some(per_digit),
        test_per_digit: Some(per_digit / 5),
        image_noise: 0.4,
        occlusion: 0.5,
        audio_snr_db: Some(-5.0),
        ..AvDigitsConfig::default()
    };
    convert(mnist, fsdd, &av, &config, false).map_err(|e| format!("building av-digits: {e}"))?;
    Ok(Some(av.join("manifest.jsonl")))
}

fn rename(from: &Path, to: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(to);
    std::fs::rename(from, to)
        .map_err(|e| format!("rename {} to {}: {e}", from.display(), to.display()))
}

/// Throughput of whole loader epochs over `manifest` (one warm-up epoch, then `repeats`).
fn loader_throughput(
    id: &str,
    what: &str,
    manifest: &Path,
    pipeline: Pipeline,
    train: bool,
    repeats: usize,
) -> Result<Measure, String> {
    let manifest = Manifest::read(manifest).map_err(|e| mm_data::error::report(&e))?;
    let n = manifest.samples().len();
    let config = if train {
        LoaderConfig { batch_size: 64, drop_last: false, ..LoaderConfig::training(0) }
    } else {
        LoaderConfig { batch_size: 64, ..LoaderConfig::evaluation() }
    };
    let loader = Loader::new(Arc::new(manifest), Split::Train, Arc::new(pipeline), config)
        .map_err(|e| mm_data::error::report(&e))?;
    let mut runs = Vec::new();
    for epoch in 0..=repeats as u64 {
        let start = Instant::now();
        let mut seen = 0;
        for batch in loader.epoch(epoch) {
            seen += batch.map_err(|e| mm_data::error::report(&e))?.len();
        }
        let rate = seen as f64 / start.elapsed().as_secs_f64();
        if seen != n {
            return Err(format!("{id}: an epoch delivered {seen} of {n} samples"));
        }
        if epoch > 0 {
            runs.push(rate);
        }
    }
    Ok(Measure {
        id: id.into(),
        what: what.into(),
        value: median(&runs),
        unit: "samples/s".into(),
        runs,
    })
}

/// W1 on our side.
pub fn w1(inputs: &Inputs, sizes: Sizes) -> Result<Measure, String> {
    let pipeline = image_pipeline();
    let what = format!("{} PNG 256x256 -> random resized crop 224, flip, colour jitter 0.4, normalise, batches of 64", sizes.images);
    loader_throughput("W1", &what, &inputs.images, pipeline, true, sizes.repeats)
}

/// W2 on our side.
pub fn w2(inputs: &Inputs, sizes: Sizes) -> Result<Option<Measure>, String> {
    let Some(clips) = &inputs.clips else { return Ok(None) };
    let mut pipeline = Pipeline::new((0..10).map(|d| d.to_string()).collect());
    let mel = MelConfig {
        sample_rate: 16_000,
        n_fft: 400,
        hop_length: 160,
        n_mels: 64,
        ..MelConfig::default()
    };
    pipeline.audio = Some(AudioSpec::new(&mel).map_err(|e| mm_data::error::report(&e))?);
    let what = format!("{} FSDD WAV 8 kHz -> resample 16 kHz -> log-mel 64 (n_fft 400, hop 160), padded batches of 64", sizes.clips);
    loader_throughput("W2", &what, clips, pipeline, false, sizes.repeats).map(Some)
}

/// W5 on our side: clips of video files through FFmpeg, in the loader's pool.
pub fn w5(inputs: &Inputs, sizes: Sizes) -> Result<Option<Measure>, String> {
    let Some(videos) = &inputs.videos else { return Ok(None) };
    let what = format!("{} H.264 mp4 320x240 25 fps 4 s -> {CLIP_FRAMES} frames evenly, {CLIP_SIDE}x{CLIP_SIDE}, normalised, batches of 64", sizes.videos);
    let mut m = loader_throughput("W5", &what, videos, video_pipeline(), false, sizes.repeats)?;
    m.unit = "clips/s".into();
    Ok(Some(m))
}

/// W3 on our side: the median step time of each model.
pub fn w3(sizes: Sizes, device: Device) -> Vec<Measure> {
    [(Workload::Seed, sizes.seed_batch, "W3-seed"), (Workload::AvDigits, 64, "W3-av"), (Workload::AvDigits, 1, "W3-av-1")]
        .into_iter()
        .map(|(workload, batch, id)| {
            let mut trainer = Trainer::new(workload, batch, device);
            // A step at batch 1 is short: more of them (as the peer does).
            let timed = if batch == 1 { sizes.repeats.max(20) } else { sizes.repeats };
            let runs: Vec<f64> = time_runs(device, 2, timed, || {
                let _ = trainer.step();
            })
            .into_iter()
            .map(|s| s * 1e3)
            .collect();
            let what = match workload {
                Workload::Seed => format!("training step, ResNet-50 224x224 + 2-layer LSTM (20 x 300) + concat + 10-way, batch {batch}"),
                Workload::AvDigits if batch == 1 => "training step, av-digits model, batch 1 (fixed cost per step: framework overhead)".to_string(),
                Workload::AvDigits => format!("training step, av-digits model (LeNet + audio CNN + gated fusion), batch {batch}"),
            };
            Measure { id: id.into(), what, value: median(&runs), unit: "ms/step".into(), runs }
        })
        .collect()
}

/// Images per forward pass of W6.
pub fn clip_batch(sizes: Sizes) -> i64 {
    if sizes.repeats <= 2 {
        4
    } else {
        32
    }
}

/// W6 on our side: image embeddings of CLIP ViT-B/32 (transformers' default configuration,
/// randomly initialised: the time does not depend on the values), 224x224, in evaluation mode
/// without gradients.
pub fn w6(sizes: Sizes, device: Device) -> Result<Measure, String> {
    use mm_encoders::clip::{Clip, ClipConfig};
    let config: ClipConfig = serde_json::from_str("{}").map_err(|e| e.to_string())?;
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(device);
    let clip = Clip::new(&vs.root(), &config).map_err(|e| e.to_string())?;
    let batch = clip_batch(sizes);
    let x = tch::Tensor::randn([batch, 3, 224, 224], (tch::Kind::Float, device));
    let timed = sizes.repeats.max(3);
    let runs: Vec<f64> = time_runs(device, 2, timed, || {
        let _ = tch::no_grad(|| clip.image_features(&x));
    })
    .into_iter()
    .map(|s| batch as f64 / s)
    .collect();
    Ok(Measure {
        id: "W6".into(),
        what: format!("CLIP ViT-B/32 image embeddings (vision tower and projection), 224x224, batch {batch}, no gradients"),
        value: median(&runs),
        unit: "images/s".into(),
        runs,
    })
}

/// Decoded tokens of W7.
pub const WHISPER_TOKENS: usize = 32;

/// W7 on our side: Whisper-tiny (transformers' `openai/whisper-tiny` sizes, randomly
/// initialised) on one 30-second window: the encoder, then greedy decoding of 32 tokens after
/// the 4 start tokens with the key/value cache; the time over the window's 30 s (real-time
/// factor, lower is faster).
pub fn w7(sizes: Sizes, device: Device) -> Result<Measure, String> {
    use mm_encoders::whisper::{Whisper, WhisperConfig};
    let config: WhisperConfig = serde_json::from_str(
        r#"{"vocab_size": 51865, "num_mel_bins": 80, "d_model": 384, "encoder_layers": 4,
            "encoder_attention_heads": 6, "decoder_layers": 4, "decoder_attention_heads": 6,
            "encoder_ffn_dim": 1536, "decoder_ffn_dim": 1536}"#,
    )
    .map_err(|e| e.to_string())?;
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(device);
    let whisper = Whisper::new(&vs.root(), &config).map_err(|e| e.to_string())?;
    let mel = tch::Tensor::randn([1, 80, 3000], (tch::Kind::Float, device));
    let start = [50258i64, 50259, 50359, 50363];
    let mut err = None;
    let runs: Vec<f64> = time_runs(device, 1, sizes.repeats.max(3), || {
        let done = tch::no_grad(|| -> Result<usize, String> {
            let audio = whisper.encode(&mel).map_err(|e| e.to_string())?;
            // No end token (-1): always the same number of steps.
            Ok(whisper.greedy(&audio, &start, -1, start.len() + WHISPER_TOKENS).len())
        });
        match done {
            Ok(n) if n == WHISPER_TOKENS => {}
            Ok(n) => err = Some(format!("W7 decoded {n} tokens, not {WHISPER_TOKENS}")),
            Err(e) => err = Some(e),
        }
    })
    .into_iter()
    .map(|s| s / 30.0)
    .collect();
    if let Some(e) = err {
        return Err(e);
    }
    Ok(Measure {
        id: "W7".into(),
        what: format!("Whisper-tiny on a 30 s window: encoder, then {WHISPER_TOKENS} tokens decoded greedily with a key/value cache (real-time factor)"),
        value: median(&runs),
        unit: "x real time".into(),
        runs,
    })
}

/// W4 on our side: one epoch of `fit` on the av-digits recipe (training, validation,
/// checkpoint), with the data prepared (cleaned, statistics fitted) beforehand.
pub fn w4(inputs: &Inputs, scratch: &Path, device: Device) -> Result<Option<Measure>, String> {
    let Some(manifest) = &inputs.av_digits else { return Ok(None) };
    let mut config = av_digits_run();
    config.data.manifest = manifest.clone();
    let prepared =
        config.data.prepare(config.train.seed).map_err(|e| mm_data::error::report(&e))?;
    let n_train = prepared.manifest.split(Split::Train).count();
    let n_val = prepared.manifest.split(Split::Val).count();
    let pipeline = Arc::new(prepared.pipeline);
    let manifest = Arc::new(prepared.manifest);
    let mut runs = Vec::new();
    for repeat in 0..2 {
        let out = scratch.join(format!("w4-{repeat}"));
        let _ = std::fs::remove_dir_all(&out);
        tch::manual_seed(0);
        let vs = nn::VarStore::new(device);
        let model =
            Model::new(&vs.root(), &config.model, &DataShape::from_pipeline(&pipeline, vec![]))
                .map_err(|e| mm_data::error::report(&e))?;
        let train =
            TrainConfig { epochs: 1, verbose: false, progress: false, ..config.train.clone() };
        let start = Instant::now();
        fit(&model, &vs, Arc::clone(&manifest), Arc::clone(&pipeline), &train, &out, false)
            .map_err(|e| mm_data::error::report(&e))?;
        runs.push(start.elapsed().as_secs_f64());
        let _ = std::fs::remove_dir_all(&out);
    }
    let what = format!("one epoch of the av-digits recipe: {n_train} training + {n_val} validation samples from PNG/WAV, checkpoint");
    Ok(Some(Measure { id: "W4".into(), what, value: median(&runs), unit: "s/epoch".into(), runs }))
}

/// Where an epoch's time goes on our side: the av-digits recipe's training loop, timed by part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    /// Training batches timed.
    pub batches: usize,
    /// Seconds waiting for the loader's next batch.
    pub data_wait: f64,
    /// Seconds in the forward pass and the loss.
    pub forward: f64,
    /// Seconds in the backward pass.
    pub backward: f64,
    /// Seconds in the optimiser's update and clearing the gradients.
    pub optimizer: f64,
    /// The whole loop.
    pub total: f64,
}

/// Times the parts of one training epoch of the av-digits recipe (the loop `fit` runs, without
/// validation and checkpoint).
pub fn profile(inputs: &Inputs, device: Device) -> Result<Option<Profile>, String> {
    let Some(manifest) = &inputs.av_digits else { return Ok(None) };
    let mut config = av_digits_run();
    config.data.manifest = manifest.clone();
    let prepared =
        config.data.prepare(config.train.seed).map_err(|e| mm_data::error::report(&e))?;
    let pipeline = Arc::new(prepared.pipeline);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let model = Model::new(&vs.root(), &config.model, &DataShape::from_pipeline(&pipeline, vec![]))
        .map_err(|e| mm_data::error::report(&e))?;
    let mut optimizer = mm_train::optim::Optimizer::new(
        &config.train.optimizer,
        vec![mm_train::optim::Group::new("all", vs.trainable_variables())],
    )
    .map_err(|e| mm_data::error::report(&e))?;
    let loader = Loader::new(
        Arc::new(prepared.manifest),
        Split::Train,
        pipeline,
        LoaderConfig { batch_size: config.train.batch_size, ..LoaderConfig::training(0) },
    )
    .map_err(|e| mm_data::error::report(&e))?;
    let mut p = Profile {
        batches: 0,
        data_wait: 0.0,
        forward: 0.0,
        backward: 0.0,
        optimizer: 0.0,
        total: 0.0,
    };
    let start = Instant::now();
    let mut batches = loader.epoch(0);
    loop {
        let t = Instant::now();
        let Some(batch) = batches.next() else { break };
        let batch = batch.map_err(|e| mm_data::error::report(&e))?.to_device(device);
        p.data_wait += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let loss = model
            .loss(&model.forward_t(&batch, true), &batch)
            .map_err(|e| mm_data::error::report(&e))?;
        p.forward += t.elapsed().as_secs_f64();
        let t = Instant::now();
        loss.backward();
        let _ = loss.double_value(&[]);
        p.backward += t.elapsed().as_secs_f64();
        let t = Instant::now();
        optimizer.step(config.train.lr);
        optimizer.zero_grad();
        p.optimizer += t.elapsed().as_secs_f64();
        p.batches += 1;
    }
    p.total = start.elapsed().as_secs_f64();
    Ok(Some(p))
}

/// The profile as a sentence or two of Markdown.
pub fn profile_text(p: &Profile) -> String {
    let share = |x: f64| 100.0 * x / p.total;
    format!(
        "Where an av-digits training epoch goes on our side ({} batches of 64, {:.2} s): waiting for data {:.0}%, \
         forward and loss {:.0}%, backward {:.0}%, optimiser {:.0}%, the rest {:.0}%.\n",
        p.batches,
        p.total,
        share(p.data_wait),
        share(p.forward),
        share(p.backward),
        share(p.optimizer),
        share(p.total - p.data_wait - p.forward - p.backward - p.optimizer)
    )
}

/// Combines rounds of measures: per workload, the median of the rounds' values, with every
/// timed run kept; workloads in the order of their first appearance.
pub fn merge_rounds(rounds: &[Vec<Measure>]) -> Vec<Measure> {
    let mut out: Vec<(Measure, Vec<f64>)> = Vec::new();
    for m in rounds.iter().flatten() {
        match out.iter_mut().find(|(o, _)| o.id == m.id) {
            Some((o, values)) => {
                o.runs.extend(&m.runs);
                values.push(m.value);
            }
            None => out.push((m.clone(), vec![m.value])),
        }
    }
    out.into_iter()
        .map(|(mut m, values)| {
            m.value = median(&values);
            m
        })
        .collect()
}

/// The target of each workload: how many times faster than PyTorch we must be.
pub fn target(id: &str) -> f64 {
    match id {
        "W1" | "W2" => 2.0,
        "W4" => 1.0 / 0.7,
        _ => 1.0,
    }
}

/// One row of the comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// Ours.
    pub mm: Measure,
    /// PyTorch's, when it ran.
    pub pytorch: Option<Measure>,
    /// How many times faster we are (their time over ours, or our throughput over theirs).
    pub speedup: Option<f64>,
    /// The speed-up the issue asks for.
    pub target: f64,
    /// Whether the target was met.
    pub met: Option<bool>,
}

/// Pairs our measures with the peer's.
pub fn compare(ours: &[Measure], theirs: &[Measure]) -> Vec<Row> {
    ours.iter()
        .map(|m| {
            let peer = theirs.iter().find(|t| t.id == m.id).cloned();
            let speedup = peer.as_ref().map(|p| {
                if m.higher_is_better() {
                    m.value / p.value
                } else {
                    p.value / m.value
                }
            });
            let target = target(&m.id);
            Row { mm: m.clone(), pytorch: peer, speedup, target, met: speedup.map(|s| s >= target) }
        })
        .collect()
}

/// The comparison as a Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from("| id | workload | unit | mm | PyTorch | speed-up | target | met |\n| --- | --- | --- | ---: | ---: | ---: | ---: | --- |\n");
    for r in rows {
        let fmt = |v: f64| {
            if v >= 100.0 {
                format!("{v:.0}")
            } else if v >= 10.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.2}")
            }
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.2}x | {} |\n",
            r.mm.id,
            r.mm.what,
            r.mm.unit,
            fmt(r.mm.value),
            r.pytorch.as_ref().map_or("-".into(), |p| fmt(p.value)),
            r.speedup.map_or("-".into(), |s| format!("{s:.2}x")),
            r.target,
            match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, value: f64, unit: &str) -> Measure {
        Measure { id: id.into(), what: String::new(), value, unit: unit.into(), runs: vec![value] }
    }

    #[test]
    fn rounds_merge_to_their_median() {
        let rounds = vec![
            vec![m("W1", 100.0, "samples/s"), m("W3-av", 10.0, "ms/step")],
            vec![m("W1", 300.0, "samples/s"), m("W3-av", 30.0, "ms/step")],
            vec![m("W3-av", 20.0, "ms/step"), m("W1", 200.0, "samples/s")],
        ];
        let merged = merge_rounds(&rounds);
        assert_eq!(
            merged.iter().map(|m| (m.id.as_str(), m.value)).collect::<Vec<_>>(),
            [("W1", 200.0), ("W3-av", 20.0)]
        );
        assert_eq!(merged[0].runs, [100.0, 300.0, 200.0]);
        assert!(merge_rounds(&[]).is_empty());
    }

    #[test]
    fn speedups_point_the_same_way_for_rates_and_times() {
        let rows = compare(
            &[
                m("W1", 800.0, "samples/s"),
                m("W3-seed", 90.0, "ms/step"),
                m("W4", 10.0, "s/epoch"),
                m("W2", 1.0, "samples/s"),
            ],
            &[
                m("W1", 400.0, "samples/s"),
                m("W3-seed", 100.0, "ms/step"),
                m("W4", 12.0, "s/epoch"),
            ],
        );
        assert_eq!(rows[0].speedup, Some(2.0));
        assert_eq!(rows[0].met, Some(true));
        assert!((rows[1].speedup.unwrap_or(0.0) - 100.0 / 90.0).abs() < 1e-12);
        assert_eq!(rows[1].met, Some(true));
        // 10 s against 12 s is 0.83x PyTorch's time: short of the 0.7x target.
        assert_eq!(rows[2].met, Some(false));
        assert_eq!(rows[3].speedup, None);
        let t = table(&rows);
        assert!(t.contains("| W1 |") && t.contains("2.00x") && t.contains("**no**"), "{t}");
    }
}
