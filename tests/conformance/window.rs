//! Table rows for `shaders/window.wgsl` (window partition, merge with and without residual,
//! a round trip), with the CPU references.

use super::common::{poisoned, upload, Rng};
use super::{Case, Run};
use fvl_wgpu::gpu::{DType, Graph};
use fvl_wgpu::ops::window::{self, window_count};

/// An image batch: `b` items of `h × w` tokens of `c` channels, cut into `ws × ws` windows.
#[derive(Clone, Copy)]
struct Geom {
    b: usize,
    h: usize,
    w: usize,
    c: usize,
    ws: usize,
}

impl Geom {
    fn tokens(&self) -> usize {
        self.b * self.h * self.w * self.c
    }
    fn windows(&self) -> usize {
        self.b * window_count(self.h, self.w, self.ws) * self.ws * self.ws * self.c
    }
    /// Token tensor shape: 2-D for a single image, so both forms are covered.
    fn token_shape(&self) -> Vec<usize> {
        if self.b == 1 {
            vec![self.h * self.w, self.c]
        } else {
            vec![self.b, self.h * self.w, self.c]
        }
    }
    fn window_shape(&self) -> Vec<usize> {
        let nwin = self.b * window_count(self.h, self.w, self.ws);
        vec![nwin, self.ws * self.ws, self.c]
    }
    fn name(&self) -> String {
        format!(
            "B{} {}x{} C{} ws{}",
            self.b, self.h, self.w, self.c, self.ws
        )
    }
    /// For every padded pixel: (index of its window row, index of its token row if inside).
    fn pixels(&self) -> Vec<(usize, Option<usize>)> {
        let ws = self.ws;
        let (nwy, nwx) = (self.h.div_ceil(ws), self.w.div_ceil(ws));
        let mut v = Vec::new();
        for b in 0..self.b {
            for y in 0..nwy * ws {
                for x in 0..nwx * ws {
                    let win = (b * nwy + y / ws) * nwx + x / ws;
                    let wrow = win * ws * ws + (y % ws) * ws + x % ws;
                    let inside = y < self.h && x < self.w;
                    v.push((wrow, inside.then(|| (b * self.h + y) * self.w + x)));
                }
            }
        }
        v
    }
}

/// Reference partition: windows from tokens, zeros in the padding.
fn partition_ref(x: &[f32], gm: &Geom) -> Vec<f32> {
    let c = gm.c;
    let mut out = vec![0.0; gm.windows()];
    for (wrow, trow) in gm.pixels() {
        if let Some(t) = trow {
            out[wrow * c..(wrow + 1) * c].copy_from_slice(&x[t * c..(t + 1) * c]);
        }
    }
    out
}

/// Reference merge: tokens from windows plus `residual`.
fn merge_ref(win: &[f32], gm: &Geom, residual: &[f32]) -> Vec<f32> {
    let c = gm.c;
    let mut out = residual.to_vec();
    for (wrow, trow) in gm.pixels() {
        if let Some(t) = trow {
            for k in 0..c {
                out[t * c + k] += win[wrow * c + k];
            }
        }
    }
    out
}

/// How a merge case treats the residual.
#[derive(Clone, Copy, Debug)]
enum Residual {
    None,
    Tensor,
    InPlace,
}

fn case(op: &'static str, gm: Geom, detail: &str, run: Run) -> Case {
    Case {
        op,
        shape: format!("{}{detail}", gm.name()),
        dtype: DType::F32,
        largest_bytes: 4 * gm.tokens().max(gm.windows()) as u64,
        row_bytes: 4 * gm.c as u64,
        run,
    }
}

fn partition_case(gm: Geom) -> Case {
    case(
        "window_partition",
        gm,
        "",
        Box::new(move |gpu, rng: &mut Rng| {
            let (x, xs) = upload(
                gpu,
                &gm.token_shape(),
                DType::F32,
                &rng.vec(gm.tokens(), 1.0),
            );
            let out = poisoned(gpu, &gm.window_shape());
            let mut g = Graph::new(gpu);
            let (xi, oi) = (g.external(&x), g.external(&out));
            window::partition(&mut g, xi, (gm.h, gm.w), gm.ws, oi).unwrap();
            g.build().unwrap().run(gpu, &[]).unwrap();
            (out.read_f32(gpu).unwrap(), partition_ref(&xs, &gm))
        }),
    )
}

