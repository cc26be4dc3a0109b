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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, View};
use tch::{nn, Kind, Tensor};

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
    /// Part `index` of `of` equal parts, along the first dimension, of the variable of this
    /// name (transformers keeps a ViT's query, key and value apart; torchvision, and ours, as
    /// one packed `in_proj`). Every part must be in the file.
    Part {
        /// The variable.
        to: String,
        /// Which part, from 0.
        index: usize,
        /// How many parts the variable holds.
        of: usize,
    },
    /// Equal parts, along the first dimension, filling these variables in order (open_clip
    /// keeps a CLIP layer's query, key and value packed; transformers, and ours, apart).
    Chunks(Vec<String>),
    /// The variable of this name, which holds the file's matrix transposed (open_clip keeps
    /// CLIP's projections as `[width, embedding]`, transformers as linear weights).
    Transposed(String),
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
    let tensors: BTreeMap<String, Tensor> = read_named(path)?.into_iter().collect();
    let variables: BTreeMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(&options.prefix).map(|k| (k.to_string(), v)))
        .collect();
    let mut problems = Vec::new();
    let mut skipped = Vec::new();
    let mut pairs = Vec::new();
    let mut filled = std::collections::BTreeSet::new();
    // Parts of packed variables: (variable, part) -> the file's tensor.
    let mut parts: BTreeMap<String, BTreeMap<usize, (usize, Tensor)>> = BTreeMap::new();
    for (name, t) in &tensors {
        if name.ends_with("num_batches_tracked") {
            skipped.push((name.clone(), COUNTER.to_string()));
            continue;
        }
        if options.skip.iter().any(|s| name.starts_with(s.as_str())) {
            skipped.push((name.clone(), HEAD.to_string()));
            continue;
        }
        let (target, reshape, t) = match options
            .map
            .map_or_else(|| Mapped::To(name.clone()), |m| m(name))
        {
            Mapped::To(n) => (n, false, t.shallow_clone()),
            Mapped::Reshaped(n) => (n, true, t.shallow_clone()),
            Mapped::Transposed(n) if t.dim() == 2 => (n, false, t.tr()),
            Mapped::Transposed(n) => {
                problems.push(format!(
                    "  wrong shape: {name} (as {n}, transposed): the file has {:?}, a matrix was expected",
                    t.size()
                ));
                continue;
            }
            Mapped::Chunks(targets) => {
                let n = targets.len().max(1) as i64;
                let size = t.size();
                if size.is_empty() || size[0] % n != 0 {
                    problems.push(format!(
                        "  wrong shape: {name} {size:?}: cannot be cut into {n} equal parts ({})",
                        targets.join(", ")
                    ));
                    continue;
                }
                for (k, target) in targets.iter().enumerate() {
                    let piece = t.narrow(0, k as i64 * (size[0] / n), size[0] / n);
                    let shown = format!("{name} (part {} of {n}, as {target})", k + 1);
                    match variables.get(target) {
                        None => problems.push(format!(
                            "  unexpected: {shown} {:?} (the model has no such variable)",
                            piece.size()
                        )),
                        Some(_) if !filled.insert(target.clone()) => problems.push(format!(
                            "  duplicate: {shown} (another tensor of the file fills it too)"
                        )),
                        Some(v) if v.size() == piece.size() => pairs.push((v, piece)),
                        Some(v) => problems.push(format!(
                            "  wrong shape: {shown}: the file has {:?}, the model {:?}",
                            piece.size(),
                            v.size()
                        )),
                    }
                }
                continue;
            }
            Mapped::Part { to, index, of } => {
                let shown = format!("{name} (as part {} of {of} of {to})", index + 1);
                match variables.get(&to) {
                    None => problems.push(format!(
                        "  unexpected: {shown} {:?} (the model has no such variable)",
                        t.size()
                    )),
                    Some(v) => {
                        let mut want = v.size();
                        let fits = of > 0 && index < of && want[0] % of as i64 == 0;
                        want[0] /= of.max(1) as i64;
                        if !fits || t.size() != want {
                            problems.push(format!(
                                    "  wrong shape: {shown}: the file has {:?}, a part of the model's {:?} is {want:?}",
                                    t.size(),
                                    v.size()
                                ));
                        } else if parts
                            .entry(to.clone())
                            .or_default()
                            .insert(index, (of, t.shallow_clone()))
                            .is_some()
                        {
                            problems.push(format!(
                                "  duplicate: {shown} (another tensor of the file fills it too)"
                            ));
                        }
                    }
                }
                continue;
            }
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
    let mut pieces = Vec::new();
    for (to, got) in &parts {
        let of = got.values().next().map_or(0, |(of, _)| *of);
        let missing: Vec<String> =
            (0..of).filter(|i| !got.contains_key(i)).map(|i| (i + 1).to_string()).collect();
        if !missing.is_empty() {
            problems.push(format!(
                "  missing: part {} of {of} of {to} (not in the file)",
                missing.join(", ")
            ));
        } else if !filled.insert(to.clone()) {
            problems.push(format!("  duplicate: {to} (the file has it whole and in parts)"));
        } else {
            let v = &variables[to];
            let n = v.size()[0] / of as i64;
            for (i, (_, t)) in got {
                pieces.push((v.shallow_clone(), *i as i64 * n, n, t.shallow_clone()));
            }
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
        for (v, start, n, t) in &pieces {
            let mut v = v.narrow(0, *start, *n);
            v.copy_(&t.to_kind(v.kind()).to_device(v.device()));
        }
    });
    Ok(LoadReport { loaded: pairs.len() + parts.len(), skipped, kept })
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

/// The metadata key under which mm records the digest of a safetensors file's tensors.
pub const DIGEST_KEY: &str = "mm.sha256";

/// A tensor's bytes, as the `safetensors` crate writes them.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// The safetensors dtype of a libtorch kind, and back.
const KINDS: [(Kind, Dtype); 10] = [
    (Kind::Bool, Dtype::BOOL),
    (Kind::Uint8, Dtype::U8),
    (Kind::Int8, Dtype::I8),
    (Kind::Int16, Dtype::I16),
    (Kind::Int, Dtype::I32),
    (Kind::Int64, Dtype::I64),
    (Kind::Half, Dtype::F16),
    (Kind::BFloat16, Dtype::BF16),
    (Kind::Float, Dtype::F32),
    (Kind::Double, Dtype::F64),
];

/// The format's own name of a dtype (its header's spelling), fixed here so that the digest does
/// not depend on how a version of the crate prints it.
fn dtype_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::BOOL => "BOOL",
        Dtype::U8 => "U8",
        Dtype::I8 => "I8",
        Dtype::I16 => "I16",
        Dtype::U16 => "U16",
        Dtype::F16 => "F16",
        Dtype::BF16 => "BF16",
        Dtype::I32 => "I32",
        Dtype::U32 => "U32",
        Dtype::F32 => "F32",
        Dtype::F64 => "F64",
        Dtype::I64 => "I64",
        Dtype::U64 => "U64",
        _ => "OTHER",
    }
}

