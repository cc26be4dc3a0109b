//! [`Modality`]: the kinds of input mm reads (image, audio, text, frames, features), named
//! once here rather than by strings matched in every crate.
//!
//! A modality is written as its lowercase name everywhere a user or a file sees it: a run's
//! `[data.image]` and `[model.encoders.image]` tables, `config.json` beside a run, a checkpoint's
//! `encoders.image.` variables, the `image_stats.json` statistics. Serde, [`Display`](fmt::Display)
//! and [`FromStr`] all use that name, so what was written before still reads.
//!
//! Adding a modality starts here: a variant, its name, and its arms in [`Modality::in_sample`],
//! [`Modality::in_item`] and [`Modality::remove_from`]; the compiler then lists every other
//! match to extend (the batch's tensors, the encoder that reads it).
//!
//! ```
//! use mm_data::manifest::Sample;
//! use mm_data::Modality;
//!
//! let m: Modality = "audio".parse()?;
//! assert_eq!(m, Modality::Audio);
//! assert_eq!(m.to_string(), "audio");
//! assert_eq!(serde_json::to_string(&m).unwrap(), r#""audio""#);
//!
//! let sample = Sample::new("s1").with_text("a red square");
//! assert!(Modality::Text.in_sample(&sample) && !m.in_sample(&sample));
//!
//! let err = "video".parse::<Modality>().unwrap_err();
//! let known = "(image, audio, text, frames or features)";
//! assert_eq!(err.to_string(), format!("unknown modality `video` {known}"));
//! # Ok::<(), mm_data::modality::UnknownModality>(())
//! ```

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::manifest::Sample;
use crate::pipeline::Item;

/// A kind of input: what a sample may carry, a pipeline decodes and an encoder reads.
///
/// Ordered by name (as a string is), so a map keyed by modality iterates as one keyed by its
/// name does. [`Debug`](fmt::Debug) prints the quoted name, as the string did.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Modality {
    /// `image`: one picture, `[B, 3, H, W]` in a batch.
    Image,
    /// `audio`: a recording, log-mel frames `[B, T, n_mels]` in a batch.
    Audio,
    /// `text`: a caption or sentence, token ids `[B, L]` in a batch.
    Text,
    /// `frames`: a video as a sequence of pictures, `[B, T, 3, H, W]` in a batch.
    Frames,
    /// `features`: a record of numbers, `[B, F]` in a batch.
    Features,
}

impl Modality {
    /// Every modality, in batch order (the order of a batch's `present` columns).
    pub const ALL: [Modality; 5] =
        [Modality::Image, Modality::Audio, Modality::Text, Modality::Frames, Modality::Features];

    /// The modality a file holds, by its extension (any case): images (`png`, `jpg`, `jpeg`,
    /// `bmp`, `webp`, `gif`, `tif`, `tiff`), audio (`wav`, `flac`, `mp3`, `ogg`, `m4a`) and video
    /// files ([`crate::video::VIDEO_EXTENSIONS`], read as frames); `None` for anything else.
    ///
    /// ```
    /// use mm_data::Modality;
    ///
    /// assert_eq!(Modality::of_file("photos/Cat.JPG".as_ref()), Some(Modality::Image));
    /// assert_eq!(Modality::of_file("a.wav".as_ref()), Some(Modality::Audio));
    /// assert_eq!(Modality::of_file("notes.txt".as_ref()), None);
    /// ```
    pub fn of_file(path: &std::path::Path) -> Option<Modality> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "png" | "jpg" | "jpeg" | "bmp" | "webp" | "gif" | "tif" | "tiff" => {
                Some(Modality::Image)
            }
            "wav" | "flac" | "mp3" | "ogg" | "m4a" => Some(Modality::Audio),
            e if crate::video::VIDEO_EXTENSIONS.contains(&e) => Some(Modality::Frames),
            _ => None,
        }
    }

    /// The lowercase name used in configuration, manifests, files and checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            Modality::Image => "image",
            Modality::Audio => "audio",
            Modality::Text => "text",
            Modality::Frames => "frames",
            Modality::Features => "features",
        }
    }

    /// Whether the manifest sample `s` has this modality (a path, a text, at least one frame
    /// or a video file, a feature).
    pub fn in_sample(self, s: &Sample) -> bool {
        match self {
            Modality::Image => s.image.is_some(),
            Modality::Audio => s.audio.is_some(),
            Modality::Text => s.text.is_some(),
            Modality::Frames => !s.frames.is_empty() || s.video.is_some(),
            Modality::Features => !s.features.is_empty(),
        }
    }

    /// Whether the decoded item `it` has this modality.
    pub fn in_item(self, it: &Item) -> bool {
        match self {
            Modality::Image => it.image.is_some(),
            Modality::Audio => it.audio.is_some(),
            Modality::Text => it.tokens.is_some(),
            Modality::Frames => it.frames.is_some(),
            Modality::Features => it.features.is_some(),
        }
    }

    /// Removes this modality from the sample `s` (it then reads as absent).
    pub fn remove_from(self, s: &mut Sample) {
        match self {
            Modality::Image => s.image = None,
            Modality::Audio => s.audio = None,
            Modality::Text => s.text = None,
            Modality::Frames => {
                s.frames.clear();
                s.video = None;
            }
            Modality::Features => s.features.clear(),
        }
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl fmt::Debug for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.name(), f)
    }
}