fn merge_case(gm: Geom, res: Residual) -> Case {
    case(
        "window_merge",
        gm,
        &format!(" {res:?}"),
        Box::new(move |gpu, rng: &mut Rng| {
            let (x, xs) = upload(
                gpu,
                &gm.window_shape(),
                DType::F32,
                &rng.vec(gm.windows(), 1.0),
            );
            let (r, rs) = upload(
                gpu,
                &gm.token_shape(),
                DType::F32,
                &rng.vec(gm.tokens(), 1.0),
            );
            let out = poisoned(gpu, &gm.token_shape());
            let mut g = Graph::new(gpu);
            let xi = g.external(&x);
            let (oi, residual, base) = match res {
                Residual::None => (g.external(&out), None, vec![0.0; gm.tokens()]),
                Residual::Tensor => {
                    let ri = g.external(&r);
                    (g.external(&out), Some(ri), rs)
                }
                Residual::InPlace => {
                    let ri = g.external(&r);
                    (ri, Some(ri), rs)
                }
            };
            window::merge(&mut g, xi, (gm.h, gm.w), gm.ws, residual, oi).unwrap();
            g.build().unwrap().run(gpu, &[]).unwrap();
            let got = match res {
                Residual::InPlace => &r,
                _ => &out,
            };
            (got.read_f32(gpu).unwrap(), merge_ref(&xs, &gm, &base))
        }),
    )
}

/// partition then merge through a graph intermediate gives the tokens back.
fn round_trip_case(gm: Geom) -> Case {
    case(
        "window_roundtrip",
        gm,
        "",
        Box::new(move |gpu, rng: &mut Rng| {
            let (x, xs) = upload(
                gpu,
                &gm.token_shape(),
                DType::F32,
                &rng.vec(gm.tokens(), 1.0),
            );
            let out = poisoned(gpu, &gm.token_shape());
            let mut g = Graph::new(gpu);
            let (xi, oi) = (g.external(&x), g.external(&out));
            let win = g.tensor(&gm.window_shape(), DType::F32).unwrap();
            window::partition(&mut g, xi, (gm.h, gm.w), gm.ws, win).unwrap();
            window::merge(&mut g, win, (gm.h, gm.w), gm.ws, None, oi).unwrap();
            g.build().unwrap().run(gpu, &[]).unwrap();
            (out.read_f32(gpu).unwrap(), xs)
        }),
    )
}

pub fn cases() -> Vec<Case> {
    let geoms = [
        // Padding on both sides, C not a multiple of 4 (scalar path).
        Geom {
            b: 1,
            h: 5,
            w: 7,
            c: 6,
            ws: 3,
        },
        // 16 = 5·3 + 1: a one-pixel strip of padding at the bottom and right.
        Geom {
            b: 1,
            h: 16,
            w: 16,
            c: 8,
            ws: 3,
        },
        // Image smaller than one window.
        Geom {
            b: 1,
            h: 3,
            w: 3,
            c: 5,
            ws: 4,
        },
        // Batch of two, no padding.
        Geom {
            b: 2,
            h: 20,
            w: 20,
            c: 12,
            ws: 4,
        },
        // Batch of two with padding, wide rows (several channel strides per thread).
        Geom {
            b: 2,
            h: 7,
            w: 10,
            c: 264,
            ws: 4,
        },
    ];
    let mut v: Vec<Case> = geoms.iter().map(|&gm| partition_case(gm)).collect();
    let residuals = [
        Residual::None,
        Residual::Tensor,
        Residual::InPlace,
        Residual::Tensor,
        Residual::InPlace,
    ];
    v.extend(
        geoms
            .iter()
            .zip(residuals)
            .map(|(&gm, r)| merge_case(gm, r)),
    );
    v.push(round_trip_case(Geom {
        b: 2,
        h: 13,
        w: 11,
        c: 16,
        ws: 4,
    }));
    v
}
