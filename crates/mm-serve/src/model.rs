//! One served model: a trained run on its own thread, fed by a bounded queue that gathers
//! concurrent requests into batches.
//!
//! The run is opened on the thread that runs it (libtorch's modules stay on one thread; no lock
//! is taken around the model). Requests are decoded by the HTTP side, in parallel, into
//! [`Item`]s through the run's own [`Pipeline`]; the thread takes the first waiting request,
//! then more until `max_batch` samples or `max_wait` has passed since the first, collates them
//! into one batch, runs the model once, and hands each request its rows. A request whose client
//! went away before its turn is skipped.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::ops::Range;

use mm_data::loader::{collate, Batch};
use mm_data::manifest::{Manifest, Split};
use mm_data::pipeline::{Item, Pipeline};
use mm_data::Modality;
use mm_train::model::Output;
use mm_train::run::Run;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::{Error, Result};

/// How requests are gathered into batches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Batching {
    /// Most samples in one forward pass.
    pub max_batch: usize,
    /// Longest a request waits for others to join its batch. Zero (the default) waits for
    /// nothing: a batch is what queued while the model ran the one before, so batches grow
    /// with the load by themselves; a wait adds latency for fuller batches.
    pub max_wait: Duration,
    /// Requests that may wait for the model; one more is refused (HTTP 503).
    pub queue: usize,
    /// Extra time each forward pass takes, as if the model were slower: for load tests of the
    /// queue, the time limits and shutdown (zero when serving).
    pub simulated_latency: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max_batch: 32,
            max_wait: Duration::ZERO,
            queue: 256,
            simulated_latency: Duration::ZERO,
        }
    }
}

/// The answer to one request: a JSON object per sample, or what went wrong.
pub type Reply = std::result::Result<Vec<Value>, String>;

/// What a request asks of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// `mm predict`'s object per sample.
    Predict,
    /// A retrieval model's embedding of each modality of its pair the sample has.
    Embed,
    /// The `top_k` items of the gallery (the other modality of the pair) nearest each sample.
    Retrieve {
        /// How many.
        top_k: usize,
    },
    /// A speech recognition run's transcript: greedy with `beam` 0 or 1, beam search otherwise.
    Transcribe {
        /// Beam width.
        beam: usize,
    },
}

/// One request's samples, waiting for the model.
struct Job {
    task: Task,
    items: Vec<Item>,
    reply: oneshot::Sender<Reply>,
}

/// What a model can do, from its heads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Classification, multi-label or regression heads: [`Task::Predict`].
    Predictor,
    /// A retrieval head over this pair: [`Task::Embed`] and [`Task::Retrieve`].
    Retrieval([Modality; 2]),
    /// A CTC head: [`Task::Transcribe`].
    Recognizer,
}

/// One modality's gallery: the split's items a retrieval model searches.
struct Gallery {
    modality: Modality,
    ids: Vec<String>,
    /// `[N, D]`, L2-normalised rows.
    embeddings: tch::Tensor,
    /// Per item: its label and caption (and the text itself for a text gallery).
    about: Vec<Value>,
}

/// What a model is, as `GET /v1/models` lists it, and what requests must bring.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The name requests use.
    pub name: String,
    /// The run folder.
    pub run: PathBuf,
    /// The modalities the model reads, in batch order.
    pub modalities: Vec<Modality>,
    /// Class names.
    pub classes: Vec<String>,
    /// Each head: its name and type (`classification`, `retrieval`, ...).
    pub heads: Vec<(String, String)>,
    /// Parameters in all.
    pub parameters: i64,
    /// The epoch of the checkpoint served.
    pub epoch: u64,
    /// Where the model runs.
    pub device: String,
    /// What it can do.
    pub kind: Kind,
    /// Items in each gallery a retrieval model searches, by modality.
    pub galleries: Vec<(Modality, usize)>,
}

