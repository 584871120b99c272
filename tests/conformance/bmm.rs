//! Table rows for `shaders/bmm.wgsl` (batched products over strided views).

use super::common::{poisoned, upload, Rng};
use super::Case;
use fvl_wgpu::gpu::{DType, Graph};
use fvl_wgpu::ops::bmm::{self, Bmm, MatView};
use fvl_wgpu::ops::RunValue;

/// View geometry without the tensor: (offset, stride_outer, stride_inner, row_stride).
type Geo = (usize, usize, usize, usize);

fn at(g: Geo, bi: usize, z: usize, r: usize, c: usize) -> usize {
    g.0 + (z / bi) * g.1 + (z % bi) * g.2 + r * g.3 + c
}

/// c[z][i][j] = scale · Σ_{k < k_len} a[z][i][k] · (b[z][j][k] or b[z][k][j]).
#[allow(clippy::too_many_arguments)]
fn bmm_ref(a: &[f32], ga: Geo, b: &[f32], gb: Geo, c: &mut [f32], gc: Geo, p: &Bmm, k_len: usize) {
    let bi = p.batch.1;
    for z in 0..p.batch.0 * bi {
        for i in 0..p.m {
            for j in 0..p.n {
                let mut s = 0f64;
                for k in 0..k_len {
                    let bv = if p.b_transposed {
                        b[at(gb, bi, z, j, k)]
                    } else {
                        b[at(gb, bi, z, k, j)]
                    };
                    s += a[at(ga, bi, z, i, k)] as f64 * bv as f64;
                }
                c[at(gc, bi, z, i, j)] = (s * p.scale as f64) as f32;
            }
        }
    }
}

pub fn cases() -> Vec<Case> {
    // (batch, m, n, k, b_transposed, padding added to every row stride, k_len from run slot 0,
    // n_len from run slot 1: columns past it must stay untouched)
    type Shape = (
        (usize, usize),
        usize,
        usize,
        usize,
        bool,
        usize,
        Option<usize>,
        Option<usize>,
    );
    let shapes: &[Shape] = &[
        ((2, 3), 9, 13, 37, true, 0, None, None),
        ((2, 3), 9, 13, 37, false, 3, None, None),
        ((1, 4), 70, 67, 32, true, 4, None, None),
        ((1, 4), 70, 64, 32, false, 0, None, None),
        ((3, 1), 1, 40, 200, false, 0, Some(131), None),
        ((1, 2), 17, 8, 12, false, 0, Some(5), None),
        ((2, 3), 4, 40, 37, true, 0, None, Some(29)),
        ((1, 2), 5, 133, 16, true, 1, None, Some(70)),
    ];
    let mut v = Vec::new();
    for &(batch, m, n, k, nt, pad, slot, n_slot) in shapes {
        let z = batch.0 * batch.1;
        let (b_rows, b_cols) = if nt { (n, k) } else { (k, n) };
        // Each operand: z matrices stacked with padded rows, inner batch packed first.
        let geo = |rows: usize, cols: usize| {
            let rs = cols + pad;
            (pad, batch.1 * rows * rs, rows * rs, rs)
        };
        let (ga, gb, gc) = (geo(m, k), geo(b_rows, b_cols), geo(m, n));
        // Flat storage as rows of 8 so the chunked run can split it.
        let len = |g: Geo| (g.0 + batch.0 * g.1).next_multiple_of(8);
        let (na, nb, nc) = (len(ga), len(gb), len(gc));
        v.push(Case {
            op: if nt { "bmm_nt" } else { "bmm_nn" },
            shape: format!(
                "z{batch:?} {m}x{n}x{k} pad{pad}{}{}",
                slot.map_or(String::new(), |s| format!(" klen{s}")),
                n_slot.map_or(String::new(), |s| format!(" nlen{s}"))
            ),
            dtype: DType::F32,
            largest_bytes: 4 * na.max(nb).max(nc) as u64,
            row_bytes: 32,
            run: Box::new(move |gpu, rng: &mut Rng| {
                let (a, a_s) = upload(gpu, &[na / 8, 8], DType::F32, &rng.vec(na, 1.0));
                let (b, b_s) = upload(gpu, &[nb / 8, 8], DType::F32, &rng.vec(nb, 1.0));
                let c = poisoned(gpu, &[nc / 8, 8]);
                let p = Bmm {
                    batch,
                    m,
                    n,
                    k,
                    b_transposed: nt,
                    scale: 0.7,
                    k_len: slot.map_or(RunValue::Fixed(k as u32), |_| RunValue::Slot(0)),
                    n_len: n_slot.map_or(RunValue::Fixed(n as u32), |_| RunValue::Slot(1)),
                };
                let mut g = Graph::new(gpu);
                let (ai, bi, ci) = (g.external(&a), g.external(&b), g.external(&c));
                let mv = |id, g: Geo| MatView {
                    id,
                    offset: g.0,
                    stride_outer: g.1,
                    stride_inner: g.2,
                    row_stride: g.3,
                };
                bmm::bmm(&mut g, mv(ai, ga), mv(bi, gb), mv(ci, gc), &p).unwrap();
                g.build()
                    .unwrap()
                    .run(gpu, &[slot.unwrap_or(0) as u32, n_slot.unwrap_or(0) as u32])
                    .unwrap();
                let got = c.read_f32(gpu).unwrap();
                let mut want = vec![0f32; nc];
                bmm_ref(&a_s, ga, &b_s, gb, &mut want, gc, &p, slot.unwrap_or(k));
                // Padding between rows is never written, nor are columns past n_len (checked
                // here: they keep their poison): compare only the products.
                let mut keep = vec![false; nc];
                let n_len = n_slot.unwrap_or(n);
                for zz in 0..z {
                    for i in 0..m {
                        for j in 0..n {
                            let at = at(gc, batch.1, zz, i, j);
                            keep[at] = j < n_len;
                            assert!(j < n_len || got[at].is_nan(), "column {j} ≥ n_len written");
                        }
                    }
                }
                let pick = |x: &[f32]| {
                    x.iter()
                        .zip(&keep)
                        .filter(|(_, &k)| k)
                        .map(|(v, _)| *v)
                        .collect()
                };
                (pick(&got), pick(&want))
            }),
        });
    }
    v
}
