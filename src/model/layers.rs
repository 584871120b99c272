//! Small building blocks shared by the models: each holds its weights on the GPU and records
//! its forward pass into a graph. Weights come from a [`Source`], so layers never see file
//! formats or naming schemes.

use crate::gpu::{DType, Gpu, Graph, Tensor, TensorId};
use crate::ops::eltwise::{self, Binary, Unary};
use crate::ops::{conv, matmul, norm};
use crate::Result;

/// Where weights come from: `(name, expected shape) → f32 values`, failing with a message that
/// names the tensor (missing, or a shape other than expected).
pub type Source<'a> = dyn Fn(&str, &[usize]) -> Result<Vec<f32>> + 'a;

/// Uploads `name` with `shape` as `dtype`.
pub fn param(gpu: &Gpu, src: &Source, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
    Tensor::from_f32(gpu, shape, dtype, &src(name, shape)?, name)
}

/// `y = x·Wᵀ + b` (PyTorch `nn.Linear`).
pub struct Linear {
    /// `[out, inp]` weight matrix.
    pub weight: Tensor,
    /// `[out]` bias (f32), if the layer has one.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Loads `{prefix}.weight` `[out, inp]` as `dtype` and, with `bias`, `{prefix}.bias` (f32).
    pub fn load(
        gpu: &Gpu,
        src: &Source,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
        dtype: DType,
    ) -> Result<Linear> {
        Ok(Linear {
            weight: param(gpu, src, &format!("{prefix}.weight"), &[out, inp], dtype)?,
            bias: if bias {
                Some(param(
                    gpu,
                    src,
                    &format!("{prefix}.bias"),
                    &[out],
                    DType::F32,
                )?)
            } else {
                None
            },
        })
    }

    /// Records `x·Wᵀ + b` into a new intermediate.
    pub fn forward(&self, g: &mut Graph, x: TensorId) -> Result<TensorId> {
        self.record(g, x, None)
    }

    /// Records `rmsnorm(x)·Wᵀ` into a new intermediate: the RMSNorm with weight `gain` and
    /// `eps`, then this linear (which has no bias) — one pass for decode.
    pub fn forward_rms(
        &self,
        g: &mut Graph,
        x: TensorId,
        gain: &Tensor,
        eps: f32,
    ) -> Result<TensorId> {
        if self.bias.is_some() {
            return Err(crate::Error::shape("a linear after an RMSNorm has no bias"));
        }
        let out = self.output(g, x)?;
        let (w, gain) = (g.external(&self.weight), g.external(gain));
        matmul::linear_rms(g, x, gain, w, eps, out)?;
        Ok(out)
    }

    /// A new f32 intermediate for this layer's output on `x`.
    fn output(&self, g: &mut Graph, x: TensorId) -> Result<TensorId> {
        let mut shape = g.shape(x).to_vec();
        *shape.last_mut().unwrap() = self.weight.shape()[0];
        g.tensor(&shape, DType::F32)
    }

    /// Records `x·Wᵀ + b + residual` into a new intermediate, in one pass.
    pub fn forward_add(&self, g: &mut Graph, x: TensorId, residual: TensorId) -> Result<TensorId> {
        self.record(g, x, Some(residual))
    }

    fn record(&self, g: &mut Graph, x: TensorId, residual: Option<TensorId>) -> Result<TensorId> {
        let out = self.output(g, x)?;
        let w = g.external(&self.weight);
        let b = self.bias.as_ref().map(|b| g.external(b));
        match residual {
            Some(r) => matmul::linear_add(g, x, w, b, r, out)?,
            None => matmul::linear(g, x, w, b, out)?,
        }
        Ok(out)
    }
}

/// Linears with exact GELU between them: DaViT's and BART's feed-forward (`fc1`, `fc2`) and,
/// with more layers, Florence-VL's projector.
pub struct Mlp {
    /// The linears, first to last.
    pub layers: Vec<Linear>,
}

impl Mlp {
    /// The two-layer feed-forward `{prefix}.fc1` (`dim → hidden`), GELU, `{prefix}.fc2`
    /// (`hidden → dim`), both with biases.
    pub fn load_fc(
        gpu: &Gpu,
        src: &Source,
        prefix: &str,
        dim: usize,
        hidden: usize,
        dtype: DType,
    ) -> Result<Mlp> {
        Ok(Mlp {
            layers: vec![
                Linear::load(gpu, src, &format!("{prefix}.fc1"), hidden, dim, true, dtype)?,
                Linear::load(gpu, src, &format!("{prefix}.fc2"), dim, hidden, true, dtype)?,
            ],
        })
    }

