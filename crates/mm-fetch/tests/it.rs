//! Integration tests of mm-fetch: real downloads over loopback from a server this test starts,
//! serving the shared data mirror (`../shared/data/mirror`) and archives the tests make.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use mm_fetch::download::Downloader;
use mm_fetch::registry::{find, Artifact, Check, DataSet, Layout, Unpack};
use mm_fetch::serve::{Faults, MirrorServer};
use mm_fetch::unpack::sha256_file;
use mm_fetch::{fetch, presence, Error, FetchOptions, Presence};

/// The real data sets beside the repository (`../shared/data`, or `MM_SHARED_DATA`). CI always
/// has them, so there a missing folder fails the test; elsewhere the test says it skips.
fn shared_data() -> Option<PathBuf> {
    let dir = match std::env::var_os("MM_SHARED_DATA") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
    };
    if dir.is_dir() {
        Some(dir)
    } else if std::env::var_os("CI").is_some() {
        panic!("{} is missing: CI must provide the shared data", dir.display());
    } else {
        eprintln!("skipped: no shared data at {}", dir.display());
        None
    }
}

/// A fresh, empty folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mm-fetch-it-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// Options for tests: a mirror, quick retries, no progress bars.
fn options(dir: &Path, mirror: &str) -> FetchOptions {
    let mut o = FetchOptions::new(dir);
    o.mirror = Some(mirror.to_string());
    o.downloader = Downloader::new(3, Duration::from_millis(10), false);
    o
}

/// Nothing but the data sets' folders (no staging, no leftovers) under `dir`.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned())).collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn gunzip(path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(fs::File::open(path)?).read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn fetches_verifies_and_converts_mnist_and_fsdd_from_the_mirror() -> Result<()> {
    let Some(shared) = shared_data() else { return Ok(()) };
    let server = MirrorServer::start(shared.join("mirror"))?;
    let dir = scratch("real");
    let o = options(&dir, &format!("{}/", server.url()));

    let mnist = fetch(&find("mnist")?, &o)?;
    assert!(mnist.fetched);
    assert_eq!(
        mnist.record.conversion.splits,
        BTreeMap::from([("test".into(), 10_000), ("train".into(), 60_000)])
    );
    assert!(mnist.record.sources.iter().all(|s| s.verified), "{:?}", mnist.record.sources);
    // The manifest's labels are MNIST's test-set label counts, and a PNG holds the idx pixels.
    let manifest = fs::read_to_string(dir.join("mnist/manifest.jsonl"))?;
    let mut test_counts = [0usize; 10];
    let mut first_test = None;
    for line in manifest.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if v["split"] == "test" {
            first_test.get_or_insert(v.clone());
            test_counts[v["label"].as_str().context("label")?.parse::<usize>()?] += 1;
        }
    }
    assert_eq!(test_counts, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
    let first_test = first_test.context("a test sample")?;
    let png = image::open(dir.join("mnist").join(first_test["image"].as_str().context("image")?))?
        .to_luma8();
    let idx = gunzip(&shared.join("mirror/mnist/t10k-images-idx3-ubyte.gz"))?;
    assert_eq!(png.as_raw().as_slice(), &idx[16..16 + 784]);
    assert_eq!(
        fs::read(dir.join("mnist/raw/t10k-labels-idx1-ubyte"))?,
        gunzip(&shared.join("mirror/mnist/t10k-labels-idx1-ubyte.gz"))?
    );

    let fsdd = fetch(&find("fsdd")?, &o)?;
    assert_eq!(
        fsdd.record.conversion.splits,
        BTreeMap::from([("test".into(), 300), ("train".into(), 2700)])
    );
    for line in fs::read_to_string(dir.join("fsdd/manifest.jsonl"))?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let audio = dir.join("fsdd").join(v["audio"].as_str().context("audio")?);
        assert!(fs::read(&audio)?.starts_with(b"RIFF"), "{}", audio.display());
        let name = v["id"].as_str().context("id")?;
        let take = mm_fetch::fsdd::Name::parse(name).context("an FSDD name")?.take;
        assert_eq!(v["split"] == "test", take < 5);
    }
    assert_eq!(entries(&dir), ["fsdd", "mnist"], "downloads and staging are cleaned up");

    // A second fetch finds them present and asks the host for nothing.
    let asked = server.served().len();
    assert!(!fetch(&find("mnist")?, &o)?.fetched);
    assert_eq!(server.served().len(), asked);
    assert!(matches!(presence(&dir, &find("fsdd")?), Presence::Present(_)));
    // --force fetches again and replaces the folder whole.
    let mut forced = o.clone();
    forced.force = true;
    assert!(fetch(&find("fsdd")?, &forced)?.fetched);
    assert_eq!(entries(&dir), ["fsdd", "mnist"]);
    Ok(())
}

