//! The data sets mm knows how to fetch: where each file comes from, what it must hash to (and who
//! vouches for that digest), how it is unpacked and which converter turns it into a manifest.
//!
//! Archive bytes differ between hosts (gzip headers carry time stamps; GitHub re-creates its
//! archives), so where possible the check is on what is inside: the decompressed bytes of a
//! `.gz` ([`Check::Gunzip`]) or a digest of the kept members of an archive ([`Check::Members`]).
//! Entries nobody could verify are [`Check::Unverified`] and warn when fetched.
//!
//! Pretrained weights ([`Layout::Weights`]) are entries too: safetensors files with the names of
//! the library that published them (torchvision's, as timm republishes them; transformers'),
//! kept as they are. Every `.safetensors` download is also checked for structure before it is
//! kept (its header parses, and its tensors fill the file exactly), which catches a truncated
//! file or an error page whether or not a digest is known.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One data set: its files and what to make of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSet {
    /// Name on the command line and folder name under `--dir` (`mnist`).
    pub name: String,
    /// One line on what it is.
    pub title: String,
    /// Licence or terms of use, as upstream states them.
    pub licence: String,
    /// Home page or paper to cite.
    pub homepage: String,
    /// The files to download.
    pub artifacts: Vec<Artifact>,
    /// The converter that writes `manifest.jsonl`.
    pub layout: Layout,
}

/// One downloadable file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    /// Local file name.
    pub file: String,
    /// Upstream URLs, tried in order.
    pub urls: Vec<String>,
    /// Path under a mirror (`--mirror URL` fetches `URL/mirror_path`).
    pub mirror_path: String,
    /// Upstream size in bytes, when known (a mirror's archive may differ).
    pub size: Option<u64>,
    /// What the bytes must hash to.
    pub check: Check,
    /// Where that digest comes from.
    pub check_source: String,
    /// How it is unpacked into the data set's folder.
    pub unpack: Unpack,
}

/// How a download is verified, before anything is unpacked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// SHA-256 of the downloaded file (hex).
    Sha256(String),
    /// MD5 of the downloaded file (hex), where upstream publishes only that.
    Md5(String),
    /// SHA-256 of a `.gz` file's decompressed bytes (hex).
    Gunzip(String),
    /// SHA-256 of the text `"{sha256 of member}  {path}\n"` over the kept members of an archive,
    /// sorted by path (after [`Unpack::Archive::strip`]): `sha256sum` of the unpacked files,
    /// run from the unpacked root and piped into `sha256sum`, gives the same digest.
    Members(String),
    /// Nothing verified here: fetched with a warning.
    Unverified,
}

impl Check {
    /// Whether a digest backs this file.
    pub fn verified(&self) -> bool {
        !matches!(self, Check::Unverified)
    }
    /// What is hashed, in words.
    pub fn describe(&self) -> &'static str {
        match self {
            Check::Sha256(_) => "SHA-256 of the file",
            Check::Md5(_) => "MD5 of the file",
            Check::Gunzip(_) => "SHA-256 of the decompressed bytes",
            Check::Members(_) => "SHA-256 over the archive's kept members",
            Check::Unverified => "unverified",
        }
    }
}

/// How a downloaded file lands in the data set's folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unpack {
    /// Keep the file as it is, at this path (relative to the data set's folder).
    Copy {
        /// Destination, relative.
        to: String,
    },
    /// Decompress a `.gz` to this path (relative to the data set's folder).
    Gunzip {
        /// Destination, relative.
        to: String,
    },
    /// Unpack the kept members of a `.tar.gz`, `.tgz` or `.zip` (chosen by the file name).
    Archive {
        /// Leading path components dropped from every member (`1` drops `project-1.0/`).
        strip: usize,
        /// Patterns of members to keep, after `strip`: `/`-separated segments, each exact or
        /// with one `*` (`recordings/*.wav`).
        keep: Vec<String>,
        /// Folder, relative to the data set's, that receives them (`""`: the folder itself).
        into: String,
    },
}

/// The converter that writes a data set's `manifest.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// MNIST-style idx files in `raw/` (`train-*` and `t10k-*`) to PNGs, labels by class name.
    Idx {
        /// Class names by label value.
        classes: Vec<String>,
    },
    /// FSDD's `recordings/{digit}_{speaker}_{take}.wav`; takes 0-4 are the test split.
    Fsdd,
    /// CIFAR-10's binary batches in `cifar-10-batches-bin/` to PNGs.
    Cifar10,
    /// ESC-50's `audio/*.wav` with `meta/esc50.csv`: fold 5 test, fold 4 validation.
    Esc50,
    /// Flickr8k images and captions: one sample per (image, caption), the official splits.
    Flickr8k,
    /// Files only (word vectors): no manifest.
    Files,
    /// Pretrained weights (and their configuration and tokenizer), for `mm-encoders`: no
    /// manifest; `--list` shows them apart from the data sets.
    Weights,
}

