//! Kernel launchers: one module per kernel family, each the Rust side of `shaders/NAME.wgsl`.
//!
//! Every op records dispatches into a [`Graph`](crate::gpu::Graph); it checks shapes and
//! dtypes first and names the op and tensor in its error. Activations are f32; weights may
//! be f32, f16, q8 or q4 wherever an op takes a weight.

use crate::error::{Error, Result};
use crate::gpu::{DType, Graph, TensorId};

pub mod conv;
pub mod copy;
pub mod eltwise;
pub mod embed;

/// `include_str!` of a kernel family's WGSL, with its name.
macro_rules! shader {
    ($name:literal) => {
        (
            $name,
            include_str!(concat!("../../shaders/", $name, ".wgsl")),
        )
    };
}
pub(crate) use shader;

/// The dtypes a weight may have.
pub(crate) const FLOATS: &[DType] = &[DType::F32, DType::F16, DType::Q8, DType::Q4];

/// Workgroup size of the one-thread-per-element kernels.
pub(crate) const WG: u32 = 256;

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
    u32::try_from(n)
        .map_err(|_| Error::shape(format!("{op}: tensor of {n} elements exceeds u32 indexing")))
}
