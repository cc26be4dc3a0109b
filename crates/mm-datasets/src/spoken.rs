//! Spoken digit sequences for speech recognition: utterances made by concatenating Free Spoken
//! Digit Dataset recordings of one speaker with random gaps, under white noise, each with its
//! transcript ("three one four"), as WAV files and a manifest.
//!
//! - **Unseen speakers.** Speakers are split between train, val and test (by default the test
//!   speaker is `nicolas` and the validation speaker `lucas`; the other four train), so the test
//!   measures recognition of voices the model never heard, as speaker-independent recognition
//!   is measured.
//! - **Seeded.** The digits of an utterance, the recording chosen for each, the gaps and the
//!   noise all come from (seed, utterance): the same configuration writes the same files.
//! - **Transcripts** are in the manifest's `text` field, digit words separated by single
//!   spaces; `spoken.json` beside it holds the configuration, the speakers of each split and
//!   the FSDD recordings each utterance is made of.
//!
//! The folder is written whole or not at all, like every data set mm writes.
//!
//! ```no_run
//! use mm_datasets::spoken::{compose, SpokenConfig};
//! let summary = compose("fsdd/v1.0.10.tar.gz".as_ref(), "data/spoken".as_ref(), &SpokenConfig::default(), false)?;
//! println!("{:?} utterances (train, val, test)", summary.splits);
//! # Ok::<(), mm_data::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use mm_data::audio::{encode_wav, Audio};
use mm_data::manifest::{Manifest, Sample, Split};
use mm_data::rng::Rng;
use mm_data::{Error, Result};

use crate::avdigits::degrade_audio;
use crate::fsdd::{read_recordings, Recording};

/// The digit words, by digit.
pub const WORDS: [&str; 10] =
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];

/// How to compose the utterances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpokenConfig {
    /// Utterances in train, val and test.
    pub utterances: [usize; 3],
    /// Digits per utterance, at least and at most.
    pub digits: (usize, usize),
    /// Silence before, between and after the digits, in seconds (drawn uniformly).
    pub gap: (f64, f64),
    /// White noise over the whole utterance at a signal-to-noise ratio drawn from this range
    /// (dB); `None`: clean.
    pub snr_db: Option<(f64, f64)>,
    /// The validation speakers.
    pub val_speakers: Vec<String>,
    /// The test speakers.
    pub test_speakers: Vec<String>,
    /// Seed of everything drawn.
    pub seed: u64,
}

impl Default for SpokenConfig {
    fn default() -> Self {
        SpokenConfig {
            utterances: [2000, 200, 400],
            digits: (1, 5),
            gap: (0.05, 0.3),
            snr_db: Some((10.0, 30.0)),
            val_speakers: vec!["lucas".into()],
            test_speakers: vec!["nicolas".into()],
            seed: 0,
        }
    }
}

/// What [`compose`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpokenSummary {
    /// The configuration.
    pub config: SpokenConfig,
    /// Utterances in train, val and test.
    pub splits: [usize; 3],
    /// The speakers of each split.
    pub speakers: [Vec<String>; 3],
    /// Seconds of audio in each split.
    pub seconds: [f64; 3],
    /// The FSDD recordings each utterance is made of, in order, by utterance id.
    pub sources: BTreeMap<String, Vec<String>>,
}

