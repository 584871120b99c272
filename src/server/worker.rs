//! The GPU side of the server: one thread owns the model and runs queued jobs in FIFO order
//! through the pipeline layer. It keeps the last image's vision rows and the last
//! conversation's KV cache, reused when a request continues them exactly.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use serde_json::Value;

use crate::image::Preprocessed;
use crate::model::generate::Stop;
use crate::pipeline::{Answer, AskOptions, Chat, Florence2, FlorenceVl, Seen, Task, TaskOptions};

use super::api::ApiError;

/// The model a server holds.
pub enum Loaded {
    /// A Florence-2 model: tasks.
    Florence2(Florence2),
    /// A Florence-VL model: questions and conversations.
    FlorenceVl(FlorenceVl),
}

/// What a job asks of the model.
pub enum Work {
    /// A Florence-VL conversation: earlier `(question, answer)` turns, then `question`.
    Ask {
        /// The encoded image as sent (the key of the vision-row cache).
        image_bytes: Vec<u8>,
        /// The image, preprocessed by the request's thread.
        image: Preprocessed,
        /// Earlier turns.
        turns: Vec<(String, String)>,
        /// The question to answer.
        question: String,
        /// Decoding settings.
        opts: AskOptions,
        /// Stop sequences.
        stop: Vec<String>,
    },
    /// A Florence-2 task.
    Task {
        /// The image, preprocessed by the request's thread.
        image: Preprocessed,
        /// The task.
        task: Task,
        /// Decoding settings.
        opts: TaskOptions,
    },
}

/// A queued request: the work, where its events go, and its cancel flag (set when the
/// client has gone).
pub struct Job {
    /// The work.
    pub work: Work,
    /// Text pieces, then one [`Event::Done`].
    pub events: Sender<Event>,
    /// Set by the request's thread when its client disconnected.
    pub cancel: Arc<AtomicBool>,
}

/// What a job reports.
pub enum Event {
    /// A piece of the answer (after stop-sequence filtering).
    Text(String),
    /// The end: the whole answer, or an error.
    Done(Result<Outcome, ApiError>),
}

/// A finished job.
pub struct Outcome {
    /// The answer text (for a Florence-2 task with a structured answer, its JSON).
    pub text: String,
    /// Prompt positions (text tokens plus image rows).
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// OpenAI's finish_reason: `stop` or `length`.
    pub finish_reason: &'static str,
    /// For a Florence-2 task: `{task, token_ids, text, result}` as `florence2 --json` prints.
    pub florence2: Option<Value>,
}

/// Releases text that cannot be the start of a stop sequence and cuts the answer at the first
/// stop sequence.
struct StopFilter<'a> {
    stops: &'a [String],
    text: String,
    emitted: usize,
    hit: bool,
}

impl StopFilter<'_> {
    /// Adds a piece; returns what may be shown now.
    fn push(&mut self, piece: &str) -> String {
        self.text += piece;
        if let Some(cut) = self
            .stops
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
        {
            self.text.truncate(cut);
            self.hit = true;
            return self.flush();
        }
        // Hold back a tail that is the start of some stop sequence.
        let hold = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(move |&k| s.is_char_boundary(k))
                    .map(move |k| &s[..k])
            })
            .filter(|p| self.text.ends_with(*p))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let end = (self.text.len() - hold).max(self.emitted);
        let out = self.text[self.emitted..end].to_string();
        self.emitted = end;
        out
    }

    /// Everything not yet shown.
    fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }
}

/// A conversation kept on the GPU between requests.
struct Kept<'m> {
    image_bytes: Vec<u8>,
    turns: Vec<(String, String)>,
    pick_seed: (crate::model::generate::Pick, u32),
    chat: Chat<'m>,
}

/// Runs jobs until every sender is gone; `pending` counts queued and running jobs.
pub fn run(model: &Loaded, jobs: Receiver<Job>, pending: &AtomicUsize) {
    let mut seen: Option<(Vec<u8>, Seen)> = None;
    let mut kept: Option<Kept> = None;
    for job in jobs {
        if job.cancel.load(Ordering::Relaxed) {
            pending.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let result = match (model, job.work) {
            (Loaded::FlorenceVl(vl), work @ Work::Ask { .. }) => {
                ask(vl, work, &job.events, &job.cancel, &mut seen, &mut kept)
            }
            (Loaded::Florence2(f2), Work::Task { image, task, opts }) => {
                run_task(f2, &image, &task, &opts, &job.events, &job.cancel)
            }
            _ => Err(ApiError::status(
                400,
                "this model does not take that request",
            )),
        };
        // The GPU is free before the client hears of it, so its next request finds room.
        pending.fetch_sub(1, Ordering::SeqCst);
        // The receiver may have gone (client disconnected): nothing to tell.
        job.events.send(Event::Done(result)).ok();
    }
}

fn internal(e: crate::Error) -> ApiError {
    match e {
        e @ (crate::Error::Input(_) | crate::Error::Setting { .. }) => {
            ApiError::status(400, e.to_string())
        }
        other => ApiError::status(500, other.to_string()),
    }
}

fn finish(stopped: Stop, hit: bool) -> &'static str {
    match stopped {
        Stop::Length | Stop::Context if !hit => "length",
        _ => "stop",
    }
}

