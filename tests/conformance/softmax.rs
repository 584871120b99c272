//! Table rows for `shaders/softmax.wgsl`, and the same rows on the fallback (no-subgroup) path.

use super::common::{gpu_without_optional_features, max_rel_error, poisoned, upload, Rng};
use super::{budget, Case};
use fvl_wgpu::gpu::{DType, Graph};
use fvl_wgpu::ops::softmax::softmax;

/// Softmax of each row of `cols`, in f64.
fn reference(x: &[f32], cols: usize) -> Vec<f32> {
    x.chunks(cols)
        .flat_map(|row| {
            let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |v| (v / s) as f32)
        })
        .collect()
}

const SHAPES: &[&[usize]] = &[&[7], &[37, 100], &[3, 1000], &[2, 32001], &[2, 3, 257]];

pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for &shape in SHAPES {
        for in_place in [false, true] {
            let shape = shape.to_vec();
            let n: usize = shape.iter().product();
            let cols = *shape.last().unwrap();
            v.push(Case {
                op: if in_place {
                    "softmax_inplace"
                } else {
                    "softmax"
                },
                shape: format!("{shape:?}"),
                dtype: DType::F32,
                largest_bytes: 4 * n as u64,
                row_bytes: 4 * cols as u64,
                run: Box::new(move |gpu, rng: &mut Rng| {
                    // Logit-like spread: large enough that exp overflows without the max.
                    let (x, xs) = upload(gpu, &shape, DType::F32, &rng.vec(n, 60.0));
                    let mut g = Graph::new(gpu);
                    let xi = g.external(&x);
                    let out = if in_place {
                        x.clone()
                    } else {
                        poisoned(gpu, &shape)
                    };
                    let oi = if in_place { xi } else { g.external(&out) };
                    softmax(&mut g, xi, oi).unwrap();
                    g.build().unwrap().run(gpu, &[]).unwrap();
                    (out.read_f32(gpu).unwrap(), reference(&xs, cols))
                }),
            });
        }
    }
    v
}

/// The table rows again on a device without subgroups: the workgroup-memory tree path.
#[test]
fn softmax_fallback_path() {
    let gpu = gpu_without_optional_features();
    assert!(!gpu.subgroups);
    for (i, case) in cases().iter().enumerate() {
        let (got, want) = (case.run)(&gpu, &mut Rng::new(7 + i as u64));
        let err = max_rel_error(&got, &want);
        assert!(
            err <= budget(case.dtype),
            "{} {}: error {err:.2e}",
            case.op,
            case.shape
        );
    }
}
