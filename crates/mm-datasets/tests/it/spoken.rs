//! Spoken digit sequences from the real FSDD archive of the shared mirror: each utterance is
//! its recordings with gaps, its transcript says their digits, test speakers are unseen in
//! training, and the whole is seeded.

use std::collections::{BTreeMap, BTreeSet};

use mm_data::audio::decode_audio;
use mm_data::manifest::{Manifest, Split};
use mm_datasets::fsdd::{read_wavs, Name};
use mm_datasets::spoken::{compose, SpokenConfig, WORDS};

#[test]
fn fsdd_recordings_compose_utterances_with_transcripts_and_unseen_test_speakers() {
    let Some(shared) = super::shared_data() else { return };
    let fsdd = shared.join("mirror/fsdd/v1.0.10.tar.gz");
    let dir = std::env::temp_dir().join(format!("mm-data-spoken-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // No gaps, no noise: every utterance is exactly its recordings end to end.
    let plain = SpokenConfig {
        utterances: [12, 4, 6],
        digits: (1, 4),
        gap: (0.0, 0.0),
        snr_db: None,
        ..SpokenConfig::default()
    };
    let summary = compose(&fsdd, &dir.join("plain"), &plain, false).expect("compose");
    assert_eq!(summary.splits, [12, 4, 6]);
    assert_eq!(
        (summary.speakers[1].clone(), summary.speakers[2].clone()),
        (vec!["lucas".to_string()], vec!["nicolas".to_string()])
    );
    assert!(
        !summary.speakers[0].iter().any(|s| s == "lucas" || s == "nicolas")
            && summary.speakers[0].len() == 4,
        "{:?}",
        summary.speakers
    );
    // FSDD's own recordings, decoded from the archive here.
    let originals: BTreeMap<String, Vec<f32>> = read_wavs(&fsdd, None)
        .expect("archive")
        .into_iter()
        .map(|w| {
            let audio = mm_data::audio::decode_audio_bytes(w.bytes, w.name.as_ref());
            (w.name, audio.expect("decode").samples)
        })
        .collect();
    let m = Manifest::read(dir.join("plain/manifest.jsonl")).expect("manifest");
    assert_eq!(m.samples().len(), 22);
    for s in m.samples() {
        let sources = &summary.sources[&s.id];
        // The transcript names the digits of its recordings ({digit}_{speaker}_{take}.wav).
        let names: Vec<Name> =
            sources.iter().map(|n| Name::parse(n).expect("an FSDD name")).collect();
        let words: Vec<&str> = names.iter().map(|n| WORDS[usize::from(n.digit)]).collect();
        assert_eq!(s.text.as_deref(), Some(words.join(" ").as_str()), "{}", s.id);
        assert!((1..=4).contains(&sources.len()));
        // One speaker per utterance, of the utterance's split.
        let who: BTreeSet<&str> = names.iter().map(|n| n.speaker.as_str()).collect();
        assert_eq!(who.len(), 1, "{}: {who:?}", s.id);
        let speaker = who.into_iter().next().expect("one");
        let k = match s.split {
            Split::Train => 0,
            Split::Val => 1,
            Split::Test => 2,
        };
        assert!(
            summary.speakers[k].iter().any(|x| x == speaker),
            "{}: {speaker} in {:?}",
            s.id,
            s.split
        );
        // The WAV is the recordings end to end (16-bit PCM: within one step).
        let audio = decode_audio(m.path(s.audio.as_ref().expect("audio"))).expect("decode");
        let joined: Vec<f32> = sources.iter().flat_map(|n| originals[n].iter().copied()).collect();
        assert_eq!(audio.samples.len(), joined.len(), "{}", s.id);
        assert!(
            audio.samples.iter().zip(&joined).all(|(a, b)| (a - b).abs() <= 1.0 / 32768.0 + 1e-6),
            "{}",
            s.id
        );
    }
    // The default: gaps and noise, seeded (the same files twice), the gaps in the length.
    let noisy = SpokenConfig { utterances: [6, 2, 2], ..SpokenConfig::default() };
    let a = compose(&fsdd, &dir.join("a"), &noisy, false).expect("compose");
    compose(&fsdd, &dir.join("b"), &noisy, false).expect("again");
    for s in Manifest::read(dir.join("a/manifest.jsonl")).expect("manifest").samples() {
        let rel = s.audio.as_ref().expect("audio");
        assert_eq!(
            std::fs::read(dir.join("a").join(rel)).expect("a"),
            std::fs::read(dir.join("b").join(rel)).expect("b"),
            "{}: not seeded",
            s.id
        );
        let n = decode_audio(dir.join("a").join(rel)).expect("decode").samples.len();
        let speech: usize = a.sources[&s.id].iter().map(|x| originals[x].len()).sum();
        let gaps = a.sources[&s.id].len() + 1;
        let (lo, hi) = ((0.05 * 8000.0) as usize * gaps, (0.3 * 8000.0) as usize * gaps + gaps);
        assert!(
            n >= speech + lo && n <= speech + hi,
            "{}: {n} samples for {speech} of speech and {gaps} gaps",
            s.id
        );
    }
    // A speaker FSDD does not have is refused by name.
    let e = compose(
        &fsdd,
        &dir.join("c"),
        &SpokenConfig { test_speakers: vec!["nobody".into()], ..noisy },
        false,
    )
    .expect_err("unknown speaker")
    .to_string();
    assert!(e.contains("nobody") && e.contains("theo"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

/// `[data.transcript]` turns each utterance's text into character targets a loader batches
/// (padded, with lengths), which decode back to the transcript; a transcript with a character
/// outside the alphabet stops preparation with the sample named; FSDD's words as a synthesis
/// data set have every speaker in every split.
#[test]
fn transcripts_become_character_targets_and_words_keep_every_speaker() {
    use mm_data::config::{AudioConfig, DataConfig};
    use mm_data::loader::{Loader, LoaderConfig};
    use mm_data::transcript::{Alphabet, TranscriptConfig};
    use std::sync::Arc;

    let Some(shared) = super::shared_data() else { return };
    let fsdd = shared.join("mirror/fsdd/v1.0.10.tar.gz");
    let dir = std::env::temp_dir().join(format!("mm-data-transcripts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    compose(
        &fsdd,
        &dir.join("spoken"),
        &SpokenConfig { utterances: [6, 2, 2], ..SpokenConfig::default() },
        false,
    )
    .expect("compose");
    let mut config = DataConfig::new(dir.join("spoken/manifest.jsonl"));
    config.audio = Some(AudioConfig::default());
    config.transcript = Some(TranscriptConfig::default());
    let prepared = config.prepare(0).expect("prepare");
    assert_eq!(prepared.pipeline.modalities(), ["audio"], "the text is a target, not an input");
    let alphabet: Alphabet = (**prepared.pipeline.transcript.as_ref().expect("alphabet")).clone();
    let manifest = Arc::new(prepared.manifest);
    let loader = Loader::new(
        Arc::clone(&manifest),
        Split::Train,
        Arc::new(prepared.pipeline),
        LoaderConfig { batch_size: 6, ..LoaderConfig::evaluation() },
    )
    .expect("loader");
    let batch = loader.epoch(0).next().expect("a batch").expect("loads");
    let (ids, lengths) = batch.transcript.as_ref().expect("transcripts");
    let width = ids.size()[1] as usize;
    let ids: Vec<i64> = Vec::try_from(ids.view([-1])).expect("ids");
    let lengths: Vec<i64> = Vec::try_from(lengths).expect("lengths");
    for (j, id) in batch.ids.iter().enumerate() {
        let truth = manifest
            .samples()
            .iter()
            .find(|s| &s.id == id)
            .and_then(|s| s.text.clone())
            .expect("text");
        let row = &ids[j * width..(j + 1) * width];
        assert_eq!(alphabet.decode(&row[..lengths[j] as usize]), truth);
        assert!(row[lengths[j] as usize..].iter().all(|v| *v == 0), "padding is the blank");
    }
    // A transcript outside the alphabet, and text both an input and a target.
    let mut text = std::fs::read_to_string(dir.join("spoken/manifest.jsonl")).expect("manifest");
    text =
        text.replacen("\"split\":\"train\",\"text\":\"", "\"split\":\"train\",\"text\":\"ünf ", 1);
    assert!(text.contains("ünf"), "the manifest layout changed: {}", &text[..200]);
    std::fs::write(dir.join("spoken/bad.jsonl"), &text).expect("write");
    let mut bad = config.clone();
    bad.manifest = dir.join("spoken/bad.jsonl");
    let err = bad.prepare(0).expect_err("not in the alphabet").to_string();
    assert!(
        err.contains("sample tr0000") && err.contains("'ü'") && err.contains("1 transcripts"),
        "{err}"
    );
    let mut both = config.clone();
    both.text = Some(Default::default());
    assert!(both.validate().expect_err("both").to_string().contains("not both"));
    // Words for synthesis: every recording once, the speaker its label, all speakers in every split.
    let words = mm_datasets::spoken::words(&fsdd, &dir.join("words"), false).expect("words");
    assert_eq!(words.splits, [2400, 300, 300]);
    let m = Manifest::read(dir.join("words/manifest.jsonl")).expect("manifest");
    for split in [Split::Train, Split::Val, Split::Test] {
        let speakers: BTreeSet<&str> = m.split(split).filter_map(|s| s.label.as_deref()).collect();
        assert_eq!(speakers.len(), 6, "{split:?}: {speakers:?}");
    }
    let s = m.samples().iter().find(|s| s.id == "3_theo_7").expect("3_theo_7");
    assert_eq!(
        (s.text.as_deref(), s.label.as_deref(), s.split),
        (Some("three"), Some("theo"), Split::Val)
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
}
