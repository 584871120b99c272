//! The one autoregressive driver, shared by every decoder (Llama, Phi-3 and Florence-2's
//! BART; greedy, sampled and beam search).
//!
//! Owns what decoding is besides the forward pass: the run-slot vocabulary every decoder step
//! reads ([`PAST_SLOT`], [`KV_LEN_SLOT`], [`SEED_SLOT`], [`STEP_SLOT`]), the choice of the next
//! token ([`Pick`], recorded on the GPU by [`choose`]), the loop with its stops, streaming
//! callback and cancellation ([`Session::generate`]), forced ids, and the KV-cache position
//! bookkeeping. A model supplies only its step through [`Decoder`]: "given these token ids at
//! these positions, append to the KV cache and produce logits". Beam search ([`beam_search`])
//! replays the same step over a batch of beams, reading their logits back for the host-side
//! selection of `model::beam`.
//!
//! A decode step is one submit that reads back only the 4-byte chosen id; the id stays on the
//! GPU for the next step's embedding. Names no graphics API (the readback lives in `gpu`).

use std::time::Instant;

use crate::gpu::{Executable, Gpu, Graph, Submission, Tensor, TensorId, TokenReadback};
use crate::ops::sample::{self, Sampling};
use crate::ops::RunValue;
use crate::{Error, Result};

use super::beam::BeamSearch;

/// Run slot holding the number of rows already in the KV cache: the position of the step's
/// first token and the row its keys and values are written to.
pub const PAST_SLOT: u32 = 0;
/// Run slot holding the number of cache rows in use after this step (past + new tokens).
pub const KV_LEN_SLOT: u32 = 1;
/// Run slot holding the sampling seed.
pub const SEED_SLOT: u32 = 2;
/// Run slot holding the sampling step (the index of the draw).
pub const STEP_SLOT: u32 = 3;

/// The run values of a step of `t` tokens after `past` cached rows (draw `step` of `seed`).
pub fn run_values(past: usize, t: usize, seed: u32, step: u32) -> [u32; 4] {
    [past as u32, (past + t) as u32, seed, step]
}

/// A model's KV cache, as the driver sees it.
pub trait Cache {
    /// Positions the cache holds per sequence.
    fn max_context(&self) -> usize;
    /// GPU bytes of the cache.
    fn bytes(&self) -> u64;
}

/// A decoder's step, recorded into a graph: everything model-specific the driver needs.
pub trait Decoder {
    /// The model's KV cache.
    type Cache: Cache;

    /// Width of an embedded token (what a [`Prompt::Embeddings`] must have).
    fn hidden(&self) -> usize;

    /// Records the embedding of the u32 ids `ids` (`[t]`), returning `[t, hidden]`.
    fn embed(&self, g: &mut Graph, ids: TensorId) -> Result<TensorId>;

    /// Refuses ids without a row in the embedding table (the GPU would read past it); every
    /// id a caller feeds goes through here.
    fn check_ids(&self, _ids: &[u32]) -> Result<()> {
        Ok(())
    }

    /// Records the decoder over `t` embedded tokens `x` (`[t, hidden]`) at positions
    /// `run[PAST_SLOT]..`, appending their keys and values to `cache` (`run[KV_LEN_SLOT]` rows
    /// in use after it). Returns the logits: `[t, vocab]` with `all_logits`, else the last
    /// token's (one row).
    fn forward(
        &self,
        g: &mut Graph,
        x: TensorId,
        cache: &Self::Cache,
        all_logits: bool,
    ) -> Result<TensorId>;

    /// Leading logit columns a choice may pick (`None`: all). Padding rows of a vocabulary
    /// are never chosen.
    fn candidates(&self) -> Option<usize> {
        None
    }

    /// The position at which a cache of ids only is recomputed from scratch (LongRoPE
    /// switching to its long factors); `None` for most models.
    fn recompute_at(&self) -> Option<usize> {
        None
    }

