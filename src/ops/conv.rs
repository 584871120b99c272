//! Convolutions (`shaders/conv.wgsl`): a general 2-D convolution for DaViT's patch embeddings
//! and the depthwise 3×3 convolution of its blocks. Outputs are always tokens in HWC layout
//! (`[H_out·W_out, C_out]`, row-major h then w, optionally with a leading batch dimension).

use bytemuck::{Pod, Zeroable};

use super::{expect_dtype, expect_f32, expect_shape, numel, per_element, shader, FLOATS, WG};
use crate::error::{Error, Result};
use crate::gpu::{Access, DType, Graph, TensorId};

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct Params {
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    wo: u32,
    m: u32,
    kh: u32,
    kw: u32,
    sy: u32,
    sx: u32,
    py: u32,
    px: u32,
    pix_stride: u32,
    ch_stride: u32,
    blocks_n: u32,
    blocks_m: u32,
    threads: u32,
    residual: f32,
}

/// Output positions (TM) and channels (TN) one conv2d thread computes; see the shader.
const TM: u32 = 4;
const TN: u32 = 8;
/// Threads per workgroup of conv2d: few, since each holds TM·TN accumulators.
const CONV_WG: u32 = 64;
/// The kernel file.
const CONV: (&str, &str) = shader!("conv", row_ids);

/// Layout of a convolution's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvInput {
    /// An image `[C_in, H, W]` (or `[B, C_in, H, W]`); H and W come from the shape.
    Chw,
    /// Tokens `[h·w, C_in]` (or `[B, h·w, C_in]`), row-major h then w.
    Hwc {
        /// Rows of the token grid.
        h: usize,
        /// Columns of the token grid.
        w: usize,
    },
}

/// Geometry of a 2-D convolution; every pair is `[along H, along W]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    /// Kernel size.
    pub kernel: [usize; 2],
    /// Stride.
    pub stride: [usize; 2],
    /// Zero padding on both sides.
    pub pad: [usize; 2],
    /// Layout of the input tensor.
    pub input: ConvInput,
}

impl Conv2d {
    /// A square kernel with equal stride and padding along both axes.
    pub fn square(k: usize, stride: usize, pad: usize, input: ConvInput) -> Conv2d {
        Conv2d {
            kernel: [k, k],
            stride: [stride, stride],
            pad: [pad, pad],
            input,
        }
    }

    /// Output height and width for an `h × w` input: `(in + 2·pad − k) / stride + 1`.
    pub fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let axis = |n: usize, a: usize| {
            (n + 2 * self.pad[a])
                .checked_sub(self.kernel[a])
                .filter(|_| self.stride[a] > 0)
                .map(|d| d / self.stride[a] + 1)
        };
        Some((axis(h, 0)?, axis(w, 1)?))
    }
}

fn u32_of(op: &str, what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::shape(format!("{op}: {what} = {n} exceeds u32")))
}

