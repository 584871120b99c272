//! Table rows for `shaders/conv.wgsl`: conv2d and dwconv3x3, with their CPU references.

use super::common::{poisoned, upload, Rng};
use super::Case;
use fvl_wgpu::gpu::{DType, Graph};
use fvl_wgpu::ops::conv::{self, Conv2d, ConvInput};

/// Reference 2-D convolution with zero padding, in f64. `x(b, ci, y, x)` reads the input;
/// `w` is `[C_out][C_in][kh][kw]`. Returns `[B][Ho·Wo][C_out]`.
#[allow(clippy::too_many_arguments)]
fn conv2d_ref(
    x: impl Fn(usize, usize, usize, usize) -> f32,
    (batch, c_in, h, w): (usize, usize, usize, usize),
    wt: &[f32],
    bias: Option<&[f32]>,
    c_out: usize,
    c: &Conv2d,
) -> Vec<f32> {
    let [kh, kw] = c.kernel;
    let (ho, wo) = c.out_hw(h, w).unwrap();
    let mut out = Vec::with_capacity(batch * ho * wo * c_out);
    for b in 0..batch {
        for oy in 0..ho {
            for ox in 0..wo {
                for co in 0..c_out {
                    let mut s = bias.map_or(0.0, |bs| bs[co] as f64);
                    for ci in 0..c_in {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                // Input coordinates, in padded space first.
                                let iy = (oy * c.stride[0] + ky).checked_sub(c.pad[0]);
                                let ix = (ox * c.stride[1] + kx).checked_sub(c.pad[1]);
                                if let (Some(iy), Some(ix)) = (iy, ix) {
                                    if iy < h && ix < w {
                                        let wv = wt[((co * c_in + ci) * kh + ky) * kw + kx];
                                        s += wv as f64 * x(b, ci, iy, ix) as f64;
                                    }
                                }
                            }
                        }
                    }
                    out.push(s as f32);
                }
            }
        }
    }
    out
}

/// Reference depthwise 3×3 (stride 1, pad 1) over tokens `[B][H·W][C]`, plus x if `residual`.
fn dwconv3x3_ref(
    x: &[f32],
    (h, w, c): (usize, usize, usize),
    wt: &[f32],
    bias: &[f32],
    residual: bool,
) -> Vec<f32> {
    let at = |b: usize, y: usize, xx: usize, ch: usize| x[((b * h + y) * w + xx) * c + ch];
    let batch = x.len() / (h * w * c);
    let mut out = Vec::with_capacity(x.len());
    for b in 0..batch {
        for y in 0..h {
            for xx in 0..w {
                for ch in 0..c {
                    let mut s = bias[ch] as f64;
                    if residual {
                        s += at(b, y, xx, ch) as f64;
                    }
                    for dy in 0..3 {
                        for dx in 0..3 {
                            let (yy, xs) = (y + dy, xx + dx); // padded coordinates
                            if (1..=h).contains(&yy) && (1..=w).contains(&xs) {
                                s += wt[ch * 9 + dy * 3 + dx] as f64
                                    * at(b, yy - 1, xs - 1, ch) as f64;
                            }
                        }
                    }
                    out.push(s as f32);
                }
            }
        }
    }
    out
}

struct ConvCase {
    batch: Option<usize>,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    conv: Conv2d,
    bias: bool,
    dtypes: &'static [DType],
}

const FLOAT: &[DType] = &[DType::F32, DType::F16];
const ALL: &[DType] = &[DType::F32, DType::F16, DType::Q8, DType::Q4];

