//! Text encoders over token ids `[B, L]` with lengths: an embedding table (initialised from
//! pretrained word vectors, frozen or fine-tuned, or learned from scratch over `tokenizers`
//! subword ids), optionally a contextual layer (a BiLSTM/GRU or a small Transformer from
//! mm-seq), then mean, max, last-step or attention pooling over the valid tokens.
//!
//! Parameters: `embedding.weight` (the backbone when it comes from word vectors), `context.*`,
//! `attention.*`.
//!
//! ```
//! use mm_encoders::text::{Context, SeqPooling, TextConfig, TextEncoder};
//! use mm_encoders::{Encoder, Input};
//! use mm_seq::rnn::RnnConfig;
//! use tch::{nn, Device, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let config = TextConfig {
//!     dim: Some(32),
//!     context: Context::Rnn(RnnConfig { hidden: 16, bidirectional: true, ..Default::default() }),
//!     pooling: SeqPooling::Attention,
//!     ..Default::default()
//! };
//! let text = TextEncoder::new(&(vs.root() / "text"), &config, 1000, None)?;
//! let ids = Tensor::from_slice(&[5i64, 17, 9, 0, 42, 8, 0, 0]).view([2, 4]); // padded with <pad> = 0
//! let out = text.forward_t(&Input::sequence(ids, Tensor::from_slice(&[3i64, 2])), false);
//! assert_eq!(out.pooled.size(), [2, 32]); // a BiLSTM: 2 x 16
//! let (steps, mask) = out.seq.expect("a text encoder has steps");
//! assert_eq!((steps.size(), mask.size()), (vec![2, 4, 32], vec![2, 4]));
//! # Ok::<(), mm_encoders::Error>(())
//! ```

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use mm_seq::pool::{AttentionPool, AttentionPoolConfig};
use mm_seq::rnn::{Rnn, RnnConfig};
use mm_seq::transformer::{TransformerConfig, TransformerEncoder};
use mm_seq::{last_valid, lengths_to_mask, zero_padding, Pooling, SeqOutput, SequenceModel};

use crate::vectors::{OovPolicy, WordVectors};
use crate::{Backbone, Encoded, Encoder, Error, Input, Result};

/// How a sequence of step vectors becomes one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SeqPooling {
    /// Mean over valid steps.
    #[default]
    Mean,
    /// Element-wise maximum over valid steps.
    Max,
    /// The last valid step (a recurrent layer's final state).
    Last,
    /// Learned additive attention over valid steps.
    Attention,
}

/// The layer between the embeddings and the pooling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase", tag = "type", deny_unknown_fields)]
pub enum Context {
    /// None: a bag of embeddings.
    #[default]
    None,
    /// An LSTM or GRU (set `bidirectional = true` for a BiLSTM).
    Rnn(RnnConfig),
    /// A Transformer encoder.
    Transformer(TransformerConfig),
}

/// Configuration of a [`TextEncoder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextConfig {
    /// Embedding size; taken from the word vectors when there are some (and then, if given,
    /// it must equal theirs); required without.
    pub dim: Option<i64>,
    /// Contextual layer.
    pub context: Context,
    /// Pooling.
    pub pooling: SeqPooling,
    /// Dropout on the embeddings when training.
    pub dropout: f64,
    /// A GloVe or word2vec file to initialise the embeddings from (needs a word vocabulary).
    pub vectors: Option<std::path::PathBuf>,
    /// Rows of vocabulary words missing from the vectors.
    pub oov: OovPolicy,
    /// Keep the embeddings fixed.
    pub freeze: bool,
    /// Project the output to this size.
    pub project: Option<i64>,
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig {
            dim: None,
            context: Context::None,
            pooling: SeqPooling::Mean,
            dropout: 0.1,
            vectors: None,
            oov: OovPolicy::Mean,
            freeze: false,
            project: None,
        }
    }
}

/// A text encoder.
#[derive(Debug)]
pub struct TextEncoder {
    embedding: nn::Embedding,
    context: Option<Box<dyn SequenceModel>>,
    attention: Option<AttentionPool>,
    config: TextConfig,
    dim: i64,
    backbone: Backbone,
}

