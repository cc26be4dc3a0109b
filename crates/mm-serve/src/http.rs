//! The HTTP side: axum routes, request parsing, authentication, time limits and metrics.
//!
//! | route | |
//! | --- | --- |
//! | `POST /v1/predict` | a sample (or `{"samples": [...]}`) as JSON, or multipart form data; the answer is `mm predict`'s JSON |
//! | `GET /v1/models` | the models served |
//! | `GET /health` | 200 while the process runs |
//! | `GET /ready` | 200 once every model is loaded, 503 before |
//! | `GET /metrics` | Prometheus text |
//! | `GET /openapi.json` | the API's OpenAPI 3.1 description |
//! | `GET /` | a web page to try the models |
//!
//! Every error is JSON, `{"error": MESSAGE, "status": CODE}`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use mm_data::manifest::{Manifest, Sample};
use mm_data::pipeline::{Item, Memory};
use mm_data::Modality;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::model::{Kind, ModelInfo, Refused, ServedModel, Task};
use crate::{Error, ModelSpec, Result, ServeConfig};

/// The web page, served at `/`.
const PAGE: &str = include_str!("page.html");

/// An error as the client sees it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), retry_after: None }
    }

    fn bad(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn unprocessable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": self.message, "status": self.status.as_u16()}));
        let mut response = (self.status, body).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

/// What every handler shares.
struct Shared {
    config: ServeConfig,
    metrics: Arc<Metrics>,
    /// The models loaded so far, by name.
    models: RwLock<BTreeMap<String, Arc<ServedModel>>>,
    /// Every model asked for, loaded or not, in the order given.
    expected: Vec<String>,
    ready: AtomicBool,
}

impl Shared {
    fn model(&self, name: Option<&str>) -> ApiResult<Arc<ServedModel>> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        let name = match name {
            Some(n) => n.to_string(),
            None if self.expected.len() == 1 => self.expected[0].clone(),
            None => {
                return Err(ApiError::bad(format!(
                    "several models are served ({}): say which with \"model\" or ?model=",
                    self.expected.join(", ")
                )))
            }
        };
        if let Some(m) = models.get(&name) {
            return Ok(Arc::clone(m));
        }
        if self.expected.contains(&name) {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("model {name} is still loading"),
            );
            e.retry_after = Some(1);
            return Err(e);
        }
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no model named {name:?}; served: {}", self.expected.join(", ")),
        ))
    }
}

/// A bound server, not yet serving.
pub struct Server {
    listener: TcpListener,
    config: ServeConfig,
    on_loaded: Option<OnLoaded>,
}

/// Called as each model finishes loading.
type OnLoaded = Box<dyn Fn(&ModelInfo) + Send + Sync>;

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.local_addr()).finish_non_exhaustive()
    }
}

impl Server {
    /// Binds `config.host:config.port`.
    pub async fn bind(config: ServeConfig) -> Result<Server> {
        let addr = format!("{}:{}", config.host, config.port);
        let fail = |source| Error::Bind { addr: addr.clone(), source };
        let at = tokio::net::lookup_host(&addr).await.map_err(fail)?.next().ok_or_else(|| {
            fail(std::io::Error::new(std::io::ErrorKind::NotFound, "the host has no address"))
        })?;
        let socket =
            if at.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(fail)?;
        // A restarted server can take its port back while the old connections wind down.
        socket.set_reuseaddr(true).map_err(fail)?;
        socket.bind(at).map_err(fail)?;
        // A deep queue of connections not yet accepted (the kernel caps it at somaxconn): with
        // tokio's 128 a burst of clients overflows it and the kernel drops their SYNs, which
        // costs each of them a second or more before it retries.
        let listener = socket.listen(4096).map_err(fail)?;
        Ok(Server { listener, config, on_loaded: None })
    }

    /// Calls `f` with each model's description once it is loaded (to log it, say).
    pub fn on_loaded(mut self, f: impl Fn(&ModelInfo) + Send + Sync + 'static) -> Self {
        self.on_loaded = Some(Box::new(f));
        self
    }

