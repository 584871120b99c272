//! The models' forward passes, written to be read beside the paper and the spec. Layers hold
//! GPU tensors and record into a [`Graph`](crate::gpu::Graph); no graphics-API types appear here
//! (tests/layering.rs checks it).

pub mod bart;
pub mod beam;
pub mod davit;
pub mod florence2;
pub mod florence_vl;
pub mod generate;
pub mod layers;
pub mod llama;
