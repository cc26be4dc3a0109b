//! Captioning from the command line: a caption head learns to write the sentence that goes with
//! a sample, evaluated by BLEU and CIDEr-D, and `mm caption` describes files with it; runs that
//! cannot work are refused before training.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::runs::{fails, json, ok};

/// Five kinds of sample, each a noisy point near its own corner of a 4-d box and its own
/// sentence (one sentence shares words with another, so the decoder must read the input to
/// choose between them).
const SENTENCES: [&str; 5] = [
    "a red square on the left",
    "a red square on the right",
    "two blue circles at the top",
    "a small green triangle below a line",
    "nothing at all",
];

fn write_data(dir: &Path) {
    let mut manifest = String::new();
    let mut state = 12345u64;
    let mut noise = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.6
    };
    for i in 0..300 {
        let k = i % SENTENCES.len();
        let features: Vec<f64> = (0..4)
            .map(|d| f64::from(u8::from((k >> d) & 1 == 1 || (k == 4 && d == 3))) + noise())
            .collect();
        let split = match (i / SENTENCES.len()) % 10 {
            8 => "val",
            9 => "test",
            _ => "train",
        };
        let sample = serde_json::json!({"id": format!("s{i:03}"), "split": split,
            "features": features, "text": SENTENCES[k]});
        writeln!(manifest, "{sample}").expect("write");
    }
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("captions.jsonl"), manifest).expect("manifest");
    std::fs::write(
        dir.join("caption.toml"),
        r#"
[data]
manifest = "captions.jsonl"

[data.features]
dim = 4

[data.transcript]
unit = "words"

[model.encoders.features]
kind = "tabular"
hidden = [32]
out = 32

[model.head]
type = "caption"
inputs = ["features"]
dim = 32
layers = 1
heads = 2
dropout = 0.0
max_len = 12

[train]
epochs = 25
batch_size = 16
lr = 3e-3
"#,
    )
    .expect("config");
}

/// A caption head writes each sample's own sentence after training (greedy and with a beam),
/// which an untrained one does not; BLEU and CIDEr-D measure it; the words' vocabulary is saved
/// with the run; `mm predict` writes the caption beside the reference.
#[test]
fn a_caption_head_learns_to_write_each_samples_sentence() {
    let dir = std::env::temp_dir().join(format!("mm-cli-caption-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_data(&dir);
    let summary = json(&ok(
        &dir,
        &["train", "--config", "caption.toml", "--out", "runs/c", "--device", "cpu", "--json"],
    ));
    assert_eq!(summary["metric"], "cider", "{summary}");
    let vocab =
        std::fs::read_to_string(dir.join("runs/c/data/transcript_vocab.txt")).expect("vocab");
    assert!(vocab.starts_with("<pad>\n<unk>\n") && vocab.contains("\ncircles\n"), "{vocab}");
    let m = json(&ok(&dir, &["eval", "--run", "runs/c", "--device", "cpu", "--json"]));
    eprintln!("trained: {m}");
    for (k, low) in [("exact", 0.9), ("bleu4", 0.9), ("bleu1", 0.9), ("cider", 5.0)] {
        assert!(m[k].as_f64().is_some_and(|v| v >= low), "{k} below {low}: {m}");
    }
    let rows: Vec<Value> =
        ok(&dir, &["predict", "--run", "runs/c", "--device", "cpu"]).lines().map(json).collect();
    assert_eq!(rows.len(), 30);
    let right = rows.iter().filter(|r| r["prediction"] == r["reference"]).count();
    assert!(right >= 27, "{right} of 30: {rows:?}");
    for r in &rows {
        let reference = r["reference"].as_str().expect("reference");
        assert!(SENTENCES.contains(&reference), "{r}");
    }

    // Untrained (no epoch): the same evaluation scores far lower.
    ok(
        &dir,
        &["train", "--config", "caption.toml", "--set", "train.epochs=1", "--set", "train.lr=1e-9"]
            .into_iter()
            .chain(["--out", "runs/untrained", "--device", "cpu", "--quiet"])
            .collect::<Vec<_>>(),
    );
    let before = json(&ok(&dir, &["eval", "--run", "runs/untrained", "--device", "cpu", "--json"]));
    eprintln!("untrained: {before}");
    assert!(before["cider"].as_f64().expect("cider") < 1.0, "{before}");
    assert!(before["exact"].as_f64().expect("exact") < 0.3, "{before}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Settings that cannot make a caption run are refused by name before any data is read.
#[test]
fn caption_runs_that_cannot_work_are_refused() {
    let dir = std::env::temp_dir().join(format!("mm-cli-caption-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_data(&dir);
    let bad = |set: &[&str]| {
        let mut args = vec!["train", "--config", "caption.toml", "--check"];
        for s in set {
            args.extend(["--set", s]);
        }
        fails(&dir, &args)
    };
    let e = bad(&["model.head.inputs=[\"image\"]"]);
    assert!(e.contains("model.head.inputs") && e.contains("image"), "{e}");
    let e = bad(&["model.head.heads=3"]);
    assert!(e.contains("heads = 3") && e.contains("dim = 32"), "{e}");
    let e = bad(&["model.head.beam=0"]);
    assert!(e.contains("model.head.beam = 0"), "{e}");
    let e = bad(&["model.head.max_len=1"]);
    assert!(e.contains("model.head.max_len = 1"), "{e}");
    let e = bad(&["data.transcript.min_count=0"]);
    assert!(e.contains("data.transcript.min_count"), "{e}");
    let e = bad(&["model.head.label_smoothing=1.5"]);
    assert!(e.contains("label_smoothing"), "{e}");
    // No transcripts: nothing to learn to write.
    std::fs::write(
        dir.join("no-text.toml"),
        std::fs::read_to_string(dir.join("caption.toml"))
            .expect("config")
            .replace("[data.transcript]\nunit = \"words\"\n", ""),
    )
    .expect("write");
    let e = fails(&dir, &["train", "--config", "no-text.toml", "--check"]);
    assert!(e.contains("[data.transcript]"), "{e}");
    // Words seen too rarely to learn any.
    let e = fails(
        &dir,
        &[
            "train",
            "--config",
            "caption.toml",
            "--set",
            "data.transcript.min_count=1000",
            "--out",
            "runs/x",
        ],
    );
    assert!(e.contains("min_count") && e.contains("1000"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
