//! mm-fetch: the data sets mm knows, fetched the careful way.
//!
//! - [`registry`]: MNIST, Fashion-MNIST, FSDD, CIFAR-10, ESC-50, Flickr8k and GloVe 6B, each
//!   with upstream URLs, licence, checksums (and who vouches for them) and a converter;
//! - [`download`]: resumable HTTP(S) downloads (`Range`), retries with back-off, progress bars;
//! - [`unpack`]: verification before anything is unpacked, and unpacking of `.gz`, `.tar.gz`
//!   and `.zip` that refuses entries escaping the target folder (absolute paths, `..`, links);
//! - [`convert`]: from each data set's own layout to mm's `manifest.jsonl`;
//! - [`idx`] and [`fsdd`]: the one reader of MNIST's idx files and the one of FSDD's
//!   recordings and names, which mm-datasets builds on (so do the benches and tests);
//! - [`fetch`](fn@fetch): all of it, into a folder that appears only once complete;
//! - [`serve`]: a loopback static server for a mirror folder (air-gapped teams, tests).
//!
//! `cargo xtask fetch-data` and the `mm-fetch` binary drive it from the command line.
//!
//! Architecture invariant: this crate knows nothing of libtorch or the other mm crates; it
//! builds in seconds, before `cargo xtask setup` has provisioned anything.
//!
//! ```no_run
//! use mm_fetch::{fetch, registry, FetchOptions};
//!
//! let mut options = FetchOptions::new("data");
//! options.mirror = Some("http://127.0.0.1:8000".into());
//! let fetched = fetch(&registry::find("mnist")?, &options)?;
//! println!("{} train samples in {}", fetched.record.conversion.splits["train"], fetched.path.display());
//! # Ok::<(), mm_fetch::Error>(())
//! ```

pub mod convert;
pub mod download;
mod error;
mod fetch;
pub mod fsdd;
pub mod idx;
pub mod registry;
pub mod serve;
pub mod unpack;

pub use error::{Error, Result};
pub use fetch::{
    fetch, presence, FetchOptions, Fetched, Presence, Record, Source, DIR_ENV, MARKER, MIRROR_ENV,
};
