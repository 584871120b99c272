//! `fvl-wgpu selfcheck`: a quick answer to "do the kernels compute the right thing on this
//! GPU?" — an MLP block (linear with every weight dtype, LayerNorm, SiLU) against a
//! plain CPU computation of the same formula on the values the GPU holds. The full
//! per-kernel table lives in `tests/conformance.rs`.

use fvl_wgpu::gpu::format::{decode, encode};
use fvl_wgpu::gpu::{DType, Graph, Tensor};
use fvl_wgpu::ops::eltwise::{self, Unary};
use fvl_wgpu::ops::{matmul, norm};
use fvl_wgpu::{Error, Result};

use super::DeviceArgs;

/// Deterministic pseudo-random values in [-1, 1).
fn noise(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s as f32 / 2147483648.0 - 1.0
        })
        .collect()
}

/// CPU: silu(layernorm(x·Wᵀ + b)).
fn reference(x: &[f32], w: &[f32], b: &[f32], rows: usize, dim: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * dim);
    for r in 0..rows {
        let h: Vec<f64> = (0..dim)
            .map(|n| {
                b[n] as f64
                    + (0..dim)
                        .map(|k| x[r * dim + k] as f64 * w[n * dim + k] as f64)
                        .sum::<f64>()
            })
            .collect();
        let mean = h.iter().sum::<f64>() / dim as f64;
        let var = h.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / dim as f64;
        for v in h {
            let y = (v - mean) / (var + 1e-5).sqrt();
            out.push((y / (1.0 + (-y).exp())) as f32);
        }
    }
    out
}

pub fn run(args: &DeviceArgs) -> Result<()> {
    let gpu = args.open()?;
    let (rows, dim) = (19, 96);
    let x = noise(rows * dim, 1);
    let w = noise(dim * dim, 2);
    let b = noise(dim, 3);
    let ones = vec![1.0; dim];
    let zeros = vec![0.0; dim];
    let mut results = Vec::new();
    for dtype in [DType::F32, DType::F16, DType::Q8, DType::Q4] {
        for m in [1, rows] {
            let xt = Tensor::from_f32(&gpu, &[m, dim], DType::F32, &x[..m * dim], "x")?;
            let wt = Tensor::from_f32(&gpu, &[dim, dim], dtype, &w, "w")?;
            let bt = Tensor::from_f32(&gpu, &[dim], DType::F32, &b, "b")?;
            let gamma = Tensor::from_f32(&gpu, &[dim], DType::F32, &ones, "gamma")?;
            let beta = Tensor::from_f32(&gpu, &[dim], DType::F32, &zeros, "beta")?;
            let mut g = Graph::new(&gpu);
            let (xi, wi, bi, gi, be) = (
                g.external(&xt),
                g.external(&wt),
                g.external(&bt),
                g.external(&gamma),
                g.external(&beta),
            );
            let h = g.tensor(&[m, dim], DType::F32)?;
            let y = g.tensor(&[m, dim], DType::F32)?;
            matmul::linear(&mut g, xi, wi, Some(bi), h)?;
            norm::layernorm(&mut g, h, gi, be, 1e-5, y)?;
            eltwise::unary(&mut g, Unary::Silu, y, y)?;
            g.keep(y);
            let exe = g.build()?;
            exe.run(&gpu, &[])?;
            let got = exe.tensor(y).read_f32(&gpu)?;
            let stored = decode(dtype, &encode(dtype, &w, dim), dim, dim);
            let want = reference(&x, &stored, &b, m, dim);
            let err = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(
                    0f32,
                    |a, e| if e.is_nan() { f32::INFINITY } else { a.max(e) },
                );
            let ok = err < 1e-4;
            eprintln!(
                "linear+layernorm+silu  weights {:<4} rows {m:<3} max error {err:.2e}  {}",
                dtype.name(),
                if ok { "ok" } else { "FAIL" }
            );
            results.push(
                serde_json::json!({"weights": dtype.name(), "rows": m, "max_error": err, "ok": ok}),
            );
        }
    }
    let failed = results.iter().filter(|r| r["ok"] == false).count();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"device": gpu.describe(), "checks": results, "failed": failed})
        );
    }
    if failed > 0 {
        return Err(Error::Device(format!(
            "self-check: {failed} of {} checks failed on {}",
            results.len(),
            gpu.describe()
        )));
    }
    eprintln!(
        "self-check passed: {} checks on {}",
        results.len(),
        gpu.describe()
    );
    Ok(())
}
