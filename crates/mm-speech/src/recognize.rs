//! Speech recognition with a trained CTC run (`[model.head] type = "ctc"` over
//! `[data.transcript]`): audio files to text, each character and word timed.
//!
//! [`Transcribe::transcribe`] (on a [`Run`]) decodes every file as training read it (the run's log-mel front end and
//! statistics, without its `max_frames` cut, so that nothing of a long file is lost), greedily
//! or by CTC prefix beam search ([`mm_train::ctc`]); the characters are then timed by aligning
//! them to the model's output ([`mm_train::ctc::align`]). A step of the output covers
//! `time_stride × hop_length` samples of the input.
//!
//! ```no_run
//! use mm_speech::recognize::Transcribe;
//! use mm_train::run::Run;
//!
//! let run = Run::open("runs/recognize".as_ref(), None, tch::Device::Cpu)?;
//! for t in run.transcribe(&["clip.wav".into()], 8)? {
//!     println!("{}: {} ({} words)", t.file.display(), t.text, t.words.len());
//! }
//! # Ok::<(), mm_train::Error>(())
//! ```

use std::path::PathBuf;
use std::time::Instant;

use mm_data::loader::collate;
use mm_data::manifest::{Manifest, Sample};
use mm_data::transcript::Alphabet;
use serde::Serialize;

use mm_data::pipeline::Pipeline;
use mm_train::ctc::decode_batch;
use mm_train::model::Output;
use mm_train::run::Run;
use mm_train::{Error, Result};

/// A timed piece of a transcript: one character or one word.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timed {
    /// The character or word.
    pub text: String,
    /// Start, in seconds from the start of the file.
    pub start: f64,
    /// End, in seconds.
    pub end: f64,
}

/// One file's transcript.
#[derive(Debug, Clone, Serialize)]
pub struct Transcription {
    /// The file.
    pub file: PathBuf,
    /// The text.
    pub text: String,
    /// Log-probability of the text: of its best path (greedy) or of all its alignments (beam).
    pub log_prob: f64,
    /// Every character but the spaces, timed.
    pub tokens: Vec<Timed>,
    /// Every word, from its first character's start to its last one's end.
    pub words: Vec<Timed>,
    /// Length of the audio, in seconds.
    pub seconds: f64,
    /// Decoding: `greedy`, or `beam` with its width.
    pub decoder: String,
    /// Milliseconds spent decoding the file, running the model and searching.
    pub milliseconds: f64,
}

/// Speech recognition with a trained run.
pub trait Transcribe {
    /// Transcribes audio files with a CTC run: greedy decoding with `beam` 0 or 1, prefix beam
    /// search of that width otherwise. A file that cannot be read or decoded is an error
    /// naming it; a run whose head is not `ctc` is refused.
    fn transcribe(&self, files: &[PathBuf], beam: usize) -> Result<Vec<Transcription>>;
}

/// The pipeline transcription reads audio with: the run's, without its `max_frames` cut (so
/// that nothing of a long file is lost) and without transcripts (a file to transcribe has none).
/// A run whose head is not `ctc`, or that reads no audio, is refused.
pub fn audio_pipeline(run: &Run) -> Result<Pipeline> {
    if run.model.ctc_stride().is_none() {
        return Err(Error::Config(format!(
            "{}: not a speech recognition run (its head is not `ctc`)",
            run.dir.display()
        )));
    }
    let mut pipeline = (*run.pipeline).clone();
    pipeline
        .audio
        .as_mut()
        .ok_or_else(|| Error::Config("the run reads no audio".into()))?
        .max_frames = None;
    pipeline.transcript = None;
    Ok(pipeline)
}

/// A transcript without its file: what [`decode`] gives per sample.
#[derive(Debug, Clone, Serialize)]
pub struct Transcript {
    /// The text.
    pub text: String,
    /// Log-probability of the text (see [`Transcription::log_prob`]).
    pub log_prob: f64,
    /// Every character but the spaces, timed.
    pub tokens: Vec<Timed>,
    /// Every word, timed.
    pub words: Vec<Timed>,
    /// Length of the audio, in seconds.
    pub seconds: f64,
}

