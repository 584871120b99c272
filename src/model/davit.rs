//! DaViT, Florence-2's vision backbone (spec §3): four stages, each a convolutional patch
//! embedding followed by pairs of blocks — a spatial block (window attention) and a channel
//! block (channel-group attention) — every sub-step a residual:
//!
//! ```text
//! x = x + dwconv(x);  x = x + attn(LN(x));  x = x + dwconv(x);  x = x + MLP(LN(x))
//! ```
//!
//! Tokens are `[h·w, C]`, row-major over the grid. Head and group width is C / heads.

use crate::gpu::{DType, Gpu, Graph, TensorId};
use crate::ops::attention::{self, Attention};
use crate::ops::conv::{self, Conv2d, ConvInput};
use crate::ops::{channel_attn, window, RunValue, View};
use crate::weights::florence2::VisionConfig;
use crate::{Error, Result};

use super::layers::{add, param, DwConvResidual, LayerNorm, Linear, Mlp, Source};

const LN_EPS: f32 = 1e-5;
const PREFIX: &str = "model.vision_tower";

/// Convolutional patch embedding: `LN → conv` (pre-norm stages) or `conv → LN` (stage 0).
struct ConvEmbed {
    conv: Conv2d,
    weight: crate::gpu::Tensor,
    bias: crate::gpu::Tensor,
    norm: LayerNorm,
    pre_norm: bool,
}

/// Which attention a block runs in its second sub-step.
enum Mixer {
    /// Window attention over `window × window` tiles, `heads` heads.
    Window { heads: usize, window: usize },
    /// Channel-group attention over all tokens, `groups` groups.
    Channel { groups: usize },
}

/// One spatial or channel block.
struct Block {
    conv1: DwConvResidual,
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    mixer: Mixer,
    conv2: DwConvResidual,
    norm2: LayerNorm,
    ffn: Mlp,
}

impl Block {
    #[allow(clippy::too_many_arguments)]
    fn load(
        gpu: &Gpu,
        src: &Source,
        prefix: &str,
        dim: usize,
        mlp_hidden: usize,
        mixer: Mixer,
        qkv_bias: bool,
        dtype: DType,
    ) -> Result<Block> {
        let attn = match mixer {
            Mixer::Window { .. } => "window_attn",
            Mixer::Channel { .. } => "channel_attn",
        };
        Ok(Block {
            conv1: DwConvResidual::load(gpu, src, &format!("{prefix}.conv1"), dim, dtype)?,
            norm1: LayerNorm::load(gpu, src, &format!("{prefix}.norm1"), dim, LN_EPS)?,
            qkv: Linear::load(
                gpu,
                src,
                &format!("{prefix}.{attn}.qkv"),
                3 * dim,
                dim,
                qkv_bias,
                dtype,
            )?,
            proj: Linear::load(
                gpu,
                src,
                &format!("{prefix}.{attn}.proj"),
                dim,
                dim,
                true,
                dtype,
            )?,
            mixer,
            conv2: DwConvResidual::load(gpu, src, &format!("{prefix}.conv2"), dim, dtype)?,
            norm2: LayerNorm::load(gpu, src, &format!("{prefix}.norm2"), dim, LN_EPS)?,
            ffn: Mlp::load_fc(gpu, src, &format!("{prefix}.ffn"), dim, mlp_hidden, dtype)?,
        })
    }

    fn forward(&self, g: &mut Graph, x: TensorId, hw: (usize, usize)) -> Result<TensorId> {
        let dim = *g.shape(x).last().unwrap();
        let x = self.conv1.forward(g, x, hw)?;
        let h = self.norm1.forward(g, x)?;
        let x = match self.mixer {
            Mixer::Window { heads, window: ws } => {
                // Zero-pad bottom/right to whole windows after the norm (padded tokens take part
                // as keys and queries, as in the reference), attend per window, crop back.
                let count = window::window_count(hw.0, hw.1, ws);
                let windows = g.tensor(&[count, ws * ws, dim], DType::F32)?;
                window::partition(g, h, hw, ws, windows)?;
                let qkv = self.qkv.forward(g, windows)?;
                let head_dim = dim / heads;
                let attended = g.tensor(&[count, ws * ws, dim], DType::F32)?;
                let view = |off| View::strided(qkv, off, 3 * dim);
                let a = Attention {
                    batch: count,
                    tq: ws * ws,
                    s_max: ws * ws,
                    q_heads: heads,
                    kv_heads: heads,
                    head_dim,
                    kv_len: RunValue::Fixed((ws * ws) as u32),
                    causal: false,
                    window: None,
                    scale: (head_dim as f32).powf(-0.5),
                };
                attention::attention(g, view(0), view(dim), view(2 * dim), attended, &a)?;
                let projected = self.proj.forward(g, attended)?;
                let out = g.tensor_like(x)?;
                window::merge(g, projected, hw, ws, Some(x), out)?;
                out
            }
            Mixer::Channel { groups } => {
                let qkv = self.qkv.forward(g, h)?;
                let mixed = g.tensor(&[hw.0 * hw.1, dim], DType::F32)?;
                channel_attn::channel_attention(g, qkv, hw.0 * hw.1, groups, mixed)?;
                let projected = self.proj.forward(g, mixed)?;
                add(g, x, projected)?
            }
        };
        let x = self.conv2.forward(g, x, hw)?;
        let h = self.norm2.forward(g, x)?;
        let f = self.ffn.forward(g, h)?;
        add(g, x, f)
    }
}

