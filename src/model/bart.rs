//! Florence-2's language model (spec §5): BART with post-LN layers and exact GELU.
//!
//! * Encoder: the input rows are `[V ; shared[prompt ids]]` per prompt, plus learned positions
//!   (row `p + 2` for position `p` over the whole sequence), then `layernorm_embedding` and the
//!   layers. Several prompts over one image run as one batch, so the weights are read once.
//! * Decoder: the same embedding scheme from position 0, causal self-attention over a KV cache
//!   that grows by the new rows at every replay, cross-attention over the encoder output whose
//!   K/V are projected once per image, and the tied LM head plus `final_logits_bias`.
//!
//! q, k and v are fused into one projection (the three weights stacked on the host), so a layer
//! reads its input once and attention reads q, k and v as strided views.

use crate::gpu::{DType, Gpu, Graph, Tensor, TensorId};
use crate::ops::attention::{attention, Attention};
use crate::ops::copy::{copy, Block};
use crate::ops::{embed, matmul, RunValue, View};
use crate::weights::florence2::{Florence2Checkpoint, TextConfig, FINAL_LOGITS_BIAS};
use crate::{Error, Result};

use super::beam::{BeamOptions, BeamSearch, DecoderIds};
use super::generate::{self, Decoder, Limits, Pick, Session, KV_LEN_SLOT, PAST_SLOT};
use super::layers::{add, param, LayerNorm, Linear, Mlp, Source};

const PREFIX: &str = "model.language_model";
const SHARED: &str = "model.language_model.shared.weight";
/// Row of the stored position table used for position 0 (BART's learned-position offset).
const POSITION_OFFSET: usize = 2;

/// Loads `{prefix}.{q,k,v}_proj` (or any list of projections of `dim → dim`) stacked into one
/// linear of `parts.len() · dim` outputs.
fn fused(
    gpu: &Gpu,
    src: &Source,
    prefix: &str,
    parts: &[&str],
    dim: usize,
    dtype: DType,
) -> Result<Linear> {
    let (mut w, mut b) = (Vec::new(), Vec::new());
    for p in parts {
        w.extend(src(&format!("{prefix}.{p}.weight"), &[dim, dim])?);
        b.extend(src(&format!("{prefix}.{p}.bias"), &[dim])?);
    }
    let n = parts.len() * dim;
    Ok(Linear {
        weight: Tensor::from_f32(gpu, &[n, dim], dtype, &w, prefix)?,
        bias: Some(Tensor::from_f32(gpu, &[n], DType::F32, &b, prefix)?),
    })
}

/// Token embeddings + learned positions → `layernorm_embedding`, as both stacks begin.
struct Embeddings {
    /// `[max_position_embeddings, D]`: the stored table without its first two rows (BART's
    /// learned positions start at row 2), so position p is row p.
    positions: Tensor,
    norm: LayerNorm,
}

impl Embeddings {
    fn load(gpu: &Gpu, src: &Source, part: &str, cfg: &TextConfig) -> Result<Self> {
        let (d, n) = (cfg.d_model, cfg.max_position_embeddings);
        let p = format!("{PREFIX}.{part}");
        let name = format!("{p}.embed_positions.weight");
        let table = src(&name, &[n + POSITION_OFFSET, d])?;
        Ok(Embeddings {
            positions: Tensor::from_f32(
                gpu,
                &[n, d],
                DType::F32,
                &table[POSITION_OFFSET * d..],
                &name,
            )?,
            norm: LayerNorm::load(gpu, src, &format!("{p}.layernorm_embedding"), d, 1e-5)?,
        })
    }

    /// `LN(x + positions[ids])`; `ids` are positions, u32 with `x`'s shape less its last
    /// dimension.
    fn forward(&self, g: &mut Graph, x: TensorId, ids: TensorId) -> Result<TensorId> {
        let pos = g.tensor_like(x)?;
        let table = g.external(&self.positions);
        embed::embed(g, ids, table, None, pos)?;
        let x = add(g, x, pos)?;
        self.norm.forward(g, x)
    }
}

