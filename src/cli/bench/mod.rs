//! `fvl-wgpu bench`: kernels and models timed on this device, each next to the ceilings
//! measured in the same run — buffer-to-buffer copy bandwidth (bytes moved per second) for
//! bandwidth-bound work, the best f32 matmul rate for compute-bound work.
//!
//! Method: a graph holding `REPS` back-to-back dispatches of a kernel is replayed after a
//! warm-up; time per dispatch = best wall time of one replay / `REPS`. Wall time includes
//! one submit and wait per replay, amortised over the repetitions.

use std::time::Instant;

use fvl_wgpu::gpu::{DType, Executable, Gpu, Graph, Tensor};
use fvl_wgpu::ops::matmul;
use fvl_wgpu::Result;

use crate::cli::{storage_dtype, DeviceArgs, Precision};

mod batch;
mod kernels;
mod load;
mod models;

pub use batch::batch;
pub use kernels::kernels;
pub use load::load;
pub use models::{decode, e2e, florence2, vision, E2e};

/// The flags of `bench vision` and `bench florence2`: a Florence-2 size at an image size.
#[derive(clap::Args)]
pub struct Florence2Bench {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Model size: base or large (default: large, or base on a CPU adapter).
    #[arg(long, value_name = "SIZE")]
    pub config: Option<String>,
    /// Square input image side in pixels (default: 768, or 384 on a CPU adapter).
    #[arg(long, value_name = "PIXELS")]
    pub size: Option<usize>,
    /// Weight storage (default: f16 where the adapter has SHADER_F16, else f32).
    #[arg(long, visible_alias = "quant", value_enum, value_name = "FORMAT")]
    pub precision: Option<Precision>,
}

impl Florence2Bench {
    /// Opens the device and picks the sizes not given (light ones on a CPU adapter, said on
    /// stderr): (device, `--config`, `--size`, weight dtype, whether light sizes were picked).
    pub(super) fn open(&self) -> Result<(Gpu, String, usize, DType, bool)> {
        let gpu = self.device.open()?;
        let mut sizes = Sizes::new(&gpu);
        let config = sizes.pick("--config", self.config.clone(), "large".into(), "base".into());
        let size = sizes.pick("--size", self.size, 768, 384);
        sizes.announce();
        let dtype = storage_dtype(self.precision, None, &gpu);
        Ok((gpu, config, size, dtype, sizes.light()))
    }
}

/// The size flags of one bench run on one adapter: the flags given win; the others take the
/// full sizes, or on a CPU (software) adapter, where those take many minutes, light ones.
pub(super) struct Sizes {
    software: bool,
    light: Vec<String>,
    full: Vec<String>,
}

impl Sizes {
    /// Sizes for a run on `gpu`.
    pub fn new(gpu: &Gpu) -> Sizes {
        Sizes {
            software: gpu.is_software(),
            light: vec![],
            full: vec![],
        }
    }

    /// `given`, else `full`, or `light` on a CPU adapter (kept for [`Sizes::announce`]).
    pub fn pick<T: std::fmt::Display>(&mut self, flag: &str, given: Option<T>, full: T, light: T) -> T {
        match given {
            Some(v) => v,
            None if self.software => {
                self.light.push(format!("{flag} {light}"));
                self.full.push(format!("{flag} {full}"));
                light
            }
            None => full,
        }
    }

    /// Whether light sizes were picked.
    pub fn light(&self) -> bool {
        !self.light.is_empty()
    }

    /// Says on stderr which light sizes a CPU adapter got and the flags for the full ones.
    pub fn announce(&self) {
        if self.light() {
            eprintln!(
                "CPU adapter: light sizes {} (the full sizes take many minutes here; ask for them with {})",
                self.light.join(" "),
                self.full.join(" ")
            );
        }
    }
}

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
    exe.run(gpu, &[])?; // warm-up
    Ok(best_run(gpu, &exe, TRIALS)? / REPS as f64)
}

/// Best wall time in seconds of `trials` runs of `exe` (after a warm-up run by the caller).
pub(super) fn best_run(gpu: &Gpu, exe: &Executable, trials: usize) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..trials {
        let t = Instant::now();
        exe.run(gpu, &[])?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
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
