//! Florence-VL (spec §1, §6, §7.3, §8.2): the Florence-2 tower and encoder give four views of
//! the image (V, and the image rows of the encoder under three prompts), fused on channels and
//! projected to the LLM width by an MLP; the rows replace `<image>` in a Llama-3 (8B) or
//! Phi-3 (3B) chat prompt.
//!
//! Everything comes from one LLaVA-style folder: Llama tensors at the top level, the projector
//! at `model.mm_projector.encoder_mlp.*`, the Florence-2 model under
//! `model.vision_tower.vision_tower.` (its config found through `mm_vision_tower`).

use std::path::Path;

use crate::gpu::{DType, Gpu, Graph, Tensor, TensorId};
use crate::image::PreprocessConfig;
use crate::model::bart::Bart;
use crate::model::florence2::VisionTower;
use crate::model::layers::{gelu_mlp, Linear};
use crate::model::llama::Llama;
use crate::ops::copy::{copy, Block};
use crate::text::chat::{Message, Template};
use crate::text::llama::LlamaTokenizer;
use crate::weights::florence_vl::{FlorenceVlFolder, FvlConfig};
use crate::{Error, Result};

/// The id LLaVA writes where the image rows go.
pub const IMAGE_TOKEN_INDEX: i64 = -200;

/// The placeholder in the prompt text.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// The system message of Florence-VL's `llama3` conversation template.
pub const SYSTEM: &str = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";

/// The template text for one user turn with an image (spec §7.3, §7.4): Florence-VL's system
/// message (`llama3`: [`SYSTEM`]; `phi3`: the template's default), then `<image>`, a newline
/// and the question.
pub fn prompt_text(template: Template, question: &str) -> String {
    conversation_text(template, &[], question)
}

/// [`prompt_text`] for a conversation about one image: earlier `(question, answer)` turns,
/// then `question`; the image goes in the first user turn.
pub fn conversation_text(template: Template, turns: &[(String, String)], question: &str) -> String {
    let system = template.default_system().unwrap_or(SYSTEM);
    let mut messages = vec![Message::new("system", system)];
    let questions = turns.iter().map(|t| t.0.as_str()).chain([question]);
    for (k, q) in questions.enumerate() {
        let q = if k == 0 {
            format!("{IMAGE_PLACEHOLDER}\n{q}")
        } else {
            q.to_string()
        };
        messages.push(Message::new("user", &q));
        if let Some((_, a)) = turns.get(k) {
            messages.push(Message::new("assistant", a));
        }
    }
    template.prompt(&messages)
}

/// Positions of the prompt `ids` once each [`IMAGE_TOKEN_INDEX`] becomes `image_rows` rows.
pub fn merged_positions(ids: &[i64], image_rows: usize) -> usize {
    let images = ids.iter().filter(|&&i| i == IMAGE_TOKEN_INDEX).count();
    ids.len() - images + images * image_rows
}

/// The fusion MLP: `Linear (4·D → H)`, then `depth − 1` times GELU and `Linear (H → H)`.
pub struct Projector {
    /// The projector's linears, first to last.
    pub layers: Vec<Linear>,
}

impl Projector {
    /// Stored name of linear `k` (`encoder_mlp.0`, `encoder_mlp.1.1`, `encoder_mlp.2.1`, …).
    pub fn prefix(k: usize) -> String {
        if k == 0 {
            "model.mm_projector.encoder_mlp.0".into()
        } else {
            format!("model.mm_projector.encoder_mlp.{k}.1")
        }
    }

    /// Records the MLP on `x` (`[rows, 4·D]`) → `[rows, H]`.
    pub fn forward(&self, g: &mut Graph, x: TensorId) -> Result<TensorId> {
        gelu_mlp(g, &self.layers, x)
    }
}

/// What [`Fusion`] recorded for one image.
pub struct FusionOutput {
    /// V, `[N, D]`.
    pub v: TensorId,
    /// `[V | detailed caption | OCR | dense region caption]` (the image rows of the encoder
    /// under each of [`FLORENCE_VL_TASKS`](crate::text::bart::FLORENCE_VL_TASKS)),
    /// `[rows, 4·D]` (rows = N, or N − 1 without the mean token).
    pub fused: TensorId,
    /// The projector output, `[rows, H]`: the rows that replace `<image>`.
    pub projected: TensorId,
}

