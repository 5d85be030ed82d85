mod common;
use common::{for_each_isa, Rng};
use nnic_kernels::quant::{dequantize, quantize, Params};
use nnic_kernels::reduce::{abs_max, min_max};
use nnic_kernels::{KernelError, Layout};

/// Scalar reference with the same float32 semantics, written independently of the kernels.
fn quant_ref(x: &[f32], l: Layout, s: &[f32], z: &[i32], qmin: i32, qmax: i32) -> Vec<u8> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (i / l.inner) % l.channels;
            let r = (v / s[c]).round_ties_even() as f64 + z[c] as f64;
            r.clamp(qmin as f64, qmax as f64) as i32 as u8
        })
        .collect()
}

fn q(x: &[f32], l: Layout, s: &[f32], z: &[i32], qmin: i32, qmax: i32) -> Result<Vec<u8>, KernelError> {
    let mut out = vec![0u8; x.len()];
    quantize(x, l, Params { scale: s, zero_point: z, qmin, qmax }, &mut out).map(|_| out)
}

#[test]
fn half_even_and_clamping() {
    let x = [0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 1000.0, -1000.0, f32::INFINITY, f32::NEG_INFINITY, -0.0];
    let got = q(&x, Layout::per_tensor(x.len()), &[1.0], &[0], -128, 127).unwrap();
    let got: Vec<i8> = got.iter().map(|&b| b as i8).collect();
    assert_eq!(got, [0, 2, 2, 0, -2, -2, 127, -128, 127, -128, 0]);
    let got = q(&x, Layout::per_tensor(x.len()), &[1.0], &[3], 0, 15).unwrap();
    assert_eq!(got, [3, 5, 5, 3, 1, 1, 15, 0, 15, 0, 3]);
}

#[test]
fn quantize_errors() {
    let l = Layout::per_tensor(2);
    assert_eq!(q(&[1.0, 2.0], l, &[0.0], &[0], -128, 127), Err(KernelError::BadScale { channel: None, value: 0.0 }));
    assert!(matches!(q(&[1.0, 2.0], l, &[1.0], &[200], -128, 127), Err(KernelError::BadZeroPoint { .. })));
    assert_eq!(q(&[1.0, f32::NAN], l, &[1.0], &[0], -128, 127), Err(KernelError::Nan { arg: "x", tensor: None, index: 1 }));
    let l = Layout::from_shape(&[2, 1], Some(0)).unwrap();
    assert_eq!(
        q(&[1.0, 2.0], l, &[1.0, f32::INFINITY], &[0, 0], -128, 127),
        Err(KernelError::BadScale { channel: Some(1), value: f32::INFINITY })
    );
    assert!(Layout::from_shape(&[2, 1], Some(2)).is_err());
}

#[test]
fn per_tensor_and_per_channel_every_axis_every_isa() {
    let mut rng = Rng(4);
    for shape in [vec![7usize], vec![3, 5, 7], vec![130_000, 3], vec![4, 70_000], vec![64, 8, 300], vec![5, 3000, 9]] {
        let n: usize = shape.iter().product();
        let x = rng.normals(n, 4.0);
        for axis in std::iter::once(None).chain((0..shape.len()).map(Some)) {
            let l = Layout::from_shape(&shape, axis).unwrap();
            let s: Vec<f32> = (0..l.channels).map(|c| 0.01 + 0.003 * c as f32).collect();
            let z: Vec<i32> = (0..l.channels).map(|c| (c % 7) as i32 - 3).collect();
            for (qmin, qmax) in [(-128, 127), (-8, 7)] {
                let want = quant_ref(&x, l, &s, &z, qmin, qmax);
                for_each_isa(|isa| {
                    assert!(q(&x, l, &s, &z, qmin, qmax).unwrap() == want, "{isa:?} {shape:?} {axis:?}");
                });
            }
            let qs = quant_ref(&x, l, &s, &z, -128, 127);
            let want: Vec<f32> =
                qs.iter().enumerate().map(|(i, &b)| { let c = (i / l.inner) % l.channels; (b as i8 as i32 - z[c]) as f32 * s[c] }).collect();
            for_each_isa(|isa| {
                let mut out = vec![0f32; n];
                dequantize(&qs, true, l, &s, &z, &mut out).unwrap();
                assert!(out == want, "{isa:?} {shape:?} {axis:?}");
            });
        }
    }
}

#[test]
fn dequantize_unsigned() {
    let q = [0u8, 128, 255];
    let mut out = [0f32; 3];
    dequantize(&q, false, Layout::per_tensor(3), &[0.5], &[128], &mut out).unwrap();
    assert_eq!(out, [-64.0, 0.0, 63.5]);
}

