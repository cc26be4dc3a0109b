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
    let batch =
        Tensor::from_slice(&[1.0f32, 2.0, 3.0, 5.0, 6.0, 7.0]).view([2, 3]).to_device(device);
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
            ((0.37 * f).sin() * 0.5 + (1.9 * f).cos() * 0.3 + ((i * 7919) % 13) as f64 / 50.0)
                as f32
        })
        .collect();
    let mut cases = 0;
    for line in golden.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (from, to, len): (u32, u32, usize) = (
            fields[0].parse().expect("rate"),
            fields[1].parse().expect("rate"),
            fields[2].parse().expect("len"),
        );
        let want: Vec<f64> = fields[3..].iter().map(|v| v.parse().expect("value")).collect();
        assert_eq!(want.len(), len);
        let got = mm_data::audio::resample(&input, from, to);
        assert_eq!(got.len(), len, "{from} -> {to}");
        let worst =
            got.iter().zip(&want).map(|(g, w)| (f64::from(*g) - w).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-5, "{from} -> {to}: max difference {worst}");
        cases += 1;
    }
    assert_eq!(cases, 4);
}

/// The log-mel front end against torchaudio's `transforms.MelSpectrogram` (golden values and
/// the script that made them in `tests/data/logmel_torchaudio.*`).
#[test]
fn mel_spectrogram_matches_torchaudio() {
    use mm_data::mel::{LogMel, MelConfig};
    let golden = include_str!("data/logmel_torchaudio.txt");
    let mut lines = golden.lines();
    let dims: Vec<usize> =
        lines.next().expect("header").split_whitespace().map(|v| v.parse().expect("dim")).collect();
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
            assert!(
                (g - w).abs() <= 1e-3 * w.abs() + 1e-6 * peak,
                "bin {bin} frame {frame}: {g} vs {w}"
            );
        }
    }
}

#[path = "it/video.rs"]
mod video;

mod cleaning {
    use std::path::{Path, PathBuf};

    use mm_data::audio::{encode_wav, Audio};
    use mm_data::clean::{clean, CleanConfig, Modality, Policy, Reason};
    use mm_data::manifest::{Manifest, Sample};

    fn png(seed: u8) -> Vec<u8> {
        let img =
            image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([seed, x as u8 * 9, y as u8 * 7]));
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).expect("png");
        out
    }

    fn tone(seconds: f32, amplitude: f32) -> Audio {
        let n = (16000.0 * seconds) as usize;
        Audio {
            sample_rate: 16000,
            samples: (0..n).map(|i| amplitude * (i as f32 * 0.2).sin()).collect(),
        }
    }

    /// A data set on disk with one of every problem, and the good samples around them.
    fn broken_data_set(dir: &Path) -> Manifest {
        std::fs::create_dir_all(dir.join("f")).expect("mkdir");
        let write = |name: &str, bytes: &[u8]| {
            std::fs::write(dir.join("f").join(name), bytes).expect("write")
        };
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
        assert!(
            lying.detail.contains("lying.wav") && lying.detail.contains("truncated"),
            "{}",
            lying.detail
        );

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
            serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect("read"))
                .expect("json");
        assert_eq!(saved, json);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn the_report_is_the_same_on_one_thread_and_on_four() {
        let dir = temp("threads");
        let m = broken_data_set(&dir);
        let run = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool")
                .install(|| clean(&m, &config()))
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
        let keep_all = CleanConfig {
            policies: Reason::ALL.iter().map(|r| (*r, Policy::Keep)).collect(),
            ..config()
        };
        let (kept, report) = clean(&m, &keep_all).expect("keep all");
        assert_eq!((kept.samples().len(), report.dropped), (13, 0));
        assert_eq!(report.findings.len(), 15); // as listed in every_problem_is_reported_and_the_rest_is_kept
        std::fs::remove_dir_all(dir).ok();
    }
}

