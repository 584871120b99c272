//! The tokenizer of the Llama-family decoders (`tokenizer.json`: Llama 3's byte-level BPE or
//! Phi-3's SentencePiece-style BPE), its chat template (`text::chat`) and the stop ids of
//! `generation_config.json`, plus incremental detokenization for streaming.

use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

pub use super::chat::Message;
use super::chat::Template;

/// HF's Llama 3 chat template: the messages' contents trimmed (as the Jinja template does),
/// then [`Template::Llama3`].
pub fn chat_text(messages: &[Message]) -> String {
    let trimmed: Vec<Message> = messages
        .iter()
        .map(|m| Message::new(&m.role, m.content.trim()))
        .collect();
    Template::Llama3.prompt(&trimmed)
}

/// A Llama-family tokenizer with the model's stop ids and chat template.
pub struct LlamaTokenizer {
    tok: tokenizers::Tokenizer,
    /// Ids that end a generation (`eos_token_id`, an int or a list).
    pub stop_ids: Vec<u32>,
    /// The conversation format its special tokens belong to.
    pub template: Template,
}

impl LlamaTokenizer {
    /// Loads `dir/tokenizer.json`; stop ids from `generation_config.json`, else `config.json`.
    pub fn open(dir: &Path) -> Result<LlamaTokenizer> {
        let path = dir.join("tokenizer.json");
        let tok = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::File {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
        let mut stop_ids = Vec::new();
        for file in ["generation_config.json", "config.json"] {
            let Ok(text) = std::fs::read_to_string(dir.join(file)) else {
                continue;
            };
            let json: Value = serde_json::from_str(&text).map_err(|e| Error::File {
                path: dir.join(file).display().to_string(),
                msg: format!("invalid JSON: {e}"),
            })?;
            stop_ids = match &json["eos_token_id"] {
                Value::Number(n) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
                Value::Array(a) => a
                    .iter()
                    .filter_map(|v| v.as_u64())
                    .map(|v| v as u32)
                    .collect(),
                _ => continue,
            };
            break;
        }
        let template = Template::for_vocab(|t| tok.token_to_id(t).is_some());
        Ok(LlamaTokenizer {
            tok,
            stop_ids,
            template,
        })
    }

    /// Token ids of `text`; special tokens written in the text are recognised. With
    /// `add_bos` the post-processor prepends `<|begin_of_text|>` (as HF's `encode` does).
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .tok
            .encode(text, add_bos)
            .map_err(|e| Error::input(format!("tokenizing the prompt: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Prompt ids of a chat: the template's text without another BOS (as HF's
    /// `apply_chat_template(tokenize=True)`; tokenizing the text with `add_bos` would double it).
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let text = match self.template {
            Template::Llama3 => chat_text(messages),
            Template::Phi3 => self.template.prompt(messages),
        };
        self.encode(&text, false)
    }

    /// Number of tokens (pieces and added tokens): ids at or past it are the model's padding
    /// rows.
    pub fn len(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    /// Whether the tokenizer has no token at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id the post-processor puts before a text (`<|begin_of_text|>`, `<s>`), if any.
    pub fn bos_id(&self) -> Result<Option<u32>> {
        let (with, without) = (self.encode("", true)?, self.encode("", false)?);
        Ok(with.first().copied().filter(|_| without.is_empty()))
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tok
            .decode(ids, false)
            .map_err(|e| Error::input(format!("detokenizing: {e}")))
    }

    /// Whether `id` ends a generation.
    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }
}

/// Turns generated ids into text pieces as they arrive. Byte-level BPE may split a UTF-8
/// character over tokens, so a piece is released only once it no longer ends in an incomplete
/// character (the decoder shows those as U+FFFD).
#[derive(Default)]
pub struct TextStream {
    ids: Vec<u32>,
    emitted: usize,
}

impl TextStream {
    /// Adds `id`; returns the new text, if any is complete.
    pub fn push(&mut self, tok: &LlamaTokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = tok.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let Some(piece) = text.get(self.emitted..).filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let piece = piece.to_string();
        self.emitted = text.len();
        Ok(Some(piece))
    }

    /// All the ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}