/// The post-LN residual step `LN(x + h)`.
fn add_norm(g: &mut Graph, norm: &LayerNorm, x: TensorId, h: TensorId) -> Result<TensorId> {
    let sum = add(g, x, h)?;
    norm.forward(g, sum)
}

/// Shape of one attention call over `batch` sequences.
fn attn(batch: usize, tq: usize, s_max: usize, heads: usize, d: usize) -> Attention {
    let head_dim = d / heads;
    Attention {
        batch,
        tq,
        s_max,
        q_heads: heads,
        kv_heads: heads,
        head_dim,
        kv_len: RunValue::Fixed(s_max as u32),
        causal: false,
        window: None,
        scale: (head_dim as f32).powf(-0.5),
    }
}

/// One post-LN encoder layer.
struct EncoderLayer {
    qkv: Linear,
    out: Linear,
    attn_norm: LayerNorm,
    ffn: Mlp,
    ffn_norm: LayerNorm,
}

impl EncoderLayer {
    fn load(gpu: &Gpu, src: &Source, p: &str, cfg: &TextConfig, dtype: DType) -> Result<Self> {
        let d = cfg.d_model;
        let a = format!("{p}.self_attn");
        Ok(EncoderLayer {
            qkv: fused(gpu, src, &a, &["q_proj", "k_proj", "v_proj"], d, dtype)?,
            out: Linear::load(gpu, src, &format!("{a}.out_proj"), d, d, true, dtype)?,
            attn_norm: LayerNorm::load(gpu, src, &format!("{p}.self_attn_layer_norm"), d, 1e-5)?,
            ffn: Mlp::load_fc(gpu, src, p, d, cfg.encoder_ffn_dim, dtype)?,
            ffn_norm: LayerNorm::load(gpu, src, &format!("{p}.final_layer_norm"), d, 1e-5)?,
        })
    }

    /// `x`: `[batch·seq, D]`, full (unmasked) attention within each sequence.
    fn forward(&self, g: &mut Graph, x: TensorId, batch: usize, heads: usize) -> Result<TensorId> {
        let d = g.layout(x).cols();
        let seq = g.layout(x).rows() / batch;
        let qkv = self.qkv.forward(g, x)?;
        let o = g.tensor(&[batch * seq, d], DType::F32)?;
        let part = |i| View::strided(qkv, i * d, 3 * d);
        attention(
            g,
            part(0),
            part(1),
            part(2),
            o,
            &attn(batch, seq, seq, heads, d),
        )?;
        let h = self.out.forward(g, o)?;
        let x = add_norm(g, &self.attn_norm, x, h)?;
        let h = self.ffn.forward(g, x)?;
        add_norm(g, &self.ffn_norm, x, h)
    }
}

/// One post-LN decoder layer.
struct DecoderLayer {
    qkv: Linear,
    out: Linear,
    attn_norm: LayerNorm,
    cross_q: Linear,
    /// k and v of the cross-attention, applied to the encoder output once per image.
    cross_kv: Linear,
    cross_out: Linear,
    cross_norm: LayerNorm,
    ffn: Mlp,
    ffn_norm: LayerNorm,
}

impl DecoderLayer {
    fn load(gpu: &Gpu, src: &Source, p: &str, cfg: &TextConfig, dtype: DType) -> Result<Self> {
        let d = cfg.d_model;
        let (a, c) = (format!("{p}.self_attn"), format!("{p}.encoder_attn"));
        Ok(DecoderLayer {
            qkv: fused(gpu, src, &a, &["q_proj", "k_proj", "v_proj"], d, dtype)?,
            out: Linear::load(gpu, src, &format!("{a}.out_proj"), d, d, true, dtype)?,
            attn_norm: LayerNorm::load(gpu, src, &format!("{p}.self_attn_layer_norm"), d, 1e-5)?,
            cross_q: Linear::load(gpu, src, &format!("{c}.q_proj"), d, d, true, dtype)?,
            cross_kv: fused(gpu, src, &c, &["k_proj", "v_proj"], d, dtype)?,
            cross_out: Linear::load(gpu, src, &format!("{c}.out_proj"), d, d, true, dtype)?,
            cross_norm: LayerNorm::load(
                gpu,
                src,
                &format!("{p}.encoder_attn_layer_norm"),
                d,
                1e-5,
            )?,
            ffn: Mlp::load_fc(gpu, src, p, d, cfg.decoder_ffn_dim, dtype)?,
            ffn_norm: LayerNorm::load(gpu, src, &format!("{p}.final_layer_norm"), d, 1e-5)?,
        })
    }

