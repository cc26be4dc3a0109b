//! Whisper (Radford et al. 2022), the network, with Hugging Face's parameter names and
//! configuration file (`WhisperForConditionalGeneration`: `openai/whisper-tiny`, `-base`,
//! `-small`): the encoder over log-mel frames (two convolutions, positions, pre-LayerNorm
//! layers) and the decoder over token ids (mm-seq's [`TransformerDecoder`]: learned positions,
//! causal self-attention, cross-attention to the encoder, logits through the token embedding),
//! with a key/value cache so that decoding costs one step per token.
//!
//! [`Transcriber`] puts it together as `mm transcribe --model` uses it: audio decoded and
//! resampled to 16 kHz, Whisper's log-mel front end ([`mm_data::mel::WhisperMel`]) over
//! consecutive 30-second windows, the start tokens from the model's `tokenizer.json`
//! (`<|startoftranscript|>`, the language given or detected, `<|transcribe|>`,
//! `<|notimestamps|>`), greedy or beam decoding with the `generation_config.json`'s suppressed
//! tokens, and the text. Timed ([`Transcriber::with_timestamps`], and every recording over 30 s),
//! it is Whisper's long-form transcription as transformers does it: features of the whole
//! recording, a 30-second window from a moving start, Whisper's timestamp rules, segments between
//! pairs of timestamps, and the next window starting where the last complete segment ended (so
//! windows overlap, and a word cut by a window's edge is decoded whole in the next).
//!
//! ```
//! use mm_encoders::whisper::{Whisper, WhisperConfig};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let config: WhisperConfig = serde_json::from_str(r#"{"vocab_size": 60, "num_mel_bins": 8,
//!     "d_model": 16, "encoder_layers": 1, "encoder_attention_heads": 2, "decoder_layers": 1,
//!     "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32,
//!     "max_source_positions": 10, "max_target_positions": 12}"#)?;
//! let vs = nn::VarStore::new(Device::Cpu);
//! let whisper = Whisper::new(&vs.root(), &config)?;
//! let mel = Tensor::randn([1, 8, 20], (Kind::Float, Device::Cpu)); // [B, mels, 2 · positions]
//! let audio = tch::no_grad(|| whisper.encode(&mel))?;
//! let ids = tch::no_grad(|| whisper.greedy(&audio, &[1, 2], 59, 6));
//! assert!(ids.len() <= 6);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

pub use mm_seq::decoder::Cache;
use mm_seq::decoder::{Attention, DecoderConfig, Generation, Memory, TransformerDecoder};

use crate::weights::Mapped;
use crate::{Error, Result};

/// A Whisper `config.json`, as transformers writes it (other keys ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhisperConfig {
    /// `whisper` when present; another value is refused.
    #[serde(default)]
    pub model_type: Option<String>,
    /// Token ids.
    pub vocab_size: i64,
    /// Mel bins of the input (80, or 128 for large-v3).
    pub num_mel_bins: i64,
    /// Width.
    pub d_model: i64,
    /// Encoder layers.
    pub encoder_layers: i64,
    /// Encoder heads.
    pub encoder_attention_heads: i64,
    /// Decoder layers.
    pub decoder_layers: i64,
    /// Decoder heads.
    pub decoder_attention_heads: i64,
    /// Encoder feed-forward width.
    pub encoder_ffn_dim: i64,
    /// Decoder feed-forward width.
    pub decoder_ffn_dim: i64,
    /// Encoder positions (1500: 30 s of 10 ms frames, halved by the second convolution).
    #[serde(default = "d1500")]
    pub max_source_positions: i64,
    /// Decoder positions (448).
    #[serde(default = "d448")]
    pub max_target_positions: i64,
    /// `gelu` (exact).
    #[serde(default = "gelu")]
    pub activation_function: String,
    /// Token embeddings scaled by √d_model (false for Whisper).
    #[serde(default)]
    pub scale_embedding: bool,
}

fn d1500() -> i64 {
    1500
}
fn d448() -> i64 {
    448
}
fn gelu() -> String {
    "gelu".into()
}

