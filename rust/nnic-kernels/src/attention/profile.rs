//! Where one thread's attention time goes, stage by stage (`examples/attention_parts.rs` prints it). Not part of
//! the kernels' API: it runs the same stage functions as [`super::attention`], one (sequence, head) pair after
//! another on the calling thread, and sums the time of each stage on the caller's clock (the example passes
//! [`crate::clock::thread_cpu`], which a busy machine does not inflate as it does wall time).
use super::{bf16, context, pack_kv, scores, softmax, write, Operand, OutRows, Products, Scratch, Shape, QUERY_BLOCK};
use crate::cpu::Isa;

/// Stages of one pair, in order.
pub const STAGES: [&str; 5] = ["pack K^T and V", "Q K^T", "softmax (exp)", "P V", "output writes"];

/// Seconds spent in each of [`STAGES`] by one attention over `shape` on this thread, with `isa` and `products`
/// (`Bf16` where [`Products::bf16_on`] `isa`, else float32), as told by `clock` (seconds from any origin). The
/// caller checks the operands (as [`super::attention`] does); this panics on out-of-bounds ones.
#[allow(clippy::too_many_arguments)]
pub fn stage_seconds(isa: Isa, products: Products, q: Operand<'_>, k: Operand<'_>, v: Operand<'_>, shape: Shape,
                     scale: f32, out: &mut [f32], clock: impl Fn() -> f64) -> [f64; 5] {
    let bf = products == Products::Bf16 && Products::bf16_on(isa);
    let out = OutRows { ptr: out.as_mut_ptr(), len: out.len() };
    let mut s = Scratch::default();
    let mut t = [0.0f64; 5];
    let mut lap = |i: usize, since: &mut f64| {
        let now = clock();
        t[i] += now - *since;
        *since = now;
    };
    for b in 0..shape.batch {
        for h in 0..shape.heads {
            let mut since = clock();
            if bf { bf16::pack_kv(&k, &v, shape, b, h, &mut s) } else { pack_kv(isa, &k, &v, shape, b, h, &mut s) }
            lap(0, &mut since);
            for i0 in (0..shape.seq).step_by(QUERY_BLOCK) {
                let m = QUERY_BLOCK.min(shape.seq - i0);
                if bf {
                    bf16::scores(&q, shape, b, h, i0, m, scale, &mut s)
                } else {
                    scores(isa, &q, shape, b, h, i0, m, scale, &mut s)
                }
                lap(1, &mut since);
                softmax(isa, m, shape.seq, &[], &mut s);
                lap(2, &mut since);
                if bf { bf16::context(m, shape, &mut s) } else { context(isa, m, shape, &mut s) }
                lap(3, &mut since);
                write(shape, b, h, i0, m, &s, &out);
                lap(4, &mut since);
            }
        }
    }
    t
}
