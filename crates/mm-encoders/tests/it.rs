//! Integration tests of mm-encoders (one target for the crate, to keep link time down).

use std::path::{Path, PathBuf};

use mm_data::text::{Vocab, VocabBuilder, WordTokenizer};
use mm_encoders::audio::{AudioBackbone, AudioConfig, AudioEncoder};
use mm_encoders::image::{Arch, ImageConfig, ImageEncoder, ResNet, Vgg};
use mm_encoders::tabular::{TabularConfig, TabularEncoder};
use mm_encoders::text::{Context, SeqPooling, TextConfig, TextEncoder};
use mm_encoders::vectors::{load_vectors, nearest, OovPolicy};
use mm_encoders::weights::{load_safetensors, save_safetensors, LoadOptions};
use mm_encoders::{build, BuildContext, Encoder, EncoderConfig, Input};
use mm_seq::rnn::{CellKind, RnnConfig};
use mm_seq::transformer::TransformerConfig;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

#[path = "it/pretrained.rs"]
mod pretrained;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mm-enc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

/// The real data sets beside the repository; CI always has them (a missing folder fails there).
fn shared_data() -> Option<PathBuf> {
    let dir = std::env::var_os("MM_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(std::env::var_os("CI").is_none(), "CI must have the shared data at {}", dir.display());
    eprintln!("no shared data at {}: skipped", dir.display());
    None
}

fn names_and_shapes(vs: &nn::VarStore, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = vs
        .variables()
        .into_iter()
        .filter_map(|(k, t)| k.strip_prefix(prefix).map(|k| format!("{k} {:?}", t.size())))
        .collect();
    v.sort();
    v
}

fn fixture(arch: &str) -> Vec<String> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/torchvision_{arch}.txt"));
    let mut v: Vec<String> =
        std::fs::read_to_string(path).expect("fixture").lines().map(str::to_string).collect();
    v.sort();
    v
}

/// The parameter and buffer names (and shapes) equal torchvision's, so its state dicts load
/// as they are. The fixtures come from `tests/data/torchvision_names.py`.
#[test]
fn image_networks_have_torchvisions_names_and_shapes() {
    for (arch, depth) in [("resnet18", 18), ("resnet50", 50)] {
        let vs = nn::VarStore::new(Device::Cpu);
        ResNet::new(&(vs.root() / "m"), depth, 3, Some(1000)).expect("resnet");
        assert_eq!(names_and_shapes(&vs, "m."), fixture(arch), "{arch}");
    }
    let vs = nn::VarStore::new(Device::Cpu);
    Vgg::new(&(vs.root() / "m"), 11, 3, Some(1000)).expect("vgg");
    assert_eq!(names_and_shapes(&vs, "m."), fixture("vgg11"));
}

fn grads_reach_every_trainable_parameter(vs: &nn::VarStore, encoder: &dyn Encoder, input: &Input) {
    let out = encoder.forward_t(input, true);
    let seq_loss = out.seq.as_ref().map(|(seq, _)| seq.square().mean(Kind::Float));
    let loss = match seq_loss {
        Some(s) => out.pooled.square().mean(Kind::Float) + s,
        None => out.pooled.square().mean(Kind::Float),
    };
    loss.backward();
    for (name, var) in vs.variables() {
        if var.requires_grad() {
            let g = var.grad();
            assert!(
                g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "{encoder:?}: no gradient reaches {name}"
            );
        }
    }
}