    /// `x`: `[batch·tq, D]`, the rows after the `run[PAST_SLOT]` cached ones. Appends their
    /// keys/values to `cache` (`[batch, capacity, 2D]`) and attends causally over the first
    /// `run[KV_LEN_SLOT]` cached rows, then over the encoder's `cross` (`[batch, enc_len, 2D]`).
    fn forward(
        &self,
        g: &mut Graph,
        x: TensorId,
        cache: TensorId,
        cross: TensorId,
        batch: usize,
        heads: usize,
    ) -> Result<TensorId> {
        let d = g.layout(x).cols();
        let tq = g.layout(x).rows() / batch;
        let capacity = g.layout(cache).rows() / batch;
        let enc_len = g.layout(cross).rows() / batch;

        let qkv = self.qkv.forward(g, x)?;
        for b in 0..batch {
            let new_kv = Block {
                src_row: b * tq,
                src_col: d,
                rows: tq,
                cols: 2 * d,
                dst_row: b * capacity,
                dst_col: 0,
                dst_row_slot: Some(PAST_SLOT as usize),
            };
            copy(g, qkv, cache, &new_kv)?;
        }
        let o = g.tensor(&[batch * tq, d], DType::F32)?;
        let a = Attention {
            kv_len: RunValue::Slot(KV_LEN_SLOT),
            causal: true,
            ..attn(batch, tq, capacity, heads, d)
        };
        let q = View::strided(qkv, 0, 3 * d);
        let (k, v) = (
            View::strided(cache, 0, 2 * d),
            View::strided(cache, d, 2 * d),
        );
        attention(g, q, k, v, o, &a)?;
        let h = self.out.forward(g, o)?;
        let x = add_norm(g, &self.attn_norm, x, h)?;

        let q = self.cross_q.forward(g, x)?;
        let o = g.tensor(&[batch * tq, d], DType::F32)?;
        let (k, v) = (
            View::strided(cross, 0, 2 * d),
            View::strided(cross, d, 2 * d),
        );
        let a = attn(batch, tq, enc_len, heads, d);
        attention(g, View::rows(g, q), k, v, o, &a)?;
        let h = self.cross_out.forward(g, o)?;
        let x = add_norm(g, &self.cross_norm, x, h)?;

        let h = self.ffn.forward(g, x)?;
        add_norm(g, &self.ffn_norm, x, h)
    }
}

/// The decoder's state for one image: per layer the self-attention cache and the projected
/// encoder K/V, both `[batch, rows, 2D]` (k columns, then v).
pub struct DecoderCache {
    /// Per decoder layer, the self-attention K/V cache `[batch, capacity, 2D]`.
    pub self_kv: Vec<Tensor>,
    /// Per decoder layer, the projected encoder K/V `[batch, enc_len, 2D]`.
    pub cross_kv: Vec<Tensor>,
    /// Sequences decoded together (one per prompt).
    pub batch: usize,
    /// Decoder positions the self-attention cache holds.
    pub capacity: usize,
    /// Encoder rows per sequence.
    pub enc_len: usize,
    /// u32 `[batch, 1]`: the decoder position of each sequence's next token, written by
    /// [`Decoder::before_step`] before each step.
    pub positions: Tensor,
}

impl generate::Cache for DecoderCache {
    fn max_context(&self) -> usize {
        self.capacity
    }

    fn bytes(&self) -> u64 {
        let all = self.self_kv.iter().chain(&self.cross_kv);
        all.map(|t| t.layout.bytes()).sum()
    }
}

/// The Florence-2 BART: embeddings, encoder, decoder and head.
pub struct Bart {
    /// Text (BART) configuration.
    pub cfg: TextConfig,
    /// `[V, D]`: token embeddings of both stacks and the LM head (tied).
    shared: Tensor,
    /// `[V]`, where the checkpoint stores one (Microsoft's layout).
    final_logits_bias: Option<Tensor>,
    enc_embed: Embeddings,
    enc_layers: Vec<EncoderLayer>,
    dec_embed: Embeddings,
    dec_layers: Vec<DecoderLayer>,
}

