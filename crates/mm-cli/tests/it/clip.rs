//! A pretrained CLIP from the command line: a tiny CLIP in transformers' layout (weights from
//! the formula of mm-encoders' parity tests, its config, preprocessor config and tokenizer from
//! there). `mm zero-shot`, `mm index` and `mm retrieve --index` on PNG files, a folder and a
//! labelled manifest, with transformers' probabilities as the truth; the retrieval recipe's
//! CLIP variant fine-tuning both towers.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::runs::{configs, fails, json, ok, workspace};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mm-encoders/tests/data/pretrained")
}

/// A model folder of the tiny CLIP (`dir/clip-tiny`), and the golden file's zero-shot case.
fn tiny_clip(dir: &Path) -> Value {
    let g: Value = serde_json::from_slice(
        &std::fs::read(golden_dir().join("golden_clip_tiny.json")).expect("golden"),
    )
    .expect("golden JSON");
    let model = dir.join("clip-tiny");
    std::fs::create_dir_all(&model).expect("mkdir");
    mm_encoders::formula::write_listing(
        &g["tensors"],
        &model.join("model.safetensors"),
        str::to_string,
    )
    .expect("weights");
    for f in ["config.json", "preprocessor_config.json", "tokenizer.json"] {
        std::fs::copy(golden_dir().join("clip_tiny").join(f), model.join(f)).expect("copy");
    }
    g["zero_shot"].clone()
}

