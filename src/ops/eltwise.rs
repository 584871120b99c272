//! Element-wise ops (`shaders/eltwise.wgsl`): GELU, SiLU, scale, add, mul, SwiGLU (on two
//! tensors, or on the two halves of one fused gate/up output).

use bytemuck::{Pod, Zeroable};

use super::{
    expect_dtype, expect_f32, expect_shape, numel, per_element, reads_then_write, shader, FLOATS,
    WG,
};
use crate::error::{Error, Result};
use crate::gpu::{Graph, TensorId};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    b_len: u32,
    op: u32,
    alpha: f32,
    beta: f32,
}

/// Unary element-wise functions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unary {
    /// Exact GELU, `0.5·x·(1 + erf(x/√2))`.
    Gelu,
    /// `x·sigmoid(x)`.
    Silu,
    /// `alpha·x + beta`.
    Scale {
        /// Factor applied to `x`.
        alpha: f32,
        /// Offset added after scaling.
        beta: f32,
    },
}

/// Binary element-wise functions; the second operand broadcasts over rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Binary {
    /// `a + b`.
    Add,
    /// `a · b` (element-wise).
    Mul,
}

impl Params {
    /// `n` elements, `b`'s length and the op code, with no scale or shift.
    fn plain(n: u32, b_len: u32, op: u32) -> Params {
        Params {
            n,
            b_len,
            op,
            alpha: 1.0,
            beta: 0.0,
        }
    }
}

/// Dispatches `entry` over `p.n` elements, reading `inputs` (accessor name, tensor) and
/// writing `out`.
fn launch(
    g: &mut Graph,
    entry: &'static str,
    p: Params,
    inputs: &[(&'static str, TensorId)],
    out: TensorId,
) -> Result<()> {
    let tensors = reads_then_write(inputs, ("out", out));
    let file = shader!("eltwise", row_ids);
    per_element(g, file, (entry, &p), tensors, (p.n, WG))
}

/// `out = f(x)`, same shape; `out` may be `x` (in place).
pub fn unary(g: &mut Graph, f: Unary, x: TensorId, out: TensorId) -> Result<()> {
    let op = "unary";
    expect_f32(g, op, "out", out)?;
    expect_shape(g, op, "out", out, g.shape(x))?;
    let n = numel(g, op, out)?;
    let (code, alpha, beta) = match f {
        Unary::Gelu => (0, 1.0, 0.0),
        Unary::Silu => (1, 1.0, 0.0),
        Unary::Scale { alpha, beta } => (2, alpha, beta),
    };
    let p = Params {
        n,
        b_len: 1,
        op: code,
        alpha,
        beta,
    };
    if x == out {
        return launch(g, "unary_inplace", p, &[], out);
    }
    expect_dtype(g, op, "x", x, FLOATS)?;
    launch(g, "unary", p, &[("x", x)], out)
}

/// `out = a ∘ b`; `b` has the shape of `a` or of its last dimension (broadcast over rows).
pub fn binary(g: &mut Graph, f: Binary, a: TensorId, b: TensorId, out: TensorId) -> Result<()> {
    let op = "binary";
    expect_f32(g, op, "out", out)?;
    expect_dtype(g, op, "a", a, FLOATS)?;
    expect_dtype(g, op, "b", b, FLOATS)?;
    let shape = g.shape(a).to_vec();
    expect_shape(g, op, "out", out, &shape)?;
    let (na, nb) = (g.layout(a).numel(), g.layout(b).numel());
    if nb != na && nb != *shape.last().unwrap() {
        return Err(Error::shape(format!(
            "{op}: b has shape {:?}, expected {shape:?} or [{}]",
            g.shape(b),
            shape.last().unwrap()
        )));
    }
    let code = if f == Binary::Add { 3 } else { 4 };
    let p = Params::plain(numel(g, op, out)?, nb as u32, code);
    launch(g, "binary", p, &[("x", a), ("b", b)], out)
}

/// SwiGLU of a fused `[gate | up]` projection: `gate_up` `[.., 2·I]`, `out` `[.., I]` with
/// `out[r, c] = silu(gate_up[r, c]) · gate_up[r, I + c]`.
pub fn swiglu_halves(g: &mut Graph, gate_up: TensorId, out: TensorId) -> Result<()> {
    let op = "swiglu_halves";
    expect_f32(g, op, "gate_up", gate_up)?;
    expect_f32(g, op, "out", out)?;
    let mut shape = g.shape(gate_up).to_vec();
    let last = shape
        .last_mut()
        .filter(|w| **w % 2 == 0 && **w > 0)
        .ok_or_else(|| {
            Error::shape(format!(
                "{op}: gate_up {:?} needs an even, non-zero last dimension",
                g.shape(gate_up)
            ))
        })?;
    *last /= 2;
    let half = *last;
    expect_shape(g, op, "out", out, &shape)?;
    let p = Params::plain(numel(g, op, out)?, half as u32, 0);
    launch(g, "swiglu_halves", p, &[("x", gate_up)], out)
}

/// Fused SwiGLU: `out = silu(gate) · up`, all the same shape.
pub fn swiglu(g: &mut Graph, gate: TensorId, up: TensorId, out: TensorId) -> Result<()> {
    let op = "swiglu";
    expect_f32(g, op, "out", out)?;
    let shape = g.shape(gate).to_vec();
    expect_shape(g, op, "up", up, &shape)?;
    expect_shape(g, op, "out", out, &shape)?;
    let p = Params::plain(numel(g, op, out)?, 1, 0);
    launch(g, "swiglu", p, &[("x", gate), ("b", up)], out)
}