impl Bart {
    /// Loads the model from `src` (canonical names); `with_logits_bias` when the files store
    /// `final_logits_bias`. Matrices are stored as `dtype`, vectors as f32.
    pub fn load(
        gpu: &Gpu,
        src: &Source,
        cfg: &TextConfig,
        dtype: DType,
        with_logits_bias: bool,
    ) -> Result<Bart> {
        if cfg.activation_function != "gelu" {
            return Err(Error::input(format!(
                "text_config.activation_function = {:?}: only exact \"gelu\" is supported",
                cfg.activation_function
            )));
        }
        let (d, v) = (cfg.d_model, cfg.vocab_size);
        let final_logits_bias = if with_logits_bias {
            let b = src(FINAL_LOGITS_BIAS, &[1, v])?;
            Some(Tensor::from_f32(
                gpu,
                &[v],
                DType::F32,
                &b,
                FINAL_LOGITS_BIAS,
            )?)
        } else {
            None
        };
        let layers = |part: &'static str, n: usize| {
            (0..n).map(move |k| format!("{PREFIX}.{part}.layers.{k}"))
        };
        Ok(Bart {
            cfg: cfg.clone(),
            shared: param(gpu, src, SHARED, &[v, d], dtype)?,
            final_logits_bias,
            enc_embed: Embeddings::load(gpu, src, "encoder", cfg)?,
            enc_layers: layers("encoder", cfg.encoder_layers)
                .map(|p| EncoderLayer::load(gpu, src, &p, cfg, dtype))
                .collect::<Result<_>>()?,
            dec_embed: Embeddings::load(gpu, src, "decoder", cfg)?,
            dec_layers: layers("decoder", cfg.decoder_layers)
                .map(|p| DecoderLayer::load(gpu, src, &p, cfg, dtype))
                .collect::<Result<_>>()?,
        })
    }

    /// Loads the language model of a Florence-2 checkpoint in any of its layouts.
    pub fn from_checkpoint(gpu: &Gpu, ck: &Florence2Checkpoint, dtype: DType) -> Result<Bart> {
        let with_bias = ck.actual_name(FINAL_LOGITS_BIAS)?.is_some();
        let src = |name: &str, shape: &[usize]| ck.load(name, shape);
        Bart::load(gpu, &src, ck.text(), dtype, with_bias)
    }

    /// Token embeddings of u32 `ids` (any shape) → f32 `ids.shape + [D]`.
    fn embed_tokens(&self, g: &mut Graph, ids: TensorId) -> Result<TensorId> {
        let mut shape = g.shape(ids).to_vec();
        shape.push(self.cfg.d_model);
        let out = g.tensor(&shape, DType::F32)?;
        let table = g.external(&self.shared);
        let scale = self
            .cfg
            .scale_embedding
            .then(|| (self.cfg.d_model as f32).sqrt());
        embed::embed(g, ids, table, scale, out)?;
        Ok(out)
    }

    /// Records the encoder over `[features ; shared[ids[b]]]` for every prompt b: `features` is V
    /// (`[N, D]`, shared by all prompts), `ids` u32 `[B, L]` (padded prompts attend to their pads,
    /// as Florence-VL runs them). Returns `[B, N + L, D]`.
    pub fn encode(&self, g: &mut Graph, features: TensorId, ids: TensorId) -> Result<TensorId> {
        let d = self.cfg.d_model;
        let (n, fd) = (g.layout(features).rows(), g.layout(features).cols());
        let &[batch, len] = g.shape(ids) else {
            return Err(Error::shape(format!(
                "encoder: prompt ids have shape {:?}, expected [B, L]",
                g.shape(ids)
            )));
        };
        let seq = n + len;
        if fd != d || seq > self.cfg.max_position_embeddings {
            return Err(Error::shape(format!(
                "encoder: {n} image rows of width {fd} and {len} prompt tokens: expected width {d} and at most {} rows in all",
                self.cfg.max_position_embeddings
            )));
        }
        let text = self.embed_tokens(g, ids)?;
        let x = g.tensor(&[batch, seq, d], DType::F32)?;
        for b in 0..batch {
            copy(g, features, x, &Block::whole(n, d, b * seq, 0))?;
            let prompt = Block {
                src_row: b * len,
                ..Block::whole(len, d, b * seq + n, 0)
            };
            copy(g, text, x, &prompt)?;
        }
        let rows: Vec<u32> = (0..batch).flat_map(|_| 0..seq as u32).collect();
        let rows = Tensor::from_u32(g.gpu(), &[batch, seq], &rows, "encoder positions")?;
        let rows = g.external(&rows);
        let mut x = self.enc_embed.forward(g, x, rows)?;
        for layer in &self.enc_layers {
            x = layer.forward(g, x, batch, self.cfg.encoder_attention_heads)?;
        }
        Ok(x)
    }

    /// Allocates the decoder state for `batch` sequences of up to `capacity` decoder positions
    /// over `enc_len` encoder rows each.
    pub fn new_cache(
        &self,
        gpu: &Gpu,
        batch: usize,
        capacity: usize,
        enc_len: usize,
    ) -> Result<DecoderCache> {
        if capacity > self.cfg.max_position_embeddings {
            return Err(Error::input(format!(
                "{capacity} decoder positions exceed max_position_embeddings = {}",
                self.cfg.max_position_embeddings
            )));
        }
        let d2 = 2 * self.cfg.d_model;
        let n = self.dec_layers.len();
        let alloc = |rows, what| {
            (0..n)
                .map(|k| Tensor::empty(gpu, &[batch, rows, d2], DType::F32, &format!("{what} {k}")))
                .collect::<Result<Vec<_>>>()
        };
        Ok(DecoderCache {
            self_kv: alloc(capacity, "self kv")?,
            cross_kv: alloc(enc_len, "cross kv")?,
            positions: Tensor::from_u32(gpu, &[batch, 1], &vec![0; batch], "decoder positions")?,
            batch,
            capacity,
            enc_len,
        })
    }

    /// Records the projection of the encoder output `enc` (`[B, enc_len, D]`) into the cache's
    /// cross-attention K/V (once per image).
    pub fn cross_kv(&self, g: &mut Graph, enc: TensorId, cache: &DecoderCache) -> Result<()> {
        for (layer, kv) in self.dec_layers.iter().zip(&cache.cross_kv) {
            let out = g.external(kv);
            let w = g.external(&layer.cross_kv.weight);
            let b = layer.cross_kv.bias.as_ref().map(|b| g.external(b));
            matmul::linear(g, enc, w, b, out)?;
        }
        Ok(())
    }

    /// Records one decoder pass: `ids` and `positions` (u32 `[B, T]`; positions from 0) are the
    /// new tokens, following the `run[PAST_SLOT]` already cached; `run[KV_LEN_SLOT]` must be
    /// that past length + T. Returns the logits `[B, T, V]`.
    pub fn decode(
        &self,
        g: &mut Graph,
        ids: TensorId,
        positions: TensorId,
        cache: &DecoderCache,
    ) -> Result<TensorId> {
        let &[batch, tq] = g.shape(ids) else {
            return Err(Error::shape(format!(
                "decoder: ids have shape {:?}, expected [B, T]",
                g.shape(ids)
            )));
        };
        if batch != cache.batch || g.shape(positions) != [batch, tq] {
            return Err(Error::shape(format!(
                "decoder: ids {:?} and positions {:?} for a cache of batch {}",
                g.shape(ids),
                g.shape(positions),
                cache.batch
            )));
        }
        let x = self.embed_tokens(g, ids)?;
        self.decode_embedded(g, x, positions, cache)
    }

    /// [`Bart::decode`] from the token embeddings `x` (`[B, T, D]`, or `[B, D]` for one token
    /// per sequence) and their `positions` (`x`'s shape less `D`); logits `x.shape[..-1] + [V]`.
    fn decode_embedded(
        &self,
        g: &mut Graph,
        x: TensorId,
        positions: TensorId,
        cache: &DecoderCache,
    ) -> Result<TensorId> {
        // The logits take `x`'s shape with the vocabulary as the last dimension.
        let mut shape = g.shape(x).to_vec();
        shape.pop();
        shape.push(self.cfg.vocab_size);
        let batch = cache.batch;
        let mut x = self.dec_embed.forward(g, x, positions)?;
        for (k, layer) in self.dec_layers.iter().enumerate() {
            let kv = g.external(&cache.self_kv[k]);
            let cross = g.external(&cache.cross_kv[k]);
            x = layer.forward(g, x, kv, cross, batch, self.cfg.decoder_attention_heads)?;
        }
        let logits = g.tensor(&shape, DType::F32)?;
        let w = g.external(&self.shared);
        let b = self.final_logits_bias.as_ref().map(|b| g.external(b));
        matmul::linear(g, x, w, b, logits)?;
        Ok(logits)
    }
}

