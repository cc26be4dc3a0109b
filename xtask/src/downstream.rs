//! mm's crates used from a project outside the workspace: the environment such a project needs
//! (`cargo xtask setup --print-env`), and the check that `examples/downstream/` builds and runs
//! the way the README's "Use the crates in your own project" says (`cargo xtask test-downstream`,
//! and the last step of `cargo xtask test`).

use std::env;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::libtorch::{self, Libtorch};

/// The example project, relative to the workspace root.
pub const EXAMPLE_DIR: &str = "examples/downstream";
/// Its binary.
const EXAMPLE_BIN: &str = "mm-downstream-example";
/// How the example is built and run, with `MM` the workspace root: the README shows these lines
/// (a unit test checks it). `test -n` because `eval` of nothing (a failed set-up) succeeds.
pub const SCRIPT: &str = r#"eval "$(cd "$MM" && cargo xtask setup --print-env)" &&
test -n "$LIBTORCH" &&
cargo run --manifest-path "$MM/examples/downstream/Cargo.toml" --target-dir "$MM/target""#;
/// The test accuracy the example must reach: each of its two modalities alone is at chance
/// (0.5) by construction, so this needs the fusion.
pub const MIN_ACCURACY: f64 = 0.9;

/// The `LIBTORCH` value the workspace's own build scripts get: the user's `LIBTORCH` when they
/// set one, else the workspace link that `.cargo/config.toml` names. Giving a project outside the
/// workspace the same value lets it share the workspace's build of torch-sys (which rebuilds
/// whenever `LIBTORCH` changes).
pub fn libtorch_value(root: &Path) -> PathBuf {
    libtorch::user_libtorch(root).unwrap_or_else(|| root.join(libtorch::LINK_NAME))
}

/// The lines `cargo xtask setup --print-env` prints: comments, then one `export` a POSIX shell
/// can `eval`.
pub fn env_lines(value: &Path, libtorch: &Libtorch) -> String {
    let build = if libtorch.cuda { "CUDA build" } else { "CPU build" };
    let shown = value.display().to_string();
    let toml = shown.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "# libtorch {} ({build}) at {}, for a project outside the mm workspace.\n\
         # Either `eval \"$(cargo xtask setup --print-env)\"` in the shell that builds it, or put\n\
         # this in its .cargo/config.toml:  [env] LIBTORCH = \"{toml}\"\n\
         export LIBTORCH={}\n",
        libtorch.version,
        libtorch.dir.display(),
        shell_quote(&shown)
    )
}

/// `s` as one POSIX shell word.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Builds and runs the example as the README says: from a folder outside the checkout (so that
/// mm's `.cargo/config.toml` plays no part), with the environment `setup --print-env` prints,
/// then `cargo run`, sharing the workspace's target folder. Then runs the binary again with no
/// `LD_LIBRARY_PATH` and reads its dynamic section. Returns one line per finding.
pub fn check(root: &Path) -> Result<Vec<String>, String> {
    let outside = env::temp_dir().join(format!("mm-downstream-{}", std::process::id()));
    std::fs::create_dir_all(&outside)
        .map_err(|e| format!("cannot create {}: {e}", outside.display()))?;
    let target = root.join("target");
    println!("\ndownstream example ({EXAMPLE_DIR}), from {}:\n{SCRIPT}", outside.display());
    let start = std::time::Instant::now();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(SCRIPT).current_dir(&outside).env("MM", root);
    if libtorch::user_libtorch(root).is_none() {
        // `cargo run` handed us the workspace's LIBTORCH: take it away, the printed line must do.
        // (A LIBTORCH of the user's own stays: set-up and the workspace use it too.)
        cmd.env_remove("LIBTORCH");
    }
    let result = run_echoing(&mut cmd);
    let _ = std::fs::remove_dir(&outside);
    let stdout = result?;
    let mut found = vec![format!(
        "built and ran with `cargo run` in {:.0} s: {}",
        start.elapsed().as_secs_f64(),
        accuracy_line(&stdout)?
    )];

    let binary = target.join("debug").join(EXAMPLE_BIN);
    let mut direct = Command::new(&binary);
    direct.env_remove("LD_LIBRARY_PATH").env_remove("LIBTORCH");
    let stdout = run_echoing(&mut direct)?;
    found.push(format!("ran without LD_LIBRARY_PATH: {}", accuracy_line(&stdout)?));

    let lt = libtorch::check_libtorch(&root.join(libtorch::LINK_NAME))?;
    let out = Command::new("readelf")
        .arg("-d")
        .arg(&binary)
        .output()
        .map_err(|e| format!("could not run readelf (binutils): {e}"))?;
    let dynamic = String::from_utf8_lossy(&out.stdout);
    let want_cuda = lt.cuda && env::var("MM_LINK_CUDA").map_or(true, |v| v != "0");
    found.push(check_dynamic(&dynamic, &lt.dir.join("lib"), want_cuda)?);
    Ok(found)
}

/// Runs `cmd`, its standard error passed through and its standard output echoed line by line
/// and returned; fails on a non-zero exit.
fn run_echoing(cmd: &mut Command) -> Result<String, String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not run {:?}: {e}", cmd.get_program()))?;
    let mut text = String::new();
    for line in BufReader::new(child.stdout.take().ok_or("stdout is not piped")?).lines() {
        let Ok(line) = line else { break };
        println!("{line}");
        text.push_str(&line);
        text.push('\n');
    }
    let status = child.wait().map_err(|e| format!("waiting for {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        Ok(text)
    } else {
        Err(format!("{:?} failed ({status})", cmd.get_program()))
    }
}

