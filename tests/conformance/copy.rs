//! Table rows for `shaders/copy.wgsl` (block copy, concat, run-slot row offset), with the CPU
//! reference.

use super::common::{poisoned, upload, Rng};
use super::{Case, Run};
use fvl_wgpu::gpu::{DType, Graph};
use fvl_wgpu::ops::copy::{self, Block};

/// Reference block copy into `dst` (`[..][dst_cols]`) from `src` (`[..][src_cols]`), with
/// the destination rows shifted by `shift`; rows past the end of `dst` are dropped.
fn copy_ref(
    dst: &mut [f32],
    dst_cols: usize,
    src: &[f32],
    src_cols: usize,
    b: &Block,
    shift: usize,
) {
    let dst_rows = dst.len() / dst_cols;
    for r in 0..b.rows {
        let dr = b.dst_row + shift + r;
        if dr >= dst_rows {
            continue;
        }
        for c in 0..b.cols {
            dst[dr * dst_cols + b.dst_col + c] = src[(b.src_row + r) * src_cols + b.src_col + c];
        }
    }
}

fn case(op: &'static str, shape: String, largest: usize, row: usize, run: Run) -> Case {
    Case {
        op,
        shape,
        dtype: DType::F32,
        largest_bytes: 4 * largest as u64,
        row_bytes: 4 * row as u64,
        run,
    }
}

/// A copy of a block of `src_shape` into a random `dst_shape`, once per run value in `runs`
/// (one built graph), or once without a run slot when `runs` is empty.
fn block_case(
    op: &'static str,
    src_shape: [usize; 2],
    dst_shape: [usize; 2],
    b: Block,
    runs: &'static [u32],
) -> Case {
    let (ns, nd) = (src_shape[0] * src_shape[1], dst_shape[0] * dst_shape[1]);
    case(
        op,
        format!("{src_shape:?}->{dst_shape:?} runs={runs:?}"),
        ns.max(nd),
        src_shape[1].max(dst_shape[1]),
        Box::new(move |gpu, rng: &mut Rng| {
            let (src, ss) = upload(gpu, &src_shape, DType::F32, &rng.vec(ns, 1.0));
            let (dst, mut want) = upload(gpu, &dst_shape, DType::F32, &rng.vec(nd, 1.0));
            let mut g = Graph::new(gpu);
            let (si, di) = (g.external(&src), g.external(&dst));
            copy::copy(&mut g, si, di, &b).unwrap();
            let exe = g.build().unwrap();
            if runs.is_empty() {
                exe.run(gpu, &[]).unwrap();
                copy_ref(&mut want, dst_shape[1], &ss, src_shape[1], &b, 0);
            }
            for &shift in runs {
                exe.run(gpu, &[shift]).unwrap();
                copy_ref(
                    &mut want,
                    dst_shape[1],
                    &ss,
                    src_shape[1],
                    &b,
                    shift as usize,
                );
            }
            (dst.read_f32(gpu).unwrap(), want)
        }),
    )
}

pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    // Florence-VL style channel concat of four feature sets of different widths.
    let widths = [13usize, 32, 7, 20];
    let rows = 9;
    let total: usize = widths.iter().sum();
    v.push(case(
        "concat_cols",
        format!("{rows} rows × {widths:?}"),
        rows * total,
        total,
        Box::new(move |gpu, rng: &mut Rng| {
            let inputs: Vec<_> = widths
                .iter()
                .map(|&w| upload(gpu, &[rows, w], DType::F32, &rng.vec(rows * w, 1.0)))
                .collect();
            let out = poisoned(gpu, &[rows, total]);
            let mut g = Graph::new(gpu);
            let ids: Vec<_> = inputs.iter().map(|(t, _)| g.external(t)).collect();
            let oi = g.external(&out);
            copy::concat_cols(&mut g, &ids, oi).unwrap();
            g.build().unwrap().run(gpu, &[]).unwrap();
            let want = (0..rows)
                .flat_map(|r| {
                    inputs
                        .iter()
                        .zip(widths)
                        .flat_map(move |((_, d), w)| d[r * w..(r + 1) * w].to_vec())
                })
                .collect();
            (out.read_f32(gpu).unwrap(), want)
        }),
    ));
    // Image rows spliced into a prompt's embedding sequence.
    v.push(block_case(
        "copy_rows",
        [7, 40],
        [15, 40],
        Block {
            src_row: 2,
            ..Block::whole(4, 40, 9, 0)
        },
        &[],
    ));
    // An interior block to an interior position (row and column offsets on both sides).
    v.push(block_case(
        "copy_block",
        [11, 30],
        [10, 33],
        Block {
            src_row: 3,
            src_col: 5,
            ..Block::whole(6, 17, 2, 11)
        },
        &[],
    ));
    // KV-cache append: one graph replayed at positions 3, 5 and 10 (the last one's second
    // row falls off the end of the cache and must be dropped).
    v.push(block_case(
        "copy_run_slot",
        [2, 16],
        [12, 16],
        Block {
            dst_row_slot: Some(0),
            ..Block::whole(2, 16, 1, 0)
        },
        &[3, 5, 10],
    ));
    v
}
