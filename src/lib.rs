#![warn(missing_docs)]
//! fvl-wgpu: Florence-2 and Florence-VL inference on wgpu with hand-written WGSL kernels.
//!
//! Layers, each only using the ones above it in this list:
//! * [`gpu`]: device, chunked tensors, shader assembly, the graph executor. Knows nothing of models.
//! * [`ops`]: one module per kernel family, the Rust side of each WGSL file in `shaders/`.
//! * [`weights`]: checkpoints on disk (safetensors, shards, `config.json`) and per-model name maps.
//! * [`image`]: image decoding and Florence-2 preprocessing (CPU only, no GPU use).
//! * [`text`]: the Llama-3 tokenizer and chat template; [`tasks`]: Florence-2 task prompts and
//!   the BART tokenizer (CPU only).
//! * [`model`]: the forward passes (DaViT, Florence-2, Llama), reading like the spec.
//! * [`output`]: every file written goes through a temporary file and a rename, never over an input.
//! * [`postprocess`]: Florence-2 answers (text, boxes, quads, polygons) from generated text (CPU only).
//! * [`pipeline`]: whole pipelines for applications — [`pipeline::Florence2`] tasks and
//!   [`pipeline::FlorenceVl`] questions, from image paths, bytes or decoded pixels.
//! * [`server`]: the OpenAI-compatible HTTP server over the pipelines (`fvl-wgpu serve`).

pub mod error;
pub mod gpu;
pub mod image;
pub mod model;
pub mod ops;
pub mod output;
pub mod pipeline;
pub mod postprocess;
pub mod server;
pub mod tasks;
pub mod text;
pub mod weights;

pub use error::{Error, Result};
