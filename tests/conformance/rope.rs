//! Table rows for `shaders/rope.wgsl`, and `inv_freq` against an independent f64 derivation.

use super::common::{upload, Rng};
use super::Case;
use fvl_wgpu::gpu::{DType, Graph, Tensor};
use fvl_wgpu::ops::rope::{inv_freq, rope, rope_qkv_to_cache, CacheWrite, Llama3Scaling, Rope};
use fvl_wgpu::ops::{RunValue, View};

const LLAMA3: Llama3Scaling = Llama3Scaling {
    factor: 8.0,
    low_freq_factor: 1.0,
    high_freq_factor: 4.0,
    original_max_position_embeddings: 8192.0,
};

/// Rotate-half RoPE of the view's heads, angles in f64 from the same f32 frequencies.
#[allow(clippy::too_many_arguments)]
fn reference(
    x: &[f32],
    inv: &[f32],
    (offset, stride): (usize, usize),
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    pos0: usize,
) -> Vec<f32> {
    let mut out = x.to_vec();
    let half = head_dim / 2;
    for row in 0..batch * tokens {
        let pos = (pos0 + row % tokens) as f64;
        for h in 0..heads {
            let base = row * stride + offset + h * head_dim;
            for d in 0..half {
                let (s, c) = (pos * inv[d] as f64).sin_cos();
                let (x1, x2) = (x[base + d] as f64, x[base + d + half] as f64);
                out[base + d] = (x1 * c - x2 * s) as f32;
                out[base + d + half] = (x2 * c + x1 * s) as f32;
            }
        }
    }
    out
}

struct Setup {
    name: &'static str,
    /// (rows, cols) of the tensor holding x; the view is (offset, stride = cols).
    tensor: (usize, usize),
    offset: usize,
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    pos0: usize,
    from_slot: bool,
    scaling: Option<Llama3Scaling>,
}

pub fn cases() -> Vec<Case> {
    let setups = [
        // q part of a fused qkv row [T, 3C], position fixed.
        Setup {
            name: "rope_q_of_qkv",
            tensor: (5, 3 * 128),
            offset: 0,
            batch: 1,
            tokens: 5,
            heads: 2,
            head_dim: 64,
            pos0: 3000,
            from_slot: false,
            scaling: None,
        },
        // k part, two sequences, odd head count and head_dim 40, position from a run slot.
        Setup {
            name: "rope_k_of_qkv",
            tensor: (14, 3 * 120),
            offset: 120,
            batch: 2,
            tokens: 7,
            heads: 3,
            head_dim: 40,
            pos0: 4093,
            from_slot: true,
            scaling: None,
        },
        // Llama 3 scaled frequencies, head_dim 128, a decode step.
        Setup {
            name: "rope_llama3",
            tensor: (1, 8 * 128),
            offset: 0,
            batch: 1,
            tokens: 1,
            heads: 8,
            head_dim: 128,
            pos0: 2047,
            from_slot: true,
            scaling: Some(LLAMA3),
        },
        // Whole rows, head_dim 24, 33 tokens from position 0 (small angles).
        Setup {
            name: "rope",
            tensor: (33, 5 * 24),
            offset: 0,
            batch: 1,
            tokens: 33,
            heads: 5,
            head_dim: 24,
            pos0: 0,
            from_slot: false,
            scaling: None,
        },
    ];
    setups
        .into_iter()
        .map(|s| {
            let (rows, cols) = s.tensor;
            Case {
                op: s.name,
                shape: format!(
                    "[{rows}, {cols}] h={}x{} pos={}",
                    s.heads, s.head_dim, s.pos0
                ),
                dtype: DType::F32,
                largest_bytes: 4 * (rows * cols) as u64,
                row_bytes: 4 * cols as u64,
                run: Box::new(move |gpu, rng: &mut Rng| {
                    let theta = if s.scaling.is_some() {
                        500000.0
                    } else {
                        10000.0
                    };
                    let inv = inv_freq(s.head_dim, theta, s.scaling);
                    let (x, xs) =
                        upload(gpu, &[rows, cols], DType::F32, &rng.vec(rows * cols, 3.0));
                    let inv_t =
                        Tensor::from_f32(gpu, &[inv.len()], DType::F32, &inv, "inv_freq").unwrap();
                    let mut g = Graph::new(gpu);
                    let (xi, ii) = (g.external(&x), g.external(&inv_t));
                    let pos0 = if s.from_slot {
                        RunValue::Slot(3)
                    } else {
                        RunValue::Fixed(s.pos0 as u32)
                    };
                    let r = Rope::plain(s.batch, s.tokens, s.heads, s.head_dim, pos0);
                    rope(&mut g, View::strided(xi, s.offset, cols), ii, &r).unwrap();
                    let run = [0, 0, 0, s.pos0 as u32];
                    g.build().unwrap().run(gpu, &run).unwrap();
                    let want = reference(
                        &xs,
                        &inv,
                        (s.offset, cols),
                        s.batch,
                        s.tokens,
                        s.heads,
                        s.head_dim,
                        s.pos0,
                    );
                    (x.read_f32(gpu).unwrap(), want)
                }),
            }
        })
        .collect()
}