/// Composes the utterances from FSDD's archive (or folder of WAVs) `fsdd` into `out` (see the
/// module documentation). An existing `out` is replaced only with `force`, and only if it holds
/// an earlier `spoken.json`.
pub fn compose(
    fsdd: &Path,
    out: &Path,
    config: &SpokenConfig,
    force: bool,
) -> Result<SpokenSummary> {
    let (lo, hi) = config.digits;
    if lo == 0 || hi < lo || hi > 50 {
        return Err(Error::Config(format!(
            "spoken: digits ({lo}, {hi}): at least 1, at most 50, the first not above the second"
        )));
    }
    let gaps_ok = config.gap.0.is_finite()
        && config.gap.0 >= 0.0
        && config.gap.1 >= config.gap.0
        && config.gap.1 <= 10.0;
    let snr_ok = config.snr_db.is_none_or(|(a, b)| a.is_finite() && b.is_finite() && b >= a);
    if !gaps_ok || !snr_ok {
        return Err(Error::Config(format!(
            "spoken: gap {:?} (seconds, 0 to 10, in order) or snr_db {:?} (in order)",
            config.gap, config.snr_db
        )));
    }
    let recordings = read_recordings(fsdd)?;
    let rate = recordings[0].audio.sample_rate;
    if let Some(r) = recordings.iter().find(|r| r.audio.sample_rate != rate) {
        return Err(Error::decode(
            fsdd.join(&r.name),
            format!("{} Hz where the others are {rate} Hz", r.audio.sample_rate),
        ));
    }
    // Recordings by split (by speaker), then by (speaker, digit).
    let split_of = |speaker: &str| {
        if config.test_speakers.iter().any(|s| s == speaker) {
            Split::Test
        } else if config.val_speakers.iter().any(|s| s == speaker) {
            Split::Val
        } else {
            Split::Train
        }
    };
    // Keyed by the split's index (train, val, test).
    let mut pools: BTreeMap<(usize, String, u8), Vec<usize>> = BTreeMap::new();
    for (i, r) in recordings.iter().enumerate() {
        pools
            .entry((split_of(&r.speaker) as usize, r.speaker.clone(), r.digit))
            .or_default()
            .push(i);
    }
    let mut speakers: [Vec<String>; 3] = Default::default();
    for (split, speaker, _) in pools.keys() {
        let list = &mut speakers[*split];
        if !list.contains(speaker) {
            list.push(speaker.clone());
        }
    }
    for (k, named) in [(1, &config.val_speakers), (2, &config.test_speakers)] {
        if let Some(missing) = named.iter().find(|s| !speakers[k].contains(s)) {
            return Err(Error::Config(format!(
                "spoken: speaker {missing:?} has no recording in {} (speakers: {})",
                fsdd.display(),
                all_speakers(&recordings).join(", ")
            )));
        }
    }
    for (k, n) in config.utterances.iter().enumerate() {
        if *n > 0 && speakers[k].is_empty() {
            return Err(Error::Config(format!(
                "spoken: {n} utterances asked for in {} but no speaker is left for it",
                ["train", "val", "test"][k]
            )));
        }
    }
    // Every utterance: its split, speaker, digits and recordings, from (seed, utterance).
    struct Planned {
        id: String,
        split: Split,
        digits: Vec<u8>,
        takes: Vec<usize>,
        number: u64,
    }
    let mut plan = Vec::new();
    for (k, split) in [Split::Train, Split::Val, Split::Test].into_iter().enumerate() {
        for u in 0..config.utterances[k] {
            let number = plan.len() as u64;
            let mut rng = Rng::for_sample(config.seed, 0, number, 11);
            let speaker = &speakers[k][rng.below(speakers[k].len() as u64) as usize];
            let n = lo + rng.below((hi - lo + 1) as u64) as usize;
            let mut digits = Vec::with_capacity(n);
            let mut takes = Vec::with_capacity(n);
            for _ in 0..n {
                // A digit this speaker recorded (all of FSDD's speakers have all ten).
                let digit = rng.below(10) as u8;
                let pool = pools.get(&(k, speaker.clone(), digit)).ok_or_else(|| {
                    Error::Config(format!(
                        "spoken: {speaker} never says {digit} in {}",
                        fsdd.display()
                    ))
                })?;
                digits.push(digit);
                takes.push(pool[rng.below(pool.len() as u64) as usize]);
            }
            plan.push(Planned {
                id: format!("{}{u:05}", &split.as_str()[..2]),
                split,
                digits,
                takes,
                number,
            });
        }
    }
    mm_data::fs::write_dir_atomic(out, "spoken.json", force, |root| {
        std::fs::create_dir_all(root.join("audio"))
            .map_err(|e| Error::io(root.join("audio"), e))?;
        let seconds: Vec<f64> = plan
            .par_iter()
            .map(|p| -> Result<f64> {
                let audio = render(
                    p.takes.iter().map(|&t| &recordings[t]),
                    rate,
                    config,
                    &mut Rng::for_sample(config.seed, 0, p.number, 12),
                );
                let path = root.join(format!("audio/{}.wav", p.id));
                std::fs::write(&path, encode_wav(&audio)).map_err(|e| Error::io(&path, e))?;
                Ok(audio.samples.len() as f64 / f64::from(rate))
            })
            .collect::<Result<_>>()?;
        let mut manifest = Manifest::new(root);
        for p in &plan {
            let words: Vec<&str> = p.digits.iter().map(|d| WORDS[*d as usize]).collect();
            manifest.push(
                Sample::new(p.id.clone())
                    .with_split(p.split)
                    .with_audio(format!("audio/{}.wav", p.id))
                    .with_text(words.join(" ")),
            )?;
        }
        manifest.write(root.join("manifest.jsonl"))?;
        let mut totals = [0.0; 3];
        for (p, s) in plan.iter().zip(&seconds) {
            totals[p.split as usize] += s;
        }
        let count = |s: Split| plan.iter().filter(|p| p.split == s).count();
        let sources = plan
            .iter()
            .map(|p| (p.id.clone(), p.takes.iter().map(|&t| recordings[t].name.clone()).collect()))
            .collect();
        let summary = SpokenSummary {
            config: config.clone(),
            splits: [count(Split::Train), count(Split::Val), count(Split::Test)],
            speakers: speakers.clone(),
            seconds: totals,
            sources,
        };
        let json = serde_json::to_vec_pretty(&summary).map_err(|e| Error::Config(e.to_string()))?;
        mm_data::fs::write_atomic(&root.join("spoken.json"), &json)?;
        Ok(summary)
    })
}

