//! The error type of mm-data: every variant says what went wrong and where (file, line, field,
//! sample id), and keeps the underlying error as its source.
//!
//! The rule of every mm crate: an error's `Display` says what went wrong at its own level, and
//! its cause is its [`std::error::Error::source`], never repeated in the `Display` (so a
//! reporter that prints the chain, as `mm` does, prints every cause once). [`report`] prints a
//! whole chain:
//!
//! ```
//! let err = mm_data::image::decode_image(std::path::Path::new("no-such.png")).unwrap_err();
//! assert_eq!(err.to_string(), "no-such.png");
//! assert!(mm_data::error::report(&err).starts_with("no-such.png: "), "{}", mm_data::error::report(&err));
//! ```

use std::path::PathBuf;

/// Errors of mm-data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened, read or written (the source says why).
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A line of a text file (a manifest, a vocabulary) is not valid.
    #[error("{file}:{line}: {message}")]
    Parse {
        /// The file (`<memory>` for a manifest built in code).
        file: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong, naming the field where there is one.
        message: String,
    },
    /// A file's contents are not what its format requires (truncated, corrupt, unsupported).
    #[error("{path}: {message}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// Loading one sample failed; the source says why.
    #[error("sample {id:?}")]
    Sample {
        /// The sample's id.
        id: String,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },
    /// A configuration value is not usable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An external program mm needs (FFmpeg, for video files) is missing or failed to start;
    /// the message says how to get it.
    #[error("{0}")]
    Tool(String),
    /// A folder is being written by another process ([`crate::fs::DirLock`]).
    #[error("{path} is in use by {holder}: wait for it to finish, or choose another folder")]
    Busy {
        /// The folder.
        path: PathBuf,
        /// Who holds it: `process PID (what it is doing)`.
        holder: String,
    },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A file at `path` whose contents are not what its format requires.
    pub fn decode(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Decode { path: path.into(), message: message.into() }
    }
}

/// Result type of mm-data.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `err` and every cause after it, joined by `": "`: the whole message, as `mm` prints it.
pub fn report(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
