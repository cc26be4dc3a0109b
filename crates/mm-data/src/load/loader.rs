//! The data loader: samples of one split are decoded and augmented in parallel (rayon),
//! whole batches are prepared ahead on a background thread, and each batch is collated into
//! `tch` tensors with padding, lengths and a presence mask.
//!
//! - Order: seeded shuffling per epoch, or class-balanced sampling (each class drawn equally
//!   often, with replacement, as PyTorch's `WeightedRandomSampler` with inverse class
//!   frequencies); `drop_last` leaves out a final short batch.
//! - Memory stays bounded: at most `prefetch` batches wait in the queue, nothing is decoded
//!   before it is needed, and the optional cache of decoded files ([`Loader::with_cache`]) has
//!   a byte budget.
//! - A sample that fails to load stops the epoch with an error naming it (run the
//!   [cleaning pass](crate::clean) first to drop bad samples with a report).
//! - The same seed gives the same batches whatever the number of threads.
//!
//! ```no_run
//! use std::sync::Arc;
//! use mm_data::loader::{Loader, LoaderConfig};
//! use mm_data::manifest::{Manifest, Split};
//! use mm_data::pipeline::{ImageSpec, Pipeline};
//!
//! let manifest = Arc::new(Manifest::read("data/manifest.jsonl")?);
//! let mut pipeline = Pipeline::new(vec!["cat".into(), "dog".into()]);
//! pipeline.image = Some(ImageSpec::new((64, 64)));
//! let config = LoaderConfig { batch_size: 32, ..LoaderConfig::training(0) };
//! let loader = Loader::new(manifest, Split::Train, Arc::new(pipeline), config)?;
//! for batch in loader.epoch(0) {
//!     let batch = batch?;
//!     let images = batch.image.as_ref().unwrap(); // [B, 3, 64, 64]
//!     let labels = batch.label.as_ref().unwrap(); // [B], -100 where a sample has none
//! }
//! # Ok::<(), mm_data::Error>(())
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rayon::prelude::*;
use tch::{Device, Tensor};

use crate::error::{Error, Result};
use crate::manifest::{Manifest, Sample, Split};
use crate::modality::Modality;
use crate::pipeline::{DecodedCache, Item, Memory, Pipeline};
use crate::rng::Rng;
use crate::shards::{read_samples, ShardEntry, ShardIndex, INDEX_FILE};

/// The class id of a sample without a label (PyTorch's `ignore_index` default).
pub const NO_LABEL: i64 = -100;

/// How batches are formed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Shuffle the order every epoch.
    pub shuffle: bool,
    /// Draw classes equally often (with replacement) instead of going through the samples.
    pub balanced: bool,
    /// Leave out the last batch when it is short.
    pub drop_last: bool,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    /// Augment and apply modality dropout (training), or not (evaluation).
    pub train: bool,
    /// Seed of the order (the pipeline has its own for augmentation).
    pub seed: u64,
    /// Which part of every epoch this loader yields, for data-parallel training.
    pub shard: Shard,
}

/// One rank's part of every epoch in data-parallel training: of the epoch's order (the same
/// on every rank, from the seed and the epoch), the samples at positions `rank`, `rank + world`,
/// `rank + 2 world`, ... So the ranks' parts are disjoint, their union is the whole epoch, and
/// batch `k` of every rank together is exactly batch `k` of one process with `world` times the
/// batch size. When the last batch is dropped, it is dropped for all ranks at once (the epoch
/// is cut to a multiple of `world` times the batch size), so every rank has as many batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This part, from 0.
    pub rank: usize,
    /// Parts in all.
    pub world: usize,
}

impl Shard {
    /// The whole epoch (one process).
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };
}

impl Default for Shard {
    fn default() -> Self {
        Shard::WHOLE
    }
}

impl LoaderConfig {
    /// Training: shuffled, augmented, last short batch dropped, batches of 64, 4 prefetched.
    pub fn training(seed: u64) -> Self {
        LoaderConfig {
            batch_size: 64,
            shuffle: true,
            balanced: false,
            drop_last: true,
            prefetch: 4,
            train: true,
            seed,
            shard: Shard::WHOLE,
        }
    }

    /// Evaluation: in manifest order, no augmentation, every sample.
    pub fn evaluation() -> Self {
        LoaderConfig {
            batch_size: 64,
            shuffle: false,
            balanced: false,
            drop_last: false,
            prefetch: 4,
            train: false,
            seed: 0,
            shard: Shard::WHOLE,
        }
    }
}