impl PartialOrd for Modality {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Modality {
    fn cmp(&self, other: &Self) -> Ordering {
        self.name().cmp(other.name())
    }
}

impl PartialEq<str> for Modality {
    fn eq(&self, other: &str) -> bool {
        self.name() == other
    }
}

impl PartialEq<&str> for Modality {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

/// A name that is no modality; its message names it and the known ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownModality(pub String);

impl fmt::Display for UnknownModality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown modality `{}` (image, audio, text, frames or features)", self.0)
    }
}

impl std::error::Error for UnknownModality {}

impl FromStr for Modality {
    type Err = UnknownModality;

    fn from_str(s: &str) -> Result<Self, UnknownModality> {
        Modality::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| UnknownModality(s.into()))
    }
}

impl Serialize for Modality {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Modality {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn names_parse_display_and_serialize_as_themselves() {
        for m in Modality::ALL {
            assert_eq!(m.name().parse::<Modality>(), Ok(m));
            assert_eq!(m.to_string(), m.name());
            assert_eq!(format!("{m:?}"), format!("{:?}", m.name()));
            let json = serde_json::to_string(&m).expect("serialize");
            assert_eq!(json, format!("\"{}\"", m.name()));
            assert_eq!(serde_json::from_str::<Modality>(&json).expect("deserialize"), m);
        }
        let names: Vec<&str> = Modality::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(names, ["image", "audio", "text", "frames", "features"]);
    }

    #[test]
    fn unknown_names_are_errors_naming_them() {
        for bad in ["video", "Image", "", "image "] {
            let e = bad.parse::<Modality>().expect_err(bad);
            assert_eq!(e, UnknownModality(bad.to_string()));
            assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
            assert!(e.to_string().contains("image, audio, text, frames or features"), "{e}");
        }
        let e = serde_json::from_str::<Modality>(r#""sound""#).expect_err("sound");
        assert!(e.to_string().contains("unknown modality `sound`"), "{e}");
    }

    #[test]
    fn a_map_keyed_by_modality_keeps_the_order_and_bytes_of_one_keyed_by_name() {
        let by_name: BTreeMap<String, u8> = Modality::ALL
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name().to_string(), i as u8))
            .collect();
        let by_modality: BTreeMap<Modality, u8> =
            Modality::ALL.iter().enumerate().map(|(i, m)| (*m, i as u8)).collect();
        assert_eq!(
            serde_json::to_string(&by_modality).expect("serialize"),
            serde_json::to_string(&by_name).expect("serialize")
        );
        let back: BTreeMap<Modality, u8> =
            serde_json::from_str(&serde_json::to_string(&by_name).expect("serialize"))
                .expect("deserialize");
        assert_eq!(back, by_modality);
    }

    #[test]
    fn presence_and_removal_follow_the_sample() {
        let mut s = Sample::new("a").with_text("hi");
        s.features = vec![1.0];
        let present: Vec<Modality> =
            Modality::ALL.into_iter().filter(|m| m.in_sample(&s)).collect();
        assert_eq!(present, [Modality::Text, Modality::Features]);
        for m in Modality::ALL {
            m.remove_from(&mut s);
            assert!(!m.in_sample(&s));
        }
    }
}
