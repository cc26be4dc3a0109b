//! Speech synthesis: text to a log-mel spectrogram, then a waveform by Griffin-Lim (the
//! inverse of mm-data's front end, [`mm_data::mel::LogMel::invert`]).
//!
//! The model is duration-based (FastSpeech's plan, Ren et al. 2019), conditioned on the
//! speaker:
//! - an **encoder** over the characters (an embedding and a bidirectional GRU), with a silence
//!   token before and after them, and the speaker's embedding beside every step;
//! - a **duration predictor** (the log of frames per token) and a **length regulator** that
//!   repeats every token's encoding for its frames, with the position inside the token;
//! - a **decoder** (a bidirectional GRU) predicting each frame's normalised log-mel bins and a
//!   **stop** logit, 1 on the last frame; at synthesis the output is cut at the first frame
//!   whose stop probability passes one half, or where the durations end.
//!
//! The durations a model learns come from **forced alignment** with a speech recogniser trained
//! with CTC ([`crate::recognize`]): every training recording is aligned to its transcript
//! ([`mm_train::ctc::align`]) and each character lasts from its first step to the next
//! character's first step; what precedes the first character and follows the last is the
//! silence tokens'. A recording that the recogniser cannot align (too few steps for its text)
//! gets even durations, and is counted in `durations.json`.
//!
//! A run's folder holds `tts.toml` (the resolved configuration), `alphabet.txt`, `data/` (the
//! spectrogram statistics), `speakers.json`, `durations.json`, `checkpoints/` (`best`, the
//! epoch with the lowest validation loss, and `last`, each with Adam's moments, written as
//! `mm train`'s are: a kill leaves the previous one whole) and `metrics.jsonl`.
//!
//! ```no_run
//! use mm_speech::tts::Synthesizer;
//!
//! let tts = Synthesizer::open("runs/tts".as_ref(), tch::Device::Cpu)?;
//! let speech = tts.synthesize("three", "theo")?;
//! std::fs::write("three.wav", mm_data::audio::encode_wav(&speech.audio)).unwrap();
//! # Ok::<(), mm_train::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use mm_data::audio::Audio;
use mm_data::config::{AudioConfig, DataConfig};
use mm_data::loader::{Batch, Loader, LoaderConfig, Shard};
use mm_data::manifest::{Manifest, Split};
use mm_data::mel::{InvertConfig, LogMel, MelConfig};
use mm_data::pipeline::Pipeline;
use mm_data::transcript::{Alphabet, TranscriptConfig};
use mm_seq::rnn::{CellKind, Rnn, RnnConfig};
use mm_seq::SequenceModel;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tch::{nn, Device, Kind, Tensor};

use mm_train::checkpoint;
use mm_train::dist::{ProcessGroup, ReduceOp};
use mm_train::heads::Metric;
use mm_train::optim::{Group, Optimizer, OptimizerConfig};
use mm_train::precision::Precision;
use mm_train::run::Run;
use mm_train::train::{StepLoss, TrainConfig, TrainStep, Trainer};
use mm_train::{Error, Result};

use crate::recognize::Transcribe;

fn mel_default() -> MelConfig {
    MelConfig { sample_rate: 8000, n_fft: 256, hop_length: 80, n_mels: 80, ..MelConfig::default() }
}

/// `[data]` of a synthesis run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtsData {
    /// The manifest: `audio`, `text` (the transcript) and `label` (the speaker) per sample
    /// (`mm data words` writes one from FSDD).
    pub manifest: PathBuf,
    /// The speech recognition run whose alignments give the durations (its mel front end must
    /// have the same sample rate and hop).
    pub aligner: PathBuf,
    /// The spectrogram the model predicts (default: 8 kHz, n_fft 256, hop 80, 80 mel bins).
    #[serde(default = "mel_default")]
    pub mel: MelConfig,
}

/// `[model]` of a synthesis run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TtsModelConfig {
    /// Size of the character embedding and of the encoder's output.
    pub dim: i64,
    /// Size of the speaker embedding.
    pub speaker_dim: i64,
    /// Hidden size of the decoder's GRU (per direction).
    pub decoder_hidden: i64,
    /// Layers of the decoder's GRU.
    pub decoder_layers: i64,
    /// Dropout in training.
    pub dropout: f64,
}

impl Default for TtsModelConfig {
    fn default() -> Self {
        TtsModelConfig {
            dim: 128,
            speaker_dim: 32,
            decoder_hidden: 128,
            decoder_layers: 2,
            dropout: 0.1,
        }
    }
}

/// `[train]` of a synthesis run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TtsTrainConfig {
    /// Passes over the training split.
    pub epochs: u64,
    /// Samples per batch.
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Gradients are scaled down to this norm.
    pub clip_grad_norm: f64,
    /// Seed of the shuffling and the initial weights.
    pub seed: u64,
    /// Weight of the duration loss.
    pub duration_weight: f64,
    /// Weight of the stop loss.
    pub stop_weight: f64,
}

impl Default for TtsTrainConfig {
    fn default() -> Self {
        TtsTrainConfig {
            epochs: 20,
            batch_size: 32,
            lr: 1e-3,
            clip_grad_norm: 1.0,
            seed: 0,
            duration_weight: 1.0,
            stop_weight: 0.1,
        }
    }
}

/// A synthesis run's configuration (what `mm train-tts --config FILE` reads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtsConfig {
    /// Data.
    pub data: TtsData,
    /// Model.
    #[serde(default)]
    pub model: TtsModelConfig,
    /// Training.
    #[serde(default)]
    pub train: TtsTrainConfig,
}

impl TtsConfig {
    /// Reads and checks a configuration file; errors name the file, line and key.
    pub fn from_file(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = mm_data::fs::read_text_capped(path, mm_data::fs::FileKind::Text)?;
        let config: TtsConfig = mm_train::run::parse_toml(&text, path, overrides)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let m = &self.model;
        if m.dim <= 1
            || m.dim % 2 != 0
            || m.speaker_dim <= 0
            || m.decoder_hidden <= 0
            || m.decoder_layers <= 0
            || !(0.0..1.0).contains(&m.dropout)
        {
            return Err(Error::Config(format!("model: dim (even, at least 2), speaker_dim, decoder_hidden and decoder_layers positive, dropout in [0, 1): {m:?}")));
        }
        let t = &self.train;
        if t.epochs == 0
            || t.batch_size == 0
            || !t.lr.is_finite()
            || t.lr <= 0.0
            || t.clip_grad_norm.is_nan()
            || t.clip_grad_norm <= 0.0
        {
            return Err(Error::Config(format!(
                "train: epochs, batch_size, lr and clip_grad_norm positive: {t:?}"
            )));
        }
        LogMel::new(&self.data.mel).map_err(|e| Error::Config(format!("data.mel: {e}")))?;
        Ok(())
    }
}