/// The fused decoder form: a `[q; k; v]` row block rotated with LongRoPE's two tables (the
/// second chosen when the sequence passes `long_after`) and a cos/sin scale, k and v written to
/// cache rows `pos0..`. The reference rotates in f64 from the table the sequence length picks;
/// the output compared is q (in place) followed by both whole caches, poisoned (NaN) beforehand:
/// rows `pos0..pos0 + t` must be written, every other row must stay poisoned.
pub fn kv_cases() -> Vec<Case> {
    // (name, tokens, q heads, kv heads, head_dim, pos0, long_after)
    let setups = [
        ("rope_kv_short", 5usize, 3usize, 1usize, 24usize, 7usize, 40usize),
        ("rope_kv_long_prefill", 37, 4, 2, 16, 0, 32),
        ("rope_kv_long_decode", 1, 4, 4, 16, 32, 32),
        ("rope_kv_last_short_step", 1, 2, 2, 40, 31, 32),
    ];
    setups
        .into_iter()
        .map(|(name, t, hq, hkv, d, pos0, long_after)| {
            let width = (hq + 2 * hkv) * d;
            let kv_dim = hkv * d;
            let s_max = pos0 + t + 3;
            Case {
                op: name,
                shape: format!("[{t}, {width}] q{hq} kv{hkv} d{d} pos {pos0}"),
                dtype: DType::F32,
                largest_bytes: 4 * (t * width).max(s_max * kv_dim) as u64,
                row_bytes: 4 * width as u64,
                run: Box::new(move |gpu, rng: &mut Rng| {
                    let half = d / 2;
                    let base = inv_freq(d, 10000.0, None);
                    let factors = rng.vec(2 * half, 1.0);
                    let inv: Vec<f32> = (0..2 * half)
                        .map(|i| base[i % half] / (2.5 + factors[i]))
                        .collect();
                    let scale = 1.19;
                    let (qkv, xs) = upload(gpu, &[t, width], DType::F32, &rng.vec(t * width, 3.0));
                    let poison = vec![f32::NAN; s_max * kv_dim];
                    let kc = Tensor::from_f32(gpu, &[s_max, kv_dim], DType::F32, &poison, "k").unwrap();
                    let vc = Tensor::from_f32(gpu, &[s_max, kv_dim], DType::F32, &poison, "v").unwrap();
                    let inv_t = Tensor::from_f32(gpu, &[2 * half], DType::F32, &inv, "inv").unwrap();
                    let mut g = Graph::new(gpu);
                    let (xi, ii) = (g.external(&qkv), g.external(&inv_t));
                    let (ki, vi) = (g.external(&kc), g.external(&vc));
                    let r = Rope {
                        long_after: Some(long_after),
                        scale,
                        ..Rope::plain(1, t, hq, d, RunValue::Slot(0))
                    };
                    let w = CacheWrite {
                        q_heads: hq,
                        kv_heads: hkv,
                        k_cache: ki,
                        v_cache: vi,
                    };
                    rope_qkv_to_cache(&mut g, xi, ii, &r, &w).unwrap();
                    g.build().unwrap().run(gpu, &[pos0 as u32]).unwrap();
                    // Reference: the whole row block rotated (q and k heads), scaled, with
                    // the table the sequence length picks; then k and v placed in the caches.
                    let table = if pos0 + t > long_after { &inv[half..] } else { &inv[..half] };
                    let rotated = reference(&xs, table, (0, width), 1, t, hq + hkv, d, pos0);
                    let mut want: Vec<f32> = Vec::new();
                    let mut got: Vec<f32> = Vec::new();
                    let out_q = qkv.read_f32(gpu).unwrap();
                    let (k_got, v_got) = (kc.read_f32(gpu).unwrap(), vc.read_f32(gpu).unwrap());
                    let mut k_want = poison.clone();
                    let mut v_want = poison.clone();
                    for row in 0..t {
                        for c in 0..hq * d {
                            want.push(rotated[row * width + c] * scale);
                            got.push(out_q[row * width + c]);
                        }
                        for c in 0..kv_dim {
                            k_want[(pos0 + row) * kv_dim + c] = rotated[row * width + hq * d + c] * scale;
                            v_want[(pos0 + row) * kv_dim + c] = xs[row * width + (hq + hkv) * d + c];
                        }
                    }
                    // Rows the op must not touch stay NaN on both sides; compare them as 0.
                    let un_nan = |v: Vec<f32>, w: &[f32]| -> Vec<f32> {
                        v.iter().zip(w).map(|(&a, &b)| if a.is_nan() && b.is_nan() { 0.0 } else { a }).collect()
                    };
                    got.extend(un_nan(k_got.clone(), &k_want));
                    got.extend(un_nan(v_got.clone(), &v_want));
                    want.extend(un_nan(k_want.clone(), &k_want));
                    want.extend(un_nan(v_want.clone(), &v_want));
                    (got, want)
                }),
            }
        })
        .collect()
}

