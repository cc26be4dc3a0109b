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
            ("mm-serve", &["mm-data", "mm-train", "mm-speech"]),
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

    /// The `[section]` of a manifest as `(key, value)` pairs, one per line (`key = value`),
    /// comments and blank lines left out. Enough for the manifests of this workspace, which
    /// write every array of metadata on one line.
    fn manifest_section(manifest: &str, section: &str) -> Vec<(String, String)> {
        let mut current = String::new();
        let mut pairs = Vec::new();
        for line in manifest.lines().map(str::trim) {
            if line.starts_with('[') {
                current = line.to_string();
            } else if current == section && !line.is_empty() && !line.starts_with('#') {
                if let Some((key, value)) = line.split_once('=') {
                    pairs.push((key.trim().to_string(), value.trim().to_string()));
                }
            }
        }
        pairs
    }

    /// The strings of a one-line TOML array (`["a", "b"]`), or of a one-line string.
    fn toml_strings(value: &str) -> Vec<String> {
        value
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// The workspace's members, as their folders relative to the root.
    fn members() -> Vec<String> {
        let root = crate::workspace_root();
        let manifest = fs::read_to_string(root.join("Cargo.toml")).expect("root manifest");
        let start = manifest.find("members = [").expect("workspace members");
        let end = start + manifest[start..].find(']').expect("end of members");
        let members: Vec<String> = manifest[start + "members = [".len()..end]
            .lines()
            .map(|l| l.trim().trim_end_matches(',').trim_matches('"').to_string())
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert!(members.len() > 5, "found only the members {members:?}");
        members
    }

    /// The `[package]` section of a member's manifest.
    fn package(member: &str) -> Vec<(String, String)> {
        let path = crate::workspace_root().join(member).join("Cargo.toml");
        manifest_section(&fs::read_to_string(&path).expect(member), "[package]")
    }

    /// Whether a member is published (its manifest has no `publish = false`).
    fn is_published(member: &str) -> bool {
        !package(member).iter().any(|(k, v)| k == "publish" && v == "false")
    }

    /// The members that are published.
    fn publishable_members() -> Vec<String> {
        members().into_iter().filter(|m| is_published(m)).collect()
    }

    /// The crates.io categories (`src/boot/categories.toml` in rust-lang/crates.io) that suit
    /// this workspace; crates.io refuses a slug it does not know.
    const CATEGORIES: &[&str] = &[
        "web-programming::http-server",
        "science",
        "science::robotics",
        "computer-vision",
        "multimedia",
        "multimedia::audio",
        "multimedia::images",
        "multimedia::video",
        "multimedia::encoding",
        "command-line-utilities",
        "development-tools",
        "development-tools::build-utils",
        "web-programming::http-client",
        "encoding",
        "parser-implementations",
        "text-processing",
        "visualization",
        "mathematics",
        "algorithms",
    ];

    /// Every crate that is published has what crates.io shows and needs: a description, a
    /// licence, the repository, a README inside the crate's folder, up to five valid keywords and
    /// known categories; the library crates open their documentation with an example.
    #[test]
    fn publishable_crates_have_crates_io_metadata() {
        let root = crate::workspace_root();
        let workspace = fs::read_to_string(root.join("Cargo.toml")).expect("root manifest");
        let shared = manifest_section(&workspace, "[workspace.package]");
        let inherited = |key: &str| shared.iter().any(|(k, v)| k == key && !v.is_empty());
        let members = publishable_members();
        assert!(members.iter().any(|m| m.ends_with("mm-fusion")), "publishable: {members:?}");
        let mut problems = Vec::new();
        for member in &members {
            let dir = root.join(member);
            let manifest = fs::read_to_string(dir.join("Cargo.toml")).expect("manifest");
            let package = manifest_section(&manifest, "[package]");
            let value = |key: &str| {
                package.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).or_else(|| {
                    let workspace_key = format!("{key}.workspace");
                    package.iter().any(|(k, v)| *k == workspace_key && v == "true").then(|| {
                        if inherited(key) {
                            "(workspace)".into()
                        } else {
                            String::new()
                        }
                    })
                })
            };
            for key in ["description", "license", "repository", "readme", "keywords", "categories"]
            {
                if value(key).is_none_or(|v| v.is_empty() || v == "\"\"" || v == "[]") {
                    problems.push(format!("{member}: no `{key}`"));
                }
            }
            if let Some(readme) = value("readme") {
                let file = dir.join(readme.trim_matches('"'));
                if !file.is_file() {
                    problems.push(format!("{member}: readme {} does not exist", file.display()));
                }
            }
            let keywords = toml_strings(&value("keywords").unwrap_or_default());
            if keywords.len() > 5 {
                problems.push(format!("{member}: {} keywords, crates.io takes 5", keywords.len()));
            }
            for keyword in &keywords {
                let valid = keyword.len() <= 20
                    && keyword.starts_with(|c: char| c.is_ascii_alphabetic())
                    && keyword.chars().all(|c| c.is_ascii_alphanumeric() || "_-+".contains(c));
                if !valid {
                    problems
                        .push(format!("{member}: keyword {keyword:?} is not one crates.io takes"));
                }
            }
            let categories = toml_strings(&value("categories").unwrap_or_default());
            if categories.len() > 5 {
                problems
                    .push(format!("{member}: {} categories, crates.io takes 5", categories.len()));
            }
            for category in &categories {
                if !CATEGORIES.contains(&category.as_str()) {
                    problems.push(format!(
                        "{member}: category {category:?} is not a crates.io slug (or not in this \
                         test's list: add it from crates.io's categories.toml)"
                    ));
                }
            }
            let lib = dir.join("src/lib.rs");
            if lib.is_file() && front_page_example(&lib).is_empty() {
                problems.push(format!("{member}: src/lib.rs opens with no example"));
            }
        }
        assert!(problems.is_empty(), "crates.io metadata:\n{}", problems.join("\n"));
    }

    /// The first code block of a crate's `//!` front page, without the lines rustdoc hides.
    fn front_page_example(lib: &Path) -> Vec<String> {
        let text = fs::read_to_string(lib).unwrap_or_default();
        let doc: Vec<&str> = text
            .lines()
            .take_while(|l| l.starts_with("//!") || l.trim().is_empty())
            .map(|l| l.strip_prefix("//! ").unwrap_or(l.trim_start_matches("//!")))
            .collect();
        code_block(&doc).into_iter().filter(|l| *l != "#" && !l.starts_with("# ")).collect()
    }

    /// The lines of the first fenced code block in `lines`.
    fn code_block(lines: &[&str]) -> Vec<String> {
        let mut inside = false;
        let mut block = Vec::new();
        for line in lines {
            if line.trim_start().starts_with("```") {
                if inside {
                    return block;
                }
                inside = true;
            } else if inside {
                block.push(line.to_string());
            }
        }
        Vec::new()
    }

    /// Each library crate's README shows the example of its documentation's front page, which
    /// is compiled as a doc test, so the README's cannot drift from the code.
    #[test]
    fn readme_examples_are_the_front_page_examples() {
        let root = crate::workspace_root();
        let mut drifted = Vec::new();
        for member in publishable_members() {
            let lib = root.join(&member).join("src/lib.rs");
            if !lib.is_file() {
                continue;
            }
            let readme =
                fs::read_to_string(root.join(&member).join("README.md")).unwrap_or_default();
            let lines: Vec<&str> = readme.lines().collect();
            if code_block(&lines) != front_page_example(&lib) {
                drifted.push(member);
            }
        }
        assert!(
            drifted.is_empty(),
            "the first code block of these crates' README.md differs from their src/lib.rs front \
             page example (less the hidden `# ` lines): {drifted:?}"
        );
    }

    /// Every workspace dependency on an mm crate names the version as well as the path, and
    /// that version is the workspace's: `cargo package` turns it into the registry dependency a
    /// published crate has, and path and registry then agree.
    #[test]
    fn mm_path_dependencies_carry_the_workspace_version() {
        let manifest =
            fs::read_to_string(crate::workspace_root().join("Cargo.toml")).expect("root manifest");
        let version = manifest_section(&manifest, "[workspace.package]")
            .into_iter()
            .find(|(k, _)| k == "version")
            .map(|(_, v)| v)
            .expect("workspace.package.version");
        let deps = manifest_section(&manifest, "[workspace.dependencies]");
        let mm: Vec<_> = deps.iter().filter(|(k, _)| k.starts_with("mm-")).collect();
        assert!(mm.len() > 5, "found only {mm:?}");
        for (name, spec) in mm {
            assert!(
                spec.contains("path = ") && spec.contains(&format!("version = {version}")),
                "workspace dependency {name} = {spec} must name its path and version = {version}"
            );
        }
    }

    /// `cargo package` assembles every published crate (`--workspace`, so that the crates that
    /// depend on unpublished siblings resolve them from the packages made alongside), offline
    /// and without building, each well under crates.io's 10 MB. Skipped, with a message, where
    /// cargo's cache lacks a dependency (a fresh machine before the first build).
    #[test]
    fn every_published_crate_packages() {
        let root = crate::workspace_root();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = std::env::temp_dir().join(format!("mm-tidy-package-{}", std::process::id()));
        let mut args: Vec<String> = ["package", "--workspace", "--no-verify", "--allow-dirty"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--offline".into(), "--target-dir".into(), out.display().to_string()]);
        // The members that stay unpublished are left out by name.
        for member in members().iter().filter(|m| !is_published(m)) {
            let name = package(member).into_iter().find(|(k, _)| k == "name").expect("name").1;
            args.extend(["--exclude".into(), name.trim_matches('"').to_string()]);
        }
        let published = publishable_members();
        let o = std::process::Command::new(&cargo)
            .current_dir(&root)
            .args(&args)
            .output()
            .expect("run cargo package");
        let stderr = String::from_utf8_lossy(&o.stderr);
        if !o.status.success() && stderr.contains("offline") && !stderr.contains("`mm-") {
            eprintln!(
                "skipped: cargo's offline cache lacks a dependency (build once first):\n{stderr}"
            );
            fs::remove_dir_all(&out).ok();
            return;
        }
        assert!(o.status.success(), "`cargo {}` failed:\n{stderr}", args.join(" "));
        let mut crates: Vec<_> = fs::read_dir(out.join("package"))
            .expect("target/package")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "crate"))
            .collect();
        crates.sort();
        let sizes: Vec<_> = crates
            .iter()
            .map(|p| {
                (
                    p.file_name().unwrap_or_default().to_string_lossy().to_string(),
                    p.metadata().map(|m| m.len()).unwrap_or(0),
                )
            })
            .collect();
        fs::remove_dir_all(&out).ok();
        assert_eq!(sizes.len(), published.len(), "packages made: {sizes:?}");
        for (name, bytes) in &sizes {
            assert!(*bytes < 2 << 20, "{name} is {bytes} bytes: keep test data out of the package");
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
