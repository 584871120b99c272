//! Table rows for `shaders/channel_attn.wgsl` (DaViT channel-group attention), with the CPU
//! reference.

use super::common::{poisoned, upload, Rng};
use super::Case;
use fvl_wgpu::gpu::{DType, Graph};
use fvl_wgpu::ops::channel_attn::channel_attention;

/// Reference channel attention in f64 over `qkv` `[B][n][3c]`, `groups` groups.
fn channel_attn_ref(qkv: &[f32], n: usize, c: usize, groups: usize) -> Vec<f32> {
    let cg = c / groups;
    let batch = qkv.len() / (n * 3 * c);
    let at = |b: usize, t: usize, col: usize| qkv[(b * n + t) * 3 * c + col] as f64;
    let scale = (n as f64).powf(-0.5);
    let mut out = vec![0f32; batch * n * c];
    for b in 0..batch {
        for g in 0..groups {
            let col = g * cg;
            for i in 0..cg {
                let scores: Vec<f64> = (0..cg)
                    .map(|j| {
                        (0..n)
                            .map(|t| at(b, t, col + i) * scale * at(b, t, c + col + j))
                            .sum()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                for t in 0..n {
                    let o: f64 = (0..cg)
                        .map(|j| e[j] / sum * at(b, t, 2 * c + col + j))
                        .sum();
                    out[(b * n + t) * c + col + i] = o as f32;
                }
            }
        }
    }
    out
}

pub fn cases() -> Vec<Case> {
    // (batch, tokens, channels, groups); batch 1 uses a 2-D [N, 3C] tensor.
    let setups = [
        (1, 7, 16, 2),    // one segment, CG 8
        (1, 100, 24, 3),  // two segments, CG 8
        (2, 1001, 64, 2), // many segments, CG 32 (the real models' group size), batch 2
        (2, 333, 15, 3),  // CG 5: masked scalar path
        (1, 50, 36, 3),   // CG 12: vec4 path, half of the second 8-wide tile past CG
        (1, 259, 128, 2), // CG 64, the largest supported
    ];
    setups
        .into_iter()
        .map(|(batch, n, c, groups)| {
            let shape = if batch == 1 {
                vec![n, 3 * c]
            } else {
                vec![batch, n, 3 * c]
            };
            let mut out_shape = shape.clone();
            *out_shape.last_mut().unwrap() = c;
            let total = batch * n * 3 * c;
            Case {
                op: "channel_attn",
                shape: format!("B{batch} N{n} C{c} G{groups}"),
                dtype: DType::F32,
                largest_bytes: 4 * total as u64,
                row_bytes: 4 * 3 * c as u64,
                run: Box::new(move |gpu, rng: &mut Rng| {
                    // Scores with a standard deviation of about 1.3: a far from uniform softmax.
                    let (qkv, host) = upload(gpu, &shape, DType::F32, &rng.vec(total, 2.0));
                    let out = poisoned(gpu, &out_shape);
                    let mut g = Graph::new(gpu);
                    let (qi, oi) = (g.external(&qkv), g.external(&out));
                    channel_attention(&mut g, qi, n, groups, oi).unwrap();
                    g.build().unwrap().run(gpu, &[]).unwrap();
                    (
                        out.read_f32(gpu).unwrap(),
                        channel_attn_ref(&host, n, c, groups),
                    )
                }),
            }
        })
        .collect()
}
