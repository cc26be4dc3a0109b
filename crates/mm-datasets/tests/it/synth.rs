//! The synthetic data set: determinism, the corruptions the cleaning pass must find, and the
//! ceilings of its tasks checked by training real (small) classifiers on the decoded files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mm_data::clean::{clean, CleanConfig, Reason};
use mm_data::loader::{Batch, Loader, LoaderConfig};
use mm_data::manifest::{Manifest, Split};
use mm_data::mel::MelConfig;
use mm_data::pipeline::{AudioSpec, ImageSpec, Pipeline, TextSpec};
use mm_data::text::{VocabBuilder, WordTokenizer};
use mm_datasets::synth::{
    generate, SynthConfig, SynthSummary, CLASSES, DIRECTIONS, SENTIMENT_CLASSES,
};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// libtorch's random generator is global and tests run in parallel: the tests that train hold
/// this lock and seed it, so that their results do not depend on what runs beside them.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn seeded(seed: i64) -> std::sync::MutexGuard<'static, ()> {
    let guard = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    guard
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mm-synth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Every file under `dir`, relative path to bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).expect("inside").to_path_buf();
                out.insert(rel, std::fs::read(&path).expect("read"));
            }
        }
    }
    out
}

fn small(samples: usize, seed: u64) -> SynthConfig {
    SynthConfig {
        samples,
        image_size: 24,
        frame_size: 16,
        frames: 4,
        duration: 0.4,
        seed,
        ..SynthConfig::default()
    }
}

#[test]
fn the_same_seed_gives_byte_identical_files_whatever_the_thread_count() {
    let (a, b, c) = (temp("det-a"), temp("det-b"), temp("det-c"));
    let config = SynthConfig {
        missing: 0.2,
        corrupt_images: 0.1,
        empty_audio: 0.1,
        empty_text: 0.1,
        ..small(30, 5)
    };
    generate(&a, &config, false).expect("generate a");
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool")
        .install(|| generate(&b, &config, false))
        .expect("generate b");
    let (fa, fb) = (files(&a), files(&b));
    // 30 samples: up to 30 images, 30 WAVs, 120 frames, 5 manifests, truth and summary.
    assert!(fa.len() > 150, "{} files", fa.len());
    assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
    for (path, bytes) in &fa {
        assert!(bytes == &fb[path], "{} differs between runs", path.display());
    }
    generate(&c, &SynthConfig { seed: 6, ..config }, false).expect("generate c");
    let fc = files(&c);
    assert_ne!(fa[Path::new("manifest.jsonl")], fc[Path::new("manifest.jsonl")]);
    assert_ne!(fa[Path::new("frames/s0000_0.png")], fc[Path::new("frames/s0000_0.png")]);
    for d in [a, b, c] {
        std::fs::remove_dir_all(d).expect("clean up");
    }
}

