mod common;
use common::{for_each_isa, kth_ref, Rng};
use nnic_kernels::threshold::{global_kth_smallest_abs, kth_smallest_abs, select};
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
