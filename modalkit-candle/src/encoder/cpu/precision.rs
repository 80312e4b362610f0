//! The precision of the encoder's linear layers and the bf16 conversions.
//!
//! With [`Precision::Bf16`] a layer's weights and its input rows are
//! rounded to bfloat16 (8 bits of mantissa, fp32's range) and their
//! products summed in fp32; layer norms, softmax, attention and GELU stay
//! fp32. On a CPU with AVX512-BF16 the products run on `vdpbf16ps` (two
//! products per lane per instruction) from weights stored as bf16 (half
//! the memory); elsewhere the same rounded values run on the fp32 kernels,
//! so the numbers, and the quality tests, are the same on every machine.

use std::fmt;

/// How a model's linear layers compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// fp32 weights and products.
    #[default]
    Fp32,
    /// bf16 weights and inputs, fp32 sums.
    Bf16,
}

impl Precision {
    /// Every precision.
    pub const ALL: [Precision; 2] = [Precision::Fp32, Precision::Bf16];

    /// The name in a model entry's `precision`, logs and `/ready`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Parses a precision's name (case-insensitive).
    ///
    /// ```
    /// use modalkit_candle::encoder::cpu::precision::Precision;
    /// assert_eq!(Precision::parse("BF16"), Ok(Precision::Bf16));
    /// assert!(Precision::parse("int4").unwrap_err().contains("fp32, bf16"));
    /// ```
    pub fn parse(text: &str) -> Result<Precision, String> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| format!("precision '{text}': expected one of fp32, bf16"))
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `value` rounded to the nearest bfloat16 (ties to even), as its bits;
/// NaN stays a (quiet) NaN.
#[inline(always)]
pub fn to_bf16(value: f32) -> u16 {
    let bits = value.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((bits >> 16) as u16) | 0x0040;
    // A select, not a branch, so conversion loops vectorize.
    if value.is_nan() { quiet_nan } else { rounded }
}

/// The fp32 value of bfloat16 `bits`.
#[inline(always)]
pub fn from_bf16(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

crate::multiversion! {
    /// Rounds every value of `values` to bf16, as bits, into `out`.
    pub fn to_bf16_slice<const FMA: bool>(values: &[f32], out: &mut [u16]) {
        for (o, &v) in out.iter_mut().zip(values) {
            *o = to_bf16(v);
        }
    }
}

crate::multiversion! {
    /// Rounds every value of `values` to bf16 in place, kept as fp32.
    pub fn round_to_bf16<const FMA: bool>(values: &mut [f32]) {
        for v in values.iter_mut() {
            *v = from_bf16(to_bf16(*v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(from_bf16(to_bf16(1.0)), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even 1.
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        // Just above halfway rounds up.
        assert_eq!(
            from_bf16(to_bf16(1.0 + 1.0 / 256.0 + 1.0 / 65536.0)),
            1.0 + 1.0 / 128.0
        );
        assert_eq!(from_bf16(to_bf16(-3.0)), -3.0);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        // The relative error is at most 2^-8 (half a unit in the last of
        // bf16's 8 significant bits, against the smallest value of the
        // binade): 1234.5678 rounds to 1232, off by 0.21%.
        assert_eq!(from_bf16(to_bf16(1234.5678)), 1232.0);
        for value in [0.1f32, 1234.5678, 1535.9, -2.5e-5, 6.02e23] {
            let rounded = from_bf16(to_bf16(value));
            assert!(
                ((rounded - value) / value).abs() <= 1.0 / 256.0,
                "{value} -> {rounded}"
            );
        }
    }
}