    /// The address bound (with the port chosen when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Loads `models` on `device` (the server answers `/health` at once and `/ready` once they
    /// are loaded) and serves until `shutdown` completes; requests in flight are then finished
    /// and the models' queues emptied before it returns. A model that cannot be loaded stops the
    /// server with that error.
    pub async fn run(
        self,
        models: Vec<ModelSpec>,
        device: tch::Device,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        if models.is_empty() {
            return Err(Error::Config("no model to serve: give at least one run".into()));
        }
        let mut names: Vec<String> = Vec::new();
        for m in &models {
            if names.contains(&m.name) {
                return Err(Error::Config(format!(
                    "two models are named {:?}: name them with NAME=DIR",
                    m.name
                )));
            }
            names.push(m.name.clone());
        }
        let shared = Arc::new(Shared {
            metrics: Arc::new(Metrics::default()),
            models: RwLock::new(BTreeMap::new()),
            expected: names,
            ready: AtomicBool::new(false),
            config: self.config.clone(),
        });
        let failed = Arc::new(Notify::new());
        let load = {
            let (shared, failed) = (Arc::clone(&shared), Arc::clone(&failed));
            let (batching, split) = (self.config.batching, self.config.gallery_split);
            let on_loaded = self.on_loaded;
            tokio::task::spawn_blocking(move || -> Result<()> {
                for spec in models {
                    let served = ServedModel::start(
                        &spec.name,
                        &spec.run,
                        device,
                        batching,
                        split,
                        Arc::clone(&shared.metrics),
                    );
                    match served {
                        Ok(m) => {
                            if let Some(f) = &on_loaded {
                                f(&m.info);
                            }
                            let mut all = shared.models.write().unwrap_or_else(|p| p.into_inner());
                            all.insert(spec.name.clone(), Arc::new(m));
                        }
                        Err(e) => {
                            failed.notify_one();
                            return Err(e);
                        }
                    }
                }
                shared.ready.store(true, Ordering::SeqCst);
                Ok(())
            })
        };
        let app = router(Arc::clone(&shared));
        let stop = async move {
            tokio::select! {
                () = shutdown => {}
                () = failed.notified() => {}
            }
        };
        accept(self.listener, app, &self.config, stop).await;
        let loaded = load.await.map_err(|e| Error::Config(format!("loading stopped: {e}")))?;
        // Every request has been answered: stop the models' threads once their queues are empty.
        let models = std::mem::take(&mut *shared.models.write().unwrap_or_else(|p| p.into_inner()));
        tokio::task::spawn_blocking(move || {
            for (_, m) in models {
                if let Ok(m) = Arc::try_unwrap(m) {
                    m.stop();
                }
            }
        })
        .await
        .map_err(|e| Error::Config(format!("stopping the models: {e}")))?;
        loaded
    }
}

/// Serves connections until `stop` completes, then lets each finish the request it is on
/// (idle keep-alive connections are closed at once). A client has `read_timeout` to send its
/// request's head (hyper closes the connection after), and at most `max_connections` are
/// open at a time: one more is closed as soon as it is accepted, before anything is read.
async fn accept(
    listener: TcpListener,
    app: Router,
    config: &ServeConfig,
    stop: impl Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // The first head is awaited by `head_arrives` (which answers 408); every later one on a
    // kept-alive connection, and the idle time before it, by hyper (which closes).
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(config.read_timeout)
        .keep_alive(true);
    let read_timeout = config.read_timeout;
    let open = Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1)));
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors, or a connection reset before it was accepted: the
                // listener itself is fine; wait a moment rather than spin.
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (http, app, watcher) = (http.clone(), app.clone(), graceful.watcher());
        tokio::spawn(async move {
            let mut stream = stream;
            if !head_arrives(&stream, read_timeout).await {
                let body = json!({
                    "error": format!("the request's head did not arrive within {} s", read_timeout.as_secs_f64()),
                    "status": 408,
                })
                .to_string();
                let reply = format!(
                    "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
                // A lingering close: closing with the client's bytes unread would reset the
                // connection, and the client could lose the answer.
                let mut sink = [0u8; 4096];
                let until = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
                while let Ok(Ok(n)) = tokio::time::timeout_at(until, stream.read(&mut sink)).await {
                    if n == 0 {
                        break;
                    }
                }
                drop(permit);
                return;
            }
            let service = hyper_util::service::TowerToHyperService::new(app);
            let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // A connection's error (a client gone mid-request) ends that connection only.
            let _ = watcher.watch(connection).await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Whether a connection's first request head (up to its blank line) arrives within `within`:
/// read without taking it (`peek`), so hyper then reads it whole. A client that sends its head
/// byte by byte, or nothing (slowloris), is turned away after `within`; a head longer than the
/// peek buffer counts as arrived (hyper applies its own size limit).
async fn head_arrives(stream: &tokio::net::TcpStream, within: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = vec![0u8; 16 << 10];
    let (mut seen, mut pause) = (0, std::time::Duration::from_millis(1));
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            // Timed out, or the connection failed: nothing to serve.
            _ => return false,
        };
        if n == 0 {
            return false;
        }
        if n == buf.len() || buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            return true;
        }
        // Part of the head is in: peek returns at once until more comes, so wait a little
        // (longer while nothing new arrives).
        pause = if n > seen {
            std::time::Duration::from_millis(1)
        } else {
            (pause * 2).min(std::time::Duration::from_millis(100))
        };
        seen = n;
        if tokio::time::Instant::now() + pause > deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .route("/v1/models", get(list_models))
        .route("/v1/predict", post(predict))
        .route("/v1/embed", post(embed))
        .route("/v1/retrieve", post(retrieve))
        .route("/v1/transcribe", post(transcribe))
        .route("/v1/gallery/{model}/{id}", get(gallery_item))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint; see /openapi.json")
        })
        // The body's size is checked where it is read (`read_body`, --max-body-mib); axum's own
        // 2 MiB default would refuse larger multipart forms first, as a 400.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), guard))
        .with_state(shared)
}

