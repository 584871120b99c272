//! Reductions over tokens (`shaders/reduce.wgsl`): the mean over rows, the image head's
//! `spatial_avg_pool`, as a segmented two-level sum for long inputs.

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, expect_shape, numel, row_threads, shader, workgroups3};
use crate::error::{Error, Result};
use crate::gpu::{Access, DType, Graph, Kernel, TensorId};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    c: u32,
    seg: u32,
    nseg: u32,
    scale: f32,
}

/// Rows one workgroup sums in the first level of a two-level reduction over `n` rows: about
/// √n (so both levels' serial chains are short), a multiple of 64, at least 64.
pub(crate) fn segment_rows(n: usize) -> usize {
    ((n as f64).sqrt().ceil() as usize)
        .next_multiple_of(64)
        .max(64)
}

/// `out[b, s, c] = scale · Σ x[b, n, c]` over the rows n of segment s (`seg` rows each).
fn sum_rows(
    g: &mut Graph,
    x: TensorId,
    (batch, rows, c): (usize, usize, usize),
    seg: usize,
    scale: f32,
    out: TensorId,
) -> Result<()> {
    let op = "mean_rows";
    let nseg = rows.div_ceil(seg);
    let vec4 = c.is_multiple_of(4);
    let units = if vec4 { c / 4 } else { c };
    let wg = row_threads(units);
    let p = Params {
        rows: rows as u32,
        c: c as u32,
        seg: seg as u32,
        nseg: nseg as u32,
        scale,
    };
    g.dispatch(
        Kernel::new(
            shader!("reduce", vec_io),
            "sum_rows",
            &p,
            vec![("x", x, Access::Read), ("out", out, Access::Write)],
            workgroups3(op, [units.div_ceil(wg as usize), nseg, batch])?,
        )
        .consts(&[("WG", wg)])
        .defines(if vec4 { vec!["VEC4"] } else { vec![] }),
    )
}

/// The mean over tokens: `out[b, 0, c] = (1/N) Σ_n x[b, n, c]` for f32 `x` `[N, C]` or
/// `[B, N, C]` and `out` `[1, C]` or `[B, 1, C]`, with f32 accumulation. Long inputs take
/// two dispatches (partial sums over segments of about √N rows, then their sum).
pub fn mean_rows(g: &mut Graph, x: TensorId, out: TensorId) -> Result<()> {
    let op = "mean_rows";
    expect_f32(g, op, "x", x)?;
    expect_f32(g, op, "out", out)?;
    let xs = g.shape(x).to_vec();
    if !(2..=3).contains(&xs.len()) {
        return Err(Error::shape(format!(
            "{op}: x has shape {xs:?}, expected [N, C] or [B, N, C]"
        )));
    }
    let (n, c) = (xs[xs.len() - 2], xs[xs.len() - 1]);
    let batch = if xs.len() == 3 { xs[0] } else { 1 };
    let mut os = xs.clone();
    os[xs.len() - 2] = 1;
    expect_shape(g, op, "out", out, &os)?;
    numel(g, op, x)?;
    let seg = segment_rows(n);
    let inv = 1.0 / n as f32;
    if n <= seg {
        return sum_rows(g, x, (batch, n, c), n, inv, out);
    }
    let nseg = n.div_ceil(seg);
    let partial = g.tensor(&[batch, nseg, c], DType::F32)?;
    sum_rows(g, x, (batch, n, c), seg, 1.0, partial)?;
    sum_rows(g, partial, (batch, nseg, c), nseg, inv, out)
}
