//! Pretrained weights against their reference implementations.
//!
//! The golden files in `tests/data/pretrained/` come from `make_golden.py` (torchvision 0.28 and
//! transformers, in evaluation mode). No weights are committed: every tensor is given by a
//! formula both sides compute (`formula_values`), so each test writes the weights file itself,
//! in the naming of the library that publishes such files (timm's for VGG, transformers'
//! pre-training names for BERT), loads it through the encoders' own loading path and compares
//! the outputs with the reference's.
//!
//! With real weights fetched (`cargo xtask fetch-weights resnet50 bert-base-uncased`) and their
//! reference outputs written (`make_golden.py --real data`), `real_weights_match_their_reference`
//! compares those too; without them it says it skips.

use std::path::{Path, PathBuf};

use mm_data::subword::SubwordTokenizer;
use mm_encoders::formula::formula_values;
use mm_encoders::image::{Arch, ImageConfig};
use mm_encoders::{build, BuildContext, Encoder, EncoderConfig, Input};
use serde_json::Value;
use tch::{nn, Device, Kind, Tensor};

use super::temp;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pretrained")
}

fn golden(name: &str) -> Value {
    let path = data_dir().join(format!("golden_{name}.json"));
    serde_json::from_slice(&std::fs::read(&path).expect("golden file")).expect("golden JSON")
}

