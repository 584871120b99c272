//! Florence-2's vision path as tensors, for tools that want V itself (the `features` command):
//! preprocessing, the vision tower, and — where the folder has the BART tokenizer — the image
//! rows of the encoder under Florence-VL's three prompts, recorded by the same
//! [`fused_views`] that Florence-VL's fusion runs (so the three views are computed once, one
//! way, for `infer`, this and the benches).

use std::path::Path;
use std::time::Instant;

use crate::gpu::{DType, Gpu, Graph, Tensor};
use crate::image::{preprocess_image, PreprocessConfig, Preprocessed};
use crate::model::bart::Bart;
use crate::model::florence2::VisionTower;
use crate::model::florence_vl::fused_views;
use crate::text::bart::BartTokenizer;
use crate::weights::florence2::{Florence2Checkpoint, Florence2Layout};
use crate::Result;

use super::ImageInput;

/// Names of the three encoder views, in [`FLORENCE_VL_TASKS`](crate::text::bart::FLORENCE_VL_TASKS)
/// order (detailed caption, OCR, dense region caption).
pub const ENCODER_VIEWS: [&str; 3] = [
    "encoder_caption",
    "encoder_ocr",
    "encoder_dense_region_caption",
];

/// A Florence-2 (or Florence-VL) folder read on the CPU: checkpoint, preprocessing and, where
/// the folder has a tokenizer, Florence-VL's three encoder prompts.
pub struct FeaturesFolder {
    ck: Florence2Checkpoint,
    preprocess: PreprocessConfig,
    /// The prompts as `([3·L] row-major, L)`; `None` without a tokenizer (V only).
    prompts: Option<(Vec<u32>, usize)>,
}

impl FeaturesFolder {
    /// Reads the folder's configs (no weights yet).
    pub fn open(dir: &Path) -> Result<FeaturesFolder> {
        let ck = Florence2Checkpoint::open(dir)?;
        let preprocess = PreprocessConfig::from_dir_or_default(ck.config_dir())?;
        let prompts = if ck.has_tokenizer() {
            let text = ck.text();
            let tok = BartTokenizer::open(ck.config_dir())?.check_vocab(text.vocab_size)?;
            Some(tok.florence_vl_prompts(text.pad_token_id)?)
        } else {
            None
        };
        Ok(FeaturesFolder {
            ck,
            preprocess,
            prompts,
        })
    }

    /// The checkpoint's layout (HF-native, Microsoft's, Florence-VL's).
    pub fn layout(&self) -> Florence2Layout {
        self.ck.layout()
    }

    /// Tensors the vision tower loads (for a progress bar).
    pub fn tower_tensor_count(&self) -> usize {
        VisionTower::tensor_count(self.ck.vision())
    }

    /// Decodes and preprocesses an image (CPU only); `pad` pads it to a square with the mean
    /// colour first (Florence-VL's `pad`).
    pub fn preprocess(&self, image: ImageInput, pad: bool) -> Result<Preprocessed> {
        Ok(preprocess_image(&image.decode()?, &self.preprocess, pad))
    }

    /// Loads the weights on `gpu` as `dtype` (BART only where the encoder views are asked
    /// for); `on_tensor` ticks once per vision-tower tensor.
    pub fn load(self, gpu: Gpu, dtype: DType, on_tensor: &dyn Fn()) -> Result<VisionFeatures> {
        let tower = VisionTower::from_checkpoint(&gpu, &self.ck, dtype, on_tensor)?;
        let encoder = match &self.prompts {
            Some((ids, len)) => Some((
                Bart::from_checkpoint(&gpu, &self.ck, dtype)?,
                Tensor::from_u32(&gpu, &[3, *len], ids, "encoder prompts")?,
            )),
            None => None,
        };
        Ok(VisionFeatures {
            gpu,
            tower,
            encoder,
        })
    }
}

/// The vision path on a GPU.
pub struct VisionFeatures {
    /// The GPU the model lives on.
    pub gpu: Gpu,
    tower: VisionTower,
    /// BART and the three prompts `[3, L]`, where the folder has a tokenizer.
    encoder: Option<(Bart, Tensor)>,
}

/// What [`VisionFeatures::run`] computed for one image.
pub struct ImageFeatures {
    /// V, `[rows, width]` row-major.
    pub image_features: Vec<f32>,
    /// `(rows, width)` of V and of each encoder view.
    pub shape: (usize, usize),
    /// [`ENCODER_VIEWS`] with their `[rows, width]` values; empty without a tokenizer.
    pub encoder_views: Vec<(&'static str, Vec<f32>)>,
    /// DaViT's last grid `(h, w)`.
    pub grid: (usize, usize),
    /// Kernels in the recorded graph.
    pub dispatches: usize,
    /// Time of the GPU run in ms.
    pub vision_ms: f64,
}

impl VisionFeatures {
    /// Runs the tower (and the encoder views, where loaded) on a preprocessed image.
    pub fn run(&self, image: &Preprocessed) -> Result<ImageFeatures> {
        let gpu = &self.gpu;
        let pixels = VisionTower::pixels(gpu, image)?;
        let mut g = Graph::new(gpu);
        let p = g.external(&pixels);
        let out = self.tower.forward(&mut g, p)?;
        g.keep(out.features);
        let fused = match &self.encoder {
            Some((bart, prompts)) => {
                let f = fused_views(&mut g, bart, prompts, out.features, true)?;
                g.keep(f);
                Some(f)
            }
            None => None,
        };
        let exe = g.build()?;
        let t = Instant::now();
        exe.run(gpu, &[])?;
        let v = exe.tensor(out.features);
        let image_features = v.read_f32(gpu)?;
        let vision_ms = t.elapsed().as_secs_f64() * 1e3;
        let (rows, d) = (v.shape()[0], v.shape()[1]);
        let mut encoder_views = Vec::new();
        if let Some(f) = fused {
            // `[rows, 4·D]`: V, then the three views, each D columns.
            let all = exe.tensor(f).read_f32(gpu)?;
            for (k, name) in ENCODER_VIEWS.into_iter().enumerate() {
                let cols = (k + 1) * d..(k + 2) * d;
                let view = all.chunks(4 * d).flat_map(|r| &r[cols.clone()]).copied();
                encoder_views.push((name, view.collect()));
            }
        }
        Ok(ImageFeatures {
            image_features,
            shape: (rows, d),
            encoder_views,
            grid: out.grid,
            dispatches: exe.dispatches(),
            vision_ms,
        })
    }
}
