//! Text: tokenizers (HF `tokenizer.json`) and chat templates. CPU only, no GPU use.
//!
//! Owns: Llama 3 / Phi-3 tokenization and templates (`llama`, `chat`), Florence-2's BART
//! tokenizer and task prompts (`bart`), each template spelled once. Must not touch: the GPU,
//! model weights, answers' post-processing (`postprocess`).

pub mod bart;
pub mod chat;
pub mod llama;
