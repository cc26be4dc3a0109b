//! Mixed precision: libtorch's autocast, in bf16, on the CPU or a CUDA device, and what the
//! processor can do in bf16.
//!
//! Inside an [`Autocast`] scope, matrix products and convolutions run in bf16 while reductions,
//! softmax and losses stay in f32 (libtorch's own per-operator lists, the same as PyTorch's
//! `torch.autocast(device_type, dtype=torch.bfloat16)`); the weights stay f32. bf16 keeps f32's
//! exponent range, so no loss scaling is needed. `[train] precision = "bf16"` runs the forward
//! passes of training and evaluation in such a scope; the backward pass follows the dtypes the
//! forward chose.
//!
//! **CPUs without bf16 kernels.** On the CPU, autocast sends LSTMs to oneDNN's bf16 LSTM
//! (`mkldnn_rnn_layer` is on CPU autocast's bf16 list), which exists only where oneDNN has bf16
//! support: AVX-512 (core) or AVX2-VNNI-2 processors. Elsewhere (an AMD EPYC without AVX-512,
//! say) PyTorch itself fails with "could not create a primitive descriptor for the LSTM forward
//! propagation primitive". [`cpu_bf16`] finds out once per process, by asking oneDNN for that
//! very primitive, and [`F32Scope`] lets a layer step out of CPU autocast where it must: mm's
//! recurrent layers ([`crate::rnn::Rnn`]) run in f32 under CPU autocast on such a processor,
//! everything else stays in bf16 (ATen has portable bf16 kernels for products and
//! convolutions). `MM_CPU_BF16=0` makes mm behave as on such a processor (for tests and
//! comparisons), and oneDNN's own `ONEDNN_MAX_CPU_ISA=AVX2` makes libtorch behave as on one.
//!
//! tch 0.26 only exposes CUDA's autocast switch, with its default dtype (f16). The
//! device-generic functions (`at::autocast::set_autocast_enabled(DeviceType, bool)`,
//! `set_autocast_dtype`, ...) are plain functions of `libtorch_cpu.so`; they are declared here
//! under their C++ (Itanium ABI) symbol names. Their arguments are one-byte enums and a bool,
//! passed as integers, and none of them throws. A libtorch without them fails at link time,
//! never at run time.
//!
//! ```
//! use mm_seq::precision::Autocast;
//! use tch::{Device, Kind, Tensor};
//!
//! let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
//! {
//!     let _bf16 = Autocast::bf16(Device::Cpu);
//!     assert_eq!(a.matmul(&a).kind(), Kind::BFloat16); // a product: lower precision
//!     assert_eq!(a.matmul(&a).sum(Kind::Float).kind(), Kind::Float);
//! }
//! assert_eq!(a.matmul(&a).kind(), Kind::Float); // the scope is over
//! println!("{}", mm_seq::precision::cpu_bf16()); // what this processor can do
//! ```

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

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

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
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
            let state =
                (ffi::is_autocast_enabled(device_type), ffi::get_autocast_dtype(device_type));
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

/// Whether CPU autocast is on in bf16 on this thread.
pub fn cpu_autocast_bf16() -> bool {
    // SAFETY: plain getters of the thread-local autocast state.
    unsafe { ffi::is_autocast_enabled(CPU) && ffi::get_autocast_dtype(CPU) == BFLOAT16 }
}

/// What this processor can do in bf16, found once per process ([`cpu_bf16`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CpuBf16 {
    /// oneDNN runs bf16 kernels here (natively or emulated on AVX-512): an LSTM under CPU
    /// autocast works. When false, mm's recurrent layers step out of autocast ([`F32Scope`]).
    pub kernels: bool,
    /// The processor has bf16 instructions (`avx512_bf16` or `amx_bf16`): bf16 is then fast,
    /// not only possible.
    pub native: bool,
    /// Why `kernels` is false: libtorch's answer, or `MM_CPU_BF16=0`.
    pub reason: Option<String>,
}

