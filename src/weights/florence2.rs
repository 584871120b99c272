//! Florence-2 checkpoints in their three naming schemes, and their configs. Every name map
//! lives in this file.
//!
//! Canonical names are the HF-native (transformers ≥ 5) names, e.g.
//! `model.vision_tower.convs.0.conv.weight`, `model.multi_modal_projector.image_projection.weight`
//! (an nn.Linear weight `[D, C]`), `model.language_model.shared.weight`. One canonical name has no
//! HF-native tensor: `final_logits_bias` (`[1, V]`, Microsoft's BART logits bias).
//!
//! | canonical | original (Microsoft remote code) |
//! |---|---|
//! | `model.vision_tower.convs.{s}.conv.*` | `vision_tower.convs.{s}.proj.*` |
//! | `model.vision_tower.convs.{s}.norm.*` | `vision_tower.convs.{s}.norm.*` |
//! | `model.vision_tower.blocks.{s}.{j}.{b}_block.conv{1,2}.*` | `….{b}_block.conv{1,2}.fn.dw.*` |
//! | `….{b}_block.norm1.*` | `….{b}_block.{attn}.norm.*` |
//! | `….{b}_block.{attn}.{qkv,proj}.*` | `….{b}_block.{attn}.fn.{qkv,proj}.*` |
//! | `….{b}_block.norm2.*` | `….{b}_block.ffn.norm.*` |
//! | `….{b}_block.ffn.{fc1,fc2}.*` | `….{b}_block.ffn.fn.net.{fc1,fc2}.*` |
//! | `model.multi_modal_projector.image_projection.weight` `[D, C]` | `image_projection` `[C, D]` (transposed) |
//! | `model.multi_modal_projector.image_proj_norm.*` | `image_proj_norm.*` |
//! | `model.multi_modal_projector.image_position_embed.*` | `image_pos_embed.*` |
//! | `model.multi_modal_projector.visual_temporal_embed.pos_idx_to_embed` | `visual_temporal_embed.pos_idx_to_embed` |
//! | `model.language_model.*` | `language_model.model.*` |
//! | `lm_head.weight` | `language_model.lm_head.weight` |
//! | `final_logits_bias` (not stored) | `language_model.final_logits_bias` |
//!
//! (`{b}` is `spatial` with `{attn}` = `window_attn`, or `channel` with `channel_attn`.)
//! Florence-VL stores the original names under `model.vision_tower.vision_tower.`.
//!
//! The embedding is tied: `shared`, `encoder.embed_tokens`, `decoder.embed_tokens` and `lm_head`
//! are one tensor, stored under any subset of those names; the first present (in that order)
//! answers for all four. HF-native files pad the vocabulary (an `<image>` token, then zero rows
//! to a multiple of 64), so the vocabulary is taken from the stored tensor, not the config.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::florence_vl::FlorenceVlFolder;
use super::{read_json, Checkpoint};
use crate::{Error, Result};

/// The naming scheme of a Florence-2 checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Florence2Layout {
    /// transformers ≥ 5 (`Florence2ForConditionalGeneration`): the canonical names.
    HfNative,
    /// Microsoft's original remote code (`modeling_florence2.py`).
    Original,
    /// Florence-VL's LLaVA checkpoint: original names under `model.vision_tower.vision_tower.`.
    FlorenceVl,
}

/// One tensor each layout is sure to have, tried in this order.
const PROBES: [(Florence2Layout, &str); 3] = [
    (
        Florence2Layout::HfNative,
        "model.vision_tower.convs.0.conv.weight",
    ),
    (
        Florence2Layout::Original,
        "vision_tower.convs.0.proj.weight",
    ),
    (
        Florence2Layout::FlorenceVl,
        "model.vision_tower.vision_tower.vision_tower.convs.0.proj.weight",
    ),
];

/// Prefix of the Florence-2 model inside a Florence-VL checkpoint.
const FVL_PREFIX: &str = "model.vision_tower.vision_tower.";

/// The tied embedding's canonical names, in the order a stored copy is preferred.
const TIED: [&str; 4] = [
    "model.language_model.shared.weight",
    "model.language_model.encoder.embed_tokens.weight",
    "model.language_model.decoder.embed_tokens.weight",
    "lm_head.weight",
];

/// Canonical name of Microsoft's logits bias, which HF-native files do not have.
pub const FINAL_LOGITS_BIAS: &str = "final_logits_bias";

impl Florence2Layout {
    /// Detects the layout by probing for one conv-embedding weight of each scheme.
    pub fn detect(ckpt: &Checkpoint) -> Result<Florence2Layout> {
        PROBES
            .iter()
            .find(|(_, name)| ckpt.contains(name))
            .map(|&(layout, _)| layout)
            .ok_or_else(|| {
                let tried: Vec<String> =
                    PROBES.iter().map(|(l, n)| format!("{n} ({l:?})")).collect();
                Error::file(
                    ckpt.dir(),
                    format!(
                        "not a Florence-2 checkpoint: found none of {}",
                        tried.join(", ")
                    ),
                )
            })
    }
}

