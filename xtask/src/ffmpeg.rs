//! FFmpeg for video files (`mm_data::video`). mm uses `MM_FFMPEG`, else an `ffmpeg` on `PATH`,
//! else the one in the per-user cache (`CACHE/ffmpeg/ffmpeg`), which set-up fills when neither
//! of the others is there: the static Linux build that PyPI's `imageio-ffmpeg` wheel carries
//! (H.264, VP9, MJPEG, MPEG-4 part 2, Cinepak, AAC, Opus and the rest), copied out of the wheel
//! and checked by running it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::libtorch::{cache_dir, check_pip, python, run_showing_output, Lock};

/// The imageio-ffmpeg release whose FFmpeg set-up installs (FFmpeg 9.0.2, static).
pub const IMAGEIO_FFMPEG_VERSION: &str = "0.8.1";

/// Which FFmpeg mm will use, installing set-up's when there is none; `Some(message)` when this
/// call installed it.
pub fn setup() -> Result<(PathBuf, Option<String>), String> {
    if let Some(p) = env_path("MM_FFMPEG") {
        version(&p).map_err(|e| format!("MM_FFMPEG={}: {e}", p.display()))?;
        return Ok((p, None));
    }
    if let Some(p) = on_path() {
        if version(&p).is_ok() {
            return Ok((p, None));
        }
    }
    let dir = cache_dir()?.join("ffmpeg");
    let exe = dir.join("ffmpeg");
    if version(&exe).is_ok() {
        return Ok((exe, None));
    }
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let _lock = Lock::acquire(&dir.join(".lock"), "FFmpeg")?;
    if version(&exe).is_ok() {
        return Ok((exe, None));
    }
    let line = install(&dir, &exe)?;
    Ok((exe.clone(), Some(format!("FFmpeg for video files: {line}, at {}", exe.display()))))
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from)
}

fn on_path() -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("ffmpeg"))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// `ffmpeg -version`'s first line, if it runs.
fn version(exe: &Path) -> Result<String, String> {
    let out = Command::new(exe)
        .args(["-hide_banner", "-version"])
        .output()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().next() {
        Some(line) if out.status.success() && line.starts_with("ffmpeg version") => {
            Ok(line.split(" Copyright").next().unwrap_or(line).to_string())
        }
        _ => Err(format!("`{} -version` did not answer as FFmpeg does", exe.display())),
    }
}

/// pip-installs the wheel into a staging folder beside `exe`, copies its binary to `exe`
/// (through a temporary name) and removes the rest.
fn install(dir: &Path, exe: &Path) -> Result<String, String> {
    let py = python();
    check_pip(&py)?;
    let staging = dir.join(format!("staging-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    println!(
        "Installing FFmpeg for video files (PyPI's imageio-ffmpeg=={IMAGEIO_FFMPEG_VERSION}, a static build, about 70 MB) into {}",
        dir.display()
    );
    let mut pip = Command::new(&py);
    pip.args(["-m", "pip", "install", "--no-compile", "--no-deps", "--disable-pip-version-check"])
        .args(["--no-warn-script-location", "--root-user-action=ignore", "--target"])
        .arg(&staging)
        .arg(format!("imageio-ffmpeg=={IMAGEIO_FFMPEG_VERSION}"))
        .env("PYTHONNOUSERSITE", "1");
    let result = run_showing_output(&mut pip).and_then(|()| {
        let binaries = staging.join("imageio_ffmpeg").join("binaries");
        let found = fs::read_dir(&binaries)
            .map_err(|e| format!("{}: {e}", binaries.display()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("ffmpeg-"))
            })
            .ok_or_else(|| {
                format!(
                    "imageio-ffmpeg=={IMAGEIO_FFMPEG_VERSION} has no ffmpeg binary for this platform in {}",
                    binaries.display()
                )
            })?;
        let tmp = dir.join(format!(".ffmpeg.tmp-{}", std::process::id()));
        fs::copy(&found, &tmp).map_err(|e| format!("copying {}: {e}", found.display()))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        let line = version(&tmp).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
        fs::rename(&tmp, exe).map_err(|e| format!("moving it to {}: {e}", exe.display()))?;
        Ok(line)
    });
    let _ = fs::remove_dir_all(&staging);
    result.map_err(|e| {
        format!(
            "could not install FFmpeg: {e}\nWhat to do: check that PyPI is reachable, or install \
             one (Debian: `apt-get install ffmpeg`), or set MM_FFMPEG to an ffmpeg executable."
        )
    })
}