impl ModelInfo {
    /// As JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "run": self.run.display().to_string(),
            "modalities": self.modalities.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
            "classes": self.classes,
            "heads": self.heads.iter().map(|(n, t)| json!({"name": n, "type": t})).collect::<Vec<_>>(),
            "parameters": self.parameters,
            "epoch": self.epoch,
            "device": self.device,
            "tasks": match &self.kind {
                Kind::Predictor => vec!["predict"],
                Kind::Retrieval(_) => vec!["embed", "retrieve"],
                Kind::Recognizer => vec!["transcribe"],
            },
            "galleries": self.galleries.iter().map(|(m, n)| (m.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

/// A model being served: its description, its pipeline and its queue.
pub struct ServedModel {
    /// What it is.
    pub info: ModelInfo,
    /// The run's pipeline, which turns a request's sample into an [`Item`] (for a speech
    /// recognition run, [`mm_speech::recognize::audio_pipeline`]).
    pub pipeline: Arc<Pipeline>,
    /// A retrieval model's gallery samples (the run's manifest), to show the items found.
    pub gallery: Option<Arc<Manifest>>,
    /// The ids of the items in its galleries: the only ones `/v1/gallery` serves.
    pub gallery_ids: std::collections::HashSet<String>,
    capacity: usize,
    queue: SyncSender<Job>,
    metrics: Arc<Metrics>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ServedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedModel").field("info", &self.info).finish_non_exhaustive()
    }
}

/// Why a request could not join a model's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full: try again shortly.
    Full,
    /// The model's thread has stopped.
    Stopped,
}

impl ServedModel {
    /// Opens the run in `dir` on `device` on a thread of its own and starts serving it under
    /// `name`. Blocks until the run is loaded; a run that cannot be opened is an error naming
    /// the folder.
    /// A retrieval model's galleries are the `gallery_split` of its run's manifest, embedded
    /// once here.
    pub fn start(
        name: &str,
        dir: &Path,
        device: tch::Device,
        batching: Batching,
        gallery_split: Split,
        metrics: Arc<Metrics>,
    ) -> Result<ServedModel> {
        if batching.max_batch == 0 || batching.queue == 0 {
            return Err(Error::Config("max_batch and the queue must be at least 1".into()));
        }
        let (tx, rx) = mpsc::sync_channel::<Job>(batching.queue);
        type Loaded =
            (ModelInfo, Arc<Pipeline>, Option<Arc<Manifest>>, std::collections::HashSet<String>);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Loaded>>();
        let (name_owned, dir_owned, worker_metrics) =
            (name.to_string(), dir.to_path_buf(), Arc::clone(&metrics));
        let thread = std::thread::Builder::new()
            .name(format!("mm-serve-{name}"))
            .spawn(move || {
                let run = match Run::open(&dir_owned, None, device) {
                    Ok(run) => run,
                    Err(e) => {
                        let _ = ready_tx
                            .send(Err(Error::Run { path: dir_owned.clone(), source: Box::new(e) }));
                        return;
                    }
                };
                let fail = |e: mm_train::Error| Error::Run {
                    path: dir_owned.clone(),
                    source: Box::new(e),
                };
                let loaded = prepare(&run, gallery_split).map_err(fail);
                let (pipeline, manifest, galleries) = match loaded {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let info = describe(&name_owned, &dir_owned, &run, device, &galleries);
                let ids = galleries.iter().flat_map(|g| g.ids.iter().cloned()).collect();
                if ready_tx.send(Ok((info, pipeline, manifest, ids))).is_err() {
                    return;
                }
                work(&name_owned, &run, &galleries, rx, batching, &worker_metrics);
            })
            .map_err(|e| Error::Config(format!("cannot start a thread for {name}: {e}")))?;
        let info = ready_rx.recv().map_err(|_| Error::Run {
            path: dir.to_path_buf(),
            source: Box::new(mm_train::Error::Config(
                "the model's thread stopped while loading".into(),
            )),
        })??;
        let (info, pipeline, gallery, gallery_ids) = info;
        Ok(ServedModel {
            info,
            pipeline,
            gallery,
            gallery_ids,
            capacity: batching.queue,
            queue: tx,
            metrics,
            thread: Some(thread),
        })
    }

    /// Puts a request's items in the queue; the receiver gets its rows, in order.
    pub fn submit(
        &self,
        task: Task,
        items: Vec<Item>,
    ) -> std::result::Result<oneshot::Receiver<Reply>, Refused> {
        let (reply, rx) = oneshot::channel();
        self.metrics.queue(&self.info.name, 1);
        match self.queue.try_send(Job { task, items, reply }) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.metrics.queue(&self.info.name, -1);
                Err(match e {
                    TrySendError::Full(_) => {
                        self.metrics.rejected(&self.info.name);
                        Refused::Full
                    }
                    TrySendError::Disconnected(_) => Refused::Stopped,
                })
            }
        }
    }