#[test]
fn every_encoder_gives_the_documented_shapes_and_trains_every_parameter() {
    tch::manual_seed(0);
    let f = (Kind::Float, Device::Cpu);
    let cases: Vec<(EncoderConfig, Input, BuildContext, i64)> = vec![
        (
            toml::from_str("kind = \"image\"\narch = \"resnet18\"").expect("toml"),
            Input::dense(Tensor::randn([2, 3, 64, 64], f)),
            BuildContext::default(),
            512,
        ),
        (toml::from_str("kind = \"image\"\narch = \"lenet\"\nin_channels = 1").expect("toml"), Input::dense(Tensor::randn([3, 1, 28, 28], f)), BuildContext::default(), 84),
        (
            toml::from_str("kind = \"text\"\ndim = 16\npooling = \"attention\"\ncontext = { type = \"rnn\", cell = \"lstm\", hidden = 8, bidirectional = true }").expect("toml"),
            Input::sequence(Tensor::from_slice(&[3i64, 4, 5, 0, 6, 7, 0, 0]).view([2, 4]), Tensor::from_slice(&[3i64, 2])),
            BuildContext { vocab_size: Some(10), ..Default::default() },
            16,
        ),
        (
            toml::from_str("kind = \"text\"\ndim = 16\npooling = \"mean\"\ncontext = { type = \"transformer\", d_model = 16, heads = 2, layers = 1, ff = 32 }").expect("toml"),
            Input::sequence(Tensor::from_slice(&[3i64, 4, 5, 0, 6, 7, 0, 0]).view([2, 4]), Tensor::from_slice(&[3i64, 2])),
            BuildContext { vocab_size: Some(10), ..Default::default() },
            16,
        ),
        (
            toml::from_str("kind = \"audio\"\npooling = \"last\"\nbackbone = { type = \"rnn\", cell = \"gru\", hidden = 12, layers = 2, bidirectional = true }").expect("toml"),
            Input::sequence(Tensor::randn([2, 9, 20], f), Tensor::from_slice(&[9i64, 5])),
            BuildContext { input_dim: Some(20), ..Default::default() },
            24,
        ),
        (
            toml::from_str("kind = \"audio\"\npooling = \"max\"\nbackbone = { type = \"cnn\", channels = [4, 8] }\nproject = 6").expect("toml"),
            Input::sequence(Tensor::randn([2, 9, 20], f), Tensor::from_slice(&[9i64, 5])),
            BuildContext { input_dim: Some(20), ..Default::default() },
            6,
        ),
        (
            toml::from_str("kind = \"tabular\"\nhidden = [16, 8]\nout = 4").expect("toml"),
            Input::dense(Tensor::randn([5, 6], f)),
            BuildContext { input_dim: Some(6), ..Default::default() },
            4,
        ),
    ];
    for (config, input, ctx, dim) in cases {
        let vs = nn::VarStore::new(Device::Cpu);
        let encoder = build(&(vs.root() / "enc"), &config, &ctx).expect("build");
        assert_eq!(encoder.output_dim(), dim, "{config:?}");
        let out = encoder.forward_t(&input, false);
        let b = input.values.size()[0];
        assert_eq!(out.pooled.size(), [b, dim], "{config:?}");
        assert_eq!(out.pooled.kind(), Kind::Float);
        if let Some((seq, mask)) = &out.seq {
            assert_eq!(seq.size()[0], b);
            assert_eq!(seq.size()[2], dim);
            assert_eq!(mask.size(), seq.size()[..2]);
            assert_eq!(mask.kind(), Kind::Bool);
        }
        grads_reach_every_trainable_parameter(&vs, encoder.as_ref(), &input);
    }
    // Unknown keys and missing context are errors that say what is wrong.
    let e = toml::from_str::<EncoderConfig>("kind = \"image\"\narch = \"resnet18\"\nfrezee = true")
        .expect_err("typo")
        .to_string();
    assert!(e.contains("frezee"), "{e}");
    let vs = nn::VarStore::new(Device::Cpu);
    let config: EncoderConfig = toml::from_str("kind = \"audio\"").expect("toml");
    let e =
        build(&vs.root(), &config, &BuildContext::default()).expect_err("no mel bins").to_string();
    assert!(e.contains("mel bins"), "{e}");
}

