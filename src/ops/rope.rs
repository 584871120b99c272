//! Rotary position embedding (`shaders/rope.wgsl`), HF Llama "rotate half" convention, and
//! the inverse frequencies it rotates by (with Llama 3 frequency scaling).

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

/// Rotates `x` in place: the `batch·tokens` rows of the view, `n_heads·head_dim` columns
/// from its column offset, by `inv_freq` (f32 `[head_dim/2]`, see [`inv_freq`]). The angle
/// is reduced exactly on the GPU (see `shaders/rope.wgsl`) for positions below 2¹⁸.
pub fn rope(g: &mut Graph, x: View, inv_freq: TensorId, r: &Rope) -> Result<()> {
    let op = "rope";
    expect_f32(g, op, "x", x.id)?;
    expect_f32(g, op, "inv_freq", inv_freq)?;
    if r.head_dim == 0 || r.head_dim % 2 == 1 || r.n_heads == 0 || r.tokens == 0 {
        return Err(Error::shape(format!(
            "{op}: head_dim must be even and positive, heads and tokens positive (got {r:?})"
        )));
    }
    expect_shape(g, op, "inv_freq", inv_freq, &[r.head_dim / 2])?;
    let rows = r.batch * r.tokens;
    x.check(g, op, "x", rows, r.n_heads * r.head_dim)?;
    let (pos_slot, pos0) = r.pos0.encode(op, "pos0")?;
    let pairs = rows * r.n_heads * r.head_dim / 2;
    let p = Params {
        pairs: pairs as u32,
        tokens: r.tokens as u32,
        n_heads: r.n_heads as u32,
        half_dim: (r.head_dim / 2) as u32,
        col_offset: x.col_offset as u32,
        row_stride: x.row_stride as u32,
        pos_slot,
        pos0,
    };
    let (name, source) = shader!("rope", run);
    g.dispatch(Kernel {
        name,
        source,
        entry: "rope",
        consts: vec![("WG", WG)],
        defines: vec![],
        params: bytemuck::bytes_of(&p),
        tensors: vec![
            ("x", x.id, Access::Write),
            ("inv_freq", inv_freq, Access::Read),
        ],
        workgroups: grid(p.pairs.div_ceil(WG)),
    })
}
