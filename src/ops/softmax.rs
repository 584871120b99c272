//! Row softmax (`shaders/softmax.wgsl`) over the last dimension of an f32 tensor.

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, expect_shape, numel, shader};
use crate::error::{Error, Result};
use crate::gpu::{grid, Access, Graph, Kernel, TensorId};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    rows: u32,
}

/// Threads per row: a row of n elements is read twice in strides of WG.
const WG: u32 = 256;

/// `out = softmax(x)` over the last dimension, with f32 statistics; `out` may be `x` (in place).
pub fn softmax(g: &mut Graph, x: TensorId, out: TensorId) -> Result<()> {
    let op = "softmax";
    expect_f32(g, op, "x", x)?;
    expect_f32(g, op, "out", out)?;
    expect_shape(g, op, "out", out, g.shape(x))?;
    numel(g, op, out)?;
    let layout = g.layout(x);
    let rows = u32::try_from(layout.rows())
        .map_err(|_| Error::shape(format!("{op}: too many rows ({})", layout.rows())))?;
    let p = Params {
        n: layout.cols() as u32,
        rows,
    };
    let (entry, tensors) = if x == out {
        ("softmax_inplace", vec![("out", out, Access::Write)])
    } else {
        (
            "softmax",
            vec![("x", x, Access::Read), ("out", out, Access::Write)],
        )
    };
    let (name, source) = shader!("softmax");
    g.dispatch(Kernel {
        name,
        source,
        entry,
        consts: vec![("WG", WG)],
        defines: vec![],
        params: bytemuck::bytes_of(&p),
        tensors,
        workgroups: grid(rows),
    })
}