#[test]
fn a_cut_connection_is_resumed_with_a_range_request() -> Result<()> {
    let Some(shared) = shared_data() else { return Ok(()) };
    let server = MirrorServer::with_faults(
        shared.join("mirror"),
        Faults { cut_responses: 2, cut_at: 1_000_000, unavailable: 0 },
    )?;
    let dir = scratch("cut");
    let fetched = fetch(&find("fsdd")?, &options(&dir, &server.url()))?;
    assert!(fetched.record.sources[0].verified);
    assert_eq!(
        fetched.record.sources[0].sha256,
        sha256_file(&shared.join("mirror/fsdd/v1.0.10.tar.gz"))?
    );
    let served = server.served();
    let ranges: Vec<Option<String>> = served.iter().map(|s| s.range.clone()).collect();
    assert_eq!(
        ranges,
        [None, Some("bytes=1000000-".into()), Some("bytes=2000000-".into())],
        "{served:?}"
    );
    assert_eq!(served.iter().map(|s| s.status).collect::<Vec<_>>(), [200, 206, 206]);
    Ok(())
}

/// Downloads cut at seeded random offsets, several times per download, and a partial file
/// of random length left by a killed process: every fetch resumes where it stopped and ends
/// with the verified archive.
#[test]
fn downloads_cut_at_random_offsets_resume_to_a_verified_file() -> Result<()> {
    let Some(shared) = shared_data() else { return Ok(()) };
    let archive = fs::read(shared.join("mirror/fsdd/v1.0.10.tar.gz"))?;
    let size = archive.len() as u64;
    let expected = sha256_file(&shared.join("mirror/fsdd/v1.0.10.tar.gz"))?;
    let mut rng: u64 = 0xC0FFEE;
    let mut draw = |n: u64| {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (rng >> 33) % n
    };
    let mut resumed = 0;
    for round in 0..4 {
        let cut_at = 1 + draw(size / 2);
        let cuts = 1 + draw(3) as usize;
        let server = MirrorServer::with_faults(
            shared.join("mirror"),
            Faults { cut_responses: cuts, cut_at, unavailable: 0 },
        )?;
        let dir = scratch(&format!("random-cuts-{round}"));
        // Every other round, a killed process left part of the file first.
        let left = if round % 2 == 1 { draw(size) } else { 0 };
        if left > 0 {
            let downloads = dir.join(".downloads/fsdd");
            fs::create_dir_all(&downloads)?;
            fs::write(downloads.join("v1.0.10.tar.gz.part"), &archive[..left as usize])?;
        }
        let fetched = fetch(&find("fsdd")?, &options(&dir, &server.url()))?;
        assert!(fetched.record.sources[0].verified, "round {round}");
        assert_eq!(
            fetched.record.sources[0].sha256, expected,
            "round {round}: cut at {cut_at} x{cuts}, {left} left"
        );
        // Each request resumes at the byte the previous one stopped at.
        let starts: Vec<u64> = server
            .served()
            .iter()
            .map(|s| {
                s.range
                    .as_deref()
                    .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
                    .unwrap_or(0)
            })
            .collect();
        let mut at = left;
        for (i, start) in starts.iter().enumerate() {
            assert_eq!(*start, at, "round {round}: request {i} of {starts:?}");
            at = (at + cut_at).min(size);
        }
        assert!(starts.len() <= cuts + 1, "round {round}: {starts:?}");
        resumed += starts.iter().filter(|s| **s > 0).count();
        assert_eq!(entries(&dir), ["fsdd"]);
    }
    assert!(resumed >= 4, "too few resumptions to mean anything: {resumed}");
    Ok(())
}

