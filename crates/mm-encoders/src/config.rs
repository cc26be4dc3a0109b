//! Encoders from configuration: [`EncoderConfig`] (one TOML table per modality, tagged by
//! `kind`, unknown keys refused) and [`build`].

use mm_data::text::Vocab;
use mm_data::Modality;
use serde::{Deserialize, Serialize};
use tch::nn;

use crate::audio::{AudioConfig, AudioEncoder};
use crate::bert::{hf_name, BertConfig, BertEncoder, BertEncoderConfig};
use crate::clip::{ClipEncoderConfig, ClipFolder, ClipImageEncoder, ClipPart, ClipTextEncoder};
use crate::image::{timm_name, ImageConfig, ImageEncoder};
use crate::tabular::{TabularConfig, TabularEncoder};
use crate::text::{TextConfig, TextEncoder};
use crate::vectors::load_vectors;
use crate::video::{VideoConfig, VideoEncoder};
use crate::vit::{hf_vit_name, VitEncoder, VitEncoderConfig, TORCHVISION_HEAD};
use crate::weights::{load_safetensors, LoadOptions, LoadReport};
use crate::whisper::{
    whisper_encoder_name, WhisperAudioEncoder, WhisperConfig, WhisperEncoderConfig,
};
use crate::{Encoder, Error, Projected, Result};

/// One encoder's configuration: a TOML table whose `kind` says which encoder, the other keys
/// being that encoder's configuration (unknown keys are errors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EncoderConfig {
    /// An image CNN.
    Image(ImageConfig),
    /// A text encoder.
    Text(TextConfig),
    /// A pretrained BERT over subword ids (transformers' files).
    Bert(BertEncoderConfig),
    /// An audio encoder.
    Audio(AudioConfig),
    /// An MLP for numeric records.
    Tabular(TabularConfig),
    /// Video frames: an image encoder per frame, then a sequence model.
    Video(VideoConfig),
    /// A Vision Transformer (torchvision's `vit_b_16` / `vit_b_32`, or transformers' files).
    Vit(VitEncoderConfig),
    /// A pretrained CLIP's vision tower (transformers' files).
    #[serde(rename = "clip-image")]
    ClipImage(ClipEncoderConfig),
    /// A pretrained CLIP's text tower over its BPE ids (transformers' files).
    #[serde(rename = "clip-text")]
    ClipText(ClipEncoderConfig),
    /// A pretrained Whisper's encoder over Whisper's log-mel window (transformers' files).
    Whisper(WhisperEncoderConfig),
}

/// What an encoder needs to know about its data.
#[derive(Debug, Default, Clone, Copy)]
pub struct BuildContext<'a> {
    /// Mel bins (audio) or features (tabular).
    pub input_dim: Option<i64>,
    /// The word vocabulary (text with word vectors, or any word-level text).
    pub vocab: Option<&'a Vocab>,
    /// Number of token ids when there is no word vocabulary (subword tokenizers).
    pub vocab_size: Option<i64>,
    /// The longest token sequence the data delivers (special tokens included).
    pub max_tokens: Option<i64>,
    /// Seed for random initialisations outside libtorch (out-of-vocabulary rows).
    pub seed: u64,
}

fn need(value: Option<i64>, what: &str) -> Result<i64> {
    value.ok_or_else(|| Error::Config(format!("building this encoder needs {what}")))
}

