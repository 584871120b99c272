//! Florence-2's vision tower: DaViT (`davit`) then the image head → V, the image features
//! both Florence-2's BART (`bart`) and Florence-VL's fusion (`florence_vl`) read. Owns the
//! head's weights and forward pass; names and configs are `weights::florence2`'s, the task
//! pipeline `pipeline::florence2`'s.
//!
//! Image head (spec §4): add the learned 2-D position embedding (column half first) and row 0 of
//! the cosine temporal embedding to every grid token, prepend the mean token, project
//! (`image_projection`, no bias) and LayerNorm → `V`, `[1 + h·w, projection_dim]`.

use crate::gpu::{DType, Gpu, Graph, Tensor, TensorId};
use crate::ops::copy::{self, Block};
use crate::ops::reduce;
use crate::weights::florence2::{Florence2Checkpoint, VisionConfig};
use crate::{Error, Result};

use super::davit::Davit;
use super::layers::{add, LayerNorm, Linear, Source};

const PREFIX: &str = "model.multi_modal_projector";

/// Position and temporal embeddings, the projection and its norm.
pub struct ImageHead {
    /// Column embeddings `[max_pos, C − C/2]` and row embeddings `[max_pos, C/2]`, kept on the
    /// host: the grid's position table is assembled per image size.
    columns: Vec<f32>,
    rows: Vec<f32>,
    max_pos: usize,
    dim: usize,
    /// Row 0 of the temporal table (T = 1 frame), `[C]`.
    temporal: Tensor,
    projection: Linear,
    norm: LayerNorm,
}

impl ImageHead {
    /// Loads the head for last-stage width `cfg.embed_dim[-1]`.
    pub fn load(gpu: &Gpu, src: &Source, cfg: &VisionConfig, dtype: DType) -> Result<ImageHead> {
        let dim = cfg.out_dim();
        let max_pos = cfg.max_pos_embeddings;
        let row_dim = dim / 2;
        let rows = src(
            &format!("{PREFIX}.image_position_embed.row_embeddings.weight"),
            &[max_pos, row_dim],
        )?;
        let columns = src(
            &format!("{PREFIX}.image_position_embed.column_embeddings.weight"),
            &[max_pos, dim - row_dim],
        )?;
        let table = src(
            &format!("{PREFIX}.visual_temporal_embed.pos_idx_to_embed"),
            &[cfg.max_temporal_embeddings, dim],
        )?;
        Ok(ImageHead {
            columns,
            rows,
            max_pos,
            dim,
            temporal: Tensor::from_f32(
                gpu,
                &[dim],
                DType::F32,
                &table[..dim],
                "temporal embedding",
            )?,
            projection: Linear::load(
                gpu,
                src,
                &format!("{PREFIX}.image_projection"),
                cfg.projection_dim,
                dim,
                false,
                dtype,
            )?,
            norm: LayerNorm::load(
                gpu,
                src,
                &format!("{PREFIX}.image_proj_norm"),
                cfg.projection_dim,
                1e-5,
            )?,
        })
    }

    /// The position table for an `h × w` grid: token (i, j) gets `[column[j] | row[i]]`.
    fn positions(&self, gpu: &Gpu, (h, w): (usize, usize)) -> Result<Tensor> {
        if h > self.max_pos || w > self.max_pos {
            return Err(Error::input(format!(
                "image grid {h}×{w} exceeds the {}-entry position embedding table; use a smaller image size",
                self.max_pos
            )));
        }
        let (rd, cd) = (self.dim / 2, self.dim - self.dim / 2);
        let mut pos = Vec::with_capacity(h * w * self.dim);
        for i in 0..h {
            for j in 0..w {
                pos.extend_from_slice(&self.columns[j * cd..(j + 1) * cd]);
                pos.extend_from_slice(&self.rows[i * rd..(i + 1) * rd]);
            }
        }
        Tensor::from_f32(
            gpu,
            &[h * w, self.dim],
            DType::F32,
            &pos,
            "position embedding",
        )
    }

    /// Records the head on grid tokens `x` (`[h·w, C]`); returns V `[1 + h·w, D]`. (The
    /// position table is uploaded here; the built graph holds on to it.)
    pub fn forward(&self, g: &mut Graph, x: TensorId, hw: (usize, usize)) -> Result<TensorId> {
        let pos = self.positions(g.gpu(), hw)?;
        let n = hw.0 * hw.1;
        let p = g.external(&pos);
        let x = add(g, x, p)?;
        let t = g.external(&self.temporal);
        let x = add(g, x, t)?;
        let mean = g.tensor(&[1, self.dim], DType::F32)?;
        reduce::mean_rows(g, x, mean)?;
        let tokens = g.tensor(&[n + 1, self.dim], DType::F32)?;
        copy::copy(g, mean, tokens, &Block::whole(1, self.dim, 0, 0))?;
        copy::copy(g, x, tokens, &Block::whole(n, self.dim, 1, 0))?;
        let projected = self.projection.forward(g, tokens)?;
        self.norm.forward(g, projected)
    }
}

/// DaViT and the image head: pixels → V.
pub struct VisionTower {
    /// The DaViT backbone.
    pub davit: Davit,
    /// Projects DaViT's last stage to the visual tokens V.
    pub head: ImageHead,
}

/// What [`VisionTower::forward`] recorded: the tensors a caller may read after a run.
pub struct VisionOutputs {
    /// Last DaViT stage, `[h·w, C]`.
    pub davit: TensorId,
    /// V, `[1 + h·w, D]`.
    pub features: TensorId,
    /// The grid `(h, w)`.
    pub grid: (usize, usize),
}

impl VisionTower {
    /// Loads DaViT and the head from `src` (canonical names).
    pub fn load(gpu: &Gpu, src: &Source, cfg: &VisionConfig, dtype: DType) -> Result<VisionTower> {
        Ok(VisionTower {
            davit: Davit::load(gpu, src, cfg, dtype)?,
            head: ImageHead::load(gpu, src, cfg, dtype)?,
        })
    }

    /// Loads the tower of a Florence-2 checkpoint in any of its layouts; `on_tensor` is called
    /// after each tensor (progress).
    pub fn from_checkpoint(
        gpu: &Gpu,
        ck: &Florence2Checkpoint,
        dtype: DType,
        on_tensor: &dyn Fn(),
    ) -> Result<VisionTower> {
        let src = |name: &str, shape: &[usize]| {
            let v = ck.load(name, shape);
            on_tensor();
            v
        };
        VisionTower::load(gpu, &src, ck.vision(), dtype)
    }

    /// Uploads a preprocessed image as the tower's input, `[3, H, W]`.
    pub fn pixels(gpu: &Gpu, image: &crate::image::Preprocessed) -> Result<Tensor> {
        let shape = [3, image.height, image.width];
        Tensor::from_f32(gpu, &shape, DType::F32, &image.pixel_values, "pixel_values")
    }

    /// Number of tensors [`VisionTower::from_checkpoint`] loads, for progress bars.
    pub fn tensor_count(cfg: &VisionConfig) -> usize {
        // Per stage: conv weight, bias, norm ×2; per block pair: 2 × 16; head: 6.
        cfg.depths.iter().map(|d| 4 + 32 * d).sum::<usize>() + 6
    }

    /// Records pixels (`[3, H, W]`) → DaViT → head.
    pub fn forward(&self, g: &mut Graph, pixels: TensorId) -> Result<VisionOutputs> {
        let (x, grid) = self.davit.forward(g, pixels)?;
        let features = self.head.forward(g, x, grid)?;
        Ok(VisionOutputs {
            davit: x,
            features,
            grid,
        })
    }
}
