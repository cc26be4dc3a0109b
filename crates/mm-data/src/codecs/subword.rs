//! Subword tokenization through Hugging Face's `tokenizers`: any `tokenizer.json` (WordPiece
//! for BERT, BPE, Unigram...) turns text into token ids the way the model it came with expects,
//! special tokens included.
//!
//! ```no_run
//! let tok = mm_data::subword::SubwordTokenizer::from_file("bert-base-uncased/tokenizer.json")?;
//! let ids = tok.encode("A dog runs on the beach.")?; // [CLS] ... [SEP] for BERT
//! # Ok::<(), mm_data::Error>(())
//! ```

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A `tokenizer.json` tokenizer.
#[derive(Debug, Clone)]
pub struct SubwordTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl SubwordTokenizer {
    /// Loads a `tokenizer.json`; a missing or malformed file is an error naming it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        // Read here, bounded (a regular file within the text limit), then parsed.
        let bytes = crate::fs::read_capped(path, crate::fs::FileKind::Text)?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::decode(path, format!("not a valid tokenizer.json: {e}")))?;
        Ok(SubwordTokenizer { inner, path: path.to_path_buf() })
    }

    /// Wraps a tokenizer built in code.
    pub fn from_tokenizer(inner: tokenizers::Tokenizer) -> Self {
        SubwordTokenizer { inner, path: PathBuf::from("<memory>") }
    }

    /// The token ids of `text`, with the special tokens the tokenizer's post-processor adds.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::decode(&self.path, format!("cannot encode {text:?}: {e}")))?;
        Ok(encoding.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    /// The token ids of `text`, at most `max` of them special tokens included (the text is cut,
    /// the special tokens kept, as transformers' `truncation=True, max_length=max` does), and
    /// which of them are special tokens (`[CLS]`, `[SEP]`).
    pub fn encode_max(&self, text: &str, max: usize) -> Result<(Vec<i64>, Vec<bool>)> {
        use tokenizers::PostProcessor;
        let fail = |e: tokenizers::Error| {
            Error::decode(&self.path, format!("cannot encode {text:?}: {e}"))
        };
        let mut encoding = self.inner.encode(text, false).map_err(fail)?;
        let added = self.inner.get_post_processor().map_or(0, |p| p.added_tokens(false));
        encoding.truncate(max.saturating_sub(added), 0, tokenizers::TruncationDirection::Right);
        let encoding = self.inner.post_process(encoding, None, true).map_err(fail)?;
        let ids = encoding.get_ids().iter().map(|&i| i64::from(i)).collect();
        let special = encoding.get_special_tokens_mask().iter().map(|&m| m != 0).collect();
        Ok((ids, special))
    }

    /// The text of a sequence of ids, special tokens left out.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| u32::try_from(i).unwrap_or(u32::MAX)).collect();
        self.inner
            .decode(&ids, true)
            .map_err(|e| Error::decode(&self.path, format!("cannot decode: {e}")))
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }
}
