//! Table rows for `shaders/eltwise.wgsl`.

use super::common::{poisoned, reference as r, upload, Rng};
use super::Case;
use fvl_wgpu::gpu::{DType, Graph};
use fvl_wgpu::ops::eltwise::{self, Binary, Unary};

const SHAPES: &[&[usize]] = &[&[7], &[33, 129], &[3, 61, 17]];

/// A unary op under test: row name, op, CPU reference.
type UnaryRow = (&'static str, Unary, fn(f32) -> f32);
/// A binary op under test: row name, op, CPU reference.
type BinaryRow = (&'static str, Binary, fn(f32, f32) -> f32);

pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    let unaries: [UnaryRow; 3] = [
        ("gelu", Unary::Gelu, r::gelu),
        ("silu", Unary::Silu, r::silu),
        (
            "scale",
            Unary::Scale {
                alpha: -1.75,
                beta: 0.5,
            },
            |x| -1.75 * x + 0.5,
        ),
    ];
    for (name, f, reference) in unaries {
        for &shape in SHAPES {
            for dtype in [DType::F32, DType::F16] {
                let shape = shape.to_vec();
                let n: usize = shape.iter().product();
                v.push(Case {
                    op: name,
                    shape: format!("{shape:?}"),
                    dtype,
                    largest_bytes: 4 * n as u64,
                    row_bytes: 4 * *shape.last().unwrap() as u64,
                    run: Box::new(move |gpu, rng: &mut Rng| {
                        let (x, xs) = upload(gpu, &shape, dtype, &rng.vec(n, 4.0));
                        let out = poisoned(gpu, &shape);
                        let mut g = Graph::new(gpu);
                        let (xi, oi) = (g.external(&x), g.external(&out));
                        eltwise::unary(&mut g, f, xi, oi).unwrap();
                        g.build().unwrap().run(gpu, &[]).unwrap();
                        (
                            out.read_f32(gpu).unwrap(),
                            xs.iter().map(|&a| reference(a)).collect(),
                        )
                    }),
                });
            }
        }
    }
    // In place: x is both input and output.
    for &shape in SHAPES {
        let shape = shape.to_vec();
        let n: usize = shape.iter().product();
        v.push(Case {
            op: "gelu_inplace",
            shape: format!("{shape:?}"),
            dtype: DType::F32,
            largest_bytes: 4 * n as u64,
            row_bytes: 4 * *shape.last().unwrap() as u64,
            run: Box::new(move |gpu, rng: &mut Rng| {
                let (x, xs) = upload(gpu, &shape, DType::F32, &rng.vec(n, 4.0));
                let mut g = Graph::new(gpu);
                let xi = g.external(&x);
                eltwise::unary(&mut g, Unary::Gelu, xi, xi).unwrap();
                g.build().unwrap().run(gpu, &[]).unwrap();
                (
                    x.read_f32(gpu).unwrap(),
                    xs.iter().map(|&a| r::gelu(a)).collect(),
                )
            }),
        });
    }
    let binaries: [BinaryRow; 2] = [
        ("add", Binary::Add, |a, b| a + b),
        ("mul", Binary::Mul, |a, b| a * b),
    ];
    for (name, f, reference) in binaries {
        for &shape in SHAPES {
            for broadcast in [false, true] {
                for dtype in [DType::F32, DType::F16] {
                    let shape = shape.to_vec();
                    let n: usize = shape.iter().product();
                    let cols = *shape.last().unwrap();
                    let b_shape = if broadcast { vec![cols] } else { shape.clone() };
                    v.push(Case {
                        op: name,
                        shape: format!("{shape:?} b={b_shape:?}"),
                        dtype,
                        largest_bytes: 4 * n as u64,
                        row_bytes: 4 * *shape.last().unwrap() as u64,
                        run: Box::new(move |gpu, rng: &mut Rng| {
                            let (a, a_s) = upload(gpu, &shape, DType::F32, &rng.vec(n, 2.0));
                            let nb: usize = b_shape.iter().product();
                            let (b, b_s) = upload(gpu, &b_shape, dtype, &rng.vec(nb, 2.0));
                            let out = poisoned(gpu, &shape);
                            let mut g = Graph::new(gpu);
                            let (ai, bi, oi) = (g.external(&a), g.external(&b), g.external(&out));
                            eltwise::binary(&mut g, f, ai, bi, oi).unwrap();
                            g.build().unwrap().run(gpu, &[]).unwrap();
                            let want = (0..n).map(|i| reference(a_s[i], b_s[i % nb])).collect();
                            (out.read_f32(gpu).unwrap(), want)
                        }),
                    });
                }
            }
        }
    }
    for &shape in SHAPES {
        let shape = shape.to_vec();
        let n: usize = shape.iter().product();
        let half = *shape.last().unwrap();
        let out_shape = shape.clone();
        let mut wide = shape.clone();
        *wide.last_mut().unwrap() *= 2;
        v.push(Case {
            op: "swiglu",
            shape: format!("{shape:?}"),
            dtype: DType::F32,
            largest_bytes: 4 * n as u64,
            row_bytes: 4 * *shape.last().unwrap() as u64,
            run: Box::new(move |gpu, rng: &mut Rng| {
                let (gate, gs) = upload(gpu, &shape, DType::F32, &rng.vec(n, 4.0));
                let (up, us) = upload(gpu, &shape, DType::F32, &rng.vec(n, 2.0));
                let out = poisoned(gpu, &shape);
                let mut g = Graph::new(gpu);
                let (gi, ui, oi) = (g.external(&gate), g.external(&up), g.external(&out));
                eltwise::swiglu(&mut g, gi, ui, oi).unwrap();
                g.build().unwrap().run(gpu, &[]).unwrap();
                (
                    out.read_f32(gpu).unwrap(),
                    (0..n).map(|i| r::silu(gs[i]) * us[i]).collect(),
                )
            }),
        });
        // The same on one fused [gate | up] tensor, rows twice as wide.
        v.push(Case {
            op: "swiglu_halves",
            shape: format!("{wide:?}"),
            dtype: DType::F32,
            largest_bytes: 8 * n as u64,
            row_bytes: 8 * half as u64,
            run: Box::new(move |gpu, rng: &mut Rng| {
                let (gu, xs) = upload(gpu, &wide, DType::F32, &rng.vec(2 * n, 4.0));
                let out = poisoned(gpu, &out_shape);
                let mut g = Graph::new(gpu);
                let (gi, oi) = (g.external(&gu), g.external(&out));
                eltwise::swiglu_halves(&mut g, gi, oi).unwrap();
                g.build().unwrap().run(gpu, &[]).unwrap();
                let want = (0..n)
                    .map(|i| {
                        let (r, c) = (i / half, i % half);
                        r::silu(xs[r * 2 * half + c]) * xs[r * 2 * half + half + c]
                    })
                    .collect();
                (out.read_f32(gpu).unwrap(), want)
            }),
        });
    }
    v
}
