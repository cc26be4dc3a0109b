//! Manifests (JSON lines and CSV) from arbitrary text: an error or a manifest, never a panic.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mm_data::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for parsed in [
        Manifest::parse_jsonl(text, Path::new("fuzz.jsonl"), Path::new("/data")),
        Manifest::parse_csv(text, Path::new("fuzz.csv"), Path::new("/data")),
    ] {
        if let Ok(m) = parsed {
            // What a parsed manifest is used for next.
            let _ = m.to_jsonl();
            let _ = m.resplit(0.1, 0.1, 0, true);
        }
    }
});
