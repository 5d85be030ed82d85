mod common;
use common::{for_each_isa, kth_ref, Rng};
use nnic_kernels::select::{global_kth_smallest_abs, kth_smallest_abs, select};
use nnic_kernels::KernelError;

#[test]
fn empty_and_k_out_of_range() {
    assert_eq!(kth_smallest_abs(&[], 1), Err(KernelError::Empty { arg: "x" }));
    assert!(matches!(kth_smallest_abs(&[1.0], 0), Err(KernelError::KOutOfRange { k: 0, n: 1, .. })));
    assert!(matches!(kth_smallest_abs(&[1.0], 2), Err(KernelError::KOutOfRange { k: 2, n: 1, .. })));
    assert_eq!(global_kth_smallest_abs(&[&[], &[]], 1), Err(KernelError::Empty { arg: "xs" }));
}

#[test]
fn one_element_and_signed_zero() {
    assert_eq!(kth_smallest_abs(&[-3.5], 1).unwrap(), 3.5);
    let t = kth_smallest_abs(&[-0.0, 0.0, -0.0], 2).unwrap();
    assert_eq!(t.to_bits(), 0, "threshold of ±0.0 is +0.0");
}

#[test]
fn infinities_are_largest() {
    let x = [f32::NEG_INFINITY, 1.0, f32::INFINITY, -2.0];
    assert_eq!(kth_smallest_abs(&x, 2).unwrap(), 2.0);
    assert_eq!(kth_smallest_abs(&x, 4).unwrap(), f32::INFINITY);
}

#[test]
fn nan_is_an_error_with_its_index() {
    for n in [10usize, 100_000] {
        let mut x = vec![1.0f32; n];
        x[n - 3] = f32::NAN;
        x[n - 1] = -f32::NAN;
        assert_eq!(kth_smallest_abs(&x, 1), Err(KernelError::Nan { arg: "x", tensor: None, index: n - 3 }));
        let (a, b) = x.split_at(n / 2);
        assert_eq!(
            global_kth_smallest_abs(&[a, b], 1),
            Err(KernelError::Nan { arg: "xs", tensor: Some(1), index: n - 3 - n / 2 })
        );
    }
}

#[test]
fn matches_sort_for_every_isa_and_size() {
    let mut rng = Rng(7);
    for n in [1usize, 2, 17, 1000, 16_383, 16_384, 70_000, 300_001] {
        let x = rng.normals(n, 3.0);
        let ks = [1, n / 3 + 1, n / 2 + 1, n];
        let want: Vec<f32> = ks.iter().map(|&k| kth_ref(&x, k)).collect();
        for_each_isa(|isa| {
            for (&k, &w) in ks.iter().zip(&want) {
                let got = kth_smallest_abs(&x, k as u64).unwrap();
                assert_eq!(got.to_bits(), w.to_bits(), "isa {isa:?} n {n} k {k}");
            }
        });
    }
}

#[test]
fn all_equal_and_ties() {
    let mut rng = Rng(11);
    for n in [5usize, 50_000, 200_000] {
        let x = vec![-2.0f32; n];
        for_each_isa(|_| {
            assert_eq!(kth_smallest_abs(&x, 1).unwrap(), 2.0);
            assert_eq!(kth_smallest_abs(&x, n as u64).unwrap(), 2.0);
            let s = select(&[&x], n as u64 / 2 + 1, false).unwrap();
            assert_eq!((s.below, s.equal), (0, n as u64));
        });
        let x = rng.ties(n, 5);
        for k in [1, n / 4 + 1, n] {
            let want = kth_ref(&x, k);
            for_each_isa(|isa| assert_eq!(kth_smallest_abs(&x, k as u64).unwrap(), want, "{isa:?} {n} {k}"));
        }
    }
}

#[test]
fn values_in_one_high_bin_and_subnormals() {
    // Same top 16 bits: everything is decided by pass 2.
    let x: Vec<f32> = (0..100_000u32).rev().map(|i| f32::from_bits(0x3f80_0000 | (i % 65_536))).collect();
    let y: Vec<f32> = (0..100_000u32).map(|i| f32::from_bits(i % 9000) * if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
    for_each_isa(|isa| {
        for k in [1usize, 12_345, 99_999, 100_000] {
            assert_eq!(kth_smallest_abs(&x, k as u64).unwrap(), kth_ref(&x, k), "{isa:?} {k}");
            assert_eq!(kth_smallest_abs(&y, k as u64).unwrap(), kth_ref(&y, k), "{isa:?} {k}");
        }
    });
}

#[test]
fn global_equals_concatenation() {
    let mut rng = Rng(3);
    let parts: Vec<Vec<f32>> = [0usize, 5, 40_000, 1, 0, 90_000, 3].iter().map(|&n| rng.normals(n, 1.0)).collect();
    let refs: Vec<&[f32]> = parts.iter().map(|p| p.as_slice()).collect();
    let all: Vec<f32> = parts.concat();
    for_each_isa(|isa| {
        for k in [1usize, 7, 65_000, all.len()] {
            assert_eq!(global_kth_smallest_abs(&refs, k as u64).unwrap(), kth_ref(&all, k), "{isa:?} {k}");
        }
    });
}

/// Inputs of >= 2^20 entries go through the sampled select; these shapes stress its range estimate and
/// its fallback to the full radix passes.
#[test]
fn sampled_select_on_structured_inputs() {
    let n = (1usize << 20) + 12_345;
    let mut rng = Rng(21);
    let normal = rng.normals(n, 1.0);
    let mut sorted = normal.clone();
    sorted.sort_by(|a, b| a.abs().partial_cmp(&b.abs()).unwrap());
    let reversed: Vec<f32> = sorted.iter().rev().copied().collect();
    // Half exact zeros (an already half-pruned layer), then normals.
    let zeros: Vec<f32> = normal.iter().enumerate().map(|(i, &v)| if i % 2 == 0 { 0.0 } else { v }).collect();
    // Misleading sample: the sampled cache lines hold huge values, everything else is small.
    let mut trap = rng.normals(n, 1e-3);
    for j in 0..4096 {
        let p = j * n / 4096;
        for v in &mut trap[p..(p + 16).min(n)] {
            *v = 1e6;
        }
    }
    let ties = rng.ties(n, 3);
    let mut infs = normal.clone();
    infs.iter_mut().step_by(3).for_each(|v| *v = f32::INFINITY);
    for (name, x) in [("normal", &normal), ("sorted", &sorted), ("reversed", &reversed), ("zeros", &zeros),
                      ("trap", &trap), ("ties", &ties), ("infs", &infs)] {
        let mut abs: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        abs.sort_by(|a, b| a.partial_cmp(b).unwrap());
        for k in [1usize, 1000, n / 4, n / 2, n / 2 + 1, 3 * n / 4, n - 3, n] {
            for_each_isa(|isa| {
                let s = select(&[x], k as u64, false).unwrap();
                assert_eq!(s.threshold.to_bits(), abs[k - 1].to_bits(), "{name} {isa:?} k {k}");
                let below = abs.partition_point(|&v| v < s.threshold) as u64;
                let equal = abs.partition_point(|&v| v <= s.threshold) as u64 - below;
                assert_eq!((s.below, s.equal), (below, equal), "{name} {isa:?} k {k}");
            });
        }
    }
}
