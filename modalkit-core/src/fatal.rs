//! Which pipeline errors are fatal for the device.
//!
//! After a CUDA driver error the device's state is unknown, so the only safe
//! move is to stop taking work and let the platform replace the container.
//! modalkit checks `"CUDA error" in str(e)`; this module does the same over
//! the whole error chain. Device backends add their own typed checks with
//! [`register_classifier`] (`modalkit-candle` registers candle's
//! `Error::Cuda`).

use std::error::Error as StdError;
use std::sync::RwLock;

/// Texts that mark a CUDA driver or runtime failure.
const FATAL_MARKERS: &[&str] = &["CUDA error", "CUDA_ERROR_", "cudaError", "DriverError("];

/// A backend's test for a fatal error in a chain.
pub type Classifier = fn(&(dyn StdError + 'static)) -> bool;

static CLASSIFIERS: RwLock<Vec<Classifier>> = RwLock::new(Vec::new());

/// Adds `classifier` to the checks [`is_fatal_device_error`] runs; adding
/// the same function twice keeps one.
pub fn register_classifier(classifier: Classifier) {
    let mut classifiers = CLASSIFIERS.write().unwrap_or_else(|p| p.into_inner());
    if !classifiers
        .iter()
        .any(|known| std::ptr::fn_addr_eq(*known, classifier))
    {
        classifiers.push(classifier);
    }
}

/// Whether an error (or any error in its chain) is a fatal device error:
/// its text carries a CUDA failure marker, or a registered classifier says so.
///
/// ```
/// use modalkit_core::fatal::is_fatal_device_error;
/// let err = std::io::Error::other("CUDA error: an illegal memory access was encountered");
/// assert!(is_fatal_device_error(&err));
/// assert!(!is_fatal_device_error(&std::io::Error::other("shape mismatch")));
/// ```
pub fn is_fatal_device_error(error: &(dyn StdError + 'static)) -> bool {
    let classifiers = CLASSIFIERS.read().unwrap_or_else(|p| p.into_inner());
    if classifiers.iter().any(|classify| classify(error)) {
        return true;
    }
    let mut current = Some(error);
    while let Some(err) = current {
        let text = err.to_string();
        if FATAL_MARKERS.iter().any(|marker| text.contains(marker)) {
            return true;
        }
        current = err.source();
    }
    false
}