/// Padding never changes a valid sample's encoding, for the recurrent and the convolutional
/// audio encoders and the text encoders.
#[test]
fn padding_does_not_change_sequence_encoders() {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let rnn =
        RnnConfig { cell: CellKind::Lstm, hidden: 6, layers: 2, bidirectional: true, dropout: 0.0 };
    let encoders: Vec<Box<dyn Encoder>> = vec![
        Box::new(
            AudioEncoder::new(
                &(&root / "a"),
                &AudioConfig {
                    backbone: AudioBackbone::Rnn(rnn.clone()),
                    pooling: SeqPooling::Attention,
                    ..Default::default()
                },
                5,
            )
            .expect("a"),
        ),
        Box::new(
            AudioEncoder::new(
                &(&root / "b"),
                &AudioConfig {
                    backbone: AudioBackbone::Cnn { channels: vec![3, 4], rnn: None },
                    pooling: SeqPooling::Mean,
                    ..Default::default()
                },
                5,
            )
            .expect("b"),
        ),
    ];
    let xs = Tensor::randn([3, 11, 5], (Kind::Float, Device::Cpu));
    let lengths = [11i64, 7, 4];
    let mask = mm_seq::lengths_to_mask(&Tensor::from_slice(&lengths), 11).unsqueeze(-1);
    let padded =
        xs.where_self(&mask, &(Tensor::randn([3, 11, 5], (Kind::Float, Device::Cpu)) * 50.0));
    for e in &encoders {
        let batch = tch::no_grad(|| {
            e.forward_t(
                &Input::sequence(padded.shallow_clone(), Tensor::from_slice(&lengths)),
                false,
            )
            .pooled
        });
        for (i, &n) in lengths.iter().enumerate() {
            let alone = tch::no_grad(|| {
                e.forward_t(
                    &Input::sequence(
                        xs.narrow(0, i as i64, 1).narrow(1, 0, n),
                        Tensor::from_slice(&[n]),
                    ),
                    false,
                )
                .pooled
            });
            let d = (batch.get(i as i64) - alone.get(0)).abs().max().double_value(&[]);
            assert!(d < 1e-5, "{e:?}: sample {i} differs by {d}");
        }
    }
    let text = TextEncoder::new(
        &(&root / "t"),
        &TextConfig {
            dim: Some(8),
            context: Context::Rnn(rnn),
            pooling: SeqPooling::Max,
            dropout: 0.0,
            ..Default::default()
        },
        20,
        None,
    )
    .expect("text");
    let ids = Tensor::from_slice(&[5i64, 6, 7, 8, 9, 10, 11, 12]).view([2, 4]);
    let batch = tch::no_grad(|| {
        text.forward_t(&Input::sequence(ids.shallow_clone(), Tensor::from_slice(&[4i64, 2])), false)
            .pooled
    });
    let alone = tch::no_grad(|| {
        text.forward_t(
            &Input::sequence(ids.narrow(0, 1, 1).narrow(1, 0, 2), Tensor::from_slice(&[2i64])),
            false,
        )
        .pooled
    });
    assert!((batch.get(1) - alone.get(0)).abs().max().double_value(&[]) < 1e-5);
}

#[test]
fn saved_weights_reload_to_identical_outputs_and_bad_files_name_every_problem() {
    tch::manual_seed(2);
    let dir = temp("weights");
    let config = ImageConfig::new(Arch::Resnet18);
    let vs = nn::VarStore::new(Device::Cpu);
    let a = ImageEncoder::new(&(vs.root() / "image"), &config).expect("a");
    // A training-mode pass moves the batch-norm statistics away from their initial values.
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let _ = tch::no_grad(|| Encoder::forward_t(&a, &Input::dense(x.shallow_clone()), true));
    let file = dir.join("resnet18.safetensors");
    save_safetensors(&vs, &file, "image.").expect("save");
    let vs2 = nn::VarStore::new(Device::Cpu);
    let b = ImageEncoder::new(&(vs2.root() / "enc"), &config).expect("b");
    let report =
        load_safetensors(&vs2, &file, &LoadOptions { prefix: "enc.".into(), ..Default::default() })
            .expect("load");
    assert_eq!(
        report.loaded, 100,
        "every parameter and batch-norm statistic (ResNet-18 without its fc)"
    );
    let (ya, yb) = tch::no_grad(|| {
        (
            Encoder::forward_t(&a, &Input::dense(x.shallow_clone()), false).pooled,
            Encoder::forward_t(&b, &Input::dense(x.shallow_clone()), false).pooled,
        )
    });
    assert_eq!((ya - yb).abs().max().double_value(&[]), 0.0);

    // A file with one tensor missing, one too many and one of the wrong shape.
    let mut named: Vec<(String, Tensor)> = Tensor::read_safetensors(&file).expect("read");
    named.retain(|(n, _)| n != "layer1.0.conv1.weight");
    named.push(("layer9.0.conv1.weight".into(), Tensor::zeros([2, 2], (Kind::Float, Device::Cpu))));
    for (n, t) in named.iter_mut() {
        if n == "fc.weight" || n == "bn1.bias" {
            *t = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        }
    }
    named.push(("fc.weight".into(), Tensor::zeros([1000, 512], (Kind::Float, Device::Cpu))));
    named.push(("bn1.num_batches_tracked".into(), Tensor::zeros([], (Kind::Int64, Device::Cpu))));
    let bad = dir.join("bad.safetensors");
    Tensor::write_safetensors(&named, &bad).expect("write");
    let before = vs2.variables()["enc.bn1.bias"].copy();
    let options = LoadOptions {
        prefix: "enc.".into(),
        skip: ImageEncoder::head_names(Arch::Resnet18),
        ..Default::default()
    };
    let e = load_safetensors(&vs2, &bad, &options).expect_err("bad file").to_string();
    assert!(e.contains("missing: layer1.0.conv1.weight"), "{e}");
    assert!(e.contains("unexpected: layer9.0.conv1.weight"), "{e}");
    assert!(e.contains("wrong shape: bn1.bias: the file has [3], the model [64]"), "{e}");
    assert!(
        !e.contains("fc.weight") && !e.contains("num_batches_tracked"),
        "skipped names are not problems: {e}"
    );
    assert_eq!(
        (vs2.variables()["enc.bn1.bias"].copy() - before).abs().max().double_value(&[]),
        0.0,
        "nothing changes on failure"
    );
    let e = load_safetensors(&vs2, &dir.join("none.safetensors"), &options)
        .expect_err("missing file")
        .to_string();
    assert!(e.contains("none.safetensors") && e.contains("no such file"), "{e}");
    std::fs::remove_dir_all(dir).expect("clean up");
}

