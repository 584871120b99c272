//! Table rows for `shaders/attention.wgsl`.

use super::common::{poisoned, upload, Rng};
use super::Case;
use fvl_wgpu::gpu::{DType, Graph};
use fvl_wgpu::ops::attention::{attention, Attention};
use fvl_wgpu::ops::{RunValue, View};

/// A strided view of host data: element (row, col) at `row·stride + offset + col`.
struct HostView<'a> {
    data: &'a [f32],
    offset: usize,
    stride: usize,
}

impl HostView<'_> {
    fn at(&self, row: usize, col: usize) -> f64 {
        self.data[row * self.stride + self.offset + col] as f64
    }
}

/// Attention in f64, straight from the definition.
fn reference(q: &HostView, k: &HostView, v: &HostView, a: &Attention, kv_len: usize) -> Vec<f32> {
    let d = a.head_dim;
    let mut out = vec![0f32; a.batch * a.tq * a.q_heads * d];
    for b in 0..a.batch {
        for i in 0..a.tq {
            let visible = if a.causal {
                kv_len - a.tq + i + 1
            } else {
                kv_len
            };
            // A sliding window keeps the last `window` of them.
            let first = a.window.map_or(0, |w| visible.saturating_sub(w));
            for h in 0..a.q_heads {
                let kvh = h / (a.q_heads / a.kv_heads);
                let qrow = b * a.tq + i;
                let scores: Vec<f64> = (first..visible)
                    .map(|s| {
                        let krow = b * a.s_max + s;
                        (0..d)
                            .map(|c| q.at(qrow, h * d + c) * k.at(krow, kvh * d + c))
                            .sum::<f64>()
                            * a.scale as f64
                    })
                    .collect();
                let m = scores.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
                let w: Vec<f64> = scores.iter().map(|&x| (x - m).exp()).collect();
                let total: f64 = w.iter().sum();
                for c in 0..d {
                    let o: f64 = (first..visible)
                        .map(|s| w[s - first] * v.at(b * a.s_max + s, kvh * d + c))
                        .sum();
                    out[qrow * a.q_heads * d + h * d + c] = (o / total) as f32;
                }
            }
        }
    }
    out
}

struct Setup {
    name: &'static str,
    a: Attention,
    /// q, k and v are column blocks of one [batch·T, (Hq + 2·Hkv)·D] tensor (needs tq = s_max).
    fused: bool,
    /// kv_len of each replay; more than one means it comes from a run slot.
    lens: &'static [u32],
}

fn attn(
    batch: usize,
    tq: usize,
    s_max: usize,
    heads: (usize, usize),
    head_dim: usize,
    causal: bool,
) -> Attention {
    Attention {
        batch,
        tq,
        s_max,
        q_heads: heads.0,
        kv_heads: heads.1,
        head_dim,
        kv_len: RunValue::Fixed(s_max as u32),
        causal,
        window: None,
        scale: (head_dim as f32).powf(-0.5),
    }
}