fn conv2d_cases() -> Vec<Case> {
    let hwc = |h, w| ConvInput::Hwc { h, w };
    let table = [
        // DaViT stage-0 patch embedding on an odd-sized image.
        ConvCase {
            batch: None,
            c_in: 3,
            h: 23,
            w: 19,
            c_out: 20,
            conv: Conv2d::square(7, 4, 3, ConvInput::Chw),
            bias: true,
            dtypes: FLOAT,
        },
        // Later-stage embedding on tokens; K = 288 so the weight can be quantized.
        ConvCase {
            batch: None,
            c_in: 32,
            h: 9,
            w: 11,
            c_out: 37,
            conv: Conv2d::square(3, 2, 1, hwc(9, 11)),
            bias: true,
            dtypes: ALL,
        },
        // Batched image, kh ≠ kw, per-axis stride and padding, no bias.
        ConvCase {
            batch: Some(2),
            c_in: 5,
            h: 8,
            w: 6,
            c_out: 7,
            conv: Conv2d {
                kernel: [3, 2],
                stride: [1, 2],
                pad: [1, 0],
                input: ConvInput::Chw,
            },
            bias: false,
            dtypes: FLOAT,
        },
        // Batched tokens, K = 576.
        ConvCase {
            batch: Some(2),
            c_in: 64,
            h: 7,
            w: 5,
            c_out: 24,
            conv: Conv2d::square(3, 2, 1, hwc(7, 5)),
            bias: true,
            dtypes: ALL,
        },
    ];
    let mut v = Vec::new();
    for cc in table {
        for &dtype in cc.dtypes {
            let ConvCase {
                batch,
                c_in,
                h,
                w,
                c_out,
                conv: c,
                bias,
                ..
            } = cc;
            let b = batch.unwrap_or(1);
            let k = c_in * c.kernel[0] * c.kernel[1];
            let (ho, wo) = c.out_hw(h, w).unwrap();
            let lead: Vec<usize> = batch.into_iter().collect();
            let x_shape = match c.input {
                ConvInput::Chw => [lead.clone(), vec![c_in, h, w]].concat(),
                ConvInput::Hwc { .. } => [lead.clone(), vec![h * w, c_in]].concat(),
            };
            // Quantized rows must be multiples of 32: those take the [C_out, K] view.
            let w_shape = if dtype.is_quantized() {
                vec![c_out, k]
            } else {
                vec![c_out, c_in, c.kernel[0], c.kernel[1]]
            };
            let out_shape = [lead, vec![ho * wo, c_out]].concat();
            let (nx, nw, nout) = (b * c_in * h * w, c_out * k, b * ho * wo * c_out);
            v.push(Case {
                op: "conv2d",
                shape: format!(
                    "{x_shape:?} k{:?}/{:?}{}",
                    c.kernel,
                    c.stride,
                    if bias { "+b" } else { "" }
                ),
                dtype,
                largest_bytes: (4 * nx.max(nout) as u64).max(dtype.bytes(c_out, k)),
                row_bytes: 4 * [x_shape.last(), w_shape.last(), Some(&c_out)]
                    .iter()
                    .map(|d| *d.unwrap())
                    .max()
                    .unwrap() as u64,
                run: Box::new(move |gpu, rng: &mut Rng| {
                    let (x, xs) = upload(gpu, &x_shape, DType::F32, &rng.vec(nx, 1.0));
                    let (wt, ws) = upload(gpu, &w_shape, dtype, &rng.vec(nw, 0.5));
                    let (bt, bs) = upload(gpu, &[c_out], DType::F32, &rng.vec(c_out, 1.0));
                    let out = poisoned(gpu, &out_shape);
                    let mut g = Graph::new(gpu);
                    let (xi, wi, oi) = (g.external(&x), g.external(&wt), g.external(&out));
                    let bi = bias.then(|| g.external(&bt));
                    conv::conv2d(&mut g, &c, xi, wi, bi, oi).unwrap();
                    g.build().unwrap().run(gpu, &[]).unwrap();
                    let read = |bb: usize, ci: usize, y: usize, xx: usize| match c.input {
                        ConvInput::Chw => xs[((bb * c_in + ci) * h + y) * w + xx],
                        ConvInput::Hwc { .. } => xs[((bb * h + y) * w + xx) * c_in + ci],
                    };
                    let bias_ref = bias.then_some(&bs[..]);
                    let want = conv2d_ref(read, (b, c_in, h, w), &ws, bias_ref, c_out, &c);
                    (out.read_f32(gpu).unwrap(), want)
                }),
            });
        }
    }
    v
}

fn dwconv_cases() -> Vec<Case> {
    // (batch, h, w, channels, residual)
    let table = [
        (None, 5, 7, 24, false),
        (Some(2), 13, 9, 40, true),
        (Some(4), 1, 1, 24, true),
        (Some(3), 4, 6, 9, false),
    ];
    let mut v = Vec::new();
    for (batch, h, w, c, residual) in table {
        for dtype in [DType::F32, DType::F16] {
            let x_shape: Vec<usize> = batch.into_iter().chain([h * w, c]).collect();
            let n = x_shape.iter().product::<usize>();
            v.push(Case {
                op: if residual { "dwconv3x3+x" } else { "dwconv3x3" },
                shape: format!("{x_shape:?} {h}x{w}"),
                dtype,
                largest_bytes: 4 * n as u64,
                row_bytes: 4 * c as u64,
                run: Box::new(move |gpu, rng: &mut Rng| {
                    let (x, xs) = upload(gpu, &x_shape, DType::F32, &rng.vec(n, 1.0));
                    let (wt, ws) = upload(gpu, &[c, 1, 3, 3], dtype, &rng.vec(9 * c, 0.5));
                    let (bt, bs) = upload(gpu, &[c], dtype, &rng.vec(c, 1.0));
                    let out = poisoned(gpu, &x_shape);
                    let mut g = Graph::new(gpu);
                    let (xi, wi, bi, oi) = (
                        g.external(&x),
                        g.external(&wt),
                        g.external(&bt),
                        g.external(&out),
                    );
                    conv::dwconv3x3(&mut g, xi, (h, w), wi, bi, residual, oi).unwrap();
                    g.build().unwrap().run(gpu, &[]).unwrap();
                    let want = dwconv3x3_ref(&xs, (h, w, c), &ws, &bs, residual);
                    (out.read_f32(gpu).unwrap(), want)
                }),
            });
        }
    }
    v
}

pub fn cases() -> Vec<Case> {
    let mut v = conv2d_cases();
    v.extend(dwconv_cases());
    v
}