#[test]
fn zero_shot_classifies_files_folders_and_manifests_as_transformers() {
    let dir = std::env::temp_dir().join(format!("mm-cli-zero-shot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("photos/more")).expect("mkdir");
    let z = tiny_clip(&dir);
    let labels: Vec<String> = serde_json::from_value(z["labels"].clone()).expect("labels");
    let want: Vec<f64> = serde_json::from_value(z["probabilities"].clone()).expect("probs");
    let images = z["images"].as_array().expect("images");
    // The formula's pixels as PNG files (lossless): image0 in the folder, image1 below it.
    let mut files = Vec::new();
    for (i, spec) in images.iter().enumerate() {
        let (h, w) = (
            spec["height"].as_u64().expect("present") as usize,
            spec["width"].as_u64().expect("present") as usize,
        );
        let px =
            mm_encoders::formula::formula_pixels(spec["name"].as_str().expect("present"), h, w);
        let img = image::RgbImage::from_raw(w as u32, h as u32, px.into_raw_vec_and_offset().0)
            .expect("pixels");
        let rel = if i == 0 { "photos/image0.png" } else { "photos/more/image1.png" };
        img.save(dir.join(rel)).expect("png");
        files.push(rel);
    }
    let labels_arg = labels.join(",");
    let template = z["template"].as_str().expect("present");
    let base =
        ["zero-shot", "--model", "clip-tiny", "--labels", &labels_arg, "--template", template];

    // A folder, as JSON lines: transformers' probabilities, the summary last.
    let out = ok(&dir, &[&base[..], &["photos", "--json"]].concat());
    let lines: Vec<Value> = out.lines().map(json).collect();
    assert_eq!(lines.len(), 3, "{out}");
    for (i, line) in lines[..2].iter().enumerate() {
        assert!(line["input"].as_str().expect("present").ends_with(files[i]), "{line}");
        for (k, label) in labels.iter().enumerate() {
            let p = line["probabilities"][label].as_f64().expect("present");
            let w = want[i * labels.len() + k];
            assert!((p - w).abs() < 2e-3, "{}: {label} {p} against transformers' {w}", files[i]);
        }
        let best = (0..labels.len())
            .max_by(|&a, &b| want[i * labels.len() + a].total_cmp(&want[i * labels.len() + b]))
            .expect("present");
        assert_eq!(line["label"], labels[best].as_str(), "{line}");
    }
    assert_eq!(lines[2]["summary"]["images"], 2, "{out}");

    // A labelled manifest: one right, one wrong (its truth is the other's best label), and a
    // broken file reported by id while the others are classified; the run fails saying so.
    let best = |i: usize| lines[i]["label"].as_str().expect("present").to_string();
    let wrong = labels.iter().find(|l| **l != best(1)).expect("present").clone();
    std::fs::write(dir.join("photos/broken.png"), b"\x89PNG\r\n\x1a\nnot really").expect("write");
    let manifest = format!(
        "{}\n{}\n{}\n",
        serde_json::json!({"id": "a", "split": "test", "image": "image0.png", "label": best(0)}),
        serde_json::json!({"id": "b", "split": "test", "image": "more/image1.png", "label": wrong}),
        serde_json::json!({"id": "c", "split": "train", "image": "broken.png", "label": best(0)}),
    );
    std::fs::write(dir.join("photos/set.jsonl"), manifest).expect("manifest");
    let text = ok(&dir, &[&base[..], &["photos/set.jsonl", "--split", "test"]].concat());
    assert!(text.contains("accuracy: 50.00% (1 of 2 labelled images)"), "{text}");
    assert!(text.contains(&format!("(truth: {wrong})")), "{text}");
    let err = fails(&dir, &[&base[..], &["photos/set.jsonl"]].concat());
    assert!(err.contains("sample c:") && err.contains("broken.png"), "{err}");
    assert!(err.contains("1 of 3 images could not be read"), "{err}");

    // Single files, top-k, and a labels file.
    std::fs::write(dir.join("labels.txt"), format!("{}\n\n", labels.join("\n"))).expect("labels");
    let text = ok(
        &dir,
        &[
            "zero-shot",
            "--model",
            "clip-tiny",
            "--labels-file",
            "labels.txt",
            "--template",
            template,
            "--top-k",
            "1",
            files[1],
        ],
    );
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains(&best(1))
            && text.trim_end().split('\t').nth(1).expect("present").split("  ").count() == 1,
        "{text}"
    );

    // Bad input: each a clear error.
    let e = fails(
        &dir,
        &[
            "zero-shot",
            "--model",
            "clip-tiny",
            "--labels",
            &labels_arg,
            "--template",
            "a photo",
            files[0],
        ],
    );
    assert!(e.contains("{}"), "{e}");
    let e = fails(&dir, &["zero-shot", "--model", "clip-tiny", "--labels", ",", files[0]]);
    assert!(e.contains("no labels"), "{e}");
    std::fs::create_dir_all(dir.join("empty")).expect("mkdir");
    let e = fails(&dir, &[&base[..], &["empty"]].concat());
    assert!(e.contains("no images in this folder"), "{e}");
    let e = fails(&dir, &["zero-shot", "--model", "photos", "--labels", &labels_arg, files[0]]);
    assert!(e.contains("config.json"), "{e}");

    // A strip 64 times as long as wide is refused by name (its resize would be huge), and a
    // link back to a folder above is not followed (it would loop).
    std::fs::create_dir_all(dir.join("odd")).expect("mkdir");
    image::RgbImage::new(2, 128).save(dir.join("odd/strip.png")).expect("png");
    std::fs::copy(dir.join(files[0]), dir.join("odd/good.png")).expect("copy");
    std::os::unix::fs::symlink("..", dir.join("odd/loop")).expect("symlink");
    let e = fails(&dir, &[&base[..], &["odd"]].concat());
    assert!(e.contains("strip.png") && e.contains("too elongated"), "{e}");
    assert!(e.contains("1 of 2 images could not be read"), "{e}");

    // An index of the folder: built once, then reused; the broken file named, the rest kept.
    std::fs::remove_file(dir.join("photos/broken.png")).expect("rm");
    let index = ["index", "--model", "clip-tiny", "--out", "photos.clip-index", "photos"];
    let text = ok(&dir, &index);
    assert!(text.contains("indexed 2 images") && text.contains("2 embedded"), "{text}");
    let text = ok(&dir, &index);
    assert!(text.contains("0 embedded") && text.contains("2 reused"), "{text}");
    // Image to image: each image finds itself first, at similarity 1.
    for f in &files {
        let out = ok(&dir, &["retrieve", "--index", "photos.clip-index", "--query", f, "--json"]);
        let v = json(&out);
        assert_eq!(v["query_is_image"], true, "{v}");
        assert!(v["results"][0]["path"].as_str().expect("present").ends_with(f), "{v}");
        assert!((v["results"][0]["score"].as_f64().expect("present") - 1.0).abs() < 1e-4, "{v}");
    }
    // Text to image: the scores are the cosine similarities the library computes.
    let query = template.replace("{}", &labels[0]);
    let out = ok(&dir, &["retrieve", "--index", "photos.clip-index", "--query", &query, "--json"]);
    let v = json(&out);
    let (_vs, clip) =
        mm_encoders::clip::Clip::load(&dir.join("clip-tiny"), tch::Device::Cpu).expect("load");
    let processor =
        mm_encoders::clip::ClipProcessor::from_folder(&dir.join("clip-tiny"), clip.config())
            .expect("processor");
    let (ids, lengths) = processor.texts(std::slice::from_ref(&query)).expect("tokens");
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{v}");
    for r in results {
        let path = dir.join(r["path"].as_str().expect("present"));
        let pixels = mm_data::image::decode_image(&path).expect("decode");
        let cos = tch::no_grad(|| {
            let (t, i) = (
                clip.text_features(&ids, &lengths),
                clip.image_features(&processor.image(&pixels).expect("prepared").unsqueeze(0)),
            );
            clip.logits_per_image(&i, &t).double_value(&[0, 0]) / clip.scale()
        });
        assert!((r["score"].as_f64().expect("present") - cos).abs() < 1e-4, "{r} against {cos}");
    }
    assert!(results[0]["score"].as_f64() >= results[1]["score"].as_f64(), "{v}");
    // From another folder the index still finds its model.
    let out = ok(
        &dir.join("photos"),
        &["retrieve", "--index", "../photos.clip-index", "--query", "a dog"],
    );
    assert_eq!(out.lines().count(), 2, "{out}");
    // A new image is embedded, the others reused; --rebuild embeds all.
    std::fs::copy(dir.join(files[0]), dir.join("photos/copy.png")).expect("copy");
    let text = ok(&dir, &index);
    assert!(
        text.contains("indexed 3 images")
            && text.contains("1 embedded")
            && text.contains("2 reused"),
        "{text}"
    );
    let text = ok(&dir, &[&index[..], &["--rebuild"]].concat());
    assert!(text.contains("3 embedded"), "{text}");
    // A changed model invalidates the index: retrieve says so, index embeds all again.
    let weights = dir.join("clip-tiny/model.safetensors");
    let bytes = std::fs::read(&weights).expect("read");
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&weights, bytes).expect("touch");
    let e = fails(&dir, &["retrieve", "--index", "photos.clip-index", "--query", "a dog"]);
    assert!(e.contains("has changed") && e.contains("mm index"), "{e}");
    let text = ok(&dir, &index);
    assert!(text.contains("3 embedded"), "{text}");
    // Something that is not an index is neither read as one nor overwritten.
    let e = fails(&dir, &["index", "--model", "clip-tiny", "--out", "labels.txt", "photos"]);
    assert!(e.contains("not a CLIP index"), "{e}");
    let e = fails(
        &dir,
        &["index", "--model", "clip-tiny", "--out", "labels.txt", "photos", "--rebuild"],
    );
    assert!(e.contains("not a CLIP index"), "{e}");
    assert!(std::fs::read_to_string(dir.join("labels.txt"))
        .expect("present")
        .starts_with(&labels[0]));
    let e = fails(&dir, &["retrieve", "--index", "labels.txt", "--query", "a dog"]);
    assert!(e.contains("labels.txt"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The retrieval recipe's CLIP variant: both towers load (only their part of the file each),
/// retrieve before any training (`before.json`), fine-tune, evaluate and answer a query.
#[test]
fn clip_towers_fine_tune_for_retrieval_from_where_they_start() {
    let ws = workspace(240);
    let data = ws.join("data");
    let model = data.join("clip-tiny");
    if !model.join("model.safetensors").exists() {
        std::fs::create_dir_all(&data).expect("mkdir");
        tiny_clip(&data);
    }
    let recipe = configs().join("retrieval/retrieval-clip.toml");
    let out = "runs/clip/retrieval";
    let _ = std::fs::remove_dir_all(ws.join(out));
    let summary = json(&ok(
        ws,
        &[
            "train",
            "--config",
            recipe.to_str().expect("utf-8"),
            "--set",
            "model.encoders.text.model=data/clip-tiny",
            "--set",
            "model.encoders.image.model=data/clip-tiny",
            "--set",
            "data.text.tokenizer=data/clip-tiny/tokenizer.json",
            "--set",
            "data.text.max_tokens=16",
            "--set",
            "data.image.size=32",
            "--set",
            "train.epochs=2",
            "--set",
            "train.lr=1e-3",
            "--out",
            out,
            "--json",
        ],
    ));
    assert_eq!(summary["epochs"], 2, "{summary}");
    // Each tower took its part of the file: 2 layers of 16 tensors, embeddings, norms and its
    // projection (the text tower 23 + 16 + ..., counted from the golden listing).
    let g: Value = serde_json::from_slice(
        &std::fs::read(golden_dir().join("golden_clip_tiny.json")).expect("golden"),
    )
    .expect("json");
    let names: Vec<&str> = g["tensors"]
        .as_array()
        .expect("list")
        .iter()
        .map(|t| t["name"].as_str().expect("name"))
        .collect();
    for (side, own) in [
        ("text", ["text_model.", "text_projection"]),
        ("image", ["vision_model.", "visual_projection"]),
    ] {
        let n = names.iter().filter(|n| own.iter().any(|o| n.starts_with(o))).count();
        let said = summary["pretrained"][side].as_str().expect("pretrained");
        assert!(said.starts_with(&format!("loaded {n} tensors")), "{side}: {said}");
    }
    // Where CLIP starts, and where fine-tuning took it; both over the same validation split.
    let before = &summary["before"];
    for key in ["text_to_image_r1", "text_to_image_r10", "image_to_text_mrr"] {
        assert!(before[key].as_f64().is_some_and(|v| (0.0..=1.0).contains(&v)), "{key}: {before}");
    }
    let written =
        json(&std::fs::read_to_string(ws.join(out).join("before.json")).expect("before.json"));
    assert_eq!(&written, before);
    assert!(summary["best"]["value"].as_f64().is_some(), "{summary}");
    let metrics = json(&ok(ws, &["eval", "--run", out, "--device", "cpu", "--json"]));
    assert!(
        metrics["text_to_image_r10"].as_f64().is_some_and(|v| (0.0..=1.0).contains(&v)),
        "{metrics}"
    );
    let r = json(&ok(
        ws,
        &[
            "retrieve",
            "--run",
            out,
            "--query",
            "a red hoop near the top",
            "--top-k",
            "3",
            "--device",
            "cpu",
            "--json",
        ],
    ));
    assert_eq!(r["results"].as_array().map(Vec::len), Some(3), "{r}");

    // A tokenizer file that is not there, and towers of different sizes.
    let e = fails(
        ws,
        &[
            "train",
            "--config",
            recipe.to_str().expect("utf-8"),
            "--set",
            "model.encoders.text.model=data/clip-tiny",
            "--set",
            "model.encoders.image.model=data/clip-tiny",
            "--set",
            "data.text.tokenizer=data/clip-tiny/nothing.json",
            "--out",
            "runs/clip/x",
        ],
    );
    assert!(e.contains("nothing.json"), "{e}");
    let e = fails(
        ws,
        &[
            "train",
            "--config",
            recipe.to_str().expect("utf-8"),
            "--set",
            "model.encoders.text.model=data/clip-tiny",
            "--set",
            "model.encoders.image.model=data/clip-tiny",
            "--set",
            "data.text.tokenizer=data/clip-tiny/tokenizer.json",
            "--set",
            "data.text.max_tokens=16",
            "--set",
            "data.image.size=32",
            "--set",
            "model.encoders.image.project=8",
            "--out",
            "runs/clip/x",
        ],
    );
    assert!(e.contains("set dim") && e.contains("16") && e.contains('8'), "{e}");
}

/// `mm transcribe --model` with a tiny Whisper in transformers' layout (formula weights, its
/// config and tokenizer from mm-encoders' parity tests): the text transformers' model gives for
/// the same WAV file, as text and as JSON, greedily and with a beam; a broken file is named and
/// the others go on; options that do not fit Whisper are refused.
#[test]
fn whisper_transcribes_a_file_as_transformers() {
    let dir = std::env::temp_dir().join(format!("mm-cli-whisper-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let model = dir.join("whisper-tiny");
    std::fs::create_dir_all(&model).expect("mkdir");
    let g: Value = serde_json::from_slice(
        &std::fs::read(golden_dir().join("golden_whisper_tiny.json")).expect("golden"),
    )
    .expect("golden JSON");
    mm_encoders::formula::write_listing(
        &g["tensors"],
        &model.join("model.safetensors"),
        str::to_string,
    )
    .expect("weights");
    for f in ["config.json", "tokenizer.json", "generation_config.json"] {
        std::fs::copy(golden_dir().join("whisper_tiny").join(f), model.join(f)).expect("copy");
    }
    std::fs::copy(golden_dir().join("whisper_tiny/speech.wav"), dir.join("speech.wav"))
        .expect("wav");
    let want = g["text"].as_str().expect("text").trim();
    let text = ok(&dir, &["transcribe", "--model", "whisper-tiny", "speech.wav"]);
    assert_eq!(text.trim_end_matches('\n'), want);
    let v = json(&ok(&dir, &["transcribe", "--model", "whisper-tiny", "speech.wav", "--json"]));
    assert_eq!(v["text"], want, "{v}");
    assert_eq!(v["language"], "en", "{v}");
    assert_eq!(v["tokens"][0], g["greedy_ids"], "{v}");

    std::fs::write(dir.join("broken.wav"), b"RIFF....WAVEfmt ").expect("write");
    let e = fails(&dir, &["transcribe", "--model", "whisper-tiny", "speech.wav", "broken.wav"]);
    assert!(e.contains("broken.wav") && e.contains("1 of 2 files"), "{e}");
    let v = json(&ok(
        &dir,
        &["transcribe", "--model", "whisper-tiny", "--beam", "3", "speech.wav", "--json"],
    ));
    assert_eq!(v["tokens"][0], g["beam_ids"]["3"], "{v}");
    // Timed: the segments, as JSON and as lines, all from the one window the 1.5 s recording
    // fills (the windows after it, silence, are not decoded).
    let v = json(&ok(
        &dir,
        &["transcribe", "--model", "whisper-tiny", "--timestamps", "speech.wav", "--json"],
    ));
    let segments = v["segments"].as_array().expect("segments");
    assert!(!segments.is_empty(), "{v}");
    let lines = ok(&dir, &["transcribe", "--model", "whisper-tiny", "--timestamps", "speech.wav"]);
    assert_eq!(lines.lines().count(), segments.len(), "{lines}");
    for (line, s) in lines.lines().zip(segments) {
        let start = s["start"].as_f64().expect("start");
        assert!(line.starts_with(&format!("[{start:.2} --> ")), "{line} against {s}");
        assert!(start < 30.0, "{s}");
    }
    let e = fails(&dir, &["transcribe", "--model", "whisper-tiny", "--beam", "0", "speech.wav"]);
    assert!(e.contains("--beam 0"), "{e}");
    let e =
        fails(&dir, &["transcribe", "--model", "whisper-tiny", "--language", "fr", "speech.wav"]);
    assert!(e.contains("--language fr"), "{e}");
    let e = fails(&dir, &["transcribe", "--model", ".", "speech.wav"]);
    assert!(e.contains("config.json"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whisper's encoder as the audio encoder of a fusion run (`kind = "whisper"`, frozen) beside a
/// LeNet on the images: the audio through Whisper's front end, only the encoder's weights
/// loaded (and said so), trained, evaluated and predicted; a run that gives it the ordinary
/// log-mel frames is refused before anything is read.
#[test]
fn whisper_encodes_audio_in_a_fusion_run() {
    let ws = workspace(240);
    let model = ws.join("whisper-tiny");
    if !model.join("model.safetensors").is_file() {
        let g: Value = serde_json::from_slice(
            &std::fs::read(golden_dir().join("golden_whisper_tiny.json")).expect("golden"),
        )
        .expect("golden JSON");
        std::fs::create_dir_all(&model).expect("mkdir");
        for f in ["config.json", "tokenizer.json", "generation_config.json"] {
            std::fs::copy(golden_dir().join("whisper_tiny").join(f), model.join(f)).expect("copy");
        }
        mm_encoders::formula::write_listing(
            &g["tensors"],
            &model.join("model.safetensors"),
            str::to_string,
        )
        .expect("weights");
    }
    let config = r#"
[data]
manifest = "data/synth/manifest.jsonl"

[data.image]
size = 32

[data.audio]
front = "whisper"
mel = { n_mels = 8 }

[model.encoders.image]
kind = "image"
arch = "lenet"

[model.encoders.audio]
kind = "whisper"
model = "whisper-tiny"
freeze = true

[model.fusion]
method = "concat"

[model.head]
type = "classification"
hidden = [32]

[train]
epochs = 2
batch_size = 32
"#;
    std::fs::write(ws.join("whisper-fusion.toml"), config).expect("config");
    let out = "runs/whisper-fusion";
    let _ = std::fs::remove_dir_all(ws.join(out));
    ok(ws, &["train", "--config", "whisper-fusion.toml", "--out", out, "--device", "cpu"]);
    let record = json(
        &std::fs::read_to_string(ws.join(out).join("pretrained.json")).expect("pretrained.json"),
    );
    assert!(record["audio"]["loaded"].as_u64().is_some_and(|n| n > 10), "{record}");
    let m = json(&ok(ws, &["eval", "--run", out, "--device", "cpu", "--json"]));
    assert!(m["accuracy"].as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)), "{m}");
    let rows = ok(ws, &["predict", "--run", out, "--device", "cpu"]);
    assert!(rows.lines().count() > 0, "{rows}");
    // The ordinary front end does not fit Whisper.
    std::fs::write(ws.join("whisper-mel.toml"), config.replace("front = \"whisper\"\n", ""))
        .expect("config");
    let e = fails(ws, &["train", "--config", "whisper-mel.toml", "--check"]);
    assert!(e.contains("model.encoders.audio") && e.contains("front = \"whisper\""), "{e}");
}
