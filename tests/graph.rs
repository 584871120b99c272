//! The graph executor: replay is deterministic, intermediates share arena memory by lifetime,
//! a whole graph (independent branches included) is one submit, and per-run values reach
//! the kernels.

mod common;

use common::{gpu, Rng};
use fvl_wgpu::gpu::{DType, Graph, Tensor};
use fvl_wgpu::ops::eltwise::{self, Binary, Unary};
use fvl_wgpu::ops::{matmul, norm};

/// A small MLP stack: `layers` × (linear → LayerNorm → GELU), all intermediates planned.
fn mlp_graph<'g>(
    g: &mut Graph<'g>,
    x: &Tensor,
    weights: &[Tensor],
    gamma: &Tensor,
    beta: &Tensor,
) -> fvl_wgpu::gpu::TensorId {
    let rows = x.shape()[0];
    let dim = x.shape()[1];
    let mut h = g.external(x);
    let (gi, bi) = (g.external(gamma), g.external(beta));
    for w in weights {
        let wi = g.external(w);
        let a = g.tensor(&[rows, dim], DType::F32).unwrap();
        matmul::linear(g, h, wi, None, a).unwrap();
        let n = g.tensor(&[rows, dim], DType::F32).unwrap();
        norm::layernorm(g, a, gi, bi, 1e-5, n).unwrap();
        eltwise::unary(g, Unary::Gelu, n, n).unwrap();
        h = n;
    }
    h
}

#[test]
fn replay_is_bit_identical_and_arena_is_smaller_than_all_intermediates() {
    let gpu = gpu();
    let mut rng = Rng::new(7);
    let (rows, dim, layers) = (37, 96, 6);
    let x = Tensor::from_f32(
        &gpu,
        &[rows, dim],
        DType::F32,
        &rng.vec(rows * dim, 1.0),
        "x",
    )
    .unwrap();
    let weights: Vec<Tensor> = (0..layers)
        .map(|_| {
            Tensor::from_f32(&gpu, &[dim, dim], DType::F16, &rng.vec(dim * dim, 0.2), "w").unwrap()
        })
        .collect();
    let gamma = Tensor::from_f32(&gpu, &[dim], DType::F32, &rng.vec(dim, 1.0), "gamma").unwrap();
    let beta = Tensor::from_f32(&gpu, &[dim], DType::F32, &rng.vec(dim, 1.0), "beta").unwrap();

    let mut g = Graph::new(&gpu);
    let out = mlp_graph(&mut g, &x, &weights, &gamma, &beta);
    g.keep(out);
    let exe = g.build().unwrap();
    eprintln!(
        "{layers}-layer graph: {} dispatches, arena {} bytes vs {} bytes of intermediates",
        exe.dispatches(),
        exe.arena_bytes,
        exe.intermediate_bytes
    );
    assert!(
        exe.arena_bytes * 3 <= exe.intermediate_bytes,
        "lifetime planning should reuse memory"
    );

    let submits = gpu.submits();
    exe.run(&gpu, &[]).unwrap();
    assert_eq!(gpu.submits() - submits, 1, "one submit per replay");
    let first = exe.tensor(out).read_words(&gpu).unwrap();
    for _ in 0..3 {
        exe.run(&gpu, &[]).unwrap();
        assert_eq!(
            exe.tensor(out).read_words(&gpu).unwrap(),
            first,
            "replay must be bit-identical"
        );
    }
    assert!(first.iter().all(|&w| f32::from_bits(w).is_finite()));
}

#[test]
fn independent_branches_share_one_submit_and_keep_their_values() {
    let gpu = gpu();
    let mut rng = Rng::new(11);
    let n = 300;
    let a = Tensor::from_f32(&gpu, &[n], DType::F32, &rng.vec(n, 1.0), "a").unwrap();
    let b = Tensor::from_f32(&gpu, &[n], DType::F32, &rng.vec(n, 1.0), "b").unwrap();
    let av = a.read_f32(&gpu).unwrap();
    let bv = b.read_f32(&gpu).unwrap();

    // Two branches (gelu(a), silu(b)) that only meet at the end.
    let mut g = Graph::new(&gpu);
    let (ai, bi) = (g.external(&a), g.external(&b));
    let ga = g.tensor(&[n], DType::F32).unwrap();
    let sb = g.tensor(&[n], DType::F32).unwrap();
    eltwise::unary(&mut g, Unary::Gelu, ai, ga).unwrap();
    eltwise::unary(&mut g, Unary::Silu, bi, sb).unwrap();
    let sum = g.tensor(&[n], DType::F32).unwrap();
    eltwise::binary(&mut g, Binary::Add, ga, sb, sum).unwrap();
    g.keep(sum);
    let exe = g.build().unwrap();
    let submits = gpu.submits();
    exe.run(&gpu, &[]).unwrap();
    assert_eq!(gpu.submits() - submits, 1);
    let got = exe.tensor(sum).read_f32(&gpu).unwrap();
    for i in 0..n {
        let want = common::reference::gelu(av[i]) + common::reference::silu(bv[i]);
        assert!(
            (got[i] - want).abs() <= 1e-5 * want.abs().max(1.0),
            "element {i}: {} vs {want}",
            got[i]
        );
    }
}

#[test]
fn chunked_intermediates_are_planned_too() {
    let mut gpu = gpu();
    gpu.max_binding = 4096; // every [40, 96] f32 intermediate spans 4 chunks
    let mut rng = Rng::new(3);
    let (rows, dim) = (40, 96);
    let x = Tensor::from_f32(
        &gpu,
        &[rows, dim],
        DType::F32,
        &rng.vec(rows * dim, 1.0),
        "x",
    )
    .unwrap();
    let w = vec![
        Tensor::from_f32(&gpu, &[dim, dim], DType::Q8, &rng.vec(dim * dim, 0.2), "w")
            .unwrap();
        2
    ];
    let gamma = Tensor::from_f32(&gpu, &[dim], DType::F32, &rng.vec(dim, 1.0), "gamma").unwrap();
    let beta = Tensor::from_f32(&gpu, &[dim], DType::F32, &rng.vec(dim, 1.0), "beta").unwrap();
    let mut g = Graph::new(&gpu);
    let out = mlp_graph(&mut g, &x, &w, &gamma, &beta);
    g.keep(out);
    assert!(g.layout(out).num_chunks() > 1);
    let exe = g.build().unwrap();
    exe.run(&gpu, &[]).unwrap();
    let chunked = exe.tensor(out).read_f32(&gpu).unwrap();

    // Same graph on one-chunk storage must agree.
    gpu.max_binding = 1 << 26;
    let mut g = Graph::new(&gpu);
    let out = mlp_graph(&mut g, &x, &w, &gamma, &beta);
    g.keep(out);
    let exe = g.build().unwrap();
    exe.run(&gpu, &[]).unwrap();
    let whole = exe.tensor(out).read_f32(&gpu).unwrap();
    assert!(common::max_rel_error(&chunked, &whole) < 1e-6);
}