    /// Records the reordering of a batched cache for beam search: every cache row `r` (of
    /// `batch · max_context`) becomes row `sources[r]` (u32). Models without beam search
    /// refuse.
    fn reorder(&self, _g: &mut Graph, _cache: &Self::Cache, _sources: TensorId) -> Result<()> {
        Err(Error::input("this model has no beam search"))
    }

    /// Host-side inputs of a step of `t` tokens after `past` cached rows, written just
    /// before it is submitted (queued writes land in that submit, in order).
    fn before_step(&self, _gpu: &Gpu, _cache: &Self::Cache, _past: usize, _t: usize) -> Result<()> {
        Ok(())
    }
}

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pick {
    /// The largest logit.
    Greedy,
    /// A draw with temperature, top-k and top-p (seed and step from run slots).
    Sample {
        /// Logits are divided by this (> 0).
        temperature: f32,
        /// Keep the `top_k` highest logits; 0 keeps all.
        top_k: u32,
        /// Keep the smallest set of highest logits holding `top_p` of the probability.
        top_p: f32,
    },
}

/// Records the choice of the next token among the first `candidates` columns (`None`: all)
/// of the last row of `logits` into `ids[0]`.
pub fn choose(
    g: &mut Graph,
    logits: TensorId,
    candidates: Option<usize>,
    ids: TensorId,
    pick: Pick,
) -> Result<()> {
    let row = sample::Row {
        row: g.layout(logits).rows() - 1,
        candidates,
    };
    match pick {
        Pick::Greedy => sample::argmax(g, logits, row, ids, RunValue::Fixed(0)),
        Pick::Sample {
            temperature,
            top_k,
            top_p,
        } => sample::sample(
            g,
            logits,
            row,
            ids,
            RunValue::Fixed(0),
            &Sampling {
                temperature,
                top_k,
                top_p,
                seed_slot: SEED_SLOT,
                step_slot: STEP_SLOT,
            },
        ),
    }
}

/// What a prompt is given as.
pub enum Prompt<'a> {
    /// Token ids.
    Ids(&'a [u32]),
    /// Input embeddings `[t, hidden]` computed by the caller (e.g. with image rows spliced in).
    Embeddings(&'a Tensor),
}

/// When [`Session::generate`] stops.
pub struct Limits {
    /// Most ids to produce (the first, chosen by the prefill, counts; 0 produces none).
    pub max_new: usize,
    /// Cache positions to leave free (e.g. for the token that closes a chat turn).
    pub reserve: usize,
    /// Whether a stop id ends up in [`Generation::ids`].
    pub keep_stop: bool,
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A stop id was chosen.
    Eos,
    /// `max_new` ids were produced.
    Length,
    /// The context is full.
    Context,
    /// The caller's callback asked to stop.
    Cancelled,
}

impl Stop {
    /// Short lowercase name (`eos`, `length`, `context`, `cancelled`), as in JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Stop::Eos => "eos",
            Stop::Length => "length",
            Stop::Context => "context",
            Stop::Cancelled => "cancelled",
        }
    }
}

/// What [`Session::generate`] produced.
pub struct Generation {
    /// The ids produced, in order.
    pub ids: Vec<u32>,
    /// Why it ended.
    pub stopped: Stop,
    /// The last chosen id, not in the cache (the next prompt starts with it).
    pub last: u32,
    /// Decode steps per second (0 when the prefill's id was the only one).
    pub decode_tokens_per_s: f64,
}

/// Ids forced in place of the model's choice: the `n`-th id drawn since the last prefill
/// (1-based) → the id to take instead, if any (BART's forced BOS and EOS).
pub type Forced<'m> = Box<dyn Fn(usize) -> Option<u32> + 'm>;

