//! Linear layers (`shaders/matmul.wgsl`): `out = x·Wᵀ + b` with PyTorch's `[out, in]` weights.
//!
//! Up to [`MATVEC_MAX_ROWS`] rows of `x` take the bandwidth-bound matrix-vector kernel (decode,
//! beam search), which reads each weight once for all rows; more rows take the register-blocked
//! matrix-matrix kernel. Weights may be f32, f16, q8 or q4 in both.

use bytemuck::{Pod, Zeroable};

use super::bmm::SHARED_COLUMNS;
use super::{expect_dtype, expect_f32, expect_shape, norm, shader, too_large, FLOATS};
use crate::error::{Error, Result};
use crate::gpu::{grid, Access, DType, Gpu, Graph, Kernel, TensorId};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    eps: f32,
}

/// Largest number of `x` rows the matrix-vector kernel handles.
pub const MATVEC_MAX_ROWS: usize = 8;
/// Matrix-matrix tile: each invocation computes `TILE × TILE` outputs (fixed in the shader),
/// a workgroup `WG_X × WG_Y` invocations; 32×2 measured best of 8×8, 16×4, 4×16, 8×4 and
/// 32×2 on lavapipe (docs/perf.md): the 8 SIMD lanes share one x row (uniform loads).
const TILE: u32 = 8;
const WG_X: u32 = 32;
const WG_Y: u32 = 2;
/// Matrix-vector work split: (threads per weight row, row slots per workgroup, rows per
/// thread). CPU drivers run neighbouring invocations as SIMD lanes, so there a thread owns
/// four rows (x reused four times) and lanes sharing x load each octet once between them
/// (without such subgroups, two threads per row and one row each measured best). GPUs want
/// neighbouring threads reading neighbouring blocks of one row. Measurements in docs/perf.md.
fn matvec_shape(gpu: &Gpu) -> (u32, u32, u32) {
    match (gpu.cpu_style_kernels, gpu.lanes_share_loads()) {
        (true, true) => (1, 8, 4),
        (true, false) => (2, 32, 1),
        (false, _) => (8, 8, 1),
    }
}

/// `out[.., n] = Σ_k x[.., k]·w[n, k] + bias[n]`.
pub fn linear(
    g: &mut Graph,
    x: TensorId,
    w: TensorId,
    bias: Option<TensorId>,
    out: TensorId,
) -> Result<()> {
    launch(g, x, w, bias, None, None, out)
}

/// [`linear`] of x's rows through an RMSNorm, `x / sqrt(mean(x²) + eps) · gain`, as a
/// decoder layer's norm and the projection after it. Up to [`MATVEC_MAX_ROWS`] rows (decode)
/// this is one dispatch: the matrix-vector kernel computes the rms itself and applies the
/// gain as it loads x. More rows normalise into an intermediate first.
pub fn linear_rms(
    g: &mut Graph,
    x: TensorId,
    gain: TensorId,
    w: TensorId,
    eps: f32,
    out: TensorId,
) -> Result<()> {
    expect_f32(g, "linear", "x", x)?;
    if g.layout(x).rows() <= MATVEC_MAX_ROWS {
        return launch(g, x, w, None, None, Some((gain, eps)), out);
    }
    let normed = g.tensor_like(x)?;
    norm::rmsnorm(g, x, gain, eps, normed)?;
    launch(g, normed, w, None, None, None, out)
}

/// [`linear`] plus a residual in the same pass: `out = x·Wᵀ + b + residual` (`residual` f32
/// with `out`'s shape), which saves a decoder layer's separate add.
pub fn linear_add(
    g: &mut Graph,
    x: TensorId,
    w: TensorId,
    bias: Option<TensorId>,
    residual: TensorId,
    out: TensorId,
) -> Result<()> {
    launch(g, x, w, bias, Some(residual), None, out)
}

fn launch(
    g: &mut Graph,
    x: TensorId,
    w: TensorId,
    bias: Option<TensorId>,
    residual: Option<TensorId>,
    rms: Option<(TensorId, f32)>,
    out: TensorId,
) -> Result<()> {
    let op = "linear";
    expect_f32(g, op, "x", x)?;
    expect_f32(g, op, "out", out)?;
    expect_dtype(g, op, "weight", w, FLOATS)?;
    let ws = g.shape(w).to_vec();
    if ws.len() != 2 {
        return Err(Error::shape(format!(
            "{op}: weight has shape {ws:?}, expected [out, in]"
        )));
    }
    let (n, k) = (ws[0], ws[1]);
    let xs = g.shape(x).to_vec();
    if *xs.last().unwrap() != k {
        return Err(Error::shape(format!(
            "{op}: x has shape {xs:?}, its last dimension must be the weight's in = {k}"
        )));
    }
    let mut os = xs.clone();
    *os.last_mut().unwrap() = n;
    expect_shape(g, op, "out", out, &os)?;
    if let Some(b) = bias {
        expect_shape(g, op, "bias", b, &[n])?;
        expect_dtype(g, op, "bias", b, FLOATS)?;
    }
    let m = g.layout(x).rows();
    let too_big = |v: usize| {
        u32::try_from(v).map_err(|_| too_large(op, format!("dimension {v} is past 32-bit indexing")))
    };
    let p = Params {
        m: too_big(m)?,
        n: too_big(n)?,
        k: too_big(k)?,
        eps: rms.map_or(0.0, |r| r.1),
    };
    let mut tensors = vec![("x", x, Access::Read), ("w", w, Access::Read)];
    let mut defines = Vec::new();
    if let Some(b) = bias {
        tensors.push(("b", b, Access::Read));
        defines.push("BIAS");
    }
    if let Some(r) = residual {
        expect_f32(g, op, "residual", r)?;
        expect_shape(g, op, "residual", r, &os)?;
        tensors.push(("r", r, Access::Read));
        defines.push("RESID");
    }
    if let Some((gain, _)) = rms {
        expect_shape(g, op, "gain", gain, &[k])?;
        expect_f32(g, op, "gain", gain)?;
        tensors.push(("g", gain, Access::Read));
        defines.push("RMS");
    }
    tensors.push(("out", out, Access::Write));
    let (name, source) = shader!("matmul");
    if g.gpu().lanes_share_loads() && (m <= MATVEC_MAX_ROWS || n >= SHARED_COLUMNS) {
        defines.push("XSHARE");
    }
    if m <= MATVEC_MAX_ROWS {
        let (tpr, rpw, rpt) = matvec_shape(g.gpu());
        match g.layout(w).dtype {
            DType::Q8 => defines.push("Q8"),
            DType::Q4 => defines.push("Q4"),
            _ => {}
        }
        g.dispatch(Kernel {
            name,
            source,
            entry: "matvec",
            consts: vec![("MR", m as u32), ("TPR", tpr), ("RPW", rpw), ("RPT", rpt)],
            defines,
            params: bytemuck::bytes_of(&p),
            tensors,
            workgroups: grid(p.n.div_ceil(rpw * rpt)),
        })
    } else {
        let wy = p.m.div_ceil(TILE * WG_Y);
        if wy > 65535 {
            return Err(too_large(
                op,
                format!("{m} rows are more than one dispatch covers"),
            ));
        }
        g.dispatch(Kernel {
            name,
            source,
            entry: "matmul",
            consts: vec![("TM", TILE), ("TN", TILE), ("WGX", WG_X), ("WGY", WG_Y)],
            defines,
            params: bytemuck::bytes_of(&p),
            tensors,
            workgroups: [p.n.div_ceil(TILE * WG_X), wy, 1],
        })
    }
}
