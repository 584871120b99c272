//! `fvl-wgpu bench kernels`: each kernel family timed on this device, next to the ceilings
//! measured in the same run — buffer-to-buffer copy bandwidth (bytes moved per second) for
//! bandwidth-bound kernels, the best f32 matmul rate for compute-bound ones.
//!
//! Method: a graph holding `REPS` back-to-back dispatches of the kernel is replayed after a
//! warm-up; time per dispatch = best wall time of one replay / `REPS`. Wall time includes
//! one submit and wait per replay, amortised over the repetitions.

use std::time::Instant;

use fvl_wgpu::gpu::{DType, Gpu, Graph, Tensor};
use fvl_wgpu::ops::eltwise::{self, Unary};
use fvl_wgpu::ops::{matmul, norm};
use fvl_wgpu::Result;

use super::DeviceArgs;

const REPS: usize = 4;
const TRIALS: usize = 3;

/// One measured row.
struct Row {
    kernel: String,
    shape: String,
    seconds: f64,
    flops: f64,
    bytes: f64,
}

fn noise(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2654435761) >> 8) as f32 / 8388608.0 - 1.0)
        .collect()
}

fn input(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
    Tensor::from_f32(
        gpu,
        shape,
        dtype,
        &noise(shape.iter().product()),
        "bench input",
    )
}

/// Best time of one dispatch of what `record` adds to a graph.
fn time(gpu: &Gpu, mut record: impl FnMut(&mut Graph) -> Result<()>) -> Result<f64> {
    let mut g = Graph::new(gpu);
    for _ in 0..REPS {
        record(&mut g)?;
    }
    let exe = g.build()?;
    exe.run(gpu, &[])?;
    let mut best = f64::INFINITY;
    for _ in 0..TRIALS {
        let t = Instant::now();
        exe.run(gpu, &[])?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best / REPS as f64)
}

