//! Integration tests of mm-speech (one target for the crate, to keep link time down). The
//! whole path on real recordings (recognise, align, train a synthesiser, synthesise, evaluate)
//! is tested through the `mm` binary (`mm-cli`'s `speech_recipes_...` test); here the crate's
//! own seams.

use std::path::Path;

use mm_speech::tts::{mel_distance, TtsConfig};

fn recipe() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/speech/synthesize.toml")
}

/// The shipped synthesis recipe reads, and a setting it cannot use is refused with its key
/// (through mm-train's configuration reader: file, line and key, or the override at fault).
#[test]
fn the_synthesis_recipe_is_valid_and_bad_settings_name_their_key() {
    let config = TtsConfig::from_file(&recipe(), &[]).expect("the recipe is valid");
    assert!(config.model.dim > 0 && config.train.epochs > 0);
    let odd =
        TtsConfig::from_file(&recipe(), &["model.dim=7".into()]).expect_err("odd dim").to_string();
    assert!(odd.contains("dim (even, at least 2)"), "{odd}");
    let unknown =
        TtsConfig::from_file(&recipe(), &["train.epochz=3".into()]).expect_err("typo").to_string();
    assert!(unknown.contains("epochz"), "{unknown}");
}

/// The log-mel distance is a real libtorch-free computation over spectrograms: zero to itself,
/// symmetric, larger for a shifted copy than for a slightly scaled one.
#[test]
fn mel_distance_orders_similar_and_different_spectrograms() {
    let a = ndarray::Array2::from_shape_fn((40, 20), |(t, m)| ((t * 7 + m * 3) % 11) as f32 / 11.0);
    let near = a.mapv(|v| v * 1.01);
    let far = ndarray::Array2::from_shape_fn((40, 20), |(t, m)| {
        ((t * 5 + m * 13 + 4) % 11) as f32 / 11.0
    });
    assert_eq!(mel_distance(&a, &a), 0.0);
    assert!((mel_distance(&a, &far) - mel_distance(&far, &a)).abs() < 1e-9);
    assert!(mel_distance(&a, &near) < mel_distance(&a, &far));
}

/// Smoke test: this test binary links libtorch (rpath) and runs a real kernel.
#[test]
fn libtorch_runs_here() {
    let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    assert_eq!((&t * &t).sum(tch::Kind::Float).double_value(&[]), 14.0);
}
