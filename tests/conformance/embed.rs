//! Table rows for `shaders/embed.wgsl`, with the CPU reference.

use super::common::{poisoned, upload, Rng};
use super::Case;
use fvl_wgpu::gpu::{DType, Graph, Tensor};
use fvl_wgpu::ops::embed;

/// Reference gather: row `id` of `table` (`[V][D]`) times `scale`, zeros for ids ≥ V.
fn embed_ref(ids: &[u32], table: &[f32], d: usize, scale: f32) -> Vec<f32> {
    let v = table.len() / d;
    ids.iter()
        .flat_map(|&id| {
            let id = id as usize;
            (0..d).map(move |j| {
                if id < v {
                    table[id * d + j] * scale
                } else {
                    0.0
                }
            })
        })
        .collect()
}

pub fn cases() -> Vec<Case> {
    // (V, D, T, scale); quantized tables only where D is a multiple of 32.
    let table = [
        (1001, 64, 7, None),
        (1003, 96, 13, Some(0.125)),
        (1009, 40, 5, Some(-2.0)),
    ];
    let mut v = Vec::new();
    for (vocab, d, t, scale) in table {
        for dtype in [DType::F32, DType::F16, DType::Q8, DType::Q4] {
            if dtype.is_quantized() && d % 32 != 0 {
                continue;
            }
            v.push(Case {
                op: "embed",
                shape: format!("[{vocab}, {d}] T={t} s={}", scale.unwrap_or(1.0)),
                dtype,
                largest_bytes: dtype.bytes(vocab, d),
                row_bytes: 4 * d as u64,
                run: Box::new(move |gpu, rng: &mut Rng| {
                    let (tab, tab_s) = upload(gpu, &[vocab, d], dtype, &rng.vec(vocab * d, 1.0));
                    // Random ids, the last row, and two past the end (which give zero rows):
                    // V, and an id whose id·D wraps around u32 to a valid element index.
                    let mut ids: Vec<u32> =
                        (0..t - 3).map(|_| rng.next_u32() % vocab as u32).collect();
                    ids.extend([vocab as u32 - 1, vocab as u32, u32::MAX / d as u32 + 2]);
                    let id_t = Tensor::from_u32(gpu, &[t], &ids, "ids").unwrap();
                    let out = poisoned(gpu, &[t, d]);
                    let mut g = Graph::new(gpu);
                    let (ii, ti, oi) = (g.external(&id_t), g.external(&tab), g.external(&out));
                    embed::embed(&mut g, ii, ti, scale, oi).unwrap();
                    g.build().unwrap().run(gpu, &[]).unwrap();
                    let want = embed_ref(&ids, &tab_s, d, scale.unwrap_or(1.0));
                    (out.read_f32(gpu).unwrap(), want)
                }),
            });
        }
    }
    v
}
