//! `DataConfig`: refusals before any data is read, and a pipeline prepared on the training
//! split that a run folder's saved vocabulary and statistics restore exactly.

use mm_data::config::DataConfig;
use mm_datasets::synth::{generate, SynthConfig};

fn parse(text: &str) -> DataConfig {
    toml::from_str(text).expect("a valid [data] table")
}

#[test]
fn impossible_data_configurations_are_refused_with_their_key() {
    let cases = [
        ("manifest = \"m.jsonl\"", "no modality"),
        ("manifest = \"m.jsonl\"\n[image]\nsize = 0", "data.image.size"),
        ("manifest = \"m.jsonl\"\n[frames]\nsize = [16, 9000]", "data.frames.size"),
        ("manifest = \"m.jsonl\"\n[text]\nmax_tokens = 0", "data.text.max_tokens"),
        (
            "manifest = \"m.jsonl\"\nmodality_dropout = 1.0\n[features]\ndim = 3",
            "data.modality_dropout",
        ),
        (
            "manifest = \"m.jsonl\"\nclasses = [\"a\", \"b\", \"a\"]\n[features]\ndim = 3",
            "\"a\" appears twice",
        ),
    ];
    for (text, expected) in cases {
        let err = parse(text).validate().expect_err(text).to_string();
        assert!(err.contains(expected), "{text}: {err}");
    }
    let err = toml::from_str::<DataConfig>("manifest = \"m.jsonl\"\n[image]\nsise = 32")
        .expect_err("unknown key")
        .to_string();
    assert!(err.contains("unknown field `sise`"), "{err}");
}

