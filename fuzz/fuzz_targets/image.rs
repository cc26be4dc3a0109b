//! Image decoding through mm-data's wrapper (PNG, JPEG, BMP, WebP by content).
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mm_data::image::decode_image_bytes(data, Path::new("fuzz.png"));
});
