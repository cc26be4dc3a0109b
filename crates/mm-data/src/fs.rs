//! File-system helpers shared by the layers above: atomic writes of files and of whole folders.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` so that a reader (or a crash) only ever sees the old file or the
/// whole new one: the bytes go to a temporary file beside it, which is flushed to disk and then
/// renamed over `path`; the folder is synced so that the rename itself survives a power cut.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("mm-doc-atomic-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// mm_data::fs::write_atomic(&dir.join("out.txt"), b"done\n")?;
/// assert_eq!(std::fs::read(dir.join("out.txt"))?, b"done\n");
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::io(path, std::io::Error::other("not a file path")))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // Make the rename durable; not every file system lets a folder be opened and synced.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e: std::io::Error| {
        let _ = fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Writes a whole folder atomically: `write` fills a staging folder beside `out`, which is then
/// renamed into place, so an interrupted run never leaves a folder that looks finished. An
/// existing `out` is refused unless it is empty, or `force` is set and it holds `marker` (the
/// summary file of an earlier run of the same writer): `force` never deletes anything else.
pub fn write_dir_atomic<T>(
    out: &Path,
    marker: &str,
    force: bool,
    write: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    if out.exists() {
        let empty = fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_none();
        let replaceable = force && out.join(marker).is_file();
        if !(empty || replaceable) {
            let why = if force {
                format!("it has no {marker}, so it is not replaced")
            } else {
                "pass force (--force) to replace it".to_string()
            };
            return Err(Error::Config(format!(
                "{} already exists and is not empty: {why}",
                out.display()
            )));
        }
    }
    let name = out
        .file_name()
        .ok_or_else(|| Error::Config(format!("{}: not a folder name", out.display())))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let staging = parent.join(format!("{}.partial-{}", name.to_string_lossy(), std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    }
    fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    let result = write(&staging).and_then(|value| {
        replace_dir(&staging, out)?;
        Ok(value)
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

/// Moves `staging` to `out`, replacing what is there.
fn replace_dir(staging: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        let old = out.with_file_name(format!(
            "{}.old-{}",
            out.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
        fs::rename(staging, out).map_err(|e| Error::io(out, e))?;
        fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    } else {
        fs::rename(staging, out).map_err(|e| Error::io(out, e))?;
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_cleans_up_on_failure() {
        let dir = std::env::temp_dir().join(format!("mm-data-fs-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("a.txt");
        write_atomic(&file, b"one").expect("write");
        write_atomic(&file, b"two, longer").expect("overwrite");
        assert_eq!(fs::read(&file).expect("read"), b"two, longer");
        // A folder in the way: the error names the path and no temporary file is left behind.
        let blocked = dir.join("sub");
        fs::create_dir_all(blocked.join("x")).expect("mkdir");
        let err = write_atomic(&blocked, b"x").expect_err("cannot replace a non-empty folder");
        assert!(err.to_string().contains("sub"), "{err}");
        let left: Vec<_> =
            fs::read_dir(&dir).expect("ls").flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        fs::remove_dir_all(dir).ok();
    }
}
