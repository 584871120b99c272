//! Table rows for `shaders/matmul.wgsl` (linear layers; both the matrix-vector path, M ≤ 8,
//! and the register-blocked matrix-matrix path).

use super::common::{poisoned, upload, Rng};
use super::Case;
use fvl_wgpu::gpu::{DType, Graph};
use fvl_wgpu::ops::matmul;

/// out[m, n] = Σ_k x[m, k]·w[n, k] + b[n], in f64.
pub fn linear_ref(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = b.map_or(0.0, |b| b[j] as f64);
            for l in 0..k {
                s += x[i * k + l] as f64 * w[j * k + l] as f64;
            }
            out[i * n + j] = s as f32;
        }
    }
    out
}

/// Rows of `x` through an RMSNorm, `x / sqrt(mean(x²) + eps) · gain`, in f64.
fn rms_rows(x: &[f32], gain: &[f32], eps: f64) -> Vec<f32> {
    let k = gain.len();
    x.chunks(k)
        .flat_map(|row| {
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / k as f64;
            let inv = 1.0 / (ms + eps).sqrt();
            row.iter().zip(gain).map(move |(&v, &g)| (v as f64 * inv * g as f64) as f32)
        })
        .collect()
}

/// `linear_rms` (an RMSNorm and the linear after it): M ≤ 8 in the matrix-vector kernel
/// (rms in its prologue, gain on the x loads), more rows through a separate norm. Rows of x
/// carry an offset and a scale far from 1, so a missing or doubled normalisation fails.
fn rms_cases() -> Vec<Case> {
    let shapes: &[(usize, usize, usize)] = &[
        (1, 64, 37),
        (3, 96, 70),
        (8, 256, 129),
        (1, 37, 23),
        (5, 131, 19),
        (1, 3072, 41),
        (9, 64, 33),
        (33, 160, 45),
    ];
    let mut v = Vec::new();
    for &(m, k, n) in shapes {
        for dtype in [DType::F32, DType::F16, DType::Q8, DType::Q4] {
            if dtype.is_quantized() && k % 32 != 0 {
                continue;
            }
            v.push(Case {
                op: "linear_rms",
                shape: format!("x[{m}, {k}] w[{n}, {k}]"),
                dtype,
                largest_bytes: dtype.bytes(n, k).max(4 * (m * k.max(n)) as u64),
                row_bytes: dtype.bytes(1, k).max(4 * k.max(n) as u64),
                run: Box::new(move |gpu, rng: &mut Rng| {
                    let data: Vec<f32> = rng.vec(m * k, 3.0).iter().map(|v| v + 0.5).collect();
                    let (x, x_s) = upload(gpu, &[m, k], DType::F32, &data);
                    let (w, w_s) = upload(gpu, &[n, k], dtype, &rng.vec(n * k, 1.0));
                    let gain: Vec<f32> = rng.vec(k, 1.0).iter().map(|v| v + 1.2).collect();
                    let (gn, g_s) = upload(gpu, &[k], DType::F32, &gain);
                    let out = poisoned(gpu, &[m, n]);
                    let mut g = Graph::new(gpu);
                    let (xi, wi, oi) = (g.external(&x), g.external(&w), g.external(&out));
                    let gi = g.external(&gn);
                    let eps = 1e-5;
                    matmul::linear_rms(&mut g, xi, gi, wi, eps, oi).unwrap();
                    g.build().unwrap().run(gpu, &[]).unwrap();
                    let want = linear_ref(&rms_rows(&x_s, &g_s, eps as f64), &w_s, None, m, n, k);
                    (out.read_f32(gpu).unwrap(), want)
                }),
            });
        }
    }
    v
}

pub fn cases() -> Vec<Case> {
    // (leading dims of x, K, N): M = 1, 3, 8 take the matrix-vector kernel; the rest the tiled one.
    let shapes: &[(&[usize], usize, usize)] = &[
        (&[1], 64, 37),
        (&[3], 96, 70),
        (&[8], 128, 129),
        (&[33], 64, 65),
        (&[3, 23], 160, 45),
        (&[1], 37, 23),
        (&[70], 131, 19),
        (&[9], 5, 67),
        // Rows a multiple of 256 long: quantized rows are whole vec4s of words (ldw4).
        (&[1], 256, 37),
        (&[5], 512, 19),
        (&[9], 256, 13),
    ];
    let mut v = Vec::new();
    for &(lead, k, n) in shapes {
        for dtype in [DType::F32, DType::F16, DType::Q8, DType::Q4] {
            if dtype.is_quantized() && k % 32 != 0 {
                continue;
            }
            // The residual epilogue (decoder layers' o and down projections) on f32 and q4.
            let resid_too = matches!(dtype, DType::F32 | DType::Q4);
            for (with_bias, with_resid) in [(false, false), (true, false), (true, true)] {
                if with_resid && !resid_too {
                    continue;
                }
                let m: usize = lead.iter().product();
                let mut xs = lead.to_vec();
                xs.push(k);
                let mut os = lead.to_vec();
                os.push(n);
                let w_bytes = dtype.bytes(n, k);
                v.push(Case {
                    op: match (with_bias, with_resid) {
                        (_, true) => "linear+bias+r",
                        (true, false) => "linear+bias",
                        (false, false) => "linear",
                    },
                    shape: format!("x{xs:?} w[{n}, {k}]"),
                    dtype,
                    largest_bytes: w_bytes.max(4 * (m * k.max(n)) as u64),
                    row_bytes: dtype.bytes(1, k).max(4 * k.max(n) as u64),
                    run: Box::new(move |gpu, rng: &mut Rng| {
                        let (x, x_s) = upload(gpu, &xs, DType::F32, &rng.vec(m * k, 1.0));
                        let (w, w_s) = upload(gpu, &[n, k], dtype, &rng.vec(n * k, 1.0));
                        let (b, b_s) = upload(gpu, &[n], DType::F32, &rng.vec(n, 1.0));
                        let (r, r_s) = upload(gpu, &os, DType::F32, &rng.vec(m * n, 2.0));
                        let out = poisoned(gpu, &os);
                        let mut g = Graph::new(gpu);
                        let (xi, wi, oi) = (g.external(&x), g.external(&w), g.external(&out));
                        let bi = with_bias.then(|| g.external(&b));
                        if with_resid {
                            let ri = g.external(&r);
                            matmul::linear_add(&mut g, xi, wi, bi, ri, oi).unwrap();
                        } else {
                            matmul::linear(&mut g, xi, wi, bi, oi).unwrap();
                        }
                        g.build().unwrap().run(gpu, &[]).unwrap();
                        let mut want = linear_ref(&x_s, &w_s, with_bias.then_some(&b_s[..]), m, n, k);
                        if with_resid {
                            want.iter_mut().zip(&r_s).for_each(|(o, r)| *o += r);
                        }
                        (out.read_f32(gpu).unwrap(), want)
                    }),
                });
            }
        }
    }
    v.extend(rms_cases());
    v
}