fn ask<'m>(
    vl: &'m FlorenceVl,
    work: Work,
    events: &Sender<Event>,
    cancel: &AtomicBool,
    seen: &mut Option<(Vec<u8>, Seen)>,
    kept: &mut Option<Kept<'m>>,
) -> Result<Outcome, ApiError> {
    let Work::Ask {
        image_bytes,
        image,
        turns,
        question,
        opts,
        stop,
    } = work
    else {
        unreachable!("ask takes Work::Ask");
    };
    let mut filter = StopFilter {
        stops: &stop,
        text: String::new(),
        emitted: 0,
        hit: false,
    };
    let mut on_text = |piece: &str| {
        let show = filter.push(piece);
        let sent = show.is_empty() || events.send(Event::Text(show)).is_ok();
        sent && !filter.hit && !cancel.load(Ordering::Relaxed)
    };
    // The KV cache continues exactly when the image and every earlier turn are the ones it
    // holds and the sampler settings are the same.
    let pick_seed = (opts.pick, opts.seed);
    let reusable = kept.as_ref().is_some_and(|k| {
        k.image_bytes == image_bytes && k.turns == turns && k.pick_seed == pick_seed
    });
    let (reply, before) = if reusable {
        let k = kept.as_mut().expect("checked above");
        let before = k.chat.position();
        let reply = k
            .chat
            .ask(&question, &opts, &mut on_text)
            .map_err(internal)?;
        (reply, before)
    } else {
        *kept = None;
        if seen.as_ref().is_none_or(|(b, _)| *b != image_bytes) {
            *seen = None;
            *seen = Some((image_bytes.clone(), vl.see(&image).map_err(internal)?));
        }
        let rows = &seen.as_ref().expect("set above").1;
        let (chat, reply) = vl
            .chat_seen(rows, &turns, &question, &opts, &mut on_text)
            .map_err(internal)?;
        *kept = Some(Kept {
            image_bytes,
            turns: turns.clone(),
            pick_seed,
            chat,
        });
        (reply, 0)
    };
    if reply.stopped == Stop::Cancelled && !filter.hit {
        eprintln!(
            "serve: the client went away; its answer stopped after {} tokens",
            reply.token_ids.len()
        );
    }
    let rest = filter.flush();
    if !rest.is_empty() {
        events.send(Event::Text(rest)).ok();
    }
    // Keep the conversation only if the client will send back exactly what the cache holds:
    // the whole answer, which re-tokenizes to the same ids.
    let k = kept.as_mut().expect("set above");
    // After dropped turns the cache no longer holds the conversation the client sends.
    let exact = !filter.hit
        && reply.dropped_turns == 0
        && reply.stopped != Stop::Cancelled
        && k.chat
            .tokenizer()
            .encode(&reply.text, false)
            .ok()
            .as_deref()
            == Some(&reply.token_ids[..]);
    if exact {
        k.turns.push((question, reply.text.clone()));
    } else {
        *kept = None;
    }
    Ok(Outcome {
        prompt_tokens: match reply.dropped_turns {
            0 => before + reply.prompt_positions,
            _ => reply.prompt_positions,
        },
        completion_tokens: reply.token_ids.len(),
        finish_reason: finish(reply.stopped, filter.hit),
        text: filter.text,
        florence2: None,
    })
}

fn run_task(
    f2: &Florence2,
    image: &Preprocessed,
    task: &Task,
    opts: &TaskOptions,
    events: &Sender<Event>,
    cancel: &AtomicBool,
) -> Result<Outcome, ApiError> {
    let plan = f2.plan(task, opts).map_err(internal)?;
    let out = f2
        .run_plan(image, &plan, &mut |_| !cancel.load(Ordering::Relaxed))
        .map_err(internal)?;
    // The raw text holds location tokens; the answer is known only after post-processing,
    // so it goes out as one piece.
    let text = match &out.answer {
        Answer::Text(t) => t.clone(),
        other => other.to_json().to_string(),
    };
    events.send(Event::Text(text.clone())).ok();
    let generated = out.token_ids.len().saturating_sub(1);
    let eos = out.text.ends_with("</s>");
    Ok(Outcome {
        text,
        prompt_tokens: plan.prompt_len() + out.image_tokens,
        completion_tokens: generated,
        finish_reason: if eos { "stop" } else { "length" },
        florence2: Some(serde_json::json!({
            "task": out.task,
            "token_ids": out.token_ids,
            "text": out.text,
            "result": out.result,
        })),
    })
}
