//! `fvl-wgpu bench`: kernels and models timed on this device, each next to the ceilings
//! measured in the same run — buffer-to-buffer copy bandwidth (bytes moved per second) for
//! bandwidth-bound work, the best f32 matmul rate for compute-bound work.
//!
//! Method: a graph holding `REPS` back-to-back dispatches of a kernel is replayed after a
//! warm-up; time per dispatch = best wall time of one replay / `REPS`. Wall time includes
//! one submit and wait per replay, amortised over the repetitions.

use std::time::Instant;

use fvl_wgpu::gpu::{DType, Gpu, Graph, Tensor};
use fvl_wgpu::ops::matmul;
use fvl_wgpu::Result;

mod batch;
mod kernels;
mod load;
mod models;

pub use batch::batch;
pub use kernels::kernels;
pub use load::load;
pub use models::{decode, e2e, florence2, vision};

pub(super) const REPS: usize = 4;
pub(super) const TRIALS: usize = 3;

/// One measured row.
pub(super) struct Row {
    pub kernel: String,
    pub shape: String,
    pub seconds: f64,
    pub flops: f64,
    pub bytes: f64,
}

pub(super) fn noise(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2654435761) >> 8) as f32 / 8388608.0 - 1.0)
        .collect()
}

pub(super) fn input(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
    Tensor::from_f32(
        gpu,
        shape,
        dtype,
        &noise(shape.iter().product()),
        "bench input",
    )
}

/// Best time of one dispatch of what `record` adds to a graph.
pub(super) fn time(gpu: &Gpu, mut record: impl FnMut(&mut Graph) -> Result<()>) -> Result<f64> {
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

/// Copy bandwidth: bytes read + written per second by a buffer-to-buffer copy.
pub(super) fn copy_bandwidth(gpu: &Gpu, bytes: u64) -> Result<f64> {
    gpu.copy_bandwidth(bytes, REPS, TRIALS)
}

pub(super) fn linear_row(gpu: &Gpu, m: usize, n: usize, k: usize, dtype: DType) -> Result<Row> {
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