/// The network.
#[derive(Debug)]
struct Net {
    embed: nn::Embedding,
    speaker: nn::Embedding,
    encoder: Rnn,
    duration: nn::Linear,
    decoder: Rnn,
    mel: nn::Linear,
    stop: nn::Linear,
    dropout: f64,
}

/// What the network predicts for a batch.
struct Predicted {
    /// `[B, L]` log(1 + frames) per token.
    log_durations: Tensor,
    /// `[B, T, M]` normalised log-mel frames.
    mel: Tensor,
    /// `[B, T]` stop logits.
    stop: Tensor,
}

impl Net {
    fn new(
        path: &nn::Path,
        config: &TtsModelConfig,
        tokens: i64,
        speakers: i64,
        n_mels: i64,
    ) -> Result<Self> {
        let gru = |hidden, layers| RnnConfig {
            cell: CellKind::Gru,
            hidden,
            layers,
            bidirectional: true,
            dropout: config.dropout,
        };
        let encoder =
            Rnn::new(&(path / "encoder"), config.dim + config.speaker_dim, &gru(config.dim / 2, 1))
                .map_err(|e| Error::Config(e.to_string()))?;
        let decoder_in = config.dim + config.speaker_dim + 1;
        let decoder = Rnn::new(
            &(path / "decoder"),
            decoder_in,
            &gru(config.decoder_hidden, config.decoder_layers),
        )
        .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Net {
            embed: nn::embedding(path / "embed", tokens, config.dim, Default::default()),
            speaker: nn::embedding(
                path / "speaker",
                speakers,
                config.speaker_dim,
                Default::default(),
            ),
            encoder,
            duration: nn::linear(
                path / "duration",
                config.dim + config.speaker_dim,
                1,
                Default::default(),
            ),
            decoder,
            mel: nn::linear(path / "mel", 2 * config.decoder_hidden, n_mels, Default::default()),
            stop: nn::linear(path / "stop", 2 * config.decoder_hidden, 1, Default::default()),
            dropout: config.dropout,
        })
    }

    /// Token encodings `[B, L, D + S]` (with the speaker beside them).
    fn encode(
        &self,
        tokens: &Tensor,
        token_lengths: &Tensor,
        speakers: &Tensor,
        train: bool,
    ) -> Tensor {
        let (_, l) = tokens.size2().expect("[B, L] tokens");
        let spk = speakers.apply(&self.speaker).unsqueeze(1);
        let x = Tensor::cat(&[tokens.apply(&self.embed), spk.expand([-1, l, -1], false)], 2)
            .dropout(self.dropout, train);
        let enc = self.encoder.forward_seq(&x, token_lengths, train).outputs;
        Tensor::cat(&[enc, spk.expand([-1, l, -1], false)], 2)
    }

    /// Decodes the encodings repeated by `durations` (`[B, L]` frames per token, host).
    fn decode(
        &self,
        encoded: &Tensor,
        durations: &[Vec<i64>],
        train: bool,
    ) -> (Tensor, Tensor, Tensor) {
        let (b, l, d) = encoded.size3().expect("[B, L, D] encodings");
        let frames: Vec<i64> = durations.iter().map(|r| r.iter().sum::<i64>().max(1)).collect();
        let t = *frames.iter().max().unwrap_or(&1);
        // Every frame's token (an index into the flattened [B·L] encodings) and its position
        // inside the token, in [0, 1).
        let mut index = vec![0i64; (b * t) as usize];
        let mut position = vec![0f32; (b * t) as usize];
        for (j, row) in durations.iter().enumerate() {
            let mut f = 0usize;
            for (k, &n) in row.iter().enumerate() {
                for i in 0..n.max(0) {
                    index[j * t as usize + f] = j as i64 * l + k as i64;
                    position[j * t as usize + f] = i as f32 / n as f32;
                    f += 1;
                }
            }
        }
        let device = encoded.device();
        let index = Tensor::from_slice(&index).to_device(device);
        let position = Tensor::from_slice(&position).view([b, t, 1]).to_device(device);
        let lengths = Tensor::from_slice(&frames);
        let regulated = encoded.reshape([b * l, d]).index_select(0, &index).view([b, t, d]);
        let x = Tensor::cat(&[regulated, position], 2).dropout(self.dropout, train);
        let out = self.decoder.forward_seq(&x, &lengths, train);
        (out.outputs.apply(&self.mel), out.outputs.apply(&self.stop).squeeze_dim(2), out.mask)
    }

    fn forward(
        &self,
        tokens: &Tensor,
        token_lengths: &Tensor,
        speakers: &Tensor,
        durations: &[Vec<i64>],
        train: bool,
    ) -> (Predicted, Tensor) {
        let encoded = self.encode(tokens, token_lengths, speakers, train);
        let log_durations = encoded.apply(&self.duration).squeeze_dim(2);
        let (mel, stop, mask) = self.decode(&encoded, durations, train);
        (Predicted { log_durations, mel, stop }, mask)
    }
}

/// A batch as the network takes it: tokens with a silence (0) before and after the text.
struct TtsBatch {
    tokens: Tensor,
    token_lengths: Tensor,
    speakers: Tensor,
    durations: Vec<Vec<i64>>,
    mel: Tensor,
    frames: Vec<i64>,
}

fn tts_batch(
    batch: &Batch,
    durations: &BTreeMap<String, Vec<i64>>,
    device: Device,
) -> Result<TtsBatch> {
    let truths =
        batch.transcripts().ok_or_else(|| Error::Data("no transcripts in the batch".into()))?;
    let (mel, mel_lengths) =
        batch.audio.as_ref().ok_or_else(|| Error::Data("no audio in the batch".into()))?;
    let speakers = batch
        .label
        .as_ref()
        .ok_or_else(|| Error::Data("no speaker (label) in the batch".into()))?;
    let b = batch.len();
    let frames: Vec<i64> = Vec::try_from(mel_lengths.to_device(Device::Cpu)).unwrap_or_default();
    let l = truths.iter().map(Vec::len).max().unwrap_or(0) as i64 + 2;
    let mut tokens = vec![0i64; b * l as usize];
    let mut rows = Vec::with_capacity(b);
    for (j, truth) in truths.iter().enumerate() {
        let n = truth.len();
        tokens[j * l as usize + 1..j * l as usize + 1 + n].copy_from_slice(truth);
        let mut d = durations
            .get(&batch.ids[j])
            .cloned()
            .ok_or_else(|| Error::Data(format!("sample {}: no durations", batch.ids[j])))?;
        if d.len() != n + 2 {
            return Err(Error::Data(format!(
                "sample {}: {} durations for {} tokens",
                batch.ids[j],
                d.len(),
                n + 2
            )));
        }
        // The durations cover the spectrogram exactly (the last silence takes the difference).
        let sum: i64 = d.iter().sum();
        d[n + 1] = (d[n + 1] + frames[j] - sum).max(0);
        rows.push(d);
    }
    Ok(TtsBatch {
        tokens: Tensor::from_slice(&tokens).view([b as i64, l]).to_device(device),
        token_lengths: Tensor::from_slice(
            &truths.iter().map(|t| t.len() as i64 + 2).collect::<Vec<_>>(),
        ),
        speakers: speakers.to_device(device),
        durations: rows,
        mel: mel.to_device(device),
        frames,
    })
}