/// `inv_freq` against a derivation written separately in f64: the base frequencies as
/// `exp(−ln θ · 2i / d)`, and Llama 3 scaling expressed through each frequency's wavelength
/// in units of the original context, `r = wavelen / orig`: high band `r < 1/high` unchanged,
/// low band `r > 1/low` divided by factor, between them `inv/factor · (1 + s·(factor − 1))`
/// with `s = (1/r − low) / (high − low)`. Also checks the properties that make the scaling
/// sensible: frequencies strictly decrease, the first is exactly 1, every scaled frequency
/// lies in [inv/factor, inv].
#[test]
fn inv_freq_matches_f64_rederivation() {
    for (d, theta) in [(64usize, 10000.0f64), (128, 500000.0), (40, 10000.0)] {
        for scaling in [None, Some(LLAMA3)] {
            let got = inv_freq(d, theta, scaling);
            assert_eq!(got.len(), d / 2);
            assert_eq!(got[0], 1.0);
            for i in 0..d / 2 {
                let base = (-theta.ln() * (2 * i) as f64 / d as f64).exp();
                let want = match scaling {
                    None => base,
                    Some(s) => {
                        let r =
                            2.0 * std::f64::consts::PI / base / s.original_max_position_embeddings;
                        if r < 1.0 / s.high_freq_factor {
                            base
                        } else if r > 1.0 / s.low_freq_factor {
                            base / s.factor
                        } else {
                            let sm = (1.0 / r - s.low_freq_factor)
                                / (s.high_freq_factor - s.low_freq_factor);
                            base / s.factor * (1.0 + sm * (s.factor - 1.0))
                        }
                    }
                };
                // One f32 rounding of a value computed two ways in f64.
                let rel = (got[i] as f64 - want).abs() / want;
                assert!(
                    rel < 1.2e-7,
                    "d={d} θ={theta} {scaling:?} i={i}: {} vs {want} ({rel:.1e})",
                    got[i]
                );
                if let Some(s) = scaling {
                    let g = got[i] as f64;
                    assert!(g <= base * (1.0 + 1e-7) && g >= base / s.factor * (1.0 - 1e-7));
                }
                if i > 0 {
                    assert!(got[i] < got[i - 1], "not decreasing at {i}");
                }
            }
        }
    }
}
