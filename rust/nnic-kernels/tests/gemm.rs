//! int8 / int4 GEMM: every path against a plain i64 / f64 reference, on awkward shapes.
use nnic_kernels::gemm::{self, int4, ActQuant, Activation, PackedB, PackedLinear, Path};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn i8s(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| self.next() as u8 as i8).collect()
    }
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| (self.next() % 20001) as f32 / 10000.0 - 1.0).collect()
    }
}

fn paths() -> Vec<Path> {
    Path::ALL.into_iter().filter(|p| p.is_supported()).collect()
}

fn ref_mm(a: &[i8], b: &[i8], m: usize, k: usize, n: usize) -> Vec<i32> {
    let mut c = vec![0i64; m * n];
    for i in 0..m {
        for kk in 0..k {
            let av = a[i * k + kk] as i64;
            for j in 0..n {
                c[i * n + j] += av * b[kk * n + j] as i64;
            }
        }
    }
    c.into_iter().map(|v| i32::try_from(v).unwrap()).collect()
}

#[test]
fn matmul_exact_all_paths() {
    let mut rng = Rng(7);
    let shapes = [
        (1, 1, 1),
        (1, 7, 3),
        (2, 5, 33),
        (3, 13, 31),
        (13, 17, 65),
        (12, 4, 32),
        (25, 600, 47),
        (1, 1031, 97),
        (37, 1029, 130),
        (200, 300, 70),
        (130, 2051, 100),
        // Rows enough for the K-sliced blocks, K over two slices of `KC` with a partial third.
        (40, 2 * gemm::KC + 809, 70),
        // Two row panels sharing each streamed weight panel: K in three slices of 512 and a partial fourth,
        // a partial last column panel accumulated across slices.
        (16, 3 * 512 + 7, 70),
        (24, 1031, 33),
    ];
    for &(m, k, n) in &shapes {
        matmul_is_exact_on_every_path(&mut rng, m, k, n);
    }
}

/// `int8_matmul` of random `a[m, k]` and `b[k, n]` equals the i64 reference on every path this CPU has.
fn matmul_is_exact_on_every_path(rng: &mut Rng, m: usize, k: usize, n: usize) {
    let a = rng.i8s(m * k);
    let b = rng.i8s(k * n);
    let want = ref_mm(&a, &b, m, k, n);
    for p in paths() {
        let mut c = vec![0i32; m * n];
        gemm::int8_matmul(p, &a, m, k, &b, n, &mut c).unwrap();
        assert_eq!(c, want, "path {p:?} shape {m}x{k}x{n}");
    }
}

/// Few-row products large enough to run in parallel (the weights streamed once, in column blocks that the threads
/// take dynamically), with a partial last block and a partial last column panel: the integer products stay exact,
/// the float outputs match the reference and have the same bits on every path, with the epilogue in the tiles (K
/// within one slice) and after the block (K > KC), for 8- and 7-bit activations (`reduce_range`: the AVX2 path's
/// narrow tile).
#[test]
fn parallel_few_row_products_are_exact() {
    let mut rng = Rng(53);
    for (m, k, n) in [(1, 4096, 1000), (2, 2 * gemm::KC + 9, 170), (16, 1031, 300), (24, 700, 515)] {
        let a = rng.i8s(m * k);
        let b = rng.i8s(k * n);
        let want = ref_mm(&a, &b, m, k, n);
        let x: Vec<f32> = rng.f32s(m * k);
        let w = rng.i8s(n * k);
        let bias = rng.f32s(n);
        let sw: Vec<f32> = (0..n).map(|j| 0.001 + j as f32 * 1e-5).collect();
        let packed = PackedLinear::new(&w, n, k, &sw, &[]).unwrap();
        for p in paths() {
            let mut c = vec![0i32; m * n];
            gemm::int8_matmul(p, &a, m, k, &b, n, &mut c).unwrap();
            assert_eq!(c, want, "path {p:?} shape {m}x{k}x{n}");
        }
        for reduce_range in [false, true] {
            let act = ActQuant::DynamicPerRow { symmetric: false, reduce_range };
            let want_f = ref_linear(&x, m, k, &w, n, &sw, &[], &bias, false, act.qmax());
            let mut bits = Vec::new();
            for p in paths() {
                let mut out = vec![0f32; m * n];
                gemm::int8_linear(p, &x, m, &packed, Some(&bias), act, Activation::Identity, &mut out).unwrap();
                for (g, w) in out.iter().zip(&want_f) {
                    assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{p:?} {m}x{k}x{n} {act:?}: {g} vs {w}");
                }
                bits.push(out.iter().map(|v| v.to_bits()).collect::<Vec<u32>>());
            }
            assert!(bits.windows(2).all(|w| w[0] == w[1]), "{m}x{k}x{n} {act:?}: the paths' float bits differ");
        }
    }
}