impl WhisperConfig {
    /// Reads a `config.json`; the error names the file and what is wrong.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: WhisperConfig = crate::weights::read_model_config(path, "a Whisper")?;
        config.check().map_err(|m| Error::Config(format!("{}: {m}", path.display())))?;
        Ok(config)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if let Some(t) = self.model_type.as_deref().filter(|t| *t != "whisper") {
            return Err(format!("model_type = {t:?}: this is not Whisper (\"whisper\" expected)"));
        }
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("num_mel_bins", self.num_mel_bins),
            ("d_model", self.d_model),
            ("encoder_layers", self.encoder_layers),
            ("encoder_attention_heads", self.encoder_attention_heads),
            ("decoder_layers", self.decoder_layers),
            ("decoder_attention_heads", self.decoder_attention_heads),
            ("encoder_ffn_dim", self.encoder_ffn_dim),
            ("decoder_ffn_dim", self.decoder_ffn_dim),
            ("max_source_positions", self.max_source_positions),
            ("max_target_positions", self.max_target_positions),
        ];
        if let Some((k, v)) = sizes.iter().find(|(_, v)| *v <= 0) {
            return Err(format!("{k} = {v}: must be positive"));
        }
        for (k, h) in [
            ("encoder_attention_heads", self.encoder_attention_heads),
            ("decoder_attention_heads", self.decoder_attention_heads),
        ] {
            if self.d_model % h != 0 {
                return Err(format!("d_model {} is not a multiple of {k} {h}", self.d_model));
            }
        }
        if self.activation_function != "gelu" {
            return Err(format!(
                "activation_function = {:?}: only \"gelu\" is supported",
                self.activation_function
            ));
        }
        Ok(())
    }
}

fn linear(p: nn::Path, i: i64, o: i64) -> nn::Linear {
    let init = nn::Init::Randn { mean: 0.0, stdev: 0.02 };
    nn::linear(p, i, o, nn::LinearConfig { ws_init: init, ..Default::default() })
}

fn norm(p: nn::Path, d: i64) -> nn::LayerNorm {
    nn::layer_norm(p, vec![d], Default::default())
}

#[derive(Debug)]
struct EncoderLayer {
    attn_norm: nn::LayerNorm,
    attn: Attention,
    ffn_norm: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

/// Whisper's encoder (`model.encoder` in transformers' files): two convolutions, positions,
/// pre-LayerNorm layers.
#[derive(Debug)]
struct AudioTower {
    conv1: nn::Conv1D,
    conv2: nn::Conv1D,
    positions: nn::Embedding,
    layers: Vec<EncoderLayer>,
    norm: nn::LayerNorm,
    mels: i64,
    frames: i64,
}

impl AudioTower {
    fn new(enc: &nn::Path, config: &WhisperConfig) -> Self {
        let d = config.d_model;
        let conv = |p: nn::Path, i: i64, stride: i64| {
            nn::conv1d(p, i, d, 3, nn::ConvConfig { stride, padding: 1, ..Default::default() })
        };
        let layers = (0..config.encoder_layers)
            .map(|i| {
                let p = enc / "layers" / i;
                EncoderLayer {
                    attn_norm: norm(&p / "self_attn_layer_norm", d),
                    attn: Attention::new(
                        &(&p / "self_attn"),
                        d,
                        config.encoder_attention_heads,
                        false,
                    ),
                    ffn_norm: norm(&p / "final_layer_norm", d),
                    fc1: linear(&p / "fc1", d, config.encoder_ffn_dim),
                    fc2: linear(&p / "fc2", config.encoder_ffn_dim, d),
                }
            })
            .collect();
        AudioTower {
            conv1: conv(enc / "conv1", config.num_mel_bins, 1),
            conv2: conv(enc / "conv2", d, 2),
            positions: nn::embedding(
                enc / "embed_positions",
                config.max_source_positions,
                d,
                Default::default(),
            ),
            layers,
            norm: norm(enc / "layer_norm", d),
            mels: config.num_mel_bins,
            frames: 2 * config.max_source_positions,
        }
    }

    /// `[B, mels, frames]` to `[B, frames / 2, d_model]`; another shape is an error.
    fn forward(&self, mel: &Tensor) -> Result<Tensor> {
        let size = mel.size();
        if size.len() != 3 || size[1] != self.mels || size[2] != self.frames {
            return Err(Error::Config(format!(
                "Whisper reads [batch, {}, {}] log-mel features (a 30 s window); got {size:?}",
                self.mels, self.frames
            )));
        }
        let x = mel.apply(&self.conv1).gelu("none").apply(&self.conv2).gelu("none");
        let mut x = x.permute([0, 2, 1]) + &self.positions.ws;
        for l in &self.layers {
            let y = x.apply(&l.attn_norm);
            let (k, v) = l.attn.keys_values(&y);
            x = &x + l.attn.attend(&y, &k, &v, None, false);
            x = &x + x.apply(&l.ffn_norm).apply(&l.fc1).gelu("none").apply(&l.fc2);
        }
        Ok(x.apply(&self.norm))
    }