/// The three losses (mel L1, log-duration MSE, stop BCE) of a batch, each a mean.
fn losses(net: &Net, batch: &TtsBatch, train: bool) -> (Tensor, Tensor, Tensor) {
    let [mel, dur, stop] = loss_sums(net, batch, train).map(|(sum, n)| sum / n.clamp_min(1.0));
    (mel, dur, stop)
}

/// The three losses of a batch as sums and what each is a mean over: mel L1 over the valid
/// frames' bins, log-duration MSE over the tokens, stop BCE over the valid frames. Summed over
/// a split (and over ranks), they give the split's means whatever its batches.
fn loss_sums(net: &Net, batch: &TtsBatch, train: bool) -> [(Tensor, Tensor); 3] {
    let (p, mask) =
        net.forward(&batch.tokens, &batch.token_lengths, &batch.speakers, &batch.durations, train);
    let device = p.mel.device();
    let t = p.mel.size()[1];
    let m = p.mel.size()[2];
    // The target, cut or padded to the predicted length (equal: the durations sum to it).
    let target = batch.mel.narrow(1, 0, t.min(batch.mel.size()[1]));
    let target = if target.size()[1] < t {
        target.constant_pad_nd([0, 0, 0, t - target.size()[1]])
    } else {
        target
    };
    let fmask = mask.to_kind(Kind::Float).to_device(device);
    let frames = fmask.sum(Kind::Float);
    let mel =
        (((&p.mel - &target).abs() * fmask.unsqueeze(2)).sum(Kind::Float), &frames * m as f64);
    let l = p.log_durations.size()[1];
    let tmask =
        mm_seq::lengths_to_mask(&batch.token_lengths, l).to_kind(Kind::Float).to_device(device);
    let truth: Vec<f32> = batch
        .durations
        .iter()
        .flat_map(|d| (0..l as usize).map(|k| d.get(k).map_or(0.0, |v| (*v as f32).ln_1p())))
        .collect();
    let truth = Tensor::from_slice(&truth).view([-1, l]).to_device(device);
    let dur = ((&p.log_durations - truth).square() * &tmask).sum(Kind::Float);
    let dur = (dur, tmask.sum(Kind::Float));
    let mut stop_target = vec![0f32; batch.frames.len() * t as usize];
    for (j, f) in batch.durations.iter().map(|d| d.iter().sum::<i64>()).enumerate() {
        if f > 0 && f <= t {
            stop_target[j * t as usize + f as usize - 1] = 1.0;
        }
    }
    let stop_target = Tensor::from_slice(&stop_target).view([-1, t]).to_device(device);
    let stop = (p.stop.binary_cross_entropy_with_logits::<Tensor>(
        &stop_target,
        None,
        None,
        tch::Reduction::None,
    ) * &fmask)
        .sum(Kind::Float);
    [mel, dur, (stop, frames)]
}

/// Even durations of `n` characters over `frames` frames, with no silence.
fn even(n: usize, frames: i64) -> Vec<i64> {
    let mut d = vec![0i64; n + 2];
    for (k, slot) in d[1..=n].iter_mut().enumerate() {
        *slot = (frames * (k as i64 + 1)) / n.max(1) as i64 - (frames * k as i64) / n.max(1) as i64;
    }
    if n == 0 {
        d[0] = frames;
    }
    d
}

/// Frames per token (the silences first and last) of `total` frames from each character's
/// first and last output step (`stride` frames each): a character lasts from its first step to
/// the next one's; `None` when a character would get no frame (or there are none).
fn from_alignment(steps: &[(usize, usize)], stride: i64, total: i64) -> Option<Vec<i64>> {
    let n = steps.len();
    let last = steps.last()?;
    // Boundaries, clamped to the clip and never decreasing.
    let mut bounds: Vec<i64> = steps.iter().map(|(first, _)| *first as i64 * stride).collect();
    bounds.push((last.1 as i64 + 1) * stride);
    let mut prev = 0;
    for v in bounds.iter_mut() {
        *v = (*v).clamp(prev, total);
        prev = *v;
    }
    let mut d = vec![bounds[0]];
    d.extend(bounds.windows(2).map(|w| w[1] - w[0]));
    d.push(total - bounds[n]);
    (!d[1..=n].contains(&0)).then_some(d)
}

/// Frames per token (silences first and last), by sample id.
type Durations = BTreeMap<String, Vec<i64>>;

/// Durations (frames per token, silences first and last) of `shard`'s samples of `manifest`
/// (every `world`-th from its `rank`), from the aligner's forced alignment; the second value
/// names those that fell back to even durations.
fn align_durations(
    aligner: &Run,
    manifest: &Arc<Manifest>,
    shard: Shard,
) -> Result<(Durations, Vec<String>)> {
    let stride = aligner
        .model
        .ctc_stride()
        .ok_or_else(|| Error::Config("data.aligner: not a speech recognition (ctc) run".into()))?;
    let device = aligner.vs.device();
    let mut out = BTreeMap::new();
    let mut uneven = Vec::new();
    // The aligner reads audio and transcripts; the speaker labels are not its classes.
    let mut unlabelled = Manifest::new(manifest.root());
    for s in manifest.samples().iter().skip(shard.rank).step_by(shard.world.max(1)) {
        unlabelled
            .push(mm_data::manifest::Sample { label: None, labels: Vec::new(), ..s.clone() })
            .map_err(Error::from)?;
    }
    let unlabelled = Arc::new(unlabelled);
    for split in [Split::Train, Split::Val, Split::Test] {
        if unlabelled.split(split).next().is_none() {
            continue;
        }
        let loader = aligner.loader(Arc::clone(&unlabelled), split, 32)?;
        for batch in loader.epoch(0) {
            let batch = batch.map_err(Error::from)?.to_device(device);
            let _no_grad = tch::no_grad_guard();
            let output = aligner.model.forward_t(&batch, false);
            let (log_probs, lengths) = output.sequence.as_ref().expect("ctc output");
            let (b, t, c) = log_probs.size3().expect("[B, T, C]");
            let host: Vec<f64> =
                Vec::try_from(log_probs.to_device(Device::Cpu).to_kind(Kind::Double).view([-1]))
                    .unwrap_or_default();
            let steps: Vec<i64> = Vec::try_from(lengths.to_device(Device::Cpu)).unwrap_or_default();
            let truths = batch.transcripts().ok_or_else(|| Error::Data("no transcripts".into()))?;
            let frames: Vec<i64> = batch
                .audio
                .as_ref()
                .map(|(_, l)| Vec::try_from(l.to_device(Device::Cpu)).unwrap_or_default())
                .unwrap_or_default();
            for (j, truth) in truths.iter().enumerate().take(b as usize) {
                let labels: Vec<usize> = truth.iter().map(|v| *v as usize).collect();
                let rows =
                    &host[j * (t * c) as usize..(j * t as usize + steps[j] as usize) * c as usize];
                let aligned = mm_train::ctc::align(rows, c as usize, Alphabet::BLANK, &labels)
                    .and_then(|a| from_alignment(&a.frames, stride, frames[j]));
                let d = aligned.unwrap_or_else(|| {
                    uneven.push(batch.ids[j].clone());
                    even(labels.len(), frames[j])
                });
                out.insert(batch.ids[j].clone(), d);
            }
        }
    }
    Ok((out, uneven))
}

