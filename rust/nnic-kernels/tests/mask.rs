mod common;
use common::{for_each_isa, mask_ref, Rng};
use nnic_kernels::mask::{apply_mask, global_smallest_abs_masks, prune_by_threshold, smallest_abs_mask};
use nnic_kernels::KernelError;

fn mask(x: &[f32], k: u64) -> Result<Vec<bool>, KernelError> {
    let mut out = vec![false; x.len()];
    smallest_abs_mask(x, k, &mut out).map(|_| out)
}

#[test]
fn exact_counts_with_ties_every_isa() {
    let mut rng = Rng(5);
    for n in [1usize, 10, 5000, 70_000, 250_000] {
        for x in [rng.ties(n, 4), rng.normals(n, 1.0), vec![0.0; n]] {
            for k in [0, 1, n / 3, n / 2 + 1, n] {
                let want = mask_ref(&x, k);
                for_each_isa(|isa| {
                    let got = mask(&x, k as u64).unwrap();
                    assert_eq!(got.iter().filter(|&&b| !b).count(), k);
                    assert!(got == want, "isa {isa:?} n {n} k {k}");
                });
            }
        }
    }
}

#[test]
fn mask_errors() {
    assert!(matches!(mask(&[1.0, 2.0], 3), Err(KernelError::KOutOfRange { k: 3, n: 2, .. })));
    assert_eq!(mask(&[1.0, f32::NAN], 0), Err(KernelError::Nan { arg: "x", tensor: None, index: 1 }));
    assert_eq!(mask(&[], 0), Ok(vec![]));
    let mut short = vec![true; 1];
    assert!(matches!(smallest_abs_mask(&[1.0, 2.0], 1, &mut short), Err(KernelError::Mismatch { .. })));
}

#[test]
fn global_masks_break_ties_by_position() {
    let mut rng = Rng(9);
    let parts: Vec<Vec<f32>> = [3usize, 0, 80_000, 7, 50_000].iter().map(|&n| rng.ties(n, 3)).collect();
    let all: Vec<f32> = parts.concat();
    let refs: Vec<&[f32]> = parts.iter().map(|p| p.as_slice()).collect();
    for k in [0usize, 1, 2, 40_000, 100_000, all.len()] {
        let want = mask_ref(&all, k);
        for_each_isa(|isa| {
            let mut outs: Vec<Vec<bool>> = parts.iter().map(|p| vec![false; p.len()]).collect();
            global_smallest_abs_masks(&refs, k as u64, outs.iter_mut().map(|o| o.as_mut_slice()).collect()).unwrap();
            assert!(outs.concat() == want, "isa {isa:?} k {k}");
        });
    }
}

#[test]
fn apply_mask_zeroes_and_checks() {
    let mut rng = Rng(1);
    for n in [0usize, 1, 33, 100_000] {
        let w0 = rng.normals(n, 1.0);
        let m: Vec<u8> = (0..n).map(|_| (rng.next_u64() % 2) as u8).collect();
        for_each_isa(|isa| {
            let mut w = w0.clone();
            apply_mask(&mut w, &m, true).unwrap();
            for i in 0..n {
                let want = if m[i] == 1 { w0[i] } else { 0.0 };
                assert_eq!(w[i].to_bits(), want.to_bits(), "isa {isa:?} i {i}");
            }
        });
    }
    let mut w = vec![1.0f32; 4];
    assert_eq!(
        apply_mask(&mut w, &[1, 0, 2, 1], true),
        Err(KernelError::ValueOutOfRange { arg: "mask", index: 2, value: 2, lo: 0, hi: 1 })
    );
    assert_eq!(w, vec![1.0; 4], "nothing written on error");
    assert!(matches!(apply_mask(&mut w, &[1], false), Err(KernelError::Mismatch { .. })));
}

#[test]
fn prune_by_threshold_policy() {
    let mut w = vec![-0.5, 0.5, 0.25, -1.0, f32::NAN, -0.0, f32::INFINITY];
    assert_eq!(prune_by_threshold(&mut w, 0.5).unwrap(), 3);
    assert_eq!(w[..4], [0.0, 0.0, 0.0, -1.0]);
    assert!(w[4].is_nan());
    assert_eq!(w[5].to_bits(), 0);
    assert_eq!(prune_by_threshold(&mut [1.0, 0.0], -1.0).unwrap(), 2);
    assert!(matches!(prune_by_threshold(&mut [1.0], f32::NAN), Err(KernelError::Invalid { .. })));
    let mut w = vec![1.0f32, f32::NAN];
    assert_eq!(prune_by_threshold(&mut w, f32::INFINITY).unwrap(), 1);
}

#[test]
fn prune_by_threshold_every_isa() {
    let mut rng = Rng(2);
    let w0 = rng.normals(150_001, 1.0);
    for_each_isa(|isa| {
        let mut w = w0.clone();
        let kept = prune_by_threshold(&mut w, 0.3).unwrap();
        let want: Vec<f32> = w0.iter().map(|&v| if v.abs() <= 0.3 { 0.0 } else { v }).collect();
        assert_eq!(kept as usize, w0.iter().filter(|v| v.abs() > 0.3).count(), "{isa:?}");
        assert!(w == want, "{isa:?}");
    });
}