    fn parameters(&self) -> Vec<Tensor> {
        let linear = |l: &nn::Linear| {
            std::iter::once(l.ws.shallow_clone())
                .chain(l.bs.as_ref().map(Tensor::shallow_clone))
                .collect::<Vec<_>>()
        };
        let norm = |n: &nn::LayerNorm| {
            n.ws.iter().chain(n.bs.iter()).map(Tensor::shallow_clone).collect::<Vec<_>>()
        };
        let conv = |c: &nn::Conv1D| {
            std::iter::once(c.ws.shallow_clone())
                .chain(c.bs.as_ref().map(Tensor::shallow_clone))
                .collect::<Vec<_>>()
        };
        let mut out = conv(&self.conv1);
        out.extend(conv(&self.conv2));
        out.push(self.positions.ws.shallow_clone());
        for l in &self.layers {
            out.extend(norm(&l.attn_norm));
            out.extend(l.attn.parameters());
            out.extend(norm(&l.ffn_norm));
            out.extend(linear(&l.fc1));
            out.extend(linear(&l.fc2));
        }
        out.extend(norm(&self.norm));
        out
    }
}

/// The encoder's output, with each decoder layer's cross-attention keys and values computed
/// once.
#[derive(Debug)]
pub struct Encoded {
    /// `[B, positions, d_model]`: transformers' `encoder_last_hidden_state`.
    pub hidden: Tensor,
    memory: Memory,
}

impl Encoded {
    /// What the decoder reads (the hidden states and their keys and values).
    pub fn memory(&self) -> &Memory {
        &self.memory
    }
}

/// Whisper's encoder and decoder (`model.encoder`, `model.decoder`; the output projection is
/// the token embedding, as transformers ties them). The decoder is mm-seq's
/// [`TransformerDecoder`], whose names are Whisper's.
#[derive(Debug)]
pub struct Whisper {
    encoder: AudioTower,
    decoder: TransformerDecoder,
    config: WhisperConfig,
}

impl Whisper {
    /// The model `config` describes under `path` (`path/model/encoder`, `path/model/decoder`),
    /// randomly initialised until weights are loaded.
    pub fn new(path: &nn::Path, config: &WhisperConfig) -> Result<Self> {
        config.check().map_err(Error::Config)?;
        let d = config.d_model;
        let encoder = AudioTower::new(&(path / "model" / "encoder"), config);
        let decoder = DecoderConfig {
            vocab: config.vocab_size,
            dim: d,
            layers: config.decoder_layers,
            heads: config.decoder_attention_heads,
            ffn: config.decoder_ffn_dim,
            max_positions: config.max_target_positions,
            dropout: 0.0,
            key_bias: false,
        };
        let decoder = TransformerDecoder::new(&(path / "model" / "decoder"), &decoder)
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Whisper { encoder, decoder, config: config.clone() })
    }

    /// Reads a model folder (`config.json`, `model.safetensors` as transformers saves
    /// `WhisperForConditionalGeneration`) onto `device`, without gradients; weights that do not
    /// fit are an error naming every tensor at fault.
    pub fn load(dir: &Path, device: tch::Device) -> Result<(nn::VarStore, Whisper)> {
        let config = WhisperConfig::from_file(&dir.join("config.json"))?;
        let mut vs = nn::VarStore::new(device);
        let whisper = Whisper::new(&vs.root(), &config)?;
        let options =
            crate::weights::LoadOptions { map: Some(hf_whisper_name), ..Default::default() };
        crate::weights::load_safetensors(&vs, &dir.join("model.safetensors"), &options)?;
        vs.freeze();
        Ok((vs, whisper))
    }

    /// The configuration.
    pub fn config(&self) -> &WhisperConfig {
        &self.config
    }

    /// The decoder.
    pub fn decoder(&self) -> &TransformerDecoder {
        &self.decoder
    }

    /// The device the parameters are on.
    pub fn device(&self) -> tch::Device {
        self.decoder.token_embedding().device()
    }

    /// Encodes log-mel features `[B, num_mel_bins, 2 · max_source_positions]` (Whisper's
    /// 30-second window: 3000 frames); another length is an error, as in transformers.
    pub fn encode(&self, mel: &Tensor) -> Result<Encoded> {
        let hidden = self.encoder_states(mel)?;
        let memory = self.decoder.memory(&hidden, None);
        Ok(Encoded { hidden, memory })
    }

    /// The encoder's output `[B, max_source_positions, d_model]` alone (no decoder keys and
    /// values), as [`WhisperAudioEncoder`] gives it to a fusion run.
    pub fn encoder_states(&self, mel: &Tensor) -> Result<Tensor> {
        self.encoder.forward(mel)
    }

    /// Logits `[B, L, vocab]` of the next token after each of `ids` `[B, L]`, continuing from
    /// `cache` (the tokens before them), which is extended.
    ///
    /// Panics when the tokens would reach past `max_target_positions` or an id is out of the
    /// vocabulary (a programmer's error: [`Whisper::generate`] stays within both).
    pub fn decode(&self, audio: &Encoded, ids: &Tensor, cache: &mut Cache) -> Tensor {
        self.decoder.step(&audio.memory, ids, cache)
    }

