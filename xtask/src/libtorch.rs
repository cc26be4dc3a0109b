//! Provisioning of libtorch 2.13.0 for the workspace (`cargo xtask setup`).
//!
//! Order of choice:
//! 1. `LIBTORCH` set by the user (not the value `.cargo/config.toml` gives it): used as it is,
//!    after a version check;
//! 2. `LIBTORCH_USE_PYTORCH`: the torch that python3 imports, after a version check;
//! 3. the per-user cache (`MM_CACHE_DIR`, else `$XDG_CACHE_HOME/mm`, else `~/.cache/mm`), filled
//!    on first use by `pip install --target` of PyPI's `torch==2.13.0` wheel, whose `torch/`
//!    folder is a complete libtorch (headers, `lib/`, and the NVIDIA runtime libraries beside it).
//!
//! The chosen folder becomes the target of the git-ignored link `<workspace>/.libtorch`, which
//! `.cargo/config.toml` names as `LIBTORCH`. Installation happens in a staging folder that is
//! renamed into place only once verified, under a lock, so that an interrupted or concurrent
//! set-up never leaves a half-installed libtorch that looks complete.

use std::collections::VecDeque;
use std::env;
use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::symlink;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The libtorch version tch 0.26 is built for.
pub const TORCH_VERSION: &str = "2.13.0";
/// Free space the first installation needs: about 4.7 GB installed plus pip's temporary files.
const NEEDED_FREE_BYTES: u64 = 9 << 30;
/// Name of the workspace link to the chosen libtorch.
pub const LINK_NAME: &str = ".libtorch";
/// File written into a cache entry once it is verified.
const COMPLETE_MARKER: &str = ".mm-complete";

/// Where the libtorch in use came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `LIBTORCH` from the user's environment.
    UserLibtorch,
    /// `LIBTORCH_USE_PYTORCH`: the torch of this Python interpreter.
    Python(String),
    /// The per-user cache; `installed` tells whether this run installed it.
    Cache { installed: bool },
}

/// What set-up found or did.
#[derive(Debug)]
pub struct Report {
    pub source: Source,
    pub libtorch: Libtorch,
    pub link: PathBuf,
    pub relinked: bool,
    pub elapsed: Duration,
}

impl Report {
    /// Whether anything changed on disk (installed or re-linked).
    pub fn changed(&self) -> bool {
        self.relinked || matches!(self.source, Source::Cache { installed: true })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let build = if self.libtorch.cuda { "CUDA build" } else { "CPU build" };
        writeln!(
            f,
            "libtorch {} ({build}) at {}",
            self.libtorch.version,
            self.libtorch.dir.display()
        )?;
        let source = match &self.source {
            Source::UserLibtorch => "LIBTORCH from your environment".to_string(),
            Source::Python(py) => format!("LIBTORCH_USE_PYTORCH: the torch that {py} imports"),
            Source::Cache { installed: true } => "per-user cache (installed now)".to_string(),
            Source::Cache { installed: false } => "per-user cache (reused)".to_string(),
        };
        writeln!(f, "  source: {source}")?;
        let state = if self.relinked { "updated" } else { "unchanged" };
        writeln!(
            f,
            "  workspace link {} -> {} ({state})",
            self.link.display(),
            self.libtorch.dir.display()
        )?;
        write!(f, "  set-up took {:.1} s", self.elapsed.as_secs_f64())
    }
}

/// A libtorch folder that passed the checks.
#[derive(Debug, Clone)]
pub struct Libtorch {
    pub dir: PathBuf,
    pub version: String,
    pub cuda: bool,
}