/// The digest of named tensors (`sha256:HEX`): of each tensor in name order, its name, dtype,
/// shape and bytes, so that a flipped bit anywhere in the data, a changed shape or a renamed
/// tensor all change it.
fn digest<'a>(tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for (name, dtype, shape, data) in tensors {
        hash.update((name.len() as u64).to_le_bytes());
        hash.update(name.as_bytes());
        hash.update(dtype_name(dtype).as_bytes());
        hash.update((shape.len() as u64).to_le_bytes());
        for d in shape {
            hash.update((*d as u64).to_le_bytes());
        }
        hash.update((data.len() as u64).to_le_bytes());
        hash.update(data);
    }
    format!("sha256:{}", hash.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Writes named tensors (moved to the CPU) to a safetensors file atomically: a temporary file
/// beside it, flushed to disk, renamed over `path`, the folder synced. The file's metadata
/// records the digest of its tensors under [`DIGEST_KEY`], which [`read_named`] (and so every
/// load) verifies.
pub fn save_named(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<()> {
    save_named_with(path, tensors, std::collections::BTreeMap::new())
}

/// [`save_named`] with more metadata entries (text under a key; the digest and `format` keys
/// are the writer's own).
pub fn save_named_with(
    path: &Path,
    tensors: Vec<(String, Tensor)>,
    extra: std::collections::BTreeMap<String, String>,
) -> Result<()> {
    let mut named: Vec<(String, Raw)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.detach().to_device(tch::Device::Cpu).contiguous();
        let kind = t.kind();
        let Some(&(_, dtype)) = KINDS.iter().find(|(k, _)| *k == kind) else {
            return Err(Error::Io {
                path: path.to_path_buf(),
                message: format!("tensor {name}: {kind:?} has no safetensors dtype here"),
            });
        };
        let shape: Vec<usize> = t.size().iter().map(|d| *d as usize).collect();
        let numel = t.numel();
        let mut data = vec![0u8; numel * kind.elt_size_in_bytes()];
        t.f_copy_data_u8(&mut data, numel)?;
        named.push((name, Raw { dtype, shape, data }));
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    // The safetensors crate panics on two tensors of one name: refuse them here.
    if let Some(w) = named.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Error::Io {
            path: path.to_path_buf(),
            message: format!("two tensors are named {}: nothing written", w[0].0),
        });
    }
    let stamp = digest(
        named.iter().map(|(n, r)| (n.as_str(), r.dtype, r.shape.as_slice(), r.data.as_slice())),
    );
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let io = |e: String| Error::Io { path: path.to_path_buf(), message: e };
    // `format = pt` as PyTorch's own safetensors files say it: transformers refuses a file
    // whose metadata lacks it.
    let mut metadata: std::collections::HashMap<String, String> = extra.into_iter().collect();
    metadata.insert(DIGEST_KEY.to_string(), stamp);
    metadata.insert("format".to_string(), "pt".to_string());
    let written = safetensors::serialize_to_file(
        named.iter().map(|(n, r)| (n.as_str(), r)),
        Some(metadata),
        &tmp,
    );
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(match e {
            safetensors::SafeTensorError::IoError(e) => e.to_string(),
            e => e.to_string(),
        }));
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

