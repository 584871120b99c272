//! Statistical and property tests of GPU sampling (`ops::sample`): filters keep exactly the
//! CPU's top-k / top-p sets, draws are deterministic per (seed, step), and empirical
//! frequencies follow softmax(logits / T) by a chi-square test.

mod common;

use common::{gpu, Rng};
use fvl_wgpu::gpu::{DType, Gpu, Graph, Tensor};
use fvl_wgpu::ops::sample::{sample, Row, Sampling};
use fvl_wgpu::ops::RunValue;

/// Draws `steps` tokens with one built graph, like a decode loop: run slots hold
/// [seed, step], and each draw is written to ids[step] (the index is the step slot too).
fn draws(gpu: &Gpu, logits: &[f32], s: Sampling, seed: u32, steps: usize) -> Vec<u32> {
    let x = Tensor::from_f32(gpu, &[logits.len()], DType::F32, logits, "logits").unwrap();
    let ids = Tensor::from_u32(gpu, &[steps], &vec![u32::MAX; steps], "ids").unwrap();
    let mut g = Graph::new(gpu);
    let (xi, ii) = (g.external(&x), g.external(&ids));
    sample(&mut g, xi, Row::all(0), ii, RunValue::Slot(1), &s).unwrap();
    let exe = g.build().unwrap();
    for step in 0..steps as u32 {
        exe.submit(gpu, &[seed, step]).unwrap();
    }
    gpu.wait().unwrap();
    ids.read_u32(gpu).unwrap()
}

fn settings(temperature: f32, top_k: u32, top_p: f32) -> Sampling {
    Sampling {
        temperature,
        top_k,
        top_p,
        seed_slot: 0,
        step_slot: 1,
    }
}

/// softmax(x / T) in f64.
fn probs(x: &[f32], t: f32) -> Vec<f64> {
    let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let e: Vec<f64> = x
        .iter()
        .map(|&v| ((v as f64 - m) / t as f64).exp())
        .collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Token ids by decreasing logit (ties by index).
fn ranked(x: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(a.cmp(&b)));
    order
}

/// HF's kept set: the top_k highest, then the smallest prefix of those (by decreasing
/// probability, renormalised) whose mass reaches top_p.
fn kept_set(x: &[f32], t: f32, top_k: usize, top_p: f64) -> Vec<usize> {
    let mut keep = ranked(x);
    if top_k > 0 {
        keep.truncate(top_k);
    }
    let sub: Vec<f32> = keep.iter().map(|&i| x[i]).collect();
    let p = probs(&sub, t);
    let mut mass = 0.0;
    let mut n = 0;
    while n < keep.len() && mass < top_p {
        mass += p[n];
        n += 1;
    }
    keep.truncate(n);
    keep
}

fn argmax(x: &[f32]) -> u32 {
    ranked(x)[0] as u32
}

#[test]
fn top_k_one_is_argmax() {
    let gpu = gpu();
    let mut rng = Rng::new(11);
    for v in [5, 1000, 130001] {
        let x = rng.vec(v, 8.0);
        let got = draws(&gpu, &x, settings(1.3, 1, 1.0), 7, 20);
        assert!(got.iter().all(|&id| id == argmax(&x)), "V={v}: {got:?}");
    }
}

#[test]
fn draws_stay_in_the_cpu_sets() {
    let gpu = gpu();
    let mut rng = Rng::new(12);
    let x = rng.vec(5003, 6.0);
    // (T, top_k, top_p); the CPU set for top_p is taken with 1e-4 of slack, since the GPU
    // sums the mass in f32 and a token right at the boundary may fall either way.
    for (t, k, p) in [(0.8, 40, 1.0), (1.0, 0, 0.9), (1.5, 50, 0.8), (0.7, 3, 1.0)] {
        let set = kept_set(&x, t, k, (p as f64 + 1e-4).min(1.0));
        let got = draws(&gpu, &x, settings(t, k as u32, p), 99, 300);
        for &id in &got {
            assert!(
                set.contains(&(id as usize)),
                "T={t} k={k} p={p}: id {id} outside the {} kept",
                set.len()
            );
        }
        let mut distinct = got.clone();
        distinct.sort();
        distinct.dedup();
        assert!(
            distinct.len() >= 3.min(set.len()),
            "T={t} k={k} p={p}: only {distinct:?}"
        );
    }
}

#[test]
fn same_seed_and_step_same_token() {
    let gpu = gpu();
    let x = Rng::new(13).vec(777, 1.0); // flat enough that steps vary
    let a = draws(&gpu, &x, settings(1.0, 0, 1.0), 5, 64);
    let b = draws(&gpu, &x, settings(1.0, 0, 1.0), 5, 64);
    let c = draws(&gpu, &x, settings(1.0, 0, 1.0), 6, 64);
    assert_eq!(a, b);
    assert_ne!(a, c, "another seed should change the draws");
    let mut distinct = a.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() > 20, "steps barely vary: {distinct:?}");
}

/// Pearson's chi-square of observed ids against probabilities `p` over `ids`.
fn chi_square(got: &[u32], ids: &[usize], p: &[f64]) -> f64 {
    let n = got.len() as f64;
    ids.iter()
        .zip(p)
        .map(|(&id, &pi)| {
            let observed = got.iter().filter(|&&g| g as usize == id).count() as f64;
            (observed - n * pi).powi(2) / (n * pi)
        })
        .sum()
}

#[test]
fn frequencies_follow_softmax() {
    let gpu = gpu();
    let x = [1.0f32, 0.5, -0.3, 2.0, 0.0];
    let steps = 2000;
    // 99.9% quantiles of chi-square with 4 and 2 degrees of freedom.
    let (chi4, chi2) = (18.47, 13.82);

    let got = draws(&gpu, &x, settings(1.5, 0, 1.0), 1234, steps);
    let c = chi_square(&got, &[0, 1, 2, 3, 4], &probs(&x, 1.5));
    assert!(c < chi4, "full softmax: chi-square {c:.2}");

    // Top-3 renormalises over tokens 3, 0, 1.
    let got = draws(&gpu, &x, settings(0.9, 3, 1.0), 99, steps);
    let top: Vec<usize> = ranked(&x)[..3].to_vec();
    let sub: Vec<f32> = top.iter().map(|&i| x[i]).collect();
    let c = chi_square(&got, &top, &probs(&sub, 0.9));
    assert!(c < chi2, "top-3: chi-square {c:.2}");
    assert!(got.iter().all(|&g| top.contains(&(g as usize))));

    // Top-p keeping three tokens (cumulative 0.52, 0.83, 0.93 at T = 1 for p = 0.85).
    let keep = kept_set(&x, 1.0, 0, 0.85);
    assert_eq!(keep.len(), 3);
    let sub: Vec<f32> = keep.iter().map(|&i| x[i]).collect();
    let got = draws(&gpu, &x, settings(1.0, 0, 0.85), 7, steps);
    let c = chi_square(&got, &keep, &probs(&sub, 1.0));
    assert!(c < chi2, "top-p: chi-square {c:.2}");
}
