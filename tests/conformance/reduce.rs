//! Table rows for `shaders/reduce.wgsl` (the mean over tokens), with the CPU reference.

use super::common::{poisoned, upload, Rng};
use super::Case;
use fvl_wgpu::gpu::{DType, Graph};
use fvl_wgpu::ops::reduce;

/// Mean over the rows of each `[n, c]` batch item, in f64.
fn mean_ref(x: &[f32], n: usize, c: usize) -> Vec<f32> {
    x.chunks(n * c)
        .flat_map(|item| {
            (0..c).map(move |k| {
                let s: f64 = (0..n).map(|r| item[r * c + k] as f64).sum();
                (s / n as f64) as f32
            })
        })
        .collect()
}

pub fn cases() -> Vec<Case> {
    // One segment (7), two (100), many with a batch (1001, 4099), the image head (577).
    let shapes: &[&[usize]] = &[
        &[7, 5],
        &[100, 24],
        &[2, 1001, 36],
        &[3, 4099, 13],
        &[577, 64],
    ];
    shapes
        .iter()
        .map(|&shape| {
            let shape = shape.to_vec();
            let total: usize = shape.iter().product();
            let rank = shape.len();
            let (n, c) = (shape[rank - 2], shape[rank - 1]);
            let mut out_shape = shape.clone();
            out_shape[rank - 2] = 1;
            Case {
                op: "mean_rows",
                shape: format!("{shape:?}"),
                dtype: DType::F32,
                largest_bytes: 4 * total as u64,
                row_bytes: 4 * c as u64,
                run: Box::new(move |gpu, rng: &mut Rng| {
                    // Per-column offsets give means well away from zero, as after a LayerNorm.
                    let offsets = rng.vec(c, 3.0);
                    let data: Vec<f32> = rng
                        .vec(total, 1.0)
                        .iter()
                        .enumerate()
                        .map(|(i, v)| v + offsets[i % c])
                        .collect();
                    let (x, xs) = upload(gpu, &shape, DType::F32, &data);
                    let out = poisoned(gpu, &out_shape);
                    let mut g = Graph::new(gpu);
                    let (xi, oi) = (g.external(&x), g.external(&out));
                    reduce::mean_rows(&mut g, xi, oi).unwrap();
                    g.build().unwrap().run(gpu, &[]).unwrap();
                    (out.read_f32(gpu).unwrap(), mean_ref(&xs, n, c))
                }),
            }
        })
        .collect()
}
