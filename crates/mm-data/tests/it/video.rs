//! Video files through FFmpeg, on real files encoded here by the same FFmpeg: a square that
//! moves one pixel a frame, so that every decoded frame says when it was.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mm_data::video::{decode_audio_track, decode_clip, encode_video, probe, Clip, Ffmpeg};
use ndarray::Array3;

const FPS: f64 = 25.0;
const FRAMES: usize = 50;
const H: usize = 48;
const W: usize = 64;
const SIDE: usize = 8;
const TIMEOUT: Duration = Duration::from_secs(60);

/// Frame `k`: grey 40, a white square of 8 whose left edge is at `2 + k`, top at 20.
fn pattern(k: usize) -> Array3<u8> {
    Array3::from_shape_fn((H, W, 3), |(y, x, _)| {
        if (20..20 + SIDE).contains(&y) && (2 + k..2 + k + SIDE).contains(&x) {
            255
        } else {
            40
        }
    })
}

/// The frame index a decoded frame shows: its square's left edge, less 2.
fn shown(frame: &Array3<u8>) -> f64 {
    let (mut sum, mut n) = (0.0, 0.0);
    for y in 0..frame.dim().0 {
        for x in 0..frame.dim().1 {
            if frame[[y, x, 1]] > 148 {
                sum += x as f64;
                n += 1.0;
            }
        }
    }
    assert!(n > 0.0, "no square in the frame");
    sum / n - (SIDE as f64 - 1.0) / 2.0 - 2.0
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("mm-video-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn sine(rate: u32, seconds: f64) -> Vec<f32> {
    (0..(f64::from(rate) * seconds) as usize)
        .map(|i| {
            (0.5 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / f64::from(rate)).sin()) as f32
        })
        .collect()
}

fn encode(dir: &Path, name: &str, codec: &str, sound: bool) -> PathBuf {
    let frames: Vec<Array3<u8>> = (0..FRAMES).map(pattern).collect();
    let path = dir.join(name);
    let audio = sound.then(|| sine(16000, FRAMES as f64 / FPS));
    encode_video(&path, &frames, FPS, codec, audio.as_deref().map(|a| (a, 16000)))
        .expect("encoded");
    path
}

