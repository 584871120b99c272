//! Llama-family decoders (HF `LlamaForCausalLM`, `Phi3ForCausalLM`, and the LLM inside a
//! Florence-VL `llava_llama` / `llava_phi` folder): `config.json` parsing, tensor names and the
//! checks that a folder's tensors fit its config. The forward pass is `model::llama`.

use serde_json::Value;

use super::Checkpoint;
use crate::ops::rope::{Llama3Scaling, LongRope, RopeScaling};
use crate::{Error, Result};

/// Which layout of the same decoder a checkpoint stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Separate `q_proj`/`k_proj`/`v_proj` and `gate_proj`/`up_proj` (Llama, `llava_llama`).
    Llama,
    /// Fused `qkv_proj` `[q; k; v]` and `gate_up_proj` `[gate; up]` (Phi-3, `llava_phi`).
    Phi3,
}

impl Arch {
    /// The layout named by `model_type` (`phi3`/`llava_phi` fuse; anything else is Llama's).
    fn from_model_type(t: Option<&str>) -> Arch {
        match t {
            Some("phi3" | "llava_phi") => Arch::Phi3,
            _ => Arch::Llama,
        }
    }
}

/// The `config.json` fields the forward pass needs.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Tensor layout.
    pub arch: Arch,
    /// Model width (`hidden_size`).
    pub hidden: usize,
    /// MLP inner width (`intermediate_size`).
    pub intermediate: usize,
    /// Number of decoder layers (`num_hidden_layers`).
    pub layers: usize,
    /// Query heads (`num_attention_heads`).
    pub heads: usize,
    /// Key/value heads (`num_key_value_heads`); divides `heads`.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Rows of the embedding table (may differ from `vocab_size` in the config).
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// Llama 3 or LongRoPE frequency scaling, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// The LM head reuses the embedding table.
    pub tie_word_embeddings: bool,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// Keys a query sees at most (`sliding_window`), if limited.
    pub sliding_window: Option<usize>,
}

fn field<'a>(cfg: &'a Value, key: &str) -> Result<&'a Value> {
    cfg.get(key)
        .filter(|v| !v.is_null())
        .ok_or_else(|| Error::input(format!("config.json: missing \"{key}\"")))
}

fn usize_field(cfg: &Value, key: &str) -> Result<usize> {
    field(cfg, key)?
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| Error::input(format!("config.json: \"{key}\" is not an integer")))
}

fn f64_field(cfg: &Value, key: &str) -> Result<f64> {
    field(cfg, key)?
        .as_f64()
        .ok_or_else(|| Error::input(format!("config.json: \"{key}\" is not a number")))
}

/// An optional number: absent or `null` gives `default`, anything but a number is an error.
fn opt_f64(cfg: &Value, key: &str, default: f64) -> Result<f64> {
    match opt(cfg, key) {
        None => Ok(default),
        Some(_) => f64_field(cfg, key),
    }
}

/// `cfg[key]` unless absent or null.
fn opt<'a>(cfg: &'a Value, key: &str) -> Option<&'a Value> {
    cfg.get(key).filter(|v| !v.is_null())
}

/// The token embedding table's name.
pub const EMBED: &str = "model.embed_tokens.weight";

/// Whether the `quantize` command packs a tensor: the matrices a decode step streams (and the
/// embedding table, which the loader stores in the same format).
pub fn quantizable(name: &str) -> bool {
    let layer_matrix = name.starts_with("model.layers.")
        && (name.contains(".self_attn.") || name.contains(".mlp."))
        && name.ends_with("_proj.weight");
    layer_matrix || name == "lm_head.weight" || name == EMBED
}

impl LlamaConfig {
    /// The config of a checkpoint (plain or written by `quantize`), see [`LlamaConfig::from_json`],
    /// checked against the fused matrices' stored shapes.
    pub fn from_checkpoint(ck: &Checkpoint) -> Result<LlamaConfig> {
        // The vocabulary is the embedding's row count, packed (`quantize`) or not.
        let packed = ck.stored_quant().map(|q| format!("{EMBED}.{}", q.name()));
        let embed = packed
            .filter(|n| ck.contains(n))
            .unwrap_or_else(|| EMBED.to_string());
        let cfg = LlamaConfig::from_json(ck.config(), ck.info(&embed)?.0[0])?;
        cfg.check_fused(ck)?;
        Ok(cfg)
    }

