//! Storage formats: what upload → readback returns, and the error budget of quantization
//! itself (the conformance table checks kernels against dequantized values; this bounds how
//! far those values are from the originals).

mod common;

use common::{gpu, nmse, Rng};
use fvl_wgpu::gpu::format::{decode, encode};
use fvl_wgpu::gpu::{DType, Tensor};

/// Weight-like data: uniform noise with a few large outliers per row, as real checkpoints have.
fn weights(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
    let mut w = rng.vec(rows * cols, 0.05);
    for r in 0..rows {
        w[r * cols + (r * 7) % cols] = 0.6;
    }
    w
}

/// Normalised MSE that round-to-nearest with `levels` steps per block extreme predicts:
/// each element errs uniformly within ±step/2, i.e. step²/12 on average.
fn predicted_nmse(w: &[f32], step_of: impl Fn(f32) -> f32) -> f64 {
    let err: f64 = w
        .chunks(32)
        .map(|b| {
            let step = step_of(b.iter().fold(0f32, |m, v| m.max(v.abs()))) as f64;
            32.0 * step * step / 12.0
        })
        .sum();
    err / w.iter().map(|&v| (v as f64).powi(2)).sum::<f64>()
}

#[test]
fn quantization_error_budget() {
    let mut rng = Rng::new(5);
    let (rows, cols) = (64, 256);
    let w = weights(&mut rng, rows, cols);
    // Budget: 1.5× the rounding-noise prediction (q4 clamps the far side of its range, and
    // scales are rounded to f16); f16 itself keeps 11 bits: nmse below 2^-22.
    let q8 = predicted_nmse(&w, |amax| amax / 127.0);
    let q4 = predicted_nmse(&w, |amax| amax / 8.0);
    for (dtype, budget) in [
        (DType::F16, 2.4e-7),
        (DType::Q8, 1.5 * q8),
        (DType::Q4, 1.5 * q4),
    ] {
        let back = decode(dtype, &encode(dtype, &w, cols), rows, cols);
        let e = nmse(&back, &w);
        eprintln!("{}: nmse {e:.3e} (budget {budget:.3e})", dtype.name());
        assert!(
            e < budget,
            "{} quantization nmse {e} over budget {budget}",
            dtype.name()
        );
    }
}

#[test]
fn q4_keeps_the_block_extreme_exact_and_q8_is_symmetric() {
    let mut rng = Rng::new(9);
    let cols = 64;
    let w = weights(&mut rng, 4, cols);
    let q4 = decode(DType::Q4, &encode(DType::Q4, &w, cols), 4, cols);
    let q8 = decode(DType::Q8, &encode(DType::Q8, &w, cols), 4, cols);
    for (b, block) in w.chunks(32).enumerate() {
        let i = (0..32)
            .max_by(|&a, &c| block[a].abs().total_cmp(&block[c].abs()))
            .unwrap();
        let tol = block[i].abs() * 1e-3; // f16 scale rounding
        assert!(
            (q4[b * 32 + i] - block[i]).abs() <= tol,
            "q4 block {b} extreme"
        );
        assert!(
            (q8[b * 32 + i] - block[i]).abs() <= tol,
            "q8 block {b} extreme"
        );
    }
}

#[test]
fn upload_and_readback_round_trip_every_dtype_chunked() {
    let mut gpu = gpu();
    let mut rng = Rng::new(2);
    for (dtype, shape) in [
        (DType::F32, vec![13, 37]),
        (DType::F16, vec![13, 37]),
        (DType::Q8, vec![11, 96]),
        (DType::Q4, vec![11, 96]),
    ] {
        let (rows, cols) = (shape[0], shape[1]);
        let data = weights(&mut rng, rows, cols);
        let stored = decode(dtype, &encode(dtype, &data, cols), rows, cols);
        for limit in [1 << 20, dtype.bytes(3, cols)] {
            gpu.max_binding = limit;
            let t = Tensor::from_f32(&gpu, &shape, dtype, &data, "t").unwrap();
            assert_eq!(
                t.read_f32(&gpu).unwrap(),
                stored,
                "{} with {} chunks",
                dtype.name(),
                t.chunks.len()
            );
        }
    }
}

#[test]
fn quantized_rows_must_be_whole_blocks() {
    let gpu = gpu();
    let err = Tensor::from_f32(&gpu, &[2, 40], DType::Q4, &[0.5; 80], "w").unwrap_err();
    assert!(err.to_string().contains("multiple of 32"), "{err}");
}