    /// Records `linear → (GELU → linear)*` on `x`.
    pub fn forward(&self, g: &mut Graph, x: TensorId) -> Result<TensorId> {
        gelu_mlp(g, &self.layers, x)
    }
}

/// Records `layers[0] → (GELU → layers[k])*` on `x`: the forward pass of an [`Mlp`], for
/// models that keep their linears elsewhere (Florence-VL's projector).
pub fn gelu_mlp(g: &mut Graph, layers: &[Linear], x: TensorId) -> Result<TensorId> {
    let (first, rest) = layers
        .split_first()
        .ok_or_else(|| crate::Error::shape("an MLP needs at least one linear layer"))?;
    let mut x = first.forward(g, x)?;
    for layer in rest {
        eltwise::unary(g, Unary::Gelu, x, x)?;
        x = layer.forward(g, x)?;
    }
    Ok(x)
}

/// PyTorch `nn.LayerNorm` over the last dimension.
pub struct LayerNorm {
    /// `[dim]` scale (gamma).
    pub weight: Tensor,
    /// `[dim]` shift (beta).
    pub bias: Tensor,
    /// Added to the variance before the square root.
    pub eps: f32,
}

impl LayerNorm {
    /// Loads `{prefix}.weight` and `{prefix}.bias`, both `[dim]`.
    pub fn load(gpu: &Gpu, src: &Source, prefix: &str, dim: usize, eps: f32) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: param(gpu, src, &format!("{prefix}.weight"), &[dim], DType::F32)?,
            bias: param(gpu, src, &format!("{prefix}.bias"), &[dim], DType::F32)?,
            eps,
        })
    }

    /// Records the normalisation of `x` into a new intermediate.
    pub fn forward(&self, g: &mut Graph, x: TensorId) -> Result<TensorId> {
        let out = g.tensor_like(x)?;
        let (w, b) = (g.external(&self.weight), g.external(&self.bias));
        norm::layernorm(g, x, w, b, self.eps, out)?;
        Ok(out)
    }
}

/// Depthwise 3×3 convolution (stride 1, pad 1) over `[h·w, C]` tokens, with the residual
/// `x + dwconv(x)` that DaViT always applies.
pub struct DwConvResidual {
    /// `[C, 1, 3, 3]` depthwise kernels (f32 or f16).
    pub weight: Tensor,
    /// `[C]` bias.
    pub bias: Tensor,
}

impl DwConvResidual {
    /// Loads `{prefix}.weight` `[C, 1, 3, 3]` as `dtype` (f32 or f16) and `{prefix}.bias`.
    pub fn load(
        gpu: &Gpu,
        src: &Source,
        prefix: &str,
        dim: usize,
        dtype: DType,
    ) -> Result<DwConvResidual> {
        let dtype = if dtype.is_quantized() {
            DType::F16
        } else {
            dtype
        }; // rows of 9 cannot be blocked
        Ok(DwConvResidual {
            weight: param(
                gpu,
                src,
                &format!("{prefix}.weight"),
                &[dim, 1, 3, 3],
                dtype,
            )?,
            bias: param(gpu, src, &format!("{prefix}.bias"), &[dim], DType::F32)?,
        })
    }

    /// Records `x + dwconv(x)` for tokens on an `hw` grid into a new intermediate.
    pub fn forward(&self, g: &mut Graph, x: TensorId, hw: (usize, usize)) -> Result<TensorId> {
        let out = g.tensor_like(x)?;
        let (w, b) = (g.external(&self.weight), g.external(&self.bias));
        conv::dwconv3x3(g, x, hw, w, b, true, out)?;
        Ok(out)
    }
}

/// Records `a + b` (same shape, or `b` one row broadcast) into a new intermediate.
pub fn add(g: &mut Graph, a: TensorId, b: TensorId) -> Result<TensorId> {
    let out = g.tensor_like(a)?;
    eltwise::binary(g, Binary::Add, a, b, out)?;
    Ok(out)
}