#[test]
fn a_frozen_backbone_does_not_move_and_keeps_its_statistics() {
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let config: EncoderConfig =
        toml::from_str("kind = \"image\"\narch = \"resnet18\"\nfreeze = true\nproject = 8")
            .expect("toml");
    let enc = build(&(vs.root() / "img"), &config, &BuildContext::default()).expect("build");
    let before: Vec<(String, Tensor)> =
        vs.variables().into_iter().map(|(k, v)| (k, v.copy())).collect();
    let mut opt = nn::Sgd::default().build(&vs, 0.1).expect("sgd");
    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu)) * 3.0 + 1.0;
    opt.backward_step(&enc.forward_t(&Input::dense(x), true).pooled.square().mean(Kind::Float));
    let after = vs.variables();
    for (name, old) in &before {
        let moved = (&after[name] - old).abs().max().double_value(&[]) > 0.0;
        assert_eq!(moved, name.starts_with("img.proj."), "{name}: moved = {moved}");
    }
    enc.set_backbone_trainable(true);
    assert!(after["img.layer1.0.conv1.weight"].requires_grad());
}

fn glove_vocab(glove: &Path) -> Vocab {
    let text = std::fs::read_to_string(glove).expect("glove");
    let words: Vec<&str> = text.lines().filter_map(|l| l.split(' ').next()).collect();
    let mut texts: Vec<&str> = words.clone();
    texts.push("zqxjkvw"); // not in GloVe
    VocabBuilder::default().build(&WordTokenizer::default(), texts)
}