    /// Parses a transformers Llama or Phi-3 `config.json`; `vocab` is the embedding table's row
    /// count. RoPE settings come from `rope_parameters` (transformers 5) or from `rope_theta`
    /// plus `rope_scaling` (transformers 4; `null` or absent means unscaled).
    pub fn from_json(cfg: &Value, vocab: usize) -> Result<LlamaConfig> {
        let hidden = usize_field(cfg, "hidden_size")?;
        let heads = usize_field(cfg, "num_attention_heads")?;
        let kv_heads = match opt(cfg, "num_key_value_heads") {
            Some(_) => usize_field(cfg, "num_key_value_heads")?,
            None => heads,
        };
        let head_dim = match opt(cfg, "head_dim") {
            Some(_) => usize_field(cfg, "head_dim")?,
            None => hidden / heads.max(1),
        };
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(Error::input(format!(
                "config.json: {heads} attention heads are not a multiple of {kv_heads} kv heads"
            )));
        }
        let max_position_embeddings = usize_field(cfg, "max_position_embeddings")?;
        let (theta, scaling) = match opt(cfg, "rope_parameters") {
            Some(p) => (f64_field(p, "rope_theta")?, rope_scaling(cfg, p, head_dim)?),
            None => (
                opt_f64(cfg, "rope_theta", 10000.0)?,
                match opt(cfg, "rope_scaling") {
                    Some(s) => rope_scaling(cfg, s, head_dim)?,
                    None => None,
                },
            ),
        };
        let sliding_window = match opt(cfg, "sliding_window") {
            Some(_) => match usize_field(cfg, "sliding_window")? {
                0 => return Err(Error::input("config.json: \"sliding_window\" must be positive")),
                w => Some(w),
            },
            None => None,
        };
        LlamaConfig {
            arch: Arch::from_model_type(cfg.get("model_type").and_then(Value::as_str)),
            hidden,
            intermediate: usize_field(cfg, "intermediate_size")?,
            layers: usize_field(cfg, "num_hidden_layers")?,
            heads,
            kv_heads,
            head_dim,
            vocab,
            rms_norm_eps: opt_f64(cfg, "rms_norm_eps", 1e-6)? as f32,
            rope_theta: theta,
            rope_scaling: scaling,
            tie_word_embeddings: opt(cfg, "tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            max_position_embeddings,
            sliding_window,
        }
        .validated()
    }

    /// The checks transformers' config validation makes (positive sizes, `rope_theta > 0`,
    /// `rms_norm_eps ≥ 0`), plus bounds on every size so a corrupt config is refused before
    /// anything is allocated from it.
    fn validated(self) -> Result<LlamaConfig> {
        let sizes = [
            ("hidden_size", self.hidden, 1 << 16),
            ("intermediate_size", self.intermediate, 1 << 18),
            ("num_hidden_layers", self.layers, 1024),
            ("num_attention_heads", self.heads, 1024),
            ("head_dim", self.head_dim, 1024),
            ("max_position_embeddings", self.max_position_embeddings, 1 << 24),
        ];
        for (key, v, max) in sizes {
            if v == 0 || v > max {
                return Err(Error::input(format!(
                    "config.json: \"{key}\" is {v}; expected 1 to {max}"
                )));
            }
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(Error::input(format!(
                "config.json: \"rope_theta\" is {}; expected a positive number",
                self.rope_theta
            )));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(Error::input(format!(
                "config.json: \"rms_norm_eps\" is {}; expected a number ≥ 0",
                self.rms_norm_eps
            )));
        }
        Ok(self)
    }

    /// Width of the keys (and of the values) of one token: `kv_heads · head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// The architecture in plain words, e.g. `Phi-3 (fused q/k/v and gate/up, LongRoPE):
    /// 32 layers, hidden 3072, 32 heads (32 key/value), vocabulary 32064`.
    pub fn describe(&self) -> String {
        let name = match self.arch {
            Arch::Llama => "Llama (separate q/k/v and gate/up",
            Arch::Phi3 => "Phi-3 (fused q/k/v and gate/up",
        };
        let rope = match &self.rope_scaling {
            None => "RoPE",
            Some(RopeScaling::Llama3(_)) => "Llama 3 RoPE scaling",
            Some(RopeScaling::LongRope(_)) => "LongRoPE",
        };
        format!(
            "{name}, {rope}): {} layers, hidden {}, {} heads ({} key/value), vocabulary {}",
            self.layers, self.hidden, self.heads, self.kv_heads, self.vocab
        )
    }

    /// The context a caller asks for (`None`: `max_position_embeddings`), refused above
    /// `max_position_embeddings` (positions past it were never trained).
    pub fn checked_context(&self, wanted: Option<usize>) -> Result<usize> {
        let max = self.max_position_embeddings;
        match wanted.unwrap_or(max) {
            0 => Err(Error::input("a context of 0 positions holds nothing")),
            n if n > max => Err(Error::input(format!(
                "a context of {n} positions is more than the model's max_position_embeddings = {max}"
            ))),
            n => Ok(n),
        }
    }