/// Every stored name that may hold canonical tensor `canonical` in `layout`, in preference
/// order, each with whether the stored tensor is the transpose of the canonical one. Empty
/// when the layout never stores it (`final_logits_bias` in HF-native files); an error for a
/// name that is not a Florence-2 tensor.
pub fn stored_names(layout: Florence2Layout, canonical: &str) -> Result<Vec<(String, bool)>> {
    let names: Vec<&str> = if TIED.contains(&canonical) {
        TIED.to_vec()
    } else {
        vec![canonical]
    };
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        // The original name is derived for every layout so that a misspelt canonical name
        // fails the same way whichever file is open.
        let (original, transposed) = original_name(name)
            .ok_or_else(|| Error::input(format!("{canonical} is not a Florence-2 tensor name")))?;
        match layout {
            Florence2Layout::HfNative if name == FINAL_LOGITS_BIAS => {}
            Florence2Layout::HfNative => out.push((name.to_string(), false)),
            Florence2Layout::Original => out.push((original, transposed)),
            Florence2Layout::FlorenceVl => {
                out.push((format!("{FVL_PREFIX}{original}"), transposed))
            }
        }
    }
    Ok(out)
}

/// The original (Microsoft) name of a canonical tensor, and whether it is stored transposed.
fn original_name(canonical: &str) -> Option<(String, bool)> {
    const PROJECTOR: [(&str, &str); 6] = [
        ("image_proj_norm.weight", "image_proj_norm.weight"),
        ("image_proj_norm.bias", "image_proj_norm.bias"),
        (
            "image_position_embed.row_embeddings.weight",
            "image_pos_embed.row_embeddings.weight",
        ),
        (
            "image_position_embed.column_embeddings.weight",
            "image_pos_embed.column_embeddings.weight",
        ),
        (
            "visual_temporal_embed.pos_idx_to_embed",
            "visual_temporal_embed.pos_idx_to_embed",
        ),
        ("image_projection.weight", "image_projection"),
    ];
    if canonical == FINAL_LOGITS_BIAS {
        return Some(("language_model.final_logits_bias".into(), false));
    }
    if canonical == "lm_head.weight" {
        return Some(("language_model.lm_head.weight".into(), false));
    }
    if let Some(rest) = canonical.strip_prefix("model.language_model.") {
        return Some((format!("language_model.model.{rest}"), false));
    }
    if let Some(rest) = canonical.strip_prefix("model.multi_modal_projector.") {
        let &(_, orig) = PROJECTOR.iter().find(|(c, _)| *c == rest)?;
        // A raw [in, out] parameter in the original code, an nn.Linear [out, in] in HF's.
        return Some((orig.to_string(), orig == "image_projection"));
    }
    let rest = canonical.strip_prefix("model.vision_tower.")?;
    let parts: Vec<&str> = rest.splitn(5, '.').collect();
    match parts.as_slice() {
        ["convs", s, "conv", p @ ("weight" | "bias")] => {
            Some((format!("vision_tower.convs.{s}.proj.{p}"), false))
        }
        ["convs", s, "norm", p @ ("weight" | "bias")] => {
            Some((format!("vision_tower.convs.{s}.norm.{p}"), false))
        }
        ["blocks", s, j, block, tail] => {
            let attn = match *block {
                "spatial_block" => "window_attn",
                "channel_block" => "channel_attn",
                _ => return None,
            };
            let (module, p) = tail.rsplit_once('.')?;
            if p != "weight" && p != "bias" {
                return None;
            }
            let module = match module {
                "conv1" | "conv2" => format!("{module}.fn.dw"),
                "norm1" => format!("{attn}.norm"),
                "norm2" => "ffn.norm".into(),
                "ffn.fc1" | "ffn.fc2" => format!("ffn.fn.net.{}", &module[4..]),
                m if m == format!("{attn}.qkv") || m == format!("{attn}.proj") => {
                    format!("{attn}.fn.{}", &m[attn.len() + 1..])
                }
                _ => return None,
            };
            Some((
                format!("vision_tower.blocks.{s}.{j}.{block}.{module}.{p}"),
                false,
            ))
        }
        _ => None,
    }
}

/// The stored name answering for `canonical` in this checkpoint (first present candidate).
fn find_stored(
    ckpt: &Checkpoint,
    layout: Florence2Layout,
    canonical: &str,
) -> Result<Option<(String, bool)>> {
    Ok(stored_names(layout, canonical)?
        .into_iter()
        .find(|(name, _)| ckpt.contains(name)))
}

