//! A conversation with a Llama-family model over one KV cache, shared by the Florence-VL chat
//! (which opens with the image) and the text chat ([`TextChat`]): a follow-up prefills only
//! its own tokens, and when the context is full the oldest turns are dropped and the rest is
//! re-read, as llama.cpp's and ollama's chats do. The policy lives here so that the CLI, the
//! server and library callers all get it; they only print what [`Reply`] says.

use std::time::Instant;

use crate::gpu::Gpu;
use crate::model::generate::{Limits, Prompt, Session};
use crate::model::llama::Llama;
use crate::text::chat::{turns_to_drop, Message};
use crate::text::llama::{LlamaTokenizer, TextStream};
use crate::Result;

use super::florence_vl::{AskOptions, Reply};

/// What a conversation keeps at its start and re-reads from position 0 with the turns it
/// kept: the system message, and for Florence-VL the image.
pub(crate) trait Opening {
    /// What sets the context's length, for the message when a question can't fit.
    fn context_source(&self) -> String;

    /// Refuses a question the opening can't take (e.g. one that writes `<image>`).
    fn check_question(&self, _question: &str) -> Result<()> {
        Ok(())
    }

    /// Positions of the opening, `turns` and `question` as one prompt.
    fn positions(&self, turns: &[(String, String)], question: &str) -> Result<usize>;

    /// Builds that prompt and hands it to `run` with the time building it took (ms).
    fn with_prompt(
        &self,
        turns: &[(String, String)],
        question: &str,
        run: &mut dyn FnMut(Prompt, f64) -> Result<Reply>,
    ) -> Result<Reply>;
}

/// The turns a KV cache holds and the decoding of each answer.
pub(crate) struct Dialogue<'m> {
    tok: &'m LlamaTokenizer,
    session: Session<'m, Llama>,
    /// `(question, answer)` of every turn the cache holds, oldest first.
    pub(crate) turns: Vec<(String, String)>,
    /// The last chosen id, not yet in the cache.
    pending: u32,
}

impl<'m> Dialogue<'m> {
    /// A conversation with nothing in `session`'s cache yet.
    pub(crate) fn new(tok: &'m LlamaTokenizer, session: Session<'m, Llama>) -> Dialogue<'m> {
        Dialogue {
            tok,
            session,
            turns: Vec::new(),
            pending: 0,
        }
    }

    /// Positions the cache holds so far.
    pub(crate) fn position(&self) -> usize {
        self.session.position()
    }

    /// Answers `question`: the first one with the opening; a follow-up after the template's
    /// turn end closing the last answer (`<|eot_id|>`, Phi-3 `<|end|>\n`; a stop token that
    /// ended it stands for its part), only those tokens prefilled (spec §7.3).
    ///
    /// When the question and room for its answer (`max_new_tokens`, at most half the
    /// context) no longer fit, the oldest turns are dropped ([`turns_to_drop`]), keeping the
    /// opening, and the rest is re-read; [`Reply::dropped_turns`] says how many. A question
    /// that can't fit even alone is an error and leaves the conversation as it was, as does
    /// any other input error.
    pub(crate) fn ask(
        &mut self,
        question: &str,
        opts: &AskOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
        opening: &dyn Opening,
    ) -> Result<Reply> {
        opening.check_question(question)?;
        let context = self.session.max_context();
        let answer_room = opts.max_new_tokens.min(context / 2).max(1) + 1;
        let reply = match self.follow_up_ids(question)? {
            Some(ids) if self.position() + ids.len() + answer_room <= context => {
                let positions = ids.len();
                self.turn(Prompt::Ids(&ids), positions, 0.0, opts, on_text)?
            }
            _ => self.reread(question, context, opts, on_text, opening)?,
        };
        self.turns.push((question.to_string(), reply.text.clone()));
        Ok(reply)
    }

    /// The ids a follow-up `question` prefills after the cache's contents; `None` when the
    /// cache is empty (the first question comes with the opening).
    fn follow_up_ids(&self, question: &str) -> Result<Option<Vec<u32>>> {
        if self.position() == 0 {
            return Ok(None);
        }
        let tok = self.tok;
        let end = tok.template.turn_end();
        let close = if tok.is_stop(self.pending) {
            let stop = tok.decode(&[self.pending])?;
            end.strip_prefix(stop.as_str()).unwrap_or("")
        } else {
            end
        };
        let text =
            close.to_string() + &tok.template.continuation(&[Message::new("user", question)]);
        let mut ids = vec![self.pending];
        ids.extend(tok.encode(&text, false)?);
        Ok(Some(ids))
    }

    /// Prefills the whole conversation from position 0: the opening, the turns kept after
    /// dropping the oldest ones that don't fit, and `question`.
    fn reread(
        &mut self,
        question: &str,
        context: usize,
        opts: &AskOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
        opening: &dyn Opening,
    ) -> Result<Reply> {
        let turns = &self.turns;
        let drop = turns_to_drop(turns.len(), context, &opening.context_source(), |k| {
            opening.positions(&turns[k..], question)
        })?;
        let kept = turns[drop..].to_vec();
        let mut reply = opening.with_prompt(&kept, question, &mut |prompt, prep_ms| {
            let positions = match prompt {
                Prompt::Ids(ids) => ids.len(),
                Prompt::Embeddings(e) => e.shape()[0],
            };
            self.session.restart();
            self.turn(prompt, positions, prep_ms, opts, on_text)
        })?;
        self.turns = kept;
        reply.dropped_turns = drop;
        Ok(reply)
    }

    /// Prefills `prompt` after the cache's contents and streams the answer.
    fn turn(
        &mut self,
        prompt: Prompt,
        prompt_positions: usize,
        vision_ms: f64,
        opts: &AskOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Reply> {
        let tok = self.tok;
        let t = Instant::now();
        let id = self.session.extend(prompt, false)?;
        let prefill_ms = t.elapsed().as_secs_f64() * 1e3;
        let mut stream = TextStream::default();
        let mut text = String::new();
        let limits = Limits {
            max_new: opts.max_new_tokens,
            // Keep one position free for the token that closes this turn.
            reserve: 1,
            keep_stop: false,
        };
        let gen = self
            .session
            .generate(id, &limits, &|id| tok.is_stop(id), &mut |id| {
                Ok(match stream.push(tok, id)? {
                    Some(piece) => {
                        text += &piece;
                        on_text(&piece)
                    }
                    None => true,
                })
            })?;
        self.pending = gen.last;
        Ok(Reply {
            text,
            token_ids: gen.ids,
            stopped: gen.stopped,
            prompt_positions,
            vision_ms,
            prefill_ms,
            decode_tokens_per_s: gen.decode_tokens_per_s,
            dropped_turns: 0,
        })
    }
}

