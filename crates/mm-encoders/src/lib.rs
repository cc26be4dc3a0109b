//! Modality encoders: image CNNs (ResNet, VGG, small CNNs), word-vector text encoders (GloVe,
//! word2vec), RNN audio encoders over log-mel features, MLPs for numeric records. Each turns one
//! modality's batch into a `[B, D]` embedding (and, where it has one, a `[B, T, D]` sequence with
//! its mask).
//!
//! Architecture invariant: encoders know one modality each and nothing about fusion or training;
//! they build on mm-data (inputs) and mm-seq (recurrent and attention layers).