fn data_config(config: &TtsConfig, alphabet: &Alphabet, speakers: Vec<String>) -> DataConfig {
    let mut data = DataConfig::new(&config.data.manifest);
    data.classes = speakers;
    data.audio = Some(AudioConfig { mel: config.data.mel, ..AudioConfig::default() });
    data.transcript =
        Some(TranscriptConfig { alphabet: alphabet.chars(), ..TranscriptConfig::default() });
    data
}

/// What [`train`] did.
#[derive(Debug, Clone)]
pub struct TtsReport {
    /// One record per epoch (as in `metrics.jsonl`).
    pub history: Vec<Value>,
    /// The lowest validation loss and its epoch.
    pub best: (f64, u64),
    /// Samples whose durations are even, not aligned (the aligner could not place their text).
    pub uneven: Vec<String>,
}

/// Trains a synthesiser as `config` says into `out` (see the module documentation), in
/// mm-train's [`Trainer`]: every epoch ends with a checkpoint (`checkpoints/last`, and
/// `checkpoints/best` when the validation loss improved: weights, Adam's moments and the state,
/// the record written last) and a record in `metrics.jsonl`, `curves.svg` and TensorBoard's
/// event files; with `resume` a run continues from `last` with the durations it aligned, as if
/// never stopped. A folder that already holds a run is refused without `resume`.
///
/// With a `group` of several ranks this process is one rank of a data-parallel job, as
/// [`mm_train::run::train_in`] is: every rank reads and cleans the data, aligns its share of
/// the recordings (all end with every recording's durations), takes rank 0's spectrogram
/// statistics and trains on its share of each batch with the gradients averaged; validation
/// sums over every rank's share; only rank 0 writes the run folder.
pub fn train(
    config: &TtsConfig,
    out: &Path,
    device: Device,
    resume: bool,
    verbose: bool,
    group: Option<&ProcessGroup>,
) -> Result<TtsReport> {
    config.validate()?;
    let group = group.filter(|g| g.world_size() > 1);
    let main = group.is_none_or(ProcessGroup::is_main);
    // Only rank 0 writes the folder, so only it holds the lock (until this function returns).
    let _lock = if main { Some(mm_train::train::claim(out)?) } else { None };
    let ckpt = mm_train::train::checkpoint_dir(out);
    let resuming = resume && checkpoint::exists(&ckpt, "last");
    if main && !resume && checkpoint::exists(&ckpt, "last") {
        return Err(Error::Config(format!(
            "{} holds a synthesis run: --resume continues it, or choose another --out",
            out.display()
        )));
    }
    if main {
        std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
    }
    let aligner = Run::open(&config.data.aligner, None, device)?;
    let alphabet = aligner_alphabet(config, &aligner)?;
    let (manifest, mut pipeline) = prepare(config, &alphabet, out, verbose && main, main)?;
    if let Some(group) = group {
        mm_train::dist::share_statistics(group, &mut pipeline)?;
    }
    let pipeline = Arc::new(pipeline);
    let speakers = pipeline.classes.clone();
    let (durations, uneven) = if resuming {
        // The durations the run was trained on (the aligner may have moved on since), rank 0's.
        let read =
            if main { read_durations(&out.join("durations.json"))? } else { Default::default() };
        match group {
            Some(group) => share_durations(group, read)?,
            None => read,
        }
    } else {
        if main {
            pipeline.save_statistics(out.join("data")).map_err(Error::from)?;
        }
        let aligned = align_run(&aligner, &manifest, group, verbose && main)?;
        if main {
            mm_data::fs::write_atomic(
                &out.join("durations.json"),
                &serde_json::to_vec(&json!({"uneven": aligned.1, "durations": aligned.0}))
                    .unwrap_or_default(),
            )
            .map_err(Error::from)?;
            write_run(config, &alphabet, &speakers, out)?;
        }
        aligned
    };
    drop(aligner);

    tch::manual_seed(config.train.seed as i64);
    let vs = nn::VarStore::new(device);
    let net = Net::new(
        &vs.root(),
        &config.model,
        alphabet.len() as i64,
        speakers.len() as i64,
        config.data.mel.n_mels as i64,
    )?;
    let t = &config.train;
    let loop_config = TrainConfig {
        epochs: t.epochs,
        batch_size: t.batch_size,
        optimizer: OptimizerConfig::Adam { betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0 },
        lr: t.lr,
        clip_grad_norm: Some(t.clip_grad_norm),
        seed: t.seed,
        verbose,
        progress: verbose,
        ..TrainConfig::default()
    };
    let opt =
        Optimizer::new(&loop_config.optimizer, vec![Group::new("all", vs.trainable_variables())])?;
    let shard = group.map_or(Shard::WHOLE, |g| Shard { rank: g.rank(), world: g.world_size() });
    let loader = |split, config: LoaderConfig| {
        Loader::new(
            Arc::clone(&manifest),
            split,
            Arc::clone(&pipeline),
            LoaderConfig { shard, ..config },
        )
        .map_err(Error::from)
    };
    let train_loader = loader(
        Split::Train,
        LoaderConfig { batch_size: t.batch_size, ..LoaderConfig::training(t.seed) },
    )?;
    let val_loader = loader(
        Split::Val,
        LoaderConfig { batch_size: t.batch_size, ..LoaderConfig::evaluation() },
    )?;
    let step = Synthesis {
        net: &net,
        durations: &durations,
        device,
        weights: (t.duration_weight, t.stop_weight),
    };
    let fitted = Trainer::new(&step, &vs, opt, &loop_config, out, group)?.fit(
        &train_loader,
        &val_loader,
        resuming,
    )?;
    Ok(TtsReport { history: fitted.history, best: fitted.best.unwrap_or((f64::NAN, 0)), uneven })
}

