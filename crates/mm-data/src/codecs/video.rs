//! Video files (mp4, avi, webm, mkv, anything FFmpeg reads) through an `ffmpeg` executable:
//! [`probe`] reads a file's streams, [`decode_clip`] the frames nearest to given times, scaled
//! and converted to RGB by FFmpeg and streamed as raw pixels (no temporary files), and
//! [`decode_audio_track`] its sound, mono at a given rate.
//!
//! Which `ffmpeg` ([`Ffmpeg::locate`]): `MM_FFMPEG` if set, else one on `PATH`, else the static
//! build that `cargo xtask setup` installs from PyPI's `imageio-ffmpeg` into the per-user cache
//! (`MM_CACHE_DIR`, else `$XDG_CACHE_HOME/mm`, else `~/.cache/mm`, then `ffmpeg/ffmpeg`).
//! Every FFmpeg process decodes on one thread (the loader's pool gives the parallelism, so the
//! processes are as many as its threads) and is killed when it outlives its timeout.
//!
//! ```no_run
//! use mm_data::video::{decode_clip, probe, Clip};
//!
//! let path = std::path::Path::new("clips/wave.mp4");
//! let info = probe(path)?;
//! // 8 frames evenly over the whole video, each 112 x 112 RGB.
//! let clip = Clip::evenly(&info, 8, (112, 112));
//! let frames = decode_clip(path, &info, &clip, std::time::Duration::from_secs(60))?;
//! assert_eq!(frames.frames.len(), 8);
//! # Ok::<(), mm_data::Error>(())
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use ndarray::Array3;

use crate::{Error, Result};

/// The variable naming the `ffmpeg` to use.
pub const FFMPEG_VAR: &str = "MM_FFMPEG";

/// An `ffmpeg` executable and where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ffmpeg {
    /// The executable.
    pub path: PathBuf,
    /// How it was found: `MM_FFMPEG`, `PATH` or `cache` (set-up's static build).
    pub source: &'static str,
}

impl Ffmpeg {
    /// The `ffmpeg` to use (see the module documentation), found once per process.
    pub fn locate() -> Result<Ffmpeg> {
        static FOUND: OnceLock<std::result::Result<Ffmpeg, String>> = OnceLock::new();
        FOUND.get_or_init(Self::search).clone().map_err(Error::Tool)
    }

