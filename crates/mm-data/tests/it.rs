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

mod cleaning {
    use std::path::{Path, PathBuf};

    use mm_data::audio::{encode_wav, Audio};
    use mm_data::clean::{clean, CleanConfig, Modality, Policy, Reason};
    use mm_data::manifest::{Manifest, Sample};

    fn png(seed: u8) -> Vec<u8> {
        let img = image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([seed, x as u8 * 9, y as u8 * 7]));
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).expect("png");
        out
    }

    fn tone(seconds: f32, amplitude: f32) -> Audio {
        let n = (16000.0 * seconds) as usize;
        Audio { sample_rate: 16000, samples: (0..n).map(|i| amplitude * (i as f32 * 0.2).sin()).collect() }
    }

    /// A data set on disk with one of every problem, and the good samples around them.
    fn broken_data_set(dir: &Path) -> Manifest {
        std::fs::create_dir_all(dir.join("f")).expect("mkdir");
        let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join("f").join(name), bytes).expect("write");
        write("good1.png", &png(1));
        write("good2.png", &png(2));
        let cut = png(3);
        write("cut.png", &cut[..cut.len() / 2]);
        write("good.wav", &encode_wav(&tone(0.5, 0.5)));
        write("other.wav", &encode_wav(&tone(0.7, 0.3)));
        write("zero.wav", b"");
        let lying = encode_wav(&tone(0.5, 0.5));
        write("lying.wav", &lying[..lying.len() / 3]);
        write("silent.wav", &encode_wav(&tone(0.5, 0.0)));
        write("short.wav", &encode_wav(&tone(0.05, 0.5)));
        let mut m = Manifest::new(dir);
        let s = |id: &str| Sample::new(id).with_label("a");
        for sample in [
            s("ok1").with_image("f/good1.png").with_audio("f/good.wav").with_text("one"),
            s("ok2").with_image("f/good2.png").with_audio("f/other.wav").with_text("two"),
            s("cut-image").with_image("f/cut.png").with_text("three"),
            s("missing-file").with_image("f/nope.png").with_audio("f/good.wav"),
            s("zero-wav").with_image("f/good1.png").with_audio("f/zero.wav"),
            s("lying-wav").with_image("f/good2.png").with_audio("f/lying.wav"),
            s("silent").with_image("f/good1.png").with_audio("f/silent.wav").with_text("quiet"),
            s("short").with_image("f/good2.png").with_audio("f/short.wav").with_text("brief"),
            s("blank-text").with_image("f/good1.png").with_text("  \t"),
            Sample::new("unknown-label").with_text("four").with_label("zebra"),
            s("nan").with_features(vec![1.0, f64::NAN]),
            s("no-audio").with_image("f/good2.png").with_text("five"),
            s("copy-of-ok1").with_image("f/good1.png").with_audio("f/good.wav").with_text("one"),
        ] {
            m.push(sample).expect("valid sample");
        }
        m
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mm-clean-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn config() -> CleanConfig {
        CleanConfig {
            min_duration: Some(0.1),
            classes: Some(vec!["a".to_string(), "b".to_string()]),
            required: vec![Modality::Audio],
            ..CleanConfig::default()
        }
    }

    #[test]
    fn every_problem_is_reported_and_the_rest_is_kept() {
        let dir = temp("report");
        let m = broken_data_set(&dir);
        let (kept, report) = clean(&m, &config()).expect("no fail policy");
        let reasons_of = |id: &str| -> Vec<Reason> {
            report.findings.iter().filter(|f| f.id == id).map(|f| f.reason).collect()
        };
        assert!(reasons_of("ok1").is_empty() && reasons_of("ok2").is_empty());
        assert_eq!(reasons_of("cut-image"), [Reason::BadImage, Reason::MissingModality]);
        assert_eq!(reasons_of("missing-file"), [Reason::BadImage]);
        assert_eq!(reasons_of("zero-wav"), [Reason::BadAudio]);
        assert_eq!(reasons_of("lying-wav"), [Reason::BadAudio]);
        assert_eq!(reasons_of("silent"), [Reason::SilentAudio]);
        assert_eq!(reasons_of("short"), [Reason::TooShort]);
        assert_eq!(reasons_of("blank-text"), [Reason::EmptyText, Reason::MissingModality]);
        assert_eq!(reasons_of("unknown-label"), [Reason::UnknownLabel, Reason::MissingModality]);
        assert_eq!(reasons_of("nan"), [Reason::NonFinite, Reason::MissingModality]);
        assert_eq!(reasons_of("no-audio"), [Reason::MissingModality]);
        assert_eq!(reasons_of("copy-of-ok1"), [Reason::Duplicate]);
        let lying = report.findings.iter().find(|f| f.id == "lying-wav").expect("finding");
        assert!(lying.detail.contains("lying.wav") && lying.detail.contains("truncated"), "{}", lying.detail);

        // Kept by policy: clean samples, silent audio and a missing modality; the rest dropped.
        let ids: Vec<&str> = kept.samples().iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["ok1", "ok2", "silent", "no-audio"]);
        assert_eq!((report.total, report.kept, report.dropped), (13, 4, 9));

        let json = report.to_json();
        assert_eq!(json["reasons"]["bad_audio"]["count"], 2);
        assert_eq!(json["reasons"]["duplicate"]["samples"][0]["detail"], "same content as ok1");
        assert_eq!(json["reasons"]["silent_audio"]["policy"], "keep");
        let summary = report.summary();
        assert!(summary.starts_with("13 samples checked: 4 kept, 9 dropped"), "{summary}");
        report.save(dir.join("report.json")).expect("save");
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect("read")).expect("json");
        assert_eq!(saved, json);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn the_report_is_the_same_on_one_thread_and_on_four() {
        let dir = temp("threads");
        let m = broken_data_set(&dir);
        let run = |threads| {
            rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool").install(|| clean(&m, &config()))
        };
        let (kept1, report1) = run(1).expect("clean");
        let (kept4, report4) = run(4).expect("clean");
        assert_eq!(report1, report4);
        assert_eq!(kept1.samples(), kept4.samples());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_fail_policy_stops_the_pass_and_names_the_samples() {
        let dir = temp("fail");
        let m = broken_data_set(&dir);
        let mut cfg = config();
        cfg.policies.insert(Reason::BadAudio, Policy::Fail);
        let e = clean(&m, &cfg).expect_err("fails").to_string();
        assert!(e.contains("2 sample(s) fail the cleaning policy"), "{e}");
        assert!(e.contains("zero-wav (bad_audio") && e.contains("lying-wav (bad_audio"), "{e}");
        // Keeping everything drops nothing, and still reports everything.
        let keep_all = CleanConfig { policies: Reason::ALL.iter().map(|r| (*r, Policy::Keep)).collect(), ..config() };
        let (kept, report) = clean(&m, &keep_all).expect("keep all");
        assert_eq!((kept.samples().len(), report.dropped), (13, 0));
        assert_eq!(report.findings.len(), 15); // as listed in every_problem_is_reported_and_the_rest_is_kept
        std::fs::remove_dir_all(dir).ok();
    }
}
