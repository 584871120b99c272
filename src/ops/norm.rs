//! Row normalisations (`shaders/norm.wgsl`): LayerNorm (DaViT, BART) and RMSNorm (Llama).

use bytemuck::{Pod, Zeroable};

use super::{expect_dtype, expect_f32, expect_shape, reads_then_write, shader, FLOATS};
use crate::error::{Error, Result};
use crate::gpu::{grid, Graph, Kernel, TensorId};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
}

/// Threads per row.
const WG: u32 = 64;

fn launch(
    g: &mut Graph,
    entry: &'static str,
    x: TensorId,
    params: &[(&'static str, TensorId)],
    out: TensorId,
    eps: f32,
) -> Result<()> {
    let op = entry;
    expect_f32(g, op, "x", x)?;
    expect_f32(g, op, "out", out)?;
    let shape = g.shape(x).to_vec();
    expect_shape(g, op, "out", out, &shape)?;
    let cols = *shape.last().unwrap();
    for &(name, t) in params {
        expect_shape(g, op, name, t, &[cols])?;
        expect_dtype(g, op, name, t, FLOATS)?;
    }
    if x == out {
        return Err(Error::shape(format!(
            "{op}: x and out must differ (rows are read twice)"
        )));
    }
    let rows = g.layout(x).rows() as u32;
    let p = Params {
        rows,
        cols: cols as u32,
        eps,
    };
    let inputs = [&[("x", x)], params].concat();
    let tensors = reads_then_write(&inputs, ("out", out));
    let kernel = Kernel::new(shader!("norm", row_ids), entry, &p, tensors, grid(rows));
    g.dispatch(kernel.consts(&[("WG", WG)]))
}

/// `out = (x − mean) / sqrt(var + eps) · gamma + beta` over the last dimension.
pub fn layernorm(
    g: &mut Graph,
    x: TensorId,
    gamma: TensorId,
    beta: TensorId,
    eps: f32,
    out: TensorId,
) -> Result<()> {
    launch(
        g,
        "layernorm",
        x,
        &[("gamma", gamma), ("beta", beta)],
        out,
        eps,
    )
}

/// `out = x / sqrt(mean(x²) + eps) · weight` over the last dimension.
pub fn rmsnorm(
    g: &mut Graph,
    x: TensorId,
    weight: TensorId,
    eps: f32,
    out: TensorId,
) -> Result<()> {
    launch(g, "rmsnorm", x, &[("gamma", weight)], out, eps)
}