/// H.264 mp4, MJPEG avi and VP9 webm, with and without sound: the stream report, frames
/// evenly over the video and at a fixed rate, each the frame nearest its time, with the
/// pattern's pixel values; the sound track at another rate.
#[test]
fn real_videos_decode_to_the_frames_of_their_times() {
    let ffmpeg = Ffmpeg::locate().expect("set-up installs an FFmpeg");
    eprintln!(
        "{} ({}): {}",
        ffmpeg.path.display(),
        ffmpeg.source,
        ffmpeg.version().expect("version")
    );
    let dir = dir();
    for (name, codec, sound) in [
        ("square.mp4", "libx264", true),
        ("square.avi", "mjpeg", false),
        ("square.webm", "libvpx-vp9", true),
        ("silent.mp4", "libx264", false),
    ] {
        let path = encode(&dir, name, codec, sound);
        let info = probe(&path).expect("probed");
        assert_eq!((info.width, info.height), (W, H), "{name}: {info:?}");
        assert!((info.fps - FPS).abs() < 1e-6, "{name}: {info:?}");
        assert!((info.duration - 2.0).abs() < 0.1, "{name}: {info:?}");
        assert_eq!(info.audio.is_some(), sound, "{name}: {info:?}");
        assert!(info.frames().abs_diff(FRAMES) <= 2, "{name}: {info:?}");
        for clip in [
            Clip::evenly(&info, 8, (H, W)),
            Clip::at_rate(&info, 6, 5.0, 0.5, (H, W)),
            Clip::at_rate(&info, 4, 12.5, 0.0, (H, W)),
        ] {
            let decoded = decode_clip(&path, &info, &clip, TIMEOUT).expect("decoded");
            assert_eq!(decoded.frames.len(), clip.count, "{name}");
            for ((frame, t), want) in decoded.frames.iter().zip(&decoded.times).zip(clip.times()) {
                // The frame nearest the time asked for, and it shows that time.
                assert!((t - want).abs() <= 0.5 / FPS + 1e-6, "{name}: frame at {t} for {want}");
                let k = shown(frame);
                assert!((k - t * FPS).abs() < 0.6, "{name}: frame at {t} s shows frame {k}");
                assert_eq!(frame.dim(), (H, W, 3));
                let (bg, fg) = (frame[[5, 60, 0]], frame[[23, (2.0 + k.round()) as usize + 4, 0]]);
                assert!(bg.abs_diff(40) <= 12 && fg >= 220, "{name}: background {bg}, square {fg}");
            }
        }
        // Scaled by FFmpeg: the square keeps its place in proportion.
        let half =
            decode_clip(&path, &info, &Clip::evenly(&info, 2, (24, 32)), TIMEOUT).expect("scaled");
        for (frame, t) in half.frames.iter().zip(&half.times) {
            assert_eq!(frame.dim(), (24, 32, 3));
            // The square's centre: at 2 + k + 3.5 in full pixels, half pixel i covering full
            // pixels 2i and 2i + 1.
            let x = shown(frame) + 2.0 + (SIDE as f64 - 1.0) / 2.0;
            let want = (2.0 + t * FPS + 3.5 - 0.5) / 2.0;
            assert!((x - want).abs() < 1.0, "{name}: scaled square at {x}, expected {want}");
        }
        if sound {
            let samples = decode_audio_track(&path, 8000, TIMEOUT).expect("sound");
            let seconds = samples.len() as f64 / 8000.0;
            assert!((seconds - 2.0).abs() < 0.1, "{name}: {seconds} s of sound");
            let crossings = samples.windows(2).filter(|w| (w[0] < 0.0) != (w[1] < 0.0)).count();
            let hz = crossings as f64 / 2.0 / seconds;
            assert!((hz - 440.0).abs() < 15.0, "{name}: {hz} Hz");
        } else {
            let err = decode_audio_track(&path, 8000, TIMEOUT).expect_err("silent").to_string();
            assert!(err.contains(name) && err.contains("no audio stream"), "{err}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Files that are not whole videos get an error naming them and saying what is wrong.
#[test]
fn broken_videos_are_named_with_what_is_wrong() {
    let dir = dir().join("broken");
    std::fs::create_dir_all(&dir).expect("dir");
    let message = |path: &Path| {
        let err = probe(path)
            .and_then(|info| decode_clip(path, &info, &Clip::evenly(&info, 8, (H, W)), TIMEOUT))
            .expect_err("refused");
        let text = mm_data::error::report(&err);
        assert!(text.contains(&path.display().to_string()), "{text}");
        text
    };
    let text = dir.join("notes.mp4");
    std::fs::write(&text, "not a video at all\n").expect("write");
    assert!(message(&text).contains("not a video FFmpeg can read"), "{}", message(&text));
    let wav = dir.join("sound.wav");
    let a = mm_data::audio::Audio { samples: sine(8000, 0.5), sample_rate: 8000 };
    std::fs::write(&wav, mm_data::audio::encode_wav(&a)).expect("write");
    assert!(
        message(&wav).contains("has no video stream (its streams: audio)"),
        "{}",
        message(&wav)
    );
    // Cut to 40%: the mp4's index is at its end, the webm's frames stop early.
    for name in ["cut.mp4", "cut.webm"] {
        let whole = std::fs::read(encode(
            &dir,
            name,
            if name.ends_with("mp4") { "libx264" } else { "libvpx-vp9" },
            false,
        ))
        .expect("read");
        std::fs::write(dir.join(name), &whole[..whole.len() * 2 / 5]).expect("cut");
        let m = message(&dir.join(name));
        assert!(m.contains("not a video FFmpeg can read") || m.contains("cut short"), "{m}");
        if name.ends_with("webm") {
            assert!(m.contains("cut short: no frame near"), "{m}");
        }
    }
    let fifo = dir.join("pipe.mp4");
    let c = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("path");
    // SAFETY: mkfifo on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert!(message(&fifo).contains("not a regular file"));
    let missing = dir.join("missing.mp4");
    assert!(message(&missing).contains("No such file"));
    std::fs::remove_dir_all(&dir).ok();
}
