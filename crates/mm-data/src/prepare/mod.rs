//! Preparation: what samples go through between decoding and batching (cleaning,
//! augmentation, normalisation, background noise, the per-modality pipeline and the `[data]`
//! configuration that builds it). Re-exported at the crate root (`mm_data::pipeline`, ...).

pub mod augment;
pub mod clean;
pub mod config;
pub mod noise;
pub mod normalize;
pub mod pipeline;