mod loading {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use mm_data::audio::{write_wav, Audio};
    use mm_data::augment::{AudioAugment, ImageAugment, TextAugment};
    use mm_data::loader::{Loader, LoaderConfig, NO_LABEL};
    use mm_data::manifest::{Manifest, Sample, Split};
    use mm_data::mel::MelConfig;
    use mm_data::pipeline::{AudioSpec, FeatureSpec, FramesSpec, ImageSpec, Pipeline, TextSpec};
    use mm_data::text::{VocabBuilder, WordTokenizer};
    use mm_data::Modality;
    use tch::Tensor;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mm-load-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    fn write_png(path: &Path, w: u32, h: u32, seed: u32) {
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7 + seed * 31) as u8, (y * 5 + seed) as u8, (seed * 13) as u8])
        })
        .save(path)
        .expect("png");
    }

    /// 12 samples with every modality (some missing), labels a/b (imbalanced 9:3), features.
    fn data_set(dir: &Path) -> Manifest {
        let mut m = Manifest::new(dir);
        for i in 0..12u32 {
            write_png(&dir.join(format!("i{i}.png")), 20 + i, 16, i);
            for f in 0..(2 + i % 3) {
                write_png(&dir.join(format!("v{i}_{f}.png")), 12, 12, i * 10 + f);
            }
            let n = 1600 + 400 * i as usize; // 0.1 s to 0.375 s at 16 kHz
            let samples =
                (0..n).map(|k| 0.3 * ((k as f32) * (0.05 + 0.01 * i as f32)).sin()).collect();
            write_wav(dir.join(format!("a{i}.wav")), &Audio { sample_rate: 16000, samples })
                .expect("wav");
            let mut s = Sample::new(format!("s{i}"))
                .with_image(format!("i{i}.png"))
                .with_text(if i % 2 == 0 {
                    "a red circle"
                } else {
                    "one small blue square, moving left"
                })
                .with_frames((0..(2 + i % 3)).map(|f| format!("v{i}_{f}.png")))
                .with_features(vec![f64::from(i), 100.0 - f64::from(i)])
                .with_label(if i < 9 { "a" } else { "b" })
                .with_target(f64::from(i) / 10.0)
                .with_split(if i < 10 { Split::Train } else { Split::Test });
            if i != 3 {
                s = s.with_audio(format!("a{i}.wav"));
            }
            m.push(s).expect("sample");
        }
        m
    }

    fn pipeline(m: &Manifest, augment: bool) -> Pipeline {
        let mut p = Pipeline::new(vec!["a".into(), "b".into()]);
        let mut image = ImageSpec::new((16, 16));
        let mut audio =
            AudioSpec::new(&MelConfig { n_mels: 32, ..MelConfig::default() }).expect("mel");
        let tok = WordTokenizer::default();
        let vocab = VocabBuilder::default()
            .build(&tok, m.split(Split::Train).filter_map(|s| s.text.as_deref()));
        let mut text = TextSpec::words(tok, vocab, 6);
        if augment {
            image.augment =
                ImageAugment { rotate_degrees: 10.0, noise_std: 0.02, ..ImageAugment::standard() };
            audio.augment = AudioAugment::standard();
            text.augment = TextAugment { drop: 0.2, swap: 0.1 };
            p.modality_dropout = 0.2;
        }
        p.image = Some(image.clone());
        p.audio = Some(audio);
        p.text = Some(text);
        p.frames = Some(FramesSpec {
            image: ImageSpec::new((8, 8)),
            max_frames: Some(3),
            clip: Default::default(),
        });
        p.features = Some(FeatureSpec { dim: 2, normalizer: None });
        p.seed = 11;
        p
    }

    #[test]
    fn batches_have_the_documented_layout() {
        let dir = temp("layout");
        let m = Arc::new(data_set(&dir));
        let mut p = pipeline(&m, false);
        p.fit_statistics(&m).expect("stats");
        // Statistics come from the 10 training samples only: features 0..9 have mean 4.5.
        let fstats = p.features.as_ref().and_then(|f| f.normalizer.clone()).expect("fitted");
        assert!(
            (fstats.mean[0] - 4.5).abs() < 1e-5 && (fstats.mean[1] - 95.5).abs() < 1e-4,
            "{fstats:?}"
        );
        let config = LoaderConfig { batch_size: 5, ..LoaderConfig::evaluation() };
        let loader =
            Loader::new(Arc::clone(&m), Split::Train, Arc::new(p), config).expect("loader");
        assert_eq!(loader.batches_per_epoch(), 2);
        let batches: Vec<_> = loader.epoch(0).collect::<Result<_, _>>().expect("batches");
        assert_eq!(batches.len(), 2);
        let b = &batches[0];
        assert_eq!(b.ids, ["s0", "s1", "s2", "s3", "s4"]);
        assert_eq!(b.modalities, Modality::ALL);
        assert_eq!(b.image.as_ref().expect("image").size(), [5, 3, 16, 16]);
        let (audio, alen) = b.audio.as_ref().expect("audio");
        // Clip i has 1600 + 400 i samples: 1 + n / 160 frames; s3 has no audio.
        assert_eq!(Vec::<i64>::try_from(alen).expect("lengths"), [11, 13, 16, 0, 21]);
        assert_eq!(audio.size(), [5, 21, 32]);
        assert_eq!(audio.get(3).abs().sum(tch::Kind::Float).double_value(&[]), 0.0);
        let present = Vec::<f32>::try_from(b.present.flatten(0, -1)).expect("mask");
        assert_eq!(&present[15..20], [1.0, 0.0, 1.0, 1.0, 1.0]); // s3: no audio
        let (tokens, tlen) = b.text.as_ref().expect("text");
        assert_eq!(Vec::<i64>::try_from(tlen).expect("lengths"), [3, 6, 3, 6, 3]); // cut at max_tokens
        assert_eq!(tokens.size(), [5, 6]);
        assert_eq!(tokens.int64_value(&[0, 5]), 0); // <pad>
        let (frames, flen) = b.frames.as_ref().expect("frames");
        assert_eq!(Vec::<i64>::try_from(flen).expect("lengths"), [2, 3, 3, 2, 3]);
        assert_eq!(frames.size(), [5, 3, 3, 8, 8]);
        assert_eq!(
            Vec::<i64>::try_from(b.label.as_ref().expect("label")).expect("ids"),
            [0, 0, 0, 0, 0]
        );
        let (target, tmask) = b.target.as_ref().expect("target");
        assert!((target.double_value(&[4]) - 0.4).abs() < 1e-6);
        assert_eq!(tmask.sum(tch::Kind::Float).double_value(&[]), 5.0);
        // Standardised features of the training split: mean 0 over its 10 samples.
        let all = Tensor::cat(
            &[batches[0].features.as_ref().expect("f"), batches[1].features.as_ref().expect("f")],
            0,
        );
        assert!(all.mean_dim(0, false, tch::Kind::Float).abs().max().double_value(&[]) < 1e-5);
        assert_eq!(NO_LABEL, -100);
        // The fitted statistics are saved and come back unchanged for evaluation.
        let stats_dir = dir.join("stats");
        let fitted = loader_pipeline_statistics(&m);
        fitted.save_statistics(&stats_dir).expect("save");
        let mut fresh = pipeline(&m, false);
        fresh.load_statistics(&stats_dir).expect("load");
        assert_eq!(
            fresh.features.as_ref().and_then(|f| f.normalizer.clone()),
            fitted.features.as_ref().and_then(|f| f.normalizer.clone())
        );
        assert_eq!(
            fresh.image.as_ref().map(|i| i.normalizer.clone()),
            fitted.image.as_ref().map(|i| i.normalizer.clone())
        );
        // Frames get their own channel statistics (not ImageNet's), from every frame of the
        // training split: 2+3+4+2+3+4+2+3+4+2 = 29 frames of 8x8 pixels.
        let frames_stats =
            fitted.frames.as_ref().map(|f| f.image.normalizer.clone()).expect("frames");
        assert_eq!(frames_stats.count, 29 * 64);
        std::fs::remove_file(stats_dir.join("audio_stats.json")).expect("rm");
        let e = fresh.load_statistics(&stats_dir).expect_err("missing").to_string();
        assert!(e.contains("audio_stats.json"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }

    fn loader_pipeline_statistics(m: &Manifest) -> Pipeline {
        let mut p = pipeline(m, false);
        p.fit_statistics(m).expect("stats");
        p
    }

    fn epoch_tensors(loader: &Loader, epoch: u64) -> Vec<(Vec<String>, Tensor, Tensor, Tensor)> {
        loader
            .epoch(epoch)
            .map(|b| {
                let b = b.expect("batch");
                (
                    b.ids.clone(),
                    b.image.expect("image"),
                    b.audio.expect("audio").0,
                    b.text.expect("text").0,
                )
            })
            .collect()
    }

    #[test]
    fn augmented_epochs_are_reproducible_across_thread_counts() {
        let dir = temp("determinism");
        let m = Arc::new(data_set(&dir));
        let p = Arc::new(pipeline(&m, true));
        let config = LoaderConfig { batch_size: 4, drop_last: false, ..LoaderConfig::training(5) };
        let loader = Loader::new(Arc::clone(&m), Split::Train, p, config).expect("loader");
        let run = |threads: usize, epoch| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool")
                .install(|| epoch_tensors(&loader, epoch))
        };
        let (one, four) = (run(1, 0), run(4, 0));
        assert_eq!(one.len(), 3);
        for (a, b) in one.iter().zip(&four) {
            assert_eq!(a.0, b.0);
            assert!(
                a.1.equal(&b.1) && a.2.equal(&b.2) && a.3.equal(&b.3),
                "batch {:?} differs",
                a.0
            );
        }
        // Another epoch: another order and other augmentations; every sample still once.
        let next = run(2, 1);
        let ids = |e: &Vec<(Vec<String>, Tensor, Tensor, Tensor)>| {
            e.iter().flat_map(|b| b.0.clone()).collect::<Vec<_>>()
        };
        assert_ne!(ids(&one), ids(&next));
        let mut sorted = ids(&next);
        sorted.sort();
        assert_eq!(
            sorted,
            (0..10)
                .map(|i| format!("s{i}"))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn shards_split_every_epoch_into_disjoint_parts_that_make_the_whole() {
        use mm_data::loader::Shard;
        let dir = temp("shards");
        let m = Arc::new(data_set(&dir));
        let p = Arc::new(loader_pipeline_statistics(&m));
        let loader = |batch_size, drop_last, shard| {
            let config = LoaderConfig { batch_size, drop_last, shard, ..LoaderConfig::training(3) };
            Loader::new(Arc::clone(&m), Split::Train, Arc::clone(&p), config).expect("loader")
        };
        for epoch in 0..3 {
            // Without dropping: 10 samples over 3 ranks, 4 + 3 + 3, disjoint, all of them.
            let whole = loader(2, false, Shard::WHOLE).order(epoch);
            let parts: Vec<Vec<usize>> = (0..3)
                .map(|r| loader(2, false, Shard { rank: r, world: 3 }).shard_order(epoch))
                .collect();
            assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 3, 3]);
            let mut union: Vec<usize> = parts.concat();
            union.sort();
            let mut all = whole.clone();
            all.sort();
            assert_eq!(union, all, "epoch {epoch}");
            assert_eq!(
                (0..3)
                    .map(|r| loader(2, false, Shard { rank: r, world: 3 }).batches_per_epoch())
                    .collect::<Vec<_>>(),
                vec![2, 2, 2]
            );
            // Dropping the last batch: every rank has the same batches, and batch k of both ranks
            // together is batch k of one process with twice the batch size.
            let one = loader(4, true, Shard::WHOLE);
            let two: Vec<Loader> =
                (0..2).map(|r| loader(2, true, Shard { rank: r, world: 2 })).collect();
            assert_eq!(
                (one.batches_per_epoch(), two[0].batches_per_epoch(), two[1].batches_per_epoch()),
                (2, 2, 2)
            );
            let single = one.shard_order(epoch);
            let (a, b) = (two[0].shard_order(epoch), two[1].shard_order(epoch));
            for k in 0..2 {
                let mut joined = [&a[2 * k..2 * k + 2], &b[2 * k..2 * k + 2]].concat();
                joined.sort();
                let mut expected = single[4 * k..4 * k + 4].to_vec();
                expected.sort();
                assert_eq!(joined, expected, "epoch {epoch}, batch {k}");
            }
            // The batches themselves carry those samples.
            let ids: Vec<String> =
                two[1].epoch(epoch).flat_map(|b| b.expect("batch").ids).collect();
            assert_eq!(ids, b.iter().map(|&i| m.samples()[i].id.clone()).collect::<Vec<_>>());
        }
        let bad = LoaderConfig { shard: Shard { rank: 2, world: 2 }, ..LoaderConfig::training(0) };
        let e = Loader::new(Arc::clone(&m), Split::Train, Arc::clone(&p), bad)
            .expect_err("rank 2 of 2")
            .to_string();
        assert!(e.contains("shard 2 of 2"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }

    /// Tar shards written from a manifest stream the same samples, decoded the same, dealt to
    /// ranks without overlap; a cut shard is an error naming it.
    #[test]
    fn tar_shards_stream_the_manifests_samples_to_every_rank() {
        use mm_data::loader::Shard;
        use mm_data::shards::{write_shards, ShardIndex, ShardOptions};
        let dir = temp("tar-shards");
        let m = Arc::new(data_set(&dir));
        let p = Arc::new(loader_pipeline_statistics(&m));
        let out = dir.join("shards");
        let written =
            write_shards(&m, &out, &ShardOptions { max_samples: 3, ..ShardOptions::default() })
                .expect("write");
        let index = Arc::new(ShardIndex::read(out.join("shards.json")).expect("index"));
        assert_eq!(*index, written);
        assert_eq!((index.samples(Split::Train), index.samples(Split::Test)), (10, 2));
        assert_eq!(
            index.shards(Split::Train).iter().map(|s| s.samples).collect::<Vec<_>>(),
            vec![3, 3, 3, 1]
        );
        // Members grouped by key, one file per modality, as webdataset has them.
        let first = std::fs::File::open(index.path(&index.shards(Split::Train)[0])).expect("shard");
        let names: Vec<String> = tar::Archive::new(first)
            .entries()
            .expect("tar")
            .map(|e| e.expect("entry").path().expect("path").display().to_string())
            .collect();
        assert!(
            names.iter().any(|n| n.ends_with(".json"))
                && names.iter().any(|n| n.ends_with(".png"))
                && names.iter().any(|n| n.ends_with(".wav"))
                && names.iter().any(|n| n.contains(".frame0000.")),
            "{names:?}"
        );
        assert_eq!(index.scan().expect("scan").samples().len(), 12);
        // Every rank's samples, decoded, equal the manifest loader's.
        let plain = Loader::new(
            Arc::clone(&m),
            Split::Train,
            Arc::clone(&p),
            LoaderConfig { batch_size: 10, ..LoaderConfig::evaluation() },
        )
        .expect("loader");
        let reference: std::collections::HashMap<String, Vec<f32>> = plain
            .epoch(0)
            .flat_map(|b| {
                let b = b.expect("batch");
                let images = b.image.expect("images");
                b.ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| {
                        (
                            id.clone(),
                            Vec::<f32>::try_from(images.get(i as i64).view([-1])).expect("pixels"),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut seen = Vec::new();
        for rank in 0..2 {
            let config = LoaderConfig {
                batch_size: 2,
                shard: Shard { rank, world: 2 },
                ..LoaderConfig::evaluation()
            };
            let loader =
                Loader::from_shards(Arc::clone(&index), Split::Train, Arc::clone(&p), config)
                    .expect("shard loader");
            for batch in loader.epoch(0) {
                let b = batch.expect("batch");
                let images = b.image.expect("images");
                for (i, id) in b.ids.iter().enumerate() {
                    assert_eq!(
                        Vec::<f32>::try_from(images.get(i as i64).view([-1])).expect("pixels"),
                        reference[id],
                        "{id}"
                    );
                    seen.push(id.clone());
                }
            }
        }
        seen.sort();
        let mut all: Vec<String> = reference.keys().cloned().collect();
        all.sort();
        assert_eq!(seen, all, "the ranks' samples are disjoint and make the split");
        // Training: as many batches on every rank, the samples left over counted.
        let train = |rank| {
            Loader::from_shards(
                Arc::clone(&index),
                Split::Train,
                Arc::clone(&p),
                LoaderConfig {
                    batch_size: 2,
                    shard: Shard { rank, world: 2 },
                    ..LoaderConfig::training(1)
                },
            )
            .expect("loader")
        };
        for epoch in 0..3 {
            let (a, b) = (train(0), train(1));
            let counts = (a.epoch(epoch).count(), b.epoch(epoch).count());
            assert_eq!(counts.0, counts.1, "epoch {epoch}");
            assert_eq!(counts.0, a.batches_in(epoch));
            assert_eq!(a.unused(epoch), 10 - 4 * counts.0, "epoch {epoch}");
        }
        // Four shards cannot feed five ranks.
        let e = Loader::from_shards(
            Arc::clone(&index),
            Split::Train,
            Arc::clone(&p),
            LoaderConfig { shard: Shard { rank: 0, world: 5 }, ..LoaderConfig::training(1) },
        )
        .expect_err("too few shards")
        .to_string();
        assert!(e.contains("4 shard(s) for 5 ranks"), "{e}");
        // A shard cut short: the error names it.
        let cut = index.path(&index.shards(Split::Train)[1]);
        let bytes = std::fs::read(&cut).expect("read");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("cut");
        let loader = Loader::from_shards(
            Arc::clone(&index),
            Split::Train,
            Arc::clone(&p),
            LoaderConfig { batch_size: 2, ..LoaderConfig::evaluation() },
        )
        .expect("loader");
        let e = loader.epoch(0).find_map(Result::err).expect("an error").to_string();
        assert!(e.contains("000001.tar"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn balanced_sampling_evens_out_the_classes_and_drop_last_counts() {
        let dir = temp("balanced");
        let m = Arc::new(data_set(&dir));
        let p = Arc::new(pipeline(&m, false));
        let config = LoaderConfig { batch_size: 3, balanced: true, ..LoaderConfig::training(1) };
        let loader = Loader::new(Arc::clone(&m), Split::Train, p, config).expect("loader");
        assert_eq!(loader.batches_per_epoch(), 3); // 10 samples, drop_last: 3 full batches
                                                   // The training split holds 9 "a" and 1 "b"; over many epochs both come up about equally.
        let mut b_count = 0;
        let mut total = 0;
        for epoch in 0..400 {
            for i in loader.order(epoch) {
                total += 1;
                b_count += usize::from(m.samples()[i].label.as_deref() == Some("b"));
            }
        }
        let share = b_count as f64 / total as f64;
        assert!((share - 0.5).abs() < 0.03, "class b drawn {share:.3} of the time");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_broken_sample_stops_the_epoch_with_its_id() {
        let dir = temp("broken");
        let m = data_set(&dir);
        std::fs::write(dir.join("i2.png"), b"not a png").expect("corrupt");
        let m = Arc::new(m);
        let loader = Loader::new(
            Arc::clone(&m),
            Split::Train,
            Arc::new(pipeline(&m, false)),
            LoaderConfig { batch_size: 2, ..LoaderConfig::evaluation() },
        )
        .expect("loader");
        let results: Vec<_> = loader.epoch(0).collect();
        assert!(results[0].is_ok());
        // The sample's id, then its cause: the file (the cause is a source, not repeated).
        let err = results[1].as_ref().expect_err("s2 is broken");
        assert_eq!(err.to_string(), "sample \"s2\"");
        let err = mm_data::error::report(err);
        assert!(err.starts_with("sample \"s2\": ") && err.contains("i2.png"), "{err}");
        assert_eq!(results.len(), 2, "the epoch stops at the error");
        // Configuration errors are reported before any work.
        let bad = Loader::new(
            Arc::clone(&m),
            Split::Val,
            Arc::new(pipeline(&m, false)),
            LoaderConfig::evaluation(),
        );
        assert!(bad.expect_err("no val split").to_string().contains("val split"));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn the_decoded_cache_serves_later_epochs_within_its_budget() {
        let dir = temp("cache");
        let m = Arc::new(data_set(&dir));
        let p = Arc::new(pipeline(&m, false));
        let config = LoaderConfig { batch_size: 4, ..LoaderConfig::evaluation() };
        let plain =
            Loader::new(Arc::clone(&m), Split::Train, Arc::clone(&p), config).expect("loader");
        let cached = Loader::new(Arc::clone(&m), Split::Train, Arc::clone(&p), config)
            .expect("loader")
            .with_cache(64 << 20);
        let want = epoch_tensors(&plain, 0);
        let first = epoch_tensors(&cached, 0);
        let cache = cached.cache().expect("cache");
        // 10 images + 9 clips (s3 has no audio) + the frames read: 2, 3 or 4 per sample, at
        // most 3 of them (max_frames): 2+3+3+2+3+3+2+3+3+2 = 26.
        assert_eq!(cache.len(), 10 + 9 + 26);
        assert!(cache.bytes() > 0);
        // With every source file gone, the next epoch still loads, from memory, the same data.
        for entry in std::fs::read_dir(&dir).expect("ls").flatten() {
            std::fs::remove_file(entry.path()).expect("rm");
        }
        let second = epoch_tensors(&cached, 1);
        for ((a, b), c) in want.iter().zip(&first).zip(&second) {
            assert_eq!(a.0, c.0);
            assert!(a.1.equal(&b.1) && a.1.equal(&c.1) && a.2.equal(&c.2) && a.3.equal(&c.3));
        }
        assert!(
            plain.epoch(1).next().expect("a batch").is_err(),
            "without the cache the files are needed"
        );
        // A budget too small for anything keeps nothing.
        let tiny =
            Loader::new(Arc::clone(&m), Split::Train, p, config).expect("loader").with_cache(10);
        assert!(tiny.epoch(0).next().expect("a batch").is_err());
        assert_eq!(tiny.cache().expect("cache").len(), 0);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn dropping_an_epoch_early_stops_its_thread() {
        let dir = temp("drop");
        let m = Arc::new(data_set(&dir));
        let loader = Loader::new(
            Arc::clone(&m),
            Split::Train,
            Arc::new(pipeline(&m, false)),
            LoaderConfig { batch_size: 1, prefetch: 1, ..LoaderConfig::evaluation() },
        )
        .expect("loader");
        let mut batches = loader.epoch(0);
        assert!(batches.next().is_some());
        drop(batches); // must return (join) although 9 batches were never taken
        std::fs::remove_dir_all(dir).ok();
    }
}

/// FLAC, MP3 and Ogg/Vorbis files made by SoX (`tests/data/make_audio_fixtures.sh`): each
/// holds 0.25 s of a 440 Hz tone at half scale, which must come out at its rate, length, level
/// and pitch.
#[test]
fn decodes_flac_mp3_and_vorbis() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    for (file, exact) in [
        ("tone440.flac", true),
        ("tone440_stereo.flac", true),
        ("tone440.mp3", false),
        ("tone440.ogg", false),
    ] {
        let a = mm_data::audio::decode_audio(data.join(file)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.sample_rate, 16000, "{file}");
        if exact {
            assert_eq!(a.samples.len(), 4000, "{file}");
        } else {
            // Lossy codecs add encoder delay and padding.
            assert!(
                (3500..=5200).contains(&a.samples.len()),
                "{file}: {} samples",
                a.samples.len()
            );
        }
        let start = a.samples.iter().position(|s| s.abs() > 0.1).expect("signal");
        let mid = &a.samples[start + 200..start + 3000];
        let rms =
            (mid.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / mid.len() as f64).sqrt();
        assert!((rms - 0.5 / 2f64.sqrt()).abs() < 0.02, "{file}: RMS {rms}");
        let crossings = mid.windows(2).filter(|w| (w[0] < 0.0) != (w[1] < 0.0)).count();
        let expected = 2.0 * 440.0 * mid.len() as f64 / 16000.0;
        assert!(
            (crossings as f64 - expected).abs() <= 3.0,
            "{file}: {crossings} zero crossings, expected ~{expected}"
        );
    }
}

/// A BPE tokenizer trained on the real Flickr8k captions with `tokenizers`, saved as
/// `tokenizer.json`, loaded through mm-data and used in a pipeline: ids are in the vocabulary,
/// and decoding gives back the (lower-cased) caption.
#[test]
fn subword_tokenizer_from_a_tokenizer_json() {
    use tokenizers::models::bpe::{BpeTrainer, BPE};
    use tokenizers::models::TrainerWrapper;
    use tokenizers::{AddedToken, Tokenizer};

    let Some(data) = shared_data() else { return };
    let dir = std::env::temp_dir().join(format!("mm-data-bpe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    // Captions only, 4000 of them: "IMAGE.jpg#N<TAB>caption".
    let captions: Vec<String> = std::fs::read_to_string(data.join("flickr8k/Flickr8k.token.txt"))
        .expect("captions")
        .lines()
        .take(4000)
        .filter_map(|l| l.split_once('\t').map(|(_, c)| c.to_string()))
        .collect();
    let corpus = dir.join("captions.txt");
    std::fs::write(&corpus, captions.join("\n")).expect("write");
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(600)
        .min_frequency(2)
        .special_tokens(vec![AddedToken::from("[PAD]", true), AddedToken::from("[UNK]", true)])
        .build()
        .into();
    let mut tokenizer =
        Tokenizer::new(BPE::builder().unk_token("[UNK]".to_string()).build().expect("bpe"));
    tokenizer.with_normalizer(Some(tokenizers::normalizers::Lowercase));
    tokenizer.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    tokenizer.with_decoder(Some(tokenizers::decoders::bpe::BPEDecoder::default()));
    tokenizer
        .train_from_files(&mut trainer, vec![corpus.to_string_lossy().into_owned()])
        .expect("train");
    let file = dir.join("tokenizer.json");
    tokenizer.save(&file, false).expect("save");

    let tok = mm_data::subword::SubwordTokenizer::from_file(&file).expect("load");
    assert!((300..=600).contains(&tok.vocab_size()), "vocabulary of {}", tok.vocab_size());
    assert_eq!(tok.token_id("[PAD]"), Some(0));
    for caption in captions.iter().skip(3900) {
        let ids = tok.encode(caption).expect("encode");
        assert!(!ids.is_empty() && ids.iter().all(|&i| i >= 0 && (i as usize) < tok.vocab_size()));
        let words = |s: &str| s.to_lowercase().split_whitespace().collect::<Vec<_>>().join(" ");
        let back = tok.decode(&ids).expect("decode");
        // BPE's decoder rejoins subwords; punctuation comes back as separate words.
        assert_eq!(words(&back).replace(' ', ""), words(caption).replace(' ', ""), "{caption}");
    }
    // Through a pipeline: the item's tokens are the encoding, cut to max_tokens.
    {
        use mm_data::manifest::{Manifest, Sample};
        use mm_data::pipeline::{Pipeline, TextEncoder, TextSpec};
        let tok = std::sync::Arc::new(tok.clone());
        let mut m = Manifest::new(&dir);
        m.push(Sample::new("c").with_text(captions[0].clone())).expect("sample");
        let mut p = Pipeline::new(Vec::new());
        p.text = Some(TextSpec {
            encoder: TextEncoder::Subword(std::sync::Arc::clone(&tok)),
            max_tokens: 5,
            augment: Default::default(),
        });
        let item = p.load(&m, 0, 0, false).expect("item");
        let want: Vec<i64> =
            tok.encode(&captions[0]).expect("encode").into_iter().take(5).collect();
        assert_eq!(item.tokens, Some(want));
    }
    // Bad files are errors that name them.
    std::fs::write(dir.join("bad.json"), "{\"not\": \"a tokenizer\"}").expect("write");
    let e = mm_data::subword::SubwordTokenizer::from_file(dir.join("bad.json"))
        .expect_err("bad")
        .to_string();
    assert!(e.contains("bad.json") && e.contains("not a valid tokenizer.json"), "{e}");
    assert!(mm_data::subword::SubwordTokenizer::from_file(dir.join("none.json")).is_err());
    std::fs::remove_dir_all(dir).ok();
}

/// A BERT-style tokenizer (WordPiece with [CLS] ... [SEP] added): texts cut to `max_tokens`
/// keep both special tokens, as transformers' truncation does, and training-time token
/// augmentation never drops or moves them.
#[test]
fn subword_texts_are_cut_and_augmented_around_their_special_tokens() {
    use mm_data::augment::TextAugment;
    use mm_data::manifest::{Manifest, Sample};
    use mm_data::pipeline::{Pipeline, TextEncoder, TextSpec};
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::processors::template::TemplateProcessing;
    use tokenizers::Tokenizer;

    let dir = std::env::temp_dir().join(format!("mm-data-wordpiece-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let words = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "dog", "runs", "on", "the", "beach", "and",
        "barks", ".",
    ];
    let vocab = dir.join("vocab.txt");
    std::fs::write(&vocab, words.join("\n")).expect("vocab.txt");
    let model = WordPiece::from_file(&vocab.to_string_lossy())
        .unk_token("[UNK]".into())
        .build()
        .expect("wordpiece");
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::bert::BertPreTokenizer));
    let template = TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .expect("template")
        .special_tokens(vec![("[CLS]", 2), ("[SEP]", 3)])
        .build()
        .expect("template");
    tokenizer.with_post_processor(Some(template));
    let tok = std::sync::Arc::new(mm_data::subword::SubwordTokenizer::from_tokenizer(tokenizer));
    let text = "a dog runs on the beach and barks .";
    assert_eq!(tok.encode(text).expect("encode"), [2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 3]);
    let (cut, special) = tok.encode_max(text, 6).expect("encode");
    assert_eq!(cut, [2, 4, 5, 6, 7, 3], "cut to 6 with [CLS] and [SEP] kept");
    assert_eq!(special, [true, false, false, false, false, true]);

    let mut m = Manifest::new(&dir);
    m.push(Sample::new("t").with_text(text)).expect("sample");
    let mut p = Pipeline::new(Vec::new());
    let augment = TextAugment { drop: 0.5, swap: 0.5 };
    p.text = Some(TextSpec { encoder: TextEncoder::Subword(tok), max_tokens: 8, augment });
    let evaluation = p.load(&m, 0, 0, false).expect("item").tokens.expect("tokens");
    assert_eq!(evaluation, [2, 4, 5, 6, 7, 8, 9, 3], "no augmentation outside training");
    let mut changed = 0;
    for epoch in 0..40 {
        let t = p.load(&m, 0, epoch, true).expect("item").tokens.expect("tokens");
        assert!(t.len() >= 3 && t.len() <= 8, "{t:?}");
        assert_eq!((t[0], t[t.len() - 1]), (2, 3), "epoch {epoch}: {t:?}");
        assert!(!t[1..t.len() - 1].iter().any(|&i| i == 2 || i == 3), "epoch {epoch}: {t:?}");
        changed += usize::from(t != evaluation);
    }
    assert!(changed > 30, "augmentation changed only {changed} of 40 epochs");
    std::fs::remove_dir_all(dir).ok();
}

/// Inputs that once broke a fuzz target (`fuzz/`, docs/RELIABILITY.md), kept so that they never
/// break anything again: each is decoded, and resampled and turned into log-mel frames when it
/// decodes, as the `audio` target does; a refusal must name the file.
mod fuzz_regressions {
    use std::path::Path;

    use mm_data::audio::{decode_audio_bytes, resample, MAX_SAMPLE_RATE};
    use mm_data::mel::{LogMel, MelConfig};

    #[test]
    fn audio_that_broke_the_fuzzer_decodes_or_is_refused_by_name() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/audio");
        let mel = LogMel::new(&MelConfig::default()).expect("mel");
        let mut refused = 0;
        for entry in std::fs::read_dir(&dir).expect("regression inputs") {
            let path = entry.expect("entry").path();
            match decode_audio_bytes(std::fs::read(&path).expect("read"), &path) {
                Ok(audio) => {
                    let _ = mel.compute(&resample(&audio.samples, audio.sample_rate, 16_000));
                }
                Err(e) => {
                    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
                    refused += 1;
                }
            }
        }
        assert!(refused >= 1);
        // The case itself: a WAV header claiming 838 926 337 samples per second.
        let path = dir.join("wav-rate-838926337-hz");
        let e = decode_audio_bytes(std::fs::read(&path).expect("read"), &path)
            .expect_err("a damaged rate")
            .to_string();
        assert!(
            e.contains("sample rate 838926337 Hz") && e.contains(&MAX_SAMPLE_RATE.to_string()),
            "{e}"
        );
        // A WAV header stating 0 Hz made the WAV reader itself panic (TimeBase 0); it is refused
        // before the reader sees it, from memory and from a file alike.
        let path = dir.join("wav-rate-0-hz");
        let e = decode_audio_bytes(std::fs::read(&path).expect("read"), &path)
            .expect_err("0 Hz")
            .to_string();
        assert!(e.contains("wav-rate-0-hz") && e.contains("1 channels at 0 Hz"), "{e}");
        let e = mm_data::audio::decode_audio(&path).expect_err("0 Hz").to_string();
        assert!(e.contains("1 channels at 0 Hz"), "{e}");
        // An ID3v2 tag that reached `unreachable!` in the decoding library: its panic becomes an
        // error naming the file.
        let path = dir.join("id3v2-unreachable");
        let e = mm_data::audio::decode_audio(&path).expect_err("a broken tag").to_string();
        assert!(
            e.contains("id3v2-unreachable") && e.contains("the audio decoder failed on this file"),
            "{e}"
        );
        // A WAV at 524 369 Hz, whose resampling table would have taken 33 GB: resampled without one.
        let path = dir.join("wav-rate-524369-hz");
        if let Ok(audio) = decode_audio_bytes(std::fs::read(&path).expect("read"), &path) {
            assert_eq!(audio.sample_rate, 524_369);
            let _ = resample(&audio.samples, audio.sample_rate, 16_000);
        }
    }
}
