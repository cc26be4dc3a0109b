//! Verification and safe unpacking of downloads: `.gz`, `.tar.gz` and `.zip`, and files kept as
//! they are (pretrained weights, checked for structure when they are safetensors).
//!
//! Every member name is checked before anything is written: an absolute path or a `..`
//! component refuses the whole archive, and so does a link or device among the members that
//! would be kept. Members are written only under the target folder, through paths made of plain
//! components.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use md5::Md5;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::registry::{Artifact, Check, Unpack};

/// Hex digest of what `reader` yields.
fn hex_digest<D: Digest>(mut reader: impl Read, path: &Path) -> Result<String> {
    let mut hasher = D::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(|e| Error::format(path, format!("reading: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    hex_digest::<Sha256>(BufReader::new(File::open(path).map_err(|e| Error::io(path, e))?), path)
}

/// Checks `path` (a download of `artifact`) against the artifact's [`Check`]. `Ok(false)` for an
/// unverified artifact; a mismatch is [`Error::Checksum`].
pub fn verify(path: &Path, artifact: &Artifact) -> Result<bool> {
    if artifact.file.ends_with(".safetensors") {
        check_safetensors(path)?;
    }
    let open = || File::open(path).map(BufReader::new).map_err(|e| Error::io(path, e));
    let (expected, actual) = match &artifact.check {
        Check::Unverified => {
            // Still walk an archive's names, so that an unsafe one is refused before unpacking.
            if let Unpack::Archive { strip, keep, .. } = &artifact.unpack {
                for_each_member(path, *strip, keep, &mut |_, _| Ok(()))?;
            }
            return Ok(false);
        }
        Check::Sha256(h) => (h, hex_digest::<Sha256>(open()?, path)?),
        Check::Md5(h) => (h, hex_digest::<Md5>(open()?, path)?),
        Check::Gunzip(h) => {
            (h, hex_digest::<Sha256>(flate2::read::MultiGzDecoder::new(open()?), path)?)
        }
        Check::Members(h) => {
            let Unpack::Archive { strip, keep, .. } = &artifact.unpack else {
                return Err(Error::Config(format!(
                    "{}: a members check needs an archive",
                    artifact.file
                )));
            };
            (h, members_digest(path, *strip, keep)?)
        }
    };
    if !expected.eq_ignore_ascii_case(&actual) {
        return Err(Error::Checksum {
            file: path.to_path_buf(),
            what: artifact.check.describe().into(),
            expected: expected.clone(),
            actual,
        });
    }
    Ok(true)
}

/// Largest safetensors header read (the format's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// Checks that `path` is a whole safetensors file: an 8-byte little-endian header length, a
/// JSON header that the `safetensors` crate accepts (known dtypes, shapes and byte offsets
/// that fit them, tensors laid end to end), and data that ends exactly where the header says.
/// Returns the number of tensors. A truncated download, an HTML error page or a file padded
/// with junk fail, naming the file. Only the header is read, however large the file.
pub fn check_safetensors(path: &Path) -> Result<usize> {
    let bad = |m: String| Error::format(path, format!("not a whole safetensors file: {m}"));
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let total = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| bad(format!("{total} bytes, too short for a header")))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || 8 + n > total {
        return Err(bad(format!("a header of {n} bytes in a file of {total}")));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(|e| bad(format!("reading the header: {e}")))?;
    let metadata: safetensors::tensor::Metadata =
        serde_json::from_slice(&header).map_err(|e| bad(format!("its header: {e}")))?;
    let described = 8 + n + metadata.data_len() as u64;
    if described != total {
        return Err(bad(format!("the header describes {described} bytes, the file has {total} (cut short, or something appended)")));
    }
    Ok(metadata.tensors().len())
}

/// The [`Check::Members`] digest of an archive.
pub fn members_digest(path: &Path, strip: usize, keep: &[String]) -> Result<String> {
    let mut lines: Vec<(String, String)> = Vec::new();
    for_each_member(path, strip, keep, &mut |name, reader| {
        lines.push((name.to_string(), hex_digest::<Sha256>(reader, path)?));
        Ok(())
    })?;
    if lines.is_empty() {
        return Err(Error::format(path, format!("no member matches {keep:?}")));
    }
    lines.sort();
    let mut hasher = Sha256::new();
    for (name, digest) in &lines {
        hasher.update(format!("{digest}  {name}\n").as_bytes());
    }
    Ok(hex(&hasher.finalize()))
}

/// Unpacks a verified download into `root` as its artifact says; returns the files written,
/// relative to `root`.
pub fn unpack(path: &Path, artifact: &Artifact, root: &Path) -> Result<Vec<PathBuf>> {
    match &artifact.unpack {
        Unpack::Copy { to } => {
            let rel = safe_relative(to).ok_or_else(|| {
                Error::Config(format!("{}: unsafe destination {to:?}", artifact.file))
            })?;
            let out = root.join(&rel);
            if let Some(parent) = out.parent() {
                fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            // A hard link costs nothing for a file of hundreds of megabytes; a copy where the
            // download folder is on another file system.
            if fs::hard_link(path, &out).is_err() {
                fs::copy(path, &out).map_err(|e| Error::io(&out, e))?;
            }
            Ok(vec![rel])
        }
        Unpack::Gunzip { to } => {
            let rel = safe_relative(to).ok_or_else(|| {
                Error::Config(format!("{}: unsafe destination {to:?}", artifact.file))
            })?;
            let out = root.join(&rel);
            let input = File::open(path).map_err(|e| Error::io(path, e))?;
            write_file(&out, &mut flate2::read::MultiGzDecoder::new(BufReader::new(input)), path)?;
            Ok(vec![rel])
        }
        Unpack::Archive { strip, keep, into } => {
            let into = if into.is_empty() {
                PathBuf::new()
            } else {
                safe_relative(into).ok_or_else(|| {
                    Error::Config(format!("{}: unsafe folder {into:?}", artifact.file))
                })?
            };
            let mut written = Vec::new();
            for_each_member(path, *strip, keep, &mut |name, reader| {
                let rel = into.join(name);
                write_file(&root.join(&rel), reader, path)?;
                written.push(rel);
                Ok(())
            })?;
            if written.is_empty() {
                return Err(Error::format(path, format!("no member matches {keep:?}")));
            }
            Ok(written)
        }
    }
}

fn write_file(out: &Path, reader: &mut dyn Read, source: &Path) -> Result<()> {
    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let mut file = File::create(out).map_err(|e| Error::io(out, e))?;
    io::copy(reader, &mut file)
        .map_err(|e| Error::format(source, format!("unpacking {}: {e}", out.display())))?;
    file.flush().map_err(|e| Error::io(out, e))
}

/// `name` as a relative path of plain components, or `None` (absolute, `..`, empty).
fn safe_relative(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Whether `path` (`/`-separated, after stripping) matches one of the patterns.
fn kept(path: &str, keep: &[String]) -> bool {
    let segments: Vec<&str> = path.split('/').collect();
    keep.iter().any(|pattern| {
        let parts: Vec<&str> = pattern.split('/').collect();
        parts.len() == segments.len() && parts.iter().zip(&segments).all(|(p, s)| glob(p, s))
    })
}

fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((pre, post)) => {
            text.len() >= pre.len() + post.len() && text.starts_with(pre) && text.ends_with(post)
        }
    }
}

/// What kind of member an archive entry is.
enum Kind {
    File,
    Dir,
    /// Tar metadata (pax headers and the like), not a member.
    Meta,
    /// A link or device: never unpacked.
    Special(&'static str),
}

/// Checks a member's name and kind; `Some(path after strip)` for a kept file, `None` to skip.
fn admit(
    archive: &Path,
    raw: &str,
    kind: Kind,
    strip: usize,
    keep: &[String],
) -> Result<Option<String>> {
    let unsafe_entry = |why: &str| Error::Unsafe {
        archive: archive.to_path_buf(),
        entry: raw.to_string(),
        why: why.into(),
    };
    if matches!(kind, Kind::Meta) {
        return Ok(None);
    }
    if raw.starts_with('/') || raw.starts_with('\\') || raw.contains('\0') {
        return Err(unsafe_entry("an absolute path"));
    }
    let parts: Vec<&str> = raw.split(['/', '\\']).filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.contains(&"..") {
        return Err(unsafe_entry("a `..` component would leave the target folder"));
    }
    if parts.first().is_some_and(|p| p.len() == 2 && p.ends_with(':')) {
        return Err(unsafe_entry("a drive prefix"));
    }
    if parts.len() <= strip {
        return Ok(None);
    }
    let name = parts[strip..].join("/");
    if !kept(&name, keep) {
        return Ok(None);
    }
    match kind {
        Kind::File => Ok(Some(name)),
        Kind::Dir | Kind::Meta => Ok(None),
        Kind::Special(what) => Err(unsafe_entry(what)),
    }
}

/// Calls `f(path after strip, contents)` for every kept file member of a `.tar.gz`/`.tgz`
/// (or `.tar`) or `.zip` archive, in archive order, after checking every member's name.
pub fn for_each_member(
    path: &Path,
    strip: usize,
    keep: &[String],
    f: &mut dyn FnMut(&str, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy().to_ascii_lowercase();
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    if name.ends_with(".zip") {
        let bad = |e: zip::result::ZipError| {
            Error::format(path, format!("not a readable zip archive: {e}"))
        };
        let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(bad)?;
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).map_err(bad)?;
            let raw = entry.name().map_err(bad)?.to_string();
            let is_link = entry.unix_mode().is_some_and(|m| m & 0o170000 == 0o120000);
            let kind = if is_link {
                Kind::Special("a symbolic link")
            } else if entry.is_dir() {
                Kind::Dir
            } else {
                Kind::File
            };
            if entry.enclosed_name().is_none() && !matches!(kind, Kind::Dir) {
                // The zip crate's own test; ours below says why.
                admit(path, &raw, Kind::File, 0, &[])?;
            }
            if let Some(member) = admit(path, &raw, kind, strip, keep)? {
                f(&member, &mut entry)?;
            }
        }
        return Ok(());
    }
    let reader: Box<dyn Read> = if name.ends_with(".tar") {
        Box::new(BufReader::new(file))
    } else {
        Box::new(flate2::read::GzDecoder::new(BufReader::new(file)))
    };
    let bad = |e: io::Error| Error::format(path, format!("not a readable tar archive: {e}"));
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        use tar::EntryType as T;
        let kind = match entry.header().entry_type() {
            T::Regular | T::Continuous => Kind::File,
            T::Directory => Kind::Dir,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => Kind::Meta,
            T::Symlink => Kind::Special("a symbolic link"),
            T::Link => Kind::Special("a hard link"),
            _ => Kind::Special("a device or other special file"),
        };
        if let Some(member) = admit(path, &raw, kind, strip, keep)? {
            f(&member, &mut entry)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_segments() {
        let keep = vec!["recordings/*.wav".to_string(), "meta/esc50.csv".to_string()];
        assert!(kept("recordings/0_george_0.wav", &keep));
        assert!(!kept("recordings/sub/0.wav", &keep));
        assert!(!kept("recordings/readme.txt", &keep));
        assert!(kept("meta/esc50.csv", &keep));
        assert!(!kept("esc50.csv", &keep));
        assert!(glob("glove.6B.*d.txt", "glove.6B.50d.txt"));
        assert!(!glob("a*a", "a"));
    }

    #[test]
    fn names_that_leave_the_folder_are_refused() {
        let p = Path::new("x.tar.gz");
        let keep = vec!["*".to_string(), "*/*".to_string()];
        for bad in ["/etc/passwd", "../x", "a/../../x", "C:/x", "a\\..\\x"] {
            assert!(
                matches!(admit(p, bad, Kind::File, 0, &keep), Err(Error::Unsafe { .. })),
                "{bad}"
            );
        }
        assert_eq!(admit(p, "./a/b", Kind::File, 1, &keep).ok().flatten().as_deref(), Some("b"));
        assert!(matches!(
            admit(p, "a/link", Kind::Special("a symbolic link"), 0, &keep),
            Err(Error::Unsafe { .. })
        ));
        assert!(
            admit(p, "a/b/link", Kind::Special("a symbolic link"), 0, &keep)
                .ok()
                .flatten()
                .is_none(),
            "links that are not kept are skipped"
        );
        assert_eq!(safe_relative("raw/x"), Some(PathBuf::from("raw/x")));
        assert_eq!(safe_relative("../x"), None);
    }
}