/// `out = conv2d(x, w) + bias` with zero padding.
///
/// * `x`: f32, laid out as `c.input` says.
/// * `w`: `[C_out, C_in, kh, kw]` (PyTorch) or the same memory viewed as
///   `[C_out, C_in·kh·kw]` — the 2-D view is what allows q8/q4 (rows a multiple of 32);
///   f32, f16, q8 or q4.
/// * `bias`: `[C_out]`, any float dtype.
/// * `out`: f32 `[H_out·W_out, C_out]`, with `x`'s batch dimension if it has one.
pub fn conv2d(
    g: &mut Graph,
    c: &Conv2d,
    x: TensorId,
    w: TensorId,
    bias: Option<TensorId>,
    out: TensorId,
) -> Result<()> {
    let op = "conv2d";
    expect_f32(g, op, "x", x)?;
    expect_f32(g, op, "out", out)?;
    expect_dtype(g, op, "w", w, FLOATS)?;
    let xs = g.shape(x).to_vec();
    let batched = match (c.input, xs.len()) {
        (ConvInput::Chw, 3) | (ConvInput::Hwc { .. }, 2) => false,
        (ConvInput::Chw, 4) | (ConvInput::Hwc { .. }, 3) => true,
        _ => {
            return Err(Error::shape(format!(
                "{op}: x has shape {xs:?}, expected {} for {:?} input",
                if c.input == ConvInput::Chw {
                    "[C, H, W] or [B, C, H, W]"
                } else {
                    "[H·W, C] or [B, H·W, C]"
                },
                c.input
            )))
        }
    };
    let (batch, dims) = if batched {
        (xs[0], &xs[1..])
    } else {
        (1, &xs[..])
    };
    // (c_in, h, w, element stride between pixels, between channels)
    let (c_in, h, wd, pix_stride, ch_stride) = match c.input {
        ConvInput::Chw => (dims[0], dims[1], dims[2], 1, dims[1] * dims[2]),
        ConvInput::Hwc { h, w: wd } => {
            if dims[0] != h * wd {
                return Err(Error::shape(format!(
                    "{op}: x has {} tokens, expected {h}×{wd} = {}",
                    dims[0],
                    h * wd
                )));
            }
            (dims[1], h, wd, dims[1], 1)
        }
    };
    let [kh, kw] = c.kernel;
    let c_out = g.shape(w)[0];
    let ws = g.shape(w).to_vec();
    if ws != [c_out, c_in, kh, kw] && ws != [c_out, c_in * kh * kw] {
        return Err(Error::shape(format!(
            "{op}: w has shape {ws:?}, expected [C_out, {c_in}, {kh}, {kw}] or [C_out, {}]",
            c_in * kh * kw
        )));
    }
    if let Some(b) = bias {
        expect_dtype(g, op, "bias", b, FLOATS)?;
        expect_shape(g, op, "bias", b, &[c_out])?;
    }
    let (ho, wo) = c.out_hw(h, wd).ok_or_else(|| {
        Error::shape(format!(
            "{op}: a {kh}×{kw} kernel with stride {:?} and padding {:?} does not fit a {h}×{wd} input",
            c.stride, c.pad
        ))
    })?;
    let mut want = vec![ho * wo, c_out];
    if batched {
        want.insert(0, batch);
    }
    expect_shape(g, op, "out", out, &want)?;
    numel(g, op, x)?;
    numel(g, op, w)?;
    numel(g, op, out)?;
    let m = ho * wo;
    let (blocks_m, blocks_n) = (m.div_ceil(TM as usize), c_out.div_ceil(TN as usize));
    let p = Params {
        c_in: c_in as u32,
        h: h as u32,
        w: wd as u32,
        c_out: c_out as u32,
        wo: wo as u32,
        m: m as u32,
        kh: kh as u32,
        kw: kw as u32,
        sy: c.stride[0] as u32,
        sx: c.stride[1] as u32,
        py: c.pad[0] as u32,
        px: c.pad[1] as u32,
        pix_stride: pix_stride as u32,
        ch_stride: ch_stride as u32,
        blocks_n: blocks_n as u32,
        blocks_m: blocks_m as u32,
        threads: u32_of(op, "threads", batch * blocks_m * blocks_n)?,
        residual: 0.0,
    };
    let mut tensors = vec![("x", x, Access::Read), ("w", w, Access::Read)];
    if let Some(b) = bias {
        tensors.push(("b", b, Access::Read));
    }
    tensors.push(("out", out, Access::Write));
    let entry = if bias.is_some() {
        "conv2d_bias"
    } else {
        "conv2d"
    };
    per_element(g, CONV, (entry, &p), tensors, (p.threads, CONV_WG))
}

/// Depthwise 3×3 convolution, stride 1, zero padding 1, over tokens:
/// `out = dwconv(x) + bias`, plus `x` when `residual` (DaViT's `x = x + DWConv(x)`).
///
/// * `x`: f32 `[h·w, C]` or `[B, h·w, C]`; `out`: the same shape, and not `x` itself (every
///   output reads its neighbours' inputs).
/// * `w`: `[C, 1, 3, 3]` (PyTorch), f32 or f16 (rows of 3 cannot be quantized); `bias`: `[C]`.
pub fn dwconv3x3(
    g: &mut Graph,
    x: TensorId,
    (h, wd): (usize, usize),
    w: TensorId,
    bias: TensorId,
    residual: bool,
    out: TensorId,
) -> Result<()> {
    let op = "dwconv3x3";
    expect_f32(g, op, "x", x)?;
    expect_f32(g, op, "out", out)?;
    if x == out {
        return Err(Error::shape(format!(
            "{op}: out must be another tensor than x (outputs read neighbouring inputs)"
        )));
    }
    let xs = g.shape(x).to_vec();
    let c = *xs.last().unwrap();
    if !(2..=3).contains(&xs.len()) || xs[xs.len() - 2] != h * wd {
        return Err(Error::shape(format!(
            "{op}: x has shape {xs:?}, expected [{}, C] or [B, {}, C] for {h}×{wd} tokens",
            h * wd,
            h * wd
        )));
    }
    expect_shape(g, op, "out", out, &xs)?;
    expect_dtype(g, op, "w", w, &[DType::F32, DType::F16])?;
    expect_shape(g, op, "w", w, &[c, 1, 3, 3])?;
    expect_dtype(g, op, "bias", bias, FLOATS)?;
    expect_shape(g, op, "bias", bias, &[c])?;
    let p = Params {
        c_out: c as u32,
        h: h as u32,
        w: wd as u32,
        m: (h * wd) as u32,
        threads: numel(g, op, out)?,
        residual: if residual { 1.0 } else { 0.0 },
        ..Default::default()
    };
    let tensors = vec![
        ("x", x, Access::Read),
        ("w", w, Access::Read),
        ("b", bias, Access::Read),
        ("out", out, Access::Write),
    ];
    per_element(g, CONV, ("dwconv3x3", &p), tensors, (p.threads, WG))
}
