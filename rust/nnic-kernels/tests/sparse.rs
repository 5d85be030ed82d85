//! Sparse × dense products against a dense f64 reference, on every ISA path, both layouts and value types.
mod common;
use common::{for_each_isa, Rng};
use nnic_kernels::gemm::ActQuant;
use nnic_kernels::pool;
use nnic_kernels::sparse::{csr, nm, SparseLinear, Values};

/// Dense reference `x · Wᵀ + bias` in f64 from the layout's own dense weight.
fn reference(w: &SparseLinear, x: &[f32], m: usize, bias: Option<&[f32]>) -> Vec<f64> {
    let (n, k) = (w.out_features(), w.in_features());
    let d = w.to_dense();
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for r in 0..n {
            let s: f64 = (0..k).map(|c| d[r * k + c] as f64 * x[i * k + c] as f64).sum();
            out[i * n + r] = s + bias.map_or(0.0, |b| b[r] as f64);
        }
    }
    out
}

fn check(w: &SparseLinear, m: usize, rng: &mut Rng) {
    let (n, k) = (w.out_features(), w.in_features());
    let x = rng.normals(m * k, 1.0);
    let bias = rng.normals(n, 1.0);
    let want = reference(w, &x, m, Some(&bias));
    let mut out = vec![f32::NAN; m * n];
    w.linear(&x, m, Some(&bias), None, &mut out).unwrap();
    let d = w.to_dense();
    for i in 0..m {
        for r in 0..n {
            // float32 sums: error bounded by k · eps · Σ|w · x|
            let mag: f64 = (0..k).map(|c| (d[r * k + c] as f64 * x[i * k + c] as f64).abs()).sum::<f64>() + bias[r].abs() as f64;
            let err = (out[i * n + r] as f64 - want[i * n + r]).abs();
            assert!(err <= 1e-6 * mag * (k as f64).sqrt() + 1e-6, "m={m} row {r} batch {i}: {} vs {}", out[i * n + r], want[i * n + r]);
        }
    }
}

fn random_csr(rng: &mut Rng, n: usize, k: usize, density: f64, int8: bool) -> SparseLinear {
    let stride = k.div_ceil(8);
    let mut bits = vec![0u8; n * stride];
    let mut count = 0;
    for r in 0..n {
        for c in 0..k {
            if (rng.next_u64() % 1000) as f64 / 1000.0 < density {
                bits[r * stride + c / 8] |= 1 << (c % 8);
                count += 1;
            }
        }
    }
    if int8 {
        let v = (0..count).map(|_| (rng.next_u64() % 255) as i8).collect();
        let s = (0..n).map(|r| 0.01 + r as f32 * 1e-3).collect();
        csr::from_bitmask(n, k, &bits, Values::I8(v), s).unwrap()
    } else {
        csr::from_bitmask(n, k, &bits, Values::F32(rng.normals(count, 1.0)), vec![]).unwrap()
    }
}

fn random_nm(rng: &mut Rng, rows: usize, k: usize, n: usize, m: usize, int8: bool) -> SparseLinear {
    let (len, bytes) = nm::row_sizes(k, n, m);
    let mut idx = vec![0u8; rows * bytes];
    for r in 0..rows {
        for g in 0..k / m {
            // n distinct positions of the group
            let mut pos: Vec<u8> = (0..m as u8).collect();
            for i in 0..n {
                let j = i + (rng.next_u64() as usize) % (m - i);
                pos.swap(i, j);
            }
            for (i, &p) in pos[..n].iter().enumerate() {
                let slot = g * n + i;
                idx[r * bytes + slot / 2] |= p << ((slot & 1) * 4);
            }
        }
    }
    let values = if int8 {
        Values::I8((0..rows * len).map(|_| (rng.next_u64() % 255) as i8).collect())
    } else {
        Values::F32(rng.normals(rows * len, 1.0))
    };
    let scale = if int8 { (0..rows).map(|r| 0.02 + r as f32 * 1e-3).collect() } else { vec![] };
    nm::from_parts(rows, k, n, m, idx, values, scale).unwrap()
}