#[test]
fn a_download_left_by_a_killed_process_is_resumed() -> Result<()> {
    let Some(shared) = shared_data() else { return Ok(()) };
    let server = MirrorServer::start(shared.join("mirror"))?;
    let dir = scratch("killed");
    let archive = fs::read(shared.join("mirror/fsdd/v1.0.10.tar.gz"))?;
    let downloads = dir.join(".downloads/fsdd");
    fs::create_dir_all(&downloads)?;
    fs::write(downloads.join("v1.0.10.tar.gz.part"), &archive[..3_000_000])?;
    assert_eq!(presence(&dir, &find("fsdd")?), Presence::Absent { partial: 3_000_000 });
    fetch(&find("fsdd")?, &options(&dir, &server.url()))?;
    let served = server.served();
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].range.as_deref(), Some("bytes=3000000-"));
    assert_eq!(entries(&dir), ["fsdd"]);
    Ok(())
}

#[test]
fn a_host_that_is_briefly_unavailable_is_retried() -> Result<()> {
    let Some(shared) = shared_data() else { return Ok(()) };
    let server = MirrorServer::with_faults(
        shared.join("mirror"),
        Faults { unavailable: 2, ..Faults::default() },
    )?;
    let dir = scratch("busy");
    fetch(&find("fsdd")?, &options(&dir, &server.url()))?;
    assert_eq!(server.served().iter().map(|s| s.status).collect::<Vec<_>>(), [503, 503, 200]);
    Ok(())
}

#[test]
fn a_corrupted_file_fails_its_checksum_and_leaves_nothing_behind() -> Result<()> {
    let Some(shared) = shared_data() else { return Ok(()) };
    // A mirror whose test labels are a valid gzip of altered bytes.
    let mirror = scratch("corrupt-mirror");
    fs::create_dir_all(mirror.join("mnist"))?;
    for f in fs::read_dir(shared.join("mirror/mnist"))? {
        let f = f?;
        fs::copy(f.path(), mirror.join("mnist").join(f.file_name()))?;
    }
    let mut labels = gunzip(&shared.join("mirror/mnist/t10k-labels-idx1-ubyte.gz"))?;
    labels[100] = (labels[100] + 1) % 10;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&labels)?;
    fs::write(mirror.join("mnist/t10k-labels-idx1-ubyte.gz"), gz.finish()?)?;

    let server = MirrorServer::start(&mirror)?;
    let dir = scratch("corrupt");
    let err = fetch(&find("mnist")?, &options(&dir, &server.url()))
        .expect_err("a corrupted file must fail");
    assert!(matches!(err, Error::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("t10k-labels-idx1-ubyte.gz"), "{err}");
    assert!(!dir.join("mnist").exists(), "nothing is unpacked");
    assert!(
        !dir.join(".downloads/mnist/t10k-labels-idx1-ubyte.gz").exists(),
        "the bad download is deleted"
    );
    assert!(entries(&dir).iter().all(|e| !e.starts_with(".staging")), "{:?}", entries(&dir));
    // The files verified before it wait, complete, for the next attempt.
    assert!(dir.join(".downloads/mnist/train-images-idx3-ubyte.gz").is_file());
    Ok(())
}

#[test]
fn unreachable_and_missing_hosts_say_what_to_do() -> Result<()> {
    let dir = scratch("offline");
    // Port 1 on loopback: nothing listens there.
    let err =
        fetch(&find("mnist")?, &options(&dir, "http://127.0.0.1:1")).expect_err("nothing listens");
    let text = err.to_string();
    assert!(matches!(err, Error::Unreachable { .. }), "{text}");
    assert!(
        text.contains("--mirror")
            && text.contains("MM_DATA_MIRROR")
            && text.contains("127.0.0.1:1/mnist/train-images-idx3-ubyte.gz"),
        "{text}"
    );
    // A host without the file: a 404, said once, not retried.
    let empty = scratch("empty-mirror");
    let server = MirrorServer::start(&empty)?;
    let err = fetch(&find("fsdd")?, &options(&dir, &server.url())).expect_err("no such file");
    assert!(matches!(err, Error::Http { status: 404, .. }), "{err}");
    assert_eq!(server.served().len(), 1);
    assert_eq!(entries(&dir), [".downloads"], "only the (empty) download folder");
    Ok(())
}