/// The aligner's alphabet, after checking that it is a recogniser whose spectrogram steps are
/// this run's frames.
fn aligner_alphabet(config: &TtsConfig, aligner: &Run) -> Result<Alphabet> {
    let alphabet = aligner
        .model
        .alphabet()
        .filter(|a| aligner.model.ctc_stride().is_some() && a.vocab().is_none())
        .ok_or_else(|| Error::Config("data.aligner: not a speech recognition (ctc) run".into()))?
        .clone();
    let rec_mel = aligner
        .pipeline
        .audio
        .as_ref()
        .map(|a| *a.mel.config())
        .ok_or_else(|| Error::Config("data.aligner: reads no audio".into()))?;
    if rec_mel.sample_rate != config.data.mel.sample_rate
        || rec_mel.hop_length != config.data.mel.hop_length
    {
        return Err(Error::Config(format!(
            "data.mel: sample_rate {} and hop_length {} must be the aligner's ({} and {}), so that its steps are this spectrogram's frames",
            config.data.mel.sample_rate, config.data.mel.hop_length, rec_mel.sample_rate, rec_mel.hop_length
        )));
    }
    Ok(alphabet)
}

/// The cleaned manifest and the pipeline; every sample needs its audio and its speaker, and
/// the ones that do not are named before anything trains.
fn prepare(
    config: &TtsConfig,
    alphabet: &Alphabet,
    out: &Path,
    verbose: bool,
    main: bool,
) -> Result<(Arc<Manifest>, Pipeline)> {
    let mut data = data_config(config, alphabet, Vec::new());
    let prepared = data.prepare(config.train.seed).map_err(Error::from)?;
    if let Some(report) = prepared.report.as_ref().filter(|_| main) {
        if verbose && report.dropped > 0 {
            eprintln!("cleaning dropped {} samples (see clean-report.json)", report.dropped);
        }
        mm_data::fs::write_atomic(
            &out.join("clean-report.json"),
            &serde_json::to_vec_pretty(&report.to_json()).unwrap_or_default(),
        )
        .map_err(Error::from)?;
    }
    let incomplete: Vec<&str> = prepared
        .manifest
        .samples()
        .iter()
        .filter(|s| s.audio.is_none() || s.label.is_none())
        .map(|s| s.id.as_str())
        .collect();
    if !incomplete.is_empty() {
        return Err(Error::Data(format!(
            "{}: {} samples lack their audio or their speaker (`label`): {}{}",
            config.data.manifest.display(),
            incomplete.len(),
            incomplete.iter().take(10).copied().collect::<Vec<_>>().join(", "),
            if incomplete.len() > 10 { ", ..." } else { "" }
        )));
    }
    Ok((Arc::new(prepared.manifest), prepared.pipeline))
}

/// Rank `root`'s durations (and the ids of its uneven ones), on every rank.
fn broadcast_durations(
    group: &ProcessGroup,
    (durations, uneven): (Durations, Vec<String>),
    root: usize,
) -> Result<(Durations, Vec<String>)> {
    let ours = group.rank() == root;
    let bytes = if ours {
        serde_json::to_vec(&json!({"uneven": uneven, "durations": durations})).unwrap_or_default()
    } else {
        Vec::new()
    };
    let bytes = group.broadcast_bytes(&bytes, root)?;
    if ours {
        return Ok((durations, uneven));
    }
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Distributed(format!("rank {root}'s durations: {e}")))?;
    let part = |key: &str| {
        v.get(key)
            .cloned()
            .ok_or_else(|| Error::Distributed(format!("rank {root}'s durations: no `{key}`")))
    };
    let bad = |e: serde_json::Error| Error::Distributed(format!("rank {root}'s durations: {e}"));
    Ok((
        serde_json::from_value(part("durations")?).map_err(bad)?,
        serde_json::from_value(part("uneven")?).map_err(bad)?,
    ))
}

/// Rank 0's durations, read back on resuming, on every rank.
fn share_durations(
    group: &ProcessGroup,
    durations: (Durations, Vec<String>),
) -> Result<(Durations, Vec<String>)> {
    broadcast_durations(group, durations, 0)
}

/// The durations a run was trained on, from its `durations.json`.
fn read_durations(file: &Path) -> Result<(Durations, Vec<String>)> {
    let bytes = mm_data::fs::read_capped(file, mm_data::fs::FileKind::Text)?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Checkpoint(format!("{}: {e}", file.display())))?;
    let bad = |key: &str, e: serde_json::Error| {
        Error::Checkpoint(format!("{}: `{key}`: {e}", file.display()))
    };
    Ok((
        serde_json::from_value(v["durations"].clone()).map_err(|e| bad("durations", e))?,
        serde_json::from_value(v["uneven"].clone()).map_err(|e| bad("uneven", e))?,
    ))
}

/// A fresh run's durations, from the aligner over the same manifest (its own front end reads
/// the audio). On several ranks each aligns its share of the samples (every `world`-th) and
/// all of them end with every sample's durations.
fn align_run(
    aligner: &Run,
    manifest: &Arc<Manifest>,
    group: Option<&ProcessGroup>,
    verbose: bool,
) -> Result<(Durations, Vec<String>)> {
    let started = Instant::now();
    let shard = group.map_or(Shard::WHOLE, |g| Shard { rank: g.rank(), world: g.world_size() });
    let (mut durations, mut uneven) = align_durations(aligner, manifest, shard)?;
    if let Some(group) = group {
        let mine = (std::mem::take(&mut durations), std::mem::take(&mut uneven));
        let mut mine = Some(mine);
        for root in 0..group.world_size() {
            let part = if root == group.rank() {
                mine.take().unwrap_or_default()
            } else {
                Default::default()
            };
            let (d, u) = broadcast_durations(group, part, root)?;
            durations.extend(d);
            uneven.extend(u);
        }
    }
    uneven.sort();
    if verbose {
        eprintln!(
            "aligned {} recordings in {:.1}s ({} with even durations)",
            durations.len(),
            started.elapsed().as_secs_f64(),
            uneven.len()
        );
    }
    Ok((durations, uneven))
}

/// What rebuilds the synthesiser beside a fresh run: `speakers.json`, the resolved
/// configuration (`tts.toml`, its paths absolute) and `alphabet.txt`.
fn write_run(
    config: &TtsConfig,
    alphabet: &Alphabet,
    speakers: &[String],
    out: &Path,
) -> Result<()> {
    mm_data::fs::write_atomic(
        &out.join("speakers.json"),
        &serde_json::to_vec_pretty(speakers).unwrap_or_default(),
    )
    .map_err(Error::from)?;
    let mut resolved = config.clone();
    resolved.data.manifest =
        std::path::absolute(&config.data.manifest).unwrap_or_else(|_| config.data.manifest.clone());
    resolved.data.aligner =
        std::path::absolute(&config.data.aligner).unwrap_or_else(|_| config.data.aligner.clone());
    let text = toml::to_string(&resolved).map_err(|e| Error::Config(e.to_string()))?;
    mm_data::fs::write_atomic(&out.join("tts.toml"), text.as_bytes()).map_err(Error::from)?;
    mm_data::fs::write_atomic(&out.join("alphabet.txt"), alphabet.chars().as_bytes())
        .map_err(Error::from)
}

