//! IEEE 754 half precision (binary16) to `f32`, exactly: the 16-bit group scales of int4 weights are stored as
//! half-precision bits (as GGUF, GPTQ and AWQ store them) and widened where the kernels need `f32`.

/// The `f32` value of the half-precision bits `h` (every half value is exactly representable as `f32`;
/// subnormals, infinities and NaN included).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: m · 2^-24, a product of two exact f32 values with an exact result.
            let v = m as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    #[test]
    fn known_values() {
        for (h, want) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x7bff, 65504.0),
            (0x0400, 2f32.powi(-14)),
            (0x0001, 2f32.powi(-24)),
            (0x03ff, 1023.0 * 2f32.powi(-24)),
            (0x8001, -(2f32.powi(-24))),
            (0x3555, 0.333_251_95),
            (0x0000, 0.0),
            (0x7c00, f32::INFINITY),
            (0xfc00, f32::NEG_INFINITY),
        ] {
            assert_eq!(f16_to_f32(h), want, "{h:#06x}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), 0x8000_0000);
    }

    #[test]
    fn normal_values_round_trip_through_f32_bits() {
        // A normal half is an f32 whose low 13 mantissa bits are zero and whose exponent is in [-14, 15].
        for h in 0u16..=u16::MAX {
            let e = (h >> 10) & 0x1f;
            if e == 0 || e == 0x1f {
                continue;
            }
            let b = f16_to_f32(h).to_bits();
            assert_eq!(b & 0x1fff, 0);
            let back = (((b >> 16) & 0x8000) | ((((b >> 23) & 0xff) - 112) << 10) | ((b >> 13) & 0x3ff)) as u16;
            assert_eq!(back, h);
        }
    }
}