/// DaViT tower and image-head sizes (spec §3.1, §4), from either config style.
#[derive(Clone, Debug)]
pub struct VisionConfig {
    /// Channels per stage (HF `embed_dim`, original `dim_embed`).
    pub embed_dim: Vec<usize>,
    /// Window-attention heads per stage.
    pub num_heads: Vec<usize>,
    /// Channel-attention groups per stage.
    pub num_groups: Vec<usize>,
    /// Spatial+channel block pairs per stage.
    pub depths: Vec<usize>,
    /// Conv-embedding kernel size per stage.
    pub patch_size: Vec<usize>,
    /// Conv-embedding stride per stage.
    pub patch_stride: Vec<usize>,
    /// Conv-embedding zero padding per stage.
    pub patch_padding: Vec<usize>,
    /// Whether the stage's LayerNorm comes before its conv (else after).
    pub patch_prenorm: Vec<bool>,
    /// Image channels (3).
    pub in_channels: usize,
    /// Window side of the spatial attention.
    pub window_size: usize,
    /// Output width of `image_projection` (= BART d_model).
    pub projection_dim: usize,
    /// MLP hidden width / channels.
    pub mlp_ratio: f64,
    /// Whether the qkv projections have a bias.
    pub qkv_bias: bool,
    /// Rows of each learned 2-D position table.
    pub max_pos_embeddings: usize,
    /// Rows of the cosine temporal table.
    pub max_temporal_embeddings: usize,
    /// Whether the config spelled keys the original way, so messages quote the key it used.
    original_keys: bool,
}

/// BART sizes and token ids (spec §5.1).
#[derive(Clone, Debug)]
pub struct TextConfig {
    /// Hidden width.
    pub d_model: usize,
    /// Encoder layer count.
    pub encoder_layers: usize,
    /// Decoder layer count.
    pub decoder_layers: usize,
    /// Encoder attention heads.
    pub encoder_attention_heads: usize,
    /// Decoder attention heads.
    pub decoder_attention_heads: usize,
    /// Encoder FFN hidden width.
    pub encoder_ffn_dim: usize,
    /// Decoder FFN hidden width.
    pub decoder_ffn_dim: usize,
    /// Rows of the stored embedding: the real vocabulary, which in HF-native files includes
    /// `<image>` and the zero padding rows (the config's `vocab_size` may be smaller).
    pub vocab_size: usize,
    /// Positions; the learned table has two more rows.
    pub max_position_embeddings: usize,
    /// Activation name (`gelu` = exact erf GELU).
    pub activation_function: String,
    /// Whether token embeddings are scaled by √d_model.
    pub scale_embedding: bool,
    /// `<s>`.
    pub bos_token_id: u32,
    /// `<pad>`.
    pub pad_token_id: u32,
    /// `</s>`.
    pub eos_token_id: u32,
    /// First decoder input.
    pub decoder_start_token_id: u32,
    /// Token forced right after the decoder start (`<s>` in Florence-2's HF-native
    /// conversions); `None` where the configs ask for none, as in Microsoft's repos.
    pub forced_bos_token_id: Option<u32>,
    /// Token forced at the last allowed step.
    pub forced_eos_token_id: Option<u32>,
    /// Decoding defaults (beams, n-gram ban, length).
    pub generation: GenerationDefaults,
}

/// Decoding defaults of a Florence-2 checkpoint, named as in `generation_config.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerationDefaults {
    /// Beams of the beam search (1: greedy).
    pub num_beams: usize,
    /// Ban tokens that would repeat an n-gram of this size (0: off).
    pub no_repeat_ngram_size: usize,
    /// Stop as soon as `num_beams` hypotheses are finished.
    pub early_stopping: bool,
    /// Longest decoder sequence, decoder start included (`None`: not set).
    pub max_length: Option<usize>,
}

/// Looks up a dotted key path (`image_pos_embed.max_pos_embeddings`).
fn lookup<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(v, |v, k| v.get(k))
}

fn as_usize(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|n| usize::try_from(n).ok())
}

/// Largest size or count a Florence-2 config may give (the real ones stay under 60 000).
const MAX_CONFIG_SIZE: usize = 1 << 20;

/// An optional non-negative integer at `section.key`.
fn opt_usize(v: &Value, section: &str, key: &str) -> Result<Option<usize>, String> {
    match lookup(v, key) {
        None | Some(Value::Null) => Ok(None),
        // Bounded so a corrupt config is refused before anything is sized from it.
        Some(x) => as_usize(x)
            .filter(|&n| n <= MAX_CONFIG_SIZE)
            .map(Some)
            .ok_or_else(|| {
                format!("{section}.{key} = {x} is not an integer from 0 to {MAX_CONFIG_SIZE}")
            }),
    }
}

fn req_usize(v: &Value, section: &str, key: &str) -> Result<usize, String> {
    opt_usize(v, section, key)?.ok_or_else(|| format!("{section}.{key} is missing"))
}

fn req_list<T>(
    v: &Value,
    section: &str,
    key: &str,
    each: impl Fn(&Value) -> Option<T>,
) -> Result<Vec<T>, String> {
    lookup(v, key)
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(&each).collect())
        .ok_or_else(|| format!("{section}.{key} is missing or not a list of the right type"))
}

