//! The Free Spoken Digit Dataset's recordings: their names, `{digit}_{speaker}_{take}.wav`
//! (takes 0-4 of every speaker and digit are the conventional test split), and their bytes,
//! read from the release archive (`.tar.gz`, in memory: nothing is unpacked) or from a folder.
//!
//! The one FSDD reader of mm: the converter here, mm-datasets' audio-visual digits and spoken
//! digits, the benches and the tests all parse names with [`Name::parse`] and read recordings
//! with [`read_wavs`].
//!
//! ```
//! use mm_fetch::fsdd::Name;
//!
//! let name = Name::parse("7_jackson_3.wav").expect("an FSDD name");
//! assert_eq!((name.digit, name.speaker.as_str(), name.take), (7, "jackson", 3));
//! assert!(name.is_test());
//! assert_eq!(Name::parse("notes.txt"), None);
//! ```

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// The form of an FSDD file name, for messages.
pub const NAME_FORM: &str = "{digit}_{speaker}_{take}.wav";

/// What an FSDD file name says about its recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    /// The digit spoken, 0 to 9.
    pub digit: u8,
    /// Who speaks it.
    pub speaker: String,
    /// Which of the speaker's takes of the digit.
    pub take: u32,
}

impl Name {
    /// Parses a file name (`7_jackson_3.wav`, or the stem `7_jackson_3`); `None` when it is not
    /// of FSDD's form.
    pub fn parse(file_name: &str) -> Option<Name> {
        let parts: Vec<&str> = file_name.trim_end_matches(".wav").split('_').collect();
        match parts[..] {
            [digit, speaker, take] => digit
                .parse::<u8>()
                .ok()
                .filter(|d| *d < 10)
                .zip(take.parse::<u32>().ok())
                .map(|(digit, take)| Name { digit, speaker: speaker.to_string(), take }),
            _ => None,
        }
    }

    /// Whether the recording is in FSDD's conventional test split (takes 0-4).
    pub fn is_test(&self) -> bool {
        self.take < 5
    }
}

/// A WAV file of FSDD: its file name and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wav {
    /// The file name (`7_jackson_3.wav`), without any folder.
    pub name: String,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

/// Reads the `.wav` files of FSDD's release archive (`.tar.gz`) or of a folder, sorted by name.
/// Names are not checked here: [`Name::parse`] says which are FSDD's.
///
/// With `limit`, only the first `limit` files: in the archive's order (reading stops there), or
/// by name in a folder.
pub fn read_wavs(source: &Path, limit: Option<usize>) -> Result<Vec<Wav>> {
    let limit = limit.unwrap_or(usize::MAX);
    let mut files: Vec<Wav> = Vec::new();
    if source.is_dir() {
        let mut names: Vec<String> = Vec::new();
        for entry in std::fs::read_dir(source).map_err(|e| Error::io(source, e))? {
            let path = entry.map_err(|e| Error::io(source, e))?.path();
            if path.extension().is_some_and(|e| e == "wav") {
                names.push(path.file_name().unwrap_or_default().to_string_lossy().into_owned());
            }
        }
        names.sort();
        names.truncate(limit);
        for name in names {
            let path = source.join(&name);
            files.push(Wav { bytes: std::fs::read(&path).map_err(|e| Error::io(&path, e))?, name });
        }
    } else {
        let file = std::fs::File::open(source).map_err(|e| Error::io(source, e))?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let bad = |e: std::io::Error| Error::format(source, format!("not a readable .tar.gz: {e}"));
        for entry in archive.entries().map_err(bad)? {
            if files.len() == limit {
                break;
            }
            let mut entry = entry.map_err(bad)?;
            let path = entry.path().map_err(bad)?.into_owned();
            if entry.header().entry_type().is_file() && path.extension().is_some_and(|e| e == "wav")
            {
                let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).map_err(bad)?;
                files.push(Wav { name, bytes });
            }
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_fsdd_form_only() {
        let name = Name::parse("0_george_49.wav").expect("FSDD");
        assert_eq!(name, Name { digit: 0, speaker: "george".into(), take: 49 });
        assert!(!name.is_test());
        assert_eq!(Name::parse("9_lucas_0").map(|n| n.is_test()), Some(true));
        for bad in ["10_george_1.wav", "a_george_1.wav", "1_george.wav", "1_a_b_2.wav", "1_g_x.wav"]
        {
            assert_eq!(Name::parse(bad), None, "{bad}");
        }
    }
}
