//! The one error type of mm-fetch: every variant names the file, URL or archive entry at fault.

use std::path::{Path, PathBuf};

/// What went wrong, and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a local file failed.
    #[error("{path}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// No host answered: offline, a wrong address or a host that is down.
    #[error(
        "could not download {file}: {detail}\n  tried: {tried}\n  This machine may be offline or the host unreachable. Fetch from another host with \
         `--mirror URL` (or the environment variable MM_DATA_MIRROR), a folder laid out as `NAME/FILE` served over HTTP."
    )]
    Unreachable {
        /// The file being fetched.
        file: String,
        /// The URLs tried, in order.
        tried: String,
        /// The last error.
        detail: String,
    },
    /// A host answered with an error status that retrying will not fix (404, 403, ...).
    #[error("{url}: HTTP {status} {reason}")]
    Http {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// The reason phrase, or what we make of it.
        reason: String,
    },
    /// Downloaded or unpacked bytes are not the bytes the registry vouches for.
    #[error("{file}: checksum mismatch ({what}): expected {expected}, got {actual}; the download was deleted, nothing was unpacked")]
    Checksum {
        /// The downloaded file.
        file: PathBuf,
        /// What was hashed (e.g. "SHA-256 of the decompressed bytes").
        what: String,
        /// The digest the registry gives.
        expected: String,
        /// The digest computed.
        actual: String,
    },
    /// An archive entry that would land outside the target folder, or a link, or a device.
    #[error("{archive}: refusing entry `{entry}`: {why}; nothing was unpacked")]
    Unsafe {
        /// The archive.
        archive: PathBuf,
        /// The entry's name as stored.
        entry: String,
        /// Why it is refused.
        why: String,
    },
    /// An archive or data file that cannot be read as what it should be.
    #[error("{path}: {message}")]
    Format {
        /// The file (or archive entry, as `archive:entry`).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A data-set name the registry does not know.
    #[error("unknown data set `{name}`; known: {known}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names the registry knows.
        known: String,
    },
    /// A target folder that exists but was not made by a fetch: it is left alone.
    #[error("{0}: exists and was not written by mm-fetch (no fetched.json); move it away or choose another --dir")]
    Foreign(PathBuf),
    /// Bad options.
    #[error("{0}")]
    Config(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }
    /// A format error on `path`.
    pub fn format(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Format { path: path.as_ref().to_path_buf(), message: message.into() }
    }
}