/// The transcripts of a CTC run's output on a batch (from [`audio_pipeline`]'s items):
/// `frames[i]` is sample `i`'s number of spectrogram frames; greedy decoding with `beam` 0 or 1,
/// prefix beam search of that width otherwise. A server decodes its gathered batches with this.
pub fn decode(
    run: &Run,
    output: &Output,
    frames: &[usize],
    beam: usize,
) -> Result<Vec<Transcript>> {
    let alphabet =
        run.model.alphabet().ok_or_else(|| Error::Config("not a speech recognition run".into()))?;
    let audio = run
        .pipeline
        .audio
        .as_ref()
        .ok_or_else(|| Error::Config("the run reads no audio".into()))?;
    let (hop, rate) =
        (audio.mel.config().hop_length as f64, f64::from(audio.mel.config().sample_rate));
    let step_seconds = run.model.ctc_stride().unwrap_or(1) as f64 * hop / rate;
    let (log_probs, lengths) = output
        .sequence
        .as_ref()
        .ok_or_else(|| Error::Config("the model's output has no sequence".into()))?;
    let decoded = decode_batch(log_probs, lengths, Alphabet::BLANK, beam);
    Ok(decoded
        .into_iter()
        .zip(frames)
        .map(|(d, f)| {
            // Greedy results carry their frames, and decode_batch aligned beam-search ones.
            let seconds = f.saturating_sub(1) as f64 * hop / rate;
            let (tokens, words) = timings(alphabet, &d.labels, &d.frames, step_seconds, seconds);
            Transcript {
                text: alphabet.decode(&d.labels),
                log_prob: d.log_prob,
                tokens,
                words,
                seconds,
            }
        })
        .collect())
}

impl Transcribe for Run {
    fn transcribe(&self, files: &[PathBuf], beam: usize) -> Result<Vec<Transcription>> {
        let pipeline = audio_pipeline(self)?;
        let device = self.vs.device();
        let mut out = Vec::with_capacity(files.len());
        for file in files {
            let started = Instant::now();
            let absolute = std::path::absolute(file).map_err(|e| Error::file(file, e))?;
            let (Some(folder), Some(name)) = (absolute.parent(), absolute.file_name()) else {
                return Err(Error::Data(format!("{}: not a file", file.display())));
            };
            // A file without a single sample has nothing to transcribe (the model would still
            // "hear" its padding).
            if mm_data::audio::decode_audio(&absolute).map_err(Error::from)?.samples.is_empty() {
                return Err(Error::Data(format!(
                    "{}: no audio (0 samples): nothing to transcribe",
                    file.display()
                )));
            }
            let mut manifest = Manifest::new(folder);
            manifest
                .push(Sample::new(file.display().to_string()).with_audio(name))
                .map_err(Error::from)?;
            // The error names the file: it is the sample's id.
            let item = pipeline.load(&manifest, 0, 0, false).map_err(Error::from)?;
            let frames = item.audio.as_ref().map_or(0, |a| a.nrows());
            let batch = collate(&[item], &pipeline).to_device(device);
            let output = self.forward_batch(&batch)?;
            let t = decode(self, &output, &[frames], beam)?.remove(0);
            out.push(Transcription {
                file: file.clone(),
                text: t.text,
                log_prob: t.log_prob,
                tokens: t.tokens,
                words: t.words,
                seconds: t.seconds,
                decoder: if beam <= 1 { "greedy".to_string() } else { format!("beam {beam}") },
                milliseconds: started.elapsed().as_secs_f64() * 1e3,
            });
        }
        Ok(out)
    }
}

/// Characters and words with their times: output step `k` spans `[k, k + 1) × step` seconds,
/// clamped to the audio's length.
fn timings(
    alphabet: &Alphabet,
    labels: &[usize],
    frames: &[(usize, usize)],
    step: f64,
    seconds: f64,
) -> (Vec<Timed>, Vec<Timed>) {
    let (mut tokens, mut words) = (Vec::new(), Vec::new());
    let mut word: Option<Timed> = None;
    for (label, (first, last)) in labels.iter().zip(frames) {
        let Some(c) = alphabet.char(*label) else { continue };
        let (start, end) =
            ((*first as f64 * step).min(seconds), ((*last + 1) as f64 * step).min(seconds));
        if c == ' ' {
            words.extend(word.take());
            continue;
        }
        tokens.push(Timed { text: c.to_string(), start, end });
        match &mut word {
            Some(w) => {
                w.text.push(c);
                w.end = end;
            }
            None => word = Some(Timed { text: c.to_string(), start, end }),
        }
    }
    words.extend(word);
    (tokens, words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_and_words_are_timed_by_their_steps() {
        let a = Alphabet::new("abc ").expect("alphabet");
        // "ab c": a at steps 0-1, b at 3, space at 5, c at 7-9; 40 ms steps, 0.36 s of audio.
        let (tokens, words) =
            timings(&a, &[1, 2, 4, 3], &[(0, 1), (3, 3), (5, 5), (7, 9)], 0.04, 0.36);
        assert_eq!(tokens.iter().map(|t| t.text.as_str()).collect::<String>(), "abc");
        assert_eq!(words.len(), 2);
        assert_eq!(words[0].text, "ab");
        assert!((words[0].start - 0.0).abs() < 1e-12 && (words[0].end - 0.16).abs() < 1e-12);
        assert!(
            (words[1].start - 0.28).abs() < 1e-12 && (words[1].end - 0.36).abs() < 1e-12,
            "{:?}",
            words[1]
        );
    }
}
