//! Scaled dot-product attention (`shaders/attention.wgsl`): full or causal, multi-head or
//! grouped-query, over strided views so a fused qkv projection or a KV cache can be used
//! directly, with f32 online softmax (any key length, fixed workgroup memory).

use bytemuck::{Pod, Zeroable};

use super::bmm::{self, Bmm, MatView};
use super::softmax::{self, Mask};
use super::{expect_f32, reads_then_write, shader, RunValue, View};
use crate::error::{Error, Result};
use crate::gpu::{grid, DType, Graph, Kernel, TensorId};

/// Threads per (batch, query, head); also the key block length.
const WG: u32 = 64;
/// Largest head_dim: each thread accumulates MAX_D / WG output dims.
pub const MAX_HEAD_DIM: usize = 128;

/// Shape and options of an attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attention {
    /// Independent sequences (prompts, DaViT windows).
    pub batch: usize,
    /// Queries per sequence.
    pub tq: usize,
    /// Key/value rows per sequence in the k and v views (the cache capacity).
    pub s_max: usize,
    /// Query heads.
    pub q_heads: usize,
    /// Divides `q_heads`; query head h reads kv head `h / (q_heads / kv_heads)`.
    pub kv_heads: usize,
    /// Width of one head (at most [`MAX_HEAD_DIM`]).
    pub head_dim: usize,
    /// Keys in use, `≤ s_max`: fixed, or per replay (a growing cache). A run value above
    /// `s_max` is clamped to it.
    pub kv_len: RunValue,
    /// Query i sees keys up to its absolute position `kv_len − tq + i`.
    pub causal: bool,
    /// With `causal`: a query sees at most this many keys, its own and those just before it
    /// (transformers' `sliding_window`: key `j` hidden from query position `q` when
    /// `j ≤ q − window`). `None`: no limit.
    pub window: Option<usize>,
    /// Score scale, usually `head_dim^−½`.
    pub scale: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    groups: u32,
    tq: u32,
    hq: u32,
    hkv: u32,
    head_dim: u32,
    s_max: u32,
    len_slot: u32,
    len_fixed: u32,
    causal: u32,
    window: u32,
    scale: f32,
    q_off: u32,
    q_stride: u32,
    k_off: u32,
    k_stride: u32,
    v_off: u32,
    v_stride: u32,
}

/// `out[b, i, h·D..] = softmax(q·kᵀ·scale)·v` for every sequence b, query i and head h.
/// `q` views `batch·tq` rows of `q_heads·head_dim` columns, `k` and `v` view `batch·s_max`
/// rows of `kv_heads·head_dim`; `out` is a contiguous f32 `[batch, tq, q_heads·head_dim]`
/// (any shape with that many elements, e.g. `[batch·tq, q_heads·head_dim]`).
pub fn attention(
    g: &mut Graph,
    q: View,
    k: View,
    v: View,
    out: TensorId,
    a: &Attention,
) -> Result<()> {
    let op = "attention";
    for (what, view) in [("q", q), ("k", k), ("v", v)] {
        expect_f32(g, op, what, view.id)?;
    }
    expect_f32(g, op, "out", out)?;
    let d = a.head_dim;
    if d == 0 || d > MAX_HEAD_DIM {
        return Err(Error::shape(format!(
            "{op}: head_dim {d} outside 1..={MAX_HEAD_DIM}"
        )));
    }
    if a.kv_heads == 0 || !a.q_heads.is_multiple_of(a.kv_heads) {
        return Err(Error::shape(format!(
            "{op}: {} query heads are not a multiple of {} kv heads",
            a.q_heads, a.kv_heads
        )));
    }
    if let RunValue::Fixed(len) = a.kv_len {
        if len as usize > a.s_max || (a.causal && (len as usize) < a.tq) {
            return Err(Error::shape(format!(
                "{op}: kv_len {len} must be ≤ s_max {} (and ≥ tq {} when causal)",
                a.s_max, a.tq
            )));
        }
    }
    q.check(g, op, "q", a.batch * a.tq, a.q_heads * d)?;
    k.check(g, op, "k", a.batch * a.s_max, a.kv_heads * d)?;
    v.check(g, op, "v", a.batch * a.s_max, a.kv_heads * d)?;
    let out_shape = [a.batch, a.tq, a.q_heads * d];
    if g.layout(out).numel() != out_shape.iter().product::<usize>() {
        return Err(Error::shape(format!(
            "{op}: out has shape {:?}, expected {out_shape:?}",
            g.shape(out)
        )));
    }
    if g.gpu().cpu_style_kernels {
        return attention_as_products(g, [q, k, v], out, a);
    }
    let (len_slot, len_fixed) = a.kv_len.encode(op, "kv_len")?;
    let groups = u32::try_from(a.batch * a.tq * a.q_heads)
        .map_err(|_| Error::shape(format!("{op}: too many (batch, query, head) groups")))?;
    let aligned = [d, q.col_offset, q.row_stride, k.col_offset, k.row_stride]
        .iter()
        .all(|x| x % 4 == 0);
    let p = Params {
        groups,
        tq: a.tq as u32,
        hq: a.q_heads as u32,
        hkv: a.kv_heads as u32,
        head_dim: d as u32,
        s_max: a.s_max as u32,
        len_slot,
        len_fixed,
        causal: a.causal as u32,
        window: window_param(op, a.window)?,
        scale: a.scale,
        q_off: q.col_offset as u32,
        q_stride: q.row_stride as u32,
        k_off: k.col_offset as u32,
        k_stride: k.row_stride as u32,
        v_off: v.col_offset as u32,
        v_stride: v.row_stride as u32,
    };
    let tensors = reads_then_write(&[("q", q.id), ("k", k.id), ("v", v.id)], ("out", out));
    let file = shader!("attention", run);
    let kernel = Kernel::new(file, "attention", &p, tensors, grid(groups));
    let consts = [
        ("WG", WG),
        ("MAX_D", MAX_HEAD_DIM as u32),
        ("VEC4", aligned as u32),
    ];
    g.dispatch(kernel.consts(&consts))
}