    /// Greedy decoding of one audio (batch 1): from the start tokens (`<|startoftranscript|>`
    /// and the language, task and timestamp tokens), the most likely token each step until
    /// `eos` or `max_len` tokens in all; returns the tokens after the start ones, `eos`
    /// excluded.
    pub fn greedy(&self, audio: &Encoded, start: &[i64], eos: i64, max_len: usize) -> Vec<i64> {
        self.generate(audio, &Generation::new(start, eos, max_len)).swap_remove(0)
    }

    /// Decoding as `how` says (greedy or beam search, suppressed tokens: transformers'
    /// `suppress_tokens` and `begin_suppress_tokens`), one token list per audio of the batch.
    pub fn generate(&self, audio: &Encoded, how: &Generation<'_>) -> Vec<Vec<i64>> {
        self.decoder.generate(&audio.memory, how)
    }
}

/// Maps a tensor name of transformers' Whisper files to ours: `proj_out.weight` skipped (every
/// released Whisper ties it to the token embedding, which this model uses in its place; an
/// untied fine-tune's own output projection would be ignored); the rest as they are.
pub fn hf_whisper_name(name: &str) -> Mapped {
    if name == "proj_out.weight" {
        Mapped::Skip("the output projection (tied to the token embedding)")
    } else {
        Mapped::To(name.to_string())
    }
}

/// A Whisper model folder ready to transcribe (see the module's documentation).
#[derive(Debug)]
pub struct Transcriber {
    whisper: Whisper,
    _vs: nn::VarStore,
    tokenizer: mm_data::subword::SubwordTokenizer,
    front: mm_data::mel::WhisperMel,
    sot: i64,
    task: Option<i64>,
    no_timestamps: Option<i64>,
    max_initial_timestamp: Option<i64>,
    languages: Vec<(String, i64)>,
    language: Option<i64>,
    eos: i64,
    suppress: Vec<i64>,
    begin: Vec<i64>,
    beam: usize,
    timestamps: bool,
    decode_silence: bool,
}

/// A stretch of a recording and what was said in it, timed by Whisper's timestamp tokens.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    /// Start, in seconds from the start of the recording.
    pub start: f64,
    /// End, in seconds.
    pub end: f64,
    /// The text.
    pub text: String,
    /// The token ids, timestamp tokens included.
    pub tokens: Vec<i64>,
}

/// Seconds per timestamp token.
const TIME_PRECISION: f64 = 0.02;
/// Feature frames per encoder position (and per timestamp step).
const INPUT_STRIDE: usize = 2;

/// What [`Transcriber::transcribe`] returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transcription {
    /// The text (windows joined by a space).
    pub text: String,
    /// The language token used, as its code (`en`), when the model has them.
    pub language: Option<String>,
    /// Per window decoded: the token ids (start tokens and the end token excluded; timestamp
    /// tokens included when timed).
    pub windows: Vec<Vec<i64>>,
    /// The timed segments, when the transcription was timed ([`Transcriber::with_timestamps`],
    /// and every recording over 30 s); empty otherwise.
    pub segments: Vec<Segment>,
}