/// A text conversation with a Llama 3 or Phi-3 checkpoint: the system message, then turns
/// of the model's chat template; the KV cache keeps every turn, and a full context drops the
/// oldest ones (keeping the system message), as [`Chat`](super::Chat) does.
pub struct TextChat<'m> {
    opening: TextOpening<'m>,
    dialogue: Dialogue<'m>,
}

/// A text chat's opening: the system message, if any.
struct TextOpening<'m> {
    tok: &'m LlamaTokenizer,
    system: Option<String>,
}

impl Opening for TextOpening<'_> {
    fn context_source(&self) -> String {
        "the chat's context".into()
    }

    fn positions(&self, turns: &[(String, String)], question: &str) -> Result<usize> {
        Ok(self.tok.encode_chat(&self.messages(turns, question))?.len())
    }

    fn with_prompt(
        &self,
        turns: &[(String, String)],
        question: &str,
        run: &mut dyn FnMut(Prompt, f64) -> Result<Reply>,
    ) -> Result<Reply> {
        let t = Instant::now();
        let ids = self.tok.encode_chat(&self.messages(turns, question))?;
        run(Prompt::Ids(&ids), t.elapsed().as_secs_f64() * 1e3)
    }
}

impl TextOpening<'_> {
    /// The system message, the turns and the question as chat messages.
    fn messages(&self, turns: &[(String, String)], question: &str) -> Vec<Message> {
        let system = self.system.iter().map(|s| Message::new("system", s));
        let history = turns
            .iter()
            .flat_map(|(q, a)| [Message::new("user", q), Message::new("assistant", a)]);
        system
            .chain(history)
            .chain([Message::new("user", question)])
            .collect()
    }
}

impl<'m> TextChat<'m> {
    /// A chat with `llama` on `gpu` over a cache of `context` positions, starting with the
    /// `system` message (`None`: the template's default, Phi-3's "You are a helpful AI
    /// assistant."; Llama 3 has none); `pick` and `seed` set the sampler for the whole chat.
    pub fn new(
        gpu: &'m Gpu,
        llama: &'m Llama,
        tok: &'m LlamaTokenizer,
        system: Option<&str>,
        context: usize,
        opts: &AskOptions,
    ) -> Result<TextChat<'m>> {
        let session = Session::new(gpu, llama, context, opts.pick, opts.seed)?;
        let system = system.or(tok.template.default_system()).map(str::to_string);
        Ok(TextChat {
            opening: TextOpening { tok, system },
            dialogue: Dialogue::new(tok, session),
        })
    }

    /// Answers `question`, streaming its text to `on_text` (returning `false` cancels); see
    /// [`Chat::ask`](super::Chat::ask) for what a full context does.
    pub fn ask(
        &mut self,
        question: &str,
        opts: &AskOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Reply> {
        self.dialogue.ask(question, opts, on_text, &self.opening)
    }

    /// Positions the conversation holds so far.
    pub fn position(&self) -> usize {
        self.dialogue.position()
    }
}