#[test]
fn csr_matches_dense_reference_on_every_path() {
    for_each_isa(|_| {
        let mut rng = Rng(7);
        for &(n, k, density) in &[(1, 1, 1.0), (5, 3, 0.5), (37, 70, 0.1), (64, 515, 0.3), (33, 1000, 0.02), (8, 40, 0.0)] {
            for int8 in [false, true] {
                let w = random_csr(&mut rng, n, k, density, int8);
                for m in [1, 2, 3, 4, 5, 17, 33, 70] {
                    check(&w, m, &mut rng);
                }
            }
        }
    });
}

#[test]
fn nm_matches_dense_reference_on_every_path() {
    for_each_isa(|_| {
        let mut rng = Rng(11);
        for &(rows, k, n, m) in &[(3, 4, 2, 4), (17, 96, 2, 4), (9, 128, 1, 4), (5, 96, 4, 8), (7, 60, 3, 5), (4, 64, 16, 16), (6, 80, 1, 2)] {
            for int8 in [false, true] {
                let w = random_nm(&mut rng, rows, k, n, m, int8);
                for b in [1, 2, 4, 19, 65] {
                    check(&w, b, &mut rng);
                }
            }
        }
    });
}

#[test]
fn bitmask_round_trip_and_bad_layouts_are_errors() {
    let mut rng = Rng(3);
    let w = random_csr(&mut rng, 9, 21, 0.4, false);
    let bits = csr::to_bitmask(&w).unwrap();
    let Values::F32(v) = w.values().clone() else { unreachable!() };
    let bits = bits.to_vec();
    assert_eq!(csr::from_bitmask(9, 21, &bits, Values::F32(v.clone()), vec![]).unwrap(), w);
    let short = csr::from_bitmask(9, 21, &bits[1..], Values::F32(v.clone()), vec![]).unwrap_err();
    assert!(short.to_string().contains("bitmask has"), "{short}");
    let few = csr::from_bitmask(9, 21, &bits, Values::F32(v[1..].to_vec()), vec![]).unwrap_err();
    assert!(few.to_string().contains("values were given"), "{few}");
    let mut past = bits.clone();
    past[2] |= 0x80; // column 23 of a 21-column row
    assert!(csr::from_bitmask(9, 21, &past, Values::F32(v.clone()), vec![]).is_err());
    let mut nan = v.clone();
    nan[0] = f32::NAN;
    assert!(csr::from_bitmask(9, 21, &bits, Values::F32(nan), vec![]).unwrap_err().to_string().contains("NaN"));
    assert!(csr::from_bitmask(1, 70_000, &vec![0; 8750], Values::F32(vec![]), vec![]).is_err());
    assert!(nm::from_parts(1, 8, 2, 4, vec![0x44, 0x00], Values::F32(vec![0.0; 4]), vec![]).is_err()); // index 4 >= m
    assert!(nm::from_parts(1, 6, 2, 4, vec![0; 2], Values::F32(vec![0.0; 4]), vec![]).is_err()); // 6 % 4
}

#[test]
fn non_finite_inputs_give_what_the_dense_product_gives() {
    // Row 0 stores column 0 only; row 1 stores nothing; row 2 stores columns 0 and 2.
    let bits = vec![0b001, 0b000, 0b101];
    let w = csr::from_bitmask(3, 3, &bits, Values::F32(vec![2.0, 1.0, 1.0]), vec![]).unwrap();
    for_each_isa(|_| {
        let mut out = vec![0f32; 3];
        w.linear(&[f32::INFINITY, 1.0, 1.0], 1, None, None, &mut out).unwrap();
        // dense: row 0 = 2·inf + 0·1 + 0·1 = inf; row 1 = 0·inf = NaN; row 2 = inf + 1
        assert_eq!(out[0], f32::INFINITY);
        assert!(out[1].is_nan());
        assert_eq!(out[2], f32::INFINITY);
        w.linear(&[1.0, f32::NAN, 1.0], 1, None, None, &mut out).unwrap();
        assert!(out.iter().all(|v| v.is_nan()));
    });
}