#[test]
fn the_cleaning_pass_finds_exactly_the_corrupted_samples() {
    let dir = temp("corrupt");
    let config = SynthConfig {
        missing: 0.1,
        corrupt_images: 0.05,
        empty_audio: 0.05,
        empty_text: 0.05,
        ..small(200, 9)
    };
    let s = generate(&dir, &config, false).expect("generate");
    // 5 % of the samples that have the modality, rounded.
    let with = |missing: usize| ((200 - missing) as f64 * 0.05).round() as usize;
    assert_eq!(
        (s.corrupt_images.len(), s.empty_audio.len(), s.empty_text.len()),
        (with(s.missing[0]), with(s.missing[1]), with(s.missing[2]))
    );
    assert!(s.missing.iter().all(|m| *m > 5 && *m < 40), "{:?}", s.missing);

    let manifest = Manifest::read(dir.join("manifest.jsonl")).expect("manifest");
    assert_eq!(manifest.samples().iter().filter(|x| x.image.is_none()).count(), s.missing[0]);
    assert_eq!(manifest.samples().iter().filter(|x| x.audio.is_none()).count(), s.missing[1]);
    assert_eq!(manifest.samples().iter().filter(|x| x.text.is_none()).count(), s.missing[2]);
    let (kept, report) = clean(&manifest, &CleanConfig::default()).expect("clean");
    let ids = |reason: Reason| {
        report
            .findings
            .iter()
            .filter(|f| f.reason == reason)
            .map(|f| f.id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(Reason::BadImage), s.corrupt_images);
    assert_eq!(ids(Reason::EmptyAudio), s.empty_audio);
    assert_eq!(ids(Reason::EmptyText), s.empty_text);
    let others: Vec<_> = report
        .findings
        .iter()
        .filter(|f| ![Reason::BadImage, Reason::EmptyAudio, Reason::EmptyText].contains(&f.reason))
        .collect();
    assert!(others.is_empty(), "unexpected findings: {others:?}");
    let mut bad: Vec<&String> =
        s.corrupt_images.iter().chain(&s.empty_audio).chain(&s.empty_text).collect();
    bad.sort();
    bad.dedup();
    assert_eq!(kept.samples().len(), 200 - bad.len());
    std::fs::remove_dir_all(dir).expect("clean up");
}

#[test]
fn an_existing_folder_is_replaced_only_when_asked_and_only_if_it_is_a_synthetic_data_set() {
    let dir = temp("replace");
    let config = small(8, 1);
    generate(&dir, &config, false).expect("first");
    let err = generate(&dir, &config, false).expect_err("refused").to_string();
    assert!(err.contains("already exists") && err.contains("--force"), "{err}");
    generate(&dir, &SynthConfig { samples: 6, ..config.clone() }, true).expect("forced");
    assert_eq!(Manifest::read(dir.join("manifest.jsonl")).expect("manifest").samples().len(), 6);
    // Nothing left of the first run, and no staging folder beside it.
    assert!(!dir.join("images/s0007.png").exists());
    let parent = dir.parent().expect("parent");
    let name = dir.file_name().expect("name").to_string_lossy().into_owned();
    let leftovers: Vec<_> = std::fs::read_dir(parent)
        .expect("list")
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&name) && n != name
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let other = temp("not-synth");
    std::fs::create_dir_all(&other).expect("mkdir");
    std::fs::write(other.join("precious.txt"), "keep me").expect("write");
    let err = generate(&other, &config, true).expect_err("refused").to_string();
    assert!(err.contains("it has no synth.json, so it is not replaced"), "{err}");
    assert_eq!(
        std::fs::read_to_string(other.join("precious.txt")).expect("still there"),
        "keep me"
    );
    let err = generate(&temp("bad"), &SynthConfig { samples: 2, ..config }, false)
        .expect_err("refused")
        .to_string();
    assert!(err.contains("synth.samples"), "{err}");
    for d in [dir, other] {
        std::fs::remove_dir_all(d).expect("clean up");
    }
}

/// A softmax (or, with one output, least-squares) regression trained full-batch with Adam.
fn fit_linear(x: &Tensor, y: &Tensor, outputs: i64, steps: usize) -> impl Fn(&Tensor) -> Tensor {
    let vs = nn::VarStore::new(Device::Cpu);
    let layer = nn::linear(vs.root(), x.size()[1], outputs, Default::default());
    let mut opt = nn::Adam::default().build(&vs, 0.05).expect("adam");
    for _ in 0..steps {
        let out = layer.forward(x);
        let loss = if outputs == 1 {
            out.squeeze_dim(1).mse_loss(y, tch::Reduction::Mean)
        } else {
            out.cross_entropy_for_logits(y)
        };
        opt.backward_step(&loss);
    }
    move |x: &Tensor| layer.forward(x)
}

fn accuracy(logits: &Tensor, y: &Tensor) -> f64 {
    logits.argmax(1, false).eq_tensor(y).to_kind(Kind::Float).mean(Kind::Float).double_value(&[])
}

/// Standardises columns with the training statistics.
fn standardise(train: &Tensor, test: &Tensor) -> (Tensor, Tensor) {
    let mean = train.mean_dim(0, true, Kind::Float);
    let std = train.std_dim(0, true, true) + 1e-5;
    ((train - &mean) / &std, (test - &mean) / &std)
}

/// One batch holding a whole split.
fn whole_split(manifest: &Arc<Manifest>, split: Split, pipeline: &Arc<Pipeline>) -> Batch {
    let config = LoaderConfig { batch_size: 100_000, ..LoaderConfig::evaluation() };
    let loader =
        Loader::new(Arc::clone(manifest), split, Arc::clone(pipeline), config).expect("loader");
    loader.epoch(0).next().expect("one batch").expect("batch")
}

/// Bag of words `[B, V]` from padded token ids.
fn bag_of_words(batch: &Batch, vocab: i64) -> Tensor {
    let (ids, _) = batch.text.as_ref().expect("text");
    let counts = Tensor::zeros([ids.size()[0], vocab], (Kind::Float, Device::Cpu));
    let counts = counts.scatter_add(1, ids, &Tensor::ones(ids.size(), (Kind::Float, Device::Cpu)));
    counts.narrow(1, 1, vocab - 1) // drop <pad>
}

