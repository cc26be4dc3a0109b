//! Choosing the device tensors go to, from a name a user typed (`--device cuda:1`).
//!
//! `auto` picks the first CUDA device when libtorch sees one and the CPU otherwise.

use std::fmt;
use tch::{Cuda, Device};

/// Why a device name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceError {
    /// Not `auto`, `cpu`, `cuda` or `cuda:N`.
    Unknown(String),
    /// A CUDA device was asked for but libtorch sees no GPU.
    CudaUnavailable(String),
    /// `cuda:N` past the last visible GPU.
    NoSuchGpu {
        /// The name as given.
        name: String,
        /// How many GPUs libtorch sees.
        count: usize,
    },
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::Unknown(name) => {
                write!(f, "unknown device `{name}`: use auto, cpu, cuda or cuda:N")
            }
            DeviceError::CudaUnavailable(name) => write!(
                f,
                "device `{name}` asked for, but libtorch sees no CUDA device (no GPU, no driver, \
                 or a CPU-only libtorch); use `cpu` or `auto`"
            ),
            DeviceError::NoSuchGpu { name, count } => write!(
                f,
                "device `{name}` asked for, but libtorch sees {count} CUDA device(s), numbered \
                 from 0"
            ),
        }
    }
}

impl std::error::Error for DeviceError {}

/// A device's name: `cpu` or `cuda:N`, as [`parse_device`] reads them back (and `mps`,
/// `vulkan` for those).
///
/// ```
/// use mm_data::device::{device_name, parse_device};
///
/// assert_eq!(device_name(tch::Device::Cuda(1)), "cuda:1");
/// assert_eq!(parse_device(&device_name(tch::Device::Cpu)).ok(), Some(tch::Device::Cpu));
/// ```
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
        Device::Cpu => "cpu".into(),
    }
}

/// Parses `auto`, `cpu`, `cuda` or `cuda:N` (case-insensitive, surrounding blanks ignored) and
/// checks that the device exists.
///
/// ```
/// use mm_data::device::{parse_device, DeviceError};
///
/// assert_eq!(parse_device(" CPU ")?, tch::Device::Cpu);
/// assert!(matches!(parse_device("tpu"), Err(DeviceError::Unknown(_))));
/// # Ok::<(), DeviceError>(())
/// ```
pub fn parse_device(name: &str) -> Result<Device, DeviceError> {
    let lower = name.trim().to_ascii_lowercase();
    let index = match lower.as_str() {
        "auto" => return Ok(Device::cuda_if_available()),
        "cpu" => return Ok(Device::Cpu),
        "cuda" | "gpu" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => i,
            _ => return Err(DeviceError::Unknown(name.to_string())),
        },
    };
    let count = Cuda::device_count().max(0) as usize;
    if count == 0 {
        return Err(DeviceError::CudaUnavailable(name.trim().to_string()));
    }
    if index >= count {
        return Err(DeviceError::NoSuchGpu { name: name.trim().to_string(), count });
    }
    Ok(Device::Cuda(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(parse_device("cpu"), Ok(Device::Cpu));
        assert_eq!(parse_device("auto"), Ok(Device::cuda_if_available()));
        for bad in ["", "cuda:", "cuda:-1", "cuda:x", "cpu0", "mps"] {
            assert_eq!(parse_device(bad), Err(DeviceError::Unknown(bad.to_string())), "{bad:?}");
        }
    }

    #[test]
    fn cuda_names_follow_what_libtorch_sees() {
        let count = Cuda::device_count() as usize;
        if count == 0 {
            assert!(matches!(parse_device("cuda"), Err(DeviceError::CudaUnavailable(_))));
            assert!(matches!(parse_device("cuda:0"), Err(DeviceError::CudaUnavailable(_))));
        } else {
            assert_eq!(parse_device("cuda"), Ok(Device::Cuda(0)));
            let past = format!("cuda:{count}");
            assert_eq!(
                parse_device(&past),
                Err(DeviceError::NoSuchGpu { name: past.clone(), count })
            );
        }
    }
}
