//! A small static HTTP/1.1 server for a mirror folder, on loopback: `GET` and `HEAD` with
//! `Range` support, so an air-gapped team can serve its copy of the data sets to `--mirror`,
//! and tests can exercise the real download path, optionally with injected faults (a cut
//! connection, a host that is briefly unavailable).
//!
//! ```no_run
//! let server = mm_fetch::serve::MirrorServer::start("../shared/data/mirror")?;
//! println!("fetch with --mirror {}", server.url());
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Faults to inject, for testing downloaders.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Cut this many responses short: send the full `Content-Length` but only `cut_at` bytes of
    /// the body, then close the connection.
    pub cut_responses: usize,
    /// Where those responses are cut.
    pub cut_at: u64,
    /// Answer this many requests with `503 Service Unavailable` first.
    pub unavailable: usize,
}

/// A request the server answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    /// The path asked for.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The status answered.
    pub status: u16,
}

struct Shared {
    root: PathBuf,
    faults: Faults,
    cut: AtomicUsize,
    unavailable: AtomicUsize,
    log: Mutex<Vec<Served>>,
}

/// A running server; it stops when dropped.
pub struct MirrorServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl MirrorServer {
    /// Serves `root` on a free port of 127.0.0.1.
    pub fn start(root: impl Into<PathBuf>) -> io::Result<Self> {
        MirrorServer::bind(root, Faults::default(), "127.0.0.1:0")
    }

    /// Serves `root` on a free loopback port with these faults.
    pub fn with_faults(root: impl Into<PathBuf>, faults: Faults) -> io::Result<Self> {
        MirrorServer::bind(root, faults, "127.0.0.1:0")
    }

    /// Serves `root` on `addr` (keep it on loopback unless you mean to share it).
    pub fn bind(root: impl Into<PathBuf>, faults: Faults, addr: &str) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            root: root.into(),
            cut: AtomicUsize::new(faults.cut_responses),
            unavailable: AtomicUsize::new(faults.unavailable),
            faults,
            log: Mutex::new(Vec::new()),
        });
        let thread = {
            let (stop, shared) = (stop.clone(), shared.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let shared = shared.clone();
                    std::thread::spawn(move || {
                        // A client that hangs up early is not the server's problem.
                        let _ = handle(stream, &shared);
                    });
                }
            })
        };
        Ok(MirrorServer { addr, stop, shared, thread: Some(thread) })
    }

    /// `http://127.0.0.1:PORT`, to pass as a mirror.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request answered so far.
    pub fn served(&self) -> Vec<Served> {
        self.shared.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Blocks until the process is killed (for `mm-fetch serve`).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MirrorServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Decodes `%XX` escapes; `None` for a malformed one.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The file under `root` that `path` names, if it stays inside `root`.
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let path = percent_decode(path.split(['?', '#']).next()?)?;
    let mut out = root.to_path_buf();
    for c in Path::new(path.trim_start_matches('/')).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    out.is_file().then_some(out)
}

/// `bytes=START-` or `bytes=START-END` against a body of `len` bytes.
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let (start, end) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = if end.trim().is_empty() {
        len.checked_sub(1)?
    } else {
        end.trim().parse::<u64>().ok()?.min(len.checked_sub(1)?)
    };
    (start <= end).then_some((start, end))
}

fn handle(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/").to_string());
    let mut out = stream;
    // The head, then `length` bytes of `body` (fewer when the response is cut on purpose).
    let mut respond = |status: u16,
                       reason: &str,
                       headers: &[(String, String)],
                       body: &mut dyn Read,
                       length: u64,
                       cut: Option<u64>|
     -> io::Result<()> {
        if let Ok(mut log) = shared.log.lock() {
            log.push(Served { path: path.clone(), range: range.clone(), status });
        }
        let mut head = format!(
            "HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Length: {length}\r\n"
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        if method != "HEAD" {
            io::copy(&mut body.take(cut.unwrap_or(length).min(length)), &mut out)?;
        }
        out.flush()
    };
    if method != "GET" && method != "HEAD" {
        return respond(405, "Method Not Allowed", &[], &mut io::empty(), 0, None);
    }
    if shared.unavailable.load(Ordering::SeqCst) > 0 {
        shared.unavailable.fetch_sub(1, Ordering::SeqCst);
        return respond(503, "Service Unavailable", &[], &mut &b"try again\n"[..], 10, None);
    }
    let Some(file) = resolve(&shared.root, &path) else {
        return respond(404, "Not Found", &[], &mut &b"not found\n"[..], 10, None);
    };
    let mut body = std::fs::File::open(&file)?;
    let len = body.metadata()?.len();
    let (status, reason, start, length, headers) =
        match range.as_deref().map(|r| parse_range(r, len)) {
            None => (200, "OK", 0, len, vec![("Accept-Ranges".to_string(), "bytes".to_string())]),
            Some(Some((start, end))) => (
                206,
                "Partial Content",
                start,
                end - start + 1,
                vec![("Content-Range".to_string(), format!("bytes {start}-{end}/{len}"))],
            ),
            Some(None) => {
                return respond(
                    416,
                    "Range Not Satisfiable",
                    &[("Content-Range".into(), format!("bytes */{len}"))],
                    &mut io::empty(),
                    0,
                    None,
                )
            }
        };
    body.seek(SeekFrom::Start(start))?;
    let cut = (shared.faults.cut_at < length && shared.cut.load(Ordering::SeqCst) > 0).then(|| {
        shared.cut.fetch_sub(1, Ordering::SeqCst);
        shared.faults.cut_at
    });
    respond(status, reason, &headers, &mut body, length, cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_paths() {
        assert_eq!(parse_range("bytes=10-", 100), Some((10, 99)));
        assert_eq!(parse_range("bytes=10-19", 100), Some((10, 19)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
        assert_eq!(resolve(Path::new("/"), "/../etc/passwd"), None);
    }
}
