//! Which compute device a model asks for in config: `device` in the model's
//! entry or in `model_settings.common` — `cpu` (default), `cuda`, `cuda:N`
//! or `auto`. Core only parses the request; a backend crate resolves it
//! (`modalkit_candle::resolve` for candle).

use std::fmt;
use std::str::FromStr;

use crate::context::ModelContext;
use crate::error::StartupError;

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
    type Err = StartupError;

    /// ```
    /// use modalkit_core::device::DeviceRequest;
    /// assert_eq!("cuda:1".parse::<DeviceRequest>().unwrap(), DeviceRequest::Cuda(1));
    /// assert!("tpu".parse::<DeviceRequest>().is_err());
    /// ```
    fn from_str(text: &str) -> Result<Self, StartupError> {
        let lower = text.trim().to_ascii_lowercase();
        match lower.as_str() {
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" | "gpu" => Ok(DeviceRequest::Cuda(0)),
            "auto" => Ok(DeviceRequest::Auto),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceRequest::Cuda)
                .ok_or_else(|| StartupError::Device {
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
    pub fn from_context(ctx: &ModelContext) -> Result<Self, StartupError> {
        match ctx.setting("device") {
            None | Some(serde_json::Value::Null) => Ok(DeviceRequest::Cpu),
            Some(serde_json::Value::String(text)) => text.parse(),
            Some(other) => Err(StartupError::Device {
                requested: other.to_string(),
                reason: "device must be a string".to_owned(),
            }),
        }
    }
}
