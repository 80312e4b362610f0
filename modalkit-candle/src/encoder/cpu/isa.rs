//! Run-time choice of instruction set for the CPU kernels.
//!
//! The kernels are plain safe Rust written so LLVM vectorizes them. Built for
//! baseline x86-64 they would get 128-bit SSE2 and no FMA, so
//! [`multiversion!`](crate::multiversion) compiles each kernel three times,
//! for AVX-512 (+FMA), for AVX2 + FMA and for the baseline, and runs the best
//! one this CPU has, capped by `MODALKIT_CPU_ISA`. This is the only place the
//! crate uses `unsafe` besides the GEMM tiles: calling a function compiled
//! for features the CPU was checked to have.

use std::fmt;
use std::sync::OnceLock;

/// The environment variable that caps the level: `amx`, `avx512-bf16`,
/// `avx512`, `avx2` or `portable` (`MODALKIT_CPU_BASELINE=1`, the older
/// name, means `portable`).
pub const ISA_VARIABLE: &str = "MODALKIT_CPU_ISA";

/// An instruction-set level the kernels are compiled for, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// The target's baseline (SSE2 on x86-64): plain loops, no FMA.
    Portable,
    /// AVX2 with FMA: 8-lane vectors, 16 registers.
    Avx2,
    /// AVX-512 F/VL/BW/DQ with FMA: 16-lane vectors, 32 registers.
    Avx512,
    /// AVX-512 with AVX512-BF16: bf16 products (`vdpbf16ps`) for models
    /// at bf16 precision; fp32 kernels as [`Isa::Avx512`].
    Avx512Bf16,
    /// AVX512-BF16 and AMX tiles (`tdpbf16ps`, 16 × 16 × 32 products an
    /// instruction), where the kernel grants the tile state: bf16 models'
    /// linear layers on tiles; fp32 kernels as [`Isa::Avx512`].
    Amx,
}

impl Isa {
    /// Every level, lowest first.
    pub const ALL: [Isa; 5] = [
        Isa::Portable,
        Isa::Avx2,
        Isa::Avx512,
        Isa::Avx512Bf16,
        Isa::Amx,
    ];

    /// The name used in `MODALKIT_CPU_ISA`, logs and `/ready`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512-bf16",
            Isa::Amx => "amx",
        }
    }

    /// Parses a level's name (case-insensitive).
    ///
    /// ```
    /// use modalkit_candle::encoder::cpu::isa::Isa;
    /// assert_eq!(Isa::parse("AVX2"), Some(Isa::Avx2));
    /// assert_eq!(Isa::parse("sse"), None);
    /// ```
    pub fn parse(text: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name().eq_ignore_ascii_case(text.trim()))
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The best level this CPU supports, ignoring any cap.
pub fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq");
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let bf16 = avx2 && avx512 && is_x86_feature_detected!("avx512bf16");
        if bf16 && amx_granted() {
            Isa::Amx
        } else if bf16 {
            Isa::Avx512Bf16
        } else if avx2 && avx512 {
            Isa::Avx512
        } else if avx2 {
            Isa::Avx2
        } else {
            Isa::Portable
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Isa::Portable
    }
}

/// Whether the CPU has AMX tiles with bf16 products and the kernel lets
/// this process use them (Linux asks each process to request the tile
/// state, `arch_prctl(ARCH_REQ_XCOMP_PERM)`); asked once.
#[cfg(target_arch = "x86_64")]
fn amx_granted() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| {
        // CPUID leaf 7: AMX-BF16 is EDX bit 22, AMX-TILE bit 24.
        let leaf = std::arch::x86_64::__cpuid_count(7, 0);
        if leaf.edx & (1 << 22) == 0 || leaf.edx & (1 << 24) == 0 {
            return false;
        }
        request_tile_state()
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn amx_granted() -> bool {
    false
}

/// Asks Linux for the AMX tile data state (feature 18).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(unsafe_code)]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this request only changes which state
    // components the kernel saves for this process; it reads no memory.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_state() -> bool {
    false
}

/// The cap set by the environment: `Ok(None)` when unset, an error naming
/// the variable when its value is not a level.
pub fn cap_from_env() -> Result<Option<Isa>, String> {
    if let Some(value) = std::env::var_os(ISA_VARIABLE).filter(|v| !v.is_empty()) {
        let text = value.to_string_lossy();
        return Isa::parse(&text).map(Some).ok_or_else(|| {
            format!("{ISA_VARIABLE}={text}: expected avx512-bf16, avx512, avx2 or portable")
        });
    }
    let baseline = std::env::var_os("MODALKIT_CPU_BASELINE");
    Ok(baseline
        .filter(|v| !v.is_empty() && v != "0")
        .map(|_| Isa::Portable))
}

/// The level the kernels run at: the best this CPU has, capped by
/// [`ISA_VARIABLE`] (an invalid value caps nothing here; loading the
/// encoder reports it). Decided once per process.
#[inline]
pub fn active() -> Isa {
    static ACTIVE: OnceLock<Isa> = OnceLock::new();
    *ACTIVE.get_or_init(|| match cap_from_env() {
        Ok(Some(cap)) => cap.min(detected()),
        _ => detected(),
    })
}

/// Whether the AVX-512 builds of the kernels run.
#[inline]
pub fn avx512() -> bool {
    active() >= Isa::Avx512
}

/// Whether the bf16 products run on AVX512-BF16 (else bf16 models run
/// their rounded values on the fp32 kernels).
#[inline]
pub fn avx512_bf16() -> bool {
    active() >= Isa::Avx512Bf16
}

/// Whether bf16 linear layers run on AMX tiles.
#[inline]
pub fn amx() -> bool {
    active() >= Isa::Amx
}

/// Whether the AVX2 (or better) builds of the kernels run.
#[inline]
pub fn avx2() -> bool {
    active() >= Isa::Avx2
}

/// The level in use, for logs and `/ready`.
pub fn describe() -> &'static str {
    active().name()
}

/// Defines a function whose body is compiled three times: for AVX-512 with
/// FMA, for AVX2 with FMA, and for the target's baseline; each call runs the
/// build for [`active`].
///
/// The function takes one const generic `bool` parameter (named by the
/// caller) that is `true` in the FMA builds: `madd::<FMA>` in
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
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body::<true>($($arg),*)
                }
                match $crate::encoder::cpu::isa::active() {
                    // SAFETY: `avx512` is compiled for features this CPU was
                    // checked (at run time, by `isa::detected`) to support.
                    $crate::encoder::cpu::isa::Isa::Avx512
                    | $crate::encoder::cpu::isa::Isa::Avx512Bf16
                    | $crate::encoder::cpu::isa::Isa::Amx => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above, for AVX2 and FMA.
                    $crate::encoder::cpu::isa::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::encoder::cpu::isa::Isa::Portable => {}
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