/// A one-file data set around a test-made archive, checked by its SHA-256.
fn custom(name: &str, archive: &Path, strip: usize, keep: &[&str]) -> Result<DataSet> {
    let file = archive.file_name().context("name")?.to_string_lossy().into_owned();
    Ok(DataSet {
        name: name.into(),
        title: "test".into(),
        licence: "test".into(),
        homepage: "test".into(),
        artifacts: vec![Artifact {
            file: file.clone(),
            urls: vec![],
            mirror_path: file,
            size: None,
            check: Check::Sha256(sha256_file(archive)?),
            check_source: "made by the test".into(),
            unpack: Unpack::Archive {
                strip,
                keep: keep.iter().map(|k| k.to_string()).collect(),
                into: String::new(),
            },
        }],
        layout: Layout::Files,
    })
}

fn tar_gz(path: &Path, entries: &[(&str, tar::EntryType, &[u8])]) -> Result<()> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        fs::File::create(path)?,
        flate2::Compression::fast(),
    ));
    for (name, kind, data) in entries {
        let mut header = tar::Header::new_gnu();
        // Written into the raw name field, so that `..` and absolute names get through.
        let raw = &mut header.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        if *kind == tar::EntryType::Symlink {
            header.set_link_name("/etc/passwd")?;
            header.set_size(0);
        } else {
            header.set_size(data.len() as u64);
        }
        header.set_cksum();
        builder.append(&header, *data)?;
    }
    builder.into_inner()?.finish()?;
    Ok(())
}

fn zip_file(path: &Path, entries: &[(&str, &[u8])], symlink: Option<&str>) -> Result<()> {
    let mut zip = zip::ZipWriter::new(fs::File::create(path)?);
    let options = zip::write::SimpleFileOptions::default();
    for (name, data) in entries {
        zip.start_file(*name, options)?;
        zip.write_all(data)?;
    }
    if let Some(link) = symlink {
        zip.add_symlink(link, "/etc/passwd", options)?;
    }
    zip.finish()?;
    Ok(())
}

#[test]
fn archives_with_entries_escaping_the_folder_are_refused() -> Result<()> {
    let mirror = scratch("unsafe-mirror");
    let dir = scratch("unsafe");
    let server = MirrorServer::start(&mirror)?;
    let o = options(&dir.join("data"), &server.url());
    use tar::EntryType::{Regular, Symlink};
    type Make = Box<dyn Fn(&Path) -> Result<()>>;
    let cases: Vec<(&str, Make, &str)> = vec![
        (
            "dotdot.tar.gz",
            Box::new(|p| {
                tar_gz(
                    p,
                    &[("top/ok.txt", Regular, b"fine"), ("top/../../escape.txt", Regular, b"evil")],
                )
            }),
            "`..`",
        ),
        (
            "absolute.tar.gz",
            Box::new(|p| tar_gz(p, &[("/tmp/escape.txt", Regular, b"evil")])),
            "absolute",
        ),
        (
            "link.tar.gz",
            Box::new(|p| {
                tar_gz(p, &[("top/ok.txt", Regular, b"fine"), ("top/link.txt", Symlink, b"")])
            }),
            "symbolic link",
        ),
        (
            "dotdot.zip",
            Box::new(|p| zip_file(p, &[("top/ok.txt", b"fine"), ("../escape.txt", b"evil")], None)),
            "`..`",
        ),
        (
            "link.zip",
            Box::new(|p| zip_file(p, &[("top/ok.txt", b"fine")], Some("top/link.txt"))),
            "symbolic link",
        ),
    ];
    for (file, make, why) in cases {
        let archive = mirror.join(file);
        make(&archive)?;
        let set = custom("unsafe", &archive, 1, &["*.txt"])?;
        let err = fetch(&set, &o).expect_err(file);
        assert!(
            matches!(err, Error::Unsafe { .. }) && err.to_string().contains(why),
            "{file}: {err}"
        );
        assert!(!dir.join("data/unsafe").exists(), "{file}: nothing unpacked");
        assert!(
            !dir.join("escape.txt").exists() && !dir.join("data/escape.txt").exists(),
            "{file}"
        );
        assert!(entries(&dir.join("data")).iter().all(|e| !e.starts_with(".staging")), "{file}");
    }
    // The same layout without the bad entry unpacks.
    let archive = mirror.join("good.tar.gz");
    tar_gz(&archive, &[("top/ok.txt", Regular, b"fine"), ("top/skip.bin", Regular, b"not kept")])?;
    fetch(&custom("good", &archive, 1, &["*.txt"])?, &o)?;
    assert_eq!(fs::read(dir.join("data/good/ok.txt"))?, b"fine");
    assert!(!dir.join("data/good/skip.bin").exists());
    Ok(())
}