/// The example's `accuracy: X ...` line, checked against [`MIN_ACCURACY`].
fn accuracy_line(stdout: &str) -> Result<String, String> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("accuracy: "))
        .ok_or("the example printed no `accuracy:` line")?;
    let value: f64 = line["accuracy: ".len()..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("cannot read the accuracy in {line:?}"))?;
    if value >= MIN_ACCURACY {
        Ok(line.to_string())
    } else {
        Err(format!("accuracy {value} is below {MIN_ACCURACY}: {line:?}"))
    }
}

/// Checks `readelf -d` output: a RUNPATH (or RPATH) to `lib_dir`, and `libtorch_cuda.so` among
/// the needed libraries exactly when `want_cuda`.
fn check_dynamic(dynamic: &str, lib_dir: &Path, want_cuda: bool) -> Result<String, String> {
    let lib_dir = lib_dir.display().to_string();
    let paths: Vec<&str> = dynamic
        .lines()
        .filter(|l| l.contains("(RUNPATH)") || l.contains("(RPATH)"))
        .filter_map(|l| l.split_once('[')?.1.strip_suffix(']'))
        .flat_map(|p| p.split(':'))
        .collect();
    if !paths.contains(&lib_dir.as_str()) {
        return Err(format!("the binary's RUNPATH/RPATH {paths:?} does not name {lib_dir}"));
    }
    let cuda = dynamic.lines().any(|l| l.contains("(NEEDED)") && l.contains("[libtorch_cuda.so]"));
    if cuda != want_cuda {
        return Err(format!(
            "libtorch_cuda.so is {} the needed libraries, but the libtorch is {}",
            if cuda { "among" } else { "not among" },
            if want_cuda { "a CUDA build" } else { "a CPU build (or MM_LINK_CUDA=0)" }
        ));
    }
    Ok(format!(
        "readelf -d: runpath {lib_dir}{}",
        if cuda { ", needs libtorch_cuda.so" } else { "" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libtorch(cuda: bool) -> Libtorch {
        Libtorch { dir: PathBuf::from("/cache/torch"), version: "2.13.0+cu130".into(), cuda }
    }

    #[test]
    fn printed_environment_evaluates_in_a_shell() {
        // A path with a space and a quote survives `eval`.
        let value = Path::new("/home/a user/it's mm/.libtorch");
        let lines = env_lines(value, &libtorch(true));
        assert!(lines.contains("(CUDA build)"), "{lines}");
        assert!(lines.contains(r#"[env] LIBTORCH = "/home/a user/it's mm/.libtorch""#), "{lines}");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("eval \"$(cat <<'EOF'\n{lines}EOF\n)\"; printf %s \"$LIBTORCH\""))
            .env_remove("LIBTORCH")
            .output()
            .expect("run sh");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), value.display().to_string());
        // Everything but the export is a comment.
        let code: Vec<_> = lines.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(code, [r"export LIBTORCH='/home/a user/it'\''s mm/.libtorch'"]);
    }

    #[test]
    fn the_workspace_link_is_the_value_unless_the_user_set_one() {
        let root = crate::workspace_root();
        if env::var_os("LIBTORCH").is_none_or(|v| v == root.join(libtorch::LINK_NAME)) {
            assert_eq!(libtorch_value(&root), root.join(".libtorch"));
        }
    }

    #[test]
    fn the_readme_shows_how_the_example_is_run() {
        let readme =
            std::fs::read_to_string(crate::workspace_root().join("README.md")).expect("README.md");
        assert!(readme.contains(&format!("```sh\n{SCRIPT}\n```")), "README lacks:\n{SCRIPT}");
        assert!(readme.contains(&format!("it must reach {MIN_ACCURACY}")));
    }

    #[test]
    fn reads_and_checks_the_accuracy() {
        assert!(accuracy_line("device: Cpu\naccuracy: 0.990 on 400 test samples\n").is_ok());
        let err = accuracy_line("accuracy: 0.612 on 400 test samples\n").expect_err("too low");
        assert!(err.contains("below 0.9"), "{err}");
        assert!(accuracy_line("loss: 0.1\n").is_err());
    }

    #[test]
    fn checks_the_runpath_and_the_cuda_library() {
        let dynamic = "\
 0x000000000000001d (RUNPATH)            Library runpath: [/x/torch/lib:/y]
 0x0000000000000001 (NEEDED)             Shared library: [libtorch_cuda.so]
 0x0000000000000001 (NEEDED)             Shared library: [libtorch_cpu.so]
";
        let lib = Path::new("/x/torch/lib");
        assert!(check_dynamic(dynamic, lib, true).expect("fine").contains("libtorch_cuda.so"));
        assert!(check_dynamic(dynamic, lib, false).is_err());
        assert!(check_dynamic(dynamic, Path::new("/elsewhere/lib"), true).is_err());
        let cpu = dynamic.replace("libtorch_cuda.so", "libc10.so");
        assert!(check_dynamic(&cpu, lib, false).is_ok());
        assert!(check_dynamic(&cpu, lib, true).is_err());
    }
}