impl Bart {
    /// Runs the encoder on one prompt over image features `features` (`[N, D]`) and projects
    /// the cross-attention K/V: the state for decoding up to `capacity` positions.
    pub fn prefill(
        &self,
        gpu: &Gpu,
        features: &Tensor,
        prompt: &[u32],
        capacity: usize,
    ) -> Result<DecoderCache> {
        self.prefill_beams(gpu, features, prompt, capacity, 1)
    }

    /// [`Bart::prefill`] for `beams` sequences over the same prompt: the encoder runs once and
    /// its output is copied to every beam before the cross K/V projection.
    fn prefill_beams(
        &self,
        gpu: &Gpu,
        features: &Tensor,
        prompt: &[u32],
        capacity: usize,
        beams: usize,
    ) -> Result<DecoderCache> {
        let rows = features.shape().iter().rev().nth(1).copied().unwrap_or(0);
        let enc_len = rows + prompt.len();
        let cache = self.new_cache(gpu, beams, capacity, enc_len)?;
        let ids = Tensor::from_u32(gpu, &[1, prompt.len()], prompt, "prompt ids")?;
        let mut g = Graph::new(gpu);
        let (v, ids) = (g.external(features), g.external(&ids));
        let mut enc = self.encode(&mut g, v, ids)?;
        if beams > 1 {
            let d = self.cfg.d_model;
            let all = g.tensor(&[beams, enc_len, d], DType::F32)?;
            for b in 0..beams {
                copy(&mut g, enc, all, &Block::whole(enc_len, d, b * enc_len, 0))?;
            }
            enc = all;
        }
        self.cross_kv(&mut g, enc, &cache)?;
        g.build()?.run(gpu, &[])?;
        Ok(cache)
    }