    fn search() -> std::result::Result<Ffmpeg, String> {
        if let Some(p) = std::env::var_os(FFMPEG_VAR).filter(|p| !p.is_empty()) {
            let path = PathBuf::from(p);
            return if path.is_file() {
                Ok(Ffmpeg { path, source: "MM_FFMPEG" })
            } else {
                Err(format!(
                    "{FFMPEG_VAR}={}: no such file (it must name an ffmpeg executable)",
                    path.display()
                ))
            };
        }
        if let Some(dirs) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&dirs) {
                let path = dir.join("ffmpeg");
                if is_executable(&path) {
                    return Ok(Ffmpeg { path, source: "PATH" });
                }
            }
        }
        if let Some(path) = cache_dir().map(|d| d.join("ffmpeg").join("ffmpeg")) {
            if is_executable(&path) {
                return Ok(Ffmpeg { path, source: "cache" });
            }
        }
        Err(format!(
            "no FFmpeg found: mm reads video files through an `ffmpeg` executable. Run `cargo xtask setup` \
             (it installs the static build of PyPI's imageio-ffmpeg into {}), install one (Debian: \
             `apt-get install ffmpeg`), or set {FFMPEG_VAR} to its path",
            cache_dir().map_or("the mm cache".into(), |d| d.join("ffmpeg").display().to_string())
        ))
    }

    /// Its version line (`ffmpeg version 7.1 ...`), without the copyright.
    pub fn version(&self) -> Result<String> {
        let out = run(
            self,
            &["-hide_banner".into(), "-version".into()],
            Duration::from_secs(30),
            1 << 20,
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().next().unwrap_or_default();
        Ok(line.split(" Copyright").next().unwrap_or(line).trim().to_string())
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The per-user cache folder mm's set-up fills (`MM_CACHE_DIR`, else `$XDG_CACHE_HOME/mm`, else
/// `~/.cache/mm`).
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("MM_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("mm")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("mm")))
}

/// Extensions of video containers ([`crate::audio::decode_audio`] reads their sound through
/// FFmpeg).
pub const VIDEO_EXTENSIONS: &[&str] =
    &["mp4", "m4v", "mov", "mkv", "webm", "avi", "mpg", "mpeg", "ts", "flv", "wmv", "3gp", "ogv"];

/// Whether `path` names a video container, by its extension.
pub fn is_video_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

static TIMEOUT_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(120_000);

/// How long an FFmpeg process may take to read a file's streams ([`probe`]) or its sound (for
/// [`crate::audio::decode_audio`]) before it is killed: 120 s unless [`set_timeout`] changed
/// it (`[data.video] timeout_s` does).
pub fn timeout() -> Duration {
    Duration::from_millis(TIMEOUT_MS.load(std::sync::atomic::Ordering::Relaxed))
}

/// Sets [`timeout`] for this process.
pub fn set_timeout(timeout: Duration) {
    let ms = timeout.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
    TIMEOUT_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}

/// What [`probe`] found in a file.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    /// The container's duration in seconds.
    pub duration: f64,
    /// Frames per second of the first video stream.
    pub fps: f64,
    /// Its frame size.
    pub width: usize,
    /// Its frame size.
    pub height: usize,
    /// Its codec (`h264`, `mjpeg`, `vp9`, ...).
    pub codec: String,
    /// The first audio stream's codec and sample rate, if there is one.
    pub audio: Option<(String, u32)>,
}

impl VideoInfo {
    /// The frames the video holds, from its duration and rate.
    pub fn frames(&self) -> usize {
        (self.duration * self.fps).round().max(0.0) as usize
    }
}

/// The probes of this process, by file (length and modification time must match).
type ProbeCache = Mutex<std::collections::HashMap<PathBuf, (u64, Option<SystemTime>, VideoInfo)>>;

/// The streams of the video file at `path` (FFmpeg's own stream report); a file FFmpeg cannot
/// read, or without a video stream, is an error naming it. Results are kept for the process
/// while the file's length and modification time stay the same.
pub fn probe(path: &Path) -> Result<VideoInfo> {
    static CACHE: OnceLock<ProbeCache> = OnceLock::new();
    let meta = regular(path)?;
    let key = (meta.len(), meta.modified().ok());
    let cache = CACHE.get_or_init(Default::default);
    if let Some((len, time, info)) = cache.lock().ok().as_ref().and_then(|c| c.get(path).cloned()) {
        if (len, time) == key {
            return Ok(info);
        }
    }
    let ffmpeg = Ffmpeg::locate()?;
    let args = ["-hide_banner".into(), "-nostdin".into(), "-i".into(), path.as_os_str().to_owned()];
    let limit = timeout();
    let out = run(&ffmpeg, &args, limit, 1 << 16)?;
    if out.timed_out {
        return Err(Error::decode(
            path,
            format!("FFmpeg did not read its streams within {} s (killed)", limit.as_secs_f64()),
        ));
    }
    let report = String::from_utf8_lossy(&out.stderr);
    let info = parse_report(&report).map_err(|why| {
        // Without an output file ffmpeg always exits 1; what went wrong is its last line.
        let last = report
            .lines()
            .rev()
            .find(|l| !l.contains("At least one output file") && !l.trim().is_empty())
            .unwrap_or_default();
        let last = last.rsplit(": ").next().unwrap_or(last).trim();
        if why == NO_STREAMS && !last.is_empty() {
            Error::decode(path, format!("not a video FFmpeg can read ({last})"))
        } else {
            Error::decode(path, why)
        }
    })?;
    if let Ok(mut c) = cache.lock() {
        if c.len() > 100_000 {
            c.clear();
        }
        c.insert(path.to_path_buf(), (key.0, key.1, info.clone()));
    }
    Ok(info)
}

const NO_STREAMS: &str = "no streams";

/// Reads FFmpeg's stream report (`ffmpeg -i FILE`'s stderr).
fn parse_report(report: &str) -> std::result::Result<VideoInfo, String> {
    let mut duration = None;
    let mut video = None;
    let mut audio = None;
    let mut streams = Vec::new();
    for line in report.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Duration: ") {
            let d = rest.split(',').next().unwrap_or_default().trim();
            duration = parse_clock(d);
        } else if line.starts_with("Stream #") {
            let Some((_, kind_rest)) =
                line.split_once("]: ").or_else(|| line.split_once("): ")).or_else(|| {
                    // `Stream #0:0: Video: ...`
                    line.match_indices(": ").next().map(|(i, _)| (&line[..i], &line[i + 2..]))
                })
            else {
                continue;
            };
            let (kind, rest) = kind_rest.split_once(": ").unwrap_or((kind_rest, ""));
            streams.push(kind.to_lowercase());
            let fields: Vec<&str> = rest.split(", ").collect();
            let codec = fields.first().and_then(|f| f.split_whitespace().next()).unwrap_or("?");
            match kind {
                "Video" if video.is_none() => {
                    let size = fields.iter().find_map(|f| {
                        let token = f.split_whitespace().next()?;
                        let (w, h) = token.split_once('x')?;
                        let (w, h) = (w.parse::<usize>().ok()?, h.parse::<usize>().ok()?);
                        (w > 0 && h > 0 && !token.starts_with("0x")).then_some((w, h))
                    });
                    let rate = |unit: &str| {
                        fields.iter().find_map(|f| {
                            let n = f.trim().strip_suffix(unit)?.trim();
                            let v = match n.strip_suffix('k') {
                                Some(k) => k.parse::<f64>().ok()? * 1000.0,
                                None => n.parse::<f64>().ok()?,
                            };
                            (v.is_finite() && v > 0.0).then_some(v)
                        })
                    };
                    let fps = rate(" fps").or_else(|| rate(" tbr"));
                    video = Some((codec.to_string(), size, fps));
                }
                "Audio" if audio.is_none() => {
                    let hz = fields
                        .iter()
                        .find_map(|f| f.trim().strip_suffix(" Hz")?.parse::<u32>().ok());
                    audio = Some((codec.to_string(), hz.unwrap_or(0)));
                }
                _ => {}
            }
        }
    }
    if streams.is_empty() {
        return Err(NO_STREAMS.to_string());
    }
    let Some((codec, size, fps)) = video else {
        return Err(format!("has no video stream (its streams: {})", streams.join(", ")));
    };
    let (width, height) = size.ok_or_else(|| format!("{codec} video of unknown frame size"))?;
    let fps = fps.ok_or_else(|| format!("{codec} video of unknown frame rate"))?;
    let duration = duration.filter(|d: &f64| d.is_finite() && *d > 0.0).ok_or(
        "no duration (a stream FFmpeg cannot time: remux it, e.g. `ffmpeg -i IN -c copy OUT.mkv`)",
    )?;
    Ok(VideoInfo { duration, fps, width, height, codec, audio })
}

