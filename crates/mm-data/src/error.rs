//! The error type of mm-data: every variant says what went wrong and where (file, line, field,
//! sample id), and keeps the underlying error as its source.

use std::path::PathBuf;

/// Errors of mm-data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
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
    #[error("sample {id:?}: {source}")]
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
