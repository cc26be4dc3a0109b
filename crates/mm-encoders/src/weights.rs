//! Weights from safetensors files: every variable of a `VarStore` (or of one prefix of it) is
//! matched by name, and every problem is reported at once: a variable the file lacks, a tensor
//! the model has no place for, a shape that differs. A torchvision state dict saved with
//! `safetensors.torch.save_file(model.state_dict(), path)` loads into the image encoders as is
//! (its `num_batches_tracked` counters, which tch's batch norm does not keep, are skipped).
//!
//! ```no_run
//! use mm_encoders::weights::{load_safetensors, LoadOptions};
//! use tch::{nn, Device};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! // ... build an encoder under vs.root() / "image" ...
//! let options = LoadOptions { prefix: "image.".into(), skip: vec!["fc.".into()], ..Default::default() };
//! let report = load_safetensors(&vs, "resnet50.safetensors".as_ref(), &options)?;
//! println!("loaded {} tensors, skipped {:?}", report.loaded, report.skipped);
//! # Ok::<(), mm_encoders::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use tch::{nn, Tensor};

use crate::{Error, Result};

/// How file names map to variables.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Prefix of the variables to fill (`"image."`); a file name `N` fills variable
    /// `prefix + N`. Variables outside the prefix are left alone.
    pub prefix: String,
    /// File tensors whose name starts with one of these are skipped (reported, not loaded): a
    /// classifier head the encoder does not have, say.
    pub skip: Vec<String>,
    /// Variables under the prefix the file may lack (they keep their initial values).
    pub allow_missing: Vec<String>,
}

/// What [`load_safetensors`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// Variables filled.
    pub loaded: usize,
    /// File tensors skipped, by name.
    pub skipped: Vec<String>,
    /// Variables left at their initial values (allowed to be missing).
    pub kept: Vec<String>,
}

/// Fills the variables of `vs` under `options.prefix` from a safetensors file, converting
/// dtypes to the variables' own. Fails, listing every problem, if a variable is missing from
/// the file (unless allowed), a file tensor matches no variable (unless skipped), or a shape
/// differs; nothing is changed then.
pub fn load_safetensors(vs: &nn::VarStore, path: &Path, options: &LoadOptions) -> Result<LoadReport> {
    let io = |e: tch::TchError| Error::Io { path: path.to_path_buf(), message: e.to_string() };
    if !path.is_file() {
        return Err(Error::Io { path: path.to_path_buf(), message: "no such file".to_string() });
    }
    let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(path).map_err(io)?.into_iter().collect();
    let variables: BTreeMap<String, Tensor> =
        vs.variables().into_iter().filter_map(|(k, v)| k.strip_prefix(&options.prefix).map(|k| (k.to_string(), v))).collect();
    let mut problems = Vec::new();
    let mut skipped = Vec::new();
    let mut pairs = Vec::new();
    for (name, t) in &tensors {
        if name.ends_with("num_batches_tracked") || options.skip.iter().any(|s| name.starts_with(s.as_str())) {
            skipped.push(name.clone());
            continue;
        }
        match variables.get(name) {
            None => problems.push(format!("  unexpected: {name} {:?} (the model has no such variable)", t.size())),
            Some(v) if v.size() != t.size() => {
                problems.push(format!("  wrong shape: {name}: the file has {:?}, the model {:?}", t.size(), v.size()))
            }
            Some(v) => pairs.push((v, t)),
        }
    }
    let mut kept = Vec::new();
    for name in variables.keys() {
        if !tensors.contains_key(name) {
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
    let mut named: Vec<(String, Tensor)> =
        tensors.into_iter().map(|(k, v)| (k, v.detach().to_device(tch::Device::Cpu).contiguous())).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp-{}", path.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
    let io = |e: String| Error::Io { path: path.to_path_buf(), message: e };
    if let Err(e) = Tensor::write_safetensors(&named, &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(os_error(&e.to_string()).unwrap_or_else(|| e.to_string())));
    }
    let done = std::fs::File::open(&tmp).and_then(|f| f.sync_all()).and_then(|_| std::fs::rename(&tmp, path));
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