/// `HH:MM:SS.ss` in seconds.
fn parse_clock(s: &str) -> Option<f64> {
    let mut parts = s.split(':');
    let (h, m, sec) = (parts.next()?, parts.next()?, parts.next()?);
    Some(
        h.parse::<f64>().ok()? * 3600.0
            + m.parse::<f64>().ok()? * 60.0
            + sec.parse::<f64>().ok()?,
    )
}

/// Which frames of a video to take: `count` frames at the centres of `count` equal slots of
/// the window `[start, start + count * step)` seconds, each scaled to `size` (height, width).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clip {
    /// The window's start, in seconds from the video's start.
    pub start: f64,
    /// Seconds between frames.
    pub step: f64,
    /// Frames.
    pub count: usize,
    /// Output `(height, width)`.
    pub size: (usize, usize),
}

impl Clip {
    /// `count` frames evenly over the whole video.
    pub fn evenly(info: &VideoInfo, count: usize, size: (usize, usize)) -> Clip {
        Clip { start: 0.0, step: info.duration / count.max(1) as f64, count, size }
    }

    /// `count` frames at `fps` frames per second from a window that starts at `position` of
    /// the room there is (0: the video's start, 0.5: centred, 1: ending with the video); a
    /// window longer than the video starts at 0 and its later frames are the last one.
    pub fn at_rate(
        info: &VideoInfo,
        count: usize,
        fps: f64,
        position: f64,
        size: (usize, usize),
    ) -> Clip {
        let step = 1.0 / fps;
        let room = (info.duration - step * count as f64).max(0.0);
        Clip { start: room * position.clamp(0.0, 1.0), step, count, size }
    }

    /// The times asked for, in seconds.
    pub fn times(&self) -> Vec<f64> {
        (0..self.count).map(|k| self.start + (k as f64 + 0.5) * self.step).collect()
    }
}