/// Runs set-up for the workspace at `root` (see the module docs). `force` reinstalls the cache.
pub fn setup(root: &Path, force: bool) -> Result<Report, String> {
    let start = Instant::now();
    let link = root.join(LINK_NAME);
    let (source, libtorch) = if let Some(dir) = user_libtorch(root) {
        let lt = check_libtorch(&dir).map_err(|e| format!("LIBTORCH={}: {e}", dir.display()))?;
        (Source::UserLibtorch, lt)
    } else if env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        let py = python();
        let dir = python_torch_dir(&py)?;
        let lt = check_libtorch(&dir).map_err(|e| {
            format!("LIBTORCH_USE_PYTORCH: the torch of {py} at {}: {e}", dir.display())
        })?;
        (Source::Python(py), lt)
    } else {
        let (lt, installed) = Cache::new()?.ensure(force)?;
        (Source::Cache { installed }, lt)
    };
    let previous = fs::read_link(&link).ok();
    let relinked = point_link(&link, &libtorch.dir)?;
    let reinstalled = force && matches!(source, Source::Cache { installed: true });
    if (relinked && previous.is_some()) || reinstalled {
        // torch-sys only watches the LIBTORCH variable, whose value (the link) did not change:
        // make it compile its C++ shim again against the new libtorch.
        println!("libtorch changed: cleaning torch-sys so that it builds against the new one");
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["clean", "--quiet", "--package", "torch-sys"])
            .current_dir(root)
            .status()
            .map_err(|e| format!("could not run `cargo clean -p torch-sys`: {e}"))?;
        if !status.success() {
            return Err(format!("`cargo clean -p torch-sys` failed ({status})"));
        }
    }
    Ok(Report { source, libtorch, link, relinked, elapsed: start.elapsed() })
}

/// `LIBTORCH` when the user set it; `None` when unset or when it is the value that
/// `.cargo/config.toml` gives (the workspace link itself).
pub fn user_libtorch(root: &Path) -> Option<PathBuf> {
    let value = PathBuf::from(env::var_os("LIBTORCH")?);
    if value.as_os_str().is_empty() {
        return None;
    }
    let is_our_link = value.file_name() == Some(LINK_NAME.as_ref())
        && value.parent().and_then(|p| p.canonicalize().ok()) == root.canonicalize().ok();
    (!is_our_link).then_some(value)
}

/// The Python interpreter to use: `PYTHON_SYS_EXECUTABLE` (as torch-sys reads it), else python3.
pub fn python() -> String {
    env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python3".to_string())
}

