#![warn(missing_docs)]
//! fvl-wgpu: Florence-2 and Florence-VL inference on wgpu with hand-written WGSL kernels.
//!
//! Layers, each only using the ones above it in this list:
//! * [`gpu`]: device, chunked tensors, shader assembly, the graph executor. Knows nothing of models.
//! * [`ops`]: one module per kernel family, the Rust side of each WGSL file in `shaders/`.
//! * [`weights`]: checkpoints on disk (safetensors, shards, `config.json`) and per-model name maps.
//! * [`image`]: image decoding and Florence-2 preprocessing (CPU only, no GPU use).
//! * [`text`]: tokenizers and chat templates, CPU only: Llama 3 / Phi-3 (`text::llama`,
//!   `text::chat`), Florence-2's BART tokenizer with its task prompts (`text::bart`).
//! * [`model`]: the forward passes (DaViT and the image head, BART, Llama and Phi-3, Florence-VL's
//!   fusion), reading like the spec, and the one decoding driver (`model::generate`).
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
pub mod text;
pub mod weights;

pub use error::{Error, Result, Setting};