#[test]
fn a_prepared_pipeline_is_restored_exactly_from_what_a_run_saves() {
    let dir = std::env::temp_dir().join(format!("mm-data-config-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let synth = SynthConfig {
        samples: 60,
        image_size: 24,
        duration: 0.3,
        corrupt_images: 0.05,
        seed: 4,
        ..SynthConfig::default()
    };
    let summary = generate(&dir.join("synth"), &synth, false).expect("synthetic data");
    let mut config = parse(&format!(
        "manifest = {:?}\n[image]\nsize = 16\n[audio]\nmel = {{ n_mels = 20 }}\n[text]\nmax_tokens = 12\nmin_freq = 2",
        dir.join("synth/manifest.jsonl")
    ));
    let prepared = config.prepare(7).expect("prepare");
    // Classes come from the labels, sorted; the corrupt images are cleaned out and reported.
    assert_eq!(config.classes, ["curved-high", "curved-low", "straight-high", "straight-low"]);
    let report = prepared.report.as_ref().expect("cleaned");
    assert_eq!(report.dropped, summary.corrupt_images.len(), "{}", report.summary());
    assert_eq!(prepared.manifest.samples().len(), 60 - summary.corrupt_images.len());
    // Save what a run saves, restore, and compare the items the two pipelines make.
    let saved = dir.join("run-data");
    prepared.pipeline.save_statistics(&saved).expect("statistics");
    if let Some(mm_data::pipeline::TextEncoder::Words { vocab, .. }) =
        prepared.pipeline.text.as_ref().map(|t| &t.encoder)
    {
        assert!(
            vocab.len() > 2 && vocab.len() < 200,
            "min_freq 2 keeps the frequent words: {}",
            vocab.len()
        );
        vocab.save(saved.join("vocab.txt")).expect("vocabulary");
    }
    let restored = config.restore(7, &saved).expect("restore");
    for index in 0..prepared.manifest.samples().len() {
        let a = prepared.pipeline.load(&prepared.manifest, index, 0, false).expect("item");
        let b = restored.load(&prepared.manifest, index, 0, false).expect("item");
        assert_eq!(a, b, "sample {index}");
    }
    // A run folder without its statistics is an error naming the file.
    let err = config.restore(7, &dir).expect_err("no statistics").to_string();
    assert!(err.contains("vocab.txt") || err.contains("image_stats.json"), "{err}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// `[data.audio.augment.background]`: noise files mixed into training items only, at the SNR
/// asked; an evaluation pipeline restored from a run needs no noise files.
#[test]
fn background_noise_reaches_training_items_only() {
    let dir = std::env::temp_dir().join(format!("mm-data-noise-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let synth = SynthConfig {
        samples: 24,
        image_size: 16,
        duration: 0.3,
        seed: 2,
        ..SynthConfig::default()
    };
    generate(&dir.join("synth"), &synth, false).expect("synthetic data");
    // Two noise recordings at another rate (resampled on loading) and a silent one.
    let noise = dir.join("noise");
    std::fs::create_dir_all(&noise).expect("noise folder");
    for (name, f) in [("hum.wav", 0.031f32), ("hiss.wav", 0.43)] {
        let samples = (0..22050)
            .map(|i| ((i as f32 * f).sin() * 0.2) + (((i * 7919) % 13) as f32 - 6.0) / 60.0)
            .collect();
        mm_data::audio::write_wav(
            noise.join(name),
            &mm_data::audio::Audio { sample_rate: 22050, samples },
        )
        .expect("wav");
    }
    mm_data::audio::write_wav(
        noise.join("silence.wav"),
        &mm_data::audio::Audio { sample_rate: 22050, samples: vec![0.0; 100] },
    )
    .expect("wav");
    std::fs::write(noise.join("notes.txt"), "not audio").expect("file");
    let text = |background: &str| {
        format!(
            "manifest = {:?}\n[audio]\nmel = {{ n_mels = 20 }}\n{background}",
            dir.join("synth/manifest.jsonl")
        )
    };
    let mut plain = parse(&text(""));
    let mut noisy = parse(&text(&format!(
        "[audio.augment.background]\nsource = {noise:?}\np = 1.0\nsnr_db = [0, 0]"
    )));
    let (a, b) = (plain.prepare(9).expect("prepare"), noisy.prepare(9).expect("prepare"));
    let bank = b.pipeline.audio.as_ref().and_then(|s| s.background.clone()).expect("a noise bank");
    assert_eq!(bank.len(), 2);
    assert_eq!(bank.left_out.len(), 1, "the silent clip, reported: {bank:?}");
    assert_eq!(bank.sample_rate(), 16000);
    let mut changed = 0;
    for index in 0..a.manifest.samples().len() {
        let item = |p: &mm_data::config::Prepared, train| {
            p.pipeline.load(&p.manifest, index, 0, train).expect("item").audio.expect("audio")
        };
        assert_eq!(item(&a, false), item(&b, false), "evaluation items never get noise ({index})");
        changed += usize::from(item(&a, true) != item(&b, true));
        assert_eq!(item(&b, true), item(&b, true), "the same noise for the same sample and epoch");
    }
    assert_eq!(changed, a.manifest.samples().len(), "p = 1: every training item gets noise");
    // A manifest as the source (what `cargo xtask fetch-data esc50` writes): its audio files.
    let mut from_manifest = parse(&text(&format!(
        "[audio.augment.background]\nsource = {:?}\nmax_seconds = 1.0",
        dir.join("synth/manifest.jsonl")
    )));
    let prepared = from_manifest.prepare(9).expect("prepare");
    let bank =
        prepared.pipeline.audio.as_ref().and_then(|s| s.background.clone()).expect("a noise bank");
    // 0.3 s clips and a 1 s budget: four clips held, the rest reported as past the budget.
    assert_eq!((bank.len(), bank.left_out.len()), (4, 20), "{bank:?}");
    // A run restored for evaluation loads no noise, so the noise files may be gone.
    let saved = dir.join("run-data");
    b.pipeline.save_statistics(&saved).expect("statistics");
    std::fs::remove_dir_all(&noise).expect("remove the noise");
    let restored = noisy.restore(9, &saved).expect("restore without the noise files");
    assert!(restored.audio.as_ref().is_some_and(|s| s.background.is_none()));
    let err = noisy.prepare(9).expect_err("training needs the noise").to_string();
    assert!(err.contains("noise"), "{err}");
    let err = parse(&text(&format!("[audio.augment.background]\nsource = {noise:?}\np = 2")))
        .validate()
        .expect_err("p")
        .to_string();
    assert!(err.contains("data.audio.augment.background.p"), "{err}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}