/// A collated batch. Every tensor is on the CPU; [`Batch::to_device`] moves them.
#[derive(Debug)]
pub struct Batch {
    /// Sample ids, in batch order.
    pub ids: Vec<String>,
    /// The modalities, in the order of `present`'s columns.
    pub modalities: Vec<Modality>,
    /// `[B, M]` float: 1 where the sample has the modality.
    pub present: Tensor,
    /// `[B, 3, H, W]`, zeros where absent.
    pub image: Option<Tensor>,
    /// `[B, T, n_mels]` padded with zeros, and `[B]` lengths in frames (0 where absent).
    pub audio: Option<(Tensor, Tensor)>,
    /// `[B, L]` token ids padded with 0 (`<pad>`), and `[B]` lengths.
    pub text: Option<(Tensor, Tensor)>,
    /// `[B, T, 3, H, W]` padded with zeros, and `[B]` lengths in frames.
    pub frames: Option<(Tensor, Tensor)>,
    /// `[B, D]`, zeros where absent.
    pub features: Option<Tensor>,
    /// `[B]` class ids, [`NO_LABEL`] where a sample has none; `None` if no sample has one.
    pub label: Option<Tensor>,
    /// `[B, C]` multi-hot class targets; `None` if no sample has multi-labels.
    pub labels: Option<Tensor>,
    /// `[B]` regression targets and `[B]` float mask (1 where a sample has one).
    pub target: Option<(Tensor, Tensor)>,
    /// `[B, L]` transcript character ids padded with 0 (the blank, never a character) and
    /// `[B]` lengths; `None` without [`Pipeline::transcript`].
    pub transcript: Option<(Tensor, Tensor)>,
}

impl Batch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the batch is empty (never, for batches a loader yields).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Each sample's transcript character ids, unpadded, in host memory; `None` without
    /// transcripts.
    pub fn transcripts(&self) -> Option<Vec<Vec<i64>>> {
        let (ids, lengths) = self.transcript.as_ref()?;
        let width = ids.size().get(1).copied().unwrap_or(0).max(0) as usize;
        let ids: Vec<i64> =
            Vec::try_from(ids.to_device(Device::Cpu).contiguous().view([-1])).ok()?;
        let lengths: Vec<i64> = Vec::try_from(lengths.to_device(Device::Cpu)).ok()?;
        Some(
            lengths
                .iter()
                .enumerate()
                .map(|(j, &n)| ids[j * width..j * width + (n.max(0) as usize).min(width)].to_vec())
                .collect(),
        )
    }

    /// Moves every tensor to `device` (asynchronously from pinned memory on CUDA).
    pub fn to_device(self, device: Device) -> Batch {
        if device == Device::Cpu {
            return self;
        }
        let mv = |t: Tensor| {
            let pinned = if device.is_cuda() { t.pin_memory(device) } else { t };
            pinned.to_device_(device, pinned.kind(), true, false)
        };
        let pair = |p: (Tensor, Tensor)| (mv(p.0), mv(p.1));
        Batch {
            ids: self.ids,
            modalities: self.modalities,
            present: mv(self.present),
            image: self.image.map(mv),
            audio: self.audio.map(pair),
            text: self.text.map(pair),
            frames: self.frames.map(pair),
            features: self.features.map(mv),
            label: self.label.map(mv),
            labels: self.labels.map(mv),
            target: self.target.map(pair),
            transcript: self.transcript.map(pair),
        }
    }
}

fn tensor(data: Vec<f32>, shape: &[i64]) -> Tensor {
    Tensor::from_slice(&data).view(shape)
}

