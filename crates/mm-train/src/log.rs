//! Where a run's epoch records go: loggers behind one trait.
//!
//! After every epoch the training loop hands each [`Logger`] the epoch's record (what
//! `metrics.jsonl` holds: `epoch`, `step`, `train_loss`, `lr`, `seconds`, `samples_per_second`,
//! `val` with every validation metric) and the history so far:
//! - [`MetricsJsonl`]: `metrics.jsonl`, one record per line, rewritten atomically;
//! - [`Curves`]: `curves.svg`, the losses and metrics drawn;
//! - [`TensorBoard`]: TensorBoard event files, so that `tensorboard --logdir runs` shows every
//!   run's curves as PyTorch users expect: `train/loss`, `train/lr`,
//!   `train/samples_per_second` and `val/METRIC` for every scalar metric, the epoch as the step.
//!
//! Event files are TFRecord files of `tensorboard.Event` messages, encoded here directly (a
//! length, its masked CRC-32C, the message, its masked CRC-32C); the bytes match TensorBoard's
//! own writer (tested against a file it wrote, `tests/data/tensorboard/`). Each process that
//! trains a run appends to a file of its own (`events.out.tfevents.SECONDS.HOST.PID.N.mm`), as
//! PyTorch's `SummaryWriter` does; a resumed run continues after its last checkpointed epoch,
//! and records are written after the checkpoint, so no epoch appears twice.
//!
//! ```
//! use mm_train::log::{Logger, TensorBoard};
//!
//! let dir = std::env::temp_dir().join(format!("mm-log-doc-{}", std::process::id()));
//! let mut tb = TensorBoard::create(&dir)?;
//! let record = serde_json::json!({"epoch": 1, "train_loss": 0.7, "lr": 1e-3, "val": {"accuracy": 0.5}});
//! tb.log(&record, std::slice::from_ref(&record))?;
//! let file = std::fs::read_dir(&dir)?.next().expect("an event file")?.path();
//! assert!(file.file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."));
//! // A second writer in the same folder, process and second gets a file of its own.
//! assert_ne!(TensorBoard::create(&dir)?.path(), tb.path());
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::{Error, Result};

/// Something that records every epoch of a run.
pub trait Logger {
    /// Records the epoch `record`; `history` holds every record so far, `record` last.
    fn log(&mut self, record: &Value, history: &[Value]) -> Result<()>;
}

/// `metrics.jsonl`: the whole history, one JSON object per line, rewritten atomically.
#[derive(Debug)]
pub struct MetricsJsonl {
    path: PathBuf,
}

impl MetricsJsonl {
    /// A logger writing `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        MetricsJsonl { path: path.into() }
    }
}

impl Logger for MetricsJsonl {
    fn log(&mut self, _: &Value, history: &[Value]) -> Result<()> {
        let mut text = String::new();
        for h in history {
            text.push_str(&h.to_string());
            text.push('\n');
        }
        mm_data::fs::write_atomic(&self.path, text.as_bytes()).map_err(Error::from)
    }
}

/// `curves.svg`: the history drawn ([`crate::plot::plot_history`]).
#[derive(Debug)]
pub struct Curves {
    path: PathBuf,
}

impl Curves {
    /// A logger drawing into `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Curves { path: path.into() }
    }
}

impl Logger for Curves {
    fn log(&mut self, _: &Value, history: &[Value]) -> Result<()> {
        crate::plot::plot_history(history, &self.path)
    }
}

/// TensorBoard event files (see the module documentation).
#[derive(Debug)]
pub struct TensorBoard {
    path: PathBuf,
    file: File,
}

impl TensorBoard {
    /// Creates this process's event file in `dir` (created if needed), starting with the
    /// version record TensorBoard looks for.
    pub fn create(dir: &Path) -> Result<Self> {
        let fail = |e: std::io::Error| Error::Checkpoint(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(fail)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().replace(['/', ' '], "_"))
            .unwrap_or_else(|_| "localhost".into());
        // Unique per process and per file: a process that trains the same folder twice in one
        // second (a test, a notebook) gets the next number.
        let mut n = 0;
        let (path, file) = loop {
            let path = dir.join(format!(
                "events.out.tfevents.{}.{host}.{}.{n}.mm",
                now.as_secs(),
                std::process::id()
            ));
            match File::options().create_new(true).append(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(Error::Checkpoint(format!("{}: {e}", path.display()))),
            }
        };
        let mut tb = TensorBoard { path, file };
        tb.write(&event(now.as_secs_f64(), 0, Payload::FileVersion("brain.Event:2")))?;
        Ok(tb)
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, event: &[u8]) -> Result<()> {
        self.file
            .write_all(&record(event))
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::file(&self.path, e))
    }
}