/// Products of up to four rows read B in its own `[K, N]` layout on VNNI (`int8_matmul` does not pack it there): exact
/// with K not a multiple of a block's 8 rows and N not a multiple of the 64-column strip, on one thread and in
/// parallel runs of k groups, at the extremes (sums of the shifted weights that wrap the i32 before the shift comes
/// off) and at the largest K.
#[test]
fn few_row_products_without_packing_are_exact() {
    let mut rng = Rng(71);
    for m in 1..=4 {
        for (k, n) in [(1, 1), (9, 65), (15, 127), (100, 128), (4099, 200), (8003, 193)] {
            matmul_is_exact_on_every_path(&mut rng, m, k, n);
        }
        for (va, vb) in [(-128i8, -128i8), (127, -128), (-128, 127), (127, 127)] {
            let (k, n) = (4099, 65);
            let mut c = vec![0i32; m * n];
            for p in paths() {
                gemm::int8_matmul(p, &vec![va; m * k], m, k, &vec![vb; k * n], n, &mut c).unwrap();
                assert!(c.iter().all(|&v| v as i64 == va as i64 * vb as i64 * k as i64), "{p:?} {m} rows {va} {vb}");
            }
        }
    }
    let (k, n) = (gemm::MAX_K, 70);
    for (va, vb) in [(-128i8, -128i8), (-128, 127)] {
        for p in paths() {
            let mut c = vec![0i32; n];
            gemm::int8_matmul(p, &vec![va; k], 1, k, &vec![vb; k * n], n, &mut c).unwrap();
            assert!(c.iter().all(|&v| v as i64 == va as i64 * vb as i64 * k as i64), "{p:?} K = {k} {va} {vb}");
        }
    }
}

#[test]
fn matmul_extremes() {
    // All -128: the largest products; exactness of the +128 shift and compensation.
    for p in paths() {
        for &(m, k, n) in &[(5, 4099, 33), (14, 64, 64)] {
            for (va, vb) in [(-128i8, -128i8), (127, -128), (-128, 127), (127, 127)] {
                let a = vec![va; m * k];
                let b = vec![vb; k * n];
                let mut c = vec![0i32; m * n];
                gemm::int8_matmul(p, &a, m, k, &b, n, &mut c).unwrap();
                assert!(c.iter().all(|&v| v as i64 == va as i64 * vb as i64 * k as i64), "{p:?} {va} {vb}");
            }
        }
    }
}

/// Weights without the byte -128 (what symmetric quantization gives) take the AVX2 path's `vpmaddubsw` kernel,
/// whose pair sums come within 255 of i16's limit at the extremes (|a - 128| = 128 against |w| = 127): exact on
/// every path, at the extremes and on random bytes, over K slices, partial column panels and the parallel few-row
/// products.
#[test]
fn weights_without_minus_128_are_exact_on_every_path() {
    let mut rng = Rng(91);
    for p in paths() {
        for &(m, k, n) in &[(5, 4099, 33), (1, 64, 64), (2, 70, 31)] {
            for (va, vb) in [(-128i8, -127i8), (-128, 127), (127, -127), (127, 127), (0, 127)] {
                let a = vec![va; m * k];
                let b = vec![vb; k * n];
                let mut c = vec![0i32; m * n];
                gemm::int8_matmul(p, &a, m, k, &b, n, &mut c).unwrap();
                assert!(c.iter().all(|&v| v as i64 == va as i64 * vb as i64 * k as i64), "{p:?} {va} {vb}");
            }
        }
        for &(m, k, n) in &[(1, 4096, 1000), (3, 13, 31), (16, 1031, 300), (40, 2 * gemm::KC + 809, 70), (130, 2051, 100)] {
            let a = rng.i8s(m * k);
            let b: Vec<i8> = rng.i8s(k * n).into_iter().map(|v| v.max(-127)).collect();
            let mut c = vec![0i32; m * n];
            gemm::int8_matmul(p, &a, m, k, &b, n, &mut c).unwrap();
            assert_eq!(c, ref_mm(&a, &b, m, k, n), "path {p:?} shape {m}x{k}x{n}");
        }
    }
}