impl VisionConfig {
    /// Parses `vision_config` in HF-native (`embed_dim`, …) or original (`dim_embed`, …) style.
    /// `top` is the whole config, where the original style may keep `projection_dim`.
    pub fn from_json(vc: &Value, top: &Value) -> Result<VisionConfig, String> {
        let s = "vision_config";
        let original_keys = vc.get("dim_embed").is_some();
        let key = |native: &'static str, original: &'static str| {
            if original_keys {
                original
            } else {
                native
            }
        };
        let list = |k: &str| req_list(vc, s, k, as_usize);
        let embed_dim = list(key("embed_dim", "dim_embed"))?;
        let projection_dim = match opt_usize(vc, s, "projection_dim")? {
            Some(d) => d,
            None => req_usize(top, "config", "projection_dim")?,
        };
        let cfg = VisionConfig {
            num_heads: list("num_heads")?,
            num_groups: list("num_groups")?,
            depths: list("depths")?,
            patch_size: list("patch_size")?,
            patch_stride: list("patch_stride")?,
            patch_padding: list("patch_padding")?,
            patch_prenorm: req_list(vc, s, "patch_prenorm", Value::as_bool)?,
            // Defaults below are the DaViT code defaults; every one is checked against the
            // tensors except the window size, which the config always states.
            in_channels: opt_usize(vc, s, key("in_channels", "in_chans"))?.unwrap_or(3),
            window_size: req_usize(vc, s, "window_size")?,
            projection_dim,
            mlp_ratio: vc.get("mlp_ratio").and_then(Value::as_f64).unwrap_or(4.0),
            qkv_bias: vc.get("qkv_bias").and_then(Value::as_bool).unwrap_or(true),
            max_pos_embeddings: opt_usize(
                vc,
                s,
                key(
                    "max_position_embeddings",
                    "image_pos_embed.max_pos_embeddings",
                ),
            )?
            .unwrap_or(50),
            max_temporal_embeddings: opt_usize(
                vc,
                s,
                key(
                    "max_temporal_embeddings",
                    "visual_temporal_embedding.max_temporal_embeddings",
                ),
            )?
            .unwrap_or(100),
            embed_dim,
            original_keys,
        };
        let n = cfg.embed_dim.len();
        let lens = [
            ("num_heads", cfg.num_heads.len()),
            ("num_groups", cfg.num_groups.len()),
            ("depths", cfg.depths.len()),
            ("patch_size", cfg.patch_size.len()),
            ("patch_stride", cfg.patch_stride.len()),
            ("patch_padding", cfg.patch_padding.len()),
            ("patch_prenorm", cfg.patch_prenorm.len()),
        ];
        for (k, len) in lens {
            if len != n {
                return Err(format!(
                    "{s}.{k} has {len} entries but {s}.{} has {n} stages",
                    cfg.key("embed_dim", "dim_embed")
                ));
            }
        }
        for (i, &c) in cfg.embed_dim.iter().enumerate() {
            for (k, v) in [
                ("num_heads", cfg.num_heads[i]),
                ("num_groups", cfg.num_groups[i]),
            ] {
                if v == 0 || !c.is_multiple_of(v) {
                    return Err(format!(
                        "{s}.{k}[{i}] = {v} does not divide {s}.{}[{i}] = {c}",
                        cfg.key("embed_dim", "dim_embed")
                    ));
                }
            }
        }
        Ok(cfg)
    }

    /// Number of stages.
    pub fn stages(&self) -> usize {
        self.embed_dim.len()
    }

    /// Channels of the last stage (the tower's output width).
    pub fn out_dim(&self) -> usize {
        self.embed_dim.last().copied().unwrap_or(0)
    }

    /// MLP hidden width for `channels`.
    pub fn mlp_hidden(&self, channels: usize) -> usize {
        (channels as f64 * self.mlp_ratio).round() as usize
    }

    /// The key this config used for a field that the two styles spell differently.
    fn key(&self, native: &'static str, original: &'static str) -> &'static str {
        if self.original_keys {
            original
        } else {
            native
        }
    }
}

