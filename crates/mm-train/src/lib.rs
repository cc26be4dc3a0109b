//! Training: model assembly from configuration, losses, optimisers and schedules, metrics, the
//! training loop with evaluation and early stopping, and atomic safetensors checkpoints that a
//! killed run resumes from.
//!
//! Architecture invariant: mm-train composes the layers below it (data, sequence models,
//! encoders, fusion) and is the only library crate that knows about all of them; nothing below
//! depends on it, and it never parses command lines.
