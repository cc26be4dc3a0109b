//! Integration tests of mm-data (one target for the crate, to keep link time down).

use std::path::{Path, PathBuf};

use mm_data::device::parse_device;
use tch::{Kind, Tensor};

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

/// Smoke test: a real libtorch op runs in this test binary (links, rpath) with a checked result.
#[test]
fn libtorch_collates_and_reduces_a_batch() {
    let device = parse_device("auto").expect("auto always resolves");
    // Two samples of three features, as a collated batch would hold them.
    let batch = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 5.0, 6.0, 7.0]).view([2, 3]).to_device(device);
    let mean = batch.mean_dim(0, false, Kind::Float).to_device(tch::Device::Cpu);
    assert_eq!(Vec::<f32>::try_from(&mean).expect("f32 vector"), vec![3.0, 4.0, 5.0]);
}

/// The resampler against torchaudio's `functional.resample` (golden values and the script that
/// made them in `tests/data/resample_torchaudio.*`).
#[test]
fn resampling_matches_torchaudio() {
    let golden = include_str!("data/resample_torchaudio.txt");
    let input: Vec<f32> = (0..64u64)
        .map(|i| {
            let f = i as f64;
            ((0.37 * f).sin() * 0.5 + (1.9 * f).cos() * 0.3 + ((i * 7919) % 13) as f64 / 50.0) as f32
        })
        .collect();
    let mut cases = 0;
    for line in golden.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (from, to, len): (u32, u32, usize) =
            (fields[0].parse().expect("rate"), fields[1].parse().expect("rate"), fields[2].parse().expect("len"));
        let want: Vec<f64> = fields[3..].iter().map(|v| v.parse().expect("value")).collect();
        assert_eq!(want.len(), len);
        let got = mm_data::audio::resample(&input, from, to);
        assert_eq!(got.len(), len, "{from} -> {to}");
        let worst = got.iter().zip(&want).map(|(g, w)| (f64::from(*g) - w).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-5, "{from} -> {to}: max difference {worst}");
        cases += 1;
    }
    assert_eq!(cases, 4);
}

/// The real MNIST test set, read from the gzip files of the download mirror: shapes, pixel
/// range and the label counts published for this set (980 zeros, 1135 ones, ...).
#[test]
fn reads_real_mnist_idx_files() {
    let Some(data) = shared_data() else { return };
    let mnist = data.join("mirror/mnist");
    let labels = mm_data::idx::read_idx(mnist.join("t10k-labels-idx1-ubyte.gz")).expect("labels");
    assert_eq!(labels.shape, vec![10_000]);
    let labels = labels.into_u8().expect("u8");
    let mut counts = [0usize; 10];
    for &l in &labels {
        counts[usize::from(l)] += 1;
    }
    assert_eq!(counts, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
    let images = mm_data::idx::read_idx(mnist.join("t10k-images-idx3-ubyte.gz")).expect("images");
    assert_eq!(images.shape, vec![10_000, 28, 28]);
    let images = images.into_u8().expect("u8");
    // Digits are white strokes on black: corners are background, the middle has ink somewhere.
    assert!(images.iter().any(|&p| p == 255));
    assert_eq!(images[[0, 0, 0]], 0);
}

/// Real Free Spoken Digit recordings (8 kHz mono WAV) from the mirror's archive: decoded,
/// durations within the published 0.14-2.28 s, and resampled to 16 kHz.
#[test]
fn decodes_real_fsdd_recordings() {
    let Some(data) = shared_data() else { return };
    let archive = std::fs::File::open(data.join("mirror/fsdd/v1.0.10.tar.gz")).expect("archive");
    let dir = std::env::temp_dir().join(format!("mm-data-fsdd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut decoded = 0;
    for entry in tar.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let name = entry.path().expect("path").file_name().map(|n| n.to_string_lossy().into_owned());
        let Some(name) = name.filter(|n| n.ends_with(".wav")) else { continue };
        let file = dir.join(&name);
        entry.unpack(&file).expect("unpack");
        let audio = mm_data::audio::decode_audio(&file).expect("real FSDD wav decodes");
        assert_eq!(audio.sample_rate, 8000, "{name}");
        assert!((0.1..2.5).contains(&audio.duration()), "{name}: {} s", audio.duration());
        assert!(audio.samples.iter().all(|s| s.is_finite() && s.abs() <= 1.0), "{name}");
        let up = mm_data::audio::resample(&audio.samples, 8000, 16000);
        assert_eq!(up.len(), audio.samples.len() * 2);
        decoded += 1;
        if decoded == 40 {
            break;
        }
    }
    assert_eq!(decoded, 40);
    std::fs::remove_dir_all(dir).ok();
}

/// The log-mel front end against torchaudio's `transforms.MelSpectrogram` (golden values and
/// the script that made them in `tests/data/logmel_torchaudio.*`).
#[test]
fn mel_spectrogram_matches_torchaudio() {
    use mm_data::mel::{LogMel, MelConfig};
    let golden = include_str!("data/logmel_torchaudio.txt");
    let mut lines = golden.lines();
    let dims: Vec<usize> = lines.next().expect("header").split_whitespace().map(|v| v.parse().expect("dim")).collect();
    let want: Vec<Vec<f64>> =
        lines.map(|l| l.split_whitespace().map(|v| v.parse().expect("value")).collect()).collect();
    let signal: Vec<f32> = (0..1600u64)
        .map(|i| {
            let t = i as f64 / 16000.0;
            ((2.0 * std::f64::consts::PI * 440.0 * t).sin() * 0.6
                + (2.0 * std::f64::consts::PI * 3100.0 * t + 0.3).sin() * 0.2
                + (((i * 7919) % 101) as f64 - 50.0) / 500.0) as f32
        })
        .collect();
    let mel = LogMel::new(&MelConfig::default()).expect("config");
    let got = mel.power(&signal); // [frames, n_mels]
    assert_eq!((got.ncols(), got.nrows()), (dims[0], dims[1]));
    let peak = want.iter().flatten().fold(0.0f64, |m, v| m.max(*v));
    for (bin, row) in want.iter().enumerate() {
        for (frame, &w) in row.iter().enumerate() {
            let g = f64::from(got[[frame, bin]]);
            // f32 arithmetic against torchaudio's float64: relative 1e-3, or 1e-6 of the peak.
            assert!((g - w).abs() <= 1e-3 * w.abs() + 1e-6 * peak, "bin {bin} frame {frame}: {g} vs {w}");
        }
    }
}