/// The vision side of Florence-VL, "Depth-Breadth Fusion" (spec §6): V from the tower, the
/// three prompts through the Florence-2 encoder as one batch over V, the image rows of each
/// output concatenated on channels after V, and the projector.
pub struct Fusion<'a> {
    /// Florence-2 vision tower (produces V).
    pub tower: &'a VisionTower,
    /// Florence-2 BART whose encoder runs the three prompts over V.
    pub bart: &'a Bart,
    /// MLP projecting the fused features to the LLM width.
    pub projector: &'a Projector,
    /// The three encoder prompts, u32 `[3, L]`.
    pub prompts: &'a Tensor,
}

impl Fusion<'_> {
    /// Records the fusion on `pixels` (`[3, H, W]`) in one graph; `keep_mean_token` keeps
    /// V's first (mean) row.
    pub fn record(
        &self,
        g: &mut Graph,
        pixels: TensorId,
        keep_mean_token: bool,
    ) -> Result<FusionOutput> {
        let v = self.tower.forward(g, pixels)?.features;
        self.fuse(g, v, keep_mean_token)
    }

    /// The fusion alone, on V (`[N, D]`) computed elsewhere.
    pub fn fuse(&self, g: &mut Graph, v: TensorId, keep_mean_token: bool) -> Result<FusionOutput> {
        let fused = fused_views(g, self.bart, self.prompts, v, keep_mean_token)?;
        let projected = self.projector.forward(g, fused)?;
        Ok(FusionOutput {
            v,
            fused,
            projected,
        })
    }
}

/// Records the four views of the image before the projector: V (`[N, D]`) and the image rows
/// of `bart`'s encoder run on V under each of the three `prompts` (u32 `[3, L]`, one batch),
/// concatenated on channels → `[rows, 4·D]` (rows = N, or N − 1 without the mean token).
pub fn fused_views(
    g: &mut Graph,
    bart: &Bart,
    prompts: &Tensor,
    v: TensorId,
    keep_mean_token: bool,
) -> Result<TensorId> {
    let prompts = g.external(prompts);
    let enc = bart.encode(g, v, prompts)?;
    let (n, d) = (g.layout(v).rows(), g.layout(v).cols());
    let seq = g.shape(enc)[1];
    let first = usize::from(!keep_mean_token);
    let rows = n - first;
    let fused = g.tensor(&[rows, 4 * d], DType::F32)?;
    let view = |src_row: usize, col: usize| Block {
        src_row: src_row + first,
        ..Block::whole(rows, d, 0, col)
    };
    copy(g, v, fused, &view(0, 0))?;
    for p in 0..3 {
        copy(g, enc, fused, &view(p * seq, (p + 1) * d))?;
    }
    Ok(fused)
}

/// A Florence-VL model on the GPU.
pub struct FlorenceVl {
    /// Florence-VL settings (projector depth, padding, context length).
    pub config: FvlConfig,
    /// Florence-2 vision tower.
    pub tower: VisionTower,
    /// Florence-2 BART, used for its encoder.
    pub bart: Bart,
    /// Fusion MLP into the Llama embedding space.
    pub projector: Projector,
    /// The Llama language model that writes the answer.
    pub llama: Llama,
    /// Llama 3 tokenizer for prompts and answers.
    pub tokenizer: LlamaTokenizer,
    /// How images are resized and normalised (the tower folder's `preprocessor_config.json`).
    pub preprocess: PreprocessConfig,
    /// Keep the mean token (577 rows for the 8B, the default) or drop it (576).
    pub keep_mean_token: bool,
    /// The three encoder prompts, u32 `[3, L]`.
    prompts: Tensor,
}