struct Stage {
    embed: ConvEmbed,
    blocks: Vec<Block>,
}

/// The DaViT backbone with its weights on the GPU.
pub struct Davit {
    stages: Vec<Stage>,
}

impl Davit {
    /// Loads every stage from `src` (canonical HF-native names). Linear and conv weights are
    /// stored as `dtype`; norms and biases stay f32.
    pub fn load(gpu: &Gpu, src: &Source, cfg: &VisionConfig, dtype: DType) -> Result<Davit> {
        let mut stages = Vec::new();
        let mut in_dim = cfg.in_channels;
        for s in 0..cfg.embed_dim.len() {
            let dim = cfg.embed_dim[s];
            let k = cfg.patch_size[s];
            let pre_norm = cfg.patch_prenorm[s];
            let input = if s == 0 {
                ConvInput::Chw
            } else {
                ConvInput::Hwc { h: 0, w: 0 }
            };
            let conv = Conv2d::square(k, cfg.patch_stride[s], cfg.patch_padding[s], input);
            let p = format!("{PREFIX}.convs.{s}");
            // Quantized conv weights would need rows of C_in·k² that are whole blocks; keep f16.
            let conv_dtype = if dtype.is_quantized() {
                DType::F16
            } else {
                dtype
            };
            let weight = param(
                gpu,
                src,
                &format!("{p}.conv.weight"),
                &[dim, in_dim, k, k],
                conv_dtype,
            )?;
            let bias = param(gpu, src, &format!("{p}.conv.bias"), &[dim], DType::F32)?;
            let norm = LayerNorm::load(
                gpu,
                src,
                &format!("{p}.norm"),
                if pre_norm { in_dim } else { dim },
                LN_EPS,
            )?;
            let hidden = cfg.mlp_hidden(dim);
            let mut blocks = Vec::new();
            for j in 0..cfg.depths[s] {
                let b = format!("{PREFIX}.blocks.{s}.{j}");
                // Heads and groups divide the width: the config is checked against the weights.
                let window = Mixer::Window {
                    heads: cfg.num_heads[s],
                    window: cfg.window_size,
                };
                let channel = Mixer::Channel {
                    groups: cfg.num_groups[s],
                };
                let spatial = Block::load(
                    gpu,
                    src,
                    &format!("{b}.spatial_block"),
                    dim,
                    hidden,
                    window,
                    cfg.qkv_bias,
                    dtype,
                )?;
                blocks.push(spatial);
                blocks.push(Block::load(
                    gpu,
                    src,
                    &format!("{b}.channel_block"),
                    dim,
                    hidden,
                    channel,
                    cfg.qkv_bias,
                    dtype,
                )?);
            }
            stages.push(Stage {
                embed: ConvEmbed {
                    conv,
                    weight,
                    bias,
                    norm,
                    pre_norm,
                },
                blocks,
            });
            in_dim = dim;
        }
        Ok(Davit { stages })
    }

    /// Records the backbone on `pixels` (`[3, H, W]`); returns the last stage's tokens
    /// `[h·w, C]` and the grid `(h, w)`.
    pub fn forward(&self, g: &mut Graph, pixels: TensorId) -> Result<(TensorId, (usize, usize))> {
        let shape = g.shape(pixels).to_vec();
        let mut hw = (shape[1], shape[2]);
        let mut x = pixels;
        for (s, stage) in self.stages.iter().enumerate() {
            let e = &stage.embed;
            let mut conv = e.conv;
            if s > 0 {
                conv.input = ConvInput::Hwc { h: hw.0, w: hw.1 };
            }
            let out_hw = conv.out_hw(hw.0, hw.1).ok_or_else(|| {
                Error::input(format!(
                    "image of {}×{} is too small for DaViT stage {s}",
                    hw.0, hw.1
                ))
            })?;
            if e.pre_norm {
                x = e.norm.forward(g, x)?;
            }
            let out = g.tensor(&[out_hw.0 * out_hw.1, e.weight.shape()[0]], DType::F32)?;
            let (w, b) = (g.external(&e.weight), g.external(&e.bias));
            conv::conv2d(g, &conv, x, w, Some(b), out)?;
            x = if e.pre_norm {
                out
            } else {
                e.norm.forward(g, out)?
            };
            hw = out_hw;
            for block in &stage.blocks {
                x = block.forward(g, x, hw)?;
            }
        }
        Ok((x, hw))
    }
}
