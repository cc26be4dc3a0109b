//! Resumable downloads over HTTP(S): a `.part` file that grows until it is complete and only
//! then takes the final name, HTTP `Range` requests to resume after a broken connection or a
//! killed process, retries with exponential back-off, and a progress bar on a terminal.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{Error, Result};

/// How downloads behave.
#[derive(Debug, Clone)]
pub struct Downloader {
    agent: ureq::Agent,
    /// Retries of one URL after a failure that made no progress (a broken connection that
    /// brought new bytes does not count).
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// Progress bars on standard error (shown only when it is a terminal).
    pub progress: bool,
}

/// Why one attempt failed.
enum Failure {
    /// Worth retrying: a transport error, a cut connection, 5xx, 429.
    Retry(String),
    /// Retrying will not help (404, 403, ...).
    Final(Error),
}

impl Default for Downloader {
    fn default() -> Self {
        Downloader::new(4, Duration::from_millis(500), true)
    }
}

impl Downloader {
    /// A downloader with these retries, back-off and progress setting; connections time out
    /// after 20 s, an answer after 60 s, a whole body after 2 hours (then it resumes).
    pub fn new(retries: u32, backoff: Duration, progress: bool) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_recv_body(Some(Duration::from_secs(2 * 3600)))
            .user_agent(concat!("mm-fetch/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Downloader { agent, retries, backoff, progress }
    }

    /// Downloads the first of `urls` that works to `dest`, through `dest.part` (resumed if a
    /// previous run left one). Returns the URL used. `dest` appears only once complete.
    pub fn download(&self, urls: &[String], dest: &Path) -> Result<String> {
        let part = part_path(dest);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let label = dest.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let mut last = String::from("no URL to try");
        let mut final_error = None;
        for url in urls {
            let mut failures = 0u32;
            loop {
                let before = size_of(&part);
                match self.attempt(url, &part, &label) {
                    Ok(()) => {
                        fs::rename(&part, dest).map_err(|e| Error::io(dest, e))?;
                        return Ok(url.clone());
                    }
                    Err(Failure::Final(e)) => {
                        final_error = Some(e);
                        break;
                    }
                    Err(Failure::Retry(detail)) => {
                        last = format!("{url}: {detail}");
                        if size_of(&part) <= before {
                            failures += 1;
                        }
                        if failures > self.retries {
                            break;
                        }
                        let wait = self.backoff * 2u32.saturating_pow(failures.saturating_sub(1));
                        if self.progress {
                            eprintln!(
                                "  {label}: {detail}; retrying in {:.1} s",
                                wait.as_secs_f64()
                            );
                        }
                        std::thread::sleep(wait);
                    }
                }
            }
        }
        if let Some(e) = final_error {
            if urls.len() == 1 {
                return Err(e);
            }
            last = format!("{last}; {e}");
        }
        Err(Error::Unreachable { file: label, tried: urls.join(", "), detail: last })
    }

    fn attempt(&self, url: &str, part: &Path, label: &str) -> Result<(), Failure> {
        let offset = size_of(part);
        let mut request = self.agent.get(url);
        if offset > 0 {
            request = request.header("Range", format!("bytes={offset}-"));
        }
        let response = request.call().map_err(|e| Failure::Retry(e.to_string()))?;
        let status = response.status().as_u16();
        let length = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let start = match status {
            200 => 0,
            206 => {
                let range = response
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if content_range_start(range) != Some(offset) {
                    remove(part);
                    return Err(Failure::Retry(format!("the host answered range {range:?} to a request from byte {offset}; starting over")));
                }
                offset
            }
            416 => {
                remove(part);
                return Err(Failure::Retry(
                    "the host refused to resume (416); starting over".into(),
                ));
            }
            429 | 500..=599 => return Err(Failure::Retry(format!("HTTP {status}"))),
            _ => {
                let reason = response.status().canonical_reason().unwrap_or("").to_string();
                return Err(Failure::Final(Error::Http { url: url.into(), status, reason }));
            }
        };
        let total = length.map(|l| l + start);
        let file = if start == 0 {
            File::create(part)
        } else {
            OpenOptions::new().append(true).open(part)
        };
        let mut file = file.map_err(|e| Failure::Final(Error::io(part, e)))?;
        let bar = if self.progress {
            ProgressBar::new(total.unwrap_or(0))
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "  {prefix} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(label.to_string());
        bar.set_position(start);
        let mut body = response.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 16];
        let mut written = start;
        let outcome = loop {
            match body.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    if let Err(e) = file.write_all(&buf[..n]) {
                        break Err(Failure::Final(Error::io(part, e)));
                    }
                    written += n as u64;
                    bar.set_position(written);
                }
                Err(e) => {
                    break Err(Failure::Retry(format!(
                        "connection lost after {written} bytes: {e}"
                    )))
                }
            }
        };
        bar.finish_and_clear();
        file.flush().map_err(|e| Failure::Final(Error::io(part, e)))?;
        outcome?;
        match total {
            Some(total) if written != total => {
                Err(Failure::Retry(format!("connection closed at {written} of {total} bytes")))
            }
            _ => Ok(()),
        }
    }
}

/// Where a download grows until it is complete.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

fn size_of(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn remove(path: &Path) {
    // A missing file is already the wanted state.
    let _ = fs::remove_file(path);
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` header.
fn content_range_start(value: &str) -> Option<u64> {
    value.trim().strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_content_range() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes */200"), None);
        assert_eq!(part_path(Path::new("/a/b.tar.gz")), PathBuf::from("/a/b.tar.gz.part"));
    }
}
