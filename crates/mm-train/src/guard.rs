//! libtorch failures at a step's boundary: a training step, an evaluation or prediction batch,
//! a bench case. tch's tensor methods panic when libtorch throws (a shape that does not fit, no
//! kernel for a dtype on this processor); [`step`] turns such a panic into
//! [`Error::Torch`], naming what was running, the model part (the
//! [`mm_data::guard::Part`] the model entered: an encoder, the fusion, a head) and the settings
//! that shape the kernels, so that nothing a configuration can reach ends in a panic.
//!
//! ```
//! use mm_train::{guard, precision::Precision};
//! use tch::{Device, Kind, Tensor};
//!
//! let err = guard::step("the training step", Precision::F32, Device::Cpu, || {
//!     let _part = mm_data::guard::Part::enter("image encoder");
//!     let x = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
//!     Ok(x.matmul(&x))
//! })
//! .unwrap_err();
//! let message = err.to_string();
//! assert!(message.starts_with("libtorch failed in the training step, in the image encoder (precision = \"f32\" on cpu)"), "{message}");
//! ```

use mm_data::device::device_name;
use mm_data::guard::{catch, Caught};
use tch::Device;

use crate::precision::{cpu_bf16, Precision};
use crate::{Error, Result};

/// Runs `call`, turning a libtorch panic inside it into [`Error::Torch`]; `during` says what
/// was running ("the training step", "evaluation").
pub fn step<T>(
    during: &str,
    precision: Precision,
    device: Device,
    call: impl FnOnce() -> Result<T>,
) -> Result<T> {
    catch(call).unwrap_or_else(|caught| Err(failed(during, precision, device, caught)))
}

/// The error for a libtorch panic caught while `during` ran.
pub fn failed(during: &str, precision: Precision, device: Device, caught: Caught) -> Error {
    let mut message = format!("libtorch failed in {during}");
    if let Some(part) = &caught.part {
        message.push_str(&format!(", in the {part}"));
    }
    message.push_str(&format!(
        " (precision = \"{precision}\" on {}): {}",
        device_name(device),
        caught.message
    ));
    if precision == Precision::Bf16 && device == Device::Cpu && !cpu_bf16().kernels {
        message.push_str(&format!(
            "; {}: set [train] precision = \"f32\" if bf16 is the cause",
            cpu_bf16()
        ));
    }
    message.push_str(&caught.stack_lines());
    Error::Torch(message)
}