    /// Greedy decoding as HF `generate` with `num_beams = 1`: the decoder starts from
    /// `decoder_start_token_id`; step 1 is forced to `forced_bos_token_id` and the last
    /// allowed step (`max_new_tokens`) to `forced_eos_token_id` where the configs ask for
    /// them; stops after `</s>`. The argmax runs on the GPU and only the id is read back.
    /// Returns the whole decoder sequence, start token included.
    pub fn greedy(
        &self,
        gpu: &Gpu,
        features: &Tensor,
        prompt: &[u32],
        max_new_tokens: usize,
    ) -> Result<Vec<u32>> {
        self.greedy_with(gpu, features, prompt, max_new_tokens, &mut |_| true)
    }

    /// [`Bart::greedy`], calling `on_step` with the sequence after each new token; when it
    /// returns `false` decoding stops and the sequence so far is returned.
    pub fn greedy_with(
        &self,
        gpu: &Gpu,
        features: &Tensor,
        prompt: &[u32],
        max_new_tokens: usize,
        on_step: &mut dyn FnMut(&[u32]) -> bool,
    ) -> Result<Vec<u32>> {
        let cache = self.prefill(gpu, features, prompt, max_new_tokens)?;
        let ids = DecoderIds::of(&self.cfg);
        let mut seq = vec![ids.start];
        if max_new_tokens == 0 {
            return Ok(seq);
        }
        let mut session = Session::with_cache(gpu, self, cache, Pick::Greedy, 0)?;
        session.force(Box::new(move |n| ids.forced(n, max_new_tokens + 1)));
        // The start token goes through the decode step at position 0, like every later one.
        let first = session.decode(Some(ids.start))?;
        let limits = Limits {
            max_new: max_new_tokens,
            reserve: 0,
            keep_stop: false,
        };
        let is_stop = |id| id == ids.eos;
        let out = session.generate(first, &limits, &is_stop, &mut |id| {
            seq.push(id);
            Ok(on_step(&seq))
        })?;
        if out.stopped == generate::Stop::Eos {
            seq.push(ids.eos);
        }
        Ok(seq)
    }

