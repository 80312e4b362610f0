//! candle's fatal errors: `candle_core::Error::Cuda` anywhere in an error's
//! chain means the device's state is unknown. Registered with
//! `modalkit_core::fatal` by [`install`] (which [`crate::resolve`] calls), so
//! a pipeline that returns candle's error with `?` takes the fatal path.

use std::error::Error as StdError;

/// Whether `error`'s chain holds candle's `Error::Cuda`.
///
/// ```
/// let cuda = candle_core::Error::Cuda(Box::new(std::io::Error::other("launch failed")));
/// assert!(modalkit_candle::fatal::is_candle_cuda_error(&cuda));
/// assert!(!modalkit_candle::fatal::is_candle_cuda_error(&candle_core::Error::Msg("shape".into())));
/// ```
pub fn is_candle_cuda_error(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(err) = current {
        if let Some(candle_core::Error::Cuda(_)) = err.downcast_ref::<candle_core::Error>() {
            return true;
        }
        current = err.source();
    }
    false
}

/// Registers [`is_candle_cuda_error`] with `modalkit_core::fatal`; calling it
/// again does nothing.
pub fn install() {
    modalkit_core::fatal::register_classifier(is_candle_cuda_error);
}
