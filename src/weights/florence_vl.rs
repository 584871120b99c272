//! Florence-VL folders (spec §8.2, §11): a LLaVA checkpoint holding the LLM and the projector
//! (and, in the released checkpoints, the Florence-2 tower under
//! `model.vision_tower.vision_tower.`), whose `mm_vision_tower` names the tower's repo. That
//! repo gives the tower's config, its BART tokenizer and `preprocessor_config.json`, and its
//! weights when the main shards lack them.
//!
//! `mm_vision_tower` may name a folder inside or beside the model folder, or a hub id
//! (`jiuhai/florence-llama-vision-tower`), resolved through the Hugging Face cache. Nothing
//! else: an absolute path or one with `..` is refused, so a downloaded config cannot make us
//! read elsewhere. [`FlorenceVlFolder`] resolves all of it once.

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::florence2::Florence2Checkpoint;
use super::hub::{Hub, Needs, RepoId};
use super::{read_json, Checkpoint};
use crate::image::PreprocessConfig;
use crate::text::bart::BartTokenizer;
use crate::{Error, Result, Setting};

/// Prefix of the tower's tensors in the main shards.
const TOWER_PREFIX: &str = "model.vision_tower.vision_tower.";

/// Florence-VL's encoder prompt ids for the real Florence-2 BART tokenizer (spec §6.1: the
/// reference hard-codes them), right-padded with 1 to 14.
const HARD_CODED_PROMPTS: [[u32; 14]; 3] = [
    [
        0, 47066, 21700, 11, 4617, 99, 16, 2343, 11, 5, 2274, 4, 2, 1,
    ],
    [0, 2264, 16, 5, 2788, 11, 5, 2274, 116, 2, 1, 1, 1, 1],
    [0, 574, 22486, 5, 8720, 11, 5, 2274, 6, 19, 49, 24173, 4, 2],
];

/// Vocabulary of the real Florence-2 BART (the one [`HARD_CODED_PROMPTS`] belong to).
const FLORENCE2_VOCAB: usize = 51289;

/// Florence-VL's settings from `config.json`.
#[derive(Clone, Debug)]
pub struct FvlConfig {
    /// Linear layers of the projector (`mlp{N}x_gelu`).
    pub projector_depth: usize,
    /// Width of each of the four fused views (`mm_hidden_size`, = the Florence-2 D).
    pub mm_hidden_size: usize,
    /// Pad the image to a square before resizing (`image_aspect_ratio = "pad"`).
    pub pad_to_square: bool,
    /// Longest merged prompt (text tokens plus image rows), `tokenizer_model_max_length`.
    pub max_length: usize,
}

impl FvlConfig {
    /// Reads the Florence-VL fields of a LLaVA `config.json`.
    pub fn from_json(cfg: &Value) -> Result<FvlConfig, String> {
        let kind = cfg["mm_projector_type"]
            .as_str()
            .ok_or("no mm_projector_type")?;
        let projector_depth = kind
            .strip_prefix("mlp")
            .and_then(|s| s.strip_suffix("x_gelu"))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n >= 1)
            .ok_or_else(|| {
                format!("mm_projector_type = {kind:?}: only mlp<N>x_gelu (e.g. mlp3x_gelu) is supported")
            })?;
        let mm_hidden_size = cfg["mm_hidden_size"].as_u64().ok_or("no mm_hidden_size")? as usize;
        let pad_to_square = match cfg["image_aspect_ratio"].as_str().unwrap_or("square") {
            "pad" => true,
            "square" => false,
            other => {
                return Err(format!(
                    "image_aspect_ratio = {other:?}: only \"pad\" and \"square\" are supported"
                ))
            }
        };
        let max_length = cfg["tokenizer_model_max_length"]
            .as_u64()
            .or_else(|| cfg["max_position_embeddings"].as_u64())
            .ok_or("no tokenizer_model_max_length or max_position_embeddings")?
            as usize;
        Ok(FvlConfig {
            projector_depth,
            mm_hidden_size,
            pad_to_square,
            max_length,
        })
    }
}