/// Real GloVe vectors: neighbours make sense, and word2vec's text and binary formats of the same
/// vectors load to the same matrix.
#[test]
fn glove_and_word2vec_vectors_load_for_a_vocabulary() {
    let Some(data) = shared_data() else { return };
    let glove = data.join("glove/glove.6B.50d.top20k.txt");
    let vocab = glove_vocab(&glove);
    let v = load_vectors(&glove, &vocab, OovPolicy::Mean, 0).expect("glove");
    assert_eq!(v.dim, 50);
    assert_eq!(v.read, 20_000);
    assert!(
        v.missing.contains(&"zqxjkvw".to_string()),
        "{:?}",
        &v.missing[..v.missing.len().min(10)]
    );
    assert!(v.found > 19_000, "found {}", v.found);
    let king: Vec<String> = nearest(&v, &vocab, "king", 10).into_iter().map(|(w, _)| w).collect();
    eprintln!("nearest to king: {king:?}");
    assert!(king.iter().any(|w| w == "queen" || w == "prince"), "{king:?}");
    // The unknown word's row is the mean of the found vectors (the policy), as is <unk>'s.
    let oov = v.matrix.get(vocab.id("zqxjkvw"));
    assert!((oov - v.matrix.get(1)).abs().max().double_value(&[]) < 1e-6);
    assert_eq!(v.matrix.get(0).abs().sum(Kind::Float).double_value(&[]), 0.0, "<pad> is zeros");

    // The first 300 GloVe entries as word2vec text and binary files.
    let dir = temp("w2v");
    let all = std::fs::read_to_string(&glove).expect("glove");
    let lines: Vec<&str> = all.lines().take(300).collect();
    let small = VocabBuilder::default()
        .build(&WordTokenizer::default(), lines.iter().map(|l| l.split(' ').next().unwrap_or("")));
    let mut text = format!("{} 50\n", lines.len());
    let mut binary = format!("{} 50\n", lines.len()).into_bytes();
    for l in &lines {
        text.push_str(l);
        text.push('\n');
        let mut fields = l.split(' ');
        let word = fields.next().unwrap_or("");
        binary.extend_from_slice(word.as_bytes());
        binary.push(b' ');
        for x in fields {
            binary.extend_from_slice(&x.parse::<f32>().expect("float").to_le_bytes());
        }
        binary.push(b'\n');
    }
    std::fs::write(dir.join("g.txt"), lines.join("\n")).expect("write");
    std::fs::write(dir.join("w.txt"), &text).expect("write");
    std::fs::write(dir.join("w.bin"), &binary).expect("write");
    let from_glove = load_vectors(&dir.join("g.txt"), &small, OovPolicy::Zero, 0).expect("glove");
    let from_text = load_vectors(&dir.join("w.txt"), &small, OovPolicy::Zero, 0).expect("w2v text");
    let from_bin = load_vectors(&dir.join("w.bin"), &small, OovPolicy::Zero, 0).expect("w2v bin");
    assert!(
        from_text.found > 250
            && from_text.found == from_glove.found
            && from_bin.found == from_glove.found
    );
    assert_eq!((&from_glove.matrix - &from_text.matrix).abs().max().double_value(&[]), 0.0);
    assert_eq!((&from_glove.matrix - &from_bin.matrix).abs().max().double_value(&[]), 0.0);
    // Damaged files: the error names the line or entry.
    std::fs::write(dir.join("bad.txt"), "the 0.1 0.2\nof 0.3\n").expect("write");
    let e = load_vectors(&dir.join("bad.txt"), &small, OovPolicy::Zero, 0)
        .expect_err("bad")
        .to_string();
    assert!(e.contains("bad.txt:2") && e.contains("expected 2"), "{e}");
    std::fs::write(dir.join("cut.bin"), &binary[..binary.len() / 2]).expect("write");
    let e = load_vectors(&dir.join("cut.bin"), &small, OovPolicy::Zero, 0)
        .expect_err("cut")
        .to_string();
    assert!(e.contains("cut.bin:") && (e.contains("truncated") || e.contains("ends after")), "{e}");

    // Built from configuration, with the vectors frozen: the embeddings are the vectors.
    let config: EncoderConfig = toml::from_str(&format!(
        "kind = \"text\"\nvectors = {:?}\nfreeze = true\npooling = \"mean\"",
        glove.display().to_string()
    ))
    .expect("toml");
    let vs = nn::VarStore::new(Device::Cpu);
    let enc = build(
        &(vs.root() / "text"),
        &config,
        &BuildContext { vocab: Some(&vocab), ..Default::default() },
    )
    .expect("text encoder");
    assert_eq!(enc.output_dim(), 50);
    let emb = &vs.variables()["text.embedding.weight"];
    assert!(!emb.requires_grad());
    assert_eq!((emb - &v.matrix).abs().max().double_value(&[]), 0.0);
    std::fs::remove_dir_all(dir).expect("clean up");
}

#[test]
fn a_transformer_text_encoder_runs_over_subword_ids_and_tabular_records_encode() {
    tch::manual_seed(4);
    let vs = nn::VarStore::new(Device::Cpu);
    let config = TextConfig {
        dim: Some(16),
        context: Context::Transformer(TransformerConfig {
            d_model: 16,
            heads: 4,
            layers: 2,
            ff: 32,
            ..Default::default()
        }),
        pooling: SeqPooling::Attention,
        ..Default::default()
    };
    let enc = TextEncoder::new(&(vs.root() / "bert"), &config, 1000, None).expect("text");
    let ids = Tensor::randint(1000, [4, 12], (Kind::Int64, Device::Cpu));
    let out = enc.forward_t(&Input::sequence(ids, Tensor::from_slice(&[12i64, 9, 3, 1])), false);
    assert_eq!(out.pooled.size(), [4, 16]);
    let mlp = TabularEncoder::new(&(vs.root() / "mlp"), &TabularConfig::default(), 6).expect("mlp");
    let x = Tensor::randn([8, 6], (Kind::Float, Device::Cpu));
    let (a, b) = (
        mlp.forward_t(&Input::dense(x.shallow_clone()), false).pooled,
        mlp.forward_t(&Input::dense(x), false).pooled,
    );
    assert_eq!(a.size(), [8, 64]);
    assert_eq!((a - b).abs().max().double_value(&[]), 0.0, "evaluation is deterministic");
}

