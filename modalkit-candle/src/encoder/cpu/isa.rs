//! Run-time choice of instruction set for the CPU kernels.
//!
//! The kernels are plain safe Rust written so LLVM vectorizes them. Built for
//! baseline x86-64 they would get 128-bit SSE2 and no FMA, so
//! [`multiversion!`](crate::multiversion) compiles each kernel twice, once
//! for AVX-512 (+FMA) and once for the baseline, and picks one per call from
//! what the CPU reports. This is the only place the crate uses `unsafe`:
//! calling a function compiled for features the CPU was checked to have.

/// Whether this CPU runs the AVX-512 builds of the kernels (the result of
/// `is_x86_feature_detected!` is cached by std). `MODALKIT_CPU_BASELINE=1`
/// forces the baseline build, for tests and comparisons.
#[inline]
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static CHOICE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *CHOICE.get_or_init(|| {
            std::env::var_os("MODALKIT_CPU_BASELINE").is_none_or(|v| v.is_empty() || v == "0")
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The instruction set the kernels run with on this CPU, for logs and `/ready`.
pub fn describe() -> &'static str {
    if avx512() { "avx512" } else { "baseline" }
}

/// Defines a function whose body is compiled twice: for AVX-512 with FMA and
/// for the target's baseline; each call runs the best one the CPU supports.
///
/// The function takes one const generic `bool` parameter (named by the
/// caller) that is `true` in the FMA build: `madd::<FMA>` in
/// [`madd`] then fuses multiply and add into one instruction there, and
/// stays a plain multiply-add (no slow software `fma` call) in the baseline.
#[macro_export]
#[doc(hidden)]
macro_rules! multiversion {
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident<const $fma:ident: bool>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?
        $body:block
    ) => {
        $(#[$attr])*
        #[allow(unsafe_code)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body<const $fma: bool>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body::<true>($($arg),*)
                }
                if $crate::encoder::cpu::isa::avx512() {
                    // SAFETY: `avx512` is compiled for features this CPU was
                    // checked (at run time, by `isa::avx512`) to support.
                    return unsafe { avx512($($arg),*) };
                }
            }
            body::<false>($($arg),*)
        }
    };
}

/// `a * b + c`, fused into one instruction in the FMA build of a kernel.
#[inline(always)]
pub fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}
