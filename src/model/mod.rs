//! The models' forward passes, written to be read beside the paper and the spec. Layers hold
//! GPU tensors and record into a [`Graph`](crate::gpu::Graph); no graphics-API types appear here
//! (tests/layering.rs checks it).
//!
//! Owns: each model's weights on the GPU and its forward pass (`davit`, `florence2` the
//! vision tower, `bart`, `llama` for Llama and Phi-3, `florence_vl` the fusion and projector),
//! the shared layers (`layers`) and the one decoding driver (`generate`, with `beam` its
//! host-side beam bookkeeping). Must not touch: files and names on disk (`weights` resolves
//! them), tokenizers and templates (`text`), buffers, queues or submissions (`gpu`), whole
//! task pipelines (`pipeline`).
//!
//! One loading convention for every model: `Model::load(gpu, &Source, cfg, dtype)` reads
//! canonical tensor names from any weight source (a checkpoint, random weights for the
//! benches); `Model::from_checkpoint(gpu, &checkpoint, dtype, …)` opens a checkpoint as
//! `weights` resolved it; `FlorenceVl::from_folder` takes a whole LLaVA folder.

pub mod bart;
pub mod beam;
pub mod davit;
pub mod florence2;
pub mod florence_vl;
pub mod generate;
pub mod layers;
pub mod llama;