impl Logger for TensorBoard {
    fn log(&mut self, record: &Value, _: &[Value]) -> Result<()> {
        let step = record["epoch"].as_i64().unwrap_or(0);
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let scalars = scalars(record);
        let values: Vec<(&str, f32)> = scalars.iter().map(|(t, v)| (t.as_str(), *v)).collect();
        self.write(&event(wall, step, Payload::Scalars(&values)))
    }
}

/// The scalars of an epoch record under TensorBoard tags: `train/loss`, `train/lr`,
/// `train/samples_per_second`, then `train/NAME` and `val/NAME` for every number in the
/// record's `train` and `val` objects (lists such as the confusion matrix are left out).
pub fn scalars(record: &Value) -> Vec<(String, f32)> {
    let mut out = Vec::new();
    for (key, tag) in [
        ("train_loss", "train/loss"),
        ("lr", "train/lr"),
        ("samples_per_second", "train/samples_per_second"),
    ] {
        if let Some(v) = record[key].as_f64() {
            out.push((tag.to_string(), v as f32));
        }
    }
    for group in ["train", "val"] {
        if let Some(values) = record[group].as_object() {
            for (k, v) in values {
                if let Some(v) = v.as_f64() {
                    out.push((format!("{group}/{k}"), v as f32));
                }
            }
        }
    }
    out
}

/// What an event carries.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// `file_version` (the first event of a file).
    FileVersion(&'a str),
    /// A summary of scalar values, by tag.
    Scalars(&'a [(&'a str, f32)]),
}

/// A `tensorboard.Event` message: `wall_time` (1, double), `step` (2, int64), then
/// `file_version` (3, string) or `summary` (5, a `Summary` of `Value { tag = 1,
/// simple_value = 2 }`).
pub fn event(wall_time: f64, step: i64, payload: Payload<'_>) -> Vec<u8> {
    let mut out = vec![0x09];
    out.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        out.push(0x10);
        varint(&mut out, step as u64);
    }
    match payload {
        Payload::FileVersion(v) => {
            out.push(0x1a);
            varint(&mut out, v.len() as u64);
            out.extend_from_slice(v.as_bytes());
        }
        Payload::Scalars(values) => {
            let mut summary = Vec::new();
            for (tag, value) in values {
                let mut v = vec![0x0a];
                varint(&mut v, tag.len() as u64);
                v.extend_from_slice(tag.as_bytes());
                v.push(0x15);
                v.extend_from_slice(&value.to_le_bytes());
                summary.push(0x0a);
                varint(&mut summary, v.len() as u64);
                summary.extend(v);
            }
            out.push(0x2a);
            varint(&mut out, summary.len() as u64);
            out.extend(summary);
        }
    }
    out
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A TFRecord: the length (u64, little-endian), its masked CRC-32C, the data, its masked CRC-32C.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// TFRecord's masked CRC-32C (Castagnoli): the CRC rotated right by 15 bits plus a constant.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit over a byte table.
fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            }
            *slot = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRC-32C's check value (RFC 3720, B.4): "123456789" gives 0xE3069283.
    #[test]
    fn crc32c_matches_its_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    /// The same three events as `tests/data/tensorboard/make_golden.py` writes with
    /// TensorBoard's own messages and record writer (which then reads the file back): the bytes
    /// are equal.
    #[test]
    // 0.6931 is a loss value in the golden file (a two-class start), not an approximation of ln 2.
    #[allow(clippy::approx_constant)]
    fn event_files_are_the_bytes_tensorboard_writes() {
        let golden = include_bytes!("../tests/data/tensorboard/golden.tfevents");
        let mut ours = record(&event(1765000000.25, 0, Payload::FileVersion("brain.Event:2")));
        let first = [("train/loss", 0.6931f32), ("val/accuracy", 0.0)];
        ours.extend(record(&event(1765000012.5, 1, Payload::Scalars(&first))));
        ours.extend(record(&event(1765000024.75, 300, Payload::Scalars(&[("val/mse", -1.5e-3)]))));
        assert_eq!(ours.as_slice(), golden.as_slice());
    }

    #[test]
    fn records_keep_numbers_and_leave_lists_out() {
        let r = serde_json::json!({"epoch": 2, "train_loss": 0.5, "lr": 0.001, "samples_per_second": 10.0,
            "val": {"accuracy": 0.75, "confusion": [[1, 0], [0, 1]], "loss": 0.6}});
        let s = scalars(&r);
        let tags: Vec<&str> = s.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            tags,
            ["train/loss", "train/lr", "train/samples_per_second", "val/accuracy", "val/loss"]
        );
        assert_eq!(s[3].1, 0.75);
        // The synthesiser's records keep their training losses in `train`.
        let tts = serde_json::json!({"epoch": 1, "train": {"mel_l1": 0.9}, "val": {"loss": 1.2}});
        let tags: Vec<String> = scalars(&tts).into_iter().map(|(t, _)| t).collect();
        assert_eq!(tags, ["train/mel_l1", "val/loss"]);
    }
}