/// The synthesiser's training step for mm-train's [`Trainer`]: its loss is the mel L1 plus the
/// weighted duration and stop losses, recorded apart as `mel_l1`, `duration_mse`, `stop_bce`.
struct Synthesis<'a> {
    net: &'a Net,
    durations: &'a Durations,
    device: Device,
    /// The weights of the duration and stop losses.
    weights: (f64, f64),
}

impl Synthesis<'_> {
    const PARTS: [&'static str; 3] = ["mel_l1", "duration_mse", "stop_bce"];
}

impl TrainStep for Synthesis<'_> {
    fn loss(&self, batch: &Batch) -> Result<StepLoss> {
        let batch = tts_batch(batch, self.durations, self.device)?;
        let (mel, dur, stop) = losses(self.net, &batch, true);
        let total = &mel + &dur * self.weights.0 + &stop * self.weights.1;
        let [a, b, c] = Self::PARTS;
        Ok(StepLoss { total, parts: vec![(a, mel), (b, dur), (c, stop)] })
    }

    fn validate(
        &self,
        loader: &Loader,
        device: Device,
        precision: Precision,
        group: Option<&ProcessGroup>,
    ) -> Result<Map<String, Value>> {
        // Sums and counts of the three losses over this rank's share of the split.
        let mut totals = [0.0f64; 6];
        for batch in loader.epoch(0) {
            let batch = batch.map_err(Error::from)?;
            mm_train::guard::step("the synthesiser's validation", precision, device, || {
                let batch = tts_batch(&batch, self.durations, self.device)?;
                let _no_grad = tch::no_grad_guard();
                for (k, (sum, n)) in loss_sums(self.net, &batch, false).iter().enumerate() {
                    totals[2 * k] += sum.double_value(&[]);
                    totals[2 * k + 1] += n.double_value(&[]);
                }
                Ok(())
            })?;
        }
        if let Some(group) = group {
            let all = group.all_reduce_values(&totals, ReduceOp::Sum)?;
            totals.copy_from_slice(&all);
        }
        let mean: [f64; 3] = std::array::from_fn(|k| totals[2 * k] / totals[2 * k + 1].max(1.0));
        let mut m = Map::new();
        m.insert(
            "loss".into(),
            json!(mean[0] + mean[1] * self.weights.0 + mean[2] * self.weights.1),
        );
        for (name, v) in Self::PARTS.iter().zip(mean) {
            m.insert(name.to_string(), json!(v));
        }
        Ok(m)
    }

    fn metric(&self, name: &str) -> Option<Metric> {
        self.metric_names().contains(&name.to_string()).then(|| Metric::lower(name))
    }

    fn selection(&self) -> Metric {
        Metric::lower("loss")
    }

    fn metric_names(&self) -> Vec<String> {
        std::iter::once("loss").chain(Self::PARTS).map(String::from).collect()
    }
}

/// Synthesised speech.
#[derive(Debug, Clone)]
pub struct Speech {
    /// The waveform, at the run's sample rate.
    pub audio: Audio,
    /// The log-mel spectrogram (not normalised), `[frames, n_mels]` values row by row.
    pub log_mel: ndarray::Array2<f32>,
    /// Frames per token (the silences first and last), as predicted.
    pub durations: Vec<i64>,
    /// The frame where the stop signal passed one half, if it did before the durations ended.
    pub stopped_at: Option<usize>,
}

/// A trained synthesiser, loaded from its run folder.
#[derive(Debug)]
pub struct Synthesizer {
    net: Net,
    _vs: nn::VarStore,
    alphabet: Alphabet,
    speakers: Vec<String>,
    mel: LogMel,
    normalizer: mm_data::normalize::Normalizer,
    device: Device,
    /// Griffin-Lim's options.
    pub invert: InvertConfig,
}

impl Synthesizer {
    /// Loads the run in `dir` (written by [`train`]).
    pub fn open(dir: &Path, device: Device) -> Result<Self> {
        let file = dir.join("tts.toml");
        if !file.is_file() {
            return Err(Error::Config(format!(
                "{} is not a synthesis run (it has no tts.toml; `mm train-tts` writes one)",
                dir.display()
            )));
        }
        let config = TtsConfig::from_file(&file, &[])?;
        let read = |name: &str| {
            mm_data::fs::read_text_capped(&dir.join(name), mm_data::fs::FileKind::Text)
                .map_err(Error::from)
        };
        let alphabet = Alphabet::new(&read("alphabet.txt")?).map_err(|e| {
            Error::Checkpoint(format!("{}: {e}", dir.join("alphabet.txt").display()))
        })?;
        let speakers: Vec<String> = serde_json::from_str(&read("speakers.json")?).map_err(|e| {
            Error::Checkpoint(format!("{}: {e}", dir.join("speakers.json").display()))
        })?;
        let pipeline: Pipeline = data_config(&config, &alphabet, speakers.clone())
            .restore(0, &dir.join("data"))
            .map_err(Error::from)?;
        let normalizer =
            pipeline.audio.as_ref().and_then(|a| a.normalizer.clone()).ok_or_else(|| {
                Error::Checkpoint(format!(
                    "{}: no spectrogram statistics",
                    dir.join("data").display()
                ))
            })?;
        let vs = nn::VarStore::new(device);
        let net = Net::new(
            &vs.root(),
            &config.model,
            alphabet.len() as i64,
            speakers.len() as i64,
            config.data.mel.n_mels as i64,
        )?;
        let ckpt = dir.join("checkpoints");
        if !checkpoint::exists(&ckpt, "best") {
            return Err(Error::Checkpoint(format!(
                "{}: no checkpoint `best` (has the run finished an epoch?)",
                ckpt.display()
            )));
        }
        checkpoint::load_weights(&ckpt, "best", &vs)?;
        let mel = LogMel::new(&config.data.mel).map_err(|e| Error::Config(e.to_string()))?;
        Ok(Synthesizer {
            net,
            _vs: vs,
            alphabet,
            speakers,
            mel,
            normalizer,
            device,
            invert: InvertConfig { iterations: 60, ..InvertConfig::default() },
        })
    }

    /// The speakers it was trained on.
    pub fn speakers(&self) -> &[String] {
        &self.speakers
    }

    /// The log-mel front end it predicts (sample rate, hop, bins).
    pub fn mel(&self) -> &LogMel {
        &self.mel
    }

