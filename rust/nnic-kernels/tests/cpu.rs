use nnic_kernels::cpu::{self, Isa};
use nnic_kernels::pool;

#[test]
fn isa_switching() {
    assert_eq!(cpu::supported()[0], Isa::Scalar);
    assert!(cpu::supported().contains(&cpu::best()));
    assert_eq!(Isa::parse("AVX2").unwrap(), Isa::Avx2);
    assert!(Isa::parse("sse").is_err());
    cpu::set_isa(Some(Isa::Scalar)).unwrap();
    assert_eq!(cpu::active(), Isa::Scalar);
    for isa in Isa::ALL {
        assert_eq!(cpu::set_isa(Some(isa)).is_ok(), isa.is_supported());
    }
    cpu::set_isa(None).unwrap();
    assert_eq!(cpu::active(), cpu::best());
}

#[test]
fn thread_pool_resizes() {
    pool::set_num_threads(3).unwrap();
    assert_eq!(pool::num_threads(), 3);
    assert!(pool::set_num_threads(0).is_err());
    pool::set_num_threads(1).unwrap();
    let x = vec![1.0f32; 200_000];
    assert_eq!(nnic_kernels::select::kth_smallest_abs(&x, 5).unwrap(), 1.0);
}