/// Copy bandwidth: bytes read + written per second by `copy_buffer_to_buffer`.
fn copy_bandwidth(gpu: &Gpu, bytes: u64) -> Result<f64> {
    let usage = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let a = gpu.buffer("copy src", bytes, usage)?;
    let b = gpu.buffer("copy dst", bytes, usage)?;
    let mut best = f64::INFINITY;
    for trial in 0..=TRIALS {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        for _ in 0..REPS {
            enc.copy_buffer_to_buffer(&a, 0, &b, 0, bytes);
        }
        let t = Instant::now();
        gpu.queue.submit([enc.finish()]);
        gpu.wait()?;
        if trial > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    Ok(2.0 * bytes as f64 * REPS as f64 / best)
}

fn linear_row(gpu: &Gpu, m: usize, n: usize, k: usize, dtype: DType) -> Result<Row> {
    let x = input(gpu, &[m, k], DType::F32)?;
    let w = input(gpu, &[n, k], dtype)?;
    let out = Tensor::empty(gpu, &[m, n], DType::F32, "bench output")?;
    let seconds = time(gpu, |g| {
        let (xi, wi, oi) = (g.external(&x), g.external(&w), g.external(&out));
        matmul::linear(g, xi, wi, None, oi)
    })?;
    let kernel = if m <= matmul::MATVEC_MAX_ROWS {
        "matvec"
    } else {
        "matmul"
    };
    Ok(Row {
        kernel: format!("{kernel} {}", dtype.name()),
        shape: format!("{m}x{k} · {n}x{k}ᵀ"),
        seconds,
        flops: 2.0 * (m * n * k) as f64,
        bytes: (w.layout.bytes() + 4 * (m * k + m * n) as u64) as f64,
    })
}

pub fn kernels(args: &DeviceArgs, quick: bool, only: Option<&str>) -> Result<()> {
    let wanted = |name: &str| only.is_none_or(|o| name.contains(o));
    let gpu = args.open()?;
    let copy_bytes = (if quick { 32u64 } else { 128 } << 20).min(gpu.limits.max_buffer_size / 2);
    eprintln!("measuring copy bandwidth ({} MiB)…", copy_bytes >> 20);
    let copy = copy_bandwidth(&gpu, copy_bytes)?;
    let (mm, mv_n, mv_k, rows, cols) = if quick {
        (512, 4096, 1024, 1024, 1024)
    } else {
        (1024, 8192, 2048, 4096, 1024)
    };

    // The compute ceiling: our f32 matmul at the size the issue names, always measured.
    eprintln!("matmul {mm}³ f32 (ceiling)…");
    let ceiling = linear_row(&gpu, mm, mm, mm, DType::F32)?;
    let best_matmul = ceiling.flops / ceiling.seconds;
    let mut rows_out = vec![ceiling];
    for dtype in [DType::F16, DType::Q8, DType::Q4] {
        if wanted(&format!("matmul {}", dtype.name())) {
            eprintln!("matmul {mm}³ {}…", dtype.name());
            rows_out.push(linear_row(&gpu, mm, mm, mm, dtype)?);
        }
    }
    for dtype in [DType::F32, DType::F16, DType::Q8, DType::Q4] {
        if wanted(&format!("matvec {}", dtype.name())) {
            eprintln!("matvec {mv_n}x{mv_k} {}…", dtype.name());
            rows_out.push(linear_row(&gpu, 1, mv_n, mv_k, dtype)?);
        }
    }
    let x = input(&gpu, &[rows, cols], DType::F32)?;
    let gamma = input(&gpu, &[cols], DType::F32)?;
    let beta = input(&gpu, &[cols], DType::F32)?;
    let elems = (rows * cols) as f64;
    let out = Tensor::empty(&gpu, &[rows, cols], DType::F32, "bench output")?;
    let shape = format!("{rows}x{cols}");
    if wanted("layernorm") {
        let seconds = time(&gpu, |g| {
            let (xi, gi, bi, oi) = (
                g.external(&x),
                g.external(&gamma),
                g.external(&beta),
                g.external(&out),
            );
            norm::layernorm(g, xi, gi, bi, 1e-5, oi)
        })?;
        rows_out.push(Row {
            kernel: "layernorm".into(),
            shape: shape.clone(),
            seconds,
            flops: 8.0 * elems,
            bytes: 8.0 * elems,
        });
    }
    if wanted("gelu") {
        let seconds = time(&gpu, |g| {
            let (xi, oi) = (g.external(&x), g.external(&out));
            eltwise::unary(g, Unary::Gelu, xi, oi)
        })?;
        rows_out.push(Row {
            kernel: "gelu".into(),
            shape,
            seconds,
            flops: 20.0 * elems,
            bytes: 8.0 * elems,
        });
    }
    eprintln!(
        "\ndevice {}: copy bandwidth {:.1} GB/s, best matmul {:.1} GFLOP/s",
        gpu.describe(),
        copy / 1e9,
        best_matmul / 1e9
    );
    eprintln!(
        "{:<14} {:<26} {:>10} {:>10} {:>7} {:>9} {:>7}",
        "kernel", "shape", "ms", "GFLOP/s", "of mm", "GB/s", "of copy"
    );
    let mut json_rows = Vec::new();
    for r in &rows_out {
        let (gflops, gbs) = (r.flops / r.seconds / 1e9, r.bytes / r.seconds / 1e9);
        eprintln!(
            "{:<14} {:<26} {:>10.3} {:>10.2} {:>6.0}% {:>9.2} {:>6.0}%",
            r.kernel,
            r.shape,
            r.seconds * 1e3,
            gflops,
            100.0 * gflops * 1e9 / best_matmul,
            gbs,
            100.0 * gbs * 1e9 / copy
        );
        json_rows.push(serde_json::json!({
            "kernel": r.kernel, "shape": r.shape, "ms": r.seconds * 1e3,
            "gflops": gflops, "fraction_of_best_matmul": gflops * 1e9 / best_matmul,
            "gb_per_s": gbs, "fraction_of_copy_bandwidth": gbs * 1e9 / copy,
        }));
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "device": gpu.describe(),
                "ceilings": {"copy_gb_per_s": copy / 1e9, "best_matmul_gflops": best_matmul / 1e9},
                "kernels": json_rows,
            })
        );
    }
    Ok(())
}
