//! The encoder kernels (attention, skip LayerNorm) against float64 references, on every ISA.
mod common;
use common::{for_each_isa, Rng};
use nnic_kernels::attention::{attention, Operand, Shape};
use nnic_kernels::norm::skip_layer_norm;

fn skip_norm_ref(x: &[f32], r: &[f32], g: &[f32], b: &[f32], eps: f64) -> Vec<f64> {
    let cols = g.len();
    let mut out = Vec::new();
    for (x, r) in x.chunks(cols).zip(r.chunks(cols)) {
        let h: Vec<f64> = x.iter().zip(r).map(|(&a, &b)| a as f64 + b as f64).collect();
        let mean = h.iter().sum::<f64>() / cols as f64;
        let var = h.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
        out.extend(h.iter().zip(g).zip(b).map(|((v, &g), &b)| (v - mean) / (var + eps).sqrt() * g as f64 + b as f64));
    }
    out
}

#[test]
fn skip_layer_norm_matches_float64() {
    let mut rng = Rng(7);
    for_each_isa(|isa| {
        for (rows, cols) in [(1, 1), (3, 7), (5, 33), (100, 768), (1, 4099)] {
            let (x, r) = (rng.normals(rows * cols, 3.0), rng.normals(rows * cols, 3.0));
            let (g, b) = (rng.normals(cols, 1.0), rng.normals(cols, 1.0));
            let mut out = vec![0.0; rows * cols];
            skip_layer_norm(&x, &r, &g, &b, 1e-12, &mut out).unwrap();
            let want = skip_norm_ref(&x, &r, &g, &b, 1e-12);
            for (i, (&o, &w)) in out.iter().zip(&want).enumerate() {
                let tol = 1e-5 * (g[i % cols].abs() as f64 * 8.0 + b[i % cols].abs() as f64 + 1e-3);
                assert!((o as f64 - w).abs() <= tol, "{isa:?} {rows}x{cols} at {i}: {o} vs {w}");
            }
        }
    });
}

#[test]
fn skip_layer_norm_refuses_bad_lengths() {
    let v = vec![0.0f32; 12];
    let mut out = vec![0.0f32; 12];
    assert!(skip_layer_norm(&v, &v, &v[..5], &v[..5], 1e-5, &mut out).is_err()); // 12 is not rows of 5
    assert!(skip_layer_norm(&v, &v[..6], &v[..4], &v[..4], 1e-5, &mut out).is_err());
    assert!(skip_layer_norm(&v, &v, &v[..4], &v[..3], 1e-5, &mut out).is_err());
    assert!(skip_layer_norm(&v, &v, &v[..4], &v[..4], f32::NAN, &mut out).is_err());
    assert!(skip_layer_norm(&v, &v, &[], &[], 1e-5, &mut out).is_err());
}

/// float64 attention of one fused `[tokens, 3 * hidden]` buffer.
fn attention_ref(qkv: &[f32], s: Shape, scale: f64, mask: Option<&[f32]>) -> Vec<f64> {
    let (hid, d) = (s.heads * s.head_dim, s.head_dim);
    let at = |t: usize, part: usize, h: usize, c: usize| qkv[t * 3 * hid + part * hid + h * d + c] as f64;
    let mut out = vec![0.0; s.batch * s.seq * hid];
    for b in 0..s.batch {
        for h in 0..s.heads {
            for i in 0..s.seq {
                let ti = b * s.seq + i;
                let sc: Vec<f64> = (0..s.seq)
                    .map(|j| {
                        let dot: f64 = (0..d).map(|c| at(ti, 0, h, c) * at(b * s.seq + j, 1, h, c)).sum();
                        dot * scale + mask.map_or(0.0, |m| m[b * s.seq + j] as f64)
                    })
                    .collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d {
                    out[ti * hid + h * d + c] = (0..s.seq).map(|j| e[j] / z * at(b * s.seq + j, 2, h, c)).sum();
                }
            }
        }
    }
    out
}

