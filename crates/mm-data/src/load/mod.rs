//! Loading: the manifest that describes a data set, tar shards, and the loader that turns
//! samples into batches of `tch` tensors. Re-exported at the crate root (`mm_data::loader`,
//! ...).

pub mod loader;
pub mod manifest;
pub mod shards;
