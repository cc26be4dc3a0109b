//! Encoders from configuration: [`EncoderConfig`] (one TOML table per modality, tagged by
//! `kind`, unknown keys refused) and [`build`].

use mm_data::text::Vocab;
use serde::{Deserialize, Serialize};
use tch::nn;

use crate::audio::{AudioConfig, AudioEncoder};
use crate::image::{ImageConfig, ImageEncoder};
use crate::tabular::{TabularConfig, TabularEncoder};
use crate::text::{TextConfig, TextEncoder};
use crate::video::{VideoConfig, VideoEncoder};
use crate::vectors::load_vectors;
use crate::weights::{load_safetensors, LoadOptions, LoadReport};
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
    /// An audio encoder.
    Audio(AudioConfig),
    /// An MLP for numeric records.
    Tabular(TabularConfig),
    /// Video frames: an image encoder per frame, then a sequence model.
    Video(VideoConfig),
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
    /// Seed for random initialisations outside libtorch (out-of-vocabulary rows).
    pub seed: u64,
}

fn need(value: Option<i64>, what: &str) -> Result<i64> {
    value.ok_or_else(|| Error::Config(format!("building this encoder needs {what}")))
}

/// Builds the encoder `config` describes under `path` (then freezes and projects it as asked).
/// Word vectors are read here; image weights by [`EncoderConfig::load_weights`], which needs the
/// `VarStore`.
pub fn build(path: &nn::Path, config: &EncoderConfig, ctx: &BuildContext) -> Result<Box<dyn Encoder>> {
    let (encoder, freeze, project): (Box<dyn Encoder>, bool, Option<i64>) = match config {
        EncoderConfig::Image(c) => (Box::new(ImageEncoder::new(path, c)?), c.freeze, c.project),
        EncoderConfig::Text(c) => {
            let (size, loaded) = match (ctx.vocab, &c.vectors) {
                (Some(vocab), Some(file)) => (vocab.len() as i64, Some(load_vectors(file, vocab, c.oov, ctx.seed)?)),
                (None, Some(file)) => {
                    return Err(Error::Config(format!("text.vectors = {}: word vectors need a word vocabulary", file.display())))
                }
                (Some(vocab), None) => (vocab.len() as i64, None),
                (None, None) => (need(ctx.vocab_size, "the vocabulary size")?, None),
            };
            (Box::new(TextEncoder::new(path, c, size, loaded.as_ref())?), c.freeze, c.project)
        }
        EncoderConfig::Audio(c) => {
            (Box::new(AudioEncoder::new(path, c, need(ctx.input_dim, "the number of mel bins")?)?), c.freeze, c.project)
        }
        EncoderConfig::Tabular(c) => {
            (Box::new(TabularEncoder::new(path, c, need(ctx.input_dim, "the number of features")?)?), false, c.project)
        }
        EncoderConfig::Video(c) => (Box::new(VideoEncoder::new(path, c)?), c.freeze, c.project),
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
    /// Loads the configured image weights into the variables under `prefix` (the encoder's
    /// path, with a trailing dot: `"image."`), skipping the checkpoint's classifier head and
    /// leaving a projection alone. `None` when no weights are configured.
    pub fn load_weights(&self, vs: &nn::VarStore, prefix: &str) -> Result<Option<LoadReport>> {
        let (net, prefix) = match self {
            EncoderConfig::Image(c) => (c, prefix.to_string()),
            EncoderConfig::Video(v) => (&v.frame, format!("{prefix}frame.")),
            _ => return Ok(None),
        };
        let ImageConfig { arch, weights: Some(file), .. } = net else { return Ok(None) };
        let options = LoadOptions { prefix, skip: ImageEncoder::head_names(*arch), allow_missing: vec!["proj.".to_string()] };
        load_safetensors(vs, file, &options).map(Some)
    }
}
