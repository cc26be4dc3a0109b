//! Run configurations (TOML) from arbitrary text, with and without `--set` overrides.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mm_train::run::RunConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = RunConfig::parse(text, Path::new("fuzz.toml"), &[]) {
        let _ = c.to_toml();
    }
    // The first line as an override of a known-good configuration.
    let line = text.lines().next().unwrap_or_default().to_string();
    let base = "[data]\nmanifest = \"m.jsonl\"\n[data.image]\nsize = 28\n[model.encoders.image]\nkind = \"image\"\narch = \"lenet\"\n[model.fusion]\nmethod = \"concat\"\n[model.head]\ntype = \"classification\"\n";
    let _ = RunConfig::parse(base, Path::new("base.toml"), &[line]);
});