/// The frames [`decode_clip`] read.
#[derive(Debug, Clone)]
pub struct DecodedClip {
    /// One `[height, width, 3]` RGB frame per time asked for, in order.
    pub frames: Vec<Array3<u8>>,
    /// The time of the frame taken for each, in seconds.
    pub times: Vec<f64>,
}

/// Decodes the frames of the video at `path` nearest to `clip`'s times (a time past the video's
/// end takes its last frame), scaled by FFmpeg to `clip.size` (area averaging). `info` is
/// [`probe`]'s. A file cut short (no frame near a time inside its stated duration), one FFmpeg
/// fails on, or a decoder that outlives `timeout` is an error naming the file.
pub fn decode_clip(
    path: &Path,
    info: &VideoInfo,
    clip: &Clip,
    timeout: Duration,
) -> Result<DecodedClip> {
    regular(path)?;
    let (h, w) = clip.size;
    if clip.count == 0 || h == 0 || w == 0 || !(clip.step.is_finite() && clip.step > 0.0) {
        return Err(Error::Config(format!(
            "a clip of {} frames of {h}x{w}, {} s apart",
            clip.count, clip.step
        )));
    }
    let frame = 1.0 / info.fps;
    let last = (info.duration - frame / 2.0).max(0.0);
    let wanted: Vec<f64> = clip.times().iter().map(|t| t.min(last)).collect();
    // The container's duration may pass the last frame by a little (a longer sound track,
    // an encoder's priming): a time that close to the end takes the last frame.
    let slack = (3.0 * frame).max(0.3);
    let near_end = |t: f64| t >= info.duration - slack;
    // How far from a time its frame may be: a frame's length in a steady stream, more in a
    // variable-rate one (a phone's, whose stated rate is an average).
    let tolerance = (2.5 * frame).max(0.1);
    let window = |t: f64| {
        (if near_end(t) { t - slack.max(tolerance) } else { t - tolerance }, t + tolerance)
    };
    // Seek to a little before the first frame wanted; FFmpeg's times then count from there.
    let seek = (window(wanted[0]).0 - frame).max(0.0);
    let terms: Vec<String> = wanted
        .iter()
        .map(|&t| {
            let (from, to) = window(t);
            format!("between(t,{:.6},{:.6})", from - seek, to - seek)
        })
        .collect();
    // At most the frames of every window (the windows may overlap), and a few more.
    let most: usize =
        wanted.iter().map(|&t| ((window(t).1 - window(t).0) * info.fps).ceil() as usize + 2).sum();
    let mut merged: Vec<String> = Vec::new();
    terms.iter().for_each(|t| {
        if merged.last() != Some(t) {
            merged.push(t.clone())
        }
    });
    let filter =
        format!("select='{}',scale={w}:{h}:flags=area,format=rgb24,showinfo", merged.join("+"));
    let span = window(wanted[wanted.len() - 1]).1 - seek + frame;
    let args: Vec<std::ffi::OsString> = [
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "info",
        "-threads",
        "1",
        "-ss",
        &format!("{seek:.6}"),
        "-t",
        &format!("{span:.6}"),
        "-i",
    ]
    .iter()
    .map(Into::into)
    .chain([path.as_os_str().to_owned()])
    .chain(
        [
            "-map",
            "0:v:0",
            "-an",
            "-sn",
            "-dn",
            "-filter_threads",
            "1",
            "-vf",
            &filter,
            "-fps_mode",
            "passthrough",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "pipe:1",
        ]
        .iter()
        .map(Into::into),
    )
    .collect();
    let bytes_per_frame = h * w * 3;
    let cap = bytes_per_frame * (most + 8);
    let out = run(&Ffmpeg::locate()?, &args, timeout, cap)?;
    let log = finished(path, &out, timeout, "the clip")?;
    // The time of every frame written, in order, from the showinfo filter.
    let times: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("Parsed_showinfo"))
        .filter_map(|l| l.split("pts_time:").nth(1)?.split_whitespace().next()?.parse::<f64>().ok())
        .map(|t| t + seek)
        .collect();
    let n = out.stdout.len() / bytes_per_frame;
    if n != times.len() || out.stdout.len() % bytes_per_frame != 0 {
        return Err(Error::decode(
            path,
            format!(
                "FFmpeg wrote {} bytes for {} timed frames of {h}x{w}",
                out.stdout.len(),
                times.len()
            ),
        ));
    }
    let mut frames = Vec::with_capacity(clip.count);
    let mut taken = Vec::with_capacity(clip.count);
    for &t in &wanted {
        let nearest = (0..n).min_by(|&a, &b| (times[a] - t).abs().total_cmp(&(times[b] - t).abs()));
        let close = |i: &usize| {
            (times[*i] - t).abs() <= tolerance
                || (near_end(t) && i + 1 == n && t - times[*i] <= slack.max(tolerance) + frame)
        };
        let Some(i) = nearest.filter(close) else {
            let decoded = times.last().map_or("no frame".to_string(), |l| {
                format!("the last frame decoded is at {l:.2} s")
            });
            return Err(Error::decode(
                path,
                format!(
                    "cut short: no frame near {t:.2} s of its {:.2} s ({decoded})",
                    info.duration
                ),
            ));
        };
        let pixels = out.stdout[i * bytes_per_frame..(i + 1) * bytes_per_frame].to_vec();
        frames.push(Array3::from_shape_vec((h, w, 3), pixels).expect("h * w * 3 bytes"));
        taken.push(times[i]);
    }
    Ok(DecodedClip { frames, times: taken })
}

