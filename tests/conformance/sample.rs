//! Table rows for `shaders/sample.wgsl`: the argmax entry's choice, and both entries'
//! non-finite sentinel (sampling has its own statistical tests in `tests/sample.rs`). The
//! output is the chosen id as a one-hot vector, so any wrong id is an error of 1.

use super::common::{upload, Rng};
use super::Case;
use fvl_wgpu::gpu::{DType, Gpu, Graph, Tensor};
use fvl_wgpu::ops::sample::{argmax, sample, Row, Sampling, NON_FINITE};
use fvl_wgpu::ops::RunValue;

/// Index of the largest value, the lowest on ties.
fn reference(x: &[f32]) -> usize {
    (0..x.len()).fold(0, |best, i| if x[i] > x[best] { i } else { best })
}

fn one_hot(n: usize, i: usize) -> Vec<f32> {
    (0..n).map(|j| (j == i) as u32 as f32).collect()
}

/// Runs argmax (or, with `s`, sampling) of `row` of `logits` into slot 2 of a 4-id buffer
/// (the index from a run slot); returns that id, or `None` if another slot was written.
fn choose(gpu: &Gpu, x: &Tensor, row: Row, s: Option<Sampling>) -> Option<u32> {
    // Poisoned with an id no kernel writes, so an unwritten slot shows.
    let poison = 0x5EED_5EED;
    let ids = Tensor::from_u32(gpu, &[4], &[poison; 4], "ids").unwrap();
    let mut g = Graph::new(gpu);
    let (xi, ii) = (g.external(x), g.external(&ids));
    match s {
        None => argmax(&mut g, xi, row, ii, RunValue::Slot(1)).unwrap(),
        Some(s) => sample(&mut g, xi, row, ii, RunValue::Slot(1), &s).unwrap(),
    }
    g.build().unwrap().run(gpu, &[7, 2]).unwrap();
    let got = ids.read_u32(gpu).unwrap();
    [0, 1, 3].iter().all(|&k| got[k] == poison).then_some(got[2])
}

pub fn cases() -> Vec<Case> {
    let mut v = choice_cases();
    v.extend(non_finite_cases());
    v
}

fn choice_cases() -> Vec<Case> {
    // (logits shape, row to read, ties, candidates): V not a multiple of the 256 threads, up
    // to 130k; with candidates, a vocabulary's padding tail holds the row's largest values
    // (and a NaN, which must not count: padding is never scanned).
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
                    if keep < v {
                        data[row * v + v - 1] = f32::NAN;
                    }
                    let (x, xs) = upload(gpu, &shape, DType::F32, &data);
                    let want = reference(&xs[row * v..row * v + keep]);
                    let got = choose(gpu, &x, Row { row, candidates }, None);
                    let got_hot = match got {
                        Some(id) if (id as usize) < v => one_hot(v, id as usize),
                        _ => vec![f32::NAN; v],
                    };
                    (got_hot, one_hot(v, want))
                }),
            }
        })
        .collect()
}

/// A NaN, +Inf or -Inf at a random scanned index of the row (other rows finite, so the
/// kernel must read the right one): both entries write [`NON_FINITE`] and nothing else.
fn non_finite_cases() -> Vec<Case> {
    let setups: [(&[usize], usize, f32, bool); 6] = [
        (&[7], 0, f32::NAN, false),
        (&[3, 1001], 1, f32::INFINITY, false),
        (&[2, 130001], 1, f32::NEG_INFINITY, false),
        (&[4, 50257], 3, f32::NAN, false),
        (&[3, 1001], 2, f32::NAN, true),
        (&[2, 32064], 0, f32::INFINITY, true),
    ];
    setups
        .into_iter()
        .map(|(shape, row, bad, sampled)| {
            let shape = shape.to_vec();
            let n: usize = shape.iter().product();
            let v = *shape.last().unwrap();
            Case {
                op: if sampled { "sample_nonfinite" } else { "argmax_nonfinite" },
                shape: format!("{shape:?} row {row} holds {bad}"),
                dtype: DType::F32,
                largest_bytes: 4 * n as u64,
                row_bytes: 4 * v as u64,
                run: Box::new(move |gpu, rng: &mut Rng| {
                    let mut data = rng.vec(n, 10.0);
                    let at = rng.next_u32() as usize % v;
                    data[row * v + at] = bad;
                    let (x, _) = upload(gpu, &shape, DType::F32, &data);
                    let s = sampled.then_some(Sampling {
                        temperature: 0.7,
                        top_k: 40,
                        top_p: 0.9,
                        seed_slot: 0,
                        step_slot: 1,
                    });
                    let got = choose(gpu, &x, Row::all(row), s);
                    let flagged = (got == Some(NON_FINITE)) as u32 as f32;
                    (vec![flagged], vec![1.0])
                }),
            }
        })
        .collect()
}
