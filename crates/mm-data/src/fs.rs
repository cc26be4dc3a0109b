//! File-system helpers shared by the layers above: atomic writes of files and of whole
//! folders, bounded reads of files named by user input ([`read_capped`]: regular files only,
//! under a size limit per [`FileKind`]), a lock that keeps a second writer out of a folder
//! ([`DirLock`]), and the removal of temporary files that a killed process left behind
//! ([`remove_stale`]).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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
    // Staging folders of this output that a killed writer left behind: only ones that carry
    // the staging mark (a user's own `NAME.partial-2023` is not ours). A `NAME.old-PID` left
    // by a writer killed between its two renames may be the only copy of the earlier output:
    // it stays.
    let name_str = name.to_string_lossy();
    remove_dead(&parent, |entry| {
        owner(entry, &name_str, ".partial-", false)
            .filter(|_| parent.join(entry).join(STAGING_MARK).is_file())
    });
    let staging = parent.join(format!("{}.partial-{}", name.to_string_lossy(), std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    }
    fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    fs::write(staging.join(STAGING_MARK), b"").map_err(|e| Error::io(&staging, e))?;
    let result = write(&staging).and_then(|value| {
        let mark = staging.join(STAGING_MARK);
        fs::remove_file(&mark).map_err(|e| Error::io(&mark, e))?;
        replace_dir(&staging, out)?;
        Ok(value)
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

/// What a file named by user input is read as: each kind has its own size limit
/// ([`limit`], [`set_limit`]), checked before a byte is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FileKind {
    /// An image (or a video frame): 256 MiB by default.
    Image,
    /// A sound file: 2 GiB by default (a long recording as 16-bit PCM).
    Audio,
    /// A text file: a manifest, a configuration, a word list, a tokenizer: 1 GiB by default.
    Text,
    /// A weights or checkpoint file: 64 GiB by default.
    Weights,
}

const MIB: u64 = 1 << 20;
const DEFAULTS: [u64; 4] = [256 * MIB, 2048 * MIB, 1024 * MIB, 65536 * MIB];
static LIMITS: [AtomicU64; 4] = [
    AtomicU64::new(DEFAULTS[0]),
    AtomicU64::new(DEFAULTS[1]),
    AtomicU64::new(DEFAULTS[2]),
    AtomicU64::new(DEFAULTS[3]),
];

impl FileKind {
    /// The kind's name, as `data.max_file_mb` writes it.
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Image => "image",
            FileKind::Audio => "audio",
            FileKind::Text => "text",
            FileKind::Weights => "weights",
        }
    }

    /// The limit of this kind unless set otherwise, in bytes.
    pub fn default_limit(self) -> u64 {
        DEFAULTS[self as usize]
    }

    fn slot(self) -> &'static AtomicU64 {
        &LIMITS[self as usize]
    }
}

/// The largest file of `kind` this process reads, in bytes.
pub fn limit(kind: FileKind) -> u64 {
    kind.slot().load(Ordering::Relaxed)
}

/// Sets the largest file of `kind` this process reads (a run's `data.max_file_mb`).
pub fn set_limit(kind: FileKind, bytes: u64) {
    kind.slot().store(bytes, Ordering::Relaxed)
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= MIB => format!("{:.1} MiB", b as f64 / MIB as f64),
        b => format!("{b} bytes"),
    }
}

/// Refuses anything but a regular file, saying what it is instead.
fn regular(path: &Path, meta: &fs::Metadata) -> Result<()> {
    let t = meta.file_type();
    if t.is_file() {
        return Ok(());
    }
    let what = if t.is_dir() {
        "a folder"
    } else {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            if t.is_fifo() {
                "a FIFO (named pipe)"
            } else if t.is_char_device() {
                "a character device"
            } else if t.is_block_device() {
                "a block device"
            } else if t.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            }
        }
        #[cfg(not(unix))]
        {
            "not a regular file"
        }
    };
    Err(Error::decode(path, format!("{what}, not a regular file: mm reads only regular files")))
}

/// Opens `path` for reading if it is a regular file no larger than the limit of `kind`;
/// returns the file and its length. A folder, a FIFO, a device or a socket is refused by name
/// without waiting on it, and an oversized file without reading it.
pub fn open_capped(path: &Path, kind: FileKind) -> Result<(File, u64)> {
    open_within(path, kind, limit(kind))
}

