//! Batched matrix products over strided views (`shaders/bmm.wgsl`): attention as
//! `scale·Q·Kᵀ → masked softmax → P·V` on devices where register-blocked products beat a
//! streaming attention kernel (software drivers), and any other batch of small products.

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, reads_then_write, shader, too_large, RunValue};
use crate::error::{Error, Result};
use crate::gpu::{Graph, Kernel, TensorId};

/// A batch of matrices inside a tensor: element `(zo·BI + zi, r, c)` sits at flat index
/// `offset + zo·stride_outer + zi·stride_inner + r·row_stride + c`.
#[derive(Clone, Copy, Debug)]
pub struct MatView {
    /// Tensor holding the matrices.
    pub id: TensorId,
    /// Flat index of the first element of the first matrix.
    pub offset: usize,
    /// Flat-index step between outer batch entries.
    pub stride_outer: usize,
    /// Flat-index step between inner batch entries.
    pub stride_inner: usize,
    /// Flat-index step between rows of one matrix.
    pub row_stride: usize,
}

/// Shape of a batched product `c[z] = scale · a[z] · op(b[z])`.
#[derive(Clone, Copy, Debug)]
pub struct Bmm {
    /// Batch as (outer, inner) counts, e.g. (windows, heads); z = outer·inner.
    pub batch: (usize, usize),
    /// Rows of `a` and `c`.
    pub m: usize,
    /// Columns of `c`.
    pub n: usize,
    /// Shared (reduction) dimension.
    pub k: usize,
    /// `b` read as `[n, k]` (`a·bᵀ`, e.g. Q·Kᵀ) rather than `[k, n]` (`a·b`, e.g. P·V).
    pub b_transposed: bool,
    /// Factor applied to every product.
    pub scale: f32,
    /// How much of the k extent takes part: fixed, or read from a run slot at each replay
    /// (a growing KV cache); at most `k`.
    pub k_len: RunValue,
    /// How many of the `n` columns are computed and written (the rest are left as they
    /// are): fixed or from a run slot, e.g. the keys filled so far in a KV cache; at most `n`.
    pub n_len: RunValue,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ViewParams {
    offset: u32,
    stride_o: u32,
    stride_i: u32,
    row_stride: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    a: ViewParams,
    b: ViewParams,
    c: ViewParams,
    batch_inner: u32,
    m: u32,
    n: u32,
    k: u32,
    scale: f32,
    k_slot: u32,
    n_slot: u32,
}

const WG_X: u32 = 32;
const WG_Y: u32 = 2;
/// Columns the 8 lanes of a subgroup cover when they share loads (8 tiles of 8).
pub(crate) const SHARED_COLUMNS: usize = 64;
const TILE: u32 = 8;

/// Largest flat index a view touches, for the bounds check.
fn last_index(v: &MatView, p: &Bmm, rows: usize, cols: usize) -> usize {
    v.offset
        + (p.batch.0 - 1) * v.stride_outer
        + (p.batch.1 - 1) * v.stride_inner
        + (rows - 1) * v.row_stride
        + cols
        - 1
}

fn params(
    op: &str,
    g: &Graph,
    what: &str,
    v: &MatView,
    p: &Bmm,
    rows: usize,
    cols: usize,
) -> Result<ViewParams> {
    expect_f32(g, op, what, v.id)?;
    let numel = g.layout(v.id).numel();
    if last_index(v, p, rows, cols) >= numel {
        return Err(Error::shape(format!(
            "{op}: {what} view ({rows}×{cols} matrices, batch {:?}) reaches past its {numel} elements",
            p.batch
        )));
    }
    let u = |x: usize| {
        u32::try_from(x)
            .map_err(|_| too_large(op, format!("{what} offset {x} is past 32-bit indexing")))
    };
    Ok(ViewParams {
        offset: u(v.offset)?,
        stride_o: u(v.stride_outer)?,
        stride_i: u(v.stride_inner)?,
        row_stride: u(v.row_stride)?,
    })
}

/// `c[z] = scale · a[z] · b[z]ᵀ` (`b_transposed`) or `scale · a[z] · b[z]`, f32.
pub fn bmm(g: &mut Graph, a: MatView, b: MatView, c: MatView, p: &Bmm) -> Result<()> {
    let op = "bmm";
    let z = p.batch.0 * p.batch.1;
    if z == 0 || p.m == 0 || p.n == 0 || p.k == 0 {
        return Err(Error::shape(format!("{op}: empty product {p:?}")));
    }
    if z > 65535 {
        return Err(Error::shape(format!(
            "{op}: batch of {z} exceeds one dispatch"
        )));
    }
    if c.id == a.id || c.id == b.id {
        return Err(Error::shape(format!(
            "{op}: the output must not alias an input"
        )));
    }
    let (b_rows, b_cols) = if p.b_transposed {
        (p.n, p.k)
    } else {
        (p.k, p.n)
    };
    let pa = params(op, g, "a", &a, p, p.m, p.k)?;
    let pb = params(op, g, "b", &b, p, b_rows, b_cols)?;
    let pc = params(op, g, "c", &c, p, p.m, p.n)?;
    let aligned = [pa, pb].iter().all(|v| {
        [v.offset, v.stride_o, v.stride_i, v.row_stride]
            .iter()
            .all(|x| x.is_multiple_of(4))
    }) && (p.b_transposed || p.n.is_multiple_of(4));
    let mut defines = Vec::new();
    // A subgroup shares a row block across 8 column tiles; narrower products (attention's
    // P·V with a small head dimension) would leave lanes computing past the edge.
    if g.gpu().lanes_share_loads() && p.n >= SHARED_COLUMNS {
        defines.push("XSHARE");
    }
    if aligned {
        defines.push("ALIGNED");
    }
    if p.b_transposed {
        defines.push("NT");
    }
    let prm = Params {
        a: pa,
        b: pb,
        c: pc,
        batch_inner: p.batch.1 as u32,
        m: p.m as u32,
        n: extent(op, "n", p.n, p.n_len)?,
        k: extent(op, "k", p.k, p.k_len)?,
        scale: p.scale,
        k_slot: p.k_len.encode(op, "k_len")?.0,
        n_slot: p.n_len.encode(op, "n_len")?.0,
    };
    let file = shader!("bmm", run);
    let wy = (p.m as u32).div_ceil(TILE * WG_Y);
    if wy > 65535 {
        return Err(too_large(
            op,
            format!("{} rows are more than one dispatch covers", p.m),
        ));
    }
    let tensors = reads_then_write(&[("a", a.id), ("b", b.id)], ("c", c.id));
    let workgroups = [(p.n as u32).div_ceil(TILE * WG_X), wy, z as u32];
    let kernel = Kernel::new(file, "bmm", &prm, tensors, workgroups);
    let consts = [("WGX", WG_X), ("WGY", WG_Y)];
    g.dispatch(kernel.consts(&consts).defines(defines))
}

/// The extent a kernel is built with for a dimension of `size` of which `len` takes part:
/// a fixed length itself (checked), `size` when a run slot shortens it at each replay.
fn extent(op: &str, what: &str, size: usize, len: RunValue) -> Result<u32> {
    match len {
        RunValue::Fixed(l) if l as usize <= size => Ok(l),
        RunValue::Fixed(l) => Err(Error::shape(format!(
            "{op}: {what}_len {l} exceeds {what} {size}"
        ))),
        RunValue::Slot(_) => Ok(size as u32),
    }
}