impl TextEncoder {
    /// An encoder for `vocab_size` token ids; `vectors` (for the same vocabulary) initialise
    /// the embeddings, which then form the backbone.
    pub fn new(
        path: &nn::Path,
        config: &TextConfig,
        vocab_size: i64,
        vectors: Option<&WordVectors>,
    ) -> Result<Self> {
        if vocab_size < 2 {
            return Err(Error::Config(format!(
                "text: a vocabulary of {vocab_size} entries (<pad> and <unk> at least)"
            )));
        }
        if !(0.0..1.0).contains(&config.dropout) {
            return Err(Error::Config(format!(
                "text.dropout = {}: must be in [0, 1)",
                config.dropout
            )));
        }
        let dim = match (vectors, config.dim) {
            (Some(v), Some(d)) if d != v.dim => {
                return Err(Error::Config(format!(
                    "text.dim = {d} but the word vectors have {}",
                    v.dim
                )))
            }
            (Some(v), _) => v.dim,
            (None, Some(d)) if d > 0 => d,
            (None, d) => {
                return Err(Error::Config(format!(
                    "text.dim = {d:?}: a positive size is needed without word vectors"
                )))
            }
        };
        let embedding = nn::embedding(path / "embedding", vocab_size, dim, Default::default());
        if let Some(v) = vectors {
            if v.matrix.size() != [vocab_size, dim] {
                return Err(Error::Config(format!(
                    "word vectors of shape {:?} for a vocabulary of {vocab_size}",
                    v.matrix.size()
                )));
            }
            tch::no_grad(|| embedding.ws.shallow_clone().copy_(&v.matrix));
        }
        let context: Option<Box<dyn SequenceModel>> = match &config.context {
            Context::None => None,
            Context::Rnn(c) => Some(Box::new(Rnn::new(&(path / "context"), dim, c)?)),
            Context::Transformer(c) => {
                Some(Box::new(TransformerEncoder::new(&(path / "context"), dim, c)?))
            }
        };
        let out = context.as_ref().map_or(dim, |c| c.output_dim());
        let attention = (config.pooling == SeqPooling::Attention)
            .then(|| {
                AttentionPool::new(&(path / "attention"), out, &AttentionPoolConfig::default())
            })
            .transpose()?;
        let backbone = Backbone::new(vec![embedding.ws.shallow_clone()]);
        Ok(TextEncoder {
            embedding,
            context,
            attention,
            config: config.clone(),
            dim: out,
            backbone,
        })
    }
}

/// Pools a sequence output the configured way.
pub(crate) fn pool(
    out: &SeqOutput,
    pooling: SeqPooling,
    attention: Option<&AttentionPool>,
) -> Tensor {
    match (pooling, attention) {
        (SeqPooling::Attention, Some(a)) => a.forward(&out.outputs, &out.mask),
        (SeqPooling::Max, _) => out.pool(Pooling::Max),
        (SeqPooling::Last, _) => out.pool(Pooling::Last),
        _ => out.pool(Pooling::Mean),
    }
}

impl Encoder for TextEncoder {
    fn output_dim(&self) -> i64 {
        self.dim
    }

    fn forward_t(&self, input: &Input, train: bool) -> Encoded {
        let ids = &input.values;
        let lengths = input.lengths_or_full();
        let emb =
            ids.to_kind(Kind::Int64).apply(&self.embedding).dropout(self.config.dropout, train);
        let out = match &self.context {
            Some(c) => c.forward_seq(&emb, &lengths, train),
            None => {
                let mask = lengths_to_mask(&lengths.to_device(emb.device()), ids.size()[1]);
                let outputs = zero_padding(&emb, &mask);
                let last = last_valid(&outputs, &lengths);
                SeqOutput { outputs, mask, last }
            }
        };
        let pooled = pool(&out, self.config.pooling, self.attention.as_ref());
        Encoded { pooled, seq: Some((out.outputs, out.mask)) }
    }

    fn set_backbone_trainable(&self, trainable: bool) {
        self.backbone.set_trainable(trainable);
    }

    fn backbone_parameters(&self) -> Vec<Tensor> {
        self.backbone.parameters()
    }
}