/// Mean log-mel spectrum `[B, n_mels]` (every clip has the same length).
fn mean_spectrum(batch: &Batch) -> Tensor {
    batch.audio.as_ref().expect("audio").0.mean_dim(1, false, Kind::Float)
}

/// A small CNN over images, with an optional extra feature vector joined before the head.
struct Cnn {
    convs: Vec<nn::Conv2D>,
    head: nn::Linear,
}

impl Cnn {
    fn new(vs: &nn::Path, extra: i64, classes: i64) -> Self {
        let c = |i, o| nn::conv2d(vs, i, o, 3, nn::ConvConfig { padding: 1, ..Default::default() });
        Cnn {
            convs: vec![c(3, 16), c(16, 32), c(32, 64)],
            head: nn::linear(vs, 64 + extra, classes, Default::default()),
        }
    }
    fn forward(&self, image: &Tensor, extra: Option<&Tensor>) -> Tensor {
        let mut x = image.shallow_clone();
        for (k, conv) in self.convs.iter().enumerate() {
            x = conv.forward(&x).relu();
            x = if k + 1 < self.convs.len() {
                x.max_pool2d_default(2)
            } else {
                x.amax([2, 3], false)
            };
        }
        let x = match extra {
            Some(e) => Tensor::cat(&[x, e.shallow_clone()], 1),
            None => x,
        };
        self.head.forward(&x)
    }
}

const EPOCHS: usize = 30;

fn train_cnn(
    image: &Tensor,
    extra: Option<&Tensor>,
    y: &Tensor,
    epochs: usize,
) -> (nn::VarStore, Cnn) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let extra_dim = extra.map_or(0, |e| e.size()[1]);
    let cnn = Cnn::new(&vs.root(), extra_dim, 4);
    let mut opt = nn::Adam::default().build(&vs, 3e-3).expect("adam");
    let n = image.size()[0];
    for epoch in 0..epochs {
        let order = Tensor::randperm(n, (Kind::Int64, Device::Cpu));
        for start in (0..n).step_by(32) {
            let idx = order.narrow(0, start, (n - start).min(32));
            let e = extra.map(|e| e.index_select(0, &idx));
            let loss = cnn
                .forward(&image.index_select(0, &idx), e.as_ref())
                .cross_entropy_for_logits(&y.index_select(0, &idx));
            opt.backward_step(&loss);
        }
        let _ = epoch;
    }
    (vs, cnn)
}

/// Task (a): each modality alone stays at or under its ceiling, fusion recovers the label.
#[test]
fn the_main_task_needs_fusion_single_modalities_stay_under_their_ceilings() {
    let _rng = seeded(1);
    let dir = temp("ceilings");
    let config = SynthConfig {
        samples: 1000,
        image_size: 48,
        duration: 0.5,
        val: 0.0,
        test: 0.3,
        seed: 1,
        ..SynthConfig::default()
    };
    let s: SynthSummary = generate(&dir, &config, false).expect("generate");
    let c = &s.ceilings;
    assert!(c.classify_image < 0.6 && c.classify_audio < 0.6, "{c:?}");
    let manifest = Arc::new(Manifest::read(dir.join("manifest.jsonl")).expect("manifest"));

    let tokenizer = WordTokenizer::default();
    let vocab = VocabBuilder::default()
        .build(&tokenizer, manifest.split(Split::Train).filter_map(|s| s.text.as_deref()));
    let vocab_size = vocab.len() as i64;
    let mut p = Pipeline::new(CLASSES.iter().map(|c| c.to_string()).collect());
    p.image = Some(ImageSpec::new((48, 48)));
    p.audio = Some(AudioSpec::new(&MelConfig { n_mels: 40, ..MelConfig::default() }).expect("mel"));
    p.text = Some(TextSpec::words(tokenizer, vocab, 40));
    let p = Arc::new(p);
    let (train, test) =
        (whole_split(&manifest, Split::Train, &p), whole_split(&manifest, Split::Test, &p));
    let (ytr, yte) = (train.label.as_ref().expect("labels"), test.label.as_ref().expect("labels"));

    let (text_tr, text_te) =
        standardise(&bag_of_words(&train, vocab_size), &bag_of_words(&test, vocab_size));
    let (mel_tr, mel_te) = standardise(&mean_spectrum(&train), &mean_spectrum(&test));
    let text_only = accuracy(&fit_linear(&text_tr, ytr, 4, 300)(&text_te), yte);
    let audio_only = accuracy(&fit_linear(&mel_tr, ytr, 4, 300)(&mel_te), yte);
    let both = accuracy(
        &fit_linear(&Tensor::cat(&[&text_tr, &mel_tr], 1), ytr, 4, 300)(&Tensor::cat(
            &[&text_te, &mel_te],
            1,
        )),
        yte,
    );
    let image_tr = train.image.as_ref().expect("images");
    let image_te = test.image.as_ref().expect("images");
    let (_vs, cnn) = train_cnn(image_tr, None, ytr, 10);
    let image_only = tch::no_grad(|| accuracy(&cnn.forward(image_te, None), yte));
    let (_vs, cnn) = train_cnn(image_tr, Some(&mel_tr), ytr, EPOCHS);
    let image_audio = tch::no_grad(|| accuracy(&cnn.forward(image_te, Some(&mel_te)), yte));
    eprintln!(
        "ceilings image/text {:.3}, audio {:.3}; measured: text {text_only:.3}, audio {audio_only:.3}, image {image_only:.3}, text+audio {both:.3}, image+audio {image_audio:.3}",
        c.classify_image, c.classify_audio
    );
    // Alone, each modality reaches (about) its ceiling and no further: it carries half the label.
    // The ceilings are exact for this test split; a model can pass one only by a chance fit of
    // words or noise that happens to hold there, so allow two binomial standard deviations.
    let margin = 2.0 * (0.25 / yte.size()[0] as f64).sqrt();
    assert!(
        text_only <= c.classify_image + margin && text_only > c.classify_image - 0.1,
        "text {text_only}"
    );
    assert!(
        audio_only <= c.classify_audio + margin && audio_only > c.classify_audio - 0.1,
        "audio {audio_only}"
    );
    assert!(image_only <= c.classify_image + margin, "image {image_only}");
    // Together they give the label.
    assert!(both >= 0.95, "text + audio {both}");
    assert!(image_audio >= 0.9, "image + audio {image_audio}");
    std::fs::remove_dir_all(dir).expect("clean up");
}

