//! `fvl-wgpu quantize`: a Llama checkpoint rewritten with its matrices packed as q8 or q4, so
//! the next load copies them straight to the GPU.

use std::path::PathBuf;
use std::time::Instant;

use fvl_wgpu::weights::florence_vl::copy_tower_folder;
use fvl_wgpu::weights::hub::{resolve, Needs};
use fvl_wgpu::weights::llama::quantizable;
use fvl_wgpu::weights::{write_quantized, Checkpoint};
use fvl_wgpu::Result;

use super::progress;

use fvl_wgpu::gpu::DType;

/// The formats `quantize` writes (f32/f16 are what a checkpoint already holds).
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Packed {
    /// 8-bit blocks of 32 with an f16 scale (8.5 bits a weight).
    Q8,
    /// 4-bit blocks of 32 with an f16 scale (4.5 bits a weight).
    Q4,
}

/// Arguments of `quantize`.
#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// Llama model folder (config.json, safetensors single or sharded, tokenizer), or a hub id owner/name[@revision]
    /// (from the Hugging Face cache, downloading what is missing).
    #[arg(short = 'm', long, value_name = "DIR|OWNER/NAME")]
    pub model: PathBuf,
    /// Output folder outside --model (created; its model.safetensors and copies of the other
    /// files are replaced).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Packed format: q8 or q4 (the flag the model commands load with).
    #[arg(long, visible_alias = "quant", value_enum, value_name = "FORMAT")]
    pub precision: Packed,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &QuantizeArgs) -> Result<()> {
    let model = resolve(&args.model, Needs::Model)?;
    let dtype = match args.precision {
        Packed::Q8 => DType::Q8,
        Packed::Q4 => DType::Q4,
    };
    let ck = Checkpoint::open(&model)?;
    let t = Instant::now();
    // Shown once the checks pass and the first tensor is read; it stays while the files are
    // written and a tower folder copied.
    let what = format!("packing as {} into {}", dtype.name(), args.out.display());
    let bar = std::cell::OnceCell::new();
    let tick = || bar.get_or_init(|| progress(ck.names().count(), &what)).inc(1);
    let (count, bytes) = write_quantized(&ck, &args.out, dtype, &quantizable, &tick)?;
    // A Florence-VL folder's tower beside it must stay reachable from the copy.
    let tower = copy_tower_folder(&model, &args.out)?;
    if let Some(bar) = bar.get() {
        bar.finish_and_clear();
    }
    if let Some(tower) = tower {
        eprintln!("copied the Florence-2 tower folder to {}", tower.display());
    }
    let secs = t.elapsed().as_secs_f64();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"out": args.out.display().to_string(), "quant": dtype.name(), "quantized_tensors": count, "bytes": bytes, "seconds": secs})
        );
    } else {
        eprintln!(
            "{count} matrices packed as {} → {} ({:.1} MB) in {secs:.1} s",
            dtype.name(),
            args.out.display(),
            bytes as f64 / 1e6
        );
    }
    Ok(())
}
