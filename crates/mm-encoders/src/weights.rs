//! Weights from safetensors files: every variable of a `VarStore` (or of one prefix of it) is
//! matched by name, and every problem is reported at once: a variable the file lacks, a tensor
//! the model has no place for, a shape that differs. A torchvision state dict saved with
//! `safetensors.torch.save_file(model.state_dict(), path)` loads into the image encoders as is
//! (its `num_batches_tracked` counters, which tch's batch norm does not keep, are skipped and
//! reported); other libraries' names (timm's VGG, transformers' BERT) load through a
//! [`LoadOptions::map`] function.
//!
//! ```no_run
//! use mm_encoders::weights::{load_safetensors, LoadOptions};
//! use tch::{nn, Device};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! // ... build an encoder under vs.root() / "image" ...
//! let options = LoadOptions { prefix: "image.".into(), skip: vec!["fc.".into()], ..Default::default() };
//! let report = load_safetensors(&vs, "resnet50.safetensors".as_ref(), &options)?;
//! println!("{}", report.summary()); // loaded 265 tensors; skipped 53 batch-norm step counters ...
//! # Ok::<(), mm_encoders::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use tch::{nn, Tensor};

use crate::{Error, Result};

/// What a file's tensor name becomes, given by a [`LoadOptions::map`] function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// The variable of this name (after the prefix).
    To(String),
    /// The variable of this name, whose shape differs from the file's but holds the same
    /// elements in the same order (timm's VGG keeps its fully connected layers as 7×7 and 1×1
    /// convolutions; torchvision's, and ours, as matrices).
    Reshaped(String),
    /// Not loaded, for this reason (reported in [`LoadReport::skipped`]).
    Skip(&'static str),
}

/// How file names map to variables.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Prefix of the variables to fill (`"image."`); a file name `N` fills variable
    /// `prefix + N` (after `map`). Variables outside the prefix are left alone.
    pub prefix: String,
    /// File tensors whose name starts with one of these are skipped (reported, not loaded): a
    /// classifier head the encoder does not have, say.
    pub skip: Vec<String>,
    /// Variables under the prefix the file may lack (they keep their initial values).
    pub allow_missing: Vec<String>,
    /// Renames a file's tensor to a variable, or skips it (another library's naming, such as
    /// [`crate::bert::hf_name`] or [`crate::image::timm_name`]); `None`: names are the
    /// variables' own.
    pub map: Option<fn(&str) -> Mapped>,
}

/// What [`load_safetensors`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// Variables filled.
    pub loaded: usize,
    /// File tensors not loaded: (name, why).
    pub skipped: Vec<(String, String)>,
    /// Variables left at their initial values (allowed to be missing).
    pub kept: Vec<String>,
}

impl LoadReport {
    /// One line: what was loaded, and what was skipped and why, counted by reason
    /// (`loaded 265 tensors; skipped 53 batch-norm step counters (...): bn1.num_batches_tracked,
    /// ...; 2 classifier-head tensors (...): fc.bias, fc.weight`).
    pub fn summary(&self) -> String {
        let mut by_reason: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, why) in &self.skipped {
            by_reason.entry(why.as_str()).or_default().push(name.as_str());
        }
        let mut line = format!("loaded {} tensors", self.loaded);
        if !by_reason.is_empty() {
            let parts: Vec<String> = by_reason
                .iter()
                .map(|(why, names)| {
                    let shown: Vec<&str> = names.iter().take(3).copied().collect();
                    let more = if names.len() > 3 { ", ..." } else { "" };
                    format!("{} {why}: {}{more}", names.len(), shown.join(", "))
                })
                .collect();
            line.push_str(&format!("; skipped {}", parts.join("; ")));
        }
        if !self.kept.is_empty() {
            line.push_str(&format!(
                "; {} variables not in the file keep their initial values ({})",
                self.kept.len(),
                self.kept.join(", ")
            ));
        }
        line
    }
}

const COUNTER: &str = "batch-norm step counters (libtorch's batch norm keeps none)";
const HEAD: &str = "classifier-head tensors (the encoder has no classifier)";