    /// Beam search as HF `generate` with `num_beams > 1` (see [`BeamSearch`]): the beams run
    /// as one batch, one submit per step; each step reorders the self-attention caches to the
    /// surviving beams on the GPU, reads back the `[num_beams, V]` logits and selects on the
    /// host. Returns the best finished sequence, decoder start token first, `</s>` last.
    ///
    /// With `num_beams = 1` and `early_stopping` this is HF's greedy search, including a
    /// `no_repeat_ngram_size` (which [`Bart::greedy`], all on the GPU, does not apply).
    pub fn beam_search(
        &self,
        gpu: &Gpu,
        features: &Tensor,
        prompt: &[u32],
        opts: &BeamOptions,
    ) -> Result<Vec<u32>> {
        self.beam_search_with(gpu, features, prompt, opts, &mut |_| true)
    }

    /// [`Bart::beam_search`], calling `on_step` after each step; when it returns `false` the
    /// search stops and the best running sequence is returned.
    pub fn beam_search_with(
        &self,
        gpu: &Gpu,
        features: &Tensor,
        prompt: &[u32],
        opts: &BeamOptions,
        on_step: &mut dyn FnMut(&BeamSearch) -> bool,
    ) -> Result<Vec<u32>> {
        let mut search = BeamSearch::new(opts, &DecoderIds::of(&self.cfg))?;
        let beams = opts.num_beams;
        let cache = self.prefill_beams(gpu, features, prompt, opts.max_new_tokens, beams)?;
        generate::beam_search(gpu, self, &cache, &mut search, on_step)
    }
}

impl Decoder for Bart {
    type Cache = DecoderCache;

    fn hidden(&self) -> usize {
        self.cfg.d_model
    }

    fn embed(&self, g: &mut Graph, ids: TensorId) -> Result<TensorId> {
        self.embed_tokens(g, ids)
    }

    /// One token per sequence of the cache (`x`: `[batch, D]`): the prompt goes to the
    /// encoder, so the decoder only ever steps a token at a time. Returns `[batch, 1, V]`.
    fn forward(
        &self,
        g: &mut Graph,
        x: TensorId,
        cache: &DecoderCache,
        _: bool,
    ) -> Result<TensorId> {
        if g.layout(x).rows() != cache.batch {
            return Err(Error::shape(format!(
                "decoder: {:?} embedded tokens for {} sequences; a step decodes one token of each",
                g.shape(x),
                cache.batch
            )));
        }
        let positions = cache.positions.view_as(g.gpu(), &[cache.batch])?;
        let positions = g.external(&positions);
        self.decode_embedded(g, x, positions, cache)
    }

    /// Gathers every layer's self-attention cache row by row (through a scratch copy, as a
    /// gather can't write its own input).
    fn reorder(&self, g: &mut Graph, cache: &DecoderCache, sources: TensorId) -> Result<()> {
        let rows = cache.batch * cache.capacity;
        let d2 = 2 * self.cfg.d_model;
        for kv in &cache.self_kv {
            // The cache as a table of rows, the shape the gather takes (same storage).
            let table = kv.view_as(g.gpu(), &[rows, d2])?;
            let table = g.external(&table);
            let scratch = g.tensor(&[rows, d2], DType::F32)?;
            embed::embed(g, sources, table, None, scratch)?;
            copy(g, scratch, table, &Block::whole(rows, d2, 0, 0))?;
        }
        Ok(())
    }

    fn before_step(&self, gpu: &Gpu, cache: &DecoderCache, past: usize, _: usize) -> Result<()> {
        cache
            .positions
            .write_words(gpu, &vec![past as u32; cache.batch]);
        Ok(())
    }
}
