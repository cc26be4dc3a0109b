//! `mm info`: which libtorch this process loaded, which devices it sees, what the CPU can do in
//! bf16, and which FFmpeg reads video files.

use std::path::PathBuf;

use tch::{Cuda, Device};

/// Arguments of `mm info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let lib = loaded_library("libtorch_cpu.so");
    let cuda_lib = loaded_library("libtorch_cuda.so");
    let threads = tch::get_num_threads();
    let cuda = Cuda::is_available();
    let count = Cuda::device_count();
    let cudnn = Cuda::cudnn_is_available();
    let default_device = mm_data::device::device_name(Device::cuda_if_available());
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let bf16 = mm_train::precision::cpu_bf16();
    // Which FFmpeg, how it was found and its version; or why there is none.
    let ffmpeg = mm_data::video::Ffmpeg::locate().and_then(|f| {
        let version = f.version()?;
        Ok((f, version))
    });
    let ffmpeg_text = match &ffmpeg {
        Ok((f, v)) => format!("{} ({}; {v})", f.path.display(), f.source),
        Err(e) => format!("none: {e}"),
    };
    if args.json {
        let q = |s: Option<String>| s.map_or("null".to_string(), |s| json_string(&s));
        println!(
            "{{\"mm_version\":{},\"libtorch\":{},\"libtorch_cuda\":{},\"threads\":{threads},\
             \"cuda_available\":{cuda},\"cuda_device_count\":{count},\"cudnn_available\":{cudnn},\
             \"default_device\":{},\"cpu_bf16\":{},\"ffmpeg\":{}}}",
            json_string(env!("CARGO_PKG_VERSION")),
            q(path(&lib)),
            q(path(&cuda_lib)),
            json_string(&default_device),
            serde_json::to_string(bf16)?,
            match &ffmpeg {
                Ok((f, v)) =>
                    serde_json::json!({"path": f.path, "found_by": f.source, "version": v}),
                Err(e) => serde_json::json!({"error": e.to_string()}),
            },
        );
    } else {
        println!("mm {}", env!("CARGO_PKG_VERSION"));
        println!(
            "libtorch:        {}",
            path(&lib).unwrap_or_else(|| "not found in this process".into())
        );
        println!(
            "libtorch_cuda:   {}",
            path(&cuda_lib).unwrap_or_else(|| "not loaded (CPU only)".into())
        );
        println!("CPU threads:     {threads}");
        println!("CUDA available:  {cuda} ({count} device(s), cuDNN {cudnn})");
        println!("default device:  {default_device}");
        println!("CPU bf16:        {}", bf16.to_string().trim_start_matches("bf16 kernels: "));
        println!("FFmpeg (video):  {ffmpeg_text}");
    }
    Ok(())
}

/// The path of a shared library this process has mapped, read from `/proc/self/maps`.
fn loaded_library(name: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.rsplit('/').next() == Some(name))
        .map(PathBuf::from)
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