/// The first audio stream of the video at `path`, mixed to mono at `sample_rate` by FFmpeg;
/// a file without sound is an error naming it.
pub fn decode_audio_track(path: &Path, sample_rate: u32, timeout: Duration) -> Result<Vec<f32>> {
    let meta = regular(path)?;
    if probe(path)?.audio.is_none() {
        return Err(Error::decode(path, "has no audio stream"));
    }
    let args: Vec<std::ffi::OsString> =
        ["-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-threads", "1", "-i"]
            .iter()
            .map(Into::into)
            .chain([path.as_os_str().to_owned()])
            .chain(
                [
                    "-map",
                    "0:a:0",
                    "-vn",
                    "-sn",
                    "-dn",
                    "-ac",
                    "1",
                    "-ar",
                    &sample_rate.to_string(),
                    "-f",
                    "f32le",
                    "pipe:1",
                ]
                .iter()
                .map(Into::into),
            )
            .collect();
    // Decoded sound is at most a few times the file (and 4 bytes a sample at the rate).
    let cap = (crate::fs::limit(crate::fs::FileKind::Audio) as usize).max(meta.len() as usize * 64);
    let out = run(&Ffmpeg::locate()?, &args, timeout, cap)?;
    finished(path, &out, timeout, "its sound")?;
    let samples: Vec<f32> =
        out.stdout.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    if samples.is_empty() {
        return Err(Error::decode(path, "no audio (0 samples)"));
    }
    Ok(samples)
}

/// FFmpeg's log of a decode of `what` in `path`, or the error when it was killed at `timeout`
/// or failed.
fn finished(path: &Path, out: &Output, timeout: Duration, what: &str) -> Result<String> {
    if out.timed_out {
        return Err(Error::decode(
            path,
            format!("FFmpeg did not decode {what} within {} s (killed)", timeout.as_secs_f64()),
        ));
    }
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.success {
        return Err(Error::decode(
            path,
            format!("FFmpeg could not decode {what}: {}", last_error(&log)),
        ));
    }
    Ok(log)
}

/// The line of FFmpeg's log that says what went wrong.
fn last_error(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.contains("Parsed_showinfo")
                && !l.starts_with("Stream")
                && !l.starts_with("Metadata")
        })
        .collect();
    lines
        .iter()
        .rev()
        .find(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error")
                || l.contains("invalid")
                || l.contains("no such")
                || l.contains("matches no")
        })
        .or(lines.last())
        .map_or("no message".to_string(), |l| l.to_string())
}

/// A regular file at `path` (FFmpeg would wait forever on a FIFO, or read /dev/zero).
fn regular(path: &Path) -> Result<std::fs::Metadata> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::decode(path, "not a regular file"));
    }
    Ok(meta)
}

