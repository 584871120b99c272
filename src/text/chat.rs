//! Chat templates, each spelled once: Llama 3's and Phi-3's. A template turns messages into
//! the prompt text the model continues, and says how an answer's turn is closed before a
//! follow-up (the stop token that ended it is not in the KV cache).

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Text of the message.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A model family's conversation format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    /// `<|begin_of_text|>` then `<|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>`
    /// per message (Llama 3.x, Florence-VL 8B's `llama3`).
    Llama3,
    /// `<|ROLE|>\nCONTENT<|end|>\n` per message, no BOS in the text (Phi-3.5-mini-instruct,
    /// Florence-VL 3B's `phi3`).
    Phi3,
}

/// The system message Phi-3 chats start with unless told otherwise (Florence-VL 3B's too).
pub const PHI3_SYSTEM: &str = "You are a helpful AI assistant.";

/// Llama 3's BOS as the template writes it.
const LLAMA3_BOS: &str = "<|begin_of_text|>";

impl Template {
    /// The template a tokenizer's special tokens belong to: Phi-3's when it has `<|user|>`
    /// and `<|end|>`, else Llama 3's.
    pub fn for_vocab(has_token: impl Fn(&str) -> bool) -> Template {
        if has_token("<|user|>") && has_token("<|end|>") {
            Template::Phi3
        } else {
            Template::Llama3
        }
    }

    /// The system message a chat starts with when the user gives none (Phi-3's; Llama 3's
    /// template has none).
    pub fn default_system(self) -> Option<&'static str> {
        match self {
            Template::Llama3 => None,
            Template::Phi3 => Some(PHI3_SYSTEM),
        }
    }

    /// The prompt for `messages` followed by the assistant's header: what the model continues.
    /// Contents are written as given (HF's Llama 3 Jinja template trims them; callers that
    /// follow it trim first). A Phi-3 system message with empty content is left out, as its
    /// template does.
    pub fn prompt(self, messages: &[Message]) -> String {
        let start = match self {
            Template::Llama3 => LLAMA3_BOS,
            Template::Phi3 => "",
        };
        start.to_string() + &self.continuation(messages)
    }

    /// [`Template::prompt`] without what opens a conversation (Llama 3's BOS): the text of
    /// a follow-up turn.
    pub fn continuation(self, messages: &[Message]) -> String {
        let mut s = String::new();
        for m in messages {
            s += &self.turn(&m.role, &m.content);
        }
        s + &self.header("assistant")
    }

    /// Closes an assistant turn whose stop token was not fed back (`<|eot_id|>`; Phi-3:
    /// `<|end|>` and its newline).
    pub fn turn_end(self) -> &'static str {
        match self {
            Template::Llama3 => "<|eot_id|>",
            Template::Phi3 => "<|end|>\n",
        }
    }

    fn header(self, role: &str) -> String {
        match self {
            Template::Llama3 => format!("<|start_header_id|>{role}<|end_header_id|>\n\n"),
            Template::Phi3 => format!("<|{role}|>\n"),
        }
    }

    fn turn(self, role: &str, content: &str) -> String {
        if self == Template::Phi3 && role == "system" && content.is_empty() {
            return String::new();
        }
        self.header(role) + content + self.turn_end()
    }
}

/// How many of a conversation's oldest turns to drop when the next question no longer fits
/// the context, as llama.cpp's and ollama's chats do (they keep the start, drop the oldest
/// history and re-read the rest): the fewest that bring the re-read prompt (what a turn
/// always keeps, such as the system message and the image, the remaining turns and the
/// question) down to half the context, so the next questions fit again without another
/// re-read; all of them when even that is not enough. `positions(k)` is that prompt's
/// length with the oldest `k` of `turns` dropped. An error, naming both lengths and
/// `context_source` (what sets the context), when the prompt without any earlier turn leaves
/// no room for an answer.
pub fn turns_to_drop(
    turns: usize,
    context: usize,
    context_source: &str,
    positions: impl Fn(usize) -> crate::Result<usize>,
) -> crate::Result<usize> {
    for k in 0..turns {
        if positions(k)? <= context / 2 {
            return Ok(k);
        }
    }
    let alone = positions(turns)?;
    // One position for the answer's first token, one for the token that closes the turn.
    if alone + 2 > context {
        return Err(crate::Error::input(format!(
            "this question makes a prompt of {alone} positions; the context holds {context} ({context_source}), and an answer needs 2 more: shorten the question"
        )));
    }
    Ok(turns)
}
