//! Run-time CPU feature detection and the switch that forces the portable scalar path.

/// Instruction-set extensions that the kernels can use on this CPU, e.g. `["avx2", "avx512f", "avx512vnni"]`.
pub fn features() -> Vec<&'static str> {
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            found.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("fma") {
            found.push("fma");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            found.push("avx512f");
        }
        if std::arch::is_x86_feature_detected!("avx512bw") {
            found.push("avx512bw");
        }
        if std::arch::is_x86_feature_detected!("avx512vnni") {
            found.push("avx512vnni");
        }
    }
    found
}
