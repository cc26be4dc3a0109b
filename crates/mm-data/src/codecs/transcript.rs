//! Transcripts as targets: the characters of a sample's `text`, through an [`Alphabet`], for
//! speech recognition with CTC. Id 0 is CTC's blank; the alphabet's characters follow in their
//! order, so a model's output width is `alphabet.len()` (characters + 1). Captions are word
//! transcripts ([`Alphabet::words`], `unit = "words"`).
//!
//! Text is normalised before encoding: lower-cased (unless the alphabet has capitals),
//! whitespace runs become one space, and the ends are trimmed. A character outside the
//! alphabet is an error naming it and its position, never a silently dropped character.
//!
//! ```
//! use mm_data::transcript::Alphabet;
//!
//! let alphabet = Alphabet::new("abcdefghijklmnopqrstuvwxyz' ")?;
//! assert_eq!(alphabet.len(), 29); // 28 characters and the blank
//! let ids = alphabet.encode("  One  two ")?;
//! assert_eq!(alphabet.decode(&ids), "one two");
//! assert!(alphabet.encode("naïve").unwrap_err().contains("'ï'"));
//! # Ok::<(), String>(())
//! ```

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::text::{Punctuation, Vocab, WordTokenizer, UNK};

/// The default alphabet: lower-case English letters, the apostrophe and the space.
pub const ENGLISH: &str = "abcdefghijklmnopqrstuvwxyz' ";

/// The units a transcript is made of; id 0 is the blank (CTC) or padding.
///
/// Characters ([`Alphabet::new`]) for speech recognition; or words ([`Alphabet::words`]), a
/// vocabulary built from the training transcripts, for captions: id 1 is then `<unk>`, and a
/// word outside the vocabulary is encoded as `<unk>` rather than refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alphabet {
    units: Units,
    lowercase: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Units {
    Chars(Vec<char>),
    Words(Arc<Vocab>),
}

/// How word transcripts are split: lower-cased, punctuation removed (a caption's full stop is
/// not a word to learn).
pub const WORDS: WordTokenizer = WordTokenizer { lowercase: true, punctuation: Punctuation::Strip };

impl Alphabet {
    /// The blank's id.
    pub const BLANK: usize = 0;

    /// An alphabet of `chars` in order (ids 1, 2, ...); duplicates and an empty alphabet are
    /// refused. Text is lower-cased first unless `chars` holds an upper-case letter.
    pub fn new(chars: &str) -> Result<Self, String> {
        let list: Vec<char> = chars.chars().collect();
        if list.is_empty() {
            return Err("the alphabet is empty".to_string());
        }
        for (i, c) in list.iter().enumerate() {
            if list[..i].contains(c) {
                return Err(format!("the alphabet has {c:?} twice"));
            }
            if c.is_control() || (c.is_whitespace() && *c != ' ') {
                return Err(format!("the alphabet holds {c:?}: whitespace other than the space and control characters are not usable"));
            }
        }
        let lowercase = !list.iter().any(|c| c.is_uppercase());
        Ok(Alphabet { units: Units::Chars(list), lowercase })
    }

    /// Word units: `vocab`'s words (id 0 `<pad>`, the blank; id 1 `<unk>`), text split by
    /// [`WORDS`].
    ///
    /// ```
    /// use mm_data::text::VocabBuilder;
    /// use mm_data::transcript::{Alphabet, WORDS};
    ///
    /// let vocab = VocabBuilder::default().build(&WORDS, ["A red square.", "a blue circle"]);
    /// let words = Alphabet::words(vocab);
    /// let ids = words.encode("A red circle, on grass")?;
    /// assert_eq!(words.decode(&ids), "a red circle <unk> <unk>");
    /// # Ok::<(), String>(())
    /// ```
    pub fn words(vocab: Vocab) -> Self {
        Alphabet { units: Units::Words(Arc::new(vocab)), lowercase: true }
    }

    /// The vocabulary of word units; `None` for characters.
    pub fn vocab(&self) -> Option<&Vocab> {
        match &self.units {
            Units::Words(v) => Some(v),
            Units::Chars(_) => None,
        }
    }

    /// Ids, the blank included: the width of a CTC model's output.
    pub fn len(&self) -> usize {
        match &self.units {
            Units::Chars(c) => c.len() + 1,
            Units::Words(v) => v.len(),
        }
    }

    /// Never true: an alphabet has at least one character (and the blank).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The characters, in id order from id 1 (empty for word units).
    pub fn chars(&self) -> String {
        match &self.units {
            Units::Chars(c) => c.iter().collect(),
            Units::Words(_) => String::new(),
        }
    }

    /// `text` as the alphabet sees it: lower-cased (see [`Alphabet::new`]), whitespace runs
    /// made one space, ends trimmed; for words, the words [`WORDS`] splits, joined by spaces.
    pub fn normalise(&self, text: &str) -> String {
        if let Units::Words(_) = &self.units {
            return WORDS.tokenize(text).join(" ");
        }
        let text = if self.lowercase { text.to_lowercase() } else { text.to_string() };
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The ids of `text`'s characters after [`Alphabet::normalise`]; the error names the first
    /// character outside the alphabet and its position in the normalised text. Words outside
    /// a word vocabulary are `<unk>` (id 1), never an error.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, String> {
        let chars = match &self.units {
            Units::Words(vocab) => return Ok(vocab.encode(&WORDS.tokenize(text))),
            Units::Chars(chars) => chars,
        };
        let text = self.normalise(text);
        text.chars()
            .enumerate()
            .map(|(i, c)| {
                chars.iter().position(|a| *a == c).map(|p| p as i64 + 1).ok_or_else(|| {
                    format!("character {c:?} (U+{:04X}) at position {i} of {text:?} is not in the alphabet {:?}", c as u32, self.chars())
                })
            })
            .collect()
    }

