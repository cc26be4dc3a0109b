//! A search index of images embedded by a pretrained CLIP, with nothing trained: build it once
//! over a set of files, save it, and search it by text or by image (cosine similarity of the
//! normalised embeddings).
//!
//! The index is a safetensors file (`embeddings`, `[N, projection_dim]`, unit rows) whose
//! metadata records the model folder, a fingerprint of its weights file and, for each image,
//! its absolute path, size and modification time; [`ClipIndex::build`] reuses the rows of an earlier
//! index whose file and model are unchanged, so indexing a grown folder embeds only the new
//! images.
//!
//! ```no_run
//! use mm_encoders::clip::{Clip, ClipProcessor};
//! use mm_encoders::clip_index::ClipIndex;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = std::path::Path::new("data/clip-vit-base-patch32");
//! let (_vs, clip) = Clip::load(dir, tch::Device::Cpu)?;
//! let processor = ClipProcessor::from_folder(dir, clip.config())?;
//! let paths = vec!["photos/a.jpg".into(), "photos/b.jpg".into()];
//! let (index, failures) = ClipIndex::build(&clip, &processor, dir, &paths, None, 32)?;
//! assert!(failures.is_empty());
//! index.save("photos.clip-index".as_ref())?;
//! let query = index.text_query(&clip, &processor, "a dog on a beach")?;
//! for hit in index.search(&query, 5) {
//!     println!("{} {:.3}", hit.path.display(), hit.score);
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::clip::{Clip, ClipProcessor};
use crate::{Error, Result};

/// One indexed image: where it is and what it was when embedded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// The file, as given when indexing.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time, in nanoseconds since the Unix epoch.
    pub modified: u128,
}

/// What an index was built with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    model: PathBuf,
    model_fingerprint: String,
    entries: Vec<Entry>,
}

/// A file that could not be indexed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The file.
    pub path: PathBuf,
    /// Why (the decoder's message).
    pub reason: String,
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Position in the index.
    pub index: usize,
    /// The image file.
    pub path: PathBuf,
    /// Cosine similarity to the query.
    pub score: f32,
}

/// Image embeddings of a CLIP model with their files (see the module's documentation).
#[derive(Debug)]
pub struct ClipIndex {
    header: Header,
    embeddings: Tensor,
    reused: usize,
}

const HEADER_KEY: &str = "mm.clip_index";

fn stat(path: &Path) -> std::io::Result<(u64, u128)> {
    let m = std::fs::metadata(path)?;
    let modified = m.modified()?.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    Ok((m.len(), modified))
}

/// The model folder's weights file, by size, modification time and a digest of its
/// safetensors header (names, shapes, offsets and metadata, where a file mm writes keeps the
/// digest of its tensors): a re-fetched or fine-tuned model invalidates the rows.
fn fingerprint(model: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let file = crate::clip::ClipFolder::read(model)?.weights;
    let io =
        |e: std::io::Error| Error::Io { path: file.clone(), message: format!("cannot read: {e}") };
    let (size, modified) = stat(&file).map_err(io)?;
    let mut f = std::fs::File::open(&file).map_err(io)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(io)?;
    let n = u64::from_le_bytes(len).min(size.saturating_sub(8)).min(100 << 20);
    let mut header = Vec::with_capacity(n as usize);
    f.take(n).read_to_end(&mut header).map_err(io)?;
    let digest = sha2::Sha256::digest(&header);
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Ok(format!("{size}:{modified}:{hex}"))
}

/// A path as the index keeps it: absolute, so that the index works from any folder.
fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn unit(t: &Tensor) -> Tensor {
    t / t.norm_scalaropt_dim(2.0, [-1], true).clamp_min(1e-12)
}