    /// Checks that every id has a row in the embedding table (an id past it would read
    /// outside the table on the GPU).
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&id| id as usize >= self.vocab) {
            Some(bad) => Err(Error::input(format!(
                "token id {bad} is outside the model's vocabulary of {} tokens (a tokenizer that does not belong to this model?)",
                self.vocab
            ))),
            None => Ok(()),
        }
    }

    /// Rows of the fused q/k/v projection: `(heads + 2·kv_heads) · head_dim`.
    pub fn qkv_rows(&self) -> usize {
        self.heads * self.head_dim + 2 * self.kv_dim()
    }

    /// Stored row blocks of layer `i`'s fused q/k/v matrix, in `[q; k; v]` order: `(name, rows)`.
    pub fn qkv_parts(&self, i: usize) -> Vec<(String, usize)> {
        let p = format!("model.layers.{i}.self_attn");
        match self.arch {
            Arch::Phi3 => vec![(format!("{p}.qkv_proj.weight"), self.qkv_rows())],
            Arch::Llama => vec![
                (format!("{p}.q_proj.weight"), self.heads * self.head_dim),
                (format!("{p}.k_proj.weight"), self.kv_dim()),
                (format!("{p}.v_proj.weight"), self.kv_dim()),
            ],
        }
    }

    /// Stored row blocks of layer `i`'s fused `[gate; up]` matrix: `(name, rows)`.
    pub fn gate_up_parts(&self, i: usize) -> Vec<(String, usize)> {
        let p = format!("model.layers.{i}.mlp");
        match self.arch {
            Arch::Phi3 => vec![(format!("{p}.gate_up_proj.weight"), 2 * self.intermediate)],
            Arch::Llama => vec![
                (format!("{p}.gate_proj.weight"), self.intermediate),
                (format!("{p}.up_proj.weight"), self.intermediate),
            ],
        }
    }

    /// Every fused matrix a Phi-3 folder stores has the rows its config implies (checked
    /// before loading, so a mismatch reads as a config problem, not a missing tensor).
    fn check_fused(&self, ck: &Checkpoint) -> Result<()> {
        if self.arch != Arch::Phi3 {
            return Ok(());
        }
        for i in 0..self.layers {
            let parts = [
                (self.qkv_parts(i), "(num_attention_heads + 2·num_key_value_heads)·head_dim"),
                (self.gate_up_parts(i), "2·intermediate_size"),
            ];
            for (part, what) in parts {
                let (name, rows) = &part[0];
                let packed = ck.stored_quant().map(|q| format!("{name}.{}", q.name()));
                let stored = packed.filter(|n| ck.contains(n)).unwrap_or(name.clone());
                let shape = ck.info(&stored)?.0;
                if shape.first() != Some(rows) || (packed_free(&stored) && shape.get(1) != Some(&self.hidden)) {
                    return Err(Error::input(format!(
                        "{name}: shape {shape:?} disagrees with config.json, which implies [{rows}, {}] ({what} rows)",
                        self.hidden
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Whether a stored name holds floats (its columns are the matrix's); packed words are not.
fn packed_free(name: &str) -> bool {
    !(name.ends_with(".q8") || name.ends_with(".q4"))
}

/// The scaling part of a RoPE settings object `p` (`rope_type`, or the older `type`) of `cfg`.
fn rope_scaling(cfg: &Value, p: &Value, head_dim: usize) -> Result<Option<RopeScaling>> {
    let kind = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    if let Some(f) = opt(p, "partial_rotary_factor").and_then(Value::as_f64) {
        if f != 1.0 {
            return Err(Error::input(format!(
                "config.json: partial_rotary_factor {f} is not supported (only 1: every dimension rotates)"
            )));
        }
    }
    match kind {
        "default" => Ok(None),
        "llama3" => Ok(Some(RopeScaling::Llama3(Llama3Scaling {
            factor: f64_field(p, "factor")?,
            low_freq_factor: f64_field(p, "low_freq_factor")?,
            high_freq_factor: f64_field(p, "high_freq_factor")?,
            original_max_position_embeddings: f64_field(p, "original_max_position_embeddings")?,
        }))),
        // "su" is LongRoPE's name in early Phi-3 configs.
        "longrope" | "su" => {
            let factors = |key: &str| -> Result<Vec<f64>> {
                let list = field(p, key)?
                    .as_array()
                    .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
                    .ok_or_else(|| {
                        Error::input(format!("config.json: rope \"{key}\" is not a list of numbers"))
                    })?;
                if list.len() != head_dim / 2 || list.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
                    return Err(Error::input(format!(
                        "config.json: rope \"{key}\" has {} entries, expected head_dim/2 = {} positive numbers",
                        list.len(),
                        head_dim / 2
                    )));
                }
                Ok(list)
            };
            let max = usize_field(cfg, "max_position_embeddings")?;
            // transformers prefers the top-level value (where Phi-3 writes it).
            let original = match (opt(cfg, "original_max_position_embeddings"), opt(p, "original_max_position_embeddings")) {
                (Some(_), _) => usize_field(cfg, "original_max_position_embeddings")?,
                (None, Some(_)) => usize_field(p, "original_max_position_embeddings")?,
                (None, None) => max,
            };
            if original == 0 {
                return Err(Error::input(
                    "config.json: original_max_position_embeddings must be positive",
                ));
            }
            let factor = match opt(p, "factor") {
                Some(_) => f64_field(p, "factor")?,
                None => max as f64 / original as f64,
            };
            let attention_factor = match opt(p, "attention_factor") {
                Some(_) => f64_field(p, "attention_factor")?,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
            };
            Ok(Some(RopeScaling::LongRope(LongRope {
                short_factor: factors("short_factor")?,
                long_factor: factors("long_factor")?,
                original_max_position_embeddings: original,
                attention_factor,
            })))
        }
        other => Err(Error::input(format!(
            "config.json: rope type \"{other}\" is not supported (default, llama3 and longrope are)"
        ))),
    }
}
