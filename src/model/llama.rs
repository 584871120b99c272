//! The Llama-family decoder (HF `LlamaForCausalLM` and `Phi3ForCausalLM`): RMSNorm, RoPE
//! (Llama 3 scaling or LongRoPE), grouped-query attention over a KV cache, SwiGLU MLP, tied or
//! untied LM head. Both layouts load into the same fused matrices (`[q; k; v]`, `[gate; up]`),
//! so one forward, one KV cache and one sampler serve both; configs and tensor names live in
//! `weights::llama`.
//!
//! A forward is recorded once per shape: a prefill graph for a prompt of `T` tokens and a
//! decode graph for one token. Both write into the same KV cache (one `[S, kv_heads·head_dim]`
//! tensor per layer for keys and one for values) at the row given by a run slot, and both end
//! by choosing the next token on the GPU into a one-id tensor that the decode graph's embedding
//! reads: a decode step is one submit, and only that 4-byte id comes back.

use std::time::Instant;

use crate::gpu::{DType, Executable, Gpu, Graph, Submission, Tensor, TensorId, TokenReadback};
use crate::ops::attention::{self, Attention};
use crate::ops::copy::{self, Block};
use crate::ops::rope::{self, CacheWrite, Rope, RopeTables};
use crate::ops::sample::{self, Sampling};
use crate::ops::{eltwise, embed, norm, RunValue, View};
use crate::weights::llama::EMBED;
use crate::weights::Checkpoint;

pub use crate::weights::llama::{Arch, LlamaConfig};
use crate::{Error, Result};

use super::layers::{param, Linear, Source};

/// Run slot holding the position of the graph's first token (= rows already in the cache).
pub const POS_SLOT: u32 = 0;
/// Run slot holding the number of cache rows in use after this step (`pos + tokens`).
pub const LEN_SLOT: u32 = 1;
/// Run slot holding the sampling seed.
pub const SEED_SLOT: u32 = 2;
/// Run slot holding the sampling step (the index of the draw).
pub const STEP_SLOT: u32 = 3;

/// One decoder layer's weights. q, k and v are one fused projection `[(H + 2·Hkv)·D, hidden]`,
/// gate and up one `[2·I, hidden]` (one matvec each in a decode step).
struct Layer {
    attn_norm: Tensor,
    qkv: Linear,
    o: Linear,
    mlp_norm: Tensor,
    gate_up: Linear,
    down: Linear,
}

/// A Llama model on the GPU.
pub struct Llama {
    /// Model configuration.
    pub cfg: LlamaConfig,
    /// The dtype asked for the linear weights (some may fall back, see [`Llama::load`]).
    pub quant: DType,
    /// Number of weights stored as f16 instead of a quantized `quant`.
    pub f16_fallbacks: usize,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// `None` when tied to the embedding table.
    lm_head: Option<Linear>,
    /// RoPE frequency tables (LongRoPE: short then long).
    inv_freq: Tensor,
    rope: RopeTables,
    /// Ids a step may choose: the tokenizer's size. Rows of the embedding past it are padding
    /// (Phi-3.5: 32064 rows, 32011 tokens) and are never sampled. Defaults to every row.
    pub sampled_vocab: usize,
}

/// Pre-quantized matrices: `(name, dtype, [rows, cols])` → the packed words, or `None` when
/// the source stores that matrix as floats.
pub type Packed<'a> = dyn Fn(&str, DType, [usize; 2]) -> Result<Option<Vec<u32>>> + 'a;

/// A weight dtype for rows `cols` long: quantized rows must be whole 32-element blocks, so a
/// weight with other rows (tiny test models) falls back to f16.
fn weight_dtype(quant: DType, cols: usize) -> DType {
    if quant.check_cols(cols).is_ok() {
        quant
    } else {
        DType::F16
    }
}

impl Llama {
    /// Number of tensors [`Llama::load`] reads, for progress bars.
    pub fn tensor_count(cfg: &LlamaConfig) -> usize {
        let per_layer = 4 + cfg.qkv_parts(0).len() + cfg.gate_up_parts(0).len();
        2 + per_layer * cfg.layers + usize::from(!cfg.tie_word_embeddings)
    }

