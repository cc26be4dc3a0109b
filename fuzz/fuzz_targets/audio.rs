//! Audio decoding through mm-data's wrapper, then what a decoded clip goes through next:
//! resampling and a log-mel spectrogram.
#![no_main]
use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mm_data::mel::{LogMel, MelConfig};

fuzz_target!(|data: &[u8]| {
    static MEL: OnceLock<LogMel> = OnceLock::new();
    let hint = match data.first().map(|b| b % 4) {
        Some(0) => "fuzz.wav",
        Some(1) => "fuzz.flac",
        Some(2) => "fuzz.mp3",
        _ => "fuzz.ogg",
    };
    if let Ok(audio) = mm_data::audio::decode_audio_bytes(data.to_vec(), Path::new(hint)) {
        let samples: Vec<f32> = audio.samples.iter().take(16_000 * 4).copied().collect();
        let resampled = mm_data::audio::resample(&samples, audio.sample_rate, 16_000);
        let mel = MEL.get_or_init(|| LogMel::new(&MelConfig::default()).expect("default mel"));
        let _ = mel.compute(&resampled);
    }
});
