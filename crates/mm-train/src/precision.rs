//! Mixed precision: libtorch's autocast in bf16, and what the processor can do in bf16.
//!
//! The types live in [`mm_seq::precision`] (the recurrent layers there need them, to keep an
//! LSTM in f32 on a CPU without bf16 kernels); they are re-exported here, where a run's
//! `[train] precision` uses them. See that module for what autocast changes and how a CPU
//! without bf16 kernels is handled.
//!
//! ```
//! use mm_train::precision::{Autocast, Precision};
//! use tch::{Device, Kind, Tensor};
//!
//! let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
//! {
//!     let _bf16 = Autocast::scope(Precision::Bf16, Device::Cpu);
//!     assert_eq!(a.matmul(&a).kind(), Kind::BFloat16); // a product: lower precision
//! }
//! assert_eq!(a.matmul(&a).kind(), Kind::Float); // the scope is over
//! ```

pub use mm_seq::precision::{cpu_autocast_bf16, cpu_bf16, Autocast, CpuBf16, F32Scope, Precision};
