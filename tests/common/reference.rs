//! Plain CPU references for every kernel family, written for clarity, in f64 where cheap.
#![allow(dead_code)]

/// erf in f64: Taylor series (enough terms for 1e-15 below |x| = 4), ±1 beyond.
pub fn erf(x: f64) -> f64 {
    if x.abs() >= 4.0 {
        return x.signum() * 1.0;
    }
    let mut term = x;
    let mut sum = x;
    let mut n = 0.0;
    while term.abs() > 1e-17 * sum.abs().max(1e-300) {
        n += 1.0;
        term *= -x * x / n;
        sum += term / (2.0 * n + 1.0);
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

pub fn gelu(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))) as f32
}

pub fn silu(x: f32) -> f32 {
    let x = x as f64;
    (x / (1.0 + (-x).exp())) as f32
}
