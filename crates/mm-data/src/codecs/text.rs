//! Word-level text handling for word-vector encoders: a tokenizer (lower-casing, punctuation
//! handling) and a vocabulary built from the training texts (minimum frequency, maximum size,
//! `<pad>` and `<unk>`), saved and loaded as a plain word list.
//!
//! ```
//! use mm_data::text::{Punctuation, VocabBuilder, WordTokenizer};
//!
//! let tok = WordTokenizer { lowercase: true, punctuation: Punctuation::Split };
//! assert_eq!(tok.tokenize("A dog, running!"), ["a", "dog", ",", "running", "!"]);
//!
//! let texts = ["a dog runs", "a cat sits", "a dog sits"];
//! let vocab = VocabBuilder { min_freq: 2, ..Default::default() }.build(&tok, texts);
//! // <pad> and <unk> first, then by frequency (ties alphabetical): a (3), dog (2), sits (2).
//! assert_eq!(vocab.tokens(), ["<pad>", "<unk>", "a", "dog", "sits"]);
//! assert_eq!(vocab.encode(&tok.tokenize("A cat sits")), [2, 1, 4]); // "cat" is rare: <unk>
//! ```

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::fs::write_atomic;

/// What the tokenizer does with punctuation characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Punctuation {
    /// Each punctuation character becomes a token of its own (`"dog,"` → `"dog"`, `","`).
    #[default]
    Split,
    /// Punctuation characters are removed (`"don't"` → `"dont"`).
    Strip,
    /// Punctuation stays where it is; only whitespace separates tokens.
    Keep,
}

/// Splits text into words on whitespace, with optional lower-casing and punctuation handling.
/// Punctuation is what Unicode calls punctuation (`char::is_ascii_punctuation` and beyond).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WordTokenizer {
    /// Lower-case before splitting (GloVe's vocabulary is lower-case).
    pub lowercase: bool,
    /// Punctuation handling.
    pub punctuation: Punctuation,
}

impl Default for WordTokenizer {
    fn default() -> Self {
        WordTokenizer { lowercase: true, punctuation: Punctuation::Split }
    }
}

fn is_punct(c: char) -> bool {
    c.is_ascii_punctuation() || (!c.is_ascii() && !c.is_alphanumeric() && !c.is_whitespace())
}

impl WordTokenizer {
    /// The tokens of `text`.
    pub fn tokenize(&self, text: &str) -> Vec<String> {
        let text = if self.lowercase { text.to_lowercase() } else { text.to_string() };
        let mut out = Vec::new();
        for word in text.split_whitespace() {
            match self.punctuation {
                Punctuation::Keep => out.push(word.to_string()),
                Punctuation::Strip => {
                    let w: String = word.chars().filter(|c| !is_punct(*c)).collect();
                    if !w.is_empty() {
                        out.push(w);
                    }
                }
                Punctuation::Split => {
                    let mut current = String::new();
                    for c in word.chars() {
                        if is_punct(c) {
                            if !current.is_empty() {
                                out.push(std::mem::take(&mut current));
                            }
                            out.push(c.to_string());
                        } else {
                            current.push(c);
                        }
                    }
                    if !current.is_empty() {
                        out.push(current);
                    }
                }
            }
        }
        out
    }
}

/// The padding token, always id 0.
pub const PAD: &str = "<pad>";
/// The unknown-word token, always id 1.
pub const UNK: &str = "<unk>";

/// How a vocabulary is built from training texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VocabBuilder {
    /// Words seen fewer times are left out (they map to `<unk>`).
    pub min_freq: usize,
    /// At most this many entries, `<pad>` and `<unk>` included; `None` for no limit.
    pub max_size: Option<usize>,
}

impl Default for VocabBuilder {
    fn default() -> Self {
        VocabBuilder { min_freq: 1, max_size: None }
    }
}

impl VocabBuilder {
    /// Counts the tokens of `texts` and keeps the frequent ones: most frequent first, ties in
    /// alphabetical order, so the same texts always give the same ids.
    pub fn build<'a>(
        &self,
        tokenizer: &WordTokenizer,
        texts: impl IntoIterator<Item = &'a str>,
    ) -> Vocab {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for text in texts {
            for t in tokenizer.tokenize(text) {
                *counts.entry(t).or_default() += 1;
            }
        }
        counts.remove(PAD);
        counts.remove(UNK);
        let mut words: Vec<(String, usize)> =
            counts.into_iter().filter(|(_, c)| *c >= self.min_freq.max(1)).collect();
        words.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let room = self.max_size.map_or(usize::MAX, |m| m.saturating_sub(2));
        let tokens = [PAD.to_string(), UNK.to_string()]
            .into_iter()
            .chain(words.into_iter().take(room).map(|(w, _)| w))
            .collect();
        Vocab::from_tokens(tokens)
    }
}