/// Centroid `(x, y)` of the saturated (coloured) pixels of a frame: where the shape is.
fn centroid(path: &Path) -> (f32, f32) {
    let pixels = mm_data::image::decode_image(path).expect("frame");
    let (h, w) = (pixels.shape()[0], pixels.shape()[1]);
    let (mut sx, mut sy, mut n) = (0.0f32, 0.0f32, 0.0f32);
    for y in 0..h {
        for x in 0..w {
            let p = [pixels[[y, x, 0]], pixels[[y, x, 1]], pixels[[y, x, 2]]];
            let sat =
                i32::from(*p.iter().max().unwrap_or(&0)) - i32::from(*p.iter().min().unwrap_or(&0));
            if sat > 80 {
                sx += x as f32;
                sy += y as f32;
                n += 1.0;
            }
        }
    }
    (sx / n.max(1.0), sy / n.max(1.0))
}

/// Task (c): the direction of motion is read from ordered frames, and not from a bag of them.
#[test]
fn the_video_task_needs_frame_order() {
    let _rng = seeded(2);
    let dir = temp("video");
    let config = SynthConfig {
        samples: 400,
        image_size: 16,
        frame_size: 32,
        duration: 0.3,
        val: 0.0,
        test: 0.3,
        seed: 4,
        ..SynthConfig::default()
    };
    generate(&dir, &config, false).expect("generate");
    let manifest = Manifest::read(dir.join("video.jsonl")).expect("manifest");
    let features = |split: Split, ordered: bool| -> (Tensor, Tensor) {
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for s in manifest.split(split) {
            let (mut xs, mut ys): (Vec<f32>, Vec<f32>) =
                s.frames.iter().map(|f| centroid(&manifest.path(f))).unzip();
            if !ordered {
                // A bag of frames: any order-free summary is a function of the sorted values.
                xs.sort_by(f32::total_cmp);
                ys.sort_by(f32::total_cmp);
            }
            rows.extend(xs.iter().chain(&ys).map(|v| v / 32.0));
            labels.push(
                DIRECTIONS.iter().position(|d| Some(*d) == s.label.as_deref()).expect("direction")
                    as i64,
            );
        }
        let n = labels.len() as i64;
        (Tensor::from_slice(&rows).view([n, -1]), Tensor::from_slice(&labels))
    };
    let (xo, yo) = features(Split::Train, true);
    let (xo_te, yo_te) = features(Split::Test, true);
    let (xb, yb) = features(Split::Train, false);
    let (xb_te, yb_te) = features(Split::Test, false);
    let ordered = accuracy(&fit_linear(&xo, &yo, 4, 500)(&xo_te), &yo_te);
    let bag = accuracy(&fit_linear(&xb, &yb, 4, 500)(&xb_te), &yb_te);
    eprintln!("direction from ordered frames {ordered:.3}, from a bag of frames {bag:.3}");
    assert!(ordered >= 0.95, "ordered {ordered}");
    assert!(bag <= 0.5 + 0.08, "bag {bag}");
    std::fs::remove_dir_all(dir).expect("clean up");
}