/// Constant-time comparison (for the bearer token): every byte is looked at whatever differs.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    // The lengths are compared openly: a token's length is not the secret.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Around every request: the token, the time limit, and the metrics.
async fn guard(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let path = req.uri().path().to_string();
    let endpoint = match path.as_str() {
        "/" | "/health" | "/ready" | "/metrics" | "/openapi.json" | "/v1/models"
        | "/v1/predict" | "/v1/embed" | "/v1/retrieve" | "/v1/transcribe" => path.clone(),
        p if p.starts_with("/v1/gallery/") => "/v1/gallery".to_string(),
        _ => "other".to_string(),
    };
    let protected = path.starts_with("/v1/") || path == "/metrics";
    let response = match (&shared.config.token, protected) {
        (Some(token), true) => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.get(..7).filter(|p| p.eq_ignore_ascii_case("bearer ")).map(|_| &v[7..])
                })
                .unwrap_or("");
            if same_secret(given.as_bytes(), token.as_bytes()) {
                None
            } else {
                let mut r = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "a bearer token is required: Authorization: Bearer TOKEN",
                )
                .into_response();
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                Some(r)
            }
        }
        _ => None,
    };
    let response = match response {
        Some(r) => r,
        None => {
            let limit = shared.config.timeout;
            match tokio::time::timeout(limit, next.run(req)).await {
                Ok(r) => r,
                Err(_) => ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("no answer within {} s", limit.as_secs_f64()),
                )
                .into_response(),
            }
        }
    };
    shared.metrics.request(&endpoint, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    let loaded: Vec<String> =
        shared.models.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
    if shared.ready.load(Ordering::SeqCst) {
        Json(json!({"ready": true, "models": loaded})).into_response()
    } else {
        let loading: Vec<&String> =
            shared.expected.iter().filter(|n| !loaded.contains(n)).collect();
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"ready": false, "loading": loading})))
            .into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], shared.metrics.render())
        .into_response()
}

async fn list_models(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let models = shared.models.read().unwrap_or_else(|p| p.into_inner());
    let list: Vec<Value> = shared
        .expected
        .iter()
        .map(|name| match models.get(name) {
            Some(m) => {
                let mut v = m.info.to_json();
                v["state"] = json!("ready");
                v
            }
            None => json!({"name": name, "state": "loading"}),
        })
        .collect();
    Json(json!({"models": list}))
}

/// A sample as a request gives it: text inline, files as base64.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleIn {
    id: Option<String>,
    text: Option<String>,
    image: Option<String>,
    audio: Option<String>,
    frames: Option<Vec<String>>,
    features: Option<Vec<f64>>,
}

/// A decoded request sample: its files' bytes in memory.
#[derive(Debug, Default)]
struct Upload {
    id: Option<String>,
    text: Option<String>,
    image: Option<Vec<u8>>,
    audio: Option<Vec<u8>>,
    frames: Vec<Vec<u8>>,
    features: Option<Vec<f64>>,
}

impl Upload {
    fn modalities(&self) -> Vec<Modality> {
        let mut m = Vec::new();
        if self.image.is_some() {
            m.push(Modality::Image);
        }
        if self.audio.is_some() {
            m.push(Modality::Audio);
        }
        if self.text.is_some() {
            m.push(Modality::Text);
        }
        if !self.frames.is_empty() {
            m.push(Modality::Frames);
        }
        if self.features.is_some() {
            m.push(Modality::Features);
        }
        m
    }
}