impl TextConfig {
    /// Parses `text_config` (same BART keys in both styles). Token ids and decoding defaults
    /// are read as transformers reads them: `generation` (`generation_config.json`, or `Null`)
    /// first, then `text_config`, then BART's 0/1/2/2 and transformers' defaults. Top-level ids
    /// are never used: early Microsoft configs carry wrong ones there. `vocab_size` is the
    /// config's here; the checkpoint replaces it with the embedding's row count.
    pub fn from_json(tc: &Value, top: &Value, generation: &Value) -> Result<TextConfig, String> {
        let s = "text_config";
        let u = |k: &str| req_usize(tc, s, k);
        // generation_config.json wins over text_config, key by key.
        let setting = |k: &str| -> Result<Option<usize>, String> {
            match opt_usize(generation, "generation_config.json", k)? {
                Some(v) => Ok(Some(v)),
                None => opt_usize(tc, s, k),
            }
        };
        let id = |k: &str| -> Result<Option<u32>, String> {
            setting(k)?
                .map(|v| u32::try_from(v).map_err(|_| format!("{k} = {v} is not a token id")))
                .transpose()
        };
        let flag = |k: &str, default: bool| -> Result<bool, String> {
            match [generation, tc]
                .iter()
                .find_map(|v| v.get(k).filter(|x| !x.is_null()))
            {
                None => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(format!("{k} = {other}: expected true or false")),
            }
        };
        Ok(TextConfig {
            d_model: u("d_model")?,
            encoder_layers: u("encoder_layers")?,
            decoder_layers: u("decoder_layers")?,
            encoder_attention_heads: u("encoder_attention_heads")?,
            decoder_attention_heads: u("decoder_attention_heads")?,
            encoder_ffn_dim: u("encoder_ffn_dim")?,
            decoder_ffn_dim: u("decoder_ffn_dim")?,
            vocab_size: match opt_usize(tc, s, "vocab_size")? {
                Some(v) => v,
                None => req_usize(top, "config", "vocab_size")?,
            },
            max_position_embeddings: u("max_position_embeddings")?,
            activation_function: tc
                .get("activation_function")
                .and_then(Value::as_str)
                .unwrap_or("gelu")
                .to_string(),
            scale_embedding: tc
                .get("scale_embedding")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            bos_token_id: id("bos_token_id")?.unwrap_or(0),
            pad_token_id: id("pad_token_id")?.unwrap_or(1),
            eos_token_id: id("eos_token_id")?.unwrap_or(2),
            decoder_start_token_id: id("decoder_start_token_id")?.unwrap_or(2),
            forced_bos_token_id: id("forced_bos_token_id")?,
            forced_eos_token_id: id("forced_eos_token_id")?,
            generation: GenerationDefaults {
                num_beams: setting("num_beams")?.unwrap_or(1).max(1),
                no_repeat_ngram_size: setting("no_repeat_ngram_size")?.unwrap_or(0),
                early_stopping: flag("early_stopping", false)?,
                max_length: setting("max_length")?,
            },
        })
    }
}

/// A Florence-2 model on disk in any of the three layouts: its configs, checked against the
/// tensor shapes, and loading by canonical name.
pub struct Florence2Checkpoint {
    ckpt: Checkpoint,
    layout: Florence2Layout,
    config_path: PathBuf,
    vision: VisionConfig,
    text: TextConfig,
}

