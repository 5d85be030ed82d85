//! Multiversioning: one generic `#[inline(always)]` loop compiled three times (baseline, AVX2, AVX-512)
//! and picked at run time from the active [`Isa`](crate::cpu::Isa). The baseline copy is the scalar path.

/// `multiversion!(pub(crate) fn name(a: A, b: B) -> R = body_fn);` defines `name(isa, a, b)`, which calls
/// `body_fn(a, b)` compiled for `isa`. `body_fn` must be `#[inline(always)]` so that it is compiled inside
/// the `#[target_feature]` wrappers (that is where LLVM vectorises it for the wider registers).
macro_rules! multiversion {
    ($vis:vis fn $name:ident($($p:ident : $t:ty),* $(,)?) $(-> $r:ty)? = $body:path;) => {
        #[allow(clippy::too_many_arguments)]
        $vis fn $name(isa: $crate::cpu::Isa, $($p: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma,bmi1,bmi2,popcnt,lzcnt")]
                #[allow(clippy::too_many_arguments)]
                fn v_avx2($($p: $t),*) $(-> $r)? { $body($($p),*) }
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi1,bmi2,popcnt,lzcnt")]
                #[allow(clippy::too_many_arguments)]
                fn v_avx512($($p: $t),*) $(-> $r)? { $body($($p),*) }
                match isa {
                    // SAFETY: `cpu::set_isa` only activates ISAs that this CPU supports.
                    $crate::cpu::Isa::Avx512 => return unsafe { v_avx512($($p),*) },
                    $crate::cpu::Isa::Avx2 => return unsafe { v_avx2($($p),*) },
                    $crate::cpu::Isa::Scalar => {}
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = isa;
            $body($($p),*)
        }
    };
}
pub(crate) use multiversion;

/// |x| as its bit pattern: with the sign cleared, u32 order equals float order (NaN above +inf).
#[inline(always)]
pub(crate) fn abs_bits(v: f32) -> u32 {
    v.to_bits() & 0x7fff_ffff
}

/// Bit pattern of +inf; abs bits above it are NaN.
pub(crate) const INF_BITS: u32 = 0x7f80_0000;

/// First flat index of a NaN in `x`, if any (cold path: only after a fused check found one).
pub(crate) fn first_nan(x: &[f32]) -> Option<usize> {
    x.iter().position(|v| v.is_nan())
}