fn base64(field: &str, text: &str) -> ApiResult<Vec<u8>> {
    // Data URLs (what a browser's FileReader gives) are taken as they are.
    let data = match text.split_once(";base64,") {
        Some((head, data)) if head.starts_with("data:") => data,
        _ => text,
    };
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| ApiError::bad(format!("{field}: not base64 ({e})")))
}

fn upload(i: Option<usize>, s: SampleIn) -> ApiResult<Upload> {
    let at = |f: &str| match i {
        Some(i) => format!("samples[{i}].{f}"),
        None => f.to_string(),
    };
    let frames = s
        .frames
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(k, f)| base64(&at(&format!("frames[{k}]")), f))
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Upload {
        id: s.id,
        text: s.text,
        image: s.image.as_deref().map(|t| base64(&at("image"), t)).transpose()?,
        audio: s.audio.as_deref().map(|t| base64(&at("audio"), t)).transpose()?,
        frames,
        features: s.features,
    })
}

/// Reads the body whole, under the size and time limits.
async fn read_body(shared: &Shared, body: Body) -> ApiResult<Bytes> {
    let (limit, wait) = (shared.config.max_body, shared.config.read_timeout);
    match tokio::time::timeout(wait, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {} s", wait.as_secs_f64()),
        )),
        Ok(Err(e)) if e.to_string().contains("length limit") => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over the limit of {limit} bytes"),
        )),
        Ok(Err(e)) => Err(ApiError::bad(format!("the body could not be read: {e}"))),
        Ok(Ok(b)) => Ok(b),
    }
}

/// The request's model name and samples, from JSON or multipart form data; `true` when the
/// JSON gave a list under `samples` (the answer is then a list too).
async fn parse(shared: &Shared, req: Request) -> ApiResult<(Option<String>, Vec<Upload>, bool)> {
    let query_model = query(&req, "model");
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if let Some(n) = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()) {
        if n.parse::<usize>().is_ok_and(|n| n > shared.config.max_body) {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body ({n} bytes) is over the limit of {} bytes",
                    shared.config.max_body
                ),
            ));
        }
    }
    let (parts, body) = req.into_parts();
    let bytes = read_body(shared, body).await?;
    if content_type.starts_with("multipart/form-data") {
        let req = Request::from_parts(parts, Body::from(bytes));
        let mut form = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad(format!("not multipart form data: {e}")))?;
        let mut up = Upload::default();
        let mut model = query_model;
        while let Some(field) =
            form.next_field().await.map_err(|e| ApiError::bad(format!("form data: {e}")))?
        {
            let name = field.name().unwrap_or("").to_string();
            let data = field
                .bytes()
                .await
                .map_err(|e| ApiError::bad(format!("form field {name}: {e}")))?;
            let text = || {
                String::from_utf8(data.to_vec())
                    .map_err(|_| ApiError::bad(format!("form field {name}: not UTF-8 text")))
            };
            match name.as_str() {
                "model" => model = Some(text()?),
                "id" => up.id = Some(text()?),
                "text" => up.text = Some(text()?),
                "image" => up.image = Some(data.to_vec()),
                "audio" => up.audio = Some(data.to_vec()),
                "frames" => up.frames.push(data.to_vec()),
                "features" => {
                    up.features = Some(serde_json::from_str(&text()?).map_err(|e| {
                        ApiError::bad(format!("form field features: a JSON list of numbers ({e})"))
                    })?)
                }
                other => {
                    return Err(ApiError::unprocessable(format!(
                        "unknown form field {other:?}: expected model, id, text, image, audio, frames or features"
                    )))
                }
            }
        }
        // An empty file input sends an empty part: no file.
        up.image = up.image.filter(|b| !b.is_empty());
        up.audio = up.audio.filter(|b| !b.is_empty());
        up.frames.retain(|b| !b.is_empty());
        up.text = up.text.filter(|t| !t.trim().is_empty());
        return Ok((model, vec![up], false));
    }
    // `curl -d` labels JSON as a form; anything that parses as JSON is taken as JSON.
    let json_type = content_type.is_empty() || content_type.starts_with("application/json");
    let unprocessable =
        |e: serde_json::Error| ApiError::unprocessable(format!("the JSON body: {e}"));
    let mut body: serde_json::Map<String, Value> = serde_json::from_slice(&bytes).map_err(|e| {
        let looks_json = bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| matches!(b, b'{' | b'['));
        if !json_type && !looks_json {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content type {content_type:?}: send JSON or multipart/form-data"),
            )
        } else if e.is_data() {
            ApiError::unprocessable(
                "the JSON body must be an object: one sample, or {\"samples\": [...]}",
            )
        } else {
            ApiError::bad(format!("the body is not JSON: {e}"))
        }
    })?;
    let model = match body.remove("model") {
        None | Some(Value::Null) => query_model,
        Some(Value::String(m)) => Some(m),
        Some(_) => return Err(ApiError::unprocessable("\"model\" must be a string")),
    };
    match body.remove("samples") {
        Some(list) => {
            if !body.is_empty() {
                return Err(ApiError::unprocessable(
                    "give one sample's fields or a list under \"samples\", not both",
                ));
            }
            let list: Vec<SampleIn> = serde_json::from_value(list).map_err(unprocessable)?;
            let ups = list
                .into_iter()
                .enumerate()
                .map(|(i, s)| upload(Some(i), s))
                .collect::<ApiResult<Vec<_>>>()?;
            Ok((model, ups, true))
        }
        None => {
            let one: SampleIn =
                serde_json::from_value(Value::Object(body)).map_err(unprocessable)?;
            Ok((model, vec![upload(None, one)?], false))
        }
    }
}

