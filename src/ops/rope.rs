//! Rotary position embedding (`shaders/rope.wgsl`), HF Llama "rotate half" convention, and
//! the inverse frequencies it rotates by (with Llama 3 frequency scaling, or LongRoPE's two
//! tables and attention factor).

use bytemuck::{Pod, Zeroable};

use super::{expect_f32, expect_shape, shader, RunValue, View, WG};
use crate::error::{Error, Result};
use crate::gpu::{grid, Access, Graph, Kernel, TensorId};

/// Llama 3 `rope_scaling` (`rope_type: "llama3"` in a transformers config).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    /// Divisor of the low frequencies (long wavelengths).
    pub factor: f64,
    /// `orig / low_freq_factor`: wavelengths above it are fully scaled.
    pub low_freq_factor: f64,
    /// `orig / high_freq_factor`: wavelengths below it are unchanged.
    pub high_freq_factor: f64,
    /// Context length the base model was trained for (`orig`).
    pub original_max_position_embeddings: f64,
}

/// LongRoPE (Phi-3, `rope_type: "longrope"`): per-frequency divisors for sequences that fit
/// the original context (`short_factor`) and for longer ones (`long_factor`).
#[derive(Clone, Debug, PartialEq)]
pub struct LongRope {
    /// `head_dim / 2` divisors while the sequence fits `original_max_position_embeddings`.
    pub short_factor: Vec<f64>,
    /// `head_dim / 2` divisors beyond it.
    pub long_factor: Vec<f64>,
    /// The context the base model was trained for.
    pub original_max_position_embeddings: usize,
    /// cos and sin are multiplied by this (transformers' `attention_factor`).
    pub attention_factor: f64,
}

/// A RoPE frequency scaling.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Llama 3.1's smooth low-frequency scaling.
    Llama3(Llama3Scaling),
    /// Phi-3's LongRoPE.
    LongRope(LongRope),
}

/// What a model's rope kernels read: one or two frequency tables and the scale of cos/sin.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeTables {
    /// `[tables · head_dim/2]` inverse frequencies (LongRoPE: short, then long).
    pub inv_freq: Vec<f32>,
    /// A graph whose sequence (first position + tokens) is longer than this uses the second
    /// table.
    pub long_after: Option<usize>,
    /// Multiplies cos and sin.
    pub scale: f32,
}

impl RopeTables {
    /// The tables for `head_dim`, base `theta` and an optional scaling, as transformers'
    /// `ROPE_INIT_FUNCTIONS` compute them (LongRoPE: `1 / (factor_i · θ^(2i/d))`).
    pub fn new(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> RopeTables {
        match scaling {
            None => RopeTables::single(inv_freq(head_dim, theta, None)),
            Some(RopeScaling::Llama3(s)) => RopeTables::single(inv_freq(head_dim, theta, Some(*s))),
            Some(RopeScaling::LongRope(l)) => {
                let base = inv_freq(head_dim, theta, None);
                let scaled = l.short_factor.iter().chain(&l.long_factor);
                RopeTables {
                    inv_freq: base.iter().cycle().zip(scaled).map(|(&i, &f)| (i as f64 / f) as f32).collect(),
                    long_after: Some(l.original_max_position_embeddings),
                    scale: l.attention_factor as f32,
                }
            }
        }
    }

    fn single(inv_freq: Vec<f32>) -> RopeTables {
        RopeTables {
            inv_freq,
            long_after: None,
            scale: 1.0,
        }
    }
}

/// The `head_dim / 2` inverse frequencies `theta^(−2i/head_dim)`, computed in f64 and rounded
/// once to f32 (transformers computes them in f32, which can differ by an ulp), optionally
/// rescaled as transformers' `_compute_llama3_parameters`: wavelengths shorter than
/// `orig / high_freq_factor` keep their frequency, longer than `orig / low_freq_factor` are
/// divided by `factor`, and those between interpolate smoothly.
pub fn inv_freq(head_dim: usize, theta: f64, scaling: Option<Llama3Scaling>) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let inv = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            let Some(s) = scaling else {
                return inv as f32;
            };
            let wavelen = 2.0 * std::f64::consts::PI / inv;
            let orig = s.original_max_position_embeddings;
            if wavelen < orig / s.high_freq_factor {
                inv as f32
            } else if wavelen > orig / s.low_freq_factor {
                (inv / s.factor) as f32
            } else {
                let smooth =
                    (orig / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                ((1.0 - smooth) * inv / s.factor + smooth * inv) as f32
            }
        })
        .collect()
}

/// Shape of a RoPE application: `batch` sequences of `tokens` rows, each row holding
/// `n_heads` heads of `head_dim` columns; token `t` of every sequence sits at `pos0 + t`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    /// Independent sequences.
    pub batch: usize,
    /// Rows per sequence.
    pub tokens: usize,
    /// Heads per row.
    pub n_heads: usize,
    /// Columns per head (even; halves are rotated together).
    pub head_dim: usize,
    /// Position of the first token: fixed, or per replay (the decode position).
    pub pos0: RunValue,
    /// With two frequency tables: the second is used when `pos0 + tokens` exceeds this.
    pub long_after: Option<usize>,
    /// Multiplies cos and sin (1 except for LongRoPE).
    pub scale: f32,
}