/// A registry entry with its check replaced by the SHA-256 of a test-made stand-in (same
/// layout as upstream's archive), so that the real unpack rules and converter run.
fn stand_in(name: &str, mirror: &Path) -> Result<DataSet> {
    let mut set = find(name)?;
    for a in &mut set.artifacts {
        a.check = Check::Sha256(sha256_file(&mirror.join(&a.mirror_path))?);
    }
    Ok(set)
}

#[test]
fn cifar10_esc50_flickr8k_and_glove_convert_from_their_upstream_layouts() -> Result<()> {
    let Some(shared) = shared_data() else { return Ok(()) };
    let mirror = scratch("layouts-mirror");
    let dir = scratch("layouts");
    for sub in ["cifar10", "esc50", "flickr8k", "glove"] {
        fs::create_dir_all(mirror.join(sub))?;
    }
    // CIFAR-10: two records per training batch, three test records.
    let classes = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";
    let record = |label: u8, seed: u8| -> Vec<u8> {
        std::iter::once(label).chain((0..3072u32).map(|i| (i as u8).wrapping_mul(seed))).collect()
    };
    let mut entries: Vec<(String, Vec<u8>)> = (1..=5)
        .map(|b| {
            (
                format!("cifar-10-batches-bin/data_batch_{b}.bin"),
                [record(b, 3), record(9, 5)].concat(),
            )
        })
        .collect();
    entries.push((
        "cifar-10-batches-bin/test_batch.bin".into(),
        [record(0, 7), record(1, 11), record(2, 13)].concat(),
    ));
    entries.push(("cifar-10-batches-bin/batches.meta.txt".into(), classes.as_bytes().to_vec()));
    entries.push(("cifar-10-batches-bin/readme.html".into(), b"<p>not kept</p>".to_vec()));
    let refs: Vec<(&str, tar::EntryType, &[u8])> =
        entries.iter().map(|(n, d)| (n.as_str(), tar::EntryType::Regular, d.as_slice())).collect();
    tar_gz(&mirror.join("cifar10/cifar-10-binary.tar.gz"), &refs)?;
    // ESC-50: three rows, one whose clip is missing from the archive.
    let csv = "filename,fold,target,category,esc10,src_file,take\n1-100032-A-0.wav,1,0,dog,True,100032,A\n4-1000-A-1.wav,4,1,rooster,False,1000,A\n5-9032-A-0.wav,5,0,dog,True,9032,A\n";
    zip_file(
        &mirror.join("esc50/ESC-50-master.zip"),
        &[
            ("ESC-50-master/meta/esc50.csv", csv.as_bytes()),
            ("ESC-50-master/audio/1-100032-A-0.wav", b"RIFF1"),
            ("ESC-50-master/audio/5-9032-A-0.wav", b"RIFF3"),
            ("ESC-50-master/README.md", b"x"),
        ],
        None,
    )?;
    // Flickr8k: the real caption and split files, and three of the images.
    let text = shared.join("flickr8k");
    let first = |file: &str| -> Result<String> {
        Ok(fs::read_to_string(text.join(file))?
            .lines()
            .next()
            .context("a line")?
            .trim()
            .to_string())
    };
    let picks = [
        first("Flickr_8k.trainImages.txt")?,
        first("Flickr_8k.devImages.txt")?,
        first("Flickr_8k.testImages.txt")?,
    ];
    let images: Vec<(String, Vec<u8>)> = picks
        .iter()
        .map(|p| (format!("Flicker8k_Dataset/{p}"), b"\xff\xd8 jpeg".to_vec()))
        .collect();
    let image_refs: Vec<(&str, &[u8])> =
        images.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
    zip_file(&mirror.join("flickr8k/Flickr8k_Dataset.zip"), &image_refs, None)?;
    let names = [
        "Flickr8k.token.txt",
        "Flickr_8k.trainImages.txt",
        "Flickr_8k.devImages.txt",
        "Flickr_8k.testImages.txt",
    ];
    let texts: Vec<Vec<u8>> =
        names.iter().map(|n| fs::read(text.join(n))).collect::<Result<_, _>>()?;
    let text_refs: Vec<(&str, &[u8])> =
        names.iter().zip(&texts).map(|(n, d)| (*n, d.as_slice())).collect();
    zip_file(&mirror.join("flickr8k/Flickr8k_text.zip"), &text_refs, None)?;
    // GloVe: the first 100 words of the real 50-d vectors.
    let glove: String = fs::read_to_string(shared.join("glove/glove.6B.50d.top20k.txt"))?
        .lines()
        .take(100)
        .map(|l| format!("{l}\n"))
        .collect();
    zip_file(&mirror.join("glove/glove.6B.zip"), &[("glove.6B.50d.txt", glove.as_bytes())], None)?;

    let server = MirrorServer::start(&mirror)?;
    let o = options(&dir, &server.url());

    let cifar = fetch(&stand_in("cifar10", &mirror)?, &o)?;
    assert_eq!(
        cifar.record.conversion.splits,
        BTreeMap::from([("test".into(), 3), ("train".into(), 10)])
    );
    let manifest: Vec<serde_json::Value> = fs::read_to_string(dir.join("cifar10/manifest.jsonl"))?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(manifest[0]["label"], "automobile");
    assert_eq!(manifest[1]["label"], "truck");
    let test0 = manifest.iter().find(|m| m["id"] == "test-00001").context("test-00001")?;
    assert_eq!(test0["label"], "automobile");
    let png =
        image::open(dir.join("cifar10").join(test0["image"].as_str().context("image")?))?.to_rgb8();
    let planes = &record(1, 11)[1..];
    assert_eq!(
        png.get_pixel(5, 2).0,
        [planes[69], planes[1024 + 69], planes[2048 + 69]],
        "planes become RGB pixels"
    );
    assert!(!dir.join("cifar10/cifar-10-batches-bin/readme.html").exists());

    let esc = fetch(&stand_in("esc50", &mirror)?, &o)?;
    assert_eq!(
        esc.record.conversion.splits,
        BTreeMap::from([("test".into(), 1), ("train".into(), 1)])
    );
    assert_eq!(esc.record.conversion.dropped.len(), 1);
    assert_eq!(esc.record.conversion.dropped[0].id, "4-1000-A-1");

    let flickr = fetch(&stand_in("flickr8k", &mirror)?, &o)?;
    assert_eq!(
        flickr.record.conversion.splits,
        BTreeMap::from([("test".into(), 5), ("train".into(), 5), ("val".into(), 5)])
    );
    let captions = fs::read_to_string(text.join("Flickr8k.token.txt"))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    assert_eq!(
        flickr.record.conversion.dropped.len(),
        captions - 15,
        "every other caption is reported"
    );
    let lines = fs::read_to_string(dir.join("flickr8k/manifest.jsonl"))?;
    let sample: serde_json::Value =
        serde_json::from_str(lines.lines().next().context("a sample")?)?;
    assert!(dir.join("flickr8k").join(sample["image"].as_str().context("image")?).is_file());
    assert!(sample["text"].as_str().is_some_and(|t| !t.is_empty()));

    let vectors = fetch(&stand_in("glove", &mirror)?, &o)?;
    assert!(vectors.record.conversion.splits.is_empty());
    assert_eq!(fs::read_to_string(dir.join("glove/glove.6B.50d.txt"))?, glove);
    Ok(())
}

