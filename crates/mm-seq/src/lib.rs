//! Sequence models for time-ordered data: LSTM and GRU (uni- and bidirectional, multi-layer,
//! length-masked), a Transformer encoder and temporal convolutions, over `[B, T, F]` batches
//! with per-sample lengths; used for video frames, audio features and time series.
//!
//! Architecture invariant: mm-seq knows about tensors and sequence masks, not about where the
//! sequences came from: it may use mm-data's batch types but nothing from encoders, fusion or
//! training.