#[test]
fn int8_activations_match_exact_integer_sums() {
    let mut rng = Rng(5);
    let w = random_csr(&mut rng, 13, 300, 0.2, true);
    let x = rng.normals(6 * 300, 2.0);
    let mut out = vec![0f32; 6 * 13];
    for_each_isa(|_| {
        w.linear(&x, 6, None, Some(ActQuant::DynamicPerRow { symmetric: true, reduce_range: false }), &mut out).unwrap();
        let d = w.to_dense();
        for i in 0..6 {
            let row = &x[i * 300..(i + 1) * 300];
            let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            let s = amax / 127.0;
            let q: Vec<f32> = row.iter().map(|v| (v * (1.0 / s)).round_ties_even().clamp(-128.0, 127.0)).collect();
            for r in 0..13 {
                let want: f64 = (0..300).map(|c| d[r * 300 + c] as f64 * q[c] as f64).sum::<f64>() * s as f64;
                assert!((out[i * 13 + r] as f64 - want).abs() <= 1e-5 * want.abs() + 1e-5, "{} vs {want}", out[i * 13 + r]);
            }
        }
    });
    let mut x2 = x.clone();
    x2[5] = f32::NAN;
    assert!(w.linear(&x2, 6, None, Some(ActQuant::DynamicPerRow { symmetric: true, reduce_range: false }), &mut out).is_err());
}

#[test]
fn shape_errors_name_the_argument() {
    let w = csr::from_bitmask(2, 8, &[1, 2], Values::F32(vec![1.0, 2.0]), vec![]).unwrap();
    let mut out = vec![0f32; 2];
    assert!(w.linear(&[0.0; 7], 1, None, None, &mut out).unwrap_err().to_string().contains("x has 7"));
    assert!(w.linear(&[0.0; 8], 1, Some(&[0.0]), None, &mut out).unwrap_err().to_string().contains("bias"));
    assert!(w.linear(&[0.0; 8], 1, None, None, &mut out[..1]).unwrap_err().to_string().contains("out has"));
}

/// `Σ_c code[r, c] · (q[i, c] - z_i)` in exact integers with the kernels' activation quantization, times scales.
fn int8_reference(w: &SparseLinear, x: &[f32], m: usize, act: ActQuant) -> Vec<f64> {
    let (n, k) = (w.out_features(), w.in_features());
    let q = nnic_kernels::sparse::act::fake_quant(x, m, k, act, 2).unwrap();
    let d = w.to_dense();
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for r in 0..n {
            let s = w.scale()[r];
            let codes: i64 = (0..k).map(|c| (d[r * k + c] / s).round() as i64 * (q.q[i * k + c] as i64 - q.zero[i] as i64)).sum();
            out[i * n + r] = codes as f64 * q.scale[i] as f64 * s as f64;
        }
    }
    out
}

#[test]
fn int8_activations_at_small_batches_are_exact_integer_sums_on_every_path() {
    // the batch-1 integer kernels (AVX-512 VNNI: 64-input blocks, pairs of them, masked tails) at densities on
    // both sides of their 1/16 switch, and codes at the int8 extremes
    let mut rng = Rng(11);
    for &k in &[1usize, 7, 63, 64, 65, 127, 128, 129, 300, 1000] {
        for &density in &[0.03, 0.07, 0.3, 0.9, 1.0] {
            let w = random_csr(&mut rng, 9, k, density, true);
            for m in 1..=3 {
                let x = rng.normals(m * k, 3.0);
                for act in [ActQuant::DynamicPerRow { symmetric: false, reduce_range: false }, ActQuant::DynamicPerTensor { symmetric: true, reduce_range: false }] {
                    let want = int8_reference(&w, &x, m, act);
                    let mut out = vec![f32::NAN; m * 9];
                    for_each_isa(|isa| {
                        w.linear(&x, m, None, Some(act), &mut out).unwrap();
                        for (j, (&g, &e)) in out.iter().zip(&want).enumerate() {
                            assert!((g as f64 - e).abs() <= 1e-6 * e.abs() + 1e-6, "{isa:?} k={k} d={density} m={m} #{j}: {g} vs {e}");
                        }
                    });
                }
            }
        }
    }
}