/// A safetensors file of `tensors` (name, shape) of f32 numbers 0, 1, 2, ... in a row.
fn safetensors_bytes(tensors: &[(&str, &[u64])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape) in tensors {
        let start = data.len();
        for i in 0..shape.iter().product::<u64>() {
            data.extend_from_slice(&(i as f32).to_le_bytes());
        }
        header.insert(name.to_string(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}));
    }
    let header = serde_json::to_vec(&header).expect("header");
    [&(header.len() as u64).to_le_bytes()[..], &header, &data].concat()
}

/// Pretrained weights come through the same downloader: kept as they are in `DIR/NAME/`, with
/// `fetched.json`; a safetensors file that is cut short or has junk appended is refused by
/// name before anything is placed, whatever its (unknown) digest; `--list` shows the weights
/// apart from the data sets.
#[test]
fn pretrained_weights_are_fetched_whole_or_refused() -> Result<()> {
    let mirror = scratch("weights-mirror");
    let dir = scratch("weights");
    fs::create_dir_all(mirror.join("bert-base-uncased"))?;
    fs::create_dir_all(mirror.join("resnet50"))?;
    fs::create_dir_all(mirror.join("vgg16"))?;
    let bert = safetensors_bytes(&[
        ("bert.embeddings.word_embeddings.weight", &[30, 8]),
        ("bert.pooler.dense.bias", &[8]),
    ]);
    fs::write(mirror.join("bert-base-uncased/model.safetensors"), &bert)?;
    fs::write(
        mirror.join("bert-base-uncased/config.json"),
        br#"{"vocab_size": 30, "hidden_size": 8}"#,
    )?;
    fs::write(mirror.join("bert-base-uncased/tokenizer.json"), br#"{"version": "1.0"}"#)?;
    let resnet = safetensors_bytes(&[("conv1.weight", &[64, 3, 7, 7]), ("fc.bias", &[1000])]);
    fs::write(mirror.join("resnet50/model.safetensors"), &resnet[..resnet.len() - 100])?;
    fs::write(mirror.join("vgg16/model.safetensors"), [&resnet[..], b"<html>"].concat())?;
    let server = MirrorServer::start(&mirror)?;
    let o = options(&dir, &server.url());

    let fetched = fetch(&find("bert-base-uncased")?, &o)?;
    assert_eq!(fetched.record.sources.len(), 3);
    assert!(
        fetched.record.sources.iter().all(|s| !s.verified && s.sha256.len() == 64),
        "{:?}",
        fetched.record.sources
    );
    assert_eq!(fs::read(dir.join("bert-base-uncased/model.safetensors"))?, bert);
    assert!(
        dir.join("bert-base-uncased/tokenizer.json").is_file()
            && dir.join("bert-base-uncased/fetched.json").is_file()
    );
    assert!(!dir.join("bert-base-uncased/manifest.jsonl").exists(), "weights have no manifest");
    assert_eq!(
        mm_fetch::unpack::check_safetensors(&dir.join("bert-base-uncased/model.safetensors"))?,
        2
    );

    // A CLIP model folder: the weights and the three files transformers reads beside them.
    let clip = mirror.join("clip-vit-base-patch32");
    fs::create_dir_all(&clip)?;
    let weights =
        safetensors_bytes(&[("logit_scale", &[1]), ("visual_projection.weight", &[4, 8])]);
    fs::write(clip.join("model.safetensors"), &weights)?;
    for f in ["config.json", "tokenizer.json", "preprocessor_config.json"] {
        fs::write(clip.join(f), b"{}")?;
    }
    let fetched = fetch(&find("clip-vit-base-patch32")?, &o)?;
    assert_eq!(fetched.record.sources.len(), 4);
    for f in ["model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json"] {
        assert!(dir.join("clip-vit-base-patch32").join(f).is_file(), "{f}");
    }

    for (name, says) in [("resnet50", "cut short"), ("vgg16", "something appended")] {
        let e = fetch(&find(name)?, &o).expect_err("a broken file").to_string();
        assert!(
            e.contains("model.safetensors")
                && e.contains("not a whole safetensors file")
                && e.contains(says),
            "{name}: {e}"
        );
        assert!(!dir.join(name).exists(), "{name}: nothing placed");
        assert!(
            !dir.join(".downloads").join(name).join("model.safetensors").exists(),
            "{name}: the bad download is deleted"
        );
    }
    let left = entries(&dir);
    assert!(
        left.contains(&"bert-base-uncased".to_string())
            && left.contains(&"clip-vit-base-patch32".to_string())
            && !left.iter().any(|e| e.starts_with(".staging") || e == "resnet50" || e == "vgg16"),
        "{left:?}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mm-fetch"))
        .args(["--list", "--dir"])
        .arg(&dir)
        .env_remove("MM_DATA_MIRROR")
        .output()?;
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let (data_part, weights_part) =
        listing.split_once("pretrained weights (").context("a weights section")?;
    assert!(data_part.contains("mnist") && !data_part.contains("bert-base-uncased"), "{listing}");
    for name in [
        "resnet18",
        "resnet50",
        "vgg16",
        "bert-base-uncased",
        "clip-vit-base-patch32",
        "clip-vit-base-patch16",
        "whisper-tiny",
        "whisper-base",
        "whisper-small",
    ] {
        assert!(weights_part.lines().any(|l| l.starts_with(name)), "{name}: {listing}");
    }
    assert!(
        weights_part
            .lines()
            .skip_while(|l| !l.starts_with("bert-base-uncased"))
            .nth(1)
            .is_some_and(|l| l.contains("present")),
        "{listing}"
    );
    Ok(())
}

