//! `fvl-wgpu inspect`: what a model folder holds — the layout detected, tensor counts by dtype,
//! parameter count, and the GPU memory each weight format would take.

use std::collections::BTreeMap;
use std::path::PathBuf;

use fvl_wgpu::gpu::DType;
use fvl_wgpu::weights::florence2::Florence2Layout;
use fvl_wgpu::weights::hub::{resolve, Needs};
use fvl_wgpu::weights::llama::LlamaConfig;
use fvl_wgpu::weights::Checkpoint;
use fvl_wgpu::Result;

/// Arguments of `inspect`.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// Model folder (config.json and safetensors, single or sharded), or a hub id owner/name[@revision]
    /// (from the Hugging Face cache, downloading what is missing).
    #[arg(short = 'm', long, value_name = "DIR|OWNER/NAME")]
    pub model: PathBuf,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `[rows, cols]` of a matrix `quantize` packed (`NAME.q4`, `[rows, row words]`).
fn packed_cols(name: &str, shape: &[usize]) -> Option<(usize, usize)> {
    let dtype = match name.rsplit('.').next()? {
        "q8" => DType::Q8,
        "q4" => DType::Q4,
        _ => return None,
    };
    let &[rows, words] = shape else { return None };
    // Packed rows are whole blocks of 32; the first length with this many words.
    let cols = (1..=words).map(|b| b * 32).find(|&c| dtype.row_words(c) == words)?;
    Some((rows, cols))
}

/// What kind of checkpoint the tensor names and config say this is.
fn describe_layout(ck: &Checkpoint) -> String {
    let llm = ck.contains("model.embed_tokens.weight") || ck.stored_quant().is_some();
    let projector = ck.contains("model.mm_projector.encoder_mlp.0.weight");
    // The decoder as its config describes it; a config it cannot load reads as plain Llama.
    let decoder = LlamaConfig::from_checkpoint(ck).map_or("Llama".into(), |c| c.describe());
    match (Florence2Layout::detect(ck), llm, projector) {
        (Ok(Florence2Layout::FlorenceVl), _, _) | (_, true, true) => {
            format!("Florence-VL (LLaVA layout: projector + Florence-2 tower + {decoder})")
        }
        (Ok(Florence2Layout::Original), _, _) => {
            "Florence-2 (Microsoft's original remote-code names)".into()
        }
        (Ok(_), _, _) => "Florence-2 (transformers' native names)".into(),
        (Err(_), true, _) => match ck.stored_quant() {
            Some(q) => format!("{decoder}, packed {} by fvl-wgpu quantize", q.name()),
            None => decoder,
        },
        (Err(_), false, _) => "unknown (no Florence-2 or Llama tensors recognised)".into(),
    }
}

pub fn run(args: &InspectArgs) -> Result<()> {
    let ck = Checkpoint::open(resolve(&args.model, Needs::Model)?)?;
    let mut by_dtype: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let mut params = 0u64;
    // Matrices a load could quantize (rows whole blocks of 32), other matrices (f16 at most,
    // as loads fall back), and vectors (norms, biases: f32).
    let (mut blockable, mut matrices, mut vectors) = (0u64, 0u64, 0u64);
    let stored = ck.stored_quant();
    for name in ck.names() {
        let (shape, dtype) = ck.info(name)?;
        let (shape, dtype) = match (packed_cols(name, shape), stored) {
            // A matrix packed by `quantize`: its parameters, not its storage words.
            (Some((rows, cols)), Some(q)) => (vec![rows, cols], q.name().to_string()),
            _ => (shape.to_vec(), format!("{dtype:?}").to_lowercase()),
        };
        let n: u64 = shape.iter().map(|&d| d as u64).product();
        let e = by_dtype.entry(dtype).or_default();
        e.0 += 1;
        e.1 += n;
        params += n;
        match shape[..] {
            [_, cols] if cols % 32 == 0 => blockable += n,
            [_, _] => matrices += n,
            _ => vectors += n,
        }
    }
    // Memory with the matrices stored as each format, as a load would store them.
    let estimate = |d: DType| -> u64 {
        let (per_block, per_matrix) = match d {
            DType::F32 | DType::U32 => (4.0, 4.0),
            DType::F16 => (2.0, 2.0),
            DType::Q8 => (34.0 / 32.0, 2.0),
            DType::Q4 => (18.0 / 32.0, 2.0),
        };
        (blockable as f64 * per_block + matrices as f64 * per_matrix) as u64 + vectors * 4
    };
    let layout = describe_layout(&ck);
    // The formats this folder can load as: a packed folder only its own; Florence-2's weights
    // (tower and BART) are f32 or f16.
    let formats = match (stored, Florence2Layout::detect(&ck)) {
        (Some(q), _) => vec![q],
        (None, Ok(Florence2Layout::HfNative | Florence2Layout::Original)) => {
            vec![DType::F32, DType::F16]
        }
        _ => vec![DType::F32, DType::F16, DType::Q8, DType::Q4],
    };
    if args.json {
        let dtypes: serde_json::Map<_, _> = by_dtype
            .iter()
            .map(|(k, (c, n))| (k.clone(), serde_json::json!({"tensors": c, "elements": n})))
            .collect();
        let memory: serde_json::Map<_, _> = formats
            .iter()
            .map(|&d| (d.name().to_string(), serde_json::json!(estimate(d))))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "model": args.model.display().to_string(), "layout": layout, "tensors": ck.names().count(),
                "parameters": params, "dtypes": dtypes, "weight_bytes_by_format": memory,
            })
        );
        return Ok(());
    }
    println!("{}: {layout}", args.model.display());
    println!(
        "{} tensors, {:.2} M parameters",
        ck.names().count(),
        params as f64 / 1e6
    );
    for (dtype, (count, n)) in &by_dtype {
        println!(
            "  {dtype:<5} {count:>5} tensors  {:>10.2} M elements",
            *n as f64 / 1e6
        );
    }
    println!("GPU memory for the weights (matrices in each format, vectors f32; KV cache and activations extra):");
    for &d in &formats {
        println!("  {:<4} {:>10.1} MB", d.name(), estimate(d) as f64 / 1e6);
    }
    Ok(())
}