/// A sliding window as its kernel parameter: 0 for none.
pub(crate) fn window_param(op: &str, window: Option<usize>) -> Result<u32> {
    match window {
        None => Ok(0),
        Some(w) => u32::try_from(w)
            .ok()
            .filter(|&w| w > 0)
            .ok_or_else(|| Error::shape(format!("{op}: sliding window {w} outside 1..2³²"))),
    }
}

/// Attention as `scale·Q·Kᵀ → masked softmax → P·V` with the scores materialised in the
/// graph's arena: on CPU drivers the register-blocked products run far faster than the
/// streaming kernel, whose per-block barriers and per-thread exps cost most there.
fn attention_as_products(
    g: &mut Graph,
    [q, k, v]: [View; 3],
    out: TensorId,
    a: &Attention,
) -> Result<()> {
    let d = a.head_dim;
    let group = a.q_heads / a.kv_heads;
    let (tq, s) = (a.tq, a.s_max);
    let plane = tq * s;
    let scores = g.tensor(&[a.batch * a.q_heads, tq, s], DType::F32)?;
    let mv = |id, offset, stride_outer, stride_inner, row_stride| MatView {
        id,
        offset,
        stride_outer,
        stride_inner,
        row_stride,
    };
    // Batches of products, as (batch, rows, q, k, v, scores, out) views. Without grouping:
    // one batch over (sequence, head), a product per head of tq query rows. With grouped
    // queries the kv head is shared, which two strides cannot express across sequences: one
    // batch per sequence over (kv head, head in group) — or, for a single query (decode),
    // over kv heads with the group's heads as the rows of one product, so each key is read
    // once per group, not once per head, and the 8-row register tiles are not mostly idle.
    let mut runs = Vec::new();
    if group == 1 {
        runs.push((
            (a.batch, a.q_heads),
            tq,
            mv(q.id, q.col_offset, tq * q.row_stride, d, q.row_stride),
            mv(k.id, k.col_offset, s * k.row_stride, d, k.row_stride),
            mv(v.id, v.col_offset, s * v.row_stride, d, v.row_stride),
            mv(scores, 0, a.q_heads * plane, plane, s),
            mv(out, 0, tq * a.q_heads * d, d, a.q_heads * d),
        ));
    } else {
        // Head g of the group: (rows, q/out step between heads, scores step between heads).
        let (inner, rows, head_q, head_s) = if tq == 1 {
            (1, group, 0, 0)
        } else {
            (group, tq, d, plane)
        };
        // Rows step: the next query (tq > 1) or the next head of the group (tq = 1).
        let (q_rows, s_rows, o_rows) = if tq == 1 {
            (d, plane, d)
        } else {
            (q.row_stride, s, a.q_heads * d)
        };
        for b in 0..a.batch {
            // Sequence b of k or v: its kv heads d apart, shared by the heads of a group.
            let kv_of = |x: View| {
                let offset = x.col_offset + b * s * x.row_stride;
                mv(x.id, offset, d, 0, x.row_stride)
            };
            runs.push((
                (a.kv_heads, inner),
                rows,
                mv(
                    q.id,
                    q.col_offset + b * tq * q.row_stride,
                    group * d,
                    head_q,
                    q_rows,
                ),
                kv_of(k),
                kv_of(v),
                mv(scores, b * a.q_heads * plane, group * plane, head_s, s_rows),
                mv(out, b * tq * a.q_heads * d, group * d, head_q, o_rows),
            ));
        }
    }
    for &(batch, rows, qv, kv, _, sv, _) in &runs {
        let qk = Bmm {
            batch,
            m: rows,
            n: s,
            k: d,
            b_transposed: true,
            scale: a.scale,
            k_len: RunValue::Fixed(d as u32),
            // Keys past kv_len are masked by the softmax: no need to score them.
            n_len: a.kv_len,
        };
        bmm::bmm(g, qv, kv, sv, &qk)?;
    }
    softmax::softmax_masked(
        g,
        scores,
        scores,
        &Mask {
            tq,
            kv_len: a.kv_len,
            causal: a.causal,
            window: a.window,
        },
    )?;
    // Only the first kv_len keys: cache rows past it may hold anything.
    for &(batch, rows, _, _, vv, sv, ov) in &runs {
        let pv = Bmm {
            batch,
            m: rows,
            n: d,
            k: s,
            b_transposed: false,
            scale: 1.0,
            k_len: a.kv_len,
            n_len: RunValue::Fixed(d as u32),
        };
        bmm::bmm(g, sv, vv, ov, &pv)?;
    }
    Ok(())
}