/// The command behind `cargo xtask fetch-data`: fetch from a mirror, list, and fail clearly.
#[test]
fn the_command_fetches_lists_and_explains_failures() -> Result<()> {
    let Some(shared) = shared_data() else { return Ok(()) };
    let server = MirrorServer::start(shared.join("mirror"))?;
    let dir = scratch("command");
    let run = |args: &[&str], env: &[(&str, &str)]| -> Result<std::process::Output> {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mm-fetch"));
        cmd.args(args).env_remove("MM_DATA_MIRROR").env_remove("MM_DATA_DIR");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Ok(cmd.output()?)
    };
    let text = |o: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };
    let d = dir.to_str().context("utf-8")?;
    let mirror = format!("{}/", server.url());
    let out = run(&["--dir", d, "--mirror", &mirror, "fsdd"], &[])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("2700 train samples"), "{}", text(&out));
    // The environment gives the folder too; the list shows what is there and what is not.
    let out = run(&["--list"], &[("MM_DATA_DIR", d)])?;
    let listing = text(&out);
    assert!(out.status.success());
    let line = |name: &str| {
        listing.lines().skip_while(|l| !l.starts_with(name)).nth(1).unwrap_or_default().to_string()
    };
    assert!(line("fsdd").contains("present (300 test, 2700 train)"), "{listing}");
    assert!(line("mnist").contains("not fetched"), "{listing}");
    assert!(listing.contains("UNVERIFIED"), "{listing}");
    // An offline mirror from the environment, and an unknown name: exit 1 and a message.
    let out =
        run(&["--dir", d, "--retries", "0", "mnist"], &[("MM_DATA_MIRROR", "http://127.0.0.1:1")])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("--mirror") && text(&out).contains("127.0.0.1:1/mnist/"),
        "{}",
        text(&out)
    );
    let out = run(&["--dir", d, "cifar-100"], &[])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("unknown data set `cifar-100`; known: mnist, fashion-mnist"),
        "{}",
        text(&out)
    );
    Ok(())
}