/// [`open_capped`] with the limit `cap`.
fn open_within(path: &Path, kind: FileKind, cap: u64) -> Result<(File, u64)> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    regular(path, &meta)?;
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Never block in open(): the path could have become a FIFO since the check.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    regular(path, &meta)?;
    if meta.len() > cap {
        return Err(Error::decode(
            path,
            format!(
                "{}, over the {} limit for {} files (data.max_file_mb.{} raises it)",
                size(meta.len()),
                size(cap),
                kind.name(),
                kind.name()
            ),
        ));
    }
    Ok((file, meta.len()))
}

/// Reads the whole of `path` if it is a regular file within the limit of `kind` (see
/// [`open_capped`]); a file that grows past the limit while it is read is refused too.
///
/// ```
/// use mm_data::fs::{read_capped, FileKind};
/// let err = read_capped(std::path::Path::new("/"), FileKind::Image).unwrap_err();
/// assert!(err.to_string().contains("a folder, not a regular file"), "{err}");
/// ```
pub fn read_capped(path: &Path, kind: FileKind) -> Result<Vec<u8>> {
    read_within(path, kind, limit(kind))
}

/// [`read_capped`] with the limit `cap`.
fn read_within(path: &Path, kind: FileKind, cap: u64) -> Result<Vec<u8>> {
    let (file, len) = open_within(path, kind, cap)?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > cap {
        return Err(Error::decode(
            path,
            format!(
                "grew past the {} limit for {} files while it was read",
                size(cap),
                kind.name()
            ),
        ));
    }
    Ok(bytes)
}

/// [`read_capped`] as UTF-8 text.
pub fn read_text_capped(path: &Path, kind: FileKind) -> Result<String> {
    String::from_utf8(read_capped(path, kind)?)
        .map_err(|e| Error::decode(path, format!("not UTF-8 text: {e}")))
}

/// The name of the lock file [`DirLock`] keeps in a folder.
pub const LOCK_FILE: &str = ".mm-lock";

/// An advisory lock on a folder, held while a process writes it (a run folder): a second
/// writer is refused with the holder's process id. The lock is the operating system's
/// (`flock`), so it dies with its process, even one killed with SIGKILL; the lock file stays.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
    held: bool,
}

impl DirLock {
    /// Creates `dir` if needed and locks it for this process, recording the pid and `what`
    /// (a command line, say) for whoever is refused; a folder locked by another process is
    /// [`Error::Busy`] at once (no waiting). On a file system that has no `flock` (Lustre
    /// without `-o flock`, NFS without its lock daemon) the folder is taken unlocked and
    /// [`DirLock::held`] says so, for the caller to warn: refusing would stop all work there.
    pub fn acquire(dir: &Path, what: &str) -> Result<DirLock> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut held = cfg!(unix);
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let err = std::io::Error::last_os_error();
                let unsupported = [libc::ENOSYS, libc::ENOLCK, libc::EOPNOTSUPP, libc::EINVAL];
                match err.raw_os_error() {
                    Some(code) if unsupported.contains(&code) => held = false,
                    Some(code) if code == libc::EWOULDBLOCK => {
                        let mut holder = String::new();
                        let _ = file.read_to_string(&mut holder);
                        let holder = holder.trim();
                        return Err(Error::Busy {
                            path: dir.to_path_buf(),
                            holder: if holder.is_empty() {
                                "another process".into()
                            } else {
                                holder.to_string()
                            },
                        });
                    }
                    _ => return Err(Error::io(&path, err)),
                }
            }
        }
        let note = format!("process {} ({what})\n", std::process::id());
        file.set_len(0)
            .and_then(|_| std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)))
            .and_then(|_| file.write_all(note.as_bytes()))
            .map_err(|e| Error::io(&path, e))?;
        Ok(DirLock { _file: file, path: dir.to_path_buf(), held })
    }

    /// The locked folder.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// Whether the operating system holds the lock (false where the file system has no
    /// `flock`: the folder was taken without one).
    pub fn held(&self) -> bool {
        self.held
    }
}

/// Whether process `pid` exists (a process we may not signal exists too).
fn alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = i32::try_from(pid) else { return false };
        // SAFETY: signal 0 checks existence only; nothing is sent.
        if unsafe { libc::kill(pid, 0) } == 0 {
            return true;
        }
        std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// The process id ending `name`, if `name` is `PREFIX…MARKPID` (with something in place of
