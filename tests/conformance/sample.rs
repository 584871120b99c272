//! Table rows for the argmax entry of `shaders/sample.wgsl` (sampling has its own
//! statistical tests in `tests/sample.rs`). The output is the chosen id as a one-hot
//! vector, so any wrong id is an error of 1.

use super::common::{upload, Rng};
use super::Case;
use fvl_wgpu::gpu::{DType, Graph, Tensor};
use fvl_wgpu::ops::sample::{argmax, Row};
use fvl_wgpu::ops::RunValue;

/// Index of the largest value, the lowest on ties.
fn reference(x: &[f32]) -> usize {
    (0..x.len()).fold(0, |best, i| if x[i] > x[best] { i } else { best })
}

fn one_hot(n: usize, i: usize) -> Vec<f32> {
    (0..n).map(|j| (j == i) as u32 as f32).collect()
}

pub fn cases() -> Vec<Case> {
    // (logits shape, row to read, ties, candidates): V not a multiple of the 256 threads, up
    // to 130k; with candidates, a vocabulary's padding tail holds the row's largest values.
    let setups: [(&[usize], usize, bool, Option<usize>); 7] = [
        (&[7], 0, false, None),
        (&[3, 1000], 1, false, None),
        (&[3, 1000], 2, true, None),
        (&[2, 130001], 1, false, None),
        (&[4, 50257], 3, true, None),
        (&[3, 448], 1, false, Some(411)),
        (&[2, 32064], 1, false, Some(32011)),
    ];
    setups
        .into_iter()
        .map(|(shape, row, ties, candidates)| {
            let shape = shape.to_vec();
            let n: usize = shape.iter().product();
            let v = *shape.last().unwrap();
            Case {
                op: match (ties, candidates) {
                    (true, _) => "argmax_ties",
                    (false, Some(_)) => "argmax_candidates",
                    (false, None) => "argmax",
                },
                shape: format!("{shape:?} row {row} candidates {candidates:?}"),
                dtype: DType::F32,
                largest_bytes: 4 * n as u64,
                row_bytes: 4 * v as u64,
                run: Box::new(move |gpu, rng: &mut Rng| {
                    let mut data = rng.vec(n, 10.0);
                    if ties {
                        // The maximum three times, in different threads' segments.
                        for j in [v - 2, v / 2 + 3, v / 3 + 1] {
                            data[row * v + j] = 11.0;
                        }
                    }
                    let keep = candidates.unwrap_or(v);
                    for j in keep..v {
                        data[row * v + j] = 20.0 + j as f32; // padding: larger than any candidate
                    }
                    let (x, xs) = upload(gpu, &shape, DType::F32, &data);
                    // Write into slot 2 of a token buffer, the index from a run slot.
                    let ids = Tensor::from_u32(gpu, &[4], &[u32::MAX; 4], "ids").unwrap();
                    let mut g = Graph::new(gpu);
                    let (xi, ii) = (g.external(&x), g.external(&ids));
                    argmax(&mut g, xi, Row { row, candidates }, ii, RunValue::Slot(1)).unwrap();
                    g.build().unwrap().run(gpu, &[0, 2]).unwrap();
                    let got = ids.read_u32(gpu).unwrap();
                    let others_kept = [0, 1, 3].iter().all(|&k| got[k] == u32::MAX);
                    let want = reference(&xs[row * v..row * v + keep]);
                    let got_hot = if others_kept && (got[2] as usize) < v {
                        one_hot(v, got[2] as usize)
                    } else {
                        vec![f32::NAN; v]
                    };
                    (got_hot, one_hot(v, want))
                }),
            }
        })
        .collect()
}
