//! MNIST's idx format from arbitrary bytes, plain or gzip-compressed (through a file).
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mm_fetch::idx::parse_idx(data, Path::new("fuzz.idx"));
    let file = std::env::temp_dir().join(format!("mm-fuzz-idx-{}", std::process::id()));
    if std::fs::write(&file, data).is_ok() {
        let _ = mm_fetch::idx::read_idx(&file);
    }
});
