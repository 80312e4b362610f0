//! candle's `Error::Cuda` takes the fatal path once the crate is installed
//! (as `modalkit_candle::resolve` does); other candle errors do not.

use modalkit_core::PipelineError;
use modalkit_core::device::DeviceRequest;

#[test]
fn candle_cuda_errors_are_fatal_by_type_after_resolve() {
    modalkit_candle::resolve(DeviceRequest::Cpu).unwrap();
    let cuda = candle_core::Error::Cuda(Box::new(std::io::Error::other(
        "an illegal memory access was encountered",
    )));
    assert!(
        PipelineError::from(cuda).is_fatal(),
        "candle's Error::Cuda is fatal by type"
    );
    let shape = candle_core::Error::Msg("shape mismatch".into());
    assert!(!PipelineError::from(shape).is_fatal());
}

#[test]
fn cuda_is_refused_clearly_by_a_cpu_build_and_auto_falls_back() {
    let auto = modalkit_candle::resolve(DeviceRequest::Auto).unwrap();
    if candle_core::utils::cuda_is_available() {
        // A CUDA build on a machine with a GPU: both resolve to it.
        let cuda = modalkit_candle::resolve(DeviceRequest::Cuda(0)).unwrap();
        assert_eq!(modalkit_candle::describe(&cuda), "cuda:0");
        assert_eq!(modalkit_candle::describe(&auto), "cuda:0");
    } else {
        let err = modalkit_candle::resolve(DeviceRequest::Cuda(0)).unwrap_err();
        assert!(err.to_string().contains("--features cuda"), "{err}");
        assert_eq!(modalkit_candle::describe(&auto), "cpu");
    }
}
