//! Kernel launchers: one module per kernel family, each the Rust side of `shaders/NAME.wgsl`.
//!
//! Every op records dispatches into a [`Graph`](crate::gpu::Graph); it checks shapes and
//! dtypes first and names the op and tensor in its error. Activations are f32; weights may
//! be f32, f16, q8 or q4 wherever an op takes a weight.
//!
//! Owns: one kernel family per module with its shape and dtype checks and its conformance row.
//! Must not touch: models, weights on disk, decoding policy (`model::generate`).

use crate::error::{Error, Result};
use crate::gpu::graph::RUN_SLOTS;
use crate::gpu::{grid, Access, DType, Graph, Kernel, TensorId};

pub mod attention;
pub mod bmm;
pub mod channel_attn;
pub mod conv;
pub mod copy;
pub mod eltwise;
pub mod embed;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod rope;
pub mod sample;
pub mod softmax;
pub mod window;

/// `include_str!` of a kernel family's WGSL, with its name. Shared snippets named after it
/// are appended after the kernel (so the kernel's own line numbers stay as they are in
/// naga's errors): `run` is `shaders/run.wgsl` (the [`RunValue`] reader), `row_ids`
/// `shaders/row_ids.wgsl` (the builtins of a kernel with one workgroup per row or one
/// invocation per element, and those indices), `vec_io` `shaders/vec_io.wgsl` (x and out
/// read and written one or four values at a time).
macro_rules! shader {
    ($name:literal $(, $snippet:ident)*) => {
        (
            $name,
            concat!(
                include_str!(concat!("../../shaders/", $name, ".wgsl")),
                $(include_str!(concat!("../../shaders/", stringify!($snippet), ".wgsl")),)*
            ),
        )
    };
}
pub(crate) use shader;

/// The dtypes a weight may have.
pub(crate) const FLOATS: &[DType] = &[DType::F32, DType::F16, DType::Q8, DType::Q4];

/// Workgroup size of the one-thread-per-element kernels.
pub(crate) const WG: u32 = 256;

/// A 3-D workgroup count, or an error naming `op` when a dimension exceeds the 65535 limit.
pub(crate) fn workgroups3(op: &str, dims: [usize; 3]) -> Result<[u32; 3]> {
    if dims.iter().any(|&d| d > 65535) {
        return Err(Error::shape(format!(
            "{op}: {dims:?} workgroups exceed the 65535 per-dimension limit"
        )));
    }
    Ok(dims.map(|d| d.max(1) as u32))
}