pub fn cases() -> Vec<Case> {
    let setups = [
        // Encoder-style: fused qkv, two sequences (windows), full attention.
        Setup {
            name: "attn_full_fused",
            a: attn(2, 9, 9, (3, 3), 32, false),
            fused: true,
            lens: &[9],
        },
        // Causal GQA prefill over more keys than one block (WG = 64), head_dim 40.
        Setup {
            name: "attn_causal_gqa",
            a: attn(1, 70, 70, (4, 2), 40, true),
            fused: false,
            lens: &[70],
        },
        // Odd head_dim (scalar loads, unaligned fused offsets), causal, three prompts.
        Setup {
            name: "attn_causal_d13",
            a: attn(3, 5, 5, (2, 1), 13, true),
            fused: true,
            lens: &[5],
        },
        // head_dim 8 with many heads, odd key count, full attention.
        Setup {
            name: "attn_full_d8",
            a: attn(1, 3, 67, (12, 12), 8, false),
            fused: false,
            lens: &[67],
        },
        // head_dim 128, Tq < kv_len: causal queries at the end of a 131-key cache.
        Setup {
            name: "attn_causal_d128",
            a: attn(1, 4, 131, (2, 2), 128, true),
            fused: false,
            lens: &[131],
        },
        // Decode: one query, GQA, a 200-row cache whose length comes from a run slot and
        // changes between two replays of the same built graph.
        Setup {
            name: "attn_decode_gqa",
            a: Attention {
                kv_len: RunValue::Slot(5),
                ..attn(1, 1, 200, (8, 2), 64, true)
            },
            fused: false,
            lens: &[131, 200],
        },
        // Decode for two sequences (beams), groups of 3 query heads, a partly filled cache.
        Setup {
            name: "attn_decode_gqa_b2",
            a: Attention {
                kv_len: RunValue::Slot(5),
                ..attn(2, 1, 40, (6, 2), 24, true)
            },
            fused: false,
            lens: &[37],
        },
        // Sliding window (Phi-3's `sliding_window`): a causal prefill over more than one key
        // block whose window of 37 starts mid-block, and decode over a growing cache.
        Setup {
            name: "attn_causal_window",
            a: Attention {
                window: Some(37),
                ..attn(1, 70, 70, (4, 2), 40, true)
            },
            fused: false,
            lens: &[70],
        },
        Setup {
            name: "attn_decode_window",
            a: Attention {
                kv_len: RunValue::Slot(5),
                window: Some(29),
                ..attn(1, 1, 200, (8, 2), 64, true)
            },
            fused: false,
            lens: &[17, 131, 200],
        },
    ];
    setups
        .into_iter()
        .map(|s| {
            let a = s.a;
            let d = a.head_dim;
            let (qw, kw) = (a.q_heads * d, a.kv_heads * d);
            let fused_cols = qw + 2 * kw;
            let q_n = a.batch * a.tq * qw;
            let kv_n = a.batch * a.s_max * kw;
            let largest = if s.fused {
                a.batch * a.tq * fused_cols
            } else {
                q_n.max(kv_n)
            };
            let row = if s.fused { fused_cols } else { qw.max(kw) };
            Case {
                op: s.name,
                shape: format!(
                    "B{} T{} S{} H{}/{} D{}",
                    a.batch, a.tq, a.s_max, a.q_heads, a.kv_heads, d
                ),
                dtype: DType::F32,
                largest_bytes: 4 * largest as u64,
                row_bytes: 4 * row as u64,
                run: Box::new(move |gpu, rng: &mut Rng| {
                    let mut g = Graph::new(gpu);
                    let out = poisoned(gpu, &[a.batch, a.tq, qw]);
                    let oi = g.external(&out);
                    // Host copies with their views, and the GPU views of the same tensors.
                    let host: Vec<(Vec<f32>, usize, usize)>;
                    let views: [View; 3];
                    if s.fused {
                        let shape = [a.batch * a.tq, fused_cols];
                        let (t, data) =
                            upload(gpu, &shape, DType::F32, &rng.vec(shape[0] * shape[1], 2.0));
                        let id = g.external(&t);
                        let offsets = [0, qw, qw + kw];
                        views = offsets.map(|o| View::strided(id, o, fused_cols));
                        host = offsets
                            .iter()
                            .map(|&o| (data.clone(), o, fused_cols))
                            .collect();
                    } else {
                        let shapes = [
                            [a.batch, a.tq, qw],
                            [a.batch, a.s_max, kw],
                            [a.batch, a.s_max, kw],
                        ];
                        let up: Vec<_> = shapes
                            .iter()
                            .map(|sh| {
                                upload(gpu, sh, DType::F32, &rng.vec(sh.iter().product(), 2.0))
                            })
                            .collect();
                        let ids: Vec<_> = up.iter().map(|(t, _)| g.external(t)).collect();
                        views = [0, 1, 2].map(|i| View::rows(&g, ids[i]));
                        host = up
                            .iter()
                            .zip(shapes)
                            .map(|((_, data), sh)| (data.clone(), 0, sh[2]))
                            .collect();
                    }
                    attention(&mut g, views[0], views[1], views[2], oi, &a).unwrap();
                    let exe = g.build().unwrap();
                    let hv = |i: usize| HostView {
                        data: &host[i].0,
                        offset: host[i].1,
                        stride: host[i].2,
                    };
                    let (mut got, mut want) = (Vec::new(), Vec::new());
                    for &len in s.lens {
                        out.fill(gpu, 0xFF);
                        exe.run(gpu, &[0, 0, 0, 0, 0, len]).unwrap();
                        got.extend(out.read_f32(gpu).unwrap());
                        want.extend(reference(&hv(0), &hv(1), &hv(2), &a, len as usize));
                    }
                    (got, want)
                }),
            }
        })
        .collect()
}