/// A generation in progress: the KV cache, the next-token tensor and the decode graph.
pub struct Session<'m, M: Decoder> {
    model: &'m M,
    gpu: &'m Gpu,
    cache: M::Cache,
    /// The one id the samplers write and the decode graph embeds.
    next: Tensor,
    /// Reads `next` back; double-buffered so that a decode step can be queued while the one
    /// before it is read back.
    readback: TokenReadback,
    decode: Executable,
    decode_logits: TensorId,
    /// The last prefill, kept for its logits.
    prefill: Option<(Executable, TensorId)>,
    pick: Pick,
    seed: u32,
    forced: Option<Forced<'m>>,
    /// Positions filled in the cache.
    pos: usize,
    /// Draws so far (the sampler's step).
    step: u32,
    /// Every id in the cache, while the cache holds ids only (`None` once a prompt came as
    /// embeddings): LongRoPE recomputes them at the step that crosses the original context.
    history: Option<Vec<u32>>,
    /// The last chosen id (what a decode step feeds unless forced).
    last: u32,
    /// Whether [`Session::generate`] queues each step before reading the previous id back.
    /// On by default on GPUs, where it hides the host's per-token work; off on CPU drivers,
    /// where the "GPU" is the same cores and the overlap measured no gain (docs/perf.md).
    pub queue_ahead: bool,
}

