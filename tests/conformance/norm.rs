//! Table rows for `shaders/norm.wgsl`.

use super::common::{poisoned, upload, Rng};
use super::Case;
use fvl_wgpu::gpu::{DType, Graph};
use fvl_wgpu::ops::norm;

/// LayerNorm (gamma, beta) or, with `beta = None`, RMSNorm, per row, in f64.
fn norm_ref(x: &[f32], gamma: &[f32], beta: Option<&[f32]>, cols: usize, eps: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let n = cols as f64;
        let mean = if beta.is_some() {
            row.iter().map(|&v| v as f64).sum::<f64>() / n
        } else {
            0.0
        };
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let inv = 1.0 / (var + eps).sqrt();
        for (c, &v) in row.iter().enumerate() {
            let y = (v as f64 - mean) * inv * gamma[c] as f64 + beta.map_or(0.0, |b| b[c] as f64);
            out.push(y as f32);
        }
    }
    out
}

pub fn cases() -> Vec<Case> {
    let shapes: &[&[usize]] = &[&[1, 7], &[37, 96], &[3, 5, 1000], &[2, 4097]];
    let mut v = Vec::new();
    for rms in [false, true] {
        for &shape in shapes {
            for dtype in [DType::F32, DType::F16] {
                let shape = shape.to_vec();
                let n: usize = shape.iter().product();
                let cols = *shape.last().unwrap();
                v.push(Case {
                    op: if rms { "rmsnorm" } else { "layernorm" },
                    shape: format!("{shape:?}"),
                    dtype,
                    largest_bytes: 4 * n as u64,
                    row_bytes: 4 * cols as u64,
                    run: Box::new(move |gpu, rng: &mut Rng| {
                        // A row offset makes the centring matter.
                        let data: Vec<f32> = rng.vec(n, 2.0).iter().map(|v| v + 3.0).collect();
                        let (x, xs) = upload(gpu, &shape, DType::F32, &data);
                        let (gm, gs) = upload(gpu, &[cols], dtype, &rng.vec(cols, 1.5));
                        let (bt, bs) = upload(gpu, &[cols], dtype, &rng.vec(cols, 1.0));
                        let out = poisoned(gpu, &shape);
                        let mut g = Graph::new(gpu);
                        let (xi, gi, bi, oi) = (
                            g.external(&x),
                            g.external(&gm),
                            g.external(&bt),
                            g.external(&out),
                        );
                        let eps = 1e-5;
                        if rms {
                            norm::rmsnorm(&mut g, xi, gi, eps, oi).unwrap();
                        } else {
                            norm::layernorm(&mut g, xi, gi, bi, eps, oi).unwrap();
                        }
                        g.build().unwrap().run(gpu, &[]).unwrap();
                        let want = norm_ref(&xs, &gs, (!rms).then_some(&bs[..]), cols, eps as f64);
                        (out.read_f32(gpu).unwrap(), want)
                    }),
                });
            }
        }
    }
    v
}