#[test]
fn products_split_over_threads_equal_the_one_thread_product_bit_for_bit() {
    // Large enough that the rows are split into tasks and the batch transposition into column blocks (both
    // above PAR_MIN_WORK), with a batch that is not a multiple of the tile width and k not one of the 128-column
    // block: every output row is summed in the same order whatever the split, so the results must be identical.
    // (inside for_each_isa: it holds the lock that keeps other tests from switching the ISA between the two runs)
    for_each_isa(|_| {
        let mut rng = Rng(19);
        let layers = [
            random_csr(&mut rng, 301, 1100, 0.3, false),
            random_csr(&mut rng, 257, 900, 0.1, true),
            random_nm(&mut rng, 203, 1104, 2, 4, false),
        ];
        for w in &layers {
            let (n, k) = (w.out_features(), w.in_features());
            for m in [1, 3, 70] {
                let x = rng.normals(m * k, 1.0);
                let bias = rng.normals(n, 1.0);
                let act = [None, Some(ActQuant::DynamicPerRow { symmetric: false, reduce_range: false })];
                for a in act {
                    let run = |threads: usize| {
                        pool::set_num_threads(threads).unwrap();
                        let mut out = vec![f32::NAN; m * n];
                        w.linear(&x, m, Some(&bias), a, &mut out).unwrap();
                        out
                    };
                    let one = run(1);
                    let three = run(3);
                    assert!(one.iter().zip(&three).all(|(p, q)| p.to_bits() == q.to_bits()), "m={m} act={a:?}");
                }
            }
        }
    });
    pool::set_num_threads(pool::default_threads()).unwrap();
}

/// GELU (erf form) in f64, the reference of the fused activation.
fn gelu64(v: f64) -> f64 {
    // erf by its series / continued fraction is not in std: Abramowitz-Stegun 7.1.26 errs by 1.5e-7, enough here
    let (s, a) = (v.signum(), (v / std::f64::consts::SQRT_2).abs());
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    0.5 * v * (1.0 + s * (1.0 - poly * (-a * a).exp()))
}

#[test]
fn fused_activations_follow_the_bias_on_every_path() {
    use nnic_kernels::gemm::Activation;
    for_each_isa(|isa| {
        let mut rng = Rng(41);
        for w in [random_csr(&mut rng, 37, 300, 0.1, false), random_csr(&mut rng, 37, 300, 0.4, true), random_nm(&mut rng, 37, 296, 2, 4, false)] {
            let (n, k) = (w.out_features(), w.in_features());
            for m in [1, 3, 20] {
                let x = rng.normals(m * k, 1.0);
                let bias = rng.normals(n, 1.0);
                let mut plain = vec![0f32; m * n];
                w.linear(&x, m, Some(&bias), None, &mut plain).unwrap();
                for act in [Activation::Relu, Activation::Gelu] {
                    let mut got = vec![f32::NAN; m * n];
                    w.linear_act(&x, m, Some(&bias), None, act, &mut got).unwrap();
                    for (g, &p) in got.iter().zip(&plain) {
                        let want = if act == Activation::Relu { p.max(0.0) as f64 } else { gelu64(p as f64) };
                        let err = (*g as f64 - want).abs();
                        assert!(err <= 1e-6 * (1.0 + p.abs() as f64), "{isa:?} m={m} {act:?}: {g} vs {want} (from {p})");
                    }
                }
            }
        }
    });
}