impl Transcriber {
    /// Loads a folder (`config.json`, `model.safetensors`, `tokenizer.json`, and when present
    /// `generation_config.json` for the suppressed tokens). `language` is a code such as `en`
    /// (the model must have its token); without it, a multilingual model detects it per file.
    pub fn load(dir: &Path, device: tch::Device, language: Option<&str>) -> Result<Self> {
        let config = WhisperConfig::from_file(&dir.join("config.json"))?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = mm_data::subword::SubwordTokenizer::from_file(&tokenizer_path)
            .map_err(|e| Error::Config(e.to_string()))?;
        if tokenizer.vocab_size() as i64 > config.vocab_size {
            return Err(Error::Config(format!(
                "{}: {} ids, but the Whisper model has {}: the tokenizer does not belong to this model",
                tokenizer_path.display(),
                tokenizer.vocab_size(),
                config.vocab_size
            )));
        }
        let need = |t: &str| {
            tokenizer.token_id(t).ok_or_else(|| {
                Error::Config(format!(
                    "{}: no {t} token: not Whisper's tokenizer",
                    tokenizer_path.display()
                ))
            })
        };
        let (sot, eos) = (need("<|startoftranscript|>")?, need("<|endoftext|>")?);
        // Language tokens: <|xx|> or <|xxx|> (and <|haw|>, <|yue|>), lowercase letters.
        let mut languages: Vec<(String, i64)> = (2..=3)
            .flat_map(|n| {
                // Every code of n lowercase letters the vocabulary has as a special token.
                let letters: Vec<char> = ('a'..='z').collect();
                let mut codes = vec![String::new()];
                for _ in 0..n {
                    codes = codes
                        .iter()
                        .flat_map(|c| letters.iter().map(move |l| format!("{c}{l}")))
                        .collect();
                }
                codes
            })
            .filter_map(|code| tokenizer.token_id(&format!("<|{code}|>")).map(|id| (code, id)))
            .collect();
        languages.sort_by_key(|(_, id)| *id);
        let language = match language {
            Some(code) => Some(
                languages.iter().find(|(c, _)| c == code).map(|(_, id)| *id).ok_or_else(|| {
                    let known: Vec<&str> = languages.iter().map(|(c, _)| c.as_str()).collect();
                    Error::Config(if known.is_empty() {
                        format!("--language {code}: this model has no language tokens (an English-only model)")
                    } else {
                        format!("--language {code}: not one of this model's languages ({})", known.join(", "))
                    })
                })?,
            ),
            None if languages.len() == 1 => Some(languages[0].1),
            None => None,
        };
        let task = tokenizer.token_id("<|transcribe|>");
        // Timestamp tokens follow <|notimestamps|> (1501 of them, to 30.00 s), where the model
        // has their ids.
        let no_timestamps =
            tokenizer.token_id("<|notimestamps|>").filter(|id| id + 1 + 1500 < config.vocab_size);
        let (mut suppress, mut begin) = (Vec::new(), Vec::new());
        let mut max_initial_timestamp = None;
        if let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) {
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Io {
                path: dir.join("generation_config.json"),
                message: format!("not JSON: {e}"),
            })?;
            suppress = serde_json::from_value(v["suppress_tokens"].clone()).unwrap_or_default();
            begin = serde_json::from_value(v["begin_suppress_tokens"].clone()).unwrap_or_default();
            max_initial_timestamp = v["max_initial_timestamp_index"].as_i64();
        }
        let (vs, whisper) = Whisper::load(dir, device)?;
        let front = mm_data::mel::WhisperMel::new(config.num_mel_bins as usize);
        Ok(Transcriber {
            whisper,
            _vs: vs,
            tokenizer,
            front,
            sot,
            task,
            no_timestamps,
            max_initial_timestamp,
            languages,
            language,
            eos,
            suppress,
            begin,
            beam: 1,
            timestamps: false,
            decode_silence: false,
        })
    }

    /// Times the transcription: Whisper's timestamp tokens mark where each segment starts and
    /// ends ([`Transcription::segments`]). Recordings over 30 s are always timed, as Whisper
    /// transcribes them. A model without timestamp tokens ignores this.
    pub fn with_timestamps(mut self, on: bool) -> Self {
        self.timestamps = on;
        self
    }

    /// Decodes windows that are silent (peak below -80 dBFS) too, rather than giving them no
    /// text; Whisper then invents words for silence, as transformers' models do.
    pub fn decoding_silence(mut self, on: bool) -> Self {
        self.decode_silence = on;
        self
    }

    /// Whether the model has timestamp tokens (after `<|notimestamps|>`).
    pub fn has_timestamps(&self) -> bool {
        self.no_timestamps.is_some()
    }

    /// Decodes with a beam of `beam` hypotheses (1, the default, is greedy decoding; 5 is what
    /// OpenAI's Whisper uses); length-normalised scores as transformers ranks them.
    pub fn with_beam(mut self, beam: usize) -> Self {
        self.beam = beam.max(1);
        self
    }

    /// The model.
    pub fn whisper(&self) -> &Whisper {
        &self.whisper
    }

    /// Transcribes 16 kHz mono samples: consecutive 30-second windows, each decoded greedily
    /// (or with the beam [`Transcriber::with_beam`] set). A
    /// window whose peak is below -80 dBFS (silence) gives no text and is not decoded (Whisper
    /// invents words for silence).
    pub fn transcribe(&self, samples: &[f32]) -> Result<Transcription> {
        if let Some(no_timestamps) = self.no_timestamps {
            if self.timestamps || samples.len() > mm_data::mel::WHISPER_SAMPLES {
                return self.transcribe_timed(samples, no_timestamps);
            }
        }
        let device = self.whisper.device();
        let mut windows = Vec::new();
        let mut texts = Vec::new();
        let mut language = self.language;
        for chunk in samples.chunks(mm_data::mel::WHISPER_SAMPLES) {
            if !self.decode_silence && silent(chunk) {
                windows.push(Vec::new());
                continue;
            }
            let features = self.tensor(&self.front.window(chunk), device);
            let ids = tch::no_grad(|| -> Result<Vec<i64>> {
                let audio = self.whisper.encode(&features)?;
                if language.is_none() && !self.languages.is_empty() {
                    language = Some(self.detect(&audio));
                }
                let mut start = vec![self.sot];
                start.extend(language);
                start.extend(self.task);
                start.extend(self.no_timestamps);
                let max = self.whisper.config.max_target_positions as usize;
                let how = Generation {
                    beam: self.beam,
                    suppress: &self.suppress,
                    begin_suppress: &self.begin,
                    ..Generation::new(&start, self.eos, max)
                };
                Ok(self.whisper.generate(&audio, &how).swap_remove(0))
            })?;
            let text = self.text(&ids)?;
            if !text.is_empty() {
                texts.push(text);
            }
            windows.push(ids);
        }
        Ok(Transcription {
            text: texts.join(" "),
            language: self.code(language),
            windows,
            segments: Vec::new(),
        })
    }

    /// Whisper's long-form transcription, as transformers' `generate` does it with
    /// `return_timestamps`: features of the whole recording (padded to 30 s when shorter), a
    /// 30-second window from `seek`, decoded with the timestamp rules; its segments are the
    /// stretches between pairs of timestamps, and the next window starts at the last complete
    /// segment's end (so a word cut by the window's edge is decoded again, whole, in the next
    /// one), or after the window when the output ends with a single timestamp.
    fn transcribe_timed(&self, samples: &[f32], no_timestamps: i64) -> Result<Transcription> {
        use mm_data::mel::{WHISPER_FRAMES, WHISPER_SAMPLES};
        let device = self.whisper.device();
        let features = if samples.len() <= WHISPER_SAMPLES {
            self.front.window(samples)
        } else {
            self.front.features(samples)
        };
        let (n_mels, total) = features.dim();
        let hop = WHISPER_SAMPLES / WHISPER_FRAMES;
        let timestamp_begin = no_timestamps + 1;
        let rule =
            timestamp_rule(timestamp_begin, self.eos, no_timestamps, self.max_initial_timestamp);
        let mut language = self.language;
        let (mut windows, mut segments) = (Vec::new(), Vec::new());
        let mut seek = 0usize;
        while seek < total {
            let frames = (total - seek).min(WHISPER_FRAMES);
            let heard = &samples
                [(seek * hop).min(samples.len())..((seek + frames) * hop).min(samples.len())];
            if !self.decode_silence && silent(heard) {
                seek += frames;
                continue;
            }
            // The window, zero-padded (in the features' scale, as transformers pads) to 30 s.
            let mut window = ndarray::Array2::<f32>::zeros((n_mels, WHISPER_FRAMES));
            window
                .slice_mut(ndarray::s![.., ..frames])
                .assign(&features.slice(ndarray::s![.., seek..seek + frames]));
            let input = self.tensor(&window, device);
            let ids = tch::no_grad(|| -> Result<Vec<i64>> {
                let audio = self.whisper.encode(&input)?;
                if language.is_none() && !self.languages.is_empty() {
                    language = Some(self.detect(&audio));
                }
                let mut start = vec![self.sot];
                start.extend(language);
                start.extend(self.task);
                let how = Generation {
                    beam: self.beam,
                    suppress: &self.suppress,
                    begin_suppress: &self.begin,
                    rule: Some(&rule),
                    ..Generation::new(
                        &start,
                        self.eos,
                        self.whisper.config.max_target_positions as usize,
                    )
                };
                Ok(self.whisper.generate(&audio, &how).swap_remove(0))
            })?;
            let offset = seek as f64 * TIME_PRECISION / INPUT_STRIDE as f64;
            let (found, advance) = split_segments(&ids, timestamp_begin, offset, frames);
            for (start, end, tokens) in found {
                let text = self.text(&tokens)?;
                segments.push(Segment { start, end, text, tokens });
            }
            windows.push(ids);
            seek += advance.max(1);
        }
        let text = segments
            .iter()
            .map(|s| s.text.as_str())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Transcription { text, language: self.code(language), windows, segments })
    }

    /// `[1, n_mels, frames]` on `device`.
    fn tensor(&self, features: &ndarray::Array2<f32>, device: tch::Device) -> Tensor {
        let (m, t) = features.dim();
        let values: Vec<f32> = features.iter().copied().collect();
        Tensor::from_slice(&values).view([1, m as i64, t as i64]).to_device(device)
    }

    /// The text of `ids`, trimmed: text tokens only (those before the end token's id).
    fn text(&self, ids: &[i64]) -> Result<String> {
        let words: Vec<i64> = ids.iter().copied().filter(|id| *id < self.eos).collect();
        let text = self.tokenizer.decode(&words).map_err(|e| Error::Config(e.to_string()))?;
        Ok(text.trim().to_string())
    }

    /// A language token's code.
    fn code(&self, language: Option<i64>) -> Option<String> {
        language
            .and_then(|id| self.languages.iter().find(|(_, l)| *l == id).map(|(c, _)| c.clone()))
    }

    /// The language token most likely after `<|startoftranscript|>`.
    fn detect(&self, audio: &Encoded) -> i64 {
        let device = audio.hidden.device();
        let logits = self
            .whisper
            .decode(
                audio,
                &Tensor::from_slice(&[self.sot]).to_device(device).unsqueeze(0),
                &mut Cache::default(),
            )
            .select(1, -1)
            .squeeze_dim(0);
        let ids: Vec<i64> = self.languages.iter().map(|(_, id)| *id).collect();
        let scores = logits.index_select(0, &Tensor::from_slice(&ids).to_device(device));
        ids[scores.argmax(0, false).int64_value(&[]) as usize]
    }

    /// Decodes an audio file (any format mm-data reads), resamples it to 16 kHz and
    /// transcribes it.
    pub fn transcribe_file(&self, path: &Path) -> Result<Transcription> {
        let audio =
            mm_data::audio::load_audio(path, 16_000).map_err(|e| Error::Config(e.to_string()))?;
        if audio.samples.is_empty() {
            return Err(Error::Config(format!("{}: no audio samples", path.display())));
        }
        self.transcribe(&audio.samples)
    }
}