impl std::fmt::Display for CpuBf16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.kernels, self.native) {
            (true, true) => f.write_str("bf16 kernels: yes, native (avx512_bf16 or amx_bf16)"),
            (true, false) => f.write_str("bf16 kernels: yes, emulated on AVX-512 (no bf16 instructions: slower than f32)"),
            (false, _) => write!(
                f,
                "bf16 kernels: no ({}); precision = \"bf16\" keeps recurrent layers in f32 on the CPU",
                self.reason.as_deref().unwrap_or("unknown")
            ),
        }
    }
}

/// What this processor can do in bf16 (see the module documentation): probed on first use,
/// by building oneDNN's bf16 LSTM the way CPU autocast would, then cached for the process.
pub fn cpu_bf16() -> &'static CpuBf16 {
    static PROBED: OnceLock<CpuBf16> = OnceLock::new();
    PROBED.get_or_init(|| {
        let native = native_bf16_instructions();
        if std::env::var("MM_CPU_BF16").is_ok_and(|v| v.trim() == "0") {
            return CpuBf16 { kernels: false, native, reason: Some("MM_CPU_BF16=0".into()) };
        }
        match probe_lstm() {
            Ok(()) => CpuBf16 { kernels: true, native, reason: None },
            Err(tch::TchError::Torch(message)) => CpuBf16 {
                kernels: false,
                native,
                reason: Some(mm_data::guard::plain_message(&message)),
            },
            Err(other) => CpuBf16 { kernels: false, native, reason: Some(other.to_string()) },
        }
    })
}

/// One step of a one-unit LSTM under CPU bf16 autocast, as `torch.nn.LSTM` runs it.
fn probe_lstm() -> Result<(), tch::TchError> {
    let _no_grad = tch::no_grad_guard();
    let _bf16 = Autocast::bf16(Device::Cpu);
    let options = (Kind::Float, Device::Cpu);
    let x = Tensor::f_zeros([1, 1, 1], options)?;
    let h = Tensor::f_zeros([1, 1, 1], options)?;
    let params = [
        Tensor::f_zeros([4, 1], options)?,
        Tensor::f_zeros([4, 1], options)?,
        Tensor::f_zeros([4], options)?,
        Tensor::f_zeros([4], options)?,
    ];
    let _ =
        x.f_lstm(&[&h, &h], &params.iter().collect::<Vec<_>>(), true, 1, 0.0, false, false, true)?;
    Ok(())
}

/// `avx512_bf16` or `amx_bf16` in the processor's flags.
fn native_bf16_instructions() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| {
            t.lines().find(|l| l.starts_with("flags")).is_some_and(|l| {
                l.split_whitespace().any(|f| f == "avx512_bf16" || f == "amx_bf16")
            })
        })
        .unwrap_or(false)
}

/// Steps out of CPU bf16 autocast for one layer when this processor has no bf16 kernel for it:
/// while the value lives, CPU autocast is off on this thread, and [`F32Scope::input`] gives
/// the layer its input in f32. Elsewhere (CUDA, a CPU with bf16 kernels, no autocast) it does
/// nothing.
#[derive(Debug)]
pub struct F32Scope {
    active: bool,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl F32Scope {
    /// Enters the scope for a layer running on `device`.
    pub fn enter(device: Device) -> F32Scope {
        let active = device == Device::Cpu && cpu_autocast_bf16() && !cpu_bf16().kernels;
        if active {
            // SAFETY: a plain setter of the thread-local autocast state; `drop` turns it back on.
            unsafe { ffi::set_autocast_enabled(CPU, false) };
        }
        F32Scope { active, _not_send: std::marker::PhantomData }
    }

    /// Whether the layer runs in f32 because of this scope.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// `xs` in f32 when the scope is active (a layer before may have produced bf16), else as is.
    pub fn input(&self, xs: &Tensor) -> Tensor {
        if self.active && xs.kind() != Kind::Float {
            xs.to_kind(Kind::Float)
        } else {
            xs.shallow_clone()
        }
    }
}

impl Drop for F32Scope {
    fn drop(&mut self) {
        if self.active {
            // SAFETY: as in `enter`.
            unsafe { ffi::set_autocast_enabled(CPU, true) };
        }
    }
}
