//! Which compute device a model runs on, from config: `device` in the
//! model's entry or in `model_settings.common` — `cpu` (default), `cuda`,
//! `cuda:N` or `auto`. A GPU asked for but not usable (no device, or a
//! binary built without the `cuda` feature) fails start-up with a clear
//! message; `auto` falls back to the CPU with a warning.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::context::ModelContext;
use crate::error::{Error, Result};

/// A device as written in config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// The CPU.
    Cpu,
    /// CUDA device N (`cuda` is `cuda:0`).
    Cuda(usize),
    /// CUDA device 0 if usable, else the CPU.
    Auto,
}

impl FromStr for DeviceRequest {
    type Err = Error;

    /// ```
    /// use modalkit_core::device::DeviceRequest;
    /// assert_eq!("cuda:1".parse::<DeviceRequest>().unwrap(), DeviceRequest::Cuda(1));
    /// assert!("tpu".parse::<DeviceRequest>().is_err());
    /// ```
    fn from_str(text: &str) -> Result<Self> {
        let lower = text.trim().to_ascii_lowercase();
        match lower.as_str() {
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" | "gpu" => Ok(DeviceRequest::Cuda(0)),
            "auto" => Ok(DeviceRequest::Auto),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceRequest::Cuda)
                .ok_or_else(|| Error::Device {
                    requested: text.to_owned(),
                    reason: "expected cpu, cuda, cuda:N or auto".to_owned(),
                }),
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRequest::Cpu => f.write_str("cpu"),
            DeviceRequest::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceRequest::Auto => f.write_str("auto"),
        }
    }
}

impl DeviceRequest {
    /// The request in a model's context (`device` in its entry, then in
    /// `common`); `cpu` when absent.
    pub fn from_context(ctx: &ModelContext) -> Result<Self> {
        match ctx.setting("device") {
            None | Some(serde_json::Value::Null) => Ok(DeviceRequest::Cpu),
            Some(serde_json::Value::String(text)) => text.parse(),
            Some(other) => Err(Error::Device {
                requested: other.to_string(),
                reason: "device must be a string".to_owned(),
            }),
        }
    }

    /// The candle device this request gets on this machine and build.
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceRequest::Cpu => Ok(Device::Cpu),
            DeviceRequest::Cuda(ordinal) => cuda(ordinal).map_err(|reason| Error::Device {
                requested: self.to_string(),
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
}

fn cuda(ordinal: usize) -> std::result::Result<Device, String> {
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