impl<'m, M: Decoder> Session<'m, M> {
    /// A session over `cache` (empty, or filled by the caller's own prefill): records the
    /// decode graph.
    pub fn with_cache(
        gpu: &'m Gpu,
        model: &'m M,
        cache: M::Cache,
        pick: Pick,
        seed: u32,
    ) -> Result<Session<'m, M>> {
        let next = Tensor::from_u32(gpu, &[1], &[0], "next token")?;
        let mut g = Graph::new(gpu);
        let ids = g.external(&next);
        let x = model.embed(&mut g, ids)?;
        let logits = model.forward(&mut g, x, &cache, false)?;
        choose(&mut g, logits, model.candidates(), ids, pick)?;
        g.keep(logits);
        let decode = g.build()?;
        let readback = TokenReadback::new(gpu)?;
        Ok(Session {
            model,
            gpu,
            cache,
            next,
            readback,
            decode,
            decode_logits: logits,
            prefill: None,
            pick,
            seed,
            forced: None,
            pos: 0,
            step: 0,
            history: Some(Vec::new()),
            last: 0,
            queue_ahead: !gpu.cpu_style_kernels,
        })
    }

    /// Forces ids in place of the model's choice (see [`Forced`]).
    pub fn force(&mut self, forced: Forced<'m>) {
        self.forced = Some(forced);
    }

    /// The id forced as the `n`-th draw since the last prefill, if any.
    fn forced_at(&self, n: u32) -> Option<u32> {
        self.forced.as_ref().and_then(|f| f(n as usize))
    }

    /// Dispatches in one decode step (the whole step is one submit).
    pub fn decode_dispatches(&self) -> usize {
        self.decode.dispatches()
    }

    /// GPU time by kernel of one decode step (see [`Executable::profile`]); `None` without
    /// timestamp queries. For benchmarks: it replays the next step without advancing, so the
    /// id it samples replaces the one the next [`Session::decode`] would have fed.
    pub fn profile_decode(&self) -> Result<Option<Vec<(String, f64, usize)>>> {
        self.model.before_step(self.gpu, &self.cache, self.pos, 1)?;
        self.decode.profile(self.gpu, &self.run_values(1))
    }

    /// GPU bytes this session holds besides the weights: (KV cache, activation arenas of the
    /// decode graph and of the last prefill while it is kept).
    pub fn gpu_bytes(&self) -> (u64, u64) {
        let prefill = self.prefill.as_ref().map_or(0, |(exe, _)| exe.arena_bytes);
        (self.cache.bytes(), self.decode.arena_bytes + prefill)
    }

    /// Positions the cache holds.
    pub fn max_context(&self) -> usize {
        self.cache.max_context()
    }

    /// Positions filled in the cache so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Runs the prompt from position 0 (a fresh cache) and returns the first generated id.
    /// With `all_logits` the prefill keeps every prompt position's logits for
    /// [`Session::logits`]; otherwise only the last.
    pub fn prefill(&mut self, prompt: Prompt, all_logits: bool) -> Result<u32> {
        self.restart();
        self.extend(prompt, all_logits)
    }

    /// Forgets what the cache holds: the next [`Session::extend`] starts at position 0 (a
    /// chat re-reading its conversation after dropping turns).
    pub fn restart(&mut self) {
        self.pos = 0;
        self.step = 0;
        self.history = Some(Vec::new());
    }

    /// Whether feeding one more id now crosses LongRoPE's original context with a cache of ids
    /// only: then, as transformers' Phi-3 `generate` does, the whole sequence is recomputed
    /// with the long factors instead of decoding one step over short-factor keys (from
    /// embeddings transformers cannot recompute, and neither does this).
    fn refill_due(&self, pos: usize) -> bool {
        self.history.is_some() && self.model.recompute_at() == Some(pos)
    }

    /// The step that feeds `id` at the crossing: the cache's ids and `id` rerun from position
    /// 0; returns the next id, as [`Session::decode`] would.
    fn refill(&mut self, id: u32) -> Result<u32> {
        let mut ids = self.history.take().unwrap_or_default();
        ids.push(id);
        let step = self.step;
        self.pos = 0;
        self.history = Some(Vec::new());
        let next = self.extend(Prompt::Ids(&ids), false)?;
        self.step = step + 1;
        Ok(next)
    }

    /// Runs more prompt tokens after what the cache already holds (a follow-up turn reuses
    /// everything before it) and returns the next generated id. The last chosen id is not in
    /// the cache: a continuation starts with it (or with the turn's end token).
    pub fn extend(&mut self, prompt: Prompt, all_logits: bool) -> Result<u32> {
        let gpu = self.gpu;
        let t = match prompt {
            Prompt::Ids(ids) => {
                self.model.check_ids(ids)?;
                ids.len()
            }
            Prompt::Embeddings(e) => e.shape()[0],
        };
        self.check_room(t)?;
        let mut g = Graph::new(gpu);
        let x = match prompt {
            Prompt::Ids(ids) => {
                let ids = Tensor::from_u32(gpu, &[t], ids, "prompt ids")?;
                let ids = g.external(&ids);
                self.model.embed(&mut g, ids)?
            }
            Prompt::Embeddings(e) => {
                if e.shape() != [t, self.model.hidden()] {
                    return Err(Error::input(format!(
                        "prompt embeddings have shape {:?}, expected [tokens, {}]",
                        e.shape(),
                        self.model.hidden()
                    )));
                }
                g.external(e)
            }
        };
        let logits = self.model.forward(&mut g, x, &self.cache, all_logits)?;
        let next = g.external(&self.next);
        choose(&mut g, logits, self.model.candidates(), next, self.pick)?;
        g.keep(logits);
        let exe = g.build()?;
        let index = self.submit_choice(&exe, self.run_values(t), 0)?;
        let id = self.read_choice(0, index)?;
        self.advance(t);
        self.prefill = Some((exe, logits));
        match (&mut self.history, prompt) {
            (Some(h), Prompt::Ids(ids)) => h.extend_from_slice(ids),
            (h, _) => *h = None,
        }
        self.last = id;
        Ok(id)
    }

    /// Feeds the last chosen id (or `force`, teacher forcing) and returns the next one: one
    /// submit, 4 bytes read back.
    pub fn decode(&mut self, force: Option<u32>) -> Result<u32> {
        self.check_room(1)?;
        if let Some(id) = force {
            self.model.check_ids(&[id])?;
        }
        let fed = force.unwrap_or(self.last);
        if self.refill_due(self.pos) {
            return self.refill(fed);
        }
        if let Some(id) = force {
            self.next.write_words(self.gpu, &[id]);
        }
        self.prefill = None;
        let index = self.submit_choice(&self.decode, self.run_values(1), 0)?;
        let id = self.read_choice(0, index)?;
        self.advance(1);
        self.fed(fed, id);
        Ok(id)
    }

    /// Records a decode step that fed `fed` and chose `chose`.
    fn fed(&mut self, fed: u32, chose: u32) {
        if let Some(h) = &mut self.history {
            h.push(fed);
        }
        self.last = chose;
    }

    /// Queues one replay of `exe` (a prefill or the decode step) with `values`, copying the
    /// id it chooses into readback slot `slot`.
    fn submit_choice(&self, exe: &Executable, values: [u32; 4], slot: usize) -> Result<Submission> {
        let (past, t) = (values[0] as usize, (values[1] - values[0]) as usize);
        self.model.before_step(self.gpu, &self.cache, past, t)?;
        self.readback
            .submit(self.gpu, exe, &values, &self.next, slot)
    }

    /// Waits for `submission` and returns the id it copied into readback slot `slot`, or the
    /// id forced for this draw (which then replaces the choice on the GPU too). The sampler
    /// writes [`sample::NON_FINITE`] when the logits overflowed: an error naming the draw
    /// (1 = the prefill's token) instead of a garbage id.
    fn read_choice(&self, slot: usize, submission: Submission) -> Result<u32> {
        let id = self.readback.read(self.gpu, slot, submission)?;
        let id = sample::checked_id(id, self.step as usize + 1)?;
        match self.forced_at(self.step + 1) {
            Some(f) if f != id => {
                self.next.write_words(self.gpu, &[f]);
                Ok(f)
            }
            _ => Ok(id),
        }
    }

    /// The decode loop after a prefill or extend that chose `first`: feeds each chosen id
    /// back until a stop id, `limits.max_new` ids, the context (keeping `limits.reserve`
    /// positions free), or `on_id` returning `false` (cancel). Every id except a stop id
    /// goes to `on_id` and into the result; a stop id too when `limits.keep_stop` (as HF's
    /// `generate` output does). The last chosen id, never in the cache, is returned for a
    /// continuation to start with.
    pub fn generate(
        &mut self,
        first: u32,
        limits: &Limits,
        is_stop: &dyn Fn(u32) -> bool,
        on_id: &mut dyn FnMut(u32) -> Result<bool>,
    ) -> Result<Generation> {
        let t = Instant::now();
        let start = self.pos;
        let max_context = self.cache.max_context();
        let mut id = first;
        let mut ids = Vec::new();
        // The step that feeds `id`, when it was queued ahead: (submission, staging slot).
        let mut queued: Option<(Submission, usize)> = None;
        let stopped = loop {
            // Only reached with nothing produced yet when `max_new` is 0: then nothing is.
            if ids.len() >= limits.max_new {
                break Stop::Length;
            }
            if is_stop(id) {
                if limits.keep_stop {
                    ids.push(id);
                }
                break Stop::Eos;
            }
            ids.push(id);
            if !on_id(id)? {
                break Stop::Cancelled;
            }
            if ids.len() >= limits.max_new {
                break Stop::Length;
            }
            if self.pos + limits.reserve >= max_context {
                break Stop::Context;
            }
            if queued.is_none() && self.refill_due(self.pos) {
                id = self.refill(id)?;
                continue;
            }
            self.prefill = None;
            let (index, slot) = match queued.take() {
                Some(q) => q,
                None => (self.submit_choice(&self.decode, self.run_values(1), 0)?, 0),
            };
            // Queue the step after it (the GPU already holds the id it feeds) before reading
            // this one back, so the GPU never idles on the readback, the stop test and the
            // next step's recording — unless that step can only be wasted, or the id it
            // would feed is forced.
            if self.queue_ahead
                && ids.len() + 1 < limits.max_new
                && self.pos + 1 + limits.reserve < max_context
                && !self.refill_due(self.pos + 1)
                && self.forced_at(self.step + 1).is_none()
            {
                let values = self.run_values_ahead(1, 1);
                queued = Some((
                    self.submit_choice(&self.decode, values, 1 - slot)?,
                    1 - slot,
                ));
            }
            let fed = id;
            id = self.read_choice(slot, index)?;
            self.advance(1);
            self.fed(fed, id);
        };
        if queued.is_some() {
            // A step queued past a stop or cancel fed `id` at the current position: the cache
            // row it wrote is the one the next step would write; its choice is undone so a
            // later `decode(None)` feeds `id` again.
            self.next.write_words(self.gpu, &[id]);
        }
        let steps = self.pos - start;
        let secs = t.elapsed().as_secs_f64();
        Ok(Generation {
            ids,
            stopped,
            last: id,
            decode_tokens_per_s: if steps > 0 { steps as f64 / secs } else { 0.0 },
        })
    }

    /// Logits of the last step: every prompt position after a prefill with `all_logits`,
    /// else `[1, vocab]` for the last token. For tests and tools: this reads back a lot.
    pub fn logits(&self) -> Result<Vec<f32>> {
        let (exe, id) = match &self.prefill {
            Some((exe, id)) => (exe, *id),
            None => (&self.decode, self.decode_logits),
        };
        exe.tensor(id).read_f32(self.gpu)
    }

    fn check_room(&self, t: usize) -> Result<()> {
        if self.pos + t > self.cache.max_context() {
            return Err(Error::input(format!(
                "{} tokens after {} do not fit the context of {} positions",
                t,
                self.pos,
                self.cache.max_context()
            )));
        }
        Ok(())
    }

    /// Run values for `t` tokens at the current position.
    fn run_values(&self, t: usize) -> [u32; 4] {
        self.run_values_ahead(0, t)
    }

    /// Run values for `t` tokens `ahead` steps of one token past the current position (a
    /// decode step queued before the ones before it are read back).
    fn run_values_ahead(&self, ahead: usize, t: usize) -> [u32; 4] {
        run_values(self.pos + ahead, t, self.seed, self.step + ahead as u32)
    }

    fn advance(&mut self, t: usize) {
        self.pos += t;
        self.step += 1;
    }
}

