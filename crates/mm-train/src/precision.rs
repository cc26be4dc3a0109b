//! Mixed precision: libtorch's autocast, in bf16, on the CPU or a CUDA device.
//!
//! Inside an [`Autocast`] scope, matrix products and convolutions run in bf16 while reductions,
//! softmax and losses stay in f32 (libtorch's own per-operator lists, the same as PyTorch's
//! `torch.autocast(device_type, dtype=torch.bfloat16)`); the weights stay f32. bf16 keeps f32's
//! exponent range, so no loss scaling is needed. `[train] precision = "bf16"` runs the forward
//! passes of training and evaluation in such a scope; the backward pass follows the dtypes the
//! forward chose.
//!
//! tch 0.26 only exposes CUDA's autocast switch, with its default dtype (f16). The
//! device-generic functions (`at::autocast::set_autocast_enabled(DeviceType, bool)`,
//! `set_autocast_dtype`, ...) are plain functions of `libtorch_cpu.so`; they are declared here
//! under their C++ (Itanium ABI) symbol names. Their arguments are one-byte enums and a bool,
//! passed as integers, and none of them throws. A libtorch without them fails at link time,
//! never at run time.
//!
//! ```
//! use mm_train::precision::Autocast;
//! use tch::{Device, Kind, Tensor};
//!
//! let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
//! {
//!     let _bf16 = Autocast::bf16(Device::Cpu);
//!     assert_eq!(a.matmul(&a).kind(), Kind::BFloat16); // a product: lower precision
//!     assert_eq!(a.matmul(&a).sum(Kind::Float).kind(), Kind::Float);
//! }
//! assert_eq!(a.matmul(&a).kind(), Kind::Float); // the scope is over
//! ```

use serde::{Deserialize, Serialize};
use tch::Device;

/// The precision of the forward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Autocast to bf16 (see the module documentation).
    Bf16,
}

mod ffi {
    extern "C" {
        #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
        pub fn is_autocast_enabled(device_type: i8) -> bool;
        #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
        pub fn set_autocast_enabled(device_type: i8, enabled: bool);
        #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
        pub fn get_autocast_dtype(device_type: i8) -> i8;
        #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
        pub fn set_autocast_dtype(device_type: i8, dtype: i8);
        #[link_name = "_ZN2at8autocast17increment_nestingEv"]
        pub fn increment_nesting() -> i32;
        #[link_name = "_ZN2at8autocast17decrement_nestingEv"]
        pub fn decrement_nesting() -> i32;
        #[link_name = "_ZN2at8autocast11clear_cacheEv"]
        pub fn clear_cache();
    }
}

/// `c10::DeviceType` values.
const CPU: i8 = 0;
const CUDA: i8 = 1;
/// `c10::ScalarType::BFloat16`.
const BFLOAT16: i8 = 15;

/// An autocast scope for one device type; dropping it restores what was there before. Like
/// libtorch's autocast state, it belongs to the thread that made it.
#[derive(Debug)]
pub struct Autocast {
    device_type: i8,
    was_enabled: bool,
    was_dtype: i8,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Autocast {
    /// bf16 autocast for the type of `device` (CPU, or CUDA for any `Cuda(i)`).
    pub fn bf16(device: Device) -> Autocast {
        let device_type = if device.is_cuda() { CUDA } else { CPU };
        // SAFETY: plain setters and getters of libtorch's thread-local autocast state, with a
        // valid device type and dtype; they do not throw.
        let (was_enabled, was_dtype) = unsafe {
            let state = (ffi::is_autocast_enabled(device_type), ffi::get_autocast_dtype(device_type));
            ffi::set_autocast_dtype(device_type, BFLOAT16);
            ffi::set_autocast_enabled(device_type, true);
            ffi::increment_nesting();
            state
        };
        Autocast { device_type, was_enabled, was_dtype, _not_send: std::marker::PhantomData }
    }

    /// An autocast scope when `precision` asks for one.
    pub fn scope(precision: Precision, device: Device) -> Option<Autocast> {
        match precision {
            Precision::F32 => None,
            Precision::Bf16 => Some(Autocast::bf16(device)),
        }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: as in `bf16`; the cache of casted weights is cleared when the outermost scope
        // ends, as PyTorch does.
        unsafe {
            if ffi::decrement_nesting() == 0 {
                ffi::clear_cache();
            }
            ffi::set_autocast_enabled(self.device_type, self.was_enabled);
            ffi::set_autocast_dtype(self.device_type, self.was_dtype);
        }
    }
}