/// `…` when `named`).
fn owner(name: &str, prefix: &str, mark: &str, named: bool) -> Option<u32> {
    let (head, pid) = name.strip_prefix(prefix)?.rsplit_once(mark)?;
    if head.is_empty() == named || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Removes the entries of `dir` that `owned` gives a process id for, when that process is gone.
fn remove_dead(dir: &Path, owned: impl Fn(&str) -> Option<u32>) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return removed };
    for entry in entries.flatten() {
        let Some(pid) = owned(&entry.file_name().to_string_lossy()) else { continue };
        if pid == std::process::id() || alive(pid) {
            continue;
        }
        let path = entry.path();
        let gone = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        if gone.is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// Removes from `dir` the temporary files of mm's atomic writes (`.NAME.tmp-PID`, from
/// [`write_atomic`] and checkpoint saves) whose process is gone: what a killed run left
/// behind. A live process's temporaries are left alone. Returns what was removed.
pub fn remove_stale(dir: &Path) -> Vec<PathBuf> {
    remove_dead(dir, |name| owner(name, ".", ".tmp-", true))
}

/// The file that marks a folder as [`write_dir_atomic`]'s staging folder (removed before the
/// folder takes its place).
const STAGING_MARK: &str = ".mm-staging";

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

    /// The pid of a process that has exited.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        child.wait().expect("wait");
        pid
    }

    #[test]
    fn bounded_reads_refuse_what_is_not_a_regular_file_within_its_limit() {
        let dir = std::env::temp_dir().join(format!("mm-data-capped-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        let said = |p: &Path, kind| read_capped(p, kind).expect_err("refused").to_string();
        assert!(said(&dir, FileKind::Image).contains("a folder, not a regular file"));
        assert!(said(Path::new("/dev/zero"), FileKind::Audio).contains("a character device"));
        let fifo = dir.join("pipe");
        let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).expect("path");
        // SAFETY: a plain mkfifo on a path this test owns.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Refused at once, not after waiting for a writer.
        let started = std::time::Instant::now();
        assert!(said(&fifo, FileKind::Text).contains("a FIFO"));
        assert!(started.elapsed().as_secs() < 5);
        // Over the limit: refused before reading (the kind's name says which setting).
        let big = dir.join("big.bin");
        fs::write(&big, vec![7u8; 4096]).expect("write");
        let err = read_within(&big, FileKind::Weights, 1000).expect_err("over").to_string();
        assert!(err.contains("4096 bytes, over the 1000 bytes limit for weights files"), "{err}");
        assert_eq!(read_within(&big, FileKind::Weights, 4096).expect("within").len(), 4096);
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_locked_folder_refuses_a_second_writer_with_the_holders_pid() {
        let dir = std::env::temp_dir().join(format!("mm-data-lock-{}", std::process::id()));
        let held = DirLock::acquire(&dir, "first writer").expect("lock");
        // flock locks belong to an open file: a second open is refused, even in this process.
        let err = DirLock::acquire(&dir, "second writer").expect_err("busy").to_string();
        let me = format!("process {} (first writer)", std::process::id());
        assert!(err.contains(&me) && err.contains("in use by"), "{err}");
        drop(held);
        DirLock::acquire(&dir, "third writer").expect("free again");
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed_and_live_ones_kept() {
        let dir = std::env::temp_dir().join(format!("mm-data-stale-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        let dead = dead_pid();
        let names = [
            format!(".last-000120.safetensors.tmp-{dead}"),
            format!(".run.toml.tmp-{}", std::process::id()),
            format!("notes.tmp-{dead}"),
            "report.txt".to_string(),
        ];
        for n in &names {
            fs::write(dir.join(n), b"x").expect("write");
        }
        let removed = remove_stale(&dir);
        assert_eq!(removed, vec![dir.join(&names[0])]);
        for n in &names[1..] {
            assert!(dir.join(n).exists(), "{n} kept");
        }
        // A staging folder of a killed folder writer goes when the same output is written again.
        let staging = dir.join(format!("synth.partial-{dead}"));
        let other = dir.join(format!("other.partial-{dead}"));
        // A user's folder named like ours, without the staging mark, and a replaced output
        // that may be the only copy left: both stay.
        let users = dir.join("synth.partial-2023");
        let old = dir.join(format!("synth.old-{dead}"));
        for d in [&staging, &other, &users, &old] {
            fs::create_dir_all(d).expect("mkdir");
        }
        for d in [&staging, &other] {
            fs::write(d.join(STAGING_MARK), b"").expect("mark");
        }
        write_dir_atomic(&dir.join("synth"), "summary.json", false, |d| {
            write_atomic(&d.join("summary.json"), b"{}")
        })
        .expect("write folder");
        assert!(!staging.exists() && other.exists() && users.exists() && old.exists());
        let written: Vec<_> =
            fs::read_dir(dir.join("synth")).expect("ls").flatten().map(|e| e.file_name()).collect();
        assert_eq!(written, ["summary.json"], "the mark does not stay in the output");
        fs::remove_dir_all(dir).ok();
    }
}