fn python_torch_dir(py: &str) -> Result<PathBuf, String> {
    let out = Command::new(py)
        .args(["-c", "import os, torch; print(os.path.dirname(torch.__file__))"])
        .output()
        .map_err(|e| format!("LIBTORCH_USE_PYTORCH is set but {py} could not be run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "LIBTORCH_USE_PYTORCH is set but `{py} -c 'import torch'` failed:\n{}\n\
             Install torch=={TORCH_VERSION} for that Python, or unset LIBTORCH_USE_PYTORCH to let \
             set-up install its own copy.",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Checks that `dir` is a libtorch of the right version: headers, libraries and a version file
/// (`build-version` in the official archives, `version.py` in the Python wheel).
pub fn check_libtorch(dir: &Path) -> Result<Libtorch, String> {
    if !dir.is_dir() {
        return Err("no such folder".to_string());
    }
    for needed in ["include/torch", "lib/libtorch_cpu.so", "lib/libc10.so"] {
        if !dir.join(needed).exists() {
            return Err(format!("not a libtorch folder: {needed} is missing"));
        }
    }
    let version = read_version(dir)?;
    let base = version.split('+').next().unwrap_or_default();
    if base != TORCH_VERSION {
        return Err(format!(
            "libtorch {version} found, but tch 0.26 needs {TORCH_VERSION}; point LIBTORCH at a \
             {TORCH_VERSION} install, or unset it to let set-up install one"
        ));
    }
    let dir = dir.canonicalize().map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?;
    let cuda = dir.join("lib/libtorch_cuda.so").exists();
    Ok(Libtorch { dir, version, cuda })
}

fn read_version(dir: &Path) -> Result<String, String> {
    if let Ok(text) = fs::read_to_string(dir.join("build-version")) {
        return Ok(text.trim().to_string());
    }
    if let Ok(text) = fs::read_to_string(dir.join("version.py")) {
        if let Some(v) = parse_version_py(&text) {
            return Ok(v);
        }
        return Err("version.py has no __version__ line".to_string());
    }
    Err("cannot tell its version (neither build-version nor version.py is there)".to_string())
}

/// Reads `__version__ = '2.13.0+cu130'` out of torch's `version.py`.
pub fn parse_version_py(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("__version__")?;
        let rest = rest.trim_start().strip_prefix('=')?.trim();
        let quote = rest.chars().next().filter(|c| *c == '\'' || *c == '"')?;
        let inner = &rest[1..];
        Some(inner[..inner.find(quote)?].to_string())
    })
}

/// Makes `link` a symbolic link to `target`, atomically. Returns whether it changed.
fn point_link(link: &Path, target: &Path) -> Result<bool, String> {
    match fs::symlink_metadata(link) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if fs::read_link(link).ok().as_deref() == Some(target) {
                return Ok(false);
            }
        }
        Ok(_) => {
            return Err(format!(
                "{} exists and is not a link; move it away so that set-up can make the link",
                link.display()
            ))
        }
        Err(_) => {}
    }
    let tmp = link.with_file_name(format!("{LINK_NAME}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    symlink(target, &tmp).map_err(|e| format!("cannot create link {}: {e}", tmp.display()))?;
    fs::rename(&tmp, link).map_err(|e| format!("cannot place link {}: {e}", link.display()))?;
    Ok(true)
}

/// The per-user cache folder (`MM_CACHE_DIR`, else `$XDG_CACHE_HOME/mm`, else `~/.cache/mm`).
pub fn cache_dir() -> Result<PathBuf, String> {
    Cache::new().map(|c| c.dir)
}

/// The per-user cache of libtorch installs.
struct Cache {
    dir: PathBuf,
}

impl Cache {
    fn new() -> Result<Self, String> {
        let dir = if let Some(d) = env::var_os("MM_CACHE_DIR").filter(|d| !d.is_empty()) {
            PathBuf::from(d)
        } else if let Some(d) = env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            PathBuf::from(d).join("mm")
        } else if let Some(home) =
            env::var_os("HOME").filter(|d| !d.is_empty()).map(PathBuf::from).or_else(passwd_home)
        {
            home.join(".cache").join("mm")
        } else {
            return Err("cannot find a cache folder: set MM_CACHE_DIR (or HOME)".to_string());
        };
        Ok(Cache { dir })
    }

    fn entry(&self) -> PathBuf {
        self.dir.join(format!("libtorch-{TORCH_VERSION}"))
    }

    fn torch_dir(entry: &Path) -> PathBuf {
        entry.join("site").join("torch")
    }

    /// A complete, verified entry, if there is one.
    fn complete(&self) -> Option<Libtorch> {
        let entry = self.entry();
        if !entry.join(COMPLETE_MARKER).is_file() {
            return None;
        }
        check_libtorch(&Self::torch_dir(&entry)).ok()
    }

    /// Returns the cached libtorch, installing it first when needed (or when `force`).
    fn ensure(&self, force: bool) -> Result<(Libtorch, bool), String> {
        if !force {
            if let Some(lt) = self.complete() {
                return Ok((lt, false));
            }
        }
        fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create the cache folder {}: {e}", self.dir.display()))?;
        let _lock =
            Lock::acquire(&self.dir.join(format!("libtorch-{TORCH_VERSION}.lock")), "libtorch")?;
        // Another set-up may have finished while we waited for the lock.
        if !force {
            if let Some(lt) = self.complete() {
                return Ok((lt, false));
            }
        }
        self.install().map(|lt| (lt, true))
    }

    fn install(&self) -> Result<Libtorch, String> {
        let py = python();
        check_pip(&py)?;
        check_free_space(&self.dir)?;
        self.remove_stale_staging();
        let staging =
            self.dir.join(format!("libtorch-{TORCH_VERSION}.partial-{}", std::process::id()));
        let site = staging.join("site");
        println!(
            "Installing libtorch {TORCH_VERSION} (PyPI's torch=={TORCH_VERSION} wheel and the NVIDIA \
             runtime libraries it needs, about 4.7 GB) into {}",
            self.dir.display()
        );
        let start = Instant::now();
        let mut pip = Command::new(&py);
        pip.args(["-m", "pip", "install", "--no-compile", "--disable-pip-version-check"])
            .args(["--no-warn-script-location", "--root-user-action=ignore", "--target"])
            .arg(&site)
            .arg(format!("torch=={TORCH_VERSION}"))
            .env("PYTHONNOUSERSITE", "1");
        if let Err(e) = run_showing_output(&mut pip) {
            let _ = fs::remove_dir_all(&staging);
            return Err(format!(
                "pip could not install torch=={TORCH_VERSION}: {e}\n\
                 What to do: check that PyPI is reachable (pip's proxy and index settings apply), \
                 that {} has room, then run `cargo xtask setup` again; or set LIBTORCH to an \
                 existing libtorch {TORCH_VERSION}.",
                self.dir.display()
            ));
        }
        println!("pip finished in {:.0} s; checking the install", start.elapsed().as_secs_f64());
        let verified =
            check_libtorch(&Self::torch_dir(&staging)).and_then(|_| check_loads(&py, &site));
        if let Err(e) = verified {
            let _ = fs::remove_dir_all(&staging);
            return Err(format!("the installed torch does not work: {e}"));
        }
        fs::write(staging.join(COMPLETE_MARKER), format!("{TORCH_VERSION}\n"))
            .map_err(|e| format!("cannot write to {}: {e}", staging.display()))?;
        let entry = self.entry();
        if entry.exists() {
            // `--force`, or an incomplete entry from an older layout: move it aside first.
            let old = self.dir.join(format!("libtorch-{TORCH_VERSION}.old-{}", std::process::id()));
            fs::rename(&entry, &old)
                .map_err(|e| format!("cannot move {} aside: {e}", entry.display()))?;
            let _ = fs::remove_dir_all(&old);
        }
        fs::rename(&staging, &entry)
            .map_err(|e| format!("cannot move {} into place: {e}", staging.display()))?;
        check_libtorch(&Self::torch_dir(&entry))
    }

    /// Staging folders of set-ups that died; safe to remove while we hold the lock.
    fn remove_stale_staging(&self) {
        let prefix = format!("libtorch-{TORCH_VERSION}.");
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix)
                    && (name.contains(".partial-") || name.contains(".old-"))
                {
                    println!(
                        "removing the leftovers of an interrupted set-up: {}",
                        e.path().display()
                    );
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// The current user's home folder from the password database, for environments without HOME.
fn passwd_home() -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: getpwuid returns a pointer to static storage or null; we copy the string out at
    // once and use no other passwd call meanwhile.
    unsafe {
        let pw = libc::getpwuid(libc::getuid());
        if pw.is_null() || (*pw).pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr((*pw).pw_dir);
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes()));
        (!path.as_os_str().is_empty()).then_some(path)
    }
}

