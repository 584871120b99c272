//! Embedding gather (`shaders/embed.wgsl`): token ids to rows of an embedding table.

use bytemuck::{Pod, Zeroable};

use super::{expect_dtype, expect_f32, expect_shape, numel, per_element, shader, FLOATS, WG};
use crate::error::{Error, Result};
use crate::gpu::{Access, DType, Graph, TensorId};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    d: u32,
    v: u32,
    scale: f32,
}

/// `out[.., :] = scale · table[ids[..], :]` (`scale` 1 when `None`).
///
/// * `ids`: u32 of any shape (read on the GPU, so a sampler's output works directly).
/// * `table`: `[V, D]`, f32, f16, q8 or q4, chunked or not.
/// * `out`: f32 with shape `ids.shape + [D]`.
///
/// An id ≥ V yields a row of zeros rather than reading out of bounds.
pub fn embed(
    g: &mut Graph,
    ids: TensorId,
    table: TensorId,
    scale: Option<f32>,
    out: TensorId,
) -> Result<()> {
    let op = "embed";
    expect_dtype(g, op, "ids", ids, &[DType::U32])?;
    expect_dtype(g, op, "table", table, FLOATS)?;
    expect_f32(g, op, "out", out)?;
    let ts = g.shape(table).to_vec();
    if ts.len() != 2 {
        return Err(Error::shape(format!(
            "{op}: table has shape {ts:?}, expected [V, D]"
        )));
    }
    let mut want = g.shape(ids).to_vec();
    want.push(ts[1]);
    expect_shape(g, op, "out", out, &want)?;
    let p = Params {
        n: numel(g, op, out)?,
        d: ts[1] as u32,
        v: ts[0] as u32,
        scale: scale.unwrap_or(1.0),
    };
    numel(g, op, table)?;
    let tensors = vec![
        ("ids", ids, Access::Read),
        ("table", table, Access::Read),
        ("out", out, Access::Write),
    ];
    per_element(
        g,
        shader!("embed", row_ids),
        ("embed", &p),
        tensors,
        (p.n, WG),
    )
}