impl Florence2Checkpoint {
    /// Opens a model folder: HF-native, original, or Florence-VL (the tower named by its
    /// `mm_vision_tower`, see [`FlorenceVlFolder`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<Florence2Checkpoint> {
        Florence2Checkpoint::from_checkpoint(Checkpoint::open(dir)?)
    }

    /// Detects the layout, parses the configs and checks them against the tensors: every
    /// canonical tensor must be stored with the shape the configs give it. A Florence-VL
    /// checkpoint's tower is resolved as [`FlorenceVlFolder`] does.
    pub fn from_checkpoint(ckpt: Checkpoint) -> Result<Florence2Checkpoint> {
        let config_path = ckpt.dir().join("config.json");
        if ckpt.config().get("vision_config").is_none() {
            if ckpt.config().get("mm_vision_tower").is_some() {
                return Ok(FlorenceVlFolder::open(ckpt.dir())?.tower);
            }
            // Tensors that are not Florence-2's say more than a config without its sections.
            Florence2Layout::detect(&ckpt)?;
            return Err(Error::file(
                &config_path,
                "no vision_config, and no mm_vision_tower naming a Florence-2 folder that has one",
            ));
        }
        let cfg = ckpt.config().clone();
        Florence2Checkpoint::with_config(ckpt, config_path, cfg)
    }

    /// As [`Florence2Checkpoint::from_checkpoint`], with the Florence-2 config (`vision_config`
    /// and `text_config`) read from `config_path` (a Florence-VL tower's); the decoding
    /// settings come from `generation_config.json` beside it, if there is one.
    pub fn with_config(
        ckpt: Checkpoint,
        config_path: PathBuf,
        cfg: Value,
    ) -> Result<Florence2Checkpoint> {
        let layout = Florence2Layout::detect(&ckpt)?;
        let section = |k: &str| {
            cfg.get(k)
                .ok_or_else(|| Error::file(&config_path, format!("no {k}")))
        };
        let gen_path = config_path.with_file_name("generation_config.json");
        let generation = if gen_path.is_file() {
            read_json(&gen_path)?
        } else {
            Value::Null
        };
        let vision = VisionConfig::from_json(section("vision_config")?, &cfg)
            .map_err(|m| Error::file(&config_path, m))?;
        let mut text = TextConfig::from_json(section("text_config")?, &cfg, &generation)
            .map_err(|m| Error::file(&config_path, m))?;
        let shared = TIED[0];
        let (name, _) = find_stored(&ckpt, layout, shared)?.ok_or_else(|| {
            let names: Vec<String> = stored_names(layout, shared)
                .unwrap_or_default()
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            Error::file(
                ckpt.dir(),
                format!("no token embedding: none of {}", names.join(", ")),
            )
        })?;
        let rows = ckpt.info(&name)?.0.first().copied().unwrap_or(0);
        if text.vocab_size > rows {
            return Err(Error::file(
                &config_path,
                format!(
                    "text_config.vocab_size = {} but {name} has only {rows} rows",
                    text.vocab_size
                ),
            ));
        }
        text.vocab_size = rows;
        let f2 = Florence2Checkpoint {
            ckpt,
            layout,
            config_path,
            vision,
            text,
        };
        f2.validate()?;
        Ok(f2)
    }

    /// The naming scheme of the files.
    pub fn layout(&self) -> Florence2Layout {
        self.layout
    }

    /// The tower and image-head config.
    pub fn vision(&self) -> &VisionConfig {
        &self.vision
    }

    /// The BART config, `vocab_size` taken from the stored embedding.
    pub fn text(&self) -> &TextConfig {
        &self.text
    }

    /// The `config.json` the configs came from (for Florence-VL, the tower's).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The folder of that config, which holds the model's BART tokenizer and
    /// `preprocessor_config.json` (for Florence-VL, the tower's repo).
    pub fn config_dir(&self) -> &Path {
        self.config_path.parent().unwrap_or(self.ckpt.dir())
    }

    /// Whether [`Florence2Checkpoint::config_dir`] holds a BART tokenizer.
    pub fn has_tokenizer(&self) -> bool {
        ["tokenizer.json", "vocab.json"]
            .iter()
            .any(|f| self.config_dir().join(f).is_file())
    }

    /// The underlying files.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.ckpt
    }

    /// The stored name answering for a canonical name, and whether it is stored transposed;
    /// `None` when no candidate is stored (`final_logits_bias` in HF-native files).
    pub fn actual_name(&self, canonical: &str) -> Result<Option<(String, bool)>> {
        find_stored(&self.ckpt, self.layout, canonical)
    }

    /// Loads a canonical tensor as f32 in its canonical shape `expected` (transposing the
    /// original `image_projection`).
    pub fn load(&self, canonical: &str, expected: &[usize]) -> Result<Vec<f32>> {
        match self.actual_name(canonical)? {
            None => Err(self.missing(canonical)),
            Some((name, false)) => self.ckpt.load_f32(&name, expected),
            Some((name, true)) => match *expected {
                [r, c] => self.ckpt.load_f32_transposed(&name, [r, c]),
                _ => Err(Error::shape(format!(
                    "{canonical}: is stored transposed, so it loads as 2-D, not {expected:?}"
                ))),
            },
        }
    }

    fn missing(&self, canonical: &str) -> Error {
        let names: Vec<String> = stored_names(self.layout, canonical)
            .unwrap_or_default()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let msg = match names.as_slice() {
            [] => format!("{canonical} is not stored in the {:?} layout", self.layout),
            [one] if one == canonical => format!("no tensor named {canonical}"),
            _ => format!("no tensor {} (for {canonical})", names.join(" / ")),
        };
        Error::file(self.ckpt.dir(), msg)
    }

    /// Every canonical tensor this model has, with its canonical shape from the configs: the
    /// tower, the image head, BART with one entry for the tied embedding, and
    /// `final_logits_bias` where the files store it.
    pub fn canonical_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let v = &self.vision;
        let t = &self.text;
        let mut out = Vec::new();
        for s in 0..v.stages() {
            let c = v.embed_dim[s];
            let c_in = if s == 0 {
                v.in_channels
            } else {
                v.embed_dim[s - 1]
            };
            let k = v.patch_size[s];
            let p = format!("model.vision_tower.convs.{s}");
            add(&mut out, format!("{p}.conv.weight"), &[c, c_in, k, k]);
            add(&mut out, format!("{p}.conv.bias"), &[c]);
            // Stage 0 normalises after its conv, the others before theirs.
            let norm = if s == 0 { c } else { c_in };
            layer_norm(&mut out, &format!("{p}.norm"), norm);
            for j in 0..v.depths[s] {
                for (block, attn) in [("spatial", "window_attn"), ("channel", "channel_attn")] {
                    let p = format!("model.vision_tower.blocks.{s}.{j}.{block}_block");
                    for conv in ["conv1", "conv2"] {
                        add(&mut out, format!("{p}.{conv}.weight"), &[c, 1, 3, 3]);
                        add(&mut out, format!("{p}.{conv}.bias"), &[c]);
                    }
                    layer_norm(&mut out, &format!("{p}.norm1"), c);
                    layer_norm(&mut out, &format!("{p}.norm2"), c);
                    add(&mut out, format!("{p}.{attn}.qkv.weight"), &[3 * c, c]);
                    if v.qkv_bias {
                        add(&mut out, format!("{p}.{attn}.qkv.bias"), &[3 * c]);
                    }
                    linear(&mut out, &format!("{p}.{attn}.proj"), c, c);
                    linear(&mut out, &format!("{p}.ffn.fc1"), v.mlp_hidden(c), c);
                    linear(&mut out, &format!("{p}.ffn.fc2"), c, v.mlp_hidden(c));
                }
            }
        }
        let c = v.out_dim();
        let p = "model.multi_modal_projector";
        // Column embeddings take the odd channel when C is odd (C − C/2 of them).
        add(
            &mut out,
            format!("{p}.image_position_embed.row_embeddings.weight"),
            &[v.max_pos_embeddings, c / 2],
        );
        add(
            &mut out,
            format!("{p}.image_position_embed.column_embeddings.weight"),
            &[v.max_pos_embeddings, c - c / 2],
        );
        add(
            &mut out,
            format!("{p}.visual_temporal_embed.pos_idx_to_embed"),
            &[v.max_temporal_embeddings, c],
        );
        add(
            &mut out,
            format!("{p}.image_projection.weight"),
            &[v.projection_dim, c],
        );
        layer_norm(&mut out, &format!("{p}.image_proj_norm"), v.projection_dim);
        let d = t.d_model;
        add(&mut out, TIED[0].to_string(), &[t.vocab_size, d]);
        for (part, layers, ffn) in [
            ("encoder", t.encoder_layers, t.encoder_ffn_dim),
            ("decoder", t.decoder_layers, t.decoder_ffn_dim),
        ] {
            let p = format!("model.language_model.{part}");
            add(
                &mut out,
                format!("{p}.embed_positions.weight"),
                &[t.max_position_embeddings + 2, d],
            );
            layer_norm(&mut out, &format!("{p}.layernorm_embedding"), d);
            for k in 0..layers {
                let p = format!("{p}.layers.{k}");
                let attns: &[&str] = if part == "encoder" {
                    &["self_attn"]
                } else {
                    &["self_attn", "encoder_attn"]
                };
                for attn in attns {
                    for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                        linear(&mut out, &format!("{p}.{attn}.{proj}"), d, d);
                    }
                    layer_norm(&mut out, &format!("{p}.{attn}_layer_norm"), d);
                }
                linear(&mut out, &format!("{p}.fc1"), ffn, d);
                linear(&mut out, &format!("{p}.fc2"), d, ffn);
                layer_norm(&mut out, &format!("{p}.final_layer_norm"), d);
            }
        }
        if matches!(self.actual_name(FINAL_LOGITS_BIAS), Ok(Some(_))) {
            add(&mut out, FINAL_LOGITS_BIAS.to_string(), &[1, t.vocab_size]);
        }
        out
    }

    fn config_err(&self, msg: impl std::fmt::Display) -> Error {
        Error::file(&self.config_path, msg)
    }

    /// The name a canonical tensor would have in these files, for messages.
    fn stored_hint(&self, canonical: &str) -> String {
        stored_names(self.layout, canonical)
            .ok()
            .and_then(|n| n.into_iter().next())
            .map_or_else(|| canonical.to_string(), |(n, _)| n)
    }

    /// Checks that axis `axis` (canonical orientation) of a canonical tensor is `value`, which
    /// `claim` (a config field and its value) says it is. A missing tensor passes here: the
    /// completeness check reports it.
    fn check_dim(
        &self,
        claim: String,
        value: usize,
        canonical: &str,
        axis: usize,
        what: &str,
    ) -> Result<()> {
        let Some((name, transposed)) = self.actual_name(canonical)? else {
            return Ok(());
        };
        let (shape, _) = self.ckpt.info(&name)?;
        let axis = if transposed {
            shape.len() - 1 - axis
        } else {
            axis
        };
        match shape.get(axis) {
            Some(&n) if n == value => Ok(()),
            Some(&n) => Err(self.config_err(format!("{claim} but {name} has {n} {what}"))),
            None => Err(self.config_err(format!("{claim} but {name} has shape {shape:?}"))),
        }
    }

    /// Checks that a config count (stages, blocks, layers) matches the stored tensors:
    /// `item(count - 1)` is stored and `item(count)` is not.
    fn check_count(
        &self,
        claim: String,
        count: usize,
        item: impl Fn(usize) -> String,
    ) -> Result<()> {
        let extra = item(count);
        if let Some((name, _)) = self.actual_name(&extra)? {
            return Err(self.config_err(format!("{claim} but the checkpoint also has {name}")));
        }
        if count > 0 && self.actual_name(&item(count - 1))?.is_none() {
            let name = self.stored_hint(&item(count - 1));
            return Err(self.config_err(format!("{claim} but the checkpoint has no {name}")));
        }
        Ok(())
    }

    /// Config ↔ weights: the sizes that configs state are checked first, so a mismatch names
    /// the field; then every canonical tensor must be stored with its expected shape.
    fn validate(&self) -> Result<()> {
        let v = &self.vision;
        let t = &self.text;
        let dim_key = v.key("embed_dim", "dim_embed");
        self.check_count(
            format!("vision_config.{dim_key} has {} stages", v.stages()),
            v.stages(),
            |s| format!("model.vision_tower.convs.{s}.conv.weight"),
        )?;
        for s in 0..v.stages() {
            let c = v.embed_dim[s];
            let conv = format!("model.vision_tower.convs.{s}.conv.weight");
            let claim = format!("vision_config.{dim_key}[{s}] = {c}");
            self.check_dim(claim, c, &conv, 0, "output channels")?;
            let k = v.patch_size[s];
            let claim = format!("vision_config.patch_size[{s}] = {k}");
            self.check_dim(claim, k, &conv, 2, "as kernel height")?;
            if s == 0 {
                let key = v.key("in_channels", "in_chans");
                let claim = format!("vision_config.{key} = {}", v.in_channels);
                self.check_dim(claim, v.in_channels, &conv, 1, "input channels")?;
            }
            self.check_count(
                format!("vision_config.depths[{s}] = {}", v.depths[s]),
                v.depths[s],
                |j| format!("model.vision_tower.blocks.{s}.{j}.spatial_block.conv1.weight"),
            )?;
            let claim = format!(
                "vision_config.mlp_ratio = {} (MLP width {} for {c} channels)",
                v.mlp_ratio,
                v.mlp_hidden(c)
            );
            let fc1 = format!("model.vision_tower.blocks.{s}.0.spatial_block.ffn.fc1.weight");
            self.check_dim(claim, v.mlp_hidden(c), &fc1, 0, "output channels")?;
        }
        let p = "model.multi_modal_projector";
        let claim = format!("vision_config.projection_dim = {}", v.projection_dim);
        let proj = format!("{p}.image_projection.weight");
        self.check_dim(claim, v.projection_dim, &proj, 0, "output channels")?;
        // The position tables: (HF key, original key, rows the config claims, table).
        for (hf, original, rows, table) in [
            (
                "max_position_embeddings",
                "image_pos_embed.max_pos_embeddings",
                v.max_pos_embeddings,
                "image_position_embed.row_embeddings.weight",
            ),
            (
                "max_temporal_embeddings",
                "visual_temporal_embedding.max_temporal_embeddings",
                v.max_temporal_embeddings,
                "visual_temporal_embed.pos_idx_to_embed",
            ),
        ] {
            let claim = format!("vision_config.{} = {rows}", v.key(hf, original));
            self.check_dim(claim, rows, &format!("{p}.{table}"), 0, "rows")?;
        }

        let d = t.d_model;
        if d != v.projection_dim {
            // The projected image features are the encoder's first input rows.
            return Err(self.config_err(format!(
                "text_config.d_model = {d} but vision_config.projection_dim = {}",
                v.projection_dim
            )));
        }
        self.check_dim(
            format!("text_config.d_model = {d}"),
            d,
            TIED[0],
            1,
            "columns",
        )?;
        let m = t.max_position_embeddings;
        let claim = format!(
            "text_config.max_position_embeddings = {m} (a table of {} rows)",
            m + 2
        );
        let pos = "model.language_model.encoder.embed_positions.weight";
        self.check_dim(claim, m + 2, pos, 0, "rows")?;
        let parts = [
            (
                "encoder",
                t.encoder_layers,
                t.encoder_ffn_dim,
                t.encoder_attention_heads,
            ),
            (
                "decoder",
                t.decoder_layers,
                t.decoder_ffn_dim,
                t.decoder_attention_heads,
            ),
        ];
        for (part, layers, ffn, heads) in parts {
            if heads == 0 || !d.is_multiple_of(heads) {
                return Err(self.config_err(format!(
                    "text_config.{part}_attention_heads = {heads} does not divide text_config.d_model = {d}"
                )));
            }
            let p = format!("model.language_model.{part}.layers");
            self.check_count(
                format!("text_config.{part}_layers = {layers}"),
                layers,
                |k| format!("{p}.{k}.fc1.weight"),
            )?;
            let claim = format!("text_config.{part}_ffn_dim = {ffn}");
            self.check_dim(
                claim,
                ffn,
                &format!("{p}.0.fc1.weight"),
                0,
                "output channels",
            )?;
        }

        for (canonical, shape) in self.canonical_tensors() {
            let (name, transposed) = self
                .actual_name(&canonical)?
                .ok_or_else(|| self.missing(&canonical))?;
            let stored: Vec<usize> = if transposed {
                shape.iter().rev().copied().collect()
            } else {
                shape
            };
            self.ckpt.check_shape(&name, &stored)?;
        }
        Ok(())
    }
}

type Shapes = Vec<(String, Vec<usize>)>;

fn add(out: &mut Shapes, name: String, shape: &[usize]) {
    out.push((name, shape.to_vec()));
}

/// A LayerNorm: `{p}.weight` and `{p}.bias`, both `[n]`.
fn layer_norm(out: &mut Shapes, p: &str, n: usize) {
    add(out, format!("{p}.weight"), &[n]);
    add(out, format!("{p}.bias"), &[n]);
}

/// An nn.Linear: `{p}.weight` `[o, i]` and `{p}.bias` `[o]`.
fn linear(out: &mut Shapes, p: &str, o: usize, i: usize) {
    add(out, format!("{p}.weight"), &[o, i]);
    add(out, format!("{p}.bias"), &[o]);
}