/// What an FFmpeg process gave.
struct Output {
    success: bool,
    timed_out: bool,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs `ffmpeg args`, reading at most `cap` bytes of its output and 1 MiB of its log, and
/// kills it at `timeout`.
fn run(
    ffmpeg: &Ffmpeg,
    args: &[std::ffi::OsString],
    timeout: Duration,
    cap: usize,
) -> Result<Output> {
    let mut child = Command::new(&ffmpeg.path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::Tool(format!("cannot run {} ({}): {e}", ffmpeg.path.display(), ffmpeg.source))
        })?;
    let deadline = Instant::now() + timeout;
    let pid = child.id() as libc::pid_t;
    let (done, watch) = std::sync::mpsc::channel::<()>();
    // Kills the process at the deadline while its output is read (it is not waited for, so
    // its pid stays its own until then).
    let watchdog = std::thread::spawn(move || {
        if watch.recv_timeout(timeout) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return true;
        }
        false
    });
    let mut err = child.stderr.take().expect("piped");
    let log = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = (&mut err).take(1 << 20).read_to_end(&mut bytes);
        std::io::copy(&mut err, &mut std::io::sink()).ok();
        bytes
    });
    let mut stdout = Vec::new();
    let mut out = child.stdout.take().expect("piped");
    let read = (&mut out).take(cap as u64 + 1).read_to_end(&mut stdout);
    if read.is_err() || stdout.len() > cap {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    drop(out);
    let stderr = log.join().unwrap_or_default();
    // The log is closed: the process has ended or is ending; wait for it, up to the deadline.
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    drop(done);
    let timed_out = watchdog.join().unwrap_or(false) || status.is_none();
    if stdout.len() > cap {
        return Err(Error::Tool(format!(
            "{} wrote more than the {cap} bytes expected",
            ffmpeg.path.display()
        )));
    }
    Ok(Output { success: status.is_some_and(|s| s.success()), timed_out, stdout, stderr })
}