impl FlorenceVl {
    /// Loads everything from the LLaVA folder `dir` (its tower resolved through
    /// `mm_vision_tower`, see [`FlorenceVlFolder`]): the Llama weights as `quant` (F32, F16,
    /// Q8 or Q4); the tower, encoder and projector as f32 when `quant` is F32, else as f16
    /// where the adapter has SHADER_F16. `bart_tokenizer` names a folder with the Florence-2
    /// `tokenizer.json` for the encoder prompts (default: the tower's folder, else the
    /// hard-coded ids of the real Florence-2 tokenizer).
    pub fn from_folder(
        gpu: &Gpu,
        dir: &Path,
        quant: DType,
        bart_tokenizer: Option<&Path>,
    ) -> Result<FlorenceVl> {
        let folder = FlorenceVlFolder::open(dir)?;
        let (f2, ck, config) = (&folder.tower, &folder.checkpoint, folder.config.clone());
        let d = f2.text().d_model;
        let vision_dtype = if quant == DType::F32 {
            DType::F32
        } else {
            gpu.default_dtype()
        };
        let (ids, len) = folder.encoder_prompt_ids(bart_tokenizer)?;
        let prompts = Tensor::from_u32(gpu, &[3, len], &ids, "encoder prompts")?;
        let tower = VisionTower::from_checkpoint(gpu, f2, vision_dtype, &|| {})?;
        let bart = Bart::from_checkpoint(gpu, f2, vision_dtype)?;
        let mut llama = Llama::from_checkpoint(gpu, ck, quant, &|| {})?;
        let tokenizer = LlamaTokenizer::open(dir)?;
        llama.sampled_vocab = tokenizer.len();
        let h = llama.cfg.hidden;
        let src = |name: &str, shape: &[usize]| ck.load_f32(name, shape);
        let layers = (0..config.projector_depth)
            .map(|k| {
                let inp = if k == 0 { 4 * d } else { h };
                let p = Projector::prefix(k);
                if !ck.contains(&format!("{p}.weight")) {
                    return Err(Error::file(
                        dir,
                        format!(
                            "no projector weight {p}.weight (mm_projector_type mlp{}x_gelu)",
                            config.projector_depth
                        ),
                    ));
                }
                Linear::load(gpu, &src, &p, h, inp, true, vision_dtype)
            })
            .collect::<Result<_>>()?;
        Ok(FlorenceVl {
            config,
            tower,
            bart,
            projector: Projector { layers },
            tokenizer,
            llama,
            preprocess: folder.preprocess,
            keep_mean_token: true,
            prompts,
        })
    }

    /// Records pixels (`[3, S, S]`) → V → the encoder on the three prompts as one batch →
    /// `[V | detailed caption | OCR | dense region caption]` → projector, all in `g`.
    pub fn fuse_image(&self, g: &mut Graph, pixels: TensorId) -> Result<FusionOutput> {
        let parts = Fusion {
            tower: &self.tower,
            bart: &self.bart,
            projector: &self.projector,
            prompts: &self.prompts,
        };
        parts.record(g, pixels, self.keep_mean_token)
    }

    /// [`FlorenceVl::fuse_image`] with the projected rows copied into a tensor of their own,
    /// which outlives the graph (and its arenas): the image rows a chat keeps.
    pub fn image_rows(&self, g: &mut Graph, pixels: TensorId) -> Result<Tensor> {
        let projected = self.fuse_image(g, pixels)?.projected;
        let (n, h) = (g.layout(projected).rows(), g.layout(projected).cols());
        let rows = Tensor::empty(g.gpu(), &[n, h], DType::F32, "image rows")?;
        let out = g.external(&rows);
        copy(g, projected, out, &Block::whole(n, h, 0, 0))?;
        Ok(rows)
    }

    /// Prompt ids for `question` (spec §7.3): the template split on `<image>`, each chunk
    /// tokenized with special tokens; when the first chunk starts with the post-processor's
    /// BOS, that BOS is kept once and every chunk's is dropped (LLaVA's
    /// `tokenizer_image_token`: Llama 3's sequence starts with two BOS, the template's and
    /// the tokenizer's); [`IMAGE_TOKEN_INDEX`] between chunks.
    pub fn prompt_ids(&self, question: &str) -> Result<Vec<i64>> {
        self.conversation_ids(&[], question)
    }