pub(crate) fn check_pip(py: &str) -> Result<(), String> {
    let out = Command::new(py).args(["-m", "pip", "--version"]).output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "set-up installs libtorch with pip, but `{py} -m pip` does not work:\n{}\n\
             Install pip (Debian/Ubuntu: `apt-get install python3-pip`; elsewhere \
             `{py} -m ensurepip`), or set LIBTORCH to an existing libtorch {TORCH_VERSION}.",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!(
            "set-up installs libtorch with pip, but {py} could not be run ({e}). Install Python 3 \
             with pip (Debian/Ubuntu: `apt-get install python3 python3-pip`), or set \
             PYTHON_SYS_EXECUTABLE to a Python, or LIBTORCH to an existing libtorch {TORCH_VERSION}."
        )),
    }
}

fn check_free_space(dir: &Path) -> Result<(), String> {
    let free = free_bytes(dir)?;
    if free < NEEDED_FREE_BYTES {
        return Err(format!(
            "not enough disk space in {}: {:.1} GiB free, libtorch needs about {} GiB (4.7 GB \
             installed plus pip's temporary files). Free some space, or set MM_CACHE_DIR to a \
             folder on a disk with room.",
            dir.display(),
            free as f64 / (1u64 << 30) as f64,
            NEEDED_FREE_BYTES >> 30
        ));
    }
    Ok(())
}

