//! Window partition and merge (`shaders/window.wgsl`) for DaViT's window attention.
//!
//! Tokens are `[h·w, C]` or `[B, h·w, C]` f32, rows h then w. The image is padded at the
//! bottom and right with zeros to multiples of the window side `ws` and cut into `ws × ws`
//! windows, `[B·nWin, ws·ws, C]`: the window grid row-major, tokens row-major inside a window.

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, expect_shape, numel, row_threads, shader, workgroups3};
use crate::error::{Error, Result};
use crate::gpu::{Access, Graph, Kernel, TensorId};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    h: u32,
    w: u32,
    ws: u32,
    nwx: u32,
    nwy: u32,
    rows: u32,
    c: u32,
}

/// Number of `ws × ws` windows covering an `h × w` image padded to multiples of `ws`.
pub fn window_count(h: usize, w: usize, ws: usize) -> usize {
    h.div_ceil(ws) * w.div_ceil(ws)
}

/// Batch size and channels of a token tensor of `h·w` rows, or an error naming `what`.
fn token_dims(
    g: &Graph,
    op: &str,
    what: &str,
    id: TensorId,
    (h, w): (usize, usize),
) -> Result<(usize, usize)> {
    let s = g.shape(id);
    let ok = (2..=3).contains(&s.len()) && s[s.len() - 2] == h * w;
    if !ok {
        return Err(Error::shape(format!(
            "{op}: {what} has shape {s:?}, expected [{n}, C] or [B, {n}, C] for {h}×{w} tokens",
            n = h * w
        )));
    }
    Ok((if s.len() == 3 { s[0] } else { 1 }, s[s.len() - 1]))
}

/// Shared launch: `tokens` is the token-side tensor (input of partition, output of merge).
#[allow(clippy::too_many_arguments)]
fn launch(
    g: &mut Graph,
    op: &'static str,
    tokens: TensorId,
    windows: TensorId,
    (h, w): (usize, usize),
    ws: usize,
    tensors: Vec<(&'static str, TensorId, Access)>,
    defines: Vec<&'static str>,
) -> Result<()> {
    if h == 0 || w == 0 || ws == 0 {
        return Err(Error::shape(format!(
            "{op}: image {h}×{w} and window side {ws} must be positive"
        )));
    }
    if tokens == windows {
        return Err(Error::shape(format!(
            "{op}: the token and window tensors must differ"
        )));
    }
    let (batch, c) = token_dims(g, op, "tokens", tokens, (h, w))?;
    expect_f32(g, op, "tokens", tokens)?;
    expect_f32(g, op, "windows", windows)?;
    let (nwy, nwx) = (h.div_ceil(ws), w.div_ceil(ws));
    expect_shape(g, op, "windows", windows, &[batch * nwy * nwx, ws * ws, c])?;
    numel(g, op, tokens)?;
    numel(g, op, windows)?;
    // Partition walks every padded pixel (writing zeros), merge only the real ones.
    let partition = op == "partition";
    let rows = if partition { nwy * ws } else { h };
    let cols = if partition { nwx * ws } else { w };
    let workgroups = workgroups3(op, [cols, batch * rows, 1])?;
    let vec4 = c.is_multiple_of(4);
    let mut defines = defines;
    if vec4 {
        defines.push("VEC4");
    }
    let p = Params {
        h: h as u32,
        w: w as u32,
        ws: ws as u32,
        nwx: nwx as u32,
        nwy: nwy as u32,
        rows: rows as u32,
        c: c as u32,
    };
    let entry = if partition {
        "window_partition"
    } else {
        "window_merge"
    };
    let wg = row_threads(if vec4 { c / 4 } else { c });
    let kernel = Kernel::new(shader!("window", vec_io), entry, &p, tensors, workgroups);
    g.dispatch(kernel.consts(&[("WG", wg)]).defines(defines))
}

/// Cuts tokens `x` (`[h·w, C]` or `[B, h·w, C]`) into `ws × ws` windows
/// `out` (`[B·nWin, ws·ws, C]`, `nWin` = [`window_count`]), zeros where the image is padded.
pub fn partition(
    g: &mut Graph,
    x: TensorId,
    hw: (usize, usize),
    ws: usize,
    out: TensorId,
) -> Result<()> {
    launch(
        g,
        "partition",
        x,
        out,
        hw,
        ws,
        vec![("x", x, Access::Read), ("out", out, Access::Write)],
        vec![],
    )
}

/// The inverse of [`partition`]: windows `x` back to tokens `out` (`[h·w, C]` or
/// `[B, h·w, C]`), cropping the padding, plus `residual` (the shape of `out`) when given.
/// `residual` may be `out` itself (`out += merge(x)`, in place).
pub fn merge(
    g: &mut Graph,
    x: TensorId,
    hw: (usize, usize),
    ws: usize,
    residual: Option<TensorId>,
    out: TensorId,
) -> Result<()> {
    let op = "merge";
    let mut tensors = vec![("x", x, Access::Read)];
    let defines = match residual {
        None => vec![],
        Some(r) if r == out => vec!["RESIDUAL_OUT"],
        Some(r) => {
            expect_f32(g, op, "residual", r)?;
            expect_shape(g, op, "residual", r, g.shape(out))?;
            if r == x {
                return Err(Error::shape(format!(
                    "{op}: the residual must not be the windows tensor"
                )));
            }
            tensors.push(("r", r, Access::Read));
            vec!["RESIDUAL"]
        }
    };
    tensors.push(("out", out, Access::Write));
    launch(g, op, out, x, hw, ws, tensors, defines)
}