/// Beam search over `cache` (one sequence per beam, encoder state already in it): each step
/// reorders the caches to the surviving beams and decodes their last tokens in one replay,
/// then `search` selects on the host from the `[beams, vocab]` logits. `on_step` runs after
/// each step; when it returns `false` the best running sequence is returned, else the best
/// finished one.
pub fn beam_search<M: Decoder>(
    gpu: &Gpu,
    model: &M,
    cache: &M::Cache,
    search: &mut BeamSearch,
    on_step: &mut dyn FnMut(&BeamSearch) -> bool,
) -> Result<Vec<u32>> {
    let cap = cache.max_context();
    let beams = search.last_tokens().len();
    let zeros = vec![0; beams * cap];
    let ids = Tensor::from_u32(gpu, &[beams], &zeros[..beams], "beam ids")?;
    // u32 `[beams · capacity]`: the cache row each cache row is gathered from.
    let sources = Tensor::from_u32(gpu, &[beams * cap], &zeros, "beam cache rows")?;
    let mut g = Graph::new(gpu);
    let src = g.external(&sources);
    model.reorder(&mut g, cache, src)?;
    let i = g.external(&ids);
    let x = model.embed(&mut g, i)?;
    let logits = model.forward(&mut g, x, cache, true)?;
    g.keep(logits);
    let exe = g.build()?;
    let logits = exe.tensor(logits).clone();
    while !search.done() {
        let past = search.cur_len() - 1;
        let rows: Vec<u32> = search
            .parents()
            .iter()
            .flat_map(|&p| (p * cap..(p + 1) * cap).map(|r| r as u32))
            .collect();
        sources.write_words(gpu, &rows);
        ids.write_words(gpu, &search.last_tokens());
        model.before_step(gpu, cache, past, 1)?;
        exe.run(gpu, &run_values(past, 1, 0, 0))?;
        search.step(&logits.read_f32(gpu)?)?;
        if !on_step(search) {
            return Ok(search.leader().to_vec());
        }
    }
    Ok(search.best().to_vec())
}