/// A listed tensor (`{name, shape, offset, scale}`) made from the formula, in f32 arithmetic as
/// numpy does it: `u * scale + offset`.
fn formula_tensor(entry: &Value) -> (String, Tensor) {
    let name = entry["name"].as_str().expect("name").to_string();
    let shape: Vec<i64> = entry["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_i64().expect("dim"))
        .collect();
    let (offset, scale) = (
        entry["offset"].as_f64().expect("offset") as f32,
        entry["scale"].as_f64().expect("scale") as f32,
    );
    let t = mm_encoders::formula::formula_tensor(&name, &shape, offset, scale);
    (name, t)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("numbers").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

/// Largest difference from the reference, relative to the reference's largest magnitude.
fn relative_gap(ours: &Tensor, reference: &[f32]) -> f64 {
    let r = Tensor::from_slice(reference).view(ours.size().as_slice());
    let gap = (ours.to_kind(Kind::Float) - &r).abs().max().double_value(&[]);
    gap / r.abs().max().double_value(&[]).max(1.0)
}

/// The formula gives make_golden.py's numbers (printed by it with
/// `formula_values("input", 4)` and `formula_values("layer1.0.conv1.weight", 3)`).
#[test]
fn the_formula_is_make_golden_pys() {
    // Python printed them as doubles; each is an f32 exactly.
    let wide = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
    assert_eq!(
        wide(formula_values("input", 4)),
        [-0.8043633699417114, 0.30472075939178467, -0.5927515029907227, -0.45111072063446045]
    );
    assert_eq!(
        wide(formula_values("layer1.0.conv1.weight", 3)),
        [0.6828863620758057, 0.1464214324951172, 0.7011574506759644]
    );
}

/// ResNet-18, ResNet-50 (torchvision's names, with its classifier and batch-norm counters in
/// the file) and VGG-16 (timm's names and shapes) load through `EncoderConfig::load_weights`
/// and give torchvision's features for the same input.
#[test]
fn image_encoders_match_torchvision_given_its_weights() {
    for (name, arch) in
        [("resnet18", Arch::Resnet18), ("resnet50", Arch::Resnet50), ("vgg16", Arch::Vgg16)]
    {
        let g = golden(name);
        let dir = temp(&format!("pretrained-{name}"));
        let file = dir.join("model.safetensors");
        let mut tensors: Vec<(String, Tensor)> =
            g["tensors"].as_array().expect("tensors").iter().map(formula_tensor).collect();
        if name.starts_with("resnet") {
            // What a torchvision state dict also holds: one step counter per batch norm.
            let counters: Vec<(String, Tensor)> = tensors
                .iter()
                .filter_map(|(n, _)| {
                    n.strip_suffix(".running_var")
                        .map(|bn| (format!("{bn}.num_batches_tracked"), Tensor::from(7i64)))
                })
                .collect();
            tensors.extend(counters);
        }
        Tensor::write_safetensors(&tensors, &file).expect("write weights");
        drop(tensors);

        let config = EncoderConfig::Image(ImageConfig {
            weights: Some(file.clone()),
            ..ImageConfig::new(arch)
        });
        let vs = nn::VarStore::new(Device::Cpu);
        let encoder =
            build(&(vs.root() / "image"), &config, &BuildContext::default()).expect("encoder");
        let report =
            config.load_weights(&vs, "image.").expect("weights load").expect("weights configured");
        let skipped: Vec<&str> = report.skipped.iter().map(|(n, _)| n.as_str()).collect();
        let head = if name == "vgg16" {
            vec!["head.fc.bias", "head.fc.weight"]
        } else {
            vec!["fc.bias", "fc.weight"]
        };
        for h in &head {
            assert!(skipped.contains(h), "{name}: {h} not skipped: {}", report.summary());
        }
        if name.starts_with("resnet") {
            assert!(
                skipped.iter().any(|s| s.ends_with("num_batches_tracked")),
                "{}",
                report.summary()
            );
            assert!(report.summary().contains("batch-norm step counters"), "{}", report.summary());
        }
        assert_eq!(
            report.loaded,
            vs.variables().len(),
            "{name}: every variable filled ({})",
            report.summary()
        );

        let (_, x) = formula_tensor(&g["input"]);
        let y = tch::no_grad(|| encoder.forward_t(&Input::dense(x), false).pooled);
        let shape: Vec<i64> = g["output_shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|d| d.as_i64().expect("dim"))
            .collect();
        assert_eq!(y.size(), shape, "{name}");
        let gap = relative_gap(&y, &floats(&g["output"]));
        eprintln!(
            "{name}: largest gap to torchvision {gap:.2e} of the output's scale ({})",
            report.summary()
        );
        assert!(gap < 1e-4, "{name} differs from torchvision by {gap:.2e}");
        std::fs::remove_dir_all(dir).ok();
    }
}

/// A BERT folder as transformers saves a pre-training model: `bert.` before every name,
/// TensorFlow-era `LayerNorm.gamma`/`beta`, the heads `cls.*` and the `position_ids` buffer.
fn write_bert_folder(g: &Value, dir: &Path) {
    let mut tensors: Vec<(String, Tensor)> = g["tensors"]
        .as_array()
        .expect("tensors")
        .iter()
        .map(|e| {
            let (n, t) = formula_tensor(e);
            let n = n
                .replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta");
            (format!("bert.{n}"), t)
        })
        .collect();
    let vocab = tensors
        .iter()
        .find(|(n, _)| n == "bert.embeddings.word_embeddings.weight")
        .expect("word embeddings")
        .1
        .size()[0];
    tensors
        .push(("cls.predictions.bias".into(), Tensor::zeros([vocab], (Kind::Float, Device::Cpu))));
    tensors.push((
        "bert.embeddings.position_ids".into(),
        Tensor::arange(40, (Kind::Int64, Device::Cpu)).unsqueeze(0),
    ));
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).expect("write weights");
    std::fs::copy(data_dir().join("bert_tiny/config.json"), dir.join("config.json"))
        .expect("config");
}

/// A tiny BERT with transformers' names loads as `kind = "bert"` from a folder, tokenises as
/// `BertTokenizerFast` does (cut texts keep [CLS] and [SEP]) and gives `BertModel`'s
/// `last_hidden_state` and `pooler_output`.
#[test]
fn bert_matches_transformers_given_its_weights_and_tokenizer() {
    let g = golden("bert_tiny");
    let dir = temp("pretrained-bert");
    write_bert_folder(&g, &dir);
    let tok = SubwordTokenizer::from_file(data_dir().join("bert_tiny/tokenizer.json"))
        .expect("tokenizer");
    let sentences: Vec<&str> = g["sentences"]
        .as_array()
        .expect("sentences")
        .iter()
        .map(|s| s.as_str().expect("text"))
        .collect();
    let want_ids: Vec<Vec<i64>> = serde_json::from_value(g["input_ids"].clone()).expect("ids");
    let want_mask: Vec<Vec<i64>> =
        serde_json::from_value(g["attention_mask"].clone()).expect("mask");
    let want_cut: Vec<Vec<i64>> =
        serde_json::from_value(g["truncated_8"].clone()).expect("cut ids");
    let mut lengths = Vec::new();
    for (i, s) in sentences.iter().enumerate() {
        let (ids, special) = tok.encode_max(s, 512).expect("encode");
        let n = want_mask[i].iter().sum::<i64>() as usize;
        assert_eq!(ids, want_ids[i][..n], "{s}");
        assert!(
            special[0] && special[n - 1] && !special[1..n - 1].iter().any(|x| *x),
            "{s}: {special:?}"
        );
        assert_eq!(tok.encode_max(s, 8).expect("encode").0, want_cut[i], "{s} cut to 8");
        lengths.push(n as i64);
    }

    let config: EncoderConfig = toml::from_str(&format!(
        "kind = \"bert\"\nmodel = {:?}\npooling = \"cls\"",
        dir.to_string_lossy()
    ))
    .expect("toml");
    let vs = nn::VarStore::new(Device::Cpu);
    let ctx = BuildContext {
        vocab_size: Some(tok.vocab_size() as i64),
        max_tokens: Some(16),
        ..Default::default()
    };
    let encoder = build(&(vs.root() / "text"), &config, &ctx).expect("encoder");
    let report =
        config.load_weights(&vs, "text.").expect("weights load").expect("weights configured");
    assert_eq!(report.loaded, vs.variables().len(), "{}", report.summary());
    let skipped: Vec<&str> = report.skipped.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        skipped,
        ["bert.embeddings.position_ids", "cls.predictions.bias"],
        "{}",
        report.summary()
    );

    let ids = Tensor::from_slice(&want_ids.concat()).view([want_ids.len() as i64, -1]);
    let lengths = Tensor::from_slice(&lengths);
    let out = tch::no_grad(|| {
        encoder.forward_t(&Input::sequence(ids.shallow_clone(), lengths.shallow_clone()), false)
    });
    let hidden_shape: Vec<i64> =
        serde_json::from_value(g["last_hidden_state_shape"].clone()).expect("shape");
    let want_hidden = floats(&g["last_hidden_state"]);
    let (steps, mask) = out.seq.expect("BERT has steps");
    assert_eq!(steps.size(), hidden_shape);
    // The sequence is zero at padding; the valid steps are transformers' numbers.
    let valid = mask.unsqueeze(-1).to_kind(Kind::Float);
    let reference = Tensor::from_slice(&want_hidden).view(hidden_shape.as_slice());
    let gap = (&steps - &reference * &valid).abs().max().double_value(&[])
        / reference.abs().max().double_value(&[]).max(1.0);
    assert!(gap < 1e-4, "last_hidden_state differs by {gap:.2e}");
    let cls = relative_gap(
        &out.pooled,
        &Vec::<f32>::try_from(reference.select(1, 0).reshape([-1])).expect("cls"),
    );
    assert!(cls < 1e-4, "the [CLS] vector differs by {cls:.2e}");
    eprintln!("tiny BERT: largest gap to transformers {gap:.2e} ({})", report.summary());

    // The pooler's output, through an encoder pooled that way.
    let config: EncoderConfig = toml::from_str(&format!(
        "kind = \"bert\"\nmodel = {:?}\npooling = \"pooler\"",
        dir.to_string_lossy()
    ))
    .expect("toml");
    let vs = nn::VarStore::new(Device::Cpu);
    let pooler = build(&(vs.root() / "text"), &config, &ctx).expect("encoder");
    config.load_weights(&vs, "text.").expect("weights load");
    let out = tch::no_grad(|| {
        pooler.forward_t(&Input::sequence(ids.shallow_clone(), lengths.shallow_clone()), false)
    });
    let gap = relative_gap(&out.pooled, &floats(&g["pooler_output"]));
    assert!(gap < 1e-4, "pooler_output differs by {gap:.2e}");
    // Training mode has dropout; a frozen BERT is a fixed feature extractor without it.
    let input = || Input::sequence(ids.shallow_clone(), lengths.shallow_clone());
    let (a, b) = tch::no_grad(|| {
        (pooler.forward_t(&input(), true).pooled, pooler.forward_t(&input(), true).pooled)
    });
    assert!((&a - &b).abs().max().double_value(&[]) > 0.0, "dropout while training");
    pooler.set_backbone_trainable(false);
    let frozen = tch::no_grad(|| pooler.forward_t(&input(), true).pooled);
    assert!(
        relative_gap(&frozen, &floats(&g["pooler_output"])) < 1e-4,
        "a frozen BERT runs without dropout"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// A BERT file that does not fit the configuration is refused with every problem named, by
/// name and shape; a tokenizer larger than the model, or data longer than its positions, are
/// refused before anything is built.
#[test]
fn bert_files_that_do_not_fit_name_every_problem() {
    let g = golden("bert_tiny");
    let dir = temp("pretrained-bert-bad");
    write_bert_folder(&g, &dir);
    let file = dir.join("model.safetensors");
    let mut tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(&file).expect("read");
    tensors.retain(|(n, _)| n != "bert.pooler.dense.bias");
    for (n, t) in tensors.iter_mut() {
        if n == "bert.encoder.layer.1.intermediate.dense.weight" {
            *t = Tensor::zeros([65, 32], (Kind::Float, Device::Cpu));
        }
    }
    tensors.push((
        "bert.encoder.layer.2.output.dense.weight".into(),
        Tensor::zeros([32, 64], (Kind::Float, Device::Cpu)),
    ));
    Tensor::write_safetensors(&tensors, &file).expect("write");
    let config: EncoderConfig =
        toml::from_str(&format!("kind = \"bert\"\nmodel = {:?}", dir.to_string_lossy()))
            .expect("toml");
    let vs = nn::VarStore::new(Device::Cpu);
    let ctx = BuildContext { vocab_size: Some(98), max_tokens: Some(40), ..Default::default() };
    build(&(vs.root() / "text"), &config, &ctx).expect("encoder");
    let before: Vec<f32> =
        Vec::try_from(vs.variables()["text.embeddings.word_embeddings.weight"].view([-1]))
            .expect("values");
    let e = config.load_weights(&vs, "text.").expect_err("does not fit").to_string();
    for part in [
        "missing: pooler.dense.bias",
        "wrong shape: bert.encoder.layer.1.intermediate.dense.weight (as encoder.layer.1.intermediate.dense.weight): the file has [65, 32], the model [64, 32]",
        "unexpected: bert.encoder.layer.2.output.dense.weight (as encoder.layer.2.output.dense.weight) [32, 64]",
        "model.safetensors",
    ] {
        assert!(e.contains(part), "{part:?} not in: {e}");
    }
    let after: Vec<f32> =
        Vec::try_from(vs.variables()["text.embeddings.word_embeddings.weight"].view([-1]))
            .expect("values");
    assert_eq!(before, after, "a refused file changes nothing");

    for (ctx, expected) in [
        (
            BuildContext { vocab_size: Some(30522), max_tokens: Some(16), ..Default::default() },
            "the tokenizer has 30522 ids but the BERT model",
        ),
        (
            BuildContext { vocab_size: Some(98), max_tokens: Some(64), ..Default::default() },
            "up to 64 tokens (data.text.max_tokens) but the BERT model",
        ),
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        let e = build(&(vs.root() / "text"), &config, &ctx).expect_err("refused").to_string();
        assert!(e.contains(expected), "{e}");
    }
    let none: EncoderConfig =
        toml::from_str("kind = \"bert\"\nmodel = \"/nonexistent/bert\"").expect("toml");
    let e = build(&(nn::VarStore::new(Device::Cpu).root() / "text"), &none, &ctx)
        .expect_err("no folder")
        .to_string();
    assert!(e.contains("/nonexistent/bert/config.json"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

/// Real weights, when they have been fetched and their reference outputs written: ResNet-18/50
/// against torchvision, BERT base against transformers.
#[test]
fn real_weights_match_their_reference() {
    let data = std::env::var_os("MM_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data"));
    let mut compared = 0;
    for (name, arch) in [("resnet18", Arch::Resnet18), ("resnet50", Arch::Resnet50)] {
        let (file, reference) =
            (data.join(name).join("model.safetensors"), data.join(name).join("reference.json"));
        if !(file.is_file() && reference.is_file()) {
            continue;
        }
        let r: Value =
            serde_json::from_slice(&std::fs::read(&reference).expect("reference")).expect("JSON");
        let config =
            EncoderConfig::Image(ImageConfig { weights: Some(file), ..ImageConfig::new(arch) });
        let vs = nn::VarStore::new(Device::Cpu);
        let encoder =
            build(&(vs.root() / "image"), &config, &BuildContext::default()).expect("encoder");
        config.load_weights(&vs, "image.").expect("weights");
        let (_, x) = formula_tensor(&r["input"]);
        let y = tch::no_grad(|| encoder.forward_t(&Input::dense(x), false).pooled);
        let gap = relative_gap(&y, &floats(&r["output"]));
        eprintln!("{name} (real weights): largest gap to torchvision {gap:.2e}");
        assert!(gap < 1e-4, "{name}: {gap:.2e}");
        compared += 1;
    }
    let bert = data.join("bert-base-uncased");
    if bert.join("model.safetensors").is_file() && bert.join("reference.json").is_file() {
        let r: Value =
            serde_json::from_slice(&std::fs::read(bert.join("reference.json")).expect("reference"))
                .expect("JSON");
        let tok = SubwordTokenizer::from_file(bert.join("tokenizer.json")).expect("tokenizer");
        let want: Vec<Vec<i64>> = serde_json::from_value(r["input_ids"].clone()).expect("ids");
        let config: EncoderConfig = toml::from_str(&format!(
            "kind = \"bert\"\nmodel = {:?}\npooling = \"pooler\"",
            bert.to_string_lossy()
        ))
        .expect("toml");
        let vs = nn::VarStore::new(Device::Cpu);
        let ctx = BuildContext {
            vocab_size: Some(tok.vocab_size() as i64),
            max_tokens: Some(512),
            ..Default::default()
        };
        let encoder = build(&(vs.root() / "text"), &config, &ctx).expect("encoder");
        config.load_weights(&vs, "text.").expect("weights");
        let sentences: Vec<String> =
            serde_json::from_value(r["sentences"].clone()).expect("sentences");
        let mut lengths = Vec::new();
        for (s, w) in sentences.iter().zip(&want) {
            let (ids, _) = tok.encode_max(s, 512).expect("encode");
            assert_eq!(ids, w[..ids.len()], "{s}");
            lengths.push(ids.len() as i64);
        }
        let ids = Tensor::from_slice(&want.concat()).view([want.len() as i64, -1]);
        let out = tch::no_grad(|| {
            encoder.forward_t(&Input::sequence(ids, Tensor::from_slice(&lengths)), false)
        });
        let gap = relative_gap(&out.pooled, &floats(&r["pooler_output"]));
        eprintln!("bert-base-uncased (real weights): largest gap of pooler_output to transformers {gap:.2e}");
        assert!(gap < 1e-4, "bert-base-uncased: {gap:.2e}");
        compared += 1;
    }
    for name in ["clip-vit-base-patch32", "clip-vit-base-patch16"] {
        let dir = data.join(name);
        if !(dir.join("model.safetensors").is_file() && dir.join("reference.json").is_file()) {
            continue;
        }
        let r: Value =
            serde_json::from_slice(&std::fs::read(dir.join("reference.json")).expect("reference"))
                .expect("JSON");
        let (_vs, clip) = mm_encoders::clip::Clip::load(&dir, Device::Cpu).expect("load");
        let processor =
            mm_encoders::clip::ClipProcessor::from_folder(&dir, clip.config()).expect("processor");
        let sentences: Vec<String> =
            serde_json::from_value(r["sentences"].clone()).expect("sentences");
        let want: Vec<Vec<i64>> = serde_json::from_value(r["input_ids"].clone()).expect("ids");
        let (ids, lengths) = processor.texts(&sentences).expect("tokens");
        let got: Vec<Vec<i64>> = Vec::try_from(&ids).expect("ids");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g[..w.len().min(g.len())], w[..w.len().min(g.len())], "{name}: token ids");
        }
        let (_, x) = formula_tensor(&r["input"]);
        let (text, image) =
            tch::no_grad(|| (clip.text_features(&ids, &lengths), clip.image_features(&x)));
        for (what, ours, key) in [("text", &text, "text_embeds"), ("image", &image, "image_embeds")]
        {
            let gap = relative_gap(ours, &floats(&r[key]));
            eprintln!("{name} (real weights): largest gap of the {what} embeddings to transformers {gap:.2e}");
            assert!(gap < 1e-4, "{name} {what}: {gap:.2e}");
        }
        compared += 1;
    }
    if compared == 0 {
        eprintln!(
            "no real weights with reference outputs under {}: skipped (cargo xtask fetch-weights resnet50 bert-base-uncased clip-vit-base-patch32, \
             then python3 crates/mm-encoders/tests/data/pretrained/make_golden.py --real data)",
            data.display()
        );
    }
}

/// A model folder for the tiny CLIP: formula weights in transformers' names (with the
/// `position_ids` buffers older files carry), its config, preprocessor config and tokenizer.
fn write_clip_folder(g: &Value, dir: &Path) {
    let weights = dir.join("model.safetensors");
    mm_encoders::formula::write_listing(&g["tensors"], &weights, str::to_string).expect("weights");
    let mut tensors: Vec<(String, Tensor)> =
        mm_encoders::weights::read_named(&weights).expect("read back");
    for (tower, n) in [("text_model", 16), ("vision_model", 17)] {
        tensors.push((
            format!("{tower}.embeddings.position_ids"),
            Tensor::arange(n, (Kind::Int64, Device::Cpu)).unsqueeze(0),
        ));
    }
    mm_encoders::weights::save_named(&weights, tensors).expect("weights with buffers");
    for f in ["config.json", "preprocessor_config.json", "tokenizer.json"] {
        std::fs::copy(data_dir().join("clip_tiny").join(f), dir.join(f)).expect("copy");
    }
}

fn golden_tensor(g: &Value, key: &str, shape: &[i64]) -> Tensor {
    Tensor::from_slice(&floats(&g[key])).view(shape)
}

/// A tiny CLIP with transformers' names loads from a folder, tokenises as CLIP's byte-level BPE
/// does, and gives `CLIPModel`'s text and image embeddings (positions interpolated for another
/// image size too), the vision tower's `last_hidden_state` and `logits_per_image`; as
/// `clip-image` and `clip-text` encoders its towers give the same embeddings.
#[test]
fn clip_matches_transformers_given_its_weights_and_tokenizer() {
    use mm_encoders::clip::{Clip, ClipProcessor};
    let g = golden("clip_tiny");
    let dir = temp("pretrained-clip");
    write_clip_folder(&g, &dir);
    let (_vs, clip) = Clip::load(&dir, Device::Cpu).expect("load");
    let processor = ClipProcessor::from_folder(&dir, clip.config()).expect("processor");
    let sentences: Vec<String> = serde_json::from_value(g["sentences"].clone()).expect("texts");
    let want_ids: Vec<Vec<i64>> = serde_json::from_value(g["input_ids"].clone()).expect("ids");
    let want_mask: Vec<Vec<i64>> =
        serde_json::from_value(g["attention_mask"].clone()).expect("mask");
    let (ids, lengths) = processor.texts(&sentences).expect("tokenise");
    assert_eq!(Vec::<Vec<i64>>::try_from(&ids).expect("ids"), want_ids);
    let want_lengths: Vec<i64> = want_mask.iter().map(|m| m.iter().sum()).collect();
    assert_eq!(Vec::<i64>::try_from(&lengths).expect("lengths"), want_lengths);

    let input = |key: &str| formula_tensor(&g[key]).1;
    let x = input("input");
    let (text, image) =
        tch::no_grad(|| (clip.text_features(&ids, &lengths), clip.image_features(&x)));
    let gaps = [
        ("text_embeds", relative_gap(&text, &floats(&g["text_embeds"]))),
        ("image_embeds", relative_gap(&image, &floats(&g["image_embeds"]))),
        (
            "logits_per_image",
            relative_gap(&clip.logits_per_image(&image, &text), &floats(&g["logits_per_image"])),
        ),
        (
            "vision last_hidden_state",
            relative_gap(
                &tch::no_grad(|| clip.vision().forward_t(&x, false).hidden),
                &floats(&g["vision_last_hidden_state"]),
            ),
        ),
        (
            "image_embeds at 48x40 (interpolated positions)",
            relative_gap(
                &tch::no_grad(|| clip.image_features(&input("input_48x40"))),
                &floats(&g["image_embeds_48x40"]),
            ),
        ),
    ];
    for (what, gap) in gaps {
        assert!(gap < 2e-6, "{what} differs from transformers' by {gap:.2e}");
    }
    eprintln!("tiny CLIP against transformers: {gaps:?}");

    // The towers as encoders of a run: only their part of the file is loaded.
    let ctx = BuildContext {
        vocab_size: Some(processor.tokenizer().vocab_size() as i64),
        max_tokens: Some(16),
        ..Default::default()
    };
    for (kind, prefix, other) in
        [("clip-image", "image.", "text_model."), ("clip-text", "text.", "vision_model.")]
    {
        let config: EncoderConfig =
            toml::from_str(&format!("kind = {kind:?}\nmodel = {:?}", dir.to_string_lossy()))
                .expect("toml");
        let vs = nn::VarStore::new(Device::Cpu);
        let encoder =
            build(&(vs.root() / prefix.trim_end_matches('.')), &config, &ctx).expect("encoder");
        let report = config.load_weights(&vs, prefix).expect("load").expect("weights");
        assert_eq!(report.loaded, vs.variables().len(), "{}", report.summary());
        assert!(
            report.skipped.iter().any(|(n, _)| n.starts_with(other))
                && report.skipped.iter().any(|(n, _)| n.ends_with("position_ids")),
            "{kind}: {}",
            report.summary()
        );
        let (input, want) = if kind == "clip-image" {
            (Input::dense(x.shallow_clone()), &image)
        } else {
            (Input::sequence(ids.shallow_clone(), lengths.shallow_clone()), &text)
        };
        let out = tch::no_grad(|| encoder.forward_t(&input, false));
        let gap = relative_gap(&out.pooled, &Vec::<f32>::try_from(want.reshape([-1])).expect("v"));
        assert!(gap < 1e-5, "{kind} pooled differs from the model's by {gap:.2e}");
        let (seq, mask) = out.seq.expect("a sequence");
        assert_eq!(seq.size()[..2], mask.size()[..]);
        // Frozen, nothing of the tower trains.
        encoder.set_backbone_trainable(false);
        assert!(encoder.backbone_parameters().iter().all(|p| !p.requires_grad()));
        assert_eq!(encoder.backbone_parameters().len(), vs.variables().len());
    }
}

/// CLIP's image processor (PIL's bicubic resize of the shorter side, centre crop, CLIP's
/// statistics) and zero-shot classification through a template give transformers' pixels and
/// probabilities for images of other shapes than the model's.
#[test]
fn clip_zero_shot_matches_transformers_from_pixels_to_probabilities() {
    use mm_encoders::clip::ZeroShot;
    use mm_encoders::formula::formula_pixels;
    let g = golden("clip_tiny");
    let dir = temp("pretrained-clip-zero-shot");
    write_clip_folder(&g, &dir);
    let z = &g["zero_shot"];
    let labels: Vec<String> = serde_json::from_value(z["labels"].clone()).expect("labels");
    let template = z["template"].as_str().expect("template");
    let zs = ZeroShot::new(&dir, &labels, template, Device::Cpu).expect("zero-shot");
    let images: Vec<_> = z["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| {
            let n = |k: &str| i[k].as_u64().expect("size") as usize;
            formula_pixels(i["name"].as_str().expect("name"), n("height"), n("width"))
        })
        .collect();
    let pixels = zs.processor().images(&images).expect("prepared");
    let want = golden_tensor(z, "pixel_values", &pixels.size());
    // PIL and fast_image_resize round a few bicubic sums differently (both resize horizontally,
    // round to 8 bits, then vertically): one 8-bit level, over CLIP's standard deviation, at
    // most, and for few pixels.
    let pixel_gap = (&pixels - &want).abs().max().double_value(&[]);
    let level = 1.0 / 255.0 / 0.2613;
    let off = (&pixels - &want).abs().gt(level * 0.01).to_kind(Kind::Float).mean(Kind::Float);
    assert!(pixel_gap <= level * 1.01, "pixels differ by {pixel_gap:.4} (> one level)");
    let off = off.double_value(&[]);
    assert!(off < 0.01, "{off:.3} of the pixels differ");
    let probs = zs.classify(&images).expect("classified");
    let gap = relative_gap(&probs, &floats(&z["probabilities"]));
    assert!(gap < 1e-3, "probabilities differ by {gap:.2e}");
    let want_best = golden_tensor(z, "probabilities", &probs.size()).argmax(-1, false);
    assert!(probs.argmax(-1, false).equal(&want_best));
    eprintln!(
        "zero-shot: pixels within {pixel_gap:.2e} ({:.2}% of them off), probabilities within {gap:.2e}",
        off * 100.0
    );
}

/// Folders and arguments that do not fit: each a clear error naming what is wrong.
#[test]
fn clip_inputs_that_do_not_fit_name_the_problem() {
    use mm_encoders::clip::{Clip, ZeroShot};
    let g = golden("clip_tiny");
    let dir = temp("pretrained-clip-bad");
    write_clip_folder(&g, &dir);
    let labels = vec!["dog".to_string(), "cat".to_string()];
    let err = |r: mm_encoders::Result<ZeroShot>| r.expect_err("must fail").to_string();
    assert!(err(ZeroShot::new(&dir, &labels, "a photo of a", Device::Cpu)).contains("{}"));
    assert!(err(ZeroShot::new(&dir, &labels, "{} and {}", Device::Cpu)).contains("exactly once"));
    assert!(err(ZeroShot::new(&dir, &[], "a {}", Device::Cpu)).contains("no labels"));
    let twice = vec!["dog".to_string(), "dog".to_string()];
    assert!(err(ZeroShot::new(&dir, &twice, "a {}", Device::Cpu)).contains("twice"));

    // A BERT folder claimed as CLIP.
    let bert = temp("pretrained-clip-is-bert");
    std::fs::copy(data_dir().join("bert_tiny/config.json"), bert.join("config.json")).expect("c");
    let e = Clip::load(&bert, Device::Cpu).expect_err("not CLIP").to_string();
    assert!(e.contains("model_type = \"bert\"") && e.contains("config.json"), "{e}");

    // A weights file with a tensor missing and one of the wrong shape: both named.
    let weights = dir.join("model.safetensors");
    let mut tensors = mm_encoders::weights::read_named(&weights).expect("read");
    tensors.retain(|(n, _)| n != "text_model.final_layer_norm.bias");
    for (n, t) in &mut tensors {
        if n == "visual_projection.weight" {
            *t = Tensor::zeros([16, 31], (Kind::Float, Device::Cpu));
        }
    }
    mm_encoders::weights::save_named(&weights, tensors).expect("write");
    let e = Clip::load(&dir, Device::Cpu).expect_err("does not fit").to_string();
    assert!(
        e.contains("missing: text_model.final_layer_norm.bias")
            && e.contains("wrong shape: visual_projection.weight"),
        "{e}"
    );

    // A tokenizer with more ids than the text tower: they do not belong together.
    write_clip_folder(&g, &dir);
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("c")).expect("j");
    config["text_config"]["vocab_size"] = 100.into();
    std::fs::write(dir.join("config.json"), config.to_string()).expect("write");
    let e = err(ZeroShot::new(&dir, &labels, "a {}", Device::Cpu));
    assert!(e.contains("does not belong"), "{e}");
    let toml = format!("kind = \"clip-text\"\nmodel = {:?}", dir.to_string_lossy());
    let config: EncoderConfig = toml::from_str(&toml).expect("toml");
    let vs = nn::VarStore::new(Device::Cpu);
    let ctx = BuildContext { vocab_size: Some(400), max_tokens: Some(16), ..Default::default() };
    let e = build(&vs.root(), &config, &ctx).expect_err("tokenizer too big").to_string();
    assert!(e.contains("do not belong together"), "{e}");
    let ctx = BuildContext { vocab_size: Some(50), max_tokens: Some(77), ..Default::default() };
    let e = build(&vs.root(), &config, &ctx).expect_err("too long").to_string();
    assert!(e.contains("16 positions"), "{e}");
}

/// A tiny ViT given by torchvision's names (its head in the file) and by transformers' (query,
/// key and value filling thirds of the packed `in_proj`, the pooler in the file) loads into the
/// same encoder and gives each library's outputs, positions interpolated for another size too;
/// a file that lacks one part of a packed tensor is refused, naming it.
#[test]
fn vit_matches_torchvision_and_transformers_given_their_weights() {
    use mm_encoders::vit::{hf_vit_name, VitConfig, VitEncoder};
    use mm_encoders::weights::{load_safetensors, LoadOptions};
    let dir = temp("pretrained-vit");
    let g = golden("vit_torchvision");
    let file = dir.join("vit-torchvision.safetensors");
    // torchvision's state dict, its classification head included.
    let tensors: Vec<(String, Tensor)> =
        g["tensors"].as_array().expect("tensors").iter().map(formula_tensor).collect();
    assert!(tensors.iter().any(|(n, _)| n == "heads.head.weight"));
    mm_encoders::weights::save_named(&file, tensors).expect("write");
    let tiny = VitConfig {
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 64,
        image_size: 32,
        patch_size: 8,
        ..VitConfig::vit_b_16()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let encoder = VitEncoder::new(&(vs.root() / "image"), &tiny).expect("encoder");
    let options = LoadOptions {
        prefix: "image.".into(),
        skip: vec!["heads.".into()],
        allow_missing: Vec::new(),
        map: Some(hf_vit_name),
    };
    let report = load_safetensors(&vs, &file, &options).expect("torchvision's names load");
    assert_eq!(report.loaded, vs.variables().len(), "{}", report.summary());
    let (_, x) = formula_tensor(&g["input"]);
    let out = tch::no_grad(|| encoder.forward_t(&Input::dense(x.shallow_clone()), false));
    let gap = relative_gap(&out.pooled, &floats(&g["output"]));
    assert!(gap < 5e-6, "torchvision's ViT features differ by {gap:.2e}");

    // transformers' ViTModel, as kind = "vit" over its folder.
    let h = golden("vit_hf");
    let model = dir.join("vit-tiny");
    std::fs::create_dir_all(&model).expect("mkdir");
    mm_encoders::formula::write_listing(
        &h["tensors"],
        &model.join("model.safetensors"),
        str::to_string,
    )
    .expect("weights");
    std::fs::copy(data_dir().join("vit_tiny/config.json"), model.join("config.json"))
        .expect("config");
    let config: EncoderConfig =
        toml::from_str(&format!("kind = \"vit\"\nmodel = {:?}", model.to_string_lossy()))
            .expect("toml");
    let vs = nn::VarStore::new(Device::Cpu);
    let hf = build(&(vs.root() / "image"), &config, &BuildContext::default()).expect("encoder");
    let report = config.load_weights(&vs, "image.").expect("load").expect("weights");
    assert_eq!(report.loaded, vs.variables().len(), "{}", report.summary());
    assert!(report.skipped.iter().all(|(n, _)| n.starts_with("pooler.")), "{}", report.summary());
    let out = tch::no_grad(|| hf.forward_t(&Input::dense(x.shallow_clone()), false));
    let (tokens, _) = out.seq.expect("tokens");
    let gaps = [
        ("last_hidden_state", relative_gap(&tokens, &floats(&h["last_hidden_state"]))),
        (
            "class token at 48x40 (interpolated positions)",
            relative_gap(
                &tch::no_grad(|| {
                    hf.forward_t(&Input::dense(formula_tensor(&h["input_48x40"]).1), false).pooled
                }),
                &floats(&h["class_token_48x40"]),
            ),
        ),
    ];
    for (what, gap) in gaps {
        assert!(gap < 2e-6, "{what} differs from transformers' by {gap:.2e}");
    }
    eprintln!("tiny ViT: torchvision {gap:.2e}, transformers {gaps:?}");

    // The same weights under the names of the Hub's files (transformers 4's, which transformers
    // 5 renames when it loads them) give the same outputs.
    let weights = model.join("model.safetensors");
    let hub = |n: &str| {
        let n = n.strip_prefix("layers.").map_or(n.to_string(), |r| format!("encoder.layer.{r}"));
        [
            ("attention.q_proj", "attention.attention.query"),
            ("attention.k_proj", "attention.attention.key"),
            ("attention.v_proj", "attention.attention.value"),
            ("attention.o_proj", "attention.output.dense"),
            ("mlp.fc1", "intermediate.dense"),
            ("mlp.fc2", "output.dense"),
        ]
        .iter()
        .fold(n, |n, (new, old)| n.replace(new, old))
    };
    mm_encoders::formula::write_listing(&h["tensors"], &weights, |n| format!("vit.{}", hub(n)))
        .expect("weights");
    let tensors = mm_encoders::weights::read_named(&weights).expect("read");
    assert!(tensors.iter().any(|(n, _)| n == "vit.encoder.layer.1.attention.attention.value.bias"));
    let vs = nn::VarStore::new(Device::Cpu);
    let hub_model =
        build(&(vs.root() / "image"), &config, &BuildContext::default()).expect("encoder");
    config.load_weights(&vs, "image.").expect("the Hub's names load").expect("weights");
    let again = tch::no_grad(|| hub_model.forward_t(&Input::dense(x.shallow_clone()), false));
    assert!(again.pooled.equal(&out.pooled), "the Hub's names give the same model");

    // One part of a packed tensor missing: named, nothing loaded.
    let mut tensors = tensors;
    tensors.retain(|(n, _)| n != "vit.encoder.layer.1.attention.attention.value.bias");
    mm_encoders::weights::save_named(&weights, tensors).expect("write");
    let e = config.load_weights(&vs, "image.").expect_err("a part missing").to_string();
    assert!(
        e.contains(
            "missing: part 3 of 3 of encoder.layers.encoder_layer_1.self_attention.in_proj_bias"
        ),
        "{e}"
    );
}

/// A tiny CLIP in open_clip's layout (its `open_clip_config.json`, OpenAI's names: packed
/// query/key/value, projections as `[width, embedding]`) loads through the same folder reader
/// and gives open_clip's `encode_text` and `encode_image`; as encoders each tower takes its
/// part of the file.
#[test]
fn open_clip_files_match_open_clip() {
    use mm_encoders::clip::{Clip, ClipFolder};
    let g = golden("open_clip_tiny");
    let dir = temp("pretrained-open-clip");
    mm_encoders::formula::write_listing(
        &g["tensors"],
        &dir.join("open_clip_model.safetensors"),
        str::to_string,
    )
    .expect("weights");
    std::fs::copy(
        data_dir().join("open_clip_tiny/open_clip_config.json"),
        dir.join("open_clip_config.json"),
    )
    .expect("config");
    std::fs::copy(data_dir().join("clip_tiny/tokenizer.json"), dir.join("tokenizer.json"))
        .expect("tokenizer");
    let folder = ClipFolder::read(&dir).expect("an open_clip folder");
    assert!(folder.open_clip && folder.weights.ends_with("open_clip_model.safetensors"));
    let (_vs, clip) = Clip::load(&dir, Device::Cpu).expect("load");
    let ids: Vec<Vec<i64>> = serde_json::from_value(g["input_ids"].clone()).expect("ids");
    // open_clip pools at the largest id, the end-of-text token: each text's length.
    let lengths: Vec<i64> = ids
        .iter()
        .map(|r| r.iter().position(|t| *t == 340).expect("an end token") as i64 + 1)
        .collect();
    let ids_t = Tensor::from_slice(&ids.concat()).view([ids.len() as i64, -1]);
    let lengths_t = Tensor::from_slice(&lengths);
    let (_, x) = formula_tensor(&g["input"]);
    let (text, image) =
        tch::no_grad(|| (clip.text_features(&ids_t, &lengths_t), clip.image_features(&x)));
    let gaps = [
        ("encode_text", relative_gap(&text, &floats(&g["text_embeds"]))),
        ("encode_image", relative_gap(&image, &floats(&g["image_embeds"]))),
    ];
    for (what, gap) in gaps {
        assert!(gap < 2e-6, "{what} differs from open_clip's by {gap:.2e}");
    }
    eprintln!("tiny open_clip CLIP: {gaps:?}");

    // Each tower as an encoder takes its part of open_clip's file.
    for (kind, prefix, want) in [("clip-image", "image.", &image), ("clip-text", "text.", &text)] {
        let config: EncoderConfig =
            toml::from_str(&format!("kind = {kind:?}\nmodel = {:?}", dir.to_string_lossy()))
                .expect("toml");
        let vs = nn::VarStore::new(Device::Cpu);
        let ctx =
            BuildContext { vocab_size: Some(341), max_tokens: Some(16), ..Default::default() };
        let encoder =
            build(&(vs.root() / prefix.trim_end_matches('.')), &config, &ctx).expect("encoder");
        let report = config.load_weights(&vs, prefix).expect("load").expect("weights");
        assert_eq!(report.loaded, vs.variables().len(), "{kind}: {}", report.summary());
        let input = if kind == "clip-image" {
            Input::dense(x.shallow_clone())
        } else {
            Input::sequence(ids_t.shallow_clone(), lengths_t.shallow_clone())
        };
        let out = tch::no_grad(|| encoder.forward_t(&input, false));
        let gap = relative_gap(&out.pooled, &Vec::<f32>::try_from(want.reshape([-1])).expect("v"));
        assert!(gap < 1e-6, "{kind}: {gap:.2e}");
    }

    // A tower of another network (timm's) is refused by name.
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(dir.join("open_clip_config.json")).expect("read"))
            .expect("json");
    config["model_cfg"]["vision_cfg"]["timm_model_name"] = "convnext_base".into();
    std::fs::write(dir.join("open_clip_config.json"), config.to_string()).expect("write");
    let e = Clip::load(&dir, Device::Cpu).expect_err("timm tower").to_string();
    assert!(e.contains("convnext_base") && e.contains("open_clip_config.json"), "{e}");
}

/// A tiny Whisper in transformers' names (the output projection tied to the token embedding,
/// Whisper's 1500 positions): Whisper's log-mel front end gives `WhisperFeatureExtractor`'s
/// features of a WAV file, the model gives `WhisperForConditionalGeneration`'s encoder output
/// and logits, the key/value cache gives the logits of a whole prefix one token at a time, and
/// the transcriber gives the same token ids and text as transformers' model run greedily on
/// the whole prefix each step, and beam search (3 and 5 beams) transformers' hypotheses.
#[test]
fn whisper_matches_transformers_from_features_to_text() {
    use mm_encoders::whisper::{Cache, Transcriber, Whisper};
    let g = golden("whisper_tiny");
    let dir = temp("pretrained-whisper");
    mm_encoders::formula::write_listing(
        &g["tensors"],
        &dir.join("model.safetensors"),
        str::to_string,
    )
    .expect("weights");
    for f in ["config.json", "tokenizer.json", "generation_config.json"] {
        std::fs::copy(data_dir().join("whisper_tiny").join(f), dir.join(f)).expect("copy");
    }
    let wav = data_dir().join("whisper_tiny/speech.wav");
    let samples = mm_data::audio::load_audio(&wav, 16_000).expect("wav").samples;
    let front = mm_data::mel::WhisperMel::new(8);
    let mel = front.window(&samples);
    let features = Tensor::from_slice(mel.as_slice().expect("layout")).view([1, 8, 3000]);
    let feature_gap = relative_gap(&features.narrow(2, 0, 300), &floats(&g["features_first_300"]));
    assert!(feature_gap < 1e-5, "log-mel features differ by {feature_gap:.2e}");
    let top = features.max().double_value(&[]);
    assert!((top - g["features_max"].as_f64().expect("max")).abs() < 1e-4, "maximum {top}");

    let (_vs, whisper) = Whisper::load(&dir, Device::Cpu).expect("load");
    let audio = tch::no_grad(|| whisper.encode(&features)).expect("encode");
    let enc_gap = relative_gap(&audio.hidden.narrow(1, 0, 64), &floats(&g["encoder_first_64"]));
    assert!(enc_gap < 2e-6, "encoder output differs by {enc_gap:.2e}");
    let start: Vec<i64> = serde_json::from_value(g["start"].clone()).expect("start");
    let prefix = Tensor::from_slice(&start).unsqueeze(0);
    let whole = tch::no_grad(|| whisper.decode(&audio, &prefix, &mut Cache::default()));
    let logit_gap = relative_gap(&whole, &floats(&g["logits_start"]));
    assert!(logit_gap < 2e-6, "logits differ by {logit_gap:.2e}");
    // One token at a time through the cache, and one then three: the same logits.
    let mut cache = Cache::default();
    let steps: Vec<Tensor> = (0..4)
        .map(|i| tch::no_grad(|| whisper.decode(&audio, &prefix.narrow(1, i, 1), &mut cache)))
        .collect();
    assert!(
        (Tensor::cat(&steps, 1) - &whole).abs().max().double_value(&[]) < 1e-5,
        "the cache changes the logits"
    );
    let mut cache = Cache::default();
    let a = tch::no_grad(|| whisper.decode(&audio, &prefix.narrow(1, 0, 1), &mut cache));
    let b = tch::no_grad(|| whisper.decode(&audio, &prefix.narrow(1, 1, 3), &mut cache));
    assert!((Tensor::cat(&[a, b], 1) - &whole).abs().max().double_value(&[]) < 1e-5);

    // The transcriber from the file: identical ids, the same text.
    let want: Vec<i64> = serde_json::from_value(g["greedy_ids"].clone()).expect("ids");
    let t = Transcriber::load(&dir, Device::Cpu, None).expect("transcriber");
    let got = t.transcribe_file(&wav).expect("transcribe");
    assert_eq!(got.windows, vec![want]);
    assert_eq!(got.text, g["text"].as_str().expect("text").trim());
    assert_eq!(got.language.as_deref(), Some("en"));
    // The encoder alone as an audio encoder of fusion runs (`kind = "whisper"`): only its part
    // of the file loaded, the same states over mm-data's [B, frames, mels] batch layout.
    let config: mm_encoders::EncoderConfig =
        toml::from_str(&format!("kind = \"whisper\"\nmodel = {:?}", dir.display().to_string()))
            .expect("config");
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let ctx = mm_encoders::BuildContext { input_dim: Some(8), ..Default::default() };
    let encoder = mm_encoders::build(&(vs.root() / "audio"), &config, &ctx).expect("build");
    let report = config.load_weights(&vs, "audio.").expect("load").expect("a report");
    assert_eq!(report.loaded, vs.variables().len(), "{report:?}");
    assert!(
        report
            .skipped
            .iter()
            .all(|(n, _)| n.starts_with("model.decoder.") || n == "proj_out.weight"),
        "{report:?}"
    );
    let input = mm_encoders::Input { values: features.transpose(1, 2), lengths: None };
    let out = tch::no_grad(|| encoder.forward_t(&input, false));
    let (seq, _) = out.seq.as_ref().expect("steps");
    assert!((seq - &audio.hidden).abs().max().double_value(&[]) < 1e-6);
    assert!(
        (&out.pooled - audio.hidden.mean_dim(1, false, Kind::Float)).abs().max().double_value(&[])
            < 1e-6
    );
    // A batch whose samples all lack audio (one frame) is padded to the window, not refused.
    let empty =
        Input { values: Tensor::zeros([2, 1, 8], (Kind::Float, Device::Cpu)), lengths: None };
    let out = tch::no_grad(|| encoder.forward_t(&empty, false));
    assert_eq!(out.pooled.size(), [2, 16]);
    assert_eq!(encoder.time_stride(), 2, "two feature frames per position");
    let e = mm_encoders::build(
        &(vs.root() / "other"),
        &config,
        &mm_encoders::BuildContext { input_dim: Some(64), ..Default::default() },
    )
    .expect_err("64 bins")
    .to_string();
    assert!(e.contains("64 mel bins") && e.contains("front = \"whisper\""), "{e}");

    // Beam search: transformers' hypotheses, which differ from greedy decoding's.
    for beam in [3usize, 5] {
        let want: Vec<i64> =
            serde_json::from_value(g["beam_ids"][beam.to_string()].clone()).expect("beam ids");
        let how = mm_seq::decoder::Generation {
            beam,
            ..mm_seq::decoder::Generation::new(&start, g["eos"].as_i64().expect("eos"), 24)
        };
        let found = tch::no_grad(|| whisper.generate(&audio, &how));
        assert_eq!(found, vec![want.clone()], "beam {beam}");
        let t = Transcriber::load(&dir, Device::Cpu, Some("en")).expect("load").with_beam(beam);
        assert_eq!(t.transcribe_file(&wav).expect("beam").windows, vec![want]);
    }
    assert_ne!(g["beam_ids"]["3"], g["greedy_ids"], "the beam golden tells nothing");

    // Timestamps: transformers' timestamp rules and segments, within one window (the file, padded
    // to 30 s, silence decoded as transformers does) and over a 45 s recording (features of the
    // whole, windows moved by the timestamps).
    let timed = Transcriber::load(&dir, Device::Cpu, Some("en"))
        .expect("load")
        .with_timestamps(true)
        .decoding_silence(true);
    assert!(timed.has_timestamps());
    let got = timed.transcribe_file(&wav).expect("timed");
    let tokens: Vec<i64> = got.segments.iter().flat_map(|s| s.tokens.clone()).collect();
    let want: Vec<i64> = serde_json::from_value(g["timestamp_ids"].clone()).expect("timestamp ids");
    assert_eq!(tokens, want, "{:?}", got.segments);
    let scale = (0.3f64 * 32767.0) as f32;
    let long: Vec<f32> = mm_encoders::formula::formula_values("long", 45 * 16_000)
        .iter()
        .map(|u| f32::from((u * scale) as i16) / 32768.0)
        .collect();
    let whole = front.features(&long);
    assert_eq!(whole.ncols() as u64, g["long_frames"].as_u64().expect("frames"));
    let first = Tensor::from_slice(
        whole.slice(ndarray::s![.., ..300]).to_owned().as_slice().expect("layout"),
    )
    .view([1, 8, 300]);
    let gap = relative_gap(&first, &floats(&g["long_features_first_300"]));
    assert!(gap < 1e-5, "long-form features differ by {gap:.2e}");
    let got = timed.transcribe(&long).expect("long");
    let want = g["long_segments"].as_array().expect("segments");
    assert_eq!(got.segments.len(), want.len(), "{:?}", got.segments);
    for (s, w) in got.segments.iter().zip(want) {
        let tokens: Vec<i64> = serde_json::from_value(w["tokens"].clone()).expect("tokens");
        assert_eq!(s.tokens, tokens, "{s:?} against {w}");
        let (start, end) = (w["start"].as_f64().expect("start"), w["end"].as_f64().expect("end"));
        assert!((s.start - start).abs() < 1e-9 && (s.end - end).abs() < 1e-9, "{s:?} against {w}");
    }
    // Untimed, the same recording is cut into 30 s windows, and timed anyway past 30 s.
    let plain = Transcriber::load(&dir, Device::Cpu, Some("en")).expect("load");
    assert_eq!(plain.transcribe(&long).expect("long").segments.len(), want.len());
    eprintln!(
        "tiny Whisper: features {feature_gap:.2e}, encoder {enc_gap:.2e}, logits {logit_gap:.2e}, ids {:?}",
        got.windows
    );

    // What does not fit: a window of another length, a language the model lacks, silence.
    let e = whisper.encode(&features.narrow(2, 0, 2000)).expect_err("short").to_string();
    assert!(e.contains("[batch, 8, 3000]"), "{e}");
    let e = Transcriber::load(&dir, Device::Cpu, Some("fr")).expect_err("no French").to_string();
    assert!(e.contains("--language fr") && e.contains("en"), "{e}");
    // Silence: 40 s (timed, as every recording over 30 s) and 20 s: nothing decoded, no words.
    let silent = t.transcribe(&vec![0.0; 16_000 * 40]).expect("silence");
    assert_eq!((silent.text.as_str(), silent.windows.len(), silent.segments.len()), ("", 0, 0));
    let silent = t.transcribe(&vec![0.0; 16_000 * 20]).expect("silence");
    assert_eq!((silent.text.as_str(), silent.windows), ("", vec![Vec::new()]));
}