/// The tensors of a launch: accessor name, tensor, access.
pub(crate) type Args = Vec<(&'static str, TensorId, Access)>;

/// The tensors of a launch that reads `inputs` and writes `out`, each named by its accessor.
pub(crate) fn reads_then_write(
    inputs: &[(&'static str, TensorId)],
    (name, out): (&'static str, TensorId),
) -> Args {
    let mut args: Args = inputs.iter().map(|&(n, t)| (n, t, Access::Read)).collect();
    args.push((name, out, Access::Write));
    args
}

/// Dispatches `entry` of `shader` with one invocation per element: `threads` of them in
/// workgroups of `wg`, the shader's `WG` (kernels index with `row_ids.wgsl`'s
/// `thread_index`).
pub(crate) fn per_element<P: bytemuck::Pod>(
    g: &mut Graph,
    shader: (&'static str, &'static str),
    (entry, p): (&'static str, &P),
    tensors: Args,
    (threads, wg): (u32, u32),
) -> Result<()> {
    let kernel = Kernel::new(shader, entry, p, tensors, grid(threads.div_ceil(wg)));
    g.dispatch(kernel.consts(&[("WG", wg)]))
}

/// Threads a workgroup gives to the `units` vec4 (or scalar) columns of one row: the next
/// power of two, at least one SIMD width (8) and at most 64, so narrow rows idle few lanes.
pub(crate) fn row_threads(units: usize) -> u32 {
    units.next_power_of_two().clamp(8, 64) as u32
}

/// Checks that `id` has exactly `shape`.
pub(crate) fn expect_shape(
    g: &Graph,
    op: &str,
    what: &str,
    id: TensorId,
    shape: &[usize],
) -> Result<()> {
    if g.shape(id) != shape {
        return Err(Error::shape(format!(
            "{op}: {what} has shape {:?}, expected {shape:?}",
            g.shape(id)
        )));
    }
    Ok(())
}

/// Checks that `id` is an f32 tensor (activations and outputs).
pub(crate) fn expect_f32(g: &Graph, op: &str, what: &str, id: TensorId) -> Result<()> {
    expect_dtype(g, op, what, id, &[DType::F32])
}

/// Checks that `id` has one of `dtypes`.
pub(crate) fn expect_dtype(
    g: &Graph,
    op: &str,
    what: &str,
    id: TensorId,
    dtypes: &[DType],
) -> Result<()> {
    let d = g.layout(id).dtype;
    if !dtypes.contains(&d) {
        let names: Vec<_> = dtypes.iter().map(|d| d.name()).collect();
        return Err(Error::shape(format!(
            "{op}: {what} is {}, expected {}",
            d.name(),
            names.join(" or ")
        )));
    }
    Ok(())
}

/// Number of elements of a graph tensor as u32 (kernels index with u32).
pub(crate) fn numel(g: &Graph, op: &str, id: TensorId) -> Result<u32> {
    let n = g.layout(id).numel();
    u32::try_from(n).map_err(|_| {
        too_large(op, format!("a tensor of {n} elements is past 32-bit indexing"))
    })
}

/// A size past what one kernel indexes (32 bits) or one dispatch covers. The sizes come from
/// the user's input (context, prompt, image, beams), so the message says what to change; the
/// step is named last, for a bug report.
pub(crate) fn too_large(op: &str, what: impl std::fmt::Display) -> Error {
    Error::input(format!(
        "too large for the GPU kernels: {what}; use a shorter context or prompt, a smaller image or fewer beams (step: {op})"
    ))
}

/// A u32 kernel argument that is either fixed when the graph is built or read from a run slot
/// (`Executable::run(gpu, &values)`) at each replay, e.g. a decode position or a key length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunValue {
    /// A value fixed when the graph is built.
    Fixed(u32),
    /// Read from this run slot at each replay.
    Slot(u32),
}

impl RunValue {
    /// `(slot, fixed)` as the kernels' `run_value(slot, fixed)` reads them (`NO_SLOT` = fixed).
    pub(crate) fn encode(self, op: &str, what: &str) -> Result<(u32, u32)> {
        match self {
            RunValue::Fixed(v) => Ok((u32::MAX, v)),
            RunValue::Slot(s) if (s as usize) < RUN_SLOTS => Ok((s, 0)),
            RunValue::Slot(s) => Err(Error::shape(format!(
                "{op}: {what} reads run slot {s}, there are {RUN_SLOTS}"
            ))),
        }
    }
}

/// A strided view of a tensor as rows: element `(r, c)` is at flat index
/// `r·row_stride + col_offset + c`. Lets an op read or rotate one part (q, k or v) of a fused
/// `[T, 3C]` projection directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// Tensor viewed.
    pub id: TensorId,
    /// Column where the view starts within each row.
    pub col_offset: usize,
    /// Flat-index step between rows.
    pub row_stride: usize,
}

impl View {
    /// The tensor's own rows (offset 0, stride = its last dimension).
    pub fn rows(g: &Graph, id: TensorId) -> View {
        View {
            id,
            col_offset: 0,
            row_stride: g.layout(id).cols(),
        }
    }

    /// A view of columns `col_offset..` of every `row_stride` elements.
    pub fn strided(id: TensorId, col_offset: usize, row_stride: usize) -> View {
        View {
            id,
            col_offset,
            row_stride,
        }
    }

    /// Checks that `rows` rows of `width` columns lie inside the tensor.
    pub(crate) fn check(
        &self,
        g: &Graph,
        op: &str,
        what: &str,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        let n = g.layout(self.id).numel();
        let last = (rows.max(1) - 1) * self.row_stride + self.col_offset + width;
        let overlaps = rows > 1 && self.col_offset + width > self.row_stride;
        if rows == 0 || width == 0 || overlaps || last > n {
            return Err(Error::shape(format!(
                "{op}: {what} view (offset {}, stride {}) of {rows} rows × {width} columns does not fit its {:?} tensor",
                self.col_offset,
                self.row_stride,
                g.shape(self.id)
            )));
        }
        u32::try_from(n).map_err(|_| {
            Error::shape(format!(
                "{op}: {what} has {n} elements, beyond u32 indexing"
            ))
        })?;
        Ok(())
    }
}
