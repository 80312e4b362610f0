//! Reads `model.safetensors` one tensor at a time, straight into f32
//! buffers (peak memory: the model plus its largest tensor), for either
//! encoder to take its tensors from.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::Deserialize;

/// One tensor: its shape and its values, row-major.
#[derive(Debug, Clone)]
pub struct RawTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub values: Vec<f32>,
}

/// A tensor left in the file: its shape and where its data starts.
#[derive(Debug, Clone)]
pub struct TensorInFile {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Byte offset of its first value in the file.
    pub offset: u64,
}

/// The tensors of a model file, by name (a `bert.` prefix stripped).
#[derive(Debug, Default)]
pub struct Weights {
    tensors: HashMap<String, RawTensor>,
    in_file: HashMap<String, TensorInFile>,
}

impl Weights {
    /// Reads every F32 tensor (but `position_ids`); those named in
    /// `leave_in_file` are only located.
    pub fn read(path: &Path, leave_in_file: &[&str]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Entry {
            dtype: String,
            shape: Vec<usize>,
            data_offsets: [u64; 2],
        }
        let fail = |what: String| format!("{}: {what}", path.display());
        let mut file = std::fs::File::open(path).map_err(|err| fail(err.to_string()))?;
        let mut length = [0u8; 8];
        file.read_exact(&mut length)
            .map_err(|err| fail(err.to_string()))?;
        let header_len = u64::from_le_bytes(length);
        if header_len > 100_000_000 {
            return Err(fail(format!("header of {header_len} bytes")));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|err| fail(err.to_string()))?;
        let entries: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|err| fail(format!("bad header: {err}")))?;
        let data_start = 8 + header_len;
        let mut tensors = HashMap::new();
        let mut in_file = HashMap::new();
        for (name, value) in entries {
            if name == "__metadata__" || name.ends_with("position_ids") {
                continue;
            }
            let entry: Entry =
                serde_json::from_value(value).map_err(|err| fail(format!("{name}: {err}")))?;
            if entry.dtype != "F32" {
                return Err(fail(format!(
                    "{name}: dtype {} (only F32 weights are supported)",
                    entry.dtype
                )));
            }
            let [start, end] = entry.data_offsets;
            let count: usize = entry.shape.iter().product();
            if end.saturating_sub(start) != (count * 4) as u64 {
                return Err(fail(format!(
                    "{name}: {} bytes for shape {:?}",
                    end.saturating_sub(start),
                    entry.shape
                )));
            }
            let name = name.strip_prefix("bert.").unwrap_or(&name).to_owned();
            if leave_in_file.contains(&name.as_str()) {
                let offset = data_start + start;
                in_file.insert(
                    name,
                    TensorInFile {
                        shape: entry.shape,
                        offset,
                    },
                );
                continue;
            }
            // Read straight into the f32 buffer the tensor will own: no second copy.
            let mut values = vec![0f32; count];
            file.seek(SeekFrom::Start(data_start + start))
                .and_then(|_| file.read_exact(bytemuck::cast_slice_mut(&mut values)))
                .map_err(|err| fail(format!("{name}: {err}")))?;
            if cfg!(target_endian = "big") {
                values
                    .iter_mut()
                    .for_each(|v| *v = f32::from_bits(v.to_bits().swap_bytes()));
            }
            tensors.insert(
                name,
                RawTensor {
                    shape: entry.shape,
                    values,
                },
            );
        }
        Ok(Weights { tensors, in_file })
    }

    /// Removes and returns a tensor.
    pub fn take(&mut self, name: &str) -> Result<RawTensor, String> {
        self.tensors
            .remove(name)
            .ok_or_else(|| format!("model.safetensors has no tensor {name}"))
    }

    /// Removes and returns a tensor left in the file by [`Weights::read`].
    pub fn take_in_file(&mut self, name: &str) -> Result<TensorInFile, String> {
        self.in_file
            .remove(name)
            .ok_or_else(|| format!("model.safetensors has no tensor {name}"))
    }

    /// Removes a tensor and returns its values, checking its shape.
    pub fn values(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        let tensor = self.take(name)?;
        if tensor.shape != shape {
            return Err(format!(
                "model.safetensors: {name} has shape {:?}, expected {shape:?}",
                tensor.shape
            ));
        }
        Ok(tensor.values)
    }
}