fn free_bytes(dir: &Path) -> Result<u64, String> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", dir.display()))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c_path is a valid NUL-terminated string and stat points to writable memory of the
    // right type; statvfs only writes into it.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(format!(
            "cannot read the free space of {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between platforms (they are u64 here).
    #[allow(clippy::unnecessary_cast)]
    let free = stat.f_bavail as u64 * stat.f_frsize as u64;
    Ok(free)
}

/// Runs a command with its output shown as it comes; on failure, returns the last lines of its
/// error output (pip's own message) in the error.
pub(crate) fn run_showing_output(cmd: &mut Command) -> Result<(), String> {
    let mut child = cmd
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start pip: {e}"))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut tail: VecDeque<String> = VecDeque::new();
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        eprintln!("{line}");
        if tail.len() == 20 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child.wait().map_err(|e| format!("waiting for pip: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        let tail: Vec<_> = tail.into_iter().filter(|l| !l.trim().is_empty()).collect();
        Err(format!("pip exited with {status}; its last words:\n  {}", tail.join("\n  ")))
    }
}

/// Imports the freshly installed torch and runs one op: proves the libraries and the NVIDIA
/// runtime libraries beside them load on this machine.
fn check_loads(py: &str, site: &Path) -> Result<(), String> {
    let script = format!(
        "import sys; sys.path.insert(0, sys.argv[1]); import torch; \
         v = torch.__version__.split('+')[0]; \
         assert v == '{TORCH_VERSION}', 'version ' + torch.__version__; \
         print((torch.arange(4.0) * 2).sum().item())"
    );
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .arg(site)
        .env("PYTHONNOUSERSITE", "1")
        .output()
        .map_err(|e| format!("could not run {py}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.trim() == "12.0" {
        Ok(())
    } else {
        Err(format!(
            "importing it failed:\n{}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// An exclusive `flock` on a file, released on drop (and by the kernel if we die).
pub(crate) struct Lock {
    file: fs::File,
}

impl Lock {
    /// Takes the lock, waiting (and saying so) while another set-up installing `what` holds
    /// it.
    pub(crate) fn acquire(path: &Path, what: &str) -> Result<Self, String> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| format!("cannot open the lock {}: {e}", path.display()))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            println!("another set-up is installing {what}; waiting for it ({})", path.display());
            let _ = std::io::stdout().flush();
            // SAFETY: as above; blocking this time.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(format!(
                    "cannot lock {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                ));
            }
        }
        Ok(Lock { file })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: unlocking a descriptor we own.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = env::temp_dir().join(format!("xtask-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    fn fake_libtorch(dir: &Path, version_py: &str) {
        fs::create_dir_all(dir.join("include/torch")).expect("mkdir");
        fs::create_dir_all(dir.join("lib")).expect("mkdir");
        fs::write(dir.join("lib/libtorch_cpu.so"), b"").expect("write");
        fs::write(dir.join("lib/libc10.so"), b"").expect("write");
        fs::write(dir.join("version.py"), version_py).expect("write");
    }

    #[test]
    fn parses_wheel_version_file() {
        let text = "from typing import Optional\n__version__ = '2.13.0+cu130'\ndebug = False\n";
        assert_eq!(parse_version_py(text).as_deref(), Some("2.13.0+cu130"));
        assert_eq!(parse_version_py("__version__=\"2.13.0\"").as_deref(), Some("2.13.0"));
        assert_eq!(parse_version_py("version = '2.13.0'"), None);
    }

    #[test]
    fn accepts_the_right_version_and_rejects_others() {
        let dir = temp_dir("versions");
        fake_libtorch(&dir, "__version__ = '2.13.0+cpu'\n");
        let lt = check_libtorch(&dir).expect("2.13.0 accepted");
        assert_eq!(lt.version, "2.13.0+cpu");
        assert!(!lt.cuda);
        fs::write(dir.join("lib/libtorch_cuda.so"), b"").expect("write");
        assert!(check_libtorch(&dir).expect("accepted").cuda);

        fs::write(dir.join("version.py"), "__version__ = '2.12.1'\n").expect("write");
        let err = check_libtorch(&dir).expect_err("2.12.1 rejected");
        assert!(err.contains("2.12.1") && err.contains(TORCH_VERSION), "{err}");

        // The official archives carry build-version instead, and it wins.
        fs::write(dir.join("build-version"), "2.13.0+cu130\n").expect("write");
        assert_eq!(check_libtorch(&dir).expect("accepted").version, "2.13.0+cu130");
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn names_what_is_missing() {
        let dir = temp_dir("missing");
        fake_libtorch(&dir, "__version__ = '2.13.0'\n");
        fs::remove_file(dir.join("lib/libc10.so")).expect("rm");
        let err = check_libtorch(&dir).expect_err("incomplete");
        assert!(err.contains("lib/libc10.so"), "{err}");
        let err = check_libtorch(&dir.join("nope")).expect_err("absent");
        assert!(err.contains("no such folder"), "{err}");
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn link_is_made_replaced_and_left_alone() {
        let dir = temp_dir("link");
        let (a, b) = (dir.join("a"), dir.join("b"));
        fs::create_dir_all(&a).expect("mkdir");
        fs::create_dir_all(&b).expect("mkdir");
        let link = dir.join(LINK_NAME);
        assert!(point_link(&link, &a).expect("made"));
        assert!(!point_link(&link, &a).expect("same"));
        assert!(point_link(&link, &b).expect("moved"));
        assert_eq!(fs::read_link(&link).expect("link"), b);
        // A real folder in the way is never replaced.
        fs::remove_file(&link).expect("rm");
        fs::create_dir(&link).expect("mkdir");
        let err = point_link(&link, &a).expect_err("folder in the way");
        assert!(err.contains("not a link"), "{err}");
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn cache_entry_counts_only_once_marked_complete() {
        let dir = temp_dir("cache");
        let cache = Cache { dir: dir.clone() };
        assert!(cache.complete().is_none());
        let torch = Cache::torch_dir(&cache.entry());
        fake_libtorch(&torch, "__version__ = '2.13.0+cu130'\n");
        // Files in place but never verified (an interrupted install): not complete.
        assert!(cache.complete().is_none());
        fs::write(cache.entry().join(COMPLETE_MARKER), "2.13.0\n").expect("write");
        let lt = cache.complete().expect("complete");
        assert_eq!(lt.dir, torch.canonicalize().expect("canonical"));
        // Leftovers of dead set-ups are cleared, the complete entry is kept.
        fs::create_dir_all(dir.join(format!("libtorch-{TORCH_VERSION}.partial-1/site")))
            .expect("mkdir");
        cache.remove_stale_staging();
        assert!(!dir.join(format!("libtorch-{TORCH_VERSION}.partial-1")).exists());
        assert!(cache.complete().is_some());
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn home_comes_from_the_password_database_too() {
        let home = passwd_home().expect("the test user has a passwd entry");
        assert!(home.is_absolute(), "{}", home.display());
    }

    #[test]
    fn free_space_is_read() {
        let free = free_bytes(&env::temp_dir()).expect("statvfs");
        assert!(free > 0);
        assert!(free_bytes(Path::new("/no/such/folder/anywhere")).is_err());
    }
}
