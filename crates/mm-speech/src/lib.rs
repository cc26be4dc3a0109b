//! Speech applications on top of mm-train: speech recognition with a trained CTC run, and
//! speech synthesis.
//!
//! - [`recognize`]: [`recognize::Transcribe`] turns audio files into text with a run whose head
//!   is `ctc` (`mm train` with `configs/speech/recognize.toml`), greedily or by prefix beam
//!   search, every character and word timed by forced alignment;
//! - [`tts`]: a duration-based synthesiser (text and speaker to a log-mel spectrogram, then
//!   Griffin-Lim), whose durations come from a recogniser's forced alignment, trained in
//!   mm-train's [`mm_train::train::Trainer`] (so it resumes, logs and shows progress like any
//!   run), [`tts::Synthesizer`], and [`tts::evaluate`], which lets a recogniser listen to the
//!   synthesised words.
//!
//! The CTC head itself (its loss, decoding for validation, word and character error rates) is a
//! head of mm-train ([`mm_train::heads::ctc`], [`mm_train::ctc`]): a recogniser trains, resumes
//! and evaluates in mm-train's loop like any other model. Errors are mm-train's
//! ([`mm_train::Error`]): what goes wrong here is configuration, data or checkpoints.
//!
//! ```no_run
//! use mm_speech::recognize::Transcribe;
//! use mm_train::run::Run;
//!
//! let run = Run::open("runs/recognize".as_ref(), None, tch::Device::Cpu)?;
//! let heard = run.transcribe(&["clip.wav".into()], 8)?;
//! println!("{}", heard[0].text);
//! # Ok::<(), mm_train::Error>(())
//! ```
//!
//! Architecture invariant: mm-speech builds on mm-train (and the layers below it) and is used
//! only by the binary; nothing in mm-train knows about it.

pub mod recognize;
pub mod tts;