    /// The text of `ids` (blanks and unknown ids are skipped); words are joined by spaces,
    /// `<unk>` written as it is.
    pub fn decode<T: Copy + TryInto<usize>>(&self, ids: &[T]) -> String {
        let ids = ids.iter().filter_map(|&i| i.try_into().ok()).filter(|i: &usize| *i != 0);
        match &self.units {
            Units::Chars(chars) => ids.filter_map(|i| chars.get(i - 1)).collect(),
            Units::Words(vocab) => ids
                .filter_map(|i| vocab.tokens().get(i).map(String::as_str))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    /// The words of `ids`, `<unk>` included (blanks and ids outside skipped); for characters,
    /// each character as a word of its own.
    pub fn tokens<T: Copy + TryInto<usize>>(&self, ids: &[T]) -> Vec<String> {
        match &self.units {
            Units::Words(_) => {
                self.decode(ids).split(' ').filter(|w| !w.is_empty()).map(str::to_string).collect()
            }
            Units::Chars(_) => self.decode(ids).chars().map(String::from).collect(),
        }
    }

    /// The character of id `id`, `None` for the blank, ids outside the alphabet and word units.
    pub fn char(&self, id: usize) -> Option<char> {
        match &self.units {
            Units::Chars(chars) => id.checked_sub(1).and_then(|j| chars.get(j)).copied(),
            Units::Words(_) => None,
        }
    }

    /// Whether id `id` is `<unk>` of a word vocabulary.
    pub fn is_unknown(&self, id: usize) -> bool {
        matches!(&self.units, Units::Words(v) if v.tokens().get(id).map(String::as_str) == Some(UNK))
    }
}

fn english() -> String {
    ENGLISH.to_string()
}

/// What a transcript is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Characters of `alphabet` (speech recognition with CTC).
    #[default]
    Chars,
    /// Words, from a vocabulary built from the training split's transcripts (captions); the
    /// vocabulary is saved with a run as `transcript_vocab.txt`.
    Words,
}

impl Unit {
    fn is_chars(&self) -> bool {
        *self == Unit::Chars
    }
}

/// `[data.transcript]`: the sample's `text` is the target, a sequence of characters or words,
/// rather than an input modality.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscriptConfig {
    /// The characters, in id order (default: `a`-`z`, `'` and the space); unused for words.
    #[serde(default = "english")]
    pub alphabet: String,
    /// Characters (default) or words.
    #[serde(default, skip_serializing_if = "Unit::is_chars")]
    pub unit: Unit,
    /// Words: a word seen fewer times than this in the training transcripts is `<unk>`
    /// (default 2: a word seen once is too rare to learn to say).
    #[serde(default = "two", skip_serializing_if = "is_two")]
    pub min_count: usize,
    /// Words: at most this many vocabulary entries, `<pad>` and `<unk>` included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vocab: Option<usize>,
}

fn two() -> usize {
    2
}

fn is_two(n: &usize) -> bool {
    *n == 2
}

impl Default for TranscriptConfig {
    fn default() -> Self {
        TranscriptConfig { alphabet: english(), unit: Unit::Chars, min_count: 2, max_vocab: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabets_are_checked() {
        assert!(Alphabet::new("").expect_err("empty").contains("empty"));
        assert!(Alphabet::new("aba").expect_err("duplicate").contains("twice"));
        assert!(Alphabet::new("ab\t").expect_err("tab").contains("whitespace"));
        let a = Alphabet::new("abc ").expect("alphabet");
        assert_eq!(a.encode("A b\n\nC").expect("encode"), [1, 4, 2, 4, 3]);
        assert_eq!(a.char(0), None);
        assert_eq!(a.char(3), Some('c'));
        assert_eq!(a.decode(&[0usize, 1, 0, 9, 2]), "ab");
        let cased = Alphabet::new("aA").expect("alphabet");
        assert_eq!(cased.encode("Aa").expect("encode"), [2, 1]);
        let err = a.encode("abd").expect_err("d");
        assert!(err.contains("'d'") && err.contains("position 2"), "{err}");
    }

    #[test]
    fn word_units_come_from_a_vocabulary_and_unknown_words_are_unk() {
        let vocab = crate::text::VocabBuilder { min_freq: 2, max_size: None }
            .build(&WORDS, ["A red square.", "a RED circle!", "a blue square"]);
        let w = Alphabet::words(vocab);
        // <pad>, <unk>, then by count: a (3), red (2), square (2).
        assert_eq!(w.len(), 5);
        assert_eq!(
            w.vocab().map(|v| v.tokens().to_vec()).unwrap_or_default()[2..],
            ["a", "red", "square"]
        );
        let ids = w.encode("A red, blue square").expect("words never fail");
        assert_eq!(ids, [2, 3, 1, 4]);
        assert_eq!(w.decode(&ids), "a red <unk> square");
        assert_eq!(w.decode(&[0i64, 2, 0, 99]), "a");
        assert!(w.is_unknown(1) && !w.is_unknown(2));
        assert_eq!(w.tokens(&ids), ["a", "red", "<unk>", "square"]);
        assert_eq!((w.char(2), w.chars()), (None, String::new()));
        assert_eq!(w.normalise("  Two,  blue CIRCLES. "), "two blue circles");
        let config: TranscriptConfig =
            toml::from_str("unit = \"words\"\nmin_count = 3").expect("toml");
        assert_eq!((config.unit, config.min_count), (Unit::Words, 3));
        assert!(toml::from_str::<TranscriptConfig>("unit = \"letters\"").is_err());
    }
}
