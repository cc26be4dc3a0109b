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

/// A folder of this test's own (the tests run in parallel in one process).
fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mm-video-{}-{test}", std::process::id()));
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
    encode_video(&path, &frames, FPS, codec, None, audio.as_deref().map(|a| (a, 16000)))
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
    let dir = dir("codecs");
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

/// A variable-rate video (as phones write them: here frames 20 to 23 of the square left out, a
/// 0.2 s gap in a 25 fps stream, the others keeping their times) still gives every clip, each
/// frame the nearest to its time and showing that time, the gap's middle included.
#[test]
fn variable_rate_videos_give_the_nearest_frames() {
    let dir = dir("vfr");
    let steady = encode(&dir, "steady.mp4", "libx264", false);
    let vfr = dir.join("vfr.mp4");
    let status = std::process::Command::new(Ffmpeg::locate().expect("FFmpeg").path)
        .args(["-hide_banner", "-loglevel", "error", "-y", "-i"])
        .arg(&steady)
        .args(["-vf", "select='not(between(n,20,23))'", "-fps_mode", "vfr", "-c:v", "libx264"])
        .arg(&vfr)
        .status()
        .expect("run ffmpeg");
    assert!(status.success());
    let info = probe(&vfr).expect("probed");
    let gap = Clip { start: 0.735, step: 0.25, count: 4, size: (H, W) }; // 0.86 s first
    for clip in [Clip::evenly(&info, 12, (H, W)), gap] {
        let decoded = decode_clip(&vfr, &info, &clip, TIMEOUT).expect("a variable-rate clip");
        assert_eq!(decoded.frames.len(), clip.count);
        for ((frame, t), want) in decoded.frames.iter().zip(&decoded.times).zip(clip.times()) {
            // The frames around the gap are at 0.76 s and 0.96 s.
            assert!((t - want).abs() <= 0.1 + 1e-6, "frame at {t} for {want}: {info:?}");
            let k = shown(frame);
            assert!((k - t * FPS).abs() < 0.6, "the frame at {t} s shows frame {k}");
            assert!(!(20..=23).contains(&(k.round() as usize)), "frame {k} is not in the file");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Files that are not whole videos get an error naming them and saying what is wrong.
#[test]
fn broken_videos_are_named_with_what_is_wrong() {
    let dir = dir("broken");
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

/// A manifest of video files through `[data.video]`: cleaning reports the broken ones by id,
/// the loader gives `[B, T, 3, H, W]` clips (statistics fitted on the training clips), a clip
/// at a fixed rate is centred in evaluation and moves in training, and `audio_from_video`
/// feeds `[data.audio]` from the files' sound.
#[test]
fn a_manifest_of_videos_trains_through_the_pipeline() {
    use mm_data::clean::Reason;
    use mm_data::config::DataConfig;
    use mm_data::loader::{Loader, LoaderConfig};
    use mm_data::manifest::Split;
    use std::sync::Arc;
    let dir = dir("set");
    std::fs::create_dir_all(dir.join("v")).expect("dir");
    let mut lines = Vec::new();
    for (i, (codec, ext)) in
        [("libx264", "mp4"), ("libvpx-vp9", "webm"), ("libx264", "mkv")].iter().enumerate()
    {
        let name = format!("v/{i}.{ext}");
        let frames: Vec<Array3<u8>> = (0..FRAMES).map(|k| pattern((k + 3 * i) % 40)).collect();
        let sound = sine(16000, FRAMES as f64 / FPS);
        encode_video(&dir.join(&name), &frames, FPS, codec, None, Some((&sound, 16000)))
            .expect("encode");
        let split = if i == 1 { "val" } else { "train" };
        lines.push(format!(
            r#"{{"id":"clip{i}","split":"{split}","video":"{name}","label":"{}"}}"#,
            i % 2
        ));
    }
    // One that is text, one cut short, one with too few frames, one with no sound.
    std::fs::write(dir.join("v/text.mp4"), "nothing here").expect("write");
    let whole = std::fs::read(dir.join("v/1.webm")).expect("read");
    std::fs::write(dir.join("v/cut.webm"), &whole[..whole.len() / 2]).expect("write");
    let short: Vec<Array3<u8>> = (0..5).map(pattern).collect();
    encode_video(&dir.join("v/short.mp4"), &short, FPS, "libx264", None, None).expect("encode");
    for (id, file) in [("text", "text.mp4"), ("cut", "cut.webm"), ("short", "short.mp4")] {
        lines.push(format!(r#"{{"id":"{id}","video":"v/{file}","label":"0"}}"#));
    }
    std::fs::write(dir.join("manifest.jsonl"), lines.join("\n")).expect("manifest");
    let config = |extra: &str| -> DataConfig {
        toml::from_str(&format!(
            "manifest = {:?}\n[video]\nsize = 24\nframes = 6\n{extra}",
            dir.join("manifest.jsonl")
        ))
        .expect("config")
    };
    let mut data = config("fps = 10");
    let prepared = data.prepare(0).expect("prepared");
    let report = prepared.report.expect("cleaned");
    let bad: Vec<(&str, &str)> =
        report.findings.iter().map(|f| (f.id.as_str(), f.detail.as_str())).collect();
    assert!(report.findings.iter().all(|f| f.reason == Reason::BadVideo), "{bad:?}");
    let detail = |id: &str| {
        bad.iter().find(|(i, _)| *i == id).map(|(_, d)| d.to_string()).unwrap_or_default()
    };
    assert!(detail("text").contains("not a video FFmpeg can read"), "{bad:?}");
    assert!(detail("cut").contains("cut short"), "{bad:?}");
    assert!(
        detail("short").contains("has 5 frames") && detail("short").contains("fewer than the 6"),
        "{bad:?}"
    );
    assert_eq!((report.kept, report.dropped), (3, 3));
    let stats = prepared.pipeline.frames.as_ref().expect("frames").image.normalizer.clone();
    assert!(stats.mean.iter().all(|m| (0.1..0.35).contains(m)), "fitted on the clips: {stats:?}");
    let manifest = Arc::new(prepared.manifest);
    let pipeline = Arc::new(prepared.pipeline);
    let batch = |split, train: bool| {
        let config = if train { LoaderConfig::training(1) } else { LoaderConfig::evaluation() };
        let loader = Loader::new(
            Arc::clone(&manifest),
            split,
            Arc::clone(&pipeline),
            LoaderConfig { batch_size: 2, ..config },
        )
        .expect("loader");
        loader.epoch(0).next().expect("a batch").expect("loaded")
    };
    let b = batch(Split::Train, false);
    let (clips, lengths) = b.frames.as_ref().expect("clips");
    assert_eq!(clips.size(), [2, 6, 3, 24, 24]);
    assert_eq!(Vec::<i64>::try_from(lengths).expect("lengths"), [6, 6]);
    // Evaluation takes the same clip every time; the window of 0.6 s is centred in the 2 s.
    let again = batch(Split::Train, false);
    assert!(clips.equal(again.frames.as_ref().expect("clips").0.as_ref()));
    let item = pipeline.load(&manifest, 0, 0, false).expect("item");
    let first = &item.frames.expect("frames")[0];
    // Undo the normalisation of the green channel to find the square's column.
    let (mean, std) = (stats.mean[1], stats.std[1]);
    let column = |img: &Array3<f32>| {
        let (_, h, w) = img.dim();
        let (mut sum, mut n) = (0.0, 0.0);
        for y in 0..h {
            for x in 0..w {
                if img[[1, y, x]] * std + mean > 0.58 {
                    sum += x as f64;
                    n += 1.0;
                }
            }
        }
        sum / n
    };
    // Centred: the first frame of 6 at 10 fps is at 0.7 + 0.05 s, frame 18.75 of clip0, whose
    // square's centre is at 2 + k + 3.5 of 64 columns, scaled to 24.
    let want = (2.0 + 18.75 + 3.5) * 24.0 / 64.0 - 0.5;
    assert!(
        (column(first) - want).abs() < 1.0,
        "square at {} of 24, expected {want}",
        column(first)
    );
    // Training moves the window: some epoch starts elsewhere.
    let starts: Vec<f64> = (0..6)
        .map(|epoch| {
            column(
                &pipeline.load(&manifest, 0, epoch, true).expect("item").frames.expect("frames")[0],
            )
        })
        .collect();
    assert!(starts.iter().any(|c| (c - want).abs() > 1.0), "{starts:?}");
    // The sound of the videos, for [data.audio].
    let mut data = config("audio_from_video = true\n[audio]\nmel = { sample_rate = 8000, n_fft = 256, hop_length = 80, n_mels = 20 }");
    data.audio.as_ref().expect("audio");
    let prepared = data.prepare(0).expect("prepared");
    let item = prepared.pipeline.load(&prepared.manifest, 0, 0, false).expect("item");
    let mel = item.audio.expect("sound from the video");
    assert!((190..=210).contains(&mel.nrows()) && mel.ncols() == 20, "{:?}", mel.dim());
    let refused =
        toml::from_str::<DataConfig>("manifest = \"m.jsonl\"\n[video]\naudio_from_video = true\n")
            .expect("parsed")
            .validate()
            .expect_err("no [data.audio]");
    assert!(refused.to_string().contains("data.video.audio_from_video"), "{refused}");
    std::fs::remove_dir_all(&dir).ok();
}