/// The samples as the model's items: each decoded in memory on a blocking thread, in parallel.
/// With `need_sound`, audio without a single sample is refused (a transcript of it would be the
/// model hearing its padding).
async fn decode(
    shared: &Shared,
    model: &ServedModel,
    uploads: Vec<Upload>,
    need_sound: bool,
) -> ApiResult<Vec<Item>> {
    let (max_frames, max_seconds) = (shared.config.max_frames, shared.config.max_audio_seconds);
    // Seconds per spectrogram frame, to bound a sample's sound.
    let frame_seconds =
        model.pipeline.audio.as_ref().map_or(0.0, |a| {
            a.mel.config().hop_length as f64 / f64::from(a.mel.config().sample_rate)
        });
    let reads = &model.info.modalities;
    let mut tasks = Vec::with_capacity(uploads.len());
    for (i, up) in uploads.into_iter().enumerate() {
        let id = up.id.clone().unwrap_or_else(|| i.to_string());
        let given = up.modalities();
        if let Some(extra) = given.iter().find(|m| !reads.contains(m)) {
            return Err(ApiError::unprocessable(format!(
                "sample {id}: model {} does not read {extra} (it reads {})",
                model.info.name,
                names(reads)
            )));
        }
        if given.is_empty() {
            return Err(ApiError::unprocessable(format!(
                "sample {id}: no input; model {} reads {}",
                model.info.name,
                names(reads)
            )));
        }
        if up.frames.len() > max_frames {
            return Err(ApiError::unprocessable(format!(
                "sample {id}: {} frames; at most {max_frames} (--max-frames)",
                up.frames.len()
            )));
        }
        let pipeline = Arc::clone(&model.pipeline);
        tasks.push(tokio::task::spawn_blocking(move || {
            // Paths under a root that is never read: every file is in memory.
            let root = Manifest::new(PathBuf::from("request"));
            let mut sample = Sample::new(id.clone());
            let mut memory = Memory::new();
            if let Some(b) = up.image {
                sample = sample.with_image("image");
                memory.insert(root.path("image".as_ref()), b);
            }
            if let Some(b) = up.audio {
                if need_sound {
                    let path = root.path("audio".as_ref());
                    let decoded = mm_data::audio::decode_audio_bytes(b.clone(), &path)
                        .map_err(|e| format!("sample {id:?}: {}", crate::chain(&e)))?;
                    if decoded.samples.is_empty() {
                        return Err(format!(
                            "sample {id:?}: no audio (0 samples): nothing to transcribe"
                        ));
                    }
                }
                sample = sample.with_audio("audio");
                memory.insert(root.path("audio".as_ref()), b);
            }
            if !up.frames.is_empty() {
                let paths: Vec<String> =
                    (0..up.frames.len()).map(|k| format!("frames/{k}")).collect();
                for (p, b) in paths.iter().zip(up.frames) {
                    memory.insert(root.path(p.as_ref()), b);
                }
                sample = sample.with_frames(paths);
            }
            if let Some(t) = up.text {
                sample = sample.with_text(t);
            }
            if let Some(f) = up.features {
                sample = sample.with_features(f);
            }
            pipeline
                .load_in_memory(&root, &sample, i, 0, false, &memory)
                .map_err(|e| crate::chain(&e))
        }));
    }
    let mut items = Vec::with_capacity(tasks.len());
    for t in tasks {
        let item = t
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(ApiError::unprocessable)?;
        let seconds = item.audio.as_ref().map_or(0.0, |a| a.nrows() as f64 * frame_seconds);
        if seconds > max_seconds {
            return Err(ApiError::unprocessable(format!(
                "sample {}: {seconds:.0} s of sound; at most {max_seconds} s (--max-audio-s)",
                item.id
            )));
        }
        items.push(item);
    }
    Ok(items)
}