/// Fills the variables of `vs` under `options.prefix` from a safetensors file, converting
/// dtypes to the variables' own. Fails, listing every problem, if a variable is missing from
/// the file (unless allowed), a file tensor matches no variable (unless skipped), or a shape
/// differs; nothing is changed then.
pub fn load_safetensors(
    vs: &nn::VarStore,
    path: &Path,
    options: &LoadOptions,
) -> Result<LoadReport> {
    let io = |e: tch::TchError| Error::Io { path: path.to_path_buf(), message: e.to_string() };
    if !path.is_file() {
        return Err(Error::Io { path: path.to_path_buf(), message: "no such file".to_string() });
    }
    let tensors: BTreeMap<String, Tensor> =
        Tensor::read_safetensors(path).map_err(io)?.into_iter().collect();
    let variables: BTreeMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(&options.prefix).map(|k| (k.to_string(), v)))
        .collect();
    let mut problems = Vec::new();
    let mut skipped = Vec::new();
    let mut pairs = Vec::new();
    let mut filled = std::collections::BTreeSet::new();
    for (name, t) in &tensors {
        if name.ends_with("num_batches_tracked") {
            skipped.push((name.clone(), COUNTER.to_string()));
            continue;
        }
        if options.skip.iter().any(|s| name.starts_with(s.as_str())) {
            skipped.push((name.clone(), HEAD.to_string()));
            continue;
        }
        let (target, reshape) =
            match options.map.map_or_else(|| Mapped::To(name.clone()), |m| m(name)) {
                Mapped::To(n) => (n, false),
                Mapped::Reshaped(n) => (n, true),
                Mapped::Skip(why) => {
                    skipped.push((name.clone(), why.to_string()));
                    continue;
                }
            };
        let shown = if &target == name { name.clone() } else { format!("{name} (as {target})") };
        match variables.get(&target) {
            None => problems.push(format!(
                "  unexpected: {shown} {:?} (the model has no such variable)",
                t.size()
            )),
            Some(_) if !filled.insert(target.clone()) => problems
                .push(format!("  duplicate: {shown} (another tensor of the file fills it too)")),
            Some(v) if v.size() == t.size() => pairs.push((v, t.shallow_clone())),
            Some(v) if reshape && v.numel() == t.numel() => pairs.push((v, t.reshape(v.size()))),
            Some(v) => problems.push(format!(
                "  wrong shape: {shown}: the file has {:?}, the model {:?}",
                t.size(),
                v.size()
            )),
        }
    }
    let mut kept = Vec::new();
    for name in variables.keys() {
        if !filled.contains(name) {
            if options.allow_missing.iter().any(|a| name.starts_with(a.as_str())) {
                kept.push(name.clone());
            } else {
                problems.push(format!("  missing: {name} (not in the file)"));
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::Weights { path: path.to_path_buf(), problems });
    }
    tch::no_grad(|| {
        for (v, t) in &pairs {
            let mut v = v.shallow_clone();
            v.copy_(&t.to_kind(v.kind()).to_device(v.device()));
        }
    });
    Ok(LoadReport { loaded: pairs.len(), skipped, kept })
}

/// Writes the variables of `vs` under `prefix` (with the prefix removed from their names) to a
/// safetensors file, atomically: a reader or a crash sees the old file or the whole new one.
pub fn save_safetensors(vs: &nn::VarStore, path: &Path, prefix: &str) -> Result<()> {
    let named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v)))
        .collect();
    save_named(path, named)
}

/// The operating system's own words for the error tch reports in its debug form
/// (`IoError(Os { code: 28, .. })` becomes "No space left on device (os error 28)"), when
/// there is one.
fn os_error(message: &str) -> Option<String> {
    let rest = &message[message.find("Os { code: ")? + "Os { code: ".len()..];
    let code: i32 = rest[..rest.find(|c: char| !c.is_ascii_digit())?].parse().ok()?;
    Some(std::io::Error::from_raw_os_error(code).to_string())
}

/// Writes named tensors (moved to the CPU, sorted by name) to a safetensors file atomically:
/// a temporary file beside it, flushed to disk, renamed over `path`, the folder synced.
pub fn save_named(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(k, v)| (k, v.detach().to_device(tch::Device::Cpu).contiguous()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let io = |e: String| Error::Io { path: path.to_path_buf(), message: e };
    if let Err(e) = Tensor::write_safetensors(&named, &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(os_error(&e.to_string()).unwrap_or_else(|| e.to_string())));
    }
    let done = std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e.to_string()));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::os_error;

    #[test]
    fn tch_io_errors_read_as_the_system_says_them() {
        let tch = "safetensors error /x/.a.tmp-1: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })";
        assert_eq!(os_error(tch).as_deref(), Some("No space left on device (os error 28)"));
        assert_eq!(os_error("safetensors error: header too large"), None);
        assert_eq!(os_error("Os { code: }"), None);
    }
}