/// Whether `samples` peak below -80 dBFS (or there are none).
fn silent(samples: &[f32]) -> bool {
    samples.iter().fold(0f32, |m, x| m.max(x.abs())) < 1e-4
}

/// Whisper's timestamp rules (transformers' `WhisperTimeStampLogitsProcessor`, after OpenAI's):
/// `<|notimestamps|>` never; timestamps in pairs (after a lone timestamp, a timestamp or the end;
/// after a pair, text); timestamps never decreasing; the first token a timestamp, at most
/// `max_initial` steps in; and a timestamp whenever the timestamps together are likelier than
/// the likeliest text token.
fn timestamp_rule(
    timestamp_begin: i64,
    eos: i64,
    no_timestamps: i64,
    max_initial: Option<i64>,
) -> impl Fn(&[&[i64]], &mut Tensor) {
    let neg = f64::NEG_INFINITY;
    move |rows, scores| {
        let v = scores.size()[1];
        let tb = timestamp_begin.min(v);
        let _ = scores.narrow(1, no_timestamps, 1).fill_(neg);
        for (k, seq) in rows.iter().enumerate() {
            let row = scores.get(k as i64);
            let n = seq.len();
            let last = n >= 1 && seq[n - 1] >= tb;
            let penultimate = n < 2 || seq[n - 2] >= tb;
            if last {
                if penultimate {
                    let _ = row.narrow(0, tb, v - tb).fill_(neg);
                } else {
                    let _ = row.narrow(0, 0, eos).fill_(neg);
                }
            }
            if let Some(&t) = seq.iter().rev().find(|t| **t >= tb) {
                let below = if last && !penultimate { t } else { t + 1 };
                let _ = row.narrow(0, tb, (below - tb).min(v - tb)).fill_(neg);
            }
            if n == 0 {
                let _ = row.narrow(0, 0, tb).fill_(neg);
                if let Some(m) = max_initial {
                    let first_banned = (tb + m + 1).min(v);
                    let _ = row.narrow(0, first_banned, v - first_banned).fill_(neg);
                }
            }
        }
        let logp = scores.to_kind(tch::Kind::Float).log_softmax(-1, tch::Kind::Float);
        let stamps = logp.narrow(1, tb, v - tb).logsumexp([-1].as_slice(), false);
        let text = logp.narrow(1, 0, tb).amax([-1].as_slice(), false);
        let force = stamps.gt_tensor(&text).unsqueeze(1);
        let _ = scores.narrow(1, 0, tb).masked_fill_(&force, neg);
    }
}