/// Encodes `frames` (`[height, width, 3]` RGB, all one size) at `fps` into the video file
/// `path` with FFmpeg's `codec` (`libx264`, `mjpeg`, `libvpx-vp9`, ...) at the constant
/// quality `crf` when given (x264's and libvpx's scale: 0 lossless, 23 x264's default), with
/// `audio` (mono samples and their rate) as its sound when given; the container follows the
/// file's extension. Written to a temporary name beside it first, then renamed.
pub fn encode_video(
    path: &Path,
    frames: &[Array3<u8>],
    fps: f64,
    codec: &str,
    crf: Option<u32>,
    audio: Option<(&[f32], u32)>,
) -> Result<()> {
    use std::io::Write;
    let Some(first) = frames.first() else {
        return Err(Error::Config(format!("{}: no frames to encode", path.display())));
    };
    let (h, w, _) = first.dim();
    if frames.iter().any(|f| f.dim() != (h, w, 3)) {
        return Err(Error::Config(format!("{}: frames of different sizes", path.display())));
    }
    let ext = path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}.{ext}",
        path.file_stem().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let audio_file = match audio {
        Some((samples, rate)) => {
            let wav = tmp.with_extension("wav");
            let a = crate::audio::Audio { samples: samples.to_vec(), sample_rate: rate };
            std::fs::write(&wav, crate::audio::encode_wav(&a)).map_err(|e| Error::io(&wav, e))?;
            Some(wav)
        }
        None => None,
    };
    let ffmpeg = Ffmpeg::locate()?;
    let mut cmd = Command::new(&ffmpeg.path);
    cmd.args([
        "-hide_banner",
        "-nostats",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
    ])
    .args(["-s", &format!("{w}x{h}"), "-r", &format!("{fps}"), "-i", "pipe:0"]);
    if let Some(wav) = &audio_file {
        cmd.arg("-i").arg(wav).args([
            "-c:a",
            if ext == "webm" {
                "libopus"
            } else if ext == "avi" {
                "pcm_s16le"
            } else {
                "aac"
            },
        ]);
    }
    cmd.args(["-c:v", codec]);
    if let (Some(crf), false) = (crf, codec == "mjpeg") {
        cmd.args(["-crf", &crf.to_string()]);
        if codec.starts_with("libvpx") {
            cmd.args(["-b:v", "0"]);
        }
    }
    match codec {
        "mjpeg" => {
            cmd.args(["-q:v", "2", "-pix_fmt", "yuvj420p"]);
        }
        // Lossless RGB codecs keep the pixels as they are.
        "ffv1" | "png" | "libx264rgb" | "qtrle" | "utvideo" => {}
        _ => {
            cmd.args(["-pix_fmt", "yuv420p"]);
        }
    }
    let mut child = cmd
        .arg(&tmp)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Tool(format!("cannot run {}: {e}", ffmpeg.path.display())))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut written = Ok(());
    for f in frames {
        let f = f.as_standard_layout();
        written = stdin.write_all(f.as_slice().expect("standard layout"));
        if written.is_err() {
            break;
        }
    }
    drop(stdin);
    let out = child.wait_with_output().map_err(|e| Error::io(&tmp, e))?;
    if let Some(wav) = &audio_file {
        let _ = std::fs::remove_file(wav);
    }
    if !out.status.success() || written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::decode(
            path,
            format!(
                "FFmpeg could not encode it with {codec}: {}",
                last_error(&String::from_utf8_lossy(&out.stderr))
            ),
        ));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ffmpegs_stream_report() {
        let report = "Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'a.mp4':
  Metadata:
    major_brand     : isom
  Duration: 00:00:02.04, start: 0.000000, bitrate: 98 kb/s
  Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(tv, bt709, progressive), 112x96 [SAR 1:1 DAR 7:6], 93 kb/s, 25 fps, 25 tbr, 12800 tbn (default)
  Stream #0:1[0x2](und): Audio: aac (LC) (mp4a / 0x6134706D), 16000 Hz, mono, fltp, 69 kb/s (default)
At least one output file must be specified";
        let info = parse_report(report).expect("parsed");
        assert_eq!((info.width, info.height, info.fps), (112, 96, 25.0));
        assert!((info.duration - 2.04).abs() < 1e-9 && info.codec == "h264");
        assert_eq!(info.audio, Some(("aac".to_string(), 16000)));
        assert_eq!(info.frames(), 51);
        let sound = "  Duration: 00:00:01.00, start: 0.000000, bitrate: 128 kb/s\n  Stream #0:0: Audio: pcm_s16le ([1][0][0][0] / 0x0001), 8000 Hz, mono, s16, 128 kb/s\n";
        assert!(parse_report(sound)
            .expect_err("no video")
            .contains("no video stream (its streams: audio)"));
        assert_eq!(
            parse_report("a.txt: Invalid data found when processing input").expect_err("nothing"),
            NO_STREAMS
        );
        assert_eq!(parse_clock("01:02:03.50"), Some(3723.5));
    }

    #[test]
    fn clips_cover_their_window() {
        let info = VideoInfo {
            duration: 4.0,
            fps: 25.0,
            width: 8,
            height: 8,
            codec: "h264".into(),
            audio: None,
        };
        assert_eq!(Clip::evenly(&info, 4, (8, 8)).times(), [0.5, 1.5, 2.5, 3.5]);
        let c = Clip::at_rate(&info, 4, 2.0, 0.5, (8, 8));
        assert_eq!(c.times(), [1.25, 1.75, 2.25, 2.75]);
        assert_eq!(Clip::at_rate(&info, 4, 2.0, 0.0, (8, 8)).start, 0.0);
        assert_eq!(Clip::at_rate(&info, 16, 2.0, 0.7, (8, 8)).start, 0.0);
    }
}

/// How [`encode_manifest`] writes video files.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodeOptions {
    /// FFmpeg's encoder: `libx264` (`.mp4`), `mjpeg` (`.avi`), `libvpx-vp9` (`.webm`), or
    /// another with `extension` set.
    pub codec: String,
    /// The container, by file extension; `None`: the codec's usual one.
    pub extension: Option<String>,
    /// Frames per second of the videos.
    pub fps: f64,
    /// Constant quality (`-crf`: 0 lossless, 23 x264's default); `None`: the encoder's default.
    pub crf: Option<u32>,
    /// Mux each sample's `audio` into its video (the sample then has no `audio` field: read it
    /// back with `[data.video] audio_from_video = true`).
    pub with_audio: bool,
    /// Replace an earlier output folder.
    pub force: bool,
}

impl Default for EncodeOptions {
    /// H.264 in mp4, 8 frames a second, at `crf` 15 (a data set's pixels kept close), sound
    /// muxed.
    fn default() -> Self {
        EncodeOptions {
            codec: "libx264".into(),
            extension: None,
            fps: 8.0,
            crf: Some(15),
            with_audio: true,
            force: false,
        }
    }
}