/// A word-to-id mapping with `<pad>` = 0 and `<unk>` = 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    tokens: Vec<String>,
    ids: HashMap<String, i64>,
}

impl Vocab {
    fn from_tokens(tokens: Vec<String>) -> Vocab {
        let ids = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as i64)).collect();
        Vocab { tokens, ids }
    }

    /// The words, by id.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// Number of entries, `<pad>` and `<unk>` included.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Always false: a vocabulary holds at least `<pad>` and `<unk>`.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The id of a word, `<unk>`'s for a word not in the vocabulary.
    pub fn id(&self, token: &str) -> i64 {
        self.ids.get(token).copied().unwrap_or(1)
    }

    /// The ids of a token sequence.
    pub fn encode<S: AsRef<str>>(&self, tokens: &[S]) -> Vec<i64> {
        tokens.iter().map(|t| self.id(t.as_ref())).collect()
    }

    /// Writes the vocabulary as one word per line, in id order, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut text = self.tokens.join("\n");
        text.push('\n');
        write_atomic(path.as_ref(), text.as_bytes())
    }

    /// Reads a word list written by [`Vocab::save`]; errors name the line.
    pub fn load(path: impl AsRef<Path>) -> Result<Vocab> {
        let path = path.as_ref();
        let text = crate::fs::read_text_capped(path, crate::fs::FileKind::Text)?;
        let err =
            |line: usize, message: String| Error::Parse { file: path.to_path_buf(), line, message };
        let tokens: Vec<String> = text.lines().map(str::to_string).collect();
        if tokens.first().map(String::as_str) != Some(PAD)
            || tokens.get(1).map(String::as_str) != Some(UNK)
        {
            return Err(err(1, format!("a vocabulary starts with {PAD} and {UNK}")));
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, t) in tokens.iter().enumerate() {
            if t.is_empty() || t.chars().any(char::is_whitespace) {
                return Err(err(
                    i + 1,
                    format!("{t:?} is not a word (empty or contains whitespace)"),
                ));
            }
            if let Some(first) = seen.insert(t, i + 1) {
                return Err(err(i + 1, format!("{t:?} already on line {first}")));
            }
        }
        Ok(Vocab::from_tokens(tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punctuation_modes() {
        let text = "Don't STOP, now—ok?";
        let t = |p| WordTokenizer { lowercase: true, punctuation: p }.tokenize(text);
        assert_eq!(t(Punctuation::Split), ["don", "'", "t", "stop", ",", "now", "—", "ok", "?"]);
        assert_eq!(t(Punctuation::Strip), ["dont", "stop", "nowok"]);
        assert_eq!(t(Punctuation::Keep), ["don't", "stop,", "now—ok?"]);
        let cased = WordTokenizer { lowercase: false, punctuation: Punctuation::Keep }
            .tokenize("Ça  va\tBien\n");
        assert_eq!(cased, ["Ça", "va", "Bien"]);
        assert!(WordTokenizer::default().tokenize(" \t ").is_empty());
    }

    #[test]
    fn vocabulary_limits_and_order() {
        let tok = WordTokenizer::default();
        let texts = ["b b b a a c", "c d <unk> <pad>"];
        let all = VocabBuilder::default().build(&tok, texts);
        // `<unk>` and `<pad>` in a text are split into `<`, `unk`, `>` and `<`, `pad`, `>`: a text
        // can never claim a special id.
        assert_eq!(&all.tokens()[..5], ["<pad>", "<unk>", "b", "<", ">"]);
        let small = VocabBuilder { min_freq: 2, max_size: Some(4) }.build(&tok, texts);
        assert_eq!(small.tokens(), ["<pad>", "<unk>", "b", "<"]);
        assert_eq!(small.encode(&["b", "zzz", "<pad>"]), [2, 1, 0]);
        assert_eq!(small.len(), 4);
    }

    #[test]
    fn saves_and_loads_and_refuses_bad_lists() {
        let dir = std::env::temp_dir().join(format!("mm-text-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let vocab = VocabBuilder::default().build(&WordTokenizer::default(), ["x y y", "é"]);
        let file = dir.join("vocab.txt");
        vocab.save(&file).expect("save");
        assert_eq!(Vocab::load(&file).expect("load"), vocab);
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, "<pad>\n<unk>\nx\ny\nx\n").expect("write");
        let e = Vocab::load(&bad).expect_err("duplicate").to_string();
        assert!(e.ends_with("bad.txt:5: \"x\" already on line 3"), "{e}");
        std::fs::write(&bad, "x\n").expect("write");
        assert!(Vocab::load(&bad)
            .expect_err("no specials")
            .to_string()
            .contains("starts with <pad>"));
        std::fs::write(&bad, "<pad>\n<unk>\n\n").expect("write");
        assert!(Vocab::load(&bad).expect_err("empty word").to_string().contains("bad.txt:3"));
        std::fs::remove_dir_all(dir).ok();
    }
}