/// 7-bit activations (`reduce_range`) at their extremes (codes 0 and 127) against weights at theirs (-128 and 127):
/// the pair sums of the AVX2 path's narrow tile reach 2·127·128 = 32512, within i16; every path is exact (the
/// reference sums in i64) and gives the same bits, per row and per tensor, over K slices and partial panels.
#[test]
fn seven_bit_activations_are_exact_at_the_extremes_on_every_path() {
    for &(m, k, n) in &[(5, 4099, 33), (1, 64, 64), (2, 70, 31), (40, 2 * gemm::KC + 9, 70)] {
        // Rows alternating ±1 (codes 0 and 127 with zero point 64 or 63) and rows of one positive value (all 127).
        let x: Vec<f32> = (0..m * k).map(|i| if (i / k) % 2 == 0 { [1.0, -1.0][i % 2] } else { 0.5 }).collect();
        let bias = vec![0.0f32; n];
        for wv in [-128i8, 127] {
            let w = vec![wv; n * k];
            let packed = PackedLinear::new(&w, n, k, &[0.01], &[]).unwrap();
            for sym in [false, true] {
                let act = ActQuant::DynamicPerRow { symmetric: sym, reduce_range: true };
                let want = ref_linear(&x, m, k, &w, n, &[0.01], &[], &bias, sym, 127);
                let mut bits = Vec::new();
                for p in paths() {
                    let mut out = vec![0f32; m * n];
                    gemm::int8_linear(p, &x, m, &packed, None, act, Activation::Identity, &mut out).unwrap();
                    for (g, w) in out.iter().zip(&want) {
                        assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{p:?} {m}x{k}x{n} {act:?} w={wv}: {g} vs {w}");
                    }
                    bits.push(out.iter().map(|v| v.to_bits()).collect::<Vec<u32>>());
                }
                assert!(bits.windows(2).all(|w| w[0] == w[1]), "{m}x{k}x{n} {act:?} w={wv}: the paths' float bits differ");
            }
        }
    }
}

#[test]
fn k_limit() {
    let k = gemm::MAX_K + 1;
    let err = gemm::int8_matmul(Path::Scalar, &vec![0; k], 1, k, &vec![0; k], 1, &mut [0]).unwrap_err();
    assert!(err.to_string().contains("131071"), "{err}");
    // The limit itself is fine and exact.
    let k = gemm::MAX_K;
    let mut c = [0i32];
    gemm::int8_matmul(Path::active(), &vec![-128; k], 1, k, &vec![-128; k], 1, &mut c).unwrap();
    assert_eq!(c[0] as i64, 16384 * k as i64);
}

#[test]
fn shape_errors() {
    assert!(gemm::int8_matmul(Path::Scalar, &[0; 5], 2, 3, &[0; 6], 2, &mut [0; 4]).is_err());
    assert!(gemm::int8_matmul(Path::Scalar, &[0; 6], 2, 3, &[0; 5], 2, &mut [0; 4]).is_err());
    assert!(gemm::int8_matmul(Path::Scalar, &[0; 6], 2, 3, &[0; 6], 2, &mut [0; 3]).is_err());
    assert!(PackedLinear::new(&[0; 6], 2, 3, &[1.0; 3], &[]).is_err());
    assert!(PackedLinear::new(&[0; 6], 2, 3, &[0.0], &[]).is_err());
}

#[test]
fn packing_round_trips() {
    let mut rng = Rng(3);
    for &(k, n) in &[(1, 1), (5, 33), (64, 31), (130, 70)] {
        let b = rng.i8s(k * n);
        assert_eq!(PackedB::from_kn(&b, k, n).unwrap().to_kn(), b);
        assert_eq!(PackedB::from_nk(&b, n, k).unwrap().to_nk(), b);
        let w = PackedLinear::new(&b, n, k, &[0.5], &[]).unwrap();
        assert_eq!(w.weight(), b);
        let q: Vec<i8> = b.iter().map(|&v| v >> 4).collect();
        let ng = k.div_ceil(16);
        let s: Vec<f32> = (0..n * ng).map(|i| 0.01 + i as f32).collect();
        let p = int4::PackedInt4::new(&q, n, k, &s, &[], 16).unwrap();
        assert_eq!(p.unpack(), (q.clone(), s.clone(), vec![]));
        let z: Vec<i8> = (0..n * ng).map(|i| (i % 16) as i8 - 8).collect();
        let p = int4::PackedInt4::new(&q, n, k, &s, &z, 16).unwrap();
        assert_eq!(p.unpack(), (q, s, z));
    }
}