    /// Speech for `text` in `speaker`'s voice. An unknown speaker, or a character outside the
    /// alphabet, is an error naming it.
    pub fn synthesize(&self, text: &str, speaker: &str) -> Result<Speech> {
        let s = self.speakers.iter().position(|x| x == speaker).ok_or_else(|| {
            Error::Config(format!(
                "speaker {speaker:?} is not one of the run's: {}",
                self.speakers.join(", ")
            ))
        })?;
        let ids = self.alphabet.encode(text).map_err(Error::Config)?;
        if ids.is_empty() {
            return Err(Error::Config("nothing to say: the text is empty".into()));
        }
        let mut tokens = vec![0i64];
        tokens.extend(&ids);
        tokens.push(0);
        let l = tokens.len() as i64;
        let _no_grad = tch::no_grad_guard();
        let encoded = self.net.encode(
            &Tensor::from_slice(&tokens).view([1, l]).to_device(self.device),
            &Tensor::from_slice(&[l]),
            &Tensor::from_slice(&[s as i64]).to_device(self.device),
            false,
        );
        let log_d: Vec<f32> = Vec::try_from(
            encoded
                .apply(&self.net.duration)
                .view([-1])
                .to_device(Device::Cpu)
                .to_kind(Kind::Float),
        )
        .unwrap_or_default();
        let durations: Vec<i64> = log_d
            .iter()
            .enumerate()
            .map(|(k, v)| {
                let d = v.exp_m1().round().max(0.0) as i64;
                // A character is heard for at least one frame; the silences may be empty.
                if k == 0 || k + 1 == log_d.len() {
                    d
                } else {
                    d.max(1)
                }
            })
            .collect();
        let (mel, stop, _) = self.net.decode(&encoded, std::slice::from_ref(&durations), false);
        let frames = mel.size()[1] as usize;
        let stop: Vec<f32> =
            Vec::try_from(stop.sigmoid().view([-1]).to_device(Device::Cpu).to_kind(Kind::Float))
                .unwrap_or_default();
        // The stop signal may end the utterance early, never inside the text's own frames.
        let spoken: usize = durations[..durations.len() - 1].iter().sum::<i64>() as usize;
        let stopped_at = stop
            .iter()
            .enumerate()
            .skip(spoken)
            .find(|(i, p)| **p > 0.5 && i + 1 < frames)
            .map(|(i, _)| i);
        let keep = stopped_at.map_or(frames, |i| i + 1);
        let values: Vec<f32> = Vec::try_from(
            mel.get(0)
                .narrow(0, 0, keep as i64)
                .contiguous()
                .view([-1])
                .to_device(Device::Cpu)
                .to_kind(Kind::Float),
        )
        .unwrap_or_default();
        let m = self.normalizer.dim();
        let mut log_mel = ndarray::Array2::from_shape_vec((keep, m), values)
            .map_err(|e| Error::Data(e.to_string()))?;
        for mut row in log_mel.rows_mut() {
            for ((x, mean), std) in
                row.iter_mut().zip(&self.normalizer.mean).zip(&self.normalizer.std)
            {
                *x = *x * std + mean;
            }
        }
        let samples = self.mel.invert(&log_mel, &self.invert);
        // The level is the predicted spectrogram's (Griffin-Lim keeps magnitudes); scaled
        // down only where it would clip.
        let peak = samples.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let gain = if peak > 0.99 { 0.99 / peak } else { 1.0 };
        let audio = Audio {
            sample_rate: self.mel.config().sample_rate,
            samples: samples.iter().map(|x| x * gain).collect(),
        };
        Ok(Speech { audio, log_mel, durations, stopped_at })
    }
}

/// Mean absolute difference between two log-mel spectrograms (`[frames, bins]`) along their
/// best monotonic alignment (dynamic time warping), per frame pair and bin: a distance that
/// ignores differences in timing.
pub fn mel_distance(a: &ndarray::Array2<f32>, b: &ndarray::Array2<f32>) -> f64 {
    let (n, m) = (a.nrows(), b.nrows());
    if n == 0 || m == 0 {
        return f64::INFINITY;
    }
    let bins = a.ncols().min(b.ncols()).max(1);
    let cost = |i: usize, j: usize| {
        a.row(i).iter().zip(b.row(j)).map(|(x, y)| f64::from((x - y).abs())).sum::<f64>()
            / bins as f64
    };
    // Accumulated cost and path length.
    let mut acc = vec![(f64::INFINITY, 0usize); n * m];
    for i in 0..n {
        for j in 0..m {
            let c = cost(i, j);
            let best = if i == 0 && j == 0 {
                (0.0, 0)
            } else {
                let mut best = (f64::INFINITY, 0);
                for (di, dj) in [(1, 0), (0, 1), (1, 1)] {
                    if i >= di && j >= dj {
                        let p = acc[(i - di) * m + (j - dj)];
                        if p.0 < best.0 {
                            best = p;
                        }
                    }
                }
                best
            };
            acc[i * m + j] = (best.0 + c, best.1 + 1);
        }
    }
    let (total, steps) = acc[n * m - 1];
    total / steps.max(1) as f64
}

/// What [`evaluate`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct TtsEvaluation {
    /// (speaker, word) pairs synthesised.
    pub pairs: usize,
    /// Synthesised words the recogniser transcribed exactly.
    pub synthesized_correct: usize,
    /// Real test recordings the recogniser transcribed exactly.
    pub real_correct: usize,
    /// Real test recordings.
    pub real: usize,
    /// Mean [`mel_distance`] from each synthesised word to the real test recordings of the same
    /// speaker and word.
    pub mel_distance: f64,
    /// The same for the spectrogram the model predicted, before Griffin-Lim (what the model
    /// got wrong, without what the waveform reconstruction adds).
    pub predicted_mel_distance: f64,
    /// The same between two real recordings of one speaker and word (natural variation).
    pub real_mel_distance: f64,
    /// From each synthesised word to the speaker's real recordings of the other words.
    pub other_word_mel_distance: f64,
    /// Per speaker: real test recordings recognised exactly and in all, synthesised words
    /// recognised exactly and in all.
    pub by_speaker: BTreeMap<String, [usize; 4]>,
    /// Per pair: speaker, word, what the recogniser heard, and the distance.
    pub rows: Vec<Value>,
}

/// Copies of `files` with [`LISTEN_PAD`] seconds of silence before and after, in `dir`.
fn padded(files: &[PathBuf], dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let audio = mm_data::audio::decode_audio(f).map_err(Error::from)?;
            let pad = vec![0.0f32; (LISTEN_PAD * f64::from(audio.sample_rate)) as usize];
            let samples = [pad.as_slice(), &audio.samples, &pad].concat();
            let path = dir.join(format!("{i:05}.wav"));
            mm_data::fs::write_atomic(
                &path,
                &mm_data::audio::encode_wav(&Audio { sample_rate: audio.sample_rate, samples }),
            )
            .map_err(Error::from)?;
            Ok(path)
        })
        .collect()
}

/// Silence around every file the recogniser listens to in [`evaluate`], in seconds: FSDD's
/// recordings start and end on the speech, while the recogniser learnt from utterances with at
/// least 50 ms of silence around them, and drops first letters without it.
pub const LISTEN_PAD: f64 = 0.1;

