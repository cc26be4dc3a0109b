//! Fusion of modality embeddings: concatenation, weighted sum, product, gated units, tensor and
//! low-rank tensor fusion, attention and late fusion, arranged in parallel or in series. Every
//! method takes the named `[B, D_m]` embeddings of a batch plus a `[B, M]` presence mask, so a
//! missing modality is part of the API.
//!
//! Architecture invariant: mm-fusion knows nothing about encoders, data or training; it sees
//! only tensors and the presence mask, and depends on no other mm crate.
