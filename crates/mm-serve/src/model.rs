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

use mm_data::loader::collate;
use mm_data::pipeline::{Item, Pipeline};
use mm_data::Modality;
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
    /// Longest a request waits for others to join its batch.
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
            max_wait: Duration::from_millis(5),
            queue: 256,
            simulated_latency: Duration::ZERO,
        }
    }
}

/// The answer to one request: a JSON object per sample, or what went wrong.
pub type Reply = std::result::Result<Vec<Value>, String>;

/// One request's samples, waiting for the model.
struct Job {
    items: Vec<Item>,
    reply: oneshot::Sender<Reply>,
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
        })
    }
}

/// A model being served: its description, its pipeline and its queue.
pub struct ServedModel {
    /// What it is.
    pub info: ModelInfo,
    /// The run's pipeline, which turns a request's sample into an [`Item`].
    pub pipeline: Arc<Pipeline>,
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
    pub fn start(
        name: &str,
        dir: &Path,
        device: tch::Device,
        batching: Batching,
        metrics: Arc<Metrics>,
    ) -> Result<ServedModel> {
        if batching.max_batch == 0 || batching.queue == 0 {
            return Err(Error::Config("max_batch and the queue must be at least 1".into()));
        }
        let (tx, rx) = mpsc::sync_channel::<Job>(batching.queue);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(ModelInfo, Arc<Pipeline>)>>();
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
                let info = describe(&name_owned, &dir_owned, &run, device);
                if ready_tx.send(Ok((info, Arc::clone(&run.pipeline)))).is_err() {
                    return;
                }
                work(&name_owned, &run, rx, batching, &worker_metrics);
            })
            .map_err(|e| Error::Config(format!("cannot start a thread for {name}: {e}")))?;
        let (info, pipeline) = ready_rx.recv().map_err(|_| Error::Run {
            path: dir.to_path_buf(),
            source: Box::new(mm_train::Error::Config(
                "the model's thread stopped while loading".into(),
            )),
        })??;
        Ok(ServedModel { info, pipeline, queue: tx, metrics, thread: Some(thread) })
    }

    /// Puts a request's items in the queue; the receiver gets its rows, in order.
    pub fn submit(
        &self,
        items: Vec<Item>,
    ) -> std::result::Result<oneshot::Receiver<Reply>, Refused> {
        let (reply, rx) = oneshot::channel();
        self.metrics.queue(&self.info.name, 1);
        match self.queue.try_send(Job { items, reply }) {
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

    /// Stops taking requests, lets the thread finish those already queued, and waits for it.
    pub fn stop(mut self) {
        let thread = self.thread.take();
        drop(self);
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

fn describe(name: &str, dir: &Path, run: &Run, device: tch::Device) -> ModelInfo {
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
        epoch: run.state.epoch as u64,
        device: format!("{device:?}").to_lowercase(),
    }
}

/// The model's thread: batches from the queue until every sender is gone and the queue is empty.
fn work(name: &str, run: &Run, rx: Receiver<Job>, b: Batching, metrics: &Metrics) {
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
        let n = items.len();
        let batch = collate(&items, &run.pipeline);
        let result = run.predict_batch(batch).map_err(|e| crate::chain(&e));
        if !b.simulated_latency.is_zero() {
            std::thread::sleep(b.simulated_latency);
        }
        metrics.batch(name, n, started.elapsed().as_secs_f64());
        match result {
            Ok(rows) => {
                let mut rows = rows.into_iter();
                for (job, size) in jobs.into_iter().zip(sizes) {
                    let mine: Vec<Value> = rows.by_ref().take(size).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
