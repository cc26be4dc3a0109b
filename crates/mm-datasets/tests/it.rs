//! Integration tests of mm-datasets (one target for the crate, to keep link time down): the
//! data sets built from the synthetic generator and from the real MNIST and FSDD files of the
//! shared mirror, read back through mm-data.

use std::path::{Path, PathBuf};

#[path = "it/avdigits.rs"]
mod avdigits;
#[path = "it/config.rs"]
mod config;
#[path = "it/spoken.rs"]
mod spoken;
#[path = "it/synth.rs"]
mod synth;

/// The real data sets beside the repository (`../shared/data`, see its README; or the folder
/// `MM_SHARED_DATA` names). CI always has them, so there a missing folder fails the test;
/// elsewhere the test says it skips.
fn shared_data() -> Option<PathBuf> {
    let dir = match std::env::var_os("MM_SHARED_DATA") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
    };
    if dir.is_dir() {
        Some(dir)
    } else if std::env::var_os("CI").is_some() {
        panic!("{} is missing: CI must provide the shared data", dir.display());
    } else {
        eprintln!("skipped: no shared data at {}", dir.display());
        None
    }
}

/// Unpacks the first `n` WAV files of the mirror's FSDD archive into `dir` (through mm-fetch's
/// one FSDD reader); returns their file names (`{digit}_{speaker}_{take}.wav`).
fn extract_fsdd(data: &Path, dir: &Path, n: usize) -> Vec<String> {
    let wavs = mm_datasets::fsdd::read_wavs(&data.join("mirror/fsdd/v1.0.10.tar.gz"), Some(n))
        .expect("archive");
    std::fs::create_dir_all(dir).expect("mkdir");
    wavs.into_iter()
        .map(|w| {
            std::fs::write(dir.join(&w.name), &w.bytes).expect("unpack");
            w.name
        })
        .collect()
}

/// Real Free Spoken Digit recordings (8 kHz mono WAV) from the mirror's archive: decoded,
/// durations within the published 0.14-2.28 s, and resampled to 16 kHz.
#[test]
fn decodes_real_fsdd_recordings() {
    let Some(data) = shared_data() else { return };
    let dir = std::env::temp_dir().join(format!("mm-data-fsdd-{}", std::process::id()));
    let names = extract_fsdd(&data, &dir, 40);
    assert_eq!(names.len(), 40);
    for name in &names {
        let audio = mm_data::audio::decode_audio(dir.join(name)).expect("real FSDD wav decodes");
        assert_eq!(audio.sample_rate, 8000, "{name}");
        assert!((0.1..2.5).contains(&audio.duration()), "{name}: {} s", audio.duration());
        assert!(audio.samples.iter().all(|s| s.is_finite() && s.abs() <= 1.0), "{name}");
        let up = mm_data::audio::resample(&audio.samples, 8000, 16000);
        assert_eq!(up.len(), audio.samples.len() * 2);
    }
    std::fs::remove_dir_all(dir).ok();
}