fn artifact(
    file: &str,
    urls: &[&str],
    mirror_path: &str,
    size: Option<u64>,
    check: Check,
    check_source: &str,
    unpack: Unpack,
) -> Artifact {
    Artifact {
        file: file.into(),
        urls: urls.iter().map(|u| u.to_string()).collect(),
        mirror_path: mirror_path.into(),
        size,
        check,
        check_source: check_source.into(),
        unpack,
    }
}

fn archive(strip: usize, keep: &[&str], into: &str) -> Unpack {
    Unpack::Archive { strip, keep: keep.iter().map(|k| k.to_string()).collect(), into: into.into() }
}

/// The four idx files of an MNIST-style data set; `checks` in the order train images, train
/// labels, test images, test labels.
fn idx_artifacts(
    bases: &[&str],
    mirror_dir: &str,
    sizes: [u64; 4],
    checks: [Check; 4],
    source: &str,
) -> Vec<Artifact> {
    let stems = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ];
    stems
        .iter()
        .zip(sizes)
        .zip(checks)
        .map(|((stem, size), check)| {
            let file = format!("{stem}.gz");
            let urls: Vec<String> = bases.iter().map(|b| format!("{b}{file}")).collect();
            let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
            artifact(
                &file,
                &urls,
                &format!("{mirror_dir}/{file}"),
                Some(size),
                check,
                source,
                Unpack::Gunzip { to: format!("raw/{stem}") },
            )
        })
        .collect()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Every data set mm knows, in `--list` order.