/// What [`encode_manifest`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Videos written.
    pub videos: usize,
    /// Of them, with the sample's sound.
    pub with_audio: usize,
    /// Other files (images, sound not muxed) copied beside them.
    pub copied: usize,
}

/// The file [`encode_manifest`] writes into its folder.
pub const ENCODED_MANIFEST: &str = "manifest.jsonl";

/// Writes `manifest` as a data set of video files into the folder `out` (atomically): every
/// sample that lists `frames` gets `videos/ID.EXT` made of them (all one size) instead, with its
/// sound muxed in when `options.with_audio`; its other files are copied under `files/`.
/// `out/manifest.jsonl` describes the result. Samples are encoded in parallel, one FFmpeg each.
pub fn encode_manifest(
    manifest: &crate::manifest::Manifest,
    out: &Path,
    options: &EncodeOptions,
) -> Result<Encoded> {
    use rayon::prelude::*;
    if !(options.fps.is_finite() && options.fps > 0.0) {
        return Err(Error::Config(format!("fps {} is not a frame rate", options.fps)));
    }
    let ext = options.extension.clone().unwrap_or_else(|| {
        match options.codec.as_str() {
            "mjpeg" | "mpeg4" | "libxvid" | "cinepak" => "avi",
            "libvpx" | "libvpx-vp9" | "libaom-av1" => "webm",
            "ffv1" | "png" | "utvideo" => "mkv",
            _ => "mp4",
        }
        .to_string()
    });
    Ffmpeg::locate()?;
    crate::fs::write_dir_atomic(out, ENCODED_MANIFEST, options.force, |staging| {
        std::fs::create_dir_all(staging.join("videos")).map_err(|e| Error::io(staging, e))?;
        let copy = |rel: &Path| -> Result<PathBuf> {
            let to = Path::new("files").join(rel);
            let dest = staging.join(&to);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            std::fs::copy(manifest.path(rel), &dest)
                .map_err(|e| Error::io(manifest.path(rel), e))?;
            Ok(to)
        };
        let converted: Vec<(crate::manifest::Sample, [usize; 3])> = manifest
            .samples()
            .par_iter()
            .map(|s| {
                let mut s = s.clone();
                let mut counts = [0usize; 3];
                let in_sample = |e: Error| Error::Sample { id: s.id.clone(), source: Box::new(e) };
                let mut sound = None;
                if !s.frames.is_empty() {
                    let frames = s
                        .frames
                        .iter()
                        .map(|rel| crate::image::decode_image(manifest.path(rel)))
                        .collect::<Result<Vec<_>>>()
                        .map_err(in_sample)?;
                    if let (true, Some(rel)) = (options.with_audio, &s.audio) {
                        sound = Some(crate::audio::decode_audio(manifest.path(rel)).map_err(in_sample)?);
                    }
                    // The id, made a file name.
                    let name: String = s
                        .id
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
                        .collect();
                    let rel = PathBuf::from(format!("videos/{name}.{ext}"));
                    if staging.join(&rel).exists() {
                        return Err(in_sample(Error::Config(format!("{} is another sample's video too (ids that differ only in punctuation)", rel.display()))));
                    }
                    let audio = sound.as_ref().map(|a| (a.samples.as_slice(), a.sample_rate));
                    encode_video(
                        &staging.join(&rel),
                        &frames,
                        options.fps,
                        &options.codec,
                        options.crf,
                        audio,
                    )
                        .map_err(in_sample)?;
                    s.frames.clear();
                    s.video = Some(rel);
                    counts[0] = 1;
                    if sound.is_some() {
                        s.audio = None;
                        counts[1] = 1;
                    }
                }
                if let Some(rel) = s.image.take() {
                    s.image = Some(copy(&rel).map_err(in_sample)?);
                    counts[2] += 1;
                }
                if let Some(rel) = s.audio.take() {
                    s.audio = Some(copy(&rel).map_err(in_sample)?);
                    counts[2] += 1;
                }
                Ok((s, counts))
            })
            .collect::<Result<_>>()?;
        let mut written = crate::manifest::Manifest::new(staging);
        let mut total = [0usize; 3];
        for (s, counts) in converted {
            written.push(s)?;
            for (t, c) in total.iter_mut().zip(counts) {
                *t += c;
            }
        }
        written.write(staging.join(ENCODED_MANIFEST))?;
        Ok(Encoded { videos: total[0], with_audio: total[1], copied: total[2] })
    })
}