/// What [`words`] wrote: recordings per split and the speakers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WordsSummary {
    /// Recordings in train, val and test.
    pub splits: [usize; 3],
    /// Every speaker (in every split).
    pub speakers: Vec<String>,
}

/// FSDD's recordings one word each, for speech synthesis: every recording of `fsdd` (archive or
/// folder) as a WAV in `out/audio`, and a manifest whose `text` is the word ("three") and whose
/// `label` is the speaker. Every speaker is in every split (a synthesiser conditioned on the
/// speaker must have heard them): FSDD's conventional test takes (0-4) are the test split,
/// takes 5-9 validation, the rest training. Written whole or not at all (`words.json` marks it).
pub fn words(fsdd: &Path, out: &Path, force: bool) -> Result<WordsSummary> {
    let recordings = read_recordings(fsdd)?;
    mm_data::fs::write_dir_atomic(out, "words.json", force, |root| {
        std::fs::create_dir_all(root.join("audio"))
            .map_err(|e| Error::io(root.join("audio"), e))?;
        recordings.par_iter().try_for_each(|r| -> Result<()> {
            let path = root.join("audio").join(&r.name);
            std::fs::write(&path, encode_wav(&r.audio)).map_err(|e| Error::io(&path, e))
        })?;
        let mut manifest = Manifest::new(root);
        let mut splits = [0usize; 3];
        for r in &recordings {
            let split = if r.test {
                Split::Test
            } else if r.take < 10 {
                Split::Val
            } else {
                Split::Train
            };
            splits[split as usize] += 1;
            let id = r.name.trim_end_matches(".wav").to_string();
            let sample = Sample::new(id)
                .with_split(split)
                .with_audio(format!("audio/{}", r.name))
                .with_text(WORDS[r.digit as usize])
                .with_label(r.speaker.clone());
            manifest.push(sample)?;
        }
        manifest.write(root.join("manifest.jsonl"))?;
        let summary = WordsSummary { splits, speakers: all_speakers(&recordings) };
        let json = serde_json::to_vec_pretty(&summary).map_err(|e| Error::Config(e.to_string()))?;
        mm_data::fs::write_atomic(&root.join("words.json"), &json)?;
        Ok(summary)
    })
}

fn all_speakers(recordings: &[Recording]) -> Vec<String> {
    let mut s: Vec<String> = recordings.iter().map(|r| r.speaker.clone()).collect();
    s.sort();
    s.dedup();
    s
}

/// The recordings in order with a drawn gap of silence before, between and after them, then
/// the noise over the whole.
fn render<'a>(
    takes: impl Iterator<Item = &'a Recording>,
    rate: u32,
    config: &SpokenConfig,
    rng: &mut Rng,
) -> Audio {
    let gap = |rng: &mut Rng| {
        vec![0.0f32; (rng.uniform(config.gap.0, config.gap.1) * f64::from(rate)).round() as usize]
    };
    let mut samples = gap(rng);
    for r in takes {
        samples.extend_from_slice(&r.audio.samples);
        samples.extend(gap(rng));
    }
    let audio = Audio { sample_rate: rate, samples };
    match config.snr_db {
        Some((a, b)) => degrade_audio(&audio, rng.uniform(a, b), rng),
        None => audio,
    }
}