/// Reads a model's `config.json` as `T` (`what` names the model in the error: "a CLIP"); the
/// error names the file and what is wrong.
pub(crate) fn read_model_config<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
) -> Result<T> {
    let text =
        mm_data::fs::read_text_capped(path, mm_data::fs::FileKind::Text).map_err(unreadable)?;
    serde_json::from_str(&text).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        message: format!("not {what} config.json: {e}"),
    })
}

/// mm-data's refusal to read a file as this crate's [`Error::Io`], its path said once.
pub(crate) fn unreadable(e: mm_data::Error) -> Error {
    match e {
        mm_data::Error::Io { path, source } => {
            let message = if source.kind() == std::io::ErrorKind::NotFound {
                "no such file".to_string()
            } else {
                source.to_string()
            };
            Error::Io { path, message }
        }
        mm_data::Error::Decode { path, message } => Error::Io { path, message },
        e => Error::Io { path: Default::default(), message: mm_data::error::report(&e) },
    }
}

/// Reads every tensor of a safetensors file (on the CPU, in name order). The file must be a
/// regular file within the weights size limit ([`mm_data::fs::FileKind::Weights`]) whose
/// structure the `safetensors` crate accepts; a file that records a digest (every file mm
/// writes does) must match it, or it is refused as damaged ([`Error::Integrity`]): a flipped
/// bit never reaches a model.
pub fn read_named(path: &Path) -> Result<Vec<(String, Tensor)>> {
    read_named_with_metadata(path).map(|(tensors, _)| tensors)
}

/// A safetensors file's text metadata (key to value).
pub type Metadata = std::collections::HashMap<String, String>;