pub fn registry() -> Vec<DataSet> {
    let sha = |s: &str| Check::Gunzip(s.into());
    let md5 = |s: &str| Check::Md5(s.into());
    vec![
        DataSet {
            name: "mnist".into(),
            title: "MNIST handwritten digits: 60,000 train and 10,000 test 28x28 greyscale images".into(),
            licence: "no licence file upstream (LeCun, Cortes and Burges); commonly treated as CC BY-SA 3.0".into(),
            homepage: "http://yann.lecun.com/exdb/mnist/".into(),
            artifacts: idx_artifacts(
                &["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
                "mnist",
                [9912422, 28881, 1648877, 4542],
                [
                    sha("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
                    sha("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
                    sha("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
                    sha("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
                ],
                "computed here from the canonical decompressed idx files (they match the team's data mirror's SHA256SUMS)",
            ),
            layout: Layout::Idx { classes: names(&["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]) },
        },
        DataSet {
            name: "fashion-mnist".into(),
            title: "Fashion-MNIST: 70,000 28x28 greyscale images of 10 kinds of clothing (MNIST's format)".into(),
            licence: "MIT (Zalando Research)".into(),
            homepage: "https://github.com/zalandoresearch/fashion-mnist".into(),
            artifacts: idx_artifacts(
                &["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
                "fashion-mnist",
                [26421880, 29515, 4422102, 5148],
                [
                    md5("8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                    md5("25c81989df183df01b3e8a0aad5dffbe"),
                    md5("bef4ecab320f06d8554ea6380940ec79"),
                    md5("bb300cfdad3c16e7a12a480ee83cd310"),
                ],
                "MD5 of the .gz files as published in the fashion-mnist README (and torchvision); not re-verified here",
            ),
            layout: Layout::Idx {
                classes: names(&["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]),
            },
        },
        DataSet {
            name: "fsdd".into(),
            title: "Free Spoken Digit Dataset v1.0.10: 3,000 recordings of digits, 6 speakers, 8 kHz WAV".into(),
            licence: "CC BY-SA 4.0 (cite github.com/Jakobovski/free-spoken-digit-dataset)".into(),
            homepage: "https://github.com/Jakobovski/free-spoken-digit-dataset".into(),
            artifacts: vec![artifact(
                "v1.0.10.tar.gz",
                &["https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"],
                "fsdd/v1.0.10.tar.gz",
                None,
                Check::Members("04e1baae96c6a26e39c623f2b01d0182ddae627ba0ac02a3cdc17ba2af99fd9b".into()),
                "computed here over the 3,000 recordings of the release archive in the team's data mirror",
                archive(1, &["recordings/*.wav"], ""),
            )],
            layout: Layout::Fsdd,
        },
        DataSet {
            name: "cifar10".into(),
            title: "CIFAR-10: 60,000 32x32 colour images in 10 classes (binary version)".into(),
            licence: "no licence stated; cite Krizhevsky (2009), Learning Multiple Layers of Features from Tiny Images".into(),
            homepage: "https://www.cs.toronto.edu/~kriz/cifar.html".into(),
            artifacts: vec![artifact(
                "cifar-10-binary.tar.gz",
                &["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"],
                "cifar10/cifar-10-binary.tar.gz",
                Some(170052171),
                Check::Md5("c32a1d4ab5d03f1284b67883e8d87530".into()),
                "MD5 published on the CIFAR page; not re-verified here",
                archive(0, &["cifar-10-batches-bin/*.bin", "cifar-10-batches-bin/batches.meta.txt"], ""),
            )],
            layout: Layout::Cifar10,
        },
        DataSet {
            name: "esc50".into(),
            title: "ESC-50: 2,000 five-second environmental sound clips in 50 classes (also noise for augmentation)".into(),
            licence: "CC BY-NC 3.0 (clips from freesound.org; cite Piczak 2015)".into(),
            homepage: "https://github.com/karolpiczak/ESC-50".into(),
            artifacts: vec![artifact(
                "ESC-50-master.zip",
                &["https://github.com/karolpiczak/ESC-50/archive/master.zip"],
                "esc50/ESC-50-master.zip",
                None,
                Check::Unverified,
                "no checksum published, and the branch archive can change",
                archive(1, &["audio/*.wav", "meta/esc50.csv"], ""),
            )],
            layout: Layout::Esc50,
        },
        DataSet {
            name: "flickr8k".into(),
            title: "Flickr8k: 8,091 images with five captions each, official 6,000/1,000/1,000 splits".into(),
            licence: "research use only; cite Hodosh, Young and Hockenmaier (2013), JAIR 47".into(),
            homepage: "https://hockenmaier.cs.illinois.edu/8k-pictures.html".into(),
            artifacts: vec![
                artifact(
                    "Flickr8k_Dataset.zip",
                    &["https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_Dataset.zip"],
                    "flickr8k/Flickr8k_Dataset.zip",
                    None,
                    Check::Unverified,
                    "no checksum published by the original authors; the common copy is a third party's",
                    archive(1, &["*.jpg"], "images"),
                ),
                artifact(
                    "Flickr8k_text.zip",
                    &["https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_text.zip"],
                    "flickr8k/Flickr8k_text.zip",
                    None,
                    Check::Unverified,
                    "no checksum published by the original authors; the common copy is a third party's",
                    archive(0, &["Flickr8k.token.txt", "Flickr_8k.trainImages.txt", "Flickr_8k.devImages.txt", "Flickr_8k.testImages.txt"], "text"),
                ),
            ],
            layout: Layout::Flickr8k,
        },
        DataSet {
            name: "glove".into(),
            title: "GloVe 6B word vectors (400k words; 50, 100, 200 and 300 dimensions), 822 MB".into(),
            licence: "PDDL 1.0 (Stanford NLP; cite Pennington, Socher and Manning 2014)".into(),
            homepage: "https://nlp.stanford.edu/projects/glove/".into(),
            artifacts: vec![artifact(
                "glove.6B.zip",
                &["https://nlp.stanford.edu/data/glove.6B.zip"],
                "glove/glove.6B.zip",
                Some(862182613),
                Check::Unverified,
                "no checksum published upstream",
                archive(0, &["glove.6B.*d.txt"], ""),
            )],
            layout: Layout::Files,
        },
        timm_weights("resnet18", "ResNet-18", "11.7 M parameters, 512 features"),
        timm_weights("resnet50", "ResNet-50", "25.6 M parameters, 2048 features"),
        timm_weights("vgg16", "VGG-16", "138 M parameters, 4096 features"),
        hub_model(
            "bert-base-uncased",
            "google-bert/bert-base-uncased",
            "BERT base, uncased (Devlin et al. 2019): 110 M parameters, 768 wide, with its WordPiece tokenizer.json",
            "Apache 2.0 (Google; published by Hugging Face as google-bert/bert-base-uncased)",
            &["model.safetensors", "config.json", "tokenizer.json"],
        ),
        hub_model(
            "clip-vit-base-patch32",
            "openai/clip-vit-base-patch32",
            "CLIP ViT-B/32 (Radford et al. 2021): 151 M parameters, 512-d image and text embeddings, 224x224 images in 32x32 patches, with its BPE tokenizer.json",
            "MIT (OpenAI's CLIP, published by OpenAI on the Hugging Face Hub)",
            CLIP_FILES,
        ),
        hub_model(
            "clip-vit-base-patch16",
            "openai/clip-vit-base-patch16",
            "CLIP ViT-B/16 (Radford et al. 2021): 150 M parameters, 512-d embeddings, 224x224 images in 16x16 patches (slower, more accurate than B/32), with its BPE tokenizer.json",
            "MIT (OpenAI's CLIP, published by OpenAI on the Hugging Face Hub)",
            CLIP_FILES,
        ),
        hub_model(
            "whisper-tiny",
            "openai/whisper-tiny",
            "Whisper tiny (Radford et al. 2022): 39 M parameters, multilingual speech recognition, with its tokenizer.json",
            "Apache 2.0 (OpenAI's Whisper, published by OpenAI on the Hugging Face Hub)",
            WHISPER_FILES,
        ),
        hub_model(
            "whisper-base",
            "openai/whisper-base",
            "Whisper base (Radford et al. 2022): 74 M parameters, multilingual speech recognition, with its tokenizer.json",
            "Apache 2.0 (OpenAI's Whisper, published by OpenAI on the Hugging Face Hub)",
            WHISPER_FILES,
        ),
        hub_model(
            "whisper-small",
            "openai/whisper-small",
            "Whisper small (Radford et al. 2022): 244 M parameters, multilingual speech recognition, with its tokenizer.json",
            "Apache 2.0 (OpenAI's Whisper, published by OpenAI on the Hugging Face Hub)",
            WHISPER_FILES,
        ),
    ]
}

/// A Whisper model folder as `mm transcribe --model` reads it.
const WHISPER_FILES: &[&str] =
    &["model.safetensors", "config.json", "tokenizer.json", "generation_config.json"];

/// A CLIP model folder as transformers reads it (`mm zero-shot --model`, `kind = "clip-image"`).
const CLIP_FILES: &[&str] =
    &["model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json"];

/// A model's files from the Hugging Face Hub repository `repo`, into `data/NAME/`.
fn hub_model(name: &str, repo: &str, title: &str, licence: &str, files: &[&str]) -> DataSet {
    DataSet {
        name: name.into(),
        title: title.into(),
        licence: licence.into(),
        homepage: format!("https://huggingface.co/{repo}"),
        artifacts: files
            .iter()
            .map(|file| {
                artifact(
                    file,
                    &[&format!("https://huggingface.co/{repo}/resolve/main/{file}")],
                    &format!("{name}/{file}"),
                    None,
                    Check::Unverified,
                    HUB_UNVERIFIED,
                    Unpack::Copy { to: file.to_string() },
                )
            })
            .collect(),
        layout: Layout::Weights,
    }
}

/// Why the Hugging Face Hub's files are not verified by digest.
const HUB_UNVERIFIED: &str =
    "the Hugging Face Hub shows each file's SHA-256 on its page, but no copy could be read \
    where this registry was written (no internet); safetensors files are checked for structure";

/// ImageNet weights of torchvision's `name` as timm republishes them on the Hugging Face Hub
/// (`timm/NAME.tv_in1k`: torchvision's own numbers, torchvision's names; VGG's fully connected
/// layers as convolutions, which `mm_encoders::image::timm_name` maps back).
fn timm_weights(name: &str, arch: &str, what: &str) -> DataSet {
    let repo = format!("timm/{name}.tv_in1k");
    DataSet {
        name: name.into(),
        title: format!(
            "{arch} ImageNet-1k weights (torchvision's IMAGENET1K_V1, {what}), safetensors"
        ),
        licence: "BSD-3-Clause (torchvision's weights, as timm republishes them)".into(),
        homepage: format!("https://huggingface.co/{repo}"),
        artifacts: vec![artifact(
            "model.safetensors",
            &[&format!("https://huggingface.co/{repo}/resolve/main/model.safetensors")],
            &format!("{name}/model.safetensors"),
            None,
            Check::Unverified,
            HUB_UNVERIFIED,
            Unpack::Copy { to: "model.safetensors".into() },
        )],
        layout: Layout::Weights,
    }
}

/// The registry's entry called `name`.
pub fn find(name: &str) -> Result<DataSet> {
    let all = registry();
    let known = all.iter().map(|d| d.name.clone()).collect::<Vec<_>>().join(", ");
    all.into_iter().find(|d| d.name == name).ok_or(Error::Unknown { name: name.into(), known })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_mirror_paths_are_unique_and_every_entry_has_a_source() {
        let all = registry();
        let mut names: Vec<_> = all.iter().map(|d| d.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
        let mut paths: Vec<_> =
            all.iter().flat_map(|d| d.artifacts.iter().map(|a| a.mirror_path.clone())).collect();
        let n = paths.len();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), n);
        for d in &all {
            assert!(!d.artifacts.is_empty() && !d.licence.is_empty(), "{}", d.name);
            for a in &d.artifacts {
                assert!(!a.urls.is_empty() && !a.check_source.is_empty(), "{}", a.file);
                if let Check::Sha256(h) | Check::Gunzip(h) | Check::Members(h) = &a.check {
                    assert!(
                        h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()),
                        "{}",
                        a.file
                    );
                }
                if let Check::Md5(h) = &a.check {
                    assert!(
                        h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()),
                        "{}",
                        a.file
                    );
                }
            }
        }
        assert!(matches!(find("nope"), Err(Error::Unknown { .. })));
    }
}
