//! Text: tokenizers (HF `tokenizer.json`) and chat templates. CPU only, no GPU use.

pub mod bart;
pub mod chat;
pub mod llama;