/// Builds the encoder `config` describes under `path` (then freezes and projects it as asked).
/// Word vectors are read here; image weights by [`EncoderConfig::load_weights`], which needs the
/// `VarStore`.
pub fn build(
    path: &nn::Path,
    config: &EncoderConfig,
    ctx: &BuildContext,
) -> Result<Box<dyn Encoder>> {
    let (encoder, freeze, project): (Box<dyn Encoder>, bool, Option<i64>) = match config {
        EncoderConfig::Image(c) => (Box::new(ImageEncoder::new(path, c)?), c.freeze, c.project),
        EncoderConfig::Text(c) => {
            let (size, loaded) = match (ctx.vocab, &c.vectors) {
                (Some(vocab), Some(file)) => {
                    (vocab.len() as i64, Some(load_vectors(file, vocab, c.oov, ctx.seed)?))
                }
                (None, Some(file)) => {
                    return Err(Error::Config(format!(
                        "text.vectors = {}: word vectors need a word vocabulary",
                        file.display()
                    )))
                }
                (Some(vocab), None) => (vocab.len() as i64, None),
                (None, None) => (need(ctx.vocab_size, "the vocabulary size")?, None),
            };
            (Box::new(TextEncoder::new(path, c, size, loaded.as_ref())?), c.freeze, c.project)
        }
        EncoderConfig::Bert(c) => {
            if ctx.vocab.is_some() {
                return Err(Error::Config(
                    "kind = \"bert\" reads subword ids: set [data.text] tokenizer to the model's tokenizer.json (a word vocabulary does not fit it)".into(),
                ));
            }
            let config = BertConfig::from_file(&c.model.join("config.json"))?;
            let tokens = need(ctx.vocab_size, "the tokenizer's vocabulary size")?;
            if tokens > config.vocab_size {
                return Err(Error::Config(format!(
                    "the tokenizer has {tokens} ids but the BERT model in {} only {}: they do not belong together",
                    c.model.display(),
                    config.vocab_size
                )));
            }
            if let Some(max) = ctx.max_tokens.filter(|m| *m > config.max_position_embeddings) {
                return Err(Error::Config(format!(
                    "the data keeps up to {max} tokens (data.text.max_tokens) but the BERT model in {} has {} positions",
                    c.model.display(),
                    config.max_position_embeddings
                )));
            }
            (Box::new(BertEncoder::new(path, &config, c.pooling)?), c.freeze, c.project)
        }
        EncoderConfig::Audio(c) => (
            Box::new(AudioEncoder::new(path, c, need(ctx.input_dim, "the number of mel bins")?)?),
            c.freeze,
            c.project,
        ),
        EncoderConfig::Tabular(c) => (
            Box::new(TabularEncoder::new(path, c, need(ctx.input_dim, "the number of features")?)?),
            false,
            c.project,
        ),
        EncoderConfig::Video(c) => (Box::new(VideoEncoder::new(path, c)?), c.freeze, c.project),
        EncoderConfig::Vit(c) => {
            if c.model.is_some() && c.weights.is_some() {
                return Err(Error::Config(
                    "kind = \"vit\": give model (a transformers folder) or weights (a torchvision file), not both".into(),
                ));
            }
            (Box::new(VitEncoder::new(path, &c.sizes()?)?), c.freeze, c.project)
        }
        EncoderConfig::ClipImage(c) => {
            let config = ClipFolder::read(&c.model)?.config;
            (Box::new(ClipImageEncoder::new(path, &config)?), c.freeze, c.project)
        }
        EncoderConfig::ClipText(c) => {
            if ctx.vocab.is_some() {
                return Err(Error::Config(
                    "kind = \"clip-text\" reads CLIP's BPE ids: set [data.text] tokenizer to the model's tokenizer.json (a word vocabulary does not fit it)".into(),
                ));
            }
            let config = ClipFolder::read(&c.model)?.config;
            let text = &config.text_config;
            let tokens = need(ctx.vocab_size, "the tokenizer's vocabulary size")?;
            if tokens > text.vocab_size {
                return Err(Error::Config(format!(
                    "the tokenizer has {tokens} ids but the CLIP model in {} only {}: they do not belong together",
                    c.model.display(),
                    text.vocab_size
                )));
            }
            if let Some(max) = ctx.max_tokens.filter(|m| *m > text.max_position_embeddings) {
                return Err(Error::Config(format!(
                    "the data keeps up to {max} tokens (data.text.max_tokens) but the CLIP model in {} has {} positions",
                    c.model.display(),
                    text.max_position_embeddings
                )));
            }
            (Box::new(ClipTextEncoder::new(path, &config)?), c.freeze, c.project)
        }
        EncoderConfig::Whisper(c) => {
            let config = WhisperConfig::from_file(&c.model.join("config.json"))?;
            let mels = need(ctx.input_dim, "the number of mel bins")?;
            if mels != config.num_mel_bins {
                return Err(Error::Config(format!(
                    "the data gives {mels} mel bins but the Whisper model in {} reads {}: set [data.audio] front = \"whisper\" and mel = {{ n_mels = {} }}",
                    c.model.display(),
                    config.num_mel_bins,
                    config.num_mel_bins
                )));
            }
            (Box::new(WhisperAudioEncoder::new(path, &config)?), c.freeze, c.project)
        }
    };
    if freeze {
        encoder.set_backbone_trainable(false);
    }
    match project {
        Some(dim) => Ok(Box::new(Projected::new(path, encoder, dim)?)),
        None => Ok(encoder),
    }
}