    /// Whether the queue is full now: a request that would be refused need not be decoded.
    pub fn is_full(&self) -> bool {
        self.metrics.queue_depth(&self.info.name) >= self.capacity as i64
    }

    /// Stops taking requests, lets the thread finish those already queued, and waits for it.
    pub fn stop(mut self) {
        let thread = self.thread.take();
        drop(self);
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// The model's kind, from its heads.
fn kind(run: &Run) -> Kind {
    if run.model.ctc_stride().is_some() {
        return Kind::Recognizer;
    }
    let pair = run.model.heads().first().and_then(|(_, h)| h.retrieval_pair().cloned());
    match pair.and_then(|[a, b]| Some([a.parse::<Modality>().ok()?, b.parse::<Modality>().ok()?])) {
        Some(pair) => Kind::Retrieval(pair),
        None => Kind::Predictor,
    }
}

/// A model's pipeline, gallery manifest and galleries.
type Prepared = (Arc<Pipeline>, Option<Arc<Manifest>>, Vec<Gallery>);

/// What the worker needs beside the run: the pipeline requests are read with, the manifest of
/// a retrieval model's galleries, and the galleries.
fn prepare(run: &Run, split: Split) -> mm_train::Result<Prepared> {
    match kind(run) {
        Kind::Predictor => Ok((Arc::clone(&run.pipeline), None, Vec::new())),
        Kind::Recognizer => {
            Ok((Arc::new(mm_speech::recognize::audio_pipeline(run)?), None, Vec::new()))
        }
        Kind::Retrieval(pair) => {
            let manifest = Arc::new(run.manifest(None)?.0);
            let mut galleries = Vec::new();
            for (side, modality) in pair.into_iter().enumerate() {
                let (ids, embeddings) =
                    run.embed_split(Arc::clone(&manifest), split, side, modality)?;
                let about = ids
                    .iter()
                    .map(|id| {
                        let s = manifest.get(id);
                        let mut v = json!({
                            "label": s.and_then(|s| s.label.clone()),
                            "caption": s.filter(|_| modality != Modality::Text).and_then(|s| s.text.clone()),
                        });
                        if modality == Modality::Text {
                            v["text"] = json!(s.and_then(|s| s.text.clone()));
                        }
                        v
                    })
                    .collect();
                galleries.push(Gallery { modality, ids, embeddings, about });
            }
            Ok((Arc::clone(&run.pipeline), Some(manifest), galleries))
        }
    }
}

fn describe(
    name: &str,
    dir: &Path,
    run: &Run,
    device: tch::Device,
    galleries: &[Gallery],
) -> ModelInfo {
    let heads = run
        .model
        .heads()
        .into_iter()
        .map(|(n, h)| {
            let kind = serde_json::to_value(h)
                .ok()
                .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_default();
            (n.to_string(), kind)
        })
        .collect();
    ModelInfo {
        name: name.to_string(),
        run: dir.to_path_buf(),
        modalities: run.pipeline.modalities(),
        classes: run.pipeline.classes.clone(),
        heads,
        parameters: run.parameters().1,
        epoch: run.state.epoch,
        device: format!("{device:?}").to_lowercase(),
        kind: kind(run),
        galleries: galleries.iter().map(|g| (g.modality, g.ids.len())).collect(),
    }
}

/// The model's thread: batches from the queue until every sender is gone and the queue is empty.
fn work(
    name: &str,
    run: &Run,
    galleries: &[Gallery],
    rx: Receiver<Job>,
    b: Batching,
    metrics: &Metrics,
) {
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => {
                    metrics.queue(name, -1);
                    job
                }
                Err(_) => return,
            },
        };
        let deadline = Instant::now() + b.max_wait;
        let mut samples = first.items.len();
        let mut jobs = vec![first];
        while samples < b.max_batch {
            // Zero left is a poll: whatever is already waiting still joins.
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(job) = rx.recv_timeout(left) else { break };
            metrics.queue(name, -1);
            if samples + job.items.len() > b.max_batch {
                // It opens the next batch rather than overfill this one.
                carried = Some(job);
                break;
            }
            samples += job.items.len();
            jobs.push(job);
        }
        // A client that hung up no longer needs its rows.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let started = Instant::now();
        let sizes: Vec<usize> = jobs.iter().map(|j| j.items.len()).collect();
        let items: Vec<Item> = jobs.iter_mut().flat_map(|j| std::mem::take(&mut j.items)).collect();
        let frames: Vec<usize> =
            items.iter().map(|i| i.audio.as_ref().map_or(0, |a| a.nrows())).collect();
        let n = items.len();
        let tasks: Vec<Task> = jobs.iter().map(|j| j.task).collect();
        // Anything that panics here (collating onto a device out of memory, a search) fails
        // this batch's requests with its message; the thread goes on with the next batch.
        let replies = mm_data::guard::catch(|| {
            let batch = collate(&items, &run.pipeline).to_device(run.vs.device());
            let output = run.forward_batch(&batch).map_err(|e| crate::chain(&e))?;
            let mut cache = Answers::default();
            let mut start = 0;
            let mut replies = Vec::with_capacity(tasks.len());
            for (task, size) in tasks.iter().zip(&sizes) {
                let rows = start..start + size;
                start += size;
                replies.push(
                    answer(run, galleries, *task, &output, &batch, rows, &frames, &mut cache)
                        .map_err(|e| crate::chain(&e)),
                );
            }
            Ok::<_, String>(replies)
        });
        let replies: Vec<Reply> = match replies {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => vec![Err(e); jobs.len()],
            Err(caught) => {
                vec![Err(format!("the model failed on this batch: {caught}")); jobs.len()]
            }
        };
        if !b.simulated_latency.is_zero() {
            std::thread::sleep(b.simulated_latency);
        }
        metrics.batch(name, n, started.elapsed().as_secs_f64());
        for (job, reply) in jobs.into_iter().zip(replies) {
            let _ = job.reply.send(reply);
        }
    }
}