/// Reference of the float path with the same activation quantization (codes up to `qmax`: 255, or 127 for
/// `reduce_range`).
#[allow(clippy::too_many_arguments)]
fn ref_linear(x: &[f32], m: usize, k: usize, w: &[i8], n: usize, sw: &[f32], zw: &[i32], bias: &[f32], sym: bool, qmax: i32) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        let row = &x[i * k..(i + 1) * k];
        let lo = row.iter().cloned().fold(f32::INFINITY, f32::min);
        let hi = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let (s, z) = gemm::act_qparams(lo, hi, sym, qmax);
        let q: Vec<i64> =
            row.iter().map(|&v| (((v * (1.0 / s)).round_ties_even() + z as f32).clamp(0.0, qmax as f32)) as i64 - z as i64).collect();
        for j in 0..n {
            let zj = if zw.is_empty() { 0 } else { zw[j] } as i64;
            let acc: i64 = (0..k).map(|kk| q[kk] * (w[j * k + kk] as i64 - zj)).sum();
            let sj = if sw.len() == 1 { sw[0] } else { sw[j] };
            out[i * n + j] = (acc as f64 * s as f64 * sj as f64 + bias[j] as f64) as f32;
        }
    }
    out
}

#[test]
fn linear_matches_reference() {
    let mut rng = Rng(11);
    for &(m, k, n) in &[(1, 9, 5), (3, 64, 40), (17, 257, 33), (16, 1543, 70), (40, 1000, 70), (30, 2 * gemm::KC + 809, 37)] {
        let x = rng.f32s(m * k);
        let w = rng.i8s(n * k);
        let bias = rng.f32s(n);
        let sw: Vec<f32> = (0..n).map(|j| 0.001 + j as f32 * 1e-4).collect();
        let zw: Vec<i32> = (0..n).map(|j| (j as i32 % 7) - 3).collect();
        for (sw, zw) in [(&sw[..1], &[][..]), (&sw[..], &zw[..])] {
            let packed = PackedLinear::new(&w, n, k, sw, zw).unwrap();
            for (sym, reduce_range) in [(true, false), (false, false), (true, true), (false, true)] {
                let act = ActQuant::DynamicPerRow { symmetric: sym, reduce_range };
                let want = ref_linear(&x, m, k, &w, n, sw, zw, &bias, sym, act.qmax());
                for p in paths() {
                    let mut out = vec![0f32; m * n];
                    gemm::int8_linear(p, &x, m, &packed, Some(&bias), act, Activation::Identity, &mut out).unwrap();
                    for (g, w) in out.iter().zip(&want) {
                        assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{p:?} {m}x{k}x{n} {act:?}: {g} vs {w}");
                    }
                }
            }
        }
    }
}