fn names(modalities: &[Modality]) -> String {
    modalities.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", ")
}

/// A query parameter's value (`?name=value`), unescaped only for what names and numbers need.
fn query(req: &Request, name: &str) -> Option<String> {
    req.uri().query().and_then(|q| {
        q.split('&').find_map(|kv| {
            kv.strip_prefix(name).and_then(|r| r.strip_prefix('=')).map(str::to_string)
        })
    })
}

/// A whole-number query parameter, or its default; anything else is a 422 naming it.
fn number(req: &Request, name: &str, default: usize, max: usize) -> ApiResult<usize> {
    match query(req, name) {
        None => Ok(default),
        Some(v) => v.parse::<usize>().ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
            ApiError::unprocessable(format!("?{name}={v}: a whole number from 1 to {max}"))
        }),
    }
}

async fn predict(State(shared): State<Arc<Shared>>, req: Request) -> ApiResult<Response> {
    serve_task(&shared, req, |_| Ok(Task::Predict), "predict").await
}

async fn embed(State(shared): State<Arc<Shared>>, req: Request) -> ApiResult<Response> {
    serve_task(&shared, req, |_| Ok(Task::Embed), "embed").await
}

async fn retrieve(State(shared): State<Arc<Shared>>, req: Request) -> ApiResult<Response> {
    let top_k = number(&req, "top_k", 5, 1000)?;
    serve_task(&shared, req, move |_| Ok(Task::Retrieve { top_k }), "retrieve").await
}

async fn transcribe(State(shared): State<Arc<Shared>>, req: Request) -> ApiResult<Response> {
    let beam = number(&req, "beam", 1, 64)?;
    serve_task(&shared, req, move |_| Ok(Task::Transcribe { beam }), "transcribe").await
}

/// Parses, checks that the model does `what`, decodes, queues, and answers.
async fn serve_task(
    shared: &Shared,
    req: Request,
    task: impl FnOnce(&ServedModel) -> ApiResult<Task>,
    what: &str,
) -> ApiResult<Response> {
    let (name, uploads, listed) = parse(shared, req).await?;
    let model = shared.model(name.as_deref())?;
    let task = task(&model)?;
    let fits = matches!(
        (&model.info.kind, task),
        (Kind::Predictor, Task::Predict)
            | (Kind::Retrieval(_), Task::Embed | Task::Retrieve { .. })
            | (Kind::Recognizer, Task::Transcribe { .. })
    );
    if !fits {
        let does = match model.info.kind {
            Kind::Predictor => "/v1/predict",
            Kind::Retrieval(_) => "/v1/embed and /v1/retrieve",
            Kind::Recognizer => "/v1/transcribe",
        };
        return Err(ApiError::unprocessable(format!(
            "model {} does not {what}: it answers {does}",
            model.info.name
        )));
    }
    if uploads.is_empty() {
        return Err(ApiError::unprocessable("\"samples\" is empty"));
    }
    let max = shared.config.batching.max_batch;
    if uploads.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} samples in one request; at most {max} (the largest batch)", uploads.len()),
        ));
    }
    if let (Kind::Retrieval(pair), Task::Retrieve { .. }) = (&model.info.kind, task) {
        for (i, up) in uploads.iter().enumerate() {
            let given = up.modalities();
            if given.len() != 1 || !pair.contains(&given[0]) {
                return Err(ApiError::unprocessable(format!(
                    "sample {}: a query is one of {} or {} (it has {})",
                    up.id.clone().unwrap_or_else(|| i.to_string()),
                    pair[0],
                    pair[1],
                    if given.is_empty() { "nothing".to_string() } else { names(&given) }
                )));
            }
        }
    }
    if model.is_full() {
        return Err(busy(&model.info.name));
    }
    let items = decode(shared, &model, uploads, matches!(task, Task::Transcribe { .. })).await?;
    let rx = model.submit(task, items).map_err(|r| match r {
        Refused::Full => busy(&model.info.name),
        Refused::Stopped => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("model {} has stopped", model.info.name),
        ),
    })?;
    let rows = rx
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the model stopped"))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let key = match task {
        Task::Predict => "predictions",
        Task::Embed => "embeddings",
        Task::Retrieve { .. } => "queries",
        Task::Transcribe { .. } => "transcripts",
    };
    Ok(if listed {
        Json(json!({"model": model.info.name, key: rows})).into_response()
    } else {
        let mut row = rows.into_iter().next().unwrap_or(Value::Null);
        row["model"] = json!(model.info.name);
        Json(row).into_response()
    })
}