/// A Florence-VL model folder with its tower resolved.
pub struct FlorenceVlFolder {
    /// The model folder (the LLM's tokenizer is here).
    pub dir: PathBuf,
    /// Florence-VL's settings.
    pub config: FvlConfig,
    /// The main checkpoint: LLM and projector.
    pub checkpoint: Checkpoint,
    /// The Florence-2 model: the main shards' copy when they hold one, else the tower repo's
    /// weights; its config is the tower repo's.
    pub tower: Florence2Checkpoint,
    /// The folder `mm_vision_tower` resolved to.
    pub tower_dir: PathBuf,
    /// Image preprocessing: the tower's `preprocessor_config.json`, else the model folder's,
    /// else Florence-2's defaults.
    pub preprocess: PreprocessConfig,
    /// The folder with the Florence-2 BART tokenizer (the tower's), when it has one.
    pub florence2_tokenizer: Option<PathBuf>,
}

impl FlorenceVlFolder {
    /// Opens the model folder `dir` and resolves its tower (a hub id through the cache the
    /// environment names).
    pub fn open(dir: &Path) -> Result<FlorenceVlFolder> {
        FlorenceVlFolder::open_with(dir, None)
    }

    /// [`FlorenceVlFolder::open`], resolving a hub-id tower through `hub` when given.
    pub fn open_with(dir: &Path, hub: Option<&Hub>) -> Result<FlorenceVlFolder> {
        let checkpoint = Checkpoint::open(dir)?;
        let config_path = dir.join("config.json");
        let cfg = checkpoint.config();
        let config = FvlConfig::from_json(cfg).map_err(|m| Error::file(&config_path, m))?;
        let Some(tower_ref) = cfg.get("mm_vision_tower").and_then(Value::as_str) else {
            return Err(Error::file(
                &config_path,
                "no mm_vision_tower naming the Florence-2 tower (a folder beside the model, or a hub id)",
            ));
        };
        let in_main = checkpoint.names().any(|n| n.starts_with(TOWER_PREFIX));
        let needs = if in_main {
            Needs::Configs
        } else {
            Needs::Model
        };
        let tower_dir = resolve_tower(dir, tower_ref, needs, hub)?;
        let tower_config = tower_dir.join("config.json");
        let tower_cfg = read_json(&tower_config)?;
        if tower_cfg.get("vision_config").is_none() {
            return Err(Error::file(
                &tower_config,
                format!(
                    "mm_vision_tower = {tower_ref:?} names this config, which has no vision_config"
                ),
            ));
        }
        let weights = if in_main {
            Checkpoint::open(dir)?
        } else {
            Checkpoint::open(&tower_dir)?
        };
        let tower = Florence2Checkpoint::with_config(weights, tower_config, tower_cfg)?;
        let d = tower.text().d_model;
        if config.mm_hidden_size != d {
            return Err(Error::file(
                &config_path,
                format!(
                    "mm_hidden_size = {} but the Florence-2 tower has d_model {d}",
                    config.mm_hidden_size
                ),
            ));
        }
        let preprocess = [tower_dir.as_path(), dir]
            .into_iter()
            .find(|d| d.join("preprocessor_config.json").is_file())
            .map_or_else(
                || Ok(PreprocessConfig::default()),
                PreprocessConfig::from_dir_or_default,
            )?;
        let has_tokenizer = ["tokenizer.json", "vocab.json"]
            .iter()
            .any(|f| tower_dir.join(f).is_file());
        let florence2_tokenizer =
            (has_tokenizer && !same_dir(&tower_dir, dir)).then(|| tower_dir.clone());
        Ok(FlorenceVlFolder {
            dir: dir.to_path_buf(),
            config,
            checkpoint,
            tower,
            tower_dir,
            preprocess,
            florence2_tokenizer,
        })
    }

    /// The three encoder prompts (spec §6.1) as `([3·L] row-major, L)`: tokenized with the
    /// BART tokenizer in `tokenizer_dir` if given, else the tower's; else Florence-VL's
    /// hard-coded ids when the tower has the real Florence-2 vocabulary.
    pub fn encoder_prompt_ids(&self, tokenizer_dir: Option<&Path>) -> Result<(Vec<u32>, usize)> {
        let text = self.tower.text();
        if let Some(t) = tokenizer_dir.or(self.florence2_tokenizer.as_deref()) {
            return BartTokenizer::open(t)?
                .check_vocab(text.vocab_size)?
                .florence_vl_prompts(text.pad_token_id);
        }
        if text.vocab_size == FLORENCE2_VOCAB {
            let ids = HARD_CODED_PROMPTS.iter().flatten().copied().collect();
            return Ok((ids, HARD_CODED_PROMPTS[0].len()));
        }
        Err(Error::setting(
            Setting::TowerTokenizer,
            format!(
                "{}: no Florence-2 tokenizer.json for the encoder prompts in the tower's folder {} and the tower's vocabulary ({}) is not Florence-2's; give ",
                self.dir.display(),
                self.tower_dir.display(),
                text.vocab_size
            ),
            " (one with Florence-2's tokenizer.json)",
        ))
    }
}