/// erf in f64: its Taylor series for |x| <= 3 (cancellation below 1e-12 there), else 1 - the asymptotic erfc
/// series (six terms: error below 1e-9).
fn erf64(x: f64) -> f64 {
    let a = x.abs();
    let v = if a <= 3.0 {
        let (mut term, mut sum, mut n) = (a, a, 0.0);
        while term.abs() > 1e-18 {
            n += 1.0;
            term *= -a * a / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        let (mut t, mut s) = (1.0, 1.0);
        for i in 1..6 {
            t *= -(2.0 * i as f64 - 1.0) / (2.0 * a * a);
            s += t;
        }
        1.0 - (-a * a).exp() / (a * std::f64::consts::PI.sqrt()) * s
    };
    v.copysign(x)
}

#[test]
fn linear_activations_are_applied_in_the_epilogue() {
    // The fused ReLU / GELU equal the activation applied to the plain output (GELU within float32 rounding
    // of the exact erf form), on every path and with and without weight zero points.
    let mut rng = Rng(23);
    let (m, k, n) = (37, 300, 70);
    let x: Vec<f32> = rng.f32s(m * k).into_iter().map(|v| 3.0 * v).collect();
    let w = rng.i8s(n * k);
    let bias = rng.f32s(n);
    let sw: Vec<f32> = (0..n).map(|j| 0.002 + j as f32 * 2e-4).collect();
    let zw: Vec<i32> = (0..n).map(|j| (j as i32 % 5) - 2).collect();
    for zw in [&[][..], &zw[..]] {
        let packed = PackedLinear::new(&w, n, k, &sw, zw).unwrap();
        let act = ActQuant::DynamicPerRow { symmetric: false, reduce_range: false };
        for p in paths() {
            let run = |a: Activation| {
                let mut out = vec![0f32; m * n];
                gemm::int8_linear(p, &x, m, &packed, Some(&bias), act, a, &mut out).unwrap();
                out
            };
            let (plain, relu, gelu) = (run(Activation::Identity), run(Activation::Relu), run(Activation::Gelu));
            assert!(plain.iter().any(|&v| v < -1.0) && plain.iter().any(|&v| v > 1.0), "outputs span both signs");
            for ((&v, &r), &g) in plain.iter().zip(&relu).zip(&gelu) {
                assert_eq!(r, v.max(0.0), "{p:?} relu({v})");
                let v = v as f64;
                let want = 0.5 * v * (1.0 + erf64(v / std::f64::consts::SQRT_2));
                assert!((g as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "{p:?} gelu({v}) = {g}, want {want}");
            }
        }
    }
}

#[test]
fn activation_names_parse() {
    assert_eq!(Activation::parse("gelu").unwrap(), Activation::Gelu);
    assert_eq!(Activation::parse("relu").unwrap(), Activation::Relu);
    assert_eq!(Activation::parse("none").unwrap(), Activation::Identity);
    let e = Activation::parse("swish").unwrap_err().to_string();
    assert!(e.contains("swish") && e.contains("gelu"), "{e}");
}

#[test]
fn int4_matches_reference() {
    let mut rng = Rng(5);
    for &(m, k, n, g) in &[(1, 64, 32, 32), (3, 100, 45, 32), (5, 256, 70, 64), (9, 40, 3, 8), (13, 384, 64, 128)] {
        let x = rng.f32s(m * k);
        let q: Vec<i8> = rng.i8s(n * k).into_iter().map(|v| v >> 4).collect();
        let ng = k.div_ceil(g);
        // Half-precision scales: bits around 2^-7..2^-6 (normal), and the f32 values they stand for.
        let s16: Vec<u16> = (0..n * ng).map(|i| 0x2000 + (i % 977) as u16).collect();
        let s32: Vec<f32> = (0..n * ng).map(|i| 0.01 + (i % 13) as f32 * 1e-3).collect();
        let zeros: Vec<i8> = rng.i8s(n * ng).into_iter().map(|v| v >> 4).collect();
        // 8-bit scale codes over the whole range, and per-column steps.
        let codes: Vec<u8> = (0..n * ng).map(|i| 1 + (i * 37 % 255) as u8).collect();
        let step: Vec<f32> = (0..n).map(|j| 4e-5 * (1 + j % 7) as f32).collect();
        for (zw, sym, fmt) in [(&[][..], true, 0), (&zeros[..], true, 0), (&zeros[..], false, 0), (&[][..], false, 0),
                               (&[][..], true, 1), (&zeros[..], false, 1), (&[][..], true, 2), (&zeros[..], false, 2),
                               (&[][..], false, 2)] {
            let (packed, s) = match fmt {
                1 => {
                    let p = int4::PackedInt4::new(&q, n, k, int4::GroupScales::F16(&s16), zw, g).unwrap();
                    (p, s16.iter().map(|&h| nnic_kernels::half::f16_to_f32(h) as f64).collect::<Vec<f64>>())
                }
                2 => {
                    let p = int4::PackedInt4::new(&q, n, k, int4::GroupScales::U8 { codes: &codes, step: &step }, zw, g);
                    (p.unwrap(), (0..n * ng).map(|i| codes[i] as f64 * step[i / ng] as f64).collect())
                }
                _ => (int4::PackedInt4::new(&q, n, k, &s32, zw, g).unwrap(), s32.iter().map(|&v| v as f64).collect()),
            };
            assert_eq!(packed.has_f16_scales(), fmt == 1);
            assert_eq!(packed.has_u8_scales(), fmt == 2);
            let unpacked: Vec<f64> = packed.unpack().1.into_iter().map(|v| v as f64).collect();
            if fmt == 2 {
                assert_eq!(packed.u8_scales(), Some((codes.clone(), step.clone())));
            } else {
                assert_eq!(unpacked, s);
            }
            // Reference: the same per-row activation quantization, f64 accumulation.
            let mut want = vec![0f64; m * n];
            for i in 0..m {
                let row = &x[i * k..(i + 1) * k];
                let lo = row.iter().cloned().fold(f32::INFINITY, f32::min);
                let hi = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let (sa, za) = gemm::act_qparams(lo, hi, sym, 255);
                let qa: Vec<f64> = row
                    .iter()
                    .map(|&v| (((v * (1.0 / sa)).round_ties_even() + za as f32).clamp(0.0, 255.0) as i32 - za) as f64)
                    .collect();
                for j in 0..n {
                    let mut acc = 0f64;
                    for kk in 0..k {
                        let z = if zw.is_empty() { 0 } else { zw[j * ng + kk / g] } as f64;
                        acc += qa[kk] * (q[j * k + kk] as f64 - z) * s[j * ng + kk / g];
                    }
                    want[i * n + j] = acc * sa as f64;
                }
            }
            for p in paths() {
                let mut out = vec![0f32; m * n];
                int4::int4_linear(p, &x, m, &packed, None, ActQuant::DynamicPerRow { symmetric: sym, reduce_range: false }, &mut out).unwrap();
                for (gv, wv) in out.iter().zip(&want) {
                    assert!((*gv as f64 - wv).abs() <= 1e-4 * (1.0 + wv.abs()), "{p:?} {m}x{k}x{n} g{g}: {gv} vs {wv}");
                }
            }
        }
    }
    assert!(int4::PackedInt4::new(&[0; 8], 1, 8, &[1.0], &[9], 8).is_err());
    assert!(int4::PackedInt4::new(&[0; 8], 1, 8, &[1.0], &[0, 0], 8).is_err());
    // Half scales must be finite and positive too (0x0000 is 0, 0x7c00 is +inf, 0xbc00 is -1).
    for bad in [0x0000u16, 0x7c00, 0xbc00, 0x7e00] {
        assert!(int4::PackedInt4::new(&[0; 8], 1, 8, int4::GroupScales::F16(&[bad]), &[], 8).is_err());
    }
    // Half scales hold 2 bytes per group and column instead of 4.
    let (q, s16, s32) = (vec![0i8; 64 * 256], vec![0x3c00u16; 64 * 8], vec![1f32; 64 * 8]);
    let b16 = int4::PackedInt4::new(&q, 64, 256, int4::GroupScales::F16(&s16), &[], 32).unwrap().nbytes();
    let b32 = int4::PackedInt4::new(&q, 64, 256, &s32, &[], 32).unwrap().nbytes();
    assert_eq!(b32 - b16, 2 * 64 * 8);
    // 8-bit scales: 1 byte per group and column, plus one step per (padded) column; codes 0 and bad steps refused.
    let (codes, step) = (vec![1u8; 64 * 8], vec![1f32; 64]);
    let b8 = int4::PackedInt4::new(&q, 64, 256, int4::GroupScales::U8 { codes: &codes, step: &step }, &[], 32).unwrap();
    assert_eq!(b16 - b8.nbytes(), 64 * 8 - 4 * 64);
    assert!(int4::PackedInt4::new(&[0; 8], 1, 8, int4::GroupScales::U8 { codes: &[0], step: &[1.0] }, &[], 8).is_err());
    for bad in [0.0f32, -1.0, f32::INFINITY, f32::NAN, f32::MAX] {
        assert!(int4::PackedInt4::new(&[0; 8], 1, 8, int4::GroupScales::U8 { codes: &[1], step: &[bad] }, &[], 8).is_err());
    }
    assert!(int4::PackedInt4::new(&[0; 8], 1, 8, int4::GroupScales::U8 { codes: &[1], step: &[1.0, 1.0] }, &[], 8).is_err());
}

#[test]
fn conv2d_matches_reference() {
    use nnic_kernels::gemm::conv::{int8_conv2d, ConvGeom};
    let mut rng = Rng(19);
    let cases = [
        ConvGeom { n: 2, c: 3, h: 9, w: 7, kh: 3, kw: 3, stride: (1, 1), padding: (1, 1), dilation: (1, 1) },
        ConvGeom { n: 1, c: 16, h: 8, w: 11, kh: 3, kw: 5, stride: (2, 1), padding: (1, 2), dilation: (1, 2) },
        ConvGeom { n: 3, c: 5, h: 6, w: 6, kh: 1, kw: 1, stride: (2, 2), padding: (0, 0), dilation: (1, 1) },
        ConvGeom { n: 1, c: 4, h: 5, w: 5, kh: 7, kw: 7, stride: (2, 2), padding: (3, 3), dilation: (1, 1) },
    ];
    for g in cases {
        let (ho, wo) = g.out_hw().unwrap();
        let co = 13;
        let k = g.kh * g.kw * g.c;
        let x = rng.f32s(g.n * g.h * g.w * g.c); // NHWC
        let wq = rng.i8s(co * k); // [co, kh, kw, c]
        let sw: Vec<f32> = (0..co).map(|j| 0.01 + j as f32 * 1e-3).collect();
        let bias = rng.f32s(co);
        let pw = PackedLinear::new(&wq, co, k, &sw, &[]).unwrap();
        for sym in [false, true] {
            let lo = x.iter().cloned().fold(f32::INFINITY, f32::min);
            let hi = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let (s, z) = gemm::act_qparams(lo, hi, sym, 255);
            let q: Vec<i64> =
                x.iter().map(|&v| ((v * (1.0 / s)).round_ties_even() + z as f32).clamp(0.0, 255.0) as i64 - z as i64).collect();
            for p in paths() {
                let mut out = vec![0f32; g.n * ho * wo * co];
                int8_conv2d(p, &x, g, &pw, Some(&bias), ActQuant::DynamicPerTensor { symmetric: sym, reduce_range: false }, &mut out).unwrap();
                for img in 0..g.n {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            for j in 0..co {
                                let mut acc = 0i64;
                                for dy in 0..g.kh {
                                    for dx in 0..g.kw {
                                        let iy = (oy * g.stride.0 + dy * g.dilation.0) as isize - g.padding.0 as isize;
                                        let ix = (ox * g.stride.1 + dx * g.dilation.1) as isize - g.padding.1 as isize;
                                        if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w {
                                            continue;
                                        }
                                        for c in 0..g.c {
                                            let xv = q[((img * g.h + iy as usize) * g.w + ix as usize) * g.c + c];
                                            acc += xv * wq[j * k + (dy * g.kw + dx) * g.c + c] as i64;
                                        }
                                    }
                                }
                                let want = acc as f64 * s as f64 * sw[j] as f64 + bias[j] as f64;
                                let got = out[((img * ho + oy) * wo + ox) * co + j] as f64;
                                assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{p:?} {g:?}: {got} vs {want}");
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A GEMM whose helpers cannot start (every pool thread is held by another job) still finishes, exactly, on
/// the calling thread: the caller never waits for a helper that has not claimed a task.
#[test]
fn gemm_finishes_while_every_pool_thread_is_busy() {
    use std::sync::mpsc;
    use std::time::Duration;
    let (m, k, n) = (64, 1024, 512);
    let mut rng = Rng(23);
    let (a, b) = (rng.i8s(m * k), rng.i8s(k * n));
    let packed = PackedB::from_kn(&b, k, n).unwrap(); // packing runs on the pool: before it is blocked
    let threads = nnic_kernels::pool::num_threads();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = std::sync::Arc::new(std::sync::Mutex::new(release_rx));
    let (started_tx, started_rx) = mpsc::channel::<()>();
    for _ in 0..threads {
        let (rx, started) = (release_rx.clone(), started_tx.clone());
        nnic_kernels::pool::spawn(move || {
            started.send(()).unwrap();
            let _ = rx.lock().unwrap().recv();
        });
    }
    for _ in 0..threads {
        started_rx.recv().unwrap(); // every pool thread now holds a blocked job
    }
    let (done_tx, done_rx) = mpsc::channel();
    let a2 = a.clone();
    std::thread::spawn(move || {
        let mut out = vec![0i32; m * n];
        gemm::matmul_i8(Path::active(), &a2, m, &packed, &mut out).unwrap();
        done_tx.send(out).unwrap();
    });
    // A hang guard, not a timing check: the old scheduler never returned here.
    let got = done_rx.recv_timeout(Duration::from_secs(120)).expect("the GEMM waited for busy pool threads");
    for _ in 0..threads {
        release_tx.send(()).unwrap();
    }
    for i in (0..m).step_by(7) {
        for j in (0..n).step_by(5) {
            let want: i32 = (0..k).map(|kk| a[i * k + kk] as i32 * b[kk * n + j] as i32).sum();
            assert_eq!(got[i * n + j], want);
        }
    }
}

#[test]
fn nonfinite_activation_is_named_by_its_flat_index_in_large_inputs() {
    // Per-tensor ranges of large inputs run in chunks in parallel; the error still names the value's index in
    // the whole input, not in its chunk.
    let (m, k, n) = (300, 768, 32);
    let w = Rng(5).i8s(n * k);
    let packed = PackedLinear::new(&w, n, k, &[0.01], &[]).unwrap();
    let bad = 200 * k + 17;
    let mut x = Rng(6).f32s(m * k);
    x[bad] = f32::NAN;
    for p in paths() {
        let mut out = vec![0f32; m * n];
        let act = ActQuant::DynamicPerTensor { symmetric: false, reduce_range: false };
        let e = gemm::int8_linear(p, &x, m, &packed, None, act, Activation::Identity, &mut out).unwrap_err().to_string();
        assert!(e.contains(&format!("flat index {bad}")), "{p:?}: {e}");
    }
}

#[test]
fn every_path_gives_the_same_float_bits() {
    // The integer products are exact and the epilogues do the same float operations in the same order, so the
    // float outputs are bit-identical on every path: also where the VNNI tile finishes its registers itself (K up
    // to one K slice, any M including the 1-2 row tiles, partial column panels) and where it does not (K > KC); and
    // with the weight byte -128 (the AVX2 path's widening kernel) or without it (its `vpmaddubsw` kernel).
    let mut rng = Rng(41);
    for (m, k, n) in [(1, 300, 70), (2, 64, 33), (5, 7, 32), (13, 300, 7), (40, 768, 96), (300, 96, 40), (30, 4100, 33)] {
        let x: Vec<f32> = rng.f32s(m * k).into_iter().map(|v| 4.0 * v).collect();
        let raw = rng.i8s(n * k);
        let min_free: Vec<i8> = raw.iter().map(|&v| v.max(-127)).collect();
        let bias: Vec<f32> = rng.f32s(n);
        let sw: Vec<f32> = (0..n).map(|j| 0.001 + j as f32 * 3e-5).collect();
        let zw: Vec<i32> = (0..n).map(|j| (j as i32 % 7) - 3).collect();
        for (w, zw) in [&raw, &min_free].into_iter().flat_map(|w| [(w, &[][..]), (w, &zw[..])]) {
            let packed = PackedLinear::new(w, n, k, &sw, zw).unwrap();
            for act in [ActQuant::DynamicPerRow { symmetric: false, reduce_range: false }, ActQuant::DynamicPerTensor { symmetric: true, reduce_range: false }] {
                for a in [Activation::Identity, Activation::Relu, Activation::Gelu] {
                    for b in [None, Some(&bias[..])] {
                        let run = |p: Path| {
                            let mut out = vec![0f32; m * n];
                            gemm::int8_linear(p, &x, m, &packed, b, act, a, &mut out).unwrap();
                            out.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
                        };
                        let want = run(Path::Scalar);
                        for p in paths() {
                            assert_eq!(run(p), want, "{p:?} {m}x{k}x{n} {act:?} {a:?} bias {} zw {}", b.is_some(), zw.len());
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn the_tall_tile_gives_the_bits_of_the_two_panel_tiles() {
    // 13 to 28 rows run on the VNNI tall tile (one row panel, 16 columns per pass) unless it is turned off, when they
    // run as two or three panels of the 12-row tile: same exact products, same finishing, so the same float bits and
    // i32 values; 12 and 29 rows (no tall tile either way) guard the edges. K past one slice (4100) and partial column
    // panels (7, 33, 70) included. Other tests may run meanwhile: either setting gives them the same bits.
    if !Path::Vnni.is_supported() {
        return;
    }
    let mut rng = Rng(43);
    for m in 12..=29 {
        for (k, n) in [(300, 70), (64, 33), (4100, 7), (768, 96)] {
            let x: Vec<f32> = rng.f32s(m * k).into_iter().map(|v| 4.0 * v).collect();
            let a = rng.i8s(m * k);
            let w = rng.i8s(n * k);
            let bias: Vec<f32> = rng.f32s(n);
            let sw: Vec<f32> = (0..n).map(|j| 0.001 + j as f32 * 3e-5).collect();
            let zw: Vec<i32> = if m % 2 == 0 { (0..n).map(|j| (j as i32 % 7) - 3).collect() } else { Vec::new() };
            let packed = PackedLinear::new(&w, n, k, &sw, &zw).unwrap();
            let run = |tall: bool, act: ActQuant, f: Activation| {
                gemm::set_tall_tile(tall);
                let mut out = vec![0f32; m * n];
                gemm::int8_linear(Path::Vnni, &x, m, &packed, Some(&bias), act, f, &mut out).unwrap();
                let mut exact = vec![0i32; m * n];
                gemm::matmul_i8(Path::Vnni, &a, m, packed.packed(), &mut exact).unwrap();
                gemm::set_tall_tile(true);
                (out.iter().map(|v| v.to_bits()).collect::<Vec<u32>>(), exact)
            };
            for act in [ActQuant::DynamicPerRow { symmetric: false, reduce_range: false }, ActQuant::DynamicPerRow { symmetric: true, reduce_range: false }] {
                for f in [Activation::Identity, Activation::Gelu] {
                    let (tall, two) = (run(true, act, f), run(false, act, f));
                    assert_eq!(tall, two, "{m}x{k}x{n} {act:?} {f:?}");
                    assert_eq!(tall.1, ref_mm(&a, &w_kn(&w, n, k), m, k, n), "{m}x{k}x{n}");
                }
            }
        }
    }
}

/// `w[n, k]` as `[k, n]`.
fn w_kn(w: &[i8], n: usize, k: usize) -> Vec<i8> {
    (0..k * n).map(|i| w[(i % n) * k + i / n]).collect()
}