/// Two fetches into one folder at once: the second waits for the first, then finds the data
/// set present; neither sees the other's half-written files.
#[test]
fn concurrent_fetches_into_one_folder_take_turns() -> Result<()> {
    let Some(shared) = shared_data() else { return Ok(()) };
    let server = MirrorServer::start(shared.join("mirror"))?;
    let dir = scratch("concurrent");
    let o = options(&dir, &server.url());
    let set = find("fsdd")?;
    let results: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> =
            (0..2).map(|_| s.spawn(|| fetch(&set, &o).map(|f| f.fetched))).collect();
        handles.into_iter().map(|h| h.join().expect("no panic")).collect::<Result<_, _>>()
    })?;
    let mut sorted = results.clone();
    sorted.sort();
    assert_eq!(sorted, [false, true], "one fetched, the other found it present");
    assert_eq!(server.served().len(), 1, "downloaded once");
    assert_eq!(entries(&dir), ["fsdd"]);
    Ok(())
}

/// The real MNIST test set, read from the gzip files of the download mirror: shapes, pixel
/// range and the label counts published for this set (980 zeros, 1135 ones, ...).
#[test]
fn reads_real_mnist_idx_files() {
    let Some(data) = shared_data() else { return };
    let mnist = data.join("mirror/mnist");
    let labels = mm_fetch::idx::read_idx(mnist.join("t10k-labels-idx1-ubyte.gz")).expect("labels");
    assert_eq!(labels.shape, vec![10_000]);
    let labels = labels.into_u8().expect("u8");
    let mut counts = [0usize; 10];
    for &l in &labels {
        counts[usize::from(l)] += 1;
    }
    assert_eq!(counts, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
    let images = mm_fetch::idx::read_idx(mnist.join("t10k-images-idx3-ubyte.gz")).expect("images");
    assert_eq!(images.shape, vec![10_000, 28, 28]);
    let images = images.into_u8().expect("u8");
    // Digits are white strokes on black: corners are background, the middle has ink somewhere.
    assert!(images.contains(&255));
    assert_eq!(images[0], 0);
}