/// A zero-filled `f32` tensor of `shape` whose `i`-th slot of `per_item` values starts with the
/// concatenation of `parts[i]` (the rest of the slot stays zero: padding, or an absent
/// modality). The parts are copied straight into the tensor's memory, in parallel: one copy per
/// value, where building a `Vec` and then a tensor from it would make two, serially.
fn stack_f32(shape: &[i64], per_item: usize, parts: &[Vec<&[f32]>]) -> Tensor {
    let t = Tensor::zeros(shape, (tch::Kind::Float, Device::Cpu));
    assert_eq!(t.numel(), per_item * parts.len(), "shape holds one slot per item");
    let base = t.data_ptr() as usize;
    parts.par_iter().enumerate().for_each(|(i, slices)| {
        let mut offset = i * per_item;
        for src in slices {
            assert!(offset + src.len() <= (i + 1) * per_item, "an item overflows its slot");
            // SAFETY: `t` is a freshly allocated, contiguous CPU f32 tensor of
            // `parts.len() · per_item` values that lives until this function returns; every item
            // writes only inside its own slot `[i · per_item, (i + 1) · per_item)` (checked above),
            // so the writes are in bounds and never overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src.as_ptr(),
                    (base as *mut f32).add(offset),
                    src.len(),
                )
            };
            offset += src.len();
        }
    });
    t
}

/// Collates items into a batch for a pipeline's modalities (see [`Batch`] for the layout).
///
/// # Panics
/// If `items` is empty, or items disagree on shapes the pipeline fixes (a programmer error:
/// the pipeline makes every image the same size).
pub fn collate(items: &[Item], pipeline: &Pipeline) -> Batch {
    assert!(!items.is_empty(), "cannot collate an empty batch");
    let b = items.len() as i64;
    let modalities = pipeline.modalities();
    let mut present = Vec::with_capacity(items.len() * modalities.len());
    for it in items {
        for m in &modalities {
            present.push(if m.in_item(it) { 1.0 } else { 0.0 });
        }
    }
    let image = pipeline.image.as_ref().map(|spec| {
        let (h, w) = spec.size;
        let parts: Vec<Vec<&[f32]>> = items
            .iter()
            .map(|it| it.image.iter().map(|a| a.as_slice().expect("standard layout")).collect())
            .collect();
        stack_f32(&[b, 3, h as i64, w as i64], 3 * h * w, &parts)
    });
    let audio = pipeline.audio.as_ref().map(|spec| {
        let f = spec.mel.config().n_mels;
        let t = items
            .iter()
            .filter_map(|i| i.audio.as_ref().map(|a| a.nrows()))
            .max()
            .unwrap_or(0)
            .max(1);
        let parts: Vec<Vec<&[f32]>> = items
            .iter()
            .map(|it| it.audio.iter().map(|a| a.as_slice().expect("standard layout")).collect())
            .collect();
        let lengths: Vec<i64> =
            items.iter().map(|it| it.audio.as_ref().map_or(0, |a| a.nrows() as i64)).collect();
        (stack_f32(&[b, t as i64, f as i64], t * f, &parts), Tensor::from_slice(&lengths))
    });
    let text = pipeline.text.as_ref().map(|_| {
        let l =
            items.iter().filter_map(|i| i.tokens.as_ref().map(Vec::len)).max().unwrap_or(0).max(1);
        let mut data = vec![0i64; items.len() * l];
        let mut lengths = Vec::with_capacity(items.len());
        for (chunk, it) in data.chunks_exact_mut(l).zip(items) {
            let len = it.tokens.as_ref().map_or(0, |t| {
                chunk[..t.len()].copy_from_slice(t);
                t.len()
            });
            lengths.push(len as i64);
        }
        (Tensor::from_slice(&data).view([b, l as i64]), Tensor::from_slice(&lengths))
    });
    let frames = pipeline.frames.as_ref().map(|spec| {
        let (h, w) = spec.image.size;
        let per = 3 * h * w;
        let t =
            items.iter().filter_map(|i| i.frames.as_ref().map(Vec::len)).max().unwrap_or(0).max(1);
        let parts: Vec<Vec<&[f32]>> = items
            .iter()
            .map(|it| {
                it.frames.iter().flatten().map(|f| f.as_slice().expect("standard layout")).collect()
            })
            .collect();
        let lengths: Vec<i64> =
            items.iter().map(|it| it.frames.as_ref().map_or(0, |f| f.len() as i64)).collect();
        (
            stack_f32(&[b, t as i64, 3, h as i64, w as i64], t * per, &parts),
            Tensor::from_slice(&lengths),
        )
    });
    let features = pipeline.features.as_ref().map(|spec| {
        let mut data = vec![0.0f32; items.len() * spec.dim];
        for (chunk, it) in data.chunks_exact_mut(spec.dim.max(1)).zip(items) {
            if let Some(f) = &it.features {
                chunk.copy_from_slice(f);
            }
        }
        tensor(data, &[b, spec.dim as i64])
    });
    let label = items.iter().any(|i| i.label.is_some()).then(|| {
        Tensor::from_slice(&items.iter().map(|i| i.label.unwrap_or(NO_LABEL)).collect::<Vec<_>>())
    });
    let labels = items.iter().any(|i| !i.labels.is_empty()).then(|| {
        let c = pipeline.classes.len();
        let mut data = vec![0.0f32; items.len() * c];
        for (row, it) in data.chunks_exact_mut(c.max(1)).zip(items) {
            for &l in &it.labels {
                row[l as usize] = 1.0;
            }
        }
        tensor(data, &[b, c as i64])
    });
    let target = items.iter().any(|i| i.target.is_some()).then(|| {
        let values: Vec<f32> = items.iter().map(|i| i.target.unwrap_or(0.0)).collect();
        let mask: Vec<f32> =
            items.iter().map(|i| if i.target.is_some() { 1.0 } else { 0.0 }).collect();
        (Tensor::from_slice(&values), Tensor::from_slice(&mask))
    });
    let transcript = items.iter().any(|i| i.transcript.is_some()).then(|| {
        let l = items
            .iter()
            .filter_map(|i| i.transcript.as_ref().map(Vec::len))
            .max()
            .unwrap_or(0)
            .max(1);
        let mut data = vec![0i64; items.len() * l];
        let mut lengths = Vec::with_capacity(items.len());
        for (chunk, it) in data.chunks_exact_mut(l).zip(items) {
            let t = it.transcript.as_deref().unwrap_or(&[]);
            chunk[..t.len()].copy_from_slice(t);
            lengths.push(t.len() as i64);
        }
        (Tensor::from_slice(&data).view([b, l as i64]), Tensor::from_slice(&lengths))
    });
    Batch {
        ids: items.iter().map(|i| i.id.clone()).collect(),
        present: tensor(present, &[b, modalities.len() as i64]),
        modalities,
        image,
        audio,
        text,
        frames,
        features,
        label,
        labels,
        target,
        transcript,
    }
}

