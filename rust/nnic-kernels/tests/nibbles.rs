mod common;
use nnic_kernels::nibbles::{pack_int4, unpack_int4};
use nnic_kernels::KernelError;

#[test]
fn roundtrip_all_values_even_and_odd() {
    let q: Vec<i8> = (-8..=7).chain(-8..=6).collect();
    for n in [0usize, 1, 2, 15, 16, 31] {
        let q = &q[..n];
        let mut p = vec![0u8; n.div_ceil(2)];
        pack_int4(q, &mut p).unwrap();
        let mut back = vec![0i8; n];
        unpack_int4(&p, &mut back).unwrap();
        assert_eq!(back, q);
    }
    let mut p = [0u8; 2];
    pack_int4(&[-1, 2, 7], &mut p).unwrap();
    assert_eq!(p, [0x2f, 0x07], "low nibble first, odd tail padded with 0");
}

#[test]
fn pack_errors() {
    let mut p = [0u8; 1];
    assert_eq!(
        pack_int4(&[1, 8], &mut p),
        Err(KernelError::ValueOutOfRange { arg: "q", index: 1, value: 8, lo: -8, hi: 7 })
    );
    assert!(matches!(pack_int4(&[1, 2, 3], &mut p), Err(KernelError::Mismatch { .. })));
    let mut out = [0i8; 5];
    assert!(matches!(unpack_int4(&[0, 0], &mut out), Err(KernelError::Mismatch { .. })));
}