/// The whole path on real data: MNIST digits written as PNG files, FSDD recordings of the
/// same digit, a manifest, statistics from the training split, and batches of tensors whose
/// labels are the digits.
#[test]
fn loads_real_mnist_and_fsdd_into_batches() {
    use mm_data::loader::{Loader, LoaderConfig};
    use mm_data::manifest::{Manifest, Sample, Split};
    use mm_data::mel::MelConfig;
    use mm_data::pipeline::{AudioSpec, ImageSpec, Pipeline};
    use std::sync::Arc;

    let Some(data) = shared_data() else { return };
    let dir = std::env::temp_dir().join(format!("mm-data-av-{}", std::process::id()));
    let wavs = extract_fsdd(&data, &dir.join("audio"), 30);
    let mnist = data.join("mirror/mnist");
    let mnist = mm_datasets::idx::read_mnist(&mnist, "t10k").expect("MNIST's test split");
    let labels = &mnist.labels;
    std::fs::create_dir_all(dir.join("image")).expect("mkdir");
    let mut manifest = Manifest::new(&dir);
    let mut used = vec![false; labels.len()];
    for (k, wav) in wavs.iter().enumerate() {
        let digit = mm_datasets::fsdd::Name::parse(wav).expect("an FSDD name").digit;
        // The first unused MNIST image of the same digit.
        let i = (0..labels.len())
            .find(|&i| !used[i] && labels[i] == digit)
            .expect("an image of that digit");
        used[i] = true;
        let pixels: Vec<u8> = mnist.image(i).expect("image").to_vec();
        image::GrayImage::from_raw(28, 28, pixels)
            .expect("28x28")
            .save(dir.join(format!("image/{k}.png")))
            .expect("png");
        let split = if k < 24 { Split::Train } else { Split::Test };
        let sample = Sample::new(format!("av{k}"))
            .with_image(format!("image/{k}.png"))
            .with_audio(format!("audio/{wav}"))
            .with_label(digit.to_string())
            .with_split(split);
        manifest.push(sample).expect("sample");
    }
    let manifest = Arc::new(manifest);
    let mut pipeline = Pipeline::new((0..10).map(|d| d.to_string()).collect());
    pipeline.image = Some(ImageSpec::new((28, 28)));
    pipeline.audio = Some(AudioSpec::new(&MelConfig::default()).expect("mel"));
    pipeline.fit_statistics(&manifest).expect("statistics");
    let img_stats = &pipeline.image.as_ref().expect("image").normalizer;
    // MNIST is mostly black: a low mean, the same in the three (grey) channels.
    assert!(img_stats.mean[0] > 0.05 && img_stats.mean[0] < 0.3, "{img_stats:?}");
    assert!((img_stats.mean[0] - img_stats.mean[2]).abs() < 1e-6);
    let config = LoaderConfig { batch_size: 8, ..LoaderConfig::evaluation() };
    let loader = Loader::new(Arc::clone(&manifest), Split::Train, Arc::new(pipeline), config)
        .expect("loader");
    let mut seen = 0;
    for batch in loader.epoch(0) {
        let batch = batch.expect("batch");
        let n = batch.len() as i64;
        assert_eq!(batch.image.as_ref().expect("image").size(), [n, 3, 28, 28]);
        let (mel, lengths) = batch.audio.as_ref().expect("audio");
        assert_eq!(mel.size()[2], 64);
        assert!(Vec::<i64>::try_from(lengths).expect("lengths").iter().all(|&l| l > 10));
        assert_eq!(mel.isfinite().all().int64_value(&[]), 1);
        let got = Vec::<i64>::try_from(batch.label.as_ref().expect("labels")).expect("ids");
        for (id, label) in batch.ids.iter().zip(got) {
            let k: usize = id[2..].parse().expect("index");
            let digit = mm_datasets::fsdd::Name::parse(&wavs[k]).expect("an FSDD name").digit;
            assert_eq!(label, i64::from(digit), "{id}");
        }
        seen += batch.len();
    }
    assert_eq!(seen, 24);
    std::fs::remove_dir_all(dir).ok();
}

/// `[data.image] normalize = "imagenet"` keeps ImageNet's channel statistics (what pretrained
/// torchvision weights expect) where the default fits the training split's, and a restored
/// pipeline has the same ones.
#[test]
fn image_statistics_are_fitted_or_imagenets() {
    use mm_data::config::DataConfig;
    use mm_data::normalize::Normalizer;
    use mm_datasets::synth::{generate, SynthConfig};
    let dir = std::env::temp_dir().join(format!("mm-data-normalize-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    generate(
        &dir.join("synth"),
        &SynthConfig {
            samples: 60,
            image_size: 16,
            frame_size: 16,
            frames: 2,
            duration: 0.4,
            ..SynthConfig::default()
        },
        false,
    )
    .expect("synth");
    let manifest = dir.join("synth/manifest.jsonl");
    let config = |normalize: &str| -> DataConfig {
        toml::from_str(&format!(
            "manifest = {:?}\n[image]\nsize = 16\nnormalize = \"{normalize}\"",
            manifest.to_string_lossy()
        ))
        .expect("toml")
    };
    let fitted = config("fit").prepare(0).expect("prepare").pipeline;
    let imagenet = config("imagenet").prepare(0).expect("prepare").pipeline;
    let (f, i) = (
        &fitted.image.as_ref().expect("image").normalizer,
        &imagenet.image.as_ref().expect("image").normalizer,
    );
    assert_eq!((&i.mean, &i.std), (&Normalizer::imagenet().mean, &Normalizer::imagenet().std));
    assert_ne!(f.mean, Normalizer::imagenet().mean, "the synthetic images are not ImageNet's");
    assert!(f.count > 0);
    imagenet.save_statistics(dir.join("saved")).expect("save");
    let restored = config("imagenet").restore(0, &dir.join("saved")).expect("restore");
    assert_eq!(
        restored.image.as_ref().expect("image").normalizer.mean,
        Normalizer::imagenet().mean
    );
    let e = toml::from_str::<DataConfig>("manifest = \"m\"\n[image]\nnormalize = \"coco\"")
        .expect_err("unknown")
        .to_string();
    assert!(e.contains("coco") && e.contains("imagenet"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}
