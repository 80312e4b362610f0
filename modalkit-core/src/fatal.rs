//! Which pipeline errors are fatal for the device.
//!
//! After a CUDA driver error the device's state is unknown, so the only safe
//! move is to stop taking work and let the platform replace the container.
//! modalkit checks `"CUDA error" in str(e)`; this module does the same over
//! the whole error chain, and treats candle's `Error::Cuda` as fatal too.
//! Device backends extend the classification here.

use std::error::Error as StdError;

/// Texts that mark a CUDA driver or runtime failure.
const FATAL_MARKERS: &[&str] = &["CUDA error", "CUDA_ERROR_", "cudaError", "DriverError("];

/// Whether an error (or any error in its chain) is a fatal device error.
///
/// ```
/// use modalkit_core::fatal::is_fatal_device_error;
/// let err = std::io::Error::other("CUDA error: an illegal memory access was encountered");
/// assert!(is_fatal_device_error(&err));
/// assert!(!is_fatal_device_error(&std::io::Error::other("shape mismatch")));
/// ```
pub fn is_fatal_device_error(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(err) = current {
        if let Some(candle_core::Error::Cuda(_)) = err.downcast_ref::<candle_core::Error>() {
            return true;
        }
        let text = err.to_string();
        if FATAL_MARKERS.iter().any(|marker| text.contains(marker)) {
            return true;
        }
        current = err.source();
    }
    false
}
