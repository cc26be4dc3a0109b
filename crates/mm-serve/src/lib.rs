//! A model server for mm: trained runs behind HTTP endpoints, with concurrent requests for one
//! model gathered into batches.
//!
//! Each model runs on a thread of its own ([`model::ServedModel`]) fed by a bounded queue; the
//! HTTP side ([`http`], axum on tokio) reads a request (JSON with files as base64, or multipart
//! form data), decodes its samples in parallel through the run's own pipeline, in memory, and
//! waits for the model's answer: the same JSON objects `mm predict` prints. A full queue answers
//! 503 with `Retry-After`; a body over the limit 413; a slow body 408; a request past its time
//! 504. Prometheus metrics are at `/metrics`, an OpenAPI description at `/openapi.json`, a web
//! page at `/`. Nothing a request sends reaches the file system.
//!
//! It must not know how a model is built or trained: it opens runs through [`mm_train::run::Run`].
//!
//! ```no_run
//! use mm_serve::{ModelSpec, ServeConfig, Server};
//!
//! # async fn example() -> mm_serve::Result<()> {
//! let server = Server::bind(ServeConfig { port: 8080, ..ServeConfig::default() }).await?;
//! println!("listening on http://{}", server.local_addr());
//! let models = vec![ModelSpec::new("digits", "runs/av-digits")];
//! server.run(models, tch::Device::Cpu, mm_serve::shutdown_signal()).await
//! # }
//! ```

use std::path::PathBuf;
use std::time::Duration;

pub mod http;
pub mod metrics;
pub mod model;

pub use http::{shutdown_signal, Server};
pub use model::{Batching, Kind, Task};

/// What can go wrong starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A run could not be opened.
    #[error("{}: {source}", path.display())]
    Run {
        /// The run folder.
        path: PathBuf,
        /// Why.
        source: Box<mm_train::Error>,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// `host:port`.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// An option or the list of models is wrong.
    #[error("{0}")]
    Config(String),
    /// The server stopped on an I/O error.
    #[error("the server stopped: {0}")]
    Io(#[from] std::io::Error),
}

/// This crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes on one line, each cause once (an error that repeats its source's
/// text is not followed by it again).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// A model to serve: the name requests use and the run folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// The name requests use (`"model": NAME`, `?model=NAME`).
    pub name: String,
    /// The run folder `mm train` wrote.
    pub run: PathBuf,
}

impl ModelSpec {
    /// A model named `name` from the run in `run`.
    pub fn new(name: impl Into<String>, run: impl Into<PathBuf>) -> Self {
        ModelSpec { name: name.into(), run: run.into() }
    }

    /// From `NAME=DIR`, or `DIR` alone (named after the folder).
    pub fn parse(text: &str) -> Result<Self> {
        let (name, dir) = match text.split_once('=') {
            Some((n, d)) => (n.trim().to_string(), PathBuf::from(d)),
            None => {
                let dir = PathBuf::from(text);
                let name = dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_string)
                    .unwrap_or_default();
                (name, dir)
            }
        };
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(Error::Config(format!(
                "{text}: a model's name is letters, digits, '-', '_' or '.'; give it as NAME=DIR"
            )));
        }
        Ok(ModelSpec { name, run: dir })
    }
}

/// The server's options.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The address to listen on.
    pub host: String,
    /// The port (0: any free one; [`Server::local_addr`] says which).
    pub port: u16,
    /// How requests are gathered into batches.
    pub batching: Batching,
    /// Longest a request may take, from its arrival to its answer (504 after).
    pub timeout: Duration,
    /// Longest a client may take to send its request's head (the connection is closed after)
    /// and its body (408 after).
    pub read_timeout: Duration,
    /// Most connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Longest sound a sample may bring, in seconds (422 above).
    pub max_audio_seconds: f64,
    /// Most video frames a sample may bring (422 above).
    pub max_frames: usize,
    /// Largest body accepted, in bytes (413 above).
    pub max_body: usize,
    /// A bearer token every `/v1/` and `/metrics` request must bring.
    pub token: Option<String>,
    /// The split of a retrieval run's manifest its galleries hold.
    pub gallery_split: mm_data::manifest::Split,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            batching: Batching::default(),
            timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_audio_seconds: 600.0,
            max_frames: 512,
            max_body: 16 << 20,
            token: None,
            gallery_split: mm_data::manifest::Split::Test,
        }
    }
}