/// One side of a retrieval pair for one row: its modality, side and embedding.
type Embedded = (Modality, usize, Vec<f32>);

/// What a batch's output gives every request in it, worked out once per batch.
#[derive(Default)]
struct Answers {
    /// `mm predict`'s rows of the whole batch.
    predictions: Option<Vec<Value>>,
    /// A retrieval model's embeddings of each row of the batch: (modality, side, vector) for
    /// each side of the pair the row has.
    embeddings: Option<Vec<Vec<Embedded>>>,
    /// The transcripts of the whole batch, by beam width.
    transcripts: Vec<(usize, Vec<mm_speech::recognize::Transcript>)>,
}

/// One job's answer from the batch's output: its rows are `rows` of the batch.
#[allow(clippy::too_many_arguments)]
fn answer(
    run: &Run,
    galleries: &[Gallery],
    task: Task,
    out: &Output,
    batch: &Batch,
    rows: Range<usize>,
    frames: &[usize],
    cache: &mut Answers,
) -> mm_train::Result<Vec<Value>> {
    let ids = &batch.ids[rows.clone()];
    match task {
        Task::Predict => {
            // Computed for the whole batch once and cut: the heads work on whole outputs.
            if cache.predictions.is_none() {
                cache.predictions = Some(run.prediction_rows(out, batch)?);
            }
            let all = cache.predictions.as_deref().unwrap_or_default();
            Ok(all.iter().skip(rows.start).take(rows.len()).cloned().collect())
        }
        Task::Transcribe { beam } => {
            if !cache.transcripts.iter().any(|(b, _)| *b == beam) {
                let all = mm_speech::recognize::decode(run, out, frames, beam)?;
                cache.transcripts.push((beam, all));
            }
            let all = cache
                .transcripts
                .iter()
                .find(|(b, _)| *b == beam)
                .map(|(_, t)| t.as_slice())
                .unwrap_or_default();
            Ok(all
                .iter()
                .zip(&batch.ids)
                .skip(rows.start)
                .take(rows.len())
                .map(|(t, id)| {
                    let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
                    v["id"] = json!(id);
                    v["decoder"] = json!(if beam <= 1 {
                        "greedy".to_string()
                    } else {
                        format!("beam {beam}")
                    });
                    v
                })
                .collect())
        }
        Task::Embed | Task::Retrieve { .. } => {
            let Kind::Retrieval(pair) = kind(run) else {
                return Err(mm_train::Error::Config("not a retrieval model".into()));
            };
            // Each row's embeddings, for the sides whose modality it has: once per batch.
            if cache.embeddings.is_none() {
                let mut per_row: Vec<Vec<Embedded>> = vec![Vec::new(); batch.ids.len()];
                for (side, modality) in pair.into_iter().enumerate() {
                    let (present, emb) = Run::side_rows(out, batch, side, modality)?;
                    let dim = emb.size().last().copied().unwrap_or(0).max(1) as usize;
                    let flat: Vec<f32> = Vec::try_from(emb.reshape([-1])).unwrap_or_default();
                    for (r, v) in present.iter().zip(flat.chunks(dim)) {
                        per_row[*r].push((modality, side, v.to_vec()));
                    }
                }
                cache.embeddings = Some(per_row);
            }
            let per_row = cache.embeddings.as_deref().unwrap_or_default();
            let mut answers = Vec::with_capacity(rows.len());
            for (id, found) in ids.iter().zip(per_row[rows.clone()].iter().cloned()) {
                let mut v = json!({"id": id});
                match task {
                    Task::Retrieve { top_k } => {
                        // The query is the sample's one modality of the pair; the gallery the other.
                        let Some((modality, side, q)) = found.into_iter().next() else {
                            return Err(mm_train::Error::Data(format!(
                                "sample {id}: nothing to search with"
                            )));
                        };
                        let target = pair[1 - side];
                        let g = galleries
                            .iter()
                            .find(|g| g.modality == target)
                            .ok_or_else(|| mm_train::Error::Data(format!("no {target} gallery")))?;
                        let scores = g.embeddings.matmul(&tch::Tensor::from_slice(&q));
                        let k = top_k.min(g.ids.len()).max(1) as i64;
                        let (values, indices) = scores.topk(k, 0, true, true);
                        let values: Vec<f32> = Vec::try_from(values).unwrap_or_default();
                        let indices: Vec<i64> = Vec::try_from(indices).unwrap_or_default();
                        let results: Vec<Value> = indices
                            .iter()
                            .zip(values)
                            .enumerate()
                            .map(|(rank, (i, score))| {
                                let mut r = g.about[*i as usize].clone();
                                r["rank"] = json!(rank + 1);
                                r["id"] = json!(g.ids[*i as usize]);
                                r["score"] = json!(score);
                                r
                            })
                            .collect();
                        v["from"] = json!(modality);
                        v["to"] = json!(target);
                        v["gallery"] = json!(g.ids.len());
                        v["results"] = json!(results);
                    }
                    _ => {
                        v["embeddings"] = found
                            .into_iter()
                            .map(|(m, _, e)| (m.to_string(), json!(e)))
                            .collect::<serde_json::Map<_, _>>()
                            .into();
                    }
                }
                answers.push(v);
            }
            Ok(answers)
        }
    }
}
