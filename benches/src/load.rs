//! A load generator for HTTP servers over loopback: N clients, each on a keep-alive HTTP/1.1
//! connection, send requests back to back for a fixed time; requests per second and latency
//! percentiles come out. Used by `bench-serve` on `mm serve` and on the PyTorch peer alike.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// What one load run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Load {
    /// Concurrent clients.
    pub clients: usize,
    /// Seconds it ran.
    pub seconds: f64,
    /// Requests answered 200.
    pub ok: usize,
    /// Requests answered otherwise, or lost with their connection.
    pub errors: usize,
    /// Answered requests per second.
    pub requests_per_s: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

/// One keep-alive connection.
struct Connection {
    addr: SocketAddr,
    reader: Option<BufReader<TcpStream>>,
}

impl Connection {
    fn stream(&mut self) -> std::io::Result<&mut BufReader<TcpStream>> {
        if self.reader.is_none() {
            let s = TcpStream::connect(self.addr)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(120)))?;
            self.reader = Some(BufReader::new(s));
        }
        Ok(self.reader.as_mut().expect("connected"))
    }

    /// POSTs `body` as JSON to `path`; the status, or an I/O error (the connection is then
    /// dropped and made again on the next request).
    fn post(&mut self, path: &str, body: &[u8]) -> std::io::Result<u16> {
        let result = self.exchange(path, body);
        if result.is_err() {
            self.reader = None;
        }
        result
    }

    fn exchange(&mut self, path: &str, body: &[u8]) -> std::io::Result<u16> {
        let addr = self.addr;
        let r = self.stream()?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let s = r.get_mut();
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut line = String::new();
        r.read_line(&mut line)?;
        let status: u16 =
            line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("status line {line:?}"),
                )
            })?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((n, v)) = l.split_once(':') {
                match n.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse::<usize>().ok(),
                    "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                    "connection" => close = v.to_ascii_lowercase().contains("close"),
                    _ => {}
                }
            }
        }
        if chunked {
            loop {
                line.clear();
                r.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim(), 16).map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "chunk size")
                })?;
                let mut chunk = vec![0; size + 2];
                r.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
            }
        } else {
            let mut rest = vec![0; length.unwrap_or(0)];
            r.read_exact(&mut rest)?;
        }
        if close {
            self.reader = None;
        }
        Ok(status)
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `clients` clients POST `bodies` (each client going round them from its own offset) to
/// `addr` + `path` for `seconds`.
pub fn run(
    addr: SocketAddr,
    path: &str,
    bodies: &Arc<Vec<Vec<u8>>>,
    clients: usize,
    seconds: f64,
) -> Load {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (bodies, path) = (Arc::clone(bodies), path.to_string());
            std::thread::spawn(move || {
                let mut conn = Connection { addr, reader: None };
                let (mut latencies, mut errors, mut first_error) = (Vec::new(), 0usize, None);
                let mut k = c * 7;
                while Instant::now() < deadline {
                    let body = &bodies[k % bodies.len()];
                    k += 1;
                    let sent = Instant::now();
                    match conn.post(&path, body) {
                        Ok(200) => latencies.push(sent.elapsed().as_secs_f64() * 1e3),
                        Ok(status) => {
                            errors += 1;
                            first_error.get_or_insert(format!("status {status}"));
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e.to_string());
                        }
                    }
                }
                (latencies, errors, first_error)
            })
        })
        .collect();
    let (mut all, mut errors, mut first_error) = (Vec::new(), 0, None);
    for t in threads {
        let (l, e, f) = t.join().unwrap_or_default();
        all.extend(l);
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Load {
        clients,
        seconds: elapsed,
        ok: all.len(),
        errors,
        requests_per_s: all.len() as f64 / elapsed,
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
        first_error,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;

    /// A keep-alive server answering 200, 200, 503, ... on every connection; the load counts
    /// both, and the latencies only of what succeeded.
    #[test]
    fn answers_and_refusals_are_counted_over_keep_alive_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                std::thread::spawn(move || {
                    let mut r = BufReader::new(stream);
                    for n in 0.. {
                        let mut length = 0;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if r.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line.trim().is_empty() {
                                break;
                            }
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; length];
                        if r.read_exact(&mut body).is_err() {
                            return;
                        }
                        let (status, text) =
                            if n % 3 == 2 { (503, "busy") } else { (200, "{\"ok\":1}") };
                        let reply = format!(
                            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        if r.get_mut().write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let bodies = Arc::new(vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]);
        let l = super::run(addr, "/v1/predict", &bodies, 2, 0.3);
        assert!(l.ok > 10 && l.errors > 0, "{l:?}");
        // Two answers in three succeed on each connection.
        let share = l.ok as f64 / (l.ok + l.errors) as f64;
        assert!((share - 2.0 / 3.0).abs() < 0.05, "{l:?}");
        assert_eq!(l.first_error.as_deref(), Some("status 503"));
        assert!(l.p50_ms > 0.0 && l.p50_ms <= l.p99_ms, "{l:?}");
        assert!((l.requests_per_s - l.ok as f64 / l.seconds).abs() < 1e-9);
    }
}