/// A window's tokens as segments `(start, end, tokens)` in seconds from the recording's start
/// (`offset` is the window's), and how many feature frames the next window starts after this
/// one's start (transformers' `_retrieve_segment`). `frames` is the window's length.
fn split_segments(
    ids: &[i64],
    timestamp_begin: i64,
    offset: f64,
    frames: usize,
) -> (Vec<(f64, f64, Vec<i64>)>, usize) {
    let stamp = |i: usize| ids[i] >= timestamp_begin;
    let n = ids.len();
    let at = |t: i64| offset + (t - timestamp_begin) as f64 * TIME_PRECISION;
    let single_ending = n >= 2 && !stamp(n - 2) && stamp(n - 1);
    let mut cuts: Vec<usize> =
        (0..n.saturating_sub(1)).filter(|&i| stamp(i) && stamp(i + 1)).map(|i| i + 1).collect();
    if cuts.is_empty() {
        // No pair of timestamps: the whole window is one segment, to its last timestamp or its end.
        let end = match (0..n).rev().find(|&i| stamp(i)) {
            Some(i) if ids[i] != timestamp_begin => at(ids[i]),
            _ => offset + ((frames as f64 * 0.01 / TIME_PRECISION) as i64) as f64 * TIME_PRECISION,
        };
        return (vec![(offset, end, ids.to_vec())], frames);
    }
    if single_ending {
        cuts.push(n);
    } else if let Some(last) = cuts.last_mut() {
        // The last timestamp stays with the last segment, to say it was not a single ending.
        *last += 1;
    }
    let mut segments = Vec::with_capacity(cuts.len());
    let mut from = 0;
    for (i, &to) in cuts.iter().enumerate() {
        let tokens = &ids[from..to];
        let end_index =
            if i + 1 < cuts.len() || single_ending { tokens.len() - 1 } else { tokens.len() - 2 };
        segments.push((at(tokens[0]), at(tokens[end_index]), tokens.to_vec()));
        from = to;
    }
    let advance = if single_ending {
        frames
    } else {
        // The unfinished segment after the last pair is thrown away; the next window starts at
        // the last timestamp.
        (ids[from - 2] - timestamp_begin) as usize * INPUT_STRIDE
    };
    (segments, advance)
}

