//! Shared test helpers: device, random data, tolerances.
#![allow(dead_code)]

use fvl_wgpu::gpu::{DType, Gpu, GpuOptions, Tensor};

pub mod reference;

/// Opens the test device (lavapipe in CI); `FVL_ADAPTER` picks another.
pub fn gpu() -> Gpu {
    Gpu::new(&GpuOptions::default()).expect("a Vulkan adapter (install mesa-vulkan-drivers)")
}

/// Opens the device without SHADER_F16 and SUBGROUP, to exercise the fallback shaders.
pub fn gpu_without_optional_features() -> Gpu {
    Gpu::new(&GpuOptions {
        disable_optional_features: true,
        ..Default::default()
    })
    .expect("a Vulkan adapter")
}

/// Small deterministic generator (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    pub fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 32) as u32
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * (self.next_u32() as f32 / 4294967296.0)
    }
    /// `n` values uniform in [-scale, scale), never all zero.
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(-scale, scale)).collect()
    }
}

/// The values a tensor of `dtype` actually holds after upload (f16 rounding, quantization),
/// so references can be computed from exactly what the GPU sees.
pub fn as_stored(dtype: DType, data: &[f32], cols: usize) -> Vec<f32> {
    let words = fvl_wgpu::gpu::format::encode(dtype, data, cols);
    fvl_wgpu::gpu::format::decode(dtype, &words, data.len() / cols, cols)
}

/// Uploads `data` as `dtype` and returns the tensor with the values it holds.
pub fn upload(gpu: &Gpu, shape: &[usize], dtype: DType, data: &[f32]) -> (Tensor, Vec<f32>) {
    let t = Tensor::from_f32(gpu, shape, dtype, data, "test input").unwrap();
    (t, as_stored(dtype, data, *shape.last().unwrap()))
}

/// An output tensor poisoned with NaN so unwritten elements fail the comparison.
pub fn poisoned(gpu: &Gpu, shape: &[usize]) -> Tensor {
    let t = Tensor::empty(gpu, shape, DType::F32, "test output").unwrap();
    t.fill(gpu, 0xFF);
    t
}

/// Error of `got` against `want`: the largest absolute difference divided by the largest
/// reference magnitude (scale-free, strict on every element). NaN or a length mismatch is ∞.
pub fn max_rel_error(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let scale = want
        .iter()
        .fold(0f64, |m, &v| m.max((v as f64).abs()))
        .max(1e-30);
    let mut worst = 0f64;
    for (&g, &w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::INFINITY;
        }
        worst = worst.max((g as f64 - w as f64).abs());
    }
    worst / scale
}

/// Normalised mean squared error `Σ(g−w)² / Σw²`.
pub fn nmse(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|&w| (w as f64).powi(2)).sum();
    if got.iter().any(|g| !g.is_finite()) {
        return f64::INFINITY;
    }
    num / den.max(1e-30)
}

/// Path of a file under `tests/fixtures/`.
pub fn fixture_path(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Reads an f32 tensor from a fixture safetensors file: (shape, values).
pub fn fixture_tensor(rel: &str, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixture_path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("{rel}: {name}: {e}"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{rel}: {name}");
    let data = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (t.shape().to_vec(), data)
}

/// A fresh empty folder for one test, named after the test binary and `name`.
pub fn scratch(name: &str) -> std::path::PathBuf {
    let crate_name = env!("CARGO_CRATE_NAME");
    let dir = std::env::temp_dir().join(format!("fvl-{crate_name}-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies the fixture folder `name` into `to` (files only).
pub fn copy_fixture(name: &str, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(fixture_path(name)).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

/// Rewrites the JSON file at `path` through `edit`.
pub fn edit_json(path: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}
