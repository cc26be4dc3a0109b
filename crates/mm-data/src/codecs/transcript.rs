//! Transcripts as targets: the characters of a sample's `text`, through an [`Alphabet`], for
//! speech recognition with CTC. Id 0 is CTC's blank; the alphabet's characters follow in their
//! order, so a model's output width is `alphabet.len()` (characters + 1).
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

use serde::{Deserialize, Serialize};

/// The default alphabet: lower-case English letters, the apostrophe and the space.
pub const ENGLISH: &str = "abcdefghijklmnopqrstuvwxyz' ";

/// The characters a transcript may hold; id 0 is the blank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alphabet {
    chars: Vec<char>,
    lowercase: bool,
}

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
        Ok(Alphabet { chars: list, lowercase })
    }

    /// Ids, the blank included: the width of a CTC model's output.
    pub fn len(&self) -> usize {
        self.chars.len() + 1
    }

    /// Never true: an alphabet has at least one character (and the blank).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The characters, in id order from id 1.
    pub fn chars(&self) -> String {
        self.chars.iter().collect()
    }

    /// `text` as the alphabet sees it: lower-cased (see [`Alphabet::new`]), whitespace runs
    /// made one space, ends trimmed.
    pub fn normalise(&self, text: &str) -> String {
        let text = if self.lowercase { text.to_lowercase() } else { text.to_string() };
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The ids of `text`'s characters after [`Alphabet::normalise`]; the error names the first
    /// character outside the alphabet and its position in the normalised text.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, String> {
        let text = self.normalise(text);
        text.chars()
            .enumerate()
            .map(|(i, c)| {
                self.chars.iter().position(|a| *a == c).map(|p| p as i64 + 1).ok_or_else(|| {
                    format!("character {c:?} (U+{:04X}) at position {i} of {text:?} is not in the alphabet {:?}", c as u32, self.chars())
                })
            })
            .collect()
    }

    /// The text of `ids` (blanks and unknown ids are skipped).
    pub fn decode<T: Copy + TryInto<usize>>(&self, ids: &[T]) -> String {
        ids.iter()
            .filter_map(|&i| i.try_into().ok())
            .filter_map(|i: usize| i.checked_sub(1).and_then(|j| self.chars.get(j)))
            .collect()
    }

    /// The character of id `id`, `None` for the blank and ids outside the alphabet.
    pub fn char(&self, id: usize) -> Option<char> {
        id.checked_sub(1).and_then(|j| self.chars.get(j)).copied()
    }
}

fn english() -> String {
    ENGLISH.to_string()
}

/// `[data.transcript]`: the sample's `text` is the target, a character sequence, rather than an
/// input modality.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscriptConfig {
    /// The characters, in id order (default: `a`-`z`, `'` and the space).
    #[serde(default = "english")]
    pub alphabet: String,
}

impl Default for TranscriptConfig {
    fn default() -> Self {
        TranscriptConfig { alphabet: english() }
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
}