/// Measures a synthesiser on the test split of `manifest` (audio, word, speaker label): every
/// (speaker, word) pair there is synthesised into `out` (`SPEAKER_WORD.wav`) and transcribed
/// by `recognizer`, as are the real recordings (both with [`LISTEN_PAD`] of silence around
/// them); and the log-mel spectrograms (the
/// synthesiser's front end, of the waveforms as written) are compared by [`mel_distance`].
pub fn evaluate(
    synth: &Synthesizer,
    recognizer: &Run,
    manifest: &Path,
    out: &Path,
) -> Result<TtsEvaluation> {
    let manifest = Manifest::read(manifest).map_err(Error::from)?;
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
    // Real test recordings by (speaker, word).
    let mut real: BTreeMap<(String, String), Vec<PathBuf>> = BTreeMap::new();
    for s in manifest.split(Split::Test) {
        if let (Some(audio), Some(text), Some(speaker)) = (&s.audio, &s.text, &s.label) {
            real.entry((speaker.clone(), text.clone())).or_default().push(manifest.path(audio));
        }
    }
    if real.is_empty() {
        return Err(Error::Data(format!(
            "{}: no test recordings with audio, text and a speaker label",
            manifest.source().display()
        )));
    }
    let spectrum = |path: &Path| -> Result<ndarray::Array2<f32>> {
        let audio = mm_data::audio::decode_audio(path).map_err(Error::from)?;
        if audio.sample_rate != synth.mel.config().sample_rate {
            return Err(Error::Data(format!(
                "{}: {} Hz, the synthesiser's front end is {} Hz",
                path.display(),
                audio.sample_rate,
                synth.mel.config().sample_rate
            )));
        }
        Ok(synth.mel.compute(&audio.samples))
    };
    let mut real_mels: BTreeMap<(String, String), Vec<ndarray::Array2<f32>>> = BTreeMap::new();
    for (key, files) in &real {
        real_mels.insert(key.clone(), files.iter().map(|f| spectrum(f)).collect::<Result<_>>()?);
    }
    let all_real: Vec<PathBuf> = real.values().flatten().cloned().collect();
    let real_heard = recognizer.transcribe(&padded(&all_real, &out.join("padded/real"))?, 1)?;
    let words_of: Vec<&String> =
        real.keys().flat_map(|k| real[k].iter().map(move |_| &k.1)).collect();
    let real_correct = real_heard.iter().zip(&words_of).filter(|(t, w)| t.text == ***w).count();
    // Per speaker: real recordings right and synthesised words right, of how many.
    let mut by_speaker: BTreeMap<String, [usize; 4]> = BTreeMap::new();
    for ((t, w), (speaker, _)) in real_heard
        .iter()
        .zip(&words_of)
        .zip(real.iter().flat_map(|(k, files)| files.iter().map(move |_| k)))
    {
        let e = by_speaker.entry(speaker.clone()).or_default();
        e[0] += usize::from(t.text == **w);
        e[1] += 1;
    }
    let (mut same, mut natural, mut other, mut predicted) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut rows = Vec::new();
    let mut files = Vec::new();
    for ((speaker, word), mels) in &real_mels {
        let speech = synth.synthesize(word, speaker)?;
        let file = out.join(format!("{speaker}_{word}.wav"));
        mm_data::fs::write_atomic(&file, &mm_data::audio::encode_wav(&speech.audio))
            .map_err(Error::from)?;
        let heard = spectrum(&file)?;
        let d: f64 = mels.iter().map(|m| mel_distance(&heard, m)).sum::<f64>() / mels.len() as f64;
        same.push(d);
        predicted.push(
            mels.iter().map(|m| mel_distance(&speech.log_mel, m)).sum::<f64>() / mels.len() as f64,
        );
        for i in 0..mels.len() {
            for j in i + 1..mels.len() {
                natural.push(mel_distance(&mels[i], &mels[j]));
            }
        }
        for ((s2, w2), m2) in &real_mels {
            if s2 == speaker && w2 != word {
                other.push(mel_distance(&heard, &m2[0]));
            }
        }
        rows.push(json!({"speaker": speaker, "word": word, "file": file, "mel_distance": d, "frames": speech.log_mel.nrows(), "stopped_at": speech.stopped_at}));
        files.push(file);
    }
    let heard = recognizer.transcribe(&padded(&files, &out.join("padded/synthesized"))?, 1)?;
    let mut synthesized_correct = 0;
    for (row, t) in rows.iter_mut().zip(&heard) {
        let ok = row["word"].as_str() == Some(t.text.as_str());
        synthesized_correct += usize::from(ok);
        if let Some(e) = row["speaker"].as_str().and_then(|s| by_speaker.get_mut(s)) {
            e[2] += usize::from(ok);
            e[3] += 1;
        }
        row["heard"] = json!(t.text);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(TtsEvaluation {
        pairs: rows.len(),
        synthesized_correct,
        real_correct,
        real: all_real.len(),
        mel_distance: mean(&same),
        predicted_mel_distance: mean(&predicted),
        real_mel_distance: mean(&natural),
        other_word_mel_distance: mean(&other),
        by_speaker,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_characters_last_until_the_next_one_starts() {
        // Steps of 4 frames, 30 frames: "ab" fired at steps 1 and 3-4, so the lead silence is
        // 4 frames, a lasts 8 (to b's start at 12), b 8 (to its end at 20), the tail 10.
        assert_eq!(from_alignment(&[(1, 1), (3, 4)], 4, 30), Some(vec![4, 8, 8, 10]));
        // Clamped to the clip: the last step ends past the 18 frames there are.
        assert_eq!(from_alignment(&[(1, 1), (3, 4)], 4, 18), Some(vec![4, 8, 6, 0]));
        // A character pushed outside the clip gets no frame: refused.
        assert_eq!(from_alignment(&[(1, 1), (5, 5)], 4, 20), None);
        assert_eq!(from_alignment(&[], 4, 20), None);
    }

    #[test]
    fn even_durations_cover_the_frames() {
        assert_eq!(even(3, 10), vec![0, 3, 3, 4, 0]);
        assert_eq!(even(0, 7), vec![7, 0]);
    }

    #[test]
    fn mel_distance_ignores_timing_not_content() {
        let a = ndarray::Array2::from_shape_fn((20, 4), |(t, k)| ((t / 5) * 4 + k) as f32);
        // The same content, every frame twice: distance 0 along the warp.
        let slow = ndarray::Array2::from_shape_fn((40, 4), |(t, k)| ((t / 10) * 4 + k) as f32);
        assert!(mel_distance(&a, &slow) < 1e-12);
        let shifted = a.mapv(|v| v + 1.0);
        assert!((mel_distance(&a, &shifted) - 1.0).abs() < 1e-9);
    }
}
