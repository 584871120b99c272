//! Strided 2-D block copies of f32 tensors (`shaders/copy.wgsl`): channel concat, splicing
//! rows into a sequence, and appending keys/values to a cache at a per-run position.
//!
//! Tensors are viewed as `[rows, cols]`: the last dimension is the columns, all the others
//! together the rows.

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, numel, per_element, shader, WG};
use crate::error::{Error, Result};
use crate::gpu::graph::RUN_SLOTS;
use crate::gpu::{Access, Graph, TensorId};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    src_row: u32,
    src_col: u32,
    src_stride: u32,
    dst_row: u32,
    dst_col: u32,
    dst_stride: u32,
    dst_rows: u32,
    row_slot: u32,
}

/// `NO_SLOT` in the shader.
const NO_SLOT: u32 = u32::MAX;

/// Which block to copy where.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Block {
    /// First source row.
    pub src_row: usize,
    /// First source column.
    pub src_col: usize,
    /// Rows in the block.
    pub rows: usize,
    /// Columns in the block.
    pub cols: usize,
    /// Destination row of the block's first element.
    pub dst_row: usize,
    /// Destination column of the block's first element.
    pub dst_col: usize,
    /// A run slot whose value (set per replay, e.g. the decode position) is added to
    /// `dst_row`. Rows that would then land past the end of `dst` are not written.
    pub dst_row_slot: Option<usize>,
}

impl Block {
    /// All of a `rows × cols` source, to `(dst_row, dst_col)`.
    pub fn whole(rows: usize, cols: usize, dst_row: usize, dst_col: usize) -> Block {
        Block {
            rows,
            cols,
            dst_row,
            dst_col,
            ..Default::default()
        }
    }
}

fn rows_cols(g: &Graph, id: TensorId) -> (usize, usize) {
    let l = g.layout(id);
    (l.rows(), l.cols())
}

/// Copies `b` from `src` into `dst`; the rest of `dst` is left as it was. Both f32, distinct.
pub fn copy(g: &mut Graph, src: TensorId, dst: TensorId, b: &Block) -> Result<()> {
    let op = "copy";
    expect_f32(g, op, "src", src)?;
    expect_f32(g, op, "dst", dst)?;
    if src == dst {
        return Err(Error::shape(format!("{op}: src and dst must differ")));
    }
    let (sr, sc) = rows_cols(g, src);
    let (dr, dc) = rows_cols(g, dst);
    let fits = |start: usize, len: usize, end: usize| start + len <= end;
    if !fits(b.src_row, b.rows, sr) || !fits(b.src_col, b.cols, sc) {
        return Err(Error::shape(format!(
            "{op}: block rows {}..{} × cols {}..{} is outside src ({sr} × {sc})",
            b.src_row,
            b.src_row + b.rows,
            b.src_col,
            b.src_col + b.cols
        )));
    }
    if !fits(b.dst_row, b.rows, dr) || !fits(b.dst_col, b.cols, dc) {
        return Err(Error::shape(format!(
            "{op}: a {}×{} block at ({}, {}) is outside dst ({dr} × {dc})",
            b.rows, b.cols, b.dst_row, b.dst_col
        )));
    }
    if b.dst_row_slot.is_some_and(|s| s >= RUN_SLOTS) {
        return Err(Error::shape(format!(
            "{op}: run slot {:?} is not below {RUN_SLOTS}",
            b.dst_row_slot
        )));
    }
    numel(g, op, src)?;
    numel(g, op, dst)?;
    if b.rows * b.cols == 0 {
        return Ok(());
    }
    let p = Params {
        rows: b.rows as u32,
        cols: b.cols as u32,
        src_row: b.src_row as u32,
        src_col: b.src_col as u32,
        src_stride: sc as u32,
        dst_row: b.dst_row as u32,
        dst_col: b.dst_col as u32,
        dst_stride: dc as u32,
        dst_rows: dr as u32,
        row_slot: b.dst_row_slot.map_or(NO_SLOT, |s| s as u32),
    };
    let tensors = vec![("src", src, Access::Read), ("dst", dst, Access::Write)];
    let threads = (b.rows * b.cols) as u32;
    per_element(
        g,
        shader!("copy", row_ids),
        ("copy", &p),
        tensors,
        (threads, WG),
    )
}

/// Concatenates `inputs` (same rows, any widths) along the last dimension into `out`:
/// one copy per input.
pub fn concat_cols(g: &mut Graph, inputs: &[TensorId], out: TensorId) -> Result<()> {
    let op = "concat_cols";
    let (rows, cols) = rows_cols(g, out);
    let mut at = 0;
    for (k, &x) in inputs.iter().enumerate() {
        let (r, c) = rows_cols(g, x);
        if r != rows {
            return Err(Error::shape(format!(
                "{op}: input {k} has shape {:?}, {r} rows where out has {rows}",
                g.shape(x)
            )));
        }
        at += c;
    }
    if at != cols {
        return Err(Error::shape(format!(
            "{op}: inputs have {at} columns in all, out has {cols}"
        )));
    }
    let mut col = 0;
    for &x in inputs {
        let c = g.layout(x).cols();
        copy(g, x, out, &Block::whole(rows, c, 0, col))?;
        col += c;
    }
    Ok(())
}