/// 503 with `Retry-After`: the model's queue is full.
fn busy(model: &str) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("model {model} is busy: its queue is full"),
    );
    e.retry_after = Some(1);
    e
}

/// A retrieval model's gallery item: its image or audio file, found through the run's manifest
/// by the id a search returned (never a path from the request).
async fn gallery_item(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path((name, id)): axum::extract::Path<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    let model = shared.model(Some(&name))?;
    let Some(manifest) = &model.gallery else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("model {name} has no gallery")));
    };
    let in_gallery = model.gallery_ids.contains(&id);
    let sample = manifest.get(&id).filter(|_| in_gallery).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, format!("no item {id:?} in model {name}'s gallery"))
    })?;
    let which = query(&req, "modality").unwrap_or_else(|| "image".to_string());
    let (rel, kind) = match which.as_str() {
        "image" => (sample.image.clone(), mm_data::fs::FileKind::Image),
        "audio" => (sample.audio.clone(), mm_data::fs::FileKind::Audio),
        other => return Err(ApiError::unprocessable(format!("?modality={other}: image or audio"))),
    };
    let rel = rel
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("item {id} has no {which}")))?;
    let path = manifest.path(&rel);
    let bytes = tokio::task::spawn_blocking(move || mm_data::fs::read_capped(&path, kind))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, crate::chain(&e)))?;
    let ext = rel.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let mime = match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "bmp" => "image/bmp",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        _ => "application/octet-stream",
    };
    Ok(([(header::CONTENT_TYPE, mime)], bytes).into_response())
}

