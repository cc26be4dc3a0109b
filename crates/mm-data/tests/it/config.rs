//! `DataConfig`: refusals before any data is read, and a pipeline prepared on the training
//! split that a run folder's saved vocabulary and statistics restore exactly.

use mm_data::config::DataConfig;
use mm_data::synth::{generate, SynthConfig};

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
        ("manifest = \"m.jsonl\"\nmodality_dropout = 1.0\n[features]\ndim = 3", "data.modality_dropout"),
        ("manifest = \"m.jsonl\"\nclasses = [\"a\", \"b\", \"a\"]\n[features]\ndim = 3", "\"a\" appears twice"),
    ];
    for (text, expected) in cases {
        let err = parse(text).validate().expect_err(text).to_string();
        assert!(err.contains(expected), "{text}: {err}");
    }
    let err = toml::from_str::<DataConfig>("manifest = \"m.jsonl\"\n[image]\nsise = 32").expect_err("unknown key").to_string();
    assert!(err.contains("unknown field `sise`"), "{err}");
}

#[test]
fn a_prepared_pipeline_is_restored_exactly_from_what_a_run_saves() {
    let dir = std::env::temp_dir().join(format!("mm-data-config-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let synth = SynthConfig { samples: 60, image_size: 24, duration: 0.3, corrupt_images: 0.05, seed: 4, ..SynthConfig::default() };
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
    if let Some(mm_data::pipeline::TextEncoder::Words { vocab, .. }) = prepared.pipeline.text.as_ref().map(|t| &t.encoder) {
        assert!(vocab.len() > 2 && vocab.len() < 200, "min_freq 2 keeps the frequent words: {}", vocab.len());
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
