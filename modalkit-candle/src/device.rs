//! The `device` setting resolved to a candle device. A GPU asked for but not
//! usable (no device, or a binary built without the `cuda` feature) fails
//! start-up with a clear message; `auto` falls back to the CPU with a
//! warning. Resolving also registers candle's fatal-error classification.

use candle_core::Device;
use modalkit_core::StartupError;
use modalkit_core::device::DeviceRequest;

/// The candle device `request` gets on this machine and build.
///
/// ```
/// use modalkit_core::device::DeviceRequest;
/// let device = modalkit_candle::resolve(DeviceRequest::Cpu).unwrap();
/// assert_eq!(modalkit_candle::describe(&device), "cpu");
/// ```
pub fn resolve(request: DeviceRequest) -> Result<Device, StartupError> {
    crate::fatal::install();
    match request {
        DeviceRequest::Cpu => Ok(Device::Cpu),
        DeviceRequest::Cuda(ordinal) => cuda(ordinal).map_err(|reason| StartupError::Device {
            requested: request.to_string(),
            reason,
        }),
        DeviceRequest::Auto => match cuda(0) {
            Ok(device) => Ok(device),
            Err(reason) => {
                tracing::warn!(
                    reason,
                    "device auto: no usable GPU, falling back to the CPU"
                );
                Ok(Device::Cpu)
            }
        },
    }
}

fn cuda(ordinal: usize) -> Result<Device, String> {
    if !candle_core::utils::cuda_is_available() {
        return Err("this binary was built without the `cuda` feature; rebuild with `--features cuda` or set device: cpu".to_owned());
    }
    Device::new_cuda(ordinal).map_err(|err| format!("CUDA device {ordinal} is not usable: {err}"))
}

/// A short name for a device: `cpu`, `cuda:0`.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".to_owned(),
        Device::Cuda(_) => match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            _ => "cuda".to_owned(),
        },
        Device::Metal(_) => "metal".to_owned(),
    }
}