#[test]
fn attention_matches_float64_on_fused_qkv_rows() {
    let mut rng = Rng(11);
    for_each_isa(|isa| {
        for (batch, seq, heads, head_dim, masked) in
            // seq across the query block (48) and key panel (64) edges, head_dim across the AVX-512 tile's 16-lane
            // vectors (32 / 64 / 80 / 128 and odd sizes)
            [(1, 1, 1, 1, false), (2, 5, 3, 7, true), (2, 37, 2, 64, false), (1, 70, 4, 33, true), (3, 33, 2, 16, true),
             (1, 49, 2, 80, true), (2, 130, 1, 32, false), (1, 128, 2, 64, true), (1, 65, 1, 128, true),
             (1, 97, 1, 17, false)]
        {
            let s = Shape { batch, seq, heads, head_dim };
            let hid = heads * head_dim;
            let qkv = rng.normals(batch * seq * 3 * hid, 1.0);
            let mask: Option<Vec<f32>> =
                masked.then(|| (0..batch * seq).map(|i| if i % 3 == 2 { -1e9 } else { 0.0 }).collect());
            let scale = 1.0 / (head_dim as f32).sqrt();
            let mut out = vec![0.0; batch * seq * hid];
            let op = |offset| Operand { data: &qkv, offset, row_stride: 3 * hid };
            attention(op(0), op(hid), op(2 * hid), s, scale, mask.as_deref(), &mut out).unwrap();
            let want = attention_ref(&qkv, s, scale as f64, mask.as_deref());
            for (i, (&o, &w)) in out.iter().zip(&want).enumerate() {
                assert!((o as f64 - w).abs() <= 2e-5, "{isa:?} {s:?} masked {masked} at {i}: {o} vs {w}");
            }
        }
    });
}

#[test]
fn attention_nan_in_a_score_row_makes_that_row_nan() {
    let s = Shape { batch: 1, seq: 4, heads: 1, head_dim: 2 };
    let mut qkv = vec![0.5f32; 4 * 6];
    qkv[2 * 6] = f32::NAN; // query of token 2
    let op = |offset| Operand { data: &qkv, offset, row_stride: 6 };
    for_each_isa(|isa| {
        let mut out = vec![0.0; 8];
        attention(op(0), op(2), op(4), s, 1.0, None, &mut out).unwrap();
        for (t, row) in out.chunks(2).enumerate() {
            assert_eq!(row.iter().all(|v| v.is_nan()), t == 2, "{isa:?} token {t}: {row:?}");
        }
    });
}

#[test]
fn attention_refuses_operands_that_do_not_fit() {
    let s = Shape { batch: 2, seq: 3, heads: 2, head_dim: 4 };
    let buf = vec![0.0f32; 6 * 24];
    let mut out = vec![0.0; 6 * 8];
    let op = |offset, row_stride| Operand { data: &buf, offset, row_stride };
    assert!(attention(op(0, 24), op(8, 24), op(17, 24), s, 1.0, None, &mut out).is_err()); // v runs past the end
    assert!(attention(op(0, 4), op(8, 24), op(16, 24), s, 1.0, None, &mut out).is_err()); // row_stride < hidden
    assert!(attention(op(0, 24), op(8, 24), op(16, 24), s, 1.0, Some(&[0.0; 5]), &mut out).is_err());
    assert!(attention(op(0, 24), op(8, 24), op(16, 24), s, f32::NAN, None, &mut out).is_err());
    assert!(attention(op(0, 24), op(8, 24), op(16, 24), s, 1.0, None, &mut out[..47]).is_err());
    let zero = Shape { seq: 0, ..s };
    assert!(attention(op(0, 24), op(8, 24), op(16, 24), zero, 1.0, None, &mut out).is_err());
}

#[test]
fn attention_keys_masked_with_minus_infinity_get_no_weight_and_fully_masked_rows_attend_uniformly() {
    let s = Shape { batch: 1, seq: 20, heads: 1, head_dim: 16 };
    let mut rng = Rng(5);
    let qkv = rng.normals(20 * 48, 1.0);
    let op = |offset| Operand { data: &qkv, offset, row_stride: 48 };
    for_each_isa(|isa| {
        // keys 3, 7, ... masked with -inf: the result equals the attention over the other keys alone
        let mask: Vec<f32> = (0..20).map(|j| if j % 4 == 3 { f32::NEG_INFINITY } else { 0.0 }).collect();
        let mut out = vec![0.0; 20 * 16];
        attention(op(0), op(16), op(32), s, 0.25, Some(&mask), &mut out).unwrap();
        let want = attention_ref(&qkv, s, 0.25, Some(&mask));
        for (i, (&o, &w)) in out.iter().zip(&want).enumerate() {
            assert!((o as f64 - w).abs() <= 2e-5, "{isa:?} at {i}: {o} vs {w}");
        }
        // every key masked with f32::MIN (a boolean mask's fill): the scores vanish in the sum, all weights equal
        let mask = vec![f32::MIN; 20];
        attention(op(0), op(16), op(32), s, 0.25, Some(&mask), &mut out).unwrap();
        for c in 0..16 {
            let mean = (0..20).map(|j| qkv[j * 48 + 32 + c] as f64).sum::<f64>() / 20.0;
            for t in 0..20 {
                assert!((out[t * 16 + c] as f64 - mean).abs() <= 1e-5, "{isa:?} token {t} column {c}");
            }
        }
    });
}