/// The video encoder: shapes, padding (padded frames never reach the result), and a frame
/// order that matters with a sequence model and not without.
#[test]
fn video_encoders_pool_frames_with_or_without_order() {
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let ordered: EncoderConfig = toml::from_str("kind = \"video\"\nframe = { arch = \"lenet\" }\nseq = { type = \"rnn\", cell = \"gru\", hidden = 12 }\npooling = \"last\"").expect("toml");
    let bag: EncoderConfig = toml::from_str(
        "kind = \"video\"\nframe = { arch = \"lenet\" }\npooling = \"mean\"\nproject = 6",
    )
    .expect("toml");
    let a = build(&(vs.root() / "a"), &ordered, &BuildContext::default()).expect("ordered");
    let b = build(&(vs.root() / "b"), &bag, &BuildContext::default()).expect("bag");
    let frames = Tensor::rand([2, 5, 3, 28, 28], (Kind::Float, Device::Cpu));
    let lengths = Tensor::from_slice(&[5i64, 3]);
    let reversed = frames.narrow(0, 1, 1).narrow(1, 0, 3).flip([1]);
    for (enc, dim, order_matters) in [(&a, 12, true), (&b, 6, false)] {
        let out = tch::no_grad(|| {
            enc.forward_t(&Input::sequence(frames.shallow_clone(), lengths.shallow_clone()), false)
                .pooled
        });
        assert_eq!(out.size(), [2, dim]);
        // Sample 1 alone (3 frames) equals its padded row; reversed, it differs only with order.
        let alone = tch::no_grad(|| {
            enc.forward_t(
                &Input::sequence(
                    frames.narrow(0, 1, 1).narrow(1, 0, 3),
                    Tensor::from_slice(&[3i64]),
                ),
                false,
            )
            .pooled
        });
        assert!((out.get(1) - alone.get(0)).abs().max().double_value(&[]) < 1e-5);
        let rev = tch::no_grad(|| {
            enc.forward_t(
                &Input::sequence(reversed.shallow_clone(), Tensor::from_slice(&[3i64])),
                false,
            )
            .pooled
        });
        let d = (rev.get(0) - alone.get(0)).abs().max().double_value(&[]);
        assert_eq!(d > 1e-6, order_matters, "order changes the output by {d}");
    }
    let e = toml::from_str::<EncoderConfig>(
        "kind = \"video\"\nframe = { arch = \"lenet\" }\npooling = \"last\"",
    )
    .map_err(|e| e.to_string())
    .and_then(|c| {
        build(&vs.root(), &c, &BuildContext::default()).map(|_| ()).map_err(|e| e.to_string())
    });
    assert!(e.expect_err("last without seq").contains("needs a sequence model"));
}

/// Inputs that once broke a fuzz target (`fuzz/`, docs/RELIABILITY.md), kept so that they
/// never break anything again: each file of `tests/fuzz/vectors` read as GloVe text and as
/// word2vec binary gives an error that names the file, within bounded memory.
#[test]
fn word_vector_files_that_broke_the_fuzzer_are_refused() {
    let vocab = VocabBuilder::default().build(&WordTokenizer::default(), ["the cat sat"]);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/vectors");
    let scratch = temp("fuzz-vectors");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("regression inputs") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
        for name in ["v.txt", "v.bin"] {
            let file = scratch.join(name);
            std::fs::write(&file, &bytes[1..]).expect("write"); // the target's first byte picks the format
            if let Err(e) = load_vectors(&file, &vocab, OovPolicy::Zero, 0) {
                assert!(e.to_string().contains(name), "{e}");
            }
        }
        seen += 1;
    }
    assert!(seen >= 1);
    // The case itself: a header announcing 6 666 666 666 numbers per vector.
    let file = scratch.join("huge.txt");
    std::fs::write(&file, "666666666 6666666666\n").expect("write");
    let e =
        load_vectors(&file, &vocab, OovPolicy::Zero, 0).expect_err("a huge dimension").to_string();
    assert!(e.contains("more than the 16384 accepted") && e.contains("huge.txt:1"), "{e}");
    std::fs::write(&file, format!("the {}\n", vec!["0"; 20_000].join(" "))).expect("write");
    let e = load_vectors(&file, &vocab, OovPolicy::Zero, 0)
        .expect_err("a huge first vector")
        .to_string();
    assert!(e.contains("20000 numbers"), "{e}");
}