/// The API's OpenAPI 3.1 description.
pub fn openapi() -> Value {
    let error = json!({"$ref": "#/components/schemas/Error"});
    let errors = |codes: &[(&str, &str)]| -> Value {
        codes
            .iter()
            .map(|(c, d)| {
                (
                    c.to_string(),
                    json!({"description": d, "content": {"application/json": {"schema": error}}}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let mut predict_responses = errors(&[
        ("400", "malformed JSON or form data, bad base64"),
        ("401", "missing or wrong bearer token"),
        ("404", "no such model"),
        ("408", "the body did not arrive in time"),
        ("413", "the body or the number of samples is over the limit"),
        ("415", "neither JSON nor multipart form data"),
        ("422", "a sample the model cannot read: unknown field, modality it does not read, corrupt file"),
        ("503", "the model's queue is full or it is loading (Retry-After)"),
        ("504", "no answer within the time limit"),
    ]);
    predict_responses["200"] = json!({
        "description": "the prediction: as `mm predict` prints it, with the model's name; a list under `predictions` when the request gave `samples`",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Prediction"}}}
    });
    json!({
        "openapi": "3.1.0",
        "info": {"title": "mm serve", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Trained mm runs behind HTTP, with concurrent requests batched."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "status"],
                          "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}},
                "Sample": {"type": "object", "additionalProperties": false, "properties": {
                    "id": {"type": "string"},
                    "text": {"type": "string"},
                    "image": {"type": "string", "contentEncoding": "base64", "description": "an image file (PNG, JPEG, ...) as base64 or a data URL"},
                    "audio": {"type": "string", "contentEncoding": "base64", "description": "an audio file (WAV, FLAC, MP3, Ogg) as base64"},
                    "frames": {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}},
                    "features": {"type": "array", "items": {"type": "number"}}
                }},
                "PredictRequest": {"allOf": [{"$ref": "#/components/schemas/Sample"}], "properties": {
                    "model": {"type": "string"},
                    "samples": {"type": "array", "items": {"$ref": "#/components/schemas/Sample"}}
                }},
                "Prediction": {"type": "object", "properties": {
                    "id": {"type": "string"}, "model": {"type": "string"},
                    "prediction": {}, "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
                    "modality_weights": {"type": "object", "additionalProperties": {"type": "number"}}
                }}
            }
        },
        "paths": {
            "/v1/predict": {"post": {
                "summary": "Predict one sample, or several, with a model",
                "security": [{"bearer": []}, {}],
                "parameters": [{"name": "model", "in": "query", "schema": {"type": "string"}}],
                "requestBody": {"required": true, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
                    "multipart/form-data": {"schema": {"type": "object", "properties": {
                        "model": {"type": "string"}, "id": {"type": "string"}, "text": {"type": "string"},
                        "image": {"type": "string", "format": "binary"}, "audio": {"type": "string", "format": "binary"},
                        "frames": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "features": {"type": "string", "description": "a JSON list of numbers"}
                    }}}
                }},
                "responses": predict_responses
            }},
            "/v1/embed": {"post": {
                "summary": "A retrieval model's embedding of each modality of its pair a sample has (L2-normalised)",
                "security": [{"bearer": []}, {}],
                "parameters": [{"name": "model", "in": "query", "schema": {"type": "string"}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}, "multipart/form-data": {}}},
                "responses": {"200": {"description": "{id, model, embeddings: {MODALITY: [numbers]}}; a list under `embeddings` for `samples`"}, "422": {"description": "not a retrieval model, or a modality it does not read"}}
            }},
            "/v1/retrieve": {"post": {
                "summary": "The gallery items (the other modality of a retrieval model's pair, the run's test split) nearest a query",
                "security": [{"bearer": []}, {}],
                "parameters": [{"name": "model", "in": "query", "schema": {"type": "string"}},
                               {"name": "top_k", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 5}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}, "multipart/form-data": {}}},
                "responses": {"200": {"description": "{id, model, from, to, gallery, results: [{rank, id, score, label, caption, text}]}"}, "422": {"description": "not a retrieval model, or a query that is not exactly one modality of its pair"}}
            }},
            "/v1/transcribe": {"post": {
                "summary": "A speech recognition run's transcript of an audio file, with timed words",
                "security": [{"bearer": []}, {}],
                "parameters": [{"name": "model", "in": "query", "schema": {"type": "string"}},
                               {"name": "beam", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 64, "default": 1}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}, "multipart/form-data": {}}},
                "responses": {"200": {"description": "{id, model, text, log_prob, tokens, words, seconds, decoder}"}, "422": {"description": "not a speech recognition run, or audio without samples"}}
            }},
            "/v1/gallery/{model}/{id}": {"get": {
                "summary": "A gallery item's file, by the id a search returned",
                "security": [{"bearer": []}, {}],
                "parameters": [{"name": "model", "in": "path", "required": true, "schema": {"type": "string"}},
                               {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
                               {"name": "modality", "in": "query", "schema": {"enum": ["image", "audio"], "default": "image"}}],
                "responses": {"200": {"description": "the file"}, "404": {"description": "no such model, gallery or item"}}
            }},
            "/v1/models": {"get": {"summary": "The models served", "security": [{"bearer": []}, {}],
                "responses": {"200": {"description": "name, modalities, classes, heads, state of each"}}}},
            "/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "the process runs"}}}},
            "/ready": {"get": {"summary": "Readiness", "responses": {
                "200": {"description": "every model is loaded"}, "503": {"description": "models still loading"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [{"bearer": []}, {}],
                "responses": {"200": {"description": "text exposition format 0.0.4"}}}},
            "/openapi.json": {"get": {"summary": "This description", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/": {"get": {"summary": "A web page to try the models", "responses": {"200": {"description": "HTML"}}}}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::{base64, same_secret};

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cret", b"s3creT"));
        assert!(!same_secret(b"s3cret", b"s3cre"));
        assert!(!same_secret(b"", b"x"));
    }

    #[test]
    fn base64_takes_data_urls() {
        assert_eq!(base64("image", "aGk=").map_err(|e| e.message).as_deref(), Ok(&b"hi"[..]));
        assert_eq!(
            base64("image", "data:image/png;base64,aGk=").map_err(|e| e.message).as_deref(),
            Ok(&b"hi"[..])
        );
        let e = base64("samples[2].image", "not base64!").err().map(|e| e.message);
        assert!(e.is_some_and(|m| m.starts_with("samples[2].image: not base64")));
    }
}
