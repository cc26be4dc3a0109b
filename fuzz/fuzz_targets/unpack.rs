//! The archive unpacker on arbitrary `.tar.gz` and `.zip` bytes: an error or files, never a
//! panic, and never a file outside the folder it unpacks into.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mm_fetch::registry::{Artifact, Check, Unpack};

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                files_under(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let base = std::env::temp_dir().join(format!("mm-fuzz-unpack-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("root");
    let _ = std::fs::create_dir_all(&root);
    let file = if first % 2 == 0 { "a.tar.gz" } else { "a.zip" };
    let archive = base.join(file);
    if std::fs::write(&archive, rest).is_err() {
        return;
    }
    let artifact = Artifact {
        file: file.into(),
        urls: vec![],
        mirror_path: file.into(),
        size: None,
        check: Check::Unverified,
        check_source: "fuzz".into(),
        unpack: Unpack::Archive {
            strip: (first / 2 % 2) as usize,
            keep: vec!["*".into(), "*/*".into(), "*/*/*".into()],
            into: String::new(),
        },
    };
    let _ = mm_fetch::unpack::unpack(&archive, &artifact, &root);
    // Whatever happened, nothing was written beside the unpack folder.
    let mut all = Vec::new();
    files_under(&base, &mut all);
    for f in all {
        assert!(
            f == archive || f.starts_with(&root),
            "wrote outside the unpack folder: {}",
            f.display()
        );
    }
});
