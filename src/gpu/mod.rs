//! GPU layer: device, tensors, shader assembly and the graph executor. Knows nothing of models.
//!
//! Owns: every use of the graphics API (wgpu) — adapters, buffers, pipelines and their cache,
//! the arena planner, submits, readbacks. Must not touch: kernels' maths (`ops`), models,
//! files on disk beyond the pipeline cache.

pub mod arena;
pub mod codegen;
pub mod device;
pub mod format;
pub mod graph;
mod pipelines;
pub mod readback;
pub mod tensor;

pub use codegen::Access;
pub use device::{list_adapters, portable_limits, AdapterSummary, Gpu, GpuOptions};
pub use format::DType;
pub use graph::{grid, Executable, Graph, Kernel, TensorId};
pub use readback::{Submission, TokenReadback};
pub use tensor::{Layout, Tensor};