/// Reader threads of a sharded loader, each streaming its own shards (see [`Loader::from_shards`]).
pub const SHARD_READERS: usize = 2;
/// Samples a sharded training loader holds to shuffle them across shards.
pub const SHUFFLE_BUFFER: usize = 1000;

/// Batches of one split of a manifest, or of a folder of shards.
#[derive(Debug, Clone)]
pub struct Loader {
    manifest: Arc<Manifest>,
    pipeline: Arc<Pipeline>,
    /// Manifest indices of the split's samples.
    indices: Vec<usize>,
    config: LoaderConfig,
    cache: Option<Arc<DecodedCache>>,
    /// The split's shards, when the samples come from tar shards.
    shards: Option<(Arc<ShardIndex>, Split)>,
}

impl Loader {
    /// A loader over the samples of `split`. Errors: a batch size of 0, an empty split, or
    /// balanced sampling without labels.
    pub fn new(
        manifest: Arc<Manifest>,
        split: Split,
        pipeline: Arc<Pipeline>,
        config: LoaderConfig,
    ) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(Error::Config("batch_size must be at least 1".to_string()));
        }
        if config.shard.world == 0 || config.shard.rank >= config.shard.world {
            return Err(Error::Config(format!(
                "shard {} of {}: the rank must be below the number of parts",
                config.shard.rank, config.shard.world
            )));
        }
        let indices: Vec<usize> = manifest
            .samples()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.split == split)
            .map(|(i, _)| i)
            .collect();
        if indices.is_empty() {
            return Err(Error::Config(format!(
                "the {split} split of {} has no samples",
                manifest.source().display()
            )));
        }
        if config.balanced {
            if let Some(&i) = indices.iter().find(|&&i| manifest.samples()[i].label.is_none()) {
                return Err(Error::Config(format!(
                    "balanced sampling needs a label on every sample; {:?} has none",
                    manifest.samples()[i].id
                )));
            }
        }
        Ok(Loader { manifest, pipeline, indices, config, cache: None, shards: None })
    }

    /// A loader streaming the samples of `split` from WebDataset-style tar shards
    /// ([`crate::shards`]): each reader holds one sample's files at a time, a training epoch up
    /// to [`SHUFFLE_BUFFER`] samples' in its shuffle buffer, and nothing is unpacked to disk.
    ///
    /// Each epoch the split's shards are shuffled (when `config.shuffle`; seeded by the seed and
    /// the epoch) and dealt to the ranks of `config.shard` in turn, so ranks read disjoint
    /// shards whose union is the split; a rank's shards are dealt in turn to
    /// [`SHARD_READERS`] reader threads, whose samples are taken in turn (so the order does
    /// not depend on timing), mixed in a buffer of [`SHUFFLE_BUFFER`] samples when training,
    /// and decoded in parallel batch by batch. When the last short batch is dropped, every rank
    /// takes as many batches as the rank with the fewest samples can fill, and
    /// [`Loader::unused`] says how many samples that leaves out of the epoch. Balanced sampling
    /// needs random access and is refused.
    pub fn from_shards(
        index: Arc<ShardIndex>,
        split: Split,
        pipeline: Arc<Pipeline>,
        config: LoaderConfig,
    ) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(Error::Config("batch_size must be at least 1".to_string()));
        }
        if config.shard.world == 0 || config.shard.rank >= config.shard.world {
            return Err(Error::Config(format!(
                "shard {} of {}: the rank must be below the number of parts",
                config.shard.rank, config.shard.world
            )));
        }
        let source = index.root().join(INDEX_FILE);
        if index.samples(split) == 0 {
            return Err(Error::Config(format!(
                "the {split} split of {} has no samples",
                source.display()
            )));
        }
        if config.balanced {
            return Err(Error::Config(format!("{}: balanced sampling needs random access to the samples, which tar shards do not give", source.display())));
        }
        let n = index.shards(split).len();
        if config.drop_last && n < config.shard.world {
            return Err(Error::Config(format!(
                "the {split} split of {} has {n} shard(s) for {} ranks: each rank needs one at least; write smaller shards (mm data shard --max-samples)",
                source.display(),
                config.shard.world
            )));
        }
        let manifest = Arc::new(Manifest::new(index.root()));
        Ok(Loader {
            manifest,
            pipeline,
            indices: Vec::new(),
            config,
            cache: None,
            shards: Some((index, split)),
        })
    }

    /// The shards (indices into the split's list) each rank reads in `epoch`.
    fn dealt(&self, index: &ShardIndex, split: Split, epoch: u64) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..index.shards(split).len()).collect();
        if self.config.shuffle {
            Rng::for_sample(self.config.seed, epoch, u64::MAX, 1).shuffle(&mut order);
        }
        let world = self.config.shard.world;
        (0..world).map(|r| order.iter().skip(r).step_by(world).copied().collect()).collect()
    }

    /// Samples of each rank in `epoch` (sharded loaders).
    fn rank_samples(&self, epoch: u64) -> Vec<usize> {
        match &self.shards {
            Some((index, split)) => self
                .dealt(index, *split, epoch)
                .iter()
                .map(|s| s.iter().map(|&i| index.shards(*split)[i].samples).sum())
                .collect(),
            None => {
                let (n, w) = (self.indices.len(), self.config.shard.world);
                (0..w).map(|r| n.saturating_sub(r).div_ceil(w)).collect()
            }
        }
    }

    /// Batches this loader's rank yields in `epoch` (the same for every epoch unless the
    /// samples come from shards of unequal sizes).
    pub fn batches_in(&self, epoch: u64) -> usize {
        if self.shards.is_none() {
            return self.batches_per_epoch();
        }
        let per_rank = self.rank_samples(epoch);
        let b = self.config.batch_size;
        if self.config.drop_last {
            per_rank.iter().min().copied().unwrap_or(0) / b
        } else {
            per_rank[self.config.shard.rank].div_ceil(b)
        }
    }

    /// Samples of the split that no rank's batches hold in `epoch`: the short last batch
    /// when it is dropped (and, with shards, what the ranks with more samples than the
    /// others cannot fill into a batch every rank has).
    pub fn unused(&self, epoch: u64) -> usize {
        if !self.config.drop_last {
            return 0;
        }
        let used = self.batches_in(epoch) * self.config.batch_size * self.config.shard.world;
        self.samples().saturating_sub(used)
    }

    /// Keeps decoded files in memory across epochs, up to `max_bytes` (see [`DecodedCache`]).
    pub fn with_cache(mut self, max_bytes: usize) -> Self {
        self.cache = Some(Arc::new(DecodedCache::new(max_bytes)));
        self
    }

    /// The cache of decoded files, if [`Loader::with_cache`] set one.
    pub fn cache(&self) -> Option<&DecodedCache> {
        self.cache.as_deref()
    }

    /// Number of samples in the split.
    pub fn samples(&self) -> usize {
        match &self.shards {
            Some((index, split)) => index.samples(*split),
            None => self.indices.len(),
        }
    }

    /// Number of batches an epoch yields (on this loader's shard; the first epoch's, for
    /// shards of unequal sizes: see [`Loader::batches_in`]).
    pub fn batches_per_epoch(&self) -> usize {
        if self.shards.is_some() {
            return self.batches_in(0);
        }
        let (n, b, Shard { rank, world }) =
            (self.indices.len(), self.config.batch_size, self.config.shard);
        if self.config.drop_last {
            n / (b * world)
        } else {
            n.saturating_sub(rank).div_ceil(world).div_ceil(b)
        }
    }

    /// The manifest indices this loader's shard yields in one epoch, in batch order (the
    /// whole [`Loader::order`] for one process).
    pub fn shard_order(&self, epoch: u64) -> Vec<usize> {
        let mut order = self.order(epoch);
        let Shard { rank, world } = self.config.shard;
        if self.config.drop_last {
            order.truncate(self.batches_per_epoch() * self.config.batch_size * world);
        }
        if world > 1 {
            order = order.into_iter().skip(rank).step_by(world).collect();
        }
        order
    }

    /// The manifest indices of one epoch, in batch order.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut rng = Rng::for_sample(self.config.seed, epoch, u64::MAX, 0);
        if self.config.balanced {
            // Weight 1 / (count of the sample's class): each class is drawn equally often.
            let mut counts = std::collections::HashMap::<&str, usize>::new();
            for &i in &self.indices {
                *counts
                    .entry(self.manifest.samples()[i].label.as_deref().unwrap_or(""))
                    .or_default() += 1;
            }
            let mut cumulative = Vec::with_capacity(self.indices.len());
            let mut total = 0.0;
            for &i in &self.indices {
                total +=
                    1.0 / counts[self.manifest.samples()[i].label.as_deref().unwrap_or("")] as f64;
                cumulative.push(total);
            }
            (0..self.indices.len())
                .map(|_| {
                    let r = rng.unit() * total;
                    let k = cumulative.partition_point(|&c| c <= r).min(self.indices.len() - 1);
                    self.indices[k]
                })
                .collect()
        } else {
            let mut order = self.indices.clone();
            if self.config.shuffle {
                rng.shuffle(&mut order);
            }
            order
        }
    }

    /// The batches of one epoch, prepared on a background thread.
    pub fn epoch(&self, epoch: u64) -> Batches {
        if let Some((index, split)) = &self.shards {
            return self.shard_epoch(Arc::clone(index), *split, epoch);
        }
        let order = self.shard_order(epoch);
        let (tx, rx) = sync_channel(self.config.prefetch.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let (manifest, pipeline, config, stop_flag, cache) = (
            Arc::clone(&self.manifest),
            Arc::clone(&self.pipeline),
            self.config,
            Arc::clone(&stop),
            self.cache.clone(),
        );
        let handle = std::thread::spawn(move || {
            for chunk in order.chunks(config.batch_size) {
                if stop_flag.load(Ordering::Relaxed) {
                    return;
                }
                let items: Result<Vec<Item>> = chunk
                    .par_iter()
                    .map(|&i| {
                        pipeline.load_cached(&manifest, i, epoch, config.train, cache.as_deref())
                    })
                    .collect();
                let batch = items.map(|items| collate(&items, &pipeline));
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    return;
                }
            }
        });
        Batches { rx, stop, handle: Some(handle) }
    }
}