impl Rope {
    /// A plain rotation (one table, scale 1).
    pub fn plain(batch: usize, tokens: usize, n_heads: usize, head_dim: usize, pos0: RunValue) -> Rope {
        Rope {
            batch,
            tokens,
            n_heads,
            head_dim,
            pos0,
            long_after: None,
            scale: 1.0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    pairs: u32,
    tokens: u32,
    n_heads: u32,
    half_dim: u32,
    col_offset: u32,
    row_stride: u32,
    pos_slot: u32,
    pos0: u32,
    long_after: u32,
    scale: f32,
    kv_head0: u32,
    kv_dim: u32,
    v_col: u32,
}

/// The KV cache rows a fused-qkv rotation writes (see [`rope_qkv_to_cache`]).
pub struct CacheWrite {
    /// Query heads at the start of each row (rotated in place).
    pub q_heads: usize,
    /// Key heads after them (rotated into `k_cache`); as many value heads follow.
    pub kv_heads: usize,
    /// `[S, kv_heads·head_dim]` f32 keys; row `pos0 + t` is written.
    pub k_cache: TensorId,
    /// `[S, kv_heads·head_dim]` f32 values.
    pub v_cache: TensorId,
}

/// Rotates `x` in place: the `batch·tokens` rows of the view, `n_heads·head_dim` columns
/// from its column offset, by `inv_freq` (f32 `[tables · head_dim/2]`, see [`RopeTables`]).
/// The angle is reduced exactly on the GPU (see `shaders/rope.wgsl`) for positions below 2¹⁸.
pub fn rope(g: &mut Graph, x: View, inv_freq: TensorId, r: &Rope) -> Result<()> {
    launch(g, x, inv_freq, r, None)
}

/// One dispatch for a decoder's rope and cache append: the rows of `qkv` (`[t, (q_heads +
/// 2·kv_heads)·head_dim]`, contiguous) hold q, k and v heads; q is rotated in place, k is
/// rotated into `k_cache` and v copied into `v_cache`, both at rows `pos0..pos0 + t`
/// (`r.n_heads` is ignored: the heads come from `w`).
pub fn rope_qkv_to_cache(
    g: &mut Graph,
    qkv: TensorId,
    inv_freq: TensorId,
    r: &Rope,
    w: &CacheWrite,
) -> Result<()> {
    let op = "rope";
    let kv_dim = w.kv_heads * r.head_dim;
    let width = (w.q_heads + 2 * w.kv_heads) * r.head_dim;
    if r.batch != 1 {
        return Err(Error::shape(format!("{op}: a cache write takes one sequence (got {r:?})")));
    }
    for (what, t) in [("k_cache", w.k_cache), ("v_cache", w.v_cache)] {
        expect_f32(g, op, what, t)?;
        if g.layout(t).cols() != kv_dim {
            return Err(Error::shape(format!(
                "{op}: {what} has shape {:?}, expected [positions, {kv_dim}]",
                g.shape(t)
            )));
        }
    }
    let r = Rope {
        n_heads: w.q_heads + w.kv_heads,
        ..*r
    };
    launch(g, View::strided(qkv, 0, width), inv_freq, &r, Some((w, width)))
}

fn launch(
    g: &mut Graph,
    x: View,
    inv_freq: TensorId,
    r: &Rope,
    cache: Option<(&CacheWrite, usize)>,
) -> Result<()> {
    let op = "rope";
    expect_f32(g, op, "x", x.id)?;
    expect_f32(g, op, "inv_freq", inv_freq)?;
    if r.head_dim == 0 || r.head_dim % 2 == 1 || r.n_heads == 0 || r.tokens == 0 {
        return Err(Error::shape(format!(
            "{op}: head_dim must be even and positive, heads and tokens positive (got {r:?})"
        )));
    }
    let tables = if r.long_after.is_some() { 2 } else { 1 };
    expect_shape(g, op, "inv_freq", inv_freq, &[tables * r.head_dim / 2])?;
    let rows = r.batch * r.tokens;
    let cols = match cache {
        Some((_, width)) => width,
        None => r.n_heads * r.head_dim,
    };
    x.check(g, op, "x", rows, cols)?;
    let (pos_slot, pos0) = r.pos0.encode(op, "pos0")?;
    let pairs = rows * r.n_heads * r.head_dim / 2;
    let mut p = Params {
        pairs: pairs as u32,
        tokens: r.tokens as u32,
        n_heads: r.n_heads as u32,
        half_dim: (r.head_dim / 2) as u32,
        col_offset: x.col_offset as u32,
        row_stride: x.row_stride as u32,
        pos_slot,
        pos0,
        long_after: r.long_after.map_or(u32::MAX, |l| l.min(u32::MAX as usize) as u32),
        scale: r.scale,
        kv_head0: r.n_heads as u32,
        kv_dim: 0,
        v_col: 0,
    };
    let mut tensors = vec![
        ("x", x.id, Access::Write),
        ("inv_freq", inv_freq, Access::Read),
    ];
    let mut defines = vec![];
    if let Some((w, _)) = cache {
        p.kv_head0 = w.q_heads as u32;
        p.kv_dim = (w.kv_heads * r.head_dim) as u32;
        p.v_col = ((w.q_heads + w.kv_heads) * r.head_dim) as u32;
        tensors.push(("k_cache", w.k_cache, Access::Write));
        tensors.push(("v_cache", w.v_cache, Access::Write));
        defines.push("KV");
    }
    let workgroups = grid(p.pairs.div_ceil(WG));
    let kernel = Kernel::new(shader!("rope", run), "rope", &p, tensors, workgroups);
    g.dispatch(kernel.consts(&[("WG", WG)]).defines(defines))
}
