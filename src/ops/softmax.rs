//! Row softmax (`shaders/softmax.wgsl`) over the last dimension of an f32 tensor.

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, expect_shape, numel, shader, RunValue};
use crate::error::{Error, Result};
use crate::gpu::{grid, Access, Graph, Kernel, TensorId};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    rows: u32,
    tq: u32,
    len_slot: u32,
    len_fixed: u32,
    causal: u32,
    window: u32,
}

/// Threads per row: a row of n elements is read twice in strides of WG; short rows (attention
/// windows, prompts) get fewer threads so little of the workgroup idles.
fn threads(n: usize) -> u32 {
    if n <= 1024 {
        64
    } else {
        256
    }
}

/// Which entries of each row of attention scores `[z, tq, n]` take part: query `i` sees keys
/// `j < kv_len` (and, when causal, `j ≤ kv_len − tq + i`); the rest come out 0.
#[derive(Clone, Copy, Debug)]
pub struct Mask {
    /// Query rows per batch entry.
    pub tq: usize,
    /// Keys in use (the rest are masked out): fixed or per replay.
    pub kv_len: RunValue,
    /// Also mask keys after each query's absolute position.
    pub causal: bool,
    /// With `causal`: only the last `window` keys a query sees take part (a sliding window).
    pub window: Option<usize>,
}

/// `out = softmax(x)` over the last dimension, with f32 statistics; `out` may be `x` (in place).
pub fn softmax(g: &mut Graph, x: TensorId, out: TensorId) -> Result<()> {
    let n = g.layout(x).cols() as u32;
    softmax_masked(
        g,
        x,
        out,
        &Mask {
            tq: 1,
            kv_len: RunValue::Fixed(n),
            causal: false,
            window: None,
        },
    )
}

/// [`softmax`] with a [`Mask`] on the row entries.
pub fn softmax_masked(g: &mut Graph, x: TensorId, out: TensorId, mask: &Mask) -> Result<()> {
    let op = "softmax";
    expect_f32(g, op, "x", x)?;
    expect_f32(g, op, "out", out)?;
    expect_shape(g, op, "out", out, g.shape(x))?;
    numel(g, op, out)?;
    let layout = g.layout(x);
    let rows = u32::try_from(layout.rows())
        .map_err(|_| Error::shape(format!("{op}: too many rows ({})", layout.rows())))?;
    if mask.tq == 0 || !layout.rows().is_multiple_of(mask.tq) {
        return Err(Error::shape(format!(
            "{op}: {} rows are not whole blocks of {} queries",
            layout.rows(),
            mask.tq
        )));
    }
    let (len_slot, len_fixed) = mask.kv_len.encode(op, "kv_len")?;
    let n = layout.cols();
    let p = Params {
        n: n as u32,
        rows,
        tq: mask.tq as u32,
        len_slot,
        len_fixed,
        causal: mask.causal as u32,
        window: super::attention::window_param(op, mask.window)?,
    };
    let (entry, tensors) = if x == out {
        ("softmax_inplace", vec![("out", out, Access::Write)])
    } else {
        (
            "softmax",
            vec![("x", x, Access::Read), ("out", out, Access::Write)],
        )
    };
    g.dispatch(
        Kernel::new(
            shader!("softmax", run, row_ids),
            entry,
            &p,
            tensors,
            grid(rows),
        )
        .consts(&[("WG", threads(n))]),
    )
}