impl ClipIndex {
    /// Embeds `paths` with `clip` (loaded from `model`), `batch` images at a time, decoding in
    /// parallel. Rows of `previous` whose file has the same size and modification time, under
    /// the same model weights, are reused. Files that cannot be read are returned as failures
    /// and left out; it is an error only when none can be read.
    pub fn build(
        clip: &Clip,
        processor: &ClipProcessor,
        model: &Path,
        paths: &[PathBuf],
        previous: Option<&ClipIndex>,
        batch: usize,
    ) -> Result<(ClipIndex, Vec<Failure>)> {
        use rayon::prelude::*;
        if paths.is_empty() {
            return Err(Error::Config("nothing to index: no image files given".into()));
        }
        let model_fingerprint = fingerprint(model)?;
        let model_path = absolute(model);
        let old: HashMap<&Entry, usize> = previous
            .filter(|p| {
                p.header.model_fingerprint == model_fingerprint && p.header.model == model_path
            })
            .map(|p| p.header.entries.iter().enumerate().map(|(i, e)| (e, i)).collect())
            .unwrap_or_default();
        let mut entries = Vec::with_capacity(paths.len());
        let mut rows: Vec<Tensor> = Vec::with_capacity(paths.len());
        let mut failures = Vec::new();
        let mut reused = 0;
        let mut todo: Vec<(Entry, usize)> = Vec::new();
        for path in paths {
            let path = &absolute(path);
            match stat(path) {
                Ok((size, modified)) => {
                    let entry = Entry { path: path.clone(), size, modified };
                    if let Some(&i) = old.get(&entry) {
                        let prev = previous.expect("rows come from the previous index");
                        rows.push(prev.embeddings.get(i as i64));
                        entries.push(entry);
                        reused += 1;
                    } else {
                        todo.push((entry, rows.len()));
                        rows.push(Tensor::zeros([0], (Kind::Float, Device::Cpu)));
                        entries.push(Entry { path: PathBuf::new(), size: 0, modified: 0 });
                    }
                }
                Err(e) => failures
                    .push(Failure { path: path.clone(), reason: format!("cannot read: {e}") }),
            }
        }
        let device = clip_device(clip);
        for chunk in todo.chunks(batch.max(1)) {
            let decoded: Vec<_> = chunk
                .par_iter()
                .map(|(e, _)| {
                    let pixels =
                        mm_data::image::decode_image(&e.path).map_err(|e| e.to_string())?;
                    processor.image(&pixels).map_err(|err| err.to_string())
                })
                .collect();
            let mut good = Vec::new();
            let mut pixels = Vec::new();
            for ((entry, slot), d) in chunk.iter().zip(decoded) {
                match d {
                    Ok(p) => {
                        good.push((entry, *slot));
                        pixels.push(p);
                    }
                    Err(e) => {
                        failures.push(Failure { path: entry.path.clone(), reason: e.to_string() })
                    }
                }
            }
            if pixels.is_empty() {
                continue;
            }
            let features = tch::no_grad(|| {
                unit(&clip.image_features(&Tensor::stack(&pixels, 0).to_device(device)))
            })
            .to_device(Device::Cpu);
            for (k, (entry, slot)) in good.into_iter().enumerate() {
                rows[slot] = features.get(k as i64);
                entries[slot] = entry.clone();
            }
        }
        // Files that failed leave an empty slot: drop them.
        let keep: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].numel() > 0).collect();
        if keep.is_empty() {
            return Err(Error::Config(format!(
                "none of the {} images could be read (the first: {})",
                paths.len(),
                failures.first().map_or(String::new(), |f| format!(
                    "{}: {}",
                    f.path.display(),
                    f.reason
                ))
            )));
        }
        let embeddings =
            Tensor::stack(&keep.iter().map(|&i| rows[i].shallow_clone()).collect::<Vec<_>>(), 0);
        let entries = keep.into_iter().map(|i| entries[i].clone()).collect();
        // Absolute paths: `mm retrieve --index` may run from another folder.
        let header = Header { model: model_path, model_fingerprint, entries };
        Ok((ClipIndex { header, embeddings, reused }, failures))
    }

    /// Writes the index atomically (safetensors, the header in its metadata).
    pub fn save(&self, path: &Path) -> Result<()> {
        let header = serde_json::to_string(&self.header).expect("a header is JSON");
        crate::weights::save_named_with(
            path,
            vec![("embeddings".to_string(), self.embeddings.shallow_clone())],
            BTreeMap::from([(HEADER_KEY.to_string(), header)]),
        )
    }

    /// Reads an index written by [`ClipIndex::save`]; a file that is not one is an error naming
    /// it.
    pub fn load(path: &Path) -> Result<ClipIndex> {
        let (tensors, metadata) = crate::weights::read_named_with_metadata(path)?;
        let bad = |m: &str| Error::Io {
            path: path.to_path_buf(),
            message: format!("not a CLIP index: {m}"),
        };
        let header: Header = metadata
            .get(HEADER_KEY)
            .ok_or_else(|| bad("no index header"))
            .and_then(|h| serde_json::from_str(h).map_err(|_| bad("its header is damaged")))?;
        let embeddings = tensors
            .into_iter()
            .find(|(n, _)| n == "embeddings")
            .map(|(_, t)| t)
            .ok_or_else(|| bad("no embeddings"))?;
        if embeddings.dim() != 2 || embeddings.size()[0] as usize != header.entries.len() {
            return Err(bad("the embeddings do not match its list of files"));
        }
        Ok(ClipIndex { header, embeddings, reused: 0 })
    }

    /// The model folder the index was built with.
    pub fn model(&self) -> &Path {
        &self.header.model
    }

    /// Whether the model folder's weights are still the ones the index was built with.
    pub fn model_unchanged(&self) -> bool {
        fingerprint(&self.header.model).is_ok_and(|f| f == self.header.model_fingerprint)
    }

    /// The indexed images.
    pub fn entries(&self) -> &[Entry] {
        &self.header.entries
    }

    /// `[N, projection_dim]` unit embeddings, on the CPU.
    pub fn embeddings(&self) -> &Tensor {
        &self.embeddings
    }

    /// How many rows [`ClipIndex::build`] took from the previous index.
    pub fn reused(&self) -> usize {
        self.reused
    }

    /// The unit embedding of a text query.
    pub fn text_query(&self, clip: &Clip, processor: &ClipProcessor, text: &str) -> Result<Tensor> {
        if text.trim().is_empty() {
            return Err(Error::Config("the query text is empty".into()));
        }
        let (ids, lengths) = processor.texts(&[text.to_string()])?;
        let device = clip_device(clip);
        Ok(tch::no_grad(|| {
            unit(&clip.text_features(&ids.to_device(device), &lengths.to_device(device)))
        })
        .to_device(Device::Cpu)
        .reshape([-1]))
    }

    /// The unit embedding of an image file as a query.
    pub fn image_query(
        &self,
        clip: &Clip,
        processor: &ClipProcessor,
        path: &Path,
    ) -> Result<Tensor> {
        let pixels =
            mm_data::image::decode_image(path).map_err(|e| Error::Config(e.to_string()))?;
        let prepared = processor
            .image(&pixels)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let device = clip_device(clip);
        Ok(tch::no_grad(|| unit(&clip.image_features(&prepared.unsqueeze(0).to_device(device))))
            .to_device(Device::Cpu)
            .reshape([-1]))
    }

    /// The `k` images most similar to a unit query embedding, best first.
    pub fn search(&self, query: &Tensor, k: usize) -> Vec<Hit> {
        let scores = self.embeddings.matmul(&query.to_kind(self.embeddings.kind()));
        let k = k.min(self.header.entries.len()) as i64;
        let (values, indices) = scores.topk(k, 0, true, true);
        let values = Vec::<f32>::try_from(&values.to_kind(Kind::Float)).unwrap_or_default();
        let indices = Vec::<i64>::try_from(&indices).unwrap_or_default();
        indices
            .into_iter()
            .zip(values)
            .map(|(i, score)| Hit {
                index: i as usize,
                path: self.header.entries[i as usize].path.clone(),
                score,
            })
            .collect()
    }
}

fn clip_device(clip: &Clip) -> Device {
    clip.device()
}