impl Loader {
    fn shard_epoch(&self, index: Arc<ShardIndex>, split: Split, epoch: u64) -> Batches {
        let mine = self.dealt(&index, split, epoch).swap_remove(self.config.shard.rank);
        let limit = self.batches_in(epoch);
        let (tx, rx) = sync_channel(self.config.prefetch.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let (root, pipeline, config, stop_flag) = (
            Arc::clone(&self.manifest),
            Arc::clone(&self.pipeline),
            self.config,
            Arc::clone(&stop),
        );
        let handle = std::thread::spawn(move || {
            // Reader r streams shards r, r + R, ... of this rank's; samples are taken from the
            // readers in turn, so the order is the same however fast each one is.
            let readers = SHARD_READERS.min(mine.len()).max(1);
            let mut streams = Vec::new();
            let mut joins = Vec::new();
            for r in 0..readers {
                let files: Vec<ShardEntry> = mine
                    .iter()
                    .skip(r)
                    .step_by(readers)
                    .map(|&i| index.shards(split)[i].clone())
                    .collect();
                let (stx, srx) = sync_channel::<Result<(Sample, Memory)>>(64);
                let (index, stop) = (Arc::clone(&index), Arc::clone(&stop_flag));
                joins.push(std::thread::spawn(move || {
                    for entry in files {
                        let result = read_samples(
                            &index.path(&entry),
                            &entry.file,
                            index.root(),
                            &mut |sample, memory| {
                                if stop.load(Ordering::Relaxed)
                                    || stx.send(Ok((sample, memory))).is_err()
                                {
                                    return Err(Error::Config("stopped".into()));
                                }
                                Ok(())
                            },
                        );
                        if let Err(e) = result {
                            let _ = stx.send(Err(e));
                            return;
                        }
                    }
                }));
                streams.push(Some(srx));
            }
            let mut rng =
                Rng::for_sample(config.seed, epoch, u64::MAX, 2 + config.shard.rank as u64);
            let capacity = if config.train && config.shuffle {
                SHUFFLE_BUFFER.max(config.batch_size)
            } else {
                1
            };
            let mut buffer: Vec<(Sample, Memory)> = Vec::new();
            let mut turn = 0usize;
            let mut next_raw =
                |buffer: &mut Vec<(Sample, Memory)>| -> Option<Result<(Sample, Memory)>> {
                    // Fill the buffer, then hand out one sample (a random one when shuffling).
                    while buffer.len() < capacity && streams.iter().any(Option::is_some) {
                        let k = turn % streams.len();
                        turn += 1;
                        let Some(stream) = &streams[k] else { continue };
                        match stream.recv() {
                            Ok(Ok(s)) => buffer.push(s),
                            Ok(Err(e)) => return Some(Err(e)),
                            Err(_) => streams[k] = None,
                        }
                    }
                    if buffer.is_empty() {
                        return None;
                    }
                    let pick = if capacity > 1 {
                        (rng.unit() * buffer.len() as f64) as usize % buffer.len()
                    } else {
                        0
                    };
                    Some(Ok(buffer.swap_remove(pick)))
                };
            let mut sent = 0usize;
            loop {
                if stop_flag.load(Ordering::Relaxed) || (config.drop_last && sent >= limit) {
                    break;
                }
                let mut raw = Vec::with_capacity(config.batch_size);
                let mut failed = None;
                while raw.len() < config.batch_size {
                    match next_raw(&mut buffer) {
                        Some(Ok(s)) => raw.push(s),
                        Some(Err(e)) => {
                            failed = Some(e);
                            break;
                        }
                        None => break,
                    }
                }
                if let Some(e) = failed {
                    let _ = tx.send(Err(e));
                    break;
                }
                if raw.is_empty() || (config.drop_last && raw.len() < config.batch_size) {
                    break;
                }
                let items: Result<Vec<Item>> = raw
                    .par_iter()
                    .map(|(s, files)| {
                        pipeline.load_in_memory(
                            &root,
                            s,
                            sample_number(&s.id),
                            epoch,
                            config.train,
                            files,
                        )
                    })
                    .collect();
                let batch = items.map(|items| collate(&items, &pipeline));
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    break;
                }
                sent += 1;
            }
            stop_flag.store(true, Ordering::Relaxed);
            drop(streams);
            for j in joins {
                let _ = j.join();
            }
        });
        Batches { rx, stop, handle: Some(handle) }
    }
}

/// A number for a sample of a shard (which has no manifest index), from its id: seeds its
/// augmentation (FNV-1a).
fn sample_number(id: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h as usize
}

/// The batches of one epoch; stops the background thread when dropped.
#[derive(Debug)]
pub struct Batches {
    rx: Receiver<Result<Batch>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Iterator for Batches {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver wakes a producer blocked on a full queue (its send fails), and
        // the flag stops it before its next batch; then wait for it.
        drop(std::mem::replace(&mut self.rx, sync_channel(1).1));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
