//! The Llama-family decoder (HF `LlamaForCausalLM` and `Phi3ForCausalLM`): RMSNorm, RoPE
//! (Llama 3 scaling or LongRoPE), grouped-query attention over a KV cache, SwiGLU MLP, tied or
//! untied LM head. Both layouts load into the same fused matrices (`[q; k; v]`, `[gate; up]`),
//! so one forward, one KV cache and one sampler serve both; configs and tensor names live in
//! `weights::llama`.
//!
//! A forward is recorded once per shape: a prefill graph for a prompt of `T` tokens and a
//! decode graph for one token. Both write into the same KV cache (one `[S, kv_heads·head_dim]`
//! tensor per layer for keys and one for values) at the row given by a run slot. The decoding
//! loop, the choice of the next token and the run slots are `model::generate`'s: this file
//! owns only the weights and the forward pass, and names no graphics API.

use crate::gpu::{DType, Gpu, Graph, Tensor, TensorId};
use crate::ops::attention::{self, Attention};
use crate::ops::copy::{self, Block};
use crate::ops::rope::{self, CacheWrite, Rope, RopeTables};
use crate::ops::{eltwise, embed, norm, RunValue, View};
use crate::weights::llama::EMBED;
use crate::weights::Checkpoint;

pub use crate::weights::llama::{Arch, LlamaConfig};
use crate::{Error, Result, Setting};

use super::generate::{self, Decoder, Pick, Session, KV_LEN_SLOT, PAST_SLOT};
use super::layers::{param, Linear, Source};

/// One decoder layer's weights. q, k and v are one fused projection `[(H + 2·Hkv)·D, hidden]`,
/// gate and up one `[2·I, hidden]` (one matvec each in a decode step, which also applies the
/// RMSNorm before it).
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
    /// The dtype asked for the linear weights (some may fall back, see [`Llama::from_checkpoint`]).
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
    /// Number of tensors [`Llama::from_checkpoint`] reads, for progress bars.
    pub fn tensor_count(cfg: &LlamaConfig) -> usize {
        let per_layer = 4 + cfg.qkv_parts(0).len() + cfg.gate_up_parts(0).len();
        2 + per_layer * cfg.layers + usize::from(!cfg.tie_word_embeddings)
    }

    /// Loads a HF Llama or Phi-3 checkpoint with the linear weights and the embedding table as `quant`
    /// (F32, F16, Q8 or Q4; a quantized weight whose rows are not a multiple of 32 long is
    /// kept as f16). Norm weights stay f32. `on_tensor` is called after each tensor.
    pub fn from_checkpoint(
        gpu: &Gpu,
        ck: &Checkpoint,
        quant: DType,
        on_tensor: &dyn Fn(),
    ) -> Result<Llama> {
        let cfg = LlamaConfig::from_checkpoint(ck)?;
        if let Some(stored) = ck.stored_quant() {
            if stored != quant {
                return Err(Error::setting(
                    Setting::WeightStorage,
                    format!("{} is quantized as {}; ", ck.dir().display(), stored.name()),
                    format!(
                        " {} mismatches (re-quantizing loses precision: use the original checkpoint)",
                        quant.name()
                    ),
                ));
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
        Llama::load(gpu, &src, &packed, cfg, quant)
    }

    /// [`Llama::from_checkpoint`] from any weight source (HF names), e.g. random weights for
    /// benchmarks.
    /// `packed` returns a matrix's words when the source stores it already quantized.
    pub fn load(
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
    /// `run[PAST_SLOT]..`, appending their keys and values to `cache`. Returns the logits,
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
            let qkv = layer.qkv.forward_rms(g, x, &layer.attn_norm, c.rms_norm_eps)?;
            let (k_cache, v_cache) = (g.external(k_cache), g.external(v_cache));
            let r = Rope {
                long_after: self.rope.long_after,
                scale: self.rope.scale,
                ..Rope::plain(1, t, c.heads, d, RunValue::Slot(PAST_SLOT))
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
                kv_len: RunValue::Slot(KV_LEN_SLOT),
                causal: true,
                window: c.sliding_window,
                scale: (d as f32).powf(-0.5),
            };
            let (k, v) = (View::rows(g, k_cache), View::rows(g, v_cache));
            attention::attention(g, View::strided(qkv, 0, qkv_width), k, v, attn, &a)?;
            x = layer.o.forward_add(g, attn, x)?;

            // MLP: x += down(silu(gate(h)) · up(h)).
            let gate_up = layer.gate_up.forward_rms(g, x, &layer.mlp_norm, c.rms_norm_eps)?;
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

impl generate::Cache for KvCache {
    fn max_context(&self) -> usize {
        self.max_context
    }

    fn bytes(&self) -> u64 {
        KvCache::bytes(self)
    }
}

impl Decoder for Llama {
    type Cache = KvCache;

    fn hidden(&self) -> usize {
        self.cfg.hidden
    }

    fn embed(&self, g: &mut Graph, ids: TensorId) -> Result<TensorId> {
        Llama::embed(self, g, ids)
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        self.cfg.check_ids(ids)
    }

    fn forward(&self, g: &mut Graph, x: TensorId, cache: &KvCache, all: bool) -> Result<TensorId> {
        Llama::forward(self, g, x, cache, all)
    }

    /// [`Llama::sampled_vocab`], at most the embedding's rows.
    fn candidates(&self) -> Option<usize> {
        Some(self.sampled_vocab.clamp(1, self.cfg.vocab))
    }

    fn recompute_at(&self) -> Option<usize> {
        self.rope.long_after
    }
}

impl<'m> Session<'m, Llama> {
    /// A session over a fresh cache of `max_context` positions (at most the model's context).
    pub fn new(
        gpu: &'m Gpu,
        model: &'m Llama,
        max_context: usize,
        pick: Pick,
        seed: u32,
    ) -> Result<Session<'m, Llama>> {
        let cache = model.kv_cache(gpu, max_context)?;
        Session::with_cache(gpu, model, cache, pick, seed)
    }
}