#[test]
fn reductions() {
    let x = [-3.0f32, 2.0, -0.0, 1.0, f32::NEG_INFINITY, 0.5];
    assert_eq!(abs_max(&x[..4], Layout::per_tensor(4)).unwrap(), vec![3.0]);
    assert_eq!(abs_max(&x, Layout::per_tensor(6)).unwrap(), vec![f32::INFINITY]);
    let l = Layout::from_shape(&[2, 3], Some(1)).unwrap();
    assert_eq!(min_max(&x, l).unwrap(), (vec![-3.0, f32::NEG_INFINITY, -0.0], vec![1.0, 2.0, 0.5]));
    assert_eq!(abs_max(&[], Layout::per_tensor(0)), Err(KernelError::Empty { arg: "x" }));
    assert_eq!(abs_max(&[], Layout::from_shape(&[0, 3], Some(0)).unwrap()), Ok(vec![]));
    assert_eq!(abs_max(&[], Layout::from_shape(&[3, 0], Some(0)).unwrap()), Err(KernelError::Empty { arg: "x" }));
    assert_eq!(
        min_max(&[1.0, 2.0, f32::NAN], Layout::per_tensor(3)),
        Err(KernelError::Nan { arg: "x", tensor: None, index: 2 })
    );
}

#[test]
fn reductions_every_isa_every_axis() {
    let mut rng = Rng(8);
    for shape in [vec![300_000usize], vec![1000, 3, 50], vec![3, 100_000], vec![70_000, 2]] {
        let n: usize = shape.iter().product();
        let x = rng.normals(n, 2.0);
        for axis in std::iter::once(None).chain((0..shape.len()).map(Some)) {
            let l = Layout::from_shape(&shape, axis).unwrap();
            let mut am = vec![0f32; l.channels];
            let mut lo = vec![f32::INFINITY; l.channels];
            let mut hi = vec![f32::NEG_INFINITY; l.channels];
            for (i, &v) in x.iter().enumerate() {
                let c = (i / l.inner) % l.channels;
                am[c] = am[c].max(v.abs());
                lo[c] = lo[c].min(v);
                hi[c] = hi[c].max(v);
            }
            for_each_isa(|isa| {
                assert_eq!(abs_max(&x, l).unwrap(), am, "{isa:?} {shape:?} {axis:?}");
                assert_eq!(min_max(&x, l).unwrap(), (lo.clone(), hi.clone()), "{isa:?} {shape:?} {axis:?}");
            });
        }
    }
}

/// Outputs of 16 MiB and more are streamed (non-temporal stores through a staging buffer): same results.
#[test]
fn streamed_outputs_match_scalar() {
    let mut rng = Rng(12);
    let n = (16 << 20) + 4099;
    let x = rng.normals(n, 3.0);
    for (shape, axis) in [(vec![n], None), (vec![n / 7, 7], Some(1)), (vec![7, n / 7], Some(0))] {
        let m: usize = shape.iter().product();
        let l = Layout::from_shape(&shape, axis).unwrap();
        let s: Vec<f32> = (0..l.channels).map(|c| 0.02 + 0.001 * c as f32).collect();
        let z: Vec<i32> = (0..l.channels).map(|c| c as i32 % 5).collect();
        let mut results = Vec::new();
        for_each_isa(|_| {
            let qs = q(&x[..m], l, &s, &z, -128, 127).unwrap();
            let mut f = vec![0f32; m];
            dequantize(&qs, true, l, &s, &z, &mut f).unwrap();
            results.push((qs, f));
        });
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{shape:?} {axis:?}");
        let want = quant_ref(&x[..m], l, &s, &z, -128, 127);
        assert!(results[0].0 == want);
    }
}

/// The SIMD paths multiply by 1/scale and redo lanes near a rounding boundary with a division: values at
/// and around every half-integer quotient, for many scales, must still equal the division reference.
#[test]
fn multiply_path_is_exact_near_half_integers() {
    let mut rng = Rng(99);
    let mut x = Vec::new();
    let mut scales = vec![1.0f32, 0.1, 0.5, 3.0, 1e-3, 7.3e-5, 1e5, 2.0f32.powi(-126) * 4.0];
    scales.extend((0..40).map(|_| f32::from_bits(0x3000_0000 + (rng.next_u64() % 0x1800_0000) as u32)));
    for &s in &scales {
        x.clear();
        for m in -300..300 {
            let c = (m as f32 + 0.5) * s;
            let mut v = c;
            for _ in 0..4 {
                v = f32::from_bits(v.to_bits().wrapping_sub(1));
            }
            for _ in 0..9 {
                x.push(v);
                v = f32::from_bits(v.to_bits() + 1);
            }
            x.push(m as f32 * s);
        }
        let l = Layout::per_tensor(x.len());
        for (qmin, qmax, z) in [(-128, 127, 0), (0, 255, 128), (-8, 7, 1)] {
            let want = quant_ref(&x, l, &[s], &[z], qmin, qmax);
            for_each_isa(|isa| assert!(q(&x, l, &[s], &[z], qmin, qmax).unwrap() == want, "{isa:?} scale {s}"));
        }
        // Per channel (pattern rows): the same values in 3 channels of the last axis.
        let n3 = x.len() / 3 * 3;
        let l = Layout::from_shape(&[n3 / 3, 3], Some(1)).unwrap();
        let s3 = [s, s * 0.5, s * 3.0];
        let want = quant_ref(&x[..n3], l, &s3, &[0, 1, -1], -128, 127);
        for_each_isa(|isa| assert!(q(&x[..n3], l, &s3, &[0, 1, -1], -128, 127).unwrap() == want, "{isa:?} {s}"));
    }
}