/// Task (d): the sentiment target needs the caption and the image.
#[test]
fn the_sentiment_target_needs_caption_and_image() {
    let _rng = seeded(3);
    let dir = temp("sentiment");
    let config = SynthConfig {
        samples: 600,
        image_size: 16,
        frame_size: 16,
        frames: 2,
        duration: 0.3,
        val: 0.0,
        test: 0.3,
        seed: 8,
        ..SynthConfig::default()
    };
    let s = generate(&dir, &config, false).expect("generate");
    let manifest = Arc::new(Manifest::read(dir.join("sentiment.jsonl")).expect("manifest"));
    let tokenizer = WordTokenizer::default();
    let vocab = VocabBuilder::default()
        .build(&tokenizer, manifest.split(Split::Train).filter_map(|s| s.text.as_deref()));
    let vocab_size = vocab.len() as i64;
    let mut p = Pipeline::new(SENTIMENT_CLASSES.iter().map(|c| c.to_string()).collect());
    p.image = Some(ImageSpec::new((16, 16)));
    p.text = Some(TextSpec::words(tokenizer, vocab, 40));
    let p = Arc::new(p);
    let (train, test) =
        (whole_split(&manifest, Split::Train, &p), whole_split(&manifest, Split::Test, &p));
    let target = |b: &Batch| b.target.as_ref().expect("target").0.shallow_clone();
    let brightness = |b: &Batch| {
        b.image
            .as_ref()
            .expect("image")
            .mean_dim([1, 2, 3].as_slice(), false, Kind::Float)
            .unsqueeze(1)
    };
    let (text_tr, text_te) =
        standardise(&bag_of_words(&train, vocab_size), &bag_of_words(&test, vocab_size));
    let (img_tr, img_te) = standardise(&brightness(&train), &brightness(&test));
    let mse = |pred: Tensor, b: &Batch| {
        (pred.squeeze_dim(1) - target(b)).square().mean(Kind::Float).double_value(&[])
    };
    let text_only = mse(fit_linear(&text_tr, &target(&train), 1, 400)(&text_te), &test);
    let image_only = mse(fit_linear(&img_tr, &target(&train), 1, 400)(&img_te), &test);
    let both = mse(
        fit_linear(&Tensor::cat(&[&text_tr, &img_tr], 1), &target(&train), 1, 400)(&Tensor::cat(
            &[&text_te, &img_te],
            1,
        )),
        &test,
    );
    let floor = s.ceilings.sentiment_mse;
    eprintln!("sentiment MSE floors {floor:?}; measured text {text_only:.4}, image {image_only:.4}, both {both:.4}");
    assert!(text_only >= floor[0] * 0.9, "text {text_only}");
    assert!(image_only >= floor[1] * 0.9, "image {image_only}");
    assert!(both < 0.3 * floor[0], "both {both}");
    std::fs::remove_dir_all(dir).expect("clean up");
}

#[test]
fn imbalance_and_prevalence_shape_the_label_distributions() {
    let dir = temp("imbalance");
    let config = SynthConfig { imbalance: 4.0, positive_rate: 0.1, ..small(1200, 2) };
    let s = generate(&dir, &config, false).expect("generate");
    let count = |file: &str, label: &str| {
        let m = Manifest::read(dir.join(file)).expect("manifest");
        m.samples().iter().filter(|x| x.label.as_deref() == Some(label)).count() as f64
    };
    let (first, last) = (count("manifest.jsonl", CLASSES[0]), count("manifest.jsonl", CLASSES[3]));
    assert!((first / last - 4.0).abs() < 1.0, "{first} vs {last}");
    assert_eq!(count("diagnosis.jsonl", "positive"), 120.0);
    // With imbalance the outline-only ceiling rises above one half: it is the larger class of
    // each outline, and the majority class alone gets its share.
    let c = &s.ceilings;
    assert!(
        c.classify_image > 0.55
            && c.classify_majority > 0.35
            && c.classify_majority < c.classify_image,
        "{c:?}"
    );
    std::fs::remove_dir_all(dir).expect("clean up");
}
