//! FSDD's recordings decoded: mm-fetch's one reader ([`mm_fetch::fsdd`], re-exported here)
//! gives the files and parses their names; this module decodes them in parallel, refusing any
//! `.wav` file whose name is not FSDD's.

use std::path::Path;

use mm_data::audio::{decode_audio_bytes, Audio};
use mm_data::{Error, Result};
use rayon::prelude::*;

pub use mm_fetch::fsdd::{read_wavs, Name, Wav, NAME_FORM};

/// An FSDD recording: its file name, digit, speaker, take, whether it is in the conventional
/// test split (takes 0-4), and its samples.
pub(crate) struct Recording {
    pub(crate) name: String,
    pub(crate) digit: u8,
    pub(crate) speaker: String,
    pub(crate) take: u32,
    pub(crate) test: bool,
    pub(crate) audio: Audio,
}

/// Reads and decodes FSDD's recordings from its release archive (`.tar.gz`, read in memory:
/// nothing is unpacked) or from a folder of WAV files, sorted by name.
pub(crate) fn read_recordings(source: &Path) -> Result<Vec<Recording>> {
    let files = read_wavs(source, None).map_err(crate::from_fetch)?;
    let recordings: Vec<Recording> = files
        .into_par_iter()
        .map(|Wav { name, bytes }| {
            let parsed = Name::parse(&name).ok_or_else(|| {
                Error::decode(source.join(&name), format!("not an FSDD name ({NAME_FORM})"))
            })?;
            let audio = decode_audio_bytes(bytes, &source.join(&name))?;
            Ok(Recording {
                test: parsed.is_test(),
                digit: parsed.digit,
                speaker: parsed.speaker,
                take: parsed.take,
                name,
                audio,
            })
        })
        .collect::<Result<_>>()?;
    if recordings.is_empty() {
        return Err(Error::decode(source, format!("no FSDD recordings ({NAME_FORM}) in it")));
    }
    Ok(recordings)
}
