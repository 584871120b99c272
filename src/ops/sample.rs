//! Token selection on the GPU (`shaders/sample.wgsl`): greedy argmax, or temperature /
//! top-k / top-p sampling driven by a seed and step from run slots, writing the chosen id
//! into a u32 token buffer so a decode loop never reads logits back.

use bytemuck::{Pod, Zeroable};

use super::{expect_dtype, expect_f32, reads_then_write, shader, RunValue};
use crate::error::{Error, Result};
use crate::gpu::graph::RUN_SLOTS;
use crate::gpu::{DType, Graph, Kernel, TensorId};

/// Threads of the single workgroup.
const WG: u32 = 256;

/// The id [`argmax`] and [`sample`] write when a logit they scan is NaN or ±Inf: a model whose
/// numbers overflowed would otherwise answer with garbage ids (turn it into an error with
/// [`checked_id`]).
pub const NON_FINITE: u32 = u32::MAX;

/// `id` as read back from a choice at generation step `step` (1 = the first generated token),
/// or the error that [`NON_FINITE`] stands for.
pub fn checked_id(id: u32, step: usize) -> Result<u32> {
    if id == NON_FINITE {
        return Err(Error::non_finite(step));
    }
    Ok(id)
}

/// Sampling settings; the seed and step are read from run slots at each replay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Divides the logits; > 0 (use [`argmax`] for greedy decoding).
    pub temperature: f32,
    /// Keep the `top_k` highest logits (ties at the k-th value kept too); 0 keeps all.
    pub top_k: u32,
    /// Keep the smallest set of highest logits holding `top_p` of the probability; 1 keeps all.
    pub top_p: f32,
    /// Run slot of the u32 seed.
    pub seed_slot: u32,
    /// Run slot of the u32 step (the draw index): same seed and step, same token.
    pub step_slot: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    base: u32,
    top_k: u32,
    top_p: f32,
    inv_temp: f32,
    seed_slot: u32,
    step_slot: u32,
    at_slot: u32,
    at_fixed: u32,
    ids_len: u32,
}

/// Which logits a choice looks at: row `row`, its first `candidates` columns (`None`: all;
/// the rest, e.g. a vocabulary's padding rows, are never chosen).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// Row of the logits.
    pub row: usize,
    /// Leading columns that may be chosen.
    pub candidates: Option<usize>,
}

impl Row {
    /// Every column of row `row`.
    pub fn all(row: usize) -> Row {
        Row {
            row,
            candidates: None,
        }
    }
}

/// Writes the index of the largest logit of `row` of `logits` (f32 `[.., V]`; ties → the
/// lowest index) into `ids[at]` (u32 tensor), or [`NON_FINITE`] when one of the scanned
/// logits is NaN or ±Inf. An `at` run value past the end writes nothing.
pub fn argmax(g: &mut Graph, logits: TensorId, row: Row, ids: TensorId, at: RunValue) -> Result<()> {
    launch(g, "argmax", logits, row, ids, at, None)
}

/// Draws a token from `row` of `logits` as [`Sampling`] says and writes it into `ids[at]`
/// ([`NON_FINITE`] when a scanned logit is NaN or ±Inf).
pub fn sample(
    g: &mut Graph,
    logits: TensorId,
    row: Row,
    ids: TensorId,
    at: RunValue,
    s: &Sampling,
) -> Result<()> {
    launch(g, "sample", logits, row, ids, at, Some(s))
}

fn launch(
    g: &mut Graph,
    op: &'static str,
    logits: TensorId,
    Row { row, candidates }: Row,
    ids: TensorId,
    at: RunValue,
    s: Option<&Sampling>,
) -> Result<()> {
    expect_f32(g, op, "logits", logits)?;
    expect_dtype(g, op, "ids", ids, &[DType::U32])?;
    let layout = g.layout(logits);
    let (width, rows) = (layout.cols(), layout.rows());
    let n = candidates.unwrap_or(width);
    if row >= rows || n == 0 || n > width || u32::try_from(layout.numel()).is_err() {
        return Err(Error::shape(format!(
            "{op}: row {row} of logits {:?}, {n} candidates (at most 2³² elements)",
            layout.shape
        )));
    }
    let ids_len = g.layout(ids).numel();
    if let RunValue::Fixed(i) = at {
        if i as usize >= ids_len {
            return Err(Error::shape(format!(
                "{op}: index {i} is past the {ids_len} ids"
            )));
        }
    }
    let (at_slot, at_fixed) = at.encode(op, "at")?;
    let mut p = Params {
        n: n as u32,
        base: (row * width) as u32,
        top_k: 0,
        top_p: 1.0,
        inv_temp: 1.0,
        seed_slot: 0,
        step_slot: 0,
        at_slot,
        at_fixed,
        ids_len: ids_len as u32,
    };
    if let Some(s) = s {
        let slots_ok = [s.seed_slot, s.step_slot]
            .iter()
            .all(|&x| (x as usize) < RUN_SLOTS);
        if !(s.temperature > 0.0 && s.top_p > 0.0 && s.top_p <= 1.0 && slots_ok) {
            return Err(Error::shape(format!(
                "{op}: needs temperature > 0, 0 < top_p ≤ 1 and run slots < {RUN_SLOTS}, got {s:?}"
            )));
        }
        p.top_k = s.top_k;
        p.top_p = s.top_p;
        p.inv_temp = 1.0 / s.temperature;
        p.seed_slot = s.seed_slot;
        p.step_slot = s.step_slot;
    }
    let tensors = reads_then_write(&[("logits", logits)], ("ids", ids));
    let kernel = Kernel::new(shader!("sample", run), op, &p, tensors, [1, 1, 1]);
    g.dispatch(kernel.consts(&[("WG", WG)]))
}