/// `[model.encoders.audio] kind = "whisper"`: a pretrained Whisper's encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhisperEncoderConfig {
    /// A Whisper model folder as transformers saves it (`config.json`, `model.safetensors`);
    /// only the encoder's part of the weights is loaded. The data's audio must come through
    /// Whisper's front end: `[data.audio] front = "whisper"`, `mel = { n_mels = 80 }` (the
    /// model's `num_mel_bins`).
    pub model: std::path::PathBuf,
    /// Keep the encoder fixed.
    #[serde(default)]
    pub freeze: bool,
    /// Project the output to this size.
    #[serde(default)]
    pub project: Option<i64>,
}

/// Whisper's encoder as an [`crate::Encoder`] of audio (`[B, 3000, n_mels]` from Whisper's
/// front end): the sequence is the encoder's 1500 positions, the pooled vector their mean (as
/// transformers' `WhisperForAudioClassification` pools them).
#[derive(Debug)]
pub struct WhisperAudioEncoder {
    tower: AudioTower,
    dim: i64,
    backbone: crate::Backbone,
}

impl WhisperAudioEncoder {
    /// The encoder of `config` under `path` (its variables named as transformers'
    /// `model.encoder.*`, without that prefix).
    pub fn new(path: &nn::Path, config: &WhisperConfig) -> Result<Self> {
        config.check().map_err(Error::Config)?;
        let tower = AudioTower::new(path, config);
        let backbone = crate::Backbone::new(tower.parameters());
        Ok(WhisperAudioEncoder { tower, dim: config.d_model, backbone })
    }
}

impl crate::Encoder for WhisperAudioEncoder {
    fn output_dim(&self) -> i64 {
        self.dim
    }

    fn forward_t(&self, input: &crate::Input, _train: bool) -> crate::Encoded {
        // [B, frames, mels] as mm-data batches audio; Whisper reads [B, mels, frames], exactly
        // one window: a batch whose samples all lack audio has one frame, padded with zeros as
        // transformers pads a short window's features.
        let frames = input.values.size()[1];
        let values = match frames.cmp(&self.tower.frames) {
            std::cmp::Ordering::Less => {
                input.values.constant_pad_nd([0, 0, 0, self.tower.frames - frames])
            }
            std::cmp::Ordering::Greater => input.values.narrow(1, 0, self.tower.frames),
            std::cmp::Ordering::Equal => input.values.shallow_clone(),
        };
        let mel = values.transpose(1, 2).contiguous();
        let hidden = self.tower.forward(&mel).unwrap_or_else(|e| panic!("{e}"));
        let (b, t, _) = hidden.size3().expect("[B, T, D]");
        let mask = Tensor::ones([b, t], (tch::Kind::Bool, hidden.device()));
        crate::Encoded {
            pooled: hidden.mean_dim(1, false, hidden.kind()),
            seq: Some((hidden, mask)),
        }
    }

    fn set_backbone_trainable(&self, trainable: bool) {
        self.backbone.set_trainable(trainable);
    }

    fn backbone_parameters(&self) -> Vec<Tensor> {
        self.backbone.parameters()
    }

    fn time_stride(&self) -> i64 {
        INPUT_STRIDE as i64
    }
}

/// Maps a tensor name of transformers' Whisper files to an audio encoder's variable:
/// `model.encoder.X` to `X`; the decoder and the output projection skipped.
pub fn whisper_encoder_name(name: &str) -> Mapped {
    match name.strip_prefix("model.encoder.") {
        Some(rest) => Mapped::To(rest.to_string()),
        None => Mapped::Skip("the decoder (an audio encoder uses Whisper's encoder alone)"),
    }
}