impl EncoderConfig {
    /// The `kind` this configuration is tagged with in TOML (`image`, `bert`, `video`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            EncoderConfig::Image(_) => "image",
            EncoderConfig::Text(_) => "text",
            EncoderConfig::Bert(_) => "bert",
            EncoderConfig::Audio(_) => "audio",
            EncoderConfig::Tabular(_) => "tabular",
            EncoderConfig::Video(_) => "video",
            EncoderConfig::Vit(_) => "vit",
            EncoderConfig::ClipImage(_) => "clip-image",
            EncoderConfig::ClipText(_) => "clip-text",
            EncoderConfig::Whisper(_) => "whisper",
        }
    }

    /// The modality an encoder of this kind reads (BERT reads text, video reads frames).
    pub fn modality(&self) -> Modality {
        match self {
            EncoderConfig::Image(_) | EncoderConfig::Vit(_) | EncoderConfig::ClipImage(_) => {
                Modality::Image
            }
            EncoderConfig::Text(_) | EncoderConfig::Bert(_) | EncoderConfig::ClipText(_) => {
                Modality::Text
            }
            EncoderConfig::Audio(_) | EncoderConfig::Whisper(_) => Modality::Audio,
            EncoderConfig::Tabular(_) => Modality::Features,
            EncoderConfig::Video(_) => Modality::Frames,
        }
    }

    /// The kind that reads `modality` when nothing else is asked for.
    pub fn default_kind(modality: Modality) -> &'static str {
        match modality {
            Modality::Image => "image",
            Modality::Audio => "audio",
            Modality::Text => "text",
            Modality::Frames => "video",
            Modality::Features => "tabular",
        }
    }

    /// Whether the configuration keeps the backbone fixed for the whole run (`freeze = true`).
    pub fn frozen(&self) -> bool {
        match self {
            EncoderConfig::Image(c) => c.freeze,
            EncoderConfig::Text(c) => c.freeze,
            EncoderConfig::Bert(c) => c.freeze,
            EncoderConfig::Audio(c) => c.freeze,
            EncoderConfig::Tabular(_) => false,
            EncoderConfig::Video(c) => c.freeze,
            EncoderConfig::ClipImage(c) | EncoderConfig::ClipText(c) => c.freeze,
            EncoderConfig::Vit(c) => c.freeze,
            EncoderConfig::Whisper(c) => c.freeze,
        }
    }

    /// Whether the encoder starts from pretrained numbers: image weights, a BERT model, word
    /// vectors.
    pub fn pretrained(&self) -> bool {
        match self {
            EncoderConfig::Image(c) => c.weights.is_some(),
            EncoderConfig::Video(c) => c.frame.weights.is_some(),
            EncoderConfig::Vit(c) => c.model.is_some() || c.weights.is_some(),
            EncoderConfig::Text(c) => c.vectors.is_some(),
            EncoderConfig::Bert(_)
            | EncoderConfig::ClipImage(_)
            | EncoderConfig::ClipText(_)
            | EncoderConfig::Whisper(_) => true,
            EncoderConfig::Audio(_) | EncoderConfig::Tabular(_) => false,
        }
    }

    /// Loads the configured pretrained weights into the variables under `prefix` (the
    /// encoder's path, with a trailing dot: `"image."`): an image network's `weights` file
    /// (torchvision's or timm's names; the classifier head skipped), or a BERT model's
    /// `model.safetensors` (transformers' names; the pre-training heads skipped). A projection
    /// is left alone. `None` when the configuration names no weights. Every mismatch is
    /// reported at once, by name and shape, and nothing is changed then.
    pub fn load_weights(&self, vs: &nn::VarStore, prefix: &str) -> Result<Option<LoadReport>> {
        // An image network's file (torchvision's or timm's names), under the encoder's prefix or
        // its frame encoder's.
        let image = |net: &ImageConfig, prefix: String| {
            net.weights.as_ref().map(|file| {
                let skip = ImageEncoder::head_names(net.arch);
                (
                    file.clone(),
                    LoadOptions {
                        prefix,
                        skip,
                        allow_missing: vec!["proj.".to_string()],
                        map: Some(timm_name),
                    },
                )
            })
        };
        let (file, options) = match self {
            EncoderConfig::Vit(c) => {
                let file = match (&c.model, &c.weights) {
                    (Some(dir), _) => dir.join("model.safetensors"),
                    (None, Some(file)) => file.clone(),
                    (None, None) => return Ok(None),
                };
                let options = LoadOptions {
                    prefix: prefix.to_string(),
                    skip: vec![TORCHVISION_HEAD.to_string()],
                    allow_missing: vec!["proj.".to_string()],
                    map: Some(hf_vit_name),
                };
                (file, options)
            }
            EncoderConfig::ClipImage(c) => {
                return crate::clip::load_part(vs, &c.model, ClipPart::Vision, prefix).map(Some)
            }
            EncoderConfig::ClipText(c) => {
                return crate::clip::load_part(vs, &c.model, ClipPart::Text, prefix).map(Some)
            }
            EncoderConfig::Bert(c) => {
                let options = LoadOptions {
                    prefix: prefix.to_string(),
                    skip: Vec::new(),
                    allow_missing: vec!["proj.".to_string()],
                    map: Some(hf_name),
                };
                (c.model.join("model.safetensors"), options)
            }
            EncoderConfig::Whisper(c) => {
                let options = LoadOptions {
                    prefix: prefix.to_string(),
                    skip: vec!["proj_out.".to_string()],
                    allow_missing: vec!["proj.".to_string()],
                    map: Some(whisper_encoder_name),
                };
                (c.model.join("model.safetensors"), options)
            }
            EncoderConfig::Image(c) => match image(c, prefix.to_string()) {
                Some(found) => found,
                None => return Ok(None),
            },
            EncoderConfig::Video(v) => match image(&v.frame, format!("{prefix}frame.")) {
                Some(found) => found,
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        load_safetensors(vs, &file, &options).map(Some)
    }
}