    /// [`FlorenceVl::prompt_ids`] for a conversation: earlier `(question, answer)` turns, then
    /// `question` ([`conversation_text`]).
    pub fn conversation_ids(&self, turns: &[(String, String)], question: &str) -> Result<Vec<i64>> {
        let mut texts = turns.iter().flat_map(|t| [t.0.as_str(), t.1.as_str()]);
        if texts.any(|t| t.contains(IMAGE_PLACEHOLDER)) || question.contains(IMAGE_PLACEHOLDER) {
            return Err(Error::input(
                "the question must not contain <image>: the template places the image",
            ));
        }
        let tok = &self.tokenizer;
        let chunks = conversation_text(tok.template, turns, question)
            .split(IMAGE_PLACEHOLDER)
            .map(|c| tok.encode(c, true))
            .collect::<Result<Vec<_>>>()?;
        let bos = tok.bos_id()?;
        let offset = usize::from(bos.is_some() && chunks[0].first() == bos.as_ref());
        let mut ids: Vec<i64> = chunks[0][..offset].iter().map(|&i| i as i64).collect();
        for (k, chunk) in chunks.iter().enumerate() {
            if k > 0 {
                ids.push(IMAGE_TOKEN_INDEX);
            }
            ids.extend(chunk.iter().skip(offset).map(|&i| i as i64));
        }
        Ok(ids)
    }

    /// Length of the merged sequence for `ids` with `image_rows` rows per image marker;
    /// an error when it exceeds `tokenizer_model_max_length`. The reference truncates the
    /// merged sequence silently, which cuts the assistant header off and makes the answer
    /// meaningless, so this refuses instead.
    pub fn merged_len(&self, ids: &[i64], image_rows: usize) -> Result<usize> {
        let images = ids.iter().filter(|&&i| i == IMAGE_TOKEN_INDEX).count();
        let len = merged_positions(ids, image_rows);
        if len > self.config.max_length {
            return Err(Error::input(format!(
                "the prompt is {len} positions ({} text tokens + {} image rows), more than tokenizer_model_max_length = {}; shorten the question",
                ids.len() - images,
                images * image_rows,
                self.config.max_length
            )));
        }
        Ok(len)
    }

    /// Records the prompt embeddings `[T, H]`: token embeddings for the text, `projected`
    /// (`[rows, H]`) in place of each [`IMAGE_TOKEN_INDEX`].
    pub fn embed_prompt(
        &self,
        g: &mut Graph,
        ids: &[i64],
        projected: TensorId,
    ) -> Result<TensorId> {
        let (rows, h) = (g.layout(projected).rows(), self.llama.cfg.hidden);
        let len = self.merged_len(ids, rows)?;
        // A negative id other than the image marker becomes one past every vocabulary.
        let text: Vec<u32> = ids
            .iter()
            .filter(|&&i| i != IMAGE_TOKEN_INDEX)
            .map(|&i| u32::try_from(i).unwrap_or(u32::MAX))
            .collect();
        self.llama.cfg.check_ids(&text)?;
        let out = g.tensor(&[len, h], DType::F32)?;
        if !text.is_empty() {
            let t = Tensor::from_u32(g.gpu(), &[text.len()], &text, "prompt ids")?;
            let t = g.external(&t);
            let emb = self.llama.embed(g, t)?;
            // Each run of text tokens, then the image rows.
            let (mut src_row, mut dst_row, mut run) = (0, 0, 0);
            for &id in ids.iter().chain([IMAGE_TOKEN_INDEX].iter()) {
                if id != IMAGE_TOKEN_INDEX {
                    run += 1;
                    continue;
                }
                let b = Block {
                    src_row,
                    ..Block::whole(run, h, dst_row, 0)
                };
                copy(g, emb, out, &b)?;
                (src_row, dst_row, run) = (src_row + run, dst_row + run + rows, 0);
            }
        }
        let mut dst_row = 0;
        for &id in ids {
            if id == IMAGE_TOKEN_INDEX {
                copy(g, projected, out, &Block::whole(rows, h, dst_row, 0))?;
                dst_row += rows;
            } else {
                dst_row += 1;
            }
        }
        Ok(out)
    }
}
