//! Repository-wide checks that run as xtask's unit tests (`cargo test -p xtask`), in the spirit
//! of rust-analyzer's tidy tests: rules about the source tree that a compiler cannot check.

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() && name != "target" && !name.to_string_lossy().starts_with('.') {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Every source file opens with a `//!` paragraph saying what it is for.
    #[test]
    fn every_source_file_starts_with_a_module_doc() {
        let root = crate::workspace_root();
        let mut files = Vec::new();
        for top in ["crates", "xtask", "benches", "fuzz", "examples"] {
            rust_files(&root.join(top), &mut files);
        }
        assert!(
            files.len() > 10,
            "found only {} source files under {}",
            files.len(),
            root.display()
        );
        let undocumented: Vec<_> = files
            .iter()
            .filter(|f| {
                let text = fs::read_to_string(f).unwrap_or_default();
                !text.trim_start().starts_with("//!")
            })
            .map(|f| f.strip_prefix(&root).unwrap_or(f).display().to_string())
            .collect();
        assert!(undocumented.is_empty(), "files without a leading //! doc: {undocumented:?}");
    }

    /// Fails if the manifest at `path` (relative to the root) names a dependency starting with
    /// one of `banned`.
    fn assert_no_dependency(path: &str, banned: &[&str]) {
        let manifest = fs::read_to_string(crate::workspace_root().join(path)).expect(path);
        for banned in banned {
            let hit = manifest
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .find(|l| l.trim_start().starts_with(banned));
            assert!(hit.is_none(), "{path} must not depend on {banned}: {hit:?}");
        }
    }

    /// Architecture invariant: xtask depends on no workspace crate (it must build without
    /// libtorch, before set-up has run).
    #[test]
    fn xtask_depends_on_no_workspace_crate() {
        assert_no_dependency("xtask/Cargo.toml", &["mm-", "tch", "torch-sys"]);
    }

    /// Architecture invariant: mm-fetch depends on no other mm crate and not on libtorch (it
    /// runs before set-up, behind `cargo xtask fetch-data`).
    #[test]
    fn mm_fetch_needs_no_libtorch() {
        assert_no_dependency("crates/mm-fetch/Cargo.toml", &["mm-", "tch", "torch-sys"]);
    }

    /// The layering of docs/ARCHITECTURE.md: which mm crates each library crate may use.
    #[test]
    fn library_crates_keep_their_layering() {
        let allowed: &[(&str, &[&str])] = &[
            ("mm-fetch", &[]),
            ("mm-data", &[]),
            ("mm-datasets", &["mm-data", "mm-fetch"]),
            ("mm-seq", &["mm-data", "mm-datasets"]),
            ("mm-encoders", &["mm-data", "mm-seq"]),
            ("mm-fusion", &[]),
            ("mm-train", &["mm-data", "mm-datasets", "mm-seq", "mm-encoders", "mm-fusion"]),
            ("mm-speech", &["mm-data", "mm-seq", "mm-train"]),
        ];
        let root = crate::workspace_root();
        for (krate, ok) in allowed {
            let manifest = fs::read_to_string(root.join("crates").join(krate).join("Cargo.toml"))
                .expect("crate manifest");
            let mut section = String::new();
            for line in manifest.lines().map(str::trim) {
                if line.starts_with('[') {
                    section = line.to_string();
                } else if section == "[dependencies]" || section == "[dev-dependencies]" {
                    let Some(name) = line.split(['.', ' ', '=']).next() else { continue };
                    if name.starts_with("mm-") {
                        assert!(ok.contains(&name), "{krate} must not depend on {name}");
                    }
                }
            }
        }
    }

    /// The tree is formatted as `rustfmt.toml` says (the workspace, the fuzz targets' workspace
    /// of their own, and the downstream example's). Skipped, with a message, where rustfmt is not installed.
    #[test]
    fn sources_are_formatted() {
        let root = crate::workspace_root();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let fmt = |args: &[&str]| {
            std::process::Command::new(&cargo).current_dir(&root).args(args).output()
        };
        match fmt(&["fmt", "--version"]) {
            Ok(o) if o.status.success() => {}
            _ => {
                eprintln!("skipped: cargo fmt is not installed (rustup component add rustfmt)");
                return;
            }
        }
        for args in [
            &["fmt", "--all", "--check"][..],
            &["fmt", "--check", "--manifest-path", "fuzz/Cargo.toml"],
            &["fmt", "--check", "--manifest-path", "examples/downstream/Cargo.toml"],
        ] {
            let o = fmt(args).expect("run cargo fmt");
            let diff = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success(),
                "`cargo {}` found unformatted code; run `cargo fmt` in each:\n{}{}",
                args.join(" "),
                &diff[..diff.len().min(4000)],
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}