/// [`read_named`], with the file's metadata entries.
pub fn read_named_with_metadata(path: &Path) -> Result<(Vec<(String, Tensor)>, Metadata)> {
    let bytes =
        mm_data::fs::read_capped(path, mm_data::fs::FileKind::Weights).map_err(unreadable)?;
    let damaged = |message: String| Error::Integrity { path: path.to_path_buf(), message };
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| damaged(format!("not a whole safetensors file: {e}")))?;
    let mut views = file.tensors();
    views.sort_by(|a, b| a.0.cmp(&b.0));
    let (_, metadata) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| damaged(format!("not a whole safetensors file: {e}")))?;
    if let Some(recorded) = metadata.metadata().as_ref().and_then(|m| m.get(DIGEST_KEY)) {
        let found = digest(views.iter().map(|(n, v)| (n.as_str(), v.dtype(), v.shape(), v.data())));
        if &found != recorded {
            return Err(damaged(format!(
                "its tensors do not match the digest it was written with ({recorded}, found {found}): the file is damaged; restore it from a copy or use another checkpoint"
            )));
        }
    }
    let mut out = Vec::with_capacity(views.len());
    for (name, view) in views {
        let Some(&(kind, _)) = KINDS.iter().find(|(_, d)| *d == view.dtype()) else {
            return Err(damaged(format!(
                "tensor {name}: dtype {:?} is not supported",
                view.dtype()
            )));
        };
        let shape: Vec<i64> = view.shape().iter().map(|d| *d as i64).collect();
        out.push((name, Tensor::f_from_data_size(view.data(), &shape, kind)?));
    }
    Ok((out, metadata.metadata().clone().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("mm-weights-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir.join("w.safetensors")
    }

    #[test]
    fn written_tensors_read_back_exactly_with_their_digest() {
        let path = temp("roundtrip");
        let tensors = vec![
            ("b".to_string(), Tensor::from_slice(&[1.5f32, -2.0, f32::MIN_POSITIVE]).view([3, 1])),
            ("a".to_string(), Tensor::from_slice(&[7i64, -9])),
            ("c".to_string(), Tensor::from_slice(&[0.25f64]).to_kind(Kind::BFloat16)),
        ];
        save_named(&path, tensors.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect())
            .expect("save");
        let back = read_named(&path).expect("read");
        let names: Vec<&str> = back.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        for (name, t) in &tensors {
            let (_, r) = back.iter().find(|(n, _)| n == name).expect("present");
            assert_eq!((r.kind(), r.size()), (t.kind(), t.size()), "{name}");
            assert!(r.to_kind(Kind::Double).equal(&t.to_kind(Kind::Double)), "{name}");
        }
        // libtorch's own reader reads the file too: it is a plain safetensors file.
        assert_eq!(Tensor::read_safetensors(&path).expect("tch reads it").len(), 3);
        let bytes = std::fs::read(&path).expect("read");
        let (_, meta) = SafeTensors::read_metadata(&bytes).expect("header");
        let meta = meta.metadata().as_ref().expect("metadata");
        assert!(meta[DIGEST_KEY].starts_with("sha256:"));
        assert_eq!(meta["format"], "pt", "as transformers requires");
    }

    #[test]
    fn two_tensors_of_one_name_are_refused_not_a_panic() {
        let path = temp("twice");
        let t = || Tensor::zeros([2], (Kind::Float, tch::Device::Cpu));
        let err = save_named(&path, vec![("w".into(), t()), ("w".into(), t())])
            .expect_err("a duplicate")
            .to_string();
        assert!(err.contains("two tensors are named w"), "{err}");
        assert!(!path.exists(), "nothing written");
    }

    #[test]
    fn one_flipped_bit_in_the_data_is_refused_naming_the_file() {
        let path = temp("flip");
        let w = Tensor::arange(64, (Kind::Float, tch::Device::Cpu));
        save_named(&path, vec![("w".to_string(), w)]).expect("save");
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 7;
        bytes[last] ^= 0x10;
        std::fs::write(&path, &bytes).expect("write");
        let err = read_named(&path).expect_err("damaged").to_string();
        assert!(err.contains("w.safetensors") && err.contains("do not match the digest"), "{err}");
        // A file cut short is refused too (its structure no longer adds up).
        std::fs::write(&path, &bytes[..bytes.len() - 4]).expect("write");
        let err = read_named(&path).expect_err("cut").to_string();
        assert!(err.contains("not a whole safetensors file"), "{err}");
    }

    #[test]
    fn a_weights_path_that_is_not_a_regular_file_is_refused_by_name() {
        let err = read_named(Path::new("/dev/zero")).expect_err("device").to_string();
        assert!(err.contains("a character device"), "{err}");
    }
}
