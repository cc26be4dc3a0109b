//! Codecs: files to plain arrays and back, each taking a path (or bytes) and returning arrays
//! or an error naming the file. Re-exported at the crate root (`mm_data::audio`, ...).

pub mod audio;
pub mod image;
pub mod mel;
pub mod subword;
pub mod text;
pub mod transcript;
pub mod video;
