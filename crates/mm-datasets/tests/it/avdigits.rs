//! Audio-visual digits from the real MNIST and FSDD files of the shared mirror: the pairing
//! keeps FSDD's test takes on the test side only, it is seeded, and degradation changes the
//! files it should.

use std::collections::BTreeSet;

use mm_data::manifest::{Manifest, Split};
use mm_datasets::avdigits::{convert, AvDigitsConfig};
use mm_datasets::fsdd::Name;

#[test]
fn mnist_and_fsdd_pair_by_digit_without_sharing_recordings_across_splits() {
    let Some(shared) = super::shared_data() else { return };
    let (mnist, fsdd) = (shared.join("mirror/mnist"), shared.join("mirror/fsdd/v1.0.10.tar.gz"));
    let dir = std::env::temp_dir().join(format!("mm-data-avdigits-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let clean = AvDigitsConfig {
        train_per_digit: Some(20),
        test_per_digit: Some(6),
        val: 0.25,
        ..AvDigitsConfig::default()
    };
    let summary = convert(&mnist, &fsdd, &dir.join("clean"), &clean, false).expect("convert");
    assert_eq!(summary.splits, [150, 50, 60]);
    let m = Manifest::read(dir.join("clean/manifest.jsonl")).expect("manifest");
    // Clean audio: the manifest names FSDD's own files, {digit}_{speaker}_{take}.wav.
    let take = |s: &mm_data::manifest::Sample| -> (String, u32) {
        let name = s
            .audio
            .as_ref()
            .expect("audio")
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let parsed = Name::parse(&name).expect("an FSDD name");
        (parsed.digit.to_string(), parsed.take)
    };
    let mut sides: [BTreeSet<String>; 2] = Default::default();
    for s in m.samples() {
        let (digit, t) = take(s);
        assert_eq!(
            Some(digit.as_str()),
            s.label.as_deref(),
            "{}: the recording says another digit",
            s.id
        );
        let test = s.split == Split::Test;
        assert_eq!(test, t < 5, "{}: take {t} on the {:?} side", s.id, s.split);
        sides[usize::from(test)].insert(s.audio.clone().expect("audio").display().to_string());
        assert!(
            m.path(s.image.as_ref().expect("image")).is_file()
                && m.path(s.audio.as_ref().expect("audio")).is_file()
        );
    }
    assert!(sides[0].is_disjoint(&sides[1]), "a recording on both sides");
    // MNIST's test images are on the test side: their ids say so.
    assert!(
        m.split(Split::Test).all(|s| s.id.starts_with('t'))
            && m.split(Split::Train).all(|s| s.id.starts_with('m'))
    );
    let image = image::open(m.path(m.samples()[0].image.as_ref().expect("image")))
        .expect("a PNG")
        .to_luma8();
    assert_eq!(image.dimensions(), (28, 28));

    // The same seed, the same data set; degradation writes one noisy WAV per sample and
    // changes the pixels.
    let again = convert(&mnist, &fsdd, &dir.join("again"), &clean, false).expect("convert");
    assert_eq!(again, summary);
    assert_eq!(
        std::fs::read(dir.join("again/manifest.jsonl")).expect("m"),
        std::fs::read(dir.join("clean/manifest.jsonl")).expect("m")
    );
    let noisy = AvDigitsConfig {
        image_noise: 0.4,
        occlusion: 0.5,
        audio_snr_db: Some(-5.0),
        ..clean.clone()
    };
    convert(&mnist, &fsdd, &dir.join("noisy"), &noisy, false).expect("convert");
    let n = Manifest::read(dir.join("noisy/manifest.jsonl")).expect("manifest");
    let first = &n.samples()[0];
    assert_eq!(
        first.audio.as_ref().map(|p| p.display().to_string()),
        Some(format!("audio/{}.wav", first.id))
    );
    let a =
        image::open(dir.join(format!("clean/images/{}.png", first.id))).expect("png").to_luma8();
    let b =
        image::open(dir.join(format!("noisy/images/{}.png", first.id))).expect("png").to_luma8();
    let changed = a.pixels().zip(b.pixels()).filter(|(x, y)| x != y).count();
    assert!(changed > 28 * 28 / 2, "{changed} pixels changed");
    // An existing folder is replaced only with force.
    let err =
        convert(&mnist, &fsdd, &dir.join("clean"), &clean, false).expect_err("exists").to_string();
    assert!(err.contains("already exists"), "{err}");
    let err = convert(&mnist, &dir.join("missing.tar.gz"), &dir.join("x"), &clean, false)
        .expect_err("no archive")
        .to_string();
    assert!(err.contains("missing.tar.gz"), "{err}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}