    /// Loads a HF Llama or Phi-3 checkpoint with the linear weights and the embedding table as `quant`
    /// (F32, F16, Q8 or Q4; a quantized weight whose rows are not a multiple of 32 long is
    /// kept as f16). Norm weights stay f32. `on_tensor` is called after each tensor.
    pub fn load(gpu: &Gpu, ck: &Checkpoint, quant: DType, on_tensor: &dyn Fn()) -> Result<Llama> {
        let cfg = LlamaConfig::from_checkpoint(ck)?;
        if let Some(stored) = ck.stored_quant() {
            if stored != quant {
                return Err(Error::input(format!(
                    "{} is quantized as {}; --quant {} mismatches (re-quantizing loses precision: use the original checkpoint)",
                    ck.dir().display(),
                    stored.name(),
                    quant.name()
                )));
            }
        }
        let src = |name: &str, shape: &[usize]| {
            let v = ck.load_f32(name, shape);
            on_tensor();
            v
        };
        let packed = |name: &str, dtype: DType, shape: [usize; 2]| {
            let v = ck.load_packed(name, dtype, shape)?;
            if v.is_some() {
                on_tensor();
            }
            Ok(v)
        };
        Llama::load_from(gpu, &src, &packed, cfg, quant)
    }

    /// [`Llama::load`] from any weight source (HF names), e.g. random weights for benchmarks.
    /// `packed` returns a matrix's words when the source stores it already quantized.
    pub fn load_from(
        gpu: &Gpu,
        src: &Source,
        packed: &Packed,
        cfg: LlamaConfig,
        quant: DType,
    ) -> Result<Llama> {
        if !matches!(quant, DType::F32 | DType::F16 | DType::Q8 | DType::Q4) {
            return Err(Error::input(format!(
                "weights cannot be stored as {}",
                quant.name()
            )));
        }
        let vocab = cfg.vocab;
        let (h, q_dim) = (cfg.hidden, cfg.heads * cfg.head_dim);
        let fallbacks = std::cell::Cell::new(0);
        let dtype = |cols: usize| {
            let dt = weight_dtype(quant, cols);
            fallbacks.set(fallbacks.get() + usize::from(dt != quant));
            dt
        };
        // A matrix of `inp` columns made of the row blocks `parts` (several for the fused qkv),
        // from packed words where the source has them, else quantized from floats here.
        let matrix = |parts: &[(String, usize)], inp: usize, label: &str| -> Result<Tensor> {
            let dt = dtype(inp);
            let rows: usize = parts.iter().map(|p| p.1).sum();
            let mut words = Vec::new();
            let mut floats = Vec::new();
            for (name, r) in parts {
                match packed(name, dt, [*r, inp])? {
                    Some(w) if floats.is_empty() => words.extend(w),
                    None if words.is_empty() => floats.extend(src(name, &[*r, inp])?),
                    _ => {
                        return Err(Error::input(format!(
                            "{label}: {name} mixes packed and float parts"
                        )))
                    }
                }
            }
            if words.is_empty() {
                return Tensor::from_f32(gpu, &[rows, inp], dt, &floats, label);
            }
            let t = Tensor::empty(gpu, &[rows, inp], dt, label)?;
            t.write_words(gpu, &words);
            Ok(t)
        };
        let linear = |name: &str, out: usize, inp: usize| -> Result<Linear> {
            let weight = matrix(&[(format!("{name}.weight"), out)], inp, name)?;
            Ok(Linear { weight, bias: None })
        };
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                attn_norm: param(
                    gpu,
                    &src,
                    &format!("{p}.input_layernorm.weight"),
                    &[h],
                    DType::F32,
                )?,
                qkv: Linear {
                    weight: matrix(&cfg.qkv_parts(i), h, &format!("{p}.self_attn.qkv"))?,
                    bias: None,
                },
                o: linear(&format!("{p}.self_attn.o_proj"), h, q_dim)?,
                mlp_norm: param(
                    gpu,
                    &src,
                    &format!("{p}.post_attention_layernorm.weight"),
                    &[h],
                    DType::F32,
                )?,
                gate_up: Linear {
                    weight: matrix(&cfg.gate_up_parts(i), h, &format!("{p}.mlp.gate_up"))?,
                    bias: None,
                },
                down: linear(&format!("{p}.mlp.down_proj"), h, cfg.intermediate)?,
            });
        }
        let embed = matrix(&[(EMBED.to_string(), vocab)], h, "embed_tokens")?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(linear("lm_head", vocab, h)?)
        };
        let rope = RopeTables::new(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling.as_ref());
        Ok(Llama {
            embed,
            layers,
            norm: param(gpu, &src, "model.norm.weight", &[h], DType::F32)?,
            lm_head,
            inv_freq: Tensor::from_f32(
                gpu,
                &[rope.inv_freq.len()],
                DType::F32,
                &rope.inv_freq,
                "inv_freq",
            )?,
            rope,
            sampled_vocab: vocab,
            quant,
            f16_fallbacks: fallbacks.get(),
            cfg,
        })
    }

    /// Allocates a KV cache for `max_context` positions.
    pub fn kv_cache(&self, gpu: &Gpu, max_context: usize) -> Result<KvCache> {
        let shape = [max_context, self.cfg.kv_dim()];
        let layers = (0..self.cfg.layers)
            .map(|i| {
                Ok((
                    Tensor::empty(gpu, &shape, DType::F32, &format!("k cache {i}"))?,
                    Tensor::empty(gpu, &shape, DType::F32, &format!("v cache {i}"))?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(KvCache {
            layers,
            max_context,
        })
    }

    /// Records the decoder on `t` embedded tokens `x` (`[t, hidden]`) at positions
    /// `run[POS_SLOT]..`, appending their keys and values to `cache`. Returns the logits,
    /// `[t, vocab]` with `all_logits`, else `[1, vocab]` for the last token only.
    pub fn forward(
        &self,
        g: &mut Graph,
        x: TensorId,
        cache: &KvCache,
        all_logits: bool,
    ) -> Result<TensorId> {
        let c = &self.cfg;
        let t = g.shape(x)[0];
        let (d, q_dim, kv_dim) = (c.head_dim, c.heads * c.head_dim, c.kv_dim());
        let qkv_width = q_dim + 2 * kv_dim;
        let inv_freq = g.external(&self.inv_freq);
        let mut x = x;
        for (layer, (k_cache, v_cache)) in self.layers.iter().zip(&cache.layers) {
            // Attention: x += o(attn(rope(q), cache ⊕ rope(k), cache ⊕ v)).
            let h = rmsnorm(g, x, &layer.attn_norm, c.rms_norm_eps)?;
            let qkv = layer.qkv.forward(g, h)?;
            let (k_cache, v_cache) = (g.external(k_cache), g.external(v_cache));
            let r = Rope {
                long_after: self.rope.long_after,
                scale: self.rope.scale,
                ..Rope::plain(1, t, c.heads, d, RunValue::Slot(POS_SLOT))
            };
            let append = CacheWrite {
                q_heads: c.heads,
                kv_heads: c.kv_heads,
                k_cache,
                v_cache,
            };
            rope::rope_qkv_to_cache(g, qkv, inv_freq, &r, &append)?;
            let attn = g.tensor(&[t, q_dim], DType::F32)?;
            let a = Attention {
                batch: 1,
                tq: t,
                s_max: cache.max_context,
                q_heads: c.heads,
                kv_heads: c.kv_heads,
                head_dim: d,
                kv_len: RunValue::Slot(LEN_SLOT),
                causal: true,
                scale: (d as f32).powf(-0.5),
            };
            let (k, v) = (View::rows(g, k_cache), View::rows(g, v_cache));
            attention::attention(g, View::strided(qkv, 0, qkv_width), k, v, attn, &a)?;
            x = layer.o.forward_add(g, attn, x)?;

            // MLP: x += down(silu(gate(h)) · up(h)).
            let h = rmsnorm(g, x, &layer.mlp_norm, c.rms_norm_eps)?;
            let gate_up = layer.gate_up.forward(g, h)?;
            let act = g.tensor(&[t, c.intermediate], DType::F32)?;
            eltwise::swiglu_halves(g, gate_up, act)?;
            x = layer.down.forward_add(g, act, x)?;
        }
        if !all_logits && t > 1 {
            let last = g.tensor(&[1, c.hidden], DType::F32)?;
            let row = Block {
                src_row: t - 1,
                rows: 1,
                cols: c.hidden,
                ..Default::default()
            };
            copy::copy(g, x, last, &row)?;
            x = last;
        }
        let h = rmsnorm(g, x, &self.norm, c.rms_norm_eps)?;
        match &self.lm_head {
            Some(head) => head.forward(g, h),
            None => Linear {
                weight: self.embed.clone(),
                bias: None,
            }
            .forward(g, h),
        }
    }

    /// Ids a step chooses from: [`Llama::sampled_vocab`], at most the embedding's rows.
    fn candidates(&self) -> usize {
        self.sampled_vocab.clamp(1, self.cfg.vocab)
    }

    /// Records the embedding lookup of the u32 ids in `ids` (`[t]`), returning `[t, hidden]`.
    pub fn embed(&self, g: &mut Graph, ids: TensorId) -> Result<TensorId> {
        let t = g.shape(ids)[0];
        let out = g.tensor(&[t, self.cfg.hidden], DType::F32)?;
        let table = g.external(&self.embed);
        embed::embed(g, ids, table, None, out)?;
        Ok(out)
    }
}

fn rmsnorm(g: &mut Graph, x: TensorId, weight: &Tensor, eps: f32) -> Result<TensorId> {
    let shape = g.shape(x).to_vec();
    let out = g.tensor(&shape, DType::F32)?;
    let w = g.external(weight);
    norm::rmsnorm(g, x, w, eps, out)?;
    Ok(out)
}

/// Keys and values of every layer for up to `max_context` positions.
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    max_context: usize,
}

impl KvCache {
    /// Number of positions the cache holds.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// GPU bytes of every layer's keys and values.
    pub fn bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|(k, v)| k.layout.bytes() + v.layout.bytes())
            .sum()
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

/// What a prompt is given as.
pub enum Prompt<'a> {
    /// Token ids.
    Ids(&'a [u32]),
    /// Input embeddings `[t, hidden]` computed by the caller (e.g. with image rows spliced in).
    Embeddings(&'a Tensor),
}

/// When [`Session::generate`] stops.
pub struct Limits {
    /// Most ids to produce (the first, chosen by the prefill, counts).
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

/// A generation in progress: the KV cache, the next-token tensor and the decode graph.
pub struct Session<'m> {
    model: &'m Llama,
    gpu: &'m Gpu,
    cache: KvCache,
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

impl<'m> Session<'m> {
    /// Allocates a cache of `max_context` positions and records the decode graph.
    pub fn new(
        gpu: &'m Gpu,
        model: &'m Llama,
        max_context: usize,
        pick: Pick,
        seed: u32,
    ) -> Result<Session<'m>> {
        let cache = model.kv_cache(gpu, model.cfg.context_limit(max_context))?;
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
            pos: 0,
            step: 0,
            history: Some(Vec::new()),
            last: 0,
            queue_ahead: !gpu.cpu_style_kernels,
        })
    }

    /// Dispatches in one decode step (the whole step is one submit).
    pub fn decode_dispatches(&self) -> usize {
        self.decode.dispatches()
    }

    /// GPU time by kernel of one decode step (see [`Executable::profile`]); `None` without
    /// timestamp queries. For benchmarks: it replays the next step without advancing, so the
    /// id it samples replaces the one the next [`Session::decode`] would have fed.
    pub fn profile_decode(&self) -> Result<Option<Vec<(String, f64, usize)>>> {
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
        self.cache.max_context
    }

    /// Positions filled in the cache so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Runs the prompt from position 0 (a fresh cache) and returns the first generated id.
    /// With `all_logits` the prefill keeps every prompt position's logits for
    /// [`Session::logits`]; otherwise only the last.
    pub fn prefill(&mut self, prompt: Prompt, all_logits: bool) -> Result<u32> {
        self.pos = 0;
        self.step = 0;
        self.history = Some(Vec::new());
        self.extend(prompt, all_logits)
    }

    /// Whether feeding one more id now crosses LongRoPE's original context with a cache of ids
    /// only: then, as transformers' Phi-3 `generate` does, the whole sequence is recomputed
    /// with the long factors instead of decoding one step over short-factor keys (from
    /// embeddings transformers cannot recompute, and neither does this).
    fn refill_due(&self, pos: usize) -> bool {
        self.history.is_some() && self.model.rope.long_after == Some(pos)
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
            Prompt::Ids(ids) => ids.len(),
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
                if e.shape() != [t, self.model.cfg.hidden] {
                    return Err(Error::input(format!(
                        "prompt embeddings have shape {:?}, expected [tokens, {}]",
                        e.shape(),
                        self.model.cfg.hidden
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
        self.readback
            .submit(self.gpu, exe, &values, &self.next, slot)
    }

    /// Waits for `submission` and returns the id it copied into readback slot `slot`.
    fn read_choice(&self, slot: usize, submission: Submission) -> Result<u32> {
        self.readback.read(self.gpu, slot, submission)
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
        let mut id = first;
        let mut ids = Vec::new();
        // The step that feeds `id`, when it was queued ahead: (submission, staging slot).
        let mut queued: Option<(Submission, usize)> = None;
        let stopped = loop {
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
            if self.pos + limits.reserve >= self.cache.max_context {
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
            // next step's recording — unless that step can only be wasted.
            if self.queue_ahead
                && ids.len() + 1 < limits.max_new
                && self.pos + 1 + limits.reserve < self.cache.max_context
                && !self.refill_due(self.pos + 1)
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
        if self.pos + t > self.cache.max_context {
            return Err(Error::input(format!(
                "{} tokens after {} do not fit the context of {} positions",
                t, self.pos, self.cache.max_context
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
        let pos = self.pos + ahead;
        [
            pos as u32,
            (pos + t) as u32,
            self.seed,
            self.step + ahead as u32,
        ]
    }

    fn advance(&mut self, t: usize) {
        self.pos += t;
        self.step += 1;
    }
}

/// Records the choice of the next token among the first `candidates` columns of the last row
/// of `logits` into `ids[0]`.
fn choose(
    g: &mut Graph,
    logits: TensorId,
    candidates: usize,
    ids: TensorId,
    pick: Pick,
) -> Result<()> {
    let row = sample::Row {
        row: g.layout(logits).rows() - 1,
        candidates: Some(candidates),
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