/// The folder `tower` (a config's `mm_vision_tower`) names: a folder inside the model folder
/// or beside it holding a `config.json`, else a hub id's snapshot with the files `needs` asks
/// for (through `hub`, else the environment's cache). Anything else (`..`, an absolute path,
/// more than two names) is an error.
pub fn resolve_tower(dir: &Path, tower: &str, needs: Needs, hub: Option<&Hub>) -> Result<PathBuf> {
    let config = dir.join("config.json");
    // Checked by name before any file is looked at: a hub id (owner/name) or a folder name,
    // never `..` or an absolute path, so nothing outside the model's own surroundings is read
    // and whether such a file exists is not revealed.
    let path = Path::new(tower);
    let parts: Vec<_> = path.components().collect();
    let plain = |c: &Component| {
        c.as_os_str().to_str().is_some_and(|s| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                && !s.starts_with('.')
        })
    };
    if parts.is_empty() || parts.len() > 2 || !parts.iter().all(plain) {
        return Err(Error::file(
            &config,
            format!(
                "mm_vision_tower = {tower:?} is neither a hub id (owner/name) nor the name of a \
                 Florence-2 folder beside the model"
            ),
        ));
    }
    let mut tried = Vec::new();
    for base in [Some(dir), dir.parent()].into_iter().flatten() {
        let candidate = base.join(path);
        if candidate.join("config.json").is_file() {
            return Ok(candidate);
        }
        tried.push(candidate.join("config.json").display().to_string());
    }
    let Ok(id) = RepoId::parse(tower) else {
        return Err(Error::file(
            &config,
            format!(
                "mm_vision_tower = {tower:?}: no {}, and it is not a hub id",
                tried.join(" or ")
            ),
        ));
    };
    match hub {
        Some(hub) => hub.snapshot(&id, needs),
        None => Hub::from_env()?.snapshot(&id, needs),
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Makes the `mm_vision_tower` of the Florence-VL folder `dir` resolve from `out` too, a
/// rewritten copy of `dir` (what `quantize` writes): a tower folder found inside or beside
/// `dir` that `out` cannot see is copied into `out` under the same name (its weights only when
/// the main shards lack the tower). A hub id resolves anywhere and needs nothing. Returns the
/// folder written, if any.
pub fn copy_tower_folder(dir: &Path, out: &Path) -> Result<Option<PathBuf>> {
    let cfg = read_json(&dir.join("config.json"))?;
    let Some(tower_ref) = cfg.get("mm_vision_tower").and_then(Value::as_str) else {
        return Ok(None);
    };
    let found = |base: &Path| {
        [Some(base), base.parent()]
            .into_iter()
            .flatten()
            .map(|b| b.join(tower_ref))
            .find(|t| t.join("config.json").is_file())
    };
    let (Some(src), None) = (found(dir), found(out)) else {
        return Ok(None);
    };
    let in_main = Checkpoint::open(dir)?
        .names()
        .any(|n| n.starts_with(TOWER_PREFIX));
    let is_weights = |name: &str| {
        name.ends_with(".safetensors") || name.ends_with(".bin") || name.ends_with(".index.json")
    };
    let dest = out.join(tower_ref);
    let partial = out.join(format!("{tower_ref}.partial"));
    let io = |p: &Path, e: std::io::Error| Error::file(p, e);
    std::fs::create_dir_all(&partial).map_err(|e| io(&partial, e))?;
    for entry in std::fs::read_dir(&src).map_err(|e| io(&src, e))? {
        let path = entry.map_err(|e| io(&src, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().to_string());
        let Some(name) = name.filter(|n| path.is_file() && !(in_main && is_weights(n))) else {
            continue;
        };
        std::fs::copy(&path, partial.join(&name)).map_err(|e| io(&path, e))?;
    }
    std::fs::rename(&partial, &dest).map_err(|e| io(&dest, e))?;
    Ok(Some(dest))
}
